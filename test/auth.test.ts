import WebSocket from 'ws';
import { ADMIN_KEY, startStack, type Stack } from './support/stack';

let stack: Stack;
let alice: string;
let bob: string;
let admin: string;
beforeAll(async () => {
  stack = await startStack();
  [alice, bob, admin] = [await stack.issueToken('alice'), await stack.issueToken('bob'), await stack.issueToken('root', true)];
});
afterAll(async () => {
  await stack?.stop();
});

const as = (token: string) => ({ authorization: `Bearer ${token}` });

async function closeCode(url: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url);
    const frames: string[] = [];
    ws.on('message', (m) => frames.push(m.toString()));
    ws.on('close', (code) => (frames.length ? reject(new Error(`data before close: ${frames}`)) : resolve(code)));
    ws.on('error', () => undefined);
  });
}

test('a user cannot read, stream, message, approve or delete another user\'s session; an admin can', async () => {
  const created = await stack.request('POST', '/api/v1/sessions', { title: 'private' }, as(alice));
  const id = created.body.id as string;
  expect(created.body.ownerId).toBe('alice');
  const calls: [string, string, unknown?][] = [
    ['GET', `/api/v1/sessions/${id}`],
    ['GET', `/api/v1/sessions/${id}/messages`],
    ['GET', `/api/v1/sessions/${id}/events`],
    ['GET', `/api/v1/sessions/${id}/usage`],
    ['POST', `/api/v1/sessions/${id}/messages`, { content: 'hi' }],
    ['POST', `/api/v1/sessions/${id}/chat`, { content: 'hi' }],
    ['POST', `/api/v1/sessions/${id}/approvals/tc_x`, { approved: true }],
    ['POST', `/api/v1/sessions/${id}/cancel`],
    ['DELETE', `/api/v1/sessions/${id}`],
  ];
  for (const [method, path, body] of calls) {
    const res = await stack.request(method, path, body, as(bob));
    expect([method, path, res.status, res.body?.error?.code]).toEqual([method, path, 404, 'SESSION_NOT_FOUND']);
  }
  await expect(stack.ws(id, '', bob)).rejects.toThrow(/404/);
  expect((await stack.request('GET', `/api/v1/sessions/${id}`, undefined, as(alice))).status).toBe(200);
  expect((await stack.request('GET', `/api/v1/sessions/${id}`, undefined, as(admin))).status).toBe(200);
  const ws = await stack.ws(id, '', admin);
  ws.send({ type: 'message', content: 'admin here' });
  await ws.waitFor((f) => f.type === 'turn.done');
  expect((await stack.request('DELETE', `/api/v1/sessions/${id}`, undefined, as(admin))).status).toBe(204);
});

test('requests without a valid token get 401; admin endpoints need the API key (401 missing, 403 wrong)', async () => {
  const none = await stack.request('POST', '/api/v1/sessions', {}, { authorization: '' });
  expect([none.status, none.body.error.code]).toEqual([401, 'UNAUTHORIZED']);
  const bad = await stack.request('POST', '/api/v1/sessions', {}, { authorization: 'Bearer nope' });
  expect([bad.status, bad.body.error.code]).toEqual([401, 'UNAUTHORIZED']);
  expect((await stack.request('GET', '/api/v1/health', undefined, { authorization: '' })).status).toBe(200);

  const missing = await stack.request('POST', '/api/v1/admin/tokens', { userId: 'eve' }, { authorization: '' });
  expect([missing.status, missing.body.error.code]).toEqual([401, 'UNAUTHORIZED']);
  const wrong = await stack.request('POST', '/api/v1/admin/tokens', { userId: 'eve' }, { 'x-api-key': 'not-the-key', authorization: '' });
  expect([wrong.status, wrong.body.error.code]).toEqual([403, 'FORBIDDEN']);
  const userTokenIsNoKey = await stack.request('POST', '/api/v1/admin/tokens', { userId: 'eve' }, { 'x-api-key': alice });
  expect(userTokenIsNoKey.status).toBe(403);
});

test('a WebSocket with a missing or bad token is closed with 4001 before any session data', async () => {
  const id = (await stack.request('POST', '/api/v1/sessions', {}, as(alice))).body.id as string;
  const host = new URL(stack.base).host;
  expect(await closeCode(`ws://${host}/api/v1/sessions/${id}/ws`)).toBe(4001);
  expect(await closeCode(`ws://${host}/api/v1/sessions/${id}/ws?token=nope`)).toBe(4001);
  // Browsers send the token as a subprotocol.
  const viaProtocol = new WebSocket(`ws://${host}/api/v1/sessions/${id}/ws`, ['bearer', alice]);
  const first = await new Promise<string>((resolve, reject) => {
    viaProtocol.once('message', (m) => resolve(m.toString()));
    viaProtocol.once('close', (code) => reject(new Error(`closed ${code}`)));
  });
  expect(JSON.parse(first)).toMatchObject({ type: 'connected', sessionId: id });
  expect(viaProtocol.protocol).toBe('bearer');
  viaProtocol.close();
});

test('a revoked token stops working; pending approvals list only the caller\'s sessions', async () => {
  const issued = await stack.request('POST', '/api/v1/admin/tokens', { userId: 'carol' }, { 'x-api-key': ADMIN_KEY, authorization: '' });
  const carol = issued.body.token as string;
  expect((await stack.request('POST', '/api/v1/sessions', {}, as(carol))).status).toBe(201);
  expect((await stack.request('DELETE', `/api/v1/admin/tokens/${issued.body.tokenId}`, undefined, { 'x-api-key': ADMIN_KEY, authorization: '' })).status).toBe(204);
  // Token lookups are cached for KEEL_TOKEN_CACHE_MS (1 s in the tests, 10 s by default).
  const deadline = Date.now() + 15_000;
  let status = 201;
  while (status !== 401 && Date.now() < deadline) {
    status = (await stack.request('POST', '/api/v1/sessions', {}, as(carol))).status;
    if (status !== 401) await new Promise((r) => setTimeout(r, 250));
  }
  expect(status).toBe(401);

  const id = (await stack.request('POST', '/api/v1/sessions', {}, as(alice))).body.id as string;
  stack.model.script(id, { toolCalls: [{ name: 'create_note', arguments: JSON.stringify({ title: 'a', body: 'b' }) }] });
  const ws = await stack.ws(id, '', alice);
  ws.send({ type: 'message', content: 'note it' });
  const required = await ws.waitFor((f) => f.type === 'approval.required');
  const mine = await stack.request('GET', '/api/v1/approvals?status=pending', undefined, as(alice));
  expect(mine.body.approvals.map((a: { toolCallId: string }) => a.toolCallId)).toContain(required.data.toolCallId);
  const theirs = await stack.request('GET', '/api/v1/approvals?status=pending', undefined, as(bob));
  expect(theirs.body.approvals).toEqual([]);
  const stolen = await stack.request('POST', `/api/v1/sessions/${id}/approvals/${required.data.toolCallId}`, { approved: true }, as(bob));
  expect(stolen.status).toBe(404);
  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
  expect((await ws.waitFor((f) => f.type === 'approval.resolved')).data.decidedBy).toBe('alice');
}, 30_000);
