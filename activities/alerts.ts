import type { CommonQueryMethods } from 'slonik';
import type { Logger } from '../config/logger';
import type { Metrics } from '../config/metrics';
import type { Settings } from '../config/settings';
import { recordIncident } from '../db/incidents';
import { databaseNow, staleWorkers, stuckTurns } from '../db/workers';
import { classifyingPersistenceErrors } from './persistence-errors';

export type AlertThresholds = Pick<Settings['operations'], 'heartbeatStaleMs' | 'turnStuckMs' | 'workersWindowMs'>;

export interface StaleWorkerAlert {
  identity: string;
  buildVersion: string;
  taskQueue: string;
  startedAt: string;
  lastHeartbeatAt: string;
  silentMs: number;
  turnsInFlight: number;
  turnsCompleted: number;
  incidentId: string;
  /** Whether this check recorded the incident (false: an earlier check did). */
  newIncident: boolean;
}

export interface StuckTurnAlert {
  sessionId: string;
  turn: number;
  agentId: string | null;
  agentVersion: number | null;
  /** Its first stream.start, or its message.accepted when it has not streamed yet. */
  startedAt: string;
  /** startedAt, or its last approval decision when that is later. */
  runningSince: string;
  runningMs: number;
  streamed: boolean;
  queuedTurns: number;
  incidentId: string;
  newIncident: boolean;
}

export interface AlertSummary {
  checkedAt: string;
  staleWorkers: StaleWorkerAlert[];
  stuckTurns: StuckTurnAlert[];
  newIncidents: number;
}

export interface AlertCheckDeps {
  pool: CommonQueryMethods;
  metrics: Metrics;
  thresholds: AlertThresholds;
  /** The time to check at; the database clock (which stamped the heartbeats and events) when absent. */
  now?: Date;
  log?: Logger;
}

const iso = (ms: number) => new Date(ms).toISOString();

/**
 * Finds stale workers and stuck turns and records an incident for each (once: by dedupe key),
 * which the notification outbox then delivers; keel_alerts_total{kind} counts the new ones.
 */
export async function runOperationalAlertChecks(deps: AlertCheckDeps): Promise<AlertSummary> {
  const { pool, metrics, thresholds, log } = deps;
  const now = deps.now ?? (await databaseNow(pool));
  const at = now.getTime();
  const summary: AlertSummary = { checkedAt: now.toISOString(), staleWorkers: [], stuckTurns: [], newIncidents: 0 };

  for (const w of await staleWorkers(pool, { now, staleMs: thresholds.heartbeatStaleMs, windowMs: thresholds.workersWindowMs })) {
    const silentMs = at - w.last_heartbeat_at;
    const facts = {
      identity: w.identity,
      buildVersion: w.build_version,
      taskQueue: w.task_queue,
      startedAt: iso(w.started_at),
      lastHeartbeatAt: iso(w.last_heartbeat_at),
      silentMs,
      turnsInFlight: w.turns_in_flight,
      turnsCompleted: w.turns_completed,
    };
    const { incident, created } = await recordIncident(pool, {
      kind: 'worker_stale',
      dedupeKey: `worker_stale:${w.identity}:${facts.lastHeartbeatAt}`,
      severity: 'warning',
      summary: `Worker ${w.identity} (task queue ${w.task_queue}, build ${w.build_version}) has sent no heartbeat for ${Math.round(silentMs / 1000)} s and was not stopped cleanly`,
      detectedAt: now,
      evidence: { ...facts, thresholdMs: thresholds.heartbeatStaleMs },
      affectedSessions: w.turns_in_flight,
    });
    if (created) {
      metrics.alerts.inc({ kind: 'worker_stale' });
      summary.newIncidents++;
      log?.warn({ identity: w.identity, silentMs, incidentId: incident.id }, 'worker stale');
    }
    summary.staleWorkers.push({ ...facts, incidentId: incident.id, newIncident: created });
  }

  for (const t of await stuckTurns(pool, { now, stuckMs: thresholds.turnStuckMs })) {
    const runningSince = Math.max(t.started_at, t.last_decision_at ?? 0);
    const facts = {
      sessionId: t.session_id,
      turn: t.turn,
      agentId: t.agent_id,
      agentVersion: t.agent_version,
      startedAt: iso(t.started_at),
      runningSince: iso(runningSince),
      runningMs: at - runningSince,
      streamed: t.streamed,
      queuedTurns: t.queued_turns,
    };
    const { incident, created } = await recordIncident(pool, {
      kind: 'turn_stuck',
      dedupeKey: `turn_stuck:${t.session_id}:${t.turn}`,
      severity: 'critical',
      summary: `Turn ${t.turn} of session ${t.session_id} has run for ${Math.round(facts.runningMs / 1000)} s without finishing`,
      detectedAt: now,
      evidence: { ...facts, thresholdMs: thresholds.turnStuckMs },
      affectedSessions: 1,
    });
    if (created) {
      metrics.alerts.inc({ kind: 'turn_stuck' });
      summary.newIncidents++;
      log?.warn({ sessionId: t.session_id, turn: t.turn, runningMs: facts.runningMs, incidentId: incident.id }, 'turn stuck');
    }
    summary.stuckTurns.push({ ...facts, incidentId: incident.id, newIncident: created });
  }
  return summary;
}

/**
 * checkOperationalAlerts, for the scheduled health-check workflow: the checks above at the
 * database's time, with the thresholds of this worker's settings. Idempotent (incidents are
 * deduplicated); a database that is down fails it retryably.
 */
export function createAlertActivities(deps: { pool: CommonQueryMethods; metrics: Metrics; log: Logger; thresholds: AlertThresholds }) {
  async function checkOperationalAlerts(): Promise<AlertSummary> {
    return runOperationalAlertChecks(deps);
  }
  return classifyingPersistenceErrors({ checkOperationalAlerts });
}

export type AlertActivities = ReturnType<typeof createAlertActivities>;
