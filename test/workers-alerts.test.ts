import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { MockActivityEnvironment } from '@temporalio/testing';
import pino from 'pino';
import { createAlertActivities, runOperationalAlertChecks, type AlertSummary, type AlertThresholds } from '../activities/alerts';
import { computeBuildVersion } from '../config/build-version';
import { createMetrics } from '../config/metrics';
import { openPool, type DatabasePool } from '../db/pool';
import { WorkerHeartbeat } from '../worker/heartbeat';
import { switchableProxy } from './support/tcp-proxy';
import { eventually, startStack, type Stack } from './support/stack';

/**
 * Worker heartbeats (GET /api/v1/workers), the build version, and the operational alerts
 * (stale workers, stuck turns) on a real stack: real Postgres, real Temporal, real worker and
 * API processes. The alert checks run here against the stack's database with small thresholds.
 */

const HOUR = 60 * 60_000;
/** The API flags, and the worker's own check reports, a worker silent this long. */
const STALE_MS = 3_000;
const silentLog = pino({ level: 'silent' });

let stack: Stack;
let pool: DatabasePool;
let adminToken: string;
/** What the build calls itself, worked out here without the code under test: package.json and the git binary. */
let expectedVersion: string;

beforeAll(async () => {
  stack = await startStack({ env: { KEEL_WORKER_HEARTBEAT_MS: '200', KEEL_ALERT_HEARTBEAT_STALE_MS: String(STALE_MS) } });
  pool = await openPool(stack.env.DATABASE_URL!, 3);
  adminToken = await stack.issueToken('ops', true);
  const packageVersion = (require('../package.json') as { version: string }).version;
  let sha: string | undefined;
  try {
    sha = execFileSync('git', ['rev-parse', '--short=7', 'HEAD'], { cwd: path.resolve(__dirname, '..'), encoding: 'utf8' }).trim();
  } catch {
    sha = undefined;
  }
  expectedVersion = sha ? `${packageVersion}+${sha}` : packageVersion;
});

afterAll(async () => {
  await pool?.end();
  await stack?.stop();
});

interface WorkerView {
  identity: string;
  buildVersion: string;
  taskQueue: string;
  turnsInFlight: number;
  turnsCompleted: number;
  startedAt: string;
  lastHeartbeatAt: string;
  stoppedAt: string | null;
  ageMs: number;
  stale: boolean;
}

async function workers(): Promise<WorkerView[]> {
  const res = await stack.request('GET', '/api/v1/workers', undefined, { authorization: `Bearer ${adminToken}` });
  expect(res.status).toBe(200);
  return res.body.workers as WorkerView[];
}

/** The listed worker of process `pid` (its identity starts with `pid@`). */
async function workerOf(pid: number): Promise<WorkerView | undefined> {
  return (await workers()).find((w) => w.identity.startsWith(`${pid}@`));
}

async function heartbeatRow(identity: string): Promise<{ last: Date; stopped: Date | null }> {
  const { rows } = await stack.db.query<{ last_heartbeat_at: Date; stopped_at: Date | null }>('SELECT last_heartbeat_at, stopped_at FROM worker_heartbeats WHERE identity = $1', [identity]);
  if (!rows[0]) throw new Error(`no heartbeat row for ${identity}`);
  return { last: rows[0].last_heartbeat_at, stopped: rows[0].stopped_at };
}

async function incidents(kind: string): Promise<{ dedupe_key: string; severity: string; summary: string; evidence: any; notified_at: Date | null }[]> {
  const { rows } = await stack.db.query('SELECT dedupe_key, severity, summary, evidence, notified_at FROM incidents WHERE kind = $1 ORDER BY created_at', [kind]);
  return rows;
}

async function alertCount(metrics: ReturnType<typeof createMetrics>, kind: string): Promise<number> {
  return (await metrics.alerts.get()).values.find((v) => v.labels.kind === kind)?.value ?? 0;
}

