"""Who may do what: every RPC x role x own/other tenant through a real server with --auth tokens."""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from PIL import Image

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from server.client import upload_messages, with_token
from server.rpc import auth
from server.rules.tokens import new_token, token_id
from server.store.sqlite import SQLiteStore

from .serving import Server, example_doc, own_number, seed_tokens

ROLES = ("proxy", "tenant-admin", "operator", "owner")
BLOCK = {"acme": 0, "beta": 601}            # each tenant's own numbers (tests.serving.own_number)
SPARE = {"acme": "+14155550150", "beta": "+14156010150"}   # a number each holds only to move it around
counter = itertools.count()


def png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (40, 30), "white").save(out, "PNG")
    return out.getvalue()


def doc_for(tenant: str, spare: bool = True) -> bytes:
    d = example_doc(tenant, BLOCK[tenant])
    d["blacklist"] = [*d["blacklist"], f"+1415555{next(counter) % 10000:04d}"]
    if spare:
        d["numbers"].append({"number": SPARE[tenant], "line": "rent-1", "country": "US", "route_to": "sales"})
    return json.dumps(d).encode()


def number(tenant: str) -> str:
    return own_number("+14155550100", BLOCK[tenant])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("auth") / "data"
    data.mkdir()
    began = time.time()
    store = SQLiteStore(data / "callgate.sqlite")
    tokens: dict[str, str] = {}

    def token(name: str, role: str, tenants: list[str], expires: int = 0) -> None:
        ident, secret, token_hash = new_token()
        store.add_token(ident, token_hash, role, tenants, expires, name)
        tokens[name] = secret

    for name, role, expires in (("proxy", "proxy", 0), ("operator", "operator", 0), ("owner", "owner", 0),
                                ("revoked", "owner", 0), ("expired", "owner", int(began) + 4)):
        token(name, role, [], expires)
    store.revoke_token(token_id(tokens["revoked"]) or "")
    srv = Server(data, "--auth", "tokens")
    try:
        owner = srv.channel()
        admin = admin_pb2_grpc.AdminStub(with_token(owner, tokens["owner"]))
        admin.PushSettings(admin_pb2.PushSettingsRequest(document=doc_for("beta")), timeout=60)
        base = {"beta": 1, "acme": admin.PushSettings(admin_pb2.PushSettingsRequest(document=doc_for("acme")),
                                                      timeout=60).version}
        token("tenant-admin", "tenant-admin", ["acme"])     # a tenant-admin token names a tenant that exists
        store.close()
        # a set is reviewed once: one pending set for each review the matrix makes (the first one's id in "sets")
        pending: dict[str, list[int]] = {}
        for t in ("acme", "beta"):
            pending[t] = [admin.UploadDocuments(admin_pb2.UploadDocumentsRequest(
                tenant=t, number=number(t), files=[admin_pb2.DocumentUpload(name="id.png", content=png())]),
                timeout=30).id for _ in range(4)]
        sets = {t: ids[0] for t, ids in pending.items()}
        time.sleep(max(0.0, began + 5 - time.time()))  # the expired token's time has come
        yield {"server": srv, "tokens": tokens, "sets": sets, "pending": pending, "db": data / "callgate.sqlite",
               "base": base,
               "admin": admin}
    finally:
        srv.stop()



