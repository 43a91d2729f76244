import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { loadSettings, type Settings } from '../config/settings';
import { assertPortFree, hasExited, startEmbeddedPostgres, startTemporalDevServer, stopProcess, type Log } from './services';

/**
 * The whole of Keel from one process, as `npm start` runs it (and `npm run e2e:live`): whatever
 * is not configured runs embedded — a Temporal dev server and a PostgreSQL under the data
 * directory, and the offline demo model when there is no OpenAI key — then the worker and the
 * API. Everything started is stopped in order on a signal, on a failure, or when the caller is done.
 */

const ROOT = path.resolve(__dirname, '..');
const CHILD_STOP_GRACE_MS = 10_000;
// The worker may bundle the workflow code with webpack on its first start.
const WORKER_READY_TIMEOUT_MS = 180_000;
const API_READY_TIMEOUT_MS = 60_000;
const MODEL_READY_TIMEOUT_MS = 30_000;

/** Where the embedded services keep their data and listen. */
export interface Layout {
  /** Default: KEEL_DATA_DIR. */
  dataDir?: string;
  /** Ports of the embedded services (0: any free one); a null UI port runs Temporal headless. */
  ports: { temporal: number; temporalUi: number | null; postgres: number };
  /** Kept under dataDir across runs, or thrown away with dataDir when everything stops. */
  persistent: boolean;
}

export interface LaunchOptions {
  /** The environment the settings are read from and the worker and API run with. */
  env: NodeJS.ProcessEnv;
  layout: Layout;
  /** The launcher's own lines. */
  log: Log;
  /** Every output line of the services and apps it starts, by source (`temporal`, `worker`, …) and stream. */
  output: (source: string, line: string, stream: 'stdout' | 'stderr') => void;
  /** The exit code after SIGINT, SIGTERM or SIGHUP. */
  signalExitCode: number;
  /** Called once everything has stopped, with the exit code the process is about to exit with. */
  afterStop?: (code: number) => void;
}

export interface Ready {
  settings: Settings;
  apiPort: number;
  secrets: { devToken?: string; adminApiKey?: string; webhookSecret?: string; authDisabled: boolean };
  temporal: { address: string; uiUrl?: string };
  database: { url: string; embedded: boolean };
  model: string;
}

class StartAborted extends Error {}

// ---------------------------------------------------------------------------------------------
// Shutdown order

/** Stopped from the highest rank down: the apps, the model, Temporal, Postgres, then a throwaway data directory. */
const RANK = { dataDir: -1, postgres: 0, temporal: 1, model: 2, app: 3 } as const;

interface Stoppable {
  name: string;
  stop(): Promise<void>;
}

class Lifecycle {
  private readonly items: { rank: number; item: Stoppable }[] = [];
  private stopping: Promise<void> | undefined;

  constructor(private readonly log: Log) {}

  add(rank: number, item: Stoppable): void {
    this.items.push({ rank, item });
  }

  get isStopping(): boolean {
    return this.stopping !== undefined;
  }

  stopAll(): Promise<void> {
    this.stopping ??= this.stopByRank();
    return this.stopping;
  }

  private async stopByRank(): Promise<void> {
    const ranks = [...new Set(this.items.map((i) => i.rank))].sort((a, b) => b - a);
    for (const rank of ranks) {
      const layer = this.items.filter((i) => i.rank === rank).map((i) => i.item);
      await Promise.all(layer.map((item) => this.stopOne(item)));
    }
  }

