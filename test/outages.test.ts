import { Client, Connection } from '@temporalio/client';
import { sessionWorkflowId } from '../contracts/ids';
import { WsClient, type Frame } from './support/ws-client';
import { spawnEntry, type Spawned } from './support/processes';
import { switchableProxy } from './support/tcp-proxy';
import { DEV_TOKEN, eventually, startStack, type Stack } from './support/stack';

/**
 * What clients and operators see while PostgreSQL or Temporal is down (docs/operations.md,
 * "Outages"). The stack's own worker and API are replaced by a worker whose Postgres goes
 * through a switchable proxy, and an API whose Postgres and Temporal both do.
 */

// The named bounds the timing assertions derive from (config/settings.ts), small so the file is fast.
const DB_CONNECT_TIMEOUT_MS = 2_000;
const TEMPORAL_RPC_TIMEOUT_MS = 2_000;

type Proxy = Awaited<ReturnType<typeof switchableProxy>>;
let stack: Stack;
let pg: Proxy;
let temporalProxy: Proxy;
let worker: Spawned;
let api: Spawned;
let port: number;
let temporal: Client;

beforeAll(async () => {
  stack = await startStack({
    env: {
      KEEL_DB_CONNECT_TIMEOUT_MS: String(DB_CONNECT_TIMEOUT_MS),
      KEEL_TEMPORAL_RPC_TIMEOUT_MS: String(TEMPORAL_RPC_TIMEOUT_MS),
      // An idle session's turn starts with the reply activity, which accepts its message: it is
      // retried by the model call's budget, not persistence's unbounded one (docs/operations.md,
      // "Outages"). 20 attempts at 0.2-1 s (the stack's back-off) outlast this file's outages.
      KEEL_LLM_MAX_ATTEMPTS: '20',
    },
  });
  pg = await switchableProxy(new URL(stack.env.DATABASE_URL!));
  temporalProxy = await switchableProxy(new URL(`http://${stack.env.TEMPORAL_ADDRESS}`));
  await stack.killWorker('SIGTERM');
  worker = spawnEntry('worker/main.ts', { ...stack.env, DATABASE_URL: pg.url });
  await worker.waitForLine(/worker started/);
  api = spawnEntry('api/main.ts', { ...stack.env, DATABASE_URL: pg.url, TEMPORAL_ADDRESS: new URL(temporalProxy.url).host });
  port = Number((await api.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/))[1]);
  temporal = new Client({ connection: await Connection.connect({ address: stack.env.TEMPORAL_ADDRESS! }) });
}, 60_000);
afterAll(async () => {
  pg?.set('up');
  temporalProxy?.set('up');
  if (worker?.child.signalCode === null) worker.child.kill('SIGCONT');
  await Promise.all([worker?.kill(), api?.kill()]);
  await stack?.stop();
  await temporal?.connection.close();
  await pg?.close();
  await temporalProxy?.close();
});

