import { messageIdFor } from '../contracts/ids';
import { digestOf } from '../contracts/canonical';
import { runClientMessageId } from '../contracts/runs';
import { storeIncomingMessage } from '../db/messages';
import { openPool, type DatabasePool } from '../db/pool';
import { claimRun, randomRunId, releaseSendLease, setMessageId } from '../db/runs';
import { DEV_TOKEN, eventually, startStack, type Stack } from './support/stack';
import { SseClient, type SseEvent } from './support/sse-client';

/**
 * Background runs: submit, repeats and races, statuses, cancel, the run's event stream, runs the
 * API never sent, a backlog across a worker crash, and /slo. Where a request must die or fail
 * half-way, the test plays it with the real db functions it calls.
 */

const SLO = { p95: 30, p99: 45, success: 0.9, availability: 0.95 };

let stack: Stack;
let pool: DatabasePool;
beforeAll(async () => {
  stack = await startStack({
    env: {
      KEEL_OUTBOX_POLL_MS: '100',
      // Enough connections for the race test's requests to all wait inside their claim at once.
      KEEL_DB_POOL_SIZE: '12',
      // The tests poll GET /runs/:id; only the per-session message rate stays as configured.
      KEEL_RATE_REQUESTS_PER_TOKEN: '0',
      KEEL_RUN_SEND_LEASE_MS: '1000',
      KEEL_SLO_TTE_P95_SECONDS: String(SLO.p95),
      KEEL_SLO_TTE_P99_SECONDS: String(SLO.p99),
      KEEL_SLO_SUCCESS_RATE: String(SLO.success),
      KEEL_SLO_AVAILABILITY: String(SLO.availability),
      KEEL_SLO_MAX_WINDOW_MS: String(2 * 86_400_000),
    },
  });
  pool = await openPool(stack.env.DATABASE_URL!, 2);
});
afterAll(async () => {
  await pool?.end();
  await stack?.stop();
});

const auth = (token: string) => ({ authorization: `Bearer ${token}` });
const submit = (body: Record<string, unknown>, token = DEV_TOKEN) => stack.request('POST', '/api/v1/runs', body, auth(token));
const getRun = async (runId: string, token = DEV_TOKEN) => (await stack.request('GET', `/api/v1/runs/${runId}`, undefined, auth(token))).body;
const waitFor = (runId: string, statuses: string[], token = DEV_TOKEN, timeoutMs = 30_000) =>
  eventually(async () => {
    const run = await getRun(runId, token);
    return statuses.includes(run.status) && run;
  }, timeoutMs, `run ${runId} to be ${statuses.join('|')}`);

async function assistantReplies(sessionId: string): Promise<{ turn: number; content: string }[]> {
  const { rows } = await stack.db.query(`SELECT turn, content FROM messages WHERE session_id = $1 AND role = 'assistant' ORDER BY turn, position`, [sessionId]);
  return rows;
}

async function userMessages(sessionId: string): Promise<{ content: string; client_message_id: string | null }[]> {
  const { rows } = await stack.db.query(`SELECT content, client_message_id FROM messages WHERE session_id = $1 AND role = 'user' ORDER BY turn`, [sessionId]);
  return rows;
}

/** What the API's request stores before it sends (db/runs.ts claimRun), as user "dev" with an idempotency key. */
function claimAsRequest(input: string, sessionId: string | null, idempotencyKey: string) {
  return claimRun(pool, {
    id: randomRunId(),
    ownerId: 'dev',
    agentId: 'default',
    sessionId,
    inputDigest: digestOf({ agentId: 'default', sessionId, input }),
    input,
    idempotencyKey,
    dedupeWindowMs: 60_000,
    leaseMs: 60_000,
  });
}

async function pendingApproval(sessionId: string): Promise<string> {
  return eventually(async () => {
    const { rows } = await stack.db.query(`SELECT id FROM tool_calls WHERE session_id = $1 AND status = 'pending_approval'`, [sessionId]);
    return rows[0]?.id as string | undefined;
  });
}

