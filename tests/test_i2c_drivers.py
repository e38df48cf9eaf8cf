"""BME280, SHT3x and VEML7700 drivers against datasheet vectors and the hil/ simulators."""

from __future__ import annotations

import errno
import random

import pytest

from drivers import bme280, sht3x, veml7700
from drivers.bme280 import BME280, Calibration
from drivers.sht3x import SHT3x, crc8
from drivers.veml7700 import VEML7700
from hil.i2c_sim import (
    DATASHEET_CALIBRATION,
    BME280Sim,
    I2cBusSim,
    SHT3xSim,
    SimulatorError,
    VEML7700Sim,
    bme280_humidity,
    pack_calibration,
)

# BMP280 datasheet, 3.12 worked example (the BME280 T and P formulas are the same).
DATASHEET_TP = {
    "T1": 27504, "T2": 26435, "T3": -1000,
    "P1": 36477, "P2": -10685, "P3": 3024, "P4": 2855, "P5": 140, "P6": -7,
    "P7": 15500, "P8": -14600, "P9": 6000,
}  # fmt: skip


def rig() -> tuple[I2cBusSim, BME280Sim, SHT3xSim, VEML7700Sim]:
    bus = I2cBusSim()
    return bus, bus.attach(BME280Sim()), bus.attach(SHT3xSim()), bus.attach(VEML7700Sim())


# --- BME280 ----------------------------------------------------------------------------


def test_bme280_datasheet_temperature_and_pressure_vector() -> None:
    cal = Calibration.from_words(**DATASHEET_TP)
    t, t_fine = bme280.compensate_temperature(cal, 519888)
    assert (t, t_fine) == (2508, 128422)  # 25.08 degC
    p = bme280.compensate_pressure(cal, 415148, t_fine)
    # The datasheet gives 100653.27 Pa (double) and 100653 Pa (32-bit); Q24.8 here.
    assert round(p / 256) == 100653
    assert abs(p / 256 - 100653.27) < 0.05


def test_bme280_humidity_integer_formula_agrees_with_double_formula() -> None:
    """Over random calibrations and raw values, the integer formula stays within its own
    resolution of the datasheet's double formula: it rounds the ADC term to whole counts
    (``>> 15``) before scaling, so agreement is measured in ADC counts."""
    rng = random.Random(1)
    worst_counts = worst_rh = 0.0
    for _ in range(3000):
        words = dict(DATASHEET_TP)
        words.update(
            H1=rng.randrange(0, 256), H2=rng.randrange(300, 420), H3=rng.randrange(0, 30),
            H4=rng.randrange(250, 400), H5=rng.randrange(-60, 60), H6=rng.randrange(20, 40),
        )  # fmt: skip
        cal = Calibration.from_words(**words)
        adc_t = rng.randrange(400000, 620000)  # about -20..60 degC with these words
        adc_h = rng.randrange(0, 65536)
        _, t_fine = bme280.compensate_temperature(cal, adc_t)
        integer = bme280.compensate_humidity(cal, adc_h, t_fine) / 1024
        double = bme280_humidity(words, adc_h, t_fine)
        if 0.0 < double < 100.0:  # away from the clamps
            per_count = bme280_humidity(words, adc_h + 1, t_fine) - double
            worst_counts = max(worst_counts, abs(integer - double) / per_count)
        worst_rh = max(worst_rh, abs(integer - double))
    assert worst_counts < 2.0  # measured: 1.4 counts
    assert worst_rh < 0.01  # %RH, against a +-3 %RH sensor accuracy


def test_bme280_calibration_bytes_with_negative_12_bit_h4_h5() -> None:
    words = dict(DATASHEET_CALIBRATION, H4=-349, H5=-30, H2=-5, H6=-7)
    tp, h = pack_calibration(words)
    cal = Calibration(tp, h)
    assert cal.as_dict() == words
    # Reading E4/E5 as a plain unsigned word (a common bug) would not give -349.
    assert (h[3] << 4) | (h[4] & 0x0F) != -349


def test_bme280_measurement_time() -> None:
    # datasheet 9.1: 1.25 + 2.3 + (2.3 + 0.575) + (2.3 + 0.575) = 9.3 ms -> 10
    assert bme280.measurement_time_ms(1, 1, 1) == 10
    assert bme280.measurement_time_ms(16, 16, 16) == 113  # x16 everywhere: 112.8 ms
    assert bme280.measurement_time_ms(1, 0, 0) == 4  # 3.55 ms


