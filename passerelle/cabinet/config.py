"""The ``[[sources]]`` of type ``i2c`` and ``gpio``.

Example (TOML)::

    [[sources]]
    type = "i2c"
    name = "cabinet-env"
    bus = 1                       # /dev/i2c-1
    interval = 60

    [[sources.sensors]]
    type = "bme280"
    name = "cabinet"
    address = 0x76

    [[sources.sensors]]
    type = "veml7700"
    name = "street-light-level"

    [[sources]]
    type = "gpio"
    name = "cabinet-io"
    chip = "/dev/gpiochip0"

    [[sources.inputs]]
    name = "door"
    line = 17
    active_low = true             # the switch pulls the line to ground when the door opens
    bias = "pull-up"
    alarm = true

    [[sources.relays]]
    name = "contactor"
    line = 27
    feedback_line = 22            # auxiliary contact, optional

:mod:`passerelle.config` checks the structure; :func:`check` adds the rules that span
fields (addresses each chip can have, duplicate addresses, lines and names), with dotted
paths under the source's own path.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ..model import check_name
from ..schema import Section, SourceBase

# The addresses each chip can answer at (datasheets: BME280 SDO pin, SHT3x ADDR pin,
# VEML7700 fixed). The first is the default.
SENSOR_ADDRESSES: dict[str, tuple[int, ...]] = {
    "bme280": (0x76, 0x77),
    "sht3x": (0x44, 0x45),
    "veml7700": (0x10,),
}

I2cAddress = Annotated[int, Meta(ge=0x08, le=0x77, extra={"hint": "a 7-bit address 0x08..0x77"})]
Line = Annotated[int, Meta(ge=0, le=1023)]


class I2cSensorConfig(Section, frozen=True, kw_only=True):
    type: Literal["bme280", "sht3x", "veml7700"]
    name: str
    address: I2cAddress | None = None  # None: the chip's default address

    @property
    def resolved_address(self) -> int:
        return SENSOR_ADDRESSES[self.type][0] if self.address is None else self.address


class I2cSourceConfig(SourceBase, tag="i2c", frozen=True, kw_only=True):
    bus: Annotated[int, Meta(ge=0, le=255)] = 1  # /dev/i2c-<bus>
    sensors: list[I2cSensorConfig] = msgspec.field(default_factory=list)


class GpioInputConfig(Section, frozen=True, kw_only=True):
    name: str
    line: Line
    active_low: bool = True
    bias: Literal["as-is", "pull-up", "pull-down", "disabled"] = "as-is"
    debounce_ms: Annotated[int, Meta(ge=0, le=10000)] = 50
    alarm: bool = False  # True: changes are ALARM records with an alarm text (tamper)


class GpioRelayConfig(Section, frozen=True, kw_only=True):
    name: str
    line: Line
    active_high: bool = True
    initial: Literal["keep", "off", "on"] = "keep"  # keep: a restart must not switch lights
    feedback_line: Line | None = None
    feedback_active_low: bool = False
    settle_ms: Annotated[int, Meta(ge=0, le=60000)] = 200


class GpioSourceConfig(SourceBase, tag="gpio", frozen=True, kw_only=True):
    # For this source `interval` is the input polling period, the debouncing step.
    interval: Annotated[float, Meta(ge=0.005, le=1.0)] = 0.025
    chip: Annotated[str, Meta(min_length=1)] = "/dev/gpiochip0"
    inputs: list[GpioInputConfig] = msgspec.field(default_factory=list)
    relays: list[GpioRelayConfig] = msgspec.field(default_factory=list)


def _name(value: Any, path: str, seen: dict[str, str], errors: list[tuple[str, str]]) -> None:
    if not isinstance(value, str):
        return
    try:
        check_name(value)
    except ValueError as e:
        errors.append((path, str(e)))
        return
    if value in seen:
        errors.append((path, f"duplicate name {value!r} (also {seen[value]})"))
    else:
        seen[value] = path.rsplit(".", 1)[0].rsplit(".", 1)[-1]


def check(src: dict[str, Any], path: str, errors: list[tuple[str, str]]) -> None:
    """Cross-field rules of one ``i2c`` or ``gpio`` source, on the cleaned dict."""
    kind = src.get("type")
    if kind == "i2c":
        _check_i2c(src, path, errors)
    elif kind == "gpio":
        _check_gpio(src, path, errors)


def _check_i2c(src: dict[str, Any], path: str, errors: list[tuple[str, str]]) -> None:
    sensors = src.get("sensors") or ()
    if not sensors:
        errors.append((f"{path}.sensors", "no sensor: add at least one [[sources.sensors]]"))
    names: dict[str, str] = {}
    addresses: dict[int, str] = {}
    for i, sensor in enumerate(sensors):
        if not isinstance(sensor, dict):
            continue  # already reported by the structural pass
        spath = f"{path}.sensors[{i}]"
        _name(sensor.get("name"), f"{spath}.name", names, errors)
        chip = sensor.get("type")
        if chip not in SENSOR_ADDRESSES:
            continue
        allowed = SENSOR_ADDRESSES[chip]
        address = sensor.get("address")
        if address is None:
            address = allowed[0]
        elif address not in allowed:
            listed = " or ".join(f"0x{a:02X}" for a in allowed)
            errors.append(
                (f"{spath}.address", f"a {chip} answers at {listed}, not 0x{address:02X}")
            )
            continue
        if isinstance(address, int):
            if address in addresses:
                errors.append(
                    (
                        f"{spath}.address",
                        f"address 0x{address:02X} also used by {addresses[address]} on this bus",
                    )
                )
            addresses.setdefault(address, f"sensors[{i}]")


def _check_gpio(src: dict[str, Any], path: str, errors: list[tuple[str, str]]) -> None:
    inputs = src.get("inputs") or ()
    relays = src.get("relays") or ()
    if not inputs and not relays:
        errors.append((f"{path}.inputs", "no input and no relay: nothing to do"))
    names: dict[str, str] = {}
    lines: dict[int, str] = {}

    def claim(line: Any, where: str, what: str) -> None:
        if not isinstance(line, int):
            return
        if line in lines:
            errors.append((where, f"line {line} already used by {lines[line]}"))
        else:
            lines[line] = what

    for i, item in enumerate(inputs):
        if isinstance(item, dict):
            ipath = f"{path}.inputs[{i}]"
            _name(item.get("name"), f"{ipath}.name", names, errors)
            claim(item.get("line"), f"{ipath}.line", f"inputs[{i}]")
    for i, item in enumerate(relays):
        if isinstance(item, dict):
            rpath = f"{path}.relays[{i}]"
            _name(item.get("name"), f"{rpath}.name", names, errors)
            claim(item.get("line"), f"{rpath}.line", f"relays[{i}]")
            claim(item.get("feedback_line"), f"{rpath}.feedback_line", f"relays[{i}] feedback")
