"""Modbus slaves for tests and the demo: RTU on a pseudo-terminal, and Modbus TCP.

The client side is the real stack: :class:`RtuLine` gives a PTY path that pymodbus opens
with pyserial exactly as it would open ``/dev/ttyUSB0``; :class:`TcpServer` listens on a real
socket. The slave side framing is written here (not pymodbus' server) so that faults can be
injected per unit, at the byte level:

==================  =======================================================================
``UnitSim`` field   effect on a request for that unit
==================  =======================================================================
``silent``          no answer at all (a device that is off, unplugged, or a wrong unit id)
``delay``           answer after this many extra seconds (a slow device)
``corrupt_crc``     answer with the CRC's bits flipped (RTU; TCP has no CRC)
``garbage``         answer with bytes that are no frame (noise, baud mismatch)
``exception_code``  answer with this Modbus exception (02 illegal address, 06 busy...)
``short_reply``     answer a valid frame holding one register (or byte of bits) too few
==================  =======================================================================

RTU framing rules kept here, because the timing is what delimits an RTU frame:

* A frame ends after a silence of 3.5 character times (t3.5; a character is 11 bits:
  start, 8 data, parity or a second stop, stop). Above 19200 baud t3.5 is fixed at 1.75 ms
  (Modbus over serial line v1.02, 2.5.1.1). The line collects bytes and handles the buffer as
  one frame once it has been quiet for t3.5, as a real slave does; a frame with a bad CRC is
  ignored (counted in ``bad_frames``), as a real slave must.
* A reply is sent no sooner than t3.5 after the request ended, and the time the reply would
  take on the wire (``len * 11 / baud``) is spent before it is written, so a PTY, which
  moves bytes instantly, still shows realistic turnaround.
* Several units share one line: every frame reaches every unit, only the addressed one
  answers. Unit 0 (broadcast) is never answered.

A PTY ignores baud rate and parity, so a parity mismatch cannot be simulated: ``garbage``
stands in for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import struct
import time
import tty
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from passerelle.modbus.maps import SDM120, SDM630, RegisterMap
from passerelle.modbus.registers import encode

__all__ = ["EnergyMeterSim", "RtuLine", "TcpServer", "UnitSim", "crc16", "t35"]

GARBAGE = bytes.fromhex("00ff55aa1337dead00ff")


def crc16(frame: bytes) -> bytes:
    """Modbus CRC-16 of ``frame``, as it is appended on the wire (low byte first)."""
    crc = 0xFFFF
    for b in frame:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return bytes((crc & 0xFF, crc >> 8))


def t35(baud: int) -> float:
    """The RTU inter-frame silence in seconds."""
    return 0.00175 if baud > 19200 else 3.5 * 11 / baud


@dataclass
class UnitSim:
    """One slave: four address spaces and the faults to inject (see the module doc)."""

    unit: int
    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)
    coils: dict[int, bool] = field(default_factory=dict)
    discrete: dict[int, bool] = field(default_factory=dict)
    silent: bool = False
    delay: float = 0.0
    corrupt_crc: bool = False
    garbage: bool = False
    exception_code: int | None = None
    short_reply: bool = False
    requests: int = 0
    """Requests addressed to this unit (answered or not)."""

    def set_value(
        self, space: str, address: int, value: float, type_: str, order: str = "ABCD"
    ) -> None:
        """Write ``value`` as ``type_`` into the ``holding`` or ``input`` registers."""
        bank = self.holding if space == "holding" else self.input
        for i, w in enumerate(encode(value, type_, order)):
            bank[address + i] = w

    def refresh(self) -> None:
        """Called before each request is answered; dynamic devices update registers here."""

    def answer(self, pdu: bytes) -> bytes:
        """The response PDU (function code + data) to request ``pdu``."""
        self.refresh()
        code = pdu[0]
        if self.exception_code is not None:
            return bytes((code | 0x80, self.exception_code))
        if code not in (1, 2, 3, 4):
            return bytes((code | 0x80, 0x01))
        if len(pdu) != 5:
            return bytes((code | 0x80, 0x03))
        address, count = struct.unpack(">HH", pdu[1:5])
        limit = 2000 if code in (1, 2) else 125
        if not 1 <= count <= limit:
            return bytes((code | 0x80, 0x03))
        banks: dict[int, dict[int, Any]] = {
            1: self.coils,
            2: self.discrete,
            3: self.holding,
            4: self.input,
        }
        bank = banks[code]
        addresses = range(address, address + count)
        if any(a not in bank for a in addresses):
            return bytes((code | 0x80, 0x02))
        if code in (1, 2):
            packed = bytearray((count + 7) // 8)
            for i, a in enumerate(addresses):
                if bank[a]:
                    packed[i // 8] |= 1 << (i % 8)
            if self.short_reply:
                packed = packed[:-1]
            return bytes((code, len(packed))) + bytes(packed)
        data = b"".join(int(bank[a]).to_bytes(2, "big") for a in addresses)
        if self.short_reply:
            data = data[:-2]
        return bytes((code, len(data))) + data


class EnergyMeterSim(UnitSim):
    """An Eastron-like meter metering a street-lighting feeder.

    ``power = lit luminaires x rated power x dimming level``, spread evenly over the phases
    (SDM630) or on one (SDM120); energy integrates that power over the injectable ``clock``
    (seconds) and only grows. Voltage is 230 V and frequency 50 Hz with a little seeded noise.
    LED drivers run near power factor 0.95, which gives apparent and reactive power.
    """

    def __init__(
        self,
        unit: int,
        model: str = "sdm630",
        *,
        luminaires: int = 0,
        rated_power: float = 50.0,
        dimming: float = 1.0,
        power_factor: float = 0.95,
        energy_kwh: float = 0.0,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(unit)
        maps = {"sdm630": SDM630, "sdm120": SDM120}
        if model not in maps:
            raise ValueError(f"model must be sdm630 or sdm120, got {model!r}")
        self.map: RegisterMap = maps[model]
        self.phases = 3 if model == "sdm630" else 1
        self.power_factor = power_factor
        self.energy_kwh = energy_kwh
        self._clock = clock
        self._last = clock()
        self._rng = random.Random(seed)
        self.luminaires, self.rated_power, self.dimming = 0, rated_power, 0.0
        self.set_load(luminaires, rated_power=rated_power, dimming=dimming)
        # Like the real meters, every address up to the last parameter answers (the parameters
        # this map leaves out, such as phase angles, read as 0 here).
        last = max(e.end for e in self.map.entries)
        self.input.update(dict.fromkeys(range(last), 0))
        self.refresh()

    @property
    def power(self) -> float:
        """Active power drawn now, watts."""
        return self.luminaires * self.rated_power * self.dimming

    def set_load(
        self, luminaires: int, *, rated_power: float | None = None, dimming: float | None = None
    ) -> None:
        """Change the load; energy up to now is integrated at the previous load first."""
        self._integrate()
        if luminaires < 0:
            raise ValueError("luminaires must be >= 0")
        self.luminaires = luminaires
        if rated_power is not None:
            self.rated_power = rated_power
        if dimming is not None:
            if not 0.0 <= dimming <= 1.0:
                raise ValueError("dimming must be within 0..1")
            self.dimming = dimming

    def _integrate(self) -> None:
        now = self._clock()
        self.energy_kwh += self.power * max(0.0, now - self._last) / 3_600_000.0
        self._last = now

    def refresh(self) -> None:
        self._integrate()
        rnd = self._rng
        p_total = self.power
        p = p_total / self.phases
        pf = self.power_factor if p_total > 0 else 1.0
        s = p / pf
        q = math.sqrt(max(0.0, s * s - p * p))
        values: dict[str, float] = {
            "frequency": 50.0 + rnd.uniform(-0.02, 0.02),
            "energy-import": self.energy_kwh,
            "energy-export": 0.0,
            "reactive-energy-import": self.energy_kwh * math.tan(math.acos(pf)),
            "reactive-energy-export": 0.0,
            "energy-total": self.energy_kwh,
            "reactive-energy-total": self.energy_kwh * math.tan(math.acos(pf)),
            "power": p_total,
            "apparent-power": s * self.phases,
            "reactive-power": q * self.phases,
            "power-factor": pf,
        }
        volts = []
        for ph in range(1, self.phases + 1):
            v = 230.0 + rnd.gauss(0.0, 0.5)
            volts.append(v)
            prefix = f"l{ph}/" if self.phases == 3 else ""
            values[f"{prefix}voltage"] = v
            values[f"{prefix}current"] = s / v
            values[f"{prefix}power"] = p
            values[f"{prefix}apparent-power"] = s
            values[f"{prefix}reactive-power"] = q
            values[f"{prefix}power-factor"] = pf
        if self.phases == 3:
            values["voltage-average"] = sum(volts) / 3
            values["current-average"] = sum(values[f"l{i}/current"] for i in (1, 2, 3)) / 3
            values["current-sum"] = 3 * values["current-average"]
            values["neutral-current"] = 0.0  # a balanced load
        for e in self.map.entries:
            if e.name in values:
                self.set_value("input", e.address, values[e.name], e.type, e.order)


def _units(units: Iterable[UnitSim]) -> dict[int, UnitSim]:
    out: dict[int, UnitSim] = {}
    for u in units:
        if not 1 <= u.unit <= 247 or u.unit in out:
            raise ValueError(f"unit ids must be unique and within 1..247, got {u.unit}")
        out[u.unit] = u
    return out


class RtuLine:
    """Modbus RTU slaves on one pseudo-terminal: ``async with RtuLine([...]) as line:``.

    ``line.path`` is the serial device for the client. ``frames`` counts frames seen on the
    line, ``bad_frames`` those dropped for a bad CRC or a short length.
    """

    def __init__(
        self, units: Iterable[UnitSim], *, baud: int = 9600, wire_timing: bool = True
    ) -> None:
        self.units = _units(units)
        self.baud = baud
        self.wire_timing = wire_timing
        self.frames = 0
        self.bad_frames = 0
        self.path = ""
        self._master = self._slave = -1
        self._buf = bytearray()
        self._quiet: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    def __getitem__(self, unit: int) -> UnitSim:
        return self.units[unit]

    async def __aenter__(self) -> RtuLine:
        self._master, self._slave = os.openpty()
        # Raw mode before the client opens it: a cooked PTY would echo and translate bytes.
        tty.setraw(self._slave)
        self.path = os.ttyname(self._slave)
        os.set_blocking(self._master, False)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._master, self._readable)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._loop is not None and self._master >= 0:
            self._loop.remove_reader(self._master)
        if self._quiet is not None:
            self._quiet.cancel()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the client side closed: EIO until it reopens
        if not data:
            return
        self._buf += data
        # Restart the t3.5 silence timer on every byte: the frame ends when the line is quiet.
        if self._quiet is not None:
            self._quiet.cancel()
        assert self._loop is not None
        self._quiet = self._loop.call_later(t35(self.baud), self._frame_ended)

    def _frame_ended(self) -> None:
        frame, self._buf = bytes(self._buf), bytearray()
        self._quiet = None
        self.frames += 1
        if len(frame) < 4 or crc16(frame[:-2]) != frame[-2:]:
            self.bad_frames += 1
            return
        unit = self.units.get(frame[0])
        if unit is None:
            return
        unit.requests += 1
        if unit.silent:
            return
        # The reply (and its faults) is decided when the request ends, as a device would;
        # only its sending waits for the turnaround and the wire time.
        if unit.garbage:
            out = GARBAGE
        else:
            body = bytes((unit.unit,)) + unit.answer(frame[1:-2])
            crc = crc16(body)
            if unit.corrupt_crc:
                crc = bytes(b ^ 0xFF for b in crc)
            out = body + crc
        wait = t35(self.baud) + unit.delay
        if self.wire_timing:
            wait += len(out) * 11 / self.baud
        task = asyncio.get_running_loop().create_task(self._send_later(out, wait))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_later(self, out: bytes, wait: float) -> None:
        await asyncio.sleep(wait)
        with contextlib.suppress(OSError):
            os.write(self._master, out)


class TcpServer:
    """A Modbus TCP server (MBAP framing) on 127.0.0.1: ``async with TcpServer([...]) as s:``.

    ``s.port`` is the listening port. A request for a unit that does not exist is answered
    with exception 0B (gateway target failed to respond) when ``gateway`` is true, as an
    RTU gateway does, and ignored otherwise. ``corrupt_crc`` has no meaning on TCP.
    """

    def __init__(
        self,
        units: Iterable[UnitSim],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        gateway: bool = False,
    ) -> None:
        self.units = _units(units)
        self.host = host
        self.port = port
        self.gateway = gateway
        self.requests = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    def __getitem__(self, unit: int) -> UnitSim:
        return self.units[unit]

    async def __aenter__(self) -> TcpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and drop every connection (clients see the connection close)."""
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                header = await reader.readexactly(7)
                tid, proto, length, unit_id = struct.unpack(">HHHB", header)
                if proto != 0 or not 2 <= length <= 254:
                    return  # not Modbus: drop the connection, as servers do
                pdu = await reader.readexactly(length - 1)
                self.requests += 1
                unit = self.units.get(unit_id)
                if unit is None:
                    if self.gateway:
                        self._send(writer, tid, unit_id, bytes((pdu[0] | 0x80, 0x0B)))
                    continue
                unit.requests += 1
                if unit.silent:
                    continue
                if unit.delay:
                    await asyncio.sleep(unit.delay)
                if unit.garbage:
                    writer.write(GARBAGE)
                    continue
                self._send(writer, tid, unit_id, unit.answer(pdu))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, tid: int, unit: int, pdu: bytes) -> None:
        writer.write(struct.pack(">HHHB", tid, 0, len(pdu) + 1, unit) + pdu)
