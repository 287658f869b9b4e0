"""Long-run mutation fuzz of compiled snapshot blobs (engine.snapshot.loads and every decision path).

    python -m loadtest.snapshot_fuzz --inputs 1000000 [--seed N] [--jobs 2] [--out DIR]

Takes valid snapshot blobs compiled from varied settings, mutates them
(byte flips anywhere, runs of random bytes, truncations, msgpack length
fields changed, and, on the decoded document, array elements set to
out-of-range values or moved within their array, array data, shapes and
dtypes changed, arrays dropped or swapped, metadata replaced by wrong types
or out-of-range values), loads each
one and, when it loads, runs inbound, outbound and pickup decisions, the
batch APIs and the list lookups with the original settings' numbers, users,
listed callers and pickup code, so the deep paths are reached.

Each input is a pure function of (seed, index), so workers run in
subprocesses: a worker that dies (SIGSEGV, SIGBUS, abort) is a crash, its
input is made again and saved under --out, and a new worker carries on after
it.  A decision that raises, or a load that raises anything but ValueError,
is a failure (saved likewise).  Progress every second; the last line has the
totals; the exit status is 1 if anything crashed or failed.
"""

from __future__ import annotations

import argparse
import copy
import json
import multiprocessing as mp
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from engine import RingingCall, compile_settings, dumps, loads, parse_settings, with_documents

ROOT = Path(__file__).resolve().parent.parent
MONDAY_1030_LA = 1796149800 - 86400  # 2026-11-30T10:30:00-08:00
TIMES = (MONDAY_1030_LA, MONDAY_1030_LA + 86400, MONDAY_1030_LA + 5 * 86400 + 3600 * 12,
         1798185600 + 3600 * 15, 946_684_800, 4_102_444_799, 1_700_000_000)


# -- valid snapshots to start from ---------------------------------------------------------------------

@dataclass(frozen=True)
class Base:
    """A valid snapshot blob and what its settings name: the inputs that reach the deep paths."""

    name: str
    blob: bytes
    numbers: tuple[str, ...]
    users: tuple[str, ...]
    callers: tuple[str, ...]
    pickup: str


def _rich_document() -> dict[str, Any]:
    """Three lines with rate tries, numbers in six countries and several zones, holidays, 70 queue
    groups (two words of group bits), users with their own caller IDs, and lists with array, bitset and
    run containers."""
    countries = [("US", "+1415555", "America/Los_Angeles"), ("GB", "+4420712", "Europe/London"),
                 ("DE", "+4930123", "Europe/Berlin"), ("FR", "+331234", "Europe/Paris"),
                 ("JP", "+81312345", "Asia/Tokyo"), ("AU", "+61291234", "Australia/Sydney")]
    weekly = [{"mon": [["09:00", "18:00"]], "tue": [["09:00", "12:00"], ["13:00", "24:00"]]},
              {"wed": [["00:00", "24:00"]], "sat": [["10:00", "14:00"]]}, {}]
    numbers = []
    for i in range(24):
        country, prefix, zone = countries[i % len(countries)]
        width = 12 - len(prefix) + 1
        entry: dict[str, Any] = {"number": f"{prefix}{i + 10:0{width}d}", "line": f"l{i % 3}", "country": country,
                                 "requires_documents": i % 5 == 0, "inbound_only": i % 7 == 3,
                                 "route_to": f"g{i % 70}" if i % 4 else None}
        if i % 3:
            entry["schedule"] = {"timezone": zone, "weekly": weekly[i % 3],
                                 "holidays": ["2026-12-25", "2026-12-01"][: i % 3]}
        entry["offhours_action"] = [{"action": "voicemail"}, {"action": "reject"},
                                    {"action": "forward", "to": "+14155550123"}][i % 3]
        if entry["route_to"] is None:
            del entry["route_to"]
        numbers.append(entry)
    outbound = [n["number"] for n in numbers if not n["inbound_only"]]
    dense = [f"+1212555{i:04d}" for i in range(0, 9000)]          # a bitset container
    run = [f"+4420799{i:05d}" for i in range(20000, 26000)]      # a run container
    sparse = [f"+49151{i * 7919 % 10**8:08d}" for i in range(300)]
    return {
        "tenant": "rich", "currency": "EUR", "status": "active", "chat_mode": "single_chat",
        "lead_trigger": "on_hangup", "pickup_code": "#99", "block_anonymous": True,
        "default_caller_id": outbound[1],
        "backup": {"number": "+14155550111", "line": "l1"},
        "lines": [{"id": f"l{k}", "kind": "rented", "caller_format": ["auto", "national", "international"][k],
                   "rates": [{"prefix": p, "per_minute": f"0.0{k}{j}5", "increment_s": [1, 6, 60][(j + k) % 3]}
                             for j, p in enumerate(["1", "14", "1415", "44", "447", "49", "33", "81", "61"][k:])]}
                  for k in range(3)],
        "numbers": numbers,
        "users": [{"id": f"user.{i}@x", "groups": [f"g{(i * 3) % 70}", f"g{(i * 3 + 1) % 70}"],
                   **({"caller_id": outbound[i % len(outbound)]} if i % 2 else {})} for i in range(40)],
        "queue_groups": [{"id": f"g{g}", "members": [f"user.{(g + k) % 40}@x" for k in range(3)]}
                         for g in range(70)],
        "blacklist": dense[:5000] + sparse + ["+14155550666"],
        "offhours_blacklist": run + dense[5000:] + ["+14155550777"],
    }


