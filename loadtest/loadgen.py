"""The load generators: ours (`run_load`: open or closed loops of gRPC calls from a client fleet) and h2load's.

`python -m loadtest.grpc_bench --help` and `python -m loadtest.h2load --help` say how each one measures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from callgate.v1 import decisions_pb2
from server.client import open_channel

from .fleet import Client, ProgressFactory, code_name, open_aio_channel, run_fleet, share
from .process import own_cpu, proc_cpu_seconds
from .report import MAX_EXAMPLES
from .stats import Histogram, RunRecorder, SampleBuffer, merge_all

DEFAULT_TENANT = "acme"
DEFAULT_CALLERS = ["+14155550666", "+14155551234"]
DEFAULT_CALLED = ["+14155550199"]
DEFAULT_AT = 1764613800
METHODS = {"inbound": "/callgate.v1.Decisions/Inbound", "batch": "/callgate.v1.Decisions/DecideBatch",
           "stream": "/callgate.v1.Decisions/Stream"}
STATUS_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}
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



class LoadClient(Client):
    """The load of one client process (runs in its own asyncio loop)."""

    process_name = "grpc-bench"

    def __init__(self, spec: LoadSpec, index: int, counts: Any = None) -> None:
        super().__init__(spec, index, counts, spec.max_requests)
        if spec.mode == "open":
            sys.setswitchinterval(0.0005)  # the timer thread gets the GIL back quickly
        self.spec: LoadSpec = spec
        self.rec = RunRecorder()
        self.latency = SampleBuffer(self.rec.latency)
        self.service = SampleBuffer()  # open loop: answer - actual send
        self.lag = SampleBuffer()  # open loop: actual send - intended start
        self.calls: list[list[Callable[..., Any]]] = []  # [channel][method]
        self.streams: list[_Stream] = []  # stream mode: one per channel
        self.checked = 0  # replies compared with their expectation (warm-up included: every answer counts)

    def open_channel(self) -> grpc.aio.Channel:
        return open_aio_channel(self.spec.target, self.spec.tls_ca, self.spec.token)

    def connected(self, channels: list[grpc.aio.Channel]) -> None:
        # no serializers: the payloads are bytes already and the replies stay bytes
        self.calls = [[ch.unary_unary(m) for m in self.spec.method_list()] for ch in channels]
        if self.spec.stream:
            self.streams = [_Stream(ch.stream_stream(METHODS["stream"])()) for ch in channels]

    async def disconnect(self) -> None:
        for st in self.streams:
            await st.close()

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
                reply = await call(spec.payloads[i], timeout=spec.timeout_s)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            return "DEADLINE_EXCEEDED"
        except Exception as exc:
            return code_name(exc)
        if spec.check is not None and spec.expectations is not None:
            self.checked += 1
            why = spec.check(spec.expectations[i], reply)
            if why is not None:
                expectation = spec.expectations[i]
                self.note_wrong(lambda: (spec.describe(expectation) if spec.describe else f"request #{i}")
                                + f": {why}")
        return "OK"

    def _done(self, intended_ns: int, sent_ns: int, code: str) -> None:
        end = time.monotonic_ns()
        self.done += 1
        self.errors += code != "OK"
        self.tally()
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

    async def load(self) -> None:
        await (self.closed() if self.spec.mode == "closed" else self.open())

    # closed loop: each of `concurrency` coroutines sends its next call as soon as the previous answers
    async def closed(self) -> None:
        n = len(self.spec.payloads)
        concurrency = share(self.spec.concurrency, self.spec.procs, self.index)

        async def lane(k: int) -> None:
            i = self.index + k * self.spec.procs
            while self.may_start(start := time.monotonic_ns()):
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

    def report(self) -> dict[str, Any]:
        self.latency.flush()
        return {"recorder": self.rec.to_dict(), "service": self.service.flush().to_dict(),
                "lag": self.lag.flush().to_dict(), "checked": self.checked}

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



def run_load(spec: LoadSpec, server_pid: int | None = None, progress: ProgressFactory | None = None) -> RunResult:
    """Start `spec.procs` client processes, run the load once, merge their figures.

    `progress(poll)`, if given, is entered while the load runs; poll() returns (calls done, errors, wrong
    answers) so far, summed over the client processes."""
    if spec.mode == "closed" and spec.concurrency < spec.procs:
        raise ValueError("--closed-loop concurrency must be at least --procs")
    cpu_before = own_cpu()
    parts, cpu = run_fleet(LoadClient, spec, spec.warmup_s + spec.duration_s + spec.timeout_s + 60.0,
                           [server_pid] if server_pid else [], progress)
    return RunResult(
        recorder=merge_all(RunRecorder.from_dict(r["recorder"]) for r in parts),
        service=_merge_hists(r["service"] for r in parts), lag=_merge_hists(r["lag"] for r in parts),
        items_per_call=spec.items_per_call, mode=spec.mode, offered_rate=spec.rate,
        completed_total=sum(r["done"] for r in parts),
        client_load_cpu_s=sum(r["cpu_s"] for r in parts), client_total_cpu_s=own_cpu() - cpu_before,
        procs=spec.procs, server_cpu_s=cpu["worker_cpu_s"].get(str(server_pid)) if server_pid else None,
        wall_s=max(r["wall_s"] for r in parts),
        checked=sum(r["checked"] for r in parts), wrong=sum(r["wrong"] for r in parts),
        wrong_examples=[e for r in parts for e in r["wrong_examples"]][:MAX_EXAMPLES])


def _merge_hists(dicts: Any) -> Histogram:
    out = Histogram()
    for d in dicts:
        out.merge(Histogram.from_dict(d))
    return out


def probe_reply(target: str, method: str, message: bytes, timeout_s: float = 5.0) -> bytes:
    """One real gRPC call: the serialized reply (raises grpc.RpcError if the call fails)."""
    with open_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
        reply: bytes = channel.unary_unary(method)(message, timeout=timeout_s)
        return reply


def probe(address: str, rpc: str, payload: bytes, timeout_s: float = 5.0) -> str:
    """One call with the reply parsed: a one-line description; raises grpc.RpcError on failure."""
    reply = probe_reply(address, METHODS[rpc], payload, timeout_s)
    if rpc == "inbound":
        d = decisions_pb2.Decision.FromString(reply)
        return (f"{decisions_pb2.Verdict.Name(d.verdict)} {decisions_pb2.Reason.Name(d.reason)} "
                f"sip={d.sip_status} version={d.version}")
    b = decisions_pb2.BatchReply.FromString(reply)
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


# -- h2load ---------------------------------------------------------------------------------------

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


H2LOAD_ROWS: list[tuple[str, str, Any, bool]] = [
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
