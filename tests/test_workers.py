"""`callgate serve --workers N`: shared port, propagation of pushes, a worker killed under load."""

from __future__ import annotations

import copy
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from loadtest.process import free_port

from .serving import EXAMPLE, Server, wait_for

DOC = json.loads(EXAMPLE.read_text())
TUESDAY_1030_LA = 1796149800


def versions_by_worker(address: str, tries: int = 40) -> dict[int, int]:
    """pid -> loaded version, asking over fresh connections (SO_REUSEPORT spreads them over workers)."""
    seen: dict[int, int] = {}
    for _ in range(tries):
        with grpc.insecure_channel(address) as channel:
            reply = admin_pb2_grpc.AdminStub(channel).Stats(admin_pb2.StatsRequest(tenant="acme"), timeout=5)
            seen[reply.pid] = reply.tenants[0].loaded_version
    return seen


@pytest.fixture()
def two_workers(tmp_path):
    srv = Server(tmp_path / "data", listen=f"127.0.0.1:{free_port()}", workers=2)
    yield srv
    assert srv.stop() == 0


def test_push_through_one_worker_is_in_force_in_all(two_workers):
    address = two_workers.address
    wait_for(lambda: len(versions_by_worker(address)) == 2)
    with grpc.insecure_channel(address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        doc = copy.deepcopy(DOC)
        doc["blacklist"].append("+14155552222")
        version = admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()),
                                     timeout=60).version
    pushed = time.monotonic()
    # generous bound for a noisy machine; the benchmark reports the real propagation time
    wait_for(lambda: set(versions_by_worker(address, tries=20).values()) == {version}, timeout=5)
    print(f"push in force in both workers after {time.monotonic() - pushed:.3f} s")


def test_kill_9_of_one_worker_under_load(two_workers):
    address = two_workers.address
    pids = {r["worker_pid"] for r in two_workers.events("worker_started")}
    assert len(pids) == 2
    stop = threading.Event()
    results: dict[str, int] = {"ok": 0, "unavailable": 0}
    other: list[grpc.StatusCode] = []

    def load() -> None:
        deadline = time.monotonic() + 20  # bounded in time and count
        for _ in range(20_000):
            if stop.is_set() or time.monotonic() > deadline:
                return
            with grpc.insecure_channel(address) as channel:
                stub = decisions_pb2_grpc.DecisionsStub(channel)
                for _ in range(20):
                    try:
                        d = stub.Inbound(decisions_pb2.InboundRequest(
                            tenant="acme", caller="+14155550666", called="+14155550199", at=TUESDAY_1030_LA), timeout=5)
                        assert d.reason == decisions_pb2.BLACKLISTED
                        results["ok"] += 1
                    except grpc.RpcError as exc:
                        if exc.code() == grpc.StatusCode.UNAVAILABLE:
                            results["unavailable"] += 1  # calls in flight on the killed worker
                        else:
                            other.append(exc.code())

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    victim = sorted(pids)[0]
    os.kill(victim, signal.SIGKILL)
    ok_at_kill = results["ok"]
    time.sleep(2.0)
    ok_after = results["ok"] - ok_at_kill
    # the supervisor starts a replacement
    wait_for(lambda: len({r["worker_pid"] for r in two_workers.events("worker_started")}) == 3, timeout=30)
    stop.set()
    for t in threads:
        t.join(30)
    assert ok_after > 50, "the surviving worker kept answering"
    assert not other, other[:5]
    assert two_workers.events("worker_died")
    # nothing stored is lost or corrupted
    db = sqlite3.connect(two_workers_db(two_workers))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT version FROM current WHERE tenant='acme'").fetchone()[0] == 1
    db.close()
    with grpc.insecure_channel(address) as channel:
        d = decisions_pb2_grpc.DecisionsStub(channel).Inbound(decisions_pb2.InboundRequest(
            tenant="acme", caller="+14155550666", called="+14155550199", at=TUESDAY_1030_LA), timeout=5)
        assert d.reason == decisions_pb2.BLACKLISTED


def two_workers_db(srv: Server) -> str:
    cmd = srv.proc.args
    assert isinstance(cmd, list)
    return str(cmd[cmd.index("--data-dir") + 1]) + "/callgate.sqlite"


def test_metrics_add_up_the_workers(tmp_path):
    metrics_port = free_port()
    srv = Server(tmp_path / "data", listen=f"127.0.0.1:{free_port()}", workers=2,
                 metrics=f"127.0.0.1:{metrics_port}")
    try:
        for _ in range(30):  # fresh connections land on both workers
            with grpc.insecure_channel(srv.address) as channel:
                decisions_pb2_grpc.DecisionsStub(channel).Inbound(decisions_pb2.InboundRequest(
                    tenant="acme", caller="+14155550666", called="+14155550199", at=TUESDAY_1030_LA), timeout=5)

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
                return reply.read().decode()

        line = 'callgate_decisions_total{reason="BLACKLISTED",verdict="REJECT"} 30.0'
        text = wait_for(lambda: line in (t := scrape()) and t, timeout=10)
        assert 'callgate_decision_seconds_count{rpc="inbound"} 30.0' in text
        assert 'callgate_tenant_version{tenant="acme"} 1.0' in text
    finally:
        srv.stop()


def test_metrics_folders_of_supervisors_that_are_gone_are_swept(tmp_path: Path) -> None:
    from server.app.supervisor import METRICS_PREFIX, sweep_metrics_dirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    gone = tmp_path / f"{METRICS_PREFIX}{dead.pid}-abc"       # a supervisor killed with SIGKILL left it
    live = tmp_path / f"{METRICS_PREFIX}{os.getpid()}-def"    # a running one's
    other = tmp_path / f"{METRICS_PREFIX}abc"                 # not named by a pid: not ours to judge
    for folder in (gone, live, other):
        folder.mkdir()
    assert sweep_metrics_dirs(str(tmp_path)) == [gone.name]
    assert not gone.exists() and live.exists() and other.exists()
