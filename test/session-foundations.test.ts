import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { Client, Connection } from '@temporalio/client';
import { sessionWorkflowId } from '../contracts/ids';
import { SessionStatusKey } from '../contracts/search-attributes';
import { toolCallsAskedAndAnswered } from './support/conversation';
import { eventually, startStack, type Stack } from './support/stack';
import type { Frame } from './support/ws-client';

/**
 * The review's findings that need the whole deployment: content kept out of workflow state,
 * tools that tell the truth when cancelled, per-agent tool time-outs, provider errors, deletion,
 * resends, and a worker that drains on SIGTERM.
 */

const MAX_QUEUED = 6;
let stack: Stack;
let temporal: Client;
let hanging: http.Server;
const hangingRequests: { closed: Promise<void> }[] = [];
beforeAll(async () => {
  hanging = http.createServer((req) => {
    hangingRequests.push({ closed: new Promise((resolve) => req.socket.once('close', () => resolve())) });
  });
  await new Promise<void>((resolve) => hanging.listen(0, '127.0.0.1', resolve));
  const hangingPort = (hanging.address() as AddressInfo).port;
  stack = await startStack({
    env: {
      KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/foundations-agents.yaml'),
      KEEL_HTTP_ALLOW_HOSTS: `127.0.0.1:${hangingPort}`,
      KEEL_HTTP_TIMEOUT_MS: '10000',
      KEEL_SESSION_MAX_QUEUED: String(MAX_QUEUED),
      KEEL_CONTINUE_AS_NEW_EVENTS: '60',
      KEEL_RATE_MESSAGES_PER_SESSION: '100',
      KEEL_LLM_TIMEOUT_MS: '1500',
      KEEL_LLM_MAX_ATTEMPTS: '2',
    },
  });
  temporal = new Client({ connection: await Connection.connect({ address: process.env.KEEL_TEST_TEMPORAL_ADDRESS! }) });
  (globalThis as { hangingUrl?: string }).hangingUrl = `http://127.0.0.1:${hangingPort}/slow`;
});
afterAll(async () => {
  await stack?.stop();
  await temporal?.connection.close();
  hanging?.closeAllConnections();
  await new Promise((resolve) => hanging?.close(resolve));
});

const of = (type: string) => (f: Frame) => f.type === type;
const hangingUrl = () => (globalThis as { hangingUrl?: string }).hangingUrl!;

async function runsOf(sessionId: string) {
  const runs = [];
  for await (const run of temporal.workflow.list({ query: `WorkflowId = '${sessionWorkflowId(sessionId)}'` })) runs.push(run);
  return runs;
}

test('a queue of 10,000-character messages waiting on an approval continues-as-new with a small input, and every message is answered in order', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  stack.model.script(sessionId, { toolCalls: [{ name: 'create_note', arguments: JSON.stringify({ title: 't', body: 'b' }) }] });
  ws.send({ type: 'message', content: 'save a note', clientMessageId: 'first' });
  const required = await ws.waitFor(of('approval.required'));
  const big = (i: number) => `${i}:`.padEnd(10_000, String(i));
  for (let i = 1; i <= MAX_QUEUED; i++) {
    const res = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: big(i), clientMessageId: `big-${i}` });
    expect(res.status).toBe(202);
  }
  // One more than the queue holds: refused by the workflow and told over the socket.
  await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: big(99), clientMessageId: 'big-99' });
  const refused = await ws.waitFor((f) => f.type === 'error' && f.data.clientMessageId === 'big-99');
  expect(refused.data).toMatchObject({ code: 'SESSION_BUSY', recoverable: true });
  // /chat settles on the refusal at once rather than waiting out its time-out.
  const startedAt = Date.now();
  const chat = await stack.request('POST', `/api/v1/sessions/${sessionId}/chat`, { content: 'me too', clientMessageId: 'chat-busy' });
  expect([chat.status, chat.body.error.code]).toEqual([409, 'SESSION_BUSY']);
  expect(Date.now() - startedAt).toBeLessThan(10_000);

  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved: true });
  await ws.waitForCount(of('turn.done'), 1 + MAX_QUEUED, 60_000);
  const users = stack.model.requests(sessionId).at(-1)!.body.messages.filter((m: { role: string }) => m.role === 'user').map((m: { content: string }) => m.content);
  expect(users).toEqual(['save a note', ...Array.from({ length: MAX_QUEUED }, (_, i) => big(i + 1))]);

  const runs = await eventually(async () => {
    const found = await runsOf(sessionId);
    return found.length > 1 && found;
  }, 20_000, 'a continued run');
  let carriedQueue = 0;
  for (const run of runs) {
    const history = await temporal.workflow.getHandle(run.workflowId, run.runId).fetchHistory();
    for (const event of history.events ?? []) {
      const continued = event.workflowExecutionContinuedAsNewEventAttributes?.input?.payloads?.[0]?.data;
      if (continued) carriedQueue = Math.max(carriedQueue, JSON.parse(Buffer.from(continued).toString()).resume.queue.length);
      const payloads = event.workflowExecutionStartedEventAttributes?.input?.payloads ?? event.workflowExecutionContinuedAsNewEventAttributes?.input?.payloads ?? event.workflowExecutionSignaledEventAttributes?.input?.payloads ?? [];
      const bytes = payloads.reduce((n, p) => n + (p.data?.length ?? 0), 0);
      // The queue held 60 KB of messages; the workflow's input and signals carry IDs only.
      expect(bytes).toBeLessThan(8_192);
    }
  }
  // At least one continue-as-new happened with messages still waiting in the queue.
  expect(carriedQueue).toBeGreaterThan(0);
}, 90_000);

