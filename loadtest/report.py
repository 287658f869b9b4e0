"""The load-test report: progress while the load runs, then the figures as a terminal table, JSON and a PNG.

One `TargetResult` per target of a run: callgate, and in compare mode the bare grpcio echo server
(`loadtest.bare_server`) driven by the same load, so that the "callgate/bare" ratio column shows
callgate's overhead over gRPC itself.  The latency figures come from the `stats.Histogram` of the
run (HDR-like, within 0.4 % of the truth), the latency-over-time panel from its `stats.Timeline`.

Correctness is part of the report: each target counts the answers it compared with the expected
ones (`checked`), the ones that differed (`wrong`) and keeps a few one-line examples; `failed()`
is true when any answer was wrong, and the caller turns that into a non-zero exit.

    figures(result)            -> dict of the numbers (also what the JSON holds per target)
    table(results)             -> the terminal table (stats.format_table), ratio column vs "bare"
    verdict_lines(results)     -> wrong answers (count, examples), errors by gRPC status
    write_json(path, results, meta), write_png(path, results, title)
    Progress(total_s, poll)    -> context manager drawing a progress bar on stderr

matplotlib is imported by `write_png` only: the load harness and its tests do not pay for it
unless a PNG is asked for.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from server.cli.progress import ProgressLine

from . import stats
from .stats import PERCENTILES, Histogram, RunRecorder, pname

if TYPE_CHECKING:
    from matplotlib.axes import Axes

MAX_EXAMPLES = 10  # wrong-answer examples kept per target: enough to see a pattern, bounded memory
REFERENCE = "bare"  # the target the others are compared with, when it is present
LATENCY_KEYS: tuple[str, ...] = (*(pname(q) for q in PERCENTILES), "max")


@dataclass
class TargetResult:
    """One target's run (callgate, or the bare baseline): its recorder plus CPU and correctness."""

    name: str  # "callgate" | "bare"
    recorder: RunRecorder
    items_per_call: int = 1  # decisions per call (DecideBatch: the batch size)
    client_cpu_s: float = 0.0
    client_procs: int = 1
    server_cpu_s: float | None = None
    wrong: int = 0  # answers that differ from the expectation
    checked: int = 0  # answers compared
    wrong_examples: list[str] = field(default_factory=list)  # one line each, at most MAX_EXAMPLES kept
    by_category: dict[str, dict[str, int]] = field(default_factory=dict)  # category -> {"ok": n, "wrong": m}

    def add_check(self, correct: bool, example: str | Callable[[], str] = "", category: str | None = None) -> None:
        """Count one compared answer.  `example` may be a callable so that the line describing a wrong
        answer is only built for the few that are kept."""
        self.checked += 1
        if not correct:
            self.wrong += 1
            if len(self.wrong_examples) < MAX_EXAMPLES:
                self.wrong_examples.append(example() if callable(example) else example)
        if category is not None:
            cell = self.by_category.setdefault(category, {})
            key = "ok" if correct else "wrong"
            cell[key] = cell.get(key, 0) + 1

    def merge(self, other: TargetResult) -> TargetResult:
        """Fold another process's share of the same target into this one."""
        if other.name != self.name:
            raise ValueError(f"cannot merge {other.name!r} into {self.name!r}")
        self.recorder.merge(other.recorder)
        self.client_cpu_s += other.client_cpu_s
        self.client_procs += other.client_procs
        if other.server_cpu_s is not None:
            self.server_cpu_s = (self.server_cpu_s or 0.0) + other.server_cpu_s
        self.wrong += other.wrong
        self.checked += other.checked
        self.wrong_examples.extend(other.wrong_examples[:max(MAX_EXAMPLES - len(self.wrong_examples), 0)])
        for category, counts in other.by_category.items():
            cell = self.by_category.setdefault(category, {})
            for k, v in counts.items():
                cell[k] = cell.get(k, 0) + v
        return self


# -- figures and the table ----------------------------------------------------------------------------

