import { execFileSync, spawn } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { loadSettings } from '../config/settings';
import { LocalModelServer } from '../model-server/server';
import { startEmbeddedPostgres, startTemporalDevServer } from '../scripts/services';
import { spawnEntry, type Spawned } from '../test/support/processes';
import { Client as PgClient } from 'pg';
import { historyPerTurn } from './history-stats';
import { keelEnv } from './keel-env';
import type { IdleConfig, IdleResult } from './idle-generator';
import type { GeneratorConfig, GeneratorResult } from './load-generator';
import { memorySampler, round } from './stats';
import { turnStagesMs } from './turn-stages';

/**
 * `npm run bench`: Keel against a bare Temporal loop on the same servers, at the same load.
 * Every part is a process of its own: Temporal, PostgreSQL, Keel's worker and API (or the bare
 * loop's worker), and the load generator (bench/load-generator.ts); the model server runs in
 * this process (its CPU is this process's own, without the children). docs/benchmarks.md explains each figure.
 */
const { values: args } = parseArgs({
  options: {
    sessions: { type: 'string', default: '100' },
    turns: { type: 'string', default: '5' },
    ttft: { type: 'string', default: '200' },
    'token-delay': { type: 'string', default: '10' },
    tokens: { type: 'string', default: '20' },
    think: { type: 'string', default: '1000' },
    // Scale out on one box: the same load across this many workers and API processes (the bare loop gets as many workers).
    workers: { type: 'string', default: '1' },
    apis: { type: 'string', default: '1' },
    // Idle scale: this many sessions, each with one finished turn and an open WebSocket, then `--wake` random ones woken.
    idle: { type: 'string', default: '0' },
    wake: { type: 'string', default: '100' },
  },
});
const SESSIONS = Number(args.sessions);
const TURNS = Number(args.turns);
const MODEL_TTFT_MS = Number(args.ttft);
const TOKEN_DELAY_MS = Number(args['token-delay']);
const TOKENS = Number(args.tokens);
const THINK_MS = Number(args.think);
const WORKERS = Number(args.workers);
const APIS = Number(args.apis);
const IDLE_SESSIONS = Number(args.idle);
const WAKE = Number(args.wake);
const log = (s: string) => console.error(`[bench] ${s}`);
/** Authentication stays on in the benchmark: tokens are issued with this admin key, one user per session. */
const BENCH_ADMIN_KEY = 'bench-admin-key';
const BARE_TASK_QUEUE = 'bench-bare';

async function withPg<T>(url: string, fn: (c: PgClient) => Promise<T>): Promise<T> {
  const c = new PgClient({ connectionString: url });
  await c.connect();
  try {
    return await fn(c);
  } finally {
    await c.end();
  }
}

/**
 * Runs a generator script (bench/load-generator.ts, bench/idle-generator.ts) as a process of its
 * own, with its config as the argument, and returns what it prints as `RESULT <json>`; its other
 * lines go to stderr. `prefix` execs it under another command (prlimit).
 */
function runGenerator<T>(script: string, config: unknown, prefix: string[] = []): Promise<T> {
  const [cmd, ...cmdArgs] = [...prefix, process.execPath, '--import', 'tsx', path.join(__dirname, script), JSON.stringify(config)];
  const child = spawn(cmd!, cmdArgs, { cwd: path.resolve(__dirname, '..'), stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    let result: T | undefined;
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      if (line.startsWith('RESULT ')) result = JSON.parse(line.slice(7)) as T;
      else process.stderr.write(`[generator] ${line}\n`);
    });
    child.once('exit', (code) => (result ? resolve(result) : reject(new Error(`${script} exited with ${code} and no result`))));
  });
}

/** Runs the load generator with this run's sessions, turns and pacing. */
function generate(config: Omit<GeneratorConfig, 'sessions' | 'turns' | 'thinkMs' | 'ttftMs'>): Promise<GeneratorResult> {
  return runGenerator<GeneratorResult>('load-generator.ts', { ...config, sessions: SESSIONS, turns: TURNS, thinkMs: THINK_MS, ttftMs: MODEL_TTFT_MS } satisfies GeneratorConfig);
}

