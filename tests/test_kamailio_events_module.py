"""Kamailio's callgate_events module (integrations/kamailio/callgate_events) where things go wrong, with real
Kamailio, sipp and callgate: a full disk under its journal, a PBX's X-Callgate-User past the 1 KiB it keeps, a 200
relayed after tm ended the call; and its build on a machine whose apt has no deb-src.

.ci/run installs what these need (kamailio, kamailio-python3-modules, sip-tester; `make kamailio-module` builds the
module); the full disk mounts a small tmpfs, which needs root (as .ci/run runs).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from loadtest import sip

from .serving import ROOT, Server, wait_for
from .test_kamailio import OPEN, PBX, US_DEST, admin, calls, delivered, expect, export_failover, push, sip_doc
from .test_kamailio_spool import spool

BUILD = ROOT / "integrations" / "kamailio" / "callgate_events" / "build"
# PBXes' names for who rings and answers: callgate takes at most 256 characters (server/rpc/requests.py MAX_TEXT)
LONG_USER = "a" + "\N{GRINNING FACE}" * 300                   # 1,201 bytes: past the 1 KiB the module reads
WIDE_USER = "b" * 300                                           # 300 bytes, 300 characters
MOST_USER = "\N{LATIN SMALL LETTER E WITH ACUTE}" * 256       # the most callgate takes
RECORDS_USER = "u1"   # who the call's record names (the queue group's first member): named instead

def answering_pbx(user: str) -> str:
    """The "answer" PBX of loadtest.sip, naming `user` in the X-Callgate-User of its 180 and its 200."""
    text = sip.UAS_SCENARIOS["answer"]
    assert text.count("X-Callgate-User: u2") == 2
    return text.replace("X-Callgate-User: u2", f"X-Callgate-User: {user}").replace(
        'encoding="ISO-8859-1"', 'encoding="UTF-8"', 1)


# a PBX that rings 2 s before it answers (the most callgate takes as its user): a disk filled between its 180 and
# its 200
SLOW_PBX = answering_pbx(MOST_USER).replace('<pause milliseconds="50"/>', '<pause milliseconds="2000"/>', 1)
assert SLOW_PBX != answering_pbx(MOST_USER)

# a PBX that rings, lets the proxy's INVITE timer cancel the call, accepts the CANCEL and then answers the INVITE
# anyway (its 200 crossed the CANCEL): the INVITE's Vias and Record-Route are kept from the INVITE, the last
# message once the CANCEL came
LATE_PBX = sip.HEAD + """<scenario name="callgate: a PBX whose 200 comes after the proxy's INVITE timer">
  <recv request="INVITE" crlf="true">
    <action>
      <ereg regexp=".*" search_in="hdr" header="Via:" occurrence="1" assign_to="via1"/>
      <ereg regexp=".*" search_in="hdr" header="Via:" occurrence="2" assign_to="via2"/>
      <ereg regexp=".*" search_in="hdr" header="Record-Route:" assign_to="rr"/>
    </action>
  </recv>
""" + sip._reply("180 Ringing", False) + """  <recv request="CANCEL"/>
""" + sip._OK_TO_LAST + """  <pause milliseconds="200"/>
  <send>
    <![CDATA[
      SIP/2.0 200 OK
      Via:[$via1]
      Via:[$via2]
      [last_From:]
      [last_To:];tag=[pid]SIPpTag01[call_number]
      [last_Call-ID:]
      CSeq: 1 INVITE
      Record-Route:[$rr]
      X-Callgate-User: u2
      Contact: <sip:[local_ip]:[local_port];transport=[transport]>
      Content-Length: 0
    ]]>
  </send>
