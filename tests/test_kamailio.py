"""Kamailio in front of callgate, with real SIP traffic from sipp on loopback.

.ci/run installs kamailio, kamailio-python3-modules and sip-tester; without them these tests fail with
what to install (they are the proof that the integration works, not an optional extra).
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from engine import replica
from loadtest import sip

from .serving import EXAMPLE, ROOT, ReplicaProcess, Server, wait_for

DOC = json.loads(EXAMPLE.read_text())
OPEN = "+14155550199"      # acme's main number; the test gives it no schedule: always open
CLOSED = "+14155550188"    # a number the test adds, off hours at every instant, off-hours action reject
PENDING = "+14155550100"   # requires documents, none approved
LATER = "+14155550177"     # a number acme gets during the tests (the failover table learns it)
NO_GROUP = "+14155550166"  # always open, no route_to: ROUTE without a queue group
BACKUP = DOC["backup"]["number"]
US_DEST = "+15551230000"   # outside: 0.0200 per minute billed per 60 s
PBX = sip.TRUSTED          # the trusted PBX's source address (a carrier calls from 127.0.0.1)


def sip_doc(status: str = "active", later: bool = False) -> dict[str, Any]:
    doc = copy.deepcopy(DOC)
    doc["status"] = status
    doc["block_anonymous"] = True
    for n in doc["numbers"]:
        n.pop("rental", None)
        if n["number"] == OPEN:
            n.pop("schedule", None)
    doc["numbers"].append({"number": CLOSED, "line": "rent-1", "country": "US", "route_to": "sales",
                           "schedule": {"timezone": "America/New_York", "weekly": {}},
                           "offhours_action": {"action": "reject"}})
    doc["numbers"].append({"number": NO_GROUP, "line": "rent-1", "country": "US"})
    if later:
        doc["numbers"].append({"number": LATER, "line": "rent-1", "country": "US", "route_to": "sales"})
    return doc


def export_failover(callgate: Server, path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "callgate", "--server", callgate.address, "export", "failover",
                           "-o", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


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
        export_failover(callgate, failover)
        world: dict[str, Any] = {"folder": folder, "callgate": callgate, "failover": failover}
        # this host's replica of the snapshots, for the proxy that decides inbound calls itself ("local")
        world["replica"] = ReplicaProcess(callgate.address, folder / "replica", name="sip-host")
        started.append(world["replica"])
        wait_for(lambda: "acme" in replica.held(folder / "replica"), timeout=30)
        for kind in ("answer", "direct", "busy", "silent"):
            world[f"uas-{kind}"] = uas = sip.Uas(folder, kind)
            started.append(uas)
        world["uas"] = world["uas-answer"]
        for name, kind, extra in (("closed", "answer", {}), ("open", "answer", {"failure": "open"}),
                                  ("direct", "direct", {}), ("busy", "busy", {}),
                                  ("silent", "silent", {"fr_inv_ms": 4000}),
                                  ("local", "answer", {"replica": folder / "replica"}),
                                  # the same without the callgate_events module: the script's Python reply routes
                                  ("closed-py", "answer", {"events_module": False}),
                                  ("busy-py", "busy", {"events_module": False}),
                                  ("silent-py", "silent", {"fr_inv_ms": 4000, "events_module": False})):
            world[name] = proxy = sip.Kamailio(folder, callgate.address, world[f"uas-{kind}"].port,
                                               failover=failover, **extra)
            started.append(proxy)
        yield world
    finally:
        for p in reversed(started):
            p.stop()


def admin(world: dict[str, Any]) -> Any:
    from callgate.v1 import admin_pb2_grpc

    return admin_pb2_grpc.AdminStub(world["callgate"].channel())


def push(world: dict[str, Any], doc: dict[str, Any]) -> None:
    from callgate.v1 import admin_pb2

    admin(world).PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()), timeout=60)


def calls(world: dict[str, Any], state: str) -> list[Any]:
    from callgate.v1 import admin_pb2

    return list(admin(world).ListCalls(admin_pb2.ListCallsRequest(tenant="acme", state=state, limit=1000),
                                       timeout=10).calls)


def expect(world: dict[str, Any], proxy: str, caller: str, called: str, status: int, source: str = "127.0.0.1",
           hold_ms: int = 200, cut: bool = False) -> None:
    ok, report = sip.call(world[proxy].address, caller, called, status, world["folder"], source=source,
                          hold_ms=hold_ms, cut=cut)
    assert ok, f"{caller} -> {called} through {proxy} from {source}: expected {status}: {report}"


def delivered(world: dict[str, Any], *proxies: str) -> None:
    """Wait until each proxy's spool has sent what it holds (no timing assertion: a bounded wait)."""
    wait_for(lambda: all(not world[p].spooled().get(0) for p in proxies), timeout=20)


