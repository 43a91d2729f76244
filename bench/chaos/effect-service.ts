import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * The receiving end of the chaos run's effects, a real HTTP service on loopback:
 * - `POST /actions`, the write tool's target: it applies each Idempotency-Key once (as a payment
 *   API does) and records which action (the marker in the body) each key carried, so one action
 *   reaching it under two keys is a duplicated effect;
 * - `POST /hooks`, the runs' webhook: it checks each signature and timestamp and counts the attempts of each
 *   delivery (X-Keel-Delivery) and the run status it carried.
 * It can hold the answer to the next write (`holdNextWrite`), so that a worker can be killed
 * after its request has reached the service and before the receipt has reached the worker.
 */

/** A webhook older (or newer) than this is refused, as docs/runs.md tells receivers to. */
const WEBHOOK_TOLERANCE_S = 300;

export interface HeldWrite {
  key: string;
  /** The sender's side of the connection: which process sent it. */
  remotePort: number;
  /** Answers the held request (if its connection still stands); true when the answer was written. */
  release: () => Promise<boolean>;
}

export interface WebhookDelivery {
  runId: string;
  attempts: number;
  /** The run status of each attempt, in order. */
  statuses: string[];
  badSignatures: number;
}

export class EffectService {
  readonly effects = new Map<string, { marker: string; requests: number }>();
  readonly deliveries = new Map<string, WebhookDelivery>();
  requestsWithoutKey = 0;
  port = 0;
  private holder: ((held: HeldWrite) => void) | undefined;
  private readonly server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      if (req.url === '/hooks') this.hook(req, res, body);
      else this.action(req, res, body);
    });
  });

  constructor(private readonly webhookSecret: string) {}

  private action(req: IncomingMessage, res: ServerResponse, body: string): void {
    const key = req.headers['idempotency-key'];
    let marker = '?';
    try {
      marker = String((JSON.parse(body) as { marker?: unknown }).marker ?? '?');
    } catch {
      // counted under '?'
    }
    const answer = () => res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ recorded: true, marker }));
    if (typeof key !== 'string') {
      this.requestsWithoutKey++;
      answer();
      return;
    }
    const seen = this.effects.get(key);
    if (seen) seen.requests++;
    else this.effects.set(key, { marker, requests: 1 });
    const holder = this.holder;
    if (!holder) {
      answer();
      return;
    }
    this.holder = undefined;
    holder({
      key,
      remotePort: req.socket.remotePort ?? 0,
      release: async () => {
        if (req.socket.destroyed) return false;
        answer();
        return new Promise<boolean>((resolve) => res.once('finish', () => resolve(true)).once('close', () => resolve(res.writableFinished)));
      },
    });
  }

  private hook(req: IncomingMessage, res: ServerResponse, body: string): void {
    const deliveryId = String(req.headers['x-keel-delivery'] ?? '?');
    const timestamp = String(req.headers['x-keel-timestamp'] ?? '');
    const expected = Buffer.from(`sha256=${createHmac('sha256', this.webhookSecret).update(`${timestamp}.${body}`).digest('hex')}`);
    const given = Buffer.from(String(req.headers['x-keel-signature'] ?? ''));
    const fresh = Math.abs(Date.now() / 1000 - Number(timestamp)) <= WEBHOOK_TOLERANCE_S;
    const signed = fresh && expected.length === given.length && timingSafeEqual(expected, given);
    let run: { id?: string; status?: string } = {};
    try {
      run = (JSON.parse(body) as { run?: typeof run }).run ?? {};
    } catch {
      // recorded with an unknown run
    }
    const delivery = this.deliveries.get(deliveryId) ?? { runId: String(run.id ?? '?'), attempts: 0, statuses: [], badSignatures: 0 };
    delivery.attempts++;
    delivery.statuses.push(String(run.status ?? '?'));
    if (!signed) delivery.badSignatures++;
    this.deliveries.set(deliveryId, delivery);
    res.writeHead(signed ? 204 : 401).end();
  }

  /** The next keyed write is recorded and its answer held; resolves with it, or undefined after `timeoutMs`. */
  holdNextWrite(timeoutMs: number): Promise<HeldWrite | undefined> {
    return new Promise((resolve) => {
      const holder = (held: HeldWrite) => {
        clearTimeout(timer);
        resolve(held);
      };
      const timer = setTimeout(() => {
        if (this.holder === holder) this.holder = undefined;
        resolve(undefined);
      }, timeoutMs);
      this.holder = holder;
    });
  }

  /** The next write is answered at once again (a hold nobody waits for any more). */
  cancelHold(): void {
    this.holder = undefined;
  }

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
