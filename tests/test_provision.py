"""passerelle provision: files, modes, certificates, the starter config and the checklist."""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hil.mosquitto import Mosquitto
from hil.pki import Pki
from passerelle import config, provision

GW = "cab-0042"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = provision.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    rc, out, err = run(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture
def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def listening_port() -> Iterator[int]:
    # The kernel completes the TCP handshake from the backlog: no accept() needed.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        yield s.getsockname()[1]


def operator_pub(path: Path) -> Path:
    pem = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    path.write_bytes(pem)
    return path


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o7777


# ------------------------------------------------------------------------------- files


def test_self_signed_writes_keys_0600_a_dir_0750_and_a_valid_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    out = tmp_path / "etc"
    ops = operator_pub(tmp_path / "ops-2026.pub")
    report = run_json(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://127.0.0.1:{closed_port}",
        "--out",
        str(out),
        "--self-signed",
        "--operator-key",
        str(ops),
    )
    assert mode(out) == 0o750
    assert mode(out / "gateway.key") == 0o600
    assert mode(out / "lab-ca.key") == 0o600
    assert mode(out / "passerelle.toml") == 0o640
    assert report["files"]["key_mode"] == "0600"
    assert (out / "operators" / "ops-2026.pub").read_bytes() == ops.read_bytes()

    cfg = config.load(out / "passerelle.toml")
    assert cfg.gateway.id == GW
    assert cfg.gateway.data_dir == "/var/lib/passerelle"
    assert cfg.uplink.key_file == str(out / "gateway.key")
    assert cfg.uplink.cert_file == str(out / "gateway.crt")
    assert cfg.uplink.ca_file is None  # no --ca: the system CAs
    assert cfg.control.operator_keys == [str(out / "operators" / "ops-2026.pub")]
    assert cfg.control.groups == []
    assert cfg.control.keep_versions == 5
    assert cfg.control.health_window == 30
    assert report["config"] == {"path": str(out / "passerelle.toml"), "valid": True, "errors": []}


def test_the_private_key_is_created_0600_exclusively(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    closed_port: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[tuple[str, int, int]] = []
    real_open = os.open

    def spy(path: Any, flags: int, mode: int = 0o777, *a: Any, **kw: Any) -> int:
        opened.append((str(path), flags, mode))
        return real_open(path, flags, mode, *a, **kw)

    monkeypatch.setattr(provision.os, "open", spy)
    old = os.umask(0)  # a permissive umask must not leak into the key's mode
    try:
        rc, _, err = run(
            capsys,
            "--gateway-id",
            GW,
            "--broker",
            f"mqtts://127.0.0.1:{closed_port}",
            "--out",
            str(tmp_path / "etc"),
        )
    finally:
        os.umask(old)
    assert rc == 0, err
    [(_, flags, key_mode)] = [o for o in opened if o[0].endswith("/gateway.key")]
    assert flags & os.O_CREAT and flags & os.O_EXCL
    assert key_mode == 0o600
    assert mode(tmp_path / "etc" / "gateway.key") == 0o600


def test_the_csr_names_the_gateway_and_matches_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    out = tmp_path / "etc"
    run_json(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://127.0.0.1:{closed_port}",
        "--out",
        str(out),
    )
    csr = x509.load_pem_x509_csr((out / "gateway.csr").read_bytes())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == GW
    key = serialization.load_pem_private_key((out / "gateway.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"
    assert csr.public_key() == key.public_key()
    assert not (out / "gateway.crt").exists()
    assert not (out / "lab-ca.key").exists()


def test_the_lab_chain_verifies_and_works_for_mutual_tls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int, pki: Pki
) -> None:
    out = tmp_path / "etc"
    run_json(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://127.0.0.1:{closed_port}",
        "--out",
        str(out),
        "--self-signed",
    )
    ca = x509.load_pem_x509_certificate((out / "lab-ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((out / "gateway.crt").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == GW
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.CLIENT_AUTH in eku
    key = serialization.load_pem_private_key((out / "gateway.key").read_bytes(), None)
    assert cert.public_key() == key.public_key()  # type: ignore[union-attr]

    # A TLS server that trusts only the lab CA accepts the gateway's certificate.
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server_ctx.load_verify_locations(out / "lab-ca.crt")
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    seen: list[Any] = []
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def serve() -> None:
            conn, _ = listener.accept()
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                seen.append(tls.getpeercert())
                tls.sendall(b"ok")

        t = threading.Thread(target=serve, daemon=True)
        t.start()
        client_ctx = ssl.create_default_context(cafile=str(pki.ca_cert))
        client_ctx.load_cert_chain(out / "gateway.crt", out / "gateway.key")
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            assert tls.recv(2) == b"ok"
        t.join(5)
    assert dict(x[0] for x in seen[0]["subject"])["commonName"] == GW


def test_without_a_certificate_the_config_waits_only_for_gateway_crt(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int, pki: Pki
) -> None:
    out = tmp_path / "etc"
    report = run_json(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://127.0.0.1:{closed_port}",
        "--out",
        str(out),
        "--ca",
        str(pki.ca_cert),
    )
    assert report["config"]["valid"] is False
    assert [e["path"] for e in report["config"]["errors"]] == ["uplink.cert_file"]
    [line] = [c for c in report["checks"] if c["item"] == "configuration"]
    assert line["status"] == "warn" and "gateway.crt" in line["text"]
    [cert] = [c for c in report["checks"] if c["item"] == "certificate"]
    assert cert["status"] == "warn" and str(out / "gateway.csr") in cert["text"]
    assert (out / "ca.crt").read_bytes() == pki.ca_cert.read_bytes()
    # The operator's CA answers the CSR: the configuration is then complete.
    (out / "gateway.crt").write_bytes(pki.client_cert.read_bytes())
    cfg = config.load(out / "passerelle.toml")
    assert cfg.uplink.ca_file == str(out / "ca.crt")


def test_the_optional_sections_are_valid_once_uncommented(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    out = tmp_path / "etc"
    run_json(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://127.0.0.1:{closed_port}",
        "--out",
        str(out),
        "--self-signed",
    )
    head, marker, rest = (out / "passerelle.toml").read_text().partition("# ---- Optional")
    assert marker
    body = rest.split("\n", 1)[1]
    uncommented = "\n".join(line[2:] if line.startswith("# ") else "" for line in body.splitlines())
    (out / "full.toml").write_text(head + uncommented)
    cfg = config.load(out / "full.toml")
    assert [s.type for s in cfg.sources] == ["modbus-rtu", "i2c", "gpio"]
    assert cfg.store.max_bytes == 268435456


def test_an_existing_key_is_kept_unless_forced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    out = tmp_path / "etc"
    args = ("--gateway-id", GW, "--broker", f"mqtts://127.0.0.1:{closed_port}", "--out", str(out))
    assert run(capsys, *args)[0] == 0
    first = (out / "gateway.key").read_bytes()
    rc, _, err = run(capsys, *args)
    assert rc == 2
    assert "gateway.key" in err and "--force" in err
    assert (out / "gateway.key").read_bytes() == first
    os.chmod(out / "gateway.key", 0o644)  # --force must not inherit the old file's mode
    assert run(capsys, *args, "--force")[0] == 0
    assert (out / "gateway.key").read_bytes() != first
    assert mode(out / "gateway.key") == 0o600


# ------------------------------------------------------------------------ bad arguments


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--gateway-id", "CAB_42", "--broker", "mqtts://b.example"], "--gateway-id"),
        (["--gateway-id", GW, "--broker", "mqtt://b.example"], "plaintext"),
        (["--gateway-id", GW, "--broker", "https://b.example"], "--broker"),
        (["--gateway-id", GW, "--broker", "mqtts://b.example:99999"], "--broker"),
        (["--gateway-id", GW], "--broker"),
    ],
)
def test_bad_arguments_exit_2_and_write_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], expected: str
) -> None:
    rc, _, err = run(capsys, *argv, "--out", str(tmp_path / "etc"))
    assert rc == 2
    assert expected in err
    assert not (tmp_path / "etc").exists()


def test_an_unwritable_out_dir_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    rc, _, err = run(
        capsys, "--gateway-id", GW, "--broker", "mqtts://b.example", "--out", str(blocker / "etc")
    )
    assert rc == 2
    assert "not a directory" in err


def test_a_ca_that_is_not_a_certificate_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], pki: Pki
) -> None:
    rc, _, err = run(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        "mqtts://b.example",
        "--out",
        str(tmp_path / "etc"),
        "--ca",
        str(pki.ca_key),
    )
    assert rc == 2 and "not a PEM certificate" in err
    rc, _, err = run(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        "mqtts://b.example",
        "--out",
        str(tmp_path / "etc"),
        "--ca",
        str(pki.client_cert),
    )
    assert rc == 2 and "not a CA certificate" in err
    assert not (tmp_path / "etc").exists()


