"""Aggregation windows: aligned on the epoch, each aggregate equal to the same computation
on the raw samples of its window."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.model import Record
from passerelle.policy.aggregate import FUNCTIONS, WindowAggregator, window_start

T0 = 1_711_843_200.0  # 2024-03-31 00:00 UTC


def expected(
    samples: Sequence[tuple[float, float | int]], window: int
) -> dict[float, dict[str, float | int]]:
    groups: dict[float, list[float | int]] = defaultdict(list)
    for t, v in samples:
        groups[math.floor(t / window) * window].append(v)
    out = {}
    for start, vs in groups.items():
        all_int = all(type(v) is int for v in vs)
        total = sum(vs) if all_int else math.fsum(vs)
        out[start] = {
            "min": min(vs),
            "max": max(vs),
            "mean": total / len(vs),
            "sum": total,
            "count": len(vs),
            "first": vs[0],
            "last": vs[-1],
        }
    return out


def collect(
    agg: WindowAggregator, samples: Sequence[tuple[float, float | int]], unit: str
) -> list[Record]:
    out: list[Record] = []
    for t, v in samples:
        closed = agg.add(v, t, unit)
        assert closed is not None  # in order: never late
        out.extend(closed)
    out.extend(agg.close_ended(math.inf))
    return out


def check(records: list[Record], want: dict[float, dict[str, float | int]], unit: str) -> None:
    got: dict[float, dict[str, float | int]] = defaultdict(dict)
    for r in records:
        assert r.device == "meter-1"
        base, _, fn = r.name.rpartition("/")
        assert base == "power"
        assert r.unit == (None if fn == "count" else unit)
        got[r.time][fn] = r.value  # type: ignore[assignment]
    assert set(got) == set(want)
    for start, fns in got.items():
        assert set(fns) == set(FUNCTIONS)
        for fn, value in fns.items():
            assert value == want[start][fn], (start, fn)
            assert type(value) is type(want[start][fn])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.floats(0, 5000), st.floats(-1e12, 1e12, allow_nan=False)),
        min_size=1,
        max_size=80,
    ),
    st.sampled_from([1, 60, 300, 900]),
)
def test_aggregates_equal_the_raw_computation(
    steps: list[tuple[float, float]], window: int
) -> None:
    t = T0
    samples = []
    for dt, v in steps:
        t += dt
        samples.append((t, v))
    agg = WindowAggregator("meter-1", "power", window, FUNCTIONS)
    check(collect(agg, samples, "W"), expected(samples, window), "W")


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 400), st.integers(-(2**62), 2**62)), min_size=1, max_size=60)
)
def test_integer_windows_stay_exact(steps: list[tuple[float, int]]) -> None:
    t = T0
    samples = []
    for dt, v in steps:
        t += dt
        samples.append((t, v))
    agg = WindowAggregator("meter-1", "power", 300, FUNCTIONS)
    check(collect(agg, samples, "Wh"), expected(samples, 300), "Wh")


def test_mean_is_exactly_rounded_where_naive_sum_is_not() -> None:
    agg = WindowAggregator("d", "x", 60, ["mean", "sum"])
    vs = [1e16, 1.0, -1e16, 1.0] * 5
    for i, v in enumerate(vs):
        agg.add(v, T0 + i, None)
    mean, total = agg.close_ended(math.inf)
    assert total.value == math.fsum(vs) == 10.0
    assert mean.value == 0.5
    assert sum(vs) != 10.0  # the naive sum loses the ones


def test_windows_align_on_wall_clock_multiples() -> None:
    a = WindowAggregator("d", "x", 300, ["count"])
    b = WindowAggregator("d", "x", 300, ["count"])
    # Two gateways starting at different moments cut the same windows.
    out_a = [r for t in (T0 + 17, T0 + 299, T0 + 301) for r in a.add(1.0, t, None) or []]
    out_b = [r for t in (T0 + 123, T0 + 310) for r in b.add(1.0, t, None) or []]
    assert [r.time for r in out_a] == [r.time for r in out_b] == [T0]
    assert window_start(T0 + 299.999, 300) == T0
    assert window_start(T0 + 300, 300) == T0 + 300


def test_late_samples_are_returned_not_folded() -> None:
    agg = WindowAggregator("d", "x", 60, ["count"])
    assert agg.add(1, T0 + 61, None) == []
    assert agg.add(1, T0 + 59, None) is None  # before the window being filled
    (rec,) = agg.close_ended(T0 + 120)
    assert rec.value == 1 and rec.time == T0 + 60
    assert agg.add(1, T0 + 119, None) is None  # in the window already closed
    assert agg.add(1, T0 + 120, None) == []


def test_close_ended_waits_for_the_end() -> None:
    agg = WindowAggregator("d", "x", 60, ["last"])
    agg.add(3, T0 + 10, "V")
    assert agg.close_ended(T0 + 59.9) == []
    assert agg.close_ended(T0 + 60) == [Record("d", "x/last", 3, T0, "V")]
    assert agg.close_ended(T0 + 1000) == []  # empty windows emit nothing


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="window"):
        WindowAggregator("d", "x", 0, ["min"])
    with pytest.raises(ValueError, match="functions"):
        WindowAggregator("d", "x", 60, ["median"])
    with pytest.raises(ValueError, match="functions"):
        WindowAggregator("d", "x", 60, ["min", "min"])
