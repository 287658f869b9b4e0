"""The one grammar of the `callgate` command: global options anywhere on the line, the tenant always --tenant
(with $CALLGATE_TENANT), the older plain-tenant forms deprecated but working, help and an example for every
command and argument, --json for scripts."""

from __future__ import annotations

import argparse
import json
from typing import Any

import pytest

from server.cli.grammar import EXAMPLES, LOCAL_COMMANDS, TENANT_ENV, commands
from server.cli.main import build_parser, main

from .serving import Server

TUESDAY_1030_LA = "2026-12-01T10:30:00-08:00"
GLOBALS = ["--server", "10.1.2.3:6000", "--timeout", "7", "--token", "T0K", "--tls-ca", "ca.pem",
           "--tls-cert", "c.pem", "--tls-key", "k.pem", "--json"]

# the smallest valid line of every command that talks to a server
LINES: dict[str, list[str]] = {
    "settings push": ["settings", "push", "doc.json", "--expect-version", "1"],
    "settings show": ["settings", "show", "--tenant", "acme"],
    "settings history": ["settings", "history", "--tenant", "acme"],
    "settings rollback": ["settings", "rollback", "2", "--tenant", "acme"],
    "blacklist add": ["blacklist", "add", "+14155550666", "--tenant", "acme"],
    "blacklist remove": ["blacklist", "remove", "+14155550666", "--tenant", "acme", "--offhours"],
    "blacklist import": ["blacklist", "import", "spam.csv", "--tenant", "acme"],
    "decide inbound": ["decide", "inbound", "--tenant", "acme", "--caller", "+1", "--called", "+2"],
    "decide outbound": ["decide", "outbound", "--tenant", "acme", "--user", "u3", "--destination", "+44"],
    "decide pickup": ["decide", "pickup", "--tenant", "acme", "--user", "u2", "--dialed", "*8"],
    "stats": ["stats"],
    "billing balance": ["billing", "balance", "--tenant", "acme"],
    "billing ledger": ["billing", "ledger", "--tenant", "acme", "--limit", "5"],
    "billing topup": ["billing", "topup", "1.00", "--tenant", "acme", "--reference", "r"],
    "billing card": ["billing", "card", "--tenant", "acme"],
    "documents upload": ["documents", "upload", "+14155550100", "a.png", "--tenant", "acme"],
    "documents list": ["documents", "list"],
    "documents approve": ["documents", "approve", "7"],
    "documents reject": ["documents", "reject", "7", "--reason", "blurred"],
    "export failover": ["export", "failover"],
    "calls active": ["calls", "active", "--tenant", "acme"],
    "calls pickup": ["calls", "pickup", "--tenant", "acme", "--user", "u2", "--dialed", "*8"],
    "tokens create": ["tokens", "create", "--role", "proxy"],
    "tokens list": ["tokens", "list"],
    "tokens revoke": ["tokens", "revoke", "abc"],
    "audit": ["audit", "--since", "2h"],
    "numbers owner": ["numbers", "owner", "+14155550100"],
    "numbers transfer": ["numbers", "transfer", "+14155550100", "--from", "acme", "--to", "beta"],
    "numbers conflicts": ["numbers", "conflicts", "--data-dir", "d"],
    "numbers resolve": ["numbers", "resolve", "+14155550100", "--owner", "acme", "--data-dir", "d"],
    "store check": ["store", "check", "--data-dir", "d"],
    "tenant remove": ["tenant", "remove", "--tenant", "acme", "--confirm", "acme", "--force"],
    "replica": ["replica", "--dir", "/var/lib/callgate/replica", "--tenant-policy", "acme=fail-closed"],
    "replicas": ["replicas", "--tenant", "acme"],
    "grpc list": ["grpc", "list"],
    "grpc describe": ["grpc", "describe", "callgate.v1.Decisions"],
    "grpc health": ["grpc", "health"],
}


def parsed(argv: list[str]) -> dict[str, Any]:
    return vars(build_parser().parse_args(argv))


def test_every_command_and_argument_has_help_and_an_example() -> None:
    parser = build_parser()
    missing: list[str] = []

    def walk(p: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    if not choice.help:
                        missing.append(f"{' '.join(path)} {choice.dest}: no help")
                for name, sub in action.choices.items():
                    walk(sub, (*path, name))
            elif not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{' '.join(path)} {action.option_strings or action.dest}: no help")

    walk(parser, ())
    for path, leaf in commands(parser):
        if " ".join(path) not in EXAMPLES or "example: callgate " not in (leaf.epilog or ""):
            missing.append(f"{' '.join(path)}: no example")
    assert missing == []


def test_every_server_command_is_in_this_table() -> None:
    names = {" ".join(path) for path, _ in commands(build_parser()) if path[0] not in LOCAL_COMMANDS}
    assert names == set(LINES)


@pytest.mark.parametrize("name", sorted(LINES))
def test_global_options_after_the_command_mean_the_same(name: str) -> None:
    line = LINES[name]
    before, after = parsed([*GLOBALS, *line]), parsed([*line, *GLOBALS])
    assert before == after
    assert before["server"] == "10.1.2.3:6000" and before["timeout"] == 7 and before["json"] is True
    # given on both sides, the one after the command is the one that counts
    assert parsed(["--server", "a:1", *line, "--server", "b:2"])["server"] == "b:2"
    # not given after it, what came before stands
    assert parsed(["--timeout", "3", *line])["timeout"] == 3


def test_the_tenant_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TENANT_ENV, "beta")
    assert parsed(["settings", "history"])["tenant"] == "beta"
    assert parsed(["settings", "history", "--tenant", "acme"])["tenant"] == "acme"
    stats = dict(commands(build_parser()))[("stats",)]
    assert "now 'beta'" in stats.format_help()


