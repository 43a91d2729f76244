import { startStack, type Stack } from './support/stack';
import type { Frame } from './support/ws-client';

// KEEL_CONTEXT_MAX_TURNS (docs/configuration.md): the model is sent the last N turns, whole; older messages stay stored.

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_CONTEXT_MAX_TURNS: '2' } });
}, 60_000);
afterAll(async () => {
  await stack?.stop();
});

test('the model is sent the current turn and the one before it, a tool call with its result; every message stays stored', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  const turnDone = (n: number) => ws.waitFor((f: Frame) => f.type === 'turn.done' && f.data.turn === n, 30_000);
  ws.send({ type: 'message', content: 'alpha' });
  await turnDone(1);
  ws.send({ type: 'message', content: 'What is 15 + 27?' });
  await turnDone(2);
  ws.send({ type: 'message', content: 'gamma' });
  const third = await turnDone(3);

  const sent = stack.model.requests(sessionId).at(-1)!.body.messages as { role: string; content: string | null; tool_calls?: unknown[] }[];
  const texts = sent.filter((m) => m.role === 'user').map((m) => m.content);
  expect(texts).toEqual(['What is 15 + 27?', 'gamma']);
  // Turn 2 whole: the call and its result travel together.
  expect(sent.some((m) => m.role === 'assistant' && (m.tool_calls?.length ?? 0) > 0)).toBe(true);
  expect(sent.filter((m) => m.role === 'tool')).toHaveLength(1);
  expect(third.data.content).toBe('You said: gamma. Earlier you said: "What is 15 + 27?". This is turn 2.');

  const stored = await stack.db.query(`SELECT content FROM messages WHERE session_id = $1 AND role = 'user' ORDER BY turn`, [sessionId]);
  expect(stored.rows.map((r: { content: string }) => r.content)).toEqual(['alpha', 'What is 15 + 27?', 'gamma']);
});
