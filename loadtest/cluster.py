"""Several callgate hosts on one machine, behind nginx or a client's own round_robin, and what a lost host costs.

`Cluster` makes hosts with `loadtest.netns` (a network namespace each, on a bridge of the run's own, addresses
of 10.77.0.0/24), starts `callgate serve` on some (`serve`: ServeProcess run through `ip netns exec`, listening
on 0.0.0.0:50051 of its host, metrics on :9464, `--auth off` given explicitly: the hosts' network is private
to the run), nginx on another (`start_nginx`: integrations/nginx/callgate.conf rendered with the hosts'
addresses, run with its own prefix, pid and log files) and any program on any host (`spawn`, `run`; the load
of `probe` below from a client host).  It kills a host (`kill_host`: SIGKILL of every process inside its
namespace: supervisor, workers, compile processes), cuts and restores its link (`cut`, `restore`) and, on
leaving (errors and Ctrl-C included), stops everything it started by PID (probes, nginx, servers), then kills
whatever would still run in its namespaces and deletes them.  Each run starts by sweeping the leftovers of
dead runs (`loadtest.netns.sweep`).

Client-side balancing, the option without a middle box: `round_robin_target` and `round_robin_options` (a
channel to every host at once, calls spread over the hosts whose health says SERVING, UNAVAILABLE retried
on another host).

    python -m loadtest.cluster bench [--rounds 3] [--json FILE]    # the figures of README's "Many machines"
    python -m loadtest.cluster probe --target 10.77.0.2:50051 --rate 300 --duration 8   # run inside a host
    python -m loadtest.cluster stats --metrics 10.77.0.3:9464 --metrics 10.77.0.4:9464  # idem
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import loadtest.process as process
from loadtest.netns import SUBNET, Network, pids_in, sweep
from loadtest.process import ROOT, ServeProcess, descendants, kill_leftovers, python_env, start_time

GRPC_PORT = 50051
METRICS_PORT = 9464
NGINX_TEMPLATE = ROOT / "integrations" / "nginx" / "callgate.conf"
HEALTH_SERVICE = "callgate.v1.Decisions"
# methods a client may send again on UNAVAILABLE: decisions read, an event is keyed (a replay gets its reply)
RETRIED_METHODS = ("Inbound", "Outbound", "DecideBatch", "CallEvent")

# Inbound cases of examples/acme.json with their answers: (caller, called, at, verdict, reason)
CASES = (
    ("+14155550666", "+14155550199", 1796149800, "REJECT", "BLACKLISTED"),  # blacklisted: at any time
    ("4155551234", "+14155550199", 1796149800, "ROUTE", "OK"),  # Tuesday 10:30 in LA: to the sales group
    ("+14155551234", "+14155550199", 1796500800, "VOICEMAIL", "OFF_HOURS"),  # Saturday noon: closed
)


# -- client-side balancing ------------------------------------------------------------------------

def round_robin_target(addresses: Sequence[str]) -> str:
    """A channel target naming every host: `ipv4:10.77.0.3:50051,10.77.0.4:50051` (real hosts: the same list,
    or `dns:///callgate.example:50051` with one A record per host)."""
    return "ipv4:" + ",".join(addresses)


def round_robin_options(health_service: str = HEALTH_SERVICE, retries: bool = True, max_attempts: int = 3,
                        keepalive_ms: int = 1000) -> list[tuple[str, Any]]:
    """Channel options for gRPC's own balancing over every address of the target.

    - `loadBalancingConfig: [{"round_robin": {}}]`: a connection to every host, calls spread over those ready
      (the default, pick_first, sends everything to one host);
    - `healthCheckConfig: {"serviceName": "callgate.v1.Decisions"}`: the channel watches each host's
      `grpc.health.v1.Health/Watch` for that name and sends calls only to hosts SERVING it (callgate says
      SERVING once a worker holds a tenant's settings), besides dropping hosts whose connection fails;
    - a `retryPolicy` for UNAVAILABLE (`grpc.enable_retries`) on the methods safe to send twice (Inbound,
      Outbound, DecideBatch, CallEvent: not Pickup, not Stream): a call lost with its host's connection is
      sent again, to another host, within the call's own deadline;
    - `keepalive_ms` (`grpc.keepalive_time_ms`, `grpc.keepalive_timeout_ms`; 1 s, 0 for none): a connection
      with calls open is pinged every so often and dropped when the ping goes unanswered that long.  Without
      it, a host whose link is cut (no RST, nothing heard) stays "ready": the calls sent to it end at their
      deadline (DEADLINE_EXCEEDED, not retried) until TCP gives up, minutes later; measured: a third of the
      calls lost for the rest of the run.  callgate keeps grpc's default server ping policy (a ping without
      data in between tolerated once per 5 minutes; grpc clients send at most 2 pings without data): pings
      come with data under load, and an idle channel stops pinging after two, so no GOAWAY `too_many_pings`.
    """
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}],
                              "healthCheckConfig": {"serviceName": health_service}}
    if retries:
        config["methodConfig"] = [{
            "name": [{"service": "callgate.v1.Decisions", "method": m} for m in RETRIED_METHODS],
            "retryPolicy": {"maxAttempts": max_attempts, "initialBackoff": "0.02s", "maxBackoff": "0.2s",
                            "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}}]
    options: list[tuple[str, Any]] = [("grpc.service_config", json.dumps(config)),
                                      ("grpc.enable_retries", 1 if retries else 0)]
    if keepalive_ms:
        options += [("grpc.keepalive_time_ms", keepalive_ms), ("grpc.keepalive_timeout_ms", keepalive_ms)]
    return options


# -- nginx ----------------------------------------------------------------------------------------

def render_nginx(servers: Sequence[str], listen: str, template: Path = NGINX_TEMPLATE) -> str:
    """The template with `@LISTEN@` replaced and its `@SERVER@` line written once per server (HOST:PORT)."""
    if not servers:
        raise ValueError("nginx needs at least one upstream server")
    out: list[str] = []
    for line in template.read_text().splitlines():
        if "@SERVER@" in line and not line.lstrip().startswith("#"):
            out.extend(line.replace("@SERVER@", s) for s in servers)
        else:
            out.append(line.replace("@LISTEN@", listen))
    return "\n".join(out) + "\n"


MAIN_CONF = """\
# written by loadtest/cluster.py: one nginx of one test run, everything under {dir}
user root;                          # a throwaway nginx in a namespace of the run; its files are root's
worker_processes {workers};
pid {dir}/nginx.pid;
error_log {dir}/error.log notice;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {dir}/tmp/body;
    proxy_temp_path {dir}/tmp/proxy;
    fastcgi_temp_path {dir}/tmp/fastcgi;
    uwsgi_temp_path {dir}/tmp/uwsgi;
    scgi_temp_path {dir}/tmp/scgi;
    log_format callgate '$msec|$upstream_addr|$upstream_status|$status|$upstream_trailer_grpc_status|'
                        '$request_time|$uri';
    access_log {dir}/access.log callgate buffer=64k flush=200ms;
    include {dir}/callgate.conf;
}}
"""


class Nginx:
    """nginx in a host's namespace, in the foreground, with its own prefix, config, pid and logs in `dir`."""

    def __init__(self, net: Network, host: str, servers: Sequence[str], directory: Path, port: int = GRPC_PORT,
                 workers: int = 1, start_timeout_s: float = 10.0) -> None:
        exe = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(exe).exists():
            raise RuntimeError("nginx is not installed: apt-get install -y nginx")
        self.dir, self.host, self.servers = directory, host, list(servers)
        self.address = f"{net[host].address}:{port}"
        for sub in ("tmp/body", "tmp/proxy", "tmp/fastcgi", "tmp/uwsgi", "tmp/scgi"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        (directory / "callgate.conf").write_text(render_nginx(servers, str(port)))
        self.conf = directory / "nginx.conf"
        self.conf.write_text(MAIN_CONF.format(dir=directory, workers=workers))
        base = [exe, "-p", str(directory), "-e", str(directory / "error.log"), "-c", str(self.conf)]
        check = subprocess.run([*base, "-t", "-q"], capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            raise RuntimeError(f"nginx -t: {check.stderr.strip()}")
        self.proc = subprocess.Popen(net.argv(host, [*base, "-g", "daemon off;"]), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self.known: list[tuple[int, int]] = []
        pid_file = directory / "nginx.pid"
        deadline = time.monotonic() + start_timeout_s
        while not (pid_file.exists() and pid_file.read_text().strip() == str(self.proc.pid)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"nginx did not start (exit code {self.proc.poll()}): {self.error_log()[-1500:]}")
            time.sleep(0.02)
        self.known = descendants(self.proc.pid)  # its workers, listening once the pid file is written

    @property
    def pid(self) -> int:
        return self.proc.pid

    def error_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "error.log").read_text(errors="replace")
        return ""

    def access_log(self) -> list[dict[str, Any]]:
        """The requests nginx passed on so far (the log is flushed every 200 ms): `hosts` and `upstream_status`
        list every host tried, in order ($upstream_addr, $upstream_status)."""
        rows = []
        with contextlib.suppress(OSError):
            for line in (self.dir / "access.log").read_text().splitlines():
                w = line.split("|")
                if len(w) != 7:
                    continue
                rows.append({"t": float(w[0]), "hosts": [h.strip() for h in w[1].replace(" : ", ",").split(",")],
                             "upstream_status": [s.strip() for s in w[2].replace(" : ", ",").split(",")],
                             "status": w[3], "grpc_status": w[4], "request_time": float(w[5]), "uri": w[6]})
        return rows

    def upstream_counts(self) -> dict[str, Any]:
        """Per host: requests it answered (the last host tried) and requests it failed before nginx passed them
        to another host; the gRPC statuses of the answers ("-": none, nginx answered) and nginx's HTTP statuses."""
        answered: Counter[str] = Counter()
        failed: Counter[str] = Counter()
        grpc_status: Counter[str] = Counter()
        http: Counter[str] = Counter()
        for row in self.access_log():
            for host in row["hosts"][:-1]:
                failed[host] += 1
            answered[row["hosts"][-1]] += 1
            grpc_status[row["grpc_status"]] += 1
            http[row["status"]] += 1
        return {"answered": dict(answered), "failed_then_retried": dict(failed), "grpc_status": dict(grpc_status),
                "http_status": dict(http)}

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGQUIT (graceful) by PID, SIGKILL after `timeout_s`; then any worker left behind."""
        if self.proc.poll() is None:
            self.known += [p for p in descendants(self.proc.pid) if p not in self.known]
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5.0)
        kill_leftovers(self.known, grace_s=1.0)
        return self.proc.returncode


# -- the cluster ----------------------------------------------------------------------------------

def alive(pid: int, start: int) -> bool:
    """The process `pid` started at `start` still runs (a zombie does not)."""
    if start_time(pid) != start:
        return False
    with contextlib.suppress(OSError):
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2] != "Z"
    return False


@dataclass
class CloseReport:
    stopped: list[str] = field(default_factory=list)          # what was stopped by PID, in order
    killed_inside: dict[str, list[int]] = field(default_factory=dict)  # still inside a namespace at the end
    namespaces_removed: list[str] = field(default_factory=list)
    leftover_namespaces: list[str] = field(default_factory=list)  # with the run's prefix, after close: none
    live_processes: list[int] = field(default_factory=list)    # any process of the run still alive: none
    errors: list[str] = field(default_factory=list)


class Cluster:
    """Hosts on this machine (see the module's doc); a context manager that leaves nothing behind."""

    def __init__(self, hosts: Sequence[str], directory: Path | None = None, subnet: str = SUBNET) -> None:
        sweep(log=lambda line: print(f"cluster: {line}", flush=True))
        self.net = Network((), subnet)
        self.own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.net.prefix}-")) if directory is None else directory
        self.servers: dict[str, ServeProcess] = {}
        self.nginxes: dict[str, Nginx] = {}
        self.procs: list[tuple[str, subprocess.Popen[Any]]] = []
        self.seen: list[tuple[int, int]] = []  # every process of the run we learnt of: (pid, start time)
        self.report: CloseReport | None = None
        try:
            for name in hosts:
                self.net.add_host(name)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def address(self, host: str, port: int = GRPC_PORT) -> str:
        return f"{self.net[host].address}:{port}"

    def _note(self, pid: int) -> None:
        start = start_time(pid)
        if start is not None and (pid, start) not in self.seen:
            self.seen.append((pid, start))

    # -- what runs on the hosts

    def serve(self, host: str, *extra: str, workers: int = 2, start_timeout_s: float = 90.0,
              **options: Any) -> ServeProcess:
        """`callgate serve` on `host` (0.0.0.0:50051, metrics :9464, a store of its own seeded with acme unless
        `seed=None`; `extra` are more serve options, `options` more ServeProcess arguments).  The server lives
        in the host's namespace: use `address(host)` from another host, not ServeProcess's `address` or
        `channel()`, which mean 127.0.0.1 of this namespace."""
        data = self.dir / host / "data"
        data.mkdir(parents=True, exist_ok=True)
        server = ServeProcess(data, "--auth", "off", *extra, name=host, workers=workers,
                              listen=f"0.0.0.0:{GRPC_PORT}", metrics=f"0.0.0.0:{METRICS_PORT}",
                              program=self.net.python_program(host, "callgate", "serve"), wait=False, **options)
        self.servers[host] = server
        self._note(server.pid)
        server.wait_listening(workers, start_timeout_s)
        for pid, _ in descendants(server.pid):
            self._note(pid)
        return server

    def start_nginx(self, host: str, upstream_hosts: Sequence[str], port: int = GRPC_PORT,
                    workers: int = 1) -> Nginx:
        """nginx on `host`, passing gRPC to the callgate hosts named (integrations/nginx/callgate.conf)."""
        old = self.nginxes.pop(host, None)
        if old is not None:
            old.stop()
        n = len([p for p in self.dir.glob(f"{host}/nginx*") if p.is_dir()])
        nginx = Nginx(self.net, host, [self.address(h) for h in upstream_hosts], self.dir / host / f"nginx{n}",
                      port, workers)
        self.nginxes[host] = nginx
        self._note(nginx.pid)
        for pid, _ in nginx.known:
            self._note(pid)
        return nginx

    def spawn(self, host: str, command: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
        """Start `command` inside `host`; stopped by PID on close if still running."""
        popen.setdefault("stdin", subprocess.DEVNULL)
        proc = subprocess.Popen(self.net.argv(host, command), cwd=ROOT, env=python_env(), **popen)
        self.procs.append((host, proc))
        self._note(proc.pid)
        return proc

    def python(self, host: str, module: str, *args: str, **popen: Any) -> subprocess.Popen[Any]:
        return self.spawn(host, [sys.executable, "-m", module, *args], **popen)

    def run(self, host: str, command: Sequence[str], timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run `command` inside `host` to its end (killed after `timeout_s`); its output as text."""
        proc = self.spawn(host, command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            out, err = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise RuntimeError(f"{' '.join(command[:4])} on {host}: still running after {timeout_s:.0f} s; "
                               f"killed. stderr: {err[-1500:]}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stats(self, host: str, hosts: Sequence[str], via: str = "", asks: int = 0) -> dict[str, Any]:
        """From `host`: every host's decisions so far (its /metrics), and `asks` Admin.Stats through `via`."""
        args = [a for h in hosts for a in ("--metrics", self.address(h, METRICS_PORT))]
        if via:
            args += ["--via", via, "--asks", str(asks)]
        done = self.run(host, [sys.executable, "-m", "loadtest.cluster", "stats", *args], timeout_s=60)
        if done.returncode != 0:
            raise RuntimeError(f"stats on {host}: exit {done.returncode}: {done.stderr[-1500:]}")
        out: dict[str, Any] = json.loads(done.stdout)
        return out

    # -- faults

    def kill_host(self, host: str) -> list[int]:
        """SIGKILL every process running inside `host` (callgate's supervisor, workers, compile processes)."""
        pids = pids_in(self.net[host].ns)
        server = self.servers.get(host)
        first = [server.pid] if server is not None and server.pid in pids else []  # no restart of workers
        for pid in first + [p for p in pids if p not in first]:
            self._note(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return first + [p for p in pids if p not in first]

    def cut(self, host: str) -> None:
        self.net.cut(host)

    def restore(self, host: str) -> None:
        self.net.restore(host)

    # -- the end

    def close(self) -> CloseReport:
        """Stop everything by PID (probes, nginx, servers), kill what would still run inside, delete the
        namespaces; what happened is in the returned report (also `self.report`). Safe to call twice."""
        if self.report is not None:
            return self.report
        report = CloseReport()
        self.report = report
        for host, proc in self.procs:
            try:
                if proc.poll() is None:
                    for pid, _ in descendants(proc.pid):
                        self._note(pid)
                    proc.terminate()
                    try:
                        proc.wait(5.0)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(5.0)
                    report.stopped.append(f"{host}: pid {proc.pid}")
            except Exception as exc:  # the rest is stopped all the same
                report.errors.append(f"{host} pid {proc.pid}: {exc!r}")
        for host, nginx in self.nginxes.items():
            try:
                nginx.stop()
                report.stopped.append(f"{host}: nginx pid {nginx.pid}")
            except Exception as exc:
                report.errors.append(f"{host} nginx: {exc!r}")
        for host, server in self.servers.items():
            try:
                if server.proc.poll() is None:
                    server.remember_processes()
                    for pid, _ in descendants(server.pid):
                        self._note(pid)
                server.stop()
                report.stopped.append(f"{host}: callgate serve pid {server.pid}")
            except Exception as exc:
                report.errors.append(f"{host} callgate: {exc!r}")
        try:
            report.killed_inside = {ns: pids for ns, pids in self.net.processes().items() if pids}
            report.namespaces_removed = self.net.close()
            report.leftover_namespaces = self.net.leftovers()
        except Exception as exc:
            report.errors.append(f"namespaces: {exc!r}")
        report.live_processes = [pid for pid, start in self.seen if alive(pid, start)]
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
        return report


# -- figures --------------------------------------------------------------------------------------

def failover_figures(calls: Sequence[Sequence[Any]], t_event: float, run: int = 50,
                     slow_ms: float = 100.0) -> dict[str, Any]:
    """What a fault at `t_event` (monotonic seconds) cost a probe's calls ([start, end, code] each).

    `errors`: calls that did not get the right answer; `errors_after`: of those, started after the fault
    less a second (the ones in flight or later); `failover_s`: from the fault to the end of the last failed
    call (0 when none failed); `steady_s`: from the fault to the start of the first run of `run`
    consecutive successes that began after it; `slow`: successful calls started from a second before the
    fault that took over `slow_ms`, and `disturbed_s`: from the fault to the end of the last call that failed
    or was slow (a failover the client only feels as a delay); `max_latency_ms` of the calls started within
    5 s after it.
    """
    ordered = sorted(calls, key=lambda c: c[0])
    bad = [c for c in ordered if c[2] != "OK"]
    after = [c for c in ordered if c[0] >= t_event]
    steady = None
    streak = 0
    for i, c in enumerate(after):
        streak = streak + 1 if c[2] == "OK" else 0
        if streak >= run:
            steady = after[i - run + 1][0] - t_event
            break
    last_bad = max((c[1] for c in bad if c[1] >= t_event - 1.0), default=None)
    near = [c for c in ordered if t_event - 1.0 <= c[0] <= t_event + 5.0]
    slow = [c for c in ordered if c[0] >= t_event - 1.0 and c[2] == "OK" and c[1] - c[0] > slow_ms / 1000]
    last_disturbed = max((c[1] for c in slow), default=last_bad)
    if last_bad is not None and last_disturbed is not None:
        last_disturbed = max(last_disturbed, last_bad)
    timeline: dict[str, Counter[str]] = {}
    for c in ordered:
        slot = f"{max((c[0] - t_event) // 0.5 * 0.5, -99):+.1f}"
        timeline.setdefault(slot, Counter())[c[2]] += 1
    return {
        "calls": len(ordered), "ok": len(ordered) - len(bad), "errors": len(bad),
        "errors_after": sum(1 for c in bad if c[0] >= t_event - 1.0),
        "error_pct": round(100.0 * len(bad) / max(len(ordered), 1), 2),
        "codes": dict(Counter(c[2] for c in bad)),
        "failover_s": round(max(last_bad - t_event, 0.0), 3) if last_bad is not None else 0.0,
        "steady_s": round(steady, 3) if steady is not None else None,
        "slow": len(slow),
        "disturbed_s": round(max(last_disturbed - t_event, 0.0), 3) if last_disturbed is not None else 0.0,
        "max_latency_ms": round(max((c[1] - c[0] for c in near), default=0.0) * 1000, 1),
        "timeline": {k: dict(v) for k, v in sorted(timeline.items(), key=lambda kv: float(kv[0]))},
    }


# -- the programs run inside the hosts ------------------------------------------------------------

async def _probe(args: argparse.Namespace) -> dict[str, Any]:
    import grpc
    import grpc.aio

    from callgate.v1 import decisions_pb2, decisions_pb2_grpc

    if args.round_robin:
        target = round_robin_target(args.target.split(","))
        options = round_robin_options(retries=not args.no_retries, keepalive_ms=args.keepalive_ms)
    else:
        target, options = args.target, []
        if args.retries:
            config = {"methodConfig": json.loads(round_robin_options()[0][1])["methodConfig"]}
            options = [("grpc.service_config", json.dumps(config)), ("grpc.enable_retries", 1)]
    requests = [decisions_pb2.InboundRequest(tenant="acme", caller=c, called=d, at=at) for c, d, at, _, _ in CASES]
    expected = [(decisions_pb2.Verdict.Value(v), decisions_pb2.Reason.Value(r)) for *_, v, r in CASES]
    calls: list[tuple[float, float, str]] = []
    async with grpc.aio.insecure_channel(target, options=options) as channel:
        stub = decisions_pb2_grpc.DecisionsStub(channel)

        async def one(i: int) -> str:
            try:
                d = await stub.Inbound(requests[i % len(requests)], timeout=args.timeout)
            except grpc.aio.AioRpcError as exc:
                return str(exc.code().name)
            return "OK" if (d.verdict, d.reason) == expected[i % len(expected)] else "WRONG"

        warm_deadline = time.monotonic() + args.warmup_s
        streak = 0
        while streak < 20:  # every host up and answering before the measured load
            streak = streak + 1 if await one(streak) == "OK" else 0
            if time.monotonic() > warm_deadline:
                raise SystemExit(f"probe: {target} did not answer 20 calls in a row in {args.warmup_s:g} s")
        n = min(int(args.rate * args.duration), args.max_calls)
        t0 = time.monotonic() + 0.05
        print(json.dumps({"event": "started", "t0": t0, "calls": n}), flush=True)

        async def timed(i: int) -> None:
            start = time.monotonic()
            code = await one(i)
            calls.append((start, time.monotonic(), code))

        tasks = []
        for i in range(n):
            delay = t0 + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(timed(i)))
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.timeout * 3 + 10)
        elapsed = time.monotonic() - t0
    codes = Counter(c[2] for c in calls)
    return {"event": "done", "target": target, "round_robin": args.round_robin, "t0": t0, "elapsed_s": elapsed,
            "rate": args.rate, "timeout_s": args.timeout, "codes": dict(codes),
            "calls": [[round(a, 6), round(b, 6), c] for a, b, c in calls]}


def _stats(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"decisions": {}, "pids_via": []}
    for address in args.metrics:
        total = 0.0
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("callgate_decisions_total{"):
                    total += float(line.rsplit(" ", 1)[1])
        out["decisions"][address] = int(total)
    if args.via:
        import grpc

        from callgate.v1 import admin_pb2, admin_pb2_grpc

        with grpc.insecure_channel(args.via) as channel:
            stub = admin_pb2_grpc.AdminStub(channel)
            out["pids_via"] = [stub.Stats(admin_pb2.StatsRequest(tenant="acme"), timeout=5).pid
                               for _ in range(args.asks)]
    return out


# -- the benchmark --------------------------------------------------------------------------------

def probe_run(cluster: Cluster, host: str, target: str, rate: float, duration_s: float, timeout_s: float,
               fault: Any = None, fault_at_s: float = 3.0, extra: Sequence[str] = ()) -> dict[str, Any]:
    """Run a probe on `host` against `target`; `fault()` is called `fault_at_s` into the load (its time is
    the result's `t_fault`)."""
    proc = cluster.python(host, "loadtest.cluster", "probe", "--target", target, "--rate", f"{rate:g}",
                          "--duration", f"{duration_s:g}", "--timeout", f"{timeout_s:g}", *extra,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    limit = time.monotonic() + 60 + duration_s + 3 * timeout_s
    started = json.loads(proc.stdout.readline() or "{}")
    if started.get("event") != "started":
        proc.kill()
        _, err = proc.communicate()
        raise RuntimeError(f"probe did not start: {err[-2000:]}")
    t_fault = None
    if fault is not None:
        time.sleep(max(started["t0"] + fault_at_s - time.monotonic(), 0.0))
        t_fault = time.monotonic()
        fault()
    try:
        out, err = proc.communicate(timeout=max(limit - time.monotonic(), 1.0))
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError("probe did not finish in time") from None
    if proc.returncode != 0:
        raise RuntimeError(f"probe exit {proc.returncode}: {err[-2000:]}")
    result: dict[str, Any] = json.loads(out)
    result["t_fault"] = t_fault
    if t_fault is not None:
        result["figures"] = failover_figures(result["calls"], t_fault)
    else:
        result["figures"] = failover_figures(result["calls"], started["t0"])
    return result


@contextlib.contextmanager
def two_hosts(workers: int = 2, lb: bool = True) -> Iterator[Cluster]:
    """lb (nginx over h1 and h2, when `lb`), h1, h2 (callgate), client."""
    with Cluster(("lb", "h1", "h2", "client") if lb else ("h1", "h2", "client")) as c:
        c.serve("h1", workers=workers)
        c.serve("h2", workers=workers)
        if lb:
            c.start_nginx("lb", ["h1", "h2"])
        yield c


def _h2load(cluster: Cluster, target: str, n: int, conns: int, streams: int) -> dict[str, Any]:
    from callgate.v1 import decisions_pb2
    from loadtest.loadgen import h2load_command, parse_output, write_body

    caller, called, at, _, _ = CASES[0]
    body = write_body(cluster.dir / "inbound.bin", decisions_pb2.InboundRequest(
        tenant="acme", caller=caller, called=called, at=at).SerializeToString())
    exe = shutil.which("h2load") or "h2load"
    cmd = h2load_command(f"http://{target}/callgate.v1.Decisions/Inbound", body, n, conns, streams, 1, None, exe)
    done = cluster.run("client", cmd, timeout_s=120)
    if done.returncode != 0:
        raise RuntimeError(f"h2load: exit {done.returncode}: {done.stdout[-1500:]} {done.stderr[-1500:]}")
    return parse_output(done.stdout)


FAULT_RUNS: list[tuple[str, bool, tuple[str, ...]]] = [
    ("kill -9 of a host, through nginx", True, ()),
    ("kill -9 of a host, client round_robin", False, ("--round-robin",)),
    ("link of a host cut, through nginx", True, ()),
    ("link of a host cut, client round_robin (keepalive 1 s)", False, ("--round-robin",)),
    ("link of a host cut, client round_robin without keepalive", False, ("--round-robin", "--keepalive-ms", "0")),
]


def _throughput(rounds: int, n: int, workers: int) -> dict[str, Any]:
    """h2load from the client host, 8 connections x 8 streams of Inbound: straight to h1, through nginx
    over h1 alone, through nginx over h1 and h2; `rounds` rounds alternating, medians; the cores each host
    kept busy and the callgate CPU per call."""
    print(f"== decisions/s through nginx, one host vs two ({workers} worker(s) each; h2load from the client "
          "host)", flush=True)
    runs: dict[str, list[dict[str, Any]]] = {k: [] for k in THROUGHPUT_RUNS}
    with two_hosts(workers) as c:
        for r in range(rounds):
            for name in THROUGHPUT_RUNS:
                if name == THROUGHPUT_RUNS[0]:
                    target = c.address("h1")
                else:
                    c.start_nginx("lb", ["h1"] if "only" in name else ["h1", "h2"])
                    target = c.address("lb")
                cpu0, ticks0, t0 = _cpu_by_host(c), process.machine_ticks(), time.monotonic()
                out = _h2load(c, target, n, 8, 8)
                wall, cpu1, ticks1 = time.monotonic() - t0, _cpu_by_host(c), process.machine_ticks()
                cores = {h: round((cpu1[h] - cpu0[h]) / wall, 2) for h in ("lb", "h1", "h2")}
                machine = (ticks1[0] - ticks0[0]) / max(ticks1[1] - ticks0[1], 1) * (os.cpu_count() or 1)
                req = out["requests"]
                row = {"req_per_s": round(out["req_per_s"]), "succeeded": req["succeeded"], "total": req["total"],
                       "cores": cores, "machine_cores": round(machine, 2),
                       "callgate_cpu_us_per_call": round((cores["h1"] + cores["h2"]) / out["req_per_s"] * 1e6)}
                if name != THROUGHPUT_RUNS[0]:
                    counts = c.nginxes["lb"].upstream_counts()
                    if set(counts["grpc_status"]) - {"0"}:
                        raise RuntimeError(f"gRPC errors through nginx: {counts}")
                    row["per_host"] = counts["answered"]
                runs[name].append(row)
                print(f"  round {r + 1}: {name}: {row['req_per_s']:,} req/s, {req['succeeded']:,}/{req['total']:,} "
                      f"succeeded; cores busy: nginx {cores['lb']}, h1 {cores['h1']}, h2 {cores['h2']}, machine "
                      f"{row['machine_cores']}; callgate {row['callgate_cpu_us_per_call']} us CPU per call"
                      + (f"; per host {row['per_host']}" if "per_host" in row else ""), flush=True)
    out_figures: dict[str, Any] = {
        k: {"median_req_per_s": round(statistics.median(r["req_per_s"] for r in rs)), "rounds": rs}
        for k, rs in runs.items()}
    out_figures["two_over_one"] = round(out_figures[THROUGHPUT_RUNS[2]]["median_req_per_s"]
                                        / out_figures[THROUGHPUT_RUNS[1]]["median_req_per_s"], 3)
    out_figures["nginx_over_direct"] = round(out_figures[THROUGHPUT_RUNS[1]]["median_req_per_s"]
                                             / out_figures[THROUGHPUT_RUNS[0]]["median_req_per_s"], 3)
    print("  medians: " + ", ".join(f"{k} {v['median_req_per_s']:,}" for k, v in out_figures.items()
                                     if isinstance(v, dict)) + f"; two hosts / one {out_figures['two_over_one']}",
          flush=True)
    return out_figures


def _cpu_by_host(c: Cluster) -> dict[str, float]:
    """CPU seconds so far of the processes running inside each host."""
    return {h: sum(process.proc_cpu_seconds(p) or 0.0 for p in pids_in(c.net[h].ns)) for h in c.net.hosts}


THROUGHPUT_RUNS = ("direct to h1 (no nginx)", "nginx over h1 only", "nginx over h1 and h2")


def bench(rounds: int = 3, rate: float = 300.0, duration_s: float = 8.0, n: int = 20_000,
          workers: int = 2, sections: Sequence[str] = ("throughput", "faults")) -> dict[str, Any]:
    figures: dict[str, Any] = {"machine_cores": os.cpu_count(), "workers_per_host": workers}
    if "throughput" in sections:
        figures["throughput"] = _throughput(rounds, n, workers)
    if "faults" not in sections:
        return figures
    for name, lb, extra in FAULT_RUNS:
        print(f"== {name}: {rate:g} calls/s for {duration_s:g} s, the fault 3 s in", flush=True)
        with two_hosts(workers, lb) as c:
            target = c.address("lb") if lb else f"{c.address('h1')},{c.address('h2')}"
            fault = (lambda c=c: c.cut("h1")) if "cut" in name else (lambda c=c: c.kill_host("h1"))
            out = probe_run(c, "client", target, rate, duration_s, 2.0, fault, 3.0, extra)
            f = out["figures"]
            if lb:
                f["nginx"] = c.nginxes["lb"].upstream_counts()
            figures[name] = f
            print(f"  {f['calls']} calls: {f['errors']} errors {f['codes']} ({f['error_pct']}%), failover "
                  f"(to the last error) {f['failover_s']} s, 50 successes in a row from {f['steady_s']} s; "
                  f"{f['slow']} calls slower than 100 ms, the last ending {f['disturbed_s']} s after the fault; "
                  f"max latency near the fault {f['max_latency_ms']} ms", flush=True)
            if lb:
                print(f"  nginx: {f['nginx']}", flush=True)
    return figures


# -- command line ---------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.cluster", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bench", help="hosts in namespaces, nginx and round_robin: throughput and failover")
    b.add_argument("--rounds", type=int, default=3)
    b.add_argument("--rate", type=float, default=300.0, help="calls/s of the failover probes (300)")
    b.add_argument("--duration", type=float, default=8.0, help="seconds of each failover probe (8)")
    b.add_argument("-n", type=int, default=20_000, help="requests of each h2load round (20,000)")
    b.add_argument("--workers", type=int, default=2, help="callgate workers per host (2)")
    b.add_argument("--sections", default="throughput,faults", help="throughput and/or faults (both)")
    b.add_argument("--json", type=Path, help="also write the figures here")
    pr = sub.add_parser("probe", help="open-loop Inbound calls with checked answers; one JSON line per phase")
    pr.add_argument("--target", required=True, help="HOST:PORT, or with --round-robin HOST:PORT,HOST:PORT...")
    pr.add_argument("--round-robin", action="store_true", help="client-side round_robin with health checking")
    pr.add_argument("--no-retries", action="store_true", help="with --round-robin: no retry policy")
    pr.add_argument("--retries", action="store_true", help="without --round-robin: retry UNAVAILABLE too")
    pr.add_argument("--keepalive-ms", type=int, default=1000,
                    help="with --round-robin: keepalive ping interval and timeout (1000; 0: none)")
    pr.add_argument("--rate", type=float, default=300.0)
    pr.add_argument("--duration", type=float, default=8.0)
    pr.add_argument("--max-calls", type=int, default=20_000, help="never more calls than this (20,000)")
    pr.add_argument("--timeout", type=float, default=2.0, help="deadline of each call, seconds (2)")
    pr.add_argument("--warmup-s", type=float, default=20.0)
    st = sub.add_parser("stats", help="decisions per host from /metrics, Admin.Stats pids through a balancer")
    st.add_argument("--metrics", action="append", default=[], metavar="HOST:PORT")
    st.add_argument("--via", default="", metavar="HOST:PORT")
    st.add_argument("--asks", type=int, default=20)
    sub.add_parser("sweep", help="remove the namespaces (and processes in them) of dead runs")
    a = p.parse_args(argv)
    if a.command == "probe":
        if not 1 <= a.rate <= 5000 or not 0 < a.duration <= 120:
            p.error("--rate must be 1..5000 and --duration in (0, 120]")
        print(json.dumps(asyncio.run(_probe(a))), flush=True)
        return 0
    if a.command == "stats":
        print(json.dumps(_stats(a)), flush=True)
        return 0
    if a.command == "sweep":
        sweep()
        return 0
    with process.sigterm_unwinds():
        figures = bench(a.rounds, a.rate, a.duration, a.n, a.workers, a.sections.split(","))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
