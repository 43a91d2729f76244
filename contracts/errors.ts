import { z } from 'zod';
import { SPEC_FAILURE_CODES } from './openapi-failures';

/** Stable error codes. Clients branch on these; never rename one. */
export const ErrorCode = z.enum([
  'SESSION_NOT_FOUND',
  'SESSION_NOT_ACTIVE',
  'SESSION_EXPIRED',
  'LLM_TIMEOUT',
  'LLM_RATE_LIMIT',
  'LLM_API_ERROR',
  'LLM_CONTENT_FILTER',
  'VALIDATION_ERROR',
  'INVALID_JSON',
  'PAYLOAD_TOO_LARGE',
  'UNKNOWN_FRAME_TYPE',
  'NOT_FOUND',
  'SERVICE_UNAVAILABLE',
  'INTERNAL_ERROR',
  'AGENT_NOT_FOUND',
  'SESSION_BUSY',
  'TOOL_NOT_FOUND',
  'TOOL_EXECUTION_ERROR',
  'TOOL_TIMEOUT',
  'TOOL_PERMISSION_DENIED',
  'STEP_LIMIT_REACHED',
  'TURN_CANCELLED',
  'APPROVAL_NOT_FOUND',
  'APPROVAL_ALREADY_DECIDED',
  'APPROVAL_EXPIRED',
  'APPROVAL_DIGEST_MISMATCH',
  'UNAUTHORIZED',
  'FORBIDDEN',
  'RATE_LIMIT_EXCEEDED',
  'METHOD_NOT_ALLOWED',
  'UNSUPPORTED_MEDIA_TYPE',
  'LLM_AUTH_ERROR',
  'CHAT_TIMEOUT',
  'APPROVAL_PENDING',
  'CONSUMER_TOO_SLOW',
  'VERSION_NOT_FOUND',
  'NO_ACTIVE_VERSION',
  'VERSION_ALREADY_ACTIVE',
  'VERSION_NOT_ACTIVE',
  'NO_PREVIOUS_VERSION',
  'BUDGET_EXCEEDED',
  'RUN_NOT_FOUND',
  'RUN_ALREADY_FINISHED',
  'IDEMPOTENCY_KEY_REUSED',
  'TOOL_AUTH_ERROR',
  'TOOL_VALIDATION_ERROR',
  'SESSION_NOT_ESCALATED',
  'HANDOFF_REFUSED',
  'INVALID_ID',
  'OUTCOME_UNKNOWN',
  // OpenAPI import (docs/tools.md, "OpenAPI import"): the spec's refusals, listed once for the workflow bundle.
  ...SPEC_FAILURE_CODES,
  'IMPORT_NOT_FOUND',
  'IMPORT_NOT_READY',
  'IMPORT_ALREADY_DECIDED',
  'OPERATION_NOT_FOUND',
  'TOOL_NAME_TAKEN',
]);
export type ErrorCode = z.infer<typeof ErrorCode>;

