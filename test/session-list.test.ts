import path from 'node:path';
import { randomUUID } from 'node:crypto';
import { eventually, startStack, type Stack } from './support/stack';

// GET /api/v1/sessions (docs/protocol.md, REST): the caller's sessions, newest first, a keyset page at a time.

let stack: Stack;
let alice: string;
let bob: string;
let admin: string;
beforeAll(async () => {
  stack = await startStack({ env: { KEEL_AGENTS_FILE: path.join(__dirname, 'fixtures/agents.yaml') } });
  [alice, bob, admin] = await Promise.all([stack.issueToken('alice'), stack.issueToken('bob'), stack.issueToken('ops', true)]);
});
afterAll(async () => {
  await stack?.stop();
});

const as = (token: string) => ({ authorization: `Bearer ${token}` });

interface Listed {
  id: string;
  title: string | null;
  agentId: string;
  agentVersion: number;
  ownerId: string;
  status: string;
  createdAt: string;
  lastActivityAt: string;
  pendingApprovals: number;
}

async function list(token: string, query = ''): Promise<{ sessions: Listed[]; nextCursor: string | null }> {
  const res = await stack.request('GET', `/api/v1/sessions${query}`, undefined, as(token));
  if (res.status !== 200) throw new Error(`list: ${res.status} ${res.text}`);
  return res.body;
}

async function listAll(token: string, query: string, limit: number): Promise<Listed[]> {
  const all: Listed[] = [];
  let cursor: string | null = null;
  do {
    const page: { sessions: Listed[]; nextCursor: string | null } = await list(token, `?limit=${limit}${query}${cursor ? `&cursor=${cursor}` : ''}`);
    expect(page.sessions.length).toBeLessThanOrEqual(limit);
    all.push(...page.sessions);
    cursor = page.nextCursor;
  } while (cursor);
  return all;
}

async function create(token: string, body: Record<string, unknown>): Promise<string> {
  const res = await stack.request('POST', '/api/v1/sessions', body, as(token));
  if (res.status !== 201) throw new Error(`create: ${res.status} ${res.text}`);
  return res.body.id as string;
}

/** A session row written in SQL at a chosen time (no workflow), for order and ties the API cannot make. */
async function rowAt(owner: string, createdAt: string, opts: { id?: string; agent?: string; status?: string } = {}): Promise<string> {
  const id = opts.id ?? `sl_${randomUUID().replace(/-/g, '')}`;
  await stack.db.query('INSERT INTO sessions (id, title, agent_id, agent_version, owner_id, created_at, status) VALUES ($1, $2, $3, 1, $4, $5, $6)', [
    id,
    `made at ${createdAt}`,
    opts.agent ?? 'default',
    owner,
    createdAt,
    opts.status ?? 'active',
  ]);
  return id;
}

test('newest first, paged by cursor without duplicates or gaps, including rows created in the same microsecond', async () => {
  const carol = await stack.issueToken('carol');
  const tie = '2024-03-01T10:00:00.123456Z';
  const expected = [
    await rowAt('carol', '2024-03-01T12:00:00Z'),
    await rowAt('carol', tie, { id: 'sl_tie_c' }),
    await rowAt('carol', tie, { id: 'sl_tie_b' }),
    await rowAt('carol', tie, { id: 'sl_tie_a' }),
    await rowAt('carol', '2024-03-01T09:59:59.999999Z'),
    await rowAt('carol', '2024-02-01T00:00:00Z'),
    await rowAt('carol', '2023-12-31T23:00:00Z'),
  ];
  // A session made through the API now is the newest of all.
  const fresh = await create(carol, { title: 'fresh' });
  expect((await list(carol)).sessions.map((s) => s.id)).toEqual([fresh, ...expected]);
  for (const limit of [1, 2, 3]) {
    expect((await listAll(carol, '', limit)).map((s) => s.id)).toEqual([fresh, ...expected]);
  }
  const firstPage = await list(carol, '?limit=8');
  expect(firstPage.nextCursor).not.toBeNull();
  expect(await list(carol, `?limit=8&cursor=${firstPage.nextCursor}`)).toEqual({ sessions: [], nextCursor: null });
  expect((await list(carol, '?limit=9')).nextCursor).toBeNull();

  const view = (await list(carol)).sessions[0]!;
  expect(view).toMatchObject({ id: fresh, title: 'fresh', agentId: 'default', ownerId: 'carol', status: 'active', pendingApprovals: 0 });
  expect(view.agentVersion).toEqual(expect.any(Number));
  expect(Date.parse(view.lastActivityAt)).toBeGreaterThanOrEqual(Date.parse(view.createdAt));
});

