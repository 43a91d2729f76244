-- One row per worker process start: it is written every KEEL_WORKER_HEARTBEAT_MS on the
-- database clock, and marked stopped when the worker stops cleanly (a stopped worker is never
-- stale). See docs/operations.md.
CREATE TABLE worker_heartbeats (
  identity           text PRIMARY KEY,             -- the Temporal worker identity, unique per process start
  build_version      text NOT NULL,
  task_queue         text NOT NULL,
  turns_in_flight    integer NOT NULL DEFAULT 0,
  turns_completed    bigint NOT NULL DEFAULT 0,
  started_at         timestamptz NOT NULL DEFAULT now(),
  last_heartbeat_at  timestamptz NOT NULL DEFAULT now(),
  stopped_at         timestamptz
);
-- GET /api/v1/workers: the workers seen within the window.
CREATE INDEX worker_heartbeats_recent ON worker_heartbeats (last_heartbeat_at);
-- The stale-worker alert: running workers only, by age.
CREATE INDEX worker_heartbeats_running ON worker_heartbeats (last_heartbeat_at) WHERE stopped_at IS NULL;

-- The stuck-turn alert, run every minute, reads only open turns of active sessions: the active
-- sessions, the last finished turn of each, and the starts of the turns after it.
CREATE INDEX sessions_active ON sessions (id) WHERE status = 'active';
CREATE INDEX session_events_turns_done ON session_events (session_id, ((data->>'turn')::int)) WHERE type = 'turn.done';
CREATE INDEX session_events_turn_starts ON session_events (session_id, ((data->>'turn')::int)) WHERE type IN ('message.accepted', 'stream.start');
