/**
 * One socket's typing indicator, throttled (KEEL_TYPING_INTERVAL_MS): at most one relay per
 * interval; frames in between only replace the state waiting to go out, which is relayed when
 * the interval ends, so the others always end up with the last state the client sent. Holds one
 * boolean and one timer, whatever the client sends.
 */
export class TypingThrottle {
  private lastAt = Number.NEGATIVE_INFINITY;
  private lastSent: boolean | undefined;
  private waiting: boolean | undefined;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  constructor(
    private readonly intervalMs: number,
    private readonly relay: (active: boolean) => void,
  ) {}

  push(active: boolean): void {
    if (this.closed) return;
    const now = Date.now();
    if (!this.timer && now - this.lastAt >= this.intervalMs) return this.send(active, now);
    this.waiting = active;
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      const next = this.waiting;
      this.waiting = undefined;
      if (next !== undefined && !this.closed) this.send(next, Date.now());
    }, this.intervalMs - (now - this.lastAt));
  }

  /** The socket closed: a client that was typing is no longer. */
  close(): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    // The others last heard `lastSent`; whatever was waiting, the client is gone.
    if (this.lastSent === true) this.relay(false);
    this.closed = true;
  }

  private send(active: boolean, now: number): void {
    this.lastAt = now;
    this.lastSent = active;
    this.relay(active);
  }
}
