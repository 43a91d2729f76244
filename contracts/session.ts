import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type { ResolvedAgent } from './agents';
import type { Usage } from './events';

/** Settings a session workflow runs with. Fixed at start, carried across continue-as-new. */
export interface SessionConfig {
  /** The agent, at the version the session started with. */
  agent: ResolvedAgent;
  idleTtlMs: number;
  /** Continue-as-new once the workflow history holds this many events. */
  continueAsNewAfterEvents: number;
  llm: {
    model: string;
    startToCloseTimeoutMs: number;
    heartbeatTimeoutMs: number;
    maxAttempts: number;
    initialIntervalMs: number;
    maximumIntervalMs: number;
    backoffCoefficient: number;
  };
}

export interface PendingMessage {
  messageId: string;
  clientMessageId?: string;
  /** The API request that sent it, carried into the turn's log lines. */
  requestId?: string;
  content: string;
  turn: number;
}

export type SessionStatus = 'active' | 'expired';

/** The workflow's whole state: also its continue-as-new input. */
export interface SessionSnapshot {
  sessionId: string;
  config: SessionConfig;
  status: SessionStatus;
  /** Messages accepted but not yet answered, oldest first. */
  queue: PendingMessage[];
  /** Accepted messages whose persistence has not run yet. */
  unrecorded: PendingMessage[];
  nextTurn: number;
  messageCount: number;
  usage: Usage;
  /** Recent client message IDs, for de-duplication across retries of a send. */
  recentClientIds: string[];
  generation: number;
}

export interface SessionWorkflowInput {
  sessionId: string;
  config: SessionConfig;
  resume?: SessionSnapshot;
}

export interface PendingApprovalView {
  toolCallId: string;
  name: string;
  digest: string;
  expiresAt: string;
}

export interface SessionStateView {
  sessionId: string;
  status: SessionStatus;
  agent: { id: string; version: number; busyPolicy: string };
  turnInProgress: { turn: number; replyTo: string } | null;
  pendingApprovals: PendingApprovalView[];
  queued: { messageId: string; turn: number }[];
  messageCount: number;
  usage: Usage;
  generation: number;
}

export interface UserMessageSignal {
  messageId: string;
  clientMessageId?: string;
  requestId?: string;
  content: string;
}

export interface ApprovalDecision {
  toolCallId: string;
  approved: boolean;
  feedback?: string;
  /** When given, must equal the digest announced in approval.required. */
  digest?: string;
  decidedBy: string;
}

export interface ApprovalDecisionResult {
  toolCallId: string;
  outcome: 'approved' | 'rejected';
}

export const userMessageSignal = defineSignal<[UserMessageSignal]>('userMessage');
/** Cancels the turn in progress; pending approvals resolve as cancelled. */
export const cancelTurnSignal = defineSignal<[{ requestedBy: string }]>('cancelTurn');
/** An update, not a signal: the approver needs to hear whether the decision counted. */
export const decideApprovalUpdate = defineUpdate<ApprovalDecisionResult, [ApprovalDecision]>('decideApproval');
export const sessionStateQuery = defineQuery<SessionStateView>('sessionState');

/** How many client message IDs a session remembers for de-duplication. */
export const RECENT_CLIENT_ID_LIMIT = 1000;
