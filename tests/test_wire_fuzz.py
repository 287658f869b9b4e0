"""Every RPC through a real channel with random, huge and hostile values.

Only INVALID_ARGUMENT, NOT_FOUND or FAILED_PRECONDITION may come back as
errors, always with a message, and the server keeps serving afterwards.
"""

from __future__ import annotations

import sqlite3

import grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from callgate.v1 import admin_pb2, decisions_pb2
from engine.settings import E164

ALLOWED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
TUESDAY_1030_LA = 1796149800

# no lone surrogates: protobuf refuses to encode them on the client side, they never reach a server
chars = st.characters(codec="utf-8")
texts = st.one_of(
    st.text(chars, max_size=40),
    st.sampled_from(["", "acme", "+14155550199", "+14155550666", "anonymous", "u1", "*8", "\x00", "' OR 1=1 --",
                     "../../etc/passwd", "+" + "9" * 20, "١٢٣٤٥٦٧٨٩"]),
    st.builds(lambda c, n: c * n, chars, st.integers(1000, 200_000)),
)
tenants = st.one_of(st.just("acme"), texts)
not_e164 = texts.filter(lambda t: not E164.fullmatch(t))
int64 = st.integers(-(2**63), 2**63 - 1)
uint32 = st.integers(0, 2**32 - 1)
enums = st.integers(-5, 12)
blobs = st.one_of(st.binary(max_size=2000), st.builds(lambda n: b"\xff" * n, st.integers(0, 3_000_000)))


