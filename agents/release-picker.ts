import { createHash } from 'node:crypto';
import type { ReleaseRow } from '../db/releases';

/**
 * The version a new session gets: the canary for `canary_percent` of sessions, else the active
 * version. The bucket comes from the session ID, so the choice is spread evenly and is the same
 * whichever API process makes it; the session keeps it for life (it is stored with the session).
 */
export function pickVersion(release: Pick<ReleaseRow, 'active_version' | 'canary_version' | 'canary_percent'>, sessionId: string): number {
  if (release.canary_version === null || release.canary_percent === null) return release.active_version;
  return bucketOf(sessionId) < release.canary_percent ? release.canary_version : release.active_version;
}

/** 0–99, uniform over session IDs. */
export function bucketOf(sessionId: string): number {
  return createHash('sha256').update(sessionId).digest().readUInt32BE(0) % 100;
}
