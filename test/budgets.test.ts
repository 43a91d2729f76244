import path from 'node:path';
import { eventually, startStack, type Stack } from './support/stack';

/** Budgets end to end: a turn over its agent's token budget pauses with an approval the approvals API decides. */

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml') } });
});
afterAll(async () => {
  await stack?.stop();
});

async function pausedSession() {
  const sessionId = await stack.createSession({ agentId: 'budgeted' });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'What is 15 + 27?' });
  const exceeded = await ws.waitFor((f) => f.type === 'budget.exceeded');
  const required = await ws.waitFor((f) => f.type === 'approval.required' && f.data.toolCallId === exceeded.data.approvalId);
  return { sessionId, ws, exceeded, required };
}

test('approved, the paused turn goes on: the tool runs and the turn completes', async () => {
  const { sessionId, ws, exceeded, required } = await pausedSession();
  expect(exceeded.data).toMatchObject({ turn: 1, overruns: [{ limit: 'tokens', max: 5, used: expect.any(Number) }] });
  expect(exceeded.data.overruns[0].used).toBeGreaterThan(5);
  expect(required.data).toMatchObject({ name: 'budget', arguments: { overruns: exceeded.data.overruns }, expiresAt: exceeded.data.expiresAt });
  // Listed with the other approvals, oldest first; no tool has run yet.
  const pending = (await stack.request('GET', '/api/v1/approvals')).body.approvals;
  expect(pending.map((a: { toolCallId: string }) => a.toolCallId)).toContain(exceeded.data.approvalId);
  expect(ws.frames.some((f) => f.type === 'tool.result')).toBe(false);

  const decided = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${exceeded.data.approvalId}`, { approved: true, digest: required.data.digest });
  expect(decided.body).toEqual({ toolCallId: exceeded.data.approvalId, outcome: 'approved' });
  const done = await ws.waitFor((f) => f.type === 'turn.done');
  expect(done.data).toMatchObject({ status: 'completed', content: expect.stringContaining('42') });
  expect(ws.frames.find((f) => f.type === 'tool.result')?.data).toMatchObject({ name: 'calculator', status: 'succeeded' });
  // A second decision is refused as for any approval.
  const again = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${exceeded.data.approvalId}`, { approved: false });
  expect(again.body.error.code).toBe('APPROVAL_ALREADY_DECIDED');
});

test('rejected, the turn ends with BUDGET_EXCEEDED and the tool never runs', async () => {
  const { sessionId, ws, exceeded } = await pausedSession();
  await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${exceeded.data.approvalId}`, { approved: false, feedback: 'too expensive' });
  const done = await ws.waitFor((f) => f.type === 'turn.done');
  expect(done.data.status).toBe('failed');
  expect(ws.frames.find((f) => f.type === 'error' && f.data.turn === 1)?.data).toMatchObject({ code: 'BUDGET_EXCEEDED', recoverable: false });
  expect(ws.frames.find((f) => f.type === 'tool.result')?.data).toMatchObject({ name: 'calculator', status: 'failed' });
  const { rows } = await stack.db.query(`SELECT status FROM tool_calls WHERE session_id = $1 AND name = 'calculator'`, [sessionId]);
  expect(rows).toEqual([{ status: 'failed' }]);
  await eventually(async () => (await stack.request('GET', '/api/v1/approvals')).body.approvals.every((a: { toolCallId: string }) => a.toolCallId !== exceeded.data.approvalId), 5_000, 'the approval to leave the list');
});

test('a run brings its own budget: it waits for the approval, and rejected it ends error BUDGET_EXCEEDED', async () => {
  const submitted = await stack.request('POST', '/api/v1/runs', { input: 'What is 2 + 2?', budget: { maxTokens: 5 } });
  expect(submitted.status).toBe(202);
  const runId = submitted.body.runId as string;
  const waiting = await eventually(async () => {
    const run = (await stack.request('GET', `/api/v1/runs/${runId}`)).body;
    return run.status === 'waiting_approval' ? run : null;
  }, 20_000, 'the run to wait for its budget');
  expect(waiting.budget).toEqual({ maxTokens: 5 });
  const approval = (await stack.request('GET', '/api/v1/approvals')).body.approvals.find((a: { sessionId: string; name: string }) => a.sessionId === submitted.body.sessionId && a.name === 'budget');
  expect(approval).toBeDefined();
  await stack.request('POST', `/api/v1/sessions/${submitted.body.sessionId}/approvals/${approval.toolCallId}`, { approved: false });
  const ended = await eventually(async () => {
    const run = (await stack.request('GET', `/api/v1/runs/${runId}`)).body;
    return run.status === 'error' ? run : null;
  }, 20_000, 'the run to end');
  expect(ended.error).toMatchObject({ code: 'BUDGET_EXCEEDED' });
  expect(ended.transitions.map((t: { status: string }) => t.status)).toEqual(['queued', 'running', 'waiting_approval', 'running', 'error']);
});

test('the same run without a budget runs through: the agent (default) has none', async () => {
  const submitted = await stack.request('POST', '/api/v1/runs', { input: 'What is 2 + 2?' });
  const done = await eventually(async () => {
    const run = (await stack.request('GET', `/api/v1/runs/${submitted.body.runId}`)).body;
    return run.status === 'done' ? run : null;
  }, 20_000, 'the run to finish');
  expect(done.output.content).toContain('4');
  expect(done.budget).toBeNull();
});