CALLER_TABLE = [
    ("+14155550666", OPEN, 603),        # blacklisted
    ("+14155550777", CLOSED, 480),      # on the off-hours blacklist, number off hours
    ("+12125550000", PENDING, 403),     # documents pending
    ("+12125550000", "+19995550000", 403),   # from outside, to a number no tenant holds: refused before callgate
    ("+12125550000", OPEN, 200),        # allowed: relayed, answered, ACK and BYE through the proxy
    ("anonymous", OPEN, 433),           # withheld, and the tenant blocks anonymous callers
    ("+12125550000", NO_GROUP, 200),    # routed to the PBX with no queue group named
    ("mallory", OPEN, 503),             # no caller the engine can read: refused as input (the failure policy)
]


@pytest.mark.parametrize("caller, called, status", CALLER_TABLE)
def test_expected_sip_status_per_caller(world, caller, called, status) -> None:
    expect(world, "closed", caller, called, status)


def decided_by_callgate(world: dict[str, Any]) -> int:
    from callgate.v1 import admin_pb2

    return int(admin(world).Stats(admin_pb2.StatsRequest(), timeout=10).decisions)


@pytest.mark.parametrize("caller, called, status", CALLER_TABLE)
def test_decided_in_the_kamailio_worker_from_the_replica_the_same_sip_status(world, caller, called, status) -> None:
    before = decided_by_callgate(world)
    expect(world, "local", caller, called, status)
    assert decided_by_callgate(world) == before     # no Inbound asked of callgate: decided in the worker
    assert "Traceback" not in world["local"].text()


@pytest.mark.parametrize("caller", ["anonymous", "Anonymous", "restricted", "unknown", "Private", "unavailable"])
def test_every_withheld_spelling_is_a_withheld_caller(world, caller) -> None:
    """The engine recognises withheld callers (block_anonymous: 433); the script never guesses from the spelling."""
    expect(world, "closed", caller, OPEN, 433)
    assert not [c for c in calls(world, "ringing") + calls(world, "ended") if c.direction == "outbound"
                and c.caller_raw == caller]


def test_a_user_from_an_untrusted_source_cannot_call_out(world) -> None:
    ledger_before = admin_ledger(world)
    for caller in ("mallory", "u3"):
        expect(world, "closed", caller, US_DEST, 403)                     # refused before callgate is asked
    delivered(world, "closed")
    assert admin_ledger(world) == ledger_before                             # nothing billed
    assert not [c for c in calls(world, "ringing") + calls(world, "ended") if c.caller_raw in ("mallory",)]
    assert f"from untrusted 127.0.0.1 to {US_DEST}: refused" in world["closed"].text()


def admin_ledger(world: dict[str, Any]) -> list[tuple[str, str]]:
    from callgate.v1 import admin_pb2

    entries = admin(world).ListLedger(admin_pb2.LedgerRequest(tenant="acme", limit=1000), timeout=10).entries
    return [(e.kind, e.amount) for e in entries]


# each event test twice: the replies' events made by Kamailio's callgate_events module, and by the script's routes
EVENT_MAKERS = pytest.mark.parametrize("suffix, base", [("", 0), ("-py", 50)], ids=["module", "python"])


@EVENT_MAKERS
def test_an_allowed_call_is_registered_with_its_events(world, suffix: str, base: int) -> None:
    caller = f"+121255501{23 + base}"
    expect(world, "closed" + suffix, caller, OPEN, 200)
    delivered(world, "closed" + suffix)
    mine = [c for c in calls(world, "ended") if c.caller == caller]
    # RINGING, ANSWERED, ENDED arrived; the user is the one the PBX's replies name (the call's record: u1)
    assert mine and mine[-1].answered_by == "u2" and mine[-1].called == OPEN
    assert mine[-1].outcome == "answered"
    # the replies' events made by the module (its journal, PID.c-….cgj), or by the script without it; with the
    # module the ENDED is its own too (the script keeps no record for the dialog's end then)
    journals = Path(f"{world['closed' + suffix].spool}.journal")
    assert bool(list(journals.glob("*.c-*.cgj"))) == (suffix == "")
    assert f"INVITE sip:{OPEN}@" in " ".join(world["uas"].received())
    # the Record-Route names the call as callgate does (its BYE is still known after a restart lost the dialog):
    # made by the module's relayed() with the module, by the script without it, the same
    invite = route_of(world, caller)
    assert invite["cgc"] == mine[-1].call_id == f"{invite['call-id']}/{invite['cseq']}"
    assert invite["cgt"] == "acme"


