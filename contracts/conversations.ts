import { z } from 'zod';
import { AGENT_ID_PATTERN } from './agents';
import {
  AgentHandoffData,
  AgentStartedData,
  ApprovalRequiredData,
  ApprovalResolvedData,
  BudgetExceededData,
  ClarificationData,
  ErrorEventData,
  EscalationDeliveredData,
  ExternalEventData,
  MessageAcceptedData,
  OperatorMessageData,
  RouteDecidedData,
  SessionDeletedData,
  SessionEscalatedData,
  SessionExpiredData,
  SessionHandedBackData,
  StreamEndData,
  ToolCallData,
  ToolResultData,
  TurnDoneData,
  type DurableEventType,
} from './events';
import { Id } from './ids';
import { MAX_PAGE_SIZE } from './limits';

/**
 * Conversation records, their replay and the analytics over them (docs/replay-analytics.md).
 * A conversation is a session.
 */

/** How a conversation came out; the rules are in docs/replay-analytics.md ("Resolution"). */
export const Resolution = z.enum(['open', 'resolved', 'escalated', 'abandoned']);
export type Resolution = z.infer<typeof Resolution>;

/** The widest analytics range, in days. */
export const MAX_ANALYTICS_RANGE_DAYS = 365;

const Timestamp = z.string().datetime({ offset: true, message: 'must be an ISO 8601 timestamp, e.g. 2026-11-29T00:00:00Z' });
const Limit = z.coerce.number().int().min(1).max(MAX_PAGE_SIZE).default(50);

/** Where a conversation list page ends: the last row's created_at (microseconds, UTC) and ID. */
const CursorPosition = z.object({ at: z.string().regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$/), id: Id });
export type ConversationCursorPosition = z.infer<typeof CursorPosition>;
const MAX_CURSOR_CHARS = 400;

export function encodeConversationCursor(position: ConversationCursorPosition): string {
  return Buffer.from(JSON.stringify(position)).toString('base64url');
}

/** An opaque cursor from `nextCursor`; anything else is a VALIDATION_ERROR. */
export const ConversationCursor = z
  .string()
  .max(MAX_CURSOR_CHARS)
  .transform((text, ctx) => {
    let decoded: unknown;
    try {
      decoded = JSON.parse(Buffer.from(text, 'base64url').toString('utf8'));
    } catch {
      decoded = undefined;
    }
    const position = CursorPosition.safeParse(decoded);
    if (!position.success) {
      ctx.addIssue({ code: z.ZodIssueCode.custom, message: 'must be a nextCursor of an earlier page' });
      return z.NEVER;
    }
    return position.data;
  });

export const ConversationListQuery = z
  .object({
    /** The resolution. */
    status: Resolution.optional(),
    /** An agent used in the conversation: the session's agent or a member that started or ended a turn. */
    agent: z.string().regex(AGENT_ID_PATTERN, 'must be an agent ID (1 to 64 letters, digits, "_" or "-")').optional(),
    /** created_at >= from */
    from: Timestamp.optional(),
    /** created_at < to */
    to: Timestamp.optional(),
    limit: Limit,
    cursor: ConversationCursor.optional(),
  })
  .refine((q) => q.from === undefined || q.to === undefined || Date.parse(q.from) < Date.parse(q.to), { message: 'must be before to', path: ['from'] });
export type ConversationListQuery = z.infer<typeof ConversationListQuery>;

/** The replay's cursor is the seq of the last step sent. */
export const ReplayQuery = z.object({
  limit: Limit,
  cursor: z
    .string()
    .regex(/^\d{1,10}$/, 'must be a nextCursor of an earlier page')
    .transform(Number)
    // session_events.seq is a Postgres integer.
    .refine((n) => n <= 2_147_483_647, 'must be a nextCursor of an earlier page')
    .optional(),
});

const RANGE = /^(\d{1,3})d$/;
/** `Nd`, N from 1 to 365: the last N days up to now. */
export const AnalyticsQuery = z.object({
  range: z
    .string()
    .regex(RANGE, `must be a number of days from 1 to ${MAX_ANALYTICS_RANGE_DAYS}, e.g. 7d`)
    .transform((text) => ({ text, days: Number(RANGE.exec(text)![1]) }))
    .refine((r) => r.days >= 1 && r.days <= MAX_ANALYTICS_RANGE_DAYS, `must be a number of days from 1 to ${MAX_ANALYTICS_RANGE_DAYS}, e.g. 7d`)
    .default('7d'),
});

const Count = z.number().int().nonnegative();
const Ms = z.number().int().nullable();

export const ConversationRecord = z.object({
  id: z.string(),
  ownerId: z.string().nullable(),
  /** The session's agent (a router session's router). */
  agentId: z.string().nullable(),
  /** The session's status. */
  status: z.enum(['active', 'expired', 'deleted']),
  resolution: Resolution,
  createdAt: z.string(),
  endedAt: z.string().nullable(),
  lastActivityAt: z.string().nullable(),
  escalatedAt: z.string().nullable(),
  agentsUsed: z.array(z.string()),
  /** Turns ended per agent. */
  agentTurns: z.record(Count),
  turns: Count,
  failedTurns: Count,
  cancelledTurns: Count,
  userMessages: Count,
  /** Model replies (one per model step, however many attempts it took). */
  replies: Count,
  toolCalls: Count,
  approvals: Count,
  expiredApprovals: Count,
  handoffs: Count,
  clarifications: Count,
  escalations: Count,
  operatorMessages: Count,
  externalEvents: Count,
  /** First user message accepted → the first answer (a reply with text, a clarification, an escalation, an operator's message or the turn's end). */
  firstResponseMs: Ms,
  /** First user message accepted → the last activity. */
  totalMs: Ms,
  usage: z.object({ inputTokens: Count, outputTokens: Count, costUsd: z.number().nonnegative(), repliesWithoutUsage: Count }),
});
export type ConversationRecord = z.infer<typeof ConversationRecord>;

