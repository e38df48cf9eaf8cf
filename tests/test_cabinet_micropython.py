"""The portable cabinet drivers and their simulators, run by the real MicroPython (wasm).

Like ``test_sx127x_micropython.py``: the scenarios are plain portable code run twice, in
MicroPython 1.27 under Node (``drivers/{bme280,sht3x,veml7700,gpio}.py`` and
``hil/{i2c_sim,gpio_sim}.py`` copied into its /lib) and in CPython. Each returns a
JSON-able dict; the tests check datasheet values and that both interpreters agree
exactly. One Node process runs them all; the portable modules are also type-checked
against MicroPython's stubs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

import drivers.bme280 as bme280_module
import drivers.gpio as gpio_module
import drivers.sht3x as sht3x_module
import drivers.veml7700 as veml7700_module
import hil.gpio_sim as gpio_sim_module
import hil.i2c_sim as i2c_sim_module
from tests.micropython import REPO, require_micropython, run_micropython

SCENARIOS = r"""
def _rig():
    bus = I2cBusSim()
    return bus, bus.attach(BME280Sim()), bus.attach(SHT3xSim()), bus.attach(VEML7700Sim())


def _error(fn):
    try:
        fn()
    except Exception as e:
        return {"type": type(e).__name__, "kind": getattr(e, "kind", None), "message": str(e)}
    return None


def scenario_bme280_vectors():
    cal = Calibration.from_words(T1=27504, T2=26435, T3=-1000, P1=36477, P2=-10685, P3=3024,
                                 P4=2855, P5=140, P6=-7, P7=15500, P8=-14600, P9=6000,
                                 H1=75, H2=362, H3=0, H4=333, H5=0, H6=30)
    t, t_fine = compensate_temperature(cal, 519888)
    p = compensate_pressure(cal, 415148, t_fine)
    h = compensate_humidity(cal, 30000, t_fine)
    tp, hb = pack_calibration({"T1": 1, "T2": -2, "T3": 3, "P1": 4, "P2": -5, "P3": 6,
                               "P4": 7, "P5": 8, "P6": 9, "P7": 10, "P8": 11, "P9": -12,
                               "H1": 13, "H2": -14, "H3": 15, "H4": -349, "H5": -30, "H6": -7})
    return {"t": t, "t_fine": t_fine, "p_q24_8": p, "h_q22_10": h,
            "parsed": Calibration(tp, hb).as_dict(),
            "time_ms": measurement_time_ms(16, 16, 16)}


def scenario_bme280_read():
    bus, sim, _, _ = _rig()
    sim.set_environment(21.5, 99000.0, 63.0)
    sensor = BME280(bus, sleep_ms=bus.clock.sleep_ms)
    sensor.init()
    first = sensor.read_compensated()
    elapsed = bus.clock.ticks_ms()
    return {"raw": list(sim.raw), "compensated": list(first), "reading": list(sensor.read()),
            "measurements": sim.measurements, "ctrl_meas": sim.peek(0xF4), "elapsed": elapsed,
            "absent": _error(lambda: BME280(bus, 0x77).init())}


def scenario_sht3x():
    bus, _, sim, _ = _rig()
    sim.temperature = 31.25
    sim.humidity = 12.5
    sensor = SHT3x(bus, sleep_ms=bus.clock.sleep_ms)
    sensor.init()
    raw = sensor.read_raw()
    reading = sensor.read()
    sim.bad_crc_next = 1
    bad = _error(sensor.read)
    after = sensor.read()
    early = _error(SHT3x(bus, sleep_ms=lambda ms: None).read)
    return {"crc_beef": crc8(b"\xbe\xef"), "raw": list(raw), "reading": list(reading),
            "bad": bad, "after": list(after), "early": early}


def scenario_veml7700_ranges():
    counts = {}
    for gain in (2, 1, 0.25, 0.125):
        for it in (25, 50, 100, 200, 400, 800):
            counts["%s/%d" % (gain, it)] = [resolution_e4(gain, it),
                                            lux_from_raw(1234, gain, it, False)]
    return counts


def scenario_veml7700_auto_range():
    out = {}
    for lux in (0.5, 40.0, 900.0, 25000.0):
        bus, _, _, sim = _rig()
        sim.lux = lux
        sensor = VEML7700(bus, sleep_ms=bus.clock.sleep_ms)
        sensor.init()
        out[str(lux)] = [sensor.read_lux(), sensor.gain, sensor.integration_ms,
                         sensor.range_changes]
    return out


