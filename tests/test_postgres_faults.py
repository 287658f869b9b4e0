"""PostgreSQL restarted under load: decisions keep answering from memory, events and pushes are refused with
UNAVAILABLE and a hint to retry, everything recovers without restarting callgate, and no acknowledged event is
lost or billed twice."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from loadtest.postgres import PrivateCluster

from .serving import EXAMPLE, Server, wait_for

EV = decisions_pb2.CallEventRequest
STORE = "callgate.v1.Store"


def store_health(server: Server) -> Any:
    stub = health_pb2_grpc.HealthStub(server.channel())
    return stub.Check(health_pb2.HealthCheckRequest(service=STORE), timeout=10).status


def test_a_postgresql_restart_under_load_loses_nothing_and_needs_no_restart(tmp_path: Path) -> None:
    with PrivateCluster() as pg:
        server = Server(tmp_path / "data", "--store", pg.dsn, workers=2, seed_credit="100.00")
        try:
            run(server, pg)
        finally:
            server.stop()


def run(server: Server, pg: PrivateCluster) -> None:
    channel = server.channel()
    decide, admin = decisions_pb2_grpc.DecisionsStub(channel), admin_pb2_grpc.AdminStub(channel)
    stop = threading.Event()
    decided, decision_errors = [0], []
    acked: dict[str, str] = {}          # call id -> the charge its acknowledged ENDED answered
    refused: list[str] = []             # details of refused events

    def decisions() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and decided[0] < 20_000:
            try:
                d = decide.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666",
                                                                called="+14155550199"), timeout=5)
                assert d.reason == decisions_pb2.BLACKLISTED
                decided[0] += 1
            except grpc.RpcError as exc:
                decision_errors.append(f"{exc.code().name}: {exc.details()}")
            time.sleep(0.003)

    def calls() -> None:
        n, deadline = 0, time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and n < 2_000:
            n += 1
            call_id, now = f"pg-{n}", int(time.time())
            try:
                for kind, at, user in ((EV.RINGING, now - 70, "u3"), (EV.ANSWERED, now - 65, "u3"),
                                       (EV.ENDED, now, "")):
                    reply = decide.CallEvent(EV(tenant="acme", call_id=call_id, kind=kind, user=user, at=at,
                                                direction="outbound", called="+12125550100"), timeout=10)
                acked[call_id] = reply.charge
            except grpc.RpcError as exc:
                refused.append(f"{exc.code().name}: {exc.details()}")
            time.sleep(0.02)

    threads = [threading.Thread(target=decisions), threading.Thread(target=calls)]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        before = len(acked)
        pg.stop()                                                   # a fast shutdown: every connection cut
        stopped_at = time.monotonic()
        wait_for(lambda: store_health(server) == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10)
        try:
            admin.PushSettings(admin_pb2.PushSettingsRequest(document=EXAMPLE.read_bytes()), timeout=30)
            raise AssertionError("a push with the database down was answered")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc.details()
        time.sleep(max(0.0, 2.0 - (time.monotonic() - stopped_at)))
        pg.start()
        restarted = time.monotonic()
        wait_for(lambda: len(acked) > before + 5 and store_health(server) == health_pb2.HealthCheckResponse.SERVING,
                 timeout=20)
        recovered_s = time.monotonic() - restarted
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    print(f"decisions {decided[0]}, errors {len(decision_errors)}; calls acknowledged {len(acked)}, refused "
          f"{len(refused)}; events flowing again {recovered_s:.1f} s after the restart")
    assert not decision_errors, decision_errors[:3]                   # answered from memory throughout
    assert refused, "no event was refused while the database was down"
    assert all(r.startswith("UNAVAILABLE") for r in refused), refused[:3]
    assert any("try again" in r for r in refused), refused[:3]
    # nothing acknowledged is lost, nothing is billed twice: one call charge per acknowledged call
    ledger = admin.ListLedger(admin_pb2.LedgerRequest(tenant="acme", limit=10_000), timeout=30)
    charges = [e.ref for e in ledger.entries if e.kind == "call"]
    assert len(charges) == len(set(charges))
    assert set(acked) <= set(charges)
    listed = {c.call_id: c for c in admin.ListCalls(admin_pb2.ListCallsRequest(tenant="acme", state="ended",
                                                                               limit=10_000), timeout=30).calls}
    assert all(listed[c].charge == acked[c] for c in acked)
    admin.PushSettings(admin_pb2.PushSettingsRequest(document=EXAMPLE.read_bytes()), timeout=30)  # pushes too
    channel.close()
