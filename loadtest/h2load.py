"""Drive nghttp2's `h2load` against a gRPC unary method (the spec §6 figures were taken with it).

    python -m loadtest.h2load --target 127.0.0.1:50051 -n 20000 -c 4 -m 16
    python -m loadtest.h2load --target 127.0.0.1:50051 -n 20000 -c 4 -m 16 --compare-bare
    python -m loadtest.h2load --bare aio --bare sync -n 20000 -c 4 -m 16

h2load is a C HTTP/2 client: far cheaper per call than a Python gRPC
client, so on a 2-core machine it leaves more CPU to the server.  Install it
with `apt-get install -y nghttp2-client` (Debian/Ubuntu).

A gRPC unary call is an HTTP/2 POST to /<package>.<Service>/<Method> with
`content-type: application/grpc` and `te: trailers`, whose body is one
length-prefixed message (1 byte compressed flag 0, 4-byte big-endian
length, the serialized protobuf).  h2load sends the same body for every
request (`-d FILE`), `-n` requests in all over `-c` connections with at
most `-m` concurrent streams each, from `-t` threads.

Caveat: h2load judges by the HTTP status, and gRPC errors travel as
HTTP 200 with a non-zero `grpc-status` trailer, so h2load counts them as
successes.  Hence (1) one probe call with a real gRPC client before the
run, and (2) the reply bytes: every reply to the same request is the same
message, so `data bytes / (5 + reply size)` counts the replies that carried
a message; fewer than succeeded means errors ("replies with a message").
Latency percentiles come from h2load's per-request `--log-file`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import grpc

from callgate.v1 import decisions_pb2

from . import stats
from .loadgen import (
    DEFAULT_AT,
    DEFAULT_CALLED,
    DEFAULT_CALLERS,
    DEFAULT_TENANT,
    H2LOAD_ROWS,
    INSTALL_HINT,
    METHODS,
    batch_message,
    h2load_path,
    probe_reply,
    request_rows,
    run_h2load,
)
from .process import add_target_arguments, sigterm_unwinds, started_targets
from .report import save_json


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.h2load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_target_arguments(p)
    p.add_argument("-n", "--requests", type=int, default=10_000, help="requests in all (default 10,000)")
    p.add_argument("-c", "--clients", type=int, default=4, help="HTTP/2 connections (default 4)")
    p.add_argument("-m", "--max-streams", type=int, default=16, help="concurrent streams per connection (16)")
    p.add_argument("-t", "--threads", type=int, default=1, help="h2load threads (default 1)")
    p.add_argument("--rounds", type=int, default=1, help="runs per target, interleaved (best req/s kept)")
    p.add_argument("--timeout", type=float, default=300.0, help="kill h2load after this many seconds (300)")
    p.add_argument("--rpc", choices=("inbound", "batch"), default="inbound")
    p.add_argument("--tenant", default=DEFAULT_TENANT)
    p.add_argument("--caller", default=DEFAULT_CALLERS[1], help=f"caller (default {DEFAULT_CALLERS[1]})")
    p.add_argument("--called", default=DEFAULT_CALLED[0], help=f"called number (default {DEFAULT_CALLED[0]})")
    p.add_argument("--at", type=int, default=DEFAULT_AT)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--json", type=Path, help="write the figures to this file")
    args = p.parse_args(argv)

    if h2load_path() is None:
        print(INSTALL_HINT, file=sys.stderr)
        return 2
    rows = request_rows([args.caller], [args.called], args.at, None)
    if args.rpc == "inbound":
        message = decisions_pb2.InboundRequest(tenant=args.tenant, caller=args.caller, called=args.called,
                                               at=args.at).SerializeToString()
    else:
        message = batch_message(args.tenant, [rows[i % len(rows)] for i in range(args.batch_size)],
                                args.width).SerializeToString()
    method = METHODS[args.rpc]

    runs: dict[str, list[dict[str, Any]]] = {}
    with started_targets(args) as targets:
        reply_sizes: dict[str, int | None] = {}
        for t in targets:
            try:
                reply = probe_reply(t.address, method, message)
                reply_sizes[t.name] = len(reply)
                print(f"probe {t.name} ({t.address}): OK, reply of {len(reply)} bytes")
            except grpc.FutureTimeoutError:
                raise SystemExit(f"{t.name}: nothing answers at {t.address}") from None
            except grpc.RpcError as exc:
                reply_sizes[t.name] = None
                print(f"probe {t.name} ({t.address}): {exc.code().name}: {exc.details()}; h2load will count "
                      "such replies as succeeded")
        for r in range(args.rounds):
            for t in targets:
                f = run_h2load(t.address, message, method, args.requests, args.clients, args.max_streams,
                               args.threads, args.timeout, t.pid, reply_sizes[t.name])
                runs.setdefault(t.name, []).append(f)
                print(f"round {r + 1} {t.name}: {f['req_per_s']:,.0f} req/s, p50 {f['latency_ms']['p50']:.3f} ms, "
                      f"p99 {f['latency_ms']['p99']:.3f} ms", flush=True)
    figures = {name: max(rs, key=lambda f: f["req_per_s"]) for name, rs in runs.items()}
    reference = next((t.name for t in targets if t.bare is not None), None)
    print()
    print(f"h2load -n {args.requests} -c {args.clients} -m {args.max_streams} -t {args.threads}, {args.rpc}"
          + (f", best of {args.rounds} rounds" if args.rounds > 1 else ""))
    print(stats.format_table(figures, reference if len(targets) > 1 else None, H2LOAD_ROWS))
    for name, f in figures.items():
        done = f["requests"]["succeeded"]
        if f.get("replies_with_message") is not None and f["replies_with_message"] < done:
            print(f"note: {name}: {done - f['replies_with_message']:,} of {done:,} replies carried no message: "
                  "gRPC errors that h2load counted as succeeded")
    if (os.cpu_count() or 1) <= 2:
        print(f"note: h2load and the server share {os.cpu_count()} cores")
    if args.json:
        save_json(args.json, {"config": vars(args), "results": figures, "rounds": runs})
    return 0


if __name__ == "__main__":
    with sigterm_unwinds():  # SIGTERM unwinds: servers stopped, temporary directories removed
        sys.exit(main())