def call(fn, request) -> None:
    try:
        fn(request, timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() in ALLOWED, f"{exc.code()}: {exc.details()} for {str(request)[:300]}"
        assert exc.details(), f"{exc.code()} without a message"


@FUZZ
@given(data=st.data())
def test_decision_rpcs(stubs, data) -> None:
    decisions, _ = stubs
    ev = decisions_pb2.CallEventRequest
    call(decisions.Inbound, decisions_pb2.InboundRequest(tenant=data.draw(tenants), caller=data.draw(texts),
                                                         called=data.draw(texts), at=data.draw(int64)))
    call(decisions.Outbound, decisions_pb2.OutboundRequest(tenant=data.draw(tenants), user=data.draw(texts),
                                                           destination=data.draw(texts), at=data.draw(int64)))
    call(decisions.Pickup, decisions_pb2.PickupRequest(tenant=data.draw(tenants), user=data.draw(texts),
                                                       dialed=data.draw(texts)))
    call(decisions.CallEvent, ev(tenant=data.draw(tenants), call_id=data.draw(texts), kind=data.draw(enums),
                                 user=data.draw(texts), at=data.draw(int64), direction=data.draw(texts),
                                 caller=data.draw(texts), called=data.draw(texts), line=data.draw(texts)))
    call(decisions.DecideBatch, decisions_pb2.BatchRequest(
        tenant=data.draw(tenants), kind=data.draw(enums), count=data.draw(uint32), width=data.draw(uint32),
        a=data.draw(blobs), b=data.draw(blobs), at=data.draw(blobs), want_tables=data.draw(st.booleans())))


@FUZZ
@given(data=st.data())
def test_stream_with_hostile_messages(stubs, data) -> None:
    decisions, _ = stubs
    requests = []
    for i in range(data.draw(st.integers(0, 5))):
        which = data.draw(st.sampled_from(["inbound", "outbound", "pickup", "call_event", None]))
        req = decisions_pb2.StreamRequest(id=i)
        if which == "inbound":
            req.inbound.CopyFrom(decisions_pb2.InboundRequest(tenant=data.draw(tenants), caller=data.draw(texts),
                                                              called=data.draw(texts), at=data.draw(int64)))
        elif which == "outbound":
            req.outbound.CopyFrom(decisions_pb2.OutboundRequest(tenant=data.draw(tenants), user=data.draw(texts)))
        elif which == "pickup":
            req.pickup.CopyFrom(decisions_pb2.PickupRequest(tenant=data.draw(tenants), dialed=data.draw(texts)))
        elif which == "call_event":
            req.call_event.CopyFrom(decisions_pb2.CallEventRequest(tenant=data.draw(tenants), kind=data.draw(enums)))
        requests.append(req)
    replies = list(decisions.Stream(iter(requests), timeout=30))
    assert sorted(r.id for r in replies) == list(range(len(requests)))
    for reply in replies:
        if reply.WhichOneof("reply") == "error":
            assert reply.error and grpc.StatusCode.INVALID_ARGUMENT.value[0] <= reply.error_code


@FUZZ
@given(data=st.data())
def test_call_event_batches_with_hostile_events(stubs, data) -> None:
    """CallEvents (and CallEventsInOrder, the same call): the call itself refused only when empty or too long; each
    event answered in band, in order, with a status CallEvent may answer (or a reply); after a call's first event
    not answered, that call's later events ABORTED (not tried), and no other event."""
    decisions, _ = stubs
    ev = decisions_pb2.CallEventRequest
    same_call = data.draw(st.booleans())   # a call's events in order, or many calls' events together
    events = [ev(tenant=data.draw(tenants), call_id="fuzz-one" if same_call else data.draw(texts),
                 kind=data.draw(enums), user=data.draw(texts), at=data.draw(int64), direction=data.draw(texts),
                 caller=data.draw(texts), called=data.draw(texts), line=data.draw(texts), outcome=data.draw(texts))
              for _ in range(data.draw(st.integers(0, 6)))]
    method = decisions.CallEventsInOrder if data.draw(st.booleans()) else decisions.CallEvents
    try:
        reply = method(decisions_pb2.CallEventBatch(events=events), timeout=30)
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT and not events, (exc.code(), exc.details())
        return
    assert len(reply.results) == len(events)
    stopped: dict[tuple[str, str], int] = {}   # a call's first event not answered: its index
    for i, (event, result) in enumerate(zip(events, reply.results, strict=True)):
        call = (event.tenant, event.call_id)
        if call in stopped:
            assert result.error_code == grpc.StatusCode.ABORTED.value[0], result
            assert f"event {stopped[call]} of the batch" in result.error, result
        elif result.WhichOneof("result") == "error":
            code = next(c for c in grpc.StatusCode if c.value[0] == result.error_code)
            assert result.error and code in ALLOWED, result
            stopped[call] = i
        else:
            assert result.WhichOneof("result") == "reply" and result.error_code == 0


@FUZZ
@given(data=st.data())
def test_admin_rpcs(stubs, data) -> None:
    _, admin = stubs
    call(admin.PushSettings, admin_pb2.PushSettingsRequest(
        document=data.draw(st.one_of(blobs, st.just(b'{"tenant": "acme"}'), st.just(b"[]"))),
        format=data.draw(st.sampled_from(["", "json", "msgpack", "yaml", "\x00"])),
        expected_version=data.draw(int64), comment=data.draw(texts)))
    pieces = [admin_pb2.PushSettingsRequest(document=data.draw(blobs), format=data.draw(texts),
                                            expected_version=data.draw(int64), comment=data.draw(texts))
              for _ in range(data.draw(st.integers(0, 3)))]
    call(admin.PushSettingsUpload, iter(pieces))
    call(admin.GetSettings, admin_pb2.GetSettingsRequest(tenant=data.draw(tenants), version=data.draw(int64)))
    call(admin.ListVersions, admin_pb2.ListVersionsRequest(tenant=data.draw(tenants), limit=data.draw(uint32)))
    # a rollback of acme to a real version would be a legitimate change: keep the fuzz to impossible ones
    call(admin.Rollback, admin_pb2.RollbackRequest(tenant=data.draw(tenants),
                                                   version=data.draw(st.one_of(st.integers(-(2**63), 0),
                                                                               st.integers(10**6, 2**63 - 1))),
                                                   expected_version=data.draw(int64)))
    # (numbers that are E.164 would be a legitimate patch of acme: the fuzz keeps to ones that are not)
    call(admin.PatchBlacklist, admin_pb2.PatchBlacklistRequest(
        tenant=data.draw(tenants), list=data.draw(enums), add=data.draw(st.lists(not_e164, max_size=3)),
        remove=data.draw(st.lists(not_e164, max_size=3)), expected_version=data.draw(int64)))
    call(admin.Stats, admin_pb2.StatsRequest(tenant=data.draw(texts)))


@FUZZ
@given(data=st.data())
def test_document_billing_and_call_rpcs(stubs, data) -> None:
    _, admin = stubs
    files = [admin_pb2.DocumentUpload(name=data.draw(texts), content=data.draw(blobs))
             for _ in range(data.draw(st.integers(0, 3)))]
    call(admin.UploadDocuments, admin_pb2.UploadDocumentsRequest(
        tenant=data.draw(tenants), number=data.draw(st.one_of(st.just("+14155550100"), texts)), files=files))
    call(admin.ListDocuments, admin_pb2.ListDocumentsRequest(tenant=data.draw(texts), number=data.draw(texts),
                                                             status=data.draw(texts), limit=data.draw(uint32)))
    call(admin.ReviewDocuments, admin_pb2.ReviewDocumentsRequest(
        set_id=data.draw(st.integers(0, 2**64 - 1)), approve=data.draw(st.booleans()), reason=data.draw(texts),
        reviewer=data.draw(texts)))
    call(admin.GetBalance, admin_pb2.BalanceRequest(tenant=data.draw(tenants)))
    call(admin.ListLedger, admin_pb2.LedgerRequest(tenant=data.draw(tenants), limit=data.draw(uint32),
                                                   before_id=data.draw(st.integers(0, 2**64 - 1))))
    # without a reference no credit is ever made: the fuzz stays away from legitimate changes
    call(admin.Credit, admin_pb2.CreditRequest(tenant=data.draw(tenants), reference="",
                                               amount=data.draw(st.one_of(texts, st.just("1e999"), st.just("-1")))))
    call(admin.Card, admin_pb2.CardRequest(tenant=data.draw(tenants), number=data.draw(not_e164.filter(bool)),
                                           exp_month=data.draw(uint32), exp_year=data.draw(uint32)))
    call(admin.ListCalls, admin_pb2.ListCallsRequest(tenant=data.draw(tenants), state=data.draw(texts),
                                                     limit=data.draw(uint32)))
    call(admin.CreateToken, admin_pb2.CreateTokenRequest(
        role=data.draw(texts.filter(lambda r: r not in ("proxy", "tenant-admin", "operator", "owner"))),
        tenants=data.draw(st.lists(texts, max_size=3)), expires_in_seconds=data.draw(int64), comment=data.draw(texts)))
    call(admin.RevokeToken, admin_pb2.RevokeTokenRequest(id=data.draw(texts)))
    call(admin.ListTokens, admin_pb2.ListTokensRequest())


@FUZZ
@given(data=st.data())
def test_number_and_audit_rpcs(stubs, data) -> None:
    _, admin = stubs
    call(admin.NumberOwner, admin_pb2.NumberOwnerRequest(number=data.draw(texts)))
    # acme is the only tenant: a move to anywhere is refused (no such tenant, the same tenant, a bad id)
    call(admin.TransferNumber, admin_pb2.TransferNumberRequest(
        number=data.draw(st.one_of(st.just("+14155550199"), texts)), from_tenant=data.draw(tenants),
        to_tenant=data.draw(texts), line=data.draw(texts), route_to=data.draw(texts), comment=data.draw(texts)))
    call(admin.ExportFailover, admin_pb2.ExportFailoverRequest())
    # always a dry run: whatever the drawn ids, nothing is removed (the check at the end counts on acme)
    call(admin.RemoveTenant, admin_pb2.RemoveTenantRequest(
        tenant=data.draw(st.one_of(tenants, texts)), confirm=data.draw(st.one_of(tenants, texts)),
        force=data.draw(st.booleans()), dry_run=True))
    call(admin.ListAudit, admin_pb2.ListAuditRequest(
        tenant=data.draw(texts), since=data.draw(st.floats()), action=data.draw(texts), limit=data.draw(uint32),
        before_id=data.draw(st.integers(0, 2**64 - 1))))


def test_still_serving_and_nothing_changed(server, stubs) -> None:
    """Runs after the fuzz tests (file order): the seeded version is intact and decides as before."""
    decisions, admin = stubs
    assert admin.GetSettings(admin_pb2.GetSettingsRequest(tenant="acme")).version == 1
    d = decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666",
                                                       called="+14155550199", at=TUESDAY_1030_LA))
    assert d.reason == decisions_pb2.BLACKLISTED
    args = server.proc.args
    assert isinstance(args, list)
    db = sqlite3.connect(f"{args[args.index('--data-dir') + 1]}/callgate.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM versions WHERE tenant='acme'").fetchone()[0] == 1
    for table in ("document_sets", "cards", "topups", "tokens"):
        assert db.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0, table
    assert db.execute("SELECT count(*) FROM ledger WHERE kind != 'call'").fetchone()[0] == 0
    db.close()
