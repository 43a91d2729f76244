import { z } from 'zod';
import { ErrorBody } from './errors';
import { ApprovalOutcome, BudgetOverrun, EscalationSource, RouteOutcome, ToolResultStatus, Usage } from './events';
import { ToolPermission } from './tools';

/**
 * The workflow–activity contract of a turn. The workflow carries IDs and decisions only; the
 * activities read content (messages, system prompt, tool schemas) from Postgres and the agent
 * registry. Activities parse their input with these schemas.
 */

/** A tool as one session's agent may use it, with every policy resolved once, at session start. */
export const ToolPolicy = z.object({
  name: z.string(),
  permission: ToolPermission,
  requiresApproval: z.boolean(),
  approvalTtlMs: z.number().int().positive(),
  /** One execution's time limit: the tool's abort signal and its activity's start-to-close. */
  timeoutMs: z.number().int().positive(),
  maxAttempts: z.number().int().positive(),
  /** A write whose outcome is unknown may be sent again with its idempotency key (absent: it may not). */
  idempotent: z.boolean().optional(),
});
export type ToolPolicy = z.infer<typeof ToolPolicy>;

/** A user message the workflow has taken: its ID and the turn that answers it, never its content. */
export const MessageRef = z.object({
  messageId: z.string(),
  turn: z.number().int().positive(),
  clientMessageId: z.string().optional(),
  /** The API request that sent it, carried into the turn's log lines. */
  requestId: z.string().optional(),
});
export type MessageRef = z.infer<typeof MessageRef>;

export const AcceptMessagesInput = z.object({ sessionId: z.string(), messages: z.array(MessageRef) });
export type AcceptMessagesInput = z.infer<typeof AcceptMessagesInput>;

/** A message the session will not take, waiting to be told so. */
export const RefusedMessage = z.object({
  messageId: z.string(),
  clientMessageId: z.string().optional(),
  code: z.enum(['SESSION_BUSY', 'SESSION_EXPIRED']),
  /** Numbers each refusal in the session, so a refused resend is told again. */
  refusal: z.number().int().nonnegative(),
});
export type RefusedMessage = z.infer<typeof RefusedMessage>;

export const RejectMessagesInput = z.object({ sessionId: z.string(), messages: z.array(RefusedMessage) });
export type RejectMessagesInput = z.infer<typeof RejectMessagesInput>;

const AgentRef = z.object({ id: z.string(), version: z.number().int().nonnegative() });

export const StreamReplyInput = z.object({
  sessionId: z.string(),
  requestId: z.string().optional(),
  turn: z.number().int().positive(),
  step: z.number().int().positive(),
  /** The user message this turn answers. */
  replyTo: z.string(),
  /** Messages taken by the workflow but not yet marked accepted: done, with message.accepted, before stream.start. */
  accept: z.array(MessageRef),
  /** The agent version whose system prompt and tool schemas the model gets. */
  agent: z.object({ id: z.string(), version: z.number().int().nonnegative() }),
  model: z.string(),
  temperature: z.number().optional(),
  /** Router members this agent may hand off to (the built-in handoff tool is offered when any). */
  handoffTo: z.array(AgentRef).optional(),
  /** Offer the built-in escalate tool. */
  escalate: z.boolean().optional(),
  /** Open the reply with the agent's personality greeting (its first answer in the session). */
  greet: z.boolean().optional(),
  /** More agents answer in this turn after this one: a reply without tool calls does not end it. */
  continues: z.boolean().optional(),
  /** In a router session, the member answering (stored on the message, named in turn.done). */
  member: z.boolean().optional(),
  /** In a router session, the router's version: turn.done carries it (release health counts turns by the session's agent). */
  sessionAgentVersion: z.number().int().nonnegative().optional(),
});
export type StreamReplyInput = z.infer<typeof StreamReplyInput>;

export const ModelToolCall = z.object({
  modelCallId: z.string(),
  name: z.string(),
  /** The model's JSON text, exactly as it sent it. */
  arguments: z.string(),
});
export type ModelToolCall = z.infer<typeof ModelToolCall>;

export const StreamReplyResult = z.object({
  messageId: z.string(),
  finishReason: z.string(),
  usage: Usage,
  toolCalls: z.array(ModelToolCall),
});
export type StreamReplyResult = z.infer<typeof StreamReplyResult>;

export const RecordToolCallsInput = z.object({
  sessionId: z.string(),
  turn: z.number().int().positive(),
  step: z.number().int().positive(),
  agent: z.object({ id: z.string(), version: z.number().int().nonnegative() }),
  calls: z.array(ModelToolCall),
  /** The session's resolved tool policies; a call naming a tool not listed here is unknown. */
  policies: z.array(ToolPolicy),
  nowMs: z.number(),
});
export type RecordToolCallsInput = z.infer<typeof RecordToolCallsInput>;

