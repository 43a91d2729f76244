-- Bearer tokens, stored as sha256 hashes only; a token names a user.
CREATE TABLE api_tokens (
  id          text PRIMARY KEY,
  user_id     text NOT NULL,
  token_hash  text NOT NULL UNIQUE,
  is_admin    boolean NOT NULL DEFAULT false,
  label       text,
  created_at  timestamptz NOT NULL DEFAULT now(),
  revoked_at  timestamptz
);
-- The user who created the session; only they (or an admin) may see or drive it.
ALTER TABLE sessions ADD COLUMN owner_id text;
CREATE INDEX sessions_owner ON sessions (owner_id, created_at);
