"""The gRPC server through real sockets and a real SQLite file."""

from __future__ import annotations

import copy
import json
import sqlite3
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from engine._core import INBOUND_DTYPE, OUTBOUND_DTYPE
from server import codegen
from server.client import upload_messages

from .serving import EXAMPLE, ROOT, Server

DOC = json.loads(EXAMPLE.read_text())
TUESDAY_1030_LA = 1796149800  # 2026-12-01T10:30:00-08:00
SATURDAY_NOON_LA = 1796500800  # 2026-12-05T12:00:00-08:00


def push(admin, doc, expected=0, fmt="json"):
    return admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode(), format=fmt,
                                                            expected_version=expected), timeout=60)


def current_version(admin, tenant="acme"):
    return admin.GetSettings(admin_pb2.GetSettingsRequest(tenant=tenant)).version


def test_generated_code_is_fresh(tmp_path):
    """The committed .proto and the generated modules in callgate/v1 agree."""
    written = codegen.generate(tmp_path)
    assert written
    for path in written:
        built = (ROOT / "callgate" / "v1" / path.name).read_text()
        assert built == path.read_text(), f"{path.name} is stale: run `make` (python -m server.codegen)"


def test_health_and_reflection(server, stubs):
    health = health_pb2_grpc.HealthStub(server.channel())
    for service in ("", "callgate.v1.Decisions", "callgate.v1.Admin"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
        assert status == health_pb2.HealthCheckResponse.SERVING, service
    refl = reflection_pb2_grpc.ServerReflectionStub(server.channel())
    replies = list(refl.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
    names = {s.name for s in replies[0].list_services_response.service}
    assert {"callgate.v1.Decisions", "callgate.v1.Admin", "grpc.health.v1.Health"} <= names


def test_inbound_unary(stubs):
    decisions, admin = stubs
    version = current_version(admin)
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666",
                                                       called="+14155550199", at=TUESDAY_1030_LA))
    assert (d.verdict, d.reason, d.sip_status, d.version) == (decisions_pb2.REJECT, decisions_pb2.BLACKLISTED,
                                                              603, version)
    assert d.rule == ""  # proxies get no prose unless they ask
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666",
                                                       called="+14155550199", at=TUESDAY_1030_LA, explain=True))
    assert "blacklist" in d.rule
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="4155551234", called="+14155550199",
                                                       at=TUESDAY_1030_LA))
    assert d.verdict == decisions_pb2.ROUTE and d.group == "sales" and list(d.members) == ["u1", "u2"]
    assert d.chat_mode == "chat_per_call" and d.lead_trigger == "on_answer" and d.caller == ""
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="4155551234", called="+14155550199",
                                                       at=TUESDAY_1030_LA, explain=True))
    assert d.caller == "+14155551234" and d.called == "+14155550199"  # as read, when asked
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155551234", called="+14155550199",
                                                       at=SATURDAY_NOON_LA))
    assert (d.verdict, d.reason) == (decisions_pb2.VOICEMAIL, decisions_pb2.OFF_HOURS)


@pytest.mark.parametrize("request_, code, words", [
    (dict(tenant="nobody", caller="+14155550666", called="+14155550199"), grpc.StatusCode.NOT_FOUND, "no settings"),
    (dict(tenant="acme", caller="abc", called="+14155550199"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CALLER"),
    (dict(tenant="acme", caller="+14155550666", called="x"), grpc.StatusCode.INVALID_ARGUMENT, "INVALID_CALLED"),
    (dict(tenant="acme", caller="+14155550666", called="+14155550199", at=-5), grpc.StatusCode.INVALID_ARGUMENT,
     "INVALID_TIME"),
    (dict(tenant="acme", caller="1" * 10_000, called="+14155550199"), grpc.StatusCode.INVALID_ARGUMENT,
     "at most 256"),
])
def test_inbound_bad_input_is_a_clear_status(stubs, request_, code, words):
    decisions, _ = stubs
    with pytest.raises(grpc.RpcError) as err:
        decisions.Inbound(decisions_pb2.InboundRequest(**request_))
    assert err.value.code() == code
    assert words in err.value.details()


def test_push_cas_rollback_history(stubs):
    decisions, admin = stubs
    v = current_version(admin)
    doc = copy.deepcopy(DOC)
    doc["blacklist"] = []
    with pytest.raises(grpc.RpcError) as err:
        push(admin, doc, expected=v + 7)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert current_version(admin) == v
    reply = push(admin, doc, expected=v)
    assert reply.version == v + 1
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666", called="+14155550199",
                                                       at=TUESDAY_1030_LA))
    assert d.reason == decisions_pb2.OK and d.version == v + 1  # in force in the worker that took the push
    rolled = admin.Rollback(admin_pb2.RollbackRequest(tenant="acme", version=v))
    assert rolled.version == v + 2
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666", called="+14155550199",
                                                       at=TUESDAY_1030_LA))
    assert d.reason == decisions_pb2.BLACKLISTED and d.version == v + 2
    history = admin.ListVersions(admin_pb2.ListVersionsRequest(tenant="acme")).versions
    assert [h.version for h in history[:3]] == [v + 2, v + 1, v]
    assert history[0].kind == "rollback" and history[0].in_force and not history[1].in_force
    shown = admin.GetSettings(admin_pb2.GetSettingsRequest(tenant="acme", version=v + 1))
    assert json.loads(shown.document)["blacklist"] == []


