"""Which store a server or a tool opens: a PostgreSQL database named by its URL (several hosts share it), or the
embedded SQLite file (one host)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

PG_SCHEMES = ("postgresql://", "postgres://")


def is_postgresql(location: str | Path) -> bool:
    return isinstance(location, str) and location.startswith(PG_SCHEMES)


def open_store(location: str | Path, *, migrate: bool = True) -> Any:
    """The store at `location` (a postgresql:// URL or a SQLite file's path), opened and migrated unless
    `migrate` is False; a `server.store.api.Store` (StoreError when it cannot be opened)."""
    if is_postgresql(location):
        from server.store.postgres import PostgresStore

        return PostgresStore(str(location), migrate=migrate)
    from server.store.sqlite import SQLiteStore

    return SQLiteStore(Path(location), migrate=migrate)
