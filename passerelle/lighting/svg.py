"""One night's lighting plan drawn as a standalone SVG, for an installer checking a cabinet or an
elected official weighing a switch-off policy.

The input is the JSON form of a night plan, as ``passerelle lighting plan --json`` prints it::

    {"night": "2026-12-21",
     "location": {"lat": 47.59, "lon": 1.33, "tz": "Europe/Paris"},
     "sun": {"sunset": "2026-12-21T17:03:00+01:00", "civil_dusk": ..., "civil_dawn": ...,
             "sunrise": ...},                       # each may be null
     "zones": {"grande-rue": {"steps": [["2026-12-21T16:53:00+01:00", 100], ...],
                              "energy_wh": 1234.5, "baseline_wh": 3000.0}}}

A step is a change point: its level (percent) holds until the next step. Before the first step
the level is 0 (the previous night's end is not known). The drawing spans the whole night,
12:00 to 12:00 local time, so a night when the clocks change is 23 or 25 hours wide; hour ticks
are labelled with the local wall clock (02:00 appears twice in October, never in March).

Only the standard library is used: the XML is built with ElementTree, which escapes zone names.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from .astro import CIVIL_DEPRESSION, EVENTS, is_dark, night_window, site_zone

SVG_NS = "http://www.w3.org/2000/svg"

WIDTH = 960
PLOT_X = 64
PLOT_Y = 84
PLOT_WIDTH = WIDTH - PLOT_X - 24
PLOT_HEIGHT = 260
LEGEND_Y = PLOT_Y + PLOT_HEIGHT + 64
LEGEND_ROW = 20

# Okabe-Ito colours, readable by colour-blind viewers; amber is kept for the sun.
ZONE_COLOURS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#000000", "#882255")
ZONE_DASHES = ("", "8 4", "2 3", "8 3 2 3")
SUN_COLOUR = "#B8860B"
NIGHT_FILL = "#1F2A48"
_SHADE = {"fill-opacity": "0.13"}

# Characters XML 1.0 cannot carry at all, even escaped.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


@dataclass(frozen=True, slots=True)
class _Zone:
    name: str
    steps: list[tuple[datetime, float]]
    energy_wh: float | None
    baseline_wh: float | None


@dataclass(frozen=True, slots=True)
class _Plan:
    night: date
    latitude: float
    longitude: float
    zone: ZoneInfo
    sun: dict[str, datetime | None]
    polar: str | None
    zones: list[_Zone]


def render_night_svg(plan: Mapping[str, Any], *, title: str | None = None) -> str:
    """The plan as an SVG document (a string starting with the XML declaration).

    Raises ValueError naming the offending field (``plan.zones['x'].steps[2]``) when the plan
    is not in the shape ``passerelle lighting plan --json`` prints."""
    parsed = _parse(plan)
    start, end = night_window(parsed.night, parsed.zone)
    chart = _Chart(start.astimezone(UTC), end.astimezone(UTC), parsed.zone)

    # One row per zone (or one saying there is none), the total, the shading key.
    rows = max(len(parsed.zones), 1) + (1 if _total(parsed.zones) else 0) + 1
    height = LEGEND_Y + rows * LEGEND_ROW
    root = ET.Element(
        "svg",
        {
            "xmlns": SVG_NS,
            "version": "1.1",
            "width": str(WIDTH),
            "height": str(height),
            "viewBox": f"0 0 {WIDTH} {height}",
            "font-family": "DejaVu Sans, Arial, sans-serif",
            "font-size": "12",
        },
    )
    heading = _xml_text(title) if title is not None else f"Lighting plan, night of {parsed.night}"
    _sub(root, "title", text=heading)
    _sub(root, "rect", width=WIDTH, height=height, fill="white")
    _sub(root, "text", id="title", x=PLOT_X, y=26, text=heading, **{"font-size": "18"})
    _sub(root, "text", id="subtitle", x=PLOT_X, y=46, text=_subtitle(parsed, chart), fill="#444")

    _draw_night(root, chart, parsed)
    _draw_axes(root, chart)
    _draw_sun(root, chart, parsed)
    _draw_zones(root, chart, parsed.zones)
    _draw_legend(root, parsed.zones)

    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


class _Chart:
    """Maps instants and levels to SVG coordinates; the x axis is elapsed real time."""

    def __init__(self, start: datetime, end: datetime, zone: ZoneInfo) -> None:
        self.start = start
        self.end = end
        self.zone = zone
        self.seconds = (end - start).total_seconds()

    def x(self, moment: datetime) -> float:
        elapsed = (moment.astimezone(UTC) - self.start).total_seconds()
        return PLOT_X + PLOT_WIDTH * elapsed / self.seconds

    @staticmethod
    def y(level: float) -> float:
        return PLOT_Y + PLOT_HEIGHT * (1 - level / 100)

    def inside(self, moment: datetime) -> bool:
        return self.start <= moment < self.end

    def clock(self, moment: datetime) -> str:
        return moment.astimezone(self.zone).strftime("%H:%M")


def _draw_night(root: ET.Element, chart: _Chart, plan: _Plan) -> None:
    group = _sub(root, "g", id="night")
    sun = plan.sun
    layers = (
        ("night", sun["sunset"], sun["sunrise"], None),
        ("deep-night", sun["civil_dusk"], sun["civil_dawn"], CIVIL_DEPRESSION),
    )
    for name, down, up, depression in layers:
        for begin, finish in _dark_spans(chart, plan, down, up, depression):
            _sub(
                group,
                "rect",
                **{"class": name},
                **_SHADE,
                x=_n(chart.x(begin)),
                y=PLOT_Y,
                width=_n(chart.x(finish) - chart.x(begin)),
                height=PLOT_HEIGHT,
                fill=NIGHT_FILL,
            )


def _dark_spans(
    chart: _Chart,
    plan: _Plan,
    down: datetime | None,
    up: datetime | None,
    depression: float | None,
) -> list[tuple[datetime, datetime]]:
    """Where the sun is below a level, from the instants it goes down and comes up."""
    if down is not None and up is not None:
        spans = [(down, up)] if down < up else [(chart.start, up), (down, chart.end)]
    elif down is not None:
        spans = [(down, chart.end)]
    elif up is not None:
        spans = [(chart.start, up)]
    elif _below_all_night(chart, plan, depression):
        spans = [(chart.start, chart.end)]
    else:
        spans = []
    clipped = [(max(a, chart.start), min(b, chart.end)) for a, b in spans]
    return [(a, b) for a, b in clipped if a < b]


def _below_all_night(chart: _Chart, plan: _Plan, depression: float | None) -> bool:
    """With neither event of a pair in the window, the sun stays on one side of that level all
    night: the plan's polar flag, or else the sun's elevation at any instant, tells which."""
    if depression is None:
        if plan.polar is not None:
            return plan.polar == "night"
        return is_dark(plan.latitude, plan.longitude, chart.start)
    return is_dark(plan.latitude, plan.longitude, chart.start, depression)


def _draw_axes(root: ET.Element, chart: _Chart) -> None:
    group = _sub(root, "g", id="axes", stroke="#999", **{"font-size": "10"})
    bottom = PLOT_Y + PLOT_HEIGHT
    for level in (0, 25, 50, 75, 100):
        y = _n(chart.y(level))
        _sub(group, "line", x1=PLOT_X, x2=PLOT_X + PLOT_WIDTH, y1=y, y2=y, stroke="#e4e4e4")
        _sub(
            group,
            "text",
            **{"class": "level-label", "text-anchor": "end"},
            x=PLOT_X - 6,
            y=_n(chart.y(level) + 3),
            stroke="none",
            fill="#333",
            text=f"{level} %",
        )
    hours = round(chart.seconds / 3600)
    for hour in range(hours + 1):
        moment = chart.start + timedelta(hours=hour)
        if moment > chart.end:
            break
        x = _n(chart.x(moment))
        _sub(group, "line", x1=x, x2=x, y1=PLOT_Y, y2=bottom, stroke="#f0f0f0")
        _sub(group, "line", **{"class": "hour-tick"}, x1=x, x2=x, y1=bottom, y2=bottom + 5)
        _sub(
            group,
            "text",
            **{"class": "hour-label", "text-anchor": "middle"},
            x=x,
            y=bottom + 17,
            stroke="none",
            fill="#333",
            text=chart.clock(moment),
        )
    _sub(
        group,
        "rect",
        id="plot",
        x=PLOT_X,
        y=PLOT_Y,
        width=PLOT_WIDTH,
        height=PLOT_HEIGHT,
        fill="none",
    )
    _sub(
        group,
        "text",
        **{"text-anchor": "middle", "font-size": "11"},
        x=PLOT_X + PLOT_WIDTH // 2,
        y=bottom + 36,
        stroke="none",
        fill="#333",
        text=f"Local time ({chart.zone.key})",
    )
    label_x, label_y = 16, PLOT_Y + PLOT_HEIGHT // 2
    _sub(
        group,
        "text",
        **{"text-anchor": "middle", "font-size": "11"},
        x=label_x,
        y=label_y,
        transform=f"rotate(-90 {label_x} {label_y})",
        stroke="none",
        fill="#333",
        text="Light level",
    )


# Label, line width, dashes, opacity, and which side of its line the label sits on: the two
# evening events face away from each other, as do the two morning ones, so that their labels
# share one row above the plot without overlapping.
_EVENT_STYLE = {
    "sunset": ("sunset", "1.5", "6 3", "1", "end"),
    "civil_dusk": ("civil dusk", "1", "2 3", "0.7", "start"),
    "civil_dawn": ("civil dawn", "1", "2 3", "0.7", "end"),
    "sunrise": ("sunrise", "1.5", "6 3", "1", "start"),
}


def _draw_sun(root: ET.Element, chart: _Chart, plan: _Plan) -> None:
    group = _sub(root, "g", id="sun", **{"font-size": "10"})
    for event in EVENTS:
        moment = plan.sun[event]
        if moment is None or not chart.inside(moment):
            continue
        label, width, dashes, opacity, anchor = _EVENT_STYLE[event]
        x = chart.x(moment)
        _sub(
            group,
            "line",
            **{
                "class": "sun-event",
                "data-event": event,
                "stroke-width": width,
                "stroke-dasharray": dashes,
                "stroke-opacity": opacity,
            },
            x1=_n(x),
            x2=_n(x),
            y1=PLOT_Y - 14,
            y2=PLOT_Y + PLOT_HEIGHT,
            stroke=SUN_COLOUR,
        )
        _sub(
            group,
            "text",
            **{
                "class": "sun-label",
                "data-event": event,
                "text-anchor": anchor,
                "fill-opacity": opacity,
            },
            x=_n(x - 3 if anchor == "end" else x + 3),
            y=PLOT_Y - 6,
            fill=SUN_COLOUR,
            text=f"{label} {chart.clock(moment)}",
        )


def _draw_zones(root: ET.Element, chart: _Chart, zones: list[_Zone]) -> None:
    group = _sub(root, "g", id="zones", fill="none", **{"stroke-linejoin": "round"})
    count = len(zones)
    for index, zone in enumerate(zones):
        colour, dashes = _style(index)
        # Earlier zones are drawn wider, so that zones sharing a level stay visible as stripes.
        width = 2.0 + 1.5 * min(count - 1 - index, 4)
        points = _step_points(chart, zone.steps)
        line = _sub(
            group,
            "polyline",
            **{"class": "zone", "data-zone": _xml_text(zone.name), "stroke-width": _n(width)},
            points=" ".join(f"{_n(x)},{_n(y)}" for x, y in points),
            stroke=colour,
        )
        if dashes:
            line.set("stroke-dasharray", dashes)
        _sub(line, "title", text=_xml_text(zone.name))


def _step_points(chart: _Chart, steps: list[tuple[datetime, float]]) -> list[tuple[float, float]]:
    """The step line: flat between change points, vertical at each one."""
    level = 0.0
    changes: list[tuple[datetime, float]] = []
    for moment, new in steps:
        if moment <= chart.start:
            level = new  # a change before the night began sets the level it opens with
        elif moment < chart.end:
            changes.append((moment, new))
    points = [(chart.x(chart.start), chart.y(level))]
    for moment, new in changes:
        x = chart.x(moment)
        points += [(x, chart.y(level)), (x, chart.y(new))]
        level = new
    points.append((chart.x(chart.end), chart.y(level)))
    return points


def _draw_legend(root: ET.Element, zones: list[_Zone]) -> None:
    group = _sub(root, "g", id="legend")
    y = LEGEND_Y
    if not zones:
        _sub(group, "text", x=PLOT_X, y=y, fill="#444", text="No lighting zone in this plan.")
        y += LEGEND_ROW
    for index, zone in enumerate(zones):
        colour, dashes = _style(index)
        swatch = _sub(
            group,
            "line",
            x1=PLOT_X,
            x2=PLOT_X + 28,
            y1=y - 4,
            y2=y - 4,
            stroke=colour,
            **{"stroke-width": "3"},
        )
        if dashes:
            swatch.set("stroke-dasharray", dashes)
        text = _xml_text(zone.name)
        energy = _energy_text(zone.energy_wh, zone.baseline_wh)
        if energy:
            text += f": {energy}"
        if not zone.steps:
            text += " (no switching planned: off all night)"
        _sub(group, "text", **{"class": "legend-entry"}, x=PLOT_X + 36, y=y, text=text)
        y += LEGEND_ROW
    total = _total(zones)
    if total:
        _sub(
            group,
            "text",
            **{"class": "legend-total", "font-weight": "bold"},
            x=PLOT_X + 36,
            y=y,
            text=f"All zones: {_energy_text(*total)}",
        )
        y += LEGEND_ROW
    _sub(group, "rect", x=PLOT_X, y=y - 12, width=28, height=14, fill=NIGHT_FILL, **_SHADE)
    _sub(
        group,
        "text",
        x=PLOT_X + 36,
        y=y,
        fill="#444",
        text="shaded: sun below the horizon; darker: more than 6\u00b0 below (civil dusk to dawn)",
    )


def _total(zones: list[_Zone]) -> tuple[float, float] | None:
    if len(zones) < 2 or any(z.energy_wh is None or z.baseline_wh is None for z in zones):
        return None
    return (
        sum(z.energy_wh for z in zones if z.energy_wh is not None),
        sum(z.baseline_wh for z in zones if z.baseline_wh is not None),
    )


def _energy_text(energy_wh: float | None, baseline_wh: float | None) -> str:
    if energy_wh is None:
        return ""
    if baseline_wh is None:
        return f"{_kwh(energy_wh)} used"
    text = f"{_kwh(energy_wh)} used of {_kwh(baseline_wh)} baseline"
    if baseline_wh > 0:
        saved = round(100 * (1 - energy_wh / baseline_wh))
        text += f", {saved} % saved" if saved >= 0 else f", {-saved} % more than baseline"
    return text


def _kwh(wh: float) -> str:
    return f"{wh / 1000:.2f} kWh" if wh >= 100 or wh == 0 else f"{wh / 1000:.3f} kWh"


def _subtitle(plan: _Plan, chart: _Chart) -> str:
    ns = "N" if plan.latitude >= 0 else "S"
    ew = "E" if plan.longitude >= 0 else "W"
    parts = [
        f"{abs(plan.latitude):.2f}\u00b0{ns} {abs(plan.longitude):.2f}\u00b0{ew}",
        f"times in {plan.zone.key}",
    ]
    hours = round(chart.seconds / 3600)
    if hours < 24:
        parts.append(f"{hours}-hour night: clocks go forward")
    elif hours > 24:
        parts.append(f"{hours}-hour night: clocks go back")
    if plan.sun["sunset"] is None and plan.sun["sunrise"] is None:
        if _below_all_night(chart, plan, None):
            parts.append("polar night: the sun stays below the horizon")
        else:
            parts.append("midnight sun: the sun stays above the horizon")
    return " \u2014 ".join(parts)


def _style(index: int) -> tuple[str, str]:
    colour = ZONE_COLOURS[index % len(ZONE_COLOURS)]
    dashes = ZONE_DASHES[(index // len(ZONE_COLOURS)) % len(ZONE_DASHES)]
    return colour, dashes


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attributes: object) -> ET.Element:
    element = ET.SubElement(parent, tag, {k: str(v) for k, v in attributes.items()})
    if text is not None:
        element.text = text
    return element


def _n(value: float) -> str:
    """A coordinate with at most two decimals and no trailing zeros."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("\ufffd", text)


