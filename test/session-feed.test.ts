import { readFileSync } from 'node:fs';
import WebSocket from 'ws';
import { DEV_TOKEN, eventually, startStack, type Stack } from './support/stack';
import { SseClient } from './support/sse-client';
import type { Frame } from './support/ws-client';

/**
 * The API's event feed under failure: the LISTEN connection dropped, a failing fetch of a large
 * event, long logs, and consumers that stop reading. Everything runs on the real stack; the
 * test writes to the event log directly where it plays a worker.
 */

const MAX_BUFFERED_BYTES = 1024 * 1024;
const SLOW_CONSUMER_MS = 1500;
const RECONNECT_MS = 3000;
const CHECK_MS = 1000;

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({
    env: {
      // The listener stays down this long after a drop: long enough to run a whole turn meanwhile.
      KEEL_LISTENER_RECONNECT_MS: String(RECONNECT_MS),
      KEEL_LISTENER_CHECK_MS: String(CHECK_MS),
      KEEL_REPLAY_PAGE_EVENTS: '20',
      KEEL_MAX_BUFFERED_BYTES: String(MAX_BUFFERED_BYTES),
      KEEL_SLOW_CONSUMER_MS: String(SLOW_CONSUMER_MS),
    },
  });
});
afterAll(async () => {
  await stack?.stop();
});

const LISTENER = `application_name = 'keel-api-listener' AND datname = current_database()`;
const range = (from: number, to: number) => Array.from({ length: to - from + 1 }, (_, i) => from + i);
const durableSeqs = (frames: Frame[]) => frames.filter((f) => f.seq !== undefined).map((f) => f.seq!);

async function lastSeq(sessionId: string): Promise<number> {
  const { rows } = await stack.db.query('SELECT COALESCE(MAX(seq), 0)::int AS last FROM session_events WHERE session_id = $1', [sessionId]);
  return rows[0].last as number;
}

/** Appends `count` message.accepted events of `contentChars` characters each, as a worker would (without NOTIFY). */
async function appendEvents(sessionId: string, count: number, contentChars: number): Promise<number> {
  const { rows } = await stack.db.query(
    `INSERT INTO session_events (session_id, seq, event_key, type, version, data)
     SELECT $1, base.s + g, 'bulk:' || (base.s + g), 'message.accepted', 1,
            jsonb_build_object('messageId', 'm_bulk' || (base.s + g), 'turn', 1, 'content', left(repeat(md5(g::text), $3 / 32 + 1), $3))
     FROM (SELECT COALESCE(MAX(seq), 0) AS s FROM session_events WHERE session_id = $1) base, generate_series(1, $2::int) g
     RETURNING seq`,
    [sessionId, count, contentChars],
  );
  return Math.max(...rows.map((r) => r.seq as number));
}

/** What a worker sends for an event too large for NOTIFY: its seq, to be fetched. */
async function notifyLarge(sessionId: string, from: number, to: number): Promise<void> {
  await stack.db.query(`SELECT pg_notify('keel_session_events', json_build_object('k', 'p', 'sessionId', $1::text, 'seq', g)::text) FROM generate_series($2::int, $3::int) g`, [sessionId, from, to]);
}

/** The API process's peak resident memory so far (kB). */
function peakMemoryKb(): number {
  const status = readFileSync(`/proc/${stack.api.child.pid}/status`, 'utf8');
  return Number(/VmHWM:\s+(\d+) kB/.exec(status)![1]);
}

function sse(sessionId: string, query = '', headers: Record<string, string> = {}) {
  return SseClient.open(`${stack.base}/api/v1/sessions/${sessionId}/events${query}`, { token: DEV_TOKEN, headers });
}

