"""The ``[radio]`` and ``[lorawan]`` sections of the configuration.

Kept beside the LoRaWAN code that reads them; :mod:`passerelle.config` includes them in the
schema and runs :func:`check` in its semantic pass, so errors come with dotted paths like
every other section's. Keys (``app_key``, ``nwk_s_key``, ``app_s_key``) are secrets: nothing
here prints them, and :func:`redacted` masks them for summaries.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from .codecs import Layout, builtin_codecs, validate_layout

Hex8 = Annotated[
    str, Meta(pattern=r"^[0-9a-fA-F]{8}$", extra={"hint": "8 hex digits (4 bytes, as written)"})
]
Hex16 = Annotated[
    str, Meta(pattern=r"^[0-9a-fA-F]{16}$", extra={"hint": "16 hex digits (an EUI-64)"})
]
Key = Annotated[
    str, Meta(pattern=r"^[0-9a-fA-F]{32}$", extra={"hint": "32 hex digits (an AES-128 key)"})
]
NetId = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{6}$", extra={"hint": "6 hex digits"})]
DataRate = Annotated[
    str,
    Meta(pattern=r"^SF([7-9]|1[0-2])BW(125|250|500)$", extra={"hint": "like SF9BW125"}),
]
Mhz = Annotated[float, Meta(ge=863.0, le=870.0)]
Listen = Annotated[
    str,
    Meta(
        pattern=r"^[^\s:]*:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$",
        extra={"hint": "host:port with a port in 1..65535, like 0.0.0.0:1700"},
    ),
]
SECRET_KEYS = ("app_key", "nwk_s_key", "app_s_key")


class _Section(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    pass


class _RadioBase(_Section, tag_field="type", frozen=True, kw_only=True):
    region: Literal["EU868"] = "EU868"

    @property
    def type(self) -> str:
        tag = self.__struct_config__.tag
        assert isinstance(tag, str)
        return tag


class SemtechUdpRadioConfig(_RadioBase, tag="semtech-udp", frozen=True):
    listen: Listen = "0.0.0.0:1700"  # host:port the packet forwarder sends to
    tx_ack_timeout: Annotated[float, Meta(gt=0, le=10)] = 1.0


class Sx127xRadioConfig(_RadioBase, tag="sx127x", frozen=True):
    spi_bus: Annotated[int, Meta(ge=0)] = 0
    spi_device: Annotated[int, Meta(ge=0)] = 0
    gpiochip: str = "/dev/gpiochip0"
    reset_line: Annotated[int, Meta(ge=0)] = 17
    dio0_line: Annotated[int, Meta(ge=0)] = 4
    frequency: Mhz = 868.1  # the one channel a single-channel radio listens on
    datarate: DataRate = "SF7BW125"
    power: Annotated[float, Meta(ge=2, le=20)] = 14.0


class AtModemRadioConfig(_RadioBase, tag="at-modem", frozen=True, kw_only=True):
    port: Annotated[str, Meta(min_length=1)]
    baud: Annotated[int, Meta(gt=0)] = 115200
    dialect: Literal["rak3172", "rn2483"] = "rak3172"
    frequency: Mhz = 868.1
    datarate: DataRate = "SF7BW125"
    power: Annotated[float, Meta(ge=2, le=20)] = 14.0


class SimRadioConfig(_RadioBase, tag="sim", frozen=True):
    seed: int = 0


RadioConfig = SemtechUdpRadioConfig | Sx127xRadioConfig | AtModemRadioConfig | SimRadioConfig


class DeviceConfig(_Section, frozen=True, kw_only=True):
    name: str
    dev_eui: Hex16
    class_: Literal["A", "C"] = msgspec.field(default="A", name="class")
    codec: str = "cayenne"
    priority: Literal["diagnostic", "telemetry", "energy", "alarm"] = "telemetry"
    # OTAA
    join_eui: Hex16 | None = None
    app_key: Key | None = None
    # ABP
    dev_addr: Hex8 | None = None
    nwk_s_key: Key | None = None
    app_s_key: Key | None = None

    @property
    def otaa(self) -> bool:
        return self.app_key is not None


class MulticastConfig(_Section, frozen=True, kw_only=True):
    """A multicast group: one class C frame reaches every member (a whole street)."""

    name: str
    dev_addr: Hex8
    nwk_s_key: Key
    app_s_key: Key
    frequency: Mhz = 869.525
    datarate: DataRate = "SF9BW125"
    devices: list[str] = msgspec.field(default_factory=list)


class LorawanConfig(_Section, frozen=True):
    net_id: NetId = "000000"
    rx1_delay: Annotated[int, Meta(ge=1, le=15)] = 1
    rx2_frequency: Mhz = 869.525
    rx2_datarate: DataRate = "SF12BW125"  # EU868 default DR0; some networks use SF9
    downlink_power: Annotated[float, Meta(ge=0, le=27)] = 14.0  # dBm EIRP; band P allows 27
    max_fcnt_gap: Annotated[int, Meta(ge=1, le=65535)] = 16384
    devices: list[DeviceConfig] = msgspec.field(default_factory=list)
    multicast: list[MulticastConfig] = msgspec.field(default_factory=list)
    # [lorawan.codecs.<name>]: fixed binary layouts, named by devices' `codec`
    codecs: dict[str, Layout] = msgspec.field(default_factory=dict)


_OTAA = ("join_eui", "app_key")
_ABP = ("dev_addr", "nwk_s_key", "app_s_key")


def check(lw: dict[str, Any], errors: list[tuple[str, str]]) -> None:
    """Cross-field rules of ``[lorawan]`` on the cleaned dict (values already converted)."""
    from ..model import check_name

    codec_names = set(builtin_codecs())
    for name, layout in (lw.get("codecs") or {}).items():
        path = f"lorawan.codecs.{name}"
        if name in codec_names:
            errors.append((path, f"{name!r} is a built-in codec: choose another name"))
            continue
        codec_names.add(name)  # defined, even if broken: devices naming it are not at fault
        try:
            problems = validate_layout(msgspec.convert(layout, Layout))
        except msgspec.ValidationError as e:
            # A field already reported by the structural pass was dropped: nothing to add.
            if not any(p.startswith(path + ".") for p, _ in errors):
                errors.append((path, str(e)))
            continue
        errors.extend((f"{path}.{where}", why) for where, why in problems)

    names: dict[str, int] = {}
    euis: dict[str, int] = {}
    addrs: dict[str, str] = {}
    for i, dev in enumerate(lw.get("devices") or ()):
        if not isinstance(dev, dict):
            continue
        path = f"lorawan.devices[{i}]"
        name = dev.get("name")
        if isinstance(name, str):
            try:
                check_name(name)
            except ValueError as e:
                errors.append((f"{path}.name", str(e)))
            if name in names:
                also = f"also devices[{names[name]}]"
                errors.append((f"{path}.name", f"duplicate device {name!r} ({also})"))
            names.setdefault(name, i)
        eui = dev.get("dev_eui")
        if isinstance(eui, str):
            if eui.lower() in euis:
                also = f"also devices[{euis[eui.lower()]}]"
                errors.append((f"{path}.dev_eui", f"duplicate DevEUI ({also})"))
            euis.setdefault(eui.lower(), i)
        otaa = [k for k in _OTAA if dev.get(k) is not None]
        abp = [k for k in _ABP if dev.get(k) is not None]
        if otaa and abp:
            errors.append((path, "both OTAA (join_eui, app_key) and ABP keys: choose one"))
        elif otaa and len(otaa) < len(_OTAA):
            missing = next(k for k in _OTAA if k not in otaa)
            errors.append((f"{path}.{missing}", "required for OTAA"))
        elif abp and len(abp) < len(_ABP):
            missing = next(k for k in _ABP if k not in abp)
            errors.append((f"{path}.{missing}", "required for ABP"))
        elif not otaa and not abp:
            errors.append((f"{path}.app_key", "required: OTAA (join_eui, app_key) or ABP keys"))
        addr = dev.get("dev_addr")
        if isinstance(addr, str):
            if addr.lower() in addrs:
                errors.append((f"{path}.dev_addr", f"DevAddr also used by {addrs[addr.lower()]}"))
            addrs.setdefault(addr.lower(), f"devices[{i}]")
        codec = dev.get("codec")
        if isinstance(codec, str) and codec not in codec_names:
            known = ", ".join(sorted(codec_names))
            errors.append((f"{path}.codec", f"unknown codec {codec!r} (known: {known})"))
    for i, grp in enumerate(lw.get("multicast") or ()):
        if not isinstance(grp, dict):
            continue
        path = f"lorawan.multicast[{i}]"
        addr = grp.get("dev_addr")
        if isinstance(addr, str):
            if addr.lower() in addrs:
                errors.append((f"{path}.dev_addr", f"DevAddr also used by {addrs[addr.lower()]}"))
            addrs.setdefault(addr.lower(), f"multicast[{i}]")
        for j, member in enumerate(grp.get("devices") or ()):
            if member not in names:
                errors.append((f"{path}.devices[{j}]", f"no device named {member!r}"))


def redacted(value: Any) -> Any:
    """``value`` with every key field masked (for summaries, logs and ``config show``)."""
    if isinstance(value, dict):
        return {k: ("***" if k in SECRET_KEYS and v else redacted(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v) for v in value]
    return value
