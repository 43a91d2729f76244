import { z } from 'zod';
import { ErrorBody } from './errors';
import { RunStatus } from './runs';
import type { AgentStatusData, TypingData } from './presence';

export const Usage = z.object({
  inputTokens: z.number().int().nonnegative(),
  outputTokens: z.number().int().nonnegative(),
  costUsd: z.number().nonnegative(),
  /** The provider sent no usage for this reply: the zeros above are unknown, not zero (its message stores NULL). */
  usageMissing: z.literal(true).optional(),
});
export type Usage = z.infer<typeof Usage>;

export const MessageAcceptedData = z.object({
  messageId: z.string(),
  clientMessageId: z.string().optional(),
  turn: z.number().int().positive(),
  content: z.string(),
});

export const StreamStartData = z.object({
  streamId: z.string(),
  turn: z.number().int().positive(),
  replyTo: z.string(),
  /** 1 on the first try; a larger number means the previous attempt's text must be discarded. */
  attempt: z.number().int().positive(),
});

export const StreamDeltaData = z.object({
  streamId: z.string(),
  attempt: z.number().int().positive(),
  /** Character offset of `text` within this attempt's reply. */
  offset: z.number().int().nonnegative(),
  text: z.string(),
});
export type StreamDeltaData = z.infer<typeof StreamDeltaData>;

export const StreamEndData = z.object({
  streamId: z.string(),
  attempt: z.number().int().positive(),
  messageId: z.string(),
  content: z.string(),
  finishReason: z.string(),
  usage: Usage,
});

export const ToolCallData = z.object({
  toolCallId: z.string(),
  name: z.string(),
  arguments: z.unknown(),
  turn: z.number().int().positive(),
  step: z.number().int().positive(),
  requiresApproval: z.boolean(),
});

export const ApprovalRequiredData = z.object({
  toolCallId: z.string(),
  name: z.string(),
  arguments: z.unknown(),
  /** sha256 over the tool name, its arguments and the agent version: a decision must name it. */
  digest: z.string(),
  expiresAt: z.string(),
  turn: z.number().int().positive(),
});

export const ApprovalOutcome = z.enum(['approved', 'rejected', 'expired', 'cancelled']);
export type ApprovalOutcome = z.infer<typeof ApprovalOutcome>;

export const ApprovalResolvedData = z.object({
  toolCallId: z.string(),
  /** The turn of the call (absent on events written before it was carried). */
  turn: z.number().int().positive().optional(),
  outcome: ApprovalOutcome,
  decidedBy: z.string().nullable(),
  feedback: z.string().nullable(),
});

/** `skipped`: an earlier call of an ordered (sequential) step was rejected or expired, so this one never ran. */
export const ToolResultStatus = z.enum(['succeeded', 'failed', 'rejected', 'expired', 'cancelled', 'skipped']);
export type ToolResultStatus = z.infer<typeof ToolResultStatus>;

export const ToolResultData = z.object({
  toolCallId: z.string(),
  name: z.string(),
  status: ToolResultStatus,
  result: z.unknown().optional(),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
  /** On a cancelled call: whether the tool had started (it was stopped while running) or never ran. */
  ran: z.boolean().optional(),
});

export const TurnDoneData = z.object({
  turn: z.number().int().positive(),
  replyTo: z.string(),
  status: z.enum(['completed', 'failed', 'cancelled']),
  messageId: z.string().nullable(),
  content: z.string().nullable(),
  usage: Usage.nullable(),
  /** On a cancelled turn: the user who cancelled it, or `interrupt` when a new message did. */
  cancelledBy: z.string().optional(),
  /** The agent version that ran the turn (absent on turns before it was recorded): release health checks read it. */
  agentVersion: z.number().int().nonnegative().optional(),
  /** On a failed turn: its error's code, so health checks can leave out failures that are not the version's (BUDGET_EXCEEDED). */
  errorCode: z.string().optional(),
  /** In a router session: the member agent whose reply ended the turn. */
  agent: z.string().optional(),
  /** The conversation is with an operator: no agent answered this message. */
  awaitingOperator: z.literal(true).optional(),
});

export const ErrorEventData = ErrorBody.extend({
  turn: z.number().int().positive().optional(),
  replyTo: z.string().optional(),
  clientMessageId: z.string().optional(),
});

export const SessionExpiredData = z.object({ idleMs: z.number().int().nonnegative() });

export const SessionDeletedData = z.object({ deletedBy: z.string() });

/** A background run moved (docs/runs.md): each status change, and each tool call of its turn. */
export const RunProgressData = z.object({
  runId: z.string(),
  status: RunStatus,
  step: z.number().int().positive().optional(),
  tool: z.string().optional(),
  toolCallId: z.string().optional(),
});

/** One limit a turn went over: which, what it has used, and the limit it went over. */
export const BudgetOverrun = z.object({
  limit: z.enum(['tokens', 'costUsd', 'toolCalls']),
  used: z.number().nonnegative(),
  max: z.number().positive(),
});
export type BudgetOverrun = z.infer<typeof BudgetOverrun>;

/** A turn reached a limit of its budget and waits for an approver (the approval.required that follows names approvalId). */
export const BudgetExceededData = z.object({
  turn: z.number().int().positive(),
  approvalId: z.string(),
  overruns: z.array(BudgetOverrun).min(1),
  expiresAt: z.string(),
});

/** One intent the router's classifier found in a user message (docs/routers.md). */
export const RouteIntent = z.object({
  agent: z.string(),
  confidence: z.number().min(0).max(1),
  reasoning: z.string(),
});
export type RouteIntent = z.infer<typeof RouteIntent>;

