"""The replica process: follow `Decisions.WatchSnapshots` and keep the snapshots in a directory.

One `Follower` per host.  It opens the stream saying what the directory
holds (so a restart or a reconnect resumes: only what changed meanwhile is
sent), puts each snapshot's pieces together, checks and writes it
(`engine.replica.write_snapshot`: the checksum, the core's checks, an atomic
replace) in a thread, and answers the server: installed, or refused with
the reason (a damaged or foreign blob, a full disk) while the last good file
stays in force.  A refused tenant is written in DIR/behind.json with the time
of its first refusal (its answers are as old as that: past --max-staleness
the readers ask the server, or apply its stale policy when the server is
away too), and asked for again (the stream opened again) after 5 s, 15 s,
60 s, then every 5 minutes, like xDS after a NACK; unless it was refused
for good (over --max-snapshot-mb, or the very bytes the server built,
their sha256 as announced, failing the checks): the server is then told,
at each stream this process opens, not to send that version again, and
the tenant stays behind until the next one.
Every message from the server (heartbeats come every second while nothing
changes) refreshes the directory's heartbeat, from which every reader knows
how old its answers may be.  When the stream
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
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from callgate.v1 import decisions_pb2, decisions_pb2_grpc
from engine import replica, replica_status

log = logging.getLogger("callgate.replica")

BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
RETRY_S = (5.0, 15.0, 60.0, 300.0)   # a refused snapshot is asked for again after these (the stream opened again)
SILENCE_S = 10.0             # nothing from the server for this long (it sends a heartbeat a second): a dead link
HEARTBEAT_WRITE_S = 0.25     # the heartbeat file is written at most this often (a message may come every ms)
OFFSET_SAMPLES = 16          # the server's clock against this host's: the best of this many messages' readings
OFFSET_STEP_S = 2.0          # a reading this far from the last: a clock was stepped, the older readings go
OFFSET_WARN_S = 2.0          # a host clock this far off the server's is logged (local decisions use the server's)


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
        # tenants whose version in force could not be installed, since when (DIR/behind.json, for the readers)
        # DIR/behind.json says what _behind says (else the heartbeat stands still until it can be written)
        try:
            self._behind, self._behind_saved = replica.read_behind(self.directory), True
        except ValueError:   # damaged: written again before the heartbeat moves
            self._behind, self._behind_saved = {}, False
        self._refusals: dict[str, int] = {}   # a tenant's refusals since its last install: when to ask again
        self._refused_now: set[str] = set()  # tenants refused in this session
        self._known: dict[Any, tuple[int, str, str]] = {}   # replica.held's findings, by file: not read again
        # tenant -> (version, checksum) refused for good: the same bytes again would be refused the same way
        self._refused_for_good: dict[str, tuple[int, str]] = {}
        self._retry_at = 0.0        # time.monotonic() when the stream is opened again to ask for them (0: never)
        # the server's clock less this host's, read from each message's server_time_ms: a message is read some
        # time after it was stamped, so each reading is low by that delay, and the highest is the closest
        self._offsets: deque[float] = deque(maxlen=OFFSET_SAMPLES)
        self._offset_warned = False

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
        held = await asyncio.to_thread(replica.held, self.directory, self._known)
        if self.tenants:   # files of tenants no longer followed (--only changed): gone, not frozen as fresh
            for tenant in [t for t in held if t not in self.tenants]:
                await asyncio.to_thread(replica.remove_snapshot, self.directory, tenant)
                del held[tenant]
            await self._mark_behind(*[t for t in self._behind if t not in self.tenants], ok=True)
        self._refused_now = set()
        still_refused: set[str] = set()   # what the server said it did not send again: refused for good, in force
        first = self.first_message(held)
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
                    if piece.server_time_ms > 0:
                        sample = piece.server_time_ms / 1000 - time.time()
                        if self._offsets and abs(sample - self._offsets[-1]) > OFFSET_STEP_S:
                            self._offsets.clear()   # a clock was stepped (NTP): the readings before are wrong
                        if abs(sample) <= replica_status.MAX_OFFSET_S:
                            self._offsets.append(sample)
                    if self._retry_at and assembly is None and time.monotonic() >= self._retry_at:
                        # xDS's answer to a NACK: ask again later (a full disk freed, a blob damaged on its way);
                        # the stream opened again resumes from what the directory holds, which lacks it
                        self._retry_at = 0.0
                        call.cancel()
                        raise StreamBroken(f"asking again for what was refused: {', '.join(sorted(self._behind))}"
                                           [:300])
                    if synced or piece.synced:
                        await self._heartbeat()
                    if piece.heartbeat:
                        continue
                    if piece.refused:   # the version in force is still the one refused for good: behind
                        still_refused.add(piece.tenant)
                        continue
                    if piece.synced:
                        synced = True
                        # what the server did not send is in step (a snapshot written whole, whose refusal came
                        # from a later step of writing it, is; a version refused for good that is no longer the
                        # one in force, too): only what it refused again, or still refuses, stays behind
                        for tenant in [t for t in self._refused_for_good if t not in still_refused]:
                            del self._refused_for_good[tenant]
                        await self._mark_behind(*[t for t in self._behind if t not in self._refused_now
                                                  and t not in still_refused], ok=True)
                        self.stats.synced_at = time.time()
                        log.info("in step with the server", extra={"event": "replica_synced"})
                        continue
                    if piece.removed:
                        self._refused_for_good.pop(piece.tenant, None)
                        await asyncio.to_thread(replica.remove_snapshot, self.directory, piece.tenant)
                        await self._mark_behind(piece.tenant, ok=True)
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

    def first_message(self, held: dict[str, tuple[int, str]]) -> decisions_pb2.WatchRequest:
        """A stream's first message: who this replica is, the tenants it follows, what the directory holds (the
        server sends only what it lacks) and what it refused for good (the server does not send that again)."""
        first = decisions_pb2.WatchRequest(replica=self.name, tenants=self.tenants)
        for tenant, (version, checksum) in held.items():
            first.held[tenant].version = version
            first.held[tenant].checksum = checksum
        for tenant, (version, checksum) in self._refused_for_good.items():
            if not self.tenants or tenant in self.tenants:
                first.refused[tenant].version = version
                first.refused[tenant].checksum = checksum
        return first

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
            self._refused_now.add(a.tenant)
            # for good: too big, or the server's own bytes (their sha256 as announced) refused by the checks; a
            # full disk, a damaged status page or bytes damaged on the way may do better next time
            for_good = a.size > self.max_bytes or isinstance(exc, replica.BlobRefused)
            if for_good:
                self._refused_for_good[a.tenant] = (a.version, a.checksum)
                log.error("tenant %s version %s refused: %s; not asked for again (the server is told): it waits "
                          "for the next version", a.tenant, a.version, ack.reason,
                          extra={"event": "replica_refused", "tenant": a.tenant, "version": a.version,
                                 "for_good": True})
            else:
                tries = self._refusals.get(a.tenant, 0)
                self._refusals[a.tenant] = tries + 1
                wait = RETRY_S[min(tries, len(RETRY_S) - 1)]
                at = time.monotonic() + wait
                self._retry_at = min(self._retry_at, at) if self._retry_at else at
                log.error("tenant %s version %s refused: %s; asked for again in %g s", a.tenant, a.version,
                          ack.reason, wait, extra={"event": "replica_refused", "tenant": a.tenant,
                                                   "version": a.version, "for_good": False})
            await self._mark_behind(a.tenant, ok=False)
            return decisions_pb2.WatchRequest(ack=ack)
        ack.ok = True
        self._refusals.pop(a.tenant, None)
        self._refused_for_good.pop(a.tenant, None)
        self._refused_now.discard(a.tenant)
        await self._mark_behind(a.tenant, ok=True)
        self.stats.installed += 1
        self.stats.installs.append((a.tenant, a.version, time.time()))
        del self.stats.installs[:-10_000]
        log.info("tenant %s version %s installed", a.tenant, a.version,
                 extra={"event": "replica_installed", "tenant": a.tenant, "version": a.version, "bytes": a.size})
        return decisions_pb2.WatchRequest(ack=ack)

    async def _mark_behind(self, *tenants: str, ok: bool) -> None:
        """Tell the readers (DIR/behind.json) which tenants are not at the version in force, and since when.  If
        that cannot be written (the disk that refused the snapshot is full), the heartbeat stands still until it
        can: every answer of the directory then grows old, rather than a refused tenant's looking fresh."""
        changed = False
        for tenant in tenants:
            if ok and tenant in self._behind:
                del self._behind[tenant]
                changed = True
            elif not ok and tenant not in self._behind:
                self._behind[tenant] = time.time()
                changed = True
        if not changed and self._behind_saved:
            return
        try:
            await asyncio.to_thread(replica.write_behind, self.directory, dict(self._behind))
        except OSError as exc:
            if self._behind_saved:
                log.error("the replica directory %s cannot say which tenants are behind (%s): its heartbeat stands "
                          "still until it can", self.directory, exc, extra={"event": "replica_behind_unsaved"})
            self._behind_saved = False
            return
        self._behind_saved = True

    async def _heartbeat(self) -> None:
        if not self._behind_saved:
            await self._mark_behind(ok=True)   # tried again at each message; the heartbeat waits for it
            if not self._behind_saved:
                return
        now = time.monotonic()
        if now - self._heard >= HEARTBEAT_WRITE_S:
            self._heard = now
            offset = max(self._offsets) if self._offsets else None
            if offset is not None and abs(offset) > OFFSET_WARN_S and not self._offset_warned:
                self._offset_warned = True
                log.warning("this host's clock is %.1f s %s the server's: local decisions are made at the server's "
                            "time (set this host's clock right: NTP)", abs(offset),
                            "behind" if offset > 0 else "ahead of", extra={"event": "replica_clock_offset",
                                                                           "offset_s": round(offset, 3)})
            await asyncio.to_thread(replica.touch_heartbeat, self.directory, time.time(), offset)
