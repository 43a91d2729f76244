import { ActivityFailure, proxyActivities } from '@temporalio/workflow';
import type { WebhookDeliveryInput, WebhookDeliveryResult } from '../contracts/webhooks';
import type { NotifyActivities } from '../notify/deliver-webhook';
import { FailureType } from '../contracts/failure-types';
import { WebhookFailureType } from '../contracts/webhook-failures';

/** Extra time an attempt gets beyond its POST time-out, to record its outcome. */
const RECORD_MARGIN_MS = 5_000;
/** One write of the delivery's end. */
const SETTLE_TIMEOUT_MS = 10_000;

/**
 * Delivers one webhook (a run's end, an incident): one activity, retried with backoff by
 * Temporal until the receiver takes it, refuses it, or the attempts run out. Started by the
 * worker's outbox with a workflow ID per run or incident, so a webhook is never sent twice by
 * two deliveries. Every attempt's outcome is recorded by the activity; a delivery whose
 * attempts are over undelivered is settled `failed` here too, since its last attempt may have
 * died (timed out, its worker killed) or never started (bad input) without recording it.
 */
export async function webhookDeliveryWorkflow(input: WebhookDeliveryInput): Promise<WebhookDeliveryResult> {
  const { deliverWebhook } = proxyActivities<NotifyActivities>({
    startToCloseTimeout: input.timeoutMs + RECORD_MARGIN_MS,
    retry: {
      maximumAttempts: input.retry.maximumAttempts,
      initialInterval: input.retry.initialIntervalMs,
      maximumInterval: input.retry.maximumIntervalMs,
      backoffCoefficient: 2,
      nonRetryableErrorTypes: [WebhookFailureType.refused, FailureType.persistenceInvalid, FailureType.activityInputInvalid],
    },
  });
  const { settleUndeliveredWebhook } = proxyActivities<NotifyActivities>({
    startToCloseTimeout: SETTLE_TIMEOUT_MS,
    retry: { nonRetryableErrorTypes: [FailureType.persistenceInvalid, FailureType.activityInputInvalid] },
  });
  const { retry, ...delivery } = input;
  try {
    const { httpStatus } = await deliverWebhook({ ...delivery, maxAttempts: retry.maximumAttempts });
    return { delivered: true, httpStatus };
  } catch (error) {
    // A delivery that could not be made ends here, not as a failed workflow.
    if (!(error instanceof ActivityFailure)) throw error;
    await settleUndeliveredWebhook({ deliveryId: input.deliveryId, target: input.target });
    return { delivered: false };
  }
}
