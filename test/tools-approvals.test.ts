import path from 'node:path';
import { toolCallsAskedAndAnswered } from './support/conversation';
import { startStack, eventually, type Stack } from './support/stack';
import type { Frame, WsClient } from './support/ws-client';

let stack: Stack;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml') } });
});
afterAll(async () => {
  await stack?.stop();
});

const note = (title: string) => ({ name: 'create_note', arguments: JSON.stringify({ title, body: `body of ${title}` }) });
const of = (type: string) => (f: Frame) => f.type === type;

async function notes(sessionId: string) {
  const { rows } = await stack.db.query('SELECT title FROM notes WHERE session_id = $1', [sessionId]);
  return rows.map((r) => r.title as string);
}

async function session(agentId = 'default') {
  const sessionId = await stack.createSession({ agentId });
  return { sessionId, ws: await stack.ws(sessionId) };
}

function lastModelRequestIsWellFormed(sessionId: string) {
  const { asked, answered } = toolCallsAskedAndAnswered(stack.model.requests(sessionId));
  expect(answered).toEqual(asked);
}

test('"What is 15 + 27?" runs calculator without approval and the reply contains 42', async () => {
  const { sessionId, ws } = await session();
  ws.send({ type: 'message', content: 'What is 15 + 27?' });
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data).toMatchObject({ status: 'completed' });
  expect(done.data.content).toContain('42');
  const call = ws.frames.find(of('tool.call'))!;
  expect(call.data).toMatchObject({ name: 'calculator', requiresApproval: false, arguments: { expression: '15 + 27' } });
  expect(ws.frames.some(of('approval.required'))).toBe(false);
  expect(ws.frames.find(of('tool.result'))!.data).toMatchObject({ status: 'succeeded', result: { result: 42 } });
  const { rows } = await stack.db.query('SELECT status, requires_approval FROM tool_calls WHERE session_id = $1', [sessionId]);
  expect(rows).toEqual([{ status: 'succeeded', requires_approval: false }]);
});

test('a write tool waits for approval; approved over WebSocket it runs once and its effect is stored', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [note('approved note')] });
  ws.send({ type: 'message', content: 'save a note' });
  const required = await ws.waitFor(of('approval.required'));
  expect(required.data).toMatchObject({ name: 'create_note', digest: expect.stringMatching(/^[0-9a-f]{64}$/) });
  expect(Date.parse(required.data.expiresAt)).toBeGreaterThan(Date.now() + 25 * 60_000);
  expect(await notes(sessionId)).toEqual([]);
  const pending = await stack.request('GET', '/api/v1/approvals?status=pending');
  expect(pending.body.approvals.map((a: { toolCallId: string }) => a.toolCallId)).toContain(required.data.toolCallId);

  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true, digest: required.data.digest });
  expect((await ws.waitFor(of('approval.accepted'))).data).toEqual({ toolCallId: required.data.toolCallId, outcome: 'approved' });
  expect((await ws.waitFor(of('approval.resolved'))).data).toMatchObject({ outcome: 'approved', decidedBy: 'dev' });
  expect((await ws.waitFor(of('tool.result'))).data).toMatchObject({ status: 'succeeded', result: { applied: 'now' } });
  await ws.waitFor(of('turn.done'));
  expect(await notes(sessionId)).toEqual(['approved note']);
  const { rows } = await stack.db.query('SELECT status, approval_outcome, decided_by, decided_at FROM tool_calls WHERE id = $1', [required.data.toolCallId]);
  expect(rows[0]).toMatchObject({ status: 'succeeded', approval_outcome: 'approved', decided_by: 'dev' });
  expect(rows[0].decided_at).not.toBeNull();
});

