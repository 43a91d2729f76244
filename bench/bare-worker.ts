import path from 'node:path';
import { NativeConnection, Worker } from '@temporalio/worker';
import { createBareActivities } from './bare-activities';

/**
 * The bare loop's worker as a process of its own, as Keel's worker is: TEMPORAL_ADDRESS,
 * OPENAI_BASE_URL and BARE_TASK_QUEUE from the environment; SIGTERM shuts it down.
 */
async function main() {
  const connection = await NativeConnection.connect({ address: process.env.TEMPORAL_ADDRESS! });
  const worker = await Worker.create({
    connection,
    taskQueue: process.env.BARE_TASK_QUEUE ?? 'bench-bare',
    workflowsPath: path.join(__dirname, 'bare-workflow.ts'),
    activities: createBareActivities(process.env.OPENAI_BASE_URL!),
  });
  process.once('SIGTERM', () => worker.shutdown());
  const running = worker.run();
  console.log('bare worker started');
  await running;
  await connection.close();
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
