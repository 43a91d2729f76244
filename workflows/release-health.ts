import { log, proxyActivities, sleep } from '@temporalio/workflow';
import type { ReleaseActivities } from '../activities';
import type { AlertActivities, AlertSummary } from '../activities/alerts';
import type { ReleaseTarget, ReleaseWatchInput, RollbackOutcome } from '../contracts/releases';
import { FailureType } from '../contracts/failure-types';
import { workflowNow } from './clock';

const reads = proxyActivities<Pick<ReleaseActivities, 'listReleaseTargets' | 'stillReleased'>>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '500 milliseconds', maximumInterval: '10 seconds', maximumAttempts: 5, nonRetryableErrorTypes: [FailureType.activityInputInvalid] },
});
// Probes call the model: a check may take as long as its probes, and heartbeats while they run.
const evaluate = proxyActivities<Pick<ReleaseActivities, 'evaluateRelease'>>({
  // Heartbeats bound a stuck check; this only bounds the longest legitimate one (20 probes, retried, 30 s each).
  startToCloseTimeout: '30 minutes',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '1 second', maximumInterval: '10 seconds', maximumAttempts: 3, nonRetryableErrorTypes: [FailureType.activityInputInvalid] },
});
const alerts = proxyActivities<AlertActivities>({
  startToCloseTimeout: '30 seconds',
  retry: { initialInterval: '1 second', maximumInterval: '10 seconds', maximumAttempts: 3, nonRetryableErrorTypes: [FailureType.persistenceInvalid] },
});
// A rollback may probe the version it goes back to and signal many sessions; it heartbeats meanwhile.
const act = proxyActivities<Pick<ReleaseActivities, 'rollbackRelease'>>({
  startToCloseTimeout: '10 minutes',
  heartbeatTimeout: '30 seconds',
  retry: { initialInterval: '500 milliseconds', maximumInterval: '10 seconds', nonRetryableErrorTypes: [FailureType.activityInputInvalid, FailureType.persistenceInvalid] },
});

export interface ReleaseCheckResult {
  target: ReleaseTarget;
  /** Null when the check itself failed (its error says why); the other versions are checked all the same. */
  healthy: boolean | null;
  rollback?: RollbackOutcome;
  error?: string;
}

/** Checks one version and rolls it back when it fails: the decision is the evaluation's verdicts. */
async function checkAndAct(target: ReleaseTarget, trigger: 'schedule' | 'watch'): Promise<ReleaseCheckResult> {
  const evaluation = await evaluate.evaluateRelease({ target, trigger });
  if (evaluation.healthy) return { target, healthy: true };
  const rollback = await act.rollbackRelease({ evaluation, decidedAt: new Date(workflowNow()).toISOString() });
  return { target, healthy: false, rollback };
}

/**
 * Started by the health Schedule (every KEEL_HEALTH_CHECK_INTERVAL_MS): checks every active and
 * canary version, each on its own, and rolls back the ones that fail; alongside, raises the
 * operational alerts (stale worker heartbeats, stuck turns; docs/operations.md).
 */
export async function releaseHealthWorkflow(): Promise<{ releases: ReleaseCheckResult[]; alerts: AlertCounts | null }> {
  // A failing alert check must not keep the releases from being checked, nor the other way round.
  const found = alerts.checkOperationalAlerts().then(
    (a): AlertCounts => ({ newIncidents: a.newIncidents, staleWorkers: a.staleWorkers.length, stuckTurns: a.stuckTurns.length }),
    (error: unknown) => {
      log.error('operational alert check failed', { error: (error as Error).message });
      return null;
    },
  );
  const targets = await reads.listReleaseTargets();
  const releases = await Promise.all(
    targets.map((t) =>
      checkAndAct(t, 'schedule').catch((error: unknown): ReleaseCheckResult => {
        log.error('release check failed', { ...t, error: (error as Error).message });
        return { target: t, healthy: null, error: (error as Error).message };
      }),
    ),
  );
  // Counts only: the result stays small in history whatever the alerts hold.
  return { releases, alerts: await found };
}

type AlertCounts = Pick<AlertSummary, 'newIncidents'> & { staleWorkers: number; stuckTurns: number };

/**
 * Follows an activation: checks the new version at once and then every `intervalMs` for the
 * probation period, and ends early when it is rolled back or an operator replaces it.
 */
export async function releaseWatchWorkflow(input: ReleaseWatchInput): Promise<{ outcome: 'passed' | 'rolled_back' | 'unhealthy' | 'superseded'; checks: number }> {
  const until = workflowNow() + input.probationMs;
  let checks = 0;
  for (;;) {
    if (!(await reads.stillReleased(input.target))) return { outcome: 'superseded', checks };
    const result = await checkAndAct(input.target, 'watch');
    checks += 1;
    if (result.rollback?.rolledBack) return { outcome: 'rolled_back', checks };
    // Failing with nothing to roll back to: the incident is raised; the schedule keeps checking.
    if (result.rollback) return { outcome: 'unhealthy', checks };
    if (workflowNow() + input.intervalMs > until) return { outcome: 'passed', checks };
    await sleep(input.intervalMs);
  }
}
