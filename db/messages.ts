import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { decisionOf, HitRow, hitQuery, type RateDecision, type RateLimit } from './rate-limits';

export const MessageRow = z.object({
  id: z.string(),
  session_id: z.string(),
  turn: z.number().nullable(),
  position: z.number().nullable(),
  role: z.enum(['user', 'assistant', 'tool', 'system', 'operator', 'event']),
  content: z.string(),
  client_message_id: z.string().nullable(),
  input_tokens: z.number().nullable(),
  output_tokens: z.number().nullable(),
  tool_calls: z.array(z.object({ id: z.string(), name: z.string(), arguments: z.string() })).nullable(),
  tool_call_id: z.string().nullable(),
  cost_usd: z.coerce.number().nullable(),
  created_at: z.number(),
});
export type MessageRow = z.infer<typeof MessageRow>;

const MESSAGE_COLUMNS = sql.fragment`id, session_id, turn, position, role, content, client_message_id, input_tokens, output_tokens, cost_usd, tool_calls, tool_call_id, created_at`;

export interface NewMessage {
  id: string;
  sessionId: string;
  turn: number;
  position: number;
  role: MessageRow['role'];
  content: string;
  clientMessageId?: string;
  inputTokens?: number;
  outputTokens?: number;
  costUsd?: number;
  /** On an assistant message that asked for tools: the model's calls. */
  toolCalls?: { id: string; name: string; arguments: string }[];
  /** On a tool message: the model's ID of the call it answers. */
  toolCallId?: string;
  /** On an assistant message: model request to first streamed text, in ms (release health checks read it). */
  ttftMs?: number;
  /** On an assistant message: the agent version that wrote it. */
  agentVersion?: number;
  /** In a router session: the member agent that wrote it. */
  agentId?: string;
}

/** Inserts once: a retried activity that writes the same message changes nothing. */
export async function insertMessage(db: CommonQueryMethods, m: NewMessage): Promise<void> {
  await db.query(sql.unsafe`
    INSERT INTO messages (id, session_id, turn, position, role, content, client_message_id, input_tokens, output_tokens, cost_usd, tool_calls, tool_call_id, ttft_ms, agent_version, agent_id)
    VALUES (${m.id}, ${m.sessionId}, ${m.turn}, ${m.position}, ${m.role}, ${m.content},
            ${m.clientMessageId ?? null}, ${m.inputTokens ?? null}, ${m.outputTokens ?? null}, ${m.costUsd ?? null},
            ${m.toolCalls ? sql.jsonb(m.toolCalls) : null}, ${m.toolCallId ?? null}, ${m.ttftMs ?? null}, ${m.agentVersion ?? null}, ${m.agentId ?? null})
    ON CONFLICT DO NOTHING`);
}

/**
 * The conversation as the model sees it for `turn`: the messages of that turn and of the
 * `maxTurns - 1` turns before it (KEEL_CONTEXT_MAX_TURNS: a turn's tool calls and results are
 * never split), and the message it answers.
 */
export async function conversationUpTo(db: CommonQueryMethods, sessionId: string, turn: number, replyTo: string, maxTurns: number): Promise<MessageRow[]> {
  const rows = await db.any(sql.type(MessageRow)`
    SELECT ${MESSAGE_COLUMNS} FROM messages WHERE ${conversationOf(sessionId, turn, replyTo, maxTurns)}
    ORDER BY turn NULLS LAST, position`);
  return [...rows];
}

const conversationOf = (sessionId: string, turn: number, replyTo: string, maxTurns: number) =>
  sql.fragment`session_id = ${sessionId} AND ((turn <= ${turn} AND turn > ${turn - maxTurns}) OR id = ${replyTo}) AND deleted_at IS NULL`;

const WithEventRow = z.object({ event_data: z.unknown(), id: z.string().nullable() }).passthrough();

/**
 * conversationUpTo, and the data of the session's event with key `eventKey` (null: none), in one
 * round trip: a model step learns whether an earlier attempt committed it as it reads what to
 * send the model.
 */
export async function conversationAndEvent(
  db: CommonQueryMethods,
  sessionId: string,
  turn: number,
  replyTo: string,
  maxTurns: number,
  eventKey: string,
): Promise<{ rows: MessageRow[]; eventData: unknown }> {
  const rows = await db.any(sql.type(WithEventRow)`
    SELECT (SELECT data FROM session_events WHERE session_id = ${sessionId} AND event_key = ${eventKey}) AS event_data, m.*
    FROM (SELECT 1) one
    LEFT JOIN LATERAL (SELECT ${MESSAGE_COLUMNS} FROM messages WHERE ${conversationOf(sessionId, turn, replyTo, maxTurns)}) m ON true
    ORDER BY m.turn NULLS LAST, m.position`);
  return { rows: rows.filter((r) => r.id !== null).map((r) => MessageRow.parse(r)), eventData: rows[0]?.event_data ?? null };
}

/** What a send found: a new message, one stored but not (yet) taken by the session, or one already answered in a turn. */
export type IncomingMessage = 'new' | 'pending' | 'accepted';

const StoredRow = HitRow.extend({ inserted: z.boolean(), found: z.boolean(), turn: z.number().nullable() });

