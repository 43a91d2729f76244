import Router from '@koa/router';
import { sql } from 'slonik';
import { Id } from '../../contracts/ids';
import { CreateSessionBody, PageQuery, PostMessageBody, SessionListQuery } from '../../contracts/rest';
import { encodeConversationCursor } from '../../contracts/conversations';
import { lastSeq } from '../../db/events';
import { listMessages, usageTotals, type MessageRow } from '../../db/messages';
import { listSessions, type SessionRow } from '../../db/sessions';
import type { ApiDeps } from '../deps';
import { callerOf } from '../auth';
import { parseInput } from '../errors';
import { buildVersion } from '../../config/build-version';
import { issueEventsToken } from '../events-token';
import { withTimeout } from '../timeout';

export function sessionView(row: SessionRow) {
  return {
    id: row.id,
    title: row.title,
    agentId: row.agent_id,
    agentVersion: row.agent_version,
    ownerId: row.owner_id,
    status: row.status,
    createdAt: new Date(row.created_at).toISOString(),
    updatedAt: new Date(row.updated_at).toISOString(),
    endedAt: row.ended_at === null ? null : new Date(row.ended_at).toISOString(),
  };
}

function messageView(m: MessageRow) {
  return {
    id: m.id,
    turn: m.turn,
    role: m.role,
    content: m.content,
    clientMessageId: m.client_message_id,
    usage:
      m.role === 'assistant'
        ? { inputTokens: m.input_tokens ?? 0, outputTokens: m.output_tokens ?? 0, costUsd: m.cost_usd ?? 0, ...(m.input_tokens === null ? { usageMissing: true } : {}) }
        : null,
    createdAt: new Date(m.created_at).toISOString(),
  };
}

export function sessionRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.post('/sessions', async (ctx) => {
    const body = parseInput(CreateSessionBody, ctx.request.body ?? {});
    const row = await deps.sessions.create(callerOf(ctx), body);
    // Only here, once: the session's token for POST …/external-events, when its agent enables one (docs/presence.md).
    const eventsToken = await issueEventsToken(deps, row);
    ctx.status = 201;
    ctx.body = { ...sessionView(row), ...(eventsToken === undefined ? {} : { eventsToken }) };
  });

  router.get('/sessions', async (ctx) => {
    const q = parseInput(SessionListQuery, ctx.query);
    const caller = callerOf(ctx);
    const rows = await listSessions(deps.pool, { ownerId: caller.isAdmin ? null : caller.userId, status: q.status, agent: q.agent, limit: q.limit, after: q.cursor });
    const last = rows.length === q.limit ? rows[rows.length - 1] : undefined;
    ctx.body = {
      sessions: rows.map((r) => ({ ...sessionView(r), lastActivityAt: new Date(r.last_activity_at).toISOString(), pendingApprovals: r.pending_approvals })),
      nextCursor: last ? encodeConversationCursor({ at: last.created_at_us, id: last.id }) : null,
    };
  });

  router.get('/sessions/:id', async (ctx) => {
    const id = parseInput(Id, ctx.params.id);
    const row = await deps.sessions.require(id, callerOf(ctx));
    const [state, seq] = await Promise.all([row.status === 'active' ? deps.sessions.state(id) : null, lastSeq(deps.pool, id)]);
    ctx.body = { ...sessionView(row), lastSeq: seq, state };
  });

  router.post('/sessions/:id/messages', async (ctx) => {
    const id = parseInput(Id, ctx.params.id);
    const body = parseInput(PostMessageBody, ctx.request.body);
    const { messageId } = await deps.sessions.sendMessage(callerOf(ctx), id, body.content, body.clientMessageId, 'rest', ctx.state.requestId as string);
    ctx.status = 202;
    ctx.body = { messageId };
  });

  router.get('/sessions/:id/messages', async (ctx) => {
    const id = parseInput(Id, ctx.params.id);
    const page = parseInput(PageQuery, ctx.query);
    await deps.sessions.require(id, callerOf(ctx));
    const rows = await listMessages(deps.pool, id, { limit: page.limit, offset: page.after });
    ctx.body = { messages: rows.map(messageView), nextAfter: rows.length === page.limit ? page.after + rows.length : null };
  });

  router.get('/sessions/:id/usage', async (ctx) => {
    const id = parseInput(Id, ctx.params.id);
    await deps.sessions.require(id, callerOf(ctx));
    const t = await usageTotals(deps.pool, id);
    ctx.body = { sessionId: id, assistantMessages: t.messages, repliesWithoutUsage: t.without_usage, inputTokens: t.input_tokens, outputTokens: t.output_tokens, costUsd: t.cost_usd };
  });

  router.delete('/sessions/:id', async (ctx) => {
    const id = parseInput(Id, ctx.params.id);
    await deps.sessions.delete(callerOf(ctx), id);
    ctx.status = 204;
  });

  // No authentication on either: load balancers and orchestrators call them.
  const version = buildVersion(deps.settings.buildVersion);
  const checks = async () => {
    const [temporal, postgres, worker] = await Promise.all([
      deps.sessions.checkTemporal(),
      // Bounded like a connect: a Postgres that does not answer is down for a load balancer, not a hung probe.
      withTimeout(deps.pool.query(sql.unsafe`SELECT 1`), deps.settings.dbConnectTimeoutMs).then(() => true, () => false),
      deps.sessions.checkWorkerPolling(),
    ]);
    return { temporal, postgres, worker };
  };

  router.get('/health', async (ctx) => {
    const result = await checks();
    const ok = result.temporal && result.postgres;
    ctx.status = ok ? 200 : 503;
    ctx.body = { status: ok ? (result.worker ? 'ok' : 'degraded') : 'down', version, checks: result };
  });

  router.get('/ready', async (ctx) => {
    const result = await checks();
    const ready = result.temporal && result.postgres && result.worker;
    ctx.status = ready ? 200 : 503;
    ctx.body = { ready, checks: result };
  });

  return router;
}