def _minimal_document() -> dict[str, Any]:
    return {"tenant": "min", "currency": "USD", "status": "active", "chat_mode": "none",
            "lead_trigger": "on_answer", "lines": [{"id": "only", "kind": "byoc"}],
            "numbers": [{"number": "+14155550100", "line": "only", "country": "US"}]}


def bases() -> list[Base]:
    """Valid snapshots compiled from varied settings, with the inputs their settings name."""
    acme = json.loads((ROOT / "examples" / "acme.json").read_text())
    suspended = dict(copy.deepcopy(acme), status="suspended", block_anonymous=True)
    docs = [("acme", acme, ()), ("acme-approved", acme, ("+14155550100",)), ("acme-suspended", suspended, ()),
            ("rich", _rich_document(), ("+14155550010", "+33123400013")), ("minimal", _minimal_document(), ())]
    out = []
    for name, doc, approved in docs:
        settings = parse_settings(doc)
        blob = dumps(compile_settings(settings, version=3, approved=approved))
        users = {u.id for u in settings.users} | {m for g in settings.queue_groups for m in g.members}
        callers = list(settings.blacklist[:3]) + list(settings.offhours_blacklist[:3]) + list(settings.blacklist[-2:])
        out.append(Base(name, blob, tuple(n.number for n in settings.numbers), tuple(sorted(users))[:12],
                        tuple(callers), settings.pickup_code or "*8"))
    return out


# -- msgpack structure ---------------------------------------------------------------------------------

def msgpack_headers(blob: bytes) -> list[tuple[int, int]]:
    """(offset, width) of the length field of every str, bin, array and map header in a msgpack blob
    (width 0: a fix type whose length sits in the type byte)."""
    found: list[tuple[int, int]] = []
    pos = 0
    stack = [1]  # objects still to read at each level
    n = len(blob)
    while stack and pos < n:
        stack[-1] -= 1
        b = blob[pos]
        length, skip, width, children = 0, 0, 0, 0
        if b <= 0x7F or b >= 0xE0 or b in (0xC0, 0xC2, 0xC3):
            skip = 1
        elif 0x80 <= b <= 0x8F:
            found.append((pos, 0))
            skip, children = 1, 2 * (b & 0x0F)
        elif 0x90 <= b <= 0x9F:
            found.append((pos, 0))
            skip, children = 1, b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            found.append((pos, 0))
            skip = 1 + (b & 0x1F)
        elif b in (0xC4, 0xC5, 0xC6, 0xD9, 0xDA, 0xDB):
            width = {0xC4: 1, 0xC5: 2, 0xC6: 4, 0xD9: 1, 0xDA: 2, 0xDB: 4}[b]
            length = int.from_bytes(blob[pos + 1:pos + 1 + width], "big")
            found.append((pos + 1, width))
            skip = 1 + width + length
        elif b in (0xDC, 0xDD, 0xDE, 0xDF):
            width = 2 if b in (0xDC, 0xDE) else 4
            length = int.from_bytes(blob[pos + 1:pos + 1 + width], "big")
            found.append((pos + 1, width))
            skip, children = 1 + width, length * (2 if b >= 0xDE else 1)
        elif b in (0xCC, 0xD0):
            skip = 2
        elif b in (0xCD, 0xD1):
            skip = 3
        elif b in (0xCA, 0xCE, 0xD2):
            skip = 5
        elif b in (0xCB, 0xCF, 0xD3):
            skip = 9
        else:  # ext types: not written by dumps
            return found
        pos += skip
        if children:
            stack.append(children)
        while stack and stack[-1] == 0:
            stack.pop()
    return found


