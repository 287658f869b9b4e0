"""Money through a real server, the points tests/test_money.py leaves open.

- `Outbound` decisions offer at most the balance less the credit open calls hold (as the worker last polled
  it), and offer it again once the call ends.
- A forwarded leg holds credit from its RINGING like an outbound call; its ENDED releases the hold and
  charges what was talked.
- An `Inbound` decision with explain for a bare-digits caller under `caller_format` auto says which reading
  was listed.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from callgate.v1 import decisions_pb2

from .serving import wait_for
from .test_lifecycle import DOC, EV, US_DEST, Tenant, micro, no_rentals


def quiet(doc: dict[str, Any]) -> dict[str, Any]:
    """No rentals and no auto top-up: nothing but the test's calls moves the balance."""
    doc = no_rentals(doc)
    doc["auto_topup"] = {"enabled": False}
    return doc


def offered(t: Tenant, user: str = "u3", destination: str = US_DEST) -> Any:
    return t.decisions.Outbound(decisions_pb2.OutboundRequest(tenant=t.tenant, user=user, destination=destination),
                                timeout=10)


def test_outbound_decisions_offer_what_open_holds_leave(tmp_path: Path) -> None:
    """rent-1 bills US_DEST at 0.02 per 60 s; --reserve-max-s 600: a hold is at most 10 x 0.02 = 0.20."""
    t = Tenant(tmp_path, quiet(DOC), "--reserve-max-s", "600")
    try:
        t.credit("1.00", "opening")
        wait_for(lambda: offered(t).max_duration_s == 50 * 60)          # 1.00 / 0.02 = 50 increments
        uk = "+442079460000"                                            # 0.0350 per minute, billed per 1 s
        assert offered(t, destination=uk).max_duration_s == 1714        # 1.00 x 60 / 0.035 = 1714.3 s
        now = int(time.time())
        ringing = t.event(EV.RINGING, "o1", "u3", now, direction="outbound", called=US_DEST)
        assert (ringing.max_duration_s, ringing.reserved) == (600, "0.20")
        balance = t.balance()
        assert (balance.balance, balance.reserved, balance.available) == ("1.00", "0.20", "0.80")
        # within one poll the worker sees the hold: 0.80 / 0.02 = 40 increments, never the whole balance
        shrunk = wait_for(lambda: (lambda d: d if d.max_duration_s != 50 * 60 else None)(offered(t)), timeout=5)
        assert (shrunk.verdict, shrunk.max_duration_s) == (decisions_pb2.ALLOW, 40 * 60)
        assert offered(t, destination=uk).max_duration_s == 1371        # 0.80 x 60 / 0.035 = 1371.4 s
        # a second hold: 0.20 more; 0.60 left for decisions
        second = t.event(EV.RINGING, "o2", "u3", now, direction="outbound", called=US_DEST)
        assert (second.max_duration_s, second.reserved) == (600, "0.20")
        wait_for(lambda: offered(t).max_duration_s == 30 * 60, timeout=5)
        # the first call talks 61 s (2 increments: 0.04); the second ends unanswered: both holds go
        t.event(EV.ANSWERED, "o1", "u3", now + 1)
        assert t.event(EV.ENDED, "o1", at=now + 62).charge == "0.04"
        assert t.event(EV.ENDED, "o2", at=now + 62).charge == "0.00"
        balance = t.balance()
        assert (balance.balance, balance.reserved, balance.available) == ("0.96", "0.00", "0.96")
        grown = wait_for(lambda: (lambda d: d if d.max_duration_s != 30 * 60 else None)(offered(t)), timeout=5)
        assert grown.max_duration_s == 48 * 60                          # 0.96 / 0.02: the holds are gone
        assert offered(t, destination=uk).max_duration_s == 1645        # 0.96 x 60 / 0.035 = 1645.7 s
        assert t.ledger_sum() == micro("0.96")
    finally:
        assert t.close() == 0


