import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { toolCallsAskedAndAnswered } from './support/conversation';
import { startStack, type Stack } from './support/stack';
import type { Frame, WsClient } from './support/ws-client';
import { webhookSignature } from '../notify/signature';
import { WEBHOOK_HEADERS } from '../contracts/webhooks';

const SECRET = 'router-test-secret';

/** A local escalation receiver: fails the first `failFirst` posts with 500, then answers 200. */
class Receiver {
  readonly posts: { body: string; headers: IncomingMessage['headers']; at: number }[] = [];
  failFirst = 0;
  private server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      this.posts.push({ body, headers: req.headers, at: Date.now() });
      res.statusCode = this.posts.length <= this.failFirst ? 500 : 200;
      res.end('{}');
    });
  });
  async start(): Promise<number> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return (this.server.address() as AddressInfo).port;
  }
  stop(): Promise<void> {
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

let stack: Stack;
const receiver = new Receiver();
beforeAll(async () => {
  const port = await receiver.start();
  stack = await startStack({
    env: {
      KEEL_TEMPLATE: 'ecommerce',
      KEEL_ESCALATION_WEBHOOK_URL: `http://127.0.0.1:${port}/escalations`,
      KEEL_ESCALATION_WEBHOOK_SECRET: SECRET,
      KEEL_WEBHOOK_ALLOW_HOSTS: `127.0.0.1:${port}`,
      KEEL_ESCALATION_BACKOFF_MS: '100',
    },
  });
  admin = { authorization: `Bearer ${await stack.issueToken('ops-sam', true)}` };
});
afterAll(async () => {
  await stack?.stop();
  await receiver.stop();
});

const of = (type: string) => (f: Frame) => f.type === type;
let admin: Record<string, string>;

async function session() {
  // The template's router is the deployment's default: sessions naming no agent get it.
  const sessionId = await stack.createSession();
  return { sessionId, ws: await stack.ws(sessionId) };
}

async function events(sessionId: string): Promise<{ type: string; data: any }[]> {
  const { rows } = await stack.db.query('SELECT type, data FROM session_events WHERE session_id = $1 ORDER BY seq', [sessionId]);
  return rows;
}

function wellFormed(sessionId: string) {
  const { asked, answered } = toolCallsAskedAndAnswered(stack.model.requests(sessionId));
  expect(answered).toEqual(asked);
}

const classifierRequests = (sessionId: string) => stack.model.requests(sessionId).filter((r) => (r.body as { response_format?: unknown }).response_format !== undefined);

async function approve(ws: WsClient, name: string, approved: boolean) {
  const required = await ws.waitFor((f) => f.type === 'approval.required' && f.data.name === name);
  ws.send({ type: 'approval', toolCallId: required.data.toolCallId, approved, digest: required.data.digest });
  return required;
}

test('"where is order 1001" goes to order_lookup, whose read tool runs at once; its first answer opens with its greeting', async () => {
  const { sessionId, ws } = await session();
  ws.send({ type: 'message', content: 'Where is order 1001?' });
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data).toMatchObject({ status: 'completed', agent: 'order_lookup' });
  expect(ws.frames.find(of('route.decided'))!.data).toMatchObject({ router: 'support', chosen: ['order_lookup'], outcome: 'agents', attempts: 1 });
  expect(ws.frames.find(of('agent.started'))!.data).toMatchObject({ agent: 'order_lookup', reason: 'route', index: 1 });
  expect(ws.frames.find(of('tool.call'))!.data).toMatchObject({ name: 'get_order_status', requiresApproval: false, arguments: { order_id: '1001' } });
  expect(ws.frames.some(of('approval.required'))).toBe(false);
  // The greeting opens the agent's first answer (here the reply that asks for the tool), streamed first.
  const replies = ws.frames.filter(of('stream.end')).map((f) => f.data.content as string);
  expect(replies[0]).toMatch(/^Hi! I can check on your order for you\./);
  expect(done.data.content).toContain('"status":"paid"');

  // The greeting comes once per agent and session.
  ws.send({ type: 'message', content: 'And where is order 1002?' });
  await ws.waitForCount(of('turn.done'), 2);
  const all = ws.frames.filter(of('stream.end')).map((f) => f.data.content as string);
  expect(all.slice(2).join(' ')).not.toContain('Hi! I can check');
  wellFormed(sessionId);
});

