"""A replica file truncated in place while a worker maps it (a backup copied over it with `cp`, a `> file`, or a
disk's I/O error on a mapped page): the kernel answers the decision's next load with SIGBUS, which unguarded
killed the worker, and with it the whole Kamailio.  The core's guard (engine/_core_guard.pxi) turns it into a
miss: the worker opens the file again as it now is (refused while truncated: the caller asks the server) and
decides from it again once it is whole.  Each case runs in a child process, so that a crash is a failed test
(its exit status), not a dead test run.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine import replica
from engine.replica import LocalDecisions

from .test_replica_files import ACME, AT, BLACKLISTED, CALLERS, MAIN, ROOT, Clock, blob_of

# what each child's code begins with: the directory, a clock of the test's own, and a worker in step with a
# fresh heartbeat, every tenant of the directory mapped (`in_step()`)
HEADER = f"""
import os, sys
from pathlib import Path
from engine import replica
from engine.replica import LocalDecisions
from tests.test_replica_files import Clock
d = Path(sys.argv[1])
clock = Clock({AT}.0)

def in_step():
    replica.touch_heartbeat(d, at=clock.now)
    worker = LocalDecisions(d, clock=clock)
    assert worker.prepare(limit=10) == 1
    return worker
"""


def run(code: str, directory: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", HEADER + textwrap.dedent(code), str(directory)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def passes(code: str, directory: Path) -> None:
    """The child's code ran to its end and printed "ok" (a crash is its exit status)."""
    done = run(code, directory)
    assert done.returncode == 0 and done.stdout.strip() == "ok", (done.returncode, done.stdout, done.stderr[-2000:])


def test_a_file_truncated_under_a_worker_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    replica.write_snapshot(tmp_path, blob_of(ACME), 3)
    passes(f"""
        path = d / replica.file_name("acme")
        whole = path.read_bytes()
        worker = in_step()
        tenant, fields = worker.route({CALLERS[0]!r}, {MAIN!r})
        assert tenant == "acme" and fields is not None, fields
        held = worker.snapshot("acme")[0]
        os.truncate(path, 0)   # in place (cp, `> file`): the same inode, every page gone from under the mapping
        misses = worker.misses
        assert worker.route({CALLERS[0]!r}, {MAIN!r}) == ("acme", None)   # faulted: `inbound` looks again
        assert held.faulted
        assert worker.inbound("acme", {CALLERS[0]!r}, {MAIN!r}) is None   # refused as it now is: ask the server
        assert worker.misses == misses + 1
        try:
            held.inbound({CALLERS[0]!r}, {MAIN!r}, {AT})
        except OSError as exc:   # a snapshot that faulted is never read again
            assert "truncated" in str(exc), exc
        else:
            raise AssertionError("a faulted snapshot decided")
        with open(path, "r+b") as f:   # whole again, in place (cp over it): decided from it again
            f.write(whole)
        clock.now += 31   # (a change made by hand, without the replica: seen within recheck_s)
        replica.touch_heartbeat(d, at=clock.now)
        answer = worker.inbound("acme", {CALLERS[0]!r}, {MAIN!r})
        assert answer is not None and answer.action == "decide", answer
        print("ok")
        """, tmp_path)


def test_the_python_path_survives_it_too(tmp_path: Path) -> None:
    """Without a fresh status page every decision is the Python path's (the stale policy's), which decides
    through CoreSnapshot.inbound: guarded the same way."""
    replica.write_snapshot(tmp_path, blob_of(ACME), 3)   # (no heartbeat: never fresh, stale-ok decides)
    passes(f"""
        worker = LocalDecisions(d)
        first = worker.inbound("acme", {CALLERS[0]!r}, {MAIN!r})
        assert first is not None and first.stale and first.action == "decide", first
        os.truncate(d / replica.file_name("acme"), 4096 + 100)   # cut short: its prefix stays, its end is gone
        assert worker.inbound("acme", {CALLERS[0]!r}, {MAIN!r}) is None
        assert worker.inbound("acme", {CALLERS[0]!r}, {MAIN!r}) is None
        print("ok")
        """, tmp_path)


def test_a_sigbus_outside_a_decision_still_ends_the_process(tmp_path: Path) -> None:
    """The guard takes a fault only inside a guarded decision: a SIGBUS sent by kill, or a fault of any other
    read of a truncated mapping, ends the process as it would have (no fault hidden)."""
    (tmp_path / "f").write_bytes(b"x" * 65536)
    for code in ("os.kill(os.getpid(), signal.SIGBUS)",
                 "m = mmap.mmap(os.open(sys.argv[1] + '/f', os.O_RDONLY), 0, access=mmap.ACCESS_READ); "
                 "os.truncate(sys.argv[1] + '/f', 0); m[40000]"):
        done = run(f"""
            import mmap, signal
            LocalDecisions(sys.argv[1])   # the guard installed
            {code}
            print("survived")
            """, tmp_path)
        assert done.returncode == -signal.SIGBUS and "survived" not in done.stdout, (code, done.returncode,
                                                                                     done.stderr[-500:])


