"""The store's settings part: versions (push, patch, rollback, transfer), the version in force, the history,
snapshot blobs checked against their checksums, the poll every worker makes, and the health probe.
"""

from __future__ import annotations

import os
import time

from engine.document_json import dumps_document, loads_document
from server.store import numbers as store_numbers
from server.store.api import (
    ListPatch,
    NotFound,
    PatchResult,
    SnapshotDamaged,
    StoreError,
    TenantFacts,
    TenantMissing,
    VersionConflict,
    VersionMoved,
    VersionRecord,
    VersionWrite,
)
from server.store.base import Conn, StoreBase
from server.store.checks import _check_bytes, _check_e164, _check_int, _check_numbers, _check_str, _check_tenant
from server.store.versions import (
    LIST_NAMES,
    apply_patch,
    checksum,
    effective,
    in_force,
    pack,
    put_in_force,
    store_snapshot,
    unpack,
)

COMMIT_KINDS = ("push", "rollback", "transfer", "resolve")  # "patch" versions are made by commit_patch only
SMALL_DOCUMENT = 256 * 1024  # commit_version re-checks documents up to this size


class SettingsPart(StoreBase):
    def current_versions(self) -> dict[str, int]:
        return {tenant: int(version) for tenant, version in self._read('SELECT tenant, version FROM "current"', ())}

    def snapshot_sizes(self) -> dict[str, tuple[int, int]]:
        # length() of a blob reads its record header, not its pages
        rows = self._read('SELECT c.tenant, c.version, length(s.blob) FROM "current" c '
                          "JOIN snapshots s ON s.tenant = c.tenant AND s.version = c.version", ())
        return {str(tenant): (int(version), int(size)) for tenant, version, size in rows}

    def commit_version(self, tenant: str, kind: str, document: bytes, snapshot: bytes,
                       expected_version: int | None, comment: str = "", *,
                       numbers: tuple[tuple[str, str], ...] | None = None, may_create: bool = True,
                       facts: TenantFacts | None = None) -> int:
        return self.commit_versions([VersionWrite(tenant, kind, document, snapshot, numbers, expected_version,
                                                  comment, facts)], may_create=may_create)[0]

    def commit_versions(self, writes: list[VersionWrite], *, may_create: bool = True) -> list[int]:
        if not isinstance(writes, list) or not writes or not all(isinstance(w, VersionWrite) for w in writes):
            raise ValueError("writes must be a non-empty list of VersionWrite")
        writes = [self._checked(w) for w in writes]
        if len({w.tenant for w in writes}) != len(writes):
            raise ValueError("at most one new version per tenant in one commit")
        packed = [pack(w.document) for w in writes]  # before the write lock: zlib lets the GIL go, the lock does not
        with self._transaction(write=True) as conn:
            return self._commit_in(conn, writes, may_create, int(time.time()), packed)

    def _checked(self, w: VersionWrite) -> VersionWrite:
        """The write with its arguments checked and its numbers known (outside the write lock)."""
        tenant = _check_tenant(w.tenant)
        if w.kind not in COMMIT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(COMMIT_KINDS)}, not {w.kind!r}")
        document = _check_bytes("document", w.document)
        _check_bytes("snapshot", w.snapshot)
        if w.expected_version is not None:
            _check_int("expected_version", w.expected_version, minimum=0)
        _check_str("comment", w.comment, allow_empty=True)
        numbers = w.numbers
        if numbers is not None:
            if not isinstance(numbers, tuple | list):
                raise ValueError("numbers must be a sequence of (number, line) pairs")
            numbers = tuple((_check_e164(f"numbers[{i}].number", n), _check_str(f"numbers[{i}].line", line))
                            for i, (n, line) in enumerate(numbers))
        # The caller validated the document whole (engine.settings); parsing 20 MB of JSON again
        # here would hold the GIL for a tenth of a second in a worker that is serving calls.
        # Small documents are still checked, which catches a caller that mixes tenants up.
        if not document.lstrip()[:1] == b"{":
            raise ValueError("document is not a JSON settings document: it does not start with {")
        facts = w.facts
        if facts is not None and not isinstance(facts, TenantFacts):
            raise ValueError("facts must be TenantFacts")
        if len(document) <= SMALL_DOCUMENT or numbers is None or facts is None:
            try:
                doc = loads_document(document)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ValueError(f"document is not a JSON settings document: {exc}") from None
            if "tenant" in doc and doc["tenant"] != tenant:
                raise ValueError(f"the document is for tenant {doc['tenant']!r}, not {tenant!r}")
            listed = store_numbers.document_numbers(doc)
            if numbers is not None and numbers != listed:
                raise ValueError(f"numbers do not match the document's numbers[] of tenant {tenant!r}")
            if facts is not None and facts != TenantFacts.of(doc):
                raise ValueError(f"facts do not match the document of tenant {tenant!r}")
            numbers, facts = listed, TenantFacts.of(doc)
        return VersionWrite(tenant, w.kind, document, w.snapshot, numbers, w.expected_version, w.comment[:500],
                            facts)

    def _commit_in(self, conn: Conn, writes: list[VersionWrite], may_create: bool, now: int,
                   packed: list[bytes] | None = None) -> list[int]:
        """Insert checked writes as new versions in force, with their numbers' ownership (the caller's transaction)."""
        versions = []
        for w in writes:
            current = in_force(conn, w.tenant)
            if w.expected_version is not None and w.expected_version != current:
                raise VersionConflict(w.tenant, w.expected_version, current)
            if current == 0 and not may_create:
                raise TenantMissing(f"tenant {w.tenant!r} does not exist: creating a tenant is an operator's or "
                                    "an owner's act")
            if current == 0:  # a new tenant; one made again after a removal goes on from its removal's row
                current = int(conn.execute("SELECT COALESCE(MAX(version), 0) FROM versions WHERE tenant = ?",
                                           (w.tenant,)).fetchone()[0])
            versions.append(current + 1)
        store_numbers.claim(conn, [(w.tenant, v, w.numbers or ()) for w, v in zip(writes, versions, strict=True)],
                            now)
        stored = packed if packed is not None else [pack(w.document) for w in writes]
        for w, version, document in zip(writes, versions, stored, strict=True):
            conn.execute("INSERT INTO versions (tenant, version, kind, document, created_at, comment) "
                         "VALUES (?, ?, ?, ?, ?, ?)", (w.tenant, version, w.kind, document, now, w.comment))
            store_snapshot(conn, w.tenant, version, w.snapshot)
            put_in_force(conn, w.tenant, version)
            if w.facts is not None:
                store_numbers.write_facts(conn, w.tenant, w.facts)
        return versions

    def prepare_patch(self, tenant: str, list_name: str, add: list[str], remove: list[str],
                      expected_version: int | None) -> ListPatch:
        _check_tenant(tenant)
        if list_name not in LIST_NAMES:
            raise ValueError(f"list_name must be one of {', '.join(LIST_NAMES)}, not {list_name!r}")
        add = _check_numbers("add", add)
        remove = _check_numbers("remove", remove)
        if not add and not remove:
            raise ValueError("nothing to patch: add and remove are both empty")
        if expected_version is not None:
            _check_int("expected_version", expected_version, minimum=0)
        with self._transaction(write=False) as conn:
            current = in_force(conn, tenant)
            if current == 0:
                raise NotFound(f"tenant {tenant!r} has no settings")
            if expected_version is not None and expected_version != current:
                raise VersionConflict(tenant, expected_version, current)
            doc = effective(conn, tenant, current)
        listed = doc.get(list_name)
        if listed is None:
            listed = []
        if not isinstance(listed, list) or not all(isinstance(n, str) for n in listed):
            raise StoreError(f"tenant {tenant!r} version {current}: {list_name!r} is not a list of numbers")
        present = set(listed)
        ops: list[tuple[str, str]] = []
        for number in remove:           # removes first, then adds (a number in both ends up listed)
            if number in present:
                present.discard(number)
                ops.append(("remove", number))
        for number in add:
            if number not in present:
                present.add(number)
                ops.append(("add", number))
        if not ops:  # nothing would change: no document to compile (a replayed patch is a no-op)
            return ListPatch(tenant, list_name, current, (), b"", len(listed), expected_version)
        apply_patch(doc, list_name, ops)
        return ListPatch(tenant, list_name, current, tuple(ops), dumps_document(doc), len(doc.get(list_name, [])),
                         expected_version)

    def commit_patch(self, patch: ListPatch, blob: bytes) -> PatchResult:
        if not isinstance(patch, ListPatch) or not patch.ops:
            raise ValueError("commit_patch takes a ListPatch from prepare_patch that changes something")
        _check_bytes("blob", blob)
        now = int(time.time())
        with self._transaction(write=True) as conn:
            latest = in_force(conn, patch.tenant)
            if latest != patch.base_version:
                if patch.expected_version is not None:
                    raise VersionConflict(patch.tenant, patch.expected_version, latest)
                raise VersionMoved(patch.tenant, patch.base_version, latest)
            version = patch.base_version + 1
            conn.execute("INSERT INTO versions (tenant, version, kind, document, created_at, comment) "
                         "VALUES (?, ?, 'patch', NULL, ?, ?)",
                         (patch.tenant, version, now, f"{patch.list_name}: +{patch.added} -{patch.removed}"))
            conn.executemany("INSERT INTO list_patches (tenant, version, seq, list_name, op, number) "
                             "VALUES (?, ?, ?, ?, ?, ?)",
                             [(patch.tenant, version, seq, patch.list_name, op, number)
                              for seq, (op, number) in enumerate(patch.ops)])
            store_snapshot(conn, patch.tenant, version, blob)
            put_in_force(conn, patch.tenant, version)
        return PatchResult(version=version, added=patch.added, removed=patch.removed, size=patch.size)

    def get_version(self, tenant: str, version: int | None = None) -> VersionRecord:
        _check_tenant(tenant)
        if version is not None:
            _check_int("version", version, minimum=1)
        with self._transaction(write=False) as conn:
            current = in_force(conn, tenant)
            if version is None:
                if current == 0:
                    raise NotFound(f"tenant {tenant!r} has no settings")
                version = current
            row = conn.execute("SELECT kind, created_at, comment, document FROM versions "
                               "WHERE tenant = ? AND version = ?", (tenant, version)).fetchone()
            if row is None:
                raise NotFound(f"tenant {tenant!r} has no version {version}")
            kind, created_at, comment, document = row
            if kind == "removed":  # server/store/removal.py: the row that records a removal has no settings
                raise NotFound(f"tenant {tenant!r} version {version} records its removal: it has no settings")
            if document is None:
                document = dumps_document(effective(conn, tenant, version))
            else:
                document = unpack(document)
        return VersionRecord(tenant=tenant, version=version, kind=kind, created_at=int(created_at),
                             comment=comment, in_force=version == current, document=bytes(document))

    def list_versions(self, tenant: str, limit: int = 50) -> list[VersionRecord]:
        _check_tenant(tenant)
        _check_int("limit", limit, minimum=1)
        with self._transaction(write=False) as conn:
            current = in_force(conn, tenant)
            rows = conn.execute("SELECT version, kind, created_at, comment FROM versions WHERE tenant = ? "
                                "ORDER BY version DESC LIMIT ?", (tenant, limit)).fetchall()
        if not rows:
            raise NotFound(f"tenant {tenant!r} has no settings")
        return [VersionRecord(tenant=tenant, version=int(v), kind=kind, created_at=int(created_at),
                              comment=comment, in_force=v == current)
                for v, kind, created_at, comment in rows]

    def snapshot(self, tenant: str, version: int) -> bytes | None:
        _check_tenant(tenant)
        _check_int("version", version, minimum=1)
        rows = self._read("SELECT blob, checksum FROM snapshots WHERE tenant = ? AND version = ?", (tenant, version))
        if not rows:
            return None
        blob, expected = bytes(rows[0][0]), rows[0][1]
        if expected != checksum(blob):
            raise SnapshotDamaged(tenant, version, f"checksum {checksum(blob)}, stored {expected or '(none)'}")
        return blob

    def replace_snapshot(self, tenant: str, version: int, blob: bytes) -> bool:
        _check_tenant(tenant)
        _check_int("version", version, minimum=1)
        _check_bytes("blob", blob)
        with self._transaction(write=True) as conn:
            cur = conn.execute("UPDATE snapshots SET blob = ?, checksum = ? WHERE tenant = ? AND version = ?",
                               (blob, checksum(blob), tenant, version))
            return cur.rowcount > 0

    def probe(self) -> None:
        with self._transaction(write=True) as conn:
            conn.execute("INSERT INTO health_probe (pid, at) VALUES (?, ?) ON CONFLICT (pid) DO UPDATE SET at = "
                         "excluded.at", (os.getpid(), time.time()))
