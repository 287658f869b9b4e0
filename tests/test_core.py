"""The compiled core's own machinery: roaring reader, snapshots, batches, swaps."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from decimal import Decimal
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyroaring import BitMap64

from engine import (
    INBOUND_DTYPE,
    Engine,
    SettingsError,
    UnknownTenant,
    codes,
    compile_settings,
    dumps,
    loads,
    parse_roaring64,
    parse_settings,
    roaring_bytes,
    to_micro,
    with_documents,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = json.loads((ROOT / "examples" / "acme.json").read_text())
TUESDAY_1030_LA = 1796149800  # 2026-12-01T10:30:00-08:00


def example(**changes):
    doc = json.loads(json.dumps(EXAMPLE))
    doc.update(changes)
    return parse_settings(doc)


# -- roaring bitmaps read in place ------------------------------------------

# values clustered so that array, bitset and run containers all occur
_values = st.one_of(
    st.lists(st.integers(10**7, 10**15 - 1), max_size=200),
    st.builds(lambda base, n: list(range(base, base + n)), st.integers(10**7, 10**14), st.integers(0, 70_000)),
    st.builds(lambda base, step, n: list(range(base, base + step * n, step)),
              st.integers(10**7, 10**14), st.integers(1, 40), st.integers(0, 6_000)),
)


@settings(max_examples=150, deadline=None)
@given(members=_values, probes=st.lists(st.integers(0, 2**63 - 1), max_size=50))
def test_roaring_reader_agrees_with_pyroaring(members, probes):
    values = np.array(members, dtype=np.uint64)
    doc = dict(EXAMPLE, blacklist=[])
    snap = compile_settings(parse_settings(doc))
    arrays = dict(snap.arrays)
    arrays["blacklist"] = roaring_bytes(values)
    for derived in ("blacklist_table", "blacklist_filter"):
        arrays.pop(derived)
    core = type(snap)(arrays, dict(snap.meta))
    reference = BitMap64(members)
    near = [m + d for m in members[:20] for d in (-1, 1, 65536)] + probes
    queries = np.array([q for q in members[:200] + near if 0 <= q < 2**64], dtype=np.uint64)
    got = core.contains_batch("blacklist", queries)
    assert got.tolist() == [int(q) in reference for q in queries]


def test_roaring_reader_refuses_truncated_and_foreign_bytes():
    good = roaring_bytes(np.arange(10**10, 10**10 + 5000, 3, dtype=np.uint64))
    for cut in (0, 3, 9, 20, len(good) // 2, len(good) - 1):
        with pytest.raises(ValueError):
            parse_roaring64(good[:cut].copy())
    with pytest.raises(ValueError, match="cookie"):
        parse_roaring64(np.frombuffer(b"\x01" + b"\x00" * 7 + b"\x00" * 4 + b"XXXXXXXX", dtype=np.uint8).copy())


# -- snapshots ---------------------------------------------------------------

def test_snapshot_loads_in_another_process_without_compiling(tmp_path):
    snap = compile_settings(example(), version=7)
    path = tmp_path / "acme.snap"
    path.write_bytes(dumps(snap))
    script = (
        "import sys, engine.snapshot as s\n"
        "s.compile_settings = None  # loading must not compile\n"
        "snap = s.loads(open(sys.argv[1], 'rb').read())\n"
        "d = snap.inbound('+14155550666', '+14155550199', 1796149800)\n"
        "print(snap.version, d.verdict, d.reason)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["7", "REJECT", "BLACKLISTED"]


def test_loaded_snapshot_decides_like_the_compiled_one():
    snap = compile_settings(example(), version=2)
    again = loads(dumps(snap))
    for caller in ("+14155550666", "+14155550777", "4155551234", "anonymous", "x"):
        for at in (TUESDAY_1030_LA, TUESDAY_1030_LA + 4 * 86400):
            a = snap.inbound(caller, "+14155550199", at).to_decision("inbound")
            b = again.inbound(caller, "+14155550199", at).to_decision("inbound")
            assert a == b


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\x81\xa4meta\x80", b"not msgpack at all" * 10])
def test_loads_refuses_garbage_with_a_clear_error(garbage):
    with pytest.raises(ValueError, match="not a callgate snapshot"):
        loads(garbage)


def test_documents_approval_needs_no_recompile():
    snap = compile_settings(example())
    assert snap.inbound("+14155551234", "+14155550100", TUESDAY_1030_LA).reason == "DOCUMENTS_PENDING"
    approved = with_documents(snap, ["+14155550100"])
    assert approved.inbound("+14155551234", "+14155550100", TUESDAY_1030_LA).reason == "OK"
    # the original snapshot is untouched: snapshots are immutable
    assert snap.inbound("+14155551234", "+14155550100", TUESDAY_1030_LA).reason == "DOCUMENTS_PENDING"
    assert approved.arrays["blacklist"] is snap.arrays["blacklist"]


def test_shared_schedules_and_zones_are_compiled_once():
    doc = json.loads(json.dumps(EXAMPLE))
    template = doc["numbers"][1]
    doc["numbers"] = [dict(template, number=f"+1415555{i:04d}") for i in range(200, 260)]
    doc["main_number"] = None
    doc["default_caller_id"] = None
    doc["users"] = []
    snap = compile_settings(parse_settings(doc))
    assert len(snap.arrays["sched_zone"]) == 1
    assert len(snap.arrays["zone_base"]) == 2


# -- batches ----------------------------------------------------------------

def test_inbound_batch_matches_single_calls():
    snap = compile_settings(example(), version=4)
    callers = ["+14155550666", "+14155550777", "4155551234", "anonymous", "", "bad", "02071234567", "+1"]
    called = ["+14155550199", "+442071234567", "14155550100", "+19995550000"]
    times = [TUESDAY_1030_LA, TUESDAY_1030_LA + 4 * 86400, 0]
    rows = [(c, d, t) for c in callers for d in called for t in times]
    out = snap.inbound_batch(np.array([r[0].encode() for r in rows], dtype="S20"),
                             np.array([r[1].encode() for r in rows], dtype="S16"),
                             np.array([r[2] for r in rows], dtype=np.int64))
    assert out.dtype == INBOUND_DTYPE
    for i, (c, d, t) in enumerate(rows):
        single = snap.inbound(c, d, t).to_decision("inbound")
        assert codes.VERDICTS[out["verdict"][i]] == single.verdict
        assert codes.REASON_NAMES[out["reason"][i]] == single.reason
        assert out["sip"][i] == single.sip_status
        assert (f"+{out['target'][i]}" if out["target"][i] else None) == single.target
        assert (snap.meta["groups"][out["group"][i]] if out["group"][i] >= 0 else None) == single.group


def test_outbound_batch_matches_single_calls():
    snap = compile_settings(example(), version=4, approved=["+14155550100"])
    users = ["u1", "u2", "u3", "nobody", "", "bad user"]
    dests = ["+14155557000", "02071112222", "+33123456789", "anonymous"]
    balances = [Decimal("0"), Decimal("0.01"), Decimal("0.05"), Decimal("100"), Decimal("-1")]
    rows = [(u, d, b) for u in users for d in dests for b in balances]
    out = snap.outbound_batch(np.array([r[0].encode() for r in rows], dtype="S12"),
                              np.array([r[1].encode() for r in rows], dtype="S16"),
                              np.full(len(rows), TUESDAY_1030_LA, dtype=np.int64),
                              np.array([to_micro(r[2]) for r in rows], dtype=np.int64))
    for i, (u, d, b) in enumerate(rows):
        single = snap.outbound(u, d, TUESDAY_1030_LA, to_micro(b))
        assert codes.REASON_NAMES[out["reason"][i]] == single.reason
        assert codes.VERDICTS[out["verdict"][i]] == single.verdict
        if single.verdict == "ALLOW":
            assert out["max_duration"][i] == single.max_duration_s


@pytest.mark.parametrize("bad", [
    (np.array([1, 2]), np.array([b"a", b"b"]), np.array([0, 0], dtype=np.int64)),
    (np.array([b"a"]), np.array([b"a", b"b"]), np.array([0, 0], dtype=np.int64)),
    (np.array([b"a", b"b"]), np.array([b"a", b"b"]), np.array([0, 0], dtype=np.float64)),
    (np.array([[b"a"]]), np.array([[b"a"]]), np.array([[0]], dtype=np.int64)),
])
def test_batch_refuses_malformed_columns(bad):
    snap = compile_settings(example())
    with pytest.raises(ValueError):
        snap.inbound_batch(*bad)


# -- atomic replacement -------------------------------------------------------

def test_snapshot_swap_is_atomic_for_concurrent_batch_readers():
    """A batch decided while pushes swap versions sees exactly one version, whole."""
    engine = Engine()
    with_list = example(blacklist=["+14155550666"])
    without = example(blacklist=[])
    engine.push(with_list, version=1)
    n = 20_000
    callers = np.array([b"+14155550666"] * n, dtype="S16")
    called = np.array([b"+14155550199"] * n, dtype="S16")
    at = np.full(n, TUESDAY_1030_LA, dtype=np.int64)
    stop = threading.Event()
    problems: list[str] = []
    seen_versions: set[int] = set()

    def reader() -> None:
        while not stop.is_set():
            snap = engine.snapshot("acme")
            out = snap.inbound_batch(callers, called, at)
            version = snap.version
            seen_versions.add(version)
            expected = 4 if version % 2 else 1  # REJECT BLACKLISTED on odd versions, ROUTE on even
            if not (out["verdict"] == expected).all():
                problems.append(f"version {version} mixed verdicts {set(out['verdict'].tolist())}")

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    compiled = [compile_settings(with_list if v % 2 else without, version=v) for v in range(1, 9)]
    deadline = time.monotonic() + 5
    round_ = 0
    while time.monotonic() < deadline and (round_ < 200 or len(seen_versions) < 4):
        engine.install(compiled[round_ % 8])
        round_ += 1
        time.sleep(0.0005)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not problems, problems[:3]
    assert len(seen_versions) >= 2


# -- pushes are all-or-nothing ---------------------------------------------------

def test_a_refused_push_changes_nothing():
    engine = Engine()
    engine.push(example(), version=1)
    doc = json.loads(json.dumps(EXAMPLE))
    doc["blacklist"] = ["+14155550199", "not a number"]
    with pytest.raises(SettingsError):
        engine.push(parse_settings(doc), version=2)
    snap = engine.snapshot("acme")
    assert snap.version == 1
    assert snap.inbound("+14155550199", "+14155550199", TUESDAY_1030_LA).reason == "OK"


def test_unknown_tenant_is_a_clear_error():
    with pytest.raises(UnknownTenant, match="tenant 'nobody' has no settings: push them first"):
        Engine().inbound("nobody", "+14155550666", "+14155550199", TUESDAY_1030_LA)
