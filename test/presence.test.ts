import { createHash } from 'node:crypto';
import path from 'node:path';
import { AgentStatusTracker } from '../api/agent-status';
import type { DurableEvent } from '../contracts/events';
import { openPool, type DatabasePool } from '../db/pool';
import { SseClient } from './support/sse-client';
import { DEV_TOKEN, eventually, startStack, type Stack } from './support/stack';
import { WsClient, type Frame } from './support/ws-client';

/** The throttle of typing relays in this stack (KEEL_TYPING_INTERVAL_MS). */
const TYPING_INTERVAL_MS = 400;

let stack: Stack;
let pool: DatabasePool;
let adminToken: string;
let extraApiPort: number;

beforeAll(async () => {
  stack = await startStack({ env: { KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/presence-agents.yaml'), KEEL_TYPING_INTERVAL_MS: String(TYPING_INTERVAL_MS) } });
  pool = await openPool(stack.env.DATABASE_URL!, 2);
  adminToken = await stack.issueToken('ops', true);
  extraApiPort = (await stack.startExtraApi()).port;
});
afterAll(async () => {
  await pool?.end();
  await stack?.stop();
});

const of = (type: string) => (f: Frame) => f.type === type;
/** The admin token's header (read when a test runs: beforeAll issues the token). */
const admin = () => ({ authorization: `Bearer ${adminToken}` });
const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

async function socketOn(port: number, urlPath: string, token: string): Promise<WsClient> {
  return WsClient.connect(`ws://127.0.0.1:${port}${urlPath}${urlPath.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`);
}

async function eventTypes(sessionId: string): Promise<string[]> {
  const { rows } = await stack.db.query('SELECT type FROM session_events WHERE session_id = $1 ORDER BY seq', [sessionId]);
  return rows.map((r) => r.type as string);
}

/** Escalates through the API (an operator taking over) and waits for the workflow to record it; the event's seq. */
async function escalate(sessionId: string): Promise<number> {
  const res = await stack.request('POST', `/api/v1/sessions/${sessionId}/escalate`, { reason: 'the user asked for a person' }, admin());
  expect(res.status).toBe(202);
  return eventually(async () => {
    const { rows } = await stack.db.query("SELECT seq FROM session_events WHERE session_id = $1 AND type = 'session.escalated'", [sessionId]);
    return rows.length === 1 ? Number(rows[0].seq) : null;
  }, 20_000, 'the session.escalated event');
}

describe('typing', () => {
  test('reaches the session\'s other sockets, on another API process too, and is never stored', async () => {
    const sessionId = await stack.createSession();
    const customer = await stack.ws(sessionId);
    // The operator watches through the second API process: typing crosses processes on the event channel.
    const operator = await socketOn(extraApiPort, `/api/v1/sessions/${sessionId}/ws`, adminToken);
    try {
      customer.send({ type: 'typing' });
      expect((await operator.waitFor(of('typing'))).data).toEqual({ userId: 'dev', role: 'user', active: true });

      operator.send({ type: 'typing', active: true });
      expect((await customer.waitFor(of('typing'))).data).toEqual({ userId: 'ops', role: 'operator', active: true });

      // A ping sent after each typing frame is answered after it: by then no echo came back.
      customer.send({ type: 'ping' });
      operator.send({ type: 'ping' });
      await Promise.all([customer.waitFor(of('pong')), operator.waitFor(of('pong'))]);
      expect(customer.frames.filter(of('typing')).map((f) => f.data.userId)).toEqual(['ops']);
      expect(operator.frames.filter(of('typing')).map((f) => f.data.userId)).toEqual(['dev']);

      const messages = await stack.request('GET', `/api/v1/sessions/${sessionId}/messages`);
      expect(messages.body.messages).toEqual([]);
      expect(await eventTypes(sessionId)).not.toContain('typing');
    } finally {
      await operator.close();
    }
  });

  test('a flood is throttled per socket and the last state still arrives', async () => {
    const sessionId = await stack.createSession();
    const typist = await stack.ws(sessionId);
    const watcher = await stack.ws(sessionId);
    const states = Array.from({ length: 30 }, (_, i) => i % 2 === 0);
    states.push(false);
    for (const active of states) typist.send({ type: 'typing', active });
    // The first goes out at once, the rest collapse into one relay when the interval ends.
    const relayed = await eventually(async () => {
      const frames = watcher.frames.filter(of('typing'));
      return frames.length >= 2 ? frames : undefined;
    }, 5_000, 'the trailing typing relay');
    expect(relayed.map((f) => f.data.active)).toEqual([true, false]);
    // One more frame is relayed (after the interval): nothing else of the flood came before it.
    typist.send({ type: 'typing', active: true });
    await watcher.waitForCount(of('typing'), 3, 5_000);
    expect(watcher.frames.filter(of('typing')).map((f) => f.data.active)).toEqual([true, false, true]);
  });

  test('a socket that closes while typing tells the others it stopped', async () => {
    const sessionId = await stack.createSession();
    const typist = await stack.ws(sessionId);
    const watcher = await stack.ws(sessionId);
    typist.send({ type: 'typing' });
    await watcher.waitFor(of('typing'));
    await typist.close();
    const stopped = await watcher.waitForCount(of('typing'), 2);
    expect(stopped.map((f) => f.data.active)).toEqual([true, false]);
  });

  test('a bad typing frame gets an error frame', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    ws.send({ type: 'typing', active: 'yes' });
    expect((await ws.waitFor(of('error'))).data).toMatchObject({ code: 'VALIDATION_ERROR' });
  });
});

describe('agent.status', () => {
  test('follows a calculator turn in order, on the socket and on SSE, and is not stored', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    const sse = await SseClient.open(`${stack.base}/api/v1/sessions/${sessionId}/events`, { token: DEV_TOKEN });
    try {
      ws.send({ type: 'message', content: 'What is 15 + 27?' });
      await ws.waitFor(of('turn.done'));
      await sse.waitFor((e) => e.event === 'turn.done');
      // Each status frame follows the event it comes from.
      const shown = ws.frames.filter((f) => f.type !== 'stream.delta');
      const pairs = shown.flatMap((f, i) => (f.type === 'agent.status' ? [[shown[i - 1]!.type, f.data.status, f.data.tool]] : []));
      expect(pairs).toEqual([
        ['stream.start', 'thinking', undefined],
        ['tool.call', 'calling_tool', 'calculator'],
        ['stream.start', 'thinking', undefined],
        ['turn.done', 'idle', undefined],
      ]);
      expect(ws.frames.filter(of('agent.status')).every((f) => f.sessionId === sessionId && f.seq === undefined && f.data.turn === 1)).toBe(true);
      const overSse = await eventually(async () => {
        const statuses = sse.events.filter((e) => e.event === 'agent.status').map((e) => e.data.data.status);
        return statuses.length === 4 ? statuses : undefined;
      });
      expect(overSse).toEqual(['thinking', 'calling_tool', 'thinking', 'idle']);
      expect(await eventTypes(sessionId)).not.toContain('agent.status');
    } finally {
      sse.close();
    }
  });

  test('an escalated session shows escalated (also to a socket that joins later), a hand-back idle', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    await escalate(sessionId);
    expect((await ws.waitFor(of('agent.status'))).data).toEqual({ status: 'escalated', turn: 1 });

    // Joining after the escalation (live only): the state at its cursor is read from the log, so
    // the end of a turn now still shows the session waiting for its operator.
    const late = await stack.ws(sessionId);
    expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'anyone there?' })).status).toBe(202);
    expect((await late.waitFor(of('turn.done'))).data).toMatchObject({ awaitingOperator: true });
    // The turn was held for the operator: the status never left escalated (it is sent on changes only).
    expect(late.frames.filter(of('agent.status')).map((f) => f.data.status)).not.toContain('thinking');

    const back = await stack.request('POST', `/api/v1/sessions/${sessionId}/hand-back`, {}, admin());
    expect(back.status).toBe(200);
    for (const socket of [ws, late]) {
      await socket.waitFor(of('session.handed_back'));
      expect(socket.frames.filter(of('agent.status')).at(-1)!.data).toMatchObject({ status: 'idle' });
    }
  });
});

