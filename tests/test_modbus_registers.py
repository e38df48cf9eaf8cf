"""Register decoding, bundled maps, the read planner and the modbus config checks (no I/O)."""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from passerelle.modbus import config as mconfig
from passerelle.modbus.maps import (
    MAPS,
    SDM120,
    SDM630,
    MapEntry,
    ReadBlock,
    get_map,
    plan_reads,
)
from passerelle.modbus.registers import (
    BYTE_ORDERS,
    WORD_TYPES,
    RegisterError,
    decode,
    decode_raw,
    encode,
    is_finite,
    word_count,
)
from passerelle.model import Priority, check_name

# ------------------------------------------------------------------ known byte patterns

PI_BYTES = bytes.fromhex("400921FB54442D18")  # float64 pi: A..H = 40 09 21 FB 54 44 2D 18

KNOWN = [
    # type, order, registers on the wire, value
    ("uint16", "ABCD", [0x1234], 0x1234),
    ("uint16", "CDAB", [0x1234], 0x1234),
    ("uint16", "BADC", [0x3412], 0x1234),
    ("uint16", "DCBA", [0x3412], 0x1234),
    ("int16", "ABCD", [0xFFFE], -2),
    ("int16", "CDAB", [0xFFFE], -2),
    ("int16", "BADC", [0xFEFF], -2),
    ("int16", "DCBA", [0xFEFF], -2),
    ("uint32", "ABCD", [0x1234, 0x5678], 0x12345678),
    ("uint32", "CDAB", [0x5678, 0x1234], 0x12345678),
    ("uint32", "BADC", [0x3412, 0x7856], 0x12345678),
    ("uint32", "DCBA", [0x7856, 0x3412], 0x12345678),
    ("int32", "ABCD", [0xFFFF, 0xFFFE], -2),
    ("int32", "CDAB", [0xFFFE, 0xFFFF], -2),
    ("int32", "BADC", [0xFFFF, 0xFEFF], -2),
    ("int32", "DCBA", [0xFEFF, 0xFFFF], -2),
    ("float32", "ABCD", [0x4366, 0x8000], 230.5),  # 230.5 = 0x43668000
    ("float32", "CDAB", [0x8000, 0x4366], 230.5),
    ("float32", "BADC", [0x6643, 0x0080], 230.5),
    ("float32", "DCBA", [0x0080, 0x6643], 230.5),
    ("float64", "ABCD", [0x4009, 0x21FB, 0x5444, 0x2D18], math.pi),
    ("float64", "CDAB", [0x2D18, 0x5444, 0x21FB, 0x4009], math.pi),
    ("float64", "BADC", [0x0940, 0xFB21, 0x4454, 0x182D], math.pi),
    ("float64", "DCBA", [0x182D, 0x4454, 0xFB21, 0x0940], math.pi),
]


def test_pi_bytes_are_pi() -> None:
    assert struct.unpack(">d", PI_BYTES)[0] == math.pi


@pytest.mark.parametrize(("type_", "order", "words", "value"), KNOWN)
def test_decode_known_patterns(type_: str, order: str, words: list[int], value: float) -> None:
    got = decode(words, type_, order)
    assert got == value
    assert type(got) is type(value)


@pytest.mark.parametrize(("type_", "order", "words", "value"), KNOWN)
def test_encode_known_patterns(type_: str, order: str, words: list[int], value: float) -> None:
    assert encode(value, type_, order) == words


def test_every_type_and_order_is_covered() -> None:
    assert {(t, o) for t, o, _, _ in KNOWN} == {(t, o) for t in WORD_TYPES for o in BYTE_ORDERS}


def _words(n: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, 0xFFFF), min_size=n, max_size=n)


@pytest.mark.parametrize("order", BYTE_ORDERS)
@pytest.mark.parametrize("type_", WORD_TYPES)
@given(data=st.data())
def test_round_trip_any_registers(type_: str, order: str, data: st.DataObject) -> None:
    words = data.draw(_words(word_count(type_)))
    value = decode(words, type_, order)
    if isinstance(value, float) and math.isnan(value):
        return  # NaN payloads need not survive float conversion; NaN itself is tested below
    assert encode(value, type_, order) == words


@given(st.floats(width=32, allow_nan=False))
def test_float32_values_round_trip(value: float) -> None:
    for order in BYTE_ORDERS:
        assert decode(encode(value, "float32", order), "float32", order) == value


@given(words=_words(2))
def test_matches_pymodbus_conversion(words: list[int]) -> None:
    """An independent implementation agrees for the word orders it knows (ABCD, CDAB)."""
    dt = ModbusClientMixin.DATATYPE
    for type_, pm in (("uint32", dt.UINT32), ("int32", dt.INT32)):
        assert decode(words, type_, "ABCD") == ModbusClientMixin.convert_from_registers(words, pm)
        little = ModbusClientMixin.convert_from_registers(words, pm, word_order="little")
        assert decode(words, type_, "CDAB") == little


