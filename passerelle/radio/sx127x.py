"""Radio backend over one SX127x on SPI: a single-channel, half-duplex LoRa gateway.

The portable driver (``drivers/sx127x.py``) blocks on SPI, so every call to it runs
in one worker thread, one call at a time, in order. The backend listens continuously
on one frequency and data rate (the chip demodulates one at a time), polls the IRQ
flags, and stamps each frame with a 32-bit microsecond clock (``tmst``) read when
RxDone is seen: within one poll interval of the true end of reception.

A transmission with a ``tmst`` waits on that same clock: the asyncio task sleeps
until shortly before (``tx_lead_us``), then the worker stops reception, loads the
FIFO and spins until the instant to fire. :meth:`SX127xRadio.transmit` returns once
the frame has gone out (TxDone) or was refused; reception resumes after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from drivers.sx127x import (
    CrcError,
    RxTimeout,
    SX127x,
    SX127xError,
    time_on_air_us,
)

from .base import TMST_MODULO, RadioError, RxFrame, TxRequest, TxResult, parse_datarate

log = logging.getLogger("passerelle.radio.sx127x")

T = TypeVar("T")


def monotonic_us() -> int:
    """The default concentrator-style clock: monotonic microseconds, 32-bit."""
    return (time.monotonic_ns() // 1000) % TMST_MODULO


def tmst_delta(later: int, earlier: int) -> int:
    """``later - earlier`` on the 32-bit wrapping clock, as a signed number of us."""
    d = (later - earlier) % TMST_MODULO
    return d - TMST_MODULO if d >= TMST_MODULO // 2 else d


def parse_coding_rate(coding_rate: str) -> int:
    """``"4/5"`` -> 5 (the denominator the driver takes)."""
    num, sep, den = coding_rate.partition("/")
    if sep != "/" or num != "4" or den not in ("5", "6", "7", "8"):
        raise RadioError(f"coding rate {coding_rate!r} is not one of 4/5, 4/6, 4/7, 4/8")
    return int(den)


def _modulation(datarate: str) -> tuple[int, int]:
    try:
        sf, bw_khz = parse_datarate(datarate)
    except ValueError as e:
        raise RadioError(str(e)) from e
    if sf < 6:
        raise RadioError(f"{datarate}: the SX127x has no SF{sf} (SF6..SF12)")
    return sf, bw_khz * 1000


class _RateLimitedLog:
    """At most one log line per cause every ``interval`` seconds (counts the rest)."""

    def __init__(self, interval: float = 10.0) -> None:
        self._interval = interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def __call__(self, level: int, cause: str, msg: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last.get(cause)
        if last is not None and now - last < self._interval:
            self._suppressed[cause] = self._suppressed.get(cause, 0) + 1
            return
        skipped = self._suppressed.pop(cause, 0)
        self._last[cause] = now
        if skipped:
            msg += f" ({skipped} more since last logged)"
        log.log(level, msg, *args)


class SX127xRadio:
    """:class:`~passerelle.radio.base.Radio` backend over one SX127x driver.

    ``rx_*`` set what the gateway listens to (LoRaWAN uplinks: IQ not inverted).
    ``tx_band`` (MHz) bounds what it may transmit on; ``antenna_gain`` (dBi) turns the
    requested EIRP into conducted power, capped at ``max_tx_power`` (dBm).
    """

    def __init__(
        self,
        driver: SX127x,
        *,
        rx_frequency: float = 868.1,
        rx_datarate: str = "SF7BW125",
        rx_coding_rate: str = "4/5",
        rx_invert_iq: bool = False,
        sync_word: int = 0x34,
        clock_us: Callable[[], int] = monotonic_us,
        poll_interval: float = 0.002,
        tx_lead_us: int = 20_000,
        tx_late_tolerance_us: int = 1_000,
        tx_max_advance_us: int = 10_000_000,
        tx_band: tuple[float, float] | None = (863.0, 870.0),
        antenna_gain: float = 0.0,
        max_tx_power: int = 20,
        queue_size: int = 64,
        gateway: str = "sx127x",
    ) -> None:
        self._driver = driver
        self._rx_frequency = rx_frequency
        self._rx_sf, self._rx_bw = _modulation(rx_datarate)
        self._rx_datarate = rx_datarate
        self._rx_coding_rate = rx_coding_rate
        self._rx_cr = parse_coding_rate(rx_coding_rate)
        self._rx_invert_iq = rx_invert_iq
        self._sync_word = sync_word
        self._clock_us = clock_us
        self._poll_interval = poll_interval
        self._tx_lead_us = tx_lead_us
        self._tx_late_tolerance_us = tx_late_tolerance_us
        self._tx_max_advance_us = tx_max_advance_us
        self._tx_band = tx_band
        self._antenna_gain = antenna_gain
        self._max_tx_power = max_tx_power
        self._gateway = gateway
        self._queue: asyncio.Queue[RxFrame] = asyncio.Queue(maxsize=queue_size)
        self._executor: ThreadPoolExecutor | None = None
        self._poller: asyncio.Task[None] | None = None
        self._radio_lock = asyncio.Lock()  # poller vs transmit: the chip is half duplex
        self._tx_lock = asyncio.Lock()  # one transmission at a time
        self._log_limited = _RateLimitedLog()
        self.stats: dict[str, int] = {
            "rx_ok": 0,
            "rx_crc_error": 0,
            "rx_dropped": 0,
            "rx_timeout": 0,
            "radio_error": 0,
            "tx_ok": 0,
            "tx_too_late": 0,
            "tx_too_early": 0,
            "tx_refused": 0,
            "tx_timeout": 0,
        }

    # --- life cycle ----------------------------------------------------------------

    async def start(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sx127x")
        try:
            await self._call(self._driver.init)
            await self._call(self._listen)
        except (SX127xError, OSError) as e:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise RadioError(f"SX127x did not start: {e}") from e
        self._poller = asyncio.create_task(self._poll_loop(), name="sx127x rx poll")
        log.info(
            "SX127x listening on %.3f MHz %s (IQ %s)",
            self._rx_frequency,
            self._rx_datarate,
            "inverted" if self._rx_invert_iq else "normal",
        )

    async def stop(self) -> None:
        if self._executor is None:
            return
        if self._poller is not None:
            self._poller.cancel()
            # a crash of the loop was logged when it happened
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
            self._poller = None
        try:
            await self._call(self._driver.sleep)
        except Exception as e:  # stopping must release the worker whatever the radio does
            log.warning("SX127x: could not put the radio to sleep on stop: %s", e)
        executor, self._executor = self._executor, None
        executor.shutdown(wait=True)

    async def __aenter__(self) -> SX127xRadio:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            raise RadioError("SX127x radio is not started")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    # --- receive -------------------------------------------------------------------

    async def receive(self) -> RxFrame:
        """The next frame heard; RadioError if the radio stopped or its poller died."""
        if self._queue.empty():
            poller = self._poller
            if poller is None:
                raise RadioError("SX127x radio is not started")
            getter = asyncio.ensure_future(self._queue.get())
            try:
                await asyncio.wait({getter, poller}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                if not getter.done():
                    getter.cancel()
            if not getter.done() or getter.cancelled():
                raise RadioError("SX127x receive loop ended (see the log for why)")
            return getter.result()
        return self._queue.get_nowait()

    def _listen(self) -> None:
        """(worker) Back to the uplink settings, continuous RX."""
        self._driver.configure(
            frequency=round(self._rx_frequency * 1e6),
            sf=self._rx_sf,
            bandwidth=self._rx_bw,
            coding_rate=self._rx_cr,
            implicit_header=False,
            crc=True,
            preamble=8,
            sync_word=self._sync_word,
            invert_iq=self._rx_invert_iq,
        )
        self._driver.receive(continuous=True)

    def _poll_once(self) -> tuple[str, Any, int] | None:
        """(worker) One look at the IRQ flags; what arrived, with its tmst."""
        tmst = self._clock_us()
        try:
            packet = self._driver.read_packet()
        except CrcError as e:
            return ("crc", e, tmst)
        except RxTimeout:  # not expected in continuous RX; listen again
            self._listen()
            return ("timeout", None, tmst)
        if packet is None:
            return None
        return ("ok", packet, tmst)

    async def _poll_loop(self) -> None:
        while True:
            try:
                async with self._radio_lock:
                    event = await self._call(self._poll_once)
            except (SX127xError, OSError) as e:
                self.stats["radio_error"] += 1
                self._log_limited(logging.ERROR, "poll", "SX127x poll failed: %s", e)
                await asyncio.sleep(max(self._poll_interval, 0.5))
                continue
            except Exception:
                log.exception("SX127x receive loop crashed")
                raise
            if event is not None:
                self._on_event(*event)
            await asyncio.sleep(self._poll_interval)

    def _on_event(self, kind: str, data: Any, tmst: int) -> None:
        if kind == "crc":
            self.stats["rx_crc_error"] += 1
            self._log_limited(
                logging.INFO, "crc", "SX127x: frame dropped for a bad payload CRC: %s", data
            )
            return
        if kind == "timeout":
            self.stats["rx_timeout"] += 1
            return
        payload, rssi, snr = data
        frame = RxFrame(
            payload=payload,
            frequency=self._rx_frequency,
            datarate=self._rx_datarate,
            coding_rate=self._rx_coding_rate,
            rssi=float(rssi),
            snr=float(snr),
            tmst=tmst,
            gateway=self._gateway,
        )
        if self._queue.full():
            self._queue.get_nowait()
            self.stats["rx_dropped"] += 1
            self._log_limited(
                logging.WARNING, "queue", "SX127x: receive queue full, oldest frame dropped"
            )
        self._queue.put_nowait(frame)
        self.stats["rx_ok"] += 1

    # --- transmit ------------------------------------------------------------------

    async def transmit(self, request: TxRequest) -> TxResult:
        """Send ``request`` at its ``tmst`` (or now); returns after TxDone or a refusal.

        Refusals: ``TOO_LATE`` / ``TOO_EARLY`` for a tmst in the past or too far ahead,
        ``TX_FREQ`` outside ``tx_band``, ``TX_POWER`` below what the PA can do,
        ``TX_TIMEOUT`` when TxDone never came. Malformed requests raise RadioError.
        """
        sf, bw = _modulation(request.datarate)
        cr = parse_coding_rate(request.coding_rate)
        if not 1 <= len(request.payload) <= 255:
            raise RadioError(f"payload of {len(request.payload)} bytes: LoRa carries 1..255")
        if not 6 <= request.preamble <= 65535:
            raise RadioError(f"preamble of {request.preamble} symbols: 6..65535")
        if self._tx_band is not None and not (
            self._tx_band[0] <= request.frequency <= self._tx_band[1]
        ):
            self.stats["tx_refused"] += 1
            return TxResult(False, "TX_FREQ")
        lowest, highest = (2, 20) if self._driver.pa_boost else (0, 14)  # PA_BOOST or RFO
        power = min(round(request.power - self._antenna_gain), self._max_tx_power, highest)
        if power < lowest:
            self.stats["tx_refused"] += 1
            return TxResult(False, "TX_POWER")
        airtime_us = time_on_air_us(
            len(request.payload), sf, bw, cr, request.preamble, request.crc
        )
        async with self._tx_lock:
            if request.tmst is not None:
                delay = tmst_delta(request.tmst, self._clock_us())
                if delay < 0:
                    return self._refuse("tx_too_late", "TOO_LATE", request, delay)
                if delay > self._tx_max_advance_us:
                    return self._refuse("tx_too_early", "TOO_EARLY", request, delay)
                if delay > self._tx_lead_us:
                    await asyncio.sleep((delay - self._tx_lead_us) / 1e6)
            async with self._radio_lock:
                return await self._send(request, sf, bw, cr, power, airtime_us)

    def _refuse(self, stat: str, error: str, request: TxRequest, delay: int) -> TxResult:
        self.stats[stat] += 1
        log.warning(
            "SX127x: %s for tmst %s (%+d us from now)", error, request.tmst, delay
        )
        return TxResult(False, error)

    async def _send(
        self, request: TxRequest, sf: int, bw: int, cr: int, power: int, airtime_us: int
    ) -> TxResult:
        try:
            await self._call(self._load, request, sf, bw, cr, power)
            lateness = await self._call(self._fire_at, request.tmst)
            if lateness is not None:
                return self._refuse("tx_too_late", "TOO_LATE", request, -lateness)
            await asyncio.sleep(airtime_us / 1e6)
            deadline = time.monotonic() + airtime_us / 4e6 + 0.1
            while not await self._call(self._driver.tx_done):
                if time.monotonic() > deadline:
                    await self._call(self._driver.standby)
                    self.stats["tx_timeout"] += 1
                    log.error("SX127x: no TxDone %.0f ms after the airtime", 100 + airtime_us / 4e3)
                    return TxResult(False, "TX_TIMEOUT")
                await asyncio.sleep(self._poll_interval)
            self.stats["tx_ok"] += 1
            return TxResult(True)
        except (SX127xError, OSError, ValueError) as e:
            self.stats["radio_error"] += 1
            raise RadioError(f"SX127x transmit failed: {e}") from e
        finally:
            try:
                await self._call(self._listen)
            except (SX127xError, OSError, RadioError) as e:
                self.stats["radio_error"] += 1
                log.error("SX127x: could not resume reception after TX: %s", e)

    def _load(self, request: TxRequest, sf: int, bw: int, cr: int, power: int) -> None:
        """(worker) TX settings and payload into the chip, ready to fire."""
        self._driver.configure(
            frequency=round(request.frequency * 1e6),
            sf=sf,
            bandwidth=bw,
            coding_rate=cr,
            implicit_header=False,
            crc=request.crc,
            preamble=request.preamble,
            sync_word=self._sync_word,
            invert_iq=request.invert_iq,
            tx_power=power,
        )
        self._driver.load_tx(bytes(request.payload))

    def _fire_at(self, tmst: int | None) -> int | None:
        """(worker) Wait for ``tmst`` on the clock, then TX.

        Returns None once fired, or by how many us it was already too late (not fired).
        """
        if tmst is not None:
            while True:
                delay = tmst_delta(tmst, self._clock_us())
                if delay <= 0:
                    break
                if delay > 2000:
                    time.sleep((delay - 1000) / 1e6)  # coarse, then spin the last ms
            if delay < -self._tx_late_tolerance_us:
                self._driver.standby()
                return -delay
        self._driver.start_tx()
        return None
