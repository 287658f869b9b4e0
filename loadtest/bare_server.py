"""A bare grpcio server for `callgate.v1.Decisions`: the "plain Python grpcio handler" of SPEC §6.

    python -m loadtest.bare_server --mode aio  --listen 127.0.0.1:0
    python -m loadtest.bare_server --mode sync --listen 127.0.0.1:0 --threads 16

It answers `Inbound` with one dict lookup (the tenant) and one roaring-bitmap
lookup (the caller on the tenant's blacklist), and a nearly constant
`Decision`: REJECT BLACKLISTED (603) for the listed caller +14155550666,
ROUTE otherwise, version 1; `Outbound` with one dict lookup and a constant
ALLOW; `Stream` (aio mode) the same, pipelined.  An unknown tenant is NOT_FOUND.  `DecideBatch`
(INBOUND) checks the column sizes and answers `count` rows of zeros (24
bytes each), so that it measures the transport of a columnar batch.  Every
other method is UNIMPLEMENTED.  It is the baseline the real server is
compared with (`python -m loadtest.grpc_bench --compare-bare`): the engine
may add at most 10 % over it.

When ready it prints `LISTENING <port>` on stdout (port 0 binds a free
port); it stops on SIGTERM or SIGINT.  SO_REUSEPORT is off, so a second
server on the same port fails instead of sharing it.

`start_bare_server(mode)` runs it as a subprocess for the load tools and
the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from concurrent import futures
from pathlib import Path
from types import TracebackType
from typing import Any

import grpc

from callgate.v1 import decisions_pb2, decisions_pb2_grpc

from .stats import stop_process

ROOT = Path(__file__).resolve().parent.parent
SERVER_OPTIONS: list[tuple[str, Any]] = [("grpc.so_reuseport", 0)]
INBOUND_ROW_SIZE = 24


def _blacklist(numbers: list[int]) -> Any:
    """A roaring bitmap of the numbers (a Python set when pyroaring is missing)."""
    try:
        from pyroaring import BitMap64
    except ImportError:  # pragma: no cover - pyroaring is a dependency
        return set(numbers)
    return BitMap64(numbers)


class BareState:
    """Tenants -> (version, blacklist); the only state the handlers read."""

    def __init__(self, tenants: list[str], blacklisted: list[int]) -> None:
        self.tenants: dict[str, tuple[int, Any]] = {t: (1, _blacklist(blacklisted)) for t in tenants}
        self.route = decisions_pb2.Decision(verdict=decisions_pb2.ROUTE, reason=decisions_pb2.OK, version=1,
                                            chat_mode="chat_per_call", lead_trigger="on_answer",
                                            rule="bare server: route")
        self.allow = decisions_pb2.Decision(verdict=decisions_pb2.ALLOW, reason=decisions_pb2.OK, version=1,
                                            chat_mode="chat_per_call", lead_trigger="on_answer",
                                            rule="bare server: allow")
        self.reject = decisions_pb2.Decision(verdict=decisions_pb2.REJECT, reason=decisions_pb2.BLACKLISTED,
                                             sip_status=603, version=1, rule="bare server: blacklisted")

    def inbound(self, request: decisions_pb2.InboundRequest) -> decisions_pb2.Decision | None:
        """The decision, or None for an unknown tenant."""
        entry = self.tenants.get(request.tenant)  # the one dict lookup
        if entry is None:
            return None
        caller = request.caller
        digits = caller[1:] if caller.startswith("+") else caller
        if digits.isdigit() and int(digits) in entry[1]:  # the one bitmap lookup
            return self.reject
        return self.route

    def outbound(self, request: decisions_pb2.OutboundRequest) -> decisions_pb2.Decision | None:
        return self.allow if request.tenant in self.tenants else None

    def batch(self, request: decisions_pb2.BatchRequest) -> tuple[decisions_pb2.BatchReply | None, str]:
        """Rows of zeros, or (None, what is wrong)."""
        entry = self.tenants.get(request.tenant)
        if entry is None:
            return None, f"tenant {request.tenant!r} has no settings"
        n, w = request.count, request.width
        if request.kind != decisions_pb2.BatchRequest.INBOUND:
            return None, "only kind INBOUND is implemented by the bare server"
        if not 1 <= w <= 64 or len(request.a) != n * w or len(request.b) != n * w or len(request.at) != 8 * n:
            return None, f"columns do not match count={n} width={w}"
        return decisions_pb2.BatchReply(version=entry[0], count=n, rows=bytes(INBOUND_ROW_SIZE * n),
                                        row_size=INBOUND_ROW_SIZE), ""


class AioServicer(decisions_pb2_grpc.DecisionsServicer):
    def __init__(self, state: BareState) -> None:
        self.state = state

    async def Inbound(self, request: decisions_pb2.InboundRequest,
                      context: grpc.aio.ServicerContext) -> decisions_pb2.Decision:
        decision = self.state.inbound(request)
        if decision is not None:
            return decision
        await context.abort(grpc.StatusCode.NOT_FOUND, f"tenant {request.tenant!r} has no settings")
        raise AssertionError("abort() raises")

    async def Outbound(self, request: decisions_pb2.OutboundRequest,
                       context: grpc.aio.ServicerContext) -> decisions_pb2.Decision:
        decision = self.state.outbound(request)
        if decision is not None:
            return decision
        await context.abort(grpc.StatusCode.NOT_FOUND, f"tenant {request.tenant!r} has no settings")
        raise AssertionError("abort() raises")

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        async for req in request_iterator:
            which = req.WhichOneof("request")
            decision = (self.state.inbound(req.inbound) if which == "inbound"
                        else self.state.outbound(req.outbound) if which == "outbound" else None)
            if decision is None:
                yield decisions_pb2.StreamReply(id=req.id, error="unknown tenant or request",
                                                error_code=grpc.StatusCode.NOT_FOUND.value[0])
            else:
                yield decisions_pb2.StreamReply(id=req.id, decision=decision)

    async def DecideBatch(self, request: decisions_pb2.BatchRequest,
                          context: grpc.aio.ServicerContext) -> decisions_pb2.BatchReply:
        reply, error = self.state.batch(request)
        if reply is not None:
            return reply
        code = grpc.StatusCode.NOT_FOUND if "tenant" in error else grpc.StatusCode.INVALID_ARGUMENT
        await context.abort(code, error)
        raise AssertionError("abort() raises")


class SyncServicer(decisions_pb2_grpc.DecisionsServicer):
    def __init__(self, state: BareState) -> None:
        self.state = state

    def Inbound(self, request: decisions_pb2.InboundRequest,
                context: grpc.ServicerContext) -> decisions_pb2.Decision:
        decision = self.state.inbound(request)
        if decision is not None:
            return decision
        context.abort(grpc.StatusCode.NOT_FOUND, f"tenant {request.tenant!r} has no settings")
        raise AssertionError("abort() raises")

    def Outbound(self, request: decisions_pb2.OutboundRequest,
                 context: grpc.ServicerContext) -> decisions_pb2.Decision:
        decision = self.state.outbound(request)
        if decision is not None:
            return decision
        context.abort(grpc.StatusCode.NOT_FOUND, f"tenant {request.tenant!r} has no settings")
        raise AssertionError("abort() raises")

    def DecideBatch(self, request: decisions_pb2.BatchRequest,
                    context: grpc.ServicerContext) -> decisions_pb2.BatchReply:
        reply, error = self.state.batch(request)
        if reply is not None:
            return reply
        code = grpc.StatusCode.NOT_FOUND if "tenant" in error else grpc.StatusCode.INVALID_ARGUMENT
        context.abort(code, error)
        raise AssertionError("abort() raises")


def _announce(port: int) -> None:
    sys.stdout.write(f"LISTENING {port}\n")
    sys.stdout.flush()


async def serve_aio(listen: str, state: BareState) -> None:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    decisions_pb2_grpc.add_DecisionsServicer_to_server(AioServicer(state), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"cannot bind {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    _announce(port)
    await stop.wait()
    await server.stop(grace=0.5)


def serve_sync(listen: str, state: BareState, threads: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads), options=SERVER_OPTIONS)
    decisions_pb2_grpc.add_DecisionsServicer_to_server(SyncServicer(state), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"cannot bind {listen}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    _announce(port)
    while not stop.wait(0.5):  # the main thread must wake up for the signal handler to run
        pass
    server.stop(grace=0.5).wait(2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bare_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("aio", "sync"), default="aio",
                        help="grpc.aio server (default) or the sync thread-pool server")
    parser.add_argument("--listen", default="127.0.0.1:0", help="address to bind (default 127.0.0.1:0: a free port)")
    parser.add_argument("--threads", type=int, default=16, help="sync mode: handler threads (default 16)")
    parser.add_argument("--tenant", action="append", default=None,
                        help="tenant known to the server (repeatable; default: acme)")
    parser.add_argument("--blacklisted", action="append", type=int, default=None,
                        help="E.164 digits on every tenant's blacklist (repeatable; default 14155550666)")
    args = parser.parse_args(argv)
    state = BareState(args.tenant or ["acme"], args.blacklisted or [14155550666])
    if args.mode == "aio":
        asyncio.run(serve_aio(args.listen, state))
    else:
        serve_sync(args.listen, state, args.threads)
    return 0


class BareServer:
    """`python -m loadtest.bare_server` as a subprocess of ours; stop() ends it by its PID."""

    def __init__(self, mode: str = "aio", threads: int = 16, extra: list[str] | None = None,
                 start_timeout_s: float = 20.0) -> None:
        self.mode = mode
        cmd = [sys.executable, "-m", "loadtest.bare_server", "--mode", mode, "--listen", "127.0.0.1:0",
               "--threads", str(threads), *(extra or [])]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
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


def start_bare_server(mode: str = "aio", threads: int = 16) -> BareServer:
    return BareServer(mode, threads)


if __name__ == "__main__":
    sys.exit(main())