@EVENT_MAKERS
def test_a_call_id_longer_than_callgate_takes_is_registered_and_billed_by_its_digest(world, suffix: str,
                                                                                   base: int) -> None:
    """A caller's Call-ID of 400 characters (callgate takes 256): the module's relayed() leaves the call to the
    script, which names it by the digest of Call-ID/CSeq; the call is registered whole, answered and ended, and
    its Record-Route names it so."""
    caller = f"+121255502{10 + base}"
    ok, report = sip.call(world["closed" + suffix].address, caller, OPEN, 200, world["folder"],
                          extra=["-cid_str", "x" * 390 + "-%u-%p@%s"])
    assert ok, report
    delivered(world, "closed" + suffix)
    mine = wait_for(lambda: [c for c in calls(world, "ended") if c.caller == caller], timeout=10)
    assert len(mine) == 1 and mine[0].call_id.startswith("sha256:")
    assert (mine[0].answered_by, mine[0].outcome) == ("u2", "answered")
    invite = route_of(world, caller)
    assert len(invite["call-id"]) > 256 and invite["cgc"] == mine[0].call_id


def route_of(world: dict[str, Any], caller: str) -> dict[str, str]:
    """The last INVITE from `caller` the PBX received: its Call-ID, CSeq number and this proxy's Record-Route
    parameters cgc and cgt (decoded from hex)."""
    invites = [m for m in re.split(r"\n\s*\n", world["uas"].messages()) if m.lstrip().startswith("INVITE sip:")
               and re.search(rf"^From:.*{re.escape(caller)}", m, flags=re.M)]
    assert invites, f"no INVITE from {caller} reached the PBX"
    message = invites[-1]

    def header(name: str) -> str:
        found = re.search(rf"^{name}:\s*(.*?)\s*$", message, flags=re.M | re.I)
        assert found, f"no {name} in {message!r:.300}"
        return found.group(1)

    route = header("Record-Route")
    params = dict(re.findall(r";(cg[ct])=([0-9a-f]*)", route))
    assert set(params) == {"cgc", "cgt"}, route
    return {"call-id": header("Call-ID"), "cseq": header("CSeq").split()[0],
            **{k: bytes.fromhex(v).decode() for k, v in params.items()}}


def test_outbound_from_the_trusted_pbx_gets_the_caller_id_or_the_refusal(world) -> None:
    from callgate.v1 import admin_pb2

    expect(world, "closed", "u3", US_DEST, 402, source=PBX)                # no credit yet: INSUFFICIENT_FUNDS
    admin(world).Credit(admin_pb2.CreditRequest(tenant="acme", amount="5.00", reference="sip-test"), timeout=10)
    time.sleep(0.5)                                                         # the workers poll balances
    before = len(world["uas"].messages())
    expect(world, "closed", "u3", US_DEST, 200, source=PBX)
    assert "P-Asserted-Identity: <sip:+442071234567@" in world["uas"].messages()[before:]
    expect(world, "closed", "u1", US_DEST, 403, source=PBX)                # u1's caller ID needs documents


def test_a_call_answered_without_ringing_is_registered_and_billed(world) -> None:
    from callgate.v1 import admin_pb2

    admin(world).Credit(admin_pb2.CreditRequest(tenant="acme", amount="5.00", reference="sip-direct"), timeout=10)
    time.sleep(0.5)
    expect(world, "direct", "u3", US_DEST, 200, source=PBX, hold_ms=1000)    # the PBX answers 200, no 180
    delivered(world, "direct")
    direct = [c for c in calls(world, "ended") if c.direction == "outbound" and c.ringing_user == "u3"
              and c.outcome == "answered" and c.talked_seconds >= 1]
    assert direct, [(c.call_id, c.direction, c.outcome) for c in calls(world, "ended")]
    assert direct[-1].talked_seconds >= 1 and direct[-1].charge == "0.02"     # one 60 s increment at 0.02
    assert ("call", "-0.02") in admin_ledger(world)


