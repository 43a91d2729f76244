import { createHmac } from 'node:crypto';

/**
 * The X-Keel-Signature of a webhook: `sha256=<hex HMAC-SHA256 over "<timestamp>.<body>">`, keyed
 * with KEEL_WEBHOOK_SECRET. The timestamp (X-Keel-Timestamp, Unix seconds) is signed with the
 * body, so a receiver that refuses old timestamps cannot be sent a captured request again later.
 */
export function webhookSignature(secret: string, timestamp: number, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(`${timestamp}.${body}`).digest('hex')}`;
}
