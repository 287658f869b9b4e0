"""What one worker holds: the engine with every tenant's snapshot, the balances it last read, and the refresh that
brings both up to the store's versions (a damaged or missing blob compiled again from its document).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from engine.engine import Engine
from engine.snapshot import loads, with_documents
from server import metrics
from server.rules import calls
from server.store.api import SnapshotDamaged, Store, StoreError
from server.worker.compiler import Compiler

log = logging.getLogger("callgate.service")


class State:
    """What one worker holds: the engine (snapshots), balances, the store handle."""

    def __init__(self, store: Store, compiler: Compiler, events: calls.EventOptions | None = None) -> None:
        self.store = store
        self.compiler = compiler
        self.events = events or calls.EventOptions()
        self.engine = Engine()
        # what each tenant may still spend: its balance less what its calls in progress hold
        self.balances: dict[str, int] = {}
        self.documents: dict[str, int] = {}  # the store's per-tenant document counter last applied
        self.started = time.monotonic()
        self.decisions = 0
        # tenants whose new version this worker is committing and installing itself: the
        # watcher leaves them alone (else it loads the same big snapshot a second time)
        self.installing: set[str] = set()
        self.failed: dict[str, tuple[int, float]] = {}  # tenant -> (version that failed to install, retry after)
        self.recheck: set[str] = set()  # tenants the next refresh looks at whatever the store's feed says

    async def install_blob(self, tenant: str, version: int, blob: bytes) -> None:
        # loads() parses container headers and builds the lookup indexes, mostly without the GIL
        snap = await asyncio.to_thread(loads, blob, version)
        if snap.tenant != tenant:
            raise RuntimeError(f"snapshot of version {version} is for {snap.tenant!r}, not {tenant!r}")
        if snap.meta.get("documents_required"):
            # approvals live in the store, not in the settings: a new version keeps them
            snap = with_documents(snap, *await asyncio.to_thread(self._documents, tenant))
        current = self.engine.get(tenant)
        if current is None or current.version < version:
            self.engine.install(snap)

    async def apply_documents(self, tenant: str) -> None:
        """Put the store's document approvals in force for a tenant, without a settings push."""
        current = self.engine.get(tenant)
        if current is None or not current.meta.get("documents_required"):
            return
        approved, rejected = await asyncio.to_thread(self._documents, tenant)
        latest = self.engine.get(tenant)
        if latest is not None and latest.version == current.version:  # not replaced meanwhile
            self.engine.install(with_documents(latest, approved, rejected))

    def forget(self, tenant: str) -> None:
        """A removed tenant out of this worker: its decisions answer NOT_FOUND from now on."""
        self.engine.remove(tenant)
        self.documents.pop(tenant, None)
        self.failed.pop(tenant, None)
        self.balances.pop(tenant, None)

    def _documents(self, tenant: str) -> tuple[list[str], dict[str, str]]:
        """(approved numbers, rejected numbers with their reasons), from a thread."""
        return self.store.approved_numbers(tenant), self.store.rejected_numbers(tenant)

    async def refresh(self) -> list[tuple[str, int]]:
        """Bring every tenant to the version in force in the store; returns what changed.

        The store's poll says which tenants changed since the last one (its
        change feed), so a tick costs what changed, not what there is: at
        rest, a SQLite poll is one pragma and a PostgreSQL poll a look at the
        notifications already received.  A PostgreSQL poll that has news to
        read goes to a thread (a network round trip); only a changed tenant
        costs thread work (fetching and loading its snapshot).
        """
        if getattr(self.store, "poll_blocks", False):
            poll = await asyncio.to_thread(self.store.poll)
        else:
            poll = self.store.poll()
        if poll is None:  # the store is busy this instant: try at the next tick
            return []
        if poll.changed is None:   # look at everyone
            scope: set[str] | None = None
            tenants: Iterable[str] = set(poll.versions) | set(self.engine.snapshots) | set(poll.balances)
        else:                      # what changed, and what this worker must look at again
            scope = set(poll.changed) | self.recheck
            tenants = scope
        self.recheck = set()
        # Tenants removed from the store (Admin.RemoveTenant through any worker) leave this one now: done before
        # any await, so a tenant this worker has just pushed (committed, installed, no longer `installing`) is
        # in the poll it is compared with.
        for tenant in [t for t in tenants if t in self.engine.snapshots and t not in poll.versions]:
            if tenant in self.installing:
                self.recheck.add(tenant)
                continue
            self.forget(tenant)
            log.info("tenant %s removed: no longer answered here", tenant,
                     extra={"event": "tenant_forgotten", "tenant": tenant})
        if scope is None:
            self.balances = {t: poll.available(t) for t in poll.balances.keys() | poll.reserved.keys()}
        else:
            for tenant in scope:
                if tenant in poll.balances or tenant in poll.reserved:
                    self.balances[tenant] = poll.available(tenant)
                else:
                    self.balances.pop(tenant, None)
        for tenant in [t for t in tenants if t in poll.documents]:
            counter = poll.documents[tenant]
            if self.documents.get(tenant) != counter:
                await self.apply_documents(tenant)
                self.documents[tenant] = counter
        changed = []
        now = time.monotonic()
        for tenant in [t for t in tenants if t in poll.versions]:
            version = poll.versions[tenant]
            current = self.engine.get(tenant)
            if current is not None and current.version >= version:
                continue
            if tenant in self.installing:  # this worker installs it itself; a newer one may come meanwhile
                self.recheck.add(tenant)
                continue
            failed = self.failed.get(tenant)
            if failed is not None and failed[0] == version and now < failed[1]:
                self.recheck.add(tenant)
                continue  # this version failed to install a moment ago: not on every tick
            try:
                await self._install_version(tenant, version)
            except Exception as exc:  # one tenant's trouble never stops the others from being brought up to date
                self.failed[tenant] = (version, now + 5.0)
                self.recheck.add(tenant)
                if failed is None or failed[0] != version:
                    log.error("tenant %s version %s cannot be installed: %s", tenant, version, exc,
                              exc_info=not isinstance(exc, StoreError),
                              extra={"event": "install_failed", "tenant": tenant, "version": version})
                continue
            self.failed.pop(tenant, None)
            changed.append((tenant, version))
        return changed

    async def _install_version(self, tenant: str, version: int) -> None:
        """Install the stored snapshot of a version; compile its document again when the blob is gone, damaged
        (its checksum) or refused by the loader, and put the good blob back in the store."""
        why = ""
        try:
            blob = await asyncio.to_thread(self.store.snapshot, tenant, version)
        except SnapshotDamaged as exc:
            blob, why = None, "checksum"
            log.error("%s: compiling it again from its document", exc,
                      extra={"event": "snapshot_damaged", "tenant": tenant, "version": version})
        if blob is not None:
            try:
                await self.install_blob(tenant, version, blob)
                return
            except ValueError as exc:  # the core's loader refuses what it cannot follow safely
                why = "refused"
                log.error("tenant %s version %s: the stored snapshot was refused (%s): compiling it again from its "
                          "document", tenant, version, exc,
                          extra={"event": "snapshot_damaged", "tenant": tenant, "version": version})
        record = await asyncio.to_thread(self.store.get_version, tenant, version)
        assert record.document is not None
        built = await self.compiler.build(record.document, "json")
        metrics.SNAPSHOT_REBUILDS.labels(why or "missing").inc()
        if why:
            replaced = await asyncio.to_thread(self.store.replace_snapshot, tenant, version, built.blob)
            log.warning("tenant %s version %s: snapshot compiled again from its document%s", tenant, version,
                        " and stored in place of the damaged one" if replaced else "",
                        extra={"event": "snapshot_rebuilt", "tenant": tenant, "version": version, "reason": why})
        await self.install_blob(tenant, version, built.blob)
