"""The ``[[sources]]`` of type ``modbus-rtu`` and ``modbus-tcp``.

Example (TOML)::

    [[sources]]
    type = "modbus-rtu"
    name = "cabinet-bus"
    port = "/dev/ttyUSB0"
    baud = 9600
    parity = "N"
    interval = 60

    [[sources.devices]]
    name = "meter"
    unit = 1
    map = "sdm630"                     # a bundled map (passerelle.modbus.maps)
    only = ["power", "energy-import"]  # optional: poll only these entries

    [[sources.devices]]
    name = "door-io"
    unit = 7
    interval = 5
    registers = [
      { name = "door", address = 0, function = "discrete", type = "bool", priority = "alarm" },
      { name = "temperature", address = 10, type = "int16", scale = 0.1, unit = "Cel" },
    ]

:mod:`passerelle.config` checks the structure; :func:`check` adds the rules that span fields
(map or registers, overlaps, duplicates), with dotted paths under the source's own path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ..model import check_name
from ..schema import PositiveFloat, PriorityName, Section, SourceBase
from .maps import MAPS, did_you_mean
from .registers import BIT_FUNCTIONS, WORD_TYPES, RegisterType, word_count

UnitId = Annotated[
    int,
    Meta(ge=1, le=247, extra={"hint": "a unit id in 1..247 (0 is broadcast: it cannot be polled)"}),
]
Address = Annotated[int, Meta(ge=0, le=65535)]
Timeout = Annotated[float, Meta(gt=0, le=10)]
Retries = Annotated[int, Meta(ge=0, le=5)]


class RegisterConfig(Section, frozen=True, kw_only=True):
    name: str
    address: Address
    function: Literal["holding", "input", "coil", "discrete"] = "holding"
    # Required for holding/input (a guessed width reads wrong values silently); coils and
    # discrete inputs are "bool" and may leave it out.
    type: RegisterType | None = None
    order: Literal["ABCD", "CDAB", "BADC", "DCBA"] = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    priority: PriorityName | None = None  # default: the source's priority


class ModbusDeviceConfig(Section, frozen=True, kw_only=True):
    name: str
    unit: UnitId
    map: str | None = None
    registers: list[RegisterConfig] | None = None
    interval: PositiveFloat | None = None  # default: the source's
    only: list[str] | None = None  # map entries to poll (default: all)


class ModbusRtuSourceConfig(SourceBase, tag="modbus-rtu", frozen=True, kw_only=True):
    port: Annotated[str, Meta(min_length=1)]
    baud: Annotated[int, Meta(gt=0, le=1_000_000)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout: Timeout = 0.5
    retries: Retries = 1
    offline_after: Annotated[int, Meta(ge=1, le=100)] = 3
    backoff_max: PositiveFloat = 300.0
    devices: list[ModbusDeviceConfig] = msgspec.field(default_factory=list)


class ModbusTcpSourceConfig(SourceBase, tag="modbus-tcp", frozen=True, kw_only=True):
    host: Annotated[str, Meta(min_length=1)]
    port: Annotated[int, Meta(ge=1, le=65535)] = 502
    timeout: Timeout = 1.0
    retries: Retries = 1
    offline_after: Annotated[int, Meta(ge=1, le=100)] = 3
    backoff_max: PositiveFloat = 300.0
    devices: list[ModbusDeviceConfig] = msgspec.field(default_factory=list)


ModbusSourceConfig = ModbusRtuSourceConfig | ModbusTcpSourceConfig


def check(src: dict[str, Any], path: str, errors: list[tuple[str, str]]) -> None:
    """Cross-field rules of one modbus source, on the cleaned dict, reported under ``path``."""
    names: dict[str, int] = {}
    units: dict[int, int] = {}
    devices = src.get("devices") or ()
    if not devices:
        errors.append((f"{path}.devices", "no device: add at least one [[sources.devices]]"))
    for i, dev in enumerate(devices):
        if not isinstance(dev, dict):
            continue  # already reported by the structural pass
        dpath = f"{path}.devices[{i}]"
        name = dev.get("name")
        if isinstance(name, str):
            _check_name(name, f"{dpath}.name", errors)
            if name in names:
                errors.append(
                    (f"{dpath}.name", f"duplicate device {name!r} (also devices[{names[name]}])")
                )
            names.setdefault(name, i)
        unit = dev.get("unit")
        if isinstance(unit, int):
            if unit in units:
                errors.append(
                    (
                        f"{dpath}.unit",
                        f"unit id {unit} also used by devices[{units[unit]}] on this bus",
                    )
                )
            units.setdefault(unit, i)
        _check_device(dev, dpath, errors)


def _check_name(name: str, path: str, errors: list[tuple[str, str]]) -> None:
    try:
        check_name(name)
    except ValueError as e:
        errors.append((path, str(e)))


def _check_device(dev: dict[str, Any], path: str, errors: list[tuple[str, str]]) -> None:
    has_map, has_regs = dev.get("map") is not None, dev.get("registers") is not None
    if has_map and has_regs:
        errors.append((path, "both 'map' and 'registers': choose one"))
        return
    if not has_map and not has_regs:
        known = ", ".join(sorted(MAPS))
        errors.append((f"{path}.map", f"required: a bundled map ({known}) or a 'registers' list"))
        return
    only = dev.get("only")
    if has_map:
        name = dev["map"]
        if name not in MAPS:
            known = ", ".join(sorted(MAPS))
            errors.append(
                (f"{path}.map", f"unknown map {name!r}{did_you_mean(name, MAPS)} (known: {known})")
            )
            return
        entries = MAPS[name].names
        for j, wanted in enumerate(only or ()):
            if wanted not in entries:
                hint = did_you_mean(wanted, entries)
                errors.append((f"{path}.only[{j}]", f"no entry {wanted!r} in map {name!r}{hint}"))
        return
    regs = dev["registers"]
    if only is not None:
        errors.append(
            (f"{path}.only", "only applies to a 'map'; list the registers you want instead")
        )
    if not regs:
        errors.append((f"{path}.registers", "empty: list at least one register"))
    _check_registers(regs, f"{path}.registers", errors)


def _check_registers(regs: list[Any], path: str, errors: list[tuple[str, str]]) -> None:
    seen: dict[str, int] = {}
    spans: list[tuple[str, int, int, int]] = []  # function, start, end, index
    for j, reg in enumerate(regs):
        if not isinstance(reg, dict):
            continue
        rpath = f"{path}[{j}]"
        name = reg.get("name")
        if isinstance(name, str):
            _check_name(name, f"{rpath}.name", errors)
            if name in seen:
                errors.append(
                    (f"{rpath}.name", f"duplicate register {name!r} (also registers[{seen[name]}])")
                )
            seen.setdefault(name, j)
        function = reg.get("function", "holding")
        type_ = reg.get("type")
        if function in BIT_FUNCTIONS:
            if type_ not in (None, "bool"):
                errors.append(
                    (
                        f"{rpath}.type",
                        f"a {function} is one bit: type must be 'bool', not {type_!r}",
                    )
                )
                continue
            type_ = "bool"
        elif type_ is None:
            errors.append(
                (
                    f"{rpath}.type",
                    f"required for {function} registers ({', '.join(WORD_TYPES)})",
                )
            )
            continue
        elif type_ == "bool":
            errors.append(
                (
                    f"{rpath}.type",
                    f"'bool' is for coils and discrete inputs, not {function} registers",
                )
            )
            continue
        address = reg.get("address")
        if not isinstance(address, int):
            continue
        span = word_count(type_)
        end = address + span
        if end > 0x10000:
            errors.append(
                (
                    f"{rpath}.address",
                    f"{type_} at {address} needs {span} registers: ends at {end - 1}, beyond 65535",
                )
            )
            continue
        for other_function, start, other_end, k in spans:
            if other_function == function and address < other_end and start < end:
                errors.append(
                    (
                        f"{rpath}.address",
                        f"overlaps registers[{k}] ({function} {start}..{other_end - 1})",
                    )
                )
                break
        spans.append((function, address, end, j))