def test_scale_and_offset() -> None:
    assert decode([2305], "uint16", scale=0.1) == pytest.approx(230.5)
    assert decode([0xFFFF], "int16", scale=0.5, offset=20.0) == pytest.approx(19.5)
    raw = decode([7], "uint16")
    assert raw == 7 and isinstance(raw, int)  # scale 1, offset 0: the raw int unchanged
    assert isinstance(decode([7], "uint16", offset=1.0), float)


def test_nan_and_infinity_are_returned_and_flagged() -> None:
    nan = decode([0x7FC0, 0x0000], "float32")
    assert math.isnan(nan) and not is_finite(nan)
    assert decode([0x7F80, 0x0000], "float32") == math.inf
    assert is_finite(3) and is_finite(2.5) and is_finite(True)
    assert math.isnan(decode(encode(math.nan, "float64", "DCBA"), "float64", "DCBA"))


def test_bits() -> None:
    assert decode([True], "bool") is True
    assert decode([0], "bool") is False
    assert encode(True, "bool") == [1]
    assert word_count("bool") == 1


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: decode([1], "float32"), "float32 needs 2 registers, got 1"),
        (lambda: decode([1, 2, 3], "uint32"), "uint32 needs 2 registers, got 3"),
        (lambda: decode([], "uint16"), "uint16 needs 1 register, got 0"),
        (lambda: decode([1, 2], "float64"), "float64 needs 4 registers, got 2"),
        (lambda: decode([70000], "uint16"), "not a 16-bit word"),
        (lambda: decode([-1], "int16"), "not a 16-bit word"),
        (lambda: decode([1], "uint8"), "unknown register type 'uint8'"),
        (lambda: decode([1], "uint16", "ABDC"), "unknown byte order 'ABDC'"),
        (lambda: encode(65536, "uint16"), "out of range for uint16 (0..65535)"),
        (lambda: encode(-32769, "int16"), "out of range for int16 (-32768..32767)"),
        (lambda: encode(-1, "uint32"), "out of range for uint32"),
        (lambda: encode(1.5, "int32"), "not an integer"),
        (lambda: encode(1e39, "float32"), "does not fit in a float32"),
    ],
)
def test_clear_errors(call, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RegisterError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call()


def test_decode_raw_ignores_scale() -> None:
    assert decode_raw([2305], "uint16") == 2305


# ---------------------------------------------------------------------------------- maps

SENML_UNITS = {"V", "A", "W", "VA", "var", "Hz", "/", "kWh", "kvarh"}


@pytest.mark.parametrize("regmap", list(MAPS.values()), ids=list(MAPS))
def test_map_sanity(regmap) -> None:  # type: ignore[no-untyped-def]
    names = [e.name for e in regmap.entries]
    assert len(names) == len(set(names)), "duplicate names"
    for e in regmap.entries:
        check_name(e.name)
        assert 0 <= e.address and e.end <= 0x10000
        assert e.unit in SENML_UNITS, e
        if e.unit in ("kWh", "kvarh"):
            assert e.priority is Priority.ENERGY
        else:
            assert e.priority is Priority.TELEMETRY
    spans = sorted((e.function, e.address, e.end, e.name) for e in regmap.entries)
    for (f1, _, end1, n1), (f2, start2, _, n2) in zip(spans, spans[1:], strict=False):
        assert f1 != f2 or end1 <= start2, f"{n1} overlaps {n2}"


def test_eastron_addresses_from_the_protocol_documents() -> None:
    one = {e.name: e.address for e in SDM120.entries}
    assert one["voltage"] == 0x0000 and one["current"] == 0x0006 and one["power"] == 0x000C
    assert one["frequency"] == 0x0046 and one["energy-total"] == 0x0156
    assert one["energy-import"] == 0x0048
    three = {e.name: e.address for e in SDM630.entries}
    assert [three[f"l{i}/voltage"] for i in (1, 2, 3)] == [0x0000, 0x0002, 0x0004]
    assert [three[f"l{i}/current"] for i in (1, 2, 3)] == [0x0006, 0x0008, 0x000A]
    assert [three[f"l{i}/power"] for i in (1, 2, 3)] == [0x000C, 0x000E, 0x0010]
    assert three["power"] == 0x0034 and three["frequency"] == 0x0046
    assert three["energy-import"] == 0x0048
    assert all(e.function == "input" and e.type == "float32" for e in SDM630.entries)


def test_get_map_suggests() -> None:
    assert get_map("sdm630") is SDM630
    with pytest.raises(KeyError, match="did you mean 'sdm630'"):
        get_map("sdm360")


# ------------------------------------------------------------------------------- planner


def _e(name: str, address: int, type_: str = "float32", function: str = "input") -> MapEntry:
    return MapEntry(name, address, function, type_)


def test_plan_merges_contiguous_and_splits_at_gaps() -> None:
    entries = [_e("a", 0), _e("b", 2), _e("c", 4), _e("d", 100), _e("e", 102)]
    blocks = plan_reads(entries, max_gap=8)
    assert [(b.address, b.count) for b in blocks] == [(0, 6), (100, 4)]
    assert [e.name for e in blocks[0].entries] == ["a", "b", "c"]


def test_plan_reads_small_gaps() -> None:
    blocks = plan_reads([_e("a", 0), _e("b", 10)], max_gap=8)
    assert [(b.address, b.count) for b in blocks] == [(0, 12)]
    blocks = plan_reads([_e("a", 0), _e("b", 11)], max_gap=8)
    assert [(b.address, b.count) for b in blocks] == [(0, 2), (11, 2)]
    assert len(plan_reads([_e("a", 0), _e("b", 3)], max_gap=0)) == 2


def test_plan_respects_125_registers() -> None:
    entries = [_e(f"r{i}", 2 * i) for i in range(100)]  # 200 contiguous registers
    blocks = plan_reads(entries)
    assert [(b.address, b.count) for b in blocks] == [(0, 124), (124, 76)]


def test_plan_separates_functions_and_bits() -> None:
    entries = [
        _e("h", 0, "uint16", "holding"),
        _e("i", 0, "uint16", "input"),
        _e("c0", 0, "bool", "coil"),
        _e("c1", 1, "bool", "coil"),
    ]
    blocks = plan_reads(entries)
    assert [(b.function, b.address, b.count) for b in blocks] == [
        ("coil", 0, 2),
        ("holding", 0, 1),
        ("input", 0, 1),
    ]


def test_plan_overlapping_entries_share_a_read() -> None:
    blocks = plan_reads([_e("whole", 0, "uint32"), _e("high", 0, "uint16")])
    assert [(b.address, b.count) for b in blocks] == [(0, 2)]
    views = {e.name: blocks[0].words_of(e, [7, 9]) for e in blocks[0].entries}
    assert views == {"whole": [7, 9], "high": [7]}


def test_sdm630_needs_three_reads() -> None:
    blocks = plan_reads(SDM630.entries)
    assert [(b.address, b.count) for b in blocks] == [(0x00, 0x50), (0xE0, 2), (0x156, 4)]


@given(
    st.lists(
        st.tuples(
            st.integers(0, 400), st.sampled_from(WORD_TYPES), st.sampled_from(["holding", "input"])
        ),
        min_size=1,
        max_size=60,
    ),
    st.integers(0, 20),
)
def test_plan_properties(specs: list[tuple[int, str, str]], max_gap: int) -> None:
    entries = [_e(f"e{i}", a, t, f) for i, (a, t, f) in enumerate(specs)]
    blocks = plan_reads(entries, max_gap=max_gap)
    covered = [e for b in blocks for e in b.entries]
    assert sorted(e.name for e in covered) == sorted(e.name for e in entries)
    for b in blocks:
        assert 1 <= b.count <= 125
        for e in b.entries:
            assert e.function == b.function
            assert b.address <= e.address and e.end <= b.address + b.count
        # no unused run of addresses longer than max_gap inside a block
        used = sorted((e.address, e.end) for e in b.entries)
        reach = used[0][1]
        for start, end in used[1:]:
            assert start - reach <= max_gap
            reach = max(reach, end)
    # blocks of one function never overlap
    for a, b in zip(blocks, blocks[1:], strict=False):
        if a.function == b.function:
            assert a.address + a.count <= b.address


def test_words_of() -> None:
    block = ReadBlock("input", 10, 4, (_e("a", 10), _e("b", 12)))
    assert block.words_of(block.entries[1], [1, 2, 3, 4]) == [3, 4]


# -------------------------------------------------------------------------------- config


def _src(devices: Sequence[dict | None], **kw: object) -> dict:
    return {
        "type": "modbus-rtu",
        "name": "bus",
        "port": "/dev/ttyUSB0",
        "interval": 10,
        "devices": devices,
        **kw,
    }


def _check(src: dict) -> list[tuple[str, str]]:
    errors: list[tuple[str, str]] = []
    mconfig.check(src, "sources[2]", errors)
    return errors


def test_config_structs_convert() -> None:
    cfg = msgspec.convert(
        _src(
            [
                {"name": "meter", "unit": 1, "map": "sdm630", "only": ["power"]},
                {
                    "name": "io",
                    "unit": 2,
                    "registers": [{"name": "door", "address": 0, "function": "coil"}],
                },
            ]
        ),
        mconfig.ModbusRtuSourceConfig,
    )
    assert cfg.type == "modbus-rtu" and cfg.baud == 9600 and cfg.parity == "N"
    assert cfg.devices[0].map == "sdm630" and cfg.devices[1].registers is not None
    tcp = msgspec.convert(
        {"type": "modbus-tcp", "name": "gw", "host": "10.0.0.5", "interval": 5, "devices": []},
        mconfig.ModbusTcpSourceConfig,
    )
    assert tcp.port == 502 and tcp.type == "modbus-tcp"
    with pytest.raises(msgspec.ValidationError, match="unit"):
        msgspec.convert(
            _src([{"name": "m", "unit": 0, "map": "sdm120"}]), mconfig.ModbusRtuSourceConfig
        )


def test_config_check_accepts_a_good_source() -> None:
    regs = [
        {"name": "temperature", "address": 10, "function": "holding", "type": "int16"},
        {"name": "energy", "address": 11, "function": "holding", "type": "uint32"},
        {"name": "same-address-other-space", "address": 10, "function": "input", "type": "float32"},
        {"name": "door", "address": 0, "function": "discrete"},
    ]
    src = _src(
        [
            {"name": "meter", "unit": 1, "map": "sdm120"},
            {"name": "io", "unit": 2, "registers": regs},
        ]
    )
    assert _check(src) == []


@pytest.mark.parametrize(
    ("devices", "path", "reason"),
    [
        (
            [{"name": "m", "unit": 1, "map": "sdm360"}],
            "sources[2].devices[0].map",
            "did you mean 'sdm630'",
        ),
        ([{"name": "m", "unit": 1}], "sources[2].devices[0].map", "required"),
        (
            [{"name": "m", "unit": 1, "map": "sdm120", "registers": []}],
            "sources[2].devices[0]",
            "both 'map' and 'registers'",
        ),
        (
            [{"name": "m", "unit": 1, "map": "sdm120", "only": ["powr"]}],
            "sources[2].devices[0].only[0]",
            "did you mean 'power'",
        ),
        (
            [
                {"name": "a", "unit": 3, "map": "sdm120"},
                {"name": "b", "unit": 3, "map": "sdm120"},
            ],
            "sources[2].devices[1].unit",
            "unit id 3 also used by devices[0]",
        ),
        (
            [{"name": "a", "unit": 1, "map": "sdm120"}, {"name": "a", "unit": 2, "map": "sdm120"}],
            "sources[2].devices[1].name",
            "duplicate device 'a'",
        ),
        (
            [{"name": "bad name", "unit": 1, "map": "sdm120"}],
            "sources[2].devices[0].name",
            "invalid SenML name",
        ),
        (
            [
                {
                    "name": "m",
                    "unit": 1,
                    "registers": [
                        {"name": "x", "address": 0, "type": "uint16"},
                        {"name": "x", "address": 1, "type": "uint16"},
                    ],
                }
            ],
            "sources[2].devices[0].registers[1].name",
            "duplicate register 'x'",
        ),
        (
            [
                {
                    "name": "m",
                    "unit": 1,
                    "registers": [
                        {"name": "x", "address": 0, "type": "float32"},
                        {"name": "y", "address": 1, "type": "uint16"},
                    ],
                }
            ],
            "sources[2].devices[0].registers[1].address",
            "overlaps registers[0] (holding 0..1)",
        ),
        (
            [
                {
                    "name": "m",
                    "unit": 1,
                    "registers": [{"name": "x", "address": 65534, "type": "float64"}],
                }
            ],
            "sources[2].devices[0].registers[0].address",
            "float64 at 65534 needs 4 registers: ends at 65537, beyond 65535",
        ),
        (
            [
                {
                    "name": "m",
                    "unit": 1,
                    "registers": [{"name": "x", "address": 0, "function": "coil", "type": "int16"}],
                }
            ],
            "sources[2].devices[0].registers[0].type",
            "type must be 'bool'",
        ),
        (
            [{"name": "m", "unit": 1, "registers": [{"name": "x", "address": 0}]}],
            "sources[2].devices[0].registers[0].type",
            "required for holding registers",
        ),
        ([], "sources[2].devices", "no device"),
    ],
)
def test_config_check_errors(devices: list[dict], path: str, reason: str) -> None:
    errors = _check(_src(devices))
    assert any(p == path and reason in r for p, r in errors), errors


def test_config_check_skips_items_the_structural_pass_dropped() -> None:
    assert _check(_src([None, {"name": "m", "unit": 1, "map": "sdm120"}])) == []
