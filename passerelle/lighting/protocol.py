"""The luminaire controller's LoRaWAN application protocol: commands down, status up.

All integers are big-endian. Downlinks (gateway -> controller) on FPort 20, first byte the
opcode::

    SET_LEVEL    01 | seq u8 | level u8 | ramp_s u16                      5 bytes
    SET_PROGRAM  02 | seq u8 | default u8 | utc_offset_q i8 | n u8        5 + 4n bytes
                    then n times: kind u8 | value i16 | level u8
    STATUS_REQ   03 | seq u8                                              2 bytes

Uplink (controller -> gateway) on FPort 21::

    STATUS       81 | seq u8 | level u8 | flags u8 | energy_wh u32        8 bytes
                 flags: bit0 lamp failure, bit1 driver failure, bit2 local program

Levels are percent, 0 (off) to 100. SET_LEVEL also takes 255 (:data:`FOLLOW_PROGRAM`):
drop the gateway's command and follow the stored program. A program point's ``kind`` is 0
for a fixed local time (``value`` = minutes after local midnight, 0..1439), 1 sunset,
2 sunrise, 3 civil dusk, 4 civil dawn (``value`` = signed offset in minutes, kept within
+-720 here: further than half a day the event belongs to another night). ``default`` is
the level the controller uses while it has no valid time; ``utc_offset_q`` the site's UTC
offset in quarter hours when the program was sent (-48..56: UTC-12 to UTC+14), since the
controller knows no time zones. At most 12 points.

Examples (the test suite checks these bytes)::

    SET_LEVEL seq 7, 50 %, 10 s ramp            01 07 32 00 0a
    SET_PROGRAM seq 8, default 100 %, UTC+1,    02 08 64 04 03
      sunset-15 min -> 100 %,                      01 ff f1 64
      23:00 -> 50 %,                               00 05 64 32
      sunrise -> off                               02 00 00 00
    STATUS_REQ seq 9                            03 09
    STATUS seq 7, 50 %, lamp failure, 123456 Wh 81 07 32 01 00 01 e2 40

Encoders raise ``ValueError`` naming the field and its value; decoders raise
:class:`ProtocolError` naming what is wrong and at which byte offset. A frame must be
exactly as long as its opcode says: trailing bytes are an error, not padding, because
this format is ours and a length mismatch means the two ends disagree on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from ..model import Record

__all__ = [
    "COMMAND_FPORT",
    "FOLLOW_PROGRAM",
    "MAX_POINTS",
    "POINT_KINDS",
    "STATUS_FPORT",
    "Command",
    "ProtocolError",
    "SetLevel",
    "SetProgram",
    "Status",
    "StatusRequest",
    "SwitchPoint",
    "decode_command",
    "decode_status",
    "encode_command",
    "encode_set_level",
    "encode_set_program",
    "encode_status",
    "encode_status_request",
    "status_records",
]

COMMAND_FPORT: Final = 20
STATUS_FPORT: Final = 21
FOLLOW_PROGRAM: Final = 255
MAX_POINTS: Final = 12

OP_SET_LEVEL: Final = 0x01
OP_SET_PROGRAM: Final = 0x02
OP_STATUS_REQ: Final = 0x03
OP_STATUS: Final = 0x81

# kind name -> wire code; "time" is minutes after local midnight, the others offsets.
POINT_KINDS: Final[dict[str, int]] = {
    "time": 0,
    "sunset": 1,
    "sunrise": 2,
    "civil_dusk": 3,
    "civil_dawn": 4,
}
_KIND_NAMES: Final = {code: name for name, code in POINT_KINDS.items()}

MINUTES_PER_DAY: Final = 1440
MAX_SUN_OFFSET: Final = 720  # minutes either side of a solar event
UTC_OFFSET_Q_MIN, UTC_OFFSET_Q_MAX = -48, 56  # UTC-12:00 .. UTC+14:00

FLAG_LAMP_FAILURE: Final = 0x01
FLAG_DRIVER_FAILURE: Final = 0x02
FLAG_LOCAL_PROGRAM: Final = 0x04
_KNOWN_FLAGS: Final = FLAG_LAMP_FAILURE | FLAG_DRIVER_FAILURE | FLAG_LOCAL_PROGRAM

_SET_LEVEL_LEN: Final = 5
_PROGRAM_HEADER_LEN: Final = 5
_POINT_LEN: Final = 4
_STATUS_REQ_LEN: Final = 2
_STATUS_LEN: Final = 8


class ProtocolError(ValueError):
    """A frame does not decode: says what is wrong and at which byte offset."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.offset = offset


