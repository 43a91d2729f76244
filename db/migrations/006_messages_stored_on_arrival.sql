-- A user message is stored by the API when it arrives, before the session workflow has given it
-- a turn: until then (or for good, when the session refuses it) turn and position are NULL, and
-- no conversation, listing or count includes it.
ALTER TABLE messages ALTER COLUMN turn DROP NOT NULL;
ALTER TABLE messages ALTER COLUMN position DROP NOT NULL;
ALTER TABLE messages ADD CONSTRAINT messages_turn_and_position CHECK ((turn IS NULL) = (position IS NULL));
-- Who stopped a cancelled turn is in its turn.done event; tool calls record whether they ran.