describe('submit', () => {
  test('without a session: 202, a session made for the caller, and the run ends done with its reply', async () => {
    const res = await submit({ input: 'hello run' });
    expect(res.status).toBe(202);
    expect(res.body).toEqual({ runId: expect.stringMatching(/^[0-9a-f]{32}$/), sessionId: expect.any(String), created: true, status: 'queued' });
    const session = await stack.request('GET', `/api/v1/sessions/${res.body.sessionId}`);
    expect([session.status, session.body.ownerId]).toEqual([200, 'dev']);
    const run = await waitFor(res.body.runId, ['done']);
    expect(run).toMatchObject({ id: res.body.runId, traceId: res.body.runId, sessionId: res.body.sessionId, agentId: 'default', turn: 1, error: null });
    const replies = await assistantReplies(res.body.sessionId);
    expect(replies).toEqual([{ turn: 1, content: 'You said: hello run.' }]);
    expect(run.output).toEqual({ messageId: expect.any(String), content: 'You said: hello run.' });
    expect(run.usage).toEqual({ inputTokens: expect.any(Number), outputTokens: expect.any(Number), costUsd: expect.any(Number) });
    expect(run.usage.outputTokens).toBeGreaterThan(0);
    expect(Date.parse(run.finishedAt)).toBeGreaterThanOrEqual(Date.parse(run.startedAt));
    expect(Date.parse(run.startedAt)).toBeGreaterThanOrEqual(Date.parse(run.submittedAt));
    // The run ID is the turn's request ID: the worker's log lines for the turn carry it.
    await stack.worker.waitForLine(new RegExp(`"requestId":"${res.body.runId}".*"model reply committed"`), 5_000);
    await stack.api.waitForLine(new RegExp(`"runId":"${res.body.runId}".*"run submitted"`), 5_000);
  });

  test('into an existing session: 202 and the run is the session\'s next turn', async () => {
    const sessionId = await stack.createSession();
    await stack.request('POST', `/api/v1/sessions/${sessionId}/chat`, { content: 'first', stream: false });
    const res = await submit({ input: 'second', sessionId });
    expect([res.status, res.body.sessionId, res.body.created]).toEqual([202, sessionId, true]);
    const run = await waitFor(res.body.runId, ['done']);
    expect(run.turn).toBe(2);
    expect(run.output.content).toContain('You said: second.');
  });

  test("another user's session answers 404 SESSION_NOT_FOUND, and their runs are not visible", async () => {
    const sessionId = await stack.createSession();
    const mallory = await stack.issueToken('mallory');
    const res = await submit({ input: 'sneaky', sessionId }, mallory);
    expect([res.status, res.body.error.code]).toEqual([404, 'SESSION_NOT_FOUND']);
    const mine = await submit({ input: 'mine' });
    const seen = await stack.request('GET', `/api/v1/runs/${mine.body.runId}`, undefined, auth(mallory));
    expect([seen.status, seen.body.error.code]).toEqual([404, 'RUN_NOT_FOUND']);
    const listed = await stack.request('GET', '/api/v1/runs', undefined, auth(mallory));
    expect(listed.body.runs).toEqual([]);
    const cancel = await stack.request('POST', `/api/v1/runs/${mine.body.runId}/cancel`, undefined, auth(mallory));
    expect(cancel.status).toBe(404);
    const { rows } = await stack.db.query(`SELECT count(*)::int AS n FROM messages WHERE session_id = $1`, [sessionId]);
    expect(rows[0].n).toBe(0);
  });

  test('bad input gets stable codes', async () => {
    const cases: [Record<string, unknown>, string][] = [
      [{}, 'input'],
      [{ input: '   ' }, 'input'],
      [{ input: 'x', sessionId: 'bad id!' }, 'sessionId'],
      [{ input: 'x', idempotencyKey: 'k'.repeat(200) }, 'idempotencyKey'],
      [{ input: 'x', webhookUrl: 'https://example.com/hook' }, 'webhookUrl'], // no KEEL_WEBHOOK_SECRET on this stack
      [{ input: 'x', extra: 1 }, '(root)'],
    ];
    for (const [body, field] of cases) {
      const res = await submit(body);
      expect([res.status, res.body.error.code]).toEqual([422, 'VALIDATION_ERROR']);
      expect(res.body.error.details.map((d: { field: string }) => d.field)).toContain(field);
    }
    const unknownAgent = await submit({ input: 'x', agentId: 'no-such-agent' });
    expect([unknownAgent.status, unknownAgent.body.error.code]).toEqual([404, 'AGENT_NOT_FOUND']);
    for (const path of ['/api/v1/runs/nope', '/api/v1/runs/nope/events']) expect((await stack.request('GET', path)).status).toBe(422);
    expect((await stack.request('GET', `/api/v1/runs/${'0'.repeat(32)}`)).body.error.code).toBe('RUN_NOT_FOUND');
    expect((await stack.request('GET', '/api/v1/runs?status=nope')).status).toBe(422);
  });
});

test('a run the session refuses at submit (RATE_LIMIT_EXCEEDED) ends error at once and answers no repeat', async () => {
  const sessionId = await stack.createSession();
  for (let i = 0; i < 10; i++) expect((await submit({ input: `fill ${i}`, sessionId })).status).toBe(202);
  const refused = await submit({ input: 'one too many', sessionId, idempotencyKey: 'refused-1' });
  expect([refused.status, refused.body.error.code]).toEqual([429, 'RATE_LIMIT_EXCEEDED']);
  expect(refused.body.error.details).toEqual({ retryAfter: expect.any(Number), runId: expect.stringMatching(/^[0-9a-f]{32}$/) });
  const run = await getRun(refused.body.error.details.runId);
  expect(run).toMatchObject({ status: 'error', error: { code: 'RATE_LIMIT_EXCEEDED' }, sessionId });
  expect(run.transitions.map((t: { status: string }) => t.status)).toEqual(['queued', 'error']);
  // The key is free again: a retry makes a new run (refused again here, still within the window).
  const retry = await submit({ input: 'one too many', sessionId, idempotencyKey: 'refused-1' });
  expect(retry.body.error.details.runId).not.toBe(refused.body.error.details.runId);
});

