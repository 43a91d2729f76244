import Router from '@koa/router';
import { KeelError } from '../../contracts/errors';
import { databaseNow, recentWorkers, type WorkerRow } from '../../db/workers';
import { callerOf } from '../auth';
import type { ApiDeps } from '../deps';

function workerView(w: WorkerRow, now: number, staleMs: number) {
  const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
  const ageMs = Math.max(0, now - w.last_heartbeat_at);
  return {
    identity: w.identity,
    buildVersion: w.build_version,
    taskQueue: w.task_queue,
    turnsInFlight: w.turns_in_flight,
    turnsCompleted: w.turns_completed,
    startedAt: iso(w.started_at),
    lastHeartbeatAt: iso(w.last_heartbeat_at),
    stoppedAt: iso(w.stopped_at),
    ageMs,
    // The alert's rule (activities/alerts.ts): a worker that stopped cleanly is never stale.
    stale: w.stopped_at === null && ageMs > staleMs,
  };
}

/** The worker fleet from its heartbeats (docs/operations.md); admin tokens only. */
export function workerRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.get('/workers', async (ctx) => {
    if (!callerOf(ctx).isAdmin) throw new KeelError('FORBIDDEN', 'Listing workers needs an admin token');
    const { workersWindowMs, heartbeatStaleMs } = deps.settings.operations;
    // The database clock stamped the heartbeats: ages are measured on it too.
    const now = await databaseNow(deps.pool);
    const rows = await recentWorkers(deps.pool, { now, windowMs: workersWindowMs });
    ctx.body = { workers: rows.map((w) => workerView(w, now.getTime(), heartbeatStaleMs)), windowMs: workersWindowMs, staleAfterMs: heartbeatStaleMs };
  });

  return router;
}
