import Router from '@koa/router';
import { Id } from '../../contracts/ids';
import { PageQuery } from '../../contracts/rest';
import { listEffects, type EffectRow } from '../../db/effects';
import type { ApiDeps } from '../deps';
import { callerOf } from '../auth';
import { parseInput } from '../errors';

/** One ledger entry as the API shows it (docs/tools.md, "Effects"). */
function effectView(row: EffectRow) {
  return {
    toolCallId: row.tool_call_id,
    tool: row.name,
    idempotencyKey: row.idempotency_key,
    idempotent: row.idempotent,
    status: row.status,
    attempts: row.attempts,
    result: row.result ?? null,
    errorCode: row.error_code,
    decidedBy: row.decided_by,
    intentAt: new Date(row.intent_at).toISOString(),
    receiptAt: row.receipt_at === null ? null : new Date(row.receipt_at).toISOString(),
  };
}

/** The effect ledger of a session: every write tool call's intent and receipt (owner or admin). */
export function effectRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });
  router.get('/sessions/:id/effects', async (ctx) => {
    const id = parseInput(Id, ctx.params.id);
    const page = parseInput(PageQuery, ctx.query);
    await deps.sessions.require(id, callerOf(ctx));
    const rows = await listEffects(deps.pool, id, { limit: page.limit, offset: page.after });
    ctx.body = { effects: rows.map(effectView), nextAfter: rows.length === page.limit ? page.after + rows.length : null };
  });
  return router;
}