test('"cancel order 1004 and a 10 % off coupon": two intents in order, each write waits for its approval', async () => {
  const { sessionId, ws } = await session();
  ws.send({ type: 'message', content: 'Please cancel order 1004 and send me a coupon for 10 % off' });
  const route = await ws.waitFor(of('route.decided'));
  expect(route.data.chosen).toEqual(['order_actions', 'discount']);
  await approve(ws, 'cancel_order', true);
  await ws.waitFor((f) => f.type === 'tool.result' && f.data.name === 'cancel_order');
  // The second agent starts only once the first is done, and its write waits for its own approval.
  const started = await ws.waitForCount(of('agent.started'), 2);
  expect(started.map((f) => f.data.agent)).toEqual(['order_actions', 'discount']);
  await approve(ws, 'generate_coupon', true);
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data).toMatchObject({ status: 'completed', agent: 'discount' });
  const results = ws.frames.filter(of('tool.result')).map((f) => [f.data.name, f.data.status]);
  expect(results).toEqual([
    ['cancel_order', 'succeeded'],
    ['generate_coupon', 'succeeded'],
  ]);
  const { rows } = await stack.db.query("SELECT status FROM demo_orders WHERE id = '1004'");
  expect(rows[0].status).toBe('cancelled');
  const coupon = ws.frames.find((f) => f.type === 'tool.result' && f.data.name === 'generate_coupon')!.data.result;
  expect(JSON.stringify(coupon)).toMatch(/SAVE10-[0-9A-F]{8}/);
  wellFormed(sessionId);
});

test('rejecting the first action skips the second, and the user is told', async () => {
  const { sessionId, ws } = await session();
  ws.send({ type: 'message', content: 'Cancel order 1006 and give me 20 % off' });
  await approve(ws, 'cancel_order', false);
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data.status).toBe('completed');
  expect(done.data.content).toMatch(/rejected/);
  expect(done.data.content).toMatch(/skipped: discount/);
  expect(ws.frames.filter(of('agent.started')).map((f) => f.data.agent)).toEqual(['order_actions']);
  expect(ws.frames.some((f) => f.type === 'tool.call' && f.data.name === 'apply_discount')).toBe(false);
  const { rows } = await stack.db.query("SELECT status FROM demo_orders WHERE id = '1006'");
  expect(rows[0].status).toBe('paid');
  wellFormed(sessionId);
});

test('an ambiguous message gets a clarification question and no agent runs', async () => {
  const { sessionId, ws } = await session();
  ws.send({ type: 'message', content: 'Hello there' });
  const done = await ws.waitFor(of('turn.done'));
  const clarification = ws.frames.find(of('clarification'))!;
  expect(clarification.data).toMatchObject({ reason: 'ambiguous' });
  expect(done.data.content).toBe(clarification.data.question);
  expect(ws.frames.some(of('agent.started'))).toBe(false);
  expect(ws.frames.some(of('stream.start'))).toBe(false);
  expect((await events(sessionId)).filter((e) => e.type === 'route.decided').map((e) => e.data.outcome)).toEqual(['clarification']);
});

test('a classifier that answers garbage twice: asked twice, then the user is asked to rephrase', async () => {
  const { sessionId, ws } = await session();
  stack.model.script(sessionId, { reply: 'this is not JSON at all' });
  ws.send({ type: 'message', content: 'Where is order 1001?' });
  const done = await ws.waitFor(of('turn.done'));
  expect(ws.frames.find(of('route.decided'))!.data).toMatchObject({ outcome: 'rephrase', attempts: 2, chosen: [] });
  expect(ws.frames.find(of('clarification'))!.data).toMatchObject({ reason: 'unreadable' });
  expect(done.data.content).toMatch(/say it again/);
  expect(classifierRequests(sessionId)).toHaveLength(2);
  expect(ws.frames.some(of('agent.started'))).toBe(false);
});

