-- how calls ended, the numbers as sent, unassigned leads
ALTER TABLE calls ADD COLUMN outcome TEXT NOT NULL DEFAULT '';        -- answered, busy, no_answer, cancelled, failed

ALTER TABLE calls ADD COLUMN caller_raw TEXT NOT NULL DEFAULT '';     -- as the proxy sent it (caller: as E.164)

ALTER TABLE calls ADD COLUMN called_raw TEXT NOT NULL DEFAULT '';

ALTER TABLE leads ADD COLUMN unassigned BIGINT NOT NULL DEFAULT 0;   -- nobody who talked was a person
