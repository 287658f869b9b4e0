"""Drive nghttp2's `h2load` against a gRPC unary method (the SPEC §6 figures were taken with it).

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
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from callgate.v1 import decisions_pb2

from . import stats
from .bare_server import BareServer
from .grpc_bench import (
    DEFAULT_AT,
    DEFAULT_CALLED,
    DEFAULT_CALLERS,
    DEFAULT_TENANT,
    METHODS,
    batch_message,
    request_rows,
)
from .stats import Histogram, proc_cpu_seconds

INSTALL_HINT = "h2load is not installed: apt-get install -y nghttp2-client"
UNITS_US = {"us": 1.0, "ms": 1e3, "s": 1e6}


def h2load_path() -> str | None:
    return shutil.which("h2load")


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: flag 0 (not compressed), 4-byte big-endian length, the bytes."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def write_body(path: Path, message: bytes) -> Path:
    path.write_bytes(grpc_frame(message))
    return path


def h2load_command(url: str, body: Path, n: int, c: int, m: int, t: int, log_file: Path | None = None,
                   h2load: str = "h2load", extra: list[str] | None = None) -> list[str]:
    """The h2load command line for n POSTs of `body` to `url` (gRPC headers set)."""
    cmd = [h2load, "-n", str(n), "-c", str(c), "-m", str(m), "-t", str(t), "-d", str(body),
           "-H", "content-type: application/grpc", "-H", "te: trailers"]
    if log_file is not None:
        cmd.append(f"--log-file={log_file}")
    return [*cmd, *(extra or []), url]


def _us(text: str) -> float:
    """'380us' / '17.22ms' / '1.5s' -> microseconds."""
    match = re.fullmatch(r"([0-9.]+)(us|ms|s)", text)
    if not match:
        raise ValueError(f"not an h2load duration: {text!r}")
    return float(match.group(1)) * UNITS_US[match.group(2)]


def parse_output(text: str) -> dict[str, Any]:
    """The figures of h2load's summary: req/s, requests by outcome, status codes, traffic, time rows."""
    out: dict[str, Any] = {}
    if m := re.search(r"finished in ([0-9.]+)(us|ms|s), ([0-9.]+) req/s", text):
        out["finished_s"] = float(m.group(1)) * UNITS_US[m.group(2)] / 1e6
        out["req_per_s"] = float(m.group(3))
    if m := re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, (\d+) failed, "
                      r"(\d+) errored, (\d+) timeout", text):
        keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
        out["requests"] = {k: int(v) for k, v in zip(keys, m.groups(), strict=True)}
    if m := re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text):
        out["status_codes"] = {k: int(v) for k, v in zip(("2xx", "3xx", "4xx", "5xx"), m.groups(), strict=True)}
    if m := re.search(r"traffic: .*?\((\d+)\) total, .*?\((\d+)\) headers.*?, .*?\((\d+)\) data", text):
        out["traffic_bytes"] = {"total": int(m.group(1)), "headers": int(m.group(2)), "data": int(m.group(3))}
    for key, label in (("request_us", "time for request"), ("connect_us", "time for connect"),
                       ("first_byte_us", "time to 1st byte")):
        if m := re.search(label + r":\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)%", text):
            out[key] = {"min": _us(m.group(1)), "max": _us(m.group(2)), "mean": _us(m.group(3)),
                        "sd": _us(m.group(4)), "within_sd_pct": float(m.group(5))}
    if "req_per_s" not in out or "requests" not in out:
        raise ValueError("h2load output not understood:\n" + text[-2000:])
    return out


def parse_log(path: Path) -> Histogram:
    """Per-request durations (µs, third column of --log-file) as a histogram in ns."""
    durations = [int(line.split("\t")[2]) * 1000 for line in path.read_text().splitlines() if line.count("\t") >= 2]
    hist = Histogram()
    hist.record_many(np.asarray(durations, dtype=np.int64))
    return hist


