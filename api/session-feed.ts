import type { DatabasePool } from 'slonik';
import { KeelError } from '../contracts/errors';
import type { DurableEvent, StreamDeltaData } from '../contracts/events';
import type { Logger } from '../config/logger';
import { eventsAfter, lastSeq } from '../db/events';
import type { EventHub, HubListener } from './event-hub';

/** Where a subscription's events go: a WebSocket, an SSE response, a /chat waiter. */
export interface FeedSink {
  event(event: DurableEvent): void;
  delta(delta: StreamDeltaData): void;
  /** Bytes written towards the client that it has not taken yet (0 for an in-process consumer). */
  backlog(): number;
  /** The subscription ended for good: CONSUMER_TOO_SLOW, the log could not be read (SERVICE_UNAVAILABLE), or the session was deleted (SESSION_NOT_FOUND). Called once. */
  stopped(error: KeelError): void;
}

export interface FeedOptions {
  sessionId: string;
  /** Replay durable events after this seq; undefined means live only (from the current last seq). */
  after?: number;
  /** Characters of the reply in progress the client already has. */
  streamOffset?: number;
}

export interface FeedLimits {
  /** Events read from the log per query. */
  replayPageEvents: number;
  /** A sink holding more unsent bytes than this gets nothing more until it has read some. */
  maxBufferedBytes: number;
  /** A sink that stays over maxBufferedBytes this long is cut off (CONSUMER_TOO_SLOW). */
  slowConsumerMs: number;
}

export interface Subscription {
  /** Resolves once the replay up to the end of the log at opening has been handed to the sink. */
  readonly ready: Promise<void>;
  /** The seq of the last durable event handed to the sink. */
  lastSeq(): number;
  /** Starts the slow-consumer clock if the sink is over its byte budget while no event is flowing. */
  checkBacklog(): void;
  close(): void;
}

const DRAIN_POLL_MS = 25;
/** Delta positions remembered per subscription (a few streams back is plenty: only the one in progress matters). */
const MAX_TRACKED_STREAMS = 8;

const streamKey = (d: { streamId: string; attempt: number }) => `${d.streamId}#${d.attempt}`;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * The one way the API follows a session's events, for WebSocket, SSE and /chat: durable
 * events after a cursor, then live ones, with no gap and no duplicate, in bounded memory.
 *
 * A subscription keeps no queue. A live event that follows its cursor is handed on at once;
 * anything else (a gap, a resync after the LISTEN connection was replaced, a consumer over its
 * byte budget) only records what is wanted, and one catch-up loop reads the log from the
 * cursor, a page at a time, while the consumer has room. Deltas that arrive during a catch-up
 * are dropped: afterwards the consumer gets the reply so far from the hub, trimmed to what it
 * already has.
 */
export class SessionFeed {
  constructor(
    private readonly hub: EventHub,
    private readonly pool: DatabasePool,
    private readonly limits: FeedLimits,
    private readonly log: Logger,
  ) {}

  open(opts: FeedOptions, sink: FeedSink): Subscription {
    return new FeedSubscription(this.hub, this.pool, this.limits, this.log, opts, sink);
  }
}

class FeedSubscription implements Subscription, HubListener {
  readonly ready: Promise<void>;
  private cursor = 0;
  /** The highest seq known to exist (from live notifications). */
  private wanted = 0;
  /** Notifications may have been lost: read to the end of the log. */
  private resync = false;
  private catchingUp = true;
  private closed = false;
  /** Characters of each stream the sink has; a finished stream counts as whole. */
  private readonly sentUpTo = new Map<string, number>();
  private streamOffset: number | undefined;
  private readonly unsubscribe: () => void;

  constructor(
    private readonly hub: EventHub,
    private readonly pool: DatabasePool,
    private readonly limits: FeedLimits,
    private readonly log: Logger,
    private readonly opts: FeedOptions,
    private readonly sink: FeedSink,
  ) {
    this.streamOffset = opts.streamOffset;
    // Subscribe before reading the log: an event committed in between is then either in the log or notified.
    this.unsubscribe = hub.subscribe(opts.sessionId, this);
    this.ready = this.run(async () => {
      this.cursor = opts.after ?? (await lastSeq(pool, opts.sessionId));
      this.resync = opts.after !== undefined;
    });
  }

  lastSeq(): number {
    return this.cursor;
  }

  checkBacklog(): void {
    if (!this.hasRoom()) this.catchUpSoon();
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.unsubscribe();
  }

  onEvent(event: DurableEvent): void {
    if (this.closed || event.seq <= this.cursor) return;
    if (!this.catchingUp && event.seq === this.cursor + 1 && this.hasRoom()) return this.send(event);
    this.wanted = Math.max(this.wanted, event.seq);
    this.catchUpSoon();
  }

