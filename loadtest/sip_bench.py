"""SIP load through Kamailio, with callgate in the path and without it: a bounded run and the breaking rate.

    python -m loadtest.sip_bench                       # 200 calls/s for 10 s each way, then the ramp
    python -m loadtest.sip_bench --rate 200 --seconds 10 --ramp 100,200,300,400 --step-seconds 5

Starts, on free loopback ports: callgate (`callgate serve`, the example tenant
without rentals and with the test numbers), a sipp UAS (the PBX: answers every
INVITE, keeps the proxy on the route), and two Kamailio instances with
integrations/kamailio/kamailio.cfg: one asking callgate for every INVITE and
sending RINGING/ANSWERED/ENDED events, one relaying without asking
(CALLGATE_BYPASS=1).  A sipp UAC places whole calls (INVITE, 180, 200, ACK,
a 100 ms hold, BYE, 200) from a clean caller to an always-open number.

1. The bounded run: `--rate` calls/s for `--seconds` through each proxy;
   every call must succeed (zero failed calls), and it reports the calls
   sipp completed, failed and retransmitted, and the response time.
2. The ramp: rates of `--ramp`, `--step-seconds` each, through each proxy;
   the breaking rate is the first where more than 1% of the calls fail or
   fewer than 95% of the calls asked for complete in time (every step's
   failures are reported).  The whole machine (2 cores) carries
   sipp twice, Kamailio and callgate: the figure is this machine's.

Every sipp run is bounded by its call count (-m) and a timeout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from server.client import open_channel

from . import sip
from .process import EXAMPLE, ServeProcess, free_port, sigterm_unwinds
from .report import save_json

OPEN = "+14155550199"


def bench_doc() -> dict[str, Any]:
    doc = json.loads(EXAMPLE.read_text())
    for n in doc["numbers"]:
        n.pop("rental", None)
        if n["number"] == OPEN:
            n.pop("schedule", None)  # always open: the calls are all ROUTE, whatever the hour
    return doc


def run_sipp(proxy: str, rate: float, calls: int, folder: Path, timeout_s: float) -> dict[str, Any]:
    """One bounded sipp UAC run; its counters from the -trace_stat CSV."""
    scenario = folder / "uac-200.xml"
    scenario.write_text(sip.uac_scenario(200, hold_ms=100))
    stat = folder / f"stat-{free_port()}.csv"
    cmd = ["sipp", "-sf", str(scenario), "-s", OPEN, proxy, "-i", "127.0.0.1", "-p", str(sip.free_sip_port()),
           "-key", "CALLER", "+12125550000", "-m", str(calls), "-r", str(rate), "-l", str(max(int(rate * 3), 10)),
           "-nostdin", "-timeout", f"{int(timeout_s)}s", "-timeout_error", "-trace_stat", "-stf", str(stat),
           "-fd", "1", "-recv_timeout", "5000"]
    t0 = time.monotonic()
    done = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s + 30)
    wall = time.monotonic() - t0
    rows = [line.split(";") for line in stat.read_text().splitlines()] if stat.exists() else []
    out: dict[str, Any] = {"rate": rate, "calls": calls, "exit": done.returncode, "wall_s": wall}
    if len(rows) >= 2:
        header, last = rows[0], rows[-1]
        values = dict(zip(header, last, strict=False))

        def num(key: str) -> int:
            try:
                return int(values.get(key, "0") or 0)
            except ValueError:
                return 0

        out.update(successful=num("SuccessfulCall(C)"), failed=num("FailedCall(C)"),
                   retransmissions=num("Retransmissions(C)"), call_length=values.get("CallLength(C)", ""))
    else:
        out.update(successful=0, failed=calls, retransmissions=0, error=done.stderr[-300:])
    out["achieved_rate"] = out["successful"] / wall if wall > 0 else 0.0
    return out


def broke(r: dict[str, Any]) -> bool:
    """More than 1% of the calls failed, or fewer than 95% completed: a stray failure among thousands on a
    2-core machine that also runs both sipps is noise, a collapse is not."""
    return r["failed"] > 0.01 * r["calls"] or r["successful"] < 0.95 * r["calls"]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.sip_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="calls/s of the bounded run (default 200)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the bounded run (default 10)")
    p.add_argument("--ramp", default="100,200,300,350,400,450,500,600,800",
                   help="calls/s of the ramp steps, comma-separated ('' skips the ramp)")
    p.add_argument("--step-seconds", type=float, default=5.0, help="length of each ramp step (default 5)")
    p.add_argument("--children", type=int, default=8, help="Kamailio UDP workers (default 8)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    args = p.parse_args(argv)
    missing = sip.missing_tools()
    if missing:
        p.error(f"{', '.join(missing)} not installed: apt-get install {sip.PACKAGES}")
    try:
        ramp = [float(x) for x in args.ramp.split(",") if x.strip()]
    except ValueError:
        p.error(f"--ramp {args.ramp!r}: calls/s separated by commas, e.g. 100,200,400")
    if args.rate <= 0 or args.seconds <= 0 or args.step_seconds <= 0 or any(r <= 0 for r in ramp):
        p.error("rates and seconds must be positive")
    folder = Path(tempfile.mkdtemp(prefix="sip-bench-"))
    started: list[Any] = []
    out: dict[str, Any] = {"bounded": {}, "ramp": {}, "broke_at": {}}
    try:
        callgate = ServeProcess(folder / "data", seed=None)
        started.append(callgate)
        from callgate.v1 import admin_pb2, admin_pb2_grpc

        with open_channel(callgate.address) as channel:
            admin_pb2_grpc.AdminStub(channel).PushSettings(admin_pb2.PushSettingsRequest(
                document=json.dumps(bench_doc()).encode()), timeout=60)
        failover = folder / "failover.json"  # the proxy knows each number's tenant from it
        exported = subprocess.run([sys.executable, "-m", "callgate", "--server", callgate.address, "export",
                                   "failover", "-o", str(failover)], capture_output=True, text=True, timeout=60)
        if exported.returncode != 0:
            raise RuntimeError(f"callgate export failover: {exported.stderr.strip()}")
        uas = sip.Uas(folder)
        started.append(uas)
        proxies = {"with callgate": sip.Kamailio(folder, callgate.address, uas.port, children=args.children,
                                                 failover=failover),
                   "without callgate": sip.Kamailio(folder, callgate.address, uas.port, children=args.children,
                                                    bypass=True)}
        started.extend(proxies.values())
        say(f"callgate at {callgate.address}, UAS at 127.0.0.1:{uas.port}, Kamailio with callgate at "
            f"{proxies['with callgate'].address}, without at {proxies['without callgate'].address}")
        calls = int(args.rate * args.seconds)
        for name, proxy in proxies.items():
            r = run_sipp(proxy.address, args.rate, calls, folder, args.seconds + 30)
            out["bounded"][name] = r
            say(f"bounded {name}: {r['successful']:,} of {calls:,} calls at {args.rate:g}/s, failed {r['failed']}, "
                f"retransmissions {r['retransmissions']}")
        for name, proxy in proxies.items():
            out["ramp"][name] = []
            for rate in ramp:
                r = run_sipp(proxy.address, rate, int(rate * args.step_seconds), folder, args.step_seconds + 30)
                out["ramp"][name].append(r)
                say(f"ramp {name}: {rate:g}/s -> {r['successful']:,}/{r['calls']:,} ok, {r['failed']} failed, "
                    f"{r['achieved_rate']:.0f} calls/s")
                if broke(r):
                    out["broke_at"][name] = rate
                    break
            else:
                out["broke_at"][name] = None
        out["callgate_warnings"] = len(callgate.problems())
    finally:
        for s in reversed(started):
            s.stop()
        shutil.rmtree(folder, ignore_errors=True)
    print("\nSIP through Kamailio (whole calls: INVITE, 180, 200, ACK, 100 ms, BYE, 200)")
    for name, r in out["bounded"].items():
        print(f"  bounded {name:<17} {r['successful']:>6,} ok  {r['failed']:>4} failed  at {args.rate:g} calls/s "
              f"for {args.seconds:g} s, {r['retransmissions']} retransmissions")
    for name, rate in out["broke_at"].items():
        last_ok = max((r["rate"] for r in out["ramp"].get(name, []) if not broke(r)), default=None)
        text = f"breaks at {rate:g} calls/s" if rate else "did not break up to the last step"
        print(f"  ramp    {name:<17} {text}; highest clean step {last_ok:g} calls/s" if last_ok
              else f"  ramp    {name:<17} {text}")
    zero_failed = all(r["failed"] == 0 and r["successful"] == int(args.rate * args.seconds)
                      for r in out["bounded"].values())
    print(f"bounded runs with zero failed calls: {'yes' if zero_failed else 'NO'}")
    if args.json:
        save_json(args.json, out)
    return 0 if zero_failed else 1


if __name__ == "__main__":
    with sigterm_unwinds():  # SIGTERM unwinds: servers stopped, temporary directories removed
        sys.exit(main())
