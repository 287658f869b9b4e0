-- number ownership (one tenant per number), audit objects
CREATE TABLE number_owners (
    number  TEXT    PRIMARY KEY,            -- E.164: the key itself forbids a second holder (spec §7)
    tenant  TEXT    NOT NULL,
    line    TEXT    NOT NULL,               -- the holder's line for it (the failover export)
    version BIGINT NOT NULL,               -- the holder's version that claimed it
    since   BIGINT NOT NULL
);

CREATE INDEX number_owners_by_tenant ON number_owners (tenant);

CREATE TABLE number_conflicts (             -- listed by several tenants before ownership: resolve by hand
    number  TEXT    NOT NULL,
    tenant  TEXT    NOT NULL,
    line    TEXT    NOT NULL,
    PRIMARY KEY (number, tenant)
);

CREATE TABLE tenant_facts (                 -- of the version in force, for the failover export
    tenant        TEXT    PRIMARY KEY,
    status        TEXT    NOT NULL,
    backup_number TEXT    NOT NULL DEFAULT '',
    backup_line   TEXT    NOT NULL DEFAULT ''
);

ALTER TABLE audit ADD COLUMN object TEXT NOT NULL DEFAULT '';

ALTER TABLE audit ADD COLUMN peer TEXT NOT NULL DEFAULT '';

CREATE INDEX audit_by_action ON audit (action, at);
