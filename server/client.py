"""What callgate's own clients (the admin CLI, the benchmarks) share for talking to a server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grpc

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


def open_channel(address: str, tls_ca: bytes | None = None, token: str = "",
                 options: list[tuple[str, Any]] | None = None) -> grpc.Channel:
    """A channel to callgate: TLS when `tls_ca` (PEM) is given, the bearer token on every call when given."""
    if tls_ca is not None:
        channel = grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=tls_ca),
                                      options=options or [])
    else:
        channel = grpc.insecure_channel(address, options=options or [])
    return with_token(channel, token) if token else channel
