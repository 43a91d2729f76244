import http from 'node:http';
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { sessionWorkflowId } from '../contracts/ids';
import { toolCallIdOf } from '../activities/tool-activities';
import type { LocalModelServer, ModelScript } from '../model-server/server';
import { historyToJsonText, type History } from '../test/support/history-json';
import { DEV_TOKEN, startStack, type Stack } from '../test/support/stack';
import { spawnEntry, type Spawned } from '../test/support/processes';
import { WsClient, type Frame } from '../test/support/ws-client';
import { startEmbeddedPostgres, startTemporalDevServer, type Log } from './services';

/**
 * Records real session workflow histories for test/replay.test.ts, which replays them against
 * the current workflow code (docs/design/002-workflow-versioning.md). It starts everything it
 * needs (Temporal dev server, embedded Postgres, the local model server, a worker and the API
 * as child processes), drives one session per scenario through the API, and writes each
 * session's history to test/histories/<file>.json, overwriting it, plus the README there.
 *
 *   npx tsx scripts/record-histories.ts [scenario...]   (npm run histories:record -- [scenario...])
 *   --list       prints the scenarios and the API calls each one depends on
 *   --verbose    shows the services' and the worker's and API's output
 *
 * A scenario is one small function: it drives a session, waits for what it is about (frames on
 * the WebSocket, the workflow's own state), and returns the histories to save. It then checks
 * that the history really took the path it is named for, since a timing race or a change in
 * the workflow can make a session take another: such a scenario is run again, then reported.
 */

const ROOT = path.resolve(__dirname, '..');
const OUT_DIR = path.join(ROOT, 'test', 'histories');
const AGENTS_FILE = path.join(OUT_DIR, 'agents.yaml');
const RECORD_COMMAND = 'npm run histories:record';
/** The hand-written part of the README, kept when the script rewrites the rest. */
const KEPT_HEADING = '## Kept from earlier workflow code';
const ATTEMPTS = 3;
/** Idle time-to-live for the session that expires: short, but long enough to see its turn end first. */
const SHORT_IDLE_TTL_MS = 1500;
/** Low enough that every run continues-as-new after its first turn. */
const LOW_CONTINUE_AS_NEW_EVENTS = 10;

/**
 * The activity types the checks look for in histories: the names the workflow schedules
 * (workflows/activities.ts). Adapt them here when they change.
 */
const MODEL_CALL = 'streamReply';
const TOOL_RUN = 'executeTool';
const REFUSAL = 'rejectMessages';
const EXPIRY = 'expireSession';

// ---------------------------------------------------------------------------------------------
// What a scenario gets

/** One API process: REST as user "dev" and the session WebSocket. */
class Api {
  constructor(
    readonly base: string,
    private readonly sockets: WsClient[],
    private readonly token = DEV_TOKEN,
  ) {}

