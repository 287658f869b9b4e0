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
from typing import Any

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from engine import codes
from server.rules import calls

LATENCY_BUCKETS = (25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3)
# a call event waits for its durable commit (group commit, fsync): milliseconds, not microseconds
EVENT_BUCKETS = (0.5e-3, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 1.0)
SLOW_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)

# -- decisions (counted in plain ints on the request path, see flush) -------------------------------------------------
DECISIONS = Counter("callgate_decisions", "Decisions made, by verdict and reason", ["verdict", "reason"])
LATENCY = Histogram("callgate_decision_seconds", "Time to decide one unary request inside the server",
                    ["rpc"], buckets=LATENCY_BUCKETS)
RPC_ERRORS = Counter("callgate_rpc_errors", "Requests answered with an error status, by method and gRPC status code "
                     "(INTERNAL: a bug, logged as internal_error; UNAVAILABLE: the store or compiler, try again)",
                     ["rpc", "code"])

# -- calls ---------------------------------------------------------------------------------------------------------
CALL_EVENTS = Counter("callgate_call_events", "Call events answered, by kind (RINGING, ANSWERED, TRANSFERRED, ENDED) "
                      "and result (recorded, or the error status it was refused with)", ["kind", "result"])
CALL_EVENT_SECONDS = Histogram("callgate_call_event_seconds", "Time to answer one call event, its durable commit "
                               "included", ["kind"], buckets=EVENT_BUCKETS)
CALLS_ENDED = Counter("callgate_calls_ended", "ENDED events recorded, by the call's outcome (a replayed ENDED "
                      "counts again: the call is billed once)", ["outcome"])
PICKUPS = Counter("callgate_pickups", "Pickup requests by result: intercepted, dry_run (said what it would take), "
                  "none (nothing to take, or not allowed), raced (another user took the call first: the next was "
                  "tried)", ["result"])

# -- money ---------------------------------------------------------------------------------------------------------
TOPUPS = Counter("callgate_topup_attempts", "Auto top-up charges attempted, by result (charged; declined: retried "
                 "later; failed: declined for the last time; no_card) and attempt (first or retry)",
                 ["result", "attempt"])

# -- settings --------------------------------------------------------------------------------------------------------
PUSH_SECONDS = Histogram("callgate_push_seconds", "Time from a settings push (or patch) to its version in force",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
COMPILE_SECONDS = Histogram("callgate_compile_seconds", "Time to validate and compile one settings document in the "
                            "compile process", buckets=SLOW_BUCKETS)
COMPILE_FAILURES = Counter("callgate_compile_failures", "Settings documents that did not compile, by reason "
                           "(invalid: refused as INVALID_ARGUMENT; crashed: the compile process died; error: other)",
                           ["reason"])
SNAPSHOT_REBUILDS = Counter("callgate_snapshot_rebuilds", "Snapshots compiled again from their settings document "
                            "because the stored blob was damaged, refused by the loader or no longer kept",
                            ["reason"])
VERSIONS_BEHIND = Gauge("callgate_versions_behind", "Tenants whose newest stored version failed to install in a "
                        "worker and is retried (the highest over the workers): a push not in force everywhere",
                        multiprocess_mode="livemax")
TENANTS = Gauge("callgate_tenants", "Tenants with settings in force in a worker (the lowest over the workers: "
                "below callgate_store_tenants for long, a worker lacks a tenant)", multiprocess_mode="livemin")
SPOOL_BYTES = Gauge("callgate_spool_bytes", "Bytes of upload spool files (big pushes on their way to the compile "
                    "process)", multiprocess_mode="livesum")

# -- health ----------------------------------------------------------------------------------------------------------
STORE_ERRORS = Counter("callgate_store_errors", "Store failures by store method and kind (busy, full, io, readonly, "
                       "cantopen, memory, damaged, schema, ...)", ["op", "kind"])
REPLICA_STREAMS = Gauge("callgate_replica_streams", "Proxy replicas following the snapshots "
                        "(Decisions.WatchSnapshots streams open)", multiprocess_mode="livesum")
REPLICA_BEHIND = Gauge("callgate_replica_tenants_behind", "Tenants whose snapshot in force a connected replica has "
                       "not installed yet (sent and not acknowledged, or refused), by replica", ["replica"],
                       multiprocess_mode="livesum")
REPLICA_SENT = Counter("callgate_replica_snapshots_sent", "Snapshots sent whole to replicas (every version of "
                       "every tenant to every replica that lacked it)")
REPLICA_REPORTS = Counter("callgate_replica_reports", "Replicas' answers to the snapshots sent: installed (ACK) "
                          "or refused (NACK: the replica keeps its last good one; callgate replicas says why)",
                          ["result"])
HEALTH = Gauge("callgate_health_serving", "1 while the health service name is SERVING in this worker (the lowest "
               "over the live workers)", ["service"], multiprocess_mode="livemin")


def start() -> None:
    """Series with a bounded, known set of labels start at 0 in every worker: `increase()` and the alert
    rules then see the first event as a change, and an absent series always means a missing exporter."""
    for kind in calls.KINDS:
        CALL_EVENTS.labels(kind, "recorded")
    for outcome in calls.OUTCOMES:
        CALLS_ENDED.labels(outcome)
    for result in ("intercepted", "dry_run", "none", "raced"):
        PICKUPS.labels(result)
    for result in ("installed", "refused"):
        REPLICA_REPORTS.labels(result)
    for result in ("charged", "declined", "failed", "no_card"):
        for attempt in ("first", "retry"):
            TOPUPS.labels(result, attempt)
    for reason in ("invalid", "crashed", "error"):
        COMPILE_FAILURES.labels(reason)
    for reason in ("checksum", "refused", "missing"):
        SNAPSHOT_REBUILDS.labels(reason)
    VERSIONS_BEHIND.set(0)
    SPOOL_BYTES.set(0)


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
    if not _counts and not _latency:  # at rest: nothing to hand over
        return
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


def call_events() -> float:
    """Call events this process answered so far (every kind and result): what moves when it may have charged."""
    children: list[Any] = list(CALL_EVENTS._metrics.values())  # labelled children: no public way to read them
    return float(sum(child._value.get() for child in children))


def decided() -> int:
    """Decisions made by this process since it started (as of the last flush)."""
    return _decided + sum(_counts.values())