# --- Reading the plan --------------------------------------------------------------------------


def _parse(plan: Mapping[str, Any]) -> _Plan:
    if not isinstance(plan, Mapping):
        raise ValueError(f"plan: expected a JSON object, got {type(plan).__name__}")
    night = _date(_field(plan, "night", "plan"), "plan.night")
    location = _field(plan, "location", "plan")
    if not isinstance(location, Mapping):
        raise ValueError("plan.location: expected an object with lat, lon and tz")
    latitude = _degrees(_field(location, "lat", "plan.location"), "plan.location.lat", 90.0)
    longitude = _degrees(_field(location, "lon", "plan.location"), "plan.location.lon", 180.0)
    try:
        zone = site_zone(_field(location, "tz", "plan.location"))
    except ValueError as exc:
        raise ValueError(f"plan.location.tz: {exc}") from exc

    raw_sun = plan.get("sun") or {}
    if not isinstance(raw_sun, Mapping):
        raise ValueError("plan.sun: expected an object of solar event times")
    sun = {e: _instant_or_none(raw_sun.get(e), f"plan.sun.{e}") for e in EVENTS}
    polar = raw_sun.get("polar")
    if polar not in (None, "day", "night"):
        raise ValueError(f"plan.sun.polar: {polar!r} is not 'day', 'night' or null")

    raw_zones = _field(plan, "zones", "plan")
    if not isinstance(raw_zones, Mapping):
        raise ValueError("plan.zones: expected an object mapping zone names to their plans")
    zones = [_zone(str(name), body) for name, body in raw_zones.items()]
    return _Plan(night, latitude, longitude, zone, sun, polar, zones)


