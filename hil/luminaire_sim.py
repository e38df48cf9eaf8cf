"""A simulated LoRaWAN luminaire controller on the radio medium (:mod:`hil.radio_medium`).

It is what a street-light node (a Zhaga/NEMA controller with a LoRaWAN radio) does with
the commands of :mod:`passerelle.lighting.protocol`: a class C device that hears commands
on FPort 20 at any time, applies them, and answers each with a STATUS uplink on FPort 21.
Commands reach it by unicast (its own ABP session) or by multicast (a group session held
by a second listener, as a LoRaWAN multicast context is a second session in the same
radio). A multicast answer waits a random time in ``[0, reply_window)`` drawn from the
controller's own seeded RNG, so a street's answers spread over the window instead of all
colliding; a unicast answer waits ``reply_delay`` (a fixed, short processing time).

What it does on its own: it stores the last SET_PROGRAM and follows it (:meth:`tick`) after
a SET_LEVEL 255 or when it has heard no command for ``hold_time``. The program is
evaluated like a controller with a real-time clock and no time-zone database would: local
time is UTC plus the program's ``utc_offset_q`` (the gateway re-sends the program when
DST changes the offset), fixed times fall on the night running from noon to noon, and
solar events come from the caller (the controller's own astronomical clock).

Fault injection: ``lamp_failure`` and ``driver_failure`` are reported in STATUS; ``mute``
hears and applies commands but never answers (a broken transmitter); ``deaf`` drops every
downlink before the application sees it (a broken receiver).

Simplifications: the level jumps to its target (``ramp_s`` is only recorded); energy is
rated power times level, linear, and nothing when the lamp has failed; the multicast
listener is a separate node, so it does not go deaf while the unicast one transmits (a
real single radio would).
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from datetime import time as clock_time
from typing import Any

from hil.lorawan_device import Downlink, EndDevice
from hil.radio_medium import Medium, SimDevice
from passerelle.lighting.protocol import (
    COMMAND_FPORT,
    FOLLOW_PROGRAM,
    STATUS_FPORT,
    Command,
    ProtocolError,
    SetLevel,
    SetProgram,
    Status,
    decode_command,
    encode_status,
)
from passerelle.lorawan.region import DATARATES, RX2_FREQUENCY

__all__ = ["FACTORY_LEVEL", "LuminaireSim", "MulticastSession", "program_level"]

log = logging.getLogger("passerelle.hil.luminaire")

# A controller that never received a program lights fully when left alone: dark streets
# are the failure to avoid.
FACTORY_LEVEL = 100
_NOON = 12 * 60  # minutes: fixed times before it belong to the morning after the night's date


@dataclass(frozen=True, slots=True)
class MulticastSession:
    """A multicast group's session as one member holds it (and where the group listens)."""

    dev_addr: int
    nwk_s_key: bytes
    app_s_key: bytes
    frequency: float = RX2_FREQUENCY
    datarate: str = "SF9BW125"


def program_level(
    program: SetProgram, when: datetime | None, sun: Mapping[str, datetime | None]
) -> int:
    """The level ``program`` gives at ``when``, for the night's solar events ``sun``.

    ``when`` None means the controller has no valid time: ``program.default``. Otherwise
    each point is resolved to an instant (a fixed time on the night's evening when at or
    after noon, else on the morning after; a solar event plus its offset, skipped when the
    event does not happen that night, ``sun[kind]`` None), and the last point at or before
    ``when`` gives the level. Before the night's first point the lamp is still where the
    previous night's last point left it (the program repeats every night), so that level
    applies: at 14:00, before sunset, a dusk-to-dawn program gives its dawn level, not
    ``default``. A program whose points all resolve to nothing gives ``default``.
    """
    if when is None:
        return program.default
    if when.tzinfo is None:
        raise ValueError(f"when must be an aware datetime, got naive {when.isoformat()}")
    tz = timezone(timedelta(minutes=15 * program.utc_offset_q))
    local = when.astimezone(tz)
    night: date = local.date() if local.hour >= 12 else local.date() - timedelta(days=1)
    resolved: list[tuple[datetime, int, int]] = []
    for i, point in enumerate(program.points):
        if point.kind == "time":
            day = night if point.value >= _NOON else night + timedelta(days=1)
            hour, minute = divmod(point.value, 60)
            at = datetime.combine(day, clock_time(hour, minute), tzinfo=tz)
        else:
            event = sun.get(point.kind)
            if event is None:  # polar day or night: this event does not happen
                continue
            if not isinstance(event, datetime) or event.tzinfo is None:
                raise ValueError(f"sun[{point.kind!r}] must be an aware datetime, got {event!r}")
            at = event + timedelta(minutes=point.value)
        resolved.append((at, i, point.level))  # i: of two points at one instant, the later
    if not resolved:
        return program.default
    resolved.sort()
    level = resolved[-1][2]  # carried over from the previous night
    for at, _, point_level in resolved:
        if at > when:
            break
        level = point_level
    return level


