"""The client fleet: `spec.procs` load processes, each running one `Client` in an asyncio loop, started together.

`run_fleet` spawns them (never fork a process that holds gRPC state), waits until every client is connected,
starts the CPU meter and all clients at one CLOCK_MONOTONIC instant (start-up is not load), and collects
their results.  Each client publishes calls done, errors and wrong answers in shared memory for a progress
bar.  The spec is any picklable object with target, procs, channels, warmup_s, duration_s and timeout_s.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import queue
import resource
import time
import traceback
from collections.abc import Callable
from typing import Any

import grpc

from server.client import open_channel

from .process import CpuMeter
from .report import MAX_EXAMPLES

CHANNEL_OPTIONS: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
START_DELAY_NS = 200_000_000  # between "go" and the first intended start, so that every client is awake
SLOTS = 3  # shared counters per client process: done, errors, wrong

ProgressFactory = Callable[[Callable[[], tuple[int, int, int]]], contextlib.AbstractContextManager[Any]]


def add_arguments(group: Any, duration: float, procs: int, channels: int, timeout: float) -> None:
    """The options of every client fleet: --duration, --warmup, --procs, --channels, --timeout."""
    group.add_argument("--duration", type=float, default=duration, help=f"measured seconds (default {duration:g})")
    group.add_argument("--warmup", type=float, default=1.0, help="seconds of calls before measuring (default 1)")
    group.add_argument("--procs", type=int, default=procs, help=f"client processes (default {procs})")
    group.add_argument("--channels", type=int, default=channels,
                       help=f"gRPC connections per client process (default {channels})")
    group.add_argument("--timeout", type=float, default=timeout, help=f"deadline of each call, s (default {timeout:g})")


def share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split as evenly as possible in `parts`."""
    return total // parts + (1 if index < total % parts else 0)


def code_name(exc: BaseException) -> str:
    """The gRPC status name of a failed call, or EXCEPTION_<type> for anything else."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return f"EXCEPTION_{type(exc).__name__}"


def open_aio_channel(target: str, tls_ca: bytes | None = None, token: str = "") -> grpc.aio.Channel:
    """A grpc.aio channel with a connection of its own (TLS when `tls_ca` is given, the token when given)."""
    return open_channel(target, tls_ca, token, CHANNEL_OPTIONS, aio=True)


class Client:
    """The load of one client process.  A subclass connects its stubs in `connected`, runs the load in
    `load` (from t0_ns: warm-up until measure_ns, measured until end_ns) and adds its figures in `report`."""

    process_name = "client"

    def __init__(self, spec: Any, index: int, counts: Any = None, max_measured: int = 0) -> None:
        self.spec, self.index, self.counts = spec, index, counts
        self.cap = share(max_measured, spec.procs, index)  # this process's share of the measured calls
        self.measured_started = 0
        self.done = self.errors = self.wrong = 0  # warm-up included: every answer counts
        self.wrong_examples: list[str] = []
        self.set_start(0)

    def set_start(self, t0_ns: int) -> None:
        """The common start (monotonic ns): warm-up from t0, measured window after it."""
        self.t0_ns = t0_ns
        self.measure_ns = t0_ns + int(self.spec.warmup_s * 1e9)
        self.end_ns = self.measure_ns + int(self.spec.duration_s * 1e9)

    def may_start(self, now_ns: int) -> bool:
        """Whether a call may start now: before the end and, in the measured window, within the cap (counted)."""
        if now_ns >= self.end_ns or (now_ns >= self.measure_ns and self.measured_started >= self.cap):
            return False
        self.measured_started += now_ns >= self.measure_ns
        return True

    def note_wrong(self, example: str | Callable[[], str]) -> None:
        """One wrong answer; the first few are kept in words (`example` may be a callable: built only then)."""
        self.wrong += 1
        if len(self.wrong_examples) < MAX_EXAMPLES:
            self.wrong_examples.append(example() if callable(example) else example)

    def tally(self) -> None:
        """Publish done, errors and wrong for the parent's progress display."""
        if self.counts is not None:
            at = SLOTS * self.index
            self.counts[at], self.counts[at + 1], self.counts[at + 2] = self.done, self.errors, self.wrong

    def open_channel(self) -> grpc.aio.Channel:
        return open_aio_channel(self.spec.target)

    def connected(self, channels: list[grpc.aio.Channel]) -> None:
        raise NotImplementedError

    async def load(self) -> None:
        raise NotImplementedError

    async def disconnect(self) -> None:
        """Before the channels close (e.g. end open streams)."""

    def report(self) -> dict[str, Any]:
        raise NotImplementedError

    async def run(self, ready: Callable[[], None], wait_start: Callable[[], int]) -> dict[str, Any]:
        """Connect, say ready, wait for the common start, run the load; the report with this process's CPU."""
        channels = [self.open_channel() for _ in range(self.spec.channels)]
        try:
            await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), 15.0)
            self.connected(channels)
            ready()
            self.set_start(await asyncio.get_running_loop().run_in_executor(None, wait_start))
            await asyncio.sleep(max(self.t0_ns - time.monotonic_ns(), 0) / 1e9)
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            wall0 = time.monotonic_ns()
            await self.load()
            wall1 = time.monotonic_ns()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            await self.disconnect()
            for ch in channels:
                await ch.close()
        return {"index": self.index, **self.report(), "done": self.done, "wrong": self.wrong,
                "wrong_examples": self.wrong_examples,
                "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
                "wall_s": (wall1 - wall0) / 1e9}


