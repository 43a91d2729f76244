-- The effect ledger (docs/tools.md, "Effects"): a write tool's intent is recorded before it runs
-- and its receipt after. An intent with no receipt means a worker died after the tool may have
-- acted: an idempotent tool is sent again with the same key, any other is not re-run and a
-- person decides (outcome_unknown).
CREATE TABLE effects (
  tool_call_id     text PRIMARY KEY,
  session_id       text NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
  name             text NOT NULL,
  idempotency_key  text NOT NULL,
  idempotent       boolean NOT NULL,
  -- intent: sent (or about to be), no receipt yet; done / failed: the receipt; retryable: an attempt
  -- failed in a way known not to have acted; unknown: the outcome cannot be known (a time-out, or
  -- an attempt found another's intent without a receipt); marked_done: a person said it happened.
  status           text NOT NULL CHECK (status IN ('intent', 'done', 'failed', 'retryable', 'unknown', 'marked_done')),
  attempts         integer NOT NULL DEFAULT 1,
  result           jsonb,
  error_code       text,
  error_message    text,                                 -- what the model read of a failed receipt
  decided_by       text,
  created_at       timestamptz NOT NULL DEFAULT now(),   -- the first intent: never moves (the list's order)
  intent_at        timestamptz NOT NULL DEFAULT now(),   -- the latest attempt's intent
  receipt_at       timestamptz
);
CREATE INDEX effects_session ON effects (session_id, created_at);
