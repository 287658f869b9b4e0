"""The PostgreSQL store: the parts of the SQLite store (settings, accounts, numbers, security, removal, replicas) on
a base of PostgreSQL connections, for several hosts sharing one database (`callgate serve --store postgresql://...`).

Driver: psycopg 3.  The store's callers are threads (the service calls it
through `asyncio.to_thread`, the group commit has a thread of its own), so a
synchronous driver with a thread-safe pool fits the store as it is, and keeps
one code path for both backends; asyncpg would need every store call turned
into a coroutine.  psycopg also gives COPY (big blacklists) and LISTEN/NOTIFY
on the same connections.  The pool is a small one of our own (`Connections`):
psycopg_pool's reconnection backs off (1, 2, 4, ... s), so a database back
after a restart was used seconds later, and after a long outage minutes later;
here the next call after the database returns connects at once.

How the SQLite semantics carry over:

* Every write transaction starts with `pg_advisory_xact_lock(WRITE_LOCK)`:
  writers are serialised as SQLite's `BEGIN IMMEDIATE` serialises them, so a
  read-then-write (the version check of a push, a top-up claim, a number's
  owner) cannot be overtaken by another host's, and every invariant the SQLite
  store keeps by that lock holds across hosts.  Throughput comes from the group
  commit (many call events per transaction), as on SQLite.
* A multi-statement read is one REPEATABLE READ transaction: one snapshot.
* The statements are the SQLite store's own, in the subset both speak
  (`ON CONFLICT ... DO`, `RETURNING`); `?` placeholders are rewritten to
  psycopg's `%s` once per statement text (`PGConnection`).
* The schema is `server/store/migrations/postgresql/`, numbered like the
  SQLite files so that a schema version means the same on both.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
from psycopg import pq

from server.store.accounts import AccountsPart
from server.store.api import Poll, StoreBusy, StoreDamaged, StoreUnavailable
from server.store.base import BUSY_TIMEOUT_MS, STORE_METHODS, SchemaTooNew, SchemaTooOld, StoreBase
from server.store.faults import Faults, name_failures
from server.store.group import GroupCommitter
from server.store.numbers import NumbersPart
from server.store.removal import RemovalPart
from server.store.replicas import ReplicasPart
from server.store.security import SecurityPart

T = TypeVar("T")

WRITE_LOCK = 0x63616C6C  # "call": the advisory lock every write transaction takes first
NOTIFY_SQL = "SELECT pg_notify('callgate_changes', (SELECT COALESCE(max(seq), 0)::text FROM changes))"
CONNECT_TIMEOUT_S = 3   # libpq's least is 2
NETWORK_TIMEOUT_S = 3   # data sent and not acknowledged this long: the connection is lost (tcp_user_timeout)
FEED_CHECK_S = 2.0   # the feed is read this often even without a NOTIFY (belt and braces: none is expected lost)


@functools.lru_cache(maxsize=4096)
def pg_sql(sql: str) -> str:
    """The store's SQL (sqlite3's `?` placeholders) as psycopg takes it (`%s`; a literal % doubled)."""
    return sql.replace("%", "%%").replace("?", "%s")


def redacted(dsn: str) -> str:
    """The DSN without its password, for messages and logs."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", dsn)