@dataclass(frozen=True, slots=True)
class SwitchPoint:
    """From the resolved time of this point on, the lamp goes to ``level`` percent.

    ``kind`` "time": ``value`` is minutes after local midnight; a solar kind: ``value`` is
    the signed offset in minutes from that event.
    """

    kind: str
    value: int
    level: int


@dataclass(frozen=True, slots=True)
class SetLevel:
    seq: int
    level: int  # 0..100, or FOLLOW_PROGRAM
    ramp_s: int


@dataclass(frozen=True, slots=True)
class SetProgram:
    seq: int
    default: int
    utc_offset_q: int
    points: tuple[SwitchPoint, ...]


@dataclass(frozen=True, slots=True)
class StatusRequest:
    seq: int


@dataclass(frozen=True, slots=True)
class Status:
    seq: int  # of the last command the controller applied
    level: int  # its current target level, percent
    lamp_failure: bool
    driver_failure: bool
    local_program: bool  # following its stored program rather than the gateway
    energy_wh: int  # cumulative


Command = SetLevel | SetProgram | StatusRequest


# -- encoding -------------------------------------------------------------------------------


def _int_in(field: str, value: object, lo: int, hi: int) -> int:
    # bool is an int to Python but never a sensible level or counter here.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{field} must be an integer {lo}..{hi}, got {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"{field} {value} out of range {lo}..{hi}")
    return value


def _check_point(where: str, point: object) -> SwitchPoint:
    if not isinstance(point, SwitchPoint):
        raise ValueError(f"{where} must be a SwitchPoint, got {point!r}")
    if point.kind not in POINT_KINDS:
        raise ValueError(f"{where}.kind {point.kind!r} unknown; one of {', '.join(POINT_KINDS)}")
    if point.kind == "time":
        _int_in(f"{where}.value", point.value, 0, MINUTES_PER_DAY - 1)
    else:
        _int_in(f"{where}.value", point.value, -MAX_SUN_OFFSET, MAX_SUN_OFFSET)
    _int_in(f"{where}.level", point.level, 0, 100)
    return point


def encode_set_level(seq: int, level: int, ramp_s: int) -> bytes:
    """SET_LEVEL: ``level`` 0..100 percent or :data:`FOLLOW_PROGRAM`, in ``ramp_s`` s."""
    _int_in("seq", seq, 0, 255)
    if level != FOLLOW_PROGRAM:
        _int_in("level", level, 0, 100)
    _int_in("ramp_s", ramp_s, 0, 0xFFFF)
    return bytes((OP_SET_LEVEL, seq, level)) + ramp_s.to_bytes(2, "big")


def encode_set_program(
    seq: int, default: int, utc_offset_q: int, points: tuple[SwitchPoint, ...] | list[SwitchPoint]
) -> bytes:
    """SET_PROGRAM: the program the controller follows on its own (at most 12 points)."""
    _int_in("seq", seq, 0, 255)
    _int_in("default", default, 0, 100)
    _int_in("utc_offset_q", utc_offset_q, UTC_OFFSET_Q_MIN, UTC_OFFSET_Q_MAX)
    points = tuple(points)
    if len(points) > MAX_POINTS:
        raise ValueError(f"points: {len(points)} switch points, a controller holds {MAX_POINTS}")
    out = bytearray((OP_SET_PROGRAM, seq, default, utc_offset_q & 0xFF, len(points)))
    for i, point in enumerate(points):
        p = _check_point(f"points[{i}]", point)
        out.append(POINT_KINDS[p.kind])
        out += p.value.to_bytes(2, "big", signed=True)
        out.append(p.level)
    return bytes(out)


