"""Files written whole or not at all: the one way callgate replaces a file that others read.

A temporary file beside the target (a leading "." and a bounded prefix: the
target's own name may be 255 bytes already), written, then `os.replace`d
over the target: a rename within one file system, so a reader opens the old
file or the new one, never a torn one.  With `sync`, the data and then the
directory entry reach the disk before this returns: a crash leaves the old
file or the new one and never loses one the caller was told is written.
A writer killed between the two (kill -9, the OOM killer) leaves its
temporary file: `remove_leftovers` takes them away, called by the one
writer of a directory (under `hold`) as it starts.

`hold` is the one way a writer makes sure it is the only one (a replica
directory has one writer): an flock, let go by the kernel when the holder
ends, however it ends.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

# replace_atomically's temporary files: "." + at most 64 characters of the target's name + "." + mkstemp's 8
_LEFTOVER = re.compile(r"\.[^/]{1,64}\.[a-z0-9_]{8}\.tmp", re.DOTALL)


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


def remove_leftovers(directory: Path) -> list[str]:
    """Remove the temporary files `replace_atomically` left in `directory` when its writer died mid-write; the
    names removed.  Only for the directory's one writer, holding it (`hold`): another writer's file being
    written would go too."""
    gone = []
    for entry in os.scandir(directory):
        if _LEFTOVER.fullmatch(entry.name) and stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            gone.append(entry.name)
    return sorted(gone)


def sync_directory(directory: Path) -> None:
    """fsync a directory: what makes a rename, a new file or an unlink in it durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Held(Exception):
    """`hold` found the lock taken; `owner` is what its holder wrote in it (its PID), "" if nothing."""

    def __init__(self, path: Path, owner: str) -> None:
        super().__init__(f"{path} is held by {owner or 'another process'}")
        self.owner = owner


def hold(path: Path) -> IO[str]:
    """Take the exclusive lock of `path` (made if absent) for as long as the returned file stays open, and
    write this process's PID in it; `Held` if another process has it.  An flock: the kernel lets it go when its
    holder ends, kill -9 included, so a lock is never left behind by a crash."""
    handle = open(path, "a+", encoding="ascii")   # open for as long as the lock is held: the caller closes it
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        owner = handle.read(32).strip()
        handle.close()
        raise Held(path, owner if owner.isdigit() else "") from None
    except BaseException:
        handle.close()
        raise
    try:   # (a full disk: the lock is let go with the handle, not left to the exception's traceback)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
    except BaseException:
        with contextlib.suppress(OSError):   # (its own flush fails the same way: the fd is closed all the same)
            handle.close()
        raise
    return handle