export const PlannedToolCall = ModelToolCall.extend({
  toolCallId: z.string(),
  /** Where the tool's result message sits in the turn's conversation. */
  position: z.number().int(),
  /** Null when the model named a tool this agent does not have. */
  policy: ToolPolicy.nullable(),
  digest: z.string(),
  expiresAt: z.string().nullable(),
});
export type PlannedToolCall = z.infer<typeof PlannedToolCall>;

export const ToolError = z.object({ code: z.string(), message: z.string() });

export const ToolOutcome = z.object({
  /** outcome_unknown: an earlier attempt of this write may have acted, and the tool is not idempotent: nothing ran. */
  status: z.enum(['succeeded', 'failed', 'cancelled', 'outcome_unknown']),
  /** No longer sent: the result is stored, and stays out of the workflow history. Histories from before still carry it. */
  result: z.unknown().optional(),
  error: ToolError.optional(),
});
export type ToolOutcome = z.infer<typeof ToolOutcome>;

const ToolCallIds = z.object({
  sessionId: z.string(),
  toolCallId: z.string(),
  modelCallId: z.string(),
  name: z.string(),
  turn: z.number().int().positive(),
  position: z.number().int(),
});

export const SettleInput = ToolCallIds.extend({
  approval: z.object({ outcome: ApprovalOutcome, decidedBy: z.string().nullable(), feedback: z.string().nullable() }).optional(),
  status: ToolResultStatus.optional(),
  result: z.unknown().optional(),
  error: ToolError.optional(),
  /** What the model reads for a cancelled call: whether the tool ran at all. */
  ran: z.boolean().optional(),
});
export type SettleInput = z.infer<typeof SettleInput>;

export const ExecuteToolInput = ToolCallIds.extend({
  arguments: z.string(),
  /** From the workflow and tool call IDs: the same on every retry of one call. */
  idempotencyKey: z.string(),
  timeoutMs: z.number().int().positive(),
  /** The call's resolved policy says a repeat with the same key is harmless (absent: the tool's own definition). */
  idempotent: z.boolean().optional(),
  /** A person asked to send it again although its outcome is unknown. */
  force: z.boolean().optional(),
});
export type ExecuteToolInput = z.infer<typeof ExecuteToolInput>;

export const TurnFailureInput = z.object({
  sessionId: z.string(),
  requestId: z.string().optional(),
  turn: z.number().int().positive(),
  replyTo: z.string(),
  error: ErrorBody,
  status: z.enum(['failed', 'cancelled']),
  /** Who stopped the turn: the user ID of a cancel, or the reason when no one did. */
  cancelledBy: z.string().optional(),
  /** The agent version that ran the turn. */
  agentVersion: z.number().int().nonnegative().optional(),
});
export type TurnFailureInput = z.infer<typeof TurnFailureInput>;

/** The turn pauses: an approval request (the approvals API decides it) and a budget.exceeded event. */
export const RequestBudgetApprovalInput = z.object({
  sessionId: z.string(),
  turn: z.number().int().positive(),
  step: z.number().int().positive(),
  /** Numbers the pauses of one turn: each is its own approval. */
  pause: z.number().int().positive(),
  overruns: z.array(BudgetOverrun).min(1),
  agent: z.object({ id: z.string(), version: z.number().int().nonnegative() }),
  ttlMs: z.number().int().positive(),
  nowMs: z.number(),
});
export type RequestBudgetApprovalInput = z.infer<typeof RequestBudgetApprovalInput>;

export const BudgetApprovalRequest = z.object({ approvalId: z.string(), digest: z.string(), expiresAt: z.string() });
export type BudgetApprovalRequest = z.infer<typeof BudgetApprovalRequest>;

/** The name a budget approval goes by in the approvals API and its events. */
export const BUDGET_APPROVAL_NAME = 'budget';

export const ExpireSessionInput = z.object({ sessionId: z.string(), idleMs: z.number().int().nonnegative() });
export type ExpireSessionInput = z.infer<typeof ExpireSessionInput>;


export const streamIdOf = (turn: number, step: number) => `t${turn}-s${step}`;
export const replyMessageIdOf = (sessionId: string, turn: number, step: number) => `${sessionId}-t${turn}-r${step}`;
/** Assistant messages sit at step * 1000 within a turn; their tool results right after. */
export const assistantPosition = (step: number) => step * 1000;

/**
 * The conversation goes to a person (docs/escalation.md). One activity: the agent's
 * escalationMessage is stored as the turn's reply and `session.escalated` written (so the user is
 * told even when the webhook fails), then the webhook is POSTed (its own attempts and back-off)
 * and what it answered recorded in `escalations` and `escalation.delivered`. Keyed by
 * escalationId: a retried activity neither writes twice nor posts after a recorded answer.
 */