  onNotified(seq: number): void {
    if (this.closed || seq <= this.cursor) return;
    this.wanted = Math.max(this.wanted, seq);
    this.catchUpSoon();
  }

  onDelta(delta: StreamDeltaData): void {
    if (this.closed || this.catchingUp) return;
    if (this.hasRoom()) return this.sendDelta(delta);
    this.catchUpSoon();
  }

  onResync(): void {
    if (this.closed) return;
    this.resync = true;
    this.catchUpSoon();
  }

  private catchUpSoon(): void {
    if (this.catchingUp || this.closed) return;
    this.catchingUp = true;
    void this.run(async () => undefined);
  }

  /** One catch-up at a time: `catchingUp` is set by the caller and cleared here. */
  private async run(before: () => Promise<void>): Promise<void> {
    try {
      await before();
      await this.catchUp();
    } catch (error) {
      this.fail(error);
    } finally {
      this.catchingUp = false;
    }
    if (!this.closed && (this.resync || this.wanted > this.cursor)) this.catchUpSoon();
  }

  /** Reads the log from the cursor until it has what is wanted, then hands on the reply in progress. */
  private async catchUp(): Promise<void> {
    let more = false;
    for (;;) {
      await this.waitForRoom();
      if (this.closed) return;
      if (!more && !this.resync && this.cursor >= this.wanted) break;
      this.resync = false;
      const page = await eventsAfter(this.pool, this.opts.sessionId, this.cursor, this.limits.replayPageEvents);
      for (const event of page) {
        await this.waitForRoom();
        if (this.closed) return;
        this.send(event);
      }
      more = page.length === this.limits.replayPageEvents;
      // Notifications name only committed events, so an empty read means the wanted seq does not exist (a bogus payload).
      if (page.length === 0) this.wanted = Math.min(this.wanted, this.cursor);
    }
    this.sendInFlight();
  }

  private send(event: DurableEvent): void {
    if (event.seq !== this.cursor + 1) return;
    this.cursor = event.seq;
    if (event.type === 'stream.end') this.track(streamKey(event.data as { streamId: string; attempt: number }), Number.MAX_SAFE_INTEGER);
    this.sink.event(event);
    // The last event of a deleted session: its streams end, everywhere.
    if (event.type === 'session.deleted') this.stop(new KeelError('SESSION_NOT_FOUND', 'The session was deleted'));
  }

  private sendInFlight(): void {
    const inFlight = this.hub.inFlight(this.opts.sessionId);
    if (!inFlight?.complete) return;
    const key = streamKey(inFlight);
    if (!this.sentUpTo.has(key)) this.track(key, Math.min(this.streamOffset ?? 0, inFlight.text.length));
    this.streamOffset = undefined;
    this.sendDelta({ streamId: inFlight.streamId, attempt: inFlight.attempt, offset: 0, text: inFlight.text });
  }

  /** Deltas are trimmed by offset so a client never gets the same text twice. */
  private sendDelta(delta: StreamDeltaData): void {
    const key = streamKey(delta);
    const have = this.sentUpTo.get(key) ?? 0;
    const end = delta.offset + delta.text.length;
    if (end <= have) return;
    const start = Math.max(delta.offset, have);
    this.track(key, end);
    this.sink.delta({ ...delta, offset: start, text: delta.text.slice(start - delta.offset) });
  }

  private track(key: string, upTo: number): void {
    this.sentUpTo.delete(key);
    this.sentUpTo.set(key, upTo);
    if (this.sentUpTo.size > MAX_TRACKED_STREAMS) this.sentUpTo.delete(this.sentUpTo.keys().next().value!);
  }

  private hasRoom(): boolean {
    return this.sink.backlog() <= this.limits.maxBufferedBytes;
  }

  private async waitForRoom(): Promise<void> {
    const deadline = Date.now() + this.limits.slowConsumerMs;
    while (!this.closed && !this.hasRoom()) {
      if (Date.now() >= deadline) {
        this.stop(new KeelError('CONSUMER_TOO_SLOW', 'The connection fell too far behind; reconnect with ?after=<the last seq you received>', { lastSeq: this.cursor }));
        return;
      }
      await sleep(DRAIN_POLL_MS);
    }
  }

  private fail(error: unknown): void {
    if (this.closed) return;
    this.log.warn({ err: error, sessionId: this.opts.sessionId }, 'event feed failed');
    this.stop(new KeelError('SERVICE_UNAVAILABLE', 'The event log could not be read; reconnect with ?after=<the last seq you received>', { lastSeq: this.cursor }, { cause: error }));
  }

  private stop(error: KeelError): void {
    this.close();
    this.sink.stopped(error);
  }
}
