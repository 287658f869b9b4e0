"""The store's shared bases: `StoreBase`, what the parts use whatever the database, and `SQLiteBase`, one SQLite
file in WAL mode shared by every worker process (spec §5); `server.store.postgres.PostgresBase` is the other.

`server.store.sqlite.SQLiteStore` (this base and one part per concern) implements `server.store.api.Store`;
`server.store.postgres.PostgresStore` is the same parts on PostgreSQL.  The parts' SQL is the subset both
databases speak (`INSERT ... ON CONFLICT`, `RETURNING`, `?` placeholders, `"user"` quoted).  Design notes on
SQLite:

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
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar

from server.store.api import Poll, Store, StoreBusy, StoreDamaged, StoreError, StoreMissing, StoreUnavailable
from server.store.faults import Faults, describe_check, locate_damage
from server.store.group import GroupCommitter

T = TypeVar("T")

BUSY_TIMEOUT_MS = 10_000

# every method of the Store protocol (and the startup check): each leaves its failures named (faults.name_failures)
STORE_METHODS = (*sorted(name for name in vars(Store) if not name.startswith("_") and callable(getattr(Store, name))),
                 "quick_check")


class SchemaTooNew(StoreError):
    """The database was migrated by a newer callgate than this one."""


class SchemaTooOld(StoreError):
    """The database needs a migration that this caller may not run (a tool beside a possibly running server)."""


class Conn(Protocol):
    """A connection as the parts use it: sqlite3's, or `PGConnection` (server/store/postgres.py)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Any: ...

    def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class StoreBase:
    """What the parts (settings, accounts, numbers, security, removal) use, whatever the database: one read
    statement, a transaction (`write`: serialised with every other writer, of every process and host), a write
    queued for the next group commit, and the poll's reading of versions and balances."""

    path: Any
    faults: Faults

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        raise NotImplementedError

    def _transaction(self, write: bool) -> contextlib.AbstractContextManager[Any]:
        raise NotImplementedError

    def _submit(self, fn: Callable[[Any], T], prefetch: Callable[[Any], None] | None = None) -> Future[T]:
        """Queue `fn(conn)` for the next group commit (server/store/group.py); `prefetch(conn)` sends its reads
        ahead, where that saves round trips (PostgreSQL)."""
        raise NotImplementedError

    def _grouped(self, fn: Callable[[Any], T]) -> T:
        return self._submit(fn).result()

    # the change feed as this process last read it: (last seq, versions, balances, documents, reserved)
    _feed: tuple[int, dict[str, int], dict[str, int], dict[str, int], dict[str, int]] | None = None

    def _poll_read(self, conn: Conn) -> Poll:
        """Versions, balances, document counters and holds, brought up to date from the change feed (the
        `changes` rows after the last one read: O(changes)), inside the caller's read transaction."""
        upto = int(conn.execute("SELECT upto FROM changes_pruned").fetchall()[0][0])
        top = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchall()[0][0])
        feed = self._feed
        if feed is None or upto > feed[0]:   # the first read, or rows this process had not read were pruned
            versions = {str(t): int(v) for t, v in conn.execute('SELECT tenant, version FROM "current"').fetchall()}
            balances, documents, reserved = {}, {}, {}
            for t, b, d, r in conn.execute("SELECT tenant, balance_micro, documents, reserved_micro FROM accounts"
                                           ).fetchall():
                balances[t], documents[t], reserved[t] = int(b), int(d), int(r)
            self._feed = (top, versions, balances, documents, reserved)
            return Poll(versions, balances, documents, reserved, changed=None)
        last, versions, balances, documents, reserved = feed
        if top == last:
            return Poll(versions, balances, documents, reserved, changed=frozenset())
        tenants = sorted({str(t) for (t,) in conn.execute("SELECT DISTINCT tenant FROM changes WHERE seq > ?",
                                                          (last,)).fetchall()})
        for i in range(0, len(tenants), 500):
            chunk = tenants[i:i + 500]
            marks = ", ".join("?" * len(chunk))
            found = dict(conn.execute(f'SELECT tenant, version FROM "current" WHERE tenant IN ({marks})',
                                      chunk).fetchall())
            accounts = {t: (b, d, r) for t, b, d, r in conn.execute(
                f"SELECT tenant, balance_micro, documents, reserved_micro FROM accounts WHERE tenant IN ({marks})",
                chunk).fetchall()}
            for tenant in chunk:
                if tenant in found:
                    versions[tenant] = int(found[tenant])
                else:
                    versions.pop(tenant, None)
                if tenant in accounts:
                    b, d, r = accounts[tenant]
                    balances[tenant], documents[tenant], reserved[tenant] = int(b), int(d), int(r)
                else:
                    for held in (balances, documents, reserved):
                        held.pop(tenant, None)
        self._feed = (top, versions, balances, documents, reserved)
        return Poll(versions, balances, documents, reserved, changed=frozenset(tenants))

    def _unchanged(self) -> Poll | None:
        """The feed as last read, nothing changed (None before the first read)."""
        if self._feed is None:
            return None
        _, versions, balances, documents, reserved = self._feed
        return Poll(versions, balances, documents, reserved, changed=frozenset())

    def prune_changes(self, keep: int = 100_000) -> int:
        """Delete the change feed's rows but the newest `keep`; returns how many went."""
        with self._transaction(write=True) as conn:
            top = int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchall()[0][0])
            upto = top - keep
            if upto <= int(conn.execute("SELECT upto FROM changes_pruned").fetchall()[0][0]):
                return 0
            gone = int(conn.execute("DELETE FROM changes WHERE seq <= ?", (upto,)).rowcount)
            conn.execute("UPDATE changes_pruned SET upto = ?", (upto,))
            return gone


