"""Hand-computed decisions, run against both implementations: the pure-Python reference
(engine/reference.py) and the compiled core (a CoreSnapshot from engine.compile_settings).

Every expected value here was worked out by hand from docs/decisions.md and
the documents below, never by running the code under test.  Each test takes
one implementation through the `impl` fixture (parametrised: "core" and
"reference"; `ref` and `ref_approved` are the acme tenant in it), so every case
runs against both; the reference's own helpers (`read_number`, `is_withheld`)
are checked directly, and both implementations through the decisions that use
them.  Instants are written as UTC wall times (`utc(...)`), with the local
time they stand for in a comment; calendar facts used for 2026: Mar 1 and
Nov 1 are Sundays, US daylight saving starts Sun Mar 8 (02:00 PST -> 03:00
PDT, at 10:00 UTC) and ends Sun Nov 1 (02:00 PDT -> 01:00 PST, at 09:00 UTC),
Nov 26 is a Thursday, Dec 25 a Friday.
"""

from __future__ import annotations

import calendar
import copy
import json
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest

from engine import Decision, RingingCall, Settings, codes, compile_settings, micro_units, parse_settings
from engine.dialing import country_dialing
from engine.reference import Reference, is_withheld, read_number

ACME_PATH = Path(__file__).resolve().parent.parent / "examples" / "acme.json"

# acme's modes, on every inbound and outbound decision
MODES: dict[str, Any] = {"chat_mode": "chat_per_call", "lead_trigger": "on_answer"}

LA_SCHEDULED = "+14155550100"  # US, LA, mon/tue 09-18, forward, requires documents
NY_MAIN = "+14155550199"  # US, New York, voicemail
LONDON = "+442071234567"  # GB, no schedule, support


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0))


# Working instants (hand-converted)
TUE_NY_NOON = utc(2026, 3, 10, 16)  # Tue 2026-03-10 12:00 EDT (UTC-4): NY number works all Tuesday
SAT_NY = utc(2026, 3, 14, 16)  # Sat 2026-03-14 12:00 EDT: NY number off
MON_LA_10 = utc(2026, 3, 9, 17)  # Mon 2026-03-09 10:00 PDT (UTC-7): LA number works 09-18
WED_LA_10 = utc(2026, 3, 11, 17)  # Wed 2026-03-11 10:00 PDT: LA number off


def acme_doc() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ACME_PATH.read_text())
    return doc


def acme(**changes: Any) -> Settings:
    doc = acme_doc()
    doc.update(changes)
    return parse_settings(doc)


def small_doc(**changes: Any) -> dict[str, Any]:
    """A minimal tenant: one EUR trunk, one UTC number working 09:00-17:00 Mon-Fri."""
    doc: dict[str, Any] = {
        "tenant": "t1",
        "currency": "EUR",
        "status": "active",
        "chat_mode": "single_chat",
        "lead_trigger": "on_hangup",
        "lines": [{"id": "l1", "kind": "sip_trunk",
                   "rates": [{"prefix": "33", "per_minute": "0.0100", "increment_s": 60}]}],
        "numbers": [{"number": "+33142685300", "line": "l1", "country": "FR",
                     "schedule": {"timezone": "UTC",
                                  "weekly": {d: [["09:00", "17:00"]] for d in ("mon", "tue", "wed", "thu", "fri")}},
                     "route_to": "g"}],
        "queue_groups": [{"id": "g", "members": ["a"]}],
    }
    doc.update(changes)
    return doc


SMALL_MODES: dict[str, Any] = {"chat_mode": "single_chat", "lead_trigger": "on_hangup"}


class Decider(Protocol):
    """What both implementations answer, as the shared `Decision`."""

    def inbound(self, caller: str, called: str, at: int) -> Decision: ...
    def outbound(self, user: str, destination: str, at: int, balance: Decimal) -> Decision: ...
    def pickup(self, user: str, dialed: str, ringing: Sequence[RingingCall]) -> Decision: ...


