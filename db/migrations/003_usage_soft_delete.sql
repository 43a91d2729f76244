-- Cost of each assistant message, from the provider's token usage and the price table setting.
ALTER TABLE messages ADD COLUMN cost_usd numeric(16, 8);
-- Soft delete: a deleted session and its messages stay for audit but are never served.
ALTER TABLE messages ADD COLUMN deleted_at timestamptz;
ALTER TABLE sessions ADD COLUMN deleted_at timestamptz;
