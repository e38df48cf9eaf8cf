"""SX1276/77/78/79 LoRa radio driver, register level, portable.

The same file runs on CPython (a Raspberry Pi with spidev + libgpiod, see
``drivers/sx127x_pi.py``) and on MicroPython boards: no asyncio, no dataclasses, no
typing at run time, no f-strings beyond the basics. Register addresses, bit fields and
formulas follow the Semtech SX1276/77/78/79 datasheet (rev. 4+, LoRa register map,
section 6.4) unless a comment names another source.

Everything hardware-facing is injected, so tests and the simulator in
``hil/sx127x_sim.py`` control it:

``bus``
    one method, ``transfer(data: bytes) -> bytes``: a full-duplex SPI transaction with
    chip select asserted for its whole length, returning as many bytes as were sent.
    spidev's ``xfer2`` is exactly that; :class:`SpiBus` makes one from a MicroPython
    ``machine.SPI`` and a chip-select ``Pin``.
``reset``
    optional pin with ``value(v)`` wired to NRESET (active low).
``sleep_ms(ms)`` and ``ticks_ms()``
    waiting and a millisecond clock; ``ticks_diff(a, b)`` for clocks that wrap
    (MicroPython's ``time.ticks_diff`` when there is one).

Blocking API (what a MicroPython main loop uses)::

    radio = SX127x(bus, reset=pin)
    radio.init()                                  # reset, check RegVersion, LoRa mode
    radio.configure(frequency=868_100_000, sf=9, bandwidth=125_000)
    radio.transmit(b"hello")                      # returns the time on air, us
    radio.receive()                               # continuous RX
    packet = radio.read_packet()                  # None, or (payload, rssi, snr)

The split calls (``load_tx``/``start_tx``/``tx_done``) let an asyncio backend start a
transmission at an exact instant and poll instead of blocking.
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

    class Bus(Protocol):
        """Full-duplex SPI transaction, chip select held throughout."""

        def transfer(self, data: bytes) -> bytes: ...

    class Pin(Protocol):
        def value(self, v: int | None = None) -> int | None: ...

    class SpiPort(Protocol):
        """The part of MicroPython's ``machine.SPI`` the driver uses."""

        def write_readinto(self, write_buf: bytes, read_buf: bytearray) -> None: ...

    Packet = tuple[bytes, float, float]  # payload, RSSI dBm, SNR dB


try:  # MicroPython: millisecond ticks wrap, compare them with ticks_diff
    from time import ticks_diff as _ticks_diff  # type: ignore[attr-defined]
except ImportError:

    def _ticks_diff(a: int, b: int) -> int:  # type: ignore[misc]
        return a - b


# --- registers (LoRa page) ---------------------------------------------------------
REG_FIFO = const(0x00)
REG_OP_MODE = const(0x01)
REG_FRF_MSB = const(0x06)
REG_PA_CONFIG = const(0x09)
REG_OCP = const(0x0B)
REG_LNA = const(0x0C)
REG_FIFO_ADDR_PTR = const(0x0D)
REG_FIFO_TX_BASE_ADDR = const(0x0E)
REG_FIFO_RX_BASE_ADDR = const(0x0F)
REG_FIFO_RX_CURRENT_ADDR = const(0x10)
REG_IRQ_FLAGS_MASK = const(0x11)
REG_IRQ_FLAGS = const(0x12)
REG_RX_NB_BYTES = const(0x13)
REG_PKT_SNR_VALUE = const(0x19)
REG_PKT_RSSI_VALUE = const(0x1A)
REG_MODEM_CONFIG_1 = const(0x1D)
REG_MODEM_CONFIG_2 = const(0x1E)
REG_SYMB_TIMEOUT_LSB = const(0x1F)
REG_PREAMBLE_MSB = const(0x20)
REG_PAYLOAD_LENGTH = const(0x22)
REG_MODEM_CONFIG_3 = const(0x26)
REG_DETECTION_OPTIMIZE = const(0x31)
REG_INVERT_IQ = const(0x33)
REG_DETECTION_THRESHOLD = const(0x37)
REG_SYNC_WORD = const(0x39)
REG_INVERT_IQ2 = const(0x3B)
REG_DIO_MAPPING_1 = const(0x40)
REG_VERSION = const(0x42)
REG_PA_DAC = const(0x4D)

