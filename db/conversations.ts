import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import {
  encodeConversationCursor,
  REPLAY_STEP_OF_EVENT,
  type ConversationCursorPosition,
  type ConversationRecord,
  type Resolution,
} from '../contracts/conversations';
import type { DurableEvent, DurableEventType } from '../contracts/events';

/** The conversations table (migration 011): one row per session, kept by triggers on sessions and session_events. */
const ConversationRow = z.object({
  session_id: z.string(),
  owner_id: z.string().nullable(),
  agent_id: z.string().nullable(),
  session_status: z.enum(['active', 'expired', 'deleted']),
  resolution: z.enum(['open', 'resolved', 'escalated', 'abandoned']),
  created_at: z.number(),
  /** created_at to the microsecond: what a cursor carries. */
  created_at_us: z.string(),
  ended_at: z.number().nullable(),
  last_activity_at: z.number().nullable(),
  escalated_at: z.number().nullable(),
  agents_used: z.array(z.string()),
  agent_turns: z.record(z.number()),
  turns: z.number(),
  failed_turns: z.number(),
  cancelled_turns: z.number(),
  user_messages: z.number(),
  replies: z.number(),
  tool_calls: z.number(),
  approvals: z.number(),
  expired_approvals: z.number(),
  handoffs: z.number(),
  clarifications: z.number(),
  escalations: z.number(),
  operator_messages: z.number(),
  external_events: z.number(),
  first_response_ms: z.coerce.number().nullable(),
  total_ms: z.coerce.number().nullable(),
  input_tokens: z.coerce.number(),
  output_tokens: z.coerce.number(),
  cost_usd: z.coerce.number(),
  replies_without_usage: z.number(),
});
type ConversationRow = z.infer<typeof ConversationRow>;

const COLUMNS = sql.fragment`session_id, owner_id, agent_id, session_status, resolution, created_at,
  to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"') AS created_at_us,
  ended_at, last_activity_at, escalated_at, agents_used, agent_turns, turns, failed_turns, cancelled_turns, user_messages,
  replies, tool_calls, approvals, expired_approvals, handoffs, clarifications, escalations, operator_messages, external_events,
  round(extract(epoch FROM first_response_at - first_message_at) * 1000)::int8 AS first_response_ms,
  round(extract(epoch FROM last_activity_at - first_message_at) * 1000)::int8 AS total_ms, input_tokens, output_tokens, cost_usd::text AS cost_usd, replies_without_usage`;

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

export function conversationView(r: ConversationRow): ConversationRecord {
  return {
    id: r.session_id,
    ownerId: r.owner_id,
    agentId: r.agent_id,
    status: r.session_status,
    resolution: r.resolution,
    createdAt: new Date(r.created_at).toISOString(),
    endedAt: iso(r.ended_at),
    lastActivityAt: iso(r.last_activity_at),
    escalatedAt: iso(r.escalated_at),
    agentsUsed: r.agents_used,
    agentTurns: r.agent_turns,
    turns: r.turns,
    failedTurns: r.failed_turns,
    cancelledTurns: r.cancelled_turns,
    userMessages: r.user_messages,
    replies: r.replies,
    toolCalls: r.tool_calls,
    approvals: r.approvals,
    expiredApprovals: r.expired_approvals,
    handoffs: r.handoffs,
    clarifications: r.clarifications,
    escalations: r.escalations,
    operatorMessages: r.operator_messages,
    externalEvents: r.external_events,
    firstResponseMs: r.first_response_ms,
    totalMs: r.total_ms,
    usage: { inputTokens: r.input_tokens, outputTokens: r.output_tokens, costUsd: r.cost_usd, repliesWithoutUsage: r.replies_without_usage },
  };
}

export async function findConversation(db: CommonQueryMethods, sessionId: string): Promise<ConversationRecord | null> {
  const row = await db.maybeOne(sql.type(ConversationRow)`SELECT ${COLUMNS} FROM conversations WHERE session_id = ${sessionId}`);
  return row && conversationView(row);
}

export interface ConversationFilter {
  /** null: every owner's (an admin). */
  ownerId: string | null;
  resolution?: Resolution | undefined;
  agent?: string | undefined;
  from?: string | undefined;
  to?: string | undefined;
  limit: number;
  after?: ConversationCursorPosition | undefined;
}

/**
 * Conversations newest first, a keyset page at a time (created_at, then session ID, both
 * descending). Deleted sessions are left out, as every other read of a session leaves them out.
 */
