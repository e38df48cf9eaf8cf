"""The signed envelope of remote configuration bundles and commands: COSE_Sign1 with Ed25519.

Wire format (RFC 9052 section 4.2), a CBOR tag 18 around a 4-item array::

    18([
      protected:   bstr .cbor {1: -8,          ; alg: EdDSA
                               3: content type, ; CONFIG_TYPE or COMMAND_TYPE
                               4: kid},         ; 8 bytes, see keys.key_id
      unprotected: {},                          ; ignored: nothing there is signed
      payload:     bstr .cbor {"type": "config" | "command", ...},
      signature:   bstr                         ; 64 bytes of Ed25519
    ])

The signature covers the Sig_structure ``["Signature1", protected, h'', payload]`` (the
external AAD is empty). Payload fields, text keys:

* config: ``version`` (int >= 1), ``issued`` (unix s), ``expires`` (unix s or null),
  ``target`` / ``group`` (text or null, never both), ``config`` (the TOML document as a map);
* command: ``name``, ``args`` (map), ``id`` (text, unique per command), ``issued``,
  ``expires`` (required: a stale command never runs), ``target`` / ``group``.

:func:`open_envelope` checks in a fixed order and raises :class:`Rejected` with the first
reason that applies: the structure (``malformed``), the key (``unknown_key``), the signature
(``bad_signature``), the payload's fields (``malformed``), its type (``wrong_type``), its
address (``wrong_target``), its expiry (``expired``). Nothing the payload says is looked at
before the signature holds. The version order, the schema and command replays are the
applier's business.

Bundles are deterministic CBOR (shortest forms, sorted map keys) and Ed25519 signatures are
deterministic, so the same inputs always give byte-identical bundles. TOML dates and offset
date-times travel as CBOR tags 1004 and 0; a local time of day or a local date-time has no
standard CBOR form, so :func:`sign_config` refuses them and names the key.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets
import time
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from datetime import time as time_of_day
from pathlib import Path
from typing import Any, TypeGuard

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .keys import Trust, key_id

CONFIG_TYPE = "application/vnd.passerelle.config+cbor"
COMMAND_TYPE = "application/vnd.passerelle.command+cbor"
REASONS = ("malformed", "unknown_key", "bad_signature", "wrong_type", "wrong_target", "expired")

COSE_SIGN1_TAG = 18
ALG, CRIT, CONTENT_TYPE, KID = 1, 2, 3, 4  # COSE header labels (RFC 9052 table 2)
EDDSA = -8
SIGNATURE_BYTES = 64
MAX_BUNDLE_BYTES = 256 * 1024  # a street's configuration is a few kB
MAX_NESTING = 32  # a TOML document nests a few levels; this also stops reference cycles
MAX_TIME = 253402300799  # 9999-12-31T23:59:59Z: every time field still prints as a date

_KIND_OF_TYPE = {CONFIG_TYPE: "config", COMMAND_TYPE: "command"}
_TYPE_OF_KIND = {kind: ctype for ctype, kind in _KIND_OF_TYPE.items()}
_COMMON = {"type", "issued", "expires", "target", "group"}
_FIELDS = {"config": _COMMON | {"version", "config"}, "command": _COMMON | {"name", "args", "id"}}
_MAX_VERSION = 2**63 - 1
# Command names become MQTT topic levels (cmd/<name>); cmd/ack is the answer topic.
_COMMAND_NAME = re.compile(r"(?!ack$)[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_COMMAND_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


class Rejected(Exception):
    """A bundle refused: ``reason`` is a snake_case code, ``text`` says why in plain English."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(f"{reason}: {text}")
        self.reason = reason
        self.text = text


@dataclass(frozen=True, slots=True)
class Signed:
    """What a verified bundle says; fields that do not apply to ``kind`` are None (args {})."""

    kind: str
    kid: bytes
    issued: int
    expires: int | None
    target: str | None
    group: str | None
    version: int | None
    config: dict[str, Any] | None
    name: str | None
    args: dict[str, Any]
    id: str | None
    digest: str  # SHA-256 hex of the whole bundle: the same bundle pushed twice is spotted


