import { readFileSync } from 'node:fs';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { ConversationList, ReplayPage, type ReplayStep } from '../contracts/conversations';
import type { DurableEventData, DurableEventType } from '../contracts/events';
import { appendEvent } from '../db/events';
import { openPool, type DatabasePool } from '../db/pool';
import { markSessionEnded } from '../db/sessions';
import { startStack, type Stack } from './support/stack';
import type { Frame } from './support/ws-client';

let stack: Stack;
let pool: DatabasePool;
let alice: string;
let admin: string;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml') } });
  pool = await openPool(stack.env.DATABASE_URL!, 3);
  [alice, admin] = await Promise.all([stack.issueToken('alice'), stack.issueToken('ops', true)]);
});
afterAll(async () => {
  await pool?.end();
  await stack?.stop();
});

const of = (type: string) => (f: Frame) => f.type === type;
const as = (token: string) => ({ authorization: `Bearer ${token}` });

async function replay(sessionId: string, query = '', headers: Record<string, string> = {}) {
  const res = await stack.request('GET', `/api/v1/conversations/${sessionId}/replay${query}`, undefined, headers);
  if (res.status !== 200) throw new Error(`replay: ${res.status} ${res.text}`);
  return ReplayPage.parse(res.body);
}

/** Every step, read a page of `limit` at a time. */
async function replayAll(sessionId: string, limit: number): Promise<ReplayStep[]> {
  const steps: ReplayStep[] = [];
  let cursor: string | null = null;
  do {
    const page: ReplayPage = await replay(sessionId, `?limit=${limit}${cursor ? `&cursor=${cursor}` : ''}`);
    expect(page.steps.length).toBeLessThanOrEqual(limit);
    steps.push(...page.steps);
    cursor = page.nextCursor;
  } while (cursor);
  return steps;
}

async function list(query: string, headers: Record<string, string> = {}) {
  const res = await stack.request('GET', `/api/v1/conversations${query}`, undefined, headers);
  if (res.status !== 200) throw new Error(`list: ${res.status} ${res.text}`);
  return ConversationList.parse(res.body);
}

/** Times between two stored events, as the database has them (microseconds), in ms. */
async function msBetween(sessionId: string, fromSeq: number, toSeq: number): Promise<number> {
  const { rows } = await stack.db.query(
    `SELECT extract(epoch FROM b.created_at - a.created_at) * 1000 AS ms FROM session_events a, session_events b
     WHERE a.session_id = $1 AND b.session_id = $1 AND a.seq = $2 AND b.seq = $3`,
    [sessionId, fromSeq, toSeq],
  );
  return Number(rows[0].ms);
}

async function storedEvents(sessionId: string): Promise<{ seq: number; type: string; data: any }[]> {
  const { rows } = await stack.db.query('SELECT seq, type, data FROM session_events WHERE session_id = $1 ORDER BY seq', [sessionId]);
  return rows;
}

// A session made in SQL, with no workflow: its events are written as the runtime writes them (appendEvent).
type Ev = { [T in DurableEventType]: { type: T; data: DurableEventData<T> } }[DurableEventType];
async function syntheticSession(opts: { owner?: string; agent?: string; createdAt?: string } = {}): Promise<string> {
  const id = `syn_${randomUUID().replace(/-/g, '')}`;
  await stack.db.query('INSERT INTO sessions (id, agent_id, owner_id, created_at) VALUES ($1, $2, $3, COALESCE($4::timestamptz, now()))', [
    id,
    opts.agent ?? 'default',
    opts.owner ?? 'dev',
    opts.createdAt ?? null,
  ]);
  return id;
}
async function write(sessionId: string, ...events: Ev[]): Promise<void> {
  for (const e of events) {
    await pool.transaction((tx) => appendEvent(tx, { sessionId, key: `${e.type}:${randomUUID()}`, type: e.type, data: e.data } as never));
  }
}
async function expire(sessionId: string): Promise<void> {
  await pool.transaction(async (tx) => {
    await markSessionEnded(tx, sessionId, 'expired');
    await appendEvent(tx, { sessionId, key: 'session:expired', type: 'session.expired', data: { idleMs: 1000 } });
  });
}
const usage = (inputTokens: number, outputTokens: number, costUsd: number) => ({ inputTokens, outputTokens, costUsd });
const accepted = (turn: number, content = `message ${turn}`): Ev => ({ type: 'message.accepted', data: { messageId: `m${turn}`, turn, content } });
const reply = (turn: number, step = 1, content = 'ok', u = usage(10, 2, 0.001)): Ev[] => [
  { type: 'stream.start', data: { streamId: `t${turn}-s${step}`, turn, replyTo: `m${turn}`, attempt: 1 } },
  { type: 'stream.end', data: { streamId: `t${turn}-s${step}`, attempt: 1, messageId: `r${turn}-${step}`, content, finishReason: 'stop', usage: u } },
];
const done = (turn: number, status: 'completed' | 'failed' | 'cancelled' = 'completed', extra: Partial<DurableEventData<'turn.done'>> = {}): Ev => ({
  type: 'turn.done',
  data: { turn, replyTo: `m${turn}`, status, messageId: status === 'completed' ? `r${turn}` : null, content: status === 'completed' ? 'ok' : null, usage: null, ...extra },
});

