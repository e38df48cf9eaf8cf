"""Application payload codecs: the bytes a LoRaWAN device sends, turned into measurements.

Four codecs, chosen per device by name (:func:`get_codec`):

``cayenne``
    Cayenne Low Power Payload v1 (myDevices), plus the extended types of the ElectronicCats
    CayenneLPP library. Self-describing: each item is ``channel, type, value``.
``raw``
    The payload bytes as one record, for devices nobody wrote a decoder for yet: nothing is
    lost, the back end can decode later.
``luminaire``
    The STATUS uplink of the street-lighting controllers
    (:mod:`passerelle.lighting.protocol`).
a named layout
    A fixed binary layout declared in the configuration (:class:`Layout`): which field sits
    at which byte offset, its integer/float/bit type, scale, offset and unit. Covers the
    bulk of simple meters (water, waste-bin level, door contact) without writing code.

Bad payloads raise :class:`CodecError` (a ``ValueError``) naming what and where; invalid
layouts raise :class:`LayoutError` listing every problem with its configuration path.

Cayenne LPP measurement names are ``<type>/<channel>`` (``temperature/3``), and
``<type>/<channel>/<axis>`` for multi-valued types (``accelerometer/6/x``, ``gps/1/lat``).
Type first, like an LwM2M path (object/instance/resource) from which LPP takes its type
numbers: the quantity says what the value is, the channel only which sensor of the device.
"""

from __future__ import annotations

import logging
import math
import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Literal, NamedTuple

import msgspec

from ..lighting.protocol import STATUS_FPORT, ProtocolError, decode_status, status_records
from ..model import Record, check_name

__all__ = [
    "CAYENNE_TYPES",
    "Codec",
    "CodecError",
    "Layout",
    "LayoutError",
    "LayoutField",
    "LppType",
    "LppValue",
    "builtin_codecs",
    "decode_cayenne",
    "decode_cayenne_values",
    "decode_layout",
    "encode_cayenne",
    "get_codec",
    "validate_layout",
]

logger = logging.getLogger("passerelle.lorawan.codecs")

Codec = Callable[[bytes, int | None, str, float], list[Record]]
"""``codec(payload, fport, device, time) -> records``."""