def encode_status_request(seq: int) -> bytes:
    """STATUS_REQ: answer with a STATUS, change nothing."""
    _int_in("seq", seq, 0, 255)
    return bytes((OP_STATUS_REQ, seq))


def encode_command(command: Command) -> bytes:
    """Any downlink command, from its decoded form (the inverse of :func:`decode_command`)."""
    match command:
        case SetLevel(seq, level, ramp_s):
            return encode_set_level(seq, level, ramp_s)
        case SetProgram(seq, default, utc_offset_q, points):
            return encode_set_program(seq, default, utc_offset_q, points)
        case StatusRequest(seq):
            return encode_status_request(seq)
    raise ValueError(f"not a luminaire command: {command!r}")


def encode_status(status: Status) -> bytes:
    """STATUS, as the controller sends it."""
    _int_in("seq", status.seq, 0, 255)
    _int_in("level", status.level, 0, 100)
    _int_in("energy_wh", status.energy_wh, 0, 0xFFFFFFFF)
    flags = (
        (FLAG_LAMP_FAILURE if status.lamp_failure else 0)
        | (FLAG_DRIVER_FAILURE if status.driver_failure else 0)
        | (FLAG_LOCAL_PROGRAM if status.local_program else 0)
    )
    return bytes((OP_STATUS, status.seq, status.level, flags)) + status.energy_wh.to_bytes(4, "big")


# -- decoding -------------------------------------------------------------------------------


def _expect_length(data: bytes, length: int, what: str) -> None:
    if len(data) < length:
        raise ProtocolError(
            f"truncated {what}: {len(data)} bytes, needs {length} (ends at byte offset "
            f"{len(data)})",
            len(data),
        )
    if len(data) > length:
        raise ProtocolError(
            f"{what} is {length} bytes, got {len(data)}: {len(data) - length} trailing "
            f"byte(s) from byte offset {length}",
            length,
        )


def _level_at(data: bytes, offset: int, what: str, *, follow: bool = False) -> int:
    level = data[offset]
    if level <= 100 or (follow and level == FOLLOW_PROGRAM):
        return level
    allowed = "0..100 or 255" if follow else "0..100"
    raise ProtocolError(f"{what} {level} at byte offset {offset} out of range {allowed}", offset)


def decode_command(payload: bytes) -> Command:
    """A downlink (FPort 20) command."""
    data = bytes(payload)
    if not data:
        raise ProtocolError("empty command frame: no opcode at byte offset 0", 0)
    op = data[0]
    if op == OP_SET_LEVEL:
        _expect_length(data, _SET_LEVEL_LEN, "SET_LEVEL")
        level = _level_at(data, 2, "SET_LEVEL level", follow=True)
        return SetLevel(data[1], level, int.from_bytes(data[3:5], "big"))
    if op == OP_SET_PROGRAM:
        return _decode_program(data)
    if op == OP_STATUS_REQ:
        _expect_length(data, _STATUS_REQ_LEN, "STATUS_REQ")
        return StatusRequest(data[1])
    raise ProtocolError(
        f"unknown command opcode 0x{op:02X} at byte offset 0 (known: 0x01 SET_LEVEL, "
        "0x02 SET_PROGRAM, 0x03 STATUS_REQ)",
        0,
    )


