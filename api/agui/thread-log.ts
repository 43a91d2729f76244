import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';
import type { DurableEvent } from '../../contracts/events';
import { eventsAfter } from '../../db/events';
import { ToolCallRow } from '../../db/tool-calls';
import type { PendingApproval } from '../turn-waiter';

// Every query here is bounded by an index: messages by primary key, session_events by their
// (session_id, seq) key or the partial turn indexes of migration 009, whose expression
// ((data->>'turn')::int) and type predicate these queries repeat so the planner can use them.

/** A user message as stored: its content, and its turn once the session has taken it. */
export async function storedMessage(db: CommonQueryMethods, messageId: string): Promise<{ content: string; turn: number | null } | null> {
  return db.maybeOne(sql.type(z.object({ content: z.string(), turn: z.number().nullable() }))`
    SELECT content, turn FROM messages WHERE id = ${messageId} AND deleted_at IS NULL`);
}

/** Where turn `turn` starts in the log: the seq before its message.accepted, and the message it answers. */
export async function turnStart(db: CommonQueryMethods, sessionId: string, turn: number): Promise<{ before: number; replyTo: string } | null> {
  const row = await db.maybeOne(sql.type(z.object({ seq: z.number(), message_id: z.string() }))`
    SELECT seq, data->>'messageId' AS message_id FROM session_events
    WHERE session_id = ${sessionId} AND type = 'message.accepted' AND ((data->>'turn')::int) = ${turn}
    ORDER BY seq LIMIT 1`);
  return row ? { before: row.seq - 1, replyTo: row.message_id } : null;
}

/** The turn.done of turn `turn`, once it is over. */
export async function turnDone(db: CommonQueryMethods, sessionId: string, turn: number): Promise<DurableEvent | null> {
  const seq = await db.maybeOneFirst(sql.type(z.object({ seq: z.number() }))`
    SELECT seq FROM session_events
    WHERE session_id = ${sessionId} AND type = 'turn.done' AND ((data->>'turn')::int) = ${turn}
    ORDER BY seq LIMIT 1`);
  if (seq === null) return null;
  const [done] = await eventsAfter(db, sessionId, seq - 1, 1);
  return done ?? null;
}

/** The events with seq in (after, through], read by the log's key in pages of `page`. */
export async function eventsBetween(db: CommonQueryMethods, sessionId: string, after: number, through: number, page: number): Promise<DurableEvent[]> {
  const out: DurableEvent[] = [];
  for (let cursor = after; cursor < through; ) {
    const batch = (await eventsAfter(db, sessionId, cursor, Math.min(page, through - cursor))).filter((e) => e.seq <= through);
    if (batch.length === 0) break;
    out.push(...batch);
    cursor = batch[batch.length - 1]!.seq;
  }
  return out;
}

const PendingRow = ToolCallRow.pick({ id: true, name: true, arguments: true, digest: true, expires_at: true, turn: true });

/** The session's approvals still waiting for a decision (not expired), oldest first. */
export async function pendingApprovalsOf(db: CommonQueryMethods, sessionId: string, toolCallIds?: string[]): Promise<PendingApproval[]> {
  const rows = await db.any(sql.type(PendingRow)`
    SELECT id, name, arguments, digest, expires_at, turn FROM tool_calls
    WHERE status = 'pending_approval' AND session_id = ${sessionId} AND requires_approval AND expires_at > now()
      ${toolCallIds ? sql.fragment`AND id = ANY(${sql.array(toolCallIds, 'text')})` : sql.fragment``}
    ORDER BY created_at`);
  return rows.map((r) => ({ toolCallId: r.id, name: r.name, arguments: r.arguments, digest: r.digest, expiresAt: new Date(r.expires_at ?? 0).toISOString(), turn: r.turn }));
}
