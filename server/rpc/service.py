"""The gRPC servicers: `Decisions` for SIP proxies, `Admin` for admins.

Decisions run on the worker's in-memory snapshots (`engine.Engine`) and
never wait on the store, except for the call registry (pickup, call events)
and the balance cache.  Admin writes go to the store; the compile of a
pushed document runs in a separate process (`Compiler`), so that the event
loop keeps answering while a million-number blacklist compiles.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import functools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import numpy as np

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from engine import INBOUND_DTYPE, OUTBOUND_DTYPE, CoreDecision, CoreSnapshot, codes
from engine.decision import RingingCall
from engine.engine import Engine
from engine.settings import E164, SettingsError, tenant_id_problem
from engine.snapshot import Built, build, line_rate, loads, with_documents
from server import metrics
from server.rpc import auth
from server.rpc.errors import RequestError, abort, status_for
from server.rules import billing, calls, documents, numbers, tokens
from server.store.api import (
    AuditRow,
    CardRecord,
    DocumentFile,
    DocumentSet,
    NumberOwner,
    SnapshotDamaged,
    Store,
    StoreError,
    TenantFacts,
    TenantMissing,
    VersionConflict,
    VersionWrite,
)
from server.worker import jobs
from server.worker.spool import Spool

log = logging.getLogger("callgate.service")

MAX_TEXT = 256            # longest number, user or tenant string a decision accepts
MAX_BATCH = 100_000       # rows per DecideBatch
MAX_WIDTH = 64            # bytes per text cell in a batch
MAX_DOCUMENT_FILES = 10   # images per document upload
LIST_NAMES = {admin_pb2.PatchBlacklistRequest.BLACKLIST: "blacklist",
              admin_pb2.PatchBlacklistRequest.OFFHOURS_BLACKLIST: "offhours_blacklist"}


KIND_NUMBERS = frozenset(decisions_pb2.CallEventRequest.Kind.values())


def _text(name: str, value: str) -> str:
    if len(value) > MAX_TEXT:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{name} is {len(value)} characters long; at most {MAX_TEXT}")
    return value


def _tenant_arg(name: str, value: str) -> str:
    """An Admin request's tenant id, by the one rule for tenant ids (INVALID_ARGUMENT otherwise)."""
    problem = tenant_id_problem(value)
    if problem:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{name}: {problem}")
    return value


def _number_arg(name: str, value: str) -> str:
    if not E164.fullmatch(value):
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f"{name} {value[:32]!r} is not an E.164 number (+ and 8 to 15 digits)")
    return value


def _now(at: int) -> int:
    """A request's instant: UTC seconds in the engine's range, or 0 for now; else INVALID_ARGUMENT."""
    if at and not codes.MIN_INSTANT <= at < codes.MAX_INSTANT:
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           "at must be UTC seconds in 2000-01-01 .. 2100-01-01, or 0 for now")
    return at if at else int(time.time())


def _compile_process_init(parent: int) -> None:
    """In the compile process: yield the CPU to the worker answering calls, and leave when it is gone.

    The nice value matters on small machines: a compile takes a whole core
    for about a second per million listed numbers, and must not take it from
    the decisions.  The parent watch covers kill -9 of the worker.
    """
    import threading

    with contextlib.suppress(OSError):
        os.nice(10)
    # SCHED_IDLE: run only on a core nothing else wants; nice 10 alone still took a share of a
    # contended core from the worker's decisions on a 2-core machine
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def build_file(path: str, fmt: str | None) -> Built:
    """In the compile process: build from a document written to a file."""
    with open(path, "rb") as handle:
        return build(handle.read(), fmt)


class Compiler:
    """Validates and compiles pushed documents in a separate process."""

    def __init__(self, spool: Spool) -> None:
        self.spool = spool  # big documents reach the compile process through its files
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            self._pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                initializer=_compile_process_init, initargs=(os.getpid(),))
        return self._pool

    def build_blocking(self, document: bytes, fmt: str | None) -> Built:
        """From a thread: compile in the pool and wait (the caller's thread, not the event loop).

        A big document goes to the compile process through a spool file, not
        through pickle: pickling 20 MB holds the GIL for tens of milliseconds
        in the worker that is answering calls, writing a file does not.
        """
        if len(document) < 1 << 20:
            return self._run(build, document, fmt)
        with self.spool.file() as handle:
            handle.write(document)
            handle.flush()
            return self._run(build_file, handle.name, fmt)

    def _run(self, fn: Callable[..., Built], what: str | bytes, fmt: str | None) -> Built:
        try:
            return self._executor().submit(fn, what, fmt).result()
        except concurrent.futures.process.BrokenProcessPool:
            self._pool = None  # the compile process died (e.g. out of memory): start afresh next time
            raise

    async def warm(self) -> None:
        """Start the compile process now, not at the first push: a spawned interpreter imports numpy and
        the engine at normal priority before its initializer lowers it, which took CPU from decisions
        in the middle of the first push (measured as slow calls right where the compile began)."""
        await asyncio.get_running_loop().run_in_executor(None, lambda: self._executor().submit(os.getpid).result())

    async def build(self, document: bytes, fmt: str | None) -> Built:
        return await asyncio.get_running_loop().run_in_executor(None, self.build_blocking, document, fmt)

    async def build_path(self, path: str, fmt: str | None) -> Built:
        """Compile a document already written to a file (a push that arrived in pieces)."""
        return await asyncio.get_running_loop().run_in_executor(None, self._run, build_file, path, fmt)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)


