import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

export const ToolCallRow = z.object({
  id: z.string(),
  model_call_id: z.string(),
  session_id: z.string(),
  turn: z.number(),
  step: z.number(),
  name: z.string(),
  arguments: z.unknown(),
  status: z.string(),
  digest: z.string(),
  requires_approval: z.boolean(),
  expires_at: z.number().nullable(),
  decided_by: z.string().nullable(),
  decided_at: z.number().nullable(),
  feedback: z.string().nullable(),
  approval_outcome: z.string().nullable(),
  created_at: z.number(),
});
export type ToolCallRow = z.infer<typeof ToolCallRow>;

const COLUMNS = sql.fragment`id, model_call_id, session_id, turn, step, name, arguments, status, digest, requires_approval,
  expires_at, decided_by, decided_at, feedback, approval_outcome, created_at`;

export interface NewToolCall {
  id: string;
  modelCallId: string;
  sessionId: string;
  turn: number;
  step: number;
  name: string;
  arguments: unknown;
  status: 'requested' | 'pending_approval';
  digest: string;
  requiresApproval: boolean;
  expiresAt: string | null;
  /** The agent version whose reply asked for the call. */
  agentVersion?: number;
}

export async function insertToolCall(db: CommonQueryMethods, c: NewToolCall): Promise<void> {
  await db.query(sql.unsafe`
    INSERT INTO tool_calls (id, model_call_id, session_id, turn, step, name, arguments, status, digest, requires_approval, expires_at, agent_version)
    VALUES (${c.id}, ${c.modelCallId}, ${c.sessionId}, ${c.turn}, ${c.step}, ${c.name}, ${sql.jsonb(c.arguments as never)},
            ${c.status}, ${c.digest}, ${c.requiresApproval}, ${c.expiresAt}, ${c.agentVersion ?? null})
    ON CONFLICT (id) DO NOTHING`);
}

export async function recordApproval(db: CommonQueryMethods, id: string, a: { outcome: string; decidedBy: string | null; feedback: string | null }): Promise<void> {
  await db.query(sql.unsafe`
    UPDATE tool_calls SET approval_outcome = ${a.outcome}, decided_by = ${a.decidedBy}, feedback = ${a.feedback},
      decided_at = now(), updated_at = now(),
      status = CASE ${a.outcome} WHEN 'approved' THEN 'approved' ELSE ${a.outcome} END
    WHERE id = ${id} AND approval_outcome IS NULL`);
}

export async function recordToolStatus(db: CommonQueryMethods, id: string, r: { status: string; result?: unknown; errorCode?: string }): Promise<void> {
  await db.query(sql.unsafe`
    UPDATE tool_calls SET status = ${r.status}, result = ${r.result === undefined ? null : sql.jsonb(r.result as never)},
      error_code = ${r.errorCode ?? null}, updated_at = now()
    WHERE id = ${id} AND status NOT IN ('succeeded', 'failed', 'rejected', 'expired', 'cancelled', 'skipped')`);
}

export async function findToolCall(db: CommonQueryMethods, id: string): Promise<ToolCallRow | null> {
  return db.maybeOne(sql.type(ToolCallRow)`SELECT ${COLUMNS} FROM tool_calls WHERE id = ${id}`);
}

/** Pending approvals of active sessions, oldest first; of one owner's sessions, or of all when ownerId is null. */
export async function pendingApprovals(db: CommonQueryMethods, limit: number, ownerId: string | null): Promise<ToolCallRow[]> {
  const rows = await db.any(sql.type(ToolCallRow)`
    SELECT ${COLUMNS} FROM tool_calls
    WHERE status = 'pending_approval' AND expires_at > now()
      AND session_id IN (SELECT id FROM sessions WHERE status = 'active' AND (${ownerId}::text IS NULL OR owner_id = ${ownerId}))
    ORDER BY created_at LIMIT ${limit}`);
  return [...rows];
}

/** An approval waiting for a decision, as the approval.required event announced it. */
export interface PendingApproval {
  toolCallId: string;
  name: string;
  arguments: unknown;
  digest: string;
  expiresAt: string;
  turn: number;
}

/** One session's approvals still waiting for a decision (not expired), oldest first; only those named, when toolCallIds is given. */
export async function sessionPendingApprovals(db: CommonQueryMethods, sessionId: string, toolCallIds?: string[]): Promise<PendingApproval[]> {
  const rows = await db.any(sql.type(ToolCallRow)`
    SELECT ${COLUMNS} FROM tool_calls
    WHERE status = 'pending_approval' AND session_id = ${sessionId} AND requires_approval AND expires_at > now()
      ${toolCallIds ? sql.fragment`AND id = ANY(${sql.array(toolCallIds, 'text')})` : sql.fragment``}
    ORDER BY created_at`);
  return rows.map((r) => ({ toolCallId: r.id, name: r.name, arguments: r.arguments, digest: r.digest, expiresAt: new Date(r.expires_at ?? 0).toISOString(), turn: r.turn }));
}
