"""The ETSI EN 300 220 duty-cycle gate for EU868: every transmission passes here first.

Regulation (ETSI EN 300 220-2 V3.2.1 annex B, EC decision 2017/1483): in each sub-band a
transmitter may be "on" at most a fraction of any one hour, at most at a given power.
The gate keeps, per sub-band, a ledger of the transmissions of the last hour and answers
whether one more fits, when it would, or why it never will.

How airtime is counted (conservative on purpose): a transmission counts *wholly* in every
one-hour window it touches, even by a millisecond. A window ending at ``T`` therefore
charges every transmission with ``start <= T < end + window``. If that charge stays within
the allowance for every ``T``, the true on-air time in every window, however it is slid,
stays within it too. This is a sliding window, not a bucket reset every hour: a burst at
10:59 still counts at 11:30.

Power: the regulation states ERP (relative to a half-wave dipole); concentrators and
``TxRequest.power`` take EIRP (relative to an isotropic antenna). EIRP = ERP + 2.15 dB,
so 25 mW ERP (13.98 dBm) is 16.13 dBm EIRP and 500 mW ERP (26.99 dBm) is 29.14 dBm EIRP.
The gate takes **dBm EIRP**, compared with the band maximum converted to EIRP.

Time: the gate reads an injected monotonic clock (default :func:`time.monotonic`), so a
wall-clock step (NTP, a Raspberry Pi booting without an RTC) never frees budget early.
Snapshots store wall-clock times so a restart does not reset the hour (see
:meth:`DutyCycleGate.snapshot`).

Concurrency: the gate is used from one asyncio loop (not thread-safe). ``acquire`` plans
and *reserves* its slot in one synchronous step, before it sleeps; a second ``acquire``
racing it sees the reservation and plans around it, so two requests never both take the
last room in a band. A cancelled ``acquire`` gives its reservation back.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("passerelle.policy.dutycycle")

ERP_TO_EIRP_DB = 2.15  # gain of a half-wave dipole over an isotropic antenna
WINDOW_S = 3600.0  # ETSI EN 300 220: duty cycle observed over one hour

# Sums of float airtimes drift by ~1e-15 s; without a tolerance a request that exactly
# fills the allowance could be refused. One nanosecond is far below any LoRa symbol.
_EPS = 1e-9
# How close a channel edge may come to a band edge, in MHz (float noise on 869.525-0.125).
_EDGE_TOLERANCE_MHZ = 1e-6
# Ledger entries kept per band before the two oldest are merged (see _Ledger.add).
MAX_ENTRIES_PER_BAND = 10_000
SNAPSHOT_FORMAT = "passerelle.dutycycle/1"


@dataclass(frozen=True, slots=True)
class SubBand:
    """One regulated sub-band: where it is, how much of an hour, how strong."""

    name: str
    low_mhz: float
    high_mhz: float
    duty_cycle: float  # fraction of the hour: 0.01 for 1 %
    max_erp_mw: float

    @property
    def max_erp_dbm(self) -> float:
        return 10.0 * math.log10(self.max_erp_mw)

    @property
    def max_eirp_dbm(self) -> float:
        return self.max_erp_dbm + ERP_TO_EIRP_DB

    def allowance_s(self, window: float = WINDOW_S) -> float:
        """Seconds on air allowed in one window."""
        return self.duty_cycle * window

    def contains(self, frequency_mhz: float, bw_khz: float = 125.0) -> bool:
        """Whether the whole channel (centre ± half the bandwidth) lies inside the band."""
        half = bw_khz / 2000.0
        return (
            frequency_mhz - half >= self.low_mhz - _EDGE_TOLERANCE_MHZ
            and frequency_mhz + half <= self.high_mhz + _EDGE_TOLERANCE_MHZ
        )


# ETSI EN 300 220-2 V3.2.1 annex B / EC decision 2017/1483 as quoted in REFERENCE.md.
# 865-868 MHz is 1 %, not 0.1 % (Basics Station got this wrong, issue #189).
# 869.7-870 MHz also allows 5 mW with no duty cycle; this table keeps the 25 mW / 1 % row.
EU868_BANDS: tuple[SubBand, ...] = (
    SubBand("K", 863.0, 865.0, 0.001, 25.0),
    SubBand("L", 865.0, 868.0, 0.01, 25.0),
    SubBand("M", 868.0, 868.6, 0.01, 25.0),
    SubBand("N", 868.7, 869.2, 0.001, 25.0),
    SubBand("P", 869.4, 869.65, 0.10, 500.0),
    SubBand("Q", 869.7, 870.0, 0.01, 25.0),
)


def find_band(
    frequency_mhz: float, bw_khz: float = 125.0, bands: Iterable[SubBand] = EU868_BANDS
) -> SubBand | None:
    """The sub-band that holds the whole channel, or None."""
    for band in bands:
        if band.contains(frequency_mhz, bw_khz):
            return band
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    """The gate's answer. ``wait_s`` is how long after the asked start time the
    transmission would fit (0 when ``ok``; ``math.inf`` when it never will)."""

    ok: bool
    band: str | None
    wait_s: float
    reason: str | None = None


def _number(name: str, value: Any, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be positive, got {value!r}")
    return float(value)


def _secs(x: float) -> str:
    """A duration for a human: 812, 35.9, 0.412."""
    if x >= 100:
        return f"{x:.0f}"
    if x >= 1:
        return f"{x:.1f}"
    return f"{x:.3f}"


# An entry: (start, end, airtime) on the gate's clock. ``end`` may lie after
# ``start + airtime`` (a merged entry, or slack for a late start): the entry is charged
# wholly to every window ending in [start, end + window).
_Entry = tuple[float, float, float]


class _Ledger:
    """One band's transmissions, sorted by start."""

    __slots__ = ("entries", "max_entries", "window")

    def __init__(self, window: float, max_entries: int) -> None:
        self.window = window
        self.max_entries = max_entries
        self.entries: list[_Entry] = []

    def prune(self, now: float) -> None:
        """Forget entries that no window ending now or later charges."""
        cutoff = now - self.window
        i = 0
        # Sorted by start, not end: stop at the first entry still charged. A few stale
        # entries behind a long one may stay a little longer; they are harmless.
        while i < len(self.entries) and self.entries[i][1] + _EPS <= cutoff:
            i += 1
        if i:
            del self.entries[:i]

    def add(self, entry: _Entry) -> _Entry:
        bisect.insort(self.entries, entry)
        if len(self.entries) > self.max_entries:
            # Bound memory: fold the two oldest into one that is charged to every window
            # either was charged to, with both airtimes. Never frees budget.
            (s1, e1, a1), (_s2, e2, a2) = self.entries[0], self.entries[1]
            self.entries[0:2] = [(s1, max(e1, e2), a1 + a2)]
        return entry

    def remove(self, entry: _Entry) -> None:
        try:
            self.entries.remove(entry)
        except ValueError:
            pass  # merged into an older entry: keeping it charged is the safe side

    # An entry stops counting at end + window; the _EPS keeps float rounding of
    # ``(end + window) - window`` from counting it a moment longer than planned.

    def charge(self, t: float) -> float:
        """Airtime charged to the window ending at ``t``."""
        low = t - self.window + _EPS
        return sum(a for s, e, a in self.entries if s <= t and e > low)

    def charged_from(self, t: float) -> float:
        """Airtime still charged at ``t`` or later, counting reservations after ``t``."""
        low = t - self.window + _EPS
        return sum(a for _s, e, a in self.entries if e > low)

    def last_start(self) -> float:
        return self.entries[-1][0] if self.entries else -math.inf

    def plan(self, at: float, airtime: float, span: float, limit: float) -> float:
        """The earliest start >= ``at`` for a transmission of ``airtime`` charged until
        ``start + span + window``, keeping every window within ``limit``.

        Requires ``airtime <= limit``. A request may go before later reservations only
        if it fits at ``at`` itself; otherwise it queues after the last one (no
        overtaking: it keeps the search to one monotone scan).
        """
        if self.last_start() > at and self._fits_at(at, airtime, span, limit):
            return at
        s0 = max(at, self.last_start())
        # Every start is <= s0, so the charge can only fall after s0, each time an
        # entry's end + window passes: find the first such moment with enough room.
        low = s0 - self.window + _EPS
        charged = sorted((e, a) for _s, e, a in self.entries if e > low)
        excess = sum(a for _e, a in charged) + airtime - limit
        if excess <= _EPS:
            return s0
        freed = 0.0
        for end, a in charged:
            freed += a
            if freed >= excess - _EPS:
                return max(s0, end + self.window)
        raise AssertionError("unreachable: airtime <= limit")  # pragma: no cover

    def _fits_at(self, s: float, airtime: float, span: float, limit: float) -> bool:
        # The candidate is charged to windows ending in [s, s + span + window). Between
        # two later starts the charge only falls, so its peaks in that range are at s
        # and at each later start.
        horizon = s + span + self.window
        peaks = [s] + [t for t, _e, _a in self.entries if s < t < horizon]
        return all(self.charge(t) + airtime <= limit + _EPS for t in peaks)


