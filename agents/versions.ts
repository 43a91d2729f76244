import type { CommonQueryMethods } from 'slonik';
import { resolveAgent, type ResolvedAgent } from '../contracts/agents';
import type { ToolDefinition } from '../contracts/tools';
import { definitionSource, type ToolDefinitionSource } from '../tools/catalog';
import { agentVersion } from '../db/agents';

/**
 * Stored agent versions, resolved against this deployment's tools, read from Postgres once per
 * process: a version never changes, so the cache never goes stale. Sessions run the version
 * they started with, which need not be the file's current one.
 */
export class AgentVersions {
  private readonly cache = new Map<string, Promise<ResolvedAgent | null>>();

  constructor(
    private readonly db: CommonQueryMethods,
    tools: ToolDefinitionSource | Record<string, ToolDefinition>,
  ) {
    this.catalog = definitionSource(tools);
  }

  private readonly catalog: ToolDefinitionSource;
  private seenRevision: number | undefined;

  /** The version, or null when it is not stored. */
  get(id: string, version: number): Promise<ResolvedAgent | null> {
    // A catalog tool that changed (an MCP server re-listed it) is resolved again from then on.
    if (this.catalog.revision !== undefined && this.catalog.revision !== this.seenRevision) {
      this.seenRevision = this.catalog.revision;
      this.cache.clear();
    }
    const key = `${id}@${version}`;
    let found = this.cache.get(key);
    if (!found) {
      found = this.load(id, version);
      this.cache.set(key, found);
      // A failed read is not remembered: the next call reads again.
      found.catch(() => this.cache.delete(key));
    }
    return found;
  }

  private async load(id: string, version: number): Promise<ResolvedAgent | null> {
    const stored = await agentVersion(this.db, id, version);
    if (!stored) return null;
    await this.catalog.ensure(stored.definition.tools);
    return resolveAgent(stored.definition, stored.version, stored.digest, this.catalog.definitions);
  }
}
