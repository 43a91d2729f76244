import type { CommonQueryMethods } from 'slonik';
import { DEFAULT_AGENT_ID, resolveAgent, type ResolvedAgent } from '../contracts/agents';
import { digestOf } from '../contracts/canonical';
import type { ToolDefinition } from '../contracts/tools';
import { syncAgents } from '../db/agents';
import { AgentConfigError, loadAgentFile } from './load';

/** The agents of this deployment, each at the version its current definition is stored under. */
export class AgentRegistry {
  readonly defaultId = DEFAULT_AGENT_ID;
  private readonly byId: ReadonlyMap<string, ResolvedAgent>;

  private constructor(agents: ResolvedAgent[]) {
    this.byId = new Map(agents.map((a) => [a.id, a]));
  }

  /** Loads and validates the file, checks every tool exists, then stores new versions. */
  static async load(db: CommonQueryMethods, file: string, tools: Record<string, ToolDefinition>): Promise<AgentRegistry> {
    const defs = await loadAgentFile(file);
    if (!defs.some((d) => d.id === DEFAULT_AGENT_ID)) {
      throw new AgentConfigError(file, [{ field: 'agents', message: `no agent has the id "${DEFAULT_AGENT_ID}", which sessions use by default` }]);
    }
    // Resolving before storing: a definition naming an unknown tool must not become a version.
    const resolved = defs.map((def) => resolveAgent(def, 0, digestOf(def), tools));
    const versions = new Map((await syncAgents(db, defs)).map((s) => [s.id, s.version]));
    return new AgentRegistry(resolved.map((agent) => ({ ...agent, version: versions.get(agent.id) ?? 0 })));
  }

  get(id: string): ResolvedAgent | undefined {
    return this.byId.get(id);
  }

  list(): ResolvedAgent[] {
    return [...this.byId.values()];
  }
}
