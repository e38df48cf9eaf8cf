"""The Modbus poller: a :class:`~passerelle.sources.Source` reading the devices on one bus.

Each device has its own polling task on a deadline grid, so a slow or dead device delays the
others by at most one of its reads (the bus lock is FIFO), never by its whole outage:

* A poll reads the device's planned blocks (:func:`.maps.plan_reads`). A timeout, garbled
  reply or lost connection ends the poll at once: the other blocks would fail the same way
  and only hold the bus. An exception reply means the device is alive: the next block is
  read. A merged block refused with exception 02 (illegal data address: some devices refuse
  reads that span addresses they do not implement) is split: first at its gaps, then, if a
  gapless run is refused too, into one read per entry.
* ``offline_after`` failed polls in a row mark the device offline: one log line and one
  ``online = false`` diagnostic record, not one per poll. It is then retried with exponential
  backoff (interval x 2, x 4 ... up to ``backoff_max``) and marked online again, with a
  record and a log line, at its first answer.
* Values that cannot be decoded, and NaN or infinite floats (see :mod:`.registers`), are
  counted per device and not emitted; they never stop the loop.

Records are ``Record(device name, entry name, value, wall time, unit)``, emitted grouped by
the entries' priorities (energy counters as ENERGY).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..model import Priority, Record, check_name
from ..sources import Emit
from .bus import (
    BadReply,
    Disconnected,
    ExceptionReply,
    ModbusBus,
    ModbusError,
)
from .maps import DEFAULT_MAX_GAP, MAPS, MapEntry, ReadBlock, plan_reads
from .registers import RegisterError, decode, is_finite, word_count

log = logging.getLogger("passerelle.modbus")

Clock = Callable[[], float]
IntervalAt = Callable[[float], float]

_NO_ANSWER_CODES = (0x0A, 0x0B)  # a TCP gateway speaking for a unit that did not answer


@dataclass(frozen=True)
class DeviceSpec:
    """One device to poll: its name (the records' ``device``), unit id and entries."""

    name: str
    unit: int
    entries: tuple[MapEntry, ...]
    interval: float | None = None
    """Fixed poll interval for this device; None follows the source's (and ``interval_at``)."""


@dataclass
class DeviceHealth:
    online: bool = True
    last_error: str | None = None
    polls: int = 0
    failed_polls: int = 0
    consecutive_failures: int = 0
    bad_values: int = 0
    """Entries whose registers could not be decoded."""
    invalid_values: int = 0
    """NaN or infinite readings, not emitted."""
    offline_since: float | None = None
    split_blocks: list[str] = field(default_factory=list)


class ModbusSource:
    """Poll ``devices`` on ``bus`` and emit their readings (see the module doc).

    ``interval``: default seconds between polls. ``interval_at``: wall time -> interval,
    consulted before each poll of a device without its own interval (a day/night schedule);
    it defaults to the constant ``interval``. ``offline_after``: failed polls in a row
    before a device is declared offline. ``backoff_max``: longest wait between retries of an
    offline device.
    """

    def __init__(
        self,
        name: str,
        bus: ModbusBus,
        devices: Sequence[DeviceSpec],
        *,
        interval: float,
        offline_after: int = 3,
        backoff_max: float = 300.0,
        interval_at: IntervalAt | None = None,
        max_gap: int = DEFAULT_MAX_GAP,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.name = check_name(name)
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {interval}")
        if offline_after < 1:
            raise ValueError(f"offline_after must be >= 1, got {offline_after}")
        units = [d.unit for d in devices]
        if len(set(units)) != len(units):
            raise ValueError(f"{name}: two devices share a unit id on one bus: {sorted(units)}")
        self.bus = bus
        self.devices = list(devices)
        self.interval = float(interval)
        self.offline_after = offline_after
        self.backoff_max = backoff_max
        self.interval_at: IntervalAt = interval_at or (lambda _now: self.interval)
        self.max_gap = max_gap
        self._clock = clock
        self._wall = wall
        self.health: dict[str, DeviceHealth] = {d.name: DeviceHealth() for d in devices}

    @classmethod
    def from_config(cls, cfg: Any, *, interval_at: IntervalAt | None = None) -> ModbusSource:
        """Build from a checked ``ModbusRtuSourceConfig`` / ``ModbusTcpSourceConfig``."""
        if cfg.type == "modbus-rtu":
            bus = ModbusBus.serial(
                cfg.port,
                baud=cfg.baud,
                parity=cfg.parity,
                stopbits=cfg.stopbits,
                bytesize=cfg.bytesize,
                timeout=cfg.timeout,
                retries=cfg.retries,
            )
        elif cfg.type == "modbus-tcp":
            bus = ModbusBus.tcp(cfg.host, cfg.port, timeout=cfg.timeout, retries=cfg.retries)
        else:
            raise ValueError(f"not a modbus source type: {cfg.type!r}")
        default = Priority[cfg.priority.upper()]
        devices = [
            DeviceSpec(d.name, d.unit, tuple(_entries(d, default)), d.interval) for d in cfg.devices
        ]
        return cls(
            cfg.name,
            bus,
            devices,
            interval=cfg.interval,
            offline_after=cfg.offline_after,
            backoff_max=cfg.backoff_max,
            interval_at=interval_at,
        )

    # ------------------------------------------------------------------------------ running

    async def run(self, emit: Emit) -> None:
        async with self.bus, asyncio.TaskGroup() as tasks:
            for dev in self.devices:
                tasks.create_task(self._device_loop(dev, emit), name=f"{self.name}/{dev.name}")

    def _interval(self, dev: DeviceSpec) -> float:
        if dev.interval is not None:
            return dev.interval
        try:
            value = float(self.interval_at(self._wall()))
        except Exception:  # a broken schedule must not stop metering
            log.exception("%s: interval_at failed; polling every %gs", self.name, self.interval)
            return self.interval
        return value if value > 0 and math.isfinite(value) else self.interval

    async def _device_loop(self, dev: DeviceSpec, emit: Emit) -> None:
        health = self.health[dev.name]
        blocks = plan_reads(dev.entries, max_gap=self.max_gap)
        due = self._clock()
        while True:
            await asyncio.sleep(max(0.0, due - self._clock()))
            records, answered = await self._poll(dev, blocks, health)
            health.polls += 1
            if answered:
                if not health.online:
                    down = self._wall() - (health.offline_since or self._wall())
                    log.info(
                        "%s: %s (unit %d) back online after %.0fs",
                        self.name,
                        dev.name,
                        dev.unit,
                        down,
                    )
                    records.append(
                        (Record(dev.name, "online", True, self._wall()), Priority.DIAGNOSTIC)
                    )
                    health.online, health.offline_since = True, None
                health.consecutive_failures = 0
            else:
                health.failed_polls += 1
                health.consecutive_failures += 1
                if health.online and health.consecutive_failures >= self.offline_after:
                    health.online, health.offline_since = False, self._wall()
                    log.warning(
                        "%s: %s (unit %d) offline after %d failed polls: %s",
                        self.name,
                        dev.name,
                        dev.unit,
                        health.consecutive_failures,
                        health.last_error,
                    )
                    records.append(
                        (Record(dev.name, "online", False, self._wall()), Priority.DIAGNOSTIC)
                    )
            await self._emit(records, emit)
            interval = self._interval(dev)
            now = self._clock()
            if not health.online:
                k = health.consecutive_failures - self.offline_after + 1
                due = now + min(self.backoff_max, interval * 2.0 ** min(k, 30))
            else:
                due += interval
                if due < now:  # behind (a long outage of the bus): resume, do not burst
                    due = now

    @staticmethod
    async def _emit(records: list[tuple[Record, Priority]], emit: Emit) -> None:
        by_priority: dict[Priority, list[Record]] = {}
        for rec, prio in records:
            by_priority.setdefault(prio, []).append(rec)
        for prio in sorted(by_priority, reverse=True):
            await emit(by_priority[prio], prio)

    async def _poll(
        self, dev: DeviceSpec, blocks: list[ReadBlock], health: DeviceHealth
    ) -> tuple[list[tuple[Record, Priority]], bool]:
        """Read every block of ``dev``; (records, whether the device answered at all)."""
        out: list[tuple[Record, Priority]] = []
        answered = False
        i = 0
        while i < len(blocks):
            block = blocks[i]
            i += 1
            try:
                values = await self.bus.read(dev.unit, block.function, block.address, block.count)
            except ExceptionReply as exc:
                health.last_error = f"{_where(block)}: {exc}"
                if exc.code in _NO_ANSWER_CODES:
                    break
                answered = True
                if exc.code == 0x02 and len(block.entries) > 1:
                    # At its gaps first; a gapless run refused again is split into single
                    # entries the next time round.
                    if block.count > sum(e.span for e in block.entries):
                        parts = plan_reads(block.entries, max_gap=0)
                    else:
                        parts = [
                            ReadBlock(e.function, e.address, e.span, (e,)) for e in block.entries
                        ]
                    blocks[i - 1 : i] = parts
                    i -= 1
                    health.split_blocks.append(_where(block))
                    log.info(
                        "%s: %s refuses %s: splitting the read",
                        self.name,
                        dev.name,
                        _where(block),
                    )
                continue
            except BadReply as exc:
                answered = True
                health.last_error = f"{_where(block)}: {exc}"
                continue
            except (ModbusError, Disconnected) as exc:
                health.last_error = f"{_where(block)}: {exc}"
                break
            answered = True
            t = self._wall()
            for entry in block.entries:
                try:
                    value = decode(
                        block.words_of(entry, values),
                        entry.type,
                        entry.order,
                        scale=entry.scale,
                        offset=entry.offset,
                    )
                except RegisterError as exc:
                    health.bad_values += 1
                    health.last_error = f"{entry.name}: {exc}"
                    continue
                if not is_finite(value):
                    health.invalid_values += 1
                    continue
                out.append((Record(dev.name, entry.name, value, t, entry.unit), entry.priority))
        return out, answered

    # ------------------------------------------------------------------------------ health

    def stats(self) -> dict[str, Any]:
        """Health of each device, with the bus counters of its unit id."""
        bus_stats = self.bus.stats()
        devices: dict[str, Any] = {}
        for dev in self.devices:
            h = asdict(self.health[dev.name])
            counters = bus_stats.get(dev.unit)
            h["unit"] = dev.unit
            h["counters"] = counters.as_dict() if counters else {}
            devices[dev.name] = h
        return {"bus": self.bus.description, "devices": devices}


def _where(block: ReadBlock) -> str:
    return f"{block.function} {block.address:#06x}+{block.count}"


def _entries(dev: Any, default: Priority) -> Iterable[MapEntry]:
    """Map entries of a configured device (its map, filtered by ``only``, or its registers)."""
    if dev.map is not None:
        entries = MAPS[dev.map].entries
        if dev.only:
            wanted = set(dev.only)
            entries = tuple(e for e in entries if e.name in wanted)
        return entries
    out = []
    for r in dev.registers or ():
        type_ = r.type or "bool"
        word_count(type_)
        prio = Priority[r.priority.upper()] if r.priority else default
        out.append(
            MapEntry(r.name, r.address, r.function, type_, r.order, r.scale, r.offset, r.unit, prio)
        )
    return out