class LuminaireSim:
    """One luminaire controller on ``medium`` (see the module docstring).

    ``dev_eui``, ``dev_addr``, ``nwk_s_key``, ``app_s_key``: its unicast ABP session.
    ``multicast``: the group it belongs to, if any. ``rated_power_w``: lamp power at 100 %.
    ``reply_window``: multicast answers wait a random time in ``[0, reply_window)`` s.
    ``reply_delay``: unicast answers wait this long. ``uplink_datarate``: its STATUS
    uplinks' data rate. ``rx2_frequency``/``rx2_datarate``: where it listens as class C
    (the server's RX2 parameters). ``hold_time``: seconds without a command after which it
    follows its program on its own (None: only after SET_LEVEL 255). ``seed``: its reply
    RNG (default: from the medium's seed and its name, so adding a luminaire does not
    shift another's delays).
    """

    def __init__(
        self,
        medium: Medium,
        name: str,
        position: Any,
        *,
        dev_eui: bytes,
        dev_addr: int,
        nwk_s_key: bytes,
        app_s_key: bytes,
        multicast: MulticastSession | None = None,
        rated_power_w: float = 100.0,
        reply_window: float = 60.0,
        reply_delay: float = 0.05,
        uplink_datarate: str = "SF7BW125",
        rx2_frequency: float = RX2_FREQUENCY,
        rx2_datarate: str = "SF12BW125",
        power_dbm: float = 14.0,
        hold_time: float | None = None,
        seed: int | str | None = None,
    ) -> None:
        for what, value in (("reply_window", reply_window), ("reply_delay", reply_delay)):
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"luminaire {name}: {what} must be >= 0 s, got {value!r}")
        if not (math.isfinite(rated_power_w) and rated_power_w >= 0):
            raise ValueError(f"luminaire {name}: rated_power_w must be >= 0, got {rated_power_w}")
        if hold_time is not None and not (math.isfinite(hold_time) and hold_time > 0):
            raise ValueError(f"luminaire {name}: hold_time must be > 0 s, got {hold_time!r}")
        rates = {"rx2_datarate": rx2_datarate}
        if multicast is not None:
            rates["multicast.datarate"] = multicast.datarate
        for what, rate in rates.items():
            if rate not in DATARATES:
                raise ValueError(f"luminaire {name}: {what} {rate!r} is not an EU868 data rate")
        self.medium = medium
        self.name = name
        self.rated_power_w = float(rated_power_w)
        self.reply_window = float(reply_window)
        self.reply_delay = float(reply_delay)
        self.hold_time = hold_time
        self.radio = medium.add_device(
            EndDevice(
                dev_eui=dev_eui,
                device_class="C",
                dev_addr=dev_addr,
                nwk_s_key=nwk_s_key,
                app_s_key=app_s_key,
                rx2_dr=DATARATES.index(rx2_datarate),
            ),
            position,
            name=name,
            datarate=uplink_datarate,
            power_dbm=power_dbm,
            rx2_frequency=rx2_frequency,
            on_payload=lambda d: self._heard(d, multicast=False),
        )
        self.group_radio: SimDevice | None = None
        if multicast is not None:
            self.group_radio = medium.add_device(
                EndDevice(
                    dev_eui=dev_eui,
                    device_class="C",
                    dev_addr=multicast.dev_addr,
                    nwk_s_key=multicast.nwk_s_key,
                    app_s_key=multicast.app_s_key,
                    rx2_dr=DATARATES.index(multicast.datarate),
                ),
                position,
                name=f"{name}.mc",
                rx2_frequency=multicast.frequency,
                on_payload=lambda d: self._heard(d, multicast=True),
            )
        self.rng = random.Random(seed if seed is not None else f"{medium.seed}:{name}:reply")
        # faults
        self.lamp_failure = False
        self.driver_failure = False
        self.mute = False
        self.deaf = False
        # state
        self.level = FACTORY_LEVEL  # current target level, percent
        self.ramp_s = 0  # of the last SET_LEVEL
        self.following_program = False  # after SET_LEVEL 255
        self.program: SetProgram | None = None
        self.seq = 0  # of the last command applied
        self.commands: list[Command] = []
        self.answers = 0  # STATUS uplinks handed to the radio
        self.reply_delays: list[float] = []  # the wait before each answer, for the tests
        self.bad_commands: list[str] = []  # why each undecodable command was refused
        self.ignored = 0  # downlinks on other ports
        self.dropped = 0  # downlinks lost to deafness
        self._energy_wh = 0.0
        self._last_heard = medium.clock.now()

    # -- what a test asks ----------------------------------------------------------------

    @property
    def energy_wh(self) -> int:
        """Cumulative energy, whole Wh as the controller's meter counts it."""
        return int(self._energy_wh)

    @property
    def local(self) -> bool:
        """Whether it follows its own program now (told to, or left alone too long)."""
        if self.following_program:
            return True
        return (
            self.hold_time is not None
            and self.medium.clock.now() - self._last_heard >= self.hold_time
        )

    def status(self) -> Status:
        """The STATUS it would send now."""
        return Status(
            self.seq, self.level, self.lamp_failure, self.driver_failure, self.local, self.energy_wh
        )

    def local_level(self, when: datetime | None, sun: Mapping[str, datetime | None]) -> int:
        """The level its stored program gives at ``when`` (see :func:`program_level`);
        :data:`FACTORY_LEVEL` with no program."""
        if self.program is None:
            return FACTORY_LEVEL
        return program_level(self.program, when, sun)

    def tick(self, when: datetime | None, sun: Mapping[str, datetime | None]) -> int:
        """The controller's own clock ticks: when it follows its program, its level becomes
        the program's for ``when``. Returns the level."""
        if self.local:
            self.level = self.local_level(when, sun)
        return self.level

    def advance_energy(self, seconds: float) -> int:
        """Run the lamp ``seconds`` at its current level; returns the energy counter."""
        if seconds < 0:
            raise ValueError(f"luminaire {self.name}: cannot run {seconds} s backwards")
        if not self.lamp_failure:
            self._energy_wh += self.rated_power_w * self.level / 100 * seconds / 3600
        return self.energy_wh

    # -- commands ------------------------------------------------------------------------

    def _heard(self, down: Downlink, *, multicast: bool) -> None:
        if self.deaf:
            self.dropped += 1
            return
        if down.fport != COMMAND_FPORT:
            self.ignored += 1
            return
        try:
            command = decode_command(down.payload)
        except ProtocolError as exc:
            self.bad_commands.append(str(exc))
            log.warning("luminaire %s: command refused: %s", self.name, exc)
            return
        self.commands.append(command)
        self._apply(command)
        if self.mute:
            return
        delay = self.rng.random() * self.reply_window if multicast else self.reply_delay
        self.reply_delays.append(delay)
        clock = self.medium.clock
        clock.call_at(clock.now() + delay, self._answer)

    def _apply(self, command: Command) -> None:
        # A STATUS_REQ is applied too, as far as the seq goes: its answer carries its seq,
        # which is how the gateway matches answer to question.
        self.seq = command.seq
        self._last_heard = self.medium.clock.now()
        if isinstance(command, SetLevel):
            self.ramp_s = command.ramp_s
            if command.level == FOLLOW_PROGRAM:
                self.following_program = True
            else:
                self.following_program = False
                self.level = command.level
        elif isinstance(command, SetProgram):
            self.program = command

    def _answer(self) -> None:
        self.radio.send(STATUS_FPORT, encode_status(self.status()))
        self.answers += 1
