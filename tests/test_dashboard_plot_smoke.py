"""The dashboard's picture tool draws every panel from a real Prometheus that scraped a real server: each query
of integrations/grafana/callgate-dashboard.json, run by Prometheus itself, returns data after a short run."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from loadtest import dashboard_plot


def test_every_panel_has_data_after_a_short_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    assert shutil.which("prometheus"), "prometheus is missing: install Debian's prometheus package (.ci/run does)"
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "dashboard.png"
    assert dashboard_plot.main(["--seconds", "12", "--step", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 50_000
    assert "19 panels" in printed
    # a healthy run has no store errors: that panel alone may be empty
    empty = printed.rpartition("without data: ")[2].strip() if "without data" in printed else ""
    assert empty in ("", "Store errors, by kind"), printed
    assert not list(scratch.iterdir())  # its store and Prometheus's data are gone
