"""The call-lifecycle bench runs end to end against a real server with a tiny load and verifies itself.

The calls/s figure is printed, never asserted here: the smoke load is far too small to say anything
about the 500 calls/s target, and the machine is shared.  What must hold at any load is asserted:
the run exits 0, no event failed, and every check of the replies and of the store passed.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from loadtest import lifecycle_bench


def test_tiny_run_passes_its_checks(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "lifecycle.json"
    code = lifecycle_bench.main(["--calls", "200", "--duration", "5", "--lanes", "8", "--warmup", "0",
                                 "--replays", "10", "--json", str(out)])
    printed = capsys.readouterr().out
    print(printed)
    assert code == 0, printed
    f = json.loads(out.read_text())
    assert f["calls_per_s"] > 0
    assert f["errors"] == {}
    assert f["verification"]["passed"], [c for c in f["verification"]["checks"] if not c["ok"]]
    names = " ".join(c["name"] for c in f["verification"]["checks"])
    for what in ("replayed ENDED", "ledger rows of kind 'call'", "balance_micro", "leads of inbound"):
        assert what in names  # the store checks ran: the bench started its own server
    assert 0 < f["measured_calls"] <= 200
    assert f["completed_inbound"] + f["completed_outbound"] == f["calls_total"]
    assert f["server"]["pid"] and f["server_cpu_ms_per_call"] > 0


def test_expected_charge_and_document() -> None:
    assert lifecycle_bench.expected_charge(61) == "0.04"  # 2 increments of 60 s at 0.0200/min
    assert lifecycle_bench.expected_charge(60) == "0.02"
    doc = json.loads(lifecycle_bench.bench_document("bench"))
    assert doc["tenant"] == "bench" and doc["auto_topup"] == {"enabled": False}
    assert all("rental" not in n for n in doc["numbers"])
