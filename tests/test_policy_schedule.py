"""Sampling schedules follow the legal local clock: nights crossing midnight, and the two
Sundays a year when Europe/Paris changes offset."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.policy.schedule import ClockNight, SamplingSchedule, parse_window

PARIS = ZoneInfo("Europe/Paris")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, sec: int = 0) -> float:
    return datetime(year, month, day, hour, minute, sec, tzinfo=UTC).timestamp()


def test_parse_window() -> None:
    assert parse_window("22:00-06:00") == (22 * 3600, 6 * 3600)
    assert parse_window("00:30-05:45") == (1800, 5 * 3600 + 45 * 60)
    for bad in ("22-06", "24:00-06:00", "22:60-06:00", "6:00-7:00", "22:00-22:00", "", "x"):
        with pytest.raises(ValueError, match="HH:MM|same time"):
            parse_window(bad)


def test_night_crossing_midnight_in_winter() -> None:
    s = SamplingSchedule(60, 600, night="22:00-06:00", tz="Europe/Paris")
    # 15 January: CET, UTC+1. Night is 21:00-05:00 UTC.
    assert s.interval_at(utc(2024, 1, 15, 20, 59, 59)) == 60
    assert s.interval_at(utc(2024, 1, 15, 21, 0, 0)) == 600
    assert s.interval_at(utc(2024, 1, 15, 23, 30)) == 600  # after local midnight
    assert s.interval_at(utc(2024, 1, 16, 4, 59, 59)) == 600
    assert s.interval_at(utc(2024, 1, 16, 5, 0, 0)) == 60


def test_night_inside_one_day() -> None:
    s = SamplingSchedule(60, 300, night="01:00-04:30", tz="UTC")
    assert s.interval_at(utc(2024, 6, 1, 0, 59)) == 60
    assert s.interval_at(utc(2024, 6, 1, 1, 0)) == 300
    assert s.interval_at(utc(2024, 6, 1, 4, 29, 59)) == 300
    assert s.interval_at(utc(2024, 6, 1, 4, 30)) == 60


def test_spring_forward_night_is_seven_hours() -> None:
    # Sunday 31 March 2024: 02:00 CET -> 03:00 CEST (01:00 UTC). The night begins at
    # 22:00 CET on the 30th (21:00 UTC) and ends at 06:00 CEST on the 31st (04:00 UTC).
    s = SamplingSchedule(60, 900)
    assert s.interval_at(utc(2024, 3, 30, 20, 59, 59)) == 60
    assert s.interval_at(utc(2024, 3, 30, 21, 0)) == 900
    assert s.interval_at(utc(2024, 3, 31, 3, 59, 59)) == 900
    assert s.interval_at(utc(2024, 3, 31, 4, 0)) == 60  # a fixed UTC+1 would say night
    # And the next evening it starts at 22:00 CEST = 20:00 UTC.
    assert s.interval_at(utc(2024, 3, 31, 19, 59, 59)) == 60
    assert s.interval_at(utc(2024, 3, 31, 20, 0)) == 900


def test_fall_back_night_is_nine_hours() -> None:
    # Sunday 27 October 2024: 03:00 CEST -> 02:00 CET (01:00 UTC). Night 22:00 CEST on the
    # 26th (20:00 UTC) to 06:00 CET on the 27th (05:00 UTC).
    s = SamplingSchedule(60, 900)
    assert s.interval_at(utc(2024, 10, 26, 19, 59, 59)) == 60
    assert s.interval_at(utc(2024, 10, 26, 20, 0)) == 900
    assert s.interval_at(utc(2024, 10, 27, 4, 59, 59)) == 900
    assert s.interval_at(utc(2024, 10, 27, 5, 0)) == 60
    night = [t for t in range(int(utc(2024, 10, 26, 12)), int(utc(2024, 10, 27, 12)), 60)]
    assert sum(s.interval_at(t) == 900 for t in night) * 60 == 9 * 3600


def test_window_in_the_repeated_hour_happens_twice() -> None:
    # 02:15-02:45 local occurs twice on 27 October 2024 (CEST then CET), never on 31 March.
    night = ClockNight("02:15-02:45", "Europe/Paris")
    oct_day = range(int(utc(2024, 10, 26, 22)), int(utc(2024, 10, 27, 22)), 60)
    assert sum(night(t) for t in oct_day) == 60
    mar_day = range(int(utc(2024, 3, 30, 23)), int(utc(2024, 3, 31, 22)), 60)
    assert sum(night(t) for t in mar_day) == 0


@settings(max_examples=300, deadline=None)
@given(st.integers(int(utc(2023, 1, 1)), int(utc(2027, 1, 1))))
def test_interval_follows_the_local_clock(t: int) -> None:
    s = SamplingSchedule(30, 600, night="21:30-05:15")
    local = datetime.fromtimestamp(t, PARIS)
    minutes = local.hour * 60 + local.minute
    expected_night = minutes >= 21 * 60 + 30 or minutes < 5 * 60 + 15
    assert s.interval_at(t) == (600 if expected_night else 30)


@settings(max_examples=200, deadline=None)
@given(st.integers(int(utc(2024, 1, 1)), int(utc(2026, 1, 1))))
def test_delay_never_runs_past_a_change(t: int) -> None:
    s = SamplingSchedule(300, 3600)
    delay = s.delay_at(t)
    assert 0 < delay <= s.interval_at(t)
    # Sampled every minute, the regime does not change strictly inside (t, t + delay).
    regime = s.is_night(t)
    for k in range(1, int(delay // 60)):
        if t + 60 * k < t + delay:
            assert s.is_night(t + 60 * k) == regime
    # And when the delay was cut short, it lands on a change.
    if delay < s.interval_at(t):
        assert s.is_night(t + delay) != regime


def test_delay_at_dawn_lands_on_day_start() -> None:
    s = SamplingSchedule(60, 3600)
    t = utc(2024, 1, 16, 4, 30)  # 05:30 CET; day starts at 06:00 CET
    assert s.delay_at(t) == pytest.approx(1800)
    # Spring forward: 05:30 CEST (03:30 UTC) -> 06:00 CEST is still 30 min.
    assert s.delay_at(utc(2024, 3, 31, 3, 30)) == pytest.approx(1800)


def test_injected_night_replaces_the_clock() -> None:
    dark = {True: 0}

    def is_night(t: float) -> bool:
        dark[True] += 1
        return t >= 1000

    s = SamplingSchedule(10, 100, is_night=is_night)
    assert s.interval_at(999) == 10
    assert s.interval_at(1000) == 100
    assert s.delay_at(1000) == 100
    assert dark[True] == 3


def test_no_night_interval_means_same_all_day() -> None:
    s = SamplingSchedule(42)
    assert s.interval_at(utc(2024, 1, 1, 23)) == 42
    assert s.delay_at(utc(2024, 1, 1, 23)) == 42


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="interval"):
        SamplingSchedule(0)
    with pytest.raises(ValueError, match="night_interval"):
        SamplingSchedule(10, float("nan"))
    with pytest.raises(ValueError, match="unknown time zone 'Europe/Pari'"):
        SamplingSchedule(10, 20, tz="Europe/Pari")
    with pytest.raises(ValueError, match="unknown time zone"):
        SamplingSchedule(10, 20, tz="Europe")


def test_fixture_dates_are_dst_sundays() -> None:
    # The fixture dates really are the DST Sundays.
    mar = datetime(2024, 3, 31, 12, tzinfo=PARIS)
    assert mar.utcoffset() == timedelta(hours=2)
    assert (mar - timedelta(days=1)).utcoffset() == timedelta(hours=1)
