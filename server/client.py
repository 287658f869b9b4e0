"""What callgate's own clients (the admin CLI, the benchmarks) share for talking to a server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc
import grpc.aio

from callgate.v1 import admin_pb2

PIECE = 256 * 1024  # bytes per PushSettingsUpload message: small enough to parse in microseconds


def upload_messages(document: bytes, fmt: str = "", expected_version: int = 0, comment: str = "",
                    piece: int = PIECE) -> Iterator[admin_pb2.PushSettingsRequest]:
    """The messages of Admin.PushSettingsUpload: options in the first, then the document in pieces."""
    view = memoryview(document)
    yield admin_pb2.PushSettingsRequest(document=bytes(view[:piece]), format=fmt,
                                        expected_version=expected_version, comment=comment)
    for at in range(piece, len(document), piece):
        yield admin_pb2.PushSettingsRequest(document=bytes(view[at:at + piece]))


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor,
              grpc.StreamUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    """Adds `authorization: Bearer <token>` to every call of a channel."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), self.header]
        return details._replace(metadata=metadata) if hasattr(details, "_replace") else _Details(details, metadata)

    def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


class _Details(grpc.ClientCallDetails):
    def __init__(self, base: Any, metadata: list[tuple[str, str]]) -> None:
        self.method, self.timeout, self.credentials = base.method, base.timeout, base.credentials
        self.wait_for_ready, self.compression = base.wait_for_ready, base.compression
        self.metadata = metadata


def with_token(channel: grpc.Channel, token: str) -> grpc.Channel:
    """The channel with the bearer token on every call (servers with --auth tokens)."""
    return grpc.intercept_channel(channel, _Bearer(token))


class _AioBearer:
    """`_Bearer` for grpc.aio channels.  grpc.aio files an interceptor under the first of the four kinds it is
    an instance of, so each kind gets an instance of its own (`_aio_bearers`)."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", f"Bearer {token}")

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=[*(details.metadata or ()), self.header])


class _AioUnaryUnary(_AioBearer, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioUnaryStream(_AioBearer, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Callable[..., Any], details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioStreamUnary(_AioBearer, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _AioStreamStream(_AioBearer, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Callable[..., Any], details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def _aio_bearers(token: str) -> list[Any]:
    return [kind(token) for kind in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)]


# big enough for a whole settings snapshot or a full batch reply in one message
BIG_MESSAGES: list[tuple[str, Any]] = [("grpc.max_send_message_length", 256 * 1024 * 1024),
                                       ("grpc.max_receive_message_length", 256 * 1024 * 1024)]


def open_channel(address: str, tls_ca: bytes | None = None, token: str = "",
                 options: list[tuple[str, Any]] | None = None, *,
                 credentials: grpc.ChannelCredentials | None = None, aio: bool = False) -> Any:
    """The one way callgate's own clients (CLI, load tools, tests) open a channel to a server.

    TLS when `tls_ca` (PEM of the CA to trust) or `credentials` (mutual TLS:
    `server.tls.channel_credentials`) is given; the bearer token on every call
    when `token` is; a `grpc.aio` channel when `aio`.
    """
    if tls_ca is not None:
        if credentials is not None:
            raise ValueError("give tls_ca or credentials, not both")
        credentials = grpc.ssl_channel_credentials(root_certificates=tls_ca)
    options = options or []
    if aio:
        interceptors = _aio_bearers(token) if token else None
        if credentials is not None:
            return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    if credentials is not None:
        channel = grpc.secure_channel(address, credentials, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    return with_token(channel, token) if token else channel
