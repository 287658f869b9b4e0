"""Files of uploads in progress, where a restart can find and remove them.

A settings document that arrives in pieces (PushSettingsUpload) or is too
big to pickle goes to the compile process through a file.  Those files live
in DATA_DIR/spool, named `<pid of the worker>-<random>.push`, so that the
files of a worker killed mid-upload (46 MB for a big blacklist) are swept: at
start-up and by the supervisor when it replaces a dead worker, every file
whose worker is no longer running is removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import IO

log = logging.getLogger("callgate.spool")

SUFFIX = ".push"


class Spool:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def file(self) -> IO[bytes]:
        """A new spool file of this process, removed when closed."""
        self.folder.mkdir(parents=True, exist_ok=True)
        return tempfile.NamedTemporaryFile(prefix=f"{os.getpid()}-", suffix=SUFFIX, dir=self.folder)

    def sweep(self, dead: int | None = None) -> list[Path]:
        """Remove the files of `dead` (a pid), or of every process that is not running; returns them."""
        removed = []
        try:
            entries = list(self.folder.iterdir())
        except FileNotFoundError:
            return []
        for path in entries:
            owner = _owner(path)
            if owner is None or (owner != dead if dead is not None else alive(owner)):
                continue
            with contextlib.suppress(FileNotFoundError):
                size = path.stat().st_size
                path.unlink()
                removed.append(path)
                log.info("removed the spool file of a worker that is gone",
                         extra={"event": "spool_swept", "file": str(path), "bytes": size, "worker_pid": owner})
        return removed

    def bytes_of_mine(self) -> int:
        """Bytes of this process's files now (uploads in progress)."""
        total, me = 0, os.getpid()
        for path in self.files():
            if _owner(path) == me:
                with contextlib.suppress(FileNotFoundError):
                    total += path.stat().st_size
        return total

    def files(self) -> list[Path]:
        try:
            return sorted(p for p in self.folder.iterdir() if p.name.endswith(SUFFIX))
        except FileNotFoundError:
            return []


def _owner(path: Path) -> int | None:
    head, _, _ = path.name.partition("-")
    return int(head) if path.name.endswith(SUFFIX) and head.isdigit() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
