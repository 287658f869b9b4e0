"""Synthetic tenants drawn from real numbering ranges, for benchmarks and load.

Numbers come from the ranges that carriers really allocate in five
countries, so that blacklists have the density (and the roaring containers
the shapes) that production lists have:

- US (NANP): +1 NPA NXX XXXX with NPA and NXX in 200-999
- GB mobile: +44 7[1-9]XX XXXXXX
- DE mobile: +49 15X/16X/17X and 8 digits
- FR mobile: +33 6/7 and 8 digits
- IN mobile: +91 [6-9] and 9 digits
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np

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
