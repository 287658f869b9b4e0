"""The crash matrix: SIGKILL workers at random moments under a mixed write load, then check that nothing was lost.

    python -m loadtest.crash_matrix --kills 300          # the long run (README has its figure)
    python -m loadtest.crash_matrix --kills 30           # what `make test` runs (tests/test_crash_matrix.py)

One `callgate serve --workers 2` on a fresh data directory; client lanes
keep writing the whole time: whole settings pushes (a 20,000-entry blacklist,
so that a kill often lands inside an upload or a compile), blacklist patches,
outbound calls (RINGING, ANSWERED, ENDED; a minute each) that drain the balance,
so that auto top-ups keep being charged through a slow sandbox gateway, and
credits.  Every request a lane sends is retried with the same identity
(call id, reference) until it is answered, and what was answered is
remembered.  Meanwhile a worker chosen at random is killed with SIGKILL at a
random moment, the supervisor starts another, and so on `--kills` times.

Then the load stops, the top-ups in flight settle, the server stops and the
store is checked offline:

* SQLite's integrity check says ok;
* each balance equals the sum of its ledger, each hold the holds of the open calls;
* every acknowledged write is there: each push and patch version (with its
  comment or its number), each ended call with the charge it was answered
  with and its one ledger entry, each credit once;
* no double charge: money taken from the card equals the top-ups in the ledger;
* no spool file left behind.

Exit code 0 when every check holds, 1 otherwise (each failure printed).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import random
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from engine import to_micro
from server.client import open_channel

from .process import EXAMPLE, ServeProcess, sigterm_unwinds

EV = decisions_pb2.CallEventRequest
TENANT = "acme"
DEST = "+12125550100"


@dataclass
class Acked:
    """What the server answered, by kind: the writes that must be in the store afterwards."""

    pushes: dict[int, str] = field(default_factory=dict)        # version -> comment
    patches: dict[int, str] = field(default_factory=dict)       # version -> the number it added
    ended: dict[str, int] = field(default_factory=dict)         # call id -> charge (micro-units)
    credits: dict[str, int] = field(default_factory=dict)       # reference -> amount (micro-units)
    statuses: Counter[str] = field(default_factory=Counter)     # the status of every failed attempt
    lock: threading.Lock = field(default_factory=threading.Lock)

    def failed(self, exc: grpc.RpcError) -> None:
        with self.lock:
            self.statuses[exc.code().name] += 1


def retried(acked: Acked, stop: threading.Event, fn: Any, attempts: int = 40) -> Any:
    """fn() until it is answered (the same request each time: its identity makes a repeat harmless)."""
    for _ in range(attempts):
        try:
            return fn()
        except grpc.RpcError as exc:
            acked.failed(exc)
            if exc.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED,
                                  grpc.StatusCode.DEADLINE_EXCEEDED):
                return None  # refused for good (e.g. an instant out of bounds): nothing was acknowledged
            if stop.is_set():
                return None
            time.sleep(0.05)
    return None


def document(i: int) -> bytes:
    doc = json.loads(EXAMPLE.read_text())
    doc["blacklist"] = ["+14155550666", *(f"+4930{(i * 7919 + k) % 10**8:08d}" for k in range(20_000))]
    return json.dumps(doc).encode()


def lanes(address: str, acked: Acked, stop: threading.Event, rng: random.Random) -> list[threading.Thread]:
    def channel() -> grpc.Channel:
        return open_channel(address, options=[("grpc.use_local_subchannel_pool", 1),
                                                       ("grpc.max_send_message_length", 64 << 20)])

    def pushes() -> None:
        admin = admin_pb2_grpc.AdminStub(channel())
        i = 0
        while not stop.is_set():
            i += 1
            comment = f"crash-matrix push {i}"
            request = admin_pb2.PushSettingsRequest(document=document(i), comment=comment)
            reply = retried(acked, stop, functools.partial(admin.PushSettings, request, timeout=30), attempts=3)
            if reply is not None:
                with acked.lock:
                    acked.pushes[reply.version] = comment
            time.sleep(rng.uniform(0.05, 0.3))

    def patches() -> None:
        admin = admin_pb2_grpc.AdminStub(channel())
        i = 0
        while not stop.is_set():
            i += 1
            number = f"+4940{i:08d}"
            patch = admin_pb2.PatchBlacklistRequest(tenant=TENANT, add=[number])
            reply = retried(acked, stop, functools.partial(admin.PatchBlacklist, patch, timeout=30), attempts=3)
            if reply is not None and reply.added:
                with acked.lock:
                    acked.patches[reply.version] = number
            time.sleep(rng.uniform(0.02, 0.1))

    def calls(lane: int) -> None:
        decide = decisions_pb2_grpc.DecisionsStub(channel())
        i = 0
        while not stop.is_set():
            i += 1
            call_id = f"m{lane}-{i}"
            now = int(time.time())
            for kind, at, user in ((EV.RINGING, now - 70, "u3"), (EV.ANSWERED, now - 60, "u3"),
                                   (EV.ENDED, now, "")):
                event = EV(tenant=TENANT, call_id=call_id, kind=kind, user=user, at=at, direction="outbound",
                           called=DEST)
                reply = retried(acked, stop, functools.partial(decide.CallEvent, event, timeout=30))
                if reply is None:
                    break
                if kind == EV.ENDED:
                    with acked.lock:
                        acked.ended[call_id] = to_micro(reply.charge)

    def credits() -> None:
        admin = admin_pb2_grpc.AdminStub(channel())
        i = 0
        while not stop.is_set():
            i += 1
            reference = f"crash-matrix credit {i}"
            credit = admin_pb2.CreditRequest(tenant=TENANT, amount="0.50", reference=reference)
            reply = retried(acked, stop, functools.partial(admin.Credit, credit, timeout=30))
            if reply is not None:
                with acked.lock:
                    acked.credits[reference] = to_micro("0.50")
            time.sleep(rng.uniform(0.1, 0.5))

    workers = [threading.Thread(target=pushes, name="pushes"), threading.Thread(target=patches, name="patches"),
               threading.Thread(target=credits, name="credits")]
    workers += [threading.Thread(target=calls, args=(lane,), name=f"calls-{lane}") for lane in range(4)]
    return workers


def check(store: Path, spool: Path, acked: Acked) -> list[str]:
    """Every invariant of the module docstring; the failures, in words."""
    failures: list[str] = []
    conn = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    try:
        integrity = conn.execute("PRAGMA integrity_check").fetchall()
        if integrity != [("ok",)]:
            failures.append(f"integrity check: {integrity[:5]}")
        for tenant, balance, total, reserved, held in conn.execute("""
                SELECT a.tenant, a.balance_micro, COALESCE((SELECT SUM(amount_micro) FROM ledger l
                                                            WHERE l.tenant = a.tenant), 0),
                       a.reserved_micro, COALESCE((SELECT SUM(reserved_micro) FROM calls c WHERE c.tenant = a.tenant
                                                   AND c.state IN ('ringing', 'answered')), 0)
                FROM accounts a"""):
            if balance != total:
                failures.append(f"{tenant}: balance {balance} != ledger sum {total}")
            if reserved != held:
                failures.append(f"{tenant}: holds {reserved} != open calls' holds {held}")
        versions = dict(conn.execute("SELECT version, comment FROM versions WHERE tenant = ?", (TENANT,)))
        for version, comment in acked.pushes.items():
            if versions.get(version) != comment:
                failures.append(f"acknowledged push version {version} ({comment!r}) is {versions.get(version)!r}")
        patched = set(conn.execute("SELECT version, number FROM list_patches WHERE tenant = ? AND op = 'add'",
                                   (TENANT,)))
        for version, number in acked.patches.items():
            if (version, number) not in patched:
                failures.append(f"acknowledged patch version {version} (+{number}) is missing")
        calls = {cid: (state, charge) for cid, state, charge in conn.execute(
            "SELECT call_id, state, charge_micro FROM calls WHERE tenant = ?", (TENANT,))}
        ledger = Counter(ref for (ref,) in conn.execute("SELECT ref FROM ledger WHERE tenant = ? AND kind = 'call'",
                                                        (TENANT,)))
        amounts = dict(conn.execute("SELECT ref, amount_micro FROM ledger WHERE tenant = ? AND kind = 'call'",
                                    (TENANT,)))
        for call_id, charge in acked.ended.items():
            if calls.get(call_id) != ("ended", charge):
                failures.append(f"acknowledged end of {call_id} (charge {charge}) is {calls.get(call_id)}")
            elif charge and (ledger[call_id] != 1 or amounts.get(call_id) != -charge):
                failures.append(f"{call_id}: {ledger[call_id]} ledger entries of {amounts.get(call_id)}, "
                                f"expected one of {-charge}")
        credited = Counter(ref for (ref,) in conn.execute(
            "SELECT ref FROM ledger WHERE tenant = ? AND kind = 'credit'", (TENANT,)))
        for reference in acked.credits:
            if credited[reference] != 1:
                failures.append(f"acknowledged credit {reference!r} is in the ledger {credited[reference]} times")
        card = conn.execute("SELECT COALESCE(SUM(amount_micro), 0) FROM sandbox_charges WHERE ok = 1").fetchone()[0]
        topups = conn.execute("SELECT COALESCE(SUM(amount_micro), 0) FROM ledger WHERE kind = 'topup'").fetchone()[0]
        if card != topups:
            failures.append(f"the card was charged {card} but the ledger has {topups} of top-ups")
    finally:
        conn.close()
    left = sorted(p.name for p in spool.iterdir()) if spool.exists() else []
    if left:
        failures.append(f"spool files left behind: {left}")
    return failures


def serving(server: ServeProcess) -> list[int]:
    """The workers that are alive and listening (a kill lands on a worker doing work, not on one starting)."""
    listening = {r.get("pid") for r in server.events("listening")}
    return [pid for pid in server.worker_pids() if pid in listening]


def run(kills: int, seed: int, data_dir: Path, out: Any = sys.stdout) -> int:
    rng = random.Random(seed)
    server = ServeProcess(data_dir, "--sandbox-latency-ms", "400", "--topup-retry-s", "0.5", "--topup-stale-s", "2",
                          "--reserve-max-s", "3600", name="crash-matrix", workers=2, seed_credit="10.00", poll_s=0.1)
    acked = Acked()
    stop = threading.Event()
    started = time.monotonic()
    done = 0
    exited = ""
    try:
        admin = admin_pb2_grpc.AdminStub(open_channel(server.address))
        admin.Card(admin_pb2.CardRequest(tenant=TENANT, number="4242424242424242", exp_month=12, exp_year=2035),
                   timeout=30)
        threads = lanes(server.address, acked, stop, rng)
        for t in threads:
            t.start()
        last_line = 0.0
        while done < kills:
            time.sleep(rng.uniform(0.2, 1.2))
            if server.proc.poll() is not None:
                exited = f"the server exited with code {server.proc.returncode} after {done} kills"
                break
            pids = serving(server)
            if len(pids) < 2:  # wait until the supervisor's replacement for the last one serves
                server.wait_for(lambda: len(serving(server)) >= 2, 30)
                continue
            os.kill(rng.choice(pids), signal.SIGKILL)
            done += 1
            if time.monotonic() - last_line >= 1 or done == kills:
                last_line = time.monotonic()
                with acked.lock:
                    print(f"kills {done}/{kills}  acknowledged: {len(acked.pushes)} pushes, {len(acked.patches)} "
                          f"patches, {len(acked.ended)} calls, {len(acked.credits)} credits  "
                          f"({time.monotonic() - started:.0f} s)", file=out, flush=True)
        server.wait_for(lambda: len(serving(server)) >= 2, 30)
        stop.set()
        deadline = time.monotonic() + 90
        for t in threads:
            t.join(max(0.1, deadline - time.monotonic()))
        # the top-ups a killed worker was charging are taken over (--topup-stale-s) and settle
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with sqlite3.connect(server.store_path) as conn:
                if not conn.execute("SELECT COUNT(*) FROM topups WHERE status = 'charging'").fetchone()[0]:
                    break
            time.sleep(0.5)
    finally:
        stop.set()
        server.stop()
    failures = check(server.store_path, data_dir / "spool", acked)
    with sqlite3.connect(server.store_path) as conn:
        topups = conn.execute("SELECT COUNT(*) FROM ledger WHERE kind = 'topup'").fetchone()[0]
    if exited:
        failures.append(exited)
    errors = server.events("internal_error")
    if errors:
        failures.append(f"{len(errors)} internal_error events in the server's log: {errors[:3]}")
    print(f"crash matrix: {done} kills in {time.monotonic() - started:.0f} s; acknowledged {len(acked.pushes)} pushes, "
          f"{len(acked.patches)} patches, {len(acked.ended)} whole calls, {len(acked.credits)} credits, "
          f"{topups} top-ups charged; "
          f"failed attempts by status: {dict(acked.statuses) or 'none'}", file=out)
    for failure in failures:
        print(f"FAILED: {failure}", file=out)
    print(f"crash matrix: {'PASS' if not failures else 'FAIL'}: {len(failures)} failed checks; lost acknowledged "
          f"writes, double charges and leftovers are each a failed check", file=out)
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.crash_matrix", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--kills", type=int, default=300, help="SIGKILLs of a worker (default 300)")
    p.add_argument("--seed", type=int, default=1, help="random seed of the kill moments and the load (default 1)")
    p.add_argument("--data-dir", type=Path, help="where the store goes (default: a temporary directory, removed)")
    args = p.parse_args(argv)
    if args.kills < 1:
        p.error("--kills must be at least 1")
    if args.data_dir is not None:
        return run(args.kills, args.seed, args.data_dir)
    with tempfile.TemporaryDirectory(prefix="callgate-crash-") as folder:
        return run(args.kills, args.seed, Path(folder) / "data")


if __name__ == "__main__":
    with sigterm_unwinds():  # SIGTERM unwinds: servers stopped, temporary directories removed
        sys.exit(main())
