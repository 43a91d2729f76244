import { z } from 'zod';
import { Budget, BusyPolicy, ExternalEventsPolicy, ToolExecution } from './agents';
import { Usage } from './events';
import { MessageRef, RefusedMessage, ToolPolicy } from './turn';

/**
 * The session workflow's input, state and message payloads. The signal, update and query
 * definitions that use these types are in contracts/workflow-messages.ts (no zod there: it is
 * part of the workflow bundle).
 */

/** What the workflow needs of its agent: IDs and decisions. Prompt and schemas stay in Postgres. */
export const SessionAgent = z.object({
  id: z.string(),
  version: z.number().int().nonnegative(),
  digest: z.string(),
  busyPolicy: BusyPolicy,
  maxStepsPerTurn: z.number().int().positive(),
  /** The model to call: the agent's, else the deployment's KEEL_MODEL. */
  model: z.string(),
  temperature: z.number().optional(),
  tools: z.array(ToolPolicy),
  /** Each turn's limits, unless its message (a run) brings its own. */
  budget: Budget.optional(),
  /** How long an approval that is not a tool's (a budget's) waits for a decision: the agent's approvalTtlMs. */
  approvalTtlMs: z.number().int().positive().optional(),
  /** Absent in sessions started before it was carried: parallel, as they ran. */
  toolExecution: ToolExecution.optional(),
  /** Whether the agent's personality has a greeting (its text stays in Postgres). */
  greets: z.boolean().optional(),
  /** Whether the built-in escalate tool is offered. */
  escalate: z.boolean().optional(),
  externalEvents: ExternalEventsPolicy.optional(),
});
export type SessionAgent = z.infer<typeof SessionAgent>;

/** A router session's members, each at the version picked at session start (docs/routers.md). */
export const SessionRouter = z.object({
  threshold: z.number().min(0).max(1),
  maxHandoffs: z.number().int().nonnegative(),
  members: z.array(SessionAgent).min(1),
});
export type SessionRouter = z.infer<typeof SessionRouter>;

/** Settings a session workflow runs with. Fixed at start, carried across continue-as-new. */
export const SessionConfig = z.object({
  agent: SessionAgent,
  idleTtlMs: z.number().int().positive(),
  /** Continue-as-new once the workflow history holds this many events. */
  continueAsNewAfterEvents: z.number().int().positive(),
  /** Messages waiting for their turn beyond this are refused with SESSION_BUSY. */
  maxQueuedMessages: z.number().int().positive(),
  /** Outside events waiting for the next turn beyond this drop the oldest; absent in older sessions: 100. */
  maxWaitingEvents: z.number().int().positive().optional(),
  /**
   * Client message IDs the session remembers (and carries across continue-as-new) to know a
   * resend; absent in older sessions: 1,000.
   */
  recentClientIdLimit: z.number().int().positive().optional(),
  /** KeelLastActivityAt is upserted at most this often (a status or approval change always is); absent in older sessions: 60 s. */
  lastActivityResolutionMs: z.number().int().nonnegative().optional(),
  /**
   * Start-to-close of one attempt of a persistence activity (a few writes): also how long a turn
   * waits for a retry when the worker running the attempt died. Absent in sessions started
   * before it was carried: 30 s.
   */
  persistenceTimeoutMs: z.number().int().positive().optional(),
  /** Start-to-close of the escalate activity (all its webhook attempts and waits); absent in older sessions: 90 s. */
  escalationTimeoutMs: z.number().int().positive().optional(),
  /** Set when the session's agent is a router: `agent` is then the router itself. */
  router: SessionRouter.optional(),
  llm: z.object({
    startToCloseTimeoutMs: z.number().int().positive(),
    heartbeatTimeoutMs: z.number().int().positive(),
    maxAttempts: z.number().int().positive(),
    initialIntervalMs: z.number().int().positive(),
    maximumIntervalMs: z.number().int().positive(),
    backoffCoefficient: z.number().min(1),
  }),
});
export type SessionConfig = z.infer<typeof SessionConfig>;

/** A message waiting for its turn; `accepted` once its row has its turn and message.accepted is written. */
export const QueuedMessage = MessageRef.extend({
  accepted: z.boolean(),
  /** A run's own limits for its turn; each field it sets replaces the agent's. */
  budget: Budget.optional(),
  /** An outside event that woke this turn (its row is the event, not a user message). */
  external: z.literal(true).optional(),
});
export type QueuedMessage = z.infer<typeof QueuedMessage>;


export const SessionStatus = z.enum(['active', 'expired', 'deleted']);
export type SessionStatus = z.infer<typeof SessionStatus>;

