import { AnalyticsReport } from '../contracts/conversations';
import { startStack, type Stack } from './support/stack';

/**
 * GET /api/v1/analytics against rows seeded in SQL, with every figure worked out by hand below.
 * Conversation rows are made by the sessions trigger and then given their counters directly (the
 * triggers that keep them are checked in conversations.test.ts).
 */

let stack: Stack;
let alice: string;
let admin: string;
beforeAll(async () => {
  stack = await startStack();
  [alice, admin] = await Promise.all([stack.issueToken('alice'), stack.issueToken('ops', true)]);
  await seed();
}, 60_000);
afterAll(async () => {
  await stack?.stop();
});

const as = (token: string) => ({ authorization: `Bearer ${token}` });
const ago = (days: number) => `now() - interval '${days * 24} hours'`;

interface Seeded {
  id: string;
  owner: string;
  daysAgo: number;
  status: 'active' | 'expired';
  turns: number;
  lastTurn?: 'completed' | 'failed';
  escalated?: boolean;
  cost: number;
  tokens: [number, number];
  agents: string[];
  agentTurns: Record<string, number>;
}

// Resolutions: a1 resolved, a2 escalated, a3 abandoned (last turn failed), a4 open, b1 resolved, b2 resolved but 10 days old.
const conversations: Seeded[] = [
  { id: 'a1', owner: 'alice', daysAgo: 1, status: 'expired', turns: 3, lastTurn: 'completed', cost: 0.3, tokens: [100, 10], agents: ['default'], agentTurns: { default: 3 } },
  { id: 'a2', owner: 'alice', daysAgo: 2, status: 'active', turns: 1, lastTurn: 'completed', escalated: true, cost: 0.1, tokens: [50, 5], agents: ['router', 'billing'], agentTurns: { billing: 1 } },
  { id: 'a3', owner: 'alice', daysAgo: 3, status: 'expired', turns: 2, lastTurn: 'failed', cost: 0.2, tokens: [30, 3], agents: ['default'], agentTurns: { default: 2 } },
  { id: 'a4', owner: 'alice', daysAgo: 1, status: 'active', turns: 0, cost: 0, tokens: [0, 0], agents: ['default'], agentTurns: {} },
  { id: 'b1', owner: 'bob', daysAgo: 6, status: 'expired', turns: 4, lastTurn: 'completed', cost: 0.4, tokens: [200, 20], agents: ['router', 'billing', 'shipping'], agentTurns: { billing: 2, shipping: 2 } },
  { id: 'b2', owner: 'bob', daysAgo: 10, status: 'expired', turns: 5, lastTurn: 'completed', cost: 1, tokens: [500, 50], agents: ['default'], agentTurns: { default: 5 } },
];

