"""Send-on-delta: a deadband never hides a change larger than its band, heartbeats come
through, and non-numbers are sent on change."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.policy.deadband import Deadband

finite = st.floats(-1e9, 1e9, allow_nan=False, allow_infinity=False)
numbers = st.one_of(finite, st.integers(-(10**9), 10**9))


def run(db: Deadband, values: list[float], times: list[float]) -> list[bool]:
    return [db.offer(v, t) for v, t in zip(values, times, strict=True)]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(numbers, min_size=1, max_size=60),
    st.one_of(st.floats(0, 100), st.integers(0, 100)),
    st.booleans(),
)
def test_change_beyond_the_band_is_always_sent(
    values: list[float], band: float, relative: bool
) -> None:
    """|v - last_sent| > band(last_sent)  =>  sent; and what is sent becomes last_sent."""
    rel = band / 100 if relative else None
    db = Deadband(None if relative else band, rel)
    last_sent: float | None = None
    for i, v in enumerate(values):
        sent = db.offer(v, float(i))
        if last_sent is None:
            assert sent
        else:
            width = rel * abs(last_sent) if rel is not None else band
            if abs(v - last_sent) > width:
                assert sent, f"{v} after {last_sent} (band {width}) was suppressed"
            else:
                assert not sent  # and inside the band it really is suppressed
        if sent:
            last_sent = v


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(finite, st.floats(0, 500)), min_size=1, max_size=60),
    st.floats(1, 1000),
)
def test_heartbeat_bounds_the_silence(steps: list[tuple[float, float]], heartbeat: float) -> None:
    db = Deadband(band=1e12, heartbeat=heartbeat)  # the band alone would suppress all
    t = 0.0
    last_sent_time = None
    for v, dt in steps:
        t += dt
        sent = db.offer(v, t)
        if last_sent_time is None or t - last_sent_time >= heartbeat:
            assert sent
        else:
            assert not sent
        if sent:
            last_sent_time = t


def test_the_band_is_strict() -> None:
    db = Deadband(band=0.5)
    assert run(db, [20.0, 20.5, 19.5, 20.51, 20.1, 21.02], [0, 1, 2, 3, 4, 5]) == [
        True,
        False,  # exactly the band: suppressed
        False,  # exactly the band below
        True,
        False,
        True,  # 0.51 from 20.51
    ]


def test_drift_is_measured_from_the_last_sent_value() -> None:
    db = Deadband(band=1.0)
    # 0.3 per step: each step is within the band, the drift from 10.0 is not.
    sent = run(db, [10.0, 10.3, 10.6, 10.9, 11.2, 11.5], [0, 1, 2, 3, 4, 5])
    assert sent == [True, False, False, False, True, False]


def test_relative_band_and_zero() -> None:
    db = Deadband(rel=0.02)
    assert run(db, [100.0, 101.9, 102.1], [0, 1, 2]) == [True, False, True]
    # At zero the relative band is empty: every change goes, repeats do not.
    db = Deadband(rel=0.5)
    assert run(db, [0.0, 0.0, 1e-9, 1e-9], [0, 1, 2, 3]) == [True, False, True, False]


def test_heartbeat_alone_sends_on_any_change() -> None:
    db = Deadband(heartbeat=60)
    assert run(db, [1, 1, 2, 2, 2], [0, 10, 20, 30, 80]) == [True, False, True, False, True]


def test_non_numbers_are_sent_on_change() -> None:
    db = Deadband(band=100.0)
    values: list[object] = ["open", "open", "closed", True, True, False, b"\x01", b"\x01", 5, 6]
    sent = run(db, values, list(range(len(values))))  # type: ignore[arg-type]
    assert sent == [True, False, True, True, False, True, True, False, True, False]


def test_non_finite_values() -> None:
    db = Deadband(band=1.0)
    nan, inf = math.nan, math.inf
    assert run(db, [1.0, nan, nan, 1.5, inf, inf, -inf, 2.0], list(range(8))) == [
        True,
        True,
        False,
        True,
        True,
        False,
        True,
        True,
    ]


def test_time_going_back_is_sent() -> None:
    db = Deadband(band=10.0, heartbeat=100)
    assert run(db, [1.0, 1.0, 1.0], [1000, 1001, 500]) == [True, False, True]


def test_huge_int_against_float() -> None:
    db = Deadband(band=1.0)
    assert db.offer(1e300, 0)
    assert db.offer(10**400, 1)  # cannot be compared as floats: sent, not guessed
    assert not db.offer(10**400, 2)  # two ints compare exactly, whatever their size
    assert db.offer(10**400 + 2, 3)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="not both"):
        Deadband(band=1, rel=0.1)
    with pytest.raises(ValueError, match="deadband_rel"):
        Deadband(rel=-0.1)
    with pytest.raises(ValueError, match="heartbeat"):
        Deadband(heartbeat=0)
