"""The admin and decide commands against a real server."""

from __future__ import annotations

import copy
import json

import pytest

from loadtest.process import free_port
from server.cli.main import main

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
    assert code == 2 and "nothing listens at 127.0.0.1:" in err and "is `callgate serve` running there" in err


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
    assert "in version" in err.splitlines()[-1]                      # the progress line's last state
    code, _, err = run(server, capsys, "blacklist", "add", "--tenant", "acme", "12")
    assert code == 2 and "INVALID_ARGUMENT" in err and "add[0]" in err


def test_blacklist_import_is_all_or_nothing(server, capsys, tmp_path):
    """A file with bad lines imports nothing and names every bad line by its CSV line number (a quoted field
    over two lines counts as two); a good file of any size is one new version."""
    import grpc

    from callgate.v1 import admin_pb2, admin_pb2_grpc

    admin = admin_pb2_grpc.AdminStub(grpc.insecure_channel(server.address))
    before = admin.ListVersions(admin_pb2.ListVersionsRequest(tenant="acme", limit=1), timeout=10).versions[0].version
    rows = [f"+4930{i:08d}" for i in range(600_000)]
    rows[550_000] = "0301234"
    rows[599_999] = "+49 30 1234"
    bad = tmp_path / "bad.csv"
    bad.write_text('number,note\n+4930555,"two\nlines"\n' + "\n".join(rows) + "\n")
    code, _, err = run(server, capsys, "blacklist", "import", str(bad), "--tenant", "acme")
    assert code == 2
    message = err.strip().splitlines()[-1]
    assert "3 bad line(s), nothing imported" in message
    assert "line 2: '+4930555' is not an E.164 number" in message            # the quoted field spans lines 2-3
    assert "line 550004: '0301234'" in message and "line 600003: '+49 30 1234'" in message
    after = admin.ListVersions(admin_pb2.ListVersionsRequest(tenant="acme", limit=1), timeout=10).versions[0].version
    assert after == before
    rows[550_000], rows[599_999] = "+493099999998", "+493099999999"
    good = tmp_path / "good.csv"
    good.write_text("\n".join(rows) + "\n")
    code, out, _ = run(server, capsys, "blacklist", "import", str(good), "--tenant", "acme")
    assert code == 0 and "imported 600,000 numbers" in out
    versions = admin.ListVersions(admin_pb2.ListVersionsRequest(tenant="acme", limit=5), timeout=10).versions
    assert versions[0].version == before + 1 and versions[1].version == before        # one version, not two
    assert "blacklist import good.csv: +600000" in versions[0].comment


def test_stats_lists_tenants(server, capsys):
    code, out, _ = run(server, capsys, "stats")
    assert code == 0 and "acme" in out and "worker pid" in out


def test_operator_commands(server, capsys, tmp_path):
    from PIL import Image

    code, out, _ = run(server, capsys, "billing", "balance", "--tenant", "acme")
    assert code == 0 and "balance 10.00 USD, reserved 0.00 by calls in progress, available 10.00" in out
    assert "auto top-up: 20.00 USD when the available credit falls below" in out
    code, out, _ = run(server, capsys, "billing", "topup", "--tenant", "acme", "5.50", "--reference", "wire-77")
    assert code == 0 and "balance 15.50 USD" in out
    code, out, _ = run(server, capsys, "billing", "topup", "--tenant", "acme", "5.50", "--reference", "wire-77")
    assert code == 0 and "already credited before" in out and "balance 15.50 USD" in out
    code, out, _ = run(server, capsys, "billing", "ledger", "--tenant", "acme")
    assert code == 0 and "credit" in out and "wire-77" in out and "15.50" in out
    code, out, _ = run(server, capsys, "billing", "card", "--tenant", "acme")
    assert code == 0 and "no card on file" in out
    code, out, _ = run(server, capsys, "billing", "card", "--tenant", "acme", "--set", "4242 4242 4242 4242",
                       "--expires", "12/2030")
    assert code == 0 and "visa ending 4242, expires 12/2030" in out

    scan = tmp_path / "id-card.png"
    Image.new("L", (800, 500), "white").save(scan)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    code, _, err = run(server, capsys, "documents", "upload", "+14155550100", str(text), "--tenant", "acme")
    assert code == 2 and err.startswith("callgate: error: INVALID_ARGUMENT: notes.png: not an image")
    code, out, _ = run(server, capsys, "documents", "upload", "+14155550100", str(scan), "--tenant", "acme")
    assert code == 0 and "pending" in out and "id-card.png  PNG 800x500" in out
    set_id = out.split()[1].rstrip(":")
    code, out, _ = run(server, capsys, "documents", "list", "--status", "pending")
    assert code == 0 and f"set {set_id}: acme +14155550100 pending" in out
    code, out, _ = run(server, capsys, "documents", "reject", set_id, "--reason", "too dark")
    assert code == 0 and "rejected (too dark)" in out
    code, _, err = run(server, capsys, "documents", "approve", set_id, "--reviewer", "ops-2")
    assert code == 2 and err.startswith(f"callgate: error: FAILED_PRECONDITION: document set {set_id} was already "
                                        "rejected (too dark) by operator at ")
    assert "uploads a new set to be reviewed again" in err
    code, out, _ = run(server, capsys, "documents", "upload", "+14155550100", str(scan), "--tenant", "acme")
    again = out.split()[1].rstrip(":")
    code, out, _ = run(server, capsys, "documents", "approve", again, "--reviewer", "ops-2")
    assert code == 0 and "approved" in out and "by ops-2" in out

    code, out, _ = run(server, capsys, "calls", "active", "--tenant", "acme")
    assert code == 0 and "(no calls)" in out
    code, _, err = run(server, capsys, "billing", "topup", "--tenant", "acme", "-3", "--reference", "x")
    assert code == 2 and "more than 0" in err
    code, _, err = run(server, capsys, "billing", "card", "--tenant", "acme", "--set", "4242", "--expires", "12/2030")
    assert code == 2 and err.startswith("callgate: error: INVALID_ARGUMENT:")


