"""The call registry's rules: what each call event does to a call (spec §3 call events, §2 rules 5 and 6).

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
client.  The responsible is a person of the tenant (a user or a queue-group
member): a call answered by a voicemail box or a forward target makes its
lead unassigned, flagged in the reply (`lead_unassigned`), for someone to
pick up.  The store keeps one lead row per call, so a lead exists exactly once
whatever the retries (and a retry's reply repeats the first one, for the
proxy whose first reply was lost).

Instants (spec §7): an event's instant comes from the proxy, bounded by the
server's clock (`Limits`): at most `max_skew_s` in the future, at most
`max_age_s` old, and never before the call's latest recorded instant
(RINGING <= ANSWERED <= each TRANSFERRED <= ENDED).  A late RINGING within
the age is recorded (a proxy replays what it could not deliver) but a call
that rang longer ago than the ring timeout is never offered to pickup.  A
replay (a recorded key) gets its recorded reply whatever its instant: the
checks apply to new events only.

Charges and holds: outbound calls and forwarded legs that were answered are
charged when they end, at the rate fixed when they rang (server/billing.py
rounds), for at most `call_max_s` of talk.  Their RINGING holds the credit
that the talk it allows costs (`billing.reservation`: the balance less the
other open calls' holds, up to `reserve_max_s`); the end, or the expiry, of
the call lets the hold go and charges what was talked.  The expiry job ends a
call the proxy never ended by the same rule (`expire`): what was talked, up
to the cap, is charged.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, replace
from typing import Any

from engine import codes
from server.rules.billing import call_charge_micro, reservation

KINDS = ("RINGING", "ANSWERED", "TRANSFERRED", "ENDED")
DIRECTIONS = ("inbound", "outbound", "forwarded")
STATES = ("ringing", "answered", "ended", "expired")
OPEN = ("ringing", "answered")
BILLED = ("outbound", "forwarded")
# how a call ended (ENDED's outcome); "" lets the call's state say: answered if it was, else no_answer
OUTCOMES = ("answered", "busy", "no_answer", "cancelled", "failed")


class EventRefused(Exception):
    """An event that cannot apply to the call as recorded; nothing is written."""

    def __init__(self, code: str, message: str):  # code: "NOT_FOUND" | "FAILED_PRECONDITION" | "INVALID_ARGUMENT"
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
    last_at: int = 0         # the latest instant of the call's recorded events (the proxy's clock)
    updated_at: int = 0      # when the last event was recorded (the server's clock)
    reserved_micro: int = 0  # credit held for the call while it is open (billed legs)
    reserved_s: int = 0      # the talk that hold pays for
    outcome: str = ""        # ended calls: OUTCOMES
    caller_raw: str = ""     # caller and called as the proxy sent them (caller, called: as E.164)
    called_raw: str = ""


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
    outcome: str = ""        # ENDED
    caller_raw: str = ""     # RINGING: as the proxy sent them
    called_raw: str = ""

    @property
    def key(self) -> str:
        if self.kind == "RINGING":
            return f"RINGING:{self.user}"
        if self.kind == "TRANSFERRED":
            return f"TRANSFERRED:{self.user}:{self.at}"
        return self.kind


@dataclass(frozen=True, slots=True)
class Limits:
    """The server's bounds on events (its clock and the `callgate serve` options)."""

    now: int
    max_skew_s: int = 120            # an event at most this far in the server's future
    max_age_s: int = 86_400          # ... and at most this old
    call_max_s: int = codes.MAX_CALL_SECONDS  # talk billed at most
    reserve_max_s: int = 3_600       # talk one call's hold covers at most


@dataclass(frozen=True, slots=True)
class EventOptions:
    """How a server bounds call events and holds credit (the `callgate serve` options of the same names)."""

    max_clock_skew_s: int = 120
    max_event_age_s: int = 86_400
    ring_timeout_s: int = 600
    call_max_s: int = codes.MAX_CALL_SECONDS
    reserve_max_s: int = 3_600

    def limits(self, now: int) -> Limits:
        return Limits(now, self.max_clock_skew_s, self.max_event_age_s, self.call_max_s, self.reserve_max_s)


@dataclass(frozen=True, slots=True)
class Account:
    """The tenant's money as the event's transaction sees it (micro-units)."""

    balance_micro: int = 0
    reserved_micro: int = 0          # held by every open call

    @property
    def available_micro(self) -> int:
        return self.balance_micro - self.reserved_micro


