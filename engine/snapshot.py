"""Compile validated settings into the core's snapshot; save and load it.

`compile_settings` turns a `Settings` into flat numpy arrays plus a small
metadata dict and hands both to `_core.CoreSnapshot`.  The same arrays and
metadata serialize with msgpack (arrays as raw little-endian bytes) so that
another process loads a snapshot without compiling it again (`dumps`,
`loads`).  A push's compile process (`build`) serializes the checked arrays
straight away (`compile_blob`): it decides nothing, so it builds none of the
indexes that `loads` derives in every process that decides.

Layout decisions, and why:

- Blacklists are roaring64 bitmaps of E.164 numbers (as integers), kept in
  their portable serialization: the core reads containers in place from
  those bytes (no pyroaring call, no Python object, on the hot path), and a
  saved snapshot carries the very same bytes.
- Schedules are deduplicated: numbers with the same zone, weekly intervals
  and holidays share one schedule; schedules in the same zone share one UTC
  offset table (`engine.timezones`).
- Rates are a digit trie per line for longest-prefix matching.
- Numbers and users are open-addressing hash tables.
"""

from __future__ import annotations

import array
import datetime as dt
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np
from pyroaring import BitMap64

from . import _core, codes
from .dialing import country_dialing
from .document_json import dumps_document
from .money import to_micro
from .settings import Settings, document_format, parse_settings
from .timezones import zone_table

FORMAT = 1  # bump when the array layout changes; loads() refuses others
WEEK_WORDS = _core.WEEK_WORDS_
_EPOCH = dt.date(1970, 1, 1)

assert sys.byteorder == "little", "snapshots are stored little-endian"


def e164_values(numbers: Sequence[str]) -> np.ndarray:
    """E.164 strings (already validated) as uint64 values of their digits."""
    return _core.e164_array(numbers)


def roaring_bytes(values: np.ndarray) -> np.ndarray:
    """Serialized roaring64 bitmap of the values, as a uint8 array."""
    return np.frombuffer(roaring_bitmap(values).serialize(), dtype=np.uint8)


def roaring_bitmap(values: np.ndarray) -> BitMap64:
    ordered = array.array("Q")
    ordered.frombytes(np.sort(values).tobytes())
    bitmap = BitMap64(ordered)
    bitmap.run_optimize()
    bitmap.shrink_to_fit()
    return bitmap


def _table_size(n: int) -> int:
    size = 8
    while size < 2 * n:
        size *= 2
    return size


def _mix64(x: np.ndarray) -> np.ndarray:
    # must match mix64() in _core.pyx
    x = x.copy()
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xFF51AFD7ED558CCD)
        x ^= x >> np.uint64(33)
        x *= np.uint64(0xC4CEB9FE1A85EC53)
        x ^= x >> np.uint64(33)
    return x


