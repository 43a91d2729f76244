import Router from '@koa/router';
import { KeelError } from '../../contracts/errors';
import { IssueTokenBody } from '../../contracts/rest';
import { issueToken, revokeToken } from '../../db/tokens';
import type { ApiDeps } from '../deps';
import { parseInput } from '../errors';


/** Token administration, behind X-API-Key. */
export function adminRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1/admin' });
  router.use(deps.auth.adminGuard());

  router.post('/tokens', async (ctx) => {
    const body = parseInput(IssueTokenBody, ctx.request.body);
    const { id, token } = await issueToken(deps.pool, { userId: body.userId, isAdmin: body.admin, ...(body.label ? { label: body.label } : {}) });
    ctx.status = 201;
    ctx.body = { tokenId: id, token, userId: body.userId, admin: body.admin };
  });

  router.delete('/tokens/:id', async (ctx) => {
    if (!(await revokeToken(deps.pool, ctx.params.id ?? ''))) throw new KeelError('NOT_FOUND', 'No such token');
    ctx.status = 204;
  });

  return router;
}