# --------------------------------------------------------------------------------------------
# Signing


def sign_config(
    config: Mapping[str, Any],
    key: Ed25519PrivateKey,
    *,
    version: int,
    target: str | None = None,
    group: str | None = None,
    expires: int | None = None,
    issued: int | None = None,
) -> bytes:
    """A signed configuration bundle; ValueError naming the argument or key path if unfit."""
    if not _is_int(version) or not 1 <= version <= _MAX_VERSION:
        raise ValueError(f"version must be an integer from 1, not {version!r}")
    issued = _issued(issued)
    _check_address(target, group)
    _check_expiry(expires)
    document = _plain_or_value_error(config, "", allow_none=False)
    payload = {
        "type": "config",
        "version": version,
        "issued": issued,
        "expires": expires,
        "target": target,
        "group": group,
        "config": document,
    }
    return _seal(payload, CONFIG_TYPE, key)


def sign_command(
    name: str,
    args: Mapping[str, Any],
    key: Ed25519PrivateKey,
    *,
    expires: int,
    target: str | None = None,
    group: str | None = None,
    issued: int | None = None,
    id: str | None = None,
) -> bytes:
    """A signed command; ``id`` defaults to 16 random hex digits (the replay guard's key)."""
    if not isinstance(name, str) or not _COMMAND_NAME.fullmatch(name):
        raise ValueError(f"command name {name!r}: expected letters, digits, '.', '_', '-'")
    command_id = secrets.token_hex(8) if id is None else id
    if not isinstance(command_id, str) or not _COMMAND_ID.fullmatch(command_id):
        raise ValueError(f"command id {command_id!r}: expected 1 to 64 letters, digits, . _ -")
    if expires is None:
        raise ValueError("a command needs an expiry, so that a stale one never runs")
    issued = _issued(issued)
    _check_address(target, group)
    _check_expiry(expires)
    payload = {
        "type": "command",
        "name": name,
        "args": _plain_or_value_error(args, "args", allow_none=True),
        "id": command_id,
        "issued": issued,
        "expires": expires,
        "target": target,
        "group": group,
    }
    return _seal(payload, COMMAND_TYPE, key)


def to_be_signed(protected: bytes, payload: bytes) -> bytes:
    """The bytes Ed25519 signs: the COSE Sig_structure of a COSE_Sign1 (RFC 9052 4.4)."""
    return cbor2.dumps(["Signature1", protected, b"", payload], canonical=True)


def _seal(payload: Mapping[str, Any], content_type: str, key: Ed25519PrivateKey) -> bytes:
    protected = cbor2.dumps(
        {ALG: EDDSA, CONTENT_TYPE: content_type, KID: key_id(key.public_key())}, canonical=True
    )
    try:
        body = cbor2.dumps(payload, canonical=True)
    except (cbor2.CBOREncodeError, ValueError, TypeError) as e:
        raise ValueError(f"cannot encode the payload as CBOR: {e}") from None
    signature = key.sign(to_be_signed(protected, body))
    bundle = cbor2.dumps(
        cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, body, signature]), canonical=True
    )
    if len(bundle) > MAX_BUNDLE_BYTES:
        raise ValueError(f"bundle of {len(bundle)} bytes; gateways take at most {MAX_BUNDLE_BYTES}")
    return bundle


def _issued(issued: int | None) -> int:
    if issued is None:
        return int(time.time())
    if not _is_int(issued) or not 0 <= issued <= MAX_TIME:
        raise ValueError(f"issued must be a unix time in seconds, not {issued!r}")
    return issued


def _check_address(target: object, group: object) -> None:
    if target is not None and group is not None:
        raise ValueError("give a target gateway or a group, not both")
    for what, value in (("target", target), ("group", group)):
        if value is not None and (not isinstance(value, str) or not value):
            raise ValueError(f"{what} must be a non-empty string, not {value!r}")


