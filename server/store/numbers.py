"""The SQLite store's number ownership: which tenant holds each E.164 number (spec §7).

Contract:
- `number_owners` has the number as its primary key, so the database itself
  refuses a second holder, whatever the code above it does and however many
  processes (or, later, hosts) write at once.
- Ownership moves only inside the transaction that commits the versions
  which change it (`claim`): a tenant's new version releases the numbers it
  no longer lists and claims the new ones; a claim of a number held by
  another tenant refuses the whole write (NumberTaken, with field paths).
  A transfer is two versions in one transaction: the release is applied
  before the claim.
- `number_conflicts` holds what migration 4 found listed by several tenants
  in a store made before ownership existed.  Such numbers have no owner row
  and are never claimed by a write until an operator resolves them
  (`resolve_conflict`); the server refuses to start while any is left.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from server.store.api import (
    FailoverView,
    NotFound,
    NumberOwner,
    NumberTaken,
    StoreError,
    TenantFacts,
    TenantFailover,
    VersionWrite,
)
from server.store.base import Conn
from server.store.checks import _check_e164, _check_tenant
from server.store.settings import SettingsPart
from server.store.versions import documents_in_force

OWNER_COLUMNS = "number, tenant, line, version, since"


def document_numbers(doc: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    """(number, line) of a stored document's numbers[] in order (documents in the store were validated)."""
    out = []
    for i, entry in enumerate(doc.get("numbers") or ()):
        if not isinstance(entry, dict) or not isinstance(entry.get("number"), str):
            raise StoreError(f"numbers[{i}] of tenant {doc.get('tenant')!r} is not a number entry")
        out.append((entry["number"], str(entry.get("line", ""))))
    return tuple(out)


def claim(conn: Conn, claims: Sequence[tuple[str, int, Sequence[tuple[str, str]]]], now: int) -> None:
    """Move ownership for new versions, inside the caller's write transaction.

    `claims` is (tenant, new version, its (number, line) list) per tenant.
    Raises NumberTaken (the caller's transaction then rolls back) when a
    number is held by a tenant that is not in the same write.
    """
    conflicted = {row[0] for row in conn.execute("SELECT DISTINCT number FROM number_conflicts")}
    plans = []
    for tenant, version, numbers in claims:   # every release first: a transfer's target claims what was let go
        wanted = dict(numbers)
        held = dict(conn.execute("SELECT number, line FROM number_owners WHERE tenant = ?", (tenant,)))
        conn.executemany("DELETE FROM number_owners WHERE number = ? AND tenant = ?",
                         [(n, tenant) for n in held if n not in wanted])
        plans.append((tenant, version, numbers, wanted, held))
    taken: list[tuple[str, str]] = []
    for tenant, version, numbers, wanted, held in plans:
        new = [(i, n, line) for i, (n, line) in enumerate(numbers) if n not in held and n not in conflicted]
        inserted = conn.executemany(f"INSERT INTO number_owners ({OWNER_COLUMNS}) VALUES (?, ?, ?, ?, ?) "
                                    "ON CONFLICT (number) DO NOTHING",
                                    [(n, tenant, line, version, now) for _, n, line in new]).rowcount if new else 0
        if inserted != len(new):   # some number has another holder: find which
            for i, n, _ in new:
                row = conn.execute("SELECT tenant FROM number_owners WHERE number = ?", (n,)).fetchone()
                if row is not None and row[0] != tenant:
                    taken.append((n, f"numbers[{i}].number"))
        conn.executemany("UPDATE number_owners SET line = ? WHERE number = ? AND tenant = ?",
                         [(line, n, tenant) for n, line in wanted.items() if n in held and held[n] != line])
    if taken:
        raise NumberTaken(taken)


def write_facts(conn: Conn, tenant: str, facts: TenantFacts) -> None:
    conn.execute("INSERT INTO tenant_facts (tenant, status, backup_number, backup_line) VALUES (?, ?, ?, ?) "
                 "ON CONFLICT (tenant) DO UPDATE SET status = excluded.status, backup_number = excluded.backup_number, "
                 "backup_line = excluded.backup_line", (tenant, facts.status, facts.backup_number, facts.backup_line))