def figures(r: TargetResult) -> dict[str, Any]:
    """The numbers of one target.  Rates are over the measured window (first intended start to last
    completion), so start-up and teardown do not dilute them.  Keys are always present; what is not
    known (server CPU without a server pid) is None."""
    rec = r.recorder
    elapsed = rec.elapsed_s
    rps = rec.throughput()
    errors = rec.errors
    calls = rec.completed
    server_us_per_call = (r.server_cpu_s / calls * 1e6) if r.server_cpu_s is not None and calls else None
    return {
        "name": r.name,
        "calls": calls, "ok": rec.ok, "errors": errors, "error_count": sum(errors.values()),
        "elapsed_s": elapsed,
        "throughput_rps": rps,
        "items_per_call": r.items_per_call,
        "decisions_per_s": rps * r.items_per_call,
        "count": rec.latency.count,
        "latency_ms": rec.latency.summary(),  # count, min, mean, p50, p90, p99, p99.9, max
        "client_cpu_s": r.client_cpu_s,
        "client_procs": r.client_procs,
        "client_cores_busy": r.client_cpu_s / elapsed if elapsed > 0 else 0.0,
        "server_cpu_s": r.server_cpu_s,
        "server_cores_busy": r.server_cpu_s / elapsed if r.server_cpu_s is not None and elapsed > 0 else None,
        # per call, errors included: the server spent CPU on those too
        "server_cpu_us_per_call": server_us_per_call,
        "server_cpu_us_per_decision": (server_us_per_call / r.items_per_call
                                       if server_us_per_call is not None and r.items_per_call else None),
        "wrong": r.wrong, "checked": r.checked,
        "wrong_examples": list(r.wrong_examples),
        "by_category": {k: dict(v) for k, v in r.by_category.items()},
    }


def _latency(key: str) -> Callable[[dict[str, Any]], Any]:
    return lambda f: f["latency_ms"][key] if f["count"] else None


TABLE_ROWS: list[stats.Row] = [
    # (label, format, getter, ratio wanted).  No ratio for the max: one sample each, the ratio is noise.
    ("calls/s (ok)", "{:,.0f}", lambda f: f["throughput_rps"], True),
    ("decisions/s", "{:,.0f}", lambda f: f["decisions_per_s"] if f["items_per_call"] != 1 else None, True),
    ("calls", "{:,}", lambda f: f["calls"], False),
    ("measured s", "{:.1f}", lambda f: f["elapsed_s"], False),
    ("errors", "{:,}", lambda f: f["error_count"], False),
    ("answers checked", "{:,}", lambda f: f["checked"] or None, False),
    ("wrong answers", "{:,}", lambda f: f["wrong"] if f["checked"] or f["wrong"] else None, False),
    *[(f"latency {k} ms", "{:.3f}", _latency(k), k != "max") for k in LATENCY_KEYS],
    ("client cores busy", "{:.2f}", lambda f: f["client_cores_busy"], False),
    ("server cores busy", "{:.2f}", lambda f: f["server_cores_busy"], False),
    ("server CPU µs/call", "{:.1f}", lambda f: f["server_cpu_us_per_call"], True),
]


def _by_name(results: list[TargetResult]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for r in results:
        if r.name in out:
            raise ValueError(f"two results named {r.name!r}")
        out[r.name] = figures(r)
    return out


def _reference(names: list[str]) -> str | None:
    return REFERENCE if REFERENCE in names and len(names) > 1 else None


def table(results: list[TargetResult]) -> str:
    """One column per target, plus "<target>/bare" ratio columns when the bare baseline ran too."""
    figs = _by_name(results)
    return stats.format_table(figs, _reference(list(figs)), TABLE_ROWS)


def ratios(results: list[TargetResult]) -> dict[str, dict[str, float | None]]:
    """{"callgate/bare": {"throughput_rps": ..., "p50": ..., ...}}: the table's ratios, for the JSON."""
    figs = _by_name(results)
    ref = _reference(list(figs))
    if ref is None:
        return {}
    base = figs[ref]

    def ratio(a: float | None, b: float | None) -> float | None:
        return a / b if a is not None and b else None

    out = {}
    for name, f in figs.items():
        if name == ref:
            continue
        row = {k: ratio(f[k], base[k]) for k in ("throughput_rps", "decisions_per_s", "server_cpu_us_per_call")}
        row.update({k: ratio(f["latency_ms"][k], base["latency_ms"][k]) for k in LATENCY_KEYS})
        out[f"{name}/{ref}"] = row
    return out


def failed(results: list[TargetResult]) -> bool:
    """The run fails when any answer was wrong (errors are reported, but a timeout is not a wrong answer)."""
    return any(r.wrong for r in results)


def verdict_lines(results: list[TargetResult], max_examples: int = MAX_EXAMPLES) -> list[str]:
    """Per target: wrong answers (count of checked, examples, counts by category), then errors by status."""
    lines = []
    for r in results:
        if r.wrong:
            share = 100.0 * r.wrong / r.checked if r.checked else 100.0
            lines.append(f"{r.name}: WRONG ANSWERS: {r.wrong:,} of {r.checked:,} checked ({share:.3g} %)")
            shown = r.wrong_examples[:max_examples]
            lines.extend(f"  {example}" for example in shown)
            if r.wrong > len(shown):
                lines.append(f"  ... and {r.wrong - len(shown):,} more")
        elif r.checked:
            lines.append(f"{r.name}: wrong answers: 0 of {r.checked:,} checked")
        else:
            lines.append(f"{r.name}: answers not checked")
        for category, counts in sorted(r.by_category.items()):
            lines.append(f"  {category}: " + ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items())))
        rec = r.recorder
        if not rec.completed:
            lines.append(f"{r.name}: no calls completed")
        elif rec.errors:
            detail = ", ".join(f"{code} {n:,}" for code, n in rec.errors.items())
            lines.append(f"{r.name}: errors: {sum(rec.errors.values()):,} of {rec.completed:,} calls: {detail}")
        else:
            lines.append(f"{r.name}: errors: none in {rec.completed:,} calls")
    return lines


