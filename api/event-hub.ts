import { Client } from 'pg';
import type { DatabasePool } from 'slonik';
import { ChannelMessage, EVENT_CHANNEL } from '../contracts/channel';
import type { DurableEvent, StreamDeltaData } from '../contracts/events';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import { eventsAfter } from '../db/events';

export interface HubListener {
  onEvent(event: DurableEvent): void;
  onDelta(delta: StreamDeltaData): void;
}

/** The text streamed so far for a reply in progress, kept so late joiners get the whole reply. */
export interface InFlightStream {
  streamId: string;
  attempt: number;
  text: string;
  /** False when this process started listening after the stream began. */
  complete: boolean;
  touchedAt: number;
}

const STALE_STREAM_MS = 10 * 60_000;

/**
 * One LISTEN connection per API process, fanned out to the WebSocket and SSE subscribers of
 * each session. Reconnects on its own; subscribers fill any gap from the event log by seq.
 */
export class EventHub {
  private client: Client | null = null;
  private readonly listeners = new Map<string, Set<HubListener>>();
  private readonly streams = new Map<string, InFlightStream>();
  private closed = false;
  private sweep: NodeJS.Timeout | undefined;
  private reconnects = 0;

  constructor(
    private readonly databaseUrl: string,
    private readonly pool: DatabasePool,
    private readonly log: Logger,
    private readonly metrics: Metrics,
  ) {}

  async start(): Promise<void> {
    await this.connect();
    this.sweep = setInterval(() => this.dropStaleStreams(), 60_000).unref();
  }

  private async connect(): Promise<void> {
    const client = new Client({ connectionString: this.databaseUrl });
    client.on('notification', (n) => {
      if (n.channel === EVENT_CHANNEL && n.payload) this.receive(n.payload);
    });
    client.on('error', (error) => {
      this.log.warn({ err: error }, 'event channel connection lost');
      void this.reconnect(client);
    });
    await client.connect();
    await client.query(`LISTEN ${EVENT_CHANNEL}`);
    this.client = client;
  }

  private async reconnect(old: Client): Promise<void> {
    if (this.closed || this.client !== old) return;
    this.client = null;
    old.end().catch(() => undefined);
    const delay = Math.min(5_000, 200 * 2 ** this.reconnects++);
    await new Promise((r) => setTimeout(r, delay));
    try {
      await this.connect();
      this.reconnects = 0;
    } catch (error) {
      this.log.warn({ err: error }, 'event channel reconnect failed');
      this.client = old;
      void this.reconnect(old);
    }
  }

  subscribe(sessionId: string, listener: HubListener): () => void {
    let set = this.listeners.get(sessionId);
    if (!set) this.listeners.set(sessionId, (set = new Set()));
    set.add(listener);
    return () => {
      set.delete(listener);
      if (set.size === 0) this.listeners.delete(sessionId);
    };
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
    if (message.k === 'd') {
      const { k: _k, sessionId, ...delta } = message;
      this.trackDelta(sessionId, delta);
      this.listeners.get(sessionId)?.forEach((l) => l.onDelta(delta));
      return;
    }
    if (message.k === 'e') {
      const { k: _k, ...event } = message;
      this.metrics.channelLag.observe(Math.max(0, Date.now() - Date.parse(event.createdAt)) / 1000);
      this.deliver(event as DurableEvent);
      return;
    }
    void this.fetchAndDeliver(message.sessionId, message.seq);
  }

  private async fetchAndDeliver(sessionId: string, seq: number): Promise<void> {
    const [event] = await eventsAfter(this.pool, sessionId, seq - 1, 1);
    if (event) this.deliver(event);
  }

  private deliver(event: DurableEvent): void {
    this.trackEvent(event);
    this.listeners.get(event.sessionId)?.forEach((l) => l.onEvent(event));
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
    if (this.sweep) clearInterval(this.sweep);
    await this.client?.end().catch(() => undefined);
  }
}
