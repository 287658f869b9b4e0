"""The synthetic world of the benchmarks and the load test: numbers from real ranges, and tenants built on them.

Numbers come from the ranges that carriers really allocate in five
countries, so that blacklists have the density (and the roaring containers
the shapes) that production lists have:

- US (NANP): +1 NPA NXX XXXX with NPA and NXX in 200-999
- GB mobile: +44 7[1-9]XX XXXXXX
- DE mobile: +49 15X/16X/17X and 8 digits
- FR mobile: +33 6/7 and 8 digits
- IN mobile: +91 [6-9] and 9 digits

The tenants
-----------
`build_world(WorldSpec)` draws, from one seed, tenants ``t0 .. t{N-1}`` (after `WorldSpec.prefix`).
Each tenant is a company with:

- numbers in several countries and time zones (US east to west coast and
  Phoenix without DST, London, Berlin, Paris, Mumbai, Sydney), written as
  real geographic ranges; about one in ten keeps its schedule in an office
  zone elsewhere (Kathmandu +5:45, St John's -3:30, Chatham +12:45), as a
  team answering another country's number would;
- a weekly schedule per number (SCHEDULES and a few more:
  a night shift written as two intervals around midnight, an office day
  with a lunch break) and the country's 2026 public holidays; a few numbers
  have no schedule and are always open;
- an `offhours_action` per number, varied: reject, voicemail, or forward
  to an outside after-hours desk; a `route_to` queue group on most numbers;
- `documents_share` of the numbers with `requires_documents`: nothing is
  ever approved in a run, so they answer DOCUMENTS_PENDING;
- three lines (rented, SIP trunk, BYOC) with per-prefix rates: country
  codes, longer mobile prefixes, a free prefix (capped call duration), a
  satellite prefix the opening balance pays only minutes for, and a premium
  one it cannot pay at all (INSUFFICIENT_FUNDS); rentals on the rented
  line, first renewing in 2099 so that no renewal charge moves the balance
  during a run;
- users in queue groups (membership written on both sides, and members that
  exist only in a group), most with their own `caller_id`, the others using
  the tenant's `default_caller_id`, which is never the `main_number` (SPEC
  rule 2); a backup number and line, a pickup code, auto top-up;
- a blacklist and an off-hours blacklist of the sizes asked for, drawn from
  real mobile ranges (draw_numbers) and disjoint from each
  other and from the pool of clean callers;
- every other setting varied by tenant index (chat mode, lead trigger,
  currency, block_anonymous), so that a multi-tenant run sees each value.

Every tenant's document passes `engine.settings.parse_settings`; the driver
pushes each one through Admin once (version 1) and credits
`opening_balance`, so every decision is fixed by the world alone (`loadtest.plan` draws the requests).
"""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import numpy as np

from engine import codes
from engine.reference import Reference
from engine.settings import Settings, parse_settings

# (country, zone, first E.164 value, count): contiguous blocks of each range
RANGES: list[tuple[str, str, int, int]] = [
    ("US", "America/New_York", 1_200_200_0000, 7_990_000_000),
    ("GB", "Europe/London", 447_100_000_000, 900_000_000),
    ("DE", "Europe/Berlin", 4_915_000_000_000, 3_000_000_000),
    ("FR", "Europe/Paris", 33_600_000_000, 200_000_000),
    ("IN", "Asia/Kolkata", 916_000_000_000, 4_000_000_000),
]


