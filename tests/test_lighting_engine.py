"""The lighting engine's decisions, without a radio: precedence, fail-safe, what is sent.

The engine reads its schedule from an injected wall clock (here a :class:`Clock` the test
sets, so a night is played in milliseconds) and sends through a ``Downlinks``. Here that
is :class:`Frames`, which only records what the engine decided to send (decoded with the
controller protocol's own decoder) and reports it sent; everything about the radio path,
confirmations and the duty cycle is in ``test_lighting_street.py``.

The site is Blois (47.59 N, 1.34 E) on the night of Thursday 15 to Friday 16 January 2026:
sunset 17:30:22, sunrise 08:37:28 (``passerelle lighting plan`` shows the same).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from passerelle.lighting import engine as engine_module
from passerelle.lighting import model as lighting_model
from passerelle.lighting.engine import DEVICE, LightingEngine
from passerelle.lighting.model import LightingConfig
from passerelle.lighting.plan import night_of, plan_night, power_w
from passerelle.lighting.protocol import (
    COMMAND_FPORT,
    Command,
    SetLevel,
    SetProgram,
    decode_command,
)
from passerelle.model import Priority, Record
from passerelle.radio.base import TxResult

PARIS = ZoneInfo("Europe/Paris")
RUE = [f"l{i}" for i in range(1, 7)]  # along the street, in order
PLACE = ["p1", "p2"]
STADE = ["s1", "s2"]


def at(hhmm: str, day: int = 15) -> float:
    """Epoch seconds of ``hhmm`` (HH:MM or HH:MM:SS) in Blois on ``day`` January 2026."""
    parts = [int(p) for p in hhmm.split(":")] + [0]
    return datetime(2026, 1, day, parts[0], parts[1], parts[2], tzinfo=PARIS).timestamp()


def night_at(hhmm: str) -> float:
    """``hhmm`` during the night of the 15th: the evening on the 15th, the morning on the 16th."""
    return at(hhmm, 15 if int(hhmm[:2]) >= 12 else 16)


# Rue: 100 % from dusk, 50 % at 23:00, off 01:00-05:30 (presence sensors active), 50 % then.
# Place: the square, never off at night (40 % from 22:30). Stade: a calendar whose only rule
# does not match January 2026, so the zone's default (sunset to sunrise) governs it.
BASE: dict[str, Any] = {
    "latitude": 47.5861,
    "longitude": 1.3359,
    "timezone": "Europe/Paris",
    "tick": 60,
    "confirm_timeout": 3600,  # no STATUS comes back here: never resend during a test
    "programs": {
        "coeur-de-nuit": {
            "astro_clock_time_controls": [
                {"solar_event_type": "sunset", "offset": -10, "level": 100},
                {"solar_event_type": "sunrise", "offset": 10, "level": 0},
            ],
            "fixed_time_controls": [
                {"time": "23:00", "level": 50},
                {"time": "01:00", "level": 0},
                {"time": "05:30", "level": 50},
            ],
            "active_periods": [{"type": "sensor", "start": "01:00", "end": "05:30"}],
        },
        "veille": {
            "astro_clock_time_controls": [
                {"solar_event_type": "sunset", "level": 100},
                {"solar_event_type": "sunrise", "level": 0},
            ],
            "fixed_time_controls": [{"time": "22:30", "level": 40}],
        },
    },
    "calendars": {
        "rue": {"rules": [{"program": "coeur-de-nuit"}]},
        "place": {"rules": [{"program": "veille"}]},
        "ete": {"rules": [{"start_date": "07-01", "end_date": "07-31", "program": "veille"}]},
    },
    "zones": {
        "rue": {
            "calendar": "rue",
            "luminaires": RUE,
            "multicast": "rue",
            "floor": 20,
            "max": 90,
            "default_level": 60,
            "ramp_up": 2,
            "ramp_down": 45,
            "rated_power": 40.0,
            "standby_power": 0.5,
            "dimming_curve": [[0, 0], [10, 15], [50, 52], [100, 100]],
            "presence": {"boost": 80, "hold": 120},
        },
        "place": {
            "calendar": "place",
            "luminaires": PLACE,
            "multicast": "place",
            "floor": 30,
            "default_level": 80,
            "rated_power": 60.0,
            "ramp_down": 20,
            "presence": {"boost": 100, "hold": 300},
        },
        "stade": {
            "calendar": "ete",
            "luminaires": STADE,
            "relay": "io/contactor",
            "count": 4,
            "default_level": 70,
            "rated_power": 70.0,
        },
    },
    "presence_sensors": [
        {
            "device": "pir-1",
            "name": "presence",
            "zone": "rue",
            "near": "l3",
            "spread": 1,
            "also": ["place"],
        },
    ],
    "ambient": {
        "device": "light-1",
        "name": "illuminance",
        "on_below": 20.0,
        "off_above": 60.0,
        "hold": 300,
    },
    "meter": {"device": "meter-1", "name": "energy-import", "unit": "kWh"},
}


def lighting(**changes: Any) -> LightingConfig:
    data = json.loads(json.dumps(BASE))
    data.update(changes)
    return msgspec.convert(data, LightingConfig)


class Clock:
    """The engine's wall clock: set by the test; None means "not trusted yet"."""

    def __init__(self, t: float | None = None) -> None:
        self.t = t

    def __call__(self) -> float | None:
        return self.t


