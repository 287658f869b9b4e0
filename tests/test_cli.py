"""The `callgate` command line: exit codes and messages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from engine.cli import main

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "acme.json"


def test_check_accepts_the_example(capsys):
    assert main(["check", str(EXAMPLE)]) == 0
    assert "valid settings for tenant 'acme'" in capsys.readouterr().out


def test_check_lists_every_problem_and_exits_2(tmp_path, capsys):
    doc = json.loads(EXAMPLE.read_text())
    doc["numbers"][0]["schedule"]["weekly"]["tue"] = [["25:00", "26:00"]]
    doc["currency"] = "GBP"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    assert main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "currency: 'GBP' is not one of USD, EUR" in err
    assert "numbers[0].schedule.weekly.tue[0]: '25:00' is not a time" in err
    assert "numbers[0].schedule.weekly.tue[0]: '26:00' is not a time" in err
    assert "3 errors" in err


@pytest.mark.parametrize("content", [b"", b"{not json", b"\xc1\xc1\xc1", b"[1, 2]"])
def test_check_refuses_garbage_with_exit_2(tmp_path, capsys, content):
    path = tmp_path / "garbage.json"
    path.write_bytes(content)
    assert main(["check", str(path)]) == 2
    assert "document:" in capsys.readouterr().err


def test_check_reads_msgpack(tmp_path):
    path = tmp_path / "acme.msgpack"
    path.write_bytes(msgpack.packb(json.loads(EXAMPLE.read_text())))
    assert main(["check", str(path)]) == 0


def test_missing_file_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["check", str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"callgate: error: cannot read {tmp_path / 'nope.json'}: No such file or directory"


def test_compiled_snapshot_loads_in_another_process(tmp_path):
    snap = tmp_path / "acme.snap"
    assert main(["compile", str(EXAMPLE), "-o", str(snap), "--version", "12"]) == 0
    script = ("import sys; from engine import loads; s = loads(open(sys.argv[1], 'rb').read()); "
              "print(s.version, s.inbound('+14155550666', '+14155550199', 1796149800).reason)")
    out = subprocess.run([sys.executable, "-c", script, str(snap)], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["12", "BLACKLISTED"]


def test_help_explains_each_command():
    out = subprocess.run([sys.executable, "-m", "callgate", "--help"], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    for command in ("check", "compile", "demo"):
        assert command in out
    bad = subprocess.run([sys.executable, "-m", "callgate", "nonsense"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2
