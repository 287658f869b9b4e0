-- call registry with billing columns, event replies, leads, accounts, top-ups, cards, documents
CREATE TABLE calls_v2 (
    tenant       TEXT    NOT NULL,
    call_id      TEXT    NOT NULL,
    direction    TEXT    NOT NULL CHECK (direction IN ('inbound', 'outbound', 'forwarded')),
    caller       TEXT    NOT NULL,
    called       TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('ringing', 'answered', 'ended', 'expired')),
    ringing_user TEXT    NOT NULL,
    answered_by  TEXT    NOT NULL DEFAULT '',
    last_user    TEXT    NOT NULL DEFAULT '',
    ringing_at   INTEGER NOT NULL,
    answered_at  INTEGER NOT NULL DEFAULT 0,
    ended_at     INTEGER NOT NULL DEFAULT 0,
    line         TEXT    NOT NULL DEFAULT '',
    rate_micro   INTEGER NOT NULL DEFAULT 0,
    increment_s  INTEGER NOT NULL DEFAULT 0,
    talked_s     INTEGER NOT NULL DEFAULT 0,
    charge_micro INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, call_id)
);

INSERT INTO calls_v2 (tenant, call_id, direction, caller, called, state, ringing_user, answered_by, last_user,
                      ringing_at, answered_at, ended_at)
    SELECT tenant, call_id, CASE WHEN direction IN ('inbound', 'outbound', 'forwarded') THEN direction
                                 ELSE 'inbound' END,
           caller, called, state, COALESCE(ringing_user, ''), COALESCE(answered_by, ''), COALESCE(last_user, ''),
           COALESCE(ringing_at, 0), COALESCE(answered_at, 0), COALESCE(ended_at, 0)
    FROM calls;

DROP TABLE calls;

ALTER TABLE calls_v2 RENAME TO calls;

CREATE INDEX calls_by_state ON calls (tenant, state, ringing_at);

CREATE INDEX calls_open ON calls (state, ringing_at) WHERE state IN ('ringing', 'answered');

DROP TABLE call_events;

CREATE TABLE call_events (
    tenant      TEXT    NOT NULL,
    call_id     TEXT    NOT NULL,
    key         TEXT    NOT NULL,           -- server.rules.calls.Event.key: a replay has the same key
    kind        TEXT    NOT NULL,
    user        TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    reply       TEXT    NOT NULL,           -- JSON of server.rules.calls.Reply: what a replay gets back
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (tenant, call_id, key)
);

CREATE TABLE leads (
    tenant      TEXT    NOT NULL,
    call_id     TEXT    NOT NULL,
    responsible TEXT    NOT NULL,
    trigger     TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant, call_id)           -- one lead per call, whatever the retries
);

ALTER TABLE ledger ADD COLUMN currency TEXT NOT NULL DEFAULT '';

ALTER TABLE ledger ADD COLUMN balance_micro INTEGER;

CREATE TABLE accounts (
    tenant        TEXT    PRIMARY KEY,
    balance_micro INTEGER NOT NULL DEFAULT 0,  -- always SUM(ledger.amount_micro): kept in the same transaction
    documents     INTEGER NOT NULL DEFAULT 0   -- bumped by each document upload and review
);

INSERT INTO accounts (tenant, balance_micro) SELECT tenant, SUM(amount_micro) FROM ledger GROUP BY tenant;

CREATE TABLE topups (
    id              INTEGER PRIMARY KEY,
    tenant          TEXT    NOT NULL,
    amount_micro    INTEGER NOT NULL CHECK (amount_micro > 0),
    currency        TEXT    NOT NULL,
    status          TEXT    NOT NULL CHECK (status IN ('pending', 'charging', 'charged', 'failed')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    claimed_at      INTEGER NOT NULL DEFAULT 0,
    last_reason     TEXT    NOT NULL DEFAULT '',
    gateway_ref     TEXT    NOT NULL DEFAULT '',
    trigger         TEXT    NOT NULL,
    created_at      INTEGER NOT NULL
);

CREATE UNIQUE INDEX one_open_topup ON topups (tenant) WHERE status IN ('pending', 'charging');

CREATE INDEX topups_due ON topups (status, next_attempt_at);

CREATE TABLE cards (
    tenant     TEXT    PRIMARY KEY,
    token      TEXT    NOT NULL,
    brand      TEXT    NOT NULL,
    last4      TEXT    NOT NULL,
    exp_month  INTEGER NOT NULL,
    exp_year   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE sandbox_charges (
    key          TEXT    PRIMARY KEY,       -- the gateway idempotency key
    tenant       TEXT    NOT NULL,
    card_token   TEXT    NOT NULL,
    amount_micro INTEGER NOT NULL,
    currency     TEXT    NOT NULL,
    ok           INTEGER NOT NULL,
    reference    TEXT    NOT NULL,
    reason       TEXT    NOT NULL,
    created_at   INTEGER NOT NULL
);

CREATE TABLE rentals_seen (
    tenant TEXT NOT NULL,
    number TEXT NOT NULL,
    since  TEXT NOT NULL,                   -- ISO date the rental was first in force: no renewals before it
    PRIMARY KEY (tenant, number)
);

CREATE TABLE document_sets (
    id          INTEGER PRIMARY KEY,
    tenant      TEXT    NOT NULL,
    number      TEXT    NOT NULL,
    status      TEXT    NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    reason      TEXT    NOT NULL DEFAULT '',
    uploaded_at INTEGER NOT NULL,
    due_on      TEXT    NOT NULL,
    decided_at  INTEGER NOT NULL DEFAULT 0,
    decided_by  TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX document_sets_by_number ON document_sets (tenant, number, status);

CREATE TABLE document_files (
    set_id INTEGER NOT NULL REFERENCES document_sets (id),
    seq    INTEGER NOT NULL,
    sha256 TEXT    NOT NULL,                -- the file under DATA_DIR/documents (content-addressed)
    name   TEXT    NOT NULL,
    format TEXT    NOT NULL,
    width  INTEGER NOT NULL,
    height INTEGER NOT NULL,
    size   INTEGER NOT NULL,
    PRIMARY KEY (set_id, seq)
);