def calls(world: dict[str, Any], channel: grpc.Channel, tenant: str) -> dict[str, Callable[[], Any]]:
    """One valid call of every RPC for `tenant` (each makes a change or reads, when allowed)."""
    d = decisions_pb2_grpc.DecisionsStub(channel)
    a = admin_pb2_grpc.AdminStub(channel)
    n = next(counter)

    def review() -> Any:
        """Approve the tenant's next pending set (a set is reviewed once)."""
        pending = world["pending"][tenant]
        reply = a.ReviewDocuments(admin_pb2.ReviewDocumentsRequest(set_id=pending[0], approve=True), timeout=10)
        pending.pop(0)
        return reply

    rows = 1
    called = own_number("+14155550199", BLOCK[tenant])
    other = "beta" if tenant == "acme" else "acme"
    batch = decisions_pb2.BatchRequest(tenant=tenant, kind=decisions_pb2.BatchRequest.INBOUND, count=rows, width=16,
                                       a=b"+12125550000".ljust(16, b"\0"), b=called.encode().ljust(16, b"\0"),
                                       at=np.zeros(rows, dtype="<i8").tobytes())

    def stream() -> Any:
        replies = list(d.Stream(iter([decisions_pb2.StreamRequest(id=1, inbound=decisions_pb2.InboundRequest(
            tenant=tenant, caller="+12125550000", called=called))]), timeout=10))
        assert len(replies) == 1
        return replies

    def watch() -> Any:
        """A replica's stream: read until the server says it is in step, then leave."""
        call = d.WatchSnapshots(iter([decisions_pb2.WatchRequest(replica=f"auth-{n}", tenants=[tenant])]),
                                timeout=10)
        pieces = []
        for piece in call:
            pieces.append(piece)
            if piece.synced:
                call.cancel()
                break
        assert pieces[-1].synced
        return pieces

    def transfer() -> Any:
        """The spare number to the other tenant; when that worked, back again with the owner's token."""
        reply = a.TransferNumber(admin_pb2.TransferNumberRequest(number=SPARE[tenant], from_tenant=tenant,
                                                                 to_tenant=other), timeout=60)
        world["admin"].TransferNumber(admin_pb2.TransferNumberRequest(number=SPARE[tenant], from_tenant=other,
                                                                      to_tenant=tenant), timeout=60)
        return reply

    return {
        "Inbound": lambda: d.Inbound(decisions_pb2.InboundRequest(tenant=tenant, caller="+12125550000",
                                                                  called=called), timeout=10),
        "Outbound": lambda: d.Outbound(decisions_pb2.OutboundRequest(tenant=tenant, user="u3",
                                                                     destination="+15551230000"), timeout=10),
        "Pickup": lambda: d.Pickup(decisions_pb2.PickupRequest(tenant=tenant, user="u1", dialed="*8"), timeout=10),
        "CallEvent": lambda: d.CallEvent(decisions_pb2.CallEventRequest(
            tenant=tenant, call_id=f"auth-{n}", kind=decisions_pb2.CallEventRequest.RINGING, user="u1"), timeout=10),
        "CallEvents": lambda: d.CallEvents(decisions_pb2.CallEventBatch(events=[decisions_pb2.CallEventRequest(
            tenant=tenant, call_id=f"auth-batch-{n}", kind=decisions_pb2.CallEventRequest.RINGING, user="u1")]),
            timeout=10),
        "CallEventsInOrder": lambda: d.CallEventsInOrder(decisions_pb2.CallEventBatch(
            events=[decisions_pb2.CallEventRequest(tenant=tenant, call_id=f"auth-order-{n}",
                                                   kind=decisions_pb2.CallEventRequest.RINGING, user="u1")]),
            timeout=10),
        "DecideBatch": lambda: d.DecideBatch(batch, timeout=10),
        "Stream": stream,
        "WatchSnapshots": watch,
        "PushSettings": lambda: a.PushSettings(admin_pb2.PushSettingsRequest(document=doc_for(tenant)), timeout=60),
        "PushSettingsUpload": lambda: a.PushSettingsUpload(upload_messages(doc_for(tenant)), timeout=60),
        "GetSettings": lambda: a.GetSettings(admin_pb2.GetSettingsRequest(tenant=tenant), timeout=10),
        "ListVersions": lambda: a.ListVersions(admin_pb2.ListVersionsRequest(tenant=tenant), timeout=10),
        "Rollback": lambda: a.Rollback(admin_pb2.RollbackRequest(tenant=tenant, version=world["base"][tenant]),
                                       timeout=60),
        "PatchBlacklist": lambda: a.PatchBlacklist(admin_pb2.PatchBlacklistRequest(
            tenant=tenant, add=[f"+1212555{n % 10000:04d}"]), timeout=60),
        "Stats": lambda: a.Stats(admin_pb2.StatsRequest(tenant=tenant), timeout=10),
        "UploadDocuments": lambda: a.UploadDocuments(admin_pb2.UploadDocumentsRequest(
            tenant=tenant, number=number(tenant), files=[admin_pb2.DocumentUpload(name="p.png", content=png())]),
            timeout=30),
        "ListDocuments": lambda: a.ListDocuments(admin_pb2.ListDocumentsRequest(tenant=tenant), timeout=10),
        "ReviewDocuments": review,
        "GetBalance": lambda: a.GetBalance(admin_pb2.BalanceRequest(tenant=tenant), timeout=10),
        "ListLedger": lambda: a.ListLedger(admin_pb2.LedgerRequest(tenant=tenant), timeout=10),
        "Credit": lambda: a.Credit(admin_pb2.CreditRequest(tenant=tenant, amount="1.00", reference=f"auth-{n}"),
                                   timeout=10),
        "Card": lambda: a.Card(admin_pb2.CardRequest(tenant=tenant), timeout=10),
        "ListCalls": lambda: a.ListCalls(admin_pb2.ListCallsRequest(tenant=tenant), timeout=10),
        "CreateToken": lambda: a.CreateToken(admin_pb2.CreateTokenRequest(role="proxy", comment=f"m{n}"),
                                             timeout=10),
        "ListTokens": lambda: a.ListTokens(admin_pb2.ListTokensRequest(), timeout=10),
        "RevokeToken": lambda: a.RevokeToken(admin_pb2.RevokeTokenRequest(
            id=token_id(world["tokens"]["revoked"]) or ""), timeout=10),
        "NumberOwner": lambda: a.NumberOwner(admin_pb2.NumberOwnerRequest(number=number(tenant)), timeout=10),
        "TransferNumber": transfer,
        "ExportFailover": lambda: a.ExportFailover(admin_pb2.ExportFailoverRequest(), timeout=10),
        "ListAudit": lambda: a.ListAudit(admin_pb2.ListAuditRequest(tenant=tenant), timeout=10),
        "ListReplicas": lambda: a.ListReplicas(admin_pb2.ListReplicasRequest(tenant=tenant), timeout=10),
        # a dry run: every check an owner's removal makes, nothing removed (the real one: test_tenant_remove.py)
        "RemoveTenant": lambda: a.RemoveTenant(admin_pb2.RemoveTenantRequest(
            tenant=tenant, confirm=tenant, force=True, dry_run=True), timeout=10),
    }


