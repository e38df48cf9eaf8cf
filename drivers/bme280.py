"""Bosch BME280 temperature / pressure / humidity sensor on I2C, portable.

Runs on CPython (``drivers/i2c_pi.py`` gives it smbus2) and on MicroPython, where a
``machine.I2C`` is passed directly: the bus is the ``machine.I2C`` subset
``readfrom_mem(addr, reg, n)`` / ``writeto_mem(addr, reg, buf)``. A device that does
not acknowledge raises ``OSError`` on both; the driver turns it into
:class:`SensorError` naming the chip and its address.

Facts from the BME280 datasheet (BST-BME280-DS002, rev 1.6):

=========  =====================================================================
0x88-0xA1  calibration, dig_T1..dig_P9 little-endian words, dig_H1 at 0xA1
0xD0       ``id``: 0x60
0xE0       ``reset``: write 0xB6 for a power-on reset (2 ms start-up)
0xE1-0xE7  calibration: dig_H2 (s16), dig_H3 (u8), dig_H4/dig_H5 (signed 12-bit,
           packed as E4[7:0]<<4 | E5[3:0] and E6[7:0]<<4 | E5[7:4]), dig_H6 (s8)
0xF2       ``ctrl_hum``: osrs_h[2:0]; only effective after a write to ctrl_meas
0xF3       ``status``: measuring[3], im_update[0] (NVM copy running)
0xF4       ``ctrl_meas``: osrs_t[7:5] osrs_p[4:2] mode[1:0] (00 sleep, 01 forced)
0xF5       ``config``: t_sb[7:5] filter[4:2]; writes may be ignored in normal mode
0xF7-0xFE  press[19:0], temp[19:0] (msb, lsb, xlsb[7:4]), hum[15:0]
=========  =====================================================================

Forced mode: one measurement, then the chip returns to sleep by itself — what a
cabinet poller every minute wants (about 0.1 uA between polls, no self-heating).

Compensation uses the datasheet's *integer* formulas (BME280_compensate_T_int32,
BME280_compensate_P_int64, bme280_compensate_H_int32). MicroPython and CPython ints
are arbitrary precision, so where the C code depends on its integer types this module
emulates them explicitly:

* ``>>`` of a negative int: C compilers shift arithmetically; Python's ``>>`` floors,
  which is the same thing. Left shifts of negatives equal multiplication in both.
* ``/`` in the pressure formula: int64 division truncates toward zero; Python's ``//``
  floors, so :func:`_div_trunc` is used there.
* the final ``(BME280_U32_t)`` casts: masked to 32 bits.
* overflow is NOT emulated: it is undefined behaviour in C that realistic calibration
  never reaches, and exact results are the intent of the formulas.

On boards whose MicroPython lacks arbitrary-precision ints (``longlong`` builds), the
pressure formula's ``(1 << 47) * dig_P1`` step is at the edge of int64, as in C.
"""

try:
    from micropython import const
except ImportError:  # CPython: const() is only a hint to MicroPython's compiler
    const = int

try:
    from typing import TYPE_CHECKING
except ImportError:  # MicroPython has no typing module; annotations are not evaluated there
    TYPE_CHECKING = False  # type: ignore[misc]

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    class I2c(Protocol):
        """The part of MicroPython's ``machine.I2C`` the driver uses."""

        def readfrom_mem(self, addr: int, memaddr: int, nbytes: int) -> bytes: ...

        def writeto_mem(self, addr: int, memaddr: int, buf: bytes) -> None: ...


REG_CALIB_TP = const(0x88)  # 26 bytes: 0x88..0xA1 (dig_H1 at 0xA1)
REG_ID = const(0xD0)
REG_RESET = const(0xE0)
REG_CALIB_H = const(0xE1)  # 7 bytes: 0xE1..0xE7
REG_CTRL_HUM = const(0xF2)
REG_STATUS = const(0xF3)
REG_CTRL_MEAS = const(0xF4)
REG_CONFIG = const(0xF5)
REG_DATA = const(0xF7)  # 8 bytes: press, temp, hum

CHIP_ID = const(0x60)
RESET_WORD = const(0xB6)
STATUS_MEASURING = const(0x08)
STATUS_IM_UPDATE = const(0x01)
MODE_SLEEP = const(0x00)
MODE_FORCED = const(0x01)

ADDRESSES = (0x76, 0x77)  # SDO to GND / to VDDIO
# Oversampling factor -> register code (0: measurement skipped).
OVERSAMPLING = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}
IIR_FILTER = {0: 0, 2: 1, 4: 2, 8: 3, 16: 4}
# Output of a skipped measurement (datasheet 5.4.8/5.4.9).
SKIPPED_20BIT = const(0x80000)
SKIPPED_16BIT = const(0x8000)
# Operating range (datasheet table 1): readings outside are a fault, not weather.
TEMPERATURE_RANGE_C = (-40.0, 85.0)
PRESSURE_RANGE_PA = (30000.0, 110000.0)


