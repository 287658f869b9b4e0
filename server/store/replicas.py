"""The store's record of which proxy replica holds which snapshot version of which tenant (as Envoy's xDS ACK/NACK):
one row per (replica, tenant), table `replica_reports` (migration 0011), the latest of the replica's reports.

Reports may arrive late, twice, or out of order (a replica reconnecting replays what it holds), so each one is
folded into its row by a single `INSERT ... ON CONFLICT DO UPDATE` whose update never moves the row back: the
installed version only grows, a refusal stands only while no install of that version or a later one came (a
refusal of the installed version itself, rebuilt with another checksum, stands too), a replay changes nothing but
`seen_at`.  The same statement reads the tenant's version in force: a report for a tenant
that does not exist (just removed) writes nothing.  A tenant's removal deletes its rows (removal.py `_erase`).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from typing import Any

from server.store.api import ReplicaRecord, ReplicaReport
from server.store.base import StoreBase
from server.store.checks import _check_int, _check_tenant

MAX_REPLICA = 128            # characters of a replica's name
MAX_REASON = 500             # characters of a refusal's reason kept
MAX_PEER = 128               # characters of the peer's address kept
MAX_TOKEN_ID = 128           # characters of the token id kept
LIST_LIMIT = 10_000          # rows `list_replicas` returns at most
_SHA256_HEX = re.compile(r"[0-9a-fA-F]{64}")

REPLICA_COLUMNS = ("replica, tenant, version, checksum, installed_at, refused_version, refused_checksum, "
                   "refused_reason, refused_at, peer, token_id, seen_at")

# One report, folded into its row.  The inserted values (`excluded`) are an install's (version > 0, no refusal) or
# a refusal's (version 0, refused_version > 0); the row's own columns are read before any is set (both databases).
#   an install moves the row when its version is later, or the same with another checksum (a rebuilt snapshot)
#   installed no earlier than the one recorded (reports' times come from the servers' clocks: a late report of an
#   earlier install never moves it back);
#   it clears a refusal of an older version, of the very checksum it installs, or of its own version made before
#   it (the server records only what it sent on that stream: an install reported after the refusal came after it);
#   a refusal stands when its version is later than the installed one, or the installed one with another checksum
#   (a rebuilt snapshot refused: the replica keeps deciding on the one it has) made after that install; and when
#   it is of a later version than the refusal recorded, or the same version's same checksum (a replay), or another
#   checksum of it refused no earlier (refused_at moves only when the version or checksum refused changes: a
#   replay keeps it);
#   peer, token_id and seen_at are the latest report's (by `at`).
_R = "replica_reports"
_INSTALL_NEWER = f"excluded.version > {_R}.version"
_INSTALL_MOVES = (f"({_INSTALL_NEWER} OR (excluded.version > 0 AND excluded.version = {_R}.version "
                  f"AND excluded.checksum <> {_R}.checksum AND excluded.installed_at >= {_R}.installed_at))")
_CLEARS = (f"(excluded.version > 0 AND {_R}.refused_version > 0 AND ({_R}.refused_version < excluded.version "
           f"OR ({_R}.refused_version = excluded.version AND (excluded.checksum = {_R}.refused_checksum "
           f"OR excluded.installed_at >= {_R}.refused_at))))")
_REFUSAL_STANDS = (f"((excluded.refused_version > {_R}.version "
                   f"OR (excluded.refused_version = {_R}.version AND excluded.refused_checksum <> {_R}.checksum "
                   f"AND excluded.refused_at >= {_R}.installed_at)) "
                   f"AND (excluded.refused_version > {_R}.refused_version "
                   f"OR (excluded.refused_version = {_R}.refused_version "
                   f"AND (excluded.refused_checksum = {_R}.refused_checksum "
                   f"OR excluded.refused_at >= {_R}.refused_at))))")
_REFUSAL_MOVES = (f"(excluded.refused_version > {_R}.refused_version "
                  f"OR excluded.refused_checksum <> {_R}.refused_checksum)")
_LATEST = f"excluded.seen_at >= {_R}.seen_at"

RECORD_SQL = f"""INSERT INTO {_R} ({REPLICA_COLUMNS})
SELECT ?, tenant, ?, ?, ?, ?, ?, ?, ?, ?, ?, ? FROM "current" WHERE tenant = ?
ON CONFLICT (replica, tenant) DO UPDATE SET
    version = CASE WHEN {_INSTALL_NEWER} THEN excluded.version ELSE {_R}.version END,
    checksum = CASE WHEN {_INSTALL_MOVES} THEN excluded.checksum ELSE {_R}.checksum END,
    installed_at = CASE WHEN {_INSTALL_MOVES} THEN excluded.installed_at ELSE {_R}.installed_at END,
    refused_version = CASE WHEN {_CLEARS} THEN 0
                           WHEN {_REFUSAL_STANDS} THEN excluded.refused_version ELSE {_R}.refused_version END,
    refused_checksum = CASE WHEN {_CLEARS} THEN ''
                            WHEN {_REFUSAL_STANDS} THEN excluded.refused_checksum ELSE {_R}.refused_checksum END,
    refused_reason = CASE WHEN {_CLEARS} THEN ''
                          WHEN {_REFUSAL_STANDS} THEN excluded.refused_reason ELSE {_R}.refused_reason END,
    refused_at = CASE WHEN {_CLEARS} THEN 0
                      WHEN {_REFUSAL_STANDS} AND {_REFUSAL_MOVES} THEN excluded.refused_at ELSE {_R}.refused_at END,
    peer = CASE WHEN {_LATEST} THEN excluded.peer ELSE {_R}.peer END,
    token_id = CASE WHEN {_LATEST} THEN excluded.token_id ELSE {_R}.token_id END,
    seen_at = CASE WHEN {_LATEST} THEN excluded.seen_at ELSE {_R}.seen_at END"""

# one statement text per filter (not `? = '' OR ...`: PostgreSQL's cached generic plan could not use an index)
_SELECT = f"SELECT {REPLICA_COLUMNS} FROM {_R}"
_ORDER = f" ORDER BY replica, tenant LIMIT {LIST_LIMIT}"
LIST_SQL = {
    (False, False): _SELECT + _ORDER,
    (True, False): _SELECT + " WHERE tenant = ?" + _ORDER,
    (False, True): _SELECT + " WHERE replica = ?" + _ORDER,
    (True, True): _SELECT + " WHERE replica = ? AND tenant = ?" + _ORDER,
}


def _check_replica(value: object, name: str = "replica") -> str:
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    if not 1 <= len(value) <= MAX_REPLICA:
        raise ValueError(f"{name} must be 1 to {MAX_REPLICA} characters, got {len(value)}")
    if not value.isprintable():
        raise ValueError(f"{name} {value[:32]!r} has control or non-printable characters")
    return value


def _clip(name: str, value: object, limit: int) -> str:
    """Free text a replica sent: a string, clipped; a NUL or a lone surrogate (neither storable) becomes U+FFFD."""
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, not {type(value).__name__}")
    value = value[:limit]
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in value)
    return value


def _check_at(at: object) -> float:
    if at is None:
        return time.time()
    if isinstance(at, bool) or not isinstance(at, int | float) or not math.isfinite(at) or at < 0:
        raise ValueError(f"at must be epoch seconds (a finite number >= 0), not {at!r}")
    return float(at)


def _row(i: int, report: object, at: float) -> tuple[Any, ...]:
    """The statement's parameters for one report, every field checked (ValueError naming it)."""
    where = f"reports[{i}]"
    if not isinstance(report, ReplicaReport):
        raise ValueError(f"{where} must be a ReplicaReport, not {type(report).__name__}")
    replica = _check_replica(report.replica, f"{where}.replica")
    tenant = _check_tenant(report.tenant, f"{where}.tenant")
    version = _check_int(f"{where}.version", report.version, minimum=1)
    if not isinstance(report.checksum, str) or not _SHA256_HEX.fullmatch(report.checksum):
        raise ValueError(f"{where}.checksum must be a SHA-256 in hex (64 hex digits), "
                         f"not {str(report.checksum)[:80]!r}")
    checksum = report.checksum.lower()
    if not isinstance(report.installed, bool):
        raise ValueError(f"{where}.installed must be a bool, not {type(report.installed).__name__}")
    reason = _clip(f"{where}.reason", report.reason, MAX_REASON)
    peer = _clip(f"{where}.peer", report.peer, MAX_PEER)
    token_id = _clip(f"{where}.token_id", report.token_id, MAX_TOKEN_ID)
    if report.at is not None:   # when the server heard it, rather than when the batch is written
        try:
            at = _check_at(report.at)
        except ValueError as exc:
            raise ValueError(f"{where}.{exc}") from None
    if report.installed:
        fields: tuple[Any, ...] = (version, checksum, at, 0, "", "", 0.0)
    else:
        fields = (0, "", 0.0, version, checksum, reason, at)
    return (replica, *fields, peer, token_id, at, tenant)