export async function listConversations(db: CommonQueryMethods, f: ConversationFilter): Promise<{ conversations: ConversationRecord[]; nextCursor: string | null }> {
  const conditions = [sql.fragment`session_status <> 'deleted'`];
  if (f.ownerId !== null) conditions.push(sql.fragment`owner_id = ${f.ownerId}`);
  if (f.resolution) conditions.push(sql.fragment`resolution = ${f.resolution}`);
  if (f.agent) conditions.push(sql.fragment`agents_used @> ${sql.array([f.agent], 'text')}`);
  if (f.from) conditions.push(sql.fragment`created_at >= ${f.from}::timestamptz`);
  if (f.to) conditions.push(sql.fragment`created_at < ${f.to}::timestamptz`);
  if (f.after) conditions.push(sql.fragment`(created_at, session_id) < (${f.after.at}::timestamptz, ${f.after.id})`);
  const rows = await db.any(sql.type(ConversationRow)`
    SELECT ${COLUMNS} FROM conversations
    WHERE ${sql.join(conditions, sql.fragment` AND `)}
    ORDER BY created_at DESC, session_id DESC
    LIMIT ${f.limit}`);
  const last = rows.length === f.limit ? rows[rows.length - 1] : undefined;
  return { conversations: rows.map(conversationView), nextCursor: last ? encodeConversationCursor({ at: last.created_at_us, id: last.session_id }) : null };
}

const EventRow = z.object({ seq: z.number(), type: z.string(), data: z.unknown(), created_at: z.number() });

function toEvent(sessionId: string, row: z.infer<typeof EventRow>): DurableEvent {
  return { sessionId, seq: row.seq, type: row.type as DurableEventType, data: row.data as DurableEvent['data'], createdAt: new Date(row.created_at).toISOString() };
}

/** Events with their time in fractional milliseconds (the column's microseconds kept), for durations. */
export interface TimedEvent {
  event: DurableEvent;
  atMs: number;
}

const STEP_EVENT_TYPES = Object.keys(REPLAY_STEP_OF_EVENT);

/**
 * One page of a replay: the next `limit` events after `afterSeq` that make a step (a turn's error
 * events are its turn_end's, never steps of their own), and the earlier events those steps are
 * measured from: the stream.starts of each reply, the tool.call of each result, the
 * approval.required of each decision, and the first events and error of each ended turn.
 */
export async function replayEvents(db: CommonQueryMethods, sessionId: string, afterSeq: number, limit: number): Promise<{ page: TimedEvent[]; openers: TimedEvent[] }> {
  const rows = await db.any(sql.type(EventRow)`
    SELECT seq, type, data, (extract(epoch FROM created_at) * 1000)::float8 AS created_at FROM session_events
    WHERE session_id = ${sessionId} AND seq > ${afterSeq} AND type = ANY(${sql.array(STEP_EVENT_TYPES, 'text')})
      AND NOT (type = 'error' AND data ? 'turn')
    ORDER BY seq LIMIT ${limit}`);
  const page = rows.map((r) => ({ event: toEvent(sessionId, r), atMs: r.created_at }));
  if (page.length === 0) return { page, openers: [] };
  const field = (type: string, key: string) => [...new Set(page.filter((p) => p.event.type === type).map((p) => String((p.event.data as Record<string, unknown>)[key])))];
  const streams = field('stream.end', 'streamId');
  const calls = field('tool.result', 'toolCallId');
  const approvals = field('approval.resolved', 'toolCallId');
  const turns = field('turn.done', 'turn').map(Number);
  if (streams.length + calls.length + approvals.length + turns.length === 0) return { page, openers: [] };
  const lastSeq = page[page.length - 1]!.event.seq;
  const openers = await db.any(sql.type(EventRow)`
    SELECT seq, type, data, (extract(epoch FROM created_at) * 1000)::float8 AS created_at FROM session_events
    WHERE session_id = ${sessionId} AND seq <= ${lastSeq} AND (
         (type = 'stream.start' AND data->>'streamId' = ANY(${sql.array(streams, 'text')}))
      OR (type = 'tool.call' AND data->>'toolCallId' = ANY(${sql.array(calls, 'text')}))
      OR (type = 'approval.required' AND data->>'toolCallId' = ANY(${sql.array(approvals, 'text')}))
      OR (type IN ('message.accepted', 'stream.start', 'route.decided', 'error') AND (data->>'turn')::int = ANY(${sql.array(turns, 'int4')})))
    ORDER BY seq`);
  return { page, openers: openers.map((r) => ({ event: toEvent(sessionId, r), atMs: r.created_at })) };
}
