import { randomUUID } from 'node:crypto';
import Router from '@koa/router';
import type { Context } from 'koa';
import { durableFrame } from '../../contracts/events';
import { KeelError, SESSION_EXPIRED_MESSAGE } from '../../contracts/errors';
import { Id } from '../../contracts/ids';
import { AfterSeqQuery, ChatBody } from '../../contracts/rest';
import type { ApiDeps } from '../deps';
import { callerOf } from '../auth';
import { envelopeOf, parseInput, toKeelError } from '../errors';
import { messageIdFor } from '../session-service';
import { openSse } from '../sse';
import { waitForTurn } from '../turn-waiter';
import { lastSeq } from '../../db/events';

const SSE_KEEPALIVE_MS = 15_000;

export function streamRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.get('/sessions/:id/events', async (ctx) => {
    const sessionId = parseInput(Id, ctx.params.id);
    const query = parseInput(AfterSeqQuery, ctx.query);
    const lastEventId = ctx.get('last-event-id');
    const after = lastEventId ? parseInput(AfterSeqQuery.shape.after, lastEventId) : query.after;
    const caller = callerOf(ctx);
    // Read before the check: a deletion after the check is then an event this stream gets (session.deleted).
    const seqAtCheck = after === undefined ? await lastSeq(deps.pool, sessionId) : after;
    await deps.sessions.require(sessionId, caller);
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
    const subscription = deps.feed.open(
      { sessionId, after: seqAtCheck, ...(query.streamOffset === undefined ? {} : { streamOffset: query.streamOffset }) },
      {
        event: (e) => sendFrame(durableFrame(e)),
        delta: (d) => sendFrame({ type: 'stream.delta', sessionId, data: d }),
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
  });

  router.post('/sessions/:id/chat', async (ctx) => {
    const sessionId = parseInput(Id, ctx.params.id);
    const body = parseInput(ChatBody, ctx.request.body);
    const caller = callerOf(ctx);
    const row = await deps.sessions.require(sessionId, caller);
    const requestId = ctx.state.requestId as string;
    const clientMessageId = body.clientMessageId ?? randomUUID();
    const replyTo = messageIdFor(sessionId, clientMessageId);
    const send = async () => {
      await deps.sessions.sendMessage(caller, sessionId, body.content, clientMessageId, 'chat', requestId);
    };
    const timeoutMs = deps.settings.api.chatTimeoutMs;
    refuseWhenStopping(deps);
    // In flight until its answer is written out: a stopping API waits for it (KEEL_API_DRAIN_MS).
    ctx.res.once('close', deps.connections.chatStarted());
    if (!body.stream) {
      ctx.body = await waitForTurn(deps, { sessionId, replyTo, send, timeoutMs });
      return;
    }
    // Fail before switching to SSE when the message cannot even be sent.
    if (row.status !== 'active') throw new KeelError('SESSION_EXPIRED', SESSION_EXPIRED_MESSAGE);
    const sse = openSse(ctx);
    const forward = (event: { type: string; seq: number; data: unknown }) => sse.send({ id: event.seq, event: event.type, data: event.data });
    waitForTurn(deps, {
      sessionId,
      replyTo,
      send,
      timeoutMs,
      backlog: () => sse.backlog(),
      callbacks: {
        delta: (text) => sse.send({ event: 'content', data: { content: text } }),
        restart: (attempt) => sse.send({ event: 'restart', data: { attempt } }),
        toolEvent: forward,
      },
    })
      .then((result) => sse.send({ event: 'done', data: result }))
      .catch((error: unknown) => chatError(deps, ctx, error, sse.send))
      .finally(() => sse.end());
  });

  return router;
}

function refuseWhenStopping(deps: ApiDeps): void {
  if (deps.connections.stopping) throw new KeelError('SERVICE_UNAVAILABLE', 'The server is shutting down; try again');
}

function chatError(deps: ApiDeps, ctx: Context, raw: unknown, send: (frame: { event: string; data: unknown }) => void): void {
  const error = toKeelError(raw);
  deps.metrics.errors.inc({ code: error.code });
  if (error.code === 'INTERNAL_ERROR' || error.code === 'SERVICE_UNAVAILABLE') deps.log.error({ err: error.cause ?? raw, requestId: ctx.state.requestId }, 'chat stream failed');
  send({ event: 'error', data: envelopeOf(error, ctx.state.requestId as string) });
}
