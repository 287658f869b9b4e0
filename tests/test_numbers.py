"""Number ownership in the store (spec §7): one tenant per number, moved only with the versions that move it.

Real SQLite files; the race runs in two processes sharing one file.  The
transfer rules (server/numbers.py) are checked on the example document.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from engine.snapshot import build
from server.rules import numbers
from server.store.api import NumberTaken, TenantMissing, VersionConflict, VersionWrite
from server.store.sqlite import MIGRATIONS, SCHEMA_VERSION, SQLiteStore, split_sql

from .serving import example_doc
from .test_store import run_processes


def doc(tenant: str, *owned: str, line: str = "l1") -> bytes:
    return json.dumps({"tenant": tenant, "currency": "USD", "status": "active",
                       "numbers": [{"number": n, "line": line, "country": "US"} for n in owned]}).encode()


def push(store: SQLiteStore, tenant: str, *owned: str, expected: int | None = None, **kw: Any) -> int:
    return store.commit_version(tenant, "push", doc(tenant, *owned, **kw), b"snap", expected)


def owners(store: SQLiteStore) -> dict[str, str]:
    return {o.number: o.tenant for o in store.number_owners()}


@pytest.fixture
def store(tmp_path: Path):
    s = SQLiteStore(tmp_path / "callgate.sqlite")
    yield s
    s.close()


def test_a_number_belongs_to_one_tenant(store: SQLiteStore) -> None:
    push(store, "acme", "+14155550100", "+14155550199")
    with pytest.raises(NumberTaken) as info:
        push(store, "beta", "+14155550777", "+14155550199")
    message = str(info.value)
    assert "numbers[1].number: +14155550199 belongs to another tenant" in message
    assert "acme" not in message                                     # the holder is never named
    assert info.value.taken == [("+14155550199", "numbers[1].number")]
    assert store.current_versions() == {"acme": 1}                   # refused whole: beta was not created
    assert owners(store) == {"+14155550100": "acme", "+14155550199": "acme"}
    owner = store.number_owner("+14155550199")
    assert owner is not None and (owner.tenant, owner.line, owner.version) == ("acme", "l1", 1)
    assert store.number_owner("+14155550777") is None


def test_a_new_version_releases_what_it_no_longer_lists(store: SQLiteStore) -> None:
    push(store, "acme", "+14155550100", "+14155550199")
    push(store, "acme", "+14155550100", line="l2")                   # lets +...199 go, moves +...100 to l2
    assert owners(store) == {"+14155550100": "acme"}
    assert store.number_owner("+14155550100").line == "l2"          # type: ignore[union-attr]
    assert push(store, "beta", "+14155550199") == 1                 # free now
    # a rollback to a version that listed a number held by someone else now is refused too
    first = store.get_version("acme", 1).document
    assert first is not None
    with pytest.raises(NumberTaken, match=r"numbers\[1\].number: \+14155550199"):
        store.commit_version("acme", "rollback", first, b"snap", None)
    assert store.current_versions() == {"acme": 2, "beta": 1}


def test_a_transfer_is_two_versions_in_one_transaction(store: SQLiteStore) -> None:
    push(store, "acme", "+14155550100", "+14155550199")
    push(store, "beta", "+14155550777")
    writes = [VersionWrite("acme", "transfer", doc("acme", "+14155550100"), b"a", None, 1),
              VersionWrite("beta", "transfer", doc("beta", "+14155550777", "+14155550199"), b"b", None, 1)]
    assert store.commit_versions(writes) == [2, 2]
    assert owners(store) == {"+14155550100": "acme", "+14155550199": "beta", "+14155550777": "beta"}
    # all or nothing: a conflict on the second write leaves the first undone too
    stale = [VersionWrite("beta", "transfer", doc("beta", "+14155550777"), b"b", None, 2),
             VersionWrite("acme", "transfer", doc("acme", "+14155550100", "+14155550199"), b"a", None, 1)]
    with pytest.raises(VersionConflict):
        store.commit_versions(stale)
    assert store.current_versions() == {"acme": 2, "beta": 2}
    assert owners(store)["+14155550199"] == "beta"
    with pytest.raises(ValueError, match="one new version per tenant"):
        store.commit_versions([writes[0], writes[0]])


def test_creating_a_tenant_can_be_refused_in_the_store(store: SQLiteStore) -> None:
    with pytest.raises(TenantMissing, match="creating a tenant is an operator's or an owner's act"):
        store.commit_version("newco", "push", doc("newco"), b"s", None, may_create=False)
    assert store.current_versions() == {}
    push(store, "newco")
    assert store.commit_version("newco", "push", doc("newco"), b"s", None, may_create=False) == 2


def test_tenant_admin_tokens_name_existing_tenants_only(store: SQLiteStore) -> None:
    with pytest.raises(TenantMissing, match="tenant 'newco' does not exist"):
        store.add_token("abc123", "0" * 64, "tenant-admin", ["newco"], 0, "")
    assert store.list_tokens() == []
    push(store, "newco")
    assert store.add_token("abc123", "0" * 64, "tenant-admin", ["newco"], 0, "").tenants == ("newco",)
    with pytest.raises(ValueError, match="not a valid tenant id"):
        store.add_token("abc124", "0" * 64, "tenant-admin", ["../x"], 0, "")


def test_numbers_given_must_match_the_document(store: SQLiteStore) -> None:
    with pytest.raises(ValueError, match="do not match the document"):
        store.commit_version("acme", "push", doc("acme", "+14155550100"), b"s", None,
                             numbers=(("+14155550199", "l1"),))
    with pytest.raises(ValueError, match=r"not an E\.164 number"):
        store.commit_version("acme", "push", doc("acme"), b"s", None, numbers=(("14155550199", "l1"),))
    assert store.current_versions() == {}


def _claim(db: Path, tenant: str, number: str, rounds: int, barrier: Any, out: Any) -> None:
    store = SQLiteStore(db)
    won = []
    for r in range(rounds):
        barrier.wait(timeout=30)
        try:
            store.commit_version(f"{tenant}{r}", "push", doc(f"{tenant}{r}", f"{number[:-3]}{r:03d}"), b"s", 0)
            won.append(r)
        except NumberTaken:
            pass
    store.close()
    out.put((tenant, won))


def test_two_processes_claiming_one_number_at_once_never_both_hold_it(tmp_path: Path) -> None:
    """50 rounds: two processes create two tenants at the same moment, both listing the round's number."""
    db = tmp_path / "callgate.sqlite"
    SQLiteStore(db).close()
    rounds = 50
    results = dict(run_processes(_claim, [(db, "a", "+14155550000", rounds), (db, "b", "+14155550000", rounds)]))
    assert sorted(results["a"] + results["b"]) == list(range(rounds))     # exactly one winner in every round
    store = SQLiteStore(db)
    try:
        held = store.number_owners()
        assert len(held) == rounds and len({o.number for o in held}) == rounds
        for o in held:
            r = int(o.number[-3:])
            assert o.tenant == (f"a{r}" if r in results["a"] else f"b{r}")
        assert len(store.current_versions()) == rounds                    # the loser of a round was not created
    finally:
        store.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT number) FROM number_owners").fetchone() == (50, 50)



