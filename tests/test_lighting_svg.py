"""The night plan drawing: parsed back with ElementTree, every line checked against the plan."""

from __future__ import annotations

import copy
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from typing import Any

import pytest

from passerelle.lighting.svg import render_night_svg

SVG = "{http://www.w3.org/2000/svg}"
PLACES = 0.006  # coordinates are written with two decimals


def plan_fixture() -> dict[str, Any]:
    """The example of the plan JSON (``passerelle lighting plan --json``), near Vierzon."""
    return {
        "night": "2026-12-21",
        "location": {"lat": 47.59, "lon": 1.33, "tz": "Europe/Paris"},
        "sun": {
            "sunset": "2026-12-21T17:03:00+01:00",
            "civil_dusk": "2026-12-21T17:39:00+01:00",
            "civil_dawn": "2026-12-22T08:08:00+01:00",
            "sunrise": "2026-12-22T08:44:00+01:00",
        },
        "zones": {
            "grande-rue": {
                "steps": [
                    ["2026-12-21T16:53:00+01:00", 100],
                    ["2026-12-21T23:00:00+01:00", 50],
                    ["2026-12-22T01:00:00+01:00", 0],
                    ["2026-12-22T06:00:00+01:00", 70],
                    ["2026-12-22T08:54:00+01:00", 0],
                ],
                "energy_wh": 1234.5,
                "baseline_wh": 3000.0,
            },
            "parc": {
                "steps": [["2026-12-21T17:03:00+01:00", 100], ["2026-12-21T22:00:00+01:00", 0]],
                "energy_wh": 400.0,
                "baseline_wh": 2800.0,
            },
        },
    }


class Drawing:
    """The rendered SVG with the plot's frame read back from it."""

    def __init__(self, plan: dict[str, Any], **kwargs: Any) -> None:
        self.text = render_night_svg(plan, **kwargs)
        self.root = ET.fromstring(self.text.encode())
        plot = self.find(".//svg:rect[@id='plot']")
        self.x0, self.y0 = float(plot.get("x", "")), float(plot.get("y", ""))
        self.width, self.height = float(plot.get("width", "")), float(plot.get("height", ""))

    def find(self, path: str) -> ET.Element:
        found = self.root.find(path.replace("svg:", SVG))
        assert found is not None, path
        return found

    def all(self, path: str) -> list[ET.Element]:
        return self.root.findall(path.replace("svg:", SVG))

    def zone_points(self, name: str) -> list[tuple[float, float]]:
        lines = [p for p in self.all(".//svg:polyline") if p.get("data-zone") == name]
        assert len(lines) == 1, name
        pairs = (pair.split(",") for pair in lines[0].get("points", "").split())
        return [(float(x), float(y)) for x, y in pairs]

    def x(self, iso: str, start: str, end: str) -> float:
        """Where an instant falls, from the window's ends written independently."""
        moment, first, last = (datetime.fromisoformat(t).astimezone(UTC) for t in (iso, start, end))
        return self.x0 + self.width * (moment - first) / (last - first)

    def y(self, level: float) -> float:
        return self.y0 + self.height * (1 - level / 100)

    def texts(self, css_class: str) -> list[str]:
        return [t.text or "" for t in self.all(f".//svg:text[@class='{css_class}']")]


DEC_START, DEC_END = "2026-12-21T12:00:00+01:00", "2026-12-22T12:00:00+01:00"


def expected_steps(
    drawing: Drawing, steps: list[list[Any]], start: str, end: str, opening: float = 0
) -> list[tuple[float, float]]:
    points = [(drawing.x0, drawing.y(opening))]
    level = opening
    for iso, new in steps:
        x = drawing.x(iso, start, end)
        points += [(x, drawing.y(level)), (x, drawing.y(new))]
        level = new
    return [*points, (drawing.x0 + drawing.width, drawing.y(level))]


def assert_points(actual: list[tuple[float, float]], expected: list[tuple[float, float]]) -> None:
    assert len(actual) == len(expected), (actual, expected)
    for (ax, ay), (ex, ey) in zip(actual, expected, strict=True):
        assert ax == pytest.approx(ex, abs=PLACES) and ay == pytest.approx(ey, abs=PLACES)


