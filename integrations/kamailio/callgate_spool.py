"""The event spool of callgate's Kamailio script (callgate_kemi.py): call events waiting for callgate.
Plain Python and SQLite: no Kamailio, no gRPC.

Two halves.  A SIP worker appends a call's events to a journal of its own
(`Journal`: one append-only file per process in SPOOL.journal/, a record
per event, one write() each: ~5 us, never a lock, never a wait).  The
sender (the rtimer process, the only writer of the SQLite file: `claim_sender`, a
lock a second Kamailio given the same spool finds held) reads what
the journals hold (`Spool.read`), in the order the events were written
across all processes, sends it, and keeps in the spool's table what was not
answered (`Spool.store`: each record once, the offsets read commit with the
rows; with nothing sent, all of it: `Spool.ingest`), which it sends until
none waits.  A round whose events were all answered keeps nothing but how
far it read, committed at most a second later: a crash meanwhile has those
events sent again, and callgate answers a replay with its recorded reply.  Measured before the
journals: an event appended to the shared SQLite file cost a SIP worker
~78 us of CPU and a read ~40 us (every transaction starts cold when eight
processes write the file), a third of what the script added to a call.

A record holds an event ready to send (its key, call and request), or, as
the SIP workers write them, the call's record as the worker holds it and
what the reply added (`Spool.add_raw`: no JSON read and no message built
on the SIP path, ~30 us less a reply with a worker's cold caches); the
sender turns those into events as it moves them (`ingest(convert)`), and
logs one it cannot read.

A journal survives a crash of its process (the data is in the page cache;
like SQLite's synchronous=NORMAL, a power cut may lose the last records).
A record is checked (magic, length, crc32) when read; the reader skips a
damaged one to the next sound record (logged: the events in the bytes
skipped are lost), and a journal read to its end is removed once its
process writes no more (it has a newer journal, or is gone).
"""

from __future__ import annotations

import fcntl
import functools
import importlib.machinery
import importlib.util
import operator
import os
import re
import sqlite3
import struct
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import TypeVar

PENDING, SENT, REFUSED = 0, 1, 2   # an event's state: waiting, answered by callgate, refused for good
RETRY = 3                            # (not a state: a send's word for an event to try again later, `retry_after`)
RETRY_TRIES = 14                     # tries of an event that fails for a reason callgate cannot name (about 9 min:
#                                      callgate expires a ringing call after 10 min without events), then refused
JOURNAL_SUFFIX = ".cgj"
_MAGIC = 0x314A4743                  # b"CGJ1": an event (key, call, request)
_RAW_MAGIC = 0x324A4743              # b"CGJ2": a raw record (no key, no call), which a reader before these skips as
#                                      damage (logged) rather than take it for an event
_RECORD = struct.Struct("<IIIqdHH")  # magic, payload bytes, crc32 of the payload, monotonic ns, wall time, key and
#                                      call bytes (then key, call, the request)
ROTATE_BYTES = 16 << 20              # a journal this long is closed and the next one begun
WATERMARK_NS = 20_000_000            # records younger than this wait for the next round: one written meanwhile by
#                                      another process, older, is then never read after a younger one
MAX_READ = 8 << 20                   # bytes read of one journal per round
OFFSETS_EVERY_S = 1.0                # how far the journals were read: committed at most this long after (`store`)
LIVE_RECHECK_S = 1.0                 # a journal found still written is asked again after this (`_forget_finished`)

T = TypeVar("T")
Event = tuple[str, str, bytes]      # (key, call, request): an event ready to send
Row = tuple[str, str, bytes, float]  # an event and when it was written (wall time): a row of the table
Convert = Callable[[bytes], Sequence[Event]]   # a raw record's events (ValueError: none can be made of it)


def retry_after(tries: int) -> float:
    """Seconds before an event that failed `tries` times (RETRY) is sent again: 1, 2, 4, ... a minute at most
    (RETRY_TRIES: about 9 minutes in all)."""
    return float(min(60, 2 ** max(tries - 1, 0)))


def retry_locked(fn: Callable[[], T], patience_s: float, pause_s: float = 0.0) -> T:
    """fn(), tried again while SQLite says the file is locked or busy, for up to `patience_s` (0: once)."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if ("locked" not in str(exc) and "busy" not in str(exc)) or time.monotonic() > deadline:
                raise
            if pause_s:
                time.sleep(pause_s)


def _boot_id() -> str:
    """This machine's boot (the first 8 hex digits of the kernel's boot id; "" where it has none)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            text = f.read(8)
    except (OSError, ValueError):
        return ""
    return text if len(text) == 8 and all(c in "0123456789abcdef" for c in text) else ""   # (as the module)