def test_invalid_and_garbage_pushes_change_nothing(stubs):
    decisions, admin = stubs
    v = current_version(admin)
    doc = copy.deepcopy(DOC)
    doc["numbers"][0]["schedule"]["weekly"]["tue"] = [["25:00", "26:00"]]
    doc["default_caller_id"] = doc["main_number"]
    with pytest.raises(grpc.RpcError) as err:
        push(admin, doc)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "numbers[0].schedule.weekly.tue[0]: '25:00' is not a time" in err.value.details()
    assert "main_number" in err.value.details()
    rng = np.random.default_rng(7)
    for garbage, fmt in ((rng.bytes(10 * 1024 * 1024), "json"), (rng.bytes(10 * 1024 * 1024), "msgpack"),
                         (b"{" * 100_000, "json"), (b"", "json")):
        with pytest.raises(grpc.RpcError) as err:
            admin.PushSettings(admin_pb2.PushSettingsRequest(document=garbage, format=fmt), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "document" in err.value.details()
    assert current_version(admin) == v
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666", called="+14155550199",
                                                       at=TUESDAY_1030_LA))
    assert d.version == v


def test_push_in_pieces(stubs):
    """PushSettingsUpload: the document in pieces, options in the first message, same checks as a push."""
    decisions, admin = stubs
    v = current_version(admin)
    doc = copy.deepcopy(DOC)
    doc["blacklist"] = ["+14155550666", "+14155550667"]
    document = json.dumps(doc, indent=1).encode()
    reply = admin.PushSettingsUpload(upload_messages(document, "json", v, "in pieces", piece=97), timeout=60)
    assert (reply.tenant, reply.version) == ("acme", v + 1)
    shown = admin.GetSettings(admin_pb2.GetSettingsRequest(tenant="acme"))
    assert shown.document == document and shown.comment == "in pieces"
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550667", called="+14155550199",
                                                       at=TUESDAY_1030_LA))
    assert (d.reason, d.version) == (decisions_pb2.BLACKLISTED, v + 1)
    refused = [
        (upload_messages(document, "json", v, piece=1000), grpc.StatusCode.FAILED_PRECONDITION, "version"),
        (iter([]), grpc.StatusCode.INVALID_ARGUMENT, "no document"),
        (iter([admin_pb2.PushSettingsRequest(document=document[:50]),
               admin_pb2.PushSettingsRequest(document=document[50:], comment="late")]),
         grpc.StatusCode.INVALID_ARGUMENT, "first message only"),
        (upload_messages(document[:-1], "json", piece=1000), grpc.StatusCode.INVALID_ARGUMENT, "document"),
        (upload_messages(np.random.default_rng(3).bytes(10 << 20), "msgpack"), grpc.StatusCode.INVALID_ARGUMENT,
         "document"),
        (upload_messages(document, "yaml"), grpc.StatusCode.INVALID_ARGUMENT, "json or msgpack"),
    ]
    for messages, code, words in refused:
        with pytest.raises(grpc.RpcError) as err:
            admin.PushSettingsUpload(messages, timeout=60)
        assert err.value.code() == code and words in err.value.details(), err.value.details()
    assert current_version(admin) == v + 1


def test_upload_larger_than_the_limit_is_refused_while_it_arrives(tmp_path):
    srv = Server(tmp_path, "--max-message-mb", "1")
    try:
        with srv.channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                admin.PushSettingsUpload(upload_messages(b" " * (3 << 20)), timeout=60)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"at most {1 << 20}" in err.value.details()
            assert current_version(admin) == 1
    finally:
        assert srv.stop() == 0


