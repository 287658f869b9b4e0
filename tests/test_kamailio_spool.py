"""The Kamailio script's event spool (integrations/kamailio/callgate_spool.py) without Kamailio: what it does
when SQLite says the file is locked."""

from __future__ import annotations

import errno
import importlib.util
import os
import sqlite3
import time
import zlib
from pathlib import Path
from typing import Any

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "callgate_spool", Path(__file__).resolve().parent.parent / "integrations" / "kamailio" / "callgate_spool.py")
assert _SPEC is not None and _SPEC.loader is not None
spool = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(spool)


def test_a_locked_file_is_tried_again_until_it_opens() -> None:
    tries = []

    def opening() -> str:
        tries.append(time.monotonic())
        if len(tries) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "open"

    assert spool.retry_locked(opening, 5.0, pause_s=0.01) == "open"
    assert len(tries) == 3


def test_other_errors_and_a_lock_past_the_patience_are_raised() -> None:
    def broken() -> None:
        raise sqlite3.OperationalError("disk I/O error")

    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        spool.retry_locked(broken, 5.0)

    tries = []

    def locked() -> None:
        tries.append(1)
        raise sqlite3.OperationalError("database is locked")

    start = time.monotonic()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        spool.retry_locked(locked, 0.1, pause_s=0.01)
    assert 0.1 <= time.monotonic() - start < 2.0 and len(tries) > 1
    tries.clear()
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        spool.retry_locked(locked, 0.0)  # no patience: tried once
    assert len(tries) == 1


def pending_keys(events: Any) -> list[str]:
    return [k for (k,) in events.conn().execute("SELECT key FROM events WHERE state = 0 ORDER BY id")]


def test_workers_append_to_journals_and_the_sender_takes_them_in_order_once(tmp_path: Path) -> None:
    """Two SIP workers' journals (two processes: here two journals of one), their events moved into the table
    in the order written across both, each once however often the sender looks; a RINGING spooled by two
    workers at once is kept once."""
    path = str(tmp_path / "events.sqlite")
    sender = spool.Spool(path, max_pending=100)
    first, second = spool.Journal(sender.journals), spool.Journal(sender.journals)
    second._pid = os.getpid()          # a journal of its own, as another process would have
    second._open()
    first.append([("c1:RINGING", "c1", b"r1")])
    second.append([("c2:RINGING", "c2", b"r2"), ("c1:RINGING", "c1", b"again")])
    first.append([("c1:ANSWERED", "c1", b"a1")])
    second.append([("c1:ENDED", "c1", b"e1")])
    assert len(os.listdir(sender.journals)) == 2
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)   # younger records wait for the next round
    moved, problems = sender.ingest()
    assert (moved, problems) == (5, [])
    assert pending_keys(sender) == ["c1:RINGING", "c2:RINGING", "c1:ANSWERED", "c1:ENDED"]
    assert sender.ingest() == (0, [])  # nothing read twice
    first.append([("c3:RINGING", "c3", b"r3")])
    assert sender.ingest() == (0, [])  # too young for this round: written as the sender read
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest()[0] == 1 and pending_keys(sender)[-1] == "c3:RINGING"
    # the oldest waiting events, and the oldest waiting event of each call
    assert [request for _, _, request in sender.pending(10)] == [b"r1", b"r2", b"a1", b"e1", b"r3"]
    assert [request for _, _, request in sender.pending(4)] == [b"r1", b"r2", b"a1", b"e1"]
    assert [(call, request) for _, call, request in sender.pending(10, first_of_call=True)] == [
        ("c1", b"r1"), ("c2", b"r2"), ("c3", b"r3")]


