"""A proxy host's replica (`callgate replica`, Decisions.WatchSnapshots): it follows pushes, patches, document
decisions and removals, resumes from what it holds, keeps its last good snapshot when it refuses one, and the
server knows which version it holds (`callgate replicas`)."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from engine import replica, replica_status
from loadtest.process import ROOT, free_port, python_env
from server.client import upload_messages
from server.replica import follow
from server.rpc.messages import decision_message

from .serving import ReplicaProcess as Replica
from .serving import Server, example_doc, wait_for
from .test_documents import encode, scan

NUMBER = "+14155550100"               # requires_documents in the example
TUESDAY_1030_LA = 1796149800          # working hours for NUMBER
CALLERS = ["+14155550666", "+12125550000", "anonymous", "4155550199", "+4930123456", "+", "12ab"]
CALLED = [NUMBER, "+14155550199", "+14155559999", "+442071234567"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("data"), listen=f"127.0.0.1:{free_port()}", workers=2)
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def stubs(server: Server) -> Iterator[tuple[Any, Any]]:
    with server.channel() as channel:
        yield decisions_pb2_grpc.DecisionsStub(channel), admin_pb2_grpc.AdminStub(channel)


def in_force(admin: Any) -> dict[str, int]:
    return {t.tenant: t.version for t in admin.Stats(admin_pb2.StatsRequest(), timeout=10).tenants}


def in_step(directory: Path, admin: Any) -> bool:
    held = {t: v for t, (v, _) in replica.held(directory).items()}
    return held == in_force(admin)


def same_answers(local: replica.LocalDecisions, decisions: Any, tenant: str) -> int:
    """Every (caller, called) of the lists decided locally and over RPC at the same instant: the same Decision,
    or the same refusal; returns how many were compared."""
    held = local.snapshot(tenant)
    assert held is not None
    snap = held[0]
    n = 0
    for caller in CALLERS:
        for called in CALLED:
            answer = local.inbound(tenant, caller, called, TUESDAY_1030_LA)
            assert answer is not None and answer.action == "decide" and answer.decision is not None
            request = decisions_pb2.InboundRequest(tenant=tenant, caller=caller, called=called, at=TUESDAY_1030_LA)
            if answer.decision.verdict == "ERROR":
                with pytest.raises(grpc.RpcError) as err:
                    decisions.Inbound(request, timeout=10)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            else:
                assert decisions.Inbound(request, timeout=10) == decision_message(answer.decision, "inbound", snap)
            n += 1
    return n


def test_a_replica_follows_pushes_patches_documents_and_removals(server: Server, stubs: Any,
                                                                 tmp_path: Path) -> None:
    decisions, admin = stubs
    admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(example_doc("beta", 201)).encode()),
                       timeout=30)
    rep = Replica(server.address, tmp_path / "replica")
    local = replica.LocalDecisions(rep.directory, recheck_s=0.0)
    try:
        wait_for(lambda: in_step(rep.directory, admin), timeout=20)
        assert same_answers(local, decisions, "acme") == len(CALLERS) * len(CALLED)

        doc = example_doc("acme")
        doc["blacklist"] = [*doc.get("blacklist", []), "+12125550000"]
        admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()), timeout=30)
        wait_for(lambda: in_step(rep.directory, admin), timeout=10)
        answer = local.inbound("acme", "+12125550000", "+14155550199", TUESDAY_1030_LA)
        assert answer is not None and answer.decision is not None and answer.decision.reason == "BLACKLISTED"
        assert answer.version == in_force(admin)["acme"] and not answer.stale and answer.age_s < 5

        admin.PatchBlacklist(admin_pb2.PatchBlacklistRequest(tenant="acme", remove=["+12125550000"]), timeout=30)
        wait_for(lambda: in_step(rep.directory, admin), timeout=10)
        same_answers(local, decisions, "acme")

        # a document decision changes the snapshot, not the version: the replica follows it all the same
        before = replica.held(rep.directory)["acme"]
        image = encode(scan((1400, 2000)), "PNG")
        uploaded = admin.UploadDocuments(admin_pb2.UploadDocumentsRequest(
            tenant="acme", number=NUMBER, files=[admin_pb2.DocumentUpload(name="id.png", content=image)]),
            timeout=60)
        admin.ReviewDocuments(admin_pb2.ReviewDocumentsRequest(set_id=uploaded.id, approve=True), timeout=10)
        wait_for(lambda: replica.held(rep.directory)["acme"] != before, timeout=10)
        assert replica.held(rep.directory)["acme"][0] == before[0]
        same_answers(local, decisions, "acme")

        admin.RemoveTenant(admin_pb2.RemoveTenantRequest(tenant="beta", confirm="beta", force=True), timeout=30)
        wait_for(lambda: "beta" not in replica.held(rep.directory), timeout=10)
        wait_for(lambda: local.inbound("beta", "+12125550000", NUMBER, TUESDAY_1030_LA) is None, timeout=5)

        # what the server heard: the replica holds the version in force, no refusal
        def reported() -> Any:
            rows = admin.ListReplicas(admin_pb2.ListReplicasRequest(replica="host-a"), timeout=10).replicas
            acme = [r for r in rows if r.tenant == "acme"]
            return acme[0] if acme and acme[0].checksum == replica.held(rep.directory)["acme"][1] else None

        row = wait_for(reported, timeout=10)
        assert (row.version, row.in_force, row.refused_version) == (in_force(admin)["acme"],) * 2 + (0,)
        assert [r.tenant for r in admin.ListReplicas(admin_pb2.ListReplicasRequest(), timeout=10).replicas] == ["acme"]
    finally:
        local.close()
        assert rep.stop() == 0
    assert not rep.events("replica_refused")


def test_a_replica_resumes_from_what_it_holds(server: Server, stubs: Any, tmp_path: Path) -> None:
    _, admin = stubs
    rep = Replica(server.address, tmp_path / "replica", name="host-b")
    wait_for(lambda: in_step(rep.directory, admin), timeout=20)
    assert rep.stop() == 0
    first = len(rep.events("replica_installed"))
    assert first == len(in_force(admin))

    doc = example_doc("acme")
    doc["blacklist"] = [*doc.get("blacklist", []), "+12125550001"]
    admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()), timeout=30)
    rep = Replica(server.address, rep.directory, name="host-b")
    try:
        wait_for(lambda: in_step(rep.directory, admin), timeout=20)
        wait_for(lambda: rep.events("replica_synced"), timeout=10)
    finally:
        assert rep.stop() == 0
    # only the tenant that changed while it was away came again
    assert [e["tenant"] for e in rep.events("replica_installed")[first:]] == ["acme"]


def test_one_replica_per_directory_and_a_kill_9_leaves_it_whole(server: Server, stubs: Any, tmp_path: Path) -> None:
    """A second `callgate replica` on a directory in use is refused (one line, exit 2) and changes nothing (not
    the policy); the first killed with SIGKILL leaves its files whole and its lock free: the next one takes the
    directory and resumes from the files, sent nothing again."""
    _, admin = stubs
    rep = Replica(server.address, tmp_path / "replica", "--max-staleness", "30", name="host-k")
    try:
        wait_for(lambda: in_step(rep.directory, admin), timeout=20)
        policy = (rep.directory / replica.POLICY).read_bytes()
        second = subprocess.run(
            [sys.executable, "-m", "callgate", "replica", "--server", server.address, "--dir", str(rep.directory),
             "--max-staleness", "5", "--stale-policy", "fail-closed"],
            capture_output=True, text=True, timeout=60, env=python_env(), cwd=ROOT)
        assert second.returncode == 2, second
        assert second.stderr.count("\n") == 1 and f"(pid {rep.proc.pid})" in second.stderr, second.stderr
        assert "stop it first" in second.stderr and (rep.directory / replica.POLICY).read_bytes() == policy
        held = replica.held(rep.directory)
        rep.proc.kill()
        rep.proc.wait(10)
    finally:
        rep.stop()
    assert replica.held(rep.directory) == held
    # what a replica killed while writing a file leaves (its temporary file), and what is not its to remove
    leftover = rep.directory / f".{replica.file_name('acme')}.k9x_0a1b.tmp"
    leftover.write_bytes(b"half a snapshot")
    strangers = [rep.directory / ".notes.tmp", rep.directory / "README.txt"]
    for stranger in strangers:
        stranger.write_text("the operator's")
    installed, synced = len(rep.events("replica_installed")), len(rep.events("replica_synced"))  # one log file
    again = Replica(server.address, rep.directory, name="host-k")
    try:
        wait_for(lambda: len(again.events("replica_synced")) > synced, timeout=20)
        assert in_step(again.directory, admin)
        assert again.events("replica_installed")[installed:] == []   # the killed one's files are whole
        assert not leftover.exists() and all(s.exists() for s in strangers)
        assert [e["removed"] for e in again.events("replica_leftovers")] == [1]
    finally:
        assert again.stop() == 0


def test_a_snapshot_refused_leaves_the_last_good_one_in_force(server: Server, stubs: Any, tmp_path: Path) -> None:
    _, admin = stubs
    rep = Replica(server.address, tmp_path / "replica", "--max-snapshot-mb", "1", "--only", "acme", name="host-c")
    local = replica.LocalDecisions(rep.directory, recheck_s=0.0)
    try:
        wait_for(lambda: "acme" in replica.held(rep.directory), timeout=20)
        good = replica.held(rep.directory)["acme"]
        # a version over the replica's --max-snapshot-mb: 700,000 blacklisted numbers, scattered (a run of
        # consecutive numbers would pack into a few bytes)
        doc = example_doc("acme")
        doc["blacklist"] = [f"+1{n}" for n in random.Random(5).sample(range(2_000_000_000, 3_000_000_000), 700_000)]
        admin.PushSettingsUpload(upload_messages(json.dumps(doc).encode()), timeout=120)
        row = wait_for(lambda: [r for r in admin.ListReplicas(admin_pb2.ListReplicasRequest(
            replica="host-c"), timeout=10).replicas if r.refused_version], timeout=30)[0]
        assert row.refused_version == in_force(admin)["acme"] and row.version == good[0]
        assert "max-snapshot-mb" in row.refused_reason
        assert replica.held(rep.directory)["acme"] == good
        answer = local.inbound("acme", "+12025550001", NUMBER, TUESDAY_1030_LA)
        assert answer is not None and answer.version == good[0]   # the last good one keeps answering
        assert [e.get("for_good") for e in rep.events("replica_refused")] == [True]   # too big: so it stays
        # the readers are told it is behind, and since when (its answers grow old from then on)
        since = wait_for(lambda: replica.read_behind(rep.directory).get("acme"), timeout=10)
        answer = local.inbound("acme", "+12025550001", NUMBER, TUESDAY_1030_LA)
        assert answer is not None and answer.age_s >= time.time() - since - 1
        # not asked for again (as a damaged one would be, 5 s later): it waits for the next version, behind
        time.sleep(follow.RETRY_S[0] + 2)
        assert len(rep.events("replica_refused")) == 1 and not rep.events("replica_stream_broken")
        assert "acme" in replica.read_behind(rep.directory)
        # a version it can hold: installed, and no longer behind
        admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(example_doc("acme")).encode()),
                           timeout=60)
        wait_for(lambda: replica.held(rep.directory)["acme"][0] == in_force(admin)["acme"], timeout=30)
        wait_for(lambda: "acme" not in replica.read_behind(rep.directory), timeout=10)
        answer = local.inbound("acme", "+12025550001", NUMBER, TUESDAY_1030_LA)
        assert answer is not None and answer.age_s < 5 and not answer.stale
    finally:
        local.close()
        assert rep.stop() == 0


def _watch(server: Server, *requests: decisions_pb2.WatchRequest) -> tuple[grpc.StatusCode, str]:
    with grpc.insecure_channel(server.address) as channel:
        call = decisions_pb2_grpc.DecisionsStub(channel).WatchSnapshots(iter(requests), timeout=10)
        with pytest.raises(grpc.RpcError) as err:
            for _ in call:
                pass
    return err.value.code(), err.value.details()


@pytest.mark.parametrize("first, words", [
    (decisions_pb2.WatchRequest(replica=""), "replica is its name"),
    (decisions_pb2.WatchRequest(replica="a/b"), "replica is its name"),
    (decisions_pb2.WatchRequest(replica="x" * 129), "replica is its name"),
    (decisions_pb2.WatchRequest(ack=decisions_pb2.SnapshotAck(tenant="acme")), "not an ack"),
    (decisions_pb2.WatchRequest(replica="h", held={"acme": decisions_pb2.HeldSnapshot(version=1, checksum="zz")}),
     "sha256"),
    (decisions_pb2.WatchRequest(replica="h", tenants=["x" * 65]), "1 to 64"),
    (decisions_pb2.WatchRequest(replica="h", refused={"acme": decisions_pb2.HeldSnapshot(version=0,
                                                                                         checksum="a" * 64)}),
     "refused['acme']: version >= 1"),
    (decisions_pb2.WatchRequest(replica="h", refused={"y" * 65: decisions_pb2.HeldSnapshot(version=1,
                                                                                          checksum="a" * 64)}),
     "1 to 64"),
])
def test_hostile_first_messages_are_refused(server: Server, first: Any, words: str) -> None:
    code, details = _watch(server, first)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and words in details


def test_answers_about_what_was_never_sent_are_not_recorded(server: Server, stubs: Any) -> None:
    _, admin = stubs
    made_up = [decisions_pb2.WatchRequest(ack=decisions_pb2.SnapshotAck(
        tenant="acme", version=99, checksum="0" * 64, ok=True)) for _ in range(100)]
    with grpc.insecure_channel(server.address) as channel:
        call = decisions_pb2_grpc.DecisionsStub(channel).WatchSnapshots(
            iter([decisions_pb2.WatchRequest(replica="liar", tenants=["acme"]), *made_up]), timeout=3)
        try:
            for _ in call:   # the snapshot, synced, a heartbeat: the stream ends with the acks
                pass
        except grpc.RpcError:
            pass
    assert not admin.ListReplicas(admin_pb2.ListReplicasRequest(replica="liar"), timeout=10).replicas


def test_a_replica_that_does_not_read_gets_the_newest_snapshot_not_a_queue(server: Server, stubs: Any) -> None:
    """Flow control and coalescing: a replica that stops reading while a tenant's big snapshot is pushed ten
    times holds the server to what is in flight; once it reads again it gets the newest version, not all ten."""
    _, admin = stubs
    doc = example_doc("slow", 301)
    rnd = random.Random(7)
    numbers = [f"+1{n}" for n in rnd.sample(range(2_000_000_000, 3_000_000_000), 400_000)]
    versions = []
    done = threading.Event()

    def requests() -> Iterator[decisions_pb2.WatchRequest]:
        yield decisions_pb2.WatchRequest(replica="slow-reader", tenants=["slow"])
        done.wait(120)   # its side stays open (a replica that closes it is leaving: the server ends the stream)

    # no BDP probing: the connection's window stays small, as a slow reader's would
    with grpc.insecure_channel(server.address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        call = decisions_pb2_grpc.DecisionsStub(channel).WatchSnapshots(requests(), timeout=120)
        for i in range(10):   # each version about 1 MB of snapshot: the connection's window holds one or two
            doc["blacklist"] = numbers[i:]
            versions.append(admin.PushSettingsUpload(upload_messages(json.dumps(doc).encode()), timeout=120).version)
        wait_for(lambda: in_force(admin).get("slow") == versions[-1], timeout=30)
        time.sleep(1.0)       # every worker has it in force; nothing has been read yet
        seen: list[int] = []
        for piece in call:
            if piece.last:
                seen.append(piece.version)
                if piece.version == versions[-1]:
                    break
        done.set()
        call.cancel()
    print(f"pushed versions {versions}; the replica that did not read got {seen}")
    assert seen[-1] == versions[-1]
    assert len(seen) < len(versions), seen     # not one snapshot per push: what changed while it waited, once


def test_a_replica_finds_a_server_gone_silent_and_follows_it_again(tmp_path: Path) -> None:
    """A link that dies without a word (here: the server stopped, its socket open): the replica gives the
    stream up after 10 s of silence and follows the server again once it answers."""
    srv = Server(tmp_path / "data", listen=f"127.0.0.1:{free_port()}")
    rep = Replica(srv.address, tmp_path / "replica", name="host-silent")
    try:
        wait_for(lambda: rep.events("replica_synced"), timeout=20)
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            broken = wait_for(lambda: [e for e in rep.events("replica_stream_broken")
                                       if "nothing from the server" in e["msg"]], timeout=30)
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)
        assert broken
        wait_for(lambda: len(rep.events("replica_synced")) >= 2, timeout=30)
    finally:
        assert rep.stop() == 0
        assert srv.stop() == 0


def test_a_host_with_a_wrong_clock_decides_at_the_servers_time(server: Server, stubs: Any, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The replica's host clock is four days slow (a careless proxy host): the replica measures the server's
    clock against it from every message, the status page carries the offset, and its workers, on the same
    wrong clock, decide "now" as the server decides at=0."""
    import asyncio

    from server.replica import follow

    decisions, _ = stubs
    skew = {"s": 4 * 86_400.0}
    real = time.time

    class SlowClock:
        monotonic = staticmethod(time.monotonic)

        @staticmethod
        def time() -> float:
            return real() - skew["s"]

    monkeypatch.setattr(follow, "time", SlowClock)
    follower = follow.Follower(lambda: grpc.aio.insecure_channel(server.address), tmp_path / "replica",
                               "host-slow-clock", ["acme"])
    ready: dict[str, Any] = {}

    def run() -> None:
        async def main() -> None:
            ready["stop"], ready["loop"] = asyncio.Event(), asyncio.get_running_loop()
            await follower.run(ready["stop"])

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        page = tmp_path / "replica" / replica_status.STATUS
        offset = wait_for(lambda: page.exists() and replica.clock_offset(page.read_bytes()), timeout=20)
        assert abs(offset - skew["s"]) < 2.0, offset
        local = replica.LocalDecisions(tmp_path / "replica", clock=SlowClock.time)
        held = local.snapshot("acme")
        assert held is not None
        for caller in CALLERS:
            for called in CALLED:
                answer = local.inbound("acme", caller, called)   # now, by the server's clock
                assert answer is not None and answer.action == "decide" and not answer.stale
                assert answer.decision is not None
                request = decisions_pb2.InboundRequest(tenant="acme", caller=caller, called=called)
                if answer.decision.verdict == "ERROR":
                    with pytest.raises(grpc.RpcError) as err:
                        decisions.Inbound(request, timeout=10)
                    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                else:
                    assert decisions.Inbound(request, timeout=10) == decision_message(answer.decision, "inbound",
                                                                                       held[0])
        local.close()
        # NTP sets the host's clock right: the readings from before the step are forgotten at once (the best
        # of the last 16 would have kept the old offset for 16 s)
        skew["s"] = 0.0
        wait_for(lambda: abs(replica.clock_offset(page.read_bytes())) < 2.0, timeout=5)
    finally:
        ready["loop"].call_soon_threadsafe(ready["stop"].set)
        thread.join(20)


