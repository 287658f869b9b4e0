"""The pure-Python reference implementation of the decisions (docs/decisions.md).

This module is the readable statement of what the compiled core must answer.
It favours the obvious code over the fast one: Python sets of E.164 strings
for the blacklists, `zoneinfo` + `datetime` for off hours, `Decimal` for
money, a plain loop for the longest rate prefix.  It shares nothing with the
compiled core; it only reads the settings model (`engine.settings`), the
public names (`engine.codes`), the dialling facts (`engine.dialing`) and the
result types (`engine.decision`).

Decisions are made on a `Settings` returned by `engine.settings.parse_settings`,
whose cross-references (caller IDs, lines, queue groups) are already checked.
"""

from __future__ import annotations

import datetime as dt
import decimal
import re
from collections.abc import Iterable, Sequence
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from . import codes
from .decision import Decision, RingingCall
from .dialing import CountryDialing, country_dialing, plausible_e164
from .money import to_micro
from .settings import Line, Number, Rate, Schedule, Settings, User

# A user id: 1-64 characters of letters, digits, `_ . : @ -`, the first a
# letter or digit (ASCII only, as in the settings document).
_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,63}")

# Balances the outbound decision accepts (docs/decisions.md, Outbound).
MAX_BALANCE = Decimal("1000000000")
BALANCE_DECIMALS = 6

# Money arithmetic is exact: wide enough for every product of a balance
# (1e9, 6 decimals) and a rate (1000, 6 decimals) times 3600, and any
# inexact result would raise rather than round silently.
_EXACT = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_FLOOR,
    traps=[decimal.Inexact, decimal.InvalidOperation, decimal.DivisionByZero, decimal.Overflow],
)


# --------------------------------------------------------------------------
# Reading phone numbers
# --------------------------------------------------------------------------


def _is_ascii_digits(text: str) -> bool:
    """True for a non-empty string of the characters 0-9 only."""
    return text.isascii() and text.isdigit()


def _valid_e164_digits(digits: str) -> bool:
    """The digits of an E.164 number: 8 to 15 of them, the first not 0."""
    return _is_ascii_digits(digits) and 8 <= len(digits) <= 15 and digits[0] != "0"


def is_withheld(text: str) -> bool:
    """A withheld caller: after stripping spaces at both ends, one of `codes.WITHHELD_CALLERS`.

    The comparison ignores ASCII case only: a text with other characters is
    never a withheld word.
    """
    word = text.strip(" ")
    return word.isascii() and word.lower() in codes.WITHHELD_CALLERS


def read_number(text: str, dialing: CountryDialing | None) -> str | None:
    """Read a caller, destination or called number; return it as E.164, or None if it does not read.

    With `dialing` None (no country context: the called number), only `+` and
    digits or digits alone (E.164 without its `+`) are read.  With a country,
    its international prefix, national prefix and national lengths are tried
    in that order.  A withheld text is not a number: check `is_withheld` first.
    """
    if not isinstance(text, str):
        return None
    if text.startswith("+"):
        digits = text[1:]
    elif not _is_ascii_digits(text):
        return None
    elif dialing is None:
        digits = text
    elif text.startswith(dialing.international_prefix):
        digits = text[len(dialing.international_prefix):]
    elif dialing.national_prefix and text.startswith(dialing.national_prefix):
        digits = dialing.country_code + text[len(dialing.national_prefix):]
    elif len(text) in dialing.national_lengths:
        digits = dialing.country_code + text
    else:
        digits = text
    if not _valid_e164_digits(digits):
        return None
    return "+" + digits


def read_caller(text: str, dialing: CountryDialing, caller_format: str = "auto") -> tuple[str, ...] | None:
    """Read an inbound caller by its line's `caller_format`; return its readings as E.164, or None.

    One reading, except under `auto` when digits without `+` read in the
    country also read as a plausible whole E.164 number (the proxy dropped
    the `+`; `dialing.plausible_e164`): then (the national reading, the
    digits as E.164).  A withheld text is not
    a number: check `is_withheld` first.
    """
    if not isinstance(text, str):
        return None
    if text.startswith("+") or caller_format == "auto":
        primary = read_number(text, dialing)
        if primary is None:
            return None
        other = read_number(text, None) if not text.startswith("+") else None
        if other is not None and other != primary and plausible_e164(other[1:]):
            return primary, other
        return (primary,)
    if not _is_ascii_digits(text) or caller_format == "e164":
        return None
    if caller_format == "international":
        digits = text
    elif text.startswith(dialing.international_prefix):
        digits = text[len(dialing.international_prefix):]
    elif dialing.national_prefix and text.startswith(dialing.national_prefix):
        digits = dialing.country_code + text[len(dialing.national_prefix):]
    else:
        digits = dialing.country_code + text
    return ("+" + digits,) if _valid_e164_digits(digits) else None


