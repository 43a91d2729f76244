import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { Client, Connection } from '@temporalio/client';
import { Worker } from '@temporalio/worker';
import { Client as PgClient } from 'pg';
import { LocalModelServer } from '../model-server/server';
import { bundleWorkflows } from '../scripts/bundle-workflows';
import { startEmbeddedPostgres, startTemporalDevServer } from '../scripts/services';
import { spawnEntry } from '../test/support/processes';
import { WsClient } from '../test/support/ws-client';
import { createBareActivities } from './bare-activities';
import { bareDone, bareTurn } from './bare-workflow';
import { memorySampler, round, summarize } from './stats';

const { values: args } = parseArgs({
  options: {
    sessions: { type: 'string', default: '100' },
    turns: { type: 'string', default: '5' },
    ttft: { type: 'string', default: '200' },
    'token-delay': { type: 'string', default: '10' },
    tokens: { type: 'string', default: '20' },
    think: { type: 'string', default: '1000' },
  },
});
const SESSIONS = Number(args.sessions);
const TURNS = Number(args.turns);
const MODEL_TTFT_MS = Number(args.ttft);
const TOKEN_DELAY_MS = Number(args['token-delay']);
const TOKENS = Number(args.tokens);
const THINK_MS = Number(args.think);
// Users pause between turns; a uniform pause also keeps sessions from moving in lockstep.
const think = () => new Promise((r) => setTimeout(r, Math.random() * THINK_MS));
const log = (s: string) => console.error(`[bench] ${s}`);
/** Authentication stays on in the benchmark: tokens are issued with this admin key, one user per session. */
const BENCH_ADMIN_KEY = 'bench-admin-key';

/** Rows in the tables a turn writes; the turn path only inserts into them, so the difference is exact. */
async function rowsWritten(databaseUrl: string): Promise<number> {
  const pg = new PgClient({ connectionString: databaseUrl });
  await pg.connect();
  const { rows } = await pg.query('SELECT (SELECT count(*) FROM messages) + (SELECT count(*) FROM session_events) AS n');
  await pg.end();
  return Number(rows[0].n);
}

