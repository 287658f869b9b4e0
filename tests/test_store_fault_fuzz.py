"""The wire fuzz under store faults: whatever the store does (disk full, I/O error, locked, damaged, a bug), no RPC
answers UNKNOWN; a transient fault is UNAVAILABLE and damage or a bug INTERNAL, each with a message; decisions
from memory go on; and the server serves normally once the fault is gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc

from .serving import EXAMPLE, Server, wait_for

REFUSALS = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
TRANSIENT = ("full", "io", "busy")
EV = decisions_pb2.CallEventRequest


class Faulty(Server):
    """A server whose store fails on demand (tests/faulty_server.py): `fault(kind)`, then `fault("")`."""

    def __init__(self, folder: Path) -> None:
        self.control = folder / "faults"
        super().__init__(folder / "data", seed_credit="10.00", program=("tests.faulty_server",),
                         env={"CALLGATE_TEST_FAULTS": str(self.control)})

    def fault(self, kind: str) -> None:
        self.control.write_text(kind)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Faulty]:
    server = Faulty(tmp_path_factory.mktemp("faulty"))
    yield server
    server.stop()


def requests(draw: Any, now: int) -> list[tuple[str, Any]]:
    """One request of each kind that reaches the store, with drawn values (some valid, some not)."""
    call_id = draw(st.sampled_from(["c1", "c2", "x" * 300, ""]))
    kind = draw(st.sampled_from([EV.RINGING, EV.ANSWERED, EV.ENDED, 99]))
    return [
        ("CallEvent", EV(tenant="acme", call_id=call_id, kind=kind, user="u3", at=now, direction="outbound",
                         called="+12125550100")),
        ("Pickup", decisions_pb2.PickupRequest(tenant="acme", user=draw(st.sampled_from(["u1", "u2", ""])),
                                               dialed="*8")),
        ("PushSettings", admin_pb2.PushSettingsRequest(document=EXAMPLE.read_bytes(), expected_version=1)),
        ("GetSettings", admin_pb2.GetSettingsRequest(tenant=draw(st.sampled_from(["acme", "nobody"])))),
        ("ListVersions", admin_pb2.ListVersionsRequest(tenant="acme")),
        ("PatchBlacklist", admin_pb2.PatchBlacklistRequest(tenant="acme", add=[draw(st.sampled_from(
            ["+14155550666", "12"]))])),
        ("Credit", admin_pb2.CreditRequest(tenant="acme", amount="1.00", reference=draw(st.sampled_from(["r1", ""])))),
        ("GetBalance", admin_pb2.BalanceRequest(tenant="acme")),
        ("ListLedger", admin_pb2.LedgerRequest(tenant="acme")),
        ("ListCalls", admin_pb2.ListCallsRequest(tenant="acme")),
        ("ListDocuments", admin_pb2.ListDocumentsRequest(tenant="acme")),
        ("NumberOwner", admin_pb2.NumberOwnerRequest(number="+14155550199")),
        ("ExportFailover", admin_pb2.ExportFailoverRequest()),
        ("ListAudit", admin_pb2.ListAuditRequest()),
        ("ListTokens", admin_pb2.ListTokensRequest()),
        ("Card", admin_pb2.CardRequest(tenant="acme")),
        # a dry run: the store checks everything and removes nothing (the other requests need acme)
        ("RemoveTenant", admin_pb2.RemoveTenantRequest(tenant="acme", confirm="acme", dry_run=True,
                                                       force=draw(st.booleans()))),
    ]


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_no_rpc_answers_unknown_whatever_the_store_does(faulty: Faulty, data: Any) -> None:
    channel = grpc.insecure_channel(faulty.address)
    decisions, admin = decisions_pb2_grpc.DecisionsStub(channel), admin_pb2_grpc.AdminStub(channel)
    fault = data.draw(st.sampled_from(["", *TRANSIENT, "damaged", "bug"]))
    faulty.fault(fault)
    try:
        for name, request in data.draw(st.permutations(requests(data.draw, int(time.time())))):
            stub = decisions if hasattr(decisions, name) else admin
            try:
                getattr(stub, name)(request, timeout=30)
            except grpc.RpcError as exc:
                code, details = exc.code(), exc.details() or ""
                assert code != grpc.StatusCode.UNKNOWN, f"{name} under {fault or 'no fault'}: UNKNOWN {details}"
                assert details, f"{name}: {code} without a message"
                if code == grpc.StatusCode.UNAVAILABLE:
                    assert fault in TRANSIENT, f"{name} under {fault or 'no fault'}: UNAVAILABLE {details}"
                elif code == grpc.StatusCode.INTERNAL:
                    assert fault in ("damaged", "bug"), f"{name} under {fault or 'no fault'}: INTERNAL {details}"
                    if fault == "damaged":
                        assert "will not work by retrying" in details
                else:
                    assert code in REFUSALS, f"{name} under {fault or 'no fault'}: {code} {details}"
        # decisions from memory never need the store
        d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666",
                                                           called="+14155550199"), timeout=10)
        assert d.reason == decisions_pb2.BLACKLISTED
    finally:
        faulty.fault("")
        channel.close()


def test_health_comes_back_when_the_store_does(tmp_path: Path) -> None:
    """A server of its own: damage (which the fuzz injects) keeps the store NOT_SERVING until a restart."""
    faulty = Faulty(tmp_path)
    try:
        check_health_comes_back(faulty)
        faulty.fault("damaged")
        channel = grpc.insecure_channel(faulty.address)
        with pytest.raises(grpc.RpcError):
            admin_pb2_grpc.AdminStub(channel).GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10)
        faulty.fault("")
        health = health_pb2_grpc.HealthStub(channel)
        time.sleep(1.5)                                                 # a probe would have run: damage stays
        assert health.Check(health_pb2.HealthCheckRequest(service="callgate.v1.Store"),
                            timeout=10).status == health_pb2.HealthCheckResponse.NOT_SERVING
        channel.close()
    finally:
        faulty.stop()


def check_health_comes_back(faulty: Faulty) -> None:
    channel = grpc.insecure_channel(faulty.address)
    health = health_pb2_grpc.HealthStub(channel)

    def status() -> Any:
        return health.Check(health_pb2.HealthCheckRequest(service="callgate.v1.Store"), timeout=10).status

    faulty.fault("io")
    with pytest.raises(grpc.RpcError):
        admin_pb2_grpc.AdminStub(channel).GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10)
    wait_for(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, timeout=10)
    faulty.fault("")
    wait_for(lambda: status() == health_pb2.HealthCheckResponse.SERVING, timeout=10)
    balance = admin_pb2_grpc.AdminStub(channel).GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10)
    assert balance.currency == "USD"                                              # answered again
    channel.close()
