import Router from '@koa/router';
import { ConversationListQuery, ReplayQuery, type ReplayPage } from '../../contracts/conversations';
import { KeelError } from '../../contracts/errors';
import { Id } from '../../contracts/ids';
import { findConversation, listConversations, replayEvents } from '../../db/conversations';
import { callerOf } from '../auth';
import type { ApiDeps } from '../deps';
import { parseInput } from '../errors';
import { replaySteps } from '../replay-steps';

/** Conversation records and their replay (docs/replay-analytics.md); a conversation is a session. */
export function conversationRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.get('/conversations', async (ctx) => {
    const q = parseInput(ConversationListQuery, ctx.query);
    const caller = callerOf(ctx);
    ctx.body = await listConversations(deps.pool, {
      ownerId: caller.isAdmin ? null : caller.userId,
      resolution: q.status,
      agent: q.agent,
      from: q.from,
      to: q.to,
      limit: q.limit,
      after: q.cursor,
    });
  });

  router.get('/conversations/:id/replay', async (ctx) => {
    const parsed = Id.safeParse(ctx.params.id);
    if (!parsed.success) throw new KeelError('INVALID_ID', 'The conversation ID is malformed', [{ field: 'id', problem: 'must match ^[a-zA-Z0-9_-]{1,128}$' }]);
    const id = parsed.data;
    const q = parseInput(ReplayQuery, ctx.query);
    // Unknown, someone else's (for a non-admin) and deleted sessions alike: 404.
    await deps.sessions.require(id, callerOf(ctx));
    const [conversation, { page, openers }] = await Promise.all([findConversation(deps.pool, id), replayEvents(deps.pool, id, q.cursor ?? 0, q.limit)]);
    if (!conversation) throw new KeelError('SESSION_NOT_FOUND', 'No such session');
    const body: ReplayPage = {
      conversation,
      steps: replaySteps(page, openers),
      nextCursor: page.length === q.limit ? String(page[page.length - 1]!.event.seq) : null,
    };
    ctx.body = body;
  });

  return router;
}
