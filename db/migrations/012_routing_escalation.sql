-- Routers, escalation to people and outside events (docs/routers.md, docs/escalation.md).
-- Operators write into escalated conversations; outside events are stored as messages too, so
-- the model reads them in order with the rest of the conversation.
ALTER TABLE messages DROP CONSTRAINT messages_role_check;
ALTER TABLE messages ADD CONSTRAINT messages_role_check CHECK (role IN ('user', 'assistant', 'tool', 'system', 'operator', 'event'));
-- Which member agent wrote an assistant message in a router session (NULL: the session's own agent).
ALTER TABLE messages ADD COLUMN agent_id text;

-- One row per escalation: what the webhook answered. Keyed by the escalation (session + turn),
-- so a retried activity updates its row instead of adding one.
CREATE TABLE escalations (
  session_id    text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
  escalation_id text NOT NULL,
  turn          integer,
  reason        text NOT NULL,
  source        text NOT NULL,
  agent_id      text,
  success       boolean,
  status_code   integer,
  attempts      integer NOT NULL DEFAULT 0,
  error         text,
  created_at    timestamptz NOT NULL DEFAULT now(),
  delivered_at  timestamptz,
  PRIMARY KEY (session_id, escalation_id)
);
CREATE INDEX escalations_created ON escalations (created_at);

-- A call of an ordered (sequential) step that never ran because an earlier one was rejected.
ALTER TABLE tool_calls DROP CONSTRAINT tool_calls_status_check;
ALTER TABLE tool_calls ADD CONSTRAINT tool_calls_status_check
  CHECK (status IN ('requested', 'pending_approval', 'approved', 'rejected', 'expired', 'cancelled', 'running', 'succeeded', 'failed', 'skipped'));
