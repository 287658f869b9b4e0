"""loadtest.report on synthetic runs: figures, table, verdict, JSON, PNG and the progress bar."""

from __future__ import annotations

import functools
import io
import itertools
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from loadtest import report
from loadtest.report import Progress, TargetResult
from loadtest.stats import Histogram, RunRecorder

T0 = 1_000_000_000_000  # an arbitrary CLOCK_MONOTONIC origin, in ns
PRECISION = 1 / 256  # Histogram's default sub_bits = 8


def make_recorder(latencies_ns: np.ndarray, window_s: float, errors: dict[str, int] | None = None,
                  t0: int = T0) -> RunRecorder:
    """Calls evenly spread over `window_s`, all OK, plus `errors` (by status) that add no latency."""
    rec = RunRecorder()
    rec.latency.record_many(latencies_ns)
    starts = t0 + (np.arange(latencies_ns.size) * (window_s * 1e9 / latencies_ns.size)).astype(np.int64)
    for at, lat in zip(starts.tolist(), latencies_ns.tolist(), strict=True):
        rec.timeline.add(at, lat)
    rec.add_outcome("OK", int(latencies_ns.size))
    for code, n in (errors or {}).items():
        rec.add_outcome(code, n)
    rec.window(t0, t0 + int(window_s * 1e9))
    return rec


def lognormal_ns(n: int, median_ms: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.lognormal(np.log(median_ms * 1e6), 0.5, n)).astype(np.int64)


@pytest.fixture(scope="module")
def pair() -> list[TargetResult]:
    """callgate at half the bare server's throughput and twice its latency; some wrong answers."""
    callgate = TargetResult("callgate", make_recorder(lognormal_ns(5_000, 2.0, 1), 10.0, {"UNAVAILABLE": 3}),
                            client_cpu_s=4.0, server_cpu_s=2.5)
    bare = TargetResult("bare", make_recorder(lognormal_ns(10_000, 1.0, 2), 10.0), client_cpu_s=5.0)
    callgate.checked = 5_000
    return [callgate, bare]


def test_figures_values() -> None:
    lat = lognormal_ns(20_000, 1.5, 3)
    r = TargetResult("callgate", make_recorder(lat, 4.0, {"DEADLINE_EXCEEDED": 7, "UNAVAILABLE": 2}),
                     items_per_call=8, client_cpu_s=2.0, server_cpu_s=1.0)
    f = report.figures(r)
    assert f["ok"] == 20_000 and f["calls"] == 20_009 and f["count"] == 20_000
    assert f["errors"] == {"DEADLINE_EXCEEDED": 7, "UNAVAILABLE": 2} and f["error_count"] == 9
    assert f["elapsed_s"] == pytest.approx(4.0)
    assert f["throughput_rps"] == pytest.approx(5_000.0)  # ok calls only, over the window
    assert f["decisions_per_s"] == pytest.approx(40_000.0)
    assert f["client_cores_busy"] == pytest.approx(0.5)
    assert f["server_cores_busy"] == pytest.approx(0.25)
    assert f["server_cpu_us_per_call"] == pytest.approx(1e6 / 20_009)
    assert f["server_cpu_us_per_decision"] == pytest.approx(1e6 / 20_009 / 8)
    ordered = np.sort(lat)
    for key, q in (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9)):
        true_ms = ordered[int(np.ceil(q / 100 * lat.size)) - 1] / 1e6  # HdrHistogram's rank convention
        assert true_ms <= f["latency_ms"][key] <= true_ms * (1 + PRECISION) + 1e-6, key
    assert f["latency_ms"]["max"] == pytest.approx(lat.max() / 1e6)
    assert f["wrong"] == 0 and f["checked"] == 0


def test_figures_without_server_cpu_or_calls() -> None:
    f = report.figures(TargetResult("bare", RunRecorder()))
    assert f["throughput_rps"] == 0.0 and f["calls"] == 0
    assert f["server_cpu_s"] is None and f["server_cpu_us_per_call"] is None and f["server_cores_busy"] is None


def test_table_has_ratio_column(pair: list[TargetResult]) -> None:
    text = report.table(pair)
    header, *rows = text.splitlines()
    assert header.split() == ["callgate", "bare", "callgate/bare"]
    by_label = {line[:20].strip(): line.split() for line in rows}
    assert by_label["calls/s (ok)"][-1] == "0.50"  # 500/s over 1,000/s
    p50_ratio = float(by_label["latency p50 ms"][-1])
    assert 1.8 < p50_ratio < 2.2
    assert "decisions/s" not in text  # one decision per call: the row would repeat calls/s
    assert "server CPU µs/call" in text  # known for callgate only: "-" for bare
    assert report.ratios(pair)["callgate/bare"]["throughput_rps"] == pytest.approx(0.5)


