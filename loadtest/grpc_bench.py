"""gRPC load generator for callgate: fixed arrival rate or maximum throughput, several client processes.

    # max throughput of a running server, 64 calls in flight from 2 client processes, 10 s
    python -m loadtest.grpc_bench --target 127.0.0.1:50051 --closed-loop 64 --procs 2 --duration 10

    # latency at a fixed 1,000 calls/s, against the server and the bare baseline in the same run
    python -m loadtest.grpc_bench --target 127.0.0.1:50051 --open-loop 1000 --duration 10 --compare-bare

    # the baseline alone: bare grpc.aio server against the bare sync thread-pool server
    python -m loadtest.grpc_bench --bare aio --bare sync --closed-loop 64 --procs 2 --duration 10

    # columnar batches of 1,000 inbound decisions
    python -m loadtest.grpc_bench --target 127.0.0.1:50051 --rpc batch --closed-loop 4 --compare-bare

Targets.  `--target HOST:PORT` is a server you started (give `--server-pid`
to have its CPU per call measured).  `--bare aio|sync` (repeatable) starts
`python -m loadtest.bare_server` in that mode as a subprocess on a free port
and measures it in the same run; `--compare-bare` is `--bare aio` next to
`--target`.  Targets are measured one after the other under identical load,
`--rounds` times interleaved (A B A B ...), and the table ends with the ratio
of each target to the first bare server (spec §6: the engine
may add at most 10 %, ratio of throughput >= 0.91).

Load.  `--closed-loop C`: C calls always in flight (split over the client
processes), each sent as soon as the previous one answers; measures maximum
throughput, latency is from send to answer.  `--open-loop R`: R calls per
second in total, at fixed intended start times (process p of P sends the
arrivals p, p+P, p+2P ... of the global schedule), whether or not earlier
calls have answered; latency is measured from each call's *intended* start,
so a stalled server or client is charged for every call it delays (no
coordinated omission, as wrk2 does).  The send lag (actual send - intended
start, the client's own lateness) and the service time (answer - actual send)
are reported separately.  A timer thread (time.sleep) hands the sends to
the asyncio loop, waking up early by its own measured delay (~0.15-0.25 ms
here, tracked by feedback) so that calls leave at their intended time; a call
that leaves early is timed from its actual send.

Bounds.  Every run stops at `--warmup` + `--duration` seconds or after
`--max-requests` measured calls, whichever comes first; calls in flight then
get `--timeout` (per-call deadline) to finish.  Warm-up calls are not
recorded.  In open loop at most `--max-inflight` calls per process are
outstanding: arrivals beyond are not sent and are counted as errors
CLIENT_DROPPED.

Requests.  InboundRequest(tenant, caller, called, at) cycling over the
product of `--caller` x `--called` (defaults: tenant acme, callers
+14155550666 (on the bare server's blacklist) and +14155551234, called
+14155550199, at 1764613800), or over `--requests FILE`, a JSON list of
[caller, called, at].  `--rpc batch` sends BatchRequest kind INBOUND of
`--batch-size` rows (fixed-width cells of `--width` bytes, NUL-padded;
`a` callers, `b` called, `at` int64 little-endian) and reports decisions/s.
Requests are serialized once; replies are not parsed (one probe call per
target before the run is parsed and printed).

Report.  Per target: successful calls/s over the measured window, errors by
gRPC status code, latency percentiles (HDR-like histogram, merged across
processes), client CPU seconds (getrusage of self + children over the run,
and the workers' own CPU during the load phase, as cores busy: near
`--procs` means the client is the bottleneck), and with a known server PID
its CPU per call.  `--json FILE` writes every figure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import grpc

from . import fleet, stats
from .loadgen import (
    DEFAULT_AT,
    DEFAULT_CALLED,
    DEFAULT_CALLERS,
    DEFAULT_TENANT,
    METHODS,
    LoadSpec,
    batch_payloads,
    combine,
    inbound_payloads,
    probe,
    request_rows,
    run_load,
)
from .process import add_target_arguments, sigterm_unwinds, started_targets
from .report import save_json

ROWS: list[tuple[str, str, Callable[[dict[str, Any]], float | None], bool]] = [
    # (label, format, getter, ratio wanted)
    ("calls/s (ok)", "{:,.0f}", lambda f: f["throughput_rps"], True),
    ("decisions/s", "{:,.0f}", lambda f: f["decisions_per_s"], True),
    ("offered calls/s", "{:,.0f}", lambda f: f.get("offered_rps"), False),
    ("ok calls", "{:,.0f}", lambda f: f["ok"], False),
    ("errors", "{:,.0f}", lambda f: sum(f["errors"].values()), False),
    ("latency p50 ms", "{:.3f}", lambda f: f["latency_ms"]["p50"], True),
    ("latency p90 ms", "{:.3f}", lambda f: f["latency_ms"]["p90"], True),
    ("latency p99 ms", "{:.3f}", lambda f: f["latency_ms"]["p99"], True),
    ("latency p99.9 ms", "{:.3f}", lambda f: f["latency_ms"]["p99.9"], True),
    ("latency max ms", "{:.3f}", lambda f: f["latency_ms"]["max"], False),
    ("service p50 ms", "{:.3f}", lambda f: f.get("service_ms", {}).get("p50"), True),
    ("service p99 ms", "{:.3f}", lambda f: f.get("service_ms", {}).get("p99"), True),
    ("send lag p99 ms", "{:.3f}", lambda f: f.get("send_lag_ms", {}).get("p99"), False),
    ("client CPU s (load)", "{:.2f}", lambda f: f["client_load_cpu_s"], False),
    ("client CPU s (total)", "{:.2f}", lambda f: f["client_total_cpu_s"], False),
    ("client cores busy", "{:.2f}", lambda f: f["client_cores_busy"], False),
    ("server cores busy", "{:.2f}", lambda f: f.get("server_cores_busy"), False),
    ("server CPU µs/call", "{:.0f}", lambda f: f.get("server_cpu_us_per_call"), True),
]


def format_table(figures: dict[str, dict[str, Any]], reference: str | None, batch: bool) -> str:
    rows = [row for row in ROWS if batch or row[0] != "decisions/s"]
    text = stats.format_table(figures, reference, rows)
    names = list(figures)
    errors = [f"  {n}: " + ", ".join(f"{k} {v}" for k, v in figures[n]["errors"].items())
              for n in names if figures[n]["errors"]]
    if errors:
        text += "\nerrors by status code:\n" + "\n".join(errors)
    return text


def warnings_for(name: str, f: dict[str, Any]) -> list[str]:
    out = []
    procs = f["client_procs"]
    if f["client_cores_busy"] > 0.85 * procs:
        out.append(f"{name}: client processes were {f['client_cores_busy']:.2f} cores busy out of {procs}: "
                   "the client may be the bottleneck (add --procs, or a faster client such as h2load)")
    if (os.cpu_count() or 1) <= 2 and f["client_cores_busy"] + f.get("server_cores_busy", 0.0) > 1.8:
        out.append(f"{name}: client and server share {os.cpu_count()} cores and kept them busy: "
                   "throughput is bounded by the machine, not only by the server")
    if f["mode"] == "open" and f.get("send_lag_ms", {}).get("p99", 0.0) > 1.0:
        out.append(f"{name}: p99 send lag {f['send_lag_ms']['p99']:.2f} ms: the client was late for its own "
                   "schedule; latency includes that lateness")
    if f["mode"] == "open" and f["throughput_rps"] < 0.95 * f.get("offered_rps", 0.0):
        out.append(f"{name}: answered {f['throughput_rps']:,.0f} calls/s of {f['offered_rps']:,.0f} offered")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.grpc_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(p)
    g = p.add_argument_group("load (one of)")
    m = g.add_mutually_exclusive_group(required=True)
    m.add_argument("--open-loop", type=float, metavar="RATE", help="fixed arrival rate, calls/s in total")
    m.add_argument("--closed-loop", type=int, metavar="CONCURRENCY", help="calls in flight in total (max throughput)")
    g.add_argument("--rpc", choices=("inbound", "batch"), default="inbound", help="Inbound (default) or DecideBatch")
    fleet.add_arguments(g, duration=10.0, procs=2, channels=1, timeout=5.0)
    g.add_argument("--max-requests", type=int, default=1_000_000,
                   help="stop a run after this many measured calls (default 1,000,000)")
    g.add_argument("--max-inflight", type=int, default=10_000,
                   help="open loop: outstanding calls per process beyond which arrivals are dropped (10,000)")
    g.add_argument("--rounds", type=int, default=1, help="runs per target, interleaved across targets (default 1)")
    g = p.add_argument_group("requests")
    g.add_argument("--tenant", default=DEFAULT_TENANT, help=f"tenant (default {DEFAULT_TENANT})")
    g.add_argument("--caller", action="append", help=f"caller (repeatable; default {' '.join(DEFAULT_CALLERS)})")
    g.add_argument("--called", action="append", help=f"called number (repeatable; default {DEFAULT_CALLED[0]})")
    g.add_argument("--at", type=int, default=DEFAULT_AT, help=f"instant, UTC seconds (default {DEFAULT_AT})")
    g.add_argument("--requests", type=Path, metavar="FILE",
                   help="JSON list of [caller, called, at] (overrides the above)")
    g.add_argument("--batch-size", type=int, default=1000, help="rows per DecideBatch call (default 1000)")
    g.add_argument("--width", type=int, default=16, help="bytes per text cell in batches (default 16)")
    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.procs < 1 or args.duration <= 0 or args.max_requests < args.procs or args.rounds < 1:
        raise SystemExit("need --procs >= 1, --duration > 0, --max-requests >= --procs, --rounds >= 1")
    if args.open_loop is not None and args.open_loop <= 0:
        raise SystemExit("--open-loop RATE must be > 0")
    rows = request_rows(args.caller or DEFAULT_CALLERS, args.called or DEFAULT_CALLED, args.at, args.requests)
    if args.rpc == "inbound":
        payloads, items = inbound_payloads(args.tenant, rows), 1
    else:
        payloads, items = batch_payloads(args.tenant, rows, args.batch_size, args.width), args.batch_size
    spec = LoadSpec(target="", method=METHODS[args.rpc], payloads=payloads, items_per_call=items,
                    mode="open" if args.open_loop is not None else "closed", rate=float(args.open_loop or 0.0),
                    concurrency=int(args.closed_loop or 0), procs=args.procs, channels=args.channels,
                    warmup_s=args.warmup, duration_s=args.duration, max_requests=args.max_requests,
                    timeout_s=args.timeout, max_inflight=args.max_inflight)
    with started_targets(args) as targets:
        load = (f"open loop {spec.rate:,.0f} calls/s" if spec.mode == "open"
                else f"closed loop, {spec.concurrency} in flight")
        print(f"{args.rpc}: {load}, {spec.procs} client process(es) x {spec.channels} channel(s), "
              f"{spec.warmup_s:g} s warm-up + {spec.duration_s:g} s (or {spec.max_requests:,} calls), "
              f"{len(payloads)} distinct request(s), {spec.items_per_call} decision(s) per call")
        for t in targets:
            try:
                print(f"  probe {t.name} ({t.address}): {probe(t.address, args.rpc, payloads[0])}")
            except grpc.FutureTimeoutError:
                raise SystemExit(f"{t.name}: nothing answers at {t.address}") from None
            except grpc.RpcError as exc:
                print(f"  probe {t.name} ({t.address}): {exc.code().name}: {exc.details()}")
        for r in range(args.rounds):
            for t in targets:
                spec.target = t.address
                result = run_load(spec, t.pid)
                t.runs.append(result)
                f = result.figures()
                print(f"  round {r + 1} {t.name}: {f['throughput_rps']:,.0f} calls/s, p50 "
                      f"{f['latency_ms']['p50']:.3f} ms, p99 {f['latency_ms']['p99']:.3f} ms, "
                      f"{sum(f['errors'].values())} errors", flush=True)

    figures = {t.name: combine(t.runs) for t in targets}
    reference = next((t.name for t in targets if t.bare is not None), None)
    if reference is not None and len(targets) == 1:
        reference = None
    print()
    print(format_table(figures, reference, args.rpc == "batch"))
    notes = [w for name, f in figures.items() for w in warnings_for(name, f)]
    if args.rounds > 1:
        notes.append(f"calls/s is the median of {args.rounds} rounds; latency merges every round's samples")
    for n in notes:
        print(f"note: {n}")
    ratios = {}
    if reference is not None:
        for name, f in figures.items():
            if name != reference:
                ref = figures[reference]
                ratios[f"{name}/{reference}"] = {
                    "throughput": f["throughput_rps"] / ref["throughput_rps"] if ref["throughput_rps"] else None,
                    "p50": f["latency_ms"]["p50"] / ref["latency_ms"]["p50"] if ref["latency_ms"]["p50"] else None,
                    "p99": f["latency_ms"]["p99"] / ref["latency_ms"]["p99"] if ref["latency_ms"]["p99"] else None,
                }
    if args.json:
        spec_public = {k: v for k, v in asdict(spec).items() if k != "payloads"}
        save_json(args.json, {"config": vars(args), "spec": spec_public, "machine": {"cpus": os.cpu_count()},
                              "results": figures, "ratios": ratios, "notes": notes,
                              "addresses": {t.name: t.address for t in targets}})
    return 0


if __name__ == "__main__":
    with sigterm_unwinds():  # SIGTERM unwinds: servers stopped, temporary directories removed
        sys.exit(main())