class PGConnection:
    """A psycopg connection in autocommit mode that reads the store's SQL and answers like sqlite3's: `execute`
    returns a cursor (fetchone, fetchall, rowcount), `in_transaction`, and `BEGIN IMMEDIATE` / `BEGIN` as the
    SQLite store means them (the write lock; one snapshot)."""

    def __init__(self, raw: psycopg.Connection[Any], pipelined: bool = False) -> None:
        self.raw = raw
        self._writing = False   # inside a BEGIN IMMEDIATE transaction
        self._began = False     # inside a transaction begun here
        # Pipeline mode (the group commit's connection): a statement whose result nobody reads yet is sent
        # without waiting for the one before, so a call event costs a round trip per read it needs, not one per
        # statement; COMMIT waits for them all (`sync`) and raises what failed (server/store/group.py).
        self._pipeline: Any = None
        # What the writes of the group transaction under way have made of the rows they share (rows read ahead
        # are as they were before the transaction; server/store/accounts.py); None: not a group connection
        self.batch: dict[Any, Any] | None = None
        if pipelined and psycopg.Pipeline.is_supported():
            self._pipeline_cm = raw.pipeline()
            self._pipeline = self._pipeline_cm.__enter__()

    def execute(self, sql: str, args: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        if sql == "BEGIN IMMEDIATE":
            self._writing = self._began = True
            if self._pipeline is not None:
                self.batch = {}
            self.raw.execute("BEGIN")
            return self.raw.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK,))
        if sql == "BEGIN":
            self._began = True
            return self.raw.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        if sql == "COMMIT" and self._writing:
            # the feed's listeners hear of it once per write transaction (NOTIFY is delivered at commit)
            self.raw.execute(NOTIFY_SQL)
        ends = sql in ("COMMIT", "ROLLBACK")
        if sql == "ROLLBACK" and self._pipeline is not None:
            # an error of a statement sent earlier surfaces at the next sync: it is what is being rolled back,
            # not the rollback's (a lost connection still fails the ROLLBACK itself, below)
            with contextlib.suppress(psycopg.Error):
                self._pipeline.sync()
        cursor = self.raw.execute(pg_sql(sql), tuple(args) if args else None)
        if ends:
            if self._pipeline is not None:
                # acknowledged means committed: never answer before the server said so.  A COMMIT that fails
                # here (an earlier statement's error) left the transaction open: still in one, to be rolled back
                self.sync()
            self._writing = self._began = False
        return cursor

    def broken(self) -> bool:
        """The connection is lost (the server restarted, the network cut): it must be opened again."""
        return bool(self.raw.closed) or self.raw.info.status == pq.ConnStatus.BAD

    @staticmethod
    def db_error(exc: BaseException) -> bool:
        """Is `exc` the database's (whose, in pipeline mode, may be an earlier statement's)?"""
        return isinstance(exc, psycopg.Error)

    def sync(self) -> None:
        """Wait for every statement sent; raise the first that failed (pipeline mode; else nothing to do)."""
        if self._pipeline is not None:
            self._pipeline.sync()

    def executemany(self, sql: str, rows: Any) -> psycopg.Cursor[Any]:
        cursor = self.raw.cursor()
        cursor.executemany(pg_sql(sql), list(rows))
        return cursor

    def script(self, sql: str) -> None:
        """A migration file, as it is (PostgreSQL's own syntax, several statements)."""
        self.raw.execute(sql.encode())

    @property
    def in_transaction(self) -> bool:
        if self._pipeline is not None:  # libpq's status lags the statements sent and not yet synced
            return self._began and not self.raw.closed
        return self.raw.info.transaction_status != pq.TransactionStatus.IDLE

    def close(self) -> None:
        if self._pipeline is not None:
            self._pipeline = None
            with contextlib.suppress(Exception):  # a connection already lost has nothing left to send
                self._pipeline_cm.__exit__(None, None, None)
        self.raw.close()


class PoolTimeout(Exception):
    """Every connection of the pool stayed in use for the whole wait."""


class Connections:
    """Connections kept for reuse, at most `size` open: a call takes one and gives it back unless it was lost.
    Nothing reconnects on a schedule: a call that finds no idle connection opens one, so the first call after the
    database is back gets through; after a lost connection the idle ones are dropped (they are most likely lost
    too) instead of each caller drawing a dead one in turn."""

    def __init__(self, connect: Callable[[], psycopg.Connection[Any]], size: int, wait_s: float) -> None:
        self._connect, self.size, self.wait_s = connect, size, wait_s
        self._idle: list[psycopg.Connection[Any]] = []
        self._open = 0
        self._ready = threading.Condition()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        raw = self._take()
        try:
            yield raw
        except psycopg.OperationalError:
            self._give_back(raw)
            self.drop_idle()
            raise
        except BaseException:
            self._give_back(raw)
            raise
        self._give_back(raw)

    def _take(self) -> psycopg.Connection[Any]:
        deadline = time.monotonic() + self.wait_s
        with self._ready:
            while not self._idle and self._open >= self.size:
                left = deadline - time.monotonic()
                if left <= 0 or not self._ready.wait(left):
                    raise PoolTimeout(f"all {self.size} store connections stayed busy for {self.wait_s:g} s")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return self._connect()
        except BaseException:
            with self._ready:
                self._open -= 1
                self._ready.notify()
            raise

    def _give_back(self, raw: psycopg.Connection[Any]) -> None:
        keep = not raw.closed and raw.info.status == pq.ConnStatus.OK
        if keep and raw.info.transaction_status != pq.TransactionStatus.IDLE:
            try:  # a transaction its user left open (an error mid-way): never lent out like that
                raw.execute("ROLLBACK")
            except psycopg.Error:
                keep = False
        if not keep:
            with contextlib.suppress(Exception):
                raw.close()
        with self._ready:
            if keep:
                self._idle.append(raw)
            else:
                self._open -= 1
            self._ready.notify()

    def drop_idle(self) -> None:
        with self._ready:
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._ready.notify_all()
        for raw in idle:
            with contextlib.suppress(Exception):
                raw.close()

    def close(self) -> None:
        self.drop_idle()