def test_a_damaged_journal_loses_only_what_is_damaged(tmp_path: Path) -> None:
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    journal = spool.Journal(sender.journals)
    journal.append([("c1:RINGING", "c1", b"r1")])
    journal.append([("c2:RINGING", "c2", b"r2")])
    journal.append([("c3:RINGING", "c3", b"r3")])
    (name,) = os.listdir(sender.journals)
    path = tmp_path / "events.sqlite.journal" / name
    data = bytearray(path.read_bytes())
    second = data.index(b"c2:RINGING")
    data[second] ^= 0xFF                    # a bit of the second record flipped on the disk
    path.write_bytes(bytes(data) + b"\x00" * 7)   # and a torn tail
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    moved, problems = sender.ingest()
    assert moved == 2 and pending_keys(sender) == ["c1:RINGING", "c3:RINGING"]
    assert len(problems) == 1 and "damaged record" in problems[0] and "skipped" in problems[0], problems
    # its process (this one) may still write: the file stays, and what comes next is read
    journal.append([("c4:RINGING", "c4", b"r4")])
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    moved, problems = sender.ingest()
    assert moved == 1 and pending_keys(sender)[-1] == "c4:RINGING", problems


def test_journals_of_processes_that_are_gone_are_removed_once_read(tmp_path: Path) -> None:
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    os.makedirs(sender.journals)
    child = os.fork()
    if child == 0:   # a SIP worker that writes and exits (Kamailio stopped, or the worker crashed)
        try:
            spool.Journal(sender.journals).append([("c9:RINGING", "c9", b"r9")])
        finally:
            os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    live = spool.Journal(sender.journals)
    live.append([("c1:RINGING", "c1", b"r1")])
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (2, [])
    assert [n.split("-")[0] for n in os.listdir(sender.journals)] == [str(os.getpid())]   # the live one stays
    assert [n for (n,) in sender.conn().execute("SELECT name FROM journals")] == os.listdir(sender.journals)


def test_a_journal_found_written_is_asked_again_a_second_later_and_then_removed(tmp_path: Path) -> None:
    """Whether a journal's process still writes it (/proc read per journal) is asked once a second, not at every
    round: a process that exits has its journal removed at the first round a second after it was last found."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    os.makedirs(sender.journals)
    go, ready = os.pipe(), os.pipe()
    child = os.fork()
    if child == 0:   # a SIP worker that writes, and exits when told
        try:
            spool.Journal(sender.journals).append([("c9:RINGING", "c9", b"r9")])
            os.write(ready[1], b"w")
            os.read(go[0], 1)
        finally:
            os._exit(0)
    os.read(ready[0], 1)
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (1, []) and len(os.listdir(sender.journals)) == 1   # alive: kept
    os.write(go[1], b"x")
    assert os.waitpid(child, 0)[1] == 0
    assert sender.ingest() == (0, []) and len(os.listdir(sender.journals)) == 1   # (found alive within the second)
    sender._alive = {name: at - spool.LIVE_RECHECK_S for name, at in sender._alive.items()}   # a second later
    assert sender.ingest() == (0, []) and os.listdir(sender.journals) == []
    assert list(sender.conn().execute("SELECT name FROM journals")) == []
    for fd in (*go, *ready):
        os.close(fd)


def test_past_the_limit_only_a_calls_end_is_taken(tmp_path: Path) -> None:
    """CALLGATE_SPOOL_MAX waiting events: a new call's events are refused, a call's end still taken (the script
    sends a RINGING only once a call: the dialog says so)."""
    events = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=3)
    for call in ("c1", "c2", "c3"):
        events.add([(f"{call}:RINGING", call, b"r")])
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert events.ingest()[0] == 3
    events._counted = (0.0, 0)   # the count is read at most once a second: read it now
    with pytest.raises(OverflowError, match="CALLGATE_SPOOL_MAX"):
        events.add([("c4:RINGING", "c4", b"r")])
    with pytest.raises(OverflowError):
        events.add([("c1:ANSWERED", "c1", b"a")])   # not an end
    events.add([("c1:ENDED", "c1", b"e")])
    with pytest.raises(OverflowError):   # a call that never rang: a new call's events
        events.add([("c5:RINGING", "c5", b"r"), ("c5:ENDED", "c5", b"e")])
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert events.ingest()[0] == 1 and events.stats()[0] == 4


def test_a_full_disk_leaves_no_part_of_an_event(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    journal = spool.Journal(sender.journals)
    journal.append([("c1:RINGING", "c1", b"r1")])
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))   # the disk takes 10 bytes
    with pytest.raises(OSError, match="took 10 of"):
        journal.append([("c2:RINGING", "c2", b"r2")])
    monkeypatch.setattr(os, "write", real_write)
    journal.append([("c3:RINGING", "c3", b"r3")])
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (2, []) and pending_keys(sender) == ["c1:RINGING", "c3:RINGING"]


def test_raw_records_become_their_events_in_their_place_and_a_bad_one_is_logged(tmp_path: Path) -> None:
    """A worker's raw record (the call's record, made into events by the sender's converter) takes the place
    in the order it was written in; one the converter refuses is a problem logged, the others all moved; an
    error of another kind moves nothing (tried again)."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    worker = spool.Journal(sender.journals)
    worker.append([("c1:RINGING", "c1", b"r1")])
    worker.append([("", "", b"c2")], raw=True)            # raw: RINGING and ANSWERED of c2
    worker.append([("", "", b"bad")], raw=True)           # raw, refused by the converter
    worker.append([("c1:ANSWERED", "c1", b"a1")])
    with pytest.raises(ValueError):
        worker.append([("", "", b"c9")])                  # an event without a key is no event
    with pytest.raises(ValueError):
        worker.append([("k", "c", b"c9")], raw=True)

    def convert(raw: bytes) -> list[tuple[str, str, bytes]]:
        if raw == b"bad":
            raise ValueError("not a record")
        call = raw.decode()
        return [(f"{call}:RINGING", call, b"r2"), (f"{call}:ANSWERED", call, b"a2")]

    def broken(raw: bytes) -> list[tuple[str, str, bytes]]:
        raise MemoryError

    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    with pytest.raises(MemoryError):
        sender.ingest(broken)
    assert pending_keys(sender) == []                     # nothing moved, nothing lost
    moved, problems = sender.ingest(convert)
    assert moved == 4 and len(problems) == 1 and "not a record" in problems[0]
    assert pending_keys(sender) == ["c1:RINGING", "c2:RINGING", "c2:ANSWERED", "c1:ANSWERED"]
    assert sender.ingest(convert) == (0, [])   # each once


