"""`Decisions.WatchSnapshots`: proxy hosts' replicas of the compiled snapshots, kept in step like Envoy's xDS.

A replica (`callgate replica`, server/replica/) opens one stream and says
who it is, which tenants it wants (none: every tenant) and what it holds
(tenant -> version and checksum).  This worker then sends every snapshot in
force that the replica lacks, in pieces of at most `PIECE_BYTES`, says
`synced` once everything asked for has been sent, and from then on sends
each tenant's snapshot again whenever a new one comes into force in this
worker (a push, a patch, a rollback, a document decision: anything that
replaces the snapshot) and a removal when the tenant goes.  While nothing
changes it sends a heartbeat every `HEARTBEAT_S`, by which the replica
knows how old its copy may be.

What is sent is the snapshot this worker decides with, serialized
(`engine.snapshot.dumps`: the version's arrays with its documents' state),
so a replica's answers are this worker's.  Its identity is (version,
sha256 of the blob): a document decision changes the blob, not the version.

Bounded whatever the replica does:
- flow control: each piece is handed to gRPC and awaited before the next
  (the async generator is pulled one message at a time), so a replica
  that reads slowly holds one piece in this worker, not a queue;
- coalescing: changes mark tenants "dirty" (a set); a tenant is serialized
  when its turn comes, at the version then in force, so ten pushes while a
  slow replica reads are one snapshot, the newest;
- reports: the replica answers each version with an ack (installed) or a
  refusal with its reason; only answers about what this stream sent (or the
  replica said it held) are taken, and they go to the store in one write
  per `REPORT_EVERY_S` per worker, the latest per (replica, tenant), so a
  flood of acks costs at most one small transaction a moment.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import grpc

from callgate.v1 import decisions_pb2
from engine import CoreSnapshot
from engine.snapshot import dumps
from server import metrics
from server.rpc import auth
from server.rpc.errors import RequestError
from server.store.api import ReplicaReport, StoreError
from server.worker.state import State

log = logging.getLogger("callgate.replicas")

PIECE_BYTES = 256 * 1024    # a 1 M-entry blacklist is some 30 pieces: each awaited, none queued
HEARTBEAT_S = 1.0           # while nothing changes: how the replica knows its copy's age
FIRST_REQUEST_S = 10.0      # the replica's first message (who it is, what it holds) is due this soon
REPORT_EVERY_S = 0.2        # replicas' acks and refusals reach the store in one write this often per worker
RETRY_PAUSE_S = 1.0         # after a write the store failed
MAX_TENANTS = 100_000       # tenants named (wanted, held) in a first message
MAX_PENDING_REPORTS = 100_000   # reports, and forgets, waiting for the store (the store away): at most, in all
MAX_STREAMS = 1_000             # replica streams one worker follows at once
MAX_LABELLED = 1_000            # replica names one worker labels its gauge with; later names count as "other"
REPLICA_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}")
CHECKSUM = re.compile(r"[0-9a-f]{64}")


@dataclass
class _Blob:
    snap: CoreSnapshot
    data: bytes
    checksum: str


def _host(peer: str) -> str:
    """A gRPC peer ("ipv4:10.0.0.7:40000", "ipv6:[::1]:5000", "unix:...") without its port."""
    return peer.rsplit(":", 1)[0] if peer.startswith(("ipv4:", "ipv6:")) else peer


def _serialize(snap: CoreSnapshot) -> _Blob:
    data = dumps(snap)
    return _Blob(snap, data, hashlib.sha256(data).hexdigest())


@dataclass(eq=False)   # each stream is itself (hashed by identity, kept in a set)
class _Stream:
    """One replica's stream, as its sender and its ack reader share it."""

    replica: str
    peer: str
    token_id: str
    wanted: frozenset[str] | None
    loop: asyncio.AbstractEventLoop
    held: dict[str, tuple[int, str]]          # what the replica holds or was sent (tenant -> version, checksum)
    refused: dict[str, tuple[int, str]] = field(default_factory=dict)  # what it refused for good: never sent
    dirty: set[str] = field(default_factory=set)
    sent: dict[str, tuple[int, str]] = field(default_factory=dict)  # what this stream sent: the acks it takes
    removals: set[str] = field(default_factory=set)                 # the removals it sent
    behind: set[str] = field(default_factory=set)  # sent, not yet installed
    logged: set[tuple[str, int, str]] = field(default_factory=set)   # refusals logged (once each per stream)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    thread: int = field(default_factory=threading.get_ident)

    def mark(self, tenant: str) -> None:
        if self.wanted is not None and tenant not in self.wanted:
            return
        self.dirty.add(tenant)
        if threading.get_ident() == self.thread:
            self.wake.set()
        else:  # an install made from a thread: asyncio's event is the loop's to set
            self.loop.call_soon_threadsafe(self.wake.set)