test('a handoff keeps the context: the second agent\'s model request holds the first agent\'s turn', async () => {
  const { sessionId, ws } = await session();
  ws.send({ type: 'message', content: 'Where is order 1002? Actually, hand me over to discount' });
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data).toMatchObject({ status: 'completed', agent: 'discount' });
  const handoff = ws.frames.find(of('agent.handoff'))!;
  expect(handoff.data).toMatchObject({ from: 'order_lookup', to: 'discount' });
  expect(ws.frames.filter(of('agent.started')).map((f) => [f.data.agent, f.data.reason])).toEqual([
    ['order_lookup', 'route'],
    ['discount', 'handoff'],
  ]);
  const agentRequests = stack.model.requests(sessionId).filter((r) => (r.body as { response_format?: unknown }).response_format === undefined);
  const last = agentRequests.at(-1)!.body as { messages: { role: string; content: string | null; tool_calls?: { function: { name: string } }[] }[] };
  // The discount agent's own prompt, then the whole conversation including order_lookup's part.
  expect(last.messages[0]!.content).toContain('You handle discounts');
  const firstAgentTurn = last.messages.find((m) => m.role === 'assistant' && m.tool_calls?.some((c) => c.function.name === 'handoff'));
  expect(firstAgentTurn?.content).toContain('Hi! I can check on your order for you.');
  expect(last.messages.some((m) => m.role === 'tool' && (m.content ?? '').includes('"handedOffTo":"discount"'))).toBe(true);
  wellFormed(sessionId);
});

test('asking for a person escalates: the webhook fails twice, then succeeds on the third attempt, signed; operators take over and hand back', async () => {
  receiver.failFirst = 2;
  receiver.posts.length = 0;
  const { sessionId, ws } = await session();
  ws.send({ type: 'message', content: 'I want to talk to a human please' });
  const escalated = await ws.waitFor(of('session.escalated'));
  expect(escalated.data).toMatchObject({ source: 'classifier', agent: null });
  const done = await ws.waitFor(of('turn.done'));
  expect(done.data.content).toMatch(/passing this conversation to a member of our team/);
  const delivered = await ws.waitFor(of('escalation.delivered'));
  expect(delivered.data).toMatchObject({ success: true, statusCode: 200, attempts: 3, error: null });
  expect(receiver.posts).toHaveLength(3);
  const post = receiver.posts[2]!;
  const payload = JSON.parse(post.body);
  expect(payload).toMatchObject({ sessionId, reason: expect.any(String), conversationSummary: expect.stringContaining('talk to a human') });
  const timestamp = Number(post.headers[WEBHOOK_HEADERS.timestamp]);
  expect(post.headers[WEBHOOK_HEADERS.signature]).toBe(webhookSignature(SECRET, timestamp, post.body));
  const { rows } = await stack.db.query('SELECT success, attempts, status_code FROM escalations WHERE session_id = $1', [sessionId]);
  expect(rows).toEqual([{ success: true, attempts: 3, status_code: 200 }]);

  // Agents stay silent while a person has the conversation.
  ws.send({ type: 'message', content: 'Where is order 1001?' });
  const held = await ws.waitForCount(of('turn.done'), 2);
  expect(held[1]!.data).toMatchObject({ status: 'completed', awaitingOperator: true, content: null });
  expect(classifierRequests(sessionId)).toHaveLength(1);

  const wrote = await stack.request('POST', `/api/v1/sessions/${sessionId}/operator-messages`, { content: 'Hi, this is Sam from support.' }, admin);
  expect(wrote.status).toBe(201);
  expect((await ws.waitFor(of('operator.message'))).data).toMatchObject({ content: 'Hi, this is Sam from support.' });

  const back = await stack.request('POST', `/api/v1/sessions/${sessionId}/hand-back`, {}, admin);
  expect(back.status).toBeLessThan(300);
  await ws.waitFor(of('session.handed_back'));
  // The hand-back signal reached the session before this message's (the API sends both, in order).
  ws.send({ type: 'message', content: 'Where is order 1003?' });
  const answered = await ws.waitForCount(of('turn.done'), 3);
  expect(answered[2]!.data).toMatchObject({ status: 'completed', agent: 'order_lookup' });
  // The agent reads what the operator wrote.
  const lastRequest = stack.model.requests(sessionId).at(-1)!.body as { messages: { content: string | null }[] };
  expect(lastRequest.messages.some((m) => (m.content ?? '').includes('Hi, this is Sam from support.'))).toBe(true);
});

