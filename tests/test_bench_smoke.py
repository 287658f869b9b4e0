"""The benchmark command runs and prints every section (figures are not asserted)."""

from __future__ import annotations

import json

from loadtest import core_bench


def test_core_bench_quick_prints_every_section(tmp_path, capsys):
    out_file = tmp_path / "bench.json"
    assert core_bench.main(["--quick", "--json", str(out_file)]) == 0
    text = capsys.readouterr().out
    for heading in ("Decisions", "Blacklist lookups", "Memory per blacklisted number", "Compile and load"):
        assert heading in text
    figures = json.loads(out_file.read_text())
    assert figures["inbound"]["single_ns"] > 0
    # the mix exercises the refusals the benchmark claims to measure
    assert {"OK", "BLACKLISTED", "OFF_HOURS", "DOCUMENTS_PENDING"} <= set(figures["inbound"]["reasons"])
