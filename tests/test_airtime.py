"""LoRa time on air: published reference values, an independent symbol count, the CLI."""

from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.lorawan.airtime import (
    airtime_of,
    frame_airtime,
    ldro_required,
    parse_coding_rate,
    time_on_air,
    tx_airtime,
)
from passerelle.lorawan.airtime_cli import main
from passerelle.radio.base import TxRequest

# ------------------------------------------------------------------ reference values

# /work/shared/REFERENCE.md (Semtech AN1200.13): SF12, 125 kHz, 51 bytes, CR 4/5,
# preamble 8, CRC on, explicit header -> 2465.8 ms.
REFERENCE_MD_MS = 2465.8

# Semtech "SX1261 LoRa Calculator" outputs, as transcribed in micropython-lib
# (micropython/lora/tests/test_time_on_air.py, MIT, Angus Gratton, 2023). Only SF >= 7
# rows: there SX126x and SX127x (AN1200.13) agree. Columns:
# sf, bw_khz, coding rate denominator (4/x), ldro, preamble, payload bytes,
# explicit header, crc, calculator symbol count (it omits the fixed 8), time on air ms.
SEMTECH_CALCULATOR = [
    (12, 500, 5, False, 8, 1, True, True, 17.25, 206.848),
    (12, 500, 5, False, 12, 64, True, True, 71.25, 649.216),
    (12, 500, 5, False, 8, 1, True, False, 12.25, 165.888),
    (12, 500, 5, False, 8, 192, True, True, 172.25, 1476.608),
    (12, 500, 5, False, 12, 16, False, False, 26.25, 280.576),
    (8, 125, 6, False, 8, 1, True, True, 18.25, 53.760),
    (8, 125, 6, False, 8, 2, True, True, 18.25, 53.760),
    (8, 125, 6, False, 8, 2, True, False, 18.25, 53.760),
    (8, 125, 6, False, 8, 3, True, True, 24.25, 66.048),
    (8, 125, 6, False, 8, 3, True, False, 18.25, 53.760),
    (8, 125, 6, False, 8, 4, True, True, 24.25, 66.048),
    (8, 125, 6, False, 8, 4, True, False, 18.25, 53.760),
    (8, 125, 6, False, 8, 5, True, True, 24.25, 66.048),
    (8, 125, 6, False, 8, 5, True, False, 24.25, 66.048),
    (8, 125, 6, False, 8, 253, True, True, 396.25, 827.904),
    (8, 125, 6, False, 8, 253, True, False, 396.25, 827.904),
    (8, 125, 6, False, 12, 5, False, True, 22.25, 61.952),
    (8, 125, 6, False, 12, 5, False, False, 22.25, 61.952),
    (8, 125, 6, False, 12, 10, False, True, 34.25, 86.528),
    (8, 125, 6, False, 12, 253, False, True, 394.25, 823.808),
    # slowest settings: LDRO on, bandwidths written as the calculator rounds them
    (12, 7.81, 8, True, 128, 253, True, True, 540.25, 287532.907),
    (12, 7.81, 8, True, 1000, 253, True, True, 1412.25, 744858.387),
    (11, 10.42, 7, True, 25, 16, True, True, 57.25, 12824.568),
    (11, 10.42, 7, True, 25, 16, False, False, 50.25, 11448.752),
]

# Worked examples of other public calculators (all CR 4/5, preamble 8, explicit header,
# CRC on): sf, bw_khz, payload bytes, ldro, time on air ms.
PUBLIC_EXAMPLES = [
    # rfwireless-world.com "LoRaWAN Airtime calculator", examples 1 and 2
    (7, 125, 10, False, 41.216),
    (11, 125, 10, True, 577.536),
    # Thomas Telkamp's AN1200.13 spreadsheet (LoRa airtime calculator, Google Sheets):
    # 13 bytes at SF9 -> 28 payload symbols, 164.864 ms
    (9, 125, 13, False, 164.864),
]


