"""Removing a tenant (Admin.RemoveTenant, `callgate tenant remove`): what goes, what stays, who may, when not.

The store's part on a store file; the RPC through a real `callgate serve --workers 2 --auth tokens`: refused
without the tenant typed twice, with calls in progress or money (unless forced), for any token but an owner's;
then gone from every worker (NOT_FOUND) within about a second, and from the store as README "Removing a tenant"
says.
"""

from __future__ import annotations

import hashlib
import io
import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from loadtest.process import free_port
from server.client import with_token
from server.rules.tokens import new_token, token_id
from server.store.api import NotFound, TenantBusy, TopupPolicy
from server.store.removal import archive_name
from server.store.sqlite import SQLiteStore
from server.store.verify import verify

from .serving import Server, example_doc, own_number, wait_for
from .store_cases import doc, snap

# -- the store ----------------------------------------------------------------------------------------------


def fingerprint(db: Path) -> str:
    """Every row of every table but the audit log's."""
    digest = hashlib.sha256()
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name").fetchall():
            if table not in ("audit", "sqlite_sequence", "health_probe"):
                for row in conn.execute(f'SELECT * FROM "{table}" ORDER BY rowid'):
                    digest.update(repr((table, row)).encode())
    finally:
        conn.close()
    return digest.hexdigest()