describe('agent.status derivation', () => {
  let seq = 0;
  const ev = (type: string, data: Record<string, unknown>) => ({ sessionId: 's', seq: ++seq, type, data, createdAt: '' }) as DurableEvent;
  const run = (tracker: AgentStatusTracker, events: DurableEvent[]) => events.map((e) => tracker.next(e));

  test('approvals, the same tool twice, a router member, and a turn that waits for its operator', () => {
    const statuses = run(new AgentStatusTracker(), [
      ev('agent.started', { turn: 2, agent: 'billing' }),
      ev('stream.start', { turn: 2 }),
      ev('tool.call', { turn: 2, name: 'refund', toolCallId: 'a' }),
      ev('tool.call', { turn: 2, name: 'refund', toolCallId: 'b' }),
      ev('approval.required', { turn: 2, name: 'refund', toolCallId: 'a' }),
      ev('approval.resolved', { toolCallId: 'a', outcome: 'approved' }),
      ev('approval.required', { turn: 2, name: 'refund', toolCallId: 'b' }),
      ev('approval.resolved', { toolCallId: 'b', outcome: 'rejected' }),
      ev('tool.result', { toolCallId: 'a' }),
      ev('turn.done', { turn: 2, awaitingOperator: true }),
    ]);
    expect(statuses).toEqual([
      undefined,
      { status: 'thinking', agent: 'billing', turn: 2 },
      { status: 'calling_tool', tool: 'refund', agent: 'billing', turn: 2 },
      undefined,
      { status: 'waiting_for_approval', tool: 'refund', agent: 'billing', turn: 2 },
      { status: 'calling_tool', tool: 'refund', agent: 'billing', turn: 2 },
      { status: 'waiting_for_approval', tool: 'refund', agent: 'billing', turn: 2 },
      undefined,
      undefined,
      { status: 'escalated', turn: 2 },
    ]);
  });

  test('the escalation state it starts from decides how a turn ends', () => {
    const done = ev('turn.done', { turn: 3 });
    expect(new AgentStatusTracker(true).next(done)).toEqual({ status: 'escalated', turn: 3 });
    expect(new AgentStatusTracker(false).next(done)).toEqual({ status: 'idle', turn: 3 });
  });
});

