"""Faults are loud and lose nothing (spec §7): each fault an operator met, reproduced against real servers and a
real SQLite file, and what callgate now does about it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from loadtest.process import free_port
from server.cli.main import main
from server.store.api import StoreDamaged
from server.store.sqlite import SQLiteStore, checksum

from .disks import fill, small_disk
from .serving import EXAMPLE, ROOT, Server, example_doc, wait_for

EV = decisions_pb2.CallEventRequest
STORE = "callgate.v1.Store"
DECISIONS = "callgate.v1.Decisions"


def health(server: Server, service: str) -> Any:
    stub = health_pb2_grpc.HealthStub(server.channel())
    return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def serve(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`callgate serve` expected to refuse to start: its exit code and output."""
    return subprocess.run([sys.executable, "-m", "callgate", "serve", "--listen", "127.0.0.1:0", "--data-dir",
                           str(data), "--metrics", "", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# -- disk full ------------------------------------------------------------------------------------------------

def test_a_full_disk_is_unavailable_counted_and_shown_by_health_and_the_end_is_billed_once(tmp_path: Path) -> None:
    with small_disk(tmp_path) as disk:
        metrics = f"127.0.0.1:{free_port()}"
        server = Server(disk / "data", metrics=metrics)
        try:
            channel = server.channel()
            decide = decisions_pb2_grpc.DecisionsStub(channel)
            admin = admin_pb2_grpc.AdminStub(channel)
            admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="10.00", reference="opening"), timeout=10)
            now = int(time.time())
            for kind, at, user in ((EV.RINGING, now - 70, "u3"), (EV.ANSWERED, now - 65, "u3")):
                decide.CallEvent(EV(tenant="acme", call_id="c1", kind=kind, user=user, at=at, direction="outbound",
                                    called="+12125550100"), timeout=10)
            assert health(server, STORE) == SERVING
            filler = fill(disk)
            ended = EV(tenant="acme", call_id="c1", kind=EV.ENDED, at=now)
            with pytest.raises(grpc.RpcError) as err:
                decide.CallEvent(ended, timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE                 # try again, never UNKNOWN
            assert "disk holding the store is full" in err.value.details()
            # the same ending in a proxy's batch: answered in band, to be sent again
            (result,) = decide.CallEvents(decisions_pb2.CallEventBatch(events=[ended]), timeout=30).results
            assert result.error_code == grpc.StatusCode.UNAVAILABLE.value[0], result
            assert "disk holding the store is full" in result.error
            with pytest.raises(grpc.RpcError) as err:
                admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="1.00", reference="r2"), timeout=30)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            wait_for(lambda: health(server, STORE) == NOT_SERVING, timeout=10)
            assert health(server, DECISIONS) == SERVING                           # decisions go on from memory
            d = decide.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+12125550100",
                                                            called="+14155550199"), timeout=10)
            assert d.verdict != decisions_pb2.VERDICT_ERROR and d.version == 1
            text = urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10).read().decode()
            assert 'callgate_store_errors_total{kind="full",op="submit_call_event"}' in text
            assert 'callgate_health_serving{service="callgate.v1.Store"} 0.0' in text
            faults = server.events("store_fault")
            assert faults and all(f["kind"] == "full" for f in faults)
            assert len(faults) <= 2                                                # one line per kind per interval
            filler.unlink()
            wait_for(lambda: health(server, STORE) == SERVING, timeout=10)         # the probe write succeeds again
            reply = decide.CallEvent(ended, timeout=30)                            # the proxy's retry is billed
            assert (reply.talked_seconds, reply.charge) == (65, "0.04")              # 2 x 60 s at 0.02/min
            again = decide.CallEvent(ended, timeout=30)                            # ... once
            assert again == reply
            (batched,) = decide.CallEvents(decisions_pb2.CallEventBatch(events=[ended]), timeout=30).results
            assert batched.reply == reply                                          # ... in a batch too
            balance = admin.GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10)
            assert balance.balance == "9.96"
            channel.close()
        finally:
            assert server.stop() == 0
        with sqlite3.connect(disk / "data" / "callgate.sqlite") as conn:
            assert conn.execute("SELECT COUNT(*) FROM ledger WHERE kind = 'call'").fetchone()[0] == 1
            assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


