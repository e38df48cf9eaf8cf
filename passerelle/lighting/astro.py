"""The astronomical clock: sunset, civil dusk, civil dawn and sunrise for one night, computed on
the gateway (no network) from the sun's position given by astral (NOAA's solar equations).

A *night* D runs from D 12:00 to D+1 12:00 local time (TALQ ``dayOffset``, noon to noon), so it
lasts 23 h or 25 h on the nights the clocks change. Evening events are the first ones in that
window, morning events the first ones after them.

Definitions (as in the NOAA solar calculator and the USNO almanac):

=============  =====================================================================
event          geometric elevation of the sun's centre
=============  =====================================================================
sunset         falls through -0.833 deg (34' of refraction + 16' half-diameter)
civil dusk     falls through -6 deg
civil dawn     rises through -6 deg
sunrise        rises through -0.833 deg
=============  =====================================================================

Why not ``astral.sun.sunset()`` and friends: they solve the hour angle for one UTC date and then
look for a result on the requested local date, which fails ("Unable to find a sunrise time on
the date specified") on real days when the event falls near 00:00 UTC (sunrise in Asia, for
example), and they signal a polar day or night by the same ValueError. Here the elevation curve
over the window is sampled, its extrema located, and every crossing bisected: an event that does
not happen is simply a crossing that is not there, and a 23 h or 25 h window needs no special
case because everything is computed on UTC instants.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from astral import Observer
from astral.sun import elevation as _astral_elevation

SUNRISE_DEPRESSION = 0.833
"""Degrees below the horizon of the sun's centre at sunrise and sunset."""
CIVIL_DEPRESSION = 6.0
"""Degrees below the horizon of the sun's centre at civil dawn and dusk."""
EVENTS = ("sunset", "civil_dusk", "civil_dawn", "sunrise")

# The sun's elevation changes by at most 0.25 deg a minute: 10-minute samples cannot step over
# a crossing except where the curve turns, and the turning points are refined separately.
_STEP = timedelta(minutes=10)
_RESOLUTION = timedelta(seconds=1)
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True, slots=True)
class NightSun:
    """The solar events of night D (D 12:00 to D+1 12:00 local), aware in the site's zone."""

    night: date
    sunset: datetime | None
    """None when the sun does not set in the window (midnight sun, or already down at noon)."""
    civil_dusk: datetime | None
    civil_dawn: datetime | None
    sunrise: datetime | None
    solar_midnight: datetime
    """The sun's lowest point in the window."""
    polar: Literal["day", "night"] | None
    """"day": above the horizon all window; "night": below it all window; None otherwise."""

    def event(self, name: str) -> datetime | None:
        """The time of ``name`` (one of :data:`EVENTS`), None when it does not occur."""
        if name not in EVENTS:
            raise ValueError(f"unknown solar event {name!r}: expected one of {', '.join(EVENTS)}")
        value: datetime | None = getattr(self, name)
        return value


def site_zone(tz: str | ZoneInfo) -> ZoneInfo:
    """The ZoneInfo for an IANA name (``Europe/Paris``); ValueError naming it when unknown."""
    if isinstance(tz, ZoneInfo):
        return tz
    if not isinstance(tz, str) or not tz:
        raise ValueError(f"time zone {tz!r} is not an IANA name like 'Europe/Paris'")
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(
            f"unknown time zone {tz!r}: expected an IANA name like 'Europe/Paris'"
        ) from exc


def night_window(night: date, tz: str | ZoneInfo) -> tuple[datetime, datetime]:
    """Night ``night``'s window: D 12:00 and D+1 12:00 local, aware (23 h to 25 h apart)."""
    if isinstance(night, datetime) or not isinstance(night, date):
        raise ValueError(f"night {night!r} is not a date")
    zone = site_zone(tz)
    return (
        datetime.combine(night, time(12), zone),
        datetime.combine(night + timedelta(days=1), time(12), zone),
    )


def sun_elevation(latitude: float, longitude: float, when: datetime) -> float:
    """Geometric elevation of the sun's centre in degrees (no refraction) at aware ``when``."""
    return _elevation(_observer(latitude, longitude), _aware(when))


def is_dark(
    latitude: float, longitude: float, when: datetime, depression: float = SUNRISE_DEPRESSION
) -> bool:
    """True when the sun's centre is more than ``depression`` degrees below the horizon
    (0.833: after sunset and before sunrise; 6: after civil dusk and before civil dawn)."""
    if isinstance(depression, bool) or not isinstance(depression, int | float):
        raise ValueError(f"depression {depression!r} is not a number of degrees")
    if not -90.0 <= depression <= 90.0:
        raise ValueError(f"depression {depression!r} is outside -90..90 degrees")
    return sun_elevation(latitude, longitude, when) < -depression