def run_h2load(target: str, message: bytes, method: str = METHODS["inbound"], n: int = 10_000, c: int = 4,
               m: int = 16, t: int = 1, timeout_s: float = 300.0, server_pid: int | None = None,
               reply_size: int | None = None) -> dict[str, Any]:
    """Run h2load once against `target` (HOST:PORT) and return its parsed figures.

    `reply_size`: serialized size of the expected reply, to count the replies that carried one."""
    exe = h2load_path()
    if exe is None:
        raise RuntimeError(INSTALL_HINT)
    if t > c or n < c:
        raise ValueError("h2load needs threads <= clients <= requests")
    with tempfile.TemporaryDirectory(prefix="h2load-") as tmp:
        body = write_body(Path(tmp) / "body.bin", message)
        log = Path(tmp) / "requests.log"
        cmd = h2load_command(f"http://{target}{method}", body, n, c, m, t, log, exe)
        cpu0 = proc_cpu_seconds(server_pid) if server_pid else None
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        cpu1 = proc_cpu_seconds(server_pid) if server_pid else None
        if proc.returncode != 0:
            raise RuntimeError(f"h2load exited with {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
        out = parse_output(proc.stdout)
        hist = parse_log(log) if log.exists() else Histogram()
    out["command"] = " ".join(cmd)
    out["latency_ms"] = hist.summary()
    if "traffic_bytes" in out:
        data = out["traffic_bytes"]["data"]
        if reply_size is not None:
            out["replies_with_message"] = data // (5 + reply_size)
        elif data == 0:  # the probe failed too: every reply was a trailers-only error
            out["replies_with_message"] = 0
    if cpu0 is not None and cpu1 is not None:
        out["server_cpu_s"] = cpu1 - cpu0
        if out["requests"]["done"]:
            out["server_cpu_us_per_call"] = (cpu1 - cpu0) / out["requests"]["done"] * 1e6
        if out.get("finished_s"):
            out["server_cores_busy"] = (cpu1 - cpu0) / out["finished_s"]
    return out


def probe_reply(target: str, method: str, message: bytes, timeout_s: float = 5.0) -> bytes:
    """One real gRPC call: the serialized reply (raises grpc.RpcError if the call fails)."""
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        reply: bytes = channel.unary_unary(method)(message, timeout=timeout_s)
        return reply


ROWS: list[tuple[str, str, Any, bool]] = [
    ("req/s", "{:,.0f}", lambda f: f["req_per_s"], True),
    ("succeeded", "{:,.0f}", lambda f: f["requests"]["succeeded"], False),
    ("failed+errored+timeout", "{:,.0f}",
     lambda f: f["requests"]["failed"] + f["requests"]["errored"] + f["requests"]["timeout"], False),
    ("replies with a message", "{:,.0f}", lambda f: f.get("replies_with_message"), False),
    ("latency p50 ms", "{:.3f}", lambda f: f["latency_ms"]["p50"], True),
    ("latency p90 ms", "{:.3f}", lambda f: f["latency_ms"]["p90"], True),
    ("latency p99 ms", "{:.3f}", lambda f: f["latency_ms"]["p99"], True),
    ("latency max ms", "{:.3f}", lambda f: f["latency_ms"]["max"], False),
    ("request mean ms", "{:.3f}", lambda f: f["request_us"]["mean"] / 1e3, True),
    ("request sd ms", "{:.3f}", lambda f: f["request_us"]["sd"] / 1e3, False),
    ("server cores busy", "{:.2f}", lambda f: f.get("server_cores_busy"), False),
    ("server CPU µs/call", "{:.0f}", lambda f: f.get("server_cpu_us_per_call"), True),
]


def format_table(figures: dict[str, dict[str, Any]], reference: str | None) -> str:
    return stats.format_table(figures, reference, ROWS)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.h2load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", help="HOST:PORT of a running callgate server")
    p.add_argument("--target-name", default="target")
    p.add_argument("--server-pid", type=int, help="PID of the --target server, to measure its CPU per call")
    p.add_argument("--compare-bare", action="store_true", help="also run against loadtest.bare_server (aio)")
    p.add_argument("--bare", action="append", choices=("aio", "sync"), default=[],
                   help="start a bare server of this mode and measure it too (repeatable)")
    p.add_argument("--bare-threads", type=int, default=16)
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
    bare_modes = list(dict.fromkeys(args.bare + (["aio"] if args.compare_bare and not args.bare else [])))
    if not args.target and not bare_modes:
        raise SystemExit("give --target HOST:PORT and/or --bare aio|sync (or --compare-bare)")
    rows = request_rows([args.caller], [args.called], args.at, None)
    if args.rpc == "inbound":
        message = decisions_pb2.InboundRequest(tenant=args.tenant, caller=args.caller, called=args.called,
                                               at=args.at).SerializeToString()
    else:
        message = batch_message(args.tenant, [rows[i % len(rows)] for i in range(args.batch_size)],
                                args.width).SerializeToString()
    method = METHODS[args.rpc]

    targets: list[tuple[str, str, int | None, BareServer | None]] = []
    if args.target:
        targets.append((args.target_name, args.target, args.server_pid, None))
    runs: dict[str, list[dict[str, Any]]] = {}
    try:
        for mode in bare_modes:
            server = BareServer(mode, args.bare_threads)
            targets.append((f"bare-{mode}", server.address, server.pid, server))
        reply_sizes: dict[str, int | None] = {}
        for name, address, _, _ in targets:
            try:
                reply = probe_reply(address, method, message)
                reply_sizes[name] = len(reply)
                print(f"probe {name} ({address}): OK, reply of {len(reply)} bytes")
            except grpc.FutureTimeoutError:
                raise SystemExit(f"{name}: nothing answers at {address}") from None
            except grpc.RpcError as exc:
                reply_sizes[name] = None
                print(f"probe {name} ({address}): {exc.code().name}: {exc.details()}; h2load will count "
                      "such replies as succeeded")
        for r in range(args.rounds):
            for name, address, pid, _ in targets:
                f = run_h2load(address, message, method, args.requests, args.clients, args.max_streams,
                               args.threads, args.timeout, pid, reply_sizes[name])
                runs.setdefault(name, []).append(f)
                print(f"round {r + 1} {name}: {f['req_per_s']:,.0f} req/s, p50 {f['latency_ms']['p50']:.3f} ms, "
                      f"p99 {f['latency_ms']['p99']:.3f} ms", flush=True)
    finally:
        for *_, bare in targets:
            if bare is not None:
                bare.stop()
    figures = {name: max(rs, key=lambda f: f["req_per_s"]) for name, rs in runs.items()}
    reference = next((name for name, *_, s in targets if s is not None), None)
    print()
    print(f"h2load -n {args.requests} -c {args.clients} -m {args.max_streams} -t {args.threads}, {args.rpc}"
          + (f", best of {args.rounds} rounds" if args.rounds > 1 else ""))
    print(format_table(figures, reference if len(targets) > 1 else None))
    for name, f in figures.items():
        done = f["requests"]["succeeded"]
        if f.get("replies_with_message") is not None and f["replies_with_message"] < done:
            print(f"note: {name}: {done - f['replies_with_message']:,} of {done:,} replies carried no message: "
                  "gRPC errors that h2load counted as succeeded")
    if (os.cpu_count() or 1) <= 2:
        print(f"note: h2load and the server share {os.cpu_count()} cores")
    if args.json:
        args.json.write_text(json.dumps({"config": {k: str(v) if isinstance(v, Path) else v
                                                    for k, v in vars(args).items()},
                                         "results": figures, "rounds": runs}, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
