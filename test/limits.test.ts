import { Client, Connection } from '@temporalio/client';
import fc from 'fast-check';
import { Pool, type PoolClient } from 'pg';
import WebSocket from 'ws';
import { sessionWorkflowId } from '../contracts/ids';
import { migrate } from '../db/migrate';
import { retryAfterMs } from '../db/rate-limits';
import { createTestDatabase, dropTestDatabase, testPool } from './support/database';
import { eventually, startStack, type Stack } from './support/stack';
import type { WsClient } from './support/ws-client';

const REQUESTS_PER_TOKEN = 30;
const SOCKETS_PER_USER = 3;
const MESSAGE_WINDOW_MS = 60_000;

/**
 * The documented rule (docs/configuration.md), as a model independent of the SQL: the previous
 * fixed window's count weighted by its remaining overlap with the sliding window, plus the
 * current window's count, plus this hit, must not exceed the limit. Exact arithmetic (BigInt
 * over the common denominator `window`), so a case on the boundary cannot be decided by rounding.
 */
function modelAllows(prev: number, cur: number, elapsedMs: number, windowMs: number, limit: number): boolean {
  const [p, c, e, w, l] = [prev, cur, elapsedMs, windowMs, limit].map(BigInt) as [bigint, bigint, bigint, bigint, bigint];
  const estimateTimesW = p * (w - e) + c * w;
  return estimateTimesW + w <= l * w;
}

