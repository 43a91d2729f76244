import {
  makeWorkflowExporter,
  OpenTelemetryActivityInboundInterceptor,
  OpenTelemetryActivityOutboundInterceptor,
  type OpenTelemetryWorkflowExporter,
} from '@temporalio/interceptors-opentelemetry';
import type { InjectedSinks, WorkerInterceptors } from '@temporalio/worker';
import type { Tracing } from '../config/tracing';

/**
 * Workflow interceptors, bundled only for tracing (`scripts/bundle-workflows.ts --tracing`): they
 * cost every workflow activation CPU and memory, so an untraced worker goes without.
 */
export const WORKFLOW_INTERCEPTOR_MODULES = [require.resolve('../workflows/interceptors')];

/**
 * What the worker adds for tracing. On: activity spans (continuing the workflow's trace) and the
 * sink that exports the spans workflows make. Off: a sink that drops them (should a traced
 * bundle run on an untraced worker), and nothing else.
 */
export function tracingWorkerOptions(tracing: Tracing | undefined): { interceptors: WorkerInterceptors; sinks: InjectedSinks<{ exporter: OpenTelemetryWorkflowExporter }> } {
  if (!tracing) return { interceptors: {}, sinks: { exporter: { export: { fn: () => undefined } } } };
  return {
    interceptors: {
      activity: [(ctx) => ({ inbound: new OpenTelemetryActivityInboundInterceptor(ctx), outbound: new OpenTelemetryActivityOutboundInterceptor(ctx) })],
    },
    sinks: { exporter: makeWorkflowExporter(tracing.spanProcessor, tracing.resource) },
  };
}
