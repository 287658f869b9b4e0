"""The tenant settings document's typed model (spec §1): the frozen dataclasses `parse_settings` returns,
the limits and money bounds the rules enforce, and `SettingsError`, which carries every problem at once.

Money stays `Decimal` from the wire to the model; phone numbers stay E.164
strings; the compiler (`engine.snapshot`) turns them into the core's tables.
Imports nothing of the engine: the decoder (`settings_decode`) and the rules
(`settings_rules`) build on it; `engine.settings` is the face of all three.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# The longest lists: a document beyond these is refused (its size in bytes: settings_decode.MAX_DOCUMENT_BYTES).
MAX_LIST = {
    "lines": 1_000,
    "rates": 100_000,
    "numbers": 100_000,
    "users": 100_000,
    "queue_groups": 10_000,
    "blacklist": 20_000_000,
    "offhours_blacklist": 20_000_000,
    "holidays": 1_000,
    "intervals": 48,
    "groups": 1_000,
    "members": 100_000,
}

# Money bounds keep the core's integer arithmetic (micro-units, int64) exact.
MAX_RATE = Decimal("1000")
MAX_AMOUNT = Decimal("1000000000")
RATE_DECIMALS = 6
AMOUNT_DECIMALS = 2
MAX_INCREMENT_S = 3600


class SettingsError(ValueError):
    """A settings document that cannot be accepted; `errors` lists each problem."""

    def __reduce__(self) -> tuple[type[SettingsError], tuple[list[str]]]:
        # crosses process boundaries (compiles run in a worker pool) whole
        return (SettingsError, (self.errors,))

    def __init__(self, errors: Sequence[str]):
        self.errors = list(errors)
        shown = "\n".join(f"  - {e}" for e in self.errors[:50])
        more = f"\n  ... and {len(self.errors) - 50} more" if len(self.errors) > 50 else ""
        noun = "error" if len(self.errors) == 1 else "errors"
        super().__init__(f"settings refused, {len(self.errors)} {noun}:\n{shown}{more}")


@dataclass(frozen=True, slots=True)
class Rate:
    prefix: str
    per_minute: Decimal
    increment_s: int


@dataclass(frozen=True, slots=True)
class Line:
    id: str
    kind: str
    rates: tuple[Rate, ...]
    caller_format: str = "auto"   # how its trunk sends callers: auto | e164 | international | national


@dataclass(frozen=True, slots=True)
class Rental:
    monthly_fee: Decimal
    renews_on: dt.date


@dataclass(frozen=True, slots=True)
class Schedule:
    timezone: str
    # weekday (0 = Monday) -> working intervals as (start, end) minutes of
    # the local day, start included, end excluded, end <= 1440.
    weekly: tuple[tuple[tuple[int, int], ...], ...]
    holidays: tuple[dt.date, ...]


@dataclass(frozen=True, slots=True)
class OffhoursAction:
    action: str  # reject | voicemail | forward
    to: str | None = None


@dataclass(frozen=True, slots=True)
class Number:
    number: str
    line: str
    country: str
    requires_documents: bool
    inbound_only: bool
    rental: Rental | None
    schedule: Schedule | None
    offhours_action: OffhoursAction
    route_to: str | None


@dataclass(frozen=True, slots=True)
class User:
    id: str
    caller_id: str | None
    groups: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QueueGroup:
    id: str
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AutoTopup:
    enabled: bool
    amount: Decimal | None


@dataclass(frozen=True, slots=True)
class Backup:
    number: str
    line: str


@dataclass(frozen=True, slots=True)
class Settings:
    tenant: str
    currency: str
    status: str
    chat_mode: str
    lead_trigger: str
    default_caller_id: str | None = None
    main_number: str | None = None
    pickup_code: str | None = None
    auto_topup: AutoTopup = AutoTopup(False, None)
    backup: Backup | None = None
    block_anonymous: bool = False
    lines: tuple[Line, ...] = ()
    numbers: tuple[Number, ...] = ()
    users: tuple[User, ...] = ()
    queue_groups: tuple[QueueGroup, ...] = ()
    blacklist: tuple[str, ...] = ()
    offhours_blacklist: tuple[str, ...] = ()
    # The raw document as pushed, kept for history and `settings show`.
    document: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def group_members(self) -> dict[str, tuple[str, ...]]:
        """Queue group id -> member user ids, in document order.

        Membership is the union of `queue_groups[].members` and
        `users[].groups`: either side may list it.
        """
        members: dict[str, dict[str, None]] = {g.id: dict.fromkeys(g.members) for g in self.queue_groups}
        for user in self.users:
            for gid in user.groups:
                members[gid].setdefault(user.id)
        return {gid: tuple(m) for gid, m in members.items()}

    def user_groups(self) -> dict[str, frozenset[str]]:
        """User id -> the queue groups they belong to (same union as above).

        Users are those of `users` and every queue group member: a member
        needs an entry in `users` only to have a caller ID of their own.
        """
        out: dict[str, set[str]] = {u.id: set(u.groups) for u in self.users}
        for group in self.queue_groups:
            for uid in group.members:
                out.setdefault(uid, set()).add(group.id)
        return {uid: frozenset(g) for uid, g in out.items()}
