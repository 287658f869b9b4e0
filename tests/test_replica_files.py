"""Replica files (engine/replica.py): a proxy host's snapshots on disk, mapped read-only by every worker.

Real files in tmp_path.  What is checked: a file decides exactly as the blob it was written from, its
arrays are read-only views of one mapping; a bad blob never replaces a good file; a worker keeps answering
from the file it has mapped while a new one is written and sees the new one after `recheck_s`; damaged,
truncated, foreign or hostile files are a ValueError (or a file that decides normally, when the damage
was re-sealed into a well-formed file), never another exception or a crash; the staleness policies; hostile
tenant ids stay inside the directory; and, for real, two processes mapping one file share its pages.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import mmap
import os
import random
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import CoreSnapshot, compile_settings, dumps, loads, parse_settings, replica, snapshot, with_documents
from engine.replica import FILE_SUFFIX, LocalAnswer, LocalDecisions, Policy
from loadtest.snapshot_fuzz import Base, bases, exercise

from .test_differential import instants, tenants, written_forms

ROOT = Path(__file__).resolve().parent.parent
ACME = json.loads((ROOT / "examples" / "acme.json").read_text())
AT = 1796149800  # Tue 2026-12-01 10:30 in Los Angeles
BLACKLISTED = "+14155550666"
MAIN = "+14155550199"
ERROR = "not a callgate replica file: "
PREFIX = struct.Struct("<8sQQ32s")  # the layout as the module docstring states it, written again here


def blob_of(doc: dict[str, Any], approved: tuple[str, ...] = ()) -> bytes:
    """What the server sends a replica: dumps() of the snapshot in force (documents' state included)."""
    return snapshot.compile_blob(parse_settings(doc), version=0, approved=approved)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


ACME_BLOB = blob_of(ACME)


def callers() -> list[str]:
    """Callers the example tenant treats differently, malformed ones and a few random ones (seeded)."""
    rng = random.Random(7)
    listed = [BLACKLISTED, "+14155550777", "14155550666", "4155550666", "0014155550666", "+14155550100"]
    strange = ["", "anonymous", "+", "abc", "+1415555abcd", "\x00", "9" * 200, "+٣٣"]
    drawn = [f"+1{rng.randrange(200_000_0000, 999_999_9999)}" for _ in range(12)]
    drawn += [f"+44{rng.randrange(10**9, 10**10)}" for _ in range(4)]
    return listed + strange + drawn


CALLERS = callers()
CALLED = [MAIN, "+14155550100", "+442071234567", "14155550199", "+19995550000", "bad", ""]
TIMES = [AT + k * 7919 for k in range(-20, 40)] + [0, -1, 2**62, 4_102_444_800]


def decisions(snap: CoreSnapshot) -> list[Any]:
    return [snap.inbound(c, d, t).to_decision("inbound")
            for i, c in enumerate(CALLERS) for j, d in enumerate(CALLED) for t in TIMES[(i + j) % 7::7]]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def mapping_of(arr: np.ndarray) -> Any:
    """The object at the end of an array's base chain (through memoryviews)."""
    obj: Any = arr
    while True:
        if isinstance(obj, np.ndarray) and obj.base is not None:
            obj = obj.base
        elif isinstance(obj, memoryview):
            obj = obj.obj
        else:
            return obj


def put(path: Path, data: bytes) -> None:
    """Write a file as the writer does (a new inode, never in place): a file another reader has mapped and
    that shrinks under it would be SIGBUS, which no reader can survive (the module docstring says why)."""
    tmp = path.with_name(".test-" + path.name)
    tmp.write_bytes(data)
    os.replace(tmp, path)


# -- the layout, written a second time from the docstring: lets the tests re-seal damaged files ----------

def split(data: bytes) -> tuple[dict[str, Any], bytes]:
    """(header, data region) of a replica file."""
    _, hlen, _, _ = PREFIX.unpack_from(data, 0)
    start = -(-(PREFIX.size + hlen) // 64) * 64
    return msgpack.unpackb(data[PREFIX.size:PREFIX.size + hlen], raw=False), data[start:]


def seal(header: bytes | Any, region: bytes, magic: bytes = b"CGSNAP1\n", size_delta: int = 0,
         hlen: int | None = None) -> bytes:
    """A file of `header` (bytes, or an object to msgpack) and `region` whose prefix and sha256 are right (or
    wrong as asked: another magic, a declared size off by `size_delta`, another header length)."""
    raw = header if isinstance(header, bytes) else msgpack.packb(header, use_bin_type=True)
    start = -(-(PREFIX.size + len(raw)) // 64) * 64
    body = raw + bytes(start - PREFIX.size - len(raw)) + region
    length = len(raw) if hlen is None else hlen
    size = PREFIX.size + len(body) + size_delta
    digest = hashlib.sha256(struct.pack("<8sQQ", magic, length, size) + body).digest()
    return PREFIX.pack(magic, length, size, digest) + body


def test_the_seal_helper_is_the_writers_layout(tmp_path: Path) -> None:
    data = replica.write_snapshot(tmp_path, ACME_BLOB, 4).path.read_bytes()
    header, region = split(data)
    assert seal(header, region) == data
    assert header["version"] == 4 and header["checksum"] == sha(ACME_BLOB) and header["meta"]["tenant"] == "acme"
    assert all(spec["offset"] % 64 == 0 for spec in header["arrays"].values())
    assert not set(snapshot._DERIVED) & set(header["arrays"])


# -- round trip ----------------------------------------------------------------------------------------------

def test_round_trip_decides_as_the_blob(tmp_path: Path) -> None:
    written = replica.write_snapshot(tmp_path, ACME_BLOB, 12, sha(ACME_BLOB).upper())
    assert written == replica.SnapshotFile("acme", 12, sha(ACME_BLOB), tmp_path / f"acme{FILE_SUFFIX}")
    snap, version, checksum = replica.open_snapshot(written.path)
    assert (version, checksum, snap.version, snap.tenant) == (12, sha(ACME_BLOB), 12, "acme")
    memory = loads(ACME_BLOB, 12)
    assert decisions(snap) == decisions(memory)
    assert snap.inbound(BLACKLISTED, MAIN, AT).reason == "BLACKLISTED"
    assert snap.meta == memory.meta

    # zero-copy: every array the file holds is a read-only view of one mmap (not bytes, not a copy)
    stored = [name for name in snap.arrays if name not in snapshot._DERIVED]
    assert set(stored) == set(memory.arrays) - set(snapshot._DERIVED)
    maps = {id(mapping_of(snap.arrays[name])) for name in stored}
    assert len(maps) == 1 and isinstance(mapping_of(snap.arrays[stored[0]]), mmap.mmap)
    for name in stored:
        arr = snap.arrays[name]
        assert not arr.flags.writeable and arr.flags.aligned, name
        assert arr.dtype == memory.arrays[name].dtype and np.array_equal(arr, memory.arrays[name]), name
        with pytest.raises(ValueError):
            arr[...] = 0 if arr.dtype.fields is None else arr.copy()
    assert replica.held(tmp_path) == {"acme": (12, sha(ACME_BLOB))}


def test_round_trip_without_a_checksum_and_with_documents(tmp_path: Path) -> None:
    """A blob as the server sends it (dumps of the snapshot in force, its documents' state included)."""
    core = with_documents(compile_settings(parse_settings(ACME), version=3), [], {"+14155550100": "blurry"})
    blob = dumps(core)
    written = replica.write_snapshot(tmp_path, blob, 3)
    assert written.checksum == sha(blob)
    snap, _, _ = replica.open_snapshot(written.path, tenant="acme")
    assert snap.meta["rejections"] == {"+14155550100": "blurry"}
    assert decisions(snap) == decisions(core)
    assert snap.inbound("+12125550000", "+14155550100", AT).reason == core.inbound(
        "+12125550000", "+14155550100", AT).reason


@settings(max_examples=int(os.environ.get("CALLGATE_REPLICA_EXAMPLES", "40")), deadline=None,
          suppress_health_check=list(HealthCheck))
@given(world=tenants(), data=st.data())
def test_random_worlds_decide_as_their_blob(world: tuple[dict, list[str]], data: Any) -> None:
    import tempfile

    doc, drawn_callers = world
    parsed = parse_settings(doc)
    numbers = [n["number"] for n in doc["numbers"]]
    approved = data.draw(st.lists(st.sampled_from(numbers), unique=True))
    core = compile_settings(parsed, version=9, approved=approved)
    rejected = data.draw(st.lists(st.sampled_from(numbers), unique=True))
    if rejected:
        core = with_documents(core, approved, rejected)
    blob = dumps(core)
    zones = [n["schedule"]["timezone"] for n in doc["numbers"] if "schedule" in n]
    with tempfile.TemporaryDirectory() as directory:
        snap, version, checksum = replica.open_snapshot(replica.write_snapshot(directory, blob, 9, sha(blob)).path)
        assert (version, checksum) == (9, sha(blob))
        forms = [f for n in doc["numbers"] for f in written_forms(n["number"], n["country"])]
        for _ in range(20):
            caller = data.draw(st.sampled_from([*drawn_callers, *forms, "anonymous", ""]))
            called = data.draw(st.sampled_from([*forms, "+19995550000"]))
            at = data.draw(instants(zones))
            assert snap.inbound(caller, called, at).to_decision("inbound") == \
                core.inbound(caller, called, at).to_decision("inbound")
        users = [*snap.meta["users"], "nobody"]
        for _ in range(10):
            user, dest = data.draw(st.sampled_from(users)), data.draw(st.sampled_from([*forms, "+447700900123"]))
            at, balance = data.draw(instants(zones)), data.draw(st.sampled_from([0, 10**6, 10**12, None]))
            assert snap.outbound(user, dest, at, balance).to_decision("outbound") == \
                core.outbound(user, dest, at, balance).to_decision("outbound")
        cols = (np.array([c.encode() for c in drawn_callers * 3], dtype="S32"),
                np.array([f.encode() for f in (forms * len(drawn_callers) * 3)[:len(drawn_callers) * 3]],
                         dtype="S32"),
                np.full(len(drawn_callers) * 3, AT, dtype=np.int64))
        assert np.array_equal(snap.inbound_batch(*cols), core.inbound_batch(*cols))


# -- what is refused never replaces a good file -------------------------------------------------------------

def test_a_bad_blob_leaves_the_previous_file_untouched(tmp_path: Path) -> None:
    path = replica.write_snapshot(tmp_path, ACME_BLOB, 1, sha(ACME_BLOB)).path
    before, inode = path.read_bytes(), path.stat().st_ino
    other = blob_of(dict(ACME, blacklist=["+14155550123"]))

    with pytest.raises(ValueError, match=r"checksum .* does not match"):
        replica.write_snapshot(tmp_path, other, 2, sha(ACME_BLOB))
    with pytest.raises(ValueError, match=r"checksum .* does not match"):
        replica.write_snapshot(tmp_path, other, 2, "not hex")
    with pytest.raises(ValueError, match="not a callgate snapshot"):
        replica.write_snapshot(tmp_path, b"\x93\x01\x02\x03", 2)
    with pytest.raises(ValueError, match="not a callgate snapshot"):
        replica.write_snapshot(tmp_path, other[:-10], 2, sha(other[:-10]))
    doc = msgpack.unpackb(other, raw=False)
    doc["arrays"]["num_line"]["data"] = b"\xff" * len(doc["arrays"]["num_line"]["data"])  # indexes out of range
    broken = msgpack.packb(doc, use_bin_type=True)
    with pytest.raises(ValueError, match="not a callgate snapshot: snapshot array num_line"):
        replica.write_snapshot(tmp_path, broken, 2, sha(broken))
    with pytest.raises(ValueError, match="not 'beta'"):  # a snapshot sent under another tenant's name
        replica.write_snapshot(tmp_path, other, 2, sha(other), tenant="beta")
    with pytest.raises(ValueError, match="version"):
        replica.write_snapshot(tmp_path, other, -1)
    with pytest.raises(ValueError, match="version"):
        replica.write_snapshot(tmp_path, other, True)

    assert path.read_bytes() == before and path.stat().st_ino == inode
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind
    assert replica.held(tmp_path) == {"acme": (1, sha(ACME_BLOB))}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = replica.write_snapshot(tmp_path, ACME_BLOB, 1).path
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        replica.write_snapshot(tmp_path, blob_of(dict(ACME, blacklist=[])), 2)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


# -- atomic replace, seen by a worker ----------------------------------------------------------------------

def test_a_worker_keeps_answering_during_a_replace_and_sees_the_new_file(tmp_path: Path) -> None:
    clock = Clock()
    replica.touch_heartbeat(tmp_path, clock.now)
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    worker = LocalDecisions(tmp_path, recheck_s=0.5, clock=clock)
    caller = "+14155550123"
    first = worker.inbound("acme", caller, MAIN, AT)
    assert first is not None and first.version == 1 and first.decision is not None
    assert first.decision.reason != "BLACKLISTED"
    old = worker.snapshot("acme")
    assert old is not None
    old_nt = old[0].arrays["nt"].copy()

    v2 = blob_of(dict(ACME, blacklist=[BLACKLISTED, caller]))
    inode = (tmp_path / "acme.cgsnap").stat().st_ino
    replica.write_snapshot(tmp_path, v2, 2, sha(v2))
    assert (tmp_path / "acme.cgsnap").stat().st_ino != inode  # a new file, never the mapped one rewritten

    clock.now += 0.25  # within recheck_s: still the mapped version 1, whole
    during = worker.inbound("acme", caller, MAIN, AT)
    assert during is not None and during.version == 1 and during.checksum == sha(ACME_BLOB)
    assert during.decision is not None and during.decision.reason == first.decision.reason
    clock.now += 0.25
    after = worker.inbound("acme", caller, MAIN, AT)
    assert after is not None and (after.version, after.checksum) == (2, sha(v2))
    assert after.decision is not None and after.decision.reason == "BLACKLISTED"
    # what was mapped before still reads whole (the old inode lives while mapped)
    assert np.array_equal(old[0].arrays["nt"], old_nt)
    assert old[0].inbound(caller, MAIN, AT).reason == first.decision.reason
    assert worker.snapshot("acme") is not None and worker.snapshot("acme")[1] == 2  # type: ignore[index]

    clock.now -= 3600  # a clock that goes back makes the look due at once, rather than in an hour
    replica.write_snapshot(tmp_path, ACME_BLOB, 3)
    back = worker.inbound("acme", caller, MAIN, AT)
    assert back is not None and back.version == 3
    worker.close()
    assert worker.inbound("acme", caller, MAIN, AT) is not None  # close drops mappings, not the ability to map


def test_remove_snapshot_makes_a_worker_ask_the_server(tmp_path: Path) -> None:
    clock = Clock()
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    worker = LocalDecisions(tmp_path, recheck_s=1.0, clock=clock)
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is not None
    assert replica.remove_snapshot(tmp_path, "acme") is True
    assert replica.remove_snapshot(tmp_path, "acme") is False
    assert replica.remove_snapshot(tmp_path, "never-there") is False
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is not None  # until the next look
    clock.now += 1.0
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is None
    assert worker.snapshot("acme") is None and replica.held(tmp_path) == {}
    assert worker.inbound("never-there", BLACKLISTED, MAIN, AT) is None
    replica.write_snapshot(tmp_path, ACME_BLOB, 2)
    clock.now += 1.0
    again = worker.inbound("acme", BLACKLISTED, MAIN, AT)
    assert again is not None and again.version == 2


def test_a_file_under_another_tenants_name_is_foreign(tmp_path: Path) -> None:
    data = replica.write_snapshot(tmp_path, ACME_BLOB, 1).path.read_bytes()
    put(tmp_path / "beta.cgsnap", data)
    assert replica.held(tmp_path) == {"acme": (1, sha(ACME_BLOB))}
    assert LocalDecisions(tmp_path).inbound("beta", BLACKLISTED, MAIN, AT) is None
    assert replica.open_snapshot(tmp_path / "beta.cgsnap")[0].tenant == "acme"  # by path: what it holds
    with pytest.raises(ValueError, match=f"^{ERROR}the file holds tenant 'acme', not 'beta'"):
        replica.open_snapshot(tmp_path / "beta.cgsnap", tenant="beta")


def test_a_file_that_could_not_be_opened_is_tried_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Out of descriptors (or memory) is no verdict on the file: the next look opens it; a refused file is
    not read again until it changes."""
    clock = Clock()
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    worker = LocalDecisions(tmp_path, recheck_s=1.0, clock=clock)
    real_open = os.open

    def no_descriptors(path: Any, flags: int, *args: Any) -> int:
        if str(path).endswith(FILE_SUFFIX):
            raise OSError(24, "Too many open files")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", no_descriptors)
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is None
    monkeypatch.setattr(os, "open", real_open)
    clock.now += 1.0
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is not None

    put(tmp_path / "acme.cgsnap", b"damaged" * 20)
    clock.now += 1.0
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is None
    opened: list[str] = []
    real_parse = replica._parse

    def parse(mm: mmap.mmap) -> Any:
        opened.append("again")
        return real_parse(mm)

    monkeypatch.setattr(replica, "_parse", parse)
    clock.now += 1.0
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is None and opened == []
    put(tmp_path / "acme.cgsnap", b"damaged, differently" * 20)
    clock.now += 1.0
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is None and opened == ["again"]


def test_strangers_in_the_directory_are_skipped(tmp_path: Path) -> None:
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    (tmp_path / "junk.cgsnap").write_bytes(b"junk")
    (tmp_path / "empty.cgsnap").write_bytes(b"")
    (tmp_path / "dir.cgsnap").mkdir()
    os.mkfifo(tmp_path / "fifo.cgsnap")  # opening it must not wait for a writer
    (tmp_path / ".acme.cgsnap.x1.tmp").write_bytes(b"half")  # a writer's temporary file
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling.cgsnap")
    assert replica.held(tmp_path) == {"acme": (1, sha(ACME_BLOB))}
    assert replica.held(tmp_path / "absent") == {}
    worker = LocalDecisions(tmp_path)
    for tenant in ("junk", "empty", "dir", "fifo", "dangling"):
        assert worker.inbound(tenant, BLACKLISTED, MAIN, AT) is None, tenant
        with pytest.raises(ValueError, match=f"^{ERROR}"):
            replica.open_snapshot(tmp_path / f"{tenant}.cgsnap")
    with pytest.raises(ValueError, match=f"^{ERROR}"):
        replica.open_snapshot(tmp_path / "absent.cgsnap")


# -- damaged files -------------------------------------------------------------------------------------------

def refused_everywhere(directory: Path, data: bytes, tenant: str = "acme") -> None:
    """`data` as the tenant's file: open_snapshot raises the documented ValueError, held() skips it, a worker
    asks the server."""
    path = directory / f"{tenant}.cgsnap"
    put(path, data)
    with pytest.raises(ValueError) as info:
        replica.open_snapshot(path)
    assert str(info.value).startswith(ERROR), info.value
    assert replica.held(directory) == {}
    worker = LocalDecisions(directory)
    assert worker.inbound(tenant, BLACKLISTED, MAIN, AT) is None
    assert worker.snapshot(tenant) is None


def test_truncated_files_are_refused(tmp_path: Path) -> None:
    data = replica.write_snapshot(tmp_path, ACME_BLOB, 1).path.read_bytes()
    rng = random.Random(11)
    lengths = sorted({*range(0, 200), *(rng.randrange(len(data)) for _ in range(120)),
                      *range(len(data) - 70, len(data))})
    for n in lengths:
        refused_everywhere(tmp_path, data[:n])
    refused_everywhere(tmp_path, data + b"\x00")
    refused_everywhere(tmp_path, data + data)


def test_flipped_bytes_are_refused(tmp_path: Path) -> None:
    """Any flipped byte, in the prefix, the header, the padding or an array: the sha256 tells."""
    data = bytearray(replica.write_snapshot(tmp_path, ACME_BLOB, 1).path.read_bytes())
    _, hlen, _, _ = PREFIX.unpack_from(data, 0)
    regions = [(0, PREFIX.size), (PREFIX.size, PREFIX.size + hlen), (PREFIX.size + hlen, len(data))]
    rng = random.Random(12)
    for k in range(360):
        lo, hi = regions[k % 3]
        bad = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 5])):
            bad[rng.randrange(lo, hi)] ^= rng.randrange(1, 256)
        refused_everywhere(tmp_path, bytes(bad))


def craft(header: dict[str, Any], region: bytes, **changes: Any) -> tuple[dict[str, Any], bytes]:
    out = copy.deepcopy(header)
    for key, value in changes.items():
        out[key] = value
    return out, region


def crafted(header: dict[str, Any], region: bytes) -> Iterator[tuple[str, bytes, str]]:
    """(what, a well-sealed file whose header or layout is wrong, what the error says)."""
    arrays = header["arrays"]
    first = next(iter(arrays))
    big = max(arrays, key=lambda n: arrays[n]["nbytes"])

    def with_array(name: str, **spec: Any) -> dict[str, Any]:
        out = copy.deepcopy(header)
        out["arrays"][name].update(spec)
        return out

    def without(name: str) -> dict[str, Any]:
        out = copy.deepcopy(header)
        del out["arrays"][name]
        return out

    yield "magic", seal(header, region, magic=b"CGSNAP2\n"), "magic"
    yield "declared size", seal(header, region, size_delta=64), "prefix says"
    yield "header length zero", seal(header, region, hlen=0), "header length"
    yield "header length past the end", seal(header, region, hlen=1 << 40), "header length"
    yield "header too short", seal(header, region, hlen=10), "not msgpack"
    yield "not msgpack", seal(b"\xc1" * 40, region), "not msgpack"
    yield "header a list", seal([1, 2, 3], region), "header is not a map"
    yield "extra key", seal(dict(header, extra=1), region), "header is not a map"
    yield "no arrays", seal({k: v for k, v in header.items() if k != "arrays"}, region), "header is not a map"
    yield "version type", seal(dict(header, version="1"), region), "header version"
    yield "version negative", seal(dict(header, version=-1), region), "header version"
    yield "version differs from meta", seal(dict(header, version=header["version"] + 1), region), "meta version"
    yield "checksum", seal(dict(header, checksum="zz" * 32), region), "checksum"
    yield "meta a list", seal(dict(header, meta=[]), region), "maps"
    yield "format", seal(dict(header, meta=dict(header["meta"], format=2)), region), "format 2"
    yield "tenant type", seal(dict(header, meta=dict(header["meta"], tenant=5)), region), "tenant"
    yield "meta lines wrong", seal(dict(header, meta=dict(header["meta"], lines=None)), region), "meta lines"
    yield "misaligned", seal(with_array(big, offset=arrays[big]["offset"] + 8), region), "multiple of 64"
    yield "negative offset", seal(with_array(first, offset=-64), region), "offset"
    yield "offset past the end", seal(with_array(big, offset=1 << 50), region), "pass the end of the file"
    yield "overlap", seal(with_array(big, offset=0), region), "overlap the previous"
    yield "nbytes", seal(with_array(big, nbytes=arrays[big]["nbytes"] - 8), region), "bytes, its shape"
    yield "shape", seal(with_array(big, shape=[arrays[big]["shape"][0] + 1]), region), "bytes, its shape"
    yield "huge shape", seal(with_array(big, shape=[1 << 62, 1 << 62]), region), "bytes, its shape"
    yield "negative shape", seal(with_array(big, shape=[-1]), region), "bad shape"
    yield "shape type", seal(with_array(big, shape="8"), region), "bad shape"
    yield "object dtype", seal(with_array(big, dtype="|O"), region), "Python objects"
    yield "empty dtype", seal(with_array(big, dtype="|V0"), region), "no size"
    yield "dtype nonsense", seal(with_array(big, dtype="<q9"), region), "not understood"
    yield "dtype a map", seal(with_array(big, dtype={"a": 1}), region), "bad dtype"
    yield "big-endian", seal(with_array("num_e164", dtype=">u8"), region), "dtype"
    yield "spec keys", seal(with_array(first, data=b""), region), "exactly"
    yield "array dropped", seal(without("nt"), region), "nt is missing"
    yield "derived smuggled", seal(dict(header, arrays=dict(arrays, blacklist_filter=arrays[first])), region), \
        "derived on load"
    yield "arrays end early", seal(header, region + bytes(64)), "the arrays end at"
    yield "name type", seal(dict(header, arrays={**arrays, 7: arrays[first]}), region), "not msgpack"
    nt = arrays["nt"]
    yield "another dtype, same bytes", seal(with_array("nt", dtype="<u8", shape=[nt["nbytes"] // 8]), region), \
        "snapshot array nt: dtype uint64"
    lines = arrays["num_line"]
    out_of_range = bytearray(region)
    out_of_range[lines["offset"]:lines["offset"] + lines["nbytes"]] = b"\x7f" * lines["nbytes"]
    yield "index out of range", seal(header, bytes(out_of_range)), "snapshot array num_line"
    swapped = copy.deepcopy(header)
    swapped["arrays"]["nt"], swapped["arrays"]["num_e164"] = arrays["num_e164"], arrays["nt"]
    yield "arrays swapped", seal(swapped, region), "overlap"


def test_well_sealed_files_with_wrong_headers_are_refused(tmp_path: Path) -> None:
    header, region = split(replica.write_snapshot(tmp_path, ACME_BLOB, 1).path.read_bytes())
    seen = set()
    for what, data, says in crafted(header, region):
        seen.add(what)
        put(tmp_path / "acme.cgsnap", data)
        with pytest.raises(ValueError) as info:
            replica.open_snapshot(tmp_path / "acme.cgsnap")
        assert str(info.value).startswith(ERROR) and says in str(info.value), f"{what}: {info.value}"
        assert replica.held(tmp_path) == {}, what
        assert LocalDecisions(tmp_path).inbound("acme", BLACKLISTED, MAIN, AT) is None, what
    assert len(seen) > 30


@pytest.mark.parametrize("base", [b for b in bases() if b.name in ("acme", "rich", "minimal")], ids=lambda b: b.name)
def test_resealed_damage_is_refused_or_decides(tmp_path: Path, base: Base) -> None:
    """Bytes changed inside the arrays and then sealed again (as a file crafted on purpose would be): the core's
    own checks refuse it, or it decides, on every path, without crashing."""
    header, region = split(replica.write_snapshot(tmp_path, base.blob, 3).path.read_bytes())
    rng = random.Random(13)
    spans = [(s["offset"], s["offset"] + s["nbytes"]) for s in header["arrays"].values() if s["nbytes"]]
    outcomes = {"refused": 0, "decided": 0}
    for k in range(150):
        bad = bytearray(region)
        lo, hi = spans[k % len(spans)] if k % 4 else (0, len(region))
        for _ in range(rng.choice([1, 2, 8])):
            at = rng.randrange(lo, hi)
            bad[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
        put(tmp_path / "acme.cgsnap", seal(header, bytes(bad)))
        try:
            snap, _, _ = replica.open_snapshot(tmp_path / "acme.cgsnap")
        except ValueError as exc:
            assert str(exc).startswith(ERROR), exc
            outcomes["refused"] += 1
            continue
        outcomes["decided"] += 1
        exercise(snap, base)
        worker = LocalDecisions(tmp_path)
        assert worker.inbound(snap.tenant, base.callers[0] if base.callers else BLACKLISTED,
                              base.numbers[0], AT) is not None
    assert outcomes["refused"] and outcomes["decided"], outcomes


# -- staleness and policies ----------------------------------------------------------------------------------

def test_heartbeat_and_policy_files(tmp_path: Path) -> None:
    assert replica.last_heard(tmp_path) is None
    assert replica.read_policy(tmp_path) == Policy(30.0, "stale-ok", {})
    replica.touch_heartbeat(tmp_path, 1234.5678901234567)
    assert replica.last_heard(tmp_path) == 1234.5678901234567
    before = time.time()
    replica.touch_heartbeat(tmp_path)
    heard = replica.last_heard(tmp_path)
    assert heard is not None and before <= heard <= time.time()
    for value in (math.nan, math.inf):
        with pytest.raises(ValueError):
            replica.touch_heartbeat(tmp_path, value)
    for damaged in (b"", b"soon\n", b"nan\n", b"inf\n", b"\xff\xfe", b"1" * 500):
        (tmp_path / "heartbeat").write_bytes(damaged)
        assert replica.last_heard(tmp_path) is None, damaged  # read as never heard: the cautious reading

    replica.write_policy(tmp_path, 12, "fail-closed", {"acme": "backup", "beta": "stale-ok"})
    assert replica.read_policy(tmp_path) == Policy(12.0, "fail-closed", {"acme": "backup", "beta": "stale-ok"})
    assert replica.read_policy(tmp_path).for_tenant("gamma") == "fail-closed"
    replica.write_policy(tmp_path, 0)
    assert replica.read_policy(tmp_path) == Policy(0.0, "stale-ok", {})
    bad: list[tuple[Any, ...]] = [(-1,), (math.nan,), (math.inf,), (True,), ("5",), (5, "fail-open"),
                                  (5, "stale-ok", {"a": "ok"}), (5, "stale-ok", {1: "backup"})]
    for args in bad:
        with pytest.raises(ValueError):
            replica.write_policy(tmp_path, *args)
    assert replica.read_policy(tmp_path) == Policy(0.0, "stale-ok", {})  # the refused writes changed nothing
    for damaged in (b"", b"{", b"[]", b'{"max_staleness_s": 1, "default": "stale-ok"}',
                    b'{"max_staleness_s": -1, "default": "stale-ok", "tenants": {}}',
                    b'{"max_staleness_s": NaN, "default": "stale-ok", "tenants": {}}',
                    b'{"max_staleness_s": 1e999, "default": "stale-ok", "tenants": {}}',
                    b'{"max_staleness_s": 1, "default": "maybe", "tenants": {}}',
                    b'{"max_staleness_s": 1, "default": "backup", "tenants": []}',
                    b'{"max_staleness_s": 1, "default": "backup", "tenants": {}, "x": 1}',
                    b"[" * 100_000, b"\xff"):
        (tmp_path / "policy.json").write_bytes(damaged)
        with pytest.raises(ValueError, match="damaged replica policy"):
            replica.read_policy(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["heartbeat", "policy.json"]


def test_staleness_and_the_three_policies(tmp_path: Path) -> None:
    clock = Clock(10_000.0)
    no_backup = {k: v for k, v in ACME.items() if k != "backup"}
    replica.write_snapshot(tmp_path, ACME_BLOB, 5)
    replica.write_snapshot(tmp_path, blob_of(dict(no_backup, tenant="solo")), 6)
    replica.write_policy(tmp_path, 10)
    worker = LocalDecisions(tmp_path, recheck_s=0, clock=clock)  # 0: every call looks again

    def ask(tenant: str = "acme") -> LocalAnswer:
        answer = worker.inbound(tenant, BLACKLISTED, MAIN, AT)
        assert answer is not None
        return answer

    never = ask()  # no heartbeat yet: never heard, stale, and stale-ok decides
    assert (never.action, never.stale, never.age_s) == ("decide", True, math.inf)
    assert never.decision is not None and never.decision.reason == "BLACKLISTED"

    replica.touch_heartbeat(tmp_path, 9_995.0)
    fresh = ask()
    assert (fresh.action, fresh.age_s, fresh.stale, fresh.version) == ("decide", 5.0, False, 5)
    assert fresh.decision is not None and fresh.decision.verdict == "REJECT"
    assert fresh.checksum == sha(ACME_BLOB) and (fresh.backup_number, fresh.backup_line) == ("", "")
    clock.now = 10_005.0
    assert (ask().age_s, ask().stale) == (10.0, False)  # stale means older than max_staleness_s
    clock.now = 10_011.5
    stale = ask()
    assert (stale.action, stale.age_s, stale.stale) == ("decide", 16.5, True) and stale.decision is not None

    replica.write_policy(tmp_path, 10, "fail-closed")
    closed = ask()
    assert (closed.action, closed.decision, closed.stale, closed.version) == ("reject", None, True, 5)

    replica.write_policy(tmp_path, 10, "backup")
    backup = ask()
    assert (backup.action, backup.decision, backup.backup_number, backup.backup_line) == (
        "backup", None, "+14155550111", "rent-1")
    no = ask("solo")  # no backup configured: backup degrades to reject
    assert (no.action, no.decision, no.version, no.backup_number) == ("reject", None, 6, "")

    replica.write_policy(tmp_path, 10, "fail-closed", {"solo": "stale-ok"})
    assert (ask().action, ask("solo").action) == ("reject", "decide")

    replica.touch_heartbeat(tmp_path, clock.now)  # heard again: every policy decides
    assert (ask().action, ask().stale, ask().age_s) == ("decide", False, 0.0)
    assert ask("solo").action == "decide"

    # a damaged policy file: the last good policy stays in force
    clock.now += 100
    (tmp_path / "policy.json").write_bytes(b"{")
    assert ask().action == "reject"


def test_heartbeat_and_policy_are_looked_at_every_recheck_s(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    replica.touch_heartbeat(tmp_path, 1000.0)
    worker = LocalDecisions(tmp_path, recheck_s=2.0, clock=clock)
    first = worker.inbound("acme", BLACKLISTED, MAIN, AT)
    assert first is not None and not first.stale
    replica.write_policy(tmp_path, 0, "fail-closed")
    clock.now = 1001.0
    cached = worker.inbound("acme", BLACKLISTED, MAIN, AT)
    assert cached is not None and (cached.action, cached.age_s, cached.stale) == ("decide", 1.0, False)
    clock.now = 1002.0
    seen = worker.inbound("acme", BLACKLISTED, MAIN, AT)
    assert seen is not None and (seen.action, seen.stale) == ("reject", True)
    assert worker.policy == Policy(0.0, "fail-closed", {})


def test_a_fresh_worker_defaults(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        LocalDecisions(tmp_path, recheck_s=-1)
    with pytest.raises(ValueError):
        LocalDecisions(tmp_path, recheck_s=math.nan)
    worker = LocalDecisions(tmp_path / "not-yet")
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is None


# -- hostile tenant ids -----------------------------------------------------------------------------------

HOSTILE = ["../etc/passwd", "a/b", "..", ".", ".hidden", "nul\x00byte", "x" * 300, "é" * 300, "тенант",
           "a\\b", "", "a b", "~tilde", "x" * 64, "x" * 65, "-rf", "/", "\n", "policy.json", "heartbeat",
           "acme/../acme", "!" * 123, "!" * 124, "\udcff"]  # 123 bytes: a 254-byte name; 124: hashed


def test_hostile_tenant_ids_map_to_safe_names(tmp_path: Path) -> None:
    names = [replica.file_name(t) for t in HOSTILE]
    assert len(set(names)) == len(names)
    for tenant, name in zip(HOSTILE, names, strict=True):
        assert name.endswith(FILE_SUFFIX) and "/" not in name and "\x00" not in name, (tenant, name)
        assert not name.startswith(".") and len(os.fsencode(name)) <= 255, (tenant, name)
        assert (tmp_path / name).resolve().parent == tmp_path.resolve(), (tenant, name)
        assert replica.snapshot_path(tmp_path, tenant) == tmp_path / name
    assert replica.file_name("acme") == "acme.cgsnap" and replica.file_name("x" * 64) == "x" * 64 + ".cgsnap"
    assert replica.file_name("..") == "~2e2e.cgsnap" and replica.file_name("x" * 65).startswith("~78")
    assert replica.file_name("é" * 300).startswith("~~")
    assert len(replica.file_name("!" * 123)) == 254 and replica.file_name("!" * 124).startswith("~~")


def test_snapshots_of_hostile_tenants_stay_in_the_directory(tmp_path: Path) -> None:
    base = loads(ACME_BLOB)
    arrays = {k: v for k, v in base.arrays.items() if k not in snapshot._DERIVED}
    inside = tmp_path / "replica"
    written = {}
    for tenant in HOSTILE[:-1]:  # a lone surrogate is no UTF-8: no snapshot can carry it
        blob = snapshot._pack(arrays, dict(base.meta, tenant=tenant))
        written[tenant] = replica.write_snapshot(inside, blob, 2, sha(blob))
        assert written[tenant].path.parent == inside and written[tenant].tenant == tenant
    assert sorted(os.listdir(tmp_path)) == ["replica"]
    assert sorted(os.listdir(inside)) == sorted(w.path.name for w in written.values())
    assert replica.held(inside) == {t: (2, w.checksum) for t, w in written.items()}
    worker = LocalDecisions(inside)
    for tenant in HOSTILE[:-1]:
        answer = worker.inbound(tenant, BLACKLISTED, MAIN, AT)
        assert answer is not None and answer.decision is not None and answer.decision.reason == "BLACKLISTED"
        assert replica.open_snapshot(written[tenant].path, tenant=tenant)[0].tenant == tenant
    assert worker.inbound("\udcff", BLACKLISTED, MAIN, AT) is None
    for tenant in HOSTILE[:-1]:
        assert replica.remove_snapshot(inside, tenant) is True
    assert os.listdir(inside) == []


# -- sharing, for real ------------------------------------------------------------------------------------

CHILD = """
import sys
import numpy as np
from engine import replica
snap, version, checksum = replica.open_snapshot(sys.argv[1])
touched = sum(int(a.view(np.uint8).sum()) for a in snap.arrays.values() if a.size)  # every page read
print("ready", touched, flush=True)
sys.stdin.readline()
"""


def smaps_of(pid: int, path: Path) -> dict[str, int]:
    """Rss, Pss, Shared_Clean and Private_* kB of the mappings of `path` in process `pid`."""
    totals: dict[str, int] = {}
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5 and not head[0].endswith(":"):
            inside = len(head) >= 6 and head[5] == str(path)
        elif inside and head and head[0].endswith(":") and len(head) >= 2 and head[1].isdigit():
            totals[head[0][:-1]] = totals.get(head[0][:-1], 0) + int(head[1])
    return totals


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="needs Linux /proc/<pid>/smaps")
def test_two_processes_share_a_million_entry_blacklist(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    values = np.unique(rng.integers(12_000_000_000, 19_999_999_999, size=1_050_000, dtype=np.uint64))[:1_000_000]
    base = loads(ACME_BLOB)
    arrays = {k: v for k, v in base.arrays.items() if k not in snapshot._DERIVED}
    arrays["blacklist"] = snapshot.roaring_bytes(values)
    blob = snapshot._pack(arrays, dict(base.meta, blacklist_size=len(values)))
    path = replica.write_snapshot(tmp_path, blob, 1, sha(blob)).path
    size_kb = path.stat().st_size // 1024
    assert size_kb > 2000

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    children = [subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env) for _ in range(2)]
    try:
        for child in children:
            assert child.stdout is not None and child.stdout.readline().startswith("ready")
        seen = [smaps_of(child.pid, path) for child in children]
    finally:
        for child in children:
            assert child.stdin is not None
            child.stdin.write("\n")
            child.stdin.close()
            child.wait(30)
    for usage in seen:
        # every page of the file is resident in both, and each counts for half: the same page-cache pages
        assert usage["Rss"] >= 0.95 * size_kb, usage
        assert usage["Pss"] <= 0.55 * usage["Rss"], usage
        assert usage.get("Private_Dirty", 0) == 0 and usage.get("Shared_Clean", 0) >= 0.95 * size_kb, usage


def test_answers_are_local_answers(tmp_path: Path) -> None:
    """The worker's fast constructor makes the same object as LocalAnswer(...)."""
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    replica.touch_heartbeat(tmp_path, 100.0)
    clock: Callable[[], float] = lambda: 100.0  # noqa: E731
    answer = LocalDecisions(tmp_path, clock=clock).inbound("acme", BLACKLISTED, MAIN, AT)
    assert isinstance(answer, LocalAnswer)
    assert answer == LocalAnswer("decide", answer.decision, 1, sha(ACME_BLOB), 0.0, False)
    assert repr(answer).startswith("LocalAnswer(action='decide'")
    with pytest.raises(AttributeError):
        answer.action = "reject"  # type: ignore[misc]
