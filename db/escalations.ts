import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import type { EscalationSource } from '../contracts/events';

/** One escalation and what its webhook answered (table `escalations`, migration 012). */
export const EscalationRow = z.object({
  session_id: z.string(),
  escalation_id: z.string(),
  turn: z.number().nullable(),
  reason: z.string(),
  source: z.string(),
  agent_id: z.string().nullable(),
  /** NULL until the delivery's outcome is recorded. */
  success: z.boolean().nullable(),
  status_code: z.number().nullable(),
  attempts: z.number(),
  error: z.string().nullable(),
  created_at: z.number(),
  delivered_at: z.number().nullable(),
});
export type EscalationRow = z.infer<typeof EscalationRow>;

const COLUMNS = sql.fragment`session_id, escalation_id, turn, reason, source, agent_id, success, status_code, attempts, error, created_at, delivered_at`;

/** Inserts once; returns the stored row (a retry finds the first attempt's). */
export async function insertEscalation(
  db: CommonQueryMethods,
  e: { sessionId: string; escalationId: string; turn: number; reason: string; source: EscalationSource; agentId: string | null },
): Promise<EscalationRow> {
  await db.query(sql.unsafe`
    INSERT INTO escalations (session_id, escalation_id, turn, reason, source, agent_id)
    VALUES (${e.sessionId}, ${e.escalationId}, ${e.turn}, ${e.reason}, ${e.source}, ${e.agentId})
    ON CONFLICT DO NOTHING`);
  return db.one(sql.type(EscalationRow)`SELECT ${COLUMNS} FROM escalations WHERE session_id = ${e.sessionId} AND escalation_id = ${e.escalationId}`);
}

export async function findEscalation(db: CommonQueryMethods, sessionId: string, escalationId: string): Promise<EscalationRow | null> {
  return db.maybeOne(sql.type(EscalationRow)`SELECT ${COLUMNS} FROM escalations WHERE session_id = ${sessionId} AND escalation_id = ${escalationId}`);
}

/**
 * Counts one more attempt before it is made, so a retried activity goes on from the attempts
 * already made instead of starting over. Null when no attempt is left: `maxAttempts` were made,
 * or the outcome is recorded already.
 */
export async function countEscalationAttempt(db: CommonQueryMethods, sessionId: string, escalationId: string, maxAttempts: number): Promise<number | null> {
  return db.maybeOneFirst(sql.type(z.object({ attempts: z.number() }))`
    UPDATE escalations SET attempts = attempts + 1
    WHERE session_id = ${sessionId} AND escalation_id = ${escalationId} AND success IS NULL AND attempts < ${maxAttempts}
    RETURNING attempts`);
}

/** Records the delivery's outcome once (delivered_at: when it was delivered); returns the row that stands (a repeat keeps the first outcome). */
export async function recordEscalationOutcome(
  db: CommonQueryMethods,
  sessionId: string,
  escalationId: string,
  outcome: { success: boolean; statusCode: number | null; error: string | null },
): Promise<EscalationRow> {
  await db.query(sql.unsafe`
    UPDATE escalations SET success = ${outcome.success}, status_code = ${outcome.statusCode}, error = ${outcome.error},
                           delivered_at = ${outcome.success ? sql.fragment`now()` : null}
    WHERE session_id = ${sessionId} AND escalation_id = ${escalationId} AND success IS NULL`);
  return db.one(sql.type(EscalationRow)`SELECT ${COLUMNS} FROM escalations WHERE session_id = ${sessionId} AND escalation_id = ${escalationId}`);
}

const SummaryRow = z.object({ role: z.string(), content: z.string() });

/**
 * The last `limit` user, assistant and operator messages with text, up to and including `turn`,
 * oldest first (the webhook's conversationSummary). `exceptId` leaves out the escalation message.
 */
export async function recentConversation(db: CommonQueryMethods, sessionId: string, turn: number, exceptId: string, limit: number): Promise<z.infer<typeof SummaryRow>[]> {
  const rows = await db.any(sql.type(SummaryRow)`
    SELECT role, content FROM (
      SELECT role, content, turn, position, created_at FROM messages
      WHERE session_id = ${sessionId} AND turn IS NOT NULL AND turn <= ${turn} AND deleted_at IS NULL
        AND role IN ('user', 'assistant', 'operator') AND content <> '' AND id <> ${exceptId}
      ORDER BY turn DESC, position DESC, created_at DESC LIMIT ${limit}
    ) recent ORDER BY turn, position, created_at`);
  return [...rows];
}
