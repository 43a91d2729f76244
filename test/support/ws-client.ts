import WebSocket from 'ws';

export interface Frame {
  type: string;
  sessionId?: string;
  seq?: number;
  lastSeq?: number;
  data: any;
}

/** A WebSocket test client that records every frame and can wait for one. */
export class WsClient {
  readonly frames: Frame[] = [];
  private waiters: { pred: (f: Frame) => boolean; resolve: (f: Frame) => void }[] = [];
  /** How the server (or we) closed the socket. */
  readonly closed: Promise<{ code: number; reason: string }>;
  private constructor(readonly ws: WebSocket) {
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
    ws.on('message', (raw) => {
      const frame = JSON.parse(raw.toString()) as Frame;
      this.frames.push(frame);
      for (const w of [...this.waiters]) {
        if (w.pred(frame)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(frame);
        }
      }
    });
  }

  static async connect(url: string): Promise<WsClient> {
    const ws = new WebSocket(url);
    const client = new WsClient(ws);
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
      ws.once('unexpected-response', (_req, res) => reject(new Error(`upgrade refused: ${res.statusCode}`)));
    });
    await client.waitFor((f) => f.type === 'connected');
    return client;
  }

  send(frame: unknown): void {
    this.ws.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  waitFor(pred: (f: Frame) => boolean, timeoutMs = 20_000): Promise<Frame> {
    const seen = this.frames.find(pred);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching frame within ${timeoutMs} ms; got ${this.frames.map((f) => f.type).join(',')}`)), timeoutMs);
      this.waiters.push({ pred, resolve: (f) => (clearTimeout(timer), resolve(f)) });
    });
  }

  /** Waits until `n` frames match. */
  async waitForCount(pred: (f: Frame) => boolean, n: number, timeoutMs = 20_000): Promise<Frame[]> {
    const deadline = Date.now() + timeoutMs;
    while (this.frames.filter(pred).length < n) {
      if (Date.now() > deadline) throw new Error(`expected ${n} matching frames, got ${this.frames.filter(pred).length}: ${this.frames.map((f) => f.type).join(',')}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return this.frames.filter(pred);
  }

  /** The reply text per stream as a client would render it: deltas applied by offset, reset on a new attempt. */
  replies(): Map<string, { attempt: number; text: string; restarts: number }> {
    const out = new Map<string, { attempt: number; text: string; restarts: number }>();
    for (const f of this.frames) {
      if (f.type === 'stream.start') {
        const prev = out.get(f.data.streamId);
        out.set(f.data.streamId, { attempt: f.data.attempt, text: '', restarts: prev ? prev.restarts + 1 : 0 });
      } else if (f.type === 'stream.delta') {
        let r = out.get(f.data.streamId);
        if (!r || r.attempt !== f.data.attempt) out.set(f.data.streamId, (r = { attempt: f.data.attempt, text: '', restarts: r ? r.restarts + 1 : 0 }));
        if (f.data.offset !== r.text.length) throw new Error(`delta offset ${f.data.offset} does not continue text of length ${r.text.length}`);
        r.text += f.data.text;
      }
    }
    return out;
  }

  close(): Promise<void> {
    if (this.ws.readyState === WebSocket.CLOSED) return Promise.resolve();
    return new Promise((resolve) => {
      this.ws.once('close', () => resolve());
      this.ws.close();
    });
  }
}
