"""The SQLite store's removal of a tenant (`Store.remove_tenant`; what goes and what stays: README "Removing a
tenant").

One write transaction: the checks (calls in progress, balance, a top-up being charged) and every delete, rename
and revocation commit together or not at all, so a removal refused half-way leaves nothing half-removed, and a
call event or a push that races it is either before it (and removed with the rest) or after it (and finds no
tenant: a decision answers NOT_FOUND, a tenant-admin's push TenantMissing).
"""

from __future__ import annotations

import json
import time

from engine.money import format_amount
from server.rules.tokens import TENANT_ROLES
from server.store.api import NotFound, TenantBusy, TenantRemoval
from server.store.base import Conn, StoreBase
from server.store.checks import _check_str, _check_tenant
from server.store.versions import in_force

REMOVED_KIND = "removed"        # the history row a removal leaves: versions.kind, no document
ARCHIVE_MARK = "/removed-"      # money records of a removed tenant: "<tenant>/removed-<its removal version>"


def archive_name(tenant: str, removed_version: int) -> str:
    """Where a removed tenant's ledger and top-ups are kept: a name no tenant id can be ('/' is not allowed in
    one), so a tenant made again with the same id never sees the old one's money or references."""
    return f"{tenant}{ARCHIVE_MARK}{removed_version}"


def _count(conn: Conn, sql: str, *args: object) -> int:
    return int(conn.execute(sql, args).fetchone()[0])


def _erase(conn: Conn, tenant: str, archive: str) -> int:
    """The tenant's calls, documents, card, account and replicas' rows deleted, its money records moved to
    `archive` (inside the caller's write transaction); returns the rows changed (each statement's rowcount: the
    same on both backends, where SQLite's total_changes would also count what triggers wrote)."""
    changed = 0
    # an open top-up is never charged now; the money records stay, under the archive name (a sweep's late rows
    # whose kind and reference the archive holds already go to `<archive>-late`: the ledger is unique on them)
    changed += conn.execute("UPDATE topups SET status = 'failed', last_reason = 'tenant removed' "
                            "WHERE tenant = ? AND status = 'pending'", (tenant,)).rowcount
    changed += conn.execute("UPDATE topups SET tenant = ? WHERE tenant = ?", (archive, tenant)).rowcount
    changed += conn.execute("UPDATE ledger SET tenant = ? WHERE tenant = ? AND NOT EXISTS (SELECT 1 FROM ledger "
                            "AS kept WHERE kept.tenant = ? AND kept.kind = ledger.kind AND kept.ref = ledger.ref)",
                            (archive, tenant, archive)).rowcount
    changed += conn.execute("UPDATE ledger SET tenant = ? WHERE tenant = ?", (archive + "-late", tenant)).rowcount
    for sql in ("DELETE FROM document_files WHERE set_id IN (SELECT id FROM document_sets WHERE tenant = ?)",
                "DELETE FROM document_sets WHERE tenant = ?",
                "DELETE FROM call_events WHERE tenant = ?",
                "DELETE FROM leads WHERE tenant = ?",
                "DELETE FROM calls WHERE tenant = ?",
                "DELETE FROM rentals_seen WHERE tenant = ?",
                "DELETE FROM cards WHERE tenant = ?",
                "DELETE FROM accounts WHERE tenant = ?",
                "DELETE FROM replica_reports WHERE tenant = ?"):
        changed += conn.execute(sql, (tenant,)).rowcount
    return changed