describe('repeats', () => {
  test('the same idempotency key answers the same run: one turn, one reply; another input under the key is refused', async () => {
    const body = { input: 'keyed once', idempotencyKey: 'key-1' };
    const first = await submit(body);
    const again = await submit(body);
    expect([first.status, again.status]).toEqual([202, 202]);
    expect(again.body).toEqual({ ...first.body, created: false, status: expect.any(String) });
    await waitFor(first.body.runId, ['done']);
    const late = await submit(body);
    expect(late.body).toMatchObject({ runId: first.body.runId, created: false, status: 'done' });
    expect(await assistantReplies(first.body.sessionId)).toEqual([{ turn: 1, content: 'You said: keyed once.' }]);
    const reused = await submit({ ...body, input: 'something else' });
    expect([reused.status, reused.body.error.code, reused.body.error.details.runId]).toEqual([409, 'IDEMPOTENCY_KEY_REUSED', first.body.runId]);
    // Keys are per user.
    const other = await submit(body, await stack.issueToken('key-user'));
    expect(other.body.created).toBe(true);
    expect(other.body.runId).not.toBe(first.body.runId);
  });

  test('without a key, the same user, session and input answer the same run; another input or session makes a new one', async () => {
    const sessionId = await stack.createSession();
    const first = await submit({ input: 'same input', sessionId });
    const again = await submit({ input: 'same input', sessionId });
    expect(again.body).toMatchObject({ runId: first.body.runId, created: false });
    const differentInput = await submit({ input: 'other input', sessionId });
    expect(differentInput.body.runId).not.toBe(first.body.runId);
    const noSession = await submit({ input: 'same input' });
    expect(noSession.body.runId).not.toBe(first.body.runId);
    await waitFor(differentInput.body.runId, ['done']);
    await waitFor(first.body.runId, ['done']);
    expect((await assistantReplies(sessionId)).map((r) => r.content)).toEqual(['You said: same input.', expect.stringContaining('You said: other input.')]);
  });

  test('concurrent identical requests make one run and one reply (all of them held at the claim at once)', async () => {
    const sessionId = await stack.createSession();
    const N = 8;
    // Hold back inserts into runs: every request then stops inside its claim, each holding what it
    // holds there, and the test waits until all N wait at once before letting them go.
    const blocker = await stack.db.connect();
    let answers: { status: number; body: any }[];
    try {
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE runs IN SHARE ROW EXCLUSIVE MODE');
      const pending = Promise.all(Array.from({ length: N }, () => submit({ input: 'only once please', sessionId })));
      await eventually(async () => {
        // Waiting to claim (the claim's lock, or its insert); other writers of runs (the outbox, event hooks) wait too, and are not counted.
        const { rows } = await stack.db.query(
          `SELECT count(DISTINCT l.pid)::int AS n FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE NOT l.granted AND a.datname = current_database() AND (a.query LIKE '%pg_advisory_xact_lock%' OR a.query LIKE '%INSERT INTO runs %')`,
        );
        return rows[0].n === N;
      }, 10_000, `all ${N} requests to wait in their claim`);
      await blocker.query('COMMIT');
      answers = await pending;
    } finally {
      await blocker.query('ROLLBACK').catch(() => undefined);
      blocker.release();
    }
    expect(answers.map((a) => a.status)).toEqual(Array(N).fill(202));
    expect(new Set(answers.map((a) => a.body.runId)).size).toBe(1);
    expect(answers.filter((a) => a.body.created)).toHaveLength(1);
    const runId = answers[0]!.body.runId as string;
    await waitFor(runId, ['done']);
    const { rows } = await stack.db.query(`SELECT count(*)::int AS n FROM runs WHERE session_id = $1`, [sessionId]);
    expect(rows[0].n).toBe(1);
    expect(await assistantReplies(sessionId)).toEqual([{ turn: 1, content: 'You said: only once please.' }]);
  });

  test('a run whose submitter died before sending its message is sent by the next repeat', async () => {
    const sessionId = await stack.createSession();
    const runId = 'ab'.repeat(16);
    // The state a submitter leaves when it dies between storing the run and sending: queued, unsent, its lease run out.
    await stack.db.query(
      `INSERT INTO runs (id, owner_id, session_id, agent_id, input_digest, input, idempotency_key, send_lease_until) VALUES ($1, 'dev', $2, 'default', $3, 'after a crash', 'crashed-1', now() - interval '1 second')`,
      [runId, sessionId, digestOf({ agentId: 'default', sessionId, input: 'after a crash' })],
    );
    await stack.db.query(`INSERT INTO run_transitions (run_id, status, cause) VALUES ($1, 'queued', 'submit')`, [runId]);
    const repeat = await submit({ input: 'after a crash', sessionId, idempotencyKey: 'crashed-1' });
    expect(repeat.body).toMatchObject({ runId, created: false });
    await waitFor(runId, ['done']);
    expect(await assistantReplies(sessionId)).toEqual([{ turn: 1, content: 'You said: after a crash.' }]);
  });

  test('a repeat of a run whose message was stored before its send failed is not refused by the rate limit: the run goes on, one turn', async () => {
    const sessionId = await stack.createSession();
    const input = 'stored, then the send failed';
    // The first request named and stored the run's message, then its signal failed (SERVICE_UNAVAILABLE): it released its lease.
    const { run } = await claimAsRequest(input, sessionId, 'resend-1');
    const clientMessageId = runClientMessageId(run.id);
    const { message_id: messageId } = await setMessageId(pool, run.id, messageIdFor(sessionId, clientMessageId));
    await storeIncomingMessage(pool, { id: messageId!, sessionId, content: input, clientMessageId });
    await releaseSendLease(pool, run.id);
    // Other messages fill the session's rate limit meanwhile: a new message is refused now.
    for (let i = 0; i < 10; i++) expect((await submit({ input: `filler ${i}`, sessionId })).status).toBe(202);
    expect((await submit({ input: 'a new one', sessionId })).status).toBe(429);
    const repeat = await submit({ input, sessionId, idempotencyKey: 'resend-1' });
    expect([repeat.status, repeat.body.runId, repeat.body.created]).toEqual([202, run.id, false]);
    const done = await waitFor(run.id, ['done']);
    expect(done.transitions.map((t: { status: string }) => t.status)).toEqual(['queued', 'running', 'done']);
    // The key still answers that run; its message is in the session once, answered once.
    expect((await submit({ input, sessionId, idempotencyKey: 'resend-1' })).body).toMatchObject({ runId: run.id, created: false });
    expect((await userMessages(sessionId)).filter((m) => m.content === input)).toEqual([{ content: input, client_message_id: clientMessageId }]);
    expect((await assistantReplies(sessionId)).filter((r) => r.content.includes(`You said: ${input}.`))).toEqual([{ turn: done.turn, content: expect.any(String) }]);
  }, 60_000);
});