def test_what_is_refused_for_good_is_not_asked_for_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A refusal the same bytes would meet again (too big; the server's own bytes, their sha256 as announced,
    failing the checks) is told to the server at every stream opened (WatchRequest.refused), and no retry is
    set for it; a full disk or bytes damaged on the way are asked for again.  An install clears it."""
    import asyncio
    import hashlib

    from server.replica import follow

    directory = tmp_path / "replica"
    follower = follow.Follower(lambda: None, directory, "host-r", max_bytes=1 << 20)

    def install(tenant: str, blob: bytes, checksum: str | None = None, size: int | None = None) -> Any:
        a = follow._Assembly(tenant, 7, checksum or hashlib.sha256(blob).hexdigest(), len(blob) if size is None
                             else size)
        return asyncio.run(follower._install(a, blob)).ack

    assert not install("big", b"", "b" * 64, size=2 << 20).ok                        # over --max-snapshot-mb
    assert not install("junk", b"not a snapshot").ok                                  # the server's bytes, refused
    assert follower._retry_at == 0.0 and set(follower._refused_for_good) == {"big", "junk"}
    first = follower.first_message({"acme": (3, "a" * 64)})
    assert {t: (r.version, r.checksum) for t, r in first.refused.items()} == {
        "big": (7, "b" * 64), "junk": (7, hashlib.sha256(b"not a snapshot").hexdigest())}
    assert dict(first.held)["acme"].version == 3
    assert not install("damaged", b"not a snapshot", "d" * 64).ok                     # not the bytes announced
    assert follower._retry_at > 0 and "damaged" not in follower._refused_for_good
    follower._retry_at = 0.0

    def full(*_: Any, **__: Any) -> None:
        raise OSError(28, "No space left on device")

    good = snapshot_blob()
    monkeypatch.setattr(replica, "write_snapshot", full)
    assert not install("junk", good).ok                                               # a full disk: again later
    assert follower._retry_at > 0
    monkeypatch.undo()
    assert install("junk", good).ok and set(follower._refused_for_good) == {"big"}    # installed: cleared
    # a replica following some tenants tells only theirs
    follower.tenants = ["junk"]
    assert not follower.first_message({}).refused


def snapshot_blob() -> bytes:
    """A real snapshot blob of tenant junk, version 7 (what the server sends)."""
    from engine import compile_settings, parse_settings
    from engine.snapshot import dumps

    return dumps(compile_settings(parse_settings(example_doc("junk")), version=7))


def test_a_replica_that_cannot_say_a_tenant_is_behind_stops_its_heartbeat(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk refuses a snapshot and then DIR/behind.json too: rather than a refused tenant looking fresh,
    the heartbeat stands still (every answer of the directory grows old) until the file can be written."""
    import asyncio

    from server.replica import follow

    directory = tmp_path / "replica"
    follower = follow.Follower(lambda: None, directory, "host-full")
    replica.touch_heartbeat(directory, 1000.0)
    real_write = replica.write_behind

    def full(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(replica, "write_behind", full)
    asyncio.run(follower._mark_behind("acme", ok=False))
    asyncio.run(follower._heartbeat())
    assert replica.last_heard(directory) == 1000.0            # stands still
    monkeypatch.setattr(replica, "write_behind", real_write)
    follower._heard = 0.0
    asyncio.run(follower._heartbeat())                        # the disk has room again: said, then heard
    assert "acme" in replica.read_behind(directory) and (replica.last_heard(directory) or 0) > 1000.0


class _FakeChannel:
    """A channel whose WatchSnapshots answers `pieces` and then nothing (until `stop`): the follower's session
    without a server.  The first message the follower sent is kept in `first`."""

    def __init__(self, pieces: list[Any], stop: Any) -> None:
        self.pieces, self.stop = list(pieces), stop
        self.first: Any = None

    async def __aenter__(self) -> _FakeChannel:
        return self

    async def __aexit__(self, *_: Any) -> None:
        return None

    def unary_unary(self, *_: Any, **__: Any) -> Any:
        return None

    unary_stream = stream_unary = unary_unary

    def stream_stream(self, *_: Any, **__: Any) -> Any:
        channel = self

        class Call:
            def __init__(self, requests: Any) -> None:
                self.requests = requests

            async def read(self) -> Any:
                if channel.first is None:
                    channel.first = await anext(self.requests)
                if channel.pieces:
                    return channel.pieces.pop(0)
                channel.stop.set()
                await asyncio.sleep(3600)

            def cancel(self) -> None:
                pass

        return Call


def test_a_version_refused_for_good_stays_behind_only_while_it_is_in_force(tmp_path: Path) -> None:
    """At a new stream the follower names what it refused for good; the server says which of them is still the
    version in force (SnapshotPiece.refused): that tenant stays behind, and one the server said nothing of (its
    version in force is one the replica holds) is in step again, forgotten as refused."""
    stop = asyncio.Event()
    follower = follow.Follower(lambda: channel, tmp_path / "replica", "host-s")
    follower._refused_for_good = {"acme": (7, "a" * 64), "beta": (3, "b" * 64)}
    asyncio.run(follower._mark_behind("acme", "beta", ok=False))
    channel = _FakeChannel([decisions_pb2.SnapshotPiece(tenant="acme", version=7, checksum="a" * 64, refused=True),
                            decisions_pb2.SnapshotPiece(synced=True, server_time_ms=int(time.time() * 1000))], stop)
    asyncio.run(follower._session(stop))
    assert channel.first is not None and sorted(channel.first.refused) == ["acme", "beta"]
    assert set(follower._refused_for_good) == {"acme"}
    assert set(replica.read_behind(follower.directory)) == {"acme"}
