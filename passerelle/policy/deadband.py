"""Send-on-delta: a reading goes upstream only when it moved, or when it has been quiet long.

For one stream the filter remembers the last value it let through (the last *sent* value,
not the last seen: a slow drift of many small steps is sent as soon as its sum leaves the
band). A new sample is sent when any of these holds:

* nothing was sent yet on this stream;
* ``heartbeat`` is set and ``time - last_sent_time >= heartbeat``;
* its time is earlier than the last sent one (a clock stepped back, a late LoRaWAN frame):
  the filter cannot tell what it would hide, so it lets it through and starts over from it;
* its kind differs from the last sent value's (number, text, boolean, bytes);
* numbers, both finite: ``|value - last_sent| > band`` (strictly: a change equal to the band
  is suppressed);
* numbers, either NaN or infinite: the value is not the same non-finite value (``nan`` after
  ``nan`` is no change; ``21.5`` after ``nan`` is);
* text, booleans and bytes: ``value != last_sent``.

The band is ``deadband`` (absolute, in the stream's unit) or ``deadband_rel * |last_sent|``
(relative). Near zero a relative band shrinks to nothing, so *every* change of a reading
sitting at or near 0 is sent: the safe side (it never hides a change) at the cost of some
chatter; streams that rest at zero (power at night) should use an absolute band. With
neither band, only ``heartbeat``, the band is 0: repeats of the same value are suppressed
and every change is sent.

Guarantee (the property test states it): for finite numbers,
``|value - last_sent| > band  =>  sent``. A deadband never hides a change larger than it.
"""

from __future__ import annotations

import math

from ..model import Value


def is_number(value: object) -> bool:
    """int or float, not bool (a bool is an int to Python, a state to the operator)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _kind(value: object) -> type:
    return float if is_number(value) else type(value)


class Deadband:
    """One stream's send-on-delta state. See the module docstring for the rule."""

    __slots__ = ("band", "heartbeat", "last", "last_time", "rel")

    def __init__(
        self,
        band: float | None = None,
        rel: float | None = None,
        heartbeat: float | None = None,
    ) -> None:
        if band is not None and rel is not None:
            raise ValueError("deadband: set an absolute band or a relative one, not both")
        for name, x in (("deadband", band), ("deadband_rel", rel)):
            if x is not None and not (is_number(x) and math.isfinite(x) and x >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {x!r}")
        if heartbeat is not None and not (is_number(heartbeat) and heartbeat > 0):
            raise ValueError(f"heartbeat must be a positive number of seconds, got {heartbeat!r}")
        self.band = float(band) if band is not None else None
        self.rel = float(rel) if rel is not None else None
        self.heartbeat = float(heartbeat) if heartbeat is not None else None
        self.last: Value | None = None
        self.last_time = -math.inf

    def band_for(self, last_sent: float) -> float:
        """The band around ``last_sent`` within which a new reading is suppressed."""
        if self.rel is not None:
            return self.rel * abs(last_sent)
        return self.band or 0.0

    def offer(self, value: Value, time: float) -> bool:
        """Whether ``value`` measured at ``time`` should be sent; remembers it if so."""
        if self._due(value, time):
            self.last = value
            self.last_time = time
            return True
        return False

    def _due(self, value: Value, time: float) -> bool:
        last = self.last
        if last is None or time < self.last_time:
            return True
        if self.heartbeat is not None and time - self.last_time >= self.heartbeat:
            return True
        if _kind(value) is not _kind(last):
            return True
        if not is_number(value):
            return value != last
        assert isinstance(value, int | float) and isinstance(last, int | float)
        try:
            if type(value) is int and type(last) is int:
                return abs(value - last) > self.band_for(last)  # exact, whatever the size
            if not (math.isfinite(value) and math.isfinite(last)):
                same_nan = math.isnan(value) and math.isnan(last)
                return not (same_nan or value == last)
            return abs(value - last) > self.band_for(last)
        except OverflowError:  # an int beyond float range against a float: send, do not guess
            return True


__all__ = ["Deadband", "is_number"]
