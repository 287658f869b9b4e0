-- settings versions, list patches, snapshots, ledger, calls
CREATE TABLE versions (
    tenant      TEXT    NOT NULL,
    version     INTEGER NOT NULL CHECK (version >= 1),
    kind        TEXT    NOT NULL,
    document    BLOB,                       -- NULL for a patch: see list_patches
    created_at  INTEGER NOT NULL,
    comment     TEXT    NOT NULL DEFAULT '',
    PRIMARY KEY (tenant, version)
);

CREATE TABLE "current" (
    tenant      TEXT    PRIMARY KEY,
    version     INTEGER NOT NULL,
    FOREIGN KEY (tenant, version) REFERENCES versions (tenant, version)
);

CREATE TABLE list_patches (
    tenant      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    seq         INTEGER NOT NULL,           -- order of application within the version
    list_name   TEXT    NOT NULL CHECK (list_name IN ('blacklist', 'offhours_blacklist')),
    op          TEXT    NOT NULL CHECK (op IN ('add', 'remove')),
    number      TEXT    NOT NULL,
    PRIMARY KEY (tenant, version, seq),     -- also the index the replay reads by
    FOREIGN KEY (tenant, version) REFERENCES versions (tenant, version)
);

CREATE TABLE snapshots (
    tenant      TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    blob        BLOB    NOT NULL,
    PRIMARY KEY (tenant, version),
    FOREIGN KEY (tenant, version) REFERENCES versions (tenant, version)
);

CREATE TABLE ledger (
    id           INTEGER PRIMARY KEY,
    tenant       TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    amount_micro INTEGER NOT NULL,
    ref          TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    UNIQUE (tenant, kind, ref)
);

CREATE TABLE calls (
    tenant       TEXT    NOT NULL,
    call_id      TEXT    NOT NULL,
    direction    TEXT    NOT NULL,
    caller       TEXT    NOT NULL,
    called       TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('ringing', 'answered', 'ended')),
    ringing_user TEXT,
    answered_by  TEXT,
    last_user    TEXT,
    ringing_at   INTEGER,
    answered_at  INTEGER,
    ended_at     INTEGER,
    PRIMARY KEY (tenant, call_id)
);

CREATE INDEX calls_by_state ON calls (tenant, state, ringing_at);

CREATE TABLE call_events (
    tenant      TEXT    NOT NULL,
    call_id     TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    user        TEXT,
    at          INTEGER NOT NULL,
    PRIMARY KEY (tenant, call_id, seq)
);
