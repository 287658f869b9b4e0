"""A proxy host's replica (`callgate replica`): how fast a push is in force in it, and what a local decision
costs beside the RPC.

    .venv/bin/python -m loadtest.replica_bench                     # ~1 minute on the 2-core machine
    .venv/bin/python -m loadtest.replica_bench --pushes 20 --json bench-results/replica.json

It starts, on 127.0.0.1, `callgate serve --workers 2` seeded with examples/acme.json and `callgate replica`
into a temporary directory, then:

  1. Propagation: `--pushes` changes of acme, one at a time, alternately a whole push (Admin.PushSettings) and
     a blacklist patch (Admin.PatchBlacklist), each through a fresh connection (either worker); for each, the
     milliseconds from sending it to the moment the replica's file holds the new version (the directory is
     looked at every 2 ms): p50, p99, max.  Target: p99 <= 1,000 ms.
  2. Decision time, in this Python process: `engine.replica.LocalDecisions.inbound` on the replica's file
     against a unary Decisions.Inbound over loopback (grpcio's sync client), the same questions; p50 and p99
     in microseconds, and local p99 against RPC p50.  (Inside a Kamailio worker is the Kamailio benchmark's.)

Every load is bounded in count and time; servers and the replica are stopped by their PIDs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from engine import replica
from loadtest.cluster_bench import pct
from loadtest.process import EXAMPLE, ReplicaProcess, ServeProcess, free_port
from loadtest.server_sections import Report

TENANT = "acme"
NUMBER = "+14155550199"
AT = 1796149800
CALLERS = ["+14155550666", "+12125550000", "anonymous", "4155550123", "+4930123456"]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _held_version(directory: Path) -> int:
    held = replica.held(directory).get(TENANT)
    return held[0] if held else 0


def propagation(server: ServeProcess, directory: Path, pushes: int, budget_s: float) -> dict[str, Any]:
    doc = json.loads(EXAMPLE.read_text())
    delays: list[float] = []
    late = 0
    start = time.monotonic()
    for i in range(pushes):
        if time.monotonic() - start > budget_s:
            break
        number = f"+1202555{i % 10_000:04d}"
        with server.channel() as channel:   # a fresh connection: either worker takes it
            admin = admin_pb2_grpc.AdminStub(channel)
            t0 = time.monotonic()
            if i % 2 == 0:
                doc["blacklist"] = [*doc["blacklist"][:50], number]
                version = admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()),
                                             timeout=30).version
            else:
                version = admin.PatchBlacklist(admin_pb2.PatchBlacklistRequest(tenant=TENANT, add=[number]),
                                               timeout=30).version
                doc["blacklist"] = [*doc["blacklist"], number]
        while _held_version(directory) < version:
            if time.monotonic() - t0 > 10.0:
                late += 1
                break
            time.sleep(0.002)
        else:
            delays.append(time.monotonic() - t0)
    ms = [d * 1000 for d in delays]
    return {"pushes": len(ms), "late_over_10s": late, "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99),
            "max_ms": max(ms) if ms else None}


def decision_time(server: ServeProcess, directory: Path, local_n: int, rpc_n: int) -> dict[str, Any]:
    local = replica.LocalDecisions(directory)
    local_us: list[float] = []
    for i in range(local_n):
        caller = CALLERS[i % len(CALLERS)]
        t0 = time.perf_counter_ns()
        answer = local.inbound(TENANT, caller, NUMBER, AT)
        local_us.append((time.perf_counter_ns() - t0) / 1000)
        if answer is None:
            raise RuntimeError("the replica has no snapshot of acme")
    local.close()
    rpc_us: list[float] = []
    with server.channel() as channel:
        stub = decisions_pb2_grpc.DecisionsStub(channel)
        for i in range(rpc_n):
            request = decisions_pb2.InboundRequest(tenant=TENANT, caller=CALLERS[i % len(CALLERS)], called=NUMBER,
                                                   at=AT)
            t0 = time.perf_counter_ns()
            stub.Inbound(request, timeout=10)
            rpc_us.append((time.perf_counter_ns() - t0) / 1000)
    return {"local_us": {"p50": pct(local_us, 50), "p99": pct(local_us, 99), "n": local_n},
            "rpc_us": {"p50": pct(rpc_us[rpc_n // 10:], 50), "p99": pct(rpc_us[rpc_n // 10:], 99), "n": rpc_n}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.replica_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pushes", type=int, default=100, help="changes of acme to time (default 100)")
    parser.add_argument("--local", type=int, default=50_000, help="local decisions to time (default 50,000)")
    parser.add_argument("--rpc", type=int, default=3_000, help="unary RPC decisions to time (default 3,000)")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if args.pushes < 1 or args.local < 1 or args.rpc < 10:
        parser.error("--pushes and --local at least 1, --rpc at least 10")
    rep = Report()
    with tempfile.TemporaryDirectory(prefix="callgate-replica-bench-") as tmp:
        data, directory = Path(tmp) / "data", Path(tmp) / "replica"
        server = ServeProcess(data, listen=f"127.0.0.1:{free_port()}", workers=2, poll_s=0.2)
        follower = ReplicaProcess(server.address, directory, name="bench")
        try:
            follower.wait_for(TENANT, timeout_s=30)
            say(f"1 propagation: {args.pushes} changes of {TENANT}")
            prop = propagation(server, directory, args.pushes, budget_s=300)
            rep.add(1, f"push -> in force in the replica, p50 ms ({prop['pushes']} changes)", prop["p50_ms"], "{:.0f}")
            rep.add(1, "push -> in force in the replica, p99 ms", prop["p99_ms"], "{:.0f}", "<= 1000",
                    lambda v: v <= 1000)
            rep.add(1, "  max ms", prop["max_ms"], "{:.0f}")
            if prop["late_over_10s"]:
                rep.note(1, f"{prop['late_over_10s']} change(s) not in the replica within 10 s")
            say("2 decision time: local against unary RPC")
            dec = decision_time(server, directory, args.local, args.rpc)
            loc, rpc = dec["local_us"], dec["rpc_us"]
            rep.add(2, "local decision p50 / p99 µs (LocalDecisions.inbound, called from Python)",
                    text=f"{loc['p50']:.1f} / {loc['p99']:.1f}")
            rep.add(2, "unary Inbound RPC p50 / p99 µs (loopback, grpcio client)",
                    text=f"{rpc['p50']:.0f} / {rpc['p99']:.0f}")
            rep.add(2, "RPC p50 / local p99", rpc["p50"] / loc["p99"] if loc["p99"] else None, "{:.0f}x")
            rep.note(2, "in this Python process; the figure inside a Kamailio worker is the Kamailio benchmark's")
        finally:
            follower.stop()
            server.stop()
    print("\nreplica_bench summary (2 cores; issue targets)")
    print(rep.table())
    for section, notes in sorted(rep.notes.items()):
        for text in notes:
            print(f"note {section}: {text}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"propagation": prop, "decision_time": dec}, indent=2) + "\n")
    return 0 if all(r.ok is not False for r in rep.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
