"""``passerelle provision``: give a gateway its identity and a starter configuration, then check
in the street what can be checked there.

Written into DIR (default ``/etc/passerelle``, mode 0750)::

    gateway.key        the gateway's private key (EC P-256, PKCS#8 PEM), mode 0600 from creation
    gateway.csr        the certificate signing request (CN = gateway id) for the operator's CA
    gateway.crt        with --self-signed: a client certificate from a lab CA (otherwise the
                       operator's CA returns it for gateway.csr)
    lab-ca.crt/.key    with --self-signed: that lab CA (the broker must trust lab-ca.crt)
    ca.crt             a copy of --ca: the CA that signed the broker's certificate
    operators/*.pub    copies of the --operator-key files (Ed25519 public keys)
    passerelle.toml    a starter configuration with every required key, paths relative to DIR

Then a checklist an installer reads on a phone: identity, broker reachable (DNS, TCP, TLS: which
step failed), clock synchronised, radio and bus devices found, configuration valid, and what to
do next. Exit status: 0 once the files are written, even when the broker is unreachable
(commissioning happens offline too); 2 on bad arguments or a DIR that cannot be written.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pwd
import socket
import ssl
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from . import config as config_mod
from .control.vault import write_atomic

__all__ = ["DEFAULT_DIR", "Check", "Report", "main", "provision"]

DEFAULT_DIR = "/etc/passerelle"
DEFAULT_DATA_DIR = "/var/lib/passerelle"
DEFAULT_OWNER = "passerelle"

KEY = "gateway.key"
CSR = "gateway.csr"
CERT = "gateway.crt"
CA = "ca.crt"
LAB_CA_CERT = "lab-ca.crt"
LAB_CA_KEY = "lab-ca.key"
CONFIG = "passerelle.toml"
OPERATORS = "operators"

DIR_MODE = 0o750
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644
CONFIG_MODE = 0o640

# A lab certificate starts a day in the past: a Pi without RTC may boot before NTP syncs.
_BACKDATE = dt.timedelta(days=1)
_LAB_CA_LIFETIME = dt.timedelta(days=3650)
_LAB_CERT_LIFETIME = dt.timedelta(days=825)

Status = Literal["ok", "fail", "warn"]
SYMBOLS: dict[str, str] = {"ok": "✔", "fail": "✘", "warn": "!"}


class ProvisionError(Exception):
    """Bad arguments or an unwritable DIR: nothing useful was written (exit 2)."""


@dataclass
class Check:
    """One line of the checklist."""

    item: str
    status: Status
    text: str


@dataclass
class Report:
    gateway_id: str
    out_dir: str
    files: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    broker: dict[str, Any] = field(default_factory=dict)
    clock_synchronised: bool = False
    devices: dict[str, list[str]] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    next_steps: list[str] = field(default_factory=list)

    def add(self, item: str, status: Status, text: str) -> None:
        self.checks.append(Check(item, status, text))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="passerelle provision",
        description="Create this gateway's key, CSR and starter configuration, and check "
        "what an installer can check on site.",
        epilog="Exit status: 0 files written (even if the broker is unreachable), "
        "2 bad arguments or DIR not writable.",
    )
    p.add_argument("--gateway-id", required=True, metavar="ID", help="e.g. cab-0042")
    p.add_argument("--broker", required=True, metavar="URL", help="mqtts://host[:port]")
    p.add_argument("--ca", metavar="FILE", help="PEM CA that signed the broker's certificate")
    p.add_argument(
        "--operator-key",
        action="append",
        default=[],
        metavar="PUB",
        help="operator Ed25519 public key (PEM); repeat for several",
    )
    p.add_argument("--out", default=DEFAULT_DIR, metavar="DIR", help=f"(default {DEFAULT_DIR})")
    p.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        metavar="DIR",
        help=f"the agent's data directory (default {DEFAULT_DATA_DIR})",
    )
    p.add_argument(
        "--self-signed",
        action="store_true",
        help="labs only: also create a lab CA and a client certificate signed by it",
    )
    p.add_argument(
        "--owner",
        default=DEFAULT_OWNER,
        metavar="USER",
        help=f"when run as root, give the files to this user (default {DEFAULT_OWNER})",
    )
    p.add_argument("--force", action="store_true", help="replace an existing key and config")
    p.add_argument("--json", action="store_true", help="print the checklist as JSON")
    return p


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help, or argparse's own usage error (already printed)
        return int(e.code or 0)
    try:
        report = provision(
            gateway_id=args.gateway_id,
            broker=args.broker,
            out_dir=Path(args.out),
            ca=Path(args.ca) if args.ca else None,
            operator_keys=[Path(k) for k in args.operator_key],
            data_dir=args.data_dir,
            self_signed=args.self_signed,
            owner=args.owner,
            force=args.force,
        )
    except ProvisionError as e:
        print(f"passerelle provision: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(report.to_json(), indent=2, ensure_ascii=False))
    else:
        print(render(report))
    return 0


# --------------------------------------------------------------------------------------------
# Provisioning


def provision(
    *,
    gateway_id: str,
    broker: str,
    out_dir: Path,
    ca: Path | None = None,
    operator_keys: list[Path] | None = None,
    data_dir: str = DEFAULT_DATA_DIR,
    self_signed: bool = False,
    owner: str | None = DEFAULT_OWNER,
    force: bool = False,
    dev_dir: Path = Path("/dev"),
    timeout: float = 3.0,
) -> Report:
    """Write the files into ``out_dir`` and return the checklist; :class:`ProvisionError` if
    the arguments are bad or ``out_dir`` cannot be written (checked before writing anything)."""
    out = Path(os.path.abspath(out_dir))
    operator_keys = list(operator_keys or [])
    host, port = _check_identity(gateway_id, broker, data_dir, out)
    ca_pem = _read_ca(ca) if ca is not None else None
    operators = _check_operator_keys(operator_keys)
    _check_out_dir(out, self_signed, force)

    key = ec.generate_private_key(ec.SECP256R1())
    paths = {name: out / name for name in (KEY, CSR, CERT, CA, LAB_CA_CERT, LAB_CA_KEY, CONFIG)}
    written: list[Path] = []
    try:
        _make_dir(out)
        _write_private(paths[KEY], key, replace=force)
        written.append(paths[KEY])
        _write_public(paths[CSR], _csr(gateway_id, key).public_bytes(serialization.Encoding.PEM))
        written.append(paths[CSR])
        stale = None if self_signed else _set_aside_stale_cert(paths[CERT], key)
        if self_signed:
            lab_key = ec.generate_private_key(ec.SECP256R1())
            lab_cert = _lab_ca(gateway_id, lab_key)
            _write_private(paths[LAB_CA_KEY], lab_key, replace=force)
            _write_public(paths[LAB_CA_CERT], lab_cert.public_bytes(serialization.Encoding.PEM))
            cert = _lab_client_cert(gateway_id, key, lab_cert, lab_key)
            _write_public(paths[CERT], cert.public_bytes(serialization.Encoding.PEM))
            written += [paths[LAB_CA_KEY], paths[LAB_CA_CERT], paths[CERT]]
        if ca_pem is not None:
            _write_public(paths[CA], ca_pem)
            written.append(paths[CA])
        operator_names: list[str] = []
        if operators:
            _make_dir(out / OPERATORS)
            for name, pem in operators:
                _write_public(out / OPERATORS / name, pem)
                written.append(out / OPERATORS / name)
                operator_names.append(f"{OPERATORS}/{name}")
        text = starter_config(
            gateway_id=gateway_id,
            broker=broker,
            data_dir=data_dir,
            ca_file=CA if ca_pem is not None else None,
            operator_keys=operator_names,
        )
        _write_file(paths[CONFIG], text.encode(), CONFIG_MODE)
        written.append(paths[CONFIG])
    except OSError as e:
        where = e.filename or out
        raise ProvisionError(f"cannot write {where}: {e.strerror or e}") from None

    report = Report(
        gateway_id=gateway_id,
        out_dir=str(out),
        files={
            "key": str(paths[KEY]),
            "key_mode": f"{_mode(paths[KEY]):04o}",
            "csr": str(paths[CSR]),
            "cert": str(paths[CERT]) if paths[CERT].exists() else None,
            "ca": str(paths[CA]) if ca_pem is not None else None,
            "lab_ca_cert": str(paths[LAB_CA_CERT]) if self_signed else None,
            "lab_ca_key": str(paths[LAB_CA_KEY]) if self_signed else None,
            "operator_keys": [str(out / n) for n in operator_names],
            "config": str(paths[CONFIG]),
        },
    )
    ownership = _hand_over(out, written, owner)
    _identity_checks(report, paths, self_signed, ownership)
    if stale is not None:
        report.add(
            "old certificate",
            "warn",
            f"{paths[CERT]} was for another key: moved to {stale}; a new one is needed",
        )
    probe = probe_broker(
        host,
        port,
        ca_file=paths[CA] if ca_pem is not None else None,
        client_cert=(paths[CERT], paths[KEY]) if paths[CERT].exists() else None,
        timeout=timeout,
    )
    _broker_checks(report, broker, probe)
    _clock_check(report)
    _device_checks(report, find_devices(dev_dir))
    _config_check(report, paths[CONFIG], self_signed, operator_names)
    _next_steps(report, out, self_signed, ca_pem is not None, operator_names)
    return report


def _check_identity(gateway_id: str, broker: str, data_dir: str, out: Path) -> tuple[str, int]:
    """Validate id, URL and data dir with the configuration schema itself (one rule, one place)."""
    if urlsplit(broker).scheme.lower() == "mqtt":
        raise ProvisionError(
            "--broker: plaintext mqtt:// refused: provision writes mutual-TLS configurations "
            "(mqtts://host[:port])"
        )
    draft = {"gateway": {"id": gateway_id, "data_dir": data_dir}, "uplink": {"url": broker}}
    try:
        config_mod.parse(draft, out)
    except config_mod.ConfigError as e:
        # The TLS files are written later: their absence is expected here.
        later = {"uplink.cert_file", "uplink.key_file"}
        real = [(p, why) for p, why in e.errors if p not in later]
        if real:
            flags = {"gateway.id": "--gateway-id", "uplink.url": "--broker"}
            raise ProvisionError(
                "; ".join(f"{flags.get(p, p)}: {why}" for p, why in real)
            ) from None
    parts = urlsplit(broker)  # valid by now
    assert parts.hostname is not None
    return parts.hostname, parts.port or 8883


def _read_ca(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ProvisionError(f"--ca {path}: cannot read: {e.strerror}") from None
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise ProvisionError(f"--ca {path}: not a PEM certificate") from None
    for cert in certs:
        try:
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            subject = cert.subject.rfc4514_string()
            raise ProvisionError(f"--ca {path}: '{subject}' is not a CA certificate")
    return data


def _check_operator_keys(keys: list[Path]) -> list[tuple[str, bytes]]:
    from .control.keys import KeyFileError, load_public_key

    out: list[tuple[str, bytes]] = []
    names: dict[str, Path] = {}
    for path in keys:
        try:
            load_public_key(path)
        except KeyFileError as e:
            raise ProvisionError(f"--operator-key {e}") from None
        name = path.name
        if name in names:
            raise ProvisionError(
                f"--operator-key {path}: same file name as {names[name]}; rename one "
                "(both are copied to operators/)"
            )
        names[name] = path
        out.append((name, path.read_bytes()))
    return out


def _check_out_dir(out: Path, self_signed: bool, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise ProvisionError(f"--out {out}: exists and is not a directory")
    parent = out if out.exists() else _existing_parent(out)
    if parent is not None and not parent.is_dir():
        raise ProvisionError(f"--out {out}: '{parent}' is not a directory")
    if parent is not None and not os.access(parent, os.W_OK | os.X_OK):
        raise ProvisionError(f"--out {out}: '{parent}' is not writable by this user")
    if force:
        return
    mine = [KEY, CONFIG] + ([LAB_CA_KEY] if self_signed else [])
    present = [name for name in mine if (out / name).exists() or (out / name).is_symlink()]
    if present:
        raise ProvisionError(
            f"{out} already holds {', '.join(present)}: a gateway keeps its identity; "
            "pass --force to replace it (its certificate must then be issued again)"
        )


def _existing_parent(path: Path) -> Path | None:
    for parent in path.parents:
        if parent.exists():
            return parent
    return None


# --------------------------------------------------------------------------------------------
# Files


def _make_dir(path: Path) -> None:
    path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    os.chmod(path, DIR_MODE)  # the umask may have removed bits; an existing dir keeps its own


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey, *, replace: bool) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    if replace:
        # O_CREAT keeps an existing file's mode: remove it, so the new one is born 0600.
        path.unlink(missing_ok=True)
    # O_EXCL: never an existing file, never through a planted symlink.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_MODE)
    try:
        os.fchmod(fd, PRIVATE_MODE)
        view = memoryview(pem)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_public(path: Path, data: bytes) -> None:
    _write_file(path, data, PUBLIC_MODE)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """A power cut leaves the old file or the new, never half (the vault's atomic write)."""
    write_atomic(path, data, mode)


def _set_aside_stale_cert(path: Path, key: ec.EllipticCurvePrivateKey) -> Path | None:
    """A gateway.crt left from an earlier key (a --force run) would make the configuration look
    complete while the broker refuses it: rename it, keeping it for the record."""
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        cert = None
    if cert is not None and cert.public_key() == key.public_key():
        return None
    aside = path.with_name(path.name + ".replaced")
    os.replace(path, aside)
    return aside


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


def _hand_over(out: Path, written: list[Path], owner: str | None) -> tuple[Status, str]:
    """chown to the agent's user when run as root; otherwise say what to run."""
    fix = f"chown -R {owner}:{owner} {out}"
    if not owner:
        return "ok", "file owner left as is (--owner '')"
    try:
        user = pwd.getpwnam(owner)
    except KeyError:
        return "warn", (
            f"user {owner} does not exist yet: run 'passerelle service install', then {fix}"
        )
    if os.geteuid() != 0:
        if all(p.stat().st_uid == user.pw_uid for p in [out, *written]):
            return "ok", f"files belong to {owner}"
        return "warn", f"files are yours, not {owner}'s: run as root: {fix}"
    dirs = {out, *(p.parent for p in written)}
    for path in sorted(dirs) + written:
        os.chown(path, user.pw_uid, user.pw_gid)
    return "ok", f"files given to user {owner}"


# --------------------------------------------------------------------------------------------
# Certificates


def _subject(gateway_id: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, gateway_id)])


