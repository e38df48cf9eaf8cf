"""A night's plan: which calendar rule governs it, the level steps with real sun times, and
their energy, checked against values worked out by hand from the step times.

Expected instants are compared as UTC instants (``utc``): two aware datetimes sharing one
ZoneInfo compare and subtract as wall times in Python, which is exactly the mistake a DST
night would hide.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passerelle.config import parse
from passerelle.lighting.astro import NightSun, night_sun
from passerelle.lighting.calendar import rule_matches, select
from passerelle.lighting.model import Calendar, ControlProgram, LightingConfig
from passerelle.lighting.plan import night_of, plan_night, program_steps, window

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "street.toml"
PARIS = ZoneInfo("Europe/Paris")
OSLO = ZoneInfo("Europe/Oslo")
BLOIS = (47.5861, 1.3359)
TROMSO = (69.6492, 18.9553)
MIN = timedelta(minutes=1)
HOUR = 3600.0


def utc(t: datetime) -> datetime:
    return t.astimezone(UTC)


def real(steps: list[tuple[datetime, int]]) -> list[tuple[datetime, int]]:
    return [(utc(t), level) for t, level in steps]


def local(day: date, hhmm: str, tz: ZoneInfo = PARIS) -> datetime:
    """A wall time on ``day`` (first occurrence when it occurs twice)."""
    return datetime(day.year, day.month, day.day, int(hhmm[:2]), int(hhmm[3:]), tzinfo=tz)


def hours(a: datetime, b: datetime) -> float:
    """Elapsed hours between two instants, whatever their zones."""
    return (b.timestamp() - a.timestamp()) / HOUR


def lighting(
    programs: dict[str, Any],
    zone: dict[str, Any],
    rules: list[dict[str, Any]] | None = None,
    *,
    lat: float = BLOIS[0],
    lon: float = BLOIS[1],
    tz: str = "Europe/Paris",
) -> LightingConfig:
    """One zone ``z`` on calendar ``c``; by default the calendar runs program ``p`` nightly."""
    return msgspec.convert(
        {
            "latitude": lat,
            "longitude": lon,
            "timezone": tz,
            "programs": programs,
            "calendars": {"c": {"rules": rules if rules is not None else [{"program": "p"}]}},
            "zones": {"z": {"calendar": "c", **zone}},
        },
        LightingConfig,
    )


FETE = {
    "astro_clock_time_controls": [
        {"solar_event_type": "sunset", "offset": -15, "level": 100},
        {"solar_event_type": "sunrise", "offset": 15, "level": 0},
    ]
}


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> LightingConfig:
    """examples/street.toml with a lab uplink (its TLS files do not exist here)."""
    tmp = tmp_path_factory.mktemp("street")
    data = tomllib.loads(EXAMPLE.read_text())
    data["uplink"] = {"url": "mqtt://127.0.0.1:1883", "allow_plaintext": True}
    data["gateway"]["data_dir"] = str(tmp / "data")
    cfg = parse(data, tmp)
    assert cfg.lighting is not None
    return cfg.lighting


# --------------------------------------------------------------------------------------------
# Calendar


def calendar(*rules: dict[str, Any]) -> Calendar:
    return msgspec.convert({"rules": list(rules)}, Calendar)


def chosen(cal: Calendar, night: str) -> str | None:
    rule = select(cal, date.fromisoformat(night))
    return None if rule is None else rule.program


def test_exceptions_before_the_general_rule_win() -> None:
    cal = calendar(
        {"name": "fete-nationale", "start_date": "07-14", "program": "fete"},
        {
            "name": "festival",
            "start_date": "2026-08-07",
            "end_date": "2026-08-09",
            "program": "festival",
        },
        {"program": "ordinary"},
    )
    assert chosen(cal, "2026-07-14") == "fete"
    assert chosen(cal, "2031-07-14") == "fete"  # yearly
    assert chosen(cal, "2026-07-13") == "ordinary"
    assert chosen(cal, "2026-07-15") == "ordinary"
    assert chosen(cal, "2026-08-06") == "ordinary"
    for night in ("2026-08-07", "2026-08-08", "2026-08-09"):  # both ends included
        assert chosen(cal, night) == "festival"
    assert chosen(cal, "2026-08-10") == "ordinary"
    assert chosen(cal, "2027-08-08") == "ordinary"  # a one-off: not next year


def test_first_matching_rule_wins_so_order_is_precedence() -> None:
    general_first = calendar(
        {"program": "ordinary"},
        {"name": "fete-nationale", "start_date": "07-14", "program": "fete"},
    )
    assert chosen(general_first, "2026-07-14") == "ordinary"
    two_matching = calendar(
        {"start_date": "07-01", "end_date": "07-31", "program": "summer"},
        {"start_date": "07-14", "program": "fete"},
    )
    assert chosen(two_matching, "2026-07-14") == "summer"


def test_yearly_range_over_new_year() -> None:
    cal = calendar({"start_date": "12-20", "end_date": "01-02", "program": "fetes"})
    inside = ("2026-12-20", "2026-12-25", "2026-12-31", "2027-01-01", "2027-01-02", "2030-12-31")
    for night in inside:
        assert chosen(cal, night) == "fetes", night
    for night in ("2026-12-19", "2027-01-03", "2027-02-15", "2026-07-01"):
        assert chosen(cal, night) is None, night


def test_yearly_range_within_a_year_and_leap_day() -> None:
    cal = calendar({"start_date": "02-28", "end_date": "03-01", "program": "p"})
    assert chosen(cal, "2028-02-29") == "p"
    assert chosen(cal, "2027-03-01") == "p"
    assert chosen(cal, "2027-03-02") is None
    assert chosen(cal, "2027-02-27") is None


def test_weekdays_are_the_night_s_starting_day() -> None:
    cal = calendar({"weekdays": ["sat"], "program": "match"}, {"program": "ordinary"})
    assert chosen(cal, "2026-03-28") == "match"  # a Saturday: the night of Sat to Sun
    assert chosen(cal, "2026-03-29") == "ordinary"
    assert chosen(cal, "2026-03-27") == "ordinary"


def test_a_rule_combining_weekdays_and_dates_needs_both() -> None:
    rule = calendar(
        {
            "weekdays": ["fri", "sat"],
            "start_date": "06-01",
            "end_date": "08-31",
            "program": "summer-weekend",
        }
    ).rules[0]
    assert rule_matches(rule, date(2026, 7, 10))  # Friday in July
    assert not rule_matches(rule, date(2026, 7, 9))  # Thursday in July
    assert not rule_matches(rule, date(2026, 9, 4))  # Friday in September
    assert rule_matches(rule, date(2026, 8, 29))  # Saturday, last weekend of August


def test_no_rule_matches_gives_the_safe_default_from_sunset_to_sunrise() -> None:
    cfg = lighting(
        {"p": FETE},
        {"count": 3, "default_level": 70, "rated_power": 50.0, "ramp_up": 0, "ramp_down": 0},
        rules=[{"start_date": "07-14", "program": "p"}],
    )
    night = date(2026, 1, 15)
    plan = plan_night(cfg, night)
    z = plan.zones["z"]
    sun = night_sun(*BLOIS, PARIS, night)
    assert sun.sunset is not None and sun.sunrise is not None
    assert (z.source, z.rule, z.program) == ("default", None, None)
    start, _ = window(night, PARIS)
    assert real(z.steps) == real([(start, 0), (sun.sunset, 70), (sun.sunrise, 0)])
    assert z.sensor_periods == []
    dark = hours(sun.sunset, sun.sunrise)
    assert z.energy_wh == pytest.approx(dark * 50.0 * 0.70 * 3, rel=1e-9)
    assert z.baseline_wh == pytest.approx(dark * 50.0 * 3, rel=1e-9)
    # On 14 July the rule matches and says which program and rule governed the night.
    z14 = plan_night(cfg, date(2026, 7, 14)).zones["z"]
    assert (z14.source, z14.program) == ("calendar", "p")


def test_night_of_a_moment() -> None:
    assert night_of(local(date(2026, 1, 16), "01:00"), PARIS) == date(2026, 1, 15)
    assert night_of(local(date(2026, 1, 16), "11:59"), PARIS) == date(2026, 1, 15)
    assert night_of(local(date(2026, 1, 16), "12:00"), PARIS) == date(2026, 1, 16)
    # 23:30 UTC on 15 January is 00:30 in Paris: still the night of the 15th
    assert night_of(datetime(2026, 1, 15, 23, 30, tzinfo=UTC), PARIS) == date(2026, 1, 15)


# --------------------------------------------------------------------------------------------
# The example street on real nights


def test_example_street_on_a_winter_night(street: LightingConfig) -> None:
    night = date(2026, 12, 15)  # a Tuesday, no festivity
    plan = plan_night(street, night)
    sun = night_sun(*BLOIS, PARIS, night)
    assert plan.sun == sun
    assert sun.sunset is not None and sun.sunrise is not None
    assert sun.civil_dusk is not None and sun.civil_dawn is not None
    # Blois in mid-December: sunset a little after 17:00, sunrise around 08:40.
    assert local(night, "16:55") < sun.sunset < local(night, "17:10")
    nxt = night + timedelta(days=1)
    assert local(nxt, "08:30") < sun.sunrise < local(nxt, "08:50")
    start, end = window(night, PARIS)
    assert hours(start, end) == 24

    gr = plan.zones["grande-rue"]
    assert (gr.source, gr.rule, gr.program) == ("calendar", "nuits-ordinaires", "coeur-de-nuit")
    assert real(gr.steps) == real(
        [
            (start, 0),
            (sun.sunset - 10 * MIN, 100),
            (local(night, "23:00"), 50),
            (local(nxt, "01:00"), 0),
            (local(nxt, "05:30"), 50),
            (sun.sunrise + 10 * MIN, 0),
        ]
    )
    assert real(gr.sensor_periods) == real([(local(nxt, "01:00"), local(nxt, "05:30"))])
    assert gr.sensor_active(local(nxt, "03:00"))
    assert not gr.sensor_active(local(night, "23:30"))

    pl = plan.zones["place-mairie"]
    assert real(pl.steps) == real(
        [
            (start, 0),
            (sun.civil_dusk - 20 * MIN, 100),
            (local(night, "22:30"), 40),
            (local(nxt, "06:00"), 80),
            (sun.civil_dawn + 20 * MIN, 0),
        ]
    )
    st_ = plan.zones["chemin-stade"]
    assert real(st_.steps) == real(
        [
            (start, 0),
            (sun.sunset, 100),
            (local(night, "23:00"), 0),
            (local(nxt, "06:00"), 100),
            (sun.sunrise, 0),
        ]
    )


def test_example_street_festivities(street: LightingConfig) -> None:
    # 13 July: both centre zones on "fete"; the 12th of December: only the square's market.
    july = plan_night(street, date(2026, 7, 13))
    assert july.zones["grande-rue"].rule == "fete-nationale"
    assert july.zones["place-mairie"].program == "fete"
    december = plan_night(street, date(2026, 12, 12))  # a Saturday
    assert december.zones["grande-rue"].program == "coeur-de-nuit"
    assert december.zones["place-mairie"].rule == "marche-de-noel"
    assert december.zones["chemin-stade"].rule == "match-du-samedi"
    assert plan_night(street, date(2027, 12, 12)).zones["place-mairie"].program == "veille"
    new_year = plan_night(street, date(2026, 12, 31)).zones["grande-rue"]
    assert new_year.rule == "fetes-de-fin-d-annee"


def test_example_street_on_a_summer_night_no_light_after_sunrise(
    street: LightingConfig,
) -> None:
    night = date(2026, 6, 21)
    plan = plan_night(street, night)
    sun = plan.sun
    assert sun.sunset is not None and sun.sunrise is not None and sun.civil_dawn is not None
    assert sun.civil_dusk is not None
    nxt = night + timedelta(days=1)
    # Blois at the solstice: sunrise just before 06:00, so "06:00 -> 100" must not fire.
    assert local(nxt, "05:45") < sun.sunrise < local(nxt, "06:00")
    start, end = window(night, PARIS)

    assert real(plan.zones["chemin-stade"].steps) == real(
        [(start, 0), (sun.sunset, 100), (local(night, "23:00"), 0)]
    )
    assert real(plan.zones["place-mairie"].steps) == real(
        [
            (start, 0),
            (sun.civil_dusk - 20 * MIN, 100),
            (local(night, "22:30"), 40),
            (sun.civil_dawn + 20 * MIN, 0),  # civil dawn + 20 is before 06:00: no 80 %
        ]
    )
    assert real(plan.zones["grande-rue"].steps)[-2:] == real(
        [(local(nxt, "05:30"), 50), (sun.sunrise + 10 * MIN, 0)]
    )
    for z in plan.zones.values():
        t = sun.sunrise + 11 * MIN
        while t < end:
            assert z.level_at(t) == 0, (z.zone, t)
            t += 10 * MIN


def test_spring_forward_night(street: LightingConfig) -> None:
    night = date(2026, 3, 28)
    nxt = night + timedelta(days=1)
    start, end = window(night, PARIS)
    assert hours(start, end) == 23
    gr = plan_night(street, night).zones["grande-rue"]
    (one, off), (half_past_five, dim) = gr.steps[3], gr.steps[4]
    assert (off, dim) == (0, 50)
    assert one.utcoffset() == timedelta(hours=1)  # 01:00 is still winter time
    assert utc(one) == datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    assert half_past_five.utcoffset() == timedelta(hours=2)  # 05:30 summer time
    assert utc(half_past_five) == datetime(2026, 3, 29, 3, 30, tzinfo=UTC)

    # 02:30 does not exist that night: the point lands after the gap, in summer time.
    cfg = lighting(
        {
            "p": {
                "fixed_time_controls": [
                    {"time": "20:00", "level": 100},
                    {"time": "02:30", "level": 50},
                    {"time": "07:00", "level": 0},
                ]
            }
        },
        {"count": 1},
    )
    steps = plan_night(cfg, night).zones["z"].steps
    assert [lv for _, lv in steps] == [0, 100, 50, 0]
    t = steps[2][0]
    assert t.utcoffset() == timedelta(hours=2)
    assert local(nxt, "03:00") <= t <= local(nxt, "03:30")
    assert (
        datetime(2026, 3, 29, 1, 0, tzinfo=UTC)
        <= utc(t)
        <= datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    )
    times = [s[0].timestamp() for s in steps]
    assert times == sorted(times) and times[-1] < end.timestamp()


def test_fall_back_night(street: LightingConfig) -> None:
    night = date(2026, 10, 24)
    nxt = night + timedelta(days=1)
    start, end = window(night, PARIS)
    assert hours(start, end) == 25
    gr = plan_night(street, night).zones["grande-rue"]
    (one, off), (half_past_five, dim) = gr.steps[3], gr.steps[4]
    assert (off, dim) == (0, 50)
    assert utc(one) == datetime(2026, 10, 24, 23, 0, tzinfo=UTC)  # 01:00 CEST
    assert utc(half_past_five) == datetime(2026, 10, 25, 4, 30, tzinfo=UTC)  # 05:30 CET
    # 02:30 happens twice: the first one (summer time) is taken.
    cfg = lighting(
        {
            "p": {
                "fixed_time_controls": [
                    {"time": "20:00", "level": 100},
                    {"time": "02:30", "level": 50},
                    {"time": "07:00", "level": 0},
                ]
            }
        },
        {"count": 1},
    )
    steps = plan_night(cfg, night).zones["z"].steps
    assert [lv for _, lv in steps] == [0, 100, 50, 0]
    assert utc(steps[2][0]) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert utc(steps[3][0]) == utc(local(nxt, "07:00")) == datetime(2026, 10, 25, 6, 0, tzinfo=UTC)


@pytest.mark.parametrize(("night", "lit_hours"), [(date(2026, 3, 28), 9), (date(2026, 10, 24), 11)])
def test_energy_counts_real_hours_on_dst_nights(night: date, lit_hours: int) -> None:
    # 20:00 to 06:00 lasts 9 h when the clocks go forward, 11 h when they go back.
    cfg = lighting(
        {
            "p": {
                "fixed_time_controls": [
                    {"time": "20:00", "level": 100},
                    {"time": "06:00", "level": 0},
                ]
            }
        },
        {"count": 2, "rated_power": 100.0, "ramp_up": 0, "ramp_down": 0},
    )
    z = plan_night(cfg, night).zones["z"]
    assert hours(z.steps[1][0], z.steps[2][0]) == lit_hours
    assert z.energy_wh == pytest.approx(lit_hours * 100.0 * 2, rel=1e-9)


@pytest.mark.parametrize("night", [date(2026, 3, 28), date(2026, 10, 24)])
def test_baseline_counts_real_hours_on_dst_nights(street: LightingConfig, night: date) -> None:
    plan = plan_night(street, night)
    assert plan.sun.sunset is not None and plan.sun.sunrise is not None
    dark = hours(plan.sun.sunset, plan.sun.sunrise)
    assert plan.zones["grande-rue"].baseline_wh == pytest.approx(dark * 40.0 * 8, rel=1e-6)


# --------------------------------------------------------------------------------------------
# High latitudes


def test_tromso_polar_night_is_lit_all_window_at_the_evening_level() -> None:
    cfg = lighting(
        {"p": FETE},
        {"count": 5, "rated_power": 60.0, "standby_power": 0.0},
        lat=TROMSO[0],
        lon=TROMSO[1],
        tz="Europe/Oslo",
    )
    night = date(2026, 12, 21)
    plan = plan_night(cfg, night)
    assert plan.sun.polar == "night"
    assert plan.sun.sunset is None and plan.sun.sunrise is None
    start, end = window(night, OSLO)
    z = plan.zones["z"]
    assert real(z.steps) == real([(start, 100)])
    t = start
    while t < end:
        assert z.level_at(t) == 100
        t += 37 * MIN
    assert z.energy_wh == pytest.approx(24 * 60.0 * 5, rel=1e-9)
    assert z.baseline_wh == pytest.approx(24 * 60.0 * 5, rel=1e-9)


def test_tromso_polar_night_keeps_the_program_s_fixed_points() -> None:
    prog = dict(
        FETE, fixed_time_controls=[{"time": "23:00", "level": 50}, {"time": "05:30", "level": 80}]
    )
    cfg = lighting({"p": prog}, {"count": 1}, lat=TROMSO[0], lon=TROMSO[1], tz="Europe/Oslo")
    night = date(2026, 12, 21)
    start, _ = window(night, OSLO)
    z = plan_night(cfg, night).zones["z"]
    assert real(z.steps) == real(
        [
            (start, 100),
            (local(night, "23:00", OSLO), 50),
            (local(night + timedelta(days=1), "05:30", OSLO), 80),
        ]
    )


def test_tromso_polar_day_is_off_all_window() -> None:
    prog = dict(FETE, fixed_time_controls=[{"time": "23:00", "level": 50}])
    cfg = lighting(
        {"p": prog},
        {"count": 5, "rated_power": 60.0, "standby_power": 0.0},
        lat=TROMSO[0],
        lon=TROMSO[1],
        tz="Europe/Oslo",
    )
    night = date(2026, 6, 21)
    plan = plan_night(cfg, night)
    assert plan.sun.polar == "day"
    start, end = window(night, OSLO)
    z = plan.zones["z"]
    assert real(z.steps) == real([(start, 0)])
    assert z.level_at(local(night, "23:30", OSLO)) == 0
    assert z.energy_wh == 0.0
    assert z.baseline_wh == 0.0


def test_tromso_polar_night_safe_default_has_no_step_at_the_window_end() -> None:
    cfg = lighting(
        {"p": FETE},
        {"count": 2, "default_level": 70},
        rules=[{"start_date": "07-14", "program": "p"}],
        lat=TROMSO[0],
        lon=TROMSO[1],
        tz="Europe/Oslo",
    )
    night = date(2026, 12, 21)
    start, _ = window(night, OSLO)
    z = plan_night(cfg, night).zones["z"]
    assert z.source == "default"
    assert real(z.steps) == real([(start, 70)])


@pytest.mark.parametrize(
    ("site", "tz", "night"),
    [
        # The sun set before noon and rises at 11:34 next day: dark at the window's start.
        (TROMSO, "Europe/Oslo", date(2027, 1, 14)),
        # Murmansk: sets at 13:08, next sunrise after noon the next day: dark at its end.
        ((68.9585, 33.0827), "Europe/Moscow", date(2026, 11, 30)),
    ],
)
def test_edge_of_the_polar_night_is_lit_while_dark(
    site: tuple[float, float], tz: str, night: date
) -> None:
    cfg = lighting({"p": FETE}, {"count": 1}, lat=site[0], lon=site[1], tz=tz)
    plan = plan_night(cfg, night)
    assert plan.sun.polar is None
    assert (plan.sun.sunset is None) != (plan.sun.sunrise is None)  # one crossing only
    z = plan.zones["z"]
    start, end = window(night, ZoneInfo(tz))
    evening = start + timedelta(hours=8)  # 20:00 and 06:00: dark at these latitudes then
    morning = end - timedelta(hours=6)
    assert z.level_at(evening) == 100
    assert z.level_at(morning) == 100


def test_62n_in_june_civil_dusk_and_dawn_meet_at_solar_midnight() -> None:
    # At 60 N the sun still reaches -6.6 deg at the June solstice; at Alesund (62.5 N) it
    # stays above -6 deg all night, so civil dusk and dawn never come.
    alesund = (62.4722, 6.1549)
    prog = {
        "astro_clock_time_controls": [
            {"solar_event_type": "civil_dusk", "offset": -20, "level": 100},
            {"solar_event_type": "civil_dawn", "offset": 20, "level": 0},
        ]
    }
    cfg = lighting({"p": prog}, {"count": 1}, lat=alesund[0], lon=alesund[1], tz="Europe/Oslo")
    night = date(2026, 6, 21)
    plan = plan_night(cfg, night)
    sun = plan.sun
    assert sun.polar is None and sun.sunset is not None and sun.sunrise is not None
    assert sun.civil_dusk is None and sun.civil_dawn is None
    mid = sun.solar_midnight
    assert sun.sunset < mid < sun.sunrise
    start, _ = window(night, OSLO)
    assert real(plan.zones["z"].steps) == real(
        [(start, 0), (mid - 20 * MIN, 100), (mid + 20 * MIN, 0)]
    )


def test_fixed_point_on_the_last_astro_point_does_not_relight() -> None:
    # Sunrise exactly at 05:50:00, so "sunrise + 10 -> 0" and "06:00 -> 100" coincide.
    night = date(2026, 6, 1)
    nxt = night + timedelta(days=1)
    sun = NightSun(
        night=night,
        sunset=local(night, "21:40"),
        civil_dusk=local(night, "22:20"),
        civil_dawn=local(nxt, "05:10"),
        sunrise=local(nxt, "05:50"),
        solar_midnight=local(nxt, "01:45"),
        polar=None,
    )
    prog = msgspec.convert(
        {
            "astro_clock_time_controls": [
                {"solar_event_type": "sunset", "level": 100},
                {"solar_event_type": "sunrise", "offset": 10, "level": 0},
            ],
            "fixed_time_controls": [{"time": "06:00", "level": 100}],
        },
        ControlProgram,
    )
    steps = program_steps(prog, night, sun, PARIS)
    assert steps[-1][1] == 0


# --------------------------------------------------------------------------------------------
# Levels: floor and max


def test_floor_and_max_clamp_lit_levels_only() -> None:
    prog = {
        "fixed_time_controls": [
            {"time": "18:00", "level": 10},  # under the floor: 30
            {"time": "19:00", "level": 20},  # also 30: no new step
            {"time": "20:00", "level": 100},  # over the max: 80
            {"time": "21:00", "level": 90},  # also 80
            {"time": "22:00", "level": 50},
            {"time": "23:00", "level": 0},  # off stays off
            {"time": "05:00", "level": 1},
            {"time": "07:00", "level": 0},
        ]
    }
    cfg = lighting({"p": prog}, {"count": 1, "floor": 30, "max": 80})
    night = date(2026, 1, 15)
    nxt = night + timedelta(days=1)
    start, _ = window(night, PARIS)
    assert real(plan_night(cfg, night).zones["z"].steps) == real(
        [
            (start, 0),
            (local(night, "18:00"), 30),
            (local(night, "20:00"), 80),
            (local(night, "22:00"), 50),
            (local(night, "23:00"), 0),
            (local(nxt, "05:00"), 30),
            (local(nxt, "07:00"), 0),
        ]
    )


def test_safe_default_is_clamped_too() -> None:
    cfg = lighting(
        {"p": FETE},
        {"count": 1, "floor": 40, "max": 90, "default_level": 100},
        rules=[{"start_date": "07-14", "program": "p"}],
    )
    z = plan_night(cfg, date(2026, 1, 15)).zones["z"]
    assert [lv for _, lv in z.steps] == [0, 90, 0]


# --------------------------------------------------------------------------------------------
# Energy, worked out by hand

# 18:00 -> 100 %, 22:00 -> 50 %, 02:00 -> 20 %, 06:00 -> off, on a night without DST change.
STEPPED = {
    "fixed_time_controls": [
        {"time": "18:00", "level": 100},
        {"time": "22:00", "level": 50},
        {"time": "02:00", "level": 20},
        {"time": "06:00", "level": 0},
    ]
}
NIGHT = date(2026, 1, 15)


def test_energy_linear_curve_without_ramps() -> None:
    cfg = lighting(
        {"p": STEPPED},
        {"count": 4, "rated_power": 50.0, "standby_power": 1.0, "ramp_up": 0, "ramp_down": 0},
    )
    z = plan_night(cfg, NIGHT).zones["z"]
    nxt = NIGHT + timedelta(days=1)
    start, _ = window(NIGHT, PARIS)
    assert real(z.steps) == real(
        [
            (start, 0),
            (local(NIGHT, "18:00"), 100),
            (local(NIGHT, "22:00"), 50),
            (local(nxt, "02:00"), 20),
            (local(nxt, "06:00"), 0),
        ]
    )
    # Per luminaire: 6 h standby (1 W), 4 h at 50 W, 4 h at 25 W, 4 h at 10 W, 6 h standby.
    per_luminaire = 6 * 1.0 + 4 * 50.0 + 4 * 25.0 + 4 * 10.0 + 6 * 1.0
    assert z.energy_wh == pytest.approx(4 * per_luminaire, rel=1e-9)  # 1408 Wh
    assert z.energy_wh == pytest.approx(1408.0, rel=1e-9)
    sun = night_sun(*BLOIS, PARIS, NIGHT)
    assert sun.sunset is not None and sun.sunrise is not None
    assert z.baseline_wh == pytest.approx(hours(sun.sunset, sun.sunrise) * 50.0 * 4, rel=1e-9)


def test_energy_linear_curve_with_ramps() -> None:
    cfg = lighting(
        {"p": STEPPED},
        {"count": 4, "rated_power": 50.0, "standby_power": 0.0, "ramp_up": 60, "ramp_down": 120},
    )
    z = plan_night(cfg, NIGHT).zones["z"]
    assert [lv for _, lv in z.steps] == [0, 100, 50, 20, 0]
    four_h = 4 * 3600.0
    # On a linear curve a ramp's mean power is the mean of its two ends' powers.
    joules = (
        60 * 25.0
        + (four_h - 60) * 50.0  # 0 -> 100 % over 60 s, then 50 W
        + 120 * 37.5
        + (four_h - 120) * 25.0  # 100 -> 50 % over 120 s
        + 120 * 17.5
        + (four_h - 120) * 10.0  # 50 -> 20 %
        + 120 * 5.0  # 20 % -> off over 120 s, then nothing (no standby)
    )
    assert z.energy_wh == pytest.approx(4 * joules / 3600.0, rel=1e-9)  # 1361.7 Wh
    # Independently of the steps' order: same total as the ramp-less night minus what the
    # ramps save or add (each ramp swaps the new level's power for the mean one).
    no_ramp = 4 * (4 * 50.0 + 4 * 25.0 + 4 * 10.0)
    ramp_delta = (
        4
        * (60 * (25.0 - 50.0) + 120 * (37.5 - 25.0) + 120 * (17.5 - 10.0) + 120 * (5.0 - 0.0))
        / 3600.0
    )
    assert z.energy_wh == pytest.approx(no_ramp + ramp_delta, rel=1e-9)


def test_energy_non_linear_dimming_curve() -> None:
    curve = [[0, 0], [50, 20], [100, 100]]  # 75 % -> 60 % power, 25 % -> 10 %
    prog = {
        "fixed_time_controls": [
            {"time": "18:00", "level": 75},
            {"time": "00:00", "level": 25},
            {"time": "06:00", "level": 0},
        ]
    }
    cfg = lighting(
        {"p": prog},
        {"count": 1, "rated_power": 100.0, "dimming_curve": curve, "ramp_up": 0, "ramp_down": 0},
    )
    z = plan_night(cfg, NIGHT).zones["z"]
    assert hours(z.steps[1][0], z.steps[2][0]) == 6
    assert z.energy_wh == pytest.approx(6 * 60.0 + 6 * 10.0, rel=1e-9)


def test_energy_ramp_on_a_non_linear_curve_uses_the_curve_s_mean() -> None:
    # Ramping 0 -> 100 % through (50, 20): the power's mean over the ramp is the curve's area,
    # (50 * 10 + 50 * 60) / 100 = 35 % of rated, not the 50 % a straight line gives.
    curve = [[0, 0], [50, 20], [100, 100]]
    prog = {"fixed_time_controls": [{"time": "18:00", "level": 100}, {"time": "06:00", "level": 0}]}
    cfg = lighting(
        {"p": prog},
        {"count": 1, "rated_power": 100.0, "dimming_curve": curve, "ramp_up": 600, "ramp_down": 0},
    )
    z = plan_night(cfg, NIGHT).zones["z"]
    assert z.energy_wh == pytest.approx((600 * 35.0 + (12 * 3600 - 600) * 100.0) / 3600.0, rel=1e-6)


# --------------------------------------------------------------------------------------------
# Property: a lit zone stays between its floor and its max, the steps are a clean staircase


def _etc_zone(lon: float) -> str:
    """A fixed-offset zone near the longitude's meridian, so local noon is near solar noon."""
    hours_east = round(lon / 15)
    return f"Etc/GMT{-hours_east:+d}"  # POSIX sign: Etc/GMT-2 is UTC+2


