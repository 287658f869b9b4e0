"""A bare grpcio server for `callgate.v1.Decisions`: the "plain Python grpcio handler" of spec §6.

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
server on the same port fails instead of sharing it; with `--reuse-port` it
is on, so that N of them on one port are the baseline of `callgate serve
--workers N` (whose workers share their port the same way).

`loadtest.process.BareServer` runs it as a subprocess for the load tools and
the tests.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import threading
from concurrent import futures
from typing import Any

import grpc

from callgate.v1 import decisions_pb2, decisions_pb2_grpc

SERVER_OPTIONS: list[tuple[str, Any]] = [("grpc.so_reuseport", 0)]
REUSE_PORT_OPTIONS: list[tuple[str, Any]] = [("grpc.so_reuseport", 1)]
INBOUND_ROW_SIZE = 24


def _blacklist(numbers: list[int]) -> Any:
    """A roaring bitmap of the numbers (a Python set when pyroaring is missing)."""
    try:
        from pyroaring import BitMap64
    except ImportError:  # pragma: no cover - pyroaring is a dependency
        return set(numbers)
    return BitMap64(numbers)


Answer = tuple[Any, grpc.StatusCode, str]  # (reply, or None and the status and details to abort with)


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

    @staticmethod
    def _unknown(tenant: str) -> Answer:
        return None, grpc.StatusCode.NOT_FOUND, f"tenant {tenant!r} has no settings"

    def inbound(self, request: decisions_pb2.InboundRequest) -> Answer:
        entry = self.tenants.get(request.tenant)  # the one dict lookup
        if entry is None:
            return self._unknown(request.tenant)
        caller = request.caller
        digits = caller[1:] if caller.startswith("+") else caller
        if digits.isdigit() and int(digits) in entry[1]:  # the one bitmap lookup
            return self.reject, grpc.StatusCode.OK, ""
        return self.route, grpc.StatusCode.OK, ""

    def outbound(self, request: decisions_pb2.OutboundRequest) -> Answer:
        if request.tenant not in self.tenants:
            return self._unknown(request.tenant)
        return self.allow, grpc.StatusCode.OK, ""

    def batch(self, request: decisions_pb2.BatchRequest) -> Answer:
        """Rows of zeros."""
        entry = self.tenants.get(request.tenant)
        if entry is None:
            return self._unknown(request.tenant)
        n, w = request.count, request.width
        if request.kind != decisions_pb2.BatchRequest.INBOUND:
            return None, grpc.StatusCode.INVALID_ARGUMENT, "only kind INBOUND is implemented by the bare server"
        if not 1 <= w <= 64 or len(request.a) != n * w or len(request.b) != n * w or len(request.at) != 8 * n:
            return None, grpc.StatusCode.INVALID_ARGUMENT, f"columns do not match count={n} width={w}"
        return decisions_pb2.BatchReply(version=entry[0], count=n, rows=bytes(INBOUND_ROW_SIZE * n),
                                        row_size=INBOUND_ROW_SIZE), grpc.StatusCode.OK, ""


class AioServicer(decisions_pb2_grpc.DecisionsServicer):
    def __init__(self, state: BareState) -> None:
        self.state = state

    @staticmethod
    async def _answer(context: grpc.aio.ServicerContext, answer: Answer) -> Any:
        reply, code, details = answer
        if reply is None:
            await context.abort(code, details)
        return reply

    async def Inbound(self, request: Any, context: grpc.aio.ServicerContext) -> decisions_pb2.Decision:
        return await self._answer(context, self.state.inbound(request))

    async def Outbound(self, request: Any, context: grpc.aio.ServicerContext) -> decisions_pb2.Decision:
        return await self._answer(context, self.state.outbound(request))

    async def DecideBatch(self, request: Any, context: grpc.aio.ServicerContext) -> decisions_pb2.BatchReply:
        return await self._answer(context, self.state.batch(request))

    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> Any:
        async for req in request_iterator:
            which = req.WhichOneof("request")
            decision = (self.state.inbound(req.inbound)[0] if which == "inbound"
                        else self.state.outbound(req.outbound)[0] if which == "outbound" else None)
            if decision is None:
                yield decisions_pb2.StreamReply(id=req.id, error="unknown tenant or request",
                                                error_code=grpc.StatusCode.NOT_FOUND.value[0])
            else:
                yield decisions_pb2.StreamReply(id=req.id, decision=decision)


class SyncServicer(decisions_pb2_grpc.DecisionsServicer):
    def __init__(self, state: BareState) -> None:
        self.state = state

    @staticmethod
    def _answer(context: grpc.ServicerContext, answer: Answer) -> Any:
        reply, code, details = answer
        if reply is None:
            context.abort(code, details)
        return reply

    def Inbound(self, request: Any, context: grpc.ServicerContext) -> decisions_pb2.Decision:
        return self._answer(context, self.state.inbound(request))

    def Outbound(self, request: Any, context: grpc.ServicerContext) -> decisions_pb2.Decision:
        return self._answer(context, self.state.outbound(request))

    def DecideBatch(self, request: Any, context: grpc.ServicerContext) -> decisions_pb2.BatchReply:
        return self._answer(context, self.state.batch(request))


async def serve_aio(listen: str, state: BareState, reuse_port: bool = False) -> None:
    server = grpc.aio.server(options=REUSE_PORT_OPTIONS if reuse_port else SERVER_OPTIONS)
    decisions_pb2_grpc.add_DecisionsServicer_to_server(AioServicer(state), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"cannot bind {listen}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"LISTENING {port}", flush=True)
    await stop.wait()
    await server.stop(grace=0.5)


def serve_sync(listen: str, state: BareState, threads: int, reuse_port: bool = False) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=threads),
                         options=REUSE_PORT_OPTIONS if reuse_port else SERVER_OPTIONS)
    decisions_pb2_grpc.add_DecisionsServicer_to_server(SyncServicer(state), server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise SystemExit(f"cannot bind {listen}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"LISTENING {port}", flush=True)
    while not stop.wait(0.5):  # the main thread must wake up for the signal handler to run
        pass
    server.stop(grace=0.5).wait(2.0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bare_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("aio", "sync"), default="aio",
                        help="grpc.aio server (default) or the sync thread-pool server")
    parser.add_argument("--listen", default="127.0.0.1:0", help="address to bind (default 127.0.0.1:0: a free port)")
    parser.add_argument("--reuse-port", action="store_true",
                        help="SO_REUSEPORT on: several bare servers share one port (the kernel spreads connections)")
    parser.add_argument("--threads", type=int, default=16, help="sync mode: handler threads (default 16)")
    parser.add_argument("--tenant", action="append", default=None,
                        help="tenant known to the server (repeatable; default: acme)")
    parser.add_argument("--blacklisted", action="append", type=int, default=None,
                        help="E.164 digits on every tenant's blacklist (repeatable; default 14155550666)")
    args = parser.parse_args(argv)
    state = BareState(args.tenant or ["acme"], args.blacklisted or [14155550666])
    if args.mode == "aio":
        asyncio.run(serve_aio(args.listen, state, args.reuse_port))
    else:
        serve_sync(args.listen, state, args.threads, args.reuse_port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