def scenario_bus_faults():
    bus, sim, _, _ = _rig()
    sensor = BME280(bus, sleep_ms=bus.clock.sleep_ms)
    sensor.init()
    bus.fail_next(0x76, 1, 5)
    eio = _error(sensor.read)
    sim.stuck_byte = 0xFF
    stuck = _error(sensor.read)
    sim.stuck_byte = None
    sim.absent = True
    gone = _error(sensor.read)
    return {"eio": eio, "stuck": stuck, "gone": gone, "scan": bus.scan()}


def scenario_debounce():
    clock = SimClock()
    chip = SimGpioChip(clock.ticks_ms)
    door = chip.input(17, 0)
    inp = DigitalInput(chip.pin(17), 50, False)
    edges = []
    for step in range(400):
        clock.advance_ms(1)
        if step == 100:
            door.drive(1, 12, 5)
        if step == 250:
            door.drive(0, 8, 3)
        state = inp.poll(clock.ticks_ms())
        if state is not None:
            edges.append([clock.ticks_ms(), state])
    return {"edges": edges, "bounces": inp.bounces, "changes": inp.changes}


def scenario_relay():
    clock = SimClock()
    chip = SimGpioChip(clock.ticks_ms)
    contactor = chip.contactor(27, 22, 30)
    relay = Relay(chip.pin(27), True, chip.pin(22), False, 100, "contactor")
    relay.on(clock.ticks_ms())
    clock.advance_ms(120)
    ok = relay.check(clock.ticks_ms())
    contactor.welded = True
    relay.off(clock.ticks_ms())
    clock.advance_ms(120)
    welded = _error(lambda: relay.check(clock.ticks_ms()))
    return {"ok": ok, "welded": welded, "again": relay.check(clock.ticks_ms()),
            "history": [list(h) for h in contactor.coil.history]}