  async request(method: string, route: string, body?: unknown): Promise<{ status: number; body: any; text: string }> {
    const res = await fetch(`${this.base}/api/v1${route}`, {
      method,
      headers: { authorization: `Bearer ${this.token}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await res.text();
    let json: unknown = null;
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
    return { status: res.status, body: json, text };
  }

  /** POST /sessions; returns the session ID. */
  async createSession(agentId = 'default'): Promise<string> {
    const res = await this.request('POST', '/sessions', { agentId, title: 'recorded for replay' });
    if (res.status !== 201) throw new Error(`POST /sessions: ${res.status} ${res.text}`);
    return res.body.id as string;
  }

  /** The session's WebSocket, open and past its `connected` frame. */
  async ws(sessionId: string): Promise<WsClient> {
    const url = `${this.base.replace(/^http/, 'ws')}/api/v1/sessions/${sessionId}/ws?token=${DEV_TOKEN}`;
    const socket = await WsClient.connect(url);
    this.sockets.push(socket);
    return socket;
  }

  /** A new session and its WebSocket. */
  async session(agentId = 'default'): Promise<{ sessionId: string; ws: WsClient; workflowId: string }> {
    const sessionId = await this.createSession(agentId);
    return { sessionId, ws: await this.ws(sessionId), workflowId: sessionWorkflowId(sessionId) };
  }
}

/** An HTTP endpoint that never answers: the http_request tool pointed at it runs until cancelled. */
class SlowEndpoint {
  private readonly seen: string[] = [];
  private readonly waiters: { path: string; resolve: () => void }[] = [];
  private readonly server = http.createServer((req) => {
    this.seen.push(req.url ?? '');
    for (const w of this.waiters.filter((x) => x.path === req.url)) w.resolve();
  });

  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return (this.server.address() as AddressInfo).port;
  }

  url(route: string): string {
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}${route}`;
  }

  /** Resolves once a request for `route` has arrived, i.e. the tool is running. */
  waitForRequest(route: string, timeoutMs = 20_000): Promise<void> {
    if (this.seen.includes(route)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`the slow endpoint got no request for ${route} within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push({ path: route, resolve: () => (clearTimeout(timer), resolve()) });
    });
  }

  async stop(): Promise<void> {
    this.server.closeAllConnections();
    await new Promise((resolve) => this.server.close(resolve));
  }
}

interface Context {
  /** The API. `env` starts (once per distinct env) another API process with those settings on the same deployment. */
  api(env?: Record<string, string>): Promise<Api>;
  /** The local model server, scriptable per session (`model.script(sessionId, …)`). */
  model: LocalModelServer;
  temporal: Client;
  slow: SlowEndpoint;
  /** A REST call with an admin token (release changes). */
  admin(method: string, route: string, body?: unknown): Promise<{ status: number; body: any; text: string }>;
  taskQueue: string;
  /** The deployment's database (the effect ledger scenario stages a crashed attempt in it). */
  db: Stack['db'];
}

/** The session took another path than the scenario is for (a timing race): worth another try. */
class NotRecorded extends Error {}

interface Scenario {
  name: string;
  /** Each history file the scenario writes (without `.json`) and what it covers, for the README. */
  files: Record<string, string>;
  /** The API calls and model-server knobs it depends on: what to revisit when they change. */
  uses: string;
  /** How often to try when the session takes another path (a race); default ATTEMPTS. */
  attempts?: number;
  run(ctx: Context): Promise<Record<string, History>>;
}

const of = (type: string) => (f: Frame) => f.type === type;
const call = (name: string, args: object) => ({ name, arguments: JSON.stringify(args) });

// ---------------------------------------------------------------------------------------------
// Reading a history

type HistoryEvent = NonNullable<History['events']>[number];
const idOf = (value: unknown) => Number(String(value));

/** The event's kind, from its one attributes field: `activityTaskScheduled`, `workflowExecutionSignaled`, … */
function kindOf(event: HistoryEvent): string {
  const key = Object.keys(event).find((k) => k.endsWith('EventAttributes') && (event as Record<string, unknown>)[k] != null);
  return key ? key.slice(0, -'EventAttributes'.length) : 'unknown';
}

function patchIdOf(data: Uint8Array | null | undefined): string {
  try {
    return String((JSON.parse(Buffer.from(data ?? new Uint8Array()).toString('utf8')) as { id?: unknown }).id ?? '?');
  } catch {
    return '?';
  }
}

/** What the checks and the log look at. */
function factsOf(history: History) {
  const events = history.events ?? [];
  const activityByEvent = new Map<number, string>();
  const facts = {
    events: events.length,
    activities: [] as string[],
    retried: [] as string[],
    cancelRequested: [] as string[],
    signals: [] as string[],
    updates: [] as string[],
    timersStarted: 0,
    timersFired: 0,
    timersCanceled: 0,
    localActivities: 0,
    patches: [] as string[],
    kinds: events.map(kindOf),
    last: events.length ? kindOf(events[events.length - 1]!) : 'none',
  };
  for (const e of events) {
    const scheduled = e.activityTaskScheduledEventAttributes;
    if (scheduled) {
      const name = scheduled.activityType?.name ?? '?';
      activityByEvent.set(idOf(e.eventId), name);
      facts.activities.push(name);
    }
    const started = e.activityTaskStartedEventAttributes;
    if (started && (started.attempt ?? 1) > 1) facts.retried.push(activityByEvent.get(idOf(started.scheduledEventId)) ?? '?');
    const cancel = e.activityTaskCancelRequestedEventAttributes;
    if (cancel) facts.cancelRequested.push(activityByEvent.get(idOf(cancel.scheduledEventId)) ?? '?');
    if (e.workflowExecutionSignaledEventAttributes) facts.signals.push(e.workflowExecutionSignaledEventAttributes.signalName ?? '?');
    if (e.workflowExecutionUpdateAcceptedEventAttributes) facts.updates.push(e.workflowExecutionUpdateAcceptedEventAttributes.acceptedRequest?.input?.name ?? '?');
    if (e.timerStartedEventAttributes) facts.timersStarted++;
    if (e.timerFiredEventAttributes) facts.timersFired++;
    if (e.timerCanceledEventAttributes) facts.timersCanceled++;
    const marker = e.markerRecordedEventAttributes;
    if (marker?.markerName === 'core_local_activity') facts.localActivities++;
    if (marker?.markerName === 'core_patch') facts.patches.push(patchIdOf(marker.details?.['patch-data']?.payloads?.[0]?.data));
  }
  return facts;
}
type Facts = ReturnType<typeof factsOf>;

/** Throws NotRecorded, naming what is missing, unless every check holds. */
function expectPath(history: History, checks: Record<string, (f: Facts) => boolean>): History {
  const facts = factsOf(history);
  const missing = Object.entries(checks).filter(([, check]) => !check(facts)).map(([what]) => what);
  if (missing.length > 0) throw new NotRecorded(`the history does not show: ${missing.join('; ')} (${summary(facts)})`);
  return history;
}

function summary(f: Facts): string {
  const parts = [`${f.events} events`, `activities ${f.activities.join(',') || 'none'}`];
  if (f.localActivities) parts.push(`${f.localActivities} local activit${f.localActivities === 1 ? 'y' : 'ies'}`);
  if (f.patches.length) parts.push(`patches ${f.patches.join(',')}`);
  if (f.updates.length) parts.push(`updates ${f.updates.join(',')}`);
  if (f.retried.length) parts.push(`retried ${f.retried.join(',')}`);
  if (f.cancelRequested.length) parts.push(`cancelled ${f.cancelRequested.join(',')}`);
  if (f.timersStarted) parts.push(`timers ${f.timersStarted} started, ${f.timersFired} fired, ${f.timersCanceled} cancelled`);
  parts.push(`ends ${f.last}`);
  return parts.join(', ');
}

// ---------------------------------------------------------------------------------------------
// Waiting for the workflow

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The history once the workflow has nothing in flight (no workflow task, no activity): it
 * waits on a message, a decision or a timer. Fetched earlier, a history can end anywhere in a
 * workflow task, which replays as well but differs from run to run.
 */
async function settledHistory(ctx: Context, workflowId: string, timeoutMs = 20_000): Promise<History> {
  const handle = ctx.temporal.workflow.getHandle(workflowId);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const { raw, status } = await handle.describe();
    const idle = !raw.pendingWorkflowTask && (raw.pendingActivities ?? []).length === 0;
    if (idle || status.name !== 'RUNNING') return handle.fetchHistory();
    if (Date.now() > deadline) throw new Error(`${workflowId} still had work in flight after ${timeoutMs} ms`);
    await pause(50);
  }
}

/** The history of a workflow that has ended (completed, terminated, …). */
async function closedHistory(ctx: Context, workflowId: string, timeoutMs = 20_000): Promise<History> {
  const handle = ctx.temporal.workflow.getHandle(workflowId);
  const deadline = Date.now() + timeoutMs;
  while ((await handle.describe()).status.name === 'RUNNING') {
    if (Date.now() > deadline) throw new Error(`${workflowId} was still running after ${timeoutMs} ms`);
    await pause(50);
  }
  return handle.fetchHistory();
}

/** Every run of a workflow, first to last, following continue-as-new back from the latest. */
async function runsOf(ctx: Context, workflowId: string): Promise<History[]> {
  const runs = [await settledHistory(ctx, workflowId)];
  for (;;) {
    const previous = runs[0]!.events?.[0]?.workflowExecutionStartedEventAttributes?.continuedExecutionRunId;
    if (!previous) return runs;
    runs.unshift(await ctx.temporal.workflow.getHandle(workflowId, previous).fetchHistory());
  }
}

/** The cancel API, in one place: both channels are recorded (WS frame, REST), and it is about to change. */
function cancelOverWebSocket(ws: WsClient): void {
  ws.send({ type: 'cancel' });
}

async function cancelOverRest(api: Api, sessionId: string): Promise<void> {
  const res = await api.request('POST', `/sessions/${sessionId}/cancel`);
  if (res.status < 200 || res.status > 299) throw new Error(`POST /cancel: ${res.status} ${res.text}`);
}

async function turnDone(ws: WsClient, status: string, count = 1, timeoutMs = 20_000): Promise<void> {
  const dones = await ws.waitForCount(of('turn.done'), count, timeoutMs);
  const statuses = dones.map((d) => d.data.status as string);
  if (statuses[count - 1] !== status) throw new NotRecorded(`turn ${count} ended ${statuses[count - 1]}, not ${status}`);
}

// ---------------------------------------------------------------------------------------------
// Scenarios: each drives one session (two runs for continue-as-new) and returns its histories.

const NOTE = 'Save a note: buy milk';
const LONG_REPLY: ModelScript = { reply: Array.from({ length: 60 }, (_, i) => `w${i}`).join(' '), tokenDelayMs: 50 };

const scenarios: Scenario[] = [
  {
    name: 'plain-turn',
    files: { 'plain-turn': 'one message over WebSocket, one streamed reply, no tools; the session then waits idle.' },
    uses: 'POST /sessions, WS message, turn.done',
    async run(ctx) {
      const { ws, workflowId } = await (await ctx.api()).session();
      ws.send({ type: 'message', content: 'Hello Keel', clientMessageId: 'c1' });
      await turnDone(ws, 'completed');
      return { 'plain-turn': expectPath(await settledHistory(ctx, workflowId), { 'streamReply ran': (f) => f.activities.includes(MODEL_CALL) }) };
    },
  },
  {
    name: 'multi-turn',
    files: { 'multi-turn': 'three turns in a row, the second sent over REST (POST /messages), each answered before the next is sent.' },
    uses: 'POST /sessions, WS message, POST /sessions/:id/messages, turn.done',
    async run(ctx) {
      const api = await ctx.api();
      const { sessionId, ws, workflowId } = await api.session();
      ws.send({ type: 'message', content: 'first', clientMessageId: 'c1' });
      await turnDone(ws, 'completed', 1);
      const rest = await api.request('POST', `/sessions/${sessionId}/messages`, { content: 'second', clientMessageId: 'c2' });
      if (rest.status !== 202) throw new Error(`POST /messages: ${rest.status} ${rest.text}`);
      await turnDone(ws, 'completed', 2);
      ws.send({ type: 'message', content: 'third', clientMessageId: 'c3' });
      await turnDone(ws, 'completed', 3);
      return { 'multi-turn': expectPath(await settledHistory(ctx, workflowId), { 'three model calls': (f) => f.activities.filter((a) => a === MODEL_CALL).length === 3 }) };
    },
  },
  {
    name: 'tool-read',
    files: { 'tool-read': 'the model asks for calculator (a read tool, no approval), the tool runs, the model answers with its result.' },
    uses: 'WS message "What is 15 + 27?" (the local model calls calculator for arithmetic), turn.done',
    async run(ctx) {
      const { ws, workflowId } = await (await ctx.api()).session();
      ws.send({ type: 'message', content: 'What is 15 + 27?' });
      await turnDone(ws, 'completed');
      return { 'tool-read': expectPath(await settledHistory(ctx, workflowId), { 'one tool ran': (f) => f.activities.filter((a) => a === TOOL_RUN).length === 1 }) };
    },
  },
  {
    name: 'tool-read-parallel',
    files: { 'tool-read-parallel': 'one model reply asks for two read tools at once (calculator, current_time); both run in parallel, then the model answers.' },
    uses: 'model.script(toolCalls), WS message, turn.done',
    async run(ctx) {
      const { sessionId, ws, workflowId } = await (await ctx.api()).session();
      ctx.model.script(sessionId, { toolCalls: [call('calculator', { expression: '2 * 21' }), call('current_time', { timezone: 'UTC' })] });
      ws.send({ type: 'message', content: 'two things at once' });
      await turnDone(ws, 'completed');
      return { 'tool-read-parallel': expectPath(await settledHistory(ctx, workflowId), { 'two tools ran': (f) => f.activities.filter((a) => a === TOOL_RUN).length === 2 }) };
    },
  },
  {
    name: 'approval-pending',
    files: { 'approval-pending': 'a write tool (create_note) waits for approval; recorded while the approval is still pending (its expiry timer running).' },
    uses: 'WS message "Save a note: …" (the local model calls create_note), approval.required',
    async run(ctx) {
      const { ws, workflowId } = await (await ctx.api()).session();
      ws.send({ type: 'message', content: NOTE });
      await ws.waitFor(of('approval.required'));
      return {
        'approval-pending': expectPath(await settledHistory(ctx, workflowId), {
          'waiting on a timer': (f) => f.timersStarted - f.timersFired - f.timersCanceled === 1 && f.last === 'timerStarted',
          'no tool ran': (f) => !f.activities.includes(TOOL_RUN),
        }),
      };
    },
  },
  {
    name: 'approval-approved',
    files: { 'approval-approved': 'a write tool approved over WebSocket (the decideApproval update), then run; the model answers.' },
    uses: 'WS message "Save a note: …", approval.required, WS approval frame {approved: true, digest}, turn.done',
    async run(ctx) {
      const { ws, workflowId } = await (await ctx.api()).session();
      ws.send({ type: 'message', content: NOTE });
      const required = await ws.waitFor(of('approval.required'));
      ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true, digest: required.data.digest });
      await turnDone(ws, 'completed');
      return {
        'approval-approved': expectPath(await settledHistory(ctx, workflowId), {
          'an update was accepted': (f) => f.updates.length === 1,
          'the tool ran': (f) => f.activities.includes(TOOL_RUN),
        }),
      };
    },
  },
  {
    name: 'approval-rejected',
    files: { 'approval-rejected': 'a write tool rejected with feedback over REST (POST /approvals/:toolCallId); the tool never runs, the model answers.' },
    uses: 'WS message "Save a note: …", approval.required, POST /sessions/:id/approvals/:toolCallId {approved: false}, turn.done',
    async run(ctx) {
      const api = await ctx.api();
      const { sessionId, ws, workflowId } = await api.session();
      ws.send({ type: 'message', content: NOTE });
      const required = await ws.waitFor(of('approval.required'));
      const res = await api.request('POST', `/sessions/${sessionId}/approvals/${required.data.toolCallId}`, { approved: false, feedback: 'not today' });
      if (res.status !== 200) throw new Error(`POST /approvals: ${res.status} ${res.text}`);
      await turnDone(ws, 'completed');
      return {
        'approval-rejected': expectPath(await settledHistory(ctx, workflowId), {
          'an update was accepted': (f) => f.updates.length === 1,
          'no tool ran': (f) => !f.activities.includes(TOOL_RUN),
        }),
      };
    },
  },
  {
    name: 'approval-expired',
    files: { 'approval-expired': 'nobody decides: the approval expires (agent approvalTtlMs 1000, its timer fires), the call is settled expired and the model answers.' },
    uses: 'agent short-approvals (test/histories/agents.yaml), WS message "Save a note: …", approval.resolved {outcome: expired}, turn.done',
    async run(ctx) {
      const { ws, workflowId } = await (await ctx.api()).session('short-approvals');
      ws.send({ type: 'message', content: NOTE });
      const resolved = await ws.waitFor(of('approval.resolved'));
      if (resolved.data.outcome !== 'expired') throw new NotRecorded(`the approval resolved ${resolved.data.outcome}`);
      await turnDone(ws, 'completed');
      return {
        'approval-expired': expectPath(await settledHistory(ctx, workflowId), {
          'the expiry timer fired': (f) => f.timersFired === 1,
          'no tool ran': (f) => !f.activities.includes(TOOL_RUN),
        }),
      };
    },
  },
  {
    name: 'cancel-during-tool',
    files: { 'cancel-during-tool': 'a cancel (WebSocket cancel frame) while a tool activity runs (http_request to an endpoint that never answers): the tool is cancelled, the turn ends cancelled.' },
    uses: 'model.script(toolCalls: http_request), KEEL_HTTP_ALLOW_HOSTS, WS message, WS cancel frame, turn.done {status: cancelled}',
    async run(ctx) {
      const { sessionId, ws, workflowId } = await (await ctx.api()).session();
      const route = `/slow/${sessionId}`;
      ctx.model.script(sessionId, { toolCalls: [call('http_request', { url: ctx.slow.url(route) })] });
      ws.send({ type: 'message', content: 'fetch the slow page' });
      await ctx.slow.waitForRequest(route);
      cancelOverWebSocket(ws);
      await turnDone(ws, 'cancelled');
      return { 'cancel-during-tool': expectPath(await settledHistory(ctx, workflowId), { 'the running tool was cancelled': (f) => f.cancelRequested.includes(TOOL_RUN) }) };
    },
  },
  {
    name: 'cancel-during-stream',
    files: { 'cancel-during-stream': 'a cancel (REST POST /cancel) while the model streams its reply: the stream activity is cancelled, the turn ends cancelled.' },
    uses: 'model.script(reply, tokenDelayMs), WS message, stream.delta, POST /sessions/:id/cancel, turn.done {status: cancelled}',
    async run(ctx) {
      const api = await ctx.api();
      const { sessionId, ws, workflowId } = await api.session();
      ctx.model.script(sessionId, LONG_REPLY);
      ws.send({ type: 'message', content: 'talk for a while' });
      await ws.waitForCount(of('stream.delta'), 2);
      await cancelOverRest(api, sessionId);
      await turnDone(ws, 'cancelled');
      return { 'cancel-during-stream': expectPath(await settledHistory(ctx, workflowId), { 'the stream was cancelled': (f) => f.cancelRequested.includes(MODEL_CALL) }) };
    },
  },
  {
    name: 'interrupt-during-stream',
    files: { 'interrupt-during-stream': 'busy policy interrupt: a second message while the model streams cancels that turn, and the second message is answered.' },
    uses: 'agent interrupter (test/histories/agents.yaml), model.script(reply, tokenDelayMs), WS message x2, turn.done',
    async run(ctx) {
      const { sessionId, ws, workflowId } = await (await ctx.api()).session('interrupter');
      ctx.model.script(sessionId, LONG_REPLY);
      ws.send({ type: 'message', content: 'talk for a while' });
      await ws.waitForCount(of('stream.delta'), 2);
      ws.send({ type: 'message', content: 'stop and answer this' });
      await turnDone(ws, 'cancelled', 1);
      await turnDone(ws, 'completed', 2);
      return { 'interrupt-during-stream': expectPath(await settledHistory(ctx, workflowId), { 'the first stream was cancelled': (f) => f.cancelRequested.includes(MODEL_CALL) }) };
    },
  },
  {
    name: 'busy-refused',
    files: { 'busy-refused': 'busy policy reject: messages sent at once; the workflow takes the first and refuses the others that got past the API\'s own busy check (SESSION_BUSY, the rejectMessages activity).' },
    attempts: 8,
    uses: 'agent busy-reject (test/histories/agents.yaml), model.script(reply, tokenDelayMs), three concurrent POST /sessions/:id/messages (two must pass the API busy check so the workflow refuses one: a race, retried), error {code: SESSION_BUSY}, turn.done',
    async run(ctx) {
      // The API refuses a message to a busy session itself, before the workflow sees it; only
      // a message that races that check is refused by the workflow, which is the path recorded.
      const api = await ctx.api();
      const { sessionId, ws, workflowId } = await api.session('busy-reject');
      // A long first turn, so the second message reaches the workflow while it runs.
      ctx.model.script(sessionId, LONG_REPLY);
      // Three at once, so that more often two of them pass the API's check before the first reaches the workflow.
      const sends = await Promise.all(['first', 'second', 'third'].map((id) => api.request('POST', `/sessions/${sessionId}/messages`, { content: `${id} message`, clientMessageId: id })));
      if (sends.some((s) => s.status !== 202 && s.status !== 409)) throw new Error(`POST /messages: ${sends.map((s) => `${s.status} ${s.text}`).join('; ')}`);
      if (sends.filter((s) => s.status === 202).length < 2) throw new NotRecorded('the API refused all but one message itself (it saw the first turn running)');
      const outcome = await ws.waitFor((f) => (f.type === 'error' && f.data.code === 'SESSION_BUSY') || ws.frames.filter(of('message.accepted')).length > 1, 30_000);
      if (outcome.type !== 'error') throw new NotRecorded('the workflow took both messages (the second arrived after the first turn)');
      await turnDone(ws, 'completed');
      return { 'busy-refused': expectPath(await settledHistory(ctx, workflowId), { 'the workflow refused a message': (f) => f.activities.includes(REFUSAL) }) };
    },
  },
  {
    name: 'cancel-after-approval',
    files: { 'cancel-after-approval': 'a cancel that lands after an approval was stored but before the approved write tool started: the tool never starts, the call is closed as not run.' },
    attempts: 12,
    uses: 'WS message "Save a note: …", approval.required, WS approval frame, approval.accepted, POST /sessions/:id/cancel at once, turn.done {status: cancelled}',
    async run(ctx) {
      const api = await ctx.api();
      const { sessionId, ws, workflowId } = await api.session();
      ws.send({ type: 'message', content: NOTE });
      const required = await ws.waitFor(of('approval.required'));
      ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true, digest: required.data.digest });
      await ws.waitFor(of('approval.accepted'));
      // The window: the approval is being stored; the write has not been scheduled yet.
      await cancelOverRest(api, sessionId);
      const done = await ws.waitFor(of('turn.done'));
      if (done.data.status !== 'cancelled') throw new NotRecorded(`the turn ended ${done.data.status}: the cancel came after the write`);
      return {
        'cancel-after-approval': expectPath(await settledHistory(ctx, workflowId), {
          'the approval was decided': (f) => f.updates.includes('decideApproval'),
          'the tool never ran': (f) => !f.activities.includes(TOOL_RUN),
        }),
      };
    },
  },
  {
    name: 'queue-full',
    files: { 'queue-full': 'a queue at its bound (KEEL_SESSION_MAX_QUEUED=2) while an approval waits: the next message and its resend are each refused by the workflow (SESSION_BUSY); after the approval every queued message is answered.' },
    uses: 'an API with KEEL_SESSION_MAX_QUEUED=2, WS message "Save a note: …", approval.required, POST /sessions/:id/messages x3 and a resend, error {code: SESSION_BUSY, clientMessageId} x2, WS approval frame, turn.done x3',
    async run(ctx) {
      const api = await ctx.api({ KEEL_SESSION_MAX_QUEUED: '2' });
      const { sessionId, ws, workflowId } = await api.session();
      ws.send({ type: 'message', content: NOTE });
      const required = await ws.waitFor(of('approval.required'));
      for (const id of ['queued-1', 'queued-2', 'over', 'over']) {
        const sent = await api.request('POST', `/sessions/${sessionId}/messages`, { content: `message ${id}`, clientMessageId: id });
        if (sent.status !== 202) throw new Error(`POST /messages: ${sent.status} ${sent.text}`);
      }
      await ws.waitForCount((f) => f.type === 'error' && f.data.code === 'SESSION_BUSY' && f.data.clientMessageId === 'over', 2);
      ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true, digest: required.data.digest });
      await turnDone(ws, 'completed', 3);
      return { 'queue-full': expectPath(await settledHistory(ctx, workflowId), { 'the workflow refused the message twice': (f) => f.activities.filter((a) => a === REFUSAL).length >= 1 }) };
    },
  },
  {
    name: 'continue-as-new',
    files: {
      'continue-as-new-first-run': `KEEL_CONTINUE_AS_NEW_EVENTS=${LOW_CONTINUE_AS_NEW_EVENTS}, four messages sent at once: the first run answers one and continues-as-new with the others still queued.`,
      'continue-as-new-next-run': 'the run after it: starts from the carried state and answers a queued message without a new signal (and continues-as-new in turn).',
    },
    uses: `KEEL_CONTINUE_AS_NEW_EVENTS=${LOW_CONTINUE_AS_NEW_EVENTS} (a second API process), WS message x4 sent back to back, turn.done x4, continuedExecutionRunId`,
    async run(ctx) {
      const api = await ctx.api({ KEEL_CONTINUE_AS_NEW_EVENTS: String(LOW_CONTINUE_AS_NEW_EVENTS) });
      const { ws, workflowId } = await api.session();
      for (let i = 1; i <= 4; i++) ws.send({ type: 'message', content: `queued message ${i}`, clientMessageId: `q${i}` });
      await turnDone(ws, 'completed', 4, 40_000);
      const runs = await runsOf(ctx, workflowId);
      if (runs.length < 2) throw new NotRecorded(`only ${runs.length} run`);
      const [first, next] = runs as [History, History];
      return {
        'continue-as-new-first-run': expectPath(first, {
          'ends in continue-as-new': (f) => f.last === 'workflowExecutionContinuedAsNew',
          'one turn answered': (f) => f.activities.filter((a) => a === MODEL_CALL).length === 1,
        }),
        'continue-as-new-next-run': expectPath(next, {
          'answers a carried message before any signal': (f) => f.kinds.indexOf('activityTaskScheduled') >= 0 && (f.signals.length === 0 || f.kinds.indexOf('activityTaskScheduled') < f.kinds.indexOf('workflowExecutionSignaled')),
        }),
      };
    },
  },
  {
    name: 'model-call-retried',
    files: { 'model-call-retried': 'the model server answers the first model call with HTTP 500; the streamReply activity is retried by Temporal and its second attempt completes the turn.' },
    uses: 'model.script(failNext: {count: 1, status: 500}), WS message, turn.done',
    async run(ctx) {
      const { sessionId, ws, workflowId } = await (await ctx.api()).session();
      ctx.model.script(sessionId, { failNext: { count: 1, status: 500 } });
      ws.send({ type: 'message', content: 'try again' });
      await turnDone(ws, 'completed');
      return { 'model-call-retried': expectPath(await settledHistory(ctx, workflowId), { 'streamReply completed on a later attempt': (f) => f.retried.includes(MODEL_CALL) }) };
    },
  },
  {
    name: 'idle-expired',
    files: { 'idle-expired': `one turn, then nothing for KEEL_SESSION_IDLE_TTL_MS=${SHORT_IDLE_TTL_MS}: the idle timer fires, the session expires and the workflow completes.` },
    uses: `KEEL_SESSION_IDLE_TTL_MS=${SHORT_IDLE_TTL_MS} (a second API process), WS message, turn.done, session.expired`,
    async run(ctx) {
      const api = await ctx.api({ KEEL_SESSION_IDLE_TTL_MS: String(SHORT_IDLE_TTL_MS) });
      const { ws, workflowId } = await api.session();
      ws.send({ type: 'message', content: 'hello, then silence' });
      await turnDone(ws, 'completed');
      await ws.waitFor(of('session.expired'));
      return {
        'idle-expired': expectPath(await closedHistory(ctx, workflowId), {
          'the idle timer fired': (f) => f.timersFired >= 1,
          'completed': (f) => f.last === 'workflowExecutionCompleted',
          'expireSession ran': (f) => f.activities.includes(EXPIRY),
        }),
      };
    },
  },
  {
    name: 'deleted',
    files: { deleted: 'one turn, then DELETE /sessions/:id, which ends the workflow.' },
    uses: 'WS message, turn.done, DELETE /sessions/:id (ends the workflow: terminates it, or lets it complete)',
    async run(ctx) {
      const api = await ctx.api();
      const { sessionId, ws, workflowId } = await api.session();
      ws.send({ type: 'message', content: 'forget me' });
      await turnDone(ws, 'completed');
      await settledHistory(ctx, workflowId);
      const res = await api.request('DELETE', `/sessions/${sessionId}`);
      if (res.status !== 204) throw new Error(`DELETE: ${res.status} ${res.text}`);
      return { deleted: expectPath(await closedHistory(ctx, workflowId), { 'the workflow ended': (f) => ['workflowExecutionTerminated', 'workflowExecutionCompleted'].includes(f.last) }) };
    },
  },
  {
    name: 'budget',
    files: {
      'budget-approved': 'a turn over its agent\'s token budget (maxTokens 5) pauses before its tool runs (budget.exceeded, an approval); approved over REST, the tool runs and the turn completes.',
      'budget-rejected': 'the same pause rejected: the turn ends with BUDGET_EXCEEDED and the tool call is closed without running.',
    },
    uses: 'agent budget, WS message, budget.exceeded + approval.required frames, POST /sessions/:id/approvals/:approvalId, turn.done',
    async run(ctx) {
      const api = await ctx.api();
      const histories: Record<string, History> = {};
      for (const approved of [true, false]) {
        const { sessionId, ws, workflowId } = await api.session('budgeted');
        ws.send({ type: 'message', content: 'What is 15 + 27?' });
        const paused = await ws.waitFor(of('budget.exceeded'));
        await settledHistory(ctx, workflowId);
        const res = await api.request('POST', `/sessions/${sessionId}/approvals/${paused.data.approvalId}`, { approved });
        if (res.status !== 200) throw new Error(`decide: ${res.status} ${res.text}`);
        await turnDone(ws, approved ? 'completed' : 'failed');
        histories[approved ? 'budget-approved' : 'budget-rejected'] = expectPath(await settledHistory(ctx, workflowId), {
          'paused for the budget': (f) => f.activities.includes('requestBudgetApproval'),
          'decided by an update': (f) => f.updates.includes('decideApproval'),
          [approved ? 'the tool ran' : 'the tool never ran']: (f) => f.activities.includes(TOOL_RUN) === approved,
        });
      }
      return histories;
    },
  },
  {
    name: 'agent-switched',
    files: { 'agent-switched': 'a session on version 2 of its agent answers a turn; an operator rolls version 2 back (POST /agents/:id/rollback), which moves the session (the switchAgent signal); its next turn runs version 1.' },
    uses: 'POST /agents/:id/versions, /activate {watch:false}, /rollback (admin), WS message, turn.done, the switchAgent signal',
    async run(ctx) {
      const v2 = await publish(ctx, 'released', { systemPrompt: 'Version 2 of the released assistant.' });
      await expectOk(ctx.admin('POST', '/agents/released/activate', { version: v2, watch: false }));
      const api = await ctx.api();
      const { sessionId, ws, workflowId } = await api.session('released');
      ws.send({ type: 'message', content: 'hello version 2' });
      await turnDone(ws, 'completed');
      await expectOk(ctx.admin('POST', '/agents/released/rollback', { reason: 'recorded for replay' }));
      ws.send({ type: 'message', content: 'hello version 1' });
      await turnDone(ws, 'completed', 2);
      const prompt = ctx.model.requests(sessionId).at(-1)?.body.messages[0]?.content;
      if (prompt === 'Version 2 of the released assistant.') throw new NotRecorded('the second turn still ran version 2');
      return { 'agent-switched': expectPath(await settledHistory(ctx, workflowId), { 'the switchAgent signal arrived': (f) => f.signals.includes('switchAgent'), 'two turns answered': (f) => f.activities.filter((a) => a === MODEL_CALL).length === 2 }) };
    },
  },
  {
    name: 'release-health',
    files: {
      'release-health-rollback': 'releaseHealthWorkflow (what the Schedule starts): a broken active version fails its probe (the model answers HTTP 500) and is rolled back to the one before it.',
      'release-watch-passed': 'releaseWatchWorkflow after an activation: a healthy version passes every check of a short probation (timers between checks).',
    },
    uses: 'POST /agents/:id/versions, /activate (admin), the local model\'s [keel-misbehave: error] marker, workflow start of releaseHealthWorkflow and releaseWatchWorkflow',
    async run(ctx) {
      const broken = await publish(ctx, 'released', { systemPrompt: 'A broken release. [keel-misbehave: error]' });
      await expectOk(ctx.admin('POST', '/agents/released/activate', { version: broken, watch: false }));
      const health = await ctx.temporal.workflow.start('releaseHealthWorkflow', { taskQueue: ctx.taskQueue, workflowId: `record-release-health-${Date.now()}`, args: [] });
      await health.result();
      const good = (await ctx.admin('GET', '/agents/released/versions')).body.release.activeVersion as number;
      const watch = await ctx.temporal.workflow.start('releaseWatchWorkflow', {
        taskQueue: ctx.taskQueue,
        workflowId: `record-release-watch-${Date.now()}`,
        args: [{ target: { agentId: 'released', version: good, role: 'active' }, probationMs: 1_500, intervalMs: 500 }],
      });
      await watch.result();
      return {
        'release-health-rollback': expectPath(await closedHistory(ctx, health.workflowId), { 'rolled back': (f) => f.activities.includes('rollbackRelease'), 'completed': (f) => f.last === 'workflowExecutionCompleted' }),
        'release-watch-passed': expectPath(await closedHistory(ctx, watch.workflowId), { 'checked more than once': (f) => f.activities.filter((a) => a === 'evaluateRelease').length >= 2, 'slept between checks': (f) => f.timersFired >= 1, 'never rolled back': (f) => !f.activities.includes('rollbackRelease') }),
      };
    },
  },
  {
    name: 'webhook-delivery',
    files: {
      'webhook-delivered-after-retry': 'webhookDeliveryWorkflow for a run\'s webhook (started by the worker\'s outbox): the receiver answers 500 once, the activity is retried and delivers.',
      'webhook-refused': 'the same delivery to a receiver that answers 400: refused for good, the workflow settles the delivery failed (settleUndeliveredWebhook).',
    },
    uses: 'POST /runs {webhookUrl} (KEEL_WEBHOOK_SECRET, KEEL_WEBHOOK_ALLOW_HOSTS), the outbox\'s workflow ID webhook-run-<runId>',
    async run(ctx) {
      const answers: Record<string, number[]> = { '/retry': [500, 204], '/refuse': [400] };
      const receiver = http.createServer((req, res) => {
        req.resume();
        const queue = answers[req.url ?? ''] ?? [404];
        res.writeHead(queue.length > 1 ? queue.shift()! : queue[0]!).end();
      });
      await new Promise<void>((resolve) => receiver.listen(0, '127.0.0.1', resolve));
      try {
        const api = await ctx.api();
        const histories: Record<string, History> = {};
        for (const [route, file] of [['/retry', 'webhook-delivered-after-retry'], ['/refuse', 'webhook-refused']] as const) {
          const res = await api.request('POST', '/runs', { input: `webhook ${route}`, webhookUrl: `http://127.0.0.1:${(receiver.address() as AddressInfo).port}${route}` });
          if (res.status !== 202) throw new Error(`POST /runs: ${res.status} ${res.text}`);
          const workflowId = `webhook-run-${res.body.runId}`;
          const deadline = Date.now() + 30_000;
          while (!(await ctx.temporal.workflow.getHandle(workflowId).describe().then(() => true, () => false))) {
            if (Date.now() > deadline) throw new Error(`${workflowId} was never started`);
            await pause(100);
          }
          histories[file] = await closedHistory(ctx, workflowId);
        }
        return {
          'webhook-delivered-after-retry': expectPath(histories['webhook-delivered-after-retry']!, { 'delivered on a later attempt': (f) => f.retried.includes('deliverWebhook') && !f.activities.includes('settleUndeliveredWebhook') }),
          'webhook-refused': expectPath(histories['webhook-refused']!, { 'settled failed': (f) => f.activities.includes('settleUndeliveredWebhook') }),
        };
      } finally {
        await new Promise((resolve) => receiver.close(resolve));
      }
    },
  },
  {
    name: 'routed',
    files: {
      'routed-turn': 'a router session (the `desk` router): the message is classified (routeMessage), one member starts (startAgent) and answers with its read tool.',
      'routed-handoff': 'a routed member hands off (the built-in handoff tool) to another, which answers in the same turn.',
      'routed-skipped': 'two intents in order: the first member\'s write is rejected, so the second member is skipped (closeTurn) and the user told.',
      'routed-clarification': 'a message no member matches: the router asks a question, no member runs.',
    },
    uses: 'POST /sessions {agentId: desk}, WS message and approval frames, turn.done, the local model\'s keyword routing and handoff phrasing',
    async run(ctx) {
      const api = await ctx.api();
      const histories: Record<string, History> = {};
      const routed = (f: Facts) => f.activities.includes('routeMessage');
      {
        const { ws, workflowId } = await api.session('desk');
        ws.send({ type: 'message', content: 'Where is order 1002?' });
        await turnDone(ws, 'completed');
        histories['routed-turn'] = expectPath(await settledHistory(ctx, workflowId), { routed, 'a member started': (f) => f.activities.includes('startAgent'), 'the tool ran': (f) => f.activities.includes(TOOL_RUN) });
      }
      {
        const { ws, workflowId } = await api.session('desk');
        ws.send({ type: 'message', content: 'Where is order 1002? Please hand me over to desk_discount' });
        await turnDone(ws, 'completed');
        if (!ws.frames.some(of('agent.handoff'))) throw new NotRecorded('no handoff');
        histories['routed-handoff'] = expectPath(await settledHistory(ctx, workflowId), { routed, 'two members started': (f) => f.activities.filter((a) => a === 'startAgent').length === 2 });
      }
      {
        const { ws, workflowId } = await api.session('desk');
        ws.send({ type: 'message', content: 'Cancel order 1006 and send me a coupon' });
        const required = await ws.waitFor(of('approval.required'));
        await settledHistory(ctx, workflowId);
        ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: false });
        await turnDone(ws, 'completed');
        histories['routed-skipped'] = expectPath(await settledHistory(ctx, workflowId), { routed, 'the rest was skipped': (f) => f.activities.includes('closeTurn') });
      }
      {
        const { ws, workflowId } = await api.session('desk');
        ws.send({ type: 'message', content: 'Hello there' });
        await turnDone(ws, 'completed');
        histories['routed-clarification'] = expectPath(await settledHistory(ctx, workflowId), { routed, 'no member ran': (f) => !f.activities.includes('startAgent') });
      }
      return histories;
    },
  },
  {
    name: 'escalation',
    files: {
      'escalated-and-handed-back': 'a routed user asks for a person: the conversation is escalated (escalate), the next message is held for the operator (closeTurn), the operator hands it back (handBack signal) and the next message is answered.',
      'ordered-skip': 'ordered actions in one agent: of two calls in one reply, the first is rejected and the second skipped.',
    },
    uses: 'POST /sessions, WS message and approval frames, POST /sessions/:id/hand-back (admin), turn.done.awaitingOperator',
    async run(ctx) {
      const api = await ctx.api();
      const histories: Record<string, History> = {};
      {
        const { sessionId, ws, workflowId } = await api.session('desk');
        ws.send({ type: 'message', content: 'I want to talk to a human' });
        await ws.waitFor(of('session.escalated'));
        await turnDone(ws, 'completed');
        ws.send({ type: 'message', content: 'hello?' });
        await turnDone(ws, 'completed', 2);
        await expectOk(ctx.admin('POST', `/sessions/${sessionId}/hand-back`, {}));
        ws.send({ type: 'message', content: 'Where is order 1003?' });
        await turnDone(ws, 'completed', 3);
        histories['escalated-and-handed-back'] = expectPath(await settledHistory(ctx, workflowId), {
          escalated: (f) => f.activities.includes('escalate'),
          'held for the operator': (f) => f.activities.includes('closeTurn'),
          'handed back': (f) => f.signals.includes('handBack'),
        });
      }
      {
        const { sessionId, ws, workflowId } = await api.session();
        ctx.model.script(sessionId, { toolCalls: [call('create_note', { title: 'a', body: 'a' }), call('calculator', { expression: '1 + 1' })] });
        ws.send({ type: 'message', content: 'two things' });
        const required = await ws.waitFor(of('approval.required'));
        await settledHistory(ctx, workflowId);
        ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: false });
        await turnDone(ws, 'completed');
        const skipped = ws.frames.some((f) => f.type === 'tool.result' && f.data.status === 'skipped');
        if (!skipped) throw new NotRecorded('nothing was skipped');
        histories['ordered-skip'] = expectPath(await settledHistory(ctx, workflowId), { 'the calculator never ran': (f) => !f.activities.includes(TOOL_RUN) });
      }
      return histories;
    },
  },
  {
    name: 'outside',
    files: {
      'external-event-woke': 'an outside event (POST /sessions/:id/external-events) on an agent whose events wake a turn: the externalEvent signal queues it and the agent answers it.',
      'operator-took-over': 'an operator escalates an idle session (POST /sessions/:id/escalate, the escalate signal); the next message is held for the operator.',
    },
    uses: 'agent externalEvents.mode wake, POST /sessions/:id/external-events and /escalate (admin), turn.done',
    async run(ctx) {
      const api = await ctx.api();
      const histories: Record<string, History> = {};
      {
        const { sessionId, ws, workflowId } = await api.session('notified');
        await expectOk(ctx.admin('POST', `/sessions/${sessionId}/external-events`, { type: 'order.shipped', data: { orderId: '1001' } }));
        await turnDone(ws, 'completed');
        histories['external-event-woke'] = expectPath(await settledHistory(ctx, workflowId), { 'the signal arrived': (f) => f.signals.includes('externalEvent'), 'a turn answered it': (f) => f.activities.includes(MODEL_CALL) });
      }
      {
        const { sessionId, ws, workflowId } = await api.session('notified');
        await expectOk(ctx.admin('POST', `/sessions/${sessionId}/escalate`, { reason: 'recorded for replay' }));
        await ws.waitFor(of('session.escalated'));
        ws.send({ type: 'message', content: 'anyone there?' });
        await turnDone(ws, 'completed');
        histories['operator-took-over'] = expectPath(await settledHistory(ctx, workflowId), { 'escalated by signal': (f) => f.signals.includes('escalate') && f.activities.includes('escalate'), 'held for the operator': (f) => f.activities.includes('closeTurn') });
      }
      return histories;
    },
  },
  {
    name: 'openapi-import',
    files: {
      'openapi-import-ready': 'openapiImportWorkflow for a spec given inline (POST /openapi/imports {spec}): fetching (nothing to fetch), validating, parsing and classifying (the local model) steps, then ready.',
      'openapi-import-failed': 'the same for a Swagger 2.0 spec: the validating step refuses it (SPEC_UNSUPPORTED_VERSION, not retried) and the workflow records the import failed.',
    },
    uses: 'POST /openapi/imports {spec, agentId} (admin), GET /openapi/imports/:id, the workflow ID openapi-import-<id>',
    async run(ctx) {
      const spec = {
        openapi: '3.1.0',
        info: { title: 'Recorded', version: '1' },
        servers: [{ url: 'https://api.example.com' }],
        paths: { '/orders/{orderId}': { get: { operationId: 'getOrder', parameters: [{ name: 'orderId', in: 'path', required: true, schema: { type: 'string' } }], responses: { '200': { description: 'ok' } } } } },
      };
      const swagger = { swagger: '2.0', info: { title: 'Old', version: '1' }, paths: {} };
      const histories: Record<string, History> = {};
      for (const [file, body, status] of [['openapi-import-ready', spec, 'ready'], ['openapi-import-failed', swagger, 'failed']] as const) {
        const res = await ctx.admin('POST', '/openapi/imports', { agentId: 'default', spec: body });
        if (res.status !== 202) throw new Error(`POST /openapi/imports: ${res.status} ${res.text}`);
        histories[file] = await closedHistory(ctx, `openapi-import-${res.body.id}`);
        const stored = (await ctx.admin('GET', `/openapi/imports/${res.body.id}`)).body;
        if (stored.status !== status) throw new Error(`the import ended ${stored.status} (${JSON.stringify(stored.error)}), not ${status}`);
      }
      return {
        'openapi-import-ready': expectPath(histories['openapi-import-ready']!, {
          'every step ran': (f) => ['fetchOpenapiSpec', 'validateOpenapiSpec', 'parseOpenapiSpec', 'classifyOpenapiOperations', 'finishOpenapiImport'].every((a) => f.activities.includes(a)),
          completed: (f) => f.last === 'workflowExecutionCompleted',
        }),
        'openapi-import-failed': expectPath(histories['openapi-import-failed']!, {
          'stopped at validation': (f) => f.activities.includes('validateOpenapiSpec') && !f.activities.includes('parseOpenapiSpec') && f.activities.includes('finishOpenapiImport'),
          completed: (f) => f.last === 'workflowExecutionCompleted',
        }),
      };
    },
  },
  {
    name: 'effects',
    files: {
      'outcome-unknown-resent': 'a write whose earlier attempt left an intent and no receipt (a worker died after sending), not idempotent: executeTool answers outcome_unknown, a person approves (requestEffectDecision), and it is sent again (forced).',
      'outcome-unknown-marked-done': 'the same, rejected: the call is marked done (closeUnknownEffect) without running.',
    },
    uses: 'agent toolPolicy idempotent: false, the model script\'s fixed tool call id, the effects table, POST /sessions/:id/approvals/:id',
    async run(ctx) {
      const api = await ctx.api();
      const histories: Record<string, History> = {};
      for (const approved of [true, false]) {
        const { sessionId, ws, workflowId } = await api.session('once');
        // The crashed attempt's intent, staged: the call's ID comes from the session, turn, step and the model's call ID.
        const toolCallId = toolCallIdOf(sessionId, 1, 1, 'call_staged');
        await ctx.db.query(`INSERT INTO effects (tool_call_id, session_id, name, idempotency_key, idempotent, status) VALUES ($1, $2, 'create_note', $3, false, 'intent')`, [toolCallId, sessionId, `${workflowId}:${toolCallId}`]);
        ctx.model.script(sessionId, { toolCalls: [{ id: 'call_staged', ...call('create_note', { title: 'once', body: 'once' }) }] });
        ws.send({ type: 'message', content: 'save it once' });
        const required = await ws.waitFor((f) => f.type === 'approval.required' && f.data.name === 'create_note');
        ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
        const unknown = await ws.waitFor((f) => f.type === 'approval.required' && f.data.name === 'outcome_unknown');
        await settledHistory(ctx, workflowId);
        const res = await api.request('POST', `/sessions/${sessionId}/approvals/${unknown.data.toolCallId}`, { approved });
        if (res.status !== 200) throw new Error(`decide: ${res.status} ${res.text}`);
        await turnDone(ws, 'completed');
        histories[approved ? 'outcome-unknown-resent' : 'outcome-unknown-marked-done'] = expectPath(await settledHistory(ctx, workflowId), {
          'asked a person': (f) => f.activities.includes('requestEffectDecision'),
          [approved ? 'sent again' : 'marked done']: (f) => (approved ? f.activities.filter((a) => a === TOOL_RUN).length === 2 : f.activities.includes('closeUnknownEffect')),
        });
      }
      return histories;
    },
  },
];

