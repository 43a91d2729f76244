import { createLogger } from '../config/logger';
import { databaseUrlOf, loadSettings } from '../config/settings';
import { migrate } from '../db/migrate';
import { openPool } from '../db/pool';
import { createWorker } from './create-worker';

async function main() {
  const settings = loadSettings();
  const log = createLogger(settings, 'worker');
  const databaseUrl = databaseUrlOf(settings);
  const applied = await migrate(databaseUrl);
  if (applied.length) log.info({ applied }, 'migrations applied');
  const pool = await openPool(databaseUrl, settings.dbPoolSize);
  const { worker, connection } = await createWorker(settings, pool);
  const stop = () => worker.shutdown();
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
  log.info({ taskQueue: settings.temporal.taskQueue, model: settings.llm.model, baseUrl: settings.llm.baseUrl ?? 'api.openai.com' }, 'worker started');
  await worker.run();
  await connection.close();
  await pool.end();
  log.info('worker stopped');
}

main().catch((error: unknown) => {
  console.error('worker failed:', error);
  process.exit(1);
});
