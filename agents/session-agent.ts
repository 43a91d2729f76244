import { KeelError } from '../contracts/errors';
import type { ResolvedAgent } from '../contracts/agents';
import type { SessionAgent, SessionRouter } from '../contracts/session';

/**
 * What a session workflow carries of its agent: IDs and every tool policy, resolved once here at
 * session start and passed as-is to the activities. The prompt and the tool schemas stay in
 * Postgres (the agent version), where the model activity reads them.
 */
export function sessionAgentOf(agent: ResolvedAgent, defaultModel: string): SessionAgent {
  return {
    id: agent.id,
    version: agent.version,
    digest: agent.digest,
    busyPolicy: agent.busyPolicy,
    maxStepsPerTurn: agent.maxStepsPerTurn,
    model: agent.model.name ?? defaultModel,
    ...(agent.model.temperature === undefined ? {} : { temperature: agent.model.temperature }),
    ...(agent.budget === undefined ? {} : { budget: agent.budget }),
    approvalTtlMs: agent.approvalTtlMs,
    toolExecution: agent.toolExecution,
    ...(agent.personality?.greeting ? { greets: true } : {}),
    ...(agent.escalate ? { escalate: true } : {}),
    ...(agent.externalEvents ? { externalEvents: agent.externalEvents } : {}),
    tools: agent.tools.map((t) => ({
      name: t.name,
      permission: t.permission,
      requiresApproval: t.requiresApproval,
      approvalTtlMs: t.approvalTtlMs,
      timeoutMs: t.timeoutMs,
      maxAttempts: t.retry.maxAttempts,
      ...(t.idempotent === undefined ? {} : { idempotent: t.idempotent }),
    })),
  };
}

/**
 * A router session's members, each at the version its own release gives this session (a canary
 * member is a canary inside the router too). Every member may escalate.
 */
export async function sessionRouterOf(
  router: ResolvedAgent,
  memberOf: (id: string) => Promise<ResolvedAgent | null>,
  defaultModel: string,
): Promise<SessionRouter | undefined> {
  if (!router.router) return undefined;
  const members: SessionAgent[] = [];
  for (const id of router.router.agents) {
    const member = await memberOf(id);
    if (!member) throw new KeelError('AGENT_NOT_FOUND', `The router's member agent "${id}" has no active version`, { agentId: router.id, member: id });
    members.push({ ...sessionAgentOf(member, defaultModel), escalate: true });
  }
  return { threshold: router.router.threshold, maxHandoffs: router.router.maxHandoffs, members };
}
