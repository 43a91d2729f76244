import { randomBytes } from 'node:crypto';
import { sql, type CommonQueryMethods, type DatabasePool, type DatabaseTransactionConnection, type FragmentSqlToken } from 'slonik';
import { z } from 'zod';
import type { DurableEvent, DurableEventData } from '../contracts/events';
import { PLATFORM_FAILURE_CODES, RunStatus, isFinalRunStatus } from '../contracts/runs';
import { Budget } from '../contracts/agents';
import type { appendEvent } from './events';

/** The event writer, passed in: db/events.ts calls into this module, so it cannot be imported here. */
export type AppendEvent = typeof appendEvent;

export const RunRow = z.object({
  id: z.string(),
  owner_id: z.string(),
  session_id: z.string().nullable(),
  agent_id: z.string(),
  message_id: z.string().nullable(),
  input_digest: z.string(),
  idempotency_key: z.string().nullable(),
  dedupe_active: z.boolean(),
  webhook_url: z.string().nullable(),
  budget: Budget.nullable(),
  status: RunStatus,
  turn: z.number().nullable(),
  pending_approvals: z.number(),
  start_seq: z.number(),
  final_seq: z.number().nullable(),
  error_code: z.string().nullable(),
  error_message: z.string().nullable(),
  cancelled_by: z.string().nullable(),
  reply_message_id: z.string().nullable(),
  input_tokens: z.number().nullable(),
  output_tokens: z.number().nullable(),
  cost_usd: z.coerce.number().nullable(),
  send_lease_until: z.number().nullable(),
  sent_at: z.number().nullable(),
  turn_started_at: z.number().nullable(),
  turn_ended_at: z.number().nullable(),
  webhook_status: z.enum(['pending', 'delivered', 'failed']).nullable(),
  finalized_at: z.number().nullable(),
  finalize_lease_until: z.number().nullable(),
  created_at: z.number(),
  started_at: z.number().nullable(),
  finished_at: z.number().nullable(),
  updated_at: z.number(),
});
export type RunRow = z.infer<typeof RunRow>;

/** A run as read for callers: with its reply's text (NULL once the session is deleted). */
export const RunRecord = RunRow.extend({ reply_content: z.string().nullable() });
export type RunRecord = z.infer<typeof RunRecord>;

const COLUMNS = sql.fragment`r.id, r.owner_id, r.session_id, r.agent_id, r.message_id, r.input_digest, r.idempotency_key, r.dedupe_active,
  r.webhook_url, r.budget, r.status, r.turn, r.pending_approvals, r.start_seq, r.final_seq, r.error_code, r.error_message, r.cancelled_by,
  r.reply_message_id, r.input_tokens, r.output_tokens, r.cost_usd, r.send_lease_until, r.sent_at, r.turn_started_at, r.turn_ended_at,
  r.webhook_status, r.finalized_at, r.finalize_lease_until, r.created_at, r.started_at, r.finished_at, r.updated_at`;
const RECORD = sql.fragment`${COLUMNS}, m.content AS reply_content FROM runs r LEFT JOIN messages m ON m.id = r.reply_message_id AND m.deleted_at IS NULL`;

/** A random run ID, when the request has no trace to take one from. */
export function randomRunId(): string {
  return randomBytes(16).toString('hex');
}

// ---------------------------------------------------------------------------------------------
// Submitting

export interface RunClaim {
  /** The ID to give a new run (the request's trace ID); a random one if another run has it. */
  id: string;
  ownerId: string;
  agentId: string;
  /** The session to run in; null: a session is made for the run. */
  sessionId: string | null;
  inputDigest: string;
  /** Kept until the message is sent, for the worker's outbox to send it if this request dies first. */
  input: string;
  idempotencyKey?: string;
  webhookUrl?: string;
  budget?: Budget;
  /** How long an un-keyed repeat (same owner and digest) answers the same run. */
  dedupeWindowMs: number;
  /** How long the submitting request owns the sending of the message before a repeat may take over. */
  leaseMs: number;
}

