import { ActivityFailure, ApplicationFailure, TimeoutFailure } from '@temporalio/workflow';
import type { ErrorBody, ErrorCode } from '../contracts/errors';

const LLM_CODES: ErrorCode[] = ['LLM_TIMEOUT', 'LLM_RATE_LIMIT', 'LLM_API_ERROR', 'LLM_CONTENT_FILTER'];
const RECOVERABLE: Partial<Record<ErrorCode, boolean>> = { LLM_CONTENT_FILTER: false };
const MESSAGES: Partial<Record<ErrorCode, string>> = {
  LLM_TIMEOUT: 'The model did not answer in time. Please try again.',
  LLM_RATE_LIMIT: 'The model provider is busy. Please try again shortly.',
  LLM_API_ERROR: 'The model provider failed to answer. Please try again.',
  LLM_CONTENT_FILTER: 'The model provider refused this content.',
};

/** What the client is told when a turn fails: a stable code, never internals. */
export function turnErrorOf(error: unknown): ErrorBody {
  const code = codeOf(error);
  return { code, message: MESSAGES[code] ?? 'The turn failed.', recoverable: RECOVERABLE[code] ?? true };
}

function codeOf(error: unknown): ErrorCode {
  const cause = error instanceof ActivityFailure ? error.cause : error;
  if (cause instanceof ApplicationFailure && LLM_CODES.includes(cause.type as ErrorCode)) return cause.type as ErrorCode;
  if (cause instanceof TimeoutFailure) return 'LLM_TIMEOUT';
  return 'LLM_API_ERROR';
}