class DutyCycleGate:
    """Per-sub-band sliding one-hour airtime ledger; see the module docstring.

    ``clock`` is the monotonic clock every time argument (``at``, ``deadline``) is on;
    ``sleep`` is awaited by :meth:`acquire` (injectable for simulated time);
    ``wall_clock`` (Unix seconds) is used only to persist the ledger.
    ``start_slack`` is how late after :meth:`acquire` returns the transmission may begin
    and still be covered by what was recorded (the ledger charges it that much longer).
    ``max_entries`` bounds each band's ledger (older entries are merged, never freed).
    """

    def __init__(
        self,
        bands: Iterable[SubBand] = EU868_BANDS,
        window: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
        *,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        wall_clock: Callable[[], float] = time.time,
        start_slack: float = 0.5,
        max_entries: int = MAX_ENTRIES_PER_BAND,
    ) -> None:
        self.bands: tuple[SubBand, ...] = tuple(bands)
        self.window = _number("window", window, positive=True)
        self.start_slack = _number("start_slack", start_slack)
        if self.start_slack < 0:
            raise ValueError(f"start_slack must be >= 0, got {start_slack!r}")
        self._check_table(self.bands)
        self._clock = clock
        self._sleep = sleep
        self._wall_clock = wall_clock
        if isinstance(max_entries, bool) or not isinstance(max_entries, int) or max_entries < 2:
            raise ValueError(f"max_entries must be an integer >= 2, got {max_entries!r}")
        self._ledgers = {b.name: _Ledger(self.window, max_entries) for b in self.bands}
        self._by_name = {b.name: b for b in self.bands}
        self._refusals: dict[str, int] = {}

    @staticmethod
    def _check_table(bands: tuple[SubBand, ...]) -> None:
        if not bands:
            raise ValueError("band table is empty")
        names = [b.name for b in bands]
        if len(set(names)) != len(names):
            raise ValueError(f"band table: duplicate band names in {names}")
        for b in bands:
            if not (b.low_mhz < b.high_mhz and 0 < b.duty_cycle <= 1 and b.max_erp_mw > 0):
                raise ValueError(f"band table: band {b.name} is inconsistent: {b}")
        ordered = sorted(bands, key=lambda b: b.low_mhz)
        for a, b in zip(ordered, ordered[1:], strict=False):
            if b.low_mhz < a.high_mhz:
                raise ValueError(f"band table: bands {a.name} and {b.name} overlap")

    # ------------------------------------------------------------------ queries

    def band_of(self, frequency_mhz: float, bw_khz: float = 125.0) -> SubBand | None:
        return find_band(frequency_mhz, bw_khz, self.bands)

    def _refuse(self, cause: str, band: str | None, wait: float, reason: str) -> Decision:
        self._refusals[cause] = self._refusals.get(cause, 0) + 1
        log.debug("refused: %s", reason)
        return Decision(False, band, wait, reason)

    def _admit(
        self, frequency_mhz: Any, airtime_s: Any, power_dbm: Any, bw_khz: Any
    ) -> tuple[SubBand | None, Decision | None]:
        """The band, or the refusal that no waiting can cure."""
        f = _number("frequency_mhz", frequency_mhz)
        airtime = _number("airtime_s", airtime_s, positive=True)
        power = _number("power_dbm", power_dbm)
        bw = _number("bw_khz", bw_khz, positive=True)
        band = self.band_of(f, bw)
        if band is None:
            return None, self._refuse(
                "out_of_band",
                None,
                math.inf,
                f"{f:g} MHz ({bw:g} kHz wide): outside every EU868 sub-band",
            )
        if power > band.max_eirp_dbm + _EPS:
            return band, self._refuse(
                "over_power",
                band.name,
                math.inf,
                f"{power:g} dBm EIRP above band {band.name} maximum "
                f"{band.max_eirp_dbm:.2f} dBm EIRP ({band.max_erp_mw:g} mW ERP)",
            )
        limit = band.allowance_s(self.window)
        if airtime > limit + _EPS:
            return band, self._refuse(
                "too_long",
                band.name,
                math.inf,
                f"band {band.name}: {_secs(airtime)} s on air exceeds the "
                f"{limit:g} s allowed per hour",
            )
        return band, None

    def _busy_reason(self, band: SubBand, at: float, wait: float) -> str:
        used = self._ledgers[band.name].charged_from(at)
        limit = band.allowance_s(self.window)
        return (
            f"band {band.name}: {used:.2f} s of {limit:g} s used in the last hour; "
            f"fits in {_secs(wait)} s"
        )

    def check(
        self,
        frequency_mhz: float,
        airtime_s: float,
        power_dbm: float,
        bw_khz: float = 125.0,
        at: float | None = None,
    ) -> Decision:
        """Whether a transmission starting at ``at`` (default now) fits. Records nothing:
        call :meth:`record` when it is actually sent, with no ``await`` in between."""
        band, refusal = self._admit(frequency_mhz, airtime_s, power_dbm, bw_khz)
        if refusal is not None:
            return refusal
        assert band is not None
        now = self._clock()
        start_at = now if at is None else _number("at", at)
        ledger = self._ledgers[band.name]
        ledger.prune(min(now, start_at))  # a past start is judged on the hour before it
        start = ledger.plan(start_at, float(airtime_s), float(airtime_s), self._limit(band))
        if start <= start_at:
            return Decision(True, band.name, 0.0)
        wait = start - start_at
        return self._refuse("busy", band.name, wait, self._busy_reason(band, start_at, wait))

    def record(
        self, frequency_mhz: float, airtime_s: float, at: float | None = None, bw_khz: float = 125.0
    ) -> None:
        """Commit a transmission actually made, starting at ``at`` (default now).

        A transmission outside every band is a fact the gate cannot charge; it is logged
        and counted, not raised (the frame is already on air)."""
        f = _number("frequency_mhz", frequency_mhz)
        airtime = _number("airtime_s", airtime_s, positive=True)
        now = self._clock()
        start = now if at is None else _number("at", at)
        band = self.band_of(f, _number("bw_khz", bw_khz, positive=True))
        if band is None:
            self._refusals["recorded_out_of_band"] = (
                self._refusals.get("recorded_out_of_band", 0) + 1
            )
            log.warning("recorded a transmission at %g MHz, outside every sub-band", f)
            return
        ledger = self._ledgers[band.name]
        ledger.prune(now)
        ledger.add((start, start + airtime, airtime))

    async def acquire(
        self,
        frequency_mhz: float,
        airtime_s: float,
        power_dbm: float,
        deadline: float | None,
        bw_khz: float = 125.0,
    ) -> Decision:
        """Wait for room and record the transmission, or refuse it.

        Fits now: recorded, returns ok at once. Fits by ``deadline`` (gate clock; None =
        no deadline, which waits at most one window per request queued ahead): reserves
        the slot, sleeps until it, returns ok (``wait_s`` = time waited). Otherwise
        refuses with the reason; nothing is recorded and the frame must not be sent.
        The caller transmits as soon as this returns ok.
        """
        band, refusal = self._admit(frequency_mhz, airtime_s, power_dbm, bw_khz)
        if refusal is not None:
            return refusal
        assert band is not None
        if deadline is not None:
            deadline = _number("deadline", deadline)
        airtime = float(airtime_s)
        span = airtime + self.start_slack
        ledger = self._ledgers[band.name]
        limit = self._limit(band)
        began = now = self._clock()
        while True:
            ledger.prune(now)
            start = ledger.plan(now, airtime, span, limit)
            if deadline is not None and start > deadline + _EPS:
                wait = start - now
                reason = self._busy_reason(band, now, wait)
                if deadline < now:
                    reason += f", but the deadline passed {_secs(now - deadline)} s ago"
                else:
                    reason += f", after the deadline (in {_secs(deadline - now)} s)"
                return self._refuse("deadline", band.name, wait, reason)
            # Reserve before sleeping: plan + add run with no await between them.
            entry = ledger.add((start, start + span, airtime))
            if start <= now:
                return Decision(True, band.name, max(0.0, now - began))
            try:
                while (remaining := start - self._clock()) > 0:
                    await self._sleep(remaining)
            except BaseException:
                ledger.remove(entry)  # cancelled: give the slot back
                raise
            late = self._clock() - start
            if late <= self.start_slack + _EPS:
                return Decision(True, band.name, max(0.0, self._clock() - began))
            # Woke later than the slack covers (a stalled loop): the entry no longer
            # describes the transmission. Drop it and plan again from now.
            log.warning("band %s: woke %.3f s after the reserved slot; replanning", band.name, late)
            ledger.remove(entry)
            now = self._clock()

    def _limit(self, band: SubBand) -> float:
        return band.allowance_s(self.window)

    def utilisation(self) -> dict[str, float]:
        """Band -> fraction of its allowance charged to the hour ending now (0..1+).

        Counts what started by now (reservations ahead are not yet used)."""
        now = self._clock()
        out: dict[str, float] = {}
        for band in self.bands:
            ledger = self._ledgers[band.name]
            ledger.prune(now)
            out[band.name] = ledger.charge(now) / self._limit(band)
        return out

    def ledger_sizes(self) -> dict[str, int]:
        """Band -> entries held (memory check for the health state)."""
        now = self._clock()
        for ledger in self._ledgers.values():
            ledger.prune(now)
        return {name: len(ledger.entries) for name, ledger in self._ledgers.items()}

    @property
    def refusals(self) -> dict[str, int]:
        """Refusals by cause (out_of_band, over_power, too_long, busy, deadline) and
        transmissions recorded outside every band, for the health state."""
        return dict(self._refusals)

    # --------------------------------------------------------------- persistence

    def snapshot(self) -> dict[str, Any]:
        """The ledger as JSON-able data, times in wall-clock (Unix) seconds.

        Monotonic clock values mean nothing after a reboot; wall-clock times do, as far
        as the wall clock is right (see :meth:`restore`)."""
        now = self._clock()
        wall = self._wall_clock()
        offset = wall - now
        bands: dict[str, list[list[float]]] = {}
        for name, ledger in self._ledgers.items():
            ledger.prune(now)
            if ledger.entries:
                bands[name] = [[s + offset, e + offset, a] for s, e, a in ledger.entries]
        return {
            "format": SNAPSHOT_FORMAT,
            "saved_at": wall,
            "window_s": self.window,
            "bands": bands,
        }

    def restore(self, snapshot: Mapping[str, Any], now_wall: float | None = None) -> int:
        """Add a :meth:`snapshot`'s entries to the ledger; returns how many were kept.

        Call once, at start-up. Times are mapped through the wall clock. If the wall
        clock now reads *earlier* than when the snapshot was saved (a Pi without RTC
        before NTP), the gate assumes no time passed since saving, the safe side. A wall
        clock that jumped forward cannot be told from real elapsed time.
        Entries of bands this gate does not know are logged and skipped.
        """
        if not isinstance(snapshot, Mapping):
            raise ValueError(
                f"duty-cycle snapshot: expected a mapping, got {type(snapshot).__name__}"
            )
        found = snapshot.get("format")
        if found != SNAPSHOT_FORMAT:
            raise ValueError(f"duty-cycle snapshot: format {found!r}, expected {SNAPSHOT_FORMAT!r}")
        saved_at = _number("duty-cycle snapshot: saved_at", snapshot.get("saved_at"))
        bands = snapshot.get("bands")
        if not isinstance(bands, Mapping):
            raise ValueError("duty-cycle snapshot: 'bands' must be a mapping of band -> entries")
        parsed: list[tuple[str, float, float, float]] = []
        for name, entries in bands.items():
            if not isinstance(entries, list):
                raise ValueError(f"duty-cycle snapshot: bands.{name} must be a list")
            for i, item in enumerate(entries):
                where = f"duty-cycle snapshot: bands.{name}[{i}]"
                if not isinstance(item, list | tuple) or len(item) != 3:
                    raise ValueError(f"{where}: expected [start, end, airtime], got {item!r}")
                s, e, a = (_number(f"{where}", v) for v in item)
                if a <= 0 or e < s:
                    raise ValueError(f"{where}: inconsistent entry {item!r}")
                parsed.append((str(name), s, e, a))
        now = self._clock()
        wall = self._wall_clock() if now_wall is None else _number("now_wall", now_wall)
        elapsed = max(0.0, wall - saved_at)
        base = now - elapsed - saved_at  # gate time = wall time + base
        kept = 0
        for name, s, e, a in parsed:
            ledger = self._ledgers.get(name)
            if ledger is None:
                log.warning("duty-cycle snapshot: unknown band %r skipped", name)
                continue
            if e + base <= now - self.window:
                continue
            ledger.add((s + base, e + base, a))
            kept += 1
        return kept