/**
 * Finds the run a request repeats, or makes a new one, under an advisory lock on what
 * identifies it (the key, or owner and digest): identical requests at the same time make one
 * run. The lock is held for this short transaction only, never across a call to Temporal.
 */
export async function claimRun(pool: DatabasePool, c: RunClaim): Promise<{ run: RunRecord; created: boolean }> {
  return pool.transaction(async (tx) => {
    const identity = c.idempotencyKey === undefined ? `input:${c.ownerId}:${c.inputDigest}` : `key:${c.ownerId}:${c.idempotencyKey}`;
    await tx.query(sql.unsafe`SELECT pg_advisory_xact_lock(hashtextextended(${`keel-run:${identity}`}, 0))`);
    const existing =
      c.idempotencyKey === undefined
        ? await tx.maybeOne(sql.type(RunRecord)`
            SELECT ${RECORD} WHERE r.owner_id = ${c.ownerId} AND r.input_digest = ${c.inputDigest} AND r.idempotency_key IS NULL AND r.dedupe_active
              AND r.created_at > now() - ${c.dedupeWindowMs} * interval '1 millisecond'
            ORDER BY r.created_at DESC LIMIT 1`)
        : await tx.maybeOne(sql.type(RunRecord)`SELECT ${RECORD} WHERE r.owner_id = ${c.ownerId} AND r.idempotency_key = ${c.idempotencyKey} AND r.dedupe_active`);
    if (existing) return { run: existing, created: false };
    const id = (await insertRun(tx, c, c.id)) ?? (await insertRun(tx, c, randomRunId()));
    if (!id) throw new Error('could not store the run');
    await tx.query(sql.unsafe`INSERT INTO run_transitions (run_id, status, cause, at) SELECT id, 'queued', 'submit', created_at FROM runs WHERE id = ${id}`);
    return { run: await tx.one(sql.type(RunRecord)`SELECT ${RECORD} WHERE r.id = ${id}`), created: true };
  });
}

async function insertRun(tx: DatabaseTransactionConnection, c: RunClaim, id: string): Promise<string | null> {
  const sessionId = c.sessionId;
  return tx.maybeOneFirst(sql.type(z.object({ id: z.string() }))`
    INSERT INTO runs (id, owner_id, session_id, agent_id, input_digest, input, idempotency_key, webhook_url, budget, start_seq, send_lease_until)
    VALUES (${id}, ${c.ownerId}, ${sessionId}, ${c.agentId}, ${c.inputDigest}, ${c.input}, ${c.idempotencyKey ?? null},
            ${c.webhookUrl ?? null}, ${c.budget ? sql.jsonb(c.budget) : null}, COALESCE((SELECT MAX(seq) FROM session_events WHERE session_id = ${sessionId}), 0),
            statement_timestamp() + ${c.leaseMs} * interval '1 millisecond')
    ON CONFLICT (id) DO NOTHING
    RETURNING id`);
}

/** Puts the session made for the run on it; a run that already has one (a repeat got there first) keeps its own. */
export async function attachSession(db: CommonQueryMethods, runId: string, sessionId: string): Promise<RunRecord> {
  await db.query(sql.unsafe`UPDATE runs SET session_id = ${sessionId}, updated_at = statement_timestamp() WHERE id = ${runId} AND session_id IS NULL`);
  return db.one(sql.type(RunRecord)`SELECT ${RECORD} WHERE r.id = ${runId}`);
}

/** Names the message that carries the run's input, before it is sent: its acceptance gives the run its turn. */
export async function setMessageId(db: CommonQueryMethods, runId: string, messageId: string): Promise<RunRecord> {
  await db.query(sql.unsafe`UPDATE runs SET message_id = ${messageId}, updated_at = statement_timestamp() WHERE id = ${runId} AND message_id IS NULL`);
  return db.one(sql.type(RunRecord)`SELECT ${RECORD} WHERE r.id = ${runId}`);
}

