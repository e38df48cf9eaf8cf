"""The EU868 duty-cycle gate on simulated time: floods never break a band's limit in any
one-hour window, requests that fit are not refused, and the ledger survives a restart."""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import json
import logging
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.lorawan.airtime import airtime_of
from passerelle.policy.dutycycle import (
    ERP_TO_EIRP_DB,
    EU868_BANDS,
    Decision,
    DutyCycleGate,
    SubBand,
    find_band,
)

HOUR = 3600.0
TOL = 1e-6  # seconds; the gate itself works to 1 ns

# ETSI EN 300 220-2 V3.2.1 / EC decision 2017/1483 as quoted in /work/shared/REFERENCE.md:
# band, low MHz, high MHz, duty cycle %, max power mW ERP.
REGULATION = [
    ("K", 863.0, 865.0, 0.1, 25),
    ("L", 865.0, 868.0, 1.0, 25),  # 1 %, not 0.1 % (the Basics Station bug #189)
    ("M", 868.0, 868.6, 1.0, 25),
    ("N", 868.7, 869.2, 0.1, 25),
    ("P", 869.4, 869.65, 10.0, 500),
    ("Q", 869.7, 870.0, 1.0, 25),
]
BAND = {b.name: b for b in EU868_BANDS}


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class SimTime:
    """Simulated time for asyncio code: ``sleep`` parks the caller until the test
    advances the clock past its wake-up time."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + delay, next(self._seq), fut))
        await fut

    @staticmethod
    async def settle() -> None:
        for _ in range(10):
            await asyncio.sleep(0)

    async def advance_to(self, t: float) -> None:
        """Wake every sleeper due by ``t``, in order, then set the clock to ``t``."""
        while self._sleepers and self._sleepers[0][0] <= t:
            wake, _, fut = heapq.heappop(self._sleepers)
            if fut.done():  # its task was cancelled
                continue
            self.now = max(self.now, wake)
            fut.set_result(None)
            await self.settle()
        self.now = max(self.now, t)

    async def run_out(self) -> None:
        """Advance until nobody sleeps any more."""
        while self._sleepers:
            await self.advance_to(self._sleepers[0][0])


# ------------------------------------------------------- the regulation, independently


def on_air_in_window(sent: list[tuple[float, float]], t: float, window: float = HOUR) -> float:
    """Seconds on air inside (t - window, t] (the regulation's measure)."""
    return sum(max(0.0, min(e, t) - max(s, t - window)) for s, e in sent)


def worst_window(sent: list[tuple[float, float]], window: float = HOUR) -> float:
    """The most on-air time in any window. The on-air time in a sliding window is
    piecewise linear in its end; its maxima are where the end meets a transmission's end
    or the start meets a transmission's start, so those are the windows to check."""
    sent = sorted(sent)
    starts = [s for s, _e in sent]
    worst = 0.0
    for t in [e for _s, e in sent] + [s + window for s, _e in sent]:
        # only transmissions that can overlap (t - window, t]; none lasts an hour
        lo = bisect.bisect_left(starts, t - 2 * window)
        hi = bisect.bisect_right(starts, t)
        worst = max(worst, on_air_in_window(sent[lo:hi], t, window))
    return worst


def recent(sent: list[tuple[float, float]], t: float) -> list[tuple[float, float]]:
    """The transmissions (sorted by start) that can still count at ``t``: none lasts an
    hour, so those that started within two hours."""
    return sent[bisect.bisect_left(sent, t - 2 * HOUR, key=lambda x: x[0]) :]


def charged(sent: list[tuple[float, float]], t: float, window: float = HOUR) -> float:
    """The gate's documented rule: a transmission counts wholly in every window it
    touches. Charge at ``t`` of everything sent so far (all started by ``t``). The 1 ns
    keeps ``t = e + window`` (float-rounded) from still counting the entry that ends at e."""
    return sum(e - s for s, e in recent(sent, t) if e > t - window + 1e-9)


def earliest_fit(
    sent: list[tuple[float, float]], now: float, airtime: float, limit: float
) -> float:
    """First moment from ``now`` at which ``airtime`` more stays within ``limit`` under the
    documented rule: try now, then each moment a past transmission stops counting."""
    for t in sorted({now} | {e + HOUR for _s, e in recent(sent, now) if e + HOUR > now}):
        if charged(sent, t) + airtime <= limit + 1e-9:
            return t
    raise AssertionError("never fits")


def freq_in(band: SubBand, rng: random.Random, bw_khz: float = 125.0) -> float:
    half = bw_khz / 2000
    return round(rng.uniform(band.low_mhz + half, band.high_mhz - half), 4)


def random_airtime(rng: random.Random) -> float:
    dr = rng.choice(["SF7BW125", "SF8BW125", "SF9BW125", "SF10BW125", "SF11BW125", "SF12BW125"])
    return airtime_of(dr, rng.randint(12, 64), uplink=False)


# ------------------------------------------------------------------------ band table


def test_band_table_is_the_regulation() -> None:
    table = [
        (b.name, b.low_mhz, b.high_mhz, round(b.duty_cycle * 100, 3), b.max_erp_mw)
        for b in EU868_BANDS
    ]
    assert table == REGULATION
    for b in EU868_BANDS:
        # EIRP = ERP + 2.15 dB (dipole gain)
        assert b.max_eirp_dbm == pytest.approx(10 * math.log10(b.max_erp_mw) + 2.15)
        assert b.allowance_s() == pytest.approx(b.duty_cycle * 3600)
    assert ERP_TO_EIRP_DB == 2.15
    assert BAND["M"].max_eirp_dbm == pytest.approx(16.13, abs=0.005)  # 25 mW ERP
    assert BAND["P"].max_eirp_dbm == pytest.approx(29.14, abs=0.005)  # 500 mW ERP
    assert BAND["M"].allowance_s() == pytest.approx(36.0)  # 1 % = 36 s per hour


@pytest.mark.parametrize(
    "freq,bw,band",
    [
        (868.1, 125, "M"),  # LoRaWAN default channels
        (868.3, 125, "M"),
        (868.5, 125, "M"),
        (869.525, 125, "P"),  # RX2
        (869.525, 250, "P"),  # 869.4..869.65 exactly: still inside
        (869.525, 500, None),  # wider than band P
        (867.1, 125, "L"),
        (864.9375, 125, "K"),  # upper edge exactly at 865.0
        (868.55, 125, None),  # 868.4875..868.6125 straddles the top of M
        (868.65, 125, None),  # the gap between M and N
        (869.3, 125, None),  # the gap between N and P
        (869.9, 125, "Q"),
        (869.95, 125, None),  # 870.0125 passes 870
        (862.9, 125, None),
        (868100000, 125, None),  # Hz by mistake
    ],
)
def test_find_band_needs_the_whole_channel(freq: float, bw: float, band: str | None) -> None:
    found = find_band(freq, bw)
    assert (found.name if found else None) == band


def test_bad_band_tables_are_refused() -> None:
    with pytest.raises(ValueError, match="overlap"):
        DutyCycleGate(bands=[SubBand("A", 1, 3, 0.01, 25), SubBand("B", 2, 4, 0.01, 25)])
    with pytest.raises(ValueError, match="duplicate"):
        DutyCycleGate(bands=[SubBand("A", 1, 2, 0.01, 25), SubBand("A", 3, 4, 0.01, 25)])
    with pytest.raises(ValueError, match="inconsistent"):
        DutyCycleGate(bands=[SubBand("A", 1, 2, 0.0, 25)])


# ---------------------------------------------------------------- refusals with reasons


def test_out_of_band_over_power_and_too_long_are_refused_with_reasons() -> None:
    gate = DutyCycleGate(clock=Clock(100.0))
    d = gate.check(868.65, 0.1, 14)
    assert d == Decision(False, None, math.inf, d.reason)
    assert d.reason == "868.65 MHz (125 kHz wide): outside every EU868 sub-band"
    d = gate.check(868.55, 0.1, 14)
    assert not d.ok and "outside every EU868 sub-band" in (d.reason or "")
    d = gate.check(868.1, 0.1, 27)
    assert not d.ok and d.band == "M" and d.wait_s == math.inf
    assert d.reason == "27 dBm EIRP above band M maximum 16.13 dBm EIRP (25 mW ERP)"
    assert gate.check(868.1, 0.1, 16).ok  # 16 dBm EIRP is within 25 mW ERP
    assert gate.check(869.525, 0.1, 27).ok  # band P takes 500 mW ERP = 29.14 dBm EIRP
    assert not gate.check(869.525, 0.1, 30).ok
    d = gate.check(868.9, 4.0, 14)  # band N: 0.1 % = 3.6 s per hour
    assert not d.ok and d.wait_s == math.inf
    assert d.reason == "band N: 4.0 s on air exceeds the 3.6 s allowed per hour"
    assert gate.refusals == {"out_of_band": 2, "over_power": 2, "too_long": 1}
    assert gate.utilisation()["M"] == 0.0  # nothing was recorded


@pytest.mark.parametrize(
    "args,message",
    [
        ((float("nan"), 0.1, 14), "frequency_mhz must be a finite number"),
        ((868.1, 0.0, 14), "airtime_s must be positive"),
        ((868.1, -1.0, 14), "airtime_s must be positive"),
        ((868.1, 0.1, None), "power_dbm must be a finite number"),
        ((868.1, "0.1", 14), "airtime_s must be a finite number"),
    ],
)
def test_bad_arguments_raise_value_errors(args: tuple[Any, ...], message: str) -> None:
    gate = DutyCycleGate(clock=Clock())
    with pytest.raises(ValueError, match=message):
        gate.check(*args)


# ------------------------------------------------------------------- sliding window


def test_sliding_window_not_an_hourly_bucket() -> None:
    clock = Clock(3000.0)
    gate = DutyCycleGate(clock=clock)
    a = airtime_of("SF12BW125", 51, uplink=True)
    n = math.floor(36 / a)  # frames of 2.47 s that fit in 36 s
    for _ in range(n):
        assert gate.check(868.1, a, 14).ok
        gate.record(868.1, a)
        clock.now += a
    d = gate.check(868.3, a, 14)
    assert not d.ok and d.band == "M"
    # the first frame, sent at 3000, stops counting when it ended an hour ago
    assert d.wait_s == pytest.approx(3000 + a + HOUR - clock.now)
    assert d.reason == (
        f"band M: {n * a:.2f} s of 36 s used in the last hour; fits in {d.wait_s:.0f} s"
    )
    # a bucket reset at 3600 would let it through; the sliding hour does not
    clock.now = 3601.0
    assert not gate.check(868.5, a, 14).ok
    assert gate.utilisation()["M"] == pytest.approx(n * a / 36)
    clock.now = 3000 + a + HOUR - 1e-3
    assert not gate.check(868.1, a, 14).ok
    clock.now = 3000 + a + HOUR
    assert gate.check(868.1, a, 14).ok
    # other bands never noticed
    assert gate.check(867.1, a, 14).ok and gate.utilisation()["L"] == 0.0


def test_check_at_a_future_start() -> None:
    clock = Clock(0.0)
    gate = DutyCycleGate(clock=clock)
    gate.record(868.1, 36.0, at=0.0)  # the whole allowance, recorded as a fact
    d = gate.check(868.1, 1.0, 14, at=3000.0)
    assert not d.ok and d.wait_s == pytest.approx(636.0)  # free at 36 + 3600
    assert gate.check(868.1, 1.0, 14, at=3636.0).ok


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_flood_of_checks_never_exceeds_any_window(seed: int) -> None:
    """Random requests over 8 simulated hours: every answer matches the documented rule
    (so nothing that fits is refused), and the true on-air time stays within each band's
    limit in every one-hour window."""
    rng = random.Random(seed)
    clock = Clock(0.0)
    gate = DutyCycleGate(clock=clock)
    sent: dict[str, list[tuple[float, float]]] = defaultdict(list)
    refused = accepted = 0
    while clock.now < 8 * HOUR:
        clock.now += rng.expovariate(1 / 4.0)
        band = rng.choice(EU868_BANDS)
        airtime = random_airtime(rng)
        freq = freq_in(band, rng)
        limit = band.allowance_s()
        d = gate.check(freq, airtime, 14.0)
        assert d.band == band.name
        expected = charged(sent[band.name], clock.now) + airtime
        if abs(expected - limit) < TOL:
            continue  # too close to the edge for the oracle to call
        if airtime > limit:
            assert not d.ok and d.wait_s == math.inf
            continue
        assert d.ok == (expected <= limit), (band.name, clock.now, expected, d)
        if d.ok:
            gate.record(freq, airtime)
            sent[band.name].append((clock.now, clock.now + airtime))
            accepted += 1
        else:
            refused += 1
            fit = earliest_fit(sent[band.name], clock.now, airtime, limit)
            assert d.wait_s == pytest.approx(fit - clock.now, abs=TOL)
            # "fits in X s" holds to the nanosecond when asked for that moment
            assert gate.check(freq, airtime, 14.0, at=clock.now + d.wait_s).ok
    assert accepted > 500 and refused > 100  # the flood did saturate some bands
    for band in EU868_BANDS:
        assert worst_window(sent[band.name]) <= band.allowance_s() + TOL, band.name
    # memory: nothing older than the hour is kept
    sizes = gate.ledger_sizes()
    for name, entries in sent.items():
        assert sizes[name] <= sum(1 for _s, e in entries if e > clock.now - HOUR) + 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=900.0),  # gap before the request
            st.sampled_from(["M", "N", "P"]),
            st.floats(min_value=0.01, max_value=40.0),  # airtime
        ),
        max_size=120,
    )
)
def test_any_sequence_of_checks_respects_every_window(
    requests: list[tuple[float, str, float]],
) -> None:
    clock = Clock(0.0)
    gate = DutyCycleGate(clock=clock)
    sent: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for gap, name, airtime in requests:
        clock.now += gap
        band = BAND[name]
        d = gate.check(band.low_mhz + 0.1, airtime, 14.0)
        if d.ok:
            gate.record(band.low_mhz + 0.1, airtime)
            sent[name].append((clock.now, clock.now + airtime))
    for name, entries in sent.items():
        assert worst_window(entries) <= BAND[name].allowance_s() + TOL


