import { defineQuery, defineSignal } from '@temporalio/workflow';
import type { Usage } from './events';

/** Settings a session workflow runs with. Fixed at start, carried across continue-as-new. */
export interface SessionConfig {
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

export interface SessionStateView {
  sessionId: string;
  status: SessionStatus;
  turnInProgress: { turn: number; replyTo: string } | null;
  queued: { messageId: string; turn: number }[];
  messageCount: number;
  usage: Usage;
  generation: number;
}

export interface UserMessageSignal {
  messageId: string;
  clientMessageId?: string;
  content: string;
}

export const userMessageSignal = defineSignal<[UserMessageSignal]>('userMessage');
export const sessionStateQuery = defineQuery<SessionStateView>('sessionState');

/** How many client message IDs a session remembers for de-duplication. */
export const RECENT_CLIENT_ID_LIMIT = 1000;