class PostgresBase(StoreBase):
    """Connections, transactions, migrations and the poll of the PostgreSQL store."""

    def __init__(self, dsn: str, *, migrate: bool = True, pool_size: int = 8) -> None:
        if not isinstance(dsn, str) or not dsn.startswith(("postgresql://", "postgres://")):
            raise ValueError("the store must be a postgresql://USER@HOST:PORT/DATABASE address")
        self.dsn = dsn
        self.path = redacted(dsn)  # what messages and logs name
        self.faults = Faults(self.path)
        self._lock = threading.Lock()
        self._committer: GroupCommitter | None = None
        self._committer_pid = 0
        self._pool_pid = os.getpid()
        self._listener: psycopg.Connection[Any] | None = None
        self._listener_pid = 0
        self._feed_at = 0.0
        self._pool = self._open_pool(pool_size)
        try:
            with self._pool.connection() as raw:
                self._migrate(PGConnection(raw), migrate)
            if not self.identity:
                raise StoreDamaged("schema", f"{self.path} has no store identity (table store_identity is empty): "
                                             "restore the database from a backup")
        except BaseException as exc:
            self.close()
            if isinstance(exc, psycopg.Error | PoolTimeout | StoreUnavailable | StoreDamaged):
                raise self.faults.named("open", exc) from None
            raise

    def _options(self) -> dict[str, Any]:
        # lock_timeout: a writer waits for the write lock as long as SQLite's busy timeout, then StoreBusy.
        # The TCP settings bound what a cut network costs, on both ends of each connection:
        #   - here (libpq): without them a statement sent into a link that drops everything waits for the kernel's
        #     retransmissions (a quarter of an hour), and the worker hears nothing;
        #   - in the server's backend (the `-c tcp_*` settings, this session's own): a host cut off in the middle
        #     of a write transaction leaves its backend waiting for the rest of it, holding the write lock every
        #     host needs, until the kernel gives up on a dead peer (two hours by default).  Measured: every host's
        #     events UNAVAILABLE for the whole cut and after it.  Now the backend hears of it within seconds.
        #     (idle_in_transaction_session_timeout does not cover it: a pipelined transaction waiting for its
        #     next statement is "active".)
        tcp = NETWORK_TIMEOUT_S
        return {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S,
                "keepalives": 1, "keepalives_idle": tcp, "keepalives_interval": 1, "keepalives_count": 2,
                "tcp_user_timeout": tcp * 1000,
                "options": f"-c lock_timeout={BUSY_TIMEOUT_MS} -c idle_in_transaction_session_timeout=60000 "
                           f"-c tcp_keepalives_idle={tcp} -c tcp_keepalives_interval=1 -c tcp_keepalives_count=2 "
                           f"-c tcp_user_timeout={tcp * 1000}"}

    def _open_pool(self, size: int) -> Connections:
        return Connections(lambda: psycopg.connect(self.dsn, **self._options()), size, BUSY_TIMEOUT_MS / 1000)

    def _connect(self) -> PGConnection:
        """The group commit's connection, in pipeline mode."""
        return PGConnection(psycopg.connect(self.dsn, **self._options()), pipelined=True)

    @contextmanager
    def _connection(self) -> Iterator[PGConnection]:
        if os.getpid() != self._pool_pid:  # a forked child opens its own pool, never the parent's sockets
            with self._lock:
                if os.getpid() != self._pool_pid:
                    self._pool, self._pool_pid = self._open_pool(self._pool.size), os.getpid()
        with self._pool.connection() as raw:
            yield PGConnection(raw)

    # -- what the parts use ------------------------------------------------------------------------------------
    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._connection() as conn:
            return conn.execute(sql, args).fetchall()

    @contextmanager
    def _transaction(self, write: bool) -> Iterator[PGConnection]:
        with self._connection() as conn:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def _submit(self, fn: Callable[[Any], T], prefetch: Callable[[Any], None] | None = None) -> Future[T]:
        pid = os.getpid()
        with self._lock:
            if self._committer is None or self._committer_pid != pid:
                self._committer = GroupCommitter(self._connect, lambda exc: self._busy(exc) or exc)
                self._committer_pid = pid
            committer = self._committer
        return committer.submit(fn, prefetch)

    def _grouped(self, fn: Callable[[Any], T]) -> T:
        return self._submit(fn).result()

    def _busy(self, exc: BaseException) -> StoreBusy | None:
        if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.SerializationFailure |
                      psycopg.errors.DeadlockDetected | PoolTimeout):
            return StoreBusy(f"{self.path}: other writers held the store's lock for {BUSY_TIMEOUT_MS // 1000} s "
                             f"({exc}); try again")
        return None

    # a worker's poll blocks on the network when the feed has news: it is run in a thread (worker.state)
    poll_blocks = True

    def poll(self) -> Poll | None:
        """The change feed, read when a NOTIFY said it moved (or the listening connection was opened again:
        whatever was committed meanwhile is in the feed), and at least every FEED_CHECK_S in any case."""
        news = self._listen()
        if not news and self._feed is not None and time.monotonic() - self._feed_at < FEED_CHECK_S:
            return self._unchanged()
        if not news:
            self._ping_listener()  # a listener cut without a word hears nothing: found here, opened again
        try:
            with self._transaction(write=False) as conn:
                result = self._poll_read(conn)
        except (psycopg.errors.LockNotAvailable, PoolTimeout):
            return None
        self._feed_at = time.monotonic()
        return result

    def _ping_listener(self) -> None:
        listener = self._listener
        if listener is None:
            return
        start = time.monotonic()
        try:
            listener.execute("SELECT 1")
        except psycopg.Error:
            listener.close()
            if time.monotonic() - start >= NETWORK_TIMEOUT_S - 0.5:
                # the network went silent (the ping waited out its timeout): a new connection would only wait
                # out its own; the poll fails now, the store's health says so, and the next poll opens one
                raise
            self._listen()   # the connection alone was lost (a restart, an administrator's kill): open another

    def _listen(self) -> bool:
        """Drain the notifications of the feed's listening connection; True when there were some, or when the
        connection was (re)opened (then notifications may have been missed: the feed must be read)."""
        listener = self._listener
        if listener is not None and self._listener_pid == os.getpid() and not listener.closed:
            try:
                return any(True for _ in listener.notifies(timeout=0))
            except psycopg.Error:
                listener.close()
        self._listener = None
        listener = psycopg.connect(self.dsn, **self._options())
        listener.execute("LISTEN callgate_changes")
        self._listener, self._listener_pid = listener, os.getpid()
        return True

    def close(self) -> None:
        with self._lock:
            committer, self._committer = self._committer, None
        if committer is not None and self._committer_pid == os.getpid():
            committer.close()
        listener, self._listener = getattr(self, "_listener", None), None
        if listener is not None and self._listener_pid == os.getpid():
            listener.close()
        pool = getattr(self, "_pool", None)
        if pool is not None and self._pool_pid == os.getpid():
            pool.close()

    def __enter__(self) -> PostgresBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- migrations ----------------------------------------------------------------------------------------------
    @staticmethod
    def _schema_version(conn: PGConnection) -> int:
        if conn.execute("SELECT to_regclass('schema_migrations')").fetchall()[0][0] is None:
            return 0
        return int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations").fetchall()[0][0])

    def _migrate(self, conn: PGConnection, allowed: bool = True) -> None:
        from server.store.migrations import BACKFILLS, PG_MIGRATIONS, SCHEMA_VERSION

        found = self._schema_version(conn)
        self._refuse_newer(found)
        if found == SCHEMA_VERSION:
            return
        if found and not allowed:
            raise SchemaTooOld(f"{self.path} has schema version {found}, older than this callgate's "
                               f"{SCHEMA_VERSION}: start this release's `callgate serve` once (it migrates the "
                               "database), then run this command again")
        conn.execute("BEGIN IMMEDIATE")  # another host's server may be migrating this very moment
        try:
            conn.raw.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, "
                             "description TEXT NOT NULL, applied_at BIGINT NOT NULL)")
            found = self._schema_version(conn)
            self._refuse_newer(found)
            for version, description, script in PG_MIGRATIONS:
                if version <= found:
                    continue
                conn.script(script)
                if version in BACKFILLS:
                    BACKFILLS[version](conn)
                conn.execute("INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?)",
                             (version, description, int(time.time())))
        except BaseException:
            conn.raw.execute("ROLLBACK")
            raise
        conn.raw.execute("COMMIT")

    def _refuse_newer(self, found: int) -> None:
        from server.store.migrations import SCHEMA_VERSION

        if found > SCHEMA_VERSION:
            raise SchemaTooNew(f"{self.path} has schema version {found}, newer than this callgate knows "
                               f"({SCHEMA_VERSION}): run the callgate release that migrated it (or a newer one)")

    def quick_check(self, budget_s: float) -> tuple[bool, str]:
        """PostgreSQL checks its own pages (checksums, WAL); this only proves the schema answers."""
        self._read("SELECT count(*) FROM schema_migrations", ())
        return True, ""

    @property
    def identity(self) -> str:
        rows = self._read("SELECT id FROM store_identity LIMIT 1", ())
        return str(rows[0][0]) if rows else ""


class PostgresStore(NumbersPart, AccountsPart, SecurityPart, RemovalPart, ReplicasPart, PostgresBase):
    """`Store` on one PostgreSQL database, shared by the workers of every host."""


name_failures(PostgresStore, STORE_METHODS)