def test_standalone_svg_document() -> None:
    drawing = Drawing(plan_fixture())
    assert drawing.text.startswith('<?xml version="1.0" encoding="UTF-8"?>\n<svg')
    assert drawing.root.tag == f"{SVG}svg"
    assert (
        drawing.root.get("viewBox")
        == f"0 0 {drawing.root.get('width')} {drawing.root.get('height')}"
    )
    assert "href" not in drawing.text  # nothing to fetch: it opens offline
    # The plot spans the drawing's width less the margins, levels 0 to 100 top to bottom.
    assert 0 < drawing.x0 < drawing.x0 + drawing.width < float(drawing.root.get("width", ""))


def test_one_step_line_per_zone_following_its_steps() -> None:
    plan = plan_fixture()
    drawing = Drawing(plan)
    lines = drawing.all(".//svg:polyline[@class='zone']")
    assert [line.get("data-zone") for line in lines] == ["grande-rue", "parc"]
    assert len({line.get("stroke") for line in lines}) == 2  # distinct colours
    for name, zone in plan["zones"].items():
        assert_points(
            drawing.zone_points(name), expected_steps(drawing, zone["steps"], DEC_START, DEC_END)
        )
    # Spot check by hand: 23:00 is 11 h into the 24 h window, and drops from 100 % to 50 %.
    grande_rue = drawing.zone_points("grande-rue")
    x_23h = drawing.x0 + drawing.width * 11 / 24
    assert (x_23h, drawing.y(100)) == pytest.approx(grande_rue[3], abs=PLACES)
    assert (x_23h, drawing.y(50)) == pytest.approx(grande_rue[4], abs=PLACES)


def test_sun_events_are_vertical_lines_with_their_times() -> None:
    drawing = Drawing(plan_fixture())
    lines = {
        line.get("data-event"): line for line in drawing.all(".//svg:line[@class='sun-event']")
    }
    assert set(lines) == {"sunset", "civil_dusk", "civil_dawn", "sunrise"}
    for event, iso in plan_fixture()["sun"].items():
        line = lines[event]
        x = drawing.x(iso, DEC_START, DEC_END)
        assert float(line.get("x1", "")) == pytest.approx(x, abs=PLACES)
        assert float(line.get("x2", "")) == pytest.approx(x, abs=PLACES)
    # Civil twilight is drawn lighter than sunset and sunrise.
    assert float(lines["civil_dusk"].get("stroke-opacity", "")) < float(
        lines["sunset"].get("stroke-opacity", "")
    )
    assert drawing.texts("sun-label") == [
        "sunset 17:03",
        "civil dusk 17:39",
        "civil dawn 08:08",
        "sunrise 08:44",
    ]


def test_night_is_shaded_between_sunset_and_sunrise() -> None:
    drawing = Drawing(plan_fixture())
    sun = plan_fixture()["sun"]
    for css_class, down, up in (
        ("night", "sunset", "sunrise"),
        ("deep-night", "civil_dusk", "civil_dawn"),
    ):
        (rect,) = drawing.all(f".//svg:rect[@class='{css_class}']")
        left = drawing.x(sun[down], DEC_START, DEC_END)
        right = drawing.x(sun[up], DEC_START, DEC_END)
        assert float(rect.get("x", "")) == pytest.approx(left, abs=PLACES)
        assert float(rect.get("width", "")) == pytest.approx(right - left, abs=2 * PLACES)
        assert float(rect.get("y", "")) == drawing.y0
        assert float(rect.get("height", "")) == drawing.height


def test_hour_ticks_and_level_axis() -> None:
    drawing = Drawing(plan_fixture())
    labels = drawing.texts("hour-label")
    assert labels == [f"{(12 + h) % 24:02d}:00" for h in range(25)]
    ticks = drawing.all(".//svg:line[@class='hour-tick']")
    assert [float(t.get("x1", "")) for t in ticks] == pytest.approx(
        [drawing.x0 + drawing.width * h / 24 for h in range(25)], abs=PLACES
    )
    assert drawing.texts("level-label") == ["0 %", "25 %", "50 %", "75 %", "100 %"]