test('the build version: KEEL_BUILD_VERSION, else the package version with the commit a .git directory names', () => {
  const root = mkdtempSync(path.join(tmpdir(), 'keel-version-'));
  try {
    writeFileSync(path.join(root, 'package.json'), JSON.stringify({ version: '1.2.3' }));
    expect(computeBuildVersion(undefined, root)).toBe('1.2.3');
    expect(computeBuildVersion('2026.11.25-rc1', root)).toBe('2026.11.25-rc1');

    mkdirSync(path.join(root, '.git/refs/heads'), { recursive: true });
    writeFileSync(path.join(root, '.git/HEAD'), 'ref: refs/heads/main\n');
    writeFileSync(path.join(root, '.git/refs/heads/main'), 'abcdef0123456789abcdef0123456789abcdef01\n');
    expect(computeBuildVersion(undefined, root)).toBe('1.2.3+abcdef0');

    // A ref only in packed-refs (after `git gc`).
    writeFileSync(path.join(root, '.git/HEAD'), 'ref: refs/heads/release\n');
    writeFileSync(path.join(root, '.git/packed-refs'), '# pack-refs with: peeled fully-peeled sorted\n1111111222222233333334444444555555566666 refs/heads/release\n');
    expect(computeBuildVersion(undefined, root)).toBe('1.2.3+1111111');

    // A detached HEAD (CI checkouts).
    writeFileSync(path.join(root, '.git/HEAD'), '9999999888888877777776666666555555544444\n');
    expect(computeBuildVersion(undefined, root)).toBe('1.2.3+9999999');

    // A worktree: .git is a file naming the real git directory, whose commondir holds the refs.
    const worktree = path.join(root, 'wt');
    mkdirSync(path.join(root, '.git/worktrees/wt'), { recursive: true });
    mkdirSync(worktree);
    writeFileSync(path.join(worktree, 'package.json'), JSON.stringify({ version: '1.2.4' }));
    writeFileSync(path.join(worktree, '.git'), `gitdir: ${path.join(root, '.git/worktrees/wt')}\n`);
    writeFileSync(path.join(root, '.git/worktrees/wt/HEAD'), 'ref: refs/heads/main\n');
    writeFileSync(path.join(root, '.git/worktrees/wt/commondir'), '../..\n');
    expect(computeBuildVersion(undefined, worktree)).toBe('1.2.4+abcdef0');

    // An unreadable HEAD is no commit.
    writeFileSync(path.join(root, '.git/HEAD'), 'garbage');
    expect(computeBuildVersion(undefined, root)).toBe('1.2.3');
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});


// First of the tests on the stack: slonik leaves a 5 s timer behind a connection destroyed mid-query, which the later tests outlast.
test('a stop is not held up by a database that does not answer: it gives up after stopTimeoutMs', async () => {
  const proxy = await switchableProxy(new URL(stack.env.DATABASE_URL!));
  const lines: string[] = [];
  const log = pino({ level: 'info' }, new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString()), done()) }));
  const proxied = await openPool(proxy.url, 2);
  const heartbeat = new WorkerHeartbeat({ pool: proxied, identity: 'hb-unanswered', buildVersion: 'test', taskQueue: 'tq-heartbeat', everyMs: 100, turns: { inFlight: 0, completed: async () => 0 }, log, stopTimeoutMs: 1_000 });
  try {
    heartbeat.start();
    await eventually(async () => (await stack.db.query('SELECT 1 FROM worker_heartbeats WHERE identity = $1', ['hb-unanswered'])).rowCount, 5_000, 'the first heartbeat');
    proxy.set('unanswered');
    const stopStarted = Date.now();
    await heartbeat.stop();
    const took = Date.now() - stopStarted;
    expect(took).toBeGreaterThanOrEqual(900);
    expect(took).toBeLessThan(3_000);
    expect(lines.some((l) => l.includes('could not be marked stopped in time'))).toBe(true);
    const row = await stack.db.query('SELECT stopped_at FROM worker_heartbeats WHERE identity = $1', ['hb-unanswered']);
    expect(row.rows).toEqual([{ stopped_at: null }]);
  } finally {
    proxy.set('down');
    // Ending the pool closes each connection, which fails on the ones cut here.
    await proxied.end().catch(() => undefined);
    await proxy.close();
    // A worker row that is not stopped: the alert tests below must not see it.
    await stack.db.query("DELETE FROM worker_heartbeats WHERE identity = 'hb-unanswered'");
  }
});

