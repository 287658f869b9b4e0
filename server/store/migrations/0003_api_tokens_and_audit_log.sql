-- API tokens (hashes) and the audit log of Admin calls
CREATE TABLE tokens (
    id          TEXT    PRIMARY KEY,
    role        TEXT    NOT NULL CHECK (role IN ('proxy', 'tenant-admin', 'operator', 'owner')),
    tenants     TEXT    NOT NULL,           -- JSON list; tenant roles only
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL DEFAULT 0, -- 0: never
    revoked_at  INTEGER NOT NULL DEFAULT 0,
    comment     TEXT    NOT NULL DEFAULT '',
    token_hash  TEXT    NOT NULL            -- SHA-256 of the whole token: the token itself is never stored
);

CREATE TABLE audit (
    id             INTEGER PRIMARY KEY,
    at             REAL    NOT NULL,
    token_id       TEXT    NOT NULL,
    role           TEXT    NOT NULL,
    tenant         TEXT    NOT NULL,
    action         TEXT    NOT NULL,
    version_before INTEGER NOT NULL DEFAULT 0,
    version_after  INTEGER NOT NULL DEFAULT 0,
    result         TEXT    NOT NULL,
    detail         TEXT    NOT NULL DEFAULT ''
);

CREATE INDEX audit_by_tenant ON audit (tenant, at);
