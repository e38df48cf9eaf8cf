"""The Pi's I2C controller (``/dev/i2c-N``, smbus2) as the drivers' ``machine.I2C`` bus.

The portable sensor drivers speak MicroPython's ``machine.I2C`` subset; :class:`I2cDevBus`
gives them the same four calls over Linux's I2C_RDWR ioctl (smbus2 ``i2c_rdwr``), so a
register read is one combined transaction (write pointer, repeated start, read), as the
chips expect. smbus2 (the ``[pi]`` extra) is imported only when a bus is opened.

A device that does not acknowledge makes Linux return EREMOTEIO (ENXIO with some
controllers); it is raised as ``OSError(ENODEV)``, what MicroPython raises, so drivers
see one error for "absent" on both.
"""

from __future__ import annotations

import errno
import threading
from typing import Any

from .sx127x_pi import HardwareLibraryMissing

__all__ = ["HardwareLibraryMissing", "I2cDevBus"]

_NO_ACK = (errno.EREMOTEIO, errno.ENXIO, errno.ENODEV)


def _smbus2() -> Any:
    try:
        import smbus2
    except ImportError as e:
        raise HardwareLibraryMissing(
            "the 'smbus2' package is needed to use an I2C bus on this machine: "
            "install the [pi] extra (pip install 'passerelle[pi]')"
        ) from e
    return smbus2


class I2cDevBus:
    """``/dev/i2c-<bus>`` with the ``machine.I2C`` methods the drivers call."""

    def __init__(self, bus: int = 1) -> None:
        smbus2 = _smbus2()
        self.path = f"/dev/i2c-{bus}"
        try:
            self._smbus = smbus2.SMBus(bus)
        except FileNotFoundError as e:
            raise OSError(
                errno.ENOENT,
                f"no {self.path}: I2C not enabled (dtparam=i2c_arm=on) or wrong bus number",
            ) from e
        except PermissionError as e:
            raise OSError(errno.EACCES, f"cannot open {self.path}: not in the 'i2c' group?") from e
        self._msg = smbus2.i2c_msg
        # One transaction at a time: smbus2 objects are not meant to be shared by threads.
        self._lock = threading.Lock()

    def _rdwr(self, addr: int, *msgs: Any) -> None:
        with self._lock:
            try:
                self._smbus.i2c_rdwr(*msgs)
            except OSError as e:
                if e.errno in _NO_ACK:
                    raise OSError(
                        errno.ENODEV, f"no acknowledge from 0x{addr:02X} on {self.path}"
                    ) from e
                raise OSError(e.errno, f"{self.path} at 0x{addr:02X}: {e.strerror}") from e

    def readfrom_mem(self, addr: int, memaddr: int, nbytes: int) -> bytes:
        pointer = self._msg.write(addr, [memaddr])
        data = self._msg.read(addr, nbytes)
        self._rdwr(addr, pointer, data)
        return bytes(list(data))

    def writeto_mem(self, addr: int, memaddr: int, buf: bytes) -> None:
        self._rdwr(addr, self._msg.write(addr, [memaddr, *buf]))

    def writeto(self, addr: int, buf: bytes) -> int:
        self._rdwr(addr, self._msg.write(addr, list(buf)))
        return len(buf) + 1

    def readfrom(self, addr: int, nbytes: int) -> bytes:
        data = self._msg.read(addr, nbytes)
        self._rdwr(addr, data)
        return bytes(list(data))

    def scan(self) -> list[int]:
        """Addresses that acknowledge a one-byte read (0x08..0x77)."""
        found = []
        for addr in range(0x08, 0x78):
            try:
                self.readfrom(addr, 1)
            except OSError:
                continue
            found.append(addr)
        return found

    def close(self) -> None:
        self._smbus.close()
