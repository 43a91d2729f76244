import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { DatabasePool } from 'slonik';
import { sessionWorkflowId } from '../contracts/ids';
import { cancelTurnSignal } from '../contracts/workflow-messages';
import type { WebhookDeliveryInput } from '../contracts/webhooks';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import type { Settings } from '../config/settings';
import { incidentView, markIncidentNotified } from '../db/incidents';
import { lockUnnotifiedIncidents } from '../db/webhooks';
import { claimUnfinalizedRuns, markFinalized, markSkipSignalled, runView, turnsToSkip, type RunRecord } from '../db/runs';
import type { webhookDeliveryWorkflow } from '../workflows';

export interface OutboxDeps {
  pool: DatabasePool;
  client: Client;
  settings: Settings;
  metrics: Metrics;
  log: Logger;
}

/**
 * The worker's transactional outbox, polled every KEEL_OUTBOX_POLL_MS. A run's end is written
 * with its last event; here its webhook delivery is started (workflow `webhook-run-<runId>`,
 * which Temporal never starts twice), then it is marked finalized and its SLO metrics observed,
 * once. A worker claims runs for KEEL_OUTBOX_LEASE_MS; one that dies before marking them leaves
 * them to the next claim, whose start of the same workflow ID is a no-op. Incidents are delivered
 * the same way (under their row locks). Runs cancelled while queued have their turn cancelled
 * here once it starts.
 */
export class Outbox {
  private timer: NodeJS.Timeout | undefined;
  private tick: Promise<void> = Promise.resolve();
  private stopped = false;

  constructor(private readonly deps: OutboxDeps) {}

  start(): void {
    this.schedule();
  }

  /** Stops polling; resolves once the tick in progress has finished. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.tick;
  }

  private schedule(): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.tick = this.pollOnce().finally(() => this.schedule());
    }, this.deps.settings.webhooks.outboxPollMs);
  }

  /** One pass over everything the outbox owns; a failure is logged and retried at the next poll. */
  async pollOnce(): Promise<void> {
    for (const [what, step] of [
      ['finalize runs', () => this.finalizeRuns()],
      ['cancel the turns of cancelled runs', () => this.skipCancelledTurns()],
      ['notify incidents', () => this.notifyIncidents()],
    ] as const) {
      try {
        await step();
      } catch (error) {
        this.deps.log.error({ err: error }, `outbox: could not ${what}`);
      }
    }
  }

  private async finalizeRuns(): Promise<void> {
    const { pool, settings, metrics } = this.deps;
    for (const run of await claimUnfinalizedRuns(pool, settings.webhooks.outboxBatch, settings.webhooks.outboxLeaseMs)) {
      if (run.webhook_url) await this.startDelivery(`webhook-run-${run.id}`, { url: run.webhook_url, body: runBody(run), target: { kind: 'run', id: run.id }, checkAddress: true });
      // Observed by the one worker whose mark counted: each run once.
      if (!(await markFinalized(pool, run.id, run.webhook_url !== null))) continue;
      metrics.runs.inc({ status: run.status });
      metrics.runTimeToExecute.observe({ status: run.status }, ((run.finished_at ?? run.created_at) - run.created_at) / 1000);
    }
  }

  private async skipCancelledTurns(): Promise<void> {
    const { pool, client, settings, log } = this.deps;
    for (const run of await turnsToSkip(pool, settings.webhooks.outboxBatch)) {
      try {
        await client.workflow.getHandle(sessionWorkflowId(run.session_id)).signal(cancelTurnSignal, { turn: run.turn, requestedBy: run.cancelled_by ?? 'run-cancel' });
        log.info({ runId: run.id, sessionId: run.session_id, turn: run.turn }, 'outbox: cancelled the turn of a run cancelled while queued');
      } catch (error) {
        // The session ended: its turn is gone with it.
        if (!(error instanceof WorkflowNotFoundError)) throw error;
      }
      await markSkipSignalled(pool, run.id);
    }
  }

  private async notifyIncidents(): Promise<void> {
    const { pool, settings } = this.deps;
    const url = settings.webhooks.notifyUrl;
    if (!url) return;
    await pool.transaction(async (tx) => {
      for (const incident of await lockUnnotifiedIncidents(tx, settings.webhooks.outboxBatch)) {
        const body = JSON.stringify({ type: 'incident', incident: incidentView(incident) });
        await this.startDelivery(`webhook-incident-${incident.id}`, { url, body, target: { kind: 'incident', id: incident.id }, checkAddress: false });
        await markIncidentNotified(tx, incident.id, 'pending');
      }
    });
  }

  /** Starts a delivery workflow; one already started (or finished) under this ID counts as started. */
  private async startDelivery(workflowId: string, delivery: Omit<WebhookDeliveryInput, 'deliveryId' | 'retry' | 'timeoutMs'>): Promise<void> {
    const { client, settings } = this.deps;
    const input: WebhookDeliveryInput = { ...delivery, deliveryId: workflowId, timeoutMs: settings.webhooks.timeoutMs, retry: settings.webhooks.retry };
    try {
      await client.workflow.start<typeof webhookDeliveryWorkflow>('webhookDeliveryWorkflow', {
        taskQueue: settings.temporal.taskQueue,
        workflowId,
        args: [input],
        workflowIdReusePolicy: 'REJECT_DUPLICATE',
      });
    } catch (error) {
      if (!(error instanceof WorkflowExecutionAlreadyStartedError)) throw error;
    }
  }
}

/** The body of a run's webhook: the run as GET /api/v1/runs/:id shows it. */
function runBody(run: RunRecord): string {
  const view = runView(run);
  return JSON.stringify({ type: 'run', run: { ...view, webhook: view.webhook && { ...view.webhook, status: 'pending' } } });
}