class SnapshotFeed:
    """A worker's side of every replica stream: each snapshot in force serialized once, the streams to wake when
    a tenant changes, the replicas' reports written to the store in batches."""

    def __init__(self, state: State) -> None:
        self.state = state
        self._blobs: dict[str, _Blob] = {}
        self._streams: set[_Stream] = set()
        # waiting for the store, in the order heard: the latest install and the latest refusal of each (replica,
        # tenant), and the removals it answered (what a replica says last of a tenant is what is written)
        self._reports: dict[tuple[str, str, bool], ReplicaReport] = {}
        self._forgotten: dict[tuple[str, str], object] = {}   # (each answer a mark of its own: see _flush)
        self._labelled: set[str] = set()
        self._serializing: dict[str, tuple[CoreSnapshot, asyncio.Future[_Blob]]] = {}
        self._flusher: asyncio.Task[None] | None = None
        state.engine.listeners.append(self._changed)

    def _changed(self, tenant: str) -> None:
        cached = self._blobs.get(tenant)
        if cached is not None and cached.snap is not self.state.engine.get(tenant):
            self._blobs.pop(tenant, None)   # a version no longer in force is never sent again: not kept either
        for stream in list(self._streams):
            stream.mark(tenant)

    async def _blob(self, snap: CoreSnapshot) -> _Blob:
        """The blob of `snap`, serialized once however many streams ask for it at once (every replica comes back
        after a server restart, each resume comparing checksums)."""
        cached = self._blobs.get(snap.tenant)
        if cached is not None and cached.snap is snap:
            return cached
        pending = self._serializing.get(snap.tenant)
        if pending is None or pending[0] is not snap:
            # a task of its own: a stream that goes away while it runs does not cancel it for the others
            task = asyncio.ensure_future(asyncio.to_thread(_serialize, snap))
            made = pending = (snap, task)

            def done(t: asyncio.Future[_Blob], tenant: str = snap.tenant) -> None:
                if self._serializing.get(tenant) is made:
                    del self._serializing[tenant]
                if not t.cancelled():
                    t.exception()   # retrieved: raised to each stream that waits, never logged as unretrieved

            task.add_done_callback(done)
            self._serializing[snap.tenant] = pending
        blob = await asyncio.shield(pending[1])
        if self.state.engine.get(snap.tenant) is snap:  # still in force: worth keeping for the next replica
            self._blobs[snap.tenant] = blob
        return blob

    async def _in_store(self, stream: _Stream) -> dict[str, int]:
        """The store's versions in force (read once per round of a stream, only when a removal or an older
        version is in question); when the store cannot say, what the replica holds: nothing changes."""
        try:
            return await asyncio.to_thread(self.state.store.current_versions)
        except Exception:
            return {t: h[0] for t, h in stream.held.items()}

    # -- the stream ---------------------------------------------------------------------------------------

    async def watch(self, requests: AsyncIterator[decisions_pb2.WatchRequest],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[decisions_pb2.SnapshotPiece]:
        stream = await self._open(requests, context)
        if len(self._streams) >= MAX_STREAMS:
            raise RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, f"this worker follows {len(self._streams):,} "
                                                                  "replicas already: try again later, or another")
        twin = next((s for s in self._streams if s.replica == stream.replica and _host(s.peer) != _host(stream.peer)),
                    None)
        if twin is not None:   # one row of `callgate replicas` for two hosts: each overwrites the other's reports
            log.warning("two replicas call themselves %s (from %s and %s): give each its own --name",
                        stream.replica, twin.peer, stream.peer,
                        extra={"event": "replica_name_shared", "replica": stream.replica})
        other = next((s for s in self._streams if s.replica == stream.replica and s.token_id != stream.token_id),
                     None)
        if other is not None:   # (a name is the replica's own choice, not bound to a token: say so when two use one)
            log.warning("replica %s connected with token %s while a stream of token %s holds that name: another "
                        "proxy under its name, or its token rotated (`callgate replicas` shows each row's token)",
                        stream.replica, stream.token_id or "-", other.token_id or "-",
                        extra={"event": "replica_name_other_token", "replica": stream.replica,
                               "token_id": stream.token_id, "held_by": other.token_id})
        reader = asyncio.ensure_future(self._read_reports(requests, stream))
        self._streams.add(stream)
        metrics.REPLICA_STREAMS.inc()
        log.info("replica %s connected from %s", stream.replica, stream.peer,
                 extra={"event": "replica_connected", "replica": stream.replica, "peer": stream.peer,
                        "held": len(stream.held)})
        try:
            async for piece in self._send(stream, reader):
                yield piece
        finally:
            self._streams.discard(stream)
            reader.cancel()
            metrics.REPLICA_STREAMS.dec()
            metrics.REPLICA_BEHIND.labels(self._label(stream.replica)).set(0)
            log.info("replica %s disconnected", stream.replica,
                     extra={"event": "replica_disconnected", "replica": stream.replica})

    async def _open(self, requests: AsyncIterator[decisions_pb2.WatchRequest],
                    context: grpc.aio.ServicerContext) -> _Stream:
        bad = grpc.StatusCode.INVALID_ARGUMENT
        try:
            first = await asyncio.wait_for(anext(aiter(requests), None), FIRST_REQUEST_S)
        except TimeoutError:
            raise RequestError(bad, f"no first message within {FIRST_REQUEST_S:g} s: send the replica's name, "
                                    "the tenants it wants and what it holds") from None
        if first is None:
            raise RequestError(bad, "the stream ended before its first message")
        if first.HasField("ack"):
            raise RequestError(bad, "the first message says who the replica is, not an ack")
        if not REPLICA_NAME.fullmatch(first.replica):
            raise RequestError(bad, "replica is its name: 1 to 128 letters, digits and _.:@- (its host name), "
                                    f"not {first.replica[:64]!r}")
        if len(first.tenants) > MAX_TENANTS or len(first.held) > MAX_TENANTS or len(first.refused) > MAX_TENANTS:
            raise RequestError(bad, f"at most {MAX_TENANTS:,} tenants wanted, held or refused in one stream")
        for tenant in (*first.tenants, *first.held, *first.refused):
            if not 0 < len(tenant) <= 64:
                raise RequestError(bad, f"tenant ids are 1 to 64 characters, not {tenant[:64]!r}")
        held: dict[str, tuple[int, str]] = {}
        refused: dict[str, tuple[int, str]] = {}
        for name, given, into in (("held", first.held, held), ("refused", first.refused, refused)):
            for tenant, h in given.items():
                if h.version < 1 or not CHECKSUM.fullmatch(h.checksum):
                    raise RequestError(bad, f"{name}[{tenant[:64]!r}]: version >= 1 and the blob's sha256 in "
                                            "lowercase hex")
                into[tenant] = (h.version, h.checksum)
        principal = auth.CURRENT.get()
        peer = context.peer() if hasattr(context, "peer") else ""
        wanted = frozenset(first.tenants) if first.tenants else None
        stream = _Stream(first.replica, str(peer)[:128], principal.token_id if principal else "", wanted,
                         asyncio.get_running_loop(), held, refused)
        # everything it wants, and whatever it holds that may have gone (a removal while it was away)
        stream.dirty.update(wanted if wanted is not None else self.state.engine.snapshots)
        stream.dirty.update(t for t in held if wanted is None or t in wanted)
        return stream

    async def _send(self, stream: _Stream,
                    reader: asyncio.Future[None]) -> AsyncIterator[decisions_pb2.SnapshotPiece]:
        engine = self.state.engine
        synced = False
        while True:
            if reader.done():  # the replica closed its side (or its messages were refused): the stream ends
                reader.result()
                return
            stream.wake.clear()
            dirty, stream.dirty = stream.dirty, set()
            in_store: dict[str, int] | None = None
            for tenant in sorted(dirty):
                snap = engine.get(tenant)
                if snap is None:
                    if tenant not in stream.held:
                        continue
                    # Not in this worker is not removed: a worker just started, or one whose install of the
                    # tenant failed, lacks it too.  Only the store says a tenant is gone; until this worker has
                    # it, the replica keeps what it holds (and gets the new one when it comes into force here).
                    if in_store is None:
                        in_store = await self._in_store(stream)
                    if tenant in in_store:
                        continue
                    stream.held.pop(tenant, None)
                    stream.behind.discard(tenant)
                    stream.removals.add(tenant)
                    yield decisions_pb2.SnapshotPiece(tenant=tenant, removed=True, server_time_ms=_now_ms())
                    continue
                held = stream.held.get(tenant)
                if held is not None and held[0] > snap.version:
                    # The replica holds a newer version than this worker has in force: this worker is behind
                    # (it just started, or its change feed has not brought the version yet; the replica came
                    # from another worker or host).  Sending would roll the replica back; this worker's own
                    # install of the newer version marks the tenant again.  Only when the store itself is
                    # behind what the replica holds (the tenant removed and made again, a store restored from
                    # a backup) is the older version the one in force, and sent.
                    if in_store is None:
                        in_store = await self._in_store(stream)
                    if in_store.get(tenant, held[0]) >= held[0]:
                        continue
                blob = await self._blob(snap)
                if held == (snap.version, blob.checksum):
                    continue  # the replica holds it already (a resume)
                if stream.refused.get(tenant) == (snap.version, blob.checksum):
                    stream.behind.add(tenant)   # refused for good: it waits for the next version, behind
                    yield decisions_pb2.SnapshotPiece(tenant=tenant, version=snap.version, checksum=blob.checksum,
                                                      refused=True, server_time_ms=_now_ms())
                    continue
                for piece in _pieces(blob):
                    yield piece
                stream.held[tenant] = stream.sent[tenant] = (snap.version, blob.checksum)
                stream.behind.add(tenant)
                metrics.REPLICA_SENT.inc()
            metrics.REPLICA_BEHIND.labels(self._label(stream.replica)).set(len(stream.behind))
            if not synced:
                synced = True
                yield decisions_pb2.SnapshotPiece(synced=True, server_time_ms=_now_ms())
                continue
            if stream.dirty:
                continue
            waiter = asyncio.ensure_future(stream.wake.wait())
            done, _ = await asyncio.wait((waiter, reader), timeout=HEARTBEAT_S,
                                         return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not done:
                yield decisions_pb2.SnapshotPiece(heartbeat=True, server_time_ms=_now_ms())

    async def _read_reports(self, requests: AsyncIterator[decisions_pb2.WatchRequest], stream: _Stream) -> None:
        async for request in requests:
            if not request.HasField("ack"):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "after the first message, every message is an ack")
            ack = request.ack
            if ack.removed:
                if ack.tenant in stream.removals:   # the answer to a removal this stream sent
                    stream.removals.discard(ack.tenant)
                    self._forget(stream.replica, ack.tenant)
                continue
            if stream.sent.get(ack.tenant) != (ack.version, ack.checksum):
                continue  # not what this stream sent (late, claimed, or made up): nothing to record
            if ack.ok:
                stream.behind.discard(ack.tenant)
            elif (ack.tenant, ack.version, ack.checksum) not in stream.logged:   # once: a replay logs nothing
                stream.logged.add((ack.tenant, ack.version, ack.checksum))
                log.warning("replica %s refused %s version %s: %s", stream.replica, ack.tenant, ack.version,
                            ack.reason[:200], extra={"event": "replica_refused", "replica": stream.replica,
                                                     "tenant": ack.tenant, "version": ack.version})
            metrics.REPLICA_REPORTS.labels("installed" if ack.ok else "refused").inc()
            metrics.REPLICA_BEHIND.labels(self._label(stream.replica)).set(len(stream.behind))
            self._report(ReplicaReport(stream.replica, ack.tenant, ack.version, ack.checksum, ack.ok,
                                       ack.reason[:500], stream.peer, stream.token_id, at=time.time()))

    # -- reports to the store -----------------------------------------------------------------------------

    def _label(self, replica: str) -> str:
        """The gauge's label for a replica: its name, or "other" past MAX_LABELLED names (each name a client
        chooses would be a series for good: in multiprocess mode a closed stream's series stays, at 0)."""
        if replica not in self._labelled:
            if len(self._labelled) >= MAX_LABELLED:
                return "other"
            self._labelled.add(replica)
        return replica

    def _report(self, report: ReplicaReport) -> None:
        key = (report.replica, report.tenant, report.installed)
        if key not in self._reports and len(self._reports) + len(self._forgotten) >= MAX_PENDING_REPORTS:
            return  # the store has been away for long: the replica reports again at its next version
        self._reports.pop(key, None)   # (to the end: the order heard)
        self._reports[key] = report
        self._forgotten.pop((report.replica, report.tenant), None)   # a removal answered before it is past
        self._schedule()

    def _forget(self, replica: str, tenant: str) -> None:
        key = (replica, tenant)
        for installed in (True, False):   # reports heard before the removal's answer are past
            self._reports.pop((replica, tenant, installed), None)
        if key in self._forgotten or len(self._reports) + len(self._forgotten) < MAX_PENDING_REPORTS:
            self._forgotten[key] = object()
        self._schedule()

    def _schedule(self) -> None:
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        """Write what the replicas reported, until nothing is left.  What a write takes stays waiting until the
        store has it (so the bound counts it, and what is heard meanwhile replaces it where it is newer); a store
        that fails keeps it all for a second try a second later."""
        while self._reports or self._forgotten:
            await asyncio.sleep(REPORT_EVERY_S)
            reports, forgotten = dict(self._reports), dict(self._forgotten)
            by_replica: dict[str, list[str]] = {}
            for replica, tenant in forgotten:
                by_replica.setdefault(replica, []).append(tenant)
            store = self.state.store
            try:   # (a report and a removal of the same row never both wait: each drops the other, see above)
                if reports:
                    await asyncio.to_thread(store.record_replicas, list(reports.values()))
                for replica, tenants in by_replica.items():
                    await asyncio.to_thread(store.forget_replicas, replica, sorted(tenants))
            except StoreError as exc:
                log.warning("replica reports not written (%s): kept for the next try", exc,
                            extra={"event": "replica_reports_delayed", "reports": len(reports)})
                await asyncio.sleep(RETRY_PAUSE_S)
                continue
            except Exception:  # a bug: logged, this batch dropped, the next ones still written
                log.exception("replica reports not written", extra={"event": "replica_reports_failed"})
            for key, report in reports.items():   # written: gone, unless something newer came meanwhile
                if self._reports.get(key) is report:
                    del self._reports[key]
            for gone, mark in forgotten.items():
                if self._forgotten.get(gone) is mark:
                    del self._forgotten[gone]


def _pieces(blob: _Blob) -> Iterator[decisions_pb2.SnapshotPiece]:
    """The blob's pieces, made one at a time (a piece is copied into its message only when its turn comes)."""
    size, snap = len(blob.data), blob.snap
    view = memoryview(blob.data)
    for offset in range(0, max(size, 1), PIECE_BYTES):
        end = min(offset + PIECE_BYTES, size)
        yield decisions_pb2.SnapshotPiece(
            tenant=snap.tenant, version=snap.version, checksum=blob.checksum, size=size, offset=offset,
            data=bytes(view[offset:end]), last=end >= size, server_time_ms=_now_ms())


def _now_ms() -> int:
    return int(time.time() * 1000)
