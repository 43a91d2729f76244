import { sql, type DatabaseTransactionConnection } from 'slonik';
import { z } from 'zod';
import type { ToolContext } from '../tool';

/** 'already' when an earlier attempt of the same call had made the change: nothing was changed again. */
export type Applied<T> = T & { applied: 'now' | 'already' };

const Claimed = z.object({ key: z.string() });
const Stored = z.object({ result: z.record(z.string(), z.unknown()).nullable() });

/**
 * Makes one demo change at most once per tool call. The call's idempotency key (the same on
 * every retry) is claimed in demo_actions in the change's own transaction: an attempt that
 * finds it claimed answers the result the first one stored. A concurrent attempt waits on the
 * claim, then reads the committed result; when the first one failed (a ToolInputError rolls the
 * claim back) it makes the change itself, and fails the same way.
 */
export async function applyOnce<T extends Record<string, unknown>>(
  ctx: ToolContext,
  tool: string,
  change: (tx: DatabaseTransactionConnection) => Promise<T>,
): Promise<Applied<T>> {
  return ctx.pool.transaction(async (tx) => {
    const claimed = await tx.maybeOne(sql.type(Claimed)`
      INSERT INTO demo_actions (idempotency_key, tool, session_id)
      VALUES (${ctx.idempotencyKey}, ${tool}, ${ctx.sessionId})
      ON CONFLICT (idempotency_key) DO NOTHING
      RETURNING idempotency_key AS key`);
    if (!claimed) {
      // A new statement: under READ COMMITTED it sees the row the other attempt committed.
      const stored = await tx.one(sql.type(Stored)`SELECT result FROM demo_actions WHERE idempotency_key = ${ctx.idempotencyKey}`);
      return { ...(stored.result as T), applied: 'already' as const };
    }
    const result = await change(tx);
    await tx.query(sql.unsafe`UPDATE demo_actions SET result = ${sql.jsonb(result as never)} WHERE idempotency_key = ${ctx.idempotencyKey}`);
    return { ...result, applied: 'now' as const };
  });
}

/** Cents as the model reads money: "12.50". */
export function money(cents: number): string {
  const sign = cents < 0 ? '-' : '';
  const abs = Math.abs(Math.round(cents));
  return `${sign}${Math.floor(abs / 100)}.${String(abs % 100).padStart(2, '0')}`;
}

/** An ID the model may send as a string or a number, trimmed, with a leading "#" dropped. */
export function idArg(pattern: RegExp, example: string) {
  return z
    .union([z.string(), z.number().int().nonnegative()])
    .transform((v) => String(v).trim().replace(/^#/, ''))
    .pipe(z.string().regex(pattern, `must look like ${example}`));
}

/** A whole percentage from 1 to 100, with one message for every way of missing it. */
export const Percent = z.number({ invalid_type_error: 'must be a whole number from 1 to 100' }).int('must be a whole number from 1 to 100').min(1, 'must be a whole number from 1 to 100').max(100, 'must be a whole number from 1 to 100');