class CodecError(ValueError):
    """A payload does not decode: says what is wrong and at which byte offset."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


class LayoutError(ValueError):
    """A layout is invalid; ``problems`` holds every ``(path, reason)`` found."""

    def __init__(self, problems: Sequence[tuple[str, str]]) -> None:
        self.problems = list(problems)
        super().__init__("invalid layout: " + "; ".join(f"{p}: {r}" for p, r in self.problems))


# --------------------------------------------------------------------------------------------
# Cayenne LPP
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Part:
    """One value inside an LPP item: big-endian integer of ``size`` bytes.

    The measurement is ``raw * num / den`` in ``unit``; an integer when ``den`` is 1. Keeping
    the resolution as a fraction lets decoding divide once (correctly rounded: 272 / 10 is
    exactly the float nearest 27.2) and lets encoding invert it exactly.
    """

    suffix: str | None  # "x", "lat"... or None for a single-valued type
    size: int
    signed: bool
    num: int
    den: int
    unit: str | None


@dataclass(frozen=True, slots=True)
class LppType:
    """One Cayenne LPP data type: its code (IPSO object id - 3200), name and value parts."""

    code: int
    kind: str
    parts: tuple[_Part, ...]

    @property
    def size(self) -> int:
        """Bytes the value takes after the channel and type bytes."""
        return sum(p.size for p in self.parts)


def _one(
    code: int, kind: str, size: int, signed: bool, num: int, den: int, unit: str | None
) -> LppType:
    return LppType(code, kind, (_Part(None, size, signed, num, den, unit),))


def _axes(code: int, kind: str, num: int, den: int, unit: str) -> LppType:
    return LppType(code, kind, tuple(_Part(a, 2, True, num, den, unit) for a in "xyz"))


# 1 G in m/s2 (standard gravity, exact by definition), as 980665 / 10**5.
_G_NUM, _G_DEN = 980665, 10**5

# Sources: the myDevices Cayenne LPP v1 table (types 0-3, 101-104, 113, 115, 134, 136) and
# the ElectronicCats CayenneLPP library headers, src/CayenneLPP.h (extended types 100, 116-
# 142: size, multiplier and signedness per type, getTypeSigned()). All values are MSB first.
# Units are SenML's; where LPP uses a unit SenML lacks, the value is converted exactly
# (hPa -> Pa, G -> m/s2, kWh -> Wh). SenML registers no angular velocity, so the gyrometer
# keeps the device's deg/s ("deg" is registered, RFC 8798).
CAYENNE_TYPES: Mapping[int, LppType] = {
    t.code: t
    for t in (
        _one(0, "digital_input", 1, False, 1, 1, None),
        _one(1, "digital_output", 1, False, 1, 1, None),
        _one(2, "analog_input", 2, True, 1, 100, None),
        _one(3, "analog_output", 2, True, 1, 100, None),
        _one(100, "generic", 4, False, 1, 1, None),
        _one(101, "illuminance", 2, False, 1, 1, "lx"),
        _one(102, "presence", 1, False, 1, 1, None),
        _one(103, "temperature", 2, True, 1, 10, "Cel"),
        _one(104, "humidity", 1, False, 1, 2, "%RH"),
        _axes(113, "accelerometer", _G_NUM, _G_DEN * 1000, "m/s2"),  # 0.001 G
        _one(115, "pressure", 2, False, 10, 1, "Pa"),  # 0.1 hPa = 10 Pa
        _one(116, "voltage", 2, False, 1, 100, "V"),
        _one(117, "current", 2, False, 1, 1000, "A"),
        _one(118, "frequency", 4, False, 1, 1, "Hz"),
        _one(120, "percentage", 1, False, 1, 1, "%"),
        _one(121, "altitude", 2, True, 1, 1, "m"),
        _one(125, "concentration", 2, False, 1, 1, "ppm"),
        _one(128, "power", 2, False, 1, 1, "W"),
        _one(130, "distance", 4, False, 1, 1000, "m"),
        _one(131, "energy", 4, False, 1, 1, "Wh"),  # 0.001 kWh = 1 Wh
        _one(132, "direction", 2, False, 1, 1, "deg"),
        _one(133, "unixtime", 4, False, 1, 1, "s"),
        _axes(134, "gyrometer", 1, 100, "deg/s"),
        LppType(135, "colour", tuple(_Part(c, 1, False, 1, 1, None) for c in "rgb")),
        LppType(
            136,
            "gps",
            (
                _Part("lat", 3, True, 1, 10_000, "lat"),
                _Part("lon", 3, True, 1, 10_000, "lon"),
                _Part("alt", 3, True, 1, 100, "m"),
            ),
        ),
        _one(142, "switch", 1, False, 1, 1, None),
    )
}
_BY_KIND: Mapping[str, LppType] = {t.kind: t for t in CAYENNE_TYPES.values()}

Number = int | float


class LppValue(NamedTuple):
    """One decoded LPP item, in the measurement's unit (tuple for multi-valued types)."""

    channel: int
    kind: str
    value: Number | tuple[Number, ...]


def _scaled(raw: int, part: _Part) -> Number:
    if part.den == 1:
        return raw * part.num
    return raw * part.num / part.den  # int / int: correctly rounded, no 0.1 * 3 artefacts


def _items(payload: bytes) -> Iterable[tuple[int, LppType, list[Number]]]:
    """Walk a Cayenne LPP payload: ``(channel, type, values)`` per item, in order."""
    data = bytes(payload)
    pos, end = 0, len(data)
    while pos < end:
        if pos + 1 >= end:
            raise CodecError(
                f"truncated Cayenne LPP item at byte offset {pos}: channel {data[pos]} "
                "has no type byte",
                pos,
            )
        channel, code = data[pos], data[pos + 1]
        lpp = CAYENNE_TYPES.get(code)
        if lpp is None:
            raise CodecError(
                f"unknown Cayenne LPP type {code} (0x{code:02X}) at byte offset {pos + 1} "
                f"(channel {channel})",
                pos + 1,
            )
        start = pos + 2
        if start + lpp.size > end:
            raise CodecError(
                f"truncated Cayenne LPP {lpp.kind} value (type {code}) at byte offset {start}: "
                f"needs {lpp.size} bytes, {end - start} left (channel {channel})",
                start,
            )
        values: list[Number] = []
        for part in lpp.parts:
            raw = int.from_bytes(data[start : start + part.size], "big", signed=part.signed)
            values.append(_scaled(raw, part))
            start += part.size
        yield channel, lpp, values
        pos = start


