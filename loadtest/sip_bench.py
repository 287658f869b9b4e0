"""SIP load through three Kamailios side by side: relaying only, deciding over gRPC, deciding from the local replica.

    python -m loadtest.sip_bench                 # every section, ~2.5 minutes on the 2-core machine
    python -m loadtest.sip_bench --no-memory     # without section 4
    python -m loadtest.sip_bench --no-memory --ramp '' --rounds 5   # section 1's ratios, medians of 5 rounds
    python -m loadtest.sip_bench --no-memory --ramp '' --rounds 5 --together bypass,events,local   # at once
    python -m loadtest.sip_bench --rate 200 --seconds 10 --ramp 100,200,300,400 --step-seconds 5 --json out.json

Starts, on free loopback ports: callgate (`callgate serve`, the example tenant
without rentals and with the test numbers), `callgate replica` following it
into a temporary directory (the bench waits until it holds the tenant), a
sipp UAS (the PBX: answers every INVITE, keeps the proxy on the route), and
three Kamailio instances with integrations/kamailio/kamailio.cfg and
`--children` UDP workers:

  bypass  relays every call without asking (CALLGATE_BYPASS=1): the baseline;
  rpc     asks callgate's Inbound over gRPC for every INVITE and spools the
          call's RINGING/ANSWERED/ENDED events (the failover table names the
          number's tenant);
  local   decides every INVITE in its SIP worker from the replica's files
          (CALLGATE_REPLICA_DIR: engine.replica.LocalDecisions), events as rpc;
  events  (section 1 only) relays every call without asking, as bypass, but
          records its events as rpc and local do (CALLGATE_BYPASS=events, the
          number's tenant from the failover table): the relay plus the events,
          no decision, so that local / events is what the decision costs and
          events / bypass what the events cost.

A sipp UAC places whole calls (INVITE, 180, 200, ACK, a 100 ms hold, BYE,
200) from a clean caller to an always-open number.

1. The bounded run: `--rate` calls/s for `--seconds` through each proxy in
   turn (bypass, events, rpc, local); every call must succeed (zero failed calls).
   Per proxy: calls completed, failed, retransmitted; the response time
   (sipp's -trace_rtt, from the INVITE to its 180: sipp's clock moves in
   4 ms steps here, so p50 and p99 read 0 or 4 and the mean is the figure
   to compare); and Kamailio's CPU per call: the run time of every thread
   of every process of that instance (the main process and all it forked;
   each process's CPU-time clock, to the nanosecond, where utime + stime
   come in 10 ms ticks: ~13 µs a call of noise over a 2,000-call run) from the
   run's start until its spool has sent every event (at most 10 s after),
   divided by the calls completed, split into the SIP workers, the event
   sender (the rtimer process) and the rest (timers, dialogs).  Before
   section 1, each of its proxies (section 2 runs on them too) takes
   `--warmup` calls, not measured, and its idle figure is taken after
   them: a proxy's first calls pay what it does once (the event sender's
   gRPC import and channel, ~80 ms: 40 µs a call of a 2,000-call round),
   no per-call cost of a proxy that runs.  (Sections 3 and 4 start
   instances of their own, not warmed up.)
   `--rounds N` runs it N times, the proxies' order turned by one each
   round (each proxy in every place); each ratio is then the median of the
   rounds' ratios (every round's listed), each proxy's figures those of its
   median round, and every call of every round must succeed.
   `--together bypass,events,local` runs those proxies at the same time in
   each round, first (their meters and sipps started together, the order
   they are started in turned each round; each with a sipp UAC of its own
   at `--rate`, the one UAS answering them all: the machine carries their
   number times `--rate`), then the others one after the other, turned as
   above.  One after the other, a ratio compares seconds of this shared
   machine that differ (the relay alone moved by 40% between rounds of one
   run); side by side, its two figures come from the same seconds (two
   local proxies side by side: 1.009, rounds 0.98-1.03).  Every figure then
   holds more of the others' cache and scheduling than alone: compare
   ratios, not the µs, with a run without it.  A ratio of one proxy side by
   side and one alone says so and is checked against no target; rounds
   where a side-by-side proxy's calls were retransmitted (a machine past
   what it carries) are counted in a note.
   `--variant NAME=KIND[:VAR=VALUE,...]` (repeatable) adds to section 1 a
   proxy of that kind (bypass, events, rpc or local) with those settings in
   its environment (the script's CALLGATE_* settings, or any other), e.g.
   `--variant tmpfs=events:CALLGATE_SPOOL=/dev/shm/cg/events.sqlite
   --together events,tmpfs`: each variant's ratio to its kind is reported,
   what a setting costs measured against the same proxy without it; NAME
   is then a proxy `--together` may list.  `--variant again=local` (no
   setting) measures how far two instances of one proxy differ.  A value
   holds no comma; the settings that make the kind (CALLGATE_BYPASS,
   CALLGATE_REPLICA_DIR, CALLGATE_TARGET, ...) are refused.
   Targets: local / bypass <= 1.10; rpc / bypass, events / bypass and
   local / events are reported.  Before the
   rounds each proxy's CPU idle (5 s without calls) is reported too: what
   it costs with nothing to do (the bypass runs no gRPC channel at all).
2. The ramp: rates of `--ramp`, `--step-seconds` each, each step through
   every proxy still standing in the same order; a proxy breaks at the
   first step where more than 1% of the calls fail or fewer than 95% of the
   calls asked for complete in time (every step's failures are reported);
   reported: the highest clean step of each.  The whole machine (2 cores)
   carries sipp twice, Kamailio and callgate: the figure is this machine's.
3. Decision time inside the Kamailio worker: after section 1, each proxy
   again, as an instance of its own with CALLGATE_TIMINGS (the timings
   cost CPU, so section 1 measures instances without them), takes the
   bounded run's calls; each SIP worker writes the time.perf_counter_ns
   of every inbound decision (around LocalDecisions.inbound, or around the
   Inbound RPC: the decision alone, the number's tenant looked up apart;
   without the timings a worker asks LocalDecisions.route, the tenant and
   the decision in one call) and the CPU time of every route the script
   runs;
   collected after the bounded run (the last second's lines of each
   worker may still be in its buffer).  p50, p90, p99 and mean of each
   decision kind; target: RPC p50 / local p99 >= 50.  Also reported: the
   local decisions the compiled path handed to the Python one (a file
   looked at; each worker maps the replica's files at its start, so none
   in a steady run); a peer timed by the same worker right after each
   local decision, a CRC of 10 KB (fixed work of the same length: what
   any 5 µs of work meets in that worker, the machine's own tail); the
   local decision's mean as a share of what the local proxy costs over
   bypass per call, and each proxy's Python CPU per call in each route
   (request, replies, failures, the dialog's end, the event sender).
4. Memory (`--memory`, on by default): a tenant "big" whose blacklist holds
   `--memory-blacklist` (1,000,000) random numbers (loadtest.world.big_tenant:
   a fifth in each of five countries' ranges, the US among them) pushed
   with Admin.PushSettingsUpload; once the replica holds it, a Kamailio
   with `--memory-children` (8) workers deciding from the replica
   ("shared": every worker maps the one file) takes `--memory-calls` calls
   at `--memory-rate` to the tenant's number, more (at most 3 batches) until
   every worker has decided at least one (its CALLGATE_TIMINGS file holds a
   local decision, and its /proc/PID/maps lists the file); then each
   worker's /proc/PID/smaps_rollup (Rss, Pss, Private_*) and the Rss and
   Pss of its mappings of the file (/proc/PID/smaps).  The
   same with CALLGATE_REPLICA_COPY=1 ("private": each worker reads the file
   into its own memory), and the two side by side: total Pss and private
   memory of the workers, and the difference in copies of the file.

Every sipp run is bounded by its call count (-m) and a timeout; every process
is stopped by its PID and the temporary directory removed.  The summary table
gives each target with PASS/FAIL; the exit status is 1 when a bounded run
failed a call or a section did not complete (the targets are figures, as in
server_bench).
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from engine import replica as replica_files
from server.client import open_channel, upload_messages

from . import sip
from .cluster_bench import pct
from .process import EXAMPLE, CpuMeter, Interference, ReplicaProcess, ServeProcess, sigterm_unwinds
from .report import save_json
from .server_sections import BIG_OPTIONS, Report

OPEN = "+14155550199"
CALLER = "+12125550000"
PROXIES = ("bypass", "rpc", "local")
# section 1 also runs "events": the relay that records each call's events as rpc and local do, deciding nothing
ROUND_PROXIES = ("bypass", "events", "rpc", "local")
BIG = "big"
_RUNS = itertools.count()   # (sipp runs at once need files of their own)
# sipps running (runs at once, `--together`: each in a thread of its own), the SIP ports handed to them, and
# whether the run is being stopped (`stop_sipps`: the threads' sipps killed, their waits cut short)
_SIPPS_LOCK = threading.Lock()
_SIPPS: set[subprocess.Popen[str]] = set()
_SIPP_PORTS: set[int] = set()
_STOPPING = threading.Event()


def stop_sipps() -> None:
    """Kill every sipp a run started and is waiting for, and cut short the waits for spools to drain: the run
    is being given up (SIGTERM, or a run beside it failed), and the threads of runs at once end at once."""
    _STOPPING.set()
    with _SIPPS_LOCK:
        for proc in _SIPPS:
            proc.kill()


def bench_doc() -> dict[str, Any]:
    doc = json.loads(EXAMPLE.read_text())
    for n in doc["numbers"]:
        n.pop("rental", None)
        if n["number"] == OPEN:
            n.pop("schedule", None)  # always open: the calls are all ROUTE, whatever the hour
    return doc


def big_doc(blacklist: int) -> tuple[bytes, str, str]:
    """Tenant "big" with a `blacklist`-entry blacklist (loadtest.world.big_tenant): (document, the number the
    calls go to: always open, no documents required, routed to a queue group; a caller not on the lists)."""
    from .world import big_tenant

    doc, black = big_tenant(7, blacklist, 4, tenant=BIG)
    entry = doc["numbers"][1]  # (number 0 requires documents)
    entry.pop("schedule", None)
    entry["requires_documents"] = False
    listed = set(doc["offhours_blacklist"])
    caller = next(c for c in (f"+1646555{i:04d}" for i in range(10_000))
                  if not np.isin(np.uint64(int(c[1:])), black) and c not in listed)
    return json.dumps(doc).encode(), entry["number"], caller


def run_sipp(proxy: str, rate: float, calls: int, folder: Path, timeout_s: float, called: str = OPEN,
             caller: str = CALLER) -> dict[str, Any]:
    """One bounded sipp UAC run; its counters from the -trace_stat CSV, its response times from -trace_rtt."""
    tag = next(_RUNS)
    scenario = folder / f"uac-{tag}.xml"  # the response-time file is named after the scenario: one per run
    scenario.write_text(sip.uac_scenario(200, hold_ms=100, rtd=True))
    stat = folder / f"stat-{tag}.csv"
    with _SIPPS_LOCK:   # (a port free now may be another thread's sipp's a moment later: one handed out once)
        port = next(p for p in iter(sip.free_sip_port, None) if p not in _SIPP_PORTS)
        _SIPP_PORTS.add(port)
    cmd = ["sipp", "-sf", str(scenario), "-s", called, proxy, "-i", "127.0.0.1", "-p", str(port),
           "-key", "CALLER", caller, "-m", str(calls), "-r", str(rate), "-l", str(max(int(rate * 3), 10)),
           "-nostdin", "-timeout", f"{int(timeout_s)}s", "-timeout_error", "-trace_stat", "-stf", str(stat),
           "-fd", "1", "-recv_timeout", "5000", "-trace_rtt", "-rtt_freq", "1"]  # (a partial batch is never written)
    t0 = time.monotonic()
    try:
        with _SIPPS_LOCK:
            if _STOPPING.is_set():
                raise RuntimeError("the run is being stopped")
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True, cwd=folder)
            _SIPPS.add(proc)
        try:
            _, err = proc.communicate(timeout=timeout_s + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, err = proc.communicate()
        finally:
            with _SIPPS_LOCK:
                _SIPPS.discard(proc)
    finally:
        with _SIPPS_LOCK:
            _SIPP_PORTS.discard(port)
    wall = time.monotonic() - t0
    rows = [line.split(";") for line in stat.read_text().splitlines()] if stat.exists() else []
    out: dict[str, Any] = {"rate": rate, "calls": calls, "exit": proc.returncode, "wall_s": wall}
    if len(rows) >= 2:
        values = dict(zip(rows[0], rows[-1], strict=False))

        def num(key: str) -> int:
            try:
                return int(values.get(key, "0") or 0)
            except ValueError:
                return 0

        out.update(successful=num("SuccessfulCall(C)"), failed=num("FailedCall(C)"),
                   retransmissions=num("Retransmissions(C)"), call_length=values.get("CallLength(C)", ""))
    else:
        out.update(successful=0, failed=calls, retransmissions=0, error=err[-300:])
    out["achieved_rate"] = out["successful"] / wall if wall > 0 else 0.0
    times: list[float] = []
    for rtt in folder.glob(f"{scenario.stem}_*_rtt.csv"):
        for line in rtt.read_text().splitlines()[1:]:
            parts = line.split(";")
            try:
                times.append(float(parts[1]))
            except (IndexError, ValueError):
                continue
        rtt.unlink()
    out["response_ms"] = {"n": len(times), "p50": pct(times, 50), "p99": pct(times, 99),
                          "max": max(times) if times else None,
                          "mean": sum(times) / len(times) if times else None}
    stat.unlink(missing_ok=True)
    scenario.unlink(missing_ok=True)
    return out


VARIANT = re.compile(r"([a-z][a-z0-9_-]{0,30})=([a-z]+)(?::(.*))?", re.DOTALL)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# settings that make a proxy the kind it is, or point it elsewhere: a variant of a kind keeps them as its kind has them
KIND_SETTINGS = ("CALLGATE_BYPASS", "CALLGATE_REPLICA_DIR", "CALLGATE_TARGET", "CALLGATE_FAILOVER",
                 "CALLGATE_ROUTE_URI", "CALLGATE_TIMINGS")
MAX_VARIANTS = 4   # (each a Kamailio with --children workers, its calls at --rate)


def parse_variants(values: list[str], error: Any) -> dict[str, tuple[str, dict[str, str]]]:
    """--variant's proxies: name -> (kind, environment); `error(message)` (argparse's: exit 2) for a malformed one,
    a name that is a kind or taken twice, a kind that is none of section 1's, a setting that is no VAR=VALUE (a
    value holds no comma), one set twice or one of KIND_SETTINGS, or more than MAX_VARIANTS."""
    wanted = ("NAME=KIND[:VAR=VALUE,...]: NAME lower-case letters, digits, _ and -; KIND one of "
              f"{', '.join(ROUND_PROXIES)}")
    if len(values) > MAX_VARIANTS:
        error(f"--variant: {len(values)} given, at most {MAX_VARIANTS} (each is a Kamailio of its own)")
    out: dict[str, tuple[str, dict[str, str]]] = {}
    for text in values:
        m = VARIANT.fullmatch(text)
        if m is None:
            error(f"--variant {text[:60]!r}: not {wanted}")
            continue
        name, kind, settings = m.group(1), m.group(2), m.group(3)
        if kind not in ROUND_PROXIES:
            error(f"--variant {text[:60]!r}: {kind!r} is no kind of proxy ({wanted})")
        if name in ROUND_PROXIES or name in out:
            error(f"--variant {text[:60]!r}: {name!r} is taken (a kind, or another variant's name)")
        env: dict[str, str] = {}
        for item in settings.split(",") if settings is not None else ():
            var, eq, value = item.partition("=")
            if not eq or not ENV_NAME.fullmatch(var) or "\0" in value:
                error(f"--variant {text[:60]!r}: {item[:40]!r} is no VAR=VALUE, a value without commas ({wanted})")
            if var in env or var in KIND_SETTINGS:
                error(f"--variant {text[:60]!r}: {var} {'set twice' if var in env else 'is what makes the kind'}")
            env[var] = value
        out[name] = (kind, env)
    return out


def parse_together(text: str, error: Any, known: tuple[str, ...] = ROUND_PROXIES) -> tuple[str, ...]:
    """--together's proxies, in its order; `error(message)` (argparse's: exit 2) for an empty item, a name that is
    no proxy of section 1 (`known`: its kinds and variants), one named twice, or fewer than two.  "" (the
    default): none."""
    if not text.strip():
        return ()
    names = [x.strip() for x in text.split(",")]
    wanted = f"two or more of {', '.join(known)}, comma-separated, each once"
    for name in names:
        if not name:
            error(f"--together {text[:60]!r}: an empty item ({wanted})")
        if name not in known:
            error(f"--together {text[:60]!r}: {name[:30]!r} is no proxy ({wanted})")
        if names.count(name) > 1:
            error(f"--together {text[:60]!r}: {name!r} named twice ({wanted})")
    if len(names) < 2:
        error(f"--together {text[:60]!r}: one proxy is side by side with nothing ({wanted})")
    return tuple(names)


def environment_of(pid: int) -> dict[str, str]:
    """A process's environment as it started (/proc/PID/environ)."""
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item)


