"""Sampling schedules: poll less often at night, when street data changes slowly.

A night window is written ``"HH:MM-HH:MM"`` in the gateway's *local* time (an IANA zone,
``Europe/Paris`` by default). It may cross midnight (``22:00-06:00``). Local time is read
through :mod:`zoneinfo`, so the window follows the legal clock across daylight-saving
changes: on the last Sunday of March the night 22:00-06:00 lasts 7 hours of real time, on
the last Sunday of October 9 hours.

The lighting engine will bring the astronomical night (sunset to sunrise). Until then the
clock window is the default; :class:`SamplingSchedule` takes any ``is_night(wall_time)``
predicate, so an astronomical clock plugs in without changing the sources that ask.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_HHMM = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-3]):([0-5][0-9])$")


def parse_window(text: str) -> tuple[int, int]:
    """``"22:00-06:00"`` -> (start, end) in seconds after local midnight.

    Raises ValueError naming the rule when the text is not two 24-hour times, or when both
    ends are equal (an empty or a whole-day night: say which by leaving ``night_interval``
    unset or by setting ``interval`` itself).
    """
    m = _HHMM.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"invalid window {text!r}: expected 'HH:MM-HH:MM' in 24-hour local time")
    start = int(m[1]) * 3600 + int(m[2]) * 60
    end = int(m[3]) * 3600 + int(m[4]) * 60
    if start == end:
        raise ValueError(f"invalid window {text!r}: start and end are the same time")
    return start, end


def load_zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``, or ValueError saying it is unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        # OSError: ZoneInfo("Europe") finds a directory, not a zone file.
        raise ValueError(
            f"unknown time zone {name!r} (an IANA name like 'Europe/Paris' or 'UTC')"
        ) from None


class ClockNight:
    """``is_night`` for a fixed local-time window such as ``22:00-06:00``."""

    __slots__ = ("end", "start", "text", "zone")

    def __init__(self, window: str = "22:00-06:00", tz: str = "Europe/Paris") -> None:
        self.text = window
        self.start, self.end = parse_window(window)
        self.zone = load_zone(tz)

    def _seconds_of_day(self, wall_time: float) -> float:
        local = datetime.fromtimestamp(wall_time, self.zone)
        return local.hour * 3600 + local.minute * 60 + local.second + local.microsecond / 1e6

    def __call__(self, wall_time: float) -> bool:
        s = self._seconds_of_day(wall_time)
        if self.start < self.end:
            return self.start <= s < self.end
        return s >= self.start or s < self.end  # crosses midnight

    def next_change(self, wall_time: float) -> float:
        """The first Unix time after ``wall_time`` at which night starts or ends."""
        local = datetime.fromtimestamp(wall_time, self.zone)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0, fold=0)
        best = math.inf
        # Build each candidate as a local wall-clock time on that date, so a DST change
        # between midnight and the boundary does not shift it by an hour. A boundary
        # inside the spring gap (02:30 on the last Sunday of March) resolves, per PEP 495,
        # to the instant the clock would have shown it before the change.
        for day in (0, 1, 2):
            date = midnight + timedelta(days=day)
            for edge in (self.start, self.end):
                at = date.replace(hour=edge // 3600, minute=edge % 3600 // 60)
                t = at.timestamp()
                if t > wall_time:
                    best = min(best, t)
        return best


class SamplingSchedule:
    """How long a source waits before its next poll, by day or by night.

    ``interval`` is the day polling period in seconds, ``night_interval`` the night one
    (None: the same all day). ``night`` and ``tz`` define the night as a local clock
    window; ``is_night(wall_time) -> bool`` replaces that window (an astronomical clock).
    """

    __slots__ = ("_clock_night", "interval", "is_night", "night_interval")

    def __init__(
        self,
        interval: float,
        night_interval: float | None = None,
        night: str = "22:00-06:00",
        tz: str = "Europe/Paris",
        *,
        is_night: Callable[[float], bool] | None = None,
    ) -> None:
        self.interval = _period("interval", interval)
        self.night_interval = (
            None if night_interval is None else _period("night_interval", night_interval)
        )
        self._clock_night: ClockNight | None = None
        self.is_night: Callable[[float], bool]
        if is_night is None:
            self._clock_night = self.is_night = ClockNight(night, tz)
        else:
            self.is_night = is_night

    def interval_at(self, wall_time: float) -> float:
        """The polling period in force at ``wall_time`` (Unix seconds)."""
        if self.night_interval is None:
            return self.interval
        return self.night_interval if self.is_night(wall_time) else self.interval

    def delay_at(self, wall_time: float) -> float:
        """The wait before the next poll: :meth:`interval_at`, shortened so a long night
        period does not run past dawn (the first day poll happens when day starts).

        Only the clock window knows its next change; with an injected ``is_night`` this
        is :meth:`interval_at`.
        """
        delay = self.interval_at(wall_time)
        if self.night_interval is None or self._clock_night is None:
            return delay
        return min(delay, self._clock_night.next_change(wall_time) - wall_time)


def _period(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


__all__ = ["ClockNight", "SamplingSchedule", "load_zone", "parse_window"]
