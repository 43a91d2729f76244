import { z } from 'zod';
import { DurableEventType, StreamDeltaData } from './events';
import { TypingData } from './presence';

/** Postgres LISTEN/NOTIFY channel carrying session events from workers to API processes. */
export const EVENT_CHANNEL = 'keel_session_events';
/** NOTIFY payloads must stay under Postgres' 8000-byte limit. */
export const MAX_NOTIFY_BYTES = 7500;

export const ChannelMessage = z.discriminatedUnion('k', [
  // A durable event small enough to travel whole.
  z.object({
    k: z.literal('e'),
    sessionId: z.string(),
    seq: z.number().int(),
    type: DurableEventType,
    data: z.unknown(),
    createdAt: z.string(),
  }),
  // A durable event too large for NOTIFY: readers fetch it by seq.
  z.object({ k: z.literal('p'), sessionId: z.string(), seq: z.number().int() }),
  // A coalesced token delta; never stored.
  z.object({ k: z.literal('d'), sessionId: z.string() }).merge(StreamDeltaData),
  // A typing indicator from one socket (`from`: its connection ID, so it is not echoed back); never stored.
  z.object({ k: z.literal('t'), sessionId: z.string(), from: z.string() }).merge(TypingData),
]);
export type ChannelMessage = z.infer<typeof ChannelMessage>;
