import Router from '@koa/router';
import { KeelError } from '../../contracts/errors';
import { SloQuery } from '../../contracts/runs';
import type { Settings } from '../../config/settings';
import { sloStats, type SloStats } from '../../db/runs';
import { callerOf } from '../auth';
import type { ApiDeps } from '../deps';
import { parseInput } from '../errors';

export function sloRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  // Admins see every user's runs; anyone else their own.
  router.get('/slo', async (ctx) => {
    const { window } = parseInput(SloQuery, ctx.query);
    const maxMs = deps.settings.slo.maxWindowMs;
    if (window.ms > maxMs) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: 'window', problem: `must be at most ${maxMs / 1000} s (KEEL_SLO_MAX_WINDOW_MS)` }]);
    const caller = callerOf(ctx);
    const stats = await sloStats(deps.pool, { windowMs: window.ms, overdueAfterSeconds: deps.settings.slo.tteP99Seconds, ...(caller.isAdmin ? {} : { ownerId: caller.userId }) });
    const to = new Date();
    ctx.body = {
      window: window.text,
      from: new Date(to.getTime() - window.ms).toISOString(),
      to: to.toISOString(),
      scope: caller.isAdmin ? 'all' : 'own',
      ...sloReport(stats, deps.settings.slo),
    };
  });

  return router;
}

/**
 * Over the runs submitted in the window (docs/runs.md): success rate = done / (done + error);
 * availability = share of ended runs (done, error, cancelled) and overdue queued or running ones
 * not failed by the platform (an overdue one counts as failed); time to execute = submit to
 * finish of the runs that ended done, and age so far of the overdue unfinished ones (older
 * than the p99 objective). With nothing to measure, a value is null and so is whether its
 * objective is met.
 */
export function sloReport(s: SloStats, objectives: Settings['slo']) {
  const counted = s.done + s.error + s.cancelled + s.overdue_unserved;
  const successRate = s.done + s.error > 0 ? s.done / (s.done + s.error) : null;
  const availability = counted > 0 ? (counted - s.platform_failures - s.overdue_unserved) / counted : null;
  const atMost = (value: number | null, target: number) => ({ target, value, met: value === null ? null : value <= target });
  const atLeast = (value: number | null, target: number) => ({ target, value, met: value === null ? null : value >= target });
  return {
    runs: {
      total: s.total,
      byStatus: { queued: s.queued, running: s.running, waiting_approval: s.waiting_approval, done: s.done, error: s.error, cancelled: s.cancelled },
      platformFailures: s.platform_failures,
      overdue: s.overdue,
    },
    successRate,
    availability,
    timeToExecuteSeconds: { count: s.tte_count, p50: s.tte_p50, p95: s.tte_p95, p99: s.tte_p99 },
    objectives: {
      timeToExecuteP95: atMost(s.tte_p95, objectives.tteP95Seconds),
      timeToExecuteP99: atMost(s.tte_p99, objectives.tteP99Seconds),
      successRate: atLeast(successRate, objectives.successRate),
      availability: atLeast(availability, objectives.availability),
    },
  };
}
