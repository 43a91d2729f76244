import { WorkflowNotFoundError, type Client } from '@temporalio/client';
import type { DatabasePool } from 'slonik';
import { sessionAgentOf } from '../agents/session-agent';
import type { AgentVersions } from '../agents/versions';
import { sessionWorkflowId } from '../contracts/ids';
import { switchAgentSignal } from '../contracts/workflow-messages';
import { moveSessions, sessionsOnVersion } from '../db/releases';

/** Signals sent at once while moving sessions: enough to be quick, few enough not to flood the server. */
const SIGNAL_CONCURRENCY = 20;

export interface MoveDeps {
  pool: DatabasePool;
  client: Client;
  versions: AgentVersions;
  defaultModel: string;
}

/**
 * Moves the active sessions of a rolled-back version to the version that replaced it: each
 * workflow first (it switches at its next turn; one that has ended needs no signal), then the
 * session rows the API reads. In that order a retry after a failure finds every session not yet
 * moved and signals it again (a repeated switch changes nothing). With `move` false, only counts.
 */
export async function moveSessionsOff(
  deps: MoveDeps,
  r: { agentId: string; from: number; to: number; move: boolean; requestedBy: string },
  /** Called after each signal: an activity heartbeats here, so a long move is not taken for a dead one. */
  progress: () => void = () => undefined,
): Promise<{ affected: number; moved: number }> {
  const ids = await sessionsOnVersion(deps.pool, r.agentId, r.from);
  if (!r.move || ids.length === 0) return { affected: ids.length, moved: 0 };
  const target = await deps.versions.get(r.agentId, r.to);
  if (!target) throw new Error(`agent ${r.agentId} version ${r.to} is not stored`);
  const agent = sessionAgentOf(target, deps.defaultModel);
  const queue = [...ids];
  const signalNext = async (): Promise<void> => {
    for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
      try {
        await deps.client.workflow.getHandle(sessionWorkflowId(id)).signal(switchAgentSignal, { agent, reason: `version ${r.from} was rolled back`, requestedBy: r.requestedBy });
      } catch (error) {
        if (!(error instanceof WorkflowNotFoundError)) throw error;
      }
      progress();
    }
  };
  await Promise.all(Array.from({ length: Math.min(SIGNAL_CONCURRENCY, ids.length) }, signalNext));
  const moved = await moveSessions(deps.pool, ids, r.agentId, r.from, r.to);
  return { affected: ids.length, moved };
}