class SensorError(Exception):
    """A sensor did not give a valid reading; ``kind`` says why, for counting.

    Kinds: ``absent`` (no ACK), ``chip`` (wrong chip id), ``timeout`` (never finished),
    ``data`` (implausible or skipped values), ``bus`` (other bus errors).
    """

    def __init__(self, sensor: str, address: int, kind: str, reason: str) -> None:
        super().__init__(f"{sensor} at 0x{address:02X}: {reason}")
        self.sensor = sensor
        self.address = address
        self.kind = kind


class ChipNotFound(SensorError):
    """The chip id register did not read 0x60."""


def _s16(lsb: int, msb: int) -> int:
    value = (msb << 8) | lsb
    return value - 0x10000 if value & 0x8000 else value


def _s8(value: int) -> int:
    return value - 0x100 if value & 0x80 else value


def _s12(value: int) -> int:
    return value - 0x1000 if value & 0x800 else value


def _div_trunc(a: int, b: int) -> int:
    """C integer division (truncation toward zero); Python's // floors."""
    q = abs(a) // abs(b)
    return q if (a < 0) == (b < 0) else -q


class Calibration:
    """The trimming words read from the chip's NVM (datasheet table 16)."""

    def __init__(self, tp: bytes, h: bytes) -> None:
        if len(tp) != 26 or len(h) != 7:
            raise ValueError(f"calibration blocks of {len(tp)} and {len(h)} bytes: need 26 and 7")
        self.T1 = tp[0] | (tp[1] << 8)
        self.T2 = _s16(tp[2], tp[3])
        self.T3 = _s16(tp[4], tp[5])
        self.P1 = tp[6] | (tp[7] << 8)
        self.P2 = _s16(tp[8], tp[9])
        self.P3 = _s16(tp[10], tp[11])
        self.P4 = _s16(tp[12], tp[13])
        self.P5 = _s16(tp[14], tp[15])
        self.P6 = _s16(tp[16], tp[17])
        self.P7 = _s16(tp[18], tp[19])
        self.P8 = _s16(tp[20], tp[21])
        self.P9 = _s16(tp[22], tp[23])
        self.H1 = tp[25]  # 0xA1; 0xA0 is reserved
        self.H2 = _s16(h[0], h[1])
        self.H3 = h[2]
        # dig_H4/H5 are signed 12-bit values sharing 0xE5: Bosch's own driver sign-extends
        # them from the MSB byte; reading them as plain 16-bit words loses the sign.
        self.H4 = _s12((h[3] << 4) | (h[4] & 0x0F))
        self.H5 = _s12((h[5] << 4) | (h[4] >> 4))
        self.H6 = _s8(h[6])

    @classmethod
    def from_words(cls, **words: int) -> "Calibration":
        """A calibration from named words (T1=..., H6=...), e.g. for datasheet vectors."""
        cal = cls(bytes(26), bytes(7))
        for name, value in words.items():
            if not hasattr(cal, name):
                raise ValueError(f"unknown calibration word {name!r}")
            setattr(cal, name, value)
        return cal

    def as_dict(self) -> "dict[str, int]":
        names = (
            "T1",
            "T2",
            "T3",
            "P1",
            "P2",
            "P3",
            "P4",
            "P5",
            "P6",
            "P7",
            "P8",
            "P9",
            "H1",
            "H2",
            "H3",
            "H4",
            "H5",
            "H6",
        )
        return {n: getattr(self, n) for n in names}


def compensate_temperature(cal: Calibration, adc_t: int) -> "tuple[int, int]":
    """BME280_compensate_T_int32: (temperature in 0.01 degC, t_fine)."""
    var1 = (((adc_t >> 3) - (cal.T1 << 1)) * cal.T2) >> 11
    d = (adc_t >> 4) - cal.T1
    var2 = (((d * d) >> 12) * cal.T3) >> 14
    t_fine = var1 + var2
    return (t_fine * 5 + 128) >> 8, t_fine


def compensate_pressure(cal: Calibration, adc_p: int, t_fine: int) -> int:
    """BME280_compensate_P_int64: pressure in Pa as Q24.8 (divide by 256); 0 if invalid."""
    var1 = t_fine - 128000
    var2 = var1 * var1 * cal.P6
    var2 = var2 + ((var1 * cal.P5) << 17)
    var2 = var2 + (cal.P4 << 35)
    var1 = ((var1 * var1 * cal.P3) >> 8) + ((var1 * cal.P2) << 12)
    var1 = (((1 << 47) + var1) * cal.P1) >> 33
    if var1 == 0:
        return 0  # the datasheet's guard against a division by zero (dig_P1 = 0)
    p = 1048576 - adc_p
    p = _div_trunc(((p << 31) - var2) * 3125, var1)
    var1 = (cal.P9 * (p >> 13) * (p >> 13)) >> 25
    var2 = (cal.P8 * p) >> 19
    p = ((p + var1 + var2) >> 8) + (cal.P7 << 4)
    return p & 0xFFFFFFFF