export async function markSent(db: CommonQueryMethods, runId: string): Promise<void> {
  await db.query(sql.unsafe`UPDATE runs SET sent_at = COALESCE(sent_at, statement_timestamp()), send_lease_until = NULL, input = NULL, updated_at = statement_timestamp() WHERE id = ${runId}`);
}

/** Takes over the sending of a queued run's message whose sender has not finished within its lease (it died). */
export async function takeSendLease(db: CommonQueryMethods, runId: string, leaseMs: number): Promise<RunRecord | null> {
  const taken = await db.maybeOneFirst(sql.type(z.object({ id: z.string() }))`
    UPDATE runs SET send_lease_until = statement_timestamp() + ${leaseMs} * interval '1 millisecond', updated_at = statement_timestamp()
    WHERE id = ${runId} AND status = 'queued' AND sent_at IS NULL AND (send_lease_until IS NULL OR send_lease_until < statement_timestamp())
    RETURNING id`);
  return taken ? db.one(sql.type(RunRecord)`SELECT ${RECORD} WHERE r.id = ${runId}`) : null;
}

/**
 * The send failed in a way that may or may not have reached the session: the next repeat
 * re-sends at once, and the worker's outbox once the grace after this moment has passed.
 */
export async function releaseSendLease(db: CommonQueryMethods, runId: string): Promise<void> {
  await db.query(sql.unsafe`UPDATE runs SET send_lease_until = statement_timestamp() WHERE id = ${runId} AND sent_at IS NULL`);
}

export const UnsentRun = z.object({
  id: z.string(),
  session_id: z.string().nullable(),
  message_id: z.string().nullable(),
  input: z.string().nullable(),
  budget: Budget.nullable(),
});
export type UnsentRun = z.infer<typeof UnsentRun>;

/**
 * Takes over the sending of up to `limit` queued runs whose message nobody sent: their sender's
 * lease ran out more than `graceMs` ago (the API died, or its send failed and the client never
 * repeated). Leased for `leaseMs` like a repeat's takeover, so a repeat meanwhile waits for it.
 */
export async function claimUnsentRuns(db: CommonQueryMethods, opts: { graceMs: number; leaseMs: number; limit: number }): Promise<UnsentRun[]> {
  const rows = await db.any(sql.type(UnsentRun)`
    UPDATE runs SET send_lease_until = statement_timestamp() + ${opts.leaseMs} * interval '1 millisecond', updated_at = statement_timestamp()
    WHERE id IN (
      SELECT id FROM runs
      WHERE status = 'queued' AND sent_at IS NULL
        AND (send_lease_until IS NULL OR send_lease_until < statement_timestamp() - ${opts.graceMs} * interval '1 millisecond')
      ORDER BY created_at LIMIT ${opts.limit} FOR UPDATE SKIP LOCKED)
    RETURNING id, session_id, message_id, input, budget`);
  return [...rows];
}

// ---------------------------------------------------------------------------------------------
// Reading

export async function findRun(db: CommonQueryMethods, id: string): Promise<RunRecord | null> {
  return db.maybeOne(sql.type(RunRecord)`SELECT ${RECORD} WHERE r.id = ${id}`);
}

/** Newest first; `ownerId` undefined lists every user's runs (admins). */
export async function listRuns(db: CommonQueryMethods, opts: { ownerId?: string; status?: RunStatus; limit: number }): Promise<RunRecord[]> {
  const rows = await db.any(sql.type(RunRecord)`
    SELECT ${RECORD}
    WHERE (${opts.ownerId ?? null}::text IS NULL OR r.owner_id = ${opts.ownerId ?? null})
      AND (${opts.status ?? null}::text IS NULL OR r.status = ${opts.status ?? null})
    ORDER BY r.created_at DESC, r.id LIMIT ${opts.limit}`);
  return [...rows];
}

export const RunTransitionRow = z.object({ status: RunStatus, cause: z.string(), at: z.number() });
export type RunTransitionRow = z.infer<typeof RunTransitionRow>;

