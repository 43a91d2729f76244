import { ID_PATTERN } from '../contracts/ids';

/**
 * How a third-party client names a pending approval (an AG-UI interrupt ID, an AI SDK
 * `approvalId`): `<toolCallId>.<digest>`. The digest of the approval.required event is bound into
 * it, so an answer names the exact call and arguments it was shown. It grants nothing by itself:
 * the decision is checked against the approval the server holds (owner, digest, expiry, exactly once).
 */
export function approvalRefOf(toolCallId: string, digest: string): string {
  return `${toolCallId}.${digest}`;
}

/** The tool call and digest a reference names, or null when it is not one Keel could have issued. */
export function parseApprovalRef(ref: string): { toolCallId: string; digest: string } | null {
  const parts = ref.split('.');
  if (parts.length !== 2) return null;
  const [toolCallId, digest] = parts as [string, string];
  return ID_PATTERN.test(toolCallId) && ID_PATTERN.test(digest) ? { toolCallId, digest } : null;
}