test('rejected with feedback: the tool never runs and the reply reflects the feedback', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [note('rejected note')] });
  ws.send({ type: 'message', content: 'save a note' });
  const required = await ws.waitFor(of('approval.required'));
  const res = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${required.data.toolCallId}`, { approved: false, feedback: 'not today', approver: 'alice' });
  expect(res.status).toBe(200);
  expect(res.body).toEqual({ toolCallId: required.data.toolCallId, outcome: 'rejected' });
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data.content).toContain('not today');
  expect(ws.frames.find(of('tool.result'))!.data).toMatchObject({ status: 'rejected' });
  expect(ws.frames.find(of('approval.resolved'))!.data).toMatchObject({ outcome: 'rejected', decidedBy: 'dev', feedback: 'not today' });
  expect(await notes(sessionId)).toEqual([]);

  const twice = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${required.data.toolCallId}`, { approved: true });
  expect([twice.status, twice.body.error.code]).toEqual([409, 'APPROVAL_ALREADY_DECIDED']);
  const unknown = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/tc_unknown`, { approved: true });
  expect([unknown.status, unknown.body.error.code]).toEqual([404, 'APPROVAL_NOT_FOUND']);
});

test('a decision with the wrong digest is refused and changes nothing; deciding twice answers 409', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [note('digest note')] });
  ws.send({ type: 'message', content: 'save a note' });
  const required = await ws.waitFor(of('approval.required'));
  const url = `/api/v1/sessions/${sessionId}/approvals/${required.data.toolCallId}`;
  const wrong = await stack.request('POST', url, { approved: true, digest: 'f'.repeat(64) });
  expect([wrong.status, wrong.body.error.code]).toEqual([409, 'APPROVAL_DIGEST_MISMATCH']);
  expect(await notes(sessionId)).toEqual([]);
  const ok = await stack.request('POST', url, { approved: true, digest: required.data.digest });
  expect(ok.status).toBe(200);
  const again = await stack.request('POST', url, { approved: true, digest: required.data.digest });
  expect([again.status, again.body.error.code]).toEqual([409, 'APPROVAL_ALREADY_DECIDED']);
  await ws.waitFor(of('turn.done'));
  expect(await notes(sessionId)).toEqual(['digest note']);
});

test('with a short TTL the approval expires: the tool never runs and the next message works', async () => {
  const { sessionId, ws } = await session('quick');
  stack.model.script(sessionId, { toolCalls: [note('expired note')] });
  ws.send({ type: 'message', content: 'save a note' });
  const required = await ws.waitFor(of('approval.required'));
  const resolved = await ws.waitFor(of('approval.resolved'), 10_000);
  expect(resolved.data).toMatchObject({ toolCallId: required.data.toolCallId, outcome: 'expired' });
  expect((await ws.waitFor(of('tool.result'))).data).toMatchObject({ status: 'expired' });
  await ws.waitFor(of('turn.done'));
  const late = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${required.data.toolCallId}`, { approved: true });
  expect([late.status, late.body.error.code]).toEqual([409, 'APPROVAL_EXPIRED']);
  expect(await notes(sessionId)).toEqual([]);

  ws.send({ type: 'message', content: 'still there?' });
  await ws.waitForCount(of('turn.done'), 2);
  expect(ws.frames.filter(of('turn.done'))[1]!.data.status).toBe('completed');
  lastModelRequestIsWellFormed(sessionId);
});

test('the worker is stopped while an approval is pending: after restart the approval still works, the write happens once', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [note('durable note')] });
  ws.send({ type: 'message', content: 'save a note' });
  const required = await ws.waitFor(of('approval.required'));
  await stack.killWorker('SIGTERM');
  await stack.startWorker();
  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
  await ws.waitFor((f) => f.type === 'approval.accepted' || f.type === 'error', 30_000);
  expect(ws.frames.find(of('error'))).toBeUndefined();
  await ws.waitFor(of('turn.done'), 30_000);
  expect(await notes(sessionId)).toEqual(['durable note']);
}, 60_000);