def test_legend_gives_energy_against_baseline() -> None:
    drawing = Drawing(plan_fixture())
    assert drawing.texts("legend-entry") == [
        "grande-rue: 1.23 kWh used of 3.00 kWh baseline, 59 % saved",
        "parc: 0.40 kWh used of 2.80 kWh baseline, 86 % saved",
    ]
    assert drawing.texts("legend-total") == [
        "All zones: 1.63 kWh used of 5.80 kWh baseline, 72 % saved"
    ]


def test_title_default_and_given() -> None:
    default = Drawing(plan_fixture())
    assert default.find(".//svg:text[@id='title']").text == "Lighting plan, night of 2026-12-21"
    assert default.find("svg:title").text == "Lighting plan, night of 2026-12-21"
    given = Drawing(plan_fixture(), title="Vierzon <centre> & gare")
    assert given.find(".//svg:text[@id='title']").text == "Vierzon <centre> & gare"
    assert "Vierzon &lt;centre&gt; &amp; gare" in given.text


def test_zone_names_are_escaped() -> None:
    plan = plan_fixture()
    name = 'rue <des> Écoles & "parc" l\'été'
    plan["zones"] = {name: plan["zones"]["parc"], "bell\x07": plan["zones"]["grande-rue"]}
    drawing = Drawing(plan)
    assert "&lt;des&gt; Écoles &amp;" in drawing.text and "<des>" not in drawing.text
    assert [p.get("data-zone") for p in drawing.all(".//svg:polyline")] == [name, "bell\ufffd"]
    assert drawing.find(".//svg:polyline/svg:title").text == name
    assert drawing.texts("legend-entry")[0].startswith(name + ": 0.40 kWh")


def test_zone_without_steps_stays_off() -> None:
    plan = plan_fixture()
    plan["zones"] = {"impasse": {"steps": [], "energy_wh": 0, "baseline_wh": 0}}
    drawing = Drawing(plan)
    flat = [(drawing.x0, drawing.y(0)), (drawing.x0 + drawing.width, drawing.y(0))]
    assert_points(drawing.zone_points("impasse"), flat)
    assert drawing.texts("legend-entry") == [
        "impasse: 0.00 kWh used of 0.00 kWh baseline (no switching planned: off all night)"
    ]
    assert drawing.texts("legend-total") == []  # a single zone has no total line


def test_steps_outside_the_window() -> None:
    plan = plan_fixture()
    plan["zones"] = {
        "quai": {
            "steps": [
                ["2026-12-21T10:00:00+01:00", 30],  # before the night: its opening level
                ["2026-12-21T18:00:00+01:00", 100],
                ["2026-12-22T13:00:00+01:00", 0],  # after the night: not drawn
            ]
        }
    }
    drawing = Drawing(plan)
    expected = expected_steps(
        drawing, [["2026-12-21T18:00:00+01:00", 100]], DEC_START, DEC_END, opening=30
    )
    assert_points(drawing.zone_points("quai"), expected)
    assert drawing.texts("legend-entry") == ["quai"]  # no energy figures given