def _client_main(client: type[Client], spec: Any, index: int, msgs: Any, start_event: Any, start_at: Any,
                 counts: Any) -> None:
    """Entry point of a client process: connect, say ready, wait for the common start, load, report."""

    def ready() -> None:
        msgs.put(("ready", index, None))

    def wait_start() -> int:
        if not start_event.wait(120.0):
            raise TimeoutError("no start signal from the parent in 120 s")
        return int(start_at.value)

    try:
        msgs.put(("result", index, asyncio.run(client(spec, index, counts).run(ready, wait_start))))
    except BaseException:
        msgs.put(("error", index, traceback.format_exc()))


def run_fleet(client: type[Client], spec: Any, limit_s: float, server_pids: list[int],
              progress: ProgressFactory | None = None, inline: bool = False
              ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Run the load of `spec.procs` clients once: their results in index order, and the CPU (CpuMeter) from the
    moment every client is connected to the moment the last one reports.  `limit_s`: how long after the start
    the results may take.  `progress(poll)`, if given, is entered while the load runs; poll() returns (calls
    done, errors, wrong answers) so far, summed over the clients."""
    meter: list[CpuMeter] = []

    def poll() -> tuple[int, int, int]:
        return (sum(counts[0::SLOTS]), sum(counts[1::SLOTS]), sum(counts[2::SLOTS]))

    showing = progress(poll) if progress is not None else contextlib.nullcontext()
    if inline and spec.procs == 1:  # nobody to wait for: the load starts at once
        counts: Any = [0] * SLOTS

        def start_now() -> int:
            meter.append(CpuMeter(server_pids))
            return time.monotonic_ns()

        with showing:
            result = asyncio.run(client(spec, 0, counts).run(lambda: None, start_now))
        return [result], meter[0].read()
    ctx = mp.get_context("spawn")  # never fork a process that has gRPC state
    msgs, start_event, start_at = ctx.Queue(), ctx.Event(), ctx.Value("q", 0)
    counts = ctx.Array("q", SLOTS * spec.procs, lock=False)
    procs = [ctx.Process(target=_client_main, args=(client, spec, i, msgs, start_event, start_at, counts),
                         name=f"{client.process_name}-{i}", daemon=True) for i in range(spec.procs)]
    for p in procs:
        p.start()
    results: dict[int, dict[str, Any]] = {}
    try:
        _wait_messages(msgs, procs, "ready", 60.0, {})
        meter.append(CpuMeter(server_pids))
        start_at.value = time.monotonic_ns() + START_DELAY_NS
        start_event.set()
        with showing:
            _wait_messages(msgs, procs, "result", START_DELAY_NS / 1e9 + limit_s, results)
        cpu = meter[0].read()
    finally:
        for p in procs:
            p.join(10.0)
            if p.is_alive():  # our own child, by its PID
                p.terminate()
                p.join(5.0)
        msgs.close()
    return [results[i] for i in sorted(results)], cpu


def _wait_messages(msgs: Any, procs: list[Any], kind: str, timeout_s: float, into: dict[int, Any]) -> None:
    """Wait for one `kind` message from every client; raise on a client's error, death or the timeout."""
    got: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(got) < len(procs):
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"client processes did not report {kind!r} within {timeout_s:.0f} s")
        try:
            what, index, payload = msgs.get(timeout=min(left, 0.5))
        except queue.Empty:
            dead = [p.name for i, p in enumerate(procs) if i not in got and not p.is_alive()]
            if dead and msgs.empty():
                time.sleep(0.2)
                if msgs.empty():
                    raise RuntimeError(f"client process(es) {dead} exited without reporting {kind!r}") from None
            continue
        if what == "error":
            raise RuntimeError(f"client process {index} failed:\n{payload}")
        if what == kind:
            got.add(index)
            if payload is not None:
                into[index] = payload
