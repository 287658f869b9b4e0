"""The embedded store: one SQLite file in WAL mode, shared by every worker process (SPEC §5).

`SQLiteStore` implements `server.store.api.Store`.  Design notes:

* One connection per thread (the async service calls the store from a thread
  pool) and per process: a connection is never used across `fork()`; a child
  opens its own and leaves the inherited ones alone (closing them in the child
  could disturb the parent's locks).
* Connections run in autocommit mode; every write is one explicit
  `BEGIN IMMEDIATE` transaction (the write lock is taken first, so
  read-then-write sequences such as the version check cannot be overtaken),
  multi-statement reads are one `BEGIN` (a consistent WAL snapshot).
* `synchronous=FULL`: a committed version or ledger entry survives a power
  loss, not only a process crash.
* The schema is versioned from day one: `MIGRATIONS` is applied in order, in
  one `BEGIN IMMEDIATE` transaction, when the store opens; a database whose
  schema is newer than this code is refused.
* Blacklist patches are stored as rows, not as a copy of the document: the
  effective document of version v is the newest full document at or before v
  with the patch rows of every later patch version up to v applied in order.
* Number ownership (server/store_numbers.py) moves in the transaction of the
  versions that move it; `commit_versions` writes several tenants' versions
  (a transfer) all or none.
* Only parameters reach SQL: no statement is built from caller data.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import random
import secrets
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from engine.document_json import dumps_document, loads_document
from server.store import numbers as store_numbers
from server.store.accounts import AccountsMixin
from server.store.api import (
    NotFound,
    PatchResult,
    Poll,
    SnapshotBuilder,
    SnapshotDamaged,
    Store,
    StoreBusy,
    StoreDamaged,
    StoreError,
    StoreMissing,
    StoreUnavailable,
    TenantFacts,
    TenantMissing,
    VersionConflict,
    VersionRecord,
    VersionWrite,
)
from server.store.checks import _check_bytes, _check_e164, _check_int, _check_numbers, _check_str, _check_tenant
from server.store.faults import Faults, describe_check, locate_damage
from server.store.group import GroupCommitter
from server.store.numbers import NumbersMixin
from server.store.security import SecurityMixin

T = TypeVar("T")

__all__ = [
    "KEEP_SNAPSHOTS",
    "LIST_NAMES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLiteStore",
    "SchemaTooNew",
    "SchemaTooOld",
    "StoreBusy",
]


class SchemaTooNew(StoreError):
    """The database was migrated by a newer callgate than this one."""


class SchemaTooOld(StoreError):
    """The database needs a migration that this caller may not run (a tool beside a possibly running server)."""


# -- schema ------------------------------------------------------------------

# (version, description, SQL).  Append only: never edit a released migration,
# add the next one.  Each runs inside the opening transaction, statement by
# statement (not `executescript`, which would commit first).
MIGRATIONS: list[tuple[int, str, str]] = [
    (1, "settings versions, list patches, snapshots, ledger, calls", """
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
"""),
    (2, "call registry with billing columns, event replies, leads, accounts, top-ups, cards, documents", """
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
"""),
    (3, "API tokens (hashes) and the audit log of Admin calls", """
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
"""),
    (4, "number ownership (one tenant per number), audit objects", """