Impl = Callable[..., Decider]  # (settings, version=1, approved=()) -> a Decider


class Core:
    """The compiled core through its CoreSnapshot API, with the reference's signature: a Decimal balance is
    turned into the micro-units the core takes (`micro_units`, as `engine.Engine` does), anything else is
    passed on as it is."""

    def __init__(self, settings: Settings, version: int = 1, approved: Iterable[str] = ()) -> None:
        self.snapshot = compile_settings(settings, version=version, approved=approved)

    def inbound(self, caller: str, called: str, at: int) -> Decision:
        return self.snapshot.inbound(caller, called, at).to_decision("inbound")

    def outbound(self, user: str, destination: str, at: int, balance: Decimal) -> Decision:
        micro = micro_units(balance) if isinstance(balance, Decimal) else balance
        return self.snapshot.outbound(user, destination, at, micro).to_decision("outbound")

    def pickup(self, user: str, dialed: str, ringing: Sequence[RingingCall]) -> Decision:
        return self.snapshot.pickup(user, dialed, ringing).to_decision("pickup")


IMPLEMENTATIONS: dict[str, Impl] = {"core": Core, "reference": Reference}


@pytest.fixture(params=sorted(IMPLEMENTATIONS))
def impl(request: pytest.FixtureRequest) -> Impl:
    """Each implementation in turn: every test that takes it runs against both."""
    return IMPLEMENTATIONS[request.param]


def is_core(impl: Impl) -> bool:
    return impl is Core


@pytest.fixture
def ref(impl: Impl) -> Decider:
    return impl(acme())


@pytest.fixture
def ref_approved(impl: Impl) -> Decider:
    return impl(acme(), approved=[LA_SCHEDULED])


def test_utc_helper_is_right() -> None:
    # 2026-01-01 is day 56*365 + 14 (leap days 1972..2024) = 20454; + 31 + 28 + 7 = day 20520 for Mar 8.
    assert utc(2026, 3, 8, 10) == 20520 * 86400 + 10 * 3600 == 1_772_964_000


# --------------------------------------------------------------------------
# Reading numbers
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("+14155550100", "+14155550100"),
        ("14155550100", "+14155550100"),  # digits alone: E.164 without +
        ("12345678", "+12345678"),  # 8 digits: shortest
        ("123456789012345", "+123456789012345"),  # 15 digits: longest
        ("1234567", None),  # 7 digits
        ("1234567890123456", None),  # 16 digits
        ("+0123456789", None),  # first digit 0
        ("04155550100", None),
        ("+", None),
        ("", None),
        ("+1 4155550100", None),
        ("415-555-0100", None),
        (" 14155550100", None),
        ("sip:+14155550100", None),
        ("+1415555010a", None),
        ("\u0661\u0664\u0661\u0665\u0665\u0665\u0665\u0660\u0661\u0660\u0660", None),  # Arabic-Indic digits
    ],
)
def test_read_number_without_country(impl: Impl, text: str, expected: str | None) -> None:
    if impl is Reference:
        assert read_number(text, None) == expected
    # the called number is read so (docs/decisions.md step 2): unread, it is INVALID_CALLED
    d = impl(acme()).inbound("+14155550123", text, TUE_NY_NOON)
    assert d.called == expected
    assert (d.reason == "INVALID_CALLED") == (expected is None)


