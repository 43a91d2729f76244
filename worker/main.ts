import { createLogger } from '../config/logger';
import { databaseUrlOf, loadSettings } from '../config/settings';
import { migrate } from '../db/migrate';
import { openPool } from '../db/pool';
import { createMetrics } from '../config/metrics';
import { startTracing } from '../config/tracing';
import { createWorker } from './create-worker';
import { Outbox } from './outbox';
import { buildVersion } from '../config/build-version';
import { WorkerHeartbeat } from './heartbeat';
import { ensureReleaseSchedule } from './release-schedule';
import { installTemporalRuntime, startWorkerMetricsServer } from './metrics-server';

async function main() {
  const settings = loadSettings();
  const log = createLogger(settings, 'worker');
  const tracing = startTracing(settings, 'keel-worker');
  const databaseUrl = databaseUrlOf(settings);
  const applied = await migrate(databaseUrl);
  if (applied.length) log.info({ applied }, 'migrations applied');
  const pool = await openPool(databaseUrl, settings.dbPoolSize, { connectTimeoutMs: settings.dbConnectTimeoutMs });
  const metrics = createMetrics('worker');
  const temporalMetricsPort = await installTemporalRuntime();
  const { worker, connection, client, clientConnection, turns, mcp } = await createWorker(settings, pool, metrics, log, tracing);
  await ensureReleaseSchedule(client, settings, log);
  const metricsServer = await startWorkerMetricsServer(metrics, settings.workerMetricsPort, temporalMetricsPort);
  const metricsAddress = metricsServer.address();
  log.info({ port: typeof metricsAddress === 'object' && metricsAddress ? metricsAddress.port : settings.workerMetricsPort }, 'worker metrics listening');
  const stop = () => worker.shutdown();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  const heartbeat = new WorkerHeartbeat({
    pool,
    identity: worker.options.identity,
    buildVersion: buildVersion(settings.buildVersion),
    taskQueue: settings.temporal.taskQueue,
    everyMs: settings.operations.workerHeartbeatMs,
    turns,
    log,
  });
  heartbeat.start();
  // Webhooks, run metrics and incident notifications (docs/runs.md).
  const outbox = new Outbox({ pool, client, settings, metrics, log });
  outbox.start();
  log.info({ taskQueue: settings.temporal.taskQueue, deployment: settings.temporal.deployment ?? null, model: settings.llm.model, baseUrl: settings.llm.baseUrl ?? 'api.openai.com' }, 'worker started');
  await worker.run();
  // After the drain: a clean stop marks the row stopped, so it raises no stale-worker alert.
  await heartbeat.stop();
  await outbox.stop();
  await mcp.close();
  metricsServer.close();
  await connection.close();
  await clientConnection.close();
  await pool.end();
  await tracing?.shutdown();
  log.info('worker stopped');
}

main().catch((error: unknown) => {
  console.error('worker failed:', error);
  process.exit(1);
});
