import { STATUS_CODES } from 'node:http';
import { ToolAuthError, ToolTransientError, ToolValidationError } from './tool';

/**
 * What an HTTP-backed tool makes of the status a service answered (docs/tools.md, "HTTP
 * failures"): `transient` is worth another attempt, `auth` means the deployment's credentials
 * were refused (the conversation escalates), `validation` means the request as the model made
 * it was refused (the model reads why).
 */
export type HttpStatusClass = 'ok' | 'transient' | 'auth' | 'validation';

/** Characters of a service's answer quoted to the model in a TOOL_VALIDATION_ERROR. */
export const SERVICE_ANSWER_MAX_CHARS = 500;

export function classifyHttpStatus(status: number): HttpStatusClass {
  if (status === 401 || status === 403) return 'auth';
  if (status === 408 || status === 429 || status >= 500) return 'transient';
  if (status >= 400) return 'validation';
  return 'ok';
}

function excerpt(body: string): string {
  const text = body.replace(/\s+/g, ' ').trim();
  if (text === '') return '(no body)';
  return text.length > SERVICE_ANSWER_MAX_CHARS ? `${text.slice(0, SERVICE_ANSWER_MAX_CHARS)}…` : text;
}

/**
 * Throws the failure for a status that is not a success: ToolTransientError, ToolAuthError or
 * ToolValidationError (tools/tool.ts). `request` names the call without its query string
 * (e.g. "GET https://api.example.com/orders/7"); `body` is the service's answer, of which the
 * model reads the start on a validation failure only.
 */
/** Answers that say the request was not acted on: too early (408), too many (429), not available (503). */
const NOT_ACTED_STATUSES = new Set([408, 429, 503]);

export function throwForHttpStatus(status: number, request: string, body: string): void {
  const answered = `${request} answered ${status}${STATUS_CODES[status] ? ` ${STATUS_CODES[status]}` : ''}`;
  switch (classifyHttpStatus(status)) {
    case 'ok':
      return;
    case 'transient':
      throw new ToolTransientError(answered, NOT_ACTED_STATUSES.has(status));
    case 'auth':
      throw new ToolAuthError(`${answered}: the service refused the deployment's credentials`);
    case 'validation':
      throw new ToolValidationError(`${answered}: ${excerpt(body)}`);
  }
}
