"""Tenant boundaries through a real server (spec §7): numbers, tenant creation, strict documents, the audit.

The hostile sequence: a tenant-admin token for a tenant that does not exist,
then a push that lists another tenant's numbers.  Both steps are refused,
the victim's decisions, history and failover export are unchanged, and the
audit log keeps each refusal with its message.
"""

from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path
from typing import Any

import grpc
import msgpack
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from loadtest.process import free_port
from server.cli.main import main
from server.client import upload_messages, with_token
from server.rules.tokens import new_token, token_id

from .serving import Server, example_doc, own_number, seed_tokens, wait_for
from .test_numbers import old_store

TUESDAY_1030_LA = 1796149800
VICTIM_NUMBERS = ("+14155550100", "+14155550199", "+442071234567")


def document(tenant: str, block: int, **extra: Any) -> bytes:
    d = example_doc(tenant, block)
    d.update(extra)
    return json.dumps(d).encode()


def inbound(channel: grpc.Channel, tenant: str, called: str) -> Any:
    return decisions_pb2_grpc.DecisionsStub(channel).Inbound(decisions_pb2.InboundRequest(
        tenant=tenant, caller="+12125550000", called=called, at=TUESDAY_1030_LA), timeout=10)


def refused(call: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call()
    return err.value


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Any:
    data = tmp_path_factory.mktemp("tenancy") / "data"
    tokens = seed_tokens(data)
    srv = Server(data, "--auth", "tokens")
    owner = admin_pb2_grpc.AdminStub(with_token(srv.channel(), tokens["owner"]))
    owner.PushSettings(admin_pb2.PushSettingsRequest(document=document("beta", 602)), timeout=60)
    tokens["beta-admin"] = owner.CreateToken(admin_pb2.CreateTokenRequest(role="tenant-admin", tenants=["beta"]),
                                             timeout=10).token
    # a tenant-admin token for a tenant that does not exist, as a store made before this rule could hold
    ident, secret, token_hash = new_token()
    with sqlite3.connect(data / "callgate.sqlite") as conn:
        conn.execute("INSERT INTO tokens (id, role, tenants, created_at, expires_at, revoked_at, comment, token_hash) "
                     "VALUES (?, 'tenant-admin', '[\"newco\"]', 0, 0, 0, 'legacy', ?)", (ident, token_hash))
    tokens["newco-admin"] = secret
    yield {"server": srv, "tokens": tokens, "data": data, "owner": owner}
    srv.stop()


def stub(world: Any, who: str) -> Any:
    return admin_pb2_grpc.AdminStub(with_token(world["server"].channel(), world["tokens"][who]))


def victim_state(world: Any) -> Any:
    channel = with_token(world["server"].channel(), world["tokens"]["owner"])
    decisions = [inbound(channel, "acme", n).SerializeToString() for n in VICTIM_NUMBERS]
    versions = [(v.version, v.kind) for v in world["owner"].ListVersions(
        admin_pb2.ListVersionsRequest(tenant="acme"), timeout=10).versions]
    export = world["owner"].ExportFailover(admin_pb2.ExportFailoverRequest(), timeout=10)
    export.generated_at = 0
    return decisions, versions, export.SerializeToString()


def test_the_hostile_sequence_is_refused_at_both_steps(world: Any, capsys: Any) -> None:
    before = victim_state(world)
    owner = world["owner"]
    # step 1: a tenant-admin token for a tenant that does not exist
    err = refused(lambda: owner.CreateToken(admin_pb2.CreateTokenRequest(role="tenant-admin", tenants=["newco"]),
                                            timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND and "tenant 'newco' does not exist" in err.details()
    assert main(["tokens", "create", "--role", "tenant-admin", "--tenant", "newco",
                 "--data-dir", str(world["data"])]) == 2
    assert "tenant 'newco' does not exist" in capsys.readouterr().err
    # step 2: a push listing the victim's numbers, by every token that could try
    hostile = document("newco", 0)                                 # acme's own numbers under another name
    err = refused(lambda: stub(world, "newco-admin").PushSettings(admin_pb2.PushSettingsRequest(document=hostile),
                                                                  timeout=60))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not create tenant 'newco': creating a tenant is an operator's or an owner's act" in err.details()
    err = refused(lambda: stub(world, "beta-admin").PushSettings(admin_pb2.PushSettingsRequest(document=hostile),
                                                                 timeout=60))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "may not act on tenant 'newco'" in err.details()
    for who in ("operator", "owner"):
        err = refused(lambda w=who: stub(world, w).PushSettingsUpload(upload_messages(hostile), timeout=60))
        assert err.code() == grpc.StatusCode.FAILED_PRECONDITION, err.details()
        assert "numbers[0].number: +14155550100 belongs to another tenant" in err.details()
        assert "numbers[2].number: +442071234567 belongs to another tenant" in err.details()
        assert "acme" not in err.details()                          # the holder is never named
    # a tenant-admin adding one of the victim's numbers to its own tenant
    beta = example_doc("beta", 602)
    beta["numbers"].append({"number": "+14155550199", "line": "rent-1", "country": "US"})
    err = refused(lambda: stub(world, "beta-admin").PushSettings(admin_pb2.PushSettingsRequest(
        document=json.dumps(beta).encode()), timeout=60))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "numbers[3].number: +14155550199 belongs to another tenant" in err.details()
    assert victim_state(world) == before                             # decisions, history, export unchanged
    err = refused(lambda: inbound(world["server"].channel(), "newco", "+14155550100"))
    assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED)
    assert owner.NumberOwner(admin_pb2.NumberOwnerRequest(number="+14155550100"), timeout=10).tenant == "acme"

    # the audit log keeps every refusal with its message, readable over gRPC (operator) and as JSON
    assert main(["--server", world["server"].address, "--token", world["tokens"]["operator"], "audit",
                 "--action", "PushSettingsUpload", "--since", "1h", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {r["result"] for r in rows} == {"FAILED_PRECONDITION"} and len(rows) == 2
    assert all(r["tenant"] == "newco" and "belongs to another tenant" in r["detail"] for r in rows)
    entries = stub(world, "operator").ListAudit(admin_pb2.ListAuditRequest(since=0, limit=1000), timeout=10).entries
    seen = {(e.action, e.result, e.tenant) for e in entries}
    assert ("CreateToken", "NOT_FOUND", "") in seen
    assert ("PushSettings", "PERMISSION_DENIED", "newco") in seen
    assert ("PushSettings", "FAILED_PRECONDITION", "beta") in seen
    beta_admin = token_id(world["tokens"]["beta-admin"])
    assert any(e.token_id == beta_admin and e.tenant == "newco" and e.result == "PERMISSION_DENIED"
               for e in entries)                                   # filed under the tenant the document named
    assert all(e.peer.startswith("ipv") for e in entries)
    assert all(e.detail and "Locally aborted" not in e.detail for e in entries if e.result != "OK")
    creation = next(e for e in entries if e.action == "CreateToken" and e.result == "NOT_FOUND")
    assert "tenant 'newco' does not exist" in creation.detail and creation.token_id
    err = refused(lambda: stub(world, "beta-admin").ListAudit(admin_pb2.ListAuditRequest(), timeout=10))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED


def test_operators_create_tenants_and_nothing_else(world: Any) -> None:
    operator = stub(world, "operator")
    reply = operator.PushSettings(admin_pb2.PushSettingsRequest(document=document("gamma", 603)), timeout=60)
    assert (reply.tenant, reply.version) == ("gamma", 1)
    err = refused(lambda: operator.PushSettings(admin_pb2.PushSettingsRequest(document=document("gamma", 603)),
                                                timeout=60))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "creates tenants only: tenant 'gamma' exists (version 1)" in err.details()
    # a tenant-admin token can be made now that the tenant exists, and it pushes the next versions
    token = world["owner"].CreateToken(admin_pb2.CreateTokenRequest(role="tenant-admin", tenants=["gamma"]),
                                       timeout=10).token
    gamma = admin_pb2_grpc.AdminStub(with_token(world["server"].channel(), token))
    assert gamma.PushSettings(admin_pb2.PushSettingsRequest(document=document("gamma", 603)),
                              timeout=60).version == 2


@pytest.mark.parametrize(("name", "data", "fmt", "error"), [
    ("top", document("acme", 0).replace(b'"tenant":', b'"tenant": "evil", "tenant":', 1), "json",
     "document: duplicate key 'tenant'"),
    ("number", document("acme", 0).replace(b'"requires_documents": true', b'"line": "x", "requires_documents": true'),
     "json", "numbers[0]: duplicate key 'line'"),
    ("schedule", document("acme", 0).replace(b'"holidays": ["2026-12-25"]',
                                             b'"holidays": ["2026-12-25"], "timezone": "UTC"', 1), "json",
     "numbers[0].schedule: duplicate key 'timezone'"),
    ("msgpack", b"\x83" + msgpack.packb("tenant") + msgpack.packb("acme") + msgpack.packb("status")
     + msgpack.packb("active") + msgpack.packb("tenant") + msgpack.packb("evil"), "msgpack",
     "document: duplicate key 'tenant'"),
    ("bom", b"\xef\xbb\xbf" + document("acme", 0), "", "document: starts with a UTF-8 byte-order mark"),
])
def test_duplicate_keys_are_refused_by_the_server(world: Any, name: str, data: bytes, fmt: str, error: str) -> None:
    before = victim_state(world)
    for push in (lambda: world["owner"].PushSettings(admin_pb2.PushSettingsRequest(document=data, format=fmt),
                                                     timeout=60),
                 lambda: world["owner"].PushSettingsUpload(upload_messages(data, fmt), timeout=60)):
        err = refused(push)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and error in err.details(), (name, err.details())
    assert victim_state(world) == before


# -- transfer across workers ----------------------------------------------------------------------

def channels_per_worker(address: str, want: int = 2, tries: int = 60) -> dict[int, grpc.Channel]:
    """One open channel to each worker (new connections until SO_REUSEPORT has given each one)."""
    found: dict[int, grpc.Channel] = {}
    for _ in range(tries):
        # a subchannel of its own: channels of one process share connections by default
        channel = grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])
        pid = admin_pb2_grpc.AdminStub(channel).Stats(admin_pb2.StatsRequest(), timeout=10).pid
        if pid in found:
            channel.close()
        else:
            found[pid] = channel
        if len(found) == want:
            return found
    raise AssertionError(f"reached {len(found)} of {want} workers")


def test_transfer_moves_a_number_in_one_version_pair_in_every_worker(tmp_path: Path, capsys: Any) -> None:
    srv = Server(tmp_path / "data", listen=f"127.0.0.1:{free_port()}", workers=2)
    try:
        with srv.channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            admin.PushSettings(admin_pb2.PushSettingsRequest(document=document("beta", 604)), timeout=60)
        workers = channels_per_worker(srv.address)
        moved = "+442071234567"

        def loaded() -> bool:
            try:
                return all(inbound(c, "beta", own_number(moved, 604)).verdict == decisions_pb2.ROUTE
                           for c in workers.values())
            except grpc.RpcError:  # a worker that has not loaded beta yet: NOT_FOUND
                return False

        wait_for(loaded)
        assert all(inbound(c, "acme", moved).verdict == decisions_pb2.ROUTE for c in workers.values())
        assert main(["--server", srv.address, "numbers", "transfer", moved, "--from", "acme", "--to", "beta",
                     "--comment", "ported"]) == 0
        out = capsys.readouterr().out
        assert f"{moved} moved from tenant 'acme' (now at version 2) to tenant 'beta' (now at version 2)" in out
        assert "user 'u3' of tenant 'acme' presents the default caller ID now" in out

        def followed() -> bool:
            return all(inbound(c, "beta", moved).verdict == decisions_pb2.ROUTE
                       and inbound(c, "acme", moved).reason == decisions_pb2.UNKNOWN_NUMBER for c in workers.values())

        wait_for(followed, timeout=5)
        with srv.channel() as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            for tenant in ("acme", "beta"):
                history = admin.ListVersions(admin_pb2.ListVersionsRequest(tenant=tenant), timeout=10).versions
                assert (history[0].version, history[0].kind, history[0].comment) == (2, "transfer", "ported")
        assert main(["--server", srv.address, "numbers", "owner", moved, "--json"]) == 0
        owner = json.loads(capsys.readouterr().out)
        assert (owner["tenant"], owner["line"], owner["version"]) == ("beta", "rent-1", 2)
        export = tmp_path / "failover.json"
        assert main(["--server", srv.address, "export", "failover", "-o", str(export)]) == 0
        table = json.loads(export.read_text())
        assert table["numbers"][moved] == {"tenant": "beta", "line": "rent-1"}
        assert {t: v["version"] for t, v in table["tenants"].items()} == {"acme": 2, "beta": 2}
        assert len(table["numbers"]) == 6                                # each number once
        # a transfer of a number the tenant does not hold changes nothing
        assert main(["--server", srv.address, "numbers", "transfer", moved, "--from", "acme", "--to", "beta"]) == 2
        assert "is not 'acme''s: tenant 'beta' holds it" in capsys.readouterr().err
        assert main(["--server", srv.address, "numbers", "owner", "+19995550000"]) == 2
        assert "NOT_FOUND: no tenant holds +19995550000" in capsys.readouterr().err
    finally:
        for c in locals().get("workers", {}).values():
            c.close()
        assert srv.stop() == 0


# -- a store made before ownership ------------------------------------------------------------------

def test_a_store_holding_numbers_twice_is_refused_until_resolved(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "data"
    data.mkdir()
    intruder = example_doc("newco", 605)
    intruder["numbers"].append({"number": "+14155550199", "line": "rent-1", "country": "US"})
    old_store(data / "callgate.sqlite", {"acme": document("acme", 0), "newco": json.dumps(intruder).encode()})
    srv = Server(data, seed=None, wait=False)
    assert srv.proc.wait(timeout=60) == 2
    srv.stop()
    lines = [r.get("msg", "") for r in srv.logs]
    error = next(line for line in lines if line.startswith("callgate: error:"))
    assert "+14155550199 (acme, newco)" in error and "callgate numbers resolve NUMBER --owner TENANT" in error
    assert main(["numbers", "conflicts", "--data-dir", str(data)]) == 0
    assert "+14155550199: listed by acme (line rent-1), newco (line rent-1)" in capsys.readouterr().out
    assert main(["numbers", "resolve", "+14155550199", "--owner", "nobody", "--data-dir", str(data)]) == 2
    assert "its claimants are acme, newco" in capsys.readouterr().err
    assert main(["numbers", "resolve", "+14155550199", "--owner", "acme", "--data-dir", str(data)]) == 0
    out = capsys.readouterr().out
    assert "+14155550199 belongs to tenant 'acme' now" in out and "tenant 'newco' is at version 2" in out
    srv = Server(data, seed=None)
    try:
        with srv.channel() as channel:
            assert inbound(channel, "acme", "+14155550199").verdict == decisions_pb2.ROUTE
            assert inbound(channel, "newco", "+14155550199").reason == decisions_pb2.UNKNOWN_NUMBER
            assert inbound(channel, "newco", own_number("+14155550199", 605)).verdict == decisions_pb2.ROUTE
            admin = admin_pb2_grpc.AdminStub(channel)
            first = json.loads(admin.GetSettings(admin_pb2.GetSettingsRequest(tenant="newco", version=1),
                                                 timeout=10).document)
            assert "+14155550199" in [n["number"] for n in first["numbers"]]     # history keeps what was
        assert main(["audit", "--action", "NumbersResolve", "--data-dir", str(data), "--json"]) == 0
        row = json.loads(capsys.readouterr().out.splitlines()[0])
        assert row["object"] == "number +14155550199" and row["role"] == "host"
    finally:
        assert srv.stop() == 0


def test_audit_keeps_what_was_committed_when_the_caller_left(world: Any) -> None:
    """The client's deadline passes while the store commits: the version stands, and the audit says so."""
    import threading
    import time

    db = world["data"] / "callgate.sqlite"
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")                      # the write lock, held for 3 s
    release = threading.Timer(3.0, lambda: holder.execute("COMMIT"))
    release.start()
    try:
        err = refused(lambda: world["owner"].PushSettings(admin_pb2.PushSettingsRequest(
            document=document("beta", 602), comment="late"), timeout=1.0))
        assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        release.join()
        holder.close()

    def committed() -> Any:
        versions = world["owner"].ListVersions(admin_pb2.ListVersionsRequest(tenant="beta"), timeout=10).versions
        return next((v for v in versions if v.comment == "late"), None)

    late = wait_for(committed)                                          # committed all the same
    deadline = time.monotonic() + 10
    while True:
        rows = [e for e in stub(world, "operator").ListAudit(admin_pb2.ListAuditRequest(
            tenant="beta", action="PushSettings", limit=20), timeout=10).entries if e.result == "CANCELLED"]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows and rows[0].version_after == late.version and rows[0].object == f"version {late.version}"
    assert "committed, but the caller left before the reply" in rows[0].detail


def test_stored_text_cannot_fake_lines_in_the_cli(world: Any, capsys: Any) -> None:
    forged = "ok\n 99999 2026-12-02 07:00:00Z abc owner beta TransferNumber OK \x1b[31mRED\x1b[0m"
    beta = admin_pb2_grpc.AdminStub(with_token(world["server"].channel(), world["tokens"]["beta-admin"]))
    beta.PushSettings(admin_pb2.PushSettingsRequest(document=document("beta", 602), comment=forged), timeout=60)
    server = ["--server", world["server"].address]
    assert main([*server, "--token", world["tokens"]["operator"], "audit", "--tenant", "beta", "--limit", "5"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\\x1b[31m" in out and not any(line.startswith(" 99999") for line in out.splitlines())
    assert main([*server, "--token", world["tokens"]["beta-admin"], "settings", "history", "--tenant", "beta"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and all(not line.startswith(" 99999") for line in out.splitlines())


@pytest.mark.parametrize("argv", [
    ["audit", "--before", "-1"], ["audit", "--before", "99999999999999999999999"],
    ["audit", "--since", "9" * 300 + "w"],
    ["tokens", "create", "--role", "owner", "--expires-in", "99999999999999999999d"], ["audit", "--limit", "0"],
])
def test_cli_mistakes_are_one_line(world: Any, capsys: Any, argv: list[str]) -> None:
    assert main(["--server", world["server"].address, "--token", world["tokens"]["owner"], *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("callgate: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_host_commands_on_what_is_not_a_store(tmp_path: Path, capsys: Any) -> None:
    (tmp_path / "callgate.sqlite").write_bytes(b"not a database at all" * 100)
    for argv in (["numbers", "conflicts"], ["audit"], ["tokens", "list"]):
        assert main([*argv, "--data-dir", str(tmp_path)]) == 2
        assert "is not a callgate store that can be read" in capsys.readouterr().err
    assert main(["numbers", "owner", "+1415555\udcff0100"]) == 2                 # bytes that are not UTF-8
    assert "is not UTF-8 text" in capsys.readouterr().err


def test_refusals_without_a_token_are_written_at_most_sixty_a_minute(world: Any) -> None:
    anonymous = admin_pb2_grpc.AdminStub(world["server"].channel())
    before = len(stub(world, "owner").ListAudit(admin_pb2.ListAuditRequest(action="ListCalls", limit=1000),
                                                timeout=10).entries)
    for _ in range(100):
        with pytest.raises(grpc.RpcError):
            anonymous.ListCalls(admin_pb2.ListCallsRequest(tenant="acme"), timeout=10)
    rows = stub(world, "owner").ListAudit(admin_pb2.ListAuditRequest(action="ListCalls", limit=1000),
                                          timeout=10).entries
    assert 0 < len(rows) - before <= 60                                       # the rest counted, not written


def test_a_transfer_is_audited_for_both_tenants_and_the_export_follows_status(world: Any) -> None:
    owner = world["owner"]
    number = own_number("+442071234567", 602)
    owner.TransferNumber(admin_pb2.TransferNumberRequest(number=number, from_tenant="beta", to_tenant="acme"),
                         timeout=60)
    rows = owner.ListAudit(admin_pb2.ListAuditRequest(action="TransferNumber", limit=10), timeout=10).entries
    by_tenant = {e.tenant: e for e in rows if e.result == "OK" and e.object == f"number {number}"}
    assert set(by_tenant) == {"acme", "beta"} and "from tenant beta" in by_tenant["acme"].detail
    assert by_tenant["acme"].version_after == by_tenant["acme"].version_before + 1
    owner.TransferNumber(admin_pb2.TransferNumberRequest(number=number, from_tenant="acme", to_tenant="beta"),
                         timeout=60)
    suspended = example_doc("gamma", 603)
    suspended["status"] = "suspended"
    owner.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(suspended).encode()), timeout=60)
    table = {t.tenant: t for t in owner.ExportFailover(admin_pb2.ExportFailoverRequest(), timeout=10).tenants}
    assert (table["gamma"].status, table["gamma"].backup_number) == ("suspended", "+14155550111")


def compile_processes(pid: int) -> list[int]:
    """The worker's compile process (a multiprocessing spawn child), found in /proc."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                found.append(int(child))
    return found


def test_a_compile_process_that_dies_is_unavailable_not_unknown(world: Any) -> None:
    import signal
    import threading

    big = example_doc("beta", 602)
    big["blacklist"] = [f"+1212{i:07d}" for i in range(1_500_000)]
    outcome: list[Any] = []

    def push() -> None:
        try:
            outcome.append(world["owner"].PushSettingsUpload(upload_messages(json.dumps(big).encode()), timeout=120))
        except grpc.RpcError as exc:
            outcome.append(exc)

    pid = world["server"].proc.pid
    before = wait_for(lambda: compile_processes(pid), timeout=30)
    thread = threading.Thread(target=push)
    thread.start()
    try:
        wait_for(lambda: Path(f"/proc/{before[0]}/stat").read_text().split()[2] == "R" or outcome, timeout=60,
                 interval=0.01)
        for child in before:
            os.kill(child, signal.SIGKILL)
    finally:
        thread.join(120)
    [result] = outcome
    assert isinstance(result, grpc.RpcError), result
    assert result.code() == grpc.StatusCode.UNAVAILABLE and "the settings compiler stopped" in result.details()
    # the next push gets a new compile process
    assert world["owner"].PushSettings(admin_pb2.PushSettingsRequest(document=document("beta", 602)),
                                       timeout=60).tenant == "beta"


def test_audit_rows_name_the_document_set_and_the_token_they_acted_on(world: Any, tmp_path: Path) -> None:
    """The object of an audit row: `set N` for UploadDocuments / ReviewDocuments, `token ID` for the tokens."""
    from PIL import Image

    scan = tmp_path / "id.png"
    Image.new("L", (640, 400), "white").save(scan)
    number = own_number("+14155550100", 602)                    # one of beta's numbers
    beta = stub(world, "beta-admin")
    uploaded = beta.UploadDocuments(admin_pb2.UploadDocumentsRequest(tenant="beta", number=number, files=[
        admin_pb2.DocumentUpload(name="id.png", content=scan.read_bytes())]), timeout=30)
    operator = stub(world, "operator")
    operator.ReviewDocuments(admin_pb2.ReviewDocumentsRequest(set_id=uploaded.id, approve=False, reason="too dark"),
                             timeout=30)
    twice = refused(lambda: operator.ReviewDocuments(admin_pb2.ReviewDocumentsRequest(set_id=uploaded.id,
                                                                                    approve=True), timeout=30))
    assert twice.code() == grpc.StatusCode.FAILED_PRECONDITION and "already rejected (too dark)" in twice.details()
    missing = uploaded.id + 1000
    err = refused(lambda: operator.ReviewDocuments(admin_pb2.ReviewDocumentsRequest(set_id=missing, approve=True),
                                                   timeout=30))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    owner = world["owner"]
    created = owner.CreateToken(admin_pb2.CreateTokenRequest(role="tenant-admin", tenants=["beta"], comment="audit"),
                                timeout=10)
    owner.RevokeToken(admin_pb2.RevokeTokenRequest(id=created.info.id), timeout=10)
    err = refused(lambda: owner.RevokeToken(admin_pb2.RevokeTokenRequest(id="nosuchtoken"), timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND

    def rows(action: str) -> list[Any]:
        return list(operator.ListAudit(admin_pb2.ListAuditRequest(action=action, limit=1000), timeout=10).entries)

    upload = [e for e in rows("UploadDocuments") if f"set {uploaded.id}" in e.object]
    assert len(upload) == 1, rows("UploadDocuments")
    [row] = upload
    assert (row.tenant, row.result, row.token_id) == ("beta", "OK", token_id(world["tokens"]["beta-admin"]))
    assert row.object == f"number {number}, set {uploaded.id}"
    reviews = sorted((e for e in rows("ReviewDocuments") if e.object.split(",")[0] == f"set {uploaded.id}"),
                     key=lambda e: e.id)
    assert [(e.object, e.result) for e in reviews] == [(f"set {uploaded.id}, number {number}", "OK"),
                                                       (f"set {uploaded.id}", "FAILED_PRECONDITION")]
    assert reviews[0].tenant == "beta" and reviews[0].detail == "rejected: too dark"
    assert "already rejected (too dark)" in reviews[1].detail
    assert all(e.token_id == token_id(world["tokens"]["operator"]) for e in reviews)
    [gone] = [e for e in rows("ReviewDocuments") if e.object == f"set {missing}"]
    assert gone.result == "NOT_FOUND" and f"no document set {missing}" in gone.detail
    made = [e for e in rows("CreateToken") if e.result == "OK" and e.object == f"token {created.info.id}"]
    assert len(made) == 1 and made[0].token_id == token_id(world["tokens"]["owner"])
    assert created.info.id in made[0].detail and "tenant-admin" in made[0].detail
    revoked = [e for e in rows("RevokeToken") if e.object == f"token {created.info.id}"]
    assert [(e.result, e.detail) for e in revoked] == [("OK", f"revoked token {created.info.id}")]
    [unknown] = [e for e in rows("RevokeToken") if e.object == "token nosuchtoken"]
    assert unknown.result == "NOT_FOUND" and "no token 'nosuchtoken'" in unknown.detail
