/**
 * Failure types of the deliverWebhook activity (notify/deliver-webhook.ts), which the delivery
 * workflow branches on. No zod here: the workflow bundle imports this module.
 */
export const WebhookFailureType = {
  /** The receiver answered 5xx, 408, 425 or 429, or could not be reached: another attempt may succeed. */
  failed: 'WEBHOOK_DELIVERY_FAILED',
  /** The address is refused or the receiver said no (another 4xx, a redirect): no attempt can succeed. */
  refused: 'WEBHOOK_REFUSED',
} as const;