const httpStatusByCode: Record<ErrorCode, number> = {
  SESSION_NOT_FOUND: 404,
  SESSION_NOT_ACTIVE: 409,
  SESSION_EXPIRED: 410,
  LLM_TIMEOUT: 504,
  LLM_RATE_LIMIT: 429,
  LLM_API_ERROR: 502,
  LLM_CONTENT_FILTER: 422,
  VALIDATION_ERROR: 422,
  INVALID_JSON: 400,
  PAYLOAD_TOO_LARGE: 413,
  UNKNOWN_FRAME_TYPE: 422,
  NOT_FOUND: 404,
  SERVICE_UNAVAILABLE: 503,
  INTERNAL_ERROR: 500,
  AGENT_NOT_FOUND: 404,
  SESSION_BUSY: 409,
  TOOL_NOT_FOUND: 404,
  TOOL_EXECUTION_ERROR: 502,
  TOOL_TIMEOUT: 504,
  TOOL_PERMISSION_DENIED: 403,
  STEP_LIMIT_REACHED: 422,
  TURN_CANCELLED: 409,
  APPROVAL_NOT_FOUND: 404,
  APPROVAL_ALREADY_DECIDED: 409,
  APPROVAL_EXPIRED: 409,
  APPROVAL_DIGEST_MISMATCH: 409,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  RATE_LIMIT_EXCEEDED: 429,
  METHOD_NOT_ALLOWED: 405,
  UNSUPPORTED_MEDIA_TYPE: 415,
  LLM_AUTH_ERROR: 502,
  CHAT_TIMEOUT: 504,
  APPROVAL_PENDING: 409,
  CONSUMER_TOO_SLOW: 429,
  VERSION_NOT_FOUND: 404,
  NO_ACTIVE_VERSION: 409,
  VERSION_ALREADY_ACTIVE: 409,
  VERSION_NOT_ACTIVE: 409,
  NO_PREVIOUS_VERSION: 409,
  BUDGET_EXCEEDED: 409,
  RUN_NOT_FOUND: 404,
  RUN_ALREADY_FINISHED: 409,
  IDEMPOTENCY_KEY_REUSED: 409,
  TOOL_AUTH_ERROR: 502,
  TOOL_VALIDATION_ERROR: 422,
  SESSION_NOT_ESCALATED: 409,
  HANDOFF_REFUSED: 422,
  INVALID_ID: 400,
  OUTCOME_UNKNOWN: 409,
  SPEC_FETCH_REFUSED: 422,
  SPEC_FETCH_FAILED: 502,
  SPEC_TOO_LARGE: 413,
  SPEC_TOO_MANY_REDIRECTS: 422,
  SPEC_UNSUPPORTED_VERSION: 422,
  SPEC_INVALID: 422,
  SPEC_REMOTE_REF: 422,
  IMPORT_NOT_FOUND: 404,
  IMPORT_NOT_READY: 409,
  IMPORT_ALREADY_DECIDED: 409,
  OPERATION_NOT_FOUND: 404,
  TOOL_NAME_TAKEN: 409,
};

export const SESSION_EXPIRED_MESSAGE = 'Session expired. Please start a new conversation.';

/** Whether retrying the same request later can succeed. */
const recoverableByCode: Record<ErrorCode, boolean> = {
  SESSION_NOT_FOUND: false,
  SESSION_NOT_ACTIVE: true,
  SESSION_EXPIRED: false,
  LLM_TIMEOUT: true,
  LLM_RATE_LIMIT: true,
  LLM_API_ERROR: true,
  LLM_CONTENT_FILTER: false,
  VALIDATION_ERROR: false,
  INVALID_JSON: false,
  PAYLOAD_TOO_LARGE: false,
  UNKNOWN_FRAME_TYPE: false,
  NOT_FOUND: false,
  SERVICE_UNAVAILABLE: true,
  INTERNAL_ERROR: true,
  AGENT_NOT_FOUND: false,
  SESSION_BUSY: true,
  TOOL_NOT_FOUND: false,
  TOOL_EXECUTION_ERROR: true,
  TOOL_TIMEOUT: true,
  TOOL_PERMISSION_DENIED: false,
  STEP_LIMIT_REACHED: true,
  TURN_CANCELLED: true,
  APPROVAL_NOT_FOUND: false,
  APPROVAL_ALREADY_DECIDED: false,
  APPROVAL_EXPIRED: false,
  APPROVAL_DIGEST_MISMATCH: false,
  UNAUTHORIZED: false,
  FORBIDDEN: false,
  RATE_LIMIT_EXCEEDED: true,
  METHOD_NOT_ALLOWED: false,
  UNSUPPORTED_MEDIA_TYPE: false,
  // The deployment's provider credentials were refused: retrying the same request cannot help.
  LLM_AUTH_ERROR: false,
  // /chat stopped waiting; the turn goes on and its events stay readable with ?after=.
  CHAT_TIMEOUT: true,
  // /chat stopped waiting because the turn waits on a human approval.
  APPROVAL_PENDING: true,
  // A stream reader fell too far behind and was cut off; it resumes with ?after=.
  CONSUMER_TOO_SLOW: true,
  // Release changes refused by the release's current state: the same request cannot succeed as is.
  VERSION_NOT_FOUND: false,
  NO_ACTIVE_VERSION: false,
  VERSION_ALREADY_ACTIVE: false,
  VERSION_NOT_ACTIVE: false,
  NO_PREVIOUS_VERSION: false,
  // A turn over its budget that no approver raised: the same request meets the same limit.
  BUDGET_EXCEEDED: false,
  RUN_NOT_FOUND: false,
  // A cancel of a run that has already ended: there is nothing left to stop.
  RUN_ALREADY_FINISHED: false,
  // The same idempotency key with another input, agent or session: use a new key.
  IDEMPOTENCY_KEY_REUSED: false,
  // The tool's service refused the deployment's credentials (401/403): the conversation escalates.
  TOOL_AUTH_ERROR: false,
  // The tool's service refused the arguments (a 4xx other than 401/403/408/429).
  TOOL_VALIDATION_ERROR: false,
  // Operator messages and hand-backs need a conversation that was escalated to a person.
  SESSION_NOT_ESCALATED: false,
  // A handoff to an agent that is not a member of the router, to itself, or past maxHandoffs.
  HANDOFF_REFUSED: false,
  // A path ID that is not an ID at all (^[a-zA-Z0-9_-]{1,128}$): no such thing can exist.
  INVALID_ID: false,
  // A write whose worker died after sending, not idempotent, and no one decided whether to send it again.
  OUTCOME_UNKNOWN: false,
  // A spec URL the SSRF rules refuse (private, loopback, link-local… address, scheme, credentials).
  SPEC_FETCH_REFUSED: false,
  // The spec's host did not answer, answered an error or too slowly: it may answer later.
  SPEC_FETCH_FAILED: true,
  // Over KEEL_OPENAPI_MAX_BYTES or KEEL_OPENAPI_MAX_OPERATIONS.
  SPEC_TOO_LARGE: false,
  SPEC_TOO_MANY_REDIRECTS: false,
  // Swagger 2.0 or another version than OpenAPI 3.0/3.1.
  SPEC_UNSUPPORTED_VERSION: false,
  SPEC_INVALID: false,
  // A $ref to another document: only refs inside the spec (#/…) are followed.
  SPEC_REMOTE_REF: false,
  IMPORT_NOT_FOUND: false,
  // The import is still being fetched, parsed or classified (or failed): approve or edit once it is ready.
  IMPORT_NOT_READY: true,
  // The import was approved or discarded already.
  IMPORT_ALREADY_DECIDED: false,
  OPERATION_NOT_FOUND: false,
  // A generated tool's name is taken by another tool (built-in, MCP or another import): approve with another toolPrefix.
  TOOL_NAME_TAKEN: false,
};

