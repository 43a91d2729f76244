import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { loadSettings, type Settings } from '../config/settings';
import { assertPortFree, hasExited, startEmbeddedPostgres, startTemporalDevServer, stopProcess, type Log } from './services';

/**
 * `npm start`: the whole of Keel from one command. Whatever is not configured runs embedded —
 * a Temporal dev server and a PostgreSQL, both persisted under the data directory, and the
 * offline demo model when there is no OpenAI key — then the worker and the API.
 */

const ROOT = path.resolve(__dirname, '..');
const EMBEDDED_TEMPORAL_PORT = 7233;
const EMBEDDED_TEMPORAL_UI_PORT = 8233;
const EMBEDDED_POSTGRES_PORT = 5433;
const CHILD_STOP_GRACE_MS = 10_000;
// The worker may bundle the workflow code with webpack on its first start.
const WORKER_READY_TIMEOUT_MS = 180_000;
const API_READY_TIMEOUT_MS = 60_000;
const MODEL_READY_TIMEOUT_MS = 30_000;

const say: Log = (line) => console.log(`[keel] ${line}`);
const tagged = (tag: string): Log => (line) => console.log(`[${tag}] ${line}`);

class StartAborted extends Error {}

// ---------------------------------------------------------------------------------------------
// Shutdown order

/** Stopped from the highest rank down: the apps, the model, Temporal, then Postgres. */
const RANK = { postgres: 0, temporal: 1, model: 2, app: 3 } as const;

interface Stoppable {
  name: string;
  stop(): Promise<void>;
}

