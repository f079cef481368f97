"""SuperLink TLS: the CA and server certificate verify, name the right hosts, and a real
TLS handshake on 127.0.0.1 succeeds only for clients that trust the CA."""
from __future__ import annotations

import hashlib
import ipaddress
import os
import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, load_pem_private_key
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import PolicyBuilder, Store
from typer.testing import CliRunner

from server.certs import CertError, make_certs
from server.cli import app

HOSTS = ["superlink.example.org", "10.1.2.3"]


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def certs(tmp_path):
    return make_certs(tmp_path / "certs", HOSTS, days=30)


def test_chain_verifies_for_every_name(certs):
    ca, leaf = _cert(certs.ca_cert), _cert(certs.server_cert)
    leaf.verify_directly_issued_by(ca)
    builder = PolicyBuilder().store(Store([ca]))
    for name in ("superlink.example.org", "localhost"):
        builder.build_server_verifier(x509.DNSName(name)).verify(leaf, [])
    for ip in ("10.1.2.3", "127.0.0.1", "::1"):
        builder.build_server_verifier(x509.IPAddress(ipaddress.ip_address(ip))).verify(leaf, [])
    with pytest.raises(x509.verification.VerificationError):
        builder.build_server_verifier(x509.DNSName("other.example.org")).verify(leaf, [])


def test_sans_name_every_host_and_loopback_with_ips_as_ip_addresses(certs):
    san = _cert(certs.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sorted(san.get_values_for_type(x509.DNSName)) == ["localhost", "superlink.example.org"]
    assert sorted(map(str, san.get_values_for_type(x509.IPAddress))) == ["10.1.2.3", "127.0.0.1", "::1"]
    assert certs.names == ("superlink.example.org", "10.1.2.3", "localhost", "127.0.0.1", "::1")


def test_ca_fingerprint_is_the_sha256_of_the_ca_certificate(certs):
    der = _cert(certs.ca_cert).public_bytes(Encoding.DER)
    assert certs.ca_fingerprint == hashlib.sha256(der).digest().hex(":").upper()  # as openssl prints it


def test_ca_and_server_key_usage(certs):
    ca, leaf = _cert(certs.ca_cert), _cert(certs.server_cert)
    ca_basic = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert ca_basic.critical and ca_basic.value.ca is True
    ca_usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ca_usage.key_cert_sign and ca_usage.crl_sign and not ca_usage.digital_signature
    assert ca.subject == ca.issuer
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert not leaf.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.issuer == ca.subject
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert 30 * 86400 <= lifetime.total_seconds() <= 30 * 86400 + 3600


def test_keys_are_private_p384_and_match_their_certificates(certs):
    assert _mode(certs.ca_key) == _mode(certs.server_key) == 0o600
    assert _mode(certs.ca_cert) == _mode(certs.server_cert) == 0o644
    assert _mode(certs.ca_cert.parent) == 0o700
    for key_path, cert_path in ((certs.ca_key, certs.ca_cert), (certs.server_key, certs.server_cert)):
        key = load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, ec.SECP384R1)
        assert key.public_key() == _cert(cert_path).public_key()
    assert not [p for p in certs.ca_cert.parent.iterdir() if p.name.startswith(".")]  # no temp files left


def test_refuses_to_overwrite_without_force(certs):
    before = {p.name: p.read_bytes() for p in certs.ca_cert.parent.iterdir()}
    with pytest.raises(CertError, match=r"already exist.*--force"):
        make_certs(certs.ca_cert.parent, HOSTS)
    assert {p.name: p.read_bytes() for p in certs.ca_cert.parent.iterdir()} == before
    certs.server_key.unlink()  # one file is enough to refuse
    with pytest.raises(CertError, match="ca.crt"):
        make_certs(certs.ca_cert.parent, HOSTS)
    again = make_certs(certs.ca_cert.parent, HOSTS, force=True)
    assert again.ca_cert.read_bytes() != before["ca.crt"] and _mode(again.server_key) == 0o600


@pytest.mark.parametrize("host", ["https://superlink", "superlink:9092", "bad host", "-x.org", ""])
def test_rejects_what_is_not_a_host(tmp_path, host):
    with pytest.raises(CertError, match="not a host name or an IP address.*fix"):
        make_certs(tmp_path, [host])
    assert not list(tmp_path.iterdir())


def test_rejects_days_out_of_range(tmp_path):
    with pytest.raises(CertError, match="--days"):
        make_certs(tmp_path, HOSTS, days=0)


def _handshake(certs, *, trust: Path, server_hostname: str) -> bytes:
    """One TLS connection on 127.0.0.1: the server presents server.pem; the client trusts
    ``trust`` only and checks ``server_hostname`` (strict X.509 checks, as Python 3.13 does)."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(certs.server_cert, certs.server_key)
    client_ctx = ssl.create_default_context(cafile=str(trust))
    client_ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    assert client_ctx.check_hostname and client_ctx.verify_mode == ssl.CERT_REQUIRED

    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.sendall(b"ok")
        except (OSError, ssl.SSLError):
            pass  # the client's failure is what the test checks

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=5) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                return tls.recv(2)
    finally:
        thread.join(timeout=5)
        listener.close()
        assert not thread.is_alive()


@pytest.mark.parametrize("name", ["localhost", "127.0.0.1", "superlink.example.org"])
def test_tls_handshake_succeeds_for_a_client_that_trusts_the_ca(certs, name):
    assert _handshake(certs, trust=certs.ca_cert, server_hostname=name) == b"ok"


def test_tls_handshake_fails_for_a_client_that_trusts_another_ca(certs, tmp_path):
    other = make_certs(tmp_path / "other", HOSTS)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, trust=other.ca_cert, server_hostname="localhost")


def test_tls_handshake_fails_for_a_name_the_certificate_does_not_hold(certs):
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(certs, trust=certs.ca_cert, server_hostname="attacker.example.org")


def test_cli_writes_the_files_and_says_where_each_goes(tmp_path):
    runner = CliRunner()
    out = tmp_path / "certs"
    result = runner.invoke(app, ["certs", "--out", str(out), "--host", "superlink", "--host", "10.0.0.9"])
    assert result.exit_code == 0, result.output
    for flag, name in (("--ssl-certfile", "server.pem"), ("--ssl-keyfile", "server.key"),
                       ("--ssl-ca-certfile", "ca.crt"), ("--root-certificates", "ca.crt")):
        assert f"{flag} " in result.output and name in result.output
    assert sorted(p.name for p in out.iterdir()) == ["ca.crt", "ca.key", "server.key", "server.pem"]
    again = runner.invoke(app, ["certs", "--out", str(out), "--host", "superlink"])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(app, ["certs", "--out", str(out), "--host", "superlink", "--force"])
    assert forced.exit_code == 0, forced.output
