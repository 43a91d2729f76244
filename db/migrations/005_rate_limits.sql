-- Sliding-window rate limit counters shared by every API process (db/rate-limits.ts).
-- One row per key and fixed window; windows older than two windows are deleted by the API.
CREATE TABLE rate_limits (
  key           text NOT NULL,
  window_start  bigint NOT NULL,  -- epoch ms, a multiple of the window length
  hits          integer NOT NULL,
  PRIMARY KEY (key, window_start)
);
