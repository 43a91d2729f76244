import { Client } from 'pg';
import { ChannelMessage, EVENT_CHANNEL } from '../contracts/channel';
import type { DurableEvent, StreamDeltaData } from '../contracts/events';
import type { TypingData } from '../contracts/presence';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import { withTimeout } from './timeout';

export interface HubListener {
  onEvent(event: DurableEvent): void;
  /** An event too large for NOTIFY was written with this seq: read it from the log. */
  onNotified(seq: number): void;
  onDelta(delta: StreamDeltaData): void;
  /** Notifications may have been lost (the LISTEN connection was replaced): re-read the log from your cursor. */
  onResync(): void;
  /** Someone types in the session (docs/presence.md); `from` is the sending connection. */
  onTyping?(typing: TypingData & { from: string }): void;
}

/** Follows every session's durable events (the per-user sockets' feed); typing and deltas are not handed on. */
export interface AllSessionsListener {
  onEvent(event: DurableEvent): void;
  onNotified(sessionId: string, seq: number): void;
  onResync(): void;
}

/** The text streamed so far for a reply in progress, kept so late joiners get the whole reply. */
export interface InFlightStream {
  streamId: string;
  attempt: number;
  text: string;
  /** False when this process missed the start of the stream. */
  complete: boolean;
  touchedAt: number;
}

export interface EventHubOptions {
  /** Ping the LISTEN connection this often; a ping unanswered for as long replaces the connection. */
  checkMs: number;
  /** First delay before reconnecting; it doubles on each failure, up to max(5 s, this). */
  reconnectMs: number;
}

const STALE_STREAM_MS = 10 * 60_000;
const MAX_RECONNECT_DELAY_MS = 5_000;
/** How the LISTEN connection shows in pg_stat_activity. */
export const LISTENER_APPLICATION_NAME = 'keel-api-listener';

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms).unref());

/**
 * One LISTEN connection per API process, fanned out to the subscribers of each session. A
 * connection that errors, ends or stops answering its liveness ping is replaced, and every
 * subscriber is then told to resync from the log: notifications sent while no connection
 * listened are lost, events are not. The hub itself never reads the log (an event too large
 * for NOTIFY is read by each subscriber, when it has room for it), so it holds no promise and
 * no event beyond the one it is handing out.
 */
export class EventHub {
  private client: Client | null = null;
  private readonly listeners = new Map<string, Set<HubListener>>();
  private readonly allSessions = new Set<AllSessionsListener>();
  private readonly streams = new Map<string, InFlightStream>();
  private closed = false;
  private timers: NodeJS.Timeout[] = [];
  private checking = false;

  constructor(
    private readonly databaseUrl: string,
    private readonly log: Logger,
    private readonly metrics: Metrics,
    private readonly options: EventHubOptions,
  ) {}

  async start(): Promise<void> {
    this.client = await this.connect();
    this.timers = [setInterval(() => this.dropStaleStreams(), 60_000).unref(), setInterval(() => void this.checkAlive(), this.options.checkMs).unref()];
  }

  private async connect(): Promise<Client> {
    const client = new Client({
      connectionString: this.databaseUrl,
      application_name: LISTENER_APPLICATION_NAME,
      // A half-open TCP connection (a NAT that forgot it, a failover without RST) is found by keepalive or the ping.
      keepAlive: true,
      keepAliveInitialDelayMillis: this.options.checkMs,
      connectionTimeoutMillis: this.options.checkMs,
    });
    client.on('notification', (n) => {
      if (n.channel === EVENT_CHANNEL && n.payload) this.receive(n.payload);
    });
    client.on('error', (error) => this.lost(client, error));
    client.on('end', () => this.lost(client, new Error('connection ended')));
    try {
      await client.connect();
      await withTimeout(client.query(`LISTEN ${EVENT_CHANNEL}`), this.options.checkMs);
    } catch (error) {
      destroy(client);
      throw error;
    }
    return client;
  }

  /** The current connection failed: drop it and reconnect (once per connection). */
  private lost(client: Client, error: unknown): void {
    if (this.closed || this.client !== client) return;
    this.client = null;
    this.log.warn({ err: error }, 'event channel connection lost');
    destroy(client);
    // Deltas sent while nobody listened are gone: what is kept of replies in progress is no longer whole.
    this.streams.clear();
    void this.reconnect();
  }

  private async reconnect(): Promise<void> {
    for (let attempt = 0; !this.closed; attempt++) {
      const { reconnectMs } = this.options;
      await delay(Math.min(Math.max(MAX_RECONNECT_DELAY_MS, reconnectMs), reconnectMs * 2 ** attempt));
      if (this.closed) return;
      try {
        const client = await this.connect();
        if (this.closed) return destroy(client);
        this.client = client;
        this.log.info({ attempt }, 'event channel reconnected; subscribers resync from the log');
        this.resyncAll();
        return;
      } catch (error) {
        this.log.warn({ err: error, attempt }, 'event channel reconnect failed');
      }
    }
  }

