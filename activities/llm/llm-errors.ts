import { ApplicationFailure } from '@temporalio/common';
import OpenAI from 'openai';
import type { ErrorCode } from '../../contracts/errors';

function failure(code: ErrorCode, message: string, opts: { nonRetryable?: boolean; retryAfterMs?: number; cause?: Error } = {}) {
  return ApplicationFailure.create({
    type: code,
    message,
    nonRetryable: opts.nonRetryable ?? false,
    ...(opts.retryAfterMs === undefined ? {} : { nextRetryDelay: opts.retryAfterMs }),
    ...(opts.cause ? { cause: opts.cause } : {}),
  });
}

function retryAfterMs(headers: Headers | undefined): number | undefined {
  const value = headers?.get('retry-after-ms') ?? null;
  if (value !== null && Number.isFinite(Number(value))) return Number(value);
  const seconds = headers?.get('retry-after') ?? null;
  if (seconds !== null && Number.isFinite(Number(seconds))) return Number(seconds) * 1000;
  return undefined;
}

function isContentFilter(error: InstanceType<typeof OpenAI.APIError>): boolean {
  return error.code === 'content_filter' || /content[_ ]filter|content management policy/i.test(error.message);
}

/**
 * Maps an OpenAI client failure to an ApplicationFailure whose `type` is our error code.
 * The client's own retries are off: Temporal's retry policy decides, using nonRetryable and
 * nextRetryDelay (from retry-after) set here.
 */
export function classifyLlmError(error: unknown): Error {
  if (error instanceof ApplicationFailure) return error;
  if (error instanceof OpenAI.APIUserAbortError) return error;
  if (error instanceof OpenAI.APIConnectionTimeoutError) return failure('LLM_TIMEOUT', 'The model did not answer in time', { cause: error });
  if (error instanceof OpenAI.APIError && error.status !== undefined) {
    const status = error.status;
    if (status === 429) return failure('LLM_RATE_LIMIT', 'The model provider is rate limiting requests', { retryAfterMs: retryAfterMs(error.headers), cause: error });
    if (status === 408) return failure('LLM_TIMEOUT', 'The model did not answer in time', { cause: error });
    if (status === 401 || status === 403) return failure('LLM_AUTH_ERROR', `The model provider refused the credentials (HTTP ${status})`, { nonRetryable: true, cause: error });
    if (status >= 500) return failure('LLM_API_ERROR', `The model provider failed (HTTP ${status})`, { cause: error });
    if (isContentFilter(error)) return failure('LLM_CONTENT_FILTER', 'The model provider refused the content', { nonRetryable: true, cause: error });
    return failure('LLM_API_ERROR', `The model provider rejected the request (HTTP ${status})`, { nonRetryable: true, cause: error });
  }
  const cause = error instanceof Error ? error : new Error(String(error));
  return failure('LLM_API_ERROR', 'The connection to the model provider failed', { cause });
}

export function contentFilterFailure(): ApplicationFailure {
  return failure('LLM_CONTENT_FILTER', 'The model provider stopped the reply by its content filter', { nonRetryable: true });
}
