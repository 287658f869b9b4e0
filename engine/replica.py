"""A proxy host's replica of compiled snapshots: one file per tenant, mapped read-only by every worker.

A proxy host (Kamailio with, say, 8 worker processes) decides calls locally
from the snapshots the server sends it.  One replica process (server/replica/)
receives each tenant's snapshot blob (`engine.snapshot.dumps`) and calls
`write_snapshot`; every worker process decides with `LocalDecisions`, which
maps each tenant's file and asks the core directly, falling back to the RPC
only when there is no usable file.

Sharing.  A blob loaded with `snapshot.loads` is private memory in every
process that loads it: eight workers would hold eight copies of a 1 M-entry
blacklist.  A replica file instead holds every array's raw bytes at a
64-byte aligned offset, so a reader maps the file once (`mmap`, read-only,
MAP_SHARED) and hands the core numpy views of that one mapping: no copy,
and the pages are the kernel's page cache, shared by every process that maps
the file.  Unlike a blob, the file also holds the lists' derived indexes
(`snapshot._DERIVED`: each list's container table and filter), as the core
derived them when the replica checked the blob: for 1 M random US numbers
the bitmap is 2.9 MB, its table 4 MB and its filter 1 MB, so derived in
every worker they would be most of its memory.  Taken from the file, the
table is checked by the core against the bitmap (every container within the
bitmap's bytes, an empty slot left: no lookup reads outside the file or
loops), so no byte string can crash a reader; a table or filter that lies
could only give wrong answers, and only with the file's sha256 made again by
someone who may write the directory, who could as well write a lying
blacklist.  What stays private per process is the metadata (a small dict).

Layout of DIR/<name>.cgsnap (all integers little-endian):

    offset 0   8 bytes   magic b"CGSNAP1\\n" (the "1" is this layout's version)
           8   u64       H, the header's length in bytes
          16   u64       the file's total length (a truncated or extended file is told at once)
          24   32 bytes  sha256 of bytes 0..24 followed by bytes 56..end: everything but itself
          56   H bytes   msgpack header {"version": int, "checksum": str (sha256 hex of the blob),
                         "meta": the snapshot's metadata,
                         "arrays": {name: {"dtype", "shape", "offset", "nbytes"}}}
    D = 56 + H rounded up to 64: the data; each array's raw bytes at D + offset, offset a multiple
                         of 64, in header order, zero padding between them; the file ends where
                         the last array ends.

dtype is written as `snapshot._pack` writes it (a string, or a structured
dtype's descr) and read back with `snapshot._dtype`.  Offsets are relative
to D so that the header's length never depends on the offsets it holds.

Reading trusts nothing: the prefix, the sha256 (any flipped bit anywhere), the
header's every field (types, bounds, alignment, nbytes == prod(shape) *
itemsize, no overlap), then the core's own checks of every
index (`CoreSnapshot`).  Whatever the bytes, a reader gets a snapshot or
ValueError("not a callgate replica file: ..."), never a crash.  A file is
hashed with pread, not through its mapping (a disk's I/O error is an OSError:
refused, tried again at the next look).  A file changed *in place* under a
worker's mapping (the writer never does it: it replaces) is told at the next
decision, under a SIGBUS guard (engine/_core_guard.pxi says how, and what
stays unguarded): a miss, the file opened and checked again; a status page
that faults is looked for again (the stale policy answers meanwhile), and the
replica makes a page cut short or written over again.  The directory must be writable by the replica process only.

Atomicity.  `write_snapshot` writes a temporary file in the same directory
(a name starting with "." that readers never look at), fsyncs it,
`os.replace`s it over the tenant's file and fsyncs the directory: a reader
opens either the old file or the new one, whole.  A reader that has the old
one mapped keeps it (the inode lives until the last mapping goes) and sees
the new one at its next decision: every write and removal moves on the
generation in the directory's status page, which every worker keeps mapped
and reads at each decision (memory reads, no syscall); only when it moved,
and at the latest every `recheck_s` (30 s: a file changed behind the
writer's back), does the worker stat the tenant's file.  The policy is
replaced like a snapshot file; the status page alone is made once and then
written in place (DIR/status, 64 bytes: magic b"CGSTAT1\n", the generation
u64, when the replica last heard from the server f64, the server's clock
less this host's f64), never replaced or truncated; a worker looks for a new page (os.stat) only while the one it
maps says nothing fresh (no heartbeat for 2.5 s: a page replaced when the
directory was made again is no longer written).

File names.  A tenant id matching [A-Za-z0-9_.-]{1,64} and not starting with
"." is its own file name ("acme.cgsnap"); any other id is "~" and the hex of
its UTF-8 ("~2e2e2f657463.cgsnap"), or, when that would pass the 255-byte
limit of file names, "~~" and the sha256 hex of its UTF-8.  The tenant inside
the file is authoritative: a file whose name is not its tenant's is refused.

Staleness.  The replica process calls `touch_heartbeat` (the status page's
second field) whenever it hears from the server; a worker's answer says how long ago that was (`age_s`), and
the policy file (`write_policy`) says what to do once it is older than
`max_staleness_s`: "stale-ok" decide anyway, "fail-closed" reject, "backup"
forward to the tenant's backup number.  Writer and readers are on one host,
so they share one clock (time.time).
"""

