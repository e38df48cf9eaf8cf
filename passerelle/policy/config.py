"""The ``[policy]`` section: data sobriety rules, read by :mod:`passerelle.policy.sobriety`.

Kept beside the code that reads it; :mod:`passerelle.config` includes it in the schema and
runs :func:`check` in its semantic pass, so errors come with dotted paths like every other
section's. Example::

    [policy]
    night = "22:00-06:00"          # local time; may cross midnight
    timezone = "Europe/Paris"
    budget_bytes_per_day = 1000000 # SenML-CBOR bytes upstream per local day (optional)

    [[policy.streams]]             # first matching rule wins
    match = "*/presence*"          # fnmatch glob on "<device>/<name>"
    privacy = "count"
    aggregate = { window = 900, functions = ["count"] }

    [[policy.streams]]
    match = "*/temperature*"
    deadband = 0.2                 # in the stream's unit
    heartbeat = 900                # seconds: send at least this often
    ttl = 604800                   # keep unsent records a week

    [[policy.streams]]
    match = "meter-1/P*"
    aggregate = { window = 300, functions = ["min", "max", "mean"] }

What combines with what: ``privacy = "strict"`` and ``ttl`` combine with anything;
``privacy = "count"`` takes no deadband (the count replaces the values); ``aggregate`` takes
no deadband (the window is the reduction); ``deadband``, ``deadband_rel`` and ``heartbeat``
go together, except both bands at once.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from ..schema import PositiveFloat, Section
from .aggregate import FUNCTIONS
from .privacy import DEFAULT_COUNT_WINDOW
from .schedule import load_zone, parse_window

DAY_S = 86400
DEFAULT_FUNCTIONS = ("min", "max", "mean", "count")


class AggregateConfig(Section, frozen=True):
    window: Annotated[int, Meta(ge=1, le=DAY_S)] = 300  # seconds; must divide a day
    # Names are checked in check(), not by a Literal: an optional inline table is converted
    # whole by the structural pass, which would report a bad name without saying which.
    functions: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_FUNCTIONS))


class StreamRule(Section, frozen=True):
    match: Annotated[str, Meta(min_length=1)]  # fnmatch glob on "<device>/<name>"
    deadband: Annotated[float, Meta(ge=0)] | None = None
    deadband_rel: Annotated[float, Meta(gt=0, le=1)] | None = None
    heartbeat: PositiveFloat | None = None
    aggregate: AggregateConfig | None = None
    privacy: Literal["count", "strict"] | None = None
    ttl: PositiveFloat | None = None


class PolicyConfig(Section, frozen=True):
    night: str = "22:00-06:00"
    timezone: str = "Europe/Paris"
    budget_bytes_per_day: Annotated[int, Meta(ge=1024)] | None = None
    # true: the rules of default_policy() apply after `streams` (first match wins, so a
    # stream's own rule overrides them). Off by default: a gateway sends what its config
    # says until its operator opts in.
    defaults: bool = False
    streams: list[StreamRule] = msgspec.field(default_factory=list)

    def rules(self) -> list[StreamRule]:
        """The rules in force, in match order."""
        return [*self.streams, *(default_policy().streams if self.defaults else ())]


def _get(obj: Any, key: str) -> Any:
    # The structural pass leaves nested tables converted (Structs) or not (dicts).
    if isinstance(obj, dict):
        return obj.get(key)
    return getattr(obj, key, None)


def check(c: dict[str, Any], path: str, errors: list[tuple[str, str]]) -> None:
    """Cross-field rules of ``[policy]`` on the cleaned dict (a key is there only if its
    value converted; failed list items are None). ``path`` is the section's own (``policy``).
    """
    night, zone = c.get("night"), c.get("timezone")
    try:
        if isinstance(night, str):
            parse_window(night)
    except ValueError as e:
        errors.append((f"{path}.night", str(e)))
    try:
        if isinstance(zone, str):
            load_zone(zone)
    except ValueError as e:
        errors.append((f"{path}.timezone", str(e)))
    seen: dict[str, int] = {}
    catch_all: int | None = None
    for i, rule in enumerate(c.get("streams") or ()):
        if rule is None:
            continue
        where = f"{path}.streams[{i}]"
        match = _get(rule, "match")
        if isinstance(match, str):
            if "/" not in match and "*" not in match:
                errors.append(
                    (f"{where}.match", f"{match!r} never matches: streams are '<device>/<name>'")
                )
            elif catch_all is not None:
                errors.append(
                    (f"{where}.match", f"never reached: streams[{catch_all}] matches everything")
                )
            elif match in seen:
                errors.append((f"{where}.match", f"same match as streams[{seen[match]}]"))
            seen.setdefault(match, i)
            if match in ("*", "*/*") and catch_all is None:
                catch_all = i
        _check_rule(rule, where, errors)


def _check_rule(rule: Any, where: str, errors: list[tuple[str, str]]) -> None:
    band, rel, heartbeat = (_get(rule, k) for k in ("deadband", "deadband_rel", "heartbeat"))
    agg, privacy = _get(rule, "aggregate"), _get(rule, "privacy")
    if band is not None and rel is not None:
        errors.append((f"{where}.deadband_rel", "set deadband or deadband_rel, not both"))
    named = (("deadband", band), ("deadband_rel", rel), ("heartbeat", heartbeat))
    on_change = [k for k, v in named if v is not None]
    if privacy == "count" and on_change:
        errors.append(
            (
                f"{where}.{on_change[0]}",
                'privacy = "count" sends only event counts per window: '
                f"{on_change[0]} has nothing to act on",
            )
        )
    elif agg is not None and on_change:
        errors.append(
            (
                f"{where}.{on_change[0]}",
                f"{on_change[0]} applies to raw samples, which aggregate replaces: choose one",
            )
        )
    if agg is None:
        return
    window = _get(agg, "window")
    if isinstance(window, int) and window > 0 and DAY_S % window:
        errors.append(
            (
                f"{where}.aggregate.window",
                f"{window} s does not divide a day (86400 s): windows would not align on "
                "midnight (try 60, 300, 600, 900, 1800, 3600)",
            )
        )
    functions = _get(agg, "functions")
    if not isinstance(functions, list):
        return
    if not functions:
        errors.append((f"{where}.aggregate.functions", "must name at least one function"))
    first: dict[str, int] = {}
    for j, fn in enumerate(functions):
        if fn not in FUNCTIONS:
            known = ", ".join(FUNCTIONS)
            errors.append((f"{where}.aggregate.functions[{j}]", f"unknown {fn!r} (known: {known})"))
            continue
        if fn in first:
            errors.append(
                (f"{where}.aggregate.functions[{j}]", f"duplicate {fn!r} (also [{first[fn]}])")
            )
        first.setdefault(fn, j)
    if privacy == "count" and any(fn != "count" for fn in functions):
        errors.append(
            (
                f"{where}.aggregate.functions",
                'privacy = "count" only sends counts: functions must be ["count"]',
            )
        )


def problems(cfg: PolicyConfig, path: str = "policy") -> list[tuple[str, str]]:
    """:func:`check` on a built config (for code that builds one without the loader)."""
    errors: list[tuple[str, str]] = []
    check(msgspec.to_builtins(cfg), path, errors)
    return errors


def count_window(rule: StreamRule) -> int:
    """The window of a ``privacy = "count"`` stream."""
    return rule.aggregate.window if rule.aggregate is not None else DEFAULT_COUNT_WINDOW


def default_policy() -> PolicyConfig:
    """What a typical cabinet ships with. Each rule, and why:

    * ``*/presence*``, ``*/occupancy*``: presence detectors feed the lighting; upstream
      only needs how busy a street is, so events are counted per 15 min (privacy).
    * ``*/temperature*`` ±0.2 Cel, ``*/humidity*`` ±2 %RH, ``*/pressure*`` ±50 Pa, every
      15 min at least: about a sensor's accuracy, so what is suppressed is mostly noise.
    * ``*/illuminance*`` ±10 %: light spans five decades, an absolute band cannot fit.
    * ``*/energy*``: an index only grows; its last value per quarter-hour is the load curve
      grain (the EU settles electricity in 15-min periods), kept 31 days unsent.
    * ``*/power*``, ``*/voltage*``, ``*/current*``: min/max/mean per 5 min keep peaks and
      sags (a failing lamp, a cabinet fault) at 3 records instead of 30 polls at 10 s.
    * ``*/frequency*``: mains frequency, min/max/mean per 5 min like voltage.
    * ``*/door*``: a contact's state on change only (deadband 0), repeated hourly; the
      door-open alarm itself is an alarm record and never waits.
    * ``*/rssi*``, ``*/snr*``: radio diagnostics, mean/min/count per 15 min, kept 2 days.
    * The night (22:00-06:00, Europe/Paris) only matters to sources that set a night
      interval. 1 MB a day (about 30 MB a month, a common M2M SIM tier) holds some 140,000
      numeric records at the ~7 bytes each of a SenML-CBOR run, before compression.
    """
    week, month = 7 * DAY_S, 31 * DAY_S

    def rule(match: str, **kw: Any) -> StreamRule:
        if "aggregate" in kw:
            window, functions = kw["aggregate"]
            kw["aggregate"] = AggregateConfig(window=window, functions=list(functions))
        return StreamRule(match=match, **kw)

    return PolicyConfig(
        budget_bytes_per_day=1_000_000,
        streams=[
            rule("*/presence*", privacy="count", aggregate=(900, ["count"])),
            rule("*/occupancy*", privacy="count", aggregate=(900, ["count"])),
            rule("*/temperature*", deadband=0.2, heartbeat=900.0, ttl=float(week)),
            rule("*/humidity*", deadband=2.0, heartbeat=900.0, ttl=float(week)),
            rule("*/pressure*", deadband=50.0, heartbeat=900.0, ttl=float(week)),
            rule("*/illuminance*", deadband_rel=0.1, heartbeat=900.0, ttl=float(week)),
            rule("*/energy*", aggregate=(900, ["last"]), ttl=float(month)),
            rule("*/power*", aggregate=(300, ["min", "max", "mean"]), ttl=float(week)),
            rule("*/voltage*", aggregate=(300, ["min", "max", "mean"]), ttl=float(week)),
            rule("*/current*", aggregate=(300, ["min", "max", "mean"]), ttl=float(week)),
            rule("*/frequency*", aggregate=(300, ["min", "max", "mean"]), ttl=float(week)),
            rule("*/door*", deadband=0.0, heartbeat=3600.0, ttl=float(month)),
            rule("*/rssi*", aggregate=(900, ["mean", "min", "count"]), ttl=2.0 * DAY_S),
            rule("*/snr*", aggregate=(900, ["mean", "min", "count"]), ttl=2.0 * DAY_S),
        ],
    )


__all__ = [
    "AggregateConfig",
    "PolicyConfig",
    "StreamRule",
    "check",
    "count_window",
    "default_policy",
    "problems",
]
