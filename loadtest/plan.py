"""The load test's planned requests, each with the answer it must get, and how a reply is checked against it.

The plan
--------
`plan(world, mix, n, seed)` draws requests by category (blacklisted,
off-hours-listed and clean callers, withheld callers, pending and unknown
called numbers, outbound calls), writes some numbers the way SIP headers
carry them (international or national prefix), and puts some instants on
the edges where implementations go wrong (a schedule interval's first and
last minute, a holiday's local midnight, a DST change of the number's zone).

Expectations
------------
Each request's expected answer is computed by `engine.reference.Reference`,
the plain-Python statement of the rules, and never by the compiled core the
server runs: a load test that took its expectations from the code under test
would agree with any bug in it.  `expected_from` keeps exactly the fields
that `server.rpc.messages.decision_message` fills for that verdict, so
`check_reply` compares what the server really sends, field by field.  The
category says what was drawn, the reference says what that means: an
off-hours-listed caller during working hours is routed, a call to a
suspicious number may be unknown first (the inbound precedence of spec §3).
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from google.protobuf.message import DecodeError

from callgate.v1 import decisions_pb2
from engine import codes
from engine.decision import Decision
from engine.dialing import CountryDialing, country_dialing
from engine.settings import Schedule

from .world import Tenant, World, draw_digits, draw_numbers, e164, instants_2026, site_number

INBOUND_METHOD = "/callgate.v1.Decisions/Inbound"
OUTBOUND_METHOD = "/callgate.v1.Decisions/Outbound"

# Longest caller, called number, user or destination a plan writes: an E.164
# number with its + (fixed-width batch cells of this many bytes hold any of them).
MAX_TEXT = 16

CATEGORIES = ("blacklisted", "offhours_listed", "documents_pending", "unknown_called", "anonymous", "clean",
              "outbound")

# Destinations: E.164 digits a country's numbers start with -> their total
# length, for making a destination under any rate prefix.
DEST_LENGTHS: dict[str, int] = {
    "1": 11, "44": 12, "49": 12, "33": 11, "91": 12, "61": 11, "8816": 12, "88216": 12, "81": 12, "55": 13,
}
# Destinations no line has a rate for (NO_RATE): Japanese and Brazilian mobiles.
UNRATED_PREFIXES = ("8190", "55119")


def _dest_length(prefix: str) -> int:
    best = max((cc for cc in DEST_LENGTHS if prefix.startswith(cc) or cc.startswith(prefix)), key=len)
    return DEST_LENGTHS[best]


# --------------------------------------------------------------------------
# Expectations
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Expected:
    """What the server's `Decision` reply must hold (the fields `decision_message` sets, else empty)."""

    verdict: int  # decisions_pb2.Verdict value
    reason: int  # decisions_pb2.Reason value
    sip_status: int
    target: str = ""  # FORWARD
    line: str = ""  # FORWARD, ALLOW
    group: str = ""  # ROUTE ("" when the number routes to no group)
    caller_id: str = ""  # ALLOW
    max_duration_s: int = 0  # ALLOW
    rate_per_minute: str = ""  # ALLOW: str(Decimal) of the document's rate, as the server sends it
    members: tuple[str, ...] = ()  # ROUTE: the group's members, in order
    destination: str = ""  # ALLOW: the destination as E.164 (how the server read it)
    increment_s: int = 0  # ALLOW
    chat_mode: str = ""  # inbound and outbound: the tenant's
    lead_trigger: str = ""
    version: int = 1  # the settings version (the driver pushes each tenant once)