def night_sun(latitude: float, longitude: float, tz: str | ZoneInfo, night: date) -> NightSun:
    """Sunset, civil dusk, civil dawn, sunrise and solar midnight of night ``night``."""
    observer = _observer(latitude, longitude)
    zone = site_zone(tz)
    start, end = night_window(night, zone)
    curve = _Curve(observer, start.astimezone(UTC), end.astimezone(UTC))
    horizon = curve.crossings(-SUNRISE_DEPRESSION)
    civil = curve.crossings(-CIVIL_DEPRESSION)

    # Morning events are looked for after the evening ones: near the polar night the window can
    # open with the sun down, see it rise briefly in the afternoon, and set; the sunrise that
    # ends this night is the next morning's, not that one.
    sunset = _first(horizon, falling=True, after=None)
    civil_dusk = _first(civil, falling=True, after=sunset)
    civil_dawn = _first(civil, falling=False, after=civil_dusk or sunset)
    sunrise = _first(horizon, falling=False, after=civil_dawn or civil_dusk or sunset)

    polar: Literal["day", "night"] | None = None
    if not horizon:
        polar = "day" if curve.inside()[0][1] >= -SUNRISE_DEPRESSION else "night"

    def local(moment: datetime | None) -> datetime | None:
        return None if moment is None else _to_second(moment).astimezone(zone)

    lowest = min(curve.inside(), key=lambda point: point[1])[0]
    return NightSun(
        night=night,
        sunset=local(sunset),
        civil_dusk=local(civil_dusk),
        civil_dawn=local(civil_dawn),
        sunrise=local(sunrise),
        solar_midnight=_to_second(lowest).astimezone(zone),
        polar=polar,
    )


class _Curve:
    """The sun's elevation over a window, sampled and with its turning points located, so that
    between two consecutive points the elevation is monotonic."""

    def __init__(self, observer: Observer, start: datetime, end: datetime) -> None:
        self._observer = observer
        self.start = start
        self.end = end
        # One sample beyond each end, so that a turning point just inside the window is
        # bracketed like any other.
        samples: list[datetime] = [start - _STEP]
        moment = start
        while moment < end:
            samples.append(moment)
            moment += _STEP
        samples += [end, end + _STEP]
        points = [(t, self._at(t)) for t in samples]
        turns = []
        for (t0, e0), (_, e1), (t2, e2) in zip(points, points[1:], points[2:], strict=False):
            if (e1 - e0) * (e2 - e1) <= 0:
                turns.append(self._turning_point(t0, t2, lowest=e1 <= e0))
        self.points: list[tuple[datetime, float]] = sorted(points + turns, key=lambda p: p[0])

    def inside(self) -> list[tuple[datetime, float]]:
        """The points in [start, end]."""
        return [p for p in self.points if self.start <= p[0] <= self.end]

    def _at(self, moment: datetime) -> float:
        return _elevation(self._observer, moment)

    def _turning_point(self, low: datetime, high: datetime, lowest: bool) -> tuple[datetime, float]:
        """Golden-section search of the minimum (or maximum) between ``low`` and ``high``."""
        sign = 1.0 if lowest else -1.0

        def cost(moment: datetime) -> float:
            return sign * self._at(moment)

        a, b = low, high
        c = b - (b - a) * _GOLDEN
        d = a + (b - a) * _GOLDEN
        fc, fd = cost(c), cost(d)
        while b - a > _RESOLUTION:
            if fc < fd:
                b, d, fd = d, c, fc
                c = b - (b - a) * _GOLDEN
                fc = cost(c)
            else:
                a, c, fc = c, d, fd
                d = a + (b - a) * _GOLDEN
                fd = cost(d)
        middle = a + (b - a) / 2
        return middle, self._at(middle)

    def crossings(self, level: float) -> list[tuple[datetime, bool]]:
        """Every (instant, falling) where the elevation passes ``level`` inside the window."""
        found: list[tuple[datetime, bool]] = []
        for (t0, e0), (t1, e1) in zip(self.points, self.points[1:], strict=False):
            falling = e0 >= level > e1
            if falling or e0 < level <= e1:
                moment = self._bisect(t0, t1, level)
                if self.start <= moment < self.end:
                    found.append((moment, falling))
        return found

    def _bisect(self, low: datetime, high: datetime, level: float) -> datetime:
        """Shrink [low, high], whose ends lie on either side of ``level``, to the resolution."""
        low_above = self._at(low) >= level
        while high - low > _RESOLUTION:
            middle = low + (high - low) / 2
            if (self._at(middle) >= level) == low_above:
                low = middle
            else:
                high = middle
        return low + (high - low) / 2


def _first(
    crossings: list[tuple[datetime, bool]], falling: bool, after: datetime | None
) -> datetime | None:
    for moment, down in crossings:
        if down == falling and (after is None or moment > after):
            return moment
    return None


def _observer(latitude: float, longitude: float) -> Observer:
    # astral's Observer silently clamps out-of-range angles; a typo must not become a pole.
    for name, value, limit in (("latitude", latitude, 90.0), ("longitude", longitude, 180.0)):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{name} {value!r} is not a number of degrees")
        if not math.isfinite(value) or not -limit <= value <= limit:
            raise ValueError(f"{name} {value!r} is outside -{limit:g}..{limit:g} degrees")
    return Observer(latitude=float(latitude), longitude=float(longitude))


def _aware(when: datetime) -> datetime:
    # astral reads a naive datetime as UTC: on a site at UTC+2 that is two hours wrong, silently.
    if not isinstance(when, datetime):
        raise ValueError(f"time {when!r} is not a datetime")
    if when.utcoffset() is None:
        raise ValueError(f"time {when.isoformat()} has no time zone (give an aware datetime)")
    return when


def _elevation(observer: Observer, moment: datetime) -> float:
    return float(_astral_elevation(observer, moment, with_refraction=False))


def _to_second(moment: datetime) -> datetime:
    rounded = moment + timedelta(microseconds=500_000)
    return rounded.replace(microsecond=0)
