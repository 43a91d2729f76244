import { sql } from 'slonik';
import { z } from 'zod';
import { appendEvent } from '../db/events';
import { migrate } from '../db/migrate';
import { openPool, type DatabasePool } from '../db/pool';
import { claimRun, claimUnfinalizedRuns, claimUnsentRuns, endQueuedRun, markFinalized, randomRunId, setWebhookStatus } from '../db/runs';
import { createTestDatabase, dropTestDatabase } from './support/database';

/**
 * The runs module's claims and marks on their own, against a real PostgreSQL database and no
 * worker: the test plays each worker and request, so it decides the order their writes land in.
 */

const databaseName = `keel_runs_db_${process.pid}`;
let pool: DatabasePool;

beforeAll(async () => {
  const url = await createTestDatabase(databaseName);
  await migrate(url);
  pool = await openPool(url, 3);
});

afterAll(async () => {
  await pool?.end();
  await dropTestDatabase(databaseName);
});

const claim = (over: { input?: string; sessionId?: string | null; idempotencyKey?: string } = {}) =>
  claimRun(pool, {
    id: randomRunId(),
    ownerId: 'dev',
    agentId: 'default',
    sessionId: over.sessionId ?? null,
    inputDigest: randomRunId(),
    input: over.input ?? 'some input',
    ...(over.idempotencyKey ? { idempotencyKey: over.idempotencyKey } : {}),
    dedupeWindowMs: 60_000,
    leaseMs: 60_000,
  });

const RunState = z.object({ status: z.string(), webhook_status: z.string().nullable(), finalized_at: z.number().nullable(), input: z.string().nullable(), dedupe_active: z.boolean() });
const stateOf = (id: string) => pool.one(sql.type(RunState)`SELECT status, webhook_status, finalized_at, input, dedupe_active FROM runs WHERE id = ${id}`);

/** A run that ended with a webhook and is not finalized: what the outbox claims. */
async function endedRunWithWebhook(): Promise<string> {
  const { run } = await claim();
  await pool.query(sql.unsafe`UPDATE runs SET status = 'done', finished_at = now(), sent_at = now(), webhook_url = 'https://example.com/hook' WHERE id = ${run.id}`);
  return run.id;
}

test('a run re-claimed after its outbox lease ran out keeps the outcome its delivery wrote before the mark', async () => {
  const runId = await endedRunWithWebhook();
  // Worker A claims the run and starts its delivery, then stalls past its lease.
  expect((await claimUnfinalizedRuns(pool, 100, 60_000)).map((r) => r.id)).toContain(runId);
  await pool.query(sql.unsafe`UPDATE runs SET finalize_lease_until = now() - interval '1 second' WHERE id = ${runId}`);
  // Worker B re-claims it; the delivery (one workflow ID for both) delivers before either marks.
  expect((await claimUnfinalizedRuns(pool, 100, 60_000)).map((r) => r.id)).toContain(runId);
  await setWebhookStatus(pool, runId, 'delivered');
  expect(await markFinalized(pool, runId, true)).toBe(true);
  expect(await stateOf(runId)).toMatchObject({ webhook_status: 'delivered', finalized_at: expect.any(Number) });
  // A's late mark counts for nothing and changes nothing.
  expect(await markFinalized(pool, runId, true)).toBe(false);
  expect((await stateOf(runId)).webhook_status).toBe('delivered');
  // A mark before the delivery's end still says pending.
  const other = await endedRunWithWebhook();
  expect(await markFinalized(pool, other, true)).toBe(true);
  expect((await stateOf(other)).webhook_status).toBe('pending');
});

test('unsent runs are taken by the outbox only after their send lease ran out by the grace, and by one taker at a time', async () => {
  const { run: within } = await claim({ input: 'within the grace' });
  const { run: past } = await claim({ input: 'past the grace' });
  const { run: sent } = await claim({ input: 'sent' });
  await pool.query(sql.unsafe`UPDATE runs SET send_lease_until = now() - interval '10 seconds' WHERE id = ${within.id}`);
  await pool.query(sql.unsafe`UPDATE runs SET send_lease_until = now() - interval '40 seconds' WHERE id IN (${past.id}, ${sent.id})`);
  await pool.query(sql.unsafe`UPDATE runs SET sent_at = now(), send_lease_until = NULL WHERE id = ${sent.id}`);
  const taken = await claimUnsentRuns(pool, { graceMs: 30_000, leaseMs: 60_000, limit: 100 });
  expect(taken.filter((r) => [within.id, past.id, sent.id].includes(r.id))).toEqual([{ id: past.id, session_id: null, message_id: null, input: 'past the grace', budget: null }]);
  // Leased now: another worker (or a repeat of the request) does not take it too.
  expect((await claimUnsentRuns(pool, { graceMs: 30_000, leaseMs: 60_000, limit: 100 })).map((r) => r.id)).not.toContain(past.id);
});

test('a refusal does not end a run whose message already has a turn; one without a turn ends error and frees its key', async () => {
  const { run: accepted } = await claim({ idempotencyKey: 'has-a-turn' });
  await pool.query(sql.unsafe`UPDATE runs SET turn = 1 WHERE id = ${accepted.id}`);
  const refusal = { status: 'error', code: 'RATE_LIMIT_EXCEEDED', message: 'Too many messages' } as const;
  expect(await endQueuedRun(pool, appendEvent, accepted.id, refusal)).toBeNull();
  expect(await stateOf(accepted.id)).toMatchObject({ status: 'queued', dedupe_active: true });
  // The same key still answers that run.
  expect((await claim({ idempotencyKey: 'has-a-turn' })).run.id).toBe(accepted.id);

  const { run: unsent } = await claim({ idempotencyKey: 'no-turn', input: 'kept until sent' });
  expect((await endQueuedRun(pool, appendEvent, unsent.id, refusal))?.status).toBe('error');
  expect(await stateOf(unsent.id)).toMatchObject({ status: 'error', dedupe_active: false, input: null });
});