def turned(names: tuple[str, ...], turn: int) -> tuple[str, ...]:
    """`names` starting `turn` places further (round k's order: each name in every place over the rounds)."""
    at = turn % len(names) if names else 0
    return names[at:] + names[:at]


def say_bounded(what: str, r: dict[str, Any], calls: int, rate: float) -> None:
    say(f"{what}: {r['successful']:,} of {calls:,} calls at {rate:g}/s, failed {r['failed']}, retransmissions "
        f"{r['retransmissions']}, response p50/p99 {r['response_ms']['p50']}/{r['response_ms']['p99']} ms, "
        f"Kamailio {r['cpu']['us_per_call'] or 0:.0f} µs CPU per call")


def broke(r: dict[str, Any]) -> bool:
    """More than 1% of the calls failed, or fewer than 95% completed: a stray failure among thousands on a
    2-core machine that also runs the sipps is noise, a collapse is not."""
    return bool(r["failed"] > 0.01 * r["calls"] or r["successful"] < 0.95 * r["calls"])


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def drained(proxy: sip.Kamailio, timeout_s: float) -> bool:
    """Wait until the proxy's spool has no event waiting (a bypass proxy spools none); False at once when the run is
    being stopped (`stop_sipps`)."""
    import sqlite3

    deadline = time.monotonic() + timeout_s
    while not _STOPPING.is_set():
        try:
            if not proxy.spooled().get(0):
                return True
        except sqlite3.Error:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return False