async function expectOk(pending: Promise<{ status: number; text: string }>): Promise<void> {
  const res = await pending;
  if (res.status < 200 || res.status > 299) throw new Error(`${res.status} ${res.text}`);
}

/** Publishes the agent's active definition with `changes`; returns the new version. */
async function publish(ctx: Context, agentId: string, changes: Record<string, unknown>): Promise<number> {
  const current = (await ctx.admin('GET', `/agents/${agentId}/versions`)).body;
  const definition = current.versions.find((v: { version: number }) => v.version === current.release.activeVersion).definition;
  const res = await ctx.admin('POST', `/agents/${agentId}/versions`, { ...definition, ...changes });
  if (res.status !== 201 && res.status !== 200) throw new Error(`publish: ${res.status} ${res.text}`);
  return res.body.version as number;
}

// ---------------------------------------------------------------------------------------------
// Files

async function writeAtomically(file: string, text: string): Promise<void> {
  const tmp = `${file}.${process.pid}.tmp`;
  await writeFile(tmp, text);
  await rename(tmp, file);
}

/** The README lists every history; the replay test fails for a history it does not list, or a listed one that is missing. */
async function writeReadme(): Promise<void> {
  const file = path.join(OUT_DIR, 'README.md');
  const previous = await readFile(file, 'utf8').catch(() => '');
  const keptAt = previous.indexOf(KEPT_HEADING);
  const kept = keptAt >= 0 ? previous.slice(keptAt).trimEnd() : `${KEPT_HEADING}\n\nNone yet. (When a workflow change is guarded with \`patched()\`, copy the histories it affects here under a new name, e.g. \`plain-turn.v1.json\`, with a line each, before re-recording; see docs/design/002-workflow-versioning.md.)`;
  const lines = scenarios.flatMap((s) => Object.entries(s.files).map(([name, covers]) => `- \`${name}.json\`: ${covers}`));
  const text = [
    '# Recorded session histories',
    '',
    'Real `sessionWorkflow` histories, each from one session driven through the API (REST and WebSocket) by',
    '`scripts/record-histories.ts`, with a real worker, Temporal dev server, Postgres and the local model server.',
    '`test/replay.test.ts` replays every `*.json` here against the current workflow code, plain and traced bundles:',
    'a failure means the change would break sessions that are running now. The rule, and when to add or re-record',
    'a history: [docs/design/002-workflow-versioning.md](../../docs/design/002-workflow-versioning.md).',
    '',
    'Re-record all of them, or some by scenario name (this overwrites their files and rewrites this README, keeping',
    'the last section):',
    '',
    '```sh',
    RECORD_COMMAND,
    `${RECORD_COMMAND} -- approval-pending continue-as-new   # or: npx tsx scripts/record-histories.ts …`,
    'npx tsx scripts/record-histories.ts --list                 # scenarios and the API calls each depends on',
    '```',
    '',
    '`agents.yaml` holds the agents the recorder uses (short approval TTL, busy policies).',
    '',
    '## Histories',
    '',
    ...lines,
    '',
    kept,
    '',
  ].join('\n');
  await writeAtomically(file, text);
}