def _check_expiry(expires: object) -> None:
    # An expiry already past is allowed: it is how the gateway's refusal gets tested.
    if expires is not None and (not _is_int(expires) or not 0 <= expires <= MAX_TIME):
        raise ValueError(f"expires must be a unix time in seconds, not {expires!r}")


# --------------------------------------------------------------------------------------------
# Opening


def open_envelope(
    data: bytes,
    trust: Trust,
    *,
    kind: str,
    gateway_id: str,
    groups: Sequence[str],
    now: float,
) -> Signed:
    """The verified content of a bundle meant for this gateway; :class:`Rejected` otherwise.

    ``kind`` is what the topic expects ("config" or "command"). Whatever the bytes, this
    raises nothing but :class:`Rejected`.
    """
    if kind not in _TYPE_OF_KIND:
        raise ValueError(f"kind must be 'config' or 'command', not {kind!r}")
    if isinstance(groups, str):
        raise TypeError("groups must be a sequence of group names, not one string")
    if not isinstance(data, bytes | bytearray | memoryview):
        raise Rejected("malformed", f"the bundle is {type(data).__name__}, not bytes")
    data = bytes(data)
    protected, body, signature, kid, content_type = _structure(data)

    public_key = trust.keys.get(kid)
    if public_key is None:
        trusted = ", ".join(trust.kids()) or "none"
        raise Rejected("unknown_key", f"key {kid.hex()} is not trusted here (trusted: {trusted})")
    try:
        public_key.verify(signature, to_be_signed(protected, body))
    except InvalidSignature:
        raise Rejected(
            "bad_signature", f"the signature does not verify with key {kid.hex()}"
        ) from None

    payload = _fields(_decode_one(body, "the payload", text_keys=True), content_type)
    if payload["type"] != kind:
        raise Rejected("wrong_type", f"a {payload['type']} bundle where a {kind} is expected")
    target, group = payload["target"], payload["group"]
    if target is not None and target != gateway_id:
        raise Rejected("wrong_target", f"target is gateway {target!r}, this is {gateway_id!r}")
    if group is not None and not any(group == g for g in groups):
        raise Rejected("wrong_target", f"group {group!r} is not one of this gateway's groups")
    expires = payload["expires"]
    if expires is not None and now >= expires:
        when = datetime.fromtimestamp(expires, UTC).isoformat().replace("+00:00", "Z")
        raise Rejected("expired", f"expired at {when} (unix {expires}); the clock reads {now:.0f}")
    return Signed(
        kind=payload["type"],
        kid=kid,
        issued=payload["issued"],
        expires=expires,
        target=target,
        group=group,
        version=payload.get("version"),
        config=payload.get("config"),
        name=payload.get("name"),
        args=payload.get("args", {}),
        id=payload.get("id"),
        digest=hashlib.sha256(data).hexdigest(),
    )


