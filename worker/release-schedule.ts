import { ScheduleAlreadyRunning, ScheduleNotFoundError, ScheduleOverlapPolicy, type Client, type ScheduleOptionsStartWorkflowAction } from '@temporalio/client';
import type { Logger } from '../config/logger';
import type { Settings } from '../config/settings';
import { releaseHealthScheduleId } from '../contracts/releases';
import type { releaseHealthWorkflow } from '../workflows';

/**
 * Keeps the Temporal Schedule that runs the release health check every
 * KEEL_HEALTH_CHECK_INTERVAL_MS: created when missing, brought in line with the settings when
 * they changed, paused when health checks are switched off. Every worker does this at start, so
 * it is idempotent; one Schedule per task queue (`temporal schedule list` shows it).
 */
export async function ensureReleaseSchedule(client: Client, settings: Settings, log: Logger): Promise<string> {
  const scheduleId = releaseHealthScheduleId(settings.temporal.taskQueue);
  const { checkIntervalMs, healthChecksEnabled } = settings.releases;
  const action: ScheduleOptionsStartWorkflowAction<typeof releaseHealthWorkflow> = {
    type: 'startWorkflow',
    workflowType: 'releaseHealthWorkflow',
    workflowId: `release-health-${settings.temporal.taskQueue}`,
    taskQueue: settings.temporal.taskQueue,
    args: [],
    // A check that cannot finish in a few intervals is stuck; the next one starts afresh.
    workflowExecutionTimeout: Math.max(5 * 60_000, checkIntervalMs * 5),
  };
  const spec = { intervals: [{ every: checkIntervalMs }] };
  // A check still running when the next is due is not doubled: the next one is skipped.
  const policies = { overlap: ScheduleOverlapPolicy.SKIP, catchupWindow: Math.max(60_000, checkIntervalMs) };
  const handle = client.schedule.getHandle(scheduleId);
  if (!healthChecksEnabled) {
    await handle.pause('KEEL_HEALTH_CHECKS_ENABLED=false').catch((error: unknown) => {
      if (!(error instanceof ScheduleNotFoundError)) throw error;
    });
    log.info({ scheduleId }, 'release health checks are off');
    return scheduleId;
  }
  try {
    await client.schedule.create({ scheduleId, spec, action, policies, state: { note: 'Keel release health check (docs/releases.md)' } });
    log.info({ scheduleId, everyMs: checkIntervalMs }, 'release health schedule created');
  } catch (error) {
    if (!(error instanceof ScheduleAlreadyRunning)) throw error;
    await handle.update((previous) => ({ ...previous, spec, action, policies: { ...previous.policies, ...policies }, state: { ...previous.state, paused: false } }));
    log.info({ scheduleId, everyMs: checkIntervalMs }, 'release health schedule up to date');
  }
  return scheduleId;
}