@pytest.mark.parametrize(
    ("t", "p", "h"), [(25.0, 101325.0, 40.0), (-12.5, 95000.0, 95.0), (60.0, 80000.0, 5.0)]
)
def test_bme280_reads_the_simulated_environment(t: float, p: float, h: float) -> None:
    bus, sim, _, _ = rig()
    sim.set_environment(t, p, h)
    sensor = BME280(bus, sleep_ms=bus.clock.sleep_ms)
    sensor.init()
    temperature, pressure, humidity = sensor.read()
    assert abs(temperature - t) <= 0.01
    assert pressure is not None and abs(pressure - p) <= 1.0
    assert humidity is not None and abs(humidity - h) <= 0.02
    assert sim.measurements == 1
    assert sim.peek(0xF4) & 0x03 == 0  # forced mode went back to sleep


def test_bme280_skipped_humidity_and_oversampling_registers() -> None:
    bus, sim, _, _ = rig()
    sensor = BME280(bus, oversampling_t=2, oversampling_p=16, oversampling_h=0, iir_filter=4,
                    sleep_ms=bus.clock.sleep_ms)  # fmt: skip
    sensor.init()
    _, pressure, humidity = sensor.read()
    assert humidity is None and pressure is not None
    assert sim.peek(0xF2) == 0 and sim.peek(0xF5) == 2 << 2
    assert sim.peek(0xF4) >> 2 == (2 << 3) | 5


def test_bme280_absent_and_wrong_chip() -> None:
    bus = I2cBusSim()
    with pytest.raises(bme280.SensorError) as absent:
        BME280(bus, 0x77).init()
    assert absent.value.kind == "absent" and "0x77" in str(absent.value)
    bus.attach(BME280Sim(0x77, chip_id=0x58))
    with pytest.raises(bme280.ChipNotFound, match="0x58.*BMP280"):
        BME280(bus, 0x77).init()


def test_bme280_driver_that_reads_too_early_is_caught_by_the_simulator() -> None:
    bus, _, _, _ = rig()
    sensor = BME280(bus, sleep_ms=lambda ms: None)  # never waits
    with pytest.raises(SimulatorError, match="start-up"):
        sensor.init()


def test_bme280_stuck_bus_byte_and_skipped_temperature() -> None:
    bus, sim, _, _ = rig()
    sensor = BME280(bus, sleep_ms=bus.clock.sleep_ms)
    sensor.init()
    sim.stuck_byte = 0xFF  # status reads 0xFF: "measuring" never clears
    with pytest.raises(bme280.SensorError) as stuck:
        sensor.read()
    assert stuck.value.kind == "timeout"
    sim.stuck_byte = None
    sim.set_raw(0x80000, 0x80000, 0x8000)
    with pytest.raises(bme280.SensorError, match="0x80000") as skipped:
        sensor.read()
    assert skipped.value.kind == "data"


# --- SHT3x -----------------------------------------------------------------------------


def test_sht3x_crc_datasheet_example() -> None:
    assert crc8(b"\xbe\xef") == 0x92  # SHT3x-DIS datasheet 4.12
    assert crc8(b"\x00\x00") == 0x81


def test_sht3x_reads_simulated_values_and_formulas() -> None:
    bus, _, sim, _ = rig()
    sim.temperature, sim.humidity = -12.3, 88.8
    sensor = SHT3x(bus, repeatability="medium", sleep_ms=bus.clock.sleep_ms)
    sensor.init()
    t, rh = sensor.read()
    assert abs(t + 12.3) < 175 / 65535 and abs(rh - 88.8) < 100 / 65535
    sim.set_raw(0, 65535)
    assert sensor.read() == (-45.0, 100.0)


def test_sht3x_bad_crc_is_a_crc_error() -> None:
    bus, _, sim, _ = rig()
    sensor = SHT3x(bus, sleep_ms=bus.clock.sleep_ms)
    sensor.init()
    sim.bad_crc_next = 1
    with pytest.raises(sht3x.CrcError, match="CRC") as bad:
        sensor.read()
    assert bad.value.kind == "crc" and "0x44" in str(bad.value)
    sensor.read()  # the next one is fine
    sim.corrupt_next(4, 0x10)  # a flipped data bit in the humidity word
    with pytest.raises(sht3x.CrcError, match="word 1"):
        sensor.read()


def test_sht3x_reading_before_the_measurement_ends_is_a_nack() -> None:
    bus, _, _, _ = rig()
    sensor = SHT3x(bus, sleep_ms=lambda ms: None)
    with pytest.raises(sht3x.SensorError) as early:
        sensor.read()
    assert early.value.kind == "absent"


def test_sht3x_absent_and_injected_bus_error() -> None:
    bus, _, _, _ = rig()
    with pytest.raises(sht3x.SensorError, match="0x45") as absent:
        SHT3x(bus, 0x45).init()
    assert absent.value.kind == "absent"
    sensor = SHT3x(bus, sleep_ms=bus.clock.sleep_ms)
    bus.fail_next(0x44, errno=errno.EIO)
    with pytest.raises(sht3x.SensorError) as failed:
        sensor.read()
    assert failed.value.kind == "bus"


# --- VEML7700 --------------------------------------------------------------------------