describe('rate_limit_hit, the SQL function that decides every rate limit', () => {
  const dbName = `keel_rate_${process.pid}`;
  let pool: Pool;
  /**
   * A connection on which the function reads a clock the test sets. It calls clock_timestamp()
   * unqualified, so a schema put before pg_catalog in the search path shadows it.
   */
  let clocked: PoolClient;
  let keys = 0;
  const newKey = () => `model-${++keys}`;
  /** The database clock in ms, rounded down (`floor`) or up (`ceil`). */
  const dbNow = async (round: 'floor' | 'ceil') => Number((await pool.query(`SELECT ${round}(extract(epoch FROM clock_timestamp()) * 1000)::bigint AS ms`)).rows[0].ms);
  const hitOnce = async (key: string, limit: number, windowMs: number, db: Pool | PoolClient = pool) => {
    const { rows } = await db.query('SELECT allowed, cur, prev, elapsed_ms FROM rate_limit_hit($1, $2, $3)', [key, limit, windowMs]);
    return { allowed: rows[0].allowed as boolean, cur: rows[0].cur as number, prev: rows[0].prev as number, elapsedMs: Number(rows[0].elapsed_ms) };
  };
  const hitAt = async (nowMs: number, key: string, limit: number, windowMs: number) => {
    await clocked.query(`SET fake_clock.now_ms = '${nowMs}'`);
    return hitOnce(key, limit, windowMs, clocked);
  };
  const seed = async (key: string, rows: [number, number][]) => {
    for (const [start, hits] of rows.filter(([, hits]) => hits > 0)) await pool.query('INSERT INTO rate_limits (key, window_start, hits) VALUES ($1, $2, $3)', [key, start, hits]);
  };
  const rowsOf = async (key: string) =>
    (await pool.query('SELECT window_start, hits FROM rate_limits WHERE key = $1 ORDER BY window_start', [key])).rows.map((r) => [Number(r.window_start), r.hits as number]);

  beforeAll(async () => {
    const url = await createTestDatabase(dbName);
    await migrate(url);
    pool = testPool(url, 10);
    await pool.query(`CREATE SCHEMA fake_clock`);
    await pool.query(`CREATE FUNCTION fake_clock.clock_timestamp() RETURNS timestamptz LANGUAGE sql
      AS $$ SELECT timestamptz 'epoch' + current_setting('fake_clock.now_ms')::bigint * interval '1 millisecond' $$`);
    clocked = await pool.connect();
    await clocked.query('SET search_path = fake_clock, public, pg_catalog');
  });
  afterAll(async () => {
    clocked?.release();
    await pool?.end();
    await dropTestDatabase(dbName);
  });

  test('decides as the sliding-window formula says, at every point of the window and on the boundary', async () => {
    const outcomes = { allowed: 0, refused: 0, onBoundary: 0 };
    const windowIndex = Math.floor(Date.now() / 1_000);
    const cases = fc
      .record({
        windowMs: fc.integer({ min: 1_000, max: 3_600_000 }),
        limit: fc.integer({ min: 1, max: 30 }),
        prev: fc.nat({ max: 60 }),
        cur: fc.nat({ max: 32 }),
        older: fc.nat({ max: 60 }),
        at: fc.oneof(fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true }).map((share) => ({ share })), fc.integer({ min: -2, max: 2 }).map((offset) => ({ offset }))),
      })
      .map(({ at, ...c }) => {
        // Either anywhere in the window, or a few ms around the first elapsed time at which the
        // previous window has decayed enough for one more hit (when there is such a time).
        const room = c.limit - c.cur - 1;
        const flipsAt = room >= 0 && c.prev > room ? Math.ceil((c.windowMs * (c.prev - room)) / c.prev) : undefined;
        const elapsedMs = 'share' in at || flipsAt === undefined ? Math.floor(('share' in at ? at.share : 0.5) * c.windowMs) : Math.min(c.windowMs - 1, Math.max(0, flipsAt + at.offset));
        return { ...c, elapsedMs, nearFlip: flipsAt !== undefined && Math.abs(elapsedMs - flipsAt) <= 2 };
      });
    await fc.assert(
      fc.asyncProperty(cases, async ({ windowMs, limit, prev, cur, older, elapsedMs, nearFlip }) => {
        const key = newKey();
        // Fixed windows start at multiples of the window length (db/migrations/005_rate_limits.sql).
        const windowStart = Math.floor((windowIndex * 1_000) / windowMs) * windowMs;
        const seeded: [number, number][] = [
          [windowStart - 2 * windowMs, older],
          [windowStart - windowMs, prev],
          [windowStart, cur],
        ];
        await seed(key, seeded);
        const result = await hitAt(windowStart + elapsedMs, key, limit, windowMs);
        expect(result.elapsedMs).toBe(elapsedMs);
        expect(result.allowed).toBe(modelAllows(prev, cur, elapsedMs, windowMs, limit));
        const counted = cur + (result.allowed ? 1 : 0);
        expect([result.prev, result.cur]).toEqual([prev, counted]);
        // Only an allowed hit is counted; the other windows are untouched.
        expect(await rowsOf(key)).toEqual(seeded.map(([start, hits]) => [start, start === windowStart ? counted : hits]).filter(([, hits]) => hits! > 0));
        outcomes[result.allowed ? 'allowed' : 'refused']++;
        if (nearFlip) outcomes.onBoundary++;
      }),
      { numRuns: 400, seed: 20260427 },
    );
    // Both answers, and the boundary itself, were exercised.
    expect(outcomes.allowed).toBeGreaterThan(40);
    expect(outcomes.refused).toBeGreaterThan(40);
    expect(outcomes.onBoundary).toBeGreaterThan(40);
  }, 60_000);

  test('on the database clock: the elapsed time it decides with is the time of the call', async () => {
    const windowMs = 60_000;
    for (let attempt = 0; ; attempt++) {
      const key = newKey();
      const before = await dbNow('floor');
      const result = await hitOnce(key, 5, windowMs);
      const after = await dbNow('ceil');
      const windowStart = before - (before % windowMs);
      if (after - (after % windowMs) !== windowStart && attempt < 3) continue;
      expect(result.elapsedMs).toBeGreaterThanOrEqual(before - windowStart);
      expect(result.elapsedMs).toBeLessThanOrEqual(after - windowStart);
      expect(await rowsOf(key)).toEqual([[windowStart, 1]]);
      return;
    }
  });

  test('at the limit: the hit that fills it is allowed, the next one is refused and not counted', async () => {
    const windowMs = 3_600_000;
    for (let attempt = 0; ; attempt++) {
      const key = newKey();
      const before = await dbNow('floor');
      const windowStart = before - (before % windowMs);
      await pool.query('INSERT INTO rate_limits (key, window_start, hits) VALUES ($1, $2, 4)', [key, windowStart]);
      const filling = await hitOnce(key, 5, windowMs);
      const over = await hitOnce(key, 5, windowMs);
      const after = await dbNow('ceil');
      if (after - (after % windowMs) !== windowStart && attempt < 3) continue;
      expect([filling.allowed, filling.cur]).toEqual([true, 5]);
      expect([over.allowed, over.cur]).toEqual([false, 5]);
      expect(await rowsOf(key)).toEqual([[windowStart, 5]]);
      return;
    }
  });

  test('concurrent hits from many connections: exactly the limit is allowed and counted', async () => {
    const windowMs = 3_600_000;
    const limit = 7;
    for (let attempt = 0; ; attempt++) {
      const key = newKey();
      const before = await dbNow('floor');
      const results = await Promise.all(Array.from({ length: 30 }, () => hitOnce(key, limit, windowMs)));
      const after = await dbNow('ceil');
      if (before - (before % windowMs) !== after - (after % windowMs) && attempt < 3) continue;
      expect(results.filter((r) => r.allowed)).toHaveLength(limit);
      expect((await rowsOf(key)).map(([, hits]) => hits)).toEqual([limit]);
      return;
    }
  });

  test('retryAfter is the wait until one more hit fits', () => {
    // Ten hits in the previous window, none yet in this one, limit ten: 1/10 of a window in.
    expect(retryAfterMs(10, 0, 0, 10_000, 10)).toBe(1_000);
    expect(retryAfterMs(10, 0, 400, 10_000, 10)).toBe(600);
    // This window is full: wait for it to end, then for its share to decay by one hit.
    expect(retryAfterMs(0, 10, 2_000, 10_000, 10)).toBe(8_000 + 1_000);
    expect(retryAfterMs(0, 0, 0, 10_000, 10)).toBe(0);
    // After the computed wait the model allows the hit, and not a millisecond before it.
    for (const [prev, cur, elapsed, limit] of [[10, 0, 0, 10], [7, 3, 1_234, 9], [3, 5, 9_999, 6], [0, 10, 2_000, 10]] as const) {
      const wait = retryAfterMs(prev, cur, elapsed, 10_000, limit);
      const at = (ms: number) => (elapsed + ms < 10_000 ? modelAllows(prev, cur, elapsed + ms, 10_000, limit) : modelAllows(cur, 0, elapsed + ms - 10_000, 10_000, limit));
      expect(at(wait)).toBe(true);
      if (wait > 0) expect(at(wait - 1)).toBe(false);
    }
  });
});

