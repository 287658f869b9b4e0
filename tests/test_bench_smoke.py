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


def test_spool_bench_runs_both_readers_side_by_side_every_event_answered(tmp_path):
    """The sender's rounds outside Kamailio (a subprocess: it forks writers and loads the script under a stand-in
    KSR), each reader's rounds counted apart, every event of every round answered at once."""
    import subprocess
    import sys

    from .serving import ROOT

    out_file = tmp_path / "spool.json"
    done = subprocess.run([sys.executable, "-m", "loadtest.spool_bench", "--rounds", "3", "--calls", "20",
                           "--writers", "2", "--every-ms", "0", "--json", str(out_file)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "compiled / python" in done.stdout
    figures = json.loads(out_file.read_text())
    assert figures["rounds_run"] >= 8 and figures["events"] == figures["rounds_run"] * 3 * 20   # (warm-up too)
    assert all(len(figures["readers"][name]["rounds"]) == 3 and figures["readers"][name]["p50_us_per_call"] > 0
               for name in ("compiled", "python"))


def test_spool_bench_refuses_bad_arguments_with_exit_2_saying_what_is_wanted(capsys):
    import pytest

    from loadtest import spool_bench

    for argv in (["--calls", "0"], ["--calls", "301"], ["--rounds", "0"], ["--every-ms", "-1"], ["--writers", "0"]):
        with pytest.raises(SystemExit) as stop:
            spool_bench.main(argv)
        assert stop.value.code == 2
        assert "--calls 1 to 300" in capsys.readouterr().err


def test_sip_bench_refuses_a_together_list_that_pairs_nothing_with_exit_2_naming_the_item(capsys):
    import pytest

    from loadtest import sip_bench

    for value, why in (("local", "one proxy is side by side with nothing"), ("local,local", "'local' named twice"),
                       ("bypass,nobody", "'nobody' is no proxy"), ("bypass,,local", "an empty item"),
                       (",", "an empty item"), ("bypass, local,bypass", "'bypass' named twice")):
        with pytest.raises(SystemExit) as stop:   # (before anything is looked for or started)
            sip_bench.main(["--together", value])
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert why in err and "two or more of bypass, events, rpc, local, comma-separated, each once" in err, err


def test_sip_bench_refuses_a_variant_it_cannot_start_with_exit_2_saying_what_is_wanted(capsys):
    import pytest

    from loadtest import sip_bench

    for argv, why in ((["--variant", "bypass=local"], "'bypass' is taken"),
                      (["--variant", "a=local", "--variant", "a=events"], "'a' is taken"),
                      (["--variant", "x=nobody"], "'nobody' is no kind of proxy"),
                      (["--variant", "x=local:NOEQUALS"], "'NOEQUALS' is no VAR=VALUE"),
                      (["--variant", "x=local:A=1,,B=2"], "'' is no VAR=VALUE"),
                      (["--variant", "x=local:1BAD=2"], "'1BAD=2' is no VAR=VALUE"),
                      (["--variant", "x=local:A=1,A=2"], "A set twice"),
                      (["--variant", "x=events:CALLGATE_BYPASS=1"], "CALLGATE_BYPASS is what makes the kind"),
                      (["--variant", "x=local:CALLGATE_REPLICA_DIR=/tmp"], "CALLGATE_REPLICA_DIR is what makes"),
                      (["--variant", "Upper=local"], "not NAME=KIND"),
                      (["--variant", "=local"], "not NAME=KIND"),
                      ([f"--variant=v{i}=local" for i in range(5)], "5 given, at most 4"),
                      (["--together", "local,x"], "'x' is no proxy"),   # (a variant's name only once it is one)
                      (["--variant", "x=local", "--together", "local,x,y"], "'y' is no proxy")):
        with pytest.raises(SystemExit) as stop:
            sip_bench.main(argv)
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert why in err, (argv, err)


def test_sip_bench_takes_a_variant_whose_values_hold_what_a_value_may():
    from loadtest import sip_bench

    def refuse(message: str) -> None:
        raise AssertionError(message)

    assert sip_bench.parse_variants(["x=local", "y=events:A=1,B=a=b:c", "z=rpc:EMPTY="], refuse) == {
        "x": ("local", {}), "y": ("events", {"A": "1", "B": "a=b:c"}), "z": ("rpc", {"EMPTY": ""})}