/**
 * Stores a user message as it arrives, without a turn; a resend of the same ID stores nothing.
 * With a rate limit, the hit is counted in the same statement, before the insert: a refused hit
 * stores nothing (and is not counted), and a statement that fails counts nothing.
 */
export async function storeIncomingMessage(
  db: CommonQueryMethods,
  m: { id: string; sessionId: string; content: string; clientMessageId?: string },
  rate: RateLimit | null = null,
): Promise<IncomingMessage | { refused: RateDecision }> {
  const row = await db.one(sql.type(StoredRow)`
    WITH hit AS (${hitQuery(rate)}),
    ins AS (
      INSERT INTO messages (id, session_id, role, content, client_message_id)
      SELECT ${m.id}, ${m.sessionId}, 'user', ${m.content}, ${m.clientMessageId ?? null} WHERE (SELECT allowed FROM hit)
      ON CONFLICT DO NOTHING
      RETURNING turn
    )
    SELECT hit.allowed, hit.cur, hit.prev, hit.elapsed_ms, EXISTS (SELECT 1 FROM ins) AS inserted,
           earlier.id IS NOT NULL AS found, earlier.turn
    FROM hit LEFT JOIN messages earlier ON earlier.id = ${m.id}`);
  if (rate && !row.allowed) return { refused: decisionOf(row, rate) };
  if (row.inserted || !row.found) return 'new';
  return row.turn === null ? 'pending' : 'accepted';
}

/** Whether a message is stored and already has its turn: a resend of it needs no signal. */
export async function messageAccepted(db: CommonQueryMethods, id: string): Promise<boolean> {
  return db.exists(sql.unsafe`SELECT 1 FROM messages WHERE id = ${id} AND turn IS NOT NULL`);
}

/** Where a turn's outside events start: before its user message (position 0). */
const EVENT_POSITION_BASE = -1000;

const AcceptedRow = z.object({ content: z.string(), client_message_id: z.string().nullable(), role: MessageRow.shape.role });

/**
 * Gives a stored user message its turn, once: 'accepted' with the message when this call gave
 * it the turn, 'already' when it had one, 'missing' when no such message is stored.
 */
export async function acceptMessage(
  db: CommonQueryMethods,
  sessionId: string,
  id: string,
  turn: number,
): Promise<{ outcome: 'accepted'; content: string; clientMessageId: string | null; role: MessageRow['role'] } | { outcome: 'already' | 'missing' }> {
  // Outside events that waited for this turn sit before the user message that started it, in the
  // order they were accepted (-1000, -999, …: a turn holds far fewer than 1000 of them).
  const updated = await db.maybeOne(sql.type(AcceptedRow)`
    UPDATE messages SET turn = ${turn}, position = CASE WHEN role = 'event' THEN
        ${EVENT_POSITION_BASE} + (SELECT count(*) FROM messages e WHERE e.session_id = ${sessionId} AND e.turn = ${turn} AND e.position < 0)::int
      ELSE 0 END
    WHERE id = ${id} AND session_id = ${sessionId} AND turn IS NULL
    RETURNING content, client_message_id, role`);
  if (updated) return { outcome: 'accepted', content: updated.content, clientMessageId: updated.client_message_id, role: updated.role };
  const existing = await db.exists(sql.unsafe`SELECT 1 FROM messages WHERE id = ${id} AND session_id = ${sessionId}`);
  return { outcome: existing ? 'already' : 'missing' };
}

export async function listMessages(db: CommonQueryMethods, sessionId: string, page: { limit: number; offset: number }): Promise<MessageRow[]> {
  const rows = await db.any(sql.type(MessageRow)`
    SELECT ${MESSAGE_COLUMNS}
    FROM messages WHERE session_id = ${sessionId} AND turn IS NOT NULL AND deleted_at IS NULL
    ORDER BY turn, position LIMIT ${page.limit} OFFSET ${page.offset}`);
  return [...rows];
}

export const UsageTotals = z.object({
  messages: z.number(),
  /** Assistant messages whose provider sent no usage (NULL tokens): the sums below leave them out. */
  without_usage: z.number(),
  input_tokens: z.number(),
  output_tokens: z.number(),
  cost_usd: z.coerce.number(),
});

/** Session totals are always the sum over its messages: computed, never stored twice. */
export async function usageTotals(db: CommonQueryMethods, sessionId: string): Promise<z.infer<typeof UsageTotals>> {
  return db.one(sql.type(UsageTotals)`
    SELECT count(*) FILTER (WHERE role = 'assistant')::int AS messages,
           count(*) FILTER (WHERE role = 'assistant' AND input_tokens IS NULL)::int AS without_usage,
           COALESCE(SUM(input_tokens), 0)::int AS input_tokens,
           COALESCE(SUM(output_tokens), 0)::int AS output_tokens,
           COALESCE(SUM(cost_usd), 0)::text AS cost_usd
    FROM messages WHERE session_id = ${sessionId} AND deleted_at IS NULL`);
}


/** A message as stored: its content, and its turn once the session has taken it (null for an unknown or deleted one). */
export async function storedMessage(db: CommonQueryMethods, messageId: string): Promise<{ content: string; turn: number | null } | null> {
  return db.maybeOne(sql.type(z.object({ content: z.string(), turn: z.number().nullable() }))`
    SELECT content, turn FROM messages WHERE id = ${messageId} AND deleted_at IS NULL`);
}
