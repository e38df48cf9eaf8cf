"""The cabinet's digital I/O as a source: debounced inputs, alarms, relays.

:class:`GpioSource` polls its inputs every ``interval`` (20-50 ms: the debouncing step)
through the portable ``drivers.gpio`` and emits only on debounced changes, so a
bouncing door switch gives one record, not ten:

* an input's state is a boolean record named after it (``door`` = true when active);
* an input with ``alarm = true`` emits at :attr:`Priority.ALARM`, plus an ``alarm``
  text record ``<name>-open`` when it becomes active and ``<name>-closed`` when it
  clears (tamper contacts are active when the door is open). The first stable state
  after start is emitted too: a door found open at boot is an alarm;
* a relay's commanded state is a boolean record named after it, emitted when it
  changes; with a feedback contact, a disagreement after ``settle_ms`` emits an alarm
  ``<name>-feedback-mismatch`` once per episode and is counted.

Relays are driven by whoever holds their handle, :meth:`GpioSource.relay` (the lighting
engine): commands are plain method calls in the event loop, GPIO writes being
non-blocking ioctls.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from drivers.gpio import DigitalInput, Relay, RelayFeedbackError

from ..logs import log_event
from ..model import Priority, Record, check_name
from ..sources import Emit

__all__ = ["GpioSource", "InputSpec", "PinSource", "RelayHandle", "RelaySpec"]

log = logging.getLogger("passerelle.cabinet.gpio")


class PinSource(Protocol):
    """Where lines come from: ``drivers.gpio_pi.GpiodLines`` or ``hil.gpio_sim``."""

    def pin(self, line: int) -> Any: ...


class InputSpec(NamedTuple):
    name: str
    line: int
    active_low: bool = True
    debounce_ms: int = 50
    alarm: bool = False
    bias: str = "as-is"


class RelaySpec(NamedTuple):
    name: str
    line: int
    active_high: bool = True
    initial: str = "keep"  # keep | off | on
    feedback_line: int | None = None
    feedback_active_low: bool = False
    settle_ms: int = 200


def _monotonic_ms() -> int:
    return int(time.monotonic() * 1000)


class RelayHandle:
    """A relay as the lighting engine sees it: ``on()``, ``off()``, ``state``."""

    def __init__(self, relay: Relay, ticks_ms: Callable[[], int]) -> None:
        self._relay = relay
        self._ticks_ms = ticks_ms

    @property
    def name(self) -> str:
        return self._relay.name

    @property
    def state(self) -> bool | None:
        """The commanded state (None before any command)."""
        return self._relay.state

    @property
    def feedback(self) -> bool | None:
        """What the auxiliary contact says now (None without one)."""
        return self._relay.feedback_state()

    def set(self, on: bool) -> None:
        self._relay.set(on, self._ticks_ms())

    def on(self) -> None:
        self.set(True)

    def off(self) -> None:
        self.set(False)


class GpioSource:
    """Debounced inputs and relays of one GPIO chip; see the module docstring."""

    def __init__(
        self,
        name: str,
        pins: PinSource,
        *,
        inputs: Sequence[InputSpec] = (),
        relays: Sequence[RelaySpec] = (),
        interval: float = 0.025,
        device: str | None = None,
        priority: Priority = Priority.TELEMETRY,
        ticks_ms: Callable[[], int] = _monotonic_ms,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = check_name(name)
        self.device = check_name(device or name)
        if not interval > 0:
            raise ValueError(f"interval must be > 0 s, got {interval}")
        self.interval = float(interval)
        self.priority = Priority(priority)
        self._ticks_ms = ticks_ms
        self._wall = wall
        self._pins = pins
        names: set[str] = set()
        for label in [i.name for i in inputs] + [r.name for r in relays]:
            check_name(label)
            if label in names:
                raise ValueError(f"duplicate input/relay name {label!r}")
            names.add(label)
        self._inputs = [
            (spec, DigitalInput(pins.pin(spec.line), spec.debounce_ms, spec.active_low, spec.name))
            for spec in inputs
        ]
        self._relays: dict[str, Relay] = {}
        self._relay_specs: dict[str, RelaySpec] = {}
        self._reported: dict[str, bool | None] = {}
        for spec in relays:
            feedback = None if spec.feedback_line is None else pins.pin(spec.feedback_line)
            relay = Relay(
                pins.pin(spec.line),
                spec.active_high,
                feedback,
                spec.feedback_active_low,
                spec.settle_ms,
                spec.name,
            )
            if spec.initial == "keep":
                # Re-drive the level the line already has, so the relay's state is known
                # without switching anything.
                level = pins.pin(spec.line).value()
                relay.set(bool(level) == spec.active_high, ticks_ms())
            else:
                relay.set(spec.initial == "on", ticks_ms())
            self._relays[spec.name] = relay
            self._relay_specs[spec.name] = spec
            self._reported[spec.name] = None
        self.polls = 0
        self.produced = 0
        self.alarms = 0
        self.feedback_mismatches = 0

    @classmethod
    def from_config(cls, cfg: Any, pins: PinSource | None = None) -> GpioSource:
        inputs = [
            InputSpec(i.name, i.line, i.active_low, i.debounce_ms, i.alarm, i.bias)
            for i in cfg.inputs
        ]
        relays = [
            RelaySpec(
                r.name,
                r.line,
                r.active_high,
                r.initial,
                r.feedback_line,
                r.feedback_active_low,
                r.settle_ms,
            )
            for r in cfg.relays
        ]
        if pins is None:
            from drivers.gpio_pi import GpiodLines

            lines_in = {i.line: i.bias for i in inputs}
            lines_in.update(
                {r.feedback_line: "as-is" for r in relays if r.feedback_line is not None}
            )
            lines_out: dict[int, int | None] = {}
            for r in relays:
                if r.initial == "keep":
                    lines_out[r.line] = None
                else:
                    lines_out[r.line] = 1 if (r.initial == "on") == r.active_high else 0
            pins = GpiodLines(
                cfg.chip, inputs=lines_in, outputs=lines_out, consumer=f"passerelle-{cfg.name}"
            )
        return cls(
            cfg.name,
            pins,
            inputs=inputs,
            relays=relays,
            interval=cfg.interval,
            device=getattr(cfg, "device", None),
            priority=getattr(cfg, "priority_level", Priority.TELEMETRY),
        )

    def relay(self, name: str) -> RelayHandle:
        """The handle of relay ``name`` (KeyError naming the known relays otherwise)."""
        try:
            return RelayHandle(self._relays[name], self._ticks_ms)
        except KeyError:
            known = ", ".join(sorted(self._relays)) or "none"
            raise KeyError(f"no relay {name!r} in source {self.name!r} (relays: {known})") from None

    def input_state(self, name: str) -> bool | None:
        for spec, inp in self._inputs:
            if spec.name == name:
                return inp.active
        raise KeyError(f"no input {name!r} in source {self.name!r}")

    # --- polling -------------------------------------------------------------------

    def poll(self) -> tuple[list[Record], list[Record]]:
        """One pass over inputs and relays: (alarm records, other records)."""
        self.polls += 1
        now = self._ticks_ms()
        ts = self._wall()
        alarms: list[Record] = []
        normal: list[Record] = []
        for spec, inp in self._inputs:
            state = inp.poll(now)
            if state is None:
                continue
            record = Record(self.device, spec.name, state, ts, None)
            if spec.alarm:
                alarms.append(record)
                if state or inp.changes:  # a door found closed at start is no event
                    text = f"{spec.name}-open" if state else f"{spec.name}-closed"
                    alarms.append(Record(self.device, "alarm", text, ts, None))
                    if state:
                        self.alarms += 1
                        log_event(
                            log,
                            logging.WARNING,
                            "cabinet.gpio.alarm",
                            "%s: %s active",
                            self.device,
                            spec.name,
                            input=spec.name,
                        )
            else:
                normal.append(record)
        for name, relay in self._relays.items():
            if relay.state is not None and relay.state != self._reported[name]:
                self._reported[name] = relay.state
                normal.append(Record(self.device, name, relay.state, ts, None))
            try:
                relay.check(now)
            except RelayFeedbackError as e:
                self.feedback_mismatches += 1
                alarms.append(Record(self.device, "alarm", f"{name}-feedback-mismatch", ts, None))
                log_event(log, logging.ERROR, "cabinet.gpio.relay", "%s", e, relay=name)
        return alarms, normal

    async def run(self, emit: Emit) -> None:
        interval = self.interval
        next_at = time.monotonic()
        while True:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            alarms, normal = self.poll()
            if alarms:
                await emit(alarms, Priority.ALARM)
                self.produced += len(alarms)
            if normal:
                await emit(normal, self.priority)
                self.produced += len(normal)
            next_at = max(next_at + interval, time.monotonic())

    def stats(self) -> dict[str, Any]:
        return {
            "polls": self.polls,
            "records": self.produced,
            "alarms": self.alarms,
            "feedback_mismatches": self.feedback_mismatches,
            "inputs": {
                spec.name: {"active": inp.active, "changes": inp.changes, "bounces": inp.bounces}
                for spec, inp in self._inputs
            },
            "relays": {
                name: {
                    "state": relay.state,
                    "feedback": relay.feedback_state(),
                    "mismatches": relay.mismatches,
                }
                for name, relay in self._relays.items()
            },
        }
