import { context, propagation, SpanKind, SpanStatusCode, trace, type Span } from '@opentelemetry/api';
import type { ClientInterceptors } from '@temporalio/client';
import { OpenTelemetryWorkflowClientInterceptor } from '@temporalio/interceptors-opentelemetry';
import type { Context, Middleware, Next } from 'koa';
import type { Settings } from '../config/settings';

/**
 * API spans. Each uses @opentelemetry/api, which is a no-op until config/tracing.ts starts the
 * SDK; where it costs a middleware or an interceptor, it is only installed when tracing is on.
 */
const tracer = () => trace.getTracer('keel-api');

/** Temporal client calls (start, signal, update, query) become spans and carry the trace into the workflow. */
export function tracingClientInterceptors(settings: Settings): ClientInterceptors {
  return settings.tracing.otlpTracesUrl ? { workflow: [new OpenTelemetryWorkflowClientInterceptor()] } : {};
}

/** Scrapes and probes, which would bury the traces that matter. */
const UNTRACED_PATHS = new Set(['/metrics', '/api/v1/health', '/api/v1/ready']);

/** One server span per HTTP request, named by its route pattern, continuing a caller's `traceparent`. */
export function httpServerSpans(): Middleware {
  return async (ctx: Context, next: Next) => {
    if (UNTRACED_PATHS.has(ctx.path)) return next();
    const parent = propagation.extract(context.active(), ctx.headers);
    const span = tracer().startSpan(ctx.method, { kind: SpanKind.SERVER, attributes: { 'http.request.method': ctx.method, 'url.path': ctx.path } }, parent);
    try {
      await context.with(trace.setSpan(parent, span), next);
    } catch (error) {
      failed(span, error);
      throw error;
    } finally {
      const route = (ctx as Context & { _matchedRoute?: string })._matchedRoute;
      if (route) span.updateName(`${ctx.method} ${route}`).setAttribute('http.route', route);
      span.setAttribute('http.response.status_code', ctx.status);
      if (ctx.status >= 500) span.setStatus({ code: SpanStatusCode.ERROR });
      span.end();
    }
  };
}

/** One span per WebSocket frame handled: the signals and updates it causes join its trace. */
export function inFrameSpan(sessionId: string, handle: () => Promise<void>): () => Promise<void> {
  return () =>
    tracer().startActiveSpan('WS frame', { kind: SpanKind.SERVER, attributes: { 'keel.session_id': sessionId } }, async (span) => {
      try {
        await handle();
      } catch (error) {
        failed(span, error);
        throw error;
      } finally {
        span.end();
      }
    });
}

/** Names the current frame span by the frame's type once it is parsed. */
export function nameFrameSpan(type: string): void {
  trace.getActiveSpan()?.updateName(`WS ${type}`);
}

function failed(span: Span, error: unknown) {
  span.recordException(error instanceof Error ? error : String(error));
  span.setStatus({ code: SpanStatusCode.ERROR });
}