def test_without_a_converter_raw_records_wait_and_no_event_has_an_empty_key(tmp_path: Path) -> None:
    """A sender of an older script (no converter) stops each journal at its first raw record, says so once,
    and leaves it for a sender that can read it; an event record without a key is damage, never a row."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    worker = spool.Journal(sender.journals)
    worker.append([("c1:RINGING", "c1", b"r1")])
    worker.append([("", "", b"c2")], raw=True)
    worker.append([("c1:ANSWERED", "c1", b"a1")])
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    moved, problems = sender.ingest()
    assert moved == 1 and len(problems) == 1 and "wait" in problems[0]
    assert sender.ingest() == (0, [])              # said once
    moved, problems = sender.ingest(lambda raw: [("c2:RINGING", "c2", raw)])
    assert (moved, problems) == (2, []) and pending_keys(sender) == ["c1:RINGING", "c2:RINGING", "c1:ANSWERED"]
    record = spool._RECORD.pack(spool._MAGIC, 3, zlib.crc32(b"abc"), 1, 1.0, 0, 0) + b"abc"
    assert spool._record_at(record, 0)[2].startswith("no record")


def _as_events(raw: bytes) -> list[tuple[str, str, bytes]]:
    call = raw.decode()
    return [(f"{call}:RINGING", call, b"r")]


def test_raw_records_under_a_full_disk_a_killed_writer_and_the_limit(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A raw record is a record like any: a full disk leaves no part of it, a SIP worker killed after writing one
    leaves it to be moved and its journal removed, and past CALLGATE_SPOOL_MAX only a call's end is taken."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=3)
    os.makedirs(sender.journals)
    child = os.fork()
    if child == 0:   # a SIP worker killed right after its append: nothing of it but the journal stays
        spool.Journal(sender.journals).append([("", "", b"k1")], raw=True)
        os.kill(os.getpid(), 9)
    assert os.waitpid(child, 0)[1] & 0x7F == 9
    worker = spool.Spool(sender.path, max_pending=3)
    worker.add_raw(b"c1", ended=False)
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))   # the disk takes 10 bytes
    with pytest.raises(OSError, match="took 10 of"):
        worker.add_raw(b"c2", ended=False)
    monkeypatch.setattr(os, "write", real_write)
    worker.add_raw(b"c3", ended=False)
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest(_as_events) == (3, []) and pending_keys(sender) == ["k1:RINGING", "c1:RINGING", "c3:RINGING"]
    assert [n.split("-")[0] for n in os.listdir(sender.journals)] == [str(os.getpid())]   # the killed one: gone
    worker._counted = (0.0, 0)   # (the count is read at most once a second)
    with pytest.raises(OverflowError):
        worker.add_raw(b"c4", ended=False)
    worker.add_raw(b"c4", ended=True)   # a call's end alone is still taken


def module_record(fields: tuple[str, ...]) -> bytes:
    """A raw record as Kamailio's callgate_events module writes it (its layout, independently of the Journal)."""
    payload = b"R1\0" + "\0".join(fields).encode()
    return spool._RECORD.pack(spool._RAW_MAGIC, len(payload), zlib.crc32(payload), time.monotonic_ns(), time.time(),
                              0, 0) + payload


