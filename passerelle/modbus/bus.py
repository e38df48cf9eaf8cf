"""One owner per physical bus: :class:`ModbusBus` serialises every request on a serial line
(RTU over RS-485) or a TCP connection, and says plainly what went wrong.

RS-485 is half duplex with one master: a second request sent before the first is answered
collides on the wire. So every read of every device on a line goes through one asyncio lock,
and the lock is held for the request *and its retries*. Timeouts are short and configurable:
a dead unit costs ``(retries + 1) * timeout`` of bus time per read, and the poller
(:mod:`.source`) backs off from it so the healthy units keep their rate.

Framing, CRC and MBAP are pymodbus' (3.x, asyncio). What it does not report, this module
observes through pymodbus' packet trace hook:

* **A bad CRC.** pymodbus' RTU framer drops a frame whose CRC fails without telling anyone
  and waits for a good one, so the request ends in a timeout. The trace hook sees the bytes
  that arrived: when they start with our unit id and function code and are long enough to
  hold the reply but fail the CRC, the attempt is counted and raised as :class:`CrcError`.
  A CRC error therefore still costs a full timeout (pymodbus 3.16 behaviour).
* **Garbage.** Bytes arrived but no valid frame for us could be found in them:
  :class:`GarbledReply`. Typical of a baud or parity mismatch, or of noise.
* **Silence.** Nothing arrived: :class:`Timeout` (wiring, A/B swapped, baud, unit id, or a
  device that is off).

After a failed attempt on a serial line the bus waits ``settle`` seconds before the next
request: a slow device may still answer the old request, and RTU has no transaction id to
tell that late answer from the reply to the next request. pymodbus discards bytes that arrive
before a new request is sent, so the quiet time keeps a late reply from being taken for the
next one (it cannot rule it out for a device slower than ``timeout + settle``).

pymodbus logs every timeout at ERROR level; the bus reports them itself (counters, and the
poller's rate-limited log lines), so pymodbus' logger is quietened unless someone set its level.
"""

from __future__ import annotations

import asyncio
import logging
import termios
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU

from .registers import FUNCTION_CODES, is_bit_function

_pymodbus_log = logging.getLogger("pymodbus")
if _pymodbus_log.level == logging.NOTSET:
    _pymodbus_log.setLevel(logging.CRITICAL)

EXCEPTION_MEANINGS: dict[int, str] = {
    0x01: "illegal function",
    0x02: "illegal data address",
    0x03: "illegal data value",
    0x04: "server device failure",
    0x05: "acknowledge",
    0x06: "server device busy",
    0x08: "memory parity error",
    0x0A: "gateway path unavailable",
    0x0B: "gateway target device failed to respond",
}
"""Standard exception codes (Modbus Application Protocol v1.1b3, section 7)."""


class ModbusError(Exception):
    """A read that did not give registers. ``unit``/``function``/``address`` say which."""

    def __init__(self, message: str, *, unit: int, function: str, address: int) -> None:
        super().__init__(message)
        self.unit = unit
        self.function = function
        self.address = address


class Timeout(ModbusError):
    """No reply at all within the timeout."""


class CrcError(ModbusError):
    """A reply arrived for our unit but failed its CRC check (RTU only)."""


class GarbledReply(ModbusError):
    """Bytes arrived but held no valid frame for this request."""


class BadReply(ModbusError):
    """A valid frame that does not answer the request (wrong count, wrong function)."""


class ExceptionReply(ModbusError):
    """The device answered with a Modbus exception: it is alive but refused the request."""

    def __init__(self, code: int, **where: Any) -> None:
        self.code = code
        self.meaning = EXCEPTION_MEANINGS.get(code, "unknown exception code")
        super().__init__(f"exception {code:02X} ({self.meaning})", **where)


class Disconnected(ModbusError):
    """The serial port cannot be opened, or the TCP connection is down."""


@dataclass
class UnitStats:
    """Counters for one unit id. ``requests`` counts frames sent, retries included."""

    requests: int = 0
    ok: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    garbled: int = 0
    bad_replies: int = 0
    exceptions: int = 0
    disconnected: int = 0
    retries: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_RETRYABLE = (Timeout, CrcError, GarbledReply)


