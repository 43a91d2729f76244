import WebSocket from 'ws';
import { wallClockMs } from './bare-activities';

/** One session's socket: only what the bench needs (when the first delta and the end of each turn came). */
export class LeanSocket {
  /** First arrival of each frame type since the turn began. */
  private seen = new Map<string, number>();
  private refusal: Error | undefined;
  private wake: (() => void) | undefined;
  constructor(private readonly ws: WebSocket) {
    ws.on('message', (raw) => {
      const frame = JSON.parse(raw.toString()) as { type: string; data?: { code?: string; message?: string } };
      if (frame.type === 'error') this.refusal = new Error(`refused with ${frame.data?.code}: ${frame.data?.message} (raise KEEL_RATE_MESSAGES_PER_SESSION or --think)`);
      if (!this.seen.has(frame.type)) this.seen.set(frame.type, wallClockMs());
      this.wake?.();
    });
  }

  static async open(url: string): Promise<LeanSocket> {
    const ws = new WebSocket(url);
    const socket = new LeanSocket(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('message', () => resolve()); // `connected`
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
    return socket;
  }

  private async arrival(type: string, deadline: number): Promise<number> {
    for (;;) {
      if (this.refusal) throw this.refusal;
      const at = this.seen.get(type);
      if (at !== undefined) return at;
      if (Date.now() > deadline) throw new Error(`no ${type} before the deadline`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 1_000);
        this.wake = () => (clearTimeout(timer), resolve());
      });
    }
  }

  /** Sends a message; resolves with [sent, first delta] wall-clock times once the turn is done. */
  async turn(content: string, timeoutMs = 120_000): Promise<[number, number]> {
    this.seen = new Map();
    const deadline = Date.now() + timeoutMs;
    const sentAt = wallClockMs();
    this.ws.send(JSON.stringify({ type: 'message', content }));
    const deltaAt = await this.arrival('stream.delta', deadline);
    await this.arrival('turn.done', deadline);
    return [sentAt, deltaAt];
  }

  close(): void {
    this.ws.close();
  }
}
