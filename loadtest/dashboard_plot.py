"""The dashboard's queries, drawn from a real run: what integrations/grafana/callgate-dashboard.json shows.

    python -m loadtest.dashboard_plot                        # 90 s of a mixed day, docs/dashboard.png
    python -m loadtest.dashboard_plot --seconds 20 --out /tmp/d.png

Grafana is not packaged for Debian or PyPI, so this draws the same panels
itself: it starts `callgate serve --workers 2` on a fresh store (temporary,
removed at the end) and Debian's Prometheus (`prometheus`, scraping the
server's /metrics every second), runs a bounded mix of traffic through the
public gRPC API (decisions of every kind, whole calls with every outcome,
pickups, bad requests, pushes and a bad push, a card that declines its
top-ups, one worker killed halfway), then asks Prometheus for every panel's
queries, exactly as the dashboard holds them (`$__rate_interval` given a
value), and draws one plot per panel with matplotlib.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from loadtest.process import EXAMPLE, ROOT, ServeProcess, free_port, stop_process
from server.cli.progress import Ticker

DASHBOARD = ROOT / "integrations" / "grafana" / "callgate-dashboard.json"
EV = decisions_pb2.CallEventRequest
OUTCOMES = ("answered", "answered", "answered", "no_answer", "busy", "cancelled")


def prometheus(scrape: str, folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    """Debian's Prometheus scraping `scrape` every second, its data under `folder`; (process, its address)."""
    exe = shutil.which("prometheus")
    if exe is None:
        raise SystemExit("prometheus is missing: apt-get install --no-install-recommends prometheus")
    config = folder / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                                  "scrape_configs": [{"job_name": "callgate",
                                                      "static_configs": [{"targets": [scrape]}]}]}))
    address = f"127.0.0.1:{free_port()}"
    proc = subprocess.Popen([exe, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                             f"--web.listen-address={address}", "--log.level=warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"http://{address}/-/ready", timeout=2):
                return proc, address
        if time.monotonic() > deadline or proc.poll() is not None:
            stop_process(proc, 5)
            raise SystemExit("prometheus did not start in 30 s")
        time.sleep(0.2)


class Day:
    """Traffic of a small PBX, bounded by `until` (monotonic) and by counts; errors are the point of some."""

    def __init__(self, address: str, until: float, seed: int = 7) -> None:
        self.address, self.until, self.random = address, until, random.Random(seed)
        self.sent = 0
        self.stop = threading.Event()

    def running(self) -> bool:
        return not self.stop.is_set() and time.monotonic() < self.until

    def decisions(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            decide = decisions_pb2_grpc.DecisionsStub(channel)
            rnd = random.Random(1)
            while self.running() and self.sent < 200_000:
                caller = rnd.choice(("+14155550666", "+12125550100", "+442079460000", "", "+33142680000"))
                with contextlib.suppress(grpc.RpcError):
                    if rnd.random() < 0.7:
                        decide.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller=caller,
                                                                    called="+14155550199"), timeout=5)
                    elif rnd.random() < 0.97:
                        decide.Outbound(decisions_pb2.OutboundRequest(
                            tenant="acme", user=rnd.choice(("u1", "u2", "u3")),
                            destination=rnd.choice(("+12125550100", "+442079460000", "+33142680000", "+12125550100",
                                                    "+442079460000", "+33142680000", "+12125550100", "12"))),
                            timeout=5)  # "12": a careless proxy's digits
                    else:  # a careless proxy: a tenant that does not exist
                        decide.Inbound(decisions_pb2.InboundRequest(tenant="acme-typo", caller=caller,
                                                                    called="+14155550199"), timeout=5)
                self.sent += 1
                time.sleep(0.003)

    def calls(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            decide = decisions_pb2_grpc.DecisionsStub(channel)
            rnd, n = random.Random(2), 0
            while self.running() and n < 20_000:
                n += 1
                call, now = f"plot-{n}", int(time.time())
                outcome = rnd.choice(OUTCOMES)
                outbound = rnd.random() < 0.5
                common: dict[str, Any] = ({"direction": "outbound", "called": "+12125550100"} if outbound else
                                          {"caller": "+12125550100", "called": "+14155550199"})
                with contextlib.suppress(grpc.RpcError):
                    decide.CallEvent(EV(tenant="acme", call_id=call, kind=EV.RINGING, user="u3", at=now - 40,
                                        **common), timeout=5)
                    if rnd.random() < 0.2:
                        decide.Pickup(decisions_pb2.PickupRequest(tenant="acme", user="u2", dialed="*8",
                                                                  dry_run=True), timeout=5)
                    if outcome == "answered":
                        decide.CallEvent(EV(tenant="acme", call_id=call, kind=EV.ANSWERED, user="u3",
                                            at=now - 30), timeout=5)
                    decide.CallEvent(EV(tenant="acme", call_id=call, kind=EV.ENDED, outcome=outcome, at=now),
                                     timeout=5)
                    if rnd.random() < 0.05:  # a replay without its call id
                        decide.CallEvent(EV(tenant="acme", kind=EV.ENDED), timeout=5)
                time.sleep(0.04)

    def admin(self) -> None:
        with grpc.insecure_channel(self.address) as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            doc = json.loads(EXAMPLE.read_text())
            n = 0
            while self.running() and n < 1000:
                n += 1
                with contextlib.suppress(grpc.RpcError):
                    if n % 4 == 0:  # an operator's typo: refused, counted as a compile failure
                        admin.PushSettings(admin_pb2.PushSettingsRequest(document=b'{"tenant": "acme"}'), timeout=30)
                    else:
                        doc["blacklist"] = [*doc.get("blacklist", [])[:50], f"+1212555{n:04d}"]
                        admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()),
                                           timeout=30)
                    admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="2.00", reference=f"plot-{n}"),
                                 timeout=10)
                self.stop.wait(5.0)


