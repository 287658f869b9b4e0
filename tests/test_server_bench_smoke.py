"""`python -m loadtest.server_bench --quick` runs every section against real servers (figures are not asserted)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from loadtest import loadgen, server_bench, server_sections


def number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.skipif(loadgen.h2load_path() is None, reason=loadgen.INSTALL_HINT)
def test_quick_run_measures_every_section(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "server_bench.json"
    assert server_bench.main(["--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    print(text)
    assert "server_bench summary" in text and ("PASS" in text or "FAIL" in text)
    data = json.loads(out.read_text())
    assert data["crashed"] == []
    s = data["sections"]
    assert set(s) == set(server_sections.SECTIONS.values())

    # 1: open loop latency against one worker
    for key in ("low", "high"):
        f = s["latency"][key]
        assert f["ok"] > 0 and number(f["latency_ms"]["p50"]) and number(f["latency_ms"]["p99"])
        assert 0 < f["latency_ms"]["p50"] <= f["latency_ms"]["p99"]
    # 2: one worker against the bare grpcio handler under h2load
    sat = s["saturation"]
    for name in ("w1", "bare"):
        assert sat["targets"][name]["best_rps"] > 0
    assert number(sat["ratio_best"]) and number(sat["ratio_median"])
    # 3: two workers against one, with the client's CPU
    work = s["workers"]
    assert work["targets"]["w2"]["best_rps"] > 0 and number(work["ratio_best"])
    assert number(work["targets"]["w2"]["h2load_cores_busy"]) and number(work["machine_ceiling_ratio"])
    assert len(work["worker_cpu_share"]) == 2
    # ... against two bare grpc.aio processes on one port, and CPU per call of w2 against w1 at one offered load
    assert work["targets"]["bare2"]["best_rps"] > 0 and number(work["bare2_ratio_median"])
    assert number(work["cpu"]["ratio_median"]) and len(work["cpu"]["ratio_rounds"]) == 1
    assert len(work["cpu"]["runs"]["w2"][0]["pids"]) >= 3  # supervisor and two workers at least
    # 4: DecideBatch decisions/s, grpc_bench and h2load
    batch = s["batch"]
    assert batch["grpc_bench_w1"]["decisions_per_s"] > 0 and batch["h2load_w1"]["decisions_per_s"] > 0
    # 5: p99 with and without a big push, and the push's duration
    stalls = s["stalls"]
    assert stalls["without_push"]["ok"] > 0 and stalls["with_push"]["ok"] > 0
    assert number(stalls["ratio_p99"]) and number(stalls["push_s"]) and stalls["push_s"] > 0
    assert "error" not in stalls["push"] and number(stalls["push"]["compile_s"])
    # 6: propagation to both workers
    prop = s["propagation"]
    assert len(prop["workers"]) == 2 and number(prop["worst_s"]) and number(prop["median_s"])
    assert len(prop["pushes"]) == 2
    # 7: kill -9 of a worker under load
    kill = s["kill"]
    assert number(kill["ok_after_kill"]) and number(kill["ok_before_kill"]) and kill["ok_before_kill"] > 0
    assert all(number(v) for v in kill["status_after_kill"].values())
    assert isinstance(kill["replacement_started"], bool) and isinstance(kill["integrity_check"], str)
    assert sum(kill["connections_at_kill"].values()) >= 0

    # the summary: every row that has a target was judged
    rows = data["summary"]
    assert {r["section"] for r in rows} == set(server_sections.SECTIONS)
    assert all(r["ok"] in (True, False) for r in rows if r["target"] and r["text"] is None)
