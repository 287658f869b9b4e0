"""The store's record of which proxy replica holds which snapshot version of which tenant (server/store/replicas.py):
installs (ACK) and refusals (NACK) folded into one row per (replica, tenant), late and repeated reports never moving
a row back, reports for tenants that do not exist ignored, every field checked before anything is written, rows
forgotten by the replica and removed with the tenant.  Every test that takes `store` runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from server.store.api import ReplicaRecord, ReplicaReport, Store, StoreDamaged
from server.store.base import STORE_METHODS
from server.store.replicas import LIST_LIMIT
from server.store.sqlite import SQLiteStore

from .store_cases import doc, snap

A, B, C = "a" * 64, "b" * 64, "c" * 64


def tenant(store: SQLiteStore, name: str, versions: int = 1) -> None:
    for v in range(versions):
        d = doc(name, comment=f"v{v + 1}")
        store.commit_version(name, "push", d, snap(d), v)


def ack(version: int, checksum: str = A, replica: str = "edge-1", tenant: str = "acme", **kw: Any) -> ReplicaReport:
    return ReplicaReport(replica, tenant, version, checksum, True, **kw)


def nack(version: int, checksum: str = B, reason: str = "bad snapshot", replica: str = "edge-1",
         tenant: str = "acme", **kw: Any) -> ReplicaReport:
    return ReplicaReport(replica, tenant, version, checksum, False, reason=reason, **kw)


def one(store: SQLiteStore, replica: str = "edge-1", tenant: str = "acme") -> ReplicaRecord:
    rows = store.list_replicas(tenant, replica)
    assert len(rows) == 1, rows
    return rows[0]


def state(row: ReplicaRecord) -> tuple[Any, ...]:
    """What a row says but its times, peer and token."""
    return (row.version, row.checksum, row.refused_version, row.refused_checksum, row.refused_reason)


def test_the_methods_are_the_store_protocols_and_named_on_failure(store: SQLiteStore) -> None:
    s: Store = store            # mypy checks the protocol here
    assert s.list_replicas() == []
    for method in ("record_replicas", "forget_replicas", "list_replicas"):
        assert method in STORE_METHODS                     # wrapped by name_failures: faults come out named
        assert hasattr(getattr(type(store), method), "__wrapped__")


def test_an_install_then_the_list(store: SQLiteStore) -> None:
    tenant(store, "acme")
    store.record_replicas([ack(1, peer="ipv4:10.0.0.7:40000", token_id="ab12cd34ef56")], at=1000.5)
    assert store.list_replicas() == [ReplicaRecord(
        replica="edge-1", tenant="acme", version=1, checksum=A, installed_at=1000.5, refused_version=0,
        refused_checksum="", refused_reason="", refused_at=0.0, peer="ipv4:10.0.0.7:40000", token_id="ab12cd34ef56",
        seen_at=1000.5)]
    # `at` left out: now
    store.record_replicas([ack(1, replica="edge-2", checksum=A.upper())])
    row = one(store, "edge-2")
    assert row.checksum == A                                # stored in lower case
    assert abs(row.seen_at - time.time()) < 60 and row.installed_at == row.seen_at


def test_a_refusal_keeps_the_installed_version_and_says_why(store: SQLiteStore) -> None:
    tenant(store, "acme", 2)
    store.record_replicas([ack(1)], at=100)
    store.record_replicas([nack(2, reason="x" * 600, peer="p" * 200, token_id="t" * 200)], at=110)
    row = one(store)
    assert (row.version, row.checksum, row.installed_at) == (1, A, 100.0)        # keeps what it had
    assert (row.refused_version, row.refused_checksum, row.refused_at) == (2, B, 110.0)
    assert row.refused_reason == "x" * 500                                       # clipped
    assert (row.peer, row.token_id, row.seen_at) == ("p" * 128, "t" * 128, 110.0)
    # a refusal before any install: a row with no version installed
    store.record_replicas([nack(2, replica="edge-2", reason="cannot parse\x00it")], at=120)
    row = one(store, "edge-2")
    assert (row.version, row.checksum, row.installed_at) == (0, "", 0.0)
    assert (row.refused_version, row.refused_reason) == (2, "cannot parse\ufffdit")   # a NUL is not storable


def test_a_later_install_clears_the_refusal(store: SQLiteStore) -> None:
    tenant(store, "acme", 5)
    store.record_replicas([ack(1), nack(3)], at=100)
    store.record_replicas([ack(2, C)], at=110)             # an install older than the refusal: it stands
    assert state(one(store)) == (2, C, 3, B, "bad snapshot")
    store.record_replicas([ack(3, B)], at=120)             # the refused version installed after all
    row = one(store)
    assert state(row) == (3, B, 0, "", "") and (row.installed_at, row.refused_at) == (120.0, 0.0)
    store.record_replicas([nack(4, C)], at=130)
    store.record_replicas([ack(4, A)], at=140)
    assert state(one(store)) == (4, A, 0, "", "")
    # a refusal and the install that supersedes it in one batch: in order
    store.record_replicas([nack(5, A, replica="edge-2"), ack(5, A, replica="edge-2")], at=150)
    store.record_replicas([ack(3, A, replica="edge-3"), nack(5, replica="edge-3")], at=150)
    assert [state(r) for r in store.list_replicas("acme")] == [
        (4, A, 0, "", ""), (5, A, 0, "", ""), (3, A, 5, B, "bad snapshot")]


def test_each_report_may_carry_when_it_was_heard(store: SQLiteStore) -> None:
    """The server stamps each report as it hears it: a batch written later (the store away meanwhile) keeps
    those times, and the batch's own `at` is only for reports without one."""
    tenant(store, "acme", 3)
    store.record_replicas([ack(1, at=100.0), nack(2, at=105.5), ack(1, replica="edge-2")], at=900)
    row = one(store)
    assert (row.installed_at, row.refused_at, row.seen_at) == (100.0, 105.5, 105.5)
    assert one(store, "edge-2").installed_at == 900.0