def _structure(data: bytes) -> tuple[bytes, bytes, bytes, bytes, str]:
    """(protected, payload, signature, kid, content type) of a well-formed COSE_Sign1."""
    if len(data) > MAX_BUNDLE_BYTES:
        raise Rejected("malformed", f"{len(data)} bytes, more than {MAX_BUNDLE_BYTES}")
    item = _decode_one(data, "the bundle")
    if not isinstance(item, cbor2.CBORTag) or item.tag != COSE_SIGN1_TAG:
        raise Rejected("malformed", "not a COSE_Sign1 message (CBOR tag 18)")
    parts = item.value
    if not isinstance(parts, list | tuple) or len(parts) != 4:
        raise Rejected("malformed", "COSE_Sign1 must be an array of 4 items")
    protected, unprotected, body, signature = parts
    if not isinstance(protected, bytes) or not protected:
        raise Rejected("malformed", "the protected header must be a non-empty byte string")
    if not isinstance(unprotected, Mapping):
        raise Rejected("malformed", "the unprotected header must be a map")
    if not isinstance(body, bytes):
        raise Rejected("malformed", "the payload must be a byte string (detached: not supported)")
    if not isinstance(signature, bytes) or len(signature) != SIGNATURE_BYTES:
        raise Rejected("malformed", f"the signature must be {SIGNATURE_BYTES} bytes of Ed25519")
    header = _decode_one(protected, "the protected header")
    if not isinstance(header, Mapping):
        raise Rejected("malformed", "the protected header must hold a CBOR map")
    alg = header.get(ALG)
    if not _is_int(alg) or alg != EDDSA:
        raise Rejected("malformed", f"protected header alg (1) is {alg!r}, expected -8 (EdDSA)")
    if CRIT in header:
        raise Rejected("malformed", "the protected header marks parameters critical (2)")
    kid = header.get(KID)
    if kid is None and KID in unprotected:
        raise Rejected("malformed", "the kid (4) must be in the protected header")
    if not isinstance(kid, bytes):
        raise Rejected("malformed", f"protected header kid (4) is {kid!r}, expected bytes")
    content_type = header.get(CONTENT_TYPE)
    if not isinstance(content_type, str) or content_type not in _KIND_OF_TYPE:
        raise Rejected(
            "malformed",
            f"content type (3) is {content_type!r}, expected {CONFIG_TYPE!r} or {COMMAND_TYPE!r}",
        )
    return protected, body, signature, kid, content_type


def _decode_one(data: bytes, what: str, *, text_keys: bool = False) -> Any:
    """The one CBOR item that fills ``data`` exactly, duplicate map keys refused."""
    stream = io.BytesIO(data)
    # Built outside the try: a cbor2 older than 6.1 (no such options) must fail loudly here,
    # not turn every bundle into "malformed".
    decoder = cbor2.CBORDecoder(stream, allow_duplicate_keys=False, strict_hashable_types=text_keys)
    try:
        item = decoder.decode()
    except Exception as e:  # cbor2 also chains ValueError, OverflowError... from tag decoders
        raise Rejected("malformed", f"{what} is not valid CBOR ({e})") from None
    if stream.tell() != len(data):
        raise Rejected("malformed", f"{what} has {len(data) - stream.tell()} bytes after its end")
    return item


def _fields(payload: Any, content_type: str) -> dict[str, Any]:
    """The payload's fields, every one checked; absent optional fields read as None."""
    if not isinstance(payload, Mapping):
        raise Rejected("malformed", f"the payload is {_kind(payload)}, not a map")
    kind = payload.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise Rejected("malformed", f"payload field 'type' is {kind!r}: 'config' or 'command'")
    if kind != _KIND_OF_TYPE[content_type]:
        raise Rejected("malformed", f"payload field 'type' {kind!r} contradicts {content_type!r}")
    unknown = sorted(set(payload) - _FIELDS[kind])
    if unknown:
        raise Rejected("malformed", f"payload field {unknown[0]!r} is not part of a {kind}")
    out: dict[str, Any] = {"type": kind}
    out["issued"] = _time_field(payload, "issued", required=True)
    out["expires"] = _time_field(payload, "expires", required=kind == "command")
    for name in ("target", "group"):
        value = payload.get(name)
        if value is not None and (not isinstance(value, str) or not value):
            raise Rejected("malformed", f"payload field {name!r} is {_kind(value)}, not a name")
        out[name] = value
    if out["target"] is not None and out["group"] is not None:
        raise Rejected("malformed", "payload fields 'target' and 'group' are both set")
    if kind == "config":
        version = payload.get("version")
        if not _is_int(version) or not 1 <= version <= _MAX_VERSION:
            raise Rejected("malformed", f"payload field 'version' is {version!r}, not an int >= 1")
        out["version"] = version
        out["config"] = _plain_or_rejected(payload.get("config"), "config", allow_none=False)
    else:
        for name, pattern in (("name", _COMMAND_NAME), ("id", _COMMAND_ID)):
            value = payload.get(name)
            if not isinstance(value, str) or not pattern.fullmatch(value):
                raise Rejected("malformed", f"payload field {name!r} is {value!r}, not a name")
            out[name] = value
        out["args"] = _plain_or_rejected(payload.get("args", {}), "args", allow_none=True)
    return out


