"""Crash safety: SIGKILL of the server while call endings and auto top-ups are in flight."""

from __future__ import annotations

import concurrent.futures
import json
import os
import signal
import sqlite3
import threading
import time
from pathlib import Path

import grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc

from .serving import Server, wait_for
from .test_lifecycle import DOC, EV, US_DEST, no_rentals

CALLS = 1000
ENDING_GAP_S = 0.002   # between two calls' endings

NOW = int(time.time())  # call events are checked against the server's clock


def start(data: Path) -> Server:
    # the sandbox gateway answers in 0.4 s: the kill lands while a top-up is being charged
    # each call holds one minute (0.02) from its RINGING and talks 61 s (0.04): every ending lowers the
    # available credit, so the crossing, and the top-up, come while the endings are in flight
    return Server(data, "--topup-retry-s", "0.2", "--topup-stale-s", "1", "--sandbox-latency-ms", "400",
                  "--reserve-max-s", "60", seed=None)


def charging(db: Path) -> bool:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM topups WHERE status = 'charging'").fetchone()[0] > 0


def check_books(db: Path, settled: bool = True) -> dict[str, int]:
    """The store's money is consistent: balance = ledger sum, every top-up credited once, one per crossing.

    Right after a kill a gateway charge may be waiting for its credit (`settled` False): the worker that
    takes the claim over finds the charge under the same idempotency key and credits it."""
    with sqlite3.connect(db) as conn:
        q = lambda sql: conn.execute(sql).fetchone()[0]  # noqa: E731
        assert q("PRAGMA integrity_check") == "ok"
        assert q("SELECT balance_micro FROM accounts WHERE tenant = 'acme'") == \
            q("SELECT SUM(amount_micro) FROM ledger WHERE tenant = 'acme'")
        charged = q("SELECT count(*) FROM topups WHERE status = 'charged'")
        assert q("SELECT count(*) FROM ledger WHERE kind = 'topup'") == charged
        if settled:
            assert q("SELECT count(*) FROM sandbox_charges WHERE ok = 1") == charged  # no charge without its credit
        assert q("SELECT count(*) FROM topups") == q("SELECT count(DISTINCT trigger) FROM topups")
        assert q("SELECT reserved_micro FROM accounts WHERE tenant = 'acme'") == q(   # holds: those of open calls
            "SELECT COALESCE(SUM(reserved_micro), 0) FROM calls WHERE state IN ('ringing', 'answered')")
        return {"calls": q("SELECT count(*) FROM ledger WHERE kind = 'call'"), "topups": charged,
                "open": q("SELECT count(*) FROM topups WHERE status IN ('pending', 'charging')")}


def test_sigkill_with_endings_and_topups_in_flight(tmp_path: Path) -> None:
    data = tmp_path / "data"
    doc = no_rentals(DOC)
    doc["auto_topup"] = {"enabled": True, "amount": "20.00"}
    srv = start(data)
    with srv.channel() as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        decisions = decisions_pb2_grpc.DecisionsStub(channel)
        admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()), timeout=60)
        admin.Card(admin_pb2.CardRequest(tenant="acme", number="4242424242424242", exp_month=1, exp_year=2031),
                   timeout=10)
        # 1,000 holds of 0.02 leave 3.01 available
        admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="23.01", reference="opening"), timeout=10)
        t0 = NOW - 3600

        def ring_and_answer(i: int) -> None:
            decisions.CallEvent(EV(tenant="acme", call_id=f"c{i}", kind=EV.RINGING, user="u3", at=t0 + i,
                                   direction="outbound", called=US_DEST), timeout=10)
            decisions.CallEvent(EV(tenant="acme", call_id=f"c{i}", kind=EV.ANSWERED, user="u3", at=t0 + i + 1),
                                timeout=10)

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(ring_and_answer, range(CALLS)))

        acknowledged: dict[str, decisions_pb2.CallEventReply] = {}
        lock = threading.Lock()
        # the endings paced over ~2 s (ENDING_GAP_S apart): the kill lands with some in flight however fast the
        # machine (unpaced, a fast one answered all 1,000 before the top-up's charge showed: nothing in flight)
        paced_from = time.monotonic()

        def end(i: int) -> None:
            time.sleep(max(0.0, paced_from + i * ENDING_GAP_S - time.monotonic()))
            try:
                reply = decisions.CallEvent(EV(tenant="acme", call_id=f"c{i}", kind=EV.ENDED, at=t0 + i + 62),
                                            timeout=10)
            except grpc.RpcError:
                return  # the server died under this call: not acknowledged
            with lock:
                acknowledged[f"c{i}"] = reply

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(end, i) for i in range(CALLS)]
            wait_for(lambda: len(acknowledged) >= CALLS // 10 and charging(data / "callgate.sqlite"), timeout=60,
                     interval=0.005)
            os.kill(srv.proc.pid, signal.SIGKILL)
            for f in futures:
                f.result()
    srv.proc.wait(10)
    assert srv.proc.returncode == -signal.SIGKILL
    assert 0 < len(acknowledged) < CALLS, len(acknowledged)

    db = data / "callgate.sqlite"
    after_kill = check_books(db, settled=False)
    assert after_kill["open"] == 1                       # the top-up the dead worker was charging
    with sqlite3.connect(db) as conn:
        charged = {r[0]: r[1] for r in conn.execute("SELECT ref, amount_micro FROM ledger WHERE kind = 'call'")}
    for call_id, reply in acknowledged.items():          # every acknowledged charge is there, exactly once
        assert reply.charge == "0.04" and charged[call_id] == -40_000
    assert after_kill["calls"] >= len(acknowledged)

    srv = start(data)                                    # restart; the proxy retries what was not acknowledged
    try:
        with srv.channel() as channel:
            decisions = decisions_pb2_grpc.DecisionsStub(channel)

            def retry(i: int) -> None:
                reply = decisions.CallEvent(EV(tenant="acme", call_id=f"c{i}", kind=EV.ENDED, at=t0 + i + 62),
                                            timeout=10)
                assert reply.charge == "0.04"
                if f"c{i}" in acknowledged:
                    assert reply == acknowledged[f"c{i}"]    # a replay answers as the first time did

            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                list(pool.map(retry, range(CALLS)))
            # the claim of the dead worker is taken over and credited once
            wait_for(lambda: check_books(db, settled=False)["open"] == 0, timeout=30)
        books = check_books(db)
        assert books["calls"] == CALLS
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT reserved_micro FROM accounts").fetchone()[0] == 0   # every hold let go
        print(f"acknowledged before the kill: {len(acknowledged)}, charged then: {after_kill['calls']}, "
              f"top-ups: {after_kill['topups']} then {books['topups']}")
    finally:
        assert srv.stop() == 0