# -- a lost or damaged store ----------------------------------------------------------------------------------

def seeded(tmp_path: Path) -> Path:
    """A data directory with acme (seeded) and beta (pushed), the server stopped."""
    server = Server(tmp_path / "data")
    try:
        admin = admin_pb2_grpc.AdminStub(server.channel())
        admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(example_doc("beta", 300)).encode()),
                           timeout=60)
        for i in range(300):
            admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="0.01", reference=f"r{i}"), timeout=10)
    finally:
        assert server.stop() == 0
    return tmp_path / "data"


def test_a_store_emptied_or_lost_is_refused_never_seeded_again(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    store = data / "callgate.sqlite"
    store.write_bytes(b"")
    for path in data.glob("callgate.sqlite-*"):
        path.unlink()
    done = serve(data, "--seed", str(EXAMPLE))
    assert done.returncode == 2
    line = last_line(done.stderr)
    assert line.startswith("callgate: error: ") and "is empty, but this data directory was initialised" in line
    assert "restore the store from a backup" in line and "Traceback" not in done.stderr
    assert store.stat().st_size == 0                                               # nothing seeded over it
    store.unlink()
    done = serve(data, "--seed", str(EXAMPLE))
    assert done.returncode == 2 and "is missing, but this data directory was initialised" in done.stderr
    assert not store.exists()


def test_another_store_put_in_its_place_is_refused(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    other = tmp_path / "other"
    SQLiteStore(other / "callgate.sqlite").close()
    os.replace(other / "callgate.sqlite", data / "callgate.sqlite")
    done = serve(data)
    assert done.returncode == 2 and "a store from elsewhere was put here" in last_line(done.stderr)


def ledger_leaf(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return int(conn.execute("SELECT pageno FROM dbstat WHERE name = 'ledger' AND pagetype = 'leaf' "
                                "ORDER BY pageno DESC LIMIT 1").fetchone()[0])


def overwrite_page(path: Path, page: int, at: int = 100, data: bytes = b"\xff" * 64) -> None:
    with open(path, "r+b") as f:
        f.seek((page - 1) * 4096 + at)
        f.write(data)


def test_a_damaged_ledger_page_is_refused_at_start_and_named(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    overwrite_page(data / "callgate.sqlite", ledger_leaf(data / "callgate.sqlite"))
    done = serve(data)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    line = last_line(done.stderr)
    assert "is damaged: table ledger (page" in line and "callgate store check" in line
    check = subprocess.run([sys.executable, "-m", "callgate", "store", "check", "--data-dir", str(data)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert check.returncode == 1
    # the ledger is named: as the damaged table, or as the table of a damaged index (which the overwritten
    # page holds depends on where the rows fell)
    [integrity] = [line for line in check.stdout.splitlines() if line.startswith("PROBLEM  integrity: damaged ")]
    assert "table ledger" in integrity


def test_damage_met_by_a_running_store_is_internal_and_names_the_table(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    overwrite_page(data / "callgate.sqlite", ledger_leaf(data / "callgate.sqlite"))
    store = SQLiteStore(data / "callgate.sqlite")
    try:
        with pytest.raises(StoreDamaged) as err:
            store.ledger_sum("acme")
        assert err.value.kind == "damaged" and "table ledger" in str(err.value)
        assert "will not work by retrying" in str(err.value)
    finally:
        store.close()


def test_store_check_passes_a_good_store_and_finds_money_that_does_not_add_up(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    run = [sys.executable, "-m", "callgate", "store", "check", "--data-dir", str(data)]
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "no problems found" in done.stdout, done.stdout + done.stderr
    with sqlite3.connect(data / "callgate.sqlite") as conn:
        conn.execute("UPDATE accounts SET balance_micro = balance_micro + 1 WHERE tenant = 'acme'")
    done = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert "PROBLEM  money: tenant 'acme' has balance 3.000001 but its ledger sums to 3.00" in done.stdout
    done = subprocess.run([*run[:-1], str(tmp_path / "nowhere")], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2 and "no callgate store at" in done.stderr


# -- a damaged snapshot blob --------------------------------------------------------------------------------

def blob_in_force(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """(version, stored snapshot blob) of acme's version in force."""
    version, blob = conn.execute("SELECT s.version, s.blob FROM snapshots s JOIN current c "
                                 "ON c.tenant = s.tenant AND c.version = s.version WHERE s.tenant = 'acme'").fetchone()
    return int(version), bytes(blob)


def test_flipped_bytes_in_the_snapshot_in_force_are_caught_and_compiled_again(tmp_path: Path) -> None:
    data = seeded(tmp_path)
    path = data / "callgate.sqlite"
    with sqlite3.connect(path) as conn:
        version, blob = blob_in_force(conn)
        damaged = bytearray(blob)
        middle = len(damaged) // 2
        damaged[middle:middle + 64] = bytes(b ^ 0xA5 for b in damaged[middle:middle + 64])
        conn.execute("UPDATE snapshots SET blob = ? WHERE tenant = 'acme' AND version = ?", (bytes(damaged), version))
    server = Server(data, seed=None, workers=2, listen=f"127.0.0.1:{free_port()}")
    try:
        decide = decisions_pb2_grpc.DecisionsStub(server.channel())
        for _ in range(20):                                                     # both workers, many connections
            d = decide.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666",
                                                            called="+14155550199"), timeout=10)
            assert (d.verdict, d.reason) == (decisions_pb2.REJECT, decisions_pb2.BLACKLISTED)
        assert server.events("snapshot_damaged") and server.events("snapshot_rebuilt")
        assert not server.events("worker_died")
    finally:
        assert server.stop() == 0
    with sqlite3.connect(path) as conn:                                          # the good blob is back
        blob, stored = conn.execute("SELECT blob, checksum FROM snapshots WHERE tenant = 'acme' AND version = ?",
                                    (version,)).fetchone()
        assert checksum(bytes(blob)) == stored


def test_a_snapshot_damaged_before_it_was_checksummed_is_refused_by_the_loader_and_compiled_again(
        tmp_path: Path) -> None:
    """The checksum matches (damage written with it, or older than it): the core's loader still refuses indexes
    that point outside their tables, and the worker compiles the version again instead of deciding on it."""
    import msgpack

    data = seeded(tmp_path)
    path = data / "callgate.sqlite"
    with sqlite3.connect(path) as conn:
        version, blob = blob_in_force(conn)
        doc = msgpack.unpackb(blob, raw=False)
        trie = doc["arrays"]["trie_child"]
        trie["data"] = b"\x7f" * len(trie["data"])                         # every child index far out of range
        damaged = msgpack.packb(doc, use_bin_type=True)
        conn.execute("UPDATE snapshots SET blob = ?, checksum = ? WHERE tenant = 'acme' AND version = ?",
                     (damaged, checksum(damaged), version))
    server = Server(data, seed=None)
    try:
        decide = decisions_pb2_grpc.DecisionsStub(server.channel())
        d = decide.Outbound(decisions_pb2.OutboundRequest(tenant="acme", user="u3", destination="+12125550100"),
                            timeout=10)
        assert d.verdict == decisions_pb2.ALLOW and d.rate_per_minute == "0.0200"
        refused = server.events("snapshot_damaged")
        assert refused and "trie_child" in refused[0]["msg"]
        assert server.events("snapshot_rebuilt")
    finally:
        assert server.stop() == 0


# -- spools ---------------------------------------------------------------------------------------------------

def test_the_upload_of_a_worker_killed_mid_push_is_swept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    spool = data / "spool"
    spool.mkdir(parents=True)
    (spool / "999999-stale.push").write_bytes(b"x" * 1000)                      # left by a crash before this start
    server = Server(data, "--upload-mb-per-s", "0.5", workers=2, listen=f"127.0.0.1:{free_port()}")
    try:
        assert not (spool / "999999-stale.push").exists()
        doc = example_doc()
        doc["blacklist"] = [f"+4930{i:08d}" for i in range(300_000)]
        document = json.dumps(doc).encode()
        from server.client import upload_messages

        admin = admin_pb2_grpc.AdminStub(server.channel())
        outcome: list[Any] = []

        def push() -> None:
            try:
                outcome.append(admin.PushSettingsUpload(upload_messages(document, "json"), timeout=60))
            except grpc.RpcError as exc:
                outcome.append(exc)

        pusher = threading.Thread(target=push)
        pusher.start()
        files = wait_for(lambda: [p for p in spool.iterdir() if p.stat().st_size > 0], timeout=30)
        pid = int(files[0].name.partition("-")[0])
        os.kill(pid, signal.SIGKILL)
        pusher.join(60)
        assert isinstance(outcome[0], grpc.RpcError)
        wait_for(lambda: not any(spool.iterdir()), timeout=10)                # the supervisor swept it
        assert server.events("spool_swept")
    finally:
        assert server.stop() == 0


# -- health ---------------------------------------------------------------------------------------------------

def test_decisions_health_follows_the_first_push_without_a_restart(tmp_path: Path) -> None:
    server = Server(tmp_path / "data", seed=None)
    try:
        assert health(server, DECISIONS) == NOT_SERVING
        assert health(server, STORE) == SERVING
        admin = admin_pb2_grpc.AdminStub(server.channel())
        admin.PushSettings(admin_pb2.PushSettingsRequest(document=EXAMPLE.read_bytes()), timeout=60)
        wait_for(lambda: health(server, DECISIONS) == SERVING, timeout=10)
    finally:
        assert server.stop() == 0


# -- one-line errors ------------------------------------------------------------------------------------------

def test_cli_failures_are_one_line(tmp_path: Path, capsys: Any, server: Server) -> None:
    assert main(["--server", server.address, "settings", "rollback", str(2**70), "--tenant", "acme"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument VERSION" in err and "Traceback" not in err
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        done = serve(tmp_path / "a", "--listen", f"127.0.0.1:{port}")
        assert done.returncode == 2
        assert last_line(done.stderr) == (f"callgate: error: --listen 127.0.0.1:{port}: address already in use "
                                          "(another callgate, or another program, listens there); stop what "
                                          "listens there or choose another --listen")
        done = subprocess.run([sys.executable, "-m", "callgate", "serve", "--listen", "127.0.0.1:0", "--data-dir",
                               str(tmp_path / "b"), "--metrics", f"127.0.0.1:{port}"], cwd=ROOT, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and f"--metrics 127.0.0.1:{port}: address already in use" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        busy.close()


def test_a_push_whose_answer_is_lost_says_to_check_the_history(tmp_path: Path, capsys: Any) -> None:
    """A server that takes the whole upload and then drops the connection: the push may have been committed."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def swallow() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(5)
            conn.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")  # an HTTP/2 SETTINGS frame: "connected"
            got = 0
            with contextlib.suppress(OSError):
                while got < 1500:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    got += len(chunk)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")

    thread = threading.Thread(target=swallow, daemon=True)
    thread.start()
    try:
        code = main(["--server", f"127.0.0.1:{port}", "--timeout", "10", "settings", "push", str(EXAMPLE)])
    finally:
        thread.join(10)
        listener.close()
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "callgate settings history" in err and "may have been made" in err
