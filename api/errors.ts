import type { Context, Next } from 'koa';
import { z } from 'zod';
import { describeIssues, KeelError, type ErrorEnvelope } from '../contracts/errors';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import { requestIdOf } from './request-log';
import { isDependencyUnavailable } from '../db/unavailable';

/** Parses input with a schema, turning failures into VALIDATION_ERROR naming the fields. */
export function parseInput<T extends z.ZodTypeAny>(schema: T, value: unknown): z.infer<T> {
  const result = schema.safeParse(value);
  if (!result.success) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', describeIssues(result.error));
  return result.data;
}

/** Everything a failure can be, expressed as our one envelope. Never leaks stacks or input. */
export function toKeelError(error: unknown): KeelError {
  if (error instanceof KeelError) return error;
  const status = (error as { status?: number; type?: string }).status;
  const type = (error as { type?: string }).type;
  if (status === 413 || type === 'entity.too.large') return new KeelError('PAYLOAD_TOO_LARGE', 'The request body is too large');
  if (type === 'entity.parse.failed' || (error instanceof SyntaxError && status === 400)) return new KeelError('INVALID_JSON', 'The request body is not valid JSON');
  if (status === 415 || type === 'encoding.unsupported' || type === 'charset.unsupported') {
    return new KeelError('UNSUPPORTED_MEDIA_TYPE', 'Unsupported request encoding');
  }
  // Postgres or Temporal down or cut off (docs/operations.md, "Outages"): try again later, not a bug.
  if (isDependencyUnavailable(error)) return new KeelError('SERVICE_UNAVAILABLE', 'A service Keel depends on is unavailable; try again shortly', undefined, { cause: error });
  return new KeelError('INTERNAL_ERROR', 'Internal error', undefined, { cause: error });
}

/**
 * The media types @koa/bodyparser reads as JSON (its defaults); every other body is refused.
 * A hand copy: the package exports only `bodyParser` (its `getMimeTypes` and the default list
 * live in a module its `exports` map does not expose). Keep it in step when upgrading the package.
 */
export const JSON_BODY_TYPES = ['application/json', 'application/json-patch+json', 'application/vnd.api+json', 'application/csp-report', 'application/reports+json', 'application/scim+json'];

/**
 * A request with a body must say it is JSON in UTF-8; anything else is refused rather than
 * read as an empty object. A request without a body stays fine (it parses as nothing).
 */
export function requireJsonBody() {
  return async (ctx: Context, next: Next) => {
    const length = ctx.get('content-length');
    const hasBody = ctx.get('transfer-encoding') !== '' || (length !== '' && length !== '0');
    if (hasBody) {
      if (!ctx.is(JSON_BODY_TYPES)) throw new KeelError('UNSUPPORTED_MEDIA_TYPE', 'The request body must be application/json');
      const charset = ctx.request.charset;
      if (charset && charset.toLowerCase() !== 'utf-8' && charset.toLowerCase() !== 'utf8') throw new KeelError('UNSUPPORTED_MEDIA_TYPE', 'The request body must be UTF-8');
    }
    return next();
  };
}

export function envelopeOf(error: KeelError, requestId?: string): ErrorEnvelope {
  return { error: error.toBody(requestId) };
}

/**
 * Counts a failure answered to a client (by code), and logs the ones that are ours or a
 * dependency's (INTERNAL_ERROR, SERVICE_UNAVAILABLE) with their cause: REST answers, /chat
 * streams, AG-UI runs and AI SDK streams alike.
 */
export function recordFailure(deps: { log: Logger; metrics: Metrics }, error: KeelError, raw: unknown, context: Record<string, unknown>, message: string): void {
  deps.metrics.errors.inc({ code: error.code });
  if (error.code === 'INTERNAL_ERROR' || error.code === 'SERVICE_UNAVAILABLE') deps.log.error({ err: error.cause ?? raw, ...context }, message);
}

/** Turns every failure below it into the one error envelope (the per-request log line is api/request-log.ts). */
export function errorMiddleware(log: Logger, metrics: Metrics) {
  return async (ctx: Context, next: Next) => {
    const requestId = requestIdOf(ctx);
    try {
      await next();
      if (ctx.status === 404 && ctx.body === undefined) throw new KeelError('NOT_FOUND', 'No such route');
      // The router's answers for a known path with another method (405) or an unknown method (501).
      if ((ctx.status === 405 || ctx.status === 501) && !ctx.body) {
        throw new KeelError('METHOD_NOT_ALLOWED', 'This method is not allowed here', { allow: ctx.response.get('allow') || undefined });
      }
    } catch (raw) {
      const error = toKeelError(raw);
      recordFailure({ log, metrics }, error, raw, { requestId, path: ctx.path }, 'request failed');
      ctx.status = error.status;
      if (error.retryAfter !== undefined) ctx.set('retry-after', String(error.retryAfter));
      ctx.body = envelopeOf(error, requestId);
    }
  };
}
