"""Kamailio in front of callgate, with real SIP traffic from sipp on loopback (issue 6).

.ci/run installs kamailio, kamailio-python3-modules and sip-tester; without them these tests fail with
what to install (they are the proof that the integration works, not an optional extra).
"""

from __future__ import annotations

import copy
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtest import sip

from .serving import EXAMPLE, ROOT, Server

DOC = json.loads(EXAMPLE.read_text())
OPEN = "+14155550199"      # acme's main number; the test gives it no schedule: always open
CLOSED = "+14155550188"    # a number the test adds, off hours at every instant, off-hours action reject
PENDING = "+14155550100"   # requires documents, none approved
BACKUP = DOC["backup"]["number"]


def sip_doc(status: str = "active") -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc["status"] = status
    for n in doc["numbers"]:
        n.pop("rental", None)
        if n["number"] == OPEN:
            n.pop("schedule", None)
    doc["numbers"].append({"number": CLOSED, "line": "rent-1", "country": "US", "route_to": "sales",
                           "schedule": {"timezone": "America/New_York", "weekly": {}},
                           "offhours_action": {"action": "reject"}})
    return doc


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict[str, Any]]:
    missing = sip.missing_tools()
    if missing:
        pytest.fail(f"{', '.join(missing)} not installed: run .ci/run, or apt-get install {sip.PACKAGES}")
    folder = tmp_path_factory.mktemp("sip")
    callgate = Server(folder / "data", seed=None)
    started: list[Any] = [callgate]
    try:
        with callgate.channel() as channel:
            from callgate.v1 import admin_pb2, admin_pb2_grpc

            admin = admin_pb2_grpc.AdminStub(channel)
            admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(sip_doc()).encode()), timeout=60)
        failover = folder / "failover.json"
        done = subprocess.run([sys.executable, "-m", "callgate", "--server", callgate.address, "export", "failover",
                               "-o", str(failover)], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        uas = sip.Uas(folder)
        started.append(uas)
        closed = sip.Kamailio(folder, callgate.address, uas.port)
        started.append(closed)
        opened = sip.Kamailio(folder, callgate.address, uas.port, failure="open", failover=failover)
        started.append(opened)
        yield {"folder": folder, "callgate": callgate, "uas": uas, "closed": closed, "open": opened}
    finally:
        for p in reversed(started):
            p.stop()


def push(world: dict[str, Any], doc: dict[str, Any]) -> None:
    from callgate.v1 import admin_pb2, admin_pb2_grpc

    with world["callgate"].channel() as channel:
        admin_pb2_grpc.AdminStub(channel).PushSettings(
            admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()), timeout=60)


def expect(world: dict[str, Any], proxy: str, caller: str, called: str, status: int) -> None:
    ok, report = sip.call(world[proxy].address, caller, called, status, world["folder"])
    assert ok, f"{caller} -> {called} through {proxy}: expected {status}: {report}"


@pytest.mark.parametrize("caller, called, status", [
    ("+14155550666", OPEN, 603),        # blacklisted
    ("+14155550777", CLOSED, 480),      # on the off-hours blacklist, number off hours
    ("+12125550000", PENDING, 403),     # documents pending
    ("+12125550000", "+19995550000", 404),   # not one of the tenant's numbers
    ("+12125550000", OPEN, 200),        # allowed: relayed, answered, ACK and BYE through the proxy
])
def test_expected_sip_status_per_caller(world, caller, called, status) -> None:
    expect(world, "closed", caller, called, status)


def test_an_allowed_call_is_registered_with_its_events(world) -> None:
    from callgate.v1 import admin_pb2, admin_pb2_grpc

    expect(world, "closed", "+12125550123", OPEN, 200)
    with world["callgate"].channel() as channel:
        calls = admin_pb2_grpc.AdminStub(channel).ListCalls(admin_pb2.ListCallsRequest(tenant="acme", state="ended"),
                                                            timeout=10).calls
    mine = [c for c in calls if c.caller == "+12125550123"]
    assert mine and mine[-1].answered_by == "u1" and mine[-1].called == OPEN    # RINGING, ANSWERED, ENDED arrived
    assert f"INVITE sip:{OPEN}@" in " ".join(world["uas"].received())


def test_outbound_gets_the_caller_id_or_the_refusal(world) -> None:
    from callgate.v1 import admin_pb2, admin_pb2_grpc

    expect(world, "closed", "u3", "+15551230000", 402)                     # no credit yet: INSUFFICIENT_FUNDS
    with world["callgate"].channel() as channel:
        admin_pb2_grpc.AdminStub(channel).Credit(admin_pb2.CreditRequest(tenant="acme", amount="5.00",
                                                                         reference="sip-test"), timeout=10)
    time.sleep(0.5)                                                         # the workers poll balances
    before = len(world["uas"].messages())
    expect(world, "closed", "u3", "+15551230000", 200)
    assert "P-Asserted-Identity: <sip:+442071234567@" in world["uas"].messages()[before:]
    expect(world, "closed", "u1", "+15551230000", 403)                     # u1's caller ID needs documents


