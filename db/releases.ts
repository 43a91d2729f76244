import { sql, type CommonQueryMethods, type DatabasePool, type DatabaseTransactionConnection } from 'slonik';
import { z } from 'zod';
import { AgentDefinition } from '../contracts/agents';
import { KeelError } from '../contracts/errors';
import { VersionStatus } from '../contracts/releases';
import type { SyncedAgent } from './agents';

export const ReleaseRow = z.object({
  agent_id: z.string(),
  active_version: z.number(),
  canary_version: z.number().nullable(),
  canary_percent: z.number().nullable(),
  activated_at: z.number(),
  updated_at: z.number(),
});
export type ReleaseRow = z.infer<typeof ReleaseRow>;

export const VersionRow = z.object({
  id: z.string(),
  version: z.number(),
  digest: z.string(),
  status: VersionStatus,
  published_by: z.string().nullable(),
  created_at: z.number(),
  definition: AgentDefinition,
});
export type VersionRow = z.infer<typeof VersionRow>;

export const AuditRow = z.object({
  // bigserial: slonik reads int8 as bigint.
  id: z.coerce.number(),
  agent_id: z.string(),
  action: z.enum(['publish', 'activate', 'canary', 'rollback', 'auto_rollback']),
  from_version: z.number().nullable(),
  to_version: z.number().nullable(),
  canary_percent: z.number().nullable(),
  actor: z.string(),
  reason: z.string().nullable(),
  created_at: z.number(),
});
export type AuditRow = z.infer<typeof AuditRow>;
type AuditAction = AuditRow['action'];

const RELEASE_COLUMNS = sql.fragment`agent_id, active_version, canary_version, canary_percent, activated_at, updated_at`;
const AUDIT_COLUMNS = sql.fragment`id, agent_id, action, from_version, to_version, canary_percent, actor, reason, created_at`;

export async function getRelease(db: CommonQueryMethods, agentId: string): Promise<ReleaseRow | null> {
  return db.maybeOne(sql.type(ReleaseRow)`SELECT ${RELEASE_COLUMNS} FROM agent_releases WHERE agent_id = ${agentId}`);
}

export async function listReleases(db: CommonQueryMethods): Promise<ReleaseRow[]> {
  return [...(await db.any(sql.type(ReleaseRow)`SELECT ${RELEASE_COLUMNS} FROM agent_releases ORDER BY agent_id`))];
}

export async function listVersions(db: CommonQueryMethods, agentId: string): Promise<VersionRow[]> {
  const rows = await db.any(sql.type(VersionRow)`
    SELECT id, version, digest, status, published_by, created_at, definition FROM agents WHERE id = ${agentId} ORDER BY version DESC`);
  return [...rows];
}

export async function listAudit(db: CommonQueryMethods, agentId: string, limit: number): Promise<AuditRow[]> {
  const rows = await db.any(sql.type(AuditRow)`SELECT ${AUDIT_COLUMNS} FROM release_audit WHERE agent_id = ${agentId} ORDER BY id DESC LIMIT ${limit}`);
  return [...rows];
}

async function audit(
  tx: CommonQueryMethods,
  a: { agentId: string; action: AuditAction; from: number | null; to: number | null; canaryPercent?: number | null; actor: string; reason?: string | null; checkId?: string | null },
): Promise<AuditRow> {
  return tx.one(sql.type(AuditRow)`
    INSERT INTO release_audit (agent_id, action, from_version, to_version, canary_percent, actor, reason, check_id)
    VALUES (${a.agentId}, ${a.action}, ${a.from}, ${a.to}, ${a.canaryPercent ?? null}, ${a.actor}, ${a.reason ?? null}, ${a.checkId ?? null})
    RETURNING ${AUDIT_COLUMNS}`);
}

async function setStatus(tx: CommonQueryMethods, agentId: string, version: number, status: VersionStatus): Promise<void> {
  await tx.query(sql.unsafe`UPDATE agents SET status = ${status} WHERE id = ${agentId} AND version = ${version}`);
}