@pytest.mark.parametrize(
    ("region", "text", "expected"),
    [
        # US: CC 1, IP 011, NP 1, national length 10
        ("US", "4155550123", "+14155550123"),  # 10 digits: national
        ("US", "14155550123", "+14155550123"),  # NP 1 then the national number
        ("US", "011442071234567", "+442071234567"),  # IP 011
        ("US", "442071234567", "+442071234567"),  # 12 digits: E.164 without +
        ("US", "+442071234567", "+442071234567"),
        ("US", "00442071234567", None),  # 00 is not the US IP: stays "0044...", starts with 0
        ("US", "5550123", None),  # 7 digits: not national, too short as E.164
        # GB: CC 44, IP 00, NP 0, national lengths 7, 9, 10
        ("GB", "02079460000", "+442079460000"),  # NP 0
        ("GB", "00442079460000", "+442079460000"),  # IP 00 wins over NP 0
        ("GB", "0014155550123", "+14155550123"),
        ("GB", "2079460000", "+442079460000"),  # 10 digits: national
        ("GB", "14155550123", "+14155550123"),  # 11 digits: E.164 without +
        ("GB", "00", None),
        ("GB", "0", None),
    ],
)
def test_read_number_in_country(impl: Impl, region: str, text: str, expected: str | None) -> None:
    if impl is Reference:
        assert read_number(text, country_dialing(region)) == expected
    # a caller is read so in the country of the called number (acme's lines read callers "auto")
    d = impl(acme()).inbound(text, {"US": NY_MAIN, "GB": LONDON}[region], TUE_NY_NOON)
    assert d.caller == expected
    assert (d.reason == "INVALID_CALLER") == (expected is None)


@pytest.mark.parametrize("text", ["", "anonymous", "Anonymous", "  ANONYMOUS ", "restricted", "Private",
                                  "unavailable", "unknown", "   "])
def test_withheld_words(impl: Impl, text: str) -> None:
    if impl is Reference:
        assert is_withheld(text)
    d = impl(acme(block_anonymous=True)).inbound(text, NY_MAIN, TUE_NY_NOON)
    assert (d.reason, d.caller) == ("ANONYMOUS", None)


@pytest.mark.parametrize("text", ["anon", "anonymous1", "+14155550100", "\tanonymous", "UN\u212aNOWN"])
def test_not_withheld(impl: Impl, text: str) -> None:
    # a tab is not a space; the Kelvin sign lower-cases to "k" but is not ASCII
    if impl is Reference:
        assert not is_withheld(text)
    d = impl(acme(block_anonymous=True)).inbound(text, NY_MAIN, TUE_NY_NOON)
    assert d.reason != "ANONYMOUS"
    assert d.reason == "INVALID_CALLER" or d.caller == text


# --------------------------------------------------------------------------
# Inbound, step by step
# --------------------------------------------------------------------------


@pytest.mark.parametrize("at", [codes.MIN_INSTANT - 1, codes.MAX_INSTANT, -1, 0, 10**30, -(10**30)])
def test_inbound_invalid_time(ref: Decider, at: int) -> None:
    assert ref.inbound("+14155550123", NY_MAIN, at) == Decision(
        verdict="ERROR", reason="INVALID_TIME", sip_status=400, version=1, **MODES)


def test_inbound_time_bounds_are_inclusive_exclusive(ref: Decider) -> None:
    # MIN_INSTANT is Sat 2000-01-01 00:00 UTC = Fri 1999-12-31 19:00 EST: NY number works Fri until 17:30
    assert ref.inbound("+14155550123", NY_MAIN, codes.MIN_INSTANT).verdict == "VOICEMAIL"
    # 2100-01-01 is 36525 days (= 6 mod 7) after Saturday 2000-01-01: a Friday.  MAX_INSTANT - 1 is then
    # Thu 2099-12-31 23:59:59 UTC = 18:59:59 EST, and the NY number works all Thursday
    assert ref.inbound("+14155550123", NY_MAIN, codes.MAX_INSTANT - 1).verdict == "ROUTE"
    # and with no schedule, both ends simply route
    assert ref.inbound("+14155550123", LONDON, codes.MIN_INSTANT).verdict == "ROUTE"
    assert ref.inbound("+14155550123", LONDON, codes.MAX_INSTANT - 1).verdict == "ROUTE"


def test_inbound_invalid_time_comes_first(ref: Decider) -> None:
    assert ref.inbound("garbage", "garbage", 0).reason == "INVALID_TIME"


def test_inbound_non_int_time_is_a_type_error(ref: Decider) -> None:
    with pytest.raises(TypeError):
        ref.inbound("+14155550123", NY_MAIN, 1.8e9)  # type: ignore[arg-type]


