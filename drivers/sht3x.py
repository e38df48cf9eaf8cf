"""Sensirion SHT30/31/35 humidity and temperature sensor on I2C, portable.

The SHT3x has no registers: the host writes 16-bit commands (MSB first) with
``writeto(addr, buf)`` and reads answers with ``readfrom(addr, n)`` — the
``machine.I2C`` subset, so a MicroPython ``machine.I2C`` works as is; on a Pi
``drivers/i2c_pi.py`` gives the same over smbus2. A device that does not acknowledge
raises ``OSError``; the driver turns it into :class:`SensorError`.

Facts from the SHT3x-DIS datasheet (Sensirion, version 7):

* addresses 0x44 (ADDR low) and 0x45 (ADDR high);
* single shot, clock stretching disabled: 0x2400 high, 0x240B medium, 0x2416 low
  repeatability; maximum durations 15.5, 6.5 and 4.5 ms (table 4). Until the
  measurement is done the sensor NACKs the read header, so the driver waits first;
* answer: T msb, T lsb, CRC, RH msb, RH lsb, CRC; every 16-bit word is followed by a
  CRC-8 (polynomial 0x31, init 0xFF, no reflection, no final XOR; CRC(0xBEEF) = 0x92);
* T = -45 + 175 * S_T / 65535 degC and RH = 100 * S_RH / 65535 %RH;
* status 0xF32D (word + CRC), clear status 0x3041, soft reset 0x30A2 (1.5 ms).
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
    from typing import Any, Protocol

    class I2c(Protocol):
        """The part of MicroPython's ``machine.I2C`` the driver uses."""

        def writeto(self, addr: int, buf: bytes) -> Any: ...

        def readfrom(self, addr: int, nbytes: int) -> bytes: ...


ADDRESSES = (0x44, 0x45)
CMD_STATUS = const(0xF32D)
CMD_CLEAR_STATUS = const(0x3041)
CMD_SOFT_RESET = const(0x30A2)
# repeatability -> (single-shot command without clock stretching, max duration ms rounded up)
REPEATABILITY = {"high": (0x2400, 16), "medium": (0x240B, 7), "low": (0x2416, 5)}
STATUS_RESET_DETECTED = const(0x0010)
STATUS_COMMAND_FAILED = const(0x0002)
STATUS_WRITE_CRC_FAILED = const(0x0001)


class SensorError(Exception):
    """A sensor did not give a valid reading; ``kind`` says why, for counting.

    Kinds: ``absent`` (no ACK), ``crc`` (a word failed its CRC), ``bus`` (other errors).
    """

    def __init__(self, sensor: str, address: int, kind: str, reason: str) -> None:
        super().__init__(f"{sensor} at 0x{address:02X}: {reason}")
        self.sensor = sensor
        self.address = address
        self.kind = kind


class CrcError(SensorError):
    """A word arrived with a CRC that does not match: a bus glitch, not a reading."""


def crc8(data: bytes) -> int:
    """Sensirion CRC-8: polynomial x^8 + x^5 + x^4 + 1 (0x31), init 0xFF."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def temperature_from_raw(raw: int) -> float:
    return -45 + 175 * raw / 65535


def humidity_from_raw(raw: int) -> float:
    return 100 * raw / 65535


def _default_sleep_ms() -> "Callable[[int], None]":
    import time

    if hasattr(time, "sleep_ms"):
        return time.sleep_ms
    return lambda ms: time.sleep(ms / 1000)


class SHT3x:
    """One SHT3x measured in single-shot mode, clock stretching off."""

    name = "sht3x"

    def __init__(
        self,
        i2c: "I2c",
        address: int = 0x44,
        repeatability: str = "high",
        sleep_ms: "Callable[[int], None] | None" = None,
    ) -> None:
        if address not in ADDRESSES:
            raise ValueError(f"SHT3x address 0x{address:02X}: the chip answers at 0x44 or 0x45")
        if repeatability not in REPEATABILITY:
            raise ValueError(f"repeatability {repeatability!r}: use high, medium or low")
        self._i2c = i2c
        self.address = address
        self.repeatability = repeatability
        self._sleep_ms = sleep_ms or _default_sleep_ms()

    def _error(self, kind: str, reason: str) -> SensorError:
        return SensorError("SHT3x", self.address, kind, reason)

    def _bus_error(self, e: OSError, doing: str) -> SensorError:
        code = e.args[0] if e.args else None
        if code in (19, 6, 121):  # ENODEV, ENXIO, EREMOTEIO: no acknowledge
            return self._error("absent", f"no answer {doing} (wiring, address, power?)")
        # str(OSError) differs between CPython and MicroPython: spell it out the same way.
        detail = f"errno {code}" + (f" ({e.args[1]})" if len(e.args) > 1 else "")
        return self._error("bus", f"I2C error {doing}: {detail}")

    def command(self, cmd: int) -> None:
        try:
            self._i2c.writeto(self.address, bytes((cmd >> 8, cmd & 0xFF)))
        except OSError as e:
            raise self._bus_error(e, f"sending command 0x{cmd:04X}") from e

    def _read_words(self, count: int, what: str) -> "list[int]":
        """``count`` CRC-checked 16-bit words."""
        try:
            data = self._i2c.readfrom(self.address, 3 * count)
        except OSError as e:
            raise self._bus_error(e, f"reading {what}") from e
        if data is None or len(data) != 3 * count:
            got = "no" if data is None else len(data)
            raise self._error("bus", f"read {got} bytes of {what}, wanted {3 * count}")
        words = []
        for i in range(count):
            chunk = data[3 * i : 3 * i + 3]
            expected = crc8(chunk[:2])
            if chunk[2] != expected:
                raise CrcError(
                    "SHT3x",
                    self.address,
                    "crc",
                    f"CRC error in {what} word {i}: got 0x{chunk[2]:02X}, "
                    f"computed 0x{expected:02X} over 0x{chunk[0]:02X}{chunk[1]:02X}",
                )
            words.append((chunk[0] << 8) | chunk[1])
        return words

    def soft_reset(self) -> None:
        self.command(CMD_SOFT_RESET)
        self._sleep_ms(2)  # 1.5 ms max before the next command

    def status(self) -> int:
        self.command(CMD_STATUS)
        return self._read_words(1, "status")[0]

    def clear_status(self) -> None:
        self.command(CMD_CLEAR_STATUS)

    def init(self) -> None:
        """Reset the sensor and check that it answers with a valid status word."""
        self.soft_reset()
        self.status()
        self.clear_status()

    def read_raw(self) -> "tuple[int, int]":
        """One single-shot measurement: (S_T, S_RH), both CRC-checked."""
        cmd, wait_ms = REPEATABILITY[self.repeatability]
        self.command(cmd)
        self._sleep_ms(wait_ms)
        words = self._read_words(2, "measurement")
        return words[0], words[1]

    def read(self) -> "tuple[float, float]":
        """(temperature degC, relative humidity %RH)."""
        raw_t, raw_rh = self.read_raw()
        return temperature_from_raw(raw_t), humidity_from_raw(raw_rh)
