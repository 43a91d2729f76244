import Router from '@koa/router';
import { omitOptionalNulls, type BaseEvent } from '@ag-ui/core';
import { z } from 'zod';
import { AGENT_ID_PATTERN } from '../../contracts/agents';
import { KeelError, SESSION_EXPIRED_MESSAGE } from '../../contracts/errors';
import { callerOf } from '../auth';
import { existingSessionOfThread, sessionForThread } from '../client-threads';
import type { ApiDeps } from '../deps';
import { parseInput } from '../errors';
import { refuseWhenStopping } from '../feed-stream';
import { openSse } from '../sse';
import { AguiEventMapper } from '../agui/event-mapper';
import { parseRunInput } from '../agui/run-input';
import { runThread } from '../agui/run-thread';

export const AguiAgentParam = z.string().regex(AGENT_ID_PATTERN);

/** POST /api/v1/agui/:agentId: an AG-UI 1.0 agent endpoint over Keel sessions (docs/agui.md). */
export function aguiRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.post('/agui/:agentId', async (ctx) => {
    const agentId = parseInput(AguiAgentParam, ctx.params.agentId);
    const request = parseRunInput(ctx.request.body);
    if (!request.userMessage && request.resume.length === 0) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: 'messages', problem: 'a run needs a user message or resume entries' }]);
    const caller = callerOf(ctx);
    refuseWhenStopping(deps);
    const thread = { protocol: 'agui' as const, threadId: request.input.threadId, agentId };
    // Resume entries can only answer interrupts of a thread that exists: such a run never creates a session.
    const session = request.resume.length > 0 ? await existingSessionOfThread(deps, caller, thread) : await sessionForThread(deps, caller, thread);
    if (!session) throw new KeelError('APPROVAL_NOT_FOUND', 'No such interrupt in this thread');
    const sessionAgent = session.agent_id ?? deps.agents.defaultId;
    if (sessionAgent !== agentId) {
      throw new KeelError('VALIDATION_ERROR', 'This thread belongs to another agent', [{ field: 'agentId', problem: `the thread's session runs agent ${sessionAgent}` }]);
    }
    if (session.status !== 'active') throw new KeelError('SESSION_EXPIRED', SESSION_EXPIRED_MESSAGE);
    // In flight until its answer is written out: a stopping API waits for it (KEEL_API_DRAIN_MS).
    ctx.res.once('close', deps.connections.chatStarted());
    const sse = openSse(ctx);
    const gone = new AbortController();
    sse.onClose(() => gone.abort());
    const mapper = new AguiEventMapper(request.input, (event: BaseEvent) => sse.send({ event: event.type, data: omitOptionalNulls(event, 'Event') }));
    mapper.runStarted();
    void runThread({ deps, caller, sessionId: session.id, agentId: sessionAgent, agentVersion: session.agent_version, request, requestId: ctx.state.requestId as string, mapper, signal: gone.signal, backlog: () => sse.backlog() })
      .catch((error: unknown) => deps.log.error({ err: error, requestId: ctx.state.requestId }, 'AG-UI run could not report its end'))
      .finally(() => sse.end());
  });

  return router;
}