// ---------------------------------------------------------------------------------------------
// Running

/**
 * Stops this process's own children that are still running: startStack spawns the worker
 * before the API, and leaves it running when the API then fails to start. Linux only (/proc).
 */
async function stopLeftoverChildren(): Promise<void> {
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = await readFile(`/proc/${entry}/stat`, 'utf8').catch(() => '');
    const parent = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (parent === process.pid) {
      try {
        process.kill(Number(entry), 'SIGTERM');
      } catch {
        // Already gone.
      }
    }
  }
}

function parseArgs(argv: string[]) {
  const flags = new Set(argv.filter((a) => a.startsWith('--')));
  const names = argv.filter((a) => !a.startsWith('--'));
  const unknownFlags = [...flags].filter((f) => !['--list', '--verbose'].includes(f));
  if (unknownFlags.length) throw new Error(`unknown option ${unknownFlags.join(', ')}`);
  const known = new Map(scenarios.map((s) => [s.name, s]));
  for (const s of scenarios) for (const file of Object.keys(s.files)) if (!known.has(file)) known.set(file, s);
  const unknown = names.filter((n) => !known.has(n));
  if (unknown.length) throw new Error(`unknown scenario ${unknown.join(', ')}; scenarios: ${scenarios.map((s) => s.name).join(', ')}`);
  const selected = names.length ? scenarios.filter((s) => names.some((n) => known.get(n) === s)) : scenarios;
  return { list: flags.has('--list'), verbose: flags.has('--verbose'), selected };
}