BOOT = _boot_id()
_TICKS_NS = 1_000_000_000 // (os.sysconf("SC_CLK_TCK") or 100)


def journal_name(writer: str) -> str:
    """A new journal's name for `writer` (a pid; "PID.c" for Kamailio's callgate_events module, which names its
    own the same way): PID-bBOOT-NS.cgj, with this machine's boot and CLOCK_BOOTTIME when it was begun: never the
    wall clock, which a careless NTP can step back between two rotations (a live journal then looked older than
    the one before it, finished, and was removed while written)."""
    return f"{writer}-b{BOOT}-{time.clock_gettime_ns(time.CLOCK_BOOTTIME):020d}{JOURNAL_SUFFIX}"


_NAME = re.compile(r"(\d+)(\.c)?-(?:b([0-9a-f]{8})?-(\d{20})|(\d+))" + re.escape(JOURNAL_SUFFIX), re.ASCII)


@functools.lru_cache(maxsize=4096)   # (every round asks it of every journal, for each journal read to its end)
def _parsed(name: str) -> tuple[str, str, tuple[str, int] | None] | None:
    """A journal's (writer, pid, (boot, ns) of a journal_name or None for a name of the writers before it,
    PID-WALLNS.cgj); None for a name no writer makes (a file put there by hand: read, and removed once read)."""
    m = _NAME.fullmatch(name)
    if m is None:
        return None
    pid, module, boot, ns, _ = m.groups()
    return pid + (module or ""), pid, ((boot or "", int(ns)) if ns is not None else None)


def _started_ns(pid: str) -> int | None:
    """When process `pid` began (CLOCK_BOOTTIME ns, to the kernel's tick), -1 where /proc cannot tell (none in a
    chroot, hidden by hidepid, another pid namespace's), None for a process that is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[19]) * _TICKS_NS   # (field 22: after the command's name)
    except (OSError, ValueError, IndexError):
        pass
    try:   # (only this says a process is gone: a /proc without it is no proof)
        os.kill(int(pid), 0)
    except (ProcessLookupError, OverflowError):   # (no such pid can be)
        return None
    except PermissionError:   # alive, another user's
        pass
    return -1


def _writing(name: str, names: list[str]) -> bool:
    """Whether a journal may still be written: its process is alive (the process that began it: not a later
    one given the same pid, nor one of an earlier boot) and this is its writer's newest journal.  A process has
    two writers: this module's Journal (PID-…) and Kamailio's callgate_events module (PID.c-…)."""
    parsed = _parsed(name)
    if parsed is None:
        return False
    writer, pid, begun = parsed
    now = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
    siblings = [(n, p[2]) for n in names if n != name and (p := _parsed(n)) is not None and p[0] == writer]
    if begun is None:   # (a writer's before journal_name: by the name's wall clock; any of journal_name is newer)
        if any(other is not None or n > name for n, other in siblings):
            return False
    else:
        # another boot's: its boot id, or (where the kernel gives none) begun later than this boot's clock
        boot, ns = begun
        if boot != BOOT or ns > now or any(other is not None and other[0] == BOOT and ns < other[1] <= now
                                           for _, other in siblings):
            return False
    started = _started_ns(pid)
    if started is None:
        return False
    # begun before its process began (a tick's slack): an earlier process with the same pid wrote it
    return begun is None or started < 0 or begun[1] >= started - _TICKS_NS


class Journal:
    """This process's append-only file of call events, in DIRECTORY (made if absent): a new file after a fork,
    and after ROTATE_BYTES."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._fd = -1
        self._pid = 0
        self._size = 0

    def append(self, items: list[tuple[str, str, bytes]], raw: bool = False) -> None:
        """Append (key, call, request) events in one write(), or with `raw` ("", "", raw record) items; OSError
        when the disk refuses it (nothing of them is left in the file then)."""
        if self._fd < 0 or self._pid != os.getpid() or self._size >= ROTATE_BYTES or os.fstat(self._fd).st_nlink == 0:
            # (a journal removed under its writer, by hand or a sender that misjudged it: what it would take is
            # lost, so a new one; before the clocks: a record stamped before a slow open could be read after a later
            # one)
            self._open()
        now_ns, wall = time.monotonic_ns(), time.time()
        records = []
        for key, call, request in items:
            k, c = key.encode(), call.encode()
            if len(k) > 0xFFFF or len(c) > 0xFFFF:
                raise ValueError(f"a call id of {len(c):,} bytes cannot be spooled")
            if raw == bool(k or c):
                raise ValueError("an event has a key and a call, a raw record neither")
            payload = k + c + request
            records.append(_RECORD.pack(_RAW_MAGIC if raw else _MAGIC, len(payload), zlib.crc32(payload), now_ns,
                                        wall, len(k), len(c)))
            records.append(payload)
        data = b"".join(records)
        try:
            written = os.write(self._fd, data)
        except OSError:
            self._undo()
            raise
        if written != len(data):   # a full disk took part of it: the file ends where it ended
            self._undo()
            raise OSError(28, f"the disk took {written} of {len(data)} bytes")
        self._size += written

    def _undo(self) -> None:
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            self._close()   # the next append begins a new file; the reader sets this one aside at the damage

    def _open(self) -> None:
        self._close()
        os.makedirs(self.directory, exist_ok=True)
        # the process and when it began the file: a later process with the same pid never shares one
        name = os.path.join(self.directory, journal_name(str(os.getpid())))
        self._fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        self._pid, self._size = os.getpid(), 0

    def _close(self) -> None:
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = -1