async function seed(): Promise<void> {
  const q = (text: string, values: unknown[] = []) => stack.db.query(text, values);
  for (const c of conversations) {
    await q(`INSERT INTO sessions (id, agent_id, owner_id, status, created_at) VALUES ($1, $2, $3, $4, ${ago(c.daysAgo)})`, [c.id, c.agents[0], c.owner, c.status]);
    await q(
      `UPDATE conversations SET session_status = $2, turns = $3, last_done_turn = $3, last_accepted_turn = $3, last_turn_status = $4,
         escalated_at = CASE WHEN $5 THEN created_at END, cost_usd = $6, input_tokens = $7, output_tokens = $8, agents_used = $9, agent_turns = $10
       WHERE session_id = $1`,
      [c.id, c.status, c.turns, c.lastTurn ?? null, c.escalated === true, c.cost, c.tokens[0], c.tokens[1], c.agents, JSON.stringify(c.agentTurns)],
    );
  }
  const { rows } = await q('SELECT session_id, resolution FROM conversations ORDER BY session_id');
  // The seed itself must say what the figures below assume.
  expect(rows).toEqual([
    { session_id: 'a1', resolution: 'resolved' },
    { session_id: 'a2', resolution: 'escalated' },
    { session_id: 'a3', resolution: 'abandoned' },
    { session_id: 'a4', resolution: 'open' },
    { session_id: 'b1', resolution: 'resolved' },
    { session_id: 'b2', resolution: 'resolved' },
  ]);

  let n = 0;
  const call = (session: string, name: string, status: string, daysAgo: number, approval?: { outcome: string | null; afterSeconds?: number }) =>
    q(
      `INSERT INTO tool_calls (id, model_call_id, session_id, turn, step, name, arguments, status, digest, requires_approval, approval_outcome, created_at, decided_at)
       VALUES ($1, $1, $2, 1, 1, $3, '{}', $4, 'd', $5, $6, ${ago(daysAgo)}, ${ago(daysAgo)} + make_interval(secs => $7))`,
      [`tc${++n}`, session, name, status, approval !== undefined, approval?.outcome ?? null, approval?.afterSeconds ?? 0],
    );
  await call('a1', 'calculator', 'succeeded', 1);
  await call('a1', 'calculator', 'succeeded', 1);
  await call('a1', 'calculator', 'succeeded', 1);
  await call('a3', 'calculator', 'failed', 3);
  await call('b1', 'calculator', 'succeeded', 6);
  await call('b1', 'calculator', 'succeeded', 6);
  await call('b2', 'calculator', 'failed', 10);
  await call('a1', 'create_note', 'succeeded', 1, { outcome: 'approved', afterSeconds: 10 });
  await call('a2', 'create_note', 'rejected', 2, { outcome: 'rejected', afterSeconds: 30 });
  await call('a3', 'create_note', 'succeeded', 3, { outcome: 'approved', afterSeconds: 20 });
  await call('a1', 'create_note', 'expired', 1, { outcome: 'expired', afterSeconds: 1 });
  await call('a4', 'create_note', 'pending_approval', 1, { outcome: null });
  await call('a3', 'budget', 'approved', 3, { outcome: 'approved', afterSeconds: 40 });
  await call('b1', 'create_note', 'succeeded', 6, { outcome: 'approved', afterSeconds: 50 });
  await call('b2', 'create_note', 'succeeded', 10, { outcome: 'approved', afterSeconds: 1 });

  // Replies: alice's ttft 10, 20, … 100 ms; bob's 110 … 200 ms; one old (5000 ms) and one without a time.
  let m = 0;
  const message = (session: string, ttft: number | null, daysAgo: number) =>
    q(`INSERT INTO messages (id, session_id, turn, position, role, content, ttft_ms, created_at) VALUES ($1, $2, $3, 1, 'assistant', 'r', $4, ${ago(daysAgo)})`, [
      `msg${++m}`,
      session,
      m,
      ttft,
    ]);
  for (let i = 1; i <= 10; i++) await message(i % 2 ? 'a1' : 'a3', i * 10, 1);
  for (let i = 11; i <= 20; i++) await message('b1', i * 10, 1);
  await message('b2', 5000, 10);
  await message('a1', null, 1);
}

async function analytics(query: string, token: string) {
  const res = await stack.request('GET', `/api/v1/analytics${query}`, undefined, as(token));
  if (res.status !== 200) throw new Error(`analytics: ${res.status} ${res.text}`);
  return AnalyticsReport.parse(res.body);
}

test('an admin sees every session of the range: rates, averages, agents, tools, approvals, TTFT p95', async () => {
  const r = await analytics('?range=7d', admin);
  expect(r).toMatchObject({ range: '7d', scope: 'all' });
  expect(Date.parse(r.to) - Date.parse(r.from)).toBe(7 * 86_400_000);
  // a1, a2, a3, a4, b1 (b2 is 10 days old).
  expect(r.conversations).toEqual({
    total: 5,
    open: 1,
    resolved: 2,
    escalated: 1,
    abandoned: 1,
    resolutionRate: 2 / 4,
    escalationRate: 1 / 5,
    averageTurns: (3 + 1 + 2 + 0 + 4) / 5,
    averageCostUsd: expect.closeTo((0.3 + 0.1 + 0.2 + 0 + 0.4) / 5, 10),
  });
  expect(r.tokens).toEqual({ input: 380, output: 38 });
  expect(r.costUsd).toBeCloseTo(1, 8);
  expect(r.agents).toEqual([
    { agent: 'default', conversations: 3, turns: 5 },
    { agent: 'billing', conversations: 2, turns: 3 },
    { agent: 'router', conversations: 2, turns: 0 },
    { agent: 'shipping', conversations: 1, turns: 2 },
  ]);
  expect(r.toolCalls).toEqual([
    { tool: 'calculator', status: 'failed', calls: 1 },
    { tool: 'calculator', status: 'succeeded', calls: 5 },
    { tool: 'create_note', status: 'expired', calls: 1 },
    { tool: 'create_note', status: 'pending_approval', calls: 1 },
    { tool: 'create_note', status: 'rejected', calls: 1 },
    { tool: 'create_note', status: 'succeeded', calls: 3 },
  ]);
  // Decisions 10, 20, 30 (rejected), 40 (the budget's), 50 s: the median is 30 s.
  expect(r.approvals).toEqual({ requested: 7, approved: 4, rejected: 1, expired: 1, cancelled: 0, pending: 1, medianDecisionMs: 30_000 });
  // 20 replies of 10 … 200 ms: the nearest-rank p95 is the 19th, 190 ms.
  expect(r.ttft).toEqual({ replies: 20, p95Ms: 190 });
});

