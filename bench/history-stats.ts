import type { Client } from '@temporalio/client';
import { temporal } from '@temporalio/proto';

const { EventType } = temporal.api.enums.v1;

/** What a turn costs in Temporal, counted from the histories of the workflows that ran it. */
export interface HistoryCounts {
  events: number;
  workflowTasks: number;
  activities: number;
  localActivities: number;
  searchAttributeUpserts: number;
  timers: number;
  signals: number;
  updates: number;
}

/** Sums the histories of `workflowIds` (each run of each, following continue-as-new) and divides by `turns`. */
export async function historyPerTurn(client: Client, workflowIds: string[], turns: number): Promise<HistoryCounts> {
  const total: HistoryCounts = { events: 0, workflowTasks: 0, activities: 0, localActivities: 0, searchAttributeUpserts: 0, timers: 0, signals: 0, updates: 0 };
  for (const workflowId of workflowIds) {
    // Every run of the workflow: the latest first, then each one it continued from.
    let runId: string | undefined;
    for (;;) {
      const history = await client.workflow.getHandle(workflowId, runId).fetchHistory();
      for (const e of history.events ?? []) {
        total.events++;
        switch (e.eventType) {
          case EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED: total.workflowTasks++; break;
          case EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED: total.activities++; break;
          // Patch markers (core_patch) are markers too; only local activities count here.
          case EventType.EVENT_TYPE_MARKER_RECORDED: if (e.markerRecordedEventAttributes?.markerName === 'core_local_activity') total.localActivities++; break;
          case EventType.EVENT_TYPE_UPSERT_WORKFLOW_SEARCH_ATTRIBUTES: total.searchAttributeUpserts++; break;
          case EventType.EVENT_TYPE_TIMER_STARTED: total.timers++; break;
          case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_SIGNALED: total.signals++; break;
          case EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED: total.updates++; break;
          default: break;
        }
      }
      const started = history.events?.[0]?.workflowExecutionStartedEventAttributes;
      if (!started?.continuedExecutionRunId) break;
      runId = started.continuedExecutionRunId;
    }
  }
  return Object.fromEntries(Object.entries(total).map(([k, v]) => [k, Math.round((v / turns) * 100) / 100])) as unknown as HistoryCounts;
}
