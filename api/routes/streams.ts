import { randomUUID } from 'node:crypto';
import Router from '@koa/router';
import type { Context } from 'koa';
import { KeelError, SESSION_EXPIRED_MESSAGE } from '../../contracts/errors';
import { Id } from '../../contracts/ids';
import { ChatBody } from '../../contracts/rest';
import type { ApiDeps } from '../deps';
import { callerOf } from '../auth';
import { envelopeOf, parseInput, recordFailure, toKeelError } from '../errors';
import { messageIdFor } from '../../contracts/ids';
import { openSse } from '../sse';
import { refuseWhenStopping, sseCursor, streamFeedOverSse } from '../feed-stream';
import { waitForTurn } from '../turn-waiter';
import { lastSeq } from '../../db/events';
import { escalatedAsOf } from '../../db/presence';

export function streamRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.get('/sessions/:id/events', async (ctx) => {
    const sessionId = parseInput(Id, ctx.params.id);
    const { after, streamOffset } = sseCursor(ctx);
    const caller = callerOf(ctx);
    // Read before the check: a deletion after the check is then an event this stream gets (session.deleted).
    const seqAtCheck = after === undefined ? await lastSeq(deps.pool, sessionId) : after;
    await deps.sessions.require(sessionId, caller);
    const escalated = await escalatedAsOf(deps.pool, sessionId, seqAtCheck);
    streamFeedOverSse(deps, ctx, caller, { sessionId, after: seqAtCheck, ...(streamOffset === undefined ? {} : { streamOffset }), agentStatus: { escalated } });
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

function chatError(deps: ApiDeps, ctx: Context, raw: unknown, send: (frame: { event: string; data: unknown }) => void): void {
  const error = toKeelError(raw);
  recordFailure(deps, error, raw, { requestId: ctx.state.requestId }, 'chat stream failed');
  send({ event: 'error', data: envelopeOf(error, ctx.state.requestId as string) });
}