def test_spring_forward_night_is_23_hours_wide() -> None:
    plan = plan_fixture()
    plan["night"] = "2026-03-28"
    plan["sun"] = {
        "sunset": "2026-03-28T19:16:00+01:00",
        "civil_dusk": None,
        "civil_dawn": None,
        "sunrise": "2026-03-29T07:34:00+02:00",
    }
    steps = [["2026-03-28T19:06:00+01:00", 100], ["2026-03-29T03:00:00+02:00", 20]]
    plan["zones"] = {"grande-rue": {"steps": steps}}
    drawing = Drawing(plan)
    start, end = "2026-03-28T12:00:00+01:00", "2026-03-29T12:00:00+02:00"
    labels = drawing.texts("hour-label")
    assert len(labels) == 24 and "02:00" not in labels
    assert labels[13:15] == ["01:00", "03:00"]
    # 03:00 CEST is 14 real hours after 12:00 CET.
    x_3h = drawing.x0 + drawing.width * 14 / 23
    points = drawing.zone_points("grande-rue")
    assert points[3] == pytest.approx((x_3h, drawing.y(100)), abs=PLACES)
    assert_points(points, expected_steps(drawing, steps, start, end))
    sunrise = drawing.find(".//svg:line[@data-event='sunrise']")
    x_sunrise = drawing.x0 + drawing.width * (18 + 34 / 60) / 23  # 07:34 CEST = 18 h 34 later
    assert float(sunrise.get("x1", "")) == pytest.approx(x_sunrise, abs=PLACES)
    assert "23-hour night: clocks go forward" in (
        drawing.find(".//svg:text[@id='subtitle']").text or ""
    )


def test_fall_back_night_is_25_hours_wide() -> None:
    plan = plan_fixture()
    plan["night"] = "2026-10-24"
    plan["sun"] = {
        "sunset": "2026-10-24T18:44:00+02:00",
        "civil_dusk": "2026-10-24T19:16:00+02:00",
        "civil_dawn": "2026-10-25T06:54:00+01:00",
        "sunrise": "2026-10-25T07:26:00+01:00",
    }
    steps = [
        ["2026-10-24T18:34:00+02:00", 100],
        ["2026-10-25T02:30:00+02:00", 50],  # the first 02:30 (summer time)
        ["2026-10-25T02:30:00+01:00", 0],  # the second 02:30, an hour later
    ]
    plan["zones"] = {"grande-rue": {"steps": steps}}
    drawing = Drawing(plan)
    labels = drawing.texts("hour-label")
    assert len(labels) == 26 and labels.count("02:00") == 2
    points = drawing.zone_points("grande-rue")
    hour = drawing.width / 25
    assert points[3][0] == pytest.approx(drawing.x0 + 14.5 * hour, abs=PLACES)
    assert points[5][0] == pytest.approx(drawing.x0 + 15.5 * hour, abs=PLACES)
    assert_points(
        points,
        expected_steps(drawing, steps, "2026-10-24T12:00:00+02:00", "2026-10-25T12:00:00+01:00"),
    )
    night = drawing.find(".//svg:rect[@class='night']")
    assert float(night.get("x", "")) == pytest.approx(drawing.x0 + (6 + 44 / 60) * hour, abs=PLACES)


def test_polar_night_with_midday_twilight() -> None:
    """Tromso at midwinter: no sunset nor sunrise, civil twilight around noon only."""
    plan = {
        "night": "2026-12-21",
        "location": {"lat": 69.6492, "lon": 18.9553, "tz": "Europe/Oslo"},
        "sun": {
            "sunset": None,
            "civil_dusk": "2026-12-21T13:53:00+01:00",
            "civil_dawn": "2026-12-22T09:32:00+01:00",
            "sunrise": None,
        },
        "zones": {"storgata": {"steps": [["2026-12-21T12:00:00+01:00", 100]]}},
    }
    start, end = "2026-12-21T12:00:00+01:00", "2026-12-22T12:00:00+01:00"
    for polar in ("night", None):  # given by the plan, or worked out from the location
        if polar:
            plan["sun"]["polar"] = polar  # type: ignore[index]
        drawing = Drawing(plan)
        (night,) = drawing.all(".//svg:rect[@class='night']")
        assert float(night.get("x", "")) == drawing.x0
        assert float(night.get("width", "")) == pytest.approx(drawing.width, abs=PLACES)
        (deep,) = drawing.all(".//svg:rect[@class='deep-night']")
        assert float(deep.get("x", "")) == pytest.approx(
            drawing.x("2026-12-21T13:53:00+01:00", start, end), abs=PLACES
        )
        events = {line.get("data-event") for line in drawing.all(".//svg:line[@class='sun-event']")}
        assert events == {"civil_dusk", "civil_dawn"}
        assert "polar night" in (drawing.find(".//svg:text[@id='subtitle']").text or "")
        # Opened at 100 % at noon: the line is flat at the top from the left edge.
        assert drawing.zone_points("storgata")[0] == pytest.approx((drawing.x0, drawing.y(100)))