def test_reference_md_check_value() -> None:
    ms = time_on_air(12, 125, 51, cr=1, preamble=8, crc=True) * 1000
    assert round(ms, 1) == REFERENCE_MD_MS
    assert frame_airtime(12, 125, 51).ldro  # auto LDRO at SF12/125


@pytest.mark.parametrize(
    "sf,bw,cr_den,ldro,preamble,size,explicit,crc,calc_symbols,toa_ms", SEMTECH_CALCULATOR
)
def test_semtech_calculator(
    sf: int,
    bw: float,
    cr_den: int,
    ldro: bool,
    preamble: int,
    size: int,
    explicit: bool,
    crc: bool,
    calc_symbols: float,
    toa_ms: float,
) -> None:
    result = frame_airtime(
        sf, bw, size, cr=cr_den - 4, preamble=preamble, implicit_header=not explicit, crc=crc
    )
    assert result.ldro is ldro  # the automatic choice matches the calculator's
    assert result.symbols == calc_symbols + 8
    # the calculator prints 3 decimals of ms
    assert result.ms == pytest.approx(toa_ms, abs=0.0005)


@pytest.mark.parametrize("sf,bw,size,ldro,toa_ms", PUBLIC_EXAMPLES)
def test_public_calculator_examples(sf: int, bw: int, size: int, ldro: bool, toa_ms: float) -> None:
    result = frame_airtime(sf, bw, size)
    assert result.ldro is ldro
    assert result.ms == pytest.approx(toa_ms, abs=0.0005)


def test_ldro_auto_follows_symbol_time() -> None:
    # Semtech: mandatory when a symbol lasts 16 ms or more.
    assert ldro_required(11, 125) and ldro_required(12, 125)
    assert not ldro_required(10, 125)
    assert ldro_required(12, 250) and not ldro_required(11, 250)
    assert not ldro_required(12, 500)
    forced_off = time_on_air(12, 125, 51, ldro=False)
    assert forced_off < time_on_air(12, 125, 51)  # LDRO carries fewer bits per symbol


# ------------------------------------------------------------------ LoRaWAN helpers


def test_airtime_of_uplink_and_downlink() -> None:
    up = airtime_of("SF12BW125", 51, uplink=True)
    assert up == time_on_air(12, 125, 51, crc=True)
    down = airtime_of("SF12BW125", 51, uplink=False)
    # Worked by hand from AN1200.13: 8*51 - 48 + 28 = 388 bits; ceil(388/40) = 10 blocks
    # of 5 symbols + 8 = 58; (8 + 4.25 + 58) * 32.768 ms = 2301.952 ms.
    assert down * 1000 == pytest.approx(2301.952, abs=1e-9)
    assert airtime_of("SF7BW250", 20, uplink=True) == time_on_air(7, 250, 20)
    assert airtime_of("SF9BW125", 20, True, coding_rate="4/8") == time_on_air(9, 125, 20, cr=4)


def test_tx_airtime_uses_the_request() -> None:
    req = TxRequest(payload=bytes(33), frequency=869.525, datarate="SF9BW125", power=27.0)
    assert tx_airtime(req) == airtime_of("SF9BW125", 33, uplink=False)
    req2 = TxRequest(
        payload=bytes(10),
        frequency=868.1,
        datarate="SF7BW125",
        power=14.0,
        coding_rate="4/6",
        preamble=12,
        crc=True,
    )
    assert tx_airtime(req2) == time_on_air(7, 125, 10, cr=2, preamble=12, crc=True)


