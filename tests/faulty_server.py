"""`callgate serve` (one worker) whose store fails on demand: tests only (tests/test_store_fault_fuzz.py).

While the file named by $CALLGATE_TEST_FAULTS holds a fault kind, every store
method raises what SQLite raises for it, below the store's own naming of
faults, so that the server's whole path from a failing store to a gRPC status
is exercised:

    full     sqlite3.OperationalError("database or disk is full")
    io       sqlite3.OperationalError("disk I/O error")
    busy     sqlite3.OperationalError("database is locked")
    damaged  sqlite3.DatabaseError("database disk image is malformed")
    bug      RuntimeError("an injected bug")
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from server.cli.main import main
from server.store import sqlite as store
from server.store.faults import name_failures

CONTROL = Path(os.environ["CALLGATE_TEST_FAULTS"])
FAULTS: dict[str, Callable[[], BaseException]] = {
    "full": lambda: sqlite3.OperationalError("database or disk is full"),
    "io": lambda: sqlite3.OperationalError("disk I/O error"),
    "busy": lambda: sqlite3.OperationalError("database is locked"),
    "damaged": lambda: sqlite3.DatabaseError("database disk image is malformed"),
    "bug": lambda: RuntimeError("an injected bug"),
}


def failing(op: str, inner: Callable[..., Any]) -> Callable[..., Any]:
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            kind = CONTROL.read_text().strip()
        except FileNotFoundError:
            kind = ""
        if kind and op != "close":
            raise FAULTS[kind]()
        return inner(self, *args, **kwargs)

    return method


for _op in store.STORE_METHODS:
    _inner = getattr(store.SQLiteStore, _op).__wrapped__
    setattr(store.SQLiteStore, _op, failing(_op, _inner))
name_failures(store.SQLiteStore, store.STORE_METHODS)

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