test('the worker dies after the side effect, before its receipt: the idempotent write is sent again with its key and applied once', async () => {
  const { sessionId, ws } = await session();
  // Holds the ledger's receipt, then fails it (a statement of a dead client may still commit): the
  // note is committed, its receipt never is, and the kill lands between them.
  await stack.db.query(`CREATE OR REPLACE FUNCTION stall() RETURNS trigger AS $$ BEGIN PERFORM pg_sleep(3); RAISE EXCEPTION 'receipt held by the test'; END $$ LANGUAGE plpgsql`);
  await stack.db.query(`CREATE TRIGGER stall_receipt BEFORE UPDATE ON effects FOR EACH ROW WHEN (NEW.status = 'done') EXECUTE FUNCTION stall()`);
  try {
    stack.model.script(sessionId, { toolCalls: [note('exactly once')] });
    ws.send({ type: 'message', content: 'save a note' });
    const required = await ws.waitFor(of('approval.required'));
    ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
    await eventually(async () => (await notes(sessionId)).length === 1, 20_000, 'the note');
    await stack.killWorker('SIGKILL');
  } finally {
    await stack.db.query('DROP TRIGGER IF EXISTS stall_receipt ON effects');
  }
  // The race was hit: the effect happened, its receipt did not.
  const { rows: atKill } = await stack.db.query('SELECT status FROM effects WHERE session_id = $1', [sessionId]);
  expect(atKill).toEqual([{ status: 'intent' }]);
  await stack.startWorker();
  await ws.waitFor(of('turn.done'), 40_000);
  expect(await notes(sessionId)).toEqual(['exactly once']);
  const results = ws.frames.filter(of('tool.result'));
  expect(results).toHaveLength(1);
  // create_note is idempotent: sent again with the same key, it found the note already saved.
  expect(results[0]!.data.result).toMatchObject({ applied: 'already' });
  const { rows } = await stack.db.query('SELECT status, attempts FROM effects WHERE session_id = $1', [sessionId]);
  expect(rows).toEqual([{ status: 'done', attempts: 2 }]);
}, 60_000);

export async function sendAndWait(ws: WsClient, content: string) {
  ws.send({ type: 'message', content });
  return ws.waitFor(of('turn.done'));
}

test('the offline demo model asks for create_note on "Save a note: …", as the README shows', async () => {
  const { sessionId, ws } = await session();
  ws.send({ type: 'message', content: 'Save a note: buy milk' });
  const required = await ws.waitFor(of('approval.required'));
  expect(required.data).toMatchObject({ name: 'create_note', arguments: { title: 'buy milk', body: 'buy milk' } });
  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
  await ws.waitFor(of('turn.done'));
  expect(await notes(sessionId)).toEqual(['buy milk']);
});

test('operators find a session waiting on an approval by its search attributes', async () => {
  const { Client, Connection } = await import('@temporalio/client');
  const connection = await Connection.connect({ address: stack.env.TEMPORAL_ADDRESS! });
  const client = new Client({ connection });
  try {
    const { sessionId, ws } = await session();
    stack.model.script(sessionId, { toolCalls: [note('operator note')] });
    ws.send({ type: 'message', content: 'save a note' });
    const required = await ws.waitFor(of('approval.required'));
    const find = async (query: string) => {
      const ids: string[] = [];
      for await (const w of client.workflow.list({ query: `WorkflowId = 'session-${sessionId}' AND ${query}` })) ids.push(w.workflowId);
      return ids.length > 0;
    };
    await eventually(() => find("KeelPendingApprovals > 0 AND KeelSessionStatus = 'active' AND KeelAgentId = 'default'"), 10_000, 'pending approval in visibility');
    ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
    await ws.waitFor(of('turn.done'));
    await eventually(() => find('KeelPendingApprovals = 0'), 10_000, 'approval cleared in visibility');
    const description = await client.workflow.getHandle(`session-${sessionId}`).describe();
    expect(await description.memo).toMatchObject({ title: '' });
    expect(description.typedSearchAttributes.get({ name: 'KeelOwner', type: 'KEYWORD' } as never)).toBe('dev');
  } finally {
    await connection.close();
  }
});