def test_without_a_tenant_the_error_says_how_to_give_one(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv(TENANT_ENV, raising=False)
    assert main(["settings", "history"]) == 2
    assert "--tenant" in capsys.readouterr().err
    assert main(["billing", "balance"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("callgate: error: ") and f"--tenant is required (or set ${TENANT_ENV})" in err


# -- through a real server ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = Server(tmp_path_factory.mktemp("grammar"), "--seed-credit", "10.00")
    yield srv
    srv.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


READS = [
    ["decide", "inbound", "--tenant", "acme", "--caller", "+14155550666", "--called", "+14155550199",
     "--at", TUESDAY_1030_LA],
    ["decide", "outbound", "--tenant", "acme", "--user", "u3", "--destination", "02071112222", "--at",
     TUESDAY_1030_LA],
    ["settings", "history", "--tenant", "acme"],
    ["settings", "show", "--tenant", "acme"],
    ["billing", "balance", "--tenant", "acme"],
    ["billing", "ledger", "--tenant", "acme"],
    ["calls", "active", "--tenant", "acme"],
    ["documents", "list"],
    ["numbers", "owner", "+14155550199"],
]


@pytest.mark.parametrize("line", READS, ids=lambda line: " ".join(line[:2]))
def test_a_server_answers_the_same_whichever_side_the_options_are_on(server: Server, capsys: Any,
                                                                     line: list[str]) -> None:
    for extra in ([], ["--json"]):
        first = run(capsys, "--server", server.address, *extra, *line)
        second = run(capsys, *line, "--server", server.address, *extra)
        assert first[0] == 0 and first == second, (first, second)
        if extra:
            json.loads(first[1])  # one JSON object


def test_json_answers_for_scripts(server: Server, capsys: Any) -> None:
    code, out, _ = run(capsys, "decide", "inbound", "--tenant", "acme", "--caller", "+14155550666", "--called",
                       "+14155550199", "--at", TUESDAY_1030_LA, "--server", server.address, "--json")
    d = json.loads(out)
    assert code == 0 and (d["verdict"], d["reason"], d["sip_status"]) == ("REJECT", "BLACKLISTED", 603)
    code, out, _ = run(capsys, "billing", "balance", "--tenant", "acme", "--server", server.address, "--json")
    balance = json.loads(out)
    assert code == 0 and (balance["tenant"], balance["balance"], balance["currency"]) == ("acme", "10.00", "USD")
    code, out, _ = run(capsys, "settings", "show", "--tenant", "acme", "--server", server.address, "--json")
    record = json.loads(out)
    assert (record["tenant"], record["version"], record["document"]["tenant"]) == ("acme", 1, "acme")
    code, out, _ = run(capsys, "settings", "history", "--tenant", "acme", "--server", server.address, "--json")
    assert [v["version"] for v in json.loads(out)["versions"]] == [1]  # int64 as a number, not a string


def test_the_older_plain_tenant_forms_still_work_with_a_note(server: Server, capsys: Any) -> None:
    for words in (["billing", "balance"], ["billing", "ledger"], ["billing", "card"], ["calls", "active"]):
        new = run(capsys, "--server", server.address, *words, "--tenant", "acme")
        old = run(capsys, "--server", server.address, *words, "acme")
        assert new[0] == old[0] == 0 and new[1] == old[1]
        assert f"`{' '.join(words)} TENANT` is deprecated" in old[2] and "--tenant acme" in old[2]
    code, out, err = run(capsys, "--server", server.address, "billing", "topup", "acme", "0.50", "--reference",
                         "grammar-old-form")
    assert code == 0 and "0.50 USD credited" in out and "deprecated" in err
    code, out, _ = run(capsys, "--server", server.address, "billing", "topup", "0.50", "--tenant", "acme",
                       "--reference", "grammar-old-form")
    assert code == 0 and "already credited before" in out                  # the same payment, the new form
    code, _, err = run(capsys, "--server", server.address, "billing", "balance", "acme", "--tenant", "beta")
    assert code == 2 and "two tenants given: 'acme' and --tenant 'beta'" in err


def test_the_tenant_from_the_environment_reaches_the_server(server: Server, capsys: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TENANT_ENV, "acme")
    code, out, _ = run(capsys, "billing", "balance", "--server", server.address)
    assert code == 0 and out.startswith("tenant 'acme': balance ")
    code, out, _ = run(capsys, "decide", "inbound", "--caller", "+14155550666", "--called", "+14155550199",
                       "--at", TUESDAY_1030_LA, "--server", server.address)
    assert code == 0 and out.startswith("REJECT (BLACKLISTED, SIP 603)")
