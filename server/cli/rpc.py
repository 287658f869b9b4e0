"""How the `callgate` command reaches a running server: the channel (TLS, token), the stubs, and every call
through `call` (or `guarded` for a call that is not one request and one reply), so that a gRPC failure is one
line that says what to do."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from engine.cli import CliError

DEFAULT_SERVER = "127.0.0.1:50051"


def channel(args: argparse.Namespace) -> Any:
    return channel_args(args)()


def channel_args(args: argparse.Namespace, aio: bool = False) -> Callable[[], Any]:
    """A function that opens a channel to --server with the command line's TLS and token, each time it is called
    (a process that reconnects opens a new one each time)."""
    from server.client import BIG_MESSAGES, open_channel

    credentials = None
    if getattr(args, "tls_ca", None):
        from server.tls import channel_credentials

        try:
            credentials = channel_credentials(args.tls_ca, args.tls_cert, args.tls_key)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    token = getattr(args, "token", None) or os.environ.get("CALLGATE_TOKEN", "")
    return lambda: open_channel(args.server, token=token, options=BIG_MESSAGES, credentials=credentials, aio=aio)


# what grpcio says when the connection failed or dropped (the server's own UNAVAILABLE messages say none of these)
_TRANSPORT = ("failed to connect", "connection refused", "socket closed", "connection reset", "goaway",
              "broken pipe", "dns resolution failed", "connections to all backends failing", "endpoint closing",
              "stream removed", "recvmsg", "sendmsg", "connection aborted", "keepalive watchdog",
              "errors resolving", "handshake failed")


def _not_connected(args: argparse.Namespace, lowered: str) -> str:
    """Why no connection was made, in words that say what to change (empty: not a connection failure)."""
    server, tls = args.server, bool(getattr(args, "tls_ca", None))
    host = server.rpartition(":")[0].strip("[]") or server
    if "errors resolving" in lowered or "dns resolution failed" in lowered or "domain name not found" in lowered:
        return f"cannot find the host {host!r} of --server {server} (its name does not resolve): check --server"
    if "wrong_version_number" in lowered:
        return (f"callgate at {server} does not speak TLS: leave out --tls-ca (and --tls-cert/--tls-key), or "
                "serve it with --tls-cert and --tls-key")
    if "peer name" in lowered or ("hostname" in lowered and "certificate" in lowered):
        return (f"callgate at {server} has a TLS certificate for another name: use --server with a name or address "
                "its certificate holds (`callgate dev-ca` certificates hold 127.0.0.1, ::1 and localhost)")
    if "handshake failed" in lowered or "certificate" in lowered:
        return (f"callgate at {server} has a TLS certificate that --tls-ca {args.tls_ca} did not sign (or mutual TLS "
                "refused this client's): give --tls-ca the CA that signed the server's certificate")
    if "connection refused" in lowered:
        return (f"nothing listens at {server}: is `callgate serve` running there, on that port? (check --server)")
    if "failed to connect" in lowered and "socket closed" in lowered and not tls:
        return (f"callgate at {server} closed the connection at once: it probably serves TLS; give --tls-ca with "
                "the CA of its certificate (and --token if it asks for one)")
    if "failed to connect" in lowered:
        return f"cannot reach callgate at {server}: is `callgate serve` running there? (check --server)"
    return ""


def guarded(args: argparse.Namespace, fn: Callable[[], Any], *, check: str = "") -> Any:
    """Run one RPC; turn gRPC errors into one readable line.

    `check`: for a write, the command that shows whether it was made, when
    the answer was lost after the request went out (a dropped connection or
    a deadline): the write may have been committed, and must not be assumed
    lost (nor simply repeated).
    """
    import grpc

    try:
        return fn()
    except grpc.RpcError as exc:
        code = exc.code()
        details = (exc.details() or "").strip()
        lowered = details.lower()
        if code == grpc.StatusCode.UNAVAILABLE and any(m in lowered for m in _TRANSPORT):
            problem = _not_connected(args, lowered)
            if problem:
                raise CliError(f"{problem} ({details})") from None
            if check:
                raise CliError(f"the connection to callgate at {args.server} dropped before the answer ({details}): "
                               f"the change may have been made; see `{check}` before trying again") from None
            raise CliError(f"the connection to callgate at {args.server} dropped ({details}): try again") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            if check:
                raise CliError(f"callgate at {args.server} did not answer within {args.timeout} s: the change may "
                               f"still be made; see `{check}` before trying again") from None
            raise CliError(f"callgate at {args.server} did not answer within {args.timeout} s") from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise CliError(f"UNAVAILABLE (nothing was changed; try again later): {details}") from None
        if code == grpc.StatusCode.UNAUTHENTICATED:
            if not (getattr(args, "token", None) or os.environ.get("CALLGATE_TOKEN")):
                raise CliError(f"UNAUTHENTICATED: callgate at {args.server} wants a token: give --token or set "
                               f"CALLGATE_TOKEN (`callgate tokens create` makes one) ({details})") from None
            raise CliError(f"UNAUTHENTICATED: callgate at {args.server} refused the token ({details}): check "
                           "--token or $CALLGATE_TOKEN, or ask an owner for a new one (`callgate tokens list` "
                           "shows which are revoked or expired)") from None
        raise CliError(f"{code.name}: {details}") from None


def call(args: argparse.Namespace, method: Callable[..., Any], request: Any, *, check: str = "") -> Any:
    """One unary RPC: `method(request)` with the command's --timeout; failures as `guarded` words them."""
    return guarded(args, lambda: method(request, timeout=args.timeout), check=check)


def stubs(args: argparse.Namespace) -> tuple[Any, Any]:
    from callgate.v1 import admin_pb2_grpc, decisions_pb2_grpc

    ch = channel(args)
    return admin_pb2_grpc.AdminStub(ch), decisions_pb2_grpc.DecisionsStub(ch)
