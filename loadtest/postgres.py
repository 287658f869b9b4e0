"""A private PostgreSQL cluster for the tests and the benchmarks: `initdb` in a folder of ours, a port of ours.

    with PrivateCluster() as pg:
        store = PostgresStore(pg.dsn)

It uses Debian's `postgresql` package (installed by .ci/run), never the
machine's own cluster: the server runs as the `postgres` system user (the
server refuses to run as root) on a free port, listening on `listen` (loopback
by default; a namespace's address for the many-hosts harness), with its
socket in its own folder; the database `callgate` belongs to the role
`callgate`, reached with trust auth from the addresses given.  Stopped (fast
shutdown, then SIGKILL by PID) and its folder removed on exit.  The folder is
a new one in the system's temporary directory: the `postgres` user must be
able to reach it, and a test's own temporary directory is root's alone.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from loadtest.process import free_port

INSTALL_HINT = "PostgreSQL is missing: apt-get install postgresql (.ci/run does)"


def bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian keeps them out of PATH)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    return Path(found[-1]).parent if found else None


class PrivateCluster:
    def __init__(self, *, listen: str = "127.0.0.1", port: int | None = None, trust: str = "127.0.0.1/32",
                 prefix: Sequence[str] = (), user: str = "postgres") -> None:
        bins = bin_dir()
        if bins is None:
            raise RuntimeError(INSTALL_HINT)
        folder = Path(tempfile.mkdtemp(prefix="callgate-pg-"))
        os.chmod(folder, 0o711)
        self.bins, self.folder, self.listen, self.trust, self.prefix = bins, folder, listen, trust, list(prefix)
        self.port = port or free_port(listen)
        self.user = user
        self.proc: subprocess.Popen[bytes] | None = None
        self.data = folder / "data"
        self.sockets = folder / "sockets"

    @property
    def dsn(self) -> str:
        return f"postgresql://callgate@{self.listen}:{self.port}/callgate"

    def _as_owner(self, *cmd: str) -> list[str]:
        return [*self.prefix, "runuser", "-u", self.user, "--", *cmd]

    def _chown(self, path: Path) -> None:
        entry = pwd.getpwnam(self.user)
        os.chown(path, entry.pw_uid, entry.pw_gid)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def start(self) -> None:
        """initdb on first use, then the server; returns once it accepts connections (RuntimeError if not)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._chown(self.folder)
        if not (self.data / "PG_VERSION").exists():
            self.sockets.mkdir(exist_ok=True)
            self._chown(self.sockets)
            done = subprocess.run(self._as_owner(str(self.bins / "initdb"), "-D", str(self.data), "-U", "postgres",
                                                 "--auth-local=trust", "--auth-host=reject", "-E", "UTF8",
                                                 "--locale=C.UTF-8"), capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stderr.strip() or done.stdout.strip()}")
            # the whole file: the first line that matches decides, and initdb's own lines reject TCP
            (self.data / "pg_hba.conf").write_text(f"local all all trust\nhost all all {self.trust} trust\n")
        log = self.folder / "server.log"
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                self._as_owner(str(self.bins / "postgres"), "-D", str(self.data), "-p", str(self.port),
                               "-k", str(self.sockets), "-c", f"listen_addresses={self.listen}",
                               "-c", "max_connections=200", "-c", "shared_buffers=64MB"),
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                self.stop()
                raise RuntimeError(f"PostgreSQL did not start on {self.listen}:{self.port}: {tail}")
            time.sleep(0.1)
        self._psql("DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'callgate') THEN "
                   "CREATE ROLE callgate LOGIN; END IF; END $$;")
        if self._psql("SELECT 1 FROM pg_database WHERE datname = 'callgate'", capture=True).strip() != "1":
            self._psql("CREATE DATABASE callgate OWNER callgate")

    def _ready(self) -> bool:
        done = subprocess.run(self._as_owner(str(self.bins / "pg_isready"), "-h", str(self.sockets), "-p",
                                             str(self.port), "-q"), capture_output=True, timeout=10)
        return done.returncode == 0

    def _psql(self, sql: str, capture: bool = False) -> str:
        done = subprocess.run(self._as_owner(str(self.bins / "psql"), "-h", str(self.sockets), "-p", str(self.port),
                                             "-U", "postgres", "-d", "postgres", "-At", "-v", "ON_ERROR_STOP=1",
                                             "-c", sql), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout if capture else ""

    def admin(self, statement: str) -> None:
        """One statement as the superuser, connected to the `postgres` database (CREATE DATABASE, ...)."""
        self._psql(statement)

    def sql(self, statement: str) -> str:
        """Run one statement as the superuser in the callgate database; its rows as psql -At prints them."""
        done = subprocess.run(self._as_owner(str(self.bins / "psql"), "-h", str(self.sockets), "-p", str(self.port),
                                             "-U", "postgres", "-d", "callgate", "-At", "-v", "ON_ERROR_STOP=1",
                                             "-c", statement), capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout

    def stop(self, timeout_s: float = 20.0) -> None:
        """Fast shutdown (SIGINT: open transactions roll back); SIGKILL of its process group after `timeout_s`."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def kill(self) -> None:
        """kill -9 of the server and every backend (a crash: recovery replays the WAL at the next start)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()
