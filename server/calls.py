"""The call registry's rules: what each call event does to a call (SPEC §3 call events, §2 rules 5 and 6).

A call is created by its first RINGING and moves ringing -> answered -> ended
(or expired, when its ENDED never comes).  These functions are pure: the store
runs them inside one write transaction, so a call's record, the event that
changed it, its charge and its CRM lead are committed together or not at all.

Idempotency: every event has a key within its call (`Event.key`).  The store
records the reply under that key; an event whose key is already recorded is
a replay and gets the recorded reply, changing nothing.  The keys:

- RINGING:<user>        a call rings at one user at a time; ringing at the
                        next member of a queue is a new event (the call keeps
                        its first ringing time: pickup takes the longest-ringing)
- ANSWERED              one answer per call; a second ANSWERED by another user
                        is refused (FAILED_PRECONDITION), by the same user it
                        is a replay (a proxy retry, or the ANSWERED that
                        follows a pickup)
- TRANSFERRED:<user>:<at>  a call can be transferred many times
- ENDED                 one end per call; a retry is a replay

Out of order: ANSWERED, TRANSFERRED or ENDED for a call never reported RINGING
is NOT_FOUND (nothing recorded: the proxy may send it again after the
RINGING); ENDED before ANSWERED ends the call unanswered (no charge, no lead);
ANSWERED or TRANSFERRED after ENDED is FAILED_PRECONDITION.

CRM leads (rule 5): with `on_answer` the ANSWERED event's reply says "create
the lead now, responsible = who answered"; with `on_hangup` the ENDED event's
reply says so with the last user who talked (after transfers).  A call that
was never answered makes no lead in either mode: nobody talked with the
client.  The store keeps one lead row per call, so a lead exists exactly once
whatever the retries (and a retry's reply repeats the first one, for the
proxy whose first reply was lost).

Charges: outbound calls and forwarded legs that were answered are charged
when they end, at the rate fixed when they rang (server/billing.py rounds).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace

from engine import codes

from .billing import call_charge_micro

KINDS = ("RINGING", "ANSWERED", "TRANSFERRED", "ENDED")
DIRECTIONS = ("inbound", "outbound", "forwarded")
STATES = ("ringing", "answered", "ended", "expired")
BILLED = ("outbound", "forwarded")


class EventRefused(Exception):
    """An event that cannot apply to the call as recorded; nothing is written."""

    def __init__(self, code: str, message: str):  # code: "NOT_FOUND" | "FAILED_PRECONDITION"
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Call:
    tenant: str
    call_id: str
    direction: str
    caller: str
    called: str
    state: str
    ringing_user: str
    ringing_at: int
    answered_by: str = ""
    last_user: str = ""
    answered_at: int = 0
    ended_at: int = 0
    line: str = ""           # billed legs: the line whose rate applies
    rate_micro: int = 0      # per minute, fixed when the call first rang
    increment_s: int = 0
    talked_s: int = 0
    charge_micro: int = 0


@dataclass(frozen=True, slots=True)
class Event:
    kind: str
    user: str
    at: int
    direction: str = ""
    caller: str = ""
    called: str = ""
    line: str = ""
    rate_micro: int = 0
    increment_s: int = 0

    @property
    def key(self) -> str:
        if self.kind == "RINGING":
            return f"RINGING:{self.user}"
        if self.kind == "TRANSFERRED":
            return f"TRANSFERRED:{self.user}:{self.at}"
        return self.kind


@dataclass(frozen=True, slots=True)
class Reply:
    state: str
    create_lead: bool = False
    lead_responsible: str = ""
    talked_s: int = 0
    charge_micro: int = 0

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Reply:
        return cls(**json.loads(text))


@dataclass(frozen=True, slots=True)
class Outcome:
    call: Call
    reply: Reply
    charge_micro: int = 0    # to debit from the tenant's balance now


def check_replay(event: Event, recorded_user: str, call_id: str) -> None:
    """A recorded key: refuse an ANSWERED that names another user than the recorded answer."""
    if event.kind == "ANSWERED" and recorded_user != event.user:
        raise EventRefused("FAILED_PRECONDITION",
                           f"call {call_id!r} was already answered by {recorded_user!r}, not {event.user!r}")


def apply(call: Call | None, event: Event, tenant: str, call_id: str, lead_trigger: str) -> Outcome:
    """The call after `event`, the reply, and the charge to debit; EventRefused if it cannot apply."""
    if event.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if call is None:
        if event.kind != "RINGING":
            raise EventRefused("NOT_FOUND", f"no call {call_id!r} for tenant {tenant!r}: report RINGING first "
                                            f"({event.kind} before RINGING is not recorded)")
        if event.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        new = Call(tenant, call_id, event.direction, event.caller, event.called, "ringing", event.user, event.at,
                   line=event.line, rate_micro=event.rate_micro, increment_s=event.increment_s)
        return Outcome(new, Reply("ringing"))
    if call.state == "expired":
        raise EventRefused("FAILED_PRECONDITION",
                           f"call {call_id!r} expired at {call.ended_at} (no ENDED came in time); "
                           f"{event.kind} changes nothing")
    if call.state == "ended":
        raise EventRefused("FAILED_PRECONDITION", f"call {call_id!r} already ended at {call.ended_at}; "
                                                  f"a late {event.kind} changes nothing")
    if event.kind == "RINGING":
        if event.direction and event.direction != call.direction:
            raise EventRefused("FAILED_PRECONDITION",
                               f"call {call_id!r} is {call.direction}, this RINGING says {event.direction}")
        if call.state != "ringing":
            raise EventRefused("FAILED_PRECONDITION",
                               f"call {call_id!r} was already answered by {call.answered_by!r}; "
                               "it cannot ring again")
        return Outcome(replace(call, ringing_user=event.user), Reply("ringing"))
    if event.kind == "ANSWERED":
        if call.state != "ringing":
            raise EventRefused("FAILED_PRECONDITION",
                               f"call {call_id!r} was already answered by {call.answered_by!r}")
        new = replace(call, state="answered", answered_by=event.user, last_user=event.user,
                      answered_at=event.at)
        lead = lead_trigger == "on_answer"
        return Outcome(new, Reply("answered", lead, event.user if lead else ""))
    if event.kind == "TRANSFERRED":
        if call.state == "ringing":  # a transfer before anyone answered: it now rings there
            return Outcome(replace(call, ringing_user=event.user), Reply("ringing"))
        return Outcome(replace(call, last_user=event.user), Reply("answered"))
    # ENDED
    if call.state == "ringing":
        return Outcome(replace(call, state="ended", ended_at=event.at), Reply("ended"))
    talked = min(max(event.at - call.answered_at, 0), codes.MAX_CALL_SECONDS)
    charge = call_charge_micro(call.rate_micro, call.increment_s, talked) if call.direction in BILLED else 0
    lead = lead_trigger == "on_hangup"
    new = replace(call, state="ended", ended_at=event.at, talked_s=talked, charge_micro=charge)
    return Outcome(new, Reply("ended", lead, call.last_user if lead else "", talked, charge), charge)
