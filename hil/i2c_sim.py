"""I2C bus and register-level sensor simulators (BME280, SHT3x, VEML7700), portable.

:class:`I2cBusSim` is a ``machine.I2C`` look-alike (``readfrom_mem``, ``writeto_mem``,
``writeto``, ``readfrom``, ``scan``): it plugs in where ``machine.I2C`` or
``drivers/i2c_pi.py`` would, so the real drivers and the agent's I2C source run
unchanged against it, under CPython and MicroPython alike. An address nobody answers
raises ``OSError(ENODEV)``, as MicroPython does (the Pi adapter maps Linux's
EREMOTEIO/ENXIO to the same).

Each device sees what the wire carries: a write is the bytes after the address byte,
a ``readfrom_mem`` is a write of the register pointer, a repeated start, then a read.
The chips answer as their datasheets say, and where a driver breaks a chip rule
(register written that is read-only, data read while a conversion runs, access during
the start-up time after a reset, clock-stretching commands...) the simulator raises
:class:`SimulatorError` naming the rule, so tests catch driver bugs.

Fault injection, per bus: ``fail_next(address, count, errno)``, ``hang_ms`` (every
transaction blocks, then times out: a bus held low); per device: ``absent`` (stops
acknowledging), ``corrupt_next(index, xor, count)`` (flips bits in the next reads'
bytes), ``stuck_byte`` (every byte read is this value, e.g. 0xFF).

Test-facing API:

``I2cBusSim(clock=None, ticks_ms=None, sleep_ms=None)`` with ``attach(device)``
``BME280Sim(address=0x76, calibration=None)``: ``set_environment(t, p, h)`` or
    ``set_raw(adc_t, adc_p, adc_h)``; ``measurements``; ``peek(register)``
``SHT3xSim(address=0x44)``: ``temperature``, ``humidity`` or ``set_raw(t, rh)``;
    ``bad_crc_next`` (count of measurements whose first CRC is wrong)
``VEML7700Sim(address=0x10)``: ``lux`` (true illuminance); ``nonlinear``
"""

try:
    from typing import TYPE_CHECKING
except ImportError:  # MicroPython: no typing module, annotations are not evaluated
    TYPE_CHECKING = False  # type: ignore[misc]

if TYPE_CHECKING:
    from collections.abc import Callable

ENODEV = 19
EIO = 5
ETIMEDOUT = 110


class SimulatorError(Exception):
    """The driver did something the real chip would not accept."""


class SimClock:
    """Virtual milliseconds: time moves only when someone sleeps or advances it."""

    def __init__(self, start_ms: int = 0) -> None:
        self.now_ms = start_ms

    def ticks_ms(self) -> int:
        return self.now_ms

    def sleep_ms(self, ms: float) -> None:
        self.now_ms += int(ms)

    def advance_ms(self, ms: float) -> None:
        self.now_ms += int(ms)


class I2cDevice:
    """Base of simulated devices: fault switches and the byte-level hooks."""

    def __init__(self, address: int) -> None:
        self.address = address
        self.absent = False
        self.stuck_byte = None  # type: int | None
        self._corrupt = []  # type: list[list[int]]  # [index, xor, remaining]
        self._ticks_ms = SimClock().ticks_ms  # replaced by the bus on attach

    def now(self) -> int:
        return self._ticks_ms()

    def corrupt_next(self, index: int, xor: int = 0x01, count: int = 1) -> None:
        """Flip ``xor`` bits in byte ``index`` of the next ``count`` reads."""
        self._corrupt.append([index, xor, count])

    def _deliver(self, data: bytes) -> bytes:
        if self.stuck_byte is not None:
            return bytes([self.stuck_byte] * len(data))
        if not self._corrupt:
            return data
        out = bytearray(data)
        for fault in self._corrupt:
            if fault[0] < len(out):
                out[fault[0]] ^= fault[1]
            fault[2] -= 1
        self._corrupt = [f for f in self._corrupt if f[2] > 0]
        return bytes(out)

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def read(self, count: int) -> bytes:
        raise NotImplementedError


