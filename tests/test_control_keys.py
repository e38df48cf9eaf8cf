"""Operator key files: modes, refusals, clear errors, and the trusted set (real keys throughout)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from passerelle.control.keys import (
    KeyFileError,
    Trust,
    generate_keypair,
    key_id,
    load_private_key,
    load_public_key,
)

# RFC 8032 section 7.1, TEST 1: the public key of an all-published secret.
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_key_id_is_the_first_8_bytes_of_sha256_of_the_raw_key() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_SECRET).public_key()
    assert key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw) == (
        RFC8032_PUBLIC
    )
    assert key_id(key) == hashlib.sha256(RFC8032_PUBLIC).digest()[:8]
    assert len(key_id(Ed25519PrivateKey.generate().public_key())) == 8


def test_generate_keypair_writes_a_usable_pair_with_modes(tmp_path: Path) -> None:
    priv, pub, kid = generate_keypair(tmp_path / "ops-2026")
    assert priv == tmp_path / "ops-2026" and pub == tmp_path / "ops-2026.pub"
    assert mode(priv) == 0o600
    assert mode(pub) == 0o644
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    private, public = load_private_key(priv), load_public_key(pub)
    assert key_id(private.public_key()) == key_id(public) == kid
    signature = private.sign(b"lamp 12 to 40 %")
    public.verify(signature, b"lamp 12 to 40 %")  # raises if the pair does not match
    assert sorted(tmp_path.iterdir()) == [priv, pub]


def test_a_umask_of_zero_does_not_make_the_private_key_readable(
    tmp_path: Path, umask_zero: None
) -> None:
    priv, pub, _ = generate_keypair(tmp_path / "k")
    assert mode(priv) == 0o600
    assert mode(pub) == 0o644
    priv2, _, _ = generate_keypair(tmp_path / "k", overwrite=True)
    assert mode(priv2) == 0o600


def test_a_strict_umask_still_leaves_the_public_key_readable(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        priv, pub, _ = generate_keypair(tmp_path / "k")
    finally:
        os.umask(old)
    assert (mode(priv), mode(pub)) == (0o600, 0o644)


@pytest.mark.parametrize("existing", ["k", "k.pub"])
def test_generate_keypair_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(KeyFileError, match=rf"{tmp_path / existing}: already exists"):
        generate_keypair(tmp_path / "k")
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == [existing]  # nothing half-written


def test_generate_keypair_refuses_a_dangling_symlink(tmp_path: Path) -> None:
    (tmp_path / "k").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(KeyFileError, match="already exists"):
        generate_keypair(tmp_path / "k")
    assert not (tmp_path / "elsewhere").exists()


def test_overwrite_replaces_the_pair_and_tightens_a_loose_old_file(tmp_path: Path) -> None:
    _, _, old_kid = generate_keypair(tmp_path / "k")
    os.chmod(tmp_path / "k", 0o644)  # somebody loosened it
    priv, pub, kid = generate_keypair(tmp_path / "k", overwrite=True)
    assert kid != old_kid
    assert mode(priv) == 0o600
    assert key_id(load_public_key(pub)) == kid == key_id(load_private_key(priv).public_key())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub"]  # no temporaries left


def test_a_failed_overwrite_leaves_no_temporary_files(tmp_path: Path) -> None:
    (tmp_path / "k.pub").mkdir()  # os.replace cannot put a file over a directory
    with pytest.raises(KeyFileError, match=rf"{tmp_path / 'k.pub'}: cannot write"):
        generate_keypair(tmp_path / "k", overwrite=True)
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_generate_keypair_creates_a_missing_directory_for_the_owner_only(
    tmp_path: Path, umask_zero: None
) -> None:
    priv, _, _ = generate_keypair(tmp_path / "keys" / "ops" / "k")
    assert mode(priv) == 0o600
    assert mode(tmp_path / "keys") == mode(tmp_path / "keys" / "ops") == 0o700


def test_generate_keypair_where_no_file_can_be_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("a file, not a directory")
    with pytest.raises(KeyFileError, match=rf"{tmp_path}/plain/k: cannot create"):
        generate_keypair(tmp_path / "plain" / "k")


def write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def test_load_private_key_errors_name_the_file(tmp_path: Path) -> None:
    cases: list[tuple[Path, str]] = [
        (tmp_path / "missing", "no such file"),
        (tmp_path, "is a directory"),
        (write_pem(tmp_path / "text", b"hello\n"), "not a PEM key file"),
        (
            write_pem(
                tmp_path / "ec",
                ec_key().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
            ),
            "holds an EC key, not an Ed25519 key",
        ),
        (
            write_pem(
                tmp_path / "locked",
                Ed25519PrivateKey.generate().private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"passphrase"),
                ),
            ),
            "encrypted with a passphrase",
        ),
        (
            write_pem(tmp_path / "broken", b"-----BEGIN PRIVATE KEY-----\nAAAA\n"),
            "not a usable PEM private key",
        ),
    ]
    _, pub, _ = generate_keypair(tmp_path / "ops")
    cases.append((pub, "holds a public key"))
    for path, why in cases:
        with pytest.raises(KeyFileError) as info:
            load_private_key(path)
        assert str(path) in str(info.value), info.value
        assert why in str(info.value), info.value


def test_load_public_key_errors_name_the_file(tmp_path: Path) -> None:
    priv, _, _ = generate_keypair(tmp_path / "ops")
    ec_pub = write_pem(
        tmp_path / "ec.pub",
        ec_key()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
    )
    cases = [
        (tmp_path / "missing.pub", "no such file"),
        (write_pem(tmp_path / "empty.pub", b""), "not a PEM key file"),
        (ec_pub, "holds an EC key, not an Ed25519 key"),
        (priv, "holds a private key; give the gateway the public key"),
        (write_pem(tmp_path / "bad.pub", b"-----BEGIN PUBLIC KEY-----\n!!\n"), "not a usable"),
        (priv / "under-a-file.pub", "cannot read: Not a directory"),
    ]
    for path, why in cases:
        with pytest.raises(KeyFileError) as info:
            load_public_key(path)
        assert str(path) in str(info.value), info.value
        assert why in str(info.value), info.value


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_key_file_names_the_file(tmp_path: Path) -> None:
    priv, pub, _ = generate_keypair(tmp_path / "ops")
    pub.chmod(0)
    with pytest.raises(KeyFileError, match=rf"{pub}: cannot read"):
        load_public_key(pub)


def test_trust_from_files_holds_both_keys_of_a_rotation(tmp_path: Path) -> None:
    _, old_pub, old_kid = generate_keypair(tmp_path / "ops-2025")
    _, new_pub, new_kid = generate_keypair(tmp_path / "ops-2026")
    trust = Trust.from_files([old_pub, str(new_pub), old_pub])  # a key listed twice counts once
    assert len(trust) == 2
    assert old_kid in trust and new_kid in trust
    assert trust.kids() == sorted([old_kid.hex(), new_kid.hex()])
    assert isinstance(trust.keys[new_kid], Ed25519PublicKey)


def test_trust_from_files_stops_at_the_first_bad_file(tmp_path: Path) -> None:
    _, good, _ = generate_keypair(tmp_path / "ops")
    with pytest.raises(KeyFileError, match=rf"{tmp_path / 'gone.pub'}: no such file"):
        Trust.from_files([good, tmp_path / "gone.pub", tmp_path / "also-gone.pub"])


def test_trust_refuses_a_key_filed_under_another_kid() -> None:
    a, b = (Ed25519PrivateKey.generate().public_key() for _ in range(2))
    with pytest.raises(ValueError, match="is not the kid of its key"):
        Trust({key_id(a): b})
    assert len(Trust()) == 0 and Trust().kids() == []
    assert Trust({key_id(a): a}).kids() == [key_id(a).hex()]
