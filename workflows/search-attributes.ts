import { upsertSearchAttributes } from '@temporalio/workflow';
import { LastActivityKey, PendingApprovalsKey, SessionStatusKey } from '../contracts/search-attributes';
import type { SessionState } from './session-state';

/**
 * Keeps what operators query current: status, pending approvals and last activity. Each
 * upsert is a history event, so callers upsert at turn boundaries and approval changes only.
 */
export function reflectInSearchAttributes(state: SessionState, touch: boolean): void {
  upsertSearchAttributes([
    { key: SessionStatusKey, value: state.view().status },
    { key: PendingApprovalsKey, value: state.view().pendingApprovals.length },
    ...(touch ? [{ key: LastActivityKey, value: new Date() }] : []),
  ]);
}
