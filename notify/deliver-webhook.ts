import { Context } from '@temporalio/activity';
import { ApplicationFailure } from '@temporalio/common';
import type { DatabasePool } from 'slonik';
import { DeliverWebhookInput, SettleWebhookInput, WEBHOOK_HEADERS, type WebhookTarget } from '../contracts/webhooks';
import { WebhookFailureType } from '../contracts/webhook-failures';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import { classifyingPersistenceErrors, parseActivityInput } from '../activities/persistence-errors';
import { markIncidentNotified } from '../db/incidents';
import { setWebhookStatus } from '../db/runs';
import { recordDeliveryAttempt, settleUndelivered, type DeliveryAttempt } from '../db/webhooks';
import { checkWebhookAddress, postWebhook, RETRYABLE_STATUS, signedHeaders, WebhookRefused } from './post-webhook';

export interface NotifyDeps {
  pool: DatabasePool;
  /** KEEL_WEBHOOK_SECRET; without it nothing is sent (an unsigned webhook cannot be trusted). */
  secret: string | undefined;
  /** KEEL_WEBHOOK_ALLOW_HOSTS: private or loopback hosts a caller's webhook URL may still name. */
  allowHosts: readonly string[];
  metrics: Metrics;
  log: Logger;
}

/**
 * The webhook delivery workflow's activities. deliverWebhook: one signed POST, its outcome
 * recorded in webhook_deliveries. A 2xx delivers; 5xx, 408, 425, 429 and network failures are retried by
 * Temporal (the workflow's retry policy); any other answer, a redirect included, is final.
 */
export function createNotifyActivities(deps: NotifyDeps) {
  async function deliverWebhook(raw: DeliverWebhookInput): Promise<{ httpStatus: number }> {
    const input = parseActivityInput(DeliverWebhookInput, raw);
    const attempt = Context.current().info.attempt;
    const last = attempt >= input.maxAttempts;
    const startedAt = performance.now();
    const record = async (outcome: DeliveryAttempt['outcome'], extra: { httpStatus?: number; error?: string }) => {
      await recordDeliveryAttempt(deps.pool, { deliveryId: input.deliveryId, target: input.target, attempt, outcome, durationMs: performance.now() - startedAt, ...extra });
      deps.metrics.webhookDeliveries.inc({ kind: input.target.kind, outcome });
    };
    const fail = async (outcome: 'failed' | 'refused', extra: { httpStatus?: number; error: string }): Promise<never> => {
      await record(outcome, extra);
      const final = outcome === 'refused' || last;
      if (final) await settle(deps.pool, input.target, 'failed');
      deps.log.warn({ deliveryId: input.deliveryId, attempt, outcome, final, ...extra }, 'webhook not delivered');
      if (outcome === 'refused') throw ApplicationFailure.nonRetryable(extra.error, WebhookFailureType.refused);
      throw ApplicationFailure.retryable(extra.error, WebhookFailureType.failed);
    };

    let status: number;
    try {
      if (!deps.secret) throw new WebhookRefused('no webhook secret is configured (KEEL_WEBHOOK_SECRET)');
      const url = new URL(input.url);
      const pinned = input.checkAddress ? await checkWebhookAddress(url, deps.allowHosts) : undefined;
      status = await postWebhook(url, input.body, {
        ...signedHeaders(deps.secret, input.body),
        [WEBHOOK_HEADERS.delivery]: input.deliveryId,
        [WEBHOOK_HEADERS.attempt]: String(attempt),
      }, input.timeoutMs, pinned);
    } catch (error) {
      return fail(error instanceof WebhookRefused ? 'refused' : 'failed', { error: (error as Error).message });
    }
    if (status >= 200 && status < 300) {
      await record('delivered', { httpStatus: status });
      await settle(deps.pool, input.target, 'delivered');
      deps.log.info({ deliveryId: input.deliveryId, attempt, httpStatus: status }, 'webhook delivered');
      return { httpStatus: status };
    }
    return fail(RETRYABLE_STATUS(status) ? 'failed' : 'refused', { httpStatus: status, error: `the receiver answered ${status}` });
  }

  /** Run by the workflow once the attempts are over undelivered: also when the last one died without recording its end. */
  async function settleUndeliveredWebhook(raw: SettleWebhookInput): Promise<void> {
    const input = parseActivityInput(SettleWebhookInput, raw);
    await settleUndelivered(deps.pool, input.target);
    deps.log.warn({ deliveryId: input.deliveryId, target: input.target }, 'webhook delivery ended undelivered');
  }

  return classifyingPersistenceErrors({ deliverWebhook, settleUndeliveredWebhook });
}

export type NotifyActivities = ReturnType<typeof createNotifyActivities>;

async function settle(pool: DatabasePool, target: WebhookTarget, outcome: 'delivered' | 'failed'): Promise<void> {
  if (target.kind === 'run') await setWebhookStatus(pool, target.id, outcome);
  else await markIncidentNotified(pool, target.id, outcome);
}
