/**
 * Not a workflow: the workflow interceptors the bundle registers (scripts/bundle-workflows.ts,
 * worker/tracing.ts). They continue the caller's trace into the workflow and on to its activities,
 * and hand finished spans to the worker's `exporter` sink. Only in a traced bundle
 * (scripts/bundle-workflows.ts --tracing); they add no commands, so a history replays the same
 * with or without them.
 */
import {
  OpenTelemetryInboundInterceptor,
  OpenTelemetryInternalsInterceptor,
  OpenTelemetryOutboundInterceptor,
} from '@temporalio/interceptors-opentelemetry/lib/workflow';
import type { WorkflowInterceptorsFactory } from '@temporalio/workflow';

export const interceptors: WorkflowInterceptorsFactory = () => ({
  inbound: [new OpenTelemetryInboundInterceptor()],
  outbound: [new OpenTelemetryOutboundInterceptor()],
  internals: [new OpenTelemetryInternalsInterceptor()],
});