class ModbusBus:
    """The single owner of one serial line or TCP connection.

    Build it with :meth:`serial` or :meth:`tcp`; use it as ``async with bus:`` (or call
    :meth:`close`). It connects lazily on the first read and again after a disconnection,
    so a port missing at start-up is an error of each read, not of the agent.

    ``timeout``: seconds to wait for a reply. ``retries``: further attempts after a timeout,
    bad CRC or garbage (never after an exception reply: the device has answered).
    ``settle``: quiet time after a failed attempt on a serial line (see the module doc).
    """

    def __init__(
        self,
        make_client: Callable[[Callable[[bool, bytes], bytes]], Any],
        *,
        description: str,
        rtu: bool,
        timeout: float,
        retries: int,
        settle: float | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries}")
        self.description = description
        self.rtu = rtu
        self.timeout = timeout
        self.retries = retries
        self.settle = min(0.1, timeout) if settle is None else settle
        self._make_client = make_client
        self._client: Any = None
        self._lock = asyncio.Lock()
        self._stats: dict[int, UnitStats] = {}
        self._rx: list[bytes] = []  # receive buffers seen during the current attempt

    @classmethod
    def serial(
        cls,
        port: str,
        *,
        baud: int = 9600,
        parity: str = "N",
        stopbits: int = 1,
        bytesize: int = 8,
        timeout: float = 0.5,
        retries: int = 1,
        settle: float | None = None,
    ) -> ModbusBus:
        if parity not in ("N", "E", "O"):
            raise ValueError(f"parity must be N, E or O, got {parity!r}")

        def make(trace: Callable[[bool, bytes], bytes]) -> AsyncModbusSerialClient:
            return AsyncModbusSerialClient(
                port,
                baudrate=baud,
                parity=parity,
                stopbits=stopbits,
                bytesize=bytesize,
                timeout=timeout,
                retries=0,  # the bus retries itself, to count and classify each attempt
                reconnect_delay=0,  # and reconnects itself, on the next read
                trace_packet=trace,
            )

        desc = f"{port} {baud} {bytesize}{parity}{stopbits}"
        return cls(
            make, description=desc, rtu=True, timeout=timeout, retries=retries, settle=settle
        )

    @classmethod
    def tcp(
        cls, host: str, port: int = 502, *, timeout: float = 1.0, retries: int = 1
    ) -> ModbusBus:
        def make(trace: Callable[[bool, bytes], bytes]) -> AsyncModbusTcpClient:
            client = AsyncModbusTcpClient(
                host, port=port, timeout=timeout, retries=0, reconnect_delay=0, trace_packet=trace
            )
            # pymodbus closes a TCP connection after a few unanswered requests; behind a
            # TCP gateway that is one dead RTU unit, not a dead connection.
            client.set_max_no_responses(1 << 30)
            return client

        return cls(
            make,
            description=f"{host}:{port}",
            rtu=False,
            timeout=timeout,
            retries=retries,
            settle=0.0,
        )

    # ---------------------------------------------------------------------------- lifetime

    async def __aenter__(self) -> ModbusBus:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def connected(self) -> bool:
        return self._client is not None and bool(self._client.connected)

    # ---------------------------------------------------------------------------- reads

    def stats(self) -> dict[int, UnitStats]:
        """Counters per unit id (live objects: copy them with ``as_dict()``)."""
        return self._stats

    def unit_stats(self, unit: int) -> UnitStats:
        return self._stats.setdefault(unit, UnitStats())

    async def read(
        self, unit: int, function: str, address: int, count: int
    ) -> list[int] | list[bool]:
        """Read ``count`` registers (or bits) of ``function`` at ``address`` from ``unit``.

        Returns exactly ``count`` values; raises a :class:`ModbusError` subclass otherwise.
        """
        if not 1 <= unit <= 247:
            raise ValueError(f"unit id must be 1..247 to read, got {unit}")
        is_bits = is_bit_function(function)
        limit = 2000 if is_bits else 125
        if not 1 <= count <= limit or not 0 <= address <= 0xFFFF or address + count > 0x10000:
            raise ValueError(f"cannot read {count} from address {address} ({function})")
        stats = self.unit_stats(unit)
        where = {"unit": unit, "function": function, "address": address}
        async with self._lock:
            attempt = 0
            while True:
                stats.requests += 1
                try:
                    values = await self._attempt(unit, function, address, count, where)
                except _RETRYABLE as exc:
                    if isinstance(exc, Timeout):
                        stats.timeouts += 1
                    elif isinstance(exc, CrcError):
                        stats.crc_errors += 1
                    else:
                        stats.garbled += 1
                    if self.rtu and self.settle > 0:
                        await asyncio.sleep(self.settle)
                    if attempt >= self.retries:
                        raise
                    attempt += 1
                    stats.retries += 1
                    continue
                except ExceptionReply:
                    stats.exceptions += 1
                    raise
                except BadReply:
                    stats.bad_replies += 1
                    raise
                except Disconnected:
                    stats.disconnected += 1
                    raise
                stats.ok += 1
                return values

    async def _connect(self, where: dict[str, Any]) -> Any:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        client = self._make_client(self._trace)
        try:
            ok = await client.connect()
        # pyserial's SerialException is an OSError; a setting the port refuses (a parity a
        # USB adapter lacks) is a termios.error, and a malformed one a ValueError.
        except (OSError, ValueError, termios.error, ModbusException) as exc:
            client.close()
            raise Disconnected(f"cannot open {self.description}: {exc}", **where) from None
        if not ok:
            client.close()
            raise Disconnected(f"cannot open {self.description}", **where)
        self._client = client
        return client

    def _trace(self, sending: bool, data: bytes) -> bytes:
        if not sending:
            self._rx.append(bytes(data))
        return data

    async def _attempt(
        self, unit: int, function: str, address: int, count: int, where: dict[str, Any]
    ) -> list[int] | list[bool]:
        client = await self._connect(where)
        read = {
            "coil": client.read_coils,
            "discrete": client.read_discrete_inputs,
            "holding": client.read_holding_registers,
            "input": client.read_input_registers,
        }[function]
        self._rx = []
        try:
            reply = await read(address, count=count, device_id=unit)
        except ConnectionException as exc:
            self.close()
            raise Disconnected(f"{self.description}: {exc}", **where) from None
        except ModbusIOException:
            if not self.connected:
                self.close()
                raise Disconnected(f"{self.description}: connection lost", **where) from None
            raise self._no_valid_reply(unit, function, count, where) from None
        except ModbusException as exc:  # a reply pymodbus could not decode
            raise GarbledReply(f"undecodable reply: {exc}", **where) from None
        if reply.isError():
            code = getattr(reply, "exception_code", None)
            if code is None:
                raise BadReply(f"error reply {reply}", **where)
            raise ExceptionReply(int(code), **where)
        if reply.function_code != FUNCTION_CODES[function]:
            raise BadReply(f"reply has function {reply.function_code}", **where)
        if is_bit_function(function):
            bits = list(reply.bits)
            # Bits come padded to whole bytes; fewer than asked is a bad reply.
            if len(bits) < count or len(bits) - count >= 8:
                raise BadReply(f"asked {count} bits, got {len(bits)}", **where)
            return [bool(b) for b in bits[:count]]
        regs = list(reply.registers)
        if len(regs) != count:
            raise BadReply(f"asked {count} registers, got {len(regs)}", **where)
        return regs

    def _no_valid_reply(
        self, unit: int, function: str, count: int, where: dict[str, Any]
    ) -> ModbusError:
        """Classify an attempt that ended without a frame, from the bytes seen meanwhile."""
        seen = max(self._rx, key=len, default=b"")
        if not seen:
            return Timeout(f"no reply from unit {unit} within {self.timeout:g} s", **where)
        if self.rtu and _looks_like_bad_crc(seen, unit, FUNCTION_CODES[function], count):
            return CrcError(f"reply from unit {unit} failed its CRC check", **where)
        shown = seen[:16].hex(" ") + (" ..." if len(seen) > 16 else "")
        return GarbledReply(
            f"{len(seen)} bytes but no valid reply from unit {unit}: {shown}", **where
        )


def _looks_like_bad_crc(data: bytes, unit: int, code: int, count: int) -> bool:
    """True when ``data`` has the shape of the awaited RTU reply but its CRC is wrong."""
    if len(data) < 5 or data[0] != unit:
        return False
    if data[1] == code | 0x80:
        length = 5
    elif data[1] == code:
        payload = (count + 7) // 8 if code in (1, 2) else 2 * count
        if data[2] != payload:
            return False
        length = 3 + payload + 2
    else:
        return False
    if len(data) < length:
        return False
    frame, crc = data[: length - 2], data[length - 2 : length]
    return FramerRTU.compute_CRC(frame) != int.from_bytes(crc, "big")
