import { KeelError } from '../../contracts/errors';
import { lastSeq, turnStart } from '../../db/events';
import { findToolCall } from '../../db/tool-calls';
import type { Caller } from '../auth';
import type { ApiDeps } from '../deps';
import type { TurnWait } from '../turn-waiter';
import { parseApprovalId } from './approval-id';
import type { ApprovalResponse } from './chat-request';

/** Which turn a stream follows, from where, and what it does once it follows it. */
export type TurnToFollow = Pick<TurnWait, 'replyTo' | 'turn' | 'after' | 'send'>;

const notFound = () => new KeelError('APPROVAL_NOT_FOUND', 'No such approval request');

/**
 * Decides the approvals a client answered, each against the approval the server holds: the ID
 * must be one Keel issued for that very tool call of this session, and the decision names its
 * digest, so the session service refuses another call's or other arguments' approval
 * (APPROVAL_DIGEST_MISMATCH), a late one (APPROVAL_EXPIRED) and a second one
 * (APPROVAL_ALREADY_DECIDED), and only the session's owner gets this far. They are decided in
 * order; the first refusal is thrown (the ones before it stand); the caller's own earlier answer
 * sent again is no refusal (isRepeat). Then the turn is followed from
 * just before the decisions, so their outcome, the tool's result and the reply are streamed.
 */
export async function decideApprovals(deps: ApiDeps, caller: Caller, sessionId: string, responses: ApprovalResponse[]): Promise<TurnToFollow> {
  const named = responses.map((response) => {
    const issued = parseApprovalId(response.approvalId);
    if (!issued || issued.toolCallId !== response.toolCallId) throw notFound();
    return { ...response, digest: issued.digest };
  });
  const call = await findToolCall(deps.pool, named[0]!.toolCallId);
  if (!call || call.session_id !== sessionId || !call.requires_approval) throw notFound();
  const start = await turnStart(deps.pool, sessionId, call.turn);
  if (start === null) throw notFound();
  const { replyTo } = start;
  const after = await lastSeq(deps.pool, sessionId);
  const decided: string[] = [];
  for (const r of named) {
    try {
      await deps.sessions.decideApproval(caller, sessionId, { toolCallId: r.toolCallId, approved: r.approved, digest: r.digest, decidedBy: caller.userId, ...(r.reason === undefined ? {} : { feedback: r.reason }) });
      decided.push(r.toolCallId);
    } catch (error) {
      if (!(error instanceof KeelError && error.code === 'APPROVAL_ALREADY_DECIDED' && (await isRepeat(deps, caller, sessionId, r)))) throw error;
    }
  }
  return { replyTo, turn: call.turn, after, send: async () => ({ decided }) };
}

/**
 * The caller's own earlier answer, sent again: useChat re-sends every answer of a message after
 * one of them was refused. Same call of this session, same digest, same outcome, decided by the
 * caller: it counts once and is not refused again. Anything else stays APPROVAL_ALREADY_DECIDED.
 */
async function isRepeat(deps: ApiDeps, caller: Caller, sessionId: string, r: ApprovalResponse & { digest: string }): Promise<boolean> {
  const call = await findToolCall(deps.pool, r.toolCallId);
  return call !== null && call.session_id === sessionId && call.digest === r.digest && call.decided_by === caller.userId && call.approval_outcome === (r.approved ? 'approved' : 'rejected');
}
