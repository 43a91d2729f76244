import { randomUUID } from 'node:crypto';
import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';
import type { Pool } from 'pg';
import type { LocalModelServer } from '../model-server/server';
import type { WsClient } from '../test/support/ws-client';

/**
 * One session driven through many turns, and what its workflow runs and conversation look like
 * afterwards (issue 13, "histories that stay small"): bench/long-session.ts at 10,000 turns,
 * test/long-session.test.ts at a CI size.
 */

export interface DriveOptions {
  client: WsClient;
  model: LocalModelServer;
  sessionId: string;
  turns: number;
  /** Every this many turns the model calls the calculator first (0: never). */
  toolEvery: number;
  /** Every this many turns the user message is `longChars` long (0: never). */
  longEvery: number;
  longChars: number;
  /** Whether each message carries a clientMessageId (a UUID, as resending clients send), which the session remembers for de-duplication. */
  clientMessageIds: boolean;
  turnTimeoutMs?: number;
  /** Called after each turn's turn.done. */
  afterTurn?: (turn: number) => void;
}

/** What fills the long messages: text nothing else in a history contains. */
export const LONG_FILL = 'long-body ';

export const isToolTurn = (turn: number, every: number) => every > 0 && turn % every === 0;
export const isLongTurn = (turn: number, every: number) => every > 0 && turn % every === Math.floor(every / 2);

/** Sends each message once its predecessor's turn.done arrived; returns the number of tool turns. */
export async function driveSession(o: DriveOptions): Promise<{ toolTurns: number; longTurns: number }> {
  let toolTurns = 0;
  let longTurns = 0;
  for (let turn = 1; turn <= o.turns; turn++) {
    const tool = isToolTurn(turn, o.toolEvery);
    const long = isLongTurn(turn, o.longEvery);
    // The model server keeps every request it saw: dropped each turn, or the driver's memory grows with the square of the turns.
    o.model.reset();
    o.model.script(o.sessionId, { reply: 'ok', firstTokenDelayMs: 0, tokenDelayMs: 0, ...(tool ? { toolCalls: [{ name: 'calculator', arguments: JSON.stringify({ expression: `${turn} + 1` }) }] } : {}) });
    const head = `turn ${turn} `;
    const content = long ? head + LONG_FILL.repeat(o.longChars).slice(0, o.longChars - head.length) : `turn ${turn}`;
    // Frames of earlier turns are not needed any more; keeping them makes every wait slower.
    o.client.frames.length = 0;
    o.client.send({ type: 'message', content, ...(o.clientMessageIds ? { clientMessageId: randomUUID() } : {}) });
    const end = await o.client.waitFor((f) => (f.type === 'turn.done' && f.data.turn === turn) || f.type === 'error', o.turnTimeoutMs ?? 60_000);
    if (end.type === 'error') throw new Error(`turn ${turn} refused: ${end.data.code} ${end.data.message}`);
    if (end.data.status !== 'completed') throw new Error(`turn ${turn} ended ${end.data.status}: ${JSON.stringify(end.data)}`);
    if (tool) toolTurns++;
    if (long) longTurns++;
    o.afterTurn?.(turn);
  }
  return { toolTurns, longTurns };
}

export interface RunMeasure {
  runId: string;
  events: number;
  /** The history as the server stores it: the encoded protobuf of every event. */
  bytes: number;
  /** The server's own count (DescribeWorkflowExecution historySizeBytes). */
  serverBytes: number | null;
  /** The run's input payload (what continue-as-new carried into it). */
  inputBytes: number;
  /** The JSON of the carried state alone (input.resume); 0 for the first run. */
  carriedBytes: number;
  carried: Record<string, unknown> | null;
  continuedAsNew: boolean;
  /** Whether `marker` (a piece of a long message) appears anywhere in the run's history, payloads decoded. */
  markerFound: boolean;
}

