"""The worker's side of WatchSnapshots (server.rpc.replicas.SnapshotFeed) on its own, with a real engine and a
store that answers only what the feed asks of it: which version a replica is sent when this worker is behind
the store, or the store behind the replica.

The end-to-end behaviour (real server, real replica process) is in tests/test_replica.py; this file makes the
cases a running cluster only reaches by chance: a replica that comes, with a newer version, to a worker that
has not installed that version yet."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from callgate.v1 import decisions_pb2
from engine import Engine, compile_settings, parse_settings
from engine.snapshot import dumps
from server.rpc import replicas as replicas_rpc
from server.rpc.replicas import SnapshotFeed
from server.store.api import ReplicaReport, StoreError

ROOT = Path(__file__).resolve().parent.parent
ACME = parse_settings(json.loads((ROOT / "examples" / "acme.json").read_text()))


class Store:
    """current_versions() as the store would answer it; what the feed reports is kept, never read."""

    def __init__(self, versions: dict[str, int]) -> None:
        self.versions = versions
        self.asked = 0

    def current_versions(self) -> dict[str, int]:
        self.asked += 1
        return dict(self.versions)

    def record_replicas(self, *_: Any) -> None:
        pass

    def forget_replicas(self, *_: Any) -> None:
        pass


class Context:
    def peer(self) -> str:
        return "ipv4:127.0.0.1:1"


def held_message(tenant: str, version: int, *more: tuple[str, int]) -> decisions_pb2.WatchRequest:
    first = decisions_pb2.WatchRequest(replica="host-a")
    for name, held in ((tenant, version), *more):
        first.held[name].version = held
        first.held[name].checksum = hashlib.sha256(f"v{held}".encode()).hexdigest()  # not the server's blob
    return first


async def versions_sent(feed: SnapshotFeed, first: decisions_pb2.WatchRequest, then: Any = None,
                        pieces: int = 12) -> list[int]:
    """The versions of the whole snapshots the feed sends a replica that opens with `first`, up to `pieces`
    messages or the first heartbeat; `then()` is called once the feed said synced."""
    closed = asyncio.Event()

    async def requests() -> AsyncIterator[decisions_pb2.WatchRequest]:
        yield first
        await closed.wait()

    sent: list[Any] = []
    beats = 0
    stream = feed.watch(requests(), Context())
    try:
        async for piece in stream:
            if piece.last:
                sent.append(piece.version)
            if piece.removed:
                sent.append(f"removed {piece.tenant}")
            if piece.refused:
                sent.append(f"still refused {piece.tenant} {piece.version}")
            if piece.synced and then is not None:
                then()
            beats += piece.heartbeat
            pieces -= 1
            if beats >= 1 or pieces <= 0:
                break
    finally:
        closed.set()
        await stream.aclose()  # type: ignore[attr-defined]
    return sent


def test_a_worker_behind_the_store_does_not_roll_a_replica_back() -> None:
    """The replica holds version 3, the store has 3 in force, this worker still 1: nothing is sent until the
    worker installs a version (4) the replica lacks; a resume then costs one snapshot, the newest."""
    engine = Engine()
    engine.install(compile_settings(ACME, version=1))
    store = Store({"acme": 3})
    feed = SnapshotFeed(SimpleNamespace(engine=engine, store=store))  # type: ignore[arg-type]

    def newer() -> None:
        engine.install(compile_settings(ACME, version=4))

    assert asyncio.run(versions_sent(feed, held_message("acme", 3))) == []
    assert store.asked >= 1
    assert asyncio.run(versions_sent(feed, held_message("acme", 3), then=newer)) == [4]


def test_a_store_behind_the_replica_is_what_is_in_force() -> None:
    """The tenant was removed and made again (its versions start at 1), or the store was restored from a
    backup: the replica's newer version is not the tenant's any more, and the one in force is sent."""
    engine = Engine()
    engine.install(compile_settings(ACME, version=1))
    feed = SnapshotFeed(SimpleNamespace(engine=engine, store=Store({"acme": 1})))  # type: ignore[arg-type]
    assert asyncio.run(versions_sent(feed, held_message("acme", 3))) == [1]


def test_a_store_that_cannot_answer_rolls_nothing_back() -> None:
    class Down(Store):
        def current_versions(self) -> dict[str, int]:
            raise OSError("the database is away")

    engine = Engine()
    engine.install(compile_settings(ACME, version=1))
    feed = SnapshotFeed(SimpleNamespace(engine=engine, store=Down({})))  # type: ignore[arg-type]
    assert asyncio.run(versions_sent(feed, held_message("acme", 3))) == []
    # with a tenant this worker lacks besides (just started, or its install failed): neither a rollback of one
    # nor a removal of the other, in either order of the two questions
    for first, then in (("acme", "zeta"), ("acme", "aaaa")):
        assert asyncio.run(versions_sent(feed, held_message(first, 3, (then, 2)))) == []
    # a replica holding an older version gets the one in force, store or not
    assert asyncio.run(versions_sent(feed, held_message("acme", 1))) == [1]


def test_the_feed_keeps_no_blob_of_a_version_no_longer_in_force() -> None:
    engine = Engine()
    engine.install(compile_settings(ACME, version=1))
    feed = SnapshotFeed(SimpleNamespace(engine=engine, store=Store({"acme": 1})))  # type: ignore[arg-type]
    assert asyncio.run(versions_sent(feed, decisions_pb2.WatchRequest(replica="host-b", tenants=["acme"]))) == [1]
    assert feed._blobs["acme"].snap.version == 1
    engine.install(compile_settings(ACME, version=2))
    assert "acme" not in feed._blobs


def test_a_version_refused_for_good_is_not_sent_again() -> None:
    """A replica that refused a version for good says so when it opens a stream (WatchRequest.refused): the
    feed does not send that version again (it counts the replica behind, and tells it: it stays behind), and
    sends the next one."""
    engine = Engine()
    engine.install(compile_settings(ACME, version=1))
    feed = SnapshotFeed(SimpleNamespace(engine=engine, store=Store({"acme": 1})))  # type: ignore[arg-type]
    snap = engine.get("acme")
    assert snap is not None
    checksum = asyncio.run(feed._blob(snap)).checksum

    def refusing(refused_checksum: str) -> decisions_pb2.WatchRequest:
        first = decisions_pb2.WatchRequest(replica="host-c", tenants=["acme"])
        first.refused["acme"].version = 1
        first.refused["acme"].checksum = refused_checksum
        return first

    def newer() -> None:
        engine.install(compile_settings(ACME, version=2))

    assert asyncio.run(versions_sent(feed, refusing(checksum))) == ["still refused acme 1"]   # (it stays behind)
    assert asyncio.run(versions_sent(feed, refusing("e" * 64))) == [1]     # not the bytes in force: sent
    assert asyncio.run(versions_sent(feed, refusing(checksum), then=newer)) == ["still refused acme 1", 2]


class Recording(Store):
    """A store that keeps what the feed writes, in order; `down` makes every write fail as the store would."""

    def __init__(self) -> None:
        super().__init__({})
        self.written: list[Any] = []
        self.down = False

    def record_replicas(self, reports: Any, *_: Any) -> None:
        if self.down:
            raise StoreError("the database is away")
        self.written.extend(("report", r.tenant, r.version, r.installed, r.at) for r in reports)

    def forget_replicas(self, replica: str, tenants: Any) -> None:
        if self.down:
            raise StoreError("the database is away")
        self.written.extend(("forget", t) for t in tenants)


def report(tenant: str, version: int, installed: bool, at: float) -> ReplicaReport:
    return ReplicaReport("host-a", tenant, version, "a" * 64, installed, "" if installed else "no", at=at)


def test_reports_wait_for_the_store_in_the_order_heard(monkeypatch: Any) -> None:
    """An install and a refusal of the same row heard within one write both reach the store, in the order heard,
    each with the time it was heard; a removal's answer and a report of the same row: the later one stands; a
    store that fails keeps them all, its times unchanged, before what is heard meanwhile."""
    monkeypatch.setattr(replicas_rpc, "REPORT_EVERY_S", 0.0)
    store = Recording()

    async def run() -> None:
        feed = SnapshotFeed(SimpleNamespace(engine=Engine(), store=store))  # type: ignore[arg-type]
        feed._report(report("acme", 6, True, 1.0))
        feed._report(report("acme", 7, False, 2.0))      # kept beside the install, not in its place
        feed._report(report("beta", 3, True, 3.0))
        feed._forget("host-a", "beta")                   # beta's removal answered after its install: removed
        feed._forget("host-a", "zeta")
        feed._report(report("zeta", 1, True, 4.0))       # zeta made again after its removal: installed
        await feed._flusher  # type: ignore[misc]
        assert store.written == [("report", "acme", 6, True, 1.0), ("report", "acme", 7, False, 2.0),
                                 ("report", "zeta", 1, True, 4.0), ("forget", "beta")]
        store.written.clear()
        store.down = True
        feed._report(report("acme", 8, True, 5.0))
        await asyncio.sleep(0.05)                        # the write failed: kept
        feed._report(report("acme", 8, False, 6.0))      # heard meanwhile
        store.down = False
        await feed._flusher  # type: ignore[misc]
        assert store.written == [("report", "acme", 8, True, 5.0), ("report", "acme", 8, False, 6.0)]

    asyncio.run(run())


def test_one_worker_bounds_what_a_client_can_make_it_keep(monkeypatch: Any, caplog: Any) -> None:
    """Replica names label the gauge up to MAX_LABELLED (later ones count as "other"); removals and reports waiting
    for the store are bounded in all; a refusal replayed on a stream is logged once."""
    monkeypatch.setattr(replicas_rpc, "MAX_LABELLED", 2)
    monkeypatch.setattr(replicas_rpc, "MAX_PENDING_REPORTS", 3)
    monkeypatch.setattr(replicas_rpc, "REPORT_EVERY_S", 3600.0)
    feed = SnapshotFeed(SimpleNamespace(engine=Engine(), store=Recording()))  # type: ignore[arg-type]

    async def run() -> None:
        assert [feed._label(n) for n in ("a", "b", "c", "a", "d")] == ["a", "b", "other", "a", "other"]
        for i in range(10):
            feed._forget(f"host-{i}", "acme")
            feed._report(report(f"t{i}", 1, True, float(i)))
        assert len(feed._reports) + len(feed._forgotten) == 3
        stream = replicas_rpc._Stream("host-a", "", "", None, asyncio.get_running_loop(), {})
        stream.sent["acme"] = (1, "a" * 64)
        refusal = decisions_pb2.WatchRequest(ack=decisions_pb2.SnapshotAck(
            tenant="acme", version=1, checksum="a" * 64, ok=False, reason="too big"))

        async def replayed() -> AsyncIterator[decisions_pb2.WatchRequest]:
            for _ in range(50):
                yield refusal

        with caplog.at_level(logging.WARNING, logger=replicas_rpc.log.name):
            await feed._read_reports(replayed(), stream)
        assert [r.getMessage() for r in caplog.records].count("replica host-a refused acme version 1: too big") == 1
        assert feed._flusher is not None
        feed._flusher.cancel()

    asyncio.run(run())


def test_a_worker_follows_at_most_max_streams_replicas(monkeypatch: Any) -> None:
    from server.rpc.errors import RequestError

    monkeypatch.setattr(replicas_rpc, "MAX_STREAMS", 0)
    feed = SnapshotFeed(SimpleNamespace(engine=Engine(), store=Store({})))  # type: ignore[arg-type]

    async def run() -> None:
        async def requests() -> AsyncIterator[decisions_pb2.WatchRequest]:
            yield decisions_pb2.WatchRequest(replica="host-z")

        stream = feed.watch(requests(), Context())
        with pytest.raises(RequestError) as err:
            await anext(stream)
        assert err.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "try again later" in str(err.value)

    asyncio.run(run())


def test_many_streams_asking_at_once_serialize_a_snapshot_once(monkeypatch: Any) -> None:
    """Every replica back at once after a server restart, each resume comparing checksums: one serialization of
    each snapshot, not one per stream; a stream gone meanwhile does not cancel it for the others."""
    made = []

    def counting(snap: Any) -> bytes:
        made.append(snap.tenant)
        return dumps(snap)

    monkeypatch.setattr(replicas_rpc, "dumps", counting)
    engine = Engine()
    engine.install(compile_settings(ACME, version=1))
    feed = SnapshotFeed(SimpleNamespace(engine=engine, store=Store({"acme": 1})))  # type: ignore[arg-type]
    snap = engine.get("acme")
    assert snap is not None

    async def run() -> None:
        first = asyncio.ensure_future(feed._blob(snap))
        await asyncio.sleep(0)
        first.cancel()                                   # the first stream went away
        blobs = await asyncio.gather(*(feed._blob(snap) for _ in range(30)))
        assert len({b.checksum for b in blobs}) == 1 and made == ["acme"]
        assert not feed._serializing

    asyncio.run(run())


def test_two_hosts_under_one_replica_name_are_told_apart_in_the_log(caplog: Any) -> None:
    """Two hosts whose replicas give the same name (cloned machines keep one host name) share one row of
    `callgate replicas`, each overwriting the other's reports: the worker says so when the second connects; a
    replica reconnecting from the same host (another port) is not two."""
    engine = Engine()
    engine.install(compile_settings(ACME, version=1))
    feed = SnapshotFeed(SimpleNamespace(engine=engine, store=Store({"acme": 1})))  # type: ignore[arg-type]

    class From(Context):
        def __init__(self, peer: str) -> None:
            self._peer = peer

        def peer(self) -> str:
            return self._peer

    async def run() -> None:
        closed = asyncio.Event()

        async def requests() -> AsyncIterator[decisions_pb2.WatchRequest]:
            yield decisions_pb2.WatchRequest(replica="edge-1", tenants=["acme"])
            await closed.wait()

        streams = [feed.watch(requests(), From(peer)) for peer in
                   ("ipv4:10.0.0.7:40000", "ipv4:10.0.0.7:40002", "ipv4:10.0.0.8:40000")]
        with caplog.at_level(logging.WARNING, logger=replicas_rpc.log.name):
            for stream in streams:
                await anext(stream)
        closed.set()
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]
        said = [r.getMessage() for r in caplog.records if "call themselves" in r.getMessage()]
        assert len(said) == 1 and "10.0.0.8" in said[0] and "own --name" in said[0]

    asyncio.run(run())


def test_reports_stay_bounded_while_the_store_keeps_failing(monkeypatch: Any) -> None:
    """The store away for long, replicas reporting all along (also while each failing write is under way): what
    waits never passes MAX_PENDING_REPORTS after a failed write (a new row past it waits for the replica's next
    report); a row already waiting takes its newer reports."""
    monkeypatch.setattr(replicas_rpc, "MAX_PENDING_REPORTS", 10)
    monkeypatch.setattr(replicas_rpc, "REPORT_EVERY_S", 0.0)
    monkeypatch.setattr(replicas_rpc, "RETRY_PAUSE_S", 0.05)

    class Failing(Recording):
        def __init__(self) -> None:
            super().__init__()
            self.entered, self.gate = threading.Event(), threading.Event()

        def record_replicas(self, reports: Any, *_: Any) -> None:
            self.entered.set()
            self.gate.wait(10)
            super().record_replicas(reports)

    store = Failing()
    store.down = True

    async def run() -> None:
        feed = SnapshotFeed(SimpleNamespace(engine=Engine(), store=store))  # type: ignore[arg-type]
        for i in range(10):
            feed._report(report(f"t{i}", 1, True, float(i)))
        for cycle in range(3):
            while not store.entered.is_set():      # a write under way
                await asyncio.sleep(0.001)
            store.entered.clear()
            for i in range(10):                    # ten new rows meanwhile (the list the write left is empty)
                feed._report(report(f"n{cycle}-{i}", 1, True, 100.0 + i))
            store.gate.set()                       # the write fails
            await asyncio.sleep(0.02)              # merged, waiting to try again
            store.gate.clear()
            assert len(feed._reports) + len(feed._forgotten) <= 10
        feed._report(report("t1", 2, True, 500.0))   # a row waiting: its newer report replaces the older
        store.down = False
        store.gate.set()
        await feed._flusher  # type: ignore[misc]
        assert ("report", "t1", 2, True, 500.0) in store.written and len(store.written) <= 10

    asyncio.run(run())


def test_a_name_held_by_another_tokens_stream_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A replica names itself: a stream under a name that a live stream of another token holds is another proxy
    under that name (or a rotated token), and the operator is told (and `callgate replicas` shows each row's
    token)."""
    from server.rpc import auth

    feed = SnapshotFeed(SimpleNamespace(engine=Engine(), store=Store({})))  # type: ignore[arg-type]

    async def run() -> None:
        feed._streams.add(replicas_rpc._Stream("host-a", "ipv4:10.0.0.1:5000", "tok-a", None,
                                               asyncio.get_running_loop(), {}))

        async def requests() -> AsyncIterator[decisions_pb2.WatchRequest]:
            yield decisions_pb2.WatchRequest(replica="host-a")
            await asyncio.sleep(30)

        for token, said in (("tok-a", False), ("tok-b", True)):
            caplog.clear()
            auth.CURRENT.set(SimpleNamespace(token_id=token))   # type: ignore[arg-type]
            stream = feed.watch(requests(), Context())
            await asyncio.wait_for(anext(stream), 10)   # (its first piece: the stream is open, past every check)
            records = [r for r in caplog.records if getattr(r, "event", "") == "replica_name_other_token"]
            assert bool(records) == said, [r.getMessage() for r in caplog.records]
            if said:
                assert "tok-b" in records[0].getMessage() and "tok-a" in records[0].getMessage()
            await stream.aclose()  # type: ignore[attr-defined]

    with caplog.at_level(logging.WARNING, logger="callgate"):
        asyncio.run(run())
