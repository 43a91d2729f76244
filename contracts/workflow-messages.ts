import { defineQuery, defineSignal, defineUpdate } from '@temporalio/workflow';
import type {
  ApprovalDecision,
  ApprovalDecisionResult,
  CancelTurnRequest,
  CancelTurnResult,
  EndSessionSignal,
  EscalateSignal,
  ExternalEventSignal,
  HandBackSignal,
  SessionStateView,
  SwitchAgentSignal,
  UserMessageSignal,
} from './session';

/**
 * The session workflow's signals, updates and queries, defined once: the API, the tests and the
 * workflow use these objects, never string names. Payload schemas are in contracts/session.ts;
 * this module imports them as types only, so the workflow bundle carries no zod.
 */
export const userMessageSignal = defineSignal<[UserMessageSignal]>('userMessage');
/** An update, not a signal: the caller hears whether a turn was cancelled, and which. */
export const cancelTurnUpdate = defineUpdate<CancelTurnResult, [CancelTurnRequest]>('cancelTurn');
/** The same cancel as a signal, for operators' batch jobs (`temporal workflow signal --query …`), which cannot send updates. */
export const cancelTurnSignal = defineSignal<[CancelTurnRequest]>('cancelTurn');
/** An update, not a signal: the approver needs to hear whether the decision counted. */
export const decideApprovalUpdate = defineUpdate<ApprovalDecisionResult, [ApprovalDecision]>('decideApproval');
export const endSessionSignal = defineSignal<[EndSessionSignal]>('endSession');
/** A rollback moves sessions off the bad version; applied between turns. */
export const switchAgentSignal = defineSignal<[SwitchAgentSignal]>('switchAgent');
/** The operator hands an escalated conversation back to the agents (POST /sessions/:id/hand-back). */
export const handBackSignal = defineSignal<[HandBackSignal]>('handBack');
/** An outside event was stored; `wake` says whether it starts a turn (docs/escalation.md, presence). */
export const externalEventSignal = defineSignal<[ExternalEventSignal]>('externalEvent');
/** An operator takes the conversation over without an agent escalating it. */
export const escalateSignal = defineSignal<[EscalateSignal]>('escalate');
export const sessionStateQuery = defineQuery<SessionStateView>('sessionState');

/** Client message IDs remembered by sessions whose config does not say (started before it was carried). */
export const LEGACY_RECENT_CLIENT_ID_LIMIT = 1000;