def _csr(gateway_id: str, key: ec.EllipticCurvePrivateKey) -> x509.CertificateSigningRequest:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(gateway_id))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )


def _lab_ca(gateway_id: str, key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Passerelle lab CA ({gateway_id})")])
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LAB_CA_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def _lab_client_cert(
    gateway_id: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(_subject(gateway_id))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LAB_CERT_LIFETIME)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


# --------------------------------------------------------------------------------------------
# The starter configuration


def starter_config(
    *,
    gateway_id: str,
    broker: str,
    data_dir: str,
    ca_file: str | None,
    operator_keys: list[str],
) -> str:
    """The TOML text: every required key, the [control] section, optional sections commented."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    ca_line = (
        f"ca_file = {_q(ca_file)}                 # the CA that signed the broker's certificate"
        if ca_file
        else '# ca_file = "ca.crt"               # none: the system\'s CAs verify the broker'
    )
    keys = ", ".join(_q(k) for k in operator_keys)
    return f"""\
# Passerelle configuration of gateway {gateway_id}, written by `passerelle provision`
# on {stamp}. Check it with: passerelle check-config /etc/passerelle/passerelle.toml
# Relative paths are read from this file's directory: the folder can be copied as it is
# to /etc/passerelle on the gateway.

[gateway]
id = {_q(gateway_id)}
data_dir = {_q(data_dir)}         # the durable store and the control state

[uplink]
url = {_q(broker)}
{ca_line}
cert_file = "gateway.crt"           # this gateway's certificate, issued for gateway.csr
key_file = "gateway.key"            # this gateway's private key: mode 0600, never copied
# username = "..."                  # only if the broker also wants a password:
# password_file = "broker.password" # one line, mode 0600

[control]
# Operators whose signed configurations and commands this gateway accepts (Ed25519 public
# keys, PEM). Several keys let an operator rotate keys. Empty: remote control is off.
operator_keys = [{keys}]
groups = []                         # the fleets this gateway answers to, e.g. ["commune-41"]
keep_versions = 5                   # configuration versions kept for rollback
health_window = 30                  # seconds a new configuration must run well to commit

[log]
level = "info"                      # debug, info, warning, error
format = "text"                     # "json" for a log collector

# ---- Optional sections: uncomment and adapt (see the examples/ folder) ----------------------
#
# [store]
# max_bytes = 268435456             # 256 MiB buffered while the link is down
# ttl = 2592000                     # undelivered records kept 30 days
#
# [[sources]]                       # the cabinet's energy meter on RS-485
# type = "modbus-rtu"
# name = "rs485"
# port = "/dev/ttyUSB0"
# baud = 9600
# interval = 60
# priority = "energy"
# [[sources.devices]]
# name = "meter-1"
# unit = 1
# map = "sdm120"
#
# [[sources]]                       # light and climate sensors on I2C bus 1
# type = "i2c"
# name = "env"
# bus = 1
# interval = 60
# sensors = [{{ type = "veml7700", name = "light-1" }}]
#
# [[sources]]                       # the contactor relay and its feedback on GPIO
# type = "gpio"
# name = "io"
# chip = "/dev/gpiochip0"
# interval = 0.05
# [[sources.relays]]
# name = "contactor"
# line = 27
# active_high = true
# initial = "keep"
# feedback_line = 22
"""


def _q(text: str) -> str:
    # A JSON string is a valid TOML basic string (same escapes for quotes, backslash, controls).
    return json.dumps(text, ensure_ascii=False)


# --------------------------------------------------------------------------------------------
# What can be checked on site: the broker, the devices


@dataclass
class BrokerProbe:
    """How far a connection to the broker got: each step True, False, or None (not tried)."""

    host: str
    port: int
    dns: bool | None = None
    tcp: bool | None = None
    tls: bool | None = None
    address: str | None = None
    failed_step: str | None = None
    error: str | None = None
    tls_note: str | None = None

    @property
    def reachable(self) -> bool:
        return bool(self.tcp) and self.tls is not False

    def fail(self, step: str, error: str) -> BrokerProbe:
        setattr(self, step, False)
        self.failed_step, self.error = step, error
        return self


def probe_broker(
    host: str,
    port: int,
    *,
    ca_file: Path | None = None,
    client_cert: tuple[Path, Path] | None = None,
    timeout: float = 3.0,
) -> BrokerProbe:
    """Resolve, connect (``timeout`` each), and with ``ca_file`` complete a TLS handshake that
    verifies the broker's certificate (presenting ``client_cert`` when there is one).

    Under TLS 1.3 the broker judges the client certificate after the handshake, so a TLS
    success here says the *broker* is genuine, not yet that it accepts this gateway.
    """
    probe = BrokerProbe(host, port)
    try:
        infos = _resolve(host, port, timeout)
    except TimeoutError:
        return probe.fail("dns", f"no answer from the name server within {timeout:g} s")
    except OSError as e:
        return probe.fail("dns", e.strerror or str(e))
    probe.dns = True
    probe.address = infos[0][4][0]
    sock: socket.socket | None = None
    error = "no address to connect to"
    for family, type_, proto, _, address in infos:
        candidate = socket.socket(family, type_, proto)
        candidate.settimeout(timeout)
        try:
            candidate.connect(address)
        except ConnectionRefusedError:
            error = f"connection refused on {address[0]} (nothing listens on port {port})"
        except TimeoutError:
            error = f"no answer from {address[0]} within {timeout:g} s (firewall? wrong port?)"
        except OSError as e:
            error = f"{address[0]}: {e.strerror or e}"
        else:
            sock, probe.address = candidate, address[0]
            break
        candidate.close()
    if sock is None:
        return probe.fail("tcp", error)
    probe.tcp = True
    with sock:
        if ca_file is None:
            return probe
        return _handshake(probe, sock, ca_file, client_cert)


def _handshake(
    probe: BrokerProbe, sock: socket.socket, ca_file: Path, client_cert: tuple[Path, Path] | None
) -> BrokerProbe:
    try:
        ctx = ssl.create_default_context(cafile=str(ca_file))
        if client_cert is not None:
            ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
    except (OSError, ssl.SSLError) as e:
        return probe.fail("tls", f"cannot use {ca_file}: {e}")
    try:
        with ctx.wrap_socket(sock, server_hostname=probe.host) as tls:
            probe.tls_note = f"{tls.version()}, CA {ca_file.name}"
    except ssl.SSLCertVerificationError as e:
        return probe.fail("tls", f"broker certificate not trusted: {e.verify_message}")
    except ssl.SSLError as e:
        return probe.fail("tls", f"{e.reason or e} (is this port TLS?)")
    except TimeoutError:
        return probe.fail("tls", "no TLS answer in time (is this port TLS?)")
    except OSError as e:
        return probe.fail("tls", f"connection closed during the handshake ({e.strerror or e})")
    probe.tls = True
    return probe


def _resolve(host: str, port: int, timeout: float) -> list[Any]:
    """getaddrinfo with a deadline: the resolver has none, so it runs in a daemon thread that
    may be left behind (it ends with the process) when the name server never answers."""
    box: list[Any] = []
    done = threading.Event()

    def work() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as e:
            box.append(e)
        done.set()

    threading.Thread(target=work, name="provision-dns", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError
    if isinstance(box[0], OSError):
        raise box[0]
    result: list[Any] = box[0]
    return result


# What the agent's sources open, by kind. serial[0-9] are Raspberry Pi OS's aliases for the
# header UARTs (ttyAMA0 or ttyS0 depending on the model and Bluetooth).
DEVICE_PATTERNS: dict[str, tuple[str, ...]] = {
    "spi": ("spidev*",),
    "i2c": ("i2c-*",),
    "gpio": ("gpiochip*",),
    "serial": ("ttyAMA*", "ttyUSB*", "ttyACM*", "serial[0-9]"),
}


def find_devices(dev_dir: Path = Path("/dev")) -> dict[str, list[str]]:
    """The device nodes present, by kind, sorted."""
    return {
        kind: sorted({str(p) for pattern in patterns for p in dev_dir.glob(pattern)})
        for kind, patterns in DEVICE_PATTERNS.items()
    }


# --------------------------------------------------------------------------------------------
# The checklist


def _identity_checks(
    report: Report, paths: dict[str, Path], self_signed: bool, ownership: tuple[Status, str]
) -> None:
    report.add("identity", "ok", f"gateway id {report.gateway_id}")
    mode = _mode(paths[KEY])
    report.add(
        "private key",
        "ok" if mode == PRIVATE_MODE else "fail",
        f"{paths[KEY]} (mode {mode:04o})",
    )
    if self_signed:
        cert = x509.load_pem_x509_certificate(paths[CERT].read_bytes())
        until = cert.not_valid_after_utc.strftime("%Y-%m-%d")
        report.add("certificate", "ok", f"{paths[CERT]} from the lab CA, valid until {until}")
        report.add(
            "lab CA",
            "warn",
            f"labs only: the broker must trust {paths[LAB_CA_CERT]}; keep {paths[LAB_CA_KEY]} "
            "off production gateways",
        )
    else:
        report.add(
            "certificate",
            "warn",
            f"not issued yet: send {paths[CSR]} to your operator's CA, put the answer in "
            f"{paths[CERT]}",
        )
    report.add("file owner", *ownership)


def _broker_checks(report: Report, url: str, probe: BrokerProbe) -> None:
    report.broker = {"url": url, **asdict(probe), "reachable": probe.reachable}
    where = f"{probe.host}:{probe.port}"
    if not probe.dns:
        report.add("broker name", "fail", f"{probe.host}: name not found ({probe.error})")
        return
    if probe.address == probe.host:
        report.add("broker name", "ok", f"{probe.host} (an address: no name to look up)")
    else:
        report.add("broker name", "ok", f"{probe.host} is {probe.address}")
    if not probe.tcp:
        report.add("broker connection", "fail", f"{where}: {probe.error}")
        return
    report.add("broker connection", "ok", f"{where} answers")
    if probe.tls is None:
        report.add("broker TLS", "warn", "not checked: no --ca given (the system CAs will be used)")
    elif probe.tls:
        report.add(
            "broker TLS", "ok", f"handshake OK, broker certificate trusted ({probe.tls_note})"
        )
    else:
        report.add("broker TLS", "fail", f"handshake failed: {probe.error}")


def _clock_check(report: Report) -> None:
    from .lighting.engine import system_clock_trusted

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    report.clock_synchronised = bool(system_clock_trusted())
    if report.clock_synchronised:
        report.add("clock", "ok", f"synchronised ({now})")
    else:
        report.add(
            "clock",
            "fail",
            f"NOT synchronised (says {now}): certificates and light schedules need the right "
            "time; check the network and 'timedatectl'",
        )


_DEVICE_LABELS = {
    "spi": ("SPI (LoRa radio)", "raspi-config nonint do_spi 0, then reboot"),
    "i2c": ("I2C (sensors)", "raspi-config nonint do_i2c 0, then reboot"),
    "gpio": ("GPIO (relays, inputs)", "no GPIO chip: is this a Raspberry Pi?"),
    "serial": (
        "serial (modem, RS-485)",
        "header UART: raspi-config nonint do_serial_hw 0; USB: plug the adapter",
    ),
}


def _device_checks(report: Report, devices: dict[str, list[str]]) -> None:
    report.devices = devices
    for kind, (label, hint) in _DEVICE_LABELS.items():
        found = devices.get(kind, [])
        if found:
            report.add(label, "ok", ", ".join(found))
        else:
            report.add(label, "warn", f"none found ({hint})")


def _config_check(report: Report, path: Path, self_signed: bool, operator_keys: list[str]) -> None:
    try:
        config_mod.load(path)
    except config_mod.ConfigError as e:
        errors = e.errors
    else:
        errors = []
    report.config = {
        "path": str(path),
        "valid": not errors,
        "errors": [{"path": p, "reason": why} for p, why in errors],
    }
    if not errors:
        report.add("configuration", "ok", f"{path} is valid")
    elif not self_signed and [p for p, _ in errors] == ["uplink.cert_file"]:
        report.add(
            "configuration",
            "warn",
            f"{path} is complete but for gateway.crt (expected until the CA returns it)",
        )
    else:
        for where, why in errors:
            report.add("configuration", "fail", f"{where}: {why}")
    if not operator_keys:
        report.add(
            "remote control",
            "warn",
            "off: no --operator-key, so no signed configuration or command is accepted",
        )
    else:
        report.add("remote control", "ok", f"{len(operator_keys)} operator key(s) trusted")


def _next_steps(
    report: Report, out: Path, self_signed: bool, has_ca: bool, operator_keys: list[str]
) -> None:
    steps = report.next_steps
    if not self_signed:
        steps.append(f"send {out / CSR} to your operator; save the certificate as {out / CERT}")
    else:
        steps.append(f"add {out / LAB_CA_CERT} to the broker's client CAs (labs only)")
    if not has_ca:
        steps.append(
            f"if the broker's certificate is not from a public CA: rerun with --ca, "
            f"or copy its CA to {out / CA} and set uplink.ca_file"
        )
    if not operator_keys:
        steps.append(
            "for remote configuration: add an operator's .pub under "
            f"{out / OPERATORS} and list it in [control] operator_keys"
        )
    if out != Path(DEFAULT_DIR):
        steps.append(f"on the gateway: copy {out} to {DEFAULT_DIR} (keep gateway.key mode 0600)")
    steps.append(f"check: passerelle check-config {Path(DEFAULT_DIR) / CONFIG}")
    steps.append(
        "start: passerelle service install, then "
        "systemctl daemon-reload && systemctl enable --now passerelle"
    )


def render(report: Report) -> str:
    """The checklist as plain lines, one fact each, readable on a phone."""
    lines = [f"Passerelle provisioning: gateway {report.gateway_id}, files in {report.out_dir}"]
    lines += [f"{SYMBOLS[c.status]} {c.item}: {c.text}" for c in report.checks]
    lines.append("Next:")
    lines += [f"  {i}. {step}" for i, step in enumerate(report.next_steps, 1)]
    return "\n".join(lines)
