import { effectRoutes } from './routes/effects';
import { bodyParser } from '@koa/bodyparser';
import Koa from 'koa';
import type { ApiDeps } from './deps';
import { errorMiddleware, requireJsonBody } from './errors';
import { requestLog } from './request-log';
import { sessionRoutes } from './routes/sessions';
import { streamRoutes } from './routes/streams';
import { agentRoutes } from './routes/agents';
import { httpMetrics, metricsRoutes } from './metrics';
import { httpServerSpans } from './tracing';
import { adminRoutes } from './routes/admin';
import { workerRoutes } from './routes/workers';
import { releaseRoutes } from './routes/releases';
import { runRoutes } from './routes/runs';
import { sloRoutes } from './routes/slo';
import { presenceRoutes } from './routes/presence';
import { conversationRoutes } from './routes/conversations';
import { analyticsRoutes } from './routes/analytics';
import { openapiRoutes } from './routes/openapi';
import { openapiDocumentRoutes } from './routes/openapi-document';
import { aiSdkRoutes } from './routes/ai-sdk';
import { aguiRoutes } from './routes/agui';
import { consoleMiddleware } from './console';

/** Routes whose bodies carry a client's whole conversation: KEEL_CLIENT_HISTORY_BODY_LIMIT, not KEEL_REST_BODY_LIMIT. */
const CLIENT_HISTORY_ROUTES = /^\/api\/v1\/(agui|ai-sdk)\//;

export function createApp(deps: ApiDeps): Koa {
  const app = new Koa();
  app.proxy = false;
  app.silent = true;
  if (deps.settings.tracing.otlpTracesUrl) app.use(httpServerSpans());
  app.use(httpMetrics(deps.metrics));
  app.use(requestLog(deps.log));
  app.use(errorMiddleware(deps.log, deps.metrics));
  // Public (docs/protocol.md, "The OpenAPI document"), so mounted before authentication and rate limits.
  const openapiDocument = openapiDocumentRoutes();
  app.use(openapiDocument.routes());
  app.use(openapiDocument.allowedMethods());
  // The web console's files (docs/console.md): public like the document; the API calls they make are authenticated.
  app.use(consoleMiddleware({ dir: deps.settings.api.consoleDir }));
  app.use(deps.auth.middleware());
  app.use(deps.limiter.middleware());
  app.use(requireJsonBody());
  const parseJson = (jsonLimit: string) =>
    bodyParser({
      enableTypes: ['json'],
      jsonLimit,
      onError: (error) => {
        throw error;
      },
    });
  // AG-UI and AI SDK clients send the whole conversation on every run (docs/agui.md, docs/ai-sdk.md).
  const clientHistory = parseJson(deps.settings.api.clientHistoryBodyLimit);
  app.use((ctx, next) => (CLIENT_HISTORY_ROUTES.test(ctx.path) ? clientHistory(ctx, next) : next()));
  app.use(parseJson(deps.settings.api.restBodyLimit));
  for (const router of [sessionRoutes(deps), streamRoutes(deps), agentRoutes(deps), releaseRoutes(deps), metricsRoutes(deps), adminRoutes(deps), workerRoutes(deps), runRoutes(deps), sloRoutes(deps), presenceRoutes(deps), conversationRoutes(deps), analyticsRoutes(deps), openapiRoutes(deps), effectRoutes(deps), aiSdkRoutes(deps), aguiRoutes(deps)]) {
    app.use(router.routes());
    app.use(router.allowedMethods());
  }
  return app;
}
