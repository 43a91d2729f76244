import Router from '@koa/router';
import { Id } from '../../contracts/ids';
import { ApprovalBody, ApprovalListQuery, CancelBody } from '../../contracts/rest';
import { pendingApprovals, type ToolCallRow } from '../../db/tool-calls';
import type { ApiDeps } from '../deps';
import { callerOf } from '../auth';
import { parseInput } from '../errors';

function approvalView(row: ToolCallRow) {
  return {
    toolCallId: row.id,
    sessionId: row.session_id,
    name: row.name,
    arguments: row.arguments,
    digest: row.digest,
    turn: row.turn,
    requestedAt: new Date(row.created_at).toISOString(),
    expiresAt: row.expires_at === null ? null : new Date(row.expires_at).toISOString(),
  };
}

/** Approvals and turn control (agents and their releases: routes/releases.ts). */
export function agentRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.get('/approvals', async (ctx) => {
    const query = parseInput(ApprovalListQuery, ctx.query);
    const caller = callerOf(ctx);
    ctx.body = { approvals: (await pendingApprovals(deps.pool, query.limit, caller.isAdmin ? null : caller.userId)).map(approvalView) };
  });

  router.post('/sessions/:id/approvals/:toolCallId', async (ctx) => {
    const sessionId = parseInput(Id, ctx.params.id);
    const toolCallId = parseInput(Id, ctx.params.toolCallId);
    const body = parseInput(ApprovalBody, ctx.request.body);
    const { approver, ...rest } = body;
    const caller = callerOf(ctx);
    // The approver is the caller; an admin may record whom they decide for.
    const decidedBy = caller.isAdmin && approver ? approver : caller.userId;
    ctx.body = await deps.sessions.decideApproval(caller, sessionId, { toolCallId, ...rest, decidedBy });
  });

  router.post('/sessions/:id/cancel', async (ctx) => {
    const sessionId = parseInput(Id, ctx.params.id);
    const body = parseInput(CancelBody, ctx.request.body ?? {});
    ctx.body = await deps.sessions.cancelTurn(callerOf(ctx), sessionId, { ...body, requestId: ctx.state.requestId as string });
  });

  return router;
}
