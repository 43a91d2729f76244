import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { toolCallsAskedAndAnswered } from './support/conversation';
import { startStack, type Stack } from './support/stack';
import type { Frame } from './support/ws-client';

let stack: Stack;
let hanging: http.Server;
let hangingPort: number;
beforeAll(async () => {
  hanging = http.createServer(() => undefined);
  await new Promise<void>((resolve) => hanging.listen(0, '127.0.0.1', resolve));
  hangingPort = (hanging.address() as AddressInfo).port;
  stack = await startStack({
    env: {
      KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml'),
      KEEL_HTTP_ALLOW_HOSTS: `127.0.0.1:${hangingPort}`,
      KEEL_HTTP_TIMEOUT_MS: '300',
    },
  });
});
afterAll(async () => {
  await stack?.stop();
  hanging?.closeAllConnections();
  await new Promise((resolve) => hanging?.close(resolve));
});

const of = (type: string) => (f: Frame) => f.type === type;
const call = (name: string, args: object) => ({ name, arguments: JSON.stringify(args) });
const note = (title: string) => call('create_note', { title, body: 'b' });

async function session(agentId = 'default') {
  const sessionId = await stack.createSession({ agentId });
  return { sessionId, ws: await stack.ws(sessionId) };
}

function wellFormed(sessionId: string) {
  const { asked, answered } = toolCallsAskedAndAnswered(stack.model.requests(sessionId));
  expect(answered).toEqual(asked);
}

test('two tool calls in one model response both run and both results reach the model', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [call('calculator', { expression: '2 * 21' }), call('current_time', { timezone: 'UTC' })] });
  ws.send({ type: 'message', content: 'two things' });
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data.status).toBe('completed');
  const results = ws.frames.filter(of('tool.result'));
  expect(results.map((r) => [r.data.name, r.data.status]).sort()).toEqual([
    ['calculator', 'succeeded'],
    ['current_time', 'succeeded'],
  ]);
  expect(done.data.content).toContain('42');
  wellFormed(sessionId);
});

test('a tool that fails reports TOOL_EXECUTION_ERROR to the model and the turn goes on', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [call('calculator', { expression: '1 / 0' })] });
  ws.send({ type: 'message', content: 'divide' });
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data.status).toBe('completed');
  expect(ws.frames.find(of('tool.result'))!.data).toMatchObject({ status: 'failed', error: { code: 'TOOL_EXECUTION_ERROR' } });
  wellFormed(sessionId);
});

test('an unknown tool reports TOOL_NOT_FOUND; a refused http_request reports TOOL_PERMISSION_DENIED', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [call('launch_rockets', {}), call('http_request', { url: 'http://169.254.169.254/latest/meta-data' })] });
  ws.send({ type: 'message', content: 'do it' });
  await ws.waitFor(of('turn.done'));
  const byName = Object.fromEntries(ws.frames.filter(of('tool.result')).map((r) => [r.data.name, r.data]));
  expect(byName.launch_rockets).toMatchObject({ status: 'failed', error: { code: 'TOOL_NOT_FOUND' } });
  expect(byName.http_request).toMatchObject({ status: 'failed', error: { code: 'TOOL_PERMISSION_DENIED' } });
  wellFormed(sessionId);
});

test('a tool that times out reports TOOL_TIMEOUT', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [call('http_request', { url: `http://127.0.0.1:${hangingPort}/slow` })] });
  ws.send({ type: 'message', content: 'fetch it' });
  const done = await ws.waitFor(of('turn.done'), 30_000);
  expect(done.data.status).toBe('completed');
  expect(ws.frames.find(of('tool.result'))!.data).toMatchObject({ status: 'failed', error: { code: 'TOOL_TIMEOUT' } });
  wellFormed(sessionId);
}, 40_000);

test('the per-turn step limit stops the loop with a clear error and a well-formed conversation', async () => {
  const { sessionId, ws } = await session('stepper');
  ws.send({ type: 'message', content: 'What is 6 * 7?' });
  const error = await ws.waitFor(of('error'));
  expect(error.data).toMatchObject({ code: 'STEP_LIMIT_REACHED', recoverable: true });
  expect((await ws.waitFor(of('turn.done'))).data.status).toBe('failed');
  ws.send({ type: 'message', content: 'thanks' });
  await ws.waitForCount(of('turn.done'), 2);
  wellFormed(sessionId);
});

test('queue: a message sent while an approval is pending is answered after it', async () => {
  const { sessionId, ws } = await session('default');
  stack.model.script(sessionId, { toolCalls: [note('queued')] });
  ws.send({ type: 'message', content: 'save it' });
  const required = await ws.waitFor(of('approval.required'));
  ws.send({ type: 'message', content: 'and then this' });
  await ws.waitForCount(of('message.accepted'), 2);
  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
  const dones = await ws.waitForCount(of('turn.done'), 2);
  expect(dones.map((d) => d.data.status)).toEqual(['completed', 'completed']);
  expect(dones[1]!.data.content).toContain('and then this');
});

