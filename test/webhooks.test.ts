import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Client, Connection } from '@temporalio/client';
import { openPool, type DatabasePool } from '../db/pool';
import { recordIncident } from '../db/incidents';
import { randomRunId } from '../db/runs';
import type { webhookDeliveryWorkflow } from '../workflows';
import { eventually, startStack, type Stack } from './support/stack';

/**
 * Webhooks of runs and incidents: signed, retried through Temporal, recorded per attempt; the run
 * metrics; and the run ID as trace ID (this stack exports its spans to the same receiver).
 */

const SECRET = 'test-webhook-secret';

interface Received {
  path: string;
  headers: http.IncomingHttpHeaders;
  body: string;
  answered: number;
}

/** A real receiver on 127.0.0.1: answers each path with its scripted statuses in turn (200 once they run out; 0 never answers). */
class Receiver {
  readonly received: Received[] = [];
  private readonly scripts = new Map<string, number[]>();
  private readonly server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      const path = req.url ?? '/';
      const answered = this.scripts.get(path)?.shift() ?? 200;
      this.received.push({ path, headers: req.headers, body, answered });
      // 0: never answer (a receiver that hangs).
      if (answered !== 0) res.writeHead(answered, { 'content-type': 'application/json' }).end('{}');
    });
  });

  async start(): Promise<string> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    return `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
  }

  answer(path: string, statuses: number[]): void {
    this.scripts.set(path, statuses);
  }

  at(path: string): Received[] {
    return this.received.filter((r) => r.path === path);
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}

/** The receiver's check, written here from the documented scheme, not with the server's code. */
function signatureIsValid(r: Received): boolean {
  const timestamp = String(r.headers['x-keel-timestamp']);
  const expected = Buffer.from(`sha256=${createHmac('sha256', SECRET).update(`${timestamp}.${r.body}`).digest('hex')}`);
  const given = Buffer.from(String(r.headers['x-keel-signature']));
  return expected.length === given.length && timingSafeEqual(expected, given) && Math.abs(Date.now() / 1000 - Number(timestamp)) < 300;
}

const receiver = new Receiver();
let base: string;
let stack: Stack;
let pool: DatabasePool;
beforeAll(async () => {
  base = await receiver.start();
  stack = await startStack({
    env: {
      KEEL_WEBHOOK_SECRET: SECRET,
      KEEL_WEBHOOK_ALLOW_HOSTS: '127.0.0.1',
      KEEL_OUTBOX_POLL_MS: '100',
      KEEL_WEBHOOK_MAX_ATTEMPTS: '3',
      KEEL_WEBHOOK_RETRY_INITIAL_MS: '200',
      KEEL_WEBHOOK_RETRY_MAX_MS: '500',
      KEEL_WEBHOOK_TIMEOUT_MS: '1000',
      KEEL_OUTBOX_LEASE_MS: '1000',
      KEEL_NOTIFY_WEBHOOK_URL: `${base}/incidents`,
      KEEL_RATE_REQUESTS_PER_TOKEN: '0',
      // Tracing on, exporting to the receiver: a request's span names its run.
      OTEL_EXPORTER_OTLP_ENDPOINT: `${base}/otel`,
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: '',
      OTEL_BSP_SCHEDULE_DELAY: '100',
    },
  });
  pool = await openPool(stack.env.DATABASE_URL!, 2);
});
afterAll(async () => {
  await pool?.end();
  await stack?.stop();
  await receiver.stop();
});

const submit = (body: Record<string, unknown>) => stack.request('POST', '/api/v1/runs', body);
const getRun = async (runId: string) => (await stack.request('GET', `/api/v1/runs/${runId}`)).body;
const webhookSettled = (runId: string, timeoutMs = 20_000) =>
  eventually(async () => {
    const run = await getRun(runId);
    return ['delivered', 'failed'].includes(run.webhook?.status) && run;
  }, timeoutMs, `the webhook of run ${runId}`);

test('a run\'s webhook is retried after a 500, then delivered once, signed, with the run as it ended', async () => {
  receiver.answer('/flaky', [500]);
  const res = await submit({ input: 'tell me when done', webhookUrl: `${base}/flaky` });
  expect(res.status).toBe(202);
  const run = await webhookSettled(res.body.runId);
  expect(run.status).toBe('done');
  expect(run.webhook).toEqual({
    url: `${base}/flaky`,
    status: 'delivered',
    attempts: [expect.objectContaining({ attempt: 1, outcome: 'failed', httpStatus: 500 }), expect.objectContaining({ attempt: 2, outcome: 'delivered', httpStatus: 200 })],
  });
  const posts = receiver.at('/flaky');
  expect(posts.map((p) => [p.headers['x-keel-attempt'], p.answered])).toEqual([['1', 500], ['2', 200]]);
  for (const post of posts) {
    expect(signatureIsValid(post)).toBe(true);
    expect(post.headers['x-keel-delivery']).toBe(`webhook-run-${res.body.runId}`);
    expect(post.headers['content-type']).toBe('application/json');
  }
  expect(posts[0]!.body).toBe(posts[1]!.body);
  const body = JSON.parse(posts[1]!.body);
  expect(body).toMatchObject({ type: 'run', run: { id: res.body.runId, status: 'done', sessionId: res.body.sessionId, output: { content: 'You said: tell me when done.' } } });
  // A tampered body fails the check.
  expect(signatureIsValid({ ...posts[1]!, body: posts[1]!.body.replace('done', 'error') })).toBe(false);
  // Handed to the outbox once: finalized, and nothing more arrives for it.
  const { rows } = await stack.db.query('SELECT finalized_at FROM runs WHERE id = $1', [res.body.runId]);
  expect(rows[0].finalized_at).not.toBeNull();
  const other = await submit({ input: 'a later run', webhookUrl: `${base}/later` });
  await webhookSettled(other.body.runId);
  expect(receiver.at('/flaky')).toHaveLength(2);
});

test('every end is reported (a cancelled run too); a refusal (4xx) is final and attempts run out on 5xx', async () => {
  const cancelled = await submit({ input: 'Save a note: cancel me', webhookUrl: `${base}/cancelled` });
  await eventually(async () => (await getRun(cancelled.body.runId)).status === 'waiting_approval');
  expect((await stack.request('POST', `/api/v1/runs/${cancelled.body.runId}/cancel`)).status).toBe(200);
  receiver.answer('/refuses', [410]);
  const refused = await submit({ input: 'refused hook', webhookUrl: `${base}/refuses` });
  receiver.answer('/down', [503, 503, 503, 503]);
  const down = await submit({ input: 'down hook', webhookUrl: `${base}/down` });

  expect((await webhookSettled(cancelled.body.runId)).webhook.status).toBe('delivered');
  expect(JSON.parse(receiver.at('/cancelled')[0]!.body).run).toMatchObject({ status: 'cancelled', cancelledBy: 'dev' });
  const refusedRun = await webhookSettled(refused.body.runId);
  expect(refusedRun.webhook).toMatchObject({ status: 'failed', attempts: [expect.objectContaining({ attempt: 1, outcome: 'refused', httpStatus: 410 })] });
  expect(receiver.at('/refuses')).toHaveLength(1);
  const downRun = await webhookSettled(down.body.runId);
  expect(downRun.webhook.attempts.map((a: { outcome: string; httpStatus: number }) => [a.outcome, a.httpStatus])).toEqual([['failed', 503], ['failed', 503], ['failed', 503]]);
  expect(downRun.webhook.status).toBe('failed');
  expect(receiver.at('/down')).toHaveLength(3);
});

test('webhook URLs: http and https only, no credentials, no private or loopback address unless allow-listed', async () => {
  for (const webhookUrl of ['ftp://example.com/hook', 'not a url', 'http://user:pw@example.com/hook', 'http://10.1.2.3/hook', 'http://localhost:8080/hook', 'http://[::1]/hook', 'http://169.254.169.254/latest']) {
    const res = await submit({ input: 'x', webhookUrl });
    expect([webhookUrl, res.status, res.body.error.code, res.body.error.details[0].field]).toEqual([webhookUrl, 422, 'VALIDATION_ERROR', 'webhookUrl']);
  }
  const { rows } = await stack.db.query(`SELECT count(*)::int AS n FROM runs WHERE webhook_url NOT LIKE $1`, [`${base}%`]);
  expect(rows[0].n).toBe(0);
});

test('an incident goes out through the outbox once: signed, and marked notified', async () => {
  const { incident } = await recordIncident(pool, {
    kind: 'test_incident',
    dedupeKey: `test:${Date.now()}`,
    summary: 'a test incident',
    detectedAt: new Date(),
    evidence: { why: 'testing' },
  });
  const posts = await eventually(async () => {
    const found = receiver.at('/incidents').filter((r) => JSON.parse(r.body).incident?.id === incident.id);
    return found.length > 0 && found;
  }, 20_000, 'the incident notification');
  expect(signatureIsValid(posts[0]!)).toBe(true);
  expect(posts[0]!.headers['x-keel-delivery']).toBe(`webhook-incident-${incident.id}`);
  expect(JSON.parse(posts[0]!.body)).toMatchObject({ type: 'incident', incident: { id: incident.id, kind: 'test_incident', summary: 'a test incident', evidence: { why: 'testing' } } });
  const row = await eventually(async () => {
    const { rows } = await stack.db.query('SELECT notified_at, notify_status FROM incidents WHERE id = $1', [incident.id]);
    return rows[0].notify_status === 'delivered' && rows[0];
  });
  expect(row.notified_at).not.toBeNull();
  expect(receiver.at('/incidents').filter((r) => JSON.parse(r.body).incident?.id === incident.id)).toHaveLength(1);
});

test('a run the outbox cannot finalize does not hold up the rest of its batch', async () => {
  // Its delivery cannot start (a workflow ID longer than Temporal takes). It ended first; both become claimable at once, so one claim takes both.
  const bad = 'x'.repeat(1100);
  const good = randomRunId();
  const insert = (id: string, path: string, endedMinutesAgo: number) =>
    stack.db.query(
      `INSERT INTO runs (id, owner_id, agent_id, input_digest, status, sent_at, finished_at, webhook_url, finalize_lease_until)
       VALUES ($1, 'dev', 'default', $1, 'done', now(), now() - $3 * interval '1 minute', $2, now() + interval '1 hour')`,
      [id, `${base}${path}`, endedMinutesAgo],
    );
  await insert(bad, '/never', 60);
  await insert(good, '/after-bad', 0);
  try {
    await stack.db.query(`UPDATE runs SET finalize_lease_until = NULL WHERE id = ANY($1)`, [[bad, good]]);
    expect((await webhookSettled(good)).webhook.status).toBe('delivered');
    expect(receiver.at('/after-bad')).toHaveLength(1);
    await stack.worker.waitForLine(/"runId":"x{1100}".*"outbox: could not finalize a run"/, 5_000);
    const { rows } = await stack.db.query('SELECT finalized_at FROM runs WHERE id = $1', [bad]);
    expect(rows[0].finalized_at).toBeNull();
    expect(receiver.at('/never')).toEqual([]);
  } finally {
    // Not a run the API could make: gone before the metrics test counts finalized runs.
    await stack.db.query('DELETE FROM runs WHERE id = $1', [bad]);
  }
});

test('a delivery whose last attempt ends without recording it (here: input the activity refuses) is settled failed; a delivered one stays delivered', async () => {
  const connection = await Connection.connect({ address: stack.env.TEMPORAL_ADDRESS! });
  const client = new Client({ connection });
  try {
    // Runs still going (the outbox leaves them alone), with the webhook status a delivery left.
    const runs = [
      { id: randomRunId(), before: 'pending', after: 'failed' },
      { id: randomRunId(), before: 'delivered', after: 'delivered' },
    ];
    for (const run of runs) {
      await stack.db.query(`INSERT INTO runs (id, owner_id, agent_id, input_digest, status, sent_at, webhook_url, webhook_status) VALUES ($1, 'dev', 'default', $1, 'running', now(), $2, $3)`, [
        run.id,
        `${base}/unused`,
        run.before,
      ]);
      const result = await client.workflow.execute<typeof webhookDeliveryWorkflow>('webhookDeliveryWorkflow', {
        taskQueue: stack.env.KEEL_TASK_QUEUE!,
        workflowId: `webhook-test-${run.id}`,
        args: [{ deliveryId: `webhook-test-${run.id}`, url: 'not a url', body: '{}', target: { kind: 'run', id: run.id }, checkAddress: true, timeoutMs: 1_000, retry: { maximumAttempts: 3, initialIntervalMs: 100, maximumIntervalMs: 100 } }],
      });
      expect(result).toEqual({ delivered: false });
    }
    const { rows } = await stack.db.query('SELECT id, webhook_status FROM runs WHERE id = ANY($1)', [runs.map((r) => r.id)]);
    expect(Object.fromEntries(rows.map((r) => [r.id, r.webhook_status]))).toEqual(Object.fromEntries(runs.map((r) => [r.id, r.after])));
    // No attempt could be made, so none recorded it.
    const attempts = await stack.db.query('SELECT count(*)::int AS n FROM webhook_deliveries WHERE target_id = ANY($1)', [runs.map((r) => r.id)]);
    expect(attempts.rows[0].n).toBe(0);
  } finally {
    await connection.close();
  }
});

test('the worker counts each finalized run once in keel_runs_total and keel_run_time_to_execute_seconds', async () => {
  const res = await submit({ input: 'count me' });
  await eventually(async () => {
    const { rows } = await stack.db.query('SELECT finalized_at FROM runs WHERE id = $1', [res.body.runId]);
    return rows[0].finalized_at !== null;
  });
  // Every run of this file has ended by now; the counts settle on the finalized runs, each counted once.
  const counted = await eventually(async () => {
    const { rows } = await stack.db.query(`SELECT status, count(*)::int AS n FROM runs WHERE finalized_at IS NOT NULL GROUP BY status ORDER BY status`);
    const text = await (await fetch(stack.workerMetricsUrl)).text();
    const value = (name: string, status: string) => Number(new RegExp(`^${name}\\{[^}]*status="${status}"[^}]*\\} (\\d+)`, 'm').exec(text)?.[1] ?? 0);
    const metrics = rows.map((r) => ({ status: r.status, n: value('keel_runs_total', r.status), tte: value('keel_run_time_to_execute_seconds_count', r.status) }));
    return rows.every((r, i) => metrics[i]!.n === r.n && metrics[i]!.tte === r.n) && rows;
  }, 5_000, 'the run metrics to match the finalized runs');
  expect(counted.find((r: { status: string }) => r.status === 'done')?.n).toBeGreaterThan(1);
});

/** Trace IDs of the spans exported to the receiver, by span name. */
function exportedSpans(): { traceId: string; name: string }[] {
  return receiver.at('/otel/v1/traces').flatMap((r) =>
    (JSON.parse(r.body).resourceSpans ?? []).flatMap((rs: any) => (rs.scopeSpans ?? []).flatMap((ss: any) => (ss.spans ?? []).map((sp: any) => ({ traceId: sp.traceId, name: sp.name })))),
  );
}

test('the run ID is the trace ID of the request that submitted it (a caller\'s own trace, or the API\'s span)', async () => {
  const traceId = randomBytes(16).toString('hex');
  const traceparent = (id: string) => `00-${id}-${randomBytes(8).toString('hex')}-01`;
  const continued = await stack.request('POST', '/api/v1/runs', { input: 'a traced run' }, { traceparent: traceparent(traceId) });
  expect([continued.status, continued.body.runId]).toEqual([202, traceId]);
  const own = await submit({ input: 'a caller without a trace' });
  await eventually(async () => exportedSpans().some((sp) => sp.traceId === own.body.runId && sp.name === 'POST /api/v1/runs'), 10_000, 'the span of the submitting request');
  // One trace, two runs: the second cannot take the same ID and gets a random one.
  const again = await stack.request('POST', '/api/v1/runs', { input: 'another run in the same trace' }, { traceparent: traceparent(traceId) });
  expect(again.body).toMatchObject({ created: true, runId: expect.stringMatching(/^[0-9a-f]{32}$/) });
  expect(again.body.runId).not.toBe(traceId);
  for (const runId of [continued.body.runId, own.body.runId, again.body.runId]) {
    await eventually(async () => (await getRun(runId)).status === 'done');
    await stack.worker.waitForLine(new RegExp(`"requestId":"${runId}".*"model reply committed"`), 5_000);
  }
});

// Last: it restarts the worker (and so its metrics).
test('a worker that dies during a delivery: the next attempt, on another worker, delivers it once under the same delivery ID', async () => {
  receiver.answer('/crash', [0]);
  const res = await submit({ input: 'survive a crash', webhookUrl: `${base}/crash` });
  await eventually(async () => receiver.at('/crash').length === 1, 20_000, 'the first attempt to reach the receiver');
  await stack.killWorker('SIGKILL');
  await stack.startWorker();
  const run = await webhookSettled(res.body.runId, 30_000);
  // The dead worker's attempt recorded nothing; the next one delivered.
  expect(run.webhook.status).toBe('delivered');
  expect(run.webhook.attempts).toEqual([expect.objectContaining({ attempt: 2, outcome: 'delivered', httpStatus: 200 })]);
  const posts = receiver.at('/crash');
  expect(posts.map((p) => [p.headers['x-keel-attempt'], p.headers['x-keel-delivery'], p.answered])).toEqual([
    ['1', `webhook-run-${res.body.runId}`, 0],
    ['2', `webhook-run-${res.body.runId}`, 200],
  ]);
  expect(posts[0]!.body).toBe(posts[1]!.body);
}, 60_000);
