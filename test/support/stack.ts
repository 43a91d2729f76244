import { randomBytes } from 'node:crypto';
import { createTestDatabase, testPool } from './database';
import { bundleWorkflows } from '../../scripts/bundle-workflows';
import { LocalModelServer } from '../../model-server/server';
import { spawnEntry, type Spawned } from './processes';
import { WsClient } from './ws-client';

export interface StackOptions {
  /** Extra settings for the worker and the API (see config/settings.ts). */
  env?: Record<string, string>;
}

function requiredEnv(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run the tests through jest's global setup (npm test)`);
  return value;
}

let stackCounter = 0;
export const ADMIN_KEY = 'test-admin-key';
/** The token of user "dev", which the helpers below use unless told otherwise. */
export const DEV_TOKEN = 'test-dev-token';

/**
 * A whole Keel deployment for one test file: its own database and task queue on the shared
 * Temporal dev server and Postgres, the local model server in-process, and the worker and
 * API as real child processes.
 */
export async function startStack(opts: StackOptions = {}) {
  // Unique across test files: a jest worker runs several files, each with its own module state
  // (stackCounter starts again), and a task queue keeps what a file did to it on the shared server
  // (test/worker-versioning.test.ts routes its queue to a Worker Deployment: an unversioned worker
  // polling the same name afterwards would get no task).
  const name = `keel_t${process.pid}_${randomBytes(4).toString('hex')}_${++stackCounter}`;
  const databaseUrl = await createTestDatabase(name);
  const model = new LocalModelServer();
  const { url: modelUrl } = await model.start();
  const env: Record<string, string> = {
    TEMPORAL_ADDRESS: requiredEnv('KEEL_TEST_TEMPORAL_ADDRESS'),
    DATABASE_URL: databaseUrl,
    KEEL_TASK_QUEUE: `tq-${name}`,
    KEEL_WORKFLOW_BUNDLE: process.env.KEEL_TEST_WORKFLOW_BUNDLE ?? (await bundleWorkflows()),
    OPENAI_BASE_URL: modelUrl,
    OPENAI_API_KEY: 'test-key',
    KEEL_MODEL: 'keel-local',
    KEEL_API_HOST: '127.0.0.1',
    KEEL_API_PORT: '0',
    KEEL_DB_POOL_SIZE: '5',
    KEEL_LLM_HEARTBEAT_TIMEOUT_MS: '2000',
    KEEL_LLM_RETRY_INITIAL_MS: '200',
    KEEL_LLM_RETRY_MAX_MS: '1000',
    // A killed worker's workflows move to a new worker after this long.
    KEEL_STICKY_QUEUE_TIMEOUT_MS: '1000',
    KEEL_WORKER_METRICS_PORT: '0',
    KEEL_ADMIN_API_KEY: ADMIN_KEY,
    KEEL_DEV_TOKEN: DEV_TOKEN,
    KEEL_TOKEN_CACHE_MS: '1000',
    // The release health Schedule outlives a test's stack on the shared server: only the tests that check releases turn it on.
    KEEL_HEALTH_CHECKS_ENABLED: 'false',
    ...opts.env,
  };
  let workerMetricsPort = 0;
  const startWorker = async () => {
    const w = spawnEntry('worker/main.ts', env);
    workerMetricsPort = Number((await w.waitForLine(/"port":(\d+),"msg":"worker metrics listening"/))[1]);
    await w.waitForLine(/worker started/);
    return w;
  };
  let worker: Spawned = await startWorker();
  const api = spawnEntry('api/main.ts', env);
  let port: number;
  try {
    port = Number((await api.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/))[1]);
  } catch (error) {
    // A stack that fails to start leaves no process behind.
    await Promise.all([worker.kill(), api.kill(), model.stop()]);
    throw error;
  }
  const db = testPool(databaseUrl, 3);
  const base = `http://127.0.0.1:${port}`;
  const sockets: WsClient[] = [];
  const extraApis: Spawned[] = [];

  /** A REST call as user "dev"; pass `authorization: ''` to send none. */
  async function request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}) {
    const all: Record<string, string> = { authorization: `Bearer ${DEV_TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers };
    if (all.authorization === '') delete all.authorization;
    const res = await fetch(`${base}${path}`, {
      method,
      headers: all,
      ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    });
    const text = await res.text();
    let json: any = null;
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
    return { status: res.status, body: json, text, headers: res.headers };
  }

  return {
    env,
    model,
    db,
    base,
    get worker() {
      return worker;
    },
    get workerMetricsUrl() {
      return `http://127.0.0.1:${workerMetricsPort}/metrics`;
    },
    api,
    request,
    async createSession(body: Record<string, unknown> = {}): Promise<string> {
      const res = await request('POST', '/api/v1/sessions', body);
      if (res.status !== 201) throw new Error(`create session: ${res.status} ${res.text}`);
      return res.body.id as string;
    },
    async ws(sessionId: string, query = '', token = DEV_TOKEN): Promise<WsClient> {
      const params = new URLSearchParams(query.replace(/^\?/, ''));
      params.set('token', token);
      const client = await WsClient.connect(`ws://127.0.0.1:${port}/api/v1/sessions/${sessionId}/ws?${params}`);
      sockets.push(client);
      return client;
    },
    /** Issues a token for `userId` through the admin API. */
    async issueToken(userId: string, admin = false): Promise<string> {
      const res = await request('POST', '/api/v1/admin/tokens', { userId, admin }, { 'x-api-key': ADMIN_KEY, authorization: '' });
      if (res.status !== 201) throw new Error(`issue token: ${res.status} ${res.text}`);
      return res.body.token as string;
    },
    /** A second API process on the same database and Temporal, as a scaled-out deployment runs. */
    async startExtraApi(): Promise<{ base: string; port: number }> {
      const extra = spawnEntry('api/main.ts', env);
      extraApis.push(extra);
      const extraPort = Number((await extra.waitForLine(/api listening on http:\/\/127\.0\.0\.1:(\d+)/))[1]);
      return { base: `http://127.0.0.1:${extraPort}`, port: extraPort };
    },
    async killWorker(signal: NodeJS.Signals = 'SIGKILL') {
      await worker.kill(signal);
    },
    async startWorker() {
      worker = await startWorker();
    },
    async stop() {
      await Promise.all(sockets.map((s) => s.close().catch(() => undefined)));
      await Promise.all([worker.kill(), api.kill(), ...extraApis.map((a) => a.kill())]);
      await db.end();
      await model.stop();
    },
  };
}

export type Stack = Awaited<ReturnType<typeof startStack>>;

export async function eventually<T>(fn: () => Promise<T | undefined | null | false>, timeoutMs = 20_000, what = 'condition'): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await fn();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}