/** Every run of the workflow, first to current, following the continue-as-new chain. */
export async function measureRuns(client: Client, workflowId: string, marker?: string): Promise<RunMeasure[]> {
  const current = await client.workflow.getHandle(workflowId).describe();
  let runId: string | null | undefined = current.raw.workflowExecutionInfo?.firstRunId ?? current.runId;
  const runs: RunMeasure[] = [];
  while (runId) {
    const handle = client.workflow.getHandle(workflowId, runId);
    const [history, described] = await Promise.all([handle.fetchHistory(), handle.describe()]);
    const events: temporal.api.history.v1.IHistoryEvent[] = history.events ?? [];
    const payloads = events[0]?.workflowExecutionStartedEventAttributes?.input?.payloads ?? [];
    const inputBytes = payloads.reduce((n, p) => n + (p.data?.length ?? 0), 0);
    const input = payloads[0]?.data ? (JSON.parse(Buffer.from(payloads[0].data).toString('utf8')) as { resume?: Record<string, unknown> }) : {};
    const next: string | null | undefined = events.at(-1)?.workflowExecutionContinuedAsNewEventAttributes?.newExecutionRunId;
    runs.push({
      runId,
      events: events.length,
      bytes: temporal.api.history.v1.History.encode(history).finish().length,
      serverBytes: described.historySize ?? null,
      inputBytes,
      carriedBytes: input.resume ? Buffer.byteLength(JSON.stringify(input.resume)) : 0,
      carried: input.resume ?? null,
      continuedAsNew: Boolean(next),
      markerFound: marker !== undefined && JSON.stringify(history, (_key, value: unknown) => (value instanceof Uint8Array ? Buffer.from(value).toString('utf8') : value)).includes(marker),
    });
    runId = next;
  }
  return runs;
}

export interface ConversationCheck {
  byRole: Record<string, number>;
  messages: number;
  events: number;
  seqGapFree: boolean;
  turnDones: number;
  turnsWithoutExactlyOneDone: number[];
  notCompleted: number;
  userTurnsDistinct: number;
}

/** The conversation as PostgreSQL holds it. */
export async function checkConversation(db: Pool, sessionId: string, turns: number): Promise<ConversationCheck> {
  const roles = await db.query<{ role: string; n: string }>('SELECT role, count(*) AS n FROM messages WHERE session_id = $1 GROUP BY role', [sessionId]);
  const byRole = Object.fromEntries(roles.rows.map((r) => [r.role, Number(r.n)]));
  const seq = await db.query<{ n: string; lo: number | null; hi: number | null }>('SELECT count(*) AS n, min(seq) AS lo, max(seq) AS hi FROM session_events WHERE session_id = $1', [sessionId]);
  const events = Number(seq.rows[0]!.n);
  const dones = await db.query<{ turn: number; n: string; completed: string }>(
    `SELECT (data->>'turn')::int AS turn, count(*) AS n, count(*) FILTER (WHERE data->>'status' = 'completed') AS completed
     FROM session_events WHERE session_id = $1 AND type = 'turn.done' GROUP BY 1`,
    [sessionId],
  );
  const perTurn = new Map(dones.rows.map((r) => [r.turn, Number(r.n)]));
  const wrong: number[] = [];
  for (let t = 1; t <= turns; t++) if (perTurn.get(t) !== 1) wrong.push(t);
  for (const t of perTurn.keys()) if (t < 1 || t > turns) wrong.push(t);
  const users = await db.query<{ n: string }>(`SELECT count(DISTINCT turn) AS n FROM messages WHERE session_id = $1 AND role = 'user'`, [sessionId]);
  return {
    byRole,
    messages: Object.values(byRole).reduce((a, b) => a + b, 0),
    events,
    seqGapFree: events === 0 || (seq.rows[0]!.lo === 1 && seq.rows[0]!.hi === events),
    turnDones: dones.rows.reduce((n, r) => n + Number(r.n), 0),
    turnsWithoutExactlyOneDone: wrong,
    notCompleted: dones.rows.reduce((n, r) => n + Number(r.n) - Number(r.completed), 0),
    userTurnsDistinct: Number(users.rows[0]!.n),
  };
}

/** Least-squares slope of y over x. */
export function slope(points: { x: number; y: number }[]): number {
  const n = points.length;
  if (n < 2) return NaN;
  const mx = points.reduce((s, p) => s + p.x, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  const num = points.reduce((s, p) => s + (p.x - mx) * (p.y - my), 0);
  const den = points.reduce((s, p) => s + (p.x - mx) ** 2, 0);
  return num / den;
}
