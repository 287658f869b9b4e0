"""The embedded store: one SQLite file in WAL mode, shared by every worker process (spec §5), made of its parts on
one base (server/store/base.py): settings (settings.py), calls and money (accounts.py), numbers (numbers.py),
tokens and audit (security.py), the removal of a tenant (removal.py).  Every method of the `Store` protocol is
wrapped here so that a failure leaves it named (server/store/faults.py), never as a bare sqlite3 error.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from server.store.accounts import AccountsPart
from server.store.api import Store, StoreBusy, StoreDamaged, StoreUnavailable
from server.store.base import BUSY_TIMEOUT_MS, SchemaTooNew, SchemaTooOld
from server.store.migrations import MIGRATIONS, SCHEMA_VERSION, split_sql
from server.store.numbers import NumbersPart
from server.store.removal import RemovalPart
from server.store.security import SecurityPart
from server.store.versions import KEEP_SNAPSHOTS, LIST_NAMES, checksum

T = TypeVar("T")

__all__ = [
    "BUSY_TIMEOUT_MS",
    "KEEP_SNAPSHOTS",
    "LIST_NAMES",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "SQLiteStore",
    "SchemaTooNew",
    "SchemaTooOld",
    "StoreBusy",
    "checksum",
    "split_sql",
]


class SQLiteStore(NumbersPart, AccountsPart, SecurityPart, RemovalPart):
    """`Store` on one SQLite file (WAL, synchronous=FULL), safe across threads and processes."""


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
