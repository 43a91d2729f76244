import { isSpanContextValid, trace } from '@opentelemetry/api';
import pino from 'pino';
import type { Settings } from './settings';

/** The IDs of the active span (see config/tracing.ts), so a log line can be found from its trace. */
function activeTraceIds(): { trace_id?: string; span_id?: string } {
  const context = trace.getActiveSpan()?.spanContext();
  return context && isSpanContextValid(context) ? { trace_id: context.traceId, span_id: context.spanId } : {};
}

export function createLogger(settings: Settings, name: string) {
  return pino({
    name,
    level: settings.logLevel,
    redact: { paths: ['*.apiKey', '*.authorization', '*.content', 'content'], censor: '[redacted]' },
    // With tracing on, lines logged inside a span carry its trace_id and span_id.
    ...(settings.tracing.otlpTracesUrl ? { mixin: activeTraceIds } : {}),
  });
}
export type Logger = ReturnType<typeof createLogger>;
