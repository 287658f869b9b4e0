"""Replica files (engine/replica.py): a proxy host's snapshots on disk, mapped read-only by every worker.

Real files in tmp_path.  What is checked: a file decides exactly as the blob it was written from, its
arrays, the lists' derived indexes (container table and filter) included, are read-only views of one
mapping; a bad blob never replaces a good file; a worker keeps answering from the file it has mapped while a
new one is written and sees the new one after `recheck_s`; damaged, truncated, foreign or hostile files are a
ValueError (or a file that decides normally, when the damage was re-sealed into a well-formed file), never
another exception or a crash; a re-sealed index that could make a lookup read outside the file or never
stop is refused by the core's own checks, and one that merely lies only changes answers; the staleness
policies; hostile tenant ids stay inside the directory; and, for real, eight worker processes mapping one
file with a 1 M-entry blacklist share its pages, indexes included: opening it adds next to no private memory
to a worker, where loading the blob adds the bitmap and its indexes to every one.
"""

from __future__ import annotations

import copy
import errno
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

from engine import (
    CoreSnapshot,
    compile_settings,
    dumps,
    loads,
    parse_settings,
    replica,
    replica_status,
    snapshot,
    with_documents,
)
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
EMPTY_KEY = 2**64 - 1  # a container table's empty slot (EMPTY_KEY in engine/_core.pyx)


def files(directory: Path) -> list[str]:
    """The directory's files but the status page (made by the first write, then only written in place)."""
    return sorted(n for n in os.listdir(directory) if n != replica_status.STATUS)


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
    that shrinks under it faults (SIGBUS): a worker's decision survives it (tests/test_replica_truncated.py), but
    these tests are about the bytes a file holds, not about a file changed under its readers."""
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


def arrays_in(header: dict[str, Any], region: bytes) -> dict[str, np.ndarray]:
    """The arrays of a replica file (writable copies), in the header's order."""
    out = {}
    for name, spec in header["arrays"].items():
        dtype, count = snapshot._dtype(spec["dtype"]), math.prod(spec["shape"])
        arr = np.frombuffer(region, dtype=dtype, count=count, offset=spec["offset"]) if count else \
            np.zeros(0, dtype=dtype)
        out[name] = arr.reshape(spec["shape"]).copy()
    return out


def laid_out(header: dict[str, Any], arrays: dict[str, np.ndarray]) -> bytes:
    """A well-sealed file with `header`'s version, checksum and meta holding `arrays`, laid out in order as
    the writer lays them out (each at the next multiple of 64, zero padding): arrays changed, resized,
    retyped or dropped, with a right prefix, header and sha256."""
    specs: dict[str, dict[str, Any]] = {}
    region = bytearray()
    for name, arr in arrays.items():
        region += bytes(-len(region) % 64)
        raw = arr.tobytes()
        specs[name] = {"dtype": arr.dtype.descr if arr.dtype.fields else arr.dtype.str, "shape": list(arr.shape),
                       "offset": len(region), "nbytes": len(raw)}
        region += raw
    return seal(dict(header, arrays=specs), bytes(region))


def test_the_seal_helper_is_the_writers_layout(tmp_path: Path) -> None:
    data = replica.write_snapshot(tmp_path, ACME_BLOB, 4).path.read_bytes()
    header, region = split(data)
    assert seal(header, region) == data
    assert laid_out(header, arrays_in(header, region)) == data
    assert header["version"] == 4 and header["checksum"] == sha(ACME_BLOB) and header["meta"]["tenant"] == "acme"
    assert all(spec["offset"] % 64 == 0 for spec in header["arrays"].values())
    # the lists' derived indexes are in the file, after the arrays a blob holds, as the writer's core derived them
    assert list(header["arrays"])[-len(snapshot._DERIVED):] == list(snapshot._DERIVED)
    derived = loads(ACME_BLOB).arrays
    arrays = arrays_in(header, region)
    for name in snapshot._DERIVED:
        assert arrays[name].dtype == derived[name].dtype and np.array_equal(arrays[name], derived[name]), name


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

    # zero-copy: every array the file holds, the lists' indexes included (nothing derived again by the reader),
    # is a read-only view of one mmap (not bytes, not a copy)
    stored = list(snap.arrays)
    assert set(stored) == set(memory.arrays) and set(snapshot._DERIVED) <= set(stored)
    maps = {id(mapping_of(snap.arrays[name])) for name in stored}
    assert len(maps) == 1 and isinstance(mapping_of(snap.arrays["blacklist_table"]), mmap.mmap)
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

    for checksum in (sha(ACME_BLOB), "not hex"):   # damaged on its way: not the blob's fault (tried again)
        with pytest.raises(ValueError, match=r"checksum .* does not match") as err:
            replica.write_snapshot(tmp_path, other, 2, checksum)
        assert not isinstance(err.value, replica.BlobRefused)
    # the blob itself refused (BlobRefused: the same bytes always will be)
    with pytest.raises(replica.BlobRefused, match="not a callgate snapshot"):
        replica.write_snapshot(tmp_path, b"\x93\x01\x02\x03", 2)
    with pytest.raises(replica.BlobRefused, match="not a callgate snapshot"):
        replica.write_snapshot(tmp_path, other[:-10], 2, sha(other[:-10]))
    doc = msgpack.unpackb(other, raw=False)
    doc["arrays"]["num_line"]["data"] = b"\xff" * len(doc["arrays"]["num_line"]["data"])  # indexes out of range
    broken = msgpack.packb(doc, use_bin_type=True)
    with pytest.raises(replica.BlobRefused, match="not a callgate snapshot: snapshot array num_line"):
        replica.write_snapshot(tmp_path, broken, 2, sha(broken))
    with pytest.raises(replica.BlobRefused, match="not 'beta'"):  # a snapshot sent under another tenant's name
        replica.write_snapshot(tmp_path, other, 2, sha(other), tenant="beta")
    with pytest.raises(ValueError, match="version"):
        replica.write_snapshot(tmp_path, other, -1)
    with pytest.raises(ValueError, match="version"):
        replica.write_snapshot(tmp_path, other, True)

    assert path.read_bytes() == before and path.stat().st_ino == inode
    assert files(tmp_path) == [path.name]  # no temporary file left behind
    assert replica.held(tmp_path) == {"acme": (1, sha(ACME_BLOB))}


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = replica.write_snapshot(tmp_path, ACME_BLOB, 1).path
    before = path.read_bytes()

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        replica.write_snapshot(tmp_path, blob_of(dict(ACME, blacklist=[])), 2)
    assert path.read_bytes() == before and files(tmp_path) == [path.name]


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

    # the writer moved the status page's generation on: the very next decision looks and maps version 2
    after = worker.inbound("acme", caller, MAIN, AT)
    assert after is not None and (after.version, after.checksum) == (2, sha(v2))
    assert after.decision is not None and after.decision.reason == "BLACKLISTED"
    # what was mapped before still reads whole (the old inode lives while mapped)
    assert np.array_equal(old[0].arrays["nt"], old_nt)
    assert old[0].inbound(caller, MAIN, AT).reason == first.decision.reason
    assert worker.snapshot("acme") is not None and worker.snapshot("acme")[1] == 2  # type: ignore[index]

    # a file replaced behind the writer's back (no generation moved): seen at the next look, recheck_s later
    aside = tmp_path / "aside"
    replica.write_snapshot(aside, ACME_BLOB, 3)
    os.replace(aside / "acme.cgsnap", tmp_path / "acme.cgsnap")
    clock.now += 0.25
    during = worker.inbound("acme", caller, MAIN, AT)
    assert during is not None and during.version == 2   # within recheck_s: still the mapped version 2, whole
    clock.now += 0.25
    seen = worker.inbound("acme", caller, MAIN, AT)
    assert seen is not None and seen.version == 3
    clock.now -= 3600  # a clock that goes back makes the look due at once, rather than in an hour
    replica.write_snapshot(aside, blob_of(dict(ACME, blacklist=[])), 4)
    os.replace(aside / "acme.cgsnap", tmp_path / "acme.cgsnap")
    # the replica was heard "in the future": how old it is cannot be told, as never heard (stale) ...
    unknown = worker.inbound("acme", caller, MAIN, AT)
    assert unknown is not None and (unknown.version, unknown.stale, unknown.age_s) == (4, True, math.inf)
    replica.touch_heartbeat(tmp_path, clock.now)   # ... until its next heartbeat, by the clock as it is now
    back = worker.inbound("acme", caller, MAIN, AT)
    assert back is not None and back.version == 4
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
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is None  # the status page said so: at once
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

    def parse(mm: mmap.mmap, sealed: Any = None) -> Any:
        opened.append("again")
        return real_parse(mm, sealed)

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