test('a user sees only their own sessions', async () => {
  const r = await analytics('?range=7d', alice);
  expect(r.scope).toBe('own');
  expect(r.conversations).toEqual({
    total: 4,
    open: 1,
    resolved: 1,
    escalated: 1,
    abandoned: 1,
    resolutionRate: 1 / 3,
    escalationRate: 1 / 4,
    averageTurns: (3 + 1 + 2 + 0) / 4,
    averageCostUsd: expect.closeTo((0.3 + 0.1 + 0.2 + 0) / 4, 10),
  });
  expect(r.tokens).toEqual({ input: 180, output: 18 });
  expect(r.agents).toEqual([
    { agent: 'default', conversations: 3, turns: 5 },
    { agent: 'billing', conversations: 1, turns: 1 },
    { agent: 'router', conversations: 1, turns: 0 },
  ]);
  expect(r.toolCalls).toEqual([
    { tool: 'calculator', status: 'failed', calls: 1 },
    { tool: 'calculator', status: 'succeeded', calls: 3 },
    { tool: 'create_note', status: 'expired', calls: 1 },
    { tool: 'create_note', status: 'pending_approval', calls: 1 },
    { tool: 'create_note', status: 'rejected', calls: 1 },
    { tool: 'create_note', status: 'succeeded', calls: 2 },
  ]);
  // Decisions 10, 20, 30, 40 s: the nearest-rank median is the 2nd, 20 s.
  expect(r.approvals).toEqual({ requested: 6, approved: 3, rejected: 1, expired: 1, cancelled: 0, pending: 1, medianDecisionMs: 20_000 });
  // 10 replies of 10 … 100 ms: the nearest-rank p95 is the 10th.
  expect(r.ttft).toEqual({ replies: 10, p95Ms: 100 });

  const nobody = await analytics('?range=7d', await stack.issueToken('nobody'));
  expect(nobody.conversations).toEqual({ total: 0, open: 0, resolved: 0, escalated: 0, abandoned: 0, resolutionRate: null, escalationRate: null, averageTurns: null, averageCostUsd: null });
  expect(nobody).toMatchObject({ agents: [], toolCalls: [], tokens: { input: 0, output: 0 }, costUsd: 0, ttft: { replies: 0, p95Ms: null } });
  expect(nobody.approvals).toEqual({ requested: 0, approved: 0, rejected: 0, expired: 0, cancelled: 0, pending: 0, medianDecisionMs: null });
});

test('the range moves the window: 1d, 30d and the default 7d', async () => {
  expect((await analytics('?range=1d', admin)).conversations.total).toBe(0);
  const month = await analytics('?range=30d', admin);
  expect(month.conversations).toMatchObject({ total: 6, resolved: 3, resolutionRate: 3 / 5 });
  expect(month.ttft).toEqual({ replies: 21, p95Ms: 200 });
  expect(month.approvals.medianDecisionMs).toBe(20_000);
  expect((await analytics('?range=365d', admin)).conversations.total).toBe(6);
  expect(await analytics('', admin)).toMatchObject({ range: '7d', conversations: { total: 5 } });
});

test('a range that is not 1d to 365d is refused with 422', async () => {
  for (const range of ['0d', '366d', 'abc', '7', '7h', '-1d', '1000d', '']) {
    const res = await stack.request('GET', `/api/v1/analytics?range=${range}`, undefined, as(admin));
    expect([range, res.status, res.body.error.code]).toEqual([range, 422, 'VALIDATION_ERROR']);
  }
});
