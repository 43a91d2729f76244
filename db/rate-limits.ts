import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

export interface RateDecision {
  allowed: boolean;
  /** When refused, how long until one more hit would be allowed. */
  retryAfterMs: number;
}

/**
 * Sliding-window counter: the previous fixed window's hits weighted by how much of it still
 * overlaps the sliding window, plus the current window's hits. Unlike a bare fixed window it
 * never lets 2x the limit through around a window boundary.
 */
export function slidingEstimate(prev: number, cur: number, elapsedMs: number, windowMs: number): number {
  return prev * (1 - elapsedMs / windowMs) + cur;
}

/** The wait until `estimate + 1 <= limit`, assuming no other hits arrive meanwhile. */
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

/**
 * Counts one hit for `key` and says whether it is within `limit` per `windowMs`. The increment
 * is one atomic upsert shared by every API process; a refused hit is taken back, so a client
 * that retries too early is not kept out longer for it.
 */
export async function hit(db: CommonQueryMethods, key: string, limit: number, windowMs: number, now = Date.now()): Promise<RateDecision> {
  const windowStart = now - (now % windowMs);
  const counts = await db.one(sql.type(z.object({ cur: z.number(), prev: z.number() }))`
    WITH cur AS (
      INSERT INTO rate_limits (key, window_start, hits) VALUES (${key}, ${windowStart}, 1)
      ON CONFLICT (key, window_start) DO UPDATE SET hits = rate_limits.hits + 1
      RETURNING hits)
    SELECT cur.hits AS cur,
           COALESCE((SELECT hits FROM rate_limits WHERE key = ${key} AND window_start = ${windowStart - windowMs}), 0) AS prev
    FROM cur`);
  const elapsed = now - windowStart;
  if (slidingEstimate(counts.prev, counts.cur, elapsed, windowMs) <= limit) return { allowed: true, retryAfterMs: 0 };
  await db.query(sql.unsafe`UPDATE rate_limits SET hits = hits - 1 WHERE key = ${key} AND window_start = ${windowStart}`);
  return { allowed: false, retryAfterMs: Math.max(1, retryAfterMs(counts.prev, counts.cur - 1, elapsed, windowMs, limit)) };
}

/** Windows that can no longer count; the table holds only live keys, so its size stays bounded. */
export async function deleteOldWindows(db: CommonQueryMethods, olderThanMs: number, now = Date.now()): Promise<number> {
  const result = await db.query(sql.unsafe`DELETE FROM rate_limits WHERE window_start < ${now - olderThanMs}`);
  return result.rowCount;
}