def _valid_user(user: str) -> bool:
    return isinstance(user, str) and _USER_ID.fullmatch(user) is not None


def _valid_instant(at: int) -> bool:
    if not isinstance(at, int) or isinstance(at, bool):
        raise TypeError(f"the instant must be an int (UTC seconds), not {type(at).__name__}")
    return codes.MIN_INSTANT <= at < codes.MAX_INSTANT


def _check_balance(balance: Decimal) -> None:
    """Refuse a balance the decision is not defined for (ValueError), or that is not a Decimal (TypeError).

    Decimals are counted on the value: `Decimal("1.50000000")` has 1 decimal.
    """
    if not isinstance(balance, Decimal):
        raise TypeError(f"the balance must be a Decimal, not {type(balance).__name__}")
    if not balance.is_finite():
        raise ValueError(f"the balance {balance} is not a finite amount")
    if balance > MAX_BALANCE or balance < -MAX_BALANCE:
        raise ValueError(f"the balance {balance} is larger than {MAX_BALANCE} in size")
    if (Fraction(balance) * 10**BALANCE_DECIMALS).denominator != 1:
        raise ValueError(f"the balance {balance} has more than {BALANCE_DECIMALS} decimal places")


# --------------------------------------------------------------------------
# Off hours
# --------------------------------------------------------------------------


def is_off_hours(schedule: Schedule | None, at: int) -> bool:
    """Whether a number with this schedule is in its off hours at UTC instant `at`."""
    if schedule is None:
        return False
    local = dt.datetime.fromtimestamp(at, tz=ZoneInfo(schedule.timezone))
    if local.date() in schedule.holidays:
        return True
    minute = local.hour * 60 + local.minute
    for start, end in schedule.weekly[local.weekday()]:
        if start <= minute < end:
            return False
    return True


# --------------------------------------------------------------------------
# Money
# --------------------------------------------------------------------------


def longest_prefix_rate(line: Line, digits: str) -> Rate | None:
    """The rate of `line` whose prefix is the longest prefix of `digits`, or None."""
    best: Rate | None = None
    for rate in line.rates:
        if digits.startswith(rate.prefix) and (best is None or len(rate.prefix) > len(best.prefix)):
            best = rate
    return best


