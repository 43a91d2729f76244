/**
 * Not a workflow: the workflow interceptors the bundle registers (scripts/bundle-workflows.ts,
 * worker/tracing.ts). They continue the caller's trace into the workflow and on to its activities,
 * and hand finished spans to the worker's `exporter` sink, which drops them when tracing is off.
 * Always bundled, so turning tracing on or off never changes what a replay runs.
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
