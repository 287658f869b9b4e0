"""Background jobs against a real SQLite store: top-up claims, take-over after a crash, retries, renewals."""

from __future__ import annotations

import datetime as dt
import functools
import json
from pathlib import Path
from typing import Any

import pytest

from engine.snapshot import build, loads
from server.rules import calls
from server.rules.billing import ChargeResult, SandboxGateway, tokenize_card
from server.store.api import CardRecord
from server.store.sqlite import SQLiteStore
from server.worker.jobs import MAX_TOPUP_ATTEMPTS, JobOptions, Jobs, topup_policy

from .serving import EXAMPLE

TODAY = dt.date(2026, 11, 27)


def snapshot(**changes: Any) -> Any:
    doc = json.loads(EXAMPLE.read_text())
    doc.update(changes)
    return loads(build(json.dumps(doc).encode()).blob, 1)


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "callgate.sqlite")
    yield s
    s.close()


def put_card(store: SQLiteStore, number: str = "4242424242424242") -> None:
    card = tokenize_card(number, 1, 2031, TODAY)
    store.set_card(CardRecord("acme", card.token, card.brand, card.last4, 1, 2031))


def debit_below_threshold(store: SQLiteStore, snap: Any) -> None:
    policy = topup_policy(snap, TODAY)
    assert policy is not None
    store.credit("acme", 3_010_000, "credit", "opening", "USD", policy)
    store.credit("acme", -20_000, "call", "c1", "USD", policy)       # 3.01 -> 2.99: one crossing
    store.credit("acme", -20_000, "call", "c2", "USD", policy)       # still below: no second top-up


class Crash(Exception):
    pass


class DiesAfterCharging:
    """The gateway charges, then the worker dies before it records the answer."""

    def __init__(self, gateway: Any) -> None:
        self.gateway, self.calls = gateway, 0

    def charge(self, **kwargs: Any) -> ChargeResult:
        self.calls += 1
        self.gateway.charge(**kwargs)
        raise Crash


def test_a_dead_workers_top_up_is_taken_over_and_charged_once(store: SQLiteStore) -> None:
    snap = snapshot(numbers=[{**n, "rental": None} for n in json.loads(EXAMPLE.read_text())["numbers"]])
    put_card(store)
    debit_below_threshold(store, snap)
    dying = Jobs(store, {"acme": snap}, DiesAfterCharging(SandboxGateway(store)), JobOptions(topup_stale_s=1))
    with pytest.raises(Crash):
        dying.charge_one()
    assert store.topups("acme")[0].status == "charging"
    survivor = Jobs(store, {"acme": snap}, SandboxGateway(store), JobOptions(topup_stale_s=1))
    assert survivor.charge_one() is False                 # the claim is fresh: not taken over yet
    with store._transaction(True) as conn:                # the claim ages past topup_stale_s
        conn.execute("UPDATE topups SET claimed_at = claimed_at - 5")
    assert survivor.charge_one() is True
    [topup] = store.topups("acme")
    assert (topup.status, topup.attempts) == ("charged", 1)      # the same attempt: the same idempotency key
    assert store.balance("acme") == store.ledger_sum("acme") == 3_010_000 - 40_000 + 20_000_000
    rows = store._read("SELECT key, ok FROM sandbox_charges", ())
    assert rows == [(f"topup-{topup.id}-1", 1)]                  # charged once at the gateway


def test_no_card_and_declines_are_retried_with_backoff_then_given_up(store: SQLiteStore) -> None:
    snap = snapshot(numbers=[{**n, "rental": None} for n in json.loads(EXAMPLE.read_text())["numbers"]])
    debit_below_threshold(store, snap)
    jobs = Jobs(store, {"acme": snap}, SandboxGateway(store), JobOptions(topup_retry_s=10, topup_retry_cap_s=15))
    assert jobs.charge_one() is True
    [t] = store.topups("acme")
    assert (t.status, t.attempts) == ("pending", 1) and "no card on file" in t.last_reason
    assert jobs.charge_one() is False                               # not due before its backoff
    put_card(store, "4000000000000002")
    for attempt in range(2, MAX_TOPUP_ATTEMPTS + 1):
        with store._transaction(True) as conn:
            conn.execute("UPDATE topups SET next_attempt_at = 0")
        assert jobs.charge_one() is True
        [t] = store.topups("acme")
        assert t.attempts == attempt and t.last_reason == "card_declined"
        delay = t.next_attempt_at - int(dt.datetime.now(dt.UTC).timestamp())
        assert t.status == "failed" or 5 <= delay <= 16
    assert t.status == "failed"
    assert store.balance("acme") == store.ledger_sum("acme") == 3_010_000 - 40_000