""" + sip._ANSWERED_THEN_BYE + "</scenario>\n"

# the caller of that call: the proxy's 408 (ACKed), then the late 200, ACKed in its dialog and hung up
LATE_CALLER = (sip.HEAD + '<scenario name="callgate: a 408, then a 200">\n' + sip.INVITE
               + '  <recv response="180"/>\n  <recv response="408"/>\n' + sip._ACK_OF_REFUSAL
               + '  <recv response="200" rrs="true"/>\n' + sip._in_dialog("ACK", 1)
               + '  <pause milliseconds="100"/>\n' + sip._in_dialog("BYE", 2) + '  <recv response="200"/>\n'
               + "</scenario>\n")


class ScriptedUas(sip.Uas):
    """loadtest.sip's Uas playing a scenario of this file."""

    def __init__(self, folder: Path, name: str, scenario: str) -> None:
        self.port = sip.free_sip_port()
        self.scenario = folder / f"uas-{name}.xml"
        self.scenario.write_text(scenario, encoding="utf-8")
        self.log = folder / f"uas-{self.port}.log"
        self.proc = subprocess.Popen(["sipp", "-sf", str(self.scenario), "-i", "127.0.0.1", "-p", str(self.port),
                                      "-nostdin", "-trace_msg", "-message_file", str(self.log)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(lambda: self.proc.poll() is not None or _bound(self.port), timeout=10)
        assert self.proc.poll() is None, f"sipp ({name}) did not start"


def _bound(port: int) -> bool:
    """Whether a socket is bound to UDP port `port` (/proc/net/udp: read, never a bind of our own that could take
    the port from sipp as it starts)."""
    lines = Path("/proc/net/udp").read_text().splitlines()[1:]
    return any(line.split()[1].endswith(f":{port:04X}") for line in lines)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict[str, Any]]:
    """callgate with acme, the PBXes of these tests, and a proxy with the module in front of each (one SIP worker
    each: fewer processes to start)."""
    missing = sip.missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run .ci/run, or apt-get install {sip.PACKAGES}")
    sip.check_events_module()
    folder = tmp_path_factory.mktemp("events-module")
    callgate = Server(folder / "data", seed=None)
    started: list[Any] = [callgate]
    try:
        world: dict[str, Any] = {"folder": folder, "callgate": callgate, "failover": folder / "failover.json"}
        push(world, sip_doc())
        export_failover(callgate, world["failover"])
        for name, scenario in (("long", answering_pbx(LONG_USER)), ("wide", answering_pbx(WIDE_USER)),
                               ("most", answering_pbx(MOST_USER)), ("late", LATE_PBX), ("slow", SLOW_PBX)):
            world[f"uas-{name}"] = uas = ScriptedUas(folder, name, scenario)
            started.append(uas)
        # (the late PBX's proxy: an INVITE timer of 0.5 s, after the 180, before its 200)
        for name, fr_inv_ms in (("long", 30_000), ("wide", 30_000), ("most", 30_000), ("late", 500)):
            world[name] = proxy = sip.Kamailio(folder, callgate.address, world[f"uas-{name}"].port,
                                               failover=world["failover"], children=1, fr_inv_ms=fr_inv_ms)
            started.append(proxy)
        yield world
    finally:
        for p in reversed(started):
            p.stop()


def journal_records(proxy: sip.Kamailio) -> list[tuple[str, str, str, bytes]]:
    """What the proxy's journals hold (the module's, PID.c-….cgj, and the script's, PID-….cgj; its processes
    live, so their journals stay once read), in the order written: (kinds, outcome, callgate's call id, the user
    bytes) a record; asserts each journal holds whole, sound records only."""
    from callgate.v1 import decisions_pb2

    found = []
    for journal in Path(f"{proxy.spool}.journal").glob("*.cgj"):
        data = journal.read_bytes()
        records, took, damage = spool.read_journal(data, 2**62)
        assert (damage, took) == ("", len(data)), f"{journal.name}: {damage or 'a partial record'} at byte {took}"
        for created, _, key, call, payload in records:
            if key:   # an event the script made itself
                event = decisions_pb2.CallEventRequest.FromString(payload)
                found.append((created, (key.rpartition(":")[2], event.outcome, call, event.user.encode())))
                continue
            assert payload.startswith(b"R1\0")   # a raw record (the module's layout, the script's spool_raw)
            kinds, _, outcome, record, user = payload[3:].split(b"\0", 4)
            found.append((created, (kinds.decode(), outcome.decode(), json.loads(record)["call"], user)))
    return [record for _, record in sorted(found, key=lambda r: r[0])]   # (one write's records: as written)


def callgate_call(world: dict[str, Any], caller: str, state: str = "ended") -> Any:
    """The call from `caller` in callgate's registry (one)."""
    try:
        [call] = wait_for(lambda: [c for c in calls(world, state) if c.caller == caller], timeout=10)
    except TimeoutError:
        pytest.fail(f"callgate has no {state} call from {caller}")
    return call


@pytest.mark.parametrize(("proxy", "caller"), [("long", "+12125550301"), ("wide", "+12125550302")])
def test_a_user_longer_than_callgate_takes_names_the_records_user(world, proxy: str, caller: str) -> None:
    """The PBX names a user of more than the 256 characters callgate takes (past the 1 KiB the module reads, or
    within it): callgate would refuse every event naming it, and then the call's end (no such call), leaving the
    call out of the registry and a forwarded leg unbilled.  The call's record's user is named instead, and the call
    is recorded whole."""
    expect(world, proxy, caller, OPEN, 200)
    delivered(world, proxy)
    call = callgate_call(world, caller)
    assert (call.ringing_user, call.answered_by, call.outcome) == (RECORDS_USER, RECORDS_USER, "answered")
    mine = {kinds: user for kinds, _, call_id, user in journal_records(world[proxy]) if call_id == call.call_id}
    assert mine == {"RINGING": RECORDS_USER.encode(), "ANSWERED": RECORDS_USER.encode(), "ENDED": b""}
    assert "refused" not in world[proxy].text() and "Traceback" not in world[proxy].text()


def test_the_longest_user_callgate_takes_is_named(world) -> None:
    caller = "+12125550304"
    expect(world, "most", caller, OPEN, 200)
    delivered(world, "most")
    call = callgate_call(world, caller)
    assert (call.ringing_user, call.answered_by, call.outcome) == (MOST_USER, MOST_USER, "answered")


def _late_call(folder: Path, proxy: str, caller: str, called: str, source: str = "127.0.0.1") -> None:
    """One call of LATE_CALLER (a 408 from the INVITE timer, then the PBX's 200, ACKed and hung up) through the proxy
    at `proxy`, from `source`; asserts sipp saw it whole."""
    scenario = folder / "uac-late.xml"
    scenario.write_text(LATE_CALLER)
    done = subprocess.run(["sipp", "-sf", str(scenario), "-s", called, proxy, "-i", source,
                           "-p", str(sip.free_sip_port()), "-m", "1", "-key", "CALLER", caller, "-nostdin",
                           "-timeout", "20s", "-timeout_error"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_200_after_the_invite_timer_makes_no_answer_and_one_end(world) -> None:
    """tm's INVITE timer ends the call (408 to the caller: ENDED, no_answer); the PBX's 200 comes after it and tm
    relays it, the caller ACKs and hangs up through the proxy: no ANSWERED is made for the call, and its ENDED is
    written once (the BYE makes none, in the module or the script)."""
    caller = "+12125550303"
    _late_call(world["folder"], world["late"].address, caller, OPEN)
    delivered(world, "late")
    call = callgate_call(world, caller)
    assert (call.outcome, call.answered_by, call.ringing_user) == ("no_answer", "", "u2")
    # the late 200's call was hung up through the proxy (Kamailio 5.6's dialog module does not revive the dialog
    # the failure ended: "bogus event" in its log; its BYE is still one of a dialog it knows)
    cid = call.call_id.rpartition("/")[0]
    assert [m for m in world["uas-late"].messages().split("-" * 47)
            if re.search(r"^BYE sip:", m, flags=re.MULTILINE) and f"Call-ID: {cid}\n" in m]
    written = [(kinds, outcome) for kinds, outcome, call_id, _ in journal_records(world["late"])
               if call_id == call.call_id]
    assert written == [("RINGING", ""), ("ENDED", "no_answer")]
    with sqlite3.connect(world["late"].spool) as conn:   # (sent as read: nothing of it waits in the table)
        assert conn.execute("SELECT key FROM events WHERE call = ? AND state != 1", (call.call_id,)).fetchall() == []


def _fill(folder: Path) -> Path:
    """Fill the file system of `folder` to its last block (a file of zeros); the file, to free it again."""
    filler = folder / ".filler"
    with open(filler, "ab", buffering=0) as f:
        while True:
            try:
                f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    return filler


def test_a_full_disk_keeps_a_calls_events_to_its_end_and_writes_them_whole_at_their_instants(world,
                                                                                           tmp_path: Path) -> None:
    """The journal's disk full (a tmpfs of 64 KiB) for a whole call: the call still connects, and each of its events
    the disk refuses is kept, its ENDED too, logged as not spooled yet; once there is room again (seconds after the
    BYE) the module's timer writes them whole, each at its own instant: callgate has the call whole and its talk
    ends at the BYE, not at the write (before, the three were lost; an ENDED lost alone left an answered call to
    callgate's expiry, its talk billed until then).  A record the disk takes part of is cut back (the journal holds
    whole records only, the sender reads no damage) and kept too."""
    # (the PBX naming the longest user: about 1.3 KB of records a call, so that one soon crosses the last block)
    with small_disk(world, tmp_path) as proxy:
        journals = Path(f"{proxy.spool}.journal")
        disk = {"callgate": world["callgate"], "folder": tmp_path, "disk": proxy}

        # full before the first event: the worker's journal is made, and no record of it is written
        filler = _fill(journals)
        expect(disk, "disk", "+12125550311", OPEN, 200)
        _all_three_kept(proxy)
        # (the worker's journal, and the module timer's that tries the kept events again)
        assert [j.stat().st_size for j in journals.glob("*.cgj")] in ([0], [0, 0])
        time.sleep(3)   # still full for a while after the BYE: the ENDED's instant must stay the BYE's

        filler.unlink()   # room again: the timer writes the three, and the next call's events go behind them
        expect(disk, "disk", "+12125550312", OPEN, 200)
        delivered(disk, "disk")
        assert callgate_call(world, "+12125550312").answered_by == MOST_USER
        call = callgate_call(world, "+12125550311")
        assert (call.ringing_user, call.answered_by, call.outcome) == (MOST_USER, MOST_USER, "answered")
        # a 200 ms hold: at most a second boundary crossed, where an ENDED stamped at its write (3 s or more after
        # the BYE) would bill 3 or more
        assert call.talked_seconds <= 1 and call.ended_at - call.answered_at <= 1, call
        text = proxy.text()
        for kind in ("RINGING", "ANSWERED", "ENDED"):
            assert f"callgate_events: {kind} of a call the disk refused before is spooled now" in text
        assert "not spooled, lost" not in text

        # full again, with room left in the journal's last block: a record longer than that room is taken in part
        # by the disk, cut back, and kept
        filler = _fill(journals)
        partial = "of a call not spooled yet: the disk took part of the record; kept"
        callers = []
        for n in range(10):
            callers.append(f"+1212555032{n}")
            expect(disk, "disk", callers[-1], OPEN, 200)
            if partial in proxy.text():
                break
        assert partial in proxy.text(), proxy.text()[-3000:]
        journal_records(proxy)   # whole, sound records only

        filler.unlink()
        expect(disk, "disk", "+12125550330", OPEN, 200)
        delivered(disk, "disk")
        for caller in (*callers, "+12125550330"):
            call = callgate_call(world, caller)
            assert (call.ringing_user, call.answered_by, call.outcome) == (MOST_USER, MOST_USER, "answered")
        journal_records(proxy)
        text = proxy.text()
        assert "not spooled, lost" not in text
        assert "damaged record" not in text and "no record at" not in text and "Traceback" not in text


def test_a_disk_back_after_many_kept_events_logs_ten_of_them_and_counts_the_rest(world, tmp_path: Path) -> None:
    """Four calls through a full disk keep twelve events; once there is room, the module's timer writes them all in
    one tick, oldest call first, and logs ten of them, then one line for the other two (a disk back after minutes
    at hundreds of calls a second logged a line for each)."""
    with small_disk(world, tmp_path) as proxy:
        journals = Path(f"{proxy.spool}.journal")
        disk = {"callgate": world["callgate"], "folder": tmp_path, "disk": proxy}
        filler = _fill(journals)
        callers = [f"+1212555036{n}" for n in range(4)]
        for caller in callers:
            expect(disk, "disk", caller, OPEN, 200)
        wait_for(lambda: proxy.text().count("ENDED of a call not spooled yet") == 4)
        filler.unlink()
        wait_for(lambda: "callgate_events: 2 more events the disk refused before are spooled now" in proxy.text())
        assert proxy.text().count("of a call the disk refused before is spooled now") == 10
        delivered(disk, "disk")
        for caller in callers:
            call = callgate_call(world, caller)
            assert (call.ringing_user, call.answered_by, call.outcome) == (MOST_USER, MOST_USER, "answered")
        assert "not spooled, lost" not in proxy.text()


def test_past_callgate_kept_max_calls_the_events_the_disk_refuses_are_lost_logged(world, tmp_path: Path) -> None:
    """CALLGATE_KEPT_MAX bounds the calls that keep events in Kamailio's shared memory (a disk full for hours must
    not take the memory new calls need): with 1, the first call's events are kept and written once there is room;
    the second call's, while the first still waits, are lost, logged saying why; once the first is written, its
    place is free again: a third call's events are kept."""
    with small_disk(world, tmp_path, env={"CALLGATE_KEPT_MAX": "1"}) as proxy:
        journals = Path(f"{proxy.spool}.journal")
        disk = {"callgate": world["callgate"], "folder": tmp_path, "disk": proxy}
        filler = _fill(journals)
        expect(disk, "disk", "+12125550351", OPEN, 200)
        wait_for(lambda: "ENDED of a call not spooled yet" in proxy.text())
        expect(disk, "disk", "+12125550352", OPEN, 200)
        over = "(and CALLGATE_KEPT_MAX calls already keep events for the disk)"
        lost = [f"callgate_events: {kind} of a call not spooled, lost: {why} {over}" for kind, why in (
            ("RINGING", "No space left on device"), ("ANSWERED", "No space left on device"),
            ("ENDED", "No space left on device"))]
        try:
            wait_for(lambda: all(line in proxy.text() for line in lost))
        except TimeoutError:
            pytest.fail(f"Kamailio's log does not say the second call's events are lost: {proxy.text()[-3000:]}")
        filler.unlink()
        wait_for(lambda: "ENDED of a call the disk refused before is spooled now" in proxy.text())
        delivered(disk, "disk")
        call = callgate_call(world, "+12125550351")
        assert (call.answered_by, call.outcome) == (MOST_USER, "answered")
        assert not [c for c in calls(world, "ringing") + calls(world, "answered") + calls(world, "ended")
                    if c.caller == "+12125550352"]

        filler = _fill(journals)
        expect(disk, "disk", "+12125550353", OPEN, 200)
        wait_for(lambda: proxy.text().count("ENDED of a call not spooled yet") == 2)
        filler.unlink()
        wait_for(lambda: proxy.text().count("ENDED of a call the disk refused before is spooled now") == 2)
        delivered(disk, "disk")
        call = callgate_call(world, "+12125550353")
        assert (call.answered_by, call.outcome) == (MOST_USER, "answered")
        assert proxy.text().count(over) == 3   # (the second call's three lines only)


KEPT_MAX_WANTED = ("CALLGATE_KEPT_MAX must be a whole number of calls from 0 to 1000000 (0: nothing the disk refuses "
                   "is kept)")
SEND_EVERY_WANTED = ("CALLGATE_SEND_EVERY_MS must be a whole number of milliseconds from 0 to 10000 (how often the "
                     "call events go to callgate)")


@pytest.mark.parametrize("name, value, wanted", [
    *[("CALLGATE_KEPT_MAX", value, f'{KEPT_MAX_WANTED}, not "{value}"') for value in ("-1", "ten", "1000001", "1e3")],
    # (the script's setting: Python's exception, in Kamailio's log as app_python3 prints it)
    *[("CALLGATE_SEND_EVERY_MS", value, f"{SEND_EVERY_WANTED}, not '{value}'") for value in ("-5", "0.5")]])
def test_a_setting_that_is_no_count_stops_kamailio_saying_so(world, tmp_path: Path, name: str, value: str,
                                                             wanted: str) -> None:
    try:
        proxy = sip.Kamailio(tmp_path, world["callgate"].address, world["uas-most"].port, failover=world["failover"],
                             children=1, env={name: value})
    except RuntimeError as exc:   # (stopped within the start's wait)
        said = str(exc)
    else:   # (still stopping when the start's wait ended)
        try:
            assert proxy.proc.wait(20) != 0
            said = proxy.text()
        finally:
            proxy.stop()
    assert wanted in said, said[-3000:]


def test_events_the_disk_refused_are_written_once_it_takes_them_at_their_instants(world, tmp_path: Path) -> None:
    """The journal's disk full while a call rings and is answered, room again while it talks: its RINGING and
    ANSWERED, kept (logged as not spooled yet), are written within a second or so by the module's timer, not at the
    call's end, each at its own instant and naming its own user; callgate has the call answered while it still
    talks, and then whole: who rang, who answered, and the talk from the answer (what a forwarded leg is billed
    for).  Before, the two were lost: callgate refused the ENDED of a call it never had, and the call was neither
    in its registry nor billed."""
    with small_disk(world, tmp_path) as proxy:
        journals = Path(f"{proxy.spool}.journal")
        filler = _fill(journals)
        done: list[tuple[bool, str]] = []
        talk = threading.Thread(target=lambda: done.append(sip.call(
            proxy.address, "+12125550341", OPEN, 200, tmp_path, hold_ms=8000)))
        talk.start()
        try:
            kept = [f"callgate_events: {kind} of a call not spooled yet: {why}; kept, and written as soon as the "
                    "disk takes it" for kind, why in (("RINGING", "No space left on device"),
                                                     ("ANSWERED", "behind an event of the call the disk refused"))]
            try:
                wait_for(lambda: all(line in proxy.text() for line in kept))
            except TimeoutError:
                pytest.fail(f"Kamailio's log does not say the events are kept: {proxy.text()[-3000:]}")
            time.sleep(3)     # still full for a while: the timer's tries fail, and the instants must stay the 200's
            filler.unlink()   # room again while the call talks
            # the timer writes them and the sender sends them while the call still talks (8 s)
            talking = wait_for(lambda: [c for c in calls(world, "answered") if c.caller == "+12125550341"],
                               timeout=4)
            assert talk.is_alive() and talking[0].answered_by == MOST_USER
        finally:
            talk.join(60)
        assert done and done[0][0], done
        delivered({"disk": proxy}, "disk")
        call = callgate_call(world, "+12125550341")
        assert (call.ringing_user, call.answered_by, call.outcome) == (MOST_USER, MOST_USER, "answered")
        # the answer's instant is the 200's, not the BYE's nor the timer's: the talk is the call's 8 s hold (seconds,
        # cut), where the instant of the write would leave 4 or 5
        assert call.ringing_at <= call.answered_at and call.talked_seconds >= 7, call
        text = proxy.text()
        for kind in ("RINGING", "ANSWERED"):
            assert f"callgate_events: {kind} of a call the disk refused before is spooled now" in text
            assert f"callgate_events: {kind} of a call not spooled, lost" not in text
        assert "Traceback" not in text
        journal_records(proxy)   # whole, sound records only


def test_an_answer_the_disk_refused_after_the_ringing_was_written_is_written_at_its_instant(world,
                                                                                           tmp_path: Path) -> None:
    """The RINGING written, the disk full at the 200 (the PBX rings 2 s first), room again while the call talks:
    the ANSWERED alone is kept and written by the module's timer at the 200's instant, long before the call's end
    (callgate expires a ringing call it hears nothing of after 10 minutes: a long call must not wait for its BYE)."""
    def answered_while_it_talks(talk: threading.Thread) -> None:
        wait_for(lambda: [c for c in calls(world, "answered") if c.caller == "+12125550342"], timeout=4)
        assert talk.is_alive()

    with small_disk(world, tmp_path, "slow") as proxy:
        # (within the PBX's 2 s of ringing)
        _full_during_a_call(world, proxy, tmp_path, "+12125550342", 7000, "ringing", "ANSWERED",
                            after=answered_while_it_talks)
        delivered({"disk": proxy}, "disk")
        call = callgate_call(world, "+12125550342")
        assert (call.ringing_user, call.answered_by, call.outcome) == (MOST_USER, MOST_USER, "answered")
        # rang 2 s; talked the 7 s hold (seconds, cut), where the instant of the write would leave 3 or 4
        assert call.answered_at - call.ringing_at >= 1 and call.talked_seconds >= 6, call
        text = proxy.text()
        assert "callgate_events: ANSWERED of a call the disk refused before is spooled now" in text
        assert "RINGING of a call not spooled" not in text and "not spooled, lost" not in text
        journal_records(proxy)


def test_an_end_the_disk_refused_is_written_at_the_byes_instant(world, tmp_path: Path) -> None:
    """The RINGING and ANSWERED written, the disk full at the BYE, room again seconds later: the ENDED, kept, is
    written by the module's timer at the BYE's instant, so callgate bills the talk the call had, not the time the
    disk took to have room (before, it was lost, and callgate billed the answered call until its expiry)."""
    def still_answered() -> None:   # (the disk full: callgate has no end of the call yet)
        assert [c for c in calls(world, "answered") if c.caller == "+12125550343"]

    with small_disk(world, tmp_path) as proxy:
        # (while it talks; still full 4 s after the BYE)
        _full_during_a_call(world, proxy, tmp_path, "+12125550343", 2000, "answered", "ENDED", full_s=4,
                            while_full=still_answered)
        delivered({"disk": proxy}, "disk")
        call = callgate_call(world, "+12125550343")
        # talked the 2 s hold (seconds, cut), where the instant of the write would bill 5 or more
        assert call.outcome == "answered" and 1 <= call.talked_seconds <= 3, call
        text = proxy.text()
        assert "callgate_events: ENDED of a call the disk refused before is spooled now" in text
        assert "not spooled, lost" not in text
        journal_records(proxy)


def _full_during_a_call(world: dict[str, Any], proxy: sip.Kamailio, tmp_path: Path, caller: str, hold_ms: int,
                        state: str, kind: str, full_s: float = 3, while_full: Callable[[], None] | None = None,
                        after: Callable[[threading.Thread], None] | None = None) -> None:
    """A call from `caller` (held `hold_ms`, in a thread) whose `kind` the disk refuses: once callgate has the call
    in `state`, the journals are removed (`_removed_but_open`: the next record needs a page the full disk has not)
    and the disk filled; Kamailio's log must say the event is kept; the disk stays full `full_s` more (the timer's
    tries fail, the event's instant must stay its own; `while_full()` runs then), then has room, and `after(the
    call's thread)` runs while the call may still talk.  Asserts the call succeeded."""
    journals = Path(f"{proxy.spool}.journal")
    done: list[tuple[bool, str]] = []
    held: list[Any] = []
    talk = threading.Thread(target=lambda: done.append(sip.call(
        proxy.address, caller, OPEN, 200, tmp_path, hold_ms=hold_ms)))
    talk.start()
    try:
        wait_for(lambda: [c for c in calls(world, state) if c.caller == caller], timeout=10)
        held += _removed_but_open(journals)
        filler = _fill(journals)
        kept = (f"callgate_events: {kind} of a call not spooled yet: No space left on device; kept, and written as "
                "soon as the disk takes it")
        try:
            wait_for(lambda: kept in proxy.text())
        except TimeoutError:
            pytest.fail(f"Kamailio's log does not say the {kind} is kept: {proxy.text()[-3000:]}")
        time.sleep(full_s)
        if while_full is not None:
            while_full()
        for handle in held:
            handle.close()
        filler.unlink()
        if after is not None:
            after(talk)
    finally:
        for handle in held:
            handle.close()
        talk.join(60)
    assert done and done[0][0], done


def _balance(world: dict[str, Any]) -> Decimal:
    from callgate.v1 import admin_pb2

    return Decimal(admin(world).GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10).available)


def _outbound_calls(world: dict[str, Any]) -> dict[str, Any]:
    """callgate's outbound calls to US_DEST, ended or not, by call id."""
    return {c.call_id: c for state in ("", "ended") for c in calls(world, state)
            if c.direction == "outbound" and c.called == US_DEST}


def _credited(world: dict[str, Any]) -> None:
    from callgate.v1 import admin_pb2

    admin(world).Credit(admin_pb2.CreditRequest(tenant="acme", amount="5.00", reference="events-outbound"), timeout=10)
    time.sleep(0.5)   # (callgate's workers poll balances)


def _told_while_full(world: dict[str, Any], proxy: sip.Kamailio, before: dict[str, Any], balance: Decimal,
                     filler: Path) -> None:
    """The outbound call made since `before` is over and the disk still full: callgate has it whole from the
    RPCs (the hold's RINGING, then, the answer waiting for the disk, its ANSWERED and its ENDED), its 2 s of talk billed
    0.02; then the disk has room, the module writes what it kept (replays to callgate) and the call is charged
    once."""
    [call] = [c for i, c in _outbound_calls(world).items() if i not in before]
    assert (call.state, call.ringing_user, call.answered_by, call.outcome) == ("ended", "u3", "u3", "answered"), call
    # talked the 2 s hold (seconds, cut); one 60 s increment
    assert 1 <= call.talked_seconds <= 3 and call.charge == "0.02", call
    assert balance - _balance(world) == Decimal("0.02")
    filler.unlink()
    wait_for(lambda: "ENDED of a call the disk refused before is spooled now" in proxy.text())
    delivered({"disk": proxy}, "disk")
    assert _outbound_calls(world)[call.call_id] == call and balance - _balance(world) == Decimal("0.02")
    text = proxy.text()
    assert "not spooled, lost" not in text and "Traceback" not in text
    journal_records(proxy)


def test_an_outbound_calls_events_the_disk_refused_are_kept_and_its_talk_billed(world, tmp_path: Path) -> None:
    """An outbound call (a user of the trusted PBX) through a full disk, from its ringing to seconds after its end:
    its RINGING still reaches callgate at once over RPC for the credit hold, and so do its ANSWERED and its ENDED,
    its answer waiting for the disk (kept, it would reach callgate only once the disk has room: past callgate's
    ring timeout of 10 minutes callgate would have expired the call unanswered, its talk unbilled; and an end kept
    behind an answer callgate has could be lost, at Kamailio's stop, leaving callgate an answered call to charge to
    its expiry); the module, which makes its events, keeps them and writes them at their instants once there is
    room, replays then.  The talk billed is the call's, once."""
    _credited(world)
    before, balance = _outbound_calls(world), _balance(world)
    with small_disk(world, tmp_path) as proxy:
        filler = _fill(Path(f"{proxy.spool}.journal"))
        ok, report = sip.call(proxy.address, "u3", US_DEST, 200, tmp_path, source=PBX, hold_ms=2000)
        assert ok, report
        _all_three_kept(proxy)
        time.sleep(1)   # (still full after the BYE)
        _told_while_full(world, proxy, before, balance, filler)


def test_an_outbound_answer_on_a_disk_full_since_its_ringing_goes_to_callgate_at_once(world, tmp_path: Path) -> None:
    """The RINGING written, the disk full while the call rings (the PBX rings 2 s), no call keeping events yet: the
    script asks at the 200, before the module tries to write the ANSWERED, and the module says the journal's file
    system is full (`answer_waits()`): the ANSWERED goes over RPC, then the ENDED, as when the call keeps events."""
    _credited(world)
    before, balance = _outbound_calls(world), _balance(world)
    with small_disk(world, tmp_path, "slow") as proxy:
        journals = Path(f"{proxy.spool}.journal")
        done: list[tuple[bool, str]] = []
        talk = threading.Thread(target=lambda: done.append(sip.call(
            proxy.address, "u3", US_DEST, 200, tmp_path, source=PBX, hold_ms=2000)))
        talk.start()
        held: list[Any] = []
        try:
            # (the journal's RINGING written: the hold's RPC went before it, in the reply's route)
            wait_for(lambda: any(b":RINGING" in j.read_bytes() for j in journals.glob("*.cgj")), timeout=10)
            held += _removed_but_open(journals)
            filler = _fill(journals)
            talk.join(30)
            assert done and done[0][0], done
            text = proxy.text()
            assert "RINGING of a call not spooled" not in text, text[-2000:]
            assert ("ANSWERED of a call not spooled yet: No space left on device; kept" in text), text[-2000:]
            _told_while_full(world, proxy, before, balance, filler)
        finally:
            for handle in held:
                handle.close()
            talk.join(30)


def test_an_outbound_200_after_the_invite_timer_on_a_full_disk_goes_to_callgate_as_no_answer(world,
                                                                                            tmp_path: Path) -> None:
    """A full disk; an outbound call ended by tm's INVITE timer (the hold's RINGING at callgate, the rest kept), then
    the PBX's 200, which tm relays: the module says the answer does not wait for the disk (the call ended:
    `answer_waits()`), so no ANSWERED goes over RPC, and callgate ends the call unanswered and unbilled once the
    disk has room (an answer sent over RPC would have had callgate hold an answered call the failure's earlier end
    could no longer end)."""
    _credited(world)
    before, balance = _outbound_calls(world), _balance(world)
    with small_disk(world, tmp_path, "late", fr_inv_ms=500) as proxy:
        filler = _fill(Path(f"{proxy.spool}.journal"))
        _late_call(tmp_path, proxy.address, "u3", US_DEST, source=PBX)
        [call] = [c for i, c in _outbound_calls(world).items() if i not in before]
        assert call.state == "ringing", call   # (the hold's RINGING only: no answer over RPC)
        filler.unlink()
        wait_for(lambda: "ENDED of a call the disk refused before is spooled now" in proxy.text())
        delivered({"disk": proxy}, "disk")
        call = _outbound_calls(world)[call.call_id]
        assert (call.state, call.outcome, call.answered_by) == ("ended", "no_answer", ""), call
        assert _balance(world) == balance


def _all_three_kept(proxy: sip.Kamailio) -> None:
    """Kamailio's log says a call's RINGING, ANSWERED and ENDED were kept, all refused from the first (a call made
    through a full disk)."""
    kept = [f"callgate_events: {kind} of a call not spooled yet: {why}; kept, and written as soon as the disk takes "
            "it" for kind, why in (("RINGING", "No space left on device"),
                                   ("ANSWERED", "behind an event of the call the disk refused"),
                                   ("ENDED", "behind an event of the call the disk refused"))]
    try:
        wait_for(lambda: all(line in proxy.text() for line in kept))
    except TimeoutError:
        pytest.fail(f"Kamailio's log does not say the events are kept: {proxy.text()[-3000:]}")


def _removed_but_open(journals: Path) -> list[Any]:
    """The journals in `journals` removed, and held open (the caller closes them): the module begins another at its
    next record, and their pages stay taken (a page with room left would take a record on a full disk)."""
    held = [open(journal, "rb") for journal in journals.glob("*.cgj")]
    for handle in held:
        os.unlink(handle.name)
    return held


@contextlib.contextmanager
def small_disk(world: dict[str, Any], tmp_path: Path, pbx: str = "most",
               env: dict[str, str] | None = None, fr_inv_ms: int = 30_000) -> Iterator[sip.Kamailio]:
    """A proxy (one SIP worker, in front of the PBX `pbx`, which names the longest user: ~1.3 KB of records a call;
    `env`: more of its settings; `fr_inv_ms`: its INVITE timer) whose journals are on a tmpfs of 64 KiB (root: as
    .ci/run runs), unmounted once the proxy is stopped."""
    proxy = sip.Kamailio(tmp_path, world["callgate"].address, world[f"uas-{pbx}"].port, failover=world["failover"],
                         children=1, env=env, fr_inv_ms=fr_inv_ms)
    journals = Path(f"{proxy.spool}.journal")
    mounted = False
    try:
        assert not journals.exists() or not list(journals.iterdir())   # no event yet: no journal open
        journals.mkdir(parents=True, exist_ok=True)
        mount = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0750", "callgate-test", str(journals)],
                               capture_output=True, text=True, timeout=30)
        assert mount.returncode == 0, f"a tmpfs cannot be mounted (these tests run as root): {mount.stderr}"
        mounted = True
        yield proxy
    finally:
        proxy.stop()
        if mounted:
            _unmount(journals)


def _unmount(path: Path) -> None:
    """Unmount the tmpfs at `path`, once the processes that had files open on it are gone (lazily, past 10 s)."""
    try:
        wait_for(lambda: subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode == 0,
                 timeout=10, interval=0.2)
    except TimeoutError:
        subprocess.run(["umount", "-l", str(path)], check=True, timeout=30)


def test_the_build_without_deb_src_fails_saying_what_to_do_and_leaves_no_module(tmp_path: Path) -> None:
    """`build` into a fresh directory, with an apt that has no source lists (its own configuration: the machine's
    apt state is neither read for sources nor written): exit 2, the reason and what to do, no callgate_events.so;
    and a second run asks apt again (the failure left nothing it takes for the unpacked source)."""
    apt = tmp_path / "apt"
    for folder in ("sources.list.d", "lists/partial", "cache/archives/partial"):
        (apt / folder).mkdir(parents=True)
    (apt / "sources.list").write_text("")
    config = apt / "apt.conf"
    config.write_text(f'Dir::Etc::SourceList "{apt}/sources.list";\nDir::Etc::SourceParts "{apt}/sources.list.d";\n'
                      f'Dir::State::Lists "{apt}/lists";\nDir::Cache "{apt}/cache";\n')
    out = tmp_path / "out"
    version = subprocess.run(["dpkg-query", "-W", "-f=${source:Version}", "kamailio"], capture_output=True,
                             text=True, timeout=30).stdout.strip()
    assert version, "Kamailio is not installed: run .ci/run"
    for _ in range(2):
        done = subprocess.run([str(BUILD), str(out)], env={**os.environ, "APT_CONFIG": str(config)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, done.stderr
        lines = [line for line in done.stderr.splitlines() if "fetching the source" not in line]
        # one line: the reason (apt's own last line) and what to do
        assert len(lines) == 1, done.stderr
        assert lines[0].startswith(f"callgate_events: apt-get source kamailio={version} failed (E: "), done.stderr
        assert "'deb-src' URIs" in lines[0], done.stderr
        assert lines[0].endswith("): apt needs a deb-src entry for Debian (.ci/run adds one) and dpkg-dev")
        assert not list(out.rglob("*.so")) and not list(out.rglob("*.so.tmp")) and not list(out.rglob(".unpacked"))