def test_an_operator_private_key_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "ops.key"
    secret.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    rc, _, err = run(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        "mqtts://b.example",
        "--out",
        str(tmp_path / "etc"),
        "--operator-key",
        str(secret),
    )
    assert rc == 2
    assert "--operator-key" in err and "private key" in err
    assert not (tmp_path / "etc").exists()


# ---------------------------------------------------------------------------- checklist


def test_a_closed_port_is_reported_unreachable_at_the_tcp_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    rc, out, _ = run(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://127.0.0.1:{closed_port}",
        "--out",
        str(tmp_path / "etc"),
        "--self-signed",
    )
    assert rc == 0  # commissioning goes on offline
    assert f"✘ broker connection: 127.0.0.1:{closed_port}: connection refused" in out
    assert len(out.splitlines()) == len(set(out.splitlines()))  # one fact per line


def test_a_listening_port_is_reachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], listening_port: int
) -> None:
    report = run_json(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://localhost:{listening_port}",
        "--out",
        str(tmp_path / "etc"),
    )
    broker = report["broker"]
    assert broker["dns"] is True and broker["tcp"] is True
    assert broker["tls"] is None  # no --ca: not tried
    assert broker["reachable"] is True and broker["failed_step"] is None
    statuses = {c["item"]: c["status"] for c in report["checks"]}
    assert statuses["broker connection"] == "ok"
    assert statuses["broker TLS"] == "warn"


