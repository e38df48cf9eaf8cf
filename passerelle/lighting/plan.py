"""A night's plan: per zone, the level steps the calendar gives, and their energy.

The plan is a pure function of the configuration, the date and the sun, so the engine can
recompute it after a restart at 02:00 and find the street where it should be, and the CLI
(``passerelle lighting plan``) shows an installer exactly what the gateway will do.

Rules that keep a street from going dark by accident live here:

* a level above 0 is raised to the zone's ``floor`` and capped at its ``max``;
* a night no calendar rule matches gets the zone's ``default_level`` from sunset to sunrise;
* a polar night (no sunrise) resolves sunset-type events to the window's start and
  sunrise-type ones to its end; a polar day (no sunset) is a night without darkness: level 0;
* a civil twilight that never ends (60 N in June) puts civil dusk and dawn at solar midnight;
* fixed-time controls act only between a program's first and last astro-clock points, so a
  "06:00 -> 100" meant for winter mornings does not light a June street after sunrise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from .astro import NightSun, night_sun, night_window
from .calendar import select
from .model import ControlProgram, LightingConfig, Zone, parse_bound

_EVENING = {"sunset", "civil_dusk"}
_PAIR = {"sunset": "sunrise", "sunrise": "sunset",
         "civil_dusk": "civil_dawn", "civil_dawn": "civil_dusk"}


# Noon on the night's date to noon the next day, local (23 or 25 hours across DST).
window = night_window


def night_of(when: datetime, tz: ZoneInfo) -> date:
    """The night a moment belongs to: before local noon, the previous day's."""
    local = when.astimezone(tz)
    return local.date() if local.hour >= 12 else local.date() - timedelta(days=1)


