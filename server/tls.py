"""TLS for callgate: server and client credentials, and a throwaway development CA (`callgate dev-ca`).

The development CA is for `make run` and the tests: a CA, a server
certificate for 127.0.0.1, ::1 and localhost, and a client certificate for
mutual TLS, each valid for 30 days.  Production certificates come from the
operator's own PKI; the files have the same shapes (PEM).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from pathlib import Path

import grpc

FILES = ("ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key")


def _read(path: Path, what: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{what} {path}: {exc.strerror}") from None
    if b"-----BEGIN" not in data:
        raise ValueError(f"{what} {path} is not PEM")
    return data


def server_credentials(cert: Path, key: Path, client_ca: Path | None) -> grpc.ServerCredentials:
    """TLS, and mutual TLS (a client certificate signed by `client_ca` required) when given."""
    pair = [(_read(key, "--tls-key"), _read(cert, "--tls-cert"))]
    if client_ca is None:
        return grpc.ssl_server_credentials(pair)
    return grpc.ssl_server_credentials(pair, root_certificates=_read(client_ca, "--client-ca"),
                                       require_client_auth=True)


def channel_credentials(ca: Path, cert: Path | None = None, key: Path | None = None) -> grpc.ChannelCredentials:
    if (cert is None) != (key is None):
        raise ValueError("--tls-cert and --tls-key go together (a client certificate for mutual TLS)")
    return grpc.ssl_channel_credentials(
        root_certificates=_read(ca, "--tls-ca"),
        private_key=_read(key, "--tls-key") if key else None,
        certificate_chain=_read(cert, "--tls-cert") if cert else None)


def make_dev_ca(folder: Path, days: int = 30) -> list[Path]:
    """Write a CA, a server certificate (127.0.0.1, ::1, localhost) and a client certificate into `folder`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "callgate development"),
                          x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def key() -> ec.EllipticCurvePrivateKey:
        return ec.generate_private_key(ec.SECP256R1())

    ca_key = key()
    ca = (x509.CertificateBuilder().subject_name(name("callgate dev CA")).issuer_name(name("callgate dev CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))

    def leaf(cn: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[x509.Certificate, object]:
        k = key()
        builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca.subject)
                   .public_key(k.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=days))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), k

    server, server_key = leaf("callgate server", ExtendedKeyUsageOID.SERVER_AUTH,
                              [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                               x509.IPAddress(ipaddress.ip_address("::1"))])
    client, client_key = leaf("callgate client", ExtendedKeyUsageOID.CLIENT_AUTH, [])

    def pem_key(k: object) -> bytes:
        assert isinstance(k, ec.EllipticCurvePrivateKey)
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    written = []
    for file, data in (("ca.pem", ca.public_bytes(serialization.Encoding.PEM)), ("ca.key", pem_key(ca_key)),
                       ("server.pem", server.public_bytes(serialization.Encoding.PEM)),
                       ("server.key", pem_key(server_key)),
                       ("client.pem", client.public_bytes(serialization.Encoding.PEM)),
                       ("client.key", pem_key(client_key))):
        path = folder / file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if file.endswith(".key") else 0o644)
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        written.append(path)
    return written