def compensate_humidity(cal: Calibration, adc_h: int, t_fine: int) -> int:
    """bme280_compensate_H_int32: relative humidity in %RH as Q22.10 (divide by 1024)."""
    v = t_fine - 76800
    v = ((((adc_h << 14) - (cal.H4 << 20) - (cal.H5 * v)) + 16384) >> 15) * (
        (
            (((((v * cal.H6) >> 10) * (((v * cal.H3) >> 11) + 32768)) >> 10) + 2097152) * cal.H2
            + 8192
        )
        >> 14
    )
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * cal.H1) >> 4)
    v = 0 if v < 0 else v
    v = 419430400 if v > 419430400 else v
    return (v >> 12) & 0xFFFFFFFF


def measurement_time_ms(factor_t: int, factor_p: int, factor_h: int) -> int:
    """Maximum forced-mode measurement time (datasheet 9.1), rounded up to a ms.

    t = 1.25 + 2.3*T + (2.3*P + 0.575) + (2.3*H + 0.575) ms with the oversampling
    *factors* (1..16, not register codes), a term only when enabled; computed in
    microseconds to stay integer.
    """
    us = 1250 + 2300 * factor_t
    if factor_p:
        us += 2300 * factor_p + 575
    if factor_h:
        us += 2300 * factor_h + 575
    return (us + 999) // 1000


def _default_sleep_ms() -> "Callable[[int], None]":
    import time

    if hasattr(time, "sleep_ms"):
        return time.sleep_ms
    return lambda ms: time.sleep(ms / 1000)


