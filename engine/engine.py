"""Every tenant's compiled snapshot in one process, replaced atomically.

A decision looks the tenant's snapshot up once and runs entirely on that
object: a push that installs a new snapshot meanwhile replaces the dict
entry (one atomic store under the GIL) and never changes a snapshot in
use, so a reader sees the old version or the new one, never a mix.  Batch
decisions release the GIL and keep their snapshot alive by reference.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from decimal import Decimal
from types import MappingProxyType

from ._core import CoreDecision, CoreSnapshot
from .decision import RingingCall
from .money import to_micro
from .settings import Settings
from .snapshot import compile_settings, with_documents


class UnknownTenant(LookupError):
    """No settings have been pushed for this tenant."""

    def __init__(self, tenant: str):
        super().__init__(f"tenant {tenant!r} has no settings: push them first")
        self.tenant = tenant


def instant(at: int | float | dt.datetime) -> int:
    """UTC seconds of an instant given as epoch seconds or an aware datetime."""
    if isinstance(at, dt.datetime):
        if at.tzinfo is None:
            raise ValueError("a naive datetime is ambiguous: give it a time zone (UTC for the proxy's clock)")
        return int(at.timestamp() // 1)
    if isinstance(at, bool) or not isinstance(at, (int, float)):
        raise TypeError(f"an instant is epoch seconds or an aware datetime, not {type(at).__name__}")
    return int(at // 1)


class Engine:
    """Every tenant's snapshot in force, by tenant id; decisions on them."""

    def __init__(self) -> None:
        self._snapshots: dict[str, CoreSnapshot] = {}
        self._view: Mapping[str, CoreSnapshot] = MappingProxyType(self._snapshots)
        self.generation = 0  # moves on every install and removal: "has anything changed?" without a walk
        # called with the tenant after every install and removal (in the thread that made it): how a server's
        # snapshot feed learns what changed without walking every tenant
        self.listeners: list[Callable[[str], None]] = []

    @property
    def snapshots(self) -> Mapping[str, CoreSnapshot]:
        """The snapshots in force, by tenant: a live read-only view (`install` replaces its entries)."""
        return self._view

    def get(self, tenant: str) -> CoreSnapshot | None:
        """The tenant's snapshot in force, or None."""
        return self._snapshots.get(tenant)

    # -- snapshots ---------------------------------------------------------
    def install(self, snapshot: CoreSnapshot) -> None:
        """Put a compiled snapshot in force for its tenant (atomic)."""
        self._snapshots[snapshot.tenant] = snapshot
        self.generation += 1
        for listener in self.listeners:
            listener(snapshot.tenant)

    def remove(self, tenant: str) -> CoreSnapshot | None:
        """Take a tenant's snapshot out of force (atomic: a decision that looked it up before finishes on it,
        later ones find no tenant); returns it, or None if there was none."""
        self.generation += 1
        removed = self._snapshots.pop(tenant, None)
        for listener in self.listeners:
            listener(tenant)
        return removed

    def push(self, settings: Settings, version: int, approved: Iterable[str] = ()) -> CoreSnapshot:
        """Compile validated settings and put them in force."""
        snapshot = compile_settings(settings, version, approved)
        self.install(snapshot)
        return snapshot

    def set_approved(self, tenant: str, approved: Iterable[str]) -> CoreSnapshot:
        """Change which numbers have approved documents, without recompiling."""
        snapshot = with_documents(self.snapshot(tenant), approved)
        self.install(snapshot)
        return snapshot

    def snapshot(self, tenant: str) -> CoreSnapshot:
        try:
            return self._snapshots[tenant]
        except KeyError:
            raise UnknownTenant(tenant) from None

    def tenants(self) -> list[str]:
        return sorted(self._snapshots)

    # -- decisions ---------------------------------------------------------
    def inbound(self, tenant: str, caller: str, called: str, at: int | float | dt.datetime) -> CoreDecision:
        return self.snapshot(tenant).inbound(caller, called, instant(at))

    def outbound(self, tenant: str, user: str, destination: str, at: int | float | dt.datetime,
                 balance: Decimal | int | str) -> CoreDecision:
        return self.snapshot(tenant).outbound(user, destination, instant(at),
                                                  to_micro(Decimal(balance) if isinstance(balance, int) else balance))

    def pickup(self, tenant: str, user: str, dialed: str, ringing: Sequence[RingingCall]) -> CoreDecision:
        return self.snapshot(tenant).pickup(user, dialed, ringing)
