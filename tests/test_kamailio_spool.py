"""The Kamailio script's event spool (integrations/kamailio/callgate_spool.py) without Kamailio: what it does
when SQLite says the file is locked."""

from __future__ import annotations

import importlib.util
import sqlite3
import threading
import time
from pathlib import Path

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


def test_an_ended_waits_for_a_writer_that_a_ringing_does_not_wait_for(tmp_path: Path) -> None:
    path = str(tmp_path / "spool.sqlite")
    events = spool.Spool(path, max_pending=100)
    assert events.add([("c1:RINGING", "c1", b"r")]) == ["c1:RINGING"]
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another Kamailio process holds the write lock for 0.6 s
    try:
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            events.add([("c2:RINGING", "c2", b"r")])  # a SIP worker waits 0.2 s at most
        threading.Timer(0.6, lambda: other.execute("COMMIT")).start()
        start = time.monotonic()
        assert events.add([("c1:ENDED", "c1", b"e")]) == ["c1:ENDED"]  # waits up to 2 s
        assert 0.3 < time.monotonic() - start < 2.0
    finally:
        other.close()
    assert events.has("c1:ENDED") and not events.has("c2:RINGING")


def test_past_the_limit_only_a_calls_end_is_taken(tmp_path: Path) -> None:
    """CALLGATE_SPOOL_MAX waiting events: a new call's events are refused, a call's end still taken, also when
    the script sends it with the call's RINGING (it always does: the spool's key ignores a second one)."""
    events = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=3)
    for call in ("c1", "c2", "c3"):
        assert events.add([(f"{call}:RINGING", call, b"r")]) == [f"{call}:RINGING"]
    events._counted = (0.0, 0)   # the count is read at most once a second: read it now
    with pytest.raises(OverflowError, match="CALLGATE_SPOOL_MAX"):
        events.add([("c4:RINGING", "c4", b"r")])
    with pytest.raises(OverflowError):
        events.add([("c1:RINGING", "c1", b"r"), ("c1:ANSWERED", "c1", b"a")])   # not an end
    assert events.add([("c1:RINGING", "c1", b"r"), ("c1:ENDED", "c1", b"e")]) == ["c1:ENDED"]
    with pytest.raises(OverflowError):   # a call whose RINGING is not spooled: a new call's events
        events.add([("c5:RINGING", "c5", b"r"), ("c5:ENDED", "c5", b"e")])
    assert events.stats()[0] == 4


def test_a_ringing_spooled_already_adds_nothing_even_when_full(tmp_path: Path) -> None:
    """A 183 after a 180 sends the call's RINGING again: with the spool full it is not refused as lost, it is
    simply there already."""
    events = spool.Spool(str(tmp_path / "events.sqlite"), max_pending=1)
    assert events.add([("c1:RINGING", "c1", b"r")]) == ["c1:RINGING"]
    events._counted = (0.0, 0)
    assert events.add([("c1:RINGING", "c1", b"r")]) == []
