-- GET /sessions for an admin: every owner's sessions, newest first, keyset on (created_at, id).
-- (One owner's page reads sessions_owner (owner_id, created_at) from 004.)
CREATE INDEX sessions_recent ON sessions (created_at, id);
