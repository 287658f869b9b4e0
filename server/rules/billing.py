"""Billing's exact money rules (spec §2 rule 7, §3 "Billing arithmetic"), plus the payment gateway.

Everything here is pure: no store, no I/O, no clock (callers pass `today`).
The store and the gRPC service call these functions; the sandbox gateway
records its charges through a `SandboxRecorder` the store provides.

Money
    Integer micro-units of the tenant's currency (1.00 = 1_000_000), never a
    float: every sum, product and comparison is exact.  `to_micro` is the one
    way in from a decimal string; `format_money` the way out.

Rounding rule (spec §3)
    A call that talked d seconds costs ceil(d / increment_s) whole increments
    (d <= 0, an unanswered call, costs nothing).  One increment costs
    `per_minute * increment_s / 60` EXACTLY (a fraction of a micro-unit is
    kept, not rounded), and the call's total is rounded half-up to the
    currency's cents ONCE, at the end.  So a charge is always a multiple of
    `CENT`, and rounding never accumulates per increment.

Renewal calendar
    Dates are UTC calendar dates.  A rental renews on `renews_on` and then
    monthly on the same day of the month (the anchor day), clamped to the
    month's last day when the month is shorter: Jan 31 -> Feb 28 (29 in leap
    years) -> Mar 31 -> Apr 30.  The clamp never drifts the anchor: after
    Feb 28 comes Mar 31, not Mar 28.  Nothing renews before `renews_on`.

Auto top-up threshold (rule 7)
    max(3.00, the renewal amount), where the renewal amount is the sum of the
    monthly fees of the rentals renewing on the tenant's next upcoming renewal
    date (strictly after today: today's renewals are charged today, so they
    are already in the balance).

Reservations (spec §7)
    A billed call (outbound, forwarded leg) holds credit from its RINGING to
    its end (`reservation`): the most talk, in whole increments, that the
    balance less the other calls' holds pays for, up to a per-call maximum.
    What is available is the balance less every hold; outbound decisions,
    new holds and the top-up threshold count that, not the bare balance.

Once per crossing
    A top-up is triggered by the debit (or the hold) that takes the available
    credit from at or above the threshold to below it (`crossed`).  A further debit while the balance
    is already below does not trigger another one, and a retried debit (same
    ledger key) changes nothing, so one charge never tops up twice.  A
    declined card charge is recorded and retried with exponential backoff
    (`retry_delay_s`); the gateway's idempotency key makes a retried request
    for the same attempt charge at most once.
"""

from __future__ import annotations

import calendar
import datetime as dt
import hashlib
import itertools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from engine.money import MICRO, check_int, format_amount, to_micro

__all__ = [
    "CENT",
    "CURRENCIES",
    "DECLINE_CARDS",
    "MICRO",
    "MIN_TOPUP_THRESHOLD",
    "Card",
    "ChargeResult",
    "MemoryRecorder",
    "PaymentGateway",
    "Rental",
    "SandboxCharge",
    "SandboxGateway",
    "SandboxRecorder",
    "add_months",
    "call_charge_micro",
    "crossed",
    "due_renewals",
    "format_amount",
    "format_money",
    "next_renewal",
    "renewal_dates",
    "reservation",
    "retry_delay_s",
    "to_micro",
    "tokenize_card",
    "topup_threshold",
]

CENT = 10_000                      # micro-units per cent
MIN_TOPUP_THRESHOLD = 3 * MICRO    # rule 7's 3.00
CURRENCIES = frozenset({"USD", "EUR"})


def format_money(micro: int, currency: str) -> str:
    """Micro-units with their currency: 20_000_000, "USD" -> "20.00 USD"; 3_500 -> "0.0035 USD"."""
    return f"{format_amount(micro)} {currency}"


# --------------------------------------------------------------------------
# Call charges
# --------------------------------------------------------------------------


