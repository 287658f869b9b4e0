"""The Grafana dashboard and the Prometheus alert rules in integrations/ hold against a real server: promtool
checks and unit-tests the rules, checks the dashboard's PromQL, and a running server (two workers, a day's worth
of events, a failing disk) exports every metric either of them reads, with the values the day should give."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from callgate.v1 import admin_pb2, admin_pb2_grpc, decisions_pb2, decisions_pb2_grpc
from loadtest.process import free_port

from .disks import fill, small_disk
from .serving import EXAMPLE, ROOT, Server, wait_for

DASHBOARD = ROOT / "integrations" / "grafana" / "callgate-dashboard.json"
RULES = ROOT / "integrations" / "prometheus" / "callgate-alerts.yml"
RULE_TESTS = ROOT / "integrations" / "prometheus" / "callgate-alerts.test.yml"
EV = decisions_pb2.CallEventRequest
TUESDAY_1030_LA = 1_700_580_600   # acme's office hours
NOT_OURS = {"up"}                 # Prometheus's own series


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: install Debian's prometheus package (.ci/run does)"
    return subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)


def dashboard_queries() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]


def rule_queries() -> list[str]:
    # the rules file is YAML; each expression is one `expr:` (a plain line or a `|` block)
    text, found = RULES.read_text(), []
    for match in re.finditer(r"^(\s*)expr: (\|\n((?:\1  .*\n)+)|.*)$", text, re.M):
        found.append(match.group(3) if match.group(3) else match.group(2))
    return found


def names_in(query: str) -> set[str]:
    """Metric names a PromQL query reads (label names and values, functions and keywords are not)."""
    query = re.sub(r'\{[^}]*\}', "", query)       # label matchers
    query = re.sub(r"\b(by|without)\s*\([^)]*\)", "", query)
    return {m for m in re.findall(r"\b[a-z_][a-z0-9_]*\b", query)
            if m.startswith("callgate_") or m in NOT_OURS}


def test_the_alert_rules_pass_promtool_check_and_their_unit_tests() -> None:
    checked = promtool("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 12 rules found" in checked.stdout
    tested = promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    queries = dashboard_queries()
    assert len(queries) >= 25
    doc = json.loads(DASHBOARD.read_text())
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids)) and doc["uid"] == "callgate-overview"
    for panel in doc["panels"]:
        if panel["type"] != "row":
            assert panel["title"] and panel["description"] and panel["targets"], panel["title"]
    # promtool parses a rules file: each query as a recording rule, Grafana's interval given its value
    lines = ["groups:", "  - name: dashboard", "    rules:"]
    for i, query in enumerate(queries):
        expr = json.dumps(query.replace("$__rate_interval", "2m"))
        lines += [f"      - record: dashboard:query_{i}", f"        expr: {expr}"]
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("\n".join(lines) + "\n")
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_name_reader_finds_names_not_labels() -> None:
    assert names_in('sum by (kind) (rate(callgate_store_errors_total{kind!="busy"}[5m])) > 0') == {
        "callgate_store_errors_total"}
    assert names_in("callgate_workers < callgate_workers_wanted") == {"callgate_workers", "callgate_workers_wanted"}
    assert len(rule_queries()) == 12


def scrape(address: str) -> dict[str, float]:
    """sample name (with its labels) -> value, summed over label sets for the bare name too."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}"] = sample.value
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


