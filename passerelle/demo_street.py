"""The example street's lighting inside ``passerelle demo``: a night in half a minute.

``examples/street.toml`` (three zones, presence sensors, a coeur-de-nuit switch-off, a
contactor) is loaded and validated as the agent would load it, then run on simulated
equipment:

* its luminaire controllers are :class:`hil.luminaire_sim.LuminaireSim` on the simulated
  radio (:func:`hil.lighting_rig.lighting_rig`: medium, SimGateway, the real NetworkServer
  and duty-cycle gate), its presence sensors class A devices that send a Cayenne LPP
  presence frame when someone walks by, its contactor a :class:`hil.gpio_sim.SimContactor`
  driven through the real GPIO source;
* the real :class:`~passerelle.lighting.engine.LightingEngine` plays one night, noon to
  noon, on an accelerated clock. What the street sends upstream (luminaire feedback,
  presence counts, the night's energy, the contactor's state) goes through the agent's
  store and uplink like any source's records, so the demo's broker cut buffers them while
  the street keeps its schedule.

The night played is tonight's, or the next one on which presence matters (not a festival
at full light). At noon the gateway is taken to have run all day: its controllers are off,
as the last dawn left them, and it knows it.

Two clocks, as in the engine: the schedule reads the night's (simulated) clock; the radio,
the duty-cycle gate and the confirmation timeouts run in real time. The gateway counts a
luminaire's energy at the level the luminaire last reported, so every second its answer
takes is counted at the old level. On a clock where a second is an hour of night that
figure would mean nothing; so :class:`NightClock` runs the night in *real time* while the
radio works (a command on the air or not yet confirmed, resends included; the multicast
answers still coming; a sensor's frame not yet handled; the contactor's auxiliary contact
not yet following), as a night in the field does, and runs the quiet stretches fast,
daylight four times faster than the dark. A command then takes the seconds of night it
takes in the field, so the gateway's figure, what the simulated lamps drew and the plan
agree to a few Wh. (Real time, not a stopped clock: two answers of one luminaire must not
carry one timestamp, or upstream they would be one record.)

That costs real time: about 21 s of radio for a whole night, which the default 30 s demo
has. The night must still end within the demo, so real time is reserved ahead for the
radio work the plan announces (:data:`ROUND_COST` a zone change, :data:`WALKER_COST` a
walker), and when a demo is too short for it the night moves on while answers are
outstanding. The street then counts the simulated time the gateway spent counting a state
its equipment had left (``unconfirmed``), and the summary shows the gateway's figure
beside the lamps' and the plan's with that explanation: it never claims an agreement it
did not measure. The demo waits a moment at its end for the night's last records (its
energy) to be handed to the agent.

Radio settings are the field's, compressed where they are times: controllers answer a
multicast within :data:`REPLY_WINDOW` s (a minute in the field) and the engine resends
after :data:`CONFIRM_TIMEOUT` s (a minute in the file). The controllers use the eight EU868
channels a network gives its devices, so a zone's answers rarely collide.

Only this module and :mod:`passerelle.demo` import ``hil``: a gateway never loads it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import tomllib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from .cabinet.config import GpioSourceConfig
from .config import Config, ConfigError, parse
from .lighting.engine import LightingEngine, Luminaire
from .lighting.plan import NightPlan, ZonePlan, energy_wh, night_of, plan_night, power_w
from .lighting.protocol import FOLLOW_PROGRAM, SetLevel, SetProgram
from .lorawan import phy
from .model import Priority, Record
from .sources import Emit

__all__ = [
    "NightClock",
    "Street",
    "find_street",
    "load_street",
    "pick_night",
    "plan_span_wh",
    "prepare",
    "tonight",
]

log = logging.getLogger("passerelle.demo.street")

STREET_FILE = Path("examples") / "street.toml"
MIN_BUDGET = 3.0  # s: below this there is no night worth showing
TAIL = 1.5  # s between the night's close and the demo's end (at most 15 % of the demo)
FRAME = 0.02  # s of real time between clock advances
DAY_WEIGHT = 0.25  # daylight (no zone lit in the plan) passes 4 times faster
FAST_SHARE = 0.2  # of the quiet stretches' nominal real time: never given to the radio
MAX_RESERVE = 0.85  # of the budget, for radio work
ROUND_COST = 2.0  # s of radio for a zone's change: command, answers, now and then a resend
WALKER_COST = 3.5  # s: the sensor's frame, three luminaires raised one by one, then back
FINISH = 0.5  # s: the budget's end, when the night closes whatever the radio does
REPLY_WINDOW = 0.8  # s: multicast answers spread over this (a minute in the field)
REPLY_DELAY = 0.05  # s: a unicast answer comes at once (the engine spaces its unicasts)
# s: the engine resends after this (a minute in the file). Longer than a controller may
# take: one whose answer was lost answers the resend only after its receive windows (2 s
# after its first answer); a resend sent just then would cross that answer (half duplex).
CONFIRM_TIMEOUT = 3.0
ANSWER_MARGIN = 0.3  # s: the command's airtime, the answer's, decoding
CONTACTOR_WAIT = 1.0  # s: an auxiliary contact not following by then is left to the view
# The five channels a European network adds to the three default ones (CFList).
CHANNELS = (868.1, 868.3, 868.5, 867.1, 867.3, 867.5, 867.7, 867.9)
CAYENNE_PRESENCE = 102  # Cayenne LPP data type "presence", one byte
EVENTS_KEPT = 64  # for the plain output, printed once a second
EVENTS_SHOWN = 6  # in the live view
TWO_WALKERS = 45.0  # s of budget from which a second walker is shown
WALKER_WAIT = 2.0  # s: a sensor's frame not handled by then was lost
WALKER_FRAMES = 3  # frames a sensor sends for one walker at most
WALKER_PATIENCE = 1.0  # s a walker's frame waits for the gateway to stop transmitting
AFTER_STEP = 0.1  # s between engine steps once the night is played (late answers)
# The summary explains a zone's figures when it was out of step (late or unconfirmed) this
# many seconds of night, and that moved a figure by at least NOTED_GAP percent.
NOTED_LAG = 300.0
NOTED_GAP = 0.5
_STEERING = ("multicast_commands", "unicast_commands", "retries")


def find_street() -> Path | None:
    """``examples/street.toml`` next to the package (a source checkout), else in the
    working directory; None when neither has it (an installed wheel has no examples)."""
    for base in (Path(__file__).resolve().parent.parent, Path.cwd()):
        path = base / STREET_FILE
        if path.is_file():
            return path
    return None


def load_street(path: Path, data_dir: Path) -> Config:
    """The street's configuration, validated as the agent would; its uplink (a TLS broker
    with certificates in /etc) and data directory are replaced by placeholders."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError([("<file>", f"cannot read '{path}': {e}")]) from None
    data["uplink"] = {"url": "mqtt://127.0.0.1:1883", "allow_plaintext": True}
    data.setdefault("gateway", {})["data_dir"] = str(data_dir)
    cfg = parse(data, path.parent)
    if cfg.lighting is None:
        raise ConfigError([("lighting", f"'{path}' has no [lighting] section")])
    return cfg


