"""How settings versions are kept in SQLite, as plain functions on a connection: documents packed, the effective
document of a version (its last full document with the blacklist patches after it replayed), the version in
force, snapshot blobs and their checksums.  The settings part of the store and the migrations both use them.
"""

from __future__ import annotations

import hashlib
import zlib
from typing import Any

from engine.document_json import loads_document
from server.store.api import StoreError
from server.store.base import Conn

KEEP_SNAPSHOTS = 3                      # compiled snapshot blobs kept per tenant
LIST_NAMES = ("blacklist", "offhours_blacklist")


def checksum(blob: bytes) -> str:
    """What a stored snapshot blob is checked against when read back (SQLite's own checks cannot see a
    changed byte inside a blob)."""
    return hashlib.blake2b(blob, digest_size=16).hexdigest()


def pack(document: bytes) -> bytes:
    """A document as stored: zlib (level 1), which releases the GIL while it works and turns
    20 MB of phone numbers into about 4, so that binding it to the INSERT (which holds the GIL)
    is short.  Stored JSON starts with '{' or white space, zlib with 0x78: both read back."""
    return zlib.compress(document, 1)


def unpack(stored: bytes) -> bytes:
    return zlib.decompress(stored) if stored[:1] == b"\x78" else bytes(stored)


def apply_patch(doc: dict[str, Any], list_name: str, ops: list[tuple[str, str]]) -> None:
    """Apply one version's effective patch rows (removes, then adds) to doc[list_name] in place.

    The same function computes the document `prepare_patch` hands out to
    compile and replays the rows in `get_version`, so both always agree.
    """
    current = doc.get(list_name)
    if current is None:
        if not ops:
            return
        current = []
    if not isinstance(current, list):
        raise StoreError(f"the stored document's {list_name!r} is not a list")
    removed = {number for op, number in ops if op == "remove"}
    result = [number for number in current if number not in removed] if removed else list(current)
    result.extend(number for op, number in ops if op == "add")
    doc[list_name] = result


def in_force(conn: Conn, tenant: str) -> int:
    row = conn.execute('SELECT version FROM "current" WHERE tenant = ?', (tenant,)).fetchone()
    return int(row[0]) if row else 0


def store_snapshot(conn: Conn, tenant: str, version: int, blob: bytes) -> None:
    conn.execute("INSERT INTO snapshots (tenant, version, blob, checksum) VALUES (?, ?, ?, ?) ON CONFLICT (tenant, "
                 "version) DO UPDATE SET blob = excluded.blob, checksum = excluded.checksum",
                 (tenant, version, blob, checksum(blob)))
    conn.execute("""DELETE FROM snapshots WHERE tenant = ? AND version NOT IN (
                        SELECT version FROM snapshots WHERE tenant = ? ORDER BY version DESC LIMIT ?)""",
                 (tenant, tenant, KEEP_SNAPSHOTS))


def put_in_force(conn: Conn, tenant: str, version: int) -> None:
    conn.execute('INSERT INTO "current" (tenant, version) VALUES (?, ?) '
                 "ON CONFLICT (tenant) DO UPDATE SET version = excluded.version", (tenant, version))


def effective(conn: Conn, tenant: str, version: int) -> dict[str, Any]:
    """The effective document of an existing version, parsed."""
    base = conn.execute("""SELECT version, document FROM versions
                           WHERE tenant = ? AND version <= ? AND document IS NOT NULL
                           ORDER BY version DESC LIMIT 1""", (tenant, version)).fetchone()
    if base is None:
        raise StoreError(f"tenant {tenant!r} version {version}: no full document at or before it")
    doc = loads_document(unpack(base[1]))
    rows = conn.execute("""SELECT version, list_name, op, number FROM list_patches
                           WHERE tenant = ? AND version > ? AND version <= ?
                           ORDER BY version, seq""", (tenant, base[0], version))
    group: tuple[int, str] | None = None
    ops: list[tuple[str, str]] = []
    for patch_version, list_name, op, number in rows:
        if (patch_version, list_name) != group:
            if group is not None:
                apply_patch(doc, group[1], ops)
            group, ops = (patch_version, list_name), []
        ops.append((op, number))
    if group is not None:
        apply_patch(doc, group[1], ops)
    return doc


def documents_in_force(conn: Conn) -> list[tuple[str, int, dict[str, Any]]]:
    """(tenant, version, effective document) of every tenant, in the caller's transaction."""
    rows = conn.execute('SELECT tenant, version FROM "current" ORDER BY tenant').fetchall()
    return [(tenant, int(version), effective(conn, tenant, int(version))) for tenant, version in rows]