def expected_from(decision: Decision) -> Expected:
    """The reply the server sends for this decision: the same fields `server.rpc.messages.decision_message` sets.

    Inbound ROUTE carries group and members, FORWARD target and line; outbound
    ALLOW carries caller ID, destination, line, rate, increment and duration;
    every other verdict only the verdict, reason, SIP status and the tenant's
    modes.  Caller and called are echoed only on request (`explain`), which
    the load test never sets, so they are not expected.
    """
    verdict = decision.verdict
    if verdict in ("ERROR", "INTERCEPT", "NO_PICKUP"):
        raise ValueError(f"{verdict} {decision.reason} is not an inbound or outbound reply a valid request gets")
    out: dict[str, Any] = {}
    if verdict == "ROUTE":
        out.update(group=decision.group or "", members=tuple(decision.members))
    elif verdict == "FORWARD":
        out.update(target=decision.target or "", line=decision.line or "")
    elif verdict == "ALLOW":
        out.update(caller_id=decision.caller_id or "", destination=decision.destination or "",
                   line=decision.line or "", rate_per_minute=str(decision.rate_per_minute),
                   increment_s=decision.increment_s or 0, max_duration_s=decision.max_duration_s or 0)
    return Expected(
        verdict=codes.VERDICT_CODE[verdict], reason=codes.REASON_CODE[decision.reason],
        sip_status=decision.sip_status, chat_mode=decision.chat_mode or "",
        lead_trigger=decision.lead_trigger or "", version=decision.version, **out)


def verdict_name(value: int) -> str:
    return codes.VERDICTS[value] if 0 <= value < len(codes.VERDICTS) else f"verdict#{value}"


def reason_name(value: int) -> str:
    return codes.REASON_NAMES[value] if 0 <= value < len(codes.REASON_NAMES) else f"reason#{value}"


# --------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class MixSpec:
    inbound: float = 0.8  # the rest are outbound
    blacklisted: float = 0.10  # shares of inbound calls by caller/called kind
    offhours_listed: float = 0.05
    documents_pending: float = 0.05  # called number is a pending one
    unknown_called: float = 0.05  # called is not one of the tenant's numbers
    anonymous: float = 0.03
    # the rest: clean callers to the tenant's numbers, at instants spread over 2026
    edge_instants: float = 0.1  # inbound instants at a schedule edge, a holiday's midnight or a DST change
    written_forms: float = 0.1  # callers and destinations written with an international or national prefix

    def check(self) -> None:
        shares = {f.name: getattr(self, f.name) for f in fields(self)}
        for name, share in shares.items():
            if not 0 <= share <= 1:
                raise ValueError(f"{name}: a share from 0 to 1, not {share}")
        kinds = self.blacklisted + self.offhours_listed + self.documents_pending + self.unknown_called + \
            self.anonymous
        if kinds > 1 + 1e-9:
            raise ValueError(f"the inbound categories add up to {kinds:.3f}, more than 1")


@dataclass(frozen=True, slots=True)
class Planned:
    kind: str  # "inbound" | "outbound"
    tenant: str
    a: str  # inbound: caller; outbound: user
    b: str  # inbound: called; outbound: destination
    at: int  # UTC seconds (explicit, never 0: the expectation depends on it)
    category: str  # what the mix drew (CATEGORIES)
    expected: Expected


@functools.cache
def _transitions_2026(zone: str) -> tuple[int, ...]:
    """UTC instants in 2026 at which `zone`'s offset changes (DST), found by day and bisected to the second."""
    tz = ZoneInfo(zone)
    start = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())

    def offset(t: int) -> dt.timedelta | None:
        return dt.datetime.fromtimestamp(t, tz).utcoffset()

    out = []
    for day in range(365):
        lo, hi = start + day * 86_400, start + (day + 1) * 86_400
        if offset(lo) == offset(hi):
            continue
        first = offset(lo)
        while hi - lo > 1:  # invariant: offset(lo) is the old one, offset(hi) the new one
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if offset(mid) == first else (lo, mid)
        out.append(hi)
    return tuple(out)


_YEAR_START = dt.date(2026, 1, 1)
_EDGE_SECONDS = (-60, -1, 0, 1, 59, 60)  # around a minute boundary: an interval includes its start, not its end


