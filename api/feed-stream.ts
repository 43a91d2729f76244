import type { Context } from 'koa';
import { durableFrame, type DurableEvent, type StreamDeltaData } from '../contracts/events';
import { KeelError } from '../contracts/errors';
import { AfterSeqQuery } from '../contracts/rest';
import type { Caller } from './auth';
import type { ApiDeps } from './deps';
import { parseInput } from './errors';
import { openSse } from './sse';
import { AgentStatusTracker } from './agent-status';

const SSE_KEEPALIVE_MS = 15_000;

/** The cursor of an SSE request: `Last-Event-ID` (what a reconnecting EventSource sends) over `?after=`, and `?streamOffset=`. */
export function sseCursor(ctx: Context): { after?: number; streamOffset?: number } {
  const query = parseInput(AfterSeqQuery, ctx.query);
  const lastEventId = ctx.get('last-event-id');
  const after = lastEventId ? parseInput(AfterSeqQuery.shape.after, lastEventId) : query.after;
  return { ...(after === undefined ? {} : { after }), ...(query.streamOffset === undefined ? {} : { streamOffset: query.streamOffset }) };
}

export function refuseWhenStopping(deps: ApiDeps): void {
  if (deps.connections.stopping) throw new KeelError('SERVICE_UNAVAILABLE', 'The server is shutting down; try again');
}

export interface FeedStreamOptions {
  sessionId: string;
  /** Replay the session's durable events after this seq, then go live. */
  after: number;
  streamOffset?: number;
  /** Which durable events go out: `last` sends the event and ends the stream. Default: every one. */
  select?: (event: DurableEvent) => 'send' | 'skip' | 'last';
  /** Which token deltas go out. Default: every one. */
  selectDelta?: (delta: StreamDeltaData) => boolean;
  /** Send agent.status frames derived from the events sent (docs/presence.md), from this escalation state at `after`. */
  agentStatus?: { escalated: boolean };
}

/**
 * Follows a session's events over SSE (the caller's access is already checked): one SseFeed
 * subscription, counted per user, ended on revocation, kept alive, cut off when the reader
 * stalls. Each event goes out with its seq as the SSE id, so a reconnect resumes after it.
 */
export function streamFeedOverSse(deps: ApiDeps, ctx: Context, caller: Caller, opts: FeedStreamOptions): void {
  const { sessionId } = opts;
  refuseWhenStopping(deps);
  const maxStreams = deps.settings.rateLimits.sseStreamsPerUser;
  if (maxStreams > 0 && deps.connections.count('sse', caller.userId) >= maxStreams) {
    throw new KeelError('RATE_LIMIT_EXCEEDED', `At most ${maxStreams} open event streams per user`, { retryAfter: 1 });
  }
  const sse = openSse(ctx);
  const sendFrame = (frame: { type: string; sessionId: string; seq?: number; data: unknown }) => sse.send({ ...(frame.seq === undefined ? {} : { id: frame.seq }), event: frame.type, data: frame });
  /** Ends the stream with one `error` frame, as a WebSocket closes with one. */
  const endWith = (error: KeelError) => {
    if (sse.closed) return;
    deps.log.warn({ sessionId, code: error.code }, 'event stream ended by the server');
    deps.metrics.errors.inc({ code: error.code });
    sendFrame({ type: 'error', sessionId, data: error.toBody(ctx.state.requestId as string) });
    sse.end();
  };
  const status = opts.agentStatus ? new AgentStatusTracker(opts.agentStatus.escalated) : undefined;
  const subscription = deps.feed.open(
    { sessionId, after: opts.after, ...(opts.streamOffset === undefined ? {} : { streamOffset: opts.streamOffset }) },
    {
      event: (e) => {
        const verdict = opts.select?.(e) ?? 'send';
        if (verdict === 'skip') return;
        sendFrame(durableFrame(e));
        const now = status?.next(e);
        if (now) sendFrame({ type: 'agent.status', sessionId, data: now });
        if (verdict === 'last') sse.end();
      },
      delta: (d) => {
        if (!opts.selectDelta || opts.selectDelta(d)) sendFrame({ type: 'stream.delta', sessionId, data: d });
      },
      backlog: () => sse.backlog(),
      stopped: endWith,
    },
  );
  const unregister = deps.connections.add({
    kind: 'sse',
    userId: caller.userId,
    tokenKey: caller.tokenKey,
    end: (reason) => (reason === 'revoked' ? endWith(new KeelError('UNAUTHORIZED', 'The token is no longer valid')) : sse.end()),
  });
  // A stalled reader is also found between events: a keepalive that finds the buffer full starts the clock.
  const keepalive = setInterval(() => {
    if (sse.backlog() > deps.settings.api.maxBufferedBytes) subscription.checkBacklog();
    else sse.comment('keepalive');
  }, SSE_KEEPALIVE_MS);
  sse.onClose(() => {
    clearInterval(keepalive);
    unregister();
    subscription.close();
  });
}