# Application note 84323 / datasheet rev 1.7 resolution table, lx per count.
RESOLUTION = {
    800: {2: 0.0042, 1: 0.0084, 0.25: 0.0336, 0.125: 0.0672},
    400: {2: 0.0084, 1: 0.0168, 0.25: 0.0672, 0.125: 0.1344},
    200: {2: 0.0168, 1: 0.0336, 0.25: 0.1344, 0.125: 0.2688},
    100: {2: 0.0336, 1: 0.0672, 0.25: 0.2688, 0.125: 0.5376},
    50: {2: 0.0672, 1: 0.1344, 0.25: 0.5376, 0.125: 1.0752},
    25: {2: 0.1344, 1: 0.2688, 0.25: 1.0752, 0.125: 2.1504},
}


@pytest.mark.parametrize("it", sorted(RESOLUTION))
@pytest.mark.parametrize("gain", [2, 1, 0.25, 0.125])
def test_veml7700_lux_from_raw_at_each_gain_and_integration_time(it: int, gain: float) -> None:
    assert veml7700.resolution_e4(gain, it) / 10000 == pytest.approx(RESOLUTION[it][gain])
    assert veml7700.lux_from_raw(1000, gain, it, correct=False) == pytest.approx(
        1000 * RESOLUTION[it][gain]
    )
    bus, _, _, sim = rig()
    sim.nonlinear = False  # counts proportional to light, also above 1000 lx
    sim.lux = 500 * RESOLUTION[it][gain]  # 500 counts at this range
    sensor = VEML7700(bus, gain=gain, integration_ms=it, auto_range=False,
                      sleep_ms=bus.clock.sleep_ms)  # fmt: skip
    sensor.init()
    assert sensor.read_raw() == 500
    assert sim.conf == veml7700.conf_word(gain, it)


def test_veml7700_high_lux_correction() -> None:
    assert veml7700.correct_high_lux(900.0) == 900.0
    # 6.0135e-13 x^4 - 9.3924e-9 x^3 + 8.1488e-5 x^2 + 1.0023 x at 20 klx
    x = 20000.0
    expected = 6.0135e-13 * x**4 - 9.3924e-9 * x**3 + 8.1488e-5 * x**2 + 1.0023 * x
    assert veml7700.correct_high_lux(x) == pytest.approx(expected)


@pytest.mark.parametrize("lux", [0.3, 5.0, 80.0, 700.0, 4000.0, 30000.0, 110000.0])
def test_veml7700_auto_range_reads_the_simulated_light(lux: float) -> None:
    bus, _, _, sim = rig()
    sim.lux = lux
    sensor = VEML7700(bus, sleep_ms=bus.clock.sleep_ms)
    sensor.init()
    reading = sensor.read_lux()
    raw = sensor.read_raw()
    assert reading == veml7700.lux_from_raw(raw, sensor.gain, sensor.integration_ms)
    # within one count, as the correction polynomial stretches it at high light
    one_count = veml7700.lux_from_raw(raw + 1, sensor.gain, sensor.integration_ms) - reading
    assert abs(reading - lux) <= one_count
    assert veml7700.COUNTS_LOW <= raw <= veml7700.COUNTS_HIGH or (
        sensor.gain,
        sensor.integration_ms,
    ) in (veml7700.LADDER[0], veml7700.LADDER[-1])


def test_veml7700_reading_before_an_integration_is_caught_by_the_simulator() -> None:
    bus, _, _, _ = rig()
    sensor = VEML7700(bus, sleep_ms=lambda ms: None)
    sensor.init()
    with pytest.raises(SimulatorError, match="stale"):
        sensor.read_raw()


def test_veml7700_absent() -> None:
    bus = I2cBusSim()
    with pytest.raises(veml7700.SensorError) as absent:
        VEML7700(bus).init()
    assert absent.value.kind == "absent" and "0x10" in str(absent.value)


# --- bus simulator ---------------------------------------------------------------------


def test_bus_simulator_nack_is_enodev_and_scan() -> None:
    bus, _, _, _ = rig()
    assert bus.scan() == [0x10, 0x44, 0x76]
    with pytest.raises(OSError) as nack:
        bus.readfrom_mem(0x50, 0, 1)
    assert nack.value.args[0] == errno.ENODEV
    bus.hang_ms = 25
    start = bus.clock.ticks_ms()
    with pytest.raises(OSError) as hung:
        bus.readfrom_mem(0x76, 0xD0, 1)
    assert hung.value.args[0] == errno.ETIMEDOUT and bus.clock.ticks_ms() - start == 25


def test_i2c_pi_adapter_reports_a_missing_bus_clearly() -> None:
    pytest.importorskip("smbus2")
    from drivers.i2c_pi import I2cDevBus

    with pytest.raises(OSError, match=r"/dev/i2c-97.*I2C not enabled"):
        I2cDevBus(97)
