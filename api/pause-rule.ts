import type { ResolvedAgent } from '../contracts/agents';
import type { DurableEvent } from '../contracts/events';
import type { ApiDeps } from './deps';

/**
 * Whether an agent's tool calls run in order, from the agent version the session runs (not the
 * agent file's current one): the session's own version, or for a router member the version its
 * agent.started names. Members are resolved as their agent.started events arrive (long before an
 * approval can); one not resolved yet falls back to the deployed definition. Used as
 * followTurn's pauseOnApproval by the AG-UI and AI SDK endpoints.
 */
export class PauseRule {
  private readonly members = new Map<string, ResolvedAgent>();
  /** The member of the last agent.started this run read. */
  private current: { agent: string; version: number } | undefined;

  private constructor(
    private readonly deps: ApiDeps,
    private readonly own: ResolvedAgent | undefined,
  ) {}

  /** For a session of `agentId` at `agentVersion` (null: the deployed definition). */
  static async forSession(deps: ApiDeps, agentId: string, agentVersion: number | null): Promise<PauseRule> {
    const stored = agentVersion === null ? null : await deps.sessions.versions.get(agentId, agentVersion);
    return new PauseRule(deps, stored ?? deps.agents.get(agentId));
  }

  /** An agent.started event of a followed turn (from the log or live). */
  async started(event: DurableEvent): Promise<void> {
    if (event.type !== 'agent.started') return;
    const { agent, version } = event.data as { agent: string; version: number };
    this.current = { agent, version };
    const key = `${agent}@${version}`;
    if (this.members.has(key)) return;
    const resolved = await this.deps.sessions.versions.get(agent, version).catch(() => null);
    if (resolved) this.members.set(key, resolved);
  }

  sequential(agentId: string | undefined): boolean {
    // followTurn names no member for a turn it did not see start: the last agent.started this run read says which.
    const current = this.current && (agentId === undefined || agentId === this.current.agent) ? this.current : undefined;
    const name = current?.agent ?? agentId;
    const agent = (current && this.members.get(`${current.agent}@${current.version}`)) ?? (name === undefined ? undefined : this.deps.agents.get(name)) ?? this.own;
    return agent?.toolExecution === 'sequential';
  }
}