from __future__ import annotations

import hashlib
import json
import math
import mmap
import os
import re
import stat
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import numpy as np

from . import snapshot
from ._core import CoreSnapshot
from .files import replace_atomically, sync_directory
from .replica_status import (  # (public: engine.replica is the API)
    _write_status,
    clock_offset,
    last_heard,
    touch_heartbeat,
)

__all__ = [
    "FILE_SUFFIX",
    "POLICIES",
    "BlobRefused",
    "LocalAnswer",
    "LocalDecisions",
    "Policy",
    "SnapshotFile",
    "clock_offset",
    "file_name",
    "held",
    "last_heard",
    "open_snapshot",
    "read_behind",
    "read_policy",
    "remove_snapshot",
    "snapshot_path",
    "touch_heartbeat",
    "write_behind",
    "write_policy",
    "write_snapshot",
]

FILE_SUFFIX = ".cgsnap"
POLICY = "policy.json"
BEHIND = "behind.json"                # tenants whose version in force the replica could not install, since when
LOCK = ".lock"                       # the writer's lock (engine.files.hold): one replica process per directory
POLICIES = ("stale-ok", "fail-closed", "backup")
DEFAULT_MAX_STALENESS_S = 30.0

MAGIC = b"CGSNAP1\n"
_PREFIX = struct.Struct("<8sQQ32s")  # magic, header length, file length, sha256
_SEALED = 24                          # the prefix's bytes the sha256 covers (all but the digest itself)
_READ_CHUNK = 1 << 20                 # bytes a pread of `_read_sealed` reads at a time
ALIGN = 64                            # every array starts on a cache line (and so on any dtype's alignment)
ERROR = "not a callgate replica file: "

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_CHECKSUM = re.compile(r"[0-9a-f]{64}")
_NAME_MAX = 255
INDEX_S = 1.0                         # LocalDecisions.tenant_of looks at the directory again at most this often
                                      # (with a live status page: only if its generation moved since, else every
                                      # recheck_s)
MAX_INDEX_HEADER = 64 << 20           # a header larger than this is not read for routing
_HEADER_KEYS = {"version", "checksum", "meta", "arrays"}
_ARRAY_KEYS = {"dtype", "shape", "offset", "nbytes"}

# CPython before 3.13 keeps a dup of the descriptor for every mmap (for size() and resize()): one open file per
# tenant mapped.  3.13 can do without it.
_MMAP_OPTIONS: dict[str, Any] = {"trackfd": False} if sys.version_info >= (3, 13) else {}

assert sys.byteorder == "little", "replica files are little-endian, read in place"


# -- names ---------------------------------------------------------------------------------------------------

def file_name(tenant: str) -> str:
    """The file name of `tenant`'s snapshot: safe for any string (no separator, no NUL, never "." or "..",
    at most 255 bytes), and distinct for distinct tenants ("~" never starts a plain name; "~~" never starts
    a hex one)."""
    if _PLAIN_NAME.fullmatch(tenant) and not tenant.startswith("."):
        return tenant + FILE_SUFFIX
    # surrogatepass: a str with lone surrogates (never a tenant a file can hold) still gets a name, not an error
    raw = tenant.encode("utf-8", "surrogatepass")
    name = "~" + raw.hex() + FILE_SUFFIX
    if len(name) <= _NAME_MAX:
        return name
    return "~~" + hashlib.sha256(raw).hexdigest() + FILE_SUFFIX


