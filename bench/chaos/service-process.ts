import path from 'node:path';
import { startEmbeddedPostgres, startTemporalDevServer } from '../../scripts/services';

/**
 * Runs the file-backed Temporal dev server or the crash-safe embedded PostgreSQL of a chaos run
 * (`<temporal|postgres> <dir> <port>`), through the same helpers as `npm start`. The chaos cluster
 * starts it in a process group of its own, with the server in the same group, so one SIGKILL to
 * the group is a crash of the server. Prints `ready <address or url>` once it serves.
 */
async function main(): Promise<void> {
  const [kind, dir, port] = process.argv.slice(2);
  if (!dir || (kind !== 'temporal' && kind !== 'postgres')) throw new Error('usage: service-process.ts <temporal|postgres> <dir> <port>');
  const quiet = () => undefined;
  const server =
    kind === 'temporal'
      ? await startTemporalDevServer({ dbFile: path.join(dir, 'temporal.sqlite'), port: Number(port), headless: true, log: quiet })
      : await startEmbeddedPostgres({ dataDir: path.join(dir, 'pg'), port: Number(port), persistent: true, log: quiet });
  console.log(`ready ${'address' in server ? server.address : server.url}`);
  const stop = () => void server.stop().finally(() => process.exit(0));
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});
