-- Conversation records (docs/replay-analytics.md): one row per session, kept current by triggers
-- as the session's events are written, so the list and the analytics read counters instead of
-- re-reading every log. Nothing but the triggers writes here.
CREATE TABLE conversations (
  session_id            text PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
  owner_id              text,
  agent_id              text,
  created_at            timestamptz NOT NULL,
  -- The session's status as its events say: active until session.expired or session.deleted.
  session_status        text NOT NULL DEFAULT 'active',
  ended_at              timestamptz,
  user_messages         integer NOT NULL DEFAULT 0,   -- message.accepted
  turns                 integer NOT NULL DEFAULT 0,   -- turn.done (every turn ends with exactly one)
  failed_turns          integer NOT NULL DEFAULT 0,
  cancelled_turns       integer NOT NULL DEFAULT 0,
  replies               integer NOT NULL DEFAULT 0,   -- stream.end (one per model step, whatever its attempts)
  replies_without_usage integer NOT NULL DEFAULT 0,
  -- Every model call's usage: each reply's (stream.end) and each router classification's (route.decided).
  input_tokens          bigint NOT NULL DEFAULT 0,
  output_tokens         bigint NOT NULL DEFAULT 0,
  cost_usd              numeric(16, 8) NOT NULL DEFAULT 0,
  tool_calls            integer NOT NULL DEFAULT 0,
  approvals             integer NOT NULL DEFAULT 0,
  expired_approvals     integer NOT NULL DEFAULT 0,
  handoffs              integer NOT NULL DEFAULT 0,
  clarifications        integer NOT NULL DEFAULT 0,
  escalations           integer NOT NULL DEFAULT 0,
  operator_messages     integer NOT NULL DEFAULT 0,
  external_events       integer NOT NULL DEFAULT 0,
  -- The session's agent, every member that started in a turn and every agent that ended one.
  agents_used           text[] NOT NULL DEFAULT '{}',
  -- Turns ended per agent: {"billing": 3, "router": 1}.
  agent_turns           jsonb NOT NULL DEFAULT '{}',
  escalated_at          timestamptz,
  -- What the resolution reads: the highest turn accepted and ended, how the last one ended, and the
  -- last turn that asked a clarification or saw an approval expire. current_turn is the highest turn
  -- any event named (approval.resolved events from before it carried its turn belong to the turn running).
  current_turn          integer NOT NULL DEFAULT 0,
  last_accepted_turn    integer NOT NULL DEFAULT 0,
  last_done_turn        integer NOT NULL DEFAULT 0,
  last_turn_status      text,
  clarification_turn    integer,
  expired_approval_turn integer,
  first_message_at      timestamptz,
  first_response_at     timestamptz,
  last_activity_at      timestamptz,
  -- The rules are docs/replay-analytics.md's "Resolution"; computed from the row alone, so it can be
  -- indexed. (Durations are computed when read: every generated column costs each update.)
  resolution            text GENERATED ALWAYS AS (
    CASE
      WHEN escalated_at IS NOT NULL THEN 'escalated'
      WHEN session_status = 'active' THEN 'open'
      WHEN turns > 0 AND last_turn_status = 'completed' AND last_accepted_turn <= last_done_turn
           AND clarification_turn IS DISTINCT FROM last_done_turn
           AND expired_approval_turn IS DISTINCT FROM last_done_turn THEN 'resolved'
      ELSE 'abandoned'
    END) STORED
) WITH (fillfactor = 80);  -- room on the page, so that counter updates stay HOT

-- GET /conversations (newest first, keyset on created_at and session_id) and the analytics' ranges.
CREATE INDEX conversations_recent ON conversations (created_at, session_id);
CREATE INDEX conversations_owner_recent ON conversations (owner_id, created_at, session_id);
CREATE INDEX conversations_resolution_recent ON conversations (resolution, created_at, session_id);
CREATE INDEX conversations_agents ON conversations USING gin (agents_used);
-- The analytics' tool call and approval figures, by the time of the call.
CREATE INDEX tool_calls_created ON tool_calls (created_at);
CREATE INDEX tool_calls_approvals_created ON tool_calls (created_at) WHERE requires_approval;
-- The analytics' TTFT percentile reads only this index (an index-only scan, no heap): the replies'
-- times by when they were written, and their sessions for a user's own figures.
CREATE INDEX messages_reply_ttft ON messages (created_at) INCLUDE (ttft_ms, session_id) WHERE role = 'assistant' AND ttft_ms IS NOT NULL;

