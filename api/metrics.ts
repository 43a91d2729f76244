import Router from '@koa/router';
import type { Context, Next } from 'koa';
import { sql, type DatabasePool } from 'slonik';
import { z } from 'zod';
import type { Metrics } from '../config/metrics';
import type { ApiDeps } from './deps';

export function activeSessionCount(pool: DatabasePool) {
  return () => pool.oneFirst(sql.type(z.object({ n: z.number() }))`SELECT count(*)::int AS n FROM sessions WHERE status = 'active'`).catch(() => null);
}

/** Times every request by its route pattern (never the raw path: IDs would explode the label set). */
export function httpMetrics(metrics: Metrics) {
  return async (ctx: Context, next: Next) => {
    const end = metrics.httpDuration.startTimer();
    try {
      await next();
    } finally {
      end({ method: ctx.method, route: (ctx as Context & { _matchedRoute?: string })._matchedRoute ?? 'unmatched', status: String(ctx.status) });
    }
  };
}

export function metricsRoutes(deps: ApiDeps): Router {
  const router = new Router();
  router.get('/metrics', async (ctx) => {
    ctx.set('content-type', deps.metrics.registry.contentType);
    ctx.body = await deps.metrics.registry.metrics();
  });
  return router;
}