@pytest.mark.parametrize("called", ["", "abc", "+0123456789", "1234567", "+1234567890123456", "+1 4155550199",
                                    "anonymous", "sip:+14155550199"])
def test_inbound_invalid_called(ref: Decider, called: str) -> None:
    assert ref.inbound("+14155550123", called, TUE_NY_NOON) == Decision(
        verdict="ERROR", reason="INVALID_CALLED", sip_status=400, version=1, **MODES)


def test_inbound_invalid_called_before_invalid_caller(ref: Decider) -> None:
    assert ref.inbound("garbage", "garbage", TUE_NY_NOON).reason == "INVALID_CALLED"


def test_inbound_called_digits_without_plus(ref: Decider) -> None:
    d = ref.inbound("+14155550123", "14155550199", TUE_NY_NOON)
    assert (d.verdict, d.called) == ("ROUTE", NY_MAIN)


@pytest.mark.parametrize("caller", ["415-555-0123", "5550123", "00442071234567", "+", "abc", "+1415555012x"])
def test_inbound_invalid_caller(ref: Decider, caller: str) -> None:
    # read in the US (country of the called number); the called number is filled since it parsed
    assert ref.inbound(caller, NY_MAIN, TUE_NY_NOON) == Decision(
        verdict="ERROR", reason="INVALID_CALLER", sip_status=400, version=1, called=NY_MAIN, **MODES)


def test_inbound_unknown_number_does_not_read_the_caller(ref: Decider) -> None:
    assert ref.inbound("garbage", "+14155559999", TUE_NY_NOON) == Decision(
        verdict="REJECT", reason="UNKNOWN_NUMBER", sip_status=404, version=1, called="+14155559999", **MODES)
    # a good caller is not read either: the caller field stays empty
    assert ref.inbound("+14155550123", "+14155559999", TUE_NY_NOON) == Decision(
        verdict="REJECT", reason="UNKNOWN_NUMBER", sip_status=404, version=1, called="+14155559999", **MODES)


def two_line_doc(status: str) -> dict[str, Any]:
    doc = acme_doc()
    doc["status"] = status
    doc["lines"].append({"id": "trunk-2", "kind": "sip_trunk", "rates": []})
    doc["numbers"][2]["line"] = "trunk-2"  # London moves to another line than backup.line
    return doc


@pytest.mark.parametrize("status", ["suspended", "disabled"])
def test_inbound_backup_forward_on_backup_line(impl: Impl, status: str) -> None:
    r = impl(parse_settings(two_line_doc(status)))
    assert r.inbound("4155550123", NY_MAIN, TUE_NY_NOON) == Decision(
        verdict="FORWARD", reason="ACCOUNT_UNAVAILABLE", sip_status=0, version=1, caller="+14155550123",
        called=NY_MAIN, target="+14155550111", line="rent-1", **MODES)
    # backup applies before documents, blacklists and off hours
    assert r.inbound("+14155550666", LA_SCHEDULED, WED_LA_10).verdict == "FORWARD"
    # a withheld caller is forwarded too, without a caller
    d = r.inbound("anonymous", NY_MAIN, SAT_NY)
    assert (d.verdict, d.caller, d.target) == ("FORWARD", None, "+14155550111")


@pytest.mark.parametrize("status", ["suspended", "disabled"])
def test_inbound_account_unavailable_on_another_line(impl: Impl, status: str) -> None:
    r = impl(parse_settings(two_line_doc(status)))
    assert r.inbound("02079460000", LONDON, TUE_NY_NOON) == Decision(
        verdict="REJECT", reason="ACCOUNT_UNAVAILABLE", sip_status=480, version=1, caller="+442079460000",
        called=LONDON, **MODES)


