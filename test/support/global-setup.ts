import { readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { isAlive, startEmbeddedPostgres, startTemporalDevServer, type Log } from '../../scripts/services';

/**
 * One Temporal dev server and one Postgres for the whole run; each test file creates its own
 * database and task queue on them (see stack.ts). Set KEEL_TEST_TEMPORAL_ADDRESS and/or
 * KEEL_TEST_ADMIN_DATABASE_URL to reuse servers you keep running while iterating.
 */

export interface TestServices {
  stops: { name: string; stop: () => Promise<void> }[];
}

declare global {
  // Read by global-teardown.ts: jest runs both in the same process.
  var keelTestServices: TestServices | undefined;
}

const TEST_DIR_PREFIX = 'keel-test-';

function testLog(): Log {
  return process.env.KEEL_TEST_VERBOSE ? (line) => process.stderr.write(`[services] ${line}\n`) : () => undefined;
}


/** Data directories of earlier runs that were killed before their teardown. */
async function removeAbandonedDataDirs(): Promise<void> {
  const entries = await readdir(os.tmpdir()).catch(() => [] as string[]);
  for (const entry of entries) {
    const pid = Number(entry.slice(TEST_DIR_PREFIX.length));
    if (entry.startsWith(TEST_DIR_PREFIX) && Number.isInteger(pid) && !isAlive(pid)) {
      await rm(path.join(os.tmpdir(), entry), { recursive: true, force: true });
    }
  }
}

async function startTemporal(log: Log) {
  const server = await startTemporalDevServer({ port: 0, headless: true, log });
  return { address: server.address, stop: server.stop };
}

async function startPostgres(log: Log) {
  await removeAbandonedDataDirs();
  const dataDir = path.join(os.tmpdir(), `${TEST_DIR_PREFIX}${process.pid}`);
  const server = await startEmbeddedPostgres({ dataDir, port: 0, persistent: false, log });
  return { adminUrl: server.adminUrl, stop: server.stop };
}

export default async function globalSetup(): Promise<void> {
  const log = testLog();
  const started = Date.now();
  const services: TestServices = { stops: [] };
  globalThis.keelTestServices = services;

  const [temporal, postgres] = await Promise.allSettled([
    process.env.KEEL_TEST_TEMPORAL_ADDRESS ? undefined : startTemporal(log),
    process.env.KEEL_TEST_ADMIN_DATABASE_URL ? undefined : startPostgres(log),
  ]);
  if (temporal.status === 'fulfilled' && temporal.value) {
    process.env.KEEL_TEST_TEMPORAL_ADDRESS = temporal.value.address;
    services.stops.push({ name: 'Temporal', stop: temporal.value.stop });
  }
  if (postgres.status === 'fulfilled' && postgres.value) {
    process.env.KEEL_TEST_ADMIN_DATABASE_URL = postgres.value.adminUrl;
    services.stops.push({ name: 'Postgres', stop: postgres.value.stop });
  }

  const failures = [temporal, postgres].filter((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (failures.length > 0) {
    // jest skips the teardown when the setup throws: stop whatever did start.
    await Promise.all(services.stops.map((s) => s.stop()));
    throw new Error(`test services failed to start:\n${failures.map((f) => String(f.reason instanceof Error ? f.reason.message : f.reason)).join('\n')}`);
  }
  log(`Temporal ${process.env.KEEL_TEST_TEMPORAL_ADDRESS}, Postgres ${process.env.KEEL_TEST_ADMIN_DATABASE_URL} (${Date.now() - started} ms)`);
}
