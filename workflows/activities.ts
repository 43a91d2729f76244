import { ActivityCancellationType, proxyActivities } from '@temporalio/workflow';
import type { PersistenceActivities, StreamReplyActivities, ToolActivities } from '../activities';
import type { RoutingActivities } from '../activities/routing';
import type { EscalateInput, EscalateResult } from '../contracts/turn';
import { FailureType } from '../contracts/failure-types';
import type { SessionConfig } from '../contracts/session';
import type { ToolPolicy } from '../contracts/turn';

/** Activity failure types that retrying cannot fix (see activities/persistence-errors.ts). */
const PERSISTENCE_NON_RETRYABLE = [FailureType.persistenceInvalid];
/** Sessions started before the persistence time-out was carried in their config. */
const LEGACY_PERSISTENCE_TIMEOUT_MS = 30_000;
/** How often a running tool must report life; it heartbeats every third of this. */
const TOOL_HEARTBEAT_TIMEOUT_MS = 5_000;
/** Sessions started before the escalation time-out was carried in their config. */
const LEGACY_ESCALATION_TIMEOUT_MS = 90_000;
const ESCALATION_HEARTBEAT_TIMEOUT_MS = 15_000;

interface EscalationActivities {
  escalate(input: EscalateInput): Promise<EscalateResult>;
}

/** Every activity's timeouts and retries, set on purpose from the session's config. */
export function sessionActivities(config: SessionConfig) {
  // Persistence keeps trying while the database is down (an accepted message is never lost),
  // but gives up at once on a failure that retrying cannot fix.
  const persistence = proxyActivities<PersistenceActivities & Pick<ToolActivities, 'recordToolCalls' | 'settleToolCall' | 'requestBudgetApproval' | 'requestEffectDecision' | 'closeUnknownEffect' | 'reconcileEffect'> & Pick<RoutingActivities, 'startAgent' | 'closeTurn'>>({
    startToCloseTimeout: config.persistenceTimeoutMs ?? LEGACY_PERSISTENCE_TIMEOUT_MS,
    retry: { initialInterval: '500 milliseconds', backoffCoefficient: 2, maximumInterval: '30 seconds', nonRetryableErrorTypes: PERSISTENCE_NON_RETRYABLE },
  });
  const llm = proxyActivities<StreamReplyActivities & Pick<RoutingActivities, 'routeMessage'>>({
    // A cancelled turn waits for the stream to stop, so a reply can never land after the turn ended.
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    startToCloseTimeout: config.llm.startToCloseTimeoutMs,
    heartbeatTimeout: config.llm.heartbeatTimeoutMs,
    retry: {
      maximumAttempts: config.llm.maxAttempts,
      initialInterval: config.llm.initialIntervalMs,
      maximumInterval: config.llm.maximumIntervalMs,
      backoffCoefficient: config.llm.backoffCoefficient,
      nonRetryableErrorTypes: ['LLM_CONTENT_FILTER', 'LLM_AUTH_ERROR', ...PERSISTENCE_NON_RETRYABLE],
    },
  });
  const escalation = proxyActivities<EscalationActivities>({
    // The activity posts the webhook itself, every attempt and back-off within one start-to-close.
    startToCloseTimeout: config.escalationTimeoutMs ?? LEGACY_ESCALATION_TIMEOUT_MS,
    heartbeatTimeout: ESCALATION_HEARTBEAT_TIMEOUT_MS,
    // Retried like persistence (a database outage must not lose the escalation): the webhook's
    // attempts are counted in its row, so a retried activity never posts more than it may.
    retry: { initialInterval: '1 second', backoffCoefficient: 2, maximumInterval: '30 seconds', nonRetryableErrorTypes: PERSISTENCE_NON_RETRYABLE },
  });
  // proxyActivities returns a Proxy, which object spread cannot copy.
  return {
    acceptMessages: persistence.acceptMessages,
    rejectMessages: persistence.rejectMessages,
    recordTurnFailure: persistence.recordTurnFailure,
    expireSession: persistence.expireSession,
    recordToolCalls: persistence.recordToolCalls,
    settleToolCall: persistence.settleToolCall,
    requestBudgetApproval: persistence.requestBudgetApproval,
    requestEffectDecision: persistence.requestEffectDecision,
    closeUnknownEffect: persistence.closeUnknownEffect,
    reconcileEffect: persistence.reconcileEffect,
    streamReply: llm.streamReply,
    routeMessage: llm.routeMessage,
    startAgent: persistence.startAgent,
    closeTurn: persistence.closeTurn,
    escalate: escalation.escalate,
  };
}

export type SessionActivityProxies = ReturnType<typeof sessionActivities>;

/**
 * A tool call runs with its resolved policy's timeout and attempts. It heartbeats, and a cancel
 * waits until the activity has stopped and recorded what really happened.
 */
export function toolActivities(policy: ToolPolicy, options: { single?: boolean } = {}) {
  return proxyActivities<Pick<ToolActivities, 'executeTool'>>({
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    // The extra second lets the activity record its own time-out before Temporal's fires.
    startToCloseTimeout: policy.timeoutMs + 1_000,
    heartbeatTimeout: TOOL_HEARTBEAT_TIMEOUT_MS,
    // `single`: a re-send a person approved is one attempt (another needs another approval).
    retry: { maximumAttempts: options.single ? 1 : policy.maxAttempts, initialInterval: '200 milliseconds', nonRetryableErrorTypes: ['TOOL_NOT_FOUND', 'TOOL_AUTH_ERROR', 'TOOL_VALIDATION_ERROR', ...PERSISTENCE_NON_RETRYABLE] },
  });
}