def _zone(name: str, body: Any) -> _Zone:
    where = f"plan.zones[{name!r}]"
    if not isinstance(body, Mapping):
        raise ValueError(f"{where}: expected an object with steps")
    raw_steps = body.get("steps") or []
    if not isinstance(raw_steps, Sequence) or isinstance(raw_steps, str):
        raise ValueError(f"{where}.steps: expected a list of [time, level] pairs")
    steps: list[tuple[datetime, float]] = []
    for index, step in enumerate(raw_steps):
        here = f"{where}.steps[{index}]"
        if not isinstance(step, Sequence) or isinstance(step, str) or len(step) != 2:
            raise ValueError(f"{here}: expected [time, level], got {step!r}")
        moment = _instant(step[0], here)
        level = _number(step[1], here)
        if not 0 <= level <= 100:
            raise ValueError(f"{here}: level {step[1]!r} is outside 0..100 %")
        if steps and moment < steps[-1][0]:
            raise ValueError(f"{here}: {step[0]} is earlier than the step before it")
        steps.append((moment, level))
    energy = _energy(body.get("energy_wh"), f"{where}.energy_wh")
    baseline = _energy(body.get("baseline_wh"), f"{where}.baseline_wh")
    return _Zone(name=name, steps=steps, energy_wh=energy, baseline_wh=baseline)


def _energy(value: Any, where: str) -> float | None:
    if value is None:
        return None
    wh = _number(value, where)
    if wh < 0:
        raise ValueError(f"{where}: {value!r} Wh is negative")
    return wh


def _field(mapping: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in mapping:
        raise ValueError(f"{where}: missing {key!r}")
    return mapping[key]


def _date(value: Any, where: str) -> date:
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {value!r} is not a date like 2026-12-21") from exc


def _instant(value: Any, where: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {value!r} is not an ISO 8601 time") from exc
    if moment.utcoffset() is None:
        raise ValueError(f"{where}: {value!r} has no UTC offset")
    return moment


def _instant_or_none(value: Any, where: str) -> datetime | None:
    return None if value is None else _instant(value, where)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"{where}: {value!r} is not a number")
    return float(value)


def _degrees(value: Any, where: str, limit: float) -> float:
    degrees = _number(value, where)
    if not -limit <= degrees <= limit:
        raise ValueError(f"{where}: {value!r} is outside -{limit:g}..{limit:g} degrees")
    return degrees
