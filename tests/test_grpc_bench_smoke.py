"""The gRPC load tools run end to end against the bare server (figures are printed, never asserted)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from callgate.v1 import decisions_pb2
from loadtest import grpc_bench, loadgen
from loadtest.process import BareServer
from loadtest.stats import Histogram

ORDER = ("min", "p50", "p90", "p99", "p99.9", "max")


@pytest.fixture(scope="module")
def bare() -> Iterator[BareServer]:
    server = BareServer("aio")  # port 0: a free port, read from its LISTENING line
    try:
        yield server
    finally:
        assert server.stop() == 0  # SIGTERM (then SIGKILL after 5 s); 0 = it stopped cleanly on SIGTERM


def assert_sane(latency: dict[str, float]) -> None:
    values = [latency[k] for k in ORDER]
    assert values == sorted(values), latency
    assert values[1] > 0


def bench(bare: BareServer, tmp_path: Path, *load: str) -> dict[str, Any]:
    out = tmp_path / "bench.json"
    code = grpc_bench.main(["--target", bare.address, "--target-name", "bare", "--server-pid", str(bare.pid),
                            "--procs", "1", "--warmup", "0.2", "--duration", "1", "--json", str(out), *load])
    assert code == 0
    figures: dict[str, Any] = json.loads(out.read_text())["results"]["bare"]
    return figures


def test_closed_loop(bare: BareServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = bench(bare, tmp_path, "--closed-loop", "8", "--max-requests", "400")
    print(capsys.readouterr().out)
    assert f["throughput_rps"] > 0
    assert f["errors"] == {}
    assert 0 < f["ok"] <= 400
    assert_sane(f["latency_ms"])
    assert f["client_load_cpu_s"] > 0 and f["server_cpu_us_per_call"] > 0


def test_open_loop(bare: BareServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = bench(bare, tmp_path, "--open-loop", "200", "--max-requests", "1000")
    print(capsys.readouterr().out)
    assert f["throughput_rps"] > 0
    assert f["errors"] == {}
    assert 150 <= f["ok"] <= 210  # 200/s for 1 s, give or take the window edges
    assert_sane(f["latency_ms"])
    assert_sane(f["service_ms"])


def test_batch_closed_loop(bare: BareServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = bench(bare, tmp_path, "--rpc", "batch", "--batch-size", "100", "--closed-loop", "2", "--max-requests", "100")
    print(capsys.readouterr().out)
    assert f["errors"] == {} and f["ok"] > 0
    assert f["decisions_per_s"] == pytest.approx(100 * f["throughput_rps"])


def test_batch_columns() -> None:
    msg = loadgen.batch_message("acme", [("+1415", "+1999", 7), ("x", "y", -1)], 16)
    assert msg.count == 2 and msg.width == 16
    assert msg.a == b"+1415" + b"\0" * 11 + b"x" + b"\0" * 15
    assert msg.at == (7).to_bytes(8, "little") + (-1).to_bytes(8, "little", signed=True)


def test_histogram_merge_and_percentiles() -> None:
    a, b = Histogram(), Histogram()
    a.record_many(range(1, 5001))
    b.record_many(range(5001, 10001))
    merged = Histogram.from_dict(a.merge(b).to_dict())
    assert merged.count == 10000 and merged.min == 1 and merged.max == 10000
    for q, exact in ((50, 5000), (99, 9900), (99.9, 9990)):
        assert abs(merged.percentile(q) - exact) <= exact / 256 + 1


H2LOAD_SAMPLE = """\
finished in 507.24ms, 3942.94 req/s, 440.06KB/s
requests: 2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 2000 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 223.21KB (228570) total, 6.15KB (6300) headers (space savings 96.11%), 109.38KB (112000) data
                     min         max         mean         sd        +/- sd
time for request:      380us     17.22ms      7.97ms      1.85ms    85.00%
time for connect:      251us      1.47ms       719us       526us    75.00%
time to 1st byte:     2.35ms     15.92ms     11.42ms      6.15ms    75.00%
req/s           :     993.21      999.78      996.45        2.73    50.00%
"""


def test_h2load_parsing_and_framing() -> None:
    f = loadgen.parse_output(H2LOAD_SAMPLE)
    assert f["req_per_s"] == pytest.approx(3942.94)
    assert f["requests"]["succeeded"] == 2000 and f["requests"]["failed"] == 0
    assert f["request_us"]["min"] == pytest.approx(380) and f["request_us"]["max"] == pytest.approx(17220)
    assert f["traffic_bytes"]["data"] == 112000
    assert loadgen.grpc_frame(b"abc") == b"\x00\x00\x00\x00\x03abc"


@pytest.mark.skipif(loadgen.h2load_path() is None, reason=loadgen.INSTALL_HINT)
def test_h2load_run(bare: BareServer) -> None:
    message = decisions_pb2.InboundRequest(tenant="acme", caller="+14155551234", called="+14155550199",
                                           at=1764613800).SerializeToString()
    reply = loadgen.probe_reply(bare.address, loadgen.METHODS["inbound"], message)
    f = loadgen.run_h2load(bare.address, message, n=500, c=2, m=4, t=1, timeout_s=30,
                          server_pid=bare.pid, reply_size=len(reply))
    print(f)
    assert f["req_per_s"] > 0
    assert f["requests"]["succeeded"] == 500 and f["replies_with_message"] == 500
    assert_sane(f["latency_ms"])
