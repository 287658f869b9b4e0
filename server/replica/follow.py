"""The replica process: follow `Decisions.WatchSnapshots` and keep the snapshots in a directory.

One `Follower` per host.  It opens the stream saying what the directory
holds (so a restart or a reconnect resumes: only what changed meanwhile is
sent), puts each snapshot's pieces together, checks and writes it
(`engine.replica.write_snapshot`: the checksum, the core's checks, an atomic
replace) in a thread, and answers the server: installed, or refused with
the reason (a damaged or foreign blob, a full disk) while the last good file
stays in force.  Every message from the server (heartbeats come every
second while nothing changes) refreshes the directory's heartbeat, from
which every reader knows how old its answers may be.  When the stream
breaks it tries again, backing off from 0.5 s to 10 s; the files stay and
keep answering meanwhile (the readers' staleness policy decides for how
long they are trusted).

Bounds: a blob larger than `max_bytes` is refused without being kept; a
piece out of order drops the blob being assembled (and the stream: the
server is not the one this follower talks to, or the network lied).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from callgate.v1 import decisions_pb2, decisions_pb2_grpc
from engine import replica

log = logging.getLogger("callgate.replica")

BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
SILENCE_S = 10.0             # nothing from the server for this long (it sends a heartbeat a second): a dead link
HEARTBEAT_WRITE_S = 0.25     # the heartbeat file is written at most this often (a message may come every ms)


class StreamBroken(Exception):
    """The server's messages cannot be followed (pieces out of order): the stream is opened again."""


@dataclass
class FollowStats:
    """What a follower has done, for its log lines, its tests and the propagation benchmark."""

    connected: int = 0
    installed: int = 0
    refused: int = 0
    removed: int = 0
    synced_at: float = 0.0            # when the server last said "synced" (every tenant sent once)
    # (tenant, version, time.time()) of the last 10,000 installs
    installs: list[tuple[str, int, float]] = field(default_factory=list)


@dataclass
class _Assembly:
    tenant: str
    version: int
    checksum: str
    size: int
    parts: list[bytes] = field(default_factory=list)
    received: int = 0


