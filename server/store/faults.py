"""What a failure of the store means to its caller: try again, or never (spec §7, "faults are loud").

Every `sqlite3.Error` or `psycopg.Error` that leaves a store method is turned here into one of
two named errors (server.store_api):

* `StoreUnavailable` (gRPC UNAVAILABLE): the store cannot do it *now* and
  nothing was written: locked by other writers, disk full, an I/O error,
  read-only or unopenable file, out of memory.  The message says what the
  operator can do; the same request may succeed later.
* `StoreDamaged` (gRPC INTERNAL): the file is damaged (SQLITE_CORRUPT,
  SQLITE_NOTADB) or does not hold what this code expects (a table missing):
  retrying will never help.  The message names the damaged table or index
  when SQLite's quick check can find it.

So a client tells "try again" from "this will never work" by the status
alone: the Kamailio script spools an event on UNAVAILABLE and gives up on
INTERNAL.  Each fault is counted (`Faults.listeners`: the server's metrics
and health) and logged, one line per kind per interval, so that a disk that
fills under load writes a line every ten seconds, not one per call.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any, TypeVar

from server.store.api import StoreBusy, StoreDamaged, StoreError, StoreUnavailable

log = logging.getLogger("callgate.store")
T = TypeVar("T")

# SQLite's primary result codes (the part of an extended name before the second '_') -> our kind.
_TRANSIENT = {
    "SQLITE_BUSY": "busy",
    "SQLITE_LOCKED": "busy",
    "SQLITE_PROTOCOL": "busy",        # a WAL lock race that outlived its retries
    "SQLITE_FULL": "full",
    "SQLITE_IOERR": "io",
    "SQLITE_READONLY": "readonly",
    "SQLITE_CANTOPEN": "cantopen",
    "SQLITE_NOMEM": "memory",
    "SQLITE_INTERRUPT": "interrupted",
    "SQLITE_NOLFS": "io",
}
_DAMAGE = {"SQLITE_CORRUPT": "damaged", "SQLITE_NOTADB": "damaged", "SQLITE_FORMAT": "damaged"}

KINDS = ("busy", "full", "io", "readonly", "cantopen", "memory", "interrupted", "unreachable", "damaged", "schema",
         "error")
DAMAGE = frozenset({"damaged", "schema", "missing", "identity"})   # retrying never helps: until fixed by hand

_ADVICE = {
    "busy": "other writers held the store's lock too long; try again",
    "full": "the disk holding the store is full, nothing was written: free space there, then try again "
            "(decisions go on from memory)",
    "io": "the disk holding the store reported an I/O error, nothing was written: check the disk "
          "(kernel log), then try again",
    "readonly": "the store's file or its directory is read-only: check permissions and the mount, then try again",
    "cantopen": "the store's file cannot be opened (missing directory, permissions or too many open files): "
                "check the data directory, then try again",
    "memory": "the server ran out of memory: try again",
    "interrupted": "the store operation was interrupted: try again",
    "unreachable": "the PostgreSQL server cannot be reached (down, restarting, or the network to it): nothing "
                   "was written; decisions go on from memory; try again once it answers",
}

_DAMAGE_ADVICE = ("this will not work by retrying: stop callgate, run `callgate store check --data-dir DIR` "
                  "and restore the store from a backup")


def asyncio_running() -> bool:
    """Is this thread running an event loop (where nothing may block)?"""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _primary(name: str) -> str:
    parts = name.split("_")
    return "_".join(parts[:2]) if len(parts) >= 2 else name


@functools.cache
def nameable() -> tuple[type[BaseException], ...]:
    """What a store method may let out and `name_failures` names: both drivers' errors and the named ones."""
    import psycopg

    from server.store.postgres import PoolTimeout

    return sqlite3.Error, psycopg.Error, PoolTimeout, StoreUnavailable, StoreDamaged


def kind_of(exc: BaseException) -> str | None:
    """The fault kind of a sqlite3 or PostgreSQL error (None: neither)."""
    if not isinstance(exc, sqlite3.Error):
        return pg_kind(exc) if type(exc).__module__.startswith(("psycopg", "server.store.postgres")) else None
    name = getattr(exc, "sqlite_errorname", None) or ""
    primary = _primary(name)
    if primary in _TRANSIENT:
        return _TRANSIENT[primary]
    if primary in _DAMAGE:
        return _DAMAGE[primary]
    text = str(exc).lower()
    if "malformed" in text or "not a database" in text:
        return "damaged"
    if "locked" in text or "busy" in text:
        return "busy"
    if "disk is full" in text or "database or disk is full" in text:
        return "full"
    if "disk i/o error" in text:
        return "io"
    if "closed database" in text or "closed cursor" in text:
        return "interrupted"  # a connection closed under a call (the server stopping): try again
    if "no such table" in text or "no such column" in text:
        return "schema"       # the file is not what this code expects: retrying will not help
    return "error"            # a constraint, a misuse: a bug of callgate's own, not damage