def test_memory_is_bounded_without_freeing_budget() -> None:
    clock = Clock(0.0)
    gate = DutyCycleGate(clock=clock, max_entries=50)
    for _ in range(500):
        gate.record(869.525, 0.05)
        clock.now += 0.1
    assert gate.ledger_sizes()["P"] <= 50
    # the merged entries still charge all 25 s
    assert gate.utilisation()["P"] == pytest.approx(500 * 0.05 / 360)
    d = gate.check(869.525, 340.0, 14)
    assert not d.ok  # 25 + 340 > 360
    clock.now += HOUR + 1
    assert gate.ledger_sizes()["P"] == 0 and gate.utilisation()["P"] == 0.0


# ----------------------------------------------------------------------------- acquire


async def test_acquire_now_defers_within_deadline_or_refuses() -> None:
    sim = SimTime(1000.0)
    gate = DutyCycleGate(clock=sim.clock, sleep=sim.sleep, start_slack=0.0)
    gate.record(868.1, 35.0, at=0.0)  # ends at 35: free again at 3635
    d = await gate.acquire(868.3, 1.0, 14, deadline=None)
    assert d.ok and d.wait_s == 0.0  # 35 + 1 fits now, recorded
    assert gate.utilisation()["M"] == pytest.approx(1.0)
    # full: too late for a deadline 100 s away, nothing recorded
    d = await gate.acquire(868.3, 2.0, 14, deadline=sim.now + 100)
    assert not d.ok and d.wait_s == pytest.approx(2635.0)
    assert d.reason == (
        "band M: 36.00 s of 36 s used in the last hour; fits in 2635 s, "
        "after the deadline (in 100 s)"
    )
    d = await gate.acquire(868.3, 2.0, 14, deadline=sim.now - 5)
    assert not d.ok and "deadline passed 5.0 s ago" in (d.reason or "")
    # deferred: the deadline allows waiting until 3635
    task = asyncio.create_task(gate.acquire(868.3, 2.0, 14, deadline=4000.0))
    await sim.settle()
    assert not task.done()
    await sim.advance_to(3634.9)
    assert not task.done()
    await sim.advance_to(3635.0)
    d = task.result()
    assert d.ok and d.band == "M" and d.wait_s == pytest.approx(2635.0)
    assert sim.now == 3635.0


