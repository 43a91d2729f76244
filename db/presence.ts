import { sql, type CommonQueryMethods, type DatabasePool } from 'slonik';
import { z } from 'zod';
import { canonicalJson } from '../contracts/canonical';
import type { DurableEvent } from '../contracts/events';
import { OPERATOR_MESSAGE_POSITION } from '../contracts/presence';
import { appendEvent } from './events';

/** The last session.escalated or session.handed_back event at or before `atSeq` (the whole log without it). */
export interface EscalationMark {
  type: 'session.escalated' | 'session.handed_back';
  seq: number;
}

export async function lastEscalationMark(db: CommonQueryMethods, sessionId: string, atSeq?: number): Promise<EscalationMark | null> {
  return db.maybeOne(sql.type(z.object({ type: z.enum(['session.escalated', 'session.handed_back']), seq: z.number() }))`
    SELECT type, seq FROM session_events
    WHERE session_id = ${sessionId} AND type IN ('session.escalated', 'session.handed_back')
      ${atSeq === undefined ? sql.fragment`` : sql.fragment`AND seq <= ${atSeq}`}
    ORDER BY seq DESC LIMIT 1`);
}

/** Whether the session is escalated as of `atSeq` (inclusive), by its log. */
export async function escalatedAsOf(db: CommonQueryMethods, sessionId: string, atSeq?: number): Promise<boolean> {
  return (await lastEscalationMark(db, sessionId, atSeq))?.type === 'session.escalated';
}

/** A session's owner and status, for the per-user socket (null: no such session). */
export async function sessionOwnerOf(db: CommonQueryMethods, sessionId: string): Promise<{ owner: string | null; deleted: boolean } | null> {
  const row = await db.maybeOne(sql.type(z.object({ owner_id: z.string().nullable(), status: z.string() }))`
    SELECT owner_id, status FROM sessions WHERE id = ${sessionId}`);
  return row ? { owner: row.owner_id, deleted: row.status === 'deleted' } : null;
}

export async function setEventsTokenHash(db: CommonQueryMethods, sessionId: string, hash: string): Promise<void> {
  await db.query(sql.unsafe`UPDATE sessions SET events_token_hash = ${hash} WHERE id = ${sessionId}`);
}

export async function eventsTokenHashOf(db: CommonQueryMethods, sessionId: string): Promise<string | null> {
  return db.maybeOneFirst(sql.type(z.object({ events_token_hash: z.string().nullable() }))`
    SELECT events_token_hash FROM sessions WHERE id = ${sessionId} AND status <> 'deleted'`);
}

/** Locks the session's row as event writers do (db/events.ts appendEvent), so checks made under it hold until commit. */
async function lockSession(db: CommonQueryMethods, sessionId: string): Promise<void> {
  await db.query(sql.unsafe`SELECT 1 FROM sessions WHERE id = ${sessionId} FOR NO KEY UPDATE`);
}

async function eventByKey(db: CommonQueryMethods, sessionId: string, key: string): Promise<DurableEvent | null> {
  const row = await db.maybeOne(sql.type(z.object({ seq: z.number(), type: z.string(), data: z.unknown(), created_at: z.number() }))`
    SELECT seq, type, data, (extract(epoch FROM created_at) * 1000)::float8 AS created_at
    FROM session_events WHERE session_id = ${sessionId} AND event_key = ${key}`);
  return row ? ({ sessionId, seq: row.seq, type: row.type, data: row.data, createdAt: new Date(row.created_at).toISOString() } as DurableEvent) : null;
}

export type OperatorMessageResult =
  | { outcome: 'stored' | 'repeated'; event: DurableEvent<'operator.message'>; turn: number; position: number }
  | { outcome: 'not_escalated' };

/**
 * Stores an operator's message in an escalated conversation and writes `operator.message`, in
 * one transaction under the session's lock (so a hand-back cannot slip in between the check and
 * the write). The message takes the turn of the session's last message and the next position
 * from OPERATOR_MESSAGE_POSITION, so the model reads it, in order, once the session is handed
 * back. A repeated message ID stores nothing and answers the first result.
 */