def test_a_forwarded_leg_holds_credit_until_its_end(tmp_path: Path) -> None:
    doc = quiet(DOC)
    doc["status"] = "suspended"                      # the tenant is unavailable: backup forwarding (rule 3)
    t = Tenant(tmp_path, doc, "--reserve-max-s", "600")
    try:
        t.credit("5.00", "opening")
        d = t.decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+12125550000",
                                                             called="+14155550199"), timeout=10)
        assert (d.verdict, d.target, d.line) == (decisions_pb2.FORWARD, "+14155550111", "rent-1")
        now = int(time.time())
        ringing = t.event(EV.RINGING, "fwd-1", "backup", now - 200, direction="forwarded", caller="+12125550000",
                          called=d.target, line=d.line)
        assert ringing.state == "ringing"
        assert (ringing.max_duration_s, ringing.reserved) == (600, "0.20")   # 10 x 60 s at 0.02
        assert ringing.reason == decisions_pb2.OK
        balance = t.balance()
        assert (balance.balance, balance.reserved, balance.available) == ("5.00", "0.20", "4.80")
        # a replayed RINGING holds nothing more
        assert t.event(EV.RINGING, "fwd-1", "backup", now - 200, direction="forwarded", caller="+12125550000",
                       called=d.target, line=d.line) == ringing
        assert t.balance().reserved == "0.20"
        t.event(EV.ANSWERED, "fwd-1", "backup", now - 198)
        assert t.balance().reserved == "0.20"                           # held while it talks
        ended = t.event(EV.ENDED, "fwd-1", at=now - 198 + 125)          # 3 increments of 60 s at 0.02
        assert (ended.talked_seconds, ended.charge) == (125, "0.06")
        balance = t.balance()
        assert (balance.balance, balance.reserved, balance.available) == ("4.94", "0.00", "4.94")
        assert t.ledger_sum() == micro("4.94")
    finally:
        assert t.close() == 0


POLISH = "+48500600700"
SENT = POLISH[1:]                                   # a proxy that drops the "+"
DE_NUMBER = "+493012345678"
NATIONAL = "+49" + SENT                             # the same digits read as a German national number


def test_explain_names_the_listed_reading_of_a_bare_digits_caller(tmp_path: Path) -> None:
    doc = quiet(DOC)
    doc["lines"][0]["caller_format"] = "auto"
    doc["numbers"].append({"number": DE_NUMBER, "line": "rent-1", "country": "DE", "route_to": "sales"})
    doc["blacklist"] = [POLISH]
    t = Tenant(tmp_path, doc)

    def explain(caller: str) -> Any:
        return t.decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller=caller, called=DE_NUMBER,
                                                                explain=True), timeout=10)

    try:
        d = explain(SENT)
        assert (d.verdict, d.reason, d.sip_status) == (decisions_pb2.REJECT, decisions_pb2.BLACKLISTED, 603)
        assert list(d.caller_readings) == [NATIONAL, POLISH]
        assert d.caller == POLISH                                        # the reading that decided
        assert d.rule.startswith("the caller is on the tenant's blacklist")
        assert f"read as {NATIONAL} and as {POLISH}; {POLISH} is listed" in d.rule, d.rule
        # without explain a proxy gets the same verdict, without the words
        bare = t.decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller=SENT, called=DE_NUMBER),
                                   timeout=10)
        assert (bare.verdict, bare.reason, bare.rule, list(bare.caller_readings)) == (
            decisions_pb2.REJECT, decisions_pb2.BLACKLISTED, "", [])
        # the first reading listed instead: the explanation names that one
        other = copy.deepcopy(doc)
        other["blacklist"] = [NATIONAL]
        t.push(other)
        d = wait_for(lambda: (lambda x: x if x.reason == decisions_pb2.BLACKLISTED else None)(explain(SENT)))
        assert list(d.caller_readings) == [NATIONAL, POLISH] and d.caller == NATIONAL
        assert f"read as {NATIONAL} and as {POLISH}; {NATIONAL} is listed" in d.rule, d.rule
        # neither listed: routed, and the explanation says both were checked
        other["blacklist"] = []
        t.push(other)
        d = wait_for(lambda: (lambda x: x if x.verdict == decisions_pb2.ROUTE else None)(explain(SENT)))
        assert list(d.caller_readings) == [NATIONAL, POLISH]
        assert "neither is listed" in d.rule, d.rule
    finally:
        assert t.close() == 0