SITES = st.one_of(
    st.tuples(st.floats(-65, 65), st.floats(-180, 180)).map(
        lambda p: (p[0], p[1], _etc_zone(p[1]))
    ),
    # Real zones with DST, longitudes near them.
    st.tuples(st.floats(-65, 65), st.floats(-4, 9)).map(lambda p: (*p, "Europe/Paris")),
    st.tuples(st.floats(-65, 65), st.floats(-85, -70)).map(lambda p: (*p, "America/New_York")),
    st.tuples(st.floats(-65, 65), st.floats(140, 153)).map(lambda p: (*p, "Australia/Sydney")),
)
LEVELS = st.integers(0, 100)
ASTRO = st.fixed_dictionaries(
    {
        "solar_event_type": st.sampled_from(["sunset", "sunrise", "civil_dusk", "civil_dawn"]),
        "offset": st.integers(-180, 180),
        "level": LEVELS,
    }
)
FIXED = st.fixed_dictionaries(
    {
        "time": st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59)),
        "level": LEVELS,
    }
)
PROGRAMS = st.fixed_dictionaries(
    {
        "astro_clock_time_controls": st.lists(ASTRO, max_size=4),
        "fixed_time_controls": st.lists(FIXED, max_size=5),
    }
).filter(lambda p: p["astro_clock_time_controls"] or p["fixed_time_controls"])