def test_a_process_writes_two_journals_and_neither_is_removed_while_it_lives(tmp_path: Path) -> None:
    """A SIP worker has two writers (the script's Journal, PID-…cgj, and the module's, PID.c-…cgj): each file
    is its writer's newest, so neither is taken for finished while the process lives; the older file of one writer
    is, once read; the two writers' records go in the order they were written."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    journal = spool.Journal(sender.journals)
    journal.append([("c1:RINGING", "c1", b"r1")])
    module_old = Path(sender.journals) / f"{os.getpid()}.c-{time.time_ns() - 10**9}.cgj"
    module_old.write_bytes(module_record(("RINGING", "0", "", "c2", "")))
    module_new = Path(sender.journals) / f"{os.getpid()}.c-{time.time_ns()}.cgj"
    module_new.write_bytes(module_record(("ANSWERED", "0", "", "c2", "")))
    journal.append([("c1:ANSWERED", "c1", b"a1")])
    names = sorted(os.listdir(sender.journals))
    assert [spool._writing(n, names) for n in names] == [True, False, True]   # PID-..., PID.c-old, PID.c-new
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)

    def convert(raw: bytes) -> list[tuple[str, str, bytes]]:
        kinds, _, _, call, _ = raw[3:].decode().split("\0")
        return [(f"{call}:{kind}", call, b"") for kind in kinds.split(",")]

    assert sender.ingest(convert) == (4, [])
    assert pending_keys(sender) == ["c1:RINGING", "c2:RINGING", "c2:ANSWERED", "c1:ANSWERED"]
    assert sorted(os.listdir(sender.journals)) == [names[0], module_new.name]   # the module's older file: gone
    assert spool._writing(f"{os.getpid()}.c-1.cgj", [f"{os.getpid()}-2.cgj"])   # another writer's newer file
    assert not spool._writing("x.c-1.cgj", []) and not spool._writing("1.c-1.cgj", ["1.c-2.cgj"])


def test_a_dead_modules_journal_is_removed_once_read_and_a_live_ones_kept(tmp_path: Path) -> None:
    """The module's journals (PID.c-….cgj) as the script's: one whose process is gone (Kamailio stopped, or the
    worker crashed) is read to its end and then removed; a live process's newest is read and kept (it may still
    write)."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    os.makedirs(sender.journals)
    child = os.fork()
    if child == 0:   # a SIP worker that exits: its pid names a process no more
        os._exit(0)
    assert os.waitpid(child, 0)[1] == 0
    dead = Path(sender.journals) / f"{child}.c-{time.time_ns()}.cgj"
    dead.write_bytes(module_record(("RINGING", "0", "", "c9", "")) + module_record(("ENDED", "0", "", "c9", "")))
    live = Path(sender.journals) / f"{os.getpid()}.c-{time.time_ns()}.cgj"
    live.write_bytes(module_record(("RINGING", "0", "", "c1", "")))
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)

    def convert(raw: bytes) -> list[tuple[str, str, bytes]]:
        kinds, _, _, call, _ = raw[3:].decode().split("\0")
        return [(f"{call}:{kind}", call, b"") for kind in kinds.split(",")]

    assert sender.ingest(convert) == (3, [])
    assert pending_keys(sender) == ["c9:RINGING", "c9:ENDED", "c1:RINGING"]
    assert os.listdir(sender.journals) == [live.name]   # the dead writer's: read whole, gone
    assert [n for (n,) in sender.conn().execute("SELECT name FROM journals")] == [live.name]
    with open(live, "ab") as more:   # the live one still takes what its process writes next
        more.write(module_record(("ENDED", "0", "", "c1", "")))
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest(convert) == (1, []) and pending_keys(sender)[-1] == "c1:ENDED"


