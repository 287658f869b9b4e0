"""The Kamailio script's sender (integrations/kamailio/callgate_kemi.py `ksr_callgate_sender`) over a real spool,
with a stand-in for callgate's CallEvents: a round's new events go straight to callgate and only those not
answered enter the spool's table; a call's events stay in order whatever fails; nothing is lost when the table
cannot be written after a send."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from callgate.v1 import decisions_pb2

from .serving import wait_for
from .test_kemi_record import SCRIPT, Variables, kemi  # noqa: F401  (the script under a stand-in KSR)

Verdict = Callable[[decisions_pb2.CallEventRequest], str]   # "" answered, else a grpc.StatusCode's name


class CallEvents:
    """callgate's CallEventsInOrder and CallEvents as far as the sender sees them: each event answered by
    `verdict`; a call stopped at its first event not answered (the rest ABORTED), as callgate does; or, `in_order`
    False, a callgate before that rule: no CallEventsInOrder (UNIMPLEMENTED), and CallEvents goes on with a call
    after its failed event.  Every event it was sent, in order, in `seen`; each batch's method in `methods`."""

    def __init__(self, verdict: Verdict = lambda event: "", in_order: bool = True) -> None:
        self.verdict, self.in_order = verdict, in_order
        self.batches: list[list[str]] = []
        self.methods: list[str] = []
        self.down = False

    def ordered(self, batch: Any, **kwargs: Any) -> decisions_pb2.CallEventBatchReply:
        if not self.in_order:
            raise RpcError(grpc.StatusCode.UNIMPLEMENTED)
        return self.plain(batch, method="CallEventsInOrder")

    def plain(self, batch: Any, method: str = "CallEvents", **kwargs: Any) -> decisions_pb2.CallEventBatchReply:
        if self.down:
            raise RpcError(grpc.StatusCode.UNAVAILABLE)
        self.batches.append([f"{e.call_id}:{decisions_pb2.CallEventRequest.Kind.Name(e.kind)}" for e in batch.events])
        self.methods.append(method)
        reply = decisions_pb2.CallEventBatchReply()
        stopped: set[str] = set()
        for event in batch.events:
            result = reply.results.add()
            name = "ABORTED" if event.call_id in stopped else self.verdict(event)
            if not name:
                result.reply.call_id = event.call_id
                continue
            result.error, result.error_code = f"{name} here", getattr(grpc.StatusCode, name).value[0]
            if self.in_order:
                stopped.add(event.call_id)
        return reply

    @property
    def seen(self) -> list[str]:
        return [key for batch in self.batches for key in batch]


class RpcError(grpc.RpcError):
    def __init__(self, status: grpc.StatusCode) -> None:
        self.status = status

    def code(self) -> grpc.StatusCode:
        return self.status

    def details(self) -> str:
        return f"{self.status.name} here"