# -- curves for the JSON and the PNG ------------------------------------------------------------------

def timeline_rows(rec: RunRecorder) -> list[tuple[float, int, float, float]]:
    """(seconds from the target's first bin, calls, mean ms, max ms) per timeline bin.  Each target starts
    at 0: in compare mode the targets run one after the other, and their curves are overlaid."""
    bins = rec.timeline.bins
    if not bins:
        return []
    return rec.timeline.rows(min(bins) * rec.timeline.bin_ns)


def percentile_curve(hist: Histogram, points: int = 240) -> list[tuple[float, float]]:
    """(percentile, latency ms) from 0 up to 100 (the max), on a grid even in "nines" (log of 1/(1-q)):
    as many points between 99 % and 99.9 % as between 0 and 90 %.  The grid stops at 1 - 1/count,
    the finest percentile the samples can tell apart, then the max."""
    if hist.count == 0:
        return []
    top = math.log10(max(hist.count, 1))
    out: list[tuple[float, float]] = []
    for i in range(points):
        x = 10 ** (top * i / (points - 1)) if points > 1 else 1.0
        q = 100.0 * (1.0 - 1.0 / x)
        if out and q <= out[-1][0]:
            continue
        out.append((q, hist.percentile(q) / 1e6))
    out.append((100.0, hist.max / 1e6))
    return out


# -- JSON ---------------------------------------------------------------------------------------------

def write_json(path: Path, results: list[TargetResult], meta: dict[str, Any]) -> None:
    """Everything figures() gives per target, the ratios, the verdict, `meta` (command line, specs...),
    each target's timeline rows, percentile curve and histogram (sparse: enough to merge or re-plot)."""
    targets = _by_name(results)  # also rejects duplicate names
    for r in results:
        bin_s = r.recorder.timeline.bin_ns / 1e9
        targets[r.name]["timeline"] = {"bin_s": bin_s, "columns": ["t_s", "calls", "mean_ms", "max_ms"],
                                       "rows": [list(row) for row in timeline_rows(r.recorder)]}
        targets[r.name]["percentile_curve"] = {"columns": ["percentile", "latency_ms"],
                                               "points": [list(p) for p in percentile_curve(r.recorder.latency)]}
        targets[r.name]["histogram"] = r.recorder.latency.to_dict()
    data = {"meta": meta, "reference": _reference(list(targets)), "targets": targets,
            "ratios": ratios(results), "verdict": verdict_lines(results), "failed": failed(results)}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")


def save_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON (a value JSON has no type for, a path say, as its text) and say where."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"figures written to {path}")


# -- PNG ----------------------------------------------------------------------------------------------

NINES = ((1.0, "0%"), (2.0, "50%"), (10.0, "90%"), (100.0, "99%"), (1e3, "99.9%"), (1e4, "99.99%"),
         (1e5, "99.999%"), (1e6, "99.9999%"), (1e7, "99.99999%"))


def _wide(values: list[float]) -> bool:
    """A log axis when the positive values span more than 30x: a stall next to sub-ms calls would
    otherwise flatten everything else to the floor."""
    pos = [v for v in values if v > 0]
    return bool(pos) and max(pos) / min(pos) > 30.0


def _nines_x(q: float, count: int) -> float:
    # x = 1/(1-q); the max (q = 100 %) is drawn at 1 in `count`, where the grid ends
    return float(count) if q >= 100.0 else 1.0 / (1.0 - q / 100.0)


def write_png(path: Path, results: list[TargetResult], title: str) -> None:
    """Two panels: latency over time (mean and max per timeline bin) and the HDR percentile curve,
    one colour per target."""
    # Figure + FigureCanvasAgg rather than pyplot: no display needed, no global figure state (the
    # harness may call this from a thread), and the Agg backend is chosen explicitly.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 9), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_time, ax_pct = fig.subplots(2, 1)
    fig.suptitle(title, fontsize=13)
    colours = [f"C{i}" for i in range(10)]
    _plot_timeline(ax_time, results, colours)
    _plot_percentiles(ax_pct, results, colours)
    fig.savefig(path, format="png")