def refused_everywhere(directory: Path, data: bytes, tenant: str = "acme") -> str:
    """`data` as the tenant's file: open_snapshot raises the documented ValueError, held() skips it, a worker
    asks the server.  Returns the error's text."""
    path = directory / f"{tenant}.cgsnap"
    put(path, data)
    with pytest.raises(ValueError) as info:
        replica.open_snapshot(path)
    assert str(info.value).startswith(ERROR), info.value
    assert replica.held(directory) == {}
    worker = LocalDecisions(directory)
    assert worker.inbound(tenant, BLACKLISTED, MAIN, AT) is None
    assert worker.snapshot(tenant) is None
    return str(info.value)


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
    yield "an index over another array's bytes", \
        seal(dict(header, arrays=dict(arrays, blacklist_filter=arrays[first])), region), "overlap the previous"
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


# -- the lists' indexes the file holds -------------------------------------------------------------------

LISTS = ("blacklist", "offhours_blacklist")


def index_damage(arrays: dict[str, np.ndarray], name: str) -> Iterator[tuple[str, dict[str, np.ndarray | None], str]]:
    """(what, arrays replaced (None: dropped), what the core's error says) for list `name`: each an index a
    lookup could follow outside the file, or round forever, or that the core could not bind."""
    table, filt, bitmap = arrays[f"{name}_table"], arrays[f"{name}_filter"], arrays[name]
    slot = int(np.flatnonzero(table["key"] != EMPTY_KEY)[0])  # the list's one container

    def container(**fields: int) -> dict[str, np.ndarray | None]:
        out = table.copy()
        for key, value in fields.items():
            out[key][slot] = value
        return {f"{name}_table": out}

    array_of_one = int(table["meta"][slot])
    assert array_of_one >> 28 == 0  # an array container (kind 0): 2 bytes a value
    yield "a container past the bitmap's end", container(off=len(bitmap) - 1), "is not within"
    yield "a container 4 GB away", container(off=2**32 - 1), "is not within"
    yield "a container counting more values than the bitmap holds", container(meta=0x0FFFFFFF), "is not within"
    yield "a bitset container in a bitmap shorter than one", container(meta=1 << 28), "is not within"
    yield "a run container of 2^28 - 1 runs", container(meta=(2 << 28) | 0x0FFFFFFF), "is not within"
    yield "a container of no known kind", container(meta=(3 << 28) | 1), "is not within"
    yield "a container of kind 15", container(meta=0xF0000001), "is not within"
    yield "a key of more than 48 bits", container(key=1 << 48), "is not within"
    full = table.copy()
    free = np.flatnonzero(full["key"] == EMPTY_KEY)
    full["key"][free] = np.arange(len(free), dtype=np.uint64)  # valid containers, distinct keys, in every slot
    full["off"][free], full["meta"][free] = table["off"][slot], table["meta"][slot]
    yield "no empty slot (a lookup of an absent key would never stop)", {f"{name}_table": full}, "no empty slot"
    yield "a table of 12 slots", {f"{name}_table": table[:12]}, "not powers of two"
    yield "a table of no slots", {f"{name}_table": table[:0]}, "not powers of two"
    yield "a filter of 12 words", {f"{name}_filter": filt[:12]}, "not powers of two"
    yield "a filter of no words", {f"{name}_filter": filt[:0]}, "not powers of two"
    yield "a table of another dtype", {f"{name}_table": table.view("<u8")}, "dtype uint64, expected"
    yield "a filter of another dtype", {f"{name}_filter": filt.view("<u4")}, "dtype uint32, expected"
    yield "a table of two dimensions", {f"{name}_table": table.reshape(4, -1)}, "2 dimensions"
    yield "a table without its filter", {f"{name}_filter": None}, f"{name}_filter is missing"


