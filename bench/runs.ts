import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Client as PgClient } from 'pg';
import { LocalModelServer } from '../model-server/server';
import { keelEnv } from './keel-env';
import { startEmbeddedPostgres, startTemporalDevServer } from '../scripts/services';
import { spawnEntry } from '../test/support/processes';
import { round, summarize } from './stats';

/**
 * Background runs and releases at default settings (docs/benchmarks.md):
 *   - RUNS runs submitted at once across SESSIONS sessions: drain time, time to execute
 *     (submit → done, from the runs table) p50/p95/p99, runs/s, and that each ran once;
 *   - rollback time: activation of a version whose model calls fail → the previous version
 *     active again, found by the activation's watch, then by the Schedule alone (watch off).
 *
 *   npx tsx bench/runs.ts [--runs 200] [--sessions 20] [--ttft 200] [--tokens 20] [--token-delay 10] [--no-schedule]
 */

const { values: args } = parseArgs({
  options: {
    runs: { type: 'string', default: '200' },
    sessions: { type: 'string', default: '20' },
    ttft: { type: 'string', default: '200' },
    'token-delay': { type: 'string', default: '10' },
    tokens: { type: 'string', default: '20' },
    'no-schedule': { type: 'boolean', default: false },
  },
});
const RUNS = Number(args.runs);
const SESSIONS = Number(args.sessions);
const MODEL_TTFT_MS = Number(args.ttft);
const TOKEN_DELAY_MS = Number(args['token-delay']);
const TOKENS = Number(args.tokens);
const log = (s: string) => console.error(`[bench:runs] ${s}`);
const ADMIN_KEY = 'bench-admin-key';
const pause = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function json(res: Response): Promise<any> {
  const text = await res.text();
  if (!res.ok) throw new Error(`${res.status} ${text}`);
  return JSON.parse(text);
}