async function lockRelease(tx: DatabaseTransactionConnection, agentId: string): Promise<ReleaseRow | null> {
  return tx.maybeOne(sql.type(ReleaseRow)`SELECT ${RELEASE_COLUMNS} FROM agent_releases WHERE agent_id = ${agentId} FOR UPDATE`);
}

/** Records who stored a version the definitions file or the API published. */
export async function recordPublished(db: DatabasePool, synced: SyncedAgent, actor: string): Promise<void> {
  if (!synced.created) return;
  await db.transaction(async (tx) => {
    await tx.query(sql.unsafe`UPDATE agents SET published_by = ${actor} WHERE id = ${synced.id} AND version = ${synced.version}`);
    await audit(tx, { agentId: synced.id, action: 'publish', from: null, to: synced.version, actor });
  });
}

/**
 * At start, the definitions file's version of each agent becomes the active release when it is
 * newer than the version the file released last: the file seeds version 1, and a changed
 * definition (a new version) is activated, as a deploy is a release. An unchanged file changes
 * nothing, so a rollback outlives restarts; neither does a file whose definition is an older
 * version (a reverted file, or an old process restarting during a rolling deploy, which must not
 * undo the deploy): activate that one through the API. Processes starting together release it
 * once (the check and the change hold the agent's release lock).
 */
export async function releaseFileVersions(db: DatabasePool, synced: SyncedAgent[], actor: string): Promise<void> {
  for (const s of synced) {
    await recordPublished(db, s, actor);
    await db.transaction(async (tx) => {
      await lockAgent(tx, s.id);
      const last = await tx.maybeOne(sql.type(z.object({ to_version: z.number() }))`
        SELECT to_version FROM release_audit WHERE agent_id = ${s.id} AND actor = ${actor} AND action = 'activate' ORDER BY id DESC LIMIT 1`);
      if (last && s.version <= last.to_version!) return;
      await activateIn(tx, { agentId: s.id, version: s.version, actor, reason: last ? 'the definitions file changed' : 'first version from the definitions file' });
    });
  }
}

async function lockAgent(tx: DatabaseTransactionConnection, agentId: string): Promise<void> {
  await tx.query(sql.unsafe`SELECT pg_advisory_xact_lock(hashtext(${`release:${agentId}`}))`);
}

export interface ReleaseChange {
  release: ReleaseRow;
  audit: AuditRow;
}

/**
 * Makes `version` the active version (canaryPercent absent or 100) or the canary. Two processes
 * changing one agent's release queue on its row, so each change reads the one before it.
 */
export async function activateVersion(db: DatabasePool, a: Activation): Promise<ReleaseChange> {
  return db.transaction(async (tx) => {
    await lockAgent(tx, a.agentId);
    return activateIn(tx, a);
  });
}

type Activation = { agentId: string; version: number; canaryPercent?: number; actor: string; reason?: string };

