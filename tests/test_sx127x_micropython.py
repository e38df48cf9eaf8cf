"""The portable SX127x driver and its simulator, run by the real MicroPython (wasm).

The scenarios below are plain portable code. Each runs twice: in MicroPython 1.27
under Node (``drivers/sx127x.py`` and ``hil/sx127x_sim.py`` copied into its /lib, the
bus going through the driver's ``SpiBus`` over the simulator's ``machine.SPI``
look-alike) and in CPython. Each returns a JSON-able dict; the tests assert the
expected values from the datasheet, and that both interpreters agree exactly.
All MicroPython runs share one Node process (see ``tests/micropython.py``).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import drivers.sx127x as sx127x_module
import hil.sx127x_sim as sim_module
from tests.micropython import REPO, require_micropython, run_micropython

SCENARIOS = r'''
def _rig(version=0x12):
    clock = SimClock()
    sim = SX127xSim(clock=clock, version=version)
    bus = SpiBus(sim.spi, sim.nss)
    radio = SX127x(bus, reset=sim.reset_pin, sleep_ms=clock.sleep_ms, ticks_ms=clock.ticks_ms)
    return clock, sim, radio


def _hex(data):
    return "".join("%02x" % b for b in data)


def scenario_registers():
    clock, sim, radio = _rig()
    radio.init()
    radio.configure(frequency=868100000, sf=9, bandwidth=125000, coding_rate=6, crc=True,
                    preamble=12, sync_word=0x34, tx_power=17)
    regs = {}
    for address in (0x01, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x1D, 0x1E, 0x20, 0x21, 0x26,
                    0x31, 0x33, 0x37, 0x39, 0x3B, 0x4D):
        regs["%02X" % address] = sim.peek(address)
    radio.set_invert_iq(True)
    regs["33 inverted"] = sim.peek(0x33)
    regs["3B inverted"] = sim.peek(0x3B)
    radio.configure(sf=12, tx_power=20)
    regs["26 SF12"] = sim.peek(0x26)
    regs["09 20dBm"] = sim.peek(0x09)
    regs["4D 20dBm"] = sim.peek(0x4D)
    regs["0B 20dBm"] = sim.peek(0x0B)
    return regs


def scenario_transmit():
    clock, sim, radio = _rig()
    radio.init()
    radio.configure(frequency=869525000, sf=12, invert_iq=True, crc=False, tx_power=14)
    start = clock.ticks_us()
    toa = radio.transmit(b"\x60" + bytes(range(16)))
    return {"toa_us": toa, "elapsed_us": clock.ticks_us() - start,
            "record": sim.transmitted[0].as_dict(), "count": len(sim.transmitted),
            "mode": sim.mode_name, "irq": sim.peek(0x12)}


def scenario_receive():
    clock, sim, radio = _rig()
    radio.init()
    radio.receive()
    nothing = radio.read_packet()
    took1 = sim.inject_rx(b"\x40\x01\x02\x03\x04", rssi=-97.0, snr=6.5)
    first = radio.read_packet()
    took2 = sim.inject_rx(b"second", rssi=-121.5, snr=-7.5)
    second = radio.read_packet()
    wrong_iq = sim.inject_rx(b"downlink", invert_iq=True)
    return {"nothing": nothing, "took": [took1, took2, wrong_iq],
            "first": [_hex(first[0]), first[1], first[2]],
            "second": [_hex(second[0]), second[1], second[2]],
            "mode": sim.mode_name}


def scenario_crc_error():
    clock, sim, radio = _rig()
    radio.init()
    radio.receive()
    sim.inject_rx(b"corrupted!", rssi=-110.0, snr=-2.0, crc_ok=False)
    error = None
    try:
        radio.read_packet()
    except CrcError as e:
        error = {"length": e.length, "rssi": e.rssi, "snr": e.snr, "message": str(e)}
    after = radio.read_packet()
    sim.inject_rx(b"good", rssi=-90.0, snr=8.0)
    good = radio.read_packet()
    return {"error": error, "after": after, "good": _hex(good[0])}


def scenario_version_mismatch():
    clock, sim, radio = _rig(version=0x22)
    try:
        radio.init()
    except ChipNotFound as e:
        return {"raised": "ChipNotFound", "message": str(e)}
    return {"raised": None}


def scenario_timeouts():
    clock, sim, radio = _rig()
    radio.init()
    sim.tx_hangs = True
    tx = None
    start = clock.ticks_us()
    try:
        radio.transmit(b"stuck")
    except TxTimeout as e:
        tx = str(e)
    tx_waited_us = clock.ticks_us() - start
    mode_after_tx = sim.mode_name
    sim.tx_hangs = False
    radio.receive(continuous=False, symbol_timeout=10)
    clock.sleep_ms(11)  # 10 symbols of SF7/125 kHz last 10.24 ms
    rx = None
    try:
        radio.read_packet()
    except RxTimeout as e:
        rx = str(e)
    return {"tx": tx, "tx_waited_us": tx_waited_us, "mode_after_tx": mode_after_tx,
            "rx": rx, "mode_after_rx": sim.mode_name}


def scenario_simulator_rejects_fifo_in_sleep():
    clock, sim, radio = _rig()
    radio.init()
    radio.sleep()
    try:
        radio.write_register(0x00, 0xAA)
    except SimulatorError as e:
        return {"raised": str(e)}
    return {"raised": None}
'''

NAMES = [
    "registers",
    "transmit",
    "receive",
    "crc_error",
    "version_mismatch",
    "timeouts",
    "simulator_rejects_fifo_in_sleep",
]


def _snippet(name: str) -> str:
    return (
        "import json\n"
        "from sx127x import *\n"
        "from sx127x_sim import *\n"
        f"{SCENARIOS}\n"
        f"print(json.dumps(scenario_{name}()))\n"
    )


@pytest.fixture(scope="module")
def mp_results() -> dict[str, Any]:
    """Every scenario in MicroPython, one Node process for the whole module."""
    require_micropython()
    snippets = {name: _snippet(name) for name in NAMES}
    snippets["implementation"] = "import sys\nprint('\"%s\"' % sys.implementation.name)"
    runs = run_micropython(
        snippets,
        files={
            "/lib/sx127x.py": REPO / "drivers" / "sx127x.py",
            "/lib/sx127x_sim.py": REPO / "hil" / "sx127x_sim.py",
        },
    )
    return {name: runs[name].json() for name in [*NAMES, "implementation"]}


def test_the_interpreter_is_micropython(mp_results: dict[str, Any]) -> None:
    assert mp_results["implementation"] == "micropython"


def cpython_result(name: str) -> Any:
    """The same scenario in CPython, through JSON like the MicroPython result."""
    namespace: dict[str, Any] = {}
    for module in (sx127x_module, sim_module):
        namespace.update({k: v for k, v in vars(module).items() if not k.startswith("_")})
    exec(SCENARIOS, namespace)  # noqa: S102 - our own scenario source
    return json.loads(json.dumps(namespace[f"scenario_{name}"]()))


def time_on_air_ms(pl: int, sf: int, bw_khz: float, cr: int, preamble: int, crc: bool) -> float:
    """Semtech AN1200.13 with floats, written independently of the driver (REFERENCE.md)."""
    tsym = 2**sf / bw_khz
    de = 1 if tsym >= 16 else 0
    n = 8 + max(math.ceil((8 * pl - 4 * sf + 28 + 16 * crc) / (4 * (sf - 2 * de))) * (cr + 4), 0)
    return (preamble + 4.25) * tsym + n * tsym


@pytest.mark.parametrize("name", NAMES)
def test_micropython_and_cpython_agree(mp_results: dict[str, Any], name: str) -> None:
    assert mp_results[name] == cpython_result(name)


def test_register_values(mp_results: dict[str, Any]) -> None:
    regs = mp_results["registers"]
    assert regs["01"] == 0x81  # LoRa, HF port (LowFrequencyModeOn clear), Standby
    # 868.1 MHz: Frf = 868.1e6 * 2^19 / 32e6 = 14222950.4 -> 0xD90666
    assert [regs["06"], regs["07"], regs["08"]] == [0xD9, 0x06, 0x66]
    assert regs["09"] == 0x80 | 0x70 | (17 - 2)  # PA_BOOST, Pout = 17 - (15 - OutputPower)
    assert regs["4D"] == 0x84  # RegPaDac default: no +20 dBm mode
    assert regs["0B"] == 0x20 | 11  # OcpOn, 45 + 5 * 11 = 100 mA
    assert regs["1D"] == (0x7 << 4) | (0x2 << 1) | 0  # BW 125 kHz, CR 4/6, explicit header
    assert regs["1E"] == (9 << 4) | 0x04  # SF9, RxPayloadCrcOn
    assert [regs["20"], regs["21"]] == [0, 12]  # preamble 12 symbols
    assert regs["26"] == 0x04  # AgcAutoOn, no LDRO at 4.1 ms symbols
    assert regs["31"] & 0x07 == 0x03 and regs["37"] == 0x0A  # SF7..12 detection settings
    assert regs["39"] == 0x34  # LoRaWAN public sync word
    # IQ: reset values 0x27/0x1D normal; 0x66/0x19 inverted (arduino-LoRa, LoRaMac-node)
    assert [regs["33"], regs["3B"]] == [0x27, 0x1D]
    assert [regs["33 inverted"], regs["3B inverted"]] == [0x66, 0x19]
    assert regs["26 SF12"] == 0x0C  # LDRO on: SF12/125 kHz symbols last 32.8 ms
    assert regs["09 20dBm"] == 0xFF and regs["4D 20dBm"] == 0x87  # +20 dBm: PaDac 0x87
    assert regs["0B 20dBm"] == 0x20 | 17  # 140 mA: -30 + 10 * 17


def test_transmit(mp_results: dict[str, Any]) -> None:
    result = mp_results["transmit"]
    record = result["record"]
    assert record["payload"] == "60" + bytes(range(16)).hex()
    assert abs(record["frequency_hz"] - 869_525_000) <= 31  # half a 61 Hz synthesizer step
    assert (record["sf"], record["bandwidth_hz"], record["coding_rate"]) == (12, 125_000, 5)
    assert record["invert_iq"] is True and record["crc"] is False and record["ldro"] is True
    assert record["power_dbm"] == 14 and record["pa_boost"] is True
    assert record["sync_word"] == 0x34 and record["preamble"] == 8
    expected_ms = time_on_air_ms(17, 12, 125, 1, 8, False)
    assert result["toa_us"] == record["airtime_us"]
    assert abs(result["toa_us"] / 1000 - expected_ms) < 0.01
    assert result["elapsed_us"] >= result["toa_us"]  # returned after TxDone, not before
    assert result["count"] == 1 and result["mode"] == "STDBY"
    assert result["irq"] == 0  # TxDone cleared


def test_receive(mp_results: dict[str, Any]) -> None:
    result = mp_results["receive"]
    assert result["nothing"] is None
    assert result["took"] == [True, True, False]  # an inverted-IQ frame is not heard
    assert result["first"] == ["4001020304", -97.0, 6.5]  # -157 + PacketRssi (SNR >= 0)
    # Below the noise floor the SNR is added: -157 + PacketRssi + SNR
    assert result["second"] == [b"second".hex(), -121.5, -7.5]
    assert result["mode"] == "RXCONTINUOUS"


def test_crc_error(mp_results: dict[str, Any]) -> None:
    result = mp_results["crc_error"]
    assert result["error"]["length"] == 10
    assert (result["error"]["rssi"], result["error"]["snr"]) == (-110.0, -2.0)
    assert "CRC" in result["error"]["message"]
    assert result["after"] is None  # the IRQ was cleared: not reported twice
    assert result["good"] == b"good".hex()


def test_version_mismatch(mp_results: dict[str, Any]) -> None:
    result = mp_results["version_mismatch"]
    assert result["raised"] == "ChipNotFound"
    assert "0x22" in result["message"] and "0x12" in result["message"]


def test_timeouts(mp_results: dict[str, Any]) -> None:
    result = mp_results["timeouts"]
    assert "no TxDone" in result["tx"]
    # the wait is bounded by the time on air (31 ms at SF7) plus the margin, not forever
    assert 31_000 <= result["tx_waited_us"] <= 31_000 + 8_000 + 100_000 + 2_000
    assert result["mode_after_tx"] == "STDBY"
    assert "timed out" in result["rx"]
    assert result["mode_after_rx"] == "STDBY"


def test_simulator_rejects_fifo_in_sleep(mp_results: dict[str, Any]) -> None:
    message = mp_results["simulator_rejects_fifo_in_sleep"]["raised"]
    assert message is not None and "Standby" in message


# --------------------------------------------- static check against MicroPython stubs

STUBS = REPO / ".node" / "micropython-stubs"  # pip install --target <this> micropython-rp2-stubs


def _pyright() -> str | None:
    local = REPO / ".node" / "node_modules" / ".bin" / "pyright"
    return str(local) if local.exists() else shutil.which("pyright")


def test_portable_code_type_checks_against_micropython_stubs(tmp_path: Path) -> None:
    """pyright with MicroPython's stubs as typeshed flags what MicroPython lacks
    (time.monotonic, ...). mypy cannot use these stubs as a custom typeshed."""
    pyright = _pyright()
    if pyright is None or not (STUBS / "machine.pyi").exists():
        pytest.skip(
            "pyright and MicroPython stubs not installed: npm install --prefix .node pyright; "
            "pip install --target .node/micropython-stubs micropython-rp2-stubs"
        )
    for src in (REPO / "drivers" / "sx127x.py", REPO / "hil" / "sx127x_sim.py"):
        shutil.copy(src, tmp_path / src.name)
    (tmp_path / "pyrightconfig.json").write_text(json.dumps({
        "stubPath": str(STUBS),
        "typeshedPath": str(STUBS),
        "include": ["sx127x.py", "sx127x_sim.py"],
        "pythonVersion": "3.11",
        "typeCheckingMode": "basic",
        "reportMissingModuleSource": False,
    }))
    proc = subprocess.run(
        [pyright, "--outputjson", "-p", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )
    report = json.loads(proc.stdout)
    errors = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]
    assert report["summary"]["filesAnalyzed"] == 2
    assert errors == []