IDLE_S = 5.0


def idle_cpu(proxy: sip.Kamailio, seconds: float) -> float:
    """The instance's CPU in ms a second over `seconds` without calls (its timers, the event sender's rounds, and
    whatever a library does in the background: grpcio's channel-state polling cost ~5 ms a second a process)."""
    time.sleep(2.0)   # (what its start left to do: the workers' first rounds)
    meter = CpuMeter(proxy.tree(), precise=True)
    time.sleep(seconds)
    cpu = meter.read()
    return sum(cpu["worker_cpu_s"].values()) / cpu["wall_s"] * 1000 if cpu["wall_s"] else 0.0


def bounded(proxy: sip.Kamailio, rate: float, calls: int, folder: Path, timeout_s: float,
            start: threading.Barrier | None = None) -> dict[str, Any]:
    """One bounded run with the instance's CPU over it (until its spool is drained): per call, in total, and
    by kind of process (the SIP workers, the rest: timers, the event sender).  `start`: the runs at once wait
    for each other there, their meters made, before their sipps start."""
    kinds = proxy.processes()
    pids = proxy.tree()
    meter = CpuMeter(pids, precise=True)
    if start is not None:
        start.wait(60)
    started = time.monotonic()
    r = run_sipp(proxy.address, rate, calls, folder, timeout_s)
    r["spool_drained"] = drained(proxy, 10.0)
    cpu = meter.read()
    r["started"], r["ended"] = started, time.monotonic()   # (time.monotonic(): runs at once overlap)
    per_pid = {int(p): s for p, s in cpu["worker_cpu_s"].items()}
    parts = {"sip_workers": 0.0, "event_sender": 0.0, "others": 0.0}
    for pid, seconds in per_pid.items():
        what = kinds.get(pid, "")
        parts["sip_workers" if what.startswith("udp receiver") else "event_sender" if what.startswith("RTIMER")
              else "others"] += seconds
    total = sum(per_pid.values())
    done = r["successful"]
    r["cpu"] = {"seconds": total, "wall_s": cpu["wall_s"], "processes": len(pids),
                "by_process": {f"{p} {kinds.get(p, '?')}": s for p, s in per_pid.items()},
                "us_per_call": total / done * 1e6 if done else None,
                **{f"{k}_s": v for k, v in parts.items()},
                **{f"{k}_us_per_call": v / done * 1e6 if done else None for k, v in parts.items()}}
    return r


