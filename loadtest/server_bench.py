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
  3. --workers 2 against one worker: h2load -n 50000 -c 8 -m 16 (8
     connections, for SO_REUSEPORT to spread them), 3 interleaved rounds,
     ratio >= 1.7.  The h2load client's CPU (getrusage of the reaped child)
     and each worker's CPU (/proc) are reported, with the ceiling the
     machine's cores put on the ratio.
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
import copy
import json
import os
import resource
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2
from server.app import free_port
from server.client import upload_messages

from . import h2load
from .bare_server import BareServer
from .grpc_bench import METHODS, LoadSpec, batch_payloads, inbound_payloads, probe, run_load
from .stats import Timeline, proc_cpu_seconds, stop_process
from .world import big_tenant

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "acme.json"
TENANT = "acme"
AT = 1796149800  # Tuesday 2026-12-01 10:30 in Los Angeles
BLACKLISTED = "+14155550666"  # on acme's blacklist: REJECT BLACKLISTED
CLEAN = "+14155551234"
CALLED = "+14155550199"
ROWS = [(BLACKLISTED, CALLED, AT), (CLEAN, CALLED, AT)]
MB64 = 64 * 1024 * 1024
BIG_OPTIONS: list[tuple[str, Any]] = [("grpc.max_send_message_length", MB64),
                                      ("grpc.max_receive_message_length", MB64)]
FRESH_OPTIONS: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own
SECTIONS = {1: "latency", 2: "saturation", 3: "workers", 4: "batch", 5: "stalls", 6: "propagation", 7: "kill"}

_T0 = time.monotonic()


def say(text: str) -> None:
    """A progress line, with the seconds since the bench started."""
    print(f"[{time.monotonic() - _T0:6.1f}s] {text}", flush=True)


# -- the plan: every load parameter, full or quick ------------------------------------------------

@dataclass
class Plan:
    quick: bool = False
    client_procs: int = 1  # grpc_bench client processes for the open loops
    warmup_s: float = 1.0
    # 1
    low_rate: float = 200.0
    high_rate: float = 1000.0
    latency_s: float = 10.0
    # 2, 3
    h2_requests: int = 50_000
    h2_streams: int = 16
    sat_clients: int = 4
    scale_clients: int = 8
    rounds: int = 3
    # 4
    batch_size: int = 1000
    batch_inflight: int = 4
    batch_s: float = 5.0
    batch_h2_requests: int = 4000
    # 5
    stall_rate: float = 1000.0
    stall_s: float = 15.0
    push_at_s: float = 4.0
    blacklist: int = 1_000_000
    big_numbers: int = 1000
    seed: int = 7
    push_timeout_s: float = 120.0
    # 6
    pushes: int = 5
    # 7
    kill_rate: float = 500.0
    kill_s: float = 8.0
    kill_at_s: float = 3.0
    kill_channels: int = 8

    @classmethod
    def quick_plan(cls) -> Plan:
        return cls(quick=True, warmup_s=0.3, low_rate=200.0, high_rate=1000.0, latency_s=1.0,
                   h2_requests=2000, rounds=1, batch_s=1.0, batch_h2_requests=100,
                   stall_rate=500.0, stall_s=2.0, push_at_s=0.7, blacklist=20_000, big_numbers=100,
                   pushes=2, kill_rate=300.0, kill_s=3.0, kill_at_s=1.0, kill_channels=4)


# -- processes ------------------------------------------------------------------------------------

def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in ticks): tells a process from a later one with its PID."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[19])


