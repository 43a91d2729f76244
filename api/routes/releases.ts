import Router from '@koa/router';
import { sql } from 'slonik';
import { WorkflowExecutionAlreadyStartedError } from '@temporalio/client';
import { AGENT_ID_PATTERN, AgentDefinition, resolveAgent } from '../../contracts/agents';
import { KeelError } from '../../contracts/errors';
import { ActivateBody, IncidentListQuery, releaseWatchWorkflowId, RollbackBody, type ReleaseTarget } from '../../contracts/releases';
import { syncAgents } from '../../db/agents';
import { incidentView, listIncidents } from '../../db/incidents';
import { activateVersion, getRelease, listAudit, listReleases, listVersions, recordPublished, rollbackRelease, type AuditRow, type ReleaseRow, type VersionRow } from '../../db/releases';
import { moveSessionsOff } from '../../releases/move-sessions';
import type { releaseWatchWorkflow } from '../../workflows';
import { adminCallerOf } from '../auth';
import type { ApiDeps } from '../deps';
import { parseInput } from '../errors';

const AUDIT_ROWS_SHOWN = 50;
const iso = (ms: number) => new Date(ms).toISOString();

function releaseView(r: ReleaseRow) {
  return { activeVersion: r.active_version, canaryVersion: r.canary_version, canaryPercent: r.canary_percent, activatedAt: iso(r.activated_at), updatedAt: iso(r.updated_at) };
}

function versionView(v: VersionRow) {
  return { version: v.version, digest: v.digest, status: v.status, publishedBy: v.published_by, createdAt: iso(v.created_at), definition: v.definition };
}

function auditView(a: AuditRow) {
  return { id: a.id, action: a.action, fromVersion: a.from_version, toVersion: a.to_version, canaryPercent: a.canary_percent, actor: a.actor, reason: a.reason, at: iso(a.created_at) };
}

function agentIdOf(raw: string | undefined): string {
  if (!raw || !AGENT_ID_PATTERN.test(raw)) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: 'id', problem: 'must be 1 to 64 letters, digits, "_" or "-"' }]);
  return raw;
}