let stack: Stack;
const as = (token: string) => ({ authorization: `Bearer ${token}` });
let users = 0;
const newUser = () => stack.issueToken(`limits-user-${++users}`);

beforeAll(async () => {
  stack = await startStack({
    env: {
      KEEL_RATE_REQUESTS_PER_TOKEN: String(REQUESTS_PER_TOKEN),
      KEEL_RATE_REQUESTS_WINDOW_MS: '60000',
      // A long message window, so the checks below cannot race it on a slow machine.
      KEEL_RATE_MESSAGES_WINDOW_MS: String(MESSAGE_WINDOW_MS),
      KEEL_MAX_SOCKETS_PER_USER: String(SOCKETS_PER_USER),
    },
  });
});
afterAll(async () => {
  await stack?.stop();
});

async function createSession(token: string, base = stack.base): Promise<string> {
  const res = await fetch(`${base}/api/v1/sessions`, { method: 'POST', headers: { ...as(token), 'content-type': 'application/json' }, body: '{}' });
  expect(res.status).toBe(201);
  return ((await res.json()) as { id: string }).id;
}

/** Sends a frame and returns the next frame the server answers with. */
async function answerTo(ws: WsClient, frame: unknown, type: 'error' | 'pong' | 'message.accepted') {
  const before = ws.frames.length;
  ws.send(frame);
  return ws.waitFor((f) => ws.frames.indexOf(f) >= before && f.type === type);
}

