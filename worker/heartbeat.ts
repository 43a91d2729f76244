import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import type { DatabasePool } from 'slonik';
import type { Logger } from '../config/logger';
import { markWorkerStopped, writeHeartbeat, type Heartbeat } from '../db/workers';

/**
 * The worker's Temporal identity, and the key of its heartbeat row: `pid@host` as Temporal's
 * default, plus a random suffix, because a restarted container has the same host name and pid.
 */
export function workerIdentity(): string {
  return `${process.pid}@${hostname()}/${randomBytes(4).toString('hex')}`;
}

export interface HeartbeatDeps {
  pool: DatabasePool;
  identity: string;
  buildVersion: string;
  taskQueue: string;
  everyMs: number;
  turns: { readonly inFlight: number; completed(): Promise<number> };
  log: Logger;
  /** The longest stop() waits to mark the row stopped (a database that is down must not hold a shutdown). */
  stopTimeoutMs?: number;
}

/**
 * Writes the worker's heartbeat row every `everyMs`. A write that fails (Postgres down) is
 * logged and the next tick tries again; a tick never starts while the previous write is still
 * running, so a slow database holds one pool connection at most, and nothing here throws.
 */
export class WorkerHeartbeat {
  private timer: NodeJS.Timeout | undefined;
  private inflight: Promise<void> = Promise.resolve();
  private stopped = false;
  private failing = false;

  constructor(private readonly deps: HeartbeatDeps) {}

  /** Writes the first heartbeat now (without waiting for it) and the next ones on the interval. */
  start(): void {
    this.tick();
  }

  private async snapshot(): Promise<Heartbeat> {
    const { identity, buildVersion, taskQueue, turns } = this.deps;
    return { identity, buildVersion, taskQueue, turnsInFlight: turns.inFlight, turnsCompleted: await turns.completed() };
  }

  private tick(): void {
    this.inflight = this.beat().finally(() => {
      if (this.stopped) return;
      this.timer = setTimeout(() => this.tick(), this.deps.everyMs);
      this.timer.unref();
    });
  }

  private async beat(): Promise<void> {
    try {
      await writeHeartbeat(this.deps.pool, await this.snapshot());
      if (this.failing) this.deps.log.info({ identity: this.deps.identity }, 'worker heartbeat written again');
      this.failing = false;
    } catch (error) {
      // Logged once per outage, not on every tick.
      if (!this.failing) this.deps.log.warn({ err: error, identity: this.deps.identity }, 'worker heartbeat could not be written; retrying on every tick');
      this.failing = true;
    }
  }

  /**
   * Stops the ticks and marks the row stopped, so a clean stop raises no stale-worker alert.
   * Bounded by stopTimeoutMs: if it cannot be written, the row goes stale and is reported.
   */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.timer);
    let timeout: NodeJS.Timeout | undefined;
    // After the heartbeat being written, if any: the stopped mark must be the row's last write.
    const marked = this.inflight.then(() => this.snapshot()).then((h) => markWorkerStopped(this.deps.pool, h));
    const gaveUp = new Promise<'timeout'>((resolve) => (timeout = setTimeout(() => resolve('timeout'), this.deps.stopTimeoutMs ?? 5_000)));
    try {
      if ((await Promise.race([marked, gaveUp])) === 'timeout') this.deps.log.warn({ identity: this.deps.identity }, 'worker could not be marked stopped in time: it will be reported stale');
    } catch (error) {
      this.deps.log.warn({ err: error, identity: this.deps.identity }, 'worker could not be marked stopped: it will be reported stale');
    } finally {
      clearTimeout(timeout);
      marked.catch(() => undefined);
    }
  }
}
