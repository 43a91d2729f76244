import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

export interface RateDecision {
  allowed: boolean;
  /** When refused, how long until one more hit would be allowed. */
  retryAfterMs: number;
}

/*
 * Sliding-window counter: the previous fixed window's hits weighted by how much of it still
 * overlaps the sliding window, plus the current window's hits. Unlike a bare fixed window it
 * never lets 2x the limit through around a window boundary. The decision is taken in SQL, in
 * integers, by rate_limit_hit (db/migrations/005_rate_limits.sql); only the wait is computed here.
 */

/**
 * The wait until `prev * (1 - elapsed / window) + cur + 1 <= limit`, assuming no other hits
 * arrive meanwhile.
 */
export function retryAfterMs(prev: number, cur: number, elapsedMs: number, windowMs: number, limit: number): number {
  const room = limit - 1;
  if (cur <= room) {
    // Within this window: the previous window's share decays until it fits.
    if (prev <= 0) return 0;
    const at = windowMs * (1 - (room - cur) / prev);
    return Math.max(0, Math.ceil(at - elapsedMs));
  }
  // Only the next window can help: there `cur` becomes the decaying previous window.
  const at = windowMs * (1 - room / cur);
  return Math.ceil(windowMs - elapsedMs + Math.max(0, at));
}

/** One limit on one key: at most `limit` hits per `windowMs`. */
export interface RateLimit {
  key: string;
  limit: number;
  windowMs: number;
}

export const HitRow = z.object({ allowed: z.boolean(), cur: z.number(), prev: z.number(), elapsed_ms: z.coerce.number() });

/**
 * The statement that counts one hit against `rate` (columns allowed, cur, prev, elapsed_ms), for
 * a caller that puts it in front of its own write; with no limit, a row that allows.
 */
export function hitQuery(rate: RateLimit | null) {
  return rate
    ? sql.fragment`SELECT allowed, cur, prev, elapsed_ms FROM rate_limit_hit(${rate.key}, ${rate.limit}, ${rate.windowMs})`
    : sql.fragment`SELECT true AS allowed, 0 AS cur, 0 AS prev, 0::bigint AS elapsed_ms`;
}

export function decisionOf(row: z.infer<typeof HitRow>, rate: RateLimit): RateDecision {
  if (row.allowed) return { allowed: true, retryAfterMs: 0 };
  return { allowed: false, retryAfterMs: Math.max(1, retryAfterMs(row.prev, row.cur, row.elapsed_ms, rate.windowMs, rate.limit)) };
}

/**
 * Counts one hit for `key` if it is within `limit` per `windowMs`: one round trip, atomic
 * across every API process, on the database's clock. A refused hit is not counted, so a
 * client that retries too early is not kept out longer for it.
 */
export async function hit(db: CommonQueryMethods, rate: RateLimit): Promise<RateDecision> {
  return decisionOf(await db.one(sql.type(HitRow)`${hitQuery(rate)}`), rate);
}

/** Takes back one hit counted in the current window (a send that failed after it was counted). */
export async function unhit(db: CommonQueryMethods, key: string, windowMs: number): Promise<void> {
  await db.query(sql.unsafe`
    UPDATE rate_limits SET hits = hits - 1
    WHERE key = ${key} AND hits > 0
      AND window_start = (extract(epoch FROM clock_timestamp()) * 1000)::bigint - (extract(epoch FROM clock_timestamp()) * 1000)::bigint % ${windowMs}`);
}

/** Windows that can no longer count; the table holds only live keys, so its size stays bounded. */
export async function deleteOldWindows(db: CommonQueryMethods, olderThanMs: number): Promise<number> {
  const result = await db.query(sql.unsafe`
    DELETE FROM rate_limits WHERE window_start < (extract(epoch FROM clock_timestamp()) * 1000)::bigint - ${olderThanMs}`);
  return result.rowCount;
}
