"""The one table from what went wrong to the gRPC status a caller gets.

Every servicer method (unary, streaming, Stream's per-message errors) answers
through `status_for`, so that a status means the same thing everywhere:

* INVALID_ARGUMENT, NOT_FOUND, FAILED_PRECONDITION: the request, as sent,
  will never succeed; the message says what to change.
* UNAVAILABLE: nothing was done and the same request may succeed later (a
  busy or full store, a restarting compiler); the message says what to do.
* INTERNAL: the server cannot do it and retrying will not help (a damaged
  store, a bug); the message names what is damaged, or the log line to read.

UNKNOWN (grpcio's answer to an exception nobody caught) is never sent.
"""

from __future__ import annotations

import concurrent.futures.process
import inspect
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import grpc

from engine.settings import SettingsError
from server import metrics
from server.store.api import (
    AlreadyReviewed,
    NotFound,
    NumberTaken,
    StoreDamaged,
    StoreUnavailable,
    VersionConflict,
)

log = logging.getLogger("callgate.service")


class RequestError(Exception):
    """A request the server refuses; carries the gRPC status to answer with."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def status_for(exc: BaseException, rpc: str = "") -> tuple[grpc.StatusCode, str]:
    """The status and message to answer `exc` with, counted by method and code; an unexpected exception is
    logged (with an id the message repeats) and answered INTERNAL."""
    known = _known(exc)
    if known is None:
        ident = secrets.token_hex(4)
        log.error("internal error %s in %s: %r", ident, rpc or "a call", exc, exc_info=exc,
                  extra={"event": "internal_error", "rpc": rpc, "error_id": ident})
        known = grpc.StatusCode.INTERNAL, (f"internal error {ident} ({type(exc).__name__}): the server logged it "
                                           "as event internal_error; this request will fail the same way until "
                                           "fixed")
    metrics.RPC_ERRORS.labels(rpc or "unknown", known[0].name).inc()
    return known


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status `exc` will be answered with (nothing logged, nothing counted)."""
    known = _known(exc)
    return grpc.StatusCode.INTERNAL if known is None else known[0]


def _known(exc: BaseException) -> tuple[grpc.StatusCode, str] | None:
    from server.rpc import auth  # auth imports grpc servicer pieces; numbers imports the engine
    from server.rules import numbers

    if isinstance(exc, RequestError | auth.AuthError):
        return exc.code, str(exc)
    if isinstance(exc, SettingsError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, VersionConflict | NumberTaken | AlreadyReviewed | numbers.TransferRefused):
        return grpc.StatusCode.FAILED_PRECONDITION, str(exc)
    if isinstance(exc, NotFound):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, StoreUnavailable):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, StoreDamaged):
        return grpc.StatusCode.INTERNAL, str(exc)
    if isinstance(exc, concurrent.futures.process.BrokenProcessPool):
        return (grpc.StatusCode.UNAVAILABLE,
                "the settings compiler stopped (out of memory?) and is being restarted: try again; "
                "a document that keeps doing this is too large for this server")
    if isinstance(exc, ValueError):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    return None


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, rpc: str = "") -> None:
    """Answer the call with exc's status (raises, as context.abort does)."""
    code, message = status_for(exc, rpc)
    await context.abort(code, message)


def method(handler: Callable[[Any, Any], Any], timed: str | None = None) -> Callable[..., Any]:
    """A gRPC method from `handler(self, request)` (plain or async; for a client stream, the request is the
    iterator of its messages): whatever it raises is answered through `status_for`, the same for every method
    of every service.  `timed` names the latency series the call is observed in."""
    name = handler.__name__.lstrip("_")
    is_async = inspect.iscoroutinefunction(handler)  # decided once: Inbound's path pays no check per call

    async def rpc(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        start = time.perf_counter()
        try:
            reply = (await handler(self, request)) if is_async else handler(self, request)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            await abort(context, exc, name)
            raise  # unreachable: abort raises
        if timed is not None:
            metrics.observe(timed, time.perf_counter() - start)
        return reply

    rpc.__name__ = handler.__name__
    return rpc
