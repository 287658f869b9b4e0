"""The engine's public face: what `engine` exports, snapshots that never change what they were given,
the snapshot blob built once, and the engine importing nothing from the layers above it."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

import engine
from engine import (
    INBOUND_DTYPE,
    OUTBOUND_DTYPE,
    CoreSnapshot,
    Engine,
    build,
    compile_settings,
    dumps,
    loads,
    parse_settings,
    snapshot,
    with_documents,
)

ROOT = Path(__file__).resolve().parent.parent
ACME = json.loads((ROOT / "examples" / "acme.json").read_text())
AT = 1796149800  # Tue 2026-12-01 10:30 in Los Angeles

# what the server and the load tools take from the compiled core, by its public name
CORE_NAMES = ("CoreDecision", "CoreSnapshot", "INBOUND_DTYPE", "OUTBOUND_DTYPE", "DEBUG_BUILD", "parse_roaring64",
              "roaring_index")


def with_lists(n: int = 5_000) -> dict[str, Any]:
    doc = json.loads(json.dumps(ACME))
    doc["blacklist"] = [f"+1415{5550000 + i:07d}" for i in range(0, 3 * n, 3)]
    doc["offhours_blacklist"] = [f"+4420{71000000 + i:08d}" for i in range(n // 2)]
    return doc


# -- the public names ------------------------------------------------------------------------------------

def test_every_public_name_is_exported() -> None:
    assert sorted(engine.__all__) == sorted(set(engine.__all__))
    for name in engine.__all__:
        assert getattr(engine, name) is not None, name
    assert set(CORE_NAMES) <= set(engine.__all__)
    assert INBOUND_DTYPE.names == ("target", "line", "group", "sip", "verdict", "reason")
    assert OUTBOUND_DTYPE.names == ("max_duration", "line", "callerid", "rate", "sip", "verdict", "reason")


def test_settings_keeps_its_public_names() -> None:
    from engine import settings
    for name in ("parse_settings", "load_document", "Settings", "SettingsError", "E164", "tenant_id_problem",
                 "check_tenant_id", "Schedule", "Rate", "Line", "Number", "User", "QueueGroup", "AutoTopup",
                 "Backup", "Rental", "OffhoursAction", "MAX_LIST", "MAX_DOCUMENT_BYTES", "WEEKDAYS", "Unfit"):
        assert hasattr(settings, name), name
        assert name in settings.__all__, name
    assert engine.E164 is settings.E164 and engine.tenant_id_problem is settings.tenant_id_problem


def engine_imports() -> list[tuple[str, int, str]]:
    """(file, line, module) of every import in engine/, relative ones resolved."""
    out = []
    for path in sorted((ROOT / "engine").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                out += [(path.name, node.lineno, alias.name) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                module = ("engine." if node.level else "") + (node.module or "")
                out.append((path.name, node.lineno, module.rstrip(".")))
    return out


def test_the_engine_imports_nothing_from_the_layers_above_it() -> None:
    found = engine_imports()
    assert found
    above = [f"engine/{f}:{line} imports {m}" for f, line, m in found
             if m.split(".")[0] in ("server", "loadtest", "callgate", "tests")]
    assert not above


def test_every_engine_module_says_what_it_holds() -> None:
    for path in sorted((ROOT / "engine").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc and len(doc) > 20, f"engine/{path.name} has no module docstring"
    for path in sorted((ROOT / "engine").glob("_core*.p*")):
        assert path.read_text().startswith("#"), f"engine/{path.name} does not open with what it holds"


def test_no_engine_source_is_over_700_lines() -> None:
    sources = [p for p in (ROOT / "engine").iterdir() if p.suffix in (".py", ".pyx", ".pxi", ".pxd", ".pyi")]
    assert any(p.suffix == ".pxi" for p in sources)
    long = {p.name: n for p in sources if (n := len(p.read_text().splitlines())) > 700}
    assert not long


# -- snapshots never change what they were given ----------------------------------------------------------

def test_a_snapshot_writes_nothing_into_the_dicts_it_was_given() -> None:
    compiled = compile_settings(parse_settings(with_lists()), version=3)
    arrays = {k: v for k, v in compiled.arrays.items() if not k.endswith(("_table", "_filter"))}
    meta = dict(compiled.meta)
    given_arrays, given_meta = dict(arrays), dict(meta)
    snap = CoreSnapshot(arrays, meta)
    assert arrays == given_arrays and meta == given_meta  # no derived indexes added, nothing replaced
    assert {"blacklist_table", "blacklist_filter"} <= snap.arrays.keys()
    assert snap.arrays is not arrays and snap.meta is not meta


def test_a_snapshot_keeps_its_own_copies() -> None:
    settings = parse_settings(with_lists())
    arrays, meta = snapshot.compile_arrays(settings, 1, ())
    snap = CoreSnapshot(arrays, meta)
    before = snap.inbound("+14155550003", "+442071234567", AT).to_decision("inbound")
    assert before.reason == "BLACKLISTED"
    # whatever is done to the dicts given afterwards, the snapshot stays as it was
    arrays.clear()
    meta["lines"][0] = "renamed"
    meta["version"] = 99
    meta.clear()
    assert snap.version == 1 and snap.meta["version"] == 1 and "num_e164" in snap.arrays
    assert snap.inbound("+14155550003", "+442071234567", AT).to_decision("inbound") == before
    assert snap.outbound("u3", "+14155550123", AT, 10**6).line == "rent-1"


def test_the_arrays_a_snapshot_reads_are_read_only() -> None:
    snap = compile_settings(parse_settings(ACME))
    for name, arr in snap.arrays.items():
        assert not arr.flags.writeable, name
    with pytest.raises(ValueError, match="read-only"):
        snap.arrays["num_line"][0] = 5
    # a snapshot derived from it shares its arrays, as they are
    approved = with_documents(snap, ["+14155550100"])
    assert approved.arrays["nt"] is snap.arrays["nt"]
    assert approved.arrays["blacklist_filter"] is snap.arrays["blacklist_filter"]
    assert approved.inbound("+14155551234", "+14155550100", AT).reason == "OK"


# -- the blob is built once ----------------------------------------------------------------------------------

@pytest.mark.parametrize("doc", [ACME, with_lists()], ids=["acme", "lists"])
def test_build_makes_the_blob_a_compiled_snapshot_dumps(doc: dict[str, Any]) -> None:
    settings = parse_settings(doc)
    expected = dumps(compile_settings(settings, version=0, approved=["+14155550100"]))
    built = build(json.dumps(doc).encode(), approved=["+14155550100"])
    assert built.blob == expected
    assert build(msgpack.packb(doc)).blob == dumps(compile_settings(settings, version=0))
    loaded = loads(built.blob, version=4)
    assert loaded.version == 4
    assert loaded.inbound("+14155550666", "+14155550199", AT).reason == "BLACKLISTED"


def test_build_compiles_no_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("build made a CoreSnapshot it would only serialize")

    monkeypatch.setattr(snapshot, "compile_settings", refuse)
    monkeypatch.setattr(engine, "compile_settings", refuse)
    built = build(json.dumps(with_lists()).encode())
    assert loads(built.blob).contains_batch("blacklist", np.array([14155550003], dtype=np.uint64)).tolist() == [True]


def test_build_still_checks_what_it_compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """A compiler bug never reaches the store: the arrays are checked as a CoreSnapshot checks them."""
    compile_arrays = snapshot.compile_arrays

    def broken(*args: Any) -> tuple[dict, dict]:
        arrays, meta = compile_arrays(*args)
        arrays["num_line"] = arrays["num_line"] + 7
        return arrays, meta

    monkeypatch.setattr(snapshot, "compile_arrays", broken)
    with pytest.raises(ValueError, match=r"snapshot array num_line: index 7 out of range \[0, 1\)"):
        build(json.dumps(ACME).encode())

    def hostile_list(*args: Any) -> tuple[dict, dict]:
        arrays, meta = compile_arrays(*args)
        arrays["blacklist"] = np.frombuffer(b"\x01" + b"\x00" * 7 + b"\x00" * 4 + b"XXXX", dtype=np.uint8)
        return arrays, meta

    monkeypatch.setattr(snapshot, "compile_arrays", hostile_list)
    with pytest.raises(ValueError, match="snapshot array blacklist: not a roaring bitmap"):
        build(json.dumps(ACME).encode())

    def with_index(*args: Any) -> tuple[dict, dict]:
        arrays, meta = compile_arrays(*args)
        arrays["blacklist_table"] = np.zeros(16, dtype=CoreSnapshot(dict(arrays), dict(meta)).arrays[
            "blacklist_table"].dtype)
        return arrays, meta

    monkeypatch.setattr(snapshot, "compile_arrays", with_index)
    with pytest.raises(ValueError, match="blacklist_table is derived on load"):
        build(json.dumps(ACME).encode())


# -- the engine's snapshots --------------------------------------------------------------------------------

def test_engine_snapshots_is_a_live_read_only_view() -> None:
    e = Engine()
    view = e.snapshots
    assert len(view) == 0 and e.get("acme") is None
    snap = e.push(parse_settings(ACME), version=1)
    assert view["acme"] is snap and e.get("acme") is snap and list(view) == ["acme"]
    with pytest.raises(TypeError):
        view["other"] = snap  # type: ignore[index]
    newer = e.push(parse_settings(ACME), version=2)
    assert view["acme"] is newer


def test_verdict_names_match_their_codes() -> None:
    """The named verdict codes the server branches on are the table's, in its order."""
    from engine import codes

    for name, code in codes.VERDICT_CODE.items():
        assert getattr(codes, name) == code
    assert len(codes.VERDICTS) == codes.NO_PICKUP + 1
