"""Data sobriety: the gateway decides locally what is worth storing and sending.

The agent passes every batch a source emits through :meth:`Sobriety.process` before the
store; what comes back is what to store now. Streams are ``(device, name)`` pairs, written
``<device>/<name>``; each is governed by the first rule of ``[policy].streams`` whose
``match`` glob (:func:`fnmatch.fnmatchcase`: ``*`` also spans ``/``) matches it, and by none
if no rule matches (then records pass through untouched). The match is cached per stream,
so the common case is one dict lookup and one comparison per record.

Order of the rules inside a stream (see the policy modules for each):

1. ``Priority.ALARM`` batches pass untouched, always: no policy delays or drops an alarm.
2. Records whose time is not a finite number are counted as ``unsupported`` and pass
   untouched (the store rejects them with its own error), except in privacy streams,
   where they are dropped: they fit no window and must not leave raw.
3. ``privacy = "count"``: the record becomes one event in its window's count
   (:mod:`.privacy`); the raw value is never returned.
4. ``privacy = "strict"``: a value that looks like an identifier is refused and counted.
5. ``aggregate``: finite numbers are folded into aligned windows (:mod:`.aggregate`); other
   values (text states, booleans, NaN) pass through raw. A sample older than its stream's
   current window passes through raw and is counted as ``late``.
6. ``deadband`` / ``deadband_rel`` / ``heartbeat``: send-on-delta (:mod:`.deadband`).

A record the engine fails on (not a Record, an unhashable name: a source bug) is counted
in ``errors``, logged once per exception type, and passed through untouched, or dropped if
a privacy rule matches it: a policy bug must neither lose a measurement nor leak one.

Windows close when a later sample of the same stream arrives (its records come back from
that :meth:`~Sobriety.process` call) or in :meth:`~Sobriety.tick`, which the agent calls
every few seconds: it closes windows that ended ``late_grace`` seconds ago or more, so a
sample measured just before a window's end but emitted just after still lands in it.

``tick`` does **not** repeat a stream's last value when its heartbeat expires with no new
sample: the heartbeat means "send at least this often *while readings come*". A record
the source did not produce would be a measurement nobody took; a silent source shows in
its own health counters instead.

Savings (invariant 6, "sobriety is measured") are cumulative counters since start, per
cause (``deadband``, ``aggregate``, ``privacy``); :meth:`~Sobriety.savings_records` gives
them as records of device ``gateway``:

==================================  ====  =================================================
name                                unit  value
==================================  ====  =================================================
``sobriety/suppressed/<cause>``           raw records not stored, minus the window
                                          records that replaced them (``aggregate``, and
                                          counts of ``privacy = "count"``): negative if a
                                          rule costs more records than it saves
``sobriety/bytes_avoided/<cause>``  B     SenML-CBOR bytes of the suppressed records minus
                                          those of their replacements (estimate, see below)
``sobriety/privacy/identifiers``          values that looked like identifiers (refused in
                                          ``strict`` streams, only counted in ``count`` ones)
``sobriety/budget/spent``           B     today's upstream bytes (if a budget is set)
``sobriety/budget/refused``               requests the daily budget refused, all priorities
``sobriety/budget/refused_bytes``   B     their bytes
==================================  ====  =================================================

Counters restart at zero with the agent; a consumer differences them and treats a drop as
a restart. Bytes are an **estimate before compression**: suppressed records (and their
replacements) are encoded with :func:`passerelle.senml.encode_pack` in packs of up to
:data:`ESTIMATE_CHUNK` records, as the uplink batches them; zlib would shrink both sides.
Privacy records are estimated within the :meth:`~Sobriety.process` call that brought them,
so no raw value of a privacy stream is held after the call returns.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from fnmatch import translate
from typing import Any

from ..model import Priority, Record
from ..senml import device_base_name, encode_pack
from .aggregate import FUNCTIONS, WindowAggregator
from .budget import DailyBudget
from .config import PolicyConfig, StreamRule, count_window, problems
from .deadband import Deadband, is_number
from .privacy import identifier_kind
from .schedule import SamplingSchedule

log = logging.getLogger("passerelle.policy.sobriety")

CAUSES = ("deadband", "aggregate", "privacy")
GATEWAY_DEVICE = "gateway"
ESTIMATE_CHUNK = 256
# Streams no rule matches are remembered too (as None), up to this many; past it they are
# matched again on each record, so a flood of new names cannot grow memory without bound.
MAX_UNMATCHED_CACHED = 65536
_DERIVED = re.compile(r"^(.*)/(" + "|".join(FUNCTIONS) + r")$")


class _Stream:
    """What the engine keeps per governed stream."""

    __slots__ = ("aggregator", "deadband", "priority", "privacy", "rule")

    def __init__(self, device: str, name: str, rule: StreamRule) -> None:
        self.rule = rule
        self.privacy = rule.privacy
        self.priority = Priority.TELEMETRY
        self.aggregator: WindowAggregator | None = None
        self.deadband: Deadband | None = None
        if rule.privacy == "count":
            self.aggregator = WindowAggregator(device, name, count_window(rule), ("count",))
        elif rule.aggregate is not None:
            agg = rule.aggregate
            self.aggregator = WindowAggregator(device, name, agg.window, agg.functions)
        elif rule.deadband is not None or rule.deadband_rel is not None or rule.heartbeat:
            self.deadband = Deadband(rule.deadband, rule.deadband_rel, rule.heartbeat)


class _Ledger:
    """One cause's savings: counts now, bytes estimated by the chunk."""

    __slots__ = ("bytes_avoided", "removed", "replaced", "suppressed")

    def __init__(self) -> None:
        self.suppressed = 0
        self.bytes_avoided = 0
        self.removed: list[Record] = []  # suppressed, awaiting their size estimate
        self.replaced: list[Record] = []  # emitted in their place, awaiting theirs


