"""The compiled path of a worker's local decision against the Python one.

`LocalDecisions.inbound` is compiled (engine/_core_local.pxi): while the
replica is in step it answers from entries the Python path put, and hands
anything else to that path (`_inbound_slow`).  Here two workers follow one
directory through random changes (snapshots written and removed, heartbeats
fresh and stale, clock offsets, policies, tenants behind, a clock that moves
both ways, status pages scribbled over with hostile bytes): one decides
through `inbound`, the other through `_inbound_slow` alone, at the same
instant.  Every answer must be the same, and the compiled path must have
answered most of them (else this would only test the Python path twice).
"""

from __future__ import annotations

import math
import random
import struct
import time
from pathlib import Path
from typing import Any

import pytest

from engine import replica, replica_status
from engine.replica import LocalAnswer, LocalDecisions

from .test_replica_files import ACME, AT, BLACKLISTED, CALLED, CALLERS, MAIN, Clock, blob_of

BLOBS = [blob_of(ACME), blob_of({**ACME, "blacklist": []}), blob_of({**ACME, "status": "suspended"})]
OTHER = blob_of({**ACME, "tenant": "beta"})


class Counted(LocalDecisions):
    """A worker that counts the decisions its compiled path handed to the Python one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.slow = 0

    def _inbound_slow(self, tenant: str, caller: str, called: str, at: int, now: float) -> LocalAnswer | None:
        self.slow += 1
        return super()._inbound_slow(tenant, caller, called, at, now)


def same(a: LocalAnswer | None, b: LocalAnswer | None) -> tuple[Any, ...] | None:
    """An answer as comparable values (a CoreDecision is equal only to itself: its fields instead)."""
    if a is None:
        return None
    d = a.decision
    fields = None if d is None else (d.verdict, d.reason, d.sip_status, d.target, d.line, d.group, d.members)
    return (a.action, fields, a.version, a.checksum, a.age_s, a.stale, a.backup_number, a.backup_line)


def carried(a: LocalAnswer) -> tuple[Any, ...]:
    """What a proxy carries out of a decided answer, read attribute by attribute ("" for none)."""
    d = a.decision
    assert d is not None
    return (d.verdict, d.sip_status, d.reason, d.group or "", d.members, d.target or "", d.line or "")


def scribble(directory: Path, rng: random.Random) -> None:
    """Hostile words over the status page, written in place as a stranger with write access could."""
    path = directory / replica_status.STATUS
    if not path.exists():
        return
    magic = replica_status.STATUS_MAGIC if rng.random() < 0.7 else rng.randbytes(8)
    floats = [math.nan, math.inf, -math.inf, -1.0, 0.0, 1e300, 2.0**63, 1_800_000_000.0 + rng.uniform(-5, 5)]
    with open(path, "r+b") as f:
        f.write(magic + struct.pack("<Qdd", rng.getrandbits(64) if rng.random() < 0.3 else rng.randrange(8),
                                    rng.choice(floats), rng.choice([*floats, 4 * 86400.0, -3600.0])))


def repair(directory: Path) -> None:
    """The page's magic made right again, so that the writer (which refuses a page not its own) can go on."""
    path = directory / replica_status.STATUS
    if path.exists():
        with open(path, "r+b") as f:
            f.write(replica_status.STATUS_MAGIC)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