def test_table_single_target_has_no_ratio(pair: list[TargetResult]) -> None:
    text = report.table(pair[:1])
    assert "/bare" not in text and text.splitlines()[0].split() == ["callgate"]
    assert report.ratios(pair[:1]) == {}


def test_table_rejects_duplicate_names(pair: list[TargetResult]) -> None:
    with pytest.raises(ValueError, match="two results"):
        report.table([pair[0], pair[0]])


def test_verdict_all_correct(pair: list[TargetResult]) -> None:
    lines = report.verdict_lines(pair)
    assert "callgate: wrong answers: 0 of 5,000 checked" in lines
    assert "callgate: errors: 3 of 5,003 calls: UNAVAILABLE 3" in lines
    assert "bare: answers not checked" in lines
    assert "bare: errors: none in 10,000 calls" in lines
    assert not report.failed(pair)


def test_add_check_keeps_examples_and_verdict_shows_them() -> None:
    r = TargetResult("callgate", make_recorder(lognormal_ns(100, 1.0, 4), 1.0))
    built: list[int] = []

    def describe(i: int) -> str:
        built.append(i)
        return f"call {i}: expected ALLOW, got BLOCK"

    for i in range(40):
        r.add_check(i % 3 != 0, functools.partial(describe, i), category="inbound" if i % 2 else "outbound")
    assert (r.checked, r.wrong) == (40, 14)
    assert len(r.wrong_examples) == report.MAX_EXAMPLES == len(built)  # only kept examples are built
    assert r.by_category["outbound"] == {"wrong": 7, "ok": 13}
    lines = report.verdict_lines([r], max_examples=3)
    assert lines[0] == "callgate: WRONG ANSWERS: 14 of 40 checked (35 %)"
    assert lines[1:4] == ["  call 0: expected ALLOW, got BLOCK", "  call 3: expected ALLOW, got BLOCK",
                          "  call 6: expected ALLOW, got BLOCK"]
    assert lines[4] == "  ... and 11 more"
    assert "  inbound: ok 13, wrong 7" in lines
    assert report.failed([r])


def test_merge() -> None:
    a = TargetResult("callgate", make_recorder(lognormal_ns(100, 1.0, 5), 1.0), client_cpu_s=1.0, server_cpu_s=0.5)
    b = TargetResult("callgate", make_recorder(lognormal_ns(50, 1.0, 6), 1.0), client_cpu_s=2.0)
    for i in range(8):
        a.add_check(False, f"a{i}", "x")
        b.add_check(False, f"b{i}", "x")
    a.merge(b)
    assert a.recorder.ok == 150 and a.client_cpu_s == 3.0 and a.client_procs == 2 and a.server_cpu_s == 0.5
    assert (a.wrong, a.checked, len(a.wrong_examples)) == (16, 16, report.MAX_EXAMPLES)
    assert a.wrong_examples[-1] == "b1" and a.by_category == {"x": {"wrong": 16}}
    with pytest.raises(ValueError):
        a.merge(TargetResult("bare", RunRecorder()))


def test_percentile_curve_is_monotonic_and_ends_at_max() -> None:
    h = Histogram()
    lat = lognormal_ns(10_000, 1.0, 7)
    h.record_many(lat)
    curve = report.percentile_curve(h)
    qs, ms = [q for q, _ in curve], [v for _, v in curve]
    assert qs[0] == 0.0 and curve[-1] == (100.0, lat.max() / 1e6)
    assert all(b > a for a, b in itertools.pairwise(qs))
    assert all(b >= a for a, b in itertools.pairwise(ms))
    assert qs[-2] == pytest.approx(100 * (1 - 1 / 10_000))  # the finest percentile 10,000 samples resolve
    assert ms[0] == pytest.approx(lat.min() / 1e6)
    assert report.percentile_curve(Histogram()) == []


