"""`callgate store check`: the whole store checked offline, on its host, with what each finding means.

What `serve` checks at start-up is bounded (a timed quick check); this is
the full one, for an operator who suspects damage or wants proof that a
backup is good:

1. SQLite's integrity check (every page, every index) and its foreign keys;
2. money: each account's balance is the sum of its ledger, and what it
   holds for calls in progress is the sum of its open calls' holds;
3. every stored snapshot blob against its checksum;
4. no number held by two tenants;
5. every document file the store names exists and has its SHA-256.

It reads only (no migration, no repair) and may run beside a live server.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from engine.money import format_amount
from server.rules.documents import BlobStore
from server.store.api import StoreError
from server.store.faults import describe_check
from server.store.removal import ARCHIVE_MARK
from server.store.sqlite import SQLiteStore, checksum

Progress = Callable[[str, int], None]


@dataclass
class Report:
    checked: list[str] = field(default_factory=list)   # what was checked and found right
    problems: list[str] = field(default_factory=list)  # what is wrong, each with what it means

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(store: SQLiteStore, documents: Path, progress: Progress | None = None) -> Report:
    report = Report()
    conn = sqlite3.connect(f"file:{store.path}?mode=ro", uri=True, timeout=10, isolation_level=None)
    steps: list[tuple[str, Callable[[], None]]] = [
        ("integrity", lambda: _integrity(conn, report, progress)),
        ("money", lambda: _money(conn, report)),
        ("snapshots", lambda: _snapshots(conn, report, progress)),
        ("numbers", lambda: _ownership(store, report)),
        ("documents", lambda: _documents(conn, documents, report, progress)),
    ]
    try:
        for name, step in steps:
            try:
                step()
            except (sqlite3.DatabaseError, StoreError) as exc:  # damage this step meets is a finding, not the end
                report.problems.append(f"{name}: cannot be checked, the tables it reads are damaged ({exc})")
    finally:
        conn.close()
    return report


def _integrity(conn: sqlite3.Connection, report: Report, progress: Progress | None) -> None:
    steps = 0

    def tick() -> int:
        nonlocal steps
        steps += 1
        if progress is not None and steps % 100 == 0:
            progress("integrity check", steps)
        return 0

    conn.set_progress_handler(tick, 10_000)
    try:
        lines = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(100)").fetchall()]
    except sqlite3.DatabaseError as exc:  # the damage stops the whole check: look table by table
        damaged = _table_by_table(conn)
        report.problems.append(f"integrity: damaged {damaged or 'pages SQLite cannot read'} (the whole check stopped: "
                               f"{exc}): restore the store from a backup")
        return
    finally:
        conn.set_progress_handler(None, 0)
    damaged = describe_check(conn, lines)
    if damaged:
        report.problems.append(f"integrity: damaged {damaged} ({len(lines)} finding(s), first: {lines[0][:200]!r}): "
                               "restore the store from a backup")
    else:
        report.checked.append("integrity: every page and index")
    fk = conn.execute("PRAGMA foreign_key_check").fetchall()
    if fk:
        tables = sorted({str(r[0]) for r in fk})
        report.problems.append(f"foreign keys: {len(fk)} row(s) of {', '.join(tables)} point at rows that do not "
                               "exist")
    else:
        report.checked.append("foreign keys")


def _table_by_table(conn: sqlite3.Connection) -> str:
    """The tables (and their indexes) SQLite's integrity check finds damaged one at a time ('' if even the
    schema cannot be read)."""
    try:
        tables = [str(r[0]) for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.DatabaseError:
        return ""
    found: list[str] = []
    for table in tables:
        try:
            quoted = table.replace('"', '""')   # a name read back from a file that may have been tampered with
            lines = [str(r[0]) for r in conn.execute(f'PRAGMA integrity_check("{quoted}")').fetchall()]
        except sqlite3.DatabaseError:
            found.append(f"table {table}")
            continue
        described = describe_check(conn, lines)
        if described:
            found.append(described)
    return ", ".join(found)


def _money(conn: sqlite3.Connection, report: Report) -> None:
    rows = conn.execute("""
        SELECT a.tenant, a.balance_micro, COALESCE(l.total, 0), a.reserved_micro, COALESCE(c.held, 0)
        FROM accounts a
        LEFT JOIN (SELECT tenant, SUM(amount_micro) AS total FROM ledger GROUP BY tenant) l ON l.tenant = a.tenant
        LEFT JOIN (SELECT tenant, SUM(reserved_micro) AS held FROM calls
                   WHERE state IN ('ringing', 'answered') GROUP BY tenant) c ON c.tenant = a.tenant""").fetchall()
    # a removed tenant's ledger is kept under an archive name, without an account (server/store/removal.py)
    orphans = conn.execute("""SELECT DISTINCT tenant FROM ledger
                              WHERE tenant NOT IN (SELECT tenant FROM accounts) AND instr(tenant, ?) = 0""",
                           (ARCHIVE_MARK,)).fetchall()
    archived = conn.execute("SELECT count(DISTINCT tenant) FROM ledger WHERE instr(tenant, ?) > 0",
                            (ARCHIVE_MARK,)).fetchone()[0]
    bad = 0
    for tenant, balance, total, reserved, held in rows:
        if balance != total:
            bad += 1
            report.problems.append(f"money: tenant {tenant!r} has balance {format_amount(balance)} "
                                   f"but its ledger sums to {format_amount(total)}")
        if reserved != held:
            bad += 1
            report.problems.append(f"money: tenant {tenant!r} holds {format_amount(reserved)} for calls in "
                                   f"progress but its open calls hold {format_amount(held)}")
    for (tenant,) in orphans:
        bad += 1
        report.problems.append(f"money: tenant {tenant!r} has ledger entries but no account")
    if not bad:
        kept = f"; {archived} removed tenant(s)' ledgers kept" if archived else ""
        report.checked.append(f"money: {len(rows)} account(s), balance = ledger, holds = open calls{kept}")


def _snapshots(conn: sqlite3.Connection, report: Report, progress: Progress | None) -> None:
    bad = n = 0
    for n, (tenant, version, blob, stored) in enumerate(
            conn.execute("SELECT tenant, version, blob, checksum FROM snapshots"), start=1):
        if progress is not None and n % 100 == 0:
            progress("snapshot checksums", n)
        if checksum(bytes(blob)) != stored:
            bad += 1
            report.problems.append(f"snapshot: tenant {tenant!r} version {version}: the blob does not match its "
                                   "checksum (a worker compiles it again from its document when it loads it)")
    if not bad:
        report.checked.append(f"snapshots: {n} blob(s) match their checksums")


def _ownership(store: SQLiteStore, report: Report) -> None:
    conflicts = store.ownership_conflicts()
    if conflicts:
        shown = ", ".join(f"{n} ({', '.join(t for t, _ in holders)})" for n, holders in list(conflicts.items())[:10])
        report.problems.append(f"numbers: {len(conflicts)} number(s) held by several tenants: {shown}; resolve them "
                               "with `callgate numbers resolve` (the server refuses to start until then)")
    else:
        report.checked.append("numbers: no number held twice (`callgate numbers conflicts` also compares owners "
                              "with the settings in force)")


def _documents(conn: sqlite3.Connection, folder: Path, report: Report, progress: Progress | None) -> None:
    bad = n = 0
    for n, (sha, name) in enumerate(conn.execute("SELECT DISTINCT sha256, name FROM document_files"), start=1):
        if progress is not None and n % 100 == 0:
            progress("document files", n)
        path = BlobStore(folder).path(sha)
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            bad += 1
            report.problems.append(f"documents: {name!r} ({sha[:12]}…) cannot be read: {exc.strerror}")
            continue
        if digest != sha:
            bad += 1
            report.problems.append(f"documents: {name!r} ({sha[:12]}…) does not have its SHA-256 any more")
    if not bad:
        report.checked.append(f"documents: {n} file(s) present with their SHA-256")

