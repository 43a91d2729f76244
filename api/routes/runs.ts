import Router from '@koa/router';
import type { DurableEvent, DurableEventData } from '../../contracts/events';
import { isFinalRunStatus, RunId, RunListQuery, SubmitRunBody } from '../../contracts/runs';
import { toolEventsOfTurn } from '../../db/events';
import { runTransitions, runView, type RunRecord } from '../../db/runs';
import { deliveriesOf, deliveryView } from '../../db/webhooks';
import { callerOf } from '../auth';
import type { ApiDeps } from '../deps';
import { parseInput } from '../errors';
import { sseCursor, streamFeedOverSse } from '../feed-stream';
import { RunService } from '../run-service';
import { openSse } from '../sse';

export function runRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });
  const runs = new RunService(deps);

  // 202 for a new run and for a repeat alike (`created` tells them apart): either way the run is in the system.
  router.post('/runs', async (ctx) => {
    const body = parseInput(SubmitRunBody, ctx.request.body);
    const { run, created } = await runs.submit(callerOf(ctx), body, ctx.state.requestId as string);
    ctx.status = 202;
    ctx.body = { runId: run.id, sessionId: run.session_id, created, status: run.status };
  });

  router.get('/runs', async (ctx) => {
    const query = parseInput(RunListQuery, ctx.query);
    const rows = await runs.list(callerOf(ctx), { limit: query.limit, ...(query.status === undefined ? {} : { status: query.status }) });
    ctx.body = { runs: rows.map(runView) };
  });

  router.get('/runs/:id', async (ctx) => {
    const run = await runs.get(callerOf(ctx), parseInput(RunId, ctx.params.id));
    const [transitions, deliveries] = await Promise.all([runTransitions(deps.pool, run.id), run.webhook_url ? deliveriesOf(deps.pool, { kind: 'run', id: run.id }) : []]);
    const view = runView(run);
    ctx.body = {
      ...view,
      webhook: view.webhook && { ...view.webhook, attempts: deliveries.map(deliveryView) },
      transitions: transitions.map((t) => ({ status: t.status, at: new Date(t.at).toISOString(), cause: t.cause })),
    };
  });

  router.post('/runs/:id/cancel', async (ctx) => {
    const run = await runs.cancel(callerOf(ctx), parseInput(RunId, ctx.params.id), ctx.state.requestId as string);
    ctx.body = runView(run);
  });

  // The run's share of its session's event stream: resumable like /sessions/:id/events, ending after the run's last event.
  router.get('/runs/:id/events', async (ctx) => {
    const runId = parseInput(RunId, ctx.params.id);
    const cursor = sseCursor(ctx);
    const caller = callerOf(ctx);
    const run = await runs.get(caller, runId);
    // A deleted session's content is gone, its runs' share too (as GET /sessions/:id/events answers).
    if (run.session_id !== null) await deps.sessions.require(run.session_id, caller);
    const after = cursor.after ?? run.start_seq;
    if (run.session_id === null || (run.final_seq !== null && after >= run.final_seq)) {
      // Nothing of the run is left to send (or it never reached a session): an empty stream that ends.
      openSse(ctx).end();
      return;
    }
    const toolCallIds = new Set(run.turn === null ? [] : (await toolEventsOfTurn(deps.pool, run.session_id, run.turn)).map((e) => (e.data as { toolCallId: string }).toolCallId));
    streamFeedOverSse(deps, ctx, caller, { sessionId: run.session_id, after, ...(cursor.streamOffset === undefined ? {} : { streamOffset: cursor.streamOffset }), ...runFilter(run, toolCallIds) });
  });

  return router;
}

/**
 * Which of the session's events belong to the run: its message's acceptance, the events of its
 * turn (found by turn number, stream ID or tool call ID) and its own run.progress, the final one
 * of which ends the stream.
 */
function runFilter(run: RunRecord, toolCallIds: Set<string>) {
  let turn = run.turn;
  const ofTurn = (t: number | undefined) => turn !== null && t === turn;
  // Stream IDs are `t<turn>-s<step>` (contracts/turn.ts streamIdOf).
  const ofStream = (streamId: string) => turn !== null && streamId.startsWith(`t${turn}-s`);
  const select = (event: DurableEvent): 'send' | 'skip' | 'last' => {
    switch (event.type) {
      case 'run.progress': {
        const d = event.data as DurableEventData<'run.progress'>;
        if (d.runId !== run.id) return 'skip';
        return isFinalRunStatus(d.status) ? 'last' : 'send';
      }
      case 'message.accepted': {
        const d = event.data as DurableEventData<'message.accepted'>;
        if (d.messageId !== run.message_id) return 'skip';
        turn = d.turn;
        return 'send';
      }
      case 'stream.start':
      case 'turn.done':
      case 'approval.required':
        return ofTurn((event.data as { turn: number }).turn) ? 'send' : 'skip';
      case 'tool.call': {
        const d = event.data as DurableEventData<'tool.call'>;
        if (!ofTurn(d.turn)) return 'skip';
        toolCallIds.add(d.toolCallId);
        return 'send';
      }
      case 'approval.resolved':
      case 'tool.result':
        return toolCallIds.has((event.data as { toolCallId: string }).toolCallId) ? 'send' : 'skip';
      case 'stream.end':
        return ofStream((event.data as DurableEventData<'stream.end'>).streamId) ? 'send' : 'skip';
      case 'error': {
        const d = event.data as DurableEventData<'error'>;
        return ofTurn(d.turn) || (d.turn === undefined && d.replyTo !== undefined && d.replyTo === run.message_id) ? 'send' : 'skip';
      }
      // Sent, and the feed then ends the stream (SESSION_NOT_FOUND), as it ends the session's.
      case 'session.deleted':
        return 'send';
      default:
        return 'skip';
    }
  };
  return { select, selectDelta: (d: { streamId: string }) => ofStream(d.streamId) };
}