def test_a_refusal_of_the_installed_version_rebuilt_stands(store: SQLiteStore) -> None:
    """The version a replica holds, rebuilt with another checksum and refused: the replica keeps deciding on the
    one it has, and the row says so, until an install of the refused one, or of a later version, comes after."""
    tenant(store, "acme", 3)
    store.record_replicas([ack(2, A)], at=100)
    store.record_replicas([nack(2, B, reason="rebuilt, refused")], at=200)
    row = one(store)
    assert state(row) == (2, A, 2, B, "rebuilt, refused") and (row.installed_at, row.refused_at) == (100.0, 200.0)
    store.record_replicas([nack(2, B, reason="again")], at=250)          # a replay keeps when it was refused
    assert (one(store).refused_at, one(store).refused_reason) == (200.0, "again")
    store.record_replicas([ack(2, A)], at=150)                          # a late install of what it holds
    assert state(one(store)) == (2, A, 2, B, "again")
    # a refusal of what it holds, or one made before its install, is not a refusal of a rebuild
    store.record_replicas([nack(2, A, replica="edge-2"), ack(2, C, replica="edge-2")], at=300)
    store.record_replicas([nack(2, A, replica="edge-2")], at=290)
    store.record_replicas([nack(2, C, replica="edge-2")], at=310)
    assert state(one(store, "edge-2")) == (2, C, 0, "", "")
    # in one batch, in order: installed, then its rebuild refused
    store.record_replicas([ack(2, A, replica="edge-3"), nack(2, B, replica="edge-3")], at=300)
    assert state(one(store, "edge-3")) == (2, A, 2, B, "bad snapshot")
    # the refused checksum installed after the refusal: cleared
    store.record_replicas([ack(2, B)], at=400)
    row = one(store)
    assert state(row) == (2, B, 0, "", "") and (row.installed_at, row.refused_at) == (400.0, 0.0)
    # a later version installed clears a rebuild's refusal too
    store.record_replicas([ack(3, C, replica="edge-3")], at=500)
    assert state(one(store, "edge-3")) == (3, C, 0, "", "")


def test_reports_of_one_version_heard_out_of_order_by_servers_with_other_clocks(store: SQLiteStore) -> None:
    """Each report's time is its server's clock: the row comes out true whichever order they arrive in."""
    tenant(store, "acme", 3)
    # installed A, refused B (heard by a server whose clock is fast), then B installed after all (5 s later)
    store.record_replicas([ack(2, A, at=10.0), nack(2, B, at=25.0), ack(2, B, at=22.0)])
    assert state(one(store)) == (2, B, 0, "", "")
    # installed A at 10, refused the rebuild B at 20, installed the rebuild C at 30; heard C, then A late, then B
    store.record_replicas([ack(2, C, replica="edge-2", at=30.0)])
    store.record_replicas([ack(2, A, replica="edge-2", at=10.0)])
    store.record_replicas([nack(2, B, replica="edge-2", at=20.0)])
    assert state(one(store, "edge-2")) == (2, C, 0, "", "")
    # a late refusal of another checksum of the version refused does not replace the later one
    store.record_replicas([ack(1, A, replica="edge-3", at=5.0), nack(3, C, replica="edge-3", reason="C", at=30.0)])
    store.record_replicas([nack(3, B, replica="edge-3", reason="B", at=20.0)])
    row = one(store, "edge-3")
    assert (row.refused_version, row.refused_checksum, row.refused_reason, row.refused_at) == (3, C, "C", 30.0)


