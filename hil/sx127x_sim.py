"""Register-level SX1276 simulator (LoRa mode), portable to MicroPython.

It answers the SPI protocol of the real chip byte by byte (address byte with the
write bit 7, then data; the address auto-increments in a burst except on RegFifo,
where FifoAddrPtr advances instead), keeps a register file with the datasheet's reset
values and a 256-byte FIFO, and moves between modes on an injected microsecond clock:
a transmission ends (TxDone, back to Standby) after its time on air, a single
reception ends with RxTimeout after RegSymbTimeout symbols.

Where the real chip would silently ignore or misbehave on something a driver does
(LongRangeMode changed outside Sleep, FIFO written outside Standby, LoRa registers
touched in FSK mode, configuration written while transmitting, SF6 in explicit header
mode, LowDataRateOptimize missing where it is mandated...), the simulator raises
:class:`SimulatorError` naming the rule, so tests catch driver bugs.

Test-facing API:

``SX127xSim(clock=None, ticks_us=None)``
    a chip; with neither argument it owns a :class:`SimClock` (virtual time).
``transfer(data) -> bytes``
    one SPI transaction (the bus interface of ``drivers/sx127x.py``).
``spi``, ``nss``
    a ``machine.SPI`` look-alike (``write_readinto``/``write``/``readinto``) and the
    chip-select pin that frames its transactions.
``reset_pin``, ``dio0``
    NRESET (active low) and DIO0 (reflects the IRQ mapped by RegDioMapping1).
``inject_rx(payload, rssi=-60.0, snr=9.0, crc_ok=True, ...) -> bool``
    a packet heard on air; False when the receiver is not listening to it.
``transmitted``
    the :class:`TxRecord` of every packet sent, with the settings it went out with.
``peek(address)``
    a register's value without side effects.
"""

try:
    from micropython import const
except ImportError:  # CPython: const() is only a hint to MicroPython's compiler
    const = int


try:
    from typing import TYPE_CHECKING
except ImportError:  # MicroPython: no typing module, annotations are not evaluated
    TYPE_CHECKING = False  # type: ignore[misc]

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

try:
    import _thread
except ImportError:  # single-threaded ports: nothing to guard
    _thread = None  # type: ignore[assignment]