def _edge_instant(rnd: random.Random, schedule: Schedule) -> int:
    """An instant where off hours change for this schedule: an interval's edge, a holiday's midnight, DST."""
    tz = ZoneInfo(schedule.timezone)
    pick = rnd.random()
    transitions = _transitions_2026(schedule.timezone)
    if pick < 0.2 and transitions:
        return rnd.choice(transitions) + rnd.randint(-3 * 3600, 3 * 3600)
    if pick < 0.35 and schedule.holidays:
        day = rnd.choice(schedule.holidays) + dt.timedelta(days=rnd.randint(0, 1))  # its start or its end
        minute = 0
    else:
        day = _YEAR_START + dt.timedelta(days=rnd.randrange(365))
        edges = [m for interval in schedule.weekly[day.weekday()] for m in interval]
        minute = rnd.choice(edges) if edges else 0
    local = dt.datetime.combine(day, dt.time(), tzinfo=tz) + dt.timedelta(minutes=minute)
    # wall-clock arithmetic: 24:00 is the next day's 00:00 in local time, whatever DST does that night
    return int(local.timestamp()) + rnd.choice(_EDGE_SECONDS)


def _written(rnd: random.Random, number: str, dialing: CountryDialing, share: float) -> str:
    """`number` (E.164) as a SIP header may carry it, read in `dialing`'s country; same number when read.

    The international prefix form reads back to the same number for any
    number; the national form only for a number of that country (so it is
    used only then).  Digits without `+` are not used: in a country with
    many national lengths (Germany: 4-15) they read as a national number.
    """
    if share <= 0 or rnd.random() >= share:
        return number
    digits = number[1:]
    if rnd.random() < 0.5 and dialing.national_prefix and digits.startswith(dialing.country_code):
        return dialing.national_prefix + digits[len(dialing.country_code):]
    written = dialing.international_prefix + digits
    # Australia's 0011 before a 13-digit German mobile makes 17 characters: keep every
    # request text within MAX_TEXT, as the batch driver's fixed-width cells need
    return written if len(written) <= MAX_TEXT else number


class _TenantDraws:
    """Per tenant, what the plan draws from (built once per plan)."""

    def __init__(self, world: World, tenant: Tenant) -> None:
        self.tenant = tenant
        self.ref = world.reference(tenant.id)
        settings = tenant.settings
        self.open_numbers = [n.number for n in settings.numbers if not n.requires_documents]
        self.country = {n.number: country_dialing(n.country) for n in settings.numbers}
        self.schedule = {n.number: n.schedule for n in settings.numbers}
        # an outbound call's rates are those of the caller ID's line
        lines = {line.id: line for line in settings.lines}
        self.user_line: dict[str, list[str]] = {}
        self.user_dialing: dict[str, CountryDialing | None] = {}
        for uid in tenant.users:
            user = self.ref.users.get(uid)
            caller_id = user.caller_id if user and user.caller_id else settings.default_caller_id
            assert caller_id is not None
            number = self.ref.numbers[caller_id]
            self.user_line[uid] = [rate.prefix for rate in lines[number.line].rates]
            self.user_dialing[uid] = country_dialing(number.country)
        # Other tenants' listed callers: clean here (nothing leaks between tenants)
        others = [t for t in world.tenants if t is not tenant]
        self.foreign = [c for t in others for c in t.blacklisted[:200] + t.offhours_listed[:50]
                        if c not in self.ref.blacklist and c not in self.ref.offhours_blacklist]
        # Unknown called numbers: other tenants' numbers (a misrouted call) and outside numbers.
        self.foreign_numbers = [n for t in others for n in t.numbers]


