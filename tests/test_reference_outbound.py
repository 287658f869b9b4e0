"""Hand-computed Outbound and Pickup decisions (and what every decision carries), run against both
implementations like tests/test_reference.py: see its docstring for how the expected values were made.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import pytest

from engine import Decision, RingingCall, codes, parse_settings

from .decide_cases import (
    LA_SCHEDULED,
    LONDON,
    MODES,
    MON_LA_10,
    NY_MAIN,
    SMALL_MODES,
    Decider,
    Impl,
    acme,
    acme_doc,
    is_core,
    small_doc,
)

# --------------------------------------------------------------------------
# Outbound
# --------------------------------------------------------------------------


def allow(caller_id: str, destination: str, rate: str, increment: int, max_s: int, **modes: Any) -> Decision:
    return Decision(verdict="ALLOW", reason="OK", sip_status=0, version=1, caller_id=caller_id,
                    destination=destination, line="rent-1", rate_per_minute=Decimal(rate), increment_s=increment,
                    max_duration_s=max_s, **(modes or MODES))


def deny(reason: str, sip: int, verdict: str = "DENY", modes: dict[str, Any] = MODES) -> Decision:
    return Decision(verdict=verdict, reason=reason, sip_status=sip, version=1, **modes)


@pytest.mark.parametrize(("balance", "max_s"), [
    # one 60 s increment at 0.0200/min costs 0.0200
    ("0.05", 120),  # 2.5 increments -> 2
    ("0.0400", 120),  # exactly 2
    ("0.039999", 60),
    ("0.02", 60),
    ("0.0500000000", 120),  # 6 decimals or fewer by value
    ("28.80", 86400),  # 1440 increments = the cap exactly
    ("1000", 86400),  # 50000 increments, capped at 86400 / 60 = 1440
    ("1000000000", 86400),
])
def test_outbound_sixty_second_increments(ref_approved: Decider, balance: str, max_s: int) -> None:
    d = ref_approved.outbound("u1", "+14155550123", MON_LA_10, Decimal(balance))
    assert d == allow(LA_SCHEDULED, "+14155550123", "0.0200", 60, max_s)
    assert str(d.rate_per_minute) == "0.0200"  # the Decimal as in the settings


@pytest.mark.parametrize(("balance", "max_s"), [
    # one 1 s increment at 0.0350/min costs 0.035/60 = 0.000583333...
    ("0.01", 17),  # 0.6 / 0.035 = 17.14
    ("0.007", 12),  # exactly 12 increments: 12 * 0.035 / 60 = 0.007
    ("0.006999", 11),
    ("0.000584", 1),
    ("1.00", 1714),  # 60 / 0.035 = 1714.28
    ("50.40", 86400),  # 86400 increments cost exactly 50.40
])
def test_outbound_one_second_increments(ref: Decider, balance: str, max_s: int) -> None:
    # u3 presents the London number (GB, no documents); destination read in GB
    assert ref.outbound("u3", "02079460000", MON_LA_10, Decimal(balance)) == allow(
        LONDON, "+442079460000", "0.0350", 1, max_s)


@pytest.mark.parametrize("balance", ["0", "0.000583", "-5", "-0", "-1000000000"])
def test_outbound_insufficient_funds_per_second(ref: Decider, balance: str) -> None:
    assert ref.outbound("u3", "+442079460000", MON_LA_10, Decimal(balance)) == deny("INSUFFICIENT_FUNDS", 402)


@pytest.mark.parametrize("balance", ["0.019999", "0", "-0.01"])
def test_outbound_insufficient_funds(ref_approved: Decider, balance: str) -> None:
    assert ref_approved.outbound("u1", "+14155550123", MON_LA_10, Decimal(balance)) == deny("INSUFFICIENT_FUNDS", 402)


def test_outbound_destination_read_in_caller_id_country(ref: Decider, ref_approved: Decider) -> None:
    # u3: London number, GB reading
    assert ref.outbound("u3", "0014155550123", MON_LA_10, Decimal("1")) == allow(
        LONDON, "+14155550123", "0.0200", 60, 3000)
    assert ref.outbound("u3", "14155550123", MON_LA_10, Decimal("1")).destination == "+14155550123"
    # u1: LA number, US reading
    assert ref_approved.outbound("u1", "4155550123", MON_LA_10, Decimal("1")).destination == "+14155550123"
    assert ref_approved.outbound("u1", "011442079460000", MON_LA_10, Decimal("1")) == allow(
        LA_SCHEDULED, "+442079460000", "0.0350", 1, 1714)


def test_outbound_default_caller_id(ref_approved: Decider) -> None:
    # u2 has no users entry (a queue-group member), u9 is known nowhere: both present the default
    for user in ("u2", "u9", "x" * 64, "a.b:c@d-e_f"):
        d = ref_approved.outbound(user, "+14155550123", MON_LA_10, Decimal("0.05"))
        assert d == allow(LA_SCHEDULED, "+14155550123", "0.0200", 60, 120), user


def test_outbound_no_caller_id(impl: Impl) -> None:
    doc = small_doc(users=[{"id": "a", "groups": ["g"]}])
    r = impl(parse_settings(doc))
    assert r.outbound("a", "+33612345678", MON_LA_10, Decimal("10")) == deny("NO_CALLER_ID", 403, modes=SMALL_MODES)
    # no caller ID is decided before the destination is read
    assert r.outbound("a", "garbage", MON_LA_10, Decimal("10")).reason == "NO_CALLER_ID"


def test_outbound_own_caller_id_over_default(impl: Impl) -> None:
    doc = small_doc(users=[{"id": "a", "caller_id": "+33142685300"}])
    r = impl(parse_settings(doc))
    # FR: NP 0; rate 33 at 0.0100 / 60 s: 0.035 buys 3 increments
    assert r.outbound("a", "0612345678", MON_LA_10, Decimal("0.035")) == Decision(
        verdict="ALLOW", reason="OK", sip_status=0, version=1, caller_id="+33142685300",
        destination="+33612345678", line="l1", rate_per_minute=Decimal("0.0100"), increment_s=60,
        max_duration_s=180, **SMALL_MODES)


def test_outbound_no_rate(ref_approved: Decider) -> None:
    assert ref_approved.outbound("u1", "+33142685300", MON_LA_10, Decimal("100")) == deny("NO_RATE", 403)


def three_prefixes() -> dict[str, Any]:
    """A line whose rates nest: 4, 44 and 447."""
    doc = small_doc(default_caller_id="+33142685300")
    doc["lines"][0]["rates"] = [
        {"prefix": "4", "per_minute": "0.1000", "increment_s": 60},
        {"prefix": "447", "per_minute": "0.2000", "increment_s": 1},
        {"prefix": "44", "per_minute": "0.0350", "increment_s": 30},
    ]
    return doc


def test_outbound_longest_prefix(impl: Impl) -> None:
    r = impl(parse_settings(three_prefixes()))
    d = r.outbound("a", "+447700900123", MON_LA_10, Decimal("1"))
    # 447 at 0.20/min per second: 60 / 0.2 = 300 increments
    assert (d.rate_per_minute, d.increment_s, d.max_duration_s) == (Decimal("0.2000"), 1, 300)
    d = r.outbound("a", "+442079460000", MON_LA_10, Decimal("1"))
    # 44 at 0.035/min per 30 s: one increment 0.0175; 1 / 0.0175 = 57.1 -> 57 * 30
    assert (d.rate_per_minute, d.increment_s, d.max_duration_s) == (Decimal("0.0350"), 30, 1710)
    d = r.outbound("a", "+4930123456", MON_LA_10, Decimal("1"))
    assert (d.rate_per_minute, d.increment_s, d.max_duration_s) == (Decimal("0.1000"), 60, 600)
    assert r.outbound("a", "+33612345678", MON_LA_10, Decimal("1")).reason == "NO_RATE"


def test_line_rate_is_the_outbound_decisions_rate(impl: Impl) -> None:
    # how a forwarded leg is priced: the same longest prefix as an Outbound decision, in micro-units
    r = impl(parse_settings(three_prefixes()))
    assert r.line_rate("l1", "+447700900123") == (200_000, 1)
    assert r.line_rate("l1", "+442079460000") == (35_000, 30)
    assert r.line_rate("l1", "+4930123456") == (100_000, 60)
    for line, number in [("l1", "+33612345678"), ("l2", "+447700900123"), ("l1", "447700900123"),
                         ("l1", "+44abc"), ("l1", "+"), ("l1", ""), ("", "+447700900123")]:
        assert r.line_rate(line, number) is None, (line, number)


def test_outbound_whatever_the_balance(impl: Impl) -> None:
    # balance None: the route and rate a ringing call is priced by; only the credit check is left out
    doc = small_doc(default_caller_id="+33142685300")
    doc["lines"][0]["rates"] = [{"prefix": "447", "per_minute": "1000", "increment_s": 60}]
    r = impl(parse_settings(doc))
    d = r.outbound("a", "+447700900123", MON_LA_10, None)
    assert (d.verdict, d.rate_per_minute, d.increment_s, d.max_duration_s) == ("ALLOW", Decimal("1000"), 60, 86400)
    assert r.outbound("a", "+447700900123", MON_LA_10, Decimal("0")).reason == "INSUFFICIENT_FUNDS"
    assert r.outbound("a", "+33612345678", MON_LA_10, None).reason == "NO_RATE"
    assert r.outbound("", "+447700900123", MON_LA_10, None).reason == "INVALID_USER"


def test_outbound_free_rate(impl: Impl) -> None:
    doc = small_doc(default_caller_id="+33142685300")
    doc["lines"][0]["rates"] = [{"prefix": "33", "per_minute": "0", "increment_s": 60}]
    r = impl(parse_settings(doc))
    # per_minute 0: infinitely many increments, capped at 86400 / 60
    assert r.outbound("a", "+33612345678", MON_LA_10, Decimal("0")).max_duration_s == 86400
    assert r.outbound("a", "+33612345678", MON_LA_10, Decimal("0.01")).max_duration_s == 86400
    # a negative balance affords nothing, not even free increments (spec §3: cost 0 > balance)
    assert r.outbound("a", "+33612345678", MON_LA_10, Decimal("-0.01")).reason == "INSUFFICIENT_FUNDS"


def test_outbound_cap_with_odd_increment(impl: Impl) -> None:
    doc = small_doc(default_caller_id="+33142685300")
    doc["lines"][0]["rates"] = [{"prefix": "33", "per_minute": "0.000001", "increment_s": 7}]
    r = impl(parse_settings(doc))
    # floor(86400 / 7) = 12342 increments -> 86394 s
    assert r.outbound("a", "+33612345678", MON_LA_10, Decimal("1000")).max_duration_s == 86394


def test_outbound_documents_pending(ref: Decider) -> None:
    assert ref.outbound("u1", "+14155550123", MON_LA_10, Decimal("10")) == deny("DOCUMENTS_PENDING", 403)
    # default caller ID is the same pending number
    assert ref.outbound("u2", "+14155550123", MON_LA_10, Decimal("10")) == deny("DOCUMENTS_PENDING", 403)
    # pending before rate and funds
    assert ref.outbound("u1", "+33142685300", MON_LA_10, Decimal("0")).reason == "DOCUMENTS_PENDING"


def test_outbound_documents_rejected(impl: Impl) -> None:
    r = impl(acme(), rejected=[LA_SCHEDULED])
    assert r.outbound("u1", "+14155550123", MON_LA_10, Decimal("10")) == deny("DOCUMENTS_REJECTED", 403)
    assert r.outbound("u1", "+33142685300", MON_LA_10, Decimal("0")).reason == "DOCUMENTS_REJECTED"
    assert impl(acme(), approved=[LA_SCHEDULED], rejected=[LA_SCHEDULED]).outbound(
        "u1", "+14155550123", MON_LA_10, Decimal("10")).verdict == "ALLOW"


@pytest.mark.parametrize("user", ["", "-u1", "_u", "u 1", "u1\n", "x" * 65, "é", "u/1", "u1+"])
def test_outbound_invalid_user(ref: Decider, user: str) -> None:
    assert ref.outbound(user, "+14155550123", 0, Decimal("1")) == deny("INVALID_USER", 400, verdict="ERROR")


def test_outbound_invalid_time(ref: Decider) -> None:
    assert ref.outbound("u3", "+14155550123", codes.MAX_INSTANT, Decimal("1")) == deny(
        "INVALID_TIME", 400, verdict="ERROR")
    # before the caller ID and the destination
    assert ref.outbound("u3", "garbage", codes.MIN_INSTANT - 1, Decimal("1")).reason == "INVALID_TIME"


@pytest.mark.parametrize("destination", ["anonymous", "", " Private ", "garbage", "+1 4155550123", "5550123",
                                         "00442079460000"])
def test_outbound_invalid_destination(ref_approved: Decider, destination: str) -> None:
    # read in the US (u1's caller ID): 00 is not the US international prefix
    assert ref_approved.outbound("u1", destination, MON_LA_10, Decimal("1")) == deny(
        "INVALID_DESTINATION", 400, verdict="ERROR")


def test_outbound_account_unavailable(impl: Impl) -> None:
    r = impl(acme(status="suspended"))
    assert r.outbound("u3", "+14155550123", MON_LA_10, Decimal("1")) == deny("ACCOUNT_UNAVAILABLE", 480)
    # before documents; after the destination
    assert r.outbound("u1", "+14155550123", MON_LA_10, Decimal("1")).reason == "ACCOUNT_UNAVAILABLE"
    assert r.outbound("u1", "garbage", MON_LA_10, Decimal("1")).reason == "INVALID_DESTINATION"


@pytest.mark.parametrize("balance", ["0.0000001", "1000000000.01", "-1000000000.000001", "1E+10", "NaN",
                                     "Infinity", "-Infinity", "sNaN"])
def test_outbound_bad_balance(impl: Impl, ref: Decider, balance: str) -> None:
    if not is_core(impl):
        with pytest.raises(ValueError):
            ref.outbound("u3", "+14155550123", MON_LA_10, Decimal(balance))
        return
    # the core takes micro-units: a balance with no exact micro-units (sub-micro, NaN, infinite) cannot be
    # given to it (ValueError, as the reference); one beyond 1e9 in size is an input error it answers
    if balance in ("0.0000001", "NaN", "Infinity", "-Infinity", "sNaN"):
        with pytest.raises(ValueError):
            ref.outbound("u3", "+14155550123", MON_LA_10, Decimal(balance))
    else:
        assert ref.outbound("u3", "+14155550123", MON_LA_10, Decimal(balance)) == deny(
            "INVALID_BALANCE", 400, verdict="ERROR")


def test_outbound_balance_must_be_decimal(impl: Impl, ref: Decider) -> None:
    # the reference takes a Decimal, the core an int of micro-units: a float is refused by both
    with pytest.raises(TypeError):
        ref.outbound("u3", "+14155550123", MON_LA_10, 1.0)  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# Pickup
# --------------------------------------------------------------------------


def intercept(call_id: str) -> Decision:
    return Decision(verdict="INTERCEPT", reason="OK", sip_status=0, version=1, call_id=call_id)


def no_pickup(reason: str, sip: int = 0) -> Decision:
    return Decision(verdict="NO_PICKUP", reason=reason, sip_status=sip, version=1)


def test_pickup_longest_ringing_in_own_groups(ref: Decider) -> None:
    ringing = [RingingCall("c1", "u2", 100), RingingCall("c2", "u3", 50)]
    # u1 (sales) shares sales with u2, nothing with u3 (support)
    assert ref.pickup("u1", "*8", ringing) == intercept("c1")
    # u2 (sales and support) may take both: c2 rings longest
    assert ref.pickup("u2", "*8", ringing) == intercept("c2")


def test_pickup_never_outside_groups(ref: Decider) -> None:
    # u3 (support) and u1 (sales) share nothing
    assert ref.pickup("u3", "*8", [RingingCall("c1", "u1", 1)]) == no_pickup("NO_RINGING_CALL")
    assert ref.pickup("u1", "*8", [RingingCall("c1", "u3", 1)]) == no_pickup("NO_RINGING_CALL")
    # a user in no group, and a ringing user in no group
    assert ref.pickup("u7", "*8", [RingingCall("c1", "u1", 1)]) == no_pickup("NO_RINGING_CALL")
    assert ref.pickup("u1", "*8", [RingingCall("c1", "u7", 1)]) == no_pickup("NO_RINGING_CALL")


def test_pickup_not_own_call(ref: Decider) -> None:
    assert ref.pickup("u2", "*8", [RingingCall("c1", "u2", 10), RingingCall("c2", "u1", 20)]) == intercept("c2")
    assert ref.pickup("u2", "*8", [RingingCall("c1", "u2", 10)]) == no_pickup("NO_RINGING_CALL")


def test_pickup_answered_ignored(ref: Decider) -> None:
    ringing = [RingingCall("c1", "u1", 10, answered=True), RingingCall("c3", "u1", 30)]
    assert ref.pickup("u2", "*8", ringing) == intercept("c3")
    assert ref.pickup("u2", "*8", ringing[:1]) == no_pickup("NO_RINGING_CALL")


def test_pickup_tie_goes_to_first_listed(ref: Decider) -> None:
    a, b = RingingCall("cA", "u1", 5), RingingCall("cB", "u3", 5)
    assert ref.pickup("u2", "*8", [a, b]) == intercept("cA")
    assert ref.pickup("u2", "*8", [b, a]) == intercept("cB")
    assert ref.pickup("u2", "*8", [RingingCall("cC", "u1", 6), b, a]) == intercept("cB")


def test_pickup_empty(ref: Decider) -> None:
    assert ref.pickup("u1", "*8", []) == no_pickup("NO_RINGING_CALL")


@pytest.mark.parametrize("dialed", ["*9", "*8 ", " *8", "8", "*88", "", "*"])
def test_pickup_wrong_code(ref: Decider, dialed: str) -> None:
    assert ref.pickup("u1", dialed, [RingingCall("c1", "u2", 1)]) == no_pickup("NOT_PICKUP_CODE")


def test_pickup_without_code(impl: Impl) -> None:
    doc = acme_doc()
    del doc["pickup_code"]
    r = impl(parse_settings(doc))
    assert r.pickup("u1", "*8", [RingingCall("c1", "u2", 1)]) == no_pickup("NOT_PICKUP_CODE")
    assert r.pickup("u1", "", [RingingCall("c1", "u2", 1)]) == no_pickup("NOT_PICKUP_CODE")


@pytest.mark.parametrize("user", ["", "u 1", "-u"])
def test_pickup_invalid_user(ref: Decider, user: str) -> None:
    assert ref.pickup(user, "*8", [RingingCall("c1", "u2", 1)]) == Decision(
        verdict="ERROR", reason="INVALID_USER", sip_status=400, version=1)


def test_pickup_account_unavailable(impl: Impl) -> None:
    r = impl(acme(status="disabled"))
    assert r.pickup("u1", "*8", [RingingCall("c1", "u2", 1)]) == no_pickup("ACCOUNT_UNAVAILABLE", 480)
    # after the user check, before the code
    assert r.pickup("u1", "*9", []) == no_pickup("ACCOUNT_UNAVAILABLE", 480)
    assert r.pickup("", "*8", []).reason == "INVALID_USER"


def test_version_is_carried(impl: Impl) -> None:
    r = impl(acme(), version=9)
    assert r.inbound("+14155550123", NY_MAIN, 0).version == 9
    assert r.outbound("u3", "+14155550123", MON_LA_10, Decimal("1")).version == 9
    assert r.pickup("u1", "*8", []).version == 9


def test_settings_are_not_mutated(impl: Impl) -> None:
    s = acme()
    before = copy.deepcopy(s)
    r = impl(s, approved=[LA_SCHEDULED])
    r.inbound("+14155550123", LA_SCHEDULED, MON_LA_10)
    r.outbound("u1", "+14155550123", MON_LA_10, Decimal("1"))
    assert s == before