@pytest.mark.parametrize(
    "datarate,message",
    [("SF9", "not a LoRa data rate"), ("SF13BW125", "not a LoRa data rate"), ("SF5BW125", "6..12")],
)
def test_airtime_of_bad_datarate(datarate: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        airtime_of(datarate, 10, uplink=True)


def test_parse_coding_rate() -> None:
    assert [parse_coding_rate(c) for c in ("4/5", "4/6", "4/7", "4/8")] == [1, 2, 3, 4]
    for bad in ("4/9", "5", "", "4/5x"):
        with pytest.raises(ValueError, match="coding rate"):
            parse_coding_rate(bad)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"sf": 13}, "spreading factor 13 out of range"),
        ({"sf": 5}, "spreading factor 5 out of range"),
        ({"sf": 6}, "SF6 needs implicit_header"),
        ({"sf": 7.0}, "spreading factor must be an integer"),
        ({"sf": True}, "spreading factor must be an integer"),
        ({"bw_khz": 100}, "not a LoRa bandwidth"),
        ({"bw_khz": float("nan")}, "not a LoRa bandwidth"),
        ({"bw_khz": "125"}, "bandwidth must be a number"),
        ({"payload_len": 256}, "payload length"),
        ({"payload_len": -1}, "payload length"),
        ({"cr": 0}, "coding rate"),
        ({"cr": 5}, "coding rate"),
        ({"preamble": 5}, "preamble"),
        ({"crc": 1}, "crc must be True or False"),
        ({"implicit_header": None}, "implicit_header"),
        ({"ldro": "auto"}, "ldro"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict[str, object], message: str) -> None:
    args: dict[str, object] = {"sf": 9, "bw_khz": 125, "payload_len": 20} | kwargs
    with pytest.raises(ValueError, match=message):
        time_on_air(**args)  # type: ignore[arg-type]


# ------------------------------------------------- properties and an independent count


def counted_by_blocks(
    sf: int, bw_khz: int, size: int, cr: int, preamble: int, ih: bool, crc: bool, de: bool
) -> Fraction:
    """Time on air by filling symbols with bits, exactly (no float, no ceil formula).

    The first 8 symbols go at the reduced rate (SF-2 bits each) with coding rate 4/8, so
    they carry 4*(SF-2) data bits; every later block of CR+4 symbols carries
    4*(SF-2*DE) data bits. The bits to carry are the payload, the 16-bit CRC and the
    20-bit explicit header.
    """
    to_send = 8 * size + 16 * crc + 20 * (not ih)
    to_send -= 4 * (sf - 2)  # first block
    symbols = 8
    while to_send > 0:
        to_send -= 4 * (sf - 2 * de)
        symbols += cr + 4
    total = Fraction(preamble) + Fraction(17, 4) + symbols
    return total * Fraction(2**sf, bw_khz * 1000)


sfs = st.integers(min_value=7, max_value=12)
bws = st.sampled_from([125, 250, 500])
sizes = st.integers(min_value=0, max_value=255)
crs = st.integers(min_value=1, max_value=4)
preambles = st.integers(min_value=6, max_value=64)


@settings(max_examples=300, deadline=None)
@given(sfs, bws, sizes, crs, preambles, st.booleans(), st.booleans(), st.booleans())
def test_formula_matches_block_count(
    sf: int, bw: int, size: int, cr: int, preamble: int, ih: bool, crc: bool, de: bool
) -> None:
    got = time_on_air(sf, bw, size, cr, preamble, ih, crc, de)
    exact = counted_by_blocks(sf, bw, size, cr, preamble, ih, crc, de)
    assert got == pytest.approx(float(exact), rel=1e-12)


@settings(max_examples=200, deadline=None)
@given(sfs, bws, st.integers(min_value=0, max_value=254), crs, st.booleans())
def test_monotonic(sf: int, bw: int, size: int, cr: int, crc: bool) -> None:
    t = time_on_air(sf, bw, size, cr, crc=crc)
    assert time_on_air(sf, bw, size + 1, cr, crc=crc) >= t  # more bytes
    if sf < 12:
        assert time_on_air(sf + 1, bw, size, cr, crc=crc) > t  # slower data rate
    if cr < 4:
        assert time_on_air(sf, bw, size, cr + 1, crc=crc) >= t  # more redundancy
    assert time_on_air(sf, bw, size, cr, crc=True) >= time_on_air(sf, bw, size, cr, crc=False)
    assert time_on_air(sf, bw, size, cr, implicit_header=True, crc=crc) <= t
    if bw < 500:  # same symbols, twice the bandwidth: exactly half the time
        de = ldro_required(sf, bw)
        assert time_on_air(sf, bw * 2, size, cr, crc=crc, ldro=de) == pytest.approx(
            time_on_air(sf, bw, size, cr, crc=crc, ldro=de) / 2, rel=1e-12
        )


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.integers(-5, 20), st.floats(), st.none(), st.text(max_size=3)),
    st.one_of(st.sampled_from([7.8, 125, 250, 500]), st.floats(), st.integers(-10, 1000)),
    st.one_of(st.integers(-5, 300), st.floats(allow_nan=True), st.none()),
    st.one_of(st.integers(-2, 6), st.booleans(), st.text(max_size=2)),
)
def test_any_argument_gives_a_time_or_a_value_error(sf, bw, size, cr) -> None:  # type: ignore[no-untyped-def]
    try:
        t = time_on_air(sf, bw, size, cr)
    except ValueError:
        return
    assert math.isfinite(t) and t > 0