# RegOpMode
LONG_RANGE_MODE = const(0x80)
LOW_FREQUENCY_MODE_ON = const(0x08)
MODE_SLEEP = const(0x00)
MODE_STDBY = const(0x01)
MODE_TX = const(0x03)
MODE_RX_CONTINUOUS = const(0x05)
MODE_RX_SINGLE = const(0x06)

# RegIrqFlags
IRQ_RX_TIMEOUT = const(0x80)
IRQ_RX_DONE = const(0x40)
IRQ_PAYLOAD_CRC_ERROR = const(0x20)
IRQ_VALID_HEADER = const(0x10)
IRQ_TX_DONE = const(0x08)

# RegDioMapping1, DIO0 in bits 7-6
DIO0_RX_DONE = const(0x00)
DIO0_TX_DONE = const(0x40)

CHIP_VERSION = const(0x12)  # RegVersion of every SX1276/77/78/79
SYNC_WORD_PUBLIC = const(0x34)  # LoRaWAN public networks
SYNC_WORD_PRIVATE = const(0x12)  # the chip's reset value

_FXOSC = const(32000000)  # crystal, Hz
_HF_LF_LIMIT_HZ = const(525000000)  # above: HF port (band 1), below: LF port (bands 2, 3)

# Nominal bandwidth (Hz) -> (RegModemConfig1 Bw code, divisor d): the exact bandwidth is
# 500 kHz / d, so a symbol lasts 2**SF * d * 2 us exactly, with integer arithmetic only.
BANDWIDTHS = {
    7800: (0, 64),
    10400: (1, 48),
    15600: (2, 32),
    20800: (3, 24),
    31250: (4, 16),
    41700: (5, 12),
    62500: (6, 8),
    125000: (7, 4),
    250000: (8, 2),
    500000: (9, 1),
}


class SX127xError(Exception):
    """The radio did not do what was asked (absent, stuck, misconfigured)."""


class ChipNotFound(SX127xError):
    """RegVersion did not read 0x12: no SX127x answers on this bus."""


class TxTimeout(SX127xError):
    """TxDone did not come within the time on air plus a margin."""


class RxTimeout(SX127xError):
    """Single reception ended with no packet (RxTimeout IRQ)."""


class CrcError(SX127xError):
    """A packet arrived with a bad payload CRC; its bytes are not returned."""

    def __init__(self, length: int, rssi: float, snr: float) -> None:
        super().__init__(
            f"payload CRC error ({length} bytes, RSSI {rssi:.1f} dBm, SNR {snr:.2f} dB)")
        self.length = length
        self.rssi = rssi
        self.snr = snr


# --- pure helpers (no chip needed) ---------------------------------------------------


def frf_from_hz(frequency_hz: int) -> int:
    """RegFrf value for a carrier: Frf = f * 2**19 / 32 MHz, rounded to the nearest step.

    Computed as f * 256 / 15625 split into quotient and remainder so that every
    intermediate stays a small int on 32-bit MicroPython ports.
    """
    q, r = divmod(int(frequency_hz), 15625)
    return q * 256 + (r * 256 + 7812) // 15625


def hz_from_frf(frf: int) -> int:
    """Carrier frequency (Hz, rounded) of a RegFrf value: f = Frf * 32 MHz / 2**19."""
    q, r = divmod(int(frf), 256)
    return q * 15625 + (r * 15625 + 128) // 256


def symbol_time_us(sf: int, bandwidth_hz: int) -> int:
    """Duration of one LoRa symbol, 2**SF / BW, in microseconds (exact)."""
    return (2 << sf) * BANDWIDTHS[bandwidth_hz][1]