-- One event applied to its conversation: at most one UPDATE, on the primary key, which stays a HOT
-- update (no index entry) unless the resolution changes. Values are read from the event inline:
-- every plpgsql variable is one more expression evaluated per event.
CREATE FUNCTION conversation_apply_event(p_session text, p_type text, p_data jsonb, p_at timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  v_turn integer := (p_data->>'turn')::integer;
BEGIN
  CASE p_type
  WHEN 'message.accepted' THEN
    UPDATE conversations SET user_messages = user_messages + 1,
      last_accepted_turn = GREATEST(last_accepted_turn, v_turn), current_turn = GREATEST(current_turn, v_turn),
      first_message_at = COALESCE(first_message_at, p_at), last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'stream.end' THEN
    UPDATE conversations SET replies = replies + 1,
      replies_without_usage = replies_without_usage + CASE WHEN p_data #>> '{usage,usageMissing}' = 'true' THEN 1 ELSE 0 END,
      input_tokens = input_tokens + COALESCE((p_data #>> '{usage,inputTokens}')::bigint, 0),
      output_tokens = output_tokens + COALESCE((p_data #>> '{usage,outputTokens}')::bigint, 0),
      cost_usd = cost_usd + COALESCE((p_data #>> '{usage,costUsd}')::numeric, 0),
      -- A reply that only asks for tools (no text) is not yet an answer.
      first_response_at = CASE WHEN first_response_at IS NULL AND first_message_at IS NOT NULL AND p_data->>'content' <> '' THEN p_at ELSE first_response_at END,
      last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'turn.done' THEN
    -- The agent that ended the turn: a router's member (data.agent), else the session's own agent;
    -- none when the turn only handed the message to an operator (awaitingOperator).
    UPDATE conversations SET turns = turns + 1,
      failed_turns = failed_turns + CASE WHEN p_data->>'status' = 'failed' THEN 1 ELSE 0 END,
      cancelled_turns = cancelled_turns + CASE WHEN p_data->>'status' = 'cancelled' THEN 1 ELSE 0 END,
      last_turn_status = CASE WHEN v_turn >= last_done_turn THEN p_data->>'status' ELSE last_turn_status END,
      last_done_turn = GREATEST(last_done_turn, v_turn), current_turn = GREATEST(current_turn, v_turn),
      agents_used = CASE WHEN p_data ? 'awaitingOperator' OR COALESCE(p_data->>'agent', agent_id) IS NULL
                              OR COALESCE(p_data->>'agent', agent_id) = ANY (agents_used) THEN agents_used
                         ELSE agents_used || COALESCE(p_data->>'agent', agent_id) END,
      agent_turns = CASE WHEN p_data ? 'awaitingOperator' OR COALESCE(p_data->>'agent', agent_id) IS NULL THEN agent_turns
                         ELSE jsonb_set(agent_turns, ARRAY[COALESCE(p_data->>'agent', agent_id)],
                                        to_jsonb(COALESCE((agent_turns ->> COALESCE(p_data->>'agent', agent_id))::integer, 0) + 1)) END,
      first_response_at = CASE WHEN first_response_at IS NULL AND first_message_at IS NOT NULL THEN p_at ELSE first_response_at END,
      last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'tool.call' THEN
    UPDATE conversations SET tool_calls = tool_calls + 1, current_turn = GREATEST(current_turn, v_turn), last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'approval.required' THEN
    UPDATE conversations SET approvals = approvals + 1, current_turn = GREATEST(current_turn, v_turn), last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'approval.resolved' THEN
    -- It names its turn; events written before it did belong to the highest turn seen.
    UPDATE conversations SET
      expired_approvals = expired_approvals + CASE WHEN p_data->>'outcome' = 'expired' THEN 1 ELSE 0 END,
      expired_approval_turn = CASE WHEN p_data->>'outcome' = 'expired' THEN COALESCE((p_data->>'turn')::int, current_turn) ELSE expired_approval_turn END,
      last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'session.expired' THEN
    UPDATE conversations SET session_status = CASE WHEN session_status = 'active' THEN 'expired' ELSE session_status END,
      ended_at = COALESCE(ended_at, p_at)
    WHERE session_id = p_session;
  WHEN 'session.deleted' THEN
    UPDATE conversations SET session_status = 'deleted', ended_at = COALESCE(ended_at, p_at)
    WHERE session_id = p_session;
  WHEN 'route.decided' THEN
    -- The classifier's model call costs too.
    UPDATE conversations SET
      input_tokens = input_tokens + COALESCE((p_data #>> '{usage,inputTokens}')::bigint, 0),
      output_tokens = output_tokens + COALESCE((p_data #>> '{usage,outputTokens}')::bigint, 0),
      cost_usd = cost_usd + COALESCE((p_data #>> '{usage,costUsd}')::numeric, 0),
      current_turn = GREATEST(current_turn, v_turn), last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'clarification' THEN
    UPDATE conversations SET clarifications = clarifications + 1, clarification_turn = GREATEST(clarification_turn, v_turn),
      current_turn = GREATEST(current_turn, v_turn),
      first_response_at = CASE WHEN first_response_at IS NULL AND first_message_at IS NOT NULL THEN p_at ELSE first_response_at END,
      last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'agent.started' THEN
    UPDATE conversations SET
      agents_used = CASE WHEN p_data->>'agent' = ANY (agents_used) THEN agents_used ELSE agents_used || (p_data->>'agent') END,
      current_turn = GREATEST(current_turn, v_turn), last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'agent.handoff' THEN
    UPDATE conversations SET handoffs = handoffs + 1, current_turn = GREATEST(current_turn, v_turn), last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'session.escalated' THEN
    -- The escalation message goes to the user: an answer.
    UPDATE conversations SET escalations = escalations + 1, escalated_at = COALESCE(escalated_at, p_at),
      current_turn = GREATEST(current_turn, v_turn),
      first_response_at = CASE WHEN first_response_at IS NULL AND first_message_at IS NOT NULL THEN p_at ELSE first_response_at END,
      last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'operator.message' THEN
    UPDATE conversations SET operator_messages = operator_messages + 1,
      first_response_at = CASE WHEN first_response_at IS NULL AND first_message_at IS NOT NULL THEN p_at ELSE first_response_at END,
      last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'external.event' THEN
    UPDATE conversations SET external_events = external_events + 1, last_activity_at = p_at
    WHERE session_id = p_session;
  WHEN 'session.handed_back' THEN
    UPDATE conversations SET last_activity_at = p_at WHERE session_id = p_session;
  ELSE
    NULL;
  END CASE;
END $$;

CREATE FUNCTION conversations_follow_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM conversation_apply_event(NEW.session_id, NEW.type, NEW.data, NEW.created_at);
  RETURN NULL;
END $$;
-- Only the types the record reads call the function: stream.start (one per model attempt),
-- run.progress, error, budget.exceeded and escalation.delivered cost the insert nothing more.
CREATE TRIGGER conversations_follow_event AFTER INSERT ON session_events FOR EACH ROW
  WHEN (NEW.type IN ('message.accepted', 'stream.end', 'turn.done', 'tool.call', 'approval.required', 'approval.resolved',
                     'session.expired', 'session.deleted', 'route.decided', 'clarification', 'agent.started', 'agent.handoff',
                     'session.escalated', 'operator.message', 'external.event', 'session.handed_back'))
  EXECUTE FUNCTION conversations_follow_event();

CREATE FUNCTION conversations_open() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO conversations (session_id, owner_id, agent_id, created_at, session_status, ended_at, agents_used)
  VALUES (NEW.id, NEW.owner_id, NEW.agent_id, NEW.created_at, NEW.status, NEW.ended_at,
          CASE WHEN NEW.agent_id IS NULL THEN '{}'::text[] ELSE ARRAY[NEW.agent_id] END)
  ON CONFLICT (session_id) DO NOTHING;
  RETURN NULL;
END $$;
CREATE TRIGGER conversations_open AFTER INSERT ON sessions FOR EACH ROW EXECUTE FUNCTION conversations_open();

-- Backfill: a row for every session there is, then its whole log applied in order.
INSERT INTO conversations (session_id, owner_id, agent_id, created_at, agents_used)
SELECT id, owner_id, agent_id, created_at, CASE WHEN agent_id IS NULL THEN '{}'::text[] ELSE ARRAY[agent_id] END FROM sessions;
DO $$
DECLARE
  e record;
BEGIN
  FOR e IN SELECT session_id, type, data, created_at FROM session_events ORDER BY session_id, seq LOOP
    PERFORM conversation_apply_event(e.session_id, e.type, e.data, e.created_at);
  END LOOP;
END $$;
-- A session that ended without its event (none is known; the row is the authority on that).
UPDATE conversations c SET session_status = s.status, ended_at = COALESCE(c.ended_at, s.ended_at)
FROM sessions s WHERE s.id = c.session_id AND s.status <> 'active' AND c.session_status <> s.status;
