"""A load run against a server of yours leaves no trace there (loadtest/tenants.py): its tenants are named for
the run, a name that exists already stops it (exit 2), and what it made is removed at the end, after an
interruption too, unless --keep; the server it starts itself goes with its temporary directory."""

from __future__ import annotations

import json
import re
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc
from loadtest import harness
from server.client import with_token

from .serving import Server, example_doc, seed_tokens

# small and bounded: 2 tenants, 600 planned requests, at most 1.3 s of load and 2,000 calls a run
SMALL = ["--tenants", "2", "--numbers", "20", "--blacklist", "500", "--offhours-blacklist", "100", "--users", "6",
         "--requests", "600", "--warmup", "0.3", "--duration", "1", "--open-loop", "200", "--max-requests", "2000"]


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("trace") / "data"
    tokens = seed_tokens(data)
    srv = Server(data, "--auth", "tokens", seed=None)
    try:
        yield {"server": srv, "address": srv.address, "db": data / "callgate.sqlite", "tokens": tokens,
               "admin": admin_pb2_grpc.AdminStub(with_token(srv.channel(), tokens["owner"]))}
    finally:
        srv.stop()


def tenants_in_store(db: Path) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        current = {r[0] for r in conn.execute('SELECT tenant FROM "current"')}
        owners = {r[0] for r in conn.execute("SELECT DISTINCT tenant FROM number_owners")}
        accounts = {r[0] for r in conn.execute("SELECT tenant FROM accounts")}
    finally:
        conn.close()
    return current | owners | accounts


def loadtest(target: dict[str, Any], capsys: pytest.CaptureFixture[str], *extra: str,
             token: str = "owner") -> tuple[int, str, str]:
    code = harness.main([*SMALL, "--target", target["address"], "--token", target["tokens"][token], *extra])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_tenants(err: str) -> list[str]:
    found = re.search(r"tenants of this run on \S+: (.+) \((?:removed|kept)", err)
    assert found, err
    return found.group(1).split(", ")


def exists(target: dict[str, Any], tenant: str) -> bool:
    try:
        target["admin"].GetSettings(admin_pb2.GetSettingsRequest(tenant=tenant), timeout=10)
        return True
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND
        return False


def test_a_run_leaves_no_tenant_behind(target: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    before = tenants_in_store(target["db"])
    code, out, err = loadtest(target, capsys)
    assert code == 0, out + err
    assert "wrong answers: 0 of" in out                         # the run itself checked every answer
    made = run_tenants(err)
    assert len(made) == 2 and all(re.fullmatch(r"lt-[0-9a-f]{8}-t[01]", t) for t in made), made
    assert "removed the 2 tenant(s) this run made" in err
    assert tenants_in_store(target["db"]) == before
    assert not any(exists(target, t) for t in made)
    code, _, err = loadtest(target, capsys)                      # the next run has names of its own
    assert code == 0 and set(run_tenants(err)).isdisjoint(made)


def test_keep_keeps_them_and_says_how_to_remove_them(target: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from server.cli.main import main

    code, out, err = loadtest(target, capsys, "--keep")
    assert code == 0, out + err
    made = run_tenants(err)
    assert all(exists(target, t) for t in made)
    commands = re.findall(r"^  (callgate tenant remove .+)$", err, re.M)
    assert len(commands) == 2, err
    monkeypatch.setenv("CALLGATE_TOKEN", target["tokens"]["owner"])
    for command in commands:                                     # the printed commands work as printed
        assert main(command.split()[1:]) == 0, capsys.readouterr().err
    assert not any(exists(target, t) for t in made)


def test_a_tenant_that_exists_is_refused_unless_reused(target: dict[str, Any],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    doc = example_doc("clash-t0", 650)
    first = target["admin"].PushSettings(admin_pb2.PushSettingsRequest(document=json.dumps(doc).encode()),
                                         timeout=60).version
    code, out, err = loadtest(target, capsys, "--prefix", "clash-")
    assert code == 2
    lines = [line for line in err.splitlines() if line.startswith("loadtest: error:")]
    assert lines == ["loadtest: error: tenant 'clash-t0' already exists on " + target["address"] + ": nothing was "
                     "pushed; give another --prefix, or --reuse-tenants to run on the tenants that are there "
                     "(pushed over, never removed)"]
    assert not exists(target, "clash-t1")                       # nothing was made
    assert target["admin"].GetSettings(admin_pb2.GetSettingsRequest(tenant="clash-t0"), timeout=10).version == first
    # told to, it runs on the one that is there (and leaves it), and removes the one it made
    code, out, err = loadtest(target, capsys, "--prefix", "clash-", "--reuse-tenants")
    assert code == 0, out + err
    assert exists(target, "clash-t0") and not exists(target, "clash-t1")
    assert "removed the 1 tenant(s) this run made" in err
    # it now holds the world's numbers (the same seed, the same numbers): the next run would be refused them
    code, _, err = loadtest(target, capsys)
    assert code == 2 and "belongs to another tenant" in err and "another --seed" in err
    target["admin"].RemoveTenant(admin_pb2.RemoveTenantRequest(tenant="clash-t0", confirm="clash-t0", force=True),
                                 timeout=30)


def test_a_token_that_may_not_remove_is_refused_before_anything_is_made(
        target: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    before = tenants_in_store(target["db"])
    code, _, err = loadtest(target, capsys, token="operator")     # an operator may create tenants, not remove them
    assert code == 2 and "this token may not remove tenants" in err and "--keep" in err
    assert tenants_in_store(target["db"]) == before


def test_an_interrupted_run_removes_what_it_made(target: dict[str, Any], capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = tenants_in_store(target["db"])

    def interrupted(*args: Any, **kwargs: Any) -> None:          # Ctrl-C once the world is pushed
        raise KeyboardInterrupt

    monkeypatch.setattr(harness, "wait_until_right", interrupted)
    code, _, err = loadtest(target, capsys)
    assert code == 130 and "interrupted" in err
    assert "removed the 2 tenant(s) this run made" in err
    assert tenants_in_store(target["db"]) == before


def test_its_own_server_goes_with_its_temporary_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    code = harness.main([*SMALL, "--duration", "0.5"])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    assert "data in " + str(scratch) in printed.err               # it was there
    assert list(scratch.iterdir()) == []                           # and is gone


def test_a_lifecycle_run_leaves_no_tenant_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    srv = Server(tmp_path / "data", seed=None)          # whole calls take no token: a server without --auth
    try:
        code = harness.main(["--rpc", "lifecycle", "--closed-loop", "4", "--duration", "1", "--warmup", "0",
                             "--max-requests", "100", "--target", srv.address])
        printed = capsys.readouterr()
        assert code == 0, printed.out + printed.err
        assert "verification: PASS" in printed.out
        found = re.search(r"tenant of this run on \S+: (lt-[0-9a-f]{8}-lifecycle) \(removed at the end\)", printed.err)
        assert found, printed.err
        assert "removed the 1 tenant(s) this run made" in printed.err
        assert tenants_in_store(srv.store_path) == set()
    finally:
        srv.stop()