def with_arrays(arrays: dict[str, np.ndarray], changes: dict[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """`arrays` with `changes` made (in place, keeping the order; None: dropped)."""
    out = {name: changes.get(name, arr) for name, arr in arrays.items()}
    return {name: arr for name, arr in out.items() if arr is not None}


def test_indexes_that_could_crash_a_lookup_are_refused_by_the_core(tmp_path: Path) -> None:
    """A table or filter changed and the file sealed again (a right sha256, a right header: only someone who may
    write the directory can): the core's own checks of a given index refuse it, a ValueError, never a crash."""
    header, region = split(replica.write_snapshot(tmp_path, ACME_BLOB, 1).path.read_bytes())
    arrays = arrays_in(header, region)
    seen = 0
    for name in LISTS:
        for what, changes, says in index_damage(arrays, name):
            why = refused_everywhere(tmp_path, laid_out(header, with_arrays(arrays, changes)))
            # refused by the core ("snapshot array ..."), past the file's own checks ("array ...: ...")
            assert why.startswith(f"{ERROR}snapshot array {name}_") and says in why, f"{name}, {what}: {why}"
            seen += 1
    assert seen == 2 * 17
    put(tmp_path / "acme.cgsnap", laid_out(header, arrays))  # the same arrays, laid out again: whole
    assert replica.held(tmp_path) == {"acme": (1, sha(ACME_BLOB))}


def test_indexes_that_lie_only_change_answers(tmp_path: Path) -> None:
    """A table or filter that passes the core's checks but lies (re-sealed): the file opens and decides, only
    wrongly: an all-zero filter or a table of empty slots hides the lists, as if they were empty; a filter of
    all ones ("maybe" for every number) changes nothing, it only saves lookups.  A file without the indexes
    (as written before files held them) decides as the blob, its indexes derived privately by the reader."""
    header, region = split(replica.write_snapshot(tmp_path, ACME_BLOB, 1).path.read_bytes())
    arrays = arrays_in(header, region)
    truth = loads(ACME_BLOB, 1)
    unlisted = loads(blob_of(dict(ACME, blacklist=[], offhours_blacklist=[])), 1)
    assert decisions(truth) != decisions(unlisted)
    empty = np.zeros_like(arrays["blacklist_table"])
    empty["key"] = EMPTY_KEY
    cases: list[tuple[str, dict[str, np.ndarray | None], CoreSnapshot]] = [
        ("all-zero filters", {f"{n}_filter": np.zeros_like(arrays[f"{n}_filter"]) for n in LISTS}, unlisted),
        ("tables of empty slots", {f"{n}_table": empty for n in LISTS}, unlisted),
        ("a bigger table of empty slots", {f"{n}_table": np.tile(empty, 64) for n in LISTS}, unlisted),
        ("filters of all ones", {f"{n}_filter": np.full_like(arrays[f"{n}_filter"], 2**64 - 1) for n in LISTS},
         truth),
        # one number each, in the same container: each filter says "no" to the other list's number
        ("each list with the other's filter", {f"{a}_filter": arrays[f"{b}_filter"]
                                               for a, b in zip(LISTS, LISTS[::-1], strict=True)}, unlisted),
        ("no indexes", {name: None for name in snapshot._DERIVED}, truth),
    ]
    listed = np.array([int(BLACKLISTED[1:]), 14155550777, 1], dtype=np.uint64)
    for what, changes, expected in cases:
        put(tmp_path / "acme.cgsnap", laid_out(header, with_arrays(arrays, changes)))
        snap, version, checksum = replica.open_snapshot(tmp_path / "acme.cgsnap")
        assert (version, checksum) == (1, sha(ACME_BLOB)), what
        assert decisions(snap) == decisions(expected), what
        for name in LISTS:
            assert np.array_equal(snap.contains_batch(name, listed), expected.contains_batch(name, listed)), what
        assert replica.held(tmp_path) == {"acme": (1, sha(ACME_BLOB))}, what
        answer = LocalDecisions(tmp_path).inbound("acme", BLACKLISTED, MAIN, AT)
        assert answer is not None and answer.decision is not None, what
        assert answer.decision.reason == expected.inbound(BLACKLISTED, MAIN, AT).reason, what
    # the file without indexes: its bitmaps are the mapping's, the indexes the reader derived are its own
    assert isinstance(mapping_of(snap.arrays["blacklist"]), mmap.mmap)
    assert not isinstance(mapping_of(snap.arrays["blacklist_table"]), mmap.mmap)


@pytest.mark.parametrize("base", [b for b in bases() if b.name in ("acme", "rich")], ids=lambda b: b.name)
def test_resealed_damage_to_the_indexes_is_refused_or_decides(tmp_path: Path, base: Base) -> None:
    """Random bytes in the lists' tables and filters only (the "rich" lists have array, bitset and run
    containers), sealed again: refused by the core, or decides on every path, never a crash."""
    header, region = split(replica.write_snapshot(tmp_path, base.blob, 3).path.read_bytes())
    spans = [(s["offset"], s["offset"] + s["nbytes"]) for n, s in header["arrays"].items() if n in snapshot._DERIVED]
    assert len(spans) == 4
    rng = random.Random(17)
    outcomes = {"refused": 0, "decided": 0}
    for k in range(160):
        bad = bytearray(region)
        lo, hi = spans[k % 4]
        for _ in range(rng.choice([1, 2, 8, 64])):
            at = rng.randrange(lo, hi)
            bad[at] = rng.choice([0, 0xFF, 0x7F, 0x80, 0x10, rng.randrange(256)])
        put(tmp_path / "acme.cgsnap", seal(header, bytes(bad)))
        try:
            snap, _, _ = replica.open_snapshot(tmp_path / "acme.cgsnap")
        except ValueError as exc:
            assert str(exc).startswith(f"{ERROR}snapshot array "), exc  # the core's checks, past the file's
            outcomes["refused"] += 1
            continue
        outcomes["decided"] += 1
        exercise(snap, base)
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
    page = (tmp_path / replica_status.STATUS).read_bytes()
    nan, negative = (page[:16] + struct.pack("<d", x) + page[24:] for x in (math.nan, -5.0))
    for damaged in (b"", b"soon\n", b"\xff" * 64, page[:20], b"CGSTAT1\n" + bytes(56), nan, negative):
        (tmp_path / replica_status.STATUS).write_bytes(damaged)
        assert replica.last_heard(tmp_path) is None, damaged  # read as never heard: the cautious reading
    for damaged in (b"\xff" * 64, page[:20], b""):   # a page written over or cut short by hand: the writer makes
        (tmp_path / replica_status.STATUS).write_bytes(damaged)   # it again (a new inode: the workers look for it)
        inode = (tmp_path / replica_status.STATUS).stat().st_ino
        replica.touch_heartbeat(tmp_path, 1.0)
        assert replica.last_heard(tmp_path) == 1.0 and (tmp_path / replica_status.STATUS).stat().st_ino != inode
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".status")] == []
    (tmp_path / replica_status.STATUS).unlink()

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
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.json", replica_status.STATUS]


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


