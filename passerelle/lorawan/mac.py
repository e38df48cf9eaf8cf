"""LoRaWAN 1.0.4 MAC commands: parse what devices send, build what the network answers.

MAC commands ride in FOpts or in an FPort 0 FRMPayload as ``CID | payload`` one after
the other. A command's length follows from its CID and direction alone (table 4 of the
1.0.4 specification, plus the class B commands of its chapter 12), so an unknown CID
or a truncated command stops parsing: nothing after it can be located.

Each command is a frozen dataclass with ``CID``, ``to_bytes()`` and a ``parse()``
classmethod. Field values are checked when a command is built, so an out-of-range
value fails here, naming the field, rather than on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from passerelle.lorawan.crypto import from_wire, to_wire
from passerelle.lorawan.phy import PhyError

# GPS time (DeviceTimeAns) counts from 1980-01-06T00:00:00Z and ignores leap seconds.
GPS_EPOCH_UNIX = 315_964_800
# GPS - UTC: 18 s since 2017-01-01, and no leap second has been announced since. A
# change means updating this constant (a gateway's GPS receiver knows the live value).
GPS_LEAP_SECONDS = 18


def gps_seconds_from_unix(unix_time: float) -> float:
    """GPS time in seconds for a Unix time, with :data:`GPS_LEAP_SECONDS` leap seconds."""
    return unix_time - GPS_EPOCH_UNIX + GPS_LEAP_SECONDS


def unix_from_gps_seconds(gps_seconds: float) -> float:
    return gps_seconds + GPS_EPOCH_UNIX - GPS_LEAP_SECONDS


def _check(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an int in {low}..{high}, got {value!r}")


def _frequency_to_wire(name: str, hz: int) -> bytes:
    # Frequencies travel as 24-bit little-endian counts of 100 Hz.
    _check(name, hz, 0, 0xFFFFFF * 100)
    if hz % 100:
        raise ValueError(f"{name} must be a multiple of 100 Hz, got {hz}")
    return to_wire(hz // 100, 3)


def _frequency_from_wire(data: bytes) -> int:
    return from_wire(data) * 100


@dataclass(frozen=True, slots=True)
class MacCommand:
    """Base of all commands: CID and payload length are class constants."""

    CID: ClassVar[int]
    LENGTH: ClassVar[int]  # payload bytes after the CID
    UPLINK: ClassVar[bool]

    def payload(self) -> bytes:
        return b""

    def to_bytes(self) -> bytes:
        body = self.payload()
        assert len(body) == self.LENGTH, (type(self).__name__, len(body))
        return bytes([self.CID]) + body

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"cid": f"0x{self.CID:02x}", "name": type(self).__name__}
        for f in fields(self):
            out[f.name] = getattr(self, f.name)
        return out


def _flags(payload: bytes, *names: str) -> dict[str, bool]:
    # Status bits listed from bit 0 upwards; RFU bits above them are ignored.
    return {name: bool(payload[0] >> bit & 1) for bit, name in enumerate(names)}


def _flag_byte(*flags: bool) -> bytes:
    return bytes([sum(1 << bit for bit, flag in enumerate(flags) if flag)])


# --------------------------------------------------------------------------------------
# Uplink (device -> network)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkCheckReq(MacCommand):
    CID = 0x02
    LENGTH = 0
    UPLINK = True


@dataclass(frozen=True, slots=True)
class LinkADRAns(MacCommand):
    CID = 0x03
    LENGTH = 1
    UPLINK = True
    channel_mask_ack: bool
    data_rate_ack: bool
    power_ack: bool

    @property
    def accepted(self) -> bool:
        return self.channel_mask_ack and self.data_rate_ack and self.power_ack

    def payload(self) -> bytes:
        return _flag_byte(self.channel_mask_ack, self.data_rate_ack, self.power_ack)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(**_flags(payload, "channel_mask_ack", "data_rate_ack", "power_ack"))


@dataclass(frozen=True, slots=True)
class DutyCycleAns(MacCommand):
    CID = 0x04
    LENGTH = 0
    UPLINK = True


@dataclass(frozen=True, slots=True)
class RXParamSetupAns(MacCommand):
    CID = 0x05
    LENGTH = 1
    UPLINK = True
    channel_ack: bool
    rx2_data_rate_ack: bool
    rx1_dr_offset_ack: bool

    def payload(self) -> bytes:
        return _flag_byte(self.channel_ack, self.rx2_data_rate_ack, self.rx1_dr_offset_ack)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(**_flags(payload, "channel_ack", "rx2_data_rate_ack", "rx1_dr_offset_ack"))


@dataclass(frozen=True, slots=True)
class DevStatusAns(MacCommand):
    """Battery: 0 external power, 1..254 level, 255 unknown. Margin: SNR dB, -32..31."""

    CID = 0x06
    LENGTH = 2
    UPLINK = True
    battery: int
    margin: int

    def __post_init__(self) -> None:
        _check("battery", self.battery, 0, 255)
        _check("margin", self.margin, -32, 31)

    def payload(self) -> bytes:
        return bytes([self.battery, self.margin & 0x3F])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        raw = payload[1] & 0x3F  # 6-bit two's complement
        return cls(battery=payload[0], margin=raw - 64 if raw & 0x20 else raw)


@dataclass(frozen=True, slots=True)
class NewChannelAns(MacCommand):
    CID = 0x07
    LENGTH = 1
    UPLINK = True
    channel_frequency_ok: bool
    data_rate_range_ok: bool

    def payload(self) -> bytes:
        return _flag_byte(self.channel_frequency_ok, self.data_rate_range_ok)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(**_flags(payload, "channel_frequency_ok", "data_rate_range_ok"))


@dataclass(frozen=True, slots=True)
class RXTimingSetupAns(MacCommand):
    CID = 0x08
    LENGTH = 0
    UPLINK = True


@dataclass(frozen=True, slots=True)
class TxParamSetupAns(MacCommand):
    CID = 0x09
    LENGTH = 0
    UPLINK = True


@dataclass(frozen=True, slots=True)
class DlChannelAns(MacCommand):
    CID = 0x0A
    LENGTH = 1
    UPLINK = True
    channel_frequency_ok: bool
    uplink_frequency_exists: bool

    def payload(self) -> bytes:
        return _flag_byte(self.channel_frequency_ok, self.uplink_frequency_exists)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(**_flags(payload, "channel_frequency_ok", "uplink_frequency_exists"))


@dataclass(frozen=True, slots=True)
class DeviceTimeReq(MacCommand):
    CID = 0x0D
    LENGTH = 0
    UPLINK = True


@dataclass(frozen=True, slots=True)
class PingSlotInfoReq(MacCommand):
    """Class B: ping every 2**periodicity seconds (0..7)."""

    CID = 0x10
    LENGTH = 1
    UPLINK = True
    periodicity: int

    def __post_init__(self) -> None:
        _check("periodicity", self.periodicity, 0, 7)

    def payload(self) -> bytes:
        return bytes([self.periodicity])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(periodicity=payload[0] & 0x07)


@dataclass(frozen=True, slots=True)
class PingSlotChannelAns(MacCommand):
    CID = 0x11
    LENGTH = 1
    UPLINK = True
    channel_frequency_ok: bool
    data_rate_ok: bool

    def payload(self) -> bytes:
        return _flag_byte(self.channel_frequency_ok, self.data_rate_ok)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(**_flags(payload, "channel_frequency_ok", "data_rate_ok"))


@dataclass(frozen=True, slots=True)
class BeaconTimingReq(MacCommand):
    """Class B, deprecated in 1.0.4 (devices use DeviceTimeReq); parsed so it is no error."""

    CID = 0x12
    LENGTH = 0
    UPLINK = True


@dataclass(frozen=True, slots=True)
class BeaconFreqAns(MacCommand):
    CID = 0x13
    LENGTH = 1
    UPLINK = True
    beacon_frequency_ok: bool

    def payload(self) -> bytes:
        return _flag_byte(self.beacon_frequency_ok)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(**_flags(payload, "beacon_frequency_ok"))


# --------------------------------------------------------------------------------------
# Downlink (network -> device)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkCheckAns(MacCommand):
    """Margin: dB above the demodulation floor of the best gateway (0..254)."""

    CID = 0x02
    LENGTH = 2
    UPLINK = False
    margin: int
    gw_cnt: int

    def __post_init__(self) -> None:
        _check("margin", self.margin, 0, 254)  # 255 is reserved
        _check("gw_cnt", self.gw_cnt, 0, 255)

    def payload(self) -> bytes:
        return bytes([self.margin, self.gw_cnt])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(margin=payload[0], gw_cnt=payload[1])


@dataclass(frozen=True, slots=True)
class LinkADRReq(MacCommand):
    """DataRate/TXPower are regional table indexes; 15 means "keep the current one"."""

    CID = 0x03
    LENGTH = 4
    UPLINK = False
    data_rate: int
    tx_power: int
    ch_mask: int  # bit i enables channel i of the block ch_mask_cntl selects
    ch_mask_cntl: int
    nb_trans: int  # 0 means "keep the current value"

    def __post_init__(self) -> None:
        _check("data_rate", self.data_rate, 0, 15)
        _check("tx_power", self.tx_power, 0, 15)
        _check("ch_mask", self.ch_mask, 0, 0xFFFF)
        _check("ch_mask_cntl", self.ch_mask_cntl, 0, 7)
        _check("nb_trans", self.nb_trans, 0, 15)

    def payload(self) -> bytes:
        return (
            bytes([self.data_rate << 4 | self.tx_power])
            + to_wire(self.ch_mask, 2)
            + bytes([self.ch_mask_cntl << 4 | self.nb_trans])
        )

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(
            data_rate=payload[0] >> 4,
            tx_power=payload[0] & 0x0F,
            ch_mask=from_wire(payload[1:3]),
            ch_mask_cntl=payload[3] >> 4 & 0x07,
            nb_trans=payload[3] & 0x0F,
        )


@dataclass(frozen=True, slots=True)
class DutyCycleReq(MacCommand):
    """Aggregate duty cycle limit 1 / 2**max_duty_cycle (0 means no limit)."""

    CID = 0x04
    LENGTH = 1
    UPLINK = False
    max_duty_cycle: int

    def __post_init__(self) -> None:
        _check("max_duty_cycle", self.max_duty_cycle, 0, 15)

    def payload(self) -> bytes:
        return bytes([self.max_duty_cycle])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(max_duty_cycle=payload[0] & 0x0F)


@dataclass(frozen=True, slots=True)
class RXParamSetupReq(MacCommand):
    CID = 0x05
    LENGTH = 4
    UPLINK = False
    rx1_dr_offset: int
    rx2_data_rate: int
    frequency_hz: int

    def __post_init__(self) -> None:
        _check("rx1_dr_offset", self.rx1_dr_offset, 0, 7)
        _check("rx2_data_rate", self.rx2_data_rate, 0, 15)
        _frequency_to_wire("frequency_hz", self.frequency_hz)

    def payload(self) -> bytes:
        dl_settings = bytes([self.rx1_dr_offset << 4 | self.rx2_data_rate])
        return dl_settings + _frequency_to_wire("frequency_hz", self.frequency_hz)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(
            rx1_dr_offset=payload[0] >> 4 & 0x07,
            rx2_data_rate=payload[0] & 0x0F,
            frequency_hz=_frequency_from_wire(payload[1:4]),
        )


@dataclass(frozen=True, slots=True)
class DevStatusReq(MacCommand):
    CID = 0x06
    LENGTH = 0
    UPLINK = False


@dataclass(frozen=True, slots=True)
class NewChannelReq(MacCommand):
    """Create or change channel ``ch_index``; frequency 0 disables it."""

    CID = 0x07
    LENGTH = 5
    UPLINK = False
    ch_index: int
    frequency_hz: int
    min_dr: int
    max_dr: int

    def __post_init__(self) -> None:
        _check("ch_index", self.ch_index, 0, 255)
        _frequency_to_wire("frequency_hz", self.frequency_hz)
        _check("min_dr", self.min_dr, 0, 15)
        _check("max_dr", self.max_dr, 0, 15)

    def payload(self) -> bytes:
        freq = _frequency_to_wire("frequency_hz", self.frequency_hz)
        return bytes([self.ch_index]) + freq + bytes([self.max_dr << 4 | self.min_dr])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(
            ch_index=payload[0],
            frequency_hz=_frequency_from_wire(payload[1:4]),
            min_dr=payload[4] & 0x0F,
            max_dr=payload[4] >> 4,
        )


@dataclass(frozen=True, slots=True)
class RXTimingSetupReq(MacCommand):
    """RX1 opens ``delay`` seconds after the uplink (0 means 1 s)."""

    CID = 0x08
    LENGTH = 1
    UPLINK = False
    delay: int

    def __post_init__(self) -> None:
        _check("delay", self.delay, 0, 15)

    def payload(self) -> bytes:
        return bytes([self.delay])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(delay=payload[0] & 0x0F)


@dataclass(frozen=True, slots=True)
class TxParamSetupReq(MacCommand):
    """Dwell-time limits and MaxEIRP index (regions that need it, e.g. AS923)."""

    CID = 0x09
    LENGTH = 1
    UPLINK = False
    downlink_dwell_time: bool
    uplink_dwell_time: bool
    max_eirp: int

    def __post_init__(self) -> None:
        _check("max_eirp", self.max_eirp, 0, 15)

    def payload(self) -> bytes:
        return bytes([self.downlink_dwell_time << 5 | self.uplink_dwell_time << 4 | self.max_eirp])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(
            downlink_dwell_time=bool(payload[0] & 0x20),
            uplink_dwell_time=bool(payload[0] & 0x10),
            max_eirp=payload[0] & 0x0F,
        )


@dataclass(frozen=True, slots=True)
class DlChannelReq(MacCommand):
    """Move the RX1 downlink frequency of channel ``ch_index``."""

    CID = 0x0A
    LENGTH = 4
    UPLINK = False
    ch_index: int
    frequency_hz: int

    def __post_init__(self) -> None:
        _check("ch_index", self.ch_index, 0, 255)
        _frequency_to_wire("frequency_hz", self.frequency_hz)

    def payload(self) -> bytes:
        return bytes([self.ch_index]) + _frequency_to_wire("frequency_hz", self.frequency_hz)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(ch_index=payload[0], frequency_hz=_frequency_from_wire(payload[1:4]))


@dataclass(frozen=True, slots=True)
class DeviceTimeAns(MacCommand):
    """GPS time (seconds since 1980-01-06, no leap seconds) at the END of the uplink
    that carried DeviceTimeReq. On air: 32-bit seconds (wrapping) + 1/256 s steps.
    Use :func:`gps_seconds_from_unix` to get it from the wall clock."""

    CID = 0x0D
    LENGTH = 5
    UPLINK = False
    gps_time_seconds: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.gps_time_seconds) or self.gps_time_seconds < 0:
            raise ValueError(
                f"gps_time_seconds must be a finite time >= 0, got {self.gps_time_seconds!r}"
            )

    def payload(self) -> bytes:
        steps = round(self.gps_time_seconds * 256)  # 1/256 s units, rounded to nearest
        return to_wire((steps >> 8) & 0xFFFFFFFF, 4) + bytes([steps & 0xFF])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(gps_time_seconds=from_wire(payload[0:4]) + payload[4] / 256)


@dataclass(frozen=True, slots=True)
class PingSlotInfoAns(MacCommand):
    CID = 0x10
    LENGTH = 0
    UPLINK = False


@dataclass(frozen=True, slots=True)
class PingSlotChannelReq(MacCommand):
    """Class B ping slot channel; frequency 0 restores the regional default."""

    CID = 0x11
    LENGTH = 4
    UPLINK = False
    frequency_hz: int
    data_rate: int

    def __post_init__(self) -> None:
        _frequency_to_wire("frequency_hz", self.frequency_hz)
        _check("data_rate", self.data_rate, 0, 15)

    def payload(self) -> bytes:
        return _frequency_to_wire("frequency_hz", self.frequency_hz) + bytes([self.data_rate])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(frequency_hz=_frequency_from_wire(payload[0:3]), data_rate=payload[3] & 0x0F)


@dataclass(frozen=True, slots=True)
class BeaconTimingAns(MacCommand):
    """Deprecated in 1.0.4; kept so old downlinks decode."""

    CID = 0x12
    LENGTH = 3
    UPLINK = False
    delay: int  # 30 ms units until the next beacon
    channel: int

    def __post_init__(self) -> None:
        _check("delay", self.delay, 0, 0xFFFF)
        _check("channel", self.channel, 0, 255)

    def payload(self) -> bytes:
        return to_wire(self.delay, 2) + bytes([self.channel])

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(delay=from_wire(payload[0:2]), channel=payload[2])


@dataclass(frozen=True, slots=True)
class BeaconFreqReq(MacCommand):
    CID = 0x13
    LENGTH = 3
    UPLINK = False
    frequency_hz: int

    def __post_init__(self) -> None:
        _frequency_to_wire("frequency_hz", self.frequency_hz)

    def payload(self) -> bytes:
        return _frequency_to_wire("frequency_hz", self.frequency_hz)

    @classmethod
    def parse(cls, payload: bytes) -> Self:
        return cls(frequency_hz=_frequency_from_wire(payload))


# --------------------------------------------------------------------------------------
# Parsing sequences
# --------------------------------------------------------------------------------------


def _table(*classes: type[MacCommand]) -> dict[int, type[MacCommand]]:
    return {cls.CID: cls for cls in classes}


UPLINK_COMMANDS = _table(
    LinkCheckReq, LinkADRAns, DutyCycleAns, RXParamSetupAns, DevStatusAns, NewChannelAns,
    RXTimingSetupAns, TxParamSetupAns, DlChannelAns, DeviceTimeReq, PingSlotInfoReq,
    PingSlotChannelAns, BeaconTimingReq, BeaconFreqAns,
)  # fmt: skip
DOWNLINK_COMMANDS = _table(
    LinkCheckAns, LinkADRReq, DutyCycleReq, RXParamSetupReq, DevStatusReq, NewChannelReq,
    RXTimingSetupReq, TxParamSetupReq, DlChannelReq, DeviceTimeAns, PingSlotInfoAns,
    PingSlotChannelReq, BeaconTimingAns, BeaconFreqReq,
)  # fmt: skip


def _parse(data: bytes, table: dict[int, type[MacCommand]], direction: str) -> list[MacCommand]:
    data = bytes(data)
    commands: list[MacCommand] = []
    offset = 0
    while offset < len(data):
        cid = data[offset]
        cls = table.get(cid)
        if cls is None:
            kind = "proprietary" if cid >= 0x80 else "unknown"
            raise PhyError(
                f"{kind} {direction} MAC command CID 0x{cid:02x} at offset {offset}: "
                "its length is unknown, so the rest cannot be parsed"
            )
        end = offset + 1 + cls.LENGTH
        if end > len(data):
            raise PhyError(
                f"{direction} MAC command CID 0x{cid:02x} ({cls.__name__}) at offset {offset} "
                f"is truncated: needs {cls.LENGTH} payload byte(s), {len(data) - offset - 1} left"
            )
        try:
            commands.append(cls.parse(data[offset + 1 : end]))
        except ValueError as exc:  # a reserved value, e.g. LinkCheckAns margin 255
            raise PhyError(
                f"{direction} MAC command CID 0x{cid:02x} ({cls.__name__}) at offset {offset}: "
                f"{exc}"
            ) from None
        offset = end
    return commands


def parse_uplink_commands(data: bytes) -> list[MacCommand]:
    """The commands a device sent (FOpts, or a decrypted FPort 0 payload)."""
    return _parse(data, UPLINK_COMMANDS, "uplink")


def parse_downlink_commands(data: bytes) -> list[MacCommand]:
    """The commands a network sent (for simulated devices and the decoder)."""
    return _parse(data, DOWNLINK_COMMANDS, "downlink")


def encode_commands(commands: list[MacCommand]) -> bytes:
    """Concatenate commands for FOpts (<= 15 bytes) or an FPort 0 payload."""
    return b"".join(command.to_bytes() for command in commands)