def snapshot_path(directory: Path | str, tenant: str) -> Path:
    """Where `tenant`'s snapshot lives in `directory`."""
    return Path(directory) / file_name(tenant)


# -- writing -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SnapshotFile:
    """A snapshot file as written (`write_snapshot`)."""

    tenant: str
    version: int
    checksum: str  # sha256 hex of the blob it was written from
    path: Path


class BlobRefused(ValueError):
    """`write_snapshot` refuses the blob itself (the core's checks, another tenant's snapshot): the same bytes always
    will be, where a checksum that does not match (bytes damaged on their way) or a full disk may do better next
    time."""


def write_snapshot(directory: Path | str, blob: bytes, version: int, checksum: str | None = None,
                   *, tenant: str | None = None) -> SnapshotFile:
    """Check `blob` (a `snapshot.dumps` serialization) and write it as `tenant`'s file, atomically.

    Checks, before anything is written: the blob's sha256 equals `checksum` when given (ValueError
    "checksum ... does not match"); `snapshot.loads(blob, version)` accepts it (the core's checks;
    BlobRefused "not a callgate snapshot: ..."); when `tenant` is given, the blob is that tenant's (so a
    snapshot sent under another tenant's name never replaces that other tenant's good file; BlobRefused).
    Then writes DIR/<file_name(tenant)> through a temporary file in the same directory: written, fsync'd, renamed over
    the old one (`os.replace`), the directory fsync'd.  An existing file is never written into: readers
    may have it mapped.  OSError (a full disk) leaves the old file as it was.
    """
    if type(version) is not int or version < 0:
        raise ValueError(f"version must be an int >= 0, not {version!r:.40}")
    actual = hashlib.sha256(blob).hexdigest()
    if checksum is not None and (not isinstance(checksum, str) or checksum.lower() != actual):
        raise ValueError(f"checksum {checksum!r:.80} does not match the blob's sha256 {actual}")
    try:
        snap = snapshot.loads(blob, version)
    except ValueError as exc:
        if isinstance(exc.__cause__, MemoryError):   # this host's memory, not the bytes: may do better later
            raise
        raise BlobRefused(str(exc)) from None
    if tenant is not None and snap.tenant != tenant:
        raise BlobRefused(f"the snapshot is tenant {snap.tenant!r:.70}'s, not {tenant!r:.70}'s")
    chunks = _encode(snap, version, actual)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name(snap.tenant)
    _replace(path, chunks, sync=True)
    _write_status(directory, bump=True)   # every worker looks at its files again at its next decision
    return SnapshotFile(snap.tenant, version, actual, path)


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _encode(snap: CoreSnapshot, version: int, checksum: str) -> list[bytes]:
    """The file's bytes, in pieces: prefix, header and padding, then each array and its padding."""
    specs: dict[str, dict[str, Any]] = {}
    data: list[bytes] = []
    offset = 0
    for name, arr in snap.arrays.items():  # the derived indexes too: shared, not derived in every reader
        raw = arr.tobytes()  # C order, whatever the array's strides
        offset = _align(offset)
        specs[name] = {"dtype": arr.dtype.descr if arr.dtype.fields else arr.dtype.str,
                       "shape": list(arr.shape), "offset": offset, "nbytes": len(raw)}
        data.append(raw)
        offset += len(raw)
    header = msgpack.packb({"version": version, "checksum": checksum, "meta": dict(snap.meta), "arrays": specs},
                           use_bin_type=True)
    start = _align(_PREFIX.size + len(header))
    body = [header, bytes(start - _PREFIX.size - len(header))]
    at = 0
    for raw in data:
        pad = _align(at) - at
        if pad:
            body.append(bytes(pad))
        body.append(raw)
        at += pad + len(raw)
    size = start + at
    digest = hashlib.sha256(struct.pack("<8sQQ", MAGIC, len(header), size))
    for piece in body:
        digest.update(piece)
    return [_PREFIX.pack(MAGIC, len(header), size, digest.digest()), *body]


def _replace(path: Path, chunks: Iterable[bytes], sync: bool) -> None:
    # 0644: the workers reading it may be another user (access control is the directory's)
    replace_atomically(path, chunks, sync=sync, mode=0o644)


