"""A simulated LoRa radio medium: end devices and gateways in a street, frames in the air.

Frames take their real time on air (:mod:`passerelle.lorawan.airtime` on the real
PHYPayload), lose power with distance, collide, and are lost at random, so the LoRaWAN
layer and the gateway agent can be tested against what the field does to them, not
against a perfect pipe.

Model (each simplification is deliberate and named):

* **Path loss**, log-distance: ``PL(d) = PL0 + 10 n log10(d / d0)``. Defaults
  (:class:`LogDistance`) are for a street of lamp posts in town: ``PL0`` = 31.2 dB, the
  free-space loss at ``d0`` = 1 m and 868 MHz (``20 log10(4 pi d0 / lambda)``), and
  ``n`` = 3.0 (measured urban LoRa exponents fall between 2.7 and 3.5). Optional
  log-normal shadowing (``shadowing_sigma_db``, 0 by default so tests are exact).
* **RSSI** = transmit power + antenna gains - path loss. **Noise** =
  ``-174 + 10 log10(BW) + NF`` dBm (NF 6 dB, an SX1301/SX127x front end), **SNR** =
  RSSI - noise. A frame whose SNR is under its spreading factor's demodulation floor
  (SX1276 datasheet: SF7 -7.5 dB ... SF12 -20 dB) is lost. Reported RSSI is rounded to
  whole dBm (as ``rxpk`` writes it) and SNR to 0.25 dB (the SX127x register step); every
  decision uses the exact values.
* **Collisions** at each receiver: another frame on the same frequency, spreading factor
  and bandwidth that overlaps in time interferes. A frame survives only if it is at
  least ``capture_threshold_db`` (6 dB) above the sum of its interferers (capture
  effect); so of two frames the stronger survives when 6 dB above the weaker, else both
  are lost. Different spreading factors are treated as fully orthogonal (in reality
  they are quasi-orthogonal: a much stronger frame at another SF can still blank a weak
  one, by some 10-25 dB of rejection; not modelled). Interference also counts between
  uplinks and downlinks (the energy is there whatever the IQ polarity).
* **Half duplex**: a node that transmits during any part of a frame does not receive it
  (a concentrator is deaf while it sends, a class C device stops listening).
* **IQ polarity**: gateways demodulate only non-inverted frames (uplinks), devices only
  inverted ones (downlinks), as LoRaWAN radios are set up.
* **Random loss**: each reception that survived everything else is dropped with
  probability ``loss_rate``, drawn from a seeded RNG (deterministic runs).
* Not modelled: device duty cycle, MAC commands taking effect (they are recorded by
  :class:`hil.lorawan_device.EndDevice`), preamble-lock subtleties (the first of two
  frames), multipath and Doppler.

Time comes from a :class:`Clock`: :class:`VirtualClock` (discrete events, instant and
deterministic: collision, path-loss and window tests) or :class:`AsyncioClock` (real time
on the event loop: needed to feed a real :class:`~hil.packet_forwarder.SimPacketForwarder`
through :class:`ForwarderLink`).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from hil.lorawan_device import DeviceError, Downlink, EndDevice
from passerelle.lorawan import phy
from passerelle.lorawan.airtime import airtime_of, tx_airtime
from passerelle.lorawan.region import DATARATES as EU868_DATARATES
from passerelle.lorawan.region import DEFAULT_CHANNELS as EU868_CHANNELS
from passerelle.lorawan.region import (
    DEMOD_FLOOR_DB,
    JOIN_ACCEPT_DELAY1,
    RECEIVE_DELAY2_EXTRA,
)
from passerelle.lorawan.region import RX2_FREQUENCY as EU868_RX2_FREQUENCY
from passerelle.radio.base import (
    TMST_MODULO,
    RadioError,
    RxFrame,
    TxRequest,
    TxResult,
    parse_datarate,
)

__all__ = [
    "AsyncioClock",
    "Clock",
    "ForwarderLink",
    "LogDistance",
    "Medium",
    "Reception",
    "SimDevice",
    "SimGateway",
    "Transmission",
    "VirtualClock",
    "noise_floor_dbm",
    "txpk_to_request",
]

log = logging.getLogger("passerelle.hil.radio_medium")

THERMAL_NOISE_DBM_HZ = -174.0  # kT at 290 K
DEFAULT_NOISE_FIGURE_DB = 6.0
CAPTURE_THRESHOLD_DB = 6.0


ACK_TIMEOUT = 2.0  # LoRaWAN 1.0.x: 2 s +- 1 s after RX2 before a retransmission
ACK_TIMEOUT_JITTER = 1.0

_FREQ_TOLERANCE_MHZ = 1e-4  # 100 Hz: "the same channel"
_HISTORY_S = 30.0  # longer than any frame (255 bytes at SF12 is 9 s): prune older ones


def noise_floor_dbm(bw_khz: float, noise_figure_db: float = DEFAULT_NOISE_FIGURE_DB) -> float:
    """Receiver noise power over the channel: ``-174 + 10 log10(BW in Hz) + NF``."""
    return THERMAL_NOISE_DBM_HZ + 10.0 * math.log10(bw_khz * 1000.0) + noise_figure_db


def _signed32(value: int) -> int:
    value %= TMST_MODULO
    return value - TMST_MODULO if value >= TMST_MODULO // 2 else value


def _same_frequency(a: float, b: float) -> bool:
    return abs(a - b) < _FREQ_TOLERANCE_MHZ


def _point(position: Any, what: str) -> tuple[float, float, float]:
    """``(x, y)`` or ``(x, y, z)`` in metres, checked."""
    try:
        coords = tuple(float(c) for c in position)
    except (TypeError, ValueError):
        coords = ()
    if len(coords) not in (2, 3) or not all(math.isfinite(c) for c in coords):
        raise ValueError(f"{what}: position must be (x, y) or (x, y, z) metres, got {position!r}")
    return (coords[0], coords[1], coords[2] if len(coords) == 3 else 0.0)


# -- clocks ---------------------------------------------------------------------------------


class Clock(Protocol):
    """Seconds, and callbacks at a given time of that clock."""

    def now(self) -> float: ...

    def call_at(self, when: float, callback: Callable[[], None]) -> None: ...


class VirtualClock:
    """Discrete-event time: nothing happens until :meth:`advance`/:meth:`run_until`.

    Events at the same time run in the order they were scheduled, so a run is exactly
    reproducible.
    """

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)
        self._events: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        heapq.heappush(self._events, (max(when, self._now), next(self._seq), callback))

    def call_later(self, delay: float, callback: Callable[[], None]) -> None:
        self.call_at(self._now + delay, callback)

    def run_until(self, when: float) -> None:
        """Run every event due up to ``when``, then stand at ``when``."""
        while self._events and self._events[0][0] <= when:
            at, _, callback = heapq.heappop(self._events)
            self._now = at
            callback()
        self._now = max(self._now, when)

    def advance(self, seconds: float) -> None:
        self.run_until(self._now + seconds)

    def run(self, limit: float = 3600.0) -> None:
        """Run until no event is left (or ``limit`` s of virtual time passed)."""
        end = self._now + limit
        while self._events and self._events[0][0] <= end:
            self.run_until(self._events[0][0])

    @property
    def pending(self) -> int:
        return len(self._events)


class AsyncioClock:
    """Real time: the running event loop's clock (``time.monotonic`` on asyncio loops)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop or asyncio.get_running_loop()

    def now(self) -> float:
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[], None]) -> None:
        self._loop.call_at(when, callback)


