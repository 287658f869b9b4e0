"""The crash matrix, bounded: 30 SIGKILLs of a worker under pushes, patches, call events, credits and top-ups;
then nothing acknowledged is lost, nothing is charged twice, nothing is left behind (loadtest/crash_matrix.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_thirty_kills_lose_nothing(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "loadtest.crash_matrix", "--kills", "30", "--seed", "7",
                           "--data-dir", str(tmp_path / "data")], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    print(done.stdout[-3000:], done.stderr[-3000:])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "crash matrix: PASS: 0 failed checks" in done.stdout
    assert "30 kills" in done.stdout