def test_pickup_code_intercepts_a_ringing_call(world) -> None:
    from callgate.v1 import decisions_pb2, decisions_pb2_grpc

    with world["callgate"].channel() as channel:
        decisions_pb2_grpc.DecisionsStub(channel).CallEvent(decisions_pb2.CallEventRequest(
            tenant="acme", call_id="ringing-at-u1", kind=decisions_pb2.CallEventRequest.RINGING, user="u1",
            caller="+12125550999", called=OPEN), timeout=10)
    before = len(world["uas"].messages())
    expect(world, "closed", "u2", "*8", 200)                               # u2 shares sales with u1
    assert "X-Callgate-Intercept: ringing-at-u1" in world["uas"].messages()[before:]
    expect(world, "closed", "u2", "*8", 404)                               # nothing ringing any more


def test_a_mismatch_fails(world) -> None:
    """The check is real: expecting 200 for a blacklisted caller must fail."""
    ok, report = sip.call(world["closed"].address, "+14155550666", OPEN, 200, world["folder"], timeout_s=10)
    assert not ok and "603" in report


def test_backup_forwarding_when_the_tenant_is_unavailable(world) -> None:
    push(world, sip_doc(status="suspended"))
    try:
        before = len(world["uas"].received())
        expect(world, "closed", "+12125550000", OPEN, 200)                  # FORWARD to the backup number
        assert any(line.startswith(f"INVITE sip:{BACKUP}@") for line in world["uas"].received()[before:])
    finally:
        push(world, sip_doc())


def test_callgate_stopped_fails_closed_or_open_to_the_backup(world) -> None:
    world["callgate"].stop()
    expect(world, "closed", "+12125550000", OPEN, 503)                      # fail closed
    before = len(world["uas"].received())
    expect(world, "open", "+12125550000", OPEN, 200)                        # fail open: the backup number
    assert any(line.startswith(f"INVITE sip:{BACKUP}@") for line in world["uas"].received()[before:])
    assert "forwarding" in world["open"].text() and "backup" in world["open"].text()


def test_through_tls_with_a_proxy_token(tmp_path: Path, world) -> None:
    """Kamailio talks TLS to a callgate that requires tokens, with a proxy token."""
    from server.cli import main

    assert main(["dev-ca", str(tmp_path / "tls")]) == 0
    data = tmp_path / "data"
    token = _proxy_token(data)
    tls = tmp_path / "tls"
    secure = Server(data, "--auth", "tokens", "--tls-cert", str(tls / "server.pem"), "--tls-key",
                    str(tls / "server.key"))
    kam = None
    try:
        kam = sip.Kamailio(tmp_path, secure.address, world["uas"].port, tls_ca=tls / "ca.pem", token=token)
        for caller, status in (("+14155550666", 603), ("+12125550000", 200)):
            ok, report = sip.call(kam.address, caller, OPEN, status, tmp_path)
            assert ok, report
        assert "UNAUTHENTICATED" not in kam.text() and "UNAVAILABLE" not in kam.text()
    finally:
        if kam is not None:
            kam.stop()
        secure.stop()


def _proxy_token(data: Path) -> str:
    """A proxy token in a fresh store (what `callgate tokens create --role proxy` does, without the printing)."""
    from server import auth
    from server.store import SQLiteStore

    ident, token, token_hash = auth.new_token()
    store = SQLiteStore(data / "callgate.sqlite")
    try:
        store.add_token(ident, token_hash, "proxy", [], 0, "kamailio test")
    finally:
        store.close()
    return token


def test_kemi_script_is_plain_python(tmp_path: Path) -> None:
    """The script compiles outside Kamailio too (KSR is only imported at run time by app_python3)."""
    source = (ROOT / "integrations" / "kamailio" / "callgate_kemi.py").read_text()
    compile(source, "callgate_kemi.py", "exec")


def test_sip_bench_smoke(tmp_path: Path) -> None:
    """The SIP benchmark end to end with a tiny load: both proxies carry every call."""
    out = tmp_path / "sip.json"
    done = subprocess.run([sys.executable, "-m", "loadtest.sip_bench", "--rate", "20", "--seconds", "2",
                           "--ramp", "", "--children", "2", "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    for name in ("with callgate", "without callgate"):
        assert figures["bounded"][name]["successful"] == 40 and figures["bounded"][name]["failed"] == 0