/**
 * What a router decided for one user message: `agents` (the chosen members run in order),
 * `clarification` (ambiguous or below the threshold: a question, no agent runs), `rephrase` (the
 * classifier's answer was unreadable twice) or `escalate` (the classifier sent it to a person).
 */
export const RouteOutcome = z.enum(['agents', 'clarification', 'rephrase', 'escalate']);
export type RouteOutcome = z.infer<typeof RouteOutcome>;

export const RouteDecidedData = z.object({
  turn: z.number().int().positive(),
  router: z.string(),
  intents: z.array(RouteIntent),
  /** The members that run, in order; empty unless outcome is `agents`. */
  chosen: z.array(z.string()),
  outcome: RouteOutcome,
  isAmbiguous: z.boolean(),
  /** Classifier calls made: 2 when the first answer was malformed. */
  attempts: z.number().int().positive(),
  usage: Usage,
});

/** The router asks the user to say more; no agent ran. Its question is also the turn's reply. */
export const ClarificationData = z.object({
  turn: z.number().int().positive(),
  question: z.string(),
  reason: z.enum(['ambiguous', 'low_confidence', 'unreadable']),
  messageId: z.string(),
});

/** A member agent takes over the turn: first by the route, later by a handoff. */
export const AgentStartedData = z.object({
  turn: z.number().int().positive(),
  agent: z.string(),
  version: z.number().int().nonnegative(),
  reason: z.enum(['route', 'handoff']),
  /** 1 for the first agent of the turn, then 2, … */
  index: z.number().int().positive(),
});

export const AgentHandoffData = z.object({
  turn: z.number().int().positive(),
  from: z.string(),
  to: z.string(),
  reason: z.string(),
  toolCallId: z.string(),
});

export const EscalationSource = z.enum(['tool', 'classifier', 'tool_auth', 'llm_auth', 'operator']);
export type EscalationSource = z.infer<typeof EscalationSource>;

/** The conversation went to a person: agents stay silent until an operator hands it back. */
export const SessionEscalatedData = z.object({
  turn: z.number().int().positive(),
  reason: z.string(),
  source: EscalationSource,
  agent: z.string().nullable(),
  /** The agent's escalationMessage, sent to the user as an assistant message. */
  messageId: z.string(),
});

/** What the escalation webhook answered (docs/escalation.md). */
export const EscalationDeliveredData = z.object({
  turn: z.number().int().positive(),
  success: z.boolean(),
  statusCode: z.number().int().nullable(),
  attempts: z.number().int().nonnegative(),
  error: z.string().nullable(),
});

/** An operator wrote into an escalated conversation. */
export const OperatorMessageData = z.object({
  messageId: z.string(),
  operator: z.string(),
  content: z.string(),
});

/** The operator gave the conversation back to the agents. */
export const SessionHandedBackData = z.object({ by: z.string() });

/** Something happened outside the conversation (an order shipped), delivered by POST /sessions/:id/external-events. */
export const ExternalEventData = z.object({
  eventId: z.string(),
  type: z.string(),
  data: z.unknown(),
  /** Whether it woke a turn (the agent answers it) or waits for the next user message. */
  wake: z.boolean(),
  /** The turn that answers it, when it woke one. */
  turn: z.number().int().positive().optional(),
});

/** Events written to the session's log, each with a gap-free `seq`. */
export const durableEventSchemas = {
  'message.accepted': MessageAcceptedData,
  'stream.start': StreamStartData,
  'stream.end': StreamEndData,
  'turn.done': TurnDoneData,
  'tool.call': ToolCallData,
  'approval.required': ApprovalRequiredData,
  'approval.resolved': ApprovalResolvedData,
  'tool.result': ToolResultData,
  error: ErrorEventData,
  'session.expired': SessionExpiredData,
  'session.deleted': SessionDeletedData,
  'run.progress': RunProgressData,
  'budget.exceeded': BudgetExceededData,
  'route.decided': RouteDecidedData,
  clarification: ClarificationData,
  'agent.started': AgentStartedData,
  'agent.handoff': AgentHandoffData,
  'session.escalated': SessionEscalatedData,
  'escalation.delivered': EscalationDeliveredData,
  'operator.message': OperatorMessageData,
  'session.handed_back': SessionHandedBackData,
  'external.event': ExternalEventData,
} as const;

export type DurableEventType = keyof typeof durableEventSchemas;
export type DurableEventData<T extends DurableEventType> = z.infer<(typeof durableEventSchemas)[T]>;
export const DurableEventType = z.enum(Object.keys(durableEventSchemas) as [DurableEventType, ...DurableEventType[]]);

export interface DurableEvent<T extends DurableEventType = DurableEventType> {
  sessionId: string;
  seq: number;
  type: T;
  data: DurableEventData<T>;
  createdAt: string;
}

/** Stored payloads carry a version so later readers can upgrade old rows. */
export const EVENT_PAYLOAD_VERSION = 1;

/** What the API sends over WebSocket and SSE. `seq` is present on durable events only. */
export type ServerFrame =
  | { type: 'connected'; sessionId: string; data: { lastSeq: number }; lastSeq: number }
  | { type: 'pong'; sessionId: string; data: Record<string, never> }
  | { type: 'stream.delta'; sessionId: string; data: StreamDeltaData }
  | { type: 'error'; sessionId: string; seq?: number; data: z.infer<typeof ErrorEventData> }
  // Presence (docs/presence.md): relayed or derived, never stored.
  | { type: 'typing'; sessionId: string; data: TypingData }
  | { type: 'agent.status'; sessionId: string; data: AgentStatusData }
  | { type: DurableEventType; sessionId: string; seq: number; data: unknown };

export function durableFrame(event: DurableEvent): ServerFrame {
  return { type: event.type, sessionId: event.sessionId, seq: event.seq, data: event.data };
}