/** The workflow's whole state between turns: also its continue-as-new input. IDs only. */
export const SessionSnapshot = z.object({
  sessionId: z.string(),
  config: SessionConfig,
  status: SessionStatus,
  /** Messages taken but not yet answered, in turn order; at most config.maxQueuedMessages. */
  queue: z.array(QueuedMessage),
  /** Refusals not yet written to the event log. */
  refused: z.array(RefusedMessage),
  refusals: z.number().int().nonnegative(),
  nextTurn: z.number().int().positive(),
  messageCount: z.number().int().nonnegative(),
  usage: Usage,
  /** Recent client message IDs, for de-duplication across retries of a send. */
  recentClientIds: z.array(z.string()),
  generation: z.number().int().nonnegative(),
  /** The conversation is with a person: turns are held for the operator until it is handed back. */
  escalated: z.boolean().optional(),
  /** Router members that have greeted in this session (each greets once). */
  greeted: z.array(z.string()).optional(),
  /** Outside events that wait for the next turn (their messages get its turn number when it starts). */
  waitingEvents: z.array(z.string()).optional(),
  /** Escalations so far: each gets the next number as its ID. */
  escalations: z.number().int().nonnegative().optional(),
  /** An operator's take-over not yet done (it waits for the running turn to end). */
  operatorEscalation: z.object({ by: z.string(), reason: z.string() }).optional(),
});
export type SessionSnapshot = z.infer<typeof SessionSnapshot>;

export const SessionWorkflowInput = z.object({
  sessionId: z.string(),
  config: SessionConfig,
  resume: SessionSnapshot.optional(),
});
export type SessionWorkflowInput = z.infer<typeof SessionWorkflowInput>;

export interface SessionWorkflowResult {
  status: 'expired' | 'deleted';
}

export const PendingApprovalView = z.object({
  toolCallId: z.string(),
  name: z.string(),
  digest: z.string(),
  expiresAt: z.string(),
});
export type PendingApprovalView = z.infer<typeof PendingApprovalView>;

export const SessionStateView = z.object({
  sessionId: z.string(),
  status: SessionStatus,
  agent: z.object({ id: z.string(), version: z.number(), busyPolicy: BusyPolicy }),
  turnInProgress: z.object({ turn: z.number(), replyTo: z.string() }).nullable(),
  pendingApprovals: z.array(PendingApprovalView),
  queued: z.array(z.object({ messageId: z.string(), turn: z.number() })),
  messageCount: z.number(),
  usage: Usage,
  generation: z.number(),
  escalated: z.boolean().optional(),
});
export type SessionStateView = z.infer<typeof SessionStateView>;

/** A user message has arrived; its content is already in Postgres (the API stores it before signalling). */
export const UserMessageSignal = z.object({
  messageId: z.string(),
  clientMessageId: z.string().optional(),
  requestId: z.string().optional(),
  budget: Budget.optional(),
});
export type UserMessageSignal = z.infer<typeof UserMessageSignal>;

export const ApprovalDecision = z.object({
  toolCallId: z.string(),
  approved: z.boolean(),
  feedback: z.string().optional(),
  /** When given, must equal the digest announced in approval.required. */
  digest: z.string().optional(),
  decidedBy: z.string(),
});
export type ApprovalDecision = z.infer<typeof ApprovalDecision>;

export const ApprovalDecisionResult = z.object({ toolCallId: z.string(), outcome: z.enum(['approved', 'rejected']) });
export type ApprovalDecisionResult = z.infer<typeof ApprovalDecisionResult>;

/** Cancels a turn: the named one, or whichever runs when `turn` is left out. */
export const CancelTurnRequest = z.object({ turn: z.number().int().positive().optional(), requestedBy: z.string() });
export type CancelTurnRequest = z.infer<typeof CancelTurnRequest>;

export const CancelTurnResult = z.object({ cancelled: z.boolean(), turn: z.number().int().positive().nullable() });
export type CancelTurnResult = z.infer<typeof CancelTurnResult>;

/** Ends the session for good (it was deleted): the turn stops, approvals are cancelled. */
export const EndSessionSignal = z.object({ reason: z.literal('deleted'), requestedBy: z.string() });
export type EndSessionSignal = z.infer<typeof EndSessionSignal>;

/** Moves a session to another version of its agent, from its next turn on (a rollback of the version it runs). */
export const SwitchAgentSignal = z.object({ agent: SessionAgent, reason: z.string(), requestedBy: z.string() });
export type SwitchAgentSignal = z.infer<typeof SwitchAgentSignal>;

/** The operator gives an escalated conversation back to the agents. */
export const HandBackSignal = z.object({ by: z.string() });
export type HandBackSignal = z.infer<typeof HandBackSignal>;

/**
 * An outside event is stored (a message with role `event`) and `external.event` written by the
 * API; the signal tells the session whether it wakes a turn or waits for the next message.
 */
export const ExternalEventSignal = z.object({ messageId: z.string(), eventId: z.string(), wake: z.boolean() });
export type ExternalEventSignal = z.infer<typeof ExternalEventSignal>;

/** The session was escalated by someone outside it (an operator taking over). */
export const EscalateSignal = z.object({ by: z.string(), reason: z.string() });
export type EscalateSignal = z.infer<typeof EscalateSignal>;
