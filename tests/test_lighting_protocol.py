"""The luminaire controller protocol: documented bytes, round trips, every bad-frame class,
and the "luminaire" LoRaWAN codec that turns a STATUS into records."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from passerelle.lighting.protocol import (
    FOLLOW_PROGRAM,
    MAX_POINTS,
    ProtocolError,
    SetLevel,
    SetProgram,
    Status,
    StatusRequest,
    SwitchPoint,
    decode_command,
    decode_status,
    encode_command,
    encode_set_level,
    encode_set_program,
    encode_status,
    encode_status_request,
    status_records,
)
from passerelle.lorawan.codecs import CodecError, get_codec
from passerelle.model import Record

PROGRAM = (
    SwitchPoint("sunset", -15, 100),
    SwitchPoint("time", 23 * 60, 50),
    SwitchPoint("sunrise", 0, 0),
)


# -- the examples of the module docstring ---------------------------------------------------


def test_documented_examples_exact_bytes() -> None:
    assert encode_set_level(7, 50, 10) == bytes.fromhex("01 07 32 00 0a")
    assert encode_set_program(8, 100, 4, PROGRAM) == bytes.fromhex(
        "02 08 64 04 03  01 ff f1 64  00 05 64 32  02 00 00 00"
    )
    assert encode_status_request(9) == bytes.fromhex("03 09")
    status = Status(7, 50, True, False, False, 123456)
    assert encode_status(status) == bytes.fromhex("81 07 32 01 00 01 e2 40")


def test_documented_examples_decode() -> None:
    assert decode_command(bytes.fromhex("01 07 32 00 0a")) == SetLevel(7, 50, 10)
    assert decode_command(bytes.fromhex("01 07 ff ff ff")) == SetLevel(7, FOLLOW_PROGRAM, 65535)
    assert decode_command(
        bytes.fromhex("02 08 64 04 03 01 ff f1 64 00 05 64 32 02 00 00 00")
    ) == SetProgram(8, 100, 4, PROGRAM)
    assert decode_command(bytes.fromhex("03 09")) == StatusRequest(9)
    assert decode_status(bytes.fromhex("81 07 32 05 00 01 e2 40")) == Status(
        7, 50, True, False, True, 123456
    )
    # A negative UTC offset (UTC-3:30, Newfoundland) travels as a signed byte.
    assert encode_set_program(1, 0, -14, ())[3] == 0xF2
    assert decode_command(bytes.fromhex("02 01 00 f2 00")) == SetProgram(1, 0, -14, ())


# -- round trips ----------------------------------------------------------------------------

seqs = st.integers(0, 255)
levels = st.integers(0, 100)
points = st.one_of(
    st.builds(SwitchPoint, st.just("time"), st.integers(0, 1439), levels),
    st.builds(
        SwitchPoint,
        st.sampled_from(["sunset", "sunrise", "civil_dusk", "civil_dawn"]),
        st.integers(-720, 720),
        levels,
    ),
)
commands = st.one_of(
    st.builds(SetLevel, seqs, st.one_of(levels, st.just(FOLLOW_PROGRAM)), st.integers(0, 65535)),
    st.builds(
        SetProgram,
        seqs,
        levels,
        st.integers(-48, 56),
        st.lists(points, max_size=MAX_POINTS).map(tuple),
    ),
    st.builds(StatusRequest, seqs),
)
statuses = st.builds(
    Status, seqs, levels, st.booleans(), st.booleans(), st.booleans(), st.integers(0, 2**32 - 1)
)


@given(commands)
def test_command_round_trip(command: SetLevel | SetProgram | StatusRequest) -> None:
    frame = encode_command(command)
    assert decode_command(frame) == command
    assert encode_command(decode_command(frame)) == frame


@given(statuses)
def test_status_round_trip(status: Status) -> None:
    frame = encode_status(status)
    assert len(frame) == 8
    assert decode_status(frame) == status


@given(st.binary(max_size=60))
def test_any_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    """Garbage never escapes as anything but a ProtocolError with an offset in the frame,
    and whatever decodes encodes back to the same bytes (one spelling per command)."""
    for decode, encode in ((decode_command, encode_command), (decode_status, encode_status)):
        try:
            decoded = decode(data)
        except ProtocolError as exc:
            assert 0 <= exc.offset <= len(data)
        else:
            assert encode(decoded) == data  # type: ignore[arg-type]


# -- bad frames -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("frame", "offset", "words"),
    [
        ("", 0, "empty command frame"),
        ("01 07 32 00", 4, "truncated SET_LEVEL"),
        ("01 07 32 00 0a 00", 5, "1 trailing byte"),
        ("03", 1, "truncated STATUS_REQ"),
        ("03 09 00", 2, "trailing"),
        ("04 00", 0, "unknown command opcode 0x04"),
        ("81 07 32 00 00 00 00 00", 0, "unknown command opcode 0x81"),
        ("01 07 65 00 00", 2, "level 101 at byte offset 2"),
        ("01 07 fe 00 00", 2, "level 254 at byte offset 2"),
        ("02 08 64 04", 4, "truncated SET_PROGRAM header"),
        ("02 08 64 04 0d", 4, "announces 13 switch points at byte offset 4"),
        ("02 08 64 04 01 00 05 64", 8, r"truncated SET_PROGRAM \(n=1\)"),
        ("02 08 64 04 00 00", 5, "trailing"),
        ("02 08 65 04 00", 2, "default 101"),
        ("02 08 64 39 00", 3, "utc_offset_q 57"),
        ("02 08 64 04 01 00 05 a0 32", 6, "time 1440 min at byte offset 6"),
        ("02 08 64 04 01 00 ff ff 32", 6, "time -1 min"),
        ("02 08 64 04 01 05 00 00 32", 5, "unknown kind 5 at byte offset 5"),
        ("02 08 64 04 01 01 02 d1 32", 6, "sunset offset 721"),
        ("02 08 64 04 02 01 00 00 64 02 00 00 ff", 12, "point 1 level 255 at byte offset 12"),
    ],
)
def test_bad_command_frames(frame: str, offset: int, words: str) -> None:
    with pytest.raises(ProtocolError, match=words) as info:
        decode_command(bytes.fromhex(frame))
    assert info.value.offset == offset
    assert isinstance(info.value, ValueError)
    assert f"byte offset {offset}" in str(info.value)


@pytest.mark.parametrize(
    ("frame", "offset", "words"),
    [
        ("", 0, "empty status frame"),
        ("01 07 32 00 0a", 0, "unknown uplink opcode 0x01"),
        ("81 07 32 00 00 00 00", 7, "truncated STATUS"),
        ("81 07 32 00 00 00 00 00 00", 8, "trailing"),
        ("81 07 65 00 00 00 00 00", 2, "STATUS level 101"),
        ("81 07 ff 00 00 00 00 00", 2, "STATUS level 255"),
        ("81 07 32 08 00 00 00 00", 3, "reserved bits"),
    ],
)
def test_bad_status_frames(frame: str, offset: int, words: str) -> None:
    with pytest.raises(ProtocolError, match=words) as info:
        decode_status(bytes.fromhex(frame))
    assert info.value.offset == offset


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: encode_set_level(256, 0, 0), "seq 256 out of range 0..255"),
        (lambda: encode_set_level(-1, 0, 0), "seq -1"),
        (lambda: encode_set_level(0, 101, 0), "level 101 out of range 0..100"),
        (lambda: encode_set_level(0, 254, 0), "level 254"),
        (lambda: encode_set_level(0, 50, 65536), "ramp_s 65536 out of range 0..65535"),
        (lambda: encode_set_level(0, True, 0), "level must be an integer"),
        (lambda: encode_set_level(0, 50.0, 0), "level must be an integer 0..100, got 50.0"),  # type: ignore[arg-type]
        (lambda: encode_set_program(0, 101, 0, ()), "default 101"),
        (lambda: encode_set_program(0, 0, 57, ()), "utc_offset_q 57 out of range -48..56"),
        (lambda: encode_set_program(0, 0, -49, ()), "utc_offset_q -49"),
        (
            lambda: encode_set_program(0, 0, 0, [SwitchPoint("time", 0, 0)] * 13),
            "13 switch points",
        ),
        (
            lambda: encode_set_program(0, 0, 0, [SwitchPoint("noon", 0, 0)]),
            r"points\[0\].kind 'noon' unknown",
        ),
        (
            lambda: encode_set_program(0, 0, 0, [PROGRAM[0], SwitchPoint("time", 1440, 0)]),
            r"points\[1\].value 1440 out of range 0..1439",
        ),
        (
            lambda: encode_set_program(0, 0, 0, [SwitchPoint("civil_dawn", -721, 0)]),
            r"points\[0\].value -721 out of range -720..720",
        ),
        (
            lambda: encode_set_program(0, 0, 0, [SwitchPoint("sunset", 0, 255)]),
            r"points\[0\].level 255 out of range 0..100",
        ),
        (lambda: encode_set_program(0, 0, 0, [("time", 0, 0)]), r"points\[0\] must be"),  # type: ignore[list-item]
        (lambda: encode_status_request(300), "seq 300"),
        (lambda: encode_status(Status(0, 255, False, False, True, 0)), "level 255"),
        (lambda: encode_status(Status(0, 0, False, False, False, 2**32)), "energy_wh 4294967296"),
        (lambda: encode_command("SET_LEVEL"), "not a luminaire command"),  # type: ignore[arg-type]
    ],
)
def test_encoders_refuse_out_of_range_values(call: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        call()  # type: ignore[operator]


# -- records and the LoRaWAN codec --------------------------------------------------------


def test_status_records() -> None:
    status = Status(42, 70, False, True, True, 9876)
    assert status_records(status, "lum-3", 1.5) == [
        Record("lum-3", "ack_seq", 42, 1.5),
        Record("lum-3", "level", 70, 1.5, "%"),
        Record("lum-3", "lamp_failure", False, 1.5),
        Record("lum-3", "driver_failure", True, 1.5),
        Record("lum-3", "local_program", True, 1.5),
        Record("lum-3", "energy", 9876, 1.5, "Wh"),
    ]


def test_luminaire_codec_decodes_status() -> None:
    codec = get_codec("luminaire", {})
    frame = encode_status(Status(3, 100, True, False, False, 55))
    records = codec(frame, 21, "lum-1", 1_800_000_000.0)
    values = {r.name: r.value for r in records}
    assert values == {
        "ack_seq": 3,
        "level": 100,
        "lamp_failure": True,
        "driver_failure": False,
        "local_program": False,
        "energy": 55,
    }
    assert {r.device for r in records} == {"lum-1"}
    # Port unknown (a decode tool): the opcode says what it is.
    assert codec(frame, None, "lum-1", 0.0)[0] == Record("lum-1", "ack_seq", 3, 0.0)


def test_luminaire_codec_errors_are_codec_errors() -> None:
    """The network server catches ValueError from a codec, counts it and keeps the bytes;
    the codec raises CodecError (a ValueError) with the protocol's offset."""
    codec = get_codec("luminaire", {})
    with pytest.raises(CodecError, match="truncated STATUS") as info:
        codec(bytes.fromhex("81 07 32"), 21, "lum-1", 0.0)
    assert info.value.offset == 3
    with pytest.raises(CodecError, match="fport 20 is not the STATUS port 21"):
        codec(encode_status(Status(0, 0, False, False, False, 0)), 20, "lum-1", 0.0)
    with pytest.raises(ValueError, match="unknown uplink opcode 0x01"):
        codec(encode_set_level(1, 2, 3), 21, "lum-1", 0.0)


def test_luminaire_is_a_builtin_codec_name() -> None:
    from passerelle.lorawan.codecs import Layout, LayoutField, builtin_codecs

    assert "luminaire" in builtin_codecs()
    layout = Layout([LayoutField(name="x", offset=0, type="u8")])
    with pytest.raises(ValueError, match="built-in codec"):
        get_codec("luminaire", {"luminaire": layout})
