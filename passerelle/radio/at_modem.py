"""A serial AT-command LoRa modem used as a single-channel raw radio.

Two module families, one class (:class:`AtModemRadio`), chosen with ``dialect=``:

``"rak3172"``
    RAKwireless RUI3 firmware (RAK3172, RAK3272S, RAK4630...) in LoRa P2P mode
    (RUI3 AT Command Manual, "P2P Instructions"): ``AT+NWM=0`` selects P2P,
    ``AT+P2P=freq:sf:bw:cr:preamble:power`` sets the modem, ``AT+IQINVER`` and
    ``AT+SYNCWORD`` the IQ polarity and the (SX126x, 16-bit) sync word,
    ``AT+PRECV=65534`` listens continuously, ``AT+PRECV=0`` stops listening (the
    manual: in continuous RX most P2P settings are refused with ``AT_BUSY_ERROR``),
    ``AT+PSEND=<hex>`` answers ``OK`` then ``+EVT:TXP2P DONE``. A frame arrives as
    ``+EVT:RXP2P:<rssi>:<snr>:<hex>``; the two-line form some RAK firmwares print,
    ``+EVT:RXP2P, RSSI <rssi>, SNR <snr>`` then ``+EVT:<hex>``, is understood too.
    Status lines: ``OK`` or ``AT_ERROR``, ``AT_PARAM_ERROR``, ``AT_BUSY_ERROR``...

``"rn2483"``
    Microchip RN2483 (RN2483 LoRa Technology Module Command Reference): ``mac pause``
    hands the radio over (answers the pause length in ms), ``radio set freq|sf|bw|cr|
    pwr|prlen|crc|iqi|sync|wdt ...`` answer ``ok``/``invalid_param``/``busy``,
    ``radio rx 0`` answers ``ok`` then ``radio_rx  <hex>`` (or ``radio_err``) and
    leaves receive mode after one frame, so reception is re-armed after each frame
    (after reading ``radio get snr`` and ``radio get pktrssi``). ``radio tx <hex>``
    answers ``ok`` then ``radio_tx_ok`` or ``radio_err``; ``radio rxstop`` leaves RX.
    The radio watchdog (``radio set wdt``) is disabled, or ``radio rx 0`` would end
    with ``radio_err`` after 15 s.

The modem is a single-channel radio: it listens on one uplink channel
(``frequency``/``datarate`` given at construction); LoRaWAN itself is terminated in the
agent. A transmission stops reception, reconfigures only what differs from the current
settings, sends, waits for the end of transmission, and goes back to listening on the
uplink channel.

Clock
-----
These modems have no concentrator counter, so this backend keeps its own: ``tmst`` is
``time.monotonic_ns() // 1000`` modulo 2**32 (:func:`local_tmst`). ``RxFrame.tmst`` is
the moment the frame's event line started to arrive (its arrival minus the time the line
took on the wire at ``baudrate``, minus ``rx_latency_us``), and ``TxRequest.tmst`` is
honoured on the same clock: the transmit command is written so that its last byte
reaches the modem ``tx_latency_us`` before the requested moment. A request whose moment
has already passed is refused with ``TxResult(False, "TOO_LATE")``.

Robustness
----------
One command is in flight at a time, each with its own timeout; lines that are neither a
reply to it nor a known event are counted (``garbage_lines``) and ignored. A modem error
reply raises :class:`RadioError` naming the command (payload-carrying commands are named
by their length, never their content). When the serial device disappears (USB unplugged)
or stops making sense, the port is closed and reopened with backoff, and the modem is
configured again; :meth:`AtModemRadio.stats` counts all of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import re
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal

import serial

from .base import TMST_MODULO, RadioError, RxFrame, TxRequest, TxResult, parse_datarate

__all__ = [
    "AtModemRadio",
    "Dialect",
    "ModemSettings",
    "NoReply",
    "RxError",
    "RxEvent",
    "RxMeta",
    "TxDone",
    "local_tmst",
    "parse_rn2483_line",
    "parse_rui3_line",
    "rui3_sync_word",
    "time_on_air",
    "tmst_delay_us",
]

log = logging.getLogger("passerelle.radio.at_modem")

Dialect = Literal["rak3172", "rn2483"]
CODING_RATES = ("4/5", "4/6", "4/7", "4/8")
# Longest line a modem may send: a 255-byte frame in hex plus the event prefix.
MAX_LINE = 1024


# ------------------------------------------------------------------------------ clock


def local_tmst(monotonic_ns: int | None = None) -> int:
    """This backend's concentrator-like clock: monotonic microseconds modulo 2**32."""
    ns = time.monotonic_ns() if monotonic_ns is None else monotonic_ns
    return (ns // 1000) % TMST_MODULO


def tmst_delay_us(tmst: int, now: int) -> int:
    """Signed microseconds from ``now`` to ``tmst`` on the wrapping 32-bit clock.

    Negative when ``tmst`` is in the past; the half-range rule is how every Semtech
    concentrator host tells "later" from "already passed" across the wrap.
    """
    delta = (tmst - now) % TMST_MODULO
    return delta - TMST_MODULO if delta >= TMST_MODULO // 2 else delta


def time_on_air(
    payload_len: int,
    sf: int,
    bw_khz: int,
    coding_rate: str = "4/5",
    preamble: int = 8,
    crc: bool = True,
    implicit_header: bool = False,
) -> float:
    """LoRa packet duration in seconds: :func:`passerelle.lorawan.airtime.time_on_air` with
    this module's argument order (automatic low data rate optimisation, as the modems do)."""
    from ..lorawan.airtime import parse_coding_rate
    from ..lorawan.airtime import time_on_air as _time_on_air

    return _time_on_air(sf, bw_khz, payload_len, cr=parse_coding_rate(coding_rate),
                        preamble=preamble, implicit_header=implicit_header, crc=crc)


def rui3_sync_word(lora_sync_word: int) -> int:
    """The SX126x 16-bit form RUI3's ``AT+SYNCWORD`` takes of a one-byte LoRa sync word.

    0x34 (LoRaWAN public networks) -> 0x3444, 0x12 (private) -> 0x1424: each nibble
    becomes the high nibble of one byte, whose low nibble is 4.
    """
    if not 0 <= lora_sync_word <= 0xFF:
        raise ValueError(f"LoRa sync word must be one byte, got {lora_sync_word:#x}")
    return ((lora_sync_word & 0xF0) << 8) | ((lora_sync_word & 0x0F) << 4) | 0x0404


class NoReply(RadioError):
    """The modem did not answer a command in time."""


# ----------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RxEvent:
    """A frame the modem heard; rssi/snr None when they must be asked for (RN2483)."""

    payload: bytes
    rssi: float | None = None
    snr: float | None = None


@dataclass(frozen=True, slots=True)
class RxMeta:
    """First line of RUI3's two-line receive event; the payload line follows."""

    rssi: float
    snr: float


@dataclass(frozen=True, slots=True)
class TxDone:
    ok: bool


@dataclass(frozen=True, slots=True)
class RxError:
    """A reception failed (bad CRC, window timeout, watchdog); ``listening``: the modem
    stayed in receive mode (RUI3 continuous mode), else it must be re-armed."""

    reason: str
    listening: bool = False


@dataclass(frozen=True, slots=True)
class Notice:
    """A line the modem prints that needs no action (boot banner)."""

    text: str


Event = RxEvent | RxMeta | TxDone | RxError | Notice

_RUI3_RX = re.compile(r"^\+EVT:RXP2P:(-?\d+(?:\.\d+)?):(-?\d+(?:\.\d+)?):([0-9A-Fa-f]+)$")
_RUI3_RX_META = re.compile(r"^\+EVT:RXP2P, RSSI (-?\d+(?:\.\d+)?), SNR (-?\d+(?:\.\d+)?)$")
_RUI3_RX_DATA = re.compile(r"^\+EVT:([0-9A-Fa-f]+)$")
# Boot banner (AT+NWM, ATZ) and RUI3's remark before refusing AT+PRECV in RX mode.
_RUI3_BANNER = re.compile(r"^(?:RAKwireless\b.*|-{8,}|Current Work Mode: .*|P2P_RX_ON already)$")
_RUI3_STATUS_ERROR = re.compile(r"^AT_[A-Z0-9_]+$")
# Query replies: "AT+NWM=0" (some versions print the bare value).
_RUI3_NWM = re.compile(r"^(?:AT\+NWM=)?([0-2])$")
_RUI3_VER = re.compile(r"^(?:AT\+VER=)?([^+\s]\S*)$")
_RN_RX = re.compile(r"^radio_rx\s+([0-9A-Fa-f]+)$")
_RN_BANNER = re.compile(r"^RN2[0-9]{3} \d+\.\d+\.\d+ ")
_RN_ERRORS = frozenset({"invalid_param", "busy", "err", "denied", "invalid_data_len"})


def _hex_payload(text: str) -> bytes | None:
    if len(text) % 2:
        return None
    return bytes.fromhex(text)


def parse_rui3_line(line: str, *, payload_expected: bool = False) -> Event | None:
    """Classify one RUI3 line as an unsolicited event, or None (a reply, or garbage).

    ``payload_expected``: the previous line was ``+EVT:RXP2P, RSSI .., SNR ..``.
    """
    if m := _RUI3_RX.match(line):
        payload = _hex_payload(m.group(3))
        if payload is None:
            return None
        return RxEvent(payload, float(m.group(1)), float(m.group(2)))
    if m := _RUI3_RX_META.match(line):
        return RxMeta(float(m.group(1)), float(m.group(2)))
    if payload_expected and (m := _RUI3_RX_DATA.match(line)):
        payload = _hex_payload(m.group(1))
        return None if payload is None else RxEvent(payload)
    if line == "+EVT:TXP2P DONE":
        return TxDone(True)
    if line == "+EVT:RXP2P RECEIVE TIMEOUT":
        return RxError("receive timeout")
    if line == "+EVT:RXP2P RECEIVE ERROR":
        # RUI3 (service_lora_p2p.c, OnRxError) stays in RX in continuous mode 65534.
        return RxError("receive error", listening=True)
    if _RUI3_BANNER.match(line):
        return Notice(line)
    return None


def parse_rn2483_line(line: str, *, tx_pending: bool = False) -> Event | None:
    """Classify one RN2483 line as an unsolicited event, or None (a reply, or garbage).

    ``radio_err`` ends a transmission when one is pending, else a reception.
    """
    if m := _RN_RX.match(line):
        payload = _hex_payload(m.group(1))
        return None if payload is None else RxEvent(payload)
    if line == "radio_tx_ok":
        return TxDone(True)
    if line == "radio_err":
        return TxDone(False) if tx_pending else RxError("radio_err")
    if _RN_BANNER.match(line):
        return Notice(line)
    return None


# --------------------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True)
class ModemSettings:
    """What the modem's radio is set to."""

    frequency_hz: int
    sf: int
    bw_khz: int
    coding_rate: str = "4/5"
    preamble: int = 8
    power_dbm: int = 14
    invert_iq: bool = False
    crc: bool = True

    @property
    def datarate(self) -> str:
        return f"SF{self.sf}BW{self.bw_khz}"


@dataclass(frozen=True, slots=True)
class _Limits:
    frequency_hz: tuple[tuple[int, int], ...]
    sf: range
    power_dbm: range
    preamble: range
    max_payload: int

    def frequency_ok(self, hz: int) -> bool:
        return any(lo <= hz <= hi for lo, hi in self.frequency_hz)


# RUI3 AT+P2P (atcmd_p2p.c): 150-960 MHz (a RAK3172 also refuses the other variant's
# band), SF 5-12, 5-22 dBm, preamble 5-65535; AT+PSEND: up to 255 bytes in practice
# (the firmware's buffer and length are 255/uint8_t).
_RUI3_LIMITS = _Limits(
    ((150_000_000, 960_000_000),), range(5, 13), range(5, 23), range(5, 65536), 255
)
# RN2483 command reference: 433.05-434.79 and 863-870 MHz, sf7-sf12, pwr -3..15,
# prlen 0-65535, 255-byte LoRa payload.
_RN2483_LIMITS = _Limits(
    ((433_050_000, 434_790_000), (863_000_000, 870_000_000)),
    range(7, 13),
    range(-3, 16),
    range(0, 65536),
    255,
)


# ---------------------------------------------------------------------------- dialects


class _Rui3:
    """RAK RUI3 AT commands, LoRa P2P mode."""

    name = "rak3172"
    baudrate = 115200
    ok = "OK"
    value_is_reply = False
    limits = _RUI3_LIMITS

    def __init__(self) -> None:
        # Whether AT+P2P takes a 7th field ":1", "runtime only, not saved to flash".
        self._runtime_p2p: bool | None = None

    def is_error(self, line: str) -> bool:
        return bool(_RUI3_STATUS_ERROR.match(line))

    def parse(self, line: str, radio: AtModemRadio) -> Event | None:
        return parse_rui3_line(line, payload_expected=radio._rx_meta is not None)

    async def initialize(self, radio: AtModemRadio) -> str:
        await radio._wake("AT")
        mode = await radio._command("AT+NWM=?", expect=_RUI3_NWM)
        if mode is not None and mode.group(1) != "0":
            # The module answers OK (some versions print nothing) and reboots into P2P.
            log.info("%s: switching to LoRa P2P mode (AT+NWM=0), the module restarts", radio)
            with contextlib.suppress(NoReply):
                await radio._command("AT+NWM=0")
            await asyncio.sleep(radio.mode_switch_s)
            await radio._wake("AT", attempts=10)
            mode = await radio._command("AT+NWM=?", expect=_RUI3_NWM)
            if mode is None or mode.group(1) != "0":
                raise RadioError(f"{radio}: AT+NWM=0 did not switch the modem to LoRa P2P")
        version = await radio._command("AT+VER=?", expect=_RUI3_VER)
        self._runtime_p2p = None
        await radio._command("AT+PRECV=0")  # a previous run may have left it listening
        word = rui3_sync_word(radio.sync_word)
        await radio._command(f"AT+SYNCWORD={word:04X}")
        return version.group(1) if version else "?"

    async def apply(
        self, radio: AtModemRadio, old: ModemSettings | None, new: ModemSettings
    ) -> None:
        p2p = (new.frequency_hz, new.sf, new.bw_khz, new.coding_rate, new.preamble, new.power_dbm)
        if old is None or p2p != (
            old.frequency_hz,
            old.sf,
            old.bw_khz,
            old.coding_rate,
            old.preamble,
            old.power_dbm,
        ):
            cr = CODING_RATES.index(new.coding_rate)
            command = (
                f"AT+P2P={new.frequency_hz}:{new.sf}:{new.bw_khz}:{cr}:{new.preamble}:"
                f"{new.power_dbm}"
            )
            await self._p2p(radio, command)
        if old is None or old.invert_iq != new.invert_iq:
            await radio._command(f"AT+IQINVER={int(new.invert_iq)}")
        # RUI3 P2P has no CRC switch: frames always carry one. LoRaWAN receivers in
        # explicit-header mode accept a downlink with a CRC.

    async def _p2p(self, radio: AtModemRadio, command: str) -> None:
        """AT+P2P without wearing the module's flash when the firmware allows it.

        Six fields store the settings in flash (RUI3 atcmd_p2p.c); newer RUI3 accepts a
        seventh, ``1``, for runtime-only settings, which matters when every downlink
        switches the settings twice. Older firmware refuses seven fields.
        """
        if self._runtime_p2p is False:
            await radio._command(command)
            return
        try:
            await radio._command(command + ":1")
        except RadioError as exc:
            if self._runtime_p2p or "AT_PARAM_ERROR" not in str(exc):
                raise
            await radio._command(command)  # raises if the values were the problem
            self._runtime_p2p = False
            log.info("%s: firmware has no runtime AT+P2P; settings go to flash", radio)
        else:
            self._runtime_p2p = True

    async def start_rx(self, radio: AtModemRadio) -> None:
        try:
            await radio._command("AT+PRECV=65534")
        except RadioError as exc:
            if "AT_BUSY_ERROR" not in str(exc):
                raise
            # Already in a receive mode we did not ask for: leave it and re-enter.
            await radio._command("AT+PRECV=0")
            await radio._command("AT+PRECV=65534")

    async def stop_rx(self, radio: AtModemRadio) -> None:
        await radio._command("AT+PRECV=0")

    def tx_command(self, payload: bytes) -> tuple[str, str]:
        return f"AT+PSEND={payload.hex().upper()}", f"AT+PSEND=<{len(payload)} bytes>"

    async def link_quality(self, radio: AtModemRadio) -> tuple[float, float]:
        raise RadioError(f"{radio}: RUI3 reports RSSI and SNR only in the receive event")


class _Rn2483:
    """Microchip RN2483 ``mac``/``radio``/``sys`` commands."""

    name = "rn2483"
    baudrate = 57600
    ok = "ok"
    value_is_reply = True
    limits = _RN2483_LIMITS
    _int = re.compile(r"^(-?\d+)$")

    def __init__(self) -> None:
        self._rssi_command: str | None = "radio get pktrssi"

    def is_error(self, line: str) -> bool:
        return line in _RN_ERRORS

    def parse(self, line: str, radio: AtModemRadio) -> Event | None:
        return parse_rn2483_line(line, tx_pending=radio._tx_waiter is not None)

    async def initialize(self, radio: AtModemRadio) -> str:
        version = await radio._wake("sys get ver", expect=re.compile(r"^(RN2\d{3}) (\S+).*$"))
        assert version is not None
        await self._pause_mac(radio)
        try:
            # Leaves a receive left armed by a previous run; firmware before 1.0.5 lacks it.
            await radio._command("radio rxstop")
        except NoReply:
            raise
        except RadioError as exc:
            log.info("%s: %s (older firmware?)", radio, exc)
        await radio._command("radio set mod lora")
        await radio._command("radio set wdt 0")
        await radio._command(f"radio set sync {radio.sync_word:02X}")
        self._rssi_command = "radio get pktrssi"
        return f"{version.group(1)} {version.group(2)}"

    async def _pause_mac(self, radio: AtModemRadio) -> None:
        paused = await radio._command("mac pause", expect=self._int)
        assert paused is not None
        if int(paused.group(1)) == 0:
            raise RadioError(f"{radio}: 'mac pause' refused (LoRaWAN stack busy)")

    async def apply(
        self, radio: AtModemRadio, old: ModemSettings | None, new: ModemSettings
    ) -> None:
        def changed(field: str) -> bool:
            return old is None or getattr(old, field) != getattr(new, field)

        if changed("frequency_hz"):
            await radio._command(f"radio set freq {new.frequency_hz}")
        if changed("sf"):
            await radio._command(f"radio set sf sf{new.sf}")
        if changed("bw_khz"):
            await radio._command(f"radio set bw {new.bw_khz}")
        if changed("coding_rate"):
            await radio._command(f"radio set cr {new.coding_rate}")
        if changed("preamble"):
            await radio._command(f"radio set prlen {new.preamble}")
        if changed("power_dbm"):
            await radio._command(f"radio set pwr {new.power_dbm}")
        if changed("invert_iq"):
            await radio._command(f"radio set iqi {'on' if new.invert_iq else 'off'}")
        if changed("crc"):
            await radio._command(f"radio set crc {'on' if new.crc else 'off'}")

    async def start_rx(self, radio: AtModemRadio) -> None:
        # The pause lasts ~49.7 days; renewing it at each arming keeps it from expiring.
        await self._pause_mac(radio)
        await radio._command("radio rx 0")

    async def stop_rx(self, radio: AtModemRadio) -> None:
        await radio._command("radio rxstop")

    def tx_command(self, payload: bytes) -> tuple[str, str]:
        return f"radio tx {payload.hex().upper()}", f"radio tx <{len(payload)} bytes>"

    async def link_quality(self, radio: AtModemRadio) -> tuple[float, float]:
        snr = await radio._command("radio get snr", expect=self._int)
        rssi = None
        while self._rssi_command is not None and rssi is None:
            try:
                rssi = await radio._command(self._rssi_command, expect=self._int)
            except RadioError as exc:
                if "invalid_param" not in str(exc):
                    raise
                # Older firmwares have no pktrssi; some have only "radio get rssi".
                self._rssi_command = (
                    "radio get rssi" if self._rssi_command.endswith("pktrssi") else None
                )
        assert snr is not None
        return (float(rssi.group(1)) if rssi else 0.0), float(snr.group(1))


_DIALECTS: dict[str, type[_Rui3] | type[_Rn2483]] = {"rak3172": _Rui3, "rn2483": _Rn2483}


# ------------------------------------------------------------------------------ engine


@dataclass(slots=True)
class _Pending:
    """The one command in flight."""

    command: str
    label: str
    expect: re.Pattern[str] | None
    future: asyncio.Future[re.Match[str] | None]
    value: re.Match[str] | None = None


class _Session:
    """One opening of the serial port and the thread that reads it."""

    def __init__(self, port: serial.SerialBase) -> None:
        self.port = port
        self.closing = False
        self.ended = asyncio.Event()
        self.thread: threading.Thread | None = None


_COUNTERS = (
    "rx_frames",
    "rx_dropped",
    "rx_errors",
    "rx_quality_unknown",
    "tx_ok",
    "tx_failed",
    "tx_too_late",
    "tx_too_early",
    "tx_refused",
    "commands",
    "command_errors",
    "timeouts",
    "garbage_lines",
    "notices",
    "disconnects",
    "resets",
    "reopens",
    "reopen_failures",
)


class AtModemRadio:
    """A RAK3172 (RUI3 P2P) or RN2483 serial modem as a :class:`~.base.Radio`.

    ``port`` is anything :func:`serial.serial_for_url` opens: a device path (prefer a
    stable ``/dev/serial/by-id/...`` link, which comes back after a USB replug), a PTY.
    ``frequency`` (MHz), ``datarate``, ``coding_rate`` and ``preamble`` are the uplink
    channel it listens on; ``tx_power`` (dBm) is the power it is left configured with.

    :meth:`start` opens and configures the modem and raises :class:`RadioError` if it
    cannot; afterwards a lost device is reopened in the background (``reopen_interval``
    doubling up to ``reopen_max_interval``) while :meth:`transmit` raises RadioError.
    """

    def __init__(
        self,
        port: str,
        dialect: Dialect,
        *,
        frequency: float = 868.1,
        datarate: str = "SF7BW125",
        coding_rate: str = "4/5",
        preamble: int = 8,
        tx_power: int = 14,
        sync_word: int = 0x34,
        baudrate: int | None = None,
        gateway: str = "",
        command_timeout: float = 1.0,
        reopen_interval: float = 1.0,
        reopen_max_interval: float = 30.0,
        tx_prepare_s: float = 0.1,
        tx_latency_us: int = 0,
        rx_latency_us: int = 0,
        late_tolerance_us: int = 1000,
        max_schedule_s: float = 30.0,
        mode_switch_s: float = 1.0,
        queue_size: int = 256,
    ) -> None:
        if dialect not in _DIALECTS:
            raise ValueError(
                f"unknown modem dialect {dialect!r} (expected one of {sorted(_DIALECTS)})"
            )
        self._dialect = _DIALECTS[dialect]()
        self.port = port
        self.dialect: Dialect = dialect
        self.gateway = gateway
        self.sync_word = sync_word
        rui3_sync_word(sync_word)  # validates it for both dialects
        sf, bw = parse_datarate(datarate)
        if coding_rate not in CODING_RATES:
            raise ValueError(f"coding_rate must be one of {CODING_RATES}, got {coding_rate!r}")
        self._rx_settings = ModemSettings(
            frequency_hz=round(frequency * 1e6),
            sf=sf,
            bw_khz=bw,
            coding_rate=coding_rate,
            preamble=preamble,
            power_dbm=tx_power,
            invert_iq=False,  # LoRaWAN uplinks: normal IQ
            crc=True,  # LoRaWAN uplinks carry a payload CRC
        )
        problem = self._unsupported(self._rx_settings)
        if problem:
            raise ValueError(f"{dialect} modem on {port}: uplink channel {problem}")
        self.baudrate = baudrate or self._dialect.baudrate
        self.command_timeout = command_timeout
        self.reopen_interval = reopen_interval
        self.reopen_max_interval = reopen_max_interval
        self.mode_switch_s = mode_switch_s
        self._prepare_ns = int(tx_prepare_s * 1e9)
        self._tx_latency_ns = tx_latency_us * 1000
        self._rx_latency_ns = rx_latency_us * 1000
        self._late_tolerance_ns = late_tolerance_us * 1000
        self._max_schedule_us = int(max_schedule_s * 1e6)

        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: _Session | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._io_lock = asyncio.Lock()  # one command sequence at a time
        self._tx_lock = asyncio.Lock()  # one transmission at a time
        self._pending: _Pending | None = None
        self._tx_waiter: asyncio.Future[bool] | None = None
        self._rx_meta: tuple[RxMeta, int] | None = None
        self._applied: ModemSettings | None = None
        self._listening = False  # the modem is in receive mode (as far as we know)
        self._tx_active = False
        self._stopping = False
        self._frames: asyncio.Queue[RxFrame] = asyncio.Queue(maxsize=queue_size)
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self.version = ""

    def __str__(self) -> str:
        return f"{self.dialect} modem on {self.port}"

    # ------------------------------------------------------------------ Radio API

    async def start(self) -> None:
        """Open and configure the modem, start listening; RadioError if that fails."""
        if self._supervisor is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        await self._connect()
        self._supervisor = asyncio.create_task(self._supervise(), name=f"supervise {self}")

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
            self._supervisor = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, RadioError):
                await task
        if self._session is not None and not self._session.ended.is_set():
            async with self._io_lock:
                with contextlib.suppress(RadioError):
                    await self._dialect.stop_rx(self)
        await self._close_session()

    async def receive(self) -> RxFrame:
        """The next frame heard on the uplink channel (``tmst`` on :func:`local_tmst`)."""
        return await self._frames.get()

    async def transmit(self, request: TxRequest) -> TxResult:
        """Send ``request`` now or at its ``tmst`` (on :func:`local_tmst`'s clock).

        Returns once the modem reported the end of transmission (``TxResult(True)``), or
        refuses without sending: ``TOO_LATE`` (moment passed, also while waiting behind
        another transmission), ``TOO_EARLY`` (over ``max_schedule_s`` ahead), ``TX_FREQ``
        / ``TX_POWER`` (outside the module's range; power is rounded down, never up).
        Raises RadioError for a malformed request, a modem error reply, a timeout or a
        lost device; the modem is put back to receive in every case.
        """
        settings = self._tx_settings(request)
        if isinstance(settings, TxResult):
            self._counts["tx_refused"] += 1
            return settings
        async with self._tx_lock:
            target_ns = None
            if request.tmst is not None:
                now_ns = time.monotonic_ns()
                delay_us = tmst_delay_us(request.tmst, local_tmst(now_ns))
                if delay_us < 0:
                    return self._too_late(request, -delay_us)
                if delay_us > self._max_schedule_us:
                    self._counts["tx_too_early"] += 1
                    return TxResult(False, "TOO_EARLY")
                target_ns = now_ns + delay_us * 1000
                await _sleep_until(target_ns - self._prepare_ns)
            async with self._io_lock:
                return await self._transmit_locked(request, settings, target_ns)

    def stats(self) -> dict[str, Any]:
        """Counters since construction, plus ``connected`` and ``listening``."""
        connected = self._session is not None and not self._session.ended.is_set()
        return {**self._counts, "connected": connected, "listening": self._listening}

    # --------------------------------------------------------------- transmission

    def _unsupported(self, s: ModemSettings) -> str | None:
        limits = self._dialect.limits
        if s.sf not in limits.sf:
            return f"SF{s.sf} is not supported (SF{limits.sf.start}-SF{limits.sf.stop - 1})"
        if s.preamble not in limits.preamble:
            return f"preamble {s.preamble} is out of range"
        if not limits.frequency_ok(s.frequency_hz):
            return f"frequency {s.frequency_hz} Hz is out of range"
        if s.power_dbm not in limits.power_dbm:
            return f"power {s.power_dbm} dBm is out of range"
        return None

    def _tx_settings(self, request: TxRequest) -> ModemSettings | TxResult:
        try:
            sf, bw = parse_datarate(request.datarate)
        except ValueError as exc:
            raise RadioError(f"{self}: transmit: {exc}") from None
        if request.coding_rate not in CODING_RATES:
            raise RadioError(f"{self}: transmit: coding rate {request.coding_rate!r} unknown")
        limits = self._dialect.limits
        if not 1 <= len(request.payload) <= limits.max_payload:
            raise RadioError(
                f"{self}: transmit: payload of {len(request.payload)} bytes "
                f"(1-{limits.max_payload} accepted)"
            )
        frequency_hz = round(request.frequency * 1e6)
        if not limits.frequency_ok(frequency_hz):
            return TxResult(False, "TX_FREQ")
        # Never above what was asked: the power is part of what the regulator allows.
        power = math.floor(request.power + 1e-9)
        if power not in limits.power_dbm:
            return TxResult(False, "TX_POWER")
        settings = ModemSettings(
            frequency_hz,
            sf,
            bw,
            request.coding_rate,
            request.preamble,
            power,
            request.invert_iq,
            request.crc,
        )
        problem = self._unsupported(settings)
        if problem:
            raise RadioError(f"{self}: transmit: {problem}")
        return settings

    def _too_late(self, request: TxRequest, late_us: int) -> TxResult:
        self._counts["tx_too_late"] += 1
        log.info(
            "%s: downlink %d us too late, not sent",
            self,
            late_us,
            extra={"cause": "radio.at_modem.too_late", "tmst": request.tmst},
        )
        return TxResult(False, "TOO_LATE")

    async def _transmit_locked(
        self, request: TxRequest, settings: ModemSettings, target_ns: int | None
    ) -> TxResult:
        self._tx_active = True
        try:
            self._require_connected()
            if target_ns is not None and time.monotonic_ns() > target_ns:
                return self._too_late(request, (time.monotonic_ns() - target_ns) // 1000)
            if self._listening:
                self._listening = False  # unknown until stop_rx answered: re-arm afterwards
                await self._dialect.stop_rx(self)
            await self._apply(settings)
            command, label = self._dialect.tx_command(request.payload)
            if target_ns is not None:
                send_ns = target_ns - self._wire_ns(len(command) + 2) - self._tx_latency_ns
                now = time.monotonic_ns()
                if now > send_ns + self._late_tolerance_ns:
                    return self._too_late(request, (now - send_ns) // 1000)
                await _sleep_until(send_ns)
            assert self._loop is not None
            self._tx_waiter = self._loop.create_future()
            log.debug("%s: transmit %s at %s", self, request.payload.hex(), settings)
            await self._command(command, label=label)
            airtime = time_on_air(
                len(request.payload),
                settings.sf,
                settings.bw_khz,
                settings.coding_rate,
                settings.preamble,
                settings.crc,
            )
            try:
                async with asyncio.timeout(airtime * 1.5 + self.command_timeout):
                    sent = await self._tx_waiter
            except TimeoutError:
                self._counts["timeouts"] += 1
                raise RadioError(f"{self}: {label}: no end of transmission reported") from None
            if not sent:
                raise RadioError(f"{self}: {label} failed: radio_err")
            self._counts["tx_ok"] += 1
            return TxResult(True)
        except RadioError:
            self._counts["tx_failed"] += 1
            raise
        finally:
            self._tx_waiter = None
            await self._back_to_rx()
            self._tx_active = False

    async def _back_to_rx(self) -> None:
        """Uplink settings and continuous receive, after a transmission or a reception."""
        if self._session is None or self._session.ended.is_set():
            return
        try:
            await self._apply(self._rx_settings)
            if not self._listening:
                await self._dialect.start_rx(self)
                self._listening = True
        except RadioError as exc:
            log.warning(
                "%s: cannot go back to receive (%s); reconfiguring the modem",
                self,
                exc,
                extra={"cause": "radio.at_modem.rearm"},
            )
            self._end_session(self._session, "resets", exc)

    async def _apply(self, target: ModemSettings) -> None:
        if target == self._applied:
            return
        old, self._applied = self._applied, None  # unknown until every command succeeded
        await self._dialect.apply(self, old, target)
        self._applied = target

    def _wire_ns(self, nbytes: int) -> int:
        """How long ``nbytes`` take on the UART (8N1: 10 bits each)."""
        return nbytes * 10 * 1_000_000_000 // self.baudrate

    # ------------------------------------------------------------------- commands

    def _require_connected(self) -> _Session:
        session = self._session
        if session is None or session.ended.is_set():
            raise RadioError(f"{self}: not connected (device gone or being reopened)")
        return session

    def _send_raw(self, command: str) -> None:
        session = self._require_connected()
        try:
            session.port.write(command.encode("ascii") + b"\r\n")
        except (serial.SerialException, OSError) as exc:
            self._end_session(session, "disconnects", exc)
            raise RadioError(f"{self}: cannot write to the device: {exc}") from None

    async def _command(
        self,
        command: str,
        *,
        expect: re.Pattern[str] | None = None,
        timeout: float | None = None,
        label: str | None = None,
    ) -> re.Match[str] | None:
        """Send one command; return the match of ``expect`` on its value line, if any.

        Raises RadioError naming the command (``label``, which replaces it where the
        command carries a payload) on an error status, a timeout or a lost device.
        """
        assert self._loop is not None
        assert self._pending is None, "one command in flight at a time"
        label = label or command
        pending = _Pending(command, label, expect, self._loop.create_future())
        self._pending = pending
        self._counts["commands"] += 1
        timeout = timeout or self.command_timeout
        try:
            self._send_raw(command)
            async with asyncio.timeout(timeout):
                return await pending.future
        except TimeoutError:
            self._counts["timeouts"] += 1
            raise NoReply(f"{self}: {label!r}: no reply within {timeout:g} s") from None
        finally:
            self._pending = None

    async def _wake(
        self,
        command: str,
        *,
        expect: re.Pattern[str] | None = None,
        attempts: int = 3,
    ) -> re.Match[str] | None:
        """First command after opening: a booting or sleeping modem may miss one."""
        for attempt in range(attempts):
            try:
                return await self._command(command, expect=expect)
            except RadioError:
                if attempt == attempts - 1 or self._session is None or self._session.ended.is_set():
                    raise
                await asyncio.sleep(0.1)
        raise AssertionError("unreachable")

    # ---------------------------------------------------------------------- lines

    def _on_line(self, session: _Session, raw: bytes, arrived_ns: int) -> None:
        """One line from the reader thread, in the event loop."""
        if session is not self._session or session.ended.is_set():
            return
        try:
            line = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            self._garbage(raw)
            return
        if not line or not line.isprintable():
            if line:
                self._garbage(raw)
            return
        pending = self._pending
        if pending is not None and line == pending.command:
            return  # command echo (RUI3 "ATE")
        event = self._dialect.parse(line, self)
        if isinstance(event, Notice) and pending is not None and pending.expect is not None:
            # "sys get ver" is answered by the very line the RN2483 prints at boot.
            event = None if pending.expect.match(line) else event
        if event is not None:
            self._on_event(event, line, arrived_ns)
            return
        if self._rx_meta is not None:
            self._rx_meta = None  # the payload line of a two-line event never came
            self._counts["rx_errors"] += 1
        if pending is None or pending.future.done():
            self._garbage(raw)
            return
        if self._dialect.is_error(line):
            self._counts["command_errors"] += 1
            pending.future.set_exception(RadioError(f"{self}: {pending.label!r} refused: {line}"))
        elif line == self._dialect.ok:
            if pending.expect is not None and pending.value is None:
                self._counts["command_errors"] += 1
                pending.future.set_exception(
                    RadioError(f"{self}: {pending.label!r}: answered {line} without a value")
                )
            else:
                pending.future.set_result(pending.value)
        elif pending.expect is not None and pending.value is None and pending.expect.match(line):
            m = pending.expect.match(line)
            if self._dialect.value_is_reply:
                pending.future.set_result(m)  # RN2483 answers a query with the value alone
            else:
                pending.value = m  # RUI3: the value line, then OK
        else:
            self._garbage(raw)

    def _garbage(self, raw: bytes) -> None:
        self._counts["garbage_lines"] += 1
        log.debug(
            "%s: ignored line %r",
            self,
            raw[:80],
            extra={"cause": "radio.at_modem.garbage"},
        )

    def _on_event(self, event: Event, line: str, arrived_ns: int) -> None:
        started_ns = arrived_ns - self._wire_ns(len(line) + 2) - self._rx_latency_ns
        match event:
            case RxMeta():
                self._rx_meta = (event, started_ns)
            case RxEvent(payload=payload, rssi=None):
                if self._rx_meta is not None:
                    meta, started_ns = self._rx_meta
                    self._rx_meta = None
                    self._deliver(payload, meta.rssi, meta.snr, started_ns)
                else:  # RN2483: left receive mode; ask for the link quality, re-arm
                    self._listening = False
                    self._spawn(self._finish_rn_reception(payload, started_ns))
            case RxEvent(payload=payload, rssi=rssi, snr=snr):
                self._deliver(payload, rssi or 0.0, snr or 0.0, started_ns)
            case TxDone(ok=ok):
                if self._tx_waiter is not None and not self._tx_waiter.done():
                    self._tx_waiter.set_result(ok)
                else:
                    self._garbage(line.encode())
            case RxError(reason=reason, listening=listening):
                self._counts["rx_errors"] += 1
                log.debug("%s: reception failed: %s", self, reason)
                if not listening:
                    self._listening = False
                    self._spawn(self._rearm())
            case Notice():
                self._counts["notices"] += 1
                log.debug("%s: %s", self, line)

    def _deliver(self, payload: bytes, rssi: float, snr: float, started_ns: int) -> None:
        s = self._rx_settings
        frame = RxFrame(
            payload=payload,
            frequency=s.frequency_hz / 1e6,
            datarate=s.datarate,
            coding_rate=s.coding_rate,
            rssi=rssi,
            snr=snr,
            tmst=local_tmst(started_ns),
            gateway=self.gateway,
            crc_ok=True,  # both modems report only frames whose CRC checked
        )
        log.debug("%s: received %s rssi=%s snr=%s", self, payload.hex(), rssi, snr)
        if self._frames.full():
            self._frames.get_nowait()
            self._counts["rx_dropped"] += 1
            log.warning(
                "%s: receive queue full, oldest frame dropped",
                self,
                extra={"cause": "radio.at_modem.rx_dropped"},
            )
        self._frames.put_nowait(frame)
        self._counts["rx_frames"] += 1

    async def _finish_rn_reception(self, payload: bytes, started_ns: int) -> None:
        async with self._io_lock:
            rssi = snr = 0.0
            try:
                rssi, snr = await self._dialect.link_quality(self)
            except RadioError as exc:
                self._counts["rx_quality_unknown"] += 1
                log.warning("%s: link quality of a received frame unknown: %s", self, exc)
            self._deliver(payload, rssi, snr, started_ns)
            if not self._tx_active:
                await self._back_to_rx()

    async def _rearm(self) -> None:
        async with self._io_lock:
            if not self._tx_active:
                await self._back_to_rx()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ----------------------------------------------------------- port and session

    def _open_port(self) -> serial.SerialBase:
        return serial.serial_for_url(
            self.port, baudrate=self.baudrate, timeout=0.2, write_timeout=2.0
        )

    async def _connect(self) -> None:
        try:
            port = await asyncio.to_thread(self._open_port)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise RadioError(f"{self}: cannot open: {exc}") from None
        session = _Session(port)
        self._session = session
        self._applied = None
        self._listening = False
        self._rx_meta = None
        assert self._loop is not None
        session.thread = threading.Thread(
            target=self._read_lines, args=(session, self._loop), name=f"read {self}", daemon=True
        )
        session.thread.start()
        try:
            async with self._io_lock:
                self.version = await self._dialect.initialize(self)
                await self._apply(self._rx_settings)
                await self._dialect.start_rx(self)
                self._listening = True
        except BaseException:
            await self._close_session()
            raise
        log.info("%s: %s listening on %s", self, self.version, self._rx_settings)

    def _read_lines(self, session: _Session, loop: asyncio.AbstractEventLoop) -> None:
        """Reader thread: blocking reads, one callback into the loop per line."""
        buffer = bytearray()
        while not session.closing:
            try:
                chunk = session.port.read(max(1, session.port.in_waiting))
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                # TypeError/AttributeError: pyserial's state when closed under our feet.
                if not session.closing:
                    with contextlib.suppress(RuntimeError):  # loop closed
                        loop.call_soon_threadsafe(self._end_session, session, "disconnects", exc)
                return
            if not chunk:
                continue
            arrived_ns = time.monotonic_ns()
            buffer += chunk
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                try:
                    loop.call_soon_threadsafe(self._on_line, session, line, arrived_ns)
                except RuntimeError:
                    return
            if len(buffer) > MAX_LINE:
                overflow = bytes(buffer)
                buffer.clear()
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._on_line, session, overflow, arrived_ns)

    def _end_session(self, session: _Session, counter: str, why: object) -> None:
        """The device went away (or must be reconfigured): fail waiters, wake the supervisor."""
        if session is not self._session or session.ended.is_set():
            return
        self._counts[counter] += 1
        session.ended.set()
        self._listening = False
        self._applied = None
        log.warning(
            "%s: %s: %s",
            self,
            "device lost" if counter == "disconnects" else "reconfiguring",
            why,
            extra={"cause": f"radio.at_modem.{counter}"},
        )
        error = RadioError(f"{self}: device lost: {why}")
        if self._pending is not None and not self._pending.future.done():
            self._pending.future.set_exception(error)
        if self._tx_waiter is not None and not self._tx_waiter.done():
            self._tx_waiter.set_exception(error)

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        if session is None:
            return
        session.closing = True
        session.ended.set()
        self._listening = False
        with contextlib.suppress(Exception):
            session.port.cancel_read()
        if session.thread is not None:
            await asyncio.to_thread(session.thread.join, 2.0)
        with contextlib.suppress(Exception):
            session.port.close()

    async def _supervise(self) -> None:
        """Reopen and reconfigure the modem whenever its session ends."""
        while not self._stopping:
            session = self._session
            if session is not None:
                await session.ended.wait()
            async with self._io_lock:
                await self._close_session()
            delay = self.reopen_interval
            while not self._stopping:
                await asyncio.sleep(delay * random.uniform(0.8, 1.2))
                try:
                    await self._connect()
                except RadioError as exc:
                    self._counts["reopen_failures"] += 1
                    log.warning(
                        "%s: reopen failed: %s",
                        self,
                        exc,
                        extra={"cause": "radio.at_modem.reopen"},
                    )
                    delay = min(delay * 2, self.reopen_max_interval)
                else:
                    self._counts["reopens"] += 1
                    break


async def _sleep_until(monotonic_ns: int) -> None:
    delay = (monotonic_ns - time.monotonic_ns()) / 1e9
    if delay > 0:
        await asyncio.sleep(delay)