def _time_field(payload: Mapping[str, Any], name: str, *, required: bool) -> int | None:
    value = payload.get(name)
    if value is None and not required:
        return None
    if not _is_int(value) or not 0 <= value <= MAX_TIME:
        raise Rejected("malformed", f"payload field {name!r} is {value!r}, not a unix time")
    return value


# --------------------------------------------------------------------------------------------
# Values: what a TOML document (or a command's arguments) may hold


class _Unfit(Exception):
    def __init__(self, path: str, why: str) -> None:
        self.path, self.why = path, why


def _plain_or_value_error(value: object, root: str, *, allow_none: bool) -> dict[str, Any]:
    try:
        return _plain_table(value, root, allow_none)
    except _Unfit as u:
        raise ValueError(f"{u.path or '<document>'}: {u.why}") from None


def _plain_or_rejected(value: object, root: str, *, allow_none: bool) -> dict[str, Any]:
    try:
        return _plain_table(value, root, allow_none)
    except _Unfit as u:
        raise Rejected("malformed", f"payload {u.path}: {u.why}") from None


def _plain_table(value: object, root: str, allow_none: bool) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise _Unfit(root, f"is {_kind(value)}, not a table")
    table = _plain(value, root, allow_none, 0)
    assert isinstance(table, dict)
    return table


def _plain(value: object, path: str, allow_none: bool, depth: int) -> Any:
    """``value`` as plain dicts and lists of TOML scalars, or :class:`_Unfit` naming the path."""
    if depth > MAX_NESTING:
        raise _Unfit(path, f"nests deeper than {MAX_NESTING} levels")
    if isinstance(value, Mapping):
        table = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _Unfit(path, f"has a key {k!r} that is not a string")
            table[k] = _plain(v, f"{path}.{k}" if path else k, allow_none, depth + 1)
        return table
    if isinstance(value, list | tuple):
        return [_plain(v, f"{path}[{i}]", allow_none, depth + 1) for i, v in enumerate(value)]
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            raise _Unfit(path, "is a local date-time; add a UTC offset (Z or +01:00) to sign it")
        return value
    if isinstance(value, time_of_day):
        raise _Unfit(
            path,
            f"is a time of day ({value}), which CBOR has no standard tag for; "
            f'write it as a string like "{value:%H:%M}"',
        )
    if isinstance(value, bool | int | float | str | date) or (value is None and allow_none):
        return value
    raise _Unfit(path, f"is {_kind(value)}: not a string, number, boolean, date, list or table")


def _kind(value: object) -> str:
    return "nothing (null)" if value is None else f"a {type(value).__name__}"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


# --------------------------------------------------------------------------------------------
# Operator inputs


def parse_duration(text: str) -> float:
    """Seconds in a duration like "90s", "15m", "2h", "7d" or "1h30m"; ValueError otherwise."""
    m = _DURATION.fullmatch(text.strip())
    if m is None or not any(m.groups()):
        raise ValueError(
            f"duration {text!r}: expected a count and unit, like 90s, 15m, 2h, 7d, 1h30m"
        )
    days, hours, minutes, seconds = (int(g or 0) for g in m.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total == 0:
        raise ValueError(f"duration {text!r} is zero")
    return float(total)


def read_toml_config(path: str | Path) -> dict[str, Any]:
    """The TOML document at ``path``, to sign; ValueError naming the file (and line) otherwise."""
    p = Path(path)
    try:
        text = p.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ValueError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{p}: is a directory, not a TOML file") from None
    except OSError as e:
        raise ValueError(f"{p}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{p}: not UTF-8 text (byte {e.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{p}: not valid TOML: {e}") from None
