"""The gateway's configuration: one TOML file, a typed schema, and errors that all show at once.

The schema is a tree of msgspec Structs (``forbid_unknown_fields``, so a typo is an error, not
a silently ignored key). msgspec stops at the first error, which is the wrong behaviour for
``passerelle check-config`` on a cabinet reached over a slow link: the operator should fix
everything in one go. So validation is two passes over the raw TOML dict:

1. a structural pass (:func:`_check_struct`) walks the dict against the Struct types, reports
   unknown and missing keys, and converts each leaf on its own with ``msgspec.convert``, so one
   bad value does not hide the next; what converts is kept in a *cleaned* dict;
2. a semantic pass (:func:`_check_semantics`) on the cleaned dict: relative paths, files that
   must exist, the broker URL, duplicate source names, cross-field rules.

Only when both passes found nothing is the final :class:`Config` built, with ``msgspec.convert``
on the cleaned dict (which re-checks every constraint, as a safety net for the collector).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import stat
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta

from .cabinet import config as cabinet_config
from .cabinet.config import GpioSourceConfig, I2cSourceConfig
from .lighting import model as lighting_model
from .lighting.model import LightingConfig
from .lorawan import config as lorawan_config
from .lorawan.config import LorawanConfig, RadioConfig
from .modbus import config as modbus_config
from .modbus.config import ModbusRtuSourceConfig, ModbusTcpSourceConfig
from .model import check_name
from .policy import config as policy_config
from .policy.config import PolicyConfig
from .schema import (
    FilePath,
    GatewayId,
    PositiveFloat,
    PositiveInt,
    Section,
    SourceBase,
)
from .sources import SCHEDULED_TYPES

__all__ = [
    "DEFAULT_PATH",
    "Config",
    "ControlConfig",
    "ConfigError",
    "CounterSourceConfig",
    "EnvSourceConfig",
    "GatewayConfig",
    "LogConfig",
    "SourceConfig",
    "StoreConfig",
    "UplinkConfig",
    "key_file_warnings",
    "load",
    "parse",
    "summary",
    "to_dict",
]

DEFAULT_PATH = "/etc/passerelle/passerelle.toml"


class GatewayConfig(Section, frozen=True):
    id: GatewayId
    data_dir: FilePath = "/var/lib/passerelle"


class UplinkConfig(Section, frozen=True):
    url: str
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    allow_plaintext: bool = False
    protocol: Literal[5, 3] = 5
    client_id: Annotated[str, Meta(min_length=1, max_length=65535)] | None = None
    username: Annotated[str, Meta(min_length=1)] | None = None
    password_file: FilePath | None = None
    keepalive: PositiveInt = 30
    batch_records: Annotated[int, Meta(ge=1, le=4096)] = 250
    batch_age: Annotated[float, Meta(ge=0, le=3600)] = 60.0
    compression: Literal["zlib", "none"] = "zlib"
    max_rate: PositiveFloat = 5000.0
    max_inflight: Annotated[int, Meta(ge=1, le=64)] = 4
    backoff_initial: PositiveFloat = 1.0
    backoff_max: PositiveFloat = 300.0
    state_interval: PositiveFloat = 30.0

    @property
    def host(self) -> str:
        return _split_url(self.url)[1]

    @property
    def port(self) -> int:
        return _split_url(self.url)[2]

    @property
    def tls(self) -> bool:
        return _split_url(self.url)[0] == "mqtts"


class StoreConfig(Section, frozen=True):
    max_bytes: Annotated[int, Meta(ge=1048576)] = 268435456
    ttl: PositiveFloat = 2592000.0
    max_delay: Annotated[float, Meta(ge=0, le=0.1)] = 0.05
    hold: Annotated[float, Meta(ge=0, le=3600)] = 0.0


class ControlConfig(Section, frozen=True):
    """Remote configuration and commands, signed by an operator (COSE_Sign1, Ed25519).

    No operator key: remote control is off (nothing is subscribed), the local file rules.
    """

    operator_keys: list[FilePath] = msgspec.field(default_factory=list)  # PEM Ed25519 public
    groups: list[GatewayId] = msgspec.field(default_factory=list)  # fleets this gateway is in
    keep_versions: Annotated[int, Meta(ge=1, le=100)] = 5
    # s a new configuration must run well (uplink connected, sources polling) to commit.
    health_window: Annotated[float, Meta(ge=1, le=3600)] = 30.0


class LogConfig(Section, frozen=True):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["text", "json"] = "text"
    burst: PositiveInt = 5
    per: PositiveFloat = 60.0


class CounterSourceConfig(SourceBase, tag="sim.counter", frozen=True):
    start: int = 0


class EnvSourceConfig(SourceBase, tag="sim.env", frozen=True):
    seed: int = 0
    values: Annotated[int, Meta(ge=1, le=64)] = 3


SourceConfig = (
    CounterSourceConfig
    | EnvSourceConfig
    | I2cSourceConfig
    | GpioSourceConfig
    | ModbusRtuSourceConfig
    | ModbusTcpSourceConfig
)
# Source types with a semantic pass of their own: type -> check(src, path, errors)
_SOURCE_CHECKS = {
    "i2c": cabinet_config.check,
    "gpio": cabinet_config.check,
    "modbus-rtu": modbus_config.check,
    "modbus-tcp": modbus_config.check,
}


class Config(Section, frozen=True):
    gateway: GatewayConfig
    uplink: UplinkConfig
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    log: LogConfig = msgspec.field(default_factory=LogConfig)
    sources: list[SourceConfig] = msgspec.field(default_factory=list)
    radio: RadioConfig | None = None
    lorawan: LorawanConfig = msgspec.field(default_factory=LorawanConfig)
    policy: PolicyConfig = msgspec.field(default_factory=PolicyConfig)
    lighting: LightingConfig | None = None
    control: ControlConfig = msgspec.field(default_factory=ControlConfig)


Errors = list[tuple[str, str]]  # (dotted path, reason)


class ConfigError(Exception):
    """Every problem found in a configuration, as (dotted path, reason) pairs."""

    def __init__(self, errors: Errors) -> None:
        self.errors = errors
        super().__init__("\n".join(f"{path}: {reason}" for path, reason in errors))


# --------------------------------------------------------------------------------------------
# Loading


def load(path: str | os.PathLike[str] = DEFAULT_PATH) -> Config:
    """Read, validate and return the configuration at ``path``; raise :class:`ConfigError`."""
    data, base_dir = read_toml(path)
    return parse(data, base_dir)


def read_toml(path: str | os.PathLike[str]) -> tuple[dict[str, Any], Path]:
    """The decoded TOML document and its directory; :class:`ConfigError` if unreadable."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError([("<file>", f"no such file '{p}'")]) from None
    except IsADirectoryError:
        raise ConfigError([("<file>", f"'{p}' is a directory")]) from None
    except OSError as e:
        raise ConfigError([("<file>", f"cannot read '{p}': {e.strerror}")]) from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError([("<toml>", f"not UTF-8 text (byte {e.start})")]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([("<toml>", _toml_reason(str(e)))]) from None
    # absolute(), not resolve(): paths in errors should read like the operator wrote them.
    return data, p.absolute().parent


def parse(data: dict[str, Any], base_dir: str | os.PathLike[str]) -> Config:
    """Validate an already-decoded TOML document; relative paths are taken from ``base_dir``."""
    errors: Errors = []
    cleaned = _check_struct(data, Config, "", errors)
    if isinstance(cleaned, dict):
        _check_semantics(cleaned, Path(base_dir), errors)
    if errors:
        errors.sort(key=_error_order)
        raise ConfigError(errors)
    try:
        return msgspec.convert(cleaned, Config)
    except msgspec.ValidationError as e:  # the collector missed something: still say where
        raise ConfigError([("<config>", str(e))]) from None


def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain builtins that :func:`parse` turns back into ``cfg``.

    Unset optional keys are left out rather than written as None, so the result can also be
    written as TOML (which has no null).
    """
    out: dict[str, Any] = _drop_none(msgspec.to_builtins(cfg))
    return out


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


# --------------------------------------------------------------------------------------------
# Pass 1: structure and types, every error collected

_BAD: Any = object()  # a value that failed; the key is left out of the cleaned dict


def _check_struct(raw: Any, cls: type[msgspec.Struct], path: str, errors: Errors) -> Any:
    if not isinstance(raw, dict):
        errors.append((path or "<toml>", f"expected a table, got {_kind(raw)}"))
        return _BAD
    fields = {f.encode_name: f for f in msgspec.structs.fields(cls)}
    tag_field = cls.__struct_config__.tag_field
    out: dict[str, Any] = {}
    if tag_field is not None:
        out[tag_field] = cls.__struct_config__.tag
    for key in raw:
        if key not in fields and key != tag_field:
            errors.append((_join(path, key), _unknown_key(key, list(fields))))
    for name, f in fields.items():
        sub = _join(path, name)
        if name in raw:
            value = _check_value(raw[name], f.type, sub, errors)
        elif f.required:
            noun = "section" if _is_struct(_strip(f.type)) else "key"
            errors.append((sub, f"required {noun} missing"))
            continue
        elif _is_struct(_strip(f.type)):
            value = _check_struct({}, _strip(f.type), sub, errors)  # a section's defaults
        elif f.default_factory is not msgspec.NODEFAULT:
            value = f.default_factory()
        else:
            value = f.default
        if value is not _BAD:
            out[name] = value
    return out


def _check_value(value: Any, tp: Any, path: str, errors: Errors) -> Any:
    base = _strip(tp)
    if _is_struct(base):
        return _check_struct(value, base, path, errors)
    optional = _optional_struct(base)
    if optional is not None and value is not None:
        return _check_struct(value, optional, path, errors)
    union = _tagged_union(base)
    if union is not None and value is not None:
        return _check_variant(value, union, path.rpartition(".")[2], path, errors)
    if get_origin(base) is dict and _is_struct(get_args(base)[1]):
        if not isinstance(value, dict):
            errors.append((path, f"expected a table of tables, got {_kind(value)}"))
            return _BAD
        item = get_args(base)[1]
        checked = {k: _check_struct(v, item, _join(path, k), errors) for k, v in value.items()}
        return {k: v for k, v in checked.items() if v is not _BAD}
    item_struct = _struct_list(base)
    if item_struct is not None:
        if not isinstance(value, list):
            name = path.rpartition(".")[2]
            errors.append((path, f"expected a list of tables ([[{name}]]), got {_kind(value)}"))
            return _BAD
        return [
            None if (r := _check_struct(item, item_struct, f"{path}[{i}]", errors)) is _BAD else r
            for i, item in enumerate(value)
        ]
    variants = _tagged_list(base)
    if variants is not None:
        if not isinstance(value, list):
            name = path.rpartition(".")[2]
            errors.append((path, f"expected a list of tables ([[{name}]]), got {_kind(value)}"))
            return _BAD
        # Failed items stay as None so later passes still report the operator's indices.
        noun = path.rpartition(".")[2].removesuffix("s")
        return [
            None
            if (r := _check_variant(item, variants, noun, f"{path}[{i}]", errors)) is _BAD
            else r
            for i, item in enumerate(value)
        ]
    try:
        converted = msgspec.convert(value, tp)
    except msgspec.ValidationError as e:
        errors.append(_rewrite(str(e), tp, value, path))
        return _BAD
    if isinstance(converted, float) and not math.isfinite(converted):
        errors.append((path, "must be a finite number"))  # TOML allows inf and nan
        return _BAD
    return converted


def _check_variant(
    item: Any,
    variants: dict[str, type[msgspec.Struct]],
    noun: str,
    path: str,
    errors: Errors,
) -> Any:
    if not isinstance(item, dict):
        errors.append((path, f"expected a table, got {_kind(item)}"))
        return _BAD
    tag_field = next(iter(variants.values())).__struct_config__.tag_field
    assert tag_field is not None
    known = ", ".join(sorted(variants))
    if tag_field not in item:
        errors.append((_join(path, tag_field), f"required key missing (one of: {known})"))
        return _BAD
    tag = item[tag_field]
    if not isinstance(tag, str) or tag not in variants:
        errors.append((_join(path, tag_field), f"unknown {noun} type {tag!r} (known: {known})"))
        return _BAD
    return _check_struct(item, variants[tag], path, errors)


def _strip(tp: Any) -> Any:
    return get_args(tp)[0] if get_origin(tp) is Annotated else tp


def _is_struct(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, msgspec.Struct)


def _tagged_union(tp: Any) -> dict[str, type[msgspec.Struct]] | None:
    """tag -> Struct for ``A | B [| None]`` of tagged Structs (``[radio]``), else None."""
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    members = [m for m in get_args(tp) if m is not type(None)]
    if not all(_is_struct(m) and m.__struct_config__.tag is not None for m in members):
        return None
    return {m.__struct_config__.tag: m for m in members}


def _optional_struct(tp: Any) -> type[msgspec.Struct] | None:
    """``S`` for ``S | None`` of an untagged Struct (``[lighting]``), else None."""
    if get_origin(tp) not in (Union, types.UnionType):
        return None
    members = [m for m in get_args(tp) if m is not type(None)]
    if len(members) == 1 and _is_struct(members[0]) and members[0].__struct_config__.tag is None:
        return members[0]
    return None


def _struct_list(tp: Any) -> type[msgspec.Struct] | None:
    """The item Struct of ``list[S]`` for an untagged Struct ``S``, else None."""
    if get_origin(tp) is not list:
        return None
    item = get_args(tp)[0]
    if _is_struct(item) and item.__struct_config__.tag is None:
        return item
    return None


def _tagged_list(tp: Any) -> dict[str, type[msgspec.Struct]] | None:
    """tag -> Struct for ``list[A | B]`` of tagged Structs (a tagged union), else None."""
    if get_origin(tp) is not list:
        return None
    item = get_args(tp)[0]
    members = get_args(item) if get_origin(item) in (Union, types.UnionType) else (item,)
    if not all(_is_struct(m) and m.__struct_config__.tag is not None for m in members):
        return None
    return {m.__struct_config__.tag: m for m in members}


# --------------------------------------------------------------------------------------------
# Pass 2: meaning (runs on the cleaned dict: a key is there only if its value converted)

_PATH_KEYS = {
    "gateway": ("data_dir",),
    "uplink": ("ca_file", "cert_file", "key_file", "password_file"),
}
_TLS_FILES = {
    "cert_file": "required for mqtts:// (client certificate for mutual TLS)",
    "key_file": "required for mqtts:// (private key of the client certificate)",
}


def _check_semantics(c: dict[str, Any], base_dir: Path, errors: Errors) -> None:
    for section, keys in _PATH_KEYS.items():
        sec = c.get(section)
        if isinstance(sec, dict):
            for key in keys:
                if isinstance(sec.get(key), str):
                    sec[key] = os.path.normpath(base_dir / sec[key])

    gw = c.get("gateway")
    gw = gw if isinstance(gw, dict) else {}
    data_dir = gw.get("data_dir")
    if data_dir is not None and os.path.exists(data_dir) and not os.path.isdir(data_dir):
        errors.append(("gateway.data_dir", f"'{data_dir}' is not a directory"))

    up = c.get("uplink")
    if isinstance(up, dict):
        _check_uplink(up, errors)
        if up.get("client_id") is None and "id" in gw:
            up["client_id"] = gw["id"]

    lw = c.get("lorawan")
    if isinstance(lw, dict):
        lorawan_config.check(lw, errors)

    pol = c.get("policy")
    if isinstance(pol, dict):
        policy_config.check(pol, "policy", errors)

    seen: dict[str, int] = {}
    for i, src in enumerate(c.get("sources") or ()):
        if not isinstance(src, dict):
            continue
        for key in ("name", "device"):
            value = src.get(key)
            if isinstance(value, str):
                try:
                    check_name(value)
                except ValueError as e:
                    errors.append((f"sources[{i}].{key}", str(e)))
                    src.pop(key)
        name = src.get("name")
        if name is None:
            continue
        if name in seen:
            reason = f"duplicate source name {name!r} (also sources[{seen[name]}])"
            errors.append((f"sources[{i}].name", reason))
        else:
            seen[name] = i
        if src.get("device") is None and "device" in src:
            src["device"] = name
        source_check = _SOURCE_CHECKS.get(src.get("type", ""))
        if source_check is not None:
            source_check(src, f"sources[{i}]", errors)
        if src.get("night_interval") is not None and src.get("type") not in SCHEDULED_TYPES:
            errors.append((f"sources[{i}].night_interval",
                           f"a {src.get('type')} source polls at a fixed interval; "
                           f"night_interval applies to: {', '.join(sorted(SCHEDULED_TYPES))}"))

    light = c.get("lighting")
    if isinstance(light, dict):
        lighting_model.check(light, "lighting", errors, _lighting_known(c))

    ctl = c.get("control")
    if isinstance(ctl, dict):
        _check_control(ctl, base_dir, errors)


def _check_control(ctl: dict[str, Any], base_dir: Path, errors: Errors) -> None:
    """Operator keys must be readable Ed25519 public keys: a gateway that trusts nobody by
    mistake would silently refuse every push."""
    from .control.keys import KeyFileError, load_public_key

    keys = ctl.get("operator_keys")
    if not isinstance(keys, list):
        return
    for i, key in enumerate(keys):
        if not isinstance(key, str):
            continue
        keys[i] = path = os.path.normpath(base_dir / key)
        try:
            load_public_key(path)
        except KeyFileError as e:
            errors.append((f"control.operator_keys[{i}]", str(e)))
    groups = ctl.get("groups")
    if isinstance(groups, list) and len(set(groups)) != len(groups):
        errors.append(("control.groups", "a group is listed twice"))


def _lighting_known(c: dict[str, Any]) -> dict[str, Any]:
    """What the lighting section may refer to in other sections."""
    lw = c.get("lorawan") if isinstance(c.get("lorawan"), dict) else {}
    devices = {d["name"]: d.get("class", "A") for d in lw.get("devices") or () if d and "name" in d}
    groups = {g["name"]: list(g.get("devices") or ())
              for g in lw.get("multicast") or () if g and "name" in g}
    relays = {f"{s['name']}/{r['name']}"
              for s in c.get("sources") or () if s and s.get("type") == "gpio" and "name" in s
              for r in s.get("relays") or () if r and "name" in r}
    return {"devices": devices, "multicast": groups, "relays": relays}


def _check_uplink(up: dict[str, Any], errors: Errors) -> None:
    if isinstance(up.get("url"), str):
        try:
            scheme, _, _ = _split_url(up["url"])
        except ValueError as e:
            errors.append(("uplink.url", str(e)))
        else:
            # `is False`: if allow_plaintext itself was invalid it is already reported.
            if scheme == "mqtt" and up.get("allow_plaintext") is False:
                errors.append(
                    (
                        "uplink.url",
                        "plaintext MQTT refused: set uplink.allow_plaintext = true (labs only)",
                    )
                )
            if scheme == "mqtts":
                for key, reason in _TLS_FILES.items():
                    if key in up and up[key] is None:
                        errors.append((f"uplink.{key}", reason))
    for key in _PATH_KEYS["uplink"]:
        if isinstance(up.get(key), str):
            problem = _file_problem(up[key])
            if problem:
                errors.append((f"uplink.{key}", problem))
    lo, hi = up.get("backoff_initial"), up.get("backoff_max")
    if lo is not None and hi is not None and hi < lo:
        errors.append(("uplink.backoff_max", f"must be >= backoff_initial ({_num(lo)})"))


def _split_url(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of a broker URL; ValueError with an operator-facing reason."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in ("mqtts", "mqtt"):
        got = f"unsupported scheme '{parts.scheme}'" if parts.scheme else "no scheme"
        raise ValueError(f"{got}: expected mqtts://host[:port]")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            "credentials in the URL refused: use uplink.username and uplink.password_file"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("expected mqtts://host[:port], with no path or query")
    if not parts.hostname:
        raise ValueError("missing broker host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("port must be a number in 1..65535") from None
    if port == 0:
        raise ValueError("port must be a number in 1..65535")
    return scheme, parts.hostname, port or (8883 if scheme == "mqtts" else 1883)


def _file_problem(path: str) -> str | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return f"no such file '{path}'"
    except OSError as e:
        return f"cannot read '{path}': {e.strerror}"
    if not stat.S_ISREG(st.st_mode):
        return f"'{path}' is not a regular file"
    if not os.access(path, os.R_OK):
        return f"'{path}' is not readable by this user"
    return None


def key_file_warnings(cfg: Config) -> list[str]:
    """Notes (not errors) about secrets other users can read: the key and the password file.

    Not an error because a lab or a container may run this way on purpose; ``check-config``
    and the agent's start-up log show them.
    """
    notes = []
    for label, path in (
        ("uplink.key_file", cfg.uplink.key_file),
        ("uplink.password_file", cfg.uplink.password_file),
    ):
        if path is None:
            continue
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:
            continue  # already an error from parse()
        if mode & 0o044:
            who = " and ".join(w for w, bit in (("group", 0o040), ("others", 0o004)) if mode & bit)
            notes.append(
                f"{label}: '{path}' is readable by {who} (mode {mode:04o}); run chmod 600 '{path}'"
            )
    return notes


# --------------------------------------------------------------------------------------------
# Messages

_KINDS = {
    "int": "an integer",
    "float": "a number",
    "str": "a string",
    "bool": "true or false",
    "array": "a list",
    "object": "a table",
    "null": "nothing",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
    "bytes": "bytes",
}
_GOT = {"bool": "a boolean", "float": "a decimal number"}
_TOML_POS = re.compile(r"^(.*) \(at (?:line (\d+), column (\d+)|end of document)\)$")


def _rewrite(msg: str, tp: Any, value: Any, path: str) -> tuple[str, str]:
    """msgspec's message for one value -> (path, plain-English reason)."""
    # Errors inside a container (a list of strings...) carry their own sub-path.
    m = re.fullmatch(r"(.*) - at `\$(.*)`", msg)
    if m:
        msg, path = m[1], path + m[2]
    if m := re.fullmatch(r"Expected `[^`]+` (>=|<=|>|<) (\S+)", msg):
        return path, f"must be {m[1]} {_num(float(m[2]))}"
    if m := re.fullmatch(r"Expected `str` of length (>=|<=) (\d+)", msg):
        if m[1] == ">=" and m[2] == "1":
            return path, "must not be empty"
        return path, f"must be {'at least' if m[1] == '>=' else 'at most'} {m[2]} characters"
    if msg.startswith("Expected `str` matching regex"):
        hint = next(
            (
                a.extra["hint"]
                for a in get_args(tp)[1:]
                if isinstance(a, Meta) and a.extra and "hint" in a.extra
            ),
            None,
        )
        return path, f"invalid {value!r}: {hint or msg}"
    if msg.startswith("Invalid enum value"):
        choices = ", ".join(repr(a) for a in _literal_args(tp))
        return path, f"must be one of {choices} (got {value!r})"
    if m := re.fullmatch(r"Expected `([^`]+)`, got `([^`]+)`", msg):
        want = " or ".join(_KINDS.get(k, k) for k in m[1].split(" | ") if k != "null")
        got = _GOT.get(m[2]) or _KINDS.get(m[2], m[2])
        return path, f"expected {want}, got {got}"
    return path, msg[:1].lower() + msg[1:]


def _literal_args(tp: Any) -> tuple[Any, ...]:
    tp = _strip(tp)
    if get_origin(tp) is Literal:
        return get_args(tp)
    for arg in get_args(tp):  # Optional[Literal[...]]
        if get_origin(arg) is Literal:
            return get_args(arg)
    return ()


def _kind(value: Any) -> str:
    names = {dict: "object", list: "array", str: "str", bool: "bool", int: "int", float: "float"}
    name = names.get(type(value), type(value).__name__)
    return _GOT.get(name) or _KINDS.get(name, name)


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _unknown_key(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"unknown key (did you mean '{close[0]}'?)" if close else "unknown key"


def _join(prefix: str, key: str) -> str:
    # Quote keys that are not TOML bare keys so the path stays unambiguous.
    part = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
    return f"{prefix}.{part}" if prefix else part


_SECTIONS = [f.name for f in msgspec.structs.fields(Config)]


def _error_order(error: tuple[str, str]) -> tuple[int, int]:
    """Sort key: sections in schema order (unknown ones first: usually typos), then list index.

    The sort is stable, so within one item the structural errors stay before semantic ones.
    """
    m = re.match(r"([^.\[]*)(?:\[(\d+)\])?", error[0])
    assert m is not None
    section = _SECTIONS.index(m[1]) + 1 if m[1] in _SECTIONS else 0
    return section, int(m[2]) if m[2] else -1


def _toml_reason(msg: str) -> str:
    m = _TOML_POS.match(msg)
    if not m:
        return msg
    where = f"line {m[2]}, column {m[3]}" if m[2] else "end of document"
    return f"{where}: {m[1][:1].lower() + m[1][1:]}"


# --------------------------------------------------------------------------------------------
# Summary


def summary(cfg: Config) -> str:
    """A few lines for ``check-config`` and the start-up log: what this gateway will do."""
    up, st = cfg.uplink, cfg.store
    if up.tls:
        security = "mTLS, " + (f"CA {up.ca_file}" if up.ca_file else "system CAs")
    else:
        security = "PLAINTEXT (lab only)"
    lines = [
        f"gateway  {cfg.gateway.id}  (data in {cfg.gateway.data_dir})",
        f"broker   {up.host}:{up.port}  {security}, MQTT {'5' if up.protocol == 5 else '3.1.1'}, "
        f"client id {up.client_id}",
        f"store    {_bytes(st.max_bytes)} max, records kept {_seconds(st.ttl)}, "
        f"commit linger {_seconds(st.max_delay)}"
        + (f", HOLDS non-alarm records up to {_seconds(st.hold)} in RAM" if st.hold else ""),
        f"packs    up to {up.batch_records} records or {_seconds(up.batch_age)} old, "
        f"{'zlib' if up.compression == 'zlib' else 'uncompressed'}",
        f"policy   {len(cfg.policy.rules())} stream rules"
        + (" (defaults on)" if cfg.policy.defaults else "")
        + (f", upstream budget {_bytes(cfg.policy.budget_bytes_per_day)}/day"
           if cfg.policy.budget_bytes_per_day else ", no upstream budget"),
        f"sources  {len(cfg.sources) or 'none'}",
    ]
    if cfg.lighting is not None:
        li = cfg.lighting
        lines.insert(-1, f"lighting {len(li.zones)} zones, "
                         f"{sum(z.size for z in li.zones.values())} luminaires, "
                         f"{len(li.presence_sensors)} presence sensors, "
                         f"at {li.latitude:.4f},{li.longitude:.4f} {li.timezone}")
    width = max((len(s.name) for s in cfg.sources), default=0)
    lines += [
        f"  {s.name:<{width}}  {s.type:<11}  every {_seconds(s.interval)}  {s.priority}"
        for s in cfg.sources
    ]
    return "\n".join(lines)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{_num(round(size, 1))} {unit}"
        size /= 1024
    return f"{_num(round(size, 1))} GiB"


def _seconds(s: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if s >= size:
            return f"{_num(round(s / size, 2))} {unit}"
    return f"{_num(round(s * 1000, 1))} ms"
