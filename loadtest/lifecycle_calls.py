"""The load of the lifecycle benchmark: lanes of whole calls (RINGING, ANSWERED or a pickup, ENDED) over a fleet,
every reply checked as it arrives, a sample of ENDED events kept for the replay check."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc

from callgate.v1 import decisions_pb2, decisions_pb2_grpc

from .fleet import Client, ProgressFactory, code_name, run_fleet, share
from .stats import RunRecorder, SampleBuffer, merge_all

KINDS = ("RINGING", "PICKUP", "ANSWERED", "ENDED")
Event = decisions_pb2.CallEventRequest
ANSWER_AFTER_S = 3
INBOUND = {"ringing_user": "u1", "answer_user": "u2", "called": "+14155550199"}
OUTBOUND = {"ringing_user": "u3", "answer_user": "u3", "called": "+15551230000"}
PICKUP_GROUPS = 256  # pairs of users, one pair per lane (lanes beyond reuse pairs and skip the pickups)
T = TypeVar("T")


def pair(lane: int) -> tuple[str, str]:
    """The lane's own queue group of two: a call rings at the first, the second picks it up."""
    return f"pa{lane}", f"pb{lane}"


@dataclass
class Spec:
    """Everything a client process needs (pickled to it)."""

    target: str
    tenant: str
    run_id: str
    lanes: int
    procs: int
    channels: int
    warmup_s: float
    duration_s: float
    max_calls: int  # measured calls, in total
    timeout_s: float
    base_at: int
    talk_s: int
    charge: str  # what an outbound call must cost
    samples: int  # ENDED (request, reply) kept per process for the replay check
    seed: int
    pickups: bool = False  # every second inbound call is picked up by the lane's colleague instead of answered



class LifecycleClient(Client):
    """The lanes of one client process, in one asyncio loop."""

    process_name = "lifecycle-bench"

    def __init__(self, spec: Spec, index: int, counts: Any = None) -> None:
        super().__init__(spec, index, counts, spec.max_calls)
        self.spec: Spec = spec
        self.events = {k: RunRecorder() for k in KINDS}
        self.event_lat = {k: SampleBuffer(self.events[k].latency) for k in KINDS}
        self.calls = RunRecorder()
        self.call_lat = SampleBuffer(self.calls.latency)
        self.started = 0  # calls started, warm-up included (numbers the call ids)
        self.completed: dict[str, list[str]] = {"inbound": [], "outbound": []}  # three events OK
        self.failed: list[str] = []
        self.lead_replies: dict[str, list[str]] = {"inbound": [], "outbound": []}  # ANSWERED said create_lead
        self.samples: list[tuple[str, str, bytes, bytes]] = []  # (call id, direction, ENDED request, reply)
        self.rng = random.Random(spec.seed * 1000 + index)
        self.stubs: list[decisions_pb2_grpc.DecisionsStub] = []

    def connected(self, channels: list[grpc.aio.Channel]) -> None:
        self.stubs = [decisions_pb2_grpc.DecisionsStub(ch) for ch in channels]

    def _wrong(self, call_id: str, kind: str, why: str, reply: Any) -> None:
        shown = str(reply).replace("\n", " ").strip()
        self.note_wrong(f"{call_id} {kind}: {why} (reply: {shown})")

    async def _timed(self, kind: str, call: Callable[[], Awaitable[T]], measured: bool) -> T | None:
        """One RPC, its latency and outcome recorded under `kind` when measured; None when it failed."""
        t0 = time.monotonic_ns()
        reply: T | None = None
        try:
            reply = await call()
            code = "OK"
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any failure is counted by its status, the lane goes on
            code = code_name(exc)
        t1 = time.monotonic_ns()
        if measured:
            rec = self.events[kind]
            rec.add_outcome(code)
            rec.window(t0, t1)
            self.event_lat[kind].add(t1 - t0)
        return reply

    async def one_call(self, stub: decisions_pb2_grpc.DecisionsStub, lane: int, start: int) -> None:
        spec = self.spec
        n = self.started
        self.started += 1
        measured = start >= self.measure_ns
        call_id = f"{spec.run_id}-{self.index}-{n}"
        direction = "outbound" if n % 2 else "inbound"
        who = OUTBOUND if n % 2 else INBOUND
        picked = spec.pickups and direction == "inbound" and n % 4 == 2 and 0 <= lane < PICKUP_GROUPS
        if picked:  # rings at the lane's first user; its colleague dials *8
            a, b = pair(lane)
            who = {"ringing_user": a, "answer_user": b, "called": INBOUND["called"]}
        ring_at = spec.base_at
        answer_at = ring_at + ANSWER_AFTER_S
        end_at = answer_at + spec.talk_s
        if direction == "inbound":
            ringing = Event(tenant=spec.tenant, call_id=call_id, kind=Event.RINGING, user=who["ringing_user"],
                           at=ring_at, caller=f"+1212555{n % 10000:04d}", called=who["called"])
        else:
            ringing = Event(tenant=spec.tenant, call_id=call_id, kind=Event.RINGING, user=who["ringing_user"],
                           at=ring_at, direction="outbound", called=who["called"])
        ok = True
        r = await self._timed("RINGING", lambda: stub.CallEvent(ringing, timeout=spec.timeout_s), measured)
        if r is None:
            ok = False
        else:
            if r.state != "ringing" or r.call_id != call_id:
                self._wrong(call_id, "RINGING", "state is not ringing", r)
            # an outbound call holds credit from its RINGING: the bench's credit covers every call's talk
            if direction == "outbound" and r.max_duration_s < spec.talk_s:
                self._wrong(call_id, "RINGING", f"the hold covers {r.max_duration_s} s, less than the "
                                                f"{spec.talk_s} s the call talks", r)
            if picked:
                pickup = decisions_pb2.PickupRequest(tenant=spec.tenant, user=who["answer_user"], dialed="*8",
                                                     at=answer_at)
                d = await self._timed("PICKUP", lambda: stub.Pickup(pickup, timeout=spec.timeout_s), measured)
                if d is None:
                    ok = False
                elif d.verdict != decisions_pb2.INTERCEPT or d.call_id != call_id:
                    self.note_wrong(f"{call_id} PICKUP by {who['answer_user']}: want INTERCEPT of this call, got "
                                    f"{str(d).strip()!r}")
            answered = Event(tenant=spec.tenant, call_id=call_id, kind=Event.ANSWERED, user=who["answer_user"],
                            at=answer_at)
            r = await self._timed("ANSWERED", lambda: stub.CallEvent(answered, timeout=spec.timeout_s), measured)
            if r is None:
                ok = False  # still end it: a proxy would, and the call must not stay open in the store
            else:
                if r.state != "answered":
                    self._wrong(call_id, "ANSWERED", "state is not answered", r)
                if direction == "inbound" and not (r.create_lead and r.lead_responsible == who["answer_user"]):
                    self._wrong(call_id, "ANSWERED", f"no lead for {who['answer_user']} (lead_trigger on_answer)", r)
                if r.create_lead:
                    if r.lead_responsible != who["answer_user"]:
                        self._wrong(call_id, "ANSWERED", f"lead responsible is not {who['answer_user']}", r)
                    self.lead_replies[direction].append(call_id)
            ended = Event(tenant=spec.tenant, call_id=call_id, kind=Event.ENDED, at=end_at)
            r = await self._timed("ENDED", lambda: stub.CallEvent(ended, timeout=spec.timeout_s), measured)
            if r is None:
                ok = False
            else:
                want = spec.charge if direction == "outbound" else "0.00"
                if r.state != "ended" or r.charge != want or r.talked_seconds != spec.talk_s:
                    self._wrong(call_id, "ENDED", f"want state ended, charge {want}, talked {spec.talk_s} s", r)
                if ok:
                    self._sample(call_id, direction, ended, r)
        end = time.monotonic_ns()
        if ok:
            self.completed[direction].append(call_id)
        else:
            self.failed.append(call_id)
            self.errors += 1
        if measured:
            self.calls.add_outcome("OK" if ok else "FAILED")
            self.calls.window(start, end)
            self.calls.timeline.add(start, end - start)
            self.call_lat.add(end - start)
        self.done += 1
        self.tally()

    def _sample(self, call_id: str, direction: str, req: decisions_pb2.CallEventRequest,
                reply: decisions_pb2.CallEventReply) -> None:
        """Reservoir sampling: every completed call equally likely to be replayed."""
        seen = len(self.completed["inbound"]) + len(self.completed["outbound"]) + 1
        item = (call_id, direction, req.SerializeToString(), reply.SerializeToString())
        if len(self.samples) < self.spec.samples:
            self.samples.append(item)
        else:
            j = self.rng.randrange(seen)
            if j < self.spec.samples:
                self.samples[j] = item

    async def lane(self, k: int) -> None:
        stub = self.stubs[k % len(self.stubs)]
        lane = self.index + k * self.spec.procs  # unique over the processes: the lane's own pickup group
        while self.may_start(now := time.monotonic_ns()):
            await self.one_call(stub, lane, now)

    async def load(self) -> None:
        await asyncio.gather(*(self.lane(k) for k in range(share(self.spec.lanes, self.spec.procs, self.index))))

    def report(self) -> dict[str, Any]:
        for buf in (*self.event_lat.values(), self.call_lat):
            buf.flush()
        return {"events": {k: rec.to_dict() for k, rec in self.events.items()}, "calls": self.calls.to_dict(),
                "started": self.started, "completed": self.completed, "failed": self.failed,
                "lead_replies": self.lead_replies, "samples": self.samples}