test('status and agent filters; expired sessions listed, deleted ones never', async () => {
  const dave = await stack.issueToken('dave');
  const active = await create(dave, { agentId: 'default' });
  const quick = await create(dave, { agentId: 'quick' });
  const expired = await rowAt('dave', '2024-01-01T00:00:00Z', { status: 'expired' });
  const deletedInSql = await rowAt('dave', '2024-01-02T00:00:00Z', { status: 'deleted' });
  const toDelete = await create(dave, { agentId: 'quick' });

  const ids = async (query = '') => (await listAll(dave, query, 100)).map((s) => s.id);
  expect(await ids()).toEqual([toDelete, quick, active, expired]);
  expect(await ids('&status=expired')).toEqual([expired]);
  expect(await ids('&status=active')).toEqual([toDelete, quick, active]);
  expect(await ids('&agent=quick')).toEqual([toDelete, quick]);
  expect(await ids('&agent=quick&status=expired')).toEqual([]);
  expect(await ids('&agent=nobody')).toEqual([]);

  expect((await stack.request('DELETE', `/api/v1/sessions/${toDelete}`, undefined, as(dave))).status).toBe(204);
  expect(await ids()).toEqual([quick, active, expired]);
  expect(await ids('&agent=quick')).toEqual([quick]);
  expect((await listAll(admin, '', 100)).map((s) => s.id)).not.toContain(toDelete);
  expect((await listAll(admin, '', 100)).map((s) => s.id)).not.toContain(deletedInSql);
});

test("a user sees only their own sessions; an admin sees everyone's", async () => {
  const mine = await create(alice, { title: 'alice 1' });
  const theirs = await create(bob, { title: 'bob 1' });
  const aliceIds = (await listAll(alice, '', 100)).map((s) => s.id);
  const bobIds = (await listAll(bob, '', 100)).map((s) => s.id);
  expect(aliceIds).toContain(mine);
  expect(aliceIds).not.toContain(theirs);
  expect(bobIds).toEqual([theirs]);
  const everyone = await listAll(admin, '', 7);
  const adminIds = everyone.map((s) => s.id);
  expect(adminIds).toEqual(expect.arrayContaining([mine, theirs]));
  expect(new Set(adminIds).size).toBe(adminIds.length);
  const { rows } = await stack.db.query("SELECT count(*)::int AS n FROM sessions WHERE status <> 'deleted'");
  expect(everyone).toHaveLength(rows[0].n);
  expect(everyone.map((s) => s.ownerId)).toEqual(expect.arrayContaining(['alice', 'bob']));
});