def test_an_older_or_late_report_does_not_move_the_row_back(store: SQLiteStore) -> None:
    tenant(store, "acme", 3)
    store.record_replicas([ack(3, C)], at=100)
    before = one(store)
    store.record_replicas([ack(2, B), ack(1, A), nack(2), nack(3, A)], at=90)   # late, and older
    assert one(store) == before                                                # not even seen_at: they are older
    store.record_replicas([ack(2, B), nack(1)], at=200)                        # older versions, reported later
    row = one(store)
    assert state(row) == state(before) and row.installed_at == 100.0 and row.seen_at == 200.0
    # a refusal of 6 stands against a late refusal of 5
    store.record_replicas([nack(6, A, reason="six")], at=210)
    store.record_replicas([nack(5, B, reason="five")], at=220)
    row = one(store)
    assert (row.refused_version, row.refused_checksum, row.refused_reason, row.refused_at) == (6, A, "six", 210.0)
    # a later report with an earlier `at` (another server's clock) leaves peer, token and seen_at as they were
    store.record_replicas([ack(3, C, peer="old", token_id="old")], at=150)
    assert (one(store).peer, one(store).seen_at) == ("", 220.0)


def test_a_replay_changes_nothing_but_seen_at(store: SQLiteStore) -> None:
    tenant(store, "acme", 2)
    who = {"peer": "ipv4:10.0.0.7:40000", "token_id": "ab12cd34ef56"}
    store.record_replicas([ack(1, **who), nack(2, **who)], at=100)
    before = one(store)
    assert (before.installed_at, before.refused_at, before.seen_at, before.peer) == (100.0, 100.0, 100.0, who["peer"])
    store.record_replicas([ack(1, **who), nack(2, **who)], at=100)
    assert one(store) == before
    store.record_replicas([ack(1, **who), nack(2, **who)], at=300)
    assert one(store) == replace(before, seen_at=300.0)
    store.record_replicas([ack(1, **who)], at=310)
    assert one(store) == replace(before, seen_at=310.0)
    # a replay of the refusal keeps when it was first refused (its reason may be new)
    store.record_replicas([nack(2, reason="still bad", **who)], at=400)
    assert one(store) == replace(before, seen_at=400.0, refused_reason="still bad")
    # the installed version with another checksum (a rebuilt snapshot): taken
    store.record_replicas([ack(1, C, **who)], at=500)
    row = one(store)
    assert (row.version, row.checksum, row.installed_at, row.refused_version) == (1, C, 500.0, 2)


def test_a_report_for_a_tenant_that_does_not_exist_is_ignored(store: SQLiteStore) -> None:
    tenant(store, "acme")
    store.record_replicas([ack(1, tenant="ghost"), ack(1), nack(2, tenant="nobody")], at=100)
    assert [(r.replica, r.tenant) for r in store.list_replicas()] == [("edge-1", "acme")]
    store.record_replicas([ack(1, tenant="ghost")], at=100)
    assert store.list_replicas("ghost") == []


BAD_REPORTS: list[tuple[dict[str, Any], str]] = [
    ({"replica": ""}, r"reports\[1\]\.replica must be 1 to 128"),
    ({"replica": "h" * 129}, r"reports\[1\]\.replica must be 1 to 128"),
    ({"replica": "edge\n1"}, r"reports\[1\]\.replica .* control"),
    ({"replica": 7}, r"reports\[1\]\.replica must be a string"),
    ({"tenant": "Not A Tenant!"}, r"reports\[1\]\.tenant"),
    ({"tenant": ""}, r"reports\[1\]\.tenant"),
    ({"version": 0}, r"reports\[1\]\.version must be >= 1"),
    ({"version": True}, r"reports\[1\]\.version must be an integer"),
    ({"version": 2**63}, r"reports\[1\]\.version .* 64 bits"),
    ({"checksum": "a" * 63}, r"reports\[1\]\.checksum must be a SHA-256"),
    ({"checksum": "g" * 64}, r"reports\[1\]\.checksum must be a SHA-256"),
    ({"checksum": None}, r"reports\[1\]\.checksum must be a SHA-256"),
    ({"installed": 1}, r"reports\[1\]\.installed must be a bool"),
    ({"reason": None}, r"reports\[1\]\.reason must be a string"),
    ({"peer": b"x"}, r"reports\[1\]\.peer must be a string"),
    ({"token_id": 5}, r"reports\[1\]\.token_id must be a string"),
    ({"at": float("nan")}, r"reports\[1\]\.at must be epoch seconds"),
    ({"at": -1}, r"reports\[1\]\.at must be epoch seconds"),
    ({"at": "now"}, r"reports\[1\]\.at must be epoch seconds"),
]


