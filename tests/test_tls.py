"""TLS and mutual TLS with the development CA, through real sockets."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from callgate.v1 import admin_pb2, admin_pb2_grpc
from server.cli.main import main
from server.tls import channel_credentials

from .serving import Server


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tls")
    assert main(["dev-ca", str(folder)]) == 0
    return folder


def stats(channel: grpc.Channel) -> int:
    return admin_pb2_grpc.AdminStub(channel).Stats(admin_pb2.StatsRequest(), timeout=5).pid


def test_tls_server_refuses_plaintext_and_answers_tls(ca: Path, tmp_path: Path, capsys) -> None:
    srv = Server(tmp_path / "data", "--tls-cert", str(ca / "server.pem"), "--tls-key", str(ca / "server.key"))
    try:
        with grpc.insecure_channel(srv.address) as plain, pytest.raises(grpc.RpcError) as err:
            stats(plain)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(srv.address, channel_credentials(ca / "ca.pem")) as secure:
            assert stats(secure) > 0
        capsys.readouterr()
        assert main(["--server", srv.address, "--tls-ca", str(ca / "ca.pem"), "stats"]) == 0
        assert "acme" in capsys.readouterr().out
        other = tmp_path / "other"
        assert main(["dev-ca", str(other)]) == 0
        with grpc.secure_channel(srv.address, channel_credentials(other / "ca.pem")) as wrong, \
                pytest.raises(grpc.RpcError):
            stats(wrong)                                       # a server its CA did not sign is not trusted
    finally:
        assert srv.stop() == 0


def test_mutual_tls_needs_a_client_certificate(ca: Path, tmp_path: Path) -> None:
    srv = Server(tmp_path / "data", "--tls-cert", str(ca / "server.pem"), "--tls-key", str(ca / "server.key"),
                 "--client-ca", str(ca / "ca.pem"))
    try:
        with grpc.secure_channel(srv.address, channel_credentials(ca / "ca.pem")) as anonymous, \
                pytest.raises(grpc.RpcError) as err:
            stats(anonymous)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        creds = channel_credentials(ca / "ca.pem", ca / "client.pem", ca / "client.key")
        with grpc.secure_channel(srv.address, creds) as client:
            assert stats(client) > 0
    finally:
        assert srv.stop() == 0


def test_bad_tls_options_are_clear(tmp_path: Path, capsys) -> None:
    assert main(["serve", "--data-dir", str(tmp_path), "--tls-cert", str(tmp_path / "none.pem")]) == 2
    assert "--tls-cert and --tls-key go together" in capsys.readouterr().err
    key = tmp_path / "k.pem"
    key.write_text("not pem")
    assert main(["serve", "--data-dir", str(tmp_path), "--tls-cert", str(key), "--tls-key", str(key)]) == 2
    assert "not PEM" in capsys.readouterr().err


def test_load_test_speaks_tls_and_tokens(ca: Path, tmp_path: Path, capsys) -> None:
    from loadtest import harness

    data = tmp_path / "data"
    assert main(["tokens", "create", "--role", "owner", "--data-dir", str(data)]) == 0
    token = capsys.readouterr().out.strip()
    srv = Server(data, "--auth", "tokens", "--tls-cert", str(ca / "server.pem"), "--tls-key", str(ca / "server.key"))
    try:
        # the owner's run leaves its tenant (--keep, a known prefix) for the proxy's run below
        code = harness.main(["--target", srv.address, "--tls-ca", str(ca / "ca.pem"), "--token", token,
                             "--tenants", "1", "--numbers", "10", "--blacklist", "200", "--requests", "300",
                             "--open-loop", "200", "--duration", "1", "--warmup", "0.2", "--prefix", "tls-",
                             "--keep"])
        out = capsys.readouterr().out
        assert code == 0, out
        assert "wrong answers: 0 of" in out
        code = harness.main(["--target", srv.address, "--tls-ca", str(ca / "ca.pem"), "--tenants", "1",
                             "--numbers", "10", "--blacklist", "200", "--requests", "300", "--no-push",
                             "--prefix", "tls-", "--open-loop", "100", "--duration", "0.5", "--warmup", "0"])
        out = capsys.readouterr().out
        assert "UNAUTHENTICATED" in out                        # without the token every call is refused
        assert main(["--server", srv.address, "--tls-ca", str(ca / "ca.pem"), "--token", token, "tokens", "create",
                     "--role", "proxy"]) == 0
        proxy = capsys.readouterr().out.strip()
        code = harness.main(["--target", srv.address, "--tls-ca", str(ca / "ca.pem"), "--token", proxy,
                             "--tenants", "1", "--numbers", "10", "--blacklist", "200", "--requests", "300",
                             "--no-push", "--prefix", "tls-", "--rpc", "stream", "--closed-loop", "8",
                             "--duration", "1", "--warmup", "0"])
        out = capsys.readouterr().out
        assert code == 0 and "wrong answers: 0 of" in out, out  # a proxy's load over TLS: decisions only
    finally:
        assert srv.stop() == 0
