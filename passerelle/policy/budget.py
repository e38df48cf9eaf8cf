"""A daily upstream byte budget per gateway, shared by priority.

Cabinets often sit on a metered M2M SIM: the commune pays per megabyte, so the gateway
decides locally how much it sends each day and which data goes first when it is short.

How priorities share the day (ceilings on the day's *total* spend, all priorities counted):

==============  =========  ===================================================================
priority        ceiling    meaning
==============  =========  ===================================================================
``DIAGNOSTIC``  50 %       health chatter may use at most half of the day's bytes
``TELEMETRY``   80 %       sensor data stops at 80 %, keeping 20 % for energy metering
``ENERGY``      100 %      metering data (billing, load curves) may use all that is left
``ALARM``       none       always allowed; counted in the spend, never refused
==============  =========  ===================================================================

A request of ``n`` bytes at priority ``p`` is allowed when ``spent + n <= ceiling(p) *
bytes_per_day``. Since no ceiling exceeds 100 %, what is allowed never takes the day's
spend past the budget: only alarms can (and after an alarm overran it, everything but
alarms is refused until the next day). Lower priorities stop earlier, so the headroom left
near the end of a day goes to the more important data.

The day is the local calendar day in ``tz``: the spend returns to zero at local midnight
(DST-correct, via zoneinfo). A wall clock that steps *back* into an earlier day (a Pi
without RTC before NTP) does not reset the spend: only a later day does.

Use: :meth:`DailyBudget.try_spend` allows and records in one step. :meth:`allow` then
:meth:`spend` is the same if nothing runs in between (no ``await``); otherwise two packs
could both take the last room. A refused pack stays in the store: retry it after
:meth:`DailyBudget.resets_at`, not on every loop (each refusal is counted).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime, timedelta
from typing import Any

from ..model import Priority
from .schedule import load_zone

DEFAULT_CEILINGS: Mapping[Priority, float] = {
    Priority.DIAGNOSTIC: 0.5,
    Priority.TELEMETRY: 0.8,
    Priority.ENERGY: 1.0,
}
SNAPSHOT_FORMAT = "passerelle.budget/1"


def _nbytes(nbytes: Any) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        raise ValueError(f"nbytes must be an integer >= 0, got {nbytes!r}")
    return nbytes


class DailyBudget:
    """Bytes upstream per local day, with priority ceilings (see the module docstring)."""

    def __init__(
        self,
        bytes_per_day: int,
        tz: str = "Europe/Paris",
        *,
        ceilings: Mapping[Priority, float] = DEFAULT_CEILINGS,
    ) -> None:
        if isinstance(bytes_per_day, bool) or not isinstance(bytes_per_day, int):
            raise ValueError(f"bytes_per_day must be an integer, got {bytes_per_day!r}")
        if bytes_per_day <= 0:
            raise ValueError(f"bytes_per_day must be > 0, got {bytes_per_day}")
        self.bytes_per_day = bytes_per_day
        self.zone = load_zone(tz)
        self._limits: dict[Priority, float] = {}
        for p in (Priority.DIAGNOSTIC, Priority.TELEMETRY, Priority.ENERGY):
            share = ceilings.get(p)
            if share is None or not (0 <= share <= 1) or not math.isfinite(share):
                raise ValueError(f"ceiling for {p.name} must be within 0..1, got {share!r}")
            self._limits[p] = share * bytes_per_day
        self.day: date | None = None
        self.spent = 0
        self.spent_alarm = 0
        self.refused: dict[str, int] = {}
        self.refused_bytes: dict[str, int] = {}

    def roll(self, now: float) -> None:
        """Start a new day's spend if local midnight passed since the last call."""
        today = datetime.fromtimestamp(now, self.zone).date()
        if self.day is None or today > self.day:
            self.day = today
            self.spent = 0
            self.spent_alarm = 0

    def allow(self, nbytes: int, priority: Priority, now: float) -> bool:
        """Whether ``nbytes`` at ``priority`` fit today; a refusal is counted."""
        n = _nbytes(nbytes)
        p = Priority(priority)
        self.roll(now)
        if p is Priority.ALARM or self.spent + n <= self._limits[p]:
            return True
        key = p.name.lower()
        self.refused[key] = self.refused.get(key, 0) + 1
        self.refused_bytes[key] = self.refused_bytes.get(key, 0) + n
        return False

    def spend(self, nbytes: int, priority: Priority, now: float) -> None:
        """Record ``nbytes`` sent at ``priority`` (whatever :meth:`allow` said: they went)."""
        n = _nbytes(nbytes)
        self.roll(now)
        self.spent += n
        if Priority(priority) is Priority.ALARM:
            self.spent_alarm += n

    def try_spend(self, nbytes: int, priority: Priority, now: float) -> bool:
        """:meth:`allow` and, if allowed, :meth:`spend`, in one step."""
        if not self.allow(nbytes, priority, now):
            return False
        self.spend(nbytes, priority, now)
        return True

    def remaining(self, priority: Priority, now: float) -> int:
        """Bytes ``priority`` may still send today (alarms: unlimited, reported as -1)."""
        p = Priority(priority)
        if p is Priority.ALARM:
            return -1
        self.roll(now)
        return max(0, math.floor(self._limits[p]) - self.spent)

    def resets_at(self, now: float) -> float:
        """Unix time of the next local midnight: when refused packs may try again."""
        local = datetime.fromtimestamp(now, self.zone)
        nxt = (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return nxt.timestamp()

    def stats(self) -> dict[str, Any]:
        return {
            "bytes_per_day": self.bytes_per_day,
            "day": None if self.day is None else self.day.isoformat(),
            "spent": self.spent,
            "spent_alarm": self.spent_alarm,
            "refused": dict(self.refused),
            "refused_bytes": dict(self.refused_bytes),
        }

    def snapshot(self) -> dict[str, Any]:
        """Today's spend as JSON-able data, so a restart does not grant a fresh budget."""
        return {
            "format": SNAPSHOT_FORMAT,
            "day": None if self.day is None else self.day.isoformat(),
            "spent": self.spent,
            "spent_alarm": self.spent_alarm,
        }

    def restore(self, snapshot: Mapping[str, Any], now: float) -> bool:
        """Take back a :meth:`snapshot` if it is of today's date; returns whether it was."""
        if not isinstance(snapshot, Mapping) or snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"budget snapshot: expected format {SNAPSHOT_FORMAT!r}")
        try:
            day = date.fromisoformat(str(snapshot.get("day")))
            spent = _nbytes(snapshot.get("spent"))
            spent_alarm = _nbytes(snapshot.get("spent_alarm", 0))
        except ValueError as e:
            raise ValueError(f"budget snapshot: {e}") from None
        self.roll(now)
        if day != self.day:
            return False
        self.spent = max(self.spent, spent)
        self.spent_alarm = max(self.spent_alarm, spent_alarm)
        return True


__all__ = ["DEFAULT_CEILINGS", "DailyBudget"]
