"""server.store.sqlite.SQLiteStore's blacklist patches: prepared on the version in force, compiled outside any
lock, committed as rows; replayed at every version, exact, refused whole, matched against a model."""

from __future__ import annotations

import json
import multiprocessing as mp
import tempfile
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from server.store.api import NotFound, PatchResult, VersionConflict, VersionMoved
from server.store.sqlite import SQLiteStore

from .store_cases import doc, patch_list, raw, snap

FORK = mp.get_context("fork")   # children open their own store on the same file



# -- blacklist patches ------------------------------------------------------------------

def blacklist(store: SQLiteStore, version: int, name: str = "blacklist") -> list[str]:
    document = store.get_version("acme", version).document
    assert document is not None
    return list(json.loads(document)[name])


def test_patches_replayed_at_every_version(store: SQLiteStore, db: Path) -> None:
    store.commit_version("acme", "push", doc(blacklist=["+1001", "+1002", "+1003"]), b"s1", 0)
    seen: list[bytes] = []

    def builder(document: bytes) -> bytes:
        seen.append(document)
        return b"compiled %d" % len(seen)

    r2 = patch_list(store, "acme", "blacklist", ["+1004", "+1001", "+1005", "+1004"], ["+1002", "+1999"], builder, 1)
    assert r2 == PatchResult(version=2, added=2, removed=1, size=4)
    r3 = patch_list(store, "acme", "offhours_blacklist", ["+2001"], ["+14155550777"], builder, 2)
    assert r3 == PatchResult(version=3, added=1, removed=1, size=1)
    r4 = patch_list(store, "acme", "blacklist", ["+1003", "+1004"], ["+1999"], builder, None)   # all no-ops
    assert r4 == PatchResult(version=3, added=0, removed=0, size=4)  # no version for a patch that changes nothing
    r5 = patch_list(store, "acme", "blacklist", ["+1002"], ["+1001", "+1001"], builder, 3)
    assert r5 == PatchResult(version=4, added=1, removed=1, size=4)

    assert blacklist(store, 1) == ["+1001", "+1002", "+1003"]
    assert blacklist(store, 2) == ["+1001", "+1003", "+1004", "+1005"]
    assert blacklist(store, 3) == blacklist(store, 2)
    assert blacklist(store, 4) == ["+1003", "+1004", "+1005", "+1002"]
    assert blacklist(store, 2, "offhours_blacklist") == ["+14155550777"]
    assert blacklist(store, 4, "offhours_blacklist") == ["+2001"]
    # the builder saw exactly the effective documents, and its blobs were stored
    assert seen == [store.get_version("acme", v).document for v in (2, 3, 4)]
    assert store.snapshot("acme", 4) == b"compiled 3"
    # the rest of the document is untouched
    assert json.loads(seen[-1])["currency"] == "USD"
    history = store.list_versions("acme")
    assert [(v.kind, v.comment) for v in history[:2]] == [("patch", "blacklist: +1 -1"),
                                                          ("patch", "offhours_blacklist: +1 -1")]
    with raw(db) as conn:   # stored as rows, only the effective changes, no document copies
        assert conn.execute("SELECT COUNT(*) FROM versions WHERE document IS NOT NULL").fetchone()[0] == 1
        assert conn.execute("SELECT version, op, number FROM list_patches WHERE version = 2 ORDER BY seq"
                            ).fetchall() == [(2, "remove", "+1002"), (2, "add", "+1004"), (2, "add", "+1005")]
        assert conn.execute("SELECT COUNT(*) FROM versions").fetchone()[0] == 4


def test_patch_keeps_decimals_and_text_exact(store: SQLiteStore) -> None:
    original = ('{"tenant":"acme","auto_topup":{"amount":"20.00"},"rate":0.0200,"tiny":1e-7,"big":12345678901234567890,'
                '"name":"Zürich ☎","nested":[1.10,{"x":-0.0}]}').encode()
    store.commit_version("acme", "push", original, b"s", 0)
    patch_list(store, "acme", "blacklist", ["+1001"], [], snap, 1)
    patched = store.get_version("acme", 2).document
    assert patched is not None
    assert patched == ('{"tenant":"acme","auto_topup":{"amount":"20.00"},"rate":0.0200,"tiny":1E-7,'
                       '"big":12345678901234567890,"name":"Zürich ☎","nested":[1.10,{"x":-0.0}],'
                       '"blacklist":["+1001"]}').encode()
    assert json.loads(patched, parse_float=Decimal)["rate"] == Decimal("0.0200")


