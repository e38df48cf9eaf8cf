"""Payload codecs: Cayenne LPP vectors, fixed layouts from TOML, the codec registry."""

from __future__ import annotations

import logging
import math
import struct
import tomllib

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.lorawan.codecs import (
    CAYENNE_TYPES,
    CodecError,
    Layout,
    LayoutError,
    LayoutField,
    LppValue,
    decode_cayenne,
    decode_cayenne_values,
    decode_layout,
    encode_cayenne,
    get_codec,
    validate_layout,
)
from passerelle.model import Record, check_name

T = 1_800_000_000.0
G = 9.80665  # m/s2 per G


def values_of(records: list[Record]) -> dict[str, tuple[object, str | None]]:
    return {r.name: (r.value, r.unit) for r in records}


# --- Cayenne LPP: vectors --------------------------------------------------------------------

# Source: myDevices Cayenne LPP v1 documentation, "Examples" section (also reproduced in the
# myDevicesIoT/CayenneLPP README): two temperature sensors, temperature, accelerometer, GPS.


def test_spec_two_temperature_sensors() -> None:
    records = decode_cayenne(bytes.fromhex("03 67 01 10 05 67 00 FF"), "env", T)
    assert records == [
        Record("env", "temperature/3", 27.2, T, "Cel"),
        Record("env", "temperature/5", 25.5, T, "Cel"),
    ]


def test_spec_negative_temperature() -> None:
    assert decode_cayenne(bytes.fromhex("01 67 FF D7"), "env", T) == [
        Record("env", "temperature/1", -4.1, T, "Cel")
    ]


def test_spec_accelerometer_is_converted_from_g_to_m_s2() -> None:
    got = values_of(decode_cayenne(bytes.fromhex("06 71 04 D2 FB 2E 00 00"), "tilt", T))
    assert list(got) == ["accelerometer/6/x", "accelerometer/6/y", "accelerometer/6/z"]
    assert all(unit == "m/s2" for _, unit in got.values())
    x, y, z = (v for v, _ in got.values())
    assert x == pytest.approx(1.234 * G, abs=1e-12)
    assert y == pytest.approx(-1.234 * G, abs=1e-12)
    assert z == 0


def test_spec_gps() -> None:
    got = decode_cayenne(bytes.fromhex("01 88 06 76 5F F2 96 0A 00 03 E8"), "tracker", T)
    assert got == [
        Record("tracker", "gps/1/lat", 42.3519, T, "lat"),
        Record("tracker", "gps/1/lon", -87.9094, T, "lon"),
        Record("tracker", "gps/1/alt", 10.0, T, "m"),
    ]


# Source: ElectronicCats/CayenneLPP test/aunit/main.cpp (EncoderTest/DecoderTest cases), the
# reference for the extended types. (payload, name, value, unit). Energy is sent in 0.001 kWh
# steps, i.e. in Wh, the unit it is reported in here.
ELECTRONICCATS_VECTORS = [
    ("03 67 01 10 02 68 6C", "humidity/2", 54.0, "%RH"),
    ("05 67 FF D1", "temperature/5", -4.7, "Cel"),
    ("01 64 00 00 03 E6", "generic/1", 998, None),
    ("03 74 57 B8", "voltage/3", 224.56, "V"),
    ("01 75 00 ED", "current/1", 0.237, "A"),
    ("01 76 33 BE 27 A0", "frequency/1", 868100000, "Hz"),
    ("05 79 FF EF", "altitude/5", -17, "m"),
    ("05 80 0D 7A", "power/5", 3450, "W"),
    ("01 80 FF FF", "power/1", 65535, "W"),
    ("01 82 00 00 00 22", "distance/1", 0.034, "m"),
    ("01 83 00 79 5B 30", "energy/1", 7953200, "Wh"),
    ("01 84 01 00", "direction/1", 256, "deg"),
    ("05 8E 01", "switch/5", 1, None),
]


@pytest.mark.parametrize(("payload", "name", "value", "unit"), ELECTRONICCATS_VECTORS)
def test_extended_types_decode(payload: str, name: str, value: object, unit: str | None) -> None:
    got = values_of(decode_cayenne(bytes.fromhex(payload), "dev", T))
    assert got[name] == (value, unit)
    assert type(got[name][0]) is type(value)


