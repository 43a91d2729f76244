import { readFileSync } from 'node:fs';
import { Client, Connection } from '@temporalio/client';
import { NativeConnection, Worker } from '@temporalio/worker';
import OpenAI from 'openai';
import type { DatabasePool } from 'slonik';
import { createEscalationActivities, createPersistenceActivities, createReleaseActivities, createStreamReplyActivities, createToolActivities } from '../activities';
import { createToolCatalog } from '../tools';
import { AgentVersions } from '../agents/versions';
import type { Metrics } from '../config/metrics';
import type { Logger } from '../config/logger';
import { temporalAddressOf, type Settings } from '../config/settings';
import type { Tracing } from '../config/tracing';
import { tracingWorkerOptions, WORKFLOW_INTERCEPTOR_MODULES } from './tracing';
import { createNotifyActivities } from '../notify/deliver-webhook';
import { createAlertActivities } from '../activities/alerts';
import { createRoutingActivities } from '../activities/routing';
import { workerIdentity } from './heartbeat';
import { TurnTracker } from './turn-tracker';

export async function createWorker(settings: Settings, pool: DatabasePool, metrics: Metrics, log: Logger, tracing?: Tracing) {
  const connection = await NativeConnection.connect({ address: temporalAddressOf(settings) });
  // maxRetries 0: Temporal's retry policy owns retrying, with backoff and attempt numbers clients can see.
  const openai = new OpenAI({
    apiKey: settings.llm.apiKey ?? 'no-key-configured',
    ...(settings.llm.baseUrl ? { baseURL: settings.llm.baseUrl } : {}),
    maxRetries: 0,
    timeout: settings.llm.timeoutMs,
  });
  const catalog = createToolCatalog(pool, settings.tools);
  const agents = new AgentVersions(pool, catalog);
  // A client for what activities start or signal themselves (moving sessions off a rolled-back version).
  const clientConnection = await Connection.connect({ address: temporalAddressOf(settings) });
  const client = new Client({ connection: clientConnection, namespace: settings.temporal.namespace });
  const activities = {
    ...createStreamReplyActivities({ pool, openai, agents, streamCoalesceMs: settings.llm.streamCoalesceMs, prices: settings.prices, metrics, log }),
    ...createPersistenceActivities({ pool, metrics, log }),
    ...createRoutingActivities({ pool, openai, agents, prices: settings.prices, log }),
    ...createToolActivities({ pool, tools: catalog.tools, catalog, toolSettings: settings.tools, metrics }),
    ...createAlertActivities({ pool, metrics, log, thresholds: settings.operations }),
    ...createReleaseActivities({ pool, openai, client, versions: agents, tools: catalog.tools, settings, metrics, log }),
    ...createNotifyActivities({ pool, secret: settings.webhooks.secret, allowHosts: settings.webhooks.allowHosts, metrics, log }),
    ...createEscalationActivities({ pool, agents, settings: settings.escalation, allowHosts: settings.webhooks.allowHosts, metrics, log }),
  };
  const bundle = settings.temporal.workflowBundlePath;
  const workflowSource = bundle ? { workflowBundle: { codePath: bundle } } : { workflowsPath: require.resolve('../workflows') };
  const { interceptors, sinks } = tracingWorkerOptions(tracing);
  if (tracing && bundle && !readFileSync(bundle, 'utf8').includes('OpenTelemetryInboundInterceptor')) {
    log.warn({ bundle }, 'tracing is on but the workflow bundle has no tracing interceptors (build it with scripts/bundle-workflows.ts --tracing): workflow spans are missing');
  }
  // Counts this worker's turns for its heartbeat (worker/heartbeat.ts).
  const turns = new TurnTracker(metrics);
  const worker = await Worker.create({
    connection,
    identity: workerIdentity(),
    namespace: settings.temporal.namespace,
    taskQueue: settings.temporal.taskQueue,
    activities,
    stickyQueueScheduleToStartTimeout: settings.temporal.stickyQueueTimeoutMs,
    // A deploy lets running model streams and tools finish instead of restarting them elsewhere.
    shutdownGraceTime: settings.worker.shutdownGraceMs,
    // The SDK holds heartbeats back for up to 0.8 of the heartbeat time-out (8 s by default): a
    // cancel waiting for the next one would reach a running model call or tool that late.
    maxHeartbeatThrottleInterval: settings.worker.heartbeatThrottleMs,
    defaultHeartbeatThrottleInterval: settings.worker.heartbeatThrottleMs,
    ...workflowSource,
    // A prebuilt bundle holds its workflow interceptors (bundle-workflows.ts --tracing); one built here gets them when tracing is on.
    interceptors: turns.with(bundle || !tracing ? interceptors : { ...interceptors, workflowModules: WORKFLOW_INTERCEPTOR_MODULES }),
    sinks,
  });
  return { worker, connection, client, clientConnection, turns };
}