def plan(world: World, mix: MixSpec, n: int, seed: int) -> list[Planned]:
    """`n` requests drawn by `mix` from `world` (deterministic in all four), each with its expected reply."""
    mix.check()
    rnd = random.Random(f"callgate-plan/{world.spec.seed}/{seed}")
    draws = [_TenantDraws(world, t) for t in world.tenants]
    # ZoneInfo keeps only 8 zones strongly cached and the world has more: held
    # here, every zone the reference asks for stays loaded (else it re-reads
    # the tz file from disk on a third of the decisions).
    zones_held = [ZoneInfo(n.schedule.timezone) for t in world.tenants for n in t.settings.numbers if n.schedule]
    balance = world.balance
    taken = {num for t in world.tenants for num in t.numbers}  # unknown called numbers must be unknown
    # a mobile destination pool from the real ranges: most are rated, some lines miss a country
    destinations = e164(draw_numbers(np.random.default_rng([world.spec.seed, seed, 1]), 1_000))
    instants = instants_2026(np.random.default_rng([world.spec.seed, seed, 2]), n).tolist()
    shares = [mix.blacklisted, mix.offhours_listed, mix.documents_pending, mix.unknown_called, mix.anonymous]
    cumulative = [sum(shares[:i + 1]) for i in range(len(shares))]
    inbound_kinds = CATEGORIES[:5]
    interned: dict[Expected, Expected] = {}  # few distinct replies: share them
    out: list[Planned] = []
    for i in range(n):
        d = rnd.choice(draws)
        tenant = d.tenant
        at: int = instants[i]
        if rnd.random() < mix.inbound:
            k = bisect.bisect_right(cumulative, rnd.random())
            category = inbound_kinds[k] if k < len(inbound_kinds) else "clean"
            # a category this tenant has nothing for (an empty list) is a clean call
            if (category == "blacklisted" and not tenant.blacklisted) or (
                    category == "offhours_listed" and not tenant.offhours_listed) or (
                    category == "documents_pending" and not tenant.pending):
                category = "clean"
            if category == "documents_pending":
                called = rnd.choice(tenant.pending)
            elif category == "unknown_called":
                called = rnd.choice(d.foreign_numbers) if d.foreign_numbers and rnd.random() < 0.5 \
                    else site_number(rnd, taken)[0]
            else:  # never a pending number: DOCUMENTS_PENDING would come first (spec §3 precedence)
                called = rnd.choice(d.open_numbers)
            if category == "blacklisted":
                caller = rnd.choice(tenant.blacklisted)
            elif category == "offhours_listed":
                caller = rnd.choice(tenant.offhours_listed)
            elif category == "anonymous":
                caller = rnd.choice(("anonymous", "", "Anonymous", "restricted"))
            elif d.foreign and rnd.random() < 0.1:
                caller = rnd.choice(d.foreign)
            else:
                caller = rnd.choice(tenant.callers)
            dialing = d.country.get(called)
            if dialing is not None and category != "anonymous":
                caller = _written(rnd, caller, dialing, mix.written_forms)
            schedule = d.schedule.get(called)
            if schedule is not None and rnd.random() < mix.edge_instants:
                at = _edge_instant(rnd, schedule)
            decision = d.ref.inbound(caller, called, at)
            kind, a, b = "inbound", caller, called
        else:
            category = "outbound"
            user = rnd.choice(tenant.users)
            pick = rnd.random()
            if pick < 0.75:
                prefix = rnd.choice(d.user_line[user])
                destination = "+" + draw_digits(rnd, prefix, _dest_length(prefix))
            elif pick < 0.92:
                destination = rnd.choice(destinations)
            else:
                prefix = rnd.choice(UNRATED_PREFIXES)
                destination = "+" + draw_digits(rnd, prefix, _dest_length(prefix))
            dialing = d.user_dialing[user]
            assert dialing is not None
            destination = _written(rnd, destination, dialing, mix.written_forms)
            decision = d.ref.outbound(user, destination, at, balance)
            kind, a, b = "outbound", user, destination
        if decision.verdict == "ERROR":  # the plan only makes valid requests: a bug here, not in the server
            raise RuntimeError(f"planned an invalid request: {kind} {tenant.id} {a!r} {b!r} at {at}: "
                               f"{decision.reason}")
        expected = expected_from(decision)
        expected = interned.setdefault(expected, expected)
        out.append(Planned(kind, tenant.id, a, b, at, category, expected))
    del zones_held
    return out