def read_timings(prefix: Path) -> dict[str, Any]:
    """The durations the workers wrote to PREFIX.<pid>: per kind ("local", "rpc"), n, p50, p99, max in µs."""
    found: dict[str, list[float]] = {}
    files = 0
    for path in prefix.parent.glob(prefix.name + ".*"):
        if not path.suffix[1:].isdigit():
            continue
        files += 1
        for line in path.read_text(errors="replace").splitlines():
            kind, *figures = line.split()
            if figures and figures[0].isdigit():
                found.setdefault(kind, []).append(int(figures[0]) / 1000)
            if len(figures) > 1 and figures[1].isdigit():   # the worker's CPU time of the same decision
                found.setdefault(kind + "_cpu", []).append(int(figures[1]) / 1000)
    out: dict[str, Any] = {"files": files}
    for kind, values in found.items():
        out[kind] = {"n": len(values), "p50_us": pct(values, 50), "p90_us": pct(values, 90),
                     "p99_us": pct(values, 99), "max_us": max(values), "mean_us": sum(values) / len(values)}
    return out


# -- memory ---------------------------------------------------------------------------------------

_KB = re.compile(r"^(\w+):\s+(\d+) kB$")


def smaps_rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup's figures, in kB."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        m = _KB.match(line)
        if m:
            out[m.group(1)] = int(m.group(2))
    return out


def mapping_of(pid: int, name: str) -> dict[str, int]:
    """Rss and Pss (kB) of the mappings of the file called `name` in /proc/PID/smaps, and how many there are."""
    out = {"mappings": 0, "Rss": 0, "Pss": 0}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and re.fullmatch(r"[0-9a-f]+-[0-9a-f]+", head[0]):
            inside = len(head) >= 6 and Path(head[5]).name == name
            out["mappings"] += inside
            continue
        m = _KB.match(line)
        if inside and m and m.group(1) in ("Rss", "Pss"):
            out[m.group(1)] += int(m.group(2))
    return out


