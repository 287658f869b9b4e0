"""gRPC load generator for callgate: fixed arrival rate or maximum throughput, several client processes.

    # max throughput of a running server, 64 calls in flight from 2 client processes, 10 s
    python -m loadtest.grpc_bench --target 127.0.0.1:50051 --closed-loop 64 --procs 2 --duration 10

    # latency at a fixed 1,000 calls/s, against the server and the bare baseline in the same run
    python -m loadtest.grpc_bench --target 127.0.0.1:50051 --open-loop 1000 --duration 10 --compare-bare

    # the baseline alone: bare grpc.aio server against the bare sync thread-pool server
    python -m loadtest.grpc_bench --bare aio --bare sync --closed-loop 64 --procs 2 --duration 10

    # columnar batches of 1,000 inbound decisions
    python -m loadtest.grpc_bench --target 127.0.0.1:50051 --rpc batch --closed-loop 4 --compare-bare

Targets.  `--target HOST:PORT` is a server you started (give `--server-pid`
to have its CPU per call measured).  `--bare aio|sync` (repeatable) starts
`python -m loadtest.bare_server` in that mode as a subprocess on a free port
and measures it in the same run; `--compare-bare` is `--bare aio` next to
`--target`.  Targets are measured one after the other under identical load,
`--rounds` times interleaved (A B A B ...), and the table ends with the ratio
of each target to the first bare server (for the server issue: the engine
may add at most 10 %, ratio of throughput >= 0.91).

Load.  `--closed-loop C`: C calls always in flight (split over the client
processes), each sent as soon as the previous one answers; measures maximum
throughput, latency is from send to answer.  `--open-loop R`: R calls per
second in total, at fixed intended start times (process p of P sends the
arrivals p, p+P, p+2P ... of the global schedule), whether or not earlier
calls have answered; latency is measured from each call's *intended* start,
so a stalled server or client is charged for every call it delays (no
coordinated omission, as wrk2 does).  The send lag (actual send - intended
start, the client's own lateness) and the service time (answer - actual send)
are reported separately.  A timer thread (time.sleep) hands the sends to
the asyncio loop, waking up early by its own measured delay (~0.15-0.25 ms
here, tracked by feedback) so that calls leave at their intended time; a call
that leaves early is timed from its actual send.

Bounds.  Every run stops at `--warmup` + `--duration` seconds or after
`--max-requests` measured calls, whichever comes first; calls in flight then
get `--timeout` (per-call deadline) to finish.  Warm-up calls are not
recorded.  In open loop at most `--max-inflight` calls per process are
outstanding: arrivals beyond are not sent and are counted as errors
CLIENT_DROPPED.

Requests.  InboundRequest(tenant, caller, called, at) cycling over the
product of `--caller` x `--called` (defaults: tenant acme, callers
+14155550666 (on the bare server's blacklist) and +14155551234, called
+14155550199, at 1764613800), or over `--requests FILE`, a JSON list of
[caller, called, at].  `--rpc batch` sends BatchRequest kind INBOUND of
`--batch-size` rows (fixed-width cells of `--width` bytes, NUL-padded;
`a` callers, `b` called, `at` int64 little-endian) and reports decisions/s.
Requests are serialized once; replies are not parsed (one probe call per
target before the run is parsed and printed).

Report.  Per target: successful calls/s over the measured window, errors by
gRPC status code, latency percentiles (HDR-like histogram, merged across
processes), client CPU seconds (getrusage of self + children over the run,
and the workers' own CPU during the load phase, as cores busy: near
`--procs` means the client is the bottleneck), and with a known server PID
its CPU per call.  `--json FILE` writes every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import queue
import resource
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from callgate.v1 import decisions_pb2

from . import stats
from .bare_server import BareServer
from .stats import Histogram, RunRecorder, SampleBuffer, merge_all, proc_cpu_seconds

DEFAULT_TENANT = "acme"
DEFAULT_CALLERS = ["+14155550666", "+14155551234"]
DEFAULT_CALLED = ["+14155550199"]
DEFAULT_AT = 1764613800
METHODS = {"inbound": "/callgate.v1.Decisions/Inbound", "batch": "/callgate.v1.Decisions/DecideBatch",
           "stream": "/callgate.v1.Decisions/Stream"}
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
CHANNEL_OPTIONS: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
START_DELAY_NS = 200_000_000  # between "go" and the first intended start, so that every worker is awake
LEAD_INITIAL_NS, LEAD_MAX_NS = 150_000, 1_000_000  # open loop: how early the timer thread wakes up


# -- requests -------------------------------------------------------------------------------------

Row = tuple[str, str, int]


def request_rows(callers: Sequence[str], called: Sequence[str], at: int, requests_file: Path | None) -> list[Row]:
    """(caller, called, at) rows: from the JSON file when given, else the product callers x called."""
    if requests_file is not None:
        data = json.loads(requests_file.read_text())
        if not isinstance(data, list) or not data:
            raise ValueError(f"{requests_file}: expected a non-empty JSON list of [caller, called, at]")
        rows = []
        for i, item in enumerate(data):
            if not (isinstance(item, list | tuple) and len(item) == 3 and isinstance(item[0], str)
                    and isinstance(item[1], str) and isinstance(item[2], int)):
                raise ValueError(f"{requests_file}: item {i} is not [caller, called, at]: {item!r}")
            rows.append((item[0], item[1], item[2]))
        return rows
    return [(a, b, at) for a in callers for b in called]


def inbound_payloads(tenant: str, rows: Sequence[Row]) -> list[bytes]:
    return [decisions_pb2.InboundRequest(tenant=tenant, caller=a, called=b, at=t).SerializeToString()
            for a, b, t in rows]


def fixed_width(values: Sequence[str], width: int) -> bytes:
    """Cells of `width` bytes, UTF-8, NUL-padded, concatenated."""
    out = bytearray()
    for v in values:
        cell = v.encode()
        if len(cell) > width:
            raise ValueError(f"{v!r} is longer than the cell width {width}")
        out += cell.ljust(width, b"\0")
    return bytes(out)


def batch_message(tenant: str, rows: Sequence[Row], width: int) -> decisions_pb2.BatchRequest:
    return decisions_pb2.BatchRequest(
        tenant=tenant, kind=decisions_pb2.BatchRequest.INBOUND, count=len(rows), width=width,
        a=fixed_width([r[0] for r in rows], width), b=fixed_width([r[1] for r in rows], width),
        at=np.asarray([r[2] for r in rows], dtype="<i8").tobytes())


def batch_payloads(tenant: str, rows: Sequence[Row], size: int, width: int, variants: int = 4) -> list[bytes]:
    """A few batches of `size` rows cycling over `rows`, each starting further along the list."""
    out = []
    for v in range(max(1, min(variants, len(rows)))):
        picked = [rows[(v + i) % len(rows)] for i in range(size)]
        out.append(batch_message(tenant, picked, width).SerializeToString())
    return out


# -- one load run, split over worker processes ----------------------------------------------------

@dataclass
class LoadSpec:
    """Everything a worker process needs (pickled to it)."""

    target: str
    method: str
    payloads: list[bytes]
    items_per_call: int  # decisions per call (batch size, or 1)
    mode: str  # "open" | "closed"
    rate: float  # open: calls/s in total
    concurrency: int  # closed: calls in flight in total
    procs: int
    channels: int
    warmup_s: float
    duration_s: float
    max_requests: int  # measured calls, in total
    timeout_s: float
    max_inflight: int  # open: per process
    # A mix of methods: payload i goes to methods[method_of[i]] (None: every payload to `method`).
    methods: list[str] | None = None
    method_of: list[int] | None = None
    # Verification: check(expectations[i], reply bytes) -> None when the reply is right, else what is wrong.
    # `check` must be a module-level function (it is pickled to the client processes).
    check: Callable[[Any, bytes], str | None] | None = None
    expectations: list[Any] | None = None
    describe: Callable[[Any], str] | None = None  # a request in words, for the wrong-answer examples
    # Pipelining: one Stream per connection, `payloads` are StreamRequest bodies without their id (field 1 is
    # put in front when sent: protobuf takes fields in any order), replies matched by id.
    stream: bool = False
    tls_ca: bytes | None = None  # PEM of the CA to trust: TLS
    token: str = ""  # bearer token for a server with --auth

    def method_list(self) -> list[str]:
        return self.methods if self.methods else [self.method]


MAX_WRONG_EXAMPLES = 10


def share(total: int, parts: int, index: int) -> int:
    """Part `index` of `total` split as evenly as possible in `parts`."""
    return total // parts + (1 if index < total % parts else 0)


def _code_name(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code().name
    return f"EXCEPTION_{type(exc).__name__}"


def _id_field(value: int) -> bytes:
    """Field 1 (varint) of a protobuf message: the StreamRequest id."""
    out = bytearray(b"\x08")
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(TimeoutError())


class _Stream:
    """One bidirectional Stream: a writer task sends requests in order, a reader task matches replies by id."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.next_id = 1
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.writer = asyncio.create_task(self._write())
        self.reader = asyncio.create_task(self._read())

    async def _write(self) -> None:
        while (item := await self.queue.get()) is not None:
            await self.call.write(item)
        await self.call.done_writing()

    async def _read(self) -> None:
        try:
            async for raw in self.call:
                reply = decisions_pb2.StreamReply.FromString(raw)
                future = self.pending.pop(reply.id, None)
                if future is not None and not future.done():
                    future.set_result(reply)
        except Exception as exc:  # the stream broke: every request waiting on it fails with its status
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(exc)
            self.pending.clear()

    async def request(self, body: bytes, timeout_s: float) -> Any:
        ident, self.next_id = self.next_id, self.next_id + 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[ident] = future
        self.queue.put_nowait(_id_field(ident) + body)
        # a timer on the future itself: wait_for would add a waiter task and a loop pass to every request
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()
            self.pending.pop(ident, None)

    async def close(self) -> None:
        self.queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer, 5.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.reader, 5.0)


