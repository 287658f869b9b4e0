"""Background work every worker does beside answering calls: auto top-ups, rental renewals, call expiry.

Every worker runs these from its watcher loop; the store makes them safe to
run everywhere at once (a top-up is claimed by one worker, a renewal is a
ledger entry unique on number and date, an expiry is one UPDATE), so there is
no leader to elect and nothing stops when a worker dies.

Dates are UTC: a rental renews at 00:00 UTC of its date.  Renewals are charged
from the day the rental is first seen in force (a `renews_on` already past when
the number was added is not charged back).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from engine import CoreSnapshot
from server import metrics
from server.rules import billing, calls
from server.store.api import Store, TopupPolicy

log = logging.getLogger("callgate.jobs")

MAX_TOPUP_ATTEMPTS = 8
PRUNE_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class JobOptions:
    topup_retry_s: float = 30.0      # first retry of a declined top-up; doubles each time
    topup_retry_cap_s: float = 3600.0
    topup_stale_s: int = 60          # a claim older than this belongs to a dead worker: take it over
    gateway_latency_s: float = 0.0   # the sandbox gateway's answer time
    ring_timeout_s: int = 600        # a call ringing this long without an answer is expired
    call_max_s: int = 86_400         # an answered call this long without an end is expired
    expire_every_s: float = 5.0
    rentals_every_s: float = 60.0


def rentals_of(snap: CoreSnapshot) -> list[billing.Rental]:
    return [billing.Rental(number, billing.to_micro(fee), dt.date.fromisoformat(day))
            for number, fee, day in snap.meta.get("rentals", [])]


# tenant -> (the snapshot meta it was worked out from, the day, the policy): call endings ask for the policy,
# and working it out walks every rental of the tenant
_POLICIES: dict[str, tuple[Any, dt.date, TopupPolicy | None]] = {}


def topup_policy(snap: CoreSnapshot, today: dt.date, rentals: list[billing.Rental] | None = None
                 ) -> TopupPolicy | None:
    """Rule 7 for the tenant today: None when auto top-up is off (kept until the settings or the day change)."""
    meta = snap.meta
    cached = _POLICIES.get(snap.tenant)
    if cached is not None and cached[0] is meta and cached[1] == today:
        return cached[2]
    auto = meta.get("auto_topup") or {}
    policy = None
    if auto.get("enabled") and auto.get("amount"):
        threshold = billing.topup_threshold(rentals if rentals is not None else rentals_of(snap), today)
        policy = TopupPolicy(billing.to_micro(auto["amount"]), threshold, meta["currency"])
    _POLICIES[snap.tenant] = (meta, today, policy)
    return policy


class SlowGateway:
    """A gateway that answers after `seconds`, half before charging and half after: real card networks take
    a second or two, and the half after is the dangerous window (charged, not yet credited) that a crash
    test must be able to hit."""

    def __init__(self, gateway: billing.PaymentGateway, seconds: float) -> None:
        self.gateway, self.seconds = gateway, seconds

    def charge(self, *, key: str, tenant: str, card: billing.Card, amount_micro: int,
               currency: str) -> billing.ChargeResult:
        time.sleep(self.seconds / 2)
        result = self.gateway.charge(key=key, tenant=tenant, card=card, amount_micro=amount_micro, currency=currency)
        time.sleep(self.seconds / 2)
        return result


class Jobs:
    def __init__(self, store: Store, snapshots: Mapping[str, CoreSnapshot], gateway: billing.PaymentGateway,
                 options: JobOptions, generation: Callable[[], int] | None = None) -> None:
        self.store, self.snapshots, self.gateway, self.options = store, snapshots, gateway, options
        # what moves when a snapshot is installed or removed (Engine.generation); without it, the versions
        # of every tenant are compared on every tick
        self._generation = generation or (lambda: hash(tuple((t, s.version) for t, s in snapshots.items())))
        self._next_expire = 0.0
        self._next_rentals = 0.0
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        self._rental_generation: int | None = None

    async def tick(self) -> None:
        """One round: due top-ups now; expiry and renewals when their interval has passed."""
        await self.topups()
        now = time.monotonic()
        if now >= self._next_expire:
            self._next_expire = now + self.options.expire_every_s
            await asyncio.to_thread(self.expire)
        if now >= self._next_prune:  # the change feed keeps its newest rows only (a lagging worker reads all)
            self._next_prune = now + PRUNE_EVERY_S
            await asyncio.to_thread(self.store.prune_changes)
        generation = self._generation()
        if now >= self._next_rentals or generation != self._rental_generation:  # new settings may add rentals
            self._next_rentals = now + self.options.rentals_every_s
            self._rental_generation = generation
            await asyncio.to_thread(self.rentals, dt.datetime.now(dt.UTC).date())

    # -- top-ups -----------------------------------------------------------------

    async def topups(self, limit: int = 10) -> int:
        done = 0
        while done < limit:
            if not await asyncio.to_thread(self.charge_one):
                break
            done += 1
        return done

    def charge_one(self) -> bool:
        """Claim one due top-up and charge it; False when none is due."""
        o = self.options
        now = int(time.time())
        claimed = self.store.claim_topup(now, o.topup_stale_s)
        if claimed is None:
            return False
        topup, card = claimed
        if card is None:
            ok, ref, reason = False, "", "no card on file: add one with `callgate billing card`"
        else:
            result = self.gateway.charge(key=f"topup-{topup.id}-{topup.attempts}", tenant=topup.tenant,
                                         card=billing.Card(card.token, card.brand, card.last4),
                                         amount_micro=topup.amount_micro, currency=topup.currency)
            ok, ref, reason = result.ok, result.reference, result.decline_reason
        retry_at = None
        if not ok and topup.attempts < MAX_TOPUP_ATTEMPTS:
            retry_at = now + max(1, round(billing.retry_delay_s(topup.attempts, o.topup_retry_s,
                                                                o.topup_retry_cap_s)))
        self.store.finish_topup(topup.id, topup.attempts, ok, ref, reason, retry_at)
        fields = {"event": "topup", "tenant": topup.tenant, "topup": topup.id, "attempt": topup.attempts,
                  "amount": billing.format_amount(topup.amount_micro), "currency": topup.currency, "gateway_ref": ref}
        outcome = "no_card" if card is None else "charged" if ok else "declined" if retry_at is not None else "failed"
        metrics.TOPUPS.labels(outcome, "first" if topup.attempts <= 1 else "retry").inc()
        if ok:
            log.info("auto top-up charged", extra=fields)
        elif retry_at is not None:
            log.warning("auto top-up declined, will retry", extra={**fields, "reason": reason,
                                                                   "retry_in_s": retry_at - now})
        else:
            log.error("auto top-up failed for good", extra={**fields, "reason": reason})
        return True

    # -- rentals -------------------------------------------------------------------

    def rentals(self, today: dt.date) -> int:
        """Charge every rental renewal due up to today (idempotent: one ledger entry per number and date)."""
        charged = 0
        for tenant, snap in list(self.snapshots.items()):
            rentals = rentals_of(snap)
            if not rentals:
                continue
            since = self.store.rentals_since(tenant, [r.number for r in rentals], today.isoformat())
            policy = topup_policy(snap, today, rentals)
            for rental in rentals:
                start = dt.date.fromisoformat(since.get(rental.number, today.isoformat()))
                for number, day, fee in billing.due_renewals([rental], start, today):
                    if fee and self.store.credit(tenant, -fee, "rental", f"{number}:{day.isoformat()}",
                                                 snap.meta["currency"], policy):
                        charged += 1
                        log.info("rental renewed", extra={
                            "event": "rental", "tenant": tenant, "number": number, "date": day.isoformat(),
                            "amount": billing.format_amount(fee)})
        return charged

    # -- expiry --------------------------------------------------------------------

    def expire(self) -> int:
        """End the calls whose ENDED never came, by the rule of a late ENDED (server/calls.py `expire`):
        ringing longer than the ring timeout, or talking longer than the call max, and nothing heard of
        them for the ring timeout (a proxy replaying its events is never cut off midway)."""
        o = self.options
        now = int(time.time())
        today = dt.datetime.now(dt.UTC).date()
        limits = calls.Limits(now, call_max_s=o.call_max_s)

        def rules(call: calls.Call) -> calls.Outcome:
            snap = self.snapshots.get(call.tenant)
            if snap is None:
                return calls.expire(call, limits, "")
            return calls.expire(call, limits, snap.meta["lead_trigger"], calls.people_of(snap.meta))

        def policy(tenant: str) -> TopupPolicy | None:
            snap = self.snapshots.get(tenant)
            return topup_policy(snap, today) if snap is not None else None

        def currency(tenant: str) -> str:
            snap = self.snapshots.get(tenant)
            return str(snap.meta["currency"]) if snap is not None else ""

        expired = self.store.expire_calls(now - o.ring_timeout_s, now - o.call_max_s, now - o.ring_timeout_s,
                                          rules, policy, currency)
        for c in expired:
            log.warning("call expired: no end came in time (check the proxy's events)",
                        extra={"event": "call_expired", "tenant": c.tenant, "call_id": c.call_id,
                               "state_before": "answered" if c.answered_at else "ringing",
                               "direction": c.direction, "ringing_at": c.ringing_at, "answered_at": c.answered_at,
                               "talked_s": c.talked_s, "charge": billing.format_amount(c.charge_micro),
                               "released": billing.format_amount(c.reserved_micro)})
        return len(expired)