# -- propagation ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogDistance:
    """Log-distance path loss with optional log-normal shadowing (see module docstring)."""

    pl0_db: float = 31.2  # free space at 1 m, 868 MHz
    d0_m: float = 1.0
    exponent: float = 3.0  # urban street
    shadowing_sigma_db: float = 0.0

    def loss_db(self, distance_m: float) -> float:
        # Closer than d0 the far-field formula no longer holds: clamp to PL0.
        d = max(distance_m, self.d0_m)
        return self.pl0_db + 10.0 * self.exponent * math.log10(d / self.d0_m)

    def range_m(self, budget_db: float) -> float:
        """Distance at which the path loss reaches ``budget_db`` (no shadowing)."""
        return self.d0_m * 10.0 ** ((budget_db - self.pl0_db) / (10.0 * self.exponent))


@dataclass(eq=False, slots=True)
class Transmission:
    """One frame in the air."""

    source: str
    payload: bytes
    frequency: float
    datarate: str
    sf: int
    bw_khz: int
    power_dbm: float
    start: float
    end: float
    invert_iq: bool
    coding_rate: str = "4/5"
    # received power (dBm) at every other node, drawn once at the start
    power_at: dict[str, float] = field(default_factory=dict)

    @property
    def airtime(self) -> float:
        return self.end - self.start

    def overlaps(self, other: Transmission) -> bool:
        return self.start < other.end and other.start < self.end

    def same_channel(self, other: Transmission) -> bool:
        return (
            _same_frequency(self.frequency, other.frequency)
            and self.sf == other.sf
            and self.bw_khz == other.bw_khz
        )


