"""The ``[lighting]`` section: programs, calendars and zones, in TALQ's vocabulary.

Example (``examples/street.toml`` is a whole documented street)::

    [lighting]
    latitude = 47.5861
    longitude = 1.3359
    timezone = "Europe/Paris"

    [lighting.programs.coeur-de-nuit]                  # a TALQ ControlProgram
    astro_clock_time_controls = [
      { solar_event_type = "sunset", offset = -10, level = 100 },
      { solar_event_type = "sunrise", offset = 10, level = 0 },
    ]
    fixed_time_controls = [
      { time = "23:00", level = 50 },
      { time = "01:00", level = 0 },                   # switch-off "en coeur de nuit"
      { time = "05:30", level = 50 },
    ]
    active_periods = [{ type = "sensor", start = "01:00", end = "05:30" }]

    [[lighting.calendars.rue.rules]]                   # first matching CalendarRule wins
    name = "fete-nationale"
    start_date = "07-14"                               # yearly month-day (or YYYY-MM-DD)
    program = "all-night"

    [[lighting.calendars.rue.rules]]
    program = "coeur-de-nuit"                          # no condition: every night

    [lighting.zones.grande-rue]
    calendar = "rue"
    luminaires = ["lum-01", "lum-02", "lum-03"]        # [lorawan.devices], in street order
    multicast = "grande-rue"                           # a [[lorawan.multicast]] group
    floor = 20                                         # never under 20 % while lit
    default_level = 60                                 # safe level (defaultLightState)
    rated_power = 40.0                                 # W per luminaire at 100 %

Levels are percent of full light output. A night ``D`` runs from noon on ``D`` to noon on
``D + 1`` (TALQ's ``dayOffset``), so one calendar rule governs a whole night.
"""

from __future__ import annotations

import re
from datetime import date, time
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from msgspec import Meta

from ..schema import PositiveFloat, Section