@pytest.fixture
def sender(kemi: tuple[Any, Variables], tmp_path: Path,  # noqa: F811
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    script, _ = kemi
    for level in ("err", "warn", "notice", "info"):
        monkeypatch.setattr(sys.modules["KSR"], level, lambda text: None, raising=False)
    module = script.recall.__globals__
    worker = script()
    worker.spool = module["Spool"](str(tmp_path / "events.sqlite"), 1000)
    worker._pid = os.getpid()
    monkeypatch.setitem(module, "SPOOL_FILE", str(tmp_path / "events.sqlite"))
    monkeypatch.setitem(module, "SEND_EVERY_S", 0.0)   # (a round at every call; the cadence has a test of its own)
    yield worker
    killed(worker)


def answering(sender: Any, server: CallEvents) -> CallEvents:
    sender._stub = type("Stub", (), {"CallEventsInOrder": staticmethod(server.ordered),
                                     "CallEvents": staticmethod(server.plain)})()
    return server


def spool(sender: Any, *keys: str) -> None:
    """Events `call:KIND` appended to the spool's journal as a SIP worker appends them, and old enough to read."""
    items = []
    for key in keys:
        call, _, kind = key.partition(":")
        request = decisions_pb2.CallEventRequest(tenant="acme", call_id=call, kind=getattr(
            decisions_pb2.CallEventRequest, kind), at=int(time.time()))
        items.append((key, call, request.SerializeToString()))
    sender.spool.add(items)
    time.sleep(0.025)   # past the round's watermark


def round_(sender: Any) -> None:
    sender.backoff_until = 0.0   # (no waiting out the back-off in a test)
    sender.ksr_callgate_sender(None)


def table(sender: Any) -> list[tuple[str, int]]:
    return [(key, state) for key, state in sender.spool.conn().execute("SELECT key, state FROM events ORDER BY id")
            if key != "w:RINGING"]


CALL = ("RINGING", "ANSWERED", "ENDED")


def calls(*ids: str) -> list[str]:
    """Each call's three events, the calls interleaved as a busy proxy writes them."""
    return [f"{call}:{kind}" for kind in CALL for call in ids]


def warmed(sender: Any, server: CallEvents) -> None:
    """One round with one event: the sender learns whether callgate has CallEventsInOrder."""
    answering(sender, server)
    spool(sender, "w:RINGING")
    round_(sender)
    round_(sender)   # (the table found empty: from now on a round's events go straight to callgate)
    assert server.seen == ["w:RINGING"] and sender.in_order == server.in_order and not sender.backlog
    server.batches.clear()
    server.methods.clear()


def test_a_rounds_events_go_straight_to_callgate_in_one_call_and_never_enter_the_table(sender: Any) -> None:
    server = CallEvents()
    warmed(sender, server)
    spool(sender, *calls("a", "b", "c"))
    round_(sender)
    assert server.batches == [calls("a", "b", "c")]
    assert table(sender) == [] and not sender.backlog
    round_(sender)                              # what was read counts as read: nothing sent twice
    assert len(server.batches) == 1
    assert committed(sender) != sizes(sender)   # (how far: committed at most a second later, not at every round)
    sender.spool._saved_at -= 1.0               # a second later, a quiet round commits it
    round_(sender)
    assert committed(sender) == sizes(sender) and len(server.batches) == 1


def killed(sender: Any) -> None:
    """What the kernel does for a sender killed: its lock on the spool (`Spool.claim_sender`) dropped."""
    if sender.spool._claim_fd >= 0:
        os.close(sender.spool._claim_fd)
        sender.spool._claim_fd = -1


def test_a_second_kamailio_on_the_same_spool_leaves_its_events_to_the_first_ones_sender(
        sender: Any, kemi: tuple[Any, Variables], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Two Kamailio instances given one CALLGATE_SPOOL (a copied configuration): one sender (the only writer of
    the spool's table) sends every journal of the directory, the other's too; the other says so once and takes
    over when the first is gone."""
    server = CallEvents()
    warmed(sender, server)
    script, _ = kemi
    second = script()
    second.spool, second._pid = type(sender.spool)(sender.spool.path, 1000), os.getpid()
    answering(second, server)
    said: list[str] = []
    monkeypatch.setattr(sys.modules["KSR"], "err", said.append, raising=False)
    spool(second, *calls("b"))   # (the second instance's worker's journal)
    round_(second)
    round_(second)
    assert server.batches == [] and len(said) == 1, (server.batches, said)
    assert f"another process (pid {os.getpid()}) sends the event spool" in said[0]
    round_(sender)
    assert server.batches == [calls("b")]
    sender.spool._saved_at -= 1.0   # (how far it read committed, as a second later: else the next sender sends
    round_(sender)                  # b again, and callgate answers the replay)
    killed(sender)
    spool(second, *calls("c"))
    round_(second)
    assert server.batches == [calls("b"), calls("c")] and len(said) == 1


def restarted_sender(sender: Any, server: CallEvents) -> Any:
    """The sender after a kill -9: a new process over the same spool (what its table holds), its first two rounds
    done against `server` (whose batches are cleared first)."""
    killed(sender)
    restarted = type(sender)()
    restarted.spool, restarted._pid = type(sender.spool)(sender.spool.path, 1000), os.getpid()
    answering(restarted, server)
    server.batches.clear()
    round_(restarted)
    round_(restarted)
    return restarted


def committed(sender: Any) -> dict[str, int]:
    """How far each journal was read, as the spool's table holds it (what a restarted sender reads from)."""
    return dict(sender.spool.conn().execute("SELECT name, offset FROM journals"))


def sizes(sender: Any) -> dict[str, int]:
    folder = sender.spool.journals
    return {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}


def test_a_crash_before_the_offsets_are_committed_sends_the_events_again_and_loses_none(sender: Any) -> None:
    server = CallEvents()
    warmed(sender, server)
    spool(sender, *calls("a", "b"))
    round_(sender)
    spool(sender, *calls("c"))
    round_(sender)
    assert server.seen == [*calls("a", "b"), *calls("c")] and table(sender) == []
    # kill -9 of the sender: a new process reads the table's offsets, behind what was sent
    restarted = restarted_sender(sender, server)
    # every event after the last commit sent again (callgate answers a replay with its recorded reply), in order;
    # (a sender that starts sends through the table until it finds it empty) none waits
    assert server.seen == [*calls("a", "b"), *calls("c")]
    assert {state for _, state in table(restarted)} == {1}


def test_a_call_callgate_cannot_take_waits_in_the_table_in_order_and_the_others_go(sender: Any) -> None:
    server = CallEvents(lambda event: "UNAVAILABLE" if event.call_id == "b" else "")
    warmed(sender, server)
    spool(sender, *calls("a", "b", "c"))
    before = time.monotonic()
    sender.ksr_callgate_sender(None)
    # the others answered: no back-off for one call's events, tried again from the table at once; only that
    # try, where nothing was answered, backs off
    assert server.batches == [calls("a", "b", "c"), [f"b:{kind}" for kind in CALL]]
    assert table(sender) == [("b:RINGING", 0), ("b:ANSWERED", 0), ("b:ENDED", 0)]
    assert sender.backoff_until > before and sender.backlog and sender.failures == 1
    server.verdict = lambda event: ""
    spool(sender, *calls("d"))                  # while events wait, new ones join them, behind
    round_(sender)
    assert server.batches[2] == [*[f"b:{kind}" for kind in CALL], *calls("d")]
    assert {state for _, state in table(sender)} == {1} and len(table(sender)) == 6
    assert not sender.backlog
    spool(sender, *calls("e"))                  # the backlog sent: straight to callgate again
    round_(sender)
    assert server.batches[3] == calls("e") and len(table(sender)) == 6


def test_an_event_refused_for_good_is_kept_as_refused_and_its_calls_next_event_goes_next(sender: Any) -> None:
    server = CallEvents(lambda event: "FAILED_PRECONDITION" if event.call_id == "b" and event.kind == 2 else "")
    warmed(sender, server)
    spool(sender, *calls("a", "b"))
    before = time.monotonic()
    sender.ksr_callgate_sender(None)
    assert server.batches[0] == calls("a", "b")
    assert table(sender)[:1] == [("b:ANSWERED", 2)]   # (the ENDED after it: next, sent at once from the table)
    assert sender.backoff_until < before          # a refusal is no reason to wait
    assert server.batches[1:] == [["b:ENDED"]] and table(sender) == [("b:ANSWERED", 2), ("b:ENDED", 1)]
    assert sender.spool.stats()[2] == 1 and not sender.backlog


def test_a_round_all_answered_but_a_refusal_keeps_the_refused_event_and_nothing_else(sender: Any) -> None:
    """Every event of the round answered, one of them refused for good (a call's last): nothing waits, and the
    refused one is kept as refused for the figures (the round that looks at no event is the one all sent)."""
    server = CallEvents(lambda event: "INVALID_ARGUMENT" if event.call_id == "b" and event.kind == 4 else "")
    warmed(sender, server)
    spool(sender, *calls("a", "b"))
    round_(sender)
    assert server.batches == [calls("a", "b")]
    assert table(sender) == [("b:ENDED", 2)] and not sender.backlog and sender.spool.stats()[2] == 1


def table_rows(sender: Any) -> dict[str, tuple[int, int, float]]:
    """key -> (state, tries, done_at) of the spool's table."""
    return {key: (state, tries, done_at) for key, state, tries, done_at in sender.spool.conn().execute(
        "SELECT key, state, attempts, done_at FROM events")}


def retry_now(sender: Any) -> None:
    """The time of every event waiting out its retry come (as if its wait were over)."""
    sender.spool.conn().execute("UPDATE events SET done_at = 0 WHERE state = 0 AND attempts > 0")


def test_an_event_callgate_fails_with_internal_is_tried_again_its_call_held_and_billed_when_it_heals(
        sender: Any) -> None:
    """INTERNAL (a fault callgate could not name: a bug, fixed by a deploy) is no refusal: were the ANSWERED
    refused, the call's ENDED would go next and the call end unanswered, unbilled.  It waits out a retry, the
    call's later events (and new ones) held behind it, the other calls going on; healed, it goes, then the rest
    of its call, in order."""
    broken = {"on": True}
    server = CallEvents(lambda event: "INTERNAL" if broken["on"] and event.call_id == "b" and event.kind == 2
                        else "")
    warmed(sender, server)
    spool(sender, *calls("a", "b"))
    before = time.time()
    round_(sender)
    assert server.batches[0] == calls("a", "b")
    rows = table_rows(sender)
    state, tries, not_before = rows["b:ANSWERED"]
    assert (state, tries) == (0, 1) and not_before >= before + 1.0   # pending, tried once, not again for a second
    assert rows["b:ENDED"][0] == 0 and "a:ENDED" not in rows and sender.backlog
    spool(sender, *calls("c"))                  # (c's events go, b's wait)
    round_(sender)
    assert not any(key.startswith("b:") for key in server.batches[-1]), server.batches
    assert {"c:RINGING", "c:ANSWERED", "c:ENDED"} <= set(server.seen)
    round_(sender)                              # within the wait: nothing of b is sent
    assert [key for key in server.seen if key.startswith("b:")] == ["b:RINGING", "b:ANSWERED", "b:ENDED"]
    retry_now(sender)                           # its wait over, still failing: tried again, waits longer
    round_(sender)
    assert server.seen[-2:] == ["b:ANSWERED", "b:ENDED"] and table_rows(sender)["b:ANSWERED"][:2] == (0, 2)
    assert table_rows(sender)["b:ANSWERED"][2] >= time.time() + 1.5
    broken["on"] = False                        # healed (a fix deployed): the call's events, in order, billed
    retry_now(sender)
    round_(sender)
    assert server.seen[-2:] == ["b:ANSWERED", "b:ENDED"]
    rows = table_rows(sender)
    assert rows["b:ANSWERED"][0] == rows["b:ENDED"][0] == 1
    round_(sender)
    assert not sender.backlog                   # (nothing waits: the next round's events go straight again)


def test_an_event_failed_with_internal_every_try_is_refused_at_the_last_and_its_call_goes_on(
        sender: Any) -> None:
    server = CallEvents(lambda event: "INTERNAL" if event.call_id == "b" and event.kind == 2 else "")
    warmed(sender, server)
    spool(sender, *calls("b"))
    round_(sender)
    module = sender.recall.__globals__
    for _ in range(module["RETRY_TRIES"] - 1):
        retry_now(sender)
        round_(sender)
    assert table_rows(sender)["b:ANSWERED"][:2] == (2, module["RETRY_TRIES"])   # refused, for good
    round_(sender)
    assert server.seen[-1] == "b:ENDED" and table_rows(sender)["b:ENDED"][0] == 1
    assert sender.spool.stats()[2] == 1


def test_a_call_held_for_a_retry_stays_held_after_a_kill_9_and_a_clock_stepped_back_releases_it(
        sender: Any) -> None:
    """The retry's wait is in the table: a sender started again (kill -9) holds the call as the one before did;
    a not-before further ahead than the longest wait (the wall clock stepped back since) is due at once, not
    held for as long as the clock moved."""
    server = CallEvents(lambda event: "INTERNAL" if event.call_id == "b" and event.kind == 2 else "")
    warmed(sender, server)
    spool(sender, *calls("b"))
    round_(sender)
    restarted = restarted_sender(sender, server)
    assert server.seen == [] and table_rows(restarted)["b:ANSWERED"][:2] == (0, 1)   # held: nothing of b sent
    server.verdict = lambda event: ""
    restarted.spool.conn().execute("UPDATE events SET done_at = done_at + 3600 WHERE key = 'b:ANSWERED'")
    round_(restarted)                            # (an hour ahead: the clock went back an hour)
    assert server.seen == ["b:ANSWERED", "b:ENDED"]
    assert {state for _, state in table(restarted)} == {1}


def test_a_callgate_that_goes_on_after_a_failure_gets_one_event_per_call_a_batch(sender: Any) -> None:
    """A callgate before CallEventsInOrder would apply a call's ENDED after its failed ANSWERED (the call ended
    unanswered, unbilled): it never gets two events of a call in one batch, also when it was rolled back under
    a sender that knew a newer one (the first batch to it is refused UNIMPLEMENTED, nothing applied)."""
    failed: set[str] = set()

    def verdict(event: Any) -> str:   # b's ANSWERED cannot be taken the first time
        key = f"{event.call_id}:{event.kind}"
        if key == "b:2" and key not in failed:
            failed.add(key)
            return "UNAVAILABLE"
        return ""

    server = CallEvents(verdict)
    warmed(sender, server)
    assert sender.in_order
    server.in_order = False                     # rolled back
    spool(sender, *calls("a", "b"))
    for _ in range(6):
        round_(sender)
    assert set(server.methods) == {"CallEvents"} and not sender.in_order
    assert all(len({key.partition(":")[0] for key in batch}) == len(batch) for batch in server.batches)
    assert [key for key in server.seen if key.startswith("a")] == calls("a")
    assert [key for key in server.seen if key.startswith("b")] == ["b:RINGING", "b:ANSWERED", "b:ANSWERED",
                                                                   "b:ENDED"]
    assert {state for _, state in table(sender)} == {1}
    # upgraded again: asked again after IN_ORDER_RETRY_S, a call's events go together again
    server.in_order = True
    sender.in_order_retry = 0.0
    spool(sender, *calls("c"))
    round_(sender)
    assert server.methods[-1] == "CallEventsInOrder" and server.batches[-1] == calls("c")


def test_more_than_a_batch_in_a_round_all_sent_straight_in_parts_once_in_order(sender: Any) -> None:
    server = CallEvents()
    warmed(sender, server)
    ids = [f"m{i}" for i in range(400)]        # 1,200 events, SENDER_BATCH 500
    spool(sender, *calls(*ids))
    round_(sender)
    assert [len(batch) for batch in server.batches] == [500, 500, 200] and server.seen == calls(*ids)
    assert table(sender) == [] and not sender.backlog


def test_a_slow_callgate_holds_the_sender_one_deadline_a_round_not_one_a_part(
        sender: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """callgate answering each part in 4 s: a round's parts share its 10 s (the second part is given the 6 s the
    first left); the third, left 2 s where the part before took 4, waits in the table (sent now it would likely
    fail its deadline, applied by callgate all the same), and so does the table's own call in that round; the
    next round sends it from there, with the whole deadline, in order, once."""
    server = CallEvents()
    warmed(sender, server)
    clock = [time.monotonic()]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    timeouts: list[float] = []

    def slow(batch: Any, timeout: float, **kwargs: Any) -> Any:
        timeouts.append(timeout)
        clock[0] += 4.0
        return server.ordered(batch)

    sender._stub = type("Stub", (), {"CallEventsInOrder": staticmethod(slow), "CallEvents": staticmethod(slow)})()
    ids = [f"m{i}" for i in range(400)]        # 1,200 events: three parts
    spool(sender, *calls(*ids))
    round_(sender)
    assert [len(batch) for batch in server.batches] == [500, 500] and timeouts == pytest.approx([10.0, 6.0])
    assert sender.backlog and [key for key, state in table(sender) if state == 0] == calls(*ids)[1000:]
    round_(sender)                              # the next tick: from the table, with the whole deadline
    assert [len(batch) for batch in server.batches] == [500, 500, 200]
    assert timeouts == pytest.approx([10.0, 6.0, 10.0])
    assert server.seen == calls(*ids) and {state for _, state in table(sender)} == {1} and not sender.backlog


def test_a_part_not_answered_whole_leaves_the_rounds_later_parts_to_the_table_in_order(sender: Any) -> None:
    """A call stopped in a round's first part (callgate could not take one of its events) may have events in the
    next part: none is sent past it; they wait in the table behind it, and every call's events reach callgate
    in order, once."""
    server = CallEvents(lambda event: "UNAVAILABLE" if event.call_id == "m100" else "")
    warmed(sender, server)
    ids = [f"m{i}" for i in range(200)]        # 600 events: m100's RINGING in the first part, its ENDED in the next
    spool(sender, *calls(*ids))
    sender.ksr_callgate_sender(None)
    # the second part (the ENDED of m100 to m199) not sent straight but kept, then sent from the table behind
    # m100's first two events, in the same round: m100's wait again, the others go
    m100 = [f"m100:{kind}" for kind in CALL]
    assert [len(batch) for batch in server.batches] == [500, 102] and server.batches[1][:3] == m100
    assert sender.backlog and [key for key, state in table(sender) if state == 0] == m100
    answered = [key for key in server.seen if not key.startswith("m100:")]   # (m100's: not answered)

    def answering_now(event: decisions_pb2.CallEventRequest) -> str:
        answered.append(f"{event.call_id}:{decisions_pb2.CallEventRequest.Kind.Name(event.kind)}")
        return ""

    server.verdict = answering_now
    for _ in range(3):
        round_(sender)
    assert sorted(answered) == sorted(calls(*ids)) and not sender.backlog   # each once
    for call in ("m0", "m99", "m100", "m101", "m199"):
        assert [key for key in answered if key.partition(":")[0] == call] == [f"{call}:{kind}" for kind in CALL]


def test_a_refusal_for_good_in_a_part_lets_the_rounds_next_part_go_straight(sender: Any) -> None:
    """An event callgate refuses for good (its call's last in the part) is final: the round's next part goes too,
    and only the refused event is kept, as refused."""
    ended = decisions_pb2.CallEventRequest.ENDED
    server = CallEvents(lambda event: "FAILED_PRECONDITION" if event.call_id == "m50" and event.kind == ended else "")
    warmed(sender, server)
    ids = [f"m{i}" for i in range(200)]        # 600 events: m50's ENDED in the first part
    spool(sender, *calls(*ids))
    sender.ksr_callgate_sender(None)
    assert [len(batch) for batch in server.batches] == [500, 100]
    assert table(sender) == [("m50:ENDED", 2)] and not sender.backlog


def test_a_round_comes_every_send_every_ms_and_at_every_tick_while_the_table_drains(
        sender: Any, kemi: tuple[Any, Variables], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """rtimer calls the sender every 100 ms: it sends what the journals gained once CALLGATE_SEND_EVERY_MS has
    passed since its last round (one gRPC call a round costs ~1 ms whatever it carries), but at every tick while
    events wait in its table (after an outage: draining a backlog at a round a tick)."""
    server = CallEvents()
    warmed(sender, server)
    monkeypatch.setitem(sender.ksr_callgate_sender.__globals__, "SEND_EVERY_S", 0.5)
    spool(sender, *calls("a"))
    sender.ksr_callgate_sender(None)                   # (due: the last round was SEND_EVERY_S 0)
    spool(sender, *calls("b"))
    sender.ksr_callgate_sender(None)                   # the next tick: not due
    assert server.batches == [calls("a")]
    sender.next_round -= 0.5                           # half a second later
    sender.ksr_callgate_sender(None)
    assert server.batches == [calls("a"), calls("b")]
    server.down = True                                 # callgate away: c waits in the table
    spool(sender, *calls("c"))
    sender.next_round -= 0.5
    sender.ksr_callgate_sender(None)
    assert sender.backlog and [key for key, _ in table(sender)] == calls("c")
    server.down = False
    sender.backoff_until = 0.0
    sender.ksr_callgate_sender(None)                   # the next tick, back: at once, from the table
    assert server.batches[-1] == calls("c") and not sender.backlog


@pytest.mark.parametrize("text, seconds", [("0", 0.0), ("100", 0.1), ("500", 0.5), ("10000", 10.0)])
def test_send_every_ms_is_whole_milliseconds(kemi: tuple[Any, Variables], text: str,  # noqa: F811
                                             seconds: float) -> None:
    script, _ = kemi
    assert script.send_straight.__globals__["send_every_s"](text) == seconds


@pytest.mark.parametrize("text", ["", "-1", "10001", "0.5", "5e2", "\uff15\uff10\uff10", "500ms"])
def test_a_send_every_ms_that_is_no_whole_milliseconds_is_refused_saying_what_is_wanted(
        kemi: tuple[Any, Variables], text: str) -> None:  # noqa: F811
    script, _ = kemi
    with pytest.raises(ValueError, match="CALLGATE_SEND_EVERY_MS must be a whole number of milliseconds from 0 to "
                                         "10000"):
        script.send_straight.__globals__["send_every_s"](text)


def test_a_send_that_fails_without_callgates_answer_loses_nothing(sender: Any) -> None:
    """Not callgate's answer but the sender's own failure (a CA file gone, a module that will not import): the
    round's events are kept in the table, and sent once it can."""
    server = CallEvents()
    warmed(sender, server)
    sender._stub = type("Stub", (), {"CallEventsInOrder": staticmethod(lambda *a, **k: (_ for _ in ()).throw(
        OSError(2, "No such file or directory: 'ca.pem'")))})()
    spool(sender, *calls("a"))
    before = time.monotonic()
    sender.ksr_callgate_sender(None)
    assert sender.backoff_until > before and table(sender) == [(key, 0) for key in calls("a")]
    answering(sender, server)
    round_(sender)
    assert server.seen == calls("a") and {state for _, state in table(sender)} == {1}


def test_a_table_that_fails_after_its_commit_still_sends_what_it_kept(sender: Any,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The rows a round keeps are committed, then removing a finished journal fails (the disk full): those rows
    are the backlog all the same, sent once callgate takes them."""
    server = CallEvents(lambda event: "UNAVAILABLE" if event.call_id == "b" else "")
    warmed(sender, server)
    spool(sender, *calls("a", "b"))

    def full(*args: Any) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sender.spool, "_forget_finished", full)
    round_(sender)
    assert [key for key, _ in table(sender)] == [f"b:{kind}" for kind in CALL] and sender.backlog
    monkeypatch.undo()
    server.verdict = lambda event: ""
    round_(sender)
    assert server.seen[-3:] == [f"b:{kind}" for kind in CALL] and {state for _, state in table(sender)} == {1}


def test_callgate_away_then_back_every_event_once_in_order(sender: Any) -> None:
    server = CallEvents()
    warmed(sender, server)
    server.down = True
    spool(sender, *calls("a", "b"))
    round_(sender)
    spool(sender, *calls("c"))
    round_(sender)
    assert server.batches == [] and len(table(sender)) == 9 and sender.failures == 2
    server.down = False
    round_(sender)
    assert server.batches == [calls("a", "b") + calls("c")] and {s for _, s in table(sender)} == {1}


def test_events_sent_but_not_stored_are_sent_again_not_lost(sender: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The table cannot be written after a round's events were sent (a full disk, a kill -9 between the two):
    what the round read does not count as read, and is sent again (callgate answers a replay with its recorded
    reply) once a round has stored it, not at every round while the table fails (each would send it all
    again); an event callgate could not take is not lost either."""
    server = CallEvents(lambda event: "UNAVAILABLE" if event.call_id == "b" else "")
    warmed(sender, server)
    spool(sender, *calls("a", "b"))
    store = sender.spool.store

    def full(*args: Any, **kwargs: Any) -> int:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(sender.spool, "store", full)
    before = time.monotonic()
    sender.ksr_callgate_sender(None)
    assert server.batches == [calls("a", "b")] and table(sender) == []
    assert sender.backlog and sender.backoff_until > before
    round_(sender)                              # still failing: nothing sent straight again
    assert len(server.batches) == 1
    monkeypatch.setattr(sender.spool, "store", store)
    server.verdict = lambda event: ""
    round_(sender)
    assert server.batches[1] == calls("a", "b") and {state for _, state in table(sender)} == {1}
    round_(sender)
    assert len(server.batches) == 2 and not sender.backlog


def test_generated_code_older_than_the_script_sends_one_event_of_a_call_a_batch(sender: Any) -> None:
    """This host's generated gRPC code has no CallEventsInOrder (the script upgraded alone): as to a callgate
    without it, one event of a call per batch in CallEvents, never stuck."""
    server = CallEvents()
    warmed(sender, server)
    sender._stub = type("Stub", (), {"CallEvents": staticmethod(server.plain)})()
    spool(sender, *calls("a", "b"))
    for _ in range(4):
        round_(sender)
    assert set(server.methods) == {"CallEvents"} and not sender.in_order
    assert sorted(server.seen) == sorted(calls("a", "b"))
    assert all(len({key.partition(":")[0] for key in batch}) == len(batch) for batch in server.batches)


def test_an_event_that_is_no_message_is_refused_alone_and_its_calls_next_waits_for_the_next_round(
        sender: Any) -> None:
    server = CallEvents()
    warmed(sender, server)
    spool(sender, "a:RINGING")
    sender.spool.add([("b:RINGING", "b", b"\xff\xff\xff\xff")])   # (past its crc, no CallEventRequest)
    spool(sender, "b:ANSWERED", "a:ANSWERED")
    sender.ksr_callgate_sender(None)
    assert server.batches[0] == ["a:RINGING", "a:ANSWERED"]      # b's ANSWERED not sent in the same batch
    assert ("b:RINGING", 2) in table(sender) and sender.failures == 0
    round_(sender)
    assert server.seen[-1] == "b:ANSWERED" and {state for key, state in table(sender) if key != "b:RINGING"} == {1}


def test_an_event_sent_before_its_calls_event_that_is_no_message_is_answered_once_whatever_else_fails(
        sender: Any) -> None:
    """b's RINGING goes in the batch, its ANSWERED (no message) does not; another call's event failing in the same
    batch (the reply looked at event by event) leaves b's RINGING answered all the same: sent once, never again
    from the table."""
    server = CallEvents(verdict=lambda event: "UNAVAILABLE" if event.call_id == "a" else "")
    warmed(sender, server)
    before = len(server.batches)
    spool(sender, "b:RINGING", "a:RINGING")
    sender.spool.add([("b:ANSWERED", "b", b"\xff\xff\xff\xff")])   # (past its crc, no CallEventRequest)
    time.sleep(0.025)
    sender.ksr_callgate_sender(None)
    assert server.batches[before] == ["b:RINGING", "a:RINGING"]
    assert ("b:RINGING", 0) not in table(sender) and ("b:ANSWERED", 2) in table(sender)
    server.verdict = lambda event: ""
    for _ in range(3):
        round_(sender)
    assert server.seen.count("b:RINGING") == 1 and server.seen.count("a:RINGING") >= 2


def test_a_sip_workers_channel_connects_at_its_start_and_no_thread_polls_its_state(
        kemi: tuple[Any, Variables], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """grpcio's public way to connect a channel ahead (subscribe, channel_ready_future) leaves a Python thread
    polling its state, ~5 ms of CPU a second in every Kamailio process: a SIP worker's channel connects at its
    start with none."""
    script, _ = kemi
    module = script.recall.__globals__
    server = grpc.server(futures.ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 0)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        monkeypatch.setitem(module, "TARGET", f"127.0.0.1:{port}")
        monkeypatch.setitem(module, "BYPASS", False)
        worker = script()
        worker.spool = module["Spool"](str(tmp_path / "events.sqlite"), 1000)
        before = {t.ident for t in threading.enumerate()}
        worker.child_init(1)   # a SIP worker
        ready = grpc.ChannelConnectivity.READY.value[0]
        wait_for(lambda: worker._channel._channel.check_connectivity_state(False) == ready, timeout=10)
        time.sleep(0.3)
        assert [t.name for t in threading.enumerate() if t.ident not in before] == []
        worker._channel.close()
    finally:
        server.stop(None)


# a SIP worker of a Kamailio deciding from the replica, in a process of its own (gRPC's core and threads as in a
# Kamailio worker, not shared with the test's): its OS threads after child_init, then two Outbound calls, with the
# deadline each was given
WORKER = r"""
import importlib.util, json, os, sys, time, types
ksr = types.ModuleType("KSR")
ksr.pv = types.SimpleNamespace(get=lambda name: None)
for level in ("info", "notice", "warn", "err"):
    setattr(ksr, level, lambda text: None)
sys.modules["KSR"] = ksr
spec = importlib.util.spec_from_file_location("callgate_kemi_worker", sys.argv[1])
script = importlib.util.module_from_spec(spec)
spec.loader.exec_module(script)
script.TARGET, script.BYPASS, script.REPLICA_DIR = sys.argv[2], False, sys.argv[3]
from callgate.v1 import decisions_pb2, decisions_pb2_grpc
deadlines = []
class Recording(decisions_pb2_grpc.DecisionsStub):
    def __init__(self, channel):
        super().__init__(channel)
        outbound = self.Outbound
        def timed(request, timeout=None, **kwargs):
            deadlines.append(timeout)
            return outbound(request, timeout=timeout, **kwargs)
        self.Outbound = timed
decisions_pb2_grpc.DecisionsStub = Recording
def threads():
    return sorted(open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task"))
before = threads()
worker = script.kamailio()
worker.spool = script.Spool(sys.argv[4], 1000)
worker.child_init(1)
time.sleep(0.5)
after_start = threads()
no_channel = worker._channel is None and worker._stub is None
answers = [worker.ask("Outbound", decisions_pb2.OutboundRequest(tenant="acme", user="u", destination=number))
           for number in ("+1555", "+1556")]
print(json.dumps({"before": before, "after_start": after_start, "no_channel": no_channel,
                  "answered": [a is not None and a.verdict == decisions_pb2.ALLOW for a in answers],
                  "with_channel": threads(), "deadlines": deadlines, "deadline_s": script.DEADLINE_S,
                  "extra_s": script.FIRST_CALL_EXTRA_S}))
"""


def test_a_sip_worker_deciding_from_the_replica_keeps_no_channel_until_its_first_rpc(tmp_path: Path) -> None:
    """A worker that decides inbound calls from the replica may never need an RPC, and an idle grpcio channel
    costs its process CPU every second (its threads): after its start it has no channel and none of gRPC's threads
    (gRPC's own start done, its core stopped again); its first RPC (an outbound call's Outbound) makes
    the channel, connects and is answered, given FIRST_CALL_EXTRA_S more than the deadline for the connection;
    the next is given the deadline alone, on the same channel."""
    asked: list[str] = []

    def outbound(request: Any, context: Any) -> Any:
        asked.append(request.destination)
        return decisions_pb2.Decision(verdict=decisions_pb2.ALLOW)

    method = grpc.unary_unary_rpc_method_handler(
        outbound, request_deserializer=decisions_pb2.OutboundRequest.FromString,
        response_serializer=decisions_pb2.Decision.SerializeToString)
    handler = grpc.method_handlers_generic_handler("callgate.v1.Decisions", {"Outbound": method})
    server = grpc.server(futures.ThreadPoolExecutor(1), options=[("grpc.so_reuseport", 0)])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    (tmp_path / "replica").mkdir()
    root = Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run([sys.executable, "-c", WORKER, str(SCRIPT), f"127.0.0.1:{port}",
                               str(tmp_path / "replica"), str(tmp_path / "events.sqlite")],
                              cwd=root, capture_output=True, text=True, timeout=60)
    finally:
        server.stop(None)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    # gRPC's threads have names of their own (event_engine, grpc_global_timer...); numpy's are the process's
    assert seen["no_channel"] and [name for name in seen["after_start"] if name != "python"] == [], seen
    assert seen["answered"] == [True, True] and asked == ["+1555", "+1556"]
    assert [name for name in seen["with_channel"] if name != "python"] != []   # (what the worker went without)
    assert seen["deadlines"] == pytest.approx([seen["deadline_s"] + seen["extra_s"], seen["deadline_s"]])


def test_the_ca_file_is_read_once_and_a_channel_that_cannot_be_made_fails_the_call_not_the_route(
        kemi: tuple[Any, Variables], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """A worker deciding from the replica makes its channel again at its first RPC, maybe hours after its start:
    CALLGATE_TLS_CA read at the start serves it, the file since removed or rotated; and a channel that cannot be
    made at all fails that call as with callgate away, logged, not its route (here a worker whose file was never
    there; a Kamailio worker reads it at its start)."""
    script, _ = kemi
    module = script.recall.__globals__
    said: list[str] = []
    monkeypatch.setattr(sys.modules["KSR"], "err", said.append, raising=False)
    monkeypatch.setattr(sys.modules["KSR"], "warn", said.append, raising=False)
    ca = tmp_path / "ca.pem"
    ca.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
    monkeypatch.setitem(module, "TLS_CA", str(ca))
    monkeypatch.setitem(module, "TARGET", "127.0.0.1:9")
    worker = script()
    worker.decisions  # noqa: B018 - as child_init makes it, then drops it
    worker.drop_channel()
    ca.unlink()
    assert worker.decisions is not None and said == []
    worker.drop_channel()
    other = script()   # (a worker whose file was never there)
    assert other.ask("Outbound", decisions_pb2.OutboundRequest(tenant="acme", user="u", destination="+1555")) is None
    assert len(said) == 1 and said[0].startswith("callgate: no channel to callgate for Outbound: FileNotFoundError")


@pytest.mark.parametrize("size", [0, 1, 100, 127, 128, 300, 4_000, 4_100, 16_383, 16_384, 70_000])
def test_a_batch_made_of_its_events_bytes_is_the_batch_protobuf_makes(sender: Any, size: int) -> None:
    """The sender parses a round's batch whole from its events' framed bytes: the bytes protobuf itself makes of
    a batch of those events, whatever the length's varint takes (1, 2 or 3 bytes), each head made once a length
    (`_head`)."""
    head = sender.recall.__globals__["_head"]

    def framed(request: bytes) -> bytes:
        return head(len(request)) + request

    kind = decisions_pb2.CallEventRequest
    events = [kind(tenant="acme", call_id="c/1", kind=kind.RINGING, caller="+1" + "2" * size),
              kind(tenant="acme", call_id="c/1", kind=kind.ANSWERED)]
    raw = [e.SerializeToString() for e in events]
    assert b"".join(framed(r) for r in raw) == decisions_pb2.CallEventBatch(events=events).SerializeToString()
    server = answering(sender, CallEvents())
    got: list[Any] = []

    def ordered(batch: Any, **kwargs: Any) -> Any:
        got.append(batch)
        return server.ordered(batch)

    sender._stub.CallEventsInOrder = ordered
    sent = sender.recall.__globals__["SENT"]
    assert sender.send([("c/1", r) for r in raw], 1.0) == [(0, sent, ""), (1, sent, "")]
    assert len(got) == 1 and list(got[0].events) == events


def replied(asked: list[Any], request: decisions_pb2.CallEventRequest) -> decisions_pb2.CallEventReply:
    """callgate's CallEvent as these tests see it: the event noted in `asked`, and a reply."""
    asked.append(request)
    return decisions_pb2.CallEventReply(call_id=request.call_id)


def told(worker: Any) -> list[decisions_pb2.CallEventRequest]:
    """The events `worker` sends callgate over RPC from now on, in order (CallEvent answered as callgate does)."""
    asked: list[decisions_pb2.CallEventRequest] = []
    worker._stub, worker._pid = types.SimpleNamespace(CallEvent=lambda request, **kw: replied(asked, request)), \
        os.getpid()
    return asked


@pytest.mark.parametrize("waits, paid, down, sent", [
    (1, "120", False, ["ANSWERED", "ENDED"]), (-1, "120", False, []), (1, "", False, []),
    (1, "120", True, ["ANSWERED"])])
def test_an_outbound_answer_goes_over_rpc_when_it_would_wait_for_the_disk_and_then_its_end(
        kemi: tuple[Any, Variables], monkeypatch: pytest.MonkeyPatch, waits: int, paid: str, down: bool,  # noqa: F811
        sent: list[str]) -> None:
    """At an outbound call's 200 (the module makes its events): its ANSWERED goes to callgate at once over RPC
    only when the module says the answer will wait for the disk (kept, it would reach callgate past its ring
    timeout on a disk full that long), and only after the hold's RINGING was answered (else out of order); an
    answer callgate took marks the dialog, whose end then goes over RPC too (callgate must not hold an answered
    call whose end is lost); one it did not take (callgate away) leaves the end to the module."""
    script, pv = kemi
    module = script.recall.__globals__
    monkeypatch.setitem(module, "EVENTS_MODULE", types.SimpleNamespace(answer_waits=lambda: waits))
    monkeypatch.setattr(sys.modules["KSR"], "warn", lambda text: None, raising=False)
    monkeypatch.setattr(sys.modules["KSR"], "dialog", types.SimpleNamespace(
        var_sets=pv.var_sets, dlg_set_timeout=lambda seconds: None), raising=False)
    worker = script()
    asked: list[decisions_pb2.CallEventRequest] = []

    def call_event(request: decisions_pb2.CallEventRequest, **kwargs: Any) -> decisions_pb2.CallEventReply:
        if down:
            asked.append(request)   # (every try)
            raise RpcError(grpc.StatusCode.UNAVAILABLE)
        return replied(asked, request)

    worker._stub, worker._pid = types.SimpleNamespace(CallEvent=call_event), os.getpid()
    pv.values["$avp(cg_hold)"] = script.call_record(call="o@pbx/1", tenant="acme", dir="outbound", caller="u3",
                                                    called="+442071838750", line="", user="u3")
    if paid:
        pv.values["$avp(cg_paid)"] = paid
    pv.values["$dlg_var(cg_rung)"] = "1"   # (it rang: its RINGING went for the hold at the 180)
    worker.held_reply(200)
    worker.ksr_dialog_event(None, "dialog:end")   # (the BYE; the module follows the dialog: no $dlg_var(cg))
    assert [(e.call_id, decisions_pb2.CallEventRequest.Kind.Name(e.kind)) for e in asked] == [
        ("o@pbx/1", kind) for kind in sent]
    assert [(e.user, e.outcome) for e in asked] == [("u3", ""), ("", "answered")][:len(sent)]


def test_an_end_the_spool_refuses_goes_to_callgate_over_rpc(kemi: tuple[Any, Variables],  # noqa: F811
                                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The script's own ENDED (a dialog it follows, a BYE after a restart lost the dialog) that the spool refuses
    (a full disk) goes to callgate over RPC: lost, callgate would charge the answered call to its expiry."""
    script, pv = kemi
    monkeypatch.setattr(sys.modules["KSR"], "warn", lambda text: None, raising=False)
    said: list[str] = []
    monkeypatch.setattr(sys.modules["KSR"], "notice", said.append, raising=False)
    monkeypatch.setattr(sys.modules["KSR"], "err", said.append, raising=False)
    worker = script()
    asked = told(worker)
    record = script.call_record(call="i@pbx/1", tenant="acme", dir="inbound", caller="+12125550000",
                                called="+14155550199", line="", user="u1")
    pv.values["$dlg_var(cg)"] = record
    monkeypatch.setattr(worker, "spool_raw", lambda *args, **kwargs: True)
    worker.ksr_dialog_event(None, "dialog:end")
    assert asked == []                         # (spooled: nothing over RPC)
    monkeypatch.setattr(worker, "spool_raw", lambda *args, **kwargs: False)
    worker.ksr_dialog_event(None, "dialog:end")
    assert [(e.call_id, e.tenant, decisions_pb2.CallEventRequest.Kind.Name(e.kind), e.outcome) for e in asked] == [
        ("i@pbx/1", "acme", "ENDED", "answered")]
    assert said == ["callgate: the end of i@pbx/1 went to callgate over RPC (the spool refused it)\n"]


def test_the_bye_of_a_dialog_a_restart_lost_goes_over_rpc_when_the_spool_refuses_its_end(
        kemi: tuple[Any, Variables], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Kamailio restarted mid-call (its dialog lost): the BYE's Route still names the call (cgc, cgt), and its
    ENDED, refused by the spool (a full disk), goes to callgate over RPC; the BYE is relayed either way."""
    script, pv = kemi
    monkeypatch.setattr(sys.modules["KSR"], "warn", lambda text: None, raising=False)
    said: list[str] = []
    monkeypatch.setattr(sys.modules["KSR"], "notice", said.append, raising=False)
    monkeypatch.setattr(sys.modules["KSR"], "err", said.append, raising=False)
    relayed: list[str] = []
    monkeypatch.setattr(sys.modules["KSR"], "rr", types.SimpleNamespace(loose_route=lambda: 1), raising=False)
    monkeypatch.setattr(sys.modules["KSR"], "dialog", types.SimpleNamespace(is_known_dlg=lambda: -1), raising=False)
    monkeypatch.setattr(sys.modules["KSR"], "tm", types.SimpleNamespace(t_relay=lambda: relayed.append("BYE")),
                        raising=False)
    worker = script()
    asked = told(worker)
    pv.values["$hdr(Route)"] = f"<sip:127.0.0.1;lr;cgc={b'i@pbx/1'.hex()};cgt={b'acme'.hex()}>"
    spooled: list[tuple[Any, ...]] = []

    def spool_events(*args: Any) -> bool:
        spooled.append(args)
        return True

    monkeypatch.setattr(worker, "spool_events", spool_events)
    assert worker.in_dialog("BYE") == 1
    assert asked == [] and len(spooled) == 1 and relayed == ["BYE"]   # (spooled: nothing over RPC)
    monkeypatch.setattr(worker, "spool_events", lambda *args, **kwargs: False)
    assert worker.in_dialog("BYE") == 1
    assert [(e.call_id, e.tenant, decisions_pb2.CallEventRequest.Kind.Name(e.kind), e.outcome) for e in asked] == [
        ("i@pbx/1", "acme", "ENDED", "answered")]
    assert relayed == ["BYE", "BYE"]
    assert said == ["callgate: the end of i@pbx/1 went to callgate over RPC (the spool refused it)\n"]


def test_a_damaged_told_record_sends_nothing_and_ends_the_route(kemi: tuple[Any, Variables],  # noqa: F811
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A dialog's `cg_told` that is no record (damaged, or written by an older script): no end goes over RPC, and
    the dialog's end route still returns."""
    script, pv = kemi
    worker = script()
    asked = told(worker)
    for damaged in ("not json", "[1, 2]", '{"call": "x"}', "{"):
        pv.values["$dlg_var(cg_told)"] = damaged
        assert worker.ksr_dialog_event(None, "dialog:end") == 1
    assert asked == []