  private async stopOne(item: Stoppable): Promise<void> {
    this.log(`stopping ${item.name}`);
    try {
      await item.stop();
    } catch (error) {
      this.log(`${item.name} did not stop cleanly: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Child processes (worker, API, model server)

interface AppProcess extends Stoppable {
  child: ChildProcess;
  waitForLine(pattern: RegExp, timeoutMs: number, signal: AbortSignal): Promise<RegExpMatchArray>;
}

interface Context {
  settings: Settings;
  env: NodeJS.ProcessEnv;
  layout: Layout;
  dataDir: string;
  lifecycle: Lifecycle;
  signal: AbortSignal;
  log: Log;
  output: LaunchOptions['output'];
  /** A process we started died on its own: everything goes down. */
  onUnexpectedExit: (name: string, how: string) => void;
}


/**
 * Runs one of our entry points in its own process group, so Ctrl-C in the terminal reaches only
 * this orchestrator, which then stops everything in order.
 */
function spawnApp(ctx: Context, name: string, entry: string, env: NodeJS.ProcessEnv): AppProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, entry)], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const listeners = new Set<(line: string) => void>();
  const forward = (input: NodeJS.ReadableStream, stream: 'stdout' | 'stderr') =>
    readline.createInterface({ input }).on('line', (line) => {
      ctx.output(name, line, stream);
      listeners.forEach((l) => l(line));
    });
  forward(child.stdout!, 'stdout');
  forward(child.stderr!, 'stderr');
  child.once('error', (error) => {
    if (!ctx.lifecycle.isStopping) ctx.onUnexpectedExit(name, `could not be started: ${error.message}`);
  });
  child.once('exit', (code, signal) => {
    if (!ctx.lifecycle.isStopping) ctx.onUnexpectedExit(name, `exited with ${signal ?? code}`);
  });

  const waitForLine = (pattern: RegExp, timeoutMs: number, signal: AbortSignal) =>
    new Promise<RegExpMatchArray>((resolve, reject) => {
      const done = (settle: () => void) => {
        clearTimeout(timer);
        listeners.delete(listener);
        signal.removeEventListener('abort', onAbort);
        child.off('exit', onExit);
        settle();
      };
      const listener = (line: string) => {
        const match = pattern.exec(line);
        if (match) done(() => resolve(match));
      };
      const onAbort = () => done(() => reject(new StartAborted()));
      const onExit = () => done(() => reject(new Error(`${name} exited before it was ready`)));
      const timer = setTimeout(() => done(() => reject(new Error(`${name} printed no ${pattern} within ${timeoutMs / 1000} s`))), timeoutMs);
      listeners.add(listener);
      signal.addEventListener('abort', onAbort);
      child.once('exit', onExit);
    });

  return { name, child, waitForLine, stop: () => stopProcess(child, 'SIGTERM', CHILD_STOP_GRACE_MS) };
}

/** Resolves once something accepts TCP connections on the port. */
async function waitForPort(port: number, app: AppProcess, timeoutMs: number, signal: AbortSignal): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  const accepts = () =>
    new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => (socket.destroy(), resolve(true)));
      socket.once('error', () => resolve(false));
    });
  while (!(await accepts())) {
    if (signal.aborted) throw new StartAborted();
    if (hasExited(app.child)) throw new Error(`${app.name} exited before it was ready`);
    if (Date.now() > deadline) throw new Error(`${app.name} did not listen on port ${port} within ${timeoutMs / 1000} s`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// ---------------------------------------------------------------------------------------------
// Startup

async function startTemporal(ctx: Context): Promise<{ address: string; uiUrl?: string }> {
  if (ctx.settings.temporal.address) return { address: ctx.settings.temporal.address };
  const dbFile = ctx.layout.persistent ? path.join(ctx.dataDir, 'temporal.sqlite') : undefined;
  ctx.log(`starting the Temporal dev server (state ${dbFile ? `in ${dbFile}` : 'in memory'})`);
  const { temporal, temporalUi } = ctx.layout.ports;
  const server = await startTemporalDevServer({
    ...(dbFile ? { dbFile } : {}),
    port: temporal,
    ...(temporalUi === null ? { headless: true } : { uiPort: temporalUi }),
    detached: true,
    log: (line) => ctx.output('temporal', line, 'stdout'),
    onUnexpectedExit: (how) => ctx.onUnexpectedExit('Temporal', how),
  });
  ctx.lifecycle.add(RANK.temporal, { name: 'Temporal', stop: server.stop });
  return server;
}

async function startDatabase(ctx: Context): Promise<{ url: string; embedded: boolean }> {
  if (ctx.settings.databaseUrl) return { url: ctx.settings.databaseUrl, embedded: false };
  const dataDir = path.join(ctx.dataDir, 'pg');
  ctx.log(`starting embedded Postgres (data in ${dataDir})`);
  const server = await startEmbeddedPostgres({
    dataDir,
    port: ctx.layout.ports.postgres,
    persistent: ctx.layout.persistent,
    detached: true,
    log: (line) => ctx.output('postgres', line, 'stdout'),
    onUnexpectedExit: (how) => ctx.onUnexpectedExit('Postgres', how),
  });
  ctx.lifecycle.add(RANK.postgres, { name: 'Postgres', stop: server.stop });
  return { url: server.url, embedded: true };
}

/** Temporal and Postgres start side by side; both are awaited, so neither is left unregistered. */
async function startInfrastructure(ctx: Context) {
  const [temporal, database] = await Promise.allSettled([startTemporal(ctx), startDatabase(ctx)]);
  if (temporal.status === 'rejected') throw temporal.reason;
  if (database.status === 'rejected') throw database.reason;
  return { temporal: temporal.value, database: database.value };
}

function announceDemoModel(ctx: Context, baseUrl: string): void {
  const lines = [
    'NO OPENAI_API_KEY: USING THE OFFLINE DEMO MODEL',
    `"keel-local" at ${baseUrl} gives canned, deterministic replies.`,
    'Set OPENAI_API_KEY (and optionally OPENAI_BASE_URL, KEEL_MODEL) for a real model.',
  ];
  const width = Math.max(...lines.map((l) => l.length)) + 4;
  ctx.log('*'.repeat(width));
  for (const line of lines) ctx.log(`* ${line.padEnd(width - 4)} *`);
  ctx.log('*'.repeat(width));
}

/** Starts the local model server when there is no API key; returns the LLM settings for the apps. */
async function startModel(ctx: Context, env: NodeJS.ProcessEnv): Promise<NodeJS.ProcessEnv> {
  if (ctx.settings.llm.apiKey) return {};
  const port = ctx.settings.localModelPort;
  const baseUrl = `http://127.0.0.1:${port}/v1`;
  announceDemoModel(ctx, baseUrl);
  await assertPortFree(port, 'Local model server (KEEL_LOCAL_MODEL_PORT)');
  const model = spawnApp(ctx, 'model', 'model-server/main.ts', { ...env, KEEL_LOCAL_MODEL_PORT: String(port) });
  ctx.lifecycle.add(RANK.model, model);
  await waitForPort(port, model, MODEL_READY_TIMEOUT_MS, ctx.signal);
  return { OPENAI_BASE_URL: baseUrl, OPENAI_API_KEY: 'local-demo', KEEL_MODEL: 'keel-local' };
}

/** Starts the worker and the API; resolves to the port the API listens on. */
async function startApps(ctx: Context, env: NodeJS.ProcessEnv): Promise<number> {
  if (ctx.settings.api.port !== 0) await assertPortFree(ctx.settings.api.port, 'API (KEEL_API_PORT)');
  const worker = spawnApp(ctx, 'worker', 'worker/main.ts', env);
  const api = spawnApp(ctx, 'api', 'api/main.ts', env);
  ctx.lifecycle.add(RANK.app, worker);
  ctx.lifecycle.add(RANK.app, api);
  const [, listening] = await Promise.all([
    worker.waitForLine(/worker started/, WORKER_READY_TIMEOUT_MS, ctx.signal),
    api.waitForLine(/api listening on http:\/\/[^:\s]+:(\d+)/, API_READY_TIMEOUT_MS, ctx.signal),
  ]);
  return Number(listening[1]);
}

/**
 * A ready-to-use development token (user "dev"), an admin API key and a webhook signing secret, unless configured:
 * made once and kept in the data directory, so they survive restarts.
 */
async function developmentSecrets(ctx: Context): Promise<Ready['secrets']> {
  const auth = ctx.settings.auth;
  const keep = async (file: string) => {
    const full = path.join(ctx.dataDir, file);
    const existing = await readFile(full, 'utf8').then((t) => t.trim(), () => '');
    if (existing) return existing;
    const made = `keel_${randomBytes(24).toString('base64url')}`;
    await writeFile(full, `${made}\n`, { mode: 0o600 });
    return made;
  };
  return {
    devToken: auth.devToken ?? (await keep('dev-token')),
    adminApiKey: auth.adminApiKey ?? (await keep('admin-api-key')),
    webhookSecret: ctx.settings.webhooks.secret ?? (await keep('webhook-secret')),
    authDisabled: auth.disabled,
  };
}

async function startEverything(ctx: Context): Promise<Ready> {
  await mkdir(ctx.dataDir, { recursive: true });
  if (!ctx.layout.persistent) ctx.lifecycle.add(RANK.dataDir, { name: `data directory ${ctx.dataDir}`, stop: () => rm(ctx.dataDir, { recursive: true, force: true }) });
  const { temporal, database } = await startInfrastructure(ctx);
  if (ctx.signal.aborted) throw new StartAborted();
  const secrets = await developmentSecrets(ctx);
  const appEnv: NodeJS.ProcessEnv = {
    ...ctx.env,
    TEMPORAL_ADDRESS: temporal.address,
    DATABASE_URL: database.url,
    ...(secrets.devToken ? { KEEL_DEV_TOKEN: secrets.devToken } : {}),
    ...(secrets.adminApiKey ? { KEEL_ADMIN_API_KEY: secrets.adminApiKey } : {}),
    ...(secrets.webhookSecret ? { KEEL_WEBHOOK_SECRET: secrets.webhookSecret } : {}),
  };
  Object.assign(appEnv, await startModel(ctx, appEnv));
  if (ctx.signal.aborted) throw new StartAborted();
  const apiPort = await startApps(ctx, appEnv);
  const model = ctx.settings.llm.apiKey ? `${ctx.settings.llm.model} via ${ctx.settings.llm.baseUrl ?? 'api.openai.com'}` : 'keel-local (offline demo)';
  return { settings: ctx.settings, apiPort, secrets, temporal, database, model };
}

// ---------------------------------------------------------------------------------------------

/**
 * Starts everything and supervises it until the process ends: on a signal, on an unexpected
 * exit of anything started, or when `whenReady` resolves to an exit code, everything is stopped
 * in order and the process exits. `whenReady` resolving to nothing keeps the stack running.
 */
export function launch(opts: LaunchOptions, whenReady: (ready: Ready) => Promise<number | void>): void {
  const { log } = opts;
  let settings: Settings;
  try {
    settings = loadSettings(opts.env);
  } catch (error) {
    log(`could not start: ${error instanceof Error ? error.message : String(error)}`);
    process.exit(1);
  }
  const lifecycle = new Lifecycle(log);
  const abort = new AbortController();
  let exiting = false;
  const ctx: Context = {
    settings,
    env: opts.env,
    layout: opts.layout,
    dataDir: path.resolve(opts.layout.dataDir ?? settings.dataDir),
    lifecycle,
    signal: abort.signal,
    log,
    output: opts.output,
    // Only ever called from the event loop, so after `fail` below has been defined.
    onUnexpectedExit: (name, how) => fail(`${name} ${how}; shutting everything down`),
  };
  const startup = startEverything(ctx);

  const exit = async (code: number) => {
    if (exiting) return;
    exiting = true;
    abort.abort();
    // Let an in-flight start finish registering what it started, so that gets stopped too.
    await startup.catch(() => undefined);
    await lifecycle.stopAll();
    log(code === 0 ? 'stopped' : 'stopped after a failure');
    opts.afterStop?.(code);
    process.exit(code);
  };
  const fail = (message: string) => {
    if (exiting) return;
    log(message);
    void exit(1);
  };
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      if (exiting) return log('already stopping, please wait');
      log(`${signal}: stopping`);
      void exit(opts.signalExitCode);
    });
  }
  process.on('uncaughtException', (error) => fail(`unexpected error: ${error.stack ?? error.message}`));
  process.on('unhandledRejection', (reason) => fail(`unexpected error: ${String(reason)}`));

  startup.then(
    async (ready) => {
      const code = await whenReady(ready).catch((error: unknown) => {
        fail(`failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`);
        return undefined;
      });
      if (typeof code === 'number') void exit(code);
    },
    (error: unknown) => {
      if (!(error instanceof StartAborted)) fail(`could not start: ${error instanceof Error ? error.message : String(error)}`);
    },
  );
}