@EVENT_MAKERS
def test_busy_cancelled_and_unanswered_calls_end_with_their_outcome_and_are_never_picked_up(world, suffix: str,
                                                                                           base: int) -> None:
    from callgate.v1 import decisions_pb2, decisions_pb2_grpc

    busy, cancelled, unanswered = (f"+121255502{n + base:02d}" for n in (1, 2, 3))
    expect(world, "busy" + suffix, busy, OPEN, 486)
    caller = sip.cancel(world["silent" + suffix].address, cancelled, OPEN, world["folder"], ring_ms=500)
    assert caller.wait(30) == 0, caller.stderr.read() if caller.stderr else ""
    expect(world, "silent" + suffix, unanswered, OPEN, 408)                 # the proxy's INVITE timer
    delivered(world, "busy" + suffix, "silent" + suffix)
    ended = {c.caller: c for c in calls(world, "ended")}
    assert {n: ended[n].outcome for n in (busy, cancelled, unanswered)} == {
        busy: "busy", cancelled: "cancelled", unanswered: "no_answer"}
    # each rang: the busy PBX answers 486 at once (RINGING and ENDED together: the call's record names u1, not the
    # reply's X-Callgate-User, u2), the silent one sends a 180 (its header: u2)
    assert [ended[n].ringing_user for n in (busy, cancelled, unanswered)] == ["u1", "u2", "u2"], [
        (n, ended[n].ringing_user) for n in (busy, cancelled, unanswered)]
    pick = decisions_pb2.PickupRequest(tenant="acme", user="u2", dialed="*8")
    d = decisions_pb2_grpc.DecisionsStub(world["callgate"].channel()).Pickup(pick, timeout=10)
    assert d.reason == decisions_pb2.NO_RINGING_CALL


def test_a_pickup_never_intercepts_an_outbound_call(world) -> None:
    # u3 (queue group support, with u2) calls out; the PBX rings the destination for 2.5 s; u2 dials *8 meanwhile
    ringing = sip.cancel(world["silent"].address, "u3", US_DEST, world["folder"], ring_ms=2500, source=PBX)
    try:
        wait_for(lambda: [c for c in calls(world, "ringing") if c.direction == "outbound"], timeout=10)
        expect(world, "closed", "u2", "*8", 404, source=PBX)
    finally:
        assert ringing.wait(30) == 0
    delivered(world, "silent")
    assert [c.outcome for c in calls(world, "ended") if c.direction == "outbound"][-1] == "cancelled"


def test_an_outbound_call_is_cut_when_its_credit_is_talked(world) -> None:
    """The Outbound decision's longest duration is the dialog's timer: the proxy hangs up both sides (BYE) when
    the credit is talked, and the call is billed what it talked."""
    from callgate.v1 import admin_pb2

    available = admin(world).GetBalance(admin_pb2.BalanceRequest(tenant="acme"), timeout=10).available
    per_minute = (Decimal(available) * 20).quantize(Decimal("0.01"))          # the credit pays for about 3 s
    doc = sip_doc(later=True)
    doc["lines"][0]["rates"][0] = {"prefix": "1", "per_minute": str(per_minute), "increment_s": 1}
    push(world, doc)
    try:
        time.sleep(0.5)
        # this call's record: the one that was not there before (other tests' calls to the same number are)
        before = {c.call_id for c in calls(world, "ended")}
        started = time.monotonic()
        expect(world, "closed", "u3", US_DEST, 200, source=PBX, hold_ms=20_000, cut=True)
        assert time.monotonic() - started < 10                                  # cut, not hung up by the caller
        delivered(world, "closed")
        [cut] = wait_for(lambda: [c for c in calls(world, "ended") if c.direction == "outbound"
                                  and c.called == US_DEST and c.call_id not in before], timeout=10)
        assert 1 <= cut.talked_seconds <= 4 and cut.outcome == "answered"
        assert Decimal(cut.charge) <= Decimal(available)
    finally:
        push(world, sip_doc(later=True))


