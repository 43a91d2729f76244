import { sql, type CommonQueryMethods } from 'slonik';
import { z } from 'zod';

/** A worker's heartbeat row; times in epoch ms, every one stamped by the database clock. */
export const WorkerRow = z.object({
  identity: z.string(),
  build_version: z.string(),
  task_queue: z.string(),
  turns_in_flight: z.number(),
  turns_completed: z.coerce.number(),
  started_at: z.number(),
  last_heartbeat_at: z.number(),
  stopped_at: z.number().nullable(),
});
export type WorkerRow = z.infer<typeof WorkerRow>;

const COLUMNS = sql.fragment`identity, build_version, task_queue, turns_in_flight, turns_completed, started_at, last_heartbeat_at, stopped_at`;

export interface Heartbeat {
  identity: string;
  buildVersion: string;
  taskQueue: string;
  turnsInFlight: number;
  turnsCompleted: number;
}

/** Writes one heartbeat (the first one creates the row); a row marked stopped is never revived. */
export async function writeHeartbeat(db: CommonQueryMethods, h: Heartbeat): Promise<void> {
  await db.query(sql.unsafe`
    INSERT INTO worker_heartbeats (identity, build_version, task_queue, turns_in_flight, turns_completed)
    VALUES (${h.identity}, ${h.buildVersion}, ${h.taskQueue}, ${h.turnsInFlight}, ${h.turnsCompleted})
    ON CONFLICT (identity) DO UPDATE
      SET turns_in_flight = EXCLUDED.turns_in_flight, turns_completed = EXCLUDED.turns_completed, last_heartbeat_at = now()
      WHERE worker_heartbeats.stopped_at IS NULL`);
}

/** The last heartbeat of a worker that stops cleanly: stopped workers are never stale. */
export async function markWorkerStopped(db: CommonQueryMethods, h: Heartbeat): Promise<void> {
  await db.query(sql.unsafe`
    INSERT INTO worker_heartbeats (identity, build_version, task_queue, turns_in_flight, turns_completed, stopped_at)
    VALUES (${h.identity}, ${h.buildVersion}, ${h.taskQueue}, ${h.turnsInFlight}, ${h.turnsCompleted}, now())
    ON CONFLICT (identity) DO UPDATE
      SET turns_in_flight = EXCLUDED.turns_in_flight, turns_completed = EXCLUDED.turns_completed, last_heartbeat_at = now(),
          stopped_at = COALESCE(worker_heartbeats.stopped_at, now())`);
}

export async function databaseNow(db: CommonQueryMethods): Promise<Date> {
  return new Date(await db.oneFirst(sql.type(z.object({ now: z.number() }))`SELECT now() AS now`));
}

/** Every worker whose last heartbeat is within `windowMs` of `now`, the latest first. */
export async function recentWorkers(db: CommonQueryMethods, opts: { now: Date; windowMs: number }): Promise<WorkerRow[]> {
  const rows = await db.any(sql.type(WorkerRow)`
    SELECT ${COLUMNS} FROM worker_heartbeats
    WHERE last_heartbeat_at >= ${opts.now.toISOString()}::timestamptz - make_interval(secs => ${opts.windowMs / 1000})
    ORDER BY last_heartbeat_at DESC, identity`);
  return [...rows];
}

/**
 * Workers not marked stopped whose last heartbeat is older than `staleMs` at `now`, and within
 * `windowMs` of it (a worker silent for longer was reported long before, and is forgotten).
 */
export async function staleWorkers(db: CommonQueryMethods, opts: { now: Date; staleMs: number; windowMs: number }): Promise<WorkerRow[]> {
  const now = sql.fragment`${opts.now.toISOString()}::timestamptz`;
  const rows = await db.any(sql.type(WorkerRow)`
    SELECT ${COLUMNS} FROM worker_heartbeats
    WHERE stopped_at IS NULL
      AND last_heartbeat_at < ${now} - make_interval(secs => ${opts.staleMs / 1000})
      AND last_heartbeat_at >= ${now} - make_interval(secs => ${opts.windowMs / 1000})
    ORDER BY last_heartbeat_at, identity`);
  return [...rows];
}

export const OpenTurnRow = z.object({
  session_id: z.string(),
  agent_id: z.string().nullable(),
  agent_version: z.number().nullable(),
  turn: z.number(),
  /** Its first stream.start, or its message.accepted when it has not streamed yet. */
  started_at: z.number(),
  streamed: z.boolean(),
  /** The last approval decision in the turn: the time it spent waiting on a person does not count. */
  last_decision_at: z.number().nullable(),
  /** Later turns of the session accepted and waiting behind this one. */
  queued_turns: z.number(),
});
export type OpenTurnRow = z.infer<typeof OpenTurnRow>;

/**
 * The turn each active session is running (its lowest turn after its last turn.done, with no
 * turn.done of its own) when that turn has run longer than `stuckMs` at `now`: counted from its
 * first stream.start (its message.accepted before it streams), or from its last approval
 * decision when that is later. A turn waiting for an approval that has not expired is waiting
 * on a person, not stuck. Every step is an index lookup per active session (migration 009).
 */
export async function stuckTurns(db: CommonQueryMethods, opts: { now: Date; stuckMs: number }): Promise<OpenTurnRow[]> {
  const now = sql.fragment`${opts.now.toISOString()}::timestamptz`;
  const rows = await db.any(sql.type(OpenTurnRow)`
    WITH open_turns AS (
      SELECT s.id AS session_id, s.agent_id, s.agent_version, t.turn, t.started_at, t.streamed,
             row_number() OVER (PARTITION BY s.id ORDER BY t.turn) AS position,
             count(*) OVER (PARTITION BY s.id) - 1 AS queued_turns
      FROM sessions s
      CROSS JOIN LATERAL (
        SELECT (e.data->>'turn')::int AS turn,
               COALESCE(min(e.created_at) FILTER (WHERE e.type = 'stream.start'), min(e.created_at)) AS started_at,
               bool_or(e.type = 'stream.start') AS streamed
        FROM session_events e
        WHERE e.session_id = s.id AND e.type IN ('message.accepted', 'stream.start')
          AND (e.data->>'turn')::int > COALESCE((
            SELECT (d.data->>'turn')::int FROM session_events d
            WHERE d.session_id = s.id AND d.type = 'turn.done'
            ORDER BY (d.data->>'turn')::int DESC LIMIT 1), 0)
        GROUP BY 1
      ) t
      WHERE s.status = 'active'
        AND NOT EXISTS (SELECT 1 FROM session_events d WHERE d.session_id = s.id AND d.event_key = 'turn:' || t.turn || ':done')
    ), running AS (
      SELECT o.*, (SELECT max(c.decided_at) FROM tool_calls c WHERE c.session_id = o.session_id AND c.turn = o.turn) AS last_decision_at
      FROM open_turns o
      WHERE o.position = 1
        AND NOT EXISTS (
          SELECT 1 FROM tool_calls c
          WHERE c.session_id = o.session_id AND c.turn = o.turn AND c.status = 'pending_approval' AND (c.expires_at IS NULL OR c.expires_at > ${now}))
    )
    SELECT session_id, agent_id, agent_version, turn,
           (extract(epoch FROM started_at) * 1000)::float8 AS started_at, streamed,
           (extract(epoch FROM last_decision_at) * 1000)::float8 AS last_decision_at, queued_turns::int AS queued_turns
    FROM running
    WHERE GREATEST(started_at, last_decision_at) < ${now} - make_interval(secs => ${opts.stuckMs / 1000})
    ORDER BY started_at, session_id`);
  return [...rows];
}