export async function runTransitions(db: CommonQueryMethods, runId: string): Promise<RunTransitionRow[]> {
  const rows = await db.any(sql.type(RunTransitionRow)`SELECT status, cause, at FROM run_transitions WHERE run_id = ${runId} ORDER BY id`);
  return [...rows];
}

/** The API's view of a run (also a webhook's body): ISO times, camelCase. */
export function runView(r: RunRecord) {
  const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
  return {
    id: r.id,
    /** The run ID is the trace ID of the request that submitted it. */
    traceId: r.id,
    status: r.status,
    sessionId: r.session_id,
    agentId: r.agent_id,
    turn: r.turn,
    idempotencyKey: r.idempotency_key,
    budget: r.budget,
    error: r.error_code === null || r.status === 'done' ? null : { code: r.error_code, message: r.error_message ?? '' },
    cancelledBy: r.cancelled_by,
    output: r.reply_message_id === null ? null : { messageId: r.reply_message_id, content: r.reply_content },
    usage: r.input_tokens === null ? null : { inputTokens: r.input_tokens, outputTokens: r.output_tokens ?? 0, costUsd: r.cost_usd ?? 0 },
    webhook: r.webhook_url === null ? null : { url: r.webhook_url, status: r.webhook_status },
    submittedAt: iso(r.created_at),
    startedAt: iso(r.started_at),
    finishedAt: iso(r.finished_at),
    updatedAt: iso(r.updated_at),
  };
}
export type RunView = ReturnType<typeof runView>;

// ---------------------------------------------------------------------------------------------
// Status changes

const Moved = z.object({ id: z.string(), before: RunStatus, after: RunStatus });
type Moved = z.infer<typeof Moved>;
const LIVE = sql.fragment`r.status IN ('queued', 'running', 'waiting_approval')`;

/**
 * Updates the runs `where` selects with `set` (whose right-hand sides read the old row as `r`)
 * and records a transition for each whose status changed. One statement; its times are all
 * statement_timestamp(), so a transition's time is exactly the started_at or finished_at it set.
 */
async function move(tx: CommonQueryMethods, where: FragmentSqlToken, set: FragmentSqlToken, cause: string): Promise<readonly Moved[]> {
  return tx.any(sql.type(Moved)`
    WITH target AS (SELECT id, status FROM runs WHERE ${where} FOR UPDATE),
    changed AS (
      UPDATE runs r SET ${set}, updated_at = statement_timestamp() FROM target t WHERE r.id = t.id
      RETURNING r.id, t.status AS before, r.status AS after
    ),
    logged AS (INSERT INTO run_transitions (run_id, status, cause, at) SELECT id, after, ${cause}, statement_timestamp() FROM changed WHERE after <> before)
    SELECT id, before, after FROM changed`);
}

/** `column = value` while the run is not final, else unchanged. */
const whileLive = (column: string, value: FragmentSqlToken | string | number | null) =>
  sql.fragment`${sql.identifier([column])} = CASE WHEN ${LIVE} THEN ${value} ELSE r.${sql.identifier([column])} END`;

/** Writes the run's run.progress event; a final status also marks where the run's event stream ends. */
async function progress(
  tx: DatabaseTransactionConnection,
  append: AppendEvent,
  run: { id: string; sessionId: string; status: RunStatus },
  cause: string,
  extra: { step?: number; tool?: string; toolCallId?: string } = {},
): Promise<void> {
  const { event } = await append(tx, { sessionId: run.sessionId, key: `run:${run.id}:${cause}`, type: 'run.progress', data: { runId: run.id, status: run.status, ...extra } });
  if (isFinalRunStatus(run.status)) await tx.query(sql.unsafe`UPDATE runs SET final_seq = ${event.seq} WHERE id = ${run.id}`);
}