export async function storeOperatorMessage(
  pool: DatabasePool,
  m: { sessionId: string; messageId: string; operator: string; content: string },
): Promise<OperatorMessageResult> {
  return pool.transaction(async (tx) => {
    await lockSession(tx, m.sessionId);
    const key = `operator:${m.messageId}`;
    const earlier = await eventByKey(tx, m.sessionId, key);
    if (earlier) {
      const at = await tx.maybeOne(sql.type(z.object({ turn: z.number(), position: z.number() }))`
        SELECT turn, position FROM messages WHERE id = ${m.messageId} AND session_id = ${m.sessionId} AND turn IS NOT NULL`);
      return { outcome: 'repeated', event: earlier as DurableEvent<'operator.message'>, turn: at?.turn ?? 0, position: at?.position ?? 0 };
    }
    if ((await lastEscalationMark(tx, m.sessionId))?.type !== 'session.escalated') return { outcome: 'not_escalated' };
    const turn = await tx.oneFirst(sql.type(z.object({ turn: z.number() }))`
      SELECT COALESCE(MAX(turn), 0)::int AS turn FROM messages WHERE session_id = ${m.sessionId}`);
    const position = await tx.oneFirst(sql.type(z.object({ position: z.number() }))`
      SELECT GREATEST(COALESCE(MAX(position) + 1, 0), ${OPERATOR_MESSAGE_POSITION})::int AS position
      FROM messages WHERE session_id = ${m.sessionId} AND turn = ${turn} AND position >= ${OPERATOR_MESSAGE_POSITION}`);
    await tx.query(sql.unsafe`
      INSERT INTO messages (id, session_id, turn, position, role, content)
      VALUES (${m.messageId}, ${m.sessionId}, ${turn}, ${position}, 'operator', ${m.content})`);
    const { event } = await appendEvent(tx, {
      sessionId: m.sessionId,
      key,
      type: 'operator.message',
      data: { messageId: m.messageId, operator: m.operator, content: m.content },
    });
    return { outcome: 'stored', event: event as DurableEvent<'operator.message'>, turn, position };
  });
}

export type HandBackResult = { outcome: 'handed_back' | 'already'; event: DurableEvent<'session.handed_back'> } | { outcome: 'never_escalated' };

/**
 * Writes `session.handed_back` for the escalation in force (keyed by that escalation's seq, so
 * two hand-backs of one escalation write one event). A session already handed back answers its
 * hand-back event; one never escalated, `never_escalated`.
 */
export async function writeHandBack(pool: DatabasePool, sessionId: string, by: string): Promise<HandBackResult> {
  return pool.transaction(async (tx) => {
    await lockSession(tx, sessionId);
    const mark = await lastEscalationMark(tx, sessionId);
    if (!mark) return { outcome: 'never_escalated' };
    if (mark.type === 'session.handed_back') {
      const [event] = await tx.any(sql.type(z.object({ seq: z.number(), data: z.unknown(), created_at: z.number() }))`
        SELECT seq, data, (extract(epoch FROM created_at) * 1000)::float8 AS created_at FROM session_events
        WHERE session_id = ${sessionId} AND seq = ${mark.seq}`);
      return {
        outcome: 'already',
        event: { sessionId, seq: mark.seq, type: 'session.handed_back', data: event!.data as { by: string }, createdAt: new Date(event!.created_at).toISOString() },
      };
    }
    const { event } = await appendEvent(tx, { sessionId, key: `handed_back:${mark.seq}`, type: 'session.handed_back', data: { by } });
    return { outcome: 'handed_back', event: event as DurableEvent<'session.handed_back'> };
  });
}

export type ExternalEventResult =
  | { outcome: 'stored' | 'repeated'; event: DurableEvent<'external.event'>; messageTurn: number | null }
  | { outcome: 'conflict' };

/**
 * Stores an external event as a message (role `event`, no turn yet: the session gives it one)
 * and writes `external.event`, in one transaction. The same eventId again stores nothing and
 * answers the first event (`repeated`), unless its type or data differ (`conflict`).
 */
export async function storeExternalEvent(
  pool: DatabasePool,
  e: { sessionId: string; eventId: string; messageId: string; type: string; data: unknown; wake: boolean; content: string },
): Promise<ExternalEventResult> {
  return pool.transaction(async (tx) => {
    await lockSession(tx, e.sessionId);
    const key = `external:${e.eventId}`;
    const messageTurn = async () =>
      tx.maybeOneFirst(sql.type(z.object({ turn: z.number().nullable() }))`SELECT turn FROM messages WHERE id = ${e.messageId}`);
    const earlier = await eventByKey(tx, e.sessionId, key);
    if (earlier) {
      const stored = earlier.data as { type: string; data?: unknown };
      if (stored.type !== e.type || canonicalJson(stored.data ?? null) !== canonicalJson(e.data ?? null)) return { outcome: 'conflict' };
      return { outcome: 'repeated', event: earlier as DurableEvent<'external.event'>, messageTurn: await messageTurn() };
    }
    await tx.query(sql.unsafe`
      INSERT INTO messages (id, session_id, role, content) VALUES (${e.messageId}, ${e.sessionId}, 'event', ${e.content})
      ON CONFLICT DO NOTHING`);
    const { event } = await appendEvent(tx, {
      sessionId: e.sessionId,
      key,
      type: 'external.event',
      data: { eventId: e.eventId, type: e.type, ...(e.data === undefined ? {} : { data: e.data }), wake: e.wake },
    });
    return { outcome: 'stored', event: event as DurableEvent<'external.event'>, messageTurn: null };
  });
}