def decode_cayenne_values(payload: bytes) -> list[LppValue]:
    """Decode a Cayenne LPP payload into ``(channel, kind, value)`` items, in order."""
    return [
        LppValue(channel, lpp.kind, values[0] if len(values) == 1 else tuple(values))
        for channel, lpp, values in _items(payload)
    ]


def decode_cayenne(payload: bytes, device: str, time: float) -> list[Record]:
    """Decode a Cayenne LPP payload into records named ``<type>/<channel>[/<axis>]``."""
    records: list[Record] = []
    for channel, lpp, values in _items(payload):
        base = f"{lpp.kind}/{channel}"
        for part, value in zip(lpp.parts, values, strict=True):
            name = base if part.suffix is None else f"{base}/{part.suffix}"
            records.append(Record(device, name, value, time, part.unit))
    return records


def encode_cayenne(items: Iterable[LppValue | tuple[int, str, object]]) -> bytes:
    """Encode ``(channel, kind, value)`` items, values in the decoded units (Pa, m/s2...).

    The inverse of :func:`decode_cayenne_values`; values are rounded to the type's
    resolution. For tests and simulated devices. A value out of the type's range, an
    unknown kind or a bad channel raises :class:`CodecError` naming the item.
    """
    out = bytearray()
    for i, item in enumerate(items):
        channel, kind, value = item
        where = f"items[{i}] ({kind!r}, channel {channel!r})"
        lpp = _BY_KIND.get(kind)
        if lpp is None:
            raise CodecError(f"{where}: unknown Cayenne LPP kind; known: {', '.join(_BY_KIND)}")
        if isinstance(channel, bool) or not isinstance(channel, int) or not 0 <= channel <= 255:
            raise CodecError(f"{where}: channel must be an integer 0..255")
        values = value if isinstance(value, tuple | list) else (value,)
        if len(values) != len(lpp.parts):
            raise CodecError(f"{where}: needs {len(lpp.parts)} value(s), got {len(values)}")
        out += bytes((channel, lpp.code))
        for part, v in zip(lpp.parts, values, strict=True):
            out += _encode_part(part, v, where)
    return bytes(out)


def _encode_part(part: _Part, value: object, where: str) -> bytes:
    if not isinstance(value, int | float) or not math.isfinite(value):
        raise CodecError(f"{where}: value {value!r} is not a finite number")
    raw = round(Fraction(value) * part.den / part.num)
    bits = part.size * 8
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if part.signed else (0, (1 << bits) - 1)
    if not lo <= raw <= hi:
        span = f"{_scaled(lo, part)}..{_scaled(hi, part)}"
        raise CodecError(f"{where}: value {value!r} out of range {span} {part.unit or ''}".rstrip())
    return raw.to_bytes(part.size, "big", signed=part.signed)


# --------------------------------------------------------------------------------------------
# Declarative fixed layouts
# --------------------------------------------------------------------------------------------

FieldType = Literal[
    "u8", "i8", "u16", "i16", "u24", "i24", "u32", "i32", "f32", "f64", "bool", "bits"
]
_SIZES: Mapping[str, int] = {
    "u8": 1,
    "i8": 1,
    "u16": 2,
    "i16": 2,
    "u24": 3,
    "i24": 3,
    "u32": 4,
    "i32": 4,
    "f32": 4,
    "f64": 8,
    "bool": 1,
    "bits": 1,
}
_BIT_TYPES = frozenset({"bool", "bits"})
_ENDIANS = ("big", "little")
# FPort 0 carries MAC commands, never application data.
_FPORT_MIN, _FPORT_MAX = 1, 255