def _plot_timeline(ax: Axes, results: list[TargetResult], colours: list[str]) -> None:
    values: list[float] = []
    bin_ms = 100.0
    for i, r in enumerate(results):
        rows = timeline_rows(r.recorder)
        if not rows:
            continue
        bin_ms = r.recorder.timeline.bin_ns / 1e6
        t = [row[0] for row in rows]
        mean, worst = [row[2] for row in rows], [row[3] for row in rows]
        colour = colours[i % len(colours)]
        ax.plot(t, mean, color=colour, linewidth=1.4, label=f"{r.name} mean")
        ax.plot(t, worst, color=colour, linewidth=0.9, linestyle="--", alpha=0.7, label=f"{r.name} max")
        values += mean + worst
    ax.set_title(f"Latency over time (per {bin_ms:g} ms of intended start)")
    ax.set_xlabel("seconds since the first call")
    _finish_y(ax, values)


def _plot_percentiles(ax: Axes, results: list[TargetResult], colours: list[str]) -> None:
    values: list[float] = []
    x_max = 10.0
    for i, r in enumerate(results):
        hist = r.recorder.latency
        curve = percentile_curve(hist)
        if not curve:
            continue
        colour = colours[i % len(colours)]
        xs = [_nines_x(q, hist.count) for q, _ in curve]
        ys = [ms for _, ms in curve]
        ax.plot(xs, ys, color=colour, linewidth=1.4, label=f"{r.name} ({hist.count:,} calls)")
        # the reported percentiles as dots, so the table's numbers can be found on the curve
        marks = [q for q in PERCENTILES if _nines_x(q, hist.count) <= hist.count]
        ax.plot([_nines_x(q, hist.count) for q in marks], [hist.percentile(q) / 1e6 for q in marks],
                "o", color=colour, markersize=4)
        x_max = max(x_max, float(hist.count))
        values += ys
    ax.set_xscale("log")
    ax.set_xlim(1.0, x_max)
    ticks = [(x, label) for x, label in NINES if x <= x_max * 1.0001]
    ax.set_xticks([x for x, _ in ticks], [label for _, label in ticks])
    ax.minorticks_off()
    ax.set_title("Latency by percentile (HDR histogram)")
    ax.set_xlabel("percentile (log scale of 1 / (1 - p))")
    _finish_y(ax, values)


def _finish_y(ax: Axes, values: list[float]) -> None:
    if not values:
        ax.text(0.5, 0.5, "no calls completed", ha="center", va="center", transform=ax.transAxes)
        ax.set_ylabel("latency ms")
        return
    if _wide(values):
        ax.set_yscale("log")
        ax.set_ylabel("latency ms (log scale)")
    else:
        ax.set_ylim(bottom=0)
        ax.set_ylabel("latency ms")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)


# -- progress -----------------------------------------------------------------------------------------

class Progress(ProgressLine):
    """A one-line progress bar on stderr while the load runs, fed by `poll() -> (done, errors, wrong)`.

    On a terminal the line is redrawn in place every 0.5 s; otherwise (CI logs, pipes) a plain line is
    printed every 2 s.  The rate is over the last interval (what the load does now); the final line,
    printed on exit (an interrupted run's too), has the average over the whole run.

        with Progress(20.0, lambda: (done, errors, wrong)):
            run_the_load()
    """

    TTY_INTERVAL_S = 0.5
    PLAIN_INTERVAL_S = 2.0
    final_on_error = True

    def __init__(self, total_s: float, poll: Callable[[], tuple[int, int, int]], stream: TextIO | None = None,
                 *, interval_s: float | None = None, width: int = 30) -> None:
        super().__init__(stream, interval_s)
        self.total_s, self.poll, self.width = total_s, poll, width
        self._t0 = 0.0
        self._last = (0.0, 0)  # (time, done) at the previous draw, for the recent rate

    def started(self) -> None:
        self._t0 = time.monotonic()
        self._last = (self._t0, 0)

    def line(self, done: int, errors: int, wrong: int, elapsed: float, rate: float, finished: bool = False) -> str:
        if self.total_s > 0:
            frac = 1.0 if finished else min(max(elapsed / self.total_s, 0.0), 1.0)
            filled = round(frac * self.width)
            head = f"[{'#' * filled}{'.' * (self.width - filled)}] {100 * frac:3.0f}%"
        else:
            head = f"[{'?' * self.width}]   ?%"
        return (f"{head}  {elapsed:.1f} s / {self.total_s:g} s  {done:,} calls  {rate:,.0f}/s"
                f"  errors {errors:,}  wrong {wrong:,}")

    def text(self, final: bool, completed: bool) -> str:
        now = time.monotonic()
        done, errors, wrong = self.poll()
        elapsed = now - self._t0
        if final:
            rate = done / elapsed if elapsed > 0 else 0.0
        else:
            t_prev, done_prev = self._last
            rate = (done - done_prev) / (now - t_prev) if now > t_prev else 0.0
        self._last = (now, done)
        # a run that ended normally is complete even if it stopped a few ms short of total_s
        return self.line(done, errors, wrong, elapsed, rate, finished=final and completed)
