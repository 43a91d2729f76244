import { z } from 'zod';

/**
 * The webhook delivery workflow and its one activity (workflows/webhook-delivery.ts,
 * notify/deliver-webhook.ts). The workflow imports these as types only, so its bundle carries
 * no zod.
 */

export const WebhookTarget = z.object({ kind: z.enum(['run', 'incident']), id: z.string().min(1) });
export type WebhookTarget = z.infer<typeof WebhookTarget>;

/** One POST: the body is fixed when the delivery starts, so every attempt sends the same bytes. */
export const DeliverWebhookInput = z.object({
  /** The delivery workflow's ID; sent as X-Keel-Delivery, so a receiver can drop a repeat. */
  deliveryId: z.string().min(1),
  url: z.string().url(),
  body: z.string(),
  target: WebhookTarget,
  /** Refuse private and loopback addresses unless allow-listed (caller-given URLs; not the operator's own). */
  checkAddress: z.boolean(),
  /** The attempt that is the last: it records the delivery as failed for good. */
  maxAttempts: z.number().int().positive(),
  timeoutMs: z.number().int().positive(),
});
export type DeliverWebhookInput = z.infer<typeof DeliverWebhookInput>;

/** The delivery's end when its last attempt could not record one (timed out, its worker died, bad input). */
export const SettleWebhookInput = DeliverWebhookInput.pick({ deliveryId: true, target: true });
export type SettleWebhookInput = z.infer<typeof SettleWebhookInput>;

export const WebhookRetry = z.object({
  maximumAttempts: z.number().int().positive(),
  initialIntervalMs: z.number().int().positive(),
  maximumIntervalMs: z.number().int().positive(),
});
export type WebhookRetry = z.infer<typeof WebhookRetry>;

export type WebhookDeliveryInput = Omit<DeliverWebhookInput, 'maxAttempts'> & { retry: WebhookRetry };

export interface WebhookDeliveryResult {
  delivered: boolean;
  /** The receiver's answer to the attempt that counted, when there was one. */
  httpStatus?: number;
}

export const WEBHOOK_HEADERS = {
  signature: 'x-keel-signature',
  timestamp: 'x-keel-timestamp',
  delivery: 'x-keel-delivery',
  attempt: 'x-keel-attempt',
} as const;
