"""Latency recording for the load generators: an HDR-like histogram and a run recorder.

`Histogram` keeps counts in log-linear buckets (numpy): values below 2**sub_bits
are exact, above that every power of two is split into 2**sub_bits equal
buckets, so a percentile is reported within 1 / 2**sub_bits of the truth
(0.4 % with the default 8 bits), whatever the number of samples.  Values are
integers (the load tools record nanoseconds).  Histograms serialize to plain
dicts (sparse counts) so that worker processes can send them back and the
parent merges them.

`RunRecorder` adds what a run needs around the histograms: completions by
outcome (gRPC status code names), the measured window, a `Timeline` (calls
and worst latency per 100 ms of intended start, to see when a stall
happened), and merging.

`format_table` puts the figures of several targets side by side, with their ratios.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .process import stop_process as stop_process  # tests/serving.py imports it from here

PERCENTILES: tuple[float, ...] = (50.0, 90.0, 99.0, 99.9)


class Histogram:
    """Log-linear histogram of non-negative integers (nanoseconds, typically)."""

    def __init__(self, sub_bits: int = 8, max_bits: int = 42) -> None:
        if not 1 <= sub_bits < max_bits <= 62:
            raise ValueError("need 1 <= sub_bits < max_bits <= 62")
        self.sub_bits = sub_bits
        self.max_bits = max_bits
        self.sub_count = 1 << sub_bits
        self.max_value = (1 << max_bits) - 1
        self.counts = np.zeros((max_bits - sub_bits + 1) * self.sub_count, dtype=np.int64)
        self.count = 0
        self.total = 0  # exact sum of the (clamped) values, for the mean
        self.min = 0
        self.max = 0
        self.clamped = 0  # values above max_value, counted at max_value

    # -- recording ---------------------------------------------------------------------------------
    def _index(self, values: np.ndarray) -> np.ndarray:
        """Bucket index of each value (values already clamped to [0, max_value])."""
        _, exp = np.frexp(values.astype(np.float64))  # bit length (exact below 2**53)
        shift = np.maximum(exp.astype(np.int64) - 1 - self.sub_bits, 0)
        return shift * self.sub_count + (values >> shift)

    def record_many(self, values: Iterable[int] | np.ndarray) -> None:
        v = np.asarray(values if isinstance(values, np.ndarray | array) else list(values), dtype=np.int64)
        if v.size == 0:
            return
        v = np.maximum(v, 0)
        over = int(np.count_nonzero(v > self.max_value))
        if over:
            self.clamped += over
            v = np.minimum(v, self.max_value)
        np.add.at(self.counts, self._index(v), 1)
        vmin, vmax = int(v.min()), int(v.max())
        self.min = vmin if self.count == 0 else min(self.min, vmin)
        self.max = max(self.max, vmax)
        self.count += int(v.size)
        self.total += int(v.sum())

    # -- reading -----------------------------------------------------------------------------------
    def bucket_bounds(self, index: int) -> tuple[int, int]:
        """Lowest and highest value that land in bucket `index`."""
        if index < 2 * self.sub_count:
            return index, index
        shift = index // self.sub_count - 1
        low = (index - shift * self.sub_count) << shift
        return low, low + (1 << shift) - 1

    def percentile(self, q: float) -> int:
        """Value at percentile q (0..100): the highest value of the bucket holding that rank
        (as HdrHistogram reports it), clamped to the exact min and max."""
        return self.min if q <= 0 else self.percentiles((q,))[pname(q)]

    def percentiles(self, qs: Sequence[float] = PERCENTILES) -> dict[str, int]:
        if self.count == 0:
            return {pname(q): 0 for q in qs}
        cumulative = np.cumsum(self.counts)
        out = {}
        for q in qs:
            rank = max(1, math.ceil(q / 100.0 * self.count))
            index = int(np.searchsorted(cumulative, rank, side="left"))
            out[pname(q)] = min(max(self.bucket_bounds(index)[1], self.min), self.max)
        return out

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0

    def summary(self, scale: float = 1e-6) -> dict[str, float]:
        """count, min, mean, p50, p90, p99, p99.9, max; values multiplied by `scale`
        (default: ns -> ms)."""
        out: dict[str, float] = {"count": self.count, "min": self.min * scale, "mean": self.mean * scale}
        out.update({k: v * scale for k, v in self.percentiles().items()})
        out["max"] = self.max * scale
        return out

    # -- merging and transport ---------------------------------------------------------------------
    def merge(self, other: Histogram) -> Histogram:
        if (other.sub_bits, other.max_bits) != (self.sub_bits, self.max_bits):
            raise ValueError("cannot merge histograms of different shapes")
        if other.count == 0:
            return self
        self.counts += other.counts
        self.min = other.min if self.count == 0 else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total
        self.clamped += other.clamped
        return self

    def to_dict(self) -> dict[str, Any]:
        nz = np.flatnonzero(self.counts)
        return {"sub_bits": self.sub_bits, "max_bits": self.max_bits, "count": self.count, "total": self.total,
                "min": self.min, "max": self.max, "clamped": self.clamped,
                "index": nz.tolist(), "counts": self.counts[nz].tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        h = cls(int(data["sub_bits"]), int(data["max_bits"]))
        h.counts[np.asarray(data["index"], dtype=np.int64)] = np.asarray(data["counts"], dtype=np.int64)
        h.count, h.total = int(data["count"]), int(data["total"])
        h.min, h.max, h.clamped = int(data["min"]), int(data["max"]), int(data["clamped"])
        return h


def pname(q: float) -> str:
    """50.0 -> 'p50', 99.9 -> 'p99.9'."""
    return f"p{q:g}"


class SampleBuffer:
    """Cheap per-sample appends (array('q')) flushed into a Histogram in vectorized chunks."""

    def __init__(self, hist: Histogram | None = None, chunk: int = 65536) -> None:
        self.hist = hist if hist is not None else Histogram()
        self.buf: array[int] = array("q")
        self.chunk = chunk

    def add(self, value: int) -> None:
        self.buf.append(value)
        if len(self.buf) >= self.chunk:
            self.flush()

    def flush(self) -> Histogram:
        if self.buf:
            self.hist.record_many(np.frombuffer(self.buf, dtype=np.int64))
            self.buf = array("q")
        return self.hist


class Timeline:
    """Per time bin (by intended start, CLOCK_MONOTONIC ns // bin_ns): calls, latency sum and max, in ns."""

    def __init__(self, bin_ns: int = 100_000_000) -> None:
        self.bin_ns = bin_ns
        self.bins: dict[int, list[int]] = {}

    def add(self, at_ns: int, latency_ns: int) -> None:
        cell = self.bins.get(at_ns // self.bin_ns)
        if cell is None:
            self.bins[at_ns // self.bin_ns] = [1, latency_ns, latency_ns]
        else:
            cell[0] += 1
            cell[1] += latency_ns
            if latency_ns > cell[2]:
                cell[2] = latency_ns

    def merge(self, other: Timeline) -> Timeline:
        if other.bin_ns != self.bin_ns:
            raise ValueError("timelines with different bins")
        for key, (n, total, worst) in other.bins.items():
            cell = self.bins.setdefault(key, [0, 0, 0])
            cell[0] += n
            cell[1] += total
            cell[2] = max(cell[2], worst)
        return self

    def rows(self, origin_ns: int = 0) -> list[tuple[float, int, float, float]]:
        """(seconds since origin, calls, mean ms, max ms) per bin, in time order."""
        return [((key * self.bin_ns - origin_ns) / 1e9, n, total / n / 1e6, worst / 1e6)
                for key, (n, total, worst) in sorted(self.bins.items())]

    def to_dict(self) -> dict[str, Any]:
        return {"bin_ns": self.bin_ns, "bins": {str(k): v for k, v in self.bins.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Timeline:
        out = cls(int(data["bin_ns"]))
        out.bins = {int(k): [int(x) for x in v] for k, v in data["bins"].items()}
        return out


@dataclass
class RunRecorder:
    """Completions of one run (one process or merged): latency, outcomes, measured window."""

    latency: Histogram = field(default_factory=Histogram)
    outcomes: dict[str, int] = field(default_factory=dict)  # gRPC status code name -> count
    first_start_ns: int = 0  # monotonic clock (CLOCK_MONOTONIC: comparable across processes)
    last_end_ns: int = 0
    timeline: Timeline = field(default_factory=Timeline)

    def add_outcome(self, code: str, n: int = 1) -> None:
        self.outcomes[code] = self.outcomes.get(code, 0) + n

    @property
    def ok(self) -> int:
        return self.outcomes.get("OK", 0)

    @property
    def completed(self) -> int:
        return sum(self.outcomes.values())

    @property
    def errors(self) -> dict[str, int]:
        return {k: v for k, v in sorted(self.outcomes.items()) if k != "OK"}

    @property
    def elapsed_s(self) -> float:
        return max(self.last_end_ns - self.first_start_ns, 0) / 1e9

    def throughput(self) -> float:
        """Successful calls per second over the measured window."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def window(self, start_ns: int, end_ns: int) -> None:
        self.first_start_ns = start_ns if not self.first_start_ns else min(self.first_start_ns, start_ns)
        self.last_end_ns = max(self.last_end_ns, end_ns)

    def merge(self, other: RunRecorder) -> RunRecorder:
        self.latency.merge(other.latency)
        self.timeline.merge(other.timeline)
        for k, v in other.outcomes.items():
            self.add_outcome(k, v)
        if other.first_start_ns or other.last_end_ns:
            self.window(other.first_start_ns, other.last_end_ns)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"latency": self.latency.to_dict(), "outcomes": dict(self.outcomes),
                "first_start_ns": self.first_start_ns, "last_end_ns": self.last_end_ns,
                "timeline": self.timeline.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecorder:
        return cls(Histogram.from_dict(data["latency"]), dict(data["outcomes"]),
                   int(data["first_start_ns"]), int(data["last_end_ns"]), Timeline.from_dict(data["timeline"]))


def merge_all(recorders: Iterable[RunRecorder]) -> RunRecorder:
    out = RunRecorder()
    for r in recorders:
        out.merge(r)
    return out


Row = tuple[str, str, Callable[[dict[str, Any]], Any], bool]


def format_table(figures: dict[str, dict[str, Any]], reference: str | None, rows: list[Row]) -> str:
    """Targets side by side, one row per (label, format, getter, show ratio), plus each target's ratio to
    `reference`; rows where every target has no value are left out."""
    names = list(figures)
    others = [n for n in names if n != reference] if reference else []
    lines = [["", *names, *[f"{n}/{reference}" for n in others]]]
    for label, fmt, get, want_ratio in rows:
        values = [get(figures[n]) for n in names]
        if all(v is None for v in values):
            continue
        cells = [label, *["-" if v is None else fmt.format(v) for v in values]]
        for n in others:
            a, b = get(figures[n]), get(figures[reference]) if reference else None
            cells.append(f"{a / b:.2f}" if want_ratio and a is not None and b else "")
        lines.append(cells)
    widths = [max(len(row[i]) for row in lines) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))) for row in lines)
