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

from typing import Any

import pytest

from engine import Decision, codes, parse_settings
from engine.dialing import country_dialing
from engine.reference import Reference, is_withheld, read_number

from .decide_cases import (
    LA_SCHEDULED,
    LONDON,
    MODES,
    MON_LA_10,
    NY_MAIN,
    SAT_NY,
    SMALL_MODES,
    TUE_NY_NOON,
    WED_LA_10,
    Decider,
    Impl,
    acme,
    acme_doc,
    small_doc,
    utc,
)


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


def test_inbound_documents_rejected(impl: Impl) -> None:
    r = impl(acme(), rejected=[LA_SCHEDULED])
    assert r.inbound("+14155550123", LA_SCHEDULED, MON_LA_10) == Decision(
        verdict="REJECT", reason="DOCUMENTS_REJECTED", sip_status=403, version=1, caller="+14155550123",
        called=LA_SCHEDULED, **MODES)
    assert r.inbound("+14155550666", LA_SCHEDULED, WED_LA_10).reason == "DOCUMENTS_REJECTED"  # before the lists
    # an approved set wins over a rejected one; a rejection of another number does not count
    assert impl(acme(), approved=[LA_SCHEDULED], rejected=[LA_SCHEDULED]).inbound(
        "+14155550123", LA_SCHEDULED, MON_LA_10).reason == "OK"
    assert impl(acme(), rejected=[NY_MAIN]).inbound("+14155550123", LA_SCHEDULED, MON_LA_10).reason == \
        "DOCUMENTS_PENDING"
    # a number that needs no documents is not refused for a rejected set
    assert impl(acme(), rejected=[NY_MAIN]).inbound("+14155550123", NY_MAIN, TUE_NY_NOON).reason != \
        "DOCUMENTS_REJECTED"


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
