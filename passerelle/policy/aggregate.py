"""Aggregation windows: a few summary records per window instead of every raw sample.

Windows are aligned on multiples of ``window`` seconds since the Unix epoch, so every
gateway cuts the same windows whatever its start time: ``[k*window, (k+1)*window)``. The
configuration requires ``window`` to divide a day, so windows also start at UTC midnight;
a window that divides an hour also starts on local hours in every whole-hour time zone.

A window ``W`` of stream ``<device>/<name>`` is emitted as records ``<name>/<fn>`` of the
same device, one per configured function, all with **time = start of the window**: the
window is named by its start, ``[t, t + window)``, as a load curve's quarter-hours are; a
consumer needs the window length (the rule) to know its end. The unit is the samples' unit
(the last sample's, if it changed), except ``count`` which has none.

==========  =========================================================================
function    value
==========  =========================================================================
``min``     smallest sample (its own type: an int stays an int)
``max``     largest sample
``mean``    ``fsum(samples) / count``, exactly rounded (running Shewchuk partials: O(1)
            memory, the same float as :func:`math.fsum` on the raw samples)
``sum``     exact sum (an int when every sample is an int, else the fsum)
``count``   number of samples in the window (no unit)
``first``   earliest sample by arrival
``last``    latest sample by arrival
==========  =========================================================================

Only finite numbers are aggregated. A window closes when a sample of a later window arrives
or when :meth:`WindowAggregator.close_ended` is called with a time at or after its end;
an empty window emits nothing. A sample older than the window being filled (or than the
last window closed) is *late*: :meth:`WindowAggregator.add` returns None and the caller
decides (the engine sends it raw, or for a count-only privacy stream counts it in the
current window).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from ..model import Record

FUNCTIONS: tuple[str, ...] = ("min", "max", "mean", "sum", "count", "first", "last")


def window_start(time: float, window: int) -> float:
    """Start of the aligned window holding ``time``."""
    return math.floor(time / window) * window


def _add_exact(partials: list[float], x: float) -> None:
    """Add ``x`` to a list of non-overlapping partial sums (Shewchuk 1997): the partials'
    exact sum stays the exact sum of everything added, so fsum(partials) equals fsum of
    all the samples, with memory bounded by the exponent range, not the sample count."""
    i = 0
    for y in partials:
        if abs(x) < abs(y):
            x, y = y, x
        hi = x + y
        lo = y - (hi - x)
        if lo:
            partials[i] = lo
            i += 1
        x = hi
    partials[i:] = [x]


class _Window:
    __slots__ = ("count", "first", "isum", "last", "max", "min", "partials", "start", "unit")

    def __init__(self, start: float, value: float | int, unit: str | None) -> None:
        self.start = start
        self.count = 0
        self.first = self.last = self.min = self.max = value
        self.partials: list[float] = []
        self.isum: int | None = 0  # the exact integer sum while every sample is an int
        self.unit = unit

    def add(self, value: float | int, unit: str | None) -> None:
        self.count += 1
        self.last = value
        self.unit = unit
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        _add_exact(self.partials, float(value))
        if self.isum is not None:
            self.isum = self.isum + value if type(value) is int else None

    def value(self, fn: str) -> float | int:
        if fn == "count":
            return self.count
        if fn in ("sum", "mean"):
            if self.isum is not None:
                return self.isum if fn == "sum" else self.isum / self.count
            try:
                total = math.fsum(self.partials)
            except (OverflowError, ValueError):  # samples near float max: no finite sum
                total = math.nan
            return total if fn == "sum" else total / self.count
        result: float | int = getattr(self, fn)
        return result


class WindowAggregator:
    """One stream's aligned windows; see the module docstring."""

    __slots__ = ("_closed_until", "_current", "device", "functions", "name", "window")

    def __init__(self, device: str, name: str, window: int, functions: Sequence[str]) -> None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be a whole number of seconds >= 1, got {window!r}")
        unknown = [f for f in functions if f not in FUNCTIONS]
        if unknown or not functions or len(set(functions)) != len(functions):
            raise ValueError(
                f"functions must be distinct names among {', '.join(FUNCTIONS)}; got {functions!r}"
            )
        self.device = device
        self.name = name
        self.window = window
        self.functions = tuple(functions)
        self._current: _Window | None = None
        self._closed_until = -math.inf

    @property
    def open_until(self) -> float | None:
        """End of the window being filled, or None."""
        return None if self._current is None else self._current.start + self.window

    def add(self, value: float | int, time: float, unit: str | None) -> list[Record] | None:
        """Add a finite number; returns the records of a window this sample closed (often
        none), or None if the sample is late and was not added."""
        start = window_start(time, self.window)
        cur = self._current
        if start < self._closed_until or (cur is not None and start < cur.start):
            return None
        out: list[Record] = []
        if cur is not None and start > cur.start:
            out = self._close()
            cur = None
        if cur is None:
            cur = self._current = _Window(start, value, unit)
        cur.add(value, unit)
        return out

    def add_to_current(self, value: float | int, time: float, unit: str | None) -> list[Record]:
        """Count a late sample in the window being filled (or open one at ``time``'s)."""
        if self._current is None:
            start = max(window_start(time, self.window), self._closed_until)
            self._current = _Window(start, value, unit)
        self._current.add(value, unit)
        return []

    def close_ended(self, now: float) -> list[Record]:
        """The records of the window being filled if it ended at or before ``now``."""
        cur = self._current
        if cur is None or cur.start + self.window > now:
            return []
        return self._close()

    def _close(self) -> list[Record]:
        cur = self._current
        assert cur is not None
        self._current = None
        self._closed_until = cur.start + self.window
        return [
            Record(
                self.device,
                f"{self.name}/{fn}",
                cur.value(fn),
                cur.start,
                None if fn == "count" else cur.unit,
            )
            for fn in self.functions
        ]


__all__ = ["FUNCTIONS", "WindowAggregator", "window_start"]