def test_snapshot_for_failure_rolls_back(store: SQLiteStore, db: Path) -> None:
    store.commit_version("acme", "push", doc(), b"s1", 0)

    def broken(document: bytes) -> bytes:
        raise RuntimeError("compile failed")

    with pytest.raises(RuntimeError, match="compile failed"):
        patch_list(store, "acme", "blacklist", ["+1001"], [], broken, 1)
    with pytest.raises(ValueError, match="must be bytes"):
        patch_list(store, "acme", "blacklist", ["+1001"], [], lambda d: "not bytes", 1)  # type: ignore[arg-type,return-value]
    assert store.current_versions() == {"acme": 1}
    assert [v.version for v in store.list_versions("acme")] == [1]
    with raw(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM list_patches").fetchone()[0] == 0
        assert conn.execute("SELECT COUNT(*) FROM snapshots").fetchone()[0] == 1
    assert patch_list(store, "acme", "blacklist", ["+1001"], [], snap, 1).version == 2


def test_patch_refusals(store: SQLiteStore) -> None:
    calls: list[bytes] = []

    def builder(document: bytes) -> bytes:
        calls.append(document)
        return b""

    with pytest.raises(NotFound, match="tenant 'acme' has no settings"):
        patch_list(store, "acme", "blacklist", ["+1001"], [], builder, None)
    store.commit_version("acme", "push", doc(), b"s1", 0)
    with pytest.raises(VersionConflict):
        patch_list(store, "acme", "blacklist", ["+1001"], [], builder, 0)
    with pytest.raises(ValueError, match="list_name"):
        patch_list(store, "acme", "whitelist", ["+1001"], [], builder, 1)
    with pytest.raises(ValueError, match="add must be a list"):
        patch_list(store, "acme", "blacklist", "+1001", [], builder, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="nothing to patch"):
        patch_list(store, "acme", "blacklist", [], [], builder, 1)
    with pytest.raises(ValueError, match=r"remove\[1\]"):
        patch_list(store, "acme", "blacklist", [], ["+1", 2], builder, 1)  # type: ignore[list-item]
    assert calls == []
    assert store.current_versions() == {"acme": 1}


def test_patch_on_a_document_without_the_list(store: SQLiteStore) -> None:
    store.commit_version("acme", "push", b'{"tenant":"acme"}', b"s", 0)
    assert patch_list(store, "acme", "offhours_blacklist", [], ["+1001"], snap, 1) == PatchResult(1, 0, 0, 0)
    patch_list(store, "acme", "offhours_blacklist", ["+1001"], [], snap, 1)
    assert store.get_version("acme", 2).document == b'{"tenant":"acme","offhours_blacklist":["+1001"]}'


numbers = st.sampled_from([f"+1415555{i:04d}" for i in range(8)])


@hsettings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(numbers, max_size=4), st.lists(numbers, max_size=4)).filter(lambda p: p[0] or p[1]),
                min_size=1, max_size=6),
       st.lists(numbers, max_size=4, unique=True))
def test_patches_match_a_model(patches: list[tuple[list[str], list[str]]], initial: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        s = SQLiteStore(Path(tmp) / "db.sqlite")
        try:
            s.commit_version("t", "push", json.dumps({"tenant": "t", "blacklist": initial}).encode(), b"", 0)
            model, history = list(initial), [list(initial)]
            for add, remove in patches:
                removed = [n for n in dict.fromkeys(remove) if n in model]
                model = [n for n in model if n not in removed]
                added = [n for n in dict.fromkeys(add) if n not in model]
                model += added
                if added or removed:  # a patch that changes nothing makes no version
                    history.append(list(model))
                result = patch_list(s, "t", "blacklist", add, remove, snap, None)
                assert result.version == len(history)
                assert (result.added, result.removed, result.size) == (len(added), len(removed), len(model))
            for version, expected in enumerate(history, start=1):
                assert json.loads(s.get_version("t", version).document or b"")["blacklist"] == expected
        finally:
            s.close()


def test_patch_compiles_outside_the_write_lock_and_a_new_version_moves_it(store: SQLiteStore) -> None:
    store.commit_version("acme", "push", doc(blacklist=["+1001"]), b"s1", 0)
    patch = store.prepare_patch("acme", "blacklist", ["+3003"], [], None)
    assert (patch.base_version, patch.ops, patch.size) == (1, (("add", "+3003"),), 2)
    assert json.loads(patch.document)["blacklist"] == ["+1001", "+3003"]
    store.commit_version("acme", "push", doc(blacklist=["+2002"]), b"s2", None)  # pushed while it compiles
    with pytest.raises(VersionMoved):
        store.commit_patch(patch, b"compiled")
    assert store.current_versions() == {"acme": 2}                               # nothing written
    again = store.prepare_patch("acme", "blacklist", ["+3003"], [], None)           # the caller prepares again
    assert store.commit_patch(again, b"compiled") == PatchResult(version=3, added=1, removed=0, size=2)
    assert blacklist(store, 3) == ["+2002", "+3003"]  # applied to the version that came in meanwhile
    assert store.snapshot("acme", 3) == b"compiled"

    patch = store.prepare_patch("acme", "blacklist", ["+4004"], [], 3)
    store.commit_version("acme", "push", doc(blacklist=[]), b"s", None)
    with pytest.raises(VersionConflict):  # with expected_version, the race is the caller's to resolve
        store.commit_patch(patch, b"compiled")
    assert store.current_versions() == {"acme": 4}
    unchanged = store.prepare_patch("acme", "blacklist", [], ["+9999"], None)
    assert unchanged.ops == () and unchanged.unchanged() == PatchResult(4, 0, 0, 0)
    with pytest.raises(ValueError, match="changes something"):
        store.commit_patch(unchanged, b"compiled")
