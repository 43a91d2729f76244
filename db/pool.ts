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
  return createPool(url, { maximumPoolSize, interceptors: [resultParser] });
}

export type { DatabasePool };