def open_aio_channel(target: str, tls_ca: bytes | None) -> grpc.aio.Channel:
    if tls_ca is not None:
        return grpc.aio.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=tls_ca),
                                       options=CHANNEL_OPTIONS)
    return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)


class _Worker:
    """The load of one process (runs in its own asyncio loop)."""

    def __init__(self, spec: LoadSpec, index: int, counts: Any = None) -> None:
        self.spec, self.index, self.counts = spec, index, counts
        self.set_start(0)
        self.cap = share(spec.max_requests, spec.procs, index)
        self.rec = RunRecorder()
        self.latency = SampleBuffer(self.rec.latency)
        self.service = SampleBuffer()  # open loop: answer - actual send
        self.lag = SampleBuffer()  # open loop: actual send - intended start
        self.measured_started = 0
        self.completed_total = 0  # including warm-up
        self.calls: list[list[Callable[..., Any]]] = []  # [channel][method]
        self.streams: list[_Stream] = []  # stream mode: one per channel
        self.metadata: tuple[tuple[str, str], ...] | None = None
        self.checked = 0  # replies compared with their expectation (warm-up included: every answer counts)
        self.wrong = 0
        self.wrong_examples: list[str] = []

    def set_start(self, t0_ns: int) -> None:
        """The common start (monotonic ns): warm-up from t0, measured window after it."""
        self.t0_ns = t0_ns
        self.measure_ns = t0_ns + int(self.spec.warmup_s * 1e9)
        self.end_ns = self.measure_ns + int(self.spec.duration_s * 1e9)

    async def _one(self, seq: int, channel: int) -> str:
        """Send request `seq` (modulo the payloads) on `channel`; check the reply when asked to."""
        spec = self.spec
        i = seq % len(spec.payloads)
        reply: Any
        try:
            if spec.stream:
                answer = await self.streams[channel % len(self.streams)].request(spec.payloads[i], spec.timeout_s)
                if answer.error:
                    return STATUS_NAMES.get(answer.error_code, "UNKNOWN")
                reply = getattr(answer, answer.WhichOneof("reply"))
            else:
                call = self.calls[channel % len(self.calls)][spec.method_of[i] if spec.method_of else 0]
                reply = await call(spec.payloads[i], timeout=spec.timeout_s, metadata=self.metadata)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return "DEADLINE_EXCEEDED"
        except Exception as exc:
            return _code_name(exc)
        if spec.check is not None and spec.expectations is not None:
            self.checked += 1
            why = spec.check(spec.expectations[i], reply)
            if why is not None:
                self.wrong += 1
                if len(self.wrong_examples) < MAX_WRONG_EXAMPLES:
                    what = spec.describe(spec.expectations[i]) if spec.describe else f"request #{i}"
                    self.wrong_examples.append(f"{what}: {why}")
        return "OK"

    def _done(self, intended_ns: int, sent_ns: int, code: str) -> None:
        end = time.monotonic_ns()
        self.completed_total += 1
        if self.counts is not None:
            at = 3 * self.index
            self.counts[at] = self.completed_total
            if code != "OK":
                self.counts[at + 1] += 1
            self.counts[at + 2] = self.wrong
        if intended_ns >= self.measure_ns:
            # from the intended start, or from the actual send when the timer fired a little early
            latency = end - min(intended_ns, sent_ns)
            self.latency.add(latency)
            self.rec.timeline.add(intended_ns, latency)
            self.rec.add_outcome(code)
            self.rec.window(intended_ns, end)
            if self.spec.mode == "open":
                self.service.add(end - sent_ns)
                self.lag.add(max(sent_ns - intended_ns, 0))

    # closed loop: each of `concurrency` coroutines sends its next call as soon as the previous answers
    async def closed(self) -> None:
        n = len(self.spec.payloads)
        concurrency = share(self.spec.concurrency, self.spec.procs, self.index)

        async def lane(k: int) -> None:
            i = self.index + k * self.spec.procs
            while True:
                start = time.monotonic_ns()
                if start >= self.end_ns:
                    return
                if start >= self.measure_ns:
                    if self.measured_started >= self.cap:
                        return
                    self.measured_started += 1
                code = await self._one(i % n, k)
                self._done(start, start, code)
                i += self.spec.concurrency

        await asyncio.gather(*(lane(k) for k in range(concurrency)))

    # open loop: a timer thread releases the calls at their intended start times
    async def open(self) -> None:
        spec, loop = self.spec, asyncio.get_running_loop()
        n = len(spec.payloads)
        rate = spec.rate
        pending: set[asyncio.Task[None]] = set()
        scheduled = asyncio.Event()
        stop = threading.Event()
        # The timer wakes `lead` ns before each intended start, to absorb its own wake-up delay (sleep
        # overshoot, the hand-over to the loop, the task start: ~0.15-0.25 ms here).  `lead` follows the
        # measured lag (feedback, clipped to [0, 1 ms]), so that calls leave close to their intended time.
        lead = [LEAD_INITIAL_NS]

        async def send(seq: int, intended: int) -> None:
            sent = time.monotonic_ns()
            lead[0] = min(max(lead[0] + (sent - intended) // 8, 0), LEAD_MAX_NS)
            code = await self._one(seq % n, seq)
            self._done(intended, sent, code)

        def fire(batch: list[tuple[int, int]]) -> None:
            for seq, intended in batch:
                if len(pending) >= spec.max_inflight:
                    if intended >= self.measure_ns:
                        self.rec.add_outcome("CLIENT_DROPPED")
                    continue
                task = loop.create_task(send(seq, intended))
                pending.add(task)
                task.add_done_callback(pending.discard)

        def timer() -> None:
            j = 0  # this process's j-th arrival is the global arrival index + j * procs
            measured = 0
            try:
                while not stop.is_set():
                    seq = self.index + j * spec.procs
                    due = self.t0_ns + int(seq * 1e9 / rate)
                    if due >= self.end_ns or measured >= self.cap:
                        break
                    now = time.monotonic_ns()
                    if due - lead[0] > now:
                        time.sleep((due - lead[0] - now) / 1e9)
                        now = time.monotonic_ns()
                    now += lead[0]
                    batch: list[tuple[int, int]] = []
                    while due <= now and due < self.end_ns and measured < self.cap and len(batch) < 256:
                        batch.append((seq, due))
                        measured += due >= self.measure_ns
                        j += 1
                        seq = self.index + j * spec.procs
                        due = self.t0_ns + int(seq * 1e9 / rate)
                    if batch:
                        loop.call_soon_threadsafe(fire, batch)
            finally:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to tell
                    loop.call_soon_threadsafe(scheduled.set)

        thread = threading.Thread(target=timer, name="open-loop-timer", daemon=True)
        thread.start()
        try:
            await scheduled.wait()
            if pending:
                await asyncio.wait(set(pending), timeout=spec.timeout_s + 2.0)
        finally:
            stop.set()
            for task in list(pending):
                task.cancel()
            if pending:
                await asyncio.wait(set(pending), timeout=2.0)
            thread.join(2.0)

    async def run(self, ready: Callable[[], None], wait_start: Callable[[], int]) -> dict[str, Any]:
        channels = [open_aio_channel(self.spec.target, self.spec.tls_ca) for _ in range(self.spec.channels)]
        self.metadata = (("authorization", f"Bearer {self.spec.token}"),) if self.spec.token else None
        try:
            await asyncio.wait_for(asyncio.gather(*(ch.channel_ready() for ch in channels)), 15.0)
            # no serializers: the payloads are bytes already and the replies stay bytes
            self.calls = [[ch.unary_unary(m) for m in self.spec.method_list()] for ch in channels]
            if self.spec.stream:
                self.streams = [_Stream(ch.stream_stream(METHODS["stream"])(metadata=self.metadata))
                                for ch in channels]
            ready()
            self.set_start(await asyncio.get_running_loop().run_in_executor(None, wait_start))
            await asyncio.sleep(max(self.t0_ns - time.monotonic_ns(), 0) / 1e9)
            ru0 = resource.getrusage(resource.RUSAGE_SELF)
            wall0 = time.monotonic_ns()
            if self.spec.mode == "closed":
                await self.closed()
            else:
                await self.open()
            wall1 = time.monotonic_ns()
            ru1 = resource.getrusage(resource.RUSAGE_SELF)
        finally:
            for st in self.streams:
                await st.close()
            for ch in channels:
                await ch.close()
        self.latency.flush()
        return {
            "index": self.index,
            "recorder": self.rec.to_dict(),
            "service": self.service.flush().to_dict(),
            "lag": self.lag.flush().to_dict(),
            "completed_total": self.completed_total,
            "checked": self.checked, "wrong": self.wrong, "wrong_examples": self.wrong_examples,
            "cpu_s": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
            "wall_s": (wall1 - wall0) / 1e9,
        }


def start_signals(msgs: Any, index: int, start_event: Any, start_at: Any
                  ) -> tuple[Callable[[], None], Callable[[], int]]:
    """In a client process: `ready()` tells the parent it is connected, `wait_start()` waits for the
    common start and returns its CLOCK_MONOTONIC ns (the same clock in every process)."""

    def ready() -> None:
        msgs.put(("ready", index, None))

    def wait_start() -> int:
        if not start_event.wait(120.0):
            raise TimeoutError("no start signal from the parent in 120 s")
        return int(start_at.value)

    return ready, wait_start


def _worker_main(spec: LoadSpec, index: int, msgs: Any, start_event: Any, start_at: Any, counts: Any = None
                 ) -> None:
    """Entry point of a client process: connect, say ready, wait for the common start, load, report."""
    if spec.mode == "open":
        sys.setswitchinterval(0.0005)  # the timer thread gets the GIL back quickly

    ready, wait_start = start_signals(msgs, index, start_event, start_at)
    try:
        result = asyncio.run(_Worker(spec, index, counts).run(ready, wait_start))
        msgs.put(("result", index, result))
    except BaseException:
        msgs.put(("error", index, traceback.format_exc()))


@dataclass
class RunResult:
    """One measured run against one target (the processes merged)."""

    recorder: RunRecorder
    service: Histogram
    lag: Histogram
    items_per_call: int
    mode: str
    offered_rate: float
    completed_total: int
    client_load_cpu_s: float  # the workers' CPU during the load phase
    client_total_cpu_s: float  # getrusage self + children over the whole run (incl. process start-up)
    procs: int
    server_cpu_s: float | None
    wall_s: float
    extra: dict[str, Any] = field(default_factory=dict)
    checked: int = 0  # replies compared with their expectation
    wrong: int = 0
    wrong_examples: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        return self.recorder.throughput()

    def figures(self) -> dict[str, Any]:
        rec = self.recorder
        elapsed = rec.elapsed_s
        out: dict[str, Any] = {
            "mode": self.mode, "ok": rec.ok, "errors": rec.errors, "elapsed_s": elapsed,
            "throughput_rps": self.throughput, "decisions_per_s": self.throughput * self.items_per_call,
            "latency_ms": rec.latency.summary(),
            "client_load_cpu_s": self.client_load_cpu_s, "client_total_cpu_s": self.client_total_cpu_s,
            "client_cores_busy": self.client_load_cpu_s / self.wall_s if self.wall_s > 0 else 0.0,
            "client_procs": self.procs, "completed_total": self.completed_total,
        }
        if self.mode == "open":
            out["offered_rps"] = self.offered_rate
            out["service_ms"] = self.service.summary()
            out["send_lag_ms"] = self.lag.summary()
        if self.server_cpu_s is not None:
            out["server_cpu_s"] = self.server_cpu_s
            out["server_cores_busy"] = self.server_cpu_s / self.wall_s if self.wall_s > 0 else 0.0
            if self.completed_total:
                out["server_cpu_us_per_call"] = self.server_cpu_s / self.completed_total * 1e6
                out["server_cpu_us_per_decision"] = out["server_cpu_us_per_call"] / self.items_per_call
        return out


def _cpu_of_children_and_self() -> float:
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def spawn_clients(main: Callable[..., None], spec: Any, procs: int, slots: int, name: str
                  ) -> tuple[Any, Any, Any, Any, list[Any]]:
    """Start `procs` client processes running main(spec, index, msgs, start_event, start_at, shared): a
    message queue, the common start (an event and its CLOCK_MONOTONIC ns), and `slots` shared integers per
    process (one writer each: no lock)."""
    ctx = mp.get_context("spawn")  # never fork a process that has gRPC state
    msgs, start_event, start_at = ctx.Queue(), ctx.Event(), ctx.Value("q", 0)
    shared = ctx.Array("q", slots * procs, lock=False)
    started = [ctx.Process(target=main, args=(spec, i, msgs, start_event, start_at, shared),
                           name=f"{name}-{i}", daemon=True) for i in range(procs)]
    for p in started:
        p.start()
    return msgs, start_event, start_at, shared, started


ProgressFactory = Callable[[Callable[[], tuple[int, int, int]]], contextlib.AbstractContextManager[Any]]


def run_load(spec: LoadSpec, server_pid: int | None = None, progress: ProgressFactory | None = None) -> RunResult:
    """Start `spec.procs` client processes, run the load once, merge their figures.

    `progress(poll)`, if given, is entered while the load runs; poll() returns (calls done, errors, wrong
    answers) so far, summed over the client processes."""
    if spec.mode == "closed" and spec.concurrency < spec.procs:
        raise ValueError("--closed-loop concurrency must be at least --procs")
    cpu_before = _cpu_of_children_and_self()
    # (done, errors, wrong) per process: one writer per slot, read only for display, so no lock
    msgs, start_event, start_at, counts, procs = spawn_clients(_worker_main, spec, spec.procs, 3, "grpc-bench")
    results: dict[int, dict[str, Any]] = {}
    try:
        _wait_messages(msgs, procs, "ready", 60.0, {})
        server_cpu0 = proc_cpu_seconds(server_pid) if server_pid else None
        start_at.value = time.monotonic_ns() + START_DELAY_NS
        wall0 = time.monotonic()
        start_event.set()
        limit = START_DELAY_NS / 1e9 + spec.warmup_s + spec.duration_s + spec.timeout_s + 60.0

        def poll() -> tuple[int, int, int]:
            return (sum(counts[0::3]), sum(counts[1::3]), sum(counts[2::3]))

        with progress(poll) if progress is not None else contextlib.nullcontext():
            _wait_messages(msgs, procs, "result", limit, results)
        wall = time.monotonic() - wall0 - START_DELAY_NS / 1e9
        server_cpu1 = proc_cpu_seconds(server_pid) if server_pid else None
    finally:
        for p in procs:
            p.join(10.0)
            if p.is_alive():  # our own child, by its PID
                p.terminate()
                p.join(5.0)
        msgs.close()
    cpu_after = _cpu_of_children_and_self()
    parts = [results[i] for i in sorted(results)]
    server_cpu = server_cpu1 - server_cpu0 if server_cpu0 is not None and server_cpu1 is not None else None
    return RunResult(
        recorder=merge_all(RunRecorder.from_dict(r["recorder"]) for r in parts),
        service=_merge_hists(r["service"] for r in parts), lag=_merge_hists(r["lag"] for r in parts),
        items_per_call=spec.items_per_call, mode=spec.mode, offered_rate=spec.rate,
        completed_total=sum(r["completed_total"] for r in parts),
        client_load_cpu_s=sum(r["cpu_s"] for r in parts), client_total_cpu_s=cpu_after - cpu_before,
        procs=spec.procs, server_cpu_s=server_cpu, wall_s=max(r["wall_s"] for r in parts) if parts else wall,
        checked=sum(r["checked"] for r in parts), wrong=sum(r["wrong"] for r in parts),
        wrong_examples=[e for r in parts for e in r["wrong_examples"]][:MAX_WRONG_EXAMPLES])


def _merge_hists(dicts: Any) -> Histogram:
    out = Histogram()
    for d in dicts:
        out.merge(Histogram.from_dict(d))
    return out


def _wait_messages(msgs: Any, procs: list[Any], kind: str, timeout_s: float, into: dict[int, Any]) -> None:
    """Wait for one `kind` message from every worker; raise on a worker's error, death or the timeout."""
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


# -- targets, probe, report -----------------------------------------------------------------------

@dataclass
class Target:
    name: str
    address: str
    pid: int | None = None
    bare: BareServer | None = None
    runs: list[RunResult] = field(default_factory=list)


def probe(address: str, rpc: str, payload: bytes, timeout_s: float = 5.0) -> str:
    """One call with the reply parsed: a one-line description; raises grpc.RpcError on failure."""
    with grpc.insecure_channel(address) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        if rpc == "inbound":
            d = channel.unary_unary(METHODS[rpc], response_deserializer=decisions_pb2.Decision.FromString)(
                payload, timeout=timeout_s)
            return (f"{decisions_pb2.Verdict.Name(d.verdict)} {decisions_pb2.Reason.Name(d.reason)} "
                    f"sip={d.sip_status} version={d.version}")
        b = channel.unary_unary(METHODS[rpc], response_deserializer=decisions_pb2.BatchReply.FromString)(
            payload, timeout=timeout_s)
        return f"{b.count} rows of {b.row_size} bytes, version {b.version}"


def combine(runs: list[RunResult]) -> dict[str, Any]:
    """Figures of a target over its rounds: median throughput, latency from every round's samples."""
    if len(runs) == 1:
        return runs[0].figures()
    merged = RunResult(
        recorder=merge_all(r.recorder for r in runs), service=_merge_hists(r.service.to_dict() for r in runs),
        lag=_merge_hists(r.lag.to_dict() for r in runs), items_per_call=runs[0].items_per_call,
        mode=runs[0].mode, offered_rate=runs[0].offered_rate,
        completed_total=sum(r.completed_total for r in runs),
        client_load_cpu_s=sum(r.client_load_cpu_s for r in runs),
        client_total_cpu_s=sum(r.client_total_cpu_s for r in runs), procs=runs[0].procs,
        server_cpu_s=None if any(r.server_cpu_s is None for r in runs) else sum(r.server_cpu_s or 0 for r in runs),
        wall_s=sum(r.wall_s for r in runs))
    out = merged.figures()
    rates = [r.throughput for r in runs]
    out["throughput_rps"] = statistics.median(rates)
    out["decisions_per_s"] = out["throughput_rps"] * runs[0].items_per_call
    out["throughput_rounds"] = rates
    out["elapsed_s"] = sum(r.recorder.elapsed_s for r in runs)
    return out


ROWS: list[tuple[str, str, Callable[[dict[str, Any]], float | None], bool]] = [
    # (label, format, getter, ratio wanted)
    ("calls/s (ok)", "{:,.0f}", lambda f: f["throughput_rps"], True),
    ("decisions/s", "{:,.0f}", lambda f: f["decisions_per_s"], True),
    ("offered calls/s", "{:,.0f}", lambda f: f.get("offered_rps"), False),
    ("ok calls", "{:,.0f}", lambda f: f["ok"], False),
    ("errors", "{:,.0f}", lambda f: sum(f["errors"].values()), False),
    ("latency p50 ms", "{:.3f}", lambda f: f["latency_ms"]["p50"], True),
    ("latency p90 ms", "{:.3f}", lambda f: f["latency_ms"]["p90"], True),
    ("latency p99 ms", "{:.3f}", lambda f: f["latency_ms"]["p99"], True),
    ("latency p99.9 ms", "{:.3f}", lambda f: f["latency_ms"]["p99.9"], True),
    ("latency max ms", "{:.3f}", lambda f: f["latency_ms"]["max"], False),
    ("service p50 ms", "{:.3f}", lambda f: f.get("service_ms", {}).get("p50"), True),
    ("service p99 ms", "{:.3f}", lambda f: f.get("service_ms", {}).get("p99"), True),
    ("send lag p99 ms", "{:.3f}", lambda f: f.get("send_lag_ms", {}).get("p99"), False),
    ("client CPU s (load)", "{:.2f}", lambda f: f["client_load_cpu_s"], False),
    ("client CPU s (total)", "{:.2f}", lambda f: f["client_total_cpu_s"], False),
    ("client cores busy", "{:.2f}", lambda f: f["client_cores_busy"], False),
    ("server cores busy", "{:.2f}", lambda f: f.get("server_cores_busy"), False),
    ("server CPU µs/call", "{:.0f}", lambda f: f.get("server_cpu_us_per_call"), True),
]


def format_table(figures: dict[str, dict[str, Any]], reference: str | None, batch: bool) -> str:
    rows = [row for row in ROWS if batch or row[0] != "decisions/s"]
    text = stats.format_table(figures, reference, rows)
    names = list(figures)
    errors = [f"  {n}: " + ", ".join(f"{k} {v}" for k, v in figures[n]["errors"].items())
              for n in names if figures[n]["errors"]]
    if errors:
        text += "\nerrors by status code:\n" + "\n".join(errors)
    return text


def warnings_for(name: str, f: dict[str, Any]) -> list[str]:
    out = []
    procs = f["client_procs"]
    if f["client_cores_busy"] > 0.85 * procs:
        out.append(f"{name}: client processes were {f['client_cores_busy']:.2f} cores busy out of {procs}: "
                   "the client may be the bottleneck (add --procs, or a faster client such as h2load)")
    if (os.cpu_count() or 1) <= 2 and f["client_cores_busy"] + f.get("server_cores_busy", 0.0) > 1.8:
        out.append(f"{name}: client and server share {os.cpu_count()} cores and kept them busy: "
                   "throughput is bounded by the machine, not only by the server")
    if f["mode"] == "open" and f.get("send_lag_ms", {}).get("p99", 0.0) > 1.0:
        out.append(f"{name}: p99 send lag {f['send_lag_ms']['p99']:.2f} ms: the client was late for its own "
                   "schedule; latency includes that lateness")
    if f["mode"] == "open" and f["throughput_rps"] < 0.95 * f.get("offered_rps", 0.0):
        out.append(f"{name}: answered {f['throughput_rps']:,.0f} calls/s of {f['offered_rps']:,.0f} offered")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.grpc_bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("targets")
    g.add_argument("--target", help="HOST:PORT of a running callgate server (127.0.0.1 only)")
    g.add_argument("--target-name", default="target", help="its column name in the table (default: target)")
    g.add_argument("--server-pid", type=int, help="PID of the --target server, to measure its CPU per call")
    g.add_argument("--compare-bare", action="store_true",
                   help="also start loadtest.bare_server (aio) and run the same load against it; ratios target/bare")
    g.add_argument("--bare", action="append", choices=("aio", "sync"), default=[],
                   help="start a bare server of this mode and measure it too (repeatable)")
    g.add_argument("--bare-threads", type=int, default=16, help="handler threads of a sync bare server (16)")
    g = p.add_argument_group("load (one of)")
    m = g.add_mutually_exclusive_group(required=True)
    m.add_argument("--open-loop", type=float, metavar="RATE", help="fixed arrival rate, calls/s in total")
    m.add_argument("--closed-loop", type=int, metavar="CONCURRENCY", help="calls in flight in total (max throughput)")
    g.add_argument("--rpc", choices=("inbound", "batch"), default="inbound", help="Inbound (default) or DecideBatch")
    g.add_argument("--duration", type=float, default=10.0, help="measured seconds per run (default 10)")
    g.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds before each run (default 1)")
    g.add_argument("--max-requests", type=int, default=1_000_000,
                   help="stop a run after this many measured calls (default 1,000,000)")
    g.add_argument("--procs", type=int, default=2, help="client processes (default 2)")
    g.add_argument("--channels", type=int, default=1, help="gRPC channels (connections) per process (default 1)")
    g.add_argument("--timeout", type=float, default=5.0, help="deadline of each call, seconds (default 5)")
    g.add_argument("--max-inflight", type=int, default=10_000,
                   help="open loop: outstanding calls per process beyond which arrivals are dropped (10,000)")
    g.add_argument("--rounds", type=int, default=1, help="runs per target, interleaved across targets (default 1)")
    g = p.add_argument_group("requests")
    g.add_argument("--tenant", default=DEFAULT_TENANT, help=f"tenant (default {DEFAULT_TENANT})")
    g.add_argument("--caller", action="append", help=f"caller (repeatable; default {' '.join(DEFAULT_CALLERS)})")
    g.add_argument("--called", action="append", help=f"called number (repeatable; default {DEFAULT_CALLED[0]})")
    g.add_argument("--at", type=int, default=DEFAULT_AT, help=f"instant, UTC seconds (default {DEFAULT_AT})")
    g.add_argument("--requests", type=Path, metavar="FILE",
                   help="JSON list of [caller, called, at] (overrides the above)")
    g.add_argument("--batch-size", type=int, default=1000, help="rows per DecideBatch call (default 1000)")
    g.add_argument("--width", type=int, default=16, help="bytes per text cell in batches (default 16)")
    g = p.add_argument_group("output")
    g.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    bare_modes = list(dict.fromkeys(args.bare + (["aio"] if args.compare_bare and not args.bare else [])))
    if not args.target and not bare_modes:
        raise SystemExit("give --target HOST:PORT and/or --bare aio|sync (or --compare-bare)")
    if args.procs < 1 or args.duration <= 0 or args.max_requests < args.procs or args.rounds < 1:
        raise SystemExit("need --procs >= 1, --duration > 0, --max-requests >= --procs, --rounds >= 1")
    if args.open_loop is not None and args.open_loop <= 0:
        raise SystemExit("--open-loop RATE must be > 0")
    rows = request_rows(args.caller or DEFAULT_CALLERS, args.called or DEFAULT_CALLED, args.at, args.requests)
    if args.rpc == "inbound":
        payloads, items = inbound_payloads(args.tenant, rows), 1
    else:
        payloads, items = batch_payloads(args.tenant, rows, args.batch_size, args.width), args.batch_size
    spec = LoadSpec(target="", method=METHODS[args.rpc], payloads=payloads, items_per_call=items,
                    mode="open" if args.open_loop is not None else "closed", rate=float(args.open_loop or 0.0),
                    concurrency=int(args.closed_loop or 0), procs=args.procs, channels=args.channels,
                    warmup_s=args.warmup, duration_s=args.duration, max_requests=args.max_requests,
                    timeout_s=args.timeout, max_inflight=args.max_inflight)

    targets: list[Target] = []
    if args.target:
        targets.append(Target(args.target_name, args.target, args.server_pid))
    try:
        for mode in bare_modes:
            server = BareServer(mode, args.bare_threads)
            targets.append(Target(f"bare-{mode}", server.address, server.pid, server))
        load = (f"open loop {spec.rate:,.0f} calls/s" if spec.mode == "open"
                else f"closed loop, {spec.concurrency} in flight")
        print(f"{args.rpc}: {load}, {spec.procs} client process(es) x {spec.channels} channel(s), "
              f"{spec.warmup_s:g} s warm-up + {spec.duration_s:g} s (or {spec.max_requests:,} calls), "
              f"{len(payloads)} distinct request(s), {spec.items_per_call} decision(s) per call")
        for t in targets:
            try:
                print(f"  probe {t.name} ({t.address}): {probe(t.address, args.rpc, payloads[0])}")
            except grpc.FutureTimeoutError:
                raise SystemExit(f"{t.name}: nothing answers at {t.address}") from None
            except grpc.RpcError as exc:
                print(f"  probe {t.name} ({t.address}): {exc.code().name}: {exc.details()}")
        for r in range(args.rounds):
            for t in targets:
                spec.target = t.address
                result = run_load(spec, t.pid)
                t.runs.append(result)
                f = result.figures()
                print(f"  round {r + 1} {t.name}: {f['throughput_rps']:,.0f} calls/s, p50 "
                      f"{f['latency_ms']['p50']:.3f} ms, p99 {f['latency_ms']['p99']:.3f} ms, "
                      f"{sum(f['errors'].values())} errors", flush=True)
    finally:
        for t in targets:
            if t.bare is not None:
                t.bare.stop()

    figures = {t.name: combine(t.runs) for t in targets}
    reference = next((t.name for t in targets if t.bare is not None), None)
    if reference is not None and len(targets) == 1:
        reference = None
    print()
    print(format_table(figures, reference, args.rpc == "batch"))
    notes = [w for name, f in figures.items() for w in warnings_for(name, f)]
    if args.rounds > 1:
        notes.append(f"calls/s is the median of {args.rounds} rounds; latency merges every round's samples")
    for n in notes:
        print(f"note: {n}")
    ratios = {}
    if reference is not None:
        for name, f in figures.items():
            if name != reference:
                ref = figures[reference]
                ratios[f"{name}/{reference}"] = {
                    "throughput": f["throughput_rps"] / ref["throughput_rps"] if ref["throughput_rps"] else None,
                    "p50": f["latency_ms"]["p50"] / ref["latency_ms"]["p50"] if ref["latency_ms"]["p50"] else None,
                    "p99": f["latency_ms"]["p99"] / ref["latency_ms"]["p99"] if ref["latency_ms"]["p99"] else None,
                }
    if args.json:
        config = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        spec_public = {k: v for k, v in asdict(spec).items() if k != "payloads"}
        data = {"config": config, "spec": spec_public, "machine": {"cpus": os.cpu_count()},
                "results": figures, "ratios": ratios, "notes": notes,
                "addresses": {t.name: t.address for t in targets}}
        args.json.write_text(json.dumps(data, indent=2) + "\n")
        print(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
