"""Operator keys: Ed25519 key files, and the set of operator keys a gateway trusts.

An operator signs configuration bundles and commands with an Ed25519 private key: PEM,
PKCS#8, unencrypted, protected like an SSH key by its file mode (0600). Gateways list the
matching public keys (PEM SubjectPublicKeyInfo, the ``.pub`` file written next to the private
key) under ``[control] operator_keys``. A gateway trusts several keys at once so that a key
can be rotated: add the new public key, sign with the new key, then drop the old one.

A key is named by its *kid*, carried in the protected header of every bundle so a gateway
picks the one key to verify with::

    kid = SHA-256(raw 32-byte Ed25519 public key)[:8]
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KID_BYTES = 8
PRIVATE_MODE = 0o600
PUBLIC_MODE = 0o644

_NO_KEYS: Mapping[bytes, Ed25519PublicKey] = MappingProxyType({})


class KeyFileError(ValueError):
    """A key file that cannot be used; the message names the file and what is wrong with it."""


def key_id(public_key: Ed25519PublicKey) -> bytes:
    """The 8-byte kid: the first 8 bytes of SHA-256 over the raw 32-byte public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).digest()[:KID_BYTES]


def generate_keypair(out: str | Path, *, overwrite: bool = False) -> tuple[Path, Path, bytes]:
    """Write a new private key to ``out`` (0600) and its public key to ``out.pub`` (0644).

    Returns ``(private path, public path, kid)``. Refuses, with :class:`KeyFileError`, to
    replace an existing file unless ``overwrite``; either way the private key is never
    readable by others, not even for an instant: the file is created with mode 0600. A
    missing directory is created, mode 0700.
    """
    priv_path = Path(out)
    pub_path = Path(f"{out}.pub")
    missing = [d for d in priv_path.parents if not d.exists()]
    for directory in reversed(missing):
        try:  # new directories for keys are the owner's alone (mkdir(parents=True) is not)
            directory.mkdir(mode=0o700)
        except OSError as e:
            raise KeyFileError(f"{directory}: cannot create directory: {e.strerror}") from None
    key = Ed25519PrivateKey.generate()
    priv_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    pub_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    if overwrite:
        # Both written aside first, so a failure while writing leaves the old pair whole.
        staged: list[Path] = []
        try:
            staged.append(_write_new(_aside(priv_path), priv_pem, PRIVATE_MODE))
            staged.append(_write_new(_aside(pub_path), pub_pem, PUBLIC_MODE))
            _replace(staged[0], priv_path)
            _replace(staged[1], pub_path)
        finally:
            for tmp in staged:
                tmp.unlink(missing_ok=True)
    else:
        _write_new(priv_path, priv_pem, PRIVATE_MODE)
        try:
            _write_new(pub_path, pub_pem, PUBLIC_MODE)
        except KeyFileError:
            priv_path.unlink(missing_ok=True)  # ours: created just above
            raise
    return priv_path, pub_path, key_id(key.public_key())


def _aside(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _replace(tmp: Path, final: Path) -> None:
    try:
        os.replace(tmp, final)
    except OSError as e:
        raise KeyFileError(f"{final}: cannot write: {e.strerror}") from None


def _write_new(path: Path, data: bytes, mode: int) -> Path:
    """Create ``path`` (never an existing file or symlink) with ``mode`` from the first byte."""
    try:
        # O_EXCL: fails on anything already there, a dangling symlink included.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise KeyFileError(f"{path}: already exists; refusing to overwrite a key") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot create: {e.strerror}") from None
    try:
        os.fchmod(fd, mode)  # the umask only removes bits; make the mode exactly what we say
        with os.fdopen(fd, "wb", closefd=False) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        path.unlink(missing_ok=True)
        raise KeyFileError(f"{path}: cannot write: {e.strerror}") from None
    finally:
        os.close(fd)
    return path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in a PEM file; :class:`KeyFileError` naming the file otherwise."""
    p = Path(path)
    data = _read_pem(p)
    if b"PUBLIC KEY-----" in data:
        raise KeyFileError(f"{p}: holds a public key; signing needs the private key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise KeyFileError(
            f"{p}: the private key is encrypted with a passphrase; passerelle uses "
            "unencrypted keys protected by their file mode (0600)"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{p}: not a usable PEM private key ({e})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{p}: holds {_kind(key)} key, not an Ed25519 key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in a PEM file (a ``.pub``); :class:`KeyFileError` otherwise."""
    p = Path(path)
    data = _read_pem(p)
    if b"PRIVATE KEY-----" in data:
        # An operator's private key must never be copied onto gateways in the street.
        raise KeyFileError(
            f"{p}: holds a private key; give the gateway the public key (the .pub file)"
        )
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise KeyFileError(f"{p}: not a usable PEM public key ({e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{p}: holds {_kind(key)} key, not an Ed25519 key")
    return key


def _read_pem(p: Path) -> bytes:
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise KeyFileError(f"{p}: is a directory, not a key file") from None
    except OSError as e:
        raise KeyFileError(f"{p}: cannot read: {e.strerror}") from None
    if b"-----BEGIN " not in data:
        raise KeyFileError(f"{p}: not a PEM key file (no '-----BEGIN' line)")
    return data


def _kind(key: object) -> str:
    for family, name in _FAMILIES:
        if isinstance(key, family):
            return name
    return f"a {type(key).__name__}"


_FAMILIES: tuple[tuple[tuple[type, ...], str], ...] = (
    ((rsa.RSAPrivateKey, rsa.RSAPublicKey), "an RSA"),
    ((ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey), "an EC"),
    ((dsa.DSAPrivateKey, dsa.DSAPublicKey), "a DSA"),
    ((ed448.Ed448PrivateKey, ed448.Ed448PublicKey), "an Ed448"),
)


class Trust:
    """The operator public keys a gateway accepts, by kid (several, so keys can rotate)."""

    def __init__(self, keys: Mapping[bytes, Ed25519PublicKey] = _NO_KEYS) -> None:
        self.keys: dict[bytes, Ed25519PublicKey] = {}
        for kid, key in keys.items():
            if key_id(key) != kid:
                raise ValueError(f"kid {kid.hex()} is not the kid of its key ({key_id(key).hex()})")
            self.keys[kid] = key

    @classmethod
    def of(cls, *public_keys: Ed25519PublicKey) -> Trust:
        """Trust these keys, each under its own kid."""
        return cls({key_id(k): k for k in public_keys})

    @classmethod
    def from_files(cls, paths: Iterable[str | Path]) -> Trust:
        """Trust the public keys in these PEM files; :class:`KeyFileError` on the first bad one."""
        return cls.of(*(load_public_key(p) for p in paths))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, kid: object) -> bool:
        return kid in self.keys

    def kids(self) -> list[str]:
        """The trusted kids in hex, sorted: for logs and the ``state`` message."""
        return sorted(kid.hex() for kid in self.keys)