def remove_snapshot(directory: Path | str, tenant: str) -> bool:
    """Remove `tenant`'s file (one unlink: atomic) and fsync the directory; True if there was one.

    Readers that have it mapped keep answering from it until they look again (`recheck_s`)."""
    directory = Path(directory)
    try:
        os.unlink(directory / file_name(tenant))
    except FileNotFoundError:
        return False
    sync_directory(directory)
    _write_status(directory, bump=True)
    return True


# -- reading -------------------------------------------------------------------------------------------------

def open_snapshot(path: Path | str, tenant: str | None = None) -> tuple[CoreSnapshot, int, str]:
    """(snapshot, version, checksum) of a replica file.

    The snapshot's arrays are read-only numpy views of one read-only mapping of the file (shared with every
    other process that maps it; unmapped when the snapshot and its decisions are gone).  With `tenant`, the
    file must hold that tenant's snapshot.  Any failure, a missing or unreadable file included, is
    ValueError("not a callgate replica file: ...").
    """
    try:
        snap, version, checksum, _ = _open(Path(path), tenant)
    except Exception as exc:  # whatever the bytes: OS, msgpack, numpy, the core's checks
        why = str(exc) if isinstance(exc, (ValueError, OSError)) and str(exc) else f"{type(exc).__name__}: {exc}"
    else:
        return snap, version, checksum
    raise ValueError(f"{ERROR}{why[:500]}")


def held(directory: Path | str, known: dict[Any, tuple[int, str, str]] | None = None) -> dict[str, tuple[int, str]]:
    """tenant -> (version, checksum) of every file in `directory` that a reader would use.

    Every file is checked as `open_snapshot` checks it (the sha256, the header, the core's checks, the lists'
    indexes the file holds against their bitmaps included) and its name against its tenant; files that fail
    are skipped, never raised: what this reports missing, the server sends again.  No directory: nothing
    held.  `known` (kept by the caller between calls, updated here): what earlier calls found by each file's
    (device, inode, size, mtime_ns), so that a file unchanged since is not read again (the replica process
    asks at every reconnect, every few seconds while the server is away)."""
    out: dict[str, tuple[int, str]] = {}
    found: dict[Any, tuple[int, str, str]] = {}
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except FileNotFoundError:
        entries = []
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(FILE_SUFFIX):
            continue  # temporary files being written, the heartbeat, the policy, strangers
        try:
            st = entry.stat()
            key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            seen = known.get(key) if known is not None else None
            if seen is None:   # read and checked whole; kept under the key of the very file opened
                opened: list[tuple[int, int, int, int]] = []
                _, version, checksum, tenant = _open(Path(entry.path), None, key=opened)
                key, seen = opened[0], (version, checksum, tenant)
            found[key] = seen
        except Exception:  # damaged, foreign, unreadable, vanished meanwhile
            continue
        version, checksum, tenant = seen
        if file_name(tenant) == entry.name:
            out[tenant] = (version, checksum)
    if known is not None:
        known.clear()
        known.update(found)
    return out