def test_rentals_are_charged_once_per_date_from_the_day_they_are_seen(store: SQLiteStore) -> None:
    snap = snapshot(auto_topup={"enabled": False})
    jobs = Jobs(store, {"acme": snap}, SandboxGateway(store), JobOptions())
    assert jobs.rentals(dt.date(2026, 11, 27)) == 0                    # first seen; renews 12-01 and 12-15
    assert jobs.rentals(dt.date(2026, 12, 1)) == 2                     # two numbers renew on 12-01
    assert jobs.rentals(dt.date(2026, 12, 1)) == 0
    assert jobs.rentals(dt.date(2027, 1, 20)) == 4                     # 12-15, 01-01 x2, 01-15
    refs = sorted(r[0] for r in store._read("SELECT ref FROM ledger WHERE kind = 'rental'", ()))
    assert refs == ["+14155550100:2026-12-01", "+14155550100:2027-01-01", "+14155550199:2026-12-01",
                    "+14155550199:2027-01-01", "+442071234567:2026-12-15", "+442071234567:2027-01-15"]
    assert store.balance("acme") == -(4 * 5_000_000 + 2 * 4_500_000)


def test_threshold_is_the_next_renewal_when_higher(store: SQLiteStore) -> None:
    snap = snapshot()
    policy = topup_policy(snap, TODAY)
    assert policy is not None and policy.threshold_micro == 10_000_000     # 5.00 + 5.00 renew on 12-01
    assert policy.amount_micro == 20_000_000
    policy = topup_policy(snap, dt.date(2026, 12, 1))                     # next: 4.50 on 12-15 -> 3.00
    assert policy is not None and policy.threshold_micro == 4_500_000
    assert topup_policy(snapshot(auto_topup={"enabled": False}), TODAY) is None


def test_call_events_open_one_top_up_per_crossing(store: SQLiteStore) -> None:
    """The threshold is on the available credit: a charge crosses it, and so does a call's hold."""
    snap = snapshot(numbers=[{**n, "rental": None} for n in json.loads(EXAMPLE.read_text())["numbers"]])
    policy = topup_policy(snap, TODAY)
    store.credit("acme", 3_050_000, "credit", "opening", "USD", policy)

    def call(i: int, reserve_max_s: int) -> None:
        for kind, at in (("RINGING", 100), ("ANSWERED", 101), ("ENDED", 161)):
            e = (calls.Event(kind, "u3", at, "outbound", "+442071234567", "+15551230000", "rent-1", 20_000, 60)
                 if kind == "RINGING" else calls.Event(kind, "u3", at))
            rules = functools.partial(calls.apply, event=e, tenant="acme", call_id=f"c{i}", lead_trigger="on_answer",
                                      limits=calls.Limits(200, reserve_max_s=reserve_max_s))
            store.call_event("acme", f"c{i}", e, rules, policy, "USD")

    for i in range(4):            # holds of one minute (0.02 each, let go at the end)
        call(i, 60)
    assert store.balance("acme") == 3_050_000 - 4 * 20_000
    [t] = store.topups("acme")
    assert t.trigger == "hold:c2"              # 3.01 -> 2.99 available when the third call holds its minute
    assert store.account("acme").reserved_micro == 0                     # every hold let go at the end


def test_a_hold_that_crosses_the_threshold_opens_a_top_up(store: SQLiteStore) -> None:
    snap = snapshot(numbers=[{**n, "rental": None} for n in json.loads(EXAMPLE.read_text())["numbers"]])
    policy = topup_policy(snap, TODAY)
    store.credit("acme", 3_050_000, "credit", "opening", "USD", policy)
    e = calls.Event("RINGING", "u3", 100, "outbound", "+442071234567", "+15551230000", "rent-1", 20_000, 60)
    reply = store.call_event("acme", "c9", e, functools.partial(
        calls.apply, event=e, tenant="acme", call_id="c9", lead_trigger="on_answer", limits=calls.Limits(200)),
        policy, "USD")
    assert (reply.max_duration_s, reply.reserved_micro) == (3600, 1_200_000)   # an hour at 0.02/min
    assert store.account("acme") == calls.Account(3_050_000, 1_200_000)
    [t] = store.topups("acme")
    assert t.trigger == "hold:c9" and store.balance("acme") == 3_050_000       # 3.05 -> 1.85 available