@pytest.mark.parametrize("bad", BAD_REPORTS, ids=[f"{next(iter(f))}-{i}" for i, (f, _) in enumerate(BAD_REPORTS)])
def test_a_batch_with_one_bad_report_writes_none_of_it(store: SQLiteStore, bad: tuple[dict[str, Any], str]) -> None:
    fields, message = bad
    tenant(store, "acme", 2)
    store.record_replicas([ack(1)], at=100)
    before = store.list_replicas()
    with pytest.raises(ValueError, match=message):
        store.record_replicas([ack(2), replace(ack(2, replica="edge-2"), **fields), nack(2)], at=200)
    assert store.list_replicas() == before


def test_the_arguments_themselves_are_checked(store: SQLiteStore) -> None:
    tenant(store, "acme")
    for reports, message in ((ack(1), "reports must be a list"), ("edge-1", "reports must be a list"),
                             ([ack(1), ("edge-1", "acme")], r"reports\[1\] must be a ReplicaReport")):
        with pytest.raises(ValueError, match=message):
            store.record_replicas(reports, at=1)   # type: ignore[arg-type]
    for at in (-1, float("nan"), float("inf"), True, "now"):
        with pytest.raises(ValueError, match="at must be epoch seconds"):
            store.record_replicas([ack(1)], at=at)   # type: ignore[arg-type]
    store.record_replicas([], at=1)                                         # nothing to do
    with pytest.raises(ValueError, match="replica must be 1 to 128"):
        store.forget_replicas("", ["acme"])
    with pytest.raises(ValueError, match="tenants must be a list"):
        store.forget_replicas("edge-1", "acme")
    with pytest.raises(ValueError, match=r"tenants\[1\]"):
        store.forget_replicas("edge-1", ["acme", "Bad Id"])
    with pytest.raises(ValueError, match="tenant"):
        store.list_replicas(tenant="Bad Id")
    with pytest.raises(ValueError, match="replica"):
        store.list_replicas(replica="x" * 129)
    assert store.list_replicas() == []


def test_forget_replicas(store: SQLiteStore) -> None:
    for name in ("acme", "beta", "gamma"):
        tenant(store, name)
    store.record_replicas([ack(1, replica=r, tenant=t)
                           for r in ("edge-1", "edge-2") for t in ("acme", "beta", "gamma")], at=100)
    store.forget_replicas("edge-1", ["acme", "gamma", "ghost"])              # one it never had: nothing to do
    store.forget_replicas("edge-3", ["acme"])
    store.forget_replicas("edge-2", [])
    assert [(r.replica, r.tenant) for r in store.list_replicas()] == [
        ("edge-1", "beta"), ("edge-2", "acme"), ("edge-2", "beta"), ("edge-2", "gamma")]
    # reported again after being forgotten: a new row
    store.record_replicas([nack(2, tenant="acme")], at=200)
    assert state(one(store)) == (0, "", 2, B, "bad snapshot")


def test_filter_by_tenant_and_by_replica(store: SQLiteStore) -> None:
    for name in ("acme", "beta"):
        tenant(store, name)
    # written out of order: listed by replica, then tenant
    store.record_replicas([ack(1, replica=r, tenant=t)
                           for r in ("edge-b", "edge-a", "edge-c") for t in ("beta", "acme")], at=100)

    def keys(rows: list[ReplicaRecord]) -> list[tuple[str, str]]:
        return [(r.replica, r.tenant) for r in rows]

    assert keys(store.list_replicas()) == [(r, t) for r in ("edge-a", "edge-b", "edge-c") for t in ("acme", "beta")]
    assert keys(store.list_replicas(tenant="beta")) == [("edge-a", "beta"), ("edge-b", "beta"), ("edge-c", "beta")]
    assert keys(store.list_replicas(replica="edge-b")) == [("edge-b", "acme"), ("edge-b", "beta")]
    assert keys(store.list_replicas("acme", "edge-c")) == [("edge-c", "acme")]
    assert store.list_replicas(tenant="gamma") == [] and store.list_replicas(replica="edge-z") == []


