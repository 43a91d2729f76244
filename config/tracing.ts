import { setTimeout as sleep } from 'node:timers/promises';
import { SpanKind } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { Resource } from '@opentelemetry/resources';
import { BasicTracerProvider, BatchSpanProcessor, ParentBasedSampler, SamplingDecision, type Sampler, type SpanProcessor } from '@opentelemetry/sdk-trace-base';
import type { Settings } from './settings';

/** A started tracing SDK: spans of this process go, batched, to the OTLP endpoint. */
export interface Tracing {
  readonly resource: Resource;
  /** The worker also feeds it the spans its workflows make in the sandbox. */
  readonly spanProcessor: SpanProcessor;
  /** Exports what is still buffered (giving up after a few seconds: a dead collector must not hold up exit); call once, on the way out. */
  shutdown(): Promise<void>;
}

const SHUTDOWN_TIMEOUT_MS = 5_000;

/**
 * A trace starts at a request (a SERVER span: HTTP request, WebSocket frame) or continues one
 * (a span whose parent came in a header). Spans outside both, such as the queries slonik traces
 * for the event hub's background work, are not recorded.
 */
const requestsOnly: Sampler = {
  shouldSample: (_context, _traceId, _name, kind) => ({ decision: kind === SpanKind.SERVER ? SamplingDecision.RECORD_AND_SAMPLED : SamplingDecision.NOT_RECORD }),
  toString: () => 'RequestsOnly',
};

/**
 * Starts OpenTelemetry tracing (OTLP over HTTP, JSON) when an endpoint is configured; otherwise
 * returns undefined and nothing is started: the @opentelemetry/api calls elsewhere stay no-ops.
 */
export function startTracing(settings: Settings, serviceName: 'keel-api' | 'keel-worker'): Tracing | undefined {
  const url = settings.tracing.otlpTracesUrl;
  if (!url) return undefined;
  const resource = new Resource({ 'service.name': serviceName });
  const spanProcessor = new BatchSpanProcessor(new OTLPTraceExporter({ url }), { scheduledDelayMillis: settings.tracing.batchDelayMs });
  const provider = new BasicTracerProvider({ resource, spanProcessors: [spanProcessor], sampler: new ParentBasedSampler({ root: requestsOnly }) });
  // W3C trace context propagation, and an active context that follows async calls.
  provider.register({ contextManager: new AsyncLocalStorageContextManager() });
  return {
    resource,
    spanProcessor,
    shutdown: () => Promise.race([provider.shutdown().catch(() => undefined), sleep(SHUTDOWN_TIMEOUT_MS, undefined, { ref: false })]),
  };
}
