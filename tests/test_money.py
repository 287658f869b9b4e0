"""Money that cannot be fooled (spec §7), through real servers: event instants bounded by the server's clock,
one talk cap on every path, and credit held by calls in progress so that parallel calls are never promised
more than the balance."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc

from .serving import wait_for
from .test_lifecycle import DOC, EV, US_DEST, Tenant, micro, no_rentals


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


def outbound(t: Tenant, call_id: str, at: int) -> Any:
    return t.event(EV.RINGING, call_id, "u3", at, direction="outbound", called=US_DEST)


def test_instants_are_bounded_by_the_server_clock(tmp_path: Path) -> None:
    t = Tenant(tmp_path, no_rentals(DOC), "--max-clock-skew-s", "120", "--max-event-age-s", "3600")
    try:
        t.credit("10.00", "opening")
        now = int(time.time())
        err = refused(lambda: t.event(EV.RINGING, "future", "u1", now + 5 * 86_400))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ahead of the server's clock, more than --max-clock-skew-s 120" in err.details()
        err = refused(lambda: t.event(EV.RINGING, "stale", "u1", now - 7_200))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "s old, more than --max-event-age-s 3600" in err.details()
        assert t.event(EV.RINGING, "skewed", "u1", now + 60).state == "ringing"      # within the skew
        # the ENDED of a five-second call stamped five days ahead: refused, nothing billed, the call stays open
        outbound(t, "o1", now - 10)
        t.event(EV.ANSWERED, "o1", "u3", now - 5)
        err = refused(lambda: t.event(EV.ENDED, "o1", at=now + 5 * 86_400))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert t.balance().balance == "10.00"
        ended = t.event(EV.ENDED, "o1", at=now)
        assert (ended.talked_seconds, ended.charge) == (5, "0.02")                   # one 60 s increment
        calls = {c.call_id for c in t.admin.ListCalls(admin_pb2.ListCallsRequest(tenant="acme", state="ringing"),
                                                      timeout=10).calls}
        assert "future" not in calls and "stale" not in calls and "skewed" in calls
    finally:
        assert t.close() == 0


def test_instants_never_go_back_and_replays_answer_as_recorded(tmp_path: Path) -> None:
    t = Tenant(tmp_path, no_rentals(DOC))
    try:
        now = int(time.time())
        t.event(EV.RINGING, "c1", "u1", now - 100)
        for kind, at, user in ((EV.ANSWERED, now - 200, "u1"), (EV.ENDED, now - 101, "")):
            err = refused(lambda k=kind, a=at, u=user: t.event(k, "c1", u, a))
            assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "before the call's last recorded event" in err.details()
        answered = t.event(EV.ANSWERED, "c1", "u1", now - 90)
        err = refused(lambda: t.event(EV.TRANSFERRED, "c1", "u2", now - 95))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
        t.event(EV.TRANSFERRED, "c1", "u2", now - 80)
        assert refused(lambda: t.event(EV.ENDED, "c1", at=now - 85)).code() == grpc.StatusCode.FAILED_PRECONDITION
        ended = t.event(EV.ENDED, "c1", at=now - 70)
        # a replay (the same key) gets the recorded reply, whatever its instant: even one no new event could have
        assert t.event(EV.ANSWERED, "c1", "u1", now - 1) == answered
        assert t.event(EV.ENDED, "c1", at=now + 10 * 86_400) == ended
        assert t.event(EV.ENDED, "c1", at=now - 30 * 86_400) == ended
    finally:
        assert t.close() == 0


def test_a_late_ringing_is_billed_but_never_picked_up(tmp_path: Path) -> None:
    t = Tenant(tmp_path, no_rentals(DOC), "--ring-timeout-s", "60")
    try:
        t.credit("10.00", "opening")
        now = int(time.time())
        t.event(EV.RINGING, "late", "u1", now - 1_800, caller="+12125550100", called="+14155550199")
        pick = decisions_pb2.PickupRequest(tenant="acme", user="u2", dialed="*8")
        assert t.decisions.Pickup(pick, timeout=10).reason == decisions_pb2.NO_RINGING_CALL
        t.event(EV.RINGING, "fresh", "u1", now, caller="+12125550100", called="+14155550199")
        d = t.decisions.Pickup(pick, timeout=10)
        assert (d.verdict, d.call_id) == (decisions_pb2.INTERCEPT, "fresh")
        # a late outbound call, replayed whole by a proxy after an outage, is billed as it happened
        outbound(t, "late-out", now - 1_800)
        t.event(EV.ANSWERED, "late-out", "u3", now - 1_790)
        ended = t.event(EV.ENDED, "late-out", at=now - 1_700)
        assert (ended.talked_seconds, ended.charge) == (90, "0.04")
        assert t.balance().balance == "9.96" and t.ledger_sum() == micro("9.96")
    finally:
        assert t.close() == 0


def test_the_talk_cap_is_the_same_for_a_late_end_and_for_the_expiry(tmp_path: Path) -> None:
    """--call-max-s 120: a call that talked ten minutes is billed two minutes, whichever path ends it."""
    t = Tenant(tmp_path, no_rentals(DOC), "--call-max-s", "120", "--max-event-age-s", "3600",
               "--ring-timeout-s", "2")
    try:
        t.credit("10.00", "opening")
        now = int(time.time())
        for call_id in ("by-end", "by-expiry"):
            ringing = outbound(t, call_id, now - 600)
            assert (ringing.max_duration_s, ringing.reserved) == (120, "0.04")      # the hold covers the cap
            t.event(EV.ANSWERED, call_id, "u3", now - 590)
        ended = t.event(EV.ENDED, "by-end", at=now)
        assert (ended.talked_seconds, ended.charge) == (120, "0.04")               # 2 x 60 s at 0.02/min
        expired = wait_for(lambda: t.admin.ListCalls(admin_pb2.ListCallsRequest(tenant="acme", state="expired"),
                                                     timeout=10).calls, timeout=20)
        assert [(c.call_id, c.talked_seconds, c.charge) for c in expired] == [("by-expiry", 120, "0.04")]
        balance = t.balance()
        assert (balance.balance, balance.reserved, balance.available) == ("9.92", "0.00", "9.92")
        assert t.ledger_sum() == micro("9.92")
        record = t.server.events("call_expired")[0]
        assert record["call_id"] == "by-expiry" and record["charge"] == "0.04" and record["released"] == "0.04"
    finally:
        assert t.close() == 0


def channels(address: str, n: int) -> list[grpc.Channel]:
    """n channels with connections of their own (SO_REUSEPORT spreads them over the workers)."""
    return [grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]) for _ in range(n)]


def test_parallel_calls_never_hold_more_than_the_balance(tmp_path: Path) -> None:
    """20 outbound calls at once on two workers from 1.00, 20 rounds; then a worker killed with calls open."""
    t = Tenant(tmp_path, no_rentals(DOC), "--reserve-max-s", "300", "--ring-timeout-s", "5", workers=2)
    lanes = channels(t.server.address, 20)
    try:
        t.credit("1.00", "opening")
        pids = {admin_pb2_grpc.AdminStub(c).Stats(admin_pb2.StatsRequest(), timeout=10).pid for c in lanes}
        assert len(pids) == 2, "the lanes reach both workers"

        def in_force_everywhere() -> bool:
            """The push went through one worker; the other takes it up within a poll."""
            for c in lanes:
                stats = admin_pb2_grpc.AdminStub(c).Stats(admin_pb2.StatsRequest(), timeout=10)
                if not any(s.tenant == "acme" and s.loaded_version == s.version > 0 for s in stats.tenants):
                    return False
            return True

        wait_for(in_force_everywhere, timeout=20)
        stubs = [decisions_pb2_grpc.DecisionsStub(c) for c in lanes]
        now = int(time.time())
        expected_balance = micro("1.00")

        def ring(round_: int) -> list[Any]:
            barrier = threading.Barrier(len(stubs))

            def one(i: int) -> Any:
                barrier.wait(timeout=30)
                try:
                    return stubs[i].CallEvent(EV(tenant="acme", call_id=f"r{round_}-{i}", kind=EV.RINGING,
                                                 user="u3", at=now, direction="outbound", called=US_DEST),
                                              timeout=30)
                except grpc.RpcError:
                    if round_ < 20:
                        raise
                    return None  # the worker that had the call was killed

            with concurrent.futures.ThreadPoolExecutor(len(stubs)) as pool:
                return list(pool.map(one, range(len(stubs))))

        for round_ in range(20):
            available = t.balance().available
            replies = ring(round_)
            held = sum(micro(r.reserved) for r in replies)
            assert held <= micro(available), (round_, held, available)        # never promised more than there is
            assert held == micro(available)                                   # ... and all of it is used
            assert all(r.max_duration_s == 0 and r.reason == decisions_pb2.INSUFFICIENT_FUNDS
                       for r in replies if r.reserved == "0.00")
            assert t.balance().reserved == f"{held / 1e6:.2f}"
            # the first call that got a hold talks 30 s (0.02), the others end unanswered: every hold goes
            talker = next(i for i, r in enumerate(replies) if r.max_duration_s)
            stubs[talker].CallEvent(EV(tenant="acme", call_id=f"r{round_}-{talker}", kind=EV.ANSWERED, user="u3",
                                       at=now + 1), timeout=30)
            for i in range(len(stubs)):
                stubs[i].CallEvent(EV(tenant="acme", call_id=f"r{round_}-{i}", kind=EV.ENDED, at=now + 31),
                                   timeout=30)
            expected_balance -= micro("0.02")
            balance = t.balance()
            assert (micro(balance.balance), balance.reserved) == (expected_balance, "0.00")
            assert t.ledger_sum() == expected_balance
        # a worker killed in the middle of a burst: those calls' ENDED never comes, the expiry lets their holds go
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            burst = pool.submit(ring, 99)
            time.sleep(0.01)
            os.kill(next(iter(pids)), signal.SIGKILL)
            replies = burst.result()
        answered = [r for r in replies if r is not None]
        assert answered and sum(micro(r.reserved) for r in answered) <= expected_balance
        wait_for(lambda: t.balance().reserved == "0.00", timeout=30)
        assert micro(t.balance().balance) == t.ledger_sum() == expected_balance
    finally:
        for c in lanes:
            c.close()
        t.close()