def test_headers_from_outside_never_reach_the_pbx_and_the_proxy_relays_no_stranger(world) -> None:
    """An outsider's X-Callgate-Intercept would make the PBX bridge them into another call; an in-dialog request
    with a Route the proxy never made would use it as an open relay: both refused."""
    folder = world["folder"]
    scenario = folder / "uac-forged.xml"
    scenario.write_text(sip.uac_scenario(200).replace(
        "Max-Forwards: 70\n      Content-Type", "X-Callgate-Intercept: somebody-elses-call\n      P-Asserted-Identity: "
        "<sip:+14155550100@evil>\n      Max-Forwards: 70\n      Content-Type", 1))
    before = len(world["uas"].messages())
    done = subprocess.run(["sipp", "-sf", str(scenario), "-s", OPEN, world["closed"].address, "-i", "127.0.0.1",
                           "-p", str(sip.free_sip_port()), "-m", "1", "-key", "CALLER", "+12125550444", "-nostdin",
                           "-timeout", "20s", "-timeout_error"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    received = world["uas"].messages()[before:]
    assert "somebody-elses-call" not in received and "evil" not in received
    relay = folder / "uac-relay.xml"
    relay.write_text(sip.HEAD + '<scenario name="an in-dialog request to a host of the sender\'s choice">\n'
                     + """  <send>
    <![CDATA[
      BYE sip:victim@127.0.0.1:9 SIP/2.0
      Via: SIP/2.0/[transport] [local_ip]:[local_port];branch=[branch]
      From: <sip:a@[local_ip]:[local_port]>;tag=abc
      To: <sip:b@127.0.0.1:9>;tag=def
      Route: <sip:127.0.0.1:9;lr>
      Call-ID: [call_id]
      CSeq: 2 BYE
      Max-Forwards: 70
      Content-Length: 0
    ]]>
  </send>
  <recv response="403"/>
</scenario>
""")
    done = subprocess.run(["sipp", "-sf", str(relay), world["closed"].address, "-i", "127.0.0.1", "-p",
                           str(sip.free_sip_port()), "-m", "1", "-nostdin", "-timeout", "20s", "-timeout_error"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]


def test_pickup_code_intercepts_a_ringing_call(world) -> None:
    from callgate.v1 import decisions_pb2, decisions_pb2_grpc

    with world["callgate"].channel() as channel:
        decisions_pb2_grpc.DecisionsStub(channel).CallEvent(decisions_pb2.CallEventRequest(
            tenant="acme", call_id="ringing-at-u1", kind=decisions_pb2.CallEventRequest.RINGING, user="u1",
            caller="+12125550999", called=OPEN), timeout=10)
    before = len(world["uas"].messages())
    expect(world, "closed", "u2", "*8", 200, source=PBX)                   # u2 shares sales with u1
    assert "X-Callgate-Intercept: ringing-at-u1" in world["uas"].messages()[before:]
    expect(world, "closed", "u2", "*8", 404, source=PBX)                   # nothing ringing any more


def test_a_mismatch_fails(world) -> None:
    """The check is real: expecting 200 for a blacklisted caller must fail."""
    ok, report = sip.call(world["closed"].address, "+14155550666", OPEN, 200, world["folder"], timeout_s=10)
    assert not ok and "603" in report


def test_a_refreshed_failover_table_is_in_force_without_a_restart(world) -> None:
    push(world, sip_doc(later=True))
    expect(world, "closed", "+12125550000", LATER, 403)                    # the table does not list it yet
    export_failover(world["callgate"], world["failover"])                  # what cron does
    time.sleep(1.2)                                                         # each worker looks once a second
    expect(world, "closed", "+12125550000", LATER, 200)
    assert "failover table read: 5 numbers" in world["closed"].text()


def test_backup_forwarding_when_the_tenant_is_unavailable(world) -> None:
    push(world, sip_doc(status="suspended"))
    try:
        before = len(world["uas"].received())
        expect(world, "closed", "+12125550000", OPEN, 200)                  # FORWARD to the backup number
        assert any(line.startswith(f"INVITE sip:{BACKUP}@") for line in world["uas"].received()[before:])
    finally:
        push(world, sip_doc(later=True))


def raw_call_with_copies(proxy: str, caller: str, called: str, call_id: str, copies: int) -> list[str]:
    """An INVITE sent `copies` times back to back (the same branch: retransmissions that overtake the first's
    transaction, as a careless or lossy carrier sends them), answered, ACKed and ended by a BYE, over a raw UDP
    socket; the status lines received."""
    import socket

    host, port = proxy.split(":")
    seen: list[str] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5.0)
        me = udp.getsockname()[1]
        head = (f"From: <sip:{caller}@127.0.0.1:{me}>;tag=copies\r\nCall-ID: {call_id}\r\n"
                f"Contact: <sip:{caller}@127.0.0.1:{me}>\r\nMax-Forwards: 70\r\n")
        invite = (f"INVITE sip:{called}@{proxy} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};"
                  f"branch=z9hG4bK-c-{call_id}\r\nTo: <sip:{called}@{proxy}>\r\n{head}CSeq: 1 INVITE\r\n"
                  "Content-Length: 0\r\n\r\n").encode()
        for _ in range(copies):
            udp.sendto(invite, (host, int(port)))
        answer = ""
        deadline = time.monotonic() + 10
        while not answer.startswith("SIP/2.0 200") and time.monotonic() < deadline:
            answer = udp.recv(65535).decode()
            seen.append(answer.split("\r\n", 1)[0])
        assert answer.startswith("SIP/2.0 200"), seen
        to = re.search(r"^To: (.*)$", answer, re.M | re.I).group(1).strip()  # type: ignore[union-attr]
        contact = re.search(r"^Contact: <?([^>\r\n;]+)", answer, re.M | re.I).group(1)  # type: ignore[union-attr]
        routes = [r.strip() for line in re.findall(r"^Record-Route: (.*)$", answer, re.M | re.I)
                  for r in line.split(",")]
        route = "".join(f"Route: {r}\r\n" for r in reversed(routes))   # (a UAC takes them in reverse)
        for n, method in ((1, "ACK"), (2, "BYE")):
            request = (f"{method} {contact} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{me};"
                       f"branch=z9hG4bK-{method}-{call_id}\r\nTo: {to}\r\n{head}{route}"
                       f"CSeq: {n if method == 'BYE' else 1} {method}\r\nContent-Length: 0\r\n\r\n").encode()
            udp.sendto(request, (host, int(port)))
        while not (seen and seen[-1].startswith("SIP/2.0 200") and "BYE" in answer):
            answer = udp.recv(65535).decode()
            seen.append(answer.split("\r\n", 1)[0])
    return seen


def test_copies_of_an_invite_arriving_together_make_one_call_one_dialog_and_one_event_each(world) -> None:
    """Three copies of each of four INVITEs, back to back, to the proxy that decides locally: the copies reach
    several SIP workers at once, before the first's transaction exists.  Each call is decided and relayed
    once as far as anyone sees: the PBX gets one INVITE, the proxy keeps one dialog and writes one RINGING,
    ANSWERED and ENDED to its journals, callgate records the call once, answered and ended."""
    proxy = world["local"]
    callers = [f"+1212555078{n}" for n in range(4)]
    for n, caller in enumerate(callers):
        seen = raw_call_with_copies(proxy.address, caller, OPEN, f"copies-{n}-{time.monotonic_ns()}@test", 3)
        assert seen[-1].startswith("SIP/2.0 200"), seen
    delivered(world, "local")
    ended = [c for c in calls(world, "ended") if c.caller in callers]
    assert sorted(c.caller for c in ended) == callers and all(c.outcome == "answered" for c in ended)
    records = b"".join(p.read_bytes() for p in Path(f"{proxy.spool}.journal").glob("*.cgj"))
    for c in ended:
        for kind in ("RINGING", "ANSWERED", "ENDED"):
            assert records.count(f"{c.call_id}:{kind}".encode()) == 1, (c.call_id, kind)
        invites = [m for m in re.split(r"\n\s*\n", world["uas"].messages())
                   if m.lstrip().startswith("INVITE sip:") and c.call_id.rsplit("/", 1)[0] in m]
        assert len(invites) == 1, invites

    def dialogs() -> str:
        return subprocess.run(["kamcmd", "-s", f"unix:{proxy.ctl}", "dlg.list"], capture_output=True, text=True,
                              timeout=10).stdout

    # no dialog left over (an ended one is kept until its BYE's transaction is gone: a bounded wait)
    deadline = time.monotonic() + 30
    while any(c.call_id.rsplit("/", 1)[0] in (left := dialogs()) for c in ended) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not any(c.call_id.rsplit("/", 1)[0] in left for c in ended), left[-3000:]


def test_a_replica_file_cut_short_under_the_workers_is_decided_by_callgate_and_kills_none(world) -> None:
    """acme's replica file truncated in place while the local proxy's SIP workers map it (a backup copied over
    it with cp, a `> file`): a worker's next decision from it faults (SIGBUS), which killed the worker and with
    it the whole Kamailio.  Now each worker refuses the file as it now is, logs why, and asks callgate: the same
    SIP status, every process alive.  The file put back whole (as the replica writes one), the workers decide
    from it again."""
    proxy = world["local"]
    directory = world["folder"] / "replica"
    path = replica.snapshot_path(directory, "acme")
    whole = path.read_bytes()
    processes = proxy.processes()
    before = decided_by_callgate(world)
    try:
        os.truncate(path, 0)
        ok, report = sip.call(proxy.address, "+14155550666", OPEN, 603, world["folder"], calls=24, rate=40)
        assert ok, report
        assert decided_by_callgate(world) == before + 24   # each asked of callgate
        assert proxy.processes() == processes
        text = proxy.text()
        assert "Traceback" not in text
        assert re.search(r"the file of tenant 'acme' in the replica \S+ cannot be used \(", text), text[-3000:]
    finally:
        restored = directory / ".restored.tmp"
        restored.write_bytes(whole)
        os.replace(restored, path)
        replica._write_status(directory, bump=True)   # (as the replica's own write moves the generation)
    before = decided_by_callgate(world)
    expect(world, "local", "+14155550666", OPEN, 603)
    assert decided_by_callgate(world) == before


def test_the_benchmarks_events_baseline_relays_undecided_and_records_each_call(world, tmp_path: Path) -> None:
    """CALLGATE_BYPASS=events, the SIP benchmark's second baseline: a call from a blacklisted caller is relayed
    (nothing is decided) and recorded in callgate whole, as a decided call's events would record it; a call to a
    number of no tenant is relayed and recorded nowhere.  (Before the test that stops the world's callgate.)"""
    proxy = sip.Kamailio(tmp_path, world["callgate"].address, world["uas"].port, failover=world["failover"],
                         bypass="events", children=1)
    try:
        relay = {"callgate": world["callgate"], "folder": tmp_path, "relay": proxy}
        expect(relay, "relay", "+14155550666", OPEN, 200)            # blacklisted: relayed all the same
        expect(relay, "relay", "+12125550777", "+19995550000", 200)  # no tenant's number
        delivered(relay, "relay")
        # (the only call of that caller any proxy lets through; the PBX names u2 in its 180 and 200)
        [call] = wait_for(lambda: [c for c in calls(world, "ended") if c.caller == "+14155550666"], timeout=10)
        assert (call.called, call.outcome, call.answered_by) == (OPEN, "answered", "u2")
        assert not [c for c in calls(world, "ended") + calls(world, "ringing") if c.caller == "+12125550777"]
    finally:
        proxy.stop()


def test_normal_calls_log_no_error(world) -> None:
    """Refused, cancelled and answered calls are normal: no ERROR line and no traceback in any proxy's log."""
    for name in ("closed", "direct", "busy", "silent"):
        text = world[name].text()
        assert "Traceback" not in text, name
        errors = [line for line in text.splitlines() if " ERROR: " in line]
        assert not errors, (name, errors[:5])


def test_callgate_stopped_fails_closed_or_open_to_the_backup(world) -> None:
    world["callgate"].stop()
    expect(world, "closed", "+12125550000", OPEN, 503)                      # fail closed
    before = len(world["uas"].received())
    expect(world, "open", "+12125550000", OPEN, 200)                        # fail open: the backup number
    assert any(line.startswith(f"INVITE sip:{BACKUP}@") for line in world["uas"].received()[before:])
    assert "forwarding" in world["open"].text() and "backup" in world["open"].text()
    assert world["open"].spooled().get(0)                                   # the leg's events wait for callgate


def test_through_tls_with_a_proxy_token(tmp_path: Path, world) -> None:
    """Kamailio talks TLS to a callgate that requires tokens, with a proxy token."""
    from server.cli.main import main

    assert main(["dev-ca", str(tmp_path / "tls")]) == 0
    data = tmp_path / "data"
    token = _proxy_token(data)
    tls = tmp_path / "tls"
    secure = Server(data, "--auth", "tokens", "--tls-cert", str(tls / "server.pem"), "--tls-key",
                    str(tls / "server.key"))
    kam = None
    try:
        kam = sip.Kamailio(tmp_path, secure.address, world["uas"].port, tls_ca=tls / "ca.pem", token=token,
                           failover=world["failover"])
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
    from server.rules.tokens import new_token
    from server.store.sqlite import SQLiteStore

    ident, token, token_hash = new_token()
    store = SQLiteStore(data / "callgate.sqlite")
    try:
        store.add_token(ident, token_hash, "proxy", [], 0, "kamailio test")
    finally:
        store.close()
    return token


def test_kemi_script_is_plain_python(tmp_path: Path) -> None:
    """The script and its spool module compile outside Kamailio too (KSR is only imported at run time by
    app_python3)."""
    for name in ("callgate_kemi.py", "callgate_spool.py"):
        compile((ROOT / "integrations" / "kamailio" / name).read_text(), name, "exec")


def test_sip_bench_smoke(tmp_path: Path) -> None:
    """The SIP benchmark end to end with a tiny load: the proxies carry every call, in two rounds (the local one,
    the relay and a variant of the relay side by side, then the other two in turned orders), the workers time
    their decisions, and the memory section (a small blacklist, 2 workers) sees the file shared, then copied."""
    out = tmp_path / "sip.json"
    done = subprocess.run([sys.executable, "-m", "loadtest.sip_bench", "--rate", "20", "--seconds", "2",
                           "--rounds", "2", "--warmup", "10", "--ramp", "", "--children", "2", "--memory-blacklist",
                           "1000", "--together", "local,bypass,again",
                           "--variant", "again=bypass:CALLGATE_SEND_EVERY_MS=1000",
                           "--memory-children", "2", "--memory-calls", "20", "--memory-rate", "20", "--json",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    for name in ("bypass", "events", "rpc", "local", "again"):   # each proxy's first calls, before anything is measured
        assert f"1 warm-up {name}: 10 of 10 calls, failed 0 (not measured)" in done.stderr, done.stderr[-3000:]
        assert figures["warmup"][name] == {"calls": 10, "successful": 10, "failed": 0}
    assert figures["together"] == ["local", "bypass", "again"]
    # the variant: a relay whose Kamailio had the setting in its environment
    assert figures["variants"] == {"again": {"kind": "bypass", "env": {"CALLGATE_SEND_EVERY_MS": "1000"},
                                             "in_its_environment": True, "bypass": "1"}}   # (a relay, as its kind)
    assert ("1 variant again: the bypass proxy with CALLGATE_SEND_EVERY_MS=1000 set; its Kamailio's environment "
            "has it") in done.stderr
    assert [list(r) for r in figures["rounds"]] == [["local", "bypass", "again", "events", "rpc"],
                                                    ["local", "bypass", "again", "rpc", "events"]]
    for turn, rnd in enumerate(figures["rounds"], 1):   # the three at the same time, each with its own sipp's calls
        assert f"1 bounded local (round {turn}), side by side with bypass, again: 40 of 40 calls" in done.stderr
        assert f"1 bounded bypass (round {turn}), side by side with local, again: 40 of 40 calls" in done.stderr
        runs = [rnd[name] for name in ("local", "bypass", "again")]
        assert max(r["started"] for r in runs) < min(r["ended"] for r in runs) - 1.0   # they overlap
        assert max(r["started"] for r in runs) - min(r["started"] for r in runs) < 1.0   # started together
        assert rnd["events"]["started"] >= max(r["ended"] for r in runs)               # then the others alone
    # the replies' events made by the callgate_events module: no Python reply route ran in either proxy
    assert all(not k.startswith("route:onreply") for name in ("rpc", "local") for k in figures["timings"][name])
    assert all("route:request_route" in figures["timings"][name] for name in ("rpc", "local"))   # (routes timed)
    for name in ("bypass", "events", "rpc", "local", "again"):
        assert all(r[name]["successful"] == 40 and r[name]["failed"] == 0 for r in figures["rounds"])
        assert figures["bounded"][name] in [r[name] for r in figures["rounds"]]
        assert figures["bounded"][name]["cpu"]["us_per_call"] > 0
    ratios = {row["what"]: row for row in figures["summary"] if row["what"].startswith("Kamailio CPU per call, ")}
    assert len(ratios) == 6
    assert [what for what in ratios if "side by side" in what] == [   # a mixed pair says so, with no target
        "Kamailio CPU per call, local / bypass side by side (median; each round)",
        "Kamailio CPU per call, rpc / bypass (bypass side by side, rpc alone) (median; each round)",
        "Kamailio CPU per call, local / rpc (local side by side, rpc alone) (median; each round)",
        "Kamailio CPU per call, events / bypass (bypass side by side, events alone) (median; each round)",
        "Kamailio CPU per call, local / events (local side by side, events alone) (median; each round)",
        "Kamailio CPU per call, again / bypass side by side (median; each round)"]
    assert [row["target"] for row in ratios.values()] == ["<= 1.10", "", "", "", "", ""]
    # the events baseline sends what the others send (its spool drained by its sender), the bypass nothing
    assert all(r["events"]["spool_drained"] and r["events"]["cpu"]["event_sender_s"] > 0 for r in figures["rounds"])
    assert all("each round" in what and row["text"].count(",") == 1 for what, row in ratios.items())   # 2 listed
    assert figures["timings"]["local"]["local"]["n"] > 0 and "rpc" not in figures["timings"]["local"]
    assert figures["timings"]["rpc"]["rpc"]["n"] > 0 and "local" not in figures["timings"]["rpc"]
    shared, private = figures["memory"]["shared"], figures["memory"]["private"]
    assert shared["workers_decided"] == shared["workers"] == 2 and private["workers_decided"] == 2
    assert all(w["file_mappings"] >= 1 and w["file_rss_kb"] > 0 for w in shared["per_worker"])
    assert all(w["file_mappings"] == 0 for w in private["per_worker"])