async function stillOpen(ws: WsClient) {
  await answerTo(ws, { type: 'ping' }, 'pong');
}

test('every limit at its boundary: exactly at the limit accepted, one over refused, the socket still open', async () => {
  const token = await newUser();
  const sessionId = await createSession(token);
  const ws = await stack.ws(sessionId, '', token);

  // Message content: 10,000 characters.
  await answerTo(ws, { type: 'message', content: 'a'.repeat(10_000) }, 'message.accepted');
  const tooLong = await answerTo(ws, { type: 'message', content: 'a'.repeat(10_001) }, 'error');
  expect(tooLong.data).toMatchObject({ code: 'VALIDATION_ERROR', details: { field: 'content' } });
  await stillOpen(ws);

  // Frame size: 32 KB, measured in bytes.
  const frameOf = (bytes: number) => {
    const head = '{"type":"ping","pad":"';
    return `${head}${'p'.repeat(bytes - head.length - 2)}"}`;
  };
  expect(Buffer.byteLength(frameOf(32_768))).toBe(32_768);
  await answerTo(ws, frameOf(32_768), 'pong');
  expect((await answerTo(ws, frameOf(32_769), 'error')).data.code).toBe('PAYLOAD_TOO_LARGE');
  await stillOpen(ws);

  // IDs: ^[a-zA-Z0-9_-]{1,128}$.
  await answerTo(ws, { type: 'message', content: 'id at the limit', clientMessageId: 'i'.repeat(128) }, 'message.accepted');
  const longId = await answerTo(ws, { type: 'message', content: 'id over the limit', clientMessageId: 'i'.repeat(129) }, 'error');
  expect(longId.data).toMatchObject({ code: 'VALIDATION_ERROR', details: { field: 'clientMessageId' } });
  await stillOpen(ws);
  const idPath = (id: string) => `/api/v1/sessions/${id}`;
  expect((await stack.request('GET', idPath('s'.repeat(128)), undefined, as(token))).body.error.code).toBe('SESSION_NOT_FOUND');
  expect((await stack.request('GET', idPath('s'.repeat(129)), undefined, as(token))).body.error.code).toBe('VALIDATION_ERROR');

  // REST content and body size (64kb = 65,536 bytes; JSON whitespace pads the body).
  const post = (body: string) => stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, body, { ...as(token), 'content-type': 'application/json' });
  expect((await post(JSON.stringify({ content: 'b'.repeat(10_000) }))).status).toBe(202);
  expect((await post(JSON.stringify({ content: 'b'.repeat(10_001) }))).body.error.code).toBe('VALIDATION_ERROR');
  const padded = (bytes: number) => {
    const json = JSON.stringify({ content: 'padded body' });
    return `${json.slice(0, -1)}${' '.repeat(bytes - json.length)}}`;
  };
  expect((await post(padded(65_536))).status).toBe(202);
  const tooBig = await post(padded(65_537));
  expect([tooBig.status, tooBig.body.error.code]).toEqual([413, 'PAYLOAD_TOO_LARGE']);

  // Page size: 100.
  expect((await stack.request('GET', `/api/v1/sessions/${sessionId}/messages?limit=100`, undefined, as(token))).status).toBe(200);
  const bigPage = await stack.request('GET', `/api/v1/sessions/${sessionId}/messages?limit=101`, undefined, as(token));
  expect([bigPage.status, bigPage.body.error.code]).toEqual([422, 'VALIDATION_ERROR']);
  await stillOpen(ws);
});

