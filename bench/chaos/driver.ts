import WebSocket from 'ws';
import type { SentMessage } from './verify';

/**
 * One chat client of the chaos run: a WebSocket to one of the two APIs that it reopens (on the
 * other API first) with `?after=<last seq seen>` whenever it drops, turns sent over that socket or
 * over REST, and every unacknowledged message sent again with its clientMessageId.
 */

export interface Frame {
  type: string;
  seq?: number;
  data: Record<string, any>;
}

export type Rng = () => number;

/** mulberry32: small, seedable, good enough to pick kill times and channels. */
export function seededRng(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** A script for a session's next model call, retried while the model server is down (until `deadline`). */
export async function postScript(modelUrl: string, body: unknown, deadline: number): Promise<void> {
  while (Date.now() < deadline) {
    try {
      const res = await fetch(`${modelUrl}/_control/script`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
      if (res.ok) return;
    } catch {
      // the model server is being restarted
    }
    await new Promise((r) => setTimeout(r, RECONNECT_BACKOFF_MS));
  }
}

export interface DriverContext {
  apiPorts: number[];
  token: string;
  modelUrl: string;
  writeTool: string;
  /** Share of turns whose model reply calls the write tool (which needs an approval). */
  writeShare: number;
  turnTimeoutMs: number;
  /** Called for each approval.required the client sees. */
  onApproval: (sessionId: string, toolCallId: string, digest: string) => void;
  log: (line: string) => void;
}

const RESEND_AFTER_MS = 3_000;
const RECONNECT_BACKOFF_MS = 200;

interface Waiter {
  pred: (f: Frame) => boolean;
  resolve: (f: Frame | undefined) => void;
  timer: NodeJS.Timeout;
}

export class SessionDriver {
  readonly sent: SentMessage[] = [];
  readonly delivered: number[] = [];
  readonly events = new Map<number, Frame>();
  lastSeq = 0;
  reconnects = 0;
  turnsDone = 0;
  private ws: WebSocket | undefined;
  private open = false;
  private done = false;
  private attempt = 0;
  private waiters: Waiter[] = [];
  private connection: Promise<void> | undefined;

  constructor(readonly id: string, private readonly ctx: DriverContext, private readonly rng: Rng) {}

  /** Keeps a socket open until `close()`. */
  start(): void {
    // Clients spread over both APIs from the start.
    this.attempt = Math.floor(this.rng() * this.ctx.apiPorts.length);
    this.connection = this.connectLoop();
  }

  private async connectLoop(): Promise<void> {
    while (!this.done) {
      const port = this.ctx.apiPorts[this.attempt++ % this.ctx.apiPorts.length]!;
      const params = new URLSearchParams({ token: this.ctx.token, after: String(this.lastSeq) });
      await new Promise<void>((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${port}/api/v1/sessions/${this.id}/ws?${params}`);
        this.ws = ws;
        ws.on('open', () => (this.open = true));
        ws.on('message', (raw) => this.onFrame(JSON.parse(raw.toString()) as Frame));
        ws.on('error', () => undefined);
        ws.on('unexpected-response', (_req, res) => {
          res.resume();
          ws.terminate();
        });
        ws.on('close', () => {
          this.open = false;
          resolve();
        });
      });
      if (!this.done) {
        this.reconnects++;
        await new Promise((r) => setTimeout(r, RECONNECT_BACKOFF_MS));
      }
    }
  }

  private onFrame(frame: Frame): void {
    if (frame.seq !== undefined) {
      this.delivered.push(frame.seq);
      if (!this.events.has(frame.seq)) this.events.set(frame.seq, frame);
      this.lastSeq = Math.max(this.lastSeq, frame.seq);
      if (frame.type === 'approval.required') this.ctx.onApproval(this.id, frame.data.toolCallId as string, frame.data.digest as string);
    }
    for (const w of [...this.waiters]) {
      if (w.pred(frame)) {
        this.waiters.splice(this.waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve(frame);
      }
    }
  }

  /** The first durable event (already seen or still to come) matching `pred`; undefined after `timeoutMs`. */
  private waitFor(pred: (f: Frame) => boolean, timeoutMs: number): Promise<Frame | undefined> {
    for (const f of this.events.values()) if (pred(f)) return Promise.resolve(f);
    return new Promise((resolve) => {
      const w: Waiter = { pred, resolve, timer: setTimeout(() => (this.waiters.splice(this.waiters.indexOf(w), 1), resolve(undefined)), Math.max(0, timeoutMs)) };
      this.waiters.push(w);
    });
  }


  private async postMessage(content: string, clientMessageId: string): Promise<boolean> {
    const port = this.ctx.apiPorts[Math.floor(this.rng() * this.ctx.apiPorts.length)]!;
    try {
      const res = await fetch(`http://127.0.0.1:${port}/api/v1/sessions/${this.id}/messages`, {
        method: 'POST',
        headers: { authorization: `Bearer ${this.ctx.token}`, 'content-type': 'application/json' },
        body: JSON.stringify({ content, clientMessageId }),
        signal: AbortSignal.timeout(RESEND_AFTER_MS * 3),
      });
      await res.text();
      return res.status === 202;
    } catch {
      return false;
    }
  }

  /** One turn: send until accepted, then wait for its turn.done. */
  async turn(n: number): Promise<void> {
    const clientMessageId = `${this.id.slice(-12).replace(/[^a-zA-Z0-9_-]/g, '')}-t${n}`;
    const write = this.rng() < this.ctx.writeShare;
    const marker = `${this.id}/${n}`;
    const deadline = Date.now() + this.ctx.turnTimeoutMs;
    if (write) await postScript(this.ctx.modelUrl, { scope: this.id, toolCalls: [{ name: this.ctx.writeTool, arguments: JSON.stringify({ body: { marker } }) }] }, deadline);
    const content = write ? `Record action ${marker}` : `Chaos turn ${n}`;
    const sent: SentMessage = { clientMessageId, acknowledged: false, sends: 0 };
    this.sent.push(sent);
    const isAccepted = (f: Frame) => f.type === 'message.accepted' && f.data.clientMessageId === clientMessageId;
    let accepted = await this.waitFor(isAccepted, 0);
    while (!accepted && Date.now() < deadline) {
      sent.sends++;
      if (this.open && this.rng() < 0.5) this.ws!.send(JSON.stringify({ type: 'message', content, clientMessageId }));
      else if (await this.postMessage(content, clientMessageId)) sent.acknowledged = true;
      accepted = await this.waitFor(isAccepted, Math.min(RESEND_AFTER_MS, deadline - Date.now()));
    }
    if (!accepted) {
      this.ctx.log(`${this.id}: message ${clientMessageId} not accepted within ${this.ctx.turnTimeoutMs} ms`);
      return;
    }
    sent.acknowledged = true;
    const turn = Number(accepted.data.turn);
    const done = await this.waitFor((f) => f.type === 'turn.done' && Number(f.data.turn) === turn, deadline - Date.now());
    if (!done) this.ctx.log(`${this.id}: turn ${turn} (${clientMessageId}) not done within ${this.ctx.turnTimeoutMs} ms`);
    else this.turnsDone++;
  }

  async close(): Promise<void> {
    this.done = true;
    this.ws?.close();
    await this.connection;
  }
}
