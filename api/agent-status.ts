import type { DurableEvent } from '../contracts/events';
import type { AgentStatusData } from '../contracts/presence';

/** Tool names of approvals waiting, remembered so the call that follows an approval can be named; a turn has few. */
const MAX_REMEMBERED_APPROVALS = 32;

/**
 * Derives a session's `agent.status` frames from its durable events, in log order (docs/presence.md).
 * Nothing is stored: each connection (or the per-user feed, per session) runs one of these over the
 * events it forwards, so the status always follows the events it is made of, on every API process.
 * `escalated` is the session's state as of the first event it will see (db/presence.ts escalatedAsOf).
 */
export class AgentStatusTracker {
  private agent: string | undefined;
  private turn: number | undefined;
  private lastKey: string | undefined;
  private readonly approvalTools = new Map<string, string>();

  constructor(private escalated = false) {}

  /** The status `event` moves the session to, or undefined when it does not change what the session is doing. */
  next(event: DurableEvent): AgentStatusData | undefined {
    const status = this.derive(event);
    if (!status) return undefined;
    const key = `${status.status}\0${status.tool ?? ''}\0${status.agent ?? ''}`;
    if (key === this.lastKey) return undefined;
    this.lastKey = key;
    return status;
  }

  private derive(event: DurableEvent): AgentStatusData | undefined {
    const data = event.data as Record<string, unknown>;
    const turn = typeof data.turn === 'number' ? data.turn : undefined;
    if (turn !== undefined) this.turn = turn;
    const at = (status: AgentStatusData['status'], tool?: string): AgentStatusData => ({
      status,
      ...(tool === undefined ? {} : { tool }),
      // The agent at work; a session that waits (idle, or for its operator) names none.
      ...(this.agent === undefined || status === 'idle' || status === 'escalated' ? {} : { agent: this.agent }),
      ...(this.turn === undefined ? {} : { turn: this.turn }),
    });
    switch (event.type) {
      case 'agent.started':
        this.agent = data.agent as string;
        return undefined;
      case 'stream.start':
        return at('thinking');
      case 'tool.call':
        return at('calling_tool', data.name as string);
      case 'approval.required': {
        const name = data.name as string;
        this.approvalTools.set(data.toolCallId as string, name);
        if (this.approvalTools.size > MAX_REMEMBERED_APPROVALS) this.approvalTools.delete(this.approvalTools.keys().next().value!);
        return at('waiting_for_approval', name);
      }
      case 'approval.resolved': {
        const name = this.approvalTools.get(data.toolCallId as string);
        this.approvalTools.delete(data.toolCallId as string);
        // An approved call runs now; a refused one leaves the turn to go on (its next stream.start says so).
        return data.outcome === 'approved' && name !== undefined ? at('calling_tool', name) : undefined;
      }
      case 'session.escalated':
        this.escalated = true;
        return at('escalated');
      case 'turn.done': {
        const escalated = this.escalated || data.awaitingOperator === true;
        this.agent = undefined;
        this.approvalTools.clear();
        return escalated ? at('escalated') : at('idle');
      }
      case 'session.handed_back':
        this.escalated = false;
        this.agent = undefined;
        return at('idle');
      default:
        return undefined;
    }
  }
}