def pg_kind(exc: BaseException) -> str | None:
    """The fault kind of a PostgreSQL error (None: not one)."""
    import psycopg

    from server.store.postgres import PoolTimeout

    if isinstance(exc, PoolTimeout):
        return "busy"
    if not isinstance(exc, psycopg.Error):
        return None
    state = getattr(exc, "sqlstate", None) or ""
    if isinstance(exc, psycopg.OperationalError) and not state:
        return "unreachable"  # the connection: refused, reset, timed out
    if state in ("55P03", "40001", "40P01", "53300"):
        return "busy"
    if state == "53100":
        return "full"
    if state == "53200":
        return "memory"
    if state == "58030":
        return "io"
    if state == "25006":
        return "readonly"     # a standby, or default_transaction_read_only
    if state.startswith(("08", "57P")):
        return "unreachable"  # connection failure, server shutting down or starting
    if state in ("XX001", "XX002"):
        return "damaged"
    if state in ("42P01", "42703"):
        return "schema"
    return "error"


def locate_damage(conn: sqlite3.Connection, budget_s: float = 2.0) -> str:
    """The tables and indexes SQLite's quick check finds damaged, as text ('' if it finds nothing or runs out).

    Bounded: a progress handler stops the check after `budget_s`, so a large
    store costs the caller at most that long (damage is rare; callers cache).
    """
    deadline = time.monotonic() + budget_s
    conn.set_progress_handler(lambda: 1 if time.monotonic() > deadline else 0, 10_000)
    try:
        rows = conn.execute("PRAGMA quick_check(20)").fetchall()
    except sqlite3.Error:
        return ""
    finally:
        conn.set_progress_handler(None, 0)
    return describe_check(conn, [str(r[0]) for r in rows])


def describe_check(conn: sqlite3.Connection, lines: list[str]) -> str:
    """quick_check/integrity_check output as the objects it names ('' when it says ok)."""
    text = "\n".join(lines)
    if not text or text.strip() == "ok":
        return ""
    names: list[str] = []
    for index in re.findall(r"\bindex (\w+)", text):
        row = _safe(conn, "SELECT tbl_name FROM sqlite_master WHERE name = ?", (index,))
        names.append(f"index {index}" + (f" of table {row[0]}" if row else ""))
    for page in sorted({int(p) for p in re.findall(r"\bpage (\d+)", text)})[:20]:
        row = _safe(conn, "SELECT name FROM dbstat WHERE pageno = ?", (page,))
        if row is None:
            row = _safe(conn, "SELECT name FROM sqlite_master WHERE rootpage = ?", (page,))
        names.append(f"{_object(conn, row[0]) if row else 'an unknown object'} (page {page})")
    seen: list[str] = []
    for name in names:
        if name not in seen:
            seen.append(name)
    return ", ".join(seen) if seen else text.splitlines()[-1][:200]


def _object(conn: sqlite3.Connection, name: str) -> str:
    row = _safe(conn, "SELECT type, tbl_name FROM sqlite_master WHERE name = ?", (name,))
    if row is None:
        return f"table {name}" if name.startswith("sqlite_") else name
    kind, table = row
    return f"table {name}" if kind == "table" else f"{kind} {name} of table {table}"


