import Router from '@koa/router';
import { UI_MESSAGE_STREAM_HEADERS } from 'ai';
import type { Context } from 'koa';
import { AiSdkChatBody, AiSdkChatParams } from '../../contracts/ai-sdk';
import { KeelError, SESSION_EXPIRED_MESSAGE } from '../../contracts/errors';
import type { DurableEventData } from '../../contracts/events';
import { messageIdFor } from '../../contracts/ids';
import { lastDoneTurn, turnOf, turnOutcome, turnStart } from '../../db/events';
import { storedMessage } from '../../db/messages';
import { sessionPendingApprovals } from '../../db/tool-calls';
import type { SessionRow } from '../../db/sessions';
import { callerOf, type Caller } from '../auth';
import { existingSessionOfThread, sessionForThread } from '../client-threads';
import type { ApiDeps } from '../deps';
import { parseInput, recordFailure, toKeelError } from '../errors';
import { refuseWhenStopping } from '../feed-stream';
import { openSse } from '../sse';
import { PauseRule } from '../pause-rule';
import { followTurn, turnFailure } from '../turn-waiter';
import { decideApprovals, type TurnToFollow } from '../ai-sdk/approval-decisions';
import { readChatRequest, regenerateKey } from '../ai-sdk/chat-request';
import { replyUiMessageId, UiMessageChunks } from '../ai-sdk/ui-message-chunks';

/**
 * The AI SDK's UI message stream (ai 6, `useChat` with its DefaultChatTransport): POST a chat's
 * new message or its approval answers, GET the reply in progress again. docs/ai-sdk.md.
 */
export function aiSdkRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1/ai-sdk' });

  router.post('/chat', async (ctx) => {
    const body = parseInput(AiSdkChatBody, ctx.request.body);
    const request = await readChatRequest(body);
    const caller = callerOf(ctx);
    refuseWhenStopping(deps);
    const thread = { protocol: 'ai-sdk' as const, threadId: body.id };
    // Answers belong to a chat that asked: an unknown one is refused without a session made for it.
    const session =
      request.kind === 'approvals'
        ? ((await existingSessionOfThread(deps, caller, thread)) ?? throwError(new KeelError('APPROVAL_NOT_FOUND', 'No such approval request')))
        : await sessionForThread(deps, caller, { ...thread, ...(body.agentId === undefined ? {} : { agentId: body.agentId }) });
    const sessionAgent = session.agent_id ?? deps.agents.defaultId;
    if (body.agentId !== undefined && body.agentId !== sessionAgent) {
      throw new KeelError('VALIDATION_ERROR', 'This chat belongs to another agent', [{ field: 'agentId', problem: `the chat's session runs agent ${sessionAgent}` }]);
    }
    if (session.status !== 'active') throw new KeelError('SESSION_EXPIRED', SESSION_EXPIRED_MESSAGE);
    const requestId = ctx.state.requestId as string;
    if (request.kind === 'message') {
      const { content } = request;
      const clientMessageId = typeof request.clientMessageId === 'string' ? request.clientMessageId : regenerateKey(request.clientMessageId.regenerateOf, await lastDoneTurn(deps.pool, session.id));
      const replyTo = messageIdFor(session.id, clientMessageId);
      // An edited message keeps its UI ID (useChat's sendMessage({ text, messageId })): the ID is taken, the content is not the same message.
      const stored = await storedMessage(deps.pool, replyTo);
      if (stored && stored.content !== content) {
        throw new KeelError('IDEMPOTENCY_KEY_REUSED', 'This message ID was already sent with other content; use a new message ID', { field: 'messages.id' });
      }
      // A repeated POST of a message already taken replays its turn from the start (as a resume does), and sends nothing.
      const turn = await turnOf(deps.pool, session.id, replyTo);
      const after = turn === null ? null : ((await turnStart(deps.pool, session.id, turn))?.before ?? null);
      if (turn === null) await refuseBehindApproval(deps, session.id);
      const send = async () => {
        await deps.sessions.sendMessage(caller, session.id, content, clientMessageId, 'chat', requestId);
      };
      const follow = async () => ({ replyTo, send, ...(turn === null || after === null ? {} : { turn, after }) });
      streamTurn(deps, ctx, session, { uiMessageId: replyUiMessageId(replyTo), follow });
    } else {
      // The stream continues the client's assistant message; the decisions are made inside it, so a refusal is its `error` chunk.
      streamTurn(deps, ctx, session, { uiMessageId: request.uiMessageId, knownToolCalls: request.toolCallIds, follow: () => decideApprovals(deps, caller, session.id, request.responses) });
    }
  });

  router.get('/chat/:id/stream', async (ctx) => {
    const { id } = parseInput(AiSdkChatParams, ctx.params);
    const caller = callerOf(ctx);
    refuseWhenStopping(deps);
    // A chat whose session was deleted has nothing running (a 404 would fail useChat's resume on mount).
    const running = await runningTurn(deps, caller, id).catch((error: unknown) => {
      if (error instanceof KeelError && error.code === 'SESSION_NOT_FOUND') return null;
      throw error;
    });
    if (!running) {
      ctx.status = 204;
      return;
    }
    const { session, turn, replyTo, after } = running;
    // Replayed from the turn's first event, so the client rebuilds the whole message (useChat's resumeStreamIsReplay).
    streamTurn(deps, ctx, session, { uiMessageId: replyUiMessageId(replyTo), follow: async () => ({ replyTo, turn, after, send: async () => undefined }) });
  });

  return router;
}

