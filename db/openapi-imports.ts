import { sql, type CommonQueryMethods, type DatabasePool, type DatabaseTransactionConnection } from 'slonik';
import { z } from 'zod';
import { ClassificationEdit, ImportStatus, ParsedOperation, SkippedOperation, type OperationClassification } from '../contracts/openapi';

/** OpenAPI imports and their operations' classifications (migration 015). */

export const ImportRow = z.object({
  id: z.string(),
  status: ImportStatus,
  source_url: z.string().nullable(),
  spec_version: z.string().nullable(),
  title: z.string().nullable(),
  agent_id: z.string(),
  server_url: z.string().nullable(),
  auth_secret: z.string().nullable(),
  auth_header: z.string().nullable(),
  tool_prefix: z.string().nullable(),
  skipped: z.array(SkippedOperation),
  error_code: z.string().nullable(),
  error_message: z.string().nullable(),
  agent_version: z.number().nullable(),
  tools: z.array(z.string()).nullable(),
  created_by: z.string(),
  decided_by: z.string().nullable(),
  decided_at: z.number().nullable(),
  created_at: z.number(),
  updated_at: z.number(),
});
export type ImportRow = z.infer<typeof ImportRow>;

const COLUMNS = sql.fragment`id, status, source_url, spec_version, title, agent_id, server_url, auth_secret, auth_header, tool_prefix, skipped,
  error_code, error_message, agent_version, tools, created_by, decided_by, decided_at, created_at, updated_at`;

export const ClassificationRow = z.object({
  import_id: z.string(),
  operation_id: z.string(),
  position: z.number(),
  method: z.string(),
  path: z.string(),
  summary: z.string().nullable(),
  operation: ParsedOperation,
  access: z.enum(['read', 'write']).nullable(),
  requires_approval: z.boolean().nullable(),
  agent_group: z.string().nullable(),
  customer_parameters: z.array(z.string()).nullable(),
  idempotent: z.boolean(),
  timeout_ms: z.number().nullable(),
  enabled: z.boolean(),
  classified_by: z.enum(['model', 'fallback']).nullable(),
  classified_at: z.number().nullable(),
  edited: z.boolean(),
  edited_by: z.string().nullable(),
  edited_at: z.number().nullable(),
});
export type ClassificationRow = z.infer<typeof ClassificationRow>;

const CLASSIFICATION_COLUMNS = sql.fragment`import_id, operation_id, position, method, path, summary, operation, access, requires_approval, agent_group,
  customer_parameters, idempotent, timeout_ms, enabled, classified_by, classified_at, edited, edited_by, edited_at`;

/** The states an import's workflow moves it through; approved, discarded, ready and failed are left alone by its steps. */
const RUNNING = sql.array(['pending', 'fetching', 'validating', 'parsing', 'classifying'], 'text');

export async function insertImport(
  db: CommonQueryMethods,
  i: { id: string; sourceUrl: string | null; specText: string | null; agentId: string; serverUrl: string | null; authSecret: string | null; authHeader: string | null; toolPrefix: string | null; createdBy: string },
): Promise<ImportRow> {
  return db.one(sql.type(ImportRow)`
    INSERT INTO openapi_imports (id, source_url, spec_text, agent_id, server_url, auth_secret, auth_header, tool_prefix, created_by)
    VALUES (${i.id}, ${i.sourceUrl}, ${i.specText}, ${i.agentId}, ${i.serverUrl}, ${i.authSecret}, ${i.authHeader}, ${i.toolPrefix}, ${i.createdBy})
    RETURNING ${COLUMNS}`);
}

export async function getImport(db: CommonQueryMethods, id: string): Promise<ImportRow | null> {
  return db.maybeOne(sql.type(ImportRow)`SELECT ${COLUMNS} FROM openapi_imports WHERE id = ${id}`);
}

const decisionLock = (id: string) => sql.fragment`hashtext(${`openapi-import:${id}`})`;

/**
 * The import, read under its decision lock until the transaction ends: an edit or a discard
 * waits for an approval in progress (withDecisionLock), and the reverse.
 */
export async function lockImport(tx: DatabaseTransactionConnection, id: string): Promise<ImportRow | null> {
  await tx.query(sql.unsafe`SELECT pg_advisory_xact_lock(${decisionLock(id)})`);
  return tx.maybeOne(sql.type(ImportRow)`SELECT ${COLUMNS} FROM openapi_imports WHERE id = ${id} FOR UPDATE`);
}

/**
 * Runs `fn` holding the import's decision lock on a connection of its own, for a decision made
 * of several transactions (an approval publishes and activates an agent version). The lock
 * goes with the connection if the process dies.
 */
export async function withDecisionLock<T>(pool: DatabasePool, id: string, fn: () => Promise<T>): Promise<T> {
  return pool.connect(async (connection) => {
    await connection.query(sql.unsafe`SELECT pg_advisory_lock(${decisionLock(id)})`);
    try {
      return await fn();
    } finally {
      await connection.query(sql.unsafe`SELECT pg_advisory_unlock(${decisionLock(id)})`);
    }
  });
}

/**
 * Moves a running import to the step that starts. Returns the import, or null when it is no
 * longer running (discarded meanwhile): the step then does nothing.
 */
export async function enterStep(db: CommonQueryMethods, id: string, status: 'fetching' | 'validating' | 'parsing' | 'classifying'): Promise<ImportRow | null> {
  return db.maybeOne(sql.type(ImportRow)`
    UPDATE openapi_imports SET status = ${status}, updated_at = now()
    WHERE id = ${id} AND status = ANY(${RUNNING}) RETURNING ${COLUMNS}`);
}