# -- mutations -----------------------------------------------------------------------------------------

INTERESTING = (-(2**31), -(2**31) + 1, -65536, -2, -1, 0, 1, 2, 7, 8, 9, 10, 15, 16, 157, 158, 159, 255, 256, 753,
               65535, 65536, 2**31 - 1, 2**32 - 1, 2**63 - 1)
WRONG_VALUES: tuple[Any, ...] = (None, True, False, -1, 0, 1, 2, 7, -(2**31), 2**31, 2**40, 2**63 - 1, 2**64 - 1,
                                 -(2**63), 1.5, float("nan"), "", "x", "+14155550100", "9" * 40, b"\x00", [], [1],
                                 ["x"], [[]], [None], {}, {"enabled": "yes"}, ["a", "b", "c"] * 30)
DTYPES: tuple[Any, ...] = ("<u8", "<i4", "|u1", "<i8", ">i4", ">u8", "<f8", "|S8", "<u4", "|b1", "O", "V16", "",
                           "garbage", "<i4,<i4", "(3,)<i4", [["key", "<u8"], ["index", "<i4"], ["pad", "<i4"]],
                           [["key", "<u8"], ["off", "<u4"], ["meta", "<u4"]], [["x", "O"]], [1, 2], 7, None)


def _flip_bytes(rng: random.Random, blob: bytes) -> bytes:
    data = bytearray(blob)
    for _ in range(min(len(data), rng.choice((1, 1, 2, 3, 8, 64)))):
        data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    return bytes(data)


def _random_run(rng: random.Random, blob: bytes) -> bytes:
    size = rng.choice((64, 64, 8, 16, 256, 1024))
    at = rng.randrange(max(len(blob) - size, 1))
    return blob[:at] + rng.randbytes(min(size, len(blob) - at)) + blob[at + size:]


def _truncate(rng: random.Random, blob: bytes) -> bytes:
    if rng.random() < 0.2:
        return blob + rng.randbytes(rng.randrange(1, 64))
    return blob[:rng.randrange(len(blob))]


def _length_field(rng: random.Random, blob: bytes) -> bytes:
    headers = msgpack_headers(blob)
    if not headers:
        return _flip_bytes(rng, blob)
    pos, width = rng.choice(headers)
    data = bytearray(blob)
    if width == 0:
        data[pos] ^= 1 << rng.randrange(4)
    else:
        old = int.from_bytes(data[pos:pos + width], "big")
        new = rng.choice((old + 1, old - 1, old + rng.randrange(1, 64), old // 2, 0, 2 ** (8 * width) - 1,
                          rng.randrange(2 ** (8 * width)))) % 2 ** (8 * width)
        data[pos:pos + width] = new.to_bytes(width, "big")
    return bytes(data)


def _element(rng: random.Random, spec: dict[str, Any]) -> None:
    """Set one element (one field of a record) of an array to an interesting value."""
    dtype = np.dtype([tuple(f) for f in spec["dtype"]], align=True) if isinstance(spec["dtype"], list) \
        else np.dtype(spec["dtype"])
    arr = np.frombuffer(spec["data"], dtype=dtype).copy()
    if len(arr) == 0:
        spec["data"] = rng.randbytes(dtype.itemsize)
        spec["shape"] = [1]
        return
    i = rng.choice((0, len(arr) - 1, rng.randrange(len(arr))))
    field = rng.choice(dtype.names) if dtype.names else None
    kind = dtype[field] if field else dtype
    if rng.random() < 0.4:  # values the array already holds, elsewhere: often still in range, so it loads
        j = rng.randrange(len(arr))
        if rng.random() < 0.5:
            arr[i], arr[j] = arr[j].copy(), arr[i].copy()
        else:
            arr[i] = arr[j]
    elif kind.kind in "iu":
        info = np.iinfo(kind)
        value = rng.choice((*INTERESTING, len(arr), len(arr) - 1, len(arr) + 1, -len(arr), rng.randrange(-99, 99)))
        value = max(info.min, min(info.max, value))
        if field:
            arr[field][i] = value
        else:
            arr[i] = value
    else:
        raw = bytearray(arr.tobytes())
        raw[i * dtype.itemsize + rng.randrange(dtype.itemsize)] ^= 0xFF
        arr = np.frombuffer(bytes(raw), dtype=dtype)
    spec["data"] = arr.tobytes()


