import { patched, upsertSearchAttributes } from '@temporalio/workflow';
import { LastActivityKey, PendingApprovalsKey, SessionStatusKey } from '../contracts/search-attributes';
import { workflowNow } from './clock';
import type { SessionState } from './session-state';

/** Sessions whose config does not carry the resolution (started before it existed). */
const LEGACY_LAST_ACTIVITY_RESOLUTION_MS = 60_000;
/** Before it, every turn upserted; after it, only changes an operator can query do (and a coarse last activity). */
const COARSE_SEARCH_ATTRIBUTES_PATCH = 'coarse-search-attributes';

/**
 * Keeps what operators query current: status, pending approvals and last activity. Each upsert
 * is a history event and a visibility write, so it happens only when the status or the count of
 * pending approvals changed, or (`touch`) when the last activity published is older than the
 * session's resolution (KEEL_LAST_ACTIVITY_RESOLUTION_MS): a busy session upserts about once a
 * minute, not once a turn.
 */
export function reflectInSearchAttributes(state: SessionState, touch: boolean): void {
  const view = state.view();
  const nowMs = workflowNow();
  const last = state.publishedSearchAttributes;
  const resolutionMs = state.config.lastActivityResolutionMs ?? LEGACY_LAST_ACTIVITY_RESOLUTION_MS;
  const unchanged = last !== null && last.status === view.status && last.pendingApprovals === view.pendingApprovals.length;
  if (unchanged && (!touch || nowMs - last.touchedAtMs < resolutionMs) && patched(COARSE_SEARCH_ATTRIBUTES_PATCH)) return;
  upsertSearchAttributes([
    { key: SessionStatusKey, value: view.status },
    { key: PendingApprovalsKey, value: view.pendingApprovals.length },
    ...(touch ? [{ key: LastActivityKey, value: new Date(nowMs) }] : []),
  ]);
  state.publishedSearchAttributes = { status: view.status, pendingApprovals: view.pendingApprovals.length, touchedAtMs: touch ? nowMs : (last?.touchedAtMs ?? -Infinity) };
}
