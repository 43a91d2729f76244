import type { Context, Next } from 'koa';
import type { DatabasePool } from 'slonik';
import type { Caller } from './auth';
import { KeelError } from '../contracts/errors';
import type { Settings } from '../config/settings';
import { deleteOldWindows, hit, type RateDecision, type RateLimit } from '../db/rate-limits';

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
   * SSE; null when it is off. deliverUserMessage counts the hit in the statement that stores
   * the message and answers `refused` when it is over the limit; messageRefused is its error.
   */
  messageToSession(sessionId: string): RateLimit | null {
    const { messagesPerSession: limit, messagesWindowMs: windowMs } = this.limits;
    return limit > 0 ? { key: `msg:${sessionId}`, limit, windowMs } : null;
  }

  /** The error a refused message gets. */
  messageRefused(decision: RateDecision): KeelError {
    const { messagesPerSession: limit, messagesWindowMs: windowMs } = this.limits;
    return refusal({ limit, windowMs }, decision, 'messages to this session');
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
    const rate = { key, limit, windowMs };
    const decision = await hit(this.pool, rate);
    if (!decision.allowed) throw refusal(rate, decision, what);
  }

  close(): void {
    clearInterval(this.sweeper);
  }
}

function refusal(rate: Omit<RateLimit, 'key'>, decision: RateDecision, what: string): KeelError {
  const retryAfter = Math.max(1, Math.ceil(decision.retryAfterMs / 1000));
  return new KeelError('RATE_LIMIT_EXCEEDED', `Too many ${what}: at most ${rate.limit} per ${rate.windowMs / 1000} s`, { retryAfter });
}
