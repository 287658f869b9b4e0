"""server.store.sqlite.SQLiteStore: the embedded store (spec §5), on real SQLite files.

Covers the schema migrations, settings versions (compare-and-set, history,
rollback-style commits), blacklist patches stored as rows and replayed,
snapshot pruning, the ledger, the ringing-call registry, and concurrency
between threads and between processes sharing one file.
"""

from __future__ import annotations

import functools
import json
import multiprocessing as mp
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import server.store.base
import server.store.sqlite
from server.rules import calls
from server.store.api import NotFound, Store, StoreError, VersionConflict
from server.store.sqlite import KEEP_SNAPSHOTS, MIGRATIONS, SCHEMA_VERSION, SchemaTooNew, SQLiteStore, StoreBusy

from .store_cases import doc, patch_list, raw, snap

FORK = mp.get_context("fork")   # children open their own store on the same file


def event(store: SQLiteStore, kind: str, call_id: str, user: str = "", at: int = 1, tenant: str = "acme",
          direction: str = "inbound", caller: str = "+1", called: str = "+2", rate: int = 0, increment: int = 0,
          lead: str = "on_answer") -> calls.Reply:
    """One call event through the store, with the service's rules."""
    e = (calls.Event(kind, user, at, direction, caller, called, "line-1" if rate else "", rate, increment)
         if kind == "RINGING" else calls.Event(kind, user, at))
    return store.call_event(tenant, call_id, e, rules_for(e, tenant, call_id, lead), None, "USD")


def rules_for(e: calls.Event, tenant: str, call_id: str, lead: str = "on_answer", now: int | None = None,
              **limits: int) -> Any:
    """The service's rules for one event, with the server's clock at `now` (default: the event's own instant)."""
    return functools.partial(calls.apply, event=e, tenant=tenant, call_id=call_id, lead_trigger=lead,
                             limits=calls.Limits(e.at if now is None else now, **limits))



# -- opening, pragmas, migrations ----------------------------------------------------

def test_is_a_store(store: SQLiteStore) -> None:
    s: Store = store            # mypy checks the protocol here
    assert s.current_versions() == {}


def test_open_creates_dirs_and_sets_pragmas(store: SQLiteStore, db: Path) -> None:
    assert db.exists()
    conn = store._conn()
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2          # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 10_000


def test_migrations_applied_once_and_reopen_keeps_data(db: Path) -> None:
    assert SCHEMA_VERSION == MIGRATIONS[-1][0] == len(MIGRATIONS)
    s = SQLiteStore(db)
    s.commit_version("acme", "push", doc(), b"s1", 0)
    s.credit("acme", 5_000_000, "topup", "r1")
    s.close()
    s2 = SQLiteStore(db)
    assert s2.get_version("acme").document == doc()
    assert s2.balance("acme") == 5_000_000
    s2.close()
    with raw(db) as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert rows == [(v,) for v, _, _ in MIGRATIONS]
    assert {"versions", "current", "list_patches", "snapshots", "ledger", "calls", "call_events",
            "schema_migrations", "leads", "accounts", "topups", "cards", "sandbox_charges", "rentals_seen",
            "document_sets", "document_files"} <= tables