def test_tls_handshake_against_the_real_broker(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], broker: Mosquitto, pki: Pki
) -> None:
    report = run_json(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://localhost:{broker.tls_port}",
        "--out",
        str(tmp_path / "etc"),
        "--ca",
        str(pki.ca_cert),
    )
    assert report["broker"]["tls"] is True
    assert report["broker"]["reachable"] is True
    [tls] = [c for c in report["checks"] if c["item"] == "broker TLS"]
    assert tls["status"] == "ok" and "ca.crt" in tls["text"]


def test_tls_with_the_wrong_ca_fails_at_the_tls_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], broker: Mosquitto, pki: Pki
) -> None:
    report = run_json(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://localhost:{broker.tls_port}",
        "--out",
        str(tmp_path / "etc"),
        "--ca",
        str(pki.rogue_ca_cert),
    )
    assert report["broker"]["tcp"] is True
    assert report["broker"]["tls"] is False
    assert report["broker"]["failed_step"] == "tls"
    assert "not trusted" in report["broker"]["error"]
    assert report["broker"]["reachable"] is False


def test_tls_to_a_port_that_does_not_speak_tls_says_so(listening_port: int, pki: Pki) -> None:
    probe = provision.probe_broker("127.0.0.1", listening_port, ca_file=pki.ca_cert, timeout=0.3)
    assert probe.failed_step == "tls" and probe.tls is False
    assert "TLS" in (probe.error or "")