def test_midnight_sun_has_no_night() -> None:
    plan: dict[str, Any] = {
        "night": "2026-06-21",
        "location": {"lat": 69.6492, "lon": 18.9553, "tz": "Europe/Oslo"},
        "sun": {"sunset": None, "civil_dusk": None, "civil_dawn": None, "sunrise": None},
        "zones": {"storgata": {"steps": [], "energy_wh": 0.0, "baseline_wh": 0.0}},
    }
    drawing = Drawing(plan)
    assert drawing.all(".//svg:rect[@class='night']") == []
    assert drawing.all(".//svg:rect[@class='deep-night']") == []
    assert drawing.all(".//svg:line[@class='sun-event']") == []
    assert "midnight sun" in (drawing.find(".//svg:text[@id='subtitle']").text or "")
    # The plan's own flag wins over the location (a plan is what was decided, not recomputed).
    plan["sun"]["polar"] = "night"
    assert len(Drawing(plan).all(".//svg:rect[@class='night']")) == 1
    plan["night"] = "2026-12-21"  # polar night at Tromso, but the plan says otherwise
    plan["sun"]["polar"] = "day"
    assert Drawing(plan).all(".//svg:rect[@class='night']") == []
    del plan["sun"]["polar"]
    assert len(Drawing(plan).all(".//svg:rect[@class='night']")) == 1


def test_no_zone_at_all() -> None:
    plan = plan_fixture()
    plan["zones"] = {}
    drawing = Drawing(plan)
    assert drawing.all(".//svg:polyline") == []
    assert "No lighting zone in this plan." in drawing.text


def _broken(change: Any) -> dict[str, Any]:
    plan = copy.deepcopy(plan_fixture())
    change(plan)
    return plan


def _set_steps(steps: Any) -> Any:
    return lambda p: p["zones"]["parc"].__setitem__("steps", steps)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p: p.pop("zones"), "plan: missing 'zones'"),
        (lambda p: p.__setitem__("night", "21/12/2026"), "plan.night: '21/12/2026' is not a date"),
        (lambda p: p["location"].__setitem__("lat", 95), "plan.location.lat: 95 is outside"),
        (lambda p: p["location"].__setitem__("lon", "east"), "plan.location.lon: 'east' is not"),
        (lambda p: p["location"].__setitem__("tz", "Paris"), "plan.location.tz: unknown time zone"),
        (lambda p: p["sun"].__setitem__("sunset", "17h03"), "plan.sun.sunset: '17h03' is not"),
        (lambda p: p["sun"].__setitem__("polar", "dusk"), "plan.sun.polar: 'dusk'"),
        (lambda p: p.__setitem__("zones", [1]), "plan.zones: expected an object"),
        (
            _set_steps([["2026-12-21T17:03:00+01:00", 120]]),
            "plan.zones['parc'].steps[0]: level 120 is outside 0..100 %",
        ),
        (_set_steps([["2026-12-21T17:03:00", 100]]), "steps[0]: '2026-12-21T17:03:00' has no UTC"),
        (
            _set_steps([["2026-12-21T17:03:00+01:00"]]),
            "plan.zones['parc'].steps[0]: expected [time",
        ),
        (_set_steps([["2026-12-21T17:03:00+01:00", True]]), "steps[0]: True is not a number"),
        (
            _set_steps([["2026-12-21T18:00:00+01:00", 100], ["2026-12-21T17:00:00+01:00", 0]]),
            "steps[1]: 2026-12-21T17:00:00+01:00 is earlier than the step before it",
        ),
        (
            lambda p: p["zones"]["parc"].__setitem__("energy_wh", -5),
            "plan.zones['parc'].energy_wh: -5 Wh is negative",
        ),
    ],
)
def test_bad_plan_names_the_field(change: Any, message: str) -> None:
    with pytest.raises(ValueError) as error:
        render_night_svg(_broken(change))
    assert message in str(error.value)
