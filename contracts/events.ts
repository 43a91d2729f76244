import { z } from 'zod';
import { ErrorBody } from './errors';
import { RunStatus } from './runs';

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
  outcome: ApprovalOutcome,
  decidedBy: z.string().nullable(),
  feedback: z.string().nullable(),
});

export const ToolResultStatus = z.enum(['succeeded', 'failed', 'rejected', 'expired', 'cancelled']);
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
  | { type: DurableEventType; sessionId: string; seq: number; data: unknown };

export function durableFrame(event: DurableEvent): ServerFrame {
  return { type: event.type, sessionId: event.sessionId, seq: event.seq, data: event.data };
}