def test_inbound_account_unavailable_precedence(impl: Impl) -> None:
    r = impl(parse_settings(two_line_doc("suspended")))
    # an unknown called number is refused as unavailable (step 4 before step 5), caller unread
    assert r.inbound("garbage", "+14155559999", TUE_NY_NOON) == Decision(
        verdict="REJECT", reason="ACCOUNT_UNAVAILABLE", sip_status=480, version=1, called="+14155559999", **MODES)
    # a bad caller on a known number is still an input error (step 3 before step 4)
    assert r.inbound("garbage", NY_MAIN, TUE_NY_NOON).reason == "INVALID_CALLER"
    # a bad instant first of all
    assert r.inbound("+14155550123", NY_MAIN, 5).reason == "INVALID_TIME"


def test_inbound_unavailable_without_backup_rejects(impl: Impl) -> None:
    doc = acme_doc()
    doc["status"] = "suspended"
    del doc["backup"]
    r = impl(parse_settings(doc))
    assert r.inbound("+14155550123", NY_MAIN, TUE_NY_NOON) == Decision(
        verdict="REJECT", reason="ACCOUNT_UNAVAILABLE", sip_status=480, version=1, caller="+14155550123",
        called=NY_MAIN, **MODES)


def test_inbound_documents_pending(ref: Decider) -> None:
    assert ref.inbound("+14155550123", LA_SCHEDULED, MON_LA_10) == Decision(
        verdict="REJECT", reason="DOCUMENTS_PENDING", sip_status=403, version=1, caller="+14155550123",
        called=LA_SCHEDULED, **MODES)
    # pending comes before the blacklist and off hours
    assert ref.inbound("+14155550666", LA_SCHEDULED, WED_LA_10).reason == "DOCUMENTS_PENDING"


def test_inbound_documents_approved(ref_approved: Decider) -> None:
    assert ref_approved.inbound("+14155550123", LA_SCHEDULED, MON_LA_10) == Decision(
        verdict="ROUTE", reason="OK", sip_status=0, version=1, caller="+14155550123", called=LA_SCHEDULED,
        group="sales", members=("u1", "u2"), **MODES)


def test_inbound_approval_of_another_number_does_not_count(impl: Impl) -> None:
    r = impl(acme(), approved=[NY_MAIN, LONDON])
    assert r.inbound("+14155550123", LA_SCHEDULED, MON_LA_10).reason == "DOCUMENTS_PENDING"


@pytest.mark.parametrize("caller", ["anonymous", " Anonymous ", "", "PRIVATE", "restricted"])
def test_inbound_anonymous_blocked(impl: Impl, caller: str) -> None:
    r = impl(acme(block_anonymous=True))
    assert r.inbound(caller, NY_MAIN, TUE_NY_NOON) == Decision(
        verdict="REJECT", reason="ANONYMOUS", sip_status=433, version=1, called=NY_MAIN, **MODES)
    # documents pending comes first
    assert r.inbound(caller, LA_SCHEDULED, MON_LA_10).reason == "DOCUMENTS_PENDING"


def test_inbound_anonymous_allowed(ref: Decider) -> None:
    # block_anonymous false: a withheld caller is on no list and is routed or sent to off hours
    assert ref.inbound("anonymous", NY_MAIN, TUE_NY_NOON) == Decision(
        verdict="ROUTE", reason="OK", sip_status=0, version=1, called=NY_MAIN, group="sales",
        members=("u1", "u2"), **MODES)
    assert ref.inbound("", NY_MAIN, SAT_NY) == Decision(
        verdict="VOICEMAIL", reason="OFF_HOURS", sip_status=0, version=1, called=NY_MAIN, **MODES)


@pytest.mark.parametrize(("caller", "called"), [
    ("+14155550666", NY_MAIN),
    ("4155550666", NY_MAIN),  # US national
    ("14155550666", NY_MAIN),  # US trunk prefix
    ("0014155550666", LONDON),  # GB international prefix
    ("+14155550666", LONDON),
])
def test_inbound_blacklisted(ref: Decider, caller: str, called: str) -> None:
    assert ref.inbound(caller, called, TUE_NY_NOON) == Decision(
        verdict="REJECT", reason="BLACKLISTED", sip_status=603, version=1, caller="+14155550666", called=called,
        **MODES)


