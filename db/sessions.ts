import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

export const SessionRow = z.object({
  id: z.string(),
  title: z.string().nullable(),
  agent_id: z.string().nullable(),
  agent_version: z.number().nullable(),
  status: z.enum(['active', 'expired', 'deleted']),
  created_at: z.number(),
  updated_at: z.number(),
  ended_at: z.number().nullable(),
});
export type SessionRow = z.infer<typeof SessionRow>;

export async function insertSession(db: CommonQueryMethods, s: { id: string; title: string | null; agentId: string; agentVersion: number }): Promise<SessionRow> {
  return db.one(sql.type(SessionRow)`
    INSERT INTO sessions (id, title, agent_id, agent_version) VALUES (${s.id}, ${s.title}, ${s.agentId}, ${s.agentVersion})
    RETURNING id, title, agent_id, agent_version, status, created_at, updated_at, ended_at`);
}

export async function findSession(db: CommonQueryMethods, id: string): Promise<SessionRow | null> {
  return db.maybeOne(sql.type(SessionRow)`
    SELECT id, title, agent_id, agent_version, status, created_at, updated_at, ended_at FROM sessions WHERE id = ${id}`);
}

export async function markSessionEnded(db: CommonQueryMethods, id: string, status: 'expired' | 'deleted'): Promise<void> {
  await db.query(sql.unsafe`
    UPDATE sessions SET status = ${status}, ended_at = now(), updated_at = now()
    WHERE id = ${id} AND status = 'active'`);
}

export async function deleteSessionRow(db: CommonQueryMethods, id: string): Promise<void> {
  await db.query(sql.unsafe`DELETE FROM sessions WHERE id = ${id}`);
}