def test_past_the_limit_the_sender_drops_what_no_worker_counted(tmp_path: Path) -> None:
    """What Kamailio's module writes is counted by no worker: as the sender moves it, past CALLGATE_SPOOL_MAX
    waiting events a record of a new call's events is dropped whole (a problem logged), a record of a call's end
    alone taken up to twice that."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=2)
    os.makedirs(sender.journals)
    module = Path(sender.journals) / f"{os.getpid()}.c-{time.time_ns()}.cgj"
    module.write_bytes(b"".join(module_record((kinds, "0", "", call, "")) for kinds, call in (
        ("RINGING", "c1"), ("RINGING", "c2"), ("RINGING", "c3"), ("ENDED", "c1"), ("RINGING,ENDED", "c4"),
        ("ENDED", "c2"), ("ENDED", "c3"))))
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)

    def convert(raw: bytes) -> list[tuple[str, str, bytes]]:
        kinds, _, _, call, _ = raw[3:].decode().split("\0")
        return [(f"{call}:{kind}", call, b"") for kind in kinds.split(",")]

    moved, problems = sender.ingest(convert)
    # (c4's RINGING,ENDED is a new call's record, dropped whole; c3's end alone past twice the limit)
    assert pending_keys(sender) == ["c1:RINGING", "c2:RINGING", "c1:ENDED", "c2:ENDED"]
    assert moved == 4 and len(problems) == 1 and "4 call event(s) not spooled" in problems[0]
    assert "CALLGATE_SPOOL_MAX" in problems[0]


def test_near_the_limit_an_event_the_spool_holds_already_is_neither_counted_nor_dropped(tmp_path: Path) -> None:
    """A RINGING written twice (a 180 and a 183 in two workers, or the module and the script) adds no row: near the
    limit it takes no place a new call's event would have."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=2)
    os.makedirs(sender.journals)

    def convert(raw: bytes) -> list[tuple[str, str, bytes]]:
        kinds, _, _, call, _ = raw[3:].decode().split("\0")
        return [(f"{call}:{kind}", call, b"") for kind in kinds.split(",")]

    module = Path(sender.journals) / f"{os.getpid()}.c-{time.time_ns()}.cgj"
    module.write_bytes(module_record(("RINGING", "0", "", "c1", "")))
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest(convert) == (1, [])
    with open(module, "ab") as more:   # c1's RINGING again, twice, then c2's: the one new row fits
        more.write(b"".join(module_record(("RINGING", "0", "", call, "")) for call in ("c1", "c1", "c2")))
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest(convert) == (3, [])   # (rows offered: the table keeps one of each key)
    assert pending_keys(sender) == ["c1:RINGING", "c2:RINGING"]
    with open(module, "ab") as more:   # the spool full: a repeat still adds nothing and is no loss; an end whose
        #                                RINGING is held is a call's end alone (up to twice the limit)
        more.write(module_record(("RINGING", "0", "", "c2", "")) + module_record(("RINGING,ENDED", "0", "", "c1", "")))
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest(convert) == (3, [])
    assert pending_keys(sender) == ["c1:RINGING", "c2:RINGING", "c1:ENDED"]


