"""The call lifecycle through real gRPC and a real SQLite file: call registry, pickup, leads, billing, top-ups."""

from __future__ import annotations

import concurrent.futures
import copy
import datetime as dt
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc

from .serving import EXAMPLE, Server, wait_for

DOC = json.loads(EXAMPLE.read_text())
EV = decisions_pb2.CallEventRequest
US_DEST = "+15551230000"     # rent-1 rate "1": 0.0200 per minute, 60 s increments
UK_DEST = "+442079460000"    # rent-1 rate "44": 0.0350 per minute, 1 s increments

NOW = int(time.time())  # call events are checked against the server's clock


def no_rentals(doc: dict[str, Any]) -> dict[str, Any]:
    """The example without rentals: renewals due on the day a test runs would move balances."""
    doc = copy.deepcopy(doc)
    for n in doc["numbers"]:
        n.pop("rental", None)
    return doc


class Tenant:
    """A server, its stubs, and a few helpers for one tenant's events."""

    def __init__(self, tmp_path: Path, doc: dict[str, Any], *args: str, workers: int = 1) -> None:
        self.server = Server(tmp_path / "data", "--topup-retry-s", "0.5", *args, seed=None, workers=workers,
                             listen=f"127.0.0.1:{_free_port()}" if workers > 1 else "127.0.0.1:0")
        self.data = tmp_path / "data"
        self.channel = self.server.channel()
        self.decisions = decisions_pb2_grpc.DecisionsStub(self.channel)
        self.admin = admin_pb2_grpc.AdminStub(self.channel)
        self.tenant = doc["tenant"]
        self.push(doc)

    def push(self, doc: dict[str, Any]) -> int:
        reply = self.admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()),
                                        timeout=60)
        return reply.version

    def event(self, kind: Any, call_id: str, user: str = "", at: int = 0, **fields: Any) -> Any:
        return self.decisions.CallEvent(EV(tenant=self.tenant, call_id=call_id, kind=kind, user=user, at=at,
                                           **fields), timeout=30)

    def call(self, call_id: str, start: int, talk_s: int, user: str = "u3", dest: str = US_DEST) -> Any:
        """An outbound call from `user` that talked `talk_s` seconds; the ENDED reply."""
        self.event(EV.RINGING, call_id, user, start, direction="outbound", caller="+442071234567", called=dest)
        self.event(EV.ANSWERED, call_id, user, start + 5)
        return self.event(EV.ENDED, call_id, at=start + 5 + talk_s)

    def credit(self, amount: str, reference: str) -> Any:
        return self.admin.Credit(admin_pb2.CreditRequest(tenant=self.tenant, amount=amount, reference=reference),
                                 timeout=30)

    def balance(self) -> Any:
        return self.admin.GetBalance(admin_pb2.BalanceRequest(tenant=self.tenant), timeout=30)

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.data / "callgate.sqlite")

    def ledger_sum(self) -> int:
        with self.db() as conn:
            return conn.execute("SELECT COALESCE(SUM(amount_micro), 0) FROM ledger WHERE tenant = ?",
                                (self.tenant,)).fetchone()[0]

    def close(self) -> int | None:
        self.channel.close()
        return self.server.stop()


def _free_port() -> int:
    from loadtest.process import free_port

    return free_port()


def micro(text: str) -> int:
    from server.rules.billing import to_micro

    return to_micro(text)


@pytest.fixture
def acme(tmp_path):
    t = Tenant(tmp_path, no_rentals(DOC))
    yield t
    assert t.close() == 0