describe('the per-user socket', () => {
  test('carries approvals and status of all the user\'s sessions, not other users\'; an admin sees all', async () => {
    const mine = await socketOn(Number(new URL(stack.base).port), '/api/v1/ws', DEV_TOKEN);
    const all = await socketOn(extraApiPort, '/api/v1/ws', adminToken);
    const bobToken = await stack.issueToken('bob');
    const bobs = await socketOn(Number(new URL(stack.base).port), '/api/v1/ws', bobToken);
    try {
      expect(mine.frames[0]!.data).toEqual({ userId: 'dev', admin: false });
      const first = await stack.createSession();
      const second = await stack.createSession();
      const bobRes = await stack.request('POST', '/api/v1/sessions', {}, bearer(bobToken));
      const bobSession = bobRes.body.id as string;
      for (const [sessionId, token] of [[first, DEV_TOKEN], [second, DEV_TOKEN], [bobSession, bobToken]] as const) {
        const sent = await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'save a note: milk' }, bearer(token));
        expect(sent.status).toBe(202);
      }
      const required = (socket: WsClient, sessionId: string) => socket.waitFor((f) => f.type === 'approval.required' && f.sessionId === sessionId);
      const [a, b] = await Promise.all([required(mine, first), required(mine, second)]);
      expect(a.data).toMatchObject({ name: 'create_note' });
      expect(b.seq).toEqual(expect.any(Number));
      await Promise.all([required(all, first), required(all, second), required(all, bobSession), required(bobs, bobSession)]);
      for (const sessionId of [first, second]) {
        await mine.waitFor((f) => f.type === 'agent.status' && f.sessionId === sessionId && f.data.status === 'waiting_for_approval' && f.data.tool === 'create_note');
      }

      // Bob's approval went out before dev's rejections were written; by the time their results arrive, a leak would have too.
      for (const [frame, sessionId] of [[a, first], [b, second]] as const) {
        const res = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${frame.data.toolCallId}`, { approved: false });
        expect(res.status).toBe(200);
      }
      for (const sessionId of [first, second]) {
        await mine.waitFor((f) => f.type === 'turn.done' && f.sessionId === sessionId);
        await mine.waitFor((f) => f.type === 'agent.status' && f.sessionId === sessionId && f.data.status === 'idle');
      }
      expect(mine.frames.filter((f) => f.sessionId === bobSession)).toEqual([]);
      expect(bobs.frames.filter((f) => f.sessionId === first || f.sessionId === second)).toEqual([]);
      expect(new Set(mine.frames.map((f) => f.type))).toEqual(new Set(['connected', 'approval.required', 'approval.resolved', 'turn.done', 'agent.status']));
    } finally {
      await Promise.all([mine.close(), all.close(), bobs.close()]);
    }
  });

  test('needs a token and takes only pings', async () => {
    const port = Number(new URL(stack.base).port);
    const refused = await new Promise<number>((resolve, reject) => {
      void import('ws').then(({ default: WebSocket }) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/api/v1/ws`);
        ws.once('close', (code) => resolve(code));
        ws.once('error', reject);
      });
    });
    expect(refused).toBe(4001);
    const socket = await socketOn(port, '/api/v1/ws', DEV_TOKEN);
    try {
      socket.send({ type: 'message', content: 'hi' });
      expect((await socket.waitFor(of('error'))).data).toMatchObject({ code: 'UNKNOWN_FRAME_TYPE' });
      socket.send({ type: 'ping' });
      await socket.waitFor(of('pong'));
    } finally {
      await socket.close();
    }
  });
});