@st.composite
def zones(draw: st.DrawFn) -> dict[str, Any]:
    floor = draw(st.integers(0, 100))
    return {
        "count": draw(st.integers(1, 20)),
        "floor": floor,
        "max": draw(st.integers(floor, 100)),
        "default_level": draw(st.integers(1, 100)),
        "ramp_up": draw(st.sampled_from([0, 2, 600])),
        "ramp_down": draw(st.sampled_from([0, 30, 900])),
    }


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    site=SITES,
    night=st.dates(date(2020, 1, 1), date(2035, 12, 31)),
    program=PROGRAMS,
    zone=zones(),
    matches=st.booleans(),
    instants=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=20),
)
def test_property_lit_is_between_floor_and_max_and_steps_are_a_staircase(
    site: tuple[float, float, str],
    night: date,
    program: dict[str, Any],
    zone: dict[str, Any],
    matches: bool,
    instants: list[float],
) -> None:
    lat, lon, tz = site
    # Half the nights match the rule; the others get the zone's safe default.
    rules = [{"program": "p"}] if matches else [{"start_date": "1999-01-01", "program": "p"}]
    cfg = lighting({"p": program}, zone, rules, lat=lat, lon=lon, tz=tz)
    plan = plan_night(cfg, night)
    z = plan.zones["z"]
    floor, top = max(zone["floor"], 1), zone["max"]

    def allowed(level: int) -> bool:
        return level == 0 or floor <= level <= top

    start, end = plan.start.timestamp(), plan.end.timestamp()
    times = [t.timestamp() for t, _ in z.steps]
    assert times[0] == start
    assert all(a < b for a, b in zip(times, times[1:], strict=False)), z.steps
    assert times[-1] < end, z.steps
    levels = [lv for _, lv in z.steps]
    assert all(a != b for a, b in zip(levels, levels[1:], strict=False)), z.steps
    assert all(allowed(lv) for lv in levels), (z.steps, zone)
    for frac in instants:
        when = datetime.fromtimestamp(start + frac * (end - start), UTC)
        assert allowed(z.level_at(when)), (when, z.steps)
    assert z.energy_wh >= 0 and z.baseline_wh >= 0
