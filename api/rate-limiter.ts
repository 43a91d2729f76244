import type { Context, Next } from 'koa';
import type { DatabasePool } from 'slonik';
import type { Caller } from './auth';
import { KeelError } from '../contracts/errors';
import type { Settings } from '../config/settings';
import { deleteOldWindows, hit, unhit } from '../db/rate-limits';

const SWEEP_INTERVAL_MS = 60_000;

/**
 * Limits kept in Postgres, so they hold however many API processes share the load. Nothing
 * is kept in memory; the table holds only the windows that still count.
 */
export class RateLimiter {
  private readonly sweeper: NodeJS.Timeout;

  constructor(
    private readonly pool: DatabasePool,
    private readonly limits: Settings['rateLimits'],
  ) {
    const keepMs = 2 * Math.max(limits.messagesWindowMs, limits.requestsWindowMs);
    this.sweeper = setInterval(() => void deleteOldWindows(pool, keepMs).catch(() => undefined), SWEEP_INTERVAL_MS);
    this.sweeper.unref();
  }

  /**
   * KEEL_RATE_MESSAGES_PER_SESSION per KEEL_RATE_MESSAGES_WINDOW_MS, across REST, WebSocket and
   * SSE. Returns a function that gives the slot back, for a send that then fails.
   */
  async messageToSession(sessionId: string): Promise<() => Promise<void>> {
    const key = `msg:${sessionId}`;
    const { messagesPerSession: limit, messagesWindowMs: windowMs } = this.limits;
    await this.check(key, limit, windowMs, 'messages to this session');
    return () => (limit > 0 ? unhit(this.pool, key, windowMs).catch(() => undefined) : Promise.resolve());
  }

  /** KEEL_RATE_REQUESTS_PER_TOKEN per KEEL_RATE_REQUESTS_WINDOW_MS; `tokenKey` is the token's hash, never the token. */
  requestByToken(tokenKey: string): Promise<void> {
    return this.check(`req:${tokenKey}`, this.limits.requestsPerToken, this.limits.requestsWindowMs, 'requests with this token');
  }

  /** Counts every authenticated REST request against its token (after auth, which sets the caller). */
  middleware() {
    return async (ctx: Context, next: Next) => {
      const caller = ctx.state.caller as Caller | undefined;
      if (caller) await this.requestByToken(caller.tokenKey);
      return next();
    };
  }

  private async check(key: string, limit: number, windowMs: number, what: string): Promise<void> {
    if (limit <= 0) return;
    const { allowed, retryAfterMs } = await hit(this.pool, key, limit, windowMs);
    if (!allowed) {
      const retryAfter = Math.max(1, Math.ceil(retryAfterMs / 1000));
      throw new KeelError('RATE_LIMIT_EXCEEDED', `Too many ${what}: at most ${limit} per ${windowMs / 1000} s`, { retryAfter });
    }
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}