export async function specTextOf(db: CommonQueryMethods, id: string): Promise<string | null> {
  return db.maybeOneFirst(sql.type(z.object({ spec_text: z.string().nullable() }))`SELECT spec_text FROM openapi_imports WHERE id = ${id}`);
}

export async function storeSpecText(db: CommonQueryMethods, id: string, text: string): Promise<void> {
  await db.query(sql.unsafe`UPDATE openapi_imports SET spec_text = ${text}, updated_at = now() WHERE id = ${id} AND status = ANY(${RUNNING})`);
}

export async function storeSpecVersion(db: CommonQueryMethods, id: string, version: string): Promise<void> {
  await db.query(sql.unsafe`UPDATE openapi_imports SET spec_version = ${version}, updated_at = now() WHERE id = ${id} AND status = ANY(${RUNNING})`);
}

/** Stores the parsed operations once (a retried parse finds them stored and adds nothing). */
export async function storeOperations(
  tx: DatabaseTransactionConnection,
  id: string,
  parsed: { title: string; operations: (ParsedOperation & { idempotent: boolean })[]; skipped: SkippedOperation[] },
): Promise<void> {
  await tx.query(sql.unsafe`UPDATE openapi_imports SET title = ${parsed.title}, skipped = ${sql.jsonb(parsed.skipped as never)}, updated_at = now() WHERE id = ${id}`);
  for (const [position, { idempotent, ...op }] of parsed.operations.entries()) {
    await tx.query(sql.unsafe`
      INSERT INTO openapi_classifications (import_id, operation_id, position, method, path, summary, operation, idempotent)
      VALUES (${id}, ${op.operationId}, ${position}, ${op.method}, ${op.path}, ${op.summary}, ${sql.jsonb(op as never)}, ${idempotent})
      ON CONFLICT (import_id, operation_id) DO NOTHING`);
  }
}

export async function listClassifications(db: CommonQueryMethods, id: string): Promise<ClassificationRow[]> {
  return [...(await db.any(sql.type(ClassificationRow)`SELECT ${CLASSIFICATION_COLUMNS} FROM openapi_classifications WHERE import_id = ${id} ORDER BY position`))];
}

/** Records the classification of an operation not classified yet (a retried step keeps the first). */
export async function storeClassification(db: CommonQueryMethods, id: string, operationId: string, c: OperationClassification & { requiresApproval: boolean; by: 'model' | 'fallback' }): Promise<void> {
  await db.query(sql.unsafe`
    UPDATE openapi_classifications SET access = ${c.access}, requires_approval = ${c.requiresApproval}, agent_group = ${c.agentGroup},
      customer_parameters = ${sql.array(c.customerParameters, 'text')}, classified_by = ${c.by}, classified_at = now()
    WHERE import_id = ${id} AND operation_id = ${operationId} AND classified_at IS NULL`);
}

/** Ends the import's run as ready or failed, unless it was discarded meanwhile. */
export async function finishImport(db: CommonQueryMethods, id: string, status: 'ready' | 'failed', error?: { code: string; message: string }): Promise<ImportRow | null> {
  return db.maybeOne(sql.type(ImportRow)`
    UPDATE openapi_imports SET status = ${status}, error_code = ${error?.code ?? null}, error_message = ${error?.message ?? null}, updated_at = now()
    WHERE id = ${id} AND status = ANY(${RUNNING}) RETURNING ${COLUMNS}`);
}

export async function editClassification(tx: DatabaseTransactionConnection, id: string, operationId: string, edit: ClassificationEdit, by: string): Promise<ClassificationRow | null> {
  return tx.maybeOne(sql.type(ClassificationRow)`
    UPDATE openapi_classifications SET
      access = COALESCE(${edit.access ?? null}::text, access),
      requires_approval = COALESCE(${edit.requiresApproval ?? null}::boolean, requires_approval),
      agent_group = COALESCE(${edit.agentGroup ?? null}::text, agent_group),
      customer_parameters = COALESCE(${edit.customerParameters ? sql.array(edit.customerParameters, 'text') : null}::text[], customer_parameters),
      idempotent = COALESCE(${edit.idempotent ?? null}::boolean, idempotent),
      timeout_ms = COALESCE(${edit.timeoutMs ?? null}::int, timeout_ms),
      enabled = COALESCE(${edit.enabled ?? null}::boolean, enabled),
      edited = true, edited_by = ${by}, edited_at = now()
    WHERE import_id = ${id} AND operation_id = ${operationId}
    RETURNING ${CLASSIFICATION_COLUMNS}`);
}

/** Records the decision (the caller holds the decision lock and has checked the import's state). */
export async function markDecided(
  db: CommonQueryMethods,
  id: string,
  d: { status: 'approved' | 'discarded'; by: string; agentVersion?: number; tools?: string[]; toolPrefix?: string },
): Promise<ImportRow> {
  return db.one(sql.type(ImportRow)`
    UPDATE openapi_imports SET status = ${d.status}, decided_by = ${d.by}, decided_at = now(), updated_at = now(),
      agent_version = ${d.agentVersion ?? null}, tools = ${d.tools ? sql.array(d.tools, 'text') : null}, tool_prefix = COALESCE(${d.toolPrefix ?? null}::text, tool_prefix)
    WHERE id = ${id} RETURNING ${COLUMNS}`);
}

/** The catalog's rows among `names`, with their kind and source: who already holds a name. */
export async function catalogOwners(db: CommonQueryMethods, names: string[]): Promise<{ name: string; kind: string; source: string }[]> {
  if (names.length === 0) return [];
  const rows = await db.any(sql.type(z.object({ name: z.string(), kind: z.string(), source: z.string() }))`
    SELECT name, kind, source FROM tool_catalog WHERE name = ANY(${sql.array(names, 'text')})`);
  return [...rows];
}