@dataclass(frozen=True, slots=True)
class Reception:
    """What one receiver made of one transmission (for assertions and diagnostics)."""

    transmission: Transmission
    receiver: str
    rssi: float  # exact, dBm
    snr: float  # exact, dB
    outcome: str  # ok | collision | below_floor | random_loss | half_duplex

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class _Node:
    """A radio at a position. Subclasses decide what they listen to and what they do."""

    def __init__(self, medium: Medium, name: str, position: Any, antenna_gain_db: float) -> None:
        if not name:
            raise ValueError("a node needs a name")
        if name in medium.nodes:
            raise ValueError(f"node name {name!r} already used in this medium")
        self.medium = medium
        self.name = name
        self.position = _point(position, f"node {name!r}")
        self.antenna_gain_db = float(antenna_gain_db)

    def _listens(self, tx: Transmission) -> bool:
        raise NotImplementedError

    def _deliver(self, tx: Transmission, rssi: float, snr: float) -> None:
        raise NotImplementedError

    def _missed(self, tx: Transmission, outcome: str) -> None:
        """A frame this node listened for was lost (hook)."""


class Medium:
    """Carries frames between :class:`SimDevice` and :class:`SimGateway` nodes."""

    def __init__(
        self,
        clock: Clock,
        *,
        path_loss: LogDistance | None = None,
        noise_figure_db: float = DEFAULT_NOISE_FIGURE_DB,
        capture_threshold_db: float = CAPTURE_THRESHOLD_DB,
        loss_rate: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 <= loss_rate <= 1.0:
            raise ValueError(f"loss_rate must be within 0..1, got {loss_rate!r}")
        self.clock = clock
        self.path_loss = path_loss or LogDistance()
        self.noise_figure_db = float(noise_figure_db)
        self.capture_threshold_db = float(capture_threshold_db)
        self.loss_rate = float(loss_rate)
        self.seed = seed
        self.rng = random.Random(seed)
        self.nodes: dict[str, _Node] = {}
        self.receptions: list[Reception] = []
        self.transmissions: list[Transmission] = []  # all, in start order (for tests)
        self._recent: list[Transmission] = []  # those that can still interfere

    # -- nodes ------------------------------------------------------------------------

    def add_gateway(self, name: str, position: Any, **options: Any) -> SimGateway:
        gateway = SimGateway(self, name, position, **options)
        self.nodes[name] = gateway
        return gateway

    def add_device(self, device: EndDevice, position: Any, **options: Any) -> SimDevice:
        sim = SimDevice(self, device, position, **options)
        self.nodes[sim.name] = sim
        return sim

    # -- propagation --------------------------------------------------------------------

    def received_power(self, source: _Node, receiver: _Node, power_dbm: float) -> float:
        """dBm at ``receiver`` of ``power_dbm`` sent by ``source`` (shadowing drawn here)."""
        distance = math.dist(source.position, receiver.position)
        loss = self.path_loss.loss_db(distance)
        if self.path_loss.shadowing_sigma_db > 0:
            loss += self.rng.gauss(0.0, self.path_loss.shadowing_sigma_db)
        return power_dbm + source.antenna_gain_db + receiver.antenna_gain_db - loss

    def noise_dbm(self, bw_khz: float) -> float:
        return noise_floor_dbm(bw_khz, self.noise_figure_db)

    # -- the air ------------------------------------------------------------------------

    def transmit(
        self,
        source: _Node,
        payload: bytes,
        frequency: float,
        datarate: str,
        power_dbm: float,
        *,
        invert_iq: bool,
        coding_rate: str = "4/5",
        airtime: float | None = None,
    ) -> Transmission:
        """Put a frame in the air now; receivers get it (or not) when it ends."""
        sf, bw = parse_datarate(datarate)
        if airtime is None:
            # Uplinks (non-inverted) carry a payload CRC, downlinks do not.
            airtime = airtime_of(datarate, len(payload), not invert_iq, coding_rate=coding_rate)
        now = self.clock.now()
        tx = Transmission(
            source=source.name, payload=bytes(payload), frequency=float(frequency),
            datarate=datarate, sf=sf, bw_khz=bw, power_dbm=float(power_dbm), start=now,
            end=now + airtime, invert_iq=invert_iq, coding_rate=coding_rate,
        )
        listeners: list[_Node] = []
        for node in self.nodes.values():
            if node is source:
                continue
            tx.power_at[node.name] = self.received_power(source, node, tx.power_dbm)
            if node._listens(tx):
                listeners.append(node)
        self._prune(now)
        self._recent.append(tx)
        self.transmissions.append(tx)
        log.debug("%s sends %d bytes on %.3f MHz %s for %.1f ms", source.name, len(payload),
                  frequency, datarate, airtime * 1000)
        self.clock.call_at(tx.end, lambda: self._complete(tx, listeners))
        return tx

    def _prune(self, now: float) -> None:
        self._recent = [t for t in self._recent if t.end >= now - _HISTORY_S]

    def _complete(self, tx: Transmission, listeners: list[_Node]) -> None:
        for node in listeners:
            reception = self._judge(tx, node)
            self.receptions.append(reception)
            if reception.ok:
                node._deliver(tx, reception.rssi, reception.snr)
            else:
                log.debug("%s lost frame from %s: %s", node.name, tx.source, reception.outcome)
                node._missed(tx, reception.outcome)

    def _judge(self, tx: Transmission, node: _Node) -> Reception:
        rssi = tx.power_at[node.name]
        snr = rssi - self.noise_dbm(tx.bw_khz)
        # Drawn for every reception, whatever the outcome, so the random sequence (and so
        # every later outcome) does not depend on which frames happened to collide.
        dropped = self.rng.random() < self.loss_rate
        overlapping = [o for o in self._recent if o is not tx and o.overlaps(tx)]

        def verdict(outcome: str) -> Reception:
            return Reception(tx, node.name, rssi, snr, outcome)

        if any(o.source == node.name for o in overlapping):
            return verdict("half_duplex")
        interferers = [o for o in overlapping if o.same_channel(tx)]
        if interferers:
            interference_mw = sum(10.0 ** (o.power_at[node.name] / 10.0) for o in interferers)
            if rssi - 10.0 * math.log10(interference_mw) < self.capture_threshold_db:
                return verdict("collision")
        if snr < DEMOD_FLOOR_DB[tx.sf]:
            return verdict("below_floor")
        if dropped:
            return verdict("random_loss")
        return verdict("ok")


# -- gateways -------------------------------------------------------------------------------


class SimGateway(_Node):
    """A gateway radio on the medium; also a :class:`~passerelle.radio.base.Radio`.

    Received uplinks become :class:`RxFrame` (``tmst`` = the µs concentrator counter at
    the end of reception), kept in :attr:`heard`, queued for :meth:`receive` and passed to
    every callback of :meth:`on_frame`. A concentrator demodulates all spreading factors
    on each of its ``channels`` at once (None: any frequency).
    """

    def __init__(
        self,
        medium: Medium,
        name: str,
        position: Any,
        *,
        antenna_gain_db: float = 0.0,
        channels: tuple[float, ...] | None = None,
        tmst_offset: int = 0,
        queue_size: int = 1000,
    ) -> None:
        super().__init__(medium, name, position, antenna_gain_db)
        self.channels = channels
        self.tmst_offset = tmst_offset
        self.heard: list[RxFrame] = []
        self.sent: list[Transmission] = []
        self.refused: list[tuple[TxRequest, str]] = []
        # Where the concentrator counter comes from: the medium clock by default, a
        # packet forwarder's counter under ForwarderLink (so its tmst values line up).
        self.tmst_source: Callable[[], int] | None = None
        self._epoch = medium.clock.now()
        self._callbacks: list[Callable[[RxFrame], None]] = []
        self._queue: asyncio.Queue[RxFrame] = asyncio.Queue(maxsize=queue_size)
        self._busy: list[tuple[float, float]] = []  # scheduled transmissions (start, end)

    def tmst(self) -> int:
        """The concentrator counter now, µs, 32-bit."""
        if self.tmst_source is not None:
            return self.tmst_source() % TMST_MODULO
        elapsed = round((self.medium.clock.now() - self._epoch) * 1_000_000)
        return (elapsed + self.tmst_offset) % TMST_MODULO

    def on_frame(self, callback: Callable[[RxFrame], None]) -> None:
        self._callbacks.append(callback)

    def _channel(self, frequency: float) -> int | None:
        if self.channels is None:
            return None
        for index, channel in enumerate(self.channels):
            if _same_frequency(channel, frequency):
                return index
        return -1

    def _listens(self, tx: Transmission) -> bool:
        return not tx.invert_iq and self._channel(tx.frequency) != -1

    def _deliver(self, tx: Transmission, rssi: float, snr: float) -> None:
        frame = RxFrame(
            payload=tx.payload, frequency=tx.frequency, datarate=tx.datarate,
            coding_rate=tx.coding_rate, rssi=float(round(rssi)), snr=round(snr * 4) / 4,
            tmst=self.tmst(), gateway=self.name, channel=self._channel(tx.frequency),
        )
        self.heard.append(frame)
        if self._queue.full():
            log.warning("gateway %s: receive queue full, frame dropped", self.name)
        else:
            self._queue.put_nowait(frame)
        for callback in self._callbacks:
            callback(frame)

    # -- Radio protocol -------------------------------------------------------------------

    async def start(self) -> None:
        """Nothing to open: the medium is always there."""

    async def stop(self) -> None:
        """Nothing to close."""

    async def receive(self) -> RxFrame:
        return await self._queue.get()

    async def transmit(self, request: TxRequest) -> TxResult:
        return self.send(request)

    def send(self, request: TxRequest) -> TxResult:
        """Schedule ``request`` on the medium: at ``tmst`` on this counter, or now."""
        try:
            parse_datarate(request.datarate)
            if not 0 < len(request.payload) <= 255:
                raise ValueError(f"{len(request.payload)} bytes, LoRa takes 1..255")
            airtime = tx_airtime(request)
        except ValueError as exc:
            raise RadioError(f"gateway {self.name}: bad TxRequest: {exc}") from None
        now = self.medium.clock.now()
        lead = 0.0
        if request.tmst is not None:
            lead = _signed32(request.tmst - self.tmst()) / 1_000_000
            if lead < 0:
                return self._refuse(request, "TOO_LATE")
        start = now + lead
        end = start + airtime
        self._busy = [(s, e) for s, e in self._busy if e > now]
        if any(s < end and start < e for s, e in self._busy):
            return self._refuse(request, "COLLISION_PACKET")
        self._busy.append((start, end))

        def emit() -> None:
            self.sent.append(self.medium.transmit(
                self, request.payload, request.frequency, request.datarate, request.power,
                invert_iq=request.invert_iq, coding_rate=request.coding_rate, airtime=airtime,
            ))

        self.medium.clock.call_at(start, emit)
        return TxResult(True)

    def _refuse(self, request: TxRequest, error: str) -> TxResult:
        self.refused.append((request, error))
        log.info("gateway %s refused a downlink: %s", self.name, error)
        return TxResult(False, error)


# -- end devices ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SentUplink:
    """One transmission by a device (retransmissions are separate entries)."""

    kind: str  # "data" or "join"
    fcnt: int | None
    attempt: int  # 1 for the first transmission
    confirmed: bool
    transmission: Transmission


@dataclass(slots=True)
class _Window:
    label: str  # "rx1" | "rx2"
    opens: float
    frequency: float
    datarate: str

    def matches(self, tx: Transmission, tolerance: float) -> bool:
        return (
            _same_frequency(tx.frequency, self.frequency)
            and tx.datarate == self.datarate
            and abs(tx.start - self.opens) <= tolerance
        )


@dataclass(slots=True)
class _Exchange:
    """One uplink with its receive windows and retransmissions."""

    kind: str
    fport: int = 0
    payload: bytes = b""
    confirmed: bool = False
    attempts: int = 0
    fcnt: int | None = None
    windows: list[_Window] = field(default_factory=list)
    rx2_passed: bool = False
    concluded: bool = False


class SimDevice(_Node):
    """An :class:`EndDevice` at a position, with class A windows or class C listening.

    Class A: after each uplink, RX1 opens ``rx_delay`` s (5 s for a join) after its end on
    the uplink's channel at the uplink DR minus ``rx1_dr_offset``, RX2 1 s later on
    869.525 MHz at ``device.rx2_dr``. A downlink is heard only if it starts within
    ``window_tolerance`` of a window opening on that window's frequency and data rate
    (and then passes the medium's checks). A frame accepted in RX1 closes RX2.
    Class C: also hears anything on the RX2 parameters whenever it is not transmitting.

    A confirmed uplink (or a join) not answered by the end of RX2 is sent again, with the
    same FCnt (a new DevNonce for a join), after ACK_TIMEOUT (2 +- 1 s), up to
    ``nb_trans`` transmissions. Uplinks asked while an exchange runs wait their turn.
    """

    def __init__(
        self,
        medium: Medium,
        device: EndDevice,
        position: Any,
        *,
        name: str | None = None,
        power_dbm: float = 14.0,
        datarate: str = "SF7BW125",
        channels: tuple[float, ...] = EU868_CHANNELS,
        rx1_dr_offset: int = 0,
        rx2_frequency: float = EU868_RX2_FREQUENCY,
        nb_trans: int = 4,
        window_tolerance: float = 0.02,
        antenna_gain_db: float = 0.0,
        on_payload: Callable[[Downlink], None] | None = None,
    ) -> None:
        super().__init__(medium, name or device.dev_eui.hex(), position, antenna_gain_db)
        if datarate not in EU868_DATARATES:
            raise ValueError(f"device {self.name}: {datarate!r} is not an EU868 data rate")
        if not channels:
            raise ValueError(f"device {self.name}: no uplink channel")
        if nb_trans < 1:
            raise ValueError(f"device {self.name}: nb_trans must be >= 1, got {nb_trans}")
        self.device = device
        self.power_dbm = float(power_dbm)
        self.max_power_dbm = self.power_dbm  # EU868 TXPower index n is max - 2n dB
        self.datarate = datarate
        self.channels = tuple(channels)
        self.rx1_dr_offset = rx1_dr_offset
        self.rx2_frequency = rx2_frequency
        self.nb_trans = nb_trans
        self.window_tolerance = window_tolerance
        self.on_payload = on_payload
        self.uplinks: list[SentUplink] = []
        self.acked: list[int] = []  # FCnt of confirmed uplinks acknowledged
        self.failed: list[int] = []  # FCnt of confirmed uplinks never acknowledged
        self.rejected = 0  # downlinks heard but refused (not ours, bad MIC, counter)
        self.joins = 0
        # Its own RNG (seeded from the medium's seed and its name): channel choice and
        # ACK_TIMEOUT jitter do not shift when another device is added.
        self.rng = random.Random(f"{medium.seed}:{self.name}")
        self._queue: deque[_Exchange] = deque()
        self._exchange: _Exchange | None = None
        self._locked: dict[int, str] = {}  # id(transmission) -> "rx1" | "rx2" | "rxc"
        self._tx_until = -math.inf

    # -- what the test asks ----------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._exchange is not None or bool(self._queue)

    @property
    def received(self) -> list[Downlink]:
        return self.device.received

    def send(self, fport: int, payload: bytes, *, confirmed: bool = False) -> None:
        """Queue an uplink (sent now if the device is idle)."""
        if not 1 <= fport <= 223:
            raise ValueError(f"device {self.name}: FPort {fport} out of 1..223")
        self._enqueue(_Exchange("data", fport, bytes(payload), confirmed))

    def join(self) -> None:
        """Queue an OTAA join (JoinRequest, JoinAccept in RX1 at 5 s or RX2 at 6 s)."""
        if self.device.app_key is None:
            raise DeviceError(f"device {self.name}: an ABP device does not join")
        self._enqueue(_Exchange("join"))

    def _enqueue(self, exchange: _Exchange) -> None:
        self._queue.append(exchange)
        if self._exchange is None:
            self._next()

    # -- the exchange ----------------------------------------------------------------------

    def _next(self) -> None:
        self._exchange = self._queue.popleft() if self._queue else None
        if self._exchange is not None:
            self._attempt(self._exchange)

    def _rx1_datarate(self) -> str:
        index = max(EU868_DATARATES.index(self.datarate) - self.rx1_dr_offset, 0)
        return EU868_DATARATES[index]

    def _attempt(self, ex: _Exchange) -> None:
        ex.attempts += 1
        ex.rx2_passed = False
        if ex.kind == "join":
            frame = self.device.join_request()
            delay = JOIN_ACCEPT_DELAY1
        else:
            frame = self.device.uplink(ex.fport, ex.payload, confirmed=ex.confirmed,
                                       repeat=ex.attempts > 1)
            ex.fcnt = self.device.fcnt_up - 1
            delay = float(self.device.rx_delay or 1)
        frequency = self.rng.choice(self.channels)
        tx = self.medium.transmit(self, frame, frequency, self.datarate, self.power_dbm,
                                  invert_iq=False)
        self._tx_until = tx.end
        self.uplinks.append(SentUplink(ex.kind, ex.fcnt, ex.attempts, ex.confirmed, tx))
        rx1 = tx.end + delay
        rx2 = rx1 + RECEIVE_DELAY2_EXTRA
        rx2_dr = EU868_DATARATES[min(self.device.rx2_dr, len(EU868_DATARATES) - 1)]
        ex.windows = [
            _Window("rx1", rx1, frequency, self._rx1_datarate()),
            _Window("rx2", rx2, self.rx2_frequency, rx2_dr),
        ]
        self.medium.clock.call_at(rx2 + self.window_tolerance, lambda: self._rx2_over(ex))

    def _rx2_over(self, ex: _Exchange) -> None:
        if ex is not self._exchange or ex.concluded:
            return
        ex.rx2_passed = True
        if "rx2" not in self._locked.values():  # else: decided when that frame ends
            self._conclude(ex, answered=False)

    def _conclude(self, ex: _Exchange, *, answered: bool) -> None:
        ex.concluded = True
        ex.windows = []
        done = (
            ex.kind == "data" and (not ex.confirmed or (ex.fcnt in self.acked))
        ) or (ex.kind == "join" and answered and self.device.joined)
        if done or ex.attempts >= self.nb_trans:
            if not done and ex.kind == "data" and ex.fcnt is not None:
                self.failed.append(ex.fcnt)
                log.info("device %s: confirmed uplink %d never acknowledged", self.name, ex.fcnt)
            self._next()
            return
        wait = ACK_TIMEOUT + self.rng.uniform(-ACK_TIMEOUT_JITTER, ACK_TIMEOUT_JITTER)

        def again() -> None:
            ex.concluded = False
            self._attempt(ex)

        self.medium.clock.call_at(self.medium.clock.now() + wait, again)

    # -- hearing -----------------------------------------------------------------------------

    def _listens(self, tx: Transmission) -> bool:
        if not tx.invert_iq or tx.start < self._tx_until:
            return False
        label = None
        ex = self._exchange
        if ex is not None and not ex.concluded:
            for window in ex.windows:
                if window.matches(tx, self.window_tolerance):
                    label = window.label
                    break
        if label is None and self.device.device_class == "C":
            rx2_dr = EU868_DATARATES[min(self.device.rx2_dr, len(EU868_DATARATES) - 1)]
            if _same_frequency(tx.frequency, self.rx2_frequency) and tx.datarate == rx2_dr:
                label = "rxc"
        if label is None:
            return False
        self._locked[id(tx)] = label
        return True

    def _missed(self, tx: Transmission, outcome: str) -> None:
        label = self._locked.pop(id(tx), None)
        self._after_window_frame(label, answered=False)

    def _deliver(self, tx: Transmission, rssi: float, snr: float) -> None:
        label = self._locked.pop(id(tx), None)
        answered = self._accept(tx.payload)
        self._after_window_frame(label, answered=answered)

    def _after_window_frame(self, label: str | None, *, answered: bool) -> None:
        ex = self._exchange
        if ex is None or ex.concluded:
            return
        if answered and (label in ("rx1", "rx2") or self._ack_pending_done(ex)):
            # A frame for us in RX1 means no RX2 (LoRaWAN 1.0.4, 3.3.1).
            self._conclude(ex, answered=True)
        elif label == "rx2" and ex.rx2_passed and "rx2" not in self._locked.values():
            self._conclude(ex, answered=False)

    def _ack_pending_done(self, ex: _Exchange) -> bool:
        # Class C: an ACK may come in RXC too, outside RX1/RX2.
        return ex.kind == "data" and ex.confirmed and ex.fcnt in self.acked

    def _accept(self, payload: bytes) -> bool:
        """Hand a downlink to the EndDevice; True if it was for us and valid."""
        ex = self._exchange
        is_join_accept = bool(payload) and payload[0] >> 5 == phy.MType.JoinAccept
        try:
            if is_join_accept:
                if ex is None or ex.kind != "join":
                    raise DeviceError("JoinAccept while not joining")
                self.device.accept(payload)
                self.joins += 1
                log.info("device %s joined as %08x", self.name, self.device.dev_addr)
                return True
            down = self.device.receive(payload)
        except (DeviceError, ValueError) as exc:
            self.rejected += 1
            log.debug("device %s refused a downlink: %s", self.name, exc)
            return False
        if self.device.datarate is not None:  # a LinkADRReq obeyed: next uplinks use it
            self.datarate = EU868_DATARATES[self.device.datarate]
            self.power_dbm = self.max_power_dbm - 2.0 * self.device.tx_power
        if down.ack and ex is not None and ex.kind == "data" and ex.confirmed:
            if ex.fcnt is not None and ex.fcnt not in self.acked:
                self.acked.append(ex.fcnt)
        if down.fport and self.on_payload is not None:
            self.on_payload(down)
        return True


# -- a real packet forwarder in front of a gateway ----------------------------------------


def txpk_to_request(txpk: dict[str, Any], payload: bytes) -> TxRequest:
    """A PULL_RESP ``txpk`` as the concentrator would take it.

    Defaults follow lora_pkt_fwd: no ``ipol`` means not inverted, no ``ncrc`` means CRC
    on, no ``powe`` means the board's default (14 dBm here).
    """
    try:
        tmst = None if txpk.get("imme") else int(txpk["tmst"])
        return TxRequest(
            payload=payload,
            frequency=float(txpk["freq"]),
            datarate=str(txpk["datr"]),
            power=float(txpk.get("powe", 14)),
            tmst=tmst,
            coding_rate=str(txpk.get("codr", "4/5")),
            invert_iq=bool(txpk.get("ipol", False)),
            preamble=int(txpk.get("prea", 8)),
            crc=not txpk.get("ncrc", False),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RadioError(f"txpk {txpk!r}: cannot make a transmission of it: {exc}") from None


class ForwarderLink:
    """Joins a :class:`SimGateway` to a :class:`~hil.packet_forwarder.SimPacketForwarder`.

    Needs the medium on an :class:`AsyncioClock` (frames and downlinks in real time).
    What the gateway hears is pushed to the server as ``rxpk`` (with the medium's RSSI,
    SNR and tmst); every PULL_RESP the forwarder accepted is sent on the medium at its
    ``tmst``. The gateway's counter becomes the forwarder's, so the server's tmst
    arithmetic (uplink tmst + 1 s) lands on the device's RX1.
    """

    def __init__(self, gateway: SimGateway, forwarder: Any) -> None:
        if not isinstance(gateway.medium.clock, AsyncioClock):
            raise RuntimeError("ForwarderLink needs a Medium on an AsyncioClock (real time)")
        self.gateway = gateway
        self.forwarder = forwarder
        self.pushed = 0
        self.push_failures = 0
        self.tx_results: list[TxResult] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._downlink_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self.gateway.tmst_source = self.forwarder.tmst
        self.gateway.on_frame(self._heard)
        self._downlink_task = asyncio.create_task(self._downlinks(), name="medium downlinks")

    async def stop(self) -> None:
        tasks = list(self._tasks)
        if self._downlink_task is not None:
            tasks.append(self._downlink_task)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        self._downlink_task = None

    async def __aenter__(self) -> ForwarderLink:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def _heard(self, frame: RxFrame) -> None:
        task = asyncio.create_task(self._push(frame), name="medium push")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _push(self, frame: RxFrame) -> None:
        if await self.forwarder.push_frame(frame):
            self.pushed += 1
        else:
            self.push_failures += 1
            log.warning("gateway %s: PUSH_DATA not acknowledged", self.gateway.name)

    async def _downlinks(self) -> None:
        while True:
            downlink = await self.forwarder.downlinks.get()
            if downlink.tx_error is not None:
                continue  # the forwarder refused it: it never reaches the radio
            try:
                request = txpk_to_request(downlink.txpk, downlink.payload)
                result = self.gateway.send(request)
            except RadioError as exc:
                log.warning("gateway %s: downlink not sent: %s", self.gateway.name, exc)
                result = TxResult(False, "BAD_TXPK")
            self.tx_results.append(result)