async def test_two_racing_acquires_do_not_both_take_the_last_room() -> None:
    sim = SimTime(2000.0)
    gate = DutyCycleGate(clock=sim.clock, sleep=sim.sleep, start_slack=0.0)
    gate.record(868.1, 5.0, at=0.0)  # stops counting at 3605
    gate.record(868.1, 31.0, at=1000.0)  # stops counting at 4631
    done_at: dict[str, float] = {}

    async def one(name: str) -> Decision:
        d = await gate.acquire(868.1, 5.0, 14, deadline=4000.0)
        done_at[name] = sim.now
        return d

    tasks = [asyncio.create_task(one("a")), asyncio.create_task(one("b"))]
    await sim.settle()
    await sim.run_out()
    a, b = (t.result() for t in tasks)
    assert [a.ok, b.ok].count(True) == 1  # 5 s of room at 3605 for one 5 s frame
    loser = b if a.ok else a
    assert loser.wait_s == pytest.approx(4631 - 2000)  # after the deadline
    assert done_at["a" if a.ok else "b"] == 3605.0
    sent = [(0.0, 5.0), (1000.0, 1031.0), (3605.0, 3610.0)]
    assert worst_window(sent) <= 36 + TOL


async def test_cancelled_acquire_gives_its_slot_back() -> None:
    sim = SimTime(200.0)
    gate = DutyCycleGate(clock=sim.clock, sleep=sim.sleep, start_slack=0.0)
    gate.record(868.1, 20.0, at=0.0)  # stops counting at 3620
    gate.record(868.1, 15.0, at=100.0)  # stops counting at 3715
    waiting = asyncio.create_task(gate.acquire(868.1, 10.0, 14, deadline=None))
    await sim.settle()
    assert not waiting.done()  # reserved 3620
    # 12 s more: behind the reservation it must wait for 3715
    assert gate.check(868.1, 12.0, 14).wait_s == pytest.approx(3715 - 200)
    # a short frame that fits now without hurting the reservation may go first
    assert gate.check(868.1, 0.5, 14).ok
    waiting.cancel()
    await sim.settle()
    assert waiting.cancelled()
    assert gate.check(868.1, 12.0, 14).wait_s == pytest.approx(3620 - 200)


