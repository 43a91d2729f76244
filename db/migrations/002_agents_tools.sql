-- Agent definitions, one row per version; a session records the version it runs.
CREATE TABLE agents (
  id          text NOT NULL,
  version     integer NOT NULL,
  digest      text NOT NULL,
  definition  jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (id, version),
  UNIQUE (id, digest)
);
ALTER TABLE sessions ADD COLUMN agent_version integer;

-- Assistant messages that asked for tools, and the tool results that answer them.
ALTER TABLE messages ADD COLUMN tool_calls jsonb;
ALTER TABLE messages ADD COLUMN tool_call_id text;

-- The full lifecycle of every tool call the model made.
CREATE TABLE tool_calls (
  id               text PRIMARY KEY,           -- the runtime's ID, unique across sessions
  model_call_id    text NOT NULL,              -- the ID the model gave the call; tool messages answer it
  session_id       text NOT NULL REFERENCES sessions (id),
  turn             integer NOT NULL,
  step             integer NOT NULL,
  name             text NOT NULL,
  arguments        jsonb NOT NULL,
  status           text NOT NULL CHECK (status IN ('requested', 'pending_approval', 'approved', 'rejected', 'expired', 'cancelled', 'running', 'succeeded', 'failed')),
  digest           text NOT NULL,
  requires_approval boolean NOT NULL,
  expires_at       timestamptz,
  decided_by       text,
  decided_at       timestamptz,
  feedback         text,
  approval_outcome text CHECK (approval_outcome IN ('approved', 'rejected', 'expired', 'cancelled')),
  result           jsonb,
  error_code       text,
  created_at       timestamptz NOT NULL DEFAULT now(),
  updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tool_calls_pending ON tool_calls (created_at) WHERE status = 'pending_approval';
CREATE INDEX tool_calls_session ON tool_calls (session_id, turn, step);

-- The demo write tool's state: notes, applied at most once per idempotency key.
CREATE TABLE notes (
  id               bigserial PRIMARY KEY,
  session_id       text NOT NULL,
  title            text NOT NULL,
  body             text NOT NULL,
  idempotency_key  text NOT NULL UNIQUE,
  created_at       timestamptz NOT NULL DEFAULT now()
);