@pytest.mark.parametrize(("payload", "name", "value", "unit"), ELECTRONICCATS_VECTORS)
def test_extended_types_encode_to_the_reference_bytes(
    payload: str, name: str, value: object, unit: str | None
) -> None:
    kind, channel = name.split("/")
    encoded = encode_cayenne([LppValue(int(channel), kind, value)])  # type: ignore[arg-type]
    assert bytes.fromhex(payload).endswith(encoded)  # the vector's last item


# Vectors worked out by hand from the type table of the v1 spec (size, resolution,
# signedness) for the types neither source gives an example of.
TABLE_VECTORS = [
    ("01 00 01", {"digital_input/1": (1, None)}),
    ("02 01 FF", {"digital_output/2": (255, None)}),
    ("03 02 FF 9C", {"analog_input/3": (-1.0, None)}),  # -100 * 0.01
    ("04 03 01 2C", {"analog_output/4": (3.0, None)}),
    ("05 65 FF FF", {"illuminance/5": (65535, "lx")}),  # unsigned
    ("06 66 01", {"presence/6": (1, None)}),
    ("07 68 FF", {"humidity/7": (127.5, "%RH")}),  # 0.5 % unsigned
    ("08 73 27 77", {"pressure/8": (101030, "Pa")}),  # 10103 * 0.1 hPa
    (
        "09 86 FF 38 00 64 00 00",
        {
            "gyrometer/9/x": (-2.0, "deg/s"),
            "gyrometer/9/y": (1.0, "deg/s"),
            "gyrometer/9/z": (0.0, "deg/s"),
        },
    ),
    ("0A 78 64", {"percentage/10": (100, "%")}),
    ("0B 7D 01 90", {"concentration/11": (400, "ppm")}),
    ("0C 85 6B 2D 4C 80", {"unixtime/12": (1798130816, "s")}),
    (
        "0D 87 FF 80 00",
        {"colour/13/r": (255, None), "colour/13/g": (128, None), "colour/13/b": (0, None)},
    ),
    (
        "0E 88 F9 89 A1 0D 69 F6 FF FF 9C",
        {
            "gps/14/lat": (-42.3519, "lat"),
            "gps/14/lon": (87.9094, "lon"),
            "gps/14/alt": (-1.0, "m"),
        },
    ),
]


@pytest.mark.parametrize(("payload", "want"), TABLE_VECTORS)
def test_table_types_decode(payload: str, want: dict[str, tuple[object, str | None]]) -> None:
    assert values_of(decode_cayenne(bytes.fromhex(payload), "dev", T)) == want


def test_encoder_rounds_where_the_c_library_truncates() -> None:
    # The ElectronicCats encoder truncates 42.3519 * 10000 (a float32 423518.99) to
    # 06 76 5E; rounding gives the spec's own bytes, 06 76 5F.
    got = encode_cayenne([LppValue(1, "gps", (42.3519, -87.9094, 10))])
    assert got == bytes.fromhex("01 88 06 76 5F F2 96 0A 00 03 E8")


def test_encoder_accepts_the_decoded_units() -> None:
    payload = encode_cayenne(
        [
            (3, "temperature", 27.2),
            (6, "accelerometer", (1.234 * G, -1.234 * G, 0)),
            (8, "pressure", 101030),
        ]
    )
    assert payload == bytes.fromhex("03 67 01 10 06 71 04 D2 FB 2E 00 00 08 73 27 77")


def test_every_name_is_a_valid_senml_name() -> None:
    payload = encode_cayenne(
        LppValue(255, t.kind, 0 if len(t.parts) == 1 else (0,) * len(t.parts))
        for t in CAYENNE_TYPES.values()
    )
    records = decode_cayenne(payload, "dev", T)
    assert len(records) == sum(len(t.parts) for t in CAYENNE_TYPES.values())
    for r in records:
        assert check_name(r.name) == r.name


# --- Cayenne LPP: errors ---------------------------------------------------------------------


def test_unknown_type_names_the_type_and_its_offset() -> None:
    with pytest.raises(
        CodecError,
        match=r"unknown Cayenne LPP type 42 \(0x2A\) at byte offset 5"
        r" \(channel 9\)",
    ) as info:
        decode_cayenne(bytes.fromhex("03 67 01 10 09 2A 00"), "dev", T)
    assert info.value.offset == 5


