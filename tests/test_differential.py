"""The compiled core against the pure-Python reference, on random tenants.

Hypothesis builds tenants (lines and rates, numbers in several countries and
zones, schedules with intervals ending at 24:00, holidays, empty schedules,
blacklists, users and queue groups), then asks both implementations the same
questions: callers and called numbers in every written form, malformed ones,
unknown numbers, instants on DST transition days and holidays and outside the
window.  Every answer must be the same `Decision`, field for field.
"""

from __future__ import annotations

import datetime as dt
import functools
import os
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import RingingCall, compile_settings, parse_settings, to_micro, with_documents
from engine.reference import Reference

EXAMPLES = int(os.environ.get("CALLGATE_DIFF_EXAMPLES", "700"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))

# country -> (region, E.164 prefix of its numbers, national trunk prefix or "")
COUNTRIES = {
    "US": ("+1415555", "1"),
    "GB": ("+4420712", "0"),
    "DE": ("+4930123", "0"),
    "FR": ("+331234", "0"),
    "JP": ("+81312345", "0"),
    "RU": ("+749512", "8"),
    "IT": ("+390612345", ""),
    "AU": ("+61291234", "0"),
    # bare digits of 11 (and 12) digits are national lengths here too: callers without "+" read two ways
    "IN": ("+911123", "0"),
    "IL": ("+97221", "0"),
    "BR": ("+551112", "0"),
}
ZONES = [
    "America/Los_Angeles", "America/New_York", "Europe/London", "Europe/Berlin", "Australia/Sydney",
    "Asia/Kolkata", "Asia/Kathmandu", "America/St_Johns", "Pacific/Chatham", "Pacific/Apia",
    "Africa/Casablanca", "UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago", "America/Sao_Paulo",
]
# Days worth landing on: DST changes (US, EU, AU, NZ), New Year, a leap day.
SPECIAL_DAYS = [
    dt.date(2026, 3, 8), dt.date(2026, 11, 1), dt.date(2026, 3, 29), dt.date(2026, 10, 25),
    dt.date(2026, 4, 5), dt.date(2026, 10, 4), dt.date(2026, 9, 27), dt.date(2026, 12, 31),
    dt.date(2027, 1, 1), dt.date(2028, 2, 29), dt.date(2007, 3, 11), dt.date(2099, 12, 31),
]
PREFIXES = ["1", "14", "1415", "14155", "44", "4420", "447", "49", "4930", "33", "81", "7", "39", "61", "8",
            "91", "972", "55"]


# E.164 numbers whose digits have the length of national numbers in several COUNTRIES (DE, JP, IT, AU, ...)
TWO_READINGS = ["+48500600700", "+48500600701", "+33612345678", "+4930123456", "+8190123456", "+61412345678",
                "+390612345678", "+74951234567", "+14155550123", "+911123456789", "+97221234567", "+551112345678",
                "+5511912345678"]


def _number(country: str, suffix: int) -> str:
    base = COUNTRIES[country][0]
    width = 12 - len(base) + 1 if country != "IT" else 3
    return f"{base}{suffix % (10 ** max(width, 2)):0{max(width, 2)}d}"


# 01:00-03:00 are where DST changes happen (local wall clock) in the US and EU zones
times = st.sampled_from(["00:00", "00:01", "01:00", "02:00", "02:30", "03:00", "06:30", "08:59", "09:00",
                         "12:00", "13:00", "17:30", "18:00", "23:59"])
end_times = st.sampled_from(["00:01", "01:00", "02:00", "02:30", "03:00", "09:00", "12:00", "17:00", "18:00",
                             "23:59", "24:00"])


@st.composite
def intervals(draw: Any) -> list[list[str]]:
    out = []
    for _ in range(draw(st.integers(0, 3))):
        a, b = draw(times), draw(end_times)
        if a < b or b == "24:00":
            out.append([a, b])
    return out


