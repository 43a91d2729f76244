-- Background runs: one turn of a session, submitted over REST (POST /api/v1/runs) and followed
-- to its end. The run's status is derived from the session's events as they are appended
-- (db/runs.ts, called by appendEvent in the same transaction). See docs/runs.md.
CREATE TABLE runs (
  -- 32 hex digits: the submitting request's trace ID when it had one, else random.
  id                 text PRIMARY KEY,
  owner_id           text NOT NULL,
  -- NULL only while the session made for the run is being created.
  session_id         text REFERENCES sessions (id),
  agent_id           text NOT NULL,
  -- The user message that carries the input (messageIdFor(session, 'run-<id>')).
  message_id         text UNIQUE,
  -- sha256 over agent, session and input: what an un-keyed repeat is recognised by.
  input_digest       text NOT NULL,
  -- The input until its message is sent: the worker's outbox sends it when the API could not
  -- (worker/outbox.ts). NULL once sent, ended unsent, or the session deleted.
  input              text,
  idempotency_key    text,
  -- false once the run was refused at submit: it no longer answers repeats.
  dedupe_active      boolean NOT NULL DEFAULT true,
  webhook_url        text,
  -- The run's own turn limits (docs/budgets.md); NULL: the agent's.
  budget             jsonb,
  status             text NOT NULL DEFAULT 'queued'
                     CHECK (status IN ('queued', 'running', 'waiting_approval', 'done', 'error', 'cancelled')),
  turn               integer,
  pending_approvals  integer NOT NULL DEFAULT 0,
  -- The session's last seq before the run: where its event stream starts.
  start_seq          integer NOT NULL DEFAULT 0,
  -- The seq of the run's final run.progress event: where its event stream ends.
  final_seq          integer,
  error_code         text,
  error_message      text,
  cancelled_by       text,
  reply_message_id   text,
  input_tokens       integer,
  output_tokens      integer,
  cost_usd           numeric(16, 8),
  -- Who is sending the message: a repeat takes over once the lease has run out (the sender died).
  send_lease_until   timestamptz,
  sent_at            timestamptz,
  -- The run's turn in the session, whatever the run's status (a run cancelled while queued keeps a turn that still runs).
  turn_started_at    timestamptz,
  turn_ended_at      timestamptz,
  skip_signalled_at  timestamptz,
  webhook_status     text CHECK (webhook_status IN ('pending', 'delivered', 'failed')),
  -- Set by the worker's outbox once the run's end is handled (webhook started, metrics observed);
  -- the lease keeps other workers off a run one of them is handling.
  finalized_at       timestamptz,
  finalize_lease_until timestamptz,
  created_at         timestamptz NOT NULL DEFAULT now(),
  started_at         timestamptz,
  finished_at        timestamptz,
  updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX runs_idempotency_key ON runs (owner_id, idempotency_key) WHERE idempotency_key IS NOT NULL AND dedupe_active;
CREATE INDEX runs_input_digest ON runs (owner_id, input_digest, created_at) WHERE idempotency_key IS NULL AND dedupe_active;
CREATE INDEX runs_session_turn ON runs (session_id, turn);
CREATE INDEX runs_owner_recent ON runs (owner_id, created_at DESC);
CREATE INDEX runs_recent ON runs (created_at DESC);
CREATE INDEX runs_unfinalized ON runs (finished_at) WHERE finished_at IS NOT NULL AND finalized_at IS NULL;
CREATE INDEX runs_unsent ON runs (created_at) WHERE status = 'queued' AND sent_at IS NULL;
CREATE INDEX runs_turn_to_skip ON runs (turn_started_at)
  WHERE status = 'cancelled' AND started_at IS NULL AND turn_started_at IS NOT NULL AND turn_ended_at IS NULL AND skip_signalled_at IS NULL;

-- Every status a run took, in order (id), with its time and what caused it.
CREATE TABLE run_transitions (
  id      bigserial PRIMARY KEY,
  run_id  text NOT NULL REFERENCES runs (id),
  status  text NOT NULL,
  cause   text NOT NULL,
  at      timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX run_transitions_run ON run_transitions (run_id, id);

-- Every attempt to deliver a webhook (a run's end, an incident), with its outcome.
CREATE TABLE webhook_deliveries (
  id           bigserial PRIMARY KEY,
  -- The delivery workflow's ID (webhook-run-<runId>, webhook-incident-<id>); also the X-Keel-Delivery header.
  delivery_id  text NOT NULL,
  target_kind  text NOT NULL CHECK (target_kind IN ('run', 'incident')),
  target_id    text NOT NULL,
  attempt      integer NOT NULL,
  outcome      text NOT NULL CHECK (outcome IN ('delivered', 'failed', 'refused')),
  http_status  integer,
  error        text,
  duration_ms  integer NOT NULL,
  created_at   timestamptz NOT NULL DEFAULT now(),
  UNIQUE (delivery_id, attempt)
);
CREATE INDEX webhook_deliveries_target ON webhook_deliveries (target_kind, target_id, id);

-- Whether a session has ever had a run: event writers of sessions without one (every chat) skip
-- the run lookup. Kept by a trigger, so every way a run gets its session sets it.
ALTER TABLE sessions ADD COLUMN has_runs boolean NOT NULL DEFAULT false;
CREATE FUNCTION runs_mark_session() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.session_id IS NOT NULL THEN
    UPDATE sessions SET has_runs = true WHERE id = NEW.session_id AND NOT has_runs;
  END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER runs_mark_session AFTER INSERT OR UPDATE OF session_id ON runs FOR EACH ROW EXECUTE FUNCTION runs_mark_session();