def _safe(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> tuple[str, ...] | None:
    try:
        row = conn.execute(sql, args).fetchone()
    except sqlite3.Error:
        return None
    return tuple(str(x) for x in row) if row else None


class Faults:
    """Turns sqlite3 errors into named store errors; counts them, tells listeners, logs them sparingly."""

    LOG_INTERVAL_S = 10.0

    def __init__(self, path: Path | str, locate: Callable[[], str] | None = None) -> None:
        self.path = path
        self.listeners: list[Callable[[str, str], None]] = []   # (op, kind), from any thread
        self._locate = locate
        self._lock = threading.Lock()
        self._logged: dict[str, tuple[float, int]] = {}         # kind -> (last logged at, faults since)
        self._where: tuple[float, str] | None = None             # cached locate_damage result
        self._locating = False

    def named(self, op: str, exc: BaseException) -> StoreError:
        """The named error for `exc` raised in store method `op`; counted and logged once per interval."""
        if isinstance(exc, StoreUnavailable | StoreDamaged):
            error: StoreError = exc
            kind = exc.kind
        else:
            kind = kind_of(exc) or "schema"
            error = self._error(op, kind, exc)
        self.report(op, kind, error)
        return error

    def _error(self, op: str, kind: str, exc: BaseException) -> StoreError:
        if kind == "busy":
            return StoreBusy(f"the store stayed locked by other writers: {exc}; try again")
        if kind in _ADVICE:
            return StoreUnavailable(kind, f"store {kind} error in {op} ({exc}): {_ADVICE[kind]}")
        where = self._where_damaged() if kind == "damaged" else ""
        what = f"in {where}" if where else f"during {op}"
        if kind == "schema":
            return StoreDamaged(kind, f"the store does not hold what this callgate expects ({exc}) during {op}: "
                                      f"{_DAMAGE_ADVICE}", where)
        if kind == "error":
            return StoreDamaged(kind, f"the store refused {op} ({exc}): a bug of callgate's; this request will fail "
                                      "the same way, other requests are not affected")
        return StoreDamaged(kind, f"the store is damaged ({exc}) {what}: {_DAMAGE_ADVICE}", where)

    def _where_damaged(self) -> str:
        """What the quick check names as damaged (cached a minute).  Never on an event loop's thread (the
        check may take its whole budget): there it starts in a thread of its own and a later error names it."""
        now = time.monotonic()
        with self._lock:
            if self._where is not None and now - self._where[0] < 60:
                return self._where[1]
            if self._locating:
                return ""
            self._locating = True
        if asyncio_running():
            threading.Thread(target=self._locate_now, name="store-locate-damage", daemon=True).start()
            return ""
        return self._locate_now()

    def _locate_now(self) -> str:
        where = ""
        try:
            if self._locate is not None:
                where = self._locate()
        except Exception:  # locating is a courtesy: the error is reported either way
            where = ""
        with self._lock:
            self._where, self._locating = (time.monotonic(), where), False
        return where

    def report(self, op: str, kind: str, error: BaseException) -> None:
        for listener in list(self.listeners):
            try:
                listener(op, kind)
            except Exception:  # a listener's bug must not hide the store's error
                log.exception("store fault listener failed")
        now = time.monotonic()
        with self._lock:
            last, since = self._logged.get(kind, (0.0, 0))
            if last and now - last < self.LOG_INTERVAL_S:
                self._logged[kind] = (last, since + 1)
                return
            self._logged[kind] = (now, 0)
        log.error("store %s fault: %s", kind, error,
                  extra={"event": "store_fault", "kind": kind, "op": op, "store": str(self.path),
                         "more_since_last_line": since})


def name_failures(cls: type, methods: Sequence[str]) -> None:
    """Wrap each of `methods` of a store class so that every database failure leaves it named (StoreUnavailable
    or StoreDamaged, counted under the method's name), never as a bare driver error; a Future's failure is named
    when it completes."""
    for op in methods:
        setattr(cls, op, _named(op, getattr(cls, op)))


def _named(op: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def named(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            result = method(self, *args, **kwargs)
        except Exception as exc:
            if not isinstance(exc, nameable()) or getattr(exc, "_callgate_reported", False):
                raise                  # not the database's, or an inner store method named it already
            error = self.faults.named(op, exc)
            error._callgate_reported = True
            if error is exc:
                raise
            raise error from exc
        if isinstance(result, Future):
            return _named_future(self, op, result)
        return result

    return named


def _named_future(store: Any, op: str, inner: Future[T]) -> Future[T]:
    outer: Future[T] = Future()

    def done(f: Future[T]) -> None:
        exc = f.exception()
        error = store.faults.named(op, exc) if exc is not None and isinstance(exc, nameable()) else exc
        # the caller may have given up meanwhile (its deadline cancels the future it awaits): the write stands,
        # nobody is left to tell
        with contextlib.suppress(InvalidStateError):
            if error is None:
                outer.set_result(f.result())
            else:
                outer.set_exception(error)

    inner.add_done_callback(done)
    return outer