test('worker killed between routing and the specialist\'s answer: one route.decided, one answer', async () => {
  const { sessionId, ws } = await session();
  // Every model answer in this session waits 1.5 s: the kill lands while the specialist's is held back.
  stack.model.script(sessionId, { firstTokenDelayMs: 1_500 });
  ws.send({ type: 'message', content: 'Where is order 1003?' });
  await ws.waitFor(of('route.decided'), 30_000);
  await stack.killWorker('SIGKILL');
  // The race was hit: routed, and the specialist had not answered when the worker died.
  const atKill = await events(sessionId);
  expect(atKill.filter((e) => e.type === 'route.decided')).toHaveLength(1);
  expect(atKill.some((e) => e.type === 'stream.end' || e.type === 'turn.done')).toBe(false);
  await stack.startWorker();
  const done = await ws.waitFor(of('turn.done'), 60_000);
  expect(done.data).toMatchObject({ status: 'completed', agent: 'order_lookup' });
  const all = await events(sessionId);
  expect(all.filter((e) => e.type === 'route.decided')).toHaveLength(1);
  expect(all.filter((e) => e.type === 'turn.done')).toHaveLength(1);
  expect(all.filter((e) => e.type === 'agent.started')).toHaveLength(1);
  expect(classifierRequests(sessionId)).toHaveLength(1);
  wellFormed(sessionId);
}, 90_000);

test('the replay of a routed conversation with a handoff, an approval and a retried model call lists every step once, in order', async () => {
  const { sessionId, ws } = await session();
  ws.send({ type: 'message', content: 'Where is order 1002? Please hand me over to discount' });
  await ws.waitFor(of('turn.done'));
  // The next reply's stream breaks once: the model call is retried, and its reply is one step.
  stack.model.script(sessionId, { failMidStreamNext: 1 });
  ws.send({ type: 'message', content: 'Cancel order 1005 please' });
  await approve(ws, 'cancel_order', true);
  await ws.waitForCount(of('turn.done'), 2);
  const starts = (await events(sessionId)).filter((e) => e.type === 'stream.start');
  expect(starts.some((e) => e.data.attempt === 2)).toBe(true);

  const page = await stack.request('GET', `/api/v1/conversations/${sessionId}/replay?limit=100`);
  expect(page.status).toBe(200);
  const steps = page.body.steps as { seq: number; type: string; turn: number | null; attempts?: number; data: any }[];
  const log = (await events(sessionId)).filter((e) => e.type !== 'stream.start' && e.type !== 'run.progress');
  // One step per stored event that stands for something, in the log's order, none twice.
  expect(steps.map((s) => s.seq)).toEqual([...steps.map((s) => s.seq)].sort((a, b) => a - b));
  expect(new Set(steps.map((s) => s.seq)).size).toBe(steps.length);
  expect(steps).toHaveLength(log.length);
  expect(steps.map((s) => s.type)).toEqual([
    'user_message', 'route_decision', 'agent_start', 'agent_reply', 'tool_call', 'tool_result', 'agent_handoff', 'agent_start', 'agent_reply', 'turn_end',
    'user_message', 'route_decision', 'agent_start', 'agent_reply', 'tool_call', 'approval_request', 'approval_decision', 'tool_result', 'agent_reply', 'turn_end',
  ]);
  expect(steps.filter((s) => s.type === 'agent_reply').map((s) => s.attempts)).toContain(2);
  expect(steps.find((s) => s.type === 'agent_handoff')!.data).toMatchObject({ from: 'order_lookup', to: 'discount' });
  expect(steps.find((s) => s.type === 'approval_decision')!.data).toMatchObject({ outcome: 'approved', decidedBy: 'dev' });
});
