"""TLS for the SuperLink: a private CA and the SuperLink's server certificate.

:func:`make_certs` writes four files into one folder:

- ``ca.crt``      the CA certificate (public): the SuperLink's ``--ssl-ca-certfile``, every
                  site's ``flower-supernode --root-certificates``, and the coordinator's
                  ``root-certificates`` in its Flower connection config;
- ``ca.key``      the CA's private key (0600): needed only to issue a new server
                  certificate; keep it offline;
- ``server.pem``  the SuperLink's certificate, signed by the CA (``--ssl-certfile``);
- ``server.key``  its private key (0600, ``--ssl-keyfile``).

Keys are ECDSA P-384. The server certificate names every requested host plus
``localhost``, ``127.0.0.1`` and ``::1`` (the SuperLink's own SuperExec connects to it on
the loopback address), IP addresses as IP SANs. Every file is written atomically; existing
files are never overwritten unless ``force`` is given.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY = "ca.crt", "ca.key", "server.pem", "server.key"
LOOPBACK = ("localhost", "127.0.0.1", "::1")
MAX_DAYS = 3650
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class CertError(Exception):
    """Certificates cannot be made as asked; the message names the fix."""


@dataclass(frozen=True)
class CertFiles:
    """Where :func:`make_certs` wrote each file, and the names the certificate covers."""

    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    names: tuple[str, ...]
    ca_fingerprint: str  # SHA-256 of the CA certificate, as `openssl x509 -fingerprint -sha256` prints it


def make_certs(out: Path, hosts: Sequence[str], *, days: int = 365, force: bool = False) -> CertFiles:
    """Create a CA and a SuperLink certificate for ``hosts`` in ``out``; see the module doc."""
    out = Path(out)
    names = subject_names(hosts)
    if not 1 <= days <= MAX_DAYS:
        raise CertError(f"--days is {days}; rule: 1 to {MAX_DAYS} days; fix: pass --days 365 (or another value in range)")
    paths = {name: out / name for name in (CA_CERT, CA_KEY, SERVER_CERT, SERVER_KEY)}
    existing = [name for name, path in paths.items() if path.exists()]
    if existing and not force:
        raise CertError(
            f"{', '.join(existing)} already exist(s) in {out}; rule: certificates and keys are never "
            "overwritten by accident; fix: choose another --out, or pass --force to replace them "
            "(every site then needs the new ca.crt)"
        )
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)  # tolerate small clock skew
    until = now + dt.timedelta(days=days)
    ca_key, server_key = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    ca_cert = _ca_certificate(ca_key, now, until)
    server_cert = _server_certificate(server_key, ca_cert, ca_key, names, now, until)

    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    writes = [
        (CA_KEY, _key_pem(ca_key), 0o600),
        (SERVER_KEY, _key_pem(server_key), 0o600),
        (CA_CERT, ca_cert.public_bytes(pem), 0o644),
        (SERVER_CERT, server_cert.public_bytes(pem), 0o644),
    ]
    for name, data, mode in writes:
        _write(paths[name], data, mode=mode, overwrite=force)
    _fsync_dir(out)
    return CertFiles(ca_cert=paths[CA_CERT], ca_key=paths[CA_KEY], server_cert=paths[SERVER_CERT],
                     server_key=paths[SERVER_KEY], names=names,
                     ca_fingerprint=ca_cert.fingerprint(hashes.SHA256()).hex(":").upper())


def subject_names(hosts: Sequence[str]) -> tuple[str, ...]:
    """The validated, de-duplicated names for the certificate: ``hosts`` then the loopback names."""
    names: dict[str, str] = {}  # canonical form -> name as given
    problems: list[str] = []
    for host in [*hosts, *LOOPBACK]:
        host = host.strip()
        ip = _as_ip(host)
        if ip is None and not _is_dns_name(host):
            problems.append(repr(host))
        else:
            host = str(ip) if ip is not None else host.rstrip(".")
            names.setdefault(host.lower(), host)
    if problems:
        raise CertError(
            f"--host {', '.join(problems)} is not a host name or an IP address; rule: a DNS name "
            "(letters, digits, '-', dots) or an IPv4/IPv6 address, without scheme or port; fix: "
            "pass e.g. --host superlink.example.org --host 203.0.113.7"
        )
    return tuple(names.values())


# --- certificates ----------------------------------------------------------------------


def _ca_certificate(key: ec.EllipticCurvePrivateKey, start: dt.datetime, until: dt.datetime) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedrad federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, "fedrad federation CA")])
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA384())
    )


def _server_certificate(key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                        ca_key: ec.EllipticCurvePrivateKey, names: Sequence[str],
                        start: dt.datetime, until: dt.datetime) -> x509.Certificate:
    sans = [x509.IPAddress(ip) if (ip := _as_ip(n)) is not None else x509.DNSName(n) for n in names]
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA384())
    )


def _key_usage(**granted: bool) -> x509.KeyUsage:
    flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
    return x509.KeyUsage(**{flag: granted.get(flag, False) for flag in flags})


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_dns_name(host: str) -> bool:
    labels = host.rstrip(".").split(".")
    return 0 < len(host) <= 253 and all(_DNS_LABEL.fullmatch(label) for label in labels)


# --- files -------------------------------------------------------------------------------


def _write(path: Path, data: bytes, *, mode: int, overwrite: bool) -> None:
    """Write ``path`` atomically with ``mode``: a private temp file, fsync, then rename
    (``overwrite``) or hard-link (never replaces a file that appeared meanwhile)."""
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(8)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    except FileExistsError as exc:
        raise CertError(f"{path} appeared while writing (another `fedrad-server certs`?); fix: run again "
                        "with another --out, or with --force") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
