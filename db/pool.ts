import { createPool, type DatabasePool, type Interceptor, type QueryResultRow } from 'slonik';

/** Validates rows against the zod schema a query names with `sql.type(...)`. */
const resultParser: Interceptor = {
  name: 'keel-result-parser',
  transformRow(context, _query, row) {
    if (!context.resultParser) return row;
    return context.resultParser.parse(row) as QueryResultRow;
  },
};

export async function openPool(url: string, maximumPoolSize: number): Promise<DatabasePool> {
  const pool = await createPool(url, { maximumPoolSize, interceptors: [resultParser] });
  // slonik also emits every query error on the pool; with no listener Node would throw
  // "Unhandled error" in place of the real, typed error the caller is about to receive.
  pool.on('error', () => undefined);
  return pool;
}

export type { DatabasePool };
