"""Benchmark of the compiled core against the reference, side by side in one run.

    python -m loadtest.core_bench            # the README figures (about 2 minutes)
    python -m loadtest.core_bench --quick    # small sizes, a smoke run

Prints, for a tenant with a large blacklist and many scheduled numbers:
ns per decision for the core's single call (from Python), the core's batch
and the reference; blacklist lookups by each method the core could use; bytes
per blacklisted number in the core against Python sets; compile and load
times.  Timings are medians over repeated chunks, measured in this process.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import numpy as np
from pyroaring import BitMap64

from engine import compile_settings, dumps, loads, parse_settings, roaring_bytes, to_micro
from engine.reference import Reference

from .world import big_tenant, draw_numbers, instants_2026


def per_item_ns(run: Callable[[], Any], items: int, repeat: int, budget_s: float = 20.0) -> float:
    """Median over `repeat` runs (bounded by `budget_s`) of the time per item, in ns."""
    samples = []
    deadline = time.perf_counter() + budget_s
    for _ in range(repeat):
        start = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - start) / items)
        if time.perf_counter() > deadline and len(samples) >= 3:
            break
    return statistics.median(samples)


def inbound_mix(rng: np.random.Generator, doc: dict, black: np.ndarray, n: int) -> list[tuple[str, str, int]]:
    """Callers: 10% blacklisted, 5% off-hours listed, 5% withheld, the rest clean; 5% unknown called numbers."""
    own = [x["number"] for x in doc["numbers"]]
    offhours = doc["offhours_blacklist"]
    clean = draw_numbers(rng, n)
    at = instants_2026(rng, n).tolist()
    rows = []
    for i in range(n):
        r = rng.random()
        if r < 0.10:
            caller = f"+{black[rng.integers(len(black))]}"
        elif r < 0.15:
            caller = offhours[rng.integers(len(offhours))]
        elif r < 0.20:
            caller = "anonymous"
        else:
            caller = f"+{clean[i]}"
        called = own[rng.integers(len(own))] if rng.random() >= 0.05 else f"+19995550{i % 1000:03d}"
        rows.append((caller, called, at[i]))
    return rows


def columns(rows: list[tuple[str, str, int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (np.array([r[0].encode() for r in rows], dtype="S16"),
            np.array([r[1].encode() for r in rows], dtype="S16"),
            np.array([r[2] for r in rows], dtype=np.int64))


def set_bytes(values: list) -> int:
    return sys.getsizeof(set(values)) + sum(sys.getsizeof(v) for v in values)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.core_bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blacklist", type=int, default=1_000_000, help="blacklist size of the decision tenant")
    parser.add_argument("--numbers", type=int, default=10_000, help="scheduled numbers of the decision tenant")
    parser.add_argument("--memory-sizes", default="1000000,10000000",
                        help="blacklist sizes for the memory comparison (comma-separated)")
    parser.add_argument("--decisions", type=int, default=100_000, help="decisions per measurement")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, figures not meaningful")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.blacklist, args.numbers, args.memory_sizes, args.decisions = 20_000, 500, "20000", 5_000
    results: dict[str, Any] = {"args": vars(args).copy()}
    # callers and probes come from another stream than the tenant (seeded with args.seed),
    # or the "clean" callers would be the blacklist itself
    rng = np.random.default_rng(args.seed + 7919)

    def say(text: str) -> None:
        print(text, flush=True)

    say(f"callgate core benchmark: tenant with a {args.blacklist:,}-entry blacklist and "
        f"{args.numbers:,} scheduled numbers")
    say("building the tenant ...")
    doc, black = big_tenant(args.seed, args.blacklist, args.numbers)

    # -- compile and load -------------------------------------------------
    t0 = time.perf_counter()
    settings = parse_settings(doc)
    parse_s = time.perf_counter() - t0
    compile_s = min(_timed(lambda: compile_settings(settings, version=1)) for _ in range(3))
    snapshot = compile_settings(settings, version=1)
    blob = dumps(snapshot)
    load_s = min(_timed(lambda: loads(blob)) for _ in range(5))
    results["compile"] = {"parse_validate_s": parse_s, "compile_s": compile_s, "load_s": load_s,
                          "snapshot_bytes": len(blob)}

    # -- inbound decisions --------------------------------------------------
    say("measuring inbound decisions ...")
    rows = inbound_mix(rng, doc, black, args.decisions)
    callers, called, at = columns(rows)
    inbound = snapshot.inbound
    chunk = rows[:10_000]

    def single() -> None:
        for caller, number, t in chunk:
            inbound(caller, number, t)

    single_ns = per_item_ns(single, len(chunk), repeat=15)
    batch_1k = [(callers[i:i + 1000], called[i:i + 1000], at[i:i + 1000]) for i in range(0, len(rows), 1000)]

    def batches_1k() -> None:
        for c, d, t in batch_1k:
            snapshot.inbound_batch(c, d, t)

    batch1k_ns = per_item_ns(batches_1k, len(rows), repeat=9)
    batch_all_ns = per_item_ns(lambda: snapshot.inbound_batch(callers, called, at), len(rows), repeat=9)
    reference = Reference(settings, version=1)
    ref_rows = rows[:5_000]

    def ref_run() -> None:
        for caller, number, t in ref_rows:
            reference.inbound(caller, number, t)

    ref_ns = per_item_ns(ref_run, len(ref_rows), repeat=5)
    out = snapshot.inbound_batch(callers, called, at)
    from engine import codes
    mix = {codes.REASON_NAMES[r]: int(c) for r, c in zip(*np.unique(out["reason"], return_counts=True),
                                                          strict=True)}
    results["inbound"] = {"single_ns": single_ns, "batch_1000_ns": batch1k_ns, "batch_all_ns": batch_all_ns,
                          "reference_ns": ref_ns, "reasons": mix}

    # -- outbound decisions -------------------------------------------------
    say("measuring outbound decisions ...")
    users = [f"u{i % 64}" for i in range(len(rows))]
    dests = [f"+{v}" for v in draw_numbers(rng, len(rows)).tolist()]
    balances = [Decimal(int(rng.integers(0, 5_000))).scaleb(-2) for _ in range(len(rows))]
    micro = np.array([to_micro(b) for b in balances], dtype=np.int64)
    ucol = np.array([u.encode() for u in users], dtype="S8")
    dcol = np.array([d.encode() for d in dests], dtype="S16")
    outbound = snapshot.outbound
    ochunk = list(zip(users[:10_000], dests[:10_000], at[:10_000].tolist(), micro[:10_000].tolist(), strict=True))

    def o_single() -> None:
        for u, d, t, b in ochunk:
            outbound(u, d, t, b)

    o_single_ns = per_item_ns(o_single, len(ochunk), repeat=15)
    o_batch = [(ucol[i:i + 1000], dcol[i:i + 1000], at[i:i + 1000], micro[i:i + 1000])
               for i in range(0, len(rows), 1000)]

    def o_batches() -> None:
        for u, d, t, b in o_batch:
            snapshot.outbound_batch(u, d, t, b)

    o_batch_ns = per_item_ns(o_batches, len(rows), repeat=9)
    oref = list(zip(users[:5_000], dests[:5_000], at[:5_000].tolist(), balances[:5_000], strict=True))

    def o_ref() -> None:
        for u, d, t, b in oref:
            reference.outbound(u, d, t, b)

    o_ref_ns = per_item_ns(o_ref, len(oref), repeat=5)
    results["outbound"] = {"single_ns": o_single_ns, "batch_1000_ns": o_batch_ns, "reference_ns": o_ref_ns}

    # -- blacklist lookups --------------------------------------------------
    say("measuring blacklist lookups ...")
    probe = np.concatenate([black[:len(black) // 10], draw_numbers(rng, len(black) - len(black) // 10)])
    probe = rng.permutation(probe)[:200_000].astype(np.uint64)
    bitmap = BitMap64(black.tolist())
    as_set = set(black.tolist())
    probe_list = probe.tolist()
    lookups = {
        "core, roaring read in place (batch, nogil)":
            per_item_ns(lambda: snapshot.contains_batch("blacklist", probe), len(probe), repeat=9),
        "pyroaring BitMap64, `in` from Python":
            per_item_ns(lambda: [x in bitmap for x in probe_list], len(probe), repeat=5),
        "pyroaring BitMap64, batch by intersection":
            per_item_ns(lambda: BitMap64(probe_list) & bitmap, len(probe), repeat=5),
        "Python set of int, `in`":
            per_item_ns(lambda: [x in as_set for x in probe_list], len(probe), repeat=5),
    }
    results["lookups_ns"] = lookups

    # -- memory -------------------------------------------------------------
    memory = []
    for size in [int(x) for x in args.memory_sizes.split(",") if x]:
        say(f"measuring memory for {size:,} blacklisted numbers ...")
        values = draw_numbers(np.random.default_rng(args.seed + size), size)
        core_bytes = _core_bytes(values)
        ints = values.tolist()
        int_set = set_bytes(ints)
        del ints
        gc.collect()
        strs = [f"+{v}" for v in values.tolist()]
        str_set = set_bytes(strs)
        del strs
        gc.collect()
        memory.append({"numbers": size, "core_bytes_per_number": core_bytes / size,
                       "python_set_int_bytes_per_number": int_set / size,
                       "python_set_str_bytes_per_number": str_set / size})
    results["memory"] = memory

    # -- report ---------------------------------------------------------------
    inb, outb = results["inbound"], results["outbound"]
    say("")
    say(f"Decisions (ns per decision; tenant: {args.blacklist:,} blacklisted, {args.numbers:,} scheduled numbers)")
    say(f"  {'':<10}{'core single':>14}{'core batch 1k':>15}{'core batch all':>16}{'reference':>12}"
        f"{'single x':>10}{'batch x':>9}")
    say(f"  {'inbound':<10}{inb['single_ns']:>14,.0f}{inb['batch_1000_ns']:>15,.0f}{inb['batch_all_ns']:>16,.0f}"
        f"{inb['reference_ns']:>12,.0f}{inb['reference_ns'] / inb['single_ns']:>10.1f}"
        f"{inb['reference_ns'] / inb['batch_1000_ns']:>9.1f}")
    say(f"  {'outbound':<10}{outb['single_ns']:>14,.0f}{outb['batch_1000_ns']:>15,.0f}{'':>16}"
        f"{outb['reference_ns']:>12,.0f}{outb['reference_ns'] / outb['single_ns']:>10.1f}"
        f"{outb['reference_ns'] / outb['batch_1000_ns']:>9.1f}")
    say("  (x: how many times faster than the reference, measured in this run)")
    say(f"  inbound mix decided: {inb['reasons']}")
    say("")
    say(f"Blacklist lookups ({len(probe):,} probes, 10% members, {args.blacklist:,}-entry list), ns per lookup")
    for name, ns in lookups.items():
        say(f"  {name:<46}{ns:>8,.1f}")
    say("")
    say("Memory per blacklisted number (bytes; numbers from US, GB, DE, FR, IN ranges)")
    say(f"  {'numbers':>12}{'core':>8}{'set[int]':>10}{'set[str]':>10}")
    for m in memory:
        say(f"  {m['numbers']:>12,}{m['core_bytes_per_number']:>8.2f}{m['python_set_int_bytes_per_number']:>10.1f}"
            f"{m['python_set_str_bytes_per_number']:>10.1f}")
    c = results["compile"]
    say("")
    say(f"Compile and load ({args.blacklist:,}-entry blacklist, {args.numbers:,} numbers)")
    say(f"  parse + validate {c['parse_validate_s']:.3f} s   compile {c['compile_s']:.3f} s   "
        f"load {c['load_s']:.4f} s   snapshot {c['snapshot_bytes'] / 1e6:.1f} MB")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=2)
        say(f"\nfigures written to {args.json}")
    return 0


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _core_bytes(values: np.ndarray) -> int:
    """Everything the core holds for a list: the roaring bytes and both derived indexes."""
    from engine import roaring_index
    data = roaring_bytes(values)
    table, filt = roaring_index(data)
    return data.nbytes + table.nbytes + filt.nbytes


if __name__ == "__main__":
    sys.exit(main())
