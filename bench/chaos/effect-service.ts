import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * The receiving end of the chaos run's write tool, a real HTTP service on loopback: it applies each
 * Idempotency-Key once (as a payment API does) and records which action (the marker in the body)
 * each key carried, so one action reaching it under two keys is a duplicated effect.
 */
export class EffectService {
  readonly effects = new Map<string, { marker: string; requests: number }>();
  requestsWithoutKey = 0;
  port = 0;
  private readonly server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const key = req.headers['idempotency-key'];
      let marker = '?';
      try {
        marker = String((JSON.parse(Buffer.concat(chunks).toString('utf8')) as { marker?: unknown }).marker ?? '?');
      } catch {
        // counted under '?'
      }
      if (typeof key !== 'string') this.requestsWithoutKey++;
      else {
        const seen = this.effects.get(key);
        if (seen) seen.requests++;
        else this.effects.set(key, { marker, requests: 1 });
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ recorded: true, marker }));
    });
  });

  async start(): Promise<void> {
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  stop(): Promise<void> {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