export function httpStatusOf(code: ErrorCode): number {
  return httpStatusByCode[code];
}

export function isRecoverable(code: ErrorCode): boolean {
  return recoverableByCode[code];
}

export const ErrorBody = z.object({
  code: ErrorCode,
  message: z.string(),
  details: z.unknown().optional(),
  recoverable: z.boolean(),
  requestId: z.string().optional(),
});
export type ErrorBody = z.infer<typeof ErrorBody>;

/** The one error envelope used by REST, WebSocket `error` frames and SSE. */
export const ErrorEnvelope = z.object({ error: ErrorBody });
export type ErrorEnvelope = z.infer<typeof ErrorEnvelope>;

/** A failure we expect and can describe to the caller. */
export class KeelError extends Error {
  override readonly name = 'KeelError';
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: unknown,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }

  /** Seconds to wait before retrying, when the failure says (RATE_LIMIT_EXCEEDED). */
  get retryAfter(): number | undefined {
    const value = (this.details as { retryAfter?: unknown } | undefined)?.retryAfter;
    return typeof value === 'number' ? value : undefined;
  }

  get status(): number {
    return httpStatusOf(this.code);
  }

  toBody(requestId?: string): ErrorBody {
    return {
      code: this.code,
      message: this.message,
      ...(this.details === undefined ? {} : { details: this.details }),
      recoverable: isRecoverable(this.code),
      ...(requestId ? { requestId } : {}),
    };
  }
}

const NAMEABLE_KEY = /^[A-Za-z0-9_.-]{1,64}$/;
const MAX_NAMED_KEYS = 5;

/**
 * Turns a zod error into details that name fields but never echo values. Unknown keys are
 * input too: only short, plain ones are named, and only a few.
 */
export function describeIssues(error: z.ZodError): { field: string; problem: string }[] {
  return error.issues.map((issue) => {
    const field = issue.path.map(String).join('.') || '(root)';
    if (issue.code !== z.ZodIssueCode.unrecognized_keys) return { field, problem: issue.message };
    const named = issue.keys.filter((k) => NAMEABLE_KEY.test(k)).slice(0, MAX_NAMED_KEYS);
    const problem = named.length ? `unknown field(s): ${named.join(', ')}${issue.keys.length > named.length ? ', …' : ''}` : 'unknown fields are not allowed';
    return { field, problem };
  });
}
