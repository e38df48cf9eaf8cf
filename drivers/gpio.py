"""Cabinet digital I/O: debounced contact inputs and relay outputs, portable.

A pin is MicroPython's ``machine.Pin`` subset: ``value()`` reads the level (0/1),
``value(v)`` drives it. On a Pi ``drivers/gpio_pi.py`` gives the same over libgpiod;
in tests ``hil/gpio_sim.py`` does. Time is passed in as ``now_ms`` (any millisecond
tick; ``ticks_diff`` handles MicroPython's wrapping ticks), so nothing here sleeps or
owns a clock and the asyncio side decides when to poll.

:class:`DigitalInput` debounces a contact: a level counts only once it has stayed the
same for ``debounce_ms``. A door switch bouncing for 5 ms after it moves therefore
gives one edge, not ten alarms. Poll it faster than the debounce time (every 20-50 ms
for a 50-100 ms debounce is usual).

:class:`Relay` drives a contactor coil (or a relay board input) and, when the contactor
has an auxiliary contact wired back, checks after ``settle_ms`` that the contact
followed the command: a welded contact or an open coil is then detected, not assumed
away.
"""

try:
    from typing import TYPE_CHECKING
except ImportError:  # MicroPython has no typing module; annotations are not evaluated there
    TYPE_CHECKING = False  # type: ignore[misc]

if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Protocol

    class Pin(Protocol):
        """The part of MicroPython's ``machine.Pin`` used here."""

        def value(self, v: int | None = None) -> int | None: ...


try:  # MicroPython: millisecond ticks wrap, compare them with ticks_diff
    from time import ticks_diff as _ticks_diff  # type: ignore[attr-defined]
except ImportError:

    def _ticks_diff(a: int, b: int) -> int:  # type: ignore[misc]
        return a - b


class RelayFeedbackError(Exception):
    """A relay's feedback contact disagrees with its command after the settle time."""

    def __init__(self, relay: str, commanded: bool, feedback: bool, after_ms: int) -> None:
        super().__init__(
            f"relay {relay}: commanded {'on' if commanded else 'off'} but its feedback "
            f"contact reads {'on' if feedback else 'off'} {after_ms} ms later "
            f"({'welded contact?' if feedback else 'open coil, tripped breaker?'})"
        )
        self.relay = relay
        self.commanded = commanded
        self.feedback = feedback
        self.after_ms = after_ms


def _level(pin: "Pin") -> int:
    v = pin.value()
    return 1 if v else 0


class DigitalInput:
    """A debounced contact input.

    ``active_low``: the contact pulls the line to ground when active (the usual wiring
    with a pull-up), so a low level means active. :meth:`poll` returns the new
    debounced state (True = active) when it changes — including the first stable state
    after start — and None otherwise.
    """

    def __init__(
        self,
        pin: "Pin",
        debounce_ms: int = 50,
        active_low: bool = True,
        name: str = "input",
        ticks_diff: "Callable[[int, int], int] | None" = None,
    ) -> None:
        if debounce_ms < 0:
            raise ValueError(f"debounce_ms must be >= 0, got {debounce_ms!r}")
        self._pin = pin
        self.name = name
        self.debounce_ms = debounce_ms
        self.active_low = active_low
        self._ticks_diff = ticks_diff or _ticks_diff
        self.active = None  # type: bool | None
        self.changes = 0  # debounced edges reported, first state excluded
        self.bounces = 0  # raw level changes that did not last the debounce time
        self._raw = None  # type: int | None
        self._raw_since = 0
        self._candidate_pending = False

    def _is_active(self, level: int) -> bool:
        return (level == 0) if self.active_low else (level == 1)

    def poll(self, now_ms: int) -> "bool | None":
        level = _level(self._pin)
        if level != self._raw:
            if self._candidate_pending:
                self.bounces += 1
            self._raw = level
            self._raw_since = now_ms
            self._candidate_pending = self.active is None or self._is_active(level) != self.active
            if not self._candidate_pending or self.debounce_ms > 0:
                return None
        if not self._candidate_pending:
            return None
        if self._ticks_diff(now_ms, self._raw_since) < self.debounce_ms:
            return None
        self._candidate_pending = False
        state = self._is_active(level)
        if self.active is not None:
            self.changes += 1
        self.active = state
        return state


class Relay:
    """A relay output, with an optional feedback (auxiliary contact) input.

    ``active_high``: driving the pin high energises the coil (most relay boards with
    opto-couplers are active low: pass False). The pin is not driven until the first
    :meth:`set`, unless ``initial`` is given: the owner decides the safe state.
    """

    def __init__(
        self,
        pin: "Pin",
        active_high: bool = True,
        feedback: "Pin | None" = None,
        feedback_active_low: bool = False,
        settle_ms: int = 200,
        name: str = "relay",
        initial: "bool | None" = None,
        ticks_diff: "Callable[[int, int], int] | None" = None,
    ) -> None:
        self._pin = pin
        self.name = name
        self.active_high = active_high
        self._feedback = feedback
        self.feedback_active_low = feedback_active_low
        self.settle_ms = settle_ms
        self._ticks_diff = ticks_diff or _ticks_diff
        self.state = None  # type: bool | None
        self._commanded_at = 0
        self.mismatches = 0
        self._mismatch_reported = False
        if initial is not None:
            self.set(initial, 0)

    @property
    def has_feedback(self) -> bool:
        return self._feedback is not None

    def set(self, on: bool, now_ms: int = 0) -> None:
        on = bool(on)
        self._pin.value(1 if on == self.active_high else 0)
        if on != self.state:
            self._commanded_at = now_ms
            self._mismatch_reported = False
        self.state = on

    def on(self, now_ms: int = 0) -> None:
        self.set(True, now_ms)

    def off(self, now_ms: int = 0) -> None:
        self.set(False, now_ms)

    def feedback_state(self) -> "bool | None":
        """What the auxiliary contact says (True = closed/on), None without feedback."""
        if self._feedback is None:
            return None
        level = _level(self._feedback)
        return (level == 0) if self.feedback_active_low else (level == 1)

    def check(self, now_ms: int) -> "bool | None":
        """True when the feedback confirms the command; None while settling or without
        feedback (or before any command). Raises :class:`RelayFeedbackError` on a
        mismatch once settled — once per episode: it is raised again only after the
        feedback agreed or a new command was given."""
        if self._feedback is None or self.state is None:
            return None
        after = self._ticks_diff(now_ms, self._commanded_at)
        if after < self.settle_ms:
            return None
        feedback = self.feedback_state()
        if feedback == self.state:
            self._mismatch_reported = False
            return True
        if self._mismatch_reported:
            return False
        self._mismatch_reported = True
        self.mismatches += 1
        raise RelayFeedbackError(self.name, self.state, bool(feedback), after)
