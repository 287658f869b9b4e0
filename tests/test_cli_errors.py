"""Errors that point the right way: each way of failing to reach callgate gets its own one line saying what to
change (TLS against plaintext and back, a wrong CA, an unknown host, nothing listening, a missing or refused
token), through real servers on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtest.process import free_port
from server.cli.main import main
from server.tls import make_dev_ca

from .serving import Server


@pytest.fixture(scope="module")
def cas(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cas")
    make_dev_ca(root / "right")
    make_dev_ca(root / "other")
    return {"right": root / "right", "other": root / "other"}


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, cas: dict[str, Path]) -> Any:
    srv = Server(tmp_path_factory.mktemp("tls"), "--tls-cert", str(cas["right"] / "server.pem"),
                 "--tls-key", str(cas["right"] / "server.key"))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    srv = Server(tmp_path_factory.mktemp("plain"))
    yield srv
    srv.stop()


def error_of(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    assert main([*argv, "--timeout", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("callgate: error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_plaintext_against_a_tls_server_says_give_the_ca(tls_server: Server, cas: dict[str, Path],
                                                         capsys: Any) -> None:
    err = error_of(capsys, "stats", "--server", tls_server.address)
    assert f"callgate at {tls_server.address} closed the connection at once: it probably serves TLS" in err
    assert "give --tls-ca" in err and "is `callgate serve` running" not in err
    assert main(["stats", "--server", tls_server.address, "--tls-ca", str(cas["right"] / "ca.pem")]) == 0


def test_tls_against_a_plaintext_server_says_leave_it_out(plain_server: Server, cas: dict[str, Path],
                                                           capsys: Any) -> None:
    err = error_of(capsys, "stats", "--server", plain_server.address, "--tls-ca", str(cas["right"] / "ca.pem"))
    assert f"callgate at {plain_server.address} does not speak TLS: leave out --tls-ca" in err
    # and the server wrote no raw line of grpc's own about the handshake (its log is JSON, or nothing)
    assert not [r for r in plain_server.logs if "WRONG_VERSION_NUMBER" in str(r.get("msg", ""))]


def test_a_wrong_ca_says_which_ca_to_give(tls_server: Server, cas: dict[str, Path], capsys: Any) -> None:
    other = cas["other"] / "ca.pem"
    err = error_of(capsys, "stats", "--server", tls_server.address, "--tls-ca", str(other))
    assert f"has a TLS certificate that --tls-ca {other} did not sign" in err
    assert "give --tls-ca the CA that signed the server's certificate" in err


def test_an_unknown_host_says_check_the_server_option(capsys: Any) -> None:
    err = error_of(capsys, "stats", "--server", "no-such-host.invalid:50051")
    assert "cannot find the host 'no-such-host.invalid' of --server no-such-host.invalid:50051" in err


def test_nothing_listening_says_so(capsys: Any) -> None:
    address = f"127.0.0.1:{free_port()}"
    err = error_of(capsys, "stats", "--server", address)
    assert f"nothing listens at {address}: is `callgate serve` running there, on that port?" in err


def test_a_missing_or_refused_token_says_which(tmp_path: Path, capsys: Any) -> None:
    data = tmp_path / "data"
    assert main(["tokens", "create", "--role", "owner", "--data-dir", str(data)]) == 0
    token = capsys.readouterr().out.strip()
    srv = Server(data, "--auth", "tokens")
    try:
        err = error_of(capsys, "stats", "--server", srv.address)
        assert "UNAUTHENTICATED: callgate at" in err and "wants a token: give --token or set CALLGATE_TOKEN" in err
        err = error_of(capsys, "stats", "--server", srv.address, "--token", "cg_nothing_here")
        assert "refused the token" in err and "check --token or $CALLGATE_TOKEN" in err
        assert main(["stats", "--server", srv.address, "--token", token]) == 0
    finally:
        srv.stop()