async function progressOfMoves(tx: DatabaseTransactionConnection, append: AppendEvent, sessionId: string, moved: readonly Moved[], cause: string, extra: { step?: number; tool?: string; toolCallId?: string } = {}) {
  for (const m of moved) if (m.before !== m.after) await progress(tx, append, { id: m.id, sessionId, status: m.after }, cause, extra);
}

/** Event types that can move a run; appendEvent calls followRunEvent for these only. */
export const RUN_EVENT_TYPES: ReadonlySet<string> = new Set(['message.accepted', 'stream.start', 'tool.call', 'approval.required', 'approval.resolved', 'turn.done', 'error', 'session.deleted']);

/**
 * Moves the run whose turn an appended event belongs to, in the event's transaction (the
 * session's row is locked, so a run's changes are ordered as its session's events are). For a
 * session without runs this is one indexed query that finds nothing.
 */
export async function followRunEvent(tx: DatabaseTransactionConnection, event: DurableEvent, key: string, append: AppendEvent): Promise<void> {
  const sessionId = event.sessionId;
  const cause = `${event.type}:${key}`;
  const ofTurn = (turn: number) => sql.fragment`session_id = ${sessionId} AND turn = ${turn}`;
  switch (event.type) {
    case 'message.accepted': {
      const d = event.data as DurableEventData<'message.accepted'>;
      await tx.query(sql.unsafe`
        UPDATE runs SET turn = ${d.turn}, sent_at = COALESCE(sent_at, statement_timestamp()), send_lease_until = NULL, input = NULL, updated_at = statement_timestamp()
        WHERE message_id = ${d.messageId} AND session_id = ${sessionId} AND turn IS NULL`);
      return;
    }
    case 'stream.start': {
      const d = event.data as DurableEventData<'stream.start'>;
      const moved = await move(
        tx,
        ofTurn(d.turn),
        sql.fragment`status = CASE WHEN r.status = 'queued' THEN 'running' ELSE r.status END,
          started_at = CASE WHEN r.status = 'queued' THEN statement_timestamp() ELSE r.started_at END,
          turn_started_at = COALESCE(r.turn_started_at, statement_timestamp())`,
        cause,
      );
      return progressOfMoves(tx, append, sessionId, moved, cause);
    }
    case 'tool.call': {
      const d = event.data as DurableEventData<'tool.call'>;
      const runs = await tx.any(sql.type(z.object({ id: z.string(), status: RunStatus }))`
        SELECT id, status FROM runs WHERE ${ofTurn(d.turn)} AND status IN ('running', 'waiting_approval')`);
      for (const run of runs) await progress(tx, append, { id: run.id, sessionId, status: run.status }, cause, { step: d.step, tool: d.name, toolCallId: d.toolCallId });
      return;
    }
    case 'approval.required': {
      const d = event.data as DurableEventData<'approval.required'>;
      const moved = await move(
        tx,
        sql.fragment`${ofTurn(d.turn)} AND status IN ('running', 'waiting_approval')`,
        sql.fragment`pending_approvals = r.pending_approvals + 1, status = 'waiting_approval'`,
        cause,
      );
      // Every call that waits is told, also the second one of a run already waiting.
      for (const m of moved) await progress(tx, append, { id: m.id, sessionId, status: m.after }, cause, { tool: d.name, toolCallId: d.toolCallId });
      return;
    }
    case 'approval.resolved': {
      const d = event.data as DurableEventData<'approval.resolved'>;
      // A cancelled approval belongs to a turn being cancelled: the run waits for its turn.done instead of running again.
      const resumes = d.outcome !== 'cancelled';
      const moved = await move(
        tx,
        sql.fragment`session_id = ${sessionId} AND status IN ('running', 'waiting_approval')
          AND turn = (SELECT turn FROM tool_calls WHERE id = ${d.toolCallId} AND session_id = ${sessionId})`,
        sql.fragment`pending_approvals = GREATEST(r.pending_approvals - 1, 0),
          status = CASE WHEN r.status = 'waiting_approval' AND r.pending_approvals <= 1 AND ${resumes}::boolean THEN 'running' ELSE r.status END`,
        cause,
      );
      return progressOfMoves(tx, append, sessionId, moved, cause, { toolCallId: d.toolCallId });
    }
    case 'turn.done': {
      const d = event.data as DurableEventData<'turn.done'>;
      const status = { completed: 'done', failed: 'error', cancelled: 'cancelled' }[d.status];
      const moved = await move(
        tx,
        ofTurn(d.turn),
        sql.fragment`turn_ended_at = statement_timestamp(), pending_approvals = 0,
          ${whileLive('status', status)}, ${whileLive('finished_at', sql.fragment`statement_timestamp()`)},
          ${whileLive('reply_message_id', d.messageId)}, ${whileLive('cancelled_by', d.cancelledBy ?? null)},
          ${whileLive('error_code', d.status === 'completed' ? null : sql.fragment`r.error_code`)},
          ${whileLive('error_message', d.status === 'completed' ? null : sql.fragment`r.error_message`)},
          ${whileLive('input_tokens', sql.fragment`(SELECT SUM(input_tokens)::int FROM messages WHERE session_id = r.session_id AND turn = r.turn AND role = 'assistant')`)},
          ${whileLive('output_tokens', sql.fragment`(SELECT SUM(output_tokens)::int FROM messages WHERE session_id = r.session_id AND turn = r.turn AND role = 'assistant')`)},
          ${whileLive('cost_usd', sql.fragment`(SELECT SUM(cost_usd) FROM messages WHERE session_id = r.session_id AND turn = r.turn AND role = 'assistant')`)}`,
        cause,
      );
      return progressOfMoves(tx, append, sessionId, moved, cause);
    }
    case 'error': {
      const d = event.data as DurableEventData<'error'>;
      if (d.turn !== undefined) {
        // The failure of the run's turn; its turn.done follows in the same transaction and ends the run.
        await tx.query(sql.unsafe`
          UPDATE runs SET error_code = ${d.code}, error_message = ${d.message}, updated_at = statement_timestamp()
          WHERE session_id = ${sessionId} AND turn = ${d.turn} AND status IN ('queued', 'running', 'waiting_approval')`);
        return;
      }
      if (d.replyTo === undefined) return;
      // The session refused the run's message (SESSION_BUSY, SESSION_EXPIRED): it never gets a turn.
      const moved = await move(
        tx,
        sql.fragment`message_id = ${d.replyTo} AND session_id = ${sessionId} AND status = 'queued'`,
        sql.fragment`status = 'error', error_code = ${d.code}, error_message = ${d.message}, finished_at = statement_timestamp()`,
        cause,
      );
      return progressOfMoves(tx, append, sessionId, moved, cause);
    }
    case 'session.deleted': {
      const d = event.data as DurableEventData<'session.deleted'>;
      // No run.progress: session.deleted is the last event of the session's log. Its seq ends the runs' streams.
      await move(
        tx,
        sql.fragment`session_id = ${sessionId} AND status IN ('queued', 'running', 'waiting_approval')`,
        sql.fragment`status = 'cancelled', cancelled_by = ${d.deletedBy}, error_code = 'SESSION_NOT_FOUND', input = NULL,
          error_message = 'The session was deleted.', finished_at = statement_timestamp(), final_seq = ${event.seq}`,
        cause,
      );
      return;
    }
    default:
      return;
  }
}

