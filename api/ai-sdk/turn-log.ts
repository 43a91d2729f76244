import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

// The turn queries repeat the expression and type predicate of migration 009's partial index
// session_events_turn_starts (session_id, ((data->>'turn')::int)) WHERE type IN
// ('message.accepted', 'stream.start'), so the planner can use it.

/** The message turn `turn` answers (its first stream.start's replyTo, else the first message accepted into it), or null. */
export async function replyToOfTurn(db: CommonQueryMethods, sessionId: string, turn: number): Promise<string | null> {
  return db.maybeOneFirst(sql.type(z.object({ reply_to: z.string() }))`
    SELECT CASE WHEN type = 'stream.start' THEN data->>'replyTo' ELSE data->>'messageId' END AS reply_to FROM session_events
    WHERE session_id = ${sessionId} AND type IN ('message.accepted', 'stream.start') AND ((data->>'turn')::int) = ${turn}
    ORDER BY type = 'stream.start' DESC, seq LIMIT 1`);
}

/** The seq just before the turn's first event, its first message accepted or model call (what a replay of the whole turn starts after). */
export async function seqBeforeTurn(db: CommonQueryMethods, sessionId: string, turn: number): Promise<number | null> {
  const first = await db.oneFirst(sql.type(z.object({ first: z.number().nullable() }))`
    SELECT MIN(seq)::int AS first FROM session_events
    WHERE session_id = ${sessionId} AND type IN ('message.accepted', 'stream.start') AND ((data->>'turn')::int) = ${turn}`);
  return first === null ? null : first - 1;
}

/** The session's last finished turn (0: none yet), by migration 009's partial index session_events_turns_done. */
export async function lastDoneTurn(db: CommonQueryMethods, sessionId: string): Promise<number> {
  return db.oneFirst(sql.type(z.object({ turn: z.number() }))`
    SELECT COALESCE(MAX(((data->>'turn')::int)), 0)::int AS turn FROM session_events WHERE session_id = ${sessionId} AND type = 'turn.done'`);
}

/** The session's approvals waiting for a decision that have not expired, oldest first. */
export async function openApprovals(db: CommonQueryMethods, sessionId: string): Promise<{ toolCallId: string; expiresAt: string | null }[]> {
  const rows = await db.any(sql.type(z.object({ id: z.string(), expires_at: z.number().nullable() }))`
    SELECT id, expires_at FROM tool_calls
    WHERE session_id = ${sessionId} AND status = 'pending_approval' AND (expires_at IS NULL OR expires_at > now())
    ORDER BY created_at`);
  return rows.map((r) => ({ toolCallId: r.id, expiresAt: r.expires_at === null ? null : new Date(r.expires_at).toISOString() }));
}