test('heartbeats survive Postgres going away: logged once, retried on the next tick, written again when it is back', async () => {
  const proxy = await switchableProxy(new URL(stack.env.DATABASE_URL!));
  const lines: string[] = [];
  const log = pino({ level: 'info' }, new Writable({ write: (chunk: Buffer, _enc, done) => (lines.push(chunk.toString()), done()) }));
  const proxied = await openPool(proxy.url, 2);
  const heartbeat = new WorkerHeartbeat({ pool: proxied, identity: 'hb-outage', buildVersion: 'test', taskQueue: 'tq-heartbeat', everyMs: 100, turns: { inFlight: 3, completed: async () => 7 }, log });
  try {
    heartbeat.start();
    const row = async () => (await stack.db.query('SELECT turns_in_flight, turns_completed, last_heartbeat_at, stopped_at FROM worker_heartbeats WHERE identity = $1', ['hb-outage'])).rows[0];
    expect(await eventually(row, 5_000, 'the first heartbeat')).toMatchObject({ turns_in_flight: 3, turns_completed: '7', stopped_at: null });

    proxy.set('down');
    await eventually(async () => lines.some((l) => l.includes('worker heartbeat could not be written')), 10_000, 'the failure logged');
    const frozen = (await row()).last_heartbeat_at as Date;

    proxy.set('up');
    await eventually(async () => ((await row()).last_heartbeat_at as Date) > frozen, 15_000, 'heartbeats written again');
    expect(lines.filter((l) => l.includes('worker heartbeat written again'))).toHaveLength(1);

    await heartbeat.stop();
    const stopped = await row();
    expect(stopped.stopped_at).not.toBeNull();
    // Stopped means stopped: no tick writes after the mark.
    const marked = stopped.last_heartbeat_at as Date;
    expect((await row()).last_heartbeat_at).toEqual(marked);
  } finally {
    proxy.set('up');
    await heartbeat.stop();
    // As above: the connections the outage cut cannot be reset.
    await proxied.end().catch(() => undefined);
    await proxy.close();
    await stack.db.query("DELETE FROM worker_heartbeats WHERE identity = 'hb-outage'");
  }
});

test('a running worker is listed with a fresh heartbeat, its version and task queue, and counts its turns; /health reports the version', async () => {
  const pid = stack.worker.child.pid!;
  const first = await eventually(() => workerOf(pid), 20_000, 'the worker in GET /workers');
  expect(first).toMatchObject({ buildVersion: expectedVersion, taskQueue: stack.env.KEEL_TASK_QUEUE, stoppedAt: null, stale: false, turnsInFlight: 0 });
  expect(first.identity).toMatch(new RegExp(`^${pid}@.+/[0-9a-f]{8}$`));
  expect(first.ageMs).toBeLessThan(STALE_MS);
  // It keeps beating.
  await eventually(async () => Date.parse((await workerOf(pid))!.lastHeartbeatAt) > Date.parse(first.lastHeartbeatAt), 10_000, 'a later heartbeat');

  const health = await stack.request('GET', '/api/v1/health', undefined, { authorization: '' });
  expect(health.status).toBe(200);
  expect(health.body).toEqual({ status: 'ok', version: expectedVersion, checks: { temporal: true, postgres: true, worker: true } });

  // A turn is in flight while its model call runs on the worker, and counted once it is done.
  const sessionId = await stack.createSession();
  stack.model.script(sessionId, { firstTokenDelayMs: 2_000 });
  const before = (await workerOf(pid))!.turnsCompleted;
  expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'hello' })).status).toBe(202);
  await eventually(async () => (await workerOf(pid))?.turnsInFlight === 1, 10_000, 'one turn in flight');
  const after = await eventually(
    async () => {
      const w = await workerOf(pid);
      return w && w.turnsCompleted > before ? w : undefined;
    },
    20_000,
    'the turn counted as completed',
  );
  expect([after.turnsCompleted, after.turnsInFlight]).toEqual([before + 1, 0]);
  const done = await stack.db.query("SELECT data->>'status' AS status FROM session_events WHERE session_id = $1 AND type = 'turn.done'", [sessionId]);
  expect(done.rows).toEqual([{ status: 'completed' }]);
});

test('only admin tokens list workers', async () => {
  const res = await stack.request('GET', '/api/v1/workers');
  expect([res.status, res.body.error.code]).toEqual([403, 'FORBIDDEN']);
  const none = await stack.request('GET', '/api/v1/workers', undefined, { authorization: '' });
  expect(none.status).toBe(401);
});