# -- a store made before ownership ----------------------------------------------------------------

def old_store(db: Path, documents: dict[str, bytes]) -> None:
    """A store at schema 3 (before ownership) holding these tenants' documents as version 1."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                     "applied_at INTEGER NOT NULL)")
        for version, description, script in MIGRATIONS[:3]:
            for statement in split_sql(script):
                conn.execute(statement)
            conn.execute("INSERT INTO schema_migrations VALUES (?, ?, 0)", (version, description))
        for tenant, document in documents.items():
            conn.execute("INSERT INTO versions (tenant, version, kind, document, created_at, comment) "
                         "VALUES (?, 1, 'push', ?, ?, 'old')", (tenant, document, int(time.time())))
            conn.execute('INSERT INTO "current" (tenant, version) VALUES (?, 1)', (tenant,))
    finally:
        conn.close()


def test_migration_reports_numbers_held_twice_and_drops_nothing(tmp_path: Path) -> None:
    db = tmp_path / "callgate.sqlite"
    old_store(db, {"acme": doc("acme", "+14155550100", "+14155550199"),
                   "newco": doc("newco", "+14155550199", "+14155550300"),
                   "third": doc("third", "+14155550199")})
    store = SQLiteStore(db)
    try:
        assert SCHEMA_VERSION >= 4
        assert store.ownership_conflicts() == {"+14155550199": [("acme", "l1"), ("newco", "l1"), ("third", "l1")]}
        assert owners(store) == {"+14155550100": "acme", "+14155550300": "newco"}   # the rest is owned
        # a write cannot claim a number in conflict: it stays unowned until resolved
        push(store, "acme", "+14155550100", "+14155550199", expected=1)
        assert store.number_owner("+14155550199") is None
        # resolving: every other claimant gets a version without it, in one transaction
        releases = [VersionWrite("newco", "resolve", doc("newco", "+14155550300"), b"n", None, 1),
                    VersionWrite("third", "resolve", doc("third"), b"t", None, 1)]
        with pytest.raises(ValueError, match="one new version for each of newco, third"):
            store.resolve_conflict("+14155550199", "acme", releases[:1])
        with pytest.raises(ValueError, match="does not list"):
            store.resolve_conflict("+14155550199", "other", releases)
        assert store.resolve_conflict("+14155550199", "acme", releases) == [2, 2]
        assert store.check_ownership() == []                               # and the full check agrees
        assert store.ownership_conflicts() == {}
        assert owners(store) == {"+14155550100": "acme", "+14155550199": "acme", "+14155550300": "newco"}
        assert store.current_versions() == {"acme": 2, "newco": 2, "third": 2}
        assert store.get_version("newco", 1).document == doc("newco", "+14155550199", "+14155550300")  # history
    finally:
        store.close()


# -- the transfer rules -------------------------------------------------------------------------------

def test_release_clears_the_number_as_a_caller_id() -> None:
    acme = example_doc("acme")
    out, entry, notes = numbers.release(acme, "+442071234567")
    assert entry["number"] == "+442071234567" and entry["line"] == "rent-1"
    assert [n["number"] for n in out["numbers"]] == ["+14155550100", "+14155550199"]
    assert "caller_id" not in out["users"][1] and out["users"][0]["caller_id"] == "+14155550100"
    assert any("u3" in n for n in notes)
    out, _, notes = numbers.release(acme, "+14155550100")
    assert "default_caller_id" not in out and all("caller_id" not in u for u in out["users"][:1])
    build(json.dumps(out).encode())                                     # still valid settings
    out, _, _ = numbers.release(acme, "+14155550199")
    assert "main_number" not in out
    with pytest.raises(numbers.TransferRefused, match="does not list"):
        numbers.release(acme, "+19995550000")
    assert acme == example_doc("acme")                                  # the input is left alone


def test_adopt_needs_a_line_of_the_receiver() -> None:
    _, entry, _ = numbers.release(example_doc("acme"), "+14155550100")
    beta = example_doc("beta", 601)
    beta["lines"][0]["id"] = "trunk"
    beta["numbers"] = [{**n, "line": "trunk"} for n in beta["numbers"]]
    beta["backup"]["line"] = "trunk"
    with pytest.raises(numbers.TransferRefused, match=r"has no line 'rent-1'.*one of trunk"):
        numbers.adopt(beta, entry)
    out, notes = numbers.adopt(beta, entry, line="trunk")
    moved = out["numbers"][-1]
    assert moved["number"] == "+14155550100" and moved["line"] == "trunk" and moved["route_to"] == "sales"
    assert any("needs documents" in n for n in notes)
    build(json.dumps(out).encode())
    beta["queue_groups"] = [g for g in beta["queue_groups"] if g["id"] != "sales"]
    beta["users"] = [{**u, "groups": [g for g in u["groups"] if g != "sales"]} for u in beta["users"]]
    beta["numbers"] = [{k: v for k, v in n.items() if k != "route_to"} for n in beta["numbers"]]
    out, notes = numbers.adopt(beta, entry, line="trunk")
    assert "route_to" not in out["numbers"][-1] and any("no queue group" in n for n in notes)
    with pytest.raises(numbers.TransferRefused, match="no queue group 'nope'"):
        numbers.adopt(beta, entry, line="trunk", route_to="nope")
    with pytest.raises(numbers.TransferRefused, match="lists \\+14155550100 already"):
        numbers.adopt(out, entry, line="trunk")


def test_a_document_listing_a_number_twice_migrates_to_one_owner(tmp_path: Path) -> None:
    db = tmp_path / "callgate.sqlite"
    old_store(db, {"acme": doc("acme", "+14155550100", "+14155550100")})     # only a hand-edited store has it
    store = SQLiteStore(db)
    try:
        assert owners(store) == {"+14155550100": "acme"} and store.ownership_conflicts() == {}
    finally:
        store.close()


def test_tools_beside_a_server_never_migrate_a_store(tmp_path: Path) -> None:
    from server.store.sqlite import SchemaTooOld

    db = tmp_path / "callgate.sqlite"
    old_store(db, {"acme": doc("acme", "+14155550100")})
    with pytest.raises(SchemaTooOld, match="stop every server on it, start this release's `callgate serve` once"):
        SQLiteStore(db, migrate=False)
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT MAX(version) FROM schema_migrations").fetchone()[0] == 3   # untouched
    SQLiteStore(db).close()                                                  # the server migrates
    SQLiteStore(db, migrate=False).close()


def test_the_full_check_records_what_an_older_server_wrote(tmp_path: Path) -> None:
    """An older server, still running while the store was migrated, wrote a version without owners."""
    store = SQLiteStore(tmp_path / "callgate.sqlite")
    try:
        push(store, "acme", "+14155550100", "+14155550101")
        push(store, "beta", "+14155550200")
        with sqlite3.connect(tmp_path / "callgate.sqlite") as conn:   # beta v2 lists acme's number, no owner rows
            conn.execute("INSERT INTO versions (tenant, version, kind, document, created_at) VALUES "
                         "('beta', 2, 'push', ?, 0)", (doc("beta", "+14155550100", "+14155550300"),))
            conn.execute("UPDATE \"current\" SET version = 2 WHERE tenant = 'beta'")
        assert store.ownership_conflicts() == {}                              # the cheap check sees nothing
        found = store.check_ownership()
        assert found == ["+14155550100 is listed by acme, beta but held by acme: recorded as a conflict",
                         "+14155550300 is listed by beta but held by no tenant: recorded as a conflict",
                         "+14155550200 is held by beta but listed by no settings in force: let go"]
        assert store.ownership_conflicts() == {"+14155550100": [("acme", "l1"), ("beta", "l1")],
                                               "+14155550300": [("beta", "l1")]}
        assert owners(store) == {"+14155550101": "acme"}
        assert store.check_ownership() == []                                  # recorded once
    finally:
        store.close()
