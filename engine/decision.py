"""The result of a decision, shared by the compiled core and the reference."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision; see docs/decisions.md for what each field holds."""

    verdict: str
    reason: str
    sip_status: int
    version: int
    chat_mode: str | None = None
    lead_trigger: str | None = None
    caller: str | None = None
    called: str | None = None
    target: str | None = None
    line: str | None = None
    group: str | None = None
    members: tuple[str, ...] = ()
    caller_id: str | None = None
    destination: str | None = None
    rate_per_minute: Decimal | None = None
    increment_s: int | None = None
    max_duration_s: int | None = None
    call_id: str | None = None
    # inbound, auto caller format: the caller's two readings (national, then its digits as E.164) when its
    # digits read both ways; both are checked against the lists, and `caller` is the one that decided
    caller_readings: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RingingCall:
    """A call ringing at `user` since `since` (UTC seconds), for pickup."""

    call_id: str
    user: str
    since: int
    answered: bool = False