def tonight(cfg: Config) -> date:
    lc = cfg.lighting
    assert lc is not None
    return night_of(datetime.now(lc.tz), lc.tz)


def pick_night(cfg: Config, first: date) -> date:
    """``first``, unless presence changes nothing that night (a festival at full light):
    then the next night on which a watched zone's program has sensor periods."""
    lc = cfg.lighting
    assert lc is not None
    watched = {s.zone for s in lc.presence_sensors}
    for ahead in range(32):
        night = first + timedelta(days=ahead)
        plan = plan_night(lc, night)
        if any(plan.zones[z].sensor_periods for z in watched):
            return night
    return first


def prepare(workdir: Path, duration: float) -> tuple[Street | None, str | None]:
    """The street for a demo of ``duration`` s in ``workdir``, or None and why not."""
    path = find_street()
    if path is None:
        return None, (
            f"{STREET_FILE} not found next to the package nor in the working "
            "directory (an installed package has no examples): no street lighting"
        )
    budget = duration - min(TAIL, 0.15 * duration)
    if budget < MIN_BUDGET:
        return None, f"a {duration:g} s demo is too short to play the street's night"
    home = workdir / "street"
    home.mkdir(parents=True, exist_ok=True)
    try:
        cfg = load_street(path, home)
    except ConfigError as e:
        return None, f"{path} is not valid, no street lighting: {e}"
    return Street(cfg, path, pick_night(cfg, tonight(cfg)), budget, home), None


def plan_span_wh(zone: Any, zp: ZonePlan, start: datetime, end: datetime) -> float:
    """The plan's energy for zone ``zone`` between ``start`` and ``end`` (Wh), as the
    planner counts a whole night (ramps included)."""
    steps = [(start, zp.level_at(start))]
    steps += [(t, lv) for t, lv in zp.steps if start.timestamp() < t.timestamp() < end.timestamp()]
    return energy_wh(zone, steps, end)


def counted_level(lm: Luminaire) -> int:
    """The level the engine's energy account uses for ``lm``: what it last reported, else
    what it was told (LightingEngine._lit_level; the demo compares it with the lamp's)."""
    if lm.confirmed is not None:
        return lm.confirmed
    return lm.sent if lm.sent is not None else lm.target


# --------------------------------------------------------------------------------------------
# The accelerated clock


class NightClock:
    """Simulated time from ``start`` to ``end`` within ``budget`` real seconds.

    Progress is counted in "effort": a simulated second of night (``dark_from`` to
    ``dark_until``) costs 1, one of daylight :data:`DAY_WEIGHT`. ``reserve(t)`` is the real
    time the radio work expected after ``t`` will take (at most :data:`MAX_RESERVE` of the
    budget is kept for it). ``quiet``: the real seconds the quiet stretches take (default:
    what the budget leaves after the reserve).

    While ``busy`` the night runs in real time, as in the field, as long as the real time
    left still covers the reserve, :data:`FINISH` and :data:`FAST_SHARE` of the quiet
    stretches' nominal time; otherwise it moves on fast (``rushed`` counts those real
    seconds). Quiet, it keeps the ``quiet`` pace, faster when the radio took more than its
    reserve, and is at ``end`` by the budget's end whatever happens. When the radio takes
    less than reserved the night ends early: the slack was kept for answers that come late.
    """

    def __init__(
        self,
        start: float,
        dark_from: float,
        dark_until: float,
        end: float,
        budget: float,
        reserve: Callable[[float], float] = lambda t: 0.0,
        quiet: float | None = None,
    ) -> None:
        dark_from = min(max(dark_from, start), end)
        dark_until = min(max(dark_until, dark_from), end)
        self.start, self.end = start, end
        self.budget = max(budget, FRAME)
        self._bounds = (start, dark_from, dark_until, end)
        self._weights = (DAY_WEIGHT, 1.0, DAY_WEIGHT)
        self.total = max(self.effort(end), 1e-9)
        # The radio gets what it needs, up to MAX_RESERVE of the budget.
        self._scale = min(1.0, MAX_RESERVE * self.budget / max(reserve(start), 1e-9))
        self._reserve = reserve
        if quiet is None:
            quiet = max(self.budget - self.reserve(start), FAST_SHARE * self.budget)
        self.quiet = max(quiet, FRAME)
        self.waiting = False  # whether the last advance waited for the radio
        self.sim = start
        self.elapsed = 0.0  # real seconds played
        self.waited = 0.0  # real seconds the night ran in real time for the radio
        self.rushed = 0.0  # real seconds the radio worked but the clock could not wait

    def reserve(self, t: float) -> float:
        return self._scale * self._reserve(t)

    def effort(self, t: float) -> float:
        b, total = self._bounds, 0.0
        for i, w in enumerate(self._weights):
            total += w * (min(max(t, b[i]), b[i + 1]) - b[i])
        return total

    def at_effort(self, e: float) -> float:
        b = self._bounds
        for i, w in enumerate(self._weights):
            span = w * (b[i + 1] - b[i])
            if e <= span or i == len(self._weights) - 1:
                return min(b[i] + e / w, b[i + 1])
            e -= span
        return self.end  # unreachable: the loop returns on its last segment

    def _quiet_left(self) -> float:
        """The nominal real time of the quiet stretches still ahead."""
        return self.quiet * (self.total - self.effort(self.sim)) / self.total

    def _spare(self) -> float:
        return self.budget - self.elapsed - self.reserve(self.sim) - FINISH

    def can_wait(self, at: float | None = None) -> bool:
        """Whether the clock may wait for the radio now (at ``at``, default where it is)."""
        if at is not None and at != self.sim:
            was, self.sim = self.sim, at
            try:
                return self.can_wait()
            finally:
                self.sim = was
        return self.sim < self.end and self._spare() > FAST_SHARE * self._quiet_left()

    def advance(self, dt: float, busy: bool) -> float:
        """``dt`` real seconds passed; returns the simulated time to reach."""
        self.elapsed += dt
        self.waiting = busy and self.can_wait()
        if self.waiting:
            self.waited += dt
            self.sim = min(self.sim + dt, self.end)
            return self.sim
        if busy and self.sim < self.end:
            self.rushed += dt
        nominal = self._quiet_left()
        room = min(max(self._spare(), FAST_SHARE * nominal), nominal)
        room = min(room, self.budget - self.elapsed - FINISH / 2)  # on time, whatever else
        left = self.total - self.effort(self.sim)
        step = left * dt / room if room > dt else left
        self.sim = self.at_effort(min(self.effort(self.sim) + step, self.total))
        return self.sim

    def hold(self, sim: float) -> None:
        """The night is at ``sim`` (its stepper stopped there): go on from it."""
        self.sim = min(max(sim, self.start), self.end)