class LayoutField(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """One field of a fixed binary layout; its value is ``raw * scale + add``.

    ``bool`` and ``bits`` fields read ``bits`` bits (1 for ``bool``) starting at bit ``bit``
    of the byte at ``offset``, bit 0 being the least significant. A field with ``fport`` is
    only decoded from frames on that port (devices that send different frames per port),
    never when the port is not known (``fport=None``).
    """

    name: str
    offset: Annotated[int, msgspec.Meta(ge=0)]
    type: FieldType
    endian: Literal["big", "little"] = "big"
    scale: float = 1.0
    add: float = 0.0
    unit: str | None = None
    bit: int | None = None
    bits: int | None = None
    fport: int | None = None

    @property
    def size(self) -> int:
        """Bytes the field spans."""
        return _SIZES[self.type]


class Layout(msgspec.Struct, forbid_unknown_fields=True, frozen=True):
    """A fixed binary payload layout: a list of fields at byte offsets."""

    fields: list[LayoutField]

    @property
    def min_length(self) -> int:
        """Bytes a payload needs for the fields decoded whatever its fport."""
        return self.length_for(None)

    def length_for(self, fport: int | None) -> int:
        """Bytes a payload on ``fport`` needs (fields without a filter, and that port's)."""
        return max(
            (f.offset + f.size for f in self.fields if f.fport is None or f.fport == fport),
            default=0,
        )


def _ports_meet(a: LayoutField, b: LayoutField) -> bool:
    """Whether two fields can be decoded from the same frame."""
    return a.fport is None or b.fport is None or a.fport == b.fport


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _field_problems(i: int, f: LayoutField) -> list[tuple[str, str]]:
    at = f"fields[{i}]"
    problems: list[tuple[str, str]] = []
    if not isinstance(f.name, str):
        problems.append((f"{at}.name", f"must be a string, got {f.name!r}"))
    else:
        try:
            check_name(f.name)
        except ValueError as e:
            problems.append((f"{at}.name", str(e)))
    if not _is_int(f.offset) or f.offset < 0:
        problems.append((f"{at}.offset", f"must be an integer >= 0, got {f.offset!r}"))
    if f.type not in _SIZES:
        problems.append((f"{at}.type", f"unknown type {f.type!r}: one of {', '.join(_SIZES)}"))
    if f.endian not in _ENDIANS:
        problems.append((f"{at}.endian", f"must be 'big' or 'little', got {f.endian!r}"))
    for attr in ("scale", "add"):
        v = getattr(f, attr)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            problems.append((f"{at}.{attr}", f"must be a finite number, got {v!r}"))
    if isinstance(f.scale, int | float) and f.scale == 0:
        problems.append((f"{at}.scale", "must not be 0 (every reading would be the same)"))
    if f.unit is not None and (
        not isinstance(f.unit, str) or not f.unit or not f.unit.isprintable() or " " in f.unit
    ):
        problems.append((f"{at}.unit", f"not a unit symbol: {f.unit!r}"))
    if f.fport is not None and (not _is_int(f.fport) or not _FPORT_MIN <= f.fport <= _FPORT_MAX):
        problems.append(
            (
                f"{at}.fport",
                f"must be {_FPORT_MIN}..{_FPORT_MAX} (an application port), got {f.fport!r}",
            )
        )
    problems += _bit_problems(at, f)
    return problems


def _bit_problems(at: str, f: LayoutField) -> list[tuple[str, str]]:
    if f.type not in _BIT_TYPES:
        return [
            (f"{at}.{attr}", f"only bits and bool fields take {attr!r}; this is {f.type!r}")
            for attr in ("bit", "bits")
            if getattr(f, attr) is not None
        ]
    problems: list[tuple[str, str]] = []
    if f.bit is None:
        problems.append(
            (f"{at}.bit", f"a {f.type} field needs its first bit (0..7, 0 = least significant)")
        )
    elif not _is_int(f.bit) or not 0 <= f.bit <= 7:
        problems.append((f"{at}.bit", f"must be 0..7, got {f.bit!r}"))
    if f.type == "bool":
        if f.bits not in (None, 1):
            problems.append((f"{at}.bits", f"a bool field is one bit, got {f.bits!r}"))
        if f.scale != 1 or f.add != 0:
            problems.append((f"{at}.scale", "a bool field takes no scale or add"))
    elif f.bits is None:
        problems.append((f"{at}.bits", "a bits field needs its width in bits (1..8)"))
    elif not _is_int(f.bits) or not 1 <= f.bits <= 8:
        problems.append((f"{at}.bits", f"must be 1..8, got {f.bits!r}"))
    elif isinstance(f.bit, int) and 0 <= f.bit <= 7 and f.bit + f.bits > 8:
        problems.append(
            (f"{at}.bits", f"bit {f.bit} + {f.bits} bits runs past the byte (bits 0..7)")
        )
    return problems


def _bit_span(f: LayoutField) -> tuple[int, int]:
    width = 1 if f.type == "bool" else (f.bits or 1)
    bit = f.bit or 0
    return bit, bit + width - 1


def _span_text(lo: int, hi: int, what: str) -> str:
    return f"{what} {lo}" if lo == hi else f"{what}s {lo}..{hi}"


def _overlap_text(lo: int, hi: int, what: str) -> str:
    return f"{_span_text(lo, hi, what)} {'overlaps' if lo == hi else 'overlap'}"


def validate_layout(layout: Layout) -> list[tuple[str, str]]:
    """Every problem of ``layout`` as ``(path, reason)``; empty when it is valid.

    Fields may share bytes only when both are ``bits``/``bool`` fields on distinct bits;
    names must be valid SenML names, unique among fields decoded from the same frame.
    """
    fields = layout.fields
    if not fields:
        return [("fields", "a layout needs at least one field")]
    problems: list[tuple[str, str]] = []
    sound: list[bool] = []  # whether offset/type/bits are valid enough to check overlaps
    for i, f in enumerate(fields):
        own = _field_problems(i, f)
        problems += own
        sound.append(not any(p.split(".")[-1] in ("offset", "type", "bit", "bits") for p, _ in own))
    for i, f in enumerate(fields):
        for j in range(i):
            g = fields[j]
            if not _ports_meet(f, g):
                continue
            if f.name == g.name:
                problems.append((f"fields[{i}].name", f"duplicates fields[{j}] {g.name!r}"))
            if not (sound[i] and sound[j]):
                continue
            f_lo, f_hi = f.offset, f.offset + f.size - 1
            g_lo, g_hi = g.offset, g.offset + g.size - 1
            if f_hi < g_lo or g_hi < f_lo:
                continue
            if f.type in _BIT_TYPES and g.type in _BIT_TYPES:
                (fb_lo, fb_hi), (gb_lo, gb_hi) = _bit_span(f), _bit_span(g)
                if fb_hi >= gb_lo and gb_hi >= fb_lo:
                    problems.append(
                        (
                            f"fields[{i}].bit",
                            f"{_overlap_text(fb_lo, fb_hi, 'bit')} fields[{j}] {g.name!r} "
                            f"({_span_text(gb_lo, gb_hi, 'bit')} of byte {g.offset})",
                        )
                    )
            else:
                problems.append(
                    (
                        f"fields[{i}].offset",
                        f"{_overlap_text(f_lo, f_hi, 'byte')} fields[{j}] {g.name!r} "
                        f"({_span_text(g_lo, g_hi, 'byte')}, {g.type}); only bits and bool "
                        "fields may share a byte",
                    )
                )
    return problems


def _decimals(x: float) -> int:
    """Decimal places of ``x`` as written (0.1 -> 1, 0.25 -> 2, 2.0 -> 0)."""
    exponent = Decimal(repr(float(x))).as_tuple().exponent
    return max(0, -exponent) if isinstance(exponent, int) else 0


_F32 = struct.Struct("<f")


def _shortest_f32(x: float) -> float:
    """The shortest decimal that reads back as the same float32 (21.37, not 21.3700008...)."""
    packed = _F32.pack(x)
    for digits in range(1, 10):
        candidate = float(f"{x:.{digits}g}")
        if _F32.pack(candidate) == packed:
            return candidate
    return x


class _Reader(NamedTuple):
    position: int  # in layout.fields, for messages
    field: LayoutField
    end: int  # offset + size
    decimals: int  # for integer raws with a scale or add


class _CompiledLayout:
    """A validated layout ready to decode, with its fields per fport worked out once."""

    def __init__(self, layout: Layout) -> None:
        problems = validate_layout(layout)
        if problems:
            raise LayoutError(problems)
        self.readers = [
            _Reader(i, f, f.offset + f.size, max(_decimals(f.scale), _decimals(f.add)))
            for i, f in enumerate(layout.fields)
        ]
        self._by_port: dict[int | None, list[_Reader]] = {}

    def for_port(self, fport: int | None) -> list[_Reader]:
        got = self._by_port.get(fport)
        if got is None:
            got = [r for r in self.readers if r.field.fport is None or r.field.fport == fport]
            self._by_port[fport] = got
        return got

    def decode(self, payload: bytes, device: str, time: float, fport: int | None) -> list[Record]:
        readers = self.for_port(fport)
        if not readers:
            raise CodecError(f"layout has no field for fport {fport}")
        data = bytes(payload)
        longest = max(readers, key=lambda r: r.end)
        if len(data) < longest.end:
            f = longest.field
            raise CodecError(
                f"payload {len(data)} bytes, layout needs {longest.end} "
                f"(fields[{longest.position}] {f.name!r} at offset {f.offset}, {f.type})",
                len(data),
            )
        records: list[Record] = []
        for r in readers:
            value = _read(r, data)
            if value is None:
                logger.warning(
                    "field %r of %s is not a finite number; dropped",
                    r.field.name,
                    device,
                    extra={
                        "cause": "lorawan.codec.non_finite",
                        "device": device,
                        "field": r.field.name,
                    },
                )
                continue
            records.append(Record(device, r.field.name, value, time, r.field.unit))
        return records


def _read(r: _Reader, data: bytes) -> int | float | bool | None:
    """The field's value, or None when a float field holds NaN or an infinity."""
    f = r.field
    chunk = data[f.offset : r.end]
    if f.type == "bool":
        return bool(chunk[0] >> (f.bit or 0) & 1)
    if f.type == "bits":
        raw: int | float = chunk[0] >> (f.bit or 0) & ((1 << (f.bits or 1)) - 1)
    elif f.type in ("f32", "f64"):
        fmt = ("<" if f.endian == "little" else ">") + ("f" if f.type == "f32" else "d")
        raw = struct.unpack(fmt, chunk)[0]
        if f.type == "f32" and math.isfinite(raw):
            raw = _shortest_f32(raw)
    else:
        raw = int.from_bytes(chunk, f.endian, signed=f.type.startswith("i"))
    if f.scale == 1 and f.add == 0:
        return raw if not isinstance(raw, float) or math.isfinite(raw) else None
    value = raw * f.scale + f.add
    if not math.isfinite(value):
        return None
    if isinstance(raw, int):
        # The exact result has at most as many decimals as scale and add: rounding there
        # removes binary artefacts (3 * 0.1 -> 0.3) and nothing else.
        return round(value, r.decimals)
    return float(f"{value:.15g}")


def decode_layout(
    layout: Layout, payload: bytes, device: str, time: float, fport: int | None = None
) -> list[Record]:
    """Decode ``payload`` with a fixed layout; fields with an ``fport`` need that fport.

    Bytes past the last field are ignored (newer firmware often appends fields). An invalid
    layout raises :class:`LayoutError`, a short payload :class:`CodecError`. A float field
    holding NaN or an infinity is dropped and logged (cause ``lorawan.codec.non_finite``) so
    the frame's other fields are kept.
    """
    return _CompiledLayout(layout).decode(payload, device, time, fport)


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def _cayenne_codec(payload: bytes, fport: int | None, device: str, time: float) -> list[Record]:
    # LPP is self-describing: devices send it on whatever port their firmware picked.
    return decode_cayenne(payload, device, time)


def _raw_codec(payload: bytes, fport: int | None, device: str, time: float) -> list[Record]:
    name = "payload" if fport is None else f"payload/{fport}"
    return [Record(device, name, bytes(payload), time, None)]


def _luminaire_codec(payload: bytes, fport: int | None, device: str, time: float) -> list[Record]:
    if fport is not None and fport != STATUS_FPORT:
        raise CodecError(f"luminaire: fport {fport} is not the STATUS port {STATUS_FPORT}")
    try:
        return status_records(decode_status(payload), device, time)
    except ProtocolError as exc:
        raise CodecError(f"luminaire: {exc}", exc.offset) from exc


_BUILTIN: Mapping[str, Codec] = {
    "cayenne": _cayenne_codec,
    "raw": _raw_codec,
    "luminaire": _luminaire_codec,
}


def builtin_codecs() -> tuple[str, ...]:
    """Names a layout may not take."""
    return tuple(_BUILTIN)


def get_codec(name: str, layouts: Mapping[str, Layout]) -> Codec:
    """The codec called ``name``: ``cayenne``, ``raw``, ``luminaire`` or one of ``layouts``.

    A layout is validated here, once, so a bad configuration fails at load time
    (:class:`LayoutError`). An unknown name raises ``KeyError`` listing the known ones; a
    layout named like a built-in codec raises ``ValueError``.
    """
    if name in _BUILTIN:
        if name in layouts:
            raise ValueError(f"layout {name!r} has the name of a built-in codec; rename it")
        return _BUILTIN[name]
    layout = layouts.get(name)
    if layout is None:
        known = ", ".join([*_BUILTIN, *sorted(layouts)])
        raise KeyError(f"unknown codec {name!r}; known codecs: {known}")
    compiled = _CompiledLayout(layout)

    def layout_codec(payload: bytes, fport: int | None, device: str, time: float) -> list[Record]:
        return compiled.decode(payload, device, time, fport)

    layout_codec.__name__ = f"layout_codec[{name}]"
    return layout_codec