def call_charge_micro(per_minute_micro: int, increment_s: int, talked_s: int) -> int:
    """The charge of a call that talked `talked_s` seconds, in micro-units (a multiple of CENT).

    ceil(talked_s / increment_s) increments, each `per_minute * increment_s / 60`
    exactly; the total rounded half-up to cents once (module docstring).
    """
    check_int("per_minute_micro", per_minute_micro)
    check_int("increment_s", increment_s)
    check_int("talked_s", talked_s)
    if increment_s < 1:
        raise ValueError(f"increment_s must be at least 1, got {increment_s}")
    if per_minute_micro < 0:
        raise ValueError(f"per_minute_micro must not be negative, got {per_minute_micro}")
    if talked_s <= 0:
        return 0
    increments = -(-talked_s // increment_s)  # ceil without floats
    # The exact cost is numerator / 60 micro-units; in cents it is
    # numerator / (60 * CENT).  Half-up of x = floor(x + 1/2) for x >= 0,
    # i.e. floor((2 * numerator + 60 * CENT) / (120 * CENT)): integers only.
    numerator = per_minute_micro * increment_s * increments
    cents = (2 * numerator + 60 * CENT) // (120 * CENT)
    return cents * CENT


def reservation(per_minute_micro: int, increment_s: int, available_micro: int, max_s: int) -> tuple[int, int]:
    """(talk seconds covered, micro-units held) for a billed call that starts ringing now (spec §7).

    The most whole increments, at most `max_s` of talk, whose charge (rounded
    as `call_charge_micro` rounds it) fits in `available_micro` (the balance
    less what calls in progress already hold).  The call is then charged at
    most what is held for as long as it talks within the covered time, so
    parallel calls together are never promised more than the balance.  A free
    rate covers `max_s` and holds nothing; nothing available covers nothing.
    """
    check_int("available_micro", available_micro)
    check_int("max_s", max_s)
    if increment_s < 1 or per_minute_micro < 0 or max_s < 0:
        raise ValueError("increment_s must be >= 1; per_minute_micro and max_s >= 0")
    cap = max_s // increment_s
    if per_minute_micro == 0:
        return (cap * increment_s, 0) if available_micro >= 0 else (0, 0)
    if available_micro <= 0 or cap == 0:
        return 0, 0
    # exact cost of k increments = k * per_minute * increment / 60: the largest k it fits, then down while
    # the rounded charge (half-up to cents) is above what is available
    k = min(cap, available_micro * 60 // (per_minute_micro * increment_s))
    while k > 0 and call_charge_micro(per_minute_micro, increment_s, k * increment_s) > available_micro:
        k -= 1
    return k * increment_s, call_charge_micro(per_minute_micro, increment_s, k * increment_s)


# --------------------------------------------------------------------------
# Rentals and the renewal calendar
# --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rental:
    """One rented number: its monthly fee and its first (or next known) renewal date."""

    number: str
    fee_micro: int
    renews_on: dt.date


def add_months(day: dt.date, months: int, anchor_day: int | None = None) -> dt.date:
    """`day` moved by `months` calendar months, on `anchor_day` (default: day.day) clamped to the month's end.

    Keeping the anchor apart from the date is what keeps a monthly schedule
    on the 31st: add_months(Feb 28, 1, anchor_day=31) is Mar 31.
    """
    check_int("months", months)
    anchor = day.day if anchor_day is None else check_int("anchor_day", anchor_day)
    if not 1 <= anchor <= 31:
        raise ValueError(f"anchor_day must be 1-31, got {anchor}")
    year, month0 = divmod(day.year * 12 + day.month - 1 + months, 12)
    if not dt.MINYEAR <= year <= dt.MAXYEAR:
        raise ValueError(f"{day.isoformat()} plus {months} months is outside the calendar")
    month = month0 + 1
    return dt.date(year, month, min(anchor, calendar.monthrange(year, month)[1]))


def _renewal(rental: Rental, k: int) -> dt.date:
    """The rental's k-th renewal date (k = 0: renews_on)."""
    return add_months(rental.renews_on, k, rental.renews_on.day)


def _first_index_from(rental: Rental, start: dt.date) -> int:
    """The smallest k with _renewal(rental, k) >= start (k >= 0)."""
    first = rental.renews_on
    if start <= first:
        return 0
    # One renewal per calendar month, increasing with k: the one in start's
    # month is either on/after start or the next month's is.
    k = (start.year - first.year) * 12 + (start.month - first.month)
    return k if _renewal(rental, k) >= start else k + 1


def renewal_dates(rental: Rental, start: dt.date, end: dt.date) -> list[dt.date]:
    """The rental's renewal dates d with start <= d <= end, in order (none before renews_on)."""
    out: list[dt.date] = []
    if end < start or end < rental.renews_on:
        return out
    for k in itertools.count(_first_index_from(rental, start)):
        try:
            day = _renewal(rental, k)
        except ValueError:
            break  # past year 9999: the calendar ends here
        if day > end:
            break
        out.append(day)
    return out


def due_renewals(rentals: Sequence[Rental], start: dt.date, end: dt.date) -> list[tuple[str, dt.date, int]]:
    """(number, date, fee_micro) for every renewal in [start, end] of every rental, sorted by (date, number)."""
    due = [(r.number, day, r.fee_micro) for r in rentals for day in renewal_dates(r, start, end)]
    due.sort(key=lambda item: (item[1], item[0]))
    return due


def next_renewal(rentals: Sequence[Rental], today: dt.date) -> tuple[dt.date, int] | None:
    """The tenant's next upcoming renewal date (strictly after today) and the sum of the fees renewing then.

    Today's renewals are charged today, so they are not "next".  None without rentals.
    """
    nexts: list[tuple[dt.date, int]] = []
    for rental in rentals:
        if today < rental.renews_on:
            nexts.append((rental.renews_on, rental.fee_micro))
        elif today < dt.date.max:
            tomorrow = today + dt.timedelta(days=1)
            try:
                nexts.append((_renewal(rental, _first_index_from(rental, tomorrow)), rental.fee_micro))
            except ValueError:
                pass  # its next renewal would fall past year 9999: none
    if not nexts:
        return None
    day = min(d for d, _ in nexts)
    return day, sum(fee for d, fee in nexts if d == day)


def topup_threshold(rentals: Sequence[Rental], today: dt.date) -> int:
    """Rule 7's threshold: max(3.00, the next renewal amount), in micro-units."""
    upcoming = next_renewal(rentals, today)
    return max(MIN_TOPUP_THRESHOLD, upcoming[1] if upcoming is not None else 0)


def crossed(before_micro: int, after_micro: int, threshold_micro: int) -> bool:
    """True when this debit takes the balance from at/above the threshold to below it.

    Only the crossing debit triggers a top-up: "once per crossing".  A balance
    already below the threshold does not trigger again on the next debit.
    """
    return before_micro >= threshold_micro > after_micro


def retry_delay_s(attempt: int, base_s: float, cap_s: float) -> float:
    """Seconds to wait before retrying after failed attempt number `attempt` (1, 2, ...).

    Exponential backoff base_s * 2**(attempt - 1), capped at cap_s, so a
    declined card is retried soon at first and then rarely, never given up on
    silently.
    """
    check_int("attempt", attempt)
    if attempt < 1:
        raise ValueError(f"attempt must be at least 1, got {attempt}")
    for name, value in (("base_s", base_s), ("cap_s", cap_s)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"{name} must be a number, not {type(value).__name__}")
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    if base_s == 0:
        return 0.0
    # 2.0 ** 1024 would raise OverflowError; any base > 0 is past every finite cap long before.
    if attempt - 1 >= 1024:
        return float(cap_s)
    return float(min(cap_s, base_s * 2.0 ** (attempt - 1)))


# --------------------------------------------------------------------------
# Payment gateway
# --------------------------------------------------------------------------

_SANDBOX_SALT = "callgate-sandbox"  # not a secret: sandbox tokens must be reproducible in tests


@dataclass(frozen=True, slots=True)
class Card:
    """A card on file.  Only the token is stored, never the card number."""

    token: str
    brand: str      # "visa" | "mastercard" | "amex" | "card"
    last4: str


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def _brand(digits: str) -> str:
    if digits[0] == "4":
        return "visa"
    if digits[:2] in ("34", "37"):
        return "amex"
    if "51" <= digits[:2] <= "55" or "2221" <= digits[:4] <= "2720":
        return "mastercard"
    return "card"


def _token(digits: str) -> str:
    return "card_" + hashlib.sha256((digits + _SANDBOX_SALT).encode()).hexdigest()[:24]


def tokenize_card(number: str, exp_month: int, exp_year: int, today: dt.date) -> Card:
    """Sandbox tokenization: check the card number and expiry, return what may be stored.

    The number may contain spaces and dashes; it must then be 12-19 ASCII
    digits passing the Luhn check.  exp_year is a four-digit year; a card is
    valid through the end of its expiry month.  The token is deterministic
    (the same number always gets the same token).  Raises ValueError with the
    reason otherwise.
    """
    if not isinstance(number, str):
        raise TypeError(f"card number must be a string, not {type(number).__name__}")
    digits = number.replace(" ", "").replace("-", "")
    if not (digits.isascii() and digits.isdigit()):
        raise ValueError("card number may contain only digits, spaces and dashes")
    if not 12 <= len(digits) <= 19:
        raise ValueError(f"card number must have 12 to 19 digits, got {len(digits)}")
    if not _luhn_ok(digits):
        raise ValueError("card number fails the Luhn check (a digit is mistyped)")
    check_int("exp_month", exp_month)
    check_int("exp_year", exp_year)
    if not 1 <= exp_month <= 12:
        raise ValueError(f"expiry month must be 1-12, got {exp_month}")
    if not 1000 <= exp_year <= 9999:
        raise ValueError(f"expiry year must have four digits (e.g. 2030), got {exp_year}")
    if (exp_year, exp_month) < (today.year, today.month):
        raise ValueError(f"card expired at the end of {exp_year:04d}-{exp_month:02d}")
    return Card(_token(digits), _brand(digits), digits[-4:])


@dataclass(frozen=True, slots=True)
class ChargeResult:
    ok: bool
    reference: str        # the gateway's charge id (also for declines)
    decline_reason: str   # "" when ok


class PaymentGateway(Protocol):
    def charge(self, *, key: str, tenant: str, card: Card, amount_micro: int, currency: str) -> ChargeResult:
        """Charge `card`; `key` is the idempotency key: the same key always gets the first outcome
        and never charges twice."""
        ...


class SandboxRecorder(Protocol):
    def sandbox_charge(self, key: str, tenant: str, card_token: str, amount_micro: int, currency: str,
                       ok: bool, reason: str) -> tuple[bool, str, str]:
        """Record the outcome under `key` if the key is new; return (ok, reference, reason) as stored.

        The first outcome for a key wins (the store implements this with a UNIQUE key)."""
        ...


# Test card numbers that the sandbox declines, with the reason it gives.
DECLINE_CARDS = {"4000000000000002": "card_declined", "4000000000009995": "insufficient_funds"}
# The sandbox only ever sees tokens, so it matches declines by token.
_DECLINE_TOKENS = {_token(number): reason for number, reason in DECLINE_CARDS.items()}


class SandboxGateway:
    """A payment gateway that charges nobody: it decides by card token and records through `recorder`."""

    def __init__(self, recorder: SandboxRecorder) -> None:
        self.recorder = recorder

    def charge(self, *, key: str, tenant: str, card: Card, amount_micro: int, currency: str) -> ChargeResult:
        if not isinstance(key, str) or not key:
            raise ValueError("idempotency key must be a non-empty string")
        check_int("amount_micro", amount_micro)
        if amount_micro <= 0:
            raise ValueError(f"charge amount must be positive, got {format_amount(amount_micro)}")
        if currency not in CURRENCIES:
            raise ValueError(f"currency must be USD or EUR, got {currency!r}")
        reason = _DECLINE_TOKENS.get(card.token, "")
        # The recorder decides idempotency: a key seen before returns its first
        # outcome, whatever this call's card or amount.
        ok, reference, stored_reason = self.recorder.sandbox_charge(
            key, tenant, card.token, amount_micro, currency, not reason, reason)
        return ChargeResult(ok, reference, stored_reason)


@dataclass(frozen=True, slots=True)
class SandboxCharge:
    """One charge as MemoryRecorder recorded it."""

    key: str
    tenant: str
    card_token: str
    amount_micro: int
    currency: str
    ok: bool
    reference: str
    reason: str


class MemoryRecorder:
    """A dict-backed SandboxRecorder for tests and offline use; references are "ch_1", "ch_2", ...

    Thread-safe: the service charges from worker threads.
    """

    def __init__(self) -> None:
        self.charges: dict[str, SandboxCharge] = {}
        self._lock = threading.Lock()

    def sandbox_charge(self, key: str, tenant: str, card_token: str, amount_micro: int, currency: str,
                       ok: bool, reason: str) -> tuple[bool, str, str]:
        with self._lock:
            stored = self.charges.get(key)
            if stored is None:
                stored = SandboxCharge(key, tenant, card_token, amount_micro, currency, ok,
                                       f"ch_{len(self.charges) + 1}", reason)
                self.charges[key] = stored
            return stored.ok, stored.reference, stored.reason
