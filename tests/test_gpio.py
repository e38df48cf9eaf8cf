"""Debounced inputs and relays (drivers/gpio.py) on simulated lines, and the GPIO config."""

from __future__ import annotations

import pytest

from drivers.gpio import DigitalInput, Relay, RelayFeedbackError
from hil.gpio_sim import SimClock, SimGpioChip, SimulatorError
from passerelle.cabinet import config as cabinet_config


def run_input(inp: DigitalInput, clock: SimClock, ms: int, step: int = 5) -> list[tuple[int, bool]]:
    """Poll every ``step`` ms for ``ms``; the (time, state) of each reported edge."""
    edges = []
    for _ in range(ms // step):
        clock.advance_ms(step)
        state = inp.poll(clock.ticks_ms())
        if state is not None:
            edges.append((clock.ticks_ms(), state))
    return edges


def test_bouncing_contact_gives_one_edge() -> None:
    clock = SimClock()
    chip = SimGpioChip(clock.ticks_ms)
    door = chip.input(17, level=0)  # closed: the switch holds the line low (active low)
    inp = DigitalInput(chip.pin(17), debounce_ms=50, active_low=False)
    assert run_input(inp, clock, 100) == [(55, False)]  # first poll at 5 ms, +50
    door.drive(1, bounce_ms=12, bounces=5)  # opens, chattering 5 times over 12 ms
    edges = run_input(inp, clock, 300, step=1)
    assert len(edges) == 1 and edges[0][1] is True
    assert 100 + 12 + 50 <= edges[0][0] <= 100 + 12 + 50 + 1  # settled, then debounced
    assert inp.bounces >= 4 and inp.changes == 1
    door.drive(0, bounce_ms=8, bounces=3)
    assert [state for _, state in run_input(inp, clock, 200)] == [False]


def test_short_glitch_is_ignored_and_active_low() -> None:
    clock = SimClock()
    chip = SimGpioChip(clock.ticks_ms)
    line = chip.input(4, level=1)
    inp = DigitalInput(chip.pin(4), debounce_ms=30, active_low=True)
    assert run_input(inp, clock, 50) == [(35, False)]  # high: inactive when active low
    line.drive(0)
    clock.advance_ms(20)
    inp.poll(clock.ticks_ms())
    line.drive(1)  # back before the debounce time: a glitch
    assert run_input(inp, clock, 100) == []
    line.drive(0)
    assert [s for _, s in run_input(inp, clock, 100)] == [True]


def test_debounce_handles_wrapping_ticks() -> None:
    chip = SimGpioChip()
    chip.input(1, level=1)
    wrap = 1 << 30

    def ticks_diff(a: int, b: int) -> int:  # MicroPython's ticks_diff for 2**30 ticks
        return ((a - b + wrap // 2) % wrap) - wrap // 2

    inp = DigitalInput(chip.pin(1), debounce_ms=40, active_low=False, ticks_diff=ticks_diff)
    assert inp.poll(wrap - 10) is None
    assert inp.poll(10) is None  # 20 ms later, across the wrap
    assert inp.poll(30) is True  # 40 ms


def test_relay_feedback_confirms_then_detects_a_welded_contact() -> None:
    clock = SimClock()
    chip = SimGpioChip(clock.ticks_ms)
    contactor = chip.contactor(27, 22, delay_ms=30)
    relay = Relay(chip.pin(27), feedback=chip.pin(22), settle_ms=100, name="contactor")
    relay.on(clock.ticks_ms())
    assert contactor.coil.level == 1
    clock.advance_ms(50)
    assert relay.check(clock.ticks_ms()) is None  # still settling
    clock.advance_ms(60)
    assert relay.check(clock.ticks_ms()) is True
    contactor.welded = True
    relay.off(clock.ticks_ms())
    clock.advance_ms(150)
    with pytest.raises(RelayFeedbackError, match="contactor.*off.*welded") as mismatch:
        relay.check(clock.ticks_ms())
    assert mismatch.value.commanded is False and mismatch.value.feedback is True
    assert relay.check(clock.ticks_ms()) is False  # reported once per episode
    assert relay.mismatches == 1
    contactor.welded = False
    assert relay.check(clock.ticks_ms()) is True


def test_relay_open_coil_and_active_low_board() -> None:
    clock = SimClock()
    chip = SimGpioChip(clock.ticks_ms)
    contactor = chip.contactor(5, 6, coil_active=0)
    relay = Relay(chip.pin(5), active_high=False, feedback=chip.pin(6), settle_ms=50)
    relay.on(clock.ticks_ms())
    assert contactor.coil.level == 0  # active-low board: low energises
    contactor.coil_open = True
    clock.advance_ms(60)
    with pytest.raises(RelayFeedbackError, match="open coil"):
        relay.check(clock.ticks_ms())


def test_relay_without_feedback_and_input_lines_cannot_be_driven() -> None:
    chip = SimGpioChip()
    out = chip.output(3)
    relay = Relay(out)
    assert relay.state is None and out.level is None  # not driven before a command
    relay.on()
    assert relay.check(10_000) is None and out.level == 1
    with pytest.raises(SimulatorError):
        chip.input(9).value(1)
    with pytest.raises(SimulatorError, match="twice"):
        chip.output(3)


def test_gpio_config_check() -> None:
    src = {
        "type": "gpio",
        "inputs": [{"name": "door", "line": 17}, {"name": "bad name!", "line": 18}],
        "relays": [{"name": "door", "line": 27, "feedback_line": 17}],
    }
    errors: list[tuple[str, str]] = []
    cabinet_config.check(src, "sources[2]", errors)
    assert ("sources[2].relays[0].name", "duplicate name 'door' (also inputs[0])") in errors
    assert ("sources[2].relays[0].feedback_line", "line 17 already used by inputs[0]") in errors
    assert any(p == "sources[2].inputs[1].name" and "invalid" in r for p, r in errors)
    empty: list[tuple[str, str]] = []
    cabinet_config.check({"type": "gpio"}, "sources[0]", empty)
    assert empty == [("sources[0].inputs", "no input and no relay: nothing to do")]


def test_i2c_config_check() -> None:
    src = {
        "type": "i2c",
        "sensors": [
            {"type": "bme280", "name": "cabinet", "address": 0x44},
            {"type": "sht3x", "name": "outside"},
            {"type": "sht3x", "name": "cabinet", "address": 0x44},
            {"type": "veml7700", "name": "light"},
        ],
    }
    errors: list[tuple[str, str]] = []
    cabinet_config.check(src, "sources[0]", errors)
    assert errors == [
        ("sources[0].sensors[0].address", "a bme280 answers at 0x76 or 0x77, not 0x44"),
        ("sources[0].sensors[2].name", "duplicate name 'cabinet' (also sensors[0])"),
        ("sources[0].sensors[2].address", "address 0x44 also used by sensors[1] on this bus"),
    ]


def test_gpio_pi_adapter_reports_a_missing_chip_clearly() -> None:
    pytest.importorskip("gpiod")
    from drivers.gpio_pi import GpiodLines

    with pytest.raises(OSError, match="no GPIO chip /dev/gpiochip97"):
        GpiodLines("/dev/gpiochip97", inputs={17: "pull-up"})
    with pytest.raises(ValueError, match="bias"):
        GpiodLines("/dev/gpiochip97", inputs={17: "pullup"})
