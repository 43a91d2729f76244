import { spawn, type ChildProcess } from 'node:child_process';
import net from 'node:net';
import path from 'node:path';
import readline from 'node:readline';
import { spawnEntry, type Spawned } from '../../test/support/processes';

/**
 * The chaos run's deployment, every part a process of its own on loopback: a file-backed Temporal
 * dev server, an embedded PostgreSQL with its data directory, the local model server, two workers
 * and two APIs on one task queue. Each part can be SIGKILLed and started again in place (same
 * port, same state on disk).
 */

/** The parts that can be killed. */
export type Part = 'worker' | 'api' | 'temporal' | 'postgres' | 'model';

const APP_READY_TIMEOUT_MS = 120_000;

export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

interface ServiceProcess {
  child: ChildProcess;
  /** What it printed after `ready`: the Temporal address or the PostgreSQL URL. */
  ready: Promise<string>;
}

/** bench/chaos/service-process.ts in a process group of its own, which the server joins. */
function spawnService(kind: 'temporal' | 'postgres', dir: string, port: number): ServiceProcess {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(__dirname, 'service-process.ts'), kind, dir, String(port)], {
    cwd: path.resolve(__dirname, '../..'),
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const tail: string[] = [];
  const ready = new Promise<string>((resolve, reject) => {
    const onLine = (line: string) => {
      const m = /^ready (\S+)/.exec(line);
      if (m) resolve(m[1]!);
      tail.push(line);
      if (tail.length > 20) tail.shift();
    };
    readline.createInterface({ input: child.stdout! }).on('line', onLine);
    readline.createInterface({ input: child.stderr! }).on('line', onLine);
    child.once('exit', (code, signal) => reject(new Error(`${kind} exited (${signal ?? code}) before it was ready: ${tail.join(' | ')}`)));
  });
  ready.catch(() => undefined);
  return { child, ready };
}