@st.composite
def schedules(draw: Any) -> dict | None:
    if draw(st.integers(0, 9)) < 2:
        return None
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    weekly = {d: draw(intervals()) for d in days if draw(st.integers(0, 9)) < 7}
    holidays = draw(st.lists(st.sampled_from(SPECIAL_DAYS + [d + dt.timedelta(days=1) for d in SPECIAL_DAYS]),
                             max_size=4, unique=True))
    return {"timezone": draw(st.sampled_from(ZONES)), "weekly": weekly,
            "holidays": [h.isoformat() for h in holidays]}


money = st.one_of(
    st.builds(lambda units, scale: str(Decimal(units).scaleb(-scale)), st.integers(0, 10**6), st.integers(3, 6)),
    st.builds(str, st.integers(0, 1000)),
)


@st.composite
def tenants(draw: Any) -> tuple[dict, list[str]]:
    lines = []
    for i in range(draw(st.integers(1, 3))):
        prefixes = draw(st.lists(st.sampled_from(PREFIXES), unique=True, max_size=6))
        rates = [{"prefix": p, "per_minute": draw(money),
                  "increment_s": draw(st.sampled_from([1, 6, 30, 60, 7, 3600]))} for p in prefixes]
        line: dict[str, Any] = {"id": f"line-{i}", "kind": "rented", "rates": rates}
        fmt = draw(st.sampled_from(["auto", "auto", None, "e164", "international", "national"]))
        if fmt is not None:
            line["caller_format"] = fmt
        lines.append(line)
    groups = [f"g{i}" for i in range(draw(st.integers(0, 3)))]
    numbers = []
    used: set[str] = set()
    for _ in range(draw(st.integers(1, 6))):
        country = draw(st.sampled_from(sorted(COUNTRIES)))
        number = _number(country, draw(st.integers(0, 10**6)))
        if number in used:
            continue
        used.add(number)
        action = draw(st.sampled_from(["reject", "voicemail", "forward", None]))
        entry: dict[str, Any] = {
            "number": number, "line": draw(st.sampled_from(lines))["id"], "country": country,
            "requires_documents": draw(st.booleans()), "inbound_only": draw(st.booleans()),
        }
        sched = draw(schedules())
        if sched is not None:
            entry["schedule"] = sched
        if action == "forward":
            entry["offhours_action"] = {"action": "forward", "to": f"+1999555{draw(st.integers(1000, 9999))}"}
        elif action is not None:
            entry["offhours_action"] = {"action": action}
        if groups and draw(st.booleans()):
            entry["route_to"] = draw(st.sampled_from(groups))
        numbers.append(entry)
    outbound_ok = [n["number"] for n in numbers if not n["inbound_only"]]
    users = []
    for i in range(draw(st.integers(0, 5))):
        user: dict[str, Any] = {"id": f"u{i}", "groups": draw(st.lists(st.sampled_from(groups), unique=True))
                                if groups else []}
        if outbound_ok and draw(st.booleans()):
            user["caller_id"] = draw(st.sampled_from(outbound_ok))
        users.append(user)
    queue_groups = [{"id": g, "members": draw(st.lists(st.sampled_from([f"u{i}" for i in range(7)]),
                                                        unique=True, max_size=4))} for g in groups]
    callers = [f"+1415555{draw(st.integers(1000, 9999))}" for _ in range(4)] + [
        _number(c, draw(st.integers(0, 10**6))) for c in draw(st.lists(st.sampled_from(sorted(COUNTRIES)),
                                                                      max_size=3))]
    # foreign callers whose bare digits also read as a national number of a tenant's country (a proxy
    # that drops the "+"): listed, their second reading is what the fail-safe rule must catch
    callers += draw(st.lists(st.sampled_from(TWO_READINGS), max_size=3))
    doc: dict[str, Any] = {
        "tenant": "t", "currency": draw(st.sampled_from(["USD", "EUR"])),
        "status": draw(st.sampled_from(["active"] * 5 + ["suspended", "disabled"])),
        "chat_mode": draw(st.sampled_from(["chat_per_call", "single_chat", "none"])),
        "lead_trigger": draw(st.sampled_from(["on_answer", "on_hangup"])),
        "block_anonymous": draw(st.booleans()),
        "lines": lines, "numbers": numbers, "users": users, "queue_groups": queue_groups,
        "blacklist": draw(st.lists(st.sampled_from(callers), max_size=3)),
        "offhours_blacklist": draw(st.lists(st.sampled_from(callers), max_size=3)),
    }
    if outbound_ok and draw(st.booleans()):
        doc["default_caller_id"] = draw(st.sampled_from(outbound_ok))
    if draw(st.booleans()):
        doc["backup"] = {"number": "+19995550000", "line": draw(st.sampled_from(lines))["id"]}
    if draw(st.booleans()):
        doc["pickup_code"] = draw(st.sampled_from(["*8", "#99", "*0*", "**"]))
    return doc, callers