def read_journal(data: bytes, watermark_ns: int, raw: bool = True, start: int = 0) -> tuple[
        list[tuple[int, float, str, str, bytes]], int, str]:
    """The whole records of `data` from byte `start` written before `watermark_ns`: ([(monotonic ns, wall time, key,
    call, request)], the byte where they stop, "" or what is damaged there); a raw record has key and call "".
    Without `raw`, the records stop before the first raw one (it waits for a reader that can convert it).
    The reference: `Spool.read` reads with its compiled twin where it is built (`journal_reader`)."""
    if start < 0 or start > len(data):
        raise ValueError(f"start {start} outside the {len(data)} bytes read")
    out: list[tuple[int, float, str, str, bytes]] = []
    pos = start
    while pos + _RECORD.size <= len(data):
        record, end, damage = _record_at(data, pos)
        if damage:
            return out, pos, damage
        if record is None or record[0] > watermark_ns or (not raw and not record[2]):
            break   # being written or past this round's read; or written too lately for this round
        out.append(record)
        pos = end
    return out, pos, ""


def _record_at(data: bytes, pos: int) -> tuple[tuple[int, float, str, str, bytes] | None, int, str]:
    magic, length, crc, created_ns, wall, k, c = _RECORD.unpack_from(data, pos)
    if magic not in (_MAGIC, _RAW_MAGIC) or k + c > length or (magic == _RAW_MAGIC) == bool(k or c):
        return None, pos, f"no record at byte {pos}"
    end = pos + _RECORD.size + length
    if end > len(data):
        return None, pos, ""
    payload = data[pos + _RECORD.size:end]
    if zlib.crc32(payload) != crc:
        return None, pos, f"a damaged record at byte {pos}"
    try:
        key, call = payload[:k].decode(), payload[k:k + c].decode()
    except UnicodeDecodeError:
        return None, pos, f"a damaged record at byte {pos}"
    return (created_ns, wall, key, call, payload[k + c:]), end, ""


def next_record(data: bytes, pos: int) -> int | None:
    """Where the first whole, sound record after byte `pos` of `data` begins (after damage), or None."""
    markers = (struct.pack("<I", _MAGIC), struct.pack("<I", _RAW_MAGIC))

    def find(start: int) -> int:
        found = [at for at in (data.find(m, start) for m in markers) if at >= 0]
        return min(found) if found else -1

    at = find(pos + 1)
    while at >= 0 and at + _RECORD.size <= len(data):
        record, _, damage = _record_at(data, at)
        if record is not None and not damage:
            return at
        at = find(at + 1)
    return None


JOURNAL_READER_VERSION = 1   # the compiled reader this module can use (callgate_journal.pyx's VERSION)
Reader = Callable[[bytes, int, bool, int], tuple[list[tuple[int, float, str, str, bytes]], int, str]]