function throwError(error: KeelError): never {
  throw error;
}

/**
 * A new message while the session waits for a decision would wait behind it (until
 * KEEL_CHAT_TIMEOUT_MS): it is refused instead, unsent, with the approvals to answer.
 */
async function refuseBehindApproval(deps: ApiDeps, sessionId: string): Promise<void> {
  const open = await sessionPendingApprovals(deps.pool, sessionId);
  if (open.length === 0) return;
  const expiresAt = open.map((a) => a.expiresAt).sort()[0]!;
  throw new KeelError('APPROVAL_PENDING', 'The chat is waiting for an approval: answer it before sending a new message', { toolCallIds: open.map((a) => a.toolCallId), expiresAt });
}

/** The turn of the chat's session that has not ended, with the seq its replay starts after; null when none runs. */
async function runningTurn(deps: ApiDeps, caller: Caller, chatId: string) {
  const session = await existingSessionOfThread(deps, caller, { protocol: 'ai-sdk', threadId: chatId });
  if (!session || session.status !== 'active') return null;
  const running = (await deps.sessions.state(session.id))?.turnInProgress;
  if (!running) return null;
  // turn.done is written before the workflow hears that its turn is over.
  if ((await turnOutcome(deps.pool, session.id, running.replyTo)).some((e) => e.type === 'turn.done')) return null;
  const start = await turnStart(deps.pool, session.id, running.turn);
  return start === null ? null : { session, turn: running.turn, replyTo: running.replyTo, after: start.before };
}

/**
 * Answers with the UI message stream of one turn: `start`, then the turn as it happens (or is
 * replayed), ending with `finish` (the turn completed, or it waits for a person: its
 * `tool-approval-request`s come first) or `error`. The client going away stops the following;
 * the turn goes on. Bounded by KEEL_CHAT_TIMEOUT_MS, as /chat is.
 */
function streamTurn(deps: ApiDeps, ctx: Context, session: SessionRow, opts: { uiMessageId: string; knownToolCalls?: string[]; follow: () => Promise<TurnToFollow> }): void {
  // In flight until its answer is written out: a stopping API waits for it (KEEL_API_DRAIN_MS).
  ctx.res.once('close', deps.connections.chatStarted());
  const sse = openSse(ctx);
  ctx.set('x-vercel-ai-ui-message-stream', UI_MESSAGE_STREAM_HEADERS['x-vercel-ai-ui-message-stream']);
  const gone = new AbortController();
  sse.onClose(() => gone.abort());
  // `event: message` is SSE's default event type: the frame is what a bare `data:` line is.
  const chunks = new UiMessageChunks((chunk) => sse.send({ event: 'message', data: chunk }), opts.knownToolCalls);
  chunks.start(opts.uiMessageId, session.id);
  const run = async () => {
    const pause = await PauseRule.forSession(deps, session.agent_id ?? deps.agents.defaultId, session.agent_version);
    const follow = await opts.follow();
    const end = await followTurn(deps, {
      ...follow,
      sessionId: session.id,
      timeoutMs: deps.settings.api.chatTimeoutMs,
      backlog: () => sse.backlog(),
      signal: gone.signal,
      pauseOnApproval: { sequential: (agentId) => pause.sequential(agentId) },
      callbacks: {
        event: (event) => {
          void pause.started(event);
          chunks.event(event);
        },
        streamDelta: (delta) => chunks.delta(delta),
      },
    });
    if (end.kind === 'paused') {
      chunks.paused(end.approvals, { sessionId: session.id, turn: end.turn, awaitingApproval: end.approvals.map((a) => a.toolCallId) });
      return;
    }
    const done = end.done.data as DurableEventData<'turn.done'>;
    if (done.status !== 'completed') throw await turnFailure(deps, end.done);
    chunks.completed(done, { sessionId: session.id, turn: done.turn, messageId: done.messageId, usage: done.usage });
  };
  run()
    .catch((raw: unknown) => {
      if (sse.closed) return;
      const error = toKeelError(raw);
      recordFailure(deps, error, raw, { requestId: ctx.state.requestId }, 'ai-sdk chat stream failed');
      chunks.failed(error);
    })
    .finally(() => sse.end());
}
