import { sql, type CommonQueryMethods, type DatabaseTransactionConnection } from 'slonik';
import { z } from 'zod';
import type { WebhookTarget } from '../contracts/webhooks';
import { IncidentRow } from './incidents';

export const WebhookDeliveryRow = z.object({
  delivery_id: z.string(),
  target_kind: z.enum(['run', 'incident']),
  target_id: z.string(),
  attempt: z.number(),
  outcome: z.enum(['delivered', 'failed', 'refused']),
  http_status: z.number().nullable(),
  error: z.string().nullable(),
  duration_ms: z.number(),
  created_at: z.number(),
});
export type WebhookDeliveryRow = z.infer<typeof WebhookDeliveryRow>;

export interface DeliveryAttempt {
  deliveryId: string;
  target: WebhookTarget;
  attempt: number;
  outcome: WebhookDeliveryRow['outcome'];
  httpStatus?: number;
  error?: string;
  durationMs: number;
}

/** Records one attempt's outcome; recording the same attempt again (a retried write) changes nothing. */
export async function recordDeliveryAttempt(db: CommonQueryMethods, a: DeliveryAttempt): Promise<void> {
  await db.query(sql.unsafe`
    INSERT INTO webhook_deliveries (delivery_id, target_kind, target_id, attempt, outcome, http_status, error, duration_ms)
    VALUES (${a.deliveryId}, ${a.target.kind}, ${a.target.id}, ${a.attempt}, ${a.outcome}, ${a.httpStatus ?? null}, ${a.error?.slice(0, 500) ?? null}, ${Math.round(a.durationMs)})
    ON CONFLICT (delivery_id, attempt) DO NOTHING`);
}

/** A delivery that ended without being delivered is failed, unless an attempt did deliver it (and its completion was lost). */
export async function settleUndelivered(db: CommonQueryMethods, target: WebhookTarget): Promise<void> {
  if (target.kind === 'run') {
    await db.query(sql.unsafe`UPDATE runs SET webhook_status = 'failed', updated_at = statement_timestamp() WHERE id = ${target.id} AND webhook_status IS DISTINCT FROM 'delivered'`);
  } else {
    await db.query(sql.unsafe`UPDATE incidents SET notified_at = COALESCE(notified_at, now()), notify_status = 'failed' WHERE id = ${target.id} AND notify_status IS DISTINCT FROM 'delivered'`);
  }
}

/** Every attempt for one target, oldest first. */
export async function deliveriesOf(db: CommonQueryMethods, target: WebhookTarget): Promise<WebhookDeliveryRow[]> {
  const rows = await db.any(sql.type(WebhookDeliveryRow)`
    SELECT delivery_id, target_kind, target_id, attempt, outcome, http_status, error, duration_ms, created_at
    FROM webhook_deliveries WHERE target_kind = ${target.kind} AND target_id = ${target.id} ORDER BY id`);
  return [...rows];
}

export function deliveryView(d: WebhookDeliveryRow) {
  return {
    attempt: d.attempt,
    outcome: d.outcome,
    httpStatus: d.http_status,
    error: d.error,
    durationMs: d.duration_ms,
    at: new Date(d.created_at).toISOString(),
  };
}

/** Incidents not yet handed to the notification webhook, locked for this transaction (other workers skip them). */
export async function lockUnnotifiedIncidents(tx: DatabaseTransactionConnection, limit: number): Promise<IncidentRow[]> {
  const rows = await tx.any(sql.type(IncidentRow)`
    SELECT * FROM incidents WHERE notified_at IS NULL ORDER BY created_at LIMIT ${limit} FOR UPDATE SKIP LOCKED`);
  return [...rows];
}