def test_inbound_blacklist_beats_off_hours(ref: Decider) -> None:
    assert ref.inbound("+14155550666", NY_MAIN, SAT_NY).reason == "BLACKLISTED"


def test_inbound_offhours_blacklist(ref: Decider) -> None:
    assert ref.inbound("+14155550777", NY_MAIN, SAT_NY) == Decision(
        verdict="REJECT", reason="OFF_HOURS_BLOCKED", sip_status=480, version=1, caller="+14155550777",
        called=NY_MAIN, **MODES)
    # in working hours the same caller is routed
    assert ref.inbound("+14155550777", NY_MAIN, TUE_NY_NOON).verdict == "ROUTE"
    # a number without a schedule is never off
    assert ref.inbound("+14155550777", LONDON, SAT_NY).verdict == "ROUTE"


def test_inbound_off_hours_voicemail(ref: Decider) -> None:
    assert ref.inbound("+14155550123", NY_MAIN, SAT_NY) == Decision(
        verdict="VOICEMAIL", reason="OFF_HOURS", sip_status=0, version=1, caller="+14155550123", called=NY_MAIN,
        **MODES)


def test_inbound_off_hours_forward(ref_approved: Decider) -> None:
    assert ref_approved.inbound("+14155550123", LA_SCHEDULED, WED_LA_10) == Decision(
        verdict="FORWARD", reason="OFF_HOURS", sip_status=0, version=1, caller="+14155550123",
        called=LA_SCHEDULED, target="+14155550123", line="rent-1", **MODES)
    # Mon 08:59 PDT = 15:59 UTC: off; 09:00 PDT = 16:00 UTC: on; 17:59 PDT on; 18:00 PDT = 01:00 UTC Tue off
    assert ref_approved.inbound("+14155550124", LA_SCHEDULED, utc(2026, 3, 9, 15, 59)).verdict == "FORWARD"
    assert ref_approved.inbound("+14155550124", LA_SCHEDULED, utc(2026, 3, 9, 16, 0)).verdict == "ROUTE"
    assert ref_approved.inbound("+14155550124", LA_SCHEDULED, utc(2026, 3, 10, 0, 59)).verdict == "ROUTE"
    assert ref_approved.inbound("+14155550124", LA_SCHEDULED, utc(2026, 3, 10, 1, 0)).verdict == "FORWARD"


def test_inbound_off_hours_reject_is_the_default(impl: Impl) -> None:
    r = impl(parse_settings(small_doc()))
    # Sat 2026-03-14 12:00 UTC
    assert r.inbound("+33612345678", "+33142685300", utc(2026, 3, 14, 12)) == Decision(
        verdict="REJECT", reason="OFF_HOURS", sip_status=480, version=1, caller="+33612345678",
        called="+33142685300", **SMALL_MODES)
    # FR national reading of the caller: NP 0 -> +33
    assert r.inbound("0612345678", "+33142685300", utc(2026, 3, 13, 12)) == Decision(
        verdict="ROUTE", reason="OK", sip_status=0, version=1, caller="+33612345678",
        called="+33142685300", group="g", members=("a",), **SMALL_MODES)


def test_inbound_route(ref: Decider) -> None:
    assert ref.inbound("02079460000", LONDON, SAT_NY) == Decision(
        verdict="ROUTE", reason="OK", sip_status=0, version=1, caller="+442079460000", called=LONDON,
        group="support", members=("u3", "u2"), **MODES)


def test_inbound_route_without_group(impl: Impl) -> None:
    doc = small_doc()
    del doc["numbers"][0]["route_to"]
    r = impl(parse_settings(doc))
    assert r.inbound("+33612345678", "+33142685300", utc(2026, 3, 13, 12)) == Decision(
        verdict="ROUTE", reason="OK", sip_status=0, version=1, caller="+33612345678",
        called="+33142685300", **SMALL_MODES)


