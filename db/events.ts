import { sql, type CommonQueryMethods, type DatabaseTransactionConnection } from 'slonik';
import { z } from 'zod';
import { EVENT_CHANNEL, MAX_NOTIFY_BYTES, type ChannelMessage } from '../contracts/channel';
import {
  EVENT_PAYLOAD_VERSION,
  type DurableEvent,
  type DurableEventData,
  type DurableEventType,
  durableEventSchemas,
} from '../contracts/events';
import { followRunEvent, RUN_EVENT_TYPES } from './runs';

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

const AppendedRow = EventRow.omit({ session_id: true }).extend({ inserted: z.boolean(), has_runs: z.boolean() });

/**
 * Appends one event and queues its NOTIFY (Postgres delivers it at commit), in one round trip:
 * append_session_event (migration 019) locks the session's row first, so the insert, a statement
 * with a fresh snapshot, sees every earlier event: seq is gap-free and one session's
 * notifications arrive in seq order. A repeated key returns the stored event. `notifyFirst`
 * (each at most MAX_NOTIFY_BYTES) is NOTIFYed just before a new event, in order, in the same
 * round trip. Append in READ COMMITTED transactions (the default).
 */
export async function appendEvent<T extends DurableEventType>(
  tx: DatabaseTransactionConnection,
  event: NewEvent<T>,
  opts: { notifyFirst?: ChannelMessage[] } = {},
): Promise<{ event: DurableEvent; inserted: boolean }> {
  const data = durableEventSchemas[event.type].parse(event.data);
  const first = opts.notifyFirst?.length ? sql.array(opts.notifyFirst.map((m) => JSON.stringify(m)), 'text') : null;
  const row = await tx.one(sql.type(AppendedRow)`
    SELECT r_seq AS seq, r_type AS type, r_data AS data, r_created_at AS created_at, r_inserted AS inserted, r_has_runs AS has_runs
    FROM append_session_event(${event.sessionId}, ${event.key}, ${event.type}, ${EVENT_PAYLOAD_VERSION}::smallint,
                              ${sql.jsonb(data as never)}, ${EVENT_CHANNEL}, ${MAX_NOTIFY_BYTES}, ${first})`);
  const appended = toEvent({ ...row, session_id: event.sessionId });
  // Background runs follow their turn's events in the same transaction (db/runs.ts); a chat
  // session's writes never look for one.
  if (row.has_runs && row.inserted && RUN_EVENT_TYPES.has(event.type)) await followRunEvent(tx, appended, event.key, appendEvent);
  return { event: appended, inserted: row.inserted };
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

/** The turn that answers message `replyTo`, once the turn has started (its stream.start) or the message was accepted. */
export async function turnOf(db: CommonQueryMethods, sessionId: string, replyTo: string): Promise<number | null> {
  const turn = await db.maybeOneFirst(sql.type(z.object({ turn: z.string() }))`
    SELECT data->>'turn' AS turn FROM session_events
    WHERE session_id = ${sessionId}
      AND ((type = 'stream.start' AND data->>'replyTo' = ${replyTo}) OR (type = 'message.accepted' AND data->>'messageId' = ${replyTo}))
    ORDER BY seq LIMIT 1`);
  return turn === null ? null : Number(turn);
}

/** A turn's tool calls with their approvals and results: tool.call, approval.required, approval.resolved and tool.result, in log order. */
export async function toolEventsOfTurn(db: CommonQueryMethods, sessionId: string, turn: number): Promise<DurableEvent[]> {
  const rows = await db.any(sql.type(EventRow)`
    WITH calls AS (
      SELECT data->>'toolCallId' AS id FROM session_events
      WHERE session_id = ${sessionId} AND type = 'tool.call' AND data->>'turn' = ${String(turn)}
    )
    SELECT session_id, seq, type, data, created_at FROM session_events
    WHERE session_id = ${sessionId}
      AND type IN ('tool.call', 'approval.required', 'approval.resolved', 'tool.result')
      AND data->>'toolCallId' IN (SELECT id FROM calls)
    ORDER BY seq`);
  return rows.map(toEvent);
}

// The turn queries below repeat the expression ((data->>'turn')::int) and the type predicates of
// migration 009's partial indexes (session_events_turn_starts, session_events_turns_done), so
// the planner can use them.

/**
 * Where turn `turn` starts in the log: the seq before its first event (the message accepted into
 * it, or its first model call) and the message it answers (its first stream.start's replyTo,
 * else the message accepted); null before the turn has started.
 */
export async function turnStart(db: CommonQueryMethods, sessionId: string, turn: number): Promise<{ before: number; replyTo: string } | null> {
  const row = await db.one(sql.type(z.object({ first: z.number().nullable(), reply_to: z.string().nullable() }))`
    SELECT MIN(seq)::int AS first,
      (array_agg(CASE WHEN type = 'stream.start' THEN data->>'replyTo' ELSE data->>'messageId' END ORDER BY type = 'stream.start' DESC, seq))[1] AS reply_to
    FROM session_events
    WHERE session_id = ${sessionId} AND type IN ('message.accepted', 'stream.start') AND ((data->>'turn')::int) = ${turn}`);
  return row.first === null || row.reply_to === null ? null : { before: row.first - 1, replyTo: row.reply_to };
}

/** The turn.done of turn `turn`, once it is over. */
export async function turnDone(db: CommonQueryMethods, sessionId: string, turn: number): Promise<DurableEvent | null> {
  const row = await db.maybeOne(sql.type(EventRow)`
    SELECT session_id, seq, type, data, created_at FROM session_events
    WHERE session_id = ${sessionId} AND type = 'turn.done' AND ((data->>'turn')::int) = ${turn}
    ORDER BY seq LIMIT 1`);
  return row ? toEvent(row) : null;
}

/** The session's last finished turn (0: none yet). */
export async function lastDoneTurn(db: CommonQueryMethods, sessionId: string): Promise<number> {
  return db.oneFirst(sql.type(z.object({ turn: z.number() }))`
    SELECT COALESCE(MAX(((data->>'turn')::int)), 0)::int AS turn FROM session_events WHERE session_id = ${sessionId} AND type = 'turn.done'`);
}

/** The events with seq in (after, through], read by the log's key in pages of `page`. */
export async function eventsBetween(db: CommonQueryMethods, sessionId: string, after: number, through: number, page: number): Promise<DurableEvent[]> {
  const out: DurableEvent[] = [];
  for (let cursor = after; cursor < through; ) {
    const batch = (await eventsAfter(db, sessionId, cursor, Math.min(page, through - cursor))).filter((e) => e.seq <= through);
    if (batch.length === 0) break;
    out.push(...batch);
    cursor = batch[batch.length - 1]!.seq;
  }
  return out;
}
