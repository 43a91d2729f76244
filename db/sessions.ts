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