class I2cBusSim:
    """A bus of simulated devices, seen through the ``machine.I2C`` methods."""

    def __init__(
        self,
        clock: "SimClock | None" = None,
        ticks_ms: "Callable[[], int] | None" = None,
        sleep_ms: "Callable[[int], None] | None" = None,
    ) -> None:
        if ticks_ms is None:
            if clock is None:
                clock = SimClock()
            ticks_ms = clock.ticks_ms
        self.clock = clock
        self.ticks_ms = ticks_ms
        self._sleep_ms = sleep_ms
        self.devices = {}  # type: dict[int, I2cDevice]
        self.transactions = 0
        self.hang_ms = 0  # > 0: every transaction blocks this long, then times out
        self._failures = {}  # type: dict[int, list[int]]  # address -> [count, errno]

    def attach(self, device: I2cDevice) -> I2cDevice:
        if device.address in self.devices:
            raise ValueError(f"address 0x{device.address:02X} already taken on this bus")
        device._ticks_ms = self.ticks_ms
        self.devices[device.address] = device
        return device

    def fail_next(self, address: int, count: int = 1, errno: int = EIO) -> None:
        """The next ``count`` transactions to ``address`` fail with ``OSError(errno)``."""
        self._failures[address] = [count, errno]

    def _device(self, addr: int) -> I2cDevice:
        self.transactions += 1
        if self.hang_ms:
            if self._sleep_ms is not None:
                self._sleep_ms(self.hang_ms)
            elif self.clock is not None:
                self.clock.sleep_ms(self.hang_ms)
            raise OSError(ETIMEDOUT)
        failure = self._failures.get(addr)
        if failure is not None:
            failure[0] -= 1
            if failure[0] <= 0:
                del self._failures[addr]
            raise OSError(failure[1])
        device = self.devices.get(addr)
        if device is None or device.absent:
            raise OSError(ENODEV)
        return device

    # --- machine.I2C ---------------------------------------------------------------

    def scan(self) -> "list[int]":
        return sorted(a for a, d in self.devices.items() if not d.absent)

    def writeto(self, addr: int, buf: bytes, stop: bool = True) -> int:
        self._device(addr).write(bytes(buf))
        return len(buf) + 1  # every byte acknowledged, address included

    def readfrom(self, addr: int, nbytes: int, stop: bool = True) -> bytes:
        device = self._device(addr)
        return device._deliver(device.read(nbytes))

    def writeto_mem(self, addr: int, memaddr: int, buf: bytes, addrsize: int = 8) -> None:
        self._device(addr).write(bytes([memaddr]) + bytes(buf))

    def readfrom_mem(self, addr: int, memaddr: int, nbytes: int, addrsize: int = 8) -> bytes:
        device = self._device(addr)
        device.write(bytes([memaddr]))
        return device._deliver(device.read(nbytes))


# --- BME280 -------------------------------------------------------------------------

# Datasheet worked example (BMP280 datasheet 3.12: same T/P words and formulas) plus the
# humidity words of a production BME280.
DATASHEET_CALIBRATION = {
    "T1": 27504,
    "T2": 26435,
    "T3": -1000,
    "P1": 36477,
    "P2": -10685,
    "P3": 3024,
    "P4": 2855,
    "P5": 140,
    "P6": -7,
    "P7": 15500,
    "P8": -14600,
    "P9": 6000,
    "H1": 75,
    "H2": 362,
    "H3": 0,
    "H4": 333,
    "H5": 0,
    "H6": 30,
}

_BME_WRITABLE = (0xE0, 0xF2, 0xF4, 0xF5)
_BME_START_UP_MS = 2


def _u16le(value: int) -> "list[int]":
    value &= 0xFFFF
    return [value & 0xFF, value >> 8]