class _NoLock:
    def acquire(self):
        return True

    def release(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _new_lock():
    return _NoLock() if _thread is None else _thread.allocate_lock()


_MODE_NAMES = ("SLEEP", "STDBY", "FSTX", "TX", "FSRX", "RXCONTINUOUS", "RXSINGLE", "CAD")
_SLEEP = const(0)
_STDBY = const(1)
_FSTX = const(2)
_TX = const(3)
_RXCONT = const(5)
_RXSINGLE = const(6)
_CAD = const(7)

_IRQ_RX_TIMEOUT = const(0x80)
_IRQ_RX_DONE = const(0x40)
_IRQ_CRC_ERROR = const(0x20)
_IRQ_VALID_HEADER = const(0x10)
_IRQ_TX_DONE = const(0x08)

_RESET_WAIT_US = const(5000)  # datasheet 7.2.2: wait 5 ms after releasing NRESET

# Reset values of the LoRa page and the common registers (datasheet table 41/ 6.4).
_RESET_VALUES = {
    0x01: 0x09, 0x06: 0x6C, 0x07: 0x80, 0x08: 0x00, 0x09: 0x4F, 0x0A: 0x09, 0x0B: 0x2B,
    0x0C: 0x20, 0x0D: 0x00, 0x0E: 0x80, 0x0F: 0x00, 0x1D: 0x72, 0x1E: 0x70, 0x1F: 0x64,
    0x20: 0x00, 0x21: 0x08, 0x22: 0x01, 0x23: 0xFF, 0x26: 0x04, 0x31: 0xC3, 0x33: 0x27,
    0x37: 0x0A, 0x39: 0x12, 0x3B: 0x1D, 0x40: 0x00, 0x41: 0x00, 0x42: 0x12, 0x4B: 0x09,
    0x4D: 0x84,
}
# Registers that exist in LoRa mode only (the FSK page maps other registers there).
_LORA_PAGE = tuple(range(0x0D, 0x40)) + (0x00,)
_READ_ONLY = (0x10, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1A, 0x1B, 0x1C, 0x25,
              0x28, 0x29, 0x2A, 0x2C, 0x42)
# "Static configuration registers can only be accessed in Sleep, Stand-by or FSTX mode."
_STATIC_CONFIG = (0x06, 0x07, 0x08, 0x09, 0x0B, 0x0C, 0x0E, 0x0F, 0x1D, 0x1E, 0x1F, 0x20,
                  0x21, 0x22, 0x23, 0x26, 0x31, 0x33, 0x37, 0x39, 0x3B, 0x4D)
# Bw code -> (nominal Hz, divisor d of 500 kHz); a symbol lasts 2**SF * d * 2 us.
_BANDWIDTHS = ((7800, 64), (10400, 48), (15600, 32), (20800, 24), (31250, 16),
               (41700, 12), (62500, 8), (125000, 4), (250000, 2), (500000, 1))


class SimulatorError(Exception):
    """The driver did something the real chip would not accept."""


class SimClock:
    """Virtual time: it moves only when someone sleeps or advances it."""

    def __init__(self, start_us: int = 0) -> None:
        self.now_us = start_us

    def ticks_us(self) -> int:
        return self.now_us

    def ticks_ms(self) -> int:
        return self.now_us // 1000

    def sleep_ms(self, ms: float) -> None:
        self.now_us += int(ms * 1000)

    def sleep_us(self, us: float) -> None:
        self.now_us += int(us)

    def advance_us(self, us: float) -> None:
        self.now_us += int(us)


class SimPin:
    """A GPIO with ``value()`` / ``value(v)``; ``on_change(v)`` runs on each write."""

    def __init__(self, value: int = 0, on_change: "Callable[[int], None] | None" = None) -> None:
        self._value = value
        self._on_change = on_change

    def value(self, v: int | None = None) -> int | None:
        if v is None:
            return self._value
        self._value = 1 if v else 0
        if self._on_change is not None:
            self._on_change(self._value)
        return None


class _Dio0Pin:
    """DIO0 as the chip drives it: the IRQ selected by RegDioMapping1 bits 7-6."""

    def __init__(self, chip):
        self._chip = chip

    def value(self, v=None):
        if v is not None:
            raise SimulatorError("DIO0 is an output of the chip: the host cannot drive it")
        chip = self._chip
        with chip._lock:
            chip._update()
            mapping = chip._regs[0x40] >> 6
            flag = (_IRQ_RX_DONE, _IRQ_TX_DONE, 0x04, 0)[mapping]  # 2: CadDone
            return 1 if chip._regs[0x12] & flag else 0


class _SimSpi:
    """``machine.SPI`` look-alike; bytes move only while NSS is low."""

    def __init__(self, chip):
        self._chip = chip

    def write_readinto(self, write_buf, read_buf):
        if len(write_buf) != len(read_buf):
            raise ValueError(
                f"write_readinto: buffers of {len(write_buf)} and {len(read_buf)} bytes")
        for i in range(len(write_buf)):
            read_buf[i] = self._chip._exchange(write_buf[i])

    def write(self, buf):
        for b in buf:
            self._chip._exchange(b)

    def readinto(self, buf, write=0x00):
        for i in range(len(buf)):
            buf[i] = self._chip._exchange(write)


class TxRecord:
    """One packet as it went on air, with the settings of that moment."""

    def __init__(self, payload, start_us, airtime_us, frequency_hz, sf, bandwidth_hz,
                 coding_rate, implicit_header, crc, preamble, sync_word, invert_iq, ldro,
                 power_dbm, pa_boost, ocp_ma):
        self.payload = payload
        self.start_us = start_us
        self.airtime_us = airtime_us
        self.frequency_hz = frequency_hz
        self.sf = sf
        self.bandwidth_hz = bandwidth_hz
        self.coding_rate = coding_rate  # 4/x denominator
        self.implicit_header = implicit_header
        self.crc = crc
        self.preamble = preamble
        self.sync_word = sync_word
        self.invert_iq = invert_iq
        self.ldro = ldro
        self.power_dbm = power_dbm
        self.pa_boost = pa_boost
        self.ocp_ma = ocp_ma

    def as_dict(self) -> "dict[str, Any]":
        d = {}
        for name in ("start_us", "airtime_us", "frequency_hz", "sf", "bandwidth_hz",
                     "coding_rate", "implicit_header", "crc", "preamble", "sync_word",
                     "invert_iq", "ldro", "power_dbm", "pa_boost", "ocp_ma"):
            d[name] = getattr(self, name)
        d["payload"] = "".join(f"{b:02x}" for b in self.payload)
        return d

    def __repr__(self):
        return f"TxRecord({self.as_dict()!r})"


def _hz_from_frf(frf):
    q, r = divmod(frf, 256)
    return q * 15625 + (r * 15625 + 128) // 256


def _to_byte(value):
    """Clamp to 0..255 (a register saturates, it does not wrap)."""
    return 0 if value < 0 else 255 if value > 255 else value


class SX127xSim:
    """An SX1276 seen through its SPI port."""

    def __init__(
        self,
        clock: SimClock | None = None,
        ticks_us: "Callable[[], int] | None" = None,
        version: int = 0x12,
    ) -> None:
        if ticks_us is None:
            if clock is None:
                clock = SimClock()
            ticks_us = clock.ticks_us
        self.clock = clock
        self._ticks_us = ticks_us
        self._version = version
        self._lock = _new_lock()
        self.transmitted = []  # type: list[TxRecord]
        self.tx_hangs = False  # fault: TxDone never comes (PLL lost lock, ...)
        self.spi = _SimSpi(self)
        self.nss = SimPin(1, self._on_nss)
        self.reset_pin = SimPin(1, self._on_reset)
        self.dio0 = _Dio0Pin(self)
        self._in_reset = False
        self._ready_at = None
        self._selected = False
        self._address = None
        self._writing = False
        self._power_on()

    # --- state ---------------------------------------------------------------------

    def _power_on(self):
        self._regs = bytearray(0x80)
        for address, value in _RESET_VALUES.items():
            self._regs[address] = value
        self._regs[0x42] = self._version
        self._fifo = bytearray(256)
        self._tx_end_us = None
        self._rx_deadline_us = None
        self._rx_write_ptr = 0

    @property
    def lora(self) -> bool:
        return bool(self._regs[0x01] & 0x80)

    @property
    def mode(self) -> int:
        return self._regs[0x01] & 0x07

    @property
    def mode_name(self) -> str:
        return _MODE_NAMES[self.mode]

    def peek(self, address: int) -> int:
        """A register's value, no side effects (FIFO pointer, IRQs, clocks untouched)."""
        return self._regs[address]

    def fifo(self) -> bytes:
        return bytes(self._fifo)

    # --- pins ----------------------------------------------------------------------

    def _on_reset(self, level):
        with self._lock:
            if level == 0:
                self._in_reset = True
            elif self._in_reset:
                self._in_reset = False
                self._power_on()
                self._ready_at = self._ticks_us() + _RESET_WAIT_US

    def _on_nss(self, level):
        if level == 0:
            self._select()
        else:
            self._deselect()

    # --- SPI -----------------------------------------------------------------------

    def transfer(self, data: bytes) -> bytes:
        """One full-duplex transaction: NSS low, ``data`` clocked out, NSS high."""
        self._select()
        try:
            return bytes(self._exchange(b) for b in data)
        finally:
            self._deselect()

    def _select(self):
        if self._in_reset:
            raise SimulatorError("SPI access while NRESET is held low")
        if self._ready_at is not None:
            early = self._ready_at - self._ticks_us()
            if early > 0:
                raise SimulatorError(
                    f"SPI access {early} us too early: wait 5 ms after releasing NRESET "
                    f"(datasheet 7.2.2)")
            self._ready_at = None
        self._lock.acquire()
        self._selected = True
        self._address = None
        self._update()

    def _deselect(self):
        if self._selected:
            self._selected = False
            self._address = None
            self._lock.release()

    def _exchange(self, byte):
        if not self._selected:
            raise SimulatorError("SPI byte clocked with NSS high: no transaction open")
        if self._address is None:
            self._address = byte & 0x7F
            self._writing = bool(byte & 0x80)
            return 0
        address = self._address
        if address != 0x00:  # bursts auto-increment, except on the FIFO
            self._address = (address + 1) & 0x7F
        if self._writing:
            self._write(address, byte)
            return 0
        return self._read(address)

    def _check_page(self, address, what):
        if not self.lora and address in _LORA_PAGE:
            raise SimulatorError(
                f"register 0x{address:02X} {what} in FSK/OOK mode: it is a LoRa register "
                f"only once LongRangeMode is set (in Sleep)")

    def _read(self, address):
        self._check_page(address, "read")
        if address == 0x00:
            if self.mode == _SLEEP:
                raise SimulatorError("FIFO read in Sleep mode: the FIFO is cleared and "
                                     "not accessible in Sleep")
            ptr = self._regs[0x0D]
            self._regs[0x0D] = (ptr + 1) & 0xFF
            return self._fifo[ptr]
        return self._regs[address]

    def _write(self, address, value):
        self._check_page(address, "written")
        if address in _READ_ONLY:
            raise SimulatorError(f"register 0x{address:02X} is read-only")
        if address == 0x01:
            self._write_op_mode(value)
        elif address == 0x00:
            if self.mode != _STDBY:
                raise SimulatorError(f"FIFO written in {self.mode_name} mode: the LoRa FIFO "
                                     f"can only be filled in Standby")
            ptr = self._regs[0x0D]
            self._fifo[ptr] = value
            self._regs[0x0D] = (ptr + 1) & 0xFF
        elif address == 0x12:
            self._regs[0x12] &= ~value & 0xFF  # write 1 to clear
        else:
            if address in _STATIC_CONFIG and self.mode not in (_SLEEP, _STDBY, _FSTX):
                raise SimulatorError(
                    f"register 0x{address:02X} written in {self.mode_name} mode: configuration "
                    f"registers accept writes in Sleep, Standby or FSTX only")
            self._regs[address] = value

    def _write_op_mode(self, value):
        old = self._regs[0x01]
        if (value ^ old) & 0x80 and old & 0x07 != _SLEEP:
            raise SimulatorError(
                f"LongRangeMode changed in {self.mode_name} mode: RegOpMode bit 7 can only be "
                f"modified in Sleep")
        if value & 0x80 and value & 0x40:
            raise SimulatorError("AccessSharedReg set: FSK registers from LoRa mode are not "
                                 "modelled (and rarely what a driver wants)")
        mode = value & 0x07
        if value & 0x80 and mode == _CAD:
            raise SimulatorError("CAD mode is not modelled")
        self._regs[0x01] = value
        if mode == _SLEEP:
            # Entering Sleep clears the FIFO (datasheet 4.1.2.3).
            self._fifo = bytearray(256)
            self._tx_end_us = None
            self._rx_deadline_us = None
            return
        if not value & 0x80:
            return  # FSK modes are not modelled beyond Sleep/Standby
        if mode == _TX and old & 0x07 != _TX:
            self._start_tx()
        elif mode in (_RXCONT, _RXSINGLE):
            self._start_rx(mode)
        elif mode != _TX:
            self._tx_end_us = None
            self._rx_deadline_us = None

    def _set_mode(self, mode):
        self._regs[0x01] = (self._regs[0x01] & 0xF8) | mode

    def _raise_irq(self, flags):
        self._regs[0x12] |= flags & ~self._regs[0x11] & 0xFF  # masked IRQs stay down

    def _update(self):
        """Advance time-driven events to the clock's present."""
        now = self._ticks_us()
        if self._tx_end_us is not None and now >= self._tx_end_us and not self.tx_hangs:
            self._tx_end_us = None
            self._raise_irq(_IRQ_TX_DONE)
            self._set_mode(_STDBY)
        if self._rx_deadline_us is not None and now >= self._rx_deadline_us:
            self._rx_deadline_us = None
            self._raise_irq(_IRQ_RX_TIMEOUT)
            self._set_mode(_STDBY)

    # --- modem settings as the registers say ---------------------------------------

    def frequency_hz(self) -> int:
        r = self._regs
        return _hz_from_frf((r[0x06] << 16) | (r[0x07] << 8) | r[0x08])

    def settings(self) -> "dict[str, Any]":
        """The modem settings currently in the registers (validated)."""
        r = self._regs
        bw_code = r[0x1D] >> 4
        cr_code = (r[0x1D] >> 1) & 0x07
        sf = r[0x1E] >> 4
        if bw_code > 9:
            raise SimulatorError(f"RegModemConfig1 Bw code {bw_code} is reserved")
        if not 1 <= cr_code <= 4:
            raise SimulatorError(f"RegModemConfig1 CodingRate code {cr_code} is reserved")
        if not 6 <= sf <= 12:
            raise SimulatorError(f"RegModemConfig2 SpreadingFactor {sf} is reserved")
        bandwidth, divisor = _BANDWIDTHS[bw_code]
        return {
            "frequency_hz": self.frequency_hz(),
            "sf": sf,
            "bandwidth_hz": bandwidth,
            "symbol_us": (2 << sf) * divisor,
            "coding_rate": cr_code + 4,
            "implicit_header": bool(r[0x1D] & 0x01),
            "crc": bool(r[0x1E] & 0x04),
            "preamble": (r[0x20] << 8) | r[0x21],
            "sync_word": r[0x39],
            "ldro": bool(r[0x26] & 0x08),
            "tx_invert_iq": not r[0x33] & 0x01,
            "rx_invert_iq": bool(r[0x33] & 0x40),
        }

    def _check_modem(self, s):
        f = s["frequency_hz"]
        if not 137000000 <= f <= 1020000000:
            raise SimulatorError(f"carrier {f} Hz outside the SX1276 range 137..1020 MHz")
        sf6 = s["sf"] == 6
        if sf6 and not s["implicit_header"]:
            raise SimulatorError("SF6 in explicit header mode: SF6 works only with an "
                                 "implicit header (datasheet 4.1.1.2)")
        optimize, threshold = (0x05, 0x0C) if sf6 else (0x03, 0x0A)
        if self._regs[0x31] & 0x07 != optimize or self._regs[0x37] != threshold:
            held = (self._regs[0x31] & 0x07, self._regs[0x37])
            raise SimulatorError(
                f"SF{s['sf']} needs DetectionOptimize 0x{optimize:02X} and DetectionThreshold "
                f"0x{threshold:02X}, registers hold 0x{held[0]:02X} and 0x{held[1]:02X}")
        if s["symbol_us"] > 16000 and not s["ldro"]:
            raise SimulatorError(
                f"LowDataRateOptimize off with {s['symbol_us']} us symbols (SF{s['sf']}, "
                f"{s['bandwidth_hz']} Hz): it is mandated above 16 ms")

    def airtime_us(self, length: int, s: "dict[str, Any]") -> int:
        """Time on air per Semtech AN1200.13, for settings ``s`` from :meth:`settings`."""
        sf = s["sf"]
        de = 2 if s["ldro"] else 0
        num = 8 * length - 4 * sf + 28 + (16 if s["crc"] else 0)
        num -= 20 if s["implicit_header"] else 0
        den = 4 * (sf - de)
        blocks = (num + den - 1) // den if num > 0 else 0
        n_payload = 8 + blocks * s["coding_rate"]
        # (preamble + 4.25 + n_payload) symbols, in quarter symbols
        return (4 * s["preamble"] + 17 + 4 * n_payload) * s["symbol_us"] // 4

    def _power(self):
        """(dBm, on PA_BOOST, OCP mA) from RegPaConfig, RegPaDac and RegOcp."""
        pa = self._regs[0x09]
        output = pa & 0x0F
        high = self._regs[0x4D] & 0x07 == 0x07
        if pa & 0x80:
            dbm = output + (5 if high else 2)
        else:
            if high:
                raise SimulatorError("RegPaDac high power (0x87) with the RFO pin selected: "
                                     "high power settings must be off on RFO")
            max_power = (pa >> 4) & 0x07
            dbm = (108 + 6 * max_power) / 10 - 15 + output
        ocp = self._regs[0x0B]
        trim = ocp & 0x1F
        ocp_ma = None
        if ocp & 0x20:
            ocp_ma = 45 + 5 * trim if trim <= 15 else -30 + 10 * trim if trim <= 27 else 240
        return dbm, bool(pa & 0x80), ocp_ma

    def _start_tx(self):
        s = self.settings()
        self._check_modem(s)
        length = self._regs[0x22]
        if length == 0:
            raise SimulatorError("TX with RegPayloadLength 0")
        base = self._regs[0x0E]
        payload = bytes(self._fifo[(base + i) & 0xFF] for i in range(length))
        dbm, pa_boost, ocp_ma = self._power()
        now = self._ticks_us()
        airtime = self.airtime_us(length, s)
        self.transmitted.append(TxRecord(
            payload, now, airtime, s["frequency_hz"], s["sf"], s["bandwidth_hz"],
            s["coding_rate"], s["implicit_header"], s["crc"], s["preamble"],
            s["sync_word"], s["tx_invert_iq"], s["ldro"], dbm, pa_boost, ocp_ma))
        self._tx_end_us = now + airtime
        self._rx_deadline_us = None

    def _start_rx(self, mode):
        s = self.settings()
        self._check_modem(s)
        inverted = s["rx_invert_iq"]
        expected = 0x19 if inverted else 0x1D
        if self._regs[0x3B] != expected:
            raise SimulatorError(
                f"RX with RegInvertIQ bit 6 = {1 if inverted else 0} but RegInvertIQ2 = "
                f"0x{self._regs[0x3B]:02X}: it must be 0x{expected:02X}")
        self._tx_end_us = None
        self._rx_write_ptr = self._regs[0x0F]
        self._rx_deadline_us = None
        if mode == _RXSINGLE:
            symbols = ((self._regs[0x1E] & 0x03) << 8) | self._regs[0x1F]
            self._rx_deadline_us = self._ticks_us() + symbols * s["symbol_us"]

    # --- the air -------------------------------------------------------------------

    def inject_rx(
        self,
        payload: bytes,
        rssi: float = -60.0,
        snr: float = 9.0,
        crc_ok: bool = True,
        invert_iq: bool = False,
        frequency_hz: int | None = None,
        sf: int | None = None,
        bandwidth_hz: int | None = None,
        sync_word: int | None = None,
        coding_rate: int = 5,
        has_crc: bool = True,
    ) -> bool:
        """A packet has just been heard; True if the receiver took it.

        The receiver takes it only in an RX mode and when the given air parameters
        (``None``: whatever the receiver is set to) match its settings, IQ polarity
        included. A taken packet is in the FIFO where the demodulator writes next (at
        RegFifoRxBaseAddr for the first packet after entering RX), with RegRxNbBytes,
        RegFifoRxCurrentAddr, SNR/RSSI registers and RxDone (plus PayloadCrcError when
        ``crc_ok`` is false) raised.
        """
        payload = bytes(payload)
        if not 1 <= len(payload) <= 255:
            raise ValueError(f"a LoRa payload has 1..255 bytes, not {len(payload)}")
        with self._lock:
            self._update()
            if not self.lora or self.mode not in (_RXCONT, _RXSINGLE):
                return False
            s = self.settings()
            if frequency_hz is not None and abs(frequency_hz - s["frequency_hz"]) > 1000:
                return False
            if sf is not None and sf != s["sf"]:
                return False
            if bandwidth_hz is not None and bandwidth_hz != s["bandwidth_hz"]:
                return False
            if sync_word is not None and sync_word != s["sync_word"]:
                return False
            if bool(invert_iq) != s["rx_invert_iq"]:
                return False
            if s["implicit_header"] and len(payload) != self._regs[0x22]:
                return False
            start = self._rx_write_ptr
            for i, b in enumerate(payload):
                self._fifo[(start + i) & 0xFF] = b
            self._rx_write_ptr = (start + len(payload)) & 0xFF
            r = self._regs
            r[0x10] = start
            r[0x13] = len(payload)
            r[0x25] = (start + len(payload) - 1) & 0xFF
            snr_q = int(round(snr * 4))
            snr_q = -128 if snr_q < -128 else 127 if snr_q > 127 else snr_q
            r[0x19] = snr_q & 0xFF
            offset = 157 if s["frequency_hz"] >= 525000000 else 164
            # inverse of the datasheet formula: below 0 dB SNR the SNR is added back
            packet_rssi = rssi + offset - (snr_q / 4 if snr_q < 0 else 0)
            r[0x1A] = _to_byte(int(round(packet_rssi)))
            r[0x1B] = _to_byte(int(round(rssi + offset)))
            r[0x18] = (r[0x18] & 0x1F) | ((coding_rate - 4) << 5)
            r[0x1C] = (r[0x1C] & 0xBF) | (0x40 if has_crc else 0)
            headers = ((r[0x14] << 8) | r[0x15]) + 1
            r[0x14], r[0x15] = (headers >> 8) & 0xFF, headers & 0xFF
            flags = _IRQ_RX_DONE | _IRQ_VALID_HEADER
            if has_crc and not crc_ok:
                flags |= _IRQ_CRC_ERROR
            else:
                packets = ((r[0x16] << 8) | r[0x17]) + 1
                r[0x16], r[0x17] = (packets >> 8) & 0xFF, packets & 0xFF
            self._raise_irq(flags)
            if self.mode == _RXSINGLE:
                self._rx_deadline_us = None
                self._set_mode(_STDBY)
            return True