@dataclass(eq=False)
class _Conn:
    conn: sqlite3.Connection
    pid: int
    thread: threading.Thread
    generation: int
    closed: bool = field(default=False)


class SQLiteBase(StoreBase):
    """What every part of the SQLite store shares: the file, its connections, its transactions, its migrations,
    the naming of its faults."""

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
        self._poll_seen: int | None = None   # PRAGMA data_version at the last feed read
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

    def __enter__(self) -> SQLiteBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _translate(self, exc: BaseException) -> BaseException:
        return (self._busy(exc) if isinstance(exc, sqlite3.OperationalError) else None) or exc

    def _busy(self, exc: sqlite3.OperationalError) -> StoreBusy | None:
        """StoreBusy for a lock timeout (other OperationalErrors are bugs or I/O errors: let them through)."""
        text = str(exc).lower()
        if "locked" in text or "busy" in text:
            return StoreBusy(f"{self.path} stayed locked for {BUSY_TIMEOUT_MS // 1000} s: {exc}")
        return None

    def _submit(self, fn: Callable[[sqlite3.Connection], T],
                prefetch: Callable[[Any], None] | None = None) -> Future[T]:
        """Queue a small write for this process's next group commit (server/store/group.py); SQLite's reads
        are local, `prefetch` is never called."""
        pid = os.getpid()
        with self._lock:
            if self._committer is None or self._committer_pid != pid:  # first use, or a forked child
                self._committer = GroupCommitter(self._connect, self._translate)
                self._committer_pid = pid
            committer = self._committer
        return committer.submit(fn, prefetch)

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
            if self._poll_seen == seen:
                return self._unchanged()
            conn.execute("BEGIN")
            try:
                result = self._poll_read(conn)
            finally:
                conn.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._busy(exc) is not None:
                return None
            raise
        self._poll_seen = seen
        return result

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
        from server.store.migrations import SCHEMA_VERSION

        if found > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"{self.path} has schema version {found}, newer than this callgate knows "
                f"({SCHEMA_VERSION}): run the callgate release that migrated it (or a newer one)")

    def _migrate(self, conn: sqlite3.Connection, allowed: bool = True) -> None:
        # (here, not at the top: the migrations' backfills read through the parts built on this base)
        from server.store.migrations import BACKFILLS, MIGRATIONS, SCHEMA_VERSION, split_sql

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
                for statement in split_sql(script):
                    conn.execute(statement)
                if version in BACKFILLS:
                    BACKFILLS[version](conn)
                conn.execute("INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                             (version, description, int(time.time())))

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
