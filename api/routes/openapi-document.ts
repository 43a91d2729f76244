import Router from '@koa/router';
import { buildOpenApiDocument, OPENAPI_DOCUMENT_PATH } from '../openapi-document';

/**
 * GET /api/v1/openapi.json: the API's own OpenAPI 3.1 document (docs/protocol.md). Public, like
 * /health: it describes routes, never data. (Imports of other services' specs are /api/v1/openapi/imports.)
 */
export function openapiDocumentRoutes(): Router {
  const router = new Router();
  // Built once, on first use: it only changes with the code.
  let document: string | undefined;
  router.get(OPENAPI_DOCUMENT_PATH, (ctx) => {
    document ??= JSON.stringify(buildOpenApiDocument());
    ctx.type = 'application/json';
    ctx.body = document;
  });
  return router;
}