def written_forms(e164: str, country: str) -> list[str]:
    """The ways a proxy may send this number from inside `country`."""
    digits = e164[1:]
    forms = [e164, digits, "00" + digits, "011" + digits]
    cc = {"US": "1", "GB": "44", "DE": "49", "FR": "33", "JP": "81", "RU": "7", "IT": "39", "AU": "61",
          "IN": "91", "IL": "972", "BR": "55"}[country]
    if digits.startswith(cc):
        national = digits[len(cc):]
        forms += [national, COUNTRIES[country][1] + national, "0" + national, "8" + national]
    return forms


malformed = st.sampled_from([
    "", " ", "anonymous", "Anonymous ", " RESTRICTED", "private", "Unavailable", "unknown", "anon",
    "+", "++14155550100", "+0123456789", "12", "1234567", "+1234567", "+1234567890123456", "9" * 16,
    "abc", "+1415555abcd", "+1 415 555 0100", "٣٣٣٣٣٣٣٣٣", "+١٤١٥٥٥٥٠١٠٠", "\x00", "+14155550100\x00",
    "0", "00", "000000000", "sip:+14155550100@x", "9" * 200,
])


def _transitions() -> dict[str, list[int]]:
    """UTC instants of every offset change in ZONES around SPECIAL_DAYS, found with zoneinfo alone."""
    found: dict[str, list[int]] = {}
    for name in ZONES:
        zone = ZoneInfo(name)

        def offset(t: int, zone: ZoneInfo = zone) -> dt.timedelta | None:
            return dt.datetime.fromtimestamp(t, zone).utcoffset()

        for day in SPECIAL_DAYS:
            start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()) - 86_400
            for hour in range(72):
                lo, hi = start + hour * 3600, start + (hour + 1) * 3600
                if offset(lo) != offset(hi):
                    while hi - lo > 1:
                        mid = (lo + hi) // 2
                        lo, hi = (mid, hi) if offset(mid) == offset(lo) else (lo, mid)
                    found.setdefault(name, []).append(hi)
    return {name: sorted(set(ts)) for name, ts in found.items()}


TRANSITIONS = _transitions()
BOUNDARY_TIMES = [dt.time(0, 0), dt.time(0, 1), dt.time(2, 0), dt.time(3, 0), dt.time(8, 59), dt.time(9, 0),
                  dt.time(12, 0),
                  dt.time(17, 0), dt.time(17, 30), dt.time(18, 0), dt.time(23, 59)]


