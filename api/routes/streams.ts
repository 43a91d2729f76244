import { randomUUID } from 'node:crypto';
import Router from '@koa/router';
import { durableFrame } from '../../contracts/events';
import { KeelError } from '../../contracts/errors';
import { Id } from '../../contracts/ids';
import { AfterSeqQuery, ChatBody } from '../../contracts/rest';
import type { ApiDeps } from '../deps';
import { callerOf } from '../auth';
import { envelopeOf, parseInput, toKeelError } from '../errors';
import { messageIdFor } from '../session-service';
import { openSessionStream } from '../session-stream';
import { openSse } from '../sse';
import { waitForTurn } from '../turn-waiter';

const SSE_KEEPALIVE_MS = 15_000;

export function streamRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.get('/sessions/:id/events', async (ctx) => {
    const sessionId = parseInput(Id, ctx.params.id);
    const query = parseInput(AfterSeqQuery, ctx.query);
    const lastEventId = ctx.get('last-event-id');
    const after = lastEventId ? parseInput(AfterSeqQuery.shape.after, lastEventId) : query.after;
    await deps.sessions.require(sessionId, callerOf(ctx));
    const sse = openSse(ctx);
    const stream = await openSessionStream(
      deps.hub,
      deps.pool,
      { sessionId, ...(after === undefined ? {} : { after }), ...(query.streamOffset === undefined ? {} : { streamOffset: query.streamOffset }) },
      {
        event: (e) => sse.send({ id: e.seq, event: e.type, data: durableFrame(e) }),
        delta: (d) => sse.send({ event: 'stream.delta', data: { type: 'stream.delta', sessionId, data: d } }),
      },
      (error) => deps.log.warn({ err: error, sessionId }, 'event stream failed'),
    );
    const keepalive = setInterval(() => sse.comment('keepalive'), SSE_KEEPALIVE_MS);
    sse.onClose(() => {
      clearInterval(keepalive);
      stream.close();
    });
  });

  router.post('/sessions/:id/chat', async (ctx) => {
    const sessionId = parseInput(Id, ctx.params.id);
    const body = parseInput(ChatBody, ctx.request.body);
    const caller = callerOf(ctx);
    await deps.sessions.require(sessionId, caller);
    const clientMessageId = body.clientMessageId ?? randomUUID();
    const replyTo = messageIdFor(sessionId, clientMessageId);
    const send = async () => {
      await deps.sessions.sendMessage(caller, sessionId, body.content, clientMessageId, 'chat', ctx.state.requestId as string);
    };
    const timeout = deps.settings.api.chatTimeoutMs;
    if (!body.stream) {
      ctx.body = await waitForTurn(deps, sessionId, replyTo, send, {}, timeout);
      return;
    }
    // Fail before switching to SSE when the message cannot even be sent.
    await deps.sessions.require(sessionId, caller).then((row) => {
      if (row.status !== 'active') throw new KeelError('SESSION_EXPIRED', 'Session expired. Please start a new conversation.');
    });
    const sse = openSse(ctx);
    const callbacks = {
      delta: (text: string) => sse.send({ event: 'content', data: { content: text } }),
      restart: (attempt: number) => sse.send({ event: 'restart', data: { attempt } }),
    };
    waitForTurn(deps, sessionId, replyTo, send, callbacks, timeout)
      .then((result) => sse.send({ event: 'done', data: result }))
      .catch((error: unknown) => sse.send({ event: 'error', data: envelopeOf(toKeelError(error), ctx.state.requestId as string) }))
      .finally(() => sse.end());
  });

  return router;
}