def test_a_file_rewritten_in_place_is_never_decided_from_through_the_old_checks(tmp_path: Path) -> None:
    """Bytes written over the mapped file without truncating it (another version copied in place): its prefix
    (the sha256 of the rest) is not the one checked, so the decision is a miss, and the file is opened and
    checked again."""
    replica.write_snapshot(tmp_path, blob_of(ACME), 3)
    other = tmp_path / "other"
    other.mkdir()
    replica.write_snapshot(other, blob_of({**ACME, "blacklist": []}), 4)
    passes(f"""
        worker = in_step()
        assert worker.route({BLACKLISTED!r}, {MAIN!r})[1][2] == "BLACKLISTED"
        held = worker.snapshot("acme")[0]
        newer = (d / "other" / replica.file_name("acme")).read_bytes()
        with open(d / replica.file_name("acme"), "r+b") as f:   # no truncation: no SIGBUS to tell it
            f.write(newer)
        assert worker.route({BLACKLISTED!r}, {MAIN!r}) == ("acme", None)
        assert held.faulted
        clock.now += 31
        replica.touch_heartbeat(d, at=clock.now)
        answer = worker.inbound("acme", {BLACKLISTED!r}, {MAIN!r})
        # (the file now holds version 4's bytes and, past them, the rest of version 3's: refused whole, or, were
        # it as long, version 4: never version 3's checks over version 4's bytes)
        assert answer is None or (answer.version == 4 and answer.decision.reason != "BLACKLISTED"), answer
        print("ok")
        """, tmp_path)


def test_a_fault_on_an_unchanged_file_opens_it_again_checked_with_pread(tmp_path: Path) -> None:
    """A mapping that faulted while its file is, by its key (device, inode, size, mtime), the one mapped: the
    disk could not give a page (an I/O error).  The file is opened again: its hash is read with pread (where a
    page the disk still cannot give is an OSError, tested below), so it is decided from again once readable.
    (Made here by cutting the file short and putting back its bytes and its mtime: the key is the one mapped,
    the mapping faulted.)"""
    replica.write_snapshot(tmp_path, blob_of(ACME), 3)
    passes(f"""
        path = d / replica.file_name("acme")
        whole, st = path.read_bytes(), path.stat()
        worker = in_step()
        held = worker.snapshot("acme")[0]
        os.truncate(path, 0)
        try:
            held.inbound({CALLERS[0]!r}, {MAIN!r}, {AT})
        except OSError:
            pass
        assert held.faulted
        with open(path, "r+b") as f:
            f.write(whole)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        answer = worker.inbound("acme", {CALLERS[0]!r}, {MAIN!r})
        assert answer is not None and answer.action == "decide", answer
        assert worker.snapshot("acme")[0] is not held and worker.route({CALLERS[0]!r}, {MAIN!r})[1] is not None
        print("ok")
        """, tmp_path)


def test_a_disk_error_while_a_file_is_checked_is_a_refusal_tried_again(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A file is checked (its sha256) with pread, not through its mapping: a page the disk cannot give is an
    OSError (EIO) there, not SIGBUS; the file is refused, said why, and opened again at the next look."""
    replica.write_snapshot(tmp_path, blob_of(ACME), 3)
    clock = Clock(float(AT))
    replica.touch_heartbeat(tmp_path, at=clock.now)
    worker = LocalDecisions(tmp_path, clock=clock)
    real = os.pread

    def failing(fd: int, n: int, at: int) -> bytes:
        if at + n > 4096:   # (a bad sector past the first page)
            raise OSError(errno.EIO, "Input/output error")
        return real(fd, n, at)

    monkeypatch.setattr(os, "pread", failing)
    assert worker.inbound("acme", CALLERS[0], MAIN) is None
    assert "Input/output error" in worker.refusals["acme"], worker.refusals
    monkeypatch.setattr(os, "pread", real)
    clock.now += 31.0   # (a failure that is no verdict on the file: tried again at the next look, recheck_s)
    replica.touch_heartbeat(tmp_path, at=clock.now)
    answer = worker.inbound("acme", CALLERS[0], MAIN)
    assert answer is not None and answer.action == "decide" and "acme" not in worker.refusals, answer


def test_a_file_cut_short_while_it_is_checked_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    replica.write_snapshot(tmp_path, blob_of(ACME), 3)
    path = replica.snapshot_path(tmp_path, "acme")
    real = os.pread

    def cut(fd: int, n: int, at: int) -> bytes:
        if at > 0:
            os.truncate(path, 4096)
        return real(fd, n, at)

    monkeypatch.setattr(os, "pread", cut)
    with pytest.raises(OSError, match="changed as it was read"):   # (no verdict on the file: a worker looks again)
        replica._open(path, "acme")


def test_a_status_page_truncated_under_the_workers_is_a_page_looked_for_again(tmp_path: Path) -> None:
    """The directory's status page (read at every decision) truncated in place: the read faults under the same
    guard, the page is unmapped and looked for again; meanwhile, with no page, the replica's age is unknown, so
    the tenant's stale policy answers (stale-ok: decided, marked stale); a page made again puts the worker back
    in step."""
    replica.write_snapshot(tmp_path, blob_of(ACME), 3)
    passes(f"""
        worker = in_step()
        assert worker.route({CALLERS[0]!r}, {MAIN!r})[1] is not None
        os.truncate(d / "status", 0)
        assert worker.route({CALLERS[0]!r}, {MAIN!r}) == ("acme", None)
        answer = worker.inbound("acme", {CALLERS[0]!r}, {MAIN!r})
        assert answer is not None and answer.action == "decide" and answer.stale, answer
        os.unlink(d / "status")   # (what the replica's error says to do: it makes the page again)
        clock.now += 2
        replica.touch_heartbeat(d, at=clock.now)
        answer = worker.inbound("acme", {CALLERS[0]!r}, {MAIN!r})
        assert answer is not None and not answer.stale, answer
        assert worker.route({CALLERS[0]!r}, {MAIN!r})[1] is not None
        print("ok")
        """, tmp_path)
