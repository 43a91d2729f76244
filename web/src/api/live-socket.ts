import { getToken, reportUnauthorized, wsUrl } from './client';
import type { ServerFrame } from './types';

export type SocketStatus = 'connecting' | 'open' | 'reconnecting' | 'closed';

export interface LiveSocketOptions {
  /** The path and query to connect to, asked again before every (re)connect: a resume names the last event seen. */
  url: () => string;
  onFrame: (frame: ServerFrame) => void;
  onStatus: (status: SocketStatus, detail?: string) => void;
}

const FIRST_RETRY_MS = 250;
const MAX_RETRY_MS = 4_000;
/** Close codes after which reconnecting cannot help (docs/protocol.md). */
const FINAL_CLOSES: Record<number, string> = {
  4004: 'The session was deleted.',
  4029: 'Too many open connections for this user; close other tabs and reload.',
};

/**
 * A WebSocket that reconnects after any drop, with a growing pause between tries. The token
 * goes in the subprotocols `['bearer', token]`, the way a browser can send it (never in the URL,
 * which ends up in logs). Status `open` means the server's `connected` frame arrived.
 */
export class LiveSocket {
  private ws: WebSocket | null = null;
  private stopped = false;
  private retries = 0;
  private timer: number | undefined;

  constructor(private readonly opts: LiveSocketOptions) {}

  start(): void {
    this.connect();
  }

  stop(): void {
    this.stopped = true;
    window.clearTimeout(this.timer);
    this.ws?.close(1000);
    this.ws = null;
  }

  send(frame: Record<string, unknown>): boolean {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(frame));
    return true;
  }

  private connect(): void {
    if (this.stopped) return;
    const token = getToken();
    if (!token) return reportUnauthorized('Please sign in.');
    this.opts.onStatus(this.retries === 0 ? 'connecting' : 'reconnecting');
    let ws: WebSocket;
    try {
      ws = new WebSocket(wsUrl(this.opts.url()), ['bearer', token]);
    } catch {
      return this.retry();
    }
    this.ws = ws;
    let received = false;
    ws.onmessage = (event) => {
      let frame: ServerFrame;
      try {
        frame = JSON.parse(String(event.data)) as ServerFrame;
      } catch {
        return;
      }
      received = true;
      if (frame.type === 'connected') {
        this.retries = 0;
        this.opts.onStatus('open');
      }
      this.opts.onFrame(frame);
    };
    ws.onclose = (event) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (event.code === 4001) {
        // Before any data: a missing or bad token; later: it was revoked.
        reportUnauthorized(received ? 'Your token was revoked. Please sign in again.' : 'Your token was not accepted. Please sign in again.');
        this.stopped = true;
        return this.opts.onStatus('closed', 'unauthorized');
      }
      const final = FINAL_CLOSES[event.code];
      if (final) {
        this.stopped = true;
        return this.opts.onStatus('closed', final);
      }
      this.retry();
    };
  }

  private retry(): void {
    if (this.stopped) return;
    this.opts.onStatus('reconnecting');
    const delay = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** this.retries);
    this.retries += 1;
    this.timer = window.setTimeout(() => this.connect(), delay);
  }
}