/** A REST call to the proxied API, timed. */
async function call(method: string, path: string, body?: unknown) {
  const started = Date.now();
  const res = await fetch(`http://127.0.0.1:${port}${path}`, {
    method,
    headers: { authorization: `Bearer ${DEV_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
  });
  const text = await res.text();
  return { status: res.status, body: text ? JSON.parse(text) : null, ms: Date.now() - started };
}

const socket = (sessionId: string, query = '') => WsClient.connect(`ws://127.0.0.1:${port}/api/v1/sessions/${sessionId}/ws?token=${DEV_TOKEN}${query}`);
const of = (type: string) => (f: Frame) => f.type === type;
const durableSeqs = (frames: Frame[]) => frames.filter((f) => f.seq !== undefined).map((f) => f.seq!);

async function storedSeqs(sessionId: string): Promise<number[]> {
  const { rows } = await stack.db.query('SELECT seq FROM session_events WHERE session_id = $1 ORDER BY seq', [sessionId]);
  return rows.map((r) => Number(r.seq));
}
async function countOf(sessionId: string, sql: string): Promise<number> {
  const { rows } = await stack.db.query(`SELECT count(*)::int AS n FROM ${sql}`, [sessionId]);
  return rows[0].n as number;
}

test('PostgreSQL down: 503 fast, /ready fails, a message accepted before the outage is answered once when it returns, streams resume', async () => {
  const created = await call('POST', '/api/v1/sessions', {});
  const sessionId = created.body.id as string;
  const first = await socket(sessionId, '&after=0');
  expect((await call('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'one', clientMessageId: 'one' })).status).toBe(202);
  await first.waitFor(of('turn.done'));

  // Accepted before the outage: stored and signalled (202), while the paused worker has not taken it yet.
  // (Paused only once turn 1 is over in the workflow too: a reply activity paused past its heartbeat time-out would be retried.)
  const handle = temporal.workflow.getHandle(sessionWorkflowId(sessionId));
  await eventually(async () => ((await handle.describe()).raw.pendingActivities ?? []).length === 0, 10_000, 'turn 1 over in the workflow');
  worker.child.kill('SIGSTOP');
  const accepted = await call('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'two', clientMessageId: 'two' });
  expect(accepted.status).toBe(202);
  pg.set('down');

  const during = await Promise.all([
    call('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'lost?', clientMessageId: 'during-outage' }),
    call('GET', `/api/v1/sessions/${sessionId}`),
    call('GET', '/api/v1/sessions'),
  ]);
  for (const res of during) {
    expect([res.status, res.body.error.code]).toEqual([503, 'SERVICE_UNAVAILABLE']);
    expect(res.ms).toBeLessThan(2 * DB_CONNECT_TIMEOUT_MS);
  }
  const [ready, health] = await Promise.all([call('GET', '/api/v1/ready'), call('GET', '/api/v1/health')]);
  expect([ready.status, ready.body.ready, ready.body.checks.postgres]).toEqual([503, false, false]);
  expect([health.status, health.body.status, health.body.checks]).toEqual([503, 'down', { temporal: true, postgres: false, worker: expect.any(Boolean) }]);
  expect(Math.max(ready.ms, health.ms)).toBeLessThan(2 * DB_CONNECT_TIMEOUT_MS);


  // The worker takes the message now and cannot store its turn: Temporal retries the activity with back-off.
  worker.child.kill('SIGCONT');
  const retrying = await eventually(async () => (await handle.describe()).raw.pendingActivities?.find((a) => (a.attempt ?? 0) >= 2), 20_000, 'an activity retried');
  expect(retrying.activityType?.name).toBe('streamReply');
  expect(retrying.lastFailure?.message).toMatch(/ECONNREFUSED|ECONNRESET|connect|terminated/i);
  expect(await countOf(sessionId, "messages WHERE session_id = $1 AND role = 'assistant'")).toBe(1);

  pg.set('up');
  // The socket open through the outage either goes on to the end of the turn, or ends as documented:
  // 1011 after one SERVICE_UNAVAILABLE frame with the lastSeq to resume from.
  const turnTwoDone = (f: Frame) => f.type === 'turn.done' && f.data.turn === 2;
  const outcome = await Promise.race([first.closed, first.waitFor(turnTwoDone, 40_000)]);
  if ('code' in outcome) {
    expect(outcome.code).toBe(1011);
    expect(first.frames.at(-1)).toMatchObject({ type: 'error', data: { code: 'SERVICE_UNAVAILABLE', details: { lastSeq: Math.max(0, ...durableSeqs(first.frames)) } } });
  }
  const firstSeqs = durableSeqs(first.frames);
  const lastSeen = Math.max(...firstSeqs);
  // A client that resumes with ?after= gets the rest (nothing when the open socket had it all).
  const resumed = await socket(sessionId, `&after=${lastSeen}`);
  if ('code' in outcome) await resumed.waitFor(turnTwoDone, 40_000);
  await eventually(async () => (await call('GET', '/api/v1/ready')).status === 200, 20_000, '/ready again');

  // Exactly once: one reply and one turn.done per turn, seq gap-free, and the two sockets together saw each event once.
  const stored = await storedSeqs(sessionId);
  expect(stored).toEqual(Array.from({ length: stored.length }, (_, i) => i + 1));
  expect(await countOf(sessionId, "messages WHERE session_id = $1 AND role = 'assistant'")).toBe(2);
  expect(await countOf(sessionId, "session_events WHERE session_id = $1 AND type = 'turn.done'")).toBe(2);
  expect([...firstSeqs, ...durableSeqs(resumed.frames)]).toEqual(stored);
  expect(stack.model.requests(sessionId).map((r) => r.body.messages.at(-1).content)).toEqual(['one', 'two']);
  // The send refused during the outage left nothing behind.
  expect(await countOf(sessionId, "messages WHERE session_id = $1 AND client_message_id = 'during-outage'")).toBe(0);
  await Promise.all([first.close(), resumed.close()]);
}, 90_000);

test('Temporal down: a send answers 503 fast and is never half-answered, /ready fails; after it returns a resend is answered once and streams go on', async () => {
  const created = await call('POST', '/api/v1/sessions', {});
  const sessionId = created.body.id as string;
  const ws = await socket(sessionId, '&after=0');

  temporalProxy.set('down');
  const refused = await call('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'are you there?', clientMessageId: 'while-down' });
  expect([refused.status, refused.body.error.code]).toEqual([503, 'SERVICE_UNAVAILABLE']);
  expect(refused.ms).toBeLessThan(2 * TEMPORAL_RPC_TIMEOUT_MS);
  const ready = await call('GET', '/api/v1/ready');
  expect([ready.status, ready.body.checks.temporal, ready.body.checks.postgres]).toEqual([503, false, true]);
  expect(ready.ms).toBeLessThan(2 * TEMPORAL_RPC_TIMEOUT_MS);
  // Nothing a reader sees: the message is in no listing and no event, and the socket (fed from Postgres) stays open.
  expect((await call('GET', `/api/v1/sessions/${sessionId}/messages`)).body.messages).toEqual([]);
  expect(await storedSeqs(sessionId)).toEqual([]);

  temporalProxy.set('up');
  await eventually(async () => (await call('GET', '/api/v1/ready')).status === 200, 20_000, '/ready again');
  // The documented promise (docs/protocol.md): the same clientMessageId is the same message; resent, it is answered once.
  const resent = await call('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'are you there?', clientMessageId: 'while-down' });
  expect(resent.status).toBe(202);
  await ws.waitFor(of('turn.done'));
  expect((await call('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'and again', clientMessageId: 'after' })).status).toBe(202);
  await ws.waitForCount(of('turn.done'), 2);

  expect(ws.frames.filter(of('message.accepted')).map((f) => [f.data.clientMessageId, f.data.messageId === resent.body.messageId])).toEqual([
    ['while-down', true],
    ['after', false],
  ]);
  expect(stack.model.requests(sessionId).map((r) => r.body.messages.at(-1).content)).toEqual(['are you there?', 'and again']);
  expect(await countOf(sessionId, "messages WHERE session_id = $1 AND role = 'assistant'")).toBe(2);
  const stored = await storedSeqs(sessionId);
  expect(durableSeqs(ws.frames)).toEqual(stored);
  expect(stored).toEqual(Array.from({ length: stored.length }, (_, i) => i + 1));
  await ws.close();
}, 60_000);