/**
 * Ends a run that has not started from the API's side: cancelled while queued, or refused at
 * submit (then it also stops answering repeats). Null when the run was no longer queued, and,
 * for a refusal, when its message already has a turn (that turn runs: the run follows it).
 */
export async function endQueuedRun(
  pool: DatabasePool,
  append: AppendEvent,
  runId: string,
  end: { status: 'cancelled'; cancelledBy: string } | { status: 'error'; code: string; message: string },
): Promise<RunRecord | null> {
  return pool.transaction(async (tx) => {
    const sessionId = await tx.maybeOneFirst(sql.type(z.object({ session_id: z.string().nullable() }))`SELECT session_id FROM runs WHERE id = ${runId}`);
    // The session's lock first, as every event writer takes it: then the run's row.
    if (sessionId) await tx.query(sql.unsafe`SELECT 1 FROM sessions WHERE id = ${sessionId} FOR NO KEY UPDATE`);
    const set =
      end.status === 'cancelled'
        ? sql.fragment`status = 'cancelled', cancelled_by = ${end.cancelledBy}, error_code = 'TURN_CANCELLED', error_message = 'The run was cancelled before it started.', finished_at = statement_timestamp(), input = NULL`
        : sql.fragment`status = 'error', error_code = ${end.code}, error_message = ${end.message}, finished_at = statement_timestamp(), dedupe_active = false, input = NULL`;
    const cause = end.status === 'cancelled' ? 'cancel' : 'refused';
    const where = end.status === 'cancelled' ? sql.fragment`id = ${runId} AND status = 'queued'` : sql.fragment`id = ${runId} AND status = 'queued' AND turn IS NULL`;
    const moved = await move(tx, where, set, cause);
    if (moved.length === 0) return null;
    if (sessionId) await progress(tx, append, { id: runId, sessionId, status: end.status }, cause);
    return tx.one(sql.type(RunRecord)`SELECT ${RECORD} WHERE r.id = ${runId}`);
  });
}