def descendants(pid: int) -> list[tuple[int, int]]:
    """(pid, start time) of every live descendant of `pid`, from /proc/PID/task/*/children."""
    out: list[tuple[int, int]] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                start = _start_time(child)
                if start is not None and all(child != p for p, _ in out):
                    out.append((child, start))
                    todo.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def kill_leftovers(procs: Sequence[tuple[int, int]], grace_s: float = 3.0) -> list[str]:
    """Give `procs` `grace_s` to exit on their own, then SIGKILL those still alive (the same process: same PID
    and start time); returns "PID command line" of each one killed."""
    deadline = time.monotonic() + grace_s
    while any(_start_time(p) == s for p, s in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = []
    for pid, start in procs:
        if _start_time(pid) == start:
            line = _cmdline(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed.append(f"{pid} {line[:160]}")
    return killed


def connections_by_pid(pids: Sequence[int], port: int) -> dict[int, int]:
    """Established TCP connections on local `port` held by each of `pids` (server side), from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > 9 and cols[3] == "01" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(cols[9])
    out: dict[int, int] = {}
    for pid in pids:
        n = 0
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:[") and link[8:-1] in inodes:
                        n += 1
        out[pid] = n
    return out


class ServeProcess:
    """`python -m callgate serve` on 127.0.0.1, its JSON log lines collected; stopped by its PID."""

    def __init__(self, name: str, data_dir: Path, workers: int = 1, start_timeout_s: float = 60.0,
                 seed: bool = True, extra: Sequence[str] = ()) -> None:
        self.name, self.workers, self.data_dir = name, workers, data_dir
        port = free_port() if workers > 1 else 0  # N workers share an explicit port (SO_REUSEPORT)
        cmd = [sys.executable, "-m", "callgate", "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
               str(data_dir), "--metrics", "", "--workers", str(workers), "--log-format", "json", *extra]
        if seed:  # the example tenant with a 10.00 credit; a caller that pushes its own tenants says seed=False
            cmd += ["--seed", str(EXAMPLE), "--seed-credit", "10.00"]
        self.command = cmd
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.logs: list[dict[str, Any]] = []
        self._lock = threading.RLock()  # wait_for's predicate may read events() with the lock held
        self._changed = threading.Condition(self._lock)
        self.port: int | None = port or None
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, name=f"{name}-logs", daemon=True)
        self._reader.start()
        self._known: list[tuple[int, int]] = []
        self.left_behind: list[str] = []
        try:
            self.wait_events("listening", workers, start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.remember_processes()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError
            except ValueError:
                record = {"msg": line.rstrip()}
            record["_seen"] = time.monotonic()
            with self._changed:
                self.logs.append(record)
                if record.get("event") == "listening" and self.port is None:
                    self.port = int(str(record["address"]).rsplit(":", 1)[1])
                self._changed.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.logs if r.get("event") == name]

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return predicate()
                self._changed.wait(min(left, 0.2))
        return True

    def _count(self, event: str) -> int:  # with the lock held
        return sum(1 for r in self.logs if r.get("event") == event)

    def wait_events(self, event: str, count: int, timeout_s: float) -> None:
        if not self.wait_for(lambda: self._count(event) >= count, timeout_s):
            tail = [r.get("msg") for r in self.logs[-10:]]
            raise RuntimeError(f"{self.name}: no {count} {event!r} events in {timeout_s:.0f} s "
                               f"(exit code {self.proc.poll()}); last log lines: {tail}")

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def store_path(self) -> Path:
        return self.data_dir / "callgate.sqlite"

    def worker_pids(self) -> list[int]:
        """The serving processes: the server itself with one worker, else the workers started and not dead."""
        if self.workers == 1:
            return [self.pid]
        died = {r.get("worker_pid") for r in self.events("worker_died")}
        return [int(r["worker_pid"]) for r in self.events("worker_started")
                if r.get("worker_pid") not in died and _start_time(int(r["worker_pid"])) is not None]

    def remember_processes(self) -> None:
        """Note the live descendants, so that stop() can kill any that outlive the server."""
        for proc in descendants(self.pid):
            if proc not in self._known:
                self._known.append(proc)

    def problems(self) -> list[str]:
        """Log lines at warning level or above (a crash trace would be one)."""
        with self._lock:
            return [str(r.get("msg", r)) for r in self.logs
                    if str(r.get("level", "")).lower() in ("warning", "error", "critical")]

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; then SIGKILL any descendant left behind."""
        if self.proc.poll() is None:
            self.remember_processes()
        stop_process(self.proc, timeout_s)
        self.left_behind = kill_leftovers(self._known)
        if self.left_behind:
            say(f"{self.name}: {len(self.left_behind)} process(es) outlived the server by 3 s; killed: "
                f"{self.left_behind}")
        self._reader.join(5.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


# -- CPU accounting -------------------------------------------------------------------------------

def children_cpu() -> float:
    """CPU seconds of our reaped children (h2load runs are reaped by subprocess.run)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # guest time is already in user
    return total - idle, total


def busy_cores(seconds: float = 1.0) -> float:
    b0, t0 = machine_ticks()
    time.sleep(seconds)
    b1, t1 = machine_ticks()
    return (b1 - b0) / (t1 - t0) * (os.cpu_count() or 1) if t1 > t0 else 0.0


def foreign_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (start time, CPU seconds) of every user process outside our own process tree."""
    ours = {os.getpid(), *(p for p, _ in descendants(os.getpid()))}
    ticks = os.sysconf("SC_CLK_TCK")
    out: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        f = text[text.rindex(")") + 2:].split()
        if int(entry.name) == 2 or int(f[1]) == 2:  # kernel threads (softirq work for our own traffic)
            continue
        out[int(entry.name)] = (int(f[19]), (int(f[11]) + int(f[12])) / ticks)
    return out


class Interference:
    """Cores kept busy by processes outside the bench's tree (other users of the machine) over an interval."""

    def __init__(self) -> None:
        self.before = foreign_cpu()
        self.wall0 = time.monotonic()

    def cores(self) -> tuple[float, list[str]]:
        """(cores busy, the top few "pid command: cores")."""
        wall = max(time.monotonic() - self.wall0, 1e-9)
        used: dict[int, float] = {}
        for pid, (start, cpu) in foreign_cpu().items():
            prev = self.before.get(pid)
            used[pid] = cpu - prev[1] if prev is not None and prev[0] == start else cpu
        top = sorted(((c, p) for p, c in used.items() if c > 0.05 * wall), reverse=True)[:3]
        return sum(used.values()) / wall, [f"{p} {_cmdline(p)[:60]}: {c / wall:.2f}" for c, p in top]


class CpuMeter:
    """CPU of given PIDs (from /proc), of our reaped children, and of the whole machine, over an interval."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self.pid0 = {p: proc_cpu_seconds(p) for p in self.pids}
        self.child0 = children_cpu()
        self.ticks0 = machine_ticks()
        self.wall0 = time.monotonic()

    def read(self) -> dict[str, Any]:
        wall = time.monotonic() - self.wall0
        per_pid: dict[str, float] = {}
        for p in self.pids:
            a, b = self.pid0[p], proc_cpu_seconds(p)
            if a is not None and b is not None:
                per_pid[str(p)] = b - a
        b1, t1 = machine_ticks()
        cores = os.cpu_count() or 1
        machine = (b1 - self.ticks0[0]) / (t1 - self.ticks0[1]) * cores if t1 > self.ticks0[1] else 0.0
        server = sum(per_pid.values())
        client = children_cpu() - self.child0
        return {"wall_s": wall, "server_cpu_s": server, "server_cores": server / wall if wall else 0.0,
                "worker_cpu_s": per_pid, "client_cpu_s": client, "client_cores": client / wall if wall else 0.0,
                "machine_cores": machine,
                "other_cores": max(machine - (server + client) / wall, 0.0) if wall else 0.0}


# -- load helpers ---------------------------------------------------------------------------------

@dataclass
class Window:
    """When a load ran (CLOCK_MONOTONIC ns, shared by every process): run_load called, measured window."""

    called_ns: int
    first_ns: int
    last_ns: int
    timeline: Timeline | None = None

    @property
    def startup_ns(self) -> int:
        """From calling run_load to the first measured call: client start-up and warm-up."""
        return self.first_ns - self.called_ns


def open_loop(address: str, rate: float, duration_s: float, plan: Plan, server_pid: int | None,
              procs: int | None = None) -> tuple[dict[str, Any], Window]:
    """grpc_bench open loop of Inbound at `rate`: its figures and when it ran."""
    spec = LoadSpec(target=address, method=METHODS["inbound"], payloads=inbound_payloads(TENANT, ROWS),
                    items_per_call=1, mode="open", rate=rate, concurrency=0, procs=procs or plan.client_procs,
                    channels=1, warmup_s=plan.warmup_s, duration_s=duration_s,
                    max_requests=int(rate * duration_s * 1.2) + 10, timeout_s=5.0, max_inflight=10_000)
    called = time.monotonic_ns()
    result = run_load(spec, server_pid)
    rec = result.recorder
    return result.figures(), Window(called, rec.first_start_ns, rec.last_end_ns, rec.timeline)


def h2load_once(address: str, message: bytes, method: str, n: int, c: int, m: int, pids: Sequence[int],
                reply_size: int | None) -> dict[str, Any]:
    """One h2load run, with the server's, h2load's and the machine's CPU over it."""
    meter = CpuMeter(pids)
    f = h2load.run_h2load(address, message, method, n=n, c=c, m=m, t=1, timeout_s=max(120.0, n / 200),
                          reply_size=reply_size)
    cpu = meter.read()
    done = f["requests"]["done"]
    f["cpu"] = cpu
    f["server_cores_busy"] = cpu["server_cores"]
    f["server_cpu_us_per_call"] = cpu["server_cpu_s"] / done * 1e6 if done else None
    f["h2load_cores_busy"] = cpu["client_cores"]
    f["h2load_cpu_us_per_call"] = cpu["client_cpu_s"] / done * 1e6 if done else None
    f["errors"] = (f["requests"]["failed"] + f["requests"]["errored"] + f["requests"]["timeout"]
                   + max(f["requests"]["succeeded"] - (f.get("replies_with_message") or 0), 0)
                   if f.get("replies_with_message") is not None else
                   f["requests"]["failed"] + f["requests"]["errored"] + f["requests"]["timeout"])
    return f


def h2load_rounds(targets: Sequence[tuple[str, str, list[int]]], message: bytes, method: str, n: int, c: int,
                  m: int, rounds: int, label: str) -> dict[str, Any]:
    """Interleaved rounds (A B A B ...) of h2load against each (name, address, pids); per target: every round,
    best and median req/s."""
    reply_sizes: dict[str, int | None] = {}
    for name, address, _ in targets:
        try:
            reply_sizes[name] = len(h2load.probe_reply(address, method, message))
        except grpc.RpcError as exc:
            say(f"{label}: probe {name}: {exc.code().name}: {exc.details()}")
            reply_sizes[name] = None
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in targets}
    for r in range(rounds):
        for name, address, pids in targets:
            f = h2load_once(address, message, method, n, c, m, pids, reply_sizes[name])
            runs[name].append(f)
            say(f"{label}: round {r + 1}/{rounds} {name}: {f['req_per_s']:,.0f} req/s, p99 "
                f"{f['latency_ms']['p99']:.2f} ms, server {f['server_cores_busy']:.2f} cores, h2load "
                f"{f['h2load_cores_busy']:.2f} cores, {f['errors']} errors")
    out: dict[str, Any] = {"command": f"h2load -n {n} -c {c} -m {m} -t 1", "rounds": rounds, "targets": {}}
    for name, rs in runs.items():
        rates = [f["req_per_s"] for f in rs]
        median_run = sorted(rs, key=lambda f: f["req_per_s"])[len(rs) // 2]
        out["targets"][name] = {
            "best_rps": max(rates), "median_rps": statistics.median(rates), "rounds_rps": rates,
            "errors": sum(f["errors"] for f in rs),
            "median_run": {k: v for k, v in median_run.items() if k != "command"},
            "server_cores_busy": statistics.median(f["server_cores_busy"] for f in rs),
            "server_cpu_us_per_call": statistics.median(f["server_cpu_us_per_call"] or 0.0 for f in rs),
            "h2load_cores_busy": statistics.median(f["h2load_cores_busy"] for f in rs),
            "h2load_cpu_us_per_call": statistics.median(f["h2load_cpu_us_per_call"] or 0.0 for f in rs),
            "machine_cores_busy": statistics.median(f["cpu"]["machine_cores"] for f in rs),
            "other_cores_busy": statistics.median(f["cpu"]["other_cores"] for f in rs),
        }
    return out


def fresh_stats(address: str, tenant: str, timeout_s: float = 5.0) -> tuple[int, int, int]:
    """Admin.Stats over a connection of its own: (answering pid, loaded_version, version in the store)."""
    with grpc.insecure_channel(address, options=FRESH_OPTIONS) as channel:
        reply = admin_pb2_grpc.AdminStub(channel).Stats(admin_pb2.StatsRequest(tenant=tenant), timeout=timeout_s)
    t = reply.tenants[0]
    return reply.pid, t.loaded_version, t.version


def seen_workers(address: str, want: int, tries: int) -> set[int]:
    seen: set[int] = set()
    for _ in range(tries):
        seen.add(fresh_stats(address, TENANT)[0])
        if len(seen) >= want:
            break
    return seen


def push(address: str, document: bytes, timeout_s: float) -> admin_pb2.PushSettingsReply:
    with grpc.insecure_channel(address, options=BIG_OPTIONS) as channel:
        reply: admin_pb2.PushSettingsReply = admin_pb2_grpc.AdminStub(channel).PushSettingsUpload(
            upload_messages(document, comment="server_bench"), timeout=timeout_s)
        return reply


# -- the summary ----------------------------------------------------------------------------------

@dataclass
class Row:
    section: int
    what: str
    value: float | None
    fmt: str
    target: str = ""
    ok: bool | None = None  # None: no target (context)
    text: str | None = None  # shown instead of the value


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: dict[int, list[str]] = field(default_factory=dict)
    sections: dict[str, Any] = field(default_factory=dict)

    def add(self, section: int, what: str, value: float | None = None, fmt: str = "{:.3f}", target: str = "",
            check: Callable[[float], bool] | None = None, text: str | None = None) -> None:
        ok = None if check is None or value is None else bool(check(value))
        if check is not None and value is None:
            ok = False  # a figure with a target that could not be measured
        self.rows.append(Row(section, what, value, fmt, target, ok, text))

    def note(self, section: int, text: str) -> None:
        self.notes.setdefault(section, []).append(text)

    def table(self) -> str:
        lines = [["#", "figure", "value", "target", "result"]]
        for r in self.rows:
            value = r.text if r.text is not None else "-" if r.value is None else r.fmt.format(r.value)
            result = "" if r.ok is None else ("PASS" if r.ok else "FAIL")
            lines.append([str(r.section), r.what, value, r.target, result])
        widths = [max(len(row[i]) for row in lines) for i in range(5)]
        out = []
        for i, row in enumerate(lines):
            out.append("  ".join(c.rjust(w) if j in (2,) else c.ljust(w) for j, (c, w) in
                                 enumerate(zip(row, widths, strict=True))).rstrip())
            if i == 0:
                out.append("  ".join("-" * w for w in widths))
        return "\n".join(out)


def lat(f: dict[str, Any], key: str = "latency_ms") -> dict[str, float]:
    out: dict[str, float] = f.get(key, {})
    return out


# -- the sections ---------------------------------------------------------------------------------

def section_latency(w1: ServeProcess, bare: BareServer | None, plan: Plan, rep: Report) -> int:
    """1: returns the ns from calling run_load to its measured window (client start-up), for later timing."""
    for name, address in (("w1", w1.address), *((("bare", bare.address),) if bare is not None else ())):
        say(f"1 latency: probe {name}: {probe(address, 'inbound', inbound_payloads(TENANT, ROWS)[0])}")
    out: dict[str, Any] = {}
    offset = 0
    runs: list[tuple[str, str, float, int]] = [("low", w1.address, plan.low_rate, w1.pid),
                                               ("high", w1.address, plan.high_rate, w1.pid)]
    if bare is not None:  # context: the same client against the bare grpcio handler
        runs.append(("bare_low", bare.address, plan.low_rate, bare.pid))
    for key, address, rate, pid in runs:
        say(f"1 latency: {key}: open loop {rate:,.0f} calls/s for {plan.latency_s:g} s (+{plan.warmup_s:g} s "
            f"warm-up), {plan.client_procs} client process(es)")
        f, window = open_loop(address, rate, plan.latency_s, plan, pid)
        offset = window.startup_ns
        out[key] = f
        say(f"1 latency: {key}: {f['ok']:,} ok, errors {f['errors'] or 0}, p50 {lat(f)['p50']:.3f} ms, "
            f"p99 {lat(f)['p99']:.3f} ms, send lag p99 {lat(f, 'send_lag_ms')['p99']:.3f} ms")
    low, high = out["low"], out["high"]
    rep.add(1, f"Inbound p50 ms, open loop {plan.low_rate:,.0f}/s", lat(low)["p50"], target="<= 0.8",
            check=lambda v: v <= 0.8)
    rep.add(1, f"Inbound p99 ms, open loop {plan.low_rate:,.0f}/s", lat(low)["p99"], target="<= 2.5",
            check=lambda v: v <= 2.5)
    rep.add(1, f"Inbound p99 ms, open loop {plan.high_rate:,.0f}/s", lat(high)["p99"], target="<= 15",
            check=lambda v: v <= 15.0)
    rep.add(1, f"  service p99 ms at {plan.high_rate:,.0f}/s (answer - actual send)",
            lat(high, "service_ms")["p99"])
    rep.add(1, f"  server CPU µs/call at {plan.high_rate:,.0f}/s", high.get("server_cpu_us_per_call"), "{:.0f}")
    if "bare_low" in out:
        b = out["bare_low"]
        rep.add(1, f"  bare grpcio p50 / p99 ms at {plan.low_rate:,.0f}/s (same client)",
                text=f"{lat(b)['p50']:.3f} / {lat(b)['p99']:.3f}")
    for key, f in out.items():
        if f["errors"]:
            rep.note(1, f"{key} rate: errors {f['errors']}")
        if lat(f, "send_lag_ms").get("p99", 0.0) > 1.0:
            rep.note(1, f"{key} rate: the client was late for its own schedule (send lag p99 "
                        f"{lat(f, 'send_lag_ms')['p99']:.2f} ms); latency includes it")
    rep.sections["latency"] = out
    return offset


def section_saturation(w1: ServeProcess, bare: BareServer, plan: Plan, rep: Report) -> None:
    message = decisions_pb2.InboundRequest(tenant=TENANT, caller=BLACKLISTED, called=CALLED,
                                           at=AT).SerializeToString()
    say(f"2 saturation: h2load -n {plan.h2_requests} -c {plan.sat_clients} -m {plan.h2_streams}, "
        f"{plan.rounds} round(s), w1 vs bare-aio")
    out = h2load_rounds([("w1", w1.address, [w1.pid]), ("bare", bare.address, [bare.pid])], message,
                        METHODS["inbound"], plan.h2_requests, plan.sat_clients, plan.h2_streams, plan.rounds,
                        "2 saturation")
    w, b = out["targets"]["w1"], out["targets"]["bare"]
    out["ratio_best"] = w["best_rps"] / b["best_rps"] if b["best_rps"] else None
    out["ratio_median"] = w["median_rps"] / b["median_rps"] if b["median_rps"] else None
    rep.add(2, "w1 req/s (h2load, best)", w["best_rps"], "{:,.0f}")
    rep.add(2, "bare grpcio req/s (h2load, best)", b["best_rps"], "{:,.0f}")
    rep.add(2, "w1 / bare req/s, best of rounds", out["ratio_best"], "{:.3f}", ">= 0.90", lambda v: v >= 0.90)
    rep.add(2, "w1 / bare req/s, median of rounds", out["ratio_median"], "{:.3f}", ">= 0.90", lambda v: v >= 0.90)
    rep.add(2, "  server CPU µs/call w1 / bare",
            w["server_cpu_us_per_call"] / b["server_cpu_us_per_call"] if b["server_cpu_us_per_call"] else None,
            "{:.3f}")
    rep.note(2, f"{out['command']}, {plan.rounds} interleaved round(s); req/s per round: w1 "
                f"{', '.join(f'{x:,.0f}' for x in w['rounds_rps'])}; bare "
                f"{', '.join(f'{x:,.0f}' for x in b['rounds_rps'])}")
    rep.note(2, f"server CPU per call: w1 {w['server_cpu_us_per_call']:.0f} µs, bare "
                f"{b['server_cpu_us_per_call']:.0f} µs; server cores busy w1 {w['server_cores_busy']:.2f}, bare "
                f"{b['server_cores_busy']:.2f}; h2load "
                f"{w['h2load_cores_busy']:.2f} cores")
    if w["errors"] or b["errors"]:
        rep.note(2, f"errors (gRPC statuses counted by reply bytes): w1 {w['errors']}, bare {b['errors']}")
    rep.sections["saturation"] = out


def section_workers(w1: ServeProcess, w2: ServeProcess, plan: Plan, rep: Report) -> None:
    message = decisions_pb2.InboundRequest(tenant=TENANT, caller=BLACKLISTED, called=CALLED,
                                           at=AT).SerializeToString()
    say(f"3 workers: h2load -n {plan.h2_requests} -c {plan.scale_clients} -m {plan.h2_streams}, {plan.rounds} "
        f"round(s), w1 vs w2 (workers {w2.worker_pids()})")
    out = h2load_rounds([("w1", w1.address, [w1.pid]), ("w2", w2.address, w2.worker_pids())], message,
                        METHODS["inbound"], plan.h2_requests, plan.scale_clients, plan.h2_streams, plan.rounds,
                        "3 workers")
    one, two = out["targets"]["w1"], out["targets"]["w2"]
    out["ratio_best"] = two["best_rps"] / one["best_rps"] if one["best_rps"] else None
    out["ratio_median"] = two["median_rps"] / one["median_rps"] if one["median_rps"] else None
    cores = os.cpu_count() or 1
    # the most two workers could do if each call cost them what it costs one worker: the cores h2load
    # leaves, over the cores one worker keeps busy
    ceiling = (cores - two["h2load_cores_busy"]) / one["server_cores_busy"] if one["server_cores_busy"] else None
    out["machine_ceiling_ratio"] = ceiling
    split = two["median_run"]["cpu"]["worker_cpu_s"]
    total_split = sum(split.values()) or 1.0
    out["worker_cpu_share"] = {pid: s / total_split for pid, s in split.items()}
    rep.add(3, "w1 req/s (h2load -c 8, best)", one["best_rps"], "{:,.0f}")
    rep.add(3, "w2 req/s (h2load -c 8, best)", two["best_rps"], "{:,.0f}")
    rep.add(3, "w2 / w1 req/s, best of rounds", out["ratio_best"], "{:.3f}", ">= 1.7", lambda v: v >= 1.7)
    rep.add(3, "w2 / w1 req/s, median of rounds", out["ratio_median"], "{:.3f}", ">= 1.7", lambda v: v >= 1.7)
    rep.add(3, "  h2load client cores busy (w2 runs)", two["h2load_cores_busy"], "{:.2f}")
    rep.add(3, "  server cores busy w1 / w2", text=f"{one['server_cores_busy']:.2f} / {two['server_cores_busy']:.2f}")
    rep.add(3, "  ceiling of w2/w1 on this machine", ceiling, "{:.2f}")
    rep.note(3, f"{out['command']}, {plan.rounds} interleaved round(s); req/s per round: w1 "
                f"{', '.join(f'{x:,.0f}' for x in one['rounds_rps'])}; w2 "
                f"{', '.join(f'{x:,.0f}' for x in two['rounds_rps'])}")
    rep.note(3, f"{cores} cores. One worker keeps {one['server_cores_busy']:.2f} cores busy (grpc's own threads run "
                f"beside the event loop) at {one['server_cpu_us_per_call']:.0f} µs/call; h2load takes "
                f"{two['h2load_cores_busy']:.2f} cores ({two['h2load_cpu_us_per_call']:.0f} µs/call) and the kernel "
                f"and others {two['other_cores_busy']:.2f}; two workers got {two['server_cores_busy']:.2f} cores at "
                f"{two['server_cpu_us_per_call']:.0f} µs/call (machine {two['machine_cores_busy']:.2f} of {cores} "
                f"cores busy). CPU split between the two workers: "
                + ", ".join(f"{s:.0%}" for s in out["worker_cpu_share"].values()) + ".")
    ratio = out["ratio_best"]
    if ceiling is not None and ratio is not None and ratio < 1.7:
        if ceiling < 1.7:
            rep.note(3, f"the target is out of reach on this machine: one worker keeps {one['server_cores_busy']:.2f} "
                        f"cores busy, so two would need ~{2 * one['server_cores_busy']:.1f} cores, but with h2load on "
                        f"the same {cores} cores they can get at most {cores - two['h2load_cores_busy']:.2f}: a "
                        f"ceiling of about {ceiling:.2f} even if a call cost two workers no more CPU than one. "
                        "Measuring 1.7 needs the client on other cores and more cores than workers")
        extra = (two["server_cpu_us_per_call"] / one["server_cpu_us_per_call"] - 1
                 if one["server_cpu_us_per_call"] else 0.0)
        if ratio < 0.9 * ceiling:
            idle = cores - two["machine_cores_busy"]
            rep.note(3, f"measured {ratio:.2f}, below that ceiling too: a call cost two workers {extra:+.0%} CPU "
                        f"against one worker, and {idle:.2f} cores stayed idle during the w2 runs"
                        + (" (not purely CPU-bound: each worker's event loop and gRPC threads hand the GIL to each "
                           "other while every core is contended, and SO_REUSEPORT splits the connections unevenly; "
                           "see the CPU split)" if idle > 0.1 * cores else ""))
        elif ceiling >= 1.7:
            rep.note(3, "the machine had room for 1.7: the shortfall is the server's (or SO_REUSEPORT's connection "
                        "spread; see the CPU split)")
    if one["errors"] or two["errors"]:
        rep.note(3, f"errors: w1 {one['errors']}, w2 {two['errors']}")
    rep.sections["workers"] = out


def section_batch(w1: ServeProcess, bare: BareServer | None, plan: Plan, rep: Report, use_h2load: bool) -> None:
    payloads = batch_payloads(TENANT, ROWS, plan.batch_size, 16)
    say(f"4 batch: probe {probe(w1.address, 'batch', payloads[0])}")
    out: dict[str, Any] = {"batch_size": plan.batch_size}
    targets: list[tuple[str, str, int]] = [("w1", w1.address, w1.pid)]
    if bare is not None:
        targets.append(("bare", bare.address, bare.pid))
    for name, address, pid in targets:
        spec = LoadSpec(target=address, method=METHODS["batch"], payloads=payloads, items_per_call=plan.batch_size,
                        mode="closed", rate=0.0, concurrency=plan.batch_inflight, procs=1, channels=1,
                        warmup_s=plan.warmup_s, duration_s=plan.batch_s, max_requests=100_000, timeout_s=10.0,
                        max_inflight=10_000)
        f = run_load(spec, pid).figures()
        out[f"grpc_bench_{name}"] = f
        say(f"4 batch: grpc_bench closed loop {plan.batch_inflight} in flight, {name}: "
            f"{f['decisions_per_s']:,.0f} decisions/s, p99 {lat(f)['p99']:.2f} ms, errors {f['errors'] or 0}")
    if use_h2load:
        for name, address, pid in targets:
            r = h2load_rounds([(name, address, [pid])], payloads[0], METHODS["batch"], plan.batch_h2_requests, 2, 4,
                              1, "4 batch h2load")["targets"][name]
            r["decisions_per_s"] = r["best_rps"] * plan.batch_size
            out[f"h2load_{name}"] = r
    g = out["grpc_bench_w1"]
    rep.add(4, f"w1 decisions/s, grpc_bench, {plan.batch_inflight} batches of {plan.batch_size} in flight",
            g["decisions_per_s"], "{:,.0f}", ">= 800,000", lambda v: v >= 800_000)
    if "h2load_w1" in out:
        rep.add(4, "w1 decisions/s, h2load -c 2 -m 4", out["h2load_w1"]["decisions_per_s"], "{:,.0f}",
                ">= 800,000", lambda v: v >= 800_000)
    if "grpc_bench_bare" in out:
        rep.add(4, "  bare (rows of zeros) decisions/s, grpc_bench", out["grpc_bench_bare"]["decisions_per_s"],
                "{:,.0f}")
    if "h2load_bare" in out:
        rep.add(4, "  bare (rows of zeros) decisions/s, h2load", out["h2load_bare"]["decisions_per_s"], "{:,.0f}")
    if g.get("server_cpu_us_per_decision") is not None:
        rep.add(4, "  w1 server CPU ns/decision (grpc_bench)", g["server_cpu_us_per_decision"] * 1000, "{:.0f}")
        rep.note(4, f"grpc_bench: w1 server {g.get('server_cores_busy', 0):.2f} cores busy, client "
                    f"{g['client_cores_busy']:.2f} cores; p50 {lat(g)['p50']:.2f} ms per batch")
    for key in ("grpc_bench_w1", "grpc_bench_bare"):
        if key in out and out[key]["errors"]:
            rep.note(4, f"{key}: errors {out[key]['errors']}")
    rep.sections["batch"] = out


def section_stalls(w1: ServeProcess, plan: Plan, rep: Report, offset_ns: int) -> None:
    say(f"5 stalls: building tenant 'big' with a {plan.blacklist:,}-entry blacklist")
    t = time.perf_counter()
    doc, _ = big_tenant(plan.seed, plan.blacklist, plan.big_numbers, tenant="big")
    document = json.dumps(doc).encode()
    del doc
    out: dict[str, Any] = {"blacklist": plan.blacklist, "document_bytes": len(document),
                           "document_build_s": time.perf_counter() - t, "rate": plan.stall_rate}
    say(f"5 stalls: document of {len(document) / 1e6:.1f} MB built in {out['document_build_s']:.1f} s")
    say(f"5 stalls: open loop {plan.stall_rate:,.0f}/s for {plan.stall_s:g} s without a push")
    base, base_window = open_loop(w1.address, plan.stall_rate, plan.stall_s, plan, w1.pid)
    offset_ns = base_window.startup_ns
    out["without_push"] = base
    say(f"5 stalls: without push p99 {lat(base)['p99']:.3f} ms, max {lat(base)['max']:.2f} ms")

    pushed: dict[str, Any] = {}

    def pusher(due_ns: int) -> None:
        time.sleep(max(due_ns - time.monotonic_ns(), 0) / 1e9)
        pushed["start_ns"] = time.monotonic_ns()
        try:
            reply = push(w1.address, document, plan.push_timeout_s)
            pushed.update(version=reply.version, compile_s=reply.compile_seconds)
        except grpc.RpcError as exc:
            pushed["error"] = f"{exc.code().name}: {exc.details()}"
        pushed["end_ns"] = time.monotonic_ns()

    say(f"5 stalls: open loop {plan.stall_rate:,.0f}/s for {plan.stall_s:g} s with the push "
        f"{plan.push_at_s:g} s into the measured window")
    due = time.monotonic_ns() + offset_ns + int(plan.push_at_s * 1e9)
    thread = threading.Thread(target=pusher, args=(due,), name="push", daemon=True)
    thread.start()
    try:
        with_push, window = open_loop(w1.address, plan.stall_rate, plan.stall_s, plan, w1.pid)
    finally:
        thread.join(plan.push_timeout_s + 10)
    out["with_push"] = with_push
    if "start_ns" in pushed and "end_ns" in pushed:
        out["push_s"] = (pushed["end_ns"] - pushed["start_ns"]) / 1e9
        out["push_started_at_s"] = (pushed["start_ns"] - window.first_ns) / 1e9
        out["push_ended_at_s"] = (pushed["end_ns"] - window.first_ns) / 1e9
        out["window_s"] = (window.last_ns - window.first_ns) / 1e9
        out["push_inside_window"] = window.first_ns <= pushed["start_ns"] and pushed["end_ns"] <= window.last_ns
    out["push"] = {k: v for k, v in pushed.items() if not k.endswith("_ns")}
    phases = [e for e in w1.events("push") if e.get("tenant") == "big"]
    if phases:
        out["server_phases"] = {k: phases[-1].get(k) for k in ("seconds", "build_s", "store_s", "install_s")}
        say(f"5 stalls: the server's push phases (s): {out['server_phases']}")
    if window.timeline is not None and "start_ns" in pushed and "end_ns" in pushed:
        # where the slow calls were: 100 ms bins from 1 s before the push to 2 s after it
        rows = [r for r in window.timeline.rows(pushed["start_ns"]) if -1.0 <= r[0] <= out["push_s"] + 2.0]
        out["timeline_around_push"] = [{"at_s": round(t, 1), "calls": n, "mean_ms": round(m, 3),
                                        "max_ms": round(x, 3)} for t, n, m, x in rows]
        slow = [f"{t:+.1f}s {m:.1f}/{x:.1f}" for t, n, m, x in rows if x > 3 * lat(base)["p99"]]
        say("5 stalls: 100 ms bins (from the push's start) with a call slower than 3x the no-push p99, "
            f"mean/max ms: {', '.join(slow) if slow else 'none'}")
    if "error" not in pushed and "version" in pushed:
        try:
            with grpc.insecure_channel(w1.address) as channel:
                st = admin_pb2_grpc.AdminStub(channel).Stats(admin_pb2.StatsRequest(tenant="big"), timeout=10)
            out["big_loaded"] = {"loaded_version": st.tenants[0].loaded_version,
                                 "blacklist": st.tenants[0].blacklist}
        except grpc.RpcError as exc:
            out["big_loaded"] = {"error": exc.code().name}
    p_without, p_with = lat(base)["p99"], lat(with_push)["p99"]
    out["ratio_p99"] = p_with / p_without if p_without else None
    say(f"5 stalls: with push p99 {p_with:.3f} ms, max {lat(with_push)['max']:.2f} ms; push "
        + (f"took {out.get('push_s', 0):.2f} s (from {out.get('push_started_at_s', 0):.1f} s to "
           f"{out.get('push_ended_at_s', 0):.1f} s of a {out.get('window_s', 0):.1f} s window)"
           if "error" not in pushed else f"failed: {pushed['error']}"))
    rep.add(5, f"Inbound p99 ms at {plan.stall_rate:,.0f}/s, no push", p_without)
    rep.add(5, f"Inbound p99 ms at {plan.stall_rate:,.0f}/s, {plan.blacklist:,}-entry push", p_with)
    rep.add(5, "p99 with push / without", out["ratio_p99"], "{:.2f}", "<= 2", lambda v: v <= 2.0)
    rep.add(5, "  max latency ms without / with push", text=f"{lat(base)['max']:.2f} / {lat(with_push)['max']:.2f}")
    rep.add(5, "  push duration s (PushSettings call)", out.get("push_s"), "{:.2f}")
    rep.add(5, "  compile s (in the server's compile process)", pushed.get("compile_s"), "{:.2f}")
    if "error" in pushed:
        rep.note(5, f"the push failed: {pushed['error']}")
    elif not out.get("push_inside_window", False):
        rep.note(5, "the push did not fall wholly inside the measured window: lengthen the load or push earlier")
    if out.get("big_loaded"):
        rep.note(5, f"after the push, Stats(big): {out['big_loaded']}")
    for key in ("without_push", "with_push"):
        if out[key]["errors"]:
            rep.note(5, f"{key}: errors {out[key]['errors']}")
    rep.note(5, f"document {len(document) / 1e6:.1f} MB; p99.9 without / with push: "
                f"{lat(base)['p99.9']:.2f} / {lat(with_push)['p99.9']:.2f} ms")
    calls = int(plan.stall_rate * plan.stall_s)
    if out["ratio_p99"] is not None and out["ratio_p99"] > 2:
        rep.note(5, f"reading: p99 of {calls:,} calls is the {calls // 100:,}th-slowest; at {plan.stall_rate:,.0f} "
                    "calls/s "
                    f"a stall of T ms in the worker delays about T x {plan.stall_rate / 1000:g} calls, by up to T ms "
                    f"each, so a with-push p99 of {p_with:.0f} ms means the worker stopped answering for at least "
                    "about that long (once or more) during the push")
    rep.sections["stalls"] = out


def section_propagation(w2: ServeProcess, plan: Plan, rep: Report) -> None:
    address = w2.address
    workers = set(w2.worker_pids())
    seen = seen_workers(address, len(workers), 60)
    say(f"6 propagation: workers {sorted(workers)}; answering Stats over fresh connections: {sorted(seen)}")
    doc = json.loads(EXAMPLE.read_text())
    results: list[dict[str, Any]] = []
    for i in range(plan.pushes):
        time.sleep(0.037 * i)  # vary the phase against the workers' 0.2 s poll
        d = copy.deepcopy(doc)
        d["blacklist"].append(f"+1415555{3000 + i:04d}")
        t_call = time.monotonic()
        version = push(address, json.dumps(d).encode(), 60).version
        t_reply = time.monotonic()
        first_new: dict[int, float] = {}
        last_old: dict[int, float] = {}
        probes = 0
        deadline = t_reply + 10.0
        while time.monotonic() < deadline and probes < 5000:
            pid, loaded, _ = fresh_stats(address, TENANT)
            now = time.monotonic()
            probes += 1
            if loaded >= version:
                first_new.setdefault(pid, now - t_reply)
            else:
                last_old[pid] = now - t_reply
            if workers <= set(first_new):
                break
        done = workers <= set(first_new)
        r: dict[str, Any] = {"version": version, "push_s": t_reply - t_call, "probes": probes, "all_workers": done,
                             "upper_bound_s": max(first_new.values()) if done else None,
                             "lower_bound_s": max(last_old.values(), default=0.0),
                             "first_new_s": {str(k): v for k, v in first_new.items()}}
        results.append(r)
        say(f"6 propagation: push {i + 1}/{plan.pushes} (version {version}, {r['push_s'] * 1000:.0f} ms): "
            + (f"in force in every worker within {r['upper_bound_s'] * 1000:.0f} ms (old version last seen at "
               f"{r['lower_bound_s'] * 1000:.0f} ms), {probes} probes" if done else "NOT in every worker in 10 s"))
    uppers = [r["upper_bound_s"] for r in results if r["upper_bound_s"] is not None]
    worst = max(uppers) if len(uppers) == len(results) and uppers else None
    out: dict[str, Any] = {"workers": sorted(workers), "pushes": results, "worst_s": worst,
                           "median_s": statistics.median(uppers) if uppers else None}
    rep.add(6, f"propagation s, worst of {plan.pushes} pushes (w2)", worst, "{:.3f}", "<= 1", lambda v: v <= 1.0)
    rep.add(6, "  propagation s, median", out["median_s"], "{:.3f}")
    rep.add(6, "  PushSettings call s, median", statistics.median(r["push_s"] for r in results), "{:.3f}")
    rep.note(6, "each figure is when the lagging worker was first seen with the new version over a fresh "
                "connection (an upper bound); it was last seen with the old one at "
                + ", ".join(f"{r['lower_bound_s'] * 1000:.0f}" for r in results) + " ms (lower bounds); "
                "the workers poll the store every 0.2 s")
    rep.sections["propagation"] = out


def section_kill(w2: ServeProcess, plan: Plan, rep: Report) -> None:
    address = w2.address
    before = w2.worker_pids()
    port = w2.port or 0
    w2.remember_processes()
    n_started = len(w2.events("worker_started"))
    payloads = inbound_payloads(TENANT, ROWS)
    lock = threading.Lock()
    records: list[tuple[int, int, str]] = []  # (intended ns, end ns, status)
    inflight = [0]
    channels: list[grpc.Channel] = []
    try:
        # SO_REUSEPORT spreads connections at random: open them again (a few times at most) until every
        # worker holds some, so that the kill hits calls in flight while the other worker keeps answering
        for attempt in range(6):
            for ch in channels:
                ch.close()
            channels = [grpc.insecure_channel(address, options=FRESH_OPTIONS) for _ in range(plan.kill_channels)]
            for ch in channels:
                grpc.channel_ready_future(ch).result(timeout=10)
            calls = [ch.unary_unary(METHODS["inbound"]) for ch in channels]
            for c in calls:  # one call each: every connection is up before the clock starts
                c(payloads[0], timeout=5)
            spread = connections_by_pid(before, port)
            if min(spread.values(), default=0) > 0 or attempt == 5:
                break
        # the victim: the worker holding most of the load's connections
        victim = max(before, key=lambda p: spread.get(p, 0))
        victim_procs = descendants(victim)  # e.g. its compile process: must not outlive it
        say(f"7 kill: connections per worker {spread}; victim {victim}")
        say(f"7 kill: open loop {plan.kill_rate:,.0f}/s for {plan.kill_s:g} s over {len(channels)} connections; "
            f"kill -9 of worker {victim} (of {before}) at {plan.kill_at_s:g} s")

        def done(intended: int, fut: grpc.Future) -> None:
            end = time.monotonic_ns()
            code = fut.code()
            with lock:
                inflight[0] -= 1
                records.append((intended, end, code.name if code is not None else "UNKNOWN"))

        total = int(plan.kill_rate * plan.kill_s)
        t0 = time.monotonic_ns() + 50_000_000
        kill_ns = t0 + int(plan.kill_at_s * 1e9)
        killed_at: int | None = None
        conns: dict[int, int] = {}
        inflight_at_kill = 0
        for i in range(total):
            due = t0 + int(i * 1e9 / plan.kill_rate)
            if killed_at is None and due >= kill_ns:
                conns = connections_by_pid(before, port)
                os.kill(victim, signal.SIGKILL)  # a worker of the server we started, by its PID
                killed_at = time.monotonic_ns()
                with lock:
                    inflight_at_kill = inflight[0]
            delay = (due - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            with lock:
                if inflight[0] >= 2000:
                    records.append((due, due, "CLIENT_DROPPED"))
                    continue
                inflight[0] += 1
            fut = calls[i % len(calls)].future(payloads[i % len(payloads)], timeout=5.0)
            fut.add_done_callback(lambda f, due=due: done(due, f))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with lock:
                if inflight[0] == 0:
                    break
            time.sleep(0.02)
    finally:
        for ch in channels:
            ch.close()
    assert killed_at is not None
    with lock:
        recs = list(records)
    after = [r for r in recs if r[1] >= killed_at]
    before_kill = [r for r in recs if r[1] < killed_at]

    def by_status(rs: list[tuple[int, int, str]]) -> dict[str, int]:
        out: dict[str, int] = {}
        for _, _, s in rs:
            out[s] = out.get(s, 0) + 1
        return dict(sorted(out.items()))

    errors_after = [r for r in after if r[2] != "OK"]
    out: dict[str, Any] = {
        "victim": victim, "workers_before": before, "calls": len(recs),
        "ok_before_kill": sum(1 for r in before_kill if r[2] == "OK"),
        "ok_after_kill": sum(1 for r in after if r[2] == "OK"),
        "status_before_kill": by_status(before_kill), "status_after_kill": by_status(after),
        "last_error_after_kill_s": max((r[1] - killed_at) / 1e9 for r in errors_after) if errors_after else None,
        "load_after_kill_s": plan.kill_s - plan.kill_at_s,
        "connections_at_kill": {str(k): v for k, v in conns.items()}, "client_inflight_at_kill": inflight_at_kill,
    }
    say(f"7 kill: {out['ok_after_kill']:,} calls answered after the kill; status after: {out['status_after_kill']}")
    # the supervisor's replacement: started, listening, answering
    kill_seen = killed_at / 1e9
    started = w2.wait_for(lambda: w2._count("worker_started") > n_started, 30.0)
    new_pid: int | None = None
    if started:
        new = w2.events("worker_started")[n_started]
        new_pid = int(new["worker_pid"])
        out["replacement_pid"] = new_pid
        out["replacement_started_after_s"] = new["_seen"] - kill_seen

        def listening() -> bool:
            return any(r.get("event") == "listening" and r.get("pid") == new_pid for r in w2.logs)

        if w2.wait_for(listening, 30.0):
            seen = next(r["_seen"] for r in w2.events("listening") if r.get("pid") == new_pid)
            out["replacement_listening_after_s"] = seen - kill_seen
        answered = False
        for _ in range(80):  # fresh connections until one lands on the new worker
            with contextlib.suppress(grpc.RpcError):
                if fresh_stats(address, TENANT)[0] == new_pid:
                    answered = True
                    break
        out["replacement_answered"] = answered
    out["replacement_started"] = started
    out["worker_died_logged"] = any(r.get("worker_pid") == victim for r in w2.events("worker_died"))
    time.sleep(0.5)
    left = kill_leftovers(victim_procs, grace_s=1.0)  # the kill was seconds ago already
    out["left_behind_by_victim"] = left
    w2.remember_processes()
    with contextlib.closing(sqlite3.connect(w2.store_path, timeout=10)) as db:
        out["integrity_check"] = str(db.execute("PRAGMA integrity_check").fetchone()[0])
        row = db.execute("SELECT version FROM current WHERE tenant=?", (TENANT,)).fetchone()
        out["acme_version_in_store"] = None if row is None else int(row[0])
    say(f"7 kill: replacement {'started' if started else 'NOT started'}"
        + (f" (pid {new_pid}, listening after {out.get('replacement_listening_after_s', float('nan')):.2f} s, "
           f"answered: {out.get('replacement_answered')})" if started else "")
        + f"; integrity_check: {out['integrity_check']}")
    rep.add(7, f"calls answered after the kill ({out['load_after_kill_s']:g} s of {plan.kill_rate:,.0f}/s)",
            out["ok_after_kill"], "{:,.0f}", "> 0", lambda v: v > 0)
    errs = {k: v for k, v in out["status_after_kill"].items() if k != "OK"}
    rep.add(7, "errors after the kill: " + (", ".join(f"{k} {v}" for k, v in errs.items()) or "none"),
            sum(errs.values()), "{:,.0f}", "UNAVAILABLE only",
            lambda _: all(k == "UNAVAILABLE" for k in errs))
    rep.add(7, "  errors before the kill", sum(v for k, v in out["status_before_kill"].items() if k != "OK"),
            "{:,.0f}", "0", lambda v: v == 0)
    rep.add(7, "replacement worker started (1 = yes)", 1.0 if started else 0.0, "{:.0f}", "1", lambda v: v == 1)
    rep.add(7, "  replacement listening after s", out.get("replacement_listening_after_s"), "{:.2f}")
    rep.add(7, "replacement answered (1 = yes)", 1.0 if out.get("replacement_answered") else 0.0, "{:.0f}", "1",
            lambda v: v == 1)
    rep.add(7, "store PRAGMA integrity_check ok (1 = yes)", 1.0 if out["integrity_check"] == "ok" else 0.0,
            "{:.0f}", "1", lambda v: v == 1)
    rep.note(7, f"at the kill, the victim held {conns.get(victim, 0)} of the bench's {len(channels)} connections "
                f"(per worker: {conns}); {inflight_at_kill} call(s) were in flight in the client")
    if out["last_error_after_kill_s"] is not None:
        rep.note(7, f"errors after the kill ended {out['last_error_after_kill_s']:.3f} s after it")
    rep.add(7, "  processes of the killed worker still running after it (not an issue target)", len(left),
            "{:.0f}")
    if left:
        rep.note(7, f"{len(left)} process(es) of the killed worker outlived it (reparented to init, still running "
                    f"seconds later) and were killed by the bench: {left}. Its compile process "
                    "(server.service.Compiler, a spawn ProcessPoolExecutor) does not exit when its worker dies")
    rep.sections["kill"] = out


# -- main -----------------------------------------------------------------------------------------

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


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")  # unwinds: every server is stopped in a finally


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if threading.current_thread() is not threading.main_thread():
        return _main(args)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return _main(args)
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    have_h2load = h2load.h2load_path() is not None
    if not have_h2load:
        say(f"{h2load.INSTALL_HINT}: sections 2 and 3 are skipped, section 4 runs without it")

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
        server = ServeProcess(name, Path(tmp) / name, workers)
        servers.append(server)
        return server

    with tempfile.TemporaryDirectory(prefix="server-bench-") as tmp, contextlib.ExitStack() as stack:
        w1 = stack.enter_context(started("w1 (callgate serve, 1 worker)", lambda: serve("w1", 1))) if need_w1 else None
        with contextlib.ExitStack() as bare_stack:
            bare = (bare_stack.enter_context(started("bare grpcio server (aio)", lambda: BareServer("aio")))
                    if need_bare else None)
            if 1 in wanted and w1 is not None:
                offset_ns = run(1, lambda: section_latency(w1, bare, plan, rep)) or offset_ns
            if 2 in wanted and w1 is not None and bare is not None:
                if have_h2load:
                    run(2, lambda: section_saturation(w1, bare, plan, rep))
                else:
                    rep.note(2, "skipped: " + h2load.INSTALL_HINT)
            if 4 in wanted and w1 is not None:
                run(4, lambda: section_batch(w1, bare, plan, rep, have_h2load))
        if need_w2:
            with started("w2 (callgate serve --workers 2)", lambda: serve("w2", 2)) as w2:
                if 3 in wanted and w1 is not None:
                    if have_h2load:
                        run(3, lambda: section_workers(w1, w2, plan, rep))
                    else:
                        rep.note(3, "skipped: " + h2load.INSTALL_HINT)
                if 6 in wanted:
                    run(6, lambda: section_propagation(w2, plan, rep))
                if 7 in wanted:
                    run(7, lambda: section_kill(w2, plan, rep))
        if 5 in wanted and w1 is not None:
            run(5, lambda: section_stalls(w1, plan, rep, offset_ns))
    for server in servers:
        if server.left_behind:
            rep.note(0, f"{server.name}: process(es) still alive 3 s after the server exited, killed by the bench: "
                        f"{server.left_behind}")
    elapsed = time.monotonic() - t_start

    rep.rows.sort(key=lambda r: r.section)  # stable: each section's rows keep their order
    print()
    print(f"server_bench summary ({'quick' if plan.quick else 'full'} run, {elapsed:.0f} s, {cores} cores; "
          "targets from the server issue)")
    print(rep.table())
    for section in sorted(rep.notes):
        for text in rep.notes[section]:
            print(f"note {section}: {text}" if section else f"note: {text}")
    failed = [r for r in rep.rows if r.ok is False]
    print(f"{sum(1 for r in rep.rows if r.ok)} PASS, {len(failed)} FAIL"
          + (f"; sections that did not complete: {crashed}" if crashed else ""))
    if args.json:
        data = {"plan": asdict(plan), "machine": machine, "elapsed_s": elapsed, "sections": rep.sections,
                "summary": [asdict(r) for r in rep.rows],
                "notes": {str(k): v for k, v in rep.notes.items()}, "crashed": crashed,
                "interference": interference}
        args.json.write_text(json.dumps(data, indent=2, default=str) + "\n")
        print(f"figures written to {args.json}")
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