def test_inbound_route_members_are_the_union_in_document_order(impl: Impl) -> None:
    doc = small_doc(queue_groups=[{"id": "g", "members": ["b", "a"]}, {"id": "h", "members": ["a"]}],
                    users=[{"id": "c", "groups": ["g"]}, {"id": "a", "groups": ["g", "h"]}])
    r = impl(parse_settings(doc), version=42)
    d = r.inbound("+33612345678", "+33142685300", utc(2026, 3, 13, 12))
    assert (d.group, d.members, d.version) == ("g", ("b", "a", "c"), 42)


# --------------------------------------------------------------------------
# Off hours: DST, 24:00, holidays
# --------------------------------------------------------------------------


def la_sunday_doc(intervals: list[list[str]]) -> dict[str, Any]:
    doc = small_doc()
    doc["numbers"] = [{"number": "+14155550100", "line": "l1", "country": "US",
                       "schedule": {"timezone": "America/Los_Angeles", "weekly": {"sun": intervals}},
                       "offhours_action": {"action": "voicemail"}, "route_to": "g"}]
    return doc


@pytest.mark.parametrize(("at", "verdict"), [
    (utc(2026, 3, 8, 9, 59), "VOICEMAIL"),  # 01:59 PST
    (utc(2026, 3, 8, 10, 0), "ROUTE"),  # the jump: 03:00 PDT (a fixed PST offset would say 02:00)
    (utc(2026, 3, 8, 10, 30), "ROUTE"),  # 03:30 PDT
    (utc(2026, 3, 8, 10, 59), "ROUTE"),  # 03:59 PDT
    (utc(2026, 3, 8, 11, 0), "VOICEMAIL"),  # 04:00 PDT
])
def test_dst_spring_forward_los_angeles(impl: Impl, at: int, verdict: str) -> None:
    r = impl(parse_settings(la_sunday_doc([["03:00", "04:00"]])))
    assert r.inbound("+14155550123", "+14155550100", at).verdict == verdict


@pytest.mark.parametrize(("at", "verdict"), [
    (utc(2026, 11, 1, 7, 59), "VOICEMAIL"),  # 00:59 PDT
    (utc(2026, 11, 1, 8, 0), "ROUTE"),  # 01:00 PDT
    (utc(2026, 11, 1, 8, 59), "ROUTE"),  # 01:59 PDT
    (utc(2026, 11, 1, 9, 0), "ROUTE"),  # 01:00 PST, the second time (a fixed PDT offset would say 02:00)
    (utc(2026, 11, 1, 9, 30), "ROUTE"),  # 01:30 PST
    (utc(2026, 11, 1, 10, 0), "VOICEMAIL"),  # 02:00 PST
])
def test_dst_fall_back_los_angeles(impl: Impl, at: int, verdict: str) -> None:
    r = impl(parse_settings(la_sunday_doc([["01:00", "02:00"]])))
    assert r.inbound("+14155550123", "+14155550100", at).verdict == verdict


def test_interval_ending_at_midnight(impl: Impl) -> None:
    doc = small_doc()
    doc["numbers"][0]["schedule"] = {"timezone": "UTC", "weekly": {"mon": [["20:00", "24:00"]]}}
    r = impl(parse_settings(doc))
    # Mon 2026-03-09
    assert r.inbound("+33612345678", "+33142685300", utc(2026, 3, 9, 19, 59)).verdict == "REJECT"
    assert r.inbound("+33612345678", "+33142685300", utc(2026, 3, 9, 20, 0)).verdict == "ROUTE"
    assert r.inbound("+33612345678", "+33142685300", utc(2026, 3, 9, 23, 59, 59)).verdict == "ROUTE"
    assert r.inbound("+33612345678", "+33142685300", utc(2026, 3, 10, 0, 0)).verdict == "REJECT"  # Tue 00:00


