"""Damaged snapshot blobs never crash a decision: `engine.snapshot.loads` refuses them, or they decide normally.

Valid snapshots (compiled from varied settings: the example tenant, a rich
one, a minimal one, and random tenants from the differential suite) are
mutated: bytes flipped anywhere, runs of random bytes, truncations, msgpack
length fields changed; and, on the decoded document, array elements set to
out-of-range values, array data, lengths, shapes and dtypes changed, arrays
dropped, swapped or smuggled in, metadata replaced by wrong types or
out-of-range values.  Whatever loads then answers inbound, outbound and pickup
decisions and the batch APIs with the original settings' numbers, users and
listed callers (loadtest.snapshot_fuzz.exercise), so the deep paths run on
whatever the checks let through.  `python -m loadtest.snapshot_fuzz` is the
long run of the same idea, in subprocesses that catch a crash.
"""

from __future__ import annotations

import inspect
import os
import random
import re
import struct
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from engine import (
    DEBUG_BUILD,
    CoreSnapshot,
    compile_settings,
    dumps,
    loads,
    parse_roaring64,
    parse_settings,
    with_documents,
)
from loadtest.snapshot_fuzz import DTYPES, INTERESTING, WRONG_VALUES, Base, bases, exercise, msgpack_headers

from .test_differential import tenants

