"""What the hand-computed decision tests share: the documents, instants, both implementations behind one
`Decider` interface, and the fixtures that run each test against both (`impl`, `ref`, `ref_approved`)."""

from __future__ import annotations

import calendar
import json
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from engine import Decision, RingingCall, Settings, compile_settings, parse_settings, to_micro, with_documents
from engine.reference import Reference

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
    def outbound(self, user: str, destination: str, at: int, balance: Decimal | None) -> Decision: ...
    def line_rate(self, line: str, number: str) -> tuple[int, int] | None: ...
    def pickup(self, user: str, dialed: str, ringing: Sequence[RingingCall]) -> Decision: ...


Impl = Callable[..., Decider]  # (settings, version=1, approved=()) -> a Decider


class Core:
    """The compiled core through its CoreSnapshot API, with the reference's signature: a Decimal balance is
    turned into the micro-units the core takes (`to_micro`, as `engine.Engine` does), anything else is
    passed on as it is."""

    def __init__(self, settings: Settings, version: int = 1, approved: Iterable[str] = (),
                 rejected: Iterable[str] = ()) -> None:
        self.snapshot = compile_settings(settings, version=version, approved=approved)
        if rejected:  # as a worker holds them: the store's review results on the compiled snapshot
            self.snapshot = with_documents(self.snapshot, approved, {n: "rejected" for n in rejected})

    def inbound(self, caller: str, called: str, at: int) -> Decision:
        return self.snapshot.inbound(caller, called, at).to_decision("inbound")

    def outbound(self, user: str, destination: str, at: int, balance: Decimal | None) -> Decision:
        micro = to_micro(balance) if isinstance(balance, Decimal) else balance
        return self.snapshot.outbound(user, destination, at, micro).to_decision("outbound")

    def line_rate(self, line: str, number: str) -> tuple[int, int] | None:
        return self.snapshot.line_rate(line, number)

    def pickup(self, user: str, dialed: str, ringing: Sequence[RingingCall]) -> Decision:
        return self.snapshot.pickup(user, dialed, ringing).to_decision("pickup")


IMPLEMENTATIONS: dict[str, Impl] = {"core": Core, "reference": Reference}


def is_core(impl: Impl) -> bool:
    return impl is Core