def test_the_compiled_path_answers_as_the_python_one(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    clock = Clock(1_800_000_000.0)
    fast, slow = Counted(tmp_path, recheck_s=[5.0, 30.0, 0.0, 2.0][seed % 4], clock=clock), LocalDecisions(
        tmp_path, recheck_s=0.0, clock=clock)
    slow.recheck_s = fast.recheck_s
    version = 1
    decisions = calm = routed = 0
    for i in range(3000):
        if i % 500 == 499:   # a calm stretch: in step, nothing changes; all but the first go the compiled way
            repair(tmp_path)
            version += 1
            replica.write_snapshot(tmp_path, rng.choice(BLOBS), version)
            replica.write_behind(tmp_path, {})
            replica.touch_heartbeat(tmp_path, at=clock.now)
            before = fast.slow
            calm += 100
            for _ in range(100):
                clock.now += 0.001
                caller, called, at = rng.choice(CALLERS), rng.choice(CALLED), rng.choice([0, AT])
                a = fast.inbound("acme", caller, called, at)
                b = slow._inbound_slow("acme", caller, called, at, clock())
                assert a is not None and same(a, b) == same(b, b), (caller, called, at, a, b)
                assert a.decision is not None and a.decision.proxy_fields() == carried(a)
                # (in step and held: the one call answers it, unless beta's file lists the number too)
                if at == 0 and fast.recheck_s and fast.tenant_of(called) == "acme":
                    assert fast.route(caller, called) == ("acme", a.decision.proxy_fields())
                    routed += 1
            assert fast.slow == before + (1 if fast.recheck_s else 100)
        op = rng.random()
        if op < 0.06:
            repair(tmp_path)
        if op < 0.01:
            version += 1
            replica.write_snapshot(tmp_path, rng.choice(BLOBS), version)
        elif op < 0.013:
            replica.write_snapshot(tmp_path, OTHER, version)
        elif op < 0.016:
            replica.remove_snapshot(tmp_path, rng.choice(["acme", "beta"]))
        elif op < 0.05:
            heard = clock.now + rng.choice([0.0, 0.0, 0.0, -1.0, -2.4, -3.0, -40.0, 2.0, 9.0])
            replica.touch_heartbeat(tmp_path, at=heard,
                                    offset=rng.choice([None, None, 0.0, 4 * 86400.0, -7200.5]))
        elif op < 0.055:
            replica.write_policy(tmp_path, rng.choice([0.5, 2.0, 30.0]),
                                 rng.choice(["stale-ok", "fail-closed", "backup"]),
                                 {"beta": rng.choice(["stale-ok", "fail-closed"])})
        elif op < 0.06:
            replica.write_behind(tmp_path, {"acme": clock.now - rng.choice([0.0, 1.0, 100.0])}
                                 if rng.random() < 0.5 else {})
        elif op < 0.065:
            scribble(tmp_path, rng)
        elif op < 0.20:
            clock.now += rng.choice([0.001, 0.01, 0.1, 0.3, 0.3, 0.9, 0.9, 1.7, 3.0, 31.0, -0.5, -40.0])
        elif op < 0.21:   # what else a worker may be asked, on both: it changes what each holds
            rng.choice([lambda w: w.snapshot("acme"), lambda w: w.tenant_of(MAIN), lambda w: w.close()])(
                rng.choice([fast, slow]))
        else:
            tenant = rng.choice(["acme", "acme", "acme", "beta", "nobody"])
            caller = rng.choice([*CALLERS, BLACKLISTED])
            called = rng.choice(CALLED + [MAIN] * 4)
            at = rng.choice([0, 0, 0, AT, AT + 43_200, -1, 2**62])
            a = fast.inbound(tenant, caller, called, at)
            b = slow._inbound_slow(tenant, caller, called, at, clock())
            assert same(a, b) == same(b, b), (tenant, caller, called, at, a, b)
            decisions += 1
            if at == 0:   # the proxy's one call: the tenant tenant_of names, and the answer inbound gives it
                owner, before = fast.tenant_of(called), fast.slow
                r = fast.route(caller, called)
                assert fast.slow == before and (r is None) == (owner is None) and (r is None or r[0] == owner), r
                if r is not None and r[1] is not None:
                    b = slow._inbound_slow(r[0], caller, called, 0, clock())
                    assert b is not None and b.action == "decide" and r[1] == carried(b), (r, b)
                    routed += 1
    # outside the calm stretches too, the unusual was handed to the Python path and the compiled one answered
    # many of the rest (never with recheck_s 0: each decision looks at the file)
    hits = decisions + calm - fast.slow - (calm - 6 if fast.recheck_s else 0)
    assert calm == 600 and fast.slow > 100 and (hits > 100 if fast.recheck_s else hits == 0), (hits, decisions)
    assert routed > 20 if fast.recheck_s else routed == 0, routed


def test_the_real_clock_is_read_in_c_and_answers_as_the_python_path(tmp_path: Path) -> None:
    replica.write_snapshot(tmp_path, BLOBS[0], 3)
    replica.touch_heartbeat(tmp_path, offset=4 * 86400.0)
    worker, reference = Counted(tmp_path), LocalDecisions(tmp_path)
    for called in CALLED:
        for caller in CALLERS[:6]:
            a = worker.inbound("acme", caller, called)
            b = reference._inbound_slow("acme", caller, called, 0, time.time())
            assert a is not None and b is not None
            # the same answer but for its age: the two read the clock a moment apart
            assert same(a, b)[:4] == same(b, b)[:4] and same(a, b)[5:] == same(b, b)[5:]  # type: ignore[index]
            assert abs(a.age_s - b.age_s) < 0.5
    assert worker.slow == 1   # only the first, which opened the file


def test_hostile_arguments_fail_as_on_the_python_path(tmp_path: Path) -> None:
    replica.write_snapshot(tmp_path, BLOBS[0], 3)
    replica.touch_heartbeat(tmp_path)
    worker = Counted(tmp_path)
    assert worker.inbound("acme", CALLERS[0], MAIN) is not None
    for at in (1.5, "0", True):
        with pytest.raises(TypeError):
            worker.inbound("acme", CALLERS[0], MAIN, at)  # type: ignore[arg-type]
    with pytest.raises(UnicodeEncodeError):
        worker.inbound("acme", "\ud800", MAIN)
    assert worker.slow == 1   # the compiled path raised those as the Python one does

    class Name(str):
        pass

    for _ in range(2):   # a tenant named by a str subclass: the Python path each time, which answers it
        answer = worker.inbound(Name("acme"), CALLERS[0], MAIN)
        assert answer is not None and answer.action == "decide"
    with pytest.raises(TypeError):   # numbers must be str itself, as the core takes them
        worker.inbound("acme", Name(CALLERS[0]), MAIN)
    assert worker.slow == 4
    for bad in (None, b"+1", 5):
        with pytest.raises(TypeError):
            worker.inbound("acme", bad, MAIN)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        worker.inbound(None, CALLERS[0], MAIN)  # type: ignore[arg-type]
    assert worker.inbound("acme\0", CALLERS[0], MAIN) is None
    assert worker.inbound("acme", "x" * 100_000, MAIN).decision.verdict == "ERROR"  # type: ignore[union-attr]


def test_a_local_answer_is_an_immutable_value() -> None:
    a = LocalAnswer("reject", None, 3, "ab", math.inf, True)
    assert a == LocalAnswer("reject", None, 3, "ab", math.inf, True) and hash(a) == hash(
        LocalAnswer("reject", None, 3, "ab", math.inf, True))
    assert a != LocalAnswer("reject", None, 4, "ab", math.inf, True)
    assert repr(a).startswith("LocalAnswer(action='reject', decision=None, version=3")
    with pytest.raises(AttributeError):
        a.action = "decide"  # type: ignore[misc]


def test_prepare_maps_every_tenant_so_that_no_call_waits(tmp_path: Path) -> None:
    replica.write_snapshot(tmp_path, BLOBS[0], 3)
    replica.write_snapshot(tmp_path, OTHER, 4)
    replica.write_snapshot(tmp_path, blob_of({**ACME, "tenant": "gamma"}), 5)
    gamma = tmp_path / replica.file_name("gamma")
    data = bytearray(gamma.read_bytes())
    data[-3] ^= 0x40   # a sound header, a damaged body: its decision would skip it, and so does prepare
    gamma.write_bytes(bytes(data))
    (tmp_path / replica.file_name("delta")).write_bytes(b"CGSNAP1\n" + b"\0" * 100)   # no header at all
    replica.touch_heartbeat(tmp_path)
    assert LocalDecisions(tmp_path).prepare(limit=1) == 1
    worker = LocalDecisions(tmp_path)
    assert worker.prepare(limit=100) == 2
    before = worker.misses
    for tenant in ("acme", "beta"):
        answer = worker.inbound(tenant, CALLERS[0], MAIN)
        assert answer is not None and answer.action == "decide"
    assert worker.misses == before   # both answered by the compiled path, the first call of each too
    assert worker.inbound("gamma", CALLERS[0], MAIN) is None
    assert LocalDecisions(tmp_path / "absent").prepare(limit=100) == 0


def test_the_proxys_one_call_answers_as_inbound_at_every_hour_of_a_week(tmp_path: Path) -> None:
    """`route` (a proxy worker's one call: the tenant of the number dialled, the decision's fields) against
    `tenant_of` and `inbound` at the same instant, hour by hour through a week, with and without a clock offset
    of the server's: every verdict the example tenant gives, the same fields."""
    clock = Clock(float(AT))
    replica.write_snapshot(tmp_path, BLOBS[0], 3)
    worker = LocalDecisions(tmp_path, clock=clock)
    verdicts, routed = set(), 0
    for hour in range(24 * 7):
        clock.now = AT + hour * 3600 + 0.25
        replica.touch_heartbeat(tmp_path, at=clock.now, offset=(0.0, 7200.5, -3 * 3600.0)[hour % 3])
        for called in CALLED:
            for caller in [*CALLERS[:8], BLACKLISTED]:
                owner = worker.tenant_of(called)
                r = worker.route(caller, called)
                if owner is None:
                    assert r is None, (called, r)
                    continue
                a = worker.inbound(owner, caller, called)
                assert r is not None and r[0] == owner and a is not None, (called, r, a)
                if r[1] is not None:
                    assert a.action == "decide" and r[1] == carried(a), (hour, caller, called, r, a)
                    verdicts.add(r[1][0])
                    routed += 1
    assert routed > 0.9 * 24 * 7 * 9 * 3 and {"ROUTE", "VOICEMAIL", "REJECT", "ERROR"} <= verdicts, (
        routed, verdicts)


def test_the_page_as_the_core_reads_it_is_the_page_as_python_reads_it(tmp_path: Path) -> None:
    """`_page_words` (the status page read in C, under the SIGBUS guard: what both paths now decide by) against
    the page's bytes unpacked in Python (`_status_of`, `clock_offset`), over pages scribbled with hostile bytes."""
    rng = random.Random(7)
    replica.touch_heartbeat(tmp_path, at=float(AT), offset=3600.5)
    worker = LocalDecisions(tmp_path)
    page_path = tmp_path / replica_status.STATUS
    for n in range(300):
        raw = bytearray(page_path.read_bytes())
        if n % 3:
            for _ in range(rng.randrange(1, 6)):
                raw[rng.randrange(32)] = rng.randrange(256)
        if n % 7 == 0:
            raw[:8] = replica_status.STATUS_MAGIC
        with open(page_path, "r+b") as f:   # in place: the mapping sees it
            f.write(bytes(raw))
        worker._look_status(float(n))
        gen, heard, offset = worker._read_page()
        want_gen, want_heard = replica_status._status_of(bytes(raw))
        assert (gen, heard) == (want_gen, want_heard), (n, bytes(raw[:32]).hex())
        assert offset == (replica_status.clock_offset(bytes(raw)) if want_gen >= 0 else 0.0), n
