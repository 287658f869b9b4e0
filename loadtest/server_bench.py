"""The acceptance figures of the gRPC server, measured side by side in one run against real servers.

    python -m loadtest.server_bench                      # the full run (~3 minutes on the 2-core machine)
    python -m loadtest.server_bench --quick              # seconds: tiny loads, every section
    python -m loadtest.server_bench --sections 2,3 --json out.json

It starts, on 127.0.0.1 only, `python -m callgate serve` with one worker
("w1"), with `--workers 2` ("w2"), and the bare grpcio baseline
(`loadtest.bare_server --mode aio`), each on a fresh store seeded with
examples/acme.json, and measures:

  1. Unary Inbound latency, one worker, open loop (grpc_bench: latency from
     each call's intended start): 200 calls/s for 10 s, p50 <= 0.8 ms and
     p99 <= 2.5 ms; 1,000 calls/s for 10 s, p99 <= 15 ms.
  2. Saturation throughput of one worker against the bare grpcio handler in
     the same run: h2load -n 50000 -c 4 -m 16, 3 interleaved rounds, ratio of
     req/s (best and median) >= 0.90.
  3. --workers 2 ("w2") against two bare grpc.aio processes sharing one
     port with SO_REUSEPORT ("bare2", as w2's workers share theirs) and
     against one worker: h2load -n 50000 -c 8 -m 16 (8 connections, for
     SO_REUSEPORT to spread them), 3 interleaved rounds (w1 w2 bare2 ...):
     w2 / bare2 req/s, median of rounds, >= 0.95; w2 / w1 req/s (no target:
     1.7 cannot be reached with the client on the same 2 cores).
     Then the server CPU per call of w2 against w1 at one offered load (an
     open loop of 2,000 Inbound calls/s for 5 s over 8 connections, 3
     interleaved rounds), counting every process of each server (supervisor,
     workers, compile processes: utime + stime from /proc over the run):
     median ratio <= 1.10.  Last, the CPU of each server at rest (10 s, after
     a second of quiet).  The h2load client's CPU (getrusage of the reaped
     child) and each worker's CPU (/proc) are reported, with the ceiling the
     machine's cores put on w2 / w1.
  4. DecideBatch, INBOUND batches of 1,000 rows, one worker: decisions/s
     >= 800,000, with grpc_bench closed loop (4 calls in flight) and with
     h2load (the same batch body); the bare server (which answers rows of
     zeros) alongside shows what the transport alone allows.
  5. No stalls: p99 of Inbound at an open loop of 1,000 calls/s for 15 s,
     once without and once with, 4 s into the measured window, an
     Admin.PushSettingsUpload (the document in 256 KiB pieces, as the CLI
     sends it) of a tenant "big" with a 1,000,000-entry blacklist
     (loadtest.world.big_tenant, 120 s deadline); with-push
     p99 <= 2 x without-push p99.  The push's own duration is reported.
  6. Propagation, --workers 2: time from a PushSettings reply until every
     worker reports the new version (Admin.Stats over fresh connections
     reports the answering worker's pid and loaded_version) <= 1 s; 5
     pushes, the worst counts.  A worker is seen only when a fresh
     connection lands on it, so each figure is an upper bound; the last
     sighting of the old version (a lower bound) is reported too.
  7. kill -9 of one worker of --workers 2 under an open loop of 500 calls/s
     for 8 s (8 connections, opened again until both workers hold some; the
     victim is the worker holding most), 3 s in: calls answered after the
     kill, errors by status (UNAVAILABLE for calls in flight on the dead
     worker is expected), whether the supervisor started a replacement that
     answers, PRAGMA integrity_check of the store afterwards, and whether
     any process of the killed worker outlived it.

The sections run in the order 1 2 4 (w1 and bare), 3 6 7 (w2, with w1 for
3), 5 (w1 last, as the big tenant stays in it); the table is in section
order.

Every figure is printed with its target and PASS/FAIL in a summary table at
the end (and written with every detail to --json FILE).  Nothing here
asserts a target.  Every load is bounded in count and time; every server
is stopped by its PID (SIGTERM, then SIGKILL after a timeout), and any
process it left behind is killed by PID too.

On a 2-core machine the client (h2load or Python) shares the CPU with the
server: the bench samples /proc/stat before starting and warns when other
processes are busy (--wait-idle waits for a quiet machine).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import server_resilience as resilience
from . import server_sections as sections
from .loadgen import INSTALL_HINT, h2load_path
from .process import BareServer, Interference, ServeProcess, busy_cores, free_port, sigterm_unwinds
from .report import save_json
from .server_sections import SECTIONS, Plan, Report, say


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.server_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: seconds, tiny loads, every section")
    p.add_argument("--sections", default="1,2,3,4,5,6,7",
                   help="which sections to run, comma-separated numbers (default all: 1,2,3,4,5,6,7)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    p.add_argument("--rounds", type=int, help="h2load rounds per target in sections 2 and 3 (default 3; quick 1)")
    p.add_argument("--requests", type=int, help="h2load -n in sections 2 and 3 (default 50,000; quick 2,000)")
    p.add_argument("--blacklist", type=int, help="blacklist entries of the pushed tenant in section 5 "
                                                 "(default 1,000,000; quick 20,000)")
    p.add_argument("--client-procs", type=int, default=1,
                   help="grpc_bench client processes for the open loops (default 1: leaves the server a core)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="SECONDS",
                   help="before starting, wait up to SECONDS for the machine to be idle (default: only warn)")
    return p


def wait_idle(limit_s: float) -> float:
    """Machine cores busy (1 s sample), waiting up to limit_s for it to drop under 0.3."""
    deadline = time.monotonic() + limit_s
    while True:
        busy = busy_cores(1.0)
        if busy < 0.3 or time.monotonic() >= deadline:
            return busy
        say(f"the machine is busy ({busy:.2f} cores): waiting")
        time.sleep(4.0)


@contextlib.contextmanager
def started(what: str, make: Callable[[], Any]) -> Iterator[Any]:
    t = time.monotonic()
    obj = make()
    say(f"{what} started in {time.monotonic() - t:.1f} s at {obj.address} (pid {obj.pid})")
    try:
        yield obj
    finally:
        code = obj.stop()
        say(f"{what} stopped (exit code {code})")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with sigterm_unwinds():  # unwinds: every server is stopped in a finally
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    plan = Plan.quick_plan() if args.quick else Plan()
    plan.client_procs = args.client_procs
    if args.rounds:
        plan.rounds = args.rounds
    if args.requests:
        plan.h2_requests = args.requests
    if args.blacklist:
        plan.blacklist = args.blacklist
    try:
        wanted = sorted({int(s) for s in args.sections.split(",") if s.strip()})
    except ValueError:
        raise SystemExit("--sections: comma-separated numbers 1..7") from None
    if not wanted or any(s not in SECTIONS for s in wanted):
        raise SystemExit("--sections: comma-separated numbers 1..7")
    have_h2load = h2load_path() is not None
    if not have_h2load:
        say(f"{INSTALL_HINT}: sections 2 and 3 are skipped, section 4 runs without it")

    cores = os.cpu_count() or 1
    idle_busy = wait_idle(args.wait_idle)
    say(f"server_bench ({'quick' if plan.quick else 'full'}): sections {wanted}, {cores} cores; other processes "
        f"kept {idle_busy:.2f} cores busy just before the start")
    rep = Report()
    if idle_busy > 0.3:
        rep.note(0, f"other processes kept {idle_busy:.2f} cores busy when the bench started: figures may suffer")
    machine = {"cpus": cores, "busy_cores_before": idle_busy, "loadavg": Path("/proc/loadavg").read_text().split()[:3],
               "h2load": have_h2load}
    t_start = time.monotonic()
    offset_ns = 1_500_000_000  # client start-up before the measured window, until measured
    need_w1 = bool({1, 2, 3, 4, 5} & set(wanted))
    need_bare = bool({1, 2, 4} & set(wanted))
    need_w2 = bool({3, 6, 7} & set(wanted))
    servers: list[ServeProcess] = []
    crashed: list[int] = []
    interference: dict[str, Any] = {}

    def run(section: int, fn: Callable[[], Any]) -> Any:
        """One section; an exception is reported (and the run goes on), not raised.  The CPU other processes
        used meanwhile is noted: on a 2-core machine, any of it shows in the figures."""
        meter = Interference()
        try:
            return fn()
        except Exception as exc:
            crashed.append(section)
            traceback.print_exc()
            say(f"section {section} ({SECTIONS[section]}) failed: {type(exc).__name__}: {exc}")
            rep.add(section, f"section {SECTIONS[section]} did not complete: {type(exc).__name__}", None,
                    target="completes", check=lambda _: False)
            return None
        finally:
            busy, top = meter.cores()
            interference[SECTIONS[section]] = {"other_cores": busy, "top": top}
            if busy > 0.1:
                rep.note(section, f"other processes kept {busy:.2f} cores busy during this section ({'; '.join(top)}):"
                                  " its figures may suffer; rerun on a quiet machine")

    def serve(name: str, workers: int) -> ServeProcess:
        server = ServeProcess(Path(tmp) / name, name=name, workers=workers, seed_credit="10.00")
        servers.append(server)
        return server

    def section_workers(w1: ServeProcess, w2: ServeProcess) -> None:
        """Section 3 with its baseline: two bare grpc.aio processes sharing one port (SO_REUSEPORT), as w2's
        workers do, started for it alone."""
        with contextlib.ExitStack() as bare_stack:
            address = f"127.0.0.1:{free_port()}"
            bare2 = [bare_stack.enter_context(started(f"bare grpcio server (aio) {i + 1}/2 on {address}",
                                                      lambda: BareServer("aio", listen=address, reuse_port=True)))
                     for i in range(2)]
            sections.section_workers(w1, w2, bare2, plan, rep)

    with tempfile.TemporaryDirectory(prefix="server-bench-") as tmp, contextlib.ExitStack() as stack:
        w1 = stack.enter_context(started("w1 (callgate serve, 1 worker)", lambda: serve("w1", 1))) if need_w1 else None
        with contextlib.ExitStack() as bare_stack:
            bare = (bare_stack.enter_context(started("bare grpcio server (aio)", lambda: BareServer("aio")))
                    if need_bare else None)
            if 1 in wanted and w1 is not None:
                offset_ns = run(1, lambda: sections.section_latency(w1, bare, plan, rep)) or offset_ns
            if 2 in wanted and w1 is not None and bare is not None:
                if have_h2load:
                    run(2, lambda: sections.section_saturation(w1, bare, plan, rep))
                else:
                    rep.note(2, "skipped: " + INSTALL_HINT)
            if 4 in wanted and w1 is not None:
                run(4, lambda: sections.section_batch(w1, bare, plan, rep, have_h2load))
        if need_w2:
            with started("w2 (callgate serve --workers 2)", lambda: serve("w2", 2)) as w2:
                if 3 in wanted and w1 is not None:
                    if have_h2load:
                        run(3, lambda: section_workers(w1, w2))
                    else:
                        rep.note(3, "skipped: " + INSTALL_HINT)
                if 6 in wanted:
                    run(6, lambda: resilience.section_propagation(w2, plan, rep))
                if 7 in wanted:
                    run(7, lambda: resilience.section_kill(w2, plan, rep))
        if 5 in wanted and w1 is not None:
            run(5, lambda: resilience.section_stalls(w1, plan, rep, offset_ns))
    for server in servers:
        if server.left_behind:
            rep.note(0, f"{server.name}: process(es) still alive 3 s after the server exited, killed by the bench: "
                        f"{server.left_behind}")
    elapsed = time.monotonic() - t_start

    rep.rows.sort(key=lambda r: r.section)  # stable: each section's rows keep their order
    print()
    print(f"server_bench summary ({'quick' if plan.quick else 'full'} run, {elapsed:.0f} s, {cores} cores; "
          "targets of spec §6)")
    print(rep.table())
    for section in sorted(rep.notes):
        for text in rep.notes[section]:
            print(f"note {section}: {text}" if section else f"note: {text}")
    failed = [r for r in rep.rows if r.ok is False]
    print(f"{sum(1 for r in rep.rows if r.ok)} PASS, {len(failed)} FAIL"
          + (f"; sections that did not complete: {crashed}" if crashed else ""))
    if args.json:
        save_json(args.json, {"plan": asdict(plan), "machine": machine, "elapsed_s": elapsed,
                              "sections": rep.sections, "summary": [asdict(r) for r in rep.rows],
                              "notes": {str(k): v for k, v in rep.notes.items()}, "crashed": crashed,
                              "interference": interference})
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
