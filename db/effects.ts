import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

export const EffectStatus = z.enum(['intent', 'done', 'failed', 'retryable', 'unknown', 'marked_done']);
export type EffectStatus = z.infer<typeof EffectStatus>;

export const EffectRow = z.object({
  tool_call_id: z.string(),
  session_id: z.string(),
  name: z.string(),
  idempotency_key: z.string(),
  idempotent: z.boolean(),
  status: EffectStatus,
  attempts: z.number(),
  result: z.unknown(),
  error_code: z.string().nullable(),
  error_message: z.string().nullable(),
  decided_by: z.string().nullable(),
  intent_at: z.number(),
  receipt_at: z.number().nullable(),
});
export type EffectRow = z.infer<typeof EffectRow>;

export const EFFECT_COLUMNS = sql.fragment`tool_call_id, session_id, name, idempotency_key, idempotent, status, attempts, result, error_code, error_message, decided_by, intent_at, receipt_at`;

/** What an attempt may do, given what the ledger holds for its call. */
export type Claim =
  | { kind: 'run'; attempt: number }
  /** An earlier attempt's receipt stands: report it, do not run again. */
  | { kind: 'receipt'; row: EffectRow }
  /** An earlier attempt may have acted, and the tool is not idempotent: a person decides. */
  | { kind: 'unknown'; row: EffectRow };

/**
 * Records the intent of an attempt before the tool runs, under the row's lock: a first attempt
 * inserts it; a later one may run again only when the earlier attempt is known not to have acted
 * (`retryable`), when the tool is idempotent (the same key makes a repeat harmless), or when a
 * person asked for it (`force`).
 */
export async function claimEffect(
  db: CommonQueryMethods,
  e: { toolCallId: string; sessionId: string; name: string; idempotencyKey: string; idempotent: boolean; force: boolean },
): Promise<Claim> {
  const inserted = await db.maybeOne(sql.type(EffectRow)`
    INSERT INTO effects (tool_call_id, session_id, name, idempotency_key, idempotent, status)
    VALUES (${e.toolCallId}, ${e.sessionId}, ${e.name}, ${e.idempotencyKey}, ${e.idempotent}, 'intent')
    ON CONFLICT (tool_call_id) DO NOTHING
    RETURNING ${EFFECT_COLUMNS}`);
  if (inserted) return { kind: 'run', attempt: 1 };
  const row = await db.one(sql.type(EffectRow)`SELECT ${EFFECT_COLUMNS} FROM effects WHERE tool_call_id = ${e.toolCallId} FOR UPDATE`);
  if (row.status === 'done' || row.status === 'failed' || row.status === 'marked_done') return { kind: 'receipt', row };
  const mayRun = e.force || row.status === 'retryable' || row.idempotent || e.idempotent;
  if (!mayRun) {
    if (row.status === 'intent') await db.query(sql.unsafe`UPDATE effects SET status = 'unknown' WHERE tool_call_id = ${e.toolCallId}`);
    return { kind: 'unknown', row: { ...row, status: 'unknown' } };
  }
  const attempt = await db.oneFirst(sql.type(z.object({ attempts: z.number() }))`
    UPDATE effects SET status = 'intent', attempts = attempts + 1, intent_at = now() WHERE tool_call_id = ${e.toolCallId} RETURNING attempts`);
  return { kind: 'run', attempt };
}

/** The receipt of an attempt: what the tool answered, or how it failed. */
export async function recordEffect(
  db: CommonQueryMethods,
  toolCallId: string,
  r: { status: Exclude<EffectStatus, 'intent'>; result?: unknown; errorCode?: string; errorMessage?: string; decidedBy?: string },
  /** The attempt writing it: an older attempt still running (a zombie) does not overwrite a newer one's row. */
  attempt?: number,
): Promise<void> {
  await db.query(sql.unsafe`
    UPDATE effects SET status = ${r.status}, result = ${r.result === undefined ? null : sql.jsonb(r.result as never)},
      error_code = ${r.errorCode ?? null}, error_message = ${r.errorMessage ?? null}, decided_by = ${r.decidedBy ?? null},
      receipt_at = CASE WHEN ${r.status} IN ('done', 'failed', 'marked_done') THEN now() ELSE receipt_at END
    WHERE tool_call_id = ${toolCallId} AND status NOT IN ('done', 'failed', 'marked_done')
      AND (${attempt ?? null}::int IS NULL OR attempts = ${attempt ?? null}::int)`);
}

export async function listEffects(db: CommonQueryMethods, sessionId: string, page: { limit: number; offset: number }): Promise<readonly EffectRow[]> {
  return db.any(sql.type(EffectRow)`
    SELECT ${EFFECT_COLUMNS} FROM effects WHERE session_id = ${sessionId} ORDER BY created_at, tool_call_id LIMIT ${page.limit} OFFSET ${page.offset}`);
}