def test_a_clock_stepped_back_between_two_journals_never_makes_the_live_one_look_finished(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A careless NTP steps the wall clock back between two journals of one process: the live one is still the
    live one (the names hold the boot's clock, not the wall's), so it is never removed while its process writes
    it, and no event written after is lost."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    journal = spool.Journal(sender.journals)
    journal.append([("c1:RINGING", "c1", b"r1")])
    [first] = os.listdir(sender.journals)
    monkeypatch.setattr(spool.time, "time_ns", lambda: 1_000_000_000)   # 1970: stepped back
    monkeypatch.setattr(spool.time, "time", lambda: 1.0)
    journal._size = spool.ROTATE_BYTES                                 # the next append begins another journal
    journal.append([("c2:RINGING", "c2", b"r2")])
    [second] = set(os.listdir(sender.journals)) - {first}
    names = sorted(os.listdir(sender.journals))
    assert spool._writing(second, names) and not spool._writing(first, names)
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (2, []) and os.listdir(sender.journals) == [second]
    journal.append([("c3:RINGING", "c3", b"r3")])                      # still written, and read
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (1, []) and pending_keys(sender) == ["c1:RINGING", "c2:RINGING", "c3:RINGING"]


def test_journals_of_an_earlier_process_with_the_pid_or_of_an_earlier_boot_are_finished(tmp_path: Path) -> None:
    """A pid is given again to a later process, and a machine boots again: the journals left by the processes
    before (the files of this pid begun before this process began, or in another boot) are read and removed,
    never taken for this process's live journal; and this process's newest journal is kept."""
    me = str(os.getpid())
    started = spool._started_ns(me)
    assert started is not None and started > 0, "this process's start, from /proc"
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    os.makedirs(sender.journals)
    earlier = f"{me}-b{spool.BOOT}-{started - 5_000_000_000:020d}{spool.JOURNAL_SUFFIX}"
    other_boot = f"{me}.c-b{'f' * 8 if spool.BOOT != 'f' * 8 else '0' * 8}-{started + 10**9:020d}.cgj"
    for name, key in ((earlier, "e1:RINGING"), (other_boot, "o1:RINGING")):
        record = spool.Journal(sender.journals)
        record._fd, record._pid = os.open(os.path.join(sender.journals, name), os.O_WRONLY | os.O_CREAT), os.getpid()
        record.append([(key, key.partition(":")[0], b"x")])
        record._close()
    # (before this process writes a journal of its own: each the newest of its writer's, and still not live)
    assert not spool._writing(earlier, [earlier, other_boot]) and not spool._writing(other_boot, [other_boot])
    live = spool.Journal(sender.journals)
    live.append([("l1:RINGING", "l1", b"y")])
    names = sorted(os.listdir(sender.journals))
    [current] = set(names) - {earlier, other_boot}
    assert not spool._writing(earlier, names) and not spool._writing(other_boot, names)
    assert spool._writing(current, names)
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (3, []) and os.listdir(sender.journals) == [current]


def test_a_proc_that_cannot_tell_never_makes_a_live_journal_look_finished(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Kamailio in a chroot without /proc, or /proc mounted with hidepid: the writer's start cannot be read, and
    only the process's absence (kill 0) says it is gone: its live journal is kept and read, never removed."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    journal = spool.Journal(sender.journals)
    journal.append([("c1:RINGING", "c1", b"r1")])
    real_open = open

    def no_proc(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).startswith("/proc/"):
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(spool, "open", no_proc, raising=False)
    assert spool._started_ns(str(os.getpid())) == -1
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (1, []) and len(os.listdir(sender.journals)) == 1
    journal.append([("c2:RINGING", "c2", b"r2")])
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (1, []) and pending_keys(sender) == ["c1:RINGING", "c2:RINGING"]


def test_without_a_boot_id_a_journal_of_an_earlier_boot_is_told_by_its_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel that gives no boot id, a reboot, the same pid again: the journal of the boot before (begun later,
    by its clock, than this boot has run) is not the live one, and the live one is."""
    monkeypatch.setattr(spool, "BOOT", "")
    me = str(os.getpid())
    live = spool.journal_name(me)
    before = f"{me}-b-{time.clock_gettime_ns(time.CLOCK_BOOTTIME) + 5 * 86_400 * 10**9:020d}.cgj"
    assert live.startswith(f"{me}-b-")
    assert spool._writing(live, [live, before]) and not spool._writing(before, [live, before])


@pytest.mark.parametrize("name", ["123-b-\u00b2.cgj", "\u0661\u0662-1.cgj", "12-bzzzzzzzz-1.cgj", "x-1.cgj",
                                  "-.cgj", "12.c.c-1.cgj", "99999999999999999999999-1.cgj"])
def test_a_file_no_writer_names_so_is_read_and_removed_and_stops_nothing(tmp_path: Path, name: str) -> None:
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    journal = spool.Journal(sender.journals)
    journal.append([("c1:RINGING", "c1", b"r1")])
    with open(os.path.join(sender.journals, name), "wb") as f:
        f.write(b"")
    names = sorted(os.listdir(sender.journals))
    assert not spool._writing(name, names) and spool._writing(next(n for n in names if n != name), names)
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (1, []) and name not in os.listdir(sender.journals)


def test_what_a_writer_appends_as_it_exits_during_a_round_is_read_before_its_journal_goes(tmp_path: Path) -> None:
    """A round reads a journal to its end; its process then appends a call's ENDED and exits (Kamailio stopped)
    before the round is over: the journal is not removed with the ENDED unread."""
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    os.makedirs(sender.journals)
    ready, go = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            journal = spool.Journal(sender.journals)
            journal.append([("c1:RINGING", "c1", b"r1")])
            os.read(ready, 1)   # (the round has read)
            journal.append([("c1:ENDED", "c1", b"e1")])
        finally:
            os._exit(0)
    wait_for_file = time.monotonic() + 10
    while not os.listdir(sender.journals) and time.monotonic() < wait_for_file:
        time.sleep(0.01)
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    intake = sender.read()
    os.write(go, b"x")
    assert os.waitpid(child, 0)[1] == 0   # the ENDED appended, the writer gone
    assert sender.store(intake) == 1 and len(os.listdir(sender.journals)) == 1
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (1, []) and os.listdir(sender.journals) == []
    assert pending_keys(sender) == ["c1:RINGING", "c1:ENDED"]


def test_a_journal_removed_under_its_writer_is_begun_again_not_written_into_the_void(tmp_path: Path) -> None:
    sender = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    journal = spool.Journal(sender.journals)
    journal.append([("c1:RINGING", "c1", b"r1")])
    [first] = os.listdir(sender.journals)
    os.unlink(os.path.join(sender.journals, first))   # (by hand, or a sender that took it for finished)
    journal.append([("c2:RINGING", "c2", b"r2")])
    assert len(os.listdir(sender.journals)) == 1 and os.listdir(sender.journals) != [first]
    time.sleep(spool.WATERMARK_NS / 1e9 + 0.01)
    assert sender.ingest() == (1, []) and pending_keys(sender) == ["c2:RINGING"]


def test_one_sender_per_spool_even_when_its_pid_cannot_be_written(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """`claim_sender`: the first Spool of a path holds the lock for good; another (a second Kamailio's sender)
    is told who holds it; a full disk that keeps the pid from being written does not cost the lock."""
    first = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=100)
    second = spool.Spool(first.path, max_pending=100)
    full = OSError(errno.ENOSPC, "No space left on device")

    def no_space(*_: object) -> int:
        raise full

    monkeypatch.setattr(spool.os, "pwrite", no_space)
    assert first.claim_sender() == (True, "") and first.claim_sender() == (True, "")
    assert second.claim_sender() == (False, "")   # (held; no pid written)
    monkeypatch.undo()
    os.close(first._claim_fd)   # (what the kernel does for a sender killed)
    first._claim_fd = -1
    assert second.claim_sender() == (True, "")
    assert first.claim_sender() == (False, str(os.getpid()))
    os.close(second._claim_fd)
