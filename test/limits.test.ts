import WebSocket from 'ws';
import { retryAfterMs, slidingEstimate } from '../db/rate-limits';
import { eventually, startStack, type Stack } from './support/stack';
import type { WsClient } from './support/ws-client';

const REQUESTS_PER_TOKEN = 30;
const SOCKETS_PER_USER = 3;
const MESSAGE_WINDOW_MS = 60_000;

describe('sliding window arithmetic', () => {
  test('the previous window counts by how much of it still overlaps', () => {
    expect(slidingEstimate(10, 0, 0, 10_000)).toBe(10);
    expect(slidingEstimate(10, 2, 5_000, 10_000)).toBe(7);
    expect(slidingEstimate(10, 2, 10_000, 10_000)).toBe(2);
  });

  test('retryAfter is the wait until one more hit fits', () => {
    // Ten hits in the previous window, none yet in this one, limit ten: 1/10 of a window in.
    expect(retryAfterMs(10, 0, 0, 10_000, 10)).toBe(1_000);
    expect(retryAfterMs(10, 0, 400, 10_000, 10)).toBe(600);
    // This window is full: wait for it to end, then for its share to decay by one hit.
    expect(retryAfterMs(0, 10, 2_000, 10_000, 10)).toBe(8_000 + 1_000);
    expect(retryAfterMs(0, 0, 0, 10_000, 10)).toBe(0);
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
