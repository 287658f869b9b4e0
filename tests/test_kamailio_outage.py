"""callgate stopped for a minute under SIP load: every answered call of the window reaches callgate
exactly once from Kamailio's event spool and is billed once, and the 503s stop within 2 s of callgate's return.

20 outbound calls/s from the trusted PBX through Kamailio (real Kamailio and sipp), 2 s of talk each; after
10 s callgate is stopped for 60 s, then started again on the same address and store; 15 s later the load stops.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine import replica
from loadtest import sip
from loadtest.process import free_port

from .serving import ROOT, ReplicaProcess, Server, wait_for
from .test_kamailio import OPEN, US_DEST, export_failover, sip_doc

RATE = 20
BEFORE_S, OUTAGE_S, AFTER_S = 10, 60, 15
TALK_MS = 2000


def stamps(log: Path, pattern: str) -> list[float]:
    """UTC instants of the messages in a sipp -trace_msg log whose text matches `pattern`."""
    out = []
    for block in log.read_text(errors="replace").split("-----------------------------------------------")[1:]:
        head, _, body = block.partition("\n")
        if not re.search(pattern, body, flags=re.MULTILINE):
            continue
        try:
            moment = dt.datetime.strptime(head.strip(), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.UTC)
        except ValueError:  # a separator inside a message body, not a message's header line
            continue
        out.append(moment.timestamp())
    return out


def callgate_with_acme(tmp_path: Path) -> tuple[str, Path, Server]:
    """(its address, its data folder, callgate serving the SIP tests' acme): the same address and store are
    served again after the outage."""
    missing = sip.missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run .ci/run, or apt-get install {sip.PACKAGES}")
    listen, data = f"127.0.0.1:{free_port()}", tmp_path / "data"
    callgate = Server(data, seed=None, listen=listen)
    from callgate.v1 import admin_pb2, admin_pb2_grpc

    try:
        with callgate.channel() as channel:
            admin_pb2_grpc.AdminStub(channel).PushSettings(admin_pb2.PushSettingsRequest(
                document=json.dumps(sip_doc()).encode()), timeout=60)
    except BaseException:   # the caller's cleanup has not begun: stop it here
        callgate.stop()
        raise
    return listen, data, callgate


def test_an_outage_of_callgate_loses_no_call_and_recovery_is_fast(tmp_path: Path) -> None:
    listen, data, callgate = callgate_with_acme(tmp_path)
    started: list = []
    try:
        from callgate.v1 import admin_pb2, admin_pb2_grpc

        with callgate.channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            # enough for every hold: the calls of the window hold credit until their spooled ENDED arrives
            admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="5000.00", reference="outage"), timeout=10)
        failover = tmp_path / "failover.json"
        export_failover(callgate, failover)
        uas = sip.Uas(tmp_path)
        started.append(uas)
        proxy = sip.Kamailio(tmp_path, listen, uas.port, failover=failover)
        started.append(proxy)
        total = RATE * (BEFORE_S + OUTAGE_S + AFTER_S)
        scenario = tmp_path / "uac-outage.xml"
        scenario.write_text(sip.uac_scenario(200, TALK_MS))
        uac_log = tmp_path / "uac-outage.log"
        load = subprocess.Popen(
            ["sipp", "-sf", str(scenario), "-s", US_DEST, proxy.address, "-i", sip.TRUSTED, "-p",
             str(sip.free_sip_port()), "-m", str(total), "-r", str(RATE), "-key", "CALLER", "u3", "-nostdin",
             "-trace_msg", "-message_file", str(uac_log), "-timeout", str(BEFORE_S + OUTAGE_S + AFTER_S + 60) + "s"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(BEFORE_S)
        gone = time.time()
        callgate.stop()
        time.sleep(OUTAGE_S - (time.time() - gone))
        callgate = Server(data, seed=None, listen=listen)
        back = dt.datetime.strptime(callgate.events("listening")[0]["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=dt.UTC).timestamp()
        load.wait(AFTER_S + 120)
        wait_for(lambda: not proxy.spooled().get(0), timeout=60)            # the spool has sent what it held

        # every call answered and hung up (the PBX got its BYE) is in the registry once, ended and billed once
        # (callgate's call id: the Call-ID and the INVITE's CSeq number)
        answered = set(f"{c}/1" for c in re.findall(r"^Call-ID: (\S+)", "\n".join(
            m for m in uas.messages().split("-----------------------------------------------")
            if re.search(r"^BYE sip:", m, flags=re.MULTILINE)), flags=re.MULTILINE))
        with sqlite3.connect(data / "callgate.sqlite") as conn:
            rows = dict(conn.execute("SELECT call_id, state || ':' || charge_micro FROM calls "
                                     "WHERE direction = 'outbound'").fetchall())
            ledger = dict(conn.execute("SELECT ref, COUNT(*) FROM ledger WHERE kind = 'call' GROUP BY ref")
                          .fetchall())
        assert len(answered) > RATE * (BEFORE_S + AFTER_S) // 2, len(answered)
        hung_up_meanwhile = [t for t in stamps(uas.log, r"^BYE sip:") if gone <= t <= back]
        assert hung_up_meanwhile                          # calls that ended while callgate was away: in the spool
        assert answered <= set(rows), sorted(answered - set(rows))[:5]
        assert [c for c in answered if rows[c] != "ended:20000"] == []          # ended, one 60 s increment at 0.02
        assert {c: ledger.get(c) for c in answered} == dict.fromkeys(answered, 1)   # billed once, each
        assert set(ledger) <= set(rows) and all(n == 1 for n in ledger.values())
        assert proxy.spooled().get(2) is None                                   # callgate refused no event
        # during the outage the proxy failed closed; after callgate's return the 503s stop within 2 s
        refusals = stamps(uac_log, r"^SIP/2.0 503")
        assert refusals, "callgate's absence was never noticed"
        late = [t - back for t in refusals if t > back]
        print(f"503s: {len(refusals)}, the last {max(late, default=0):.2f} s after callgate listened again")
        assert max(late, default=0.0) <= 2.0
        assert "Traceback" not in proxy.text()
    finally:
        callgate.stop()
        for p in reversed(started):
            p.stop()


if __name__ == "__main__":  # pragma: no cover - run by hand
    sys.exit(subprocess.call([sys.executable, "-m", "pytest", "-q", "-s", __file__], cwd=ROOT))


def replica_and_pbx(listen: str, tmp_path: Path, started: list) -> sip.Uas:
    """`callgate replica` following callgate at `listen` into tmp_path/replica (it holds acme on return) and a
    sipp UAS, the PBX, both appended to `started`."""
    started.append(ReplicaProcess(listen, tmp_path / "replica", name="sip-host"))
    wait_for(lambda: "acme" in replica.held(tmp_path / "replica"), timeout=30)
    uas = sip.Uas(tmp_path)
    started.append(uas)
    return uas


def test_with_a_replica_inbound_calls_go_on_while_callgate_is_away(tmp_path: Path) -> None:
    """Local decisions: callgate stopped for 10 s under 10 inbound calls/s; every call is answered (decided in
    the Kamailio worker from the replica's files, its events spooled), and once callgate is back every answered
    call is in its registry once, ended."""
    listen, data, callgate = callgate_with_acme(tmp_path)
    started: list = []
    try:
        uas = replica_and_pbx(listen, tmp_path, started)
        # (an environment asking for BLAS threads: the script keeps its workers one thread whatever it says)
        proxy = sip.Kamailio(tmp_path, listen, uas.port, replica=tmp_path / "replica",
                             env={"OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"})
        started.append(proxy)
        rate, before_s, outage_s, after_s = 10, 5, 10, 5
        total = rate * (before_s + outage_s + after_s)
        outcome: list[tuple[bool, str]] = []
        load = threading.Thread(target=lambda: outcome.append(sip.call(
            proxy.address, "+12125550000", OPEN, 200, tmp_path, calls=total, rate=rate, timeout_s=120)))
        load.start()
        time.sleep(before_s)
        callgate.stop()
        time.sleep(outage_s)
        callgate = Server(data, seed=None, listen=listen)
        load.join(180)
        assert outcome and outcome[0][0], f"an inbound call failed while callgate was away: {outcome}"
        # every SIP worker, the engine (and numpy) imported, is still one thread: OpenBLAS's pool would be a second
        # in each, and every syscall and malloc of the worker would then take glibc's threaded paths
        workers = proxy.udp_workers()
        threads = {p: sorted(Path(f"/proc/{p}/task/{t}/comm").read_text().strip()
                             for t in os.listdir(f"/proc/{p}/task")) for p in workers}
        assert workers and all(len(names) == 1 for names in threads.values()), threads
        assert all("numpy" in Path(f"/proc/{p}/maps").read_text() for p in workers)
        wait_for(lambda: not proxy.spooled().get(0), timeout=60)            # the spool has sent what it held
        answered = set(f"{c}/1" for c in re.findall(r"^Call-ID: (\S+)", "\n".join(
            m for m in uas.messages().split("-----------------------------------------------")
            if re.search(r"^BYE sip:", m, flags=re.MULTILINE)), flags=re.MULTILINE))
        with sqlite3.connect(data / "callgate.sqlite") as conn:
            rows = dict(conn.execute("SELECT call_id, state FROM calls WHERE direction = 'inbound'").fetchall())
        assert len(answered) == total
        assert answered <= set(rows), sorted(answered - set(rows))[:5]          # recorded, once (its key)
        assert [c for c in answered if rows[c] != "ended"] == []
        assert proxy.spooled().get(2) is None                                   # callgate refused no event
        assert "Traceback" not in proxy.text()
    finally:
        callgate.stop()
        for p in reversed(started):
            p.stop()


def test_a_kamailio_deciding_from_the_replica_takes_calls_from_its_start(tmp_path: Path) -> None:
    """A Kamailio with 8 SIP workers deciding from the replica, started into 200 inbound calls/s: every call of
    its first 1,200 completes and few are sent again (0 in three starts here).  (Each worker importing the engine
    at its start kept the first seconds' INVITEs waiting: 3 to 56 of 2,000 calls failed, with 29 to 243
    retransmissions; the script imports it in Kamailio's main process before the fork.)"""
    from loadtest.sip_bench import run_sipp

    listen, _, callgate = callgate_with_acme(tmp_path)
    started: list = []
    try:
        uas = replica_and_pbx(listen, tmp_path, started)
        proxy = sip.Kamailio(tmp_path, listen, uas.port, replica=tmp_path / "replica", children=8)
        started.append(proxy)
        # (as soon as the harness sees Kamailio started, 1 s after its first log line: no wait for the workers)
        r = run_sipp(proxy.address, 200, 1200, tmp_path, 40, called=OPEN)
        assert (r["successful"], r["failed"]) == (1200, 0), r
        assert r["retransmissions"] <= 50, r
        # the engine was imported by Kamailio's main process, before it forked the workers
        assert "_core.cpython" in Path(f"/proc/{proxy.proc.pid}/maps").read_text()
        assert "engine could not be imported" not in proxy.text() and "Traceback" not in proxy.text()
    finally:
        callgate.stop()
        for p in reversed(started):
            p.stop()
