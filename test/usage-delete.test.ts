import { startStack, type Stack } from './support/stack';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_PRICE_TABLE: JSON.stringify({ 'keel-local': { inputPerMTok: 1000, outputPerMTok: 2000 } }) } });
});
afterAll(async () => {
  await stack?.stop();
});

test('each reply records tokens and cost; session totals equal the sum over its messages', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  for (let i = 1; i <= 3; i++) {
    ws.send({ type: 'message', content: `question number ${i}` });
    await ws.waitForCount((f) => f.type === 'turn.done', i);
  }
  const { rows } = await stack.db.query("SELECT input_tokens, output_tokens, cost_usd::float8 AS cost FROM messages WHERE session_id = $1 AND role = 'assistant'", [sessionId]);
  expect(rows).toHaveLength(3);
  for (const r of rows) {
    expect(r.input_tokens).toBeGreaterThan(0);
    expect(r.cost).toBeCloseTo((r.input_tokens * 1000 + r.output_tokens * 2000) / 1e6, 8);
  }
  const usage = await stack.request('GET', `/api/v1/sessions/${sessionId}/usage`);
  expect(usage.status).toBe(200);
  expect(usage.body).toMatchObject({
    sessionId,
    assistantMessages: 3,
    inputTokens: rows.reduce((n, r) => n + r.input_tokens, 0),
    outputTokens: rows.reduce((n, r) => n + r.output_tokens, 0),
  });
  expect(usage.body.costUsd).toBeCloseTo(rows.reduce((n, r) => n + r.cost, 0), 8);
  const done = ws.frames.filter((f) => f.type === 'turn.done').at(-1)!;
  expect(done.data.usage.costUsd).toBeCloseTo(rows[2].cost, 8);
});

test('deleting a session soft-deletes it and its messages in one go, ends its workflow, and it answers 404', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'hello there' });
  await ws.waitFor((f) => f.type === 'turn.done');

  const del = await stack.request('DELETE', `/api/v1/sessions/${sessionId}`);
  expect(del.status).toBe(204);
  const { rows } = await stack.db.query('SELECT status, deleted_at FROM sessions WHERE id = $1', [sessionId]);
  expect(rows[0].status).toBe('deleted');
  const messages = await stack.db.query('SELECT count(*)::int AS n, count(deleted_at)::int AS deleted FROM messages WHERE session_id = $1', [sessionId]);
  expect(messages.rows[0]).toEqual({ n: 2, deleted: 2 });

  for (const [method, path, body] of [
    ['GET', `/api/v1/sessions/${sessionId}`],
    ['GET', `/api/v1/sessions/${sessionId}/messages`],
    ['GET', `/api/v1/sessions/${sessionId}/usage`],
    ['POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'hello?' }],
    ['DELETE', `/api/v1/sessions/${sessionId}`],
  ] as [string, string, unknown?][]) {
    const res = await stack.request(method, path, body);
    expect([path, res.status, res.body.error.code]).toEqual([path, 404, 'SESSION_NOT_FOUND']);
  }
  await expect(stack.ws(sessionId)).rejects.toThrow(/404/);
});
