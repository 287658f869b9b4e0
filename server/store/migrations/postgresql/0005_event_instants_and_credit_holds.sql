-- event instants and credit held by calls in progress
ALTER TABLE calls ADD COLUMN last_at BIGINT NOT NULL DEFAULT 0;      -- latest instant of its events (proxy clock)

ALTER TABLE calls ADD COLUMN updated_at BIGINT NOT NULL DEFAULT 0;   -- when its last event was recorded (server)

ALTER TABLE calls ADD COLUMN reserved_micro BIGINT NOT NULL DEFAULT 0;  -- credit held while the call is open

ALTER TABLE calls ADD COLUMN reserved_s BIGINT NOT NULL DEFAULT 0;

UPDATE calls SET last_at = GREATEST(ringing_at, answered_at, ended_at), updated_at = GREATEST(ringing_at, answered_at, ended_at);

ALTER TABLE accounts ADD COLUMN reserved_micro BIGINT NOT NULL DEFAULT 0;  -- SUM of the open calls' holds

DROP INDEX calls_open;

CREATE INDEX calls_open ON calls (state, updated_at) WHERE state IN ('ringing', 'answered');