@st.composite
def instants(draw: Any, zones: list[str]) -> int:
    """Instants, weighted to the tenant's own DST changes and interval boundaries."""
    kind = draw(st.integers(0, 13))
    zone = draw(st.sampled_from(zones or ZONES))
    if kind >= 10:
        if kind >= 12 and TRANSITIONS.get(zone):
            return draw(st.sampled_from(TRANSITIONS[zone])) + draw(st.sampled_from([-3601, -61, -1, 0, 1, 60]))
        day = draw(st.sampled_from(SPECIAL_DAYS))
        local = dt.datetime.combine(day, draw(st.sampled_from(BOUNDARY_TIMES)), tzinfo=ZoneInfo(zone))
        return int(local.timestamp()) + draw(st.sampled_from([-1, 0, 59, 60]))
    if kind == 0:
        return draw(st.sampled_from([946_684_799, 946_684_800, 4_102_444_799, 4_102_444_800, -1, 0,
                                     10**12, -(10**12), 2**63, -(2**63) - 1]))
    if kind <= 2:
        return draw(st.integers(946_684_800, 4_102_444_799))
    day = draw(st.sampled_from(SPECIAL_DAYS))
    midnight = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp())
    return midnight + draw(st.integers(-14 * 3600, 38 * 3600))


def both(data: Any, doc: dict, version: int) -> tuple[Any, Reference]:
    """The core snapshot and the reference for one document, with random sets of approved and rejected numbers
    (a number may be both: an approval wins)."""
    parsed = parse_settings(doc)
    numbers = [n["number"] for n in doc["numbers"]]
    approved = data.draw(st.lists(st.sampled_from(numbers), unique=True))
    rejected = data.draw(st.lists(st.sampled_from(numbers), unique=True))
    core = compile_settings(parsed, version=version, approved=approved)
    if rejected:
        core = with_documents(core, approved, {n: "drawn" for n in rejected})
    return core, Reference(parsed, version=version, approved=approved, rejected=rejected)


def same(core: Any, ref: Any, kind: str, context: Any) -> None:
    got = core.to_decision(kind)
    assert got == ref, f"{context}\ncore:      {got}\nreference: {ref}"


@SETTINGS
@given(data=st.data(), tenant=tenants())
def test_inbound_core_equals_reference(data: Any, tenant: tuple[dict, list[str]]) -> None:
    doc, callers = tenant
    core, ref = both(data, doc, version=5)
    zones = sorted({n["schedule"]["timezone"] for n in doc["numbers"] if "schedule" in n})
    for _ in range(12):
        target = data.draw(st.sampled_from(doc["numbers"] + [None]))
        if target is None:
            called = data.draw(st.one_of(malformed, st.sampled_from(["+19995551234", "4420712999", "+447700900123"])))
            country = "US"
        else:
            called = data.draw(st.sampled_from([target["number"], target["number"][1:]]))
            country = target["country"]
        source = data.draw(st.sampled_from(callers))
        caller = data.draw(st.one_of(st.sampled_from(written_forms(source, country)), malformed))
        own_zone = [target["schedule"]["timezone"]] if target and "schedule" in target else zones
        at = data.draw(instants(own_zone))
        same(core.inbound(caller, called, at), ref.inbound(caller, called, at), "inbound",
             (caller, called, at))


@SETTINGS
@given(data=st.data(), tenant=tenants())
def test_outbound_core_equals_reference(data: Any, tenant: tuple[dict, list[str]]) -> None:
    doc, callers = tenant
    core, ref = both(data, doc, version=3)
    for _ in range(12):
        user = data.draw(st.sampled_from(["u0", "u1", "u2", "u5", "u6", "stranger", "", "bad user", "x" * 65,
                                          "é", "a-b.c@d:e", "-lead"]))
        country = data.draw(st.sampled_from(sorted(COUNTRIES)))
        dest = data.draw(st.one_of(st.sampled_from(written_forms(_number(country, data.draw(st.integers(0, 10**6))),
                                                                 country)),
                                   st.sampled_from(callers), malformed))
        balance = Decimal(data.draw(st.integers(-10**8, 10**9))).scaleb(-data.draw(st.integers(0, 6)))
        at = data.draw(instants([]))
        same(core.outbound(user, dest, at, to_micro(balance)), ref.outbound(user, dest, at, balance),
             "outbound", (user, dest, at, balance))