test('cancel while a tool runs: the tool is stopped and recorded as stopped while running, never as "did not run"', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  const before = hangingRequests.length;
  stack.model.script(sessionId, { toolCalls: [{ name: 'http_request', arguments: JSON.stringify({ url: hangingUrl() }) }] });
  ws.send({ type: 'message', content: 'fetch it' });
  const call = await ws.waitFor(of('tool.call'));
  await eventually(async () => hangingRequests.length > before, 10_000, 'the request to reach the server');
  const cancel = await stack.request('POST', `/api/v1/sessions/${sessionId}/cancel`, { turn: 1 });
  expect([cancel.status, cancel.body]).toEqual([200, { cancelled: true, turn: 1 }]);
  // The tool's connection was really closed: it was stopped, not left running.
  await hangingRequests[before]!.closed;
  const result = await ws.waitFor(of('tool.result'));
  expect(result.data).toMatchObject({ toolCallId: call.data.toolCallId, status: 'cancelled', ran: true });
  expect((await ws.waitFor(of('turn.done'))).data).toMatchObject({ status: 'cancelled', cancelledBy: 'dev' });
  const { rows } = await stack.db.query("SELECT content FROM messages WHERE session_id = $1 AND role = 'tool'", [sessionId]);
  expect(rows.map((r) => r.content)).toEqual(['Cancelled while running: the tool was stopped before it finished, and its result is unknown.']);
  const status = await stack.db.query('SELECT status FROM tool_calls WHERE id = $1', [call.data.toolCallId]);
  expect(status.rows[0].status).toBe('cancelled');
  // The conversation stays well formed for the next turn.
  ws.send({ type: 'message', content: 'next' });
  await ws.waitForCount(of('turn.done'), 2);
  const { asked, answered } = toolCallsAskedAndAnswered(stack.model.requests(sessionId));
  expect(answered).toEqual(asked);
}, 40_000);

test("an agent's per-tool timeoutMs bounds the tool at run time", async () => {
  const sessionId = await stack.createSession({ agentId: 'tight' });
  const ws = await stack.ws(sessionId);
  stack.model.script(sessionId, { toolCalls: [{ name: 'http_request', arguments: JSON.stringify({ url: hangingUrl() }) }] });
  ws.send({ type: 'message', content: 'fetch it' });
  const call = await ws.waitFor(of('tool.call'));
  const result = await ws.waitFor(of('tool.result'), 15_000);
  expect(result.data).toMatchObject({ status: 'failed', error: { code: 'TOOL_TIMEOUT' } });
  // Four attempts of 800 ms (the agent's policy) and their back-off (0.2, 0.4, 0.8 s): under 8 s,
  // where one attempt bounded by KEEL_HTTP_TIMEOUT_MS alone would take 10 s.
  const { rows } = await stack.db.query("SELECT (max(created_at) - min(created_at)) AS took FROM session_events WHERE session_id = $1 AND type IN ('tool.call', 'tool.result')", [sessionId]);
  expect(rows[0].took.seconds ?? 0).toBeLessThan(8);
  expect(call.data.name).toBe('http_request');
}, 30_000);

test('a provider 401 fails the turn with LLM_AUTH_ERROR, not recoverable and not retried', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { failNext: { count: 1, status: 401 } });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'hi' });
  const error = await ws.waitFor(of('error'));
  expect(error.data).toMatchObject({ code: 'LLM_AUTH_ERROR', recoverable: false, turn: 1 });
  expect(stack.model.requests(sessionId)).toHaveLength(1);
});

