"""CPython adapters for the portable SX127x driver on a Raspberry Pi (or any Linux SBC).

``SpidevBus`` gives the driver its ``transfer()`` over spidev's ``xfer2`` (chip select
held for the whole list, full duplex); ``GpiodPin`` gives it ``value()`` pins over
libgpiod v2 (``gpiod`` >= 2.1, the ``[pi]`` extra). Both libraries are imported only
when an adapter is built, so this module (and its callers) import on machines without
them.
"""

from __future__ import annotations

from typing import Any

from .sx127x import SX127x

# The SX127x SPI port runs up to 10 MHz; stay below with margin for long ribbon cables.
DEFAULT_SPI_HZ = 8_000_000


class HardwareLibraryMissing(ImportError):
    """A Pi hardware library (spidev, gpiod) is not installed."""


def _import(name: str) -> Any:
    try:
        return __import__(name)
    except ImportError as e:
        raise HardwareLibraryMissing(
            f"the {name!r} package is needed to drive an SX127x on this machine: "
            f"install the [pi] extra (pip install 'passerelle[pi]')"
        ) from e


class SpidevBus:
    """``/dev/spidev<bus>.<device>`` as the driver's bus (SPI mode 0, MSB first)."""

    def __init__(self, bus: int = 0, device: int = 0, max_speed_hz: int = DEFAULT_SPI_HZ):
        spidev = _import("spidev")
        self._spi = spidev.SpiDev()
        try:
            self._spi.open(bus, device)
        except OSError as e:
            raise OSError(
                e.errno, f"cannot open /dev/spidev{bus}.{device} (SPI enabled? permissions?)"
            ) from e
        self._spi.max_speed_hz = max_speed_hz
        self._spi.mode = 0
        self.path = f"/dev/spidev{bus}.{device}"

    def transfer(self, data: bytes) -> bytes:
        return bytes(self._spi.xfer2(list(data)))

    def close(self) -> None:
        self._spi.close()


class GpiodPin:
    """One GPIO line through libgpiod v2: an output (NRESET) or an input (DIO0)."""

    def __init__(
        self,
        line: int,
        *,
        chip: str = "/dev/gpiochip0",
        output: bool = True,
        initial: int = 1,
        consumer: str = "passerelle-sx127x",
    ) -> None:
        gpiod = _import("gpiod")
        from gpiod.line import Direction, Value

        self._value_type = Value
        settings = (
            gpiod.LineSettings(
                direction=Direction.OUTPUT,
                output_value=Value.ACTIVE if initial else Value.INACTIVE,
            )
            if output
            else gpiod.LineSettings(direction=Direction.INPUT)
        )
        self._line = line
        self._request = gpiod.request_lines(chip, consumer=consumer, config={line: settings})
        self.name = f"{chip} line {line}"

    def value(self, v: int | None = None) -> int | None:
        if v is None:
            return 1 if self._request.get_value(self._line) == self._value_type.ACTIVE else 0
        self._request.set_value(
            self._line, self._value_type.ACTIVE if v else self._value_type.INACTIVE
        )
        return None

    def close(self) -> None:
        self._request.release()


def open_sx127x(
    *,
    spi_bus: int = 0,
    spi_device: int = 0,
    reset_line: int | None = None,
    gpio_chip: str = "/dev/gpiochip0",
    max_speed_hz: int = DEFAULT_SPI_HZ,
) -> SX127x:
    """An SX127x driver on spidev + libgpiod (not initialised: call ``init()``)."""
    bus = SpidevBus(spi_bus, spi_device, max_speed_hz)
    reset = None if reset_line is None else GpiodPin(reset_line, chip=gpio_chip)
    return SX127x(bus, reset=reset)