class State:
    """What one worker holds: the engine (snapshots), balances, the store handle."""

    def __init__(self, store: Store, compiler: Compiler, events: calls.EventOptions | None = None) -> None:
        self.store = store
        self.compiler = compiler
        self.events = events or calls.EventOptions()
        self.engine = Engine()
        # what each tenant may still spend: its balance less what its calls in progress hold
        self.balances: dict[str, int] = {}
        self.documents: dict[str, int] = {}  # the store's per-tenant document counter last applied
        self.started = time.monotonic()
        self.decisions = 0
        # tenants whose new version this worker is committing and installing itself: the
        # watcher leaves them alone (else it loads the same big snapshot a second time)
        self.installing: set[str] = set()
        self.failed: dict[str, tuple[int, float]] = {}  # tenant -> (version that failed to install, retry after)

    async def install_blob(self, tenant: str, version: int, blob: bytes) -> None:
        # loads() parses container headers and builds the lookup indexes, mostly without the GIL
        snap = await asyncio.to_thread(loads, blob, version)
        if snap.tenant != tenant:
            raise RuntimeError(f"snapshot of version {version} is for {snap.tenant!r}, not {tenant!r}")
        if snap.meta.get("documents_required"):
            # approvals live in the store, not in the settings: a new version keeps them
            snap = with_documents(snap, await asyncio.to_thread(self.store.approved_numbers, tenant))
        current = self.engine._snapshots.get(tenant)
        if current is None or current.version < version:
            self.engine.install(snap)
            metrics.TENANT_VERSION.labels(tenant).set(version)

    async def apply_documents(self, tenant: str) -> None:
        """Put the store's document approvals in force for a tenant, without a settings push."""
        current = self.engine._snapshots.get(tenant)
        if current is None or not current.meta.get("documents_required"):
            return
        approved = await asyncio.to_thread(self.store.approved_numbers, tenant)
        latest = self.engine._snapshots.get(tenant)
        if latest is not None and latest.version == current.version:  # not replaced meanwhile
            self.engine.install(with_documents(latest, approved))

    async def refresh(self) -> list[tuple[str, int]]:
        """Bring every tenant to the version in force in the store; returns what changed.

        The check itself runs in the event loop (microseconds, never waits on
        a lock); only a changed tenant costs thread work (fetching and loading
        its snapshot).
        """
        poll = self.store.poll()
        if poll is None:  # the store is busy this instant: try at the next tick
            return []
        self.balances = {t: poll.available(t) for t in poll.balances.keys() | poll.reserved.keys()}
        for tenant, counter in poll.documents.items():
            if self.documents.get(tenant) != counter:
                await self.apply_documents(tenant)
                self.documents[tenant] = counter
        changed = []
        now = time.monotonic()
        for tenant, version in poll.versions.items():
            current = self.engine._snapshots.get(tenant)
            if (current is not None and current.version >= version) or tenant in self.installing:
                continue
            failed = self.failed.get(tenant)
            if failed is not None and failed[0] == version and now < failed[1]:
                continue  # this version failed to install a moment ago: not on every tick
            try:
                await self._install_version(tenant, version)
            except Exception as exc:  # one tenant's trouble never stops the others from being brought up to date
                self.failed[tenant] = (version, now + 5.0)
                if failed is None or failed[0] != version:
                    log.error("tenant %s version %s cannot be installed: %s", tenant, version, exc,
                              exc_info=not isinstance(exc, StoreError),
                              extra={"event": "install_failed", "tenant": tenant, "version": version})
                continue
            self.failed.pop(tenant, None)
            changed.append((tenant, version))
        return changed

    async def _install_version(self, tenant: str, version: int) -> None:
        """Install the stored snapshot of a version; compile its document again when the blob is gone, damaged
        (its checksum) or refused by the loader, and put the good blob back in the store."""
        why = ""
        try:
            blob = await asyncio.to_thread(self.store.snapshot, tenant, version)
        except SnapshotDamaged as exc:
            blob, why = None, "checksum"
            log.error("%s: compiling it again from its document", exc,
                      extra={"event": "snapshot_damaged", "tenant": tenant, "version": version})
        if blob is not None:
            try:
                await self.install_blob(tenant, version, blob)
                return
            except ValueError as exc:  # the core's loader refuses what it cannot follow safely
                why = "refused"
                log.error("tenant %s version %s: the stored snapshot was refused (%s): compiling it again from its "
                          "document", tenant, version, exc,
                          extra={"event": "snapshot_damaged", "tenant": tenant, "version": version})
        record = await asyncio.to_thread(self.store.get_version, tenant, version)
        assert record.document is not None
        built = await self.compiler.build(record.document, "json")
        metrics.SNAPSHOT_REBUILDS.labels(why or "missing").inc()
        if why:
            replaced = await asyncio.to_thread(self.store.replace_snapshot, tenant, version, built.blob)
            log.warning("tenant %s version %s: snapshot compiled again from its document%s", tenant, version,
                        " and stored in place of the damaged one" if replaced else "",
                        extra={"event": "snapshot_rebuilt", "tenant": tenant, "version": version, "reason": why})
        await self.install_blob(tenant, version, built.blob)


def decision_message(d: CoreDecision, kind: str, snap: CoreSnapshot, explain: bool = False
                     ) -> decisions_pb2.Decision:
    """The protobuf form of a core decision (only the fields that apply are set).

    With `explain`, also the rule in words and (inbound) the caller and
    called number as read; proxies leave it off and get smaller replies.
    """
    verdict = d.verdict_code
    fields: dict[str, Any] = {"verdict": verdict, "reason": d.reason_code, "sip_status": d.sip_status,
                              "version": snap.version}
    if explain:
        fields["rule"] = codes.RULES[d.reason]
    if kind != "pickup":
        meta = snap.meta
        fields["chat_mode"] = meta["chat_mode"]
        fields["lead_trigger"] = meta["lead_trigger"]
    if kind == "inbound":
        if explain:
            fields["caller"] = d.caller or ""
            fields["called"] = d.called or ""
            readings = d.caller_readings
            if readings:
                fields["caller_readings"] = readings
                listed = d.reason in ("BLACKLISTED", "OFF_HOURS_BLOCKED")
                fields["rule"] += (f" (the caller's digits read as {readings[0]} and as {readings[1]}; "
                                   + (f"{d.caller} is listed)" if listed else "neither is listed)"))
        if verdict == 1:  # ROUTE
            fields["group"] = d.group or ""
            fields["members"] = d.members
        elif verdict == 2:  # FORWARD
            fields["target"] = d.target
            fields["line"] = d.line
    elif kind == "outbound" and verdict == 5:  # ALLOW
        fields.update(caller_id=d.caller_id, destination=d.called, line=d.line,
                      rate_per_minute=str(d.rate_per_minute), increment_s=d.increment_s,
                      max_duration_s=d.max_duration_s)
    elif kind == "pickup" and verdict == 7:  # INTERCEPT
        fields["call_id"] = d.call_id
    return decisions_pb2.Decision(**fields)