def fingerprint(db: Path) -> str:
    """Every stored row but the audit log's."""
    digest = hashlib.sha256()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        for table in tables:
            if table in ("audit", "sqlite_sequence"):
                continue
            for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                digest.update(repr((table, row)).encode())
    finally:
        conn.close()
    return digest.hexdigest()


def allowed(role: str, method: str, own: bool) -> bool:
    """The expected cell for a tenant that exists (operators push only to create a tenant: refused here)."""
    roles = next(v for k, v in auth.PERMISSIONS.items() if k.endswith("/" + method))
    if role == "operator" and method in ("PushSettings", "PushSettingsUpload"):
        return False
    return role in roles and (role != "tenant-admin" or own)


def test_a_batch_of_any_tenants_events_is_for_the_proxys_and_the_operators_roles_only() -> None:
    """A batch names no one tenant to hold a tenant-admin to: the matrix above takes its roles from the table,
    so the table itself is held here."""
    for method in ("CallEvents", "CallEventsInOrder", "Stream", "WatchSnapshots"):
        assert auth.PERMISSIONS["/callgate.v1.Decisions/" + method] == {"proxy", "operator", "owner"}, method


def test_every_rpc_is_in_the_matrix(world) -> None:
    methods = set(calls(world, world["server"].channel(), "acme"))
    served = {m.name for m in admin_pb2.DESCRIPTOR.services_by_name["Admin"].methods} | \
             {m.name for m in decisions_pb2.DESCRIPTOR.services_by_name["Decisions"].methods}
    assert methods == served == {k.rsplit("/", 1)[1] for k in auth.PERMISSIONS}


def test_every_rpc_role_and_tenant(world) -> None:
    """Exactly the allowed cells succeed; the others fail with the right status and change nothing."""
    base = world["server"].channel()
    failures = []
    for role in ROLES:
        channel = with_token(base, world["tokens"][role])
        for tenant in ("acme", "beta"):                      # the tenant-admin's own tenant is acme
            for method, call in calls(world, channel, tenant).items():
                want = allowed(role, method, tenant == "acme")
                before = None if want else fingerprint(world["db"])
                try:
                    call()
                    got = "OK"
                except grpc.RpcError as exc:
                    got = exc.code().name
                    if not want and "beta" in exc.details() and tenant == "beta" and role == "tenant-admin":
                        assert "may not act on tenant 'beta'" in exc.details()
                expected = "OK" if want else "PERMISSION_DENIED"
                if got != expected:
                    failures.append(f"{role} {method} {tenant}: {got}, expected {expected}")
                elif not want and fingerprint(world["db"]) != before:
                    failures.append(f"{role} {method} {tenant}: refused but the store changed")
    assert not failures, "\n".join(failures)


