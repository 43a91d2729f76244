import { sql, type CommonQueryMethods, type DatabasePool } from 'slonik';
import { appendEvent } from './events';
import { z } from 'zod';

export const SessionRow = z.object({
  id: z.string(),
  title: z.string().nullable(),
  agent_id: z.string().nullable(),
  agent_version: z.number().nullable(),
  owner_id: z.string().nullable(),
  status: z.enum(['active', 'expired', 'deleted']),
  created_at: z.number(),
  updated_at: z.number(),
  ended_at: z.number().nullable(),
});
export type SessionRow = z.infer<typeof SessionRow>;

export async function insertSession(db: CommonQueryMethods, s: { id: string; title: string | null; agentId: string; agentVersion: number; ownerId: string }): Promise<SessionRow> {
  return db.one(sql.type(SessionRow)`
    INSERT INTO sessions (id, title, agent_id, agent_version, owner_id) VALUES (${s.id}, ${s.title}, ${s.agentId}, ${s.agentVersion}, ${s.ownerId})
    RETURNING id, title, agent_id, agent_version, owner_id, status, created_at, updated_at, ended_at`);
}

export async function findSession(db: CommonQueryMethods, id: string): Promise<SessionRow | null> {
  return db.maybeOne(sql.type(SessionRow)`
    SELECT id, title, agent_id, agent_version, owner_id, status, created_at, updated_at, ended_at FROM sessions WHERE id = ${id}`);
}

export async function markSessionEnded(db: CommonQueryMethods, id: string, status: 'expired' | 'deleted'): Promise<void> {
  await db.query(sql.unsafe`
    UPDATE sessions SET status = ${status}, ended_at = now(), updated_at = now()
    WHERE id = ${id} AND status = 'active'`);
}

export async function deleteSessionRow(db: CommonQueryMethods, id: string): Promise<void> {
  await db.query(sql.unsafe`DELETE FROM sessions WHERE id = ${id}`);
}

/**
 * Soft-deletes the session and all its messages in one transaction, and writes session.deleted,
 * which ends every open stream of the session in every API process; false if it was not there.
 */
export async function softDeleteSession(db: DatabasePool, id: string, deletedBy: string): Promise<boolean> {
  return db.transaction(async (tx) => {
    const deleted = await tx.query(sql.unsafe`
      UPDATE sessions SET status = 'deleted', deleted_at = now(), ended_at = COALESCE(ended_at, now()), updated_at = now()
      WHERE id = ${id} AND status <> 'deleted'`);
    if (deleted.rowCount === 0) return false;
    await tx.query(sql.unsafe`UPDATE messages SET deleted_at = now() WHERE session_id = ${id} AND deleted_at IS NULL`);
    await appendEvent(tx, { sessionId: id, key: 'session:deleted', type: 'session.deleted', data: { deletedBy } });
    return true;
  });
}

export const SessionListRow = SessionRow.extend({
  status: z.enum(['active', 'expired']),
  /** created_at to the microsecond: what a cursor carries. */
  created_at_us: z.string(),
  last_activity_at: z.number(),
  pending_approvals: z.number(),
});
export type SessionListRow = z.infer<typeof SessionListRow>;

export interface SessionListFilter {
  /** null: every owner's (an admin). */
  ownerId: string | null;
  status?: 'active' | 'expired' | undefined;
  agent?: string | undefined;
  limit: number;
  /** The last row of the page before: (created_at to the microsecond, id). */
  after?: { at: string; id: string } | undefined;
}

/**
 * Sessions newest first, a keyset page at a time (created_at, then ID, both descending); deleted
 * ones never. Last activity is the conversation record's (its creation before any event); pending
 * approvals count as in pendingApprovals (db/tool-calls.ts): pending_approval and not yet expired.
 */
export async function listSessions(db: CommonQueryMethods, f: SessionListFilter): Promise<SessionListRow[]> {
  const conditions = [sql.fragment`s.status <> 'deleted'`];
  if (f.ownerId !== null) conditions.push(sql.fragment`s.owner_id = ${f.ownerId}`);
  if (f.status) conditions.push(sql.fragment`s.status = ${f.status}`);
  if (f.agent) conditions.push(sql.fragment`s.agent_id = ${f.agent}`);
  if (f.after) conditions.push(sql.fragment`(s.created_at, s.id) < (${f.after.at}::timestamptz, ${f.after.id})`);
  const rows = await db.any(sql.type(SessionListRow)`
    SELECT s.id, s.title, s.agent_id, s.agent_version, s.owner_id, s.status, s.created_at, s.updated_at, s.ended_at,
      to_char(s.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at_us,
      COALESCE(c.last_activity_at, s.created_at) AS last_activity_at,
      (SELECT count(*) FROM tool_calls t
        WHERE t.session_id = s.id AND t.status = 'pending_approval' AND t.expires_at > now())::int AS pending_approvals
    FROM sessions s LEFT JOIN conversations c ON c.session_id = s.id
    WHERE ${sql.join(conditions, sql.fragment` AND `)}
    ORDER BY s.created_at DESC, s.id DESC
    LIMIT ${f.limit}`);
  return [...rows];
}