def pack_calibration(words: "dict[str, int]") -> "tuple[bytes, bytes]":
    """NVM bytes (0x88..0xA1, 0xE1..0xE7) holding the given calibration words."""
    tp = []  # type: list[int]
    for name in ("T1", "T2", "T3", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9"):
        tp += _u16le(words[name])
    tp += [0, words["H1"] & 0xFF]  # 0xA0 reserved, 0xA1 dig_H1
    h4 = words["H4"] & 0xFFF
    h5 = words["H5"] & 0xFFF
    h = _u16le(words["H2"]) + [
        words["H3"] & 0xFF,
        h4 >> 4,
        ((h5 & 0x0F) << 4) | (h4 & 0x0F),
        h5 >> 4,
        words["H6"] & 0xFF,
    ]
    return bytes(tp), bytes(h)


def bme280_temperature(c: "dict[str, int]", adc_t: int) -> "tuple[float, int]":
    """Datasheet double-precision formula (appendix 8.1): (degC, t_fine)."""
    v1 = (adc_t / 16384.0 - c["T1"] / 1024.0) * c["T2"]
    d = adc_t / 131072.0 - c["T1"] / 8192.0
    v2 = d * d * c["T3"]
    return (v1 + v2) / 5120.0, int(v1 + v2)


def bme280_pressure(c: "dict[str, int]", adc_p: int, t_fine: int) -> float:
    """Datasheet double-precision formula (appendix 8.1): Pa."""
    v1 = t_fine / 2.0 - 64000.0
    v2 = v1 * v1 * c["P6"] / 32768.0
    v2 = v2 + v1 * c["P5"] * 2.0
    v2 = v2 / 4.0 + c["P4"] * 65536.0
    v1 = (c["P3"] * v1 * v1 / 524288.0 + c["P2"] * v1) / 524288.0
    v1 = (1.0 + v1 / 32768.0) * c["P1"]
    if v1 == 0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - v2 / 4096.0) * 6250.0 / v1
    v1 = c["P9"] * p * p / 2147483648.0
    v2 = p * c["P8"] / 32768.0
    return p + (v1 + v2 + c["P7"]) / 16.0


def bme280_humidity(c: "dict[str, int]", adc_h: int, t_fine: int) -> float:
    """Datasheet double-precision formula (appendix 8.1): %RH, clamped to 0..100."""
    h = t_fine - 76800.0
    h = (adc_h - (c["H4"] * 64.0 + c["H5"] / 16384.0 * h)) * (
        c["H2"] / 65536.0 * (1.0 + c["H6"] / 67108864.0 * h * (1.0 + c["H3"] / 67108864.0 * h))
    )
    h = h * (1.0 - c["H1"] * h / 524288.0)
    return 0.0 if h < 0 else 100.0 if h > 100 else h


def _search(f: "Callable[[int], float]", target: float, top: int, increasing: bool) -> int:
    """The raw value in 0..top whose output is nearest ``target`` (f monotonic)."""
    lo, hi = 0, top
    while lo < hi:  # smallest x with f(x) >= target (or <= when decreasing)
        mid = (lo + hi) // 2
        if (f(mid) >= target) if increasing else (f(mid) <= target):
            hi = mid
        else:
            lo = mid + 1
    if lo > 0 and abs(f(lo - 1) - target) < abs(f(lo) - target):
        return lo - 1
    return lo