CREATE TABLE number_owners (
    number  TEXT    PRIMARY KEY,            -- E.164: the key itself forbids a second holder (SPEC §7)
    tenant  TEXT    NOT NULL,
    line    TEXT    NOT NULL,               -- the holder's line for it (the failover export)
    version INTEGER NOT NULL,               -- the holder's version that claimed it
    since   INTEGER NOT NULL
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
"""),
    (5, "event instants and credit held by calls in progress", """
ALTER TABLE calls ADD COLUMN last_at INTEGER NOT NULL DEFAULT 0;      -- latest instant of its events (proxy clock)

ALTER TABLE calls ADD COLUMN updated_at INTEGER NOT NULL DEFAULT 0;   -- when its last event was recorded (server)

ALTER TABLE calls ADD COLUMN reserved_micro INTEGER NOT NULL DEFAULT 0;  -- credit held while the call is open

ALTER TABLE calls ADD COLUMN reserved_s INTEGER NOT NULL DEFAULT 0;

UPDATE calls SET last_at = MAX(ringing_at, answered_at, ended_at), updated_at = MAX(ringing_at, answered_at, ended_at);

ALTER TABLE accounts ADD COLUMN reserved_micro INTEGER NOT NULL DEFAULT 0;  -- SUM of the open calls' holds

DROP INDEX calls_open;

CREATE INDEX calls_open ON calls (state, updated_at) WHERE state IN ('ringing', 'answered');
"""),
    (6, "snapshot checksums, the store's identity, the health probe", """
ALTER TABLE snapshots ADD COLUMN checksum TEXT NOT NULL DEFAULT '';  -- blake2b-128 of blob, checked on every read

CREATE TABLE store_identity (               -- one row: the id the data directory's marker file repeats
    id          TEXT    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE health_probe (                 -- one row per process: a real write, made to tell if writes work
    pid INTEGER PRIMARY KEY,
    at  REAL    NOT NULL
);
"""),
    (7, "how calls ended, the numbers as sent, unassigned leads", """
ALTER TABLE calls ADD COLUMN outcome TEXT NOT NULL DEFAULT '';        -- answered, busy, no_answer, cancelled, failed

ALTER TABLE calls ADD COLUMN caller_raw TEXT NOT NULL DEFAULT '';     -- as the proxy sent it (caller: as E.164)

ALTER TABLE calls ADD COLUMN called_raw TEXT NOT NULL DEFAULT '';

ALTER TABLE leads ADD COLUMN unassigned INTEGER NOT NULL DEFAULT 0;   -- nobody who talked was a person
"""),
]

# Work a migration needs beyond SQL (reading stored documents), run right after that migration's
# statements, in the same transaction.
def _backfill_6(conn: sqlite3.Connection) -> None:
    """Checksums of the blobs already stored (from here on a changed byte is caught), and the identity."""
    rows = conn.execute("SELECT tenant, version, blob FROM snapshots").fetchall()
    conn.executemany("UPDATE snapshots SET checksum = ? WHERE tenant = ? AND version = ?",
                     [(checksum(bytes(blob)), tenant, version) for tenant, version, blob in rows])
    conn.execute("INSERT INTO store_identity (id, created_at) VALUES (?, ?)",
                 (secrets.token_hex(16), int(time.time())))


BACKFILLS: dict[int, Callable[[sqlite3.Connection], None]] = {
    4: lambda conn: store_numbers.backfill(conn, SQLiteStore._documents_in_force),
    6: _backfill_6,
}


def checksum(blob: bytes) -> str:
    """What a stored snapshot blob is checked against when read back (SQLite's own checks cannot see a
    changed byte inside a blob)."""
    return hashlib.blake2b(blob, digest_size=16).hexdigest()

SCHEMA_VERSION: int = MIGRATIONS[-1][0]

_versions = [m[0] for m in MIGRATIONS]
if _versions != list(range(1, len(MIGRATIONS) + 1)):  # pragma: no cover - guards future edits
    raise RuntimeError(f"MIGRATIONS must be numbered 1, 2, 3, ... in order, got {_versions}")
del _versions

KEEP_SNAPSHOTS = 3                      # compiled snapshot blobs kept per tenant
LIST_NAMES = ("blacklist", "offhours_blacklist")
COMMIT_KINDS = ("push", "rollback", "transfer", "resolve")  # "patch" versions are made by patch_list only
BUSY_TIMEOUT_MS = 10_000


def _split_sql(script: str) -> list[str]:
    """Split a migration script into complete statements (semicolons inside literals/triggers are kept)."""
    statements: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in a migration: {pending.strip()[:80]!r}")
    return statements


# -- input checks ------------------------------------------------------------

# -- JSON documents ----------------------------------------------------------

SMALL_DOCUMENT = 256 * 1024  # commit_version re-checks documents up to this size


def _pack(document: bytes) -> bytes:
    """A document as stored: zlib (level 1), which releases the GIL while it works and turns
    20 MB of phone numbers into about 4, so that binding it to the INSERT (which holds the GIL)
    is short.  Stored JSON starts with '{' or white space, zlib with 0x78: both read back."""
    return zlib.compress(document, 1)


def _unpack(stored: bytes) -> bytes:
    return zlib.decompress(stored) if stored[:1] == b"\x78" else bytes(stored)

def _apply_patch(doc: dict[str, Any], list_name: str, ops: list[tuple[str, str]]) -> None:
    """Apply one version's effective patch rows (removes, then adds) to doc[list_name] in place.

    The same function computes the document handed to `snapshot_for` and
    replays the rows in `get_version`, so both always agree.
    """
    current = doc.get(list_name)
    if current is None:
        if not ops:
            return
        current = []
    if not isinstance(current, list):
        raise StoreError(f"the stored document's {list_name!r} is not a list")
    removed = {number for op, number in ops if op == "remove"}
    result = [number for number in current if number not in removed] if removed else list(current)
    result.extend(number for op, number in ops if op == "add")
    doc[list_name] = result


# -- connections -------------------------------------------------------------

@dataclass(eq=False)
class _Conn:
    conn: sqlite3.Connection
    pid: int
    thread: threading.Thread
    generation: int
    closed: bool = field(default=False)


class SQLiteStore(AccountsMixin, SecurityMixin, NumbersMixin):
    """`Store` on one SQLite file (WAL, synchronous=FULL), safe across threads and processes."""

    def __init__(self, path: str | Path, *, migrate: bool = True):
        """Open (and create) the store; `migrate=False` refuses a store of an older schema instead of migrating
        it (tools beside a running server: the server of this release migrates, with the old ones stopped)."""
        if not isinstance(path, str | Path):
            raise ValueError(f"path must be a str or Path, not {type(path).__name__}")
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise ValueError(f"the store needs a file path shared by every worker, not {str(path)!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._conns: list[_Conn] = []     # every connection opened, to close them all (this process's only)
        self._generation = 0
        self._poll_conn: sqlite3.Connection | None = None
        self._poll_pid = 0
        self._poll_seen: tuple[int, Poll] | None = None
        self._committer: GroupCommitter | None = None
        self._committer_pid = 0
        self.faults = Faults(self.path, self._locate_damage)
        self.marker = self.path.with_name(self.path.name + ".id")
        # A data directory initialised once keeps a marker beside its store: a store that is then missing or
        # empty was lost (a wiped disk, a truncated copy), not new, and must be restored, never re-created.
        if self.marker.exists() and (not self.path.exists() or self.path.stat().st_size == 0):
            raise StoreMissing(
                f"{self.path} is {'missing' if not self.path.exists() else 'empty'}, but this data directory was "
                f"initialised before ({self.marker} names store {self._marker_id()}): callgate will not start "
                "afresh over it; restore the store from a backup (or, to really start with nothing, delete "
                f"{self.marker})")
        try:
            self._migrate(self._conn(), migrate)
            self._check_identity()
        except BaseException as exc:
            self.close()
            if isinstance(exc, sqlite3.Error | StoreUnavailable | StoreDamaged):
                raise self.faults.named("open", exc) from None
            raise

    def _marker_id(self) -> str:
        try:
            return self.marker.read_text(encoding="ascii", errors="replace").strip()[:64]
        except OSError as exc:
            return f"(unreadable: {exc.strerror})"

    def _check_identity(self) -> None:
        """Write the marker on first open; refuse a store that is not the one the marker names."""
        ident = self.identity
        if not ident:
            raise StoreDamaged("schema", f"{self.path} has no store identity (table store_identity is empty): "
                                         "restore the store from a backup")
        if self.marker.exists():
            named = self._marker_id()
            if named != ident:
                raise StoreDamaged("identity", f"{self.path} is store {ident}, but this data directory was "
                                               f"initialised with store {named} ({self.marker}): a store from "
                                               "elsewhere was put here; restore the right one (or delete the "
                                               "marker to adopt this store)")
            return
        tmp = self.marker.with_name(f"{self.marker.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="ascii") as f:
            f.write(ident + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.marker)
        fd = os.open(self.marker.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    # -- connection management ---------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
                               check_same_thread=False)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")   # a constant, not caller data
            # Switching a fresh file to WAL while another process opens it returns "database is
            # locked" at once, without calling the busy handler: retry it until the busy timeout.
            deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as exc:
                    if self._busy(exc) is None or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.002 + random.random() * 0.02)
            if str(mode).lower() != "wal":
                raise StoreError(f"{self.path}: cannot switch to WAL journal mode (got {mode!r})")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection in this process, opened on first use."""
        slot: _Conn | None = getattr(self._local, "slot", None)
        pid = os.getpid()
        if slot is not None and not slot.closed and slot.pid == pid and slot.generation == self._generation:
            return slot.conn
        if pid != self._pid:
            # A forked child: the lock may have been copied while another thread of the parent held it.
            self._lock, self._pid = threading.Lock(), pid
        try:
            conn = self._connect()
        except sqlite3.OperationalError as exc:
            raise (self._busy(exc) or exc) from None
        slot = _Conn(conn, pid, threading.current_thread(), self._generation)
        with self._lock:
            # Close the connections of threads that have ended (this process's only: a
            # connection inherited through fork() belongs to the parent and is left alone).
            for old in self._conns:
                if old.pid == pid and not old.closed and not old.thread.is_alive():
                    old.closed = True
                    old.conn.close()
            self._conns = [c for c in self._conns if not c.closed]
            self._conns.append(slot)
        self._local.slot = slot
        return conn

    def close(self) -> None:
        """Close every connection this process opened (call it when no other call is in flight).

        The store stays usable: a later call opens a new connection.
        """
        pid = os.getpid()
        with self._lock:
            committer, self._committer = self._committer, None
            if committer is not None and self._committer_pid == pid:
                committer.close()
            if self._poll_conn is not None and self._poll_pid == pid:
                self._poll_conn.close()
            self._poll_conn, self._poll_seen = None, None
            self._generation += 1
            for slot in self._conns:
                if slot.pid == pid and not slot.closed:
                    slot.closed = True
                    try:
                        slot.conn.close()
                    except sqlite3.Error:  # pragma: no cover - closing is best effort
                        pass
            self._conns = [c for c in self._conns if not c.closed]
        self._local.slot = None

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _busy(self, exc: sqlite3.OperationalError) -> StoreBusy | None:
        """StoreBusy for a lock timeout (other OperationalErrors are bugs or I/O errors: let them through)."""
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return StoreBusy(f"{self.path} stayed locked for {BUSY_TIMEOUT_MS // 1000} s: {exc}")
        return None

    def _submit(self, fn: Callable[[sqlite3.Connection], T]) -> Future[T]:
        """Queue a small write for this process's next group commit (server/store_group.py)."""
        pid = os.getpid()
        with self._lock:
            if self._committer is None or self._committer_pid != pid:  # first use, or a forked child
                self._committer = GroupCommitter(self._connect, lambda exc: self._busy(exc) or exc)
                self._committer_pid = pid
            committer = self._committer
        return committer.submit(fn)

    def _grouped(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return self._submit(fn).result()

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """One read statement on this thread's connection (autocommit: a consistent snapshot of its own)."""
        try:
            return self._conn().execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:
            raise (self._busy(exc) or exc) from None

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                self._rollback(conn)
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                self._rollback(conn)
                raise
        except sqlite3.OperationalError as exc:
            raise (self._busy(exc) or exc) from None

    def _rollback(self, conn: sqlite3.Connection) -> None:
        """Roll back, best effort: on a failing disk the ROLLBACK can fail too; then this thread's connection
        is dropped (the next call opens a fresh one) instead of staying inside a transaction for good."""
        if not conn.in_transaction:
            return
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            slot = getattr(self._local, "slot", None)
            if slot is not None and slot.conn is conn:
                with self._lock:
                    slot.closed = True
                self._local.slot = None
                with contextlib.suppress(sqlite3.Error):
                    conn.close()

    def _locate_damage(self) -> str:
        """Which tables a damaged store's quick check names (a connection of its own: ours may be mid-statement)."""
        try:
            conn = sqlite3.connect(self.path, timeout=1, isolation_level=None)
        except sqlite3.Error:
            return ""
        try:
            return locate_damage(conn)
        finally:
            conn.close()

    # -- migrations ----------------------------------------------------------

    @staticmethod
    def _schema_version(conn: sqlite3.Connection) -> int:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'").fetchone()
        if not exists:
            return 0
        return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchone()[0])

    def _refuse_newer(self, found: int) -> None:
        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} has schema version {found}, newer than this callgate knows "
                f"({SCHEMA_VERSION}): run the callgate release that migrated it (or a newer one)")

    def _migrate(self, conn: sqlite3.Connection, allowed: bool = True) -> None:
        try:
            found = self._schema_version(conn)
        except sqlite3.OperationalError as exc:
            raise (self._busy(exc) or exc) from None
        self._refuse_newer(found)
        if found == SCHEMA_VERSION:
            return          # the common case: no write lock taken
        if found and not allowed:
            # Migrating under a server of the older release would let it write without what the new
            # schema keeps (number ownership was such a change): the new server migrates, the old one stopped.
            raise SchemaTooOld(
                f"{self.path} has schema version {found}, older than this callgate's {SCHEMA_VERSION}: stop every "
                "server on it, start this release's `callgate serve` once (it migrates the store), then run "
                "this command again")
        with self._transaction(write=True):
            # Checked again under the write lock: another process may have migrated meanwhile.
            conn.execute("""CREATE TABLE IF NOT EXISTS schema_migrations (
                                version     INTEGER PRIMARY KEY,
                                description TEXT    NOT NULL,
                                applied_at  INTEGER NOT NULL)""")
            found = self._schema_version(conn)
            self._refuse_newer(found)
            for version, description, script in MIGRATIONS:
                if version <= found:
                    continue
                for statement in _split_sql(script):
                    conn.execute(statement)
                if version in BACKFILLS:
                    BACKFILLS[version](conn)
                conn.execute("INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                             (version, description, int(time.time())))

    # -- settings ------------------------------------------------------------

    @staticmethod
    def _current(conn: sqlite3.Connection, tenant: str) -> int:
        row = conn.execute('SELECT version FROM "current" WHERE tenant = ?', (tenant,)).fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _store_snapshot(conn: sqlite3.Connection, tenant: str, version: int, blob: bytes) -> None:
        conn.execute("INSERT OR REPLACE INTO snapshots (tenant, version, blob, checksum) VALUES (?, ?, ?, ?)",
                     (tenant, version, blob, checksum(blob)))
        conn.execute("""DELETE FROM snapshots WHERE tenant = ? AND version NOT IN (
                            SELECT version FROM snapshots WHERE tenant = ? ORDER BY version DESC LIMIT ?)""",
                     (tenant, tenant, KEEP_SNAPSHOTS))

    @staticmethod
    def _put_in_force(conn: sqlite3.Connection, tenant: str, version: int) -> None:
        conn.execute('INSERT INTO "current" (tenant, version) VALUES (?, ?) '
                     "ON CONFLICT (tenant) DO UPDATE SET version = excluded.version", (tenant, version))

    @staticmethod
    def _effective(conn: sqlite3.Connection, tenant: str, version: int) -> dict[str, Any]:
        """The effective document of an existing version, parsed."""
        base = conn.execute("""SELECT version, document FROM versions
                               WHERE tenant = ? AND version <= ? AND document IS NOT NULL
                               ORDER BY version DESC LIMIT 1""", (tenant, version)).fetchone()
        if base is None:
            raise StoreError(f"tenant {tenant!r} version {version}: no full document at or before it")
        doc = loads_document(_unpack(base[1]))
        rows = conn.execute("""SELECT version, list_name, op, number FROM list_patches
                               WHERE tenant = ? AND version > ? AND version <= ?
                               ORDER BY version, seq""", (tenant, base[0], version))
        group: tuple[int, str] | None = None
        ops: list[tuple[str, str]] = []
        for patch_version, list_name, op, number in rows:
            if (patch_version, list_name) != group:
                if group is not None:
                    _apply_patch(doc, group[1], ops)
                group, ops = (patch_version, list_name), []
            ops.append((op, number))
        if group is not None:
            _apply_patch(doc, group[1], ops)
        return doc

    def poll(self) -> Poll | None:
        # One connection of its own, with no busy wait: a worker's event loop calls this, and a
        # locked store must cost it nothing but a skipped poll.  PRAGMA data_version changes only
        # when another connection commits, so an unchanged store costs one pragma.
        with self._lock:
            if self._poll_conn is None or self._poll_pid != os.getpid():
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=0)
                conn.execute("PRAGMA busy_timeout = 0")
                self._poll_conn, self._poll_pid, self._poll_seen = conn, os.getpid(), None
            conn = self._poll_conn
        try:
            seen = conn.execute("PRAGMA data_version").fetchone()[0]
            if self._poll_seen is not None and seen == self._poll_seen[0]:
                return self._poll_seen[1]
            conn.execute("BEGIN")
            try:
                versions = {t: int(v) for t, v in conn.execute('SELECT tenant, version FROM "current"')}
                balances, documents, reserved = {}, {}, {}
                for t, b, d, r in conn.execute("SELECT tenant, balance_micro, documents, reserved_micro FROM accounts"):
                    balances[t], documents[t], reserved[t] = int(b), int(d), int(r)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._busy(exc) is not None:
                return None
            raise
        result = Poll(versions, balances, documents, reserved)
        self._poll_seen = (seen, result)
        return result

    def current_versions(self) -> dict[str, int]:
        return {tenant: int(version) for tenant, version in self._read('SELECT tenant, version FROM "current"', ())}

    def commit_version(self, tenant: str, kind: str, document: bytes, snapshot: bytes,
                       expected_version: int | None, comment: str = "", *,
                       numbers: tuple[tuple[str, str], ...] | None = None, may_create: bool = True,
                       facts: TenantFacts | None = None) -> int:
        return self.commit_versions([VersionWrite(tenant, kind, document, snapshot, numbers, expected_version,
                                                  comment, facts)], may_create=may_create)[0]

    def commit_versions(self, writes: list[VersionWrite], *, may_create: bool = True) -> list[int]:
        if not isinstance(writes, list) or not writes or not all(isinstance(w, VersionWrite) for w in writes):
            raise ValueError("writes must be a non-empty list of VersionWrite")
        writes = [self._checked(w) for w in writes]
        if len({w.tenant for w in writes}) != len(writes):
            raise ValueError("at most one new version per tenant in one commit")
        packed = [_pack(w.document) for w in writes]  # before the write lock: zlib lets the GIL go, the lock does not
        with self._transaction(write=True) as conn:
            return self._commit_in(conn, writes, may_create, int(time.time()), packed)

    def _checked(self, w: VersionWrite) -> VersionWrite:
        """The write with its arguments checked and its numbers known (outside the write lock)."""
        tenant = _check_tenant(w.tenant)
        if w.kind not in COMMIT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(COMMIT_KINDS)}, not {w.kind!r}")
        document = _check_bytes("document", w.document)
        _check_bytes("snapshot", w.snapshot)
        if w.expected_version is not None:
            _check_int("expected_version", w.expected_version, minimum=0)
        _check_str("comment", w.comment, allow_empty=True)
        numbers = w.numbers
        if numbers is not None:
            if not isinstance(numbers, tuple | list):
                raise ValueError("numbers must be a sequence of (number, line) pairs")
            numbers = tuple((_check_e164(f"numbers[{i}].number", n), _check_str(f"numbers[{i}].line", line))
                            for i, (n, line) in enumerate(numbers))
        # The caller validated the document whole (engine.settings); parsing 20 MB of JSON again
        # here would hold the GIL for a tenth of a second in a worker that is serving calls.
        # Small documents are still checked, which catches a caller that mixes tenants up.
        if not document.lstrip()[:1] == b"{":
            raise ValueError("document is not a JSON settings document: it does not start with {")
        facts = w.facts
        if facts is not None and not isinstance(facts, TenantFacts):
            raise ValueError("facts must be TenantFacts")
        if len(document) <= SMALL_DOCUMENT or numbers is None or facts is None:
            try:
                doc = loads_document(document)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"document is not a JSON settings document: {exc}") from None
            if "tenant" in doc and doc["tenant"] != tenant:
                raise ValueError(f"the document is for tenant {doc['tenant']!r}, not {tenant!r}")
            listed = store_numbers.document_numbers(doc)
            if numbers is not None and numbers != listed:
                raise ValueError(f"numbers do not match the document's numbers[] of tenant {tenant!r}")
            if facts is not None and facts != TenantFacts.of(doc):
                raise ValueError(f"facts do not match the document of tenant {tenant!r}")
            numbers, facts = listed, TenantFacts.of(doc)
        return VersionWrite(tenant, w.kind, document, w.snapshot, numbers, w.expected_version, w.comment[:500],
                            facts)

    def _commit_in(self, conn: sqlite3.Connection, writes: list[VersionWrite], may_create: bool, now: int,
                   packed: list[bytes] | None = None) -> list[int]:
        """Insert checked writes as new versions in force, with their numbers' ownership (the caller's transaction)."""
        versions = []
        for w in writes:
            current = self._current(conn, w.tenant)
            if w.expected_version is not None and w.expected_version != current:
                raise VersionConflict(w.tenant, w.expected_version, current)
            if current == 0 and not may_create:
                raise TenantMissing(f"tenant {w.tenant!r} does not exist: creating a tenant is an operator's or "
                                    "an owner's act")
            versions.append(current + 1)
        store_numbers.claim(conn, [(w.tenant, v, w.numbers or ()) for w, v in zip(writes, versions, strict=True)],
                            now)
        stored = packed if packed is not None else [_pack(w.document) for w in writes]
        for w, version, document in zip(writes, versions, stored, strict=True):
            conn.execute("INSERT INTO versions (tenant, version, kind, document, created_at, comment) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (w.tenant, version, w.kind, document, now, w.comment))
            self._store_snapshot(conn, w.tenant, version, w.snapshot)
            self._put_in_force(conn, w.tenant, version)
            if w.facts is not None:
                store_numbers.write_facts(conn, w.tenant, w.facts)
        return versions

    @staticmethod
    def _documents_in_force(conn: sqlite3.Connection) -> list[tuple[str, int, dict[str, Any]]]:
        """(tenant, version, effective document) of every tenant, in the caller's transaction."""
        rows = conn.execute('SELECT tenant, version FROM "current" ORDER BY tenant').fetchall()
        return [(tenant, int(version), SQLiteStore._effective(conn, tenant, int(version))) for tenant, version in rows]

    def patch_list(self, tenant: str, list_name: str, add: list[str], remove: list[str],
                   snapshot_for: SnapshotBuilder, expected_version: int | None) -> PatchResult:
        _check_tenant(tenant)
        if list_name not in LIST_NAMES:
            raise ValueError(f"list_name must be one of {', '.join(LIST_NAMES)}, not {list_name!r}")
        add = _check_numbers("add", add)
        remove = _check_numbers("remove", remove)
        if not add and not remove:
            raise ValueError("nothing to patch: add and remove are both empty")
        if not callable(snapshot_for):
            raise ValueError("snapshot_for must be callable")
        if expected_version is not None:
            _check_int("expected_version", expected_version, minimum=0)
        # The compile (snapshot_for) can take a second for a big list: it runs outside the write
        # lock, on the version read first; the write then checks that no other version came in
        # between (VersionConflict with expected_version, else the patch is worked out again).
        for _attempt in range(5):
            with self._transaction(write=False) as conn:
                current = self._current(conn, tenant)
                if current == 0:
                    raise NotFound(f"tenant {tenant!r} has no settings")
                if expected_version is not None and expected_version != current:
                    raise VersionConflict(tenant, expected_version, current)
                doc = self._effective(conn, tenant, current)
            listed = doc.get(list_name)
            if listed is None:
                listed = []
            if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
                raise StoreError(f"tenant {tenant!r} version {current}: {list_name!r} is not a list of numbers")
            present = set(listed)
            ops: list[tuple[str, str]] = []
            for number in remove:           # removes first, then adds (a number in both ends up listed)
                if number in present:
                    present.discard(number)
                    ops.append(("remove", number))
            for number in add:
                if number not in present:
                    present.add(number)
                    ops.append(("add", number))
            if not ops:  # nothing would change: no new version (a replayed patch is a no-op)
                return PatchResult(version=current, added=0, removed=0, size=len(listed))
            _apply_patch(doc, list_name, ops)
            blob = _check_bytes("snapshot_for(...) result", snapshot_for(dumps_document(doc)))
            added = sum(1 for op, _ in ops if op == "add")
            removed = len(ops) - added
            now = int(time.time())
            with self._transaction(write=True) as conn:
                latest = self._current(conn, tenant)
                if latest != current:
                    if expected_version is not None:
                        raise VersionConflict(tenant, expected_version, latest)
                    continue  # another version came in while compiling: patch that one
                version = current + 1
                conn.execute("INSERT INTO versions (tenant, version, kind, document, created_at, comment) "
                             "VALUES (?, ?, 'patch', NULL, ?, ?)",
                             (tenant, version, now, f"{list_name}: +{added} -{removed}"))
                conn.executemany("INSERT INTO list_patches (tenant, version, seq, list_name, op, number) "
                                 "VALUES (?, ?, ?, ?, ?, ?)",
                                 [(tenant, version, seq, list_name, op, number)
                                  for seq, (op, number) in enumerate(ops)])
                self._store_snapshot(conn, tenant, version, blob)
                self._put_in_force(conn, tenant, version)
            return PatchResult(version=version, added=added, removed=removed, size=len(doc.get(list_name, [])))
        raise StoreBusy(f"tenant {tenant!r}: other versions kept arriving while this patch compiled; try again")

    def get_version(self, tenant: str, version: int | None = None) -> VersionRecord:
        _check_tenant(tenant)
        if version is not None:
            _check_int("version", version, minimum=1)
        with self._transaction(write=False) as conn:
            current = self._current(conn, tenant)
            if version is None:
                if current == 0:
                    raise NotFound(f"tenant {tenant!r} has no settings")
                version = current
            row = conn.execute("SELECT kind, created_at, comment, document FROM versions "
                               "WHERE tenant = ? AND version = ?", (tenant, version)).fetchone()
            if row is None:
                raise NotFound(f"tenant {tenant!r} has no version {version}")
            kind, created_at, comment, document = row
            if document is None:
                document = dumps_document(self._effective(conn, tenant, version))
            else:
                document = _unpack(document)
        return VersionRecord(tenant=tenant, version=version, kind=kind, created_at=int(created_at),
                             comment=comment, in_force=version == current, document=bytes(document))

    def list_versions(self, tenant: str, limit: int = 50) -> list[VersionRecord]:
        _check_tenant(tenant)
        _check_int("limit", limit, minimum=1)
        with self._transaction(write=False) as conn:
            current = self._current(conn, tenant)
            rows = conn.execute("SELECT version, kind, created_at, comment FROM versions WHERE tenant = ? "
                                "ORDER BY version DESC LIMIT ?", (tenant, limit)).fetchall()
        if not rows:
            raise NotFound(f"tenant {tenant!r} has no settings")
        return [VersionRecord(tenant=tenant, version=int(v), kind=kind, created_at=int(created_at),
                              comment=comment, in_force=v == current)
                for v, kind, created_at, comment in rows]

    def snapshot(self, tenant: str, version: int) -> bytes | None:
        _check_tenant(tenant)
        _check_int("version", version, minimum=1)
        rows = self._read("SELECT blob, checksum FROM snapshots WHERE tenant = ? AND version = ?", (tenant, version))
        if not rows:
            return None
        blob, expected = bytes(rows[0][0]), rows[0][1]
        if expected != checksum(blob):
            raise SnapshotDamaged(tenant, version, f"checksum {checksum(blob)}, stored {expected or '(none)'}")
        return blob

    def replace_snapshot(self, tenant: str, version: int, blob: bytes) -> bool:
        _check_tenant(tenant)
        _check_int("version", version, minimum=1)
        _check_bytes("blob", blob)
        with self._transaction(write=True) as conn:
            cur = conn.execute("UPDATE snapshots SET blob = ?, checksum = ? WHERE tenant = ? AND version = ?",
                               (blob, checksum(blob), tenant, version))
            return cur.rowcount > 0

    def probe(self) -> None:
        with self._transaction(write=True) as conn:
            conn.execute("INSERT OR REPLACE INTO health_probe (pid, at) VALUES (?, ?)", (os.getpid(), time.time()))

    def quick_check(self, budget_s: float) -> tuple[bool, str]:
        """(finished, what is damaged: '' when nothing) by SQLite's quick check, stopped after budget_s."""
        conn = self._conn()
        deadline = time.monotonic() + budget_s
        conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
        try:
            lines = [str(r[0]) for r in conn.execute("PRAGMA quick_check(20)").fetchall()]
        except sqlite3.OperationalError as exc:
            if "interrupt" in str(exc).lower():
                return False, ""
            raise
        finally:
            conn.set_progress_handler(None, 0)
        return True, describe_check(conn, lines)

    @property
    def identity(self) -> str:
        rows = self._read("SELECT id FROM store_identity LIMIT 1", ())
        return str(rows[0][0]) if rows else ""


def _named(op: str, method: Callable[..., Any]) -> Callable[..., Any]:
    """`method` with every store failure named (server/store_faults.py): StoreUnavailable or StoreDamaged,
    counted under `op`, never a bare sqlite3 error.  A Future's failure is named when it completes."""

    @functools.wraps(method)
    def named(self: SQLiteStore, *args: Any, **kwargs: Any) -> Any:
        try:
            result = method(self, *args, **kwargs)
        except (sqlite3.Error, StoreUnavailable, StoreDamaged) as exc:
            if getattr(exc, "_callgate_reported", False):
                raise                  # an inner store method named it already
            error = self.faults.named(op, exc)
            error._callgate_reported = True  # type: ignore[attr-defined]
            if error is exc:
                raise
            raise error from exc
        if isinstance(result, Future):
            return _named_future(self, op, result)
        return result

    return named


def _named_future(store: SQLiteStore, op: str, inner: Future[T]) -> Future[T]:
    outer: Future[T] = Future()

    def done(f: Future[T]) -> None:
        exc = f.exception()
        if exc is None:
            outer.set_result(f.result())
        elif isinstance(exc, sqlite3.Error | StoreUnavailable | StoreDamaged):
            outer.set_exception(store.faults.named(op, exc))
        else:
            outer.set_exception(exc)

    inner.add_done_callback(done)
    return outer


STORE_METHODS = (*sorted(name for name in vars(Store) if not name.startswith("_") and callable(getattr(Store, name))),
                 "quick_check")
for _op in STORE_METHODS:
    setattr(SQLiteStore, _op, _named(_op, getattr(SQLiteStore, _op)))
del _op