def _fnv1a(data: bytes) -> int:
    # must match fnv1a() in _core.pyx
    h = 14695981039346656037
    for byte in data:
        h = ((h ^ byte) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h | 1


def _hash_table(hashes: Iterable[int], size: int) -> tuple[np.ndarray, np.ndarray]:
    keys = np.zeros(size, dtype=np.uint64)
    vals = np.full(size, -1, dtype=np.int32)
    mask = size - 1
    for index, key in enumerate(hashes):
        slot = key & mask
        while keys[slot] != 0:
            slot = (slot + 1) & mask
        keys[slot] = key
        vals[slot] = index
    return keys, vals


def _number_table(values: np.ndarray) -> np.ndarray:
    """Open-addressing table E.164 value -> number index (key 0: empty), probed by mix64."""
    size = _table_size(len(values))
    keys = [0] * size
    index = [-1] * size
    mask = size - 1
    slots = (_mix64(values) & np.uint64(mask)).astype(np.int64)
    for i, (value, slot) in enumerate(zip(values.tolist(), slots.tolist(), strict=True)):
        while keys[slot] != 0:
            slot = (slot + 1) & mask
        keys[slot] = value
        index[slot] = i
    table = np.zeros(size, dtype=_core.SLOT_DTYPE)
    table["key"] = keys
    table["index"] = index
    return table


def compile_settings(settings: Settings, version: int = 1, approved: Iterable[str] = ()) -> _core.CoreSnapshot:
    """Compile validated settings; `approved` are numbers whose documents are approved."""
    arrays, meta = compile_arrays(settings, version, approved)
    return _core.CoreSnapshot(arrays, meta)


def compile_blob(settings: Settings, version: int = 1, approved: Iterable[str] = ()) -> bytes:
    """`dumps(compile_settings(...))` without the snapshot: the arrays and metadata are checked as a
    CoreSnapshot checks them (`_core.validate_snapshot`), but the lists' indexes, which a blob never
    carries, are not built (every process that `loads` the blob derives its own)."""
    arrays, meta = compile_arrays(settings, version, approved)
    _core.validate_snapshot(arrays, meta)
    return _pack(arrays, meta)


def compile_arrays(settings: Settings, version: int, approved: Iterable[str]) -> tuple[dict, dict]:
    """The snapshot's arrays and metadata (see the module docstring for their layout), unchecked."""
    approved_set = set(approved)
    line_ids = [line.id for line in settings.lines]
    line_index = {lid: i for i, lid in enumerate(line_ids)}
    group_members = settings.group_members()
    group_ids = list(group_members)
    group_index = {gid: i for i, gid in enumerate(group_ids)}

    # countries
    regions = sorted({n.country for n in settings.numbers})
    region_index = {r: i for i, r in enumerate(regions)}
    countries = np.zeros(len(regions), dtype=_core.COUNTRY_DTYPE)
    for i, region in enumerate(regions):
        d = country_dialing(region)
        assert d is not None, region
        countries[i] = (int(d.country_code), len(d.country_code), len(d.international_prefix),
                        len(d.national_prefix), sum(1 << n for n in d.national_lengths),
                        d.international_prefix.encode(), d.national_prefix.encode())

    # schedules (deduplicated) and zones
    zone_ids: dict[str, int] = {}
    sched_ids: dict[Any, int] = {}
    sched_zone: list[int] = []
    weeks: list[np.ndarray] = []
    holidays: list[list[int]] = []
    num_sched = np.full(len(settings.numbers), -1, dtype=np.int32)
    for i, number in enumerate(settings.numbers):
        sch = number.schedule
        if sch is None:
            continue
        key = (sch.timezone, sch.weekly, sch.holidays)
        if key not in sched_ids:
            sched_ids[key] = len(sched_zone)
            sched_zone.append(zone_ids.setdefault(sch.timezone, len(zone_ids)))
            bits = np.zeros(WEEK_WORDS * 64, dtype=np.uint8)
            for day, intervals in enumerate(sch.weekly):
                for start, end in intervals:
                    bits[day * 1440 + start: day * 1440 + end] = 1
            weeks.append(np.packbits(bits, bitorder="little").view(np.uint64))
            holidays.append(sorted((h - _EPOCH).days for h in sch.holidays))
        num_sched[i] = sched_ids[key]
    zone_starts: list[np.ndarray] = []
    zone_offsets: list[np.ndarray] = []
    zone_base = [0]
    for name in zone_ids:
        starts, offsets = zone_table(name)
        zone_starts.append(starts)
        zone_offsets.append(offsets)
        zone_base.append(zone_base[-1] + len(starts))
    # per zone and 2^22 s bucket: the segment in force at the bucket's start
    bucket_starts = _core.MIN_INSTANT_ + (np.arange(_core.ZONE_BUCKETS_, dtype=np.int64)
                                          << _core.ZONE_BUCKET_BITS_)
    zone_bucket = np.concatenate(
        [base + np.searchsorted(starts, bucket_starts, side="right") - 1
         for base, starts in zip(zone_base, zone_starts, strict=False)]
    ).astype(np.int32) if zone_starts else np.zeros(0, dtype=np.int32)
    hol_base = np.zeros(len(holidays) + 1, dtype=np.int32)
    hol_base[1:] = np.cumsum([len(h) for h in holidays]) if holidays else []

    # numbers
    n = len(settings.numbers)
    num_e164 = e164_values([x.number for x in settings.numbers])
    by_number = {x.number: i for i, x in enumerate(settings.numbers)}
    flags = np.array([(1 if x.requires_documents else 0) | (2 if x.number in approved_set else 0)
                      | (4 if x.inbound_only else 0) for x in settings.numbers], dtype=np.uint8)
    actions = {"reject": 0, "voicemail": 1, "forward": 2}
    number_table = _number_table(num_e164)

    # rates: one digit trie per line
    trie_child: list[list[int]] = []
    trie_rate: list[int] = []
    rate_pm: list[int] = []
    rate_inc: list[int] = []
    rate_text: list[str] = []
    line_root = []
    for line in settings.lines:
        root = len(trie_rate)
        trie_child.append([-1] * 10)
        trie_rate.append(-1)
        line_root.append(root)
        for rate in line.rates:
            node = root
            for ch in rate.prefix:
                digit = ord(ch) - 48
                if trie_child[node][digit] < 0:
                    trie_child[node][digit] = len(trie_rate)
                    trie_child.append([-1] * 10)
                    trie_rate.append(-1)
                node = trie_child[node][digit]
            trie_rate[node] = len(rate_pm)
            rate_pm.append(to_micro(rate.per_minute))
            rate_inc.append(rate.increment_s)
            rate_text.append(str(rate.per_minute))

    # users: `users` entries and every queue-group member
    user_groups = settings.user_groups()
    user_ids = list(user_groups)
    own_caller = {u.id: u.caller_id for u in settings.users}
    words = max(1, (len(group_ids) + 63) // 64)
    groups_bits = np.zeros((len(user_ids), words), dtype=np.uint64)
    for ui, uid in enumerate(user_ids):
        for gid in user_groups[uid]:
            g = group_index[gid]
            groups_bits[ui, g // 64] |= np.uint64(1 << (g % 64))
    encoded = [uid.encode() for uid in user_ids]
    user_off = np.zeros(len(encoded) + 1, dtype=np.int32)
    user_off[1:] = np.cumsum([len(e) for e in encoded]) if encoded else []
    ut_keys, ut_vals = _hash_table((_fnv1a(e) for e in encoded), _table_size(len(encoded)))
    caller_of = [own_caller.get(uid) for uid in user_ids]

    backup = settings.backup
    blacklist = roaring_bitmap(e164_values(settings.blacklist))
    offhours = roaring_bitmap(e164_values(settings.offhours_blacklist))
    arrays: dict[str, np.ndarray] = {
        "num_e164": num_e164,
        "num_line": np.array([line_index[x.line] for x in settings.numbers], dtype=np.int32),
        "num_country": np.array([region_index[x.country] for x in settings.numbers], dtype=np.int32),
        "num_flags": flags,
        "num_sched": num_sched,
        "num_action": np.array([actions[x.offhours_action.action] for x in settings.numbers], dtype=np.uint8),
        "num_fwd": np.array([int(x.offhours_action.to[1:]) if x.offhours_action.to else 0
                             for x in settings.numbers], dtype=np.uint64),
        "num_group": np.array([group_index[x.route_to] if x.route_to else -1 for x in settings.numbers],
                              dtype=np.int32),
        "nt": number_table,
        "countries": countries,
        "sched_zone": np.array(sched_zone, dtype=np.int32),
        "sched_week": np.concatenate(weeks) if weeks else np.zeros(0, dtype=np.uint64),
        "sched_hol_base": hol_base,
        "hol_days": np.array([d for h in holidays for d in h], dtype=np.int32),
        "zone_base": np.array(zone_base, dtype=np.int32),
        "zone_bucket": zone_bucket,
        "zone_starts": np.concatenate(zone_starts) if zone_starts else np.zeros(0, dtype=np.int64),
        "zone_offsets": np.concatenate(zone_offsets) if zone_offsets else np.zeros(0, dtype=np.int32),
        "line_root": np.array(line_root, dtype=np.int32),
        "line_format": np.array([codes.CALLER_FORMATS.index(x.caller_format) for x in settings.lines],
                                dtype=np.uint8),
        "trie_child": np.array(trie_child, dtype=np.int32).reshape(-1),
        "trie_rate": np.array(trie_rate, dtype=np.int32),
        "rate_pm": np.array(rate_pm, dtype=np.int64),
        "rate_inc": np.array(rate_inc, dtype=np.int32),
        "ut_keys": ut_keys,
        "ut_vals": ut_vals,
        "user_blob": np.frombuffer(b"".join(encoded), dtype=np.uint8),
        "user_off": user_off,
        "user_callerid": np.array([by_number[c] if c else -1 for c in caller_of], dtype=np.int32),
        "user_groups": groups_bits.reshape(-1),
        "blacklist": np.frombuffer(blacklist.serialize(), dtype=np.uint8),
        "offhours_blacklist": np.frombuffer(offhours.serialize(), dtype=np.uint8),
    }
    meta: dict[str, Any] = {
        "format": FORMAT,
        "tenant": settings.tenant,
        "version": version,
        "currency": settings.currency,
        "active": settings.status == "active",
        "block_anonymous": settings.block_anonymous,
        "chat_mode": settings.chat_mode,
        "lead_trigger": settings.lead_trigger,
        "backup_line": line_index[backup.line] if backup else -1,
        "backup_number": int(backup.number[1:]) if backup else 0,
        "default_callerid": by_number[settings.default_caller_id] if settings.default_caller_id else -1,
        "pickup_code": settings.pickup_code or "",
        "lines": line_ids,
        "groups": group_ids,
        "members": [list(group_members[g]) for g in group_ids],
        "numbers": [x.number for x in settings.numbers],
        "users": user_ids,
        "rates": rate_text,
        "group_words": words,
        "approved": sorted(approved_set & set(by_number)),
        # what billing needs beside the decisions (server/billing.py): money as strings, dates ISO
        "auto_topup": {"enabled": settings.auto_topup.enabled,
                       "amount": str(settings.auto_topup.amount) if settings.auto_topup.amount is not None else None},
        "rentals": [[x.number, str(x.rental.monthly_fee), x.rental.renews_on.isoformat()]
                    for x in settings.numbers if x.rental is not None],
        "documents_required": [x.number for x in settings.numbers if x.requires_documents],
        "blacklist_size": len(blacklist),
        "offhours_blacklist_size": len(offhours),
    }
    assert n == len(arrays["num_line"])
    return arrays, meta


# Arrays derived again on load (the roaring indexes) are not saved.
_DERIVED = ("blacklist_table", "blacklist_filter", "offhours_blacklist_table", "offhours_blacklist_filter")


def dumps(snapshot: _core.CoreSnapshot) -> bytes:
    """Serialize a compiled snapshot: msgpack metadata plus raw little-endian arrays."""
    return _pack(snapshot.arrays, snapshot.meta)


def _pack(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> bytes:
    """The serialization of `dumps`, from a snapshot's arrays and metadata (derived indexes left out)."""
    specs = {
        name: {"dtype": a.dtype.descr if a.dtype.fields else a.dtype.str, "shape": list(a.shape),
               "data": a.tobytes()}
        for name, a in arrays.items()
        if name not in _DERIVED
    }
    return msgpack.packb({"meta": dict(meta), "arrays": specs}, use_bin_type=True)


def _dtype(spec: Any) -> np.dtype:
    if isinstance(spec, str):
        dtype = np.dtype(spec)
    elif isinstance(spec, list) and all(isinstance(field, list) and len(field) == 2 for field in spec):
        dtype = np.dtype([tuple(field) for field in spec], align=True)
    else:
        raise ValueError(f"bad dtype {spec!r:.60}")
    if dtype.hasobject:
        raise ValueError(f"dtype {dtype} holds Python objects")
    return dtype


def _array(name: str, spec: Any) -> np.ndarray:
    if not isinstance(spec, dict) or not isinstance(spec.get("data"), bytes):
        raise ValueError(f"array {name}: expected a map with dtype, shape and data")
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise ValueError(f"array {name}: bad shape {shape!r:.60}")
    arr = np.frombuffer(spec["data"], dtype=_dtype(spec.get("dtype"))).reshape(shape)
    # the core reads arrays in place: they must be aligned (bytes objects are, but never trust that)
    return arr if arr.flags.aligned else arr.copy()


def loads(data: bytes, version: int | None = None) -> _core.CoreSnapshot:
    """Load a snapshot saved by `dumps`, without compiling (arrays are views of `data`).

    `version` stamps the settings version it is in force as (a blob is
    compiled before the store assigns the version number).  Whatever the
    bytes, the result is a snapshot whose every index the core has checked,
    or ValueError("not a callgate snapshot: ...").
    """
    try:
        doc = msgpack.unpackb(data, raw=False, use_list=True)
        if not isinstance(doc, dict) or not isinstance(doc.get("meta"), dict) or \
                not isinstance(doc.get("arrays"), dict):
            raise ValueError("expected a map with meta and arrays")
        meta = doc["meta"]
        if meta.get("format") != FORMAT:
            raise ValueError(f"snapshot format {meta.get('format')!r:.40}, expected {FORMAT}")
        if version is not None:
            meta["version"] = version
        arrays = {}
        for name, spec in doc["arrays"].items():
            if name in _DERIVED:  # derived (and so checked) on load, never taken from the bytes
                raise ValueError(f"array {name} is derived on load, not saved")
            arrays[name] = _array(name, spec)
        if "line_format" not in arrays and isinstance(arrays.get("line_root"), np.ndarray):
            # saved before lines had a caller_format: every line reads "auto"
            arrays["line_format"] = np.zeros(len(arrays["line_root"]), dtype=np.uint8)
        return _core.CoreSnapshot(arrays, meta)
    except Exception as exc:  # whatever the bytes: msgpack, numpy, the core's checks
        why = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
        # (the cause kept: a MemoryError is this host's, not the bytes', see replica.write_snapshot)
        raise ValueError(f"not a callgate snapshot: {why[:500]}") from exc


def with_documents(snapshot: _core.CoreSnapshot, approved: Iterable[str],
                   rejected: Mapping[str, str] | Iterable[str] = ()) -> _core.CoreSnapshot:
    """The same snapshot with another state of the numbers' documents (no recompiling): `approved` numbers may
    be used; `rejected` ones (a mapping gives each rejection's reason) answer DOCUMENTS_REJECTED instead of
    DOCUMENTS_PENDING until a set is approved.

    Only the small per-number flags array is copied; everything else is shared.
    """
    meta = dict(snapshot.meta)
    index = {num: i for i, num in enumerate(meta["numbers"])}
    approved_set = {num for num in approved if num in index}
    reasons = dict(rejected) if isinstance(rejected, Mapping) else {num: "" for num in rejected}
    rejected_set = {num for num in reasons if num in index and num not in approved_set}
    flags = snapshot.arrays["num_flags"].copy()
    flags &= np.uint8(0xFF ^ (2 | 8))
    for num in approved_set:
        flags[index[num]] |= np.uint8(2)
    for num in rejected_set:
        flags[index[num]] |= np.uint8(8)
    arrays = dict(snapshot.arrays)
    arrays["num_flags"] = flags
    meta["approved"] = sorted(approved_set)
    meta["rejections"] = {num: str(reasons[num]) for num in sorted(rejected_set)}
    return _core.CoreSnapshot(arrays, meta, derived_from=snapshot)


@dataclass(frozen=True, slots=True)
class Built:
    """A validated document, as JSON, and its compiled snapshot blob (see `build`)."""

    tenant: str
    document: bytes | None  # the document re-encoded as JSON; None: the bytes pushed were JSON, keep them
    blob: bytes             # dumps() of the compiled snapshot
    compile_seconds: float
    longest_list: int = 0   # entries on the longer of the two blacklists (servers cap it)
    # (number, line) of every `numbers[i]`, in document order: what the tenant claims (the store's owners)
    numbers: tuple[tuple[str, str], ...] = ()
    status: str = ""                            # the tenant's status, and its backup (number, line) or ("", "")
    backup: tuple[str, str] = ("", "")


def build(document: bytes, fmt: str | None = None, approved: Iterable[str] = ()) -> Built:
    """Validate a settings document and compile it; raises SettingsError.

    The unit of work of a push: pure, picklable in and out, so that servers
    run it in a separate process and never stall their event loop on it.
    The blob is made from the checked arrays without a CoreSnapshot: the
    compile process decides nothing, so it builds no list indexes for the
    workers to throw away (each worker's `loads` checks and indexes it).
    """
    import time

    start = time.perf_counter()
    settings = parse_settings(document, fmt)
    blob = compile_blob(settings, version=0, approved=approved)
    as_json = None  # JSON pushed stays byte for byte (and is not sent back across the process boundary)
    if document_format(document, fmt) == "msgpack":
        as_json = dumps_document(settings.document)
    return Built(settings.tenant, as_json, blob, time.perf_counter() - start,
                 max(len(settings.blacklist), len(settings.offhours_blacklist)),
                 tuple((n.number, n.line) for n in settings.numbers), settings.status,
                 (settings.backup.number, settings.backup.line) if settings.backup else ("", ""))
