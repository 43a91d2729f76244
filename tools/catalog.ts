import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import { CatalogTool, type CatalogKind, type ToolDefinition } from '../contracts/tools';
import type { Tool } from './tool';

/** Builds the executable tool for a catalog row of one kind (MCP, HTTP). */
export type CatalogExecutor = (row: CatalogTool) => Tool;

const Row = z.object({ name: z.string(), kind: z.string(), source: z.string(), definition: z.unknown(), target: z.unknown() });

/**
 * Every tool this process can resolve agents against and run: the built-in ones, and the
 * catalog's (tool_catalog: MCP tools, tools generated from an OpenAPI import), loaded from
 * Postgres when an agent version names one not seen yet. `definitions` and `tools` are live
 * objects without prototypes: what `ensure` loads appears in them, so a holder of either sees
 * new tools without being rebuilt.
 */
export class ToolCatalog {
  readonly definitions: Record<string, ToolDefinition> = Object.create(null) as Record<string, ToolDefinition>;
  readonly tools: Record<string, Tool> = Object.create(null) as Record<string, Tool>;
  private readonly executors = new Map<CatalogKind, CatalogExecutor>();
  /** Counts changes to the catalog's tools: agents resolved before a change are resolved again. */
  revision = 0;

  constructor(
    private readonly db: CommonQueryMethods,
    builtins: Readonly<Record<string, Tool>>,
    builtinDefinitions: Readonly<Record<string, ToolDefinition>>,
  ) {
    for (const [name, tool] of Object.entries(builtins)) this.tools[name] = tool;
    for (const [name, def] of Object.entries(builtinDefinitions)) this.definitions[name] = def;
  }

  /** How rows of `kind` are called; a row whose kind has no executor is resolvable but not runnable here. */
  register(kind: CatalogKind, executor: CatalogExecutor): void {
    this.executors.set(kind, executor);
  }

  /** Loads (or reloads) the catalog rows named, when any of them is not known yet. */
  async ensure(names: readonly string[]): Promise<void> {
    const missing = names.filter((n) => !Object.hasOwn(this.definitions, n));
    if (missing.length > 0) await this.load(missing);
  }

  /** Reloads every row of a source (an MCP server re-listed its tools, an import was approved). */
  async reloadSource(source: string): Promise<void> {
    const rows = await this.db.any(sql.type(Row)`SELECT name, kind, source, definition, target FROM tool_catalog WHERE source = ${source}`);
    for (const row of rows) this.add(CatalogTool.parse(row));
  }

  private async load(names: string[]): Promise<void> {
    const rows = await this.db.any(sql.type(Row)`SELECT name, kind, source, definition, target FROM tool_catalog WHERE name = ANY(${sql.array(names, 'text')})`);
    for (const row of rows) this.add(CatalogTool.parse(row));
  }

  /** Adds or replaces a catalog tool in this process (after it was stored). */
  add(row: CatalogTool): void {
    const definition = definitionOf(row);
    this.definitions[row.name] = definition;
    this.revision += 1;
    const executor = this.executors.get(row.kind);
    if (executor) this.tools[row.name] = executor(row);
  }
}

export function definitionOf(row: CatalogTool): ToolDefinition {
  const d = row.definition;
  return {
    name: row.name,
    description: d.description,
    parameters: d.parameters,
    permission: d.permission,
    requiresApproval: d.requiresApproval,
    timeoutMs: d.timeoutMs,
    retry: { maxAttempts: d.maxAttempts },
    ...(d.idempotent === undefined ? {} : { idempotent: d.idempotent }),
  };
}

/** Stores a catalog tool (insert or replace), for discovery and imports. */
export async function upsertCatalogTool(db: CommonQueryMethods, row: CatalogTool): Promise<void> {
  await db.query(sql.unsafe`
    INSERT INTO tool_catalog (name, kind, source, definition, target)
    VALUES (${row.name}, ${row.kind}, ${row.source}, ${sql.jsonb(row.definition as never)}, ${sql.jsonb((row.target ?? null) as never)})
    ON CONFLICT (name) DO UPDATE SET kind = EXCLUDED.kind, source = EXCLUDED.source, definition = EXCLUDED.definition, target = EXCLUDED.target, updated_at = now()`);
}

/** What agent resolution needs of the tools: their definitions, loading the catalog's on demand. */
export type ToolDefinitionSource = Pick<ToolCatalog, 'definitions' | 'ensure'> & { readonly revision?: number };

/** A fixed set of definitions (tests, one-off checks) as a source. */
export function definitionSource(tools: ToolDefinitionSource | Record<string, ToolDefinition>): ToolDefinitionSource {
  if (tools instanceof ToolCatalog) return tools;
  const record = tools as Record<string, ToolDefinition>;
  return { definitions: record, ensure: () => Promise.resolve() };
}
