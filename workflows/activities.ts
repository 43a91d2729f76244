import { ActivityCancellationType, proxyActivities, proxyLocalActivities } from '@temporalio/workflow';
import type { SessionActivities, ToolActivities } from '../activities';
import type { PlannedToolCall } from '../activities/tool-activities';
import type { SessionConfig } from '../contracts/session';

/** Every activity's timeouts and retries, set on purpose from the session's config. */
export function sessionActivities(config: SessionConfig) {
  // Persistence must never give up: a message that was accepted is not lost while the database is down.
  const retry = { initialInterval: '500 milliseconds', backoffCoefficient: 2, maximumInterval: '30 seconds' } as const;
  const persistence = proxyActivities<Pick<SessionActivities, 'recordTurnFailure' | 'expireSession' | 'rejectMessages'> & Pick<ToolActivities, 'recordToolCalls' | 'settleToolCall'>>({
    startToCloseTimeout: '30 seconds',
    retry,
  });
  // A local activity: acknowledging a message is one short transaction on the hot path of
  // every turn, and skipping the task queue round trip cuts time to first token.
  const acknowledge = proxyLocalActivities<Pick<SessionActivities, 'recordUserMessages'>>({
    startToCloseTimeout: '10 seconds',
    retry,
  });
  const llm = proxyActivities<Pick<SessionActivities, 'streamReply'>>({
    // A cancelled turn waits for the stream to stop, so a reply can never land after the turn ended.
    cancellationType: ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
    startToCloseTimeout: config.llm.startToCloseTimeoutMs,
    heartbeatTimeout: config.llm.heartbeatTimeoutMs,
    retry: {
      maximumAttempts: config.llm.maxAttempts,
      initialInterval: config.llm.initialIntervalMs,
      maximumInterval: config.llm.maximumIntervalMs,
      backoffCoefficient: config.llm.backoffCoefficient,
      nonRetryableErrorTypes: ['LLM_CONTENT_FILTER'],
    },
  });
  // proxyActivities returns a Proxy, which object spread cannot copy.
  return {
    recordUserMessages: acknowledge.recordUserMessages,
    recordTurnFailure: persistence.recordTurnFailure,
    expireSession: persistence.expireSession,
    rejectMessages: persistence.rejectMessages,
    recordToolCalls: persistence.recordToolCalls,
    settleToolCall: persistence.settleToolCall,
    streamReply: llm.streamReply,
  };
}

export type SessionActivityProxies = ReturnType<typeof sessionActivities>;

/** Each tool call runs with its tool's own timeout and retry policy. */
export function toolActivities(call: PlannedToolCall) {
  return proxyActivities<Pick<ToolActivities, 'executeTool'>>({
    startToCloseTimeout: call.timeoutMs + 1_000,
    retry: { maximumAttempts: call.maxAttempts, initialInterval: '200 milliseconds', nonRetryableErrorTypes: ['TOOL_NOT_FOUND'] },
  });
}
