import { ActivityFailure, ApplicationFailure, TimeoutFailure } from '@temporalio/workflow';
import type { ErrorBody, ErrorCode } from '../contracts/errors';
import { FailureType } from '../contracts/failure-types';

const LLM_CODES: ErrorCode[] = ['LLM_TIMEOUT', 'LLM_RATE_LIMIT', 'LLM_API_ERROR', 'LLM_CONTENT_FILTER', 'LLM_AUTH_ERROR'];
const NOT_RECOVERABLE: ErrorCode[] = ['LLM_CONTENT_FILTER', 'LLM_AUTH_ERROR'];
const MESSAGES: Partial<Record<ErrorCode, string>> = {
  LLM_TIMEOUT: 'The model did not answer in time. Please try again.',
  LLM_RATE_LIMIT: 'The model provider is busy. Please try again shortly.',
  LLM_API_ERROR: 'The model provider failed to answer. Please try again.',
  LLM_CONTENT_FILTER: 'The model provider refused this content.',
  LLM_AUTH_ERROR: 'The model provider refused this deployment\'s credentials. An operator must fix them.',
  INTERNAL_ERROR: 'The turn could not be completed.',
};

/** The agent used every step of the turn without a final answer. */
export class StepLimitReached extends Error {
  override readonly name = 'StepLimitReached';
  constructor(readonly steps: number) {
    super(`step limit ${steps}`);
  }
}

/** An approver refused to raise the turn's budget (or let the request expire). */
export class BudgetRefused extends Error {
  override readonly name = 'BudgetRefused';
  constructor(
    readonly limits: string[],
    readonly outcome: 'rejected' | 'expired',
  ) {
    super(`budget ${limits.join(', ')} ${outcome}`);
  }
}

/** What the client is told when a turn fails: a stable code, never internals. */
export function turnErrorOf(error: unknown): ErrorBody {
  if (error instanceof BudgetRefused) {
    const why = error.outcome === 'rejected' ? 'the approver did not raise it' : 'nobody raised it in time';
    return { code: 'BUDGET_EXCEEDED', message: `The turn reached its budget (${error.limits.join(', ')}) and ${why}.`, recoverable: false };
  }
  if (error instanceof StepLimitReached) {
    return { code: 'STEP_LIMIT_REACHED', message: `The agent used its ${error.steps} steps for this turn without a final answer.`, recoverable: true };
  }
  const code = codeOf(error);
  return { code, message: MESSAGES[code] ?? 'The turn failed.', recoverable: !NOT_RECOVERABLE.includes(code) };
}

function codeOf(error: unknown): ErrorCode {
  if (!(error instanceof ActivityFailure)) return 'INTERNAL_ERROR';
  // Only the model call's failures are the model's; a failed write is ours.
  if (error.activityType !== 'streamReply') return 'INTERNAL_ERROR';
  const cause = error.cause;
  if (cause instanceof ApplicationFailure && LLM_CODES.includes(cause.type as ErrorCode)) return cause.type as ErrorCode;
  if (cause instanceof TimeoutFailure) return 'LLM_TIMEOUT';
  if (cause instanceof ApplicationFailure && cause.type === FailureType.persistenceInvalid) return 'INTERNAL_ERROR';
  return 'LLM_API_ERROR';
}