describe('runs whose message nobody sent', () => {
  test("the worker's outbox sends it once the send lease has run out by the grace: one turn, one reply", async () => {
    const sessionId = await stack.createSession();
    const input = 'sent by the outbox';
    // The request stored the run, then died before sending; its lease ran out long ago.
    const { run } = await claimAsRequest(input, sessionId, 'unsent-1');
    await stack.db.query(`UPDATE runs SET send_lease_until = now() - interval '1 hour' WHERE id = $1`, [run.id]);
    const done = await waitFor(run.id, ['done']);
    expect(done.transitions.map((t: { status: string }) => t.status)).toEqual(['queued', 'running', 'done']);
    await stack.worker.waitForLine(new RegExp(`"runId":"${run.id}".*"outbox: sent the message of a run the API did not send"`), 5_000);
    expect(await userMessages(sessionId)).toEqual([{ content: input, client_message_id: runClientMessageId(run.id) }]);
    expect(await assistantReplies(sessionId)).toEqual([{ turn: 1, content: `You said: ${input}.` }]);
    // Sent: the row no longer keeps the input, and a repeat answers the run.
    const { rows } = await stack.db.query(`SELECT input, sent_at FROM runs WHERE id = $1`, [run.id]);
    expect([rows[0].input, rows[0].sent_at]).toEqual([null, expect.any(Date)]);
    expect((await submit({ input, sessionId, idempotencyKey: 'unsent-1' })).body).toMatchObject({ runId: run.id, created: false, status: 'done' });
  });

  test('a run whose request died before making its session ends error SERVICE_UNAVAILABLE, and its key makes a new run', async () => {
    const { run } = await claimAsRequest('no session yet', null, 'unsent-2');
    await stack.db.query(`UPDATE runs SET send_lease_until = now() - interval '1 hour' WHERE id = $1`, [run.id]);
    const ended = await waitFor(run.id, ['error']);
    expect(ended).toMatchObject({ sessionId: null, error: { code: 'SERVICE_UNAVAILABLE' } });
    expect(ended.transitions.map((t: { status: string }) => t.status)).toEqual(['queued', 'error']);
    const retry = await submit({ input: 'no session yet', idempotencyKey: 'unsent-2' });
    expect(retry.body).toMatchObject({ created: true });
    expect(retry.body.runId).not.toBe(run.id);
    await waitFor(retry.body.runId, ['done']);
  });
});

