"""The processes the load tools run: started on 127.0.0.1 and stopped by their PID (SIGTERM, then SIGKILL), what
they leave behind (killed too, told from a later process with the same PID by its start time), what they cost
(`CpuMeter`, `Interference`: on the 2-core machine the client shares the CPU with the server)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "acme.json"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def python_env(**extra: str) -> dict[str, str]:
    """Our environment, with this repository first on PYTHONPATH (for `python -m` of its packages)."""
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def stop_process(proc: subprocess.Popen, timeout_s: float) -> int | None:
    """SIGTERM a process we started, SIGKILL it after `timeout_s`; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5.0)
    return proc.returncode


def _terminate(signum: int, _frame: Any) -> None:
    raise SystemExit(f"stopped by signal {signum}")


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside (in the main thread), SIGTERM raises SystemExit: every `finally` stops what it started."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# -- what /proc says about a process --------------------------------------------------------------

def start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in ticks): tells a process from a later one with its PID."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text[text.rindex(")") + 2:].split()[19])


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


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
                start = start_time(child)
                if start is not None and all(child != p for p, _ in out):
                    out.append((child, start))
                    todo.append(child)
    return out


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant of it (a server's supervisor, workers and compile processes)."""
    return [pid, *(p for p, _ in descendants(pid))]


def kill_leftovers(procs: Sequence[tuple[int, int]], grace_s: float = 3.0) -> list[str]:
    """Give `procs` `grace_s` to exit on their own, then SIGKILL those still alive (the same process: same PID
    and start time); returns "PID command line" of each one killed."""
    deadline = time.monotonic() + grace_s
    while any(start_time(p) == s for p, s in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = []
    for pid, start in procs:
        if start_time(pid) == start:
            line = cmdline(pid)
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


# -- what processes cost: CPU of a process (/proc), of our reaped children, of the machine ----------

def proc_cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` (all its threads), from /proc; None if unreadable."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime (fields 14, 15 of stat)


def proc_cpu_precise(pid: int) -> float | None:
    """CPU seconds of process `pid` to the nanosecond: its CPU-time clock (clock_gettime of the process's clock
    id, the scheduler's run time of all its threads, those that ended too), where utime + stime come in clock
    ticks (10 ms: over a 2,000-call run of a dozen processes, ~13 us a call of noise); None for a process that is
    gone (or another user's)."""
    try:
        return time.clock_gettime((~pid << 3) | 2)   # (Linux: CPUCLOCK_SCHED of the whole process)
    except OSError:
        return None


def children_cpu() -> float:
    """CPU seconds of our reaped children (h2load runs are reaped by subprocess.run)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def own_cpu() -> float:
    """CPU seconds of this process and of its reaped children."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime + children_cpu()


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
        return sum(used.values()) / wall, [f"{p} {cmdline(p)[:60]}: {c / wall:.2f}" for c, p in top]


class CpuMeter:
    """CPU of given PIDs (from /proc), of our reaped children, and of the whole machine, over an interval.
    `precise`: the PIDs' CPU to the nanosecond (`proc_cpu_precise`)."""

    def __init__(self, pids: Sequence[int], precise: bool = False) -> None:
        self.pids = list(pids)
        self.cpu_of = proc_cpu_precise if precise else proc_cpu_seconds
        self.pid0 = {p: self.cpu_of(p) for p in self.pids}
        self.child0 = children_cpu()
        self.ticks0 = machine_ticks()
        self.wall0 = time.monotonic()

    def read(self) -> dict[str, Any]:
        wall = time.monotonic() - self.wall0
        per_pid: dict[str, float] = {}
        for p in self.pids:
            a, b = self.pid0[p], self.cpu_of(p)
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


# -- the servers ----------------------------------------------------------------------------------

class ServeProcess:
    """`python -m callgate serve` on 127.0.0.1, its JSON log lines collected; stopped by its PID.

    The one server process of the load tools and the tests.  `extra` are more
    serve options (given last: they win); `seed` the document of a new store
    (None: none) and `seed_credit` its opening credit; `listen` an explicit
    address (N workers share an explicit port: one is chosen when not given);
    `poll_s` how often workers poll the store; `wait` False returns at once
    (for a server expected to refuse to start).  `program` is the module run
    with `python -m` and its first arguments.
    """

    def __init__(self, data_dir: Path, *extra: str, name: str = "callgate", workers: int = 1,
                 seed: Path | None = EXAMPLE, seed_credit: str = "", listen: str = "", poll_s: float | None = None,
                 metrics: str = "", wait: bool = True, start_timeout_s: float = 60.0,
                 program: Sequence[str] = ("callgate", "serve"), env: dict[str, str] | None = None) -> None:
        self.name, self.workers, self.data_dir = name, workers, data_dir
        listen = listen or f"127.0.0.1:{free_port() if workers > 1 else 0}"
        cmd = [sys.executable, "-m", *program, "--listen", listen, "--data-dir", str(data_dir),
               "--metrics", metrics, "--workers", str(workers), "--log-format", "json"]
        if poll_s is not None:
            cmd += ["--poll", f"{poll_s:g}"]
        if seed is not None:
            cmd += ["--seed", str(seed)] + (["--seed-credit", seed_credit] if seed_credit else [])
        self.command = [*cmd, *extra]
        self.logs: list[dict[str, Any]] = []
        self._lock = threading.RLock()  # wait_for's predicate may read events() with the lock held
        self._changed = threading.Condition(self._lock)
        self.port: int | None = int(listen.rsplit(":", 1)[1]) or None
        self.proc = subprocess.Popen(self.command, cwd=ROOT, env=python_env(PYTHONUNBUFFERED="1", **(env or {})),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self._reader = threading.Thread(target=self._read, name=f"{name}-logs", daemon=True)
        self._reader.start()
        self._known: list[tuple[int, int]] = []
        self.left_behind: list[str] = []
        if wait:
            self.wait_listening(workers, start_timeout_s)

    def wait_listening(self, workers: int = 1, timeout_s: float = 60.0) -> None:
        """Until `workers` workers listen (the server is stopped, and RuntimeError raised, if they do not)."""
        try:
            self.wait_events("listening", workers, timeout_s)
        except BaseException:
            self.stop()
            raise
        self.remember_processes()

    def channel(self) -> Any:
        """A new channel to the server, for messages as big as a whole settings document."""
        from server.client import BIG_MESSAGES, open_channel

        return open_channel(self.address, options=BIG_MESSAGES)

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

    def count(self, event: str) -> int:
        with self._lock:
            return sum(1 for r in self.logs if r.get("event") == event)

    def wait_for(self, predicate: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    return predicate()
                self._changed.wait(min(left, 0.2))
        return True

    def wait_events(self, event: str, count: int, timeout_s: float) -> None:
        if not self.wait_for(lambda: self.count(event) >= count, timeout_s):
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
                if r.get("worker_pid") not in died and start_time(int(r["worker_pid"])) is not None]

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
            print(f"{self.name}: {len(self.left_behind)} process(es) outlived the server by 3 s; killed: "
                  f"{self.left_behind}", flush=True)
        self._reader.join(5.0)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


class BareServer:
    """`python -m loadtest.bare_server` as a subprocess of ours; stop() ends it by its PID.  `listen` an explicit
    address (127.0.0.1:0 by default: a free port), `reuse_port` SO_REUSEPORT on (several share `listen`)."""

    def __init__(self, mode: str = "aio", threads: int = 16, extra: list[str] | None = None,
                 start_timeout_s: float = 20.0, listen: str = "127.0.0.1:0", reuse_port: bool = False) -> None:
        self.mode = mode
        cmd = [sys.executable, "-m", "loadtest.bare_server", "--mode", mode, "--listen", listen,
               "--threads", str(threads), *(["--reuse-port"] if reuse_port else []), *(extra or [])]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=python_env(), stdout=subprocess.PIPE,
                                     stdin=subprocess.DEVNULL)
        try:
            self.port = self._wait_listening(start_timeout_s)
        except BaseException:
            self.stop()
            raise
        self.address = f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_listening(self, timeout_s: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout_s
        line = b""
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while not line.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise RuntimeError(f"bare server ({self.mode}) did not print LISTENING "
                                       f"(exit code {self.proc.poll()}, got {line!r})")
                if sel.select(min(left, 0.2)):
                    chunk = os.read(self.proc.stdout.fileno(), 1)  # byte by byte: stop at the newline
                    if not chunk:
                        continue
                    line += chunk
        words = line.decode().split()
        if len(words) != 2 or words[0] != "LISTENING":
            raise RuntimeError(f"bare server printed {line!r}, expected 'LISTENING <port>'")
        return int(words[1])

    def stop(self, timeout_s: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL after `timeout_s`; returns the exit code."""
        code = stop_process(self.proc, timeout_s)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return code

    def __enter__(self) -> BareServer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


@dataclass
class Target:
    """A server to measure: the one given with --target, or a bare server started here (`bare`)."""

    name: str
    address: str
    pid: int | None = None
    bare: BareServer | None = None
    runs: list[Any] = field(default_factory=list)


def add_target_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("targets")
    g.add_argument("--target", help="HOST:PORT of a running callgate server (127.0.0.1 only)")
    g.add_argument("--target-name", default="target", help="its column name in the table (default: target)")
    g.add_argument("--server-pid", type=int, help="PID of the --target server, to measure its CPU per call")
    g.add_argument("--compare-bare", action="store_true",
                   help="also start loadtest.bare_server (aio) and run the same load against it; ratios target/bare")
    g.add_argument("--bare", action="append", choices=("aio", "sync"), default=[],
                   help="start a bare server of this mode and measure it too (repeatable)")
    g.add_argument("--bare-threads", type=int, default=16, help="handler threads of a sync bare server (16)")


@contextlib.contextmanager
def started_targets(args: argparse.Namespace) -> Iterator[list[Target]]:
    """The --target and the bare servers the arguments ask for, started here and stopped on exit."""
    modes = list(dict.fromkeys(args.bare + (["aio"] if args.compare_bare and not args.bare else [])))
    if not args.target and not modes:
        raise SystemExit("give --target HOST:PORT and/or --bare aio|sync (or --compare-bare)")
    out = [Target(args.target_name, args.target, args.server_pid)] if args.target else []
    try:
        for mode in modes:
            server = BareServer(mode, args.bare_threads)
            out.append(Target(f"bare-{mode}", server.address, server.pid, server))
        yield out
    finally:
        for t in out:
            if t.bare is not None:
                t.bare.stop()


class ReplicaProcess:
    """`callgate replica --server SERVER --dir DIRECTORY` as a proxy host runs it (its JSON log lines to
    DIRECTORY.log; `extra`: more options); stopped by its PID.  The one way the load tools and the tests run it."""

    def __init__(self, server: str, directory: Path, *extra: str, name: str = "host-a") -> None:
        self.directory, self.log = directory, directory.with_suffix(".log")
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "callgate", "replica", "--server", server, "--dir", str(directory),
                 "--name", name, *extra], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=err, env=python_env())

    def events(self, kind: str) -> list[dict[str, Any]]:
        """Its log lines of this `event`."""
        lines = self.log.read_text(encoding="utf-8", errors="replace").splitlines() if self.log.exists() else []
        return [e for e in (json.loads(x) for x in lines if x.startswith("{")) if e.get("event") == kind]

    def wait_for(self, tenant: str, version: int = 0, timeout_s: float = 60.0) -> int:
        """Wait until the directory holds `tenant` (at `version` or later): the version held."""
        from engine.replica import held

        deadline = time.monotonic() + timeout_s
        while True:
            have = held(self.directory).get(tenant)
            if have is not None and have[0] >= version:
                return have[0]
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                raise RuntimeError(f"the replica does not hold {tenant!r} (version {version}):\n{tail}")
            time.sleep(0.05)

    def stop(self) -> int | None:
        return stop_process(self.proc, 20.0)
