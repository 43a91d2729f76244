import { Context } from '@temporalio/activity';
import type { Client } from '@temporalio/client';
import type OpenAI from 'openai';
import { sql, type DatabasePool } from 'slonik';
import type { AgentVersions } from '../agents/versions';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import type { Settings } from '../config/settings';
import {
  EvaluateReleaseInput,
  ReleaseTarget,
  RollbackReleaseInput,
  type ProbeResult,
  type ReleaseEvaluation,
  type RollbackOutcome,
} from '../contracts/releases';
import { recordIncident } from '../db/incidents';
import { listReleases, previousGoodVersion, rollbackOfCheck, recentAutoRollback, rollbackRelease as rollBack, sessionsOnVersion } from '../db/releases';
import { isHealthy, verdictsFor } from '../releases/decide';
import { liveSignals } from '../releases/live-signals';
import { moveSessionsOff } from '../releases/move-sessions';
import { runProbe, type ProbeDeps } from '../releases/probe';
import type { Tool } from '../tools';
import { classifyingPersistenceErrors, parseActivityInput } from './persistence-errors';

export interface ReleaseActivityDeps {
  pool: DatabasePool;
  openai: OpenAI;
  client: Client;
  versions: AgentVersions;
  tools: Readonly<Record<string, Tool>>;
  settings: Settings;
  metrics: Metrics;
  log: Logger;
}

/** Who the audit and the incidents name for what the health check does on its own. */
export const HEALTH_CHECK_ACTOR = 'health-check';
const HEARTBEAT_MS = 1_000;

