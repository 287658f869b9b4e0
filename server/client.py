"""What callgate's own clients (the admin CLI, the benchmarks) share for talking to a server."""

from __future__ import annotations

from collections.abc import Iterator

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