def queries(step_s: float) -> list[tuple[str, list[tuple[str, str]], str]]:
    """(title, [(expr, legend)], unit) of every panel, in the dashboard's order."""
    doc = json.loads(DASHBOARD.read_text())
    window = f"{max(4 * step_s, 8):g}s"
    out = []
    for panel in doc["panels"]:
        if panel["type"] == "row":
            continue
        targets = [(t["expr"].replace("$__rate_interval", window), t.get("legendFormat", ""))
                   for t in panel["targets"]]
        out.append((panel["title"], targets, panel["fieldConfig"]["defaults"].get("unit", "short")))
    return out


def query_range(address: str, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
    args = urllib.parse.urlencode({"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"})
    with urllib.request.urlopen(f"http://{address}/api/v1/query_range?{args}", timeout=30) as reply:
        body = json.load(reply)
    if body.get("status") != "success":
        raise RuntimeError(f"prometheus refused {expr!r}: {body}")
    return list(body["data"]["result"])


def legend(fmt: str, labels: dict[str, str]) -> str:
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels or "")


def draw(panels: list[tuple[str, list[tuple[str, list[dict[str, Any]]]], str]], start: float, out: Path,
         title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5.2, rows * 3.1), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (name, series, unit) in zip(axes.flat, panels, strict=False):
        ax.set_title(name, fontsize=9, loc="left")
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
        drawn = 0
        for label, result in series:
            for s in result[:8]:
                xs = [float(t) - start for t, _ in s["values"]]
                ys = [float(v) for _, v in s["values"]]
                if not any(y == y for y in ys):  # all NaN (a quantile of nothing)
                    continue
                ax.plot(xs, ys, linewidth=1.2, label=legend(label, s["metric"])[:40])
                drawn += 1
        if drawn:
            ax.legend(fontsize=6, loc="upper left", framealpha=0.6)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="gray")
        ax.set_ylabel(unit, fontsize=7)
        ax.set_xlabel("seconds into the run", fontsize=7)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.dashboard_plot", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=90.0, help="length of the traffic (default 90; 10..900)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png", help="the PNG to write")
    ap.add_argument("--step", type=float, default=2.0, help="seconds between plotted points (default 2)")
    ap.add_argument("--no-kill", action="store_true", help="do not kill a worker halfway")
    args = ap.parse_args(argv)
    if not 10 <= args.seconds <= 900:
        ap.error("--seconds must be 10..900")
    folder = Path(tempfile.mkdtemp(prefix="callgate-plot-"))
    metrics = f"127.0.0.1:{free_port()}"
    server = ServeProcess(folder / "data", "--topup-retry-s", "5", workers=2, metrics=metrics, seed_credit="5.10")
    prom, address = None, ""
    try:
        prom, address = prometheus(metrics, folder)
        with grpc.insecure_channel(server.address) as channel:  # a card the sandbox declines: top-ups fail
            admin_pb2_grpc.AdminStub(channel).Card(admin_pb2.CardRequest(
                tenant="acme", number="4000000000000002", exp_month=12, exp_year=2040), timeout=10)
        time.sleep(3)  # a few scrapes of the idle server first
        start = time.time()
        day = Day(server.address, time.monotonic() + args.seconds)
        threads = [threading.Thread(target=fn, daemon=True) for fn in (day.decisions, day.calls, day.admin)]
        for t in threads:
            t.start()
        killed = args.no_kill
        with Ticker() as tick:
            tick.stage("traffic", total=int(args.seconds), unit="s")
            while any(t.is_alive() for t in threads):
                elapsed = time.time() - start
                tick.update(int(min(elapsed, args.seconds)))
                if not killed and elapsed > args.seconds / 2:
                    pids = server.worker_pids()
                    if len(pids) > 1:
                        os.kill(pids[0], signal.SIGKILL)  # the supervisor starts another: a restart to see
                    killed = True
                time.sleep(0.5)
        print(f"{day.sent:,} decisions sent; drawing")
        time.sleep(4)  # the last samples scraped
        end = time.time()
        drawn = []
        for name, targets, unit in queries(args.step):
            drawn.append((name, [(fmt, query_range(address, expr, start - 3, end, args.step))
                                 for expr, fmt in targets], unit))
        draw(drawn, start, args.out, f"callgate dashboard, drawn from Prometheus after a {args.seconds:g} s run "
                                     "(2 workers; one killed halfway)" if not args.no_kill else
                                     f"callgate dashboard, drawn from Prometheus after a {args.seconds:g} s run")
        empty = [name for name, series, _ in drawn if not any(result for _, result in series)]
        print(f"wrote {args.out}: {len(drawn)} panels" + (f"; without data: {', '.join(empty)}" if empty else ""))
        return 0
    finally:
        if prom is not None:
            stop_process(prom, 10)
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
