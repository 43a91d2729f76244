import { Client, Pool } from 'pg';

function adminUrl(): string {
  const url = process.env.KEEL_TEST_ADMIN_DATABASE_URL;
  if (!url) throw new Error('KEEL_TEST_ADMIN_DATABASE_URL is not set: run the tests through jest (npm test)');
  return url;
}

async function admin(statement: string): Promise<void> {
  const client = new Client({ connectionString: adminUrl() });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

/** A fresh database on the run's shared Postgres; returns its URL. */
export async function createTestDatabase(name: string): Promise<string> {
  await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
  await admin(`CREATE DATABASE ${name}`);
  const url = new URL(adminUrl());
  url.pathname = `/${name}`;
  return url.toString();
}

export async function dropTestDatabase(name: string): Promise<void> {
  if (process.env.KEEL_TEST_ADMIN_DATABASE_URL) await admin(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
}

/**
 * A pg pool for a test's own queries. An idle client's error is dropped: `pool.end()` resolves
 * before its connections have closed, so the DROP DATABASE … WITH (FORCE) that follows can
 * terminate one still closing (57P01), and with no listener Node reports that as an unhandled
 * error in whatever test runs next. A query's own error still rejects its promise.
 */
export function testPool(connectionString: string, max: number): Pool {
  const pool = new Pool({ connectionString, max });
  pool.on('error', () => undefined);
  return pool;
}