def _open(path: Path, tenant: str | None, key: list[tuple[int, int, int, int]] | None = None,
          copy: bool = False) -> tuple[CoreSnapshot, int, str, str]:
    """(snapshot, version, checksum, tenant); raises on any fault.  `key` receives the (device, inode, size,
    mtime_ns) of the very file opened.  With `copy`, the arrays are views of a private copy of the file read into
    this process's memory instead of the shared mapping (LocalDecisions(copy=True))."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO named *.cgsnap never hangs
    try:
        st = os.fstat(fd)
        if key is not None:
            key.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{path.name!r:.80} is not a regular file")
        if st.st_size < _PREFIX.size:
            raise ValueError(f"{st.st_size} bytes, shorter than the {_PREFIX.size}-byte prefix")
        mm: mmap.mmap | bytes
        sealed: tuple[bytes, bytes] | None = None
        if copy:  # one bytes object of the file's size (FileIO.readall), read-only views of it: private memory
            with open(fd, "rb", buffering=0, closefd=False) as f:
                mm = f.read()
        else:
            sealed = _read_sealed(fd, st.st_size)
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ, **_MMAP_OPTIONS)
    finally:
        os.close(fd)
    meta, version, checksum, arrays = _parse(mm, sealed)
    name = meta.get("tenant")
    if not isinstance(name, str):
        raise ValueError("meta tenant is not a string")
    if tenant is not None and name != tenant:  # a file under another tenant's name is foreign
        raise ValueError(f"the file holds tenant {name!r:.70}, not {tenant!r:.70}")
    # the core's every check, held() too: not `_core.validate_snapshot`, which refuses the lists' indexes as given
    # (a blob never holds them) and so every file now written; CoreSnapshot checks them against their bitmaps
    # (and derives them, privately, only for a file without them)
    snap = CoreSnapshot(arrays, meta)
    if snap.version != version:
        raise ValueError(f"meta version {snap.version}, header version {version}")
    if sealed is not None:   # decided from in place: each decision first checks that the file is the one checked
        snap._seal(mm, sealed[0])
    return snap, version, checksum, name


def _numbers_of(path: Path) -> tuple[str, tuple[str, ...]] | None:
    """(tenant, its numbers) from a file's header alone, or None when it cannot be read as one: what
    `LocalDecisions.tenant_of` routes by (no decision trusts it: the tenant's file is opened, every byte
    checked, to decide)."""
    try:
        # O_NONBLOCK and a regular file only: a FIFO or a device named *.cgsnap must not hang a SIP worker
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        with open(fd, "rb") as f:
            prefix = f.read(_PREFIX.size)
            if len(prefix) != _PREFIX.size:
                return None
            magic, hlen, _, _ = _PREFIX.unpack(prefix)
            if magic != MAGIC or not 0 < hlen <= MAX_INDEX_HEADER:
                return None
            header = msgpack.unpackb(f.read(hlen), raw=False)
        meta = header["meta"]
        tenant, numbers = meta["tenant"], meta["numbers"]
        if not isinstance(tenant, str) or not isinstance(numbers, list):
            return None
        return tenant, tuple(n for n in numbers if isinstance(n, str))
    except Exception:  # whatever the bytes (msgpack, types, I/O): not a file to route by
        return None


def _read_sealed(fd: int, size: int) -> tuple[bytes, bytes]:
    """(the prefix, the sha256 of the rest) of a file of `size` bytes, read with pread rather than through the
    mapping: a page the disk cannot give is then an OSError (EIO), where a mapping's load would be SIGBUS, and a
    file cut short meanwhile reads short (ValueError)."""
    prefix = os.pread(fd, _PREFIX.size, 0)
    sha = hashlib.sha256(prefix[:_SEALED])
    at = len(prefix)
    while len(prefix) == _PREFIX.size and at < size:
        chunk = os.pread(fd, min(_READ_CHUNK, size - at), at)
        if not chunk:
            break
        sha.update(chunk)
        at += len(chunk)
    if len(prefix) != _PREFIX.size or at != size:   # (no verdict on the file: looked at again, as changed)
        raise OSError(f"{size} bytes when opened, {at} when read (changed as it was read)")
    return prefix, sha.digest()


def _parse(mm: mmap.mmap | bytes, sealed: tuple[bytes, bytes] | None = None,
           ) -> tuple[dict[str, Any], int, str, dict[str, np.ndarray]]:
    """(meta, version, checksum, arrays as views of `mm`) of a mapped file (or of its bytes read whole), every byte
    of it checked: the sha256 over `mm`, or, `sealed`, the file's prefix and the sha256 of the rest as read
    without the mapping (`_read_sealed`)."""
    size = len(mm)
    magic, hlen, declared, digest = _PREFIX.unpack_from(mm if sealed is None else sealed[0], 0)
    if magic != MAGIC:
        raise ValueError(f"magic {magic!r}, expected {MAGIC!r}")
    if declared != size:
        raise ValueError(f"{size} bytes, its prefix says {declared} (truncated or extended)")
    if not 0 < hlen <= size - _PREFIX.size:
        raise ValueError(f"header length {hlen} does not fit in {size} bytes")
    start = _align(_PREFIX.size + hlen)
    if start > size:
        raise ValueError(f"data would start at {start}, past the end ({size} bytes)")
    if sealed is not None:
        computed = sealed[1]
    else:   # one pass over the whole file
        sha = hashlib.sha256(mm[:_SEALED])
        with memoryview(mm) as view, view[_PREFIX.size:] as rest:
            sha.update(rest)
        computed = sha.digest()
    if computed != digest:
        raise ValueError("its sha256 does not match its contents (damaged)")
    try:
        doc = msgpack.unpackb(mm[_PREFIX.size:_PREFIX.size + hlen], raw=False, use_list=True, strict_map_key=True)
    except Exception as exc:  # msgpack's errors are ValueErrors, some of them without a word
        raise ValueError(f"the header is not msgpack: {type(exc).__name__}: {exc}") from None
    if not isinstance(doc, dict) or set(doc) != _HEADER_KEYS:
        raise ValueError(f"the header is not a map of exactly {sorted(_HEADER_KEYS)}")
    version, checksum, meta, specs = doc["version"], doc["checksum"], doc["meta"], doc["arrays"]
    if type(version) is not int or version < 0:
        raise ValueError(f"header version {version!r:.40}")
    if not isinstance(checksum, str) or not _CHECKSUM.fullmatch(checksum):
        raise ValueError(f"header checksum {checksum!r:.80} is not a sha256 hex digest")
    if not isinstance(meta, dict) or not isinstance(specs, dict):
        raise ValueError("header meta and arrays must be maps")
    if meta.get("format") != snapshot.FORMAT:
        raise ValueError(f"snapshot format {meta.get('format')!r:.40}, expected {snapshot.FORMAT}")
    if meta.get("version") != version or type(meta.get("version")) is not int:
        raise ValueError(f"meta version {meta.get('version')!r:.40}, header version {version}")
    arrays: dict[str, np.ndarray] = {}
    end = start  # where the previous array ends: arrays are in order and never overlap
    for name, spec in specs.items():
        if not isinstance(name, str):
            raise ValueError(f"array name {name!r:.40} is not a string")
        arrays[name] = _view(mm, name, spec, start, end)
        end = start + spec["offset"] + spec["nbytes"]
    if end != size:
        raise ValueError(f"the arrays end at {end}, the file at {size}")
    if "line_format" not in arrays and isinstance(arrays.get("line_root"), np.ndarray):
        # as snapshot.loads: saved before lines had a caller_format, every line reads "auto"
        arrays["line_format"] = np.zeros(len(arrays["line_root"]), dtype=np.uint8)
    return meta, version, checksum, arrays


def _view(mm: mmap.mmap | bytes, name: str, spec: Any, start: int, end: int) -> np.ndarray:
    """The array `spec` describes, as a read-only view of `mm`; ValueError unless it lies, aligned and whole,
    between `end` (the previous array's end) and the end of the file."""
    if not isinstance(spec, dict) or set(spec) != _ARRAY_KEYS:
        raise ValueError(f"array {name}: expected a map of exactly {sorted(_ARRAY_KEYS)}")
    dtype = snapshot._dtype(spec["dtype"])
    shape, offset, nbytes = spec["shape"], spec["offset"], spec["nbytes"]
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise ValueError(f"array {name}: bad shape {shape!r:.60}")
    if type(offset) is not int or type(nbytes) is not int or offset < 0 or offset % ALIGN:
        raise ValueError(f"array {name}: offset {offset!r:.30} is not a multiple of {ALIGN}")
    if dtype.itemsize == 0:
        raise ValueError(f"array {name}: dtype {dtype} has no size")
    count = math.prod(shape)  # Python ints: no overflow, whatever the shape says
    if nbytes != count * dtype.itemsize:
        raise ValueError(f"array {name}: {nbytes!r:.30} bytes, its shape and dtype make {count * dtype.itemsize}")
    at = start + offset
    if at < end:
        raise ValueError(f"array {name}: bytes {at}..{at + nbytes} overlap the previous array's (ending at {end})")
    if at + nbytes > len(mm):
        raise ValueError(f"array {name}: bytes {at}..{at + nbytes} pass the end of the file ({len(mm)} bytes)")
    arr = np.frombuffer(mm, dtype=dtype, count=count, offset=at).reshape(shape)
    if not arr.flags.aligned:  # 64-byte offsets in a page-aligned mapping always are; never trust that
        raise ValueError(f"array {name} is not aligned for {dtype}")
    return arr


# -- policy ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Policy:
    """What a worker does with a replica older than `max_staleness_s`: per tenant, else `default`."""

    max_staleness_s: float = DEFAULT_MAX_STALENESS_S
    default: str = "stale-ok"
    tenants: dict[str, str] = field(default_factory=dict)

    def for_tenant(self, tenant: str) -> str:
        return self.tenants.get(tenant, self.default)


def _check_policy(max_staleness_s: Any, default: Any, tenants: Any) -> Policy:
    if type(max_staleness_s) not in (int, float) or not math.isfinite(max_staleness_s) or max_staleness_s < 0:
        raise ValueError(f"max_staleness_s must be a finite number >= 0, not {max_staleness_s!r:.40}")
    if default not in POLICIES:
        raise ValueError(f"policy {default!r:.40} is none of {', '.join(POLICIES)}")
    if not isinstance(tenants, Mapping):
        raise ValueError("tenants must map tenant ids to policies")
    for tenant, word in tenants.items():
        if not isinstance(tenant, str) or not isinstance(word, str) or word not in POLICIES:
            raise ValueError(f"tenant {tenant!r:.70}: policy {word!r:.40} is none of {', '.join(POLICIES)}")
    return Policy(float(max_staleness_s), default, dict(tenants))


def write_policy(directory: Path | str, max_staleness_s: float, default: str = "stale-ok",
                 tenants: Mapping[str, str] | None = None) -> None:
    """Write DIR/policy.json atomically (temporary file, fsync, os.replace, directory fsync).

    Policies: "stale-ok" (decide from the stale snapshot), "fail-closed" (reject), "backup" (forward to the
    tenant's backup number; a tenant without one is rejected).  ValueError for another word, or a staleness
    that is negative, NaN or infinite (JSON has no infinity; "never stale" is what "stale-ok" does)."""
    policy = _check_policy(max_staleness_s, default, tenants or {})
    _write_json(directory, POLICY, {"max_staleness_s": policy.max_staleness_s, "default": policy.default,
                                    "tenants": policy.tenants})


def read_policy(directory: Path | str) -> Policy:
    """DIR/policy.json; the defaults (30 s, "stale-ok", no tenant's own) when there is none; ValueError when it is
    damaged (not JSON, other keys, a word that is no policy)."""
    def check(doc: Any) -> Policy:
        if not isinstance(doc, dict) or set(doc) != {"max_staleness_s", "default", "tenants"}:
            raise ValueError("expected exactly max_staleness_s, default and tenants")
        return _check_policy(doc["max_staleness_s"], doc["default"], doc["tenants"])

    return _read_json(directory, POLICY, "replica policy", check, Policy())


def write_behind(directory: Path | str, behind: Mapping[str, float]) -> None:
    """Write DIR/behind.json atomically: tenant -> when (time.time()) the replica first failed to install the
    version in force.  Workers read it with the policy (the generation moves) and count such a tenant's answers
    as old since then (LocalDecisions.inbound says what they do past max_staleness_s)."""
    for tenant, since in behind.items():
        if not isinstance(tenant, str) or type(since) is not float or not math.isfinite(since):
            raise ValueError(f"behind[{tenant!r:.70}] must be a time, not {since!r:.40}")
    _write_json(directory, BEHIND, dict(behind))


def read_behind(directory: Path | str) -> dict[str, float]:
    """DIR/behind.json ({} when there is none); ValueError when it is damaged."""
    def check(doc: Any) -> dict[str, float]:
        if not isinstance(doc, dict) or not all(isinstance(t, str) and type(v) in (int, float) and math.isfinite(v)
                                                for t, v in doc.items()):
            raise ValueError("expected tenant ids mapped to times")
        return {t: float(v) for t, v in doc.items()}

    return _read_json(directory, BEHIND, "replica file", check, {})


T = TypeVar("T")


def _write_json(directory: Path | str, name: str, doc: Any) -> None:
    """DIR/NAME written atomically (temporary file, fsync, os.replace, directory fsync), then the generation
    moved on: every worker reads it at its next decision."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = json.dumps(doc, indent=1, sort_keys=True, allow_nan=False)
    _replace(directory / name, [text.encode() + b"\n"], sync=True)
    _write_status(directory, bump=True)


def _read_json(directory: Path | str, name: str, what: str, check: Callable[[Any], T], absent: T) -> T:
    """check() of DIR/NAME's JSON; `absent` when there is none; ValueError "damaged WHAT NAME: ..." when it is
    not JSON or check() refuses it."""
    try:
        raw = (Path(directory) / name).read_bytes()
    except FileNotFoundError:
        return absent
    try:
        return check(json.loads(raw))
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"damaged {what} {name}: {str(exc)[:300]}") from None


# the deciding half, in its own module (each engine source stays under 700 lines); imported last because it
# reads the names above
from .replica_local import LocalAnswer, LocalDecisions  # noqa: E402