describe('a real conversation: tool turn, approval, retried model call', () => {
  let sessionId: string;
  let steps: ReplayStep[];

  beforeAll(async () => {
    sessionId = await stack.createSession();
    const ws = await stack.ws(sessionId);
    ws.send({ type: 'message', content: 'What is 15 + 27?' });
    await ws.waitForCount(of('turn.done'), 1);

    stack.model.script(sessionId, { toolCalls: [{ name: 'create_note', arguments: JSON.stringify({ title: 'replayed', body: 'a note' }) }] });
    ws.send({ type: 'message', content: 'save a note' });
    const required = await ws.waitFor(of('approval.required'));
    await new Promise((r) => setTimeout(r, 300));
    const decided = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${required.data.toolCallId}`, { approved: true, digest: required.data.digest });
    expect(decided.status).toBe(200);
    await ws.waitForCount(of('turn.done'), 2);

    // The next model call breaks mid-stream once: Temporal retries it as attempt 2.
    stack.model.script(sessionId, { failMidStreamNext: 1 });
    ws.send({ type: 'message', content: 'third message' });
    await ws.waitForCount(of('turn.done'), 3, 30_000);
    steps = (await replay(sessionId, '?limit=100')).steps;
  }, 60_000);

  test('the retry really happened: two stream.starts of one stream, one stream.end', async () => {
    const events = await storedEvents(sessionId);
    const starts = events.filter((e) => e.type === 'stream.start');
    const retried = starts.filter((s) => s.data.attempt === 2);
    expect(retried).toHaveLength(1);
    expect(starts.filter((s) => s.data.streamId === retried[0]!.data.streamId)).toHaveLength(2);
    expect(events.filter((e) => e.type === 'stream.end' && e.data.streamId === retried[0]!.data.streamId)).toHaveLength(1);
  });

  test('every step once, in log order, and no step for a stream.start', async () => {
    const events = await storedEvents(sessionId);
    expect(steps.map((s) => s.seq)).toEqual(events.filter((e) => e.type !== 'stream.start').map((e) => e.seq));
    expect(new Set(steps.map((s) => s.seq)).size).toBe(steps.length);
    expect(steps.map((s) => s.type)).toEqual([
      'user_message', 'agent_reply', 'tool_call', 'tool_result', 'agent_reply', 'turn_end',
      'user_message', 'agent_reply', 'tool_call', 'approval_request', 'approval_decision', 'tool_result', 'agent_reply', 'turn_end',
      'user_message', 'agent_reply', 'turn_end',
    ]);
    expect(steps.map((s) => s.turn)).toEqual([1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3]);
    for (let i = 1; i < steps.length; i++) expect(Date.parse(steps[i]!.at)).toBeGreaterThanOrEqual(Date.parse(steps[i - 1]!.at));
  });

  test('steps carry what happened: the calculator, the approval, the retried reply', () => {
    const byType = (t: ReplayStep['type']) => steps.filter((s) => s.type === t) as any[];
    expect(byType('tool_call').map((s) => s.data.name)).toEqual(['calculator', 'create_note']);
    expect(byType('tool_result').map((s) => s.data.status)).toEqual(['succeeded', 'succeeded']);
    expect(byType('approval_decision')[0].data).toMatchObject({ outcome: 'approved', decidedBy: 'dev' });
    expect(byType('user_message').map((s) => s.data.content)).toEqual(['What is 15 + 27?', 'save a note', 'third message']);
    expect(byType('agent_reply').map((s) => s.attempts)).toEqual([1, 1, 1, 1, 2]);
    expect(byType('agent_reply')[1].data.content).toContain('42');
    expect(byType('turn_end').map((s) => [s.data.status, s.error])).toEqual([['completed', null], ['completed', null], ['completed', null]]);
  });

  test('durations: reply from its first stream.start, tool call to result, approval wait, turn from its first event', async () => {
    const events = await storedEvents(sessionId);
    const seqOf = (pred: (e: { type: string; data: any }) => boolean) => events.find(pred)!.seq;
    for (const s of steps) {
      if (s.type === 'agent_reply') {
        const firstStart = seqOf((e) => e.type === 'stream.start' && e.data.streamId === s.data.streamId);
        expect(s.durationMs).toBeCloseTo(await msBetween(sessionId, firstStart, s.seq), -0.5);
      } else if (s.type === 'tool_result') {
        expect(s.durationMs).toBeCloseTo(await msBetween(sessionId, seqOf((e) => e.type === 'tool.call' && e.data.toolCallId === s.data.toolCallId), s.seq), -0.5);
      } else if (s.type === 'approval_decision') {
        expect(s.durationMs).toBeCloseTo(await msBetween(sessionId, seqOf((e) => e.type === 'approval.required' && e.data.toolCallId === s.data.toolCallId), s.seq), -0.5);
        expect(s.durationMs!).toBeGreaterThanOrEqual(300);
      } else if (s.type === 'turn_end') {
        expect(s.durationMs).toBeCloseTo(await msBetween(sessionId, seqOf((e) => e.type === 'message.accepted' && e.data.turn === s.turn), s.seq), -0.5);
      } else {
        expect(s.durationMs).toBeNull();
      }
    }
    // The retried reply's time covers both attempts, so it is longer than its last attempt alone.
    const retried = steps.find((s) => s.type === 'agent_reply' && s.attempts === 2)!;
    const lastStart = seqOf((e) => e.type === 'stream.start' && e.data.attempt === 2);
    expect(retried.durationMs!).toBeGreaterThan(await msBetween(sessionId, lastStart, retried.seq));
  });

  test('pages of any size give the same steps', async () => {
    expect(await replayAll(sessionId, 1)).toEqual(steps);
    expect(await replayAll(sessionId, 4)).toEqual(steps);
  });

  test('the conversation record counts the same things', async () => {
    const page = await replay(sessionId);
    const { rows } = await stack.db.query(
      `SELECT COALESCE(sum(input_tokens), 0)::int AS input, COALESCE(sum(output_tokens), 0)::int AS output, COALESCE(sum(cost_usd), 0)::float8 AS cost, count(*)::int AS replies
       FROM messages WHERE session_id = $1 AND role = 'assistant'`,
      [sessionId],
    );
    const c = page.conversation;
    expect(c).toMatchObject({
      id: sessionId,
      ownerId: 'dev',
      agentId: 'default',
      status: 'active',
      resolution: 'open',
      turns: 3,
      failedTurns: 0,
      userMessages: 3,
      replies: rows[0].replies,
      toolCalls: 2,
      approvals: 1,
      agentsUsed: ['default'],
      agentTurns: { default: 3 },
      usage: { inputTokens: rows[0].input, outputTokens: rows[0].output, repliesWithoutUsage: 0 },
    });
    expect(c.usage.costUsd).toBeCloseTo(rows[0].cost, 8);
    expect(c.replies).toBe(5);
    const events = await storedEvents(sessionId);
    const firstAccepted = events.find((e) => e.type === 'message.accepted')!.seq;
    // A reply that only asks for a tool is not an answer yet: the first answer is the first reply with text.
    const firstAnswer = events.find((e) => e.type === 'stream.end' && e.data.content !== '')!.seq;
    expect(c.firstResponseMs).toBeCloseTo(await msBetween(sessionId, firstAccepted, firstAnswer), -0.5);
    expect(c.totalMs).toBeCloseTo(await msBetween(sessionId, firstAccepted, events[events.length - 1]!.seq), -0.5);
  });
});

test('router events: route decision, agent start, handoff, clarification, escalation, operator, outside event; each once, in order', async () => {
  const id = await syntheticSession({ agent: 'concierge' });
  const u = usage(40, 5, 0.0004);
  await write(
    id,
    accepted(1, 'where is my refund?'),
    { type: 'route.decided', data: { turn: 1, router: 'concierge', intents: [{ agent: 'billing', confidence: 0.9, reasoning: 'refund' }], chosen: ['billing'], outcome: 'agents', isAmbiguous: false, attempts: 1, usage: u } },
    { type: 'agent.started', data: { turn: 1, agent: 'billing', version: 1, reason: 'route', index: 1 } },
    ...reply(1, 1, ''),
    { type: 'tool.call', data: { toolCallId: 'tc_h', name: 'handoff', arguments: { to: 'shipping' }, turn: 1, step: 1, requiresApproval: false } },
    { type: 'tool.result', data: { toolCallId: 'tc_h', name: 'handoff', status: 'succeeded', result: { to: 'shipping' } } },
    { type: 'agent.handoff', data: { turn: 1, from: 'billing', to: 'shipping', reason: 'parcel question', toolCallId: 'tc_h' } },
    { type: 'agent.started', data: { turn: 1, agent: 'shipping', version: 3, reason: 'handoff', index: 2 } },
    ...reply(1, 2, 'It ships tomorrow.'),
    done(1, 'completed', { agent: 'shipping' }),
    accepted(2, 'hmm'),
    { type: 'route.decided', data: { turn: 2, router: 'concierge', intents: [], chosen: [], outcome: 'clarification', isAmbiguous: true, attempts: 1, usage: u } },
    { type: 'clarification', data: { turn: 2, question: 'Billing or shipping?', reason: 'ambiguous', messageId: 'q2' } },
    done(2),
    accepted(3, 'I want a person'),
    { type: 'session.escalated', data: { turn: 3, reason: 'asked for a person', source: 'classifier', agent: null, messageId: 'e3' } },
    { type: 'escalation.delivered', data: { turn: 3, success: true, statusCode: 200, attempts: 1, error: null } },
    done(3, 'completed', { awaitingOperator: true }),
    { type: 'operator.message', data: { messageId: 'o1', operator: 'sam', content: 'Hi, Sam here.' } },
    { type: 'session.handed_back', data: { by: 'sam' } },
    { type: 'external.event', data: { eventId: 'ev1', type: 'order.shipped', data: { order: '1001' }, wake: false } },
  );
  const steps = await replayAll(id, 5);
  expect(steps.map((s) => s.type)).toEqual([
    'user_message', 'route_decision', 'agent_start', 'agent_reply', 'tool_call', 'tool_result', 'agent_handoff', 'agent_start', 'agent_reply', 'turn_end',
    'user_message', 'route_decision', 'clarification', 'turn_end',
    'user_message', 'escalation', 'escalation_delivery', 'turn_end', 'operator_message', 'handed_back', 'external_event',
  ]);
  const events = await storedEvents(id);
  expect(steps.map((s) => s.seq)).toEqual(events.filter((e) => e.type !== 'stream.start').map((e) => e.seq));
  expect(steps.find((s) => s.type === 'agent_handoff')!.data).toMatchObject({ from: 'billing', to: 'shipping' });
  expect(steps.filter((s) => s.type === 'agent_start').map((s) => (s.data as DurableEventData<'agent.started'>).agent)).toEqual(['billing', 'shipping']);

  const { conversation: c } = await replay(id);
  expect(c).toMatchObject({
    resolution: 'escalated',
    agentsUsed: ['concierge', 'billing', 'shipping'],
    agentTurns: { shipping: 1, concierge: 1 },
    turns: 3,
    handoffs: 1,
    clarifications: 1,
    escalations: 1,
    operatorMessages: 1,
    externalEvents: 1,
    // Two replies and two classifications.
    usage: { inputTokens: 10 + 10 + 40 + 40, outputTokens: 2 + 2 + 5 + 5 },
  });
  expect(c.usage.costUsd).toBeCloseTo(0.001 * 2 + 0.0004 * 2, 8);
  for (const agent of ['concierge', 'billing', 'shipping']) {
    expect((await list(`?agent=${agent}&limit=100`)).conversations.map((x) => x.id)).toContain(id);
  }
  expect((await list('?agent=default&limit=100')).conversations.map((x) => x.id)).not.toContain(id);
  expect((await list('?status=escalated&limit=100')).conversations.map((x) => x.id)).toContain(id);
});

test('resolution: resolved, abandoned (failed, unanswered, expired approval, clarification, silent), open, escalated', async () => {
  const since = new Date(Date.now() - 1000).toISOString();
  const make = async (events: Ev[], end = true) => {
    const id = await syntheticSession({ owner: 'rita' });
    await write(id, ...events);
    if (end) await expire(id);
    return id;
  };
  const expected: Record<string, string> = {};
  expected[await make([accepted(1), ...reply(1), done(1), accepted(2), ...reply(2), done(2)])] = 'resolved';
  // A cancelled turn followed by one that completed: the conversation went on and ended well.
  expected[await make([accepted(1), done(1, 'cancelled'), accepted(2), ...reply(2), done(2)])] = 'resolved';
  expected[await make([accepted(1), ...reply(1), done(1), accepted(2), done(2, 'failed')])] = 'abandoned';
  expected[await make([accepted(1), ...reply(1), done(1), accepted(2), done(2, 'cancelled')])] = 'abandoned';
  expected[await make([accepted(1), ...reply(1), done(1), accepted(2)])] = 'abandoned';
  expected[
    await make([
      accepted(1),
      { type: 'tool.call', data: { toolCallId: 'tc_x', name: 'create_note', arguments: {}, turn: 1, step: 1, requiresApproval: true } },
      { type: 'approval.required', data: { toolCallId: 'tc_x', name: 'create_note', arguments: {}, digest: 'd', expiresAt: new Date().toISOString(), turn: 1 } },
      { type: 'approval.resolved', data: { toolCallId: 'tc_x', outcome: 'expired', decidedBy: null, feedback: null } },
      { type: 'tool.result', data: { toolCallId: 'tc_x', name: 'create_note', status: 'expired' } },
      ...reply(1, 2, 'The action was not performed.'),
      done(1),
    ])
  ] = 'abandoned';
  expected[await make([accepted(1), { type: 'clarification', data: { turn: 1, question: 'Which order?', reason: 'low_confidence', messageId: 'q1' } }, done(1)])] = 'abandoned';
  expected[await make([])] = 'abandoned';
  expected[await make([accepted(1), ...reply(1), done(1)], false)] = 'open';
  expected[
    await make([accepted(1), { type: 'session.escalated', data: { turn: 1, reason: 'refund over limit', source: 'tool', agent: 'default', messageId: 'e1' } }, done(1, 'completed', { awaitingOperator: true })])
  ] = 'escalated';

  const all = await list(`?from=${encodeURIComponent(since)}&limit=100`, as(admin));
  const mine = all.conversations.filter((c) => c.ownerId === 'rita');
  expect(Object.fromEntries(mine.map((c) => [c.id, c.resolution]))).toEqual(expected);
  for (const resolution of ['resolved', 'abandoned', 'open', 'escalated']) {
    const page = await list(`?status=${resolution}&from=${encodeURIComponent(since)}&limit=100`, as(admin));
    expect(page.conversations.filter((c) => c.ownerId === 'rita').map((c) => c.id).sort()).toEqual(
      Object.keys(expected)
        .filter((id) => expected[id] === resolution)
        .sort(),
    );
  }
});

test('the list: newest first, keyset pages without gaps or repeats (ties on created_at too), from/to, owner only', async () => {
  const base = Date.parse('2020-01-01T00:00:00.000Z');
  const at = (minutes: number) => new Date(base + minutes * 60_000).toISOString();
  // Two share a created_at: the ID orders them.
  const ids = [await syntheticSession({ createdAt: at(1) }), await syntheticSession({ createdAt: at(2) }), await syntheticSession({ createdAt: at(2) }), await syntheticSession({ createdAt: at(3) }), await syntheticSession({ createdAt: at(4) })];
  const foreign = await syntheticSession({ owner: 'alice', createdAt: at(2) });
  const expected = [ids[4], ids[3], ...[ids[1]!, ids[2]!].sort().reverse(), ids[0]];
  const window = `from=${encodeURIComponent(at(0))}&to=${encodeURIComponent(at(10))}`;

  const seen: string[] = [];
  let cursor: string | null = null;
  let pages = 0;
  do {
    const page: ConversationList = await list(`?${window}&limit=2${cursor ? `&cursor=${cursor}` : ''}`);
    seen.push(...page.conversations.map((c) => c.id));
    cursor = page.nextCursor;
    pages++;
  } while (cursor);
  expect(seen).toEqual(expected);
  expect(pages).toBe(3);
  expect((await list(`?from=${encodeURIComponent(at(2))}&to=${encodeURIComponent(at(4))}`)).conversations.map((c) => c.id).sort()).toEqual([ids[1], ids[2], ids[3]].sort());

  // Someone else's conversations: not in the list, 404 on replay; an admin sees both.
  expect((await list(`?${window}`, as(alice))).conversations.map((c) => c.id)).toEqual([foreign]);
  const other = await stack.request('GET', `/api/v1/conversations/${ids[0]}/replay`, undefined, as(alice));
  expect([other.status, other.body.error.code]).toEqual([404, 'SESSION_NOT_FOUND']);
  expect((await list(`?${window}&limit=100`, as(admin))).conversations.map((c) => c.id)).toEqual(expect.arrayContaining([...ids, foreign]));
  expect((await replay(ids[0]!, '', as(admin))).conversation.id).toBe(ids[0]);
});

test('a deleted conversation leaves the list and its replay answers 404', async () => {
  const id = await stack.createSession();
  expect((await list('?limit=100')).conversations.map((c) => c.id)).toContain(id);
  expect((await stack.request('DELETE', `/api/v1/sessions/${id}`)).status).toBe(204);
  expect((await list('?limit=100')).conversations.map((c) => c.id)).not.toContain(id);
  expect((await stack.request('GET', `/api/v1/conversations/${id}/replay`)).status).toBe(404);
});

test('bad input: malformed ID 400, unknown 404, bad filters and cursors 422', async () => {
  for (const bad of ['bad!id', 'x'.repeat(129), 'a%20b']) {
    const res = await stack.request('GET', `/api/v1/conversations/${bad}/replay`);
    expect([res.status, res.body.error.code]).toEqual([400, 'INVALID_ID']);
  }
  const unknown = await stack.request('GET', '/api/v1/conversations/no_such_session/replay');
  expect([unknown.status, unknown.body.error.code]).toEqual([404, 'SESSION_NOT_FOUND']);
  for (const query of ['status=closed', 'limit=0', 'limit=101', 'from=yesterday', 'cursor=garbage', `from=${encodeURIComponent('2026-01-02T00:00:00Z')}&to=${encodeURIComponent('2026-01-01T00:00:00Z')}`, 'agent=a%20b']) {
    const res = await stack.request('GET', `/api/v1/conversations?${query}`);
    expect([query, res.status, res.body.error.code]).toEqual([query, 422, 'VALIDATION_ERROR']);
  }
  const id = await syntheticSession();
  for (const query of ['cursor=-1', 'cursor=abc', 'limit=0', 'cursor=2147483648', 'cursor=9999999999']) {
    const res = await stack.request('GET', `/api/v1/conversations/${id}/replay?${query}`);
    expect([query, res.status, res.body.error.code]).toEqual([query, 422, 'VALIDATION_ERROR']);
  }
  expect((await stack.request('GET', '/api/v1/conversations', undefined, { authorization: '' })).status).toBe(401);
});

test("the migration's backfill rebuilds exactly the rows the triggers kept", async () => {
  const migration = readFileSync(path.join(__dirname, '../db/migrations/011_conversations.sql'), 'utf8');
  const backfill = migration.slice(migration.indexOf('-- Backfill:'));
  // In one transaction with event writes locked out, so the rows cannot move in between.
  const client = await stack.db.connect();
  try {
    await client.query('BEGIN');
    await client.query('LOCK TABLE session_events IN SHARE MODE');
    const { rows: before } = await client.query('SELECT * FROM conversations ORDER BY session_id');
    const { rows: sessions } = await client.query('SELECT count(*)::int AS n FROM sessions');
    expect(before.length).toBe(sessions[0].n);
    expect(before.filter((r) => r.turns > 0).length).toBeGreaterThan(10);
    await client.query('DELETE FROM conversations');
    await client.query(backfill);
    const { rows: after } = await client.query('SELECT * FROM conversations ORDER BY session_id');
    expect(after).toEqual(before);
  } finally {
    await client.query('ROLLBACK');
    client.release();
  }
});
