"""What the store tests share: small documents, the patch as the Admin RPC makes it, and the fixtures `db` (a
SQLite store file's path) and `store`: the store under test, closed after the test.

Every test that takes `store` and not `db` runs on both backends (`pytest_generate_tests` in conftest.py):
SQLite on `db`, and PostgreSQL, a fresh database copied from a migrated template in a private cluster that
the test session starts itself (loadtest.postgres).  A test that reads the SQLite file itself (`db`) runs on
SQLite only."""

from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest.postgres import PrivateCluster
from server.store.api import PatchResult
from server.store.postgres import PostgresStore
from server.store.sqlite import SQLiteStore

FORK = mp.get_context("fork")   # children open their own store on the same file


def doc(tenant: str = "acme", **extra: Any) -> bytes:
    base: dict[str, Any] = {"tenant": tenant, "currency": "USD", "status": "active",
                            "blacklist": ["+14155550666"], "offhours_blacklist": ["+14155550777"]}
    base.update(extra)
    return json.dumps(base).encode()


def patch_list(store: SQLiteStore, tenant: str, list_name: str, add: list[str], remove: list[str],
               builder: Callable[[bytes], bytes], expected: int | None) -> PatchResult:
    """A blacklist patch as the Admin RPC makes it: prepared, compiled by `builder`, committed."""
    patch = store.prepare_patch(tenant, list_name, add, remove, expected)
    if not patch.ops:
        return patch.unchanged()
    return store.commit_patch(patch, builder(patch.document))


def snap(document: bytes) -> bytes:
    return b"compiled:" + document


def raw(db: Path) -> sqlite3.Connection:
    return sqlite3.connect(db)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "data" / "callgate.sqlite"


BACKENDS = ("sqlite", "postgresql")
_databases = itertools.count()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PrivateCluster]:
    """One private PostgreSQL for the session, its database `callgate` migrated: the template of every test's."""
    with PrivateCluster() as pg:
        PostgresStore(pg.dsn).close()
        yield pg


def pg_database(pg: PrivateCluster) -> str:
    """A new database, a copy of the migrated template; its DSN."""
    name = f"test{next(_databases)}"
    pg.admin(f"CREATE DATABASE {name} TEMPLATE callgate OWNER callgate")
    return pg.dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
def store(request: pytest.FixtureRequest, db: Path) -> Iterator[Any]:
    backend = getattr(request, "param", "sqlite")
    s = SQLiteStore(db) if backend == "sqlite" else PostgresStore(pg_database(request.getfixturevalue("pg_cluster")))
    yield s
    s.close()