# --------------------------------------------------------------------------
# Wire
# --------------------------------------------------------------------------


def request_message(p: Planned) -> bytes:
    """The serialized InboundRequest / OutboundRequest for the server (explain off, as proxies send)."""
    if p.kind == "inbound":
        return decisions_pb2.InboundRequest(tenant=p.tenant, caller=p.a, called=p.b, at=p.at).SerializeToString()
    return decisions_pb2.OutboundRequest(tenant=p.tenant, user=p.a, destination=p.b, at=p.at).SerializeToString()


def rpc_method(p: Planned) -> str:
    return INBOUND_METHOD if p.kind == "inbound" else OUTBOUND_METHOD


# (field, how to show a value): the reply fields a planned request's answer is checked on
_CHECKED: tuple[tuple[str, Any], ...] = (
    ("verdict", verdict_name),
    ("reason", reason_name),
    ("sip_status", str),
    ("version", str),
    ("chat_mode", repr),
    ("lead_trigger", repr),
    ("target", repr),
    ("line", repr),
    ("group", repr),
    ("members", lambda v: repr(list(v))),
    ("caller_id", repr),
    ("destination", repr),
    ("rate_per_minute", repr),
    ("increment_s", str),
    ("max_duration_s", str),
)


def check_reply(p: Planned, reply: bytes | decisions_pb2.Decision, *, version: int | None = None) -> str | None:
    """None when `reply` is the expected answer to `p`, else every differing field in one line.

    `reply` is the serialized Decision (or the parsed message).  `version`
    overrides the expected settings version (the one the driver's push got,
    when the server already held settings for the tenant).
    """
    if isinstance(reply, decisions_pb2.Decision):
        got = reply
    else:
        try:
            got = decisions_pb2.Decision.FromString(reply)
        except DecodeError as exc:
            return f"reply is not a Decision message ({type(exc).__name__}: {exc})"
    want = p.expected
    diffs: list[str] = []
    for name, show in _CHECKED:
        expected: Any = version if name == "version" and version is not None else getattr(want, name)
        value: Any = getattr(got, name)
        if name == "members":
            value, expected = tuple(value), tuple(expected)
        if value != expected:
            diffs.append(f"{name} {show(value)} != expected {show(expected)}")
    return "; ".join(diffs) or None


def describe(p: Planned) -> str:
    """One line for a report: the request and what it should get."""
    when = dt.datetime.fromtimestamp(p.at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    arrow = f"caller {p.a!r} -> called {p.b!r}" if p.kind == "inbound" else f"user {p.a!r} -> {p.b!r}"
    e = p.expected
    return (f"{p.kind} {p.tenant} {arrow} at {when} [{p.category}]: expected {verdict_name(e.verdict)} "
            f"{reason_name(e.reason)}")


def summary(plans: Iterable[Planned]) -> dict[str, int]:
    """Counts for the report: `category:<name>`, `verdict:<NAME>`, `reason:<NAME>`, by expected answer."""
    counts: Counter[str] = Counter()
    for p in plans:
        counts[f"category:{p.category}"] += 1
        counts[f"verdict:{verdict_name(p.expected.verdict)}"] += 1
        counts[f"reason:{reason_name(p.expected.reason)}"] += 1
    return dict(sorted(counts.items()))


def breakdown(plans: Sequence[Planned]) -> dict[str, dict[str, int]]:
    """Category -> expected "VERDICT REASON" -> count: what each category came to."""
    out: dict[str, Counter[str]] = {}
    for p in plans:
        outcome = f"{verdict_name(p.expected.verdict)} {reason_name(p.expected.reason)}"
        out.setdefault(p.category, Counter())[outcome] += 1
    return {c: dict(v.most_common()) for c, v in sorted(out.items())}