export const ConversationList = z.object({ conversations: z.array(ConversationRecord), nextCursor: z.string().nullable() });
export type ConversationList = z.infer<typeof ConversationList>;

/**
 * One step of a replay: one stored event, as it was written (`data`), with when it happened, the
 * turn it belongs to and, on a step that closes something, how long that took (`durationMs`, from
 * the opening event to this one). `seq` orders the steps and is unique.
 */
const StepBase = z.object({
  seq: z.number().int().positive(),
  at: z.string(),
  turn: z.number().int().positive().nullable(),
  durationMs: Ms,
});
const step = <T extends string, D extends z.ZodTypeAny>(type: T, data: D) => StepBase.extend({ type: z.literal(type), data });

export const ReplayStep = z.discriminatedUnion('type', [
  step('user_message', MessageAcceptedData),
  step('route_decision', RouteDecidedData),
  step('clarification', ClarificationData),
  step('agent_start', AgentStartedData),
  step('agent_handoff', AgentHandoffData),
  step('tool_call', ToolCallData),
  step('approval_request', ApprovalRequiredData),
  /** durationMs: the wait, approval.required → approval.resolved. */
  step('approval_decision', ApprovalResolvedData),
  /** durationMs: tool.call → tool.result. */
  step('tool_result', ToolResultData),
  /** durationMs: the first attempt's stream.start → stream.end; `attempts`: model calls made for this reply. */
  step('agent_reply', StreamEndData).extend({ attempts: z.number().int().positive() }),
  /** durationMs: the turn's first event → turn.done; `error`: a failed or cancelled turn's error event. */
  step('turn_end', TurnDoneData).extend({ error: ErrorEventData.nullable() }),
  step('budget_exceeded', BudgetExceededData),
  step('escalation', SessionEscalatedData),
  step('escalation_delivery', EscalationDeliveredData),
  step('operator_message', OperatorMessageData),
  step('handed_back', SessionHandedBackData),
  step('external_event', ExternalEventData),
  /** A message the session did not take (SESSION_BUSY, SESSION_EXPIRED): an error event outside any turn. */
  step('refusal', ErrorEventData),
  step('session_end', z.union([SessionExpiredData, SessionDeletedData])),
]);
export type ReplayStep = z.infer<typeof ReplayStep>;
export type ReplayStepType = ReplayStep['type'];

/**
 * The step each event makes. Left out, because another step already stands for them:
 * `stream.start` (attempts and duration of its `agent_reply`), `run.progress` (a run's own
 * view of the same turn) and `error` events of a turn (the `error` of its `turn_end`).
 */
export const REPLAY_STEP_OF_EVENT = {
  'message.accepted': 'user_message',
  'route.decided': 'route_decision',
  clarification: 'clarification',
  'agent.started': 'agent_start',
  'agent.handoff': 'agent_handoff',
  'tool.call': 'tool_call',
  'approval.required': 'approval_request',
  'approval.resolved': 'approval_decision',
  'tool.result': 'tool_result',
  'stream.end': 'agent_reply',
  'turn.done': 'turn_end',
  'budget.exceeded': 'budget_exceeded',
  'session.escalated': 'escalation',
  'escalation.delivered': 'escalation_delivery',
  'operator.message': 'operator_message',
  'session.handed_back': 'handed_back',
  'external.event': 'external_event',
  error: 'refusal',
  'session.expired': 'session_end',
  'session.deleted': 'session_end',
} as const satisfies Partial<Record<DurableEventType, ReplayStepType>>;

export const ReplayPage = z.object({ conversation: ConversationRecord, steps: z.array(ReplayStep), nextCursor: z.string().nullable() });
export type ReplayPage = z.infer<typeof ReplayPage>;

const Rate = z.number().min(0).max(1).nullable();

export const AnalyticsReport = z.object({
  range: z.string(),
  from: z.string(),
  to: z.string(),
  /** `all` for an admin, `own` (the caller's sessions) for anyone else. */
  scope: z.enum(['all', 'own']),
  conversations: z.object({
    total: Count,
    open: Count,
    resolved: Count,
    escalated: Count,
    abandoned: Count,
    /** resolved / (total − open): of the conversations that have an outcome. */
    resolutionRate: Rate,
    /** escalated / total. */
    escalationRate: Rate,
    averageTurns: z.number().nullable(),
    averageCostUsd: z.number().nullable(),
  }),
  tokens: z.object({ input: Count, output: Count }),
  costUsd: z.number().nonnegative(),
  agents: z.array(z.object({ agent: z.string(), conversations: Count, turns: Count })),
  toolCalls: z.array(z.object({ tool: z.string(), status: z.string(), calls: Count })),
  approvals: z.object({
    requested: Count,
    approved: Count,
    rejected: Count,
    expired: Count,
    cancelled: Count,
    pending: Count,
    /** Nearest-rank median of approval.required → decision, over approved and rejected ones. */
    medianDecisionMs: Ms,
  }),
  /** Nearest-rank p95 of the replies' time to first token (messages.ttft_ms). */
  ttft: z.object({ replies: Count, p95Ms: Ms }),
});
export type AnalyticsReport = z.infer<typeof AnalyticsReport>;