@dataclass(frozen=True, slots=True)
class Reply:
    state: str
    create_lead: bool = False
    lead_responsible: str = ""
    talked_s: int = 0
    charge_micro: int = 0
    max_duration_s: int = 0          # RINGING: the talk the call may have (billed: what its hold pays for)
    reserved_micro: int = 0          # RINGING of a billed leg: the credit held
    reason: str = ""                 # RINGING with max_duration_s 0: why (INSUFFICIENT_FUNDS)
    lead_unassigned: bool = False    # create_lead, but nobody who talked is a person of the tenant
    outcome: str = ""                # ENDED: how the call ended

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Reply:
        return cls(**json.loads(text))  # replies recorded before a field existed get its default


@dataclass(frozen=True, slots=True)
class Outcome:
    call: Call
    reply: Reply
    charge_micro: int = 0    # to debit from the tenant's balance now
    hold_micro: int = 0      # the change of the tenant's held credit (+ a new hold, - a released one)


def check_replay(event: Event, recorded_user: str, call_id: str) -> None:
    """A recorded key: refuse an ANSWERED that names another user than the recorded answer."""
    if event.kind == "ANSWERED" and recorded_user != event.user:
        raise EventRefused("FAILED_PRECONDITION",
                           f"call {call_id!r} was already answered by {recorded_user!r}, not {event.user!r}")


def check_instant(event: Event, limits: Limits) -> None:
    """The event's instant against the server's clock (INVALID_ARGUMENT, saying which bound)."""
    ahead = event.at - limits.now
    if ahead > limits.max_skew_s:
        raise EventRefused("INVALID_ARGUMENT",
                           f"{event.kind} at {event.at} is {ahead} s ahead of the server's clock, more than "
                           f"--max-clock-skew-s {limits.max_skew_s}: check the proxy's clock (NTP)")
    if -ahead > limits.max_age_s:
        raise EventRefused("INVALID_ARGUMENT",
                           f"{event.kind} at {event.at} is {-ahead} s old, more than --max-event-age-s "
                           f"{limits.max_age_s}: a call that old is over, the event is not recorded")


def talk_charge(call: Call, until: int, limits: Limits) -> tuple[int, int]:
    """(talked seconds up to the cap, charge) of an answered call that stops talking at `until`."""
    talked = min(max(until - call.answered_at, 0), limits.call_max_s)
    return talked, call_charge_micro(call.rate_micro, call.increment_s, talked) if call.direction in BILLED else 0


def people_of(meta: dict[str, Any]) -> frozenset[str]:
    """Who a tenant's CRM lead may name: its users and its queue groups' members (from a snapshot's meta)."""
    return frozenset(meta.get("users", ())) | frozenset(m for group in meta.get("members", ()) for m in group)


def lead(user: str, people: frozenset[str] | None) -> tuple[str, bool]:
    """(responsible, unassigned) of a lead: the user if a person of the tenant, else nobody, flagged."""
    if people is None or user in people:
        return user, False
    return "", True