  private async checkAlive(): Promise<void> {
    const client = this.client;
    if (!client || this.checking) return;
    this.checking = true;
    try {
      await withTimeout(client.query('SELECT 1'), this.options.checkMs);
    } catch (error) {
      this.lost(client, error);
    } finally {
      this.checking = false;
    }
  }

  subscribe(sessionId: string, listener: HubListener): () => void {
    let set = this.listeners.get(sessionId);
    if (!set) this.listeners.set(sessionId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0 && this.listeners.get(sessionId) === set) this.listeners.delete(sessionId);
    };
  }

  /** Every session's durable events; the returned function unsubscribes. */
  subscribeAll(listener: AllSessionsListener): () => void {
    this.allSessions.add(listener);
    return () => this.allSessions.delete(listener);
  }

  inFlight(sessionId: string): InFlightStream | undefined {
    return this.streams.get(sessionId);
  }

  private receive(payload: string): void {
    let message: ChannelMessage;
    try {
      message = ChannelMessage.parse(JSON.parse(payload));
    } catch (error) {
      this.log.warn({ err: error }, 'malformed event channel payload ignored');
      return;
    }
    try {
      if (message.k === 'd') {
        const { k: _k, sessionId, ...delta } = message;
        this.trackDelta(sessionId, delta);
        this.forEach(sessionId, (l) => l.onDelta(delta));
      } else if (message.k === 't') {
        const { k: _k, sessionId, ...typing } = message;
        this.forEach(sessionId, (l) => l.onTyping?.(typing));
      } else if (message.k === 'e') {
        const { k: _k, ...event } = message;
        this.metrics.channelLag.observe(Math.max(0, Date.now() - Date.parse(event.createdAt)) / 1000);
        this.deliver(event as DurableEvent);
      } else {
        // Not known here whether it ends the reply in progress (a long stream.end): stop handing that reply out.
        const inFlight = this.streams.get(message.sessionId);
        if (inFlight) inFlight.complete = false;
        this.forEach(message.sessionId, (l) => l.onNotified(message.seq));
        this.forAll((l) => l.onNotified(message.sessionId, message.seq));
      }
    } catch (error) {
      this.log.error({ err: error, sessionId: message.sessionId }, 'event delivery failed');
    }
  }

  private deliver(event: DurableEvent): void {
    this.trackEvent(event);
    this.forEach(event.sessionId, (l) => l.onEvent(event));
    this.forAll((l) => l.onEvent(event));
  }

  private forAll(fn: (l: AllSessionsListener) => void): void {
    for (const listener of [...this.allSessions]) {
      try {
        fn(listener);
      } catch (error) {
        this.log.error({ err: error }, 'event subscriber failed');
      }
    }
  }

  private forEach(sessionId: string, fn: (l: HubListener) => void): void {
    const set = this.listeners.get(sessionId);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        fn(listener);
      } catch (error) {
        this.log.error({ err: error, sessionId }, 'event subscriber failed');
      }
    }
  }

  private resyncAll(): void {
    for (const sessionId of [...this.listeners.keys()]) this.forEach(sessionId, (l) => l.onResync());
    this.forAll((l) => l.onResync());
  }

  private trackEvent(event: DurableEvent): void {
    if (event.type === 'stream.start') {
      const data = event.data as { streamId: string; attempt: number };
      this.streams.set(event.sessionId, { streamId: data.streamId, attempt: data.attempt, text: '', complete: true, touchedAt: Date.now() });
    } else if (event.type === 'stream.end' || event.type === 'turn.done' || event.type === 'session.expired') {
      this.streams.delete(event.sessionId);
    }
  }

  private trackDelta(sessionId: string, delta: StreamDeltaData): void {
    let s = this.streams.get(sessionId);
    if (!s || s.streamId !== delta.streamId || s.attempt !== delta.attempt) {
      s = { streamId: delta.streamId, attempt: delta.attempt, text: '', complete: delta.offset === 0, touchedAt: 0 };
      this.streams.set(sessionId, s);
    }
    s.touchedAt = Date.now();
    const end = s.text.length;
    if (delta.offset > end) s.complete = false;
    if (delta.offset + delta.text.length > end && delta.offset <= end) s.text += delta.text.slice(end - delta.offset);
  }

  private dropStaleStreams(): void {
    const cutoff = Date.now() - STALE_STREAM_MS;
    for (const [sessionId, s] of this.streams) if (s.touchedAt < cutoff) this.streams.delete(sessionId);
  }

  get listenerCount(): number {
    let n = 0;
    for (const set of this.listeners.values()) n += set.size;
    return n;
  }

  async close(): Promise<void> {
    this.closed = true;
    this.timers.forEach((t) => clearInterval(t));
    const client = this.client;
    this.client = null;
    await client?.end().catch(() => undefined);
  }
}

/** Closes a connection without waiting for the server, which may be gone. */
function destroy(client: Client): void {
  client.end().catch(() => undefined);
  client.connection.stream.destroy();
}