class RemovalPart(StoreBase):
    """`remove_tenant` for SQLiteStore."""

    def remove_tenant(self, tenant: str, *, force: bool = False, dry_run: bool = False,
                      comment: str = "") -> TenantRemoval:
        _check_tenant(tenant)
        _check_str("comment", comment, allow_empty=True)
        if not isinstance(force, bool) or not isinstance(dry_run, bool):
            raise ValueError("force and dry_run are booleans")
        with self._transaction(write=not dry_run) as conn:
            return self._remove(conn, tenant, force, dry_run, comment[:500], int(time.time()))

    def document_file_named(self, sha256: str) -> bool:
        _check_str("sha256", sha256)
        return bool(self._read("SELECT 1 FROM document_files WHERE sha256 = ? LIMIT 1", (sha256,)))

    def _remove(self, conn: Conn, tenant: str, force: bool, dry_run: bool, comment: str,
                now: int) -> TenantRemoval:
        last = in_force(conn, tenant)
        if last == 0:
            raise NotFound(f"tenant {tenant!r} has no settings (nothing to remove)")
        row = conn.execute("SELECT balance_micro, reserved_micro FROM accounts WHERE tenant = ?", (tenant,)).fetchone()
        balance, reserved = (int(row[0]), int(row[1])) if row else (0, 0)
        in_progress = _count(conn, "SELECT count(*) FROM calls WHERE tenant = ? AND state IN ('ringing', 'answered')",
                             tenant)
        problems = []
        if in_progress:
            problems.append(f"{in_progress} call(s) in progress (ringing or answered; their talk would never be "
                            "charged)")
        if balance:
            problems.append(f"a balance of {format_amount(balance)} (settle it first: refund or collect it)")
        if problems and not force:
            raise TenantBusy(f"tenant {tenant!r} has {' and '.join(problems)}: nothing was removed; wait for the "
                             "calls to end and settle the balance, or remove it anyway with force "
                             "(`callgate tenant remove --force`)")
        if _count(conn, "SELECT count(*) FROM topups WHERE tenant = ? AND status = 'charging'", tenant):
            # the gateway may be taking the money this very moment: its answer must find the top-up and credit the
            # ledger it belongs to (force cannot skip this; a charge ends within seconds, a dead worker's claim is
            # taken over after --topup-stale-s)
            raise TenantBusy(f"tenant {tenant!r} has a top-up being charged on its card right now: nothing was "
                             "removed; try again in a minute")
        removed_version = _count(conn, "SELECT COALESCE(MAX(version), 0) FROM versions WHERE tenant = ?", tenant) + 1
        versions = _count(conn, "SELECT count(*) FROM versions WHERE tenant = ? AND kind != ?", tenant, REMOVED_KIND)
        numbers = _count(conn, "SELECT count(*) FROM number_owners WHERE tenant = ?", tenant)
        calls = _count(conn, "SELECT count(*) FROM calls WHERE tenant = ?", tenant)
        sets = _count(conn, "SELECT count(*) FROM document_sets WHERE tenant = ?", tenant)
        # files named only by this tenant's sets (content-addressed: another tenant's set may name the same file)
        files = tuple(r[0] for r in conn.execute(
            """SELECT DISTINCT f.sha256 FROM document_files f JOIN document_sets s ON s.id = f.set_id
               WHERE s.tenant = ? AND f.sha256 NOT IN (
                   SELECT f2.sha256 FROM document_files f2 JOIN document_sets s2 ON s2.id = f2.set_id
                   WHERE s2.tenant != ?)
               ORDER BY f.sha256""", (tenant, tenant)))
        ledger = _count(conn, "SELECT count(*) FROM ledger WHERE tenant = ?", tenant)
        topups = _count(conn, "SELECT count(*) FROM topups WHERE tenant = ?", tenant)
        archive = archive_name(tenant, removed_version) if ledger or topups else ""
        card = _count(conn, "SELECT count(*) FROM cards WHERE tenant = ?", tenant) > 0
        revoked: list[tuple[str, list[str]]] = []
        narrowed: list[tuple[str, list[str]]] = []
        placeholders = ", ".join("?" * len(TENANT_ROLES))
        for ident, listed in conn.execute(f"SELECT id, tenants FROM tokens WHERE revoked_at = 0 AND role IN "
                                          f"({placeholders}) ORDER BY id", tuple(TENANT_ROLES)).fetchall():
            tenants = [t for t in json.loads(listed) if isinstance(t, str)]
            if tenant not in tenants:
                continue
            rest = [t for t in tenants if t != tenant]
            (narrowed if rest else revoked).append((ident, rest))
        removal = TenantRemoval(
            tenant=tenant, dry_run=dry_run, last_version=last, removed_version=removed_version, versions=versions,
            numbers=numbers, calls=calls, calls_in_progress=in_progress, document_sets=sets, document_files=files,
            balance_micro=balance, reserved_micro=reserved, ledger_entries=ledger, topups=topups,
            ledger_archive=archive, card_removed=card, tokens_revoked=tuple(i for i, _ in revoked),
            tokens_narrowed=tuple(i for i, _ in narrowed))
        if dry_run:
            return removal

        # tokens: a tenant made again with this id must not be reachable with the old company's tokens
        conn.executemany("UPDATE tokens SET revoked_at = ? WHERE id = ?", [(now, ident) for ident, _ in revoked])
        conn.executemany("UPDATE tokens SET tenants = ? WHERE id = ?",
                         [(json.dumps(sorted(rest)), ident) for ident, rest in narrowed])
        _erase(conn, tenant, archive_name(tenant, removed_version))
        for sql in ("DELETE FROM number_owners WHERE tenant = ?",
                    "DELETE FROM number_conflicts WHERE tenant = ?",
                    "DELETE FROM tenant_facts WHERE tenant = ?",
                    "DELETE FROM list_patches WHERE tenant = ?",
                    "DELETE FROM snapshots WHERE tenant = ?",
                    'DELETE FROM "current" WHERE tenant = ?',
                    "DELETE FROM versions WHERE tenant = ?"):
            conn.execute(sql, (tenant,))
        conn.execute("INSERT INTO versions (tenant, version, kind, document, created_at, comment) "
                     "VALUES (?, ?, ?, NULL, ?, ?)", (tenant, removed_version, REMOVED_KIND, now,
                                                     comment or f"removed (was at version {last})"))
        return removal

    def sweep_removed(self, tenant: str, removed_version: int) -> tuple[int, tuple[str, ...]]:
        """After a removal: what workers that had not polled since wrote for the tenant (a call event, a credit,
        an upload: up to one poll interval), swept as the removal would have.  Nothing, when the tenant was made
        again meanwhile.  Returns (rows swept, files no set names any more: the caller deletes them)."""
        _check_tenant(tenant)
        with self._transaction(write=True) as conn:
            latest = conn.execute("SELECT version, kind FROM versions WHERE tenant = ? ORDER BY version DESC LIMIT 1",
                                  (tenant,)).fetchone()
            if latest is None or tuple(latest) != (removed_version, REMOVED_KIND):
                return 0, ()          # made again (or removed again): not ours to touch
            files = tuple(r[0] for r in conn.execute(
                """SELECT DISTINCT f.sha256 FROM document_files f JOIN document_sets s ON s.id = f.set_id
                   WHERE s.tenant = ? AND f.sha256 NOT IN (
                       SELECT f2.sha256 FROM document_files f2 JOIN document_sets s2 ON s2.id = f2.set_id
                       WHERE s2.tenant != ?)""", (tenant, tenant)))
            return _erase(conn, tenant, archive_name(tenant, removed_version)), files
