"""Files written whole or not at all: the one way callgate replaces a file that others read.

A temporary file beside the target (a leading "." and a bounded prefix: the
target's own name may be 255 bytes already), written, then `os.replace`d
over the target: a rename within one file system, so a reader opens the old
file or the new one, never a torn one.  With `sync`, the data and then the
directory entry reach the disk before this returns: a crash leaves the old
file or the new one and never loses one the caller was told is written.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path


def replace_atomically(path: Path, chunks: Iterable[bytes], *, sync: bool = True, mode: int | None = None) -> None:
    """Write `chunks` to `path` whole or not at all (see the module); `mode`: the file's permissions (mkstemp
    makes 0600)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:64]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            if mode is not None:
                os.fchmod(out.fileno(), mode)
            if sync:
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if sync:
        sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync a directory: what makes a rename, a new file or an unlink in it durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
