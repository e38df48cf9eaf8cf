"""Simulated sources for hardware-in-the-loop and soak tests (config types ``sim.*``).

* :class:`CounterSource` emits 0, 1, 2... so the far end can prove nothing was lost or
  duplicated end to end; it is also the throughput load generator.
* :class:`EnvironmentSensor` looks like a cabinet's temperature/humidity/pressure board,
  noise and occasional glitches included, reproducibly for a given seed.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from typing import Any

from passerelle.model import Priority, Record, check_name
from passerelle.sources import Emit

__all__ = ["CounterSource", "EnvironmentSensor"]

Clock = Callable[[], float]


def _check_interval(interval: float) -> float:
    interval = float(interval)
    if not (interval > 0 and math.isfinite(interval)):
        raise ValueError(f"interval must be a positive number of seconds, got {interval}")
    return interval


class CounterSource:
    """Emit consecutive integers, one per ``interval``, as measurement ``name``.

    Scheduling is on a monotonic deadline grid, so the rate does not drift with emit latency.
    When behind (tiny interval, or ``emit`` blocked on the disk) every value owed is emitted
    in one batch per wake-up, at most ``max_batch`` at a time, which keeps a 10 kHz counter
    cheap. Values are always consecutive: catching up or not only changes the rate.

    Backpressure that outlasts ``max_backlog`` values forgives the excess time debt instead
    of bursting for minutes afterwards (``skipped`` counts the forgiven ticks; they are not
    gaps in the sequence, just values never generated).
    """

    def __init__(
        self,
        name: str,
        interval: float,
        start: int = 0,
        device: str | None = None,
        priority: Priority = Priority.TELEMETRY,
        *,
        max_batch: int = 5000,
        max_backlog: int | None = None,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.name = check_name(name)
        self.device = check_name(device or name)
        self.interval = _check_interval(interval)
        self.priority = Priority(priority)
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.max_batch = max_batch
        self.max_backlog = max(
            max_backlog if max_backlog is not None else 10 * max_batch, max_batch
        )
        self.next_value = int(start)
        """Value the next emitted record will carry."""
        self.produced = 0
        """Records whose ``emit`` returned (durably stored), since construction."""
        self.skipped = 0
        self._clock = clock
        self._wall = wall

    @classmethod
    def from_config(cls, cfg: Any) -> CounterSource:
        return cls(
            cfg.name,
            cfg.interval,
            start=getattr(cfg, "start", 0) or 0,
            device=getattr(cfg, "device", None),
            priority=getattr(cfg, "priority_level", Priority.TELEMETRY),
        )

    async def run(self, emit: Emit) -> None:
        interval = self.interval
        # Tick k is due at origin + k * interval; computing it rather than accumulating
        # keeps float error from drifting the rate over months.
        origin = self._clock()
        tick = 1
        while True:
            deadline = origin + tick * interval
            # Sleep even when already late (sleep(0)): a sink that never suspends must not
            # starve the loop or make this task deaf to cancellation.
            await asyncio.sleep(max(0.0, deadline - self._clock()))
            now = self._clock()
            owed = math.floor((now - origin) / interval) - tick + 1
            if owed <= 0:
                # asyncio may wake us up to one clock tick early; nothing is owed yet.
                continue
            if owed > self.max_backlog:
                forgiven = owed - self.max_backlog
                tick += forgiven
                self.skipped += forgiven
                owed = self.max_backlog
            n = min(owed, self.max_batch)
            # Stamp each value with the wall time it was due at, not the batch's.
            wall0 = self._wall() - (now - (origin + tick * interval))
            first, name, device = self.next_value, self.name, self.device
            records = [
                Record(device, name, first + i, wall0 + i * interval, None) for i in range(n)
            ]
            await emit(records, self.priority)
            # Only count what emit confirmed: cancelled mid-emit means not (known) stored.
            self.next_value = first + n
            self.produced += n
            tick += n


class _Channel:
    __slots__ = ("name", "unit", "low", "high", "digits")

    def __init__(self, name: str, unit: str | None, low: float, high: float, digits: int):
        self.name, self.unit, self.low, self.high, self.digits = name, unit, low, high, digits


# Physical ranges of a typical cabinet board (e.g. BME280): anything outside is a glitch.
_TEMPERATURE = _Channel("temperature", "Cel", -40.0, 85.0, 2)
_HUMIDITY = _Channel("humidity", "%RH", 0.0, 100.0, 1)
_PRESSURE = _Channel("pressure", "Pa", 30_000.0, 110_000.0, 0)
_EXTRA_LOW, _EXTRA_HIGH = 0.0, 1000.0

# Readings real boards return when they fail (stuck bus, unpowered, NaN from a bad CRC),
# chosen outside every channel's range so each one is a detectable glitch.
_GLITCHES = (-273.15, -127.0, -999.0, 1_048_575.0, float("nan"), float("inf"))

_DAY = 86_400.0


class EnvironmentSensor:
    """A noisy environmental sensor: temperature, humidity, pressure, then ch4, ch5...

    Readings are a pure function of (seed, poll number, interval): the daily cycle runs on
    simulated time ``poll * interval`` from a seed-chosen hour, so a HIL run replays exactly.
    Only the records' timestamps come from the wall clock.

    About 1 % of polls (``glitch_rate``) one channel reads out of physical range, as real
    boards do; such readings are dropped and counted in ``rejected``, never emitted.
    """

    def __init__(
        self,
        name: str,
        interval: float,
        seed: int = 0,
        values: int = 3,
        device: str | None = None,
        priority: Priority = Priority.TELEMETRY,
        *,
        glitch_rate: float = 0.01,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.name = check_name(name)
        self.device = check_name(device or name)
        self.interval = _check_interval(interval)
        self.priority = Priority(priority)
        if values < 1:
            raise ValueError(f"values must be >= 1, got {values}")
        self.values = values
        self.seed = seed
        self.glitch_rate = glitch_rate
        self._clock = clock
        self._wall = wall
        self._rng = random.Random(seed)
        base = [_TEMPERATURE, _HUMIDITY, _PRESSURE]
        self.channels: list[_Channel] = base[:values] + [
            _Channel(f"ch{i}", None, _EXTRA_LOW, _EXTRA_HIGH, 2) for i in range(4, values + 1)
        ]
        # Per-seed character of this board: mean temperature, start time of day, etc.
        rng = self._rng
        self._mean_temp = rng.uniform(8.0, 22.0)
        self._swing = rng.uniform(3.0, 8.0)
        self._t0 = rng.uniform(0.0, _DAY)
        self._pressure = rng.gauss(101_325.0, 800.0)
        self._extra = [rng.uniform(200.0, 800.0) for _ in self.channels[3:]]
        self.polls = 0
        self.produced = 0
        self.rejected = 0

    @classmethod
    def from_config(cls, cfg: Any) -> EnvironmentSensor:
        return cls(
            cfg.name,
            cfg.interval,
            seed=getattr(cfg, "seed", 0) or 0,
            values=3 if getattr(cfg, "values", None) is None else cfg.values,
            device=getattr(cfg, "device", None),
            priority=getattr(cfg, "priority_level", Priority.TELEMETRY),
        )

    def _raw(self) -> list[float]:
        """One poll's raw readings, before validation. Advances the seeded state."""
        rng = self._rng
        t = self._t0 + self.polls * self.interval
        # Coldest around 05:00, warmest around 17:00 of simulated time.
        phase = 2 * math.pi * ((t % _DAY) / _DAY - 11 / 24)
        temp = self._mean_temp + self._swing * math.sin(phase) + rng.gauss(0.0, 0.15)
        # Relative humidity falls as air warms; clamp because the physics does.
        hum = 70.0 - 2.5 * (temp - self._mean_temp) + rng.gauss(0.0, 1.5)
        hum = min(100.0, max(0.0, hum))
        # Pressure: slow mean-reverting random walk around standard pressure.
        self._pressure += 0.01 * (101_325.0 - self._pressure) + rng.gauss(0.0, 4.0)
        readings = [temp, hum, self._pressure]
        for i in range(len(self._extra)):
            x = self._extra[i] + rng.gauss(0.0, 5.0)
            self._extra[i] = x = min(_EXTRA_HIGH, max(_EXTRA_LOW, x))
            readings.append(x)
        readings = readings[: self.values]
        # Draw every poll, glitch or not, so the sequence does not depend on past glitches.
        glitch = rng.random() < self.glitch_rate
        channel = rng.randrange(len(readings))
        bad = rng.choice(_GLITCHES)
        if glitch:
            readings[channel] = bad
        return readings

    def poll(self, ts: float | None = None) -> list[Record]:
        """Take one reading of every channel; out-of-range readings are dropped."""
        ts = self._wall() if ts is None else ts
        raw = self._raw()
        self.polls += 1
        records = []
        for ch, x in zip(self.channels, raw, strict=True):
            if not (ch.low <= x <= ch.high):  # NaN fails this too
                self.rejected += 1
                continue
            value: float | int = round(x) if ch.digits == 0 else round(x, ch.digits)
            records.append(Record(self.device, ch.name, value, ts, ch.unit))
        return records

    async def run(self, emit: Emit) -> None:
        interval = self.interval
        origin = self._clock()
        tick = 0
        while True:
            deadline = origin + tick * interval
            await asyncio.sleep(max(0.0, deadline - self._clock()))
            if self._clock() < deadline:
                continue  # woken a clock tick early
            records = self.poll()
            if records:
                await emit(records, self.priority)
                self.produced += len(records)
            # A sensor does not owe missed polls: go to the next grid point in the future.
            tick = max(tick + 1, math.floor((self._clock() - origin) / interval) + 1)
