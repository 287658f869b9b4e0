"""The status page of a replica directory (DIR/status, engine/replica.py's docstring says what it holds and
why): made once, written in place by the replica process (`touch_heartbeat`, and a generation bump at every
change of the directory), mapped and read by every worker at every decision."""

from __future__ import annotations

import math
import mmap
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from .files import replace_atomically, sync_directory

STATUS = "status"                    # the status page: generation of the directory, when last heard (below)
STATUS_MAGIC = b"CGSTAT1\n"
STATUS_BYTES = 64
_STATUS = struct.Struct("<8sQd")     # magic, generation (moves at every change of the directory), heard
_OFFSET_AT = 24                      # then the server's clock less this host's (f64 seconds)
MAX_OFFSET_S = 10 * 365 * 86_400.0   # an offset beyond this is no clock's: read as 0


def touch_heartbeat(directory: Path | str, at: float | None = None, offset: float | None = None) -> None:
    """Record that the replica heard from the server at `at` (time.time() when None), in the status page, and
    with `offset` how far the server's clock is ahead of this host's (seconds; `clock_offset`)."""
    at = time.time() if at is None else float(at)
    if not math.isfinite(at):
        raise ValueError(f"heartbeat time {at!r} is not finite")
    if offset is not None and not (math.isfinite(offset) and abs(offset) <= MAX_OFFSET_S):
        raise ValueError(f"clock offset {offset!r} is no clock's")
    _write_status(Path(directory), heard=at, offset=offset)


def clock_offset(raw: Any) -> float:
    """The server's clock less this host's (seconds) from a status page's bytes; 0.0 when it says none."""
    (offset,) = struct.unpack_from("<d", raw, _OFFSET_AT)
    return offset if math.isfinite(offset) and abs(offset) <= MAX_OFFSET_S else 0.0


def last_heard(directory: Path | str) -> float | None:
    """When the replica last heard from the server (time.time() seconds), or None: never, or no readable status
    page (read as never: the answers then count as stale, the cautious reading)."""
    try:
        with open(Path(directory) / STATUS, "rb") as f:
            raw = f.read(_STATUS.size)
    except OSError:
        return None
    return _status_of(raw)[1] if len(raw) == _STATUS.size else None


def _status_of(raw: Any) -> tuple[int, float | None]:
    """(generation, heard) of a status page's bytes; (-1, None) when they are not one."""
    magic, generation, heard = _STATUS.unpack_from(raw, 0)
    if magic != STATUS_MAGIC:
        return -1, None
    return generation, (heard if math.isfinite(heard) and heard > 0 else None)


def _write_status(directory: Path, bump: bool = False, heard: float | None = None,
                  offset: float | None = None) -> None:
    """Move the status page's generation on (`bump`) and/or set when the replica last heard from the server.

    The page is made once and then only written in place: every worker keeps it mapped and reads it at every
    decision (aligned 8-byte fields: no syscall on the decision path).  One writer (the replica process); a
    reader that catches a field half written reads it again.  A page cut short or written over by hand is made
    again (replaced: the workers' reads of the old one fault or find it foreign, and they look for the new)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / STATUS
    for again in (False, True):
        if again:   # (a page cut short or written over: replaced)
            replace_atomically(path, [_new_page()], mode=0o644)
        elif not path.exists():
            _make_page(directory, path)
        with open(path, "r+b") as f:
            if os.fstat(f.fileno()).st_size < STATUS_BYTES:
                continue
            mm = mmap.mmap(f.fileno(), STATUS_BYTES, access=mmap.ACCESS_WRITE)
        with mm:
            generation, _ = _status_of(mm)
            if generation < 0:
                continue
            if bump:
                struct.pack_into("<Q", mm, 8, generation + 1)
            if heard is not None:
                struct.pack_into("<d", mm, 16, heard)
            if offset is not None:
                struct.pack_into("<d", mm, _OFFSET_AT, offset)
            return
    raise ValueError(f"{path} is not a replica status page, made again or not")


def _new_page() -> bytes:
    return _STATUS.pack(STATUS_MAGIC, 0, 0.0).ljust(STATUS_BYTES, b"\0")


def _make_page(directory: Path, path: Path) -> None:
    """A new status page at `path`, only if absent: a page already mapped is never replaced."""
    fd, tmp = tempfile.mkstemp(prefix=".status.", suffix=".tmp", dir=directory)
    try:
        os.write(fd, _new_page())
        os.fchmod(fd, 0o644)
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    sync_directory(directory)
