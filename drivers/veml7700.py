"""Vishay VEML7700 ambient light sensor on I2C, portable.

16-bit little-endian registers at fixed address 0x10, reached with the ``machine.I2C``
subset ``readfrom_mem``/``writeto_mem`` (a MicroPython ``machine.I2C`` as is; smbus2
through ``drivers/i2c_pi.py`` on a Pi). Facts from the VEML7700 datasheet (rev 1.7,
Nov 2023) and Vishay's application note 84323 "Designing the VEML7700 into an
application":

=====  =====================================================================
0x00   ALS_CONF: ALS_GAIN[12:11] (00 x1, 01 x2, 10 x1/8, 11 x1/4),
       ALS_IT[9:6] (1100 25, 1000 50, 0000 100, 0001 200, 0010 400, 0011 800 ms),
       ALS_PERS[5:4], ALS_INT_EN[1], ALS_SD[0] (1 = shut down, the power-on state)
0x04   ALS: 16-bit count of the last completed integration
0x05   WHITE channel
=====  =====================================================================

Resolution is 0.0042 lx/count at gain 2 and 800 ms, doubling with each halving of gain
or integration time (2.1504 lx/count at gain 1/8, 25 ms). Rev 1.7 of the datasheet
corrected the earlier 0.0036 lx/count, which Vishay's change notice calls wrongly
stated; libraries still using 0.0036 read about 14 % low.

Above 1000 lx the response is not linear; the application note's correction
``lux' = 6.0135e-13 x^4 - 9.3924e-9 x^3 + 8.1488e-5 x^2 + 1.0023 x`` is applied there
(``correct_high_lux``). As published it is not continuous at 1000 lx (it maps 1000 to
1075): between about 1000 and 1075 lx readings step by up to 7.5 %.

Auto-range follows the application note's advice: counts between 100 and 10,000 are
best; gains 1/8 and 1/4 first, gains 1 and 2 only in low light, longer integration only
once the gain is at its highest. Each change costs one integration time before the
next reading is valid.
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


ADDRESS = const(0x10)
ADDRESSES = (0x10,)
REG_CONF = const(0x00)
REG_ALS = const(0x04)
REG_WHITE = const(0x05)
CONF_SHUTDOWN = const(0x0001)

# gain -> (ALS_GAIN code, resolution divisor relative to gain 2)
GAINS = ((2, 0b01, 1), (1, 0b00, 2), (0.25, 0b11, 8), (0.125, 0b10, 16))
# integration time ms -> ALS_IT code
INTEGRATION_TIMES = (
    (25, 0b1100),
    (50, 0b1000),
    (100, 0b0000),
    (200, 0b0001),
    (400, 0b0010),
    (800, 0b0011),
)
RESOLUTION_MAX_E4 = const(42)  # 0.0042 lx/count at gain 2, 800 ms, in 1e-4 lx

# Auto-range ladder, least to most sensitive (application note's order of changes).
LADDER = (
    (0.125, 25),
    (0.125, 50),
    (0.125, 100),
    (0.25, 100),
    (1, 100),
    (2, 100),
    (2, 200),
    (2, 400),
    (2, 800),
)
COUNTS_LOW = const(100)
COUNTS_HIGH = const(10000)
SATURATED = const(65535)


class SensorError(Exception):
    """A sensor did not give a valid reading; ``kind`` says why, for counting.

    Kinds: ``absent`` (no ACK), ``chip`` (configuration did not read back),
    ``data`` (saturated at the least sensitive range), ``bus`` (other errors).
    """

    def __init__(self, sensor: str, address: int, kind: str, reason: str) -> None:
        super().__init__(f"{sensor} at 0x{address:02X}: {reason}")
        self.sensor = sensor
        self.address = address
        self.kind = kind


def _gain_entry(gain: float) -> "tuple[float, int, int]":
    for entry in GAINS:
        if entry[0] == gain:
            return entry
    raise ValueError(f"VEML7700 gain {gain!r}: use 2, 1, 0.25 or 0.125")


def _it_code(integration_ms: int) -> int:
    for ms, code in INTEGRATION_TIMES:
        if ms == integration_ms:
            return code
    raise ValueError(
        f"VEML7700 integration time {integration_ms!r} ms: use 25, 50, 100, 200, 400 or 800"
    )


def resolution_e4(gain: float, integration_ms: int) -> int:
    """lx per count, in units of 1e-4 lx (exact integers: 42 ... 21504)."""
    _it_code(integration_ms)
    return RESOLUTION_MAX_E4 * (800 // integration_ms) * _gain_entry(gain)[2]


def correct_high_lux(lux: float) -> float:
    """Application note 84323 polynomial for the non-linearity above 1000 lx."""
    if lux <= 1000:
        return lux
    return (((6.0135e-13 * lux - 9.3924e-9) * lux + 8.1488e-5) * lux + 1.0023) * lux


def lux_from_raw(raw: int, gain: float, integration_ms: int, correct: bool = True) -> float:
    lux = raw * resolution_e4(gain, integration_ms) / 10000
    return correct_high_lux(lux) if correct else lux


def conf_word(gain: float, integration_ms: int, shutdown: bool = False) -> int:
    """ALS_CONF for a gain and integration time (persistence 1, interrupt off)."""
    return (
        (_gain_entry(gain)[1] << 11)
        | (_it_code(integration_ms) << 6)
        | (CONF_SHUTDOWN if shutdown else 0)
    )


def _default_sleep_ms() -> "Callable[[int], None]":
    import time

    if hasattr(time, "sleep_ms"):
        return time.sleep_ms
    return lambda ms: time.sleep(ms / 1000)


class VEML7700:
    """One VEML7700, continuously integrating once powered on.

    ``gain`` (2, 1, 0.25, 0.125) and ``integration_ms`` (25..800) are the starting
    range; with ``auto_range`` :meth:`read_lux` moves along :data:`LADDER` until the
    count is between 100 and 10,000 (or at the end of the ladder).
    """

    name = "veml7700"

    def __init__(
        self,
        i2c: "I2c",
        address: int = ADDRESS,
        gain: float = 0.125,
        integration_ms: int = 100,
        auto_range: bool = True,
        correct: bool = True,
        sleep_ms: "Callable[[int], None] | None" = None,
    ) -> None:
        if address not in ADDRESSES:
            raise ValueError(f"VEML7700 address 0x{address:02X}: the chip answers at 0x10 only")
        resolution_e4(gain, integration_ms)  # validates both
        self._i2c = i2c
        self.address = address
        self.gain = gain
        self.integration_ms = integration_ms
        self.auto_range = auto_range
        self.correct = correct
        self._sleep_ms = sleep_ms or _default_sleep_ms()
        self.range_changes = 0
        self._ready = False

    def _error(self, kind: str, reason: str) -> SensorError:
        return SensorError("VEML7700", self.address, kind, reason)

    def _bus_error(self, e: OSError, doing: str) -> SensorError:
        code = e.args[0] if e.args else None
        if code in (19, 6, 121):  # ENODEV, ENXIO, EREMOTEIO: no acknowledge
            return self._error("absent", f"no answer {doing} (wiring, power?)")
        # str(OSError) differs between CPython and MicroPython: spell it out the same way.
        detail = f"errno {code}" + (f" ({e.args[1]})" if len(e.args) > 1 else "")
        return self._error("bus", f"I2C error {doing}: {detail}")

    def read_register(self, register: int) -> int:
        try:
            data = self._i2c.readfrom_mem(self.address, register, 2)
        except OSError as e:
            raise self._bus_error(e, f"reading 0x{register:02X}") from e
        if data is None or len(data) != 2:
            got = "no" if data is None else len(data)
            raise self._error("bus", f"read {got} bytes from 0x{register:02X}, wanted 2")
        return data[0] | (data[1] << 8)

    def write_register(self, register: int, value: int) -> None:
        try:
            self._i2c.writeto_mem(self.address, register, bytes((value & 0xFF, value >> 8)))
        except OSError as e:
            raise self._bus_error(e, f"writing 0x{register:02X}") from e

    def configure(self, gain: float, integration_ms: int) -> None:
        """Set the range (chip powered on) and wait until a full integration is done."""
        word = conf_word(gain, integration_ms)
        # The datasheet asks for shutdown while changing the settings.
        self.write_register(REG_CONF, word | CONF_SHUTDOWN)
        self.write_register(REG_CONF, word)
        back = self.read_register(REG_CONF)
        if back != word:
            raise self._error(
                "chip",
                f"ALS_CONF reads back 0x{back:04X} after writing 0x{word:04X}: not a VEML7700?",
            )
        self.gain = gain
        self.integration_ms = integration_ms
        # 2.5 ms wake-up plus one integration, with 10 % for the internal oscillator.
        self._sleep_ms(3 + integration_ms + integration_ms // 10)
        self._ready = True

    def init(self) -> None:
        self.configure(self.gain, self.integration_ms)

    def shutdown(self) -> None:
        self.write_register(REG_CONF, conf_word(self.gain, self.integration_ms, True))
        self._ready = False

    def read_raw(self) -> int:
        if not self._ready:
            raise self._error("bus", "not configured: call init() first")
        return self.read_register(REG_ALS)

    def _rung(self) -> int:
        key = (self.gain, self.integration_ms)
        for i, rung in enumerate(LADDER):
            if rung == key:
                return i
        return -1

    def _target_rung(self, raw: int, rung: int) -> int:
        """The most sensitive rung whose predicted count stays under COUNTS_HIGH."""
        if raw >= SATURATED:
            return 0  # the light level is unknown: start from the least sensitive range
        here = resolution_e4(self.gain, self.integration_ms)
        counts_x_res = raw * here  # illuminance in 1e-4 lx, range independent
        best = 0
        for i, (gain, ms) in enumerate(LADDER):
            if counts_x_res // resolution_e4(gain, ms) <= COUNTS_HIGH:
                best = i
        return best

    def read_lux(self) -> float:
        """Illuminance in lx (auto-ranged when enabled)."""
        raw = self.read_raw()
        if self.auto_range:
            for _ in range(len(LADDER)):
                rung = self._rung()
                if COUNTS_LOW <= raw <= COUNTS_HIGH and rung >= 0:
                    break
                target = self._target_rung(raw, rung)
                if target == rung:
                    break  # at the end of the ladder: take what this range gives
                gain, ms = LADDER[target]
                self.configure(gain, ms)
                self.range_changes += 1
                raw = self.read_raw()
        if raw >= SATURATED:
            raise self._error(
                "data", f"saturated (65535 counts) at gain {self.gain}, {self.integration_ms} ms"
            )
        return lux_from_raw(raw, self.gain, self.integration_ms, self.correct)

    def read(self) -> "tuple[float]":
        return (self.read_lux(),)