def test_a_name_that_does_not_resolve_fails_at_the_dns_step() -> None:
    probe = provision.probe_broker("gateway-test.invalid", 8883, timeout=3.0)  # RFC 6761
    assert probe.dns is False and probe.failed_step == "dns"
    assert probe.tcp is None and not probe.reachable


def test_json_shape(tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int) -> None:
    report = run_json(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://127.0.0.1:{closed_port}",
        "--out",
        str(tmp_path / "etc"),
        "--self-signed",
    )
    assert set(report) == {
        "gateway_id",
        "out_dir",
        "files",
        "checks",
        "broker",
        "clock_synchronised",
        "devices",
        "config",
        "next_steps",
    }
    assert report["gateway_id"] == GW
    assert set(report["devices"]) == {"spi", "i2c", "gpio", "serial"}
    assert isinstance(report["clock_synchronised"], bool)
    for check in report["checks"]:
        assert set(check) == {"item", "status", "text"}
        assert check["status"] in ("ok", "fail", "warn")
    items = [c["item"] for c in report["checks"]]
    for item in (
        "identity",
        "private key",
        "certificate",
        "broker name",
        "broker connection",
        "clock",
        "configuration",
    ):
        assert item in items
    assert report["next_steps"] and all(isinstance(s, str) for s in report["next_steps"])


def test_the_text_checklist_has_one_marked_line_per_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int
) -> None:
    rc, out, _ = run(
        capsys,
        "--gateway-id",
        GW,
        "--broker",
        f"mqtts://127.0.0.1:{closed_port}",
        "--out",
        str(tmp_path / "etc"),
    )
    assert rc == 0
    lines = out.splitlines()
    marked = [line for line in lines if line[:2] in ("✔ ", "✘ ", "! ")]
    assert any(line.startswith("✔ private key:") and "(mode 0600)" in line for line in marked)
    assert any(line.startswith("! certificate: not issued yet") for line in marked)
    assert any(line.startswith(("✔ clock:", "✘ clock:")) for line in marked)
    assert "Next:" in lines


def test_devices_are_found_by_kind(tmp_path: Path) -> None:
    for name in (
        "spidev0.0",
        "spidev0.1",
        "i2c-1",
        "gpiochip0",
        "gpiochip4",
        "ttyAMA0",
        "ttyUSB0",
        "ttyACM0",
        "serial0",
        "tty1",
        "null",
    ):
        (tmp_path / name).write_text("")
    found = provision.find_devices(tmp_path)
    d = str(tmp_path)
    assert found == {
        "spi": [f"{d}/spidev0.0", f"{d}/spidev0.1"],
        "i2c": [f"{d}/i2c-1"],
        "gpio": [f"{d}/gpiochip0", f"{d}/gpiochip4"],
        "serial": [f"{d}/serial0", f"{d}/ttyACM0", f"{d}/ttyAMA0", f"{d}/ttyUSB0"],
    }


def test_a_certificate_for_the_replaced_key_is_set_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], closed_port: int, pki: Pki
) -> None:
    out = tmp_path / "etc"
    args = ("--gateway-id", GW, "--broker", f"mqtts://127.0.0.1:{closed_port}", "--out", str(out))
    assert run(capsys, *args)[0] == 0
    (out / "gateway.crt").write_bytes(pki.client_cert.read_bytes())  # not for this key
    report = run_json(capsys, *args, "--force")
    assert not (out / "gateway.crt").exists()
    assert (out / "gateway.crt.replaced").read_bytes() == pki.client_cert.read_bytes()
    [old] = [c for c in report["checks"] if c["item"] == "old certificate"]
    assert old["status"] == "warn"
    assert [e["path"] for e in report["config"]["errors"]] == ["uplink.cert_file"]
