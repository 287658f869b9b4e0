"""Two `callgate serve` "hosts" (separate processes and data directories) on one PostgreSQL database: what one
takes is in force in the other, and what must happen once happens once whichever host is asked."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from loadtest.postgres import PrivateCluster

from .serving import EXAMPLE, Server, example_doc, wait_for
from .store_cases import pg_database

EV = decisions_pb2.CallEventRequest
BLOCKED = "+12125550999"


@pytest.fixture
def hosts(request: pytest.FixtureRequest, tmp_path: Path, pg_cluster: PrivateCluster
          ) -> Iterator[tuple[Server, Server]]:
    """Host a (two workers, seeding acme with an opening credit: 10.00 unless the test says) and host b."""
    dsn = pg_database(pg_cluster)
    a = Server(tmp_path / "a", "--store", dsn, workers=2, seed_credit=getattr(request, "param", "10.00"))
    b = None
    try:
        b = Server(tmp_path / "b", "--store", dsn, seed=None)
        yield a, b
    finally:
        if b is not None:
            b.stop()
        a.stop()


def stubs(server: Server) -> tuple[decisions_pb2_grpc.DecisionsStub, admin_pb2_grpc.AdminStub]:
    channel = server.channel()
    return decisions_pb2_grpc.DecisionsStub(channel), admin_pb2_grpc.AdminStub(channel)


def verdict_of(decide: decisions_pb2_grpc.DecisionsStub, caller: str) -> tuple[int, int]:
    d = decide.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller=caller, called="+14155550199",
                                                    at=1_700_580_600), timeout=10)
    return d.version, d.verdict


def test_a_push_through_one_host_is_in_force_on_the_other(hosts: tuple[Server, Server]) -> None:
    a, b = hosts
    _, admin_a = stubs(a)
    decide_b, _ = stubs(b)
    assert verdict_of(decide_b, BLOCKED)[0] == 1          # b serves what a seeded, from the shared store
    doc = json.loads(EXAMPLE.read_text())
    doc["blacklist"] = [*doc["blacklist"], BLOCKED]
    pushed = admin_a.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()), timeout=30)
    start = time.monotonic()
    wait_for(lambda: verdict_of(decide_b, BLOCKED) == (pushed.version, decisions_pb2.REJECT), timeout=5)
    assert time.monotonic() - start < 2.0                  # in force on the other host within the poll
    # a compare-and-swap push from each host on the same version: exactly one wins
    results = []
    for server in (a, b):
        _, admin = stubs(server)
        try:
            admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode(),
                                                             expected_version=pushed.version), timeout=30)
            results.append("ok")
        except grpc.RpcError as err:
            results.append(err.code().name)
    assert results == ["ok", "FAILED_PRECONDITION"]


def test_call_events_across_hosts_are_recorded_and_billed_once(hosts: tuple[Server, Server]) -> None:
    a, b = hosts
    decide_a, admin_a = stubs(a)
    decide_b, admin_b = stubs(b)
    now = int(time.time())
    ringing = EV(tenant="acme", call_id="x1", kind=EV.RINGING, user="u3", at=now - 70, direction="outbound",
                 called="+12125550100")
    decide_a.CallEvent(ringing, timeout=10)
    assert decide_b.CallEvent(ringing, timeout=10).state == "ringing"     # a replay on the other host
    decide_b.CallEvent(EV(tenant="acme", call_id="x1", kind=EV.ANSWERED, user="u3", at=now - 65), timeout=10)
    with pytest.raises(grpc.RpcError) as err:   # another user answering on the first host: refused
        decide_a.CallEvent(EV(tenant="acme", call_id="x1", kind=EV.ANSWERED, user="u1", at=now - 64), timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    ended = EV(tenant="acme", call_id="x1", kind=EV.ENDED, at=now)
    first = decide_a.CallEvent(ended, timeout=10)
    again = decide_b.CallEvent(ended, timeout=10)
    assert first == again and first.charge == "0.04"                      # 2 x 60 s at 0.02/min, once
    for admin in (admin_a, admin_b):
        assert admin.GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10).balance == "9.96"
    ledger = admin_b.ListLedger(admin_pb2.LedgerRequest(tenant="acme"), timeout=10)
    assert [e.kind for e in ledger.entries].count("call") == 1
    # the same credit reference sent to both hosts: credited once
    for admin in (admin_a, admin_b):
        admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="5.00", reference="pay-7"), timeout=10)
    assert admin_a.GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10).balance == "14.96"


def test_a_number_held_through_one_host_is_refused_through_the_other(hosts: tuple[Server, Server]) -> None:
    _, b = hosts
    _, admin_b = stubs(b)
    beta = example_doc("beta")   # acme's own numbers, pushed as another tenant's through the other host
    with pytest.raises(grpc.RpcError) as err:
        admin_b.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(beta).encode()), timeout=30)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "+14155550199" in err.value.details()


@pytest.mark.parametrize("hosts", ["5.10"], indirect=True)
def test_a_top_up_due_is_charged_once_by_the_workers_of_both_hosts(hosts: tuple[Server, Server]) -> None:
    a, b = hosts
    decide_a, admin_a = stubs(a)
    admin_a.Card(admin_pb2.CardRequest(tenant="acme", number="4242424242424242", exp_month=12, exp_year=2040),
                 timeout=10)
    # 5.10 seeded; the call's credit hold takes the available credit below the threshold (the next renewal, at
    # least 4.50): a top-up opens, and the three workers of the two hosts all look for due top-ups every tick
    now = int(time.time())
    decide_a.CallEvent(EV(tenant="acme", call_id="t1", kind=EV.RINGING, user="u3", at=now, direction="outbound",
                          called="+12125550100"), timeout=10)

    def topped_up() -> bool:
        ledger = admin_a.ListLedger(admin_pb2.LedgerRequest(tenant="acme"), timeout=10)
        return any(e.kind == "topup" for e in ledger.entries)

    wait_for(topped_up, timeout=20)
    time.sleep(1.0)   # every worker has had several more ticks to charge it again
    ledger = admin_a.ListLedger(admin_pb2.LedgerRequest(tenant="acme"), timeout=10)
    assert [e.kind for e in ledger.entries].count("topup") == 1
    charged = [e for e in a.events("topup") + b.events("topup") if e.get("msg") == "auto top-up charged"]
    assert len(charged) == 1
