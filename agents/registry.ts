import type { DatabasePool } from 'slonik';
import { DEFAULT_AGENT_ID, resolveAgent, type ResolvedAgent } from '../contracts/agents';
import { digestOf } from '../contracts/canonical';
import type { ToolDefinition } from '../contracts/tools';
import { definitionSource, type ToolDefinitionSource } from '../tools/catalog';
import { syncAgents } from '../db/agents';
import { releaseFileVersions } from '../db/releases';
import { AgentConfigError, loadAgentFile } from './load';

/** Who the audit names for releases made by the definitions file. */
export const FILE_ACTOR = 'agents-file';

/** The agents of this deployment, each at the version its current definition is stored under. */
export class AgentRegistry {
  private readonly byId: ReadonlyMap<string, ResolvedAgent>;

  private constructor(
    agents: ResolvedAgent[],
    /** What a session gets when it names no agent: `default`, else the file's first router (a template's front desk). */
    readonly defaultId: string,
  ) {
    this.byId = new Map(agents.map((a) => [a.id, a]));
  }

  /**
   * Loads and validates the file, checks every tool exists, then stores new versions: an agent's
   * first version becomes its active release, and so does a definition the file changed.
   */
  static async load(db: DatabasePool, file: string, toolSource: ToolDefinitionSource | Record<string, ToolDefinition>): Promise<AgentRegistry> {
    const catalog = definitionSource(toolSource);
    const defs = await loadAgentFile(file);
    await catalog.ensure(defs.flatMap((d) => d.tools));
    const tools = catalog.definitions;
    const defaultId = defs.some((d) => d.id === DEFAULT_AGENT_ID) ? DEFAULT_AGENT_ID : defs.find((d) => d.router)?.id;
    if (defaultId === undefined) {
      throw new AgentConfigError(file, [{ field: 'agents', message: `no agent has the id "${DEFAULT_AGENT_ID}" and there is no router: sessions that name no agent would have none` }]);
    }
    // Resolving before storing: a definition naming an unknown tool must not become a version.
    const resolved = defs.map((def, i) => {
      try {
        return resolveAgent(def, 0, digestOf(def), tools);
      } catch (error) {
        // An unknown tool, or a write tool in a read agent: named like any other field.
        throw new AgentConfigError(file, [{ field: `agents[${i}].tools`, agent: def.id, message: (error as Error).message.replace(/^agent "[^"]*": (tools: )?/, '') }]);
      }
    });
    const synced = await syncAgents(db, defs);
    await releaseFileVersions(db, synced, FILE_ACTOR);
    const versions = new Map(synced.map((s) => [s.id, s.version]));
    return new AgentRegistry(
      resolved.map((agent) => ({ ...agent, version: versions.get(agent.id) ?? 0 })),
      defaultId,
    );
  }

  get(id: string): ResolvedAgent | undefined {
    return this.byId.get(id);
  }

  list(): ResolvedAgent[] {
    return [...this.byId.values()];
  }
}