"""

NAMES = [
    "bme280_vectors",
    "bme280_read",
    "sht3x",
    "veml7700_ranges",
    "veml7700_auto_range",
    "bus_faults",
    "debounce",
    "relay",
]
MODULES = {
    "bme280": REPO / "drivers" / "bme280.py",
    "sht3x": REPO / "drivers" / "sht3x.py",
    "veml7700": REPO / "drivers" / "veml7700.py",
    "gpio": REPO / "drivers" / "gpio.py",
    "i2c_sim": REPO / "hil" / "i2c_sim.py",
    "gpio_sim": REPO / "hil" / "gpio_sim.py",
}
# Names the scenarios use, from each module (the modules share some names, like
# SensorError, so a star import of all of them would shadow).
IMPORTS = {
    "bme280": ["BME280", "Calibration", "compensate_temperature", "compensate_pressure",
               "compensate_humidity", "measurement_time_ms"],
    "sht3x": ["SHT3x", "crc8"],
    "veml7700": ["VEML7700", "resolution_e4", "lux_from_raw"],
    "gpio": ["DigitalInput", "Relay"],
    "i2c_sim": ["I2cBusSim", "BME280Sim", "SHT3xSim", "VEML7700Sim", "pack_calibration"],
    "gpio_sim": ["SimClock", "SimGpioChip"],
}  # fmt: skip
PY_MODULES = {
    "bme280": bme280_module,
    "sht3x": sht3x_module,
    "veml7700": veml7700_module,
    "gpio": gpio_module,
    "i2c_sim": i2c_sim_module,
    "gpio_sim": gpio_sim_module,
}


def _snippet(name: str) -> str:
    imports = "".join(f"from {m} import {', '.join(n)}\n" for m, n in IMPORTS.items())
    return f"import json\n{imports}{SCENARIOS}\nprint(json.dumps(scenario_{name}()))\n"


@pytest.fixture(scope="module")
def mp_results() -> dict[str, Any]:
    """Every scenario in MicroPython, one Node process for the whole module."""
    require_micropython()
    snippets = {name: _snippet(name) for name in NAMES}
    snippets["implementation"] = "import sys\nprint('\"%s\"' % sys.implementation.name)"
    runs = run_micropython(snippets, files={f"/lib/{m}.py": p for m, p in MODULES.items()})
    return {name: runs[name].json() for name in [*NAMES, "implementation"]}


def cpython_result(name: str) -> Any:
    namespace: dict[str, Any] = {}
    for module, names in IMPORTS.items():
        namespace.update({n: getattr(PY_MODULES[module], n) for n in names})
    exec(SCENARIOS, namespace)  # noqa: S102 - our own scenario source
    return json.loads(json.dumps(namespace[f"scenario_{name}"]()))


def test_the_interpreter_is_micropython(mp_results: dict[str, Any]) -> None:
    assert mp_results["implementation"] == "micropython"


@pytest.mark.parametrize("name", NAMES)
def test_micropython_and_cpython_agree(mp_results: dict[str, Any], name: str) -> None:
    assert mp_results[name] == cpython_result(name)


def test_bme280_vectors(mp_results: dict[str, Any]) -> None:
    r = mp_results["bme280_vectors"]
    assert (r["t"], r["t_fine"]) == (2508, 128422)  # BMP280 datasheet 3.12: 25.08 degC
    assert round(r["p_q24_8"] / 256) == 100653  # ... and 100653 Pa
    assert 0 < r["h_q22_10"] / 1024 < 100
    assert r["parsed"]["H4"] == -349 and r["parsed"]["H5"] == -30 and r["parsed"]["H6"] == -7
    assert r["parsed"]["T2"] == -2 and r["parsed"]["P9"] == -12 and r["parsed"]["H2"] == -14
    assert r["time_ms"] == 113


def test_bme280_read(mp_results: dict[str, Any]) -> None:
    r = mp_results["bme280_read"]
    t, p, h = r["reading"]
    assert abs(t - 21.5) <= 0.01 and abs(p - 99000) <= 1 and abs(h - 63) <= 0.02
    assert r["measurements"] == 2 and r["ctrl_meas"] & 3 == 0  # forced, back to sleep
    assert r["absent"]["kind"] == "absent" and "0x77" in r["absent"]["message"]


def test_sht3x(mp_results: dict[str, Any]) -> None:
    r = mp_results["sht3x"]
    assert r["crc_beef"] == 0x92
    assert abs(r["reading"][0] - 31.25) < 0.003 and abs(r["reading"][1] - 12.5) < 0.002
    assert r["bad"]["type"] == "CrcError" and r["bad"]["kind"] == "crc"
    assert r["after"] == r["reading"]
    assert r["early"]["kind"] == "absent"  # read before the measurement ended: NACK


def test_veml7700(mp_results: dict[str, Any]) -> None:
    ranges = mp_results["veml7700_ranges"]
    assert ranges["2/800"][0] == 42 and ranges["0.125/25"][0] == 21504
    assert ranges["1/100"][1] == pytest.approx(1234 * 0.0672)
    auto = mp_results["veml7700_auto_range"]
    for lux, (reading, *_range) in auto.items():
        assert abs(reading - float(lux)) / float(lux) < 0.02
    assert auto["0.5"][1:3] == [2, 800]  # darkness: the most sensitive range
    assert auto["25000.0"][1:3] == [0.125, 25]


def test_bus_faults(mp_results: dict[str, Any]) -> None:
    r = mp_results["bus_faults"]
    assert r["eio"]["kind"] == "bus"
    assert r["stuck"]["kind"] == "timeout"
    assert r["gone"]["kind"] == "absent"
    assert r["scan"] == [0x10, 0x44]


def test_debounce(mp_results: dict[str, Any]) -> None:
    r = mp_results["debounce"]
    assert [state for _, state in r["edges"]] == [False, True, False]
    assert r["changes"] == 2 and r["bounces"] >= 6


def test_relay(mp_results: dict[str, Any]) -> None:
    r = mp_results["relay"]
    assert r["ok"] is True
    assert r["welded"]["type"] == "RelayFeedbackError" and "welded" in r["welded"]["message"]
    assert r["again"] is False
    assert [level for _, level in r["history"]] == [1, 0]


# --------------------------------------------- static check against MicroPython stubs

STUBS = REPO / ".node" / "micropython-stubs"


def _pyright() -> str | None:
    local = REPO / ".node" / "node_modules" / ".bin" / "pyright"
    return str(local) if local.exists() else shutil.which("pyright")


def test_portable_code_type_checks_against_micropython_stubs(tmp_path: Path) -> None:
    pyright = _pyright()
    if pyright is None or not (STUBS / "machine.pyi").exists():
        pytest.skip(
            "pyright and MicroPython stubs not installed: npm install --prefix .node pyright; "
            "pip install --target .node/micropython-stubs micropython-rp2-stubs"
        )
    for src in MODULES.values():
        shutil.copy(src, tmp_path / src.name)
    names = [src.name for src in MODULES.values()]
    (tmp_path / "pyrightconfig.json").write_text(
        json.dumps(
            {
                "stubPath": str(STUBS),
                "typeshedPath": str(STUBS),
                "include": names,
                "pythonVersion": "3.11",
                "typeCheckingMode": "basic",
                "reportMissingModuleSource": False,
            }
        )
    )
    proc = subprocess.run(
        [pyright, "--outputjson", "-p", str(tmp_path)],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    errors = [
        f"{d['file']}:{d['range']['start']['line'] + 1}: {d['message']}"
        for d in report["generalDiagnostics"]
        if d["severity"] == "error"
    ]
    assert report["summary"]["filesAnalyzed"] == len(MODULES)
    assert errors == []
