import type { StreamDeltaData } from '../../contracts/events';

type Publish = (delta: StreamDeltaData) => Promise<void>;

/**
 * Batches token deltas: the first goes out at once (time to first token matters most), later
 * ones at most every `intervalMs`. Publishes one at a time, in order, so deltas sent through
 * different pool connections cannot overtake each other.
 */
export class DeltaCoalescer {
  private pending = '';
  private sent = 0;
  private inFlight: Promise<void> = Promise.resolve();
  private timer: NodeJS.Timeout | undefined;
  private lastSentAt = 0;

  constructor(
    private readonly streamId: string,
    private readonly attempt: number,
    private readonly intervalMs: number,
    private readonly publish: Publish,
    private readonly onPublishFailure: (error: unknown) => void,
  ) {}

  push(text: string): void {
    if (text === '') return;
    this.pending += text;
    if (this.timer) return;
    const wait = this.sent === 0 ? 0 : Math.max(0, this.lastSentAt + this.intervalMs - Date.now());
    if (wait === 0) this.send();
    else this.timer = setTimeout(() => this.send(), wait);
  }

  /**
   * Stops batching, waits until everything sent so far has been published, and hands back what
   * is still pending (null: nothing), for the caller to publish with its own last write.
   */
  async drain(): Promise<StreamDeltaData | null> {
    this.dispose();
    await this.inFlight;
    if (this.pending === '') return null;
    const delta: StreamDeltaData = { streamId: this.streamId, attempt: this.attempt, offset: this.sent, text: this.pending };
    this.sent += this.pending.length;
    this.pending = '';
    return delta;
  }

  private send(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.pending === '') return;
    const delta: StreamDeltaData = { streamId: this.streamId, attempt: this.attempt, offset: this.sent, text: this.pending };
    this.sent += this.pending.length;
    this.pending = '';
    this.lastSentAt = Date.now();
    // A lost delta is not fatal: offsets let clients see the gap and stream.end carries the whole text.
    this.inFlight = this.inFlight.then(() => this.publish(delta)).catch(this.onPublishFailure);
  }

  dispose(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
  }
}
