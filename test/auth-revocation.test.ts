import http from 'node:http';
import { ADMIN_KEY, DEV_TOKEN, eventually, startStack, type Stack } from './support/stack';
import { spawnEntry, type Spawned } from './support/processes';
import { SseClient } from './support/sse-client';

/** Tokens over long-lived connections: revocation, per-user stream limits, and the dev token across restarts. */

const TOKEN_CACHE_MS = 2_000;
const MAX_SSE_PER_USER = 2;

let stack: Stack;
let restarted: Spawned | undefined;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_TOKEN_CACHE_MS: String(TOKEN_CACHE_MS), KEEL_MAX_SSE_PER_USER: String(MAX_SSE_PER_USER) } });
});
afterAll(async () => {
  await restarted?.kill();
  await stack?.stop();
});

const admin = { 'x-api-key': ADMIN_KEY, authorization: '' };
const as = (token: string) => ({ authorization: `Bearer ${token}` });

async function issue(userId: string): Promise<{ token: string; tokenId: string }> {
  const res = await stack.request('POST', '/api/v1/admin/tokens', { userId }, admin);
  return { token: res.body.token as string, tokenId: res.body.tokenId as string };
}

function events(sessionId: string, token: string, base = stack.base) {
  return SseClient.open(`${base}/api/v1/sessions/${sessionId}/events`, { token });
}

test(`a revoked token closes its open WebSocket (4001) and SSE stream within KEEL_TOKEN_CACHE_MS (${TOKEN_CACHE_MS} ms)`, async () => {
  const erin = await issue('erin');
  const sessionId = (await stack.request('POST', '/api/v1/sessions', {}, as(erin.token))).body.id as string;
  const ws = await stack.ws(sessionId, '', erin.token);
  const sse = await events(sessionId, erin.token);
  // Fill the token cache, as a busy connection would, right before the revocation.
  ws.send({ type: 'cancel' });
  await ws.waitFor((f) => f.type === 'cancel.result');
  const closed = new Promise<{ code: number; at: number }>((resolve) => ws.ws.once('close', (code) => resolve({ code, at: Date.now() })));
  const ended = sse.ended.then(() => Date.now());

  const revokedAt = Date.now();
  expect((await stack.request('DELETE', `/api/v1/admin/tokens/${erin.tokenId}`, undefined, admin)).status).toBe(204);

  const { code, at } = await closed;
  expect(code).toBe(4001);
  expect(at - revokedAt).toBeLessThan(TOKEN_CACHE_MS);
  expect(ws.frames.find((f) => f.type === 'error')!.data).toMatchObject({ code: 'UNAUTHORIZED' });
  expect((await ended) - revokedAt).toBeLessThan(TOKEN_CACHE_MS);
  expect(sse.events.at(-1)).toMatchObject({ event: 'error', data: { type: 'error', data: { code: 'UNAUTHORIZED' } } });
  expect((await stack.request('GET', `/api/v1/sessions/${sessionId}`, undefined, as(erin.token))).status).toBe(401);
});

test(`SSE event streams are limited to KEEL_MAX_SSE_PER_USER (${MAX_SSE_PER_USER}) per user`, async () => {
  const frank = await issue('frank');
  const sessionId = (await stack.request('POST', '/api/v1/sessions', {}, as(frank.token))).body.id as string;
  const open = [await events(sessionId, frank.token), await events(sessionId, frank.token)];
  const refused = await events(sessionId, frank.token).then(
    () => null,
    (error: { status: number; body: any }) => error,
  );
  expect(refused).toMatchObject({ status: 429, body: { error: { code: 'RATE_LIMIT_EXCEEDED', details: { retryAfter: 1 } } } });
  // Another user is counted apart.
  const grace = await issue('grace');
  const hers = (await stack.request('POST', '/api/v1/sessions', {}, as(grace.token))).body.id as string;
  (await events(hers, grace.token)).close();

  open[0]!.close();
  const again = await eventually(() => events(sessionId, frank.token).catch(() => null), 5_000, 'a free stream slot');
  again.close();
  open[1]!.close();
});

test('a malformed percent-escape in the WebSocket path is answered 422 VALIDATION_ERROR', async () => {
  const { port } = new URL(stack.base);
  const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = http.request({
      host: '127.0.0.1',
      port,
      path: `/api/v1/sessions/%E0%A4%A/ws?token=${DEV_TOKEN}`,
      headers: { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' },
    });
    req.once('response', (res) => {
      let body = '';
      res.on('data', (c: Buffer) => (body += c.toString()));
      res.on('end', () => resolve({ status: res.statusCode!, body }));
    });
    req.once('upgrade', () => reject(new Error('upgraded')));
    req.once('error', reject);
    req.end();
  });
  expect(answer.status).toBe(422);
  expect(JSON.parse(answer.body).error.code).toBe('VALIDATION_ERROR');
  expect(stack.api.lines.some((l) => l.includes('websocket upgrade failed'))).toBe(false);
});

test('a revoked development token stays revoked when the API restarts (and the API says so)', async () => {
  expect((await stack.request('GET', '/api/v1/approvals')).status).toBe(200);
  expect((await stack.request('DELETE', '/api/v1/admin/tokens/tok_dev', undefined, admin)).status).toBe(204);
  await eventually(async () => (await stack.request('GET', '/api/v1/approvals')).status === 401, 10_000, 'the dev token to stop working');

  await stack.api.kill();
  restarted = spawnEntry('api/main.ts', stack.env);
  const port = Number((await restarted.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/))[1]);
  expect(restarted.lines.some((l) => l.includes('tok_dev') && l.includes('stays revoked'))).toBe(true);
  const res = await fetch(`http://127.0.0.1:${port}/api/v1/approvals`, { headers: as(DEV_TOKEN) });
  expect(res.status).toBe(401);
  const { rows } = await stack.db.query(`SELECT revoked_at FROM api_tokens WHERE id = 'tok_dev'`);
  expect(rows[0].revoked_at).not.toBeNull();
});