def apply(call: Call | None, account: Account, event: Event, tenant: str, call_id: str, lead_trigger: str,
          limits: Limits, people: frozenset[str] | None = None) -> Outcome:
    """The call after `event`, the reply, the charge and the hold; EventRefused if it cannot apply.

    `people`: the tenant's users and queue-group members, who may be a lead's responsible (None: anyone)."""
    if event.kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    if event.outcome and event.outcome not in OUTCOMES:
        raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}")
    check_instant(event, limits)
    now = limits.now
    if call is None:
        if event.kind != "RINGING":
            raise EventRefused("NOT_FOUND", f"no call {call_id!r} for tenant {tenant!r}: report RINGING first "
                                            f"({event.kind} before RINGING is not recorded)")
        if event.direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {', '.join(DIRECTIONS)}")
        new = Call(tenant, call_id, event.direction, event.caller, event.called, "ringing", event.user, event.at,
                   line=event.line, rate_micro=event.rate_micro, increment_s=event.increment_s, last_at=event.at,
                   updated_at=now, caller_raw=event.caller_raw, called_raw=event.called_raw)
        if event.direction not in BILLED:
            return Outcome(new, Reply("ringing", max_duration_s=limits.call_max_s))
        covered, held = reservation(event.rate_micro, event.increment_s, account.available_micro,
                                    min(limits.reserve_max_s, limits.call_max_s))
        new = replace(new, reserved_micro=held, reserved_s=covered)
        return Outcome(new, Reply("ringing", max_duration_s=covered, reserved_micro=held,
                                  reason="" if covered else "INSUFFICIENT_FUNDS"), hold_micro=held)
    if call.state == "expired":
        raise EventRefused("FAILED_PRECONDITION",
                           f"call {call_id!r} expired at {call.ended_at} (no ENDED came in time); "
                           f"{event.kind} changes nothing")
    if call.state == "ended":
        raise EventRefused("FAILED_PRECONDITION", f"call {call_id!r} already ended at {call.ended_at}; "
                                                  f"a late {event.kind} changes nothing")
    if event.at < call.last_at:
        raise EventRefused("FAILED_PRECONDITION",
                           f"{event.kind} at {event.at} is before the call's last recorded event at {call.last_at}: "
                           "instants never go back within a call (RINGING <= ANSWERED <= TRANSFERRED <= ENDED)")
    moved = replace(call, last_at=event.at, updated_at=now)
    if event.kind == "RINGING":
        if event.direction and event.direction != call.direction:
            raise EventRefused("FAILED_PRECONDITION",
                               f"call {call_id!r} is {call.direction}, this RINGING says {event.direction}")
        if call.state != "ringing":
            raise EventRefused("FAILED_PRECONDITION",
                               f"call {call_id!r} was already answered by {call.answered_by!r}; "
                               "it cannot ring again")
        allowed = call.reserved_s if call.direction in BILLED else limits.call_max_s
        return Outcome(replace(moved, ringing_user=event.user),
                       Reply("ringing", max_duration_s=allowed, reserved_micro=call.reserved_micro,
                             reason="" if allowed else "INSUFFICIENT_FUNDS"))
    if event.kind == "ANSWERED":
        if call.state != "ringing":
            raise EventRefused("FAILED_PRECONDITION",
                               f"call {call_id!r} was already answered by {call.answered_by!r}")
        new = replace(moved, state="answered", answered_by=event.user, last_user=event.user, answered_at=event.at)
        if lead_trigger != "on_answer":
            return Outcome(new, Reply("answered"))
        responsible, unassigned = lead(event.user, people)
        return Outcome(new, Reply("answered", True, responsible, lead_unassigned=unassigned))
    if event.kind == "TRANSFERRED":
        if call.state == "ringing":  # a transfer before anyone answered: it now rings there
            return Outcome(replace(moved, ringing_user=event.user), Reply("ringing"))
        return Outcome(replace(moved, last_user=event.user), Reply("answered"))
    # ENDED: the hold goes, what was talked is charged
    if call.state == "ringing":
        outcome = event.outcome if event.outcome not in ("", "answered") else "no_answer"
        return Outcome(replace(moved, state="ended", ended_at=event.at, outcome=outcome),
                       Reply("ended", outcome=outcome), hold_micro=-call.reserved_micro)
    talked, charge = talk_charge(call, event.at, limits)
    new = replace(moved, state="ended", ended_at=event.at, talked_s=talked, charge_micro=charge, outcome="answered")
    if lead_trigger != "on_hangup":
        return Outcome(new, Reply("ended", talked_s=talked, charge_micro=charge, outcome="answered"), charge,
                       -call.reserved_micro)
    responsible, unassigned = lead(call.last_user, people)
    return Outcome(new, Reply("ended", True, responsible, talked, charge, lead_unassigned=unassigned,
                              outcome="answered"), charge, -call.reserved_micro)


def expire(call: Call, limits: Limits, lead_trigger: str, people: frozenset[str] | None = None) -> Outcome:
    """The expiry job's end of a call that no ENDED came for: the same rule as a late ENDED at `limits.now`
    (the hold goes; an answered call is charged what it talked, up to the cap), the state `expired`."""
    if call.state not in OPEN:
        raise ValueError(f"call {call.call_id!r} is {call.state}, not open")
    if call.state == "ringing":
        return Outcome(replace(call, state="expired", ended_at=limits.now, updated_at=limits.now), Reply("expired"),
                       hold_micro=-call.reserved_micro)
    talked, charge = talk_charge(call, limits.now, limits)
    new = replace(call, state="expired", ended_at=limits.now, updated_at=limits.now, talked_s=talked,
                  charge_micro=charge)
    if lead_trigger != "on_hangup" or talked <= 0:
        return Outcome(new, Reply("expired", talked_s=talked, charge_micro=charge), charge, -call.reserved_micro)
    responsible, unassigned = lead(call.last_user, people)
    return Outcome(new, Reply("expired", True, responsible, talked, charge, lead_unassigned=unassigned), charge,
                   -call.reserved_micro)
