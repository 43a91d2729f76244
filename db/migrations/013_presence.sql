-- Presence and outside events (docs/presence.md).
-- A session whose agent enables externalEvents.sessionToken gets its own token for posting
-- external events: returned once at creation, only its sha256 (hex) is kept.
ALTER TABLE sessions ADD COLUMN events_token_hash text;

-- Whether a session is escalated is the last of its session.escalated / session.handed_back
-- events: found without reading the rest of a long log.
CREATE INDEX session_events_escalation ON session_events (session_id, seq)
  WHERE type IN ('session.escalated', 'session.handed_back');