EXAMPLES = int(os.environ.get("CALLGATE_FUZZ_EXAMPLES", "1500"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
BASES = bases()
BY_NAME = {b.name: b for b in BASES}
PREFIX = "not a callgate snapshot: "


def load_or_refuse(blob: bytes, base: Base) -> bool:
    """True: it loaded and every decision path answered; False: loads refused it with the documented error."""
    try:
        snap = loads(blob)
    except ValueError as exc:
        assert str(exc).startswith(PREFIX), exc
        if currently_in_test_context():
            event("refused")
        return False
    if currently_in_test_context():
        event("loaded")
    exercise(snap, base)
    return True


def decoded(blob: bytes) -> dict[str, Any]:
    return msgpack.unpackb(blob, raw=False)


def packed(doc: Any) -> bytes:
    return msgpack.packb(doc, use_bin_type=True)


def _dtype(spec: dict[str, Any]) -> np.dtype:
    raw = spec["dtype"]
    return np.dtype([tuple(f) for f in raw], align=True) if isinstance(raw, list) else np.dtype(raw)


# -- mutations, drawn by hypothesis ------------------------------------------------------------------------

def raw_mutation(data: Any, blob: bytes) -> bytes:
    if not blob:
        return data.draw(st.binary(min_size=1, max_size=64))
    kind = data.draw(st.sampled_from(["flip", "flip", "run", "truncate", "extend", "length", "length"]))
    out = bytearray(blob)
    if kind == "flip":
        for pos, x in data.draw(st.lists(st.tuples(st.integers(0, len(blob) - 1), st.integers(1, 255)),
                                         min_size=1, max_size=64)):
            out[pos] ^= x
    elif kind == "run":
        size = data.draw(st.sampled_from([64, 8, 256]))
        at = data.draw(st.integers(0, max(len(blob) - size, 0)))
        out[at:at + size] = data.draw(st.binary(min_size=size, max_size=size))
    elif kind == "truncate":
        del out[data.draw(st.integers(0, len(blob) - 1)):]
    elif kind == "extend":
        out += data.draw(st.binary(min_size=1, max_size=32))
    else:
        headers = msgpack_headers(blob)
        if not headers:
            return bytes(out)
        pos, width = data.draw(st.sampled_from(headers))
        if width == 0:
            out[pos] ^= 1 << data.draw(st.integers(0, 3))
        else:
            old = int.from_bytes(out[pos:pos + width], "big")
            top = 2 ** (8 * width) - 1
            new = data.draw(st.one_of(st.sampled_from([0, top, max(old - 1, 0), min(old + 1, top)]),
                                      st.integers(0, top)))
            out[pos:pos + width] = new.to_bytes(width, "big")
    return bytes(out)


def set_element(data: Any, spec: dict[str, Any]) -> None:
    dtype = _dtype(spec)
    arr = np.frombuffer(spec["data"], dtype=dtype).copy()
    if len(arr) == 0:
        return
    i = data.draw(st.integers(0, len(arr) - 1))
    field = data.draw(st.sampled_from(dtype.names)) if dtype.names else None
    kind = dtype[field] if field else dtype
    if kind.kind not in "iu":
        raw = bytearray(arr.tobytes())
        raw[i * dtype.itemsize + data.draw(st.integers(0, dtype.itemsize - 1))] ^= data.draw(st.integers(1, 255))
        spec["data"] = bytes(raw)
        return
    info = np.iinfo(kind)
    column = arr[field] if field else arr
    value = data.draw(st.one_of(st.sampled_from((*INTERESTING, len(arr), len(arr) + 1, -len(arr))),
                                st.integers(-3, len(arr) + 3), st.integers(int(info.min), int(info.max)),
                                # a value the array holds elsewhere: often in range, so the snapshot loads
                                st.integers(0, len(arr) - 1).map(lambda j: int(column[j]))))
    value = max(int(info.min), min(int(info.max), value))
    if field:
        arr[field][i] = value
    else:
        arr[i] = value
    spec["data"] = arr.tobytes()


def structured_mutation(data: Any, blob: bytes) -> bytes:
    doc = decoded(blob)
    arrays, meta = doc["arrays"], doc["meta"]
    name = data.draw(st.sampled_from(sorted(arrays)))
    spec = arrays[name]
    kind = data.draw(st.sampled_from(["element"] * 4 + ["bits", "length", "shape", "dtype", "array", "meta",
                                                        "meta", "top"]))
    if kind == "element":
        set_element(data, spec)
    elif kind == "bits":
        raw = bytearray(spec["data"])
        for pos in data.draw(st.lists(st.integers(0, max(len(raw) * 8 - 1, 0)), min_size=1, max_size=64)):
            if raw:
                raw[pos // 8] ^= 1 << (pos % 8)
        spec["data"] = bytes(raw)
    elif kind == "length":  # shape kept consistent with the data: only the lengths of arrays disagree
        item = _dtype(spec).itemsize
        k = data.draw(st.sampled_from([-2, -1, 1, 2, 16]))
        spec["data"] = spec["data"][:max(len(spec["data"]) + k * item, 0)] if k < 0 \
            else spec["data"] + data.draw(st.binary(min_size=k * item, max_size=k * item))
        spec["shape"] = [len(spec["data"]) // item]
    elif kind == "shape":
        spec["shape"] = data.draw(st.sampled_from([[], [0], [-1], [1, -1], [2, -1], [2**40], [2**62, 2**62],
                                                   ["x"], None, [spec["shape"][0] + 1]]))
    elif kind == "dtype":
        spec["dtype"] = data.draw(st.sampled_from(DTYPES))
    elif kind == "array":
        what = data.draw(st.sampled_from(["drop", "derived", "swap", "wrong"]))
        if what == "drop":
            del arrays[name]
        elif what == "derived":
            arrays[data.draw(st.sampled_from(["blacklist_table", "offhours_blacklist_filter"]))] = spec
        elif what == "swap":
            other = data.draw(st.sampled_from(sorted(arrays)))
            arrays[name], arrays[other] = arrays[other], arrays[name]
        else:
            arrays[name] = data.draw(st.sampled_from(WRONG_VALUES))
    elif kind == "meta":
        key = data.draw(st.sampled_from([*sorted(meta), "nothing"]))
        value = meta.get(key)
        if isinstance(value, list) and value and data.draw(st.booleans()):
            value[data.draw(st.integers(0, len(value) - 1))] = data.draw(st.sampled_from(WRONG_VALUES))
        elif type(value) is int and data.draw(st.booleans()):
            meta[key] = value + data.draw(st.sampled_from([-2, -1, 1, 2, 64, 10**6]))
        else:
            meta[key] = data.draw(st.sampled_from(WRONG_VALUES))
    else:
        doc[data.draw(st.sampled_from(["meta", "arrays"]))] = data.draw(st.sampled_from(WRONG_VALUES))
    return packed(doc)


def mutate(data: Any, blob: bytes) -> bytes:
    for _ in range(data.draw(st.sampled_from([1, 1, 1, 2, 3]))):
        if data.draw(st.booleans()):
            try:
                blob = structured_mutation(data, blob)
                continue
            except Exception:  # an earlier mutation left bytes no longer a document (or arrays no longer arrays)
                pass
        blob = raw_mutation(data, blob)
    return blob


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(BY_NAME)))
def test_mutated_blobs_are_refused_or_decide(data: Any, name: str) -> None:
    base = BY_NAME[name]
    load_or_refuse(mutate(data, base.blob), base)


@FUZZ
@given(data=st.data(), name=st.sampled_from(sorted(BY_NAME)))
def test_indexes_moved_within_range_decide(data: Any, name: str) -> None:
    """Elements set to values their array holds elsewhere (a trie with cycles, buckets in another segment of
    their zone, users sharing ids' offsets, ...): such snapshots mostly load, and then every path must run."""
    base = BY_NAME[name]
    doc = decoded(base.blob)
    arrays = doc["arrays"]
    for _ in range(data.draw(st.integers(1, 4))):
        spec = arrays[data.draw(st.sampled_from(sorted(arrays)))]
        arr = np.frombuffer(spec["data"], dtype=_dtype(spec)).copy()
        if len(arr) < 2:
            continue
        i, j = data.draw(st.integers(0, len(arr) - 1)), data.draw(st.integers(0, len(arr) - 1))
        if data.draw(st.booleans()):
            arr[i], arr[j] = arr[j].copy(), arr[i].copy()
        else:
            arr[i] = arr[j]
        spec["data"] = arr.tobytes()
    load_or_refuse(packed(doc), base)


@settings(max_examples=max(EXAMPLES // 10, 20), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), tenant=tenants())
def test_mutated_random_tenants_are_refused_or_decide(data: Any, tenant: tuple[dict, list[str]]) -> None:
    doc, callers = tenant
    parsed = parse_settings(doc)
    users = sorted({u.id for u in parsed.users} | {m for g in parsed.queue_groups for m in g.members})
    base = Base("random", dumps(compile_settings(parsed, version=2)), tuple(n.number for n in parsed.numbers),
                tuple(users), tuple(callers), parsed.pickup_code or "*8")
    load_or_refuse(mutate(data, base.blob), base)


# -- targeted regressions ------------------------------------------------------------------------------------

def test_unmutated_snapshots_load_and_decide() -> None:
    for base in BASES:
        assert load_or_refuse(base.blob, base), base.name
        snap = loads(base.blob)
        again = with_documents(snap, base.numbers[:3])  # derived tables given, so checked against the bitmaps
        assert again.inbound("+14155550666", base.numbers[0], 1796149800).verdict


@pytest.mark.parametrize("name", ["acme", "rich"])
def test_64_bytes_flipped_anywhere(name: str) -> None:
    """The reported crash: 64 bytes flipped inside a stored blob made one inbound decision SIGSEGV."""
    base = BY_NAME[name]
    rng = random.Random(64)
    loaded = 0
    for at in range(0, len(base.blob) - 64, 61):
        for filler in (b"\xff" * 64, rng.randbytes(64)):
            blob = bytearray(base.blob)
            blob[at:at + 64] = bytes(x ^ y for x, y in zip(blob[at:at + 64], filler, strict=True))
            loaded += load_or_refuse(bytes(blob), base)
    assert loaded > 0  # some flips land where nothing checks (flags, week bits, list values): those decide


def _pick(arr: np.ndarray, name: str) -> int:
    """The element whose corruption a decision would follow."""
    if name == "nt":
        return int(np.flatnonzero(arr["key"] != 0)[0])
    if name == "ut_vals":
        return int(np.flatnonzero(arr >= 0)[0])
    if name in ("zone_base", "user_off", "sched_hol_base"):
        return len(arr) - 1
    return len(arr) // 2


RICH = loads(BY_NAME["rich"].blob)
SIZES = {k: len(v) for k, v in RICH.arrays.items()}
CORRUPT = [
    ("num_line", None, [len(RICH.meta["lines"]), -1]),
    ("num_country", None, [SIZES["countries"], -1]),
    ("num_sched", None, [SIZES["sched_zone"], -2]),
    ("num_group", None, [len(RICH.meta["groups"]), -2]),
    ("num_action", None, [3, 255]),
    ("nt", "index", [SIZES["num_e164"], -1, 2**31 - 1]),
    ("countries", "ip_len", [9, -1]),
    ("countries", "np_len", [2**31 - 1]),
    ("countries", "cc_len", [0, 99]),
    ("sched_zone", None, [SIZES["zone_base"] - 1, -1]),
    ("sched_hol_base", None, [SIZES["hol_days"] + 1, -1]),
    ("zone_base", None, [SIZES["zone_starts"] + 1, 0]),
    ("zone_bucket", None, [-1, SIZES["zone_starts"], 2**31 - 1]),
    ("zone_offsets", None, [86401, -(2**31)]),
    ("line_root", None, [SIZES["trie_rate"], -1]),
    ("line_format", None, [4]),
    ("trie_child", None, [SIZES["trie_rate"], -2, 2**31 - 1]),
    ("trie_rate", None, [SIZES["rate_pm"], -2]),
    ("rate_pm", None, [-1, 2**62]),
    ("rate_inc", None, [0, -1]),
    ("ut_vals", None, [SIZES["user_off"] - 1, -1]),
    ("user_off", None, [SIZES["user_blob"] + 1, -1]),
    ("user_callerid", None, [SIZES["num_e164"], -2]),
]


@pytest.mark.parametrize(("name", "field", "values"), CORRUPT, ids=[f"{c[0]}.{c[1] or ''}" for c in CORRUPT])
def test_each_index_out_of_range_is_refused_naming_the_array(name: str, field: str | None, values: list[int]) -> None:
    for value in values:
        arr = RICH.arrays[name].copy()
        i = _pick(arr, name)
        if field:
            arr[field][i] = value
        else:
            arr[i] = value
        arrays = {k: v for k, v in RICH.arrays.items() if not k.endswith(("_table", "_filter"))}
        arrays[name] = arr
        with pytest.raises(ValueError, match=f"snapshot array {name}[: ]"):
            CoreSnapshot(arrays, dict(RICH.meta))
        doc = decoded(BY_NAME["rich"].blob)
        doc["arrays"][name]["data"] = arr.tobytes()
        with pytest.raises(ValueError, match=f"^{PREFIX}snapshot array {name}[: ]"):
            loads(packed(doc))


def test_message_names_the_array_and_the_range() -> None:
    arrays = {k: v for k, v in RICH.arrays.items() if not k.endswith(("_table", "_filter"))}
    child = arrays["trie_child"].copy()
    child[5] = 77
    arrays["trie_child"] = child
    expected = rf"snapshot array trie_child: index 77 out of range \[-1, {SIZES['trie_rate']}\)"
    with pytest.raises(ValueError, match=expected):
        CoreSnapshot(arrays, dict(RICH.meta))


def test_full_hash_tables_are_refused() -> None:
    """A probe stops at an empty slot: a table without one is refused, never probed forever."""
    plain = {k: v for k, v in RICH.arrays.items() if not k.endswith(("_table", "_filter"))}
    n = SIZES["num_e164"]
    full = np.zeros(32, dtype=RICH.arrays["nt"].dtype)  # 24 numbers and 8 more keys: no empty slot
    full["key"][:n] = RICH.arrays["num_e164"]
    full["index"][:n] = np.arange(n)
    full["key"][n:] = RICH.arrays["num_e164"][: 32 - n]
    full["index"][n:] = np.arange(32 - n)
    with pytest.raises(ValueError, match="snapshot array nt"):
        CoreSnapshot(dict(plain, nt=full), dict(RICH.meta))
    small = np.zeros(16, dtype=RICH.arrays["nt"].dtype)
    with pytest.raises(ValueError, match="snapshot array nt: 16 slots for 24 numbers"):
        CoreSnapshot(dict(plain, nt=small), dict(RICH.meta))
    keys = np.full(len(RICH.arrays["ut_keys"]), 12345, dtype=np.uint64)
    with pytest.raises(ValueError, match="snapshot array ut_vals"):
        CoreSnapshot(dict(plain, ut_keys=keys), dict(RICH.meta))
    # a container table given with the bitmap (a snapshot made from another): every slot full
    table = RICH.arrays["blacklist_table"].copy()
    used = table[table["key"] != np.uint64(2**64 - 1)][0]
    empty = table["key"] == np.uint64(2**64 - 1)
    table["off"][empty], table["meta"][empty] = used["off"], used["meta"]
    table["key"][empty] = np.arange(10**6, 10**6 + int(empty.sum()), dtype=np.uint64)
    with pytest.raises(ValueError, match="snapshot array blacklist_table: no empty slot"):
        CoreSnapshot(dict(RICH.arrays, blacklist_table=table), dict(RICH.meta))
    table["off"][0] = len(RICH.arrays["blacklist"])
    table["meta"][0] = 5  # an array container of 5 values past the bitmap's end
    with pytest.raises(ValueError, match="snapshot array blacklist_table: container"):
        CoreSnapshot(dict(RICH.arrays, blacklist_table=table), dict(RICH.meta))
    # made from a checked snapshot, only the very arrays it bound go unchecked
    with pytest.raises(ValueError, match="snapshot array blacklist_table: container"):
        CoreSnapshot(dict(RICH.arrays, blacklist_table=table), dict(RICH.meta), derived_from=RICH)
    assert CoreSnapshot(dict(RICH.arrays), dict(RICH.meta), derived_from=RICH).contains_batch(
        "blacklist", np.array([12125550000, 12125550001], dtype=np.uint64)).tolist() == [True, True]


@pytest.mark.parametrize(("key", "value", "named"), [
    ("version", "7", None), ("version", 2**63, None), ("tenant", 5, None), ("lines", "l0", None),
    ("lines", ["l0", "l1"], "array num_line"), ("groups", ["g"] * 3, "meta members"),
    ("members", [["u"]] * 69 + [[1]], "meta members[69]"), ("numbers", ["+14155550100"] * 24, "array num_e164"),
    ("numbers", [1] * 24, "meta numbers[0]"), ("users", [], None), ("rates", ["abc"] * 24, "meta rates[0]"),
    ("rates", ["0.001"] * 24, "meta rates[0]"), ("group_words", 0, None), ("group_words", 3, None),
    ("backup_line", 3, None), ("backup_number", -1, None), ("default_callerid", 24, None),
    ("default_callerid", -2, None), ("pickup_code", "*" * 16, None), ("pickup_code", 8, None),
    ("chat_mode", "loud", None), ("lead_trigger", None, None), ("active", 2, None), ("block_anonymous", "yes", None),
    ("currency", "GBP", None), ("blacklist_size", -1, None), ("rentals", [[1, 2, 3]], "meta rentals[0]"),
    ("rentals", [["+14155550100", "5.00", "2026-13-01"]], "meta rentals[0]"), ("auto_topup", {"enabled": 1}, None),
    ("auto_topup", {"enabled": True, "amount": "NaN"}, None),
])
def test_metadata_of_the_wrong_type_or_range_is_refused(key: str, value: Any, named: str | None) -> None:
    doc = decoded(BY_NAME["rich"].blob)
    doc["meta"][key] = value
    with pytest.raises(ValueError, match=rf"^{PREFIX}snapshot {re.escape(named or 'meta ' + key)}(?!\w)"):
        loads(packed(doc))


def _portable(containers: list[tuple[int, bytes, bool, int]]) -> bytes:
    """A roaring64 bitmap of one bucket (high key 0): (key16, data, is_run, cardinality) per container."""
    size = len(containers)
    out = struct.pack("<Q", 1) + struct.pack("<I", 0)
    base = len(out)
    runmap = bytearray((size + 7) // 8)
    for i, (_, _, run, _) in enumerate(containers):
        if run:
            runmap[i // 8] |= 1 << (i % 8)
    head = struct.pack("<I", 12347 | ((size - 1) << 16)) + bytes(runmap)
    head += b"".join(struct.pack("<HH", key, card - 1) for key, _, _, card in containers)
    start = len(head) + (4 * size if size >= 4 else 0)
    offsets, body = [], b""
    for _, data, _, _ in containers:
        offsets.append(start + len(body))
        body += data
    if size >= 4:
        head += b"".join(struct.pack("<I", o) for o in offsets)
    assert len(out) == base
    return out + head + body


def test_hostile_roaring_bitmaps_are_refused() -> None:
    def with_blacklist(raw: bytes) -> Any:
        arrays = {k: v for k, v in RICH.arrays.items() if not k.startswith("blacklist_")}
        arrays["blacklist"] = np.frombuffer(raw, dtype=np.uint8)
        return CoreSnapshot(arrays, dict(RICH.meta))

    full_run = struct.pack("<HHH", 1, 0, 65535)
    ok = _portable([(k, full_run, True, 65536) for k in range(3)])
    assert with_blacklist(ok).contains_batch("blacklist", np.array([1, 3 * 65536 - 1, 3 * 65536], dtype=np.uint64)
                                             ).tolist() == [True, True, False]
    overlapping = struct.pack("<HHHHH", 2, 0, 100, 50, 10)
    with pytest.raises(ValueError, match="snapshot array blacklist: roaring run container 0"):
        with_blacklist(_portable([(0, overlapping, True, 65536)]))
    past_end = struct.pack("<HHH", 1, 65000, 1000)
    with pytest.raises(ValueError, match="past 65535"):
        with_blacklist(_portable([(0, past_end, True, 65536)]))
    # 1,100 containers of 4 bytes each claiming 65,536 values: 72 M values, a 64 MB filter and seconds to fill
    with pytest.raises(ValueError, match="more than the 67108864 a list may"):
        with_blacklist(_portable([(k, full_run, True, 65536) for k in range(1100)]))
    # a bucket whose cookie says "no runs" but whose container count lies past the end
    with pytest.raises(ValueError, match="roaring header truncated"):
        parse_roaring64(np.frombuffer(struct.pack("<QII", 1, 0, 12346), dtype=np.uint8).copy())


def test_loads_never_takes_derived_indexes_from_the_bytes() -> None:
    doc = decoded(BY_NAME["acme"].blob)
    doc["arrays"]["blacklist_table"] = dict(doc["arrays"]["nt"])
    with pytest.raises(ValueError, match="derived on load"):
        loads(packed(doc))


@pytest.mark.parametrize("garbage", [
    packed([]), packed({"meta": 1, "arrays": {}}), packed({"meta": {}, "arrays": []}),
    packed({"meta": {"format": 1}, "arrays": {"x": 1}}), b"\xc1", b"\xdd\xff\xff\xff\xff",
    packed({"meta": {"format": 1}, "arrays": {"x": {"dtype": "O", "shape": [1], "data": b"\x00" * 8}}}),
])
def test_loads_turns_every_failure_into_one_error(garbage: bytes) -> None:
    with pytest.raises(ValueError, match=f"^{PREFIX}"):
        loads(garbage)


def test_a_snapshot_is_immutable_and_an_unloaded_one_refuses_to_decide() -> None:
    with pytest.raises(TypeError, match="immutable"):
        CoreSnapshot.__init__(RICH, dict(RICH.arrays), dict(RICH.meta))
    assert RICH.inbound("+14155550666", "+14155550010", 1796149800).verdict  # untouched
    blank = CoreSnapshot.__new__(CoreSnapshot)
    with pytest.raises(ValueError, match="never loaded"):
        blank.inbound("+14155550666", "+14155550199", 1796149800)
    with pytest.raises(ValueError, match="never loaded"):
        blank.contains_batch("blacklist", np.zeros(1, dtype=np.uint64))


def test_core_build_is_the_expected_one() -> None:
    """tests/test_core_debug.py runs this file against the debug build and says so in the environment."""
    expected = os.environ.get("CALLGATE_EXPECT_DEBUG") == "1"
    core = inspect.getfile(CoreSnapshot)  # the extension module the engine's compiled names come from
    assert DEBUG_BUILD is expected, core
    if expected:
        assert os.path.join("build", "debug", "engine") in core
