"""The call registry as the Kamailio operator found it (server side), through a real server: pickup
offers only inbound calls; the registry keeps the numbers as the decision read them; leads name people; every
end has its outcome."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from callgate.v1 import admin_pb2, decisions_pb2

from .test_lifecycle import DOC, EV, Tenant, no_rentals


@pytest.fixture
def acme(tmp_path: Path):
    t = Tenant(tmp_path, no_rentals(DOC))
    t.credit("10.00", "opening")
    yield t
    assert t.close() == 0


def listed(t: Tenant, state: str) -> dict[str, admin_pb2.CallInfo]:
    calls = t.admin.ListCalls(admin_pb2.ListCallsRequest(tenant="acme", state=state), timeout=10).calls
    return {c.call_id: c for c in calls}


def test_pickup_never_takes_an_outbound_call_or_a_forwarded_leg(acme: Tenant) -> None:
    now = int(time.time())
    # u1 (queue group sales, with u2) calls out; a forwarded leg rings for the sales number: neither is pickable
    acme.event(EV.RINGING, "out", "u3", now - 20, direction="outbound", called="+15551230000")
    acme.event(EV.RINGING, "fwd", "u1", now - 15, direction="forwarded", caller="+12125550100",
               called="+14155550123", line="rent-1")
    pick = decisions_pb2.PickupRequest(tenant="acme", user="u2", dialed="*8")
    assert acme.decisions.Pickup(pick, timeout=10).reason == decisions_pb2.NO_RINGING_CALL
    acme.event(EV.RINGING, "in", "u1", now - 10, caller="+12125550100", called="+14155550199")
    d = acme.decisions.Pickup(pick, timeout=10)
    assert (d.verdict, d.call_id) == (decisions_pb2.INTERCEPT, "in")


def test_the_registry_keeps_the_numbers_as_the_decision_read_them(acme: Tenant) -> None:
    now = int(time.time())
    # a national caller on a US number, bare digits with the country code, an outbound national destination
    acme.event(EV.RINGING, "n1", "u1", now - 30, caller="2125550100", called="14155550199")
    acme.event(EV.RINGING, "n2", "u1", now - 30, caller="12125550100", called="14155550199")
    acme.event(EV.RINGING, "n3", "u3", now - 30, direction="outbound", caller="u3", called="02079460000")
    acme.event(EV.RINGING, "n4", "u1", now - 30, caller="anonymous", called="+14155550199")
    ringing = listed(acme, "ringing")
    assert (ringing["n1"].caller, ringing["n1"].called) == ("+12125550100", "+14155550199")
    assert (ringing["n1"].caller_raw, ringing["n1"].called_raw) == ("2125550100", "14155550199")
    assert (ringing["n2"].caller, ringing["n2"].called) == ("+12125550100", "+14155550199")
    assert (ringing["n3"].caller, ringing["n3"].called) == ("+442071234567", "+442079460000")   # u3's caller ID
    assert (ringing["n4"].caller, ringing["n4"].caller_raw) == ("", "anonymous")                # withheld


def test_leads_name_people_never_a_voicemail_box_or_a_forward_target(acme: Tenant) -> None:
    now = int(time.time())
    acme.event(EV.RINGING, "vm", "u1", now - 30, caller="+12125550100", called="+14155550199")
    answered = acme.event(EV.ANSWERED, "vm", "voicemail", now - 20)
    assert (answered.create_lead, answered.lead_responsible, answered.lead_unassigned) == (True, "", True)
    acme.event(EV.RINGING, "p", "u1", now - 30, caller="+12125550101", called="+14155550199")
    person = acme.event(EV.ANSWERED, "p", "u2", now - 20)                   # u2: a member of sales, no user entry
    assert (person.create_lead, person.lead_responsible, person.lead_unassigned) == (True, "u2", False)
    with acme.db() as conn:
        rows = dict(conn.execute("SELECT call_id, unassigned FROM leads WHERE tenant = 'acme'").fetchall())
    assert rows == {"vm": 1, "p": 0}


def test_every_end_has_its_outcome(acme: Tenant) -> None:
    now = int(time.time())
    for call_id, outcome in (("busy", "busy"), ("gone", "cancelled"), ("late", ""), ("bad", "failed")):
        acme.event(EV.RINGING, call_id, "u1", now - 30, caller="+12125550100", called="+14155550199")
        reply = acme.event(EV.ENDED, call_id, at=now - 20, outcome=outcome)
        assert reply.outcome == (outcome or "no_answer")
    acme.event(EV.RINGING, "talk", "u1", now - 30, caller="+12125550100", called="+14155550199")
    acme.event(EV.ANSWERED, "talk", "u1", now - 25)
    assert acme.event(EV.ENDED, "talk", at=now - 5, outcome="busy").outcome == "answered"   # it was answered
    ended = listed(acme, "ended")
    assert {c: ended[c].outcome for c in ended} == {"busy": "busy", "gone": "cancelled", "late": "no_answer",
                                                   "bad": "failed", "talk": "answered"}
    with pytest.raises(grpc.RpcError) as err:
        acme.event(EV.ENDED, "x", at=now, outcome="hung up")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outcome" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        acme.event(EV.RINGING, "y", "u1", now, outcome="busy")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