def affordable_increments(balance: Decimal, rate: Rate) -> int:
    """Whole increments of `rate` whose exact cost is at most `balance`, capped at `codes.MAX_CALL_SECONDS`.

    One increment costs `per_minute * increment_s / 60`, so the count is
    `floor(balance * 60 / (per_minute * increment_s))`, computed exactly.
    """
    cap = codes.MAX_CALL_SECONDS // rate.increment_s
    if balance < 0:
        return 0
    if rate.per_minute == 0:
        return cap
    with decimal.localcontext(_EXACT):
        # balance >= 0 and the divisor > 0: the integer part is the floor.
        k = int((balance * 60) // (rate.per_minute * rate.increment_s))
    return min(k, cap)


# --------------------------------------------------------------------------
# Decisions
# --------------------------------------------------------------------------

_REFUSALS = frozenset({"REJECT", "DENY", "ERROR", "NO_PICKUP"})


class Reference:
    """Decisions for one tenant's settings, computed the plain way."""

    def __init__(self, settings: Settings, version: int = 1, approved: Iterable[str] = (),
                 rejected: Iterable[str] = ()) -> None:
        self.settings = settings
        self.version = version
        self.approved: frozenset[str] = frozenset(approved)
        # numbers whose latest document set was rejected: they answer DOCUMENTS_REJECTED while not approved
        self.rejected: frozenset[str] = frozenset(rejected) - self.approved
        self.numbers: dict[str, Number] = {n.number: n for n in settings.numbers}
        self.lines: dict[str, Line] = {line.id: line for line in settings.lines}
        self.users: dict[str, User] = {u.id: u for u in settings.users}
        self.blacklist: set[str] = set(settings.blacklist)
        self.offhours_blacklist: set[str] = set(settings.offhours_blacklist)
        self.group_members: dict[str, tuple[str, ...]] = settings.group_members()
        self.user_groups: dict[str, frozenset[str]] = settings.user_groups()

    # -- helpers -----------------------------------------------------------
    def _decision(
        self,
        verdict: str,
        reason: str,
        *,
        tenant_modes: bool = True,
        caller: str | None = None,
        called: str | None = None,
        target: str | None = None,
        line: str | None = None,
        group: str | None = None,
        members: tuple[str, ...] = (),
        caller_id: str | None = None,
        destination: str | None = None,
        rate_per_minute: Decimal | None = None,
        increment_s: int | None = None,
        max_duration_s: int | None = None,
        call_id: str | None = None,
        caller_readings: tuple[str, ...] = (),
    ) -> Decision:
        """A decision; the SIP status is the reason's for refusals, 0 otherwise."""
        return Decision(
            verdict=verdict,
            reason=reason,
            sip_status=codes.SIP_STATUS[reason] if verdict in _REFUSALS else 0,
            version=self.version,
            chat_mode=self.settings.chat_mode if tenant_modes else None,
            lead_trigger=self.settings.lead_trigger if tenant_modes else None,
            caller=caller,
            called=called,
            target=target,
            line=line,
            group=group,
            members=members,
            caller_id=caller_id,
            destination=destination,
            rate_per_minute=rate_per_minute,
            increment_s=increment_s,
            max_duration_s=max_duration_s,
            call_id=call_id,
            caller_readings=caller_readings,
        )

    def _pending(self, number: Number) -> bool:
        return number.requires_documents and number.number not in self.approved

    def _documents_reason(self, number: Number) -> str:
        return "DOCUMENTS_REJECTED" if number.number in self.rejected else "DOCUMENTS_PENDING"

    # -- inbound -----------------------------------------------------------
    def inbound(self, caller: str, called: str, at: int) -> Decision:
        # 1. the instant
        if not _valid_instant(at):
            return self._decision("ERROR", "INVALID_TIME")

        # 2. the called number, read without a country
        called_e164 = read_number(called, None)
        if called_e164 is None:
            return self._decision("ERROR", "INVALID_CALLED")
        number = self.numbers.get(called_e164)

        # 3. the caller, read in the called number's country by its line's format (only for a known number)
        withheld = False
        caller_e164: str | None = None
        readings: tuple[str, ...] = ()
        if number is not None:
            withheld = isinstance(caller, str) and is_withheld(caller)
            if not withheld:
                dialing = country_dialing(number.country)
                assert dialing is not None  # the settings validated the country
                found = read_caller(caller, dialing, self.lines[number.line].caller_format)
                if found is None:
                    return self._decision("ERROR", "INVALID_CALLER", called=called_e164)
                caller_e164 = found[0]
                readings = found if len(found) > 1 else ()

        read: dict[str, Any] = {"caller": caller_e164, "called": called_e164, "caller_readings": readings}

        def listed(names: set[str]) -> str | None:
            """The first reading of the caller that is on this list."""
            return next((r for r in readings or (caller_e164,) if r is not None and r in names), None)

        # 4. tenant unavailable: backup forwarding on the backup line only
        if self.settings.status != "active":
            backup = self.settings.backup
            if number is not None and backup is not None and number.line == backup.line:
                return self._decision("FORWARD", "ACCOUNT_UNAVAILABLE", **read,
                                      target=backup.number, line=backup.line)
            return self._decision("REJECT", "ACCOUNT_UNAVAILABLE", **read)

        # 5. unknown called number
        if number is None:
            return self._decision("REJECT", "UNKNOWN_NUMBER", **read)

        # 6. documents pending
        if self._pending(number):
            return self._decision("REJECT", self._documents_reason(number), **read)

        # 7. withheld caller
        if withheld and self.settings.block_anonymous:
            return self._decision("REJECT", "ANONYMOUS", **read)

        # 8. blacklist (a withheld caller is on no list; every reading of the caller is checked)
        hit = listed(self.blacklist)
        if hit is not None:
            return self._decision("REJECT", "BLACKLISTED", caller=hit, called=called_e164, caller_readings=readings)

        off = is_off_hours(number.schedule, at)

        # 9. off-hours blacklist
        hit = listed(self.offhours_blacklist) if off else None
        if hit is not None:
            return self._decision("REJECT", "OFF_HOURS_BLOCKED", caller=hit, called=called_e164,
                                  caller_readings=readings)

        # 10. off hours: the number's action
        if off:
            action = number.offhours_action
            if action.action == "voicemail":
                return self._decision("VOICEMAIL", "OFF_HOURS", **read)
            if action.action == "forward":
                return self._decision("FORWARD", "OFF_HOURS", **read,
                                      target=action.to, line=number.line)
            return self._decision("REJECT", "OFF_HOURS", **read)

        # 11. route to the number's queue group
        group = number.route_to
        members = self.group_members.get(group, ()) if group is not None else ()
        return self._decision("ROUTE", "OK", **read,
                              group=group, members=members)

    # -- outbound ----------------------------------------------------------
    def outbound(self, user: str, destination: str, at: int, balance: Decimal | None) -> Decision:
        """`balance` None: the route and rate whatever the credit (a ringing call is priced by them)."""
        if balance is not None:
            _check_balance(balance)

        # 1. the user id
        if not _valid_user(user):
            return self._decision("ERROR", "INVALID_USER")

        # 2. the instant
        if not _valid_instant(at):
            return self._decision("ERROR", "INVALID_TIME")

        # 3. the caller ID: the user's own, else the tenant's default
        own = self.users.get(user)
        caller_id = own.caller_id if own is not None and own.caller_id is not None else self.settings.default_caller_id
        if caller_id is None:
            return self._decision("DENY", "NO_CALLER_ID")
        number = self.numbers[caller_id]

        # 4. the destination, read in the caller ID number's country (never withheld)
        destination_e164 = None
        if not (isinstance(destination, str) and is_withheld(destination)):
            destination_e164 = read_number(destination, country_dialing(number.country))
        if destination_e164 is None:
            return self._decision("ERROR", "INVALID_DESTINATION")

        # 5. tenant unavailable
        if self.settings.status != "active":
            return self._decision("DENY", "ACCOUNT_UNAVAILABLE")

        # 6. documents pending on the caller ID number
        if self._pending(number):
            return self._decision("DENY", self._documents_reason(number))

        # 7. the rate: longest prefix of the destination's digits on the caller ID's line
        line = self.lines[number.line]
        rate = longest_prefix_rate(line, destination_e164[1:])
        if rate is None:
            return self._decision("DENY", "NO_RATE")

        # 8. affordable increments
        k = affordable_increments(balance, rate) if balance is not None else codes.MAX_CALL_SECONDS // rate.increment_s
        if k == 0:
            return self._decision("DENY", "INSUFFICIENT_FUNDS")

        # 9. allow
        return self._decision(
            "ALLOW", "OK",
            caller_id=caller_id, destination=destination_e164, line=line.id,
            rate_per_minute=rate.per_minute, increment_s=rate.increment_s, max_duration_s=k * rate.increment_s,
        )

    def line_rate(self, line: str, number: str) -> tuple[int, int] | None:
        """(per-minute rate in micro-units, increment) of the longest prefix of E.164 `number` on `line`."""
        found = self.lines.get(line)
        if found is None or not number.startswith("+") or read_number(number, None) is None:
            return None
        rate = longest_prefix_rate(found, number[1:])
        return (to_micro(rate.per_minute), rate.increment_s) if rate is not None else None

    # -- pickup ------------------------------------------------------------
    def pickup(self, user: str, dialed: str, ringing: Sequence[RingingCall]) -> Decision:
        # 1. the user id
        if not _valid_user(user):
            return self._decision("ERROR", "INVALID_USER", tenant_modes=False)

        # 2. tenant unavailable
        if self.settings.status != "active":
            return self._decision("NO_PICKUP", "ACCOUNT_UNAVAILABLE", tenant_modes=False)

        # 3. the pickup code, exactly
        code = self.settings.pickup_code
        if code is None or dialed != code:
            return self._decision("NO_PICKUP", "NOT_PICKUP_CODE", tenant_modes=False)

        # 4. eligible calls: unanswered, at another user sharing a queue group with the picker
        own_groups = self.user_groups.get(user, frozenset())
        best: RingingCall | None = None
        for call in ringing:
            if call.answered or call.user == user:
                continue
            if not own_groups & self.user_groups.get(call.user, frozenset()):
                continue
            # 5. the longest ringing; a tie keeps the one listed first
            if best is None or call.since < best.since:
                best = call
        if best is None:
            return self._decision("NO_PICKUP", "NO_RINGING_CALL", tenant_modes=False)
        return self._decision("INTERCEPT", "OK", tenant_modes=False, call_id=best.call_id)
