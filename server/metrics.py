"""Prometheus metrics of a worker.

With several workers, the supervisor sets PROMETHEUS_MULTIPROC_DIR before
starting them; every worker writes its samples there and the supervisor's
/metrics endpoint adds them up (prometheus_client's multiprocess mode).

Decisions are counted in plain Python ints on the request path and handed
to prometheus_client on the worker's watcher tick (5 times a second): a
labelled counter increment and a histogram observation cost about a
microsecond each (a lock, and an mmap write in multiprocess mode), which is
several percent of a unary call's server time on a busy worker.
"""

from __future__ import annotations

import bisect
from collections import defaultdict

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from engine import codes

LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3)

DECISIONS = Counter("callgate_decisions", "Decisions made, by verdict and reason", ["verdict", "reason"])
LATENCY = Histogram("callgate_decision_seconds", "Time to decide one unary request inside the server",
                    ["rpc"], buckets=LATENCY_BUCKETS)
TENANT_VERSION = Gauge("callgate_tenant_version", "Settings version in force, per tenant", ["tenant"],
                       multiprocess_mode="max")
PUSH_SECONDS = Histogram("callgate_push_seconds", "Time from a settings push (or patch) to its version in force",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

STORE_ERRORS = Counter("callgate_store_errors", "Store failures by store method and kind (busy, full, io, readonly, "
                       "cantopen, memory, damaged, schema, ...)", ["op", "kind"])
HEALTH = Gauge("callgate_health_serving", "1 while the health service name is SERVING in this worker (the lowest "
               "over the live workers)", ["service"], multiprocess_mode="livemin")
SNAPSHOT_REBUILDS = Counter("callgate_snapshot_rebuilds", "Snapshots compiled again from their settings document "
                            "because the stored blob was damaged, refused by the loader or no longer kept",
                            ["reason"])

_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
_latency: dict[str, list[float]] = {}  # rpc -> [sum, count per bucket..., count over the last bucket]
_decided = 0


def count(verdict: int, reason: int, n: int = 1) -> None:
    _counts[(verdict, reason)] += n


def count_batch(verdicts: np.ndarray, reasons: np.ndarray) -> None:
    pairs, counts = np.unique(verdicts.astype(np.uint16) << 8 | reasons, return_counts=True)
    for pair, n in zip(pairs.tolist(), counts.tolist(), strict=True):
        _counts[(pair >> 8, pair & 0xFF)] += n


def observe(rpc: str, seconds: float) -> None:
    slot = _latency.get(rpc)
    if slot is None:
        slot = _latency[rpc] = [0.0] * (len(LATENCY_BUCKETS) + 2)
    slot[0] += seconds
    slot[1 + bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1


def flush() -> None:
    """Hand what was counted since the last flush to prometheus_client."""
    global _decided
    counts = dict(_counts)
    _counts.clear()
    for (verdict, reason), n in counts.items():
        DECISIONS.labels(codes.VERDICTS[verdict], codes.REASON_NAMES[reason]).inc(n)
        _decided += n
    latency = dict(_latency)
    _latency.clear()
    for rpc, slot in latency.items():
        child = LATENCY.labels(rpc)
        # prometheus_client has no "observe n samples": add to the histogram's own bucket values
        # (cumulative buckets are computed at collection time from these per-bucket counts)
        child._sum.inc(slot[0])
        for i, bucket_count in enumerate(slot[1:]):
            if bucket_count:
                child._buckets[i].inc(bucket_count)


def decided() -> int:
    """Decisions made by this process since it started (as of the last flush)."""
    return _decided + sum(_counts.values())