describe('operator API', () => {
  test('operator messages need an admin and an escalated session; they join the conversation and reach the client', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    ws.send({ type: 'message', content: 'Hello there' });
    await ws.waitFor(of('turn.done'));
    const url = `/api/v1/sessions/${sessionId}/operator-messages`;

    expect((await stack.request('POST', url, { content: 'Hi, this is Sam' })).status).toBe(403);
    const early = await stack.request('POST', url, { content: 'Hi, this is Sam' }, admin());
    expect(early.status).toBe(409);
    expect(early.body.error.code).toBe('SESSION_NOT_ESCALATED');
    expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/hand-back`, {}, admin())).body.error.code).toBe('SESSION_NOT_ESCALATED');

    await escalate(sessionId);
    const sent = await stack.request('POST', url, { content: 'Hi, this is Sam from support', clientMessageId: 'op-1' }, admin());
    expect(sent.status).toBe(201);
    expect(sent.body).toMatchObject({ messageId: expect.stringMatching(/^op_/), turn: 1, operator: 'ops' });
    const frame = await ws.waitFor(of('operator.message'));
    expect(frame.data).toEqual({ messageId: sent.body.messageId, operator: 'ops', content: 'Hi, this is Sam from support' });
    expect(frame.seq).toBe(sent.body.seq);

    const again = await stack.request('POST', url, { content: 'Hi, this is Sam from support', clientMessageId: 'op-1' }, admin());
    expect(again.status).toBe(200);
    expect(again.body).toEqual(sent.body);
    const second = await stack.request('POST', url, { content: 'Your refund is on its way' }, admin());
    expect(second.status).toBe(201);

    // In the conversation the model reads after the hand-back: turn 1, after the turn's reply, in order.
    const { rows } = await stack.db.query("SELECT turn, position, role, content FROM messages WHERE session_id = $1 AND role = 'operator' ORDER BY position", [sessionId]);
    expect(rows).toEqual([
      { turn: 1, position: 950_000, role: 'operator', content: 'Hi, this is Sam from support' },
      { turn: 1, position: 950_001, role: 'operator', content: 'Your refund is on its way' },
    ]);
    const listed = await stack.request('GET', `/api/v1/sessions/${sessionId}/messages`);
    // The turn's reply, the escalation message the user was sent, then the operator's.
    expect(listed.body.messages.map((m: { role: string }) => m.role)).toEqual(['user', 'assistant', 'assistant', 'operator', 'operator']);

    const back = await stack.request('POST', `/api/v1/sessions/${sessionId}/hand-back`, {}, admin());
    expect(back.status).toBe(200);
    expect(back.body).toMatchObject({ handedBack: true, by: 'ops', alreadyHandedBack: false });
    expect((await ws.waitFor(of('session.handed_back'))).data).toEqual({ by: 'ops' });
    const twice = await stack.request('POST', `/api/v1/sessions/${sessionId}/hand-back`, {}, admin());
    expect(twice.body).toMatchObject({ seq: back.body.seq, alreadyHandedBack: true });
    expect((await eventTypes(sessionId)).filter((t) => t === 'session.handed_back')).toHaveLength(1);
    expect((await stack.request('POST', url, { content: 'one more' }, admin())).status).toBe(409);
  });

  test('after a real escalation, the operator\'s message is in what the model reads once the session is handed back', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    ws.send({ type: 'message', content: 'Hello there' });
    await ws.waitFor(of('turn.done'));
    expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/escalate`, { reason: 'wants a person' }, admin())).status).toBe(202);
    await ws.waitFor(of('session.escalated'));
    const sent = await stack.request('POST', `/api/v1/sessions/${sessionId}/operator-messages`, { content: 'Sam here, I sorted it out' }, admin());
    expect(sent.status).toBe(201);
    expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/hand-back`, {}, admin())).status).toBe(200);
    await ws.waitFor(of('session.handed_back'));

    const before = stack.model.requests(sessionId).length;
    ws.send({ type: 'message', content: 'Thanks, all good now' });
    const done = await ws.waitFor((f) => f.type === 'turn.done' && f.data.replyTo !== ws.frames.find(of('turn.done'))!.data.replyTo);
    expect(done.data).toMatchObject({ status: 'completed' });
    expect(done.data.awaitingOperator).toBeUndefined();
    const request = stack.model.requests(sessionId).slice(before)[0]!;
    const texts = (request.body.messages as { content: string }[]).map((m) => String(m.content));
    expect(texts).toContain('Hello there');
    const operatorAt = texts.findIndex((t) => t.includes('Sam here, I sorted it out'));
    expect(operatorAt).toBeGreaterThan(texts.indexOf('Hello there'));
    expect(operatorAt).toBeLessThan(texts.indexOf('Thanks, all good now'));
  });

  test('escalate needs an admin and a reason, and says when the session already is', async () => {
    const sessionId = await stack.createSession();
    const url = `/api/v1/sessions/${sessionId}/escalate`;
    expect((await stack.request('POST', url, { reason: 'angry customer' })).status).toBe(403);
    expect((await stack.request('POST', url, {}, admin())).status).toBe(422);
    const ws = await stack.ws(sessionId);
    const requested = await stack.request('POST', url, { reason: 'angry customer' }, admin());
    expect(requested.status).toBe(202);
    // The session workflow runs the escalation; its event reaches the client, with the status.
    const escalated = await ws.waitFor(of('session.escalated'));
    expect(escalated.data.reason).toContain('angry customer');
    await ws.waitFor((f) => f.type === 'agent.status' && f.data.status === 'escalated');
    const repeated = await stack.request('POST', url, { reason: 'angry customer' }, admin());
    expect(repeated.body).toEqual({ escalated: true, alreadyEscalated: true });
    const other = await stack.createSession();
    await escalate(other);
    const already = await stack.request('POST', `/api/v1/sessions/${other}/escalate`, { reason: 'again' }, admin());
    expect(already.status).toBe(200);
    expect(already.body).toEqual({ escalated: true, alreadyEscalated: true });
  });

  test('a second take-over after a hand-back, with no message between, is its own escalation', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    await escalate(sessionId);
    expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/hand-back`, {}, admin())).status).toBe(200);
    await ws.waitFor(of('session.handed_back'));
    expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/escalate`, { reason: 'again' }, admin())).status).toBe(202);
    const escalations = await ws.waitForCount(of('session.escalated'), 2);
    expect(escalations[1]!.data.messageId).not.toBe(escalations[0]!.data.messageId);
    // The log says escalated again, so the operator can write.
    expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/operator-messages`, { content: 'back again' }, admin())).status).toBe(201);
  });
});

