"""The store's schema, as numbered SQL files in server/store/migrations (NNNN_what.sql, the first line a
comment saying what it does; PostgreSQL's twin of each, same number and first line, in migrations/postgresql),
applied in order when a store opens; append only: never edit a released file,
add the next one.  A migration that needs more than SQL (reading stored documents) has a backfill here, run
right after its statements in the same transaction.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable
from importlib import resources

from server.store import numbers as store_numbers
from server.store.base import Conn
from server.store.versions import checksum, documents_in_force


def _load(folder: str) -> list[tuple[int, str, str]]:
    found = []
    where = resources.files("server.store").joinpath(folder)
    for entry in sorted(where.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".sql"):
            continue
        head, _, script = entry.read_text(encoding="utf-8").partition("\n")
        found.append((int(entry.name.partition("_")[0]), head.removeprefix("--").strip(), script))
    numbers = [m[0] for m in found]
    if numbers != list(range(1, len(found) + 1)):  # pragma: no cover - guards future edits
        raise RuntimeError(f"migrations must be numbered 1, 2, 3, ... in order, got {numbers}")
    return found


# (version, description, SQL): SQLite's, and PostgreSQL's (the same steps in its dialect, the same numbers)
MIGRATIONS: list[tuple[int, str, str]] = _load("migrations")
PG_MIGRATIONS: list[tuple[int, str, str]] = _load("migrations/postgresql")
SCHEMA_VERSION: int = MIGRATIONS[-1][0]
if [m[:2] for m in PG_MIGRATIONS] != [m[:2] for m in MIGRATIONS]:  # pragma: no cover - guards future edits
    raise RuntimeError("every migration needs its PostgreSQL twin, with the same number and description")


def _backfill_6(conn: Conn) -> None:
    """Checksums of the blobs already stored (from here on a changed byte is caught), and the identity."""
    rows = conn.execute("SELECT tenant, version, blob FROM snapshots").fetchall()
    conn.executemany("UPDATE snapshots SET checksum = ? WHERE tenant = ? AND version = ?",
                     [(checksum(bytes(blob)), tenant, version) for tenant, version, blob in rows])
    conn.execute("INSERT INTO store_identity (id, created_at) VALUES (?, ?)",
                 (secrets.token_hex(16), int(time.time())))


BACKFILLS: dict[int, Callable[[Conn], None]] = {
    4: lambda conn: store_numbers.backfill(conn, documents_in_force),
    6: _backfill_6,
}


def split_sql(script: str) -> list[str]:
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
