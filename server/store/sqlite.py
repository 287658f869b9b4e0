"""The embedded store: one SQLite file in WAL mode, shared by every worker process (spec §5), made of its parts on
one base (server/store/base.py): settings (settings.py), calls and money (accounts.py), numbers (numbers.py),
tokens and audit (security.py), the removal of a tenant (removal.py), the replicas' reports (replicas.py).  Every
method of the `Store` protocol is wrapped here so that a failure leaves it named (server/store/faults.py), never as
a bare sqlite3 error.
"""

from __future__ import annotations

from server.store.accounts import AccountsPart
from server.store.api import StoreBusy
from server.store.base import BUSY_TIMEOUT_MS, STORE_METHODS, SchemaTooNew, SchemaTooOld, SQLiteBase
from server.store.faults import name_failures
from server.store.migrations import MIGRATIONS, SCHEMA_VERSION, split_sql
from server.store.numbers import NumbersPart
from server.store.removal import RemovalPart
from server.store.replicas import ReplicasPart
from server.store.security import SecurityPart
from server.store.versions import KEEP_SNAPSHOTS, LIST_NAMES, checksum

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


class SQLiteStore(NumbersPart, AccountsPart, SecurityPart, RemovalPart, ReplicasPart, SQLiteBase):
    """`Store` on one SQLite file (WAL, synchronous=FULL), safe across threads and processes."""


name_failures(SQLiteStore, STORE_METHODS)