def test_at_most_ten_thousand_rows(store: SQLiteStore) -> None:
    tenant(store, "acme")
    store.record_replicas([ack(1, replica=f"edge-{i:05d}") for i in range(LIST_LIMIT + 5)], at=100)
    rows = store.list_replicas(tenant="acme")
    assert len(rows) == LIST_LIMIT == 10_000 and rows[-1].replica == f"edge-{LIST_LIMIT - 1:05d}"


def test_removing_the_tenant_deletes_its_rows(store: SQLiteStore) -> None:
    for name in ("acme", "beta"):
        tenant(store, name, 2)
    store.record_replicas([ack(2, tenant="acme"), ack(1, tenant="beta"), nack(2, replica="edge-2", tenant="acme")],
                          at=100)
    dry = store.remove_tenant("acme", dry_run=True)
    assert dry.dry_run and len(store.list_replicas("acme")) == 2                 # a dry run removes nothing
    store.remove_tenant("acme")
    assert [(r.replica, r.tenant) for r in store.list_replicas()] == [("edge-1", "beta")]
    # a replica's late report about the removed tenant is ignored
    store.record_replicas([ack(2, tenant="acme")], at=110)
    assert store.list_replicas("acme") == []
    # the tenant made again: its replicas report afresh
    tenant(store, "acme")
    store.record_replicas([ack(4, tenant="acme")], at=120)
    assert state(one(store, tenant="acme")) == (4, A, 0, "", "")


def test_a_store_fault_is_named(store: SQLiteStore) -> None:
    tenant(store, "acme")
    with store._transaction(True) as conn:     # the table gone: a store that is not what this code expects
        conn.execute("DROP TABLE replica_reports")
    for call in (lambda: store.record_replicas([ack(1)], at=1), lambda: store.list_replicas(),
                 lambda: store.forget_replicas("edge-1", ["acme"])):
        with pytest.raises(StoreDamaged) as caught:
            call()
        assert caught.value.kind == "schema"


def test_the_schema_on_sqlite(db: Path) -> None:
    SQLiteStore(db).close()
    conn = sqlite3.connect(db)
    try:
        plan = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM replica_reports WHERE tenant = ? ORDER BY replica, tenant", ("acme",)))
        assert "replica_reports_by_tenant" in plan and "TEMP B-TREE" not in plan
        pk = [r[1] for r in sorted(conn.execute("PRAGMA table_info(replica_reports)"), key=lambda r: r[5]) if r[5]]
        assert pk == ["replica", "tenant"]
    finally:
        conn.close()


def test_callgate_replicas_says_which_refusal_it_is() -> None:
    """`callgate replicas`' state column (server/cli/replicas.py), from the rows ListReplicas returns."""
    from callgate.v1 import admin_pb2
    from server.cli.replicas import replica_state

    def info(**kw: Any) -> Any:
        return admin_pb2.ReplicaInfo(replica="edge-1", tenant="acme", checksum=A, **kw)

    assert replica_state(info(version=2, in_force=2)) == "in step"
    assert replica_state(info(version=1, in_force=2)) == "behind"
    assert replica_state(info(version=2, in_force=0)) == "tenant gone"
    assert replica_state(info(version=1, in_force=2, refused_version=2, refused_checksum=B,
                              refused_reason="too big")) == "REFUSED version 2: too big"
    assert replica_state(info(version=2, in_force=2, refused_version=2, refused_checksum=B, refused_reason="bad")) == (
        f"REFUSED version 2 as rebuilt (checksum {B[:12]}; it holds {A[:12]}): bad")


def test_callgate_replicas_names_the_token_that_reported_each_row() -> None:
    """A replica's name is its own choice, not bound to a token: the table shows which token reported each row,
    so another proxy reporting under a host's name shows as another token."""
    from callgate.v1 import admin_pb2
    from server.cli.replicas import replica_table

    rows = [admin_pb2.ReplicaInfo(replica="edge-1", tenant="acme", checksum=A, version=2, in_force=2, seen_at=1.0,
                                  token_id="tok-edge-1"),
            admin_pb2.ReplicaInfo(replica="edge-1", tenant="beta", checksum=A, version=2, in_force=2, seen_at=1.0,
                                  token_id="tok-mallory"),
            admin_pb2.ReplicaInfo(replica="edge-2", tenant="acme", checksum=A, version=1, in_force=2)]
    header, *lines = replica_table(rows)
    assert header.split()[-2:] == ["token", "state"]
    assert [line.split()[0] for line in lines] == ["edge-1", "edge-1", "edge-2"]
    assert "tok-edge-1" in lines[0] and "tok-mallory" in lines[1] and lines[1].endswith("in step")
    assert lines[2].split()[-2:] == ["-", "behind"]