@functools.cache
def journal_reader() -> tuple[Reader, str]:
    """What `Spool.read` reads journals with, loaded at its first round (in the one process that sends, not in
    every worker): read_journal's compiled twin (callgate_journal.pyx, which `make build` builds beside this file),
    from this file's folder, the two going together; else `read_journal` itself.  With what it is, for the log:
    "compiled", or "in Python" and why (not built; a build for another Python or of another version, a .so left
    from before an upgrade: read_journal's arguments or the records may have changed)."""
    here = os.path.dirname(os.path.abspath(__file__))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = os.path.join(here, "callgate_journal" + suffix)
        if not os.path.exists(path):
            continue
        try:
            loader = importlib.machinery.ExtensionFileLoader("callgate_journal", path)
            spec = importlib.util.spec_from_file_location("callgate_journal", path, loader=loader)
            assert spec is not None
            module = importlib.util.module_from_spec(spec)
            loader.exec_module(module)
        except Exception as exc:   # (any failure to load is a reason to read in Python, never to stop)
            return read_journal, f"in Python ({path} does not load: {exc!r:.200})"
        version, reader = getattr(module, "VERSION", None), getattr(module, "read_journal", None)
        if version != JOURNAL_READER_VERSION or not callable(reader):
            what = f"is version {version}" if version != JOURNAL_READER_VERSION else "has no read_journal"
            return read_journal, (f"in Python ({path} {what}, this spool reads version {JOURNAL_READER_VERSION}: "
                                  "`make build` again)")
        return reader, "compiled"
    return read_journal, "in Python (callgate_journal not built beside the spool: `make build`)"


class Intake:
    """What a round read of the journals (`Spool.read`): each record's events, in the order written, and where
    each journal's reading ends, for `Spool.store`.  (A plain class: the tests load this module by its path, where
    a dataclass cannot find its module.)"""

    def __init__(self) -> None:
        self.records: list[list[Row]] = []
        self.offsets: dict[str, int] = {}   # journal: bytes read
        self.ends: dict[str, bool] = {}     # journal: read to its end
        self.names: list[str] = []          # the journals found
        self.problems: list[str] = []       # to log

    @property
    def rows(self) -> list[Row]:
        return [row for record in self.records for row in record]