async function main(): Promise<number> {
  const { list, verbose, selected } = parseArgs(process.argv.slice(2));
  if (list) {
    for (const s of scenarios) process.stdout.write(`${s.name}\n  files: ${Object.keys(s.files).map((f) => `${f}.json`).join(', ')}\n  uses:  ${s.uses}\n`);
    return 0;
  }
  if (verbose) process.env.KEEL_TEST_VERBOSE = '1';
  const say = (line: string) => process.stderr.write(`[record] ${line}\n`);
  const serviceLog: Log = verbose ? (line) => process.stderr.write(`[services] ${line}\n`) : () => undefined;
  const started = Date.now();
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async () => {
    for (const stop of stops.splice(0).reverse()) await stop().catch((error: unknown) => say(`stopping: ${String(error)}`));
    await stopLeftoverChildren();
  };
  let interrupted = false;
  process.once('SIGINT', () => {
    interrupted = true;
    say('interrupted: stopping the services');
    void stopAll().then(() => process.exit(130));
  });

  const failures: string[] = [];
  try {
    say('starting Temporal dev server and Postgres');
    const dataDir = path.join(os.tmpdir(), `keel-histories-${process.pid}`);
    const [temporal, postgres] = await Promise.all([
      startTemporalDevServer({ port: 0, headless: true, log: serviceLog }),
      startEmbeddedPostgres({ dataDir, port: 0, persistent: false, log: serviceLog }),
    ]);
    stops.push(temporal.stop, postgres.stop);
    // What test/support/stack.ts reads: these servers, never ones left running elsewhere.
    process.env.KEEL_TEST_TEMPORAL_ADDRESS = temporal.address;
    process.env.KEEL_TEST_ADMIN_DATABASE_URL = postgres.adminUrl;
    delete process.env.KEEL_TEST_WORKFLOW_BUNDLE;

    const slow = new SlowEndpoint();
    const slowPort = await slow.start();
    stops.push(() => slow.stop());
    say('starting worker and API (bundling the workflow code if it changed)');
    const stack: Stack = await startStack({
      env: {
        KEEL_AGENTS_FILE: AGENTS_FILE,
        KEEL_HTTP_ALLOW_HOSTS: `127.0.0.1:${slowPort}`,
        KEEL_HTTP_TIMEOUT_MS: '60000',
        // The webhook-delivery scenario's receiver is on loopback; its retry waits briefly.
        KEEL_WEBHOOK_SECRET: 'recorder-webhook-secret',
        KEEL_WEBHOOK_ALLOW_HOSTS: '127.0.0.1',
        KEEL_WEBHOOK_RETRY_INITIAL_MS: '200',
        // Histories are recorded untraced; test/replay.test.ts replays them on both bundles.
        OTEL_EXPORTER_OTLP_ENDPOINT: '',
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '',
      },
    });
    stops.push(() => stack.stop());
    const connection = await Connection.connect({ address: temporal.address });
    stops.push(() => connection.close());
    const temporalClient = new Client({ connection });

    const sockets: WsClient[] = [];
    stops.push(async () => void (await Promise.all(sockets.map((s) => s.close().catch(() => undefined)))));
    const apis = new Map<string, Promise<Api>>([['{}', Promise.resolve(new Api(stack.base, sockets))]]);
    const extraApis: Spawned[] = [];
    stops.push(async () => void (await Promise.all(extraApis.map((a) => a.kill()))));
    const ctx: Context = {
      db: stack.db,
      admin: () => Promise.reject(new Error('not ready')),
      taskQueue: stack.env.KEEL_TASK_QUEUE!,
      model: stack.model,
      temporal: temporalClient,
      slow,
      api(env = {}) {
        const key = JSON.stringify(env);
        let api = apis.get(key);
        if (!api) {
          api = (async () => {
            const extra = spawnEntry('api/main.ts', { ...stack.env, ...env });
            extraApis.push(extra);
            const port = Number((await extra.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/))[1]);
            return new Api(`http://127.0.0.1:${port}`, sockets);
          })();
          apis.set(key, api);
        }
        return api;
      },
    };
    const adminApi = new Api(stack.base, sockets, await stack.issueToken('recorder-admin', true));
    ctx.admin = (method, route, body) => adminApi.request(method, route, body);
    say(`ready after ${((Date.now() - started) / 1000).toFixed(1)} s`);

    await mkdir(OUT_DIR, { recursive: true });
    for (const scenario of selected) {
      if (interrupted) break;
      const t0 = Date.now();
      for (let attempt = 1; ; attempt++) {
        try {
          const histories = await scenario.run(ctx);
          const expected = Object.keys(scenario.files).sort();
          if (JSON.stringify(Object.keys(histories).sort()) !== JSON.stringify(expected)) throw new Error(`returned ${Object.keys(histories).join(', ')}, expected ${expected.join(', ')}`);
          for (const [name, history] of Object.entries(histories)) {
            await writeAtomically(path.join(OUT_DIR, `${name}.json`), historyToJsonText(history));
            say(`${name}.json: ${summary(factsOf(history))}`);
          }
          say(`${scenario.name} recorded in ${((Date.now() - t0) / 1000).toFixed(1)} s${attempt > 1 ? ` (attempt ${attempt})` : ''}`);
          break;
        } catch (error) {
          const message = error instanceof Error ? error.message : String(error);
          if (error instanceof NotRecorded && attempt < (scenario.attempts ?? ATTEMPTS)) {
            say(`${scenario.name}: ${message}; trying again`);
            continue;
          }
          say(`${scenario.name} FAILED: ${message}`);
          failures.push(scenario.name);
          break;
        } finally {
          // The API allows a user 20 open sockets per process.
          await Promise.all(sockets.splice(0).map((socket) => socket.close().catch(() => undefined)));
        }
      }
    }
    await writeReadme();
  } finally {
    say('stopping');
    await stopAll();
  }
  say(`done in ${((Date.now() - started) / 1000).toFixed(1)} s${failures.length ? `; not recorded: ${failures.join(', ')}` : ''}`);
  return failures.length ? 1 : 0;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (error: unknown) => {
      console.error(error);
      process.exit(1);
    },
  );
}