/** Agent versions as releases: publish, activate (or canary), roll back, and the incidents the health check raises. */
export function releaseRoutes(deps: ApiDeps): Router {
  const router = new Router({ prefix: '/api/v1' });

  router.get('/agents', async (ctx) => {
    const releases = await listReleases(deps.pool);
    const agents = await Promise.all(
      releases.map(async (r) => {
        const a = await deps.sessions.versions.get(r.agent_id, r.active_version);
        if (!a) return null;
        return {
          id: a.id,
          version: a.version,
          name: a.name,
          description: a.description ?? null,
          busyPolicy: a.busyPolicy,
          maxStepsPerTurn: a.maxStepsPerTurn,
          approvalTtlMs: a.approvalTtlMs,
          permission: a.permission ?? null,
          personality: a.personality ?? null,
          release: releaseView(r),
          tools: a.tools.map((t) => ({ name: t.name, description: t.description, permission: t.permission, requiresApproval: t.requiresApproval, approvalTtlMs: t.approvalTtlMs })),
        };
      }),
    );
    ctx.body = { agents: agents.filter((a) => a !== null) };
  });

  router.post('/agents/:id/versions', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const agentId = agentIdOf(ctx.params.id);
    const body = (ctx.request.body ?? {}) as Record<string, unknown>;
    if (typeof body !== 'object' || Array.isArray(body)) throw new KeelError('VALIDATION_ERROR', 'The body must be an agent definition object');
    if (body.id !== undefined && body.id !== agentId) throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: 'id', problem: `must be "${agentId}" (the agent in the path) or left out` }]);
    const def = parseInput(AgentDefinition, { ...body, id: agentId });
    await deps.tools.ensure(def.tools);
    try {
      resolveAgent(def, 0, '', deps.tools.definitions);
    } catch (error) {
      throw new KeelError('VALIDATION_ERROR', 'The request is invalid', [{ field: 'tools', problem: (error as Error).message }]);
    }
    const [synced] = await syncAgents(deps.pool, [def]);
    await recordPublished(deps.pool, synced!, caller.userId);
    const stored = (await listVersions(deps.pool, agentId)).find((v) => v.version === synced!.version)!;
    deps.log.info({ agentId, version: synced!.version, created: synced!.created, by: caller.userId }, 'agent version published');
    ctx.status = synced!.created ? 201 : 200;
    ctx.body = { agentId, created: synced!.created, ...versionView(stored) };
  });

  router.get('/agents/:id/versions', async (ctx) => {
    adminCallerOf(ctx);
    const agentId = agentIdOf(ctx.params.id);
    // One snapshot: a rollback committing meanwhile shows in all three or in none.
    const { versions, release, audit } = await deps.pool.transaction(async (tx) => {
      await tx.query(sql.unsafe`SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY`);
      return { versions: await listVersions(tx, agentId), release: await getRelease(tx, agentId), audit: await listAudit(tx, agentId, AUDIT_ROWS_SHOWN) };
    });
    if (versions.length === 0) throw new KeelError('AGENT_NOT_FOUND', 'No such agent', { agentId });
    ctx.body = { agentId, release: release ? releaseView(release) : null, versions: versions.map(versionView), audit: audit.map(auditView) };
  });

  router.post('/agents/:id/activate', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const agentId = agentIdOf(ctx.params.id);
    const body = parseInput(ActivateBody, ctx.request.body);
    const change = await activateVersion(deps.pool, { agentId, version: body.version, actor: caller.userId, ...(body.canaryPercent === undefined ? {} : { canaryPercent: body.canaryPercent }), ...(body.reason ? { reason: body.reason } : {}) });
    const role: ReleaseTarget['role'] = change.release.canary_version === body.version ? 'canary' : 'active';
    const watch = body.watch ? await startWatch(deps, { agentId, version: body.version, role }, change.audit.id) : null;
    deps.log.info({ agentId, version: body.version, role, canaryPercent: change.release.canary_percent, by: caller.userId, watch }, 'agent version activated');
    ctx.body = { agentId, release: releaseView(change.release), audit: auditView(change.audit), watch };
  });

  router.post('/agents/:id/rollback', async (ctx) => {
    const caller = adminCallerOf(ctx);
    const agentId = agentIdOf(ctx.params.id);
    const body = parseInput(RollbackBody, ctx.request.body);
    const result = (await rollbackRelease(deps.pool, { agentId, reason: body.reason, actor: caller.userId, automatic: false, ...(body.version === undefined ? {} : { version: body.version }) }))!;
    // The rollback stands once committed: new sessions get the replacement. Moving the sessions
    // already on the version is best effort here; those not moved keep their version.
    const moved = await moveSessionsOff(
      { pool: deps.pool, client: deps.sessions.temporal, versions: deps.sessions.versions, defaultModel: deps.settings.llm.model },
      { agentId, from: result.from, to: result.to, move: deps.settings.releases.moveSessions, requestedBy: caller.userId },
    ).catch((error: unknown) => {
      deps.log.error({ err: error, agentId, from: result.from, to: result.to }, 'rolled back, but its sessions could not all be moved');
      return { affected: null, moved: null, moveError: 'The sessions on the version could not all be moved; they keep it until they end.' };
    });
    deps.log.warn({ agentId, from: result.from, to: result.to, role: result.role, by: caller.userId, reason: body.reason, ...moved }, 'agent version rolled back');
    ctx.body = {
      agentId,
      rolledBack: result.from,
      role: result.role,
      release: releaseView(result.release),
      audit: auditView(result.audit),
      affectedSessions: moved.affected,
      movedSessions: moved.moved,
      ...('moveError' in moved ? { moveError: moved.moveError } : {}),
    };
  });

  router.get('/incidents', async (ctx) => {
    adminCallerOf(ctx);
    const query = parseInput(IncidentListQuery, ctx.query);
    ctx.body = { incidents: (await listIncidents(deps.pool, { limit: query.limit, ...(query.kind ? { kind: query.kind } : {}), ...(query.agentId ? { agentId: query.agentId } : {}) })).map(incidentView) };
  });

  return router;
}

/**
 * Starts the watch that checks a just-activated version at a faster pace for its probation
 * period. One per activation (the audit row's ID is in the workflow ID).
 */
async function startWatch(deps: ApiDeps, target: ReleaseTarget, auditId: number): Promise<{ workflowId: string } | null> {
  const { watchMs, watchIntervalMs, healthChecksEnabled } = deps.settings.releases;
  if (!healthChecksEnabled || watchMs === 0) return null;
  const workflowId = releaseWatchWorkflowId(deps.settings.temporal.taskQueue, target.agentId, target.version, auditId);
  try {
    await deps.sessions.temporal.workflow.start<typeof releaseWatchWorkflow>('releaseWatchWorkflow', {
      taskQueue: deps.settings.temporal.taskQueue,
      workflowId,
      args: [{ target, probationMs: watchMs, intervalMs: watchIntervalMs }],
    });
  } catch (error) {
    if (!(error instanceof WorkflowExecutionAlreadyStartedError)) {
      // The activation stands; the scheduled check still covers the version.
      deps.log.error({ err: error, ...target }, 'could not start the release watch');
      return null;
    }
  }
  return { workflowId };
}