def draw_numbers(rng: np.random.Generator, n: int) -> np.ndarray:
    """n distinct E.164 values (uint64), spread evenly over the five countries' ranges."""
    per = -(-n // len(RANGES))
    parts = []
    for _, _, first, count in RANGES:
        values = first + rng.choice(count, size=per, replace=False) if count < 10**8 else \
            first + rng.integers(0, count, size=per)
        if country_is_nanp(first):
            # NXX (digits 4-6 of the national number) never starts with 0 or 1
            national = values - 10**10
            nxx = (national // 10**4) % 1000
            values = np.where(nxx < 200, values + 200 * 10**4, values)
        parts.append(values.astype(np.uint64))
    out = np.unique(np.concatenate(parts))
    while len(out) < n:  # collisions are rare; top up
        out = np.unique(np.concatenate([out, draw_numbers(rng, n - len(out) + 16)]))
    return rng.permutation(out)[:n]


def country_is_nanp(first: int) -> bool:
    return str(first).startswith("1") and len(str(first)) == 11


def e164(values: np.ndarray) -> list[str]:
    return [f"+{v}" for v in values.tolist()]


SCHEDULES = [
    {"mon": [["09:00", "18:00"]], "tue": [["09:00", "18:00"]], "wed": [["09:00", "18:00"]],
     "thu": [["09:00", "18:00"]], "fri": [["09:00", "17:00"]]},
    {"mon": [["08:00", "12:00"], ["13:00", "24:00"]], "tue": [["00:00", "24:00"]], "sat": [["10:00", "14:00"]]},
    {"mon": [["00:00", "24:00"]], "tue": [["00:00", "24:00"]], "wed": [["00:00", "24:00"]],
     "thu": [["00:00", "24:00"]], "fri": [["00:00", "24:00"]]},
    {"sun": [["06:00", "22:00"]], "sat": [["06:00", "22:00"]]},
]
HOLIDAYS = [["2026-12-25", "2026-01-01"], [], ["2026-11-26", "2026-12-25", "2026-12-31"]]


def big_tenant(seed: int, blacklist: int, numbers: int, tenant: str = "bench") -> tuple[dict[str, Any], np.ndarray]:
    """A tenant document with `numbers` scheduled numbers and a `blacklist` of that size.

    Returns the document and the blacklist's values (uint64), so callers can
    draw blacklisted and clean callers.
    """
    rng = np.random.default_rng(seed)
    listed = draw_numbers(rng, blacklist + blacklist // 10)
    black, offhours = listed[:blacklist], listed[blacklist:]
    own = draw_numbers(np.random.default_rng(seed + 1), numbers)
    zones = {"1": ("US", "America/New_York"), "44": ("GB", "Europe/London"), "49": ("DE", "Europe/Berlin"),
             "33": ("FR", "Europe/Paris"), "91": ("IN", "Asia/Kolkata")}
    entries = []
    for i, value in enumerate(own.tolist()):
        text = str(value)
        country, zone = zones[text[:1]] if text[0] == "1" else zones[text[:2]]
        entry: dict[str, Any] = {
            "number": f"+{value}", "line": "main", "country": country,
            "requires_documents": i % 10 == 0,
            "schedule": {"timezone": zone, "weekly": SCHEDULES[i % len(SCHEDULES)],
                         "holidays": HOLIDAYS[i % len(HOLIDAYS)]},
            "offhours_action": [{"action": "voicemail"}, {"action": "reject"},
                                {"action": "forward", "to": "+14155550123"}][i % 3],
            "route_to": f"g{i % 8}",
        }
        entries.append(entry)
    doc: dict[str, Any] = {
        "tenant": tenant, "currency": "USD", "status": "active", "chat_mode": "chat_per_call",
        "lead_trigger": "on_answer", "pickup_code": "*8",
        "lines": [{"id": "main", "kind": "rented", "rates": [
            {"prefix": "1", "per_minute": "0.0100", "increment_s": 60},
            {"prefix": "44", "per_minute": "0.0200", "increment_s": 1},
            {"prefix": "447", "per_minute": "0.0800", "increment_s": 1},
            {"prefix": "49", "per_minute": "0.0250", "increment_s": 6},
            {"prefix": "33", "per_minute": "0.0300", "increment_s": 30},
            {"prefix": "91", "per_minute": "0.0150", "increment_s": 60}]}],
        "numbers": entries,
        "users": [{"id": f"u{i}", "groups": [f"g{i % 8}"]} for i in range(64)],
        "queue_groups": [{"id": f"g{i}", "members": []} for i in range(8)],
        "default_caller_id": entries[1]["number"] if len(entries) > 1 else None,
        "blacklist": e164(black),
        "offhours_blacklist": e164(offhours),
    }
    return doc, black


def instants_2026(rng: np.random.Generator, n: int) -> np.ndarray:
    start = int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp())
    return (start + rng.integers(0, 365 * 86_400, size=n)).astype(np.int64)


# --------------------------------------------------------------------------
# The world's raw material
# --------------------------------------------------------------------------

# Where a tenant's own numbers come from: (country, zone, E.164 digits the
# range starts with, total E.164 digits).  Geographic ranges, so that one
# country spans several zones (the US) and zones have unusual offsets.
SITES: tuple[tuple[str, str, str, int], ...] = (
    ("US", "America/New_York", "1212", 11),
    ("US", "America/Chicago", "1312", 11),
    ("US", "America/Denver", "1303", 11),
    ("US", "America/Phoenix", "1602", 11),  # no DST
    ("US", "America/Los_Angeles", "1415", 11),
    ("GB", "Europe/London", "4420", 12),
    ("DE", "Europe/Berlin", "4930", 12),
    ("FR", "Europe/Paris", "331", 11),
    ("IN", "Asia/Kolkata", "9122", 12),  # +5:30
    ("AU", "Australia/Sydney", "612", 11),  # DST in the southern summer
)
# Office zones a number's schedule may follow instead of its country's.
OFFICE_ZONES = ("Asia/Kathmandu", "America/St_Johns", "Pacific/Chatham")

# 2026 public holidays by country (a holiday is a whole local day off).
COUNTRY_HOLIDAYS: dict[str, list[str]] = {
    "US": ["2026-01-01", "2026-05-25", "2026-07-03", "2026-09-07", "2026-11-26", "2026-12-25"],
    "GB": ["2026-01-01", "2026-04-03", "2026-04-06", "2026-05-04", "2026-12-25", "2026-12-28"],
    "DE": ["2026-01-01", "2026-04-03", "2026-05-01", "2026-10-03", "2026-12-25", "2026-12-26"],
    "FR": ["2026-01-01", "2026-05-01", "2026-07-14", "2026-08-15", "2026-11-11", "2026-12-25"],
    "IN": ["2026-01-26", "2026-08-15", "2026-10-02", "2026-11-08"],
    "AU": ["2026-01-01", "2026-01-26", "2026-04-25", "2026-12-25", "2026-12-26"],
}

_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")
EXTRA_SCHEDULES: list[dict[str, list[list[str]]]] = [
    # a night shift: an interval never crosses midnight, so it is written as two
    {d: [["00:00", "02:30"], ["21:00", "24:00"]] for d in _WEEKDAYS},
    # an office day with a lunch break, and Saturday mornings
    {**{d: [["08:30", "12:00"], ["13:30", "17:45"]] for d in _WEEKDAYS}, "sat": [["09:00", "12:00"]]},
]
ALL_SCHEDULES = [*SCHEDULES, *EXTRA_SCHEDULES]

GROUP_NAMES = ("sales", "support", "billing", "night-shift", "vip", "onboarding")


# Line templates: (id, kind, [(prefix, per_minute choices, increment_s choices)]).
# Per-minute prices are drawn per tenant; some make the opening balance the
# limit of a call (a satellite minute), one is free (the cap applies), one
# costs more than the opening balance pays for one increment.
LINE_TEMPLATES: tuple[tuple[str, str, tuple[tuple[str, tuple[str, ...], tuple[int, ...]], ...]], ...] = (
    ("rent-1", "rented", (
        ("1", ("0.0100", "0.0125", "0.013700"), (60, 6)),
        ("1212", ("0.0000",), (60,)),  # on-net: free, capped at codes.MAX_CALL_SECONDS
        ("44", ("0.0200", "0.0250"), (1, 60)),
        ("447", ("0.0800", "0.0750"), (1,)),
        ("49", ("0.0250", "0.0300"), (6, 1)),
        ("4915", ("0.0900", "0.1100"), (1, 30)),
        ("33", ("0.0300", "0.0350"), (30, 1)),
        ("336", ("0.0650", "0.070000"), (1,)),
        ("91", ("0.0150", "0.0190"), (60, 1)),
        ("61", ("0.0400", "0.0450"), (1, 30)),
        ("8816", ("9.5000", "12.2500"), (60, 30)),  # Iridium: the balance pays a few minutes
        ("88216", ("65.0000",), (60,)),  # Thuraya premium: more than the balance pays for one increment
    )),
    ("trunk-1", "sip_trunk", (
        ("1", ("0.0090", "0.0110"), (6, 60)),
        ("44", ("0.0180", "0.0210"), (1,)),
        ("49", ("0.0220",), (1, 6)),
        ("33", ("0.0280",), (30,)),
    )),
    ("byoc-1", "byoc", (
        ("1", ("0.0050",), (1,)),
        ("91", ("0.0120", "0.0135"), (1, 60)),
        ("61", ("0.0375",), (6,)),
        ("447", ("0.0600",), (1,)),
    )),
)
LINE_WEIGHTS = (0.6, 0.25, 0.15)

# Callers that are on no list of the tenant, drawn with the lists.
CLEAN_POOL = 2_000


def draw_digits(rnd: random.Random, prefix: str, total: int) -> str:
    """E.164 digits of length `total` starting with `prefix`, the rest random.

    A national number never starts with 0 or 1 (the digit after the country
    code), and in NANP neither does the exchange code (the fifth digit), as
    in real allocations.
    """
    nanp = total == 11 and prefix.startswith("1")
    out = list(prefix)
    while len(out) < total:
        leading = len(out) == len(prefix) or (nanp and len(out) in (1, 4))
        out.append(str(rnd.randint(2, 9) if leading else rnd.randint(0, 9)))
    return "".join(out)



# --------------------------------------------------------------------------
# World
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class WorldSpec:
    seed: int = 1
    tenants: int = 4
    numbers_per_tenant: int = 50
    blacklist: int = 10_000  # entries per tenant
    offhours_blacklist: int = 1_000
    users_per_tenant: int = 20
    groups_per_tenant: int = 4
    opening_balance: str = "50.00"  # credited to every tenant by the driver (Admin.Credit)
    documents_share: float = 0.1  # share of numbers with requires_documents (never approved in a run)
    prefix: str = ""  # before every tenant id: a run against a server of yours names its own (loadtest/tenants.py)

    def check(self) -> None:
        """Refuse a spec the world cannot be built from (ValueError naming the field)."""
        if self.tenants < 1:
            raise ValueError("tenants: at least 1")
        if self.numbers_per_tenant < 4:
            raise ValueError("numbers_per_tenant: at least 4 (a main number, a default caller ID, others)")
        if self.users_per_tenant < 1 or self.groups_per_tenant < 1:
            raise ValueError("users_per_tenant and groups_per_tenant: at least 1")
        if self.blacklist < 0 or self.offhours_blacklist < 0:
            raise ValueError("blacklist sizes: at least 0")
        if not 0 <= self.documents_share < 1:
            raise ValueError("documents_share: from 0 up to (not including) 1")
        balance = Decimal(self.opening_balance)
        if not balance.is_finite() or balance < 0 or balance != balance.quantize(Decimal("0.01")):
            raise ValueError(f"opening_balance: an amount with two decimals such as '50.00', not "
                             f"{self.opening_balance!r}")


@dataclass(frozen=True)
class Tenant:
    id: str
    document: dict[str, Any]  # the settings document pushed through Admin (parse_settings accepts it)
    settings: Settings
    blacklisted: list[str]  # E.164, the whole blacklist (the document's list)
    offhours_listed: list[str]  # E.164, the whole off-hours blacklist
    numbers: list[str]  # the tenant's own numbers
    pending: list[str]  # numbers with requires_documents
    users: list[str]  # users with a usable caller ID (outbound ALLOW possible)
    callers: list[str] = field(default_factory=list, repr=False)  # callers on none of this tenant's lists


@dataclass(frozen=True)
class World:
    spec: WorldSpec
    tenants: list[Tenant]
    _references: dict[str, Reference] = field(default_factory=dict, compare=False, repr=False)

    def tenant(self, tenant: str) -> Tenant:
        for t in self.tenants:
            if t.id == tenant:
                return t
        raise KeyError(f"no tenant {tenant!r} in this world")

    def reference(self, tenant: str) -> Reference:
        """The reference decisions for a tenant: version 1, nothing approved (cached)."""
        ref = self._references.get(tenant)
        if ref is None:
            ref = self._references[tenant] = Reference(self.tenant(tenant).settings, version=1, approved=())
        return ref

    @property
    def balance(self) -> Decimal:
        return Decimal(self.spec.opening_balance)


def build_world(spec: WorldSpec) -> World:
    """The tenants of `spec`, drawn from `spec.seed` alone."""
    spec.check()
    taken: set[str] = set()  # own numbers of every tenant so far: no number belongs to two tenants
    tenants = [_build_tenant(spec, i, taken) for i in range(spec.tenants)]
    return World(spec, tenants)


def site_number(rnd: random.Random, taken: set[str]) -> tuple[str, str, str]:
    """A number of a random site that is not in `taken`: (E.164, country, zone)."""
    while True:
        country, zone, prefix, total = rnd.choice(SITES)
        number = "+" + draw_digits(rnd, prefix, total)
        if number not in taken:
            return number, country, zone


def _fresh_number(rnd: random.Random, taken: set[str]) -> tuple[str, str, str]:
    """`site_number`, and it is taken from now on."""
    drawn = site_number(rnd, taken)
    taken.add(drawn[0])
    return drawn


def _lines(rnd: random.Random) -> list[dict[str, Any]]:
    return [{"id": lid, "kind": kind,
             "rates": [{"prefix": prefix, "per_minute": rnd.choice(prices), "increment_s": rnd.choice(increments)}
                       for prefix, prices, increments in rates]}
            for lid, kind, rates in LINE_TEMPLATES]


def _schedule(rnd: random.Random, country: str, zone: str) -> dict[str, Any] | None:
    if rnd.random() < 0.08:
        return None  # always open
    if rnd.random() < 0.1:
        zone = rnd.choice(OFFICE_ZONES)
    holidays = COUNTRY_HOLIDAYS[country] if rnd.random() < 0.8 else rnd.choice(HOLIDAYS)
    return {"timezone": zone, "weekly": rnd.choice(ALL_SCHEDULES), "holidays": list(holidays)}


def _build_tenant(spec: WorldSpec, index: int, taken: set[str]) -> Tenant:
    tid = f"{spec.prefix}t{index}"  # the draws below follow the seed and the index, never the name
    rnd = random.Random(f"callgate-world/{spec.seed}/{index}")
    np_rng = np.random.default_rng([spec.seed, index])

    # Lists and clean callers in one draw: distinct, so the lists are disjoint
    # from each other and from the callers that must reach the tenant.
    listed = e164(draw_numbers(np_rng, spec.blacklist + spec.offhours_blacklist + CLEAN_POOL))
    blacklist = listed[:spec.blacklist]
    offhours = listed[spec.blacklist:spec.blacklist + spec.offhours_blacklist]
    callers = listed[spec.blacklist + spec.offhours_blacklist:]

    groups = [GROUP_NAMES[g] if g < len(GROUP_NAMES) else f"g{g}" for g in range(spec.groups_per_tenant)]
    lines = _lines(rnd)
    line_ids = [line["id"] for line in lines]
    desks = [_fresh_number(rnd, taken)[0] for _ in range(3)]  # outside after-hours desks (forward targets)
    backup = _fresh_number(rnd, taken)[0]

    n = spec.numbers_per_tenant
    order = list(range(n))
    rnd.shuffle(order)
    # at least two numbers are usable: the main number and the default caller ID
    n_pending = min(round(spec.documents_share * n), n - 2)
    pending_idx = set(order[:n_pending])
    main_idx, default_idx = order[n_pending], order[n_pending + 1]

    entries: list[dict[str, Any]] = []
    for i in range(n):
        number, country, zone = _fresh_number(rnd, taken)
        line = rnd.choices(line_ids, weights=LINE_WEIGHTS)[0]
        inbound_only = (i == main_idx and rnd.random() < 0.5) or (
            i not in (main_idx, default_idx) and i not in pending_idx and rnd.random() < 0.1)
        entry: dict[str, Any] = {"number": number, "line": line, "country": country,
                                 "requires_documents": i in pending_idx, "inbound_only": inbound_only}
        if line == "rent-1":
            # The server charges renewals by its own clock (server/jobs.py), and a charge during a run
            # would move the balance the outbound expectations are computed from: first renewals are
            # far in the future, so the balance stays the opening one whatever day the run is on.
            entry["rental"] = {"monthly_fee": rnd.choice(("1.00", "4.50", "5.00", "12.00")),
                               "renews_on": f"2099-{rnd.randint(1, 12):02d}-{rnd.randint(1, 28):02d}"}
        schedule = _schedule(rnd, country, zone)
        if schedule is not None:
            entry["schedule"] = schedule
        entry["offhours_action"] = rnd.choice(
            [{"action": "reject"}, {"action": "voicemail"}, {"action": "forward", "to": rnd.choice(desks)}])
        if rnd.random() < 0.92:
            entry["route_to"] = rnd.choice(groups)
        entries.append(entry)

    usable = [e["number"] for e in entries if not e["requires_documents"] and not e["inbound_only"]]
    users: list[dict[str, Any]] = []
    for u in range(spec.users_per_tenant):
        user: dict[str, Any] = {"id": f"u{u}"}
        if rnd.random() < 0.75:  # the others present the tenant's default_caller_id
            user["caller_id"] = rnd.choice(usable)
        mine = [groups[u % len(groups)]]
        if len(groups) > 1 and rnd.random() < 0.3:
            mine.append(rnd.choice([g for g in groups if g != mine[0]]))
        user["groups"] = mine
        users.append(user)
    # Membership is the union of both sides: groups list some of their users
    # again, and one member each that has no `users` entry (no caller ID).
    queue_groups = [{"id": g, "members": [u["id"] for u in users[:len(users) // 2] if g in u["groups"]]
                     + [f"ext-{g}"]} for g in groups]

    doc: dict[str, Any] = {
        "tenant": tid,
        "currency": "EUR" if index % 3 == 2 else "USD",
        "status": "active",
        "default_caller_id": entries[default_idx]["number"],
        "main_number": entries[main_idx]["number"],  # never the default caller ID (spec §2 rule 2)
        "chat_mode": codes.CHAT_MODES[index % len(codes.CHAT_MODES)],
        "lead_trigger": codes.LEAD_TRIGGERS[index % len(codes.LEAD_TRIGGERS)],
        "pickup_code": ("*8", "#7", "*98", "**5")[index % 4],
        "auto_topup": {"enabled": True, "amount": "20.00"} if index % 2 == 0 else {"enabled": False},
        "backup": {"number": backup, "line": rnd.choice(line_ids)},
        "block_anonymous": index % 2 == 1,
        "lines": lines,
        "numbers": entries,
        "users": users,
        "queue_groups": queue_groups,
        "blacklist": blacklist,
        "offhours_blacklist": offhours,
    }
    settings = parse_settings(doc)
    return Tenant(
        id=tid, document=doc, settings=settings, blacklisted=blacklist, offhours_listed=offhours,
        numbers=[e["number"] for e in entries],
        pending=[e["number"] for e in entries if e["requires_documents"]],
        users=[u["id"] for u in users],  # every user can call out: own caller ID or the default (usable)
        callers=callers,
    )