def test_truncated_value_names_the_type_and_its_offset() -> None:
    with pytest.raises(
        CodecError,
        match=r"truncated Cayenne LPP temperature value \(type 103\) "
        r"at byte offset 6: needs 2 bytes, 1 left",
    ) as info:
        decode_cayenne(bytes.fromhex("03 67 01 10 05 67 00"), "dev", T)
    assert info.value.offset == 6


def test_a_lone_channel_byte_is_a_truncated_item() -> None:
    with pytest.raises(CodecError, match="truncated Cayenne LPP item at byte offset 4"):
        decode_cayenne(bytes.fromhex("03 67 01 10 05"), "dev", T)


def test_empty_payload_decodes_to_nothing() -> None:
    assert decode_cayenne(b"", "dev", T) == []


@pytest.mark.parametrize(
    ("items", "message"),
    [
        ([(1, "temperature", 3276.8)], r"items\[0\].*out of range -3276.8..3276.7 Cel"),
        ([(1, "humidity", -0.5)], r"out of range 0.0..127.5 %RH"),
        ([(1, "temp", 20)], r"items\[0\] \('temp', channel 1\): unknown Cayenne LPP kind"),
        ([(1, "switch", 1), (256, "switch", 1)], r"items\[1\].*channel must be an integer"),
        ([(1, "gps", (1.0, 2.0))], r"needs 3 value\(s\), got 2"),
        ([(1, "voltage", math.nan)], r"not a finite number"),
    ],
)
def test_encoder_refuses_what_it_cannot_encode(items: list, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        encode_cayenne(items)


# --- Cayenne LPP: properties -----------------------------------------------------------------


@st.composite
def valid_payloads(draw: st.DrawFn) -> bytes:
    """Well-formed payloads: random items of known types with random value bytes."""
    out = bytearray()
    for _ in range(draw(st.integers(0, 8))):
        code = draw(st.sampled_from(sorted(CAYENNE_TYPES)))
        out += bytes((draw(st.integers(0, 255)), code))
        out += draw(st.binary(min_size=CAYENNE_TYPES[code].size, max_size=CAYENNE_TYPES[code].size))
    return bytes(out)


@settings(max_examples=400, deadline=None)
@given(valid_payloads())
def test_bytes_values_bytes_round_trip(payload: bytes) -> None:
    values = decode_cayenne_values(payload)
    assert encode_cayenne(values) == payload
    assert len(decode_cayenne(payload, "dev", T)) == sum(
        1 if not isinstance(v.value, tuple) else len(v.value) for v in values
    )


@st.composite
def items_in_range(draw: st.DrawFn) -> LppValue:
    lpp = CAYENNE_TYPES[draw(st.sampled_from(sorted(CAYENNE_TYPES)))]
    vals = []
    for p in lpp.parts:
        bits = p.size * 8
        lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if p.signed else (0, (1 << bits) - 1)
        step = p.num / p.den
        vals.append(draw(st.floats(min_value=lo * step, max_value=hi * step)))
    return LppValue(draw(st.integers(0, 255)), lpp.kind, vals[0] if len(vals) == 1 else tuple(vals))


@settings(max_examples=300, deadline=None)
@given(st.lists(items_in_range(), max_size=6))
def test_values_survive_encoding_within_half_a_step(items: list[LppValue]) -> None:
    got = decode_cayenne_values(encode_cayenne(items))
    assert [(g.channel, g.kind) for g in got] == [(i.channel, i.kind) for i in items]
    for g, i in zip(got, items, strict=True):
        parts = CAYENNE_TYPES[next(c for c, t in CAYENNE_TYPES.items() if t.kind == i.kind)].parts
        gv = g.value if isinstance(g.value, tuple) else (g.value,)
        iv = i.value if isinstance(i.value, tuple) else (i.value,)
        for p, a, b in zip(parts, gv, iv, strict=True):
            assert abs(a - b) <= p.num / p.den / 2 * (1 + 1e-9)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_codec_error(payload: bytes) -> None:
    try:
        records = decode_cayenne(payload, "dev", T)
    except CodecError:
        return
    for r in records:
        assert isinstance(r.value, int | float)


# --- Fixed layouts ---------------------------------------------------------------------------

WATER_METER_TOML = """
[[fields]]
name = "index"          # litres, little-endian as the meter's MCU writes it
offset = 0
type = "u32"
endian = "little"
unit = "l"

[[fields]]
name = "battery"
offset = 4
type = "u8"
scale = 0.1
unit = "V"

[[fields]]
name = "temperature"
offset = 5
type = "i8"
unit = "Cel"

[[fields]]
name = "leak"
offset = 6
type = "bool"
bit = 0

[[fields]]
name = "backflow"
offset = 6
type = "bool"
bit = 1

[[fields]]
name = "alarm_code"
offset = 6
type = "bits"
bit = 2
bits = 3
"""


def water_meter() -> Layout:
    return msgspec.convert(tomllib.loads(WATER_METER_TOML), Layout)


def test_water_meter_layout_from_toml() -> None:
    layout = water_meter()
    assert validate_layout(layout) == []
    assert layout.min_length == 7
    # index 123456 l (0x0001E240, little-endian), 3.6 V, -5 Cel, flags 0b000_011_0_1.
    payload = bytes.fromhex("40 E2 01 00 24 FB 0D")
    got = decode_layout(layout, payload, "meter-7", T)
    assert got == [
        Record("meter-7", "index", 123456, T, "l"),
        Record("meter-7", "battery", 3.6, T, "V"),
        Record("meter-7", "temperature", -5, T, "Cel"),
        Record("meter-7", "leak", True, T, None),
        Record("meter-7", "backflow", False, T, None),
        Record("meter-7", "alarm_code", 3, T, None),
    ]
    assert type(got[0].value) is int and type(got[1].value) is float


def test_layout_config_rejects_unknown_keys_and_bad_types_with_a_path() -> None:
    bad_key = tomllib.loads('[[fields]]\nname = "a"\noffset = 0\ntype = "u8"\nscael = 2\n')
    with pytest.raises(msgspec.ValidationError, match=r"unknown field `scael`.*fields\[0\]"):
        msgspec.convert(bad_key, Layout)
    bad_type = tomllib.loads('[[fields]]\nname = "a"\noffset = 0\ntype = "u12"\n')
    with pytest.raises(msgspec.ValidationError, match=r"fields\[0\]\.type"):
        msgspec.convert(bad_type, Layout)
    negative = tomllib.loads('[[fields]]\nname = "a"\noffset = -1\ntype = "u8"\n')
    with pytest.raises(msgspec.ValidationError, match=r">= 0.*fields\[0\]\.offset"):
        msgspec.convert(negative, Layout)


def test_short_payload_names_the_field_that_needs_the_bytes() -> None:
    layout = Layout(
        [
            LayoutField("index", 0, "u32"),
            LayoutField("flags", 4, "u8"),
            LayoutField("volume", 7, "u8", fport=9),  # only in frames on port 9
            LayoutField("battery", 5, "u16"),
        ]
    )
    with pytest.raises(CodecError) as info:
        decode_layout(layout, bytes(5), "meter", T)
    assert (
        str(info.value) == "payload 5 bytes, layout needs 7 (fields[3] 'battery' at offset 5, u16)"
    )
    assert info.value.offset == 5


@pytest.mark.parametrize(
    ("field", "raw", "want"),
    [
        (LayoutField("v", 0, "u8", scale=0.1), b"\x03", 0.3),
        (LayoutField("v", 0, "u16", scale=0.01, add=-40), (6543).to_bytes(2, "big"), 25.43),
        (
            LayoutField("v", 0, "i16", endian="little", scale=0.1),
            (-41).to_bytes(2, "little", signed=True),
            -4.1,
        ),
        (LayoutField("v", 0, "u24", scale=0.001), (7953200).to_bytes(3, "big"), 7953.2),
        (LayoutField("v", 0, "i24"), (-5).to_bytes(3, "big", signed=True), -5),
        (LayoutField("v", 0, "u32", scale=2), (21).to_bytes(4, "big"), 42.0),
        (LayoutField("v", 0, "i32", endian="little"), (-2).to_bytes(4, "little", signed=True), -2),
        (LayoutField("v", 0, "f32"), struct.pack(">f", 21.37), 21.37),
        (LayoutField("v", 0, "f32", endian="little", scale=0.5), struct.pack("<f", 3.3), 1.65),
        (LayoutField("v", 0, "f64", endian="little"), struct.pack("<d", 0.1 + 0.2), 0.1 + 0.2),
        (LayoutField("v", 0, "bits", bit=4, bits=4, scale=0.5), b"\xf0", 7.5),
        (LayoutField("v", 0, "bool", bit=7), b"\x80", True),
    ],
)
def test_layout_values_are_exact_decimals(field: LayoutField, raw: bytes, want: object) -> None:
    (got,) = decode_layout(Layout([field]), raw, "dev", T)
    assert got.value == want
    assert type(got.value) is type(want)


def test_fport_filters_fields_and_lengths() -> None:
    layout = Layout(
        [
            LayoutField("battery", 0, "u8", scale=0.02, unit="V"),
            LayoutField("level", 1, "u16", unit="mm", fport=1),
            LayoutField("alarm", 1, "u8", fport=2),
            LayoutField("level", 2, "u16", unit="mm", fport=2),  # same name on another port: fine
        ]
    )
    assert validate_layout(layout) == []
    assert (layout.min_length, layout.length_for(1), layout.length_for(2)) == (1, 3, 4)
    on1 = decode_layout(layout, bytes.fromhex("A0 01 F4"), "bin", T, fport=1)
    assert values_of(on1) == {"battery": (3.2, "V"), "level": (500, "mm")}
    on2 = decode_layout(layout, bytes.fromhex("A0 07 01 F4"), "bin", T, fport=2)
    assert values_of(on2) == {"battery": (3.2, "V"), "alarm": (7, None), "level": (500, "mm")}
    with pytest.raises(CodecError, match="layout needs 4"):
        decode_layout(layout, bytes.fromhex("A0 01 F4"), "bin", T, fport=2)
    only2 = Layout([LayoutField("alarm", 0, "u8", fport=2)])
    with pytest.raises(CodecError, match="layout has no field for fport 1"):
        decode_layout(only2, b"\x01", "bin", T, fport=1)


def test_extra_bytes_past_the_layout_are_ignored() -> None:
    layout = Layout([LayoutField("count", 0, "u16")])
    assert values_of(decode_layout(layout, bytes.fromhex("00 2A FF FF"), "c", T)) == {
        "count": (42, None)
    }


def test_non_finite_float_is_dropped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    layout = Layout([LayoutField("temp", 0, "f32"), LayoutField("count", 4, "u8")])
    with caplog.at_level(logging.WARNING, logger="passerelle.lorawan.codecs"):
        got = decode_layout(layout, struct.pack(">f", math.nan) + b"\x05", "probe", T)
    assert got == [Record("probe", "count", 5, T, None)]
    (entry,) = caplog.records
    assert entry.cause == "lorawan.codec.non_finite"  # type: ignore[attr-defined]
    assert "temp" in entry.getMessage() and "probe" in entry.getMessage()


VALIDATION_CASES = [
    (
        [LayoutField("a", 0, "u16"), LayoutField("b", 1, "u8")],
        [
            (
                "fields[1].offset",
                "byte 1 overlaps fields[0] 'a' (bytes 0..1, u16); only bits and bool "
                "fields may share a byte",
            )
        ],
    ),
    (
        [LayoutField("a", 0, "bits", bit=0, bits=3), LayoutField("b", 0, "bool", bit=2)],
        [("fields[1].bit", "bit 2 overlaps fields[0] 'a' (bits 0..2 of byte 0)")],
    ),
    (
        [LayoutField("a", 0, "u8"), LayoutField("a", 1, "u8")],
        [("fields[1].name", "duplicates fields[0] 'a'")],
    ),
    (
        [LayoutField("bad name", 0, "u8")],
        [("fields[0].name", "invalid SenML name 'bad name': letters, digits and -:./_ only")],
    ),
    ([LayoutField("a", -1, "u8")], [("fields[0].offset", "must be an integer >= 0, got -1")]),
    (
        [LayoutField("a", 0, "u12")],  # type: ignore[arg-type]
        [
            (
                "fields[0].type",
                "unknown type 'u12': one of u8, i8, u16, i16, u24, i24, u32, i32, "
                "f32, f64, bool, bits",
            )
        ],
    ),
    (
        [LayoutField("a", 0, "u8", endian="middle")],  # type: ignore[arg-type]
        [("fields[0].endian", "must be 'big' or 'little', got 'middle'")],
    ),
    (
        [LayoutField("a", 0, "u8", scale=0)],
        [("fields[0].scale", "must not be 0 (every reading would be the same)")],
    ),
    (
        [LayoutField("a", 0, "u8", add=math.inf)],
        [("fields[0].add", "must be a finite number, got inf")],
    ),
    (
        [LayoutField("a", 0, "u8", bit=3)],
        [("fields[0].bit", "only bits and bool fields take 'bit'; this is 'u8'")],
    ),
    (
        [LayoutField("a", 0, "bits", bits=2)],
        [("fields[0].bit", "a bits field needs its first bit (0..7, 0 = least significant)")],
    ),
    (
        [LayoutField("a", 0, "bits", bit=6, bits=4)],
        [("fields[0].bits", "bit 6 + 4 bits runs past the byte (bits 0..7)")],
    ),
    ([LayoutField("a", 0, "bits", bit=8, bits=1)], [("fields[0].bit", "must be 0..7, got 8")]),
    (
        [LayoutField("a", 0, "bool", bit=1, bits=3)],
        [("fields[0].bits", "a bool field is one bit, got 3")],
    ),
    (
        [LayoutField("a", 0, "bool", bit=1, scale=2)],
        [("fields[0].scale", "a bool field takes no scale or add")],
    ),
    ([LayoutField("a", 0, "u8", unit="k W")], [("fields[0].unit", "not a unit symbol: 'k W'")]),
    (
        [LayoutField("a", 0, "u8", fport=0)],
        [("fields[0].fport", "must be 1..255 (an application port), got 0")],
    ),
    ([], [("fields", "a layout needs at least one field")]),
]


@pytest.mark.parametrize(("fields", "want"), VALIDATION_CASES)
def test_validation_names_the_path_and_the_reason(
    fields: list[LayoutField], want: list[tuple[str, str]]
) -> None:
    layout = Layout(fields)
    assert validate_layout(layout) == want
    with pytest.raises(LayoutError) as info:
        decode_layout(layout, bytes(16), "dev", T)
    assert info.value.problems == want
    assert want[0][0] in str(info.value)


def test_overlap_is_allowed_between_fields_of_different_ports() -> None:
    layout = Layout([LayoutField("a", 0, "u16", fport=1), LayoutField("b", 0, "u32", fport=2)])
    assert validate_layout(layout) == []


fields_any = st.builds(
    LayoutField,
    name=st.sampled_from(["a", "b", "c", "bad name", ""]),
    offset=st.integers(-2, 12),
    type=st.sampled_from(
        ["u8", "i8", "u16", "i16", "u24", "i24", "u32", "i32", "f32", "f64", "bool", "bits", "x"]
    ),
    endian=st.sampled_from(["big", "little"]),
    scale=st.sampled_from([1.0, 0.1, 0.25, 3.0, 0.0, math.nan]),
    add=st.sampled_from([0.0, -40.0, 273.15]),
    unit=st.sampled_from([None, "V", ""]),
    bit=st.one_of(st.none(), st.integers(-1, 9)),
    bits=st.one_of(st.none(), st.integers(0, 9)),
    fport=st.one_of(st.none(), st.integers(0, 3)),
)


@settings(max_examples=500, deadline=None)
@given(
    st.lists(fields_any, max_size=5),
    st.binary(max_size=24),
    st.one_of(st.none(), st.integers(1, 3)),
)
def test_any_layout_validates_and_decodes_without_crashing(
    fields: list[LayoutField], payload: bytes, fport: int | None
) -> None:
    layout = Layout(fields)
    problems = validate_layout(layout)
    try:
        records = decode_layout(layout, payload, "dev", T, fport=fport)
    except LayoutError as e:
        assert problems and e.problems == problems
        return
    except CodecError:
        assert not problems
        return
    assert not problems
    for r in records:
        assert isinstance(r.value, bool | int | float) and not (
            isinstance(r.value, float) and not math.isfinite(r.value)
        )


@st.composite
def valid_layouts(draw: st.DrawFn) -> Layout:
    """Layouts that pass validation: fields laid end to end, bit fields sharing bytes."""
    fields: list[LayoutField] = []
    offset = 0
    for k in range(draw(st.integers(1, 8))):
        kind = draw(
            st.sampled_from(
                ["u8", "i8", "u16", "i16", "u24", "i24", "u32", "i32", "f32", "f64", "bool", "bits"]
            )
        )
        fport = draw(st.sampled_from([None, None, 1, 2]))
        endian = draw(st.sampled_from(["big", "little"]))
        if kind == "bool":
            field = LayoutField(f"f{k}", offset, "bool", bit=draw(st.integers(0, 7)), fport=fport)
        else:
            scale = draw(st.sampled_from([1.0, 0.1, 0.01, 0.5, 2.0, 1e-6]))
            add = draw(st.sampled_from([0.0, -40.0, 273.15]))
            if kind == "bits":
                bit = draw(st.integers(0, 7))
                width = draw(st.integers(1, 8 - bit))
                field = LayoutField(
                    f"f{k}", offset, "bits", scale=scale, add=add, bit=bit, bits=width, fport=fport
                )
            else:
                field = LayoutField(f"f{k}", offset, kind, endian, scale, add, "V", fport=fport)
        fields.append(field)
        offset += field.size + draw(st.integers(0, 2))
    return Layout(fields)


@settings(max_examples=400, deadline=None)
@given(valid_layouts(), st.binary(max_size=80), st.one_of(st.none(), st.integers(1, 3)))
def test_valid_layouts_decode_every_applicable_field(
    layout: Layout, payload: bytes, fport: int | None
) -> None:
    assert validate_layout(layout) == []
    applicable = [f for f in layout.fields if f.fport is None or f.fport == fport]
    try:
        records = decode_layout(layout, payload, "dev", T, fport=fport)
    except CodecError as e:
        assert not applicable or len(payload) < layout.length_for(fport), e
        return
    assert len(payload) >= layout.length_for(fport)
    floats = [f.name for f in applicable if f.type in ("f32", "f64")]
    got = [r.name for r in records]
    assert set(got) <= {f.name for f in applicable}
    assert set(f.name for f in applicable) - set(got) <= set(floats)  # only NaN/inf dropped
    for r, f in zip(records, (f for f in applicable if f.name in got), strict=True):
        assert r.name == f.name and r.unit == f.unit
        if f.type == "bool":
            assert type(r.value) is bool
        elif f.scale == 1 and f.add == 0 and f.type not in ("f32", "f64"):
            assert type(r.value) is int
        else:
            assert type(r.value) is float and math.isfinite(r.value)


# --- Registry --------------------------------------------------------------------------------


def test_get_codec_builtins_and_layouts() -> None:
    layouts = {"water-meter": water_meter()}
    cayenne = get_codec("cayenne", layouts)
    assert cayenne(bytes.fromhex("01 67 FF D7"), 2, "env", T) == [
        Record("env", "temperature/1", -4.1, T, "Cel")
    ]
    raw = get_codec("raw", layouts)
    assert raw(b"\x00\xff", 5, "odd", T) == [Record("odd", "payload/5", b"\x00\xff", T, None)]
    meter = get_codec("water-meter", layouts)
    assert len(meter(bytes.fromhex("40 E2 01 00 24 FB 0D"), 1, "meter-7", T)) == 6
    with pytest.raises(CodecError, match="payload 3 bytes, layout needs 7"):
        meter(b"\x00\x00\x00", 1, "meter-7", T)


def test_get_codec_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(
        KeyError, match="unknown codec 'lpp'; known codecs: cayenne, raw, luminaire, bin, water-meter"
    ):
        get_codec("lpp", {"water-meter": water_meter(), "bin": water_meter()})


def test_get_codec_validates_the_layout_up_front() -> None:
    bad = Layout([LayoutField("a", 0, "u16"), LayoutField("b", 1, "u8")])
    with pytest.raises(LayoutError, match=r"fields\[1\]\.offset: byte 1 overlaps"):
        get_codec("bad", {"bad": bad})


def test_a_layout_may_not_shadow_a_builtin_codec() -> None:
    with pytest.raises(ValueError, match="'raw' has the name of a built-in codec"):
        get_codec("raw", {"raw": water_meter()})