@pytest.mark.parametrize("seed", [11, 12])
async def test_flood_of_acquires_on_simulated_time(seed: int) -> None:
    """Random downlinks (bands, airtimes, deadlines) for 6 simulated hours through
    acquire: no window of any band ever holds more than its allowance, deadlines hold,
    and when nothing is queued in a band a request is served exactly when the
    documented rule says it fits (refused only if that is after its deadline)."""
    rng = random.Random(seed)
    sim = SimTime(0.0)
    gate = DutyCycleGate(clock=sim.clock, sleep=sim.sleep, start_slack=0.0)
    sent: dict[str, list[tuple[float, float]]] = defaultdict(list)
    pending: dict[str, int] = defaultdict(int)
    outcomes = {"now": 0, "deferred": 0, "refused": 0}

    async def request(
        band: SubBand, airtime: float, deadline: float | None, expect: float | None
    ) -> None:
        asked = sim.now
        pending[band.name] += 1
        try:
            d = await gate.acquire(freq_in(band, rng), airtime, 14.0, deadline)
        finally:
            pending[band.name] -= 1
        if d.ok:
            sent[band.name].append((sim.now, sim.now + airtime))
            assert deadline is None or sim.now <= deadline + 1e-9
            outcomes["now" if sim.now == asked else "deferred"] += 1
        else:
            outcomes["refused"] += 1
            assert deadline is not None and asked + d.wait_s > deadline
        if expect is not None:  # nothing was queued in the band: the rule decides
            if deadline is None or expect <= deadline + 1e-9:
                assert d.ok and sim.now == pytest.approx(expect, abs=TOL)
            else:
                assert not d.ok and asked + d.wait_s == pytest.approx(expect, abs=TOL)

    tasks = []
    t = 0.0
    while t < 6 * HOUR:
        t += rng.expovariate(1 / 5.0)
        await sim.advance_to(t)
        band = rng.choice(EU868_BANDS)
        airtime = random_airtime(rng)
        if airtime > band.allowance_s():
            continue
        deadline = None if rng.random() < 0.2 else sim.now + rng.choice([0, 1, 60, 600, 2400])
        expect = None
        if pending[band.name] == 0:
            expect = earliest_fit(sent[band.name], sim.now, airtime, band.allowance_s())
        tasks.append(asyncio.create_task(request(band, airtime, deadline, expect)))
        await sim.settle()
    await sim.run_out()
    for task in tasks:
        task.result()  # re-raise any assertion from inside
    assert min(outcomes.values()) > 20, outcomes  # all three paths exercised
    for band in EU868_BANDS:
        assert worst_window(sent[band.name]) <= band.allowance_s() + TOL, band.name