export const EscalateInput = z.object({
  sessionId: z.string(),
  /** `${turn}` for an agent's or the classifier's escalation; the operator's carries its own. */
  escalationId: z.string(),
  turn: z.number().int().positive(),
  replyTo: z.string(),
  reason: z.string().max(2_000),
  source: EscalationSource,
  /** The agent that escalated (its escalationMessage is used), or null for the router's classifier. */
  agent: z.object({ id: z.string(), version: z.number().int().nonnegative() }).nullable(),
  /** Write turn.done with the escalation message as the reply (false when the turn already ended). */
  endsTurn: z.boolean(),
});
export type EscalateInput = z.infer<typeof EscalateInput>;

export const EscalateResult = z.object({
  messageId: z.string(),
  success: z.boolean(),
  statusCode: z.number().int().nullable(),
  attempts: z.number().int().nonnegative(),
  error: z.string().nullable(),
});
export type EscalateResult = z.infer<typeof EscalateResult>;

/** Where the escalation message sits in its turn: after every step's messages. */
export const ESCALATION_POSITION = 900_000;
/** Escalation messages of one turn take positions from ESCALATION_POSITION on (operator messages start at 950,000). */
export const ESCALATIONS_PER_TURN = 50_000;
export const escalationMessageIdOf = (sessionId: string, escalationId: string) => `${sessionId}-esc-${escalationId}`;


/**
 * The router classifies the turn's message (docs/routers.md). The activity accepts the turn's
 * messages, asks the model for structured output (a malformed answer is asked again once),
 * keeps the intents at or above the threshold, writes route.decided (once per turn, whatever
 * retries), and for a clarification or a rephrase request also the question as the turn's reply.
 */
export const RouteMessageInput = z.object({
  sessionId: z.string(),
  requestId: z.string().optional(),
  turn: z.number().int().positive(),
  replyTo: z.string(),
  accept: z.array(MessageRef),
  router: AgentRef,
  members: z.array(AgentRef).min(1),
  threshold: z.number().min(0).max(1),
  model: z.string(),
});
export type RouteMessageInput = z.infer<typeof RouteMessageInput>;

export const RouteDecision = z.object({
  outcome: RouteOutcome,
  /** Members to run, in order (outcome `agents`). */
  chosen: z.array(z.string()),
  /** Why the classifier sent it to a person (outcome `escalate`). */
  reason: z.string().optional(),
  usage: Usage,
});
export type RouteDecision = z.infer<typeof RouteDecision>;

/** agent.started, and before it agent.handoff when a handoff started it; keyed by turn and index. */
export const StartAgentInput = z.object({
  sessionId: z.string(),
  turn: z.number().int().positive(),
  index: z.number().int().positive(),
  agent: AgentRef,
  handoff: z.object({ from: z.string(), reason: z.string(), toolCallId: z.string() }).optional(),
});
export type StartAgentInput = z.infer<typeof StartAgentInput>;

/**
 * A turn that no agent answers: the conversation is with an operator (turn.done says so), or
 * the members left in the turn were skipped after a rejected action (the user is told which).
 */
export const CloseTurnInput = z.object({
  sessionId: z.string(),
  turn: z.number().int().positive(),
  replyTo: z.string(),
  accept: z.array(MessageRef),
  why: z.discriminatedUnion('kind', [
    z.object({ kind: z.literal('operator') }),
    z.object({ kind: z.literal('skipped'), agents: z.array(z.string()).min(1), outcome: z.enum(['rejected', 'expired']), afterStep: z.number().int().nonnegative() }),
  ]),
});
export type CloseTurnInput = z.infer<typeof CloseTurnInput>;

export { OUTCOME_UNKNOWN_APPROVAL_NAME } from './builtin-tools';

/** Asks a person about a write whose outcome is unknown: approve sends it again, reject marks it done. */
export const RequestEffectDecisionInput = z.object({
  sessionId: z.string(),
  toolCallId: z.string(),
  name: z.string(),
  turn: z.number().int().positive(),
  step: z.number().int().positive(),
  agent: z.object({ id: z.string(), version: z.number().int().nonnegative() }),
  ttlMs: z.number().int().positive(),
  nowMs: z.number(),
  /** The how-many-th time a person is asked about this call (a re-send they approved may again end unknown). */
  round: z.number().int().min(2).optional(),
});
export type RequestEffectDecisionInput = z.infer<typeof RequestEffectDecisionInput>;

/** Closes an unknown-outcome call without sending it again: marked done by a person, or undecided. */
export const CloseUnknownEffectInput = ToolCallIds.extend({
  decision: z.enum(['marked_done', 'undecided']),
  decidedBy: z.string().nullable(),
});
export type CloseUnknownEffectInput = z.infer<typeof CloseUnknownEffectInput>;

/** What the effect ledger holds for a write whose last attempt failed: its receipt (now settled), an unknown outcome, or nothing to go on. */
export const ReconcileEffectResult = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('settled'), outcome: ToolOutcome }),
  z.object({ kind: z.literal('unknown') }),
  z.object({ kind: z.literal('none') }),
]);
export type ReconcileEffectResult = z.infer<typeof ReconcileEffectResult>;
export const ReconcileEffectInput = ToolCallIds;
export type ReconcileEffectInput = z.infer<typeof ReconcileEffectInput>;
