import Router from '@koa/router';
import { AnalyticsQuery, type AnalyticsReport } from '../../contracts/conversations';
import { analytics } from '../../db/analytics';
import { callerOf } from '../auth';
import type { ApiDeps } from '../deps';
import { parseInput } from '../errors';

/** GET /api/v1/analytics?range=7d (docs/replay-analytics.md): an admin sees every session, anyone else their own. */
export function analyticsRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.get('/analytics', async (ctx) => {
    const { range } = parseInput(AnalyticsQuery, ctx.query);
    const caller = callerOf(ctx);
    const figures = await analytics(deps.pool, { days: range.days, ownerId: caller.isAdmin ? null : caller.userId });
    const body: AnalyticsReport = { range: range.text, scope: caller.isAdmin ? 'all' : 'own', ...figures };
    ctx.body = body;
  });

  return router;
}