def run_clients(spec: Spec, server_pids: list[int], progress: ProgressFactory | None = None
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The load: in this process with --procs 1, else in spawned client processes; their results, and the CPU
    from the moment every client is connected (client start-up must not count as load)."""
    # each lane finishes the call it is in: up to three deadlines past the end
    return run_fleet(LifecycleClient, spec, spec.warmup_s + spec.duration_s + 3 * spec.timeout_s + 60.0,
                     server_pids, progress, inline=True)


def figures_of(parts: list[dict[str, Any]]) -> dict[str, Any]:
    events = {k: merge_all(RunRecorder.from_dict(p["events"][k]) for p in parts) for k in KINDS}
    calls = merge_all(RunRecorder.from_dict(p["calls"]) for p in parts)
    elapsed = calls.elapsed_s
    errors = {f"{k}:{code}": n for k, rec in events.items() for code, n in rec.errors.items()}
    lat = {k: rec.latency.summary() for k, rec in events.items()}
    lat["call"] = calls.latency.summary()
    ok_events = sum(rec.ok for rec in events.values())
    return {
        "calls_per_s": calls.ok / elapsed if elapsed > 0 else 0.0,
        "events_per_s": ok_events / elapsed if elapsed > 0 else 0.0,
        "measured_calls": calls.ok, "measured_failed": calls.completed - calls.ok, "elapsed_s": elapsed,
        "calls_total": sum(p["done"] for p in parts),
        "completed_inbound": sum(len(p["completed"]["inbound"]) for p in parts),
        "completed_outbound": sum(len(p["completed"]["outbound"]) for p in parts),
        "errors": errors, "latency_ms": lat,
        "client_cpu_s": sum(p["cpu_s"] for p in parts),
        "client_wall_s": max(p["wall_s"] for p in parts) if parts else 0.0,
    }