def _record(row: Any) -> ReplicaRecord:
    (replica, tenant, version, checksum, installed_at, refused_version, refused_checksum, refused_reason,
     refused_at, peer, token_id, seen_at) = row
    return ReplicaRecord(str(replica), str(tenant), int(version), str(checksum), float(installed_at),
                         int(refused_version), str(refused_checksum), str(refused_reason), float(refused_at),
                         str(peer), str(token_id), float(seen_at))


class ReplicasPart(StoreBase):
    """`record_replicas`, `forget_replicas` and `list_replicas` for SQLiteStore and PostgresStore."""

    def record_replicas(self, reports: Sequence[ReplicaReport], at: float | None = None) -> None:
        if isinstance(reports, str | bytes) or not isinstance(reports, Sequence):
            raise ValueError(f"reports must be a list of ReplicaReport, not {type(reports).__name__}")
        when = _check_at(at)
        rows = [_row(i, report, when) for i, report in enumerate(reports)]   # all checked before any write
        if not rows:
            return
        with self._transaction(True) as conn:
            conn.executemany(RECORD_SQL, rows)

    def forget_replicas(self, replica: str, tenants: Sequence[str]) -> None:
        _check_replica(replica)
        if isinstance(tenants, str | bytes) or not isinstance(tenants, Sequence):
            raise ValueError(f"tenants must be a list of tenant ids, not {type(tenants).__name__}")
        keys = [(replica, _check_tenant(t, f"tenants[{i}]")) for i, t in enumerate(tenants)]
        if not keys:
            return
        with self._transaction(True) as conn:
            conn.executemany(f"DELETE FROM {_R} WHERE replica = ? AND tenant = ?", keys)

    def list_replicas(self, tenant: str = "", replica: str = "") -> list[ReplicaRecord]:
        if tenant != "":
            _check_tenant(tenant)
        if replica != "":
            _check_replica(replica)
        args = tuple(v for v in (replica, tenant) if v)
        return [_record(r) for r in self._read(LIST_SQL[bool(tenant), bool(replica)], args)]