def test_write_json_round_trip(tmp_path: Path, pair: list[TargetResult]) -> None:
    path = tmp_path / "run.json"
    meta = {"argv": ["python", "-m", "loadtest.grpc_bench", "--rate", "1000"], "world": {"tenants": 4},
            "path": tmp_path}
    report.write_json(path, pair, meta)
    data = json.loads(path.read_text(encoding="utf-8"))
    assert set(data) == {"meta", "reference", "targets", "ratios", "verdict", "failed"}
    assert data["meta"]["argv"][-1] == "1000" and data["meta"]["path"] == str(tmp_path)
    assert data["reference"] == "bare" and data["failed"] is False
    assert list(data["targets"]) == ["callgate", "bare"]
    cg = data["targets"]["callgate"]
    assert set(report.figures(pair[0])) <= set(cg)
    assert cg["throughput_rps"] == pytest.approx(500.0) and cg["errors"] == {"UNAVAILABLE": 3}
    assert cg["latency_ms"]["p99.9"] == pytest.approx(report.figures(pair[0])["latency_ms"]["p99.9"])
    timeline = cg["timeline"]
    assert timeline["columns"] == ["t_s", "calls", "mean_ms", "max_ms"] and timeline["bin_s"] == 0.1
    assert len(timeline["rows"]) == 100 and timeline["rows"][0][0] == 0.0
    assert sum(row[1] for row in timeline["rows"]) == 5_000
    points = cg["percentile_curve"]["points"]
    assert points[-1] == [100.0, pytest.approx(pair[0].recorder.latency.max / 1e6)]
    assert Histogram.from_dict(cg["histogram"]).percentile(99.0) == pair[0].recorder.latency.percentile(99.0)
    assert data["ratios"]["callgate/bare"]["throughput_rps"] == pytest.approx(0.5)
    assert "callgate: wrong answers: 0 of 5,000 checked" in data["verdict"]


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        return img.size


def test_write_png(tmp_path: Path, pair: list[TargetResult]) -> None:
    # a stall in callgate's timeline makes the range wide (log axis path); the empty target is skipped
    stalled = make_recorder(np.concatenate([lognormal_ns(2_000, 1.0, 8), np.full(5, 250_000_000)]), 5.0)
    targets = [*pair, TargetResult("stalled", stalled), TargetResult("empty", RunRecorder())]
    path = tmp_path / "run.png"
    report.write_png(path, targets, "Inbound open loop 1,000/s, 4 tenants")
    width, height = _png_size(path)
    assert 600 <= width <= 2000 and 600 <= height <= 2000


def test_write_png_without_calls(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    report.write_png(path, [TargetResult("callgate", RunRecorder())], "nothing ran")
    assert _png_size(path)[0] > 0


class Counter:
    def __init__(self) -> None:
        self.done = 0
        self.lock = threading.Lock()

    def poll(self) -> tuple[int, int, int]:
        with self.lock:
            self.done += 100
            return self.done, 1, 0


def test_progress_plain_lines_when_not_a_tty() -> None:
    out, counter = io.StringIO(), Counter()
    progress = Progress(0.5, counter.poll, out, interval_s=0.05)
    assert progress.tty is False and Progress(1.0, counter.poll, io.StringIO()).interval_s == 2.0
    with progress:
        thread = progress._thread
        time.sleep(0.3)
    assert thread is not None and not thread.is_alive() and progress._thread is None
    lines = out.getvalue().splitlines()
    assert len(lines) >= 3 and "\r" not in out.getvalue()
    assert all(line.startswith("[") and " calls " in line and "errors 1  wrong 0" in line for line in lines)
    assert lines[-1].startswith("[" + "#" * 30 + "] 100%")  # final line: the run completed
    assert " / 0.5 s " in lines[-1]
    count = len(lines)
    time.sleep(0.15)
    assert len(out.getvalue().splitlines()) == count  # nothing printed after the exit


def test_progress_redraws_in_place_on_a_tty() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out, counter = Tty(), Counter()
    progress = Progress(10.0, counter.poll, out, interval_s=0.05)
    assert progress.tty and Progress(1.0, counter.poll, Tty()).interval_s == 0.5
    with progress:
        time.sleep(0.2)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") >= 3
    assert "\x1b[K" in text


def test_progress_line_format_and_interrupted_run() -> None:
    p = Progress(20.0, lambda: (0, 0, 0), io.StringIO(), width=14)
    assert p.line(10_512, 0, 0, 12.3, 1001.0) == (
        "[#########.....]  62%  12.3 s / 20 s  10,512 calls  1,001/s  errors 0  wrong 0")
    out = io.StringIO()
    with pytest.raises(KeyboardInterrupt), Progress(20.0, lambda: (5, 0, 2), out, interval_s=10.0):
        raise KeyboardInterrupt
    assert out.getvalue().startswith("[" + "." * 30 + "]   0%") and "wrong 2" in out.getvalue()
