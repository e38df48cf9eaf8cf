"""GPIO lines through libgpiod v2 (``gpiod`` >= 2.1, the ``[pi]`` extra) as ``machine.Pin``.

:class:`GpiodLines` requests a set of lines of one chip in a single request (inputs with
their bias, outputs with their initial level) and hands out :class:`GpiodPin` objects
with ``value()`` / ``value(v)`` for the portable ``drivers/gpio.py``. Levels are the
physical ones: active-low handling stays in the portable core, so the same config means
the same thing on a MicroPython board.

Debouncing is done by polling in the portable core (every 20-50 ms); the kernel's edge
events are not used, which keeps one code path for both platforms.

An output whose initial level is None keeps the level the line has now (read through a
short as-is request first): restarting the agent must not switch a street off at night.
gpiod is imported only when lines are requested.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .sx127x_pi import HardwareLibraryMissing

__all__ = ["BIASES", "GpiodLines", "GpiodPin", "HardwareLibraryMissing"]

BIASES = ("as-is", "pull-up", "pull-down", "disabled")


def _gpiod() -> Any:
    try:
        import gpiod
    except ImportError as e:
        raise HardwareLibraryMissing(
            "the 'gpiod' package (libgpiod v2 bindings, >= 2.1) is needed for GPIO on this "
            "machine: install the [pi] extra (pip install 'passerelle[pi]')"
        ) from e
    return gpiod


class GpiodPin:
    """One requested line as a ``machine.Pin``: 1 is the physical high level."""

    def __init__(self, lines: GpiodLines, line: int, output: bool) -> None:
        self._lines = lines
        self.line = line
        self.output = output

    def value(self, v: int | None = None) -> int | None:
        if v is None:
            return self._lines.get(self.line)
        if not self.output:
            raise ValueError(f"{self._lines.chip} line {self.line} is requested as an input")
        self._lines.set(self.line, v)
        return None


class GpiodLines:
    """Inputs (line -> bias) and outputs (line -> initial 0/1, None = keep) of a chip."""

    def __init__(
        self,
        chip: str,
        *,
        inputs: Mapping[int, str] | None = None,
        outputs: Mapping[int, int | None] | None = None,
        consumer: str = "passerelle",
    ) -> None:
        gpiod = _gpiod()
        from gpiod.line import Bias, Direction, Value

        self._value = Value
        self.chip = chip
        inputs = dict(inputs or {})
        outputs = dict(outputs or {})
        both = set(inputs) & set(outputs)
        if both:
            raise ValueError(f"{chip}: lines {sorted(both)} requested as input and output")
        biases = {
            "as-is": Bias.AS_IS,
            "pull-up": Bias.PULL_UP,
            "pull-down": Bias.PULL_DOWN,
            "disabled": Bias.DISABLED,
        }
        config: dict[Any, Any] = {}
        for line, bias in inputs.items():
            if bias not in biases:
                raise ValueError(f"{chip} line {line}: bias {bias!r}, expected one of {BIASES}")
            config[line] = gpiod.LineSettings(direction=Direction.INPUT, bias=biases[bias])
        kept = self._current_levels(gpiod, [n for n, v in outputs.items() if v is None])
        for line, initial in outputs.items():
            level = kept[line] if initial is None else initial
            config[line] = gpiod.LineSettings(
                direction=Direction.OUTPUT,
                output_value=Value.ACTIVE if level else Value.INACTIVE,
            )
        try:
            self._request = gpiod.request_lines(chip, consumer=consumer, config=config)
        except FileNotFoundError as e:
            raise OSError(e.errno, f"no GPIO chip {chip}") from e
        except OSError as e:
            raise OSError(
                e.errno,
                f"cannot request lines {sorted(config)} of {chip}: "
                f"{e.strerror} (used by another program?)",
            ) from e
        self._outputs = set(outputs)

    def _current_levels(self, gpiod: Any, lines: list[int]) -> dict[int, int]:
        if not lines:
            return {}
        try:
            request = gpiod.request_lines(
                self.chip, consumer="passerelle-probe", config={tuple(lines): None}
            )
        except FileNotFoundError as e:
            raise OSError(e.errno, f"no GPIO chip {self.chip}") from e
        try:
            return {n: 1 if request.get_value(n) == self._value.ACTIVE else 0 for n in lines}
        finally:
            request.release()

    def get(self, line: int) -> int:
        return 1 if self._request.get_value(line) == self._value.ACTIVE else 0

    def set(self, line: int, level: int) -> None:
        self._request.set_value(line, self._value.ACTIVE if level else self._value.INACTIVE)

    def pin(self, line: int) -> GpiodPin:
        return GpiodPin(self, line, line in self._outputs)

    def release(self) -> None:
        self._request.release()
