import type { DatabasePool } from 'slonik';
import type { DurableEvent, StreamDeltaData } from '../contracts/events';
import { eventsAfter, lastSeq } from '../db/events';
import type { EventHub } from './event-hub';
import { SerialQueue } from './serial-queue';

export interface StreamSink {
  event(event: DurableEvent): void;
  delta(delta: StreamDeltaData): void;
}

export interface SessionStreamOptions {
  sessionId: string;
  /** Replay durable events after this seq; undefined means live only (from the current last seq). */
  after?: number;
  /** Characters of the reply in progress the client already has. */
  streamOffset?: number;
}

const REPLAY_PAGE = 500;

/**
 * Durable events after a cursor, then live ones, with no gap and no duplicate: subscribes
 * first, replays from the log, and fills any seq gap in the live feed from the log again.
 * Deltas are trimmed by offset so a client never gets the same text twice.
 */
export async function openSessionStream(hub: EventHub, pool: DatabasePool, opts: SessionStreamOptions, sink: StreamSink, onError: (e: unknown) => void) {
  const queue = new SerialQueue(onError);
  let cursor = 0;
  const sentUpTo = new Map<string, number>();
  const key = (d: { streamId: string; attempt: number }) => `${d.streamId}#${d.attempt}`;

  const sendEvent = async (event: DurableEvent) => {
    if (event.seq <= cursor) return;
    if (event.seq > cursor + 1) {
      for (const missed of await replayFrom(cursor, event.seq - 1)) sendOne(missed);
    }
    if (event.seq === cursor + 1) sendOne(event);
  };
  const sendOne = (event: DurableEvent) => {
    if (event.seq !== cursor + 1) return;
    cursor = event.seq;
    if (event.type === 'stream.end') sentUpTo.set(key(event.data as { streamId: string; attempt: number }), Number.MAX_SAFE_INTEGER);
    sink.event(event);
  };
  const replayFrom = async (from: number, to = Number.MAX_SAFE_INTEGER) => {
    const all: DurableEvent[] = [];
    for (let after = from; ; ) {
      const page = (await eventsAfter(pool, opts.sessionId, after, REPLAY_PAGE)).filter((e) => e.seq <= to);
      all.push(...page);
      if (page.length < REPLAY_PAGE) return all;
      after = page[page.length - 1]!.seq;
    }
  };
  const sendDelta = (delta: StreamDeltaData) => {
    const have = sentUpTo.get(key(delta)) ?? 0;
    const end = delta.offset + delta.text.length;
    if (end <= have) return;
    const start = Math.max(delta.offset, have);
    sentUpTo.set(key(delta), end);
    sink.delta({ ...delta, offset: start, text: delta.text.slice(start - delta.offset) });
  };

  const unsubscribe = hub.subscribe(opts.sessionId, {
    onEvent: (event) => queue.push(() => sendEvent(event)),
    onDelta: (delta) => queue.push(() => sendDelta(delta)),
  });

  queue.push(async () => {
    cursor = opts.after ?? (await lastSeq(pool, opts.sessionId));
    for (const event of await replayFrom(cursor)) sendOne(event);
    const inFlight = hub.inFlight(opts.sessionId);
    if (inFlight?.complete && !sentUpTo.has(key(inFlight))) {
      sentUpTo.set(key(inFlight), Math.min(opts.streamOffset ?? 0, inFlight.text.length));
      sendDelta({ streamId: inFlight.streamId, attempt: inFlight.attempt, offset: 0, text: inFlight.text });
    }
  });

  return {
    lastSeq: () => cursor,
    ready: () => queue.idle(),
    close: unsubscribe,
  };
}
