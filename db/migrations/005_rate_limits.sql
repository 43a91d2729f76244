-- Sliding-window rate limit counters shared by every API process (db/rate-limits.ts).
-- One row per key and fixed window; windows older than two window lengths are deleted by the
-- API. UNLOGGED: counters are not worth a WAL write per request, and losing them in a crash
-- only resets the windows.
CREATE UNLOGGED TABLE rate_limits (
  key           text NOT NULL,
  window_start  bigint NOT NULL,  -- epoch ms (database clock), a multiple of the window length
  hits          integer NOT NULL,
  PRIMARY KEY (key, window_start)
);

-- Counts one hit for p_key if it fits: the previous window's hits weighted by how much of it
-- still overlaps the sliding window, plus this window's hits, plus this one, at most p_limit.
-- A refused hit is not counted. One statement decides and counts, under the row lock, on the
-- database clock, in integers (prev * (w - elapsed) + (cur + 1) * w <= limit * w).
CREATE FUNCTION rate_limit_hit(p_key text, p_limit integer, p_window_ms bigint)
RETURNS TABLE (allowed boolean, cur integer, prev integer, elapsed_ms bigint)
LANGUAGE plpgsql AS $$
DECLARE
  now_ms bigint := (extract(epoch FROM clock_timestamp()) * 1000)::bigint;
  ws bigint := now_ms - now_ms % p_window_ms;
  e bigint := now_ms - ws;
  p integer;
  c integer;
BEGIN
  SELECT r.hits INTO p FROM rate_limits r WHERE r.key = p_key AND r.window_start = ws - p_window_ms;
  p := COALESCE(p, 0);
  INSERT INTO rate_limits AS r (key, window_start, hits)
  SELECT p_key, ws, 1
  WHERE p::bigint * (p_window_ms - e) + p_window_ms <= p_limit::bigint * p_window_ms
  ON CONFLICT (key, window_start) DO UPDATE SET hits = r.hits + 1
    WHERE p::bigint * (p_window_ms - e) + (r.hits + 1)::bigint * p_window_ms <= p_limit::bigint * p_window_ms
  RETURNING r.hits INTO c;
  IF FOUND THEN
    RETURN QUERY SELECT true, c, p, e;
  ELSE
    SELECT r.hits INTO c FROM rate_limits r WHERE r.key = p_key AND r.window_start = ws;
    RETURN QUERY SELECT false, COALESCE(c, 0), p, e;
  END IF;
END $$;