class Sobriety:
    """The data sobriety engine; see the module docstring.

    ``cfg`` is the ``[policy]`` section (checked again here: a config built in code gets
    the same errors as one loaded from TOML, as one ValueError). ``clock`` gives Unix time
    for :meth:`tick` and :meth:`savings_records` called without ``now``. ``gateway_id``
    names the base name used to estimate bytes. ``late_grace`` is how long after a window's
    end :meth:`tick` waits before closing it.
    """

    def __init__(
        self,
        cfg: PolicyConfig,
        clock: Callable[[], float] = time.time,
        *,
        gateway_id: str = "passerelle",
        late_grace: float = 10.0,
    ) -> None:
        errors = problems(cfg)
        if errors:
            raise ValueError("; ".join(f"{path}: {why}" for path, why in errors))
        if not (is_number(late_grace) and 0 <= late_grace < math.inf):
            raise ValueError(f"late_grace must be a finite number >= 0, got {late_grace!r}")
        self.cfg = cfg
        self._clock = clock
        self.late_grace = float(late_grace)
        self._rules = [(re.compile(translate(r.match)).match, r) for r in cfg.rules()]
        self._streams: dict[tuple[str, str], _Stream | None] = {}
        self._windowed: list[_Stream] = []
        self._base_name = lambda device: device_base_name(gateway_id, device)
        self._ledgers = {cause: _Ledger() for cause in CAUSES}
        self.budget: DailyBudget | None = None
        if cfg.budget_bytes_per_day is not None:
            self.budget = DailyBudget(cfg.budget_bytes_per_day, cfg.timezone)
        self.records_in = 0
        self.records_out = 0
        self.late = 0
        self.unsupported = 0
        self.errors = 0
        self._logged: set[str] = set()
        self.identifiers: dict[str, int] = {}

    # ------------------------------------------------------------------ rules

    def rule_for(self, device: str, name: str) -> StreamRule | None:
        """The first rule whose glob matches ``<device>/<name>``, or None."""
        key = f"{device}/{name}"
        for match, rule in self._rules:
            if match(key):
                return rule
        return None

    def ttl_for(self, device: str, name: str) -> float | None:
        """Seconds an unsent record of this stream is worth keeping (None: the store's).

        A window record (``temperature/mean``) takes its raw stream's rule when no rule
        matches its own name.
        """
        rule = self.rule_for(device, name)
        if rule is None and (m := _DERIVED.match(name)):
            rule = self.rule_for(device, m[1])
        return None if rule is None else rule.ttl

    def schedule(self, interval: float, night_interval: float | None = None) -> SamplingSchedule:
        """A source's polling schedule under this policy's night and time zone."""
        return SamplingSchedule(interval, night_interval, self.cfg.night, self.cfg.timezone)

    def _stream(self, key: tuple[str, str]) -> _Stream | None:
        rule = self.rule_for(*key)
        st = None if rule is None else _Stream(key[0], key[1], rule)
        if st is not None or len(self._streams) < MAX_UNMATCHED_CACHED:
            self._streams[key] = st
        if st is not None and st.aggregator is not None:
            self._windowed.append(st)
        return st

    # ------------------------------------------------------------------ the path

    def process(self, records: Sequence[Record], priority: Priority) -> list[Record]:
        """What to store now of a batch emitted at ``priority``."""
        if priority == Priority.ALARM or not self._rules:
            # Nothing to decide: no per-record work on the emit path of a gateway whose
            # [policy] has no rules (the common case before an operator opts in).
            self.records_in += len(records)
            self.records_out += len(records)
            return list(records)
        out: list[Record] = []
        privacy_seen = False
        streams = self._streams
        for rec in records:
            try:
                key = (rec.device, rec.name)
                st = streams.get(key, _UNSEEN)
                if st is _UNSEEN:
                    st = self._stream(key)
                if st is None:
                    out.append(rec)
                    continue
                assert isinstance(st, _Stream)
                st.priority = priority
                t = rec.time
                if not (is_number(t) and math.isfinite(t)):
                    self.unsupported += 1
                    if st.privacy is None:
                        out.append(rec)
                    else:  # cannot be placed in a window, and must not leave raw
                        privacy_seen = True
                        self._suppress("privacy", rec)
                    continue
                if st.privacy is not None:
                    privacy_seen = True
                    if self._privacy(st, rec, out):
                        continue
                value = rec.value
                agg = st.aggregator
                if agg is not None and is_number(value) and math.isfinite(value):  # type: ignore[arg-type]
                    closed = agg.add(value, t, rec.unit)  # type: ignore[arg-type]
                    if closed is None:
                        self.late += 1
                        out.append(rec)
                    else:
                        self._suppress("aggregate", rec)
                        self._replace("aggregate", closed, out)
                elif st.deadband is not None and not st.deadband.offer(value, t):
                    self._suppress("deadband", rec)
                else:
                    out.append(rec)
            except Exception as exc:  # a policy bug must not lose what a source measured
                self._failed(rec, exc, out)
        if privacy_seen:
            self._estimate(self._ledgers["privacy"])
        self.records_in += len(records)
        self.records_out += len(out)
        return out

    def _failed(self, rec: Any, exc: Exception, out: list[Record]) -> None:
        """A record the engine could not handle: counted, logged once per cause, and
        passed through untouched, unless it belongs to a privacy stream (then dropped)."""
        self.errors += 1
        cause = type(exc).__name__
        if cause not in self._logged:
            self._logged.add(cause)
            log.error("sobriety: cannot handle %r: %s: %s", rec, cause, exc)
        try:
            rule = self.rule_for(rec.device, rec.name)
        except Exception:  # not even a Record: the store will say what is wrong with it
            rule = None
        if rule is None or rule.privacy is None:
            out.append(rec)

    def _privacy(self, st: _Stream, rec: Record, out: list[Record]) -> bool:
        """Apply the stream's privacy rule; True when the record was consumed."""
        kind = identifier_kind(rec.value)
        if kind is not None:
            self.identifiers[kind] = self.identifiers.get(kind, 0) + 1
        if st.privacy == "count":
            agg = st.aggregator
            assert agg is not None
            # The event's value never enters the window: only that it happened.
            closed = agg.add(0, rec.time, None)
            if closed is None:
                self.late += 1
                closed = agg.add_to_current(0, rec.time, None)
            self._suppress("privacy", rec)
            self._replace("privacy", closed, out)
            return True
        if kind is not None:
            self._suppress("privacy", rec)
            return True
        return False

    def tick(self, now: float | None = None) -> dict[Priority, list[Record]]:
        """Windows that ended at least ``late_grace`` seconds before ``now``, by the
        priority their stream was last emitted at (store each list at its priority)."""
        cutoff = (self._clock() if now is None else now) - self.late_grace
        out: dict[Priority, list[Record]] = {}
        for st in self._windowed:
            agg = st.aggregator
            assert agg is not None
            end = agg.open_until
            if end is None or end > cutoff:
                continue
            closed = agg.close_ended(cutoff)
            cause = "privacy" if st.privacy == "count" else "aggregate"
            self._replace(cause, closed, out.setdefault(st.priority, []))
        self.records_out += sum(len(v) for v in out.values())
        return out

    # ------------------------------------------------------------------ savings

    def _suppress(self, cause: str, rec: Record) -> None:
        ledger = self._ledgers[cause]
        ledger.suppressed += 1
        ledger.removed.append(rec)
        if len(ledger.removed) >= ESTIMATE_CHUNK:
            ledger.bytes_avoided += self._chunks_bytes(ledger.removed)

    def _replace(self, cause: str, records: list[Record], out: list[Record]) -> None:
        if not records:
            return
        out.extend(records)
        ledger = self._ledgers[cause]
        ledger.suppressed -= len(records)
        ledger.replaced.extend(records)
        if len(ledger.replaced) >= ESTIMATE_CHUNK:
            ledger.bytes_avoided -= self._chunks_bytes(ledger.replaced)

    def _chunks_bytes(self, buffer: list[Record], everything: bool = False) -> int:
        """Size the buffer's whole chunks (and the rest if ``everything``), removing them."""
        total = 0
        while len(buffer) >= ESTIMATE_CHUNK or (everything and buffer):
            total += self._pack_bytes(buffer[:ESTIMATE_CHUNK])
            del buffer[:ESTIMATE_CHUNK]
        return total

    def _pack_bytes(self, records: list[Record]) -> int:
        if not records:
            return 0
        try:
            return len(encode_pack(records, self._base_name))
        except (TypeError, ValueError):
            # A value or time SenML cannot carry (a source bug the store reports): size
            # the records that encode, one by one, rather than lose the whole chunk.
            if len(records) == 1:
                return 0
            return sum(self._pack_bytes([r]) for r in records)

    def _estimate(self, ledger: _Ledger) -> None:
        ledger.bytes_avoided += self._chunks_bytes(ledger.removed, everything=True)
        ledger.bytes_avoided -= self._chunks_bytes(ledger.replaced, everything=True)

    def _flush(self) -> None:
        for ledger in self._ledgers.values():
            self._estimate(ledger)

    def savings(self) -> dict[str, dict[str, int]]:
        """``{cause: {"suppressed": n, "bytes_avoided": b}}`` (estimates flushed first)."""
        self._flush()
        return {
            cause: {"suppressed": led.suppressed, "bytes_avoided": led.bytes_avoided}
            for cause, led in self._ledgers.items()
        }

    def savings_records(self, now: float | None = None) -> list[Record]:
        """The savings as cumulative counters of device ``gateway`` (store them as
        ``Priority.DIAGNOSTIC``); names in the module docstring."""
        t = self._clock() if now is None else now
        rows: list[tuple[str, int, str | None]] = []
        for cause, s in self.savings().items():
            rows.append((f"suppressed/{cause}", s["suppressed"], None))
            rows.append((f"bytes_avoided/{cause}", s["bytes_avoided"], "B"))
        rows.append(("privacy/identifiers", sum(self.identifiers.values()), None))
        if self.budget is not None:
            b = self.budget
            b.roll(t)  # a new day's spend starts at zero even if nothing was sent yet
            rows.append(("budget/spent", b.spent, "B"))
            rows.append(("budget/refused", sum(b.refused.values()), None))
            rows.append(("budget/refused_bytes", sum(b.refused_bytes.values()), "B"))
        return [Record(GATEWAY_DEVICE, f"sobriety/{n}", v, t, u) for n, v, u in rows]

    def stats(self) -> dict[str, Any]:
        """For the health message: counters, savings, open windows, the budget."""
        governed = sum(1 for st in self._streams.values() if st is not None)
        return {
            "rules": len(self._rules),
            "streams": governed,
            "open_windows": sum(
                1 for st in self._windowed if st.aggregator and st.aggregator.open_until
            ),
            "records_in": self.records_in,
            "records_out": self.records_out,
            "late": self.late,
            "unsupported": self.unsupported,
            "errors": self.errors,
            "identifiers": dict(self.identifiers),
            "savings": self.savings(),
            "budget": None if self.budget is None else self.budget.stats(),
        }


_UNSEEN: Any = object()

__all__ = ["CAUSES", "GATEWAY_DEVICE", "Sobriety"]
