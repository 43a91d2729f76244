import { createHash } from 'node:crypto';
import { z } from 'zod';
import { Id } from './ids';
import { MessageContent } from './frames';

/**
 * Presence and outside events (docs/presence.md): typing relays, agent.status frames, the
 * per-user socket, operator messages and external events. Typing and agent.status are never
 * stored; operator messages and external events are messages and durable events.
 */

/** Who is typing: the session's owner, or an admin writing into it as its operator. */
export const TypingRole = z.enum(['user', 'operator']);
export type TypingRole = z.infer<typeof TypingRole>;

/** The `typing` server frame's data. */
export const TypingData = z.object({ userId: z.string(), role: TypingRole, active: z.boolean() });
export type TypingData = z.infer<typeof TypingData>;

/** What a session is doing, as the `agent.status` frames say it. */
export const AgentStatus = z.enum(['thinking', 'calling_tool', 'waiting_for_approval', 'escalated', 'idle']);
export type AgentStatus = z.infer<typeof AgentStatus>;

export const AgentStatusData = z.object({
  status: AgentStatus,
  /** The tool being called or waiting for approval. */
  tool: z.string().optional(),
  /** In a router session: the member agent at work. */
  agent: z.string().optional(),
  /** The turn the status belongs to, when it belongs to one. */
  turn: z.number().int().positive().optional(),
});
export type AgentStatusData = z.infer<typeof AgentStatusData>;

/** The durable events the per-user socket forwards (with the agent.status frames derived from all of them). */
export const USER_FEED_EVENT_TYPES = ['approval.required', 'approval.resolved', 'session.escalated', 'session.handed_back', 'turn.done'] as const;

/** An external event's type: short, lower case, dotted (`order.shipped`). */
export const EXTERNAL_EVENT_TYPE_PATTERN = /^[a-z0-9._-]{1,64}$/;

export const ExternalEventBody = z
  .object({
    type: z.string().regex(EXTERNAL_EVENT_TYPE_PATTERN, 'must be 1 to 64 characters of a-z, 0-9, ".", "_" or "-"'),
    /** Any JSON; its serialized size is bounded by KEEL_EXTERNAL_EVENT_MAX_BYTES. */
    data: z.unknown().optional(),
    /** Idempotency key: the same eventId again stores nothing and answers the first result. */
    eventId: Id.optional(),
  })
  .strict();
export type ExternalEventBody = z.infer<typeof ExternalEventBody>;

export const OperatorMessageBody = z
  .object({
    content: MessageContent,
    /** Idempotency key: the same clientMessageId again stores nothing and answers the first message. */
    clientMessageId: Id.optional(),
  })
  .strict();

export const EscalateBody = z.object({ reason: z.string().trim().min(1).max(2_000) }).strict();

/**
 * Per-session tokens for posting external events start with this, which no user token does
 * (`keel_…`), so the API never looks one up as a user token or the other way round.
 */
export const SESSION_EVENTS_TOKEN_PREFIX = 'kevt_';

/**
 * Operator messages sit in the turn of the last message (after the escalation message at
 * ESCALATION_POSITION 900_000), in the order they were written: 950_000, 950_001, …
 */
export const OPERATOR_MESSAGE_POSITION = 950_000;

const idHash = (...parts: string[]) => createHash('sha256').update(parts.join('\0')).digest('hex').slice(0, 32);

/** The message that stores an external event: one per (session, eventId). */
export const externalEventMessageIdOf = (sessionId: string, eventId: string) => `ev_${idHash(sessionId, eventId)}`;

/** An operator message's ID: derived from the clientMessageId when given, so a repeat names the same message. */
export const operatorMessageIdOf = (sessionId: string, clientMessageId: string) => `op_${idHash(sessionId, 'operator', clientMessageId)}`;

/** The text the model reads for an external event. */
export function externalEventText(type: string, data: unknown): string {
  return data === undefined ? `External event ${type}` : `External event ${type}: ${JSON.stringify(data)}`;
}
