"""The load-test harness end to end: a real server checked answer by answer, and a wrong server caught."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import harness, world
from loadtest.process import BareServer

from .serving import ROOT

SMALL = ["--tenants", "2", "--numbers", "20", "--blacklist", "500", "--offhours-blacklist", "100", "--users", "6",
         "--requests", "600", "--warmup", "0.3"]


def test_short_load_against_a_real_server_has_no_wrong_answer(tmp_path: Path, capsys) -> None:
    out_json, out_png = tmp_path / "run.json", tmp_path / "run.png"
    code = harness.main([*SMALL, "--open-loop", "300", "--duration", "2", "--compare-bare",
                         "--json", str(out_json), "--png", str(out_png)])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    figures = json.loads(out_json.read_text())
    text = json.dumps(figures)
    assert "callgate" in text and "bare" in text
    assert "wrong answers: 0 of" in printed.out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_batch_mode_checks_every_row(tmp_path: Path, capsys) -> None:
    code = harness.main([*SMALL, "--rpc", "batch", "--batch-size", "50", "--closed-loop", "2", "--duration", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert "wrong answers: 0 of" in printed.out


def test_stream_mode_pipelines_and_checks(capsys) -> None:
    code = harness.main([*SMALL, "--rpc", "stream", "--closed-loop", "16", "--duration", "1", "--compare-bare"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert "wrong answers: 0 of" in printed.out and "bare: errors: none" in printed.out


def test_lifecycles_with_pickups(capsys) -> None:
    code = harness.main(["--rpc", "lifecycle", "--closed-loop", "8", "--duration", "2", "--warmup", "0",
                         "--max-requests", "300"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert "verification: PASS" in printed.out and "picked up" in printed.out


def test_a_wrong_server_is_caught(capsys) -> None:
    """The bare server answers ROUTE or a fixed blacklist REJECT to everything: the checks must say so."""
    tenants = world.build_world(world.WorldSpec(seed=1, tenants=2, numbers_per_tenant=20, blacklist=500,
                                                offhours_blacklist=100, users_per_tenant=6))
    with BareServer("aio", extra=[a for t in tenants.tenants for a in ("--tenant", t.id)]) as bare:
        code = harness.main([*SMALL, "--target", bare.address, "--no-push", "--open-loop", "300",
                             "--duration", "1"])
    printed = capsys.readouterr()
    assert code == 1, printed.out + printed.err
    assert "WRONG ANSWERS" in printed.out and "wrong answers: 0 of" not in printed.out
    assert "expected" in printed.out or "!=" in printed.out           # the examples say what differed


@pytest.mark.parametrize("argv, words", [(["--tenants", "0"], "--tenants must be at least 1"),
                                         (["--blacklisted", "0.9", "--unknown", "0.5"], "add up to at most 1"),
                                         (["--duration", "0"], "--duration")])
def test_bad_arguments_exit_2_with_a_message(argv, words, capsys) -> None:
    with pytest.raises(SystemExit) as stop:
        harness.main(argv)
    assert stop.value.code == 2 and words in capsys.readouterr().err


def test_callgate_loadtest_is_the_harness() -> None:
    done = subprocess.run([sys.executable, "-m", "callgate", "loadtest", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "python -m loadtest" in done.stdout and "--open-loop" in done.stdout


def test_precise_cpu_counts_every_thread_to_the_nanosecond_and_a_gone_process_is_none() -> None:
    """The SIP benchmark's CPU per call (process.proc_cpu_precise): the process's CPU-time clock, which moves with
    work done in any of its threads, one that ended too (utime + stime move in 10 ms ticks)."""
    import os
    import threading
    import time

    from loadtest.process import proc_cpu_precise, proc_cpu_seconds

    def spin(seconds: float) -> None:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass

    before = proc_cpu_precise(os.getpid())
    worker = threading.Thread(target=spin, args=(0.3,))
    worker.start()
    worker.join(10)
    ended = proc_cpu_precise(os.getpid())   # (the thread gone: its 0.3 s still counted)
    spin(0.2)
    after = proc_cpu_precise(os.getpid())
    assert before is not None and ended is not None and after is not None
    assert 0.3 <= ended - before < 3 and 0.2 <= after - ended < 3
    assert abs(after - time.process_time()) < 0.05 and after <= (proc_cpu_seconds(os.getpid()) or 0) + 0.05
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    assert proc_cpu_precise(int(gone.stdout)) is None