describe('statuses', () => {
  test('a note run that is approved goes queued, running, waiting_approval, running, done, each step persisted in order', async () => {
    const res = await submit({ input: 'Save a note: buy milk' });
    const { runId, sessionId } = res.body;
    await waitFor(runId, ['waiting_approval']);
    const toolCallId = await pendingApproval(sessionId);
    const decided = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${toolCallId}`, { approved: true });
    expect(decided.status).toBe(200);
    const run = await waitFor(runId, ['done']);
    expect(run.transitions.map((t: { status: string }) => t.status)).toEqual(['queued', 'running', 'waiting_approval', 'running', 'done']);
    const times = run.transitions.map((t: { at: string }) => Date.parse(t.at));
    expect(times).toEqual([...times].sort((a, b) => a - b));
    expect(times[0]).toBe(Date.parse(run.submittedAt));
    expect(times.at(-1)).toBe(Date.parse(run.finishedAt));
    // The same changes reach the session's streams as run.progress events, with the tool calls of the turn.
    const { rows } = await stack.db.query(`SELECT data FROM session_events WHERE session_id = $1 AND type = 'run.progress' ORDER BY seq`, [sessionId]);
    expect(rows.map((r) => r.data)).toEqual([
      { runId, status: 'running' },
      { runId, status: 'running', step: 1, tool: 'create_note', toolCallId },
      { runId, status: 'waiting_approval', tool: 'create_note', toolCallId },
      { runId, status: 'running', toolCallId },
      { runId, status: 'done' },
    ]);
    // Usage is the whole turn's: both model calls.
    const { rows: usage } = await stack.db.query(`SELECT SUM(output_tokens)::int AS out FROM messages WHERE session_id = $1 AND role = 'assistant'`, [sessionId]);
    expect(run.usage.outputTokens).toBe(usage[0].out);
  });

  test('cancel: a run waiting on approval ends cancelled; a second cancel answers 409 RUN_ALREADY_FINISHED', async () => {
    const res = await submit({ input: 'Save a note: never mind' });
    await waitFor(res.body.runId, ['waiting_approval']);
    const cancelled = await stack.request('POST', `/api/v1/runs/${res.body.runId}/cancel`);
    expect([cancelled.status, cancelled.body.status, cancelled.body.cancelledBy]).toEqual([200, 'cancelled', 'dev']);
    const run = await getRun(res.body.runId);
    expect(run.transitions.map((t: { status: string }) => t.status)).toEqual(['queued', 'running', 'waiting_approval', 'cancelled']);
    expect(run.error).toMatchObject({ code: 'TURN_CANCELLED' });
    const again = await stack.request('POST', `/api/v1/runs/${res.body.runId}/cancel`);
    expect([again.status, again.body.error.code, again.body.error.details]).toEqual([409, 'RUN_ALREADY_FINISHED', { status: 'cancelled' }]);
  });

  test('cancel: a queued run ends cancelled at once, and its turn is cancelled when it starts (no reply)', async () => {
    const sessionId = await stack.createSession();
    stack.model.script(sessionId, { firstTokenDelayMs: 1_500 });
    const ahead = await submit({ input: 'ahead', sessionId });
    const queued = await submit({ input: 'behind', sessionId });
    await eventually(async () => (await getRun(queued.body.runId)).turn === 2);
    const cancelled = await stack.request('POST', `/api/v1/runs/${queued.body.runId}/cancel`);
    expect([cancelled.status, cancelled.body.status]).toEqual([200, 'cancelled']);
    await waitFor(ahead.body.runId, ['done']);
    const { rows } = await eventually(async () => {
      const found = await stack.db.query(`SELECT data FROM session_events WHERE session_id = $1 AND type = 'turn.done' AND (data->>'turn')::int = 2`, [sessionId]);
      return found.rows.length > 0 && found;
    });
    expect(rows[0].data).toMatchObject({ status: 'cancelled', cancelledBy: 'dev' });
    expect((await assistantReplies(sessionId)).map((r) => r.turn)).toEqual([1]);
    const run = await getRun(queued.body.runId);
    expect(run.status).toBe('cancelled');
    expect(run.transitions.map((t: { status: string }) => t.status)).toEqual(['queued', 'cancelled']);
  });

  test('cancel: a run cancelled while its request is still making its session is not sent', async () => {
    const key = 'cancel-mid-send';
    const blocker = await stack.db.connect();
    let posted: ReturnType<typeof submit>;
    try {
      // Hold back new sessions: the request stores its run, then waits to store the run's session.
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE sessions IN SHARE MODE');
      posted = submit({ input: 'cancelled mid-send', idempotencyKey: key });
      const runId = await eventually(async () => {
        const { rows } = await stack.db.query(`SELECT id FROM runs WHERE idempotency_key = $1`, [key]);
        const { rows: waiting } = await stack.db.query(
          `SELECT 1 FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid WHERE NOT l.granted AND a.datname = current_database() AND a.query LIKE '%INSERT INTO sessions%'`,
        );
        return rows.length > 0 && waiting.length > 0 && (rows[0].id as string);
      }, 10_000, 'the request to wait for its session');
      const cancelled = await stack.request('POST', `/api/v1/runs/${runId}/cancel`);
      expect([cancelled.status, cancelled.body.status]).toEqual([200, 'cancelled']);
      await blocker.query('COMMIT');
    } finally {
      await blocker.query('ROLLBACK').catch(() => undefined);
      blocker.release();
    }
    const res = await posted;
    expect([res.status, res.body.status]).toEqual([202, 'cancelled']);
    expect(await userMessages(res.body.sessionId)).toEqual([]);
    const run = await getRun(res.body.runId);
    expect(run.transitions.map((t: { status: string }) => t.status)).toEqual(['queued', 'cancelled']);
  });

  test('GET /runs lists the caller\'s runs newest first, filtered by status', async () => {
    const user = await stack.issueToken('lister');
    const a = await submit({ input: 'list a' }, user);
    const b = await submit({ input: 'list b' }, user);
    await waitFor(a.body.runId, ['done'], user);
    await waitFor(b.body.runId, ['done'], user);
    const list = await stack.request('GET', '/api/v1/runs?limit=10', undefined, auth(user));
    expect(list.body.runs.map((r: { id: string }) => r.id)).toEqual([b.body.runId, a.body.runId]);
    const none = await stack.request('GET', '/api/v1/runs?status=error', undefined, auth(user));
    expect(none.body.runs).toEqual([]);
    const one = await stack.request('GET', '/api/v1/runs?status=done&limit=1', undefined, auth(user));
    expect(one.body.runs.map((r: { id: string }) => r.id)).toEqual([b.body.runId]);
  });
});

describe('the run\'s event stream', () => {
  test('streams the events of the run\'s turn only, ends after its last, and resumes after a Last-Event-ID', async () => {
    const sessionId = await stack.createSession();
    stack.model.script(sessionId, { tokenDelayMs: 20 });
    const run = await submit({ input: 'What is 15 + 27?', sessionId });
    const sse = await SseClient.open(`${stack.base}/api/v1/runs/${run.body.runId}/events`, { token: DEV_TOKEN });
    const next = await submit({ input: 'the next one', sessionId });
    await sse.ended;
    const durable = sse.events.filter((e) => e.id !== undefined);
    expect(durable.map((e) => e.event)).toEqual([
      'message.accepted',
      'stream.start',
      'run.progress',
      'stream.end',
      'tool.call',
      'run.progress',
      'tool.result',
      'stream.start',
      'stream.end',
      'turn.done',
      'run.progress',
    ]);
    const ids = durable.map((e) => e.id!);
    expect(ids).toEqual([...ids].sort((a, b) => a - b));
    expect(durable[0]!.data.data).toMatchObject({ content: 'What is 15 + 27?', turn: 1 });
    expect(durable.at(-1)!.data.data).toEqual({ runId: run.body.runId, status: 'done' });
    expect(durable.find((e) => e.event === 'turn.done')!.data.data.content).toContain('42');
    expect(sse.events.some((e) => e.event === 'stream.delta')).toBe(true);
    // The next run's events (its message was accepted during this turn) are not in this stream.
    const all = await stack.db.query(`SELECT seq, type FROM session_events WHERE session_id = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq`, [sessionId, ids[0], ids.at(-1)]);
    expect(all.rows.length).toBeGreaterThan(durable.length);

    const toolCall = durable.find((e) => e.event === 'tool.call')!;
    const resumed = await SseClient.open(`${stack.base}/api/v1/runs/${run.body.runId}/events`, { token: DEV_TOKEN, headers: { 'last-event-id': String(toolCall.id) } });
    await resumed.ended;
    const strip = (events: SseEvent[]) => events.filter((e) => e.id !== undefined).map((e) => ({ id: e.id, event: e.event, data: e.data }));
    expect(strip(resumed.events)).toEqual(strip(durable.slice(durable.indexOf(toolCall) + 1)));
    // Past its last event the stream has nothing more: it ends at once.
    const over = await SseClient.open(`${stack.base}/api/v1/runs/${run.body.runId}/events?after=${ids.at(-1)}`, { token: DEV_TOKEN });
    await over.ended;
    expect(over.events).toEqual([]);
    await waitFor(next.body.runId, ['done']);
  });

  test("a deleted session's run: its stream answers 404 SESSION_NOT_FOUND, as the session's does", async () => {
    const res = await submit({ input: 'then the session is deleted' });
    await waitFor(res.body.runId, ['done']);
    expect((await stack.request('DELETE', `/api/v1/sessions/${res.body.sessionId}`)).status).toBe(204);
    for (const path of [`/api/v1/runs/${res.body.runId}/events`, `/api/v1/sessions/${res.body.sessionId}/events`]) {
      const answer = await stack.request('GET', path);
      expect([path, answer.status, answer.body?.error?.code]).toEqual([path, 404, 'SESSION_NOT_FOUND']);
    }
    // The run itself is still shown, without the deleted content.
    expect((await getRun(res.body.runId)).output).toEqual({ messageId: expect.any(String), content: null });
  });
});

test('a backlog of 20 runs in 4 sessions survives a worker crash: all done, in order per session, one reply each', async () => {
  const sessions = await Promise.all([1, 2, 3, 4].map(() => stack.createSession()));
  for (const s of sessions) stack.model.script(s, { firstTokenDelayMs: 400 });
  const runs: { runId: string; sessionId: string; input: string }[] = [];
  for (let i = 0; i < 20; i++) {
    const sessionId = sessions[i % sessions.length]!;
    const input = `backlog ${i}`;
    const res = await submit({ input, sessionId });
    expect(res.status).toBe(202);
    runs.push({ runId: res.body.runId, sessionId, input });
  }
  const ids = runs.map((r) => r.runId);
  const doneCount = async () => (await stack.db.query(`SELECT count(*)::int AS n FROM runs WHERE id = ANY($1) AND status = 'done'`, [ids])).rows[0].n as number;
  // Killed once every message has its turn (persistence activities have no heartbeat: one in flight at the kill would be retried only after its 30 s time-out).
  const accepted = async () => (await stack.db.query(`SELECT count(*)::int AS n FROM runs WHERE id = ANY($1) AND turn IS NOT NULL`, [ids])).rows[0].n as number;
  await eventually(async () => (await accepted()) === 20 && (await doneCount()) >= 2, 30_000, 'the first runs to finish');
  await stack.killWorker('SIGKILL');
  const doneAtCrash = await doneCount();
  expect(doneAtCrash).toBeLessThan(20);
  await stack.startWorker();
  await eventually(async () => (await doneCount()) === 20, 90_000, 'every run to finish');

  const byId = new Map<string, any>();
  for (const r of runs) byId.set(r.runId, await getRun(r.runId));
  for (const sessionId of sessions) {
    const mine = runs.filter((r) => r.sessionId === sessionId).map((r) => ({ ...r, run: byId.get(r.runId) }));
    // Submission order is turn order and finishing order.
    expect(mine.map((r) => r.run.turn)).toEqual([1, 2, 3, 4, 5]);
    const finished = mine.map((r) => Date.parse(r.run.finishedAt));
    expect(finished).toEqual([...finished].sort((a, b) => a - b));
    // One reply per run, each answering its own input.
    const replies = await assistantReplies(sessionId);
    expect(replies.map((r) => r.turn)).toEqual([1, 2, 3, 4, 5]);
    mine.forEach((r, i) => {
      expect(replies[i]!.content).toContain(`You said: ${r.input}.`);
      expect(r.run.output.content).toBe(replies[i]!.content);
    });
  }
}, 150_000);

describe('/slo', () => {
  const platform = new Set(['LLM_TIMEOUT', 'LLM_RATE_LIMIT', 'LLM_API_ERROR', 'LLM_AUTH_ERROR', 'SERVICE_UNAVAILABLE', 'INTERNAL_ERROR']);
  const nearestRank = (sorted: number[], p: number) => sorted[Math.ceil(p * sorted.length) - 1]!;

  test('counts, rates and time-to-execute percentiles match the runs made, with a verdict per objective', async () => {
    const user = await stack.issueToken('slo-user');
    const session = async () => (await stack.request('POST', '/api/v1/sessions', {}, auth(user))).body.id as string;
    const made: string[] = [];
    for (const input of ['slo one', 'slo two', 'slo three']) made.push((await submit({ input }, user)).body.runId);
    const failing = await session();
    stack.model.script(failing, { failNext: { count: 10, status: 500 } });
    made.push((await submit({ input: 'this fails', sessionId: failing }, user)).body.runId);
    const filtered = await session();
    stack.model.script(filtered, { contentFilter: true });
    made.push((await submit({ input: 'this is filtered', sessionId: filtered }, user)).body.runId);
    const toCancel = (await submit({ input: 'Save a note: cancel me' }, user)).body.runId as string;
    made.push(toCancel);
    await waitFor(toCancel, ['waiting_approval'], user);
    expect((await stack.request('POST', `/api/v1/runs/${toCancel}/cancel`, undefined, auth(user))).status).toBe(200);
    const runs = await Promise.all(made.map((id) => waitFor(id, ['done', 'error', 'cancelled'], user)));

    const res = await stack.request('GET', '/api/v1/slo?window=1h', undefined, auth(user));
    expect(res.status).toBe(200);
    const count = (status: string) => runs.filter((r) => r.status === status).length;
    const done = count('done');
    const error = count('error');
    const ended = runs.length;
    const platformFailures = runs.filter((r) => r.status === 'error' && platform.has(r.error.code)).length;
    expect([done, error, count('cancelled'), platformFailures]).toEqual([3, 2, 1, 1]);
    const tte = runs
      .filter((r) => r.status === 'done')
      .map((r) => (Date.parse(r.finishedAt) - Date.parse(r.submittedAt)) / 1000)
      .sort((a, b) => a - b);
    expect(res.body).toMatchObject({ window: '1h', scope: 'own' });
    expect(res.body.runs).toEqual({ total: 6, byStatus: { queued: 0, running: 0, waiting_approval: 0, done, error, cancelled: 1 }, platformFailures, overdue: 0 });
    expect(res.body.successRate).toBeCloseTo(done / (done + error), 6);
    expect(res.body.availability).toBeCloseTo((ended - platformFailures) / ended, 6);
    expect(res.body.timeToExecuteSeconds.count).toBe(3);
    for (const [key, p] of [['p50', 0.5], ['p95', 0.95], ['p99', 0.99]] as const) expect(res.body.timeToExecuteSeconds[key]).toBeCloseTo(nearestRank(tte, p), 2);
    const o = res.body.objectives;
    expect([o.timeToExecuteP95.target, o.timeToExecuteP99.target, o.successRate.target, o.availability.target]).toEqual([SLO.p95, SLO.p99, SLO.success, SLO.availability]);
    expect(o.timeToExecuteP95.met).toBe(nearestRank(tte, 0.95) <= SLO.p95);
    expect(o.successRate.met).toBe(done / (done + error) >= SLO.success);
    expect(o.availability.met).toBe((ended - platformFailures) / ended >= SLO.availability);
    expect(o.successRate.met).toBe(false);
  }, 60_000);

  test('runs that never finish count: overdue ones miss time to execute, and queued or running ones are unavailable', async () => {
    const user = await stack.issueToken('slo-stuck');
    const quick = await waitFor((await submit({ input: 'slo quick' }, user)).body.runId, ['done'], user);
    // A worker outage: runs sent long ago that never started or never ended; one waits on an approver; one is young.
    const stuck = async (status: string, ageSeconds: number) =>
      stack.db.query(`INSERT INTO runs (id, owner_id, agent_id, input_digest, status, sent_at, created_at) VALUES ($1, 'slo-stuck', 'default', $1, $2, now(), now() - $3 * interval '1 second')`, [
        randomRunId(),
        status,
        ageSeconds,
      ]);
    await stuck('queued', SLO.p99 + 30);
    await stuck('running', SLO.p99 + 20);
    await stuck('waiting_approval', SLO.p99 + 10);
    await stuck('queued', 1);
    const res = await stack.request('GET', '/api/v1/slo?window=1h', undefined, auth(user));
    expect(res.body.runs).toEqual({ total: 5, byStatus: { queued: 2, running: 1, waiting_approval: 1, done: 1, error: 0, cancelled: 0 }, platformFailures: 0, overdue: 3 });
    // Served: the done run; the overdue queued and running ones were not; the approver's wait and the young run are left out.
    expect(res.body.availability).toBeCloseTo(1 / 3, 6);
    expect(res.body.successRate).toBe(1);
    // Measured: the done run's time, and the overdue ones' age so far (at least their age at insert).
    const quickSeconds = (Date.parse(quick.finishedAt) - Date.parse(quick.submittedAt)) / 1000;
    const tte = res.body.timeToExecuteSeconds;
    expect(tte.count).toBe(4);
    expect(quickSeconds).toBeLessThan(SLO.p99);
    expect(tte.p50).toBeGreaterThanOrEqual(SLO.p99 + 10);
    expect(tte.p50).toBeLessThan(SLO.p99 + 20);
    for (const p of [tte.p95, tte.p99]) {
      expect(p).toBeGreaterThanOrEqual(SLO.p99 + 30);
      expect(p).toBeLessThan(SLO.p99 + 40);
    }
    const o = res.body.objectives;
    expect([o.timeToExecuteP95.met, o.timeToExecuteP99.met, o.successRate.met, o.availability.met]).toEqual([false, false, true, false]);
  });

  test('no runs in the window: null values and no verdict; the window is checked', async () => {
    const nobody = await stack.issueToken('nobody');
    const res = await stack.request('GET', '/api/v1/slo?window=15m', undefined, auth(nobody));
    expect(res.status).toBe(200);
    expect(res.body.runs.total).toBe(0);
    expect([res.body.successRate, res.body.availability, res.body.timeToExecuteSeconds.p95]).toEqual([null, null, null]);
    for (const objective of Object.values(res.body.objectives) as { value: unknown; met: unknown }[]) expect([objective.value, objective.met]).toEqual([null, null]);
    for (const window of ['abc', '0h', '3d', '1w']) {
      const bad = await stack.request('GET', `/api/v1/slo?window=${window}`, undefined, auth(nobody));
      expect([bad.status, bad.body.error.code, bad.body.error.details[0].field]).toEqual([422, 'VALIDATION_ERROR', 'window']);
    }
  });
});