def test_tenant_creation_by_role(world) -> None:
    """Creating a tenant (its first version) is an operator's or an owner's act; so is naming it in a token."""
    base = world["server"].channel()
    for block, role in enumerate(ROLES, start=700):
        tenant = f"new-{role}"
        d = example_doc(tenant, block)
        for entry in d["numbers"]:       # no renewal may write to the store after the test (the others fingerprint it)
            entry.pop("rental", None)
        before = fingerprint(world["db"])
        stub = admin_pb2_grpc.AdminStub(with_token(base, world["tokens"][role]))
        try:
            got = stub.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(d).encode()), timeout=60)
            assert (got.tenant, got.version) == (tenant, 1)
            result = "OK"
        except grpc.RpcError as exc:
            result = exc.code().name
            assert fingerprint(world["db"]) == before, role
        assert result == ("OK" if role in ("operator", "owner") else "PERMISSION_DENIED"), (role, result)
    owner = admin_pb2_grpc.AdminStub(with_token(base, world["tokens"]["owner"]))
    with pytest.raises(grpc.RpcError) as err:
        owner.CreateToken(admin_pb2.CreateTokenRequest(role="tenant-admin", tenants=["new-proxy"]), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "does not exist" in err.value.details()
    made = owner.CreateToken(admin_pb2.CreateTokenRequest(role="tenant-admin", tenants=["new-operator"]), timeout=10)
    assert made.info.tenants == ["new-operator"]


def test_without_a_valid_token_every_rpc_is_unauthenticated(world) -> None:
    base = world["server"].channel()
    before = fingerprint(world["db"])
    for name in (None, "revoked", "expired", "malformed"):
        if name is None:
            channel = base
        elif name == "malformed":
            channel = with_token(base, "cg_zz_" + "x" * 10)
        else:
            channel = with_token(base, world["tokens"][name])
        for method, call in calls(world, channel, "acme").items():
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED, (name, method, err.value.details())
            assert err.value.details()
    assert fingerprint(world["db"]) == before
    # health checking and reflection stay open
    status = health_pb2_grpc.HealthStub(base).Check(health_pb2.HealthCheckRequest(), timeout=10).status
    assert status == health_pb2.HealthCheckResponse.SERVING


def test_other_tenants_are_not_revealed(world) -> None:
    channel = with_token(world["server"].channel(), world["tokens"]["tenant-admin"])
    a = admin_pb2_grpc.AdminStub(channel)
    texts = []
    for tenant in ("beta", "no-such-tenant"):
        with pytest.raises(grpc.RpcError) as err:
            a.GetSettings(admin_pb2.GetSettingsRequest(tenant=tenant), timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        texts.append(err.value.details().replace(tenant, "T"))
    assert texts[0] == texts[1]                     # an existing and a missing tenant read the same
    with pytest.raises(grpc.RpcError) as err:       # every tenant at once is not a tenant-admin's
        a.Stats(admin_pb2.StatsRequest(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_admin_calls_are_audited_refusals_included(world) -> None:
    conn = sqlite3.connect(f"file:{world['db']}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT token_id, role, tenant, action, version_before, version_after, result "
                            "FROM audit").fetchall()
    finally:
        conn.close()
    actions = {(r[1], r[3], r[6]) for r in rows}
    assert ("tenant-admin", "PushSettings", "OK") in actions
    assert ("tenant-admin", "PushSettings", "PERMISSION_DENIED") in actions   # beta's document
    assert ("proxy", "GetSettings", "PERMISSION_DENIED") in actions
    assert ("", "GetSettings", "UNAUTHENTICATED") in actions
    pushes = [r for r in rows if r[3] == "PushSettings" and r[6] == "OK" and r[1] == "owner"]
    assert pushes and all(r[5] == r[4] + 1 for r in pushes)                  # versions before and after
    # every refusal keeps its real message, never the transport's "Locally aborted."
    refused = conn_rows(world["db"], "SELECT result, detail, object, tenant, action FROM audit WHERE result != 'OK'")
    assert refused and all(detail and "Locally aborted" not in detail for _, detail, _, _, _ in refused)
    assert ("PERMISSION_DENIED", "token " + (token_id(world["tokens"]["tenant-admin"]) or "") +
            " (tenant-admin) may not act on tenant 'beta'") in {(r[0], r[1]) for r in refused}
    # and names its object: the document set of a review, the number of an ownership query
    objects = {(r[4], r[2]) for r in conn_rows(world["db"], "SELECT result, detail, object, tenant, action FROM audit")}
    assert ("ReviewDocuments", f"set {world['sets']['acme']}, number {number('acme')}") in objects
    assert ("NumberOwner", f"number {number('beta')}") in objects
    assert ("TransferNumber", f"number {SPARE['acme']}") in objects


def conn_rows(db: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_tokens_and_audit_commands(tmp_path: Path, capsys) -> None:
    from server.cli.main import main

    data = tmp_path / "data"
    SQLiteStore(data / "callgate.sqlite").close()
    assert main(["tokens", "create", "--role", "tenant-admin", "--data-dir", str(data)]) == 2
    assert "needs the tenants" in capsys.readouterr().err
    assert main(["tokens", "create", "--role", "owner", "--expires-in", "soon", "--data-dir", str(data)]) == 2
    assert "not a duration" in capsys.readouterr().err
    assert main(["tokens", "create", "--role", "owner", "--expires-in", "30d", "--comment", "ci",
                 "--data-dir", str(data)]) == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert token.startswith("cg_") and "shown once" in out.err
    srv = Server(data, "--auth", "tokens")
    try:
        assert main(["--server", srv.address, "stats"]) == 2
        assert "UNAUTHENTICATED" in capsys.readouterr().err
        assert main(["--server", srv.address, "--token", token, "stats"]) == 0
        capsys.readouterr()
        ident = token_id(token)
        assert main(["tokens", "list", "--data-dir", str(data)]) == 0
        listed = capsys.readouterr().out
        assert ident in listed and "owner" in listed and token not in listed
        assert main(["tokens", "revoke", ident or "", "--data-dir", str(data)]) == 0
        capsys.readouterr()
        time.sleep(2.2)                                   # the servers' token cache
        assert main(["--server", srv.address, "--token", token, "stats"]) == 2
        assert "revoked" in capsys.readouterr().err
        assert main(["audit", "--since", "1h", "--data-dir", str(data)]) == 0
        assert "Stats" in capsys.readouterr().out
        assert main(["tokens", "create", "--role", "owner", "--data-dir", str(data)]) == 0
        owner = capsys.readouterr().out.strip()
        assert main(["--server", srv.address, "--token", owner, "tokens", "create", "--role", "tenant-admin",
                     "--tenant", "acme"]) == 0                                   # over gRPC, as an owner
        admin_token = capsys.readouterr().out.strip()
        assert main(["--server", srv.address, "--token", owner, "tokens", "list"]) == 0
        assert "tenant-admin" in capsys.readouterr().out
        assert main(["--server", srv.address, "--token", admin_token, "tokens", "list"]) == 2
        assert "PERMISSION_DENIED" in capsys.readouterr().err                     # tokens are the owner's
    finally:
        srv.stop()


def test_admin_calls_per_minute_per_token(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    store = SQLiteStore(data / "callgate.sqlite")
    tokens = []
    for _ in range(2):
        ident, token, token_hash = new_token()
        store.add_token(ident, token_hash, "operator", [], 0, "limit test")
        tokens.append(token)
    store.close()
    srv = Server(data, "--auth", "tokens", "--admin-calls-per-minute", "5")
    try:
        first = admin_pb2_grpc.AdminStub(with_token(srv.channel(), tokens[0]))
        for _ in range(5):                                   # the limit itself is allowed
            first.Stats(admin_pb2.StatsRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as err:            # one more is not
            first.Stats(admin_pb2.StatsRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "try again in" in err.value.details()
        second = admin_pb2_grpc.AdminStub(with_token(srv.channel(), tokens[1]))
        second.Stats(admin_pb2.StatsRequest(), timeout=10)   # per token
        decisions = decisions_pb2_grpc.DecisionsStub(with_token(srv.channel(), tokens[0]))
        decisions.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+12125550000",
                                                       called="+14155550199"), timeout=10)  # decisions: no limit
    finally:
        srv.stop()


def test_rate_limit_window() -> None:
    limit = auth.RateLimit(2)
    assert limit.check("t", 0.0) == 0 and limit.check("t", 1.0) == 0
    assert limit.check("t", 2.0) == pytest.approx(58.0)
    assert limit.check("t", 60.5) == 0                      # the first call left the window


def test_hostile_names_ids_and_metadata(world) -> None:
    owner = with_token(world["server"].channel(), world["tokens"]["owner"])
    a = admin_pb2_grpc.AdminStub(owner)
    names = ["../../../../etc/passwd.png", "a\x00b.png", "x" * 5000 + ".png", "..", "C:\\windows\\win.ini"]
    uploaded = a.UploadDocuments(admin_pb2.UploadDocumentsRequest(
        tenant="acme", number="+14155550100",
        files=[admin_pb2.DocumentUpload(name=n, content=png()) for n in names]), timeout=30)
    kept = [f.name for f in uploaded.files]
    assert kept[0] == "passwd.png" and kept[1] == "ab.png" and len(kept[2]) <= 200 and kept[2].endswith(".png")
    assert all("/" not in k and "\\" not in k and "\x00" not in k and k not in ("", "..") for k in kept)
    documents = world["db"].parent / "documents"
    files = [p for p in documents.rglob("*") if p.is_file()]
    assert files and all(p.resolve().is_relative_to(documents.resolve()) for p in files)

    before = fingerprint(world["db"])
    for tenant in ("../../etc", "x'); DROP TABLE versions;--", "\x00", "a" * 300, "%s%n"):
        for call in (lambda t=tenant: a.GetSettings(admin_pb2.GetSettingsRequest(tenant=t), timeout=10),
                     lambda t=tenant: a.Rollback(admin_pb2.RollbackRequest(tenant=t, version=1), timeout=10),
                     lambda t=tenant: a.PatchBlacklist(admin_pb2.PatchBlacklistRequest(
                         tenant=t, add=["+12125550000"]), timeout=10),
                     lambda t=tenant: a.UploadDocuments(admin_pb2.UploadDocumentsRequest(
                         tenant=t, number="+14155550100", files=[admin_pb2.DocumentUpload(name="x.png",
                                                                                          content=png())]),
                         timeout=10)):
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), tenant
    assert fingerprint(world["db"]) == before

    # oversized metadata: refused by the transport, and the server keeps serving
    huge = with_token(world["server"].channel(), "cg_" + "a" * 12 + "_" + "b" * 200_000)
    with pytest.raises(grpc.RpcError):
        admin_pb2_grpc.AdminStub(huge).Stats(admin_pb2.StatsRequest(), timeout=10)
    assert a.Stats(admin_pb2.StatsRequest(), timeout=10).pid > 0


def test_a_revoked_token_ends_its_open_streams(tmp_path: Path) -> None:
    """A proxy's Stream and a replica's WatchSnapshots stay open for hours: the token is checked again as they
    go (at most every 2 s, the token cache's pace), and a revoked one ends both with UNAUTHENTICATED, before the
    stream takes another request."""
    data = tmp_path / "data"
    data.mkdir()
    secrets = seed_tokens(data, ("owner", "proxy"))
    srv = Server(data, "--auth", "tokens")
    try:
        owner = admin_pb2_grpc.AdminStub(with_token(srv.channel(), secrets["owner"]))
        proxy = decisions_pb2_grpc.DecisionsStub(with_token(srv.channel(), secrets["proxy"]))
        ask = decisions_pb2.InboundRequest(tenant="acme", caller="+14155551234", called="+14155550199")
        sent: list[decisions_pb2.StreamRequest] = []
        more = threading.Event()

        def requests() -> Iterator[decisions_pb2.StreamRequest]:
            for i in range(2):
                if i:
                    more.wait(30)
                sent.append(decisions_pb2.StreamRequest(id=i, inbound=ask))
                yield sent[-1]

        def watching() -> Iterator[decisions_pb2.WatchRequest]:
            yield decisions_pb2.WatchRequest(replica="host-r", tenants=["acme"])
            done.wait(30)   # its side open: a replica that closes it is leaving

        done = threading.Event()
        stream = proxy.Stream(requests(), timeout=60)
        watch = proxy.WatchSnapshots(watching(), timeout=60)
        assert next(stream).decision.version >= 1
        assert any(piece.synced for piece in itertools.islice(watch, 10))
        owner.RevokeToken(admin_pb2.RevokeTokenRequest(id=token_id(secrets["proxy"]) or ""), timeout=10)
        time.sleep(2.5)   # the token cache's 2 s
        more.set()
        with pytest.raises(grpc.RpcError) as ended:
            next(stream)
        assert ended.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (ended.value.details() or "")
        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as gone:
            for _ in watch:   # heartbeats until the check after the revocation
                assert time.monotonic() - started < 10
        assert gone.value.code() == grpc.StatusCode.UNAUTHENTICATED and "revoked" in (gone.value.details() or "")
    finally:
        more.set()
        done.set()
        assert srv.stop() == 0
