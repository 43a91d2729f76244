-- Appending an event in one round trip instead of two (issue 14). The steps are the ones
-- db/events.ts took as separate statements, in the same order: lock the session's row, then look
-- for the key and insert in statements of their own. In READ COMMITTED a VOLATILE function's every
-- statement takes a fresh snapshot, so the lookup and the insert see every event committed before
-- the lock was granted: seq stays max + 1 with no gap, a repeated key returns the stored event,
-- and one session's NOTIFYs are queued in seq order. The channel and the NOTIFY size limit come
-- from the caller (contracts/channel.ts), the payload shape is the one contracts/channel.ts reads.
-- p_notify_first, when the event is new, is NOTIFYed just before it, in order (a reply's last
-- delta goes out with its stream.end, activities/llm/stream-reply.ts). Callers append in READ
-- COMMITTED transactions: under REPEATABLE READ the snapshot would be the transaction's, not the
-- statement's.
CREATE FUNCTION append_session_event(p_session text, p_key text, p_type text, p_version smallint, p_data jsonb,
                                     p_channel text, p_max_notify integer, p_notify_first text[] DEFAULT NULL)
RETURNS TABLE (r_seq integer, r_type text, r_data jsonb, r_created_at float8, r_inserted boolean, r_has_runs boolean)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  v_has_runs boolean;
  v_seq integer;
  v_type text;
  v_data jsonb;
  v_at timestamptz;
  v_whole text;
  v_first text;
BEGIN
  SELECT s.has_runs INTO v_has_runs FROM sessions s WHERE s.id = p_session FOR NO KEY UPDATE;
  SELECT e.seq, e.type, e.data, e.created_at INTO v_seq, v_type, v_data, v_at
  FROM session_events e WHERE e.session_id = p_session AND e.event_key = p_key;
  IF FOUND THEN
    RETURN QUERY SELECT v_seq, v_type, v_data, (extract(epoch FROM v_at) * 1000)::float8, false, COALESCE(v_has_runs, false);
    RETURN;
  END IF;
  INSERT INTO session_events AS e (session_id, seq, event_key, type, version, data)
  VALUES (p_session, COALESCE((SELECT MAX(m.seq) FROM session_events m WHERE m.session_id = p_session), 0) + 1,
          p_key, p_type, p_version, p_data)
  RETURNING e.seq, e.created_at INTO v_seq, v_at;
  FOREACH v_first IN ARRAY COALESCE(p_notify_first, '{}') LOOP
    PERFORM pg_notify(p_channel, v_first);
  END LOOP;
  v_whole := json_build_object(
    'k', 'e', 'sessionId', p_session, 'seq', v_seq, 'type', p_type, 'data', p_data,
    'createdAt', to_char(v_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))::text;
  PERFORM pg_notify(p_channel, CASE
    WHEN octet_length(v_whole) <= p_max_notify THEN v_whole
    ELSE json_build_object('k', 'p', 'sessionId', p_session, 'seq', v_seq)::text END);
  RETURN QUERY SELECT v_seq, p_type, p_data, (extract(epoch FROM v_at) * 1000)::float8, true, COALESCE(v_has_runs, false);
END $$;
