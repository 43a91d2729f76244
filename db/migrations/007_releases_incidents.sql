-- Releases: which stored version of each agent new sessions get, and an optional canary.
CREATE TABLE agent_releases (
  agent_id        text PRIMARY KEY,
  active_version  integer NOT NULL,
  canary_version  integer,
  canary_percent  integer CHECK (canary_percent BETWEEN 0 AND 100),
  activated_at    timestamptz NOT NULL DEFAULT now(),
  updated_at      timestamptz NOT NULL DEFAULT now(),
  FOREIGN KEY (agent_id, active_version) REFERENCES agents (id, version),
  FOREIGN KEY (agent_id, canary_version) REFERENCES agents (id, version),
  CHECK ((canary_version IS NULL) = (canary_percent IS NULL))
);

-- A version's standing: published (never active), active, canary, retired (was active, replaced),
-- rolled_back (taken out by a rollback; never picked again until someone activates it on purpose).
ALTER TABLE agents ADD COLUMN status text NOT NULL DEFAULT 'published'
  CHECK (status IN ('published', 'active', 'canary', 'retired', 'rolled_back'));
ALTER TABLE agents ADD COLUMN published_by text;

-- Every release change: who, when, from which version to which, and why.
CREATE TABLE release_audit (
  id              bigserial PRIMARY KEY,
  agent_id        text NOT NULL,
  action          text NOT NULL CHECK (action IN ('publish', 'activate', 'canary', 'rollback', 'auto_rollback')),
  from_version    integer,
  to_version      integer,
  canary_percent  integer,
  actor           text NOT NULL,
  reason          text,
  -- The health check that made an automatic rollback: a retry of the rollback finds it by this.
  check_id        text UNIQUE,
  created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX release_audit_agent ON release_audit (agent_id, id);

-- Something an operator must hear about: a release rolled back, a stale worker, a stuck turn.
-- dedupe_key makes raising the same incident twice a no-op (one per bad version, worker, turn).
CREATE TABLE incidents (
  id                 text PRIMARY KEY,
  kind               text NOT NULL,
  dedupe_key         text NOT NULL UNIQUE,
  severity           text NOT NULL DEFAULT 'critical' CHECK (severity IN ('warning', 'critical')),
  summary            text NOT NULL,
  agent_id           text,
  version            integer,
  detected_at        timestamptz NOT NULL,
  decided_at         timestamptz,
  rolled_back_at     timestamptz,
  evidence           jsonb NOT NULL DEFAULT '{}'::jsonb,
  affected_sessions  integer,
  notified_at        timestamptz,
  notify_status      text,
  created_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incidents_recent ON incidents (created_at DESC);

-- Every health check of a release version and what was decided, with its evidence.
CREATE TABLE release_checks (
  id          text PRIMARY KEY,
  agent_id    text NOT NULL,
  version     integer NOT NULL,
  role        text NOT NULL CHECK (role IN ('active', 'canary')),
  trigger     text NOT NULL CHECK (trigger IN ('schedule', 'watch')),
  healthy     boolean NOT NULL,
  decision    text NOT NULL CHECK (decision IN ('healthy', 'rollback', 'no_rollback')),
  started_at  timestamptz NOT NULL,
  checked_at  timestamptz NOT NULL,
  evidence    jsonb NOT NULL
);
CREATE INDEX release_checks_agent ON release_checks (agent_id, checked_at DESC);

-- What the release health check's live signals read: the version that wrote each reply, asked
-- for each tool call and ran each turn (turn.done's data carries it), and each reply's time from
-- the model request to its first streamed token.
ALTER TABLE messages ADD COLUMN ttft_ms integer;
ALTER TABLE messages ADD COLUMN agent_version integer;
ALTER TABLE tool_calls ADD COLUMN agent_version integer;
CREATE INDEX session_events_type_time ON session_events (type, created_at) WHERE type IN ('turn.done', 'stream.start');
CREATE INDEX messages_reply_time ON messages (created_at) WHERE role = 'assistant' AND ttft_ms IS NOT NULL;
CREATE INDEX tool_calls_updated ON tool_calls (updated_at);
CREATE INDEX sessions_agent_version ON sessions (agent_id, agent_version) WHERE status = 'active';
