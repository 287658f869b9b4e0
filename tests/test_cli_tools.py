"""`callgate grpc list|describe|health`: the stock gRPC clients (reflection, health checking) against a real
server, through the command's own channel."""

from __future__ import annotations

import json
from typing import Any

from server.cli.main import main


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_list_shows_every_service(server: Any, capsys: Any) -> None:
    code, out, _ = run(capsys, "grpc", "list", "--server", server.address)
    assert code == 0
    assert {"callgate.v1.Decisions", "callgate.v1.Admin", "grpc.health.v1.Health"} <= set(out.split())
    code, out, _ = run(capsys, "grpc", "list", "--server", server.address, "--json")
    assert code == 0 and "callgate.v1.Decisions" in json.loads(out)["services"]


def test_describe_a_service_and_a_method(server: Any, capsys: Any) -> None:
    code, out, _ = run(capsys, "grpc", "describe", "callgate.v1.Decisions", "--server", server.address)
    assert code == 0 and out.startswith("service callgate.v1.Decisions")
    assert "rpc Inbound(callgate.v1.InboundRequest) returns (callgate.v1.Decision)" in out
    assert "rpc Stream(stream callgate.v1.StreamRequest) returns (stream callgate.v1.StreamReply)" in out
    code, out, _ = run(capsys, "grpc", "describe", "callgate.v1.Decisions.Pickup", "--server", server.address)
    assert code == 0 and "request fields: tenant, user, dialed, explain, at, dry_run" in out
    code, _, err = run(capsys, "grpc", "describe", "callgate.v1.Nothing", "--server", server.address)
    assert code == 2 and "is not a service or method of callgate" in err


def test_health_of_the_server_and_its_store(server: Any, capsys: Any) -> None:
    for service in ("", "callgate.v1.Decisions", "callgate.v1.Store"):
        code, out, _ = run(capsys, "grpc", "health", service, "--server", server.address)
        assert code == 0 and out.strip().endswith(": SERVING")
    code, _, err = run(capsys, "grpc", "health", "no.such.Service", "--server", server.address)
    assert code == 2 and "NOT_FOUND" in err
