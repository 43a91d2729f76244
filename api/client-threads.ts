import { KeelError } from '../contracts/errors';
import type { SessionRow } from '../db/sessions';
import { bindThread, sessionOfThread, type ThreadProtocol } from '../db/client-threads';
import type { Caller } from './auth';
import type { ApiDeps } from './deps';

/**
 * The session behind a third-party client's thread (AG-UI `threadId`, AI SDK chat `id`): a
 * session of the caller's with that very ID, else the one the thread was mapped to, else a new
 * session of `agentId` (the agent's default when absent), mapped to it. A thread mapped to a
 * deleted session answers SESSION_NOT_FOUND, as the session does everywhere.
 */
export async function sessionForThread(deps: ApiDeps, caller: Caller, thread: { protocol: ThreadProtocol; threadId: string; agentId?: string }): Promise<SessionRow> {
  const own = await deps.sessions.require(thread.threadId, caller).catch((error: unknown) => {
    if (error instanceof KeelError && error.code === 'SESSION_NOT_FOUND') return null;
    throw error;
  });
  if (own) return own;
  const key = { protocol: thread.protocol, ownerId: caller.userId, threadId: thread.threadId };
  const mapped = await sessionOfThread(deps.pool, key);
  if (mapped) return deps.sessions.require(mapped, caller);
  const created = await deps.sessions.create(caller, thread.agentId === undefined ? {} : { agentId: thread.agentId });
  const bound = await bindThread(deps.pool, key, created.id);
  if (bound === created.id) return created;
  // Another request of the same thread won the race: that session holds the thread, ours goes.
  await deps.sessions.delete(caller, created.id).catch(() => undefined);
  return deps.sessions.require(bound, caller);
}