test('open WebSockets per user: one over the limit gets an error frame and close 4029; the others stay open', async () => {
  const token = await newUser();
  const sessionId = await createSession(token);
  const open = [];
  for (let i = 0; i < SOCKETS_PER_USER; i++) open.push(await stack.ws(sessionId, '', token));
  const refused = await new Promise<{ code: number; frames: any[] }>((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${new URL(stack.base).port}/api/v1/sessions/${sessionId}/ws?token=${token}`);
    const frames: any[] = [];
    ws.on('message', (m) => frames.push(JSON.parse(m.toString())));
    ws.on('close', (code) => resolve({ code, frames }));
    ws.on('error', reject);
  });
  expect(refused.code).toBe(4029);
  expect(refused.frames).toHaveLength(1);
  expect(refused.frames[0].data).toMatchObject({ code: 'RATE_LIMIT_EXCEEDED', recoverable: true });
  for (const ws of open) await stillOpen(ws);
  // Another user is not affected; a closed socket frees its place.
  const otherToken = await newUser();
  await stillOpen(await stack.ws(await createSession(otherToken), '', otherToken));
  await open[0]!.close();
  await eventually(async () => stack.ws(sessionId, '', token).catch(() => null), 5_000, 'a socket after one closed');
});

test('messages per session hold across two API processes: the 11th in the window is refused on either', async () => {
  const token = await newUser();
  const second = await stack.startExtraApi();
  const sessionId = await createSession(token);
  const send = (base: string, i: number) =>
    fetch(`${base}/api/v1/sessions/${sessionId}/messages`, {
      method: 'POST',
      headers: { ...as(token), 'content-type': 'application/json' },
      body: JSON.stringify({ content: `message ${i}`, clientMessageId: `rate-${i}` }),
    });
  // Ten at once, split across the two processes: all accepted.
  const accepted = await Promise.all(Array.from({ length: 10 }, (_, i) => send(i % 2 ? second.base : stack.base, i)));
  expect(accepted.map((r) => r.status)).toEqual(Array(10).fill(202));

  for (const base of [stack.base, second.base]) {
    const res = await send(base, 99);
    expect(res.status).toBe(429);
    const body = (await res.json()) as { error: { code: string; recoverable: boolean; details: { retryAfter: number }; requestId: string } };
    expect(body.error).toMatchObject({ code: 'RATE_LIMIT_EXCEEDED', recoverable: true });
    expect(body.error.details.retryAfter).toBeGreaterThanOrEqual(1);
    // At most the rest of this window plus the time for its share to decay by one hit.
    expect(body.error.details.retryAfter).toBeLessThanOrEqual((MESSAGE_WINDOW_MS * 1.1) / 1000);
    expect(Number(res.headers.get('retry-after'))).toBe(body.error.details.retryAfter);
    expect(body.error.requestId).toBeTruthy();
  }
  const ws = await stack.ws(sessionId, '', token);
  const refused = await answerTo(ws, { type: 'message', content: 'over the limit' }, 'error');
  expect(refused.data).toMatchObject({ code: 'RATE_LIMIT_EXCEEDED', details: { retryAfter: expect.any(Number) } });
  await stillOpen(ws);

  // Nothing accepted is lost: all ten are answered, the refused ones never reached the session.
  await eventually(async () => {
    const { rows } = await stack.db.query("SELECT count(*)::int AS n FROM session_events WHERE session_id = $1 AND type = 'turn.done'", [sessionId]);
    return rows[0].n === 10;
  }, 60_000, 'ten answered turns');
  const { rows } = await stack.db.query("SELECT count(*)::int AS n FROM messages WHERE session_id = $1 AND role = 'user'", [sessionId]);
  expect(rows[0].n).toBe(10);

  // A resend of a stored message is answered, not counted: still 202 with the budget spent.
  const resent = await send(second.base, 3);
  expect(resent.status).toBe(202);
  expect((await send(stack.base, 100)).status).toBe(429);
  // A repeated POST /chat for a turn that already ended is answered from the log, budget or not.
  const chat = await fetch(`${stack.base}/api/v1/sessions/${sessionId}/chat`, {
    method: 'POST',
    headers: { ...as(token), 'content-type': 'application/json' },
    body: JSON.stringify({ content: 'message 4', clientMessageId: 'rate-4', stream: false }),
  });
  expect(chat.status).toBe(200);
  expect(((await chat.json()) as { content: string }).content).toContain('message 4');
}, 90_000);

test('a message whose signal fails is not counted against the session: its hit is given back', async () => {
  const token = await newUser();
  const sessionId = await createSession(token);
  const send = (i: number) =>
    fetch(`${stack.base}/api/v1/sessions/${sessionId}/messages`, {
      method: 'POST',
      headers: { ...as(token), 'content-type': 'application/json' },
      body: JSON.stringify({ content: `message ${i}`, clientMessageId: `gone-${i}` }),
    });
  const hits = async () =>
    (await stack.db.query("SELECT COALESCE(sum(hits), 0)::int AS n FROM rate_limits WHERE key = $1", [`msg:${sessionId}`])).rows[0].n as number;
  expect((await send(1)).status).toBe(202);
  expect(await hits()).toBe(1);
  // The workflow is gone while the row still says active: the message is stored, its signal fails.
  const connection = await Connection.connect({ address: stack.env.TEMPORAL_ADDRESS });
  try {
    await new Client({ connection }).workflow.getHandle(sessionWorkflowId(sessionId)).terminate('limits test: the signal must fail');
  } finally {
    await connection.close();
  }
  const failed = await send(2);
  expect(failed.status).toBe(404);
  expect(((await failed.json()) as { error: { code: string } }).error.code).toBe('SESSION_NOT_FOUND');
  // It was stored (its hit counted in that statement) before the signal failed, and the hit was given back.
  const stored = await stack.db.query('SELECT count(*)::int AS n FROM messages WHERE session_id = $1 AND client_message_id = $2', [sessionId, 'gone-2']);
  expect(stored.rows[0].n).toBe(1);
  expect(await hits()).toBe(1);
}, 60_000);

test('requests per token hold across two API processes under concurrent load; other tokens are unaffected', async () => {
  const token = await newUser();
  const other = await newUser();
  const second = await stack.startExtraApi();
  const get = (base: string, t: string) => fetch(`${base}/api/v1/agents`, { headers: as(t) });
  const results = await Promise.all(Array.from({ length: REQUESTS_PER_TOKEN + 10 }, (_, i) => get(i % 2 ? second.base : stack.base, token)));
  const statuses = results.map((r) => r.status);
  expect(statuses.filter((s) => s === 200)).toHaveLength(REQUESTS_PER_TOKEN);
  expect(statuses.filter((s) => s === 429)).toHaveLength(10);
  const refused = (await results[statuses.indexOf(429)]!.json()) as { error: { code: string; details: { retryAfter: number } } };
  expect(refused.error.code).toBe('RATE_LIMIT_EXCEEDED');
  expect(refused.error.details.retryAfter).toBeGreaterThanOrEqual(1);
  expect((await get(second.base, other)).status).toBe(200);
  // A WebSocket connect is a request too: refused at the upgrade with 429 and Retry-After.
  const sessionOfOther = await createSession(other);
  const upgrade = await new Promise<{ status: number; retryAfter: string | undefined; body: string }>((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${new URL(stack.base).port}/api/v1/sessions/${sessionOfOther}/ws?token=${token}`);
    ws.on('unexpected-response', (_req, res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'], body }));
    });
    ws.on('open', () => reject(new Error('upgrade accepted')));
    ws.on('error', () => undefined);
  });
  expect(upgrade.status).toBe(429);
  expect(Number(upgrade.retryAfter)).toBeGreaterThanOrEqual(1);
  expect(JSON.parse(upgrade.body).error.code).toBe('RATE_LIMIT_EXCEEDED');
  // Health and readiness are not counted, and stay reachable.
  expect((await fetch(`${stack.base}/api/v1/health`)).status).toBeLessThan(500);
});
