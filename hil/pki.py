"""Throw-away test PKI for hardware-in-the-loop and integration tests.

``make_pki(directory)`` writes, as PEM files:

* a trusted CA (ECDSA P-256) and its key,
* a server certificate for ``CN=localhost`` (SAN ``DNS:localhost``, ``IP:127.0.0.1``),
* a client certificate whose CN is the gateway id (mosquitto maps it to the MQTT
  username with ``use_identity_as_username``),
* a second, *untrusted* ("rogue") CA with its own client certificate, for the
  "refused" tests.

Private keys are created with ``os.open(..., 0o600)`` and are never readable by
anyone else, not even for a moment. EC keys keep the whole thing well under a second,
also on a Raspberry Pi.
"""

from __future__ import annotations

import datetime as _dt
import ipaddress
import os
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "ClientCert",
    "Pki",
    "issue_client_cert",
    "make_pki",
    "write_private_key",
]

#: Validity of every certificate. Starts one day in the past so that a gateway whose
#: clock is a little behind (no RTC, NTP not synced yet) still accepts them.
VALIDITY = _dt.timedelta(days=3650)
BACKDATE = _dt.timedelta(days=1)

_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ClientCert(NamedTuple):
    """Paths of one client certificate and its private key."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files written by :func:`make_pki`."""

    directory: Path
    gateway_id: str
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca_cert: Path
    rogue_ca_key: Path
    rogue_cert: Path
    rogue_key: Path

    def client_ssl_context(
        self,
        cert: Path | None = None,
        key: Path | None = None,
        *,
        cafile: Path | None = None,
        with_client_cert: bool = True,
    ) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for an MQTT client.

        Trusts ``cafile`` (default: this PKI's CA) and presents ``cert``/``key``
        (default: the gateway's client certificate) unless ``with_client_cert`` is
        false.
        """
        ctx = ssl.create_default_context(cafile=str(cafile or self.ca_cert))
        if with_client_cert:
            ctx.load_cert_chain(str(cert or self.client_cert), str(key or self.client_key))
        return ctx

    def issue_client_cert(self, gateway_id: str, directory: Path | None = None) -> ClientCert:
        """Issue another client certificate signed by the trusted CA (see below)."""
        return issue_client_cert(self, gateway_id, directory)


# --------------------------------------------------------------------------- writing


def write_private_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write ``key`` as unencrypted PKCS#8 PEM, mode 0600 from the first byte on."""
    pem = key.private_bytes(
        encoding=serialization.Encoding.PEM,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )
    # An existing file keeps its mode through O_CREAT: remove it so that the new one
    # is created with 0600 (O_EXCL also refuses to follow a planted symlink).
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # umask can only remove bits; make the mode exact anyway
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
    finally:
        os.close(fd)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{path}: expected an EC private key")
    return key


# ------------------------------------------------------------------------ building


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Passerelle test PKI"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _builder(subject: x509.Name, issuer: x509.Name, public_key) -> x509.CertificateBuilder:
    now = _dt.datetime.now(_dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )


def _make_ca(cn: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    name = _name(cn)
    cert = (
        _builder(name, name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_leaf(
    cn: str,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    *,
    server: bool,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    builder = (
        _builder(_name(cn), ca_cert.subject, key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(cn), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _file_stem(gateway_id: str) -> str:
    stem = _SAFE_NAME.sub("_", gateway_id).strip("._")
    if not stem:
        raise ValueError(f"unusable gateway id {gateway_id!r}")
    return stem


# ---------------------------------------------------------------------------- API


def make_pki(directory: Path, gateway_id: str = "cab-0042") -> Pki:
    """Create a fresh test PKI in ``directory`` (created if needed) and return its paths.

    Existing files of a previous PKI in the same directory are overwritten.
    """
    if not gateway_id:
        raise ValueError("gateway_id must not be empty")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    d = directory

    ca_cert, ca_key = _make_ca("Passerelle Test CA")
    server_cert, server_key = _make_leaf("localhost", ca_cert, ca_key, server=True)
    client_cert, client_key = _make_leaf(gateway_id, ca_cert, ca_key, server=False)
    rogue_ca_cert, rogue_ca_key = _make_ca("Rogue CA (not trusted)")
    rogue_cert, rogue_key = _make_leaf(gateway_id, rogue_ca_cert, rogue_ca_key, server=False)

    pki = Pki(
        directory=d,
        gateway_id=gateway_id,
        ca_cert=d / "ca.crt",
        ca_key=d / "ca.key",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        client_cert=d / "client.crt",
        client_key=d / "client.key",
        rogue_ca_cert=d / "rogue-ca.crt",
        rogue_ca_key=d / "rogue-ca.key",
        rogue_cert=d / "rogue-client.crt",
        rogue_key=d / "rogue-client.key",
    )
    for path, cert in (
        (pki.ca_cert, ca_cert),
        (pki.server_cert, server_cert),
        (pki.client_cert, client_cert),
        (pki.rogue_ca_cert, rogue_ca_cert),
        (pki.rogue_cert, rogue_cert),
    ):
        _write_cert(path, cert)
    write_private_key(pki.ca_key, ca_key)
    write_private_key(pki.server_key, server_key)
    write_private_key(pki.client_key, client_key)
    write_private_key(pki.rogue_ca_key, rogue_ca_key)
    write_private_key(pki.rogue_key, rogue_key)
    return pki


def issue_client_cert(pki: Pki, gateway_id: str, directory: Path | None = None) -> ClientCert:
    """Issue a client certificate (CN=``gateway_id``) signed by ``pki``'s trusted CA.

    Files are ``client-<id>.crt`` / ``client-<id>.key`` in ``directory`` (default: the
    PKI's directory).
    """
    if not gateway_id:
        raise ValueError("gateway_id must not be empty")
    directory = Path(directory) if directory is not None else pki.directory
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = _make_leaf(gateway_id, _load_cert(pki.ca_cert), _load_key(pki.ca_key), server=False)
    stem = _file_stem(gateway_id)
    out = ClientCert(directory / f"client-{stem}.crt", directory / f"client-{stem}.key")
    _write_cert(out.cert, cert)
    write_private_key(out.key, key)
    return out