class ReplyCache:
    """Inbound replies built once per (snapshot, shape): a proxy's reply depends on nothing else.

    The cached messages are never mutated after they are built.
    """

    def __init__(self) -> None:
        self._by_tenant: dict[str, tuple[CoreSnapshot, dict[tuple[int, ...], decisions_pb2.Decision]]] = {}

    def inbound(self, snap: CoreSnapshot, d: CoreDecision) -> decisions_pb2.Decision:
        entry = self._by_tenant.get(snap.tenant)
        if entry is None or entry[0] is not snap:
            entry = self._by_tenant[snap.tenant] = (snap, {})
        shape = d.shape
        reply = entry[1].get(shape)
        if reply is None:
            if len(entry[1]) > 4096:  # bounded: FORWARD targets are few, but never trust that
                entry[1].clear()
            reply = entry[1][shape] = decision_message(d, "inbound", snap)
        return reply


def _input_error(d: CoreDecision) -> RequestError:
    return RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"{d.reason}: {codes.RULES[d.reason]}")


def unary(handler: Callable[[Any, Any], Any], timed: str | None = None) -> Callable[..., Any]:
    """A gRPC method from a handler (plain or async) that raises RequestError to refuse.

    `timed` names the latency histogram series the call is observed in.
    """

    async def rpc(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            reply = handler(self, request)
            if asyncio.iscoroutine(reply):
                reply = await reply
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, handler.__name__)
            raise  # unreachable: abort raises
        if timed is not None:
            metrics.observe(timed, time.perf_counter() - start)
        return reply

    rpc.__name__ = handler.__name__
    return rpc


class DecisionsServicer(decisions_pb2_grpc.DecisionsServicer):
    def __init__(self, state: State) -> None:
        self.state = state
        self.snapshots = state.engine._snapshots  # the live dict: Engine.install replaces entries in it
        self.replies = ReplyCache()
        self._people: dict[str, tuple[CoreSnapshot, frozenset[str]]] = {}

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
        if verdict == 0:
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
        if d.verdict_code == 0:
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
            if d.verdict_code == 0:
                raise _input_error(d)
            if d.verdict != "INTERCEPT":
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
                break
            except calls.EventRefused as exc:
                if exc.code == "INVALID_ARGUMENT":  # the pickup's instant: no other call would take it
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, str(exc)) from None
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
        line, rate, increment = self._billing(snap, r, direction, at)
        caller, called = caller_raw, called_raw
        if direction == "inbound":
            d = snap.inbound(caller_raw, called_raw, at)
            if d.verdict_code != 0:  # read: the E.164 numbers (a withheld caller: none)
                caller, called = d.caller or "", d.called or called_raw
        elif direction == "outbound":
            d = snap.outbound(user, called_raw, at, 10**15)
            caller, called = d.caller_id or caller_raw, d.called or called_raw
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

    def _billing(self, snap: CoreSnapshot, r: decisions_pb2.CallEventRequest, direction: str, at: int
                 ) -> tuple[str, int, int]:
        """(line, per-minute rate, increment) that will bill a call that rings now."""
        if direction == "outbound" and r.line:
            # the line the Outbound decision chose: its rate for the destination, whatever rule changed since
            # the decision (a block pushed between the INVITE and its 180 must not leave the call unbilled)
            d = snap.outbound(_text("user", r.user), _text("called", r.called), at, 10**15)
            line, destination = _text("line", r.line), d.called or r.called
            found = line_rate(snap, line, destination) if E164.fullmatch(destination) else None
            if found is None:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"line {line!r} has no rate for {destination!r}: the call cannot be billed")
            return line, found[0], found[1]
        if direction == "outbound":
            # the line and rate an outbound decision would give, whatever the balance is now
            d = snap.outbound(_text("user", r.user), _text("called", r.called), at, 10**15)  # the most it reads
            if d.verdict_code == 0:
                raise _input_error(d)
            if d.verdict != "ALLOW":
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"an outbound call from {r.user!r} to {r.called!r} is not allowed "
                                   f"({d.reason}): it cannot ring")
            rate = d.rate_per_minute
            assert rate is not None and d.increment_s is not None and d.line is not None
            return d.line, billing.to_micro(rate), d.increment_s
        if direction == "forwarded":
            line = _text("line", r.line)
            if not E164.fullmatch(r.called):
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                   "a forwarded leg's called must be the E.164 number it was forwarded to")
            found = line_rate(snap, line, r.called)
            if found is None:
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                   f"line {line!r} has no rate for {r.called}: the forwarded leg cannot be billed")
            return line, found[0], found[1]
        return "", 0, 0

    async def call_event(self, r: decisions_pb2.CallEventRequest) -> decisions_pb2.CallEventReply:
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

    # -- unary RPCs: the decision above, refusals as gRPC statuses -----------
    Inbound = unary(inbound, timed="inbound")
    Outbound = unary(outbound, timed="outbound")
    Pickup = unary(pickup)
    CallEvent = unary(call_event)

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

    DecideBatch = unary(batch)

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