class BME280Sim(I2cDevice):
    """A BME280 register file, forced mode, with chosen calibration and environment."""

    def __init__(
        self, address: int = 0x76, calibration: "dict[str, int] | None" = None, chip_id: int = 0x60
    ) -> None:
        super().__init__(address)
        self.calibration = dict(DATASHEET_CALIBRATION if calibration is None else calibration)
        self._chip_id = chip_id
        self.measurements = 0
        self._raw = None  # type: tuple[int, int, int] | None
        self.set_environment(20.0, 101325.0, 50.0)
        self._power_on()
        self._ready_at = None  # type: int | None

    def _power_on(self) -> None:
        self._regs = bytearray(256)
        self._regs[0xD0] = self._chip_id
        tp, h = pack_calibration(self.calibration)
        self._regs[0x88 : 0x88 + 26] = tp
        self._regs[0xE1 : 0xE1 + 7] = h
        self._regs[0xF7:0xFF] = bytes((0x80, 0, 0, 0x80, 0, 0, 0x80, 0))  # "skipped"
        self._pointer = 0
        self._hum_latched = 0
        self._measure_end = None  # type: int | None

    def peek(self, register: int) -> int:
        return self._regs[register]

    def set_environment(self, temperature: float, pressure: float, humidity: float) -> None:
        """Raw ADC values chosen so that the datasheet formulas give these readings."""
        c = self.calibration
        adc_t = _search(lambda x: bme280_temperature(c, x)[0], temperature, 0xFFFFF, True)
        t_fine = bme280_temperature(c, adc_t)[1]
        adc_p = _search(lambda x: bme280_pressure(c, x, t_fine), pressure, 0xFFFFF, False)
        adc_h = _search(lambda x: bme280_humidity(c, x, t_fine), humidity, 0xFFFF, True)
        self._raw = (adc_t, adc_p, adc_h)

    def set_raw(self, adc_t: int, adc_p: int, adc_h: int) -> None:
        self._raw = (adc_t, adc_p, adc_h)

    @property
    def raw(self) -> "tuple[int, int, int]":
        assert self._raw is not None
        return self._raw

    # --- time ----------------------------------------------------------------------

    def _update(self) -> None:
        if self._measure_end is not None and self.now() - self._measure_end >= 0:
            self._measure_end = None
            self._finish_measurement()

    def _check_started(self) -> None:
        if self._ready_at is not None:
            early = self._ready_at - self.now()
            if early > 0:
                raise SimulatorError(
                    f"BME280 accessed {early} ms too early: the start-up "
                    f"time after a soft reset is {_BME_START_UP_MS} ms"
                )
            self._ready_at = None

    # --- the wire ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._check_started()
        self._update()
        if not data:
            return
        # Writes are (register, value) pairs; a lone register byte sets the read pointer.
        self._pointer = data[0]
        if len(data) == 1:
            return
        if len(data) % 2:
            raise SimulatorError(
                f"BME280 write of {len(data)} bytes: writes are register/"
                f"value pairs, there is no auto-increment on write"
            )
        for i in range(0, len(data), 2):
            self._write_register(data[i], data[i + 1])

    def _write_register(self, register: int, value: int) -> None:
        if register not in _BME_WRITABLE:
            raise SimulatorError(f"BME280 register 0x{register:02X} is read-only")
        if register == 0xE0:
            if value == 0xB6:
                self._power_on()
                self._ready_at = self.now() + _BME_START_UP_MS
            return
        if register == 0xF4:
            self._write_ctrl_meas(value)
            return
        if self._measure_end is not None:
            raise SimulatorError(f"BME280 register 0x{register:02X} written during a measurement")
        self._regs[register] = value

    def _write_ctrl_meas(self, value: int) -> None:
        if self._measure_end is not None:
            raise SimulatorError("BME280 ctrl_meas written while a measurement is running")
        mode = value & 0x03
        if mode == 0x03:
            raise SimulatorError("BME280 normal mode is not modelled (forced mode only)")
        self._hum_latched = self._regs[0xF2] & 0x07  # ctrl_hum applies from this write
        self._regs[0xF4] = value
        if mode:
            osrs_t, osrs_p = value >> 5, (value >> 2) & 0x07
            factors = (0, 1, 2, 4, 8, 16, 16, 16)
            t, p, h = factors[osrs_t], factors[osrs_p], factors[self._hum_latched]
            # Typical measurement time (datasheet 9.1): 1 + 2T + (2P + 0.5) + (2H + 0.5) ms
            typ_us = 1000 + 2000 * t + (2000 * p + 500 if p else 0) + (2000 * h + 500 if h else 0)
            self._measure_end = self.now() + (typ_us + 999) // 1000

    def _finish_measurement(self) -> None:
        ctrl = self._regs[0xF4]
        adc_t, adc_p, adc_h = self.raw
        if not ctrl >> 5:
            adc_t = 0x80000
        if not (ctrl >> 2) & 0x07:
            adc_p = 0x80000
        if not self._hum_latched:
            adc_h = 0x8000
        r = self._regs
        r[0xF7], r[0xF8], r[0xF9] = adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4
        r[0xFA], r[0xFB], r[0xFC] = adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4
        r[0xFD], r[0xFE] = adc_h >> 8, adc_h & 0xFF
        r[0xF4] = ctrl & 0xFC  # forced mode ends in sleep
        self.measurements += 1

    def read(self, count: int) -> bytes:
        self._check_started()
        self._update()
        out = bytearray(count)
        for i in range(count):
            register = (self._pointer + i) & 0xFF
            if 0xF7 <= register <= 0xFE and self._measure_end is not None:
                raise SimulatorError(
                    "BME280 data read while measuring (status.measuring = 1): "
                    "wait for the conversion to end"
                )
            if register == 0xF3:
                out[i] = 0x08 if self._measure_end is not None else 0x00
            else:
                out[i] = self._regs[register]
        self._pointer = (self._pointer + count) & 0xFF
        return bytes(out)


