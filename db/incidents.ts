import { randomUUID } from 'node:crypto';
import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

export const IncidentRow = z.object({
  id: z.string(),
  kind: z.string(),
  dedupe_key: z.string(),
  severity: z.enum(['warning', 'critical']),
  summary: z.string(),
  agent_id: z.string().nullable(),
  version: z.number().nullable(),
  detected_at: z.number(),
  decided_at: z.number().nullable(),
  rolled_back_at: z.number().nullable(),
  evidence: z.record(z.string(), z.unknown()),
  affected_sessions: z.number().nullable(),
  notified_at: z.number().nullable(),
  notify_status: z.string().nullable(),
  created_at: z.number(),
});
export type IncidentRow = z.infer<typeof IncidentRow>;

const COLUMNS = sql.fragment`id, kind, dedupe_key, severity, summary, agent_id, version, detected_at, decided_at, rolled_back_at, evidence, affected_sessions, notified_at, notify_status, created_at`;

export interface NewIncident {
  /** What happened: `release_rolled_back`, `worker_stale`, `turn_stuck`, … */
  kind: string;
  /** The same key raises nothing new: one incident per bad version, stale worker or stuck turn. */
  dedupeKey: string;
  severity?: 'warning' | 'critical';
  summary: string;
  agentId?: string;
  version?: number;
  detectedAt: Date;
  decidedAt?: Date;
  rolledBackAt?: Date;
  evidence: Record<string, unknown>;
  affectedSessions?: number;
}

/** Records an incident once per dedupe key; `created` is false when it was already recorded. */
export async function recordIncident(db: CommonQueryMethods, i: NewIncident): Promise<{ incident: IncidentRow; created: boolean }> {
  const ts = (d: Date | undefined) => (d ? d.toISOString() : null);
  const inserted = await db.maybeOne(sql.type(IncidentRow)`
    INSERT INTO incidents (id, kind, dedupe_key, severity, summary, agent_id, version, detected_at, decided_at, rolled_back_at, evidence, affected_sessions)
    VALUES (${`inc_${randomUUID().replace(/-/g, '')}`}, ${i.kind}, ${i.dedupeKey}, ${i.severity ?? 'critical'}, ${i.summary}, ${i.agentId ?? null}, ${i.version ?? null},
            ${ts(i.detectedAt)}, ${ts(i.decidedAt)}, ${ts(i.rolledBackAt)}, ${sql.jsonb(i.evidence as never)}, ${i.affectedSessions ?? null})
    ON CONFLICT (dedupe_key) DO NOTHING
    RETURNING ${COLUMNS}`);
  if (inserted) return { incident: inserted, created: true };
  const existing = await db.one(sql.type(IncidentRow)`SELECT ${COLUMNS} FROM incidents WHERE dedupe_key = ${i.dedupeKey}`);
  return { incident: existing, created: false };
}

export async function markIncidentNotified(db: CommonQueryMethods, id: string, status: string): Promise<void> {
  await db.query(sql.unsafe`UPDATE incidents SET notified_at = now(), notify_status = ${status} WHERE id = ${id}`);
}

export async function listIncidents(db: CommonQueryMethods, opts: { limit: number; kind?: string; agentId?: string }): Promise<IncidentRow[]> {
  const rows = await db.any(sql.type(IncidentRow)`
    SELECT ${COLUMNS} FROM incidents
    WHERE (${opts.kind ?? null}::text IS NULL OR kind = ${opts.kind ?? null})
      AND (${opts.agentId ?? null}::text IS NULL OR agent_id = ${opts.agentId ?? null})
    ORDER BY created_at DESC LIMIT ${opts.limit}`);
  return [...rows];
}

/** The API's view of an incident: ISO times, camelCase. */
export function incidentView(r: IncidentRow) {
  const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
  return {
    id: r.id,
    kind: r.kind,
    severity: r.severity,
    summary: r.summary,
    agentId: r.agent_id,
    version: r.version,
    detectedAt: iso(r.detected_at),
    decidedAt: iso(r.decided_at),
    rolledBackAt: iso(r.rolled_back_at),
    evidence: r.evidence,
    affectedSessions: r.affected_sessions,
    notifiedAt: iso(r.notified_at),
    notifyStatus: r.notify_status,
    createdAt: iso(r.created_at),
  };
}