class Follower:
    """Keeps `directory` in step with the server at the other end of `channel`."""

    def __init__(self, channel: Callable[[], Any], directory: Path, name: str, tenants: list[str] | None = None,
                 max_bytes: int = 1 << 30) -> None:
        self.channel, self.directory, self.name = channel, Path(directory), name
        self.tenants = tenants or []
        self.max_bytes = max_bytes
        self.stats = FollowStats()
        self.directory.mkdir(parents=True, exist_ok=True)
        self._heard = 0.0

    async def run(self, stop: asyncio.Event) -> None:
        """Follow until `stop` is set, reconnecting after every failure."""
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self._session(stop)
            except (grpc.aio.AioRpcError, StreamBroken) as exc:
                code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else "BROKEN"
                details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                log.warning("stream to the server broken (%s: %s): the files keep answering; trying again",
                            code, (details or "")[:200], extra={"event": "replica_stream_broken", "code": code})
            except (OSError, ValueError) as exc:  # the directory (a permission, a full disk, a damaged page)
                log.error("the replica directory %s failed (%s): the files keep answering; trying again",
                          self.directory, exc, extra={"event": "replica_directory_failed"})
            if stop.is_set():
                return
            failures = 0 if time.monotonic() - started > 30 else failures + 1
            delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except TimeoutError:
                pass

    async def _session(self, stop: asyncio.Event) -> None:
        held = await asyncio.to_thread(replica.held, self.directory)
        if self.tenants:   # files of tenants no longer followed (--only changed): gone, not frozen as fresh
            for tenant in [t for t in held if t not in self.tenants]:
                await asyncio.to_thread(replica.remove_snapshot, self.directory, tenant)
                del held[tenant]
        first = decisions_pb2.WatchRequest(replica=self.name, tenants=self.tenants)
        for tenant, (version, checksum) in held.items():
            first.held[tenant].version = version
            first.held[tenant].checksum = checksum
        acks: asyncio.Queue[decisions_pb2.WatchRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[decisions_pb2.WatchRequest]:
            yield first
            while True:
                ack = await acks.get()
                if ack is None:
                    return
                yield ack

        async with self.channel() as channel:
            call = decisions_pb2_grpc.DecisionsStub(channel).WatchSnapshots(requests())
            stopping = asyncio.ensure_future(stop.wait())
            self.stats.connected += 1
            log.info("following %d tenant(s) held in %s", len(held), self.directory,
                     extra={"event": "replica_following", "held": len(held)})
            try:
                assembly: _Assembly | None = None
                synced = False   # the heartbeat moves only once this session is in step: until then the files
                #                  are as old as the last session left them (a long outage stays stale)
                while True:
                    reading = asyncio.ensure_future(call.read())
                    done, _ = await asyncio.wait((reading, stopping), timeout=SILENCE_S,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    if stopping in done:
                        reading.cancel()
                        call.cancel()
                        return
                    if not done:   # no heartbeat for SILENCE_S: a link that died without a word
                        reading.cancel()
                        call.cancel()
                        raise StreamBroken(f"nothing from the server for {SILENCE_S:g} s")
                    piece = reading.result()
                    if piece is grpc.aio.EOF:
                        raise StreamBroken("the server ended the stream")
                    if synced or piece.synced:
                        await self._heartbeat()
                    if piece.heartbeat:
                        continue
                    if piece.synced:
                        synced = True
                        self.stats.synced_at = time.time()
                        log.info("in step with the server", extra={"event": "replica_synced"})
                        continue
                    if piece.removed:
                        await asyncio.to_thread(replica.remove_snapshot, self.directory, piece.tenant)
                        self.stats.removed += 1
                        log.info("tenant %s removed", piece.tenant,
                                 extra={"event": "replica_removed", "tenant": piece.tenant})
                        await acks.put(decisions_pb2.WatchRequest(ack=decisions_pb2.SnapshotAck(
                            tenant=piece.tenant, removed=True)))
                        continue
                    assembly = self._add(assembly, piece)
                    if piece.last:
                        blob, assembly_done = b"".join(assembly.parts), assembly
                        assembly = None
                        await acks.put(await self._install(assembly_done, blob))
            finally:
                stopping.cancel()
                await acks.put(None)

    def _add(self, assembly: _Assembly | None, piece: decisions_pb2.SnapshotPiece) -> _Assembly:
        if piece.offset == 0:
            assembly = _Assembly(piece.tenant, piece.version, piece.checksum, piece.size)
        elif assembly is None or (piece.tenant, piece.version, piece.checksum) != (
                assembly.tenant, assembly.version, assembly.checksum) or piece.offset != assembly.received:
            raise StreamBroken(f"a piece of {piece.tenant!r:.70} version {piece.version} came out of order")
        if assembly.size <= self.max_bytes:  # a blob too big is not kept: refused when whole
            assembly.parts.append(piece.data)
        assembly.received += len(piece.data)
        if assembly.received > assembly.size:
            raise StreamBroken(f"{piece.tenant!r:.70} version {piece.version}: more bytes than its size")
        return assembly

    async def _install(self, a: _Assembly, blob: bytes) -> decisions_pb2.WatchRequest:
        ack = decisions_pb2.SnapshotAck(tenant=a.tenant, version=a.version, checksum=a.checksum)
        try:
            if a.size > self.max_bytes:
                raise ValueError(f"{a.size:,} bytes, over this replica's --max-snapshot-mb")
            if len(blob) != a.size:
                raise ValueError(f"{len(blob):,} bytes received of {a.size:,}")
            # checked before anything is written: another tenant's file is never touched by a mislabelled blob
            await asyncio.to_thread(replica.write_snapshot, self.directory, blob, a.version, a.checksum,
                                    tenant=a.tenant)
        except (ValueError, OSError) as exc:  # the last good file stays in force
            ack.ok, ack.reason = False, str(exc)[:500]
            self.stats.refused += 1
            log.error("tenant %s version %s refused: %s", a.tenant, a.version, ack.reason,
                      extra={"event": "replica_refused", "tenant": a.tenant, "version": a.version})
            return decisions_pb2.WatchRequest(ack=ack)
        ack.ok = True
        self.stats.installed += 1
        self.stats.installs.append((a.tenant, a.version, time.time()))
        del self.stats.installs[:-10_000]
        log.info("tenant %s version %s installed", a.tenant, a.version,
                 extra={"event": "replica_installed", "tenant": a.tenant, "version": a.version, "bytes": a.size})
        return decisions_pb2.WatchRequest(ack=ack)

    async def _heartbeat(self) -> None:
        now = time.monotonic()
        if now - self._heard >= HEARTBEAT_WRITE_S:
            self._heard = now
            await asyncio.to_thread(replica.touch_heartbeat, self.directory)
