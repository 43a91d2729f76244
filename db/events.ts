import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { EVENT_CHANNEL, MAX_NOTIFY_BYTES, type ChannelMessage } from '../contracts/channel';
import {
  EVENT_PAYLOAD_VERSION,
  type DurableEvent,
  type DurableEventData,
  type DurableEventType,
  durableEventSchemas,
} from '../contracts/events';

const EventRow = z.object({
  session_id: z.string(),
  seq: z.number(),
  type: z.string(),
  data: z.unknown(),
  created_at: z.number(),
});
type EventRow = z.infer<typeof EventRow>;

function toEvent(row: EventRow): DurableEvent {
  return {
    sessionId: row.session_id,
    seq: row.seq,
    type: row.type as DurableEventType,
    data: row.data as DurableEvent['data'],
    createdAt: new Date(row.created_at).toISOString(),
  };
}

export interface NewEvent<T extends DurableEventType = DurableEventType> {
  sessionId: string;
  /** Idempotency key, unique per session: a retried write with the same key is a no-op. */
  key: string;
  type: T;
  data: DurableEventData<T>;
}

/**
 * Appends one event inside the caller's transaction and queues its NOTIFY, which Postgres
 * delivers at commit. The session row lock serialises writers of one session, so seq is
 * gap-free and notifications of one session arrive in seq order.
 */
export async function appendEvent<T extends DurableEventType>(
  tx: CommonQueryMethods,
  event: NewEvent<T>,
): Promise<{ event: DurableEvent; inserted: boolean }> {
  const data = durableEventSchemas[event.type].parse(event.data);
  await tx.query(sql.unsafe`SELECT 1 FROM sessions WHERE id = ${event.sessionId} FOR NO KEY UPDATE`);
  const existing = await tx.maybeOne(sql.type(EventRow)`
    SELECT session_id, seq, type, data, created_at FROM session_events
    WHERE session_id = ${event.sessionId} AND event_key = ${event.key}`);
  if (existing) return { event: toEvent(existing), inserted: false };
  const row = await tx.one(sql.type(EventRow)`
    INSERT INTO session_events (session_id, seq, event_key, type, version, data)
    SELECT ${event.sessionId}, COALESCE(MAX(seq), 0) + 1, ${event.key}, ${event.type}, ${EVENT_PAYLOAD_VERSION}, ${sql.jsonb(data as never)}
    FROM session_events WHERE session_id = ${event.sessionId}
    RETURNING session_id, seq, type, data, created_at`);
  const stored = toEvent(row);
  await notify(tx, channelMessageFor(stored));
  return { event: stored, inserted: true };
}

function channelMessageFor(event: DurableEvent): ChannelMessage {
  const whole: ChannelMessage = { k: 'e', ...event };
  if (Buffer.byteLength(JSON.stringify(whole)) <= MAX_NOTIFY_BYTES) return whole;
  return { k: 'p', sessionId: event.sessionId, seq: event.seq };
}

export async function notify(db: CommonQueryMethods, message: ChannelMessage): Promise<void> {
  await db.query(sql.unsafe`SELECT pg_notify(${EVENT_CHANNEL}, ${JSON.stringify(message)})`);
}

export async function eventsAfter(db: CommonQueryMethods, sessionId: string, afterSeq: number, limit = 1000): Promise<DurableEvent[]> {
  const rows = await db.any(sql.type(EventRow)`
    SELECT session_id, seq, type, data, created_at FROM session_events
    WHERE session_id = ${sessionId} AND seq > ${afterSeq}
    ORDER BY seq LIMIT ${limit}`);
  return rows.map(toEvent);
}

export async function lastSeq(db: CommonQueryMethods, sessionId: string): Promise<number> {
  return db.oneFirst(sql.type(z.object({ last: z.number() }))`
    SELECT COALESCE(MAX(seq), 0)::int AS last FROM session_events WHERE session_id = ${sessionId}`);
}

/** The event that ended the turn answering `replyTo`, if that turn is over. */
export async function turnOutcome(db: CommonQueryMethods, sessionId: string, replyTo: string): Promise<DurableEvent[]> {
  const rows = await db.any(sql.type(EventRow)`
    SELECT session_id, seq, type, data, created_at FROM session_events
    WHERE session_id = ${sessionId} AND type IN ('turn.done', 'error') AND data->>'replyTo' = ${replyTo}
    ORDER BY seq`);
  return rows.map(toEvent);
}