// ---------------------------------------------------------------------------------------------
// The worker's outbox

/**
 * Claims up to `limit` runs that ended and are not finalized, for `leaseMs`: no other worker
 * takes them meanwhile, and a worker that dies leaves them to another once the lease runs out.
 * Committed at once, so no lock is held while the outbox talks to Temporal.
 */
export async function claimUnfinalizedRuns(db: CommonQueryMethods, limit: number, leaseMs: number): Promise<RunRecord[]> {
  const ids = await db.anyFirst(sql.type(z.object({ id: z.string() }))`
    UPDATE runs SET finalize_lease_until = statement_timestamp() + ${leaseMs} * interval '1 millisecond'
    WHERE id IN (
      SELECT id FROM runs
      WHERE finished_at IS NOT NULL AND finalized_at IS NULL AND (finalize_lease_until IS NULL OR finalize_lease_until < statement_timestamp())
      ORDER BY finished_at LIMIT ${limit} FOR UPDATE SKIP LOCKED)
    RETURNING id`);
  if (ids.length === 0) return [];
  const rows = await db.any(sql.type(RunRecord)`SELECT ${RECORD} WHERE r.id = ANY(${sql.array([...ids], 'text')}) ORDER BY r.finished_at`);
  return [...rows];
}

/**
 * Marks a run finalized; false when another worker already did (then it is not observed again).
 * The delivery may have ended before this mark (a re-claim after a lease ran out, a slow mark):
 * its outcome stays.
 */
export async function markFinalized(db: CommonQueryMethods, runId: string, webhookPending: boolean): Promise<boolean> {
  const done = await db.maybeOneFirst(sql.type(z.object({ id: z.string() }))`
    UPDATE runs SET finalized_at = statement_timestamp(), webhook_status = CASE WHEN ${webhookPending}::boolean THEN COALESCE(webhook_status, 'pending') ELSE webhook_status END
    WHERE id = ${runId} AND finalized_at IS NULL
    RETURNING id`);
  return done !== null;
}

export async function setWebhookStatus(db: CommonQueryMethods, runId: string, status: 'delivered' | 'failed'): Promise<void> {
  await db.query(sql.unsafe`UPDATE runs SET webhook_status = ${status}, updated_at = statement_timestamp() WHERE id = ${runId}`);
}