async function runKeel(temporalAddress: string, databaseUrl: string, modelUrl: string) {
  const env = {
    TEMPORAL_ADDRESS: temporalAddress,
    DATABASE_URL: databaseUrl,
    KEEL_TASK_QUEUE: 'bench-keel',
    KEEL_WORKFLOW_BUNDLE: await bundleWorkflows(),
    OPENAI_BASE_URL: modelUrl,
    OPENAI_API_KEY: 'bench',
    KEEL_MODEL: 'keel-local',
    KEEL_API_HOST: '127.0.0.1',
    KEEL_API_PORT: '0',
    KEEL_LOG_LEVEL: 'warn',
    KEEL_DB_POOL_SIZE: '20',
    KEEL_ADMIN_API_KEY: BENCH_ADMIN_KEY,
    KEEL_WORKER_METRICS_PORT: '0',
  };
  const worker = spawnEntry('worker/main.ts', { ...env, KEEL_LOG_LEVEL: 'info' });
  await worker.waitForLine(/worker started/, 60_000);
  const api = spawnEntry('api/main.ts', { ...env, KEEL_LOG_LEVEL: 'info' });
  const port = Number((await api.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/))[1]);
  // Whatever happens, the children go: a failed run must not leave a worker holding its ports.
  try {
    const base = `http://127.0.0.1:${port}`;
    const memory = memorySampler({ worker: worker.child.pid!, api: api.child.pid! });

    // Each session belongs to a user of its own, as in production: every limit stays at its default.
    const sessions = await Promise.all(
      Array.from({ length: SESSIONS }, async (_, i) => {
        const issued = await fetch(`${base}/api/v1/admin/tokens`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', 'x-api-key': BENCH_ADMIN_KEY },
          body: JSON.stringify({ userId: `bench-user-${i}` }),
        });
        const { token } = (await issued.json()) as { token: string };
        const res = await fetch(`${base}/api/v1/sessions`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` }, body: '{}' });
        return { id: ((await res.json()) as { id: string }).id, token };
      }),
    );
    const clients = await Promise.all(sessions.map(({ id, token }) => WsClient.connect(`ws://127.0.0.1:${port}/api/v1/sessions/${id}/ws?token=${token}`)));
    // One warm-up turn per session, not measured: JIT, pools and caches.
    await Promise.all(clients.map(async (c) => {
      c.send({ type: 'message', content: 'warm up' });
      await c.waitFor((f) => f.type === 'turn.done', 120_000);
    }));
    const writesBefore = await rowsWritten(databaseUrl);

    const overheads: number[] = [];
    const started = performance.now();
    await Promise.all(
      clients.map(async (client) => {
        for (let turn = 2; turn <= TURNS + 1; turn++) {
          await think();
          const before = client.frames.length;
          const sentAt = performance.now();
          client.send({ type: 'message', content: `turn ${turn}` });
          const first = await client.waitFor((f) => client.frames.indexOf(f) >= before && (f.type === 'stream.delta' || f.type === 'error'), 120_000);
          if (first.type === 'error') {
            // Most likely RATE_LIMIT_EXCEEDED: the limits stay at their defaults unless set in the environment.
            throw new Error(`turn ${turn} refused with ${first.data.code}: ${first.data.message} (raise KEEL_RATE_MESSAGES_PER_SESSION or --think)`);
          }
          overheads.push(performance.now() - sentAt - MODEL_TTFT_MS);
          await client.waitFor((f) => client.frames.indexOf(f) >= before && f.type === 'turn.done', 120_000);
        }
      }),
    );
    const elapsed = (performance.now() - started) / 1000;
    const writesAfter = await rowsWritten(databaseUrl);
    const peak = memory.stop();
    await Promise.all(clients.map((c) => c.close()));
    const turns = SESSIONS * TURNS;
    return {
      turns,
      turnsPerSecond: turns / elapsed,
      overhead: summarize(overheads),
      rowsPerTurn: (writesAfter - writesBefore) / turns,
      memoryMb: peak,
    };
  } finally {
    await Promise.all([worker.kill(), api.kill()]);
  }
}

async function runBare(temporalAddress: string, modelUrl: string) {
  const connection = await Connection.connect({ address: temporalAddress });
  const client = new Client({ connection });
  const { NativeConnection } = await import('@temporalio/worker');
  const native = await NativeConnection.connect({ address: temporalAddress });
  const worker = await Worker.create({
    connection: native,
    taskQueue: 'bench-bare',
    workflowsPath: path.join(__dirname, 'bare-workflow.ts'),
    activities: createBareActivities(modelUrl),
  });
  const running = worker.run();
  const handles = await Promise.all(
    Array.from({ length: SESSIONS }, (_, i) => client.workflow.start('bareSession', { taskQueue: 'bench-bare', workflowId: `bare-${Date.now()}-${i}`, args: [] })),
  );
  await Promise.all(handles.map((h) => h.executeUpdate(bareTurn, { args: ['warm up'] })));
  const started = performance.now();
  await Promise.all(
    handles.map(async (h) => {
      for (let turn = 0; turn < TURNS; turn++) {
        await think();
        await h.executeUpdate(bareTurn, { args: [`turn ${turn}`] });
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  await Promise.all(handles.map((h) => h.executeUpdate(bareDone)));
  worker.shutdown();
  await running;
  await native.close();
  await connection.close();
  return { turnsPerSecond: (SESSIONS * TURNS) / elapsed };
}

async function main() {
  const dataDir = path.join(os.tmpdir(), `keel-bench-${process.pid}`);
  log(`starting Temporal and Postgres`);
  const temporal = await startTemporalDevServer({ port: 0, headless: true, log });
  const pg = await startEmbeddedPostgres({ dataDir, port: 0, persistent: false, log });
  const reply = Array.from({ length: TOKENS }, (_, i) => `tok${i}`).join(' ');
  const model = new LocalModelServer({ defaults: { reply, firstTokenDelayMs: MODEL_TTFT_MS, tokenDelayMs: TOKEN_DELAY_MS } });
  const { url: modelUrl } = await model.start();
  try {
    log(`keel: ${SESSIONS} sessions x ${TURNS} turns, model TTFT ${MODEL_TTFT_MS} ms, ${TOKENS} tokens every ${TOKEN_DELAY_MS} ms`);
    const keel = await runKeel(temporal.address, pg.url, modelUrl);
    log('bare Temporal loop');
    const bare = await runBare(temporal.address, modelUrl);
    const report = {
      command: `npm run bench -- --sessions ${SESSIONS} --turns ${TURNS} --ttft ${MODEL_TTFT_MS} --token-delay ${TOKEN_DELAY_MS} --tokens ${TOKENS} --think ${THINK_MS}`,
      machine: `${os.cpus().length} cores, ${round(os.totalmem() / 2 ** 30)} GiB, node ${process.version}`,
      overheadMs: { p50: round(keel.overhead.p50), p95: round(keel.overhead.p95), p99: round(keel.overhead.p99), max: round(keel.overhead.max) },
      turnsPerSecond: round(keel.turnsPerSecond, 2),
      bareTurnsPerSecond: round(bare.turnsPerSecond, 2),
      ratioToBare: round(keel.turnsPerSecond / bare.turnsPerSecond, 3),
      rowsWrittenPerTurn: round(keel.rowsPerTurn, 2),
      // The user message and its message.accepted event are 2 of those rows; the rest is the reply.
      rowsWrittenPerReply: round(keel.rowsPerTurn - 2, 2),
      peakRssMb: { worker: round(keel.memoryMb.worker ?? NaN), api: round(keel.memoryMb.api ?? NaN) },
    };
    console.log(JSON.stringify(report, null, 2));
  } finally {
    await model.stop();
    await pg.stop();
    await temporal.stop();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