def test_the_heartbeat_is_read_at_every_decision_and_the_policy_when_the_page_says(tmp_path: Path) -> None:
    clock = Clock(1000.0)
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    replica.touch_heartbeat(tmp_path, 1000.0)
    worker = LocalDecisions(tmp_path, recheck_s=2.0, clock=clock)
    first = worker.inbound("acme", BLACKLISTED, MAIN, AT)
    assert first is not None and not first.stale
    clock.now = 1001.0
    replica.touch_heartbeat(tmp_path, 1000.5)   # the page is mapped: no look needed to see the heartbeat
    heard = worker.inbound("acme", BLACKLISTED, MAIN, AT)
    assert heard is not None and (heard.action, heard.age_s, heard.stale) == ("decide", 0.5, False)
    replica.write_policy(tmp_path, 0, "fail-closed")   # moves the generation: read at the next decision
    seen = worker.inbound("acme", BLACKLISTED, MAIN, AT)
    assert seen is not None and (seen.action, seen.stale) == ("reject", True)
    assert worker.policy == Policy(0.0, "fail-closed", {})
    # a policy file changed behind the writer's back: read at the next look, recheck_s later
    (tmp_path / "policy.json").write_text('{"max_staleness_s": 60, "default": "stale-ok", "tenants": {}}')
    clock.now = 1002.5
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT).action == "reject"  # type: ignore[union-attr]
    # the status page replaced (the directory made again): mapped again at the next look
    (tmp_path / replica_status.STATUS).unlink()
    replica.touch_heartbeat(tmp_path, 1004.5)
    clock.now = 1005.0
    again = worker.inbound("acme", BLACKLISTED, MAIN, AT)
    assert again is not None and (again.action, again.age_s) == ("decide", 0.5)


def test_a_worker_makes_no_syscall_while_the_page_is_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On the decision's path: no os.stat of the status page while its heartbeat is fresh (the replica writes it
    every second), a stat of the tenant's file at most every recheck_s (30 s by default: the generation says
    when the writer changed something); once the heartbeat stops, the page is looked for again."""
    clock = Clock(1000.0)
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    replica.touch_heartbeat(tmp_path, 1000.0)
    worker = LocalDecisions(tmp_path, clock=clock)
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is not None   # the first decision maps both
    looked: list[str] = []
    real_stat = os.stat

    def counting_stat(path: Any, *args: Any, **kwargs: Any) -> Any:
        looked.append(os.path.basename(str(path)))
        return real_stat(path, *args, **kwargs)

    def decide() -> LocalAnswer | None:
        monkeypatch.setattr(os, "stat", counting_stat)
        try:
            return worker.inbound("acme", BLACKLISTED, MAIN, AT)
        finally:
            monkeypatch.setattr(os, "stat", real_stat)

    for i in range(1, 1201):   # 120 s: a decision every 0.1 s, a heartbeat every second
        clock.now = 1000.0 + i / 10
        if i % 10 == 0:
            replica.touch_heartbeat(tmp_path, clock.now)
        answer = decide()
        assert answer is not None and not answer.stale
    assert replica_status.STATUS not in looked, looked
    assert 3 <= looked.count("acme.cgsnap") <= 5, looked   # 120 s / 30 s
    looked.clear()
    clock.now += 3.0    # the replica went quiet: its page is looked for (stat) at most every recheck_s
    assert decide() is not None and decide() is not None and looked.count(replica_status.STATUS) == 1, looked


def test_a_tenant_behind_the_version_in_force_grows_old_from_its_refusal(tmp_path: Path) -> None:
    """DIR/behind.json (the replica could not install the version in force): that tenant's answers are as old as
    the refusal; past max_staleness_s the worker asks the server (None) while the replica hears from it, and
    applies the tenant's stale policy once it does not; the other tenants' answers are not touched."""
    clock = Clock(1000.0)
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    beta = copy.deepcopy(ACME)
    beta["tenant"] = "beta"
    replica.write_snapshot(tmp_path, blob_of(beta), 1)
    replica.write_policy(tmp_path, 10.0, "stale-ok", {"acme": "fail-closed", "beta": "fail-closed"})
    worker = LocalDecisions(tmp_path, clock=clock)

    def ask(tenant: str) -> LocalAnswer:
        replica.touch_heartbeat(tmp_path, clock.now)   # the replica hears from the server all along
        answer = worker.inbound(tenant, BLACKLISTED, MAIN, AT)
        assert answer is not None
        return answer

    replica.write_behind(tmp_path, {"acme": 1000.0})
    assert replica.read_behind(tmp_path) == {"acme": 1000.0}
    clock.now = 1005.0
    assert (ask("acme").action, ask("acme").age_s, ask("acme").stale) == ("decide", 5.0, False)
    clock.now = 1011.0
    assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is None   # the server answers the replica: ask it
    assert (ask("beta").action, ask("beta").age_s) == ("decide", 0.0)
    clock.now = 1030.0   # the server is gone too (no heartbeat for 19 s): the tenant's stale policy
    answer = worker.inbound("acme", BLACKLISTED, MAIN, AT)
    assert answer is not None and (answer.action, answer.age_s, answer.stale) == ("reject", 30.0, True)
    replica.write_behind(tmp_path, {})   # installed at last
    assert (ask("acme").action, ask("acme").stale) == ("decide", False)

    (tmp_path / replica.BEHIND).write_text("{not json")
    with pytest.raises(ValueError, match=r"damaged replica file behind\.json"):
        replica.read_behind(tmp_path)
    replica.write_policy(tmp_path, 10.0, "stale-ok", {"acme": "fail-closed"})   # moves the generation
    assert ask("acme").action == "decide"       # a damaged file: the last good one stays in force
    with pytest.raises(ValueError):
        replica.write_behind(tmp_path, {"acme": math.nan})
    (tmp_path / replica.BEHIND).unlink()
    assert replica.read_behind(tmp_path) == {}


def test_now_is_the_servers_time_as_the_replica_measured_it(tmp_path: Path) -> None:
    """at=0 (what the proxy asks: now) is this host's clock plus the offset the replica measured against the
    server's (the status page), so a host whose clock is days off decides off-hours as the server would."""
    clock = Clock(float(AT))
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    snap = replica.open_snapshot(tmp_path / "acme.cgsnap")[0]
    caller = "+14155551234"
    # the precondition: 4 days later (a Saturday) this call goes to voicemail
    assert snap.inbound(caller, MAIN, AT).verdict != snap.inbound(caller, MAIN, AT + 345_600).verdict
    worker = LocalDecisions(tmp_path, clock=clock)

    def fields(d: Any) -> tuple[Any, ...]:
        return (d.verdict, d.reason, d.group, d.target, d.line)

    replica.touch_heartbeat(tmp_path, clock.now)              # no offset measured yet: this host's clock
    first = worker.inbound("acme", caller, MAIN)
    assert first is not None and first.decision is not None
    assert fields(first.decision) == fields(snap.inbound(caller, MAIN, AT))
    replica.touch_heartbeat(tmp_path, clock.now, offset=345_600.0)
    later = worker.inbound("acme", caller, MAIN)
    assert later is not None and later.decision is not None
    assert fields(later.decision) == fields(snap.inbound(caller, MAIN, AT + 345_600))
    given = worker.inbound("acme", caller, MAIN, AT)           # an instant given is the instant decided at
    assert given is not None and given.decision is not None and fields(given.decision) == fields(first.decision)
    page = (tmp_path / replica_status.STATUS).read_bytes()
    assert replica.clock_offset(page) == 345_600.0
    for bad in (math.nan, math.inf, 11 * 365 * 86_400.0):
        with pytest.raises(ValueError, match="no clock's"):
            replica.touch_heartbeat(tmp_path, clock.now, offset=bad)
    assert replica.clock_offset(page[:24] + struct.pack("<d", math.nan) + page[32:]) == 0.0


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
    assert files(inside) == sorted(w.path.name for w in written.values())
    assert replica.held(inside) == {t: (2, w.checksum) for t, w in written.items()}
    worker = LocalDecisions(inside)
    for tenant in HOSTILE[:-1]:
        answer = worker.inbound(tenant, BLACKLISTED, MAIN, AT)
        assert answer is not None and answer.decision is not None and answer.decision.reason == "BLACKLISTED"
        assert replica.open_snapshot(written[tenant].path, tenant=tenant)[0].tenant == tenant
    assert worker.inbound("\udcff", BLACKLISTED, MAIN, AT) is None
    for tenant in HOSTILE[:-1]:
        assert replica.remove_snapshot(inside, tenant) is True
    assert files(inside) == []


