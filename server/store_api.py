"""The one narrow interface between callgate's service and its state (SPEC §5).

Everything stored goes through `Store`: settings versions and their history,
blacklist patches, compiled snapshot blobs, and (for the call lifecycle and
billing issue) calls and the ledger.  The embedded default is
`server.store.SQLiteStore` (one SQLite file in WAL mode, shared by every
worker process); a PostgreSQL store implements the same methods.

All methods are synchronous and safe to call from several threads and
several processes at once; the async service calls them in a thread.
Money is integer micro-units (1e-6 of the currency), never float.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class StoreError(Exception):
    """Base class of the store's refusals (each maps to one gRPC status)."""


class NotFound(StoreError):
    """No such tenant or version (gRPC NOT_FOUND)."""


class StoreBusy(StoreError):
    """The store stayed locked by other writers for longer than its busy timeout (gRPC UNAVAILABLE: retry)."""


class VersionConflict(StoreError):
    """expected_version is not the version in force (gRPC FAILED_PRECONDITION)."""

    def __init__(self, tenant: str, expected: int, actual: int):
        super().__init__(f"tenant {tenant!r} is at version {actual}, not {expected}: "
                         "read the current settings and push again")
        self.tenant, self.expected, self.actual = tenant, expected, actual


@dataclass(frozen=True, slots=True)
class VersionRecord:
    tenant: str
    version: int
    kind: str                   # "push" | "rollback" | "patch"
    created_at: int             # UTC seconds
    comment: str
    in_force: bool
    document: bytes | None = None  # JSON of the effective document, when asked for


@dataclass(frozen=True, slots=True)
class Poll:
    """What a worker checks several times a second: versions in force and balances, per tenant."""

    versions: dict[str, int]
    balances: dict[str, int]      # micro-units; tenants without ledger entries are absent (0)


@dataclass(frozen=True, slots=True)
class PatchResult:
    version: int
    added: int                  # numbers that were not on the list
    removed: int                # numbers that were on the list
    size: int                   # entries on the list after the patch


class Store(Protocol):
    # -- settings ----------------------------------------------------------
    def current_versions(self) -> dict[str, int]:
        """Tenant -> version in force, for every tenant.  Cheap: workers poll it."""
        ...

    def poll(self) -> Poll | None:
        """Versions and balances without waiting on a lock: None if the store is busy this instant.

        Called from the worker's event loop, several times a second, so it
        must cost microseconds when nothing changed and never block.
        """
        ...

    def commit_version(self, tenant: str, kind: str, document: bytes, snapshot: bytes,
                       expected_version: int | None, comment: str = "") -> int:
        """Store a whole effective document (JSON bytes) and its compiled snapshot as the next version.

        Atomic: checks `expected_version` (None: no check; 0: the tenant must
        have no version yet) against the version in force, inserts version
        N+1 and puts it in force, or raises VersionConflict and changes nothing.
        """
        ...

    def patch_list(self, tenant: str, list_name: str, add: list[str], remove: list[str],
                   snapshot_for: SnapshotBuilder, expected_version: int | None) -> PatchResult:
        """Add and remove E.164 numbers on "blacklist" or "offhours_blacklist" as a new version.

        The patch itself is stored as rows (not a copy of the document); the
        effective document of the new version is the previous one with the
        patch applied.  A patch that changes nothing (adds listed numbers,
        removes unlisted ones) makes no version and returns the current one.
        `snapshot_for(document_json) -> snapshot bytes` compiles it, outside
        the write lock (other writers are not held up by a long compile);
        the write then checks that the version compiled is still the one in
        force.  A failure changes nothing.
        Raises NotFound if the tenant has no settings, VersionConflict as above.
        """
        ...

    def get_version(self, tenant: str, version: int | None = None) -> VersionRecord:
        """One version with its effective document (None: the version in force); NotFound if absent."""
        ...

    def list_versions(self, tenant: str, limit: int = 50) -> list[VersionRecord]:
        """Newest first, without documents; NotFound if the tenant has none."""
        ...

    def snapshot(self, tenant: str, version: int) -> bytes | None:
        """The compiled snapshot blob stored with that version, if still kept."""
        ...

    # -- balances (filled by the billing issue) ----------------------------
    def balance(self, tenant: str) -> int:
        """The tenant's balance in micro-units: the sum of its ledger (0 if empty)."""
        ...

    def credit(self, tenant: str, amount_micro: int, kind: str, ref: str) -> bool:
        """Add a ledger entry, idempotent on (tenant, kind, ref); False if it was already there."""
        ...

    # -- ringing calls (filled by CallEvent) --------------------------------
    def ring(self, tenant: str, call_id: str, user: str, at: int, direction: str, caller: str,
             called: str) -> None:
        """Record a call ringing at `user` (idempotent per call id)."""
        ...

    def answer(self, tenant: str, call_id: str, user: str, at: int) -> bool:
        """Mark a ringing call answered by `user`; False if it was not ringing (already answered/ended)."""
        ...

    def end(self, tenant: str, call_id: str, at: int) -> bool:
        """Mark a call ended; False if it was unknown or already ended."""
        ...

    def ringing_calls(self, tenant: str) -> list[tuple[str, str, int]]:
        """(call_id, user, since) of the tenant's calls ringing and unanswered, oldest first."""
        ...

    def close(self) -> None:
        ...


class SnapshotBuilder(Protocol):
    def __call__(self, document: bytes) -> bytes: ...
