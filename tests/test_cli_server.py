"""The admin and decide commands against a real server."""

from __future__ import annotations

import copy
import json

import pytest

from server.app import free_port
from server.cli import main

from .serving import EXAMPLE, Server

DOC = json.loads(EXAMPLE.read_text())
TUESDAY_1030_LA = "2026-12-01T10:30:00-08:00"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("cli"), "--seed-credit", "10.00")
    yield srv
    srv.stop()


def run(server, capsys, *argv):
    code = main(["--server", server.address, *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_decide_prints_the_decision_in_words(server, capsys):
    code, out, _ = run(server, capsys, "decide", "inbound", "--tenant", "acme", "--caller", "+14155550666",
                       "--called", "+14155550199", "--at", TUESDAY_1030_LA)
    assert code == 0
    assert out.splitlines()[0] == "REJECT (BLACKLISTED, SIP 603)"
    assert "rule: the caller is on the tenant's blacklist" in out
    code, out, _ = run(server, capsys, "decide", "outbound", "--tenant", "acme", "--user", "u3",
                       "--destination", "02071112222", "--at", TUESDAY_1030_LA)
    assert code == 0 and out.startswith("ALLOW (OK)")
    assert "present +442071234567, line rent-1, 0.0350 per minute billed per 1 s, at most 17142 s" in out
    code, out, _ = run(server, capsys, "decide", "pickup", "--tenant", "acme", "--user", "u1", "--dialed", "*8")
    assert code == 0 and out.startswith("NO_PICKUP (NO_RINGING_CALL)")


@pytest.mark.parametrize("argv, message", [
    (["decide", "inbound", "--tenant", "nobody", "--caller", "1", "--called", "2"],
     "callgate: error: NOT_FOUND: tenant 'nobody' has no settings"),
    (["decide", "inbound", "--tenant", "acme", "--caller", "abc", "--called", "+14155550199"],
     "callgate: error: INVALID_ARGUMENT: INVALID_CALLER"),
    (["decide", "inbound", "--tenant", "acme", "--caller", "1", "--called", "2", "--at", "2026-12-01T10:30"],
     "callgate: error: --at '2026-12-01T10:30' has no time zone"),
    (["settings", "history", "--tenant", "nobody"], "callgate: error: NOT_FOUND:"),
    (["settings", "rollback", "999", "--tenant", "acme"], "callgate: error: NOT_FOUND:"),
])
def test_errors_are_one_line_and_exit_2(server, capsys, argv, message):
    code, _, err = run(server, capsys, *argv)
    assert code == 2
    assert err.startswith(message)
    assert len(err.strip().splitlines()) == 1


def test_unreachable_server_says_what_to_do(capsys):
    code = main(["--server", f"127.0.0.1:{free_port()}", "--timeout", "3", "stats"])
    err = capsys.readouterr().err
    assert code == 2 and "is `callgate serve` running there?" in err


def test_settings_push_show_history_rollback(server, capsys, tmp_path):
    doc = copy.deepcopy(DOC)
    doc["block_anonymous"] = True
    path = tmp_path / "acme.json"
    path.write_text(json.dumps(doc))
    code, out, _ = run(server, capsys, "settings", "push", str(path), "--comment", "block anonymous")
    assert code == 0 and "is at version" in out
    version = int(out.split("version ")[1].split()[0])
    code, _, err = run(server, capsys, "settings", "push", str(path), "--expect-version", str(version - 1))
    assert code == 2 and "FAILED_PRECONDITION" in err
    code, out, _ = run(server, capsys, "settings", "show", "--tenant", "acme")
    assert code == 0 and json.loads(out)["block_anonymous"] is True
    code, out, _ = run(server, capsys, "settings", "history", "--tenant", "acme")
    assert code == 0 and f"{version} *push" in out and "block anonymous" in out
    code, out, _ = run(server, capsys, "settings", "rollback", "1", "--tenant", "acme")
    assert code == 0 and f"version {version + 1}: the settings of version 1" in out
    bad = copy.deepcopy(DOC)
    bad["pickup_code"] = "88"
    path.write_text(json.dumps(bad))
    code, _, err = run(server, capsys, "settings", "push", str(path))
    assert code == 2 and "pickup_code: '88' must start with * or #" in err


def test_blacklist_add_remove_import(server, capsys, tmp_path):
    code, out, _ = run(server, capsys, "blacklist", "add", "--tenant", "acme", "+14155553333", "+14155553334")
    assert code == 0 and "2 added, 0 removed" in out
    code, out, _ = run(server, capsys, "blacklist", "remove", "--tenant", "acme", "+14155553333")
    assert code == 0 and "0 added, 1 removed" in out
    csv_file = tmp_path / "spam.csv"
    csv_file.write_text("number,comment\n+14155554000,robocall\n# a comment\n\n+14155554001,x\n+14155553334,again\n")
    code, out, err = run(server, capsys, "blacklist", "import", str(csv_file), "--tenant", "acme", "--offhours")
    assert code == 0 and "imported 3 numbers into the off-hours blacklist of 'acme': 3 new" in out
    assert "3 / 3 sent" in err
    code, _, err = run(server, capsys, "blacklist", "add", "--tenant", "acme", "12")
    assert code == 2 and "INVALID_ARGUMENT" in err and "add[0]" in err


def test_stats_lists_tenants(server, capsys):
    code, out, _ = run(server, capsys, "stats")
    assert code == 0 and "acme" in out and "worker pid" in out
