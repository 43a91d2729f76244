import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';

/**
 * Every metric the runtime exports, in one place. Labels never carry a session or user ID
 * (unbounded cardinality); per-session detail lives in the event log and Temporal.
 */
export function createMetrics(component: 'api' | 'worker', sources: { activeSessions?: () => Promise<number | null> } = {}) {
  const registry = new Registry();
  registry.setDefaultLabels({ component });
  collectDefaultMetrics({ register: registry, prefix: 'keel_process_' });
  const m = <T>(metric: T) => metric;
  return {
    registry,
    messagesAccepted: m(new Counter({ name: 'keel_messages_total', help: 'User messages accepted by the API', labelNames: ['channel'], registers: [registry] })),
    turns: m(new Counter({ name: 'keel_turns_total', help: 'Turns ended, by status', labelNames: ['status'], registers: [registry] })),
    modelCallDuration: m(new Histogram({ name: 'keel_model_call_seconds', help: 'One streamed model call, request to last chunk', buckets: [0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60], registers: [registry] })),
    timeToFirstToken: m(new Histogram({ name: 'keel_time_to_first_token_seconds', help: 'Model request to first streamed token', buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5], registers: [registry] })),
    toolCalls: m(new Counter({ name: 'keel_tool_calls_total', help: 'Tool calls by tool and final status', labelNames: ['tool', 'status'], registers: [registry] })),
    approvals: m(new Counter({ name: 'keel_approvals_total', help: 'Approval requests by outcome', labelNames: ['outcome'], registers: [registry] })),
    errors: m(new Counter({ name: 'keel_errors_total', help: 'Errors by stable code', labelNames: ['code'], registers: [registry] })),
    tokens: m(new Counter({ name: 'keel_tokens_total', help: 'Model tokens by direction', labelNames: ['direction'], registers: [registry] })),
    deltaPublishFailures: m(new Counter({ name: 'keel_delta_publish_failures_total', help: 'Streamed deltas that could not be published (clients get the whole text with stream.end)', registers: [registry] })),
    costUsd: m(new Counter({ name: 'keel_cost_usd_total', help: 'Model cost in USD from the price table', registers: [registry] })),
    activeSessions: m(
      new Gauge({
        name: 'keel_active_sessions',
        help: 'Sessions with status active (read from Postgres when scraped, so it is right across processes)',
        registers: sources.activeSessions ? [registry] : [],
        async collect() {
          const n = await sources.activeSessions?.();
          if (n !== null && n !== undefined) this.set(n);
        },
      }),
    ),
    openWebSockets: m(new Gauge({ name: 'keel_open_websockets', help: 'Open WebSocket connections', registers: [registry] })),
    channelLag: m(new Histogram({ name: 'keel_event_channel_lag_seconds', help: 'Durable event commit to arrival at this API process', buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5], registers: [registry] })),
    rollbacks: m(new Counter({ name: 'keel_release_rollbacks_total', help: 'Release versions rolled back by the health check, by the role they had', labelNames: ['role'], registers: [registry] })),
    alerts: m(new Counter({ name: 'keel_alerts_total', help: 'Operational incidents raised (new ones only), by kind: worker_stale, turn_stuck', labelNames: ['kind'], registers: [registry] })),
    runTimeToExecute: m(new Histogram({ name: 'keel_run_time_to_execute_seconds', help: 'Background run, submit to finish, by final status (observed once per run by the worker outbox)', labelNames: ['status'], buckets: [0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600], registers: [registry] })),
    runs: m(new Counter({ name: 'keel_runs_total', help: 'Background runs ended, by final status (done, error, cancelled)', labelNames: ['status'], registers: [registry] })),
    webhookDeliveries: m(new Counter({ name: 'keel_webhook_deliveries_total', help: 'Webhook POST attempts by target kind and outcome', labelNames: ['kind', 'outcome'], registers: [registry] })),
    httpDuration: m(new Histogram({ name: 'keel_http_request_seconds', help: 'REST request duration by route and status', labelNames: ['method', 'route', 'status'], buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5, 30], registers: [registry] })),
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
