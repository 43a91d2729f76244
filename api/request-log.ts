import { randomUUID } from 'node:crypto';
import type { Context, Next } from 'koa';
import { ID_PATTERN } from '../contracts/ids';
import type { Logger } from '../config/logger';

/** The request's ID, set by requestLog: the caller's own when it is a plain ID (it ends up in log lines), else a new one. */
export function requestIdOf(ctx: Context): string {
  if (typeof ctx.state.requestId === 'string') return ctx.state.requestId;
  const given = ctx.get('x-request-id');
  const requestId = ID_PATTERN.test(given) ? given : randomUUID();
  ctx.state.requestId = requestId;
  ctx.set('x-request-id', requestId);
  return requestId;
}

/** One log line per request, after it is answered (the error middleware below it has set the status). */
export function requestLog(log: Logger) {
  return async (ctx: Context, next: Next) => {
    const requestId = requestIdOf(ctx);
    const started = performance.now();
    try {
      await next();
    } finally {
      // The path carries IDs only, never the query (a WebSocket token may be there) or the body.
      const sessionId = ctx.path.startsWith('/api/v1/sessions/') ? (ctx.params as Record<string, string> | undefined)?.id : undefined;
      log.info({ requestId, method: ctx.method, path: ctx.path, status: ctx.status, ms: Math.round(performance.now() - started), ...(sessionId ? { sessionId } : {}) }, 'request');
    }
  };
}
