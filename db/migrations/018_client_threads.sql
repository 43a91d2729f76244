-- Threads of third-party chat clients (AG-UI threadId, AI SDK chat id), chosen by the client, each
-- mapped to the Keel session that holds it. Scoped by owner: two users' equal thread IDs are two sessions.
CREATE TABLE client_threads (
  protocol text NOT NULL,
  owner_id text NOT NULL,
  thread_id text NOT NULL,
  session_id text NOT NULL REFERENCES sessions (id),
  created_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (protocol, owner_id, thread_id)
);
CREATE INDEX client_threads_session ON client_threads (session_id);