# -- sharing, for real ------------------------------------------------------------------------------------

WORKER = """
import json
import sys
from pathlib import Path

import numpy as np

from engine import replica, snapshot


def kb(lines):
    out = {}
    for line in lines:
        key, _, rest = line.partition(":")
        words = rest.split()
        if len(words) == 2 and words[0].isdigit() and words[1] == "kB":
            out[key] = out.get(key, 0) + int(words[0])
    return out


def rollup():  # the whole process, kB
    return kb(Path("/proc/self/smaps_rollup").read_text().splitlines()[1:])


def mapping(path):  # the mappings of `path`, kB
    lines, inside = [], False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and not head[0].endswith(":"):
            inside = len(head) >= 6 and head[5] == path
        elif inside:
            lines.append(line)
    return kb(lines)


mode, path = sys.argv[1], sys.argv[2]
callers, called, at = json.loads(sys.stdin.readline())
before = rollup()
if mode == "blob":  # the private copy: what a worker holds when it loads the blob itself
    snap = snapshot.loads(Path(path).read_bytes())
    reasons = [snap.inbound(caller, called, at).reason for caller in callers]
else:  # a proxy worker: the tenant's replica file, mapped
    worker = replica.LocalDecisions(Path(path).parent)
    reasons = [worker.inbound("acme", caller, called, at).decision.reason for caller in callers]
    snap = worker.snapshot("acme")[0]
touched = sum(int(a.view(np.uint8).sum()) for a in snap.arrays.values() if a.size)  # every page read
print(json.dumps(reasons), flush=True)
sys.stdin.readline()  # measured once every worker holds its snapshot
after = rollup()
print(json.dumps({"before": before, "after": after, "mapping": mapping(path)}), flush=True)
sys.stdin.readline()
"""

WORKERS = 8