def needs_ldro(sf: int, bandwidth_hz: int) -> bool:
    """LowDataRateOptimize is mandated when a symbol lasts 16 ms or more."""
    return symbol_time_us(sf, bandwidth_hz) >= 16000


def time_on_air_us(length: int, sf: int, bandwidth_hz: int, coding_rate: int = 5,
                   preamble: int = 8, crc: bool = True, implicit_header: bool = False,
                   ldro: bool | None = None) -> int:
    """Packet duration (us) per Semtech AN1200.13; ``coding_rate`` is the 4/x denominator.

    Npayload = 8 + max(ceil((8PL - 4SF + 28 + 16CRC - 20IH) / (4(SF - 2DE))) (CR + 4), 0)
    T = (Npreamble + 4.25 + Npayload) * Tsym. Counted in quarter symbols to stay integer.
    """
    if ldro is None:
        ldro = needs_ldro(sf, bandwidth_hz)
    num = 8 * length - 4 * sf + 28 + (16 if crc else 0) - (20 if implicit_header else 0)
    den = 4 * (sf - (2 if ldro else 0))
    blocks = max(-(-num // den), 0)
    quarter_symbols = 4 * preamble + 17 + 4 * (8 + blocks * coding_rate)
    return quarter_symbols * symbol_time_us(sf, bandwidth_hz) // 4


def rssi_dbm(packet_rssi: int, snr_db: float, frequency_hz: int) -> float:
    """Packet strength from RegPktRssiValue (datasheet 5.5.5).

    -157 + PacketRssi on the HF port (-164 on the LF port); below the noise floor
    (SNR < 0) the SNR is added, since PacketRssi then measures the noise.
    """
    offset = -157 if frequency_hz >= _HF_LF_LIMIT_HZ else -164
    rssi = float(offset + packet_rssi)
    if snr_db < 0:
        rssi += snr_db
    return rssi


def snr_db_from_register(value: int) -> float:
    """RegPktSnrValue is two's complement, in quarter dB."""
    if value >= 128:
        value -= 256
    return value / 4


class SpiBus:
    """``transfer()`` over a MicroPython ``machine.SPI`` and a chip-select pin.

    The SX127x latches the address on NSS falling and ends a burst on NSS rising, so
    the pin frames each transfer.
    """

    def __init__(self, spi: "SpiPort", cs: "Pin") -> None:
        self._spi = spi
        self._cs = cs
        cs.value(1)

    def transfer(self, data: bytes) -> bytes:
        out = bytearray(len(data))
        self._cs.value(0)
        try:
            self._spi.write_readinto(data, out)
        finally:
            self._cs.value(1)
        return bytes(out)


def _default_sleep_ms() -> "Callable[[int], None]":
    import time

    if hasattr(time, "sleep_ms"):
        return time.sleep_ms
    return lambda ms: time.sleep(ms / 1000)


def _default_ticks_ms() -> "Callable[[], Any]":  # MicroPython's ticks are their own type
    import time

    if hasattr(time, "ticks_ms"):
        return time.ticks_ms
    # CPython only (MicroPython has ticks_ms): the MicroPython stubs rightly lack it
    monotonic = time.monotonic  # pyright: ignore[reportAttributeAccessIssue]
    return lambda: int(monotonic() * 1000)


class SX127x:
    """One SX127x in LoRa mode.

    Settings live in attributes and are written to the chip by the setters (once
    :meth:`init` has run; before that they are only remembered). The chip accepts
    configuration in Sleep or Standby only, so a setter stops a reception in progress.
    """

    def __init__(
        self,
        bus: "Bus",
        reset: "Pin | None" = None,
        sleep_ms: "Callable[[int], None] | None" = None,
        ticks_ms: "Callable[[], int] | None" = None,
        ticks_diff: "Callable[[int, int], int] | None" = None,
    ) -> None:
        self._bus = bus
        self._reset_pin = reset
        self._sleep_ms = sleep_ms or _default_sleep_ms()
        self._ticks_ms = ticks_ms or _default_ticks_ms()
        self._ticks_diff = ticks_diff or _ticks_diff
        self._ready = False
        self._mode = MODE_SLEEP
        # LoRaWAN EU868 uplink defaults
        self.frequency = 868100000  # Hz
        self.sf = 7
        self.bandwidth = 125000  # Hz, nominal
        self.coding_rate = 5  # 4/5
        self.implicit_header = False
        self.implicit_length = 0
        self.crc = True
        self.preamble = 8
        self.sync_word = SYNC_WORD_PUBLIC
        self.invert_iq = False
        self.tx_power = 14  # dBm
        self.pa_boost = True  # most modules (RFM95, HopeRF) wire only PA_BOOST
        self.ocp_ma = 100
        self._tx_toa_us = 0

    # --- register access -----------------------------------------------------------

    def _transfer(self, data: bytes) -> bytes:
        reply = self._bus.transfer(data)
        if reply is None or len(reply) != len(data):
            got = "no" if reply is None else len(reply)
            raise SX127xError(f"SPI bus returned {got} bytes for a {len(data)}-byte transfer")
        return reply

    def read_register(self, address: int) -> int:
        return self._transfer(bytes((address & 0x7F, 0)))[1]

    def write_register(self, address: int, value: int) -> None:
        self._transfer(bytes((address | 0x80, value & 0xFF)))

    def _read_fifo(self, count: int) -> bytes:
        return bytes(self._transfer(bytes((REG_FIFO,)) + bytes(count))[1:])

    def _write_fifo(self, data: bytes) -> None:
        self._transfer(bytes((REG_FIFO | 0x80,)) + bytes(data))

    def _update_bits(self, address: int, mask: int, value: int) -> None:
        self.write_register(address, (self.read_register(address) & ~mask) | (value & mask))

    # --- life cycle ----------------------------------------------------------------

    def reset(self) -> None:
        """Pulse NRESET: low for >= 100 us, then wait 5 ms (datasheet 7.2.2)."""
        if self._reset_pin is None:
            return
        self._reset_pin.value(0)
        self._sleep_ms(1)
        self._reset_pin.value(1)
        self._sleep_ms(6)
        self._ready = False
        self._mode = MODE_SLEEP

    def version(self) -> int:
        return self.read_register(REG_VERSION)

    def init(self) -> None:
        """Reset, check the chip, enter LoRa mode and write every setting."""
        self.reset()
        version = self.version()
        if version != CHIP_VERSION:
            raise ChipNotFound(
                f"no SX127x on the bus: RegVersion (0x42) reads 0x{version:02X}, "
                f"expected 0x{CHIP_VERSION:02X} (check SPI wiring, chip select, NRESET, power)")
        # LongRangeMode can only change in Sleep: first sleep in whichever modem the chip
        # is in (it may still be receiving for a previous run if NRESET is not wired),
        # then set the bit.
        self.write_register(REG_OP_MODE, self.read_register(REG_OP_MODE) & 0xF8)
        self.write_register(REG_OP_MODE, LONG_RANGE_MODE | MODE_SLEEP | self._lf_bit())
        if not self.read_register(REG_OP_MODE) & LONG_RANGE_MODE:
            raise SX127xError("SX127x did not enter LoRa mode (RegOpMode reads back FSK)")
        self._mode = MODE_SLEEP
        self._ready = True
        self.standby()
        # Half duplex: TX and RX may both use the whole 256-byte FIFO.
        self.write_register(REG_FIFO_TX_BASE_ADDR, 0)
        self.write_register(REG_FIFO_RX_BASE_ADDR, 0)
        self.write_register(REG_IRQ_FLAGS_MASK, 0)
        self._update_bits(REG_LNA, 0x03, 0x03)  # LnaBoostHf: 150 % LNA current
        self._write_frequency()
        self._write_modem()
        self._write_sync_word()
        self._write_invert_iq()
        self._write_power()

    def _lf_bit(self) -> int:
        return LOW_FREQUENCY_MODE_ON if self.frequency < _HF_LF_LIMIT_HZ else 0

    def _set_mode(self, mode: int) -> None:
        self.write_register(REG_OP_MODE, LONG_RANGE_MODE | self._lf_bit() | mode)
        self._mode = mode

    def sleep(self) -> None:
        self._set_mode(MODE_SLEEP)

    def standby(self) -> None:
        self._set_mode(MODE_STDBY)

    def _configurable(self) -> bool:
        """True once the chip may be written; stops TX/RX (config needs Sleep/Standby)."""
        if not self._ready:
            return False
        if self._mode not in (MODE_SLEEP, MODE_STDBY):
            self.standby()
        return True

    # --- settings --------------------------------------------------------------------

    def configure(
        self,
        frequency: int | None = None,
        sf: int | None = None,
        bandwidth: int | None = None,
        coding_rate: int | None = None,
        implicit_header: bool | None = None,
        implicit_length: int | None = None,
        crc: bool | None = None,
        preamble: int | None = None,
        sync_word: int | None = None,
        invert_iq: bool | None = None,
        tx_power: int | None = None,
        pa_boost: bool | None = None,
    ) -> None:
        """Set any subset of the settings at once (``None`` keeps the current value)."""
        if frequency is not None:
            self.set_frequency(frequency)
        if sf is not None:
            self.set_spreading_factor(sf)
        if bandwidth is not None:
            self.set_bandwidth(bandwidth)
        if coding_rate is not None:
            self.set_coding_rate(coding_rate)
        if implicit_header is not None:
            self.set_implicit_header(
                implicit_header, self.implicit_length if implicit_length is None
                else implicit_length)
        if crc is not None:
            self.set_crc(crc)
        if preamble is not None:
            self.set_preamble(preamble)
        if sync_word is not None:
            self.set_sync_word(sync_word)
        if invert_iq is not None:
            self.set_invert_iq(invert_iq)
        if tx_power is not None or pa_boost is not None:
            self.set_tx_power(self.tx_power if tx_power is None else tx_power, pa_boost)

    def set_frequency(self, frequency_hz: int) -> None:
        frequency_hz = int(frequency_hz)
        if not 137000000 <= frequency_hz <= 1020000000:
            raise ValueError(f"frequency {frequency_hz} Hz outside the SX127x range 137..1020 MHz")
        self.frequency = frequency_hz
        if self._configurable():
            self._set_mode(self._mode)  # LowFrequencyModeOn follows the band
            self._write_frequency()

    def set_spreading_factor(self, sf: int) -> None:
        if not 6 <= sf <= 12:
            raise ValueError(f"spreading factor {sf!r} outside 6..12")
        self.sf = sf
        if self._configurable():
            self._write_modem()

    def set_bandwidth(self, bandwidth_hz: int) -> None:
        if bandwidth_hz not in BANDWIDTHS:
            raise ValueError(f"bandwidth {bandwidth_hz!r} Hz not one of {sorted(BANDWIDTHS)}")
        self.bandwidth = bandwidth_hz
        if self._configurable():
            self._write_modem()

    def set_coding_rate(self, denominator: int) -> None:
        """Coding rate 4/``denominator``, 5..8."""
        if not 5 <= denominator <= 8:
            raise ValueError(f"coding rate 4/{denominator!r}: denominator outside 5..8")
        self.coding_rate = denominator
        if self._configurable():
            self._write_modem()

    def set_implicit_header(self, on: bool, length: int = 0) -> None:
        """Implicit header: no header on air, both ends agree on ``length`` (1..255)."""
        if on and not 1 <= length <= 255:
            raise ValueError(f"implicit header needs a payload length 1..255, got {length!r}")
        self.implicit_header = bool(on)
        self.implicit_length = length if on else 0
        if self._configurable():
            self._write_modem()

    def set_crc(self, on: bool) -> None:
        self.crc = bool(on)
        if self._configurable():
            self._write_modem()

    def set_preamble(self, symbols: int) -> None:
        if not 6 <= symbols <= 65535:
            raise ValueError(f"preamble length {symbols!r} outside 6..65535 symbols")
        self.preamble = symbols
        if self._configurable():
            self._write_modem()

    def set_sync_word(self, word: int) -> None:
        if not 0 <= word <= 0xFF:
            raise ValueError(f"sync word {word!r} is not one byte")
        self.sync_word = word
        if self._configurable():
            self._write_sync_word()

    def set_invert_iq(self, invert: bool) -> None:
        """Inverted IQ on both TX and RX paths (LoRaWAN downlinks are inverted)."""
        self.invert_iq = bool(invert)
        if self._configurable():
            self._write_invert_iq()

    def set_tx_power(self, dbm: int, pa_boost: bool | None = None) -> None:
        """Output power: PA_BOOST 2..17 dBm, 18..20 dBm with RegPaDac high power; RFO 0..14.

        ``pa_boost`` picks the pin the board's antenna is on (None: keep the current one).
        """
        dbm = int(dbm)
        if pa_boost is None:
            pa_boost = self.pa_boost
        if pa_boost and not 2 <= dbm <= 20:
            raise ValueError(f"PA_BOOST power {dbm!r} dBm outside 2..20")
        if not pa_boost and not 0 <= dbm <= 14:
            raise ValueError(f"RFO power {dbm!r} dBm outside 0..14")
        self.tx_power = dbm
        self.pa_boost = bool(pa_boost)
        # The high-power mode draws up to 120 mA; protect at 140 mA, else the 100 mA default.
        self.ocp_ma = 140 if pa_boost and dbm > 17 else 100
        if self._configurable():
            self._write_power()

    def set_ocp(self, milliamps: int) -> None:
        """Over-current protection limit, 45..240 mA (RegOcp, OcpOn set)."""
        if not 45 <= milliamps <= 240:
            raise ValueError(f"OCP limit {milliamps!r} mA outside 45..240")
        self.ocp_ma = milliamps
        if self._configurable():
            self._write_ocp()

    @property
    def ldro(self) -> bool:
        return needs_ldro(self.sf, self.bandwidth)

    # --- writing the settings --------------------------------------------------------

    def _write_frequency(self) -> None:
        frf = frf_from_hz(self.frequency)
        # MSB, Mid, LSB in one burst; the new frequency takes effect on entering FS/TX/RX.
        self._transfer(bytes((REG_FRF_MSB | 0x80, frf >> 16, (frf >> 8) & 0xFF, frf & 0xFF)))

    def _write_modem(self) -> None:
        bw_code = BANDWIDTHS[self.bandwidth][0]
        self.write_register(REG_MODEM_CONFIG_1, (bw_code << 4) | ((self.coding_rate - 4) << 1)
                            | (1 if self.implicit_header else 0))
        self._update_bits(REG_MODEM_CONFIG_2, 0xF4, (self.sf << 4) | (0x04 if self.crc else 0))
        # AgcAutoOn always; LowDataRateOptimize when a symbol lasts 16 ms or more.
        self.write_register(REG_MODEM_CONFIG_3, 0x04 | (0x08 if self.ldro else 0))
        self.write_register(REG_PREAMBLE_MSB, self.preamble >> 8)
        self.write_register(REG_PREAMBLE_MSB + 1, self.preamble & 0xFF)
        if self.implicit_header:
            self.write_register(REG_PAYLOAD_LENGTH, self.implicit_length)
        # SF6 needs its own detector settings (datasheet 4.1.1.2).
        sf6 = self.sf == 6
        self._update_bits(REG_DETECTION_OPTIMIZE, 0x07, 0x05 if sf6 else 0x03)
        self.write_register(REG_DETECTION_THRESHOLD, 0x0C if sf6 else 0x0A)

    def _write_sync_word(self) -> None:
        self.write_register(REG_SYNC_WORD, self.sync_word)

    def _write_invert_iq(self) -> None:
        # RegInvertIQ bit 6 inverts the RX path, bit 0 *cleared* inverts the TX path;
        # RegInvertIQ2 0x19 / 0x1D goes with it (Semtech LoRaMac-node sx1276.c values;
        # the arduino-LoRa library writes the same 0x66/0x19 and 0x27/0x1D pairs).
        if self.invert_iq:
            self._update_bits(REG_INVERT_IQ, 0x41, 0x40)
            self.write_register(REG_INVERT_IQ2, 0x19)
        else:
            self._update_bits(REG_INVERT_IQ, 0x41, 0x01)
            self.write_register(REG_INVERT_IQ2, 0x1D)

    def _write_power(self) -> None:
        if self.pa_boost:
            high = self.tx_power > 17
            # Pout = 17 - (15 - OutputPower), or 20 - (15 - OutputPower) with PaDac 0x87.
            output = self.tx_power - (5 if high else 2)
            self.write_register(REG_PA_DAC, 0x87 if high else 0x84)
            self.write_register(REG_PA_CONFIG, 0x80 | 0x70 | output)
        else:
            # RFO: MaxPower 7 gives Pmax = 10.8 + 0.6 * 7 = 15 dBm, Pout = Pmax - (15 - OP).
            # High power must be off on RFO.
            self.write_register(REG_PA_DAC, 0x84)
            self.write_register(REG_PA_CONFIG, 0x70 | self.tx_power)
        self._write_ocp()

    def _write_ocp(self) -> None:
        ma = self.ocp_ma
        # Imax = 45 + 5 * OcpTrim up to 120 mA, then -30 + 10 * OcpTrim up to 240 mA.
        trim = (ma - 45) // 5 if ma <= 120 else (ma + 30) // 10
        self.write_register(REG_OCP, 0x20 | trim)

    def _check_modem(self) -> None:
        if not self._ready:
            raise SX127xError("SX127x not initialised: call init() first")
        if self.sf == 6 and not self.implicit_header:
            raise SX127xError("SF6 works only in implicit header mode: "
                              "call set_implicit_header(True, length) first")

    # --- IRQ -------------------------------------------------------------------------

    def irq_flags(self) -> int:
        return self.read_register(REG_IRQ_FLAGS)

    def clear_irq(self, flags: int = 0xFF) -> None:
        self.write_register(REG_IRQ_FLAGS, flags)

    # --- transmit --------------------------------------------------------------------

    def time_on_air_us(self, length: int) -> int:
        return time_on_air_us(length, self.sf, self.bandwidth, self.coding_rate,
                              self.preamble, self.crc, self.implicit_header, self.ldro)

    def load_tx(self, payload: bytes) -> None:
        """Standby, payload into the FIFO at the TX base, TxDone on DIO0: ready to fire."""
        if not isinstance(payload, (bytes, bytearray)):
            raise TypeError(f"payload must be bytes, not {type(payload).__name__}")
        if not 1 <= len(payload) <= 255:
            raise ValueError(f"payload of {len(payload)} bytes: the FIFO takes 1..255")
        self._check_modem()
        self.standby()  # the FIFO can only be filled in Standby
        self.write_register(REG_FIFO_TX_BASE_ADDR, 0)
        self.write_register(REG_FIFO_ADDR_PTR, 0)
        self._write_fifo(payload)
        self.write_register(REG_PAYLOAD_LENGTH, len(payload))
        self.write_register(REG_DIO_MAPPING_1, DIO0_TX_DONE)
        self.clear_irq()
        self._tx_toa_us = self.time_on_air_us(len(payload))

    def start_tx(self) -> int:
        """Fire what :meth:`load_tx` prepared; returns its time on air in us."""
        self._set_mode(MODE_TX)
        return self._tx_toa_us

    def tx_done(self) -> bool:
        """True (and the IRQ cleared) once TxDone is up; the chip is then in Standby."""
        if self.irq_flags() & IRQ_TX_DONE:
            self.clear_irq(IRQ_TX_DONE)
            self._mode = MODE_STDBY
            return True
        return False

    def transmit(self, payload: bytes) -> int:
        """Send ``payload`` and wait for TxDone; returns the time on air in us."""
        self.load_tx(payload)
        toa_us = self.start_tx()
        toa_ms = (toa_us + 999) // 1000
        timeout_ms = toa_ms + toa_ms // 4 + 100
        start = self._ticks_ms()
        self._sleep_ms(toa_ms)  # nothing can happen before the packet is on air
        while not self.tx_done():
            if self._ticks_diff(self._ticks_ms(), start) > timeout_ms:
                self.standby()
                raise TxTimeout(
                    f"no TxDone {timeout_ms} ms after TX start (time on air {toa_ms} ms)")
            self._sleep_ms(1)
        return toa_us

    # --- receive ---------------------------------------------------------------------

    def receive(self, continuous: bool = True, symbol_timeout: int | None = None) -> None:
        """Start reception: continuous, or single with a timeout in symbols (4..1023)."""
        self._check_modem()
        self.standby()
        self.write_register(REG_FIFO_RX_BASE_ADDR, 0)
        self.write_register(REG_FIFO_ADDR_PTR, 0)
        if self.implicit_header:
            self.write_register(REG_PAYLOAD_LENGTH, self.implicit_length)
        if not continuous:
            symbols = 100 if symbol_timeout is None else symbol_timeout
            if not 4 <= symbols <= 1023:
                raise ValueError(f"RX symbol timeout {symbols!r} outside 4..1023")
            self._update_bits(REG_MODEM_CONFIG_2, 0x03, symbols >> 8)
            self.write_register(REG_SYMB_TIMEOUT_LSB, symbols & 0xFF)
        self.write_register(REG_DIO_MAPPING_1, DIO0_RX_DONE)
        self.clear_irq()
        self._set_mode(MODE_RX_CONTINUOUS if continuous else MODE_RX_SINGLE)

    def read_packet(self) -> "Packet | None":
        """The packet received, as ``(payload, rssi_dbm, snr_db)``, or None if none yet.

        Raises :class:`CrcError` for a packet whose payload CRC failed (its bytes are
        dropped) and :class:`RxTimeout` when a single reception timed out.
        """
        flags = self.irq_flags()
        if flags & IRQ_RX_TIMEOUT:
            self.clear_irq()
            self._mode = MODE_STDBY
            raise RxTimeout("single reception timed out with no packet")
        if not flags & IRQ_RX_DONE:
            return None
        if self._mode == MODE_RX_SINGLE:
            self._mode = MODE_STDBY  # the chip leaves single RX after one packet
        snr = snr_db_from_register(self.read_register(REG_PKT_SNR_VALUE))
        rssi = rssi_dbm(self.read_register(REG_PKT_RSSI_VALUE), snr, self.frequency)
        length = self.read_register(REG_RX_NB_BYTES)
        if flags & IRQ_PAYLOAD_CRC_ERROR:
            self.clear_irq()
            raise CrcError(length, rssi, snr)
        # In continuous RX each packet follows the previous one in the FIFO: read from
        # where this one starts, not from the RX base.
        self.write_register(REG_FIFO_ADDR_PTR, self.read_register(REG_FIFO_RX_CURRENT_ADDR))
        payload = self._read_fifo(length)
        self.clear_irq()
        return payload, rssi, snr

    def wait_packet(self, timeout_ms: int) -> "Packet | None":
        """Poll :meth:`read_packet` for up to ``timeout_ms``; None when nothing came."""
        start = self._ticks_ms()
        while True:
            packet = self.read_packet()
            if packet is not None:
                return packet
            if self._ticks_diff(self._ticks_ms(), start) >= timeout_ms:
                return None
            self._sleep_ms(1)
