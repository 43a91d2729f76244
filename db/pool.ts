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
  const pool = await createPool(url, { maximumPoolSize, interceptors: [resultParser], ...connect });
  // slonik also emits every query error on the pool; with no listener Node would throw
  // "Unhandled error" in place of the real, typed error the caller is about to receive.
  pool.on('error', () => undefined);
  return pool;
}

export type { DatabasePool };