def local_time(night: date, minutes: int, tz: ZoneInfo) -> datetime:
    """``HH:MM`` in the night's window: afternoon and evening on ``night``, morning after.

    A time that does not exist (02:30 on the spring-forward night) lands just after the gap;
    one that occurs twice (02:30 in October) is the first occurrence.
    """
    day = night if minutes >= 720 else night + timedelta(days=1)
    naive = datetime(day.year, day.month, day.day, minutes // 60, minutes % 60)
    aware = naive.replace(tzinfo=tz, fold=0)
    # Through UTC and back: a non-existent wall time is moved past the gap.
    return aware.astimezone(UTC).astimezone(tz)


def event_time(sun: NightSun, event: str, start: datetime, end: datetime) -> datetime | None:
    t = sun.event(event)
    if t is not None:
        return t
    if sun.polar == "night":
        return start if event in _EVENING else end
    if sun.polar == "day":
        return None
    if sun.event(_PAIR[event]) is not None:
        # The edge of the polar night: the sun was already down at noon (no sunset in the
        # window) or is still down at noon next day (no sunrise). Lit, not dark.
        return start if event in _EVENING else end
    return sun.solar_midnight  # civil twilight all night: dusk and dawn meet at the low point


def resolve(
    kind: str, value: int, night: date, sun: NightSun, tz: ZoneInfo, start: datetime, end: datetime
) -> datetime | None:
    """A switch point's moment in the window (clamped to it), None if it does not occur."""
    if kind == "time":
        return local_time(night, value, tz)
    base = event_time(sun, kind, start, end)
    if base is None:
        return None
    # In UTC: aware datetimes sharing a ZoneInfo add, subtract and compare as wall times,
    # which is an hour off across a DST change.
    moved = (base.astimezone(UTC) + timedelta(minutes=value)).astimezone(base.tzinfo)
    return min(max(moved, start, key=_ts), end, key=_ts)


def _ts(t: datetime) -> float:
    return t.timestamp()


def clamp(zone: Zone, level: int) -> int:
    """Lit means at least the floor and at most the max; 0 stays off."""
    if level <= 0:
        return 0
    return min(max(level, zone.floor, 1), zone.max)


def program_steps(
    program: ControlProgram, night: date, sun: NightSun, tz: ZoneInfo
) -> list[tuple[datetime, int]]:
    """The program's switch points as (moment, level), in time order (unclamped)."""
    start, end = window(night, tz)
    if sun.polar == "day":
        return []
    points: list[tuple[datetime, int, int]] = []
    for i, a in enumerate(program.astro_clock_time_controls):
        t = resolve(a.solar_event_type, a.offset, night, sun, tz, start, end)
        if t is not None:
            points.append((t, i, a.level))
    n = len(points)
    # Fixed times act inside the span the astro points open: in June "06:00 -> 100" falls
    # after a 05:57 sunrise and must not light the street until noon.
    first = min((t for t, _, _ in points), default=start, key=_ts)
    last = max((t for t, _, _ in points), default=end, key=_ts)
    for i, f in enumerate(program.fixed_time_controls):
        kind, minutes = parse_bound(f.time)
        t = resolve(kind, minutes, night, sun, tz, start, end)
        if t is not None and (n == 0 or _ts(first) <= _ts(t) < _ts(last)):
            points.append((t, n + i, f.level))
    points.sort(key=lambda p: (p[0].timestamp(), p[1]))
    return [(t, level) for t, _, level in points if _ts(t) < _ts(end)]


def sensor_periods(
    program: ControlProgram, night: date, sun: NightSun, tz: ZoneInfo
) -> list[tuple[datetime, datetime]]:
    start, end = window(night, tz)
    out = []
    for p in program.active_periods:
        a = resolve(*parse_bound(p.start), night, sun, tz, start, end)
        b = resolve(*parse_bound(p.end), night, sun, tz, start, end)
        if a is not None and b is not None and _ts(a) < _ts(b):
            out.append((a, b))
    return out


@dataclass(slots=True)
class ZonePlan:
    zone: str
    source: str  # "calendar" (a rule matched) or "default" (none did: the safe default)
    rule: str | None
    program: str | None
    steps: list[tuple[datetime, int]]  # change points, the first at the window's start
    sensor_periods: list[tuple[datetime, datetime]] = field(default_factory=list)
    energy_wh: float = 0.0
    baseline_wh: float = 0.0

    def level_at(self, when: datetime) -> int:
        now = when.timestamp()
        level = 0
        for t, lv in self.steps:
            if t.timestamp() > now:
                break
            level = lv
        return level

    def sensor_active(self, when: datetime) -> bool:
        now = when.timestamp()
        return any(a.timestamp() <= now < b.timestamp() for a, b in self.sensor_periods)


@dataclass(slots=True)
class NightPlan:
    night: date
    start: datetime
    end: datetime
    sun: NightSun
    zones: dict[str, ZonePlan]

    def to_json(self, cfg: LightingConfig) -> dict[str, object]:
        def iso(t: datetime | None) -> str | None:
            return None if t is None else t.isoformat(timespec="seconds")

        return {
            "night": self.night.isoformat(),
            "location": {"lat": cfg.latitude, "lon": cfg.longitude, "tz": cfg.timezone},
            "window": {"start": iso(self.start), "end": iso(self.end)},
            "sun": {e: iso(self.sun.event(e))
                    for e in ("sunset", "civil_dusk", "civil_dawn", "sunrise")}
            | {"polar": self.sun.polar},
            "zones": {
                name: {
                    "source": z.source,
                    "rule": z.rule,
                    "program": z.program,
                    "luminaires": cfg.zones[name].size,
                    "steps": [[iso(t), lv] for t, lv in z.steps],
                    "sensor_periods": [[iso(a), iso(b)] for a, b in z.sensor_periods],
                    "energy_wh": round(z.energy_wh, 1),
                    "baseline_wh": round(z.baseline_wh, 1),
                }
                for name, z in self.zones.items()
            },
        }


def plan_zone(cfg: LightingConfig, name: str, night: date, sun: NightSun) -> ZonePlan:
    zone = cfg.zones[name]
    tz = cfg.tz
    start, end = window(night, tz)
    rule = select(cfg.calendars[zone.calendar], night)
    if rule is None:
        raw = default_steps(zone, sun, start, end)
        plan = ZonePlan(name, "default", None, None, [])
    else:
        program = cfg.programs[rule.program]
        raw = program_steps(program, night, sun, tz)
        plan = ZonePlan(name, "calendar", rule.name, rule.program, [],
                        sensor_periods(program, night, sun, tz))
    steps: list[tuple[datetime, int]] = [(start, 0)]
    for t, level in raw:
        level = clamp(zone, level)
        if _ts(t) == _ts(steps[-1][0]):
            steps[-1] = (t, level)  # two points at one moment: the later-listed wins
        elif level != steps[-1][1]:
            steps.append((t, level))
    # Merging equal moments may leave neighbours with the same level.
    plan.steps = [s for i, s in enumerate(steps) if i == 0 or s[1] != steps[i - 1][1]]
    plan.energy_wh = energy_wh(zone, plan.steps, end)
    plan.baseline_wh = baseline_wh(zone, sun, start, end)
    return plan


def default_steps(
    zone: Zone, sun: NightSun, start: datetime, end: datetime
) -> list[tuple[datetime, int]]:
    """The zone's safe default (TALQ defaultLightState) from sunset to sunrise."""
    on, off = dark_span(sun, start, end)
    if on is None or off is None:
        return []
    return [(on, zone.default_level)] + ([(off, 0)] if _ts(off) < _ts(end) else [])


def dark_span(
    sun: NightSun, start: datetime, end: datetime
) -> tuple[datetime | None, datetime | None]:
    if sun.polar == "day":
        return None, None
    return event_time(sun, "sunset", start, end), event_time(sun, "sunrise", start, end)


def plan_night(cfg: LightingConfig, night: date, zones: list[str] | None = None) -> NightPlan:
    sun = night_sun(cfg.latitude, cfg.longitude, cfg.tz, night)
    start, end = window(night, cfg.tz)
    names = list(cfg.zones) if zones is None else zones
    return NightPlan(night, start, end, sun, {n: plan_zone(cfg, n, night, sun) for n in names})


# --------------------------------------------------------------------------------------------
# Energy


def power_w(zone: Zone, level: float) -> float:
    """One luminaire's power at ``level`` %, through the zone's dimming curve."""
    if level <= 0:
        return zone.standby_power
    curve = zone.dimming_curve
    for (l0, p0), (l1, p1) in zip(curve, curve[1:], strict=False):
        if level <= l1:
            share = p0 + (p1 - p0) * (level - l0) / (l1 - l0)
            return zone.rated_power * share / 100.0
    return zone.rated_power * curve[-1][1] / 100.0


def energy_wh(zone: Zone, steps: list[tuple[datetime, int]], end: datetime) -> float:
    """All the zone's luminaires over the steps, ramps included (linear in level)."""
    total = 0.0
    for i, (t, level) in enumerate(steps):
        t_next = steps[i + 1][0] if i + 1 < len(steps) else end
        seconds = t_next.timestamp() - t.timestamp()
        prev = steps[i - 1][1] if i else level
        ramp = min(zone.ramp_up if level > prev else zone.ramp_down, seconds)
        if ramp > 0 and level != prev:
            # The ramp's mean power (the curve is not linear), then the level held.
            n = 16
            mean = sum(power_w(zone, prev + (level - prev) * (k + 0.5) / n) for k in range(n)) / n
            total += mean * ramp + power_w(zone, level) * (seconds - ramp)
        else:
            total += power_w(zone, level) * seconds
    return total * zone.size / 3600.0


def baseline_wh(zone: Zone, sun: NightSun, start: datetime, end: datetime) -> float:
    """Every luminaire at full power from sunset to sunrise: the night without a policy."""
    on, off = dark_span(sun, start, end)
    if on is None or off is None:
        return 0.0
    hours = (off.timestamp() - on.timestamp()) / 3600.0
    return hours * zone.rated_power * zone.size
