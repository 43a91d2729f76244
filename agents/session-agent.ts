import type { ResolvedAgent } from '../contracts/agents';
import type { SessionAgent } from '../contracts/session';

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
    tools: agent.tools.map((t) => ({
      name: t.name,
      permission: t.permission,
      requiresApproval: t.requiresApproval,
      approvalTtlMs: t.approvalTtlMs,
      timeoutMs: t.timeoutMs,
      maxAttempts: t.retry.maxAttempts,
    })),
  };
}