/** CPU milliseconds per turn, per process, without what the process spends when idle over the same time. */
const cpuMsPerTurn = (r: GeneratorResult) =>
  Object.fromEntries(Object.entries(r.cpuSeconds).map(([k, s]) => [k, round(((s - (r.idleCpuPerS[k] ?? 0) * r.elapsedS) * 1000) / r.turns)]));
const idleCpuMsPerS = (r: GeneratorResult) => Object.fromEntries(Object.entries(r.idleCpuPerS).map(([k, v]) => [k, round(v * 1000)]));
const roundedSummary = (x: { p50: number; p95: number; p99: number; max: number }) => ({ p50: round(x.p50), p95: round(x.p95), p99: round(x.p99), max: round(x.max) });
const overheadMs = (r: GeneratorResult) => roundedSummary(r.overhead);

/** CPU of several processes of one kind, summed under the kind's name (worker-0 + worker-1 → worker). */
function byKind(result: GeneratorResult): GeneratorResult {
  const sum = (m: Record<string, number>) => {
    const out: Record<string, number> = {};
    for (const [k, v] of Object.entries(m)) {
      const kind = k.replace(/-\d+$/, '');
      out[kind] = (out[kind] ?? 0) + v;
    }
    return out;
  };
  return { ...result, cpuSeconds: sum(result.cpuSeconds), idleCpuPerS: sum(result.idleCpuPerS) };
}

const peakOf = (peak: Record<string, number>, kind: string) => Object.entries(peak).filter(([k]) => k.startsWith(`${kind}-`)).map(([, v]) => round(v));

/** Keel's worker and API in this bench: defaults, with info logs and a pool for 100 sessions. */
async function benchEnv(temporal: { address: string }, pg: { url: string }, modelUrl: string, taskQueue: string): Promise<Record<string, string>> {
  return { ...(await keelEnv({ temporalAddress: temporal.address, databaseUrl: pg.url, modelUrl, taskQueue, adminKey: BENCH_ADMIN_KEY })), KEEL_LOG_LEVEL: 'info', KEEL_DB_POOL_SIZE: '20' };
}

async function runKeel(temporal: { address: string; pid: number }, pg: { url: string; pid: number }, modelUrl: string, client: Client) {
  const env = await benchEnv(temporal, pg, modelUrl, 'bench-keel');
  // The first worker migrates the database alone; the others start side by side.
  const workers = [spawnEntry('worker/main.ts', env)];
  await workers[0]!.waitForLine(/worker started/, 60_000);
  workers.push(...Array.from({ length: WORKERS - 1 }, () => spawnEntry('worker/main.ts', env)));
  const apis = Array.from({ length: APIS }, () => spawnEntry('api/main.ts', env));
  // Whatever happens, the children go: a failed run must not leave a worker holding its ports.
  try {
    await Promise.all(workers.slice(1).map((w) => w.waitForLine(/worker started/, 60_000)));
    const ports = await Promise.all(apis.map(async (a) => Number((await a.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/))[1])));
    const named = (kind: string, list: Spawned[]) => Object.fromEntries(list.map((p, i) => [`${kind}-${i}`, p.child.pid!]));
    const memory = memorySampler({ ...named('worker', workers), ...named('api', apis) });
    const result = await generate({
      mode: 'keel',
      cpuPids: {
        ...Object.fromEntries(Object.entries({ ...named('worker', workers), ...named('api', apis) }).map(([k, pid]) => [k, { pid }])),
        temporal: { pid: temporal.pid },
        postgres: { pid: pg.pid, tree: true },
        modelServer: { pid: process.pid },
      },
      keel: { baseUrls: ports.map((port) => `http://127.0.0.1:${port}`), adminKey: BENCH_ADMIN_KEY, databaseUrl: pg.url },
    });
    const peak = memory.stop();
    // Each session ran its warm-up turn too: the histories hold TURNS + 1 turns each.
    const history = await historyPerTurn(client, result.workflowIds, SESSIONS * (TURNS + 1));
    const stages = turnStagesMs([...workers, ...apis].flatMap((p) => p.lines));
    return { result: byKind(result), history, stages, peak: { worker: peakOf(peak, 'worker'), api: peakOf(peak, 'api') } };
  } finally {
    await Promise.all([...workers, ...apis].map((p) => p.kill()));
  }
}