@SETTINGS
@given(data=st.data(), tenant=tenants())
def test_pickup_core_equals_reference(data: Any, tenant: tuple[dict, list[str]]) -> None:
    doc, _ = tenant
    parsed = parse_settings(doc)
    core = compile_settings(parsed, version=9)
    ref = Reference(parsed, version=9)
    users = ["u0", "u1", "u2", "u3", "u4", "u5", "u6", "stranger"]
    for _ in range(6):
        ringing = [RingingCall(f"c{i}", data.draw(st.sampled_from([*users, "", "bad user"])),
                               data.draw(st.integers(1_700_000_000, 1_700_000_100)), data.draw(st.booleans()))
                   for i in range(data.draw(st.integers(0, 8)))]
        user = data.draw(st.sampled_from([*users, "", "bad user"]))
        dialed = data.draw(st.sampled_from(["*8", "#99", "*0*", "**", "8", "*8 ", ""]))
        same(core.pickup(user, dialed, ringing), ref.pickup(user, dialed, ringing), "pickup",
             (user, dialed, ringing))


# -- DST changes, head on ------------------------------------------------------------

# Zones whose clocks change, including ones that change at local midnight
# (Havana, Santiago, Beirut), where the weekday and the holiday change too.
DST_ZONES = ["America/Los_Angeles", "America/New_York", "Europe/London", "Europe/Berlin", "Australia/Sydney",
             "Pacific/Chatham", "America/St_Johns", "America/Havana", "America/Santiago", "Asia/Beirut",
             "Africa/Casablanca", "Pacific/Auckland"]


@functools.cache
def dst_changes(zone_name: str) -> tuple[int, ...]:
    """Every offset change of the zone in 2025-2027, found by scanning hours with zoneinfo."""
    zone = ZoneInfo(zone_name)

    def offset(t: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(t, zone).utcoffset()

    start = int(dt.datetime(2025, 1, 1, tzinfo=dt.UTC).timestamp())
    found = []
    for hour in range(3 * 366 * 24):
        lo, hi = start + hour * 3600, start + (hour + 1) * 3600
        if offset(lo) != offset(hi):
            while hi - lo > 1:
                mid = (lo + hi) // 2
                lo, hi = (mid, hi) if offset(mid) == offset(lo) else (lo, mid)
            found.append(hi)
    return tuple(found)


@settings(max_examples=max(EXAMPLES // 3, 50), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), zone=st.sampled_from(DST_ZONES))
def test_off_hours_at_dst_changes_core_equals_reference(data: Any, zone: str) -> None:
    """One scheduled number; every instant is a DST change of its zone, or a second either side."""
    changes = dst_changes(zone)
    local_days = sorted({dt.datetime.fromtimestamp(t + d, ZoneInfo(zone)).date()
                         for t in changes for d in (-3600, 3600)})
    days = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
    doc = {
        "tenant": "t", "currency": "EUR", "status": "active", "chat_mode": "none", "lead_trigger": "on_hangup",
        "lines": [{"id": "l", "kind": "rented"}],
        "numbers": [{"number": "+14155550100", "line": "l", "country": "US",
                     "schedule": {"timezone": zone,
                                  "weekly": {d: data.draw(intervals()) for d in days if data.draw(st.booleans())},
                                  "holidays": [h.isoformat() for h in
                                               data.draw(st.lists(st.sampled_from(local_days), max_size=3))]},
                     "offhours_action": {"action": "voicemail"}}],
        "offhours_blacklist": ["+14155550777"],
    }
    parsed = parse_settings(doc)
    core, ref = compile_settings(parsed), Reference(parsed)
    for t in changes:
        for delta in (-1, 0, 1):
            for caller in ("+14155550777", "+14155551234"):
                same(core.inbound(caller, "+14155550100", t + delta), ref.inbound(caller, "+14155550100", t + delta),
                     "inbound", (zone, caller, t + delta))