/** SIGKILL to the whole group: the server (and Postgres's backends) die with their supervisor. */
async function killGroup(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  try {
    process.kill(-child.pid!, 'SIGKILL');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
  }
  await exited;
  // The server, orphaned now, is gone only once init has reaped it: a restart must not find it alive.
  for (;;) {
    try {
      process.kill(-child.pid!, 0);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface ClusterOptions {
  dir: string;
  log: (line: string) => void;
  appEnv: Record<string, string>;
  /** Posted to the model server's `/_control/script` each time it starts (its scripts live in memory). */
  modelScript: Record<string, unknown>;
}

export class Cluster {
  temporalPort = 0;
  postgresPort = 0;
  readonly apiPorts: number[] = [];
  databaseUrl = '';
  temporalAddress = '';
  private temporal?: ServiceProcess;
  private postgres?: ServiceProcess;
  private model?: Spawned;
  private modelPort = 0;
  modelUrl = '';
  readonly workers: (Spawned | undefined)[] = [undefined, undefined];
  readonly apis: (Spawned | undefined)[] = [undefined, undefined];
  /** Apps that died without being killed by the schedule (restarted by `supervise`). */
  readonly unexpectedExits: string[] = [];
  private env: Record<string, string> = {};
  private stopping = false;

  constructor(private readonly opts: ClusterOptions) {}

  async startTemporal(): Promise<void> {
    this.temporal = spawnService('temporal', this.opts.dir, this.temporalPort);
    this.temporalAddress = await this.temporal.ready;
    this.temporalPort = Number(this.temporalAddress.split(':')[1]);
  }

  /** Persistent: fsync on, the data directory kept, so a SIGKILL is a crash it recovers from. */
  async startPostgres(): Promise<void> {
    this.postgres = spawnService('postgres', this.opts.dir, this.postgresPort);
    this.databaseUrl = await this.postgres.ready;
    this.postgresPort = Number(new URL(this.databaseUrl).port);
  }

  async start(): Promise<void> {
    await Promise.all([this.startTemporal(), this.startPostgres()]);
    this.modelPort = await freePort();
    this.modelUrl = `http://127.0.0.1:${this.modelPort}`;
    await this.startModel();
    this.apiPorts.push(await freePort(), await freePort());
    this.env = {
      ...this.opts.appEnv,
      TEMPORAL_ADDRESS: this.temporalAddress,
      DATABASE_URL: this.databaseUrl,
      OPENAI_BASE_URL: `${this.modelUrl}/v1`,
    };
    // The first worker migrates the database alone; the rest start side by side.
    await this.startApp('worker', 0);
    await Promise.all([this.startApp('worker', 1), this.startApp('api', 0), this.startApp('api', 1)]);
  }

  async startModel(): Promise<void> {
    const model = spawnEntry('model-server/main.ts', { KEEL_LOCAL_MODEL_PORT: String(this.modelPort) });
    this.model = model;
    try {
      await model.waitForLine(/listening on/, 30_000);
      const res = await fetch(`${this.modelUrl}/_control/script`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(this.opts.modelScript) });
      if (!res.ok) throw new Error(`model script: ${res.status}`);
    } catch (error) {
      // A retry starts another on the same port: this one must be gone first.
      await model.kill('SIGKILL');
      throw error;
    }
  }

  /** The process IDs of the running workers, by index. */
  workerPids(): Map<number, number> {
    const out = new Map<number, number>();
    this.workers.forEach((w, i) => {
      if (w && w.child.exitCode === null && w.child.signalCode === null && w.child.pid !== undefined) out.set(w.child.pid, i);
    });
    return out;
  }

  async startApp(kind: 'worker' | 'api', index: number): Promise<void> {
    if (kind === 'worker') {
      const w = spawnEntry('worker/main.ts', this.env);
      this.workers[index] = w;
      this.supervise(w, kind, index);
      await w.waitForLine(/worker started/, APP_READY_TIMEOUT_MS);
    } else {
      const a = spawnEntry('api/main.ts', { ...this.env, KEEL_API_PORT: String(this.apiPorts[index]) });
      this.apis[index] = a;
      this.supervise(a, kind, index);
      await a.waitForLine(/api listening on/, APP_READY_TIMEOUT_MS);
    }
    // spawnEntry keeps every output line; a long run only needs the recent ones.
    const app = kind === 'worker' ? this.workers[index]! : this.apis[index]!;
    const trim = setInterval(() => app.lines.splice(0, Math.max(0, app.lines.length - 200)), 5_000);
    app.child.once('exit', () => clearInterval(trim));
  }

  /** An app that dies on its own is a finding, and is started again so the run can go on. */
  private supervise(app: Spawned, kind: 'worker' | 'api', index: number): void {
    app.child.once('exit', (code, signal) => {
      const current = kind === 'worker' ? this.workers[index] : this.apis[index];
      if (this.stopping || current !== app || signal === 'SIGKILL') return;
      this.unexpectedExits.push(`${kind} ${index} exited with ${signal ?? code}: ${app.lines.slice(-5).join(' | ')}`);
      this.opts.log(`${kind} ${index} exited on its own (${signal ?? code}); starting it again`);
      void this.startApp(kind, index).catch((error: unknown) => this.opts.log(`restart of ${kind} ${index} failed: ${String(error)}`));
    });
  }

  /** SIGKILLs one part; resolves once it is gone. */
  async kill(kind: Part, index: number): Promise<void> {
    if (kind === 'worker' || kind === 'api') {
      const app = (kind === 'worker' ? this.workers : this.apis)[index];
      if (!app || app.child.exitCode !== null || app.child.signalCode !== null) return;
      const exited = new Promise((r) => app.child.once('exit', r));
      app.child.kill('SIGKILL');
      await exited;
      return;
    }
    if (kind === 'model') {
      if (this.model) await this.model.kill('SIGKILL');
      return;
    }
    const service = kind === 'temporal' ? this.temporal : this.postgres;
    if (service) await killGroup(service.child);
  }

  /** Starts a killed part again in place; resolves when it serves. */
  async restart(kind: Part, index: number): Promise<void> {
    if (kind === 'worker' || kind === 'api') return this.startApp(kind, index);
    if (kind === 'model') return this.startModel();
    if (kind === 'temporal') return this.startTemporal();
    return this.startPostgres();
  }

  async stop(): Promise<void> {
    this.stopping = true;
    const apps = [...this.workers, ...this.apis, this.model].filter((a): a is Spawned => a !== undefined);
    await Promise.all(apps.map((a) => a.kill('SIGTERM')));
    for (const service of [this.temporal, this.postgres]) {
      if (!service || service.child.exitCode !== null || service.child.signalCode !== null) continue;
      const exited = new Promise((resolve) => service.child.once('exit', resolve));
      service.child.kill('SIGTERM');
      // A service still starting has no handler yet: the group goes.
      const timer = setTimeout(() => void killGroup(service.child), 15_000);
      await exited;
      clearTimeout(timer);
      try {
        process.kill(-service.child.pid!, 'SIGKILL'); // whatever of its group outlived it
      } catch {
        // nothing left
      }
    }
  }
}
