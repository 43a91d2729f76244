import { z } from 'zod';
import { KeelError } from '../contracts/errors';
import { Id } from '../contracts/ids';
import { findSession, type SessionRow } from '../db/sessions';
import { bindThread, sessionOfThread, type ThreadProtocol } from '../db/client-threads';
import type { Caller } from './auth';
import type { ApiDeps } from './deps';
import { parseInput } from './errors';

export interface ThreadRef {
  protocol: ThreadProtocol;
  threadId: string;
}

/**
 * The session a third-party client's thread (AG-UI `threadId`, AI SDK chat `id`) names for the
 * caller, without creating one: a session of theirs with that very ID (any session's, for an
 * admin), else the one the thread was mapped to; null when the thread is new to them. A thread
 * mapped to a deleted session answers SESSION_NOT_FOUND, as the session does everywhere. A thread
 * ID must be an ID (`^[a-zA-Z0-9_-]{1,128}$`, UUIDs included): anything else is VALIDATION_ERROR.
 */
export async function existingSessionOfThread(deps: ApiDeps, caller: Caller, thread: ThreadRef): Promise<SessionRow | null> {
  const threadId = parseInput(z.object({ threadId: Id }), { threadId: thread.threadId }).threadId;
  const row = await findSession(deps.pool, threadId);
  if (row && (caller.isAdmin || row.owner_id === caller.userId)) {
    // Their own session, deleted: gone, as everywhere (a new thread would quietly start over).
    if (row.status === 'deleted') throw new KeelError('SESSION_NOT_FOUND', 'No such session');
    return row;
  }
  const mapped = await sessionOfThread(deps.pool, { protocol: thread.protocol, ownerId: caller.userId, threadId });
  return mapped === null ? null : deps.sessions.require(mapped, caller);
}

/**
 * The session behind the thread (existingSessionOfThread), else a new session of `agentId` (the
 * default agent when absent), mapped to the thread.
 */
export async function sessionForThread(deps: ApiDeps, caller: Caller, thread: ThreadRef & { agentId?: string }): Promise<SessionRow> {
  const existing = await existingSessionOfThread(deps, caller, thread);
  if (existing) return existing;
  const key = { protocol: thread.protocol, ownerId: caller.userId, threadId: thread.threadId };
  const created = await deps.sessions.create(caller, thread.agentId === undefined ? {} : { agentId: thread.agentId });
  let bound: string;
  try {
    bound = await bindThread(deps.pool, key, created.id);
  } catch (error) {
    // A session no thread names would live on unseen: it goes.
    await deps.sessions.delete(caller, created.id).catch(() => undefined);
    throw error;
  }
  if (bound === created.id) return created;
  // Another request of the same thread won the race: that session holds the thread, ours goes.
  await deps.sessions.delete(caller, created.id).catch(() => undefined);
  return deps.sessions.require(bound, caller);
}
