"""Several callgate hosts on one machine (loadtest/cluster.py: network namespaces on a bridge of the run's own),
behind nginx (integrations/nginx/callgate.conf) or a client's round_robin: decisions reach every host, a host
killed with SIGKILL or cut off costs only the calls in flight, and every run leaves nothing behind.

Root only (namespaces); the nginx tests need Debian's nginx (.ci/run installs it).  Each test drives at most
8 s of load at 300 calls/s and prints its figures; the bounds are generous (README has the measured ones)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from loadtest.cluster import Cluster, alive, failover_figures, probe_run, render_nginx
from loadtest.netns import IP, namespaces, pids_in, sweep
from loadtest.process import ROOT, python_env, start_time

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not os.path.exists(IP),
                                reason="network namespaces need root and iproute2's ip")
needs_nginx = pytest.mark.skipif(shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"),
                                 reason="nginx is not installed: apt-get install -y nginx (.ci/run does)")

RATE, SECONDS, FAULT_AT = 300, 8.0, 3.0


def assert_left_nothing(c: Cluster) -> None:
    report = c.close()
    assert report.errors == [], report
    assert report.killed_inside == {}, f"processes still inside the namespaces after the stops by PID: {report}"
    assert report.leftover_namespaces == [] and not [n for n in namespaces() if n.startswith(c.net.prefix)]
    assert report.live_processes == [], report
    assert len(report.namespaces_removed) == len(c.net.hosts) + 1  # the hosts and the switch


@contextmanager
def hosts(lb: bool = True) -> Iterator[Cluster]:
    """lb (nginx over h1 and h2, if `lb`), h1 and h2 (callgate serve --workers 2 each), client."""
    c = Cluster(("lb", "h1", "h2", "client") if lb else ("h1", "h2", "client"))
    try:
        c.serve("h1")
        c.serve("h2")
        if lb:
            c.start_nginx("lb", ["h1", "h2"])
        yield c
    finally:
        c.close()
    assert_left_nothing(c)


def target(c: Cluster, lb: bool) -> str:
    return c.address("lb") if lb else f"{c.address('h1')},{c.address('h2')}"


def show(title: str, f: dict[str, Any]) -> None:
    print(f"\n{title}: {f['calls']} calls, {f['errors']} errors {f['codes']} ({f['error_pct']}%), failover (to the "
          f"last error) {f['failover_s']} s, 50 successes in a row from {f['steady_s']} s after the fault; "
          f"{f['slow']} calls slower than 100 ms, the last ending {f['disturbed_s']} s after it; max latency "
          f"near it {f['max_latency_ms']} ms")
    print("  per 0.5 s from the fault: " + ", ".join(f"{k}: {v}" for k, v in f["timeline"].items()))


@needs_nginx
def test_nginx_spreads_decisions_over_both_hosts() -> None:
    with hosts() as c:
        before = c.stats("client", ["h1", "h2"])["decisions"]
        out = probe_run(c, "client", c.address("lb"), RATE, 3.0, 2.0)
        assert out["codes"] == {"OK": 900}, out["codes"]  # every answer right: blacklisted, routed, closed
        after = c.stats("client", ["h1", "h2"], via=c.address("lb"), asks=20)
        per_host = {a: after["decisions"][a] - before[a] for a in before}
        print(f"\ndecisions per host (their /metrics) for 900 calls through nginx: {per_host}")
        assert all(n >= 900 * 0.3 for n in per_host.values()) and sum(per_host.values()) >= 900, per_host
        time.sleep(0.3)  # nginx's access log is flushed every 200 ms
        counts = c.nginxes["lb"].upstream_counts()
        print(f"nginx: {counts}")
        assert set(counts["answered"]) == {c.address("h1"), c.address("h2")} and set(counts["grpc_status"]) == {"0"}
        workers = {h: set(c.servers[h].worker_pids()) for h in ("h1", "h2")}
        pids = set(after["pids_via"])
        print(f"Admin.Stats through nginx answered by workers {sorted(pids)}; h1's {workers['h1']}, h2's "
              f"{workers['h2']}")
        assert pids & workers["h1"] and pids & workers["h2"] and pids <= workers["h1"] | workers["h2"]


def assert_failed_over(c: Cluster, out: dict[str, Any]) -> dict[str, Any]:
    f: dict[str, Any] = out["figures"]
    assert "WRONG" not in out["codes"], out["codes"]
    assert f["calls"] == RATE * SECONDS
    assert f["errors"] < 0.05 * f["calls"], f
    assert f["failover_s"] < 5.0 and f["steady_s"] is not None and f["steady_s"] < 5.0, f
    later = [call for call in out["calls"] if call[0] > out["t_fault"] + max(f["failover_s"], 1.0) + 0.5]
    assert later and all(call[2] == "OK" for call in later)
    return f


@needs_nginx
def test_nginx_kill_9_of_a_host_under_load() -> None:
    with hosts() as c:
        killed: list[int] = []
        out = probe_run(c, "client", c.address("lb"), RATE, SECONDS, 2.0, lambda: killed.extend(c.kill_host("h1")),
                         FAULT_AT)
        server = c.servers["h1"]
        assert server.pid in killed and set(server.worker_pids()) <= set(killed) and len(killed) >= 3
        assert pids_in(c.net["h1"].ns) == []  # every process of the host is gone
        show(f"kill -9 of h1's {len(killed)} processes, {RATE}/s through nginx", out["figures"])
        f = assert_failed_over(c, out)
        time.sleep(0.3)
        counts = c.nginxes["lb"].upstream_counts()
        print(f"  nginx: {counts}")
        wall_fault = time.time() - (time.monotonic() - out["t_fault"])  # nginx logs wall-clock times
        late = [r for r in c.nginxes["lb"].access_log() if r["t"] > wall_fault + f["failover_s"] + 0.5]
        assert late and all(r["hosts"][-1] == c.address("h2") for r in late), "h2 answers everything after the kill"
        assert counts["answered"].get(c.address("h1"), 0) > 0


def test_round_robin_kill_9_of_a_host_under_load() -> None:
    with hosts(lb=False) as c:
        before = c.stats("client", ["h1", "h2"])["decisions"]
        warm = probe_run(c, "client", target(c, False), 200, 1.5, 2.0, extra=("--round-robin",))
        assert warm["codes"] == {"OK": 300}
        between = c.stats("client", ["h1", "h2"])["decisions"]
        spread = {a: between[a] - before[a] for a in before}
        print(f"\nround_robin, 300 calls: decisions per host {spread}")
        assert all(n >= 300 * 0.3 for n in spread.values()), spread
        out = probe_run(c, "client", target(c, False), RATE, SECONDS, 2.0, lambda: c.kill_host("h1"), FAULT_AT,
                         ("--round-robin",))
        show(f"kill -9 of h1, {RATE}/s, client round_robin + health checking + retries", out["figures"])
        assert_failed_over(c, out)
        h2 = c.address("h2", 9464)
        after = c.stats("client", ["h2"])["decisions"][h2]
        late = sum(1 for call in out["calls"] if call[0] > out["t_fault"] + 1.0)
        assert after - between[h2] >= late, "h2 answered every call after the kill"


def test_round_robin_skips_a_host_not_serving_decisions() -> None:
    """Health checking: a host up but holding no tenant's settings (NOT_SERVING callgate.v1.Decisions) gets
    no call (without health checking, half the calls would be NOT_FOUND there)."""
    c = Cluster(("h1", "h3", "client"))
    try:
        c.serve("h1")
        c.serve("h3", seed=None)
        out = probe_run(c, "client", f"{c.address('h1')},{c.address('h3')}", 200, 1.5, 2.0,
                         extra=("--round-robin", "--no-retries"))
        decisions = c.stats("client", ["h1", "h3"])["decisions"]
        print(f"\nround_robin over a serving and an empty host: {out['codes']}, decisions per host {decisions}")
        assert out["codes"] == {"OK": 300} and decisions[c.address("h3", 9464)] == 0
    finally:
        c.close()
    assert_left_nothing(c)


@pytest.mark.parametrize("balancer", ["nginx", "round_robin"])
def test_cut_link_moves_traffic_to_the_other_host(balancer: str) -> None:
    if balancer == "nginx" and shutil.which("nginx") is None and not os.path.exists("/usr/sbin/nginx"):
        pytest.skip("nginx is not installed: apt-get install -y nginx (.ci/run does)")
    lb = balancer == "nginx"
    extra = () if lb else ("--round-robin",)  # round_robin with keepalive pings every second (the default)
    with hosts(lb) as c:
        before = c.stats("client", ["h1", "h2"])["decisions"]
        out = probe_run(c, "client", target(c, lb), RATE, SECONDS, 2.0, lambda: c.cut("h1"), FAULT_AT, extra)
        show(f"link of h1 cut, {RATE}/s, {balancer}", out["figures"])
        f = assert_failed_over(c, out)
        c.restore("h1")
        after = c.stats("client", ["h1", "h2"])["decisions"]
        h1, h2 = c.address("h1", 9464), c.address("h2", 9464)
        late = sum(1 for call in out["calls"] if call[0] > out["t_fault"] + f["failover_s"] + 0.5)
        print(f"  decisions per host during the run: h1 {after[h1] - before[h1]}, h2 {after[h2] - before[h2]}; "
              f"{late} calls after the failover")
        assert after[h2] - before[h2] >= late + 0.3 * FAULT_AT * RATE
        if lb:  # the link back: nginx tries h1 again after fail_timeout (5 s) and h1 answers again
            nginx = c.nginxes["lb"]
            time.sleep(0.3)
            n = len(nginx.access_log())
            back = probe_run(c, "client", c.address("lb"), 200, 7.0, 2.0)
            assert back["codes"] == {"OK": 1400}, back["codes"]
            time.sleep(0.3)
            answered = [r["hosts"][-1] for r in nginx.access_log()[n:]]
            print(f"  link restored: h1 answered {answered.count(c.address('h1'))} of {len(answered)} calls")
            assert answered.count(c.address("h1")) > 0


def test_leftovers_of_a_dead_run_are_swept() -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    start = start_time(dead.pid)
    dead.wait()
    name = f"cg{dead.pid}_{start}_0-x"
    subprocess.run([IP, "netns", "add", name], check=True)
    sleeper = subprocess.Popen([IP, "netns", "exec", name, "sleep", "60"])
    try:
        time.sleep(0.2)
        assert pids_in(name) == [sleeper.pid]
        assert name in sweep(log=print)
        assert name not in namespaces()
        assert sleeper.wait(5) == -signal.SIGKILL
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        subprocess.run([IP, "netns", "del", name], capture_output=True, check=False)


def test_ctrl_c_and_errors_leave_nothing() -> None:
    """A run interrupted by SIGINT (Ctrl-C) while a host runs a program, and one whose body raises."""
    code = ("import time\nfrom loadtest.cluster import Cluster\n"
            "with Cluster(('a', 'b')) as c:\n"
            "    p = c.spawn('a', ['sleep', '60'])\n"
            "    print(c.net.prefix, p.pid, flush=True)\n"
            "    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=python_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)  # its KeyboardInterrupt's traceback
    assert proc.stdout is not None
    prefix, pid = proc.stdout.readline().split()
    sleeper = (int(pid), start_time(int(pid)))
    assert [n for n in namespaces() if n.startswith(prefix)]
    proc.send_signal(signal.SIGINT)
    proc.wait(30)
    assert not [n for n in namespaces() if n.startswith(prefix)]
    assert sleeper[1] is not None and not alive(sleeper[0], sleeper[1])

    with pytest.raises(RuntimeError, match="on purpose"):
        with Cluster(("a",)) as c:
            c.spawn("a", ["sleep", "60"])
            raise RuntimeError("on purpose")
    assert c.report is not None and c.report.live_processes == [] and c.report.leftover_namespaces == []
    assert not [n for n in namespaces() if n.startswith(c.net.prefix)]


def test_nginx_template_renders_one_server_line_per_host() -> None:
    text = render_nginx(["10.0.0.3:50051", "10.0.0.4:50051"], "10.0.0.2:50051")
    assert "@" not in text.replace("@SERVER@", "")  # no placeholder left
    servers = [line.split()[1] for line in text.splitlines() if line.strip().startswith("server ") and "{" not in line]
    assert servers == ["10.0.0.3:50051", "10.0.0.4:50051"] * 3   # decisions' upstream, then events' and backups
    backups = [line.split()[1] for line in text.splitlines()
               if line.strip().startswith("server ") and " backup " in line]
    assert backups == ["10.0.0.3:50051", "10.0.0.4:50051"]
    assert "listen 10.0.0.2:50051 http2;" in text and "grpc_pass grpc://callgate;" in text
    assert "grpc_pass grpc://callgate_events;" in text


def test_failover_figures() -> None:
    calls: list[list[Any]] = [[t / 100, t / 100 + 0.002, "OK"] for t in range(0, 300)]
    calls[150][2] = calls[151][2] = "UNAVAILABLE"
    f = failover_figures(calls, 1.5)
    assert (f["errors"], f["errors_after"], f["failover_s"], f["steady_s"]) == (2, 2, 0.012, 0.02)
    assert (f["slow"], f["disturbed_s"]) == (0, 0.012)
    calls[160][1] = 1.6 + 0.5  # a slow success after the errors
    f = failover_figures(calls, 1.5)
    assert (f["slow"], f["disturbed_s"], f["max_latency_ms"]) == (1, 0.6, 500.0)
    assert json.dumps(f)
