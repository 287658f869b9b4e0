"""What the SQLite store tests share: small documents, the patch as the Admin RPC makes it, and the
fixtures `db` (a store file's path) and `store` (a SQLiteStore on it, closed after the test)."""

from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from server.store.api import PatchResult
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


@pytest.fixture
def store(db: Path):
    s = SQLiteStore(db)
    yield s
    s.close()
