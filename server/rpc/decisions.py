"""The `Decisions` service: what a SIP proxy asks (Inbound, Outbound, Pickup, call events, batches, the stream).

Decisions run on the worker's in-memory snapshots and never wait on the store, except for the call registry
(pickup, call events) and the balances the worker last read.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import time
from collections.abc import AsyncIterator

import grpc
import numpy as np

from callgate.v1 import decisions_pb2, decisions_pb2_grpc
from engine import INBOUND_DTYPE, OUTBOUND_DTYPE, CoreDecision, CoreSnapshot, codes
from engine.decision import RingingCall
from engine.settings import E164
from server import metrics
from server.rpc.errors import RequestError, abort, code_of, method, status_for
from server.rpc.messages import ReplyCache, decision_message
from server.rpc.replicas import SnapshotFeed
from server.rpc.requests import KIND_NUMBERS, MAX_BATCH, MAX_EVENTS, MAX_TEXT, MAX_WIDTH, _input_error, _now, _text
from server.rules import billing, calls
from server.worker import jobs
from server.worker.state import State

log = logging.getLogger("callgate.service")


class DecisionsServicer(decisions_pb2_grpc.DecisionsServicer):
    def __init__(self, state: State) -> None:
        self.state = state
        self.snapshots = state.engine.snapshots  # a live view: Engine.install replaces entries under it
        self.replies = ReplyCache()
        self._people: dict[str, tuple[CoreSnapshot, frozenset[str]]] = {}
        self.feed = SnapshotFeed(state)

    def _snapshot(self, tenant: str) -> CoreSnapshot:
        snap = self.snapshots.get(tenant)
        if snap is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"tenant {tenant[:64]!r} has no settings: push them with Admin.PushSettings")
        return snap

    # -- the decisions, shared by unary calls and the stream --------------
    # (the hot path: every line here is paid on every call)
    def inbound(self, r: decisions_pb2.InboundRequest) -> decisions_pb2.Decision:
        snap = self._snapshot(r.tenant)
        caller, called = r.caller, r.called
        if len(caller) > MAX_TEXT or len(called) > MAX_TEXT:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"caller and called are at most {MAX_TEXT} "
                                                                 "characters long")
        d = snap.inbound(caller, called, r.at or int(time.time()))
        verdict = d.verdict_code
        metrics.count(verdict, d.reason_code)
        if verdict == codes.ERROR:  # the input could not be decided on: a status, never a decision
            raise _input_error(d)
        if r.explain:
            return decision_message(d, "inbound", snap, True)
        return self.replies.inbound(snap, d)

    def outbound(self, r: decisions_pb2.OutboundRequest) -> decisions_pb2.Decision:
        snap = self._snapshot(r.tenant)
        balance = self.state.balances.get(r.tenant, 0)
        d = snap.outbound(_text("user", r.user), _text("destination", r.destination), r.at or int(time.time()),
                          balance)  # the core reads the instant itself: a bad one is its INVALID_TIME
        metrics.count(d.verdict_code, d.reason_code)
        if d.verdict_code == codes.ERROR:
            raise _input_error(d)
        return decision_message(d, "outbound", snap, r.explain)

    async def pickup(self, r: decisions_pb2.PickupRequest) -> decisions_pb2.Decision:
        snap = self._snapshot(r.tenant)
        user, dialed = _text("user", r.user), _text("dialed", r.dialed)
        answered_at = _now(r.at)
        store = self.state.store
        # a call that started ringing before the ring timeout (a late RINGING a proxy replays) is recorded,
        # never offered
        now = int(time.time())
        rows = await asyncio.to_thread(store.ringing_calls, r.tenant, now - self.state.events.ring_timeout_s)
        ringing = [RingingCall(call_id, ringing_user, since) for call_id, ringing_user, since in rows]
        lead_trigger = snap.meta["lead_trigger"]
        while True:  # another user may claim the chosen call first: then take the next one
            d = snap.pickup(user, dialed, ringing)
            if d.verdict_code == codes.ERROR:
                raise _input_error(d)
            if d.verdict != "INTERCEPT" or r.dry_run:  # a dry run only says which call it would take
                metrics.PICKUPS.labels("dry_run" if d.verdict == "INTERCEPT" else "none").inc()
                break
            call_id = d.call_id
            assert call_id is not None
            # The pickup is the call's ANSWERED event: the store lets exactly one user answer, and
            # the picker's own ANSWERED that follows is a replay that returns the lead hint.
            event = calls.Event("ANSWERED", user, answered_at)
            try:
                await asyncio.wrap_future(store.submit_call_event(
                    r.tenant, call_id, event, functools.partial(
                        calls.apply, event=event, tenant=r.tenant, call_id=call_id, lead_trigger=lead_trigger,
                        limits=self.state.events.limits(int(time.time())), people=self.people(snap)),
                    None, snap.meta["currency"]))
                metrics.PICKUPS.labels("intercepted").inc()
                break
            except calls.EventRefused as exc:
                if exc.code == "INVALID_ARGUMENT":  # the pickup's instant: no other call would take it
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
                metrics.PICKUPS.labels("raced").inc()
                ringing = [c for c in ringing if c.call_id != call_id]  # shrinks every turn: the loop ends
        metrics.count(d.verdict_code, d.reason_code)
        return decision_message(d, "pickup", snap, r.explain)

    def _ringing(self, snap: CoreSnapshot, r: decisions_pb2.CallEventRequest, user: str, at: int) -> calls.Event:
        """A RINGING as the registry keeps it: the numbers as the decision read them (E.164; the strings the
        proxy sent kept beside them), and the line and rate that will bill it."""
        direction = r.direction or "inbound"
        if direction not in calls.DIRECTIONS:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "direction is inbound, outbound or forwarded")
        caller_raw, called_raw = _text("caller", r.caller), _text("called", r.called)
        # an outbound call's route and rate whatever the balance (its hold is what the balance allows): decided
        # once, for the numbers it reads and for the billing
        routed = snap.outbound(user, called_raw, at, None) if direction == "outbound" else None
        line, rate, increment = self._billing(snap, r, direction, routed)
        caller, called = caller_raw, called_raw
        if direction == "inbound":
            d = snap.inbound(caller_raw, called_raw, at)
            if d.verdict_code != codes.ERROR:  # read: the E.164 numbers (a withheld caller: none)
                caller, called = d.caller or "", d.called or called_raw
        elif routed is not None:
            caller, called = routed.caller_id or caller_raw, routed.called or called_raw
        return calls.Event("RINGING", user, at, direction, caller, called, line, rate, increment,
                           caller_raw=caller_raw, called_raw=called_raw)

    def people(self, snap: CoreSnapshot) -> frozenset[str]:
        """The tenant's users and queue-group members: who a CRM lead may name (kept per snapshot)."""
        cached = self._people.get(snap.tenant)
        if cached is not None and cached[0] is snap:
            return cached[1]
        found = calls.people_of(snap.meta)
        self._people[snap.tenant] = (snap, found)
        return found

    def _billing(self, snap: CoreSnapshot, r: decisions_pb2.CallEventRequest, direction: str,
                 routed: CoreDecision | None) -> tuple[str, int, int]:
        """(line, per-minute rate, increment) that will bill a call that rings now (`routed`: an outbound
        call's decision whatever the balance)."""
        if direction == "outbound":
            assert routed is not None
            d = routed
        if direction == "outbound" and r.line:
            # the line the Outbound decision chose: its rate for the destination, whatever rule changed since
            # the decision (a block pushed between the INVITE and its 180 must not leave the call unbilled)
            line, destination = _text("line", r.line), d.called or r.called
            found = snap.line_rate(line, destination) if E164.fullmatch(destination) else None
            if found is None:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"line {line!r} has no rate for {destination!r}: the call cannot be billed")
            return line, found[0], found[1]
        if direction == "outbound":
            # the line and rate an outbound decision gives, whatever the balance is now (the hold is what it allows)
            if d.verdict_code == codes.ERROR:
                raise _input_error(d)
            if d.verdict != "ALLOW":
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"an outbound call from {r.user!r} to {r.called!r} is not allowed "
                                   f"({d.reason}): it cannot ring")
            assert d.rate_micro is not None and d.increment_s is not None and d.line is not None
            return d.line, d.rate_micro, d.increment_s
        if direction == "forwarded":
            line = _text("line", r.line)
            if not E164.fullmatch(r.called):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "a forwarded leg's called must be the E.164 number it was forwarded to")
            found = snap.line_rate(line, r.called)
            if found is None:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"line {line!r} has no rate for {r.called}: the forwarded leg cannot be billed")
            return line, found[0], found[1]
        return "", 0, 0

    async def call_event(self, r: decisions_pb2.CallEventRequest) -> decisions_pb2.CallEventReply:
        start = time.perf_counter()
        kind = decisions_pb2.CallEventRequest.Kind.Name(r.kind) if r.kind in KIND_NUMBERS else "invalid"
        try:
            out = await self._call_event(r)
        except Exception as exc:
            metrics.CALL_EVENTS.labels(kind, code_of(exc).name).inc()
            raise
        metrics.CALL_EVENTS.labels(kind, "recorded").inc()
        metrics.CALL_EVENT_SECONDS.labels(kind).observe(time.perf_counter() - start)
        if out.outcome:
            metrics.CALLS_ENDED.labels(out.outcome).inc()
        return out

    async def _call_event(self, r: decisions_pb2.CallEventRequest) -> decisions_pb2.CallEventReply:
        snap = self._snapshot(r.tenant)
        call_id = _text("call_id", r.call_id)
        if not call_id:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "call_id is required")
        at = _now(r.at)
        kind = decisions_pb2.CallEventRequest.Kind.Name(r.kind) if r.kind in KIND_NUMBERS else ""
        if kind not in calls.KINDS:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "kind must be RINGING, ANSWERED, TRANSFERRED or ENDED")
        user = _text("user", r.user)
        if kind != "ENDED" and not user:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{kind} needs the user " + ("it rings at" if kind == "RINGING" else "who talks"))
        if r.outcome and (kind != "ENDED" or r.outcome not in calls.OUTCOMES):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"outcome is for ENDED only: one of {', '.join(calls.OUTCOMES)}")
        if kind == "RINGING":
            event = self._ringing(snap, r, user, at)
        else:
            event = calls.Event(kind, user, at, outcome=r.outcome)
        currency = snap.meta["currency"]
        rules = functools.partial(calls.apply, event=event, tenant=r.tenant, call_id=call_id,
                                  lead_trigger=snap.meta["lead_trigger"],
                                  limits=self.state.events.limits(int(time.time())), people=self.people(snap))
        # a hold (RINGING) and a charge (ENDED) may take the available credit below the top-up threshold
        policy = jobs.topup_policy(snap, dt.datetime.now(dt.UTC).date()) if kind in ("RINGING", "ENDED") else None
        try:
            # no thread waits for the commit: the store's group commit wakes this coroutine when done
            reply = await asyncio.wrap_future(self.state.store.submit_call_event(
                r.tenant, call_id, event, rules, policy, currency))
        except calls.EventRefused as exc:
            raise RequestError(getattr(grpc.StatusCode, exc.code), str(exc)) from None
        out = decisions_pb2.CallEventReply(call_id=call_id, version=snap.version, state=reply.state,
                                           create_lead=reply.create_lead, lead_responsible=reply.lead_responsible,
                                           lead_unassigned=reply.lead_unassigned, talked_seconds=reply.talked_s,
                                           currency=currency)
        if kind == "ENDED":
            out.charge = billing.format_amount(reply.charge_micro)
            out.outcome = reply.outcome
        if kind == "RINGING":
            out.max_duration_s = reply.max_duration_s
            out.reserved = billing.format_amount(reply.reserved_micro)
            if reply.reason:
                out.reason = decisions_pb2.Reason.Value(reply.reason)
        return out

    async def call_events(self, r: decisions_pb2.CallEventBatch) -> decisions_pb2.CallEventBatchReply:
        """Each event answered as CallEvent answers it, in order; one call's events one after the other, up to
        the first not answered (the rest ABORTED, not tried: an ENDED applied after its call's failed ANSWERED
        would end the call unanswered, unbilled), the calls together (their commits grouped: the point of a
        batch, with one RPC's cost for all)."""
        n = len(r.events)
        if not 0 < n <= MAX_EVENTS:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"1 to {MAX_EVENTS:,} events per call, not {n:,}")
        reply = decisions_pb2.CallEventBatchReply()
        results = [reply.results.add() for _ in range(n)]
        calls_of: dict[tuple[str, str], list[int]] = {}
        for i, event in enumerate(r.events):
            calls_of.setdefault((event.tenant, event.call_id), []).append(i)

        async def one_call(indexes: list[int]) -> None:
            for at, i in enumerate(indexes):
                try:
                    results[i].reply.CopyFrom(await self.call_event(r.events[i]))
                except Exception as exc:  # this event's answer; the call's later events are not tried
                    code, message = status_for(exc, "CallEvents")
                    results[i].error, results[i].error_code = message, code.value[0]
                    for later in indexes[at + 1:]:
                        results[later].error = (f"not tried: event {i} of the batch, of the same call, was not "
                                                "answered; send this one again after it")
                        results[later].error_code = grpc.StatusCode.ABORTED.value[0]
                    return

        await asyncio.gather(*(one_call(indexes) for indexes in calls_of.values()))
        return reply

    # -- unary RPCs: the decision above, refusals as gRPC statuses -----------
    Inbound = method(inbound, timed="inbound")
    Outbound = method(outbound, timed="outbound")
    Pickup = method(pickup)
    CallEvent = method(call_event)
    CallEvents = method(call_events)
    CallEventsInOrder = method(call_events)   # (the same: its name says the rule, for a client to rely on)

    def batch(self, r: decisions_pb2.BatchRequest) -> decisions_pb2.BatchReply:
        snap = self._snapshot(r.tenant)
        n, w = r.count, r.width
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if r.kind not in (decisions_pb2.BatchRequest.INBOUND, decisions_pb2.BatchRequest.OUTBOUND):
            raise RequestError(bad, "kind must be INBOUND or OUTBOUND")
        if not 0 < n <= MAX_BATCH:
            raise RequestError(bad, f"count must be 1..{MAX_BATCH}, not {n}")
        if not 0 < w <= MAX_WIDTH:
            raise RequestError(bad, f"width must be 1..{MAX_WIDTH} bytes, not {w}")
        for name, column, size in (("a", r.a, n * w), ("b", r.b, n * w), ("at", r.at, n * 8)):
            if len(column) != size:
                raise RequestError(bad, f"column {name} is {len(column)} bytes; {n} rows need {size}")
        a = np.frombuffer(r.a, dtype=f"S{w}")
        b = np.frombuffer(r.b, dtype=f"S{w}")
        at = np.frombuffer(r.at, dtype="<i8")
        if not at.all():
            at = np.where(at == 0, int(time.time()), at)
        reply = decisions_pb2.BatchReply(version=snap.version, count=n)
        if r.kind == decisions_pb2.BatchRequest.INBOUND:
            rows = snap.inbound_batch(a, b, at)
            reply.row_size = INBOUND_DTYPE.itemsize
            if r.want_tables:
                reply.lines.extend(snap.meta["lines"])
                reply.groups.extend(snap.meta["groups"])
        else:
            balance = np.full(n, self.state.balances.get(r.tenant, 0), dtype=np.int64)
            rows = snap.outbound_batch(a, b, at, balance)
            reply.row_size = OUTBOUND_DTYPE.itemsize
            if r.want_tables:
                reply.lines.extend(snap.meta["lines"])
                reply.numbers.extend(snap.meta["numbers"])
        metrics.count_batch(rows["verdict"], rows["reason"])
        reply.rows = rows.tobytes()
        return reply

    DecideBatch = method(batch)

    async def Stream(self, request_iterator: AsyncIterator[decisions_pb2.StreamRequest],
                     context: grpc.aio.ServicerContext) -> AsyncIterator[decisions_pb2.StreamReply]:
        async for req in request_iterator:
            reply = decisions_pb2.StreamReply(id=req.id)
            try:
                which = req.WhichOneof("request")
                if which == "inbound":
                    reply.decision.CopyFrom(self.inbound(req.inbound))
                elif which == "outbound":
                    reply.decision.CopyFrom(self.outbound(req.outbound))
                elif which == "pickup":
                    reply.decision.CopyFrom(await self.pickup(req.pickup))
                elif which == "call_event":
                    reply.call_event.CopyFrom(await self.call_event(req.call_event))
                else:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the request is empty")
            except Exception as exc:  # this message's answer; the stream goes on
                code, message = status_for(exc, f"Stream.{req.WhichOneof('request')}")
                reply.error = message
                reply.error_code = code.value[0]
            yield reply

    async def WatchSnapshots(self, request_iterator: AsyncIterator[decisions_pb2.WatchRequest],
                             context: grpc.aio.ServicerContext) -> AsyncIterator[decisions_pb2.SnapshotPiece]:
        """A proxy host's replica following the snapshots in force (server/rpc/replicas.py)."""
        try:
            async for piece in self.feed.watch(request_iterator, context):
                yield piece
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, "WatchSnapshots")