def memory_instance(mode: str, callgate: str, route_port: int, directory: Path, folder: Path, args: Any,
                    called: str, caller: str) -> dict[str, Any]:
    """One Kamailio deciding tenant big's calls from the replica ("shared": mapped; "private": a copy per
    worker): calls until every SIP worker decided one, then every worker's memory."""
    timings = folder / f"timings-memory-{mode}"
    name = replica_files.file_name(BIG)
    proxy = sip.Kamailio(folder, callgate, route_port, children=args.memory_children, replica=directory,
                         events_module=args.events_module,
                         replica_copy=mode == "private", timings=timings)
    try:
        workers = proxy.udp_workers()
        if len(workers) != args.memory_children:
            raise RuntimeError(f"kamcmd core.psx lists {len(workers)} UDP workers, not {args.memory_children}")
        out: dict[str, Any] = {"workers": len(workers), "batches": []}

        def decided(pid: int) -> bool:  # its first decision is written at once; a mapped worker maps the file
            mine = timings.parent / f"{timings.name}.{pid}"
            return mine.exists() and "local " in mine.read_text() and (
                mode == "private" or mapping_of(pid, name)["mappings"] > 0)

        calls = args.memory_calls
        for batch in range(4):  # the calls asked, then at most 3 more batches for workers that got none
            r = run_sipp(proxy.address, args.memory_rate, calls, folder, calls / args.memory_rate + 30, called, caller)
            out["batches"].append({k: r[k] for k in ("calls", "successful", "failed")})
            waiting = [p for p in workers if not decided(p)]
            say(f"4 memory {mode}: batch {batch + 1}: {r['successful']}/{r['calls']} calls ok; "
                f"{len(workers) - len(waiting)} of {len(workers)} workers decided")
            if not waiting:
                break
            calls = max(args.memory_calls // 2, 10)
        out["workers_decided"] = len(workers) - len(waiting)
        out["per_worker"] = []
        for pid in workers:
            roll = smaps_rollup(pid)
            snap = mapping_of(pid, name)
            out["per_worker"].append({
                "pid": pid, "rss_kb": roll.get("Rss", 0), "pss_kb": roll.get("Pss", 0),
                "private_clean_kb": roll.get("Private_Clean", 0), "private_dirty_kb": roll.get("Private_Dirty", 0),
                "private_kb": roll.get("Private_Clean", 0) + roll.get("Private_Dirty", 0),
                "shared_kb": roll.get("Shared_Clean", 0) + roll.get("Shared_Dirty", 0),
                "anonymous_kb": roll.get("Anonymous", 0),
                "file_mappings": snap["mappings"], "file_rss_kb": snap["Rss"], "file_pss_kb": snap["Pss"]})
        for key in ("rss_kb", "pss_kb", "private_kb", "shared_kb", "file_rss_kb", "file_pss_kb"):
            out["total_" + key] = sum(w[key] for w in out["per_worker"])
        out["decisions"] = read_timings(timings)
        return out
    finally:
        proxy.stop()


def section_memory(callgate: ServeProcess, replica: ReplicaProcess, route_port: int, folder: Path,
                   args: Any) -> dict[str, Any]:
    from callgate.v1 import admin_pb2_grpc

    say(f"4 memory: building tenant {BIG!r} with a {args.memory_blacklist:,}-entry blacklist")
    t0 = time.monotonic()
    document, called, caller = big_doc(args.memory_blacklist)
    out: dict[str, Any] = {"blacklist": args.memory_blacklist, "document_bytes": len(document), "called": called,
                           "build_s": time.monotonic() - t0}
    t0 = time.monotonic()
    with open_channel(callgate.address, options=BIG_OPTIONS) as channel:
        version = admin_pb2_grpc.AdminStub(channel).PushSettingsUpload(
            upload_messages(document, comment="sip_bench memory"), timeout=180).version
    del document
    out["push_s"] = time.monotonic() - t0
    replica.wait_for(BIG, version, timeout_s=120)
    out["in_replica_s"] = time.monotonic() - t0
    out["file_bytes"] = replica_files.snapshot_path(replica.directory, BIG).stat().st_size
    say(f"4 memory: pushed in {out['push_s']:.1f} s, in the replica after {out['in_replica_s']:.1f} s; "
        f"its file {out['file_bytes'] / 2**20:.1f} MiB")
    for mode in ("shared", "private"):
        out[mode] = memory_instance(mode, callgate.address, route_port, replica.directory, folder, args, called,
                                    caller)
    return out


# -- the run --------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.sip_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=200.0, help="calls/s of the bounded run (default 200)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the bounded run (default 10)")
    p.add_argument("--rounds", type=int, default=1,
                   help="bounded runs through each proxy, in turned orders; ratios are their medians (default 1)")
    p.add_argument("--ramp", default="100,200,300,350,400,450,500,600",
                   help="calls/s of the ramp steps, comma-separated ('' skips the ramp)")
    p.add_argument("--step-seconds", type=float, default=5.0, help="length of each ramp step (default 5)")
    p.add_argument("--warmup", type=int, default=400,
                   help="calls each proxy takes before anything is measured, at --rate (default 400; 0: none)")
    p.add_argument("--together", default="", metavar="LIST",
                   help="section 1's proxies (of bypass, events, rpc, local; at least two, comma-separated) that "
                        "run at the same time in each round, each with a sipp of its own at --rate, before the "
                        "others in turn: their ratios are then of the same seconds of this machine (e.g. "
                        "bypass,events,local; default '': each proxy alone)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KIND[:VAR=VALUE,...]",
                   help="one more proxy in section 1: of KIND (bypass, events, rpc, local) with these settings in "
                        "its environment; its ratio to KIND is reported (repeatable, at most 4; e.g. "
                        "slow=events:CALLGATE_SEND_EVERY_MS=2000)")
    p.add_argument("--children", type=int, default=8, help="Kamailio UDP workers (default 8)")
    p.add_argument("--events-module", action=argparse.BooleanOptionalAction, default=True,
                   help="rpc and local make their replies' events with Kamailio's callgate_events module "
                        "(`make kamailio-module`; default on); off: in the script's Python reply routes")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True,
                   help="section 4, the memory of shared and private replica files (default on)")
    p.add_argument("--memory-blacklist", type=int, default=1_000_000, help="tenant big's blacklist (1,000,000)")
    p.add_argument("--memory-children", type=int, default=8, help="UDP workers of section 4's Kamailios (8)")
    p.add_argument("--memory-calls", type=int, default=400, help="calls to tenant big per instance (400)")
    p.add_argument("--memory-rate", type=float, default=100.0, help="their rate, calls/s (100)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every figure here")
    args = p.parse_args(argv)
    variants = parse_variants(args.variant, p.error)
    section1 = ROUND_PROXIES + tuple(variants)
    together = parse_together(args.together, p.error, section1)
    missing = sip.missing_tools()
    if missing:
        p.error(f"{', '.join(missing)} not installed: apt-get install {sip.PACKAGES}")
    try:
        ramp = [float(x) for x in args.ramp.split(",") if x.strip()]
    except ValueError:
        p.error(f"--ramp {args.ramp!r}: calls/s separated by commas, e.g. 100,200,400")
    if (args.rate <= 0 or args.seconds <= 0 or args.step_seconds <= 0 or any(r <= 0 for r in ramp)
            or args.memory_rate <= 0):
        p.error("rates and seconds must be positive")
    if min(args.rounds, args.children, args.memory_children, args.memory_calls, args.memory_blacklist) < 1:
        p.error("--rounds, --children, --memory-children, --memory-calls and --memory-blacklist must be at least 1")
    t_start = time.monotonic()
    interference = Interference()
    folder = Path(tempfile.mkdtemp(prefix="sip-bench-"))
    started: list[Any] = []
    out: dict[str, Any] = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                           "bounded": {}, "rounds": [], "ramp": {p: [] for p in PROXIES}, "broke_at": {},
                           "timings": {}, "idle": {}, "warmup": {}, "together": list(together),
                           "variants": {n: {"kind": k, "env": e} for n, (k, e) in variants.items()}}
    crashed: list[str] = []
    calls = int(args.rate * args.seconds)
    try:
        callgate = ServeProcess(folder / "data", seed=None)
        started.append(callgate)
        from callgate.v1 import admin_pb2, admin_pb2_grpc

        with open_channel(callgate.address) as channel:
            admin_pb2_grpc.AdminStub(channel).PushSettings(admin_pb2.PushSettingsRequest(
                document=json.dumps(bench_doc()).encode()), timeout=60)
        failover = folder / "failover.json"  # the rpc proxy knows each number's tenant from it
        exported = subprocess.run([sys.executable, "-m", "callgate", "--server", callgate.address, "export",
                                   "failover", "-o", str(failover)], capture_output=True, text=True, timeout=60)
        if exported.returncode != 0:
            raise RuntimeError(f"callgate export failover: {exported.stderr.strip()}")
        replica = ReplicaProcess(callgate.address, folder / "replica", name="sip-bench")
        started.append(replica)
        replica.wait_for("acme", timeout_s=60)
        uas = sip.Uas(folder)
        started.append(uas)

        def start_proxy(name: str, timings: Path | None = None) -> sip.Kamailio:
            kind, env = variants.get(name, (name, {}))
            made = sip.Kamailio(folder, callgate.address, uas.port, children=args.children,
                                bypass="events" if kind == "events" else kind == "bypass",
                                failover=None if kind == "bypass" else failover,
                                replica=replica.directory if kind == "local" else None, timings=timings,
                                events_module=args.events_module, env=env)
            started.append(made)
            return made

        # sections 1 and 2 on proxies that time nothing (the timings cost each proxy CPU, the local one most: a
        # decision, its peer and five routes timed a call); section 3 on instances of their own that do
        proxies = {name: start_proxy(name) for name in section1}
        for name, (kind, env) in variants.items():   # (what its Kamailio was given: its environment, read back)
            seen = environment_of(proxies[name].proc.pid)
            out["variants"][name]["in_its_environment"] = all(seen.get(k) == v for k, v in env.items())
            out["variants"][name]["bypass"] = seen.get("CALLGATE_BYPASS", "")   # (its kind, as its Kamailio has it)
            if not out["variants"][name]["in_its_environment"]:   # (nothing measured of a variant that is none)
                raise RuntimeError(f"variant {name}: its Kamailio (pid {proxies[name].proc.pid}) was started "
                                   f"without {env} in its environment")
            say(f"1 variant {name}: the {kind} proxy with {', '.join(f'{k}={v}' for k, v in env.items()) or 'nothing'}"
                " set; its Kamailio's environment has it")
        say(f"callgate at {callgate.address}, UAS at 127.0.0.1:{uas.port}, replica in {replica.directory}; "
            + ", ".join(f"Kamailio {n} at {k.address}" for n, k in proxies.items()))

        # each proxy's first calls, not measured: what it does once (imports, channels, first-call paths)
        for name in section1 if args.warmup > 0 else ():
            r = run_sipp(proxies[name].address, args.rate, args.warmup, folder, args.warmup / args.rate + 30)
            drained(proxies[name], 10.0)
            out["warmup"][name] = {"calls": args.warmup, "successful": r["successful"], "failed": r["failed"]}
            say(f"1 warm-up {name}: {r['successful']:,} of {args.warmup:,} calls, failed {r['failed']} (not measured)")
        # each proxy idle (no call now): what it costs with nothing to do, apart from what calls cost
        for name in section1:
            out["idle"][name] = idle_cpu(proxies[name], IDLE_S)
            say(f"1 idle {name}: {out['idle'][name]:.1f} ms CPU a second over {IDLE_S:g} s without calls")
        rest = tuple(name for name in section1 if name not in together)
        for turn in range(args.rounds):   # round k starts k places further: each proxy in every place
            order = turned(rest, turn)
            this: dict[str, Any] = {}
            when = f" (round {turn + 1})" if args.rounds > 1 else ""
            if together:   # at the same moments, each with a sipp of its own: the machine's drift is theirs alike
                first = turned(together, turn)   # (the order they are started in)
                barrier = threading.Barrier(len(together))
                with ThreadPoolExecutor(len(together)) as pool:
                    runs = {name: pool.submit(bounded, proxies[name], args.rate, calls, folder, args.seconds + 30,
                                              barrier) for name in first}
                    try:   # one that fails (or SIGTERM meanwhile) stops the others' sipps and waits now
                        wait(runs.values(), return_when=FIRST_EXCEPTION)
                        for name in together:
                            this[name] = runs[name].result()
                    except BaseException:
                        barrier.abort()
                        stop_sipps()
                        raise
                for name in together:
                    say_bounded(f"1 bounded {name}{when}, side by side with "
                                f"{', '.join(n for n in together if n != name)}", this[name], calls, args.rate)
            for name in order:
                this[name] = bounded(proxies[name], args.rate, calls, folder, args.seconds + 30)
                say_bounded(f"1 bounded {name}{when}", this[name], calls, args.rate)
            out["rounds"].append(this)
        out["bounded"] = {name: median_round(out["rounds"], name) for name in section1}
        for name in PROXIES:
            prefix = folder / f"timings-{name}"
            timed = start_proxy(name, prefix)
            try:
                r = run_sipp(timed.address, args.rate, calls, folder, args.seconds + 30)
                drained(timed, 10.0)
            finally:
                timed.stop()
            out["timings"][name] = {**read_timings(prefix), "calls": r["successful"]}
            say(f"3 decision time {name}: {out['timings'][name]}")

        standing = list(PROXIES)
        for rate in ramp:
            for name in list(standing):
                r = run_sipp(proxies[name].address, rate, int(rate * args.step_seconds), folder,
                             args.step_seconds + 30)
                out["ramp"][name].append(r)
                say(f"2 ramp {name}: {rate:g}/s -> {r['successful']:,}/{r['calls']:,} ok, {r['failed']} failed, "
                    f"{r['achieved_rate']:.0f} calls/s, response p99 {r['response_ms']['p99']} ms")
                if broke(r):
                    out["broke_at"][name] = rate
                    standing.remove(name)
            if not standing:
                break
        for name in standing if ramp else ():
            out["broke_at"][name] = None
        for name in list(proxies):  # the main run's proxies are done: their memory is not section 4's
            proxies.pop(name).stop()

        if args.memory:
            try:
                out["memory"] = section_memory(callgate, replica, uas.port, folder, args)
            except Exception as exc:  # the other sections' figures still count
                crashed.append(f"4 memory: {type(exc).__name__}: {exc}"[:500])
                say(f"4 memory did not complete: {exc}")
        out["callgate_warnings"] = len(callgate.problems())
    finally:
        for s in reversed(started):
            s.stop()
        shutil.rmtree(folder, ignore_errors=True)
    cores, top = interference.cores()
    out["interference"] = {"cores": cores, "top": top}
    out["elapsed_s"] = time.monotonic() - t_start
    rep = summary(out, args, calls)
    out["summary"] = [vars(r) for r in rep.rows]
    out["crashed"] = crashed
    print(f"\nsip_bench summary ({out['elapsed_s']:.0f} s; SIP through Kamailio, {args.children} workers: whole "
          "calls INVITE, 180, 200, ACK, 100 ms, BYE, 200; the replies' events made by "
          f"{'the callgate_events module' if args.events_module else 'the Python reply routes'}; callgate, replica, "
          "Kamailio and the sipps on this machine's cores)")
    print(rep.table())
    for section in sorted(rep.notes):
        for text in rep.notes[section]:
            print(f"note {section}: {text}")
    if "memory" in out:
        print(memory_table(out["memory"]))
    zero_failed = all(r["failed"] == 0 and r["successful"] == calls for rnd in out["rounds"] for r in rnd.values())
    print(f"bounded runs with zero failed calls: {'yes' if zero_failed else 'NO'}"
          + (f"; sections that did not complete: {crashed}" if crashed else ""))
    if args.json:
        save_json(args.json, out)
    return 0 if zero_failed and len(out["bounded"]) == len(section1) and not crashed else 1


