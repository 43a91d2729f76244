import { createPool, type DatabasePool, type Interceptor, type QueryResultRow } from 'slonik';

/** Validates rows against the zod schema a query names with `sql.type(...)`. */
const resultParser: Interceptor = {
  name: 'keel-result-parser',
  transformRow(context, _query, row) {
    if (!context.resultParser) return row;
    return context.resultParser.parse(row) as QueryResultRow;
  },
};

export async function openPool(url: string, maximumPoolSize: number, opts: { connectTimeoutMs?: number } = {}): Promise<DatabasePool> {
  // With a connect time-out, one attempt: a caller facing a Postgres that is down hears so within
  // that time (SERVICE_UNAVAILABLE) instead of after slonik's retries.
  const connect = opts.connectTimeoutMs === undefined ? {} : { connectionTimeout: opts.connectTimeoutMs, connectionRetryLimit: 0 };
  // No reset when a connection goes back to the pool: slonik's default, DISCARD ALL, is a round
  // trip after every query and transaction (a third of a turn's statements, docs/benchmarks.md),
  // and nothing here leaves session state on a pooled connection (no SET, LISTEN, PREPARE or
  // temp table; the one session-level advisory lock is released before the connection is).
  const pool = await createPool(url, { maximumPoolSize, interceptors: [resultParser], resetConnection: async () => undefined, ...connect });
  // slonik also emits every query error on the pool; with no listener Node would throw
  // "Unhandled error" in place of the real, typed error the caller is about to receive.
  pool.on('error', () => undefined);
  return pool;
}

export type { DatabasePool };