test('pending approvals are counted; a deleted session leaves the list and the approvals queue at once', async () => {
  const erin = await stack.issueToken('erin');
  const waiting = await create(erin, { title: 'waiting' });
  const idle = await create(erin, { title: 'idle' });
  const before = (await list(erin)).sessions.find((s) => s.id === waiting)!;
  const send = await stack.request('POST', `/api/v1/sessions/${waiting}/messages`, { content: 'Save a note: milk' }, as(erin));
  expect(send.status).toBe(202);
  const approvals = async () => (await stack.request('GET', '/api/v1/approvals', undefined, as(erin))).body.approvals as { toolCallId: string; sessionId: string }[];
  await eventually(async () => (await approvals()).some((a) => a.sessionId === waiting), 30_000, 'a pending approval');

  const listed = (await list(erin)).sessions;
  expect(listed.map((s) => [s.id, s.pendingApprovals])).toEqual([
    [idle, 0],
    [waiting, 1],
  ]);
  expect(Date.parse(listed[1]!.lastActivityAt)).toBeGreaterThan(Date.parse(before.lastActivityAt));
  // The same count for the admin, who lists everyone's.
  expect((await listAll(admin, '', 100)).find((s) => s.id === waiting)!.pendingApprovals).toBe(1);

  // An expired but undecided approval does not count (the workflow may not have resolved it yet).
  await stack.db.query("UPDATE tool_calls SET expires_at = now() - interval '1 second' WHERE session_id = $1 AND status = 'pending_approval'", [waiting]);
  expect((await list(erin)).sessions.find((s) => s.id === waiting)!.pendingApprovals).toBe(0);
  await stack.db.query("UPDATE tool_calls SET expires_at = now() + interval '10 minutes' WHERE session_id = $1 AND status = 'pending_approval'", [waiting]);
  expect((await list(erin)).sessions.find((s) => s.id === waiting)!.pendingApprovals).toBe(1);

  expect((await stack.request('DELETE', `/api/v1/sessions/${waiting}`, undefined, as(erin))).status).toBe(204);
  // Read right after the DELETE answers: the tool call may still be pending_approval in its row.
  const [afterList, afterApprovals, adminApprovals] = await Promise.all([
    list(erin),
    approvals(),
    stack.request('GET', '/api/v1/approvals', undefined, as(admin)).then((r) => r.body.approvals as { sessionId: string }[]),
  ]);
  expect(afterList.sessions.map((s) => s.id)).toEqual([idle]);
  expect(afterApprovals).toEqual([]);
  expect(adminApprovals.map((a) => a.sessionId)).not.toContain(waiting);
});

test('the approvals queue leaves out a deleted session even while its call is still pending_approval', async () => {
  const frank = await stack.issueToken('frank');
  const id = await create(frank, {});
  expect((await stack.request('POST', `/api/v1/sessions/${id}/messages`, { content: 'Save a note: milk' }, as(frank))).status).toBe(202);
  await eventually(async () => ((await stack.request('GET', '/api/v1/approvals', undefined, as(frank))).body.approvals as unknown[]).length === 1, 30_000, 'a pending approval');
  // Deleted in SQL, so the workflow never resolves the call: only the queue's own filter can leave it out.
  await stack.db.query("UPDATE sessions SET status = 'deleted', deleted_at = now() WHERE id = $1", [id]);
  const { rows } = await stack.db.query("SELECT count(*)::int AS n FROM tool_calls WHERE session_id = $1 AND status = 'pending_approval' AND expires_at > now()", [id]);
  expect(rows[0].n).toBe(1);
  expect((await stack.request('GET', '/api/v1/approvals', undefined, as(frank))).body.approvals).toEqual([]);
  expect((await list(frank)).sessions).toEqual([]);
});

test.each([
  ['?limit=0', 'limit'],
  ['?limit=101', 'limit'],
  ['?limit=ten', 'limit'],
  ['?status=deleted', 'status'],
  ['?status=open', 'status'],
  ['?agent=no%20spaces', 'agent'],
  ['?cursor=not-a-cursor', 'cursor'],
  [`?cursor=${Buffer.from(JSON.stringify({ at: 'yesterday', id: 'x' })).toString('base64url')}`, 'cursor'],
  ['?status=active&status=expired', 'status'],
])('422 VALIDATION_ERROR for %s', async (query, field) => {
  const res = await stack.request('GET', `/api/v1/sessions${query}`, undefined, as(alice));
  expect(res.status).toBe(422);
  expect(res.body.error.code).toBe('VALIDATION_ERROR');
  expect(JSON.stringify(res.body.error.details)).toContain(field);
});

test('without a token: 401', async () => {
  expect((await stack.request('GET', '/api/v1/sessions', undefined, { authorization: '' })).status).toBe(401);
});