def median_round(rounds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    """The proxy's run of the round where its CPU per call is the median (the lower one of an even count)."""
    runs = sorted((r[name] for r in rounds), key=lambda r: r["cpu"]["us_per_call"] or 0.0)
    return runs[(len(runs) - 1) // 2]


def round_ratios(rounds: list[dict[str, Any]], a: str, b: str) -> list[float]:
    """CPU per call of proxy a / proxy b in each round that has both figures."""
    return [ra / rb for r in rounds for ra, rb in [(r[a]["cpu"]["us_per_call"], r[b]["cpu"]["us_per_call"])]
            if ra is not None and rb]


def is_zero(value: float) -> bool:
    return value == 0


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def summary(out: dict[str, Any], args: Any, calls: int) -> Report:
    rep = Report()
    b = out["bounded"]
    rounds = out["rounds"]
    for name in (*ROUND_PROXIES, *out.get("variants", {})):
        r = b.get(name)
        if r is None:
            continue
        done, failed = (sum(rnd[name][k] for rnd in rounds) for k in ("successful", "failed"))
        short = float(calls * len(rounds) - done + failed)  # 0: every call of every round completed, none failed
        times = f" x {len(rounds)} rounds" if len(rounds) > 1 else ""
        rep.add(1, f"{name}: calls completed / failed ({args.rate:g}/s for {args.seconds:g} s{times})",
                text=f"{done:,} / {failed:,}", target=f"{calls * len(rounds):,} / 0", value=short, check=is_zero)
        t = r["response_ms"]
        rep.add(1, f"{name}: response time INVITE->180, mean / p50 / p99 / max ms (sipp: 4 ms steps)",
                text=f"{t['mean']:.2f} / {t['p50']:.0f} / {t['p99']:.0f} / {t['max']:.0f}" if t["n"] else "-")
        idle = out.get("idle", {}).get(name)
        rep.add(1, f"{name}: Kamailio CPU idle, ms a second (no calls, {IDLE_S:g} s)", idle, "{:.1f}")
        c = r["cpu"]
        rep.add(1, f"{name}: Kamailio CPU per call µs (SIP workers + event sender + the rest)"
                   + ("; its median round" if len(rounds) > 1 else ""),
                text=f"{c['us_per_call']:.0f} ({c['sip_workers_us_per_call']:.0f} + "
                     f"{c['event_sender_us_per_call']:.0f} + {c['others_us_per_call']:.0f})"
                if c["us_per_call"] is not None else "-")

    def per_call(name: str) -> float | None:
        value: float | None = b.get(name, {}).get("cpu", {}).get("us_per_call")
        return value

    pairs = [("local", "bypass", "<= 1.10"), ("rpc", "bypass", ""), ("local", "rpc", ""),
             ("events", "bypass", ""), ("local", "events", "")]
    pairs += [(name, v["kind"], "") for name, v in out.get("variants", {}).items()]   # (a setting against none)
    for a, c, target in pairs:
        ratios = round_ratios(rounds, a, c) if all(a in r and c in r for r in rounds) else []
        middle = float(np.median(ratios)) if ratios else None
        at_once = set(out.get("together", ())) & {a, c}
        # (a ratio of one proxy side by side and one alone mixes two machines' loads: checked against no target)
        paired = (" side by side" if len(at_once) == 2 else
                  f" ({next(iter(at_once))} side by side, {({a, c} - at_once).pop()} alone)" if at_once else "")
        target = "" if len(at_once) == 1 else target
        rep.add(1, f"Kamailio CPU per call, {a} / {c}{paired}"
                   + (" (median; each round)" if len(ratios) > 1 else ""),
                middle, "{:.2f}", target, (lambda v: v <= 1.10) if target else None,
                text=f"{middle:.2f} ({', '.join(f'{v:.2f}' for v in ratios)})"
                if middle is not None and len(ratios) > 1 else None)
    side = out.get("together", [])
    retransmitted = [i + 1 for i, rnd in enumerate(rounds) if any(rnd[n]["retransmissions"] for n in side if n in rnd)]
    if retransmitted:   # (a machine past what it carries: a proxy's calls waited, and its CPU per call with them)
        rep.note(1, f"round(s) {', '.join(map(str, retransmitted))}: the calls of proxies side by side were "
                    "retransmitted; their ratios hold a machine past what it carries (fewer --together or a lower "
                    "--rate)")
    if args.ramp.strip():
        for name in PROXIES:
            steps = out["ramp"].get(name, [])
            best = max((r for r in steps if not broke(r)), key=lambda r: r["rate"], default=None)
            at = out["broke_at"].get(name)
            then = f"breaks at {at:g}" if at else "did not break"
            rep.add(2, f"{name}: highest clean ramp step, calls/s ({args.step_seconds:g} s steps)",
                    text=f"{best['rate']:g} ({best['failed']} failed; {then})" if best else f"none ({then})")
    tm = out["timings"]
    loc, rpc = tm.get("local", {}).get("local"), tm.get("rpc", {}).get("rpc")
    if loc:
        rep.add(3, f"local decision in the worker p50 / p90 / p99 / mean µs ({loc['n']:,} decisions)",
                text=f"{loc['p50_us']:.1f} / {loc['p90_us']:.1f} / {loc['p99_us']:.1f} / {loc['mean_us']:.1f}")
    loc_cpu = tm.get("local", {}).get("local_cpu")
    if loc_cpu:
        rep.add(3, "  the same, the worker's CPU time (thread_time) p50 / p90 / p99 µs",
                text=f"{loc_cpu['p50_us']:.1f} / {loc_cpu['p90_us']:.1f} / {loc_cpu['p99_us']:.1f}")
        rep.add(3, "  RPC p50 / local p99 of CPU time", ratio(rpc["p50_us"] if rpc else None, loc_cpu["p99_us"]),
                "{:.1f}")
    miss = tm.get("local", {}).get("local_miss")
    if loc:   # the first decision of each worker opens the file; any other is worth knowing about
        rep.add(3, "  of which the compiled path handed to the Python one (a file looked at): n, p50 / max µs",
                text=f"{miss['n']}, {miss['p50_us']:.1f} / {miss['max_us']:.1f}" if miss else "0")
    collected = tm.get("local", {}).get("local_gc")
    if loc:   # a decision Python's garbage collector ran in: its tail
        rep.add(3, "  of which Python's garbage collector ran in: n, p50 / max µs",
                text=f"{collected['n']}, {collected['p50_us']:.1f} / {collected['max_us']:.1f}" if collected else "0")
    if rpc:
        rep.add(3, f"Inbound RPC in the worker p50 / p90 / p99 / mean µs ({rpc['n']:,} decisions)",
                text=f"{rpc['p50_us']:.0f} / {rpc['p90_us']:.0f} / {rpc['p99_us']:.0f} / {rpc['mean_us']:.0f}")
    rep.add(3, "RPC p50 / local p99", ratio(rpc["p50_us"] if rpc else None, loc["p99_us"] if loc else None),
            "{:.1f}", ">= 50", lambda v: v >= 50)
    decoy = tm.get("local", {}).get("decoy")
    if decoy:   # the same worker, the same moments, fixed work of the same length: the machine's own tail
        rep.add(3, "  a peer: a CRC of 10 KB timed right after each local decision, p50 / p90 / p99 µs",
                text=f"{decoy['p50_us']:.1f} / {decoy['p90_us']:.1f} / {decoy['p99_us']:.1f}")
        rep.add(3, "  RPC p50 / the peer's p99", ratio(rpc["p50_us"] if rpc else None, decoy["p99_us"]), "{:.1f}")
    rep.add(3, "RPC p50 / local p50", ratio(rpc["p50_us"] if rpc else None, loc["p50_us"] if loc else None),
            "{:.0f}")
    extra = (per_call("local") or 0) - (per_call("bypass") or 0)
    if loc and extra > 0:
        rep.add(3, "the local decision's mean in local - bypass Kamailio CPU per call", loc["mean_us"] / extra,
                "{:.1%}")
    for name in PROXIES:   # where each proxy's Python time goes, per call
        routes = {k.removeprefix("route:"): v for k, v in tm.get(name, {}).items() if k.startswith("route:")}
        done = tm.get(name, {}).get("calls") or 0
        if routes and done:
            each = {k: v["mean_us"] * v["n"] / done for k, v in sorted(routes.items())}
            rep.add(3, f"{name}: Python CPU per call in each route µs (a lower bound: a worker's last second may be "
                       "unwritten)", text=" + ".join(f"{k} {v:.0f}" for k, v in each.items())
                    + f" = {sum(each.values()):.0f}")
    if tm.get("local", {}).get("rpc"):
        rep.note(3, f"the local proxy asked over RPC {tm['local']['rpc']['n']} time(s): no usable file")
    mem = out.get("memory")
    if mem:
        mib = 1024.0
        for mode in ("shared", "private"):
            m = mem[mode]
            rep.add(4, f"{mode}: workers that decided a call of {BIG!r} (of {m['workers']})",
                    float(m["workers"] - m["workers_decided"]), text=f"{m['workers_decided']}", target="all",
                    check=is_zero)
            rep.add(4, f"{mode}: the {m['workers']} workers' Pss / private / Rss MiB",
                    text=f"{m['total_pss_kb'] / mib:.1f} / {m['total_private_kb'] / mib:.1f} / "
                         f"{m['total_rss_kb'] / mib:.1f}")
            rep.add(4, f"{mode}: the file in the workers, Rss / Pss MiB",
                    text=f"{m['total_file_rss_kb'] / mib:.1f} / {m['total_file_pss_kb'] / mib:.1f}")
        s, q = mem["shared"], mem["private"]
        size = mem["file_bytes"] / 1024
        rep.add(4, "private - shared: the workers' Pss, MiB", (q["total_pss_kb"] - s["total_pss_kb"]) / mib, "{:.1f}")
        rep.add(4, "private - shared: the workers' private memory, MiB",
                (q["total_private_kb"] - s["total_private_kb"]) / mib, "{:.1f}")
        rep.add(4, f"  in copies of the {size / mib:.1f} MiB file (Pss; {s['workers'] - 1} would be all saved)",
                (q["total_pss_kb"] - s["total_pss_kb"]) / size, "{:.2f}")
    if out["interference"]["cores"] > 0.2:
        rep.note(0, f"other processes on this machine kept {out['interference']['cores']:.2f} cores busy meanwhile: "
                    f"{out['interference']['top']}")
    return rep


def memory_table(mem: dict[str, Any]) -> str:
    lines = [f"\nsection 4, per SIP worker (kB; the file: {replica_files.file_name(BIG)}, "
             f"{mem['file_bytes'] / 2**20:.1f} MiB, blacklist {mem['blacklist']:,})",
             f"{'mode':<8} {'pid':>7} {'Rss':>8} {'Pss':>8} {'Private':>8} {'Shared':>8} {'file Rss':>9} "
             f"{'file Pss':>9}"]
    for mode in ("shared", "private"):
        for w in mem[mode]["per_worker"]:
            lines.append(f"{mode:<8} {w['pid']:>7} {w['rss_kb']:>8,} {w['pss_kb']:>8,} {w['private_kb']:>8,} "
                         f"{w['shared_kb']:>8,} {w['file_rss_kb']:>9,} {w['file_pss_kb']:>9,}")
        m = mem[mode]
        lines.append(f"{mode:<8} {'total':>7} {m['total_rss_kb']:>8,} {m['total_pss_kb']:>8,} "
                     f"{m['total_private_kb']:>8,} {m['total_shared_kb']:>8,} {m['total_file_rss_kb']:>9,} "
                     f"{m['total_file_pss_kb']:>9,}")
    return "\n".join(lines)


if __name__ == "__main__":
    with sigterm_unwinds():  # SIGTERM unwinds: servers stopped, temporary directories removed
        sys.exit(main())
