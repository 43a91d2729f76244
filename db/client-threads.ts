import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

/** The client protocols whose thread IDs map to sessions (migration 018). */
export type ThreadProtocol = 'agui' | 'ai-sdk';

export interface ThreadKey {
  protocol: ThreadProtocol;
  ownerId: string;
  threadId: string;
}

export async function sessionOfThread(db: CommonQueryMethods, key: ThreadKey): Promise<string | null> {
  return db.maybeOneFirst(sql.type(z.object({ session_id: z.string() }))`
    SELECT session_id FROM client_threads WHERE protocol = ${key.protocol} AND owner_id = ${key.ownerId} AND thread_id = ${key.threadId}`);
}

/** Maps the thread to the session unless it already is mapped; answers the session it maps to now. */
export async function bindThread(db: CommonQueryMethods, key: ThreadKey, sessionId: string): Promise<string> {
  await db.query(sql.unsafe`
    INSERT INTO client_threads (protocol, owner_id, thread_id, session_id) VALUES (${key.protocol}, ${key.ownerId}, ${key.threadId}, ${sessionId})
    ON CONFLICT DO NOTHING`);
  return (await sessionOfThread(db, key))!;
}