describe('external events', () => {
  const shipped = { type: 'order.shipped', data: { orderId: '1001', carrier: 'UPS' } };

  test('a session of an agent that enables it gets an events token; others do not', async () => {
    const plain = await stack.request('POST', '/api/v1/sessions', {});
    expect(plain.body.eventsToken).toBeUndefined();
    const notified = await stack.request('POST', '/api/v1/sessions', { agentId: 'notified' });
    expect(notified.body.eventsToken).toMatch(/^kevt_[A-Za-z0-9_-]{32}$/);
    expect((await stack.request('GET', `/api/v1/sessions/${notified.body.id}`)).body.eventsToken).toBeUndefined();
    // Only its sha256 is kept.
    const { rows } = await stack.db.query('SELECT events_token_hash FROM sessions WHERE id = $1', [notified.body.id]);
    expect(rows[0].events_token_hash).toBe(createHash('sha256').update(notified.body.eventsToken).digest('hex'));
  });

  test('auth: admin or the session\'s own token; user tokens and other sessions\' tokens are refused', async () => {
    const a = await stack.request('POST', '/api/v1/sessions', { agentId: 'notified' });
    const b = await stack.request('POST', '/api/v1/sessions', { agentId: 'notified' });
    const url = `/api/v1/sessions/${a.body.id}/external-events`;
    expect((await stack.request('POST', url, shipped)).status).toBe(403);
    expect((await stack.request('POST', url, shipped, { authorization: '' })).status).toBe(401);
    expect((await stack.request('POST', url, shipped, bearer(b.body.eventsToken))).status).toBe(401);
    expect((await stack.request('POST', url, shipped, bearer('kevt_not-a-real-token'))).status).toBe(401);
    // The events token works for this route only.
    expect((await stack.request('GET', `/api/v1/sessions/${a.body.id}`, undefined, bearer(a.body.eventsToken))).status).toBe(401);
    const withToken = await stack.request('POST', url, shipped, bearer(a.body.eventsToken));
    expect(withToken.status).toBe(201);
    expect(withToken.body).toMatchObject({ eventId: expect.any(String), wake: true, duplicate: false });
    const byAdmin = await stack.request('POST', url, shipped, admin());
    expect(byAdmin.status).toBe(201);
    expect(byAdmin.body.eventId).not.toBe(withToken.body.eventId);
  });

  test('stored as an event message, streamed as external.event, idempotent by eventId', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    const url = `/api/v1/sessions/${sessionId}/external-events`;
    const first = await stack.request('POST', url, { ...shipped, eventId: 'evt-1001' }, admin());
    expect(first.status).toBe(201);
    // The default agent has no externalEvents setting: the event waits for the next message.
    expect(first.body).toMatchObject({ eventId: 'evt-1001', messageId: expect.stringMatching(/^ev_/), wake: false, duplicate: false });
    const frame = await ws.waitFor(of('external.event'));
    expect(frame.data).toEqual({ eventId: 'evt-1001', type: 'order.shipped', data: { orderId: '1001', carrier: 'UPS' }, wake: false });
    expect(frame.seq).toBe(first.body.seq);

    const repeat = await stack.request('POST', url, { type: 'order.shipped', eventId: 'evt-1001', data: { carrier: 'UPS', orderId: '1001' } }, admin());
    expect(repeat.status).toBe(200);
    expect(repeat.body).toEqual({ ...first.body, duplicate: true });
    const changed = await stack.request('POST', url, { ...shipped, data: { orderId: '1002' }, eventId: 'evt-1001' }, admin());
    expect(changed.status).toBe(409);
    expect(changed.body.error.code).toBe('IDEMPOTENCY_KEY_REUSED');

    const { rows } = await stack.db.query('SELECT id, role, turn, content FROM messages WHERE session_id = $1', [sessionId]);
    expect(rows).toEqual([{ id: first.body.messageId, role: 'event', turn: null, content: 'External event order.shipped: {"orderId":"1001","carrier":"UPS"}' }]);
    expect((await eventTypes(sessionId)).filter((t) => t === 'external.event')).toHaveLength(1);
  });

  test('bad input: type pattern, data size, unknown fields', async () => {
    const sessionId = await stack.createSession();
    const url = `/api/v1/sessions/${sessionId}/external-events`;
    const badType = await stack.request('POST', url, { type: 'Order Shipped' }, admin());
    expect(badType.status).toBe(422);
    expect(badType.body.error.details).toEqual(expect.arrayContaining([expect.objectContaining({ field: 'type' })]));
    expect((await stack.request('POST', url, { type: 'x'.repeat(65) }, admin())).status).toBe(422);
    expect((await stack.request('POST', url, { type: 'x'.repeat(64) }, admin())).status).toBe(201);
    const big = await stack.request('POST', url, { type: 'blob', data: { text: 'x'.repeat(9_000) } }, admin());
    expect(big.status).toBe(413);
    expect(big.body.error.code).toBe('PAYLOAD_TOO_LARGE');
    expect((await stack.request('POST', url, { type: 'a.b', extra: 1 }, admin())).status).toBe(422);
  });

  test('with mode wait (the default) the event starts no turn; the next message\'s turn reads it, before the message', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    const res = await stack.request('POST', `/api/v1/sessions/${sessionId}/external-events`, { type: 'payment.failed', data: { orderId: '1002' } }, admin());
    expect(res.status).toBe(201);
    await ws.waitFor(of('external.event'));
    ws.send({ type: 'message', content: 'anything new?' });
    const done = await ws.waitFor(of('turn.done'));
    expect(done.data.turn).toBe(1);
    expect(ws.frames.filter(of('turn.done'))).toHaveLength(1);
    const messages = stack.model.requests(sessionId).at(-1)!.body.messages as { role: string; content: string }[];
    const at = messages.findIndex((m) => m.role === 'system' && m.content.startsWith('External event payment.failed'));
    expect(at).toBeGreaterThan(0);
    expect(messages[at + 1]).toMatchObject({ role: 'user', content: 'anything new?' });
    const { rows } = await stack.db.query('SELECT turn, position FROM messages WHERE id = $1', [res.body.messageId]);
    expect(rows[0]).toEqual({ turn: 1, position: -1000 });
  });

  test('several events waiting for one turn all join it, in the order they came, before the message', async () => {
    const sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    for (const type of ['order.shipped', 'payment.failed', 'order.delayed']) {
      expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/external-events`, { type, data: { orderId: '1002' } }, admin())).status).toBe(201);
    }
    await ws.waitForCount(of('external.event'), 3);
    ws.send({ type: 'message', content: 'what happened?' });
    expect((await ws.waitFor(of('turn.done'))).data.status).toBe('completed');
    const messages = stack.model.requests(sessionId).at(-1)!.body.messages as { role: string; content: string }[];
    expect(messages.slice(1).map((m) => (m.role === 'system' ? m.content.split(':')[0] : m.role))).toEqual([
      'External event order.shipped',
      'External event payment.failed',
      'External event order.delayed',
      'user',
    ]);
  });

  // The workflow side (the signal wakes a turn, the event message joins the model's conversation) is the session workflow's.
  test('with mode wake the event starts a turn and the agent tells the user', async () => {
    const created = await stack.request('POST', '/api/v1/sessions', { agentId: 'notified' });
    const sessionId = created.body.id as string;
    const ws = await stack.ws(sessionId);
    const res = await stack.request('POST', `/api/v1/sessions/${sessionId}/external-events`, shipped, bearer(created.body.eventsToken));
    expect(res.status).toBe(201);
    const done = await ws.waitFor(of('turn.done'));
    expect(done.data.status).toBe('completed');
    expect(done.data.content).toContain('1001');
    // The event came first, then the turn it woke, which the event's message belongs to.
    const types = ws.frames.map((f) => f.type);
    expect(types.indexOf('external.event')).toBeLessThan(types.indexOf('stream.start'));
    const { rows } = await stack.db.query('SELECT turn FROM messages WHERE id = $1', [res.body.messageId]);
    expect(rows[0].turn).toBe(done.data.turn);
  });
});


// Last: it replaces the API processes' LISTEN connections.
describe('the per-user socket after a lost event channel', () => {
  test('is closed with 1011 and SERVICE_UNAVAILABLE, since events may have been missed', async () => {
    const socket = await socketOn(Number(new URL(stack.base).port), '/api/v1/ws', DEV_TOKEN);
    const killed = await stack.db.query("SELECT pg_terminate_backend(pid) AS killed FROM pg_stat_activity WHERE application_name = 'keel-api-listener' AND datname = current_database()");
    expect(killed.rows.length).toBeGreaterThan(0);
    const closed = await socket.closed;
    expect(closed.code).toBe(1011);
    expect(socket.frames.at(-1)).toMatchObject({ type: 'error', data: { code: 'SERVICE_UNAVAILABLE' } });
    // A new one follows the reconnected channel.
    const again = await socketOn(Number(new URL(stack.base).port), '/api/v1/ws', DEV_TOKEN);
    try {
      const sessionId = await stack.createSession();
      await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'save a note: eggs' });
      await again.waitFor((f) => f.type === 'approval.required' && f.sessionId === sessionId);
    } finally {
      await again.close();
    }
  });
});
