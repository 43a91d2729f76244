import type { DatabasePool } from 'slonik';
import type { z } from 'zod';
import type { ToolDefinition } from '../contracts/tools';

export interface ToolSettings {
  /** Hosts (`host` or `host:port`) that http_request may reach even at private addresses. */
  httpAllowHosts: string[];
  httpTimeoutMs: number;
  httpMaxBytes: number;
}

export const DEFAULT_TOOL_SETTINGS: Readonly<ToolSettings> = Object.freeze({
  httpAllowHosts: [],
  httpTimeoutMs: 10_000,
  httpMaxBytes: 64 * 1024,
});

export interface ToolContext {
  sessionId: string;
  toolCallId: string;
  /** Derived by the runtime from workflow ID + tool call ID; the same on every retry of one call. */
  idempotencyKey: string;
  pool: DatabasePool;
  /** Aborted when the call times out or is cancelled. */
  signal: AbortSignal;
  settings: ToolSettings;
}

export interface Tool<A = any> {
  definition: ToolDefinition;
  /** Validates and parses the model's arguments; throws ToolInputError with a clear message on bad input. */
  parse(args: unknown): A;
  /** Resolves to a JSON-serialisable result. */
  execute(args: A, ctx: ToolContext): Promise<unknown>;
}

/**
 * A failure the model should read and that retrying will not fix (bad arguments, unknown host,
 * too many redirects). The runtime reports it as TOOL_EXECUTION_ERROR with this message.
 * `name` is set because Temporal carries it across the activity boundary as the failure type.
 */
export class ToolInputError extends Error {
  override readonly name = 'ToolInputError';
}

/** The call breaks a rule of the tool (e.g. an SSRF refusal): reported as TOOL_PERMISSION_DENIED. */
export class ToolRefusedError extends Error {
  override readonly name = 'ToolRefusedError';
}

/** Parses `args` with a zod schema, turning its issues into one ToolInputError message. */
export function parseArgs<S extends z.ZodTypeAny>(schema: S, args: unknown): z.output<S> {
  const result = schema.safeParse(args);
  if (result.success) return result.data as z.output<S>;
  const problems = result.error.issues.map((i) => (i.path.length > 0 ? `${i.path.join('.')}: ${i.message}` : i.message));
  throw new ToolInputError(`invalid arguments: ${problems.join('; ')}`);
}

/** The tool gave up waiting (its own time limit); the runtime reports TOOL_TIMEOUT and may retry. */
export class ToolTimeoutError extends Error {
  override readonly name = 'ToolTimeoutError';
}

/**
 * The service answered with a failure that may pass (408, 429, 5xx): thrown so the runtime
 * retries the call (`retry.maxAttempts`, exponential back-off); after the last attempt the model
 * reads TOOL_EXECUTION_ERROR.
 */
export class ToolTransientError extends Error {
  override readonly name = 'ToolTransientError';
  constructor(
    message: string,
    /**
     * The request surely had no effect (it was never sent, or the service said so: 408, 429,
     * 503). A write whose attempt failed otherwise (a 500, a gateway's 502/504) may have acted:
     * the effect ledger does not run it again on a guess (docs/tools.md, "Effects").
     */
    readonly notActed = false,
  ) {
    super(message);
  }
}

/**
 * The service refused the deployment's credentials (401, 403): recorded as TOOL_AUTH_ERROR and
 * never retried. The turn's workflow sees the failure type TOOL_AUTH_ERROR and escalates.
 */
export class ToolAuthError extends Error {
  override readonly name = 'ToolAuthError';
}

/**
 * The service refused the request as the model made it (a 4xx other than 401, 403, 408, 429):
 * reported to the model as TOOL_VALIDATION_ERROR with this message, which says what the service
 * answered, so it can fix its arguments. Never retried.
 */
export class ToolValidationError extends Error {
  override readonly name = 'ToolValidationError';
}