async function activateIn(tx: DatabaseTransactionConnection, a: Activation): Promise<ReleaseChange> {
  const exists = await tx.maybeOne(sql.type(z.object({ version: z.number() }))`SELECT version FROM agents WHERE id = ${a.agentId} AND version = ${a.version}`);
  if (!exists) throw new KeelError('VERSION_NOT_FOUND', 'No such agent version', { agentId: a.agentId, version: a.version });
  const current = await lockRelease(tx, a.agentId);
  const canary = a.canaryPercent !== undefined && a.canaryPercent < 100;
  if (!current) {
    if (canary) throw new KeelError('NO_ACTIVE_VERSION', 'An agent needs an active version before it can have a canary', { agentId: a.agentId });
    const release = await tx.one(sql.type(ReleaseRow)`
      INSERT INTO agent_releases (agent_id, active_version) VALUES (${a.agentId}, ${a.version}) RETURNING ${RELEASE_COLUMNS}`);
    await setStatus(tx, a.agentId, a.version, 'active');
    return { release, audit: await audit(tx, { agentId: a.agentId, action: 'activate', from: null, to: a.version, actor: a.actor, reason: a.reason ?? null }) };
  }
  if (canary) {
    if (a.version === current.active_version) throw new KeelError('VERSION_ALREADY_ACTIVE', 'This version is already the active version', { agentId: a.agentId, version: a.version });
    if (current.canary_version !== null && current.canary_version !== a.version) await setStatus(tx, a.agentId, current.canary_version, 'published');
    const release = await tx.one(sql.type(ReleaseRow)`
      UPDATE agent_releases SET canary_version = ${a.version}, canary_percent = ${a.canaryPercent!}, updated_at = now()
      WHERE agent_id = ${a.agentId} RETURNING ${RELEASE_COLUMNS}`);
    await setStatus(tx, a.agentId, a.version, 'canary');
    return { release, audit: await audit(tx, { agentId: a.agentId, action: 'canary', from: current.canary_version, to: a.version, canaryPercent: a.canaryPercent!, actor: a.actor, reason: a.reason ?? null }) };
  }
  if (a.version !== current.active_version) await retire(tx, a.agentId, current.active_version);
  const promotesCanary = current.canary_version === a.version;
  const release = await tx.one(sql.type(ReleaseRow)`
    UPDATE agent_releases SET active_version = ${a.version}, activated_at = now(), updated_at = now(),
      canary_version = ${promotesCanary ? null : current.canary_version}, canary_percent = ${promotesCanary ? null : current.canary_percent}
    WHERE agent_id = ${a.agentId} RETURNING ${RELEASE_COLUMNS}`);
  await setStatus(tx, a.agentId, a.version, 'active');
  return { release, audit: await audit(tx, { agentId: a.agentId, action: 'activate', from: current.active_version, to: a.version, actor: a.actor, reason: a.reason ?? null }) };
}

async function retire(tx: CommonQueryMethods, agentId: string, version: number): Promise<void> {
  await tx.query(sql.unsafe`UPDATE agents SET status = 'retired' WHERE id = ${agentId} AND version = ${version} AND status <> 'rolled_back'`);
}

/** The version that was active most recently before, other than `bad`, and not rolled back since. */
export async function previousGoodVersion(tx: CommonQueryMethods, agentId: string, bad: number): Promise<number | null> {
  const row = await tx.maybeOne(sql.type(z.object({ to_version: z.number() }))`
    SELECT a.to_version FROM release_audit a JOIN agents g ON g.id = a.agent_id AND g.version = a.to_version
    WHERE a.agent_id = ${agentId} AND a.action IN ('activate', 'rollback', 'auto_rollback')
      AND a.to_version <> ${bad} AND g.status <> 'rolled_back'
    ORDER BY a.id DESC LIMIT 1`);
  return row?.to_version ?? null;
}

export interface RollbackResult extends ReleaseChange {
  role: 'active' | 'canary';
  from: number;
  /** The version new sessions get instead of `from`. */
  to: number;
}

/**
 * Takes a version out: a canary is dropped (new sessions all get the active version), an active
 * version is replaced by the previous good one. The version is marked rolled_back either way.
 * `expect`, when given, makes the rollback conditional: nothing happens (null) unless `version`
 * still has that role, so a health check that raced an operator's change does no harm.
 */