test('events written while the LISTEN connection is down reach WebSocket and SSE clients and a waiting /chat, with no gap or duplicate', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId, 'after=0');
  const events = await sse(sessionId, '?after=0');
  ws.send({ type: 'message', content: 'before the drop' });
  await ws.waitFor((f) => f.type === 'turn.done');

  const killed = await stack.db.query(`SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE ${LISTENER}`);
  expect(killed.rows).toEqual([{ killed: true }]);
  await stack.api.waitForLine(/event channel connection lost/);

  // A whole turn while nobody listens: no notification of it reaches the API.
  const chat = stack.request('POST', `/api/v1/sessions/${sessionId}/chat`, { content: 'hello while down', stream: false });
  const doneAt = await eventually(async () => {
    const { rows } = await stack.db.query(`SELECT created_at FROM session_events WHERE session_id = $1 AND type = 'turn.done' AND data->>'turn' = '2'`, [sessionId]);
    return rows[0]?.created_at as Date | undefined;
  }, 20_000, 'the second turn to end');

  const answer = await chat;
  expect(answer.status).toBe(200);
  expect(answer.body.content).toContain('hello while down');
  const last = await lastSeq(sessionId);
  await ws.waitForCount((f) => f.type === 'turn.done', 2);
  await events.waitFor((e) => e.id === last);
  expect(durableSeqs(ws.frames)).toEqual(range(1, last));
  expect(events.events.filter((e) => e.id !== undefined).map((e) => e.id)).toEqual(range(1, last));
  expect(ws.ws.readyState).toBe(WebSocket.OPEN);

  // Proof that the race was hit: the new listener connected only after the turn had ended.
  const { rows } = await stack.db.query(`SELECT backend_start FROM pg_stat_activity WHERE ${LISTENER}`);
  expect(rows).toHaveLength(1);
  expect((rows[0].backend_start as Date).getTime()).toBeGreaterThan(doneAt.getTime());
  events.close();
}, 60_000);

test('a listener that stops answering (a half-open connection) is found by its ping and replaced; subscribers resync', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId, 'after=0');
  const { rows } = await stack.db.query(`SELECT pid FROM pg_stat_activity WHERE ${LISTENER}`);
  expect(rows).toHaveLength(1);
  const pid = rows[0].pid as number;
  const lostBefore = stack.api.lines.filter((l) => l.includes('event channel connection lost')).length;
  // The server process is frozen: its TCP connection stays up (the kernel still answers), it just never replies.
  process.kill(pid, 'SIGSTOP');
  try {
    const sent = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'nobody hears this' });
    expect(sent.status).toBe(202);
    const doneAt = await eventually(async () => {
      const done = await stack.db.query(`SELECT created_at FROM session_events WHERE session_id = $1 AND type = 'turn.done'`, [sessionId]);
      return done.rows[0]?.created_at as Date | undefined;
    }, 20_000, 'the turn to end');
    await ws.waitFor((f) => f.type === 'turn.done', 20_000);
    expect(durableSeqs(ws.frames)).toEqual(range(1, await lastSeq(sessionId)));
    const lost = stack.api.lines.filter((l) => l.includes('event channel connection lost'));
    expect(lost.length).toBe(lostBefore + 1);
    expect(lost.at(-1)).toContain(`no answer within ${CHECK_MS} ms`);
    // The turn ended while the frozen connection was still the listener: only the resync can have delivered it.
    const fresh = await stack.db.query(`SELECT backend_start FROM pg_stat_activity WHERE ${LISTENER} AND pid <> $1`, [pid]);
    expect((fresh.rows[0].backend_start as Date).getTime()).toBeGreaterThan(doneAt.getTime());
  } finally {
    process.kill(pid, 'SIGCONT');
  }
}, 60_000);

test('a large event that cannot be read ends only its own subscribers (1011, SERVICE_UNAVAILABLE); the API stays up', async () => {
  const poisoned = await stack.createSession();
  const healthy = await stack.createSession();
  const victim = await stack.ws(poisoned);
  const bystander = await stack.ws(healthy);
  const closed = new Promise<number>((resolve) => victim.ws.once('close', (code) => resolve(code)));
  // An event whose row no reader can turn into an event (its time is 'infinity'), announced as a large event is.
  const { rows } = await stack.db.query(
    `INSERT INTO session_events (session_id, seq, event_key, type, version, data, created_at)
     SELECT $1, COALESCE(MAX(seq), 0) + 1, 'poison', 'message.accepted', 1, '{"messageId":"m_poison","turn":1,"content":"x"}', 'infinity'
     FROM session_events WHERE session_id = $1 RETURNING seq`,
    [poisoned],
  );
  await notifyLarge(poisoned, rows[0].seq, rows[0].seq);

  expect(await closed).toBe(1011);
  expect(victim.frames.find((f) => f.type === 'error')!.data).toMatchObject({ code: 'SERVICE_UNAVAILABLE', details: { lastSeq: 0 } });
  await stack.api.waitForLine(/event feed failed/);
  expect(stack.api.child.exitCode).toBeNull();
  expect((await stack.request('GET', '/api/v1/health')).status).toBe(200);
  bystander.send({ type: 'message', content: 'still here' });
  expect((await bystander.waitFor((f) => f.type === 'turn.done')).data.content).toContain('still here');
  expect(stack.api.lines.some((l) => /unhandled promise rejection/.test(l))).toBe(false);
});