def admin_rpc(handler: Callable[[Any, Any], Awaitable[Any]]) -> Callable[..., Any]:
    """An Admin gRPC method from `async handler(self, request)`; refusals become statuses (_guard)."""

    async def rpc(self: AdminServicer, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await self._guard(context, lambda: handler(self, request), handler.__name__.lstrip("_"))

    rpc.__name__ = handler.__name__
    return rpc


class AdminServicer(admin_pb2_grpc.AdminServicer):
    def __init__(self, state: State, max_document: int, upload_rate: float = 0.0, *,
                 blobs: documents.BlobStore, max_upload: int = documents.MAX_BYTES, max_list: int = 0) -> None:
        self.state = state
        self.max_list = max_list  # entries per blacklist; 0: no cap
        self.max_document = max_document
        self.blobs = blobs
        self.max_upload = max_upload
        self.upload_rate = upload_rate  # bytes/s an upload is read at; 0: as fast as it comes

    async def _guard(self, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[Any]],
                     rpc: str = "Admin") -> Any:
        try:
            return await work()
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, rpc)
        raise AssertionError("unreachable")

    async def PushSettings(self, request: admin_pb2.PushSettingsRequest, context: grpc.aio.ServicerContext
                           ) -> admin_pb2.PushSettingsReply:
        async def work() -> admin_pb2.PushSettingsReply:
            document = request.document  # each read of a bytes field copies it: read it once
            self._check_push(request, len(document))
            start = time.perf_counter()
            built = await self.state.compiler.build(document, request.format or None)
            return await self._commit(built, built.document or document, "push",
                                      request.expected_version, request.comment, start)

        return await self._guard(context, work)

    def _check_lists(self, built: Built) -> None:
        if self.max_list and built.longest_list > self.max_list:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"a blacklist of tenant {built.tenant!r} would hold {built.longest_list:,} entries; "
                               f"at most {self.max_list:,} per list (the server's --max-list-entries)")

    def _check_push(self, request: admin_pb2.PushSettingsRequest, size: int) -> None:
        if request.format not in ("", "json", "msgpack"):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "format is json or msgpack")
        if size > self.max_document:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"document is {size} bytes or more; at most {self.max_document}")
        if request.expected_version < 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "expected_version must be >= 0")

    async def PushSettingsUpload(self, request_iterator: AsyncIterator[admin_pb2.PushSettingsRequest],
                                 context: grpc.aio.ServicerContext) -> admin_pb2.PushSettingsReply:
        async def work() -> admin_pb2.PushSettingsReply:
            first: admin_pb2.PushSettingsRequest | None = None
            size = 0
            began = time.monotonic()
            with self.state.compiler.spool.file() as handle:
                async for piece in request_iterator:
                    data = piece.document
                    size += len(data)
                    if first is None:
                        first = piece
                    elif piece.format or piece.expected_version or piece.comment:
                        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                           "format, expected_version and comment belong in the first message only")
                    self._check_push(first, size)
                    handle.write(data)  # a piece to the page cache: microseconds, the loop keeps answering
                    if self.upload_rate:
                        # Reading slower than the client sends lets HTTP/2 flow control hold the rest
                        # back: on a small machine, receiving 20 MB at full speed takes the CPU the
                        # decisions need (p99 x2.6 measured on 2 cores; x1.6 at 25 MB/s).
                        ahead = began + size / self.upload_rate - time.monotonic()
                        if ahead > 0:
                            await asyncio.sleep(ahead)
                if first is None or size == 0:
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "the upload carried no document")
                handle.flush()
                start = time.perf_counter()
                fmt = first.format or None
                built = await self.state.compiler.build_path(handle.name, fmt)
                document = built.document
                if document is None:  # stored as sent (JSON): read back off the loop
                    handle.seek(0)
                    document = await asyncio.to_thread(handle.read)
            return await self._commit(built, document, "push", first.expected_version, first.comment, start)

        return await self._guard(context, work)

    async def _commit(self, built: Built, document: bytes, kind: str, expected: int, comment: str,
                      start: float) -> admin_pb2.PushSettingsReply:
        state = self.state
        auth.note(tenant=built.tenant)     # before the check: a refused push is filed under the tenant it named
        auth.require_tenant(built.tenant)  # a pushed document names its tenant only inside
        self._check_lists(built)
        principal = auth.CURRENT.get()
        role = principal.role if principal is not None else ""   # "": no auth, every act allowed
        who = f"token {principal.token_id} ({role})" if principal is not None else "this caller"
        expected_version: int | None = expected if expected else None
        if role == "operator":
            # an operator creates tenants (their first version) and nothing else: its tenant-admin or an
            # owner pushes the versions after that
            if expected:
                raise auth.AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                     f"{who} creates tenants only: expected_version must be 0")
            expected_version = 0
        state.installing.add(built.tenant)
        built_at = time.perf_counter()
        try:
            try:
                version = await committed(functools.partial(
                    state.store.commit_version, built.tenant, kind, document, built.blob, expected_version,
                    comment[:500], numbers=built.numbers, may_create=role != "tenant-admin", facts=facts_of(built)),
                    lambda v: {"version_before": v - 1, "version_after": v, "object": f"version {v}"})
            except VersionConflict as exc:
                if role == "operator" and exc.expected == 0:
                    raise auth.AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                         f"{who} creates tenants only: tenant {built.tenant!r} exists (version "
                                         f"{exc.actual}); its new versions come from its tenant-admin or an owner"
                                         ) from None
                raise
            except TenantMissing:
                raise auth.AuthError(grpc.StatusCode.PERMISSION_DENIED,
                                     f"{who} may not create tenant {built.tenant!r}: creating a tenant is an "
                                     "operator's or an owner's act") from None
            stored_at = time.perf_counter()
            await state.install_blob(built.tenant, version, built.blob)
        finally:
            state.installing.discard(built.tenant)
        end = time.perf_counter()
        auth.note(version_before=version - 1, version_after=version, object=f"version {version}",
                  detail=comment[:500])
        seconds = end - start
        metrics.PUSH_SECONDS.observe(seconds)
        # the phases tell an operator where a slow push spent its time
        log.info("settings in force", extra={"event": kind, "tenant": built.tenant, "version": version,
                                             "seconds": round(seconds, 3),
                                             "build_s": round(built_at - start, 3),
                                             "store_s": round(stored_at - built_at, 3),
                                             "install_s": round(end - stored_at, 3)})
        return admin_pb2.PushSettingsReply(tenant=built.tenant, version=version,
                                           compile_seconds=built.compile_seconds)

    async def GetSettings(self, request: admin_pb2.GetSettingsRequest, context: grpc.aio.ServicerContext
                          ) -> admin_pb2.SettingsVersion:
        async def work() -> admin_pb2.SettingsVersion:
            record = await asyncio.to_thread(self.state.store.get_version, _text("tenant", request.tenant),
                                             request.version or None)
            return admin_pb2.SettingsVersion(tenant=record.tenant, version=record.version, kind=record.kind,
                                             document=record.document or b"", created_at=record.created_at,
                                             comment=record.comment, in_force=record.in_force)

        return await self._guard(context, work)

    async def ListVersions(self, request: admin_pb2.ListVersionsRequest, context: grpc.aio.ServicerContext
                           ) -> admin_pb2.ListVersionsReply:
        async def work() -> admin_pb2.ListVersionsReply:
            limit = request.limit or 50
            if limit > 1000:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "limit is at most 1000")
            records = await asyncio.to_thread(self.state.store.list_versions, _text("tenant", request.tenant), limit)
            return admin_pb2.ListVersionsReply(versions=[
                admin_pb2.SettingsVersion(tenant=r.tenant, version=r.version, kind=r.kind, created_at=r.created_at,
                                          comment=r.comment, in_force=r.in_force) for r in records])

        return await self._guard(context, work)

    async def Rollback(self, request: admin_pb2.RollbackRequest, context: grpc.aio.ServicerContext
                       ) -> admin_pb2.PushSettingsReply:
        async def work() -> admin_pb2.PushSettingsReply:
            if request.version <= 0:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "version must be a version number (>= 1)")
            start = time.perf_counter()
            record = await asyncio.to_thread(self.state.store.get_version, _text("tenant", request.tenant),
                                             request.version)
            assert record.document is not None
            built = await self.state.compiler.build(record.document, "json")
            return await self._commit(built, record.document, "rollback", request.expected_version,
                                      f"rollback to version {request.version}", start)

        return await self._guard(context, work)

    async def PatchBlacklist(self, request: admin_pb2.PatchBlacklistRequest, context: grpc.aio.ServicerContext
                             ) -> admin_pb2.PatchBlacklistReply:
        async def work() -> admin_pb2.PatchBlacklistReply:
            tenant = _text("tenant", request.tenant)
            list_name = LIST_NAMES.get(request.list)
            if list_name is None:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "list is BLACKLIST or OFFHOURS_BLACKLIST")
            if not request.add and not request.remove:
                raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "nothing to add or remove")
            for field, listed in (("add", request.add), ("remove", request.remove)):
                bad = [i for i, n in enumerate(listed) if not E164.fullmatch(n)]
                if bad:
                    shown = ", ".join(f"{field}[{i}] {listed[i][:20]!r}" for i in bad[:5])
                    raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                                       f"{len(bad)} entries are not E.164 numbers (+ and 8 to 15 digits): {shown}")
            start = time.perf_counter()
            blobs: list[bytes] = []

            def snapshot_for(document: bytes) -> bytes:
                built = self.state.compiler.build_blocking(document, "json")
                self._check_lists(built)
                blobs.append(built.blob)
                return built.blob

            self.state.installing.add(tenant)
            try:
                result = await asyncio.to_thread(self.state.store.patch_list, tenant, list_name,
                                                 list(request.add), list(request.remove), snapshot_for,
                                                 request.expected_version or None)
                if blobs:  # else the patch changed nothing and made no version
                    await self.state.install_blob(tenant, result.version, blobs[-1])
            finally:
                self.state.installing.discard(tenant)
            metrics.PUSH_SECONDS.observe(time.perf_counter() - start)
            auth.note(version_before=result.version - (1 if blobs else 0), version_after=result.version,
                      object=list_name, detail=f"+{result.added} -{result.removed}")
            log.info("blacklist patched", extra={"event": "patch", "tenant": tenant, "version": result.version,
                                                 "list": list_name, "added": result.added,
                                                 "removed": result.removed})
            return admin_pb2.PatchBlacklistReply(tenant=tenant, version=result.version, added=result.added,
                                                 removed=result.removed, size=result.size)

        return await self._guard(context, work)

    async def Stats(self, request: admin_pb2.StatsRequest, context: grpc.aio.ServicerContext
                    ) -> admin_pb2.StatsReply:
        async def work() -> admin_pb2.StatsReply:
            versions = await asyncio.to_thread(self.state.store.current_versions)
            tenants = [request.tenant] if request.tenant else sorted(versions)
            if request.tenant and request.tenant not in versions:
                raise RequestError(grpc.StatusCode.NOT_FOUND, f"tenant {request.tenant[:64]!r} has no settings")
            out = []
            for t in tenants:
                snap = self.state.engine._snapshots.get(t)
                out.append(admin_pb2.TenantStats(
                    tenant=t, version=versions.get(t, 0), loaded_version=snap.version if snap else 0,
                    numbers=len(snap.meta["numbers"]) if snap else 0,
                    blacklist=snap.meta["blacklist_size"] if snap else 0,
                    offhours_blacklist=snap.meta["offhours_blacklist_size"] if snap else 0,
                    status="active" if snap and snap.meta["active"] else "unavailable"))
            return admin_pb2.StatsReply(tenants=out, pid=os.getpid(), decisions=metrics.decided(),
                                        uptime_seconds=time.monotonic() - self.state.started)

        return await self._guard(context, work)

    # -- documents, billing, calls (issue 4) -------------------------------------

    def _tenant(self, tenant: str) -> CoreSnapshot:
        snap = self.state.engine._snapshots.get(_text("tenant", tenant))
        if snap is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"tenant {tenant[:64]!r} has no settings")
        return snap

    async def _upload_documents(self, r: admin_pb2.UploadDocumentsRequest) -> admin_pb2.DocumentSet:
        snap = self._tenant(r.tenant)
        number = _text("number", r.number)
        if number not in snap.meta["numbers"]:
            raise RequestError(grpc.StatusCode.NOT_FOUND,
                               f"{number[:32]!r} is not one of tenant {r.tenant!r}'s numbers")
        if not r.files:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "no files: upload at least one document image")
        if len(r.files) > MAX_DOCUMENT_FILES:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               f"{len(r.files)} files; at most {MAX_DOCUMENT_FILES} per upload")
        checked = []
        for f in r.files:
            content = f.content  # each read of a bytes field copies it: read it once
            facts = await asyncio.to_thread(documents.check_image, content, f.name, self.max_upload)
            checked.append((facts, documents.clean_name(f.name), content))
        for _facts, _name, content in checked:  # every file is checked before any is kept
            await asyncio.to_thread(self.blobs.put, content)
        now = int(time.time())
        due = documents.due_date(dt.datetime.fromtimestamp(now, dt.UTC).date())
        files = [DocumentFile(f.sha256, name, f.format, f.width, f.height, f.size) for f, name, _ in checked]
        ds = await asyncio.to_thread(self.state.store.add_document_set, r.tenant, number, files, now,
                                     due.isoformat())
        auth.note(object=f"number {number}, set {ds.id}", detail=f"{len(files)} file(s), review due {ds.due_on}")
        log.info("documents uploaded", extra={"event": "documents_uploaded", "tenant": r.tenant, "number": number,
                                              "set": ds.id, "files": len(files), "due_on": ds.due_on})
        return document_set_message(ds)

    async def _list_documents(self, r: admin_pb2.ListDocumentsRequest) -> admin_pb2.ListDocumentsReply:
        if r.status not in ("", "pending", "approved", "rejected"):
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "status is pending, approved or rejected")
        sets = await asyncio.to_thread(self.state.store.document_sets, _text("tenant", r.tenant),
                                       _text("number", r.number), r.status, min(r.limit or 100, 1000))
        return admin_pb2.ListDocumentsReply(sets=[document_set_message(ds) for ds in sets])

    async def _review_documents(self, r: admin_pb2.ReviewDocumentsRequest) -> admin_pb2.DocumentSet:
        if r.set_id <= 0 or r.set_id >= 2**63:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "set_id is the id `documents list` shows")
        reason = _text("reason", r.reason).strip()
        if not r.approve and not reason:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "a rejection needs a reason the tenant can act on")
        ds = await asyncio.to_thread(self.state.store.review_document_set, int(r.set_id), r.approve, reason,
                                     _text("reviewer", r.reviewer) or "operator", int(time.time()))
        await self.state.apply_documents(ds.tenant)  # in force here at once; elsewhere at the next poll
        auth.note(tenant=ds.tenant, object=f"set {ds.id}, number {ds.number}",
                  detail=ds.status + (f": {ds.reason}" if ds.reason else ""))
        log.info("documents reviewed", extra={"event": "documents_reviewed", "tenant": ds.tenant,
                                              "number": ds.number, "set": ds.id, "status": ds.status,
                                              "reason": ds.reason})
        return document_set_message(ds)

    async def _get_balance(self, r: admin_pb2.BalanceRequest) -> admin_pb2.BalanceReply:
        snap = self._tenant(r.tenant)
        store = self.state.store
        account = await asyncio.to_thread(store.account, r.tenant)
        topups = await asyncio.to_thread(store.topups, r.tenant, 10)
        policy = jobs.topup_policy(snap, dt.datetime.now(dt.UTC).date())
        out = admin_pb2.BalanceReply(tenant=r.tenant, balance=billing.format_amount(account.balance_micro),
                                     reserved=billing.format_amount(account.reserved_micro),
                                     available=billing.format_amount(account.available_micro),
                                     currency=snap.meta["currency"],
                                     auto_topup=policy is not None,
                                     topups=[admin_pb2.TopupInfo(
                                         id=t.id, amount=billing.format_amount(t.amount_micro), status=t.status,
                                         attempts=t.attempts, last_reason=t.last_reason, gateway_ref=t.gateway_ref,
                                         trigger=t.trigger, created_at=t.created_at,
                                         next_attempt_at=t.next_attempt_at) for t in topups])
        if policy is not None:
            out.topup_threshold = billing.format_amount(policy.threshold_micro)
            out.topup_amount = billing.format_amount(policy.amount_micro)
        return out

    async def _list_ledger(self, r: admin_pb2.LedgerRequest) -> admin_pb2.LedgerReply:
        self._tenant(r.tenant)
        if r.before_id >= 2**63:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "before_id is a ledger entry id")
        entries = await asyncio.to_thread(self.state.store.ledger, r.tenant, min(r.limit or 50, 1000),
                                          int(r.before_id))
        return admin_pb2.LedgerReply(entries=[admin_pb2.LedgerEntry(
            id=e.id, kind=e.kind, amount=billing.format_amount(e.amount_micro), ref=e.ref, currency=e.currency,
            created_at=e.created_at, balance=billing.format_amount(e.balance_micro)) for e in entries])

    async def _credit(self, r: admin_pb2.CreditRequest) -> admin_pb2.CreditReply:
        snap = self._tenant(r.tenant)
        micro = billing.to_micro(_text("amount", r.amount))
        if micro <= 0:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "amount must be more than 0, e.g. 20.00")
        reference = _text("reference", r.reference).strip()
        if not reference:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                               "reference is required (the payment's id): the same reference is credited once")
        currency = snap.meta["currency"]
        recorded = await asyncio.to_thread(self.state.store.credit, r.tenant, micro, "credit", reference, currency)
        balance = await asyncio.to_thread(self.state.store.balance, r.tenant)
        log.info("credit", extra={"event": "credit", "tenant": r.tenant, "amount": billing.format_amount(micro),
                                  "reference": reference, "recorded": recorded})
        return admin_pb2.CreditReply(recorded=recorded, balance=billing.format_amount(balance), currency=currency)

    async def _card(self, r: admin_pb2.CardRequest) -> admin_pb2.CardReply:
        self._tenant(r.tenant)
        store = self.state.store
        if r.number:
            card = billing.tokenize_card(_text("number", r.number), r.exp_month, r.exp_year,
                                         dt.datetime.now(dt.UTC).date())
            await asyncio.to_thread(store.set_card, CardRecord(r.tenant, card.token, card.brand, card.last4,
                                                               r.exp_month, r.exp_year))
            log.info("card on file", extra={"event": "card", "tenant": r.tenant, "brand": card.brand,
                                            "last4": card.last4})
        found = await asyncio.to_thread(store.card, r.tenant)
        if found is None:
            return admin_pb2.CardReply(tenant=r.tenant, on_file=False)
        return admin_pb2.CardReply(tenant=r.tenant, on_file=True, brand=found.brand, last4=found.last4,
                                   exp_month=found.exp_month, exp_year=found.exp_year)

    async def _list_calls(self, r: admin_pb2.ListCallsRequest) -> admin_pb2.ListCallsReply:
        self._tenant(r.tenant)
        if r.state and r.state not in calls.STATES:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, f"state is one of {', '.join(calls.STATES)}")
        states = (r.state,) if r.state else ("ringing", "answered")
        found = await asyncio.to_thread(self.state.store.calls, r.tenant, states, min(r.limit or 100, 1000))
        return admin_pb2.ListCallsReply(calls=[admin_pb2.CallInfo(
            call_id=c.call_id, direction=c.direction, caller=c.caller, called=c.called, state=c.state,
            ringing_user=c.ringing_user, answered_by=c.answered_by, last_user=c.last_user, ringing_at=c.ringing_at,
            answered_at=c.answered_at, ended_at=c.ended_at, talked_seconds=c.talked_s,
            charge=billing.format_amount(c.charge_micro), outcome=c.outcome, caller_raw=c.caller_raw,
            called_raw=c.called_raw) for c in found])

    async def _create_token(self, r: admin_pb2.CreateTokenRequest) -> admin_pb2.CreateTokenReply:
        if not 0 <= r.expires_in_seconds <= 10 * 365 * 86_400:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "expires_in_seconds is 0 (never) up to ten years")
        ident, token, token_hash = tokens.new_token()
        expires = int(time.time()) + r.expires_in_seconds if r.expires_in_seconds else 0
        record = await asyncio.to_thread(self.state.store.add_token, ident, token_hash, _text("role", r.role),
                                         [_text("tenant", t) for t in r.tenants], expires, _text("comment", r.comment))
        auth.note(object=f"token {record.id}", detail=f"created token {record.id} ({record.role}"
                  + (f" of {', '.join(record.tenants)}" if record.tenants else "") + ")")
        log.info("token created", extra={"event": "token_created", "id": record.id, "role": record.role})
        return admin_pb2.CreateTokenReply(info=token_message(record), token=token)

    async def _list_tokens(self, r: admin_pb2.ListTokensRequest) -> admin_pb2.ListTokensReply:
        records = await asyncio.to_thread(self.state.store.list_tokens)
        return admin_pb2.ListTokensReply(tokens=[token_message(t) for t in records])

    async def _revoke_token(self, r: admin_pb2.RevokeTokenRequest) -> admin_pb2.TokenInfo:
        record = await asyncio.to_thread(self.state.store.revoke_token, _text("id", r.id))
        auth.note(detail=f"revoked token {record.id}")
        log.info("token revoked", extra={"event": "token_revoked", "id": record.id})
        return token_message(record)

    # -- numbers and audit --------------------------------------------------------

    async def _number_owner(self, r: admin_pb2.NumberOwnerRequest) -> admin_pb2.NumberOwnerReply:
        number = _number_arg("number", r.number)
        owner = await asyncio.to_thread(self.state.store.number_owner, number)
        if owner is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"no tenant holds {number}")
        auth.note(tenant=owner.tenant)
        return number_owner_message(owner)

    async def _transfer_number(self, r: admin_pb2.TransferNumberRequest) -> admin_pb2.TransferNumberReply:
        number = _number_arg("number", r.number)
        src, dst = _tenant_arg("from_tenant", r.from_tenant), _tenant_arg("to_tenant", r.to_tenant)
        if src == dst:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "from_tenant and to_tenant are the same tenant")
        line, route_to = _text("line", r.line), _text("route_to", r.route_to)
        comment = _text("comment", r.comment) or f"{number} from {src} to {dst}"
        auth.note(tenant=src, object=f"number {number}", detail=f"to tenant {dst}")
        store, state = self.state.store, self.state
        for _attempt in range(3):  # a push to either tenant in between: work the move out again
            owner = await asyncio.to_thread(store.number_owner, number)
            if owner is None or owner.tenant != src:
                held = f"tenant {owner.tenant!r} holds it" if owner else "no tenant holds it"
                raise RequestError(grpc.StatusCode.FAILED_PRECONDITION, f"{number} is not {src!r}'s: {held}")
            a = await asyncio.to_thread(store.get_version, src)
            b = await asyncio.to_thread(store.get_version, dst)
            assert a.document is not None and b.document is not None
            doc_a, entry, notes = numbers.release(json.loads(a.document), number)
            doc_b, more = numbers.adopt(json.loads(b.document), entry, line, route_to)
            notes += more
            built = []
            for tenant, doc in ((src, doc_a), (dst, doc_b)):
                document = json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()
                try:
                    one = await state.compiler.build(document, "json")
                except SettingsError as exc:
                    raise RequestError(grpc.StatusCode.FAILED_PRECONDITION,
                                       f"moving {number} would leave tenant {tenant!r} with settings that are not "
                                       f"valid: {exc}") from None
                built.append((one, document))
            writes = [VersionWrite(t, "transfer", one.document or document, one.blob, one.numbers, record.version,
                                   comment[:500], facts_of(one))
                      for t, record, (one, document) in ((src, a, built[0]), (dst, b, built[1]))]
            state.installing.update((src, dst))
            try:
                try:
                    versions = await committed(functools.partial(store.commit_versions, writes, may_create=False),
                                               lambda vs: {"version_before": vs[0] - 1, "version_after": vs[0]})
                except VersionConflict:
                    continue
                for (one, _document), version, tenant in zip(built, versions, (src, dst), strict=True):
                    await state.install_blob(tenant, version, one.blob)
            finally:
                state.installing.difference_update((src, dst))
            break
        else:
            raise RequestError(grpc.StatusCode.UNAVAILABLE, f"tenants {src!r} and {dst!r} kept getting new versions "
                                                            "while the transfer was worked out: try again")
        auth.note(version_before=a.version, version_after=versions[0],
                  detail=f"to tenant {dst} (version {versions[1]}); " + "; ".join(notes))
        auth.note_also(tenant=dst, version_before=b.version, version_after=versions[1],
                       detail=f"from tenant {src} (version {versions[0]}); " + "; ".join(notes))
        log.info("number transferred", extra={"event": "number_transferred", "number": number, "from": src,
                                              "to": dst, "from_version": versions[0], "to_version": versions[1],
                                              "notes": notes})
        return admin_pb2.TransferNumberReply(number=number, from_tenant=src, from_version=versions[0], to_tenant=dst,
                                             to_version=versions[1], notes=notes)

    async def _export_failover(self, r: admin_pb2.ExportFailoverRequest) -> admin_pb2.FailoverTable:
        view = await asyncio.to_thread(self.state.store.failover_view)
        return admin_pb2.FailoverTable(
            generated_at=int(time.time()),
            tenants=[admin_pb2.TenantFailover(tenant=t.tenant, version=t.version, status=t.status,
                                              backup_number=t.backup_number, backup_line=t.backup_line)
                     for t in view.tenants],
            numbers=[number_owner_message(n) for n in view.numbers])

    async def _list_audit(self, r: admin_pb2.ListAuditRequest) -> admin_pb2.ListAuditReply:
        if r.tenant:
            _tenant_arg("tenant", r.tenant)
        if not r.since == r.since or r.since < 0:  # NaN or before 1970
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "since is UTC seconds (0: from the start)")
        if r.limit > 1000 or r.before_id >= 2**63:
            raise RequestError(grpc.StatusCode.INVALID_ARGUMENT, "limit is at most 1000; before_id is an audit row id")
        rows = await asyncio.to_thread(self.state.store.audit_rows, r.tenant, r.since, r.limit or 100,
                                       _text("action", r.action), int(r.before_id))
        return admin_pb2.ListAuditReply(entries=[audit_message(row) for row in rows])

    NumberOwner = admin_rpc(_number_owner)
    TransferNumber = admin_rpc(_transfer_number)
    ExportFailover = admin_rpc(_export_failover)
    ListAudit = admin_rpc(_list_audit)
    CreateToken = admin_rpc(_create_token)
    ListTokens = admin_rpc(_list_tokens)
    RevokeToken = admin_rpc(_revoke_token)
    UploadDocuments = admin_rpc(_upload_documents)
    ListDocuments = admin_rpc(_list_documents)
    ReviewDocuments = admin_rpc(_review_documents)
    GetBalance = admin_rpc(_get_balance)
    ListLedger = admin_rpc(_list_ledger)
    Credit = admin_rpc(_credit)
    Card = admin_rpc(_card)
    ListCalls = admin_rpc(_list_calls)