class Lifecycle {
  private readonly items: { rank: number; item: Stoppable }[] = [];
  private stopping: Promise<void> | undefined;

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
    say(`stopping ${item.name}`);
    try {
      await item.stop();
    } catch (error) {
      say(`${item.name} did not stop cleanly: ${error instanceof Error ? error.message : String(error)}`);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Child processes (worker, API, model server)

interface AppProcess extends Stoppable {
  child: ChildProcess;
  waitForLine(pattern: RegExp, timeoutMs: number, signal: AbortSignal): Promise<RegExpMatchArray>;
}

function forwardLines(stream: NodeJS.ReadableStream, write: Log, onLine: (line: string) => void): void {
  readline.createInterface({ input: stream }).on('line', (line) => {
    write(line);
    onLine(line);
  });
}

/**
 * Runs one of our entry points in its own process group, so Ctrl-C in the terminal reaches only
 * this orchestrator, which then stops everything in order.
 */
function spawnApp(name: string, entry: string, env: NodeJS.ProcessEnv, onUnexpectedExit: (how: string) => void, lifecycle: Lifecycle): AppProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, entry)], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  const listeners = new Set<(line: string) => void>();
  const onLine = (line: string) => listeners.forEach((l) => l(line));
  forwardLines(child.stdout!, (line) => process.stdout.write(`[${name}] ${line}\n`), onLine);
  forwardLines(child.stderr!, (line) => process.stderr.write(`[${name}] ${line}\n`), onLine);
  child.once('error', (error) => {
    if (!lifecycle.isStopping) onUnexpectedExit(`could not be started: ${error.message}`);
  });
  child.once('exit', (code, signal) => {
    if (!lifecycle.isStopping) onUnexpectedExit(`exited with ${signal ?? code}`);
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

interface Context {
  settings: Settings;
  dataDir: string;
  lifecycle: Lifecycle;
  signal: AbortSignal;
  /** A process we started died on its own: everything goes down. */
  onUnexpectedExit: (name: string, how: string) => void;
}

async function startTemporal(ctx: Context): Promise<{ address: string; uiUrl?: string }> {
  if (ctx.settings.temporal.address) return { address: ctx.settings.temporal.address };
  const dbFile = path.join(ctx.dataDir, 'temporal.sqlite');
  say(`starting the Temporal dev server (state in ${dbFile})`);
  const server = await startTemporalDevServer({
    dbFile,
    port: EMBEDDED_TEMPORAL_PORT,
    uiPort: EMBEDDED_TEMPORAL_UI_PORT,
    detached: true,
    log: tagged('temporal'),
    onUnexpectedExit: (how) => ctx.onUnexpectedExit('Temporal', how),
  });
  ctx.lifecycle.add(RANK.temporal, { name: 'Temporal', stop: server.stop });
  return server;
}

async function startDatabase(ctx: Context): Promise<{ url: string; embedded: boolean }> {
  if (ctx.settings.databaseUrl) return { url: ctx.settings.databaseUrl, embedded: false };
  const dataDir = path.join(ctx.dataDir, 'pg');
  say(`starting embedded Postgres (data in ${dataDir})`);
  const server = await startEmbeddedPostgres({
    dataDir,
    port: EMBEDDED_POSTGRES_PORT,
    persistent: true,
    detached: true,
    log: tagged('postgres'),
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

function announceDemoModel(baseUrl: string): void {
  const lines = [
    'NO OPENAI_API_KEY: USING THE OFFLINE DEMO MODEL',
    `"keel-local" at ${baseUrl} gives canned, deterministic replies.`,
    'Set OPENAI_API_KEY (and optionally OPENAI_BASE_URL, KEEL_MODEL) for a real model.',
  ];
  const width = Math.max(...lines.map((l) => l.length)) + 4;
  say('*'.repeat(width));
  for (const line of lines) say(`* ${line.padEnd(width - 4)} *`);
  say('*'.repeat(width));
}

/** Starts the local model server when there is no API key; returns the LLM settings for the apps. */
async function startModel(ctx: Context, env: NodeJS.ProcessEnv): Promise<NodeJS.ProcessEnv> {
  if (ctx.settings.llm.apiKey) return {};
  const port = ctx.settings.localModelPort;
  const baseUrl = `http://127.0.0.1:${port}/v1`;
  announceDemoModel(baseUrl);
  await assertPortFree(port, 'Local model server (KEEL_LOCAL_MODEL_PORT)');
  const model = spawnApp('model', 'model-server/main.ts', { ...env, KEEL_LOCAL_MODEL_PORT: String(port) }, (how) => ctx.onUnexpectedExit('model', how), ctx.lifecycle);
  ctx.lifecycle.add(RANK.model, model);
  await waitForPort(port, model, MODEL_READY_TIMEOUT_MS, ctx.signal);
  return { OPENAI_BASE_URL: baseUrl, OPENAI_API_KEY: 'local-demo', KEEL_MODEL: 'keel-local' };
}

/** Starts the worker and the API; resolves to the port the API listens on. */
async function startApps(ctx: Context, env: NodeJS.ProcessEnv): Promise<number> {
  if (ctx.settings.api.port !== 0) await assertPortFree(ctx.settings.api.port, 'API (KEEL_API_PORT)');
  const worker = spawnApp('worker', 'worker/main.ts', env, (how) => ctx.onUnexpectedExit('worker', how), ctx.lifecycle);
  const api = spawnApp('api', 'api/main.ts', env, (how) => ctx.onUnexpectedExit('api', how), ctx.lifecycle);
  ctx.lifecycle.add(RANK.app, worker);
  ctx.lifecycle.add(RANK.app, api);
  const [, listening] = await Promise.all([
    worker.waitForLine(/worker started/, WORKER_READY_TIMEOUT_MS, ctx.signal),
    api.waitForLine(/api listening on http:\/\/[^:\s]+:(\d+)/, API_READY_TIMEOUT_MS, ctx.signal),
  ]);
  return Number(listening[1]);
}

interface Ready {
  apiPort: number;
  secrets: { devToken?: string; adminApiKey?: string; authDisabled: boolean };
  temporal: { address: string; uiUrl?: string };
  database: { url: string; embedded: boolean };
  model: string;
}

async function startEverything(ctx: Context): Promise<Ready> {
  await mkdir(ctx.dataDir, { recursive: true });
  const { temporal, database } = await startInfrastructure(ctx);
  if (ctx.signal.aborted) throw new StartAborted();
  const secrets = await developmentSecrets(ctx);
  const appEnv: NodeJS.ProcessEnv = {
    ...process.env,
    TEMPORAL_ADDRESS: temporal.address,
    DATABASE_URL: database.url,
    ...(secrets.devToken ? { KEEL_DEV_TOKEN: secrets.devToken } : {}),
    ...(secrets.adminApiKey ? { KEEL_ADMIN_API_KEY: secrets.adminApiKey } : {}),
  };
  Object.assign(appEnv, await startModel(ctx, appEnv));
  if (ctx.signal.aborted) throw new StartAborted();
  const apiPort = await startApps(ctx, appEnv);
  const model = ctx.settings.llm.apiKey ? `${ctx.settings.llm.model} via ${ctx.settings.llm.baseUrl ?? 'api.openai.com'}` : 'keel-local (offline demo)';
  return { apiPort, secrets, temporal, database, model };
}

/**
 * A ready-to-use development token (user "dev") and an admin API key, unless configured:
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
    authDisabled: auth.disabled,
  };
}

function printBanner(settings: Settings, ready: Ready): void {
  const host = ['0.0.0.0', '::', ''].includes(settings.api.host) ? 'localhost' : settings.api.host;
  const api = `${host}:${ready.apiPort}`;
  const database = new URL(ready.database.url);
  database.password = database.password ? '***' : '';
  say('');
  say('Keel is ready.');
  say(`  API          http://${api}/api/v1   (health: /api/v1/health)`);
  say(`  WebSocket    ws://${api}/api/v1/sessions/<sessionId>/ws`);
  say(`  Temporal UI  ${ready.temporal.uiUrl ?? `(external Temporal at ${ready.temporal.address})`}`);
  say(`  Postgres     ${database.toString()}${ready.database.embedded ? ' (embedded)' : ''}`);
  say(`  Model        ${ready.model}`);
  if (ready.secrets.authDisabled) say('  Auth         DISABLED (KEEL_AUTH_DISABLED=true)');
  else {
    say(`  Dev token    ${ready.secrets.devToken}   (user "dev": Authorization: Bearer <token>, or ?token= on the WebSocket)`);
    say(`  Admin key    ${ready.secrets.adminApiKey}   (X-API-Key, for /api/v1/admin/tokens)`);
  }
  say('Press Ctrl-C to stop.');
  say('');
}

// ---------------------------------------------------------------------------------------------

async function main(): Promise<void> {
  const settings = loadSettings();
  const lifecycle = new Lifecycle();
  const abort = new AbortController();
  let exiting = false;

  // Only ever called from the event loop, so after `startup` below has been assigned.
  const exit = async (code: number) => {
    if (exiting) return;
    exiting = true;
    abort.abort();
    // Let an in-flight start finish registering what it started, so that gets stopped too.
    await startup.catch(() => undefined);
    await lifecycle.stopAll();
    say(code === 0 ? 'stopped' : 'stopped after a failure');
    process.exit(code);
  };

  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(signal, () => {
      if (exiting) return say('already stopping, please wait');
      say(`${signal}: stopping`);
      void exit(0);
    });
  }
  const fail = (message: string) => {
    if (exiting) return;
    say(message);
    void exit(1);
  };
  process.on('uncaughtException', (error) => fail(`unexpected error: ${error.stack ?? error.message}`));
  process.on('unhandledRejection', (reason) => fail(`unexpected error: ${String(reason)}`));

  const ctx: Context = {
    settings,
    dataDir: path.resolve(settings.dataDir),
    lifecycle,
    signal: abort.signal,
    onUnexpectedExit: (name, how) => fail(`${name} ${how}; shutting everything down`),
  };
  const startup = startEverything(ctx);
  try {
    printBanner(settings, await startup);
  } catch (error) {
    if (!(error instanceof StartAborted)) fail(`could not start: ${error instanceof Error ? error.message : String(error)}`);
  }
}

main().catch((error: unknown) => {
  say(`could not start: ${error instanceof Error ? error.message : String(error)}`);
  process.exit(1);
});