test('a long log replays in pages, in order, then goes live; SSE resumes from Last-Event-ID', async () => {
  const sessionId = await stack.createSession();
  const logged = await appendEvents(sessionId, 1234, 100);
  const ws = await stack.ws(sessionId, 'after=0');
  await ws.waitFor((f) => f.seq === logged, 30_000);
  ws.send({ type: 'message', content: 'after the replay' });
  await ws.waitFor((f) => f.type === 'turn.done');
  const last = await lastSeq(sessionId);
  expect(last).toBeGreaterThan(logged);
  expect(durableSeqs(ws.frames)).toEqual(range(1, last));

  const resumed = await sse(sessionId, '', { 'last-event-id': '600' });
  await resumed.waitFor((e) => e.id === last, 30_000);
  expect(resumed.events.filter((e) => e.id !== undefined).map((e) => e.id)).toEqual(range(601, last));
  resumed.close();
}, 60_000);

test('a WebSocket that stops reading during a large replay is closed with 1013 after a CONSUMER_TOO_SLOW frame; memory stays bounded', async () => {
  const sessionId = await stack.createSession();
  // 2,000 events of 64 KB: 128 MB of log, far more than socket buffers and the 1 MiB budget.
  const logged = await appendEvents(sessionId, 2000, 64 * 1024);
  const peakBefore = peakMemoryKb();

  const ws = new WebSocket(`${stack.base.replace('http', 'ws')}/api/v1/sessions/${sessionId}/ws?after=0&token=${DEV_TOKEN}`);
  const frames: Frame[] = [];
  ws.on('message', (raw) => frames.push(JSON.parse(raw.toString()) as Frame));
  const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
  await new Promise((resolve) => ws.once('open', resolve));
  ws.pause();
  await stack.api.waitForLine(new RegExp(`"sessionId":"${sessionId}","code":"CONSUMER_TOO_SLOW","closeCode":1013`), 30_000);
  const grownMb = (peakMemoryKb() - peakBefore) / 1024;

  ws.resume();
  expect(await closed).toBe(1013);
  const error = frames.find((f) => f.type === 'error')!;
  expect(error.data).toMatchObject({ code: 'CONSUMER_TOO_SLOW', recoverable: true });
  const seqs = durableSeqs(frames);
  expect(seqs).toEqual(range(1, seqs.length));
  expect(error.data.details.lastSeq).toBe(seqs.length);
  expect(seqs.length).toBeLessThan(logged);
  // Collecting the log (as the replay once did) would take well over 128 MB.
  expect(grownMb).toBeLessThan(32);
}, 90_000);

test('an SSE reader that stops reading while live events flow gets a CONSUMER_TOO_SLOW error event and its stream ends; memory stays bounded', async () => {
  const sessionId = await stack.createSession();
  const events = await sse(sessionId);
  events.pause();
  const peakBefore = peakMemoryKb();
  // 1,000 live events of 64 KB (64 MB), each announced as a worker announces a large event.
  let sent = 0;
  while (sent < 1000 && !stack.api.lines.some((l) => l.includes(sessionId) && l.includes('CONSUMER_TOO_SLOW'))) {
    const first = (await lastSeq(sessionId)) + 1;
    const last = await appendEvents(sessionId, 50, 64 * 1024);
    await notifyLarge(sessionId, first, last);
    sent = last;
  }
  await stack.api.waitForLine(new RegExp(`"sessionId":"${sessionId}","code":"CONSUMER_TOO_SLOW"`), 30_000);
  const grownMb = (peakMemoryKb() - peakBefore) / 1024;

  events.resume();
  await events.ended;
  const last = events.events[events.events.length - 1]!;
  expect(last.event).toBe('error');
  expect(last.data).toMatchObject({ type: 'error', sessionId, data: { code: 'CONSUMER_TOO_SLOW', recoverable: true } });
  const ids = events.events.filter((e) => e.id !== undefined).map((e) => e.id);
  expect(ids).toEqual(range(1, ids.length));
  expect(last.data.data.details.lastSeq).toBe(ids.length);
  expect(ids.length).toBeLessThan(sent);
  // Buffering what was written for the reader would take over 64 MB.
  expect(grownMb).toBeLessThan(32);
}, 90_000);