def test_billing_balance_shows_what_calls_in_progress_hold(tmp_path, capsys):
    """An outbound call to the US (0.02 per 60 s) holds 1.20 for an hour of talk (--reserve-max-s 3600)."""
    import time

    from .test_lifecycle import EV, US_DEST, Tenant, no_rentals

    doc = no_rentals(DOC)
    doc["auto_topup"] = {"enabled": False}
    t = Tenant(tmp_path, doc, "--reserve-max-s", "3600")
    try:
        t.credit("5.00", "opening")
        now = int(time.time())
        ringing = t.event(EV.RINGING, "o1", "u3", now - 10, direction="outbound", called=US_DEST)
        assert (ringing.max_duration_s, ringing.reserved) == (3600, "1.20")
        code, out, _ = run(t.server, capsys, "billing", "balance", "--tenant", "acme")
        assert code == 0
        assert "balance 5.00 USD, reserved 1.20 by calls in progress, available 3.80" in out
        assert "auto top-up: off" in out
        t.event(EV.ANSWERED, "o1", "u3", now - 9)
        t.event(EV.ENDED, "o1", at=now)                                  # 9 s: one increment, 0.02
        code, out, _ = run(t.server, capsys, "billing", "balance", "--tenant", "acme")
        assert code == 0 and "balance 4.98 USD, reserved 0.00 by calls in progress, available 4.98" in out
    finally:
        assert t.close() == 0


def test_decide_pickup_is_a_dry_run_and_calls_pickup_takes_the_call(server, capsys):
    import time

    from callgate.v1 import decisions_pb2, decisions_pb2_grpc

    with server.channel() as channel:
        stub = decisions_pb2_grpc.DecisionsStub(channel)
        stub.CallEvent(decisions_pb2.CallEventRequest(
            tenant="acme", call_id="pick-me", kind=decisions_pb2.CallEventRequest.RINGING, user="u1",
            at=int(time.time()) - 5, caller="+14155550123", called="+14155550199"), timeout=10)
    for _ in range(2):  # a dry run, twice: it changes nothing
        code, out, _ = run(server, capsys, "decide", "pickup", "--tenant", "acme", "--user", "u2", "--dialed", "*8")
        assert code == 0 and out.startswith("INTERCEPT (OK)") and "call pick-me" in out
        assert "a dry run: nothing was intercepted" in out
        code, out, _ = run(server, capsys, "calls", "active", "--tenant", "acme", "--state", "ringing")
        assert code == 0 and "pick-me" in out
    code, out, _ = run(server, capsys, "calls", "pickup", "--tenant", "acme", "--user", "u2", "--dialed", "*8")
    assert code == 0 and out.strip() == "call pick-me intercepted: answered by u2"
    code, out, _ = run(server, capsys, "calls", "active", "--tenant", "acme", "--state", "answered")
    assert code == 0 and "pick-me" in out and "u2" in out
    code, out, _ = run(server, capsys, "calls", "pickup", "--tenant", "acme", "--user", "u2", "--dialed", "*8")
    assert code == 0 and out.startswith("nothing intercepted (NO_RINGING_CALL)")
