CREATE TABLE sessions (
  id          text PRIMARY KEY,
  title       text,
  agent_id    text,
  status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'expired', 'deleted')),
  created_at  timestamptz NOT NULL DEFAULT now(),
  updated_at  timestamptz NOT NULL DEFAULT now(),
  ended_at    timestamptz
);

-- Conversation order is (turn, position): position 0 is the user message that opened the turn.
CREATE TABLE messages (
  id                 text PRIMARY KEY,
  session_id         text NOT NULL REFERENCES sessions (id),
  turn               integer NOT NULL,
  position           integer NOT NULL,
  role               text NOT NULL CHECK (role IN ('user', 'assistant', 'tool', 'system')),
  content            text NOT NULL,
  client_message_id  text,
  input_tokens       integer,
  output_tokens      integer,
  created_at         timestamptz NOT NULL DEFAULT now(),
  UNIQUE (session_id, turn, position)
);
CREATE UNIQUE INDEX messages_client_id ON messages (session_id, client_message_id) WHERE client_message_id IS NOT NULL;

-- The per-session event log. seq is gap-free because it is max(seq)+1 under the primary key,
-- never a sequence (a rolled-back sequence value would leave a hole).
CREATE TABLE session_events (
  session_id  text NOT NULL REFERENCES sessions (id),
  seq         integer NOT NULL,
  event_key   text NOT NULL,
  type        text NOT NULL,
  version     smallint NOT NULL,
  data        jsonb NOT NULL,
  created_at  timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (session_id, seq),
  UNIQUE (session_id, event_key)
);
