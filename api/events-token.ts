import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { ExternalEventsPolicy, ResolvedAgent } from '../contracts/agents';
import { KeelError } from '../contracts/errors';
import { SESSION_EVENTS_TOKEN_PREFIX } from '../contracts/presence';
import { eventsTokenHashOf, setEventsTokenHash } from '../db/presence';
import type { SessionRow } from '../db/sessions';
import { hashToken } from '../db/tokens';
import type { ApiDeps } from './deps';

/** The agent version a session runs (the file's current one for sessions from before versions were recorded). */
async function agentOf(deps: ApiDeps, row: SessionRow): Promise<ResolvedAgent | undefined> {
  if (!row.agent_id) return undefined;
  if (row.agent_version === null) return deps.agents.get(row.agent_id);
  return (await deps.sessions.versions.get(row.agent_id, row.agent_version)) ?? undefined;
}

/** The session's agent's `externalEvents` setting; absent: events wait for the next message, no session token. */
export async function externalEventsPolicyOf(deps: ApiDeps, row: SessionRow): Promise<ExternalEventsPolicy> {
  return (await agentOf(deps, row))?.externalEvents ?? { mode: 'wait', sessionToken: false };
}

/**
 * A new session whose agent enables `externalEvents.sessionToken` gets its own token for
 * POST …/external-events: returned here once, only its sha256 kept.
 */
export async function issueEventsToken(deps: ApiDeps, row: SessionRow): Promise<string | undefined> {
  if (!(await externalEventsPolicyOf(deps, row)).sessionToken) return undefined;
  const token = `${SESSION_EVENTS_TOKEN_PREFIX}${randomBytes(24).toString('base64url')}`;
  await setEventsTokenHash(deps.pool, row.id, hashToken(token));
  return token;
}

/** Checks a session's events token (constant time): 401 UNAUTHORIZED unless it is this session's. */
export async function requireEventsToken(deps: ApiDeps, sessionId: string, token: string): Promise<void> {
  const key = hashToken(token);
  const given = Buffer.from(key, 'hex');
  const expected = Buffer.from((await eventsTokenHashOf(deps.pool, sessionId)) ?? '', 'hex');
  if (expected.length !== given.length || !timingSafeEqual(given, expected)) throw new KeelError('UNAUTHORIZED', 'The events token is not valid for this session');
  // Counted like any token's requests (KEEL_RATE_REQUESTS_PER_TOKEN), under its own hash, once it is known to be real.
  await deps.limiter.requestByToken(key);
}