test('a turn that hangs is reported stuck once, naming its session and turn; finished turns never are', async () => {
  const metrics = createMetrics('worker');
  const thresholds: AlertThresholds = { heartbeatStaleMs: HOUR - 1, turnStuckMs: 500, workersWindowMs: HOUR };
  const sessionId = await stack.createSession();
  const first = await stack.request('POST', `/api/v1/sessions/${sessionId}/chat`, { content: 'first', stream: false });
  expect(first.status).toBe(200);
  // Turn 2's model request is answered with nothing at all.
  stack.model.script(sessionId, { hangNext: 1 });
  expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'second' })).status).toBe(202);
  await eventually(async () => (await stack.db.query("SELECT 1 FROM session_events WHERE session_id = $1 AND type = 'stream.start' AND data->>'turn' = '2'", [sessionId])).rowCount, 10_000, "turn 2's stream.start");

  // Nothing is stuck for the default threshold.
  const early = await runOperationalAlertChecks({ pool, metrics, thresholds: { ...thresholds, turnStuckMs: 600_000 } });
  expect([early.stuckTurns, early.newIncidents]).toEqual([[], 0]);

  const found = await eventually(async () => {
    const summary = await runOperationalAlertChecks({ pool, metrics, thresholds });
    return summary.stuckTurns.length > 0 ? summary : undefined;
  }, 10_000, 'the stuck turn');
  // Only turn 2 of this session: turn 1, and the earlier test's completed turn, are done.
  expect(found.stuckTurns).toEqual([expect.objectContaining({ sessionId, turn: 2, streamed: true, queuedTurns: 0, newIncident: true })]);
  expect(found.stuckTurns[0]!.runningMs).toBeGreaterThan(500);
  expect([found.newIncidents, found.staleWorkers]).toEqual([1, []]);
  const recorded = await incidents('turn_stuck');
  expect(recorded).toEqual([expect.objectContaining({ dedupe_key: `turn_stuck:${sessionId}:2`, severity: 'critical', notified_at: null })]);
  expect(recorded[0]!.summary).toContain(sessionId);
  expect(recorded[0]!.evidence).toMatchObject({ sessionId, turn: 2, thresholdMs: 500, runningMs: found.stuckTurns[0]!.runningMs });
  expect(await alertCount(metrics, 'turn_stuck')).toBe(1);

  // Checked again: the same turn, no new incident, the counter unchanged.
  const again = await runOperationalAlertChecks({ pool, metrics, thresholds });
  expect(again.stuckTurns.map((t) => [t.sessionId, t.turn, t.newIncident])).toEqual([[sessionId, 2, false]]);
  expect(again.newIncidents).toBe(0);
  expect(await incidents('turn_stuck')).toHaveLength(1);
  expect(await alertCount(metrics, 'turn_stuck')).toBe(1);

  // Once the turn ends (cancelled here) it is no longer reported.
  const cancel = await stack.request('POST', `/api/v1/sessions/${sessionId}/cancel`, {});
  expect([cancel.status, cancel.body.cancelled]).toEqual([200, true]);
  await eventually(async () => (await stack.db.query("SELECT 1 FROM session_events WHERE session_id = $1 AND type = 'turn.done' AND data->>'turn' = '2'", [sessionId])).rowCount, 20_000, "turn 2's turn.done");
  const after = await runOperationalAlertChecks({ pool, metrics, thresholds });
  expect([after.stuckTurns, after.newIncidents]).toEqual([[], 0]);
});

test('a turn waiting for an approval is not stuck until the approval has expired', async () => {
  const metrics = createMetrics('worker');
  const thresholds: AlertThresholds = { heartbeatStaleMs: 2 * HOUR, turnStuckMs: 1_000, workersWindowMs: 3 * HOUR };
  const sessionId = await stack.createSession();
  expect((await stack.request('POST', `/api/v1/sessions/${sessionId}/messages`, { content: 'Save a note: buy milk' })).status).toBe(202);
  const required = await eventually(
    async () => (await stack.db.query("SELECT data FROM session_events WHERE session_id = $1 AND type = 'approval.required'", [sessionId])).rows[0]?.data,
    20_000,
    'the approval request',
  );
  const expiresAt = Date.parse(required.expiresAt as string);
  const ofThisSession = (summary: { stuckTurns: { sessionId: string; turn: number }[] }) => summary.stuckTurns.filter((t) => t.sessionId === sessionId).map((t) => t.turn);

  // A minute later the turn has run far past the threshold, but it waits on a person.
  const waiting = await runOperationalAlertChecks({ pool, metrics, thresholds, now: new Date(Date.now() + 60_000) });
  expect(ofThisSession(waiting)).toEqual([]);
  // Once the approval should have expired and the turn still has not moved on, it is stuck.
  const expired = await runOperationalAlertChecks({ pool, metrics, thresholds, now: new Date(expiresAt + 5_000) });
  expect(ofThisSession(expired)).toEqual([1]);

  const decided = await stack.request('POST', `/api/v1/sessions/${sessionId}/approvals/${required.toolCallId}`, { approved: false });
  expect(decided.status).toBe(200);
  await eventually(async () => (await stack.db.query("SELECT 1 FROM session_events WHERE session_id = $1 AND type = 'turn.done'", [sessionId])).rowCount, 20_000, 'the turn done');
  expect(ofThisSession(await runOperationalAlertChecks({ pool, metrics, thresholds, now: new Date(expiresAt + 5_000) }))).toEqual([]);
});