def test_refuses_a_newer_schema(db: Path) -> None:
    SQLiteStore(db).close()
    with raw(db) as conn:
        conn.execute("INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, 'future', 0)",
                     (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match=rf"schema version {SCHEMA_VERSION + 1}, newer than this callgate"):
        SQLiteStore(db)


def test_rejects_paths_that_cannot_be_shared() -> None:
    for bad in (":memory:", "", "file:x?mode=memory"):
        with pytest.raises(ValueError):
            SQLiteStore(bad)


# -- settings versions ---------------------------------------------------------------

def test_commit_and_conflict_change_nothing(store: SQLiteStore, db: Path) -> None:
    assert store.commit_version("acme", "push", doc(), b"s1", 0, "first") == 1
    with pytest.raises(VersionConflict) as info:
        store.commit_version("acme", "push", doc(status="suspended"), b"s2", 0)
    assert (info.value.tenant, info.value.expected, info.value.actual) == ("acme", 0, 1)
    assert "at version 1, not 0" in str(info.value)
    with pytest.raises(VersionConflict):
        store.commit_version("acme", "push", doc(), b"s2", 5)
    assert store.current_versions() == {"acme": 1}
    assert [v.version for v in store.list_versions("acme")] == [1]
    assert store.snapshot("acme", 2) is None
    with raw(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 1
    assert store.commit_version("acme", "push", doc(status="suspended"), b"s2", 1) == 2
    assert store.commit_version("acme", "push", doc(), b"s3", None) == 3     # None: no check


def test_versions_history_and_in_force(store: SQLiteStore) -> None:
    docs = [doc(status=f"s{i}") for i in range(1, 5)]
    for i, d in enumerate(docs):
        assert store.commit_version("acme", "push", d, b"snap%d" % (i + 1), i, f"push {i + 1}") == i + 1
    store.commit_version("beta", "push", doc("beta"), b"b", 0)

    assert store.current_versions() == {"acme": 4, "beta": 1}
    history = store.list_versions("acme")
    assert [v.version for v in history] == [4, 3, 2, 1]
    assert [v.in_force for v in history] == [True, False, False, False]
    assert all(v.document is None and v.kind == "push" and v.tenant == "acme" for v in history)
    assert history[-1].comment == "push 1"
    assert abs(history[0].created_at - time.time()) < 60
    assert [v.version for v in store.list_versions("acme", limit=2)] == [4, 3]

    now = store.get_version("acme")
    assert (now.version, now.in_force, now.document) == (4, True, docs[3])
    old = store.get_version("acme", 2)
    assert (old.version, old.in_force, old.document, old.comment) == (2, False, docs[1], "push 2")

    with pytest.raises(NotFound, match=r"tenant 'acme' has no version 7"):
        store.get_version("acme", 7)
    with pytest.raises(NotFound, match=r"tenant 'nobody' has no settings"):
        store.get_version("nobody")
    with pytest.raises(NotFound, match=r"tenant 'nobody' has no settings"):
        store.list_versions("nobody")
    assert store.snapshot("nobody", 1) is None


def test_document_bytes_kept_exactly(store: SQLiteStore) -> None:
    exact = b'{ "tenant" : "acme",\n  "rate": 0.0200, "blacklist": [] }'
    store.commit_version("acme", "push", exact, b"s", 0)
    assert store.get_version("acme", 1).document == exact


def test_rollback_commits_an_old_document_as_new_version(store: SQLiteStore) -> None:
    store.commit_version("acme", "push", doc(status="active"), b"s1", 0)
    store.commit_version("acme", "push", doc(status="suspended"), b"s2", 1)
    patch_list(store, "acme", "blacklist", ["+14155550001"], [], snap, 2)
    old = store.get_version("acme", 1).document
    assert old is not None
    assert store.commit_version("acme", "rollback", old, b"s1 again", 3, "rollback to 1") == 4
    now = store.get_version("acme")
    assert (now.version, now.kind, now.document, now.comment) == (4, "rollback", old, "rollback to 1")
    assert store.snapshot("acme", 4) == b"s1 again"
    assert [v.kind for v in store.list_versions("acme")] == ["rollback", "patch", "push", "push"]
    # the patch history before the rollback does not leak into later versions
    result = patch_list(store, "acme", "blacklist", ["+14155550002"], [], snap, 4)
    assert json.loads(store.get_version("acme", 5).document or b"")["blacklist"] == \
        ["+14155550666", "+14155550002"]
    assert result.size == 2


def test_snapshot_pruning_keeps_the_newest_three(store: SQLiteStore, db: Path) -> None:
    for i in range(5):
        store.commit_version("acme", "push", doc(status=f"s{i}"), b"snap%d" % (i + 1), None)
    store.commit_version("beta", "push", doc("beta"), b"beta1", None)
    assert [store.snapshot("acme", v) for v in range(1, 6)] == [None, None, b"snap3", b"snap4", b"snap5"]
    patch_list(store, "acme", "blacklist", ["+14155550001"], [], snap, None)
    assert store.snapshot("acme", 3) is None
    assert store.snapshot("acme", 6) == snap(store.get_version("acme", 6).document or b"")
    assert store.snapshot("beta", 1) == b"beta1"        # per tenant
    with raw(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM snapshots WHERE tenant = 'acme'").fetchone()[0] == KEEP_SNAPSHOTS
    # the documents stay: a rollback to any version can recompile
    assert store.get_version("acme", 1).document == doc(status="s0")


def test_document_reviews_happen_once_and_rejections_are_listed(store: SQLiteStore) -> None:
    from server.store.api import AlreadyReviewed, DocumentFile

    files = [DocumentFile("ab" * 32, "id.png", "PNG", 10, 10, 100)]
    first = store.add_document_set("acme", "+14155550100", files, 1, "2026-01-02")
    other = store.add_document_set("acme", "+14155550199", files, 1, "2026-01-02")
    store.review_document_set(first.id, False, "blurred", "ops-1", 5)
    store.review_document_set(other.id, True, "", "ops-1", 5)
    assert store.rejected_numbers("acme") == {"+14155550100": "blurred"}
    assert store.approved_numbers("acme") == ["+14155550199"]
    with pytest.raises(AlreadyReviewed, match=f"set {first.id} was already rejected \\(blurred\\) by ops-1"):
        store.review_document_set(first.id, True, "", "ops-2", 6)
    assert store.document_sets("acme", "+14155550100")[0].decided_by == "ops-1"      # nothing changed
    store.add_document_set("acme", "+14155550100", files, 7, "2026-01-02")            # a new set: pending
    assert store.rejected_numbers("acme") == {}


# -- input validation and injection ---------------------------------------------------------

def test_sql_injection_looking_ids_are_plain_data(store: SQLiteStore, db: Path) -> None:
    evil = "x'); DROP TABLE versions;--"
    # a tenant id follows the one rule for tenant ids: the store refuses this one before any SQL
    with pytest.raises(ValueError, match="not a valid tenant id"):
        store.commit_version(evil, "push", json.dumps({"tenant": evil}).encode(), b"s", 0)
    with pytest.raises(ValueError, match="not a valid tenant id"):
        store.credit(evil, 1, "credit", "r", "USD")
    # every other text is plain data
    tenant = "x.y-z_1"
    d = json.dumps({"tenant": tenant, "blacklist": []}).encode()
    assert store.commit_version(tenant, "push", d, b"s", 0, comment=evil) == 1
    patch_list(store, tenant, "blacklist", [evil], [], snap, 1)
    assert store.current_versions() == {tenant: 2}
    assert store.get_version(tenant, 1).document == d
    assert json.loads(store.get_version(tenant).document or b"")["blacklist"] == [evil]
    assert store.list_versions(tenant)[1].comment == evil
    assert store.credit(tenant, 1, "credit", evil, evil) and store.balance(tenant) == 1
    event(store, "RINGING", evil, evil, 1, tenant=tenant, caller=evil, called=evil)
    assert store.ringing_calls(tenant) == [(evil, evil, 1)]
    with raw(db) as conn:
        assert conn.execute("SELECT tenant FROM versions").fetchall() == [(tenant,), (tenant,)]


def test_inputs_are_validated(store: SQLiteStore) -> None:
    bad_calls = [
        lambda: store.commit_version("", "push", doc(), b"", None),
        lambda: store.commit_version(7, "push", doc(), b"", None),                   # type: ignore[arg-type]
        lambda: store.commit_version("acme", "patch", doc(), b"", None),
        lambda: store.commit_version("acme", "push", "{}", b"", None),               # type: ignore[arg-type]
        lambda: store.commit_version("acme", "push", b"[1, 2]", b"", None),
        lambda: store.commit_version("acme", "push", b"{not json", b"", None),
        lambda: store.commit_version("acme", "push", b'{"x": NaN}', b"", None),
        lambda: store.commit_version("acme", "push", doc("beta"), b"", None),
        lambda: store.commit_version("acme", "push", doc(), b"", -1),
        lambda: store.commit_version("acme", "push", doc(), b"", True),
        lambda: store.get_version("acme", 0),
        lambda: store.get_version("acme", "1"),                                      # type: ignore[arg-type]
        lambda: store.list_versions("acme", 0),
        lambda: store.snapshot("acme", 1.0),                                         # type: ignore[arg-type]
        lambda: store.credit("acme", 1.5, "topup", "r"),                             # type: ignore[arg-type]
        lambda: store.credit("acme", 2**63, "topup", "r"),
        lambda: store.credit("acme", 1, "topup", ""),
        lambda: store.credit("acme", 1, "bonus", "r"),
        lambda: event(store, "RINGING", "", "u1"),
        lambda: event(store, "RINGING", "c1", "u1", direction="sideways"),
        lambda: event(store, "RINGING", "c1", "u1", tenant=None),  # type: ignore[arg-type]
        lambda: store.calls("acme", ("ringing",), 0),
    ]
    for i, call in enumerate(bad_calls):
        with pytest.raises(ValueError):
            call()
            pytest.fail(f"bad call #{i} was accepted")
    assert store.current_versions() == {}


# -- ledger --------------------------------------------------------------------------

def test_balance_and_idempotent_credit(store: SQLiteStore) -> None:
    assert store.balance("acme") == 0
    assert store.credit("acme", 20_000_000, "topup", "pay-1") is True
    assert store.credit("acme", 20_000_000, "topup", "pay-1") is False        # retried: counted once
    assert store.credit("acme", -1_500_000, "call", "pay-1") is True          # same ref, other kind
    assert store.credit("acme", -250_000, "call", "c-2") is True
    assert store.credit("beta", 7, "topup", "pay-1") is True                  # same ref, other tenant
    assert store.balance("acme") == 18_250_000
    assert store.balance("beta") == 7


def run_processes(target: Any, args: list[tuple[Any, ...]]) -> list[Any]:
    """Start one forked process per args tuple (each gets a shared Barrier and result Queue appended), collect
    one result from each, and always reap them, so a failing child fails the test instead of hanging it."""
    barrier, out = FORK.Barrier(len(args)), FORK.Queue()
    procs = [FORK.Process(target=target, args=(*a, barrier, out), daemon=True) for a in args]
    for p in procs:
        p.start()
    try:
        return [out.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()


# -- calls ---------------------------------------------------------------------------------

def test_call_lifecycle(store: SQLiteStore, db: Path) -> None:
    assert event(store, "RINGING", "c2", "u2", 200, caller="+1999", called="+1000") == calls.Reply(
        "ringing", max_duration_s=86_400)                                 # inbound: no hold, the call max
    event(store, "RINGING", "c1", "u1", 100, caller="", called="+1000")
    event(store, "RINGING", "c3", "u3", 200, caller="+1000", called="+1888")
    event(store, "RINGING", "c1", "u9", 999)                  # rings at the next member: same call, same start
    event(store, "RINGING", "c1", "x", 50, tenant="beta")
    assert store.ringing_calls("acme") == [("c1", "u9", 100), ("c2", "u2", 200), ("c3", "u3", 200)]

    answered = event(store, "ANSWERED", "c2", "u7", 210)
    assert answered == calls.Reply("answered", True, "u7")
    assert event(store, "ANSWERED", "c2", "u7", 210) == answered       # a replay: the same answer
    with pytest.raises(calls.EventRefused, match="already answered by 'u7'"):
        event(store, "ANSWERED", "c2", "u8", 211)
    assert store.ringing_calls("acme") == [("c1", "u9", 100), ("c3", "u3", 200)]
    event(store, "TRANSFERRED", "c2", "u5", 250)
    ended = event(store, "ENDED", "c2", at=300)
    assert ended == calls.Reply("ended", talked_s=90, outcome="answered")  # inbound: no charge; on_answer: no lead
    assert event(store, "ENDED", "c2", at=301) == ended                 # a replay, even with another time
    with pytest.raises(calls.EventRefused, match="before the call's last recorded event at 999") as back:
        event(store, "ENDED", "c1", at=150)                             # instants never go back
    assert back.value.code == "FAILED_PRECONDITION"
    missed = event(store, "ENDED", "c1", at=1000)                       # ended while ringing (missed)
    assert (missed.state, missed.outcome) == ("ended", "no_answer")
    with pytest.raises(calls.EventRefused, match="already ended") as late:
        event(store, "ANSWERED", "c1", "u1", 160)
    assert late.value.code == "FAILED_PRECONDITION"
    for kind in ("ANSWERED", "TRANSFERRED", "ENDED"):
        with pytest.raises(calls.EventRefused, match="report RINGING first") as unknown:
            event(store, kind, "nope", "u1", 1)
        assert unknown.value.code == "NOT_FOUND"
    assert store.ringing_calls("acme") == [("c3", "u3", 200)]
    assert store.ringing_calls("beta") == [("c1", "x", 50)]
    with raw(db) as conn:
        row = conn.execute("SELECT state, ringing_user, answered_by, last_user, ringing_at, answered_at, ended_at "
                           "FROM calls WHERE tenant = 'acme' AND call_id = 'c2'").fetchone()
        assert conn.execute("SELECT count(*) FROM call_events WHERE call_id = 'c2'").fetchone()[0] == 4
        assert conn.execute("SELECT call_id, responsible FROM leads").fetchall() == [("c2", "u7")]
    assert row == ("ended", "u2", "u7", "u5", 200, 210, 300)


def test_outbound_call_is_charged_once_and_on_hangup_lead_names_the_last_talker(store: SQLiteStore) -> None:
    store.credit("acme", 10_000_000, "credit", "opening", "USD")
    # 0.0350 per minute in 1 s increments: 91 s cost 0.053083.. -> 0.05
    event(store, "RINGING", "o1", "u1", 1000, direction="outbound", rate=35_000, increment=1, lead="on_hangup")
    assert event(store, "ANSWERED", "o1", "u1", 1009, lead="on_hangup").create_lead is False
    event(store, "TRANSFERRED", "o1", "u2", 1050, lead="on_hangup")
    ended = event(store, "ENDED", "o1", at=1100, lead="on_hangup")
    assert ended == calls.Reply("ended", True, "u2", 91, 50_000, outcome="answered")
    assert event(store, "ENDED", "o1", at=1100, lead="on_hangup") == ended
    assert store.balance("acme") == store.ledger_sum("acme") == 9_950_000
    assert [(e.kind, e.amount_micro, e.ref, e.balance_micro) for e in store.ledger("acme")] == [
        ("call", -50_000, "o1", 9_950_000), ("credit", 10_000_000, "opening", 10_000_000)]
    assert store.lead_count("acme", "o1") == 1


def expire(store: SQLiteStore, ring_cutoff: int, talk_cutoff: int, quiet_cutoff: int, now: int) -> list[calls.Call]:
    limits = calls.Limits(now, call_max_s=300)
    return store.expire_calls(ring_cutoff, talk_cutoff, quiet_cutoff,
                              lambda c: calls.expire(c, limits, "on_hangup"), lambda t: None, lambda t: "USD")


def test_expired_calls(store: SQLiteStore) -> None:
    event(store, "RINGING", "r1", "u1", 100)
    event(store, "RINGING", "a1", "u1", 100)
    event(store, "ANSWERED", "a1", "u1", 120)
    event(store, "RINGING", "fresh", "u1", 900)
    event(store, "RINGING", "late", "u1", 50, called="+3")
    store.call_event("acme", "late", calls.Event("TRANSFERRED", "u2", 60),   # recorded at 990: heard of lately
                     rules_for(calls.Event("TRANSFERRED", "u2", 60), "acme", "late", now=990), None, "USD")
    expired = expire(store, ring_cutoff=500, talk_cutoff=110, quiet_cutoff=950, now=1000)
    assert [c.call_id for c in expired] == ["r1"]                      # "late" rang long ago but is not quiet
    assert [c.call_id for c in expire(store, 500, 500, 950, 1001)] == ["a1"]
    assert expire(store, 500, 500, 950, 1002) == []                    # once
    with pytest.raises(calls.EventRefused, match="expired"):
        event(store, "ENDED", "a1", at=1003)
    assert [c.call_id for c in store.calls("acme", ("expired",))] == ["a1", "r1"]   # by ringing time, id
    assert {c.call_id for c in store.calls("acme", ("ringing", "answered"))} == {"fresh", "late"}
    a1 = store.calls("acme", ("expired",))[0]
    assert (a1.talked_s, a1.ended_at) == (300, 1001)                   # talked up to the cap (inbound: no charge)
    assert store.lead_count("acme", "a1") == 1                         # on_hangup: somebody talked
    assert [c[0] for c in store.ringing_calls("acme", since=100)] == ["r1", "fresh"][1:]   # r1 is expired


def test_answer_race_between_threads(store: SQLiteStore) -> None:
    event(store, "RINGING", "c1", "u0", 1)
    barrier = threading.Barrier(8)
    results: list[bool] = []
    conns: set[int] = set()
    lock = threading.Lock()
    sqlite = isinstance(store, SQLiteStore)  # PostgreSQL's connections come from a pool, not one per thread

    def pick_up(user: str) -> None:
        if sqlite:
            with lock:
                conns.add(id(store._conn()))
        barrier.wait(timeout=30)    # all alive here, so the ids are of distinct live objects
        try:
            event(store, "ANSWERED", "c1", user, 2)
            won = True
        except calls.EventRefused:
            won = False
        with lock:
            results.append(won)

    threads = [threading.Thread(target=pick_up, args=(f"u{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    if not sqlite:
        return
    assert len(conns) == 8 and id(store._conn()) not in conns       # one connection per thread
    # the connections of ended threads are closed when the next one is opened
    late = threading.Thread(target=store.balance, args=("acme",))
    late.start()
    late.join()
    assert len([slot for slot in store._conns if not slot.closed]) <= 2
    store.close()
    assert store._conns == []
    assert store.ringing_calls("acme") == []        # usable again after close: reopens


def _answer_worker(db: str, worker: int, n: int, inherited: SQLiteStore, barrier: Any, out: Any) -> None:
    try:
        # worker 0 uses the store object inherited through fork(): it must open its own connection
        s = inherited if worker == 0 else SQLiteStore(db)
        barrier.wait(timeout=30)
        won = []
        for i in range(n):
            try:
                event(s, "ANSWERED", f"c{i}", f"u{worker}", 100)
                won.append(i)
            except calls.EventRefused:
                pass
        s.close()
        out.put((worker, won))
    except BaseException as exc:  # reported to the parent; the others must not wait for this one
        barrier.abort()
        out.put((worker, repr(exc)))


def test_answer_race_between_processes(store: SQLiteStore, db: Path) -> None:
    n, workers = 30, 4
    for i in range(n):
        event(store, "RINGING", f"c{i}", "u0", i)
    results = run_processes(_answer_worker, [(str(db), w, n, store) for w in range(workers)])
    winners: dict[int, list[int]] = {}
    for worker, won in results:
        assert isinstance(won, list), won
        for i in won:
            winners.setdefault(i, []).append(worker)
    assert sorted(winners) == list(range(n))
    assert all(len(w) == 1 for w in winners.values()), winners
    # the parent's store (opened before the fork) still works
    assert store.ringing_calls("acme") == []


# -- concurrent versions ------------------------------------------------------------------

def _commit_worker(db: str, worker: int, wanted: int, barrier: Any, out: Any) -> None:
    try:
        barrier.wait(timeout=30)
        s = SQLiteStore(db)         # several processes opening a fresh file at once: one migrates
        made: list[int] = []
        conflicts = 0
        for _ in range(wanted * 50):
            if len(made) == wanted:
                break
            expected = s.current_versions().get("acme", 0)
            try:
                version = s.commit_version("acme", "push", doc(status=f"w{worker}"), b"w%d" % worker, expected)
            except VersionConflict as exc:
                assert exc.expected == expected and exc.actual > expected
                conflicts += 1
                continue
            assert version == expected + 1
            made.append(version)
        s.close()
        out.put((worker, made, conflicts))
    except BaseException as exc:  # reported to the parent; the others must not wait for this one
        barrier.abort()
        out.put((worker, repr(exc), 0))


def test_concurrent_commits_from_processes(db: Path) -> None:
    workers, wanted = 4, 8
    results = run_processes(_commit_worker, [(str(db), w, wanted) for w in range(workers)])
    made: list[int] = []
    for worker, versions, _conflicts in results:
        assert isinstance(versions, list), versions
        assert len(versions) == wanted, (worker, versions)
        made += versions
    total = workers * wanted
    assert sorted(made) == list(range(1, total + 1))            # contiguous, no duplicates
    s = SQLiteStore(db)
    try:
        history = s.list_versions("acme", limit=1000)
        assert [v.version for v in history] == list(range(total, 0, -1))
        assert s.current_versions() == {"acme": total}
        with raw(db) as conn:
            assert conn.execute("SELECT COUNT(*) FROM schema_migrations").fetchone()[0] == len(MIGRATIONS)
    finally:
        s.close()


def test_lock_timeout_is_store_busy(db: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    SQLiteStore(db).close()
    monkeypatch.setattr(server.store.base, "BUSY_TIMEOUT_MS", 100)
    s = SQLiteStore(db)
    holder = raw(db)
    holder.isolation_level = None
    holder.execute("BEGIN IMMEDIATE")          # another process holding the write lock
    try:
        with pytest.raises(StoreBusy, match="stayed locked"):
            s.commit_version("acme", "push", doc(), b"s", 0)
        assert s.current_versions() == {}       # reads are not blocked by a writer (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert s.commit_version("acme", "push", doc(), b"s", 0) == 1
    s.close()
    assert issubclass(StoreBusy, StoreError) and issubclass(SchemaTooNew, StoreError)


def test_migration_2_keeps_calls_and_ledger_of_a_version_1_file(db: Path) -> None:
    """A store made by the first release (schema 1) opens with its calls and balances intact."""
    db.parent.mkdir(parents=True)
    with raw(db) as conn:
        conn.execute("CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, "
                     "applied_at INTEGER NOT NULL)")
        for statement in server.store.sqlite.split_sql(MIGRATIONS[0][2]):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations VALUES (1, 'first', 0)")
        conn.execute("INSERT INTO ledger (tenant, kind, amount_micro, ref, created_at) VALUES "
                     "('acme', 'opening_credit', 10000000, 'seed', 1), ('acme', 'call', -20000, 'c0', 2)")
        conn.execute("INSERT INTO calls (tenant, call_id, direction, caller, called, state, ringing_user, last_user, "
                     "ringing_at) VALUES ('acme', 'c1', 'inbound', '+1', '+2', 'ringing', 'u1', 'u1', 5)")
        conn.commit()
    s = SQLiteStore(db)
    try:
        assert s.balance("acme") == s.ledger_sum("acme") == 9_980_000
        assert s.ringing_calls("acme") == [("c1", "u1", 5)]
        assert event(s, "ANSWERED", "c1", "u2", 6).state == "answered"
    finally:
        s.close()
