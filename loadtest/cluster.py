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

The shared store: `start_postgres(host)` runs a private PostgreSQL (loadtest.postgres.PrivateCluster: initdb in a
temporary folder, the server as the `postgres` user) inside a host's namespace, listening on the host's address
(port 5432) and trusting the run's subnet; `serve(host, store=c.dsn)` serves from it (`--store postgresql://...`).
`cut_db(host)` drops every packet between a callgate host and the database host, both ways, on the bridge
(loadtest.netns `block`: an nftables rule in the switch's namespace), so the host stays reachable by the
balancer and the clients and only its database falls silent, as behind a firewall that drops; `restore_db`
lets the packets through again.  `stop_postgres` / `start_postgres` restart the database under load.

A client inside the run: `agent(host)` starts `python -m loadtest.cluster agent` on a host (the test process
cannot reach the run's subnet from the root namespace) and returns an `Agent`, which sends it one JSON line per
request: any unary RPC of callgate or grpc.health (`call`, `push`, `event`, `health`), a host's /metrics
(`metrics`), and loads that run in the agent meanwhile (`start_load`/`wait_load`: open-loop decisions, or lanes
of whole calls RINGING -> ANSWERED -> ENDED with every reply kept, for the billing checks).

Client-side balancing, the option without a middle box: `round_robin_target` and `round_robin_options` (a
channel to every host at once, calls spread over the hosts whose health says SERVING, UNAVAILABLE retried
on another host).

    python -m loadtest.cluster bench [--rounds 3] [--json FILE]    # the figures of README's "Many machines"
    python -m loadtest.cluster probe --target 10.77.0.2:50051 --rate 300 --duration 8   # run inside a host
    python -m loadtest.cluster stats --metrics 10.77.0.3:9464 --metrics 10.77.0.4:9464  # idem
    python -m loadtest.cluster agent                                  # idem: JSON requests on stdin (Agent)
    python -m loadtest.cluster up [--sqlite] [--seconds 600]          # db, h1, h2, lb, client, to try by hand
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import loadtest.process as process
from loadtest.netns import IP, SUBNET, Network, pids_in, sweep
from loadtest.postgres import PrivateCluster
from loadtest.process import ROOT, ServeProcess, descendants, kill_leftovers, python_env, start_time

GRPC_PORT = 50051
METRICS_PORT = 9464
PG_PORT = 5432
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
        unanswered: list[dict[str, Any]] = []
        for row in self.access_log():
            for host in row["hosts"][:-1]:
                failed[host] += 1
            answered[row["hosts"][-1]] += 1
            grpc_status[row["grpc_status"]] += 1
            http[row["status"]] += 1
            if row["grpc_status"] != "0" and len(unanswered) < 20:
                unanswered.append({"t": row["t"], "uri": row["uri"].rpartition("/")[2], "hosts": row["hosts"],
                                   "upstream_status": row["upstream_status"], "status": row["status"],
                                   "request_time": row["request_time"]})
        return {"answered": dict(answered), "failed_then_retried": dict(failed), "grpc_status": dict(grpc_status),
                "http_status": dict(http), "not_ok": unanswered}

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
        self.postgres: PrivateCluster | None = None
        self.db_host = ""
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

    def serve(self, host: str, *extra: str, workers: int = 2, start_timeout_s: float = 90.0, store: str = "",
              **options: Any) -> ServeProcess:
        """`callgate serve` on `host` (0.0.0.0:50051, metrics :9464, a SQLite store of its own, or `store`, e.g.
        `self.dsn`: the run's PostgreSQL; seeded with acme unless `seed=None`, a no-op on a store that holds
        settings; `extra` are more serve options, `options` more ServeProcess arguments).  The server lives
        in the host's namespace: use `address(host)` from another host, not ServeProcess's `address` or
        `channel()`, which mean 127.0.0.1 of this namespace."""
        data = self.dir / host / "data"
        data.mkdir(parents=True, exist_ok=True)
        if store:
            extra = ("--store", store, *extra)
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

    # -- the database host

    def start_postgres(self, host: str = "", port: int = PG_PORT) -> PrivateCluster:
        """PostgreSQL on `host` (first call: initdb, a `callgate` database and role, trust from the run's subnet;
        later calls: the same cluster started again after `stop_postgres`).  Returns once it accepts
        connections."""
        if self.postgres is None:
            if not host:
                raise ValueError("start_postgres: which host runs the database?")
            self.db_host = host
            self.postgres = PrivateCluster(listen=self.net[host].address, port=port, trust=str(self.net.net),
                                           prefix=[IP, "netns", "exec", self.net[host].ns])
        elif host and host != self.db_host:
            raise ValueError(f"the run's database is on {self.db_host}, not {host}")
        self.postgres.start()
        self._note_postgres()
        return self.postgres

    def _note_postgres(self) -> None:
        proc = self.postgres.proc if self.postgres is not None else None
        if proc is not None:
            self._note(proc.pid)
            for pid, _ in descendants(proc.pid):
                self._note(pid)

    def stop_postgres(self, kill: bool = False) -> None:
        """A fast shutdown of the database (every connection closed by the server), or `kill`: kill -9."""
        if self.postgres is not None:
            self._note_postgres()
            if kill:
                self.postgres.kill()
            else:
                self.postgres.stop()

    @property
    def dsn(self) -> str:
        if self.postgres is None:
            raise RuntimeError("no database in this run: start_postgres(host) first")
        return self.postgres.dsn

    def sql(self, statement: str) -> list[list[str]]:
        """A statement in the run's database, as its superuser (psql over the server's own socket); rows of
        fields as text."""
        if self.postgres is None:
            raise RuntimeError("no database in this run")
        return [line.split("|") for line in self.postgres.sql(statement).splitlines() if line]

    def cut_db(self, host: str, one_way: bool = False) -> None:
        """Drop every packet between `host` and the database host, both ways, silently (see the module's doc);
        `one_way`: only the database's packets to `host` (what it sends still arrives)."""
        self.net.block(host, self.db_host, one_way)

    def restore_db(self, host: str) -> None:
        self.net.unblock(host, self.db_host)

    # -- a client inside the run

    def agent(self, host: str) -> Agent:
        """`python -m loadtest.cluster agent` on `host`: requests from this process, answered from there."""
        log = self.dir / f"agent-{host}-{len(self.procs)}.log"
        with open(log, "w") as err:
            proc = self.python(host, "loadtest.cluster", "agent", stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                               stderr=err, text=True)
        agent = Agent(proc, log)
        agent.ask("ping", timeout_s=60)
        return agent

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
        if self.postgres is not None:
            try:
                self.stop_postgres()
                report.stopped.append(f"{self.db_host}: postgres")
            except Exception as exc:
                report.errors.append(f"{self.db_host} postgres: {exc!r}")
            shutil.rmtree(self.postgres.folder, ignore_errors=True)
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


# -- the agent: a client inside the run, driven from this process ----------------------------------

class AgentError(RuntimeError):
    pass


class Agent:
    """This side of `python -m loadtest.cluster agent` (started by `Cluster.agent(host)`): one JSON line per
    request, one per answer, in order.  The times in the answers are `time.monotonic()` of the agent's host,
    which is this machine's clock (namespaces do not change it), and `time.time()` where named `wall`."""

    def __init__(self, proc: subprocess.Popen[Any], log: Path) -> None:
        self.proc, self.log = proc, log
        self._lock = threading.Lock()

    def ask(self, op: str, timeout_s: float = 30.0, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        with self._lock:
            if self.proc.poll() is not None:
                raise AgentError(f"the agent exited ({self.proc.returncode}): {self._stderr()}")
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
            ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
            line = self.proc.stdout.readline() if ready else ""
        if not line:
            raise AgentError(f"the agent did not answer {op} in {timeout_s:g} s: {self._stderr()}")
        out: dict[str, Any] = json.loads(line)
        if "agent_error" in out:
            raise AgentError(f"{op}: {out['agent_error']}")
        return out

    def _stderr(self) -> str:
        with contextlib.suppress(OSError):
            return self.log.read_text(errors="replace")[-2000:]
        return ""

    def call(self, target: str, service: str, method: str, request: dict[str, Any], timeout: float = 10.0,
             fresh: bool = False, round_robin: bool = False) -> dict[str, Any]:
        """One unary RPC: {"ok": True, "reply": {...}} or {"ok": False, "code": "UNAVAILABLE", "details": ...},
        with its start and end ("t0", "t1"; "wall0": time.time() at the start).  `fresh`: a new connection."""
        return self.ask("call", timeout_s=timeout + 30, target=target, service=service, method=method,
                        request=request, timeout=timeout, fresh=fresh, round_robin=round_robin)

    def push(self, target: str, document: bytes, timeout: float = 30.0, **fields: Any) -> dict[str, Any]:
        return self.call(target, "callgate.v1.Admin", "PushSettings",
                         {"document": base64.b64encode(document).decode(), **fields}, timeout)

    def event(self, target: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        return self.call(target, "callgate.v1.Decisions", "CallEvent", fields, timeout)

    def health(self, target: str, service: str, timeout: float = 5.0) -> str:
        """grpc.health.v1 Check over a new connection: SERVING, NOT_SERVING, or the RPC's error code."""
        out = self.call(target, "grpc.health.v1.Health", "Check", {"service": service}, timeout, fresh=True)
        return str(out["reply"].get("status", "UNKNOWN")) if out["ok"] else str(out["code"])

    def metrics(self, address: str, prefix: str = "callgate_", timeout: float = 5.0) -> dict[str, float]:
        """A host's /metrics: every sample whose name starts with `prefix`, by its line's name and labels;
        {"error": 1.0} alone when the scrape failed (refused, or no answer within `timeout`)."""
        out = self.ask("metrics", timeout_s=timeout + 30, address=address, prefix=prefix, timeout=timeout)
        samples: dict[str, float] = out["samples"] if "error" not in out else {"error": 1.0}
        return samples

    def start_load(self, kind: str, target: str, timeout_s: float = 30.0, **spec: Any) -> str:
        """A load run by the agent while this process does other things: `kind` "decide" (open-loop Inbound
        calls of CASES at `rate` for `duration` s, each answer checked) or "calls" (`lanes` lanes of whole
        calls, `pause` s between calls, for `duration` s or `max_calls`).  `round_robin`: `target` is a list of
        HOST:PORT, balanced by the client (round_robin_options).  Returns the load's id."""
        load: str = self.ask("start_load", timeout_s=timeout_s, kind=kind, target=target, **spec)["load"]
        return load

    def wait_load(self, load: str, stop: bool = False, timeout_s: float = 120.0) -> dict[str, Any]:
        """The load's records once it is over (`stop`: end it now; calls in flight are carried to their end)."""
        return self.ask("wait_load", timeout_s=timeout_s, load=load, stop=stop, wait_s=timeout_s - 5)


# -- settings in force: when each worker took a version ------------------------------------------

PUSH_EVENTS = ("installed", "push", "patch", "rollback")  # the watcher's line; the pushing worker's own


def log_wall(record: dict[str, Any]) -> float:
    """A JSON log line's "ts" (UTC, milliseconds) as time.time()."""
    ts = datetime.datetime.strptime(str(record["ts"]), "%Y-%m-%dT%H:%M:%S.%fZ")
    return ts.replace(tzinfo=datetime.UTC).timestamp()


def in_force(server: ServeProcess, tenant: str, version: int) -> dict[int, float | None]:
    """Per live worker of `server`: the wall time its log said `version` (or a newer one) of `tenant` was in
    force there (the watcher's "installed" line, or the pushing worker's own "push" line, both written once
    the snapshot answers decisions), None while it has not."""
    live = [pid for pid in server.worker_pids() if alive(pid, start_time(pid) or -1)]  # a zombie took nothing
    out: dict[int, float | None] = {pid: None for pid in live}
    for r in server.logs[:]:
        pid = r.get("pid")
        if (pid in out and out[pid] is None and r.get("event") in PUSH_EVENTS and r.get("tenant") == tenant
                and int(r.get("version", 0)) >= version):
            out[pid] = log_wall(r)
    return out


def propagation(servers: dict[str, ServeProcess], tenant: str, version: int, sent_wall: float,
                timeout_s: float = 5.0) -> dict[str, dict[int, float | None]]:
    """Seconds from `sent_wall` (time.time() when the push was sent) until each worker of each server had
    `version` in force (None: not within `timeout_s`); waits until all have or the time is up."""
    deadline = time.monotonic() + timeout_s
    while True:
        seen = {h: in_force(s, tenant, version) for h, s in servers.items()}
        if all(t is not None for w in seen.values() for t in w.values()) or time.monotonic() > deadline:
            return {h: {pid: None if t is None else round(t - sent_wall, 4) for pid, t in w.items()}
                    for h, w in seen.items()}
        time.sleep(0.02)


def slowest(delays: dict[str, dict[int, float | None]]) -> float | None:
    """The last worker's delay (None if any worker never took the version)."""
    values = [t for w in delays.values() for t in w.values()]
    return None if not values or any(t is None for t in values) else max(t for t in values if t is not None)


def settings_document(i: int, base: Path = process.EXAMPLE) -> bytes:
    """acme's settings with one more blacklisted number (a new version each time: `i` numbers it)."""
    doc = json.loads(base.read_text())
    doc["blacklist"] = [*doc["blacklist"], f"+1646555{i % 10_000:04d}"]
    return json.dumps(doc).encode()


def _load_messages(service: str, method: str) -> tuple[Any, Any]:
    from grpc_health.v1 import health_pb2

    from callgate.v1 import admin_pb2, decisions_pb2

    for module in (admin_pb2, decisions_pb2, health_pb2):
        for svc in module.DESCRIPTOR.services_by_name.values():
            if svc.full_name == service and method in svc.methods_by_name:
                m = svc.methods_by_name[method]
                return getattr(module, m.input_type.name), getattr(module, m.output_type.name)
    raise KeyError(f"no method {service}/{method}")


class _AgentServer:
    """The agent's side: channels by target, and the loads it runs in threads."""

    def __init__(self) -> None:
        import grpc

        from server.client import BIG_MESSAGES

        self.grpc = grpc
        self.big = BIG_MESSAGES
        self.channels: dict[tuple[str, bool], Any] = {}
        self.loads: dict[str, tuple[threading.Thread, threading.Event, dict[str, Any]]] = {}

    def channel(self, target: str, round_robin: bool = False, fresh: bool = False) -> Any:
        key = (target, round_robin)
        if fresh or key not in self.channels:
            if round_robin:
                channel = self.grpc.insecure_channel(round_robin_target(target.split(",")),
                                                     options=[*self.big, *round_robin_options()])
            else:
                channel = self.grpc.insecure_channel(target, options=self.big)
            if fresh:
                return channel
            self.channels[key] = channel
        return self.channels[key]

    def unary(self, channel: Any, service: str, method: str) -> Any:
        req, rep = _load_messages(service, method)
        return channel.unary_unary(f"/{service}/{method}", request_serializer=req.SerializeToString,
                                   response_deserializer=rep.FromString), req

    def call(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from google.protobuf import json_format

        channel = self.channel(cmd["target"], cmd.get("round_robin", False), cmd.get("fresh", False))
        try:
            fn, req = self.unary(channel, cmd["service"], cmd["method"])
            request = json_format.ParseDict(cmd.get("request", {}), req())
            wall0, t0 = time.time(), time.monotonic()
            try:
                reply = fn(request, timeout=cmd.get("timeout", 10.0))
            except self.grpc.RpcError as exc:
                return {"ok": False, "code": exc.code().name, "details": exc.details(), "t0": t0,
                        "t1": time.monotonic(), "wall0": wall0}
            return {"ok": True, "reply": json_format.MessageToDict(reply, preserving_proto_field_name=True),
                    "t0": t0, "t1": time.monotonic(), "wall0": wall0}
        finally:
            if cmd.get("fresh"):
                channel.close()

    @staticmethod
    def metrics(cmd: dict[str, Any]) -> dict[str, Any]:
        samples: dict[str, float] = {}
        try:
            with urllib.request.urlopen(f"http://{cmd['address']}/metrics", timeout=cmd.get("timeout", 5.0)) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith(cmd.get("prefix", "callgate_")):
                        name, _, value = line.rpartition(" ")
                        samples[name] = float(value)
        except OSError as exc:  # refused, timed out: said, not raised (a host's /metrics may hang in a fault)
            return {"samples": samples, "error": f"{type(exc).__name__}: {exc}"}
        return {"samples": samples}

    def start_load(self, cmd: dict[str, Any]) -> dict[str, Any]:
        if cmd["kind"] == "decide":
            self._warm(cmd)
        load = f"{cmd['kind']}-{len(self.loads) + 1}"
        stop = threading.Event()
        result: dict[str, Any] = {"kind": cmd["kind"], "target": cmd["target"]}
        body = self._decide if cmd["kind"] == "decide" else self._calls
        thread = threading.Thread(target=body, args=(cmd, stop, result), name=load, daemon=True)
        thread.start()
        self.loads[load] = (thread, stop, result)
        return {"load": load}

    def wait_load(self, cmd: dict[str, Any]) -> dict[str, Any]:
        thread, stop, result = self.loads[cmd["load"]]
        if cmd.get("stop"):
            stop.set()
        thread.join(cmd.get("wait_s", 60.0))
        if thread.is_alive():
            return {"agent_error": f"load {cmd['load']} still running"}
        return result

    def _warm(self, cmd: dict[str, Any], timeout_s: float = 20.0) -> None:
        """Until 20 decisions in a row are answered through the load's channel (every host connected)."""
        from callgate.v1 import decisions_pb2

        fn, _ = self.unary(self.channel(cmd["target"], cmd.get("round_robin", False)), "callgate.v1.Decisions",
                           "Inbound")
        caller, called, at, _, _ = CASES[0]
        request = decisions_pb2.InboundRequest(tenant="acme", caller=caller, called=called, at=at)
        streak, deadline = 0, time.monotonic() + timeout_s
        while streak < 20:
            try:
                fn(request, timeout=2.0)
                streak += 1
            except self.grpc.RpcError:
                streak = 0
                time.sleep(0.05)
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd['target']} did not answer 20 decisions in a row in {timeout_s:g} s")

    def _decide(self, cmd: dict[str, Any], stop: threading.Event, result: dict[str, Any]) -> None:
        """Open loop: `rate` Inbound calls/s for `duration` s (never more than 20,000), answers checked."""
        from callgate.v1 import decisions_pb2

        channel = self.channel(cmd["target"], cmd.get("round_robin", False))
        fn, _ = self.unary(channel, "callgate.v1.Decisions", "Inbound")
        requests = [decisions_pb2.InboundRequest(tenant="acme", caller=c, called=d, at=at) for c, d, at, _, _ in CASES]
        expected = [(decisions_pb2.Verdict.Value(v), decisions_pb2.Reason.Value(r)) for *_, v, r in CASES]
        rate, timeout = float(cmd.get("rate", 200.0)), float(cmd.get("timeout", 2.0))
        n = min(int(rate * float(cmd.get("duration", 5.0))), 20_000)
        calls: list[list[Any]] = []
        details: Counter[str] = Counter()
        lock = threading.Lock()
        outstanding = [0]
        done = threading.Event()

        def finished(future: Any, i: int, start: float) -> None:
            end = time.monotonic()
            try:
                d = future.result()
                code = "OK" if (d.verdict, d.reason) == expected[i % len(expected)] else "WRONG"
            except self.grpc.RpcError as exc:
                code = exc.code().name
                with lock:
                    details[f"{code}: {exc.details()}"[:200]] += 1
            with lock:
                calls.append([round(start, 6), round(end, 6), code])
                outstanding[0] -= 1
                if outstanding[0] == 0 and sent[0] == n:
                    done.set()

        sent = [0]
        t0 = time.monotonic() + 0.02
        result["t0"] = t0
        for i in range(n):
            if stop.is_set():
                n = i
                break
            delay = t0 + i / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            start = time.monotonic()
            with lock:
                outstanding[0] += 1
                sent[0] += 1
            future = fn.future(requests[i % len(requests)], timeout=timeout)
            future.add_done_callback(lambda f, i=i, start=start: finished(f, i, start))
        with lock:
            if outstanding[0] == 0:
                done.set()
        done.wait(timeout * 3 + 10)
        with lock:
            result.update({"calls": sorted(calls), "codes": dict(Counter(c[2] for c in calls)),
                           "details": dict(details), "sent": sent[0]})

    def _calls(self, cmd: dict[str, Any], stop: threading.Event, result: dict[str, Any]) -> None:
        """`lanes` lanes, each one whole outbound call at a time (RINGING u3 -> ANSWERED -> ENDED, 65 s of talk:
        0.04 at acme's rate), `pause` s between calls, until `duration` s or `max_calls`; a call whose event
        fails is left where it is (its record says which event failed and how) and the lane goes on."""
        from callgate.v1 import decisions_pb2

        ev = decisions_pb2.CallEventRequest
        channel = self.channel(cmd["target"], cmd.get("round_robin", False))
        fn, _ = self.unary(channel, "callgate.v1.Decisions", "CallEvent")
        lanes, pause, timeout = int(cmd.get("lanes", 4)), float(cmd.get("pause", 0.0)), float(cmd.get("timeout", 5))
        deadline = time.monotonic() + min(float(cmd.get("duration", 10.0)), 120.0)
        max_calls = min(int(cmd.get("max_calls", 5000)), 20_000)
        prefix = cmd.get("prefix", "c")
        records: list[dict[str, Any]] = []
        lock = threading.Lock()
        count = [0]

        def lane(k: int) -> None:
            n = 0
            while not stop.is_set() and time.monotonic() < deadline:
                with lock:
                    if count[0] >= max_calls:
                        return
                    count[0] += 1
                n += 1
                call_id, now = f"{prefix}-{k}-{n}", int(time.time())
                rec: dict[str, Any] = {"id": call_id, "now": now, "t0": time.monotonic(), "acked": [],
                                       "charge": None, "failed": None}
                for kind, at, user in ((ev.RINGING, now - 70, "u3"), (ev.ANSWERED, now - 65, "u3"),
                                       (ev.ENDED, now, "")):
                    try:
                        reply = fn(ev(tenant="acme", call_id=call_id, kind=kind, user=user, at=at,
                                      direction="outbound", called="+12125550100"), timeout=timeout)
                    except self.grpc.RpcError as exc:
                        rec["failed"] = [ev.Kind.Name(kind), exc.code().name, str(exc.details())[:200],
                                         time.monotonic()]
                        break
                    rec["acked"].append(ev.Kind.Name(kind))
                    if kind == ev.ENDED:
                        rec["charge"] = reply.charge
                rec["t1"] = time.monotonic()
                with lock:
                    records.append(rec)
                if pause:
                    time.sleep(pause)

        threads = [threading.Thread(target=lane, args=(k,), daemon=True) for k in range(lanes)]
        result["t0"] = time.monotonic()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(deadline - time.monotonic(), 0) + timeout * 3 + 5)
        with lock:
            result.update({"records": sorted(records, key=lambda r: r["t0"]),
                           "acked_calls": sum(1 for r in records if r["charge"] is not None),
                           "failed_calls": sum(1 for r in records if r["failed"] is not None)})


def _agent() -> int:
    """Serve JSON requests from stdin, one per line, answered in order on stdout (see Agent)."""
    server = _AgentServer()
    handlers = {"call": server.call, "metrics": server.metrics, "start_load": server.start_load,
                "wait_load": server.wait_load, "ping": lambda cmd: {"pid": os.getpid()}}
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            cmd = json.loads(line)
            out = handlers[cmd["op"]](cmd)
        except Exception as exc:  # the test side raises it (AgentError) with this text
            out = {"agent_error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(out) + "\n")
        sys.stdout.flush()
    return 0


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


@contextlib.contextmanager
def pg_hosts(workers: int = 2, lb: bool = False, credit: str = "1000.00") -> Iterator[Cluster]:
    """db (PostgreSQL), h1 and h2 (`callgate serve --store` the db; h1 seeds acme with `credit`), client, and
    lb (nginx over h1 and h2) when `lb`."""
    with Cluster(("db", "h1", "h2", "client", *(("lb",) if lb else ()))) as c:
        c.start_postgres("db")
        c.serve("h1", workers=workers, store=c.dsn, seed_credit=credit)
        c.serve("h2", workers=workers, store=c.dsn, seed=None)
        if lb:
            c.start_nginx("lb", ["h1", "h2"])
        yield c


def _up(a: argparse.Namespace) -> None:
    names = ("h1", "h2", "lb", "client") if a.sqlite else ("db", "h1", "h2", "lb", "client")
    with Cluster(names) as c:
        store = ""
        if not a.sqlite:
            c.start_postgres("db")
            store = c.dsn
        c.serve("h1", workers=a.workers, store=store, seed_credit="100.00")
        c.serve("h2", workers=a.workers, store=store, seed=None if store else process.EXAMPLE)
        c.start_nginx("lb", ["h1", "h2"])
        what = {"db": f"PostgreSQL {store}", "h1": "callgate serve", "h2": "callgate serve",
                "lb": "nginx (integrations/nginx/callgate.conf)", "client": "nothing: run your clients here"}
        for h in names:
            print(f"{h:7} {c.net[h].ns:28} {c.net[h].address:11} {what[h]}")
        client, cg = c.net["client"].ns, ROOT / ".venv" / "bin" / "callgate"
        print(f"\ntry:\n  ip netns exec {client} {cg} --server {c.address('lb')} decide inbound --tenant acme "
              "--caller +14155550666 --called +14155550199\n"
              f"  ip netns exec {client} {cg} --server {c.address('h2')} stats\n"
              f"  ip netns exec {client} curl -s {c.address('h1', METRICS_PORT)}/metrics | grep health_serving\n"
              f"nginx logs under {c.dir}/lb; everything goes on Ctrl-C or after {a.seconds:g} s", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            time.sleep(min(a.seconds, 3600.0))


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
    sub.add_parser("agent", help="a client inside the run: JSON requests on stdin, answers on stdout (Agent)")
    up = sub.add_parser("up", help="db (PostgreSQL), h1, h2 (callgate), lb (nginx), client: print how to reach "
                                   "them, hold them until Ctrl-C or --seconds, then remove everything")
    up.add_argument("--sqlite", action="store_true", help="no db host: each callgate host on a SQLite store")
    up.add_argument("--workers", type=int, default=2)
    up.add_argument("--seconds", type=float, default=600.0, help="at most this long (600; at most 3600)")
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
    if a.command == "agent":
        return _agent()
    if a.command == "up":
        with process.sigterm_unwinds():
            _up(a)
        return 0
    with process.sigterm_unwinds():
        figures = bench(a.rounds, a.rate, a.duration, a.n, a.workers, a.sections.split(","))
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
