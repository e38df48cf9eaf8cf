"""Simulated serial LoRa modems on a real pseudo-terminal: RAK3172 (RUI3, LoRa P2P) and
Microchip RN2483.

The code under test opens :attr:`AtModemSim.path` with pyserial exactly as it would open
``/dev/ttyUSB0``: the path is a symlink to the slave side of a PTY pair (like
``/dev/serial/by-id/...``), and the simulator answers on the master side from a thread.

What it models, from the vendors' documents and firmware sources:

* RUI3 (RUI3 AT Command Manual; RUI3 ``atcmd_p2p.c`` / ``service_lora_p2p.c``):
  ``AT+NWM`` (answers OK, then reboots into the mode and prints a banner), ``AT+P2P``
  (150-960 MHz but only this variant's band, SF 5-12, BW 125/250/500, CR 0-3, preamble
  5-65535, power 5-22; a 7th field ``1`` keeps the settings out of flash, unless
  ``runtime_p2p=False`` models an older firmware), ``AT+IQINVER``, ``AT+SYNCWORD``,
  ``AT+PRECV`` (65534 continuous; another non-zero value while listening prints
  ``P2P_RX_ON already`` and ``AT_BUSY_ERROR``; 0 stops), ``AT+PSEND``
  (``AT_BUSY_ERROR`` while listening or sending, ``+EVT:TXP2P DONE`` after the time on
  air), P2P commands in LoRaWAN mode answer ``AT_MODE_NO_SUPPORT``, unknown ones
  ``AT_COMMAND_NOT_FOUND``. Status lines are
  framed ``\\r\\nOK\\r\\n``. Settings survive a replug (RUI3 keeps them in flash); the
  receive mode does not.
* RN2483 (RN2483 LoRa Technology Module Command Reference): ``sys get ver``, ``mac pause``
  (``4294967245``), ``radio set/get`` with the module's ranges (``invalid_param``), radio
  settings refused with ``busy`` while receiving, ``radio rx``/``radio tx`` refused with
  ``busy`` unless the MAC is paused, ``radio rx 0`` ends with ``radio_err`` when the
  watchdog (default 15 s) expires, ``radio_rx  <hex>`` (two spaces) ends the reception,
  ``radio rxstop``, ``radio get snr``/``pktrssi``. A replug is a power cycle: defaults.

Radio side: :meth:`AtModemSim.inject_frame` is heard only if the modem listens on the
frame's channel, data rate, IQ polarity and sync word (else it is counted in ``missed``);
:attr:`AtModemSim.transmitted` records every transmission with the settings it used and
when its command arrived. Faults: :meth:`fail_next`, :attr:`silent`, :meth:`emit`
(garbage), :meth:`unplug`/:meth:`replug`.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import re
import select
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from passerelle.radio.at_modem import CODING_RATES, rui3_sync_word, time_on_air

__all__ = ["AtModemSim", "SimSettings", "SimTransmission"]

log = logging.getLogger("passerelle.hil.at_modem_sim")

Reply = str | Sequence[str] | None

RN2483_VERSION = "RN2483 1.0.5 Oct 31 2018 15:06:52"
RN2483_PAUSE_MS = "4294967245"
RUI3_VERSION = "3.5.2-rui3_22q1_sim"
RUI3_BANNER = (
    "RAKwireless RAK3172 Example",
    "------------------------------------------------------",
)
RUI3_MODES = {0: "LoRa P2P", 1: "LoRaWAN", 2: "FSK P2P"}


@dataclass(frozen=True, slots=True)
class SimSettings:
    """The simulated radio's configuration; ``sync_word`` in the module's own form
    (RUI3: 16-bit SX126x value, RN2483: one byte)."""

    frequency_hz: int
    sf: int
    bw_khz: int
    coding_rate: str
    preamble: int
    power_dbm: int
    invert_iq: bool
    crc: bool
    sync_word: int


@dataclass(frozen=True, slots=True)
class SimTransmission:
    payload: bytes
    settings: SimSettings
    command_ns: int  # time.monotonic_ns() when the command line was complete


_RUI3_DEFAULTS = SimSettings(868_000_000, 7, 125, "4/5", 8, 14, False, True, 0x1424)
_RN2483_DEFAULTS = SimSettings(868_100_000, 12, 125, "4/5", 8, 1, False, True, 0x34)


class AtModemSim:
    """A simulated RAK3172 (``dialect="rak3172"``) or RN2483 on a PTY; see module doc.

    ``link``: where to put the stable symlink to the current PTY (recommended: it lets
    the code under test reopen the same path after :meth:`replug`). ``airtime_scale``
    shortens or stretches simulated transmissions. ``rx_format`` (RUI3): ``"colon"``
    (``+EVT:RXP2P:rssi:snr:hex``) or ``"split"`` (``+EVT:RXP2P, RSSI r, SNR s`` then
    ``+EVT:hex``).
    """

    def __init__(
        self,
        dialect: Literal["rak3172", "rn2483"] = "rak3172",
        *,
        link: str | os.PathLike[str] | None = None,
        work_mode: int = 1,
        rx_format: Literal["colon", "split"] = "colon",
        echo: bool = False,
        airtime_scale: float = 1.0,
        boot_s: float = 0.05,
        high_frequency_variant: bool = True,
        runtime_p2p: bool = True,
    ) -> None:
        if dialect not in ("rak3172", "rn2483"):
            raise ValueError(f"unknown dialect {dialect!r}")
        self.dialect = dialect
        self.link = Path(link) if link is not None else None
        self.rx_format = rx_format
        self.echo = echo
        self.airtime_scale = airtime_scale
        self.boot_s = boot_s
        self.high_frequency_variant = high_frequency_variant
        self.runtime_p2p = runtime_p2p  # AT+P2P takes a 7th field (older RUI3: no)
        self.flash_writes = 0  # RUI3 settings stored in flash (persistent AT+P2P, ...)
        self.silent = False
        self.commands: list[str] = []
        self.transmitted: list[SimTransmission] = []
        self.missed = 0  # injected frames nobody listened to
        self._lock = threading.RLock()
        self._work_mode = work_mode
        self._settings = _RUI3_DEFAULTS if dialect == "rak3172" else _RN2483_DEFAULTS
        self._failures: deque[tuple[str, Reply]] = deque()
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name = ""
        self._wake: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._generation = 0
        self._timers: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._booting_until = 0
        self._power_on_state()

    # -------------------------------------------------------------- lifecycle

    def start(self) -> str:
        """Plug the modem in; returns :attr:`path`."""
        self.replug()
        return self.path

    def stop(self) -> None:
        self.unplug()

    def __enter__(self) -> AtModemSim:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def path(self) -> str:
        return str(self.link) if self.link is not None else self._slave_name

    @property
    def plugged(self) -> bool:
        return self._master is not None

    def unplug(self) -> None:
        """The USB cable is pulled: the PTY master closes, the link disappears."""
        with self._lock:
            master, slave, wake, thread = self._master, self._slave, self._wake, self._thread
            self._master = self._slave = self._wake = self._thread = None
            self._generation += 1
            self._timers.clear()
            if wake is not None:
                os.write(wake[1], b"x")
        if thread is not None and thread is not threading.current_thread():
            thread.join(2.0)
        for fd in (master, slave, *(wake or ())):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.link is not None and master is not None:
            with contextlib.suppress(FileNotFoundError):
                self.link.unlink()

    def replug(self) -> None:
        """Plug (back) in: a new PTY pair, the link pointed at it, power-on state."""
        self.unplug()
        master, slave = os.openpty()
        # Raw at once: a line discipline echoing what we write would feed it back to us.
        tty.setraw(slave)
        wake = os.pipe()
        with self._lock:
            self._master, self._slave, self._wake = master, slave, wake
            self._slave_name = os.ttyname(slave)
            self._power_on_state()
            generation = self._generation
            self._thread = threading.Thread(
                target=self._run,
                args=(master, wake[0], generation),
                name=f"{self.dialect} sim",
                daemon=True,
            )
        if self.link is not None:
            tmp = self.link.with_name(self.link.name + ".tmp")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._slave_name)
            tmp.replace(self.link)
        self._thread.start()

    def _power_on_state(self) -> None:
        self._listening = False
        self._rx_mode = 0  # RUI3 AT+PRECV value in force
        self._tx_busy = False
        self._mac_paused = False
        self._wdt_ms = 15000
        self._last_rssi = -120
        self._last_snr = 0
        self._rx_token: object | None = None
        if self.dialect == "rn2483":
            self._settings = _RN2483_DEFAULTS  # RN2483 radio settings are not persistent
            self._wdt_ms = 15000

    # -------------------------------------------------------------- observation

    @property
    def settings(self) -> SimSettings:
        return self._settings

    @property
    def listening(self) -> bool:
        return self._listening

    @property
    def work_mode(self) -> int:
        return self._work_mode

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Poll ``predicate`` (a thread-side helper for tests); True if it came true."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.005)
        return predicate()

    # ------------------------------------------------------------- radio side

    def inject_frame(
        self,
        payload: bytes,
        *,
        rssi: int = -60,
        snr: int = 7,
        frequency_hz: int | None = None,
        datarate: tuple[int, int] | None = None,
        invert_iq: bool = False,
        sync_word: int = 0x34,
    ) -> bool:
        """A frame on the air; True if the modem heard it (and printed the event).

        Unless given, the frame is on whatever channel and data rate the modem listens
        to; ``invert_iq`` is the transmitter's polarity (False for LoRaWAN uplinks) and
        ``sync_word`` its one-byte LoRa sync word (0x34: LoRaWAN public).
        """
        with self._lock:
            s = self._settings
            module_sync = rui3_sync_word(sync_word) if self.dialect == "rak3172" else sync_word
            heard = (
                self.plugged
                and self._listening
                and frequency_hz in (None, s.frequency_hz)
                and datarate in (None, (s.sf, s.bw_khz))
                and invert_iq == s.invert_iq
                and module_sync == s.sync_word
            )
            if not heard:
                self.missed += 1
                return False
            self._last_rssi, self._last_snr = rssi, snr
            data = payload.hex().upper()
            if self.dialect == "rak3172":
                if self.rx_format == "split":
                    self._write([f"+EVT:RXP2P, RSSI {rssi}, SNR {snr}", f"+EVT:{data}"])
                else:
                    self._write([f"+EVT:RXP2P:{rssi}:{snr}:{data}"])
                if self._rx_mode == 65535:  # single reception
                    self._listening = False
                    self._rx_mode = 0
            else:
                self._listening = False  # RN2483: one frame per "radio rx"
                self._write([f"radio_rx  {data}"])
            return True

    def rx_error(self) -> None:
        """A reception fails (bad CRC): RUI3 prints ``+EVT:RXP2P RECEIVE ERROR`` and keeps
        listening in continuous mode; the RN2483 prints ``radio_err`` and stops."""
        with self._lock:
            if not self._listening:
                return
            if self.dialect == "rak3172":
                self._write(["+EVT:RXP2P RECEIVE ERROR"])
            else:
                self._listening = False
                self._write(["radio_err"])

    # ------------------------------------------------------------------ faults

    def fail_next(self, prefix: str, reply: Reply = None) -> None:
        """The next command starting with ``prefix`` gets ``reply`` (a line, several
        lines, or None: no answer at all) instead of being executed."""
        with self._lock:
            self._failures.append((prefix, reply))

    def emit(self, line: str | bytes) -> None:
        """Write one line (CRLF added) as the modem: noise, a stray event."""
        raw = line.encode("latin-1") if isinstance(line, str) else line
        with self._lock:
            self._write_raw(raw + b"\r\n")

    # ------------------------------------------------------------------ thread

    def _run(self, master: int, wake: int, generation: int) -> None:
        buffer = bytearray()
        while True:
            with self._lock:
                if generation != self._generation:
                    return
                timeout = 0.2
                if self._timers:
                    timeout = max(0.0, (self._timers[0][0] - time.monotonic_ns()) / 1e9)
            try:
                ready, _, _ = select.select([master, wake], [], [], timeout)
                if wake in ready:
                    os.read(wake, 4096)  # only a wake-up call
                data = os.read(master, 4096) if master in ready else b""
            except OSError:
                return
            now = time.monotonic_ns()
            buffer += data
            while (end := buffer.find(b"\n")) >= 0:
                line = bytes(buffer[:end]).rstrip(b"\r")
                del buffer[: end + 1]
                with self._lock:
                    if generation != self._generation:
                        return
                    self._on_command(line.decode("ascii", "replace"), now)
            self._run_timers(generation)

    def _run_timers(self, generation: int) -> None:
        with self._lock:
            now = time.monotonic_ns()
            while self._timers and self._timers[0][0] <= now and generation == self._generation:
                _, _, action = heapq.heappop(self._timers)
                action()

    def _after(self, seconds: float, action: Callable[[], None]) -> None:
        due = time.monotonic_ns() + int(seconds * 1e9)
        heapq.heappush(self._timers, (due, next(self._seq), action))
        if self._wake is not None:
            os.write(self._wake[1], b"x")

    def _write(self, lines: Sequence[str]) -> None:
        self._write_raw("".join(f"{line}\r\n" for line in lines).encode("ascii"))

    def _write_raw(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            os.write(self._master, data)
        except OSError as exc:  # nobody reading and the buffer full: data lost, like a UART
            log.debug("sim write dropped: %s", exc)

    def _on_command(self, command: str, now_ns: int) -> None:
        command = command.strip()
        if not command:
            return
        self.commands.append(command)
        if self.silent or now_ns < self._booting_until:
            return
        if self.echo:
            self._write([command])
        for i, (prefix, reply) in enumerate(self._failures):
            if command.startswith(prefix):
                del self._failures[i]
                if reply is not None:
                    self._write([reply] if isinstance(reply, str) else list(reply))
                return
        if self.dialect == "rak3172":
            self._rui3(command, now_ns)
        else:
            self._rn2483(command, now_ns)

    def _transmit(self, payload: bytes, now_ns: int, done: Callable[[], None]) -> None:
        s = self._settings
        self.transmitted.append(SimTransmission(payload, s, now_ns))
        airtime = time_on_air(len(payload), s.sf, s.bw_khz, s.coding_rate, s.preamble, s.crc)
        self._tx_busy = True

        def finished() -> None:
            self._tx_busy = False
            done()

        self._after(airtime * self.airtime_scale, finished)

    # -------------------------------------------------------------------- RUI3

    def _status(self, status: str, *values: str) -> None:
        self._write([*values, "", status])  # RUI3 frames the status as \r\nOK\r\n

    def _rui3(self, command: str, now_ns: int) -> None:
        if command == "AT":
            return self._status("OK")
        if command == "ATE":
            self.echo = not self.echo
            return self._status("OK")
        if command == "ATZ":
            return self._reboot()
        m = re.fullmatch(r"AT\+([A-Z0-9]+)(\?|=\?|=(.*))?", command)
        if m is None:
            return self._status("AT_ERROR")
        name, op, value = m.group(1), m.group(2), m.group(3)
        handler = {
            "NWM": self._at_nwm,
            "VER": self._at_ver,
            "P2P": self._at_p2p,
            "IQINVER": self._at_iqinver,
            "SYNCWORD": self._at_syncword,
            "PRECV": self._at_precv,
            "PSEND": self._at_psend,
        }.get(name)
        if handler is None:
            return self._status("AT_COMMAND_NOT_FOUND")
        if op == "?":
            return self._status("OK", f"AT+{name}: simulated")
        if name not in ("NWM", "VER") and self._work_mode == 1:
            return self._status("AT_MODE_NO_SUPPORT")
        query = op == "=?"
        if op is None or (not query and value is None):
            return self._status("AT_PARAM_ERROR")
        handler(query, value or "", now_ns)

    def _reboot(self) -> None:
        self._listening = False
        self._rx_mode = 0
        self._timers.clear()
        self._booting_until = time.monotonic_ns() + int(self.boot_s * 1e9)
        banner = [*RUI3_BANNER, f"Current Work Mode: {RUI3_MODES[self._work_mode]}."]
        self._after(self.boot_s, lambda: self._write(banner))

    def _at_nwm(self, query: bool, value: str, now_ns: int) -> None:
        if query:
            return self._status("OK", f"AT+NWM={self._work_mode}")
        if value not in ("0", "1", "2"):
            return self._status("AT_PARAM_ERROR")
        self._work_mode = int(value)
        self._write_raw(b"OK\r\n")
        self._reboot()

    def _at_ver(self, query: bool, value: str, now_ns: int) -> None:
        if not query:
            return self._status("AT_PARAM_ERROR")
        self._status("OK", f"AT+VER={RUI3_VERSION}")

    def _at_p2p(self, query: bool, value: str, now_ns: int) -> None:
        s = self._settings
        if query:
            cr = CODING_RATES.index(s.coding_rate)
            return self._status(
                "OK",
                f"AT+P2P={s.frequency_hz}:{s.sf}:{s.bw_khz}:{cr}:{s.preamble}:{s.power_dbm}",
            )
        fields = value.split(":")
        persistent = True
        if len(fields) == 7 and self.runtime_p2p and fields[6] in ("0", "1"):
            persistent = fields.pop() == "0"
        if len(fields) != 6 or not all(f.isdigit() for f in fields):
            return self._status("AT_PARAM_ERROR")
        freq, sf, bw, cr, preamble, power = (int(f) for f in fields)
        band_ok = freq > 600e6 if self.high_frequency_variant else freq <= 600e6
        if not (
            150e6 <= freq <= 960e6
            and band_ok
            and 5 <= sf <= 12
            and bw in (125, 250, 500)
            and cr <= 3
            and 5 <= preamble <= 65535
            and 5 <= power <= 22
        ):
            return self._status("AT_PARAM_ERROR")
        self._settings = replace(
            s,
            frequency_hz=freq,
            sf=sf,
            bw_khz=bw,
            coding_rate=CODING_RATES[cr],
            preamble=preamble,
            power_dbm=power,
        )
        self.flash_writes += persistent
        self._status("OK")

    def _at_iqinver(self, query: bool, value: str, now_ns: int) -> None:
        if query:
            return self._status("OK", f"AT+IQINVER={int(self._settings.invert_iq)}")
        if value not in ("0", "1"):
            return self._status("AT_PARAM_ERROR")
        self._settings = replace(self._settings, invert_iq=value == "1")
        self._status("OK")

    def _at_syncword(self, query: bool, value: str, now_ns: int) -> None:
        if query:
            return self._status("OK", f"AT+SYNCWORD={self._settings.sync_word:04x}")
        if not re.fullmatch(r"[0-9A-Fa-f]{1,4}", value):
            return self._status("AT_PARAM_ERROR")
        self._settings = replace(self._settings, sync_word=int(value, 16))
        self._status("OK")

    def _at_precv(self, query: bool, value: str, now_ns: int) -> None:
        if query:
            return self._status("OK", f"AT+PRECV={self._rx_mode}")
        if not value.isdigit() or int(value) > 65535:
            return self._status("AT_PARAM_ERROR")
        timeout = int(value)
        if timeout == 0:
            self._listening = False
            self._rx_mode = 0
            return self._status("OK")
        if self._rx_mode in (65533, 65534, 65535):
            self._write(["P2P_RX_ON already"])
            return self._status("AT_BUSY_ERROR")
        self._listening = True
        self._rx_mode = timeout
        if timeout < 65533:
            session = self._generation

            def window_closed() -> None:
                if self._generation == session and self._listening and self._rx_mode == timeout:
                    self._listening = False
                    self._rx_mode = 0
                    self._write(["+EVT:RXP2P RECEIVE TIMEOUT"])

            self._after(max(timeout, 15) / 1000, window_closed)
        self._status("OK")

    def _at_psend(self, query: bool, value: str, now_ns: int) -> None:
        if query or not value or len(value) % 2 or len(value) > 510:
            return self._status("AT_PARAM_ERROR")
        try:
            payload = bytes.fromhex(value)
        except ValueError:
            return self._status("AT_PARAM_ERROR")
        if self._tx_busy or (self._listening and self._rx_mode != 65533):
            return self._status("AT_BUSY_ERROR")
        self._status("OK")
        self._transmit(payload, now_ns, lambda: self._write(["+EVT:TXP2P DONE"]))

    # ------------------------------------------------------------------ RN2483

    def _rn2483(self, command: str, now_ns: int) -> None:
        words = command.split(" ")
        match words:
            case ["sys", "get", "ver"]:
                self._write([RN2483_VERSION])
            case ["sys", "reset"]:
                self._power_on_state()
                self._write([RN2483_VERSION])
            case ["mac", "pause"]:
                self._mac_paused = True
                self._write([RN2483_PAUSE_MS])
            case ["mac", "resume"]:
                self._mac_paused = False
                self._write(["ok"])
            case ["radio", "set", name, value]:
                self._write([self._rn_set(name, value)])
            case ["radio", "get", name]:
                self._write([self._rn_get(name)])
            case ["radio", "rx", size]:
                self._rn_rx(size)
            case ["radio", "rxstop"]:
                self._listening = False
                self._write(["ok"])
            case ["radio", "tx", data]:
                self._rn_tx(data, now_ns)
            case _:
                self._write(["invalid_param"])

    def _rn_set(self, name: str, value: str) -> str:
        if self._listening or self._tx_busy:
            return "busy"
        s = self._settings
        number = int(value) if re.fullmatch(r"-?\d+", value) else None
        new: SimSettings | None = None
        if name == "freq" and number is not None:
            if 433_050_000 <= number <= 434_790_000 or 863_000_000 <= number <= 870_000_000:
                new = replace(s, frequency_hz=number)
        elif name == "sf" and (m := re.fullmatch(r"sf(\d+)", value)):
            if 7 <= int(m.group(1)) <= 12:
                new = replace(s, sf=int(m.group(1)))
        elif name == "bw" and number in (125, 250, 500):
            new = replace(s, bw_khz=number)
        elif name == "cr" and value in CODING_RATES:
            new = replace(s, coding_rate=value)
        elif name == "pwr" and number is not None and -3 <= number <= 15:
            new = replace(s, power_dbm=number)
        elif name == "prlen" and number is not None and 0 <= number <= 65535:
            new = replace(s, preamble=number)
        elif name == "crc" and value in ("on", "off"):
            new = replace(s, crc=value == "on")
        elif name == "iqi" and value in ("on", "off"):
            new = replace(s, invert_iq=value == "on")
        elif name == "sync" and re.fullmatch(r"[0-9A-Fa-f]{1,2}", value):
            new = replace(s, sync_word=int(value, 16))
        elif name == "wdt" and number is not None and 0 <= number <= 4294967295:
            self._wdt_ms = number
            return "ok"
        elif name == "mod" and value in ("lora", "fsk"):
            return "ok" if value == "lora" else "invalid_param"  # FSK is not simulated
        if new is None:
            return "invalid_param"
        self._settings = new
        return "ok"

    def _rn_get(self, name: str) -> str:
        s = self._settings
        values = {
            "snr": str(self._last_snr),
            "pktrssi": str(self._last_rssi),
            "freq": str(s.frequency_hz),
            "sf": f"sf{s.sf}",
            "bw": str(s.bw_khz),
            "cr": s.coding_rate,
            "pwr": str(s.power_dbm),
            "prlen": str(s.preamble),
            "crc": "on" if s.crc else "off",
            "iqi": "on" if s.invert_iq else "off",
            "sync": f"{s.sync_word:02X}",
            "wdt": str(self._wdt_ms),
            "mod": "lora",
        }
        return values.get(name, "invalid_param")

    def _rn_rx(self, size: str) -> None:
        if not size.isdigit() or int(size) > 65535:
            return self._write(["invalid_param"])
        if not self._mac_paused or self._listening or self._tx_busy:
            return self._write(["busy"])
        self._listening = True
        self._write(["ok"])
        s = self._settings
        symbols = int(size)
        tsym = (1 << s.sf) / (s.bw_khz * 1000)
        limits = [self._wdt_ms / 1000] if self._wdt_ms else []
        if symbols:
            limits.append(symbols * tsym)
        if limits:
            session = self._generation
            token = object()
            self._rx_token = token

            def expired() -> None:
                if self._generation == session and self._listening and self._rx_token is token:
                    self._listening = False
                    self._write(["radio_err"])

            self._after(min(limits), expired)
        else:
            self._rx_token = object()

    def _rn_tx(self, data: str, now_ns: int) -> None:
        if not re.fullmatch(r"(?:[0-9A-Fa-f]{2}){1,255}", data):
            return self._write(["invalid_param"])
        if not self._mac_paused or self._listening or self._tx_busy:
            return self._write(["busy"])
        self._write(["ok"])
        self._transmit(bytes.fromhex(data), now_ns, lambda: self._write(["radio_tx_ok"]))