class BME280:
    """One BME280 in forced mode.

    ``oversampling_*`` are factors (0 skips the quantity, 1, 2, 4, 8, 16); ``iir_filter``
    is the IIR coefficient (0 off, 2..16). Call :meth:`init` once, then :meth:`read`.
    """

    name = "bme280"

    def __init__(
        self,
        i2c: "I2c",
        address: int = 0x76,
        oversampling_t: int = 1,
        oversampling_p: int = 1,
        oversampling_h: int = 1,
        iir_filter: int = 0,
        sleep_ms: "Callable[[int], None] | None" = None,
    ) -> None:
        if address not in ADDRESSES:
            raise ValueError(f"BME280 address 0x{address:02X}: the chip answers at 0x76 or 0x77")
        for label, factor in (("T", oversampling_t), ("P", oversampling_p), ("H", oversampling_h)):
            if factor not in OVERSAMPLING:
                raise ValueError(
                    f"oversampling_{label.lower()} {factor!r}: use 0, 1, 2, 4, 8 or 16"
                )
        if oversampling_t == 0:
            raise ValueError("oversampling_t 0 would skip temperature, which P and H need")
        if iir_filter not in IIR_FILTER:
            raise ValueError(f"iir_filter {iir_filter!r}: use 0, 2, 4, 8 or 16")
        self._i2c = i2c
        self.address = address
        self._factors = (oversampling_t, oversampling_p, oversampling_h)
        self._osrs_t = OVERSAMPLING[oversampling_t]
        self._osrs_p = OVERSAMPLING[oversampling_p]
        self._osrs_h = OVERSAMPLING[oversampling_h]
        self._filter = IIR_FILTER[iir_filter]
        self._sleep_ms = sleep_ms or _default_sleep_ms()
        self.calibration = None  # type: Calibration | None
        self.t_fine = 0

    # --- bus access ------------------------------------------------------------------

    def _error(self, kind: str, reason: str) -> SensorError:
        return SensorError("BME280", self.address, kind, reason)

    def _read(self, register: int, count: int) -> bytes:
        try:
            data = self._i2c.readfrom_mem(self.address, register, count)
        except OSError as e:
            raise self._bus_error(e, f"reading 0x{register:02X}") from e
        if data is None or len(data) != count:
            got = "no" if data is None else len(data)
            raise self._error("bus", f"read {got} bytes from 0x{register:02X}, wanted {count}")
        return bytes(data)

    def _write(self, register: int, value: int) -> None:
        try:
            self._i2c.writeto_mem(self.address, register, bytes((value,)))
        except OSError as e:
            raise self._bus_error(e, f"writing 0x{register:02X}") from e

    def _bus_error(self, e: OSError, doing: str) -> SensorError:
        code = e.args[0] if e.args else None
        if code in (19, 6, 121):  # ENODEV, ENXIO, EREMOTEIO: no acknowledge
            return self._error("absent", f"no answer {doing} (wiring, address, power?)")
        # str(OSError) differs between CPython and MicroPython: spell it out the same way.
        detail = f"errno {code}" + (f" ({e.args[1]})" if len(e.args) > 1 else "")
        return self._error("bus", f"I2C error {doing}: {detail}")

    # --- life cycle ------------------------------------------------------------------

    def chip_id(self) -> int:
        return self._read(REG_ID, 1)[0]

    def init(self) -> None:
        """Check the chip, reset it, read its calibration and set oversampling."""
        chip = self.chip_id()
        if chip != CHIP_ID:
            hint = " (a BMP280: no humidity)" if chip in (0x56, 0x57, 0x58) else ""
            raise ChipNotFound(
                "BME280",
                self.address,
                "chip",
                f"chip id 0x{chip:02X}, expected 0x{CHIP_ID:02X}{hint}",
            )
        self._write(REG_RESET, RESET_WORD)
        self._sleep_ms(2)  # start-up time after reset
        for _ in range(10):
            if not self._read(REG_STATUS, 1)[0] & STATUS_IM_UPDATE:
                break
            self._sleep_ms(1)
        else:
            raise self._error("timeout", "NVM copy (im_update) still running 12 ms after reset")
        self.calibration = Calibration(self._read(REG_CALIB_TP, 26), self._read(REG_CALIB_H, 7))
        # Sleep mode after reset: config is written now, while its writes are honoured, and
        # ctrl_hum takes effect with the ctrl_meas write that follows it.
        self._write(REG_CTRL_HUM, self._osrs_h)
        self._write(REG_CONFIG, self._filter << 2)
        self._write(REG_CTRL_MEAS, (self._osrs_t << 5) | (self._osrs_p << 2) | MODE_SLEEP)

    # --- measuring -------------------------------------------------------------------

    def read_raw(self) -> "tuple[int, int, int]":
        """One forced measurement: (adc_T, adc_P, adc_H) as the ADCs gave them."""
        if self.calibration is None:
            raise self._error("bus", "not initialised: call init() first")
        self._write(REG_CTRL_MEAS, (self._osrs_t << 5) | (self._osrs_p << 2) | MODE_FORCED)
        wait = measurement_time_ms(self._factors[0], self._factors[1], self._factors[2])
        self._sleep_ms(wait)
        for _ in range(20):
            if not self._read(REG_STATUS, 1)[0] & STATUS_MEASURING:
                break
            self._sleep_ms(1)
        else:
            raise self._error("timeout", f"still measuring {wait + 20} ms after the trigger")
        d = self._read(REG_DATA, 8)
        adc_p = (d[0] << 12) | (d[1] << 4) | (d[2] >> 4)
        adc_t = (d[3] << 12) | (d[4] << 4) | (d[5] >> 4)
        adc_h = (d[6] << 8) | d[7]
        return adc_t, adc_p, adc_h

    def read_compensated(self) -> "tuple[int, int | None, int | None]":
        """(temperature 0.01 degC, pressure Pa Q24.8, humidity %RH Q22.10); None if skipped."""
        adc_t, adc_p, adc_h = self.read_raw()
        cal = self.calibration
        assert cal is not None
        if adc_t == SKIPPED_20BIT:
            raise self._error(
                "data",
                "temperature reads 0x80000: measurement skipped or "
                "never made (chip reset behind our back?)",
            )
        t, self.t_fine = compensate_temperature(cal, adc_t)
        p = None
        if self._osrs_p:
            if adc_p == SKIPPED_20BIT:
                raise self._error("data", "pressure reads 0x80000 although enabled")
            p = compensate_pressure(cal, adc_p, self.t_fine)
        h = None
        if self._osrs_h:
            if adc_h == SKIPPED_16BIT:
                raise self._error("data", "humidity reads 0x8000 although enabled")
            h = compensate_humidity(cal, adc_h, self.t_fine)
        return t, p, h

    def read(self) -> "tuple[float, float | None, float | None]":
        """(temperature degC, pressure Pa, humidity %RH); None for a skipped quantity."""
        t, p, h = self.read_compensated()
        temperature = t / 100
        if not TEMPERATURE_RANGE_C[0] <= temperature <= TEMPERATURE_RANGE_C[1]:
            raise self._error("data", f"temperature {temperature} degC outside -40..85")
        pressure = None
        if p is not None:
            pressure = p / 256
            if not PRESSURE_RANGE_PA[0] <= pressure <= PRESSURE_RANGE_PA[1]:
                raise self._error("data", f"pressure {pressure} Pa outside 300..1100 hPa")
        humidity = None if h is None else h / 1024
        return temperature, pressure, humidity
