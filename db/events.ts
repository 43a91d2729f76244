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

/**
 * Appends one event and queues its NOTIFY (Postgres delivers it at commit). Writers of one
 * session first lock its row, so the insert, a new statement with a fresh snapshot, sees every
 * earlier event: seq is gap-free and one session's notifications arrive in seq order. A
 * repeated key returns the stored event.
 */
export async function appendEvent<T extends DurableEventType>(
  tx: DatabaseTransactionConnection,
  event: NewEvent<T>,
): Promise<{ event: DurableEvent; inserted: boolean }> {
  const data = durableEventSchemas[event.type].parse(event.data);
  // The lock also reads whether the session has runs: a chat session's writes never look for one.
  const hasRuns = await tx.maybeOneFirst(sql.type(z.object({ has_runs: z.boolean() }))`SELECT has_runs FROM sessions WHERE id = ${event.sessionId} FOR NO KEY UPDATE`);
  const row = await tx.one(appendStatement(event, data));
  const appended = toEvent(row);
  // Background runs follow their turn's events in the same transaction (db/runs.ts).
  if (hasRuns && row.inserted && RUN_EVENT_TYPES.has(event.type)) await followRunEvent(tx, appended, event.key, appendEvent);
  return { event: appended, inserted: row.inserted };
}

function appendStatement(event: NewEvent, data: unknown) {
  return sql.type(EventRow.extend({ inserted: z.boolean() }))`
    WITH existing AS (
      SELECT session_id, seq, type, data, created_at FROM session_events
      WHERE session_id = ${event.sessionId} AND event_key = ${event.key}
    ), inserted AS (
      INSERT INTO session_events (session_id, seq, event_key, type, version, data)
      SELECT ${event.sessionId},
             COALESCE((SELECT MAX(seq) FROM session_events WHERE session_id = ${event.sessionId}), 0) + 1,
             ${event.key}, ${event.type}, ${EVENT_PAYLOAD_VERSION}, ${sql.jsonb(data as never)}
      WHERE NOT EXISTS (SELECT 1 FROM existing)
      RETURNING session_id, seq, type, data, created_at
    ), notified AS (
      SELECT pg_notify(${EVENT_CHANNEL}, CASE
        WHEN octet_length(whole) <= ${MAX_NOTIFY_BYTES} THEN whole
        ELSE json_build_object('k', 'p', 'sessionId', session_id, 'seq', seq)::text END)
      FROM (
        SELECT session_id, seq, json_build_object(
          'k', 'e', 'sessionId', session_id, 'seq', seq, 'type', type, 'data', data,
          'createdAt', to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text AS whole
        FROM inserted
      ) payload
    )
    SELECT session_id, seq, type, data, (extract(epoch FROM created_at) * 1000)::float8 AS created_at, true AS inserted
    FROM inserted, (SELECT count(*) FROM notified) AS n
    UNION ALL
    SELECT session_id, seq, type, data, (extract(epoch FROM created_at) * 1000)::float8, false FROM existing`;
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