test('a model that hangs ends the turn with LLM_TIMEOUT after the configured attempts', async () => {
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { hangNext: 5 });
  const ws = await stack.ws(sessionId);
  ws.send({ type: 'message', content: 'hello?' });
  const error = await ws.waitFor(of('error'), 20_000);
  expect(error.data).toMatchObject({ code: 'LLM_TIMEOUT', recoverable: true });
  expect((await ws.waitFor(of('turn.done'))).data.status).toBe('failed');
  expect(ws.frames.filter(of('stream.start')).map((f) => f.data.attempt)).toEqual([1, 2]);
}, 30_000);

test('deleting a session with a pending approval: gone from the approvals list, workflow ended, search attributes say deleted', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  stack.model.script(sessionId, { toolCalls: [{ name: 'create_note', arguments: JSON.stringify({ title: 'x', body: 'y' }) }] });
  ws.send({ type: 'message', content: 'save' });
  const required = await ws.waitFor(of('approval.required'));
  const listed = await stack.request('GET', '/api/v1/approvals');
  expect(listed.body.approvals.map((a: { toolCallId: string }) => a.toolCallId)).toContain(required.data.toolCallId);

  const chat = stack.request('POST', `/api/v1/sessions/${sessionId}/chat`, { content: 'queued behind the approval' });
  await ws.waitFor((f) => f.type === 'message.accepted' && f.data.content === 'queued behind the approval');
  expect((await stack.request('DELETE', `/api/v1/sessions/${sessionId}`)).status).toBe(204);
  // Every open stream of the session ends: its last event, then 4004; a waiting /chat answers 404.
  expect((await ws.waitFor(of('session.deleted'))).data).toEqual({ deletedBy: 'dev' });
  expect(await ws.closed).toMatchObject({ code: 4004 });
  const chatAnswer = await chat;
  expect([chatAnswer.status, chatAnswer.body.error.code]).toEqual([404, 'SESSION_NOT_FOUND']);
  const after = await stack.request('GET', '/api/v1/approvals');
  expect(after.body.approvals.map((a: { toolCallId: string }) => a.toolCallId)).not.toContain(required.data.toolCallId);
  const handle = temporal.workflow.getHandle(sessionWorkflowId(sessionId));
  expect(await handle.result()).toEqual({ status: 'deleted' });
  expect((await handle.describe()).typedSearchAttributes.get(SessionStatusKey)).toBe('deleted');
  const { rows } = await stack.db.query('SELECT status, approval_outcome FROM tool_calls WHERE id = $1', [required.data.toolCallId]);
  expect(rows[0]).toEqual({ status: 'cancelled', approval_outcome: 'cancelled' });
});

test('a resend of an answered message is answered from the store and never becomes a new turn', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  const first = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'once', clientMessageId: 'same' });
  await ws.waitFor(of('turn.done'));
  const again = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'once, again', clientMessageId: 'same' });
  expect([again.status, again.body.messageId]).toEqual([202, first.body.messageId]);
  await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'fresh', clientMessageId: 'other' });
  await ws.waitForCount(of('turn.done'), 2);
  expect(ws.frames.filter(of('message.accepted')).map((f) => f.data.content)).toEqual(['once', 'fresh']);
  expect(stack.model.requests(sessionId).map((r) => r.body.messages.at(-1).content)).toEqual(['once', 'fresh']);
  // The resend never reached the workflow: beyond its de-duplication window it would be a new turn.
  const history = await temporal.workflow.getHandle(sessionWorkflowId(sessionId)).fetchHistory();
  expect(history.events!.filter((e) => e.workflowExecutionSignaledEventAttributes?.signalName === 'userMessage')).toHaveLength(2);
});

test('a worker stopped with SIGTERM lets the reply in progress finish instead of restarting it', async () => {
  const sessionId = await stack.createSession();
  const ws = await stack.ws(sessionId);
  const reply = Array.from({ length: 30 }, (_, i) => `w${i}`).join(' ');
  stack.model.script(sessionId, { reply, tokenDelayMs: 60 });
  ws.send({ type: 'message', content: 'talk slowly' });
  await ws.waitForCount(of('stream.delta'), 2);
  const stopped = stack.killWorker('SIGTERM');
  await stopped;
  await stack.startWorker();
  const done = await ws.waitFor(of('turn.done'), 30_000);
  expect(done.data).toMatchObject({ status: 'completed', content: reply });
  expect(ws.frames.filter(of('stream.start')).map((f) => f.data.attempt)).toEqual([1]);
}, 60_000);