test('a killed worker goes stale and is reported once; a worker stopped cleanly never is', async () => {
  const metrics = createMetrics('worker');
  const killedPid = stack.worker.child.pid!;
  const killed = (await eventually(() => workerOf(killedPid), 10_000, 'the worker listed'))!;
  await stack.killWorker('SIGKILL');
  const lastBeat = (await heartbeatRow(killed.identity)).last;

  await stack.startWorker();
  const secondPid = stack.worker.child.pid!;
  // Time passes: the new worker writes heartbeats well after the killed one's last.
  const second = await eventually(
    async () => {
      const w = await workerOf(secondPid);
      return w && Date.parse(w.lastHeartbeatAt) > lastBeat.getTime() + 1_500 ? w : undefined;
    },
    30_000,
    'the new worker beating',
  );
  expect((await heartbeatRow(killed.identity)).last).toEqual(lastBeat);
  const listed = await eventually(
    async () => {
      const all = await workers();
      const k = all.find((w) => w.identity === killed.identity);
      return k?.stale ? all : undefined;
    },
    STALE_MS + 10_000,
    'the killed worker flagged stale',
  );
  expect(listed.find((w) => w.identity === second.identity)).toMatchObject({ stale: false, stoppedAt: null });

  const thresholds: AlertThresholds = { heartbeatStaleMs: 1_000, turnStuckMs: HOUR - 1, workersWindowMs: HOUR };
  // Checked 1.5 s after the killed worker's last heartbeat: it is stale, the new one is not.
  const first = await runOperationalAlertChecks({ pool, metrics, thresholds, now: new Date(lastBeat.getTime() + 1_500) });
  expect(first.staleWorkers).toEqual([
    expect.objectContaining({ identity: killed.identity, taskQueue: stack.env.KEEL_TASK_QUEUE, buildVersion: expectedVersion, lastHeartbeatAt: lastBeat.toISOString(), silentMs: 1_500, newIncident: true }),
  ]);
  expect(first.newIncidents).toBe(1);
  const recorded = await incidents('worker_stale');
  expect(recorded).toEqual([expect.objectContaining({ dedupe_key: `worker_stale:${killed.identity}:${lastBeat.toISOString()}`, notified_at: null })]);
  expect(recorded[0]!.evidence).toMatchObject({ identity: killed.identity, silentMs: 1_500, thresholdMs: 1_000 });
  expect(await alertCount(metrics, 'worker_stale')).toBe(1);

  // The new worker stops cleanly: it is marked stopped and never reported, however long it stays silent.
  await stack.killWorker('SIGTERM');
  const stopped = await heartbeatRow(second.identity);
  expect(stopped.stopped).not.toBeNull();
  const later = await runOperationalAlertChecks({ pool, metrics, thresholds, now: new Date(stopped.last.getTime() + 10_000) });
  expect(later.staleWorkers.map((w) => [w.identity, w.newIncident])).toEqual([[killed.identity, false]]);
  expect(later.newIncidents).toBe(0);

  // The activity the health-check workflow calls: the same, on the database clock.
  const activities = createAlertActivities({ pool, metrics, log: silentLog, thresholds });
  const viaActivity = await new MockActivityEnvironment().run<[], AlertSummary, typeof activities.checkOperationalAlerts>(activities.checkOperationalAlerts);
  expect(viaActivity.staleWorkers.map((w) => w.identity)).toEqual([killed.identity]);
  expect(viaActivity.newIncidents).toBe(0);
  expect(await incidents('worker_stale')).toHaveLength(1);
  expect(await alertCount(metrics, 'worker_stale')).toBe(1);
  expect((await workers()).find((w) => w.identity === second.identity)).toMatchObject({ stale: false, stoppedAt: expect.any(String) });
});
