import { startStack, eventually, type Stack } from './support/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_SESSION_IDLE_TTL_MS: '2500', KEEL_CONTINUE_AS_NEW_EVENTS: '40' } });
});
afterAll(async () => {
  await stack?.stop();
});

test('an idle session expires; a message to it gets SESSION_EXPIRED over REST and WebSocket', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'hello' });
  await ws.waitFor((f) => f.type === 'turn.done');
  const expired = await ws.waitFor((f) => f.type === 'session.expired', 10_000);
  expect(expired.data).toEqual({ idleMs: 2500 });

  const session = await stack.request('GET', `/api/v1/sessions/${sessionId}`);
  expect(session.body).toMatchObject({ status: 'expired', state: null });
  expect(session.body.endedAt).not.toBeNull();

  const rest = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'anyone?' });
  expect(rest.status).toBe(410);
  expect(rest.body.error).toMatchObject({ code: 'SESSION_EXPIRED', message: 'Session expired. Please start a new conversation.', recoverable: false });

  ws.send({ type: 'message', content: 'still there?', clientMessageId: 'late-1' });
  const error = await ws.waitFor((f) => f.type === 'error');
  expect(error.data).toMatchObject({ code: 'SESSION_EXPIRED', clientMessageId: 'late-1' });
  const { rows } = await stack.db.query('SELECT count(*)::int AS n FROM messages WHERE session_id = $1', [sessionId]);
  expect(rows[0].n).toBe(2);
}, 30_000);

test('the idle timer restarts with each message', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  for (let i = 0; i < 3; i++) {
    ws.send({ type: 'message', content: `keepalive ${i}` });
    await ws.waitForCount((f) => f.type === 'turn.done', i + 1);
    await new Promise((r) => setTimeout(r, 1500));
  }
  expect(ws.frames.some((f) => f.type === 'session.expired')).toBe(false);
}, 30_000);

test('continue-as-new with a low threshold keeps the conversation and the counters', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  const turns = 8;
  for (let i = 1; i <= turns; i++) {
    ws.send({ type: 'message', content: `message ${i}`, clientMessageId: `m${i}` });
    await ws.waitForCount((f) => f.type === 'turn.done', i);
  }
  const state = await eventually(async () => (await stack.request('GET', `/api/v1/sessions/${sessionId}`)).body.state);
  expect(state.generation).toBeGreaterThan(0);
  expect(state.messageCount).toBe(turns * 2);

  const requests = stack.model.requests(sessionId);
  const last = requests[requests.length - 1]!.body.messages as { role: string; content: string }[];
  expect(last.filter((m) => m.role === 'user').map((m) => m.content)).toEqual(Array.from({ length: turns }, (_, i) => `message ${i + 1}`));
  expect(last.filter((m) => m.role === 'assistant')).toHaveLength(turns - 1);

  // De-duplication survives continue-as-new.
  ws.send({ type: 'message', content: 'repeat', clientMessageId: 'm1' });
  ws.send({ type: 'message', content: 'fresh', clientMessageId: 'm-new' });
  await ws.waitForCount((f) => f.type === 'turn.done', turns + 1);
  await new Promise((r) => setTimeout(r, 300));
  expect(ws.frames.filter((f) => f.type === 'turn.done')).toHaveLength(turns + 1);
}, 60_000);