test('interrupt: a new message cancels the pending approval and is answered', async () => {
  const { sessionId, ws } = await session('interrupter');
  stack.model.script(sessionId, { toolCalls: [note('interrupted')] });
  ws.send({ type: 'message', content: 'save it' });
  await ws.waitFor(of('approval.required'));
  ws.send({ type: 'message', content: 'never mind' });
  const resolved = await ws.waitFor(of('approval.resolved'));
  expect(resolved.data.outcome).toBe('cancelled');
  const dones = await ws.waitForCount(of('turn.done'), 2);
  expect(dones.map((d) => d.data.status)).toEqual(['cancelled', 'completed']);
  expect(ws.frames.find(of('tool.result'))!.data.status).toBe('cancelled');
  const { rows } = await stack.db.query('SELECT count(*)::int AS n FROM notes WHERE session_id = $1', [sessionId]);
  expect(rows[0].n).toBe(0);
  wellFormed(sessionId);
});

test('reject: a message sent while busy is refused with SESSION_BUSY and nothing changes', async () => {
  const { sessionId, ws } = await session('strict');
  stack.model.script(sessionId, { toolCalls: [note('strict')] });
  ws.send({ type: 'message', content: 'save it' });
  const required = await ws.waitFor(of('approval.required'));
  ws.send({ type: 'message', content: 'hello?', clientMessageId: 'busy-1' });
  const refused = await ws.waitFor(of('error'));
  expect(refused.data).toMatchObject({ code: 'SESSION_BUSY', clientMessageId: 'busy-1' });
  const rest = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'rest too' });
  expect([rest.status, rest.body.error.code]).toEqual([409, 'SESSION_BUSY']);
  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
  await ws.waitFor(of('turn.done'));
  // The next turn's conversation proves the refused messages never became part of it.
  ws.send({ type: 'message', content: 'now then', clientMessageId: 'after-1' });
  await ws.waitForCount(of('turn.done'), 2);
  const last = stack.model.requests(sessionId).at(-1)!.body.messages as { role: string; content: string }[];
  expect(last.filter((m) => m.role === 'user').map((m) => m.content)).toEqual(['save it', 'now then']);
  expect(ws.frames.filter(of('message.accepted')).map((f) => f.data.content)).toEqual(['save it', 'now then']);
  // The refused resend is refused again (a new event, so the sender hears it), then taken once the session is idle.
  ws.send({ type: 'message', content: 'hello?', clientMessageId: 'busy-1' });
  await ws.waitForCount(of('turn.done'), 3);
  expect(ws.frames.filter(of('message.accepted')).map((f) => f.data.clientMessageId)).toEqual([undefined, 'after-1', 'busy-1']);
});

test('ordered actions (the default with a tool that needs approval): a call waits for the approval before it; a rejection skips the rest', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [note('first'), call('calculator', { expression: '2 + 2' }), note('third')] });
  ws.send({ type: 'message', content: 'three things' });
  const required = await ws.waitForCount(of('approval.required'), 2);
  // Both approvals are announced with the step, but nothing after the first call has run.
  expect(ws.frames.some(of('tool.result'))).toBe(false);
  // Deciding the later one first is kept: it runs (or not) in its turn.
  ws.send({ type: 'approval', toolCallId: required[1]!.data.toolCallId, approved: true });
  await ws.waitFor((f) => f.type === 'approval.accepted' && f.data.toolCallId === required[1]!.data.toolCallId);
  expect(ws.frames.some(of('tool.result'))).toBe(false);
  ws.send({ type: 'approval', toolCallId: required[0]!.data.toolCallId, approved: false, feedback: 'not now' });
  const done = await ws.waitFor(of('turn.done'));
  expect(ws.frames.filter(of('tool.result')).map((r) => [r.data.name, r.data.status])).toEqual([
    ['create_note', 'rejected'],
    ['calculator', 'skipped'],
    ['create_note', 'skipped'],
  ]);
  expect(done.data.content).toMatch(/^The action was not performed/);
  expect(await stack.db.query('SELECT title FROM notes WHERE session_id = $1', [sessionId]).then((r) => r.rows)).toEqual([]);
  wellFormed(sessionId);
});

