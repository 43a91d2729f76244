/**
 * Workflow time. Inside the workflow sandbox `Date` is deterministic: it reads the time the
 * current workflow task started, recorded in history, so replays see the same value.
 */
export function workflowNow(): number {
  return new Date().getTime();
}