def _decode_program(data: bytes) -> SetProgram:
    if len(data) < _PROGRAM_HEADER_LEN:  # n is not there yet: the header alone is short
        _expect_length(data, _PROGRAM_HEADER_LEN, "SET_PROGRAM header")
    n = data[4]
    if n > MAX_POINTS:
        raise ProtocolError(
            f"SET_PROGRAM announces {n} switch points at byte offset 4, at most {MAX_POINTS}", 4
        )
    _expect_length(data, _PROGRAM_HEADER_LEN + _POINT_LEN * n, f"SET_PROGRAM (n={n})")
    default = _level_at(data, 2, "SET_PROGRAM default")
    utc_offset_q = int.from_bytes(data[3:4], "big", signed=True)
    if not UTC_OFFSET_Q_MIN <= utc_offset_q <= UTC_OFFSET_Q_MAX:
        raise ProtocolError(
            f"SET_PROGRAM utc_offset_q {utc_offset_q} at byte offset 3 out of range "
            f"{UTC_OFFSET_Q_MIN}..{UTC_OFFSET_Q_MAX} quarter hours",
            3,
        )
    points = []
    for i in range(n):
        at = _PROGRAM_HEADER_LEN + _POINT_LEN * i
        code = data[at]
        kind = _KIND_NAMES.get(code)
        if kind is None:
            raise ProtocolError(
                f"SET_PROGRAM point {i}: unknown kind {code} at byte offset {at} (0..4)", at
            )
        value = int.from_bytes(data[at + 1 : at + 3], "big", signed=True)
        if kind == "time" and not 0 <= value < MINUTES_PER_DAY:
            raise ProtocolError(
                f"SET_PROGRAM point {i}: time {value} min at byte offset {at + 1} out of "
                f"range 0..{MINUTES_PER_DAY - 1}",
                at + 1,
            )
        if kind != "time" and not -MAX_SUN_OFFSET <= value <= MAX_SUN_OFFSET:
            raise ProtocolError(
                f"SET_PROGRAM point {i}: {kind} offset {value} min at byte offset {at + 1} "
                f"out of range -{MAX_SUN_OFFSET}..{MAX_SUN_OFFSET}",
                at + 1,
            )
        level = _level_at(data, at + 3, f"SET_PROGRAM point {i} level")
        points.append(SwitchPoint(kind, value, level))
    return SetProgram(data[1], default, utc_offset_q, tuple(points))


def decode_status(payload: bytes) -> Status:
    """An uplink (FPort 21) STATUS."""
    data = bytes(payload)
    if not data:
        raise ProtocolError("empty status frame: no opcode at byte offset 0", 0)
    if data[0] != OP_STATUS:
        raise ProtocolError(
            f"unknown uplink opcode 0x{data[0]:02X} at byte offset 0 (known: 0x81 STATUS)", 0
        )
    _expect_length(data, _STATUS_LEN, "STATUS")
    level = _level_at(data, 2, "STATUS level")
    flags = data[3]
    if flags & ~_KNOWN_FLAGS:
        raise ProtocolError(
            f"STATUS flags 0x{flags:02X} at byte offset 3 set reserved bits "
            f"(0x{flags & ~_KNOWN_FLAGS & 0xFF:02X}; only bits 0..2 are defined)",
            3,
        )
    return Status(
        seq=data[1],
        level=level,
        lamp_failure=bool(flags & FLAG_LAMP_FAILURE),
        driver_failure=bool(flags & FLAG_DRIVER_FAILURE),
        local_program=bool(flags & FLAG_LOCAL_PROGRAM),
        energy_wh=int.from_bytes(data[4:8], "big"),
    )


def status_records(status: Status, device: str, time: float) -> list[Record]:
    """A STATUS as measurements of ``device`` (the LoRaWAN device's name)."""
    return [
        Record(device, "ack_seq", status.seq, time),
        Record(device, "level", status.level, time, "%"),
        Record(device, "lamp_failure", status.lamp_failure, time),
        Record(device, "driver_failure", status.driver_failure, time),
        Record(device, "local_program", status.local_program, time),
        Record(device, "energy", status.energy_wh, time, "Wh"),
    ]