export async function rollbackRelease(
  db: DatabasePool,
  r: { agentId: string; version?: number; reason: string; actor: string; automatic: boolean; expect?: 'active' | 'canary'; checkId?: string },
): Promise<RollbackResult | null> {
  return db.transaction(async (tx) => {
    await lockAgent(tx, r.agentId);
    const current = await lockRelease(tx, r.agentId);
    if (!current) throw new KeelError('AGENT_NOT_FOUND', 'No such agent', { agentId: r.agentId });
    const version = r.version ?? current.canary_version ?? current.active_version;
    const role = version === current.canary_version ? 'canary' : version === current.active_version ? 'active' : null;
    if (r.expect && role !== r.expect) return null;
    if (role === null) throw new KeelError('VERSION_NOT_ACTIVE', 'Only the active or the canary version can be rolled back', { agentId: r.agentId, version });
    const action = r.automatic ? 'auto_rollback' : 'rollback';
    if (role === 'canary') {
      const release = await tx.one(sql.type(ReleaseRow)`
        UPDATE agent_releases SET canary_version = NULL, canary_percent = NULL, updated_at = now() WHERE agent_id = ${r.agentId} RETURNING ${RELEASE_COLUMNS}`);
      await setStatus(tx, r.agentId, version, 'rolled_back');
      const row = await audit(tx, { agentId: r.agentId, action, from: version, to: current.active_version, actor: r.actor, reason: r.reason, checkId: r.checkId ?? null });
      return { release, audit: row, role, from: version, to: current.active_version };
    }
    const to = await previousGoodVersion(tx, r.agentId, version);
    if (to === null) {
      if (r.expect) return null;
      throw new KeelError('NO_PREVIOUS_VERSION', 'There is no earlier good version to roll back to', { agentId: r.agentId, version });
    }
    const release = await tx.one(sql.type(ReleaseRow)`
      UPDATE agent_releases SET active_version = ${to}, activated_at = now(), updated_at = now(),
        canary_version = CASE WHEN canary_version = ${to} THEN NULL ELSE canary_version END,
        canary_percent = CASE WHEN canary_version = ${to} THEN NULL ELSE canary_percent END
      WHERE agent_id = ${r.agentId} RETURNING ${RELEASE_COLUMNS}`);
    await setStatus(tx, r.agentId, version, 'rolled_back');
    await setStatus(tx, r.agentId, to, 'active');
    const row = await audit(tx, { agentId: r.agentId, action, from: version, to, actor: r.actor, reason: r.reason, checkId: r.checkId ?? null });
    return { release, audit: row, role, from: version, to };
  });
}

/** Active sessions on a version; with `moveTo`, they are switched to that version (their workflows are told separately). */
export async function sessionsOnVersion(db: CommonQueryMethods, agentId: string, version: number): Promise<string[]> {
  const rows = await db.any(sql.type(z.object({ id: z.string() }))`
    SELECT id FROM sessions WHERE agent_id = ${agentId} AND agent_version = ${version} AND status = 'active'`);
  return rows.map((r) => r.id);
}

export async function moveSessions(db: CommonQueryMethods, ids: string[], agentId: string, from: number, to: number): Promise<number> {
  if (ids.length === 0) return 0;
  const result = await db.query(sql.unsafe`
    UPDATE sessions SET agent_version = ${to}, updated_at = now()
    WHERE id = ANY(${sql.array(ids, 'text')}) AND agent_id = ${agentId} AND agent_version = ${from} AND status = 'active'`);
  return result.rowCount;
}

/** The automatic rollback a health check made, if it made one (a retried rollback finds its own). */
export async function rollbackOfCheck(db: CommonQueryMethods, checkId: string): Promise<AuditRow | null> {
  return db.maybeOne(sql.type(AuditRow)`SELECT ${AUDIT_COLUMNS} FROM release_audit WHERE check_id = ${checkId}`);
}

/** The agent's last automatic rollback, if it happened within `windowMs` (the database's clock). */
export async function recentAutoRollback(db: CommonQueryMethods, agentId: string, windowMs: number): Promise<AuditRow | null> {
  return db.maybeOne(sql.type(AuditRow)`
    SELECT ${AUDIT_COLUMNS} FROM release_audit
    WHERE agent_id = ${agentId} AND action = 'auto_rollback' AND created_at > now() - make_interval(secs => ${windowMs / 1000})
    ORDER BY id DESC LIMIT 1`);
}