class Spool:
    """Call events waiting for callgate: a SQLite file per host (PATH), its journals beside it (PATH.journal/).

    A row per event, unique on its key (call id and kind), so that a RINGING
    spooled twice (a 180 and a 183 in two workers) or a retransmitted reply
    adds nothing.  Rows are sent in id order and kept an hour after they were
    sent.  SIP workers `add` (to their journal); the sender `ingest`s.
    """

    def __init__(self, path: str, max_pending: int) -> None:
        self.path, self.max_pending = path, max_pending
        self.journals = path + ".journal"
        self.journal = Journal(self.journals)
        self._waiting_on: set[str] = set()   # damaged journals of live processes, already reported
        self._conn: sqlite3.Connection | None = None
        self._pid = 0
        self._counted = (0.0, 0)
        self._known: dict[str, int] | None = None   # `_read_to`
        self._known_pid = 0
        self._unsaved: dict[str, int] = {}   # offsets read past what the table holds (`store`)
        self._saved_at = 0.0
        self._alive: dict[str, float] = {}   # journal: when it was last found written (`_forget_finished`)
        self._claim_fd = -1                  # `claim_sender`: the lock file held, in the process `_claim_pid`
        self._claim_pid = 0

    def claim_sender(self) -> tuple[bool, str]:
        """(whether this process is the spool's one sender, who else is).  The sender is the only writer of
        the SQLite file and the one reader of the journals: an exclusive flock on SPOOL.sender, taken at the
        first round and held while the process lives.  A second Kamailio started with the same CALLGATE_SPOOL
        (a copied configuration) finds it taken: its workers' journals are read and sent by the first one's
        sender, which reads every journal of the directory, and it takes over when that process is gone (the
        kernel drops its lock with it).  The holder writes its pid into the file, for the other's log line."""
        if self._claim_fd >= 0 and self._claim_pid == os.getpid():
            return True, ""
        folder = os.path.dirname(self.path)
        if folder:
            os.makedirs(folder, exist_ok=True)
        fd = os.open(self.path + ".sender", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                return False, os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            except OSError:
                return False, ""
            finally:
                os.close(fd)
        except BaseException:
            os.close(fd)
            raise
        self._claim_fd, self._claim_pid = fd, os.getpid()
        try:   # (only for the other's log line: a full disk must not cost the lock)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass
        return True, ""

    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._pid != os.getpid():  # one connection per process, opened after the fork
            folder = os.path.dirname(self.path)
            if folder:
                os.makedirs(folder, exist_ok=True)
            # Every Kamailio process opens the file as it starts, all at once: the first to switch it to WAL and
            # create the table holds it for a moment, so the opening waits up to 5 s for the others; then a
            # SIP worker never waits more than 0.2 s on the spool.  SQLite answers "database is locked" at once,
            # without waiting out its timeout, where waiting could deadlock (processes switching a new file to WAL
            # together; seen in a test run's log): the whole opening is tried again, for 5 s.
            self._conn, self._pid = retry_locked(self._open, 5.0, pause_s=0.02), os.getpid()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=5.0, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # survives a Kamailio crash; a power cut may lose the last
            conn.execute("""CREATE TABLE IF NOT EXISTS events (
                                id       INTEGER PRIMARY KEY AUTOINCREMENT,
                                key      TEXT    NOT NULL UNIQUE,
                                call     TEXT    NOT NULL,
                                request  BLOB    NOT NULL,
                                created  REAL    NOT NULL,
                                state    INTEGER NOT NULL DEFAULT 0,
                                attempts INTEGER NOT NULL DEFAULT 0,
                                error    TEXT    NOT NULL DEFAULT '',
                                done_at  REAL    NOT NULL DEFAULT 0)""")
            conn.execute("CREATE INDEX IF NOT EXISTS events_pending ON events (state, call, id)")
            conn.execute("CREATE INDEX IF NOT EXISTS events_waiting ON events (state, id)")   # (the backlog in order)
            # the events waiting out a retry (few, if any): `pending` asks it at every round of a backlog
            conn.execute("CREATE INDEX IF NOT EXISTS events_retrying ON events (call, done_at) "
                         "WHERE state = 0 AND attempts > 0")
            # how far each journal has been moved into the table (committed with the rows it moved)
            conn.execute("CREATE TABLE IF NOT EXISTS journals (name TEXT PRIMARY KEY, offset INTEGER NOT NULL)")
            conn.execute("PRAGMA busy_timeout = 200")
        except BaseException:
            conn.close()
            raise
        return conn

    def full(self, ended: bool) -> bool:
        """Past `max_pending` (CALLGATE_SPOOL_MAX) waiting events new calls' events are refused; an ENDED is
        taken up to twice that (a lost ENDED leaves its call to the expiry, which bills it as talking until
        then).  The count is read at most once a second per process (`pending`)."""
        return self.pending_count() >= (2 * self.max_pending if ended else self.max_pending)

    def pending_count(self) -> int:
        """The waiting events, read from the table at most once a second per process: a count scans them all
        (100,000 while callgate is away), too much for every append or every round of the sender."""
        now = time.monotonic()
        if now - self._counted[0] > 1.0:
            self._counted = (now, int(self.conn().execute("SELECT COUNT(*) FROM events WHERE state = 0")
                                      .fetchone()[0]))
        return self._counted[1]

    def add_raw(self, payload: bytes, ended: bool) -> None:
        """Append a raw record (what the script's converter turns into events when the sender moves it: a
        record with no key and no call); `ended`: its events are a call's end alone (see `add`)."""
        self._admit(ended)
        self.journal.append([("", "", payload)], raw=True)

    def add(self, items: list[tuple[str, str, bytes]]) -> None:
        """Append (key, call, request) events to this process's journal, in one write (a SIP worker never waits
        on the spool); OverflowError past CALLGATE_SPOOL_MAX waiting events (read from the table at most once a
        second), where a call's end is still taken up to twice that (a lost ENDED leaves its call to the
        expiry, which bills it as talking until then)."""
        self._admit(all(key.endswith(":ENDED") for key, _, _ in items))
        self.journal.append(items)

    def _admit(self, ended: bool) -> None:
        """OverflowError when the spool takes no more events of this kind (`full`)."""
        if self.full(ended):
            raise OverflowError(f"the spool holds {self._counted[1]} waiting events, its limit "
                                f"(CALLGATE_SPOOL_MAX) is {self.max_pending}")

    def ingest(self, convert: Convert | None = None) -> tuple[int, list[str]]:
        """Move the journals' new records into the table (`read`, then `store`): (events moved, problems to
        log)."""
        intake = self.read(convert)
        return self.store(intake), intake.problems

    def read(self, convert: Convert | None = None) -> Intake:
        """The journals' new records, in the order they were written across processes, each once (what a round
        read counts as read when it is `store`d).  A raw record (`add_raw`) becomes the events `convert` makes of
        it, in its place in that order; one it refuses (ValueError) is a problem and dropped; any other
        exception is raised (nothing counts as read).  Without `convert` (a script older than the spool module)
        a journal's records stop at its first raw one: it waits, logged once."""
        watermark = time.monotonic_ns() - WATERMARK_NS
        intake = Intake()
        try:
            names = intake.names = sorted(n for n in os.listdir(self.journals) if n.endswith(JOURNAL_SUFFIX))
        except FileNotFoundError:
            return intake
        known = self._read_to()
        reader = journal_reader()[0]
        found: list[tuple[int, float, str, str, bytes]] = []
        problems = intake.problems
        for name in names:
            path = os.path.join(self.journals, name)
            start = known.get(name, 0)
            try:
                # (most journals, most rounds: nothing new, one stat; what is written after it: next round)
                size = os.stat(path).st_size
                if size <= start:
                    intake.offsets[name], intake.ends[name] = start, True
                    continue
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:   # what is there, not MAX_READ: a buffer of 8 MiB is mapped and unmapped at every read
                    data = os.pread(fd, min(MAX_READ, size - start), start)
                finally:
                    os.close(fd)
            except OSError as exc:
                problems.append(f"journal {name} cannot be read: {exc}")
                continue
            used = 0
            while True:
                records, used, damage = reader(data, watermark, convert is not None, used)
                found.extend(records)
                if not damage:
                    if convert is None and name not in self._waiting_on:
                        waiting, _, _ = _record_at(data, used) if used + _RECORD.size <= len(data) else (None, 0, "")
                        if waiting is not None and not waiting[2]:
                            self._waiting_on.add(name)
                            problems.append(f"journal {name}: raw records wait for a sender of this spool's "
                                            "version (the script is older than its spool module)")
                    break
                # skip to the next sound record; none: to the end once its process writes no more
                resume = next_record(data, used)
                skip_to = resume if resume is not None else (None if _writing(name, names) else len(data))
                if skip_to is None:
                    if name not in self._waiting_on:
                        self._waiting_on.add(name)
                        problems.append(f"journal {name}: {damage[:80]} (byte {start + used:,}): waiting for what "
                                        "its process writes next")
                    break
                problems.append(f"journal {name}: {damage[:80]} (byte {start + used:,}): {skip_to - used:,} bytes "
                                "skipped, the events in them lost")
                used = skip_to
            intake.offsets[name] = start + used
            intake.ends[name] = start + used >= size
        found.sort(key=operator.itemgetter(0))   # one clock for every process: the order the events were written in
        for _, wall, key, call, request in found:
            if key:
                intake.records.append([(key, call, request, wall)])
                continue
            try:   # a raw record: its events, in its order (the sort is stable), each with its time
                assert convert is not None   # (read only with a converter)
                intake.records.append([(k, c, r, wall) for k, c, r in convert(request)])
            except ValueError as exc:
                problems.append(f"a record of the journals could not be made into events, its events lost: "
                                f"{str(exc)[:200]}")
        return intake

    def store(self, intake: Intake, settled: Mapping[str, tuple[int, str]] | None = None,
              sent_all: bool = False) -> int:
        """Count what `intake` read as read, and keep its events that wait: all of them, or, for those the
        sender sent straight away (`settled`: key -> (SENT, REFUSED or RETRY, error)), none answered, the refused
        ones as refused (kept for the figures) and those to try again as waiting out their first retry; in one
        transaction, with how far the journals were read (with no event kept: that alone, at most
        OFFSETS_EVERY_S after it was read; none when nothing changed).  Journals read
        whole whose process is gone are then removed.  The events kept waiting (past CALLGATE_SPOOL_MAX some
        are dropped: a problem).  `sent_all`: every event of `intake` was answered and none refused (the usual
        round: no event is looked at, `settled` neither)."""
        settled = settled or {}
        records = [] if sent_all else [
            [row for row in record if settled.get(row[0], (PENDING,))[0] in (PENDING, RETRY)]
            for record in intake.records]
        kept = {id(row) for row in self._within_limit([record for record in records if record], intake.problems)}
        now = time.time()
        rows = []   # in the order written: pending (0; after a RETRY: tried once, not before done_at) or refused
        for record in () if sent_all else intake.records:
            for row in record:
                state, error = settled.get(row[0], (PENDING, ""))
                if state == RETRY and id(row) in kept:
                    rows.append((*row, PENDING, error[:500], now + retry_after(1), 1))
                elif state == REFUSED or (state == PENDING and id(row) in kept):
                    rows.append((*row, state, error[:500], now if state else 0.0, 1 if state else 0))
        known = self._read_to()
        moved = {name: at for name, at in intake.offsets.items() if known.get(name) != at}
        unsaved = {**self._unsaved, **moved}
        # Events all answered leave nothing to keep but how far the journals were read, which is then committed
        # at most once every OFFSETS_EVERY_S (a commit, ~100 us of a round, is most of a quiet round's cost): a
        # crash meanwhile has those events sent again, and callgate answers a replay with its recorded reply.
        if rows or (unsaved and (time.monotonic() - self._saved_at >= OFFSETS_EVERY_S or intake.problems)):
            conn = self.conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany("INSERT OR IGNORE INTO events (key, call, request, created, state, error, done_at, "
                                 "attempts) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
                conn.executemany("INSERT INTO journals (name, offset) VALUES (?, ?) "
                                 "ON CONFLICT (name) DO UPDATE SET offset = excluded.offset", list(unsaved.items()))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._known, self._unsaved = None, {}   # read again from the table (what it lacks: sent again)
                raise
            unsaved, self._saved_at = {}, time.monotonic()
        known.update(moved)
        self._unsaved = unsaved
        self._forget_finished(intake.names, intake.ends)
        return len(kept)

    def _read_to(self) -> dict[str, int]:
        """How far each journal has been moved (the table's `journals`, kept in memory by the one process that
        writes it: the sender)."""
        if self._known is None or self._known_pid != os.getpid():
            self._known = {str(n): int(at) for n, at in self.conn().execute("SELECT name, offset FROM journals")}
            self._known_pid = os.getpid()
        return self._known

    def _within_limit(self, records: list[list[Row]], problems: list[str]) -> list[Row]:
        """The rows the spool takes of the records' events: past `max_pending` waiting events a record of a call's
        end alone is taken up to twice that, any other dropped whole (as `full` has the SIP workers refuse them as
        they append: kept here too for the records Kamailio's callgate_events module writes, which no count is
        read for); what is dropped is a problem."""
        rows = [row for record in records for row in record]
        if not rows:
            return rows
        pending = self.pending_count()
        if pending + len(rows) <= self.max_pending:
            self._counted = (self._counted[0], pending + len(rows))   # (at most: a repeat adds no row)
            return rows
        conn = self.conn()
        # near the limit: a row the table holds already (or an earlier row of this round) adds nothing, so it is
        # neither counted nor dropped (INSERT OR IGNORE leaves it out)
        keys = [row[0] for row in rows]
        seen: set[str] = set()
        for at in range(0, len(keys), 900):   # (within SQLite's limit of bound parameters)
            part = keys[at:at + 900]
            seen.update(k for (k,) in conn.execute(
                f"SELECT key FROM events WHERE key IN ({','.join('?' * len(part))})", part))
        kept = []
        for record in records:
            new = {row[0] for row in record} - seen   # (none: the record adds nothing, and is kept)
            ended = all(key.endswith(":ENDED") for key in new)
            if not new or pending + len(new) <= (2 * self.max_pending if ended else self.max_pending):
                kept.extend(record)
                seen |= new
                pending += len(new)
        self._counted = (self._counted[0], pending)
        if len(kept) < len(rows):
            problems.append(f"{len(rows) - len(kept)} call event(s) not spooled, lost: the spool holds {pending} "
                            f"waiting events, its limit (CALLGATE_SPOOL_MAX) is {self.max_pending}")
        return kept

    def _forget_finished(self, names: list[str], ends: dict[str, bool]) -> None:
        """Remove the journals read to their end whose process will write no more: a newer journal of the same
        process exists, or the process is gone (a live process keeps its newest file: it may still write)."""
        gone = []
        now = time.monotonic()
        # (a journal found written is asked again a second later, not at every round: /proc read per journal)
        self._alive = {name: at for name, at in self._alive.items() if now - at < LIVE_RECHECK_S}
        for name in names:
            if not ends.get(name) or name in self._alive:
                continue
            if _writing(name, names):
                self._alive[name] = now
                continue
            path = os.path.join(self.journals, name)
            try:
                # (what its process wrote between this round's read and its end is still to be read)
                if os.stat(path).st_size != self._read_to().get(name):
                    continue
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError:
                continue
            gone.append((name,))
        if gone:
            self.conn().executemany("DELETE FROM journals WHERE name = ?", gone)
            for (name,) in gone:
                self._read_to().pop(name, None)
                self._unsaved.pop(name, None)

    def pending(self, limit: int, first_of_call: bool = False) -> list[tuple[int, str, bytes]]:
        """The oldest waiting events, (id, call, request), oldest first; with `first_of_call` only each call's
        oldest (a call's next event goes only after this one is answered)."""
        # a call with an event waiting out its retry (tried, done_at: not before) is held whole: nothing of it
        # goes before that event (asked only when one waits: the partial index finds none at once).  A not-before
        # further ahead than the longest wait is the wall clock stepped back since: due now.
        conn, now = self.conn(), time.time()
        args = {"now": now, "latest": now + retry_after(RETRY_TRIES), "limit": limit}
        held = conn.execute("SELECT 1 FROM events INDEXED BY events_retrying WHERE state = 0 AND attempts > 0 "
                            "AND done_at > :now AND done_at <= :latest LIMIT 1", args).fetchone() is not None
        unheld = ("AND NOT EXISTS (SELECT 1 FROM events AS r WHERE r.call = events.call AND r.state = 0 "
                  "AND r.attempts > 0 AND r.done_at > :now AND r.done_at <= :latest)") if held else ""
        if first_of_call:
            return conn.execute(f"""SELECT id, call, request FROM events WHERE id IN (
                                        SELECT MIN(id) FROM events WHERE state = 0 GROUP BY call) {unheld}
                                    ORDER BY id LIMIT :limit""", args).fetchall()
        return conn.execute(f"SELECT id, call, request FROM events WHERE state = 0 {unheld} ORDER BY id LIMIT :limit",
                            args).fetchall()

    def waiting(self) -> bool:
        """Whether any event waits (sendable or waiting out its retry)."""
        return self.conn().execute("SELECT 1 FROM events WHERE state = 0 LIMIT 1").fetchone() is not None

    def mark(self, done: list[tuple[int, int, str]]) -> list[int]:
        """(id, state, error) of events sent or refused for good, or to try again later (RETRY: pending, not
        before `retry_after` its tries; refused after RETRY_TRIES).  The ids refused for their tries."""
        conn = self.conn()
        now = time.time()
        retried = [(error[:500], i) for i, state, error in done if state == RETRY]
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("UPDATE events SET state = ?, error = ?, done_at = ?, attempts = attempts + 1 "
                             "WHERE id = ?", [(state, error[:500], now, i) for i, state, error in done
                                              if state != RETRY])
            gave_up: list[int] = []
            for error, i in retried:
                (tries,) = conn.execute("SELECT attempts + 1 FROM events WHERE id = ?", (i,)).fetchone() or (1,)
                refused = tries >= RETRY_TRIES
                conn.execute("UPDATE events SET attempts = ?, error = ?, state = ?, done_at = ? WHERE id = ?",
                             (tries, error, REFUSED if refused else PENDING,
                              now if refused else now + retry_after(tries), i))
                if refused:
                    gave_up.append(i)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return gave_up

    def stats(self) -> tuple[int, float, int]:
        """(pending events, age of the oldest in seconds, refused events)."""
        conn = self.conn()
        pending, oldest = conn.execute("SELECT COUNT(*), MIN(created) FROM events WHERE state = 0").fetchone()
        refused = conn.execute("SELECT COUNT(*) FROM events WHERE state = 2").fetchone()[0]
        return int(pending), (time.time() - oldest) if oldest else 0.0, int(refused)

    def purge(self, sent_s: float, refused_s: float) -> None:
        """Forget sent events after `sent_s` and refused ones after `refused_s`, a thousand rows a transaction
        (the workers' writes wait on it for a moment only)."""
        conn = self.conn()
        for state, age in ((SENT, sent_s), (REFUSED, refused_s)):
            while conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events WHERE state = ? AND "
                               "done_at < ? LIMIT 1000)", (state, time.time() - age)).rowcount == 1000:
                pass
