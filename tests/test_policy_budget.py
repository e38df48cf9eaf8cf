"""The daily byte budget: never exceeded except by alarms, shared by priority ceilings,
reset at local midnight (across DST changes), and kept across a restart."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.model import Priority
from passerelle.policy.budget import DEFAULT_CEILINGS, DailyBudget

PARIS = ZoneInfo("Europe/Paris")
START = datetime(2024, 3, 29, 12, tzinfo=UTC).timestamp()  # two days before spring forward


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> float:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC).timestamp()


ops = st.lists(
    st.tuples(
        st.integers(0, 600),  # bytes
        st.sampled_from(list(Priority)),
        st.floats(0, 6 * 3600),  # seconds since the previous request
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops, st.integers(1000, 5000), st.sampled_from([START, utc(2024, 10, 25, 12)]))
def test_budget_is_never_exceeded_except_by_alarms(
    requests: list[tuple[int, Priority, float]], per_day: int, start: float
) -> None:
    budget = DailyBudget(per_day, "Europe/Paris")
    spent: dict[date, int] = defaultdict(int)
    alarms: dict[date, int] = defaultdict(int)
    t = start
    for n, prio, dt in requests:
        t += dt
        day = datetime.fromtimestamp(t, PARIS).date()
        allowed = budget.try_spend(n, prio, t)
        if prio is Priority.ALARM:
            assert allowed  # alarms always pass
            alarms[day] += n
        else:
            limit = DEFAULT_CEILINGS[prio] * per_day
            # Refused exactly when it would pass the priority's ceiling: no more, no less.
            assert allowed == (spent[day] + n <= limit)
        if allowed:
            spent[day] += n
            if prio is not Priority.ALARM:
                assert spent[day] <= per_day  # a non-alarm never takes the day past it
        assert budget.spent == spent[day]
    for day, total in spent.items():
        assert total <= per_day or alarms[day] > 0
        assert total - alarms[day] <= per_day


def test_priorities_share_by_ceilings() -> None:
    b = DailyBudget(1000, "UTC")
    t = utc(2024, 6, 1, 8)
    assert b.try_spend(500, Priority.DIAGNOSTIC, t)
    assert not b.try_spend(1, Priority.DIAGNOSTIC, t)  # diagnostic stops at 50 %
    assert b.try_spend(300, Priority.TELEMETRY, t)
    assert not b.try_spend(1, Priority.TELEMETRY, t)  # telemetry stops at 80 %
    assert b.remaining(Priority.ENERGY, t) == 200
    assert b.try_spend(200, Priority.ENERGY, t)
    assert not b.try_spend(1, Priority.ENERGY, t)
    assert b.try_spend(5000, Priority.ALARM, t)  # alarms pass, and are counted
    assert b.spent == 6000 and b.spent_alarm == 5000
    assert b.refused == {"diagnostic": 1, "telemetry": 1, "energy": 1}
    assert b.refused_bytes == {"diagnostic": 1, "telemetry": 1, "energy": 1}
    # Next day (UTC midnight here) everything is fresh again.
    assert b.try_spend(500, Priority.DIAGNOSTIC, utc(2024, 6, 2, 0, 0))


def test_allow_then_spend() -> None:
    b = DailyBudget(100, "UTC")
    t = utc(2024, 6, 1)
    assert b.allow(100, Priority.ENERGY, t)
    b.spend(100, Priority.ENERGY, t)
    assert not b.allow(1, Priority.ENERGY, t)


def test_day_boundary_is_local_midnight_across_dst() -> None:
    b = DailyBudget(100, "Europe/Paris")
    # Saturday 30 March 2024, 23:30 CET = 22:30 UTC: still Saturday.
    assert b.try_spend(100, Priority.ENERGY, utc(2024, 3, 30, 22, 30))
    assert not b.allow(1, Priority.ENERGY, utc(2024, 3, 30, 22, 59, 59))
    # Local midnight = 23:00 UTC: Sunday, a fresh day.
    assert b.allow(100, Priority.ENERGY, utc(2024, 3, 30, 23, 0))
    assert b.resets_at(utc(2024, 3, 30, 12)) == utc(2024, 3, 30, 23)
    # Sunday is 23 hours long: it ends at 00:00 CEST = 22:00 UTC.
    assert b.resets_at(utc(2024, 3, 31, 12)) == utc(2024, 3, 31, 22)
    # Sunday 27 October is 25 hours long: 00:00 CEST = 22:00 UTC the 26th to 23:00 UTC.
    assert b.resets_at(utc(2024, 10, 27, 12)) == utc(2024, 10, 27, 23)


def test_clock_stepping_back_does_not_grant_a_new_day() -> None:
    b = DailyBudget(100, "UTC")
    assert b.try_spend(100, Priority.ENERGY, utc(2024, 6, 2, 1))
    assert not b.try_spend(1, Priority.ENERGY, utc(2024, 6, 1, 23))  # back to yesterday
    assert not b.try_spend(1, Priority.ENERGY, utc(1970, 1, 1))  # a Pi without RTC


def test_snapshot_restore() -> None:
    t = utc(2024, 6, 1, 10)
    b = DailyBudget(1000, "UTC")
    b.spend(700, Priority.TELEMETRY, t)
    b.spend(50, Priority.ALARM, t)
    snap = b.snapshot()
    fresh = DailyBudget(1000, "UTC")
    assert fresh.restore(snap, t + 3600)
    assert fresh.spent == 750 and fresh.spent_alarm == 50
    assert not fresh.allow(100, Priority.TELEMETRY, t + 3600)
    # A snapshot from yesterday gives nothing back today.
    other = DailyBudget(1000, "UTC")
    assert not other.restore(snap, utc(2024, 6, 2, 1))
    assert other.spent == 0
    with pytest.raises(ValueError, match="budget snapshot"):
        other.restore({"format": "passerelle.budget/1", "day": "yesterday", "spent": 1}, t)
    with pytest.raises(ValueError, match="format"):
        other.restore({}, t)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="bytes_per_day"):
        DailyBudget(0)
    with pytest.raises(ValueError, match="bytes_per_day"):
        DailyBudget(True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="time zone"):
        DailyBudget(100, "Mars/Olympus")
    with pytest.raises(ValueError, match="ceiling for TELEMETRY"):
        DailyBudget(100, ceilings={Priority.DIAGNOSTIC: 0.5, Priority.ENERGY: 1.0})
    b = DailyBudget(100)
    with pytest.raises(ValueError, match="nbytes"):
        b.allow(-1, Priority.ENERGY, 0)
    with pytest.raises(ValueError, match="nbytes"):
        b.spend(1.5, Priority.ENERGY, 0)  # type: ignore[arg-type]