def backfill(conn: Conn, documents: Callable[[Conn], list[tuple[str, int, dict]]]
             ) -> None:
    """Migration 4: owners and facts from the documents in force; numbers listed by several tenants become
    conflicts (a number a document lists twice counts once)."""
    claims: dict[str, dict[str, tuple[str, int]]] = {}
    for tenant, version, doc in documents(conn):
        write_facts(conn, tenant, TenantFacts.of(doc))
        for number, line in document_numbers(doc):
            claims.setdefault(number, {}).setdefault(tenant, (line, version))
    now = int(time.time())
    for number, holders in sorted(claims.items()):
        if len(holders) == 1:
            [(tenant, (line, version))] = holders.items()
            conn.execute(f"INSERT INTO number_owners ({OWNER_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                         (number, tenant, line, version, now))
        else:
            conn.executemany("INSERT INTO number_conflicts (number, tenant, line) VALUES (?, ?, ?)",
                             [(number, tenant, line) for tenant, (line, _) in sorted(holders.items())])


def _owner(row: Any) -> NumberOwner:
    return NumberOwner(row[0], row[1], row[2], int(row[3]), int(row[4]))


class NumbersPart(SettingsPart):
    """Ownership reads and conflict resolution for SQLiteStore (see the module docstring)."""

    def number_owner(self, number: str) -> NumberOwner | None:
        _check_e164("number", number)
        rows = self._read(f"SELECT {OWNER_COLUMNS} FROM number_owners WHERE number = ?", (number,))
        return _owner(rows[0]) if rows else None

    def number_owners(self, tenant: str = "") -> list[NumberOwner]:
        if tenant:
            _check_tenant(tenant)
        return [_owner(r) for r in self._read(f"SELECT {OWNER_COLUMNS} FROM number_owners "
                                              "WHERE ? = '' OR tenant = ? ORDER BY number", (tenant, tenant))]

    def failover_view(self) -> FailoverView:
        # one WAL snapshot, so that owners and versions agree; no document is parsed (a tenant's blacklist
        # of millions would hold the worker for seconds)
        with self._transaction(False) as conn:
            owners = [_owner(r) for r in conn.execute(f"SELECT {OWNER_COLUMNS} FROM number_owners ORDER BY number")]
            tenants = [TenantFailover(t, int(v), s or "", n or "", line or "") for t, v, s, n, line in conn.execute(
                'SELECT c.tenant, c.version, f.status, f.backup_number, f.backup_line FROM "current" c '
                "LEFT JOIN tenant_facts f ON f.tenant = c.tenant ORDER BY c.tenant")]
        return FailoverView(tenants, owners)

    def ownership_conflicts(self) -> dict[str, list[tuple[str, str]]]:
        out: dict[str, list[tuple[str, str]]] = {}
        for number, tenant, line in self._read("SELECT number, tenant, line FROM number_conflicts "
                                               "ORDER BY number, tenant", ()):
            out.setdefault(number, []).append((tenant, line))
        return out

    def check_ownership(self) -> list[str]:
        """The full check, against the documents in force (they are parsed: an offline tool's job, not a
        server's).  A number that a document lists but another tenant (or nobody) holds, or that several list,
        is recorded as a conflict to resolve, and loses its owner until then (the server refuses to start
        meanwhile); an owner row that no document backs is dropped.  Returns what was found, in words."""
        found: list[str] = []
        with self._transaction(True) as conn:
            listed: dict[str, dict[str, str]] = {}
            for tenant, _version, doc in documents_in_force(conn):
                for number, line in document_numbers(doc):
                    listed.setdefault(number, {}).setdefault(tenant, line)
            owners = dict(conn.execute("SELECT number, tenant FROM number_owners"))
            conflicted = {row[0] for row in conn.execute("SELECT DISTINCT number FROM number_conflicts")}
            for number, tenants in sorted(listed.items()):
                holder = owners.get(number)
                if number in conflicted or (len(tenants) == 1 and holder in tenants):
                    continue
                found.append(f"{number} is listed by {', '.join(sorted(tenants))} but held by "
                             f"{holder or 'no tenant'}: recorded as a conflict")
                conn.execute("DELETE FROM number_owners WHERE number = ?", (number,))
                conn.executemany("INSERT INTO number_conflicts (number, tenant, line) VALUES (?, ?, ?) "
                                 "ON CONFLICT DO NOTHING",
                                 [(number, t, line) for t, line in sorted(tenants.items())])
            for number, holder in sorted(owners.items()):
                if number not in listed:
                    found.append(f"{number} is held by {holder} but listed by no settings in force: let go")
                    conn.execute("DELETE FROM number_owners WHERE number = ?", (number,))
        return found

    def resolve_conflict(self, number: str, owner: str, releases: list[VersionWrite]) -> list[int]:
        _check_e164("number", number)
        _check_tenant(owner, "owner")
        releases = [self._checked(w) for w in releases]
        now = int(time.time())
        with self._transaction(True) as conn:
            claimants = dict(conn.execute("SELECT tenant, line FROM number_conflicts WHERE number = ?", (number,)))
            if not claimants:
                raise NotFound(f"{number} is not listed by several tenants: nothing to resolve")
            if owner not in claimants:
                raise ValueError(f"--owner {owner!r} does not list {number}; it is listed by "
                                 f"{', '.join(sorted(claimants))}")
            others = sorted(set(claimants) - {owner})
            if sorted(w.tenant for w in releases) != others:
                raise ValueError(f"resolving {number} needs one new version for each of {', '.join(others)}")
            for w in releases:
                if any(n == number for n, _ in w.numbers or ()):
                    raise ValueError(f"the new version of {w.tenant!r} still lists {number}")
            conn.execute("DELETE FROM number_conflicts WHERE number = ?", (number,))
            versions = self._commit_in(conn, releases, False, now)
            current = conn.execute('SELECT version FROM "current" WHERE tenant = ?', (owner,)).fetchone()
            conn.execute(f"INSERT INTO number_owners ({OWNER_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                         (number, owner, claimants[owner], int(current[0]) if current else 0, now))
        return versions