def status_of(fn: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value.code(), err.value.details()


# -- call registry -------------------------------------------------------------------------

def test_replayed_and_reordered_events(acme: Tenant) -> None:
    t0 = int(time.time()) - 100
    assert acme.event(EV.RINGING, "c1", "u1", t0, caller="+14155550123", called="+14155550199").state == "ringing"
    answered = acme.event(EV.ANSWERED, "c1", "u1", t0 + 3)
    assert (answered.state, answered.create_lead, answered.lead_responsible) == ("answered", True, "u1")
    assert acme.event(EV.ANSWERED, "c1", "u1", t0 + 3) == answered              # replay: the same answer
    assert acme.event(EV.ANSWERED, "c1", "u1", t0 + 9) == answered              # a retry with its own clock too
    code, text = status_of(lambda: acme.event(EV.ANSWERED, "c1", "u2", t0 + 4))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already answered by 'u1'" in text
    ended = acme.event(EV.ENDED, "c1", at=t0 + 63)
    assert (ended.state, ended.talked_seconds, ended.charge, ended.create_lead) == ("ended", 60, "0.00", False)
    assert acme.event(EV.ENDED, "c1", at=t0 + 63) == ended
    code, text = status_of(lambda: acme.event(EV.TRANSFERRED, "c1", "u2", t0 + 70))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "already ended" in text
    # out of order: the end of a call never reported ringing is refused and leaves nothing behind
    code, text = status_of(lambda: acme.event(EV.ENDED, "c2", at=t0))
    assert code == grpc.StatusCode.NOT_FOUND and "report RINGING first" in text
    acme.event(EV.RINGING, "c2", "u1", t0)
    assert acme.event(EV.ENDED, "c2", at=t0 + 20).state == "ended"             # ended unanswered
    code, _ = status_of(lambda: acme.event(EV.ANSWERED, "c2", "u1", t0 + 21))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    with acme.db() as conn:
        assert conn.execute("SELECT count(*) FROM leads WHERE tenant = 'acme'").fetchone()[0] == 1
        rows = conn.execute("SELECT call_id, state, answered_by, talked_s FROM calls ORDER BY call_id").fetchall()
    assert rows == [("c1", "ended", "u1", 60), ("c2", "ended", "", 0)]
    assert acme.ledger_sum() == 0


def test_lead_on_hangup_names_the_last_user_after_transfers(tmp_path: Path) -> None:
    doc = no_rentals(DOC)
    doc["lead_trigger"] = "on_hangup"
    t = Tenant(tmp_path, doc)
    try:
        t.event(EV.RINGING, "c1", "u1", NOW - 3600)
        assert not t.event(EV.ANSWERED, "c1", "u1", NOW - 3600 + 1).create_lead
        t.event(EV.TRANSFERRED, "c1", "u2", NOW - 3600 + 30)
        t.event(EV.TRANSFERRED, "c1", "u3", NOW - 3600 + 50)
        ended = t.event(EV.ENDED, "c1", at=NOW - 3600 + 90)
        assert (ended.create_lead, ended.lead_responsible) == (True, "u3")
        assert t.event(EV.ENDED, "c1", at=NOW - 3600 + 90) == ended
        t.event(EV.RINGING, "missed", "u1", NOW - 3600 + 100)
        assert not t.event(EV.ENDED, "missed", at=NOW - 3600 + 110).create_lead    # nobody talked: no lead
        with t.db() as conn:
            assert conn.execute("SELECT call_id, responsible FROM leads").fetchall() == [("c1", "u3")]
    finally:
        assert t.close() == 0


def test_calls_that_never_end_are_expired_and_reported(tmp_path: Path) -> None:
    t = Tenant(tmp_path, no_rentals(DOC), "--ring-timeout-s", "1")
    try:
        t.event(EV.RINGING, "lost", "u1", int(time.time()) - 5)
        wait_for(lambda: t.server.events("call_expired"), timeout=10)
        record = t.server.events("call_expired")[0]
        assert (record["call_id"], record["state_before"]) == ("lost", "ringing")
        calls = t.admin.ListCalls(admin_pb2.ListCallsRequest(tenant="acme", state="expired"), timeout=10).calls
        assert [c.call_id for c in calls] == ["lost"]
        code, text = status_of(lambda: t.event(EV.ANSWERED, "lost", "u1"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "expired" in text
    finally:
        assert t.close() == 0


# -- pickup ---------------------------------------------------------------------------------

def test_pickup_race_between_two_users(tmp_path: Path) -> None:
    doc = no_rentals(DOC)
    doc["queue_groups"][0]["members"] = ["u1", "u2", "u4"]        # sales
    t = Tenant(tmp_path, doc)
    try:
        now = int(time.time())

        def pickup(user: str) -> Any:
            return t.decisions.Pickup(decisions_pb2.PickupRequest(tenant="acme", user=user, dialed="*8"), timeout=30)

        for i in range(5):
            t.event(EV.RINGING, f"ring-{i}", "u1", now - 30 + i)
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                a, b = pool.map(pickup, ["u2", "u4"])
            won = [(user, r.call_id) for user, r in (("u2", a), ("u4", b)) if r.verdict == decisions_pb2.INTERCEPT]
            assert [call for _, call in won] == [f"ring-{i}"], (a, b)       # exactly one of them got it
            loser = b if won[0][0] == "u2" else a
            assert loser.reason == decisions_pb2.NO_RINGING_CALL
            # the winner's own ANSWERED is a replay of the pickup: it carries the lead hint
            answered = t.event(EV.ANSWERED, f"ring-{i}", won[0][0])
            assert (answered.create_lead, answered.lead_responsible) == (True, won[0][0])
            code, _ = status_of(lambda i=i: t.event(EV.ANSWERED, f"ring-{i}", "u1"))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
        with t.db() as conn:
            assert conn.execute("SELECT count(*) FROM leads").fetchone()[0] == 5
    finally:
        assert t.close() == 0


def test_pickup_race_between_different_users_and_groups(acme: Tenant) -> None:
    now = int(time.time())
    acme.event(EV.RINGING, "old", "u2", now - 60)
    acme.event(EV.RINGING, "new", "u2", now - 10)

    def pickup(user: str) -> Any:
        return acme.decisions.Pickup(decisions_pb2.PickupRequest(tenant="acme", user=user, dialed="*8"), timeout=30)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a, b = pool.map(pickup, ["u1", "u3"])                 # u1 (sales) and u3 (support) both share u2's groups
    assert {a.call_id, b.call_id} == {"old", "new"}            # never the same call twice
    assert a.call_id == "old" or b.call_id == "old"
    assert pickup("u1").reason == decisions_pb2.NO_RINGING_CALL
    wrong = acme.decisions.Pickup(decisions_pb2.PickupRequest(tenant="acme", user="u1", dialed="*9"), timeout=30)
    assert wrong.reason == decisions_pb2.NOT_PICKUP_CODE


# -- billing ---------------------------------------------------------------------------------

def test_outbound_calls_are_charged_once_and_decisions_see_the_balance(acme: Tenant) -> None:
    out = decisions_pb2.OutboundRequest(tenant="acme", user="u3", destination=US_DEST)
    denied = acme.decisions.Outbound(out, timeout=10)
    assert (denied.verdict, denied.reason) == (decisions_pb2.DENY, decisions_pb2.INSUFFICIENT_FUNDS)
    assert acme.credit("1.00", "pay-1").recorded
    assert not acme.credit("1.00", "pay-1").recorded                          # same reference: once
    wait_for(lambda: acme.decisions.Outbound(out, timeout=10).verdict == decisions_pb2.ALLOW, timeout=5)
    assert acme.decisions.Outbound(out, timeout=10).max_duration_s == 50 * 60  # 1.00 / 0.02 per 60 s
    t0 = NOW - 3600
    ended = acme.call("o1", t0, 61)                                            # 2 increments of 60 s
    assert (ended.charge, ended.currency, ended.talked_seconds) == ("0.04", "USD", 61)
    assert acme.event(EV.ENDED, "o1", at=t0 + 5 + 61) == ended                 # a retry: not charged again
    uk = acme.call("o2", t0 + 100, 91, dest=UK_DEST)                           # 91 x 0.0350/60 = 0.053083 -> 0.05
    assert uk.charge == "0.05"
    assert acme.call("o3", t0 + 200, 0).charge == "0.00"
    acme.event(EV.RINGING, "o4", "u3", t0 + 300, direction="outbound", called=US_DEST)
    assert acme.event(EV.ENDED, "o4", at=t0 + 400).charge == "0.00"          # never answered
    balance = acme.balance()
    assert (balance.balance, balance.currency) == ("0.91", "USD")
    assert acme.ledger_sum() == micro("0.91")
    ledger = acme.admin.ListLedger(admin_pb2.LedgerRequest(tenant="acme"), timeout=10).entries
    assert [(e.kind, e.amount, e.ref, e.balance) for e in ledger] == [
        ("call", "-0.05", "o2", "0.91"), ("call", "-0.04", "o1", "0.96"), ("credit", "1.00", "pay-1", "1.00")]
    wait_for(lambda: acme.decisions.Outbound(out, timeout=10).max_duration_s == 45 * 60, timeout=5)
    # a call that may not be placed cannot ring
    code, text = status_of(lambda: acme.event(EV.RINGING, "bad", "u1", t0, direction="outbound", called=US_DEST))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "DOCUMENTS_PENDING" in text


def test_forwarded_legs_and_backup_forwarding_are_billed_at_their_line_rate(tmp_path: Path) -> None:
    doc = no_rentals(DOC)
    doc["status"] = "suspended"                      # the tenant is unavailable: backup forwarding (rule 3)
    t = Tenant(tmp_path, doc)
    try:
        t.credit("5.00", "opening")
        d = t.decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+12125550000",
                                                             called="+14155550199"), timeout=10)
        assert (d.verdict, d.target, d.line) == (decisions_pb2.FORWARD, "+14155550111", "rent-1")
        t0 = NOW - 3600
        t.event(EV.RINGING, "fwd-1", "backup", t0, direction="forwarded", caller="+12125550000",
                called=d.target, line=d.line)
        t.event(EV.ANSWERED, "fwd-1", "backup", t0 + 2)
        ended = t.event(EV.ENDED, "fwd-1", at=t0 + 2 + 125)          # 3 increments of 60 s at 0.02
        assert ended.charge == "0.06"
        assert t.balance().balance == "4.94"
        code, text = status_of(lambda: t.event(EV.RINGING, "fwd-2", "b", t0, direction="forwarded",
                                               called="+4915112345678", line="rent-1"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "no rate" in text
        code, _ = status_of(lambda: t.event(EV.RINGING, "fwd-3", "b", t0, direction="forwarded",
                                            called="+14155550111", line="nope"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        assert t.close() == 0


def test_rental_renewal_on_its_date_and_threshold(tmp_path: Path) -> None:
    today = dt.datetime.now(dt.UTC).date()
    doc = copy.deepcopy(DOC)
    doc["auto_topup"] = {"enabled": False}
    doc["numbers"][0]["rental"] = {"monthly_fee": "5.00", "renews_on": today.isoformat()}
    doc["numbers"][1]["rental"] = {"monthly_fee": "7.25", "renews_on": today.isoformat()}
    doc["numbers"][2]["rental"] = {"monthly_fee": "4.50", "renews_on": (today - dt.timedelta(days=40)).isoformat()}
    t = Tenant(tmp_path, doc)
    try:
        wait_for(lambda: t.ledger_sum() == -micro("12.25"), timeout=10)
        with t.db() as conn:
            refs = sorted(r[0] for r in conn.execute("SELECT ref FROM ledger WHERE kind = 'rental'"))
        assert refs == sorted([f"+14155550100:{today}", f"+14155550199:{today}"])   # the past date: not charged back
        t.server.stop()
        t.server = Server(t.data, "--topup-retry-s", "0.5", seed=None)                # a restart charges nothing twice
        time.sleep(1.0)
        assert t.ledger_sum() == -micro("12.25")
    finally:
        t.close()


def _topup_doc() -> dict[str, Any]:
    doc = no_rentals(DOC)
    doc["auto_topup"] = {"enabled": True, "amount": "20.00"}
    return doc


def test_topup_exactly_once_under_50_concurrent_call_endings(tmp_path: Path) -> None:
    t = Tenant(tmp_path, _topup_doc(), "--reserve-max-s", "60")   # holds of 0.02: 50 of them take 3.50 to 2.50
    try:
        t.admin.Card(admin_pb2.CardRequest(tenant="acme", number="4242 4242 4242 4242", exp_month=12,
                                           exp_year=2030), timeout=10)
        t.credit("3.50", "opening")
        t0 = NOW - 3600
        for i in range(50):
            t.event(EV.RINGING, f"c{i}", "u3", t0 + i, direction="outbound", called=US_DEST)
            t.event(EV.ANSWERED, f"c{i}", "u3", t0 + i + 1)
        with concurrent.futures.ThreadPoolExecutor(50) as pool:
            replies = list(pool.map(lambda i: t.event(EV.ENDED, f"c{i}", at=t0 + i + 61), range(50)))
        assert all(r.charge == "0.02" for r in replies)                    # 50 x 0.02: 3.50 -> 2.50, one crossing
        wait_for(lambda: t.balance().balance == "22.50", timeout=15)
        time.sleep(1.0)                                                    # any second top-up would show by now
        balance = t.balance()
        assert balance.balance == "22.50" and t.ledger_sum() == micro("22.50")
        assert [(x.status, x.amount, x.attempts) for x in balance.topups] == [("charged", "20.00", 1)]
        with t.db() as conn:
            assert conn.execute("SELECT count(*) FROM ledger WHERE kind = 'topup'").fetchone()[0] == 1
            assert conn.execute("SELECT count(*) FROM sandbox_charges WHERE ok = 1").fetchone()[0] == 1
    finally:
        assert t.close() == 0


def test_declined_card_is_recorded_then_retried_successfully(tmp_path: Path) -> None:
    # the retry comes 3 s after the decline: long enough for the test to see the first one on a loaded machine
    t = Tenant(tmp_path, _topup_doc(), "--topup-retry-s", "3")
    try:
        t.admin.Card(admin_pb2.CardRequest(tenant="acme", number="4000000000000002", exp_month=1,
                                           exp_year=2031), timeout=10)
        t.credit("3.01", "opening")
        t.call("c1", NOW - 3600, 30)                                   # 3.01 - 0.02: below 3.00
        declined = wait_for(lambda: [x for x in t.balance().topups if x.last_reason], timeout=10)[0]
        assert (declined.status, declined.last_reason, declined.attempts) == ("pending", "card_declined", 1)
        assert t.balance().balance == "2.99"
        t.admin.Card(admin_pb2.CardRequest(tenant="acme", number="4242424242424242", exp_month=1,
                                           exp_year=2031), timeout=10)
        wait_for(lambda: t.balance().balance == "22.99", timeout=15)
        top = t.balance().topups
        assert [(x.status, x.attempts) for x in top] == [("charged", 2)]
        assert any(e["event"] == "topup" and e.get("reason") == "card_declined" for e in t.server.logs)
        with t.db() as conn:
            assert conn.execute("SELECT ok, reason FROM sandbox_charges ORDER BY created_at, rowid").fetchall() == [
                (0, "card_declined"), (1, "")]
    finally:
        assert t.close() == 0


def test_billing_input_errors(acme: Tenant) -> None:
    bad = [("-1", "r", "more than 0"), ("1.0000001", "r", "decimal places"), ("1e999", "r", ""), ("ten", "r", ""),
           ("1.00", "", "reference")]
    for amount, reference, words in bad:
        request = admin_pb2.CreditRequest(tenant="acme", amount=amount, reference=reference)
        code, text = status_of(lambda r=request: acme.admin.Credit(r, timeout=10))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and words in text, text
    code, _ = status_of(lambda: acme.admin.Credit(admin_pb2.CreditRequest(tenant="nope", amount="1", reference="r"),
                                                  timeout=10))
    assert code == grpc.StatusCode.NOT_FOUND
    code, text = status_of(lambda: acme.admin.Card(admin_pb2.CardRequest(tenant="acme", number="4242424242424241",
                                                                         exp_month=1, exp_year=2031), timeout=10))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and text
    assert acme.ledger_sum() == 0