def rows(db: Path, sql: str, *args: Any) -> list[Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def numbered(tenant: str, *numbers: str) -> bytes:
    return doc(tenant, numbers=[{"number": n, "line": "main"} for n in numbers])


def test_the_store_removes_the_tenant_and_keeps_its_money_records(store: SQLiteStore, db: Path) -> None:
    for version in (1, 2):
        d = numbered("acme", "+14155550100", "+14155550199")
        store.commit_version("acme", "push", d, snap(d), version - 1)
    d = numbered("beta", "+14156010100")
    store.commit_version("beta", "push", d, snap(d), 0)
    assert store.credit("acme", 5_000_000, "credit", "wire-1", "USD")
    ident_only, _, hash_only = new_token()
    ident_both, _, hash_both = new_token()
    store.add_token(ident_only, hash_only, "tenant-admin", ["acme"], 0, "acme's")
    store.add_token(ident_both, hash_both, "tenant-admin", ["acme", "beta"], 0, "both")
    from server.store.api import CardRecord, DocumentFile

    store.set_card(CardRecord("acme", "tok_1", "visa", "4242", 12, 2030))
    files = [DocumentFile("a" * 64, "id.png", "PNG", 10, 10, 100), DocumentFile("b" * 64, "p2.png", "PNG", 10, 10, 1)]
    store.add_document_set("acme", "+14155550100", files, int(time.time()), "2030-01-01")
    store.add_document_set("beta", "+14156010100", files[1:], int(time.time()), "2030-01-01")
    before = fingerprint(db)

    # money on the account: refused, nothing changed; a dry run says what would go and changes nothing
    with pytest.raises(TenantBusy, match=r"a balance of 5\.00"):
        store.remove_tenant("acme")
    dry = store.remove_tenant("acme", force=True, dry_run=True)
    assert fingerprint(db) == before
    assert (dry.dry_run, dry.last_version, dry.removed_version, dry.versions, dry.numbers) == (True, 2, 3, 2, 2)
    assert dry.document_files == ("a" * 64,)          # b is named by beta's set too: it stays
    assert (dry.tokens_revoked, dry.tokens_narrowed) == ((ident_only,), (ident_both,))

    done = store.remove_tenant("acme", force=True, comment="contract ended")
    assert done.ledger_archive == archive_name("acme", 3) == "acme/removed-3"
    assert (done.balance_micro, done.ledger_entries, done.card_removed) == (5_000_000, 1, True)
    assert store.current_versions() == {"beta": 1}
    with pytest.raises(NotFound):
        store.get_version("acme")
    with pytest.raises(NotFound, match="records its removal"):
        store.get_version("acme", 3)
    history = store.list_versions("acme")
    assert [(v.version, v.kind, v.comment, v.in_force) for v in history] == [(3, "removed", "contract ended", False)]
    for table in ("calls", "number_owners", "document_sets", "cards", "accounts", "snapshots", "list_patches",
                  "tenant_facts", "rentals_seen"):
        assert rows(db, f'SELECT count(*) FROM "{table}" WHERE tenant = ?', "acme") == [(0,)], table
    assert rows(db, "SELECT tenant, amount_micro, ref FROM ledger") == [("acme/removed-3", 5_000_000, "wire-1")]
    assert store.balance("acme") == 0 and store.ledger("acme") == []
    assert store.get_token(ident_only).revoked_at > 0                                  # type: ignore[union-attr]
    both = store.get_token(ident_both)
    assert both is not None and both.tenants == ("beta",) and both.revoked_at == 0
    assert store.document_file_named("b" * 64) and not store.document_file_named("a" * 64)
    report = verify(store, db.parent / "documents")
    assert not [p for p in report.problems if p.startswith("money")], report.problems
    assert any("1 removed tenant(s)' ledgers kept" in c for c in report.checked)

    # the id made again: a new tenant, no money and no references of the old one's, version numbers going on
    assert store.credit("acme", 1_000_000, "credit", "wire-1", "USD")            # the same reference: a new entry
    assert store.balance("acme") == 1_000_000
    d = numbered("acme", "+14155550100")
    assert store.commit_version("acme", "push", d, snap(d), 0) == 4
    assert store.number_owner("+14155550100").tenant == "acme"                    # type: ignore[union-attr]
    assert [v.kind for v in store.list_versions("acme")] == ["push", "removed"]


def test_a_released_number_is_free_and_a_charge_in_flight_stops_a_removal(store: SQLiteStore, db: Path) -> None:
    d = numbered("acme", "+14155550100")
    store.commit_version("acme", "push", d, snap(d), 0)
    policy = TopupPolicy(amount_micro=20_000_000, threshold_micro=3_000_000, currency="USD")
    store.credit("acme", 4_000_000, "credit", "wire", "USD")
    store.credit("acme", -2_000_000, "rental", "+14155550100:2030-01-01", "USD", policy)   # crosses: a top-up
    claimed = store.claim_topup(int(time.time()) + 1, 60)
    assert claimed is not None and claimed[0].status == "charging"
    with pytest.raises(TenantBusy, match="top-up being charged"):
        store.remove_tenant("acme", force=True)                                   # force cannot skip it
    store.finish_topup(claimed[0].id, claimed[0].attempts, False, "", "declined", int(time.time()) + 3600)
    done = store.remove_tenant("acme", force=True)
    assert (done.topups, done.ledger_entries) == (1, 2)
    assert rows(db, "SELECT tenant, status, last_reason FROM topups") == [
        ("acme/removed-2", "failed", "tenant removed")]
    d = numbered("beta", "+14155550100")
    store.commit_version("beta", "push", d, snap(d), 0)                            # the number is free again
    with pytest.raises(NotFound):
        store.remove_tenant("acme")                                               # gone already


def test_the_sweep_after_a_removal_runs_on_every_backend(store: Any) -> None:
    d = numbered("acme", "+14155550100")
    store.commit_version("acme", "push", d, snap(d), 0)
    done = store.remove_tenant("acme", force=True)
    assert store.sweep_removed("acme", done.removed_version) == (0, ())     # nothing written late
    store.credit("acme", 1_000_000, "credit", "wire-late", "USD")           # a worker that had not polled yet
    swept, files = store.sweep_removed("acme", done.removed_version)
    assert swept >= 2 and files == ()                                        # its ledger row and its account
    assert store.balance("acme") == 0


def test_what_lagging_workers_wrote_after_the_removal_is_swept(store: SQLiteStore, db: Path) -> None:
    from server.store.api import DocumentFile

    d = numbered("acme", "+14155550100")
    store.commit_version("acme", "push", d, snap(d), 0)
    store.credit("acme", 1_000_000, "credit", "wire-1", "USD")
    done = store.remove_tenant("acme", force=True)
    # a worker that has not polled since takes a credit (the same reference again, and a new one) and an upload
    store.credit("acme", 1_000_000, "credit", "wire-1", "USD")
    store.credit("acme", 2_000_000, "credit", "wire-2", "USD")
    store.add_document_set("acme", "+14155550100", [DocumentFile("c" * 64, "x.png", "PNG", 1, 1, 1)], 0, "2030-01-01")
    swept, files = store.sweep_removed("acme", done.removed_version)
    assert swept > 0 and files == ("c" * 64,)
    assert sorted(rows(db, "SELECT tenant, ref FROM ledger")) == [
        ("acme/removed-2", "wire-1"), ("acme/removed-2", "wire-2"), ("acme/removed-2-late", "wire-1")]
    for table in ("accounts", "document_sets"):
        assert rows(db, f"SELECT count(*) FROM {table} WHERE tenant = 'acme'") == [(0,)]
    assert not [p for p in verify(store, db.parent / "documents").problems if p.startswith("money")]
    # made again meanwhile: the sweep leaves the new tenant alone
    store.commit_version("acme", "push", d, snap(d), 0)
    store.credit("acme", 1_000_000, "credit", "wire-3", "USD")
    assert store.sweep_removed("acme", done.removed_version) == (0, ())
    assert store.balance("acme") == 1_000_000


# -- through a real server ------------------------------------------------------------------------------------

BLOCKS = {"acme": 0, "r-calls": 610, "r-gone": 620, "r-cli": 630, "r-money": 640}
TUESDAY_1030_LA = 1796149800


def png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (40, 30), "white").save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("remove") / "data"
    store = SQLiteStore(data / "callgate.sqlite")
    tokens: dict[str, str] = {}
    for role in ("proxy", "operator", "owner"):
        ident, secret, token_hash = new_token()
        store.add_token(ident, token_hash, role, [], 0, role)
        tokens[role] = secret
    srv = Server(data, "--auth", "tokens", listen=f"127.0.0.1:{free_port()}", workers=2)
    try:
        owner = admin_pb2_grpc.AdminStub(with_token(srv.channel(), tokens["owner"]))
        for tenant, block in BLOCKS.items():
            d = example_doc(tenant, block)
            for entry in d["numbers"]:
                entry.pop("rental", None)     # no renewal charges a balance that a test wants at 0
            owner.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(d).encode()), timeout=60)
        ident, secret, token_hash = new_token()
        store.add_token(ident, token_hash, "tenant-admin", ["r-gone"], 0, "r-gone's admin")
        tokens["tenant-admin"] = secret
        store.close()
        yield {"server": srv, "tokens": tokens, "owner": owner, "db": data / "callgate.sqlite", "data": data}
    finally:
        srv.stop()


