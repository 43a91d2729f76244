import { startStack, eventually, type Stack } from './support/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack();
});
afterAll(async () => {
  await stack?.stop();
});

async function storedMessages(sessionId: string) {
  const { rows } = await stack.db.query('SELECT id, turn, position, role, content, input_tokens, output_tokens FROM messages WHERE session_id = $1 ORDER BY turn, position', [sessionId]);
  return rows;
}

test('a full turn over WebSocket: accepted, deltas in order, end, done; storage matches the stream', async () => {
  const sessionId = await stack.createSession({ title: 'first' });
  stack.model.script(sessionId, { tokenDelayMs: 5 });
  const ws = await stack.ws(sessionId);
  expect(ws.frames[0]).toMatchObject({ type: 'connected', sessionId, lastSeq: 0 });

  ws.send({ type: 'message', content: 'Hello there', clientMessageId: 'c-1' });
  const done = await ws.waitFor((f) => f.type === 'turn.done');

  const types = ws.frames.map((f) => f.type).filter((t) => t !== 'stream.delta' && t !== 'agent.status');
  expect(types).toEqual(['connected', 'message.accepted', 'stream.start', 'stream.end', 'turn.done']);
  const deltas = ws.frames.filter((f) => f.type === 'stream.delta');
  expect(deltas.length).toBeGreaterThan(1);
  const seqs = ws.frames.filter((f) => f.seq !== undefined).map((f) => f.seq);
  expect(seqs).toEqual([1, 2, 3, 4]);

  const streamed = ws.replies().get('t1-s1')!.text;
  expect(streamed).toBe('You said: Hello there.');
  const end = ws.frames.find((f) => f.type === 'stream.end')!;
  expect(end.data.content).toBe(streamed);
  expect(done.data).toMatchObject({ status: 'completed', content: streamed, turn: 1 });

  const stored = await storedMessages(sessionId);
  expect(stored.map((m) => [m.role, m.content])).toEqual([
    ['user', 'Hello there'],
    ['assistant', streamed],
  ]);
  expect(stored[1].output_tokens).toBeGreaterThan(0);

  const state = await stack.request('GET', `/api/v1/sessions/${sessionId}`);
  expect(state.body.state).toMatchObject({ status: 'active', turnInProgress: null, queued: [], messageCount: 2 });
  expect(state.body.state.usage.outputTokens).toBe(stored[1].output_tokens);
});

test('multi-turn context: the second model request contains the first turn', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'My name is Ada' });
  await ws.waitFor((f) => f.type === 'turn.done');
  ws.send({ type: 'message', content: 'What is my name?' });
  await ws.waitForCount((f) => f.type === 'turn.done', 2);

  const requests = stack.model.requests(sessionId);
  expect(requests).toHaveLength(2);
  const second = requests[1]!.body.messages.filter((m: { role: string }) => m.role !== 'system').map((m: { role: string; content: string }) => [m.role, m.content]);
  expect(second).toEqual([
    ['user', 'My name is Ada'],
    ['assistant', 'You said: My name is Ada.'],
    ['user', 'What is my name?'],
  ]);
  const last = ws.frames.filter((f) => f.type === 'turn.done')[1]!;
  expect(last.data.content).toContain('Earlier you said: "My name is Ada"');
});

test('three messages at once are answered in order; a repeated client message ID is answered once', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { tokenDelayMs: 10 });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'one', clientMessageId: 'a' });
  ws.send({ type: 'message', content: 'two', clientMessageId: 'b' });
  ws.send({ type: 'message', content: 'three', clientMessageId: 'c' });
  ws.send({ type: 'message', content: 'one again', clientMessageId: 'a' });
  await ws.waitForCount((f) => f.type === 'message.accepted', 3);
  const rest = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'two via rest', clientMessageId: 'b' });
  expect(rest.status).toBe(202);

  // A fresh message after both repeats: messages are answered in the order they arrive, so a
  // repeat that got through would be accepted and answered before this one.
  ws.send({ type: 'message', content: 'four', clientMessageId: 'd' });
  const dones = await ws.waitForCount((f) => f.type === 'turn.done', 4);
  expect(dones.map((d) => d.data.content)).toEqual([
    expect.stringMatching(/^You said: one\./),
    expect.stringMatching(/^You said: two\./),
    expect.stringMatching(/^You said: three\./),
    expect.stringMatching(/^You said: four\./),
  ]);
  expect(ws.frames.filter((f) => f.type === 'message.accepted').map((f) => [f.data.clientMessageId, f.data.content])).toEqual([
    ['a', 'one'],
    ['b', 'two'],
    ['c', 'three'],
    ['d', 'four'],
  ]);
  const { rows } = await stack.db.query("SELECT data->>'content' AS content FROM session_events WHERE session_id = $1 AND type = 'message.accepted' ORDER BY seq", [sessionId]);
  expect(rows.map((r) => r.content)).toEqual(['one', 'two', 'three', 'four']);
  const stored = await storedMessages(sessionId);
  expect(stored.filter((m) => m.role === 'user').map((m) => m.content)).toEqual(['one', 'two', 'three', 'four']);
  expect(stack.model.requests(sessionId)).toHaveLength(4);
});

test('a streamed reply costs a constant number of database writes', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { reply: Array.from({ length: 400 }, (_, i) => `w${i}`).join(' '), tokenDelayMs: 1 });
  const ws = await stack.ws(sessionId);
  const before = await eventCount(sessionId);
  ws.send({ type: 'message', content: 'long please' });
  await ws.waitFor((f) => f.type === 'turn.done');
  // message.accepted + stream.start + stream.end + turn.done, and the two message rows.
  expect((await eventCount(sessionId)) - before).toBe(4);
  expect(await storedMessages(sessionId)).toHaveLength(2);
  expect(ws.frames.filter((f) => f.type === 'stream.delta').length).toBeGreaterThan(1);
});

async function eventCount(sessionId: string): Promise<number> {
  const { rows } = await stack.db.query('SELECT count(*)::int AS n FROM session_events WHERE session_id = $1', [sessionId]);
  return rows[0].n;
}

test('the session state query reports queued messages while a turn runs', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { firstTokenDelayMs: 800 });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'first' });
  ws.send({ type: 'message', content: 'second' });
  const state = await eventually(async () => {
    const res = await stack.request('GET', `/api/v1/sessions/${sessionId}`);
    return res.body.state?.turnInProgress && res.body.state.queued.length === 1 ? res.body.state : null;
  });
  expect(state.turnInProgress.turn).toBe(1);
  expect(state.queued[0].turn).toBe(2);
  await ws.waitForCount((f) => f.type === 'turn.done', 2);
});
