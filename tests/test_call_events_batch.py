"""Decisions.CallEvents: many call events in one RPC (what Kamailio's spool sends), each answered as CallEvent
answers it alone; one call's events applied in the order given; an event refused refuses only itself; a batch
sent again (the reply lost) changes nothing and gets the same answers."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc

from .serving import Server, wait_for
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


def test_a_calls_first_event_not_answered_stops_that_call_only(stubs: tuple[Any, Any]) -> None:
    """An ANSWERED refused (another user answered already) stops its call: the ENDED after it in the batch is
    not tried (ABORTED), where applying it would end the call as the proxy never saw it; another call in the
    same batch goes on.  CallEventsInOrder, the name a client relies on to send a call's events together, is
    the same call."""
    decisions, _ = stubs
    ringing, answered, ended = outbound_call("s-1", NOW - 90)
    other = outbound_call("s-2", NOW - 90)
    assert code(decisions.CallEvents(decisions_pb2.CallEventBatch(events=[ringing, answered]), timeout=30)
                .results[1]) == OK
    stranger = EV(tenant="acme", call_id="s-1", kind=EV.ANSWERED, user="u1", at=NOW - 89)
    reply = decisions.CallEventsInOrder(decisions_pb2.CallEventBatch(events=[stranger, other[0], ended,
                                                                             *other[1:]]), timeout=30)
    r = reply.results
    assert code(r[0]) == grpc.StatusCode.FAILED_PRECONDITION.value[0], r[0]
    assert code(r[2]) == grpc.StatusCode.ABORTED.value[0] and "event 0" in r[2].error, r[2]
    assert [code(r[1]), code(r[3]), code(r[4])] == [OK, OK, OK] and r[4].reply.charge == "0.04"
    # the ENDED was not applied: sent again, it ends the call answered and bills it
    again = decisions.CallEvents(decisions_pb2.CallEventBatch(events=[ended]), timeout=30).results[0]
    assert code(again) == OK and again.reply.outcome == "answered" and again.reply.charge == "0.04"


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



def test_batches_in_flight_at_a_kill_9_are_billed_once_when_sent_again(tmp_path: Path) -> None:
    """A proxy's spool sends call endings in batches of 50; the server is killed (SIGKILL) while they go.  Every
    event a batch acknowledged is in the ledger once; the spool sends every batch again to the restarted server:
    the acknowledged get their first reply, the rest are billed, each call once, and the books add up."""
    from .test_crash import check_books, start

    data = tmp_path / "data"
    srv = start(data)
    t0 = NOW - 3600
    calls = 400
    with srv.channel() as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        decisions = decisions_pb2_grpc.DecisionsStub(channel)
        admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(no_rentals(DOC)).encode()), timeout=60)
        admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="100.00", reference="opening"), timeout=10)
        for start_at in range(0, calls, 100):   # rung and answered, 100 calls a batch
            events = [e for i in range(start_at, start_at + 100) for e in outbound_call(f"k{i}", t0 + i)[:2]]
            reply = decisions.CallEvents(decisions_pb2.CallEventBatch(events=events), timeout=60)
            assert all(code(r) == OK for r in reply.results)
        endings = [[outbound_call(f"k{i}", t0 + i)[2] for i in range(b, b + 50)] for b in range(0, calls, 50)]
        acknowledged: dict[str, decisions_pb2.CallEventReply] = {}

        def send(batch: list[decisions_pb2.CallEventRequest]) -> None:
            try:
                reply = decisions.CallEvents(decisions_pb2.CallEventBatch(events=batch), timeout=30)
            except grpc.RpcError:
                return   # the server died under it: nothing acknowledged
            for event, result in zip(batch, reply.results, strict=True):
                if code(result) == OK:
                    acknowledged[event.call_id] = result.reply

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(send, batch) for batch in endings]
            wait_for(lambda: len(acknowledged) >= 50, timeout=60, interval=0.002)
            os.kill(srv.proc.pid, signal.SIGKILL)
            for f in futures:
                f.result()
    srv.proc.wait(10)
    assert 0 < len(acknowledged) < calls, len(acknowledged)
    db = data / "callgate.sqlite"
    with sqlite3.connect(db) as conn:
        charged = dict(conn.execute("SELECT ref, COUNT(*) FROM ledger WHERE kind = 'call' GROUP BY ref").fetchall())
    assert all(charged.get(call_id) == 1 for call_id in acknowledged)

    srv = start(data)
    try:
        with srv.channel() as channel:
            decisions = decisions_pb2_grpc.DecisionsStub(channel)
            for batch in endings:   # the spool sends everything again: it never heard the lost answers
                reply = decisions.CallEvents(decisions_pb2.CallEventBatch(events=batch), timeout=60)
                for event, result in zip(batch, reply.results, strict=True):
                    assert code(result) == OK and result.reply.charge == "0.04", result
                    if event.call_id in acknowledged:
                        assert result.reply == acknowledged[event.call_id]   # a replay answers as the first time
        books = check_books(db, settled=False)
        assert books["calls"] == calls
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT COUNT(DISTINCT ref) FROM ledger WHERE kind = 'call'").fetchone()[0] == calls
    finally:
        assert srv.stop() == 0