# --------------------------------------------------------------------------------------------
# What happened, for the view and the summary


@dataclass
class ZoneLog:
    levels: list[tuple[float, int, str]] = field(default_factory=list)  # (sim, level, cause)
    reported: dict[str, list[int]] = field(default_factory=dict)  # luminaire -> STATUS levels
    confirmations: int = 0
    lamps_wh: float = 0.0  # what the simulated lamps drew, through the zone's curve
    unconfirmed_s: float = 0.0  # night during which the gateway counted a level left
    late_s: float = 0.0  # night during which a lamp was not where the gateway asked
    pending: int = 0
    boosted: tuple[str, ...] = ()


@dataclass
class Walker:
    """Someone passing a presence sensor at ``at`` (simulated time)."""

    sensor: str
    name: str  # the sensor's record name, "presence/<channel>" for Cayenne LPP
    zone: str
    near: str | None
    at: float
    due: float = 0.0  # real (monotonic) time the night reached ``at``, 0 before
    sent: float = 0.0  # real (monotonic) time its last frame left, 0 before
    frames: int = 0  # a motion sensor repeats while it sees someone, if nobody heard it
    seen: float | None = None  # when the engine got the detection
    raised: list[str] = field(default_factory=list)
    by_radio: bool = True


class Street:
    """The example street as one of the demo agent's sources (name ``street``).

    ``cfg`` comes from :func:`load_street`; ``night`` is the night played; ``budget`` the
    real seconds from the start of :meth:`run` to the end of the part played. ``span``:
    the part of the night played (default: noon to noon, the whole window; only a whole
    night closes and sends its energy). ``quiet``: the real seconds its quiet stretches
    take (default: whatever the budget leaves; see :class:`NightClock`). ``walkers``: how
    many people pass a sensor (default: one, two from :data:`TWO_WALKERS` s of budget).
    What the street sends upstream goes through the ``emit`` the agent gives :meth:`run`.
    """

    name = "street"

    def __init__(
        self,
        cfg: Config,
        path: Path,
        night: date,
        budget: float,
        workdir: Path,
        *,
        span: tuple[datetime, datetime] | None = None,
        quiet: float | None = None,
        walkers: int | None = None,
    ) -> None:
        lc = cfg.lighting
        assert lc is not None
        self.cfg = cfg
        self.path = path
        self.night = night
        self.workdir = workdir
        self.lc = msgspec.structs.replace(
            lc, confirm_timeout=CONFIRM_TIMEOUT, reply_window=REPLY_WINDOW, clock_check=False
        )
        self.tz = lc.tz
        self.plan: NightPlan = plan_night(lc, night)
        first, last = span if span is not None else (self.plan.start, self.plan.end)
        start, end = first.timestamp(), last.timestamp()
        if not self.plan.start.timestamp() <= start < end <= self.plan.end.timestamp():
            raise ValueError(
                f"span {first.isoformat()} to {last.isoformat()} is not inside the night "
                f"of {night.isoformat()} (noon to noon)"
            )
        self.start, self.end = start, end
        self.whole = span is None or (start, end) == (
            self.plan.start.timestamp(),
            self.plan.end.timestamp(),
        )
        changes = [
            (t.timestamp(), lv)
            for zp in self.plan.zones.values()
            for t, lv in zp.steps
            if start < t.timestamp() < end
        ]
        lit = [t for t, lv in changes if lv] + [
            start for zp in self.plan.zones.values() if zp.level_at(first)
        ]
        dark_from = min(lit, default=start) - 1800
        dark_until = max((t for t, lv in changes if not lv), default=end) + 1800
        if walkers is None:
            walkers = 2 if budget >= TWO_WALKERS else 1
        self.walkers = self._walkers_tonight(walkers)
        radio = [
            t.timestamp()
            for z, zp in self.plan.zones.items()
            if lc.zones[z].luminaires
            for t, _ in zp.steps[1:]
            if start < t.timestamp() < end
        ] + [w.at for w in self.walkers]
        cost = {w.at: WALKER_COST for w in self.walkers}

        def reserve(t: float) -> float:
            return sum(cost.get(at, ROUND_COST) for at in radio if at > t)

        self.clock = NightClock(start, dark_from, dark_until, end, budget, reserve, quiet)
        self.sim = start  # the engine's clock: where the stepper is
        self.zones = {z: ZoneLog() for z in lc.zones}
        self.events: deque[tuple[float, str]] = deque(maxlen=EVENTS_KEPT)
        self.event_count = 0  # events so far (the deque keeps the last few)
        self.relay_states: list[tuple[float, bool, bool]] = []  # (sim, on, aux contact agreed)
        self._relay_switched = 0.0  # real (monotonic) time of the last switch
        self.energy: dict[str, float] = {}  # "<zone>/energy..." -> Wh, once the night closed
        self.backhaul_up = True
        self.during_cut = {"changes": 0, "commands": 0, "confirmations": 0}
        self.records_upstream = 0
        self.error: str | None = None
        self.finished = False
        self.night_over = asyncio.Event()  # set with ``finished``
        self._gateway_at_end: dict[str, float] | None = None  # its running counts, then
        self.engine: LightingEngine | None = None
        self.rig: Any = None
        self.contactor: Any = None
        self._emit: Emit | None = None
        self._queue: asyncio.Queue[tuple[list[Record], Priority]] = asyncio.Queue()
        self._drained = asyncio.Event()  # the queue is empty, its last batch handed over
        self._drained.set()
        self._started = 0.0  # loop time run() began
        self._ran = False
        self._sent_at_cut = 0
        # The last downlink, the seconds its answers may take, the answers heard by then.
        self._last_tx: tuple[Any, float, int] | None = None
        self._priority = {d.name: Priority[d.priority.upper()] for d in cfg.lorawan.devices}

    @property
    def devices(self) -> tuple[str, ...]:
        """Devices whose records the street sends upstream (presence stays in the gateway)."""
        lums = [lum for z in self.lc.zones.values() for lum in z.luminaires]
        wanted = {z.relay.partition("/")[0] for z in self.lc.zones.values() if z.relay}
        gpio = [
            s.device or s.name
            for s in self.cfg.sources
            if isinstance(s, GpioSourceConfig) and s.name in wanted
        ]
        return (*lums, "lighting", *gpio)

    # -- what goes upstream ----------------------------------------------------------------

    async def _forward(self, records: Sequence[Record], priority: Priority) -> None:
        if self._emit is not None and records:
            await self._emit(records, priority)
            self.records_upstream += len(records)

    async def _engine_emit(self, records: Sequence[Record], priority: Priority) -> None:
        for r in records:
            if r.device == "lighting" and "/energy" in r.name and isinstance(r.value, float):
                self.energy[r.name] = r.value
        # Queued, not awaited: a store commit takes real milliseconds, which the engine's
        # step (presence counts every quarter of an hour) must not spend on the fast clock.
        self._hand_over(list(records), priority)

    def _hand_over(self, records: list[Record], priority: Priority) -> None:
        self._queue.put_nowait((records, priority))
        self._drained.clear()

    async def _forwarder(self) -> None:
        while True:
            records, priority = await self._queue.get()
            await self._forward(records, priority)
            if self._queue.empty():
                self._drained.set()

    async def handed_over(self, timeout: float) -> bool:
        """Wait (up to ``timeout`` s) until the night is played and what it produced so far
        is in the agent's hands; False if it is not by then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self.night_over.wait(), timeout)
            await asyncio.wait_for(self._drained.wait(), max(deadline - loop.time(), 0.0))
        except TimeoutError:
            return False
        return True

    def _observe(self, records: Sequence[Record]) -> Sequence[Record]:
        """Every record the network server decodes comes here: the engine sees it first (as
        in the agent) and what it keeps goes upstream, at its device's priority."""
        engine = self.engine
        assert engine is not None
        lums = engine.luminaires
        waiting = {r.device for r in records if r.device in lums and lums[r.device].wait > 0}
        kept = engine.observe(records)
        for r in records:
            for w in self.walkers:
                if w.seen is None and (r.device, r.name) == (w.sensor, w.name):
                    w.seen = self.sim
            lum = lums.get(r.device)
            if lum is not None and r.name == "level" and isinstance(r.value, int):
                said = self.zones[lum.zone].reported.setdefault(lum.name, [])
                if not said or said[-1] != r.value:
                    said.append(r.value)
        for name in waiting:
            lum = lums[name]
            if lum.wait == 0 and lum.confirmed == lum.sent:
                self.zones[lum.zone].confirmations += 1
                if not self.backhaul_up:
                    self.during_cut["confirmations"] += 1
        batches: dict[Priority, list[Record]] = {}
        for r in kept:
            batches.setdefault(self._priority.get(r.device, Priority.TELEMETRY), []).append(r)
        for priority, batch in batches.items():
            self._hand_over(batch, priority)
        return kept

    def backhaul(self, up: bool) -> None:
        """The demo cut the broker (False) or brought it back (True)."""
        self.backhaul_up = up
        if not up and self.engine is not None:
            self._sent_at_cut = sum(self.engine.counts[k] for k in _STEERING)

    # -- the night ---------------------------------------------------------------------------

    async def run(self, emit: Emit) -> None:
        if self._ran:  # restarted by the agent's supervisor: a night is played once
            await asyncio.Future()
        self._ran = True
        self._emit = emit
        self._started = asyncio.get_running_loop().time()
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the rest of the demo goes on without it
            self.error = f"{type(e).__name__}: {e}"
            log.exception("demo street stopped")
            await asyncio.Future()

    async def _run(self) -> None:
        from hil.lighting_rig import lighting_rig  # the demo only: gateways never load hil

        async with contextlib.AsyncExitStack() as stack:
            rig = await stack.enter_async_context(
                lighting_rig(
                    self.cfg, self.workdir, reply_window=REPLY_WINDOW, reply_delay=REPLY_DELAY
                )
            )
            self.rig = rig
            # The gateway has run all along, so it knows where its controllers are: at noon
            # off, as the last dawn left them; later, where the plan put them. (Started
            # cold, it would command and confirm every luminaire first; the street's tests
            # do that.)
            at_start = datetime.fromtimestamp(self.start, self.tz)
            for zname, zone in self.lc.zones.items():
                level = self.plan.zones[zname].level_at(at_start)
                for n in zone.luminaires:
                    rig.luminaires[n].radio.channels = CHANNELS
                    rig.luminaires[n].level = level
            rig.server.clock = lambda: self.sim  # feedback stamped with the night's time
            downlinks = _Downlinks(rig.server)
            stack.push_async_callback(downlinks.end)  # before the radio closes
            relays, gpio = self._contactors()
            self.engine = LightingEngine(
                self.lc,
                self._engine_emit,
                downlinks=downlinks,
                relays=relays,
                clock=lambda: self.sim,
                multicast_settle=REPLY_WINDOW + ANSWER_MARGIN,
            )
            rig.attach(self._observe)
            for lm in self.engine.luminaires.values():
                lm.sent = lm.confirmed = rig.luminaires[lm.name].level
            if self.start > self.plan.start.timestamp():
                self._programs_given(at_start)
            tasks = [asyncio.create_task(self._forwarder(), name="street-forward")]
            tasks += [
                asyncio.create_task(src.run(self._forward), name=f"street-{src.name}")
                for src in gpio
            ]
            stack.push_async_callback(_cancel, tasks)
            await self._play()
            self._gateway_at_end = {z: zs.energy_wh for z, zs in self.engine.zones.items()}
            self.finished = True
            self.night_over.set()
            # Late answers and resends: the next day in real time (nothing more counted).
            loop = asyncio.get_running_loop()
            ended = loop.time()
            while True:
                await asyncio.sleep(AFTER_STEP)
                self.sim = self.end + loop.time() - ended
                await self._step(0.0)

    def _programs_given(self, when: datetime) -> None:
        """Started after noon: the gateway gave its controllers tonight's program at noon
        (as a whole night shows), so the engine and the controllers already have it."""
        engine, rig = self.engine, self.rig
        assert engine is not None and rig is not None
        engine.plan_for(self.night)
        offset = when.utcoffset()
        # As the engine keys it (LightingEngine._programs): the night and the UTC offset.
        offset_q = int(offset.total_seconds() // 900) if offset is not None else 0
        for zname, zone in self.lc.zones.items():
            points = engine.local_program(zname) if zone.luminaires else None
            if points is None:
                continue
            engine.zones[zname].program_sent = (self.night, offset_q)
            program = SetProgram(0, zone.default_level, offset_q, tuple(points))
            for n in zone.luminaires:
                rig.luminaires[n].program = program

    def _contactors(self) -> tuple[dict[str, Any], list[Any]]:
        """The zones' relays, on simulated GPIO lines, through the real GPIO source."""
        from hil.gpio_sim import SimGpioChip

        from .cabinet.inputs import GpioSource, RelaySpec

        wanted = {z.relay.partition("/")[0] for z in self.lc.zones.values() if z.relay}
        relays: dict[str, Any] = {}
        sources = []
        for s in self.cfg.sources:
            if not isinstance(s, GpioSourceConfig) or s.name not in wanted:
                continue
            chip = SimGpioChip(lambda: int(time.monotonic() * 1000))
            for r in s.relays:
                if r.feedback_line is None:
                    chip.output(r.line)
                else:
                    self.contactor = chip.contactor(
                        r.line, r.feedback_line, coil_active=1 if r.active_high else 0
                    )
            specs = [
                RelaySpec(
                    r.name,
                    r.line,
                    r.active_high,
                    r.initial,
                    r.feedback_line,
                    r.feedback_active_low,
                    r.settle_ms,
                )
                for r in s.relays
            ]
            src = GpioSource(
                s.name,
                chip,
                relays=specs,
                interval=s.interval,
                device=s.device,
                wall=lambda: self.sim,
            )
            sources.append(src)
            relays.update({f"{s.name}/{r.name}": src.relay(r.name) for r in s.relays})
        return relays, sources

    def _walkers_tonight(self, count: int) -> list[Walker]:
        """People in the sensor period (within the span): by the middle sensor, later by the
        first."""
        sensors = self.lc.presence_sensors
        if not sensors or count < 1:
            return []
        periods = self.plan.zones[sensors[0].zone].sensor_periods
        if periods:
            a, b = periods[0][0].timestamp(), periods[0][1].timestamp()
        else:  # nothing to light tonight, but the detections are still counted
            mid = self.plan.sun.solar_midnight.timestamp()
            a, b = mid - 7200, mid + 7200
        a, b = max(a, self.start), min(b, self.end)
        if a >= b:
            return []
        picks = [(0.3, sensors[len(sensors) // 2]), (0.65, sensors[0])][:count]
        return [Walker(s.device, s.name, s.zone, s.near, a + f * (b - a)) for f, s in picks]

    def _busy(self) -> bool:
        """Work the night waits for: a command on its way or not yet confirmed (until the
        engine's resends give up), answers to the last downlink still coming, a walker's
        frame not yet handled, the contactor's auxiliary contact not yet following."""
        engine = self.engine
        assert engine is not None
        mono = asyncio.get_running_loop().time()
        if any(w.sent and w.seen is None and mono - w.sent < WALKER_WAIT for w in self.walkers):
            return True
        if self._contactor_pending() and mono - self._relay_switched < CONTACTOR_WAIT:
            return True
        return self._on_air() or any(
            lm.in_flight or lm.wait > 0 for lm in engine.luminaires.values()
        )

    def _on_air(self) -> bool:
        """A command on the air or its answers coming now: a sensor's frame would be lost.
        (Answers to a program too: the engine does not wait for them, but they fill the
        air.)"""
        engine, rig = self.engine, self.rig
        assert engine is not None and rig is not None
        if any(lm.in_flight for lm in engine.luminaires.values()):
            return True
        sent = rig.gateway.sent
        if not sent:
            return False
        last = sent[-1]
        heard = engine.counts["status_received"]
        if self._last_tx is None or self._last_tx[0] is not last:
            answers, within = self._answers_to(last.payload)
            self._last_tx = (last, within, heard + answers)
        _, within, enough = self._last_tx
        return rig.medium.clock.now() < last.end + within and heard < enough

    def _answers_to(self, frame: bytes) -> tuple[int, float]:
        """How many answers a downlink calls for, and the seconds after its end by which
        they are in: a multicast's spread over the reply window, a unicast's come at once."""
        try:
            addr = phy.decode(frame).dev_addr  # type: ignore[union-attr]
        except (phy.PhyError, AttributeError):
            return 0, 0.0
        for g in self.cfg.lorawan.multicast:
            if int(g.dev_addr, 16) == addr:
                return len(g.devices), REPLY_WINDOW + ANSWER_MARGIN
        return 1, REPLY_DELAY + ANSWER_MARGIN

    async def _play(self) -> None:
        engine = self.engine
        assert engine is not None
        loop = asyncio.get_running_loop()
        # The budget runs from the start of run(): setting the rig up took some of it.
        self.clock.elapsed = loop.time() - self._started
        await self._step(0.0)
        last = loop.time()
        while self.sim < self.clock.end:
            await asyncio.sleep(FRAME)
            now = loop.time()
            target = self.clock.advance(now - last, self._busy())
            last = yielded = now
            while self.sim < target:
                before, self.sim = self.sim, min(self.sim + self.lc.tick, target)
                self._walk()
                await self._step(self.sim - before)
                if self._busy() and self.clock.can_wait(at=self.sim):
                    self.clock.hold(self.sim)  # real time from where the radio started
                    break
                if loop.time() - yielded > FRAME / 4:
                    await asyncio.sleep(0)
                    yielded = loop.time()

    async def _step(self, dt: float) -> None:
        """One engine step at the night's time, then what it decided is under way."""
        engine = self.engine
        assert engine is not None
        # Out of step over the ``dt`` that ends now: what held before this step decides.
        lag = {z: (self._unconfirmed(z), self._late(z)) for z in self.zones} if dt > 0 else {}
        await engine.step()
        if self._spawned():
            # Commands the step spawned mark themselves in flight once they run: let them,
            # before the night's clock asks whether the radio works.
            await asyncio.sleep(0)
        self._after_step(dt, lag)
        self._contactor_check()

    def _spawned(self) -> bool:
        """Whether the last step has commands to send (or resend) that have not started."""
        engine = self.engine
        assert engine is not None
        mono = asyncio.get_running_loop().time()
        return any(
            not lm.in_flight
            and (lm.sent != lm.target or (lm.wait > 0 and mono - lm.sent_at >= lm.wait))
            for lm in engine.luminaires.values()
        )

    def _walk(self) -> None:
        """A walker reaches a sensor: its frame on the radio (a record, without one)."""
        engine, rig = self.engine, self.rig
        assert engine is not None
        mono = asyncio.get_running_loop().time()
        for w in self.walkers:
            if w.at > self.sim:
                continue
            w.due = w.due or mono
            again = w.seen is None and w.frames < WALKER_FRAMES and mono - w.sent > WALKER_WAIT
            if (w.sent and not again) or (self._on_air() and mono - w.due < WALKER_PATIENCE):
                continue  # a frame sent while the gateway transmits would be lost: later
            w.sent, w.frames = mono, w.frames + 1
            if w.frames == 1:
                self._event(f"someone walks by {w.sensor}" + (f" near {w.near}" * bool(w.near)))
            channel = re.fullmatch(r"presence/(\d+)", w.name)
            if rig is not None and w.sensor in rig.sensors and channel is not None:
                rig.uplink(w.sensor, 1, bytes([int(channel.group(1)), CAYENNE_PRESENCE, 1]))
            else:
                w.by_radio = False
                w.seen = self.sim
                engine.observe([Record(w.sensor, w.name, 1, self.sim)])

    def _after_step(self, dt: float, lag: dict[str, tuple[bool, bool]]) -> None:
        """Account ``dt`` simulated seconds of the lamps (``lag``: whether each zone was
        unconfirmed, late, over them), note what the step decided."""
        engine, rig = self.engine, self.rig
        assert engine is not None
        for zname, zl in self.zones.items():
            zone, zs = self.lc.zones[zname], engine.zones[zname]
            if dt > 0 and rig is not None:
                zl.lamps_wh += self._zone_draw(zname) * dt / 3600.0
                for n in zone.luminaires:
                    rig.luminaires[n].advance_energy(dt)  # the controllers' own meters
                unconfirmed, late = lag.get(zname, (False, False))
                zl.unconfirmed_s += dt * unconfirmed
                zl.late_s += dt * late
            if not zl.levels or zl.levels[-1][1:] != (zs.level, zs.cause):
                zl.levels.append((self.sim, zs.level, zs.cause))
                relay = f", {zone.relay} {'on' if zs.relay_on else 'off'}" if zone.relay else ""
                self._event(f"{zname} -> {zs.level} % ({zs.cause}{relay})")
                if not self.backhaul_up:
                    self.during_cut["changes"] += 1
            boosted = tuple(n for n in zone.luminaires if engine.luminaires[n].target > zs.level)
            if boosted != zl.boosted:
                if boosted:
                    level = engine.luminaires[boosted[0]].target
                    self._event(f"{' '.join(boosted)} -> {level} % (presence)")
                    for w in self.walkers:
                        if w.seen is not None and not w.raised and w.zone == zname:
                            w.raised = list(boosted)
                else:
                    self._event(f"{' '.join(zl.boosted)} back to {zs.level} %")
                zl.boosted = boosted
            lums = [engine.luminaires[n] for n in zone.luminaires]
            pending = sum(1 for lm in lums if lm.wait > 0)
            if zl.pending and not pending:
                ok = sum(1 for lm in lums if lm.confirmed == lm.sent)
                self._event(f"{zname}: {ok}/{len(lums)} luminaires confirm")
            zl.pending = pending
        if not self.backhaul_up:
            self.during_cut["commands"] = (
                sum(engine.counts[k] for k in _STEERING) - self._sent_at_cut
            )

    def _unconfirmed(self, zname: str) -> bool:
        """Whether the gateway's energy count for the zone now uses a state its equipment
        has left: a controller's level it has not reported yet, or a contactor whose
        auxiliary contact does not follow yet."""
        engine, rig = self.engine, self.rig
        assert engine is not None and rig is not None
        zone = self.lc.zones[zname]
        if any(
            counted_level(engine.luminaires[n]) != rig.luminaires[n].level for n in zone.luminaires
        ):
            return True
        on = engine.zones[zname].relay_on
        return on is not None and self.contactor is not None and self.contactor.closed != on

    def _late(self, zname: str) -> bool:
        """Whether the zone's equipment is not where the gateway asked: a command still on
        its way, or lost and not yet resent; a contactor not yet following its coil."""
        engine, rig = self.engine, self.rig
        assert engine is not None and rig is not None
        zone = self.lc.zones[zname]
        if any(engine.luminaires[n].target != rig.luminaires[n].level for n in zone.luminaires):
            return True
        on = engine.zones[zname].relay_on
        return on is not None and self.contactor is not None and self.contactor.closed != on

    def _zone_draw(self, zname: str) -> float:
        """Watts the zone's lamps draw now, from what the simulated equipment does."""
        engine, rig = self.engine, self.rig
        assert engine is not None and rig is not None
        zone = self.lc.zones[zname]
        if zone.relay is not None and self.contactor is not None and not self.contactor.closed:
            return 0.0
        draw = sum(power_w(zone, rig.luminaires[n].level) for n in zone.luminaires)
        return draw + zone.count * power_w(zone, engine.zones[zname].level)

    def _contactor_pending(self) -> bool:
        return bool(self.relay_states) and not self.relay_states[-1][2]

    def _contactor_check(self) -> None:
        engine = self.engine
        if engine is None or self.contactor is None:
            return
        for zname, zone in self.lc.zones.items():
            on = engine.zones[zname].relay_on
            if zone.relay is None or on is None:
                continue
            if not self.relay_states or self.relay_states[-1][1] != on:
                self.relay_states.append((self.sim, on, False))
                self._relay_switched = asyncio.get_running_loop().time()
            t, state, agreed = self.relay_states[-1]
            if not agreed and bool(self.contactor.value()) == state:
                self.relay_states[-1] = (t, state, True)
                self._event(f"contactor {'closed' if state else 'open'}: auxiliary contact agrees")

    def _event(self, text: str) -> None:
        self.events.append((self.sim, text))
        self.event_count += 1

    # -- showing it --------------------------------------------------------------------------

    def local(self, t: float) -> datetime:
        return datetime.fromtimestamp(t, self.tz)

    def clock_text(self) -> str:
        return self.local(self.sim).strftime("%a %H:%M")

    def gateway_wh(self, zname: str) -> float:
        """The gateway's energy figure for the zone: what it sent upstream once the night
        closed, else its running count."""
        closed = self.energy.get(f"{zname}/energy")
        if closed is not None:
            return closed
        if self._gateway_at_end is not None:  # part of a night: where it stopped
            return self._gateway_at_end[zname]
        return self.engine.zones[zname].energy_wh if self.engine is not None else 0.0

    def zone_rows(self) -> list[tuple[str, str, str, str, str]]:
        """(zone, level, cause, feedback, energy so far) for each zone."""
        engine = self.engine
        rows = []
        for zname, zone in self.lc.zones.items():
            if engine is None:
                rows.append((zname, "-", "-", "-", "-"))
                continue
            zs, zl = engine.zones[zname], self.zones[zname]
            cause = zs.cause
            if zl.boosted:
                boost = engine.luminaires[zl.boosted[0]].target
                cause += f", {len(zl.boosted)} at {boost} % (presence)"
            if zone.luminaires:
                lums = [engine.luminaires[n] for n in zone.luminaires]
                ok = sum(
                    1
                    for lm in lums
                    if lm.sent is not None and lm.wait == 0 and lm.confirmed == lm.sent
                )
                pending = sum(1 for lm in lums if lm.wait > 0)
                feedback = f"{ok}/{len(lums)} confirmed" + (f", {pending} waiting" * bool(pending))
            elif self.contactor is not None and zs.relay_on is not None:
                aux = "closed" if self.contactor.value() else "open"
                feedback = f"contactor {'on' if zs.relay_on else 'off'}, aux contact {aux}"
            else:
                feedback = "-"
            energy = f"{self.gateway_wh(zname) / 1000:.2f} kWh"
            rows.append((zname, f"{zs.level} %", cause, feedback, energy))
        return rows

    def pace_text(self) -> str:
        if self.finished:
            return "night over"
        return "waiting for the radio" if self.clock.waiting else "fast"

    def status_line(self) -> str:
        if self.error:
            return f"street stopped: {self.error}"
        zones = " | ".join(f"{z} {lv} {cause}, {fb}" for z, lv, cause, fb, _ in self.zone_rows())
        return f"street {self.clock_text()} ({self.pace_text()})  {zones}"

    def recent(self, since: int = 0) -> list[str]:
        """The events kept, or those after the first ``since`` ones."""
        fresh = list(self.events)[max(0, len(self.events) - (self.event_count - since)) :]
        return [f"{self.local(t):%H:%M} {text}" for t, text in fresh]

    def render(self) -> Any:
        """The street for the live view (a rich renderable)."""
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        title = (
            f"street {self.path.name}, night of {self.night:%a %d %b}: {self.clock_text()} "
            f"({self.pace_text()}; {self._span_text()} in at most {self.clock.budget:.0f} s)"
        )
        table = Table(title=title, title_style="bold", expand=False)
        for name, justify in (
            ("zone", "left"),
            ("level", "right"),
            ("cause", "left"),
            ("feedback", "left"),
            ("gateway's energy", "right"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        for row in self.zone_rows():
            table.add_row(*row)
        parts: list[Any] = [table]
        if self.error:
            parts.append(Text(f"the street stopped: {self.error}", style="red"))
        parts += [Text(line, style="dim") for line in self.recent()[-EVENTS_SHOWN:]]
        return Group(*parts)

    def _span_text(self) -> str:
        if self.whole:
            return "noon to noon"
        return f"{self.local(self.start):%H:%M} to {self.local(self.end):%H:%M}"

    # -- the summary ---------------------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        engine, rig = self.engine, self.rig
        counts = dict(engine.counts) if engine is not None else {}
        first, last = self.local(self.start), self.local(self.end)

        def iso(t: float | None) -> str | None:
            return None if t is None else self.local(t).isoformat(timespec="seconds")

        zones: dict[str, Any] = {}
        for zname, zone in self.lc.zones.items():
            zl, zp = self.zones[zname], self.plan.zones[zname]
            applied = {}
            if rig is not None:
                for n in zone.luminaires:
                    said = [
                        c.level
                        for c in rig.luminaires[n].commands
                        if isinstance(c, SetLevel) and c.level != FOLLOW_PROGRAM
                    ]
                    applied[n] = [lv for i, lv in enumerate(said) if not i or said[i - 1] != lv]
            if zone.luminaires:
                seen = sorted({lv for said in zl.reported.values() for lv in said})
            else:  # on the contactor: what its auxiliary contact confirmed
                seen = sorted({100 if on else 0 for _, on, agreed in self.relay_states if agreed})
            zones[zname] = {
                "levels": [[iso(t), lv, cause] for t, lv, cause in zl.levels],
                "levels_seen": seen,
                "reported": zl.reported,
                "applied": applied,
                "confirmations": zl.confirmations,
                "energy_wh": self.energy.get(f"{zname}/energy"),  # sent upstream
                "gateway_wh": round(self.gateway_wh(zname), 1),
                "lamps_wh": round(zl.lamps_wh, 1),
                "plan_wh": round(plan_span_wh(zone, zp, first, last), 1),
                "unconfirmed_s": round(zl.unconfirmed_s),
                "late_s": round(zl.late_s),
                "baseline_wh": self.energy.get(
                    f"{zname}/energy-baseline", round(zp.baseline_wh, 1)
                ),
            }
        out: dict[str, Any] = {
            "config": str(self.path),
            "night": self.night.isoformat(),
            "span": [iso(self.start), iso(self.end)],
            "finished": self.finished,
            "played_s": round(self.clock.elapsed, 2),
            "waited_s": round(self.clock.waited, 2),
            "rushed_s": round(self.clock.rushed, 2),
            "budget_s": round(self.clock.budget, 2),
            "zones": zones,
            "presence": [
                {
                    "sensor": w.sensor,
                    "near": w.near,
                    "zone": w.zone,
                    "at": iso(w.at),
                    "seen": iso(w.seen),
                    "by_radio": w.by_radio,
                    "frames": w.frames,
                    "raised": w.raised,
                }
                for w in self.walkers
            ],
            "commands": {
                "multicast": counts.get("multicast_commands", 0),
                "unicast": counts.get("unicast_commands", 0),
                "retries": counts.get("retries", 0),
                "programs": counts.get("programs_sent", 0),
                "refused": counts.get("commands_refused", 0),
                "not_confirmed": counts.get("not_confirming", 0),
            },
            "confirmations": sum(zl.confirmations for zl in self.zones.values()),
            "contactor": [[iso(t), on, agreed] for t, on, agreed in self.relay_states],
            "during_cut": dict(self.during_cut),
            "records_upstream": self.records_upstream,
            "error": self.error,
        }
        if rig is not None:
            nodes = set(rig.luminaires) | set(rig.sensors)
            up = sum(t.end - t.start for t in rig.medium.transmissions if t.source in nodes)
            out["airtime_s"] = {"downlink": round(rig.airtime_sent(), 3), "uplink": round(up, 3)}
            out["duty_cycle"] = {b: round(u, 4) for b, u in rig.gate.utilisation().items() if u}
            out["answers_lost"] = rig.uplink_losses()
        return out

    def summary_lines(self, received: dict[str, list[Any]] | None = None) -> list[str]:
        """The summary as text. ``received``: the energy records' values as they arrived
        upstream, by record name ("<zone>/energy"), when the caller has a subscriber."""
        s = self.summary()
        waited = f"{s['waited_s']} s of it waiting for the radio"
        if s["rushed_s"]:
            waited += f", {s['rushed_s']} s moving on while the radio still worked"
        lines = [
            f"street {s['config']}, night of {self.night:%a %d %b %Y}: {self._span_text()} in "
            f"{s['played_s']} s, {waited}" + ("" if s["finished"] else ": CUT SHORT")
        ]
        if self.error:
            lines.append(f"  the street stopped: {self.error}")
        for zname, z in s["zones"].items():
            got = None if received is None else received.get(f"{zname}/energy", [])
            lines += self._zone_lines(zname, z, s, got)
        for w in s["presence"]:
            when = (w["seen"] or w["at"] or "")[11:16]
            raised = " ".join(w["raised"]) or "nothing"
            lines.append(f"  {when} someone at {w['sensor']}: raised {raised}")
        c, air = s["commands"], s.get("airtime_s", {})
        lines.append(
            f"  radio: {c['multicast']} multicast and {c['unicast']} unicast commands, "
            f"{c['retries']} resent, {c['programs']} programs, {s['confirmations']} "
            f"confirmations; {air.get('downlink', 0):.1f} s of downlink airtime"
        )
        cut = s["during_cut"]
        if any(cut.values()):
            lines.append(
                f"  while the broker was cut: {cut['changes']} scheduled changes, "
                f"{cut['commands']} commands, {cut['confirmations']} confirmations: the street "
                "kept its schedule"
            )
        return lines

    def _zone_lines(
        self, zname: str, z: dict[str, Any], s: dict[str, Any], received: list[Any] | None
    ) -> list[str]:
        """A zone in the summary: its levels and feedback, then its energy three ways."""
        if self.lc.zones[zname].luminaires:
            feedback = f"{z['confirmations']} confirmations"
            source = "from the controllers' feedback"
        else:
            agreed = sum(1 for c in s["contactor"] if c[2])
            feedback = f"{agreed} contactor switches confirmed by its auxiliary contact"
            source = "from the contactor's state"
        seen = " ".join(str(v) for v in z["levels_seen"])
        gateway, lamps, plan = z["gateway_wh"], z["lamps_wh"], z["plan_wh"]
        energy = (
            f"the gateway counted {gateway / 1000:.2f} kWh {source} (the lamps drew "
            f"{lamps / 1000:.2f}, the plan says {plan / 1000:.2f})"
        )
        if z["energy_wh"] is None:
            energy += "; the night did not close: not sent"
        elif received is None:
            energy += "; sent upstream"
        elif received == [z["energy_wh"]]:
            energy += "; sent, and received upstream"
        else:
            energy += f"; sent, but received upstream as {received or 'nothing'}"
        base = z["baseline_wh"]
        if z["energy_wh"] is not None and base:
            saved = 100 * (1 - z["energy_wh"] / base)
            energy += (
                f"; it reports {saved:.0f} % saved against {base / 1000:.2f} kWh all night at "
                "full power"
                if saved >= 0
                else f"; it reports {-saved:.0f} % over {base / 1000:.2f} kWh all night at full "
                "power (the program lights before sunset and after sunrise)"
            )
        lines = [f"  {zname:<13} levels {seen} %, {feedback}", f"  {'':<13} {energy}"]
        notes = []
        more = 100 * (lamps - plan) / plan if plan else 0.0
        if z["late_s"] >= NOTED_LAG and abs(more) >= NOTED_GAP:
            notes.append(
                f"for {_duration(z['late_s'])} of night its equipment was not yet where the "
                "gateway asked (a command on its way, or lost and resent later): the lamps "
                f"drew {abs(more):.1f} % {'more' if more >= 0 else 'less'} than planned"
            )
        over = 100 * (gateway - lamps) / lamps if lamps else 0.0
        if z["unconfirmed_s"] >= NOTED_LAG and abs(over) >= NOTED_GAP:
            notes.append(
                f"for {_duration(z['unconfirmed_s'])} the gateway counted a state its "
                "equipment had left (it counts what the equipment last reported): its figure "
                f"is {abs(over):.1f} % {'over' if over >= 0 else 'under'} what the lamps drew"
            )
        if notes:
            lines.append(f"  {'':<13} this demo was too short to wait for every answer:")
            lines += [f"  {'':<13} {note}" for note in notes]
        return lines


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d}" if minutes >= 60 else f"{minutes} min"


class _Downlinks:
    """The network server as the engine sees it, keeping the sends under way, so that the
    street ends them before its radio closes (a send may be taking a downlink counter in a
    worker thread, from the session database the radio's exit closes)."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.sending: set[asyncio.Task[Any]] = set()

    async def send(self, device: str, fport: int, payload: bytes, **options: Any) -> Any:
        return await self._kept(self.server.send(device, fport, payload, **options))

    async def send_multicast(self, group: str, fport: int, payload: bytes, **options: Any) -> Any:
        return await self._kept(self.server.send_multicast(group, fport, payload, **options))

    async def _kept(self, sending: Any) -> Any:
        task = asyncio.current_task()
        assert task is not None
        self.sending.add(task)
        try:
            return await sending
        finally:
            self.sending.discard(task)

    async def end(self) -> None:
        tasks = list(self.sending)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if tasks:
            await asyncio.sleep(0.05)  # a counter being taken in a thread: microseconds


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