def _structured(rng: random.Random, blob: bytes) -> bytes:
    doc = msgpack.unpackb(blob, raw=False)
    arrays, meta = doc["arrays"], doc["meta"]
    name = rng.choice(sorted(arrays))
    spec = arrays[name]
    what = max(rng.randrange(16) - 4, 0)  # one in two: array elements
    if what <= 3:
        for _ in range(rng.choice((1, 1, 2, 4))):
            _element(rng, arrays[rng.choice(sorted(arrays))] if _ else spec)
    elif what == 4:
        data = bytearray(spec["data"])
        for _ in range(rng.choice((1, 4, 64))):
            if data:
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        spec["data"] = bytes(data)
    elif what == 5:  # a different length, shape kept consistent: lengths no longer agree between arrays
        item = max(len(spec["data"]) // max(int(np.prod(spec["shape"])), 1), 1)
        k = rng.choice((-1, 1, 2, -2, 10))
        spec["data"] = spec["data"][:max(len(spec["data"]) + k * item, 0)] if k < 0 \
            else spec["data"] + rng.randbytes(k * item)
        spec["shape"] = [len(spec["data"]) // item]
    elif what == 6:
        spec["shape"] = rng.choice(([], [0], [-1], [1, -1], [2, -1], [2**40], [2**62, 2**62], ["x"], None,
                                    [spec["shape"][0] + 1] if spec["shape"] else [1]))
    elif what == 7:
        spec["dtype"] = rng.choice(DTYPES)
    elif what == 8:
        choice = rng.randrange(5)
        if choice == 0:
            del arrays[name]
        elif choice == 1:
            arrays[rng.choice(("blacklist_table", "blacklist_filter", "extra"))] = spec
        elif choice == 2:
            other = rng.choice(sorted(arrays))
            arrays[name], arrays[other] = arrays[other], arrays[name]
        elif choice == 3:
            arrays[name] = rng.choice(WRONG_VALUES)
        else:
            spec["data"] = rng.choice((b"", rng.randbytes(rng.randrange(1, 40)), "text"))
    elif what <= 10:
        key = rng.choice([*sorted(meta), "nothing"])
        value = meta.get(key)
        if isinstance(value, list) and value and rng.random() < 0.6:
            j = rng.randrange(len(value))
            if isinstance(value[j], list) and value[j] and rng.random() < 0.5:
                value[j][rng.randrange(len(value[j]))] = rng.choice(WRONG_VALUES)
            elif rng.random() < 0.5:
                del value[j]
            else:
                value[j] = rng.choice(WRONG_VALUES)
        elif isinstance(value, int) and not isinstance(value, bool) and rng.random() < 0.6:
            meta[key] = value + rng.choice((-2, -1, 1, 2, 64, 10**6, -(10**6)))
        elif rng.random() < 0.15:
            meta.pop(key, None)
        else:
            meta[key] = rng.choice(WRONG_VALUES)
    else:
        target = rng.choice(("doc", "meta", "arrays"))
        if target == "doc":
            doc = rng.choice(WRONG_VALUES)
        else:
            doc[target] = rng.choice(WRONG_VALUES)
    return msgpack.packb(doc, use_bin_type=True)


def _moved(rng: random.Random, blob: bytes) -> bytes:
    """Elements set to values their array holds elsewhere (a trie with cycles, a bucket in another segment of
    its zone, ...): such snapshots often load, so every path then runs on structures no compiler makes."""
    doc = msgpack.unpackb(blob, raw=False)
    arrays = doc["arrays"]
    for _ in range(rng.choice((1, 1, 2, 4))):
        spec = arrays[rng.choice(sorted(arrays))]
        dtype = np.dtype([tuple(f) for f in spec["dtype"]], align=True) if isinstance(spec["dtype"], list) \
            else np.dtype(spec["dtype"])
        arr = np.frombuffer(spec["data"], dtype=dtype).copy()
        if len(arr) > 1:
            i, j = rng.randrange(len(arr)), rng.randrange(len(arr))
            if rng.random() < 0.5:
                arr[i], arr[j] = arr[j].copy(), arr[i].copy()
            else:
                arr[i] = arr[j]
            spec["data"] = arr.tobytes()
    return msgpack.packb(doc, use_bin_type=True)


MUTATORS: tuple[Callable[[random.Random, bytes], bytes], ...] = (
    _flip_bytes, _flip_bytes, _random_run, _random_run, _truncate, _length_field, _length_field,
    _structured, _structured, _structured, _structured, _structured, _structured, _moved, _moved, _moved, _moved)


def make_input(seed: int, index: int, base_list: list[Base]) -> tuple[Base, bytes]:
    """Input `index` of a run: a pure function of (seed, index)."""
    rng = random.Random(seed * 0x9E3779B97F4A7C15 + index)
    base = base_list[index % len(base_list)]
    blob = base.blob
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        try:
            blob = rng.choice(MUTATORS)(rng, blob)
        except Exception:  # a structured mutation of bytes an earlier one made unreadable
            blob = _flip_bytes(rng, blob)
    return base, blob


# -- every decision path ---------------------------------------------------------------------------------

def exercise(snap: Any, base: Base) -> int:
    """Inbound, outbound and pickup decisions (and their Python views), the batch APIs, the list lookups,
    with_documents and line_rate, with the base settings' own inputs and the loaded snapshot's.
    Returns the number of decisions made."""
    meta = snap.meta
    own = [x for x in meta.get("numbers", []) if isinstance(x, str)][:6]
    called = list(base.numbers[:8]) + own + ["+19995550000", "14155550199", "bad"]
    callers = [*list(base.callers), "anonymous", "", "+14155551234", "4155551234", "02071234567", "0012125550001"]
    users = list(base.users) + [x for x in meta.get("users", []) if isinstance(x, str)][:4] + ["stranger", "-x"]
    count = 0
    for i, number in enumerate(called):
        for j, caller in enumerate(callers):
            if (i + j) % 3 == 0:
                continue
            d = snap.inbound(caller, number, TIMES[(i + j) % len(TIMES)])
            d.to_decision("inbound")
            _ = (d.shape, d.members, d.caller_readings, d.call_id)
            count += 1
    dests = [*base.numbers[:4], *base.callers[:2], "+447700900123", "02071112222", "+33123456789", "0"]
    for i, user in enumerate(users):
        for j, dest in enumerate(dests):
            d = snap.outbound(user, dest, TIMES[(i + j) % len(TIMES)], (10**9, 0, 50_000, -1)[(i + j) % 4])
            d.to_decision("outbound")
            count += 1
    ringing = [RingingCall(f"c{k}", user, 1_700_000_000 + k, k % 4 == 3) for k, user in enumerate(users)]
    for user in users[:6]:
        for code in (base.pickup, "*8", "#99", ""):
            snap.pickup(user, code, ringing).to_decision("pickup")
            count += 1
    n = len(called) * len(callers)
    ccol = np.array([c.encode() for c in callers] * len(called), dtype="S20")
    dcol = np.repeat(np.array([c.encode() for c in called], dtype="S16"), len(callers))
    tcol = np.array([TIMES[k % len(TIMES)] for k in range(n)], dtype=np.int64)
    snap.inbound_batch(ccol, dcol, tcol)
    m = len(users) * len(dests)
    snap.outbound_batch(np.repeat(np.array([u.encode() for u in users], dtype="S24"), len(dests)),
                        np.array([d.encode() for d in dests] * len(users), dtype="S16"),
                        tcol[:m] if m <= n else np.full(m, TIMES[0], dtype=np.int64),
                        np.full(m, 10**8, dtype=np.int64))
    values = np.array([int(c[1:]) for c in base.callers if c[1:].isdigit()] + [14155550666, 1, 2**63], dtype=np.uint64)
    snap.contains_batch("blacklist", values)
    snap.contains_batch("offhours_blacklist", values)
    for line in meta["lines"][:3]:
        snap.line_rate(line, "+447700900123")
    if own:
        with_documents(snap, own[:2]).inbound(callers[0], own[0], TIMES[0]).to_decision("inbound")
    return count + n + m


# -- the run ----------------------------------------------------------------------------------------------

DONE, LOADED, REFUSED, FAILED = range(4)


def _worker(seed: int, start: int, step: int, stop: int, current: Any, counts: Any, out: str,
            base_list: list[Base]) -> None:
    for index in range(start, stop, step):
        current.value = index
        base, blob = make_input(seed, index, base_list)
        try:
            snap = loads(blob)
        except ValueError as exc:
            if not str(exc).startswith("not a callgate snapshot: "):
                _save_failure(out, seed, index, blob, f"loads raised {exc!r} without the prefix")
                counts[FAILED] += 1
            counts[REFUSED] += 1
        except BaseException:
            _save_failure(out, seed, index, blob, "loads raised:\n" + traceback.format_exc())
            counts[FAILED] += 1
        else:
            counts[LOADED] += 1
            try:
                exercise(snap, base)
            except BaseException:
                _save_failure(out, seed, index, blob, "a decision raised:\n" + traceback.format_exc())
                counts[FAILED] += 1
        counts[DONE] += 1
    current.value = stop


def _save_failure(out: str, seed: int, index: int, blob: bytes, why: str) -> Path:
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"seed{seed}-input{index}.bin"
    path.write_bytes(blob)
    path.with_suffix(".txt").write_text(why)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.snapshot_fuzz", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", type=int, default=100_000, help="mutated blobs to try")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--out", default="build/snapshot-fuzz", help="folder for crashing or failing inputs")
    args = parser.parse_args(argv)
    jobs = max(1, args.jobs)
    ctx = mp.get_context("fork")
    base_list = bases()  # made once here too: a crash's input is made again in this process
    counts = [ctx.Array("q", 4, lock=False) for _ in range(jobs)]
    currents = [ctx.Value("q", -1, lock=False) for _ in range(jobs)]
    starts = list(range(jobs))
    workers: list[Any] = [None] * jobs  # None: finished
    crashes: list[str] = []
    carried = [0, 0, 0, 0]  # counts of workers that crashed, before their replacement

    def spawn(w: int, start: int) -> None:
        currents[w].value = start
        workers[w] = ctx.Process(target=_worker, daemon=True,
                                 args=(args.seed, start, jobs, args.inputs, currents[w], counts[w], args.out,
                                       base_list))
        workers[w].start()

    began = time.monotonic()
    for w in range(jobs):
        spawn(w, starts[w])
    last_print, last_done = began, 0

    def totals() -> list[int]:
        return [carried[k] + sum(c[k] for c in counts) for k in range(4)]

    while True:
        time.sleep(0.1)
        alive = 0
        for w in range(jobs):
            proc = workers[w]
            if proc is None:
                continue
            if proc.is_alive():
                alive += 1
                continue
            proc.join()
            workers[w] = None
            if proc.exitcode == 0:
                continue
            index = currents[w].value
            _, blob = make_input(args.seed, index, base_list)
            path = _save_failure(args.out, args.seed, index, blob, f"worker died, exit code {proc.exitcode}")
            crashes.append(str(path))
            print(f"CRASH: input {index} killed its worker (exit code {proc.exitcode}); saved {path}", flush=True)
            for k in range(4):
                carried[k] += counts[w][k]
                counts[w][k] = 0
            carried[DONE] += 1
            if index + jobs < args.inputs:
                spawn(w, index + jobs)
                alive += 1
        now = time.monotonic()
        if now - last_print >= 1.0 or not alive:
            done, loaded, refused, failed = totals()
            print(f"[{now - began:7.1f} s] {done:>10,} inputs  {(done - last_done) / (now - last_print):>8,.0f}/s  "
                  f"loaded {loaded:,}  refused {refused:,}  crashes {len(crashes)}  failures {failed}", flush=True)
            last_print, last_done = now, done
        if not alive:
            break
    wall = time.monotonic() - began
    done, loaded, refused, failed = totals()
    print(f"snapshot fuzz: {done:,} inputs in {wall:.1f} s ({done / wall:,.0f}/s, {jobs} jobs, seed {args.seed}): "
          f"loaded {loaded:,}, refused {refused:,}, crashes {len(crashes)}, failures {failed}", flush=True)
    return 1 if crashes or failed else 0


if __name__ == "__main__":
    sys.exit(main())