@pytest.mark.parametrize(
    "oversleep,deadline,ok,start",
    [
        (0.3, None, True, 3636.3),  # within the slack: the reservation covers it
        (2.0, None, True, 3638.0),  # beyond: replanned at the real time, still fits
        (2.0, 3637.0, False, None),  # beyond, and the deadline is gone: refused, not sent
    ],
)
async def test_a_late_wake_up_is_replanned(
    oversleep: float,
    deadline: float | None,
    ok: bool,
    start: float | None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock(100.0)

    async def stalled_sleep(delay: float) -> None:  # an event loop that was busy
        clock.now += delay + oversleep

    gate = DutyCycleGate(clock=clock, sleep=stalled_sleep, start_slack=0.5)
    gate.record(868.1, 36.0, at=0.0)  # free again at 3636
    with caplog.at_level(logging.WARNING, logger="passerelle.policy.dutycycle"):
        d = await gate.acquire(868.1, 1.0, 14, deadline=deadline)
    assert d.ok is ok
    assert ("replanning" in caplog.text) is (oversleep > 0.5)
    if ok:
        assert clock.now == pytest.approx(start)
        assert d.wait_s == pytest.approx(start - 100.0)
        assert gate.utilisation()["M"] == pytest.approx(1 / 36)
    else:
        assert "deadline passed 1.0 s ago" in (d.reason or "")
        assert gate.utilisation()["M"] == 0.0  # the stale reservation was dropped


async def test_acquire_with_the_real_clock_and_sleep() -> None:
    # A tiny band (20 % of a 0.5 s window = 0.1 s) so real waiting stays short.
    band = SubBand("T", 868.0, 868.6, 0.2, 25.0)
    gate = DutyCycleGate(bands=[band], window=0.5, start_slack=0.02)
    t0 = time.monotonic()
    first = await gate.acquire(868.1, 0.08, 14, deadline=None)
    assert first.ok and first.wait_s == 0.0
    second = await gate.acquire(868.1, 0.08, 14, deadline=time.monotonic() + 5)
    elapsed = time.monotonic() - t0
    assert second.ok
    # the first is charged until its end + slack + window = 0.6 s after t0
    assert 0.55 <= elapsed < 2.0
    assert second.wait_s == pytest.approx(elapsed, abs=0.05)


# --------------------------------------------------------------------- persistence


def test_snapshot_restore_keeps_the_hour_across_a_restart() -> None:
    wall = Clock(1_700_000_000.0)
    mono = Clock(5000.0)
    gate = DutyCycleGate(clock=mono, wall_clock=wall)
    gate.record(868.1, 30.0)  # band M
    gate.record(869.525, 100.0)  # band P
    mono.now += 60
    wall.now += 60
    before = gate.check(868.3, 10.0, 14)
    assert not before.ok
    snap = json.loads(json.dumps(gate.snapshot()))  # what goes to disk
    assert snap["bands"]["M"] == [[1_700_000_000.0, 1_700_000_030.0, 30.0]]

    # reboot 10 minutes later: the monotonic clock restarts near zero
    wall.now += 600
    mono2 = Clock(12.0)
    restarted = DutyCycleGate(clock=mono2, wall_clock=wall)
    assert restarted.restore(snap) == 2
    after = restarted.check(868.3, 10.0, 14)
    assert not after.ok
    assert after.wait_s == pytest.approx(before.wait_s - 600)
    assert restarted.utilisation()["P"] == pytest.approx(100 / 360)
    mono2.now += after.wait_s
    assert restarted.check(868.3, 10.0, 14).ok


def test_restore_with_a_wall_clock_behind_assumes_no_time_passed() -> None:
    wall = Clock(1_700_000_000.0)
    gate = DutyCycleGate(clock=Clock(100.0), wall_clock=wall)
    gate.record(868.1, 36.0)
    snap = gate.snapshot()
    wait = gate.check(868.1, 1.0, 14).wait_s
    # a Pi without RTC boots with an old date
    restarted = DutyCycleGate(clock=Clock(3.0), wall_clock=Clock(1_600_000_000.0))
    restarted.restore(snap)
    assert restarted.check(868.1, 1.0, 14).wait_s == pytest.approx(wait)
    # an hour after the snapshot the entry is gone
    late = DutyCycleGate(clock=Clock(3.0), wall_clock=Clock(1_700_000_000.0 + 3700))
    assert late.restore(snap) == 0
    assert late.check(868.1, 1.0, 14).ok


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda s: s.update(format="other/9"), "format 'other/9'"),
        (lambda s: s.update(saved_at="yesterday"), "saved_at must be a finite number"),
        (lambda s: s.update(bands=[1]), "'bands' must be a mapping"),
        (lambda s: s["bands"].update(M="x"), "bands.M must be a list"),
        (lambda s: s["bands"]["M"].append([1.0, 2.0]), r"bands.M\[1\]: expected \[start, end"),
        (lambda s: s["bands"]["M"].append([1.0, 2.0, "x"]), r"bands.M\[1\] must be a finite"),
        (lambda s: s["bands"]["M"].append([5.0, 2.0, 1.0]), r"bands.M\[1\]: inconsistent"),
    ],
)
def test_restore_refuses_a_bad_snapshot(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    gate = DutyCycleGate(clock=Clock(0.0), wall_clock=Clock(1e9))
    gate.record(868.1, 1.0)
    snap = json.loads(json.dumps(gate.snapshot()))
    mutate(snap)
    with pytest.raises(ValueError, match=message):
        DutyCycleGate(clock=Clock(0.0), wall_clock=Clock(1e9)).restore(snap)


def test_restore_skips_unknown_bands(caplog: pytest.LogCaptureFixture) -> None:
    gate = DutyCycleGate(clock=Clock(0.0), wall_clock=Clock(1e9))
    gate.record(868.1, 1.0)
    snap = gate.snapshot()
    snap["bands"]["Z"] = [[1e9, 1e9 + 1, 1.0]]
    with caplog.at_level(logging.WARNING, logger="passerelle.policy.dutycycle"):
        assert DutyCycleGate(clock=Clock(0.0), wall_clock=Clock(1e9)).restore(snap) == 1
    assert "unknown band 'Z'" in caplog.text