def test_patch_blacklist(stubs):
    decisions, admin = stubs

    def reason(caller):
        return decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller=caller, called="+14155550199",
                                                              at=SATURDAY_NOON_LA)).reason

    assert reason("+14155559999") == decisions_pb2.OFF_HOURS
    reply = admin.PatchBlacklist(admin_pb2.PatchBlacklistRequest(tenant="acme", add=["+14155559999"]))
    assert reply.added == 1 and reply.removed == 0
    assert reason("+14155559999") == decisions_pb2.BLACKLISTED
    reply = admin.PatchBlacklist(admin_pb2.PatchBlacklistRequest(
        tenant="acme", list=admin_pb2.PatchBlacklistRequest.OFFHOURS_BLACKLIST, add=["+14155559998"]))
    assert reason("+14155559998") == decisions_pb2.OFF_HOURS_BLOCKED
    admin.PatchBlacklist(admin_pb2.PatchBlacklistRequest(tenant="acme", remove=["+14155559999"]))
    assert reason("+14155559999") == decisions_pb2.OFF_HOURS
    with pytest.raises(grpc.RpcError) as err:
        admin.PatchBlacklist(admin_pb2.PatchBlacklistRequest(tenant="acme", add=["not-a-number"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "add[0]" in err.value.details()


def test_decide_batch_matches_unary(stubs):
    decisions, _ = stubs
    callers = ["+14155550666", "+14155550777", "4155551234", "anonymous", "bad", "+14155551234"]
    rows = [(c, called, at) for c in callers for called in ("+14155550199", "+19995550000")
            for at in (TUESDAY_1030_LA, SATURDAY_NOON_LA)]
    w = 16

    def column(values):
        return b"".join(v.encode().ljust(w, b"\0") for v in values)

    reply = decisions.DecideBatch(decisions_pb2.BatchRequest(
        tenant="acme", kind=decisions_pb2.BatchRequest.INBOUND, count=len(rows), width=w,
        a=column([r[0] for r in rows]), b=column([r[1] for r in rows]),
        at=np.array([r[2] for r in rows], dtype="<i8").tobytes(), want_tables=True))
    out = np.frombuffer(reply.rows, dtype=INBOUND_DTYPE)
    assert reply.row_size == INBOUND_DTYPE.itemsize and len(out) == len(rows)
    for (caller, called, at), row in zip(rows, out, strict=True):
        try:
            d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller=caller, called=called, at=at))
        except grpc.RpcError as exc:
            assert row["verdict"] == 0 and decisions_pb2.Reason.Name(row["reason"]) in exc.details()
            continue
        assert (row["verdict"], row["reason"], row["sip"]) == (d.verdict, d.reason, d.sip_status)
        assert (reply.groups[row["group"]] if row["group"] >= 0 else "") == d.group
    reply = decisions.DecideBatch(decisions_pb2.BatchRequest(
        tenant="acme", kind=decisions_pb2.BatchRequest.OUTBOUND, count=2, width=w, a=column(["u3", "u1"]),
        b=column(["02071112222", "+14155557000"]), at=np.zeros(2, dtype="<i8").tobytes()))
    out = np.frombuffer(reply.rows, dtype=OUTBOUND_DTYPE)
    assert out["verdict"].tolist() == [decisions_pb2.DENY] * 2  # no balance yet: nothing is affordable
    assert out["reason"][0] == decisions_pb2.INSUFFICIENT_FUNDS


@pytest.mark.parametrize("fields, words", [
    (dict(count=0, width=16), "count"),
    (dict(count=2, width=16, a=b"x" * 31, b=b"x" * 32, at=b"\0" * 16), "column a"),
    (dict(count=1, width=999, a=b"x", b=b"x", at=b"\0" * 8), "width"),
    (dict(count=200_000, width=1), "count"),
])
def test_decide_batch_refuses_malformed_columns(stubs, fields, words):
    decisions, _ = stubs
    with pytest.raises(grpc.RpcError) as err:
        decisions.DecideBatch(decisions_pb2.BatchRequest(tenant="acme", kind=decisions_pb2.BatchRequest.INBOUND,
                                                         **fields))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and words in err.value.details()


def test_stream_pipelines_and_reports_errors_in_band(stubs):
    decisions, _ = stubs
    requests = [decisions_pb2.StreamRequest(id=i, inbound=decisions_pb2.InboundRequest(
        tenant="acme", caller=c, called="+14155550199", at=TUESDAY_1030_LA))
        for i, c in enumerate(["+14155550666", "garbage", "+14155551234"])]
    requests.append(decisions_pb2.StreamRequest(id=99))
    requests.append(decisions_pb2.StreamRequest(id=100, inbound=decisions_pb2.InboundRequest(tenant="zzz")))
    replies = {r.id: r for r in decisions.Stream(iter(requests), timeout=30)}
    assert replies[0].decision.reason == decisions_pb2.BLACKLISTED
    assert "INVALID_CALLER" in replies[1].error and replies[1].error_code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert replies[2].decision.verdict == decisions_pb2.ROUTE
    assert "empty" in replies[99].error
    assert replies[100].error_code == grpc.StatusCode.NOT_FOUND.value[0]


def test_ringing_call_is_picked_up_by_a_colleague_once(stubs):
    decisions, _ = stubs
    ev = decisions_pb2.CallEventRequest
    decisions.CallEvent(ev(tenant="acme", call_id="c-1", kind=ev.RINGING, user="u1", at=0,   # now
                           direction="inbound", caller="+14155551234", called="+14155550199"))
    d = decisions.Pickup(decisions_pb2.PickupRequest(tenant="acme", user="u3", dialed="*8"))
    assert (d.verdict, d.reason) == (decisions_pb2.NO_PICKUP, decisions_pb2.NO_RINGING_CALL)  # not in sales
    d = decisions.Pickup(decisions_pb2.PickupRequest(tenant="acme", user="u2", dialed="*8"))
    assert d.verdict == decisions_pb2.INTERCEPT and d.call_id == "c-1"
    d = decisions.Pickup(decisions_pb2.PickupRequest(tenant="acme", user="u2", dialed="*8"))
    assert d.verdict == decisions_pb2.NO_PICKUP  # already taken
    d = decisions.Pickup(decisions_pb2.PickupRequest(tenant="acme", user="u2", dialed="*9"))
    assert d.reason == decisions_pb2.NOT_PICKUP_CODE


def test_stats(stubs):
    _, admin = stubs
    reply = admin.Stats(admin_pb2.StatsRequest())
    acme = next(t for t in reply.tenants if t.tenant == "acme")
    assert acme.version == acme.loaded_version and acme.numbers == 3 and reply.decisions > 0
    with pytest.raises(grpc.RpcError) as err:
        admin.Stats(admin_pb2.StatsRequest(tenant="nobody"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_sigterm_lets_the_call_in_flight_finish(tmp_path):
    srv = Server(tmp_path / "data")
    admin = admin_pb2_grpc.AdminStub(srv.channel())
    big = copy.deepcopy(DOC)
    big["blacklist"] = [f"+1415{i:07d}" for i in range(300_000)]
    future = admin.PushSettings.future(admin_pb2.PushSettingsRequest(document=json.dumps(big).encode()), timeout=60)
    time.sleep(0.3)  # the push is compiling
    assert srv.stop() == 0
    assert future.result().version == 2  # answered, not cut off
    assert srv.events("stopped")
    with sqlite3.connect(tmp_path / "data" / "callgate.sqlite") as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_store_survives_restart(tmp_path):
    srv = Server(tmp_path / "data")
    admin = admin_pb2_grpc.AdminStub(srv.channel())
    admin.PatchBlacklist(admin_pb2.PatchBlacklistRequest(tenant="acme", add=["+14155551111"]))
    srv.stop()
    again = Server(tmp_path / "data")  # --seed again: skipped, the tenant has settings
    try:
        assert again.events("seed_skipped")
        decisions = decisions_pb2_grpc.DecisionsStub(again.channel())
        d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155551111",
                                                           called="+14155550199", at=TUESDAY_1030_LA))
        assert d.reason == decisions_pb2.BLACKLISTED and d.version == 2
    finally:
        again.stop()


@pytest.mark.parametrize("at", [-1, 5, 2**62])
def test_call_event_with_an_impossible_instant_is_invalid_argument(stubs, at):
    """Found by the wire fuzz: the store refused it with a bare ValueError (gRPC UNKNOWN)."""
    decisions, _ = stubs
    ev = decisions_pb2.CallEventRequest
    with pytest.raises(grpc.RpcError) as err:
        decisions.CallEvent(ev(tenant="acme", call_id="c-at", kind=ev.RINGING, user="u1", at=at))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "2000-01-01" in err.value.details()


def test_list_length_cap_at_the_boundary(tmp_path):
    doc = copy.deepcopy(DOC)
    doc["blacklist"] = [f"+1212555{i:04d}" for i in range(10)]
    srv = Server(tmp_path, "--max-list-entries", "10")
    try:
        with srv.channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            assert push(admin, doc).version == 2                             # exactly the cap: accepted
            with pytest.raises(grpc.RpcError) as err:                        # one more through a patch
                admin.PatchBlacklist(admin_pb2.PatchBlacklistRequest(tenant="acme", add=["+12125559999"]), timeout=60)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "11 entries; at most 10 per list" in err.value.details()
            doc["offhours_blacklist"] = [f"+1646555{i:04d}" for i in range(11)]
            with pytest.raises(grpc.RpcError) as err:                        # or through a push
                push(admin, doc)
            assert "at most 10 per list" in err.value.details()
            assert current_version(admin) == 2
    finally:
        assert srv.stop() == 0