def document_set_message(ds: DocumentSet) -> admin_pb2.DocumentSet:
    return admin_pb2.DocumentSet(
        id=ds.id, tenant=ds.tenant, number=ds.number, status=ds.status, reason=ds.reason,
        uploaded_at=ds.uploaded_at, due_on=ds.due_on, decided_at=ds.decided_at, decided_by=ds.decided_by,
        files=[admin_pb2.DocumentFile(sha256=f.sha256, name=f.name, format=f.format, width=f.width,
                                      height=f.height, size=f.size) for f in ds.files])


async def committed(write: Callable[[], Any], audit: Callable[[Any], dict[str, Any]]) -> Any:
    """Run a store write in a thread and return its result.  When the RPC is cancelled meanwhile (the client's
    deadline, a dropped connection) the write still completes: wait for it, put what it did in the audit row
    (`audit(result)`), then let the cancellation go on, so that the log never calls a committed write failed."""
    task = asyncio.ensure_future(asyncio.to_thread(write))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        try:
            result = await task
        except Exception as exc:  # the write failed as well: the cancellation is what the caller saw
            auth.note(detail=f"the caller left; the write failed: {exc}"[:500])
        else:
            auth.note(**audit(result), detail="committed, but the caller left before the reply (its deadline "
                                              "or connection): check `settings history`")
        raise


def facts_of(built: Built) -> TenantFacts:
    return TenantFacts(built.status, *built.backup)


def number_owner_message(n: NumberOwner) -> admin_pb2.NumberOwnerReply:
    return admin_pb2.NumberOwnerReply(number=n.number, tenant=n.tenant, line=n.line, version=n.version, since=n.since)


def audit_message(a: AuditRow) -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(id=a.id, at=a.at, token_id=a.token_id, role=a.role, tenant=a.tenant, action=a.action,
                                object=a.object, version_before=a.version_before, version_after=a.version_after,
                                result=a.result, detail=a.detail, peer=a.peer)


def token_message(t: tokens.TokenRecord) -> admin_pb2.TokenInfo:
    return admin_pb2.TokenInfo(id=t.id, role=t.role, tenants=list(t.tenants), created_at=t.created_at,
                               expires_at=t.expires_at, revoked_at=t.revoked_at, comment=t.comment)
