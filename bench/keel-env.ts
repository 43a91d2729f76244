import { bundleWorkflows } from '../scripts/bundle-workflows';

/**
 * What a benchmark's Keel worker and API run with: where the services are, the bench's admin key,
 * and default settings for everything else (each bench adds what it must set, with the reason).
 */
export async function keelEnv(opts: { temporalAddress: string; databaseUrl: string; modelUrl: string; taskQueue: string; adminKey: string }): Promise<Record<string, string>> {
  return {
    TEMPORAL_ADDRESS: opts.temporalAddress,
    DATABASE_URL: opts.databaseUrl,
    KEEL_TASK_QUEUE: opts.taskQueue,
    KEEL_WORKFLOW_BUNDLE: await bundleWorkflows(),
    OPENAI_BASE_URL: opts.modelUrl,
    OPENAI_API_KEY: 'bench',
    KEEL_MODEL: 'keel-local',
    KEEL_API_HOST: '127.0.0.1',
    KEEL_API_PORT: '0',
    KEEL_ADMIN_API_KEY: opts.adminKey,
    KEEL_WORKER_METRICS_PORT: '0',
  };
}