@dataclass(frozen=True)
class Frame:
    to: str  # a device, or a multicast group
    multicast: bool
    command: Command


@dataclass
class Frames:
    """A Downlinks that records each frame the engine sends, decoded, and says it went."""

    sent: list[Frame] = field(default_factory=list)

    async def send(
        self,
        device: str,
        fport: int,
        payload: bytes,
        *,
        confirmed: bool = False,
        deadline: float | None = None,
    ) -> TxResult:
        assert fport == COMMAND_FPORT and not confirmed
        self.sent.append(Frame(device, False, decode_command(payload)))
        return TxResult(True)

    async def send_multicast(
        self, group: str, fport: int, payload: bytes, *, deadline: float | None = None
    ) -> TxResult:
        assert fport == COMMAND_FPORT
        self.sent.append(Frame(group, True, decode_command(payload)))
        return TxResult(True)

    def take(self) -> list[Frame]:
        out, self.sent = self.sent, []
        return out


def levels(frames: list[Frame]) -> dict[str, tuple[bool, int, int]]:
    """SET_LEVEL frames as ``to -> (multicast, level, ramp_s)``."""
    return {
        f.to: (f.multicast, f.command.level, f.command.ramp_s)
        for f in frames
        if isinstance(f.command, SetLevel)
    }


@dataclass
class Emitted:
    batches: list[tuple[list[Record], Priority]] = field(default_factory=list)

    async def __call__(self, records: Any, priority: Priority) -> None:
        self.batches.append((list(records), priority))

    def named(self, name: str) -> list[tuple[Record, Priority]]:
        return [(r, p) for batch, p in self.batches for r in batch if r.name == name]


class Relay:
    def __init__(self) -> None:
        self.states: list[bool] = []

    def set(self, on: bool) -> None:
        self.states.append(on)


@dataclass
class Rig:
    engine: LightingEngine
    clock: Clock
    frames: Frames
    emitted: Emitted
    relay: Relay

    async def step(self, t: float | None) -> list[Frame]:
        """One evaluation at ``t``; returns the frames it sent."""
        self.clock.t = t
        await self.engine.step()
        # Let the sends it spawned run to their end (unicasts go one at a time, with a pause
        # if the test asked for one), then the emits.
        for _ in range(10):
            await asyncio.sleep(0)
        await until_idle(self.engine)
        for _ in range(10):
            await asyncio.sleep(0)
        return self.frames.take()

    def zone(self, name: str) -> tuple[int, str]:
        zs = self.engine.zones[name]
        return zs.level, zs.cause