async function runBare(temporal: { address: string; pid: number }, modelUrl: string, client: Client) {
  const workers = Array.from({ length: WORKERS }, () => spawnEntry('bench/bare-worker.ts', { TEMPORAL_ADDRESS: temporal.address, OPENAI_BASE_URL: modelUrl, BARE_TASK_QUEUE }));
  try {
    await Promise.all(workers.map((w) => w.waitForLine(/bare worker started/, 60_000)));
    const pids = Object.fromEntries(workers.map((w, i) => [`worker-${i}`, w.child.pid!]));
    const memory = memorySampler(pids);
    const result = await generate({
      mode: 'bare',
      cpuPids: { ...Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, { pid }])), temporal: { pid: temporal.pid }, modelServer: { pid: process.pid } },
      bare: { temporalAddress: temporal.address, taskQueue: BARE_TASK_QUEUE },
    });
    const peak = memory.stop();
    const history = await historyPerTurn(client, result.workflowIds, SESSIONS * (TURNS + 1));
    return { result: byKind(result), history, peak: { worker: peakOf(peak, 'worker') } };
  } finally {
    await Promise.all(workers.map((w) => w.kill()));
  }
}

/** Idle scale (bench/idle-generator.ts): memory with N idle sessions and sockets, and what waking an evicted one costs. */
async function runIdle(temporal: { address: string; pid: number }, pg: { url: string; pid: number }, modelUrl: string) {
  // Each session holds a socket at the API and one at the generator: both need a descriptor per session.
  const fdLimit = Number(execFileSync('sh', ['-c', 'ulimit -n']).toString().trim());
  const needed = IDLE_SESSIONS + 2_000;
  const prlimit = fdLimit < needed ? ['prlimit', `--nofile=${needed}:${needed}`, '--'] : [];
  if (prlimit.length) log(`raising the open-file limit of the API and the generator from ${fdLimit} to ${needed}`);
  const env = await benchEnv(temporal, pg, modelUrl, 'bench-idle');
  const worker = spawnEntry('worker/main.ts', env);
  await worker.waitForLine(/worker started/, 60_000);
  const api = spawnEntry('api/main.ts', env, { prefix: prlimit });
  try {
    const port = Number((await api.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/))[1]);
    const config: IdleConfig = {
      sessions: IDLE_SESSIONS,
      wake: WAKE,
      ttftMs: MODEL_TTFT_MS,
      tokenDelayMs: TOKEN_DELAY_MS,
      baseUrl: `http://127.0.0.1:${port}`,
      modelUrl,
      adminKey: BENCH_ADMIN_KEY,
      rssPids: { worker: { pid: worker.child.pid! }, api: { pid: api.child.pid! }, temporal: { pid: temporal.pid }, postgres: { pid: pg.pid, tree: true } },
    };
    const result = await runGenerator<IdleResult>('idle-generator.ts', config, prlimit);
    return {
      command: `npm run bench -- --idle ${IDLE_SESSIONS} --wake ${WAKE} --ttft ${MODEL_TTFT_MS} --token-delay ${TOKEN_DELAY_MS} --tokens ${TOKENS}`,
      machine: `${os.cpus().length} cores, ${round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
      sessions: result.sessions,
      maxCachedWorkflows: loadSettings(process.env).worker.maxCachedWorkflows,
      openFileLimit: prlimit.length ? needed : fdLimit,
      setupS: round(result.setupS),
      idleRssMb: result.idleMemoryMb,
      rssAfterWakingMb: result.afterMemoryMb,
      // First token minus the model's delay: a session most likely evicted from the worker's cache, then the same one cached.
      wokenOverheadMs: roundedSummary(result.wokenOverhead),
      cachedOverheadMs: roundedSummary(result.cachedOverhead),
      wakeCostMs: { p50: round(result.wokenOverhead.p50 - result.cachedOverhead.p50), p95: round(result.wokenOverhead.p95 - result.cachedOverhead.p95) },
    };
  } finally {
    await Promise.all([worker.kill(), api.kill()]);
  }
}

async function main() {
  const dataDir = path.join(os.tmpdir(), `keel-bench-${process.pid}`);
  log(`starting Temporal and Postgres`);
  const temporal = await startTemporalDevServer({ port: 0, headless: true, log });
  // pg_stat_statements counts the statements a turn runs (bench/load-generator.ts).
  const pg = await startEmbeddedPostgres({ dataDir, port: 0, persistent: false, log, settings: ['shared_preload_libraries=pg_stat_statements'] });
  await withPg(pg.url, (c) => c.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements'));
  const reply = Array.from({ length: TOKENS }, (_, i) => `tok${i}`).join(' ');
  const model = new LocalModelServer({ defaults: { reply, firstTokenDelayMs: MODEL_TTFT_MS, tokenDelayMs: TOKEN_DELAY_MS } });
  const { url: modelUrl } = await model.start();
  const connection = await Connection.connect({ address: temporal.address });
  const client = new Client({ connection });
  try {
    const t = { address: temporal.address, pid: temporal.pid! };
    if (IDLE_SESSIONS > 0) {
      log(`idle: ${IDLE_SESSIONS} sessions with open sockets, then ${WAKE} woken`);
      console.log(JSON.stringify(await runIdle(t, { url: pg.url, pid: pg.pid! }, modelUrl), null, 2));
      return;
    }
    log(`keel: ${SESSIONS} sessions x ${TURNS} turns, model TTFT ${MODEL_TTFT_MS} ms, ${TOKENS} tokens every ${TOKEN_DELAY_MS} ms`);
    const keel = await runKeel(t, { url: pg.url, pid: pg.pid! }, modelUrl, client);
    log('bare Temporal loop');
    const bare = await runBare(t, modelUrl, client);
    const k = keel.result;
    const b = bare.result;
    const report = {
      command: `npm run bench -- --sessions ${SESSIONS} --turns ${TURNS} --ttft ${MODEL_TTFT_MS} --token-delay ${TOKEN_DELAY_MS} --tokens ${TOKENS} --think ${THINK_MS}${WORKERS > 1 || APIS > 1 ? ` --workers ${WORKERS} --apis ${APIS}` : ''}`,
      processes: { workers: WORKERS, apis: APIS },
      machine: `${os.cpus().length} cores, ${round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
      overheadMs: overheadMs(k),
      bareOverheadMs: overheadMs(b),
      overheadAboveBareMs: { p50: round(k.overhead.p50 - b.overhead.p50), p95: round(k.overhead.p95 - b.overhead.p95), p99: round(k.overhead.p99 - b.overhead.p99) },
      turnsPerSecond: round(k.turns / k.elapsedS, 2),
      bareTurnsPerSecond: round(b.turns / b.elapsedS, 2),
      ratioToBare: round(k.turns / k.elapsedS / (b.turns / b.elapsedS), 3),
      cpuMsPerTurn: cpuMsPerTurn(k),
      bareCpuMsPerTurn: cpuMsPerTurn(b),
      idleCpuMsPerS: idleCpuMsPerS(k),
      bareIdleCpuMsPerS: idleCpuMsPerS(b),
      // Keel's stages before the model request, from its per-turn log lines.
      turnStagesMs: keel.stages,
      historyPerTurn: keel.history,
      bareHistoryPerTurn: bare.history,
      // Net of what the idle window showed per second (pollers, heartbeats) over the same time.
      pgPerTurn: {
        statements: round((k.pg!.statements - k.pg!.idleStatementsPerS * k.elapsedS) / k.turns, 2),
        writeTransactions: round((k.pg!.writeTransactions - k.pg!.idleWriteTransactionsPerS * k.elapsedS) / k.turns, 2),
      },
      pgIdlePerS: { statements: round(k.pg!.idleStatementsPerS, 1), writeTransactions: round(k.pg!.idleWriteTransactionsPerS, 1) },
      pgTopStatementsPerTurn: k.pg!.top.map(([q, n]) => [round(n / k.turns, 2), q]),
      rowsWrittenPerTurn: round(k.rowsWritten! / k.turns, 2),
      // The user message and its message.accepted event are 2 of those rows; the rest is the reply.
      rowsWrittenPerReply: round(k.rowsWritten! / k.turns - 2, 2),
      // One figure per process.
      peakRssMb: { worker: keel.peak.worker, api: keel.peak.api, bareWorker: bare.peak.worker },
    };
    console.log(JSON.stringify(report, null, 2));
  } finally {
    await connection.close();
    await model.stop();
    await pg.stop();
    await temporal.stop();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