Level = Annotated[int, Meta(ge=0, le=100)]
SolarEvent = Literal["sunset", "sunrise", "civil_dusk", "civil_dawn"]
SOLAR_EVENTS: tuple[str, ...] = ("sunset", "sunrise", "civil_dusk", "civil_dawn")
ClockTime = Annotated[
    str,
    Meta(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$", extra={"hint": "a local time HH:MM"}),
]
Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Offset = Annotated[int, Meta(ge=-720, le=720)]  # minutes


class FixedTimeControl(Section, frozen=True):
    """TALQ ``fixedTimeControls``: at a local time, go to a level."""

    time: ClockTime
    level: Level


class AstroClockTimeControl(Section, frozen=True, kw_only=True):
    """TALQ ``astroClockTimeControls``: at a solar event plus an offset, go to a level."""

    solar_event_type: SolarEvent
    offset: Offset = 0
    level: Level


class ActivePeriod(Section, frozen=True, kw_only=True):
    """TALQ ``activePeriods`` of type Sensor: when presence sensors may raise the level.

    ``start`` and ``end`` are ``HH:MM`` or a solar event with an optional offset in
    minutes: ``sunset``, ``civil_dawn+10``, ``sunrise-30``.
    """

    type: Literal["sensor"] = "sensor"
    start: str
    end: str


class ControlProgram(Section, frozen=True):
    fixed_time_controls: list[FixedTimeControl] = msgspec.field(default_factory=list)
    astro_clock_time_controls: list[AstroClockTimeControl] = msgspec.field(default_factory=list)
    active_periods: list[ActivePeriod] = msgspec.field(default_factory=list)


class CalendarRule(Section, frozen=True, kw_only=True):
    """One rule of a TALQ ``Calendar``: every condition given must hold for the night."""

    program: str
    name: str | None = None
    # YYYY-MM-DD (one date or range) or MM-DD (every year; a range may wrap New Year)
    start_date: str | None = None
    end_date: str | None = None
    weekdays: list[Weekday] = msgspec.field(default_factory=list)


class Calendar(Section, frozen=True):
    rules: list[CalendarRule] = msgspec.field(default_factory=list)


class Presence(Section, frozen=True):
    boost: Level = 100
    hold: PositiveFloat = 120.0  # seconds at the boost level after the last detection


class PresenceSensor(Section, frozen=True, kw_only=True):
    """A motion input: a LoRaWAN sensor or a GPIO input, by its records' device and name."""

    device: str
    name: str = "presence"
    zone: str
    # Raise only the luminaires within `spread` of `near` along the street (else the zone).
    near: str | None = None
    spread: Annotated[int, Meta(ge=0, le=50)] = 1
    also: list[str] = msgspec.field(default_factory=list)  # neighbouring zones raised too


class Ambient(Section, frozen=True, kw_only=True):
    """The cabinet's light sensor: a dark daytime (storm) forces the lights on."""

    device: str
    name: str = "illuminance"
    on_below: Annotated[float, Meta(ge=0)] = 20.0  # lux
    off_above: Annotated[float, Meta(ge=0)] = 50.0
    hold: Annotated[float, Meta(ge=0)] = 300.0  # seconds lit at least, so clouds do not flicker


class Meter(Section, frozen=True, kw_only=True):
    """The cabinet energy meter's cumulative import register (a Modbus source)."""

    device: str
    name: str = "energy-import"
    unit: Literal["kWh", "Wh"] = "kWh"


class Zone(Section, frozen=True, kw_only=True):
    calendar: str
    luminaires: list[str] = msgspec.field(default_factory=list)  # LoRaWAN class C controllers
    multicast: str | None = None
    relay: str | None = None  # "<gpio source>/<relay>": the zone's contactor
    count: Annotated[int, Meta(ge=0)] = 0  # luminaires on the contactor without a controller
    floor: Level = 0
    max: Level = 100
    default_level: Level = 100
    ramp_up: Annotated[float, Meta(ge=0, le=3600)] = 2.0  # seconds
    ramp_down: Annotated[float, Meta(ge=0, le=3600)] = 30.0
    rated_power: PositiveFloat = 50.0  # W per luminaire at 100 %
    standby_power: Annotated[float, Meta(ge=0)] = 0.0  # W per luminaire while off
    # (level %, power % of rated) points, linear in between; LED drivers are not linear
    dimming_curve: list[tuple[Level, Annotated[float, Meta(ge=0, le=100)]]] = msgspec.field(
        default_factory=lambda: [(0, 0.0), (100, 100.0)]
    )
    presence: Presence | None = None

    @property
    def size(self) -> int:
        return len(self.luminaires) + self.count


class LightingConfig(Section, frozen=True, kw_only=True):
    latitude: Annotated[float, Meta(ge=-90, le=90)]
    longitude: Annotated[float, Meta(ge=-180, le=180)]
    timezone: str = "Europe/Paris"
    programs: dict[str, ControlProgram] = msgspec.field(default_factory=dict)
    calendars: dict[str, Calendar] = msgspec.field(default_factory=dict)
    zones: dict[str, Zone] = msgspec.field(default_factory=dict)
    presence_sensors: list[PresenceSensor] = msgspec.field(default_factory=list)
    ambient: Ambient | None = None
    meter: Meter | None = None
    tick: Annotated[float, Meta(ge=0.1, le=300)] = 10.0  # seconds between evaluations
    confirm_timeout: Annotated[float, Meta(ge=1, le=3600)] = 60.0
    # The controllers answer a multicast within this many seconds (each after a random delay,
    # so a hundred answers do not collide): the engine waits this long more for them.
    reply_window: Annotated[float, Meta(ge=0, le=600)] = 30.0
    retries: Annotated[int, Meta(ge=0, le=10)] = 3
    presence_window: Annotated[int, Meta(ge=10, le=86400)] = 900  # counts sent per window
    # true: the schedule waits for NTP (or an RTC) before trusting the clock; until then the
    # zones are at their safe default. false only for labs and tests without NTP.
    clock_check: bool = True

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# --------------------------------------------------------------------------------------------
# Parsing the small text forms, shared by the checker and the evaluator

_BOUND = re.compile(r"^(sunset|sunrise|civil_dusk|civil_dawn)\s*(?:([+-])\s*(\d{1,3}))?$")


def parse_bound(text: str) -> tuple[str, int]:
    """``"23:00"`` -> ("time", minutes after midnight); ``"sunset-15"`` -> ("sunset", -15)."""
    s = text.strip()
    if re.fullmatch(r"([01][0-9]|2[0-3]):[0-5][0-9]", s):
        return "time", int(s[:2]) * 60 + int(s[3:])
    m = _BOUND.match(s)
    if m is None:
        raise ValueError(
            f"{text!r} is neither HH:MM nor a solar event with an offset "
            "(sunset, sunrise, civil_dusk, civil_dawn, e.g. 'sunset+30')"
        )
    minutes = int(m.group(3) or 0)
    if minutes > 720:
        raise ValueError(f"{text!r}: offset over 720 minutes")
    return m.group(1), -minutes if m.group(2) == "-" else minutes


def parse_day(text: str) -> date | tuple[int, int]:
    """``YYYY-MM-DD`` -> a date; ``MM-DD`` -> (month, day) for a yearly rule."""
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return date.fromisoformat(text)
    if re.fullmatch(r"\d{2}-\d{2}", text):
        month, day = int(text[:2]), int(text[3:])
        date(2000, month, day)  # a leap year, so 02-29 is accepted; raises for 02-30
        return month, day
    raise ValueError(f"{text!r} is neither YYYY-MM-DD nor MM-DD")


def clock_time(text: str) -> time:
    return time(int(text[:2]), int(text[3:]))


# --------------------------------------------------------------------------------------------
# The semantic pass (on the cleaned dict, like every section's check)


def check(
    c: dict[str, Any], path: str, errors: list[tuple[str, str]], known: dict[str, Any]
) -> None:
    """Cross references and meaning. ``known`` holds what other sections declare:
    ``devices`` (LoRaWAN name -> class), ``multicast`` (group -> member names),
    ``relays`` ("source/relay" names), ``sources`` (source names)."""
    from ..model import check_name

    tz = c.get("timezone")
    if isinstance(tz, str):
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            errors.append((f"{path}.timezone", f"unknown time zone {tz!r} (e.g. 'Europe/Paris')"))
    programs = c.get("programs") or {}
    calendars = c.get("calendars") or {}
    zones = c.get("zones") or {}
    for name, prog in programs.items():
        _check_program(prog, f"{path}.programs.{name}", errors)
    for name, cal in calendars.items():
        for i, rule in enumerate(cal.get("rules") or ()):
            if rule is None:
                continue
            where = f"{path}.calendars.{name}.rules[{i}]"
            if "program" in rule and rule["program"] not in programs:
                errors.append((f"{where}.program", _unknown("program", rule["program"], programs)))
            _check_dates(rule, where, errors)
        if not cal.get("rules"):
            errors.append((f"{path}.calendars.{name}.rules", "a calendar needs at least one rule"))
    devices: dict[str, str] = known.get("devices", {})
    groups: dict[str, list[str]] = known.get("multicast", {})
    relays: set[str] = known.get("relays", set())
    owner: dict[str, str] = {}
    for name, zone in zones.items():
        where = f"{path}.zones.{name}"
        try:
            check_name(name)
        except ValueError as e:
            errors.append((where, str(e)))
        if "calendar" in zone and zone["calendar"] not in calendars:
            errors.append((f"{where}.calendar", _unknown("calendar", zone["calendar"], calendars)))
        for i, lum in enumerate(zone.get("luminaires") or ()):
            if lum not in devices:
                errors.append((f"{where}.luminaires[{i}]",
                               f"{lum!r} is not a [[lorawan.devices]] name"))
            elif devices[lum] != "C":
                errors.append((f"{where}.luminaires[{i}]",
                               f"{lum!r} is class {devices[lum]}: a luminaire controller must "
                               "be class C to obey now"))
            if lum in owner:
                errors.append((f"{where}.luminaires[{i}]", f"{lum!r} is already in zone "
                                                            f"{owner[lum]!r}"))
            owner.setdefault(lum, name)
        group = zone.get("multicast")
        if group is not None:
            if group not in groups:
                errors.append((f"{where}.multicast", f"{group!r} is not a [[lorawan.multicast]]"
                                                     " group"))
            else:
                missing = sorted(set(zone.get("luminaires") or ()) - set(groups[group]))
                if missing:
                    errors.append((f"{where}.multicast", f"group {group!r} lacks luminaires of "
                                                         f"the zone: {', '.join(missing)}"))
        relay = zone.get("relay")
        if relay is not None and relay not in relays:
            shown = ", ".join(sorted(relays)) or "none configured"
            errors.append((f"{where}.relay", f"{relay!r} is not a '<gpio source>/<relay>' "
                                             f"(known: {shown})"))
        if not zone.get("luminaires") and not zone.get("count"):
            errors.append((where, "a zone needs luminaires (controllers) or a count (on a relay)"))
        if zone.get("count") and relay is None:
            errors.append((f"{where}.count", "luminaires without a controller need a relay"))
        if zone.get("floor", 0) > zone.get("max", 100):
            errors.append((f"{where}.floor", "above max"))
        default = zone.get("default_level", 100)
        if 0 < default < zone.get("floor", 0):
            errors.append((f"{where}.default_level", "under the zone's floor: the safe level "
                                                      "must be a lit level the zone allows"))
        if default == 0:
            errors.append((f"{where}.default_level", "the safe default must be lit (> 0): it is "
                                                      "what the street gets when the schedule "
                                                      "cannot be trusted"))
        curve = zone.get("dimming_curve")
        if curve is not None:
            levels = [p[0] for p in curve]
            ordered = levels == sorted(set(levels))
            if len(curve) < 2 or not ordered or levels[0] != 0 or levels[-1] != 100:
                errors.append((f"{where}.dimming_curve", "points must be increasing levels from "
                                                          "0 to 100, e.g. [[0, 0], [100, 100]]"))
    for i, s in enumerate(c.get("presence_sensors") or ()):
        if s is None:
            continue
        where = f"{path}.presence_sensors[{i}]"
        zone = s.get("zone")
        if zone is not None and zone not in zones:
            errors.append((f"{where}.zone", _unknown("zone", zone, zones)))
        elif zone is not None:
            near = s.get("near")
            if near is not None and near not in (zones[zone].get("luminaires") or ()):
                errors.append((f"{where}.near", f"{near!r} is not a luminaire of zone {zone!r}"))
            if zones[zone].get("presence") is None:
                errors.append((f"{where}.zone", f"zone {zone!r} has no [presence] settings "
                                                "(boost, hold)"))
        for j, other in enumerate(s.get("also") or ()):
            if other not in zones:
                errors.append((f"{where}.also[{j}]", _unknown("zone", other, zones)))
            elif zones[other].get("presence") is None:
                errors.append((f"{where}.also[{j}]", f"zone {other!r} has no [presence] "
                                                     "settings (boost, hold)"))
    amb = c.get("ambient")
    if isinstance(amb, dict) and amb.get("on_below", 20.0) >= amb.get("off_above", 50.0):
        errors.append((f"{path}.ambient.off_above", "must be above on_below (hysteresis)"))


def _check_program(prog: dict[str, Any], where: str, errors: list[tuple[str, str]]) -> None:
    if not prog.get("fixed_time_controls") and not prog.get("astro_clock_time_controls"):
        errors.append((where, "a program needs fixed_time_controls or astro_clock_time_controls"))
    for i, period in enumerate(prog.get("active_periods") or ()):
        if period is None:
            continue
        for key in ("start", "end"):
            if key in period:
                try:
                    parse_bound(period[key])
                except ValueError as e:
                    errors.append((f"{where}.active_periods[{i}].{key}", str(e)))


def _check_dates(rule: dict[str, Any], where: str, errors: list[tuple[str, str]]) -> None:
    parsed: dict[str, Any] = {}
    for key in ("start_date", "end_date"):
        if rule.get(key) is not None:
            try:
                parsed[key] = parse_day(rule[key])
            except ValueError as e:
                errors.append((f"{where}.{key}", str(e)))
    if rule.get("end_date") is not None and rule.get("start_date") is None:
        errors.append((f"{where}.start_date", "end_date given without start_date"))
    a, b = parsed.get("start_date"), parsed.get("end_date")
    if a is not None and b is not None:
        if type(a) is not type(b):
            errors.append((f"{where}.end_date", "mixes a full date and a yearly MM-DD"))
        elif isinstance(a, date) and a > b:
            errors.append((f"{where}.end_date", "before start_date"))


def _unknown(what: str, name: str, known: dict[str, Any]) -> str:
    shown = ", ".join(sorted(known)) or "none defined"
    return f"unknown {what} {name!r} (known: {shown})"
