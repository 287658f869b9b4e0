"""Decisions.CallEvents: many call events in one RPC (what Kamailio's spool sends), each answered as CallEvent
answers it alone; one call's events applied in the order given; an event refused refuses only itself; a batch
sent again (the reply lost) changes nothing and gets the same answers."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc

from .serving import Server
from .test_lifecycle import DOC, EV, US_DEST, no_rentals

OK = 0
NOW = int(time.time())   # call events are checked against the server's clock


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    srv = Server(tmp_path_factory.mktemp("data"))
    try:
        with srv.channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(no_rentals(DOC)).encode()),
                               timeout=60)
            admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="10.00", reference="opening"), timeout=10)
            yield decisions_pb2_grpc.DecisionsStub(channel), admin
    finally:
        assert srv.stop() == 0


def outbound_call(call_id: str, start: int, talk_s: int = 61) -> list[decisions_pb2.CallEventRequest]:
    """An answered outbound call's three events (0.02 a started minute to US_DEST: 61 s cost 0.04)."""
    return [EV(tenant="acme", call_id=call_id, kind=EV.RINGING, user="u3", at=start, direction="outbound",
               called=US_DEST),
            EV(tenant="acme", call_id=call_id, kind=EV.ANSWERED, user="u3", at=start + 1),
            EV(tenant="acme", call_id=call_id, kind=EV.ENDED, at=start + 1 + talk_s)]


def code(result: decisions_pb2.CallEventResult) -> int:
    return OK if result.WhichOneof("result") == "reply" else result.error_code


def ledger(admin: Any) -> list[tuple[str, str]]:
    return [(e.kind, e.amount) for e in admin.ListLedger(admin_pb2.LedgerRequest(tenant="acme"), timeout=10).entries]


def test_a_batch_is_answered_event_by_event_in_order_and_charged_once(stubs: tuple[Any, Any]) -> None:
    decisions, admin = stubs
    before = admin.GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10).balance
    events = [*outbound_call("b-1", NOW - 300),
              EV(tenant="acme", call_id="", kind=EV.RINGING, user="u3"),             # no call id
              EV(tenant="nobody", call_id="b-2", kind=EV.RINGING, user="u3"),        # no such tenant
              *outbound_call("b-3", NOW - 200, talk_s=30)]
    reply = decisions.CallEvents(decisions_pb2.CallEventBatch(events=events), timeout=30)
    codes = [code(r) for r in reply.results]
    assert codes == [OK, OK, OK, grpc.StatusCode.INVALID_ARGUMENT.value[0], grpc.StatusCode.NOT_FOUND.value[0],
                     OK, OK, OK], reply
    assert "call_id" in reply.results[3].error and "nobody" in reply.results[4].error
    states = [r.reply.state for r in reply.results if code(r) == OK]
    assert states == ["ringing", "answered", "ended"] * 2
    assert (reply.results[2].reply.charge, reply.results[7].reply.charge) == ("0.04", "0.02")
    charged = ledger(admin)
    after = admin.GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10).balance

    # the reply lost, the proxy sends the batch again: the recorded answers, nothing billed twice
    again = decisions.CallEvents(decisions_pb2.CallEventBatch(events=events), timeout=30)
    assert [code(r) for r in again.results] == codes
    assert [r.reply for r in again.results] == [r.reply for r in reply.results]
    assert ledger(admin) == charged
    assert admin.GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10).balance == after != before


def test_one_calls_events_are_applied_in_the_order_given(stubs: tuple[Any, Any]) -> None:
    """A call's ENDED before its ANSWERED in one batch: the ENDED ends the call unanswered (nothing to bill)
    and the ANSWERED that follows is refused, as the same two sent one after the other would be; another
    call's events in the same batch are not held up by it."""
    decisions, _ = stubs
    ringing, answered, ended = outbound_call("o-1", NOW - 100)
    single = [*outbound_call("o-2", NOW - 100)]
    reply = decisions.CallEvents(decisions_pb2.CallEventBatch(events=[ringing, single[0], ended, single[1],
                                                                      answered, single[2]]), timeout=30)
    r = reply.results
    assert [code(r[0]), code(r[2])] == [OK, OK] and r[2].reply.outcome != "answered"
    assert r[2].reply.charge in ("", "0.00")
    assert code(r[4]) == grpc.StatusCode.FAILED_PRECONDITION.value[0], r[4]
    assert [code(r[1]), code(r[3]), code(r[5])] == [OK, OK, OK] and r[5].reply.charge == "0.04"

    # the same through CallEvent, one by one: the same answers
    unary = []
    ringing, answered, ended = outbound_call("o-3", NOW - 100)
    for event in (ringing, ended, answered):
        try:
            unary.append(decisions.CallEvent(event, timeout=10).state)
        except grpc.RpcError as exc:
            unary.append(exc.code().name)
    assert unary == ["ringing", "ended", "FAILED_PRECONDITION"]


@pytest.mark.parametrize("n", [0, 1_001])
def test_an_empty_or_oversized_batch_is_invalid_argument(stubs: tuple[Any, Any], n: int) -> None:
    decisions, _ = stubs
    events = [EV(tenant="acme", call_id=f"x-{i}", kind=EV.RINGING, user="u1") for i in range(n)]
    with pytest.raises(grpc.RpcError) as err:
        decisions.CallEvents(decisions_pb2.CallEventBatch(events=events), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "1 to 1,000 events" in (err.value.details() or "")


def test_the_largest_batch_is_taken_whole(stubs: tuple[Any, Any]) -> None:
    decisions, _ = stubs
    events = [EV(tenant="acme", call_id=f"big-{i}", kind=EV.RINGING, user="u1", direction="inbound",
                 caller="+14155551234", called="+14155550199") for i in range(1_000)]
    reply = decisions.CallEvents(decisions_pb2.CallEventBatch(events=events), timeout=60)
    assert [code(r) for r in reply.results] == [OK] * 1_000
    assert {r.reply.call_id for r in reply.results} == {f"big-{i}" for i in range(1_000)}

