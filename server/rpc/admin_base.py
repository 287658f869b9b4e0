"""The part every piece of the Admin service shares.
"""

from __future__ import annotations

import grpc

from engine import CoreSnapshot
from server.rpc.errors import RequestError
from server.rpc.requests import _text
from server.rules import documents
from server.worker.state import State


class AdminBase:
    """What every part of the Admin service shares: the worker's state and the limits of `callgate serve`."""

    def __init__(self, state: State, max_document: int, upload_rate: float = 0.0, *,
                 blobs: documents.BlobStore, max_upload: int = documents.MAX_BYTES, max_list: int = 0) -> None:
        self.state = state
        self.max_list = max_list  # entries per blacklist; 0: no cap
        self.max_document = max_document
        self.blobs = blobs
        self.max_upload = max_upload
        self.upload_rate = upload_rate  # bytes/s an upload is read at; 0: as fast as it comes

    def _tenant(self, tenant: str) -> CoreSnapshot:
        snap = self.state.engine.get(_text("tenant", tenant))
        if snap is None:
            raise RequestError(grpc.StatusCode.NOT_FOUND, f"tenant {tenant[:64]!r} has no settings")
        return snap