# --- SHT3x --------------------------------------------------------------------------


def sht3x_crc(data: bytes) -> int:
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


# single shot, no clock stretching: command -> typical duration (datasheet table 4), ms
_SHT_SINGLE_SHOT = {0x2400: 13, 0x240B: 5, 0x2416: 3}
_SHT_STRETCHING = (0x2C06, 0x2C0D, 0x2C10)
_SHT_RESET_MS = 2  # 1.5 ms soft reset time, rounded up


class SHT3xSim(I2cDevice):
    """An SHT3x answering single-shot commands, with CRC on every word."""

    def __init__(self, address: int = 0x44) -> None:
        super().__init__(address)
        self.temperature = 20.0
        self.humidity = 50.0
        self._raw = None  # type: tuple[int, int] | None
        self.status_word = 0x8010  # alert pending, reset detected (power-up)
        self.bad_crc_next = 0
        self.measurements = 0
        self._pending = None  # type: bytes | None
        self._ready_at = 0
        self._busy_until = None  # type: int | None

    def set_raw(self, raw_t: int, raw_rh: int) -> None:
        self._raw = (raw_t, raw_rh)

    def raw(self) -> "tuple[int, int]":
        if self._raw is not None:
            return self._raw

        def clamp(x: float) -> int:
            return 0 if x < 0 else 65535 if x > 65535 else int(x + 0.5)

        return (clamp((self.temperature + 45) * 65535 / 175), clamp(self.humidity * 65535 / 100))

    def _words(self, words: "list[int]") -> bytes:
        out = bytearray()
        for w in words:
            pair = bytes((w >> 8, w & 0xFF))
            out += pair + bytes((sht3x_crc(pair),))
        return bytes(out)

    def _nack_if_busy(self) -> None:
        if self._busy_until is not None and self._busy_until - self.now() > 0:
            raise OSError(ENODEV)  # resetting: the chip does not acknowledge
        self._busy_until = None

    def write(self, data: bytes) -> None:
        self._nack_if_busy()
        if len(data) != 2:
            raise SimulatorError(
                f"SHT3x write of {len(data)} bytes: commands are 16-bit (MSB, LSB)"
            )
        cmd = (data[0] << 8) | data[1]
        self._pending = None
        if cmd in _SHT_SINGLE_SHOT:
            raw_t, raw_rh = self.raw()
            answer = bytearray(self._words([raw_t, raw_rh]))
            if self.bad_crc_next > 0:
                self.bad_crc_next -= 1
                answer[2] ^= 0xFF
            self._pending = bytes(answer)
            self._ready_at = self.now() + _SHT_SINGLE_SHOT[cmd]
            self.measurements += 1
        elif cmd in _SHT_STRETCHING:
            raise SimulatorError(
                f"SHT3x command 0x{cmd:04X} uses clock stretching, which "
                f"the Pi's I2C controller mishandles: use 0x24xx commands"
            )
        elif cmd == 0xF32D:
            self._pending = self._words([self.status_word])
            self._ready_at = self.now()
        elif cmd == 0x3041:
            self.status_word &= ~0x8013 & 0xFFFF
        elif cmd == 0x30A2:
            self.status_word = 0x8010
            self._busy_until = self.now() + _SHT_RESET_MS
        else:
            self.status_word |= 0x0002  # command not processed
            raise SimulatorError(
                f"SHT3x command 0x{cmd:04X} is not modelled (periodic mode, heater, ART...)"
            )

    def read(self, count: int) -> bytes:
        self._nack_if_busy()
        if self._pending is None or self._ready_at - self.now() > 0:
            # No data, or the measurement still running: the sensor NACKs the read header.
            raise OSError(ENODEV)
        data = self._pending
        self._pending = None
        if count <= len(data):
            return data[:count]
        return data + bytes([0xFF] * (count - len(data)))


# --- VEML7700 -----------------------------------------------------------------------

