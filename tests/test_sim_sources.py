from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Sequence
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.sources import CounterSource, EnvironmentSensor
from passerelle.model import Priority, Record
from passerelle.sources import Emit, build_source


class Sink:
    """A fake ``emit`` that records batches and can stall like a slow disk."""

    def __init__(self, delay: float | None = None, seed: int = 0) -> None:
        self.batches: list[list[Record]] = []
        self.priorities: list[Priority] = []
        self.delay = delay
        self.rng = random.Random(seed)

    async def __call__(self, records: Sequence[Record], priority: Priority) -> None:
        if self.delay is not None:
            await asyncio.sleep(self.rng.uniform(0, self.delay))
        self.batches.append(list(records))
        self.priorities.append(priority)

    @property
    def records(self) -> list[Record]:
        return [r for b in self.batches for r in b]

    @property
    def values(self) -> list[object]:
        return [r.value for r in self.records]


class SkewedClock:
    """Monotonic time plus an offset the test can jump (a stall without waiting for it)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


async def run_for(source: CounterSource | EnvironmentSensor, emit: Emit, seconds: float) -> float:
    """Run ``source`` for about ``seconds``; return how long it really ran (loaded CI)."""
    t0 = time.monotonic()
    task = asyncio.create_task(source.run(emit))
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return time.monotonic() - t0


# -- counter --------------------------------------------------------------------------------


async def test_counter_gap_free_with_randomly_slow_emit() -> None:
    src = CounterSource("counter", 0.001, start=42)
    sink = Sink(delay=0.01, seed=7)
    await run_for(src, sink, 0.4)
    values = sink.values
    assert len(values) > 50
    assert values == list(range(42, 42 + len(values)))
    assert src.produced == len(values)
    assert src.next_value == 42 + len(values)
    # Stalls of up to 10 ms at a 1 ms interval: catching up must batch.
    assert max(len(b) for b in sink.batches) > 1
    assert all(r.device == "counter" and r.name == "counter" for r in sink.records)
    assert all(r.unit is None and isinstance(r.value, int) for r in sink.records)
    assert set(sink.priorities) == {Priority.TELEMETRY}


async def test_counter_fast_interval_batches() -> None:
    src = CounterSource("fast", 0.0001)
    sink = Sink()
    await run_for(src, sink, 0.3)
    n = len(sink.values)
    assert sink.values == list(range(n))
    # ~3000 values owed; with ~1 ms wake-ups they travel in far fewer batches.
    assert n > 500
    assert len(sink.batches) < n / 3


async def test_counter_catches_up_in_capped_batches_after_a_stall() -> None:
    clock = SkewedClock()
    src = CounterSource("c", 0.01, max_batch=50, clock=clock)
    sink = Sink()
    enough = asyncio.Event()

    async def stalling(records: Sequence[Record], priority: Priority) -> None:
        await sink(records, priority)
        if len(sink.batches) == 1:
            clock.offset += 1.0  # the disk blocked for a second: ~100 values owed
        if len(sink.values) >= 200:
            enough.set()

    task = asyncio.create_task(src.run(stalling))
    await asyncio.wait_for(enough.wait(), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    sizes = [len(b) for b in sink.batches]
    assert sizes[0] == 1
    assert sizes[1] == 50 and sizes[2] == 50  # owed values, at most max_batch at a time
    assert max(sizes) == 50
    assert sink.values == list(range(len(sink.values)))
    assert src.skipped == 0


async def test_counter_forgives_time_debt_beyond_backlog() -> None:
    clock = SkewedClock()
    src = CounterSource("c", 0.01, max_batch=100, max_backlog=300, clock=clock)
    sink = Sink()
    enough = asyncio.Event()

    async def stalling(records: Sequence[Record], priority: Priority) -> None:
        await sink(records, priority)
        if len(sink.batches) == 1:
            clock.offset += 1000.0  # 100,000 values owed
        if len(sink.batches) == 6:
            enough.set()

    task = asyncio.create_task(src.run(stalling))
    await asyncio.wait_for(enough.wait(), 5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert [len(b) for b in sink.batches[1:4]] == [100, 100, 100]
    assert len(sink.batches[4]) < 100  # caught up: back to the normal pace
    assert 99_000 < src.skipped < 100_000
    assert sink.values == list(range(len(sink.values)))  # still no gaps in the values


async def test_counter_timestamps_follow_the_schedule() -> None:
    src = CounterSource("c", 0.001)
    sink = Sink(delay=0.005, seed=1)
    before = time.time()
    await run_for(src, sink, 0.2)
    after = time.time()
    times = [r.time for r in sink.records]
    assert all(b - a > 0.0009 for a, b in zip(times, times[1:], strict=False))
    assert before <= times[0] and times[-1] <= after + 0.01


async def test_counter_does_not_drift() -> None:
    src = CounterSource("c", 0.005)
    sink = Sink(delay=0.004, seed=3)  # emit latency close to the interval
    elapsed = await run_for(src, sink, 0.5)
    # One value per 5 ms of running time, not slower for the latency (a value or two may
    # be in flight in the emit that was cancelled).
    assert elapsed / 0.005 - 5 <= len(sink.values) <= elapsed / 0.005 + 1


async def test_counter_cancellation_is_prompt() -> None:
    src = CounterSource("slow", 3600.0)
    task = asyncio.create_task(src.run(Sink()))
    await asyncio.sleep(0.01)
    t0 = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1.0)
    assert time.monotonic() - t0 < 0.1


async def test_counter_with_never_suspending_emit_stays_cancellable() -> None:
    src = CounterSource("c", 0.00001)
    calls = 0

    async def instant(records: Sequence[Record], priority: Priority) -> None:
        nonlocal calls
        calls += 1

    task = asyncio.create_task(src.run(instant))
    await asyncio.sleep(0.05)  # would never return if run() starved the loop
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert calls > 0


def test_counter_validation() -> None:
    with pytest.raises(ValueError):
        CounterSource("c", 0)
    with pytest.raises(ValueError):
        CounterSource("c", float("nan"))
    with pytest.raises(ValueError):
        CounterSource("bad name", 1.0)


def test_counter_from_config_and_registry() -> None:
    cfg = SimpleNamespace(
        type="sim.counter",
        name="counter",
        interval=0.5,
        priority_level=Priority.ENERGY,
        device=None,
        start=7,
    )
    src = build_source(cfg)
    assert isinstance(src, CounterSource)
    assert (src.name, src.device, src.interval, src.next_value, src.priority) == (
        "counter",
        "counter",
        0.5,
        7,
        Priority.ENERGY,
    )
    cfg.device = "cab-1"
    assert CounterSource.from_config(cfg).device == "cab-1"


# -- environment sensor ---------------------------------------------------------------------

RANGES = {"temperature": (-40.0, 85.0), "humidity": (0.0, 100.0), "pressure": (30_000, 110_000)}
UNITS = {"temperature": "Cel", "humidity": "%RH", "pressure": "Pa"}


def poll_many(sensor: EnvironmentSensor, n: int) -> list[list[Record]]:
    return [sensor.poll(ts=1.8e9 + i) for i in range(n)]


def test_env_names_units_ranges_and_rounding() -> None:
    sensor = EnvironmentSensor("env", 60.0, seed=1, values=5)
    polls = poll_many(sensor, 5000)
    seen = set()
    for records in polls:
        for r in records:
            seen.add(r.name)
            assert r.device == "env"
            assert isinstance(r.value, int | float) and not isinstance(r.value, bool)
            assert math.isfinite(r.value)
            if r.name in RANGES:
                lo, hi = RANGES[r.name]
                assert lo <= r.value <= hi
                assert r.unit == UNITS[r.name]
            else:
                assert r.unit is None and 0 <= r.value <= 1000
            digits = {"temperature": 2, "humidity": 1}.get(r.name)
            if digits is not None:
                assert round(float(r.value), digits) == r.value
            if r.name == "pressure":
                assert isinstance(r.value, int)
    assert seen == {"temperature", "humidity", "pressure", "ch4", "ch5"}


def test_env_glitches_are_rejected_not_emitted() -> None:
    sensor = EnvironmentSensor("env", 1.0, seed=2)
    polls = poll_many(sensor, 10_000)
    emitted = sum(len(p) for p in polls)
    assert sensor.polls == 10_000
    assert 40 <= sensor.rejected <= 200  # ~1 % of polls
    assert emitted + sensor.rejected == 3 * 10_000


def test_env_deterministic_per_seed() -> None:
    def values(seed: int) -> list[tuple[str, object]]:
        s = EnvironmentSensor("env", 10.0, seed=seed, values=4)
        return [(r.name, r.value) for p in poll_many(s, 500) for r in p]

    assert values(5) == values(5)
    assert values(5) != values(6)


def test_env_daily_cycle() -> None:
    sensor = EnvironmentSensor("env", 600.0, seed=3, glitch_rate=0.0)
    temps = [float(r.value) for p in poll_many(sensor, 144) for r in p if r.name == "temperature"]
    assert len(temps) == 144  # one simulated day, no glitches
    assert max(temps) - min(temps) > 4.0  # the daily swing, well above the noise


def test_env_channel_count() -> None:
    names = [r.name for r in EnvironmentSensor("e", 1.0, values=1, glitch_rate=0).poll()]
    assert names == ["temperature"]
    names = [r.name for r in EnvironmentSensor("e", 1.0, values=6, glitch_rate=0).poll()]
    assert names == ["temperature", "humidity", "pressure", "ch4", "ch5", "ch6"]
    with pytest.raises(ValueError):
        EnvironmentSensor("e", 1.0, values=0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), values=st.integers(1, 8), interval=st.floats(0.01, 3600))
def test_env_always_in_physical_range(seed: int, values: int, interval: float) -> None:
    sensor = EnvironmentSensor("env", interval, seed=seed, values=values)
    for records in poll_many(sensor, 300):
        for r in records:
            lo, hi = RANGES.get(r.name, (0, 1000))
            assert lo <= r.value <= hi  # type: ignore[operator]


async def test_env_run_emits_polls_and_cancels_promptly() -> None:
    sensor = EnvironmentSensor("cab", 0.01, seed=4, device="board-1", priority=Priority.ENERGY)
    sink = Sink()
    elapsed = await run_for(sensor, sink, 0.1)
    assert 5 <= len(sink.batches) <= elapsed / 0.01 + 2
    assert {r.device for r in sink.records} == {"board-1"}
    assert set(sink.priorities) == {Priority.ENERGY}
    assert sensor.produced == len(sink.records)

    slow = EnvironmentSensor("cab", 3600.0)
    task = asyncio.create_task(slow.run(Sink()))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 0.5)


async def test_env_skips_missed_polls_instead_of_bursting() -> None:
    sensor = EnvironmentSensor("cab", 0.01, seed=4)
    sink = Sink()

    async def slow(records: Sequence[Record], priority: Priority) -> None:
        await sink(records, priority)
        await asyncio.sleep(0.05)  # five intervals

    elapsed = await run_for(sensor, slow, 0.3)
    assert len(sink.batches) <= elapsed / 0.05 + 2  # ~6, not 30


def test_env_from_config_and_registry() -> None:
    cfg = SimpleNamespace(
        type="sim.env",
        name="env",
        interval=5.0,
        priority_level=Priority.TELEMETRY,
        device="cab-7",
        seed=9,
        values=4,
    )
    src = build_source(cfg)
    assert isinstance(src, EnvironmentSensor)
    assert (src.name, src.device, src.interval, src.seed, src.values) == (
        "env",
        "cab-7",
        5.0,
        9,
        4,
    )