def private_kb(usage: dict[str, int]) -> int:
    return usage.get("Private_Clean", 0) + usage.get("Private_Dirty", 0)


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux /proc/self/smaps_rollup")
def test_eight_workers_share_a_million_entry_blacklist_and_its_indexes(tmp_path: Path) -> None:
    """Eight worker processes map one replica file with a blacklist of 1,000,000 random US numbers and decide
    from it: every page of the file, the blacklist's container table (4 MB) and filter (1 MB) included, is
    resident in each and shared by all (Pss an eighth of Rss), and opening it adds next to no private memory
    to a worker.  Side by side, eight workers that map a file without the indexes (as written before files
    held them) each derive a private copy of them, and eight that load the blob hold the bitmap and its
    indexes privately.  `pytest -s` prints the figures."""
    rng = np.random.default_rng(5)
    values = np.unique(rng.integers(12_000_000_000, 19_999_999_999, size=1_050_000, dtype=np.uint64))[:1_000_000]
    rng.shuffle(values)
    assert len(values) == 1_000_000
    base = loads(ACME_BLOB)
    arrays = {k: v for k, v in base.arrays.items() if k not in snapshot._DERIVED}
    arrays["blacklist"] = snapshot.roaring_bytes(values)
    blob = snapshot._pack(arrays, dict(base.meta, blacklist_size=len(values)))
    path = replica.write_snapshot(tmp_path / "replica", blob, 1, sha(blob)).path
    header, region = split(path.read_bytes())
    nbytes = {name: spec["nbytes"] for name, spec in header["arrays"].items()}
    bitmap_kb = nbytes["blacklist"] // 1024
    indexes_kb = (nbytes["blacklist_table"] + nbytes["blacklist_filter"]) // 1024
    assert bitmap_kb > 2000 and indexes_kb > 4000
    old = tmp_path / "old" / "acme.cgsnap"  # the same snapshot, without the lists' indexes
    old.parent.mkdir()
    with open(old, "wb") as out:  # fsync'd as the writer does: clean page-cache pages, like the other file's
        out.write(laid_out(header, with_arrays(arrays_in(header, region), dict.fromkeys(snapshot._DERIVED))))
        out.flush()
        os.fsync(out.fileno())
    blob_path = tmp_path / "acme.blob"
    blob_path.write_bytes(blob)
    targets = {"file": path, "old": old, "blob": blob_path}
    size_kb = {mode: target.stat().st_size // 1024 for mode, target in targets.items()}

    draw = random.Random(3)
    callers = [f"+{v}" for v in values[:12].tolist()] + [f"+1{draw.randrange(2 * 10**9, 10**10)}" for _ in range(12)]
    truth = loads(blob, 1)
    expected = [truth.inbound(caller, MAIN, AT).reason for caller in callers]
    assert expected[:12] == ["BLACKLISTED"] * 12
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    workers = [(mode, subprocess.Popen([sys.executable, "-c", WORKER, mode, str(target)], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env))
               for mode, target in targets.items() for _ in range(WORKERS)]
    reports: dict[str, list[dict[str, dict[str, int]]]] = {mode: [] for mode in targets}
    try:
        for _, child in workers:
            assert child.stdin is not None
            child.stdin.write(json.dumps([callers, MAIN, AT]) + "\n")
            child.stdin.flush()
        for mode, child in workers:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, f"a {mode} worker exited: {child.wait(30)}"
            assert json.loads(line) == expected, mode
        for _, child in workers:  # every worker holds its snapshot: now each measures
            assert child.stdin is not None
            child.stdin.write("\n")
            child.stdin.flush()
        for mode, child in workers:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line, f"a {mode} worker exited: {child.wait(30)}"
            reports[mode].append(json.loads(line))
    finally:
        for _, child in workers:
            try:
                assert child.stdin is not None
                child.stdin.write("\n")
                child.stdin.close()
            except OSError:  # it exited already
                pass
        for _, child in workers:
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()

    growth = {mode: [private_kb(r["after"]) - private_kb(r["before"]) for r in rs] for mode, rs in reports.items()}
    print(f"\n{len(values):,} random US numbers: bitmap {bitmap_kb:,} kB, its container table "
          f"{nbytes['blacklist_table'] // 1024:,} kB and filter {nbytes['blacklist_filter'] // 1024:,} kB; "
          f"replica file {size_kb['file']:,} kB, without the indexes {size_kb['old']:,} kB, "
          f"blob {size_kb['blob']:,} kB")
    labels = {"file": "replica file (indexes in it)", "old": "replica file without indexes",
              "blob": "snapshot.loads(blob)"}
    for mode, rs in reports.items():
        for k, (report, grew) in enumerate(zip(rs, growth[mode], strict=True)):
            m = report["mapping"]
            mapped = (f"mapping Rss {m['Rss']:,} kB, Pss {m['Pss']:,} kB, private {private_kb(m):,} kB"
                      if m else "no mapping")
            anonymous = report["after"]["Anonymous"] - report["before"]["Anonymous"]
            print(f"  {labels[mode]:30} worker {k}: {mapped}; private memory {grew:+,} kB "
                  f"(anonymous {anonymous:+,} kB) from opening and deciding")
        pss = sum(r["mapping"].get("Pss", 0) for r in rs)
        print(f"  {labels[mode]:30} all {len(rs)}: the file's Pss {pss:,} kB + private growth {sum(growth[mode]):,} kB"
              f" = {pss + sum(growth[mode]):,} kB")

    for mode in ("file", "old"):
        for report in reports[mode]:
            usage = report["mapping"]
            # every page of the file resident in each worker, and shared: the same page-cache pages in all eight
            assert usage["Rss"] >= 0.95 * size_kb[mode], (mode, usage)
            assert usage["Pss"] <= usage["Rss"] / 4, (mode, usage)
            assert usage.get("Private_Dirty", 0) == 0 and usage["Shared_Clean"] >= 0.95 * size_kb[mode], (mode, usage)
    # no worker holds a private copy of the indexes: opening the file costs each far less than they weigh ...
    assert all(grew < 2048 for grew in growth["file"]), growth
    # ... where a worker deriving them (a file without them) or loading the blob holds them privately
    assert all(grew >= 0.9 * indexes_kb for grew in growth["old"]), growth
    assert all(grew >= 0.9 * (bitmap_kb + indexes_kb) for grew in growth["blob"]), growth


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


def renamed(doc: dict[str, Any], tenant: str, prefix: str) -> dict[str, Any]:
    """The example tenant as `tenant`, its numbers moved from +1415555 to `prefix`."""
    out = copy.deepcopy(doc)
    out["tenant"] = tenant
    for entry in out["numbers"]:
        entry["number"] = entry["number"].replace("+1415555", prefix)
    for key in ("main_number", "default_caller_id"):
        out[key] = out[key].replace("+1415555", prefix)
    out["users"] = [{k: (v.replace("+1415555", prefix) if k == "caller_id" else v) for k, v in u.items()}
                    for u in out["users"]]
    return out


def test_tenant_of_routes_a_number_to_the_tenant_whose_file_lists_it(tmp_path: Path) -> None:
    now = [1000.0]
    local = LocalDecisions(tmp_path, clock=lambda: now[0])
    acme = copy.deepcopy(ACME)
    beta = renamed(acme, "beta", "+1212555")
    replica.write_snapshot(tmp_path, blob_of(acme), 1)
    mine = acme["numbers"][0]["number"]
    assert local.tenant_of(mine) == "acme" and local.tenant_of(mine[1:]) == "acme"   # with or without "+"
    assert local.tenant_of("+19995550000") is None
    (tmp_path / ("x" + FILE_SUFFIX)).write_bytes(b"CGSNAP1\n" + os.urandom(200))   # damaged: not routed by
    replica.write_snapshot(tmp_path, blob_of(beta), 1)
    assert local.tenant_of(beta["numbers"][0]["number"]) is None     # looked at again after INDEX_S only
    now[0] += replica.INDEX_S
    assert local.tenant_of(beta["numbers"][0]["number"]) == "beta" and local.tenant_of(mine) == "acme"
    # a number both files list (a transfer seen half way): no tenant, ask the server
    beta["numbers"].append(copy.deepcopy(acme["numbers"][1]))
    replica.write_snapshot(tmp_path, blob_of(beta), 2)
    now[0] += replica.INDEX_S
    assert local.tenant_of(acme["numbers"][1]["number"]) is None and local.tenant_of(mine) == "acme"
    replica.remove_snapshot(tmp_path, "acme")
    now[0] += replica.INDEX_S
    assert local.tenant_of(mine) is None and local.tenant_of(acme["numbers"][1]["number"]) == "beta"


def test_a_clock_stepped_back_never_makes_a_stale_replica_look_fresh(tmp_path: Path) -> None:
    """The replica was last heard ten minutes ago (fail-closed past 30 s): rejected.  The host's clock then
    stepped back an hour: the heartbeat is "in the future", its age cannot be told, and it is taken as never
    heard (the stale policy: still rejected, never a fresh decision) until the replica's next heartbeat.  A
    tenant marked behind at a time still to come (marked while the clock ran an hour ahead) is not taken as
    behind for no time: the server is asked while the replica hears from it."""
    clock = Clock(10_000.0)
    replica.write_snapshot(tmp_path, ACME_BLOB, 5)
    replica.write_policy(tmp_path, 30, "fail-closed")
    for compiled in (True, False):   # the compiled path and the Python one
        worker = LocalDecisions(tmp_path, recheck_s=60, clock=time.time if compiled else clock)
        if compiled:   # its clock is the real one: the heartbeat is set relative to it
            now = time.time()
            replica.touch_heartbeat(tmp_path, now - 600)
            assert (answer := worker.inbound("acme", BLACKLISTED, MAIN, AT)) is not None and answer.action == "reject"
            replica.touch_heartbeat(tmp_path, now + 3000)   # as if the clock went back 3,000 s since
            assert (answer := worker.inbound("acme", BLACKLISTED, MAIN, AT)) is not None
            assert (answer.action, answer.age_s) == ("reject", math.inf)
            replica.touch_heartbeat(tmp_path, time.time())
            assert (answer := worker.inbound("acme", BLACKLISTED, MAIN, AT)) is not None and not answer.stale
            worker.close()
            continue
        replica.touch_heartbeat(tmp_path, 9_400.0)
        answer = worker.inbound("acme", BLACKLISTED, MAIN, AT)
        assert answer is not None and (answer.action, answer.stale) == ("reject", True)
        clock.now -= 3600
        assert (answer := worker.inbound("acme", BLACKLISTED, MAIN, AT)) is not None
        assert (answer.action, answer.age_s) == ("reject", math.inf)
        replica.touch_heartbeat(tmp_path, clock.now)
        answer = worker.inbound("acme", BLACKLISTED, MAIN, AT)
        assert answer is not None and (answer.action, answer.stale) == ("decide", False)
        replica.write_behind(tmp_path, {"acme": clock.now + 3600})   # marked while the clock ran an hour ahead
        worker.behind = replica.read_behind(tmp_path)
        assert worker.inbound("acme", BLACKLISTED, MAIN, AT) is None
        worker.close()


def test_held_reads_again_only_the_files_changed_since(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the replica process tells the server it holds, at every reconnect: a file unchanged since the last
    time (device, inode, size, mtime) is not read and checked again; a new file, a replaced one and a damaged
    one are, and a removed one is forgotten."""
    replica.write_snapshot(tmp_path, ACME_BLOB, 1)
    beta = blob_of(dict(ACME, tenant="beta"))
    replica.write_snapshot(tmp_path, beta, 2)
    opened: list[str] = []
    real_open = replica._open

    def counting(path: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(path.name)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(replica, "_open", counting)
    known: dict[Any, Any] = {}
    assert replica.held(tmp_path, known) == {"acme": (1, sha(ACME_BLOB)), "beta": (2, sha(beta))}
    assert sorted(opened) == ["acme.cgsnap", "beta.cgsnap"] and len(known) == 2
    opened.clear()
    assert replica.held(tmp_path, known) == {"acme": (1, sha(ACME_BLOB)), "beta": (2, sha(beta))}
    assert opened == []
    replica.write_snapshot(tmp_path, ACME_BLOB, 3)      # replaced: read again
    replica.remove_snapshot(tmp_path, "beta")           # removed: forgotten
    assert replica.held(tmp_path, known) == {"acme": (3, sha(ACME_BLOB))} and opened == ["acme.cgsnap"]
    assert len(known) == 1
    path = tmp_path / "acme.cgsnap"                     # damaged in place (its mtime moves): read, refused
    before = path.stat()
    with open(path, "r+b") as f:
        f.seek(before.st_size - 1)
        f.write(b"\x7f")
    # (the kernel's file times move in clock ticks: set it past the one it had, as a later write would)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns + 10_000_000))
    opened.clear()
    assert replica.held(tmp_path, known) == {} and opened == ["acme.cgsnap"] and known == {}


def test_a_host_out_of_memory_is_not_the_blobs_fault(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """snapshot.loads says "not a callgate snapshot" for whatever fails reading the bytes; a MemoryError there
    is this host's (the same bytes may load later), so write_snapshot does not call it BlobRefused (which the
    replica would not ask for again)."""
    from engine import snapshot

    real = snapshot._core.CoreSnapshot

    def starved(*_: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(snapshot._core, "CoreSnapshot", starved)
    with pytest.raises(ValueError, match="not a callgate snapshot: MemoryError") as err:
        replica.write_snapshot(tmp_path, ACME_BLOB, 1, sha(ACME_BLOB))
    assert not isinstance(err.value, replica.BlobRefused)
    monkeypatch.setattr(snapshot._core, "CoreSnapshot", real)
    assert replica.write_snapshot(tmp_path, ACME_BLOB, 1, sha(ACME_BLOB)).version == 1


def test_tenant_of_with_a_live_status_page_looks_again_when_the_replica_changed_something(tmp_path: Path) -> None:
    """With the replica's status page live (heard within PAGE_FRESH_S), a worker's index of numbers is made again
    when the page's generation moved (the replica wrote or removed a file: at most INDEX_S after the last look),
    else only every recheck_s (a file put there by hand): not the directory scanned every second of every worker
    (a SIP worker's INVITE in 25 paid ~100 us for it).  A look that could not read the directory keeps the last
    index and mappings and is made again within INDEX_S."""
    now = [1000.0]
    scans: list[float] = []

    class Counted(LocalDecisions):
        def _scan(self, at: float) -> None:
            scans.append(at)
            super()._scan(at)

    local = Counted(tmp_path, recheck_s=30.0, clock=lambda: now[0])
    acme = copy.deepcopy(ACME)
    replica.write_snapshot(tmp_path, blob_of(acme), 1)
    replica.touch_heartbeat(tmp_path, at=now[0])
    mine = acme["numbers"][0]["number"]
    assert local.inbound("acme", "+12125550000", mine) is not None   # (maps the page)
    assert local.tenant_of(mine) == "acme"
    before = len(scans)
    for _ in range(20):   # 10 s of calls, the replica heard every second: the index stands
        now[0] += 0.5
        replica.touch_heartbeat(tmp_path, at=now[0])
        assert local.tenant_of(mine) == "acme"
    assert len(scans) == before
    beta = renamed(acme, "beta", "+1212555")
    replica.write_snapshot(tmp_path, blob_of(beta), 1)   # the generation moves: seen at the next call
    assert local.tenant_of(beta["numbers"][0]["number"]) == "beta" and len(scans) == before + 1
    by_hand = tmp_path / "elsewhere"
    by_hand.mkdir()
    gamma = renamed(acme, "gamma", "+1646555")
    replica.write_snapshot(by_hand, blob_of(gamma), 1)
    os.replace(by_hand / replica.file_name("gamma"), tmp_path / replica.file_name("gamma"))   # no generation moved
    number = gamma["numbers"][0]["number"]
    now[0] += 1.0
    replica.touch_heartbeat(tmp_path, at=now[0])
    assert local.tenant_of(number) is None                 # not yet: nothing said the directory changed
    for _ in range(30):
        now[0] += 1.0
        replica.touch_heartbeat(tmp_path, at=now[0])
        local.tenant_of(mine)
    assert local.tenant_of(number) == "gamma"              # within recheck_s
    scandir = os.scandir
    failing = [1]

    def short_of_descriptors(path: Any) -> Any:
        if failing:
            failing.pop()
            raise OSError(24, "Too many open files")
        return scandir(path)

    replica.write_snapshot(tmp_path, blob_of(acme), 2)       # (the generation moves: looked at within INDEX_S)
    now[0] += replica.INDEX_S
    os.scandir = short_of_descriptors   # type: ignore[assignment]
    try:
        assert local.tenant_of(mine) == "acme" and not failing   # the look failed: the last index stands
        assert local.inbound("acme", "+12125550000", mine) is not None   # (and what the worker holds)
        now[0] += replica.INDEX_S
        replica.touch_heartbeat(tmp_path, at=now[0])
        before = len(scans)
        assert local.tenant_of(number) == "gamma" and len(scans) == before + 1   # looked at again within INDEX_S
    finally:
        os.scandir = scandir
    replica.touch_heartbeat(tmp_path, at=now[0] - 60)      # a page not heard from: every INDEX_S again
    before = len(scans)
    now[0] += replica.INDEX_S
    local.tenant_of(mine)
    assert len(scans) == before + 1


def test_a_full_disk_while_the_page_is_made_again_leaves_the_old_one_and_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The replica making a damaged status page again on a full disk: the heartbeat fails (the replica logs it
    and tries again at the next), the page stays as it was (the workers go on reading it as no page), and no
    temporary file is left; once there is room, the next heartbeat makes it."""
    from engine import files

    page = tmp_path / replica_status.STATUS
    page.write_bytes(b"\xff" * 64)   # written over by hand

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        replica.touch_heartbeat(tmp_path, 5.0)
    assert page.read_bytes() == b"\xff" * 64 and sorted(p.name for p in tmp_path.iterdir()) == ["status"]
    monkeypatch.undo()
    replica.touch_heartbeat(tmp_path, 5.0)
    assert replica.last_heard(tmp_path) == 5.0


def test_a_full_disk_when_the_lock_takes_its_pid_lets_the_lock_go(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`files.hold` (the replica's directory lock, the server's data directory) on a full disk: the pid cannot be
    written (its flush fails, and the close's flush again) and the error says so, the pid's; the lock goes with it
    (not held by a handle left to the exception's traceback, which would have the next try, in the same process,
    told that another holds the directory)."""
    import builtins

    from engine import files

    real_open = builtins.open

    class Full:
        def __init__(self, handle: Any) -> None:
            self.handle = handle

        def __getattr__(self, name: str) -> Any:
            return getattr(self.handle, name)

        def fileno(self) -> int:
            return int(self.handle.fileno())

        def write(self, text: str) -> int:   # (buffered: the disk is met at the flush)
            return int(self.handle.write(text))

        def flush(self) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self) -> None:   # (its own flush fails again, after the descriptor is closed, as io's does)
            self.handle.close()
            raise OSError(errno.ENOSPC, "No space left on device, again at close")

    monkeypatch.setattr(files, "open", lambda *a, **k: Full(real_open(*a, **k)), raising=False)
    lock = tmp_path / replica.LOCK
    with pytest.raises(OSError, match="No space left") as failed:
        files.hold(lock)
    monkeypatch.undo()
    held = files.hold(lock)   # (`failed` still holds the traceback)
    try:
        assert lock.read_text().strip() == str(os.getpid()) and failed.value.errno == errno.ENOSPC
        assert "again at close" not in str(failed.value)   # the error said is the pid's, not the close's
    finally:
        held.close()
