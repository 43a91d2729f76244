import type { Logger } from '../config/logger';
import type { Authenticator } from './auth';

export type StreamKind = 'websocket' | 'sse';

/** A long-lived client connection (a WebSocket or an SSE `/events` stream). */
export interface OpenStream {
  kind: StreamKind;
  userId: string;
  /** The hash of the token it was opened with (Caller.tokenKey). */
  tokenKey: string;
  /** Ends it: its token was revoked (WebSocket 4001), or the server is stopping (1001). */
  end(reason: 'revoked' | 'shutdown'): void;
}

/**
 * The API process's open streams and in-flight /chat requests: counted per user (the
 * KEEL_MAX_SOCKETS_PER_USER and KEEL_MAX_SSE_PER_USER limits are per process), re-checked
 * against token revocation, and ended or drained when the process stops.
 */
export class Connections {
  private readonly open = new Set<OpenStream>();
  private readonly perUser: Record<StreamKind, Map<string, number>> = { websocket: new Map(), sse: new Map() };
  private chats = 0;
  private chatsDone: (() => void)[] = [];
  private revocationTimer: NodeJS.Timeout | undefined;
  private checking = false;
  private stoppingNow = false;

  /** True once the process is stopping: new connections and requests are refused. */
  get stopping(): boolean {
    return this.stoppingNow;
  }

  count(kind: StreamKind, userId: string): number {
    return this.perUser[kind].get(userId) ?? 0;
  }

  /** Registers an open stream; the returned function unregisters it (once). */
  add(stream: OpenStream): () => void {
    this.open.add(stream);
    const counts = this.perUser[stream.kind];
    counts.set(stream.userId, (counts.get(stream.userId) ?? 0) + 1);
    let removed = false;
    return () => {
      if (removed) return;
      removed = true;
      this.open.delete(stream);
      const left = (counts.get(stream.userId) ?? 1) - 1;
      if (left > 0) counts.set(stream.userId, left);
      else counts.delete(stream.userId);
    };
  }

  /** Marks a /chat request in flight; the returned function marks it done (once). */
  chatStarted(): () => void {
    this.chats++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      if (--this.chats === 0) this.chatsDone.splice(0).forEach((fn) => fn());
    };
  }

  /**
   * Every `intervalMs`, asks the database (not the token cache) whether the tokens of open
   * streams are still valid, and ends the streams of revoked ones.
   */
  checkRevocations(auth: Authenticator, intervalMs: number, log: Logger): void {
    this.revocationTimer = setInterval(() => {
      if (this.checking || this.open.size === 0) return;
      this.checking = true;
      auth
        .revokedAmong([...this.open].map((s) => s.tokenKey))
        .then((revoked) => {
          for (const stream of [...this.open]) if (revoked.has(stream.tokenKey)) stream.end('revoked');
        })
        .catch((error: unknown) => log.warn({ err: error }, 'token revocation check failed'))
        .finally(() => (this.checking = false));
    }, intervalMs).unref();
  }

  /** Stopping: refuse new work, end open streams, and wait up to `drainMs` for in-flight /chat requests. */
  async drain(drainMs: number): Promise<{ unfinishedChats: number }> {
    this.stoppingNow = true;
    clearInterval(this.revocationTimer);
    for (const stream of [...this.open]) stream.end('shutdown');
    if (this.chats > 0) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([new Promise<void>((resolve) => this.chatsDone.push(resolve)), new Promise<void>((resolve) => (timer = setTimeout(resolve, drainMs)))]);
      clearTimeout(timer);
    }
    return { unfinishedChats: this.chats };
  }
}
