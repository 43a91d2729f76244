import { startStack, eventually, type Stack } from './support/stack';

const IDLE_TTL_MS = 4000;

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_SESSION_IDLE_TTL_MS: String(IDLE_TTL_MS), KEEL_CONTINUE_AS_NEW_EVENTS: '40' } });
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
  expect(expired.data).toEqual({ idleMs: IDLE_TTL_MS });

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

test('the idle timer restarts with each message and runs from the end of the last turn', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  // Four messages half a TTL apart: the last one comes well over a TTL after the first turn.
  const messages = 4;
  for (let i = 0; i < messages; i++) {
    if (i > 0) await new Promise((r) => setTimeout(r, IDLE_TTL_MS / 2));
    ws.send({ type: 'message', content: `keepalive ${i}`, clientMessageId: `keepalive-${i}` });
    const answer = await ws.waitFor((f) => (f.type === 'message.accepted' || f.type === 'error') && f.data.clientMessageId === `keepalive-${i}`);
    expect(answer.type).toBe('message.accepted');
    await ws.waitForCount((f) => f.type === 'turn.done', i + 1);
  }
  await ws.waitFor((f) => f.type === 'session.expired', IDLE_TTL_MS + 10_000);

  // On the database clock.
  const { rows } = await stack.db.query(
    "SELECT type, created_at FROM session_events WHERE session_id = $1 AND type IN ('message.accepted', 'turn.done', 'session.expired') ORDER BY seq",
    [sessionId],
  );
  expect(rows.map((r) => r.type)).toEqual([...Array(messages).fill(['message.accepted', 'turn.done']).flat(), 'session.expired']);
  const at = (type: string, which: 'first' | 'last') => {
    const matching = rows.filter((r) => r.type === type);
    return new Date((which === 'first' ? matching[0] : matching.at(-1)).created_at).getTime();
  };
  // The session still took a message more than a TTL after its first turn ended: the timer restarted.
  expect(at('message.accepted', 'last') - at('turn.done', 'first')).toBeGreaterThan(IDLE_TTL_MS);
  // And it expired no sooner than a TTL after the last turn ended.
  expect(at('session.expired', 'last') - at('turn.done', 'last')).toBeGreaterThanOrEqual(IDLE_TTL_MS);
}, 45_000);

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
  // Messages are answered in the order they arrive, so the next turn answers the repeat if it
  // was not dropped: it must answer "fresh", and the model must never have seen "repeat".
  const dones = await ws.waitForCount((f) => f.type === 'turn.done', turns + 1);
  expect(dones[turns]!.data).toMatchObject({ status: 'completed', content: `You said: fresh. Earlier you said: "message 1". This is turn ${turns + 1}.` });
  const accepted = ws.frames.filter((f) => f.type === 'message.accepted');
  expect(accepted.slice(turns).map((f) => [f.data.clientMessageId, f.data.content])).toEqual([['m-new', 'fresh']]);
  const after = stack.model.requests(sessionId).at(-1)!.body.messages as { role: string; content: string }[];
  expect(after.filter((m) => m.role === 'user').map((m) => m.content)).toEqual([...Array.from({ length: turns }, (_, i) => `message ${i + 1}`), 'fresh']);
}, 60_000);