def test_acme_ny_monday_until_midnight(ref: Decider) -> None:
    # Mon 2026-03-09 (EDT, UTC-4): 08:00-12:00 and 13:00-24:00
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 3, 9, 11, 59)).verdict == "VOICEMAIL"  # 07:59
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 3, 9, 12, 0)).verdict == "ROUTE"  # 08:00
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 3, 9, 16, 30)).verdict == "VOICEMAIL"  # 12:30 lunch
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 3, 9, 17, 0)).verdict == "ROUTE"  # 13:00
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 3, 10, 3, 59)).verdict == "ROUTE"  # 23:59 Mon
    # Fri 2026-03-13 until 17:30 EDT = 21:30 UTC
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 3, 13, 21, 29)).verdict == "ROUTE"
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 3, 13, 21, 30)).verdict == "VOICEMAIL"


def test_holiday_is_a_whole_local_day(ref: Decider) -> None:
    # Thanksgiving Thu 2026-11-26 in New York (EST, UTC-5), otherwise a full working day
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 11, 19, 17)).verdict == "ROUTE"  # Thu before, 12:00
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 11, 26, 5, 0)).verdict == "VOICEMAIL"  # 00:00 Thu
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 11, 26, 17)).verdict == "VOICEMAIL"  # 12:00 Thu
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 11, 27, 4, 59)).verdict == "VOICEMAIL"  # 23:59 Thu
    # UTC date is the holiday, local date is not: Wed 25 21:00 EST
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 11, 26, 2, 0)).verdict == "ROUTE"
    # Wed 25 23:59 EST and Fri 27 00:00 EST work
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 11, 26, 4, 59)).verdict == "ROUTE"
    assert ref.inbound("+14155550123", NY_MAIN, utc(2026, 11, 27, 5, 0)).verdict == "ROUTE"


def test_holiday_blocks_offhours_blacklisted(ref: Decider) -> None:
    assert ref.inbound("+14155550777", NY_MAIN, utc(2026, 11, 26, 17)).reason == "OFF_HOURS_BLOCKED"


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


def test_outbound_longest_prefix(impl: Impl) -> None:
    doc = small_doc(default_caller_id="+33142685300")
    doc["lines"][0]["rates"] = [
        {"prefix": "4", "per_minute": "0.1000", "increment_s": 60},
        {"prefix": "447", "per_minute": "0.2000", "increment_s": 1},
        {"prefix": "44", "per_minute": "0.0350", "increment_s": 30},
    ]
    r = impl(parse_settings(doc))
    d = r.outbound("a", "+447700900123", MON_LA_10, Decimal("1"))
    # 447 at 0.20/min per second: 60 / 0.2 = 300 increments
    assert (d.rate_per_minute, d.increment_s, d.max_duration_s) == (Decimal("0.2000"), 1, 300)
    d = r.outbound("a", "+442079460000", MON_LA_10, Decimal("1"))
    # 44 at 0.035/min per 30 s: one increment 0.0175; 1 / 0.0175 = 57.1 -> 57 * 30
    assert (d.rate_per_minute, d.increment_s, d.max_duration_s) == (Decimal("0.0350"), 30, 1710)
    d = r.outbound("a", "+4930123456", MON_LA_10, Decimal("1"))
    assert (d.rate_per_minute, d.increment_s, d.max_duration_s) == (Decimal("0.1000"), 60, 600)
    assert r.outbound("a", "+33612345678", MON_LA_10, Decimal("1")).reason == "NO_RATE"


def test_outbound_free_rate(impl: Impl) -> None:
    doc = small_doc(default_caller_id="+33142685300")
    doc["lines"][0]["rates"] = [{"prefix": "33", "per_minute": "0", "increment_s": 60}]
    r = impl(parse_settings(doc))
    # per_minute 0: infinitely many increments, capped at 86400 / 60
    assert r.outbound("a", "+33612345678", MON_LA_10, Decimal("0")).max_duration_s == 86400
    assert r.outbound("a", "+33612345678", MON_LA_10, Decimal("0.01")).max_duration_s == 86400
    # a negative balance affords nothing, not even free increments (SPEC §3: cost 0 > balance)
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