test('a cancel while an ordered step waits keeps the decision already taken on a later call', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [note('first'), note('second')] });
  ws.send({ type: 'message', content: 'two notes' });
  const required = await ws.waitForCount(of('approval.required'), 2);
  ws.send({ type: 'approval', toolCallId: required[1]!.data.toolCallId, approved: true });
  await ws.waitFor((f) => f.type === 'approval.accepted' && f.data.toolCallId === required[1]!.data.toolCallId);
  ws.send({ type: 'cancel' });
  expect((await ws.waitFor(of('turn.done'))).data.status).toBe('cancelled');
  const resolved = Object.fromEntries(ws.frames.filter(of('approval.resolved')).map((f) => [f.data.toolCallId, [f.data.outcome, f.data.decidedBy]]));
  expect(resolved).toEqual({ [required[0]!.data.toolCallId]: ['cancelled', null], [required[1]!.data.toolCallId]: ['approved', 'dev'] });
  // Neither ran: the approved one was behind the first.
  expect(ws.frames.filter(of('tool.result')).map((r) => [r.data.name, r.data.status, r.data.ran])).toEqual([
    ['create_note', 'cancelled', false],
    ['create_note', 'cancelled', false],
  ]);
  wellFormed(sessionId);
});

test('ordered actions run one after another in the model\'s order once approved', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [note('one'), call('calculator', { expression: '3 + 4' })] });
  ws.send({ type: 'message', content: 'two things' });
  const required = await ws.waitFor(of('approval.required'));
  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
  await ws.waitFor(of('turn.done'));
  expect(ws.frames.filter(of('tool.result')).map((r) => [r.data.name, r.data.status])).toEqual([
    ['create_note', 'succeeded'],
    ['calculator', 'succeeded'],
  ]);
  wellFormed(sessionId);
});

test('a rejected call among two parallel calls (toolExecution: parallel) leaves a conversation the model accepts', async () => {
  const { sessionId, ws } = await session('parallel');
  stack.model.script(sessionId, { toolCalls: [note('parallel'), call('calculator', { expression: '1 + 1' })] });
  ws.send({ type: 'message', content: 'both' });
  const required = await ws.waitFor(of('approval.required'));
  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: false, feedback: 'no notes' });
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data.status).toBe('completed');
  const statuses = ws.frames.filter(of('tool.result')).map((r) => [r.data.name, r.data.status]).sort();
  expect(statuses).toEqual([
    ['calculator', 'succeeded'],
    ['create_note', 'rejected'],
  ]);
  wellFormed(sessionId);
});

test('a cancel frame cancels the turn in progress and resolves its approval as cancelled', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { toolCalls: [note('cancelled')] });
  ws.send({ type: 'message', content: 'save it' });
  await ws.waitFor(of('approval.required'));
  ws.send({ type: 'cancel' });
  expect((await ws.waitFor(of('approval.resolved'))).data.outcome).toBe('cancelled');
  expect((await ws.waitFor(of('turn.done'))).data.status).toBe('cancelled');
  ws.send({ type: 'message', content: 'next' });
  await ws.waitForCount(of('turn.done'), 2);
  wellFormed(sessionId);
  // Turn 2 has answered: a cancel now cancels nothing, and says so.
  const cancelRest = await stack.request('POST', `/api/v1/sessions/${sessionId}/cancel`);
  expect([cancelRest.status, cancelRest.body.cancelled]).toEqual([200, false]);
  const turnDone = ws.frames.filter(of('turn.done'));
  expect(turnDone[0]!.data).toMatchObject({ status: 'cancelled', cancelledBy: 'dev' });
});

test('GET /agents lists the agents with their tools and policies', async () => {
  const res = await stack.request('GET', '/api/v1/agents');
  expect(res.status).toBe(200);
  const byId = Object.fromEntries(res.body.agents.map((a: { id: string }) => [a.id, a]));
  expect(byId.strict.busyPolicy).toBe('reject');
  expect(byId.default.tools.find((t: { name: string }) => t.name === 'create_note')).toMatchObject({ permission: 'write', requiresApproval: true });
  const bad = await stack.request('POST', '/api/v1/sessions', { agentId: 'nobody' });
  expect([bad.status, bad.body.error.code]).toEqual([404, 'AGENT_NOT_FOUND']);
});

test('interrupt while the model is streaming: the turn stops, the new message is answered', async () => {
  const { sessionId, ws } = await session('interrupter');
  stack.model.script(sessionId, { reply: Array.from({ length: 60 }, (_, i) => `w${i}`).join(' '), tokenDelayMs: 50 });
  ws.send({ type: 'message', content: 'talk for a while' });
  await ws.waitForCount(of('stream.delta'), 2);
  ws.send({ type: 'message', content: 'stop and answer this' });
  const dones = await ws.waitForCount(of('turn.done'), 2, 30_000);
  expect(dones.map((d) => d.data.status)).toEqual(['cancelled', 'completed']);
  expect(dones[1]!.data.content).toMatch(/^w0 w1/);
  const { rows } = await stack.db.query("SELECT turn FROM messages WHERE session_id = $1 AND role = 'assistant'", [sessionId]);
  expect(rows.map((r) => r.turn)).toEqual([2]);
}, 40_000);