/** The scheduled health check's and the release watch's activities. */
export function createReleaseActivities(deps: ReleaseActivityDeps) {
  const { pool, settings } = deps;
  const config = settings.releases;
  const probeDeps: ProbeDeps = { openai: deps.openai, pool, tools: deps.tools, toolSettings: settings.tools, defaultModel: settings.llm.model, timeoutMs: config.probeTimeoutMs };

  /** Every active and canary version, each once. */
  async function listReleaseTargets(): Promise<ReleaseTarget[]> {
    const releases = await listReleases(pool);
    return releases.flatMap((r) => [
      { agentId: r.agent_id, version: r.active_version, role: 'active' as const },
      ...(r.canary_version === null ? [] : [{ agentId: r.agent_id, version: r.canary_version, role: 'canary' as const }]),
    ]);
  }

  /** Whether the version still has the role the watch was started for (an operator may have moved on). */
  async function stillReleased(raw: ReleaseTarget): Promise<boolean> {
    const target = parseActivityInput(ReleaseTarget, raw);
    return (await listReleaseTargets()).some((t) => t.agentId === target.agentId && t.version === target.version && t.role === target.role);
  }

  /**
   * Runs the version's probes (each retried up to KEEL_HEALTH_PROBE_ATTEMPTS times before it
   * counts as failed) and reads its live signals, applies the rules, and records the check
   * with its evidence. A retried attempt records its own, newer evidence under the same ID.
   */
  async function evaluateRelease(raw: EvaluateReleaseInput): Promise<ReleaseEvaluation> {
    const input = parseActivityInput(EvaluateReleaseInput, raw);
    const ctx = Context.current();
    const { target } = input;
    const startedAt = new Date();
    const agent = await deps.versions.get(target.agentId, target.version);
    if (!agent) throw new Error(`agent ${target.agentId} version ${target.version} is not stored`);
    const beat = setInterval(() => ctx.heartbeat(), HEARTBEAT_MS);
    let probes: ProbeResult[];
    try {
      probes = [];
      for (const probe of agent.healthChecks) {
        let result = await runProbe(probeDeps, agent, probe, ctx.cancellationSignal);
        for (let attempt = 2; !result.passed && attempt <= config.probeAttempts && !ctx.cancellationSignal.aborted; attempt++) {
          result = await runProbe(probeDeps, agent, probe, ctx.cancellationSignal);
        }
        probes.push(result);
      }
    } finally {
      clearInterval(beat);
    }
    const live = await liveSignals(pool, target.agentId, target.version, config.windowMs, config.minSample);
    const verdicts = verdictsFor(probes, live, config.thresholds);
    const run = ctx.info.workflowExecution;
    const evaluation: ReleaseEvaluation = {
      checkId: `chk_${run?.workflowId ?? 'direct'}_${(run?.runId ?? '').slice(0, 8)}_${ctx.info.activityId}`,
      target,
      healthy: isHealthy(verdicts),
      startedAt: startedAt.toISOString(),
      checkedAt: new Date().toISOString(),
      probes,
      live,
      verdicts,
    };
    await pool.query(sql.unsafe`
      INSERT INTO release_checks (id, agent_id, version, role, trigger, healthy, decision, started_at, checked_at, evidence)
      VALUES (${evaluation.checkId}, ${target.agentId}, ${target.version}, ${target.role}, ${input.trigger}, ${evaluation.healthy},
              ${evaluation.healthy ? 'healthy' : 'rollback'}, ${evaluation.startedAt}, ${evaluation.checkedAt},
              ${sql.jsonb({ probes, live, verdicts } as never)})
      ON CONFLICT (id) DO UPDATE SET healthy = EXCLUDED.healthy, decision = EXCLUDED.decision, started_at = EXCLUDED.started_at,
        checked_at = EXCLUDED.checked_at, evidence = EXCLUDED.evidence`);
    const failed = verdicts.filter((v) => v.failed).map((v) => v.rule);
    deps.log[evaluation.healthy ? 'info' : 'warn']({ ...target, trigger: input.trigger, failed, probes: probes.length, turns: live.turns }, evaluation.healthy ? 'release healthy' : 'release unhealthy');
    return evaluation;
  }

  /**
   * Rolls the failing version back (unless someone already changed its role), records the
   * incident that the notification outbox delivers, then moves the version's sessions when
   * KEEL_ROLLBACK_MOVE_SESSIONS says so. Idempotent: a retry finds the rollback its check made.
   *
   * An active version is not rolled back when that cannot help: another automatic rollback of
   * the agent happened within the health window, or the version it would go back to fails its
   * probes too. Both are what an outage of the provider or a tool looks like, and rolling back
   * then would walk back through every good version; a release_unhealthy incident is raised instead.
   */
  async function rollbackRelease(raw: RollbackReleaseInput): Promise<RollbackOutcome> {
    const input = parseActivityInput(RollbackReleaseInput, raw);
    const ctx = Context.current();
    const { evaluation } = input;
    const { target } = evaluation;
    const failed = evaluation.verdicts.filter((v) => v.failed).map((v) => v.rule);
    let audit = await rollbackOfCheck(pool, evaluation.checkId);
    // The version lost its role meanwhile (an operator acted, or the watch and the Schedule raced): nothing to do.
    if (!audit && !(await stillReleased(target))) return noLongerReleased(evaluation.checkId);
    if (!audit) {
      const held = target.role === 'active' ? await reasonToHoldBack(target, ctx) : null;
      if (held) return unhealthy(input, failed, held);
      const reason = `health check failed: ${failed.join(', ')}`;
      const made = await rollBack(pool, { agentId: target.agentId, version: target.version, reason, actor: HEALTH_CHECK_ACTOR, automatic: true, expect: target.role, checkId: evaluation.checkId }).catch((error: unknown) => {
        if ((error as { code?: string }).code === 'AGENT_NOT_FOUND') return null;
        throw error;
      });
      audit = made?.audit ?? null;
    }
    if (!audit) {
      // The version lost its role in the meantime, or an active one has nothing to go back to.
      if (!(await stillReleased(target))) return noLongerReleased(evaluation.checkId);
      return unhealthy(input, failed, 'there is no earlier good version to roll back to');
    }
    const to = audit.to_version!;
    const affected = await sessionsOnVersion(pool, target.agentId, target.version);
    // The incident first: it must not wait on (or be lost with) the move of many sessions.
    const { incident, created } = await recordIncident(pool, {
      kind: 'release_rolled_back',
      dedupeKey: `release_rolled_back:${target.agentId}:${target.version}:${audit.id}`,
      summary: `${target.agentId} v${target.version} (${target.role}) failed its health check (${failed.join(', ')}) and was rolled back to v${to}`,
      agentId: target.agentId,
      version: target.version,
      detectedAt: new Date(evaluation.checkedAt),
      decidedAt: new Date(input.decidedAt),
      rolledBackAt: new Date(audit.created_at),
      evidence: { checkId: evaluation.checkId, failed, rolledBackTo: to, role: target.role, probes: evaluation.probes, live: evaluation.live, verdicts: evaluation.verdicts, sessionsMoved: config.moveSessions },
      affectedSessions: affected.length,
    });
    if (created) {
      deps.metrics.rollbacks.inc({ role: target.role });
      deps.log.warn({ ...target, to, incidentId: incident.id, affectedSessions: affected.length, failed }, 'release rolled back');
    }
    const moved = await moveSessionsOff(
      { pool, client: deps.client, versions: deps.versions, defaultModel: settings.llm.model },
      { agentId: target.agentId, from: target.version, to, move: config.moveSessions, requestedBy: HEALTH_CHECK_ACTOR },
      () => ctx.heartbeat(),
    );
    return { rolledBack: true, toVersion: to, incidentId: incident.id, affectedSessions: moved.affected, movedSessions: moved.moved };
  }

  /** Why an active version should not be rolled back automatically now, or null. */
  async function reasonToHoldBack(target: ReleaseTarget, ctx: Context): Promise<string | null> {
    const last = await recentAutoRollback(pool, target.agentId, config.windowMs);
    // A rollback of this very version (by the other of the watch and the Schedule) is no outage.
    if (last && last.from_version !== target.version) {
      return `${target.agentId} was already rolled back automatically at ${new Date(last.created_at).toISOString()} (v${last.from_version} → v${last.to_version}); another failure within the health window looks like an outage, not a bad release`;
    }
    const to = await previousGoodVersion(pool, target.agentId, target.version);
    const replacement = to === null ? null : await deps.versions.get(target.agentId, to);
    if (!replacement) return null;
    const beat = setInterval(() => ctx.heartbeat(), HEARTBEAT_MS);
    try {
      for (const probe of replacement.healthChecks) {
        const result = await runProbe(probeDeps, replacement, probe, ctx.cancellationSignal);
        if (!result.passed) return `v${to}, the version it would roll back to, fails its probe "${probe.name}" too (${result.failures.join('; ')}): an outage, not a bad release`;
      }
    } finally {
      clearInterval(beat);
    }
    return null;
  }

  /** A failing version left in place: the check says so, and a release_unhealthy incident is raised (once per version). */
  async function unhealthy(input: RollbackReleaseInput, failed: string[], why: string): Promise<RollbackOutcome> {
    const { evaluation } = input;
    const { target } = evaluation;
    await setDecision(evaluation.checkId, 'no_rollback');
    const { incident, created } = await recordIncident(pool, {
      kind: 'release_unhealthy',
      dedupeKey: `release_unhealthy:${target.agentId}:${target.version}`,
      summary: `${target.agentId} v${target.version} (${target.role}) is failing its health check (${failed.join(', ')}) and was not rolled back: ${why}`,
      agentId: target.agentId,
      version: target.version,
      detectedAt: new Date(evaluation.checkedAt),
      decidedAt: new Date(input.decidedAt),
      evidence: { checkId: evaluation.checkId, failed, notRolledBack: why, probes: evaluation.probes, live: evaluation.live, verdicts: evaluation.verdicts },
    });
    if (created) deps.log.error({ ...target, incidentId: incident.id, failed, why }, 'release unhealthy, not rolled back');
    return { rolledBack: false, skipped: why, toVersion: null, incidentId: incident.id, affectedSessions: 0, movedSessions: 0 };
  }

  async function noLongerReleased(checkId: string): Promise<RollbackOutcome> {
    await setDecision(checkId, 'no_rollback');
    return { rolledBack: false, skipped: 'the version is no longer active or canary', toVersion: null, incidentId: null, affectedSessions: 0, movedSessions: 0 };
  }

  async function setDecision(checkId: string, decision: 'no_rollback'): Promise<void> {
    await pool.query(sql.unsafe`UPDATE release_checks SET decision = ${decision} WHERE id = ${checkId}`);
  }

  return classifyingPersistenceErrors({ listReleaseTargets, stillReleased, evaluateRelease, rollbackRelease });
}

export type ReleaseActivities = ReturnType<typeof createReleaseActivities>;
