"""passerelle.startup_checks: the files that make `passerelle run` refuse to start."""

from __future__ import annotations

import os
import types
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from passerelle import config
from passerelle.startup_checks import unsafe_files


@pytest.fixture
def gateway_dir(tmp_path: Path) -> Path:
    """A safely set-up /etc/passerelle: every mode as `passerelle provision` leaves it."""
    d = tmp_path / "etc"
    d.mkdir(mode=0o750)
    os.chmod(d, 0o750)
    for name, mode in (
        ("gateway.key", 0o600),
        ("gateway.crt", 0o644),
        ("ca.crt", 0o644),
        ("broker.password", 0o600),
    ):
        (d / name).write_text("x\n")
        os.chmod(d / name, mode)
    ops = d / "operators"
    ops.mkdir()
    os.chmod(ops, 0o755)
    pub = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    (ops / "ops-2026.pub").write_bytes(pub)
    os.chmod(ops / "ops-2026.pub", 0o644)
    (d / "passerelle.toml").write_text(
        '[gateway]\nid = "cab-0042"\n'
        '[uplink]\nurl = "mqtts://broker.example:8883"\nca_file = "ca.crt"\n'
        'cert_file = "gateway.crt"\nkey_file = "gateway.key"\n'
        'username = "cab-0042"\npassword_file = "broker.password"\n'
        '[control]\noperator_keys = ["operators/ops-2026.pub"]\n'
    )
    os.chmod(d / "passerelle.toml", 0o640)
    return d


def _check(d: Path) -> list[str]:
    path = d / "passerelle.toml"
    return unsafe_files(config.load(path), path)


def test_a_provisioned_directory_is_safe(gateway_dir: Path) -> None:
    assert _check(gateway_dir) == []


def test_a_private_key_readable_by_others_is_refused(gateway_dir: Path) -> None:
    key = gateway_dir / "gateway.key"
    os.chmod(key, 0o644)
    problems = _check(gateway_dir)
    assert len(problems) == 1
    assert problems[0].startswith("uplink.key_file:")
    assert str(key) in problems[0] and "mode 0644" in problems[0]
    assert "readable by others" in problems[0]
    assert f"chmod 600 '{key}'" in problems[0]


def test_a_private_key_readable_by_the_group_only_is_left_to_the_warning(
    gateway_dir: Path,
) -> None:
    os.chmod(gateway_dir / "gateway.key", 0o640)
    path = gateway_dir / "passerelle.toml"
    cfg = config.load(path)
    assert unsafe_files(cfg, path) == []
    assert any("gateway.key" in w for w in config.key_file_warnings(cfg))


def test_a_private_key_writable_by_others_is_refused(gateway_dir: Path) -> None:
    os.chmod(gateway_dir / "gateway.key", 0o602)
    [problem] = _check(gateway_dir)
    assert "writable by others (mode 0602)" in problem


def test_a_password_file_readable_by_others_is_refused(gateway_dir: Path) -> None:
    pw = gateway_dir / "broker.password"
    os.chmod(pw, 0o604)
    [problem] = _check(gateway_dir)
    assert problem.startswith("uplink.password_file:")
    assert f"chmod 600 '{pw}'" in problem


def test_a_config_file_writable_by_others_is_refused(gateway_dir: Path) -> None:
    path = gateway_dir / "passerelle.toml"
    os.chmod(path, 0o646)
    [problem] = _check(gateway_dir)
    assert problem.startswith("configuration file:")
    assert "mode 0646" in problem and f"chmod o-w '{path}'" in problem


def test_a_config_directory_writable_by_others_is_refused(gateway_dir: Path) -> None:
    os.chmod(gateway_dir, 0o757)
    [problem] = _check(gateway_dir)
    assert problem.startswith("configuration directory:")
    assert "mode 0757" in problem and f"chmod o-w '{gateway_dir}'" in problem


def test_group_write_on_the_config_directory_is_allowed(gateway_dir: Path) -> None:
    # The agent's own group writes remote configuration versions there.
    os.chmod(gateway_dir, 0o770)
    assert _check(gateway_dir) == []


def test_an_operator_key_writable_by_others_is_refused(gateway_dir: Path) -> None:
    key = gateway_dir / "operators" / "ops-2026.pub"
    os.chmod(key, 0o666)
    [problem] = _check(gateway_dir)
    assert problem.startswith("control.operator_keys[0]:")
    assert "mode 0666" in problem and f"chmod o-w '{key}'" in problem


def test_the_directory_of_an_operator_key_writable_by_others_is_refused(
    gateway_dir: Path,
) -> None:
    os.chmod(gateway_dir / "operators", 0o777)
    [problem] = _check(gateway_dir)
    assert problem.startswith("directory of control.operator_keys[0]:")
    assert "mode 0777" in problem


def test_a_ca_file_writable_by_others_is_refused(gateway_dir: Path) -> None:
    os.chmod(gateway_dir / "ca.crt", 0o646)
    [problem] = _check(gateway_dir)
    assert problem.startswith("uplink.ca_file:")


def test_every_problem_is_reported_at_once(gateway_dir: Path) -> None:
    os.chmod(gateway_dir / "gateway.key", 0o644)
    os.chmod(gateway_dir / "passerelle.toml", 0o666)
    os.chmod(gateway_dir, 0o777)
    labels = [p.split(":")[0] for p in _check(gateway_dir)]
    assert labels == ["uplink.key_file", "configuration file", "configuration directory"]


def test_a_config_without_a_control_section_attribute_is_still_checked(
    gateway_dir: Path,
) -> None:
    # Before [control] existed, Config had no `control`: the check must not depend on it.
    path = gateway_dir / "passerelle.toml"
    cfg = config.load(path)
    os.chmod(gateway_dir / "gateway.key", 0o604)
    legacy = types.SimpleNamespace(uplink=cfg.uplink)
    [problem] = unsafe_files(legacy, path)  # type: ignore[arg-type]
    assert problem.startswith("uplink.key_file:")