def stub(world: dict[str, Any], role: str) -> Any:
    return admin_pb2_grpc.AdminStub(with_token(world["server"].channel(), world["tokens"][role]))


def remove(admin: Any, tenant: str, confirm: str | None = None, **flags: bool) -> Any:
    return admin.RemoveTenant(admin_pb2.RemoveTenantRequest(tenant=tenant, confirm=tenant if confirm is None
                                                            else confirm, **flags), timeout=30)


def refused(fn: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        fn()
    return err.value


def by_worker(world: dict[str, Any], tenant: str, tries: int = 40) -> dict[int, str]:
    """pid -> what an Inbound decision for `tenant` answers there (OK or the status), over fresh connections."""
    seen: dict[int, str] = {}
    called = own_number("+14155550199", BLOCKS[tenant])
    for _ in range(tries):
        with with_token(grpc.insecure_channel(world["server"].address), world["tokens"]["owner"]) as channel:
            pid = admin_pb2_grpc.AdminStub(channel).Stats(admin_pb2.StatsRequest(), timeout=10).pid
            try:
                decisions_pb2_grpc.DecisionsStub(channel).Inbound(decisions_pb2.InboundRequest(
                    tenant=tenant, caller="+12125550000", called=called, at=TUESDAY_1030_LA), timeout=10)
                seen[pid] = "OK"
            except grpc.RpcError as exc:
                seen[pid] = exc.code().name
        if len(seen) == 2 and tries > 2:
            break
    return seen


def test_the_tenant_must_be_typed_twice(world: dict[str, Any]) -> None:
    before = fingerprint(world["db"])
    for confirm in ("", "r-gonE", "r-gone ", "acme"):
        err = refused(lambda confirm=confirm: remove(world["owner"], "r-gone", confirm, force=True))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "confirm must repeat the tenant id" in err.details()
    assert fingerprint(world["db"]) == before


def test_only_an_owner_token_may_remove(world: dict[str, Any]) -> None:
    before = fingerprint(world["db"])
    for role in ("proxy", "tenant-admin", "operator"):             # the tenant-admin's own tenant is r-gone
        err = refused(lambda role=role: remove(stub(world, role), "r-gone", force=True))
        assert err.code() == grpc.StatusCode.PERMISSION_DENIED, (role, err.details())
        assert "may not call RemoveTenant" in err.details()
    assert fingerprint(world["db"]) == before
    audited = rows(world["db"], "SELECT role, result FROM audit WHERE action = 'RemoveTenant'")
    assert {("proxy", "PERMISSION_DENIED"), ("operator", "PERMISSION_DENIED"),
            ("tenant-admin", "PERMISSION_DENIED")} <= set(audited)


def test_calls_in_progress_or_money_refuse_it_unless_forced(world: dict[str, Any]) -> None:
    owner, db = world["owner"], world["db"]
    d = decisions_pb2_grpc.DecisionsStub(with_token(world["server"].channel(), world["tokens"]["owner"]))
    called = own_number("+14155550199", BLOCKS["r-calls"])

    def event(kind: Any) -> None:
        d.CallEvent(decisions_pb2.CallEventRequest(tenant="r-calls", call_id="rm-1", kind=kind, user="u1",
                                                   caller="+12125550000", called=called), timeout=10)

    event(decisions_pb2.CallEventRequest.RINGING)
    before = fingerprint(db)
    err = refused(lambda: remove(owner, "r-calls"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "1 call(s) in progress" in err.details() and "nothing was removed" in err.details()
    assert fingerprint(db) == before
    dry = remove(owner, "r-calls", force=True, dry_run=True)                    # what force would do
    assert dry.dry_run and dry.calls_in_progress == 1 and fingerprint(db) == before
    event(decisions_pb2.CallEventRequest.ENDED)
    done = remove(owner, "r-calls")                                             # ended, balance 0: no force needed
    assert (done.calls, done.calls_in_progress, done.balance, done.ledger_archive) == (1, 0, "0.00", "")

    owner.Credit(admin_pb2.CreditRequest(tenant="r-money", amount="2.50", reference="rm-wire"), timeout=10)
    err = refused(lambda: remove(owner, "r-money"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION and "a balance of 2.50" in err.details()
    done = remove(owner, "r-money", force=True)
    assert (done.balance, done.currency, done.ledger_entries) == ("2.50", "USD", 1)
    assert rows(db, "SELECT tenant, amount_micro FROM ledger WHERE ref = 'rm-wire'") == [
        (done.ledger_archive, 2_500_000)]
    rows_ = rows(db, "SELECT role, result, version_before, version_after, detail FROM audit "
                     "WHERE action = 'RemoveTenant' AND tenant = 'r-money' ORDER BY id")
    assert [r[1] for r in rows_] == ["FAILED_PRECONDITION", "OK"]
    assert rows_[-1][:4] == ("owner", "OK", 1, 2) and "(forced)" in rows_[-1][4]


def test_gone_from_every_worker_and_from_the_store(world: dict[str, Any]) -> None:
    srv, owner, db = world["server"], world["owner"], world["db"]
    wait_for(lambda: by_worker(world, "r-gone") == {pid: "OK" for pid in srv.worker_pids()}, timeout=10)
    sets = owner.UploadDocuments(admin_pb2.UploadDocumentsRequest(
        tenant="r-gone", number=own_number("+14155550100", BLOCKS["r-gone"]),
        files=[admin_pb2.DocumentUpload(name="id.png", content=png())]), timeout=30)
    blob = world["data"] / "documents" / sets.files[0].sha256[:2] / sets.files[0].sha256[2:4] / sets.files[0].sha256
    assert blob.exists()
    admin_of_it = stub(world, "tenant-admin")
    admin_of_it.GetBalance(admin_pb2.BalanceRequest(tenant="r-gone"), timeout=10)    # its token works before

    done = remove(owner, "r-gone")
    removed = time.monotonic()
    assert (done.last_version, done.removed_version, done.versions, done.numbers) == (1, 2, 1, 3)
    assert done.document_sets == 1 and done.document_files == 1 and not blob.exists()
    assert list(done.tokens_revoked) == [token_id(world["tokens"]["tenant-admin"])]
    # every worker answers NOT_FOUND within about a second (workers poll every 0.1 s here)
    wait_for(lambda: by_worker(world, "r-gone", tries=60) == {pid: "NOT_FOUND" for pid in srv.worker_pids()},
             timeout=5)
    took = time.monotonic() - removed
    assert took < 2.0, took
    assert srv.count("tenant_forgotten") >= 1          # the other worker let it go at its poll
    err = refused(lambda: owner.GetSettings(admin_pb2.GetSettingsRequest(tenant="r-gone"), timeout=10))
    assert err.code() == grpc.StatusCode.NOT_FOUND
    assert [t.tenant for t in owner.Stats(admin_pb2.StatsRequest(), timeout=10).tenants if t.tenant == "r-gone"] == []
    history = owner.ListVersions(admin_pb2.ListVersionsRequest(tenant="r-gone"), timeout=10).versions
    assert [(v.version, v.kind, v.in_force) for v in history] == [(2, "removed", False)]
    for table in ("calls", "number_owners", "document_sets", "accounts", "snapshots", "current", "tenant_facts"):
        assert rows(db, f'SELECT count(*) FROM "{table}" WHERE tenant = ?', "r-gone") == [(0,)], table
    # its numbers are free, its token is revoked (in force within the token cache's 2 s), the others untouched
    with pytest.raises(grpc.RpcError):
        owner.NumberOwner(admin_pb2.NumberOwnerRequest(number=own_number("+14155550100", BLOCKS["r-gone"])),
                          timeout=10)
    wait_for(lambda: _code(lambda: admin_of_it.GetBalance(admin_pb2.BalanceRequest(tenant="r-gone"), timeout=10))
             == "UNAUTHENTICATED", timeout=5)
    assert set(by_worker(world, "acme").values()) == {"OK"}
    # a push under the same id makes a new tenant, whose versions go on after the removal
    d = example_doc("r-gone", BLOCKS["r-gone"])
    again = owner.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(d).encode()), timeout=60)
    assert again.version == 3
    wait_for(lambda: by_worker(world, "r-gone") == {pid: "OK" for pid in srv.worker_pids()}, timeout=5)
    done = remove(owner, "r-gone")
    assert done.removed_version == 4


def _code(fn: Any) -> str:
    try:
        fn()
        return "OK"
    except grpc.RpcError as exc:
        return exc.code().name


def test_the_command(world: dict[str, Any], capsys: pytest.CaptureFixture[str],
                     monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cli.main import main

    monkeypatch.setenv("CALLGATE_TOKEN", world["tokens"]["owner"])
    address = world["server"].address
    assert main(["tenant", "remove", "--tenant", "r-cli", "--confirm", "r-clj", "--server", address]) == 2
    assert "--confirm 'r-clj' is not the tenant 'r-cli'" in capsys.readouterr().err
    assert main(["--server", address, "tenant", "remove", "--tenant", "r-cli", "--confirm", "r-cli",
                 "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would be removed; a dry run: nothing was removed" in out and "3 number(s) released" in out
    assert main(["tenant", "remove", "--tenant", "r-cli", "--confirm", "r-cli", "--server", address,
                 "--json"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert (reply["tenant"], reply["dry_run"], reply["numbers"]) == ("r-cli", False, 3)
    assert main(["tenant", "remove", "--tenant", "r-cli", "--confirm", "r-cli", "--server", address]) == 2
    assert "NOT_FOUND: tenant 'r-cli' has no settings" in capsys.readouterr().err
    monkeypatch.setenv("CALLGATE_TOKEN", world["tokens"]["operator"])
    assert main(["tenant", "remove", "--tenant", "acme", "--confirm", "acme", "--server", address]) == 2
    assert "PERMISSION_DENIED" in capsys.readouterr().err
