"""Prometheus metrics of a worker.

With several workers, the supervisor sets PROMETHEUS_MULTIPROC_DIR before
starting them; every worker writes its samples there and the supervisor's
/metrics endpoint adds them up (prometheus_client's multiprocess mode).
"""

from __future__ import annotations

import numpy as np
from prometheus_client import Counter, Gauge, Histogram

from engine import codes

DECISIONS = Counter("callgate_decisions", "Decisions made, by verdict and reason", ["verdict", "reason"])
LATENCY = Histogram("callgate_decision_seconds", "Time to decide one unary request inside the server",
                    ["rpc"], buckets=(25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 50e-3))
TENANT_VERSION = Gauge("callgate_tenant_version", "Settings version in force, per tenant", ["tenant"],
                       multiprocess_mode="max")
PUSH_SECONDS = Histogram("callgate_push_seconds", "Time from a settings push (or patch) to its version in force",
                         buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

_children: dict[tuple[int, int], Counter] = {}
_decided = 0


def count(verdict: int, reason: int, n: int = 1) -> None:
    global _decided
    child = _children.get((verdict, reason))
    if child is None:
        child = _children[(verdict, reason)] = DECISIONS.labels(codes.VERDICTS[verdict], codes.REASON_NAMES[reason])
    child.inc(n)
    _decided += n


def count_batch(verdicts: np.ndarray, reasons: np.ndarray) -> None:
    pairs, counts = np.unique(verdicts.astype(np.uint16) << 8 | reasons, return_counts=True)
    for pair, n in zip(pairs.tolist(), counts.tolist(), strict=True):
        count(pair >> 8, pair & 0xFF, n)


def decided() -> int:
    """Decisions made by this process since it started."""
    return _decided
