-- replica_reports: which proxy replica holds which snapshot version of which tenant (installed or refused)
-- One row per (replica, tenant), the latest of its reports (server/store/replicas.py): the version last installed
-- and when, the last version refused and not superseded by a later install, and the latest report's peer, token
-- and time.  Deleted with the tenant (a removal) and when the replica drops the tenant.  No foreign key to
-- "current": a report for a tenant with no version in force is not written (checked in the same statement).
CREATE TABLE replica_reports (
    replica          TEXT    NOT NULL,
    tenant           TEXT    NOT NULL,
    version          INTEGER NOT NULL DEFAULT 0,   -- last installed (0: none yet)
    checksum         TEXT    NOT NULL DEFAULT '',  -- SHA-256 hex of that snapshot
    installed_at     REAL    NOT NULL DEFAULT 0,
    refused_version  INTEGER NOT NULL DEFAULT 0,   -- 0: no refusal standing
    refused_checksum TEXT    NOT NULL DEFAULT '',
    refused_reason   TEXT    NOT NULL DEFAULT '',
    refused_at       REAL    NOT NULL DEFAULT 0,
    peer             TEXT    NOT NULL DEFAULT '',
    token_id         TEXT    NOT NULL DEFAULT '',
    seen_at          REAL    NOT NULL,
    PRIMARY KEY (replica, tenant)
);

CREATE INDEX replica_reports_by_tenant ON replica_reports (tenant, replica);