async function main() {
  const dataDir = path.join(os.tmpdir(), `keel-bench-runs-${process.pid}`);
  log('starting Temporal and Postgres');
  const temporal = await startTemporalDevServer({ port: 0, headless: true, log });
  const pg = await startEmbeddedPostgres({ dataDir, port: 0, persistent: false, log });
  const reply = Array.from({ length: TOKENS }, (_, i) => `tok${i}`).join(' ');
  // The pace for every request; the fixed reply only for the runs' sessions (below), so the health
  // check's probes get the offline model's real answers (a calculator call, then its result).
  const model = new LocalModelServer({ defaults: { firstTokenDelayMs: MODEL_TTFT_MS, tokenDelayMs: TOKEN_DELAY_MS } });
  const { url: modelUrl } = await model.start();
  // Default settings everywhere but what a benchmark must set: where things are, and the per-session message rate.
  const env = {
    ...(await keelEnv({ temporalAddress: temporal.address, databaseUrl: pg.url, modelUrl, taskQueue: 'bench-runs', adminKey: ADMIN_KEY })),
    KEEL_DB_POOL_SIZE: '20',
    // Ten runs go to each session at once: more than the per-session chat rate (10 per 10 s) lets through.
    KEEL_RATE_MESSAGES_PER_SESSION: '0',
  };
  const worker = spawnEntry('worker/main.ts', env);
  const api = spawnEntry('api/main.ts', env);
  const db = new PgClient({ connectionString: pg.url });
  try {
    await worker.waitForLine(/worker started/, 60_000);
    const port = Number((await api.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/, 60_000))[1]);
    const base = `http://127.0.0.1:${port}`;
    await db.connect();
    const call = (token: string, method: string, route: string, body?: unknown) =>
      fetch(`${base}/api/v1${route}`, { method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, ...(body === undefined ? {} : { body: JSON.stringify(body) }) }).then(json);
    const issue = async (userId: string, admin = false) =>
      (await fetch(`${base}/api/v1/admin/tokens`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-api-key': ADMIN_KEY }, body: JSON.stringify({ userId, admin }) }).then(json)).token as string;

    // --- runs ---------------------------------------------------------------------------------
    const users = await Promise.all(Array.from({ length: SESSIONS }, (_, i) => issue(`bench-user-${i}`)));
    const sessions = await Promise.all(users.map(async (token) => ({ token, id: (await call(token, 'POST', '/sessions', { title: 'bench runs' })).id as string })));
    for (const s of sessions) model.script(s.id, { reply });
    // Warm-up: one run per session, not measured.
    const warm = await Promise.all(sessions.map((s) => call(s.token, 'POST', '/runs', { input: 'warm up', sessionId: s.id })));
    await waitFinished(db, warm.map((w) => w.runId as string));
    log(`${RUNS} runs across ${SESSIONS} sessions, model TTFT ${MODEL_TTFT_MS} ms, ${TOKENS} tokens every ${TOKEN_DELAY_MS} ms`);
    const started = performance.now();
    const submitted = await Promise.all(
      Array.from({ length: RUNS }, (_, i) => {
        const s = sessions[i % SESSIONS]!;
        return call(s.token, 'POST', '/runs', { input: `run ${i}`, sessionId: s.id, idempotencyKey: `bench-${i}` });
      }),
    );
    const submitMs = performance.now() - started;
    const ids = submitted.map((r) => r.runId as string);
    await waitFinished(db, ids);
    const drainS = (performance.now() - started) / 1000;
    const { rows } = await db.query(
      `SELECT r.status, EXTRACT(EPOCH FROM (r.finished_at - r.created_at)) * 1000 AS tte_ms,
              (SELECT count(*) FROM messages m WHERE m.session_id = r.session_id AND m.turn = r.turn AND m.role = 'assistant' AND m.tool_calls IS NULL) AS replies
       FROM runs r WHERE r.id = ANY($1)`,
      [ids],
    );
    const statuses: Record<string, number> = {};
    for (const r of rows) statuses[r.status] = (statuses[r.status] ?? 0) + 1;
    const tte = summarize(rows.filter((r) => r.status === 'done').map((r) => Number(r.tte_ms)));
    const notOnce = rows.filter((r) => r.status === 'done' && Number(r.replies) !== 1).length;
    // As an admin: every user's runs (the warm-up ones too).
    const admin = await issue('bench-ops', true);
    const slo = await call(admin, 'GET', '/slo?window=1h');

    // --- rollback -------------------------------------------------------------------------------
    // Each on its own agent: a second automatic rollback of one agent within the health window is
    // held back on purpose (it looks like an outage), so the Schedule's case uses another agent.
    const probe = (await call(admin, 'GET', '/agents/default/versions')).versions[0].definition.healthChecks;
    const rollback = async (agentId: string, watch: boolean) => {
      const current = await call(admin, 'GET', `/agents/${agentId}/versions`);
      const good = current.release.activeVersion as number;
      const definition = current.versions.find((v: { version: number }) => v.version === good).definition;
      const broken = await call(admin, 'POST', `/agents/${agentId}/versions`, { ...definition, healthChecks: probe, systemPrompt: `${definition.systemPrompt} [keel-misbehave: error]` });
      const activatedAt = performance.now();
      await call(admin, 'POST', `/agents/${agentId}/activate`, { version: broken.version, watch });
      for (;;) {
        const now = await call(admin, 'GET', `/agents/${agentId}/versions`);
        if (now.release.activeVersion === good) {
          const ms = performance.now() - activatedAt;
          const incident = (await call(admin, 'GET', `/incidents?kind=release_rolled_back&agentId=${agentId}`)).incidents.find((i: { version: number }) => i.version === broken.version);
          return { ms: Math.round(ms), detectToRollbackMs: incident ? Date.parse(incident.rolledBackAt) - Date.parse(incident.detectedAt) : null };
        }
        if (performance.now() - activatedAt > 5 * 60_000) throw new Error('no rollback within 5 minutes');
        await pause(100);
      }
    };
    log('rollback by the activation\'s watch');
    const byWatch = await rollback('default', true);
    const bySchedule = args['no-schedule'] ? null : (log('rollback by the Schedule alone (up to a minute)'), await rollback('interrupter', false));

    console.log(
      JSON.stringify(
        {
          command: `npx tsx bench/runs.ts --runs ${RUNS} --sessions ${SESSIONS} --ttft ${MODEL_TTFT_MS} --token-delay ${TOKEN_DELAY_MS} --tokens ${TOKENS}`,
          machine: `${os.cpus().length} cores, ${round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
          runs: {
            submitted: RUNS,
            submitAllMs: Math.round(submitMs),
            drainSeconds: round(drainS, 2),
            runsPerSecond: round(RUNS / drainS, 1),
            statuses,
            notAnsweredExactlyOnce: notOnce,
            tteMs: { p50: Math.round(tte.p50), p95: Math.round(tte.p95), p99: Math.round(tte.p99), max: Math.round(tte.max) },
            sloEndpoint: { runs: slo.runs.total, successRate: slo.successRate, availability: slo.availability, timeToExecuteSeconds: slo.timeToExecuteSeconds, met: Object.fromEntries(Object.entries(slo.objectives as Record<string, { met: boolean | null }>).map(([k, v]) => [k, v.met])) },
          },
          rollbackMs: { byWatch, bySchedule },
        },
        null,
        2,
      ),
    );
  } finally {
    await db.end().catch(() => undefined);
    await Promise.all([worker.kill(), api.kill()]);
    await model.stop();
    await pg.stop();
    await temporal.stop();
  }
}

async function waitFinished(db: PgClient, ids: string[]): Promise<void> {
  const deadline = Date.now() + 10 * 60_000;
  for (;;) {
    const { rows } = await db.query(`SELECT count(*)::int AS n FROM runs WHERE id = ANY($1) AND status IN ('done', 'error', 'cancelled')`, [ids]);
    if (rows[0].n === ids.length) return;
    if (Date.now() > deadline) throw new Error(`only ${rows[0].n} of ${ids.length} runs finished`);
    await pause(50);
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
