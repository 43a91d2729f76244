import type { Interrupt } from '@ag-ui/core';
import { AGUI_APPROVAL_RESPONSE_SCHEMA } from '../../contracts/agui';
import { approvalRefOf } from '../approval-ref';
import { BUDGET_APPROVAL_NAME, OUTCOME_UNKNOWN_APPROVAL_NAME } from '../../contracts/turn';
import type { PendingApproval } from '../turn-waiter';

// An interrupt's ID is Keel's approval reference (api/approval-ref.ts): `<toolCallId>.<digest>`.
export { approvalRefOf as interruptIdOf, parseApprovalRef as parseInterruptId } from '../approval-ref';

/**
 * The AG-UI interrupt for a pending approval (docs/agui.md "Interrupts and resume"). A tool's
 * approval is `reason: "tool_call"` naming its call; a budget pause (docs/budgets.md) is
 * `reason: "budget"` with no tool call; an unknown outcome (docs/tools.md, "Effects") is
 * `reason: "outcome_unknown"` naming the write whose outcome is unknown (the call streamed with
 * TOOL_CALL_START), not the approval's own ID, which no tool call has.
 */
export function approvalInterrupt(approval: Pick<PendingApproval, 'toolCallId' | 'name' | 'arguments' | 'digest' | 'expiresAt'>): Interrupt {
  const base = {
    id: approvalRefOf(approval.toolCallId, approval.digest),
    responseSchema: AGUI_APPROVAL_RESPONSE_SCHEMA,
    expiresAt: approval.expiresAt,
    metadata: { name: approval.name, arguments: approval.arguments, digest: approval.digest },
  };
  if (approval.name === BUDGET_APPROVAL_NAME) return { ...base, reason: 'budget', message: 'The turn is over its budget: approve to let it go on?' };
  if (approval.name === OUTCOME_UNKNOWN_APPROVAL_NAME) {
    const args = (approval.arguments ?? {}) as { toolCallId?: unknown; tool?: unknown };
    const tool = typeof args.tool === 'string' ? args.tool : 'a tool';
    return {
      ...base,
      reason: 'outcome_unknown',
      message: `The outcome of the call of ${tool} is unknown: approve to send it again, reject to mark it done?`,
      ...(typeof args.toolCallId === 'string' ? { toolCallId: args.toolCallId } : {}),
    };
  }
  return { ...base, reason: 'tool_call', message: `Approve the call of ${approval.name}?`, toolCallId: approval.toolCallId };
}
