import http from 'node:http';
import https from 'node:https';
import type { LookupFunction } from 'node:net';
import { WEBHOOK_HEADERS } from '../contracts/webhooks';
import { resolveAndCheck, type PinnedTarget } from '../tools/http-request';
import { ToolRefusedError } from '../tools';
import { webhookSignature } from './signature';

/**
 * What every webhook Keel sends shares (run and incident notifications, escalations): the
 * address rules, the signed headers and one POST.
 */

/** Receiver answers worth another attempt: it may be down, overloaded or restarting. */
export const RETRYABLE_STATUS = (status: number) => status >= 500 || status === 408 || status === 425 || status === 429;
/** Bytes of a receiver's answer read (and dropped) before the connection is closed. */
const MAX_RESPONSE_BYTES = 64 * 1024;

/** A delivery that no further attempt can make: the address is refused, or the receiver said no (4xx). */
export class WebhookRefused extends Error {}

/**
 * The address to pin the POST to, after the rules of http_request (no loopback, private or
 * link-local address unless `allowHosts` names the host). A refusal is a WebhookRefused.
 */
export async function checkWebhookAddress(url: URL, allowHosts: readonly string[]): Promise<PinnedTarget> {
  try {
    return await resolveAndCheck(url, allowHosts);
  } catch (error) {
    throw error instanceof ToolRefusedError ? new WebhookRefused(error.message) : error;
  }
}

/** Content type, user agent and the X-Keel-Signature / X-Keel-Timestamp pair over `body` (notify/signature.ts). */
export function signedHeaders(secret: string, body: string): Record<string, string> {
  const timestamp = Math.floor(Date.now() / 1000);
  return {
    'content-type': 'application/json',
    'user-agent': 'Keel-Webhook/1',
    [WEBHOOK_HEADERS.signature]: webhookSignature(secret, timestamp, body),
    [WEBHOOK_HEADERS.timestamp]: String(timestamp),
  };
}

/** A lookup that answers with the checked address, so a second DNS answer (rebinding) is never used. */
function pinnedLookup(target: PinnedTarget): LookupFunction {
  return (_hostname, options, callback) => {
    if (options.all) callback(null, [{ address: target.address, family: target.family }]);
    else callback(null, target.address, target.family);
  };
}

/**
 * POSTs `body` and resolves with the status once the answer is read (up to MAX_RESPONSE_BYTES).
 * Redirects are not followed. `signal` (a cancel) ends the request as the time-out does.
 */
export function postWebhook(url: URL, body: string, headers: Record<string, string>, timeoutMs: number, pinned: PinnedTarget | undefined, signal?: AbortSignal): Promise<number> {
  return new Promise((resolve, reject) => {
    const client = url.protocol === 'https:' ? https : http;
    const timeout = AbortSignal.timeout(timeoutMs);
    const req = client.request(
      url,
      { method: 'POST', headers: { ...headers, 'content-length': String(Buffer.byteLength(body)) }, signal: signal ? AbortSignal.any([timeout, signal]) : timeout, ...(pinned ? { lookup: pinnedLookup(pinned) } : {}) },
      (res) => {
        let read = 0;
        res.on('data', (chunk: Buffer) => {
          read += chunk.length;
          if (read > MAX_RESPONSE_BYTES) res.destroy();
        });
        res.on('close', () => resolve(res.statusCode ?? 0));
        res.on('error', () => resolve(res.statusCode ?? 0));
      },
    );
    req.on('error', reject);
    req.end(body);
  });
}
