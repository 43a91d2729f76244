import { AgentDefinition, resolveAgent } from '../contracts/agents';
import { KeelError } from '../contracts/errors';
import type { ApproveBody } from '../contracts/openapi';
import type { CatalogTool, ToolDefinition } from '../contracts/tools';
import { agentVersion, syncAgents } from '../db/agents';
import { catalogOwners, getImport, listClassifications, markDecided, withDecisionLock, type ImportRow } from '../db/openapi-imports';
import { activateVersion, getRelease, recordPublished } from '../db/releases';
import { definitionOf, upsertCatalogTool } from '../tools/catalog';
import { catalogRowOf, defaultToolPrefix, TOOL_NAME_PATTERN, toolNames } from '../tools/openapi/generate';
import type { ApiDeps } from './deps';

export interface Approval {
  import: ImportRow;
  agentId: string;
  version: number;
  tools: string[];
}

/** Refuses a decision on an import that is not `ready`. */
export function requireReady(row: ImportRow | null, importId: string): ImportRow {
  if (!row) throw new KeelError('IMPORT_NOT_FOUND', 'No such OpenAPI import', { importId });
  if (row.status === 'approved' || row.status === 'discarded') throw new KeelError('IMPORT_ALREADY_DECIDED', `The import was ${row.status} already`, { importId, status: row.status });
  if (row.status !== 'ready') throw new KeelError('IMPORT_NOT_READY', `The import is ${row.status}, not ready`, { importId, status: row.status });
  return row;
}

/**
 * Approves a ready import: its enabled operations become catalog tools (kind `http`), and the
 * target agent gets a new version (its active definition plus the tools), published and
 * activated, so new sessions use them at once. The import's decision lock is held throughout
 * (edits and discards wait); the tools are stored before the version that names them, and every
 * step before the import is marked approved is safe to repeat, so a failed approval is retried as is.
 */
export async function approveImport(deps: ApiDeps, importId: string, body: ApproveBody, actor: string): Promise<Approval> {
  return withDecisionLock(deps.pool, importId, async () => {
    const row = requireReady(await getImport(deps.pool, importId), importId);
    const reviewed = (await listClassifications(deps.pool, importId)).filter((c) => c.enabled);
    if (reviewed.length === 0) throw new KeelError('VALIDATION_ERROR', 'Every operation of the import is disabled: there is no tool to generate', [{ field: 'classifications', problem: 'enable at least one' }]);
    const prefix = body.toolPrefix ?? row.tool_prefix ?? defaultToolPrefix(row.title);
    const names = toolNames(prefix, reviewed.map((c) => c.operation_id));
    const auth = row.auth_secret ? { header: row.auth_header ?? 'authorization', secret: row.auth_secret } : undefined;
    const rows: CatalogTool[] = reviewed.map((c, i) =>
      catalogRowOf(
        {
          operation: c.operation,
          access: c.access ?? 'write',
          requiresApproval: c.requires_approval ?? true,
          customerParameters: c.customer_parameters ?? [],
          idempotent: c.idempotent,
          timeoutMs: c.timeout_ms,
        },
        names[i]!,
        importId,
        auth,
        deps.settings.tools.httpTimeoutMs,
      ),
    );
    await refuseTakenNames(deps, names, importId);

    const release = await getRelease(deps.pool, row.agent_id);
    const current = release ? await agentVersion(deps.pool, row.agent_id, release.active_version) : null;
    if (!current) throw new KeelError('AGENT_NOT_FOUND', 'The import\'s agent has no active version', { agentId: row.agent_id });
    const def = AgentDefinition.parse({ ...current.definition, tools: [...current.definition.tools, ...names.filter((n) => !current.definition.tools.includes(n))] });
    // The agent's other catalog tools (MCP, earlier imports) may not be loaded in this process yet.
    await deps.tools.ensure(current.definition.tools);
    const definitions: Record<string, ToolDefinition> = { ...deps.tools.definitions };
    for (const r of rows) definitions[r.name] = definitionOf(r);
    try {
      resolveAgent(def, 0, '', definitions);
    } catch (error) {
      throw new KeelError('VALIDATION_ERROR', 'The agent cannot take these tools', [{ field: 'tools', problem: (error as Error).message }]);
    }

    // Stored (committed) before any version names them, so a process resolving it finds them.
    for (const r of rows) await upsertCatalogTool(deps.pool, r);
    const [synced] = await syncAgents(deps.pool, [def]);
    await recordPublished(deps.pool, synced!, actor);
    await activateVersion(deps.pool, { agentId: row.agent_id, version: synced!.version, actor, reason: `OpenAPI import ${importId}` });
    const decided = await markDecided(deps.pool, importId, { status: 'approved', by: actor, agentVersion: synced!.version, tools: names, toolPrefix: prefix });
    for (const r of rows) deps.tools.add(r);
    deps.log.info({ importId, agentId: row.agent_id, version: synced!.version, tools: names, by: actor }, 'openapi import approved');
    return { import: decided, agentId: row.agent_id, version: synced!.version, tools: names };
  });
}

/** A generated name must be free: not a built-in tool, and not a catalog tool of another source (an MCP tool, another import). */
async function refuseTakenNames(deps: ApiDeps, names: string[], importId: string): Promise<void> {
  const invalid = names.filter((n) => !TOOL_NAME_PATTERN.test(n));
  if (invalid.length > 0) throw new KeelError('VALIDATION_ERROR', 'Generated tool names are not valid', [{ field: 'toolPrefix', problem: `invalid names: ${invalid.join(', ')}` }]);
  const owners = await catalogOwners(deps.pool, names);
  const catalogNames = new Set(owners.map((o) => o.name));
  const taken = [
    ...owners.filter((o) => o.source !== importId).map((o) => o.name),
    ...names.filter((n) => !catalogNames.has(n) && Object.hasOwn(deps.tools.definitions, n)),
  ];
  if (taken.length > 0) {
    throw new KeelError('TOOL_NAME_TAKEN', `Tool names already taken: ${taken.slice(0, 10).join(', ')}; approve with another toolPrefix`, { names: taken });
  }
}
