import { randomUUID } from 'node:crypto';
import type { Context, Next } from 'koa';
import { z } from 'zod';
import { describeIssues, KeelError, type ErrorEnvelope } from '../contracts/errors';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';

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
    return new KeelError('VALIDATION_ERROR', 'Unsupported request encoding');
  }
  return new KeelError('INTERNAL_ERROR', 'Internal error', undefined, { cause: error });
}

export function envelopeOf(error: KeelError, requestId?: string): ErrorEnvelope {
  return { error: error.toBody(requestId) };
}

export function errorMiddleware(log: Logger, metrics: Metrics) {
  return async (ctx: Context, next: Next) => {
    const requestId = ctx.get('x-request-id') || randomUUID();
    ctx.state.requestId = requestId;
    ctx.set('x-request-id', requestId);
    try {
      await next();
      if (ctx.status === 404 && ctx.body === undefined) throw new KeelError('NOT_FOUND', 'No such route');
    } catch (raw) {
      const error = toKeelError(raw);
      metrics.errors.inc({ code: error.code });
      if (error.code === 'INTERNAL_ERROR' || error.code === 'SERVICE_UNAVAILABLE') {
        log.error({ err: error.cause ?? raw, requestId, path: ctx.path }, 'request failed');
      }
      ctx.status = error.status;
      ctx.body = envelopeOf(error, requestId);
    }
  };
}