# ----------------------------------------------------------------------------- CLI


def test_cli_human(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--sf", "12", "--bw", "125", "--cr", "4/5", "--size", "51"]) == 0
    out = capsys.readouterr().out
    toa_s = time_on_air(12, 125, 51)
    assert f"{toa_s * 1000:.3f} ms" in out
    assert round(toa_s * 1000, 1) == REFERENCE_MD_MS
    assert "symbols: 75.25" in out  # 8 + 4.25 preamble + 63 payload symbols
    assert "optimisation: on (auto" in out
    # frames per hour at 1 % (36 s) and 10 % (360 s)
    assert f"{math.floor(36 / toa_s)} at 1%" in out
    assert f"{math.floor(360 / toa_s)} at 10%" in out


def test_cli_json(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--sf", "9", "--bw", "125", "--size", "13", "--json"]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["airtime_ms"] == pytest.approx(164.864, abs=1e-6)  # Telkamp spreadsheet
    assert doc["symbols"] == 8 + 4.25 + 28
    assert doc["ldro"] is False and doc["ldro_mode"] == "auto"
    assert doc["parameters"] == {
        "sf": 9,
        "bw_khz": 125.0,
        "cr": "4/5",
        "size": 13,
        "preamble": 8,
        "implicit_header": False,
        "crc": True,
    }
    assert doc["frames_per_hour"]["1%"] == math.floor(36 / 0.164864)


def test_cli_options_change_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--sf", "12", "--bw", "125", "--size", "51", "--json"]
    results = {}
    for extra in ([], ["--ldro", "off"], ["--no-crc"], ["--implicit-header"], ["--cr", "4/8"]):
        assert main(base + extra) == 0
        results[" ".join(extra)] = json.loads(capsys.readouterr().out)
    assert results["--ldro off"]["ldro"] is False
    assert results["--ldro off"]["airtime_ms"] < results[""]["airtime_ms"]
    assert results["--no-crc"]["parameters"]["crc"] is False
    assert results["--implicit-header"]["airtime_ms"] == pytest.approx(
        time_on_air(12, 125, 51, implicit_header=True) * 1000
    )
    assert results["--cr 4/8"]["airtime_ms"] == pytest.approx(time_on_air(12, 125, 51, cr=4) * 1000)
    assert main(["--sf", "7", "--bw", "125", "--size", "10", "--ldro", "on"]) == 0
    assert "optimisation: on (forced" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--sf", "13", "--bw", "125", "--size", "10"], "spreading factor 13"),
        (["--sf", "7", "--bw", "100", "--size", "10"], "not a LoRa bandwidth"),
        (["--sf", "7", "--bw", "125", "--size", "300"], "payload length"),
        (["--sf", "7", "--bw", "125", "--size", "10", "--cr", "4/9"], "coding rate"),
        (["--sf", "7", "--bw", "125"], "required: --size"),
        (["--sf", "x", "--bw", "125", "--size", "1"], "invalid int value"),
        (["--sf", "7", "--bw", "125", "--size", "1", "--ldro", "maybe"], "invalid choice"),
    ],
)
def test_cli_invalid_exits_2_with_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("passerelle lorawan airtime: error:")
    assert message in lines[0]


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "usage: passerelle lorawan airtime" in capsys.readouterr().out
