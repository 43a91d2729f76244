import { WorkflowExecutionAlreadyStartedError, WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { DatabasePool } from 'slonik';
import { messageIdFor } from '../contracts/ids';
import { SESSION_EXPIRED_MESSAGE } from '../contracts/errors';
import { sessionWorkflowId } from '../contracts/ids';
import { runClientMessageId } from '../contracts/runs';
import { cancelTurnSignal } from '../contracts/workflow-messages';
import type { WebhookDeliveryInput } from '../contracts/webhooks';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import type { Settings } from '../config/settings';
import { appendEvent } from '../db/events';
import { incidentView, markIncidentNotified } from '../db/incidents';
import { deliverUserMessage } from '../sessions/deliver-message';
import { findSession } from '../db/sessions';
import { lockUnnotifiedIncidents } from '../db/webhooks';
import {
  claimUnfinalizedRuns,
  claimUnsentRuns,
  endQueuedRun,
  markFinalized,
  markSent,
  markSkipSignalled,
  runView,
  setMessageId,
  turnsToSkip,
  type RunRecord,
  type UnsentRun,
} from '../db/runs';
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
 * here once it starts, and runs whose message the API never sent are sent from here.
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
      ['send the messages of unsent runs', () => this.sendUnsentRuns()],
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
    const { pool, settings, metrics, log } = this.deps;
    for (const run of await claimUnfinalizedRuns(pool, settings.webhooks.outboxBatch, settings.webhooks.outboxLeaseMs)) {
      try {
        if (run.webhook_url) await this.startDelivery(`webhook-run-${run.id}`, { url: run.webhook_url, body: runBody(run), target: { kind: 'run', id: run.id }, checkAddress: true });
        // Observed by the one worker whose mark counted: each run once.
        if (!(await markFinalized(pool, run.id, run.webhook_url !== null))) continue;
        metrics.runs.inc({ status: run.status });
        metrics.runTimeToExecute.observe({ status: run.status }, ((run.finished_at ?? run.created_at) - run.created_at) / 1000);
      } catch (error) {
        // The rest of the batch goes on; this run keeps its lease and is tried again once it runs out (a back-off of KEEL_OUTBOX_LEASE_MS).
        log.error({ err: error, runId: run.id }, 'outbox: could not finalize a run');
      }
    }
  }

  /**
   * Runs whose message nobody sent (the API died after storing the run, or its send failed and
   * the client never repeated), KEEL_RUN_UNSENT_GRACE_MS after their send lease ran out.
   */
  private async sendUnsentRuns(): Promise<void> {
    const { pool, settings, log } = this.deps;
    for (const run of await claimUnsentRuns(pool, { graceMs: settings.runs.unsentGraceMs, leaseMs: settings.runs.sendLeaseMs, limit: settings.webhooks.outboxBatch })) {
      try {
        await this.sendUnsent(run);
      } catch (error) {
        // Its lease runs out and a later poll (or a repeat of the request) sends it.
        log.error({ err: error, runId: run.id }, 'outbox: could not send the message of an unsent run');
      }
    }
  }

  /**
   * Sends the run's message as the API does (stored under the same message ID, then signalled
   * with the same client message ID, which the workflow takes once), without the admission
   * checks the request passed. A run without a session never reached one: it ends error.
   */
  private async sendUnsent(run: UnsentRun): Promise<void> {
    const { pool, client, log } = this.deps;
    const end = async (code: string, message: string) => {
      await endQueuedRun(pool, appendEvent, run.id, { status: 'error', code, message });
    };
    // Its request died before making the run's session: nothing was sent, and there is nowhere to send it.
    if (run.session_id === null || run.input === null) {
      await end('SERVICE_UNAVAILABLE', 'The run could not be started; submit it again.');
      log.warn({ runId: run.id, sessionId: run.session_id }, 'outbox: ended a run that could not be sent');
      return;
    }
    const sessionId = run.session_id;
    const session = await findSession(pool, sessionId);
    if (!session || session.status === 'deleted') return end('SESSION_NOT_FOUND', 'No such session');
    if (session.status === 'expired') return end('SESSION_EXPIRED', SESSION_EXPIRED_MESSAGE);
    const clientMessageId = runClientMessageId(run.id);
    const messageId = run.message_id ?? (await setMessageId(pool, run.id, messageIdFor(sessionId, clientMessageId))).message_id!;
    try {
      await deliverUserMessage(pool, client, { sessionId, messageId, content: run.input, clientMessageId, requestId: run.id, ...(run.budget ? { budget: run.budget } : {}) });
    } catch (error) {
      // The session's workflow has ended: it takes no more messages.
      if (!(error instanceof WorkflowNotFoundError)) throw error;
      return end('SESSION_EXPIRED', SESSION_EXPIRED_MESSAGE);
    }
    await markSent(pool, run.id);
    log.info({ runId: run.id, sessionId, messageId }, 'outbox: sent the message of a run the API did not send');
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