async def until_idle(engine: LightingEngine, timeout: float = 10.0) -> None:
    """Until no command is on its way (polled: the engine has no event for it)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while any(lm.in_flight for lm in engine.luminaires.values()):
        assert loop.time() < end, "commands still in flight"
        await asyncio.sleep(0.005)  # noqa: ASYNC110


def rig(
    cfg: LightingConfig | None = None,
    state_path: Path | None = None,
    t: float | None = None,
    **options: Any,
) -> Rig:
    clock, frames, emitted, relay = Clock(t), Frames(), Emitted(), Relay()
    # No radio here, so no half-duplex pause between unicasts (the street tests have one).
    options.setdefault("unicast_gap", 0.0)
    engine = LightingEngine(
        cfg or lighting(),
        emitted,
        downlinks=frames,
        relays={"io/contactor": relay},
        clock=clock,
        state_path=state_path,
        # The recorder answers at once: no half-duplex answer to leave room for.
        **{"unicast_gap": 0.0, **options},
    )
    return Rig(engine, clock, frames, emitted, relay)


def presence(t: float, value: object = 1) -> Record:
    return Record("pir-1", "presence", value, t)


def lux(value: float, t: float) -> Record:
    return Record("light-1", "illuminance", value, t, "lx")


# --------------------------------------------------------------------------------------------
# Precedence: override > presence > ambient > calendar > zone default


async def test_calendar_and_zone_default_by_night_and_day() -> None:
    r = rig()
    await r.step(at("15:00"))
    assert [r.zone(z) for z in ("rue", "place", "stade")] == [
        (0, "calendar"),
        (0, "calendar"),
        (0, "default"),
    ]
    await r.step(night_at("23:30"))
    assert r.zone("rue") == (50, "calendar")
    assert r.zone("place") == (40, "calendar")  # 22:30
    # No calendar rule matches January: the zone's default from sunset to sunrise.
    assert r.zone("stade") == (70, "default")
    await r.step(night_at("02:00"))
    assert r.zone("rue") == (0, "calendar")  # coeur de nuit
    assert r.zone("place") == (40, "calendar")
    assert r.zone("stade") == (70, "default")
    await r.step(night_at("09:00"))  # after sunrise (08:37) and its +10 min
    assert [r.zone(z)[0] for z in ("rue", "place", "stade")] == [0, 0, 0]


async def test_override_wins_is_clamped_and_expires_by_itself() -> None:
    r = rig()
    await r.step(night_at("01:10"))
    r.engine.override("rue", 100, until=night_at("01:30"))
    frames = await r.step(night_at("01:11"))
    assert r.zone("rue") == (90, "override")  # capped at the zone's max
    assert levels(frames) == {"rue": (True, 90, 2)}  # the whole zone: one multicast, ramp up
    # Presence (in the sensor period) does not change an overridden zone.
    r.engine.observe([presence(night_at("01:12"))])
    frames = await r.step(night_at("01:12"))
    assert [r.engine.luminaires[n].target for n in RUE] == [90] * 6
    assert not any(f.to in RUE for f in frames)
    assert r.engine.health()["zones"]["rue"]["override_until"] == night_at("01:30")
    frames = await r.step(night_at("01:30"))  # expired: nobody cleared it
    assert r.zone("rue") == (0, "calendar")
    assert r.engine.counts["overrides_expired"] == 1
    assert r.engine.health()["zones"]["rue"]["override_until"] is None
    assert levels(frames)["rue"] == (True, 0, 45)  # dimming down: the zone's ramp_down
    with pytest.raises(ValueError, match="past"):
        r.engine.override("rue", 50, until=night_at("01:00"))
    with pytest.raises(KeyError, match="no lighting zone 'nowhere'"):
        r.engine.override("nowhere", 50, until=night_at("03:00"))
    with pytest.raises(ValueError, match="outside 0..100"):
        r.engine.override("rue", 101, until=night_at("03:00"))


async def test_override_is_restored_from_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "lighting.json"
    first = rig(state_path=state)
    await first.step(night_at("02:00"))
    first.engine.override("rue", 70, until=night_at("03:00"), by="mairie")
    assert json.loads(state.read_text())["zones"]["rue"]["override"] == [
        70,
        night_at("03:00"),
        "mairie",
    ]
    # A new engine (the agent restarted) on the same state file.
    second = rig(state_path=state)
    frames = await second.step(night_at("02:10"))
    assert second.zone("rue") == (70, "override")
    assert second.zone("place") == (40, "calendar")
    assert levels(frames)["rue"] == (True, 70, 2)
    await second.step(night_at("03:00"))
    assert second.zone("rue") == (0, "calendar")
    third = rig(state_path=state)  # the expiry was saved too
    await third.step(night_at("02:30"))
    assert third.zone("rue") == (0, "calendar")


async def test_presence_raises_only_neighbours_inside_the_active_period() -> None:
    r = rig()
    await r.step(night_at("23:30"))
    # 23:30 is outside the rue program's sensor period (01:00-05:30): the rue stays at 50;
    # the square (program without sensor periods: any time at night) is raised as a whole.
    assert r.engine.observe([presence(night_at("23:30"))]) == []
    frames = await r.step(night_at("23:31"))
    assert [r.engine.luminaires[n].target for n in RUE] == [50] * 6
    assert [r.engine.luminaires[n].target for n in PLACE] == [100, 100]
    assert levels(frames) == {"place": (True, 100, 2)}

    await r.step(night_at("01:30"))
    assert [r.engine.luminaires[n].target for n in RUE] == [0] * 6
    r.engine.observe([presence(night_at("01:30"))])
    frames = await r.step(night_at("01:30:10"))
    # near l3, spread 1: l2, l3, l4 only, each by unicast (part of a zone), ramping up fast.
    assert [r.engine.luminaires[n].target for n in RUE] == [0, 80, 80, 80, 0, 0]
    assert levels(frames) == {
        "l2": (False, 80, 2),
        "l3": (False, 80, 2),
        "l4": (False, 80, 2),
        "place": (True, 100, 2),
    }
    assert r.zone("rue") == (0, "calendar")  # the zone itself is not raised

    frames = await r.step(night_at("01:31:00"))  # inside the hold (120 s): nothing new
    assert frames == []
    frames = await r.step(night_at("01:32:11"))  # hold over: back to the calendar, slowly
    assert [r.engine.luminaires[n].target for n in RUE] == [0] * 6
    assert levels(frames) == {"l2": (False, 0, 45), "l3": (False, 0, 45), "l4": (False, 0, 45)}
    assert [r.engine.luminaires[n].target for n in PLACE] == [100, 100]  # hold: 300 s
    frames = await r.step(night_at("01:35:11"))
    assert [r.engine.luminaires[n].target for n in PLACE] == [40, 40]
    assert levels(frames) == {"place": (True, 40, 20)}


async def test_storm_forces_the_default_level_by_day_with_hold() -> None:
    r = rig()
    await r.step(at("14:00"))
    r.engine.observe([lux(8000.0, at("14:00"))])
    await r.step(at("14:01"))
    assert r.zone("rue") == (0, "calendar")
    r.engine.observe([lux(12.0, at("15:00"))])  # a storm: dark at 15:00, the sun is up
    frames = await r.step(at("15:00"))
    assert r.zone("rue") == (60, "ambient")
    assert r.zone("place") == (80, "ambient")
    assert r.zone("stade") == (70, "ambient")
    assert r.relay.states == [False, True]  # the contactor closes for the storm
    assert levels(frames) == {
        "rue": (True, 60, 2),
        "place": (True, 80, 2),
        "s1": (False, 70, 2),
        "s2": (False, 70, 2),
    }
    assert r.engine.counts["ambient_forced_on"] == 1
    for minute in range(1, 11):  # still dark, longer than the hold: on, and one storm
        r.engine.observe([lux(15.0, at(f"15:{minute:02d}"))])
        assert await r.step(at(f"15:{minute:02d}")) == []
    assert r.zone("rue") == (60, "ambient") and r.engine.counts["ambient_forced_on"] == 1
    r.engine.observe([lux(900.0, at("15:20"))])
    await r.step(at("15:20"))  # bright, and more than the hold since the last dark reading
    assert [r.zone(z) for z in ("rue", "place")] == [(0, "calendar"), (0, "calendar")]
    assert r.relay.states == [False, True, False]
    # At night the sensor does not force anything: the calendar rules.
    r.engine.observe([lux(1.0, night_at("02:00"))])
    await r.step(night_at("02:00"))
    assert r.zone("rue") == (0, "calendar")
    assert r.engine.counts["ambient_forced_on"] == 1


async def test_storm_is_held_when_the_sky_clears_briefly() -> None:
    r = rig()
    r.engine.observe([lux(10.0, at("15:00"))])
    await r.step(at("15:00"))
    assert r.zone("rue") == (60, "ambient")
    r.engine.observe([lux(500.0, at("15:01"))])  # a gap in the clouds, 1 min later
    await r.step(at("15:01"))
    assert r.zone("rue") == (60, "ambient")  # held for 300 s


async def test_storm_lasts_while_light_stays_under_off_above() -> None:
    r = rig()
    r.engine.observe([lux(10.0, at("15:00"))])
    await r.step(at("15:00"))
    for minute in range(1, 16):  # 40 lx for 15 min: above on_below, under off_above
        r.engine.observe([lux(40.0, at(f"15:{minute:02d}"))])
        await r.step(at(f"15:{minute:02d}"))
        assert r.zone("rue") == (60, "ambient"), f"released at 15:{minute:02d}"


# --------------------------------------------------------------------------------------------
# Fail-safe


async def test_unknown_clock_lights_every_zone_at_its_default() -> None:
    r = rig()
    frames = await r.step(None)
    assert [r.zone(z) for z in ("rue", "place", "stade")] == [
        (60, "failsafe:clock"),
        (80, "failsafe:clock"),
        (70, "failsafe:clock"),
    ]
    assert r.engine.health()["clock_trusted"] is False
    # Fail-safe without a time: no program can be chosen, none is sent; levels are.
    assert not any(isinstance(f.command, SetProgram) for f in frames)
    assert levels(frames) == {
        "rue": (True, 60, 2),
        "place": (True, 80, 2),
        "s1": (False, 70, 2),
        "s2": (False, 70, 2),
    }
    assert r.relay.states == [True]
    # Daylight at the sensor: lights off even without a clock.
    r.engine.observe([lux(5000.0, at("13:00"))])
    await r.step(None)
    assert [r.zone(z) for z in ("rue", "place", "stade")] == [
        (0, "failsafe:clock"),
        (0, "failsafe:clock"),
        (0, "failsafe:clock"),
    ]
    r.engine.observe([lux(2.0, at("13:00"))])
    await r.step(None)
    assert r.zone("rue") == (60, "failsafe:clock")
    # The time comes back (NTP): the plan takes over.
    await r.step(night_at("02:00"))
    assert r.zone("rue") == (0, "calendar") and r.engine.health()["clock_trusted"] is True


async def test_a_plan_that_cannot_be_computed_lights_at_night_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("ephemeris table damaged")

    monkeypatch.setattr(engine_module, "plan_night", broken)
    r = rig()
    await r.step(night_at("02:00"))
    assert [r.zone(z) for z in ("rue", "place", "stade")] == [
        (60, "failsafe:schedule"),
        (80, "failsafe:schedule"),
        (70, "failsafe:schedule"),
    ]
    await r.step(at("15:00"))
    assert [r.zone(z)[0] for z in ("rue", "place", "stade")] == [0, 0, 0]
    health = r.engine.health()
    assert health["counts"]["plan_errors"] == 2
    assert health["plan_error"] == "ephemeris table damaged"
    monkeypatch.undo()
    await r.step(at("15:01"))
    assert r.engine.health()["plan_error"] is None


KNOWN = {
    "devices": dict.fromkeys(RUE + PLACE + STADE, "C"),
    "multicast": {"rue": RUE, "place": PLACE},
    "relays": {"io/contactor"},
}


async def test_failsafe_level_respects_the_floor() -> None:
    zones = json.loads(json.dumps(BASE["zones"]))
    zones["place"]["default_level"] = 20  # under its floor of 30
    errors: list[tuple[str, str]] = []
    lighting_model.check({**BASE, "zones": zones}, "lighting", errors, KNOWN)
    if errors:  # refused by the config check: fixed at the source
        assert [path for path, _ in errors] == ["lighting.zones.place.default_level"]
        return
    r = rig(lighting(zones=zones))
    await r.step(None)
    level, _ = r.zone("place")
    assert level == 0 or 30 <= level <= 100


def test_also_zone_without_presence_settings_is_a_config_error() -> None:
    zones = json.loads(json.dumps(BASE["zones"]))
    del zones["place"]["presence"]
    errors: list[tuple[str, str]] = []
    lighting_model.check({**BASE, "zones": zones}, "lighting", errors, KNOWN)
    assert [path for path, _ in errors] == ["lighting.presence_sensors[0].also[0]"]


# --------------------------------------------------------------------------------------------
# Only changes are sent; multicast for a whole zone, unicast for part of it


async def test_only_changes_are_sent() -> None:
    r = rig()
    frames = await r.step(night_at("22:00"))
    assert levels(frames) == {
        "rue": (True, 90, 2),
        "place": (True, 100, 2),
        "s1": (False, 70, 2),
        "s2": (False, 70, 2),
    }
    programs = {f.to: f.command for f in frames if isinstance(f.command, SetProgram)}
    assert set(programs) == {"rue", "place", "s1", "s2"}  # tonight's program, kept locally
    rue = programs["rue"]
    assert isinstance(rue, SetProgram) and (rue.default, rue.utc_offset_q) == (60, 4)
    assert [(p.kind, p.value, p.level) for p in rue.points] == [
        ("sunset", -10, 90),
        ("sunrise", 10, 0),  # clamped to the zone's max
        ("time", 23 * 60, 50),
        ("time", 60, 0),
        ("time", 5 * 60 + 30, 50),
    ]
    assert await r.step(night_at("22:01")) == []  # nothing changed: nothing sent
    assert await r.step(night_at("22:29")) == []
    assert levels(await r.step(night_at("22:30"))) == {"place": (True, 40, 20)}
    assert await r.step(night_at("22:59")) == []
    frames = await r.step(night_at("23:00"))
    assert [
        (f.to, f.multicast, f.command.level)
        for f in frames  # type: ignore[union-attr]
    ] == [("rue", True, 50)]  # the whole zone moved together: one frame
    assert r.engine.counts["multicast_commands"] == 4
    assert r.engine.counts["unicast_commands"] == 2
    assert r.engine.counts["programs_sent"] == 3  # rue, place, stade (s1 and s2 each)


async def test_part_of_a_zone_goes_by_unicast() -> None:
    r = rig()
    await r.step(night_at("02:00"))
    r.engine.observe([presence(night_at("02:00"))])
    frames = await r.step(night_at("02:00:30"))
    rue = [f for f in frames if f.to in RUE]
    assert [(f.to, f.multicast) for f in rue] == [("l2", False), ("l3", False), ("l4", False)]
    # 05:30: from 0 (l1, l5, l6) and 80 (l2-l4) alike to 50: together, so one frame again.
    frames = await r.step(night_at("05:31"))
    assert [
        (f.to, f.multicast, f.command.level)
        for f in frames  # type: ignore[union-attr]
        if f.to in [*RUE, "rue"]
    ] == [("rue", True, 50)]


async def test_a_late_status_clears_the_not_confirming_alarm() -> None:
    r = rig(lighting(retries=0, confirm_timeout=1), multicast_settle=0.0)
    await r.step(night_at("23:30"))
    await asyncio.sleep(1.05)  # the confirmation timeout, on the loop's clock
    await r.step(night_at("23:31"))
    assert r.engine.health()["zones"]["rue"]["silent"] == RUE
    t = night_at("23:31")
    r.engine.observe([Record("l1", "level", 50, t, "%"), Record("l1", "ack_seq", 1, t)])
    assert "l1" not in r.engine.health()["zones"]["rue"]["silent"]


@contextlib.asynccontextmanager
async def stopping(engine: LightingEngine) -> AsyncIterator[None]:
    """Stop the engine on exit the way the agent does (cancel its loop, which cancels the
    sends still queued), so a test may leave unicasts waiting their turn."""
    try:
        yield
    finally:
        task = asyncio.create_task(engine.run())
        await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


UNICAST_GAP = 0.5  # s: the engine's pause after each unicast (the gateway is half duplex)


async def test_a_queued_unicast_gets_its_whole_confirm_timeout() -> None:
    zones = {z: v for z, v in BASE["zones"].items() if z != "stade"}  # multicast zones only
    r = rig(lighting(confirm_timeout=1, zones=zones), unicast_gap=UNICAST_GAP)
    await r.step(night_at("01:30"))  # the rue off (coeur de nuit), by multicast
    r.engine.observe([presence(night_at("01:30"))])
    loop = asyncio.get_running_loop()
    r.clock.t = night_at("01:30:10")
    async with stopping(r.engine):
        await r.engine.step()  # l2, l3, l4 by unicast, one at a time, 0.5 s apart
        sent: dict[str, list[float]] = {}
        answered: set[str] = set()
        end = loop.time() + 3.0  # the three sent and answered, and a timeout more
        while loop.time() < end:
            await asyncio.sleep(0.05)
            now = loop.time()
            for frame in r.frames.take():
                if frame.to in r.engine.luminaires and isinstance(frame.command, SetLevel):
                    sent.setdefault(frame.to, []).append(now)
            # Each controller answers 0.7 s after its first command: later than the pause,
            # well within the 1 s confirmation timeout.
            for lum, times in sent.items():
                if lum not in answered and now - times[0] >= 0.7:
                    answered.add(lum)
                    r.engine.observe([Record(lum, "level", 80, r.clock.t, "%")])
            await r.engine.step()
        assert {lum: len(times) for lum, times in sent.items()} == {"l2": 1, "l3": 1, "l4": 1}
        boosted = [r.engine.luminaires[n] for n in ("l2", "l3", "l4")]
        assert [(lm.confirmed, lm.wait) for lm in boosted] == [(80, 0.0)] * 3


async def test_a_zone_moving_together_is_one_multicast_with_a_unicast_queued() -> None:
    r = rig(unicast_gap=UNICAST_GAP)
    await r.step(night_at("01:30"))
    r.engine.observe([presence(night_at("01:30"))])
    r.clock.t = night_at("01:30:10")
    async with stopping(r.engine):
        await r.engine.step()  # l2, l3, l4 by unicast, one at a time
        await asyncio.sleep(0.1)  # l2 sent; l3 and l4 wait their turn
        r.engine.override("rue", 70, until=night_at("02:30"))
        r.clock.t = night_at("01:30:20")
        await r.engine.step()
        await asyncio.sleep(0.1)
        at_70 = [
            (f.to, f.multicast)
            for f in r.frames.take()
            if isinstance(f.command, SetLevel) and f.command.level == 70
        ]
        assert at_70 == [("rue", True)]


# --------------------------------------------------------------------------------------------
# The contactor


async def test_relay_follows_the_plan_and_dark_controllers_get_no_level() -> None:
    r = rig()
    frames = await r.step(at("15:00"))
    assert r.relay.states == [False]
    assert not any(f.to in STADE and isinstance(f.command, SetLevel) for f in frames)
    assert await r.step(at("17:00")) == []
    frames = await r.step(at("17:31"))  # sunset 17:30:22: the zone's default
    assert r.relay.states == [False, True]
    assert levels(frames)["s1"] == (False, 70, 2) and levels(frames)["s2"] == (False, 70, 2)
    assert r.engine.health()["zones"]["stade"]["relay"] is True
    frames = await r.step(night_at("08:38"))  # sunrise 08:37:28: contactor opens
    assert r.relay.states == [False, True, False]
    assert not any(f.to in STADE for f in frames)  # the controllers are unpowered
    assert r.engine.counts["relay_switches"] == 3
    assert [f.to for f in await r.step(night_at("09:00"))] == ["rue"]  # its sunrise+10


async def test_no_program_to_controllers_behind_an_open_contactor() -> None:
    r = rig()
    frames = await r.step(at("15:00"))
    assert r.relay.states == [False]
    assert [f.to for f in frames if f.to in STADE] == []


class FailingRelay:
    def set(self, on: bool) -> None:
        raise OSError("gpiochip0: line 27 busy")


async def test_a_failing_relay_is_counted_and_retried() -> None:
    r = rig()
    r.engine.relays["io/contactor"] = FailingRelay()
    await r.step(night_at("22:00"))
    await r.step(night_at("22:01"))
    assert r.engine.counts["relay_errors"] == 2  # tried again at the next step
    assert r.zone("rue") == (90, "calendar")  # the other zones are not held up
    r.engine.relays["io/contactor"] = r.relay
    await r.step(night_at("22:02"))
    assert r.relay.states == [True]


# --------------------------------------------------------------------------------------------
# Presence leaves the gateway only as counts


async def test_presence_is_consumed_and_leaves_only_as_counts() -> None:
    r = rig()
    t0 = night_at("23:30")  # 22:30 UTC: on a 15-min window boundary
    await r.step(t0)
    meter = Record("meter-1", "energy-import", 1200.5, t0, "kWh")
    batch = [
        presence(t0 + 10),
        presence(t0 + 20),
        presence(t0 + 25, 0),
        meter,
        presence(t0 + 30, True),
        Record("pir-1", "battery", 3.1, t0, "V"),
    ]
    kept = r.engine.observe(batch)
    assert kept == [meter, batch[-1]]  # the sensor's other measurements still go up
    await r.step(t0 + 60)
    assert r.emitted.named("rue/presence") == []  # the window is not over
    await r.step(t0 + 900)
    assert r.emitted.named("rue/presence") == [
        (Record(DEVICE, "rue/presence", 3, t0 + 900), Priority.TELEMETRY)
    ]
    assert r.emitted.named("place/presence") == [
        (Record(DEVICE, "place/presence", 0, t0 + 900), Priority.TELEMETRY)
    ]
    await r.step(t0 + 1800)
    assert [rec.value for rec, _ in r.emitted.named("rue/presence")] == [3, 0]
    sent = [rec for batch_, _ in r.emitted.batches for rec in batch_]
    assert all(rec.device != "pir-1" for rec in sent)
    assert r.engine.counts["presence_events"] == 3


# --------------------------------------------------------------------------------------------
# Energy


def switch_bound_wh(cfg: LightingConfig, zone: str, tick: float) -> float:
    """How far a step-wise sum (one level per tick, no ramps) may be from the plan's
    integral: at each switch point, one tick plus the ramp at the power difference."""
    z = cfg.zones[zone]
    steps = (
        plan_night(cfg, night_of(datetime.fromtimestamp(night_at("22:00"), PARIS), PARIS))
        .zones[zone]
        .steps
    )
    total = 0.0
    for (_, before), (_, after) in zip(steps, steps[1:], strict=False):
        ramp = z.ramp_up if after > before else z.ramp_down
        total += (tick + ramp) * abs(power_w(z, after) - power_w(z, before)) * z.size / 3600
    return total


async def test_a_night_of_energy_used_saved_and_measured() -> None:
    cfg = lighting()
    tick = cfg.tick
    r = rig(cfg)
    start, end = at("12:00"), at("12:00", 16)
    r.engine.observe([Record("meter-1", "energy-import", 1234.5, start, "kWh")])
    t = start
    while t < end:
        await r.step(t)
        t += tick
    r.engine.observe([Record("meter-1", "energy-import", 1241.25, end, "kWh")])
    await r.step(end)  # the first step of the next night closes this one
    plan = plan_night(cfg, datetime(2026, 1, 15).date())
    got = {
        rec.name: (rec.value, rec.unit, p)
        for batch, p in r.emitted.batches
        for rec in batch
        if "energy" in rec.name
    }
    for zone in ("rue", "place", "stade"):
        used, unit, priority = got[f"{zone}/energy"]
        baseline = got[f"{zone}/energy-baseline"][0]
        saved = got[f"{zone}/energy-saved"][0]
        assert (unit, priority) == ("Wh", Priority.ENERGY)
        zp = plan.zones[zone]
        assert baseline == round(zp.baseline_wh, 1)
        assert saved == pytest.approx(baseline - used, abs=0.11)
        # The engine sums each tick at the level it decided; the plan integrates exact
        # switch times and ramps: they differ by at most a tick and a ramp per switch.
        bound = switch_bound_wh(cfg, zone, tick)
        assert abs(used - zp.energy_wh) <= bound, (zone, used, zp.energy_wh, bound)
        print(
            f"\n{zone}: engine {used} Wh, plan {zp.energy_wh:.1f} Wh (bound {bound:.1f}), "
            f"baseline {baseline} Wh, saved {saved} Wh"
        )
        assert used > 0 and saved > 0
    assert got["cabinet/energy-measured"] == (6750.0, "Wh", Priority.ENERGY)
    assert r.engine.counts["nights_closed"] == 1
    # The new night starts from zero, but for the tick that closed the old one: its 60 s
    # before noon (6 x 0.5 W standby) are charged to the new night.
    assert r.engine.health()["zones"]["rue"]["energy_wh_tonight"] == round(6 * 0.5 / 60, 1)


# --------------------------------------------------------------------------------------------
# Property: while lit, never under the floor nor over the max

EVENTS = st.one_of(
    st.tuples(st.just("presence"), st.booleans()),
    st.tuples(
        st.just("override"),
        st.sampled_from(["rue", "place", "stade"]),
        st.integers(0, 100),
        st.integers(1, 6 * 3600),
    ),
    st.tuples(st.just("clock"), st.booleans()),  # False: the clock becomes untrusted
    st.tuples(st.just("lux"), st.sampled_from([0.0, 5.0, 19.9, 20.0, 45.0, 60.0, 61.0, 3e4])),
)


@st.composite
def zone_limits(draw: st.DrawFn) -> dict[str, Any]:
    floor = draw(st.integers(0, 80))
    top = draw(st.integers(max(floor, 1), 100))
    return {
        "floor": floor,
        "max": top,
        "default_level": draw(st.integers(max(floor, 1), top)),
        "presence": {"boost": draw(st.integers(0, 100)), "hold": 120},
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    limits=st.fixed_dictionaries({z: zone_limits() for z in ("rue", "place", "stade")}),
    start=st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2026, 12, 31)),
    events=st.lists(st.tuples(st.integers(0, 3 * 3600), EVENTS), min_size=1, max_size=25),
)
def test_lit_luminaires_stay_within_floor_and_max(
    limits: dict[str, dict[str, Any]],
    start: datetime,
    events: list[tuple[int, tuple[Any, ...]]],
) -> None:
    zones = json.loads(json.dumps(BASE["zones"]))
    for name, lim in limits.items():
        zones[name].update(lim)
    cfg = lighting(zones=zones)
    clock = Clock()
    engine = LightingEngine(cfg, Emitted(), clock=clock)
    t = start.replace(tzinfo=PARIS).timestamp()
    trusted = True
    for dt, event in events:
        t += dt
        clock.t = t if trusted else None
        match event:
            case ("presence", on):
                engine.observe([presence(t, 1 if on else 0)])
            case ("override", zone, level, expiry):
                engine.override(zone, level, until=t + expiry)
            case ("clock", ok):
                trusted = ok
                clock.t = t if trusted else None
            case ("lux", value):
                engine.observe([lux(value, t)])
        targets = engine.targets(clock.t)
        for name, zone in cfg.zones.items():
            level = engine.zones[name].level
            assert level == 0 or zone.floor <= level <= zone.max, (name, level, zone)
            for lum in zone.luminaires:
                lv = targets[lum]
                assert lv == 0 or zone.floor <= lv <= zone.max, (lum, lv, zone)


async def test_a_silent_luminaire_is_still_asked_at_a_slow_pace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import passerelle.lighting.engine as engine_module

    monkeypatch.setattr(engine_module, "SILENT_SLOWDOWN", 2)
    r = rig(lighting(retries=0, confirm_timeout=1), multicast_settle=0.0)
    await r.step(night_at("23:30"))
    await asyncio.sleep(1.05)
    await r.step(night_at("23:31"))  # out of retries: alarmed, not forgotten
    assert r.engine.health()["zones"]["rue"]["silent"] == RUE
    assert await r.step(night_at("23:31:10")) == []  # not before the slow wait
    await asyncio.sleep(2.05)
    frames = await r.step(night_at("23:31:20"))
    assert sorted(f.to for f in frames if f.to in RUE) == sorted(RUE)
    assert all(not f.multicast and f.command.level == 50 for f in frames  # type: ignore[union-attr]
               if f.to in RUE)
    # One alarm per luminaire (of every zone), not one per ask.
    assert r.engine.counts["not_confirming"] == len(r.engine.luminaires)


async def test_a_lamp_that_reports_another_level_once_settled_is_commanded_again() -> None:
    r = rig(lighting(confirm_timeout=60), multicast_settle=0.0)
    await r.step(night_at("23:30"))
    t = night_at("23:30")
    for lum in RUE:  # every controller confirms the 50 % of the multicast
        r.engine.observe([Record(lum, "level", 50, t, "%"), Record(lum, "ack_seq", 1, t)])
    assert await r.step(night_at("23:30:10")) == []
    # l1's controller restarted on its stored program and says 80 %.
    r.engine.observe([Record("l1", "level", 80, t + 20, "%")])
    frames = await r.step(night_at("23:30:30"))
    assert [(f.to, f.command.level) for f in frames] == [("l1", 50)]  # type: ignore[union-attr]
    assert r.engine.counts["level_drift"] == 1