_VEML_IT = {0b1100: 25, 0b1000: 50, 0b0000: 100, 0b0001: 200, 0b0010: 400, 0b0011: 800}
_VEML_GAIN_DIVISOR = {0b01: 1, 0b00: 2, 0b11: 8, 0b10: 16}  # relative to gain 2


def _veml_polynomial(x: float) -> float:
    return (((6.0135e-13 * x - 9.3924e-9) * x + 8.1488e-5) * x + 1.0023) * x


class VEML7700Sim(I2cDevice):
    """A VEML7700: 16-bit registers, counts from the set illuminance and the range.

    With ``nonlinear`` the counts follow the application note's high-lux response (the
    inverse of its correction polynomial above 1000 lx), so a correcting driver reads
    the true ``lux`` back.
    """

    def __init__(self, address: int = 0x10) -> None:
        super().__init__(address)
        self.lux = 100.0
        self.nonlinear = True
        self._conf = 0x0001  # power-on: shut down
        self._valid_at = None  # type: int | None
        self._command = 0
        self.configurations = 0

    @property
    def conf(self) -> int:
        return self._conf

    def resolution_e4(self) -> int:
        it = _VEML_IT[(self._conf >> 6) & 0x0F]
        return 42 * (800 // it) * _VEML_GAIN_DIVISOR[(self._conf >> 11) & 0x03]

    def counts(self) -> int:
        x = self.lux
        if self.nonlinear and x > _veml_polynomial(1000.0):
            lo, hi = 1000.0, 1000000.0
            for _ in range(100):  # bisection: the polynomial is increasing there
                mid = (lo + hi) / 2
                if _veml_polynomial(mid) < x:
                    lo = mid
                else:
                    hi = mid
            x = (lo + hi) / 2
        elif self.nonlinear and x > 1000.0:
            x = 1000.0  # the published correction has no preimage between 1000 and 1075
        raw = int(x * 10000 / self.resolution_e4() + 0.5)
        return 65535 if raw > 65535 else raw

    def write(self, data: bytes) -> None:
        self._command = data[0]
        if len(data) == 1:
            return
        if len(data) != 3:
            raise SimulatorError(
                f"VEML7700 write of {len(data)} bytes: command code then one 16-bit word (LSB, MSB)"
            )
        value = data[1] | (data[2] << 8)
        if self._command == 0x00:
            if value & 0xE40C:
                raise SimulatorError(f"VEML7700 ALS_CONF 0x{value:04X} sets reserved bits")
            if ((value >> 6) & 0x0F) not in _VEML_IT:
                raise SimulatorError(
                    f"VEML7700 ALS_IT code {(value >> 6) & 0x0F:04b} is "
                    f"not a valid integration time"
                )
            was_on = not self._conf & 0x01
            self._conf = value
            self.configurations += 1
            if value & 0x01:
                self._valid_at = None
            elif not was_on or self._valid_at is None:
                it = _VEML_IT[(value >> 6) & 0x0F]
                self._valid_at = self.now() + 3 + it  # 2.5 ms wake-up + one integration
            else:
                # A change while running restarts the integration.
                self._valid_at = self.now() + _VEML_IT[(value >> 6) & 0x0F]
        elif self._command in (0x01, 0x02, 0x03):
            pass  # thresholds, power saving: stored by the chip, not modelled
        else:
            raise SimulatorError(
                f"VEML7700 command code 0x{self._command:02X} is read-only or reserved"
            )

    def read(self, count: int) -> bytes:
        if count != 2:
            raise SimulatorError(f"VEML7700 read of {count} bytes: registers are 16-bit")
        cmd = self._command
        if cmd == 0x00:
            value = self._conf
        elif cmd in (0x04, 0x05):
            if self._conf & 0x01:
                value = 0  # shut down: nothing integrated
            else:
                early = 0 if self._valid_at is None else self._valid_at - self.now()
                if early > 0:
                    raise SimulatorError(
                        f"VEML7700 ALS read {early} ms before the first integration after a "
                        f"configuration ends: the value would be stale"
                    )
                value = self.counts()
        elif cmd == 0x06:
            value = 0
        else:
            value = 0
        return bytes((value & 0xFF, value >> 8))
