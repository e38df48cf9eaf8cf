"""Simulated GPIO lines for the cabinet's inputs and relays, portable.

Lines are ``machine.Pin`` look-alikes (``value()`` / ``value(v)``), so
``drivers/gpio.py`` and the agent's GPIO source run on them unchanged, under CPython
and MicroPython. Time comes from a ``ticks_ms`` callable: a :class:`SimClock` for
scripted tests, ``time.monotonic`` in milliseconds for asyncio tests.

* :class:`SimInput` — a contact the test moves: ``drive(level, bounce_ms, bounces)``
  schedules the mechanical bounce a real switch makes before settling.
* :class:`SimOutput` — a line the driver drives; ``history`` keeps (ms, level).
* :class:`SimContactor` — a coil output and an auxiliary-contact input that follows it
  after ``delay_ms``, with ``welded`` / ``coil_open`` faults.
* :class:`SimGpioChip` — lines by number, as a gpiochip would hand them out.
"""

try:
    from typing import TYPE_CHECKING
except ImportError:  # MicroPython: no typing module, annotations are not evaluated
    TYPE_CHECKING = False  # type: ignore[misc]

if TYPE_CHECKING:
    from collections.abc import Callable


class SimulatorError(Exception):
    """The code under test did something the hardware would not do or allow."""


class SimClock:
    """Virtual milliseconds: time moves only when someone sleeps or advances it."""

    def __init__(self, start_ms: int = 0) -> None:
        self.now_ms = start_ms

    def ticks_ms(self) -> int:
        return self.now_ms

    def sleep_ms(self, ms: float) -> None:
        self.now_ms += int(ms)

    def advance_ms(self, ms: float) -> None:
        self.now_ms += int(ms)


class SimInput:
    """An input line whose level follows a schedule of transitions."""

    def __init__(self, ticks_ms: "Callable[[], int]", level: int = 1) -> None:
        self._ticks_ms = ticks_ms
        self._level = 1 if level else 0
        self._schedule = []  # type: list[tuple[int, int]]  # (at_ms, level), ascending
        self.reads = 0

    def drive(self, level: int, bounce_ms: int = 0, bounces: int = 0) -> None:
        """Move the contact to ``level`` now; it chatters ``bounces`` times over
        ``bounce_ms`` first (each bounce: the new level, then briefly the old one)."""
        now = self._ticks_ms()
        self._settle(now)
        self._schedule = []
        level = 1 if level else 0
        if bounces <= 0 or bounce_ms <= 0:
            self._level = level
            return
        step = bounce_ms / (2 * bounces)
        for i in range(2 * bounces + 1):
            self._schedule.append((now + int(i * step), level if i % 2 == 0 else 1 - level))
        self._settle(now)

    def _settle(self, now: int) -> None:
        while self._schedule and self._schedule[0][0] - now <= 0:
            self._level = self._schedule.pop(0)[1]

    def value(self, v: "int | None" = None) -> "int | None":
        if v is not None:
            raise SimulatorError("an input line cannot be driven by the host")
        self.reads += 1
        self._settle(self._ticks_ms())
        return self._level


class SimOutput:
    """An output line; ``history`` records every write as (ms, level)."""

    def __init__(
        self,
        ticks_ms: "Callable[[], int]",
        level: "int | None" = None,
        on_change: "Callable[[int], None] | None" = None,
    ) -> None:
        self._ticks_ms = ticks_ms
        self.level = level  # None: never driven (floating, the board's pull decides)
        self.history = []  # type: list[tuple[int, int]]
        self._on_change = on_change

    def value(self, v: "int | None" = None) -> "int | None":
        if v is None:
            return 0 if self.level is None else self.level
        self.level = 1 if v else 0
        self.history.append((self._ticks_ms(), self.level))
        if self._on_change is not None:
            self._on_change(self.level)
        return None


class SimContactor:
    """A contactor: ``coil`` (output) and ``aux`` (input, 1 = contact closed).

    The auxiliary contact follows the coil ``delay_ms`` after each change. ``welded``
    keeps it closed whatever the coil does; ``coil_open`` keeps it open. ``coil_active``
    is the coil level that energises it (1 for active-high drivers).
    """

    def __init__(
        self, ticks_ms: "Callable[[], int]", delay_ms: int = 30, coil_active: int = 1
    ) -> None:
        self._ticks_ms = ticks_ms
        self.delay_ms = delay_ms
        self.coil_active = coil_active
        self.welded = False
        self.coil_open = False
        self.coil = SimOutput(ticks_ms, on_change=self._on_coil)
        self.aux = SimInput(ticks_ms, level=0)
        self._energised = False
        self._changed_at = 0

    def _on_coil(self, level: int) -> None:
        energised = level == self.coil_active
        if energised != self._energised:
            self._energised = energised
            self._changed_at = self._ticks_ms()

    @property
    def closed(self) -> bool:
        """Whether the main contacts are closed now (what the street lights see)."""
        if self.welded:
            return True
        if self.coil_open:
            return False
        if self._ticks_ms() - self._changed_at < self.delay_ms:
            return not self._energised
        return self._energised

    def value(self, v: "int | None" = None) -> "int | None":
        """The auxiliary contact as an input line."""
        if v is not None:
            raise SimulatorError("the auxiliary contact is an input")
        return 1 if self.closed else 0


class SimGpioChip:
    """Numbered lines, the way a gpiochip hands them out; a line is taken once."""

    def __init__(self, ticks_ms: "Callable[[], int] | None" = None) -> None:
        if ticks_ms is None:
            ticks_ms = SimClock().ticks_ms
        self.ticks_ms = ticks_ms
        self.lines = {}  # type: dict[int, object]

    def _claim(self, line: int, pin: object) -> None:
        if line in self.lines:
            raise SimulatorError(f"line {line} requested twice (busy)")
        self.lines[line] = pin

    def input(self, line: int, level: int = 1) -> SimInput:
        pin = SimInput(self.ticks_ms, level)
        self._claim(line, pin)
        return pin

    def output(self, line: int) -> SimOutput:
        pin = SimOutput(self.ticks_ms)
        self._claim(line, pin)
        return pin

    def contactor(
        self, coil_line: int, aux_line: int, delay_ms: int = 30, coil_active: int = 1
    ) -> SimContactor:
        contactor = SimContactor(self.ticks_ms, delay_ms, coil_active)
        self._claim(coil_line, contactor.coil)
        self._claim(aux_line, contactor)
        return contactor

    def pin(self, line: int) -> object:
        """The line's pin, for the code under test (what gpio_pi would return)."""
        if line not in self.lines:
            raise SimulatorError(f"line {line} is not wired in this simulation")
        return self.lines[line]