def a_day(server: Server, disk: Path) -> None:
    """Decisions, refusals, a call, a pickup, pushes (a bad one), a declined top-up and a full disk."""
    channel = server.channel()
    decide, admin = decisions_pb2_grpc.DecisionsStub(channel), admin_pb2_grpc.AdminStub(channel)
    for _ in range(20):
        decide.Inbound(decisions_pb2.InboundRequest(tenant="acme", caller="+14155550666", called="+14155550199",
                                                    at=TUESDAY_1030_LA), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        decide.Inbound(decisions_pb2.InboundRequest(tenant="nobody", caller="+1", called="+2"), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    # a card the sandbox declines, and a call whose credit hold takes the balance below the auto top-up
    # threshold (the next rental renewal, at most 5.00): a top-up opens and is declined
    admin.Card(admin_pb2.CardRequest(tenant="acme", number="4000000000000002", exp_month=12, exp_year=2040),
               timeout=10)
    admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="5.10", reference="opening"), timeout=10)
    now = int(time.time())
    for kind, at, user in ((EV.RINGING, now - 70, "u3"), (EV.ANSWERED, now - 65, "u3"), (EV.ENDED, now, "")):
        decide.CallEvent(EV(tenant="acme", call_id="day-1", kind=kind, user=user, at=at, direction="outbound",
                            called="+12125550100"), timeout=10)
    with pytest.raises(grpc.RpcError):
        decide.CallEvent(EV(tenant="acme", kind=EV.ENDED), timeout=10)   # no call id
    decide.Pickup(decisions_pb2.PickupRequest(tenant="acme", user="u2", dialed="*8", dry_run=True), timeout=10)
    with pytest.raises(grpc.RpcError) as err:
        admin.PushSettings(admin_pb2.PushSettingsRequest(document=b'{"tenant": "acme"}',
                                                         format="json"), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    doc = json.loads(EXAMPLE.read_text())
    doc["blacklist"] = [*doc.get("blacklist", []), "+12125550999"]
    admin.PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode(),
                                                     format="json"), timeout=30)
    wait_for(lambda: server.events("topup"), timeout=20)
    filler = fill(disk)
    with pytest.raises(grpc.RpcError) as err:
        admin.Credit(admin_pb2.CreditRequest(tenant="acme", amount="1.00", reference="full"), timeout=30)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    filler.unlink()
    channel.close()


def test_a_running_server_exports_every_metric_the_dashboard_and_the_alerts_read(tmp_path: Path) -> None:
    used = set().union(*(names_in(q) for q in dashboard_queries() + rule_queries())) - NOT_OURS
    assert len(used) >= 25
    with small_disk(tmp_path, "16m") as disk:
        metrics = f"127.0.0.1:{free_port()}"
        server = Server(disk / "data", workers=2, metrics=metrics)
        try:
            a_day(server, disk)

            def settled() -> dict[str, float] | None:
                found = scrape(metrics)   # workers hand their counts over on their next tick
                done = (found.get("callgate_decisions_total", 0) >= 20 and
                        found.get("callgate_topup_attempts_total", 0) >= 1)
                return found if done else None

            found: dict[str, Any] = wait_for(settled, timeout=20)
        finally:
            server.stop()
    missing = {name for name in used if name not in found}
    assert not missing, f"the dashboard or the alerts read metrics the server does not export: {sorted(missing)}"
    # and they count what happened
    assert found['callgate_decisions_total{reason=BLACKLISTED,verdict=REJECT}'] == 20
    assert found['callgate_decision_seconds_count{rpc=inbound}'] >= 20
    assert found['callgate_rpc_errors_total{code=NOT_FOUND,rpc=inbound}'] == 1
    assert found['callgate_rpc_errors_total{code=INVALID_ARGUMENT,rpc=push_settings}'] == 1
    assert found['callgate_rpc_errors_total{code=UNAVAILABLE,rpc=credit}'] == 1
    for kind in ("RINGING", "ANSWERED", "ENDED"):
        assert found[f'callgate_call_events_total{{kind={kind},result=recorded}}'] == 1
        assert found[f'callgate_call_event_seconds_count{{kind={kind}}}'] == 1
    assert found['callgate_call_events_total{kind=ENDED,result=INVALID_ARGUMENT}'] == 1
    assert found['callgate_calls_ended_total{outcome=answered}'] == 1
    assert found['callgate_pickups_total{result=none}'] == 1
    assert found['callgate_compile_failures_total{reason=invalid}'] == 1
    assert found['callgate_compile_seconds_count'] >= 1
    assert found['callgate_push_seconds_count'] >= 1
    assert found['callgate_topup_attempts_total{attempt=first,result=declined}'] == 1
    assert found['callgate_ledger_writes_total{kind=credit}'] == 1
    assert found['callgate_ledger_writes_total{kind=call}'] == 1
    assert found['callgate_store_errors_total'] >= 1
    assert found['callgate_workers'] == found['callgate_workers_wanted'] == 2
    assert found['callgate_worker_restarts_total'] == 0
    assert found['callgate_store_tenants'] == found['callgate_tenants'] == 1
    assert found['callgate_tenant_version{tenant=acme}'] == 2
    assert found['callgate_tenant_snapshot_bytes{tenant=acme}'] == found['callgate_store_snapshot_bytes'] > 0
    assert found['callgate_versions_behind'] == 0 and found['callgate_store_scrape_ok'] == 1