/** Runs cancelled while queued whose turn has started since: the outbox cancels that turn. */
export async function turnsToSkip(db: CommonQueryMethods, limit: number): Promise<{ id: string; session_id: string; turn: number; cancelled_by: string | null }[]> {
  const rows = await db.any(sql.type(z.object({ id: z.string(), session_id: z.string(), turn: z.number(), cancelled_by: z.string().nullable() }))`
    SELECT id, session_id, turn, cancelled_by FROM runs
    WHERE status = 'cancelled' AND started_at IS NULL AND turn_started_at IS NOT NULL AND turn_ended_at IS NULL AND skip_signalled_at IS NULL
    ORDER BY turn_started_at LIMIT ${limit}`);
  return [...rows];
}

export async function markSkipSignalled(db: CommonQueryMethods, runId: string): Promise<void> {
  await db.query(sql.unsafe`UPDATE runs SET skip_signalled_at = statement_timestamp() WHERE id = ${runId}`);
}

// ---------------------------------------------------------------------------------------------
// Service levels

export const SloStats = z.object({
  total: z.number(),
  queued: z.number(),
  running: z.number(),
  waiting_approval: z.number(),
  done: z.number(),
  error: z.number(),
  cancelled: z.number(),
  platform_failures: z.number(),
  /** Unfinished runs older than the overdue threshold: missed for time to execute. */
  overdue: z.number(),
  /** Of those, the queued and running ones: the platform has not served them (waiting on an approver is not its failure). */
  overdue_unserved: z.number(),
  tte_count: z.number(),
  tte_p50: z.number().nullable(),
  tte_p95: z.number().nullable(),
  tte_p99: z.number().nullable(),
});
export type SloStats = z.infer<typeof SloStats>;

/**
 * Counts of the runs submitted in the last `windowMs`, and the nearest-rank percentiles of the
 * time to execute (submit to finish, seconds) of those that ended done and of the unfinished
 * ones older than `overdueAfterSeconds`, whose age so far is a lower bound of theirs (a run
 * that never finishes is still counted). `ownerId` undefined: every user's.
 */
export async function sloStats(db: CommonQueryMethods, opts: { windowMs: number; overdueAfterSeconds: number; ownerId?: string }): Promise<SloStats> {
  const overdue = sql.fragment`status IN ('queued', 'running', 'waiting_approval') AND created_at < now() - ${opts.overdueAfterSeconds} * interval '1 second'`;
  const measured = sql.fragment`status = 'done' OR (${overdue})`;
  const tte = sql.fragment`extract(epoch FROM COALESCE(finished_at, now()) - created_at)::float8`;
  const platform = sql.array([...PLATFORM_FAILURE_CODES], 'text');
  return db.one(sql.type(SloStats)`
    SELECT count(*)::int AS total,
           count(*) FILTER (WHERE status = 'queued')::int AS queued,
           count(*) FILTER (WHERE status = 'running')::int AS running,
           count(*) FILTER (WHERE status = 'waiting_approval')::int AS waiting_approval,
           count(*) FILTER (WHERE status = 'done')::int AS done,
           count(*) FILTER (WHERE status = 'error')::int AS error,
           count(*) FILTER (WHERE status = 'cancelled')::int AS cancelled,
           count(*) FILTER (WHERE status = 'error' AND error_code = ANY(${platform}))::int AS platform_failures,
           count(*) FILTER (WHERE ${overdue})::int AS overdue,
           count(*) FILTER (WHERE ${overdue} AND status <> 'waiting_approval')::int AS overdue_unserved,
           count(*) FILTER (WHERE ${measured})::int AS tte_count,
           percentile_disc(0.5) WITHIN GROUP (ORDER BY ${tte}) FILTER (WHERE ${measured}) AS tte_p50,
           percentile_disc(0.95) WITHIN GROUP (ORDER BY ${tte}) FILTER (WHERE ${measured}) AS tte_p95,
           percentile_disc(0.99) WITHIN GROUP (ORDER BY ${tte}) FILTER (WHERE ${measured}) AS tte_p99
    FROM runs
    WHERE created_at > now() - ${opts.windowMs} * interval '1 millisecond'
      AND (${opts.ownerId ?? null}::text IS NULL OR owner_id = ${opts.ownerId ?? null})`);
}
