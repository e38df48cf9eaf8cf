"""The lighting engine at run time: what each luminaire should do now, and making it so.

Every ``tick`` seconds :meth:`LightingEngine.step` decides each luminaire's level by
precedence — manual override (always with an expiry) > presence boost > ambient (a dark
daytime) > calendar > the zone's default — sends only what changed (one multicast frame when
a whole zone moves together, unicast otherwise, both through the duty-cycle gate inside the
network server), and follows each command until the luminaire's STATUS confirms it; a
luminaire that does not confirm after ``retries`` unicast resends, or reports a lamp failure,
raises an alarm.

Fail-safe (ARCHITECTURE invariant 4): with an untrusted clock, or a plan that cannot be
computed, every zone goes to its ``default_level`` — unless the ambient sensor says it is
daylight. The schedule is a function of the time, so a restart at 02:00 puts the street
where the plan says straight away. Nothing here waits for the backhaul.

Two clocks: ``clock()`` is the wall clock the schedule reads (None while it cannot be
trusted); confirmation timeouts run on the event loop's monotonic clock, so a test can play a
night on an accelerated wall clock while the radio works in real time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, Protocol

from ..model import Priority, Record
from ..sources import Emit
from .astro import is_dark
from .model import LightingConfig, Zone
from .plan import NightPlan, clamp, night_of, plan_night, power_w
from .protocol import COMMAND_FPORT, MAX_POINTS, SwitchPoint, encode_set_level, encode_set_program

log = logging.getLogger(__name__)

DEVICE = "lighting"  # the SenML device of the engine's own measurements
_STATUS_NAMES = {"ack_seq", "level", "lamp_failure", "driver_failure", "local_program", "energy"}
# s between unicast commands: the gateway is half duplex, and a controller answers a
# unicast at once; the next command sent during that answer would make it unheard.
UNICAST_GAP = 0.5
# A luminaire that stopped confirming is still asked, this many confirm timeouts apart: a
# street light stuck at a stale level (dark, or full all night) must converge once the
# radio clears, without spending the band on a controller that is really gone.
SILENT_SLOWDOWN = 10
SAVE_EVERY = 300.0  # s of wall clock between state saves (flash wear), plus on every override


class Downlinks(Protocol):
    """The network server's class C paths (passerelle.lorawan.server.NetworkServer)."""

    async def send(self, device: str, fport: int, payload: bytes, *,
                   confirmed: bool = False, deadline: float | None = None) -> Any: ...

    async def send_multicast(self, group: str, fport: int, payload: bytes, *,
                             deadline: float | None = None) -> Any: ...


class Relay(Protocol):
    def set(self, on: bool) -> None: ...


@dataclass(slots=True)
class Luminaire:
    name: str
    zone: str
    index: int  # position along the street, for presence spread
    target: int = 0
    sent: int | None = None  # last level commanded (None: unknown, send)
    seq: int | None = None
    sent_at: float = 0.0  # monotonic
    wait: float = 0.0  # seconds to wait for its STATUS after sent_at
    attempts: int = 0
    confirmed: int | None = None  # last level its STATUS reported
    in_flight: bool = False
    lamp_failure: bool = False
    silent: bool = False  # alarmed for not confirming (cleared by its next STATUS)
    boost_until: float = 0.0  # wall clock


@dataclass(slots=True)
class ZoneState:
    level: int = 0
    cause: str = "start"
    override: tuple[int, float, str] | None = None  # level, until (wall clock), by whom
    boost_until: float = 0.0  # zones without controllers: the whole zone is boosted
    relay_on: bool | None = None
    presence: int = 0  # detections in the current count window
    energy_wh: float = 0.0  # this night so far
    program_sent: tuple[date, int] | None = None  # (night, UTC offset) last given


def system_clock_trusted() -> bool:
    """True when the kernel says NTP has synchronised the clock, or an RTC keeps it.

    A Pi without RTC boots on fake-hwclock's last saved time: plausible, and wrong by the
    length of the power cut. Until NTP syncs, the schedule is not trusted.
    """
    if Path("/run/systemd/timesync/synchronized").exists():
        return True
    try:
        import ctypes

        class Timex(ctypes.Structure):
            # <linux/timex.h>: modes, then offset, freq, maxerror, esterror, then status.
            _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long),
                        ("freq", ctypes.c_long), ("maxerror", ctypes.c_long),
                        ("esterror", ctypes.c_long), ("status", ctypes.c_int),
                        ("rest", ctypes.c_long * 40)]

        libc = ctypes.CDLL(None, use_errno=True)
        tx = Timex()
        state = libc.adjtimex(ctypes.byref(tx))
        sta_unsync = 0x0040
        if state >= 0 and not tx.status & sta_unsync:
            return True
    except (OSError, AttributeError):
        pass
    return os.path.exists("/dev/rtc0") and time.time() > 1_767_225_600  # after 2026-01-01


class LightingEngine:
    def __init__(
        self,
        cfg: LightingConfig,
        emit: Emit,
        *,
        downlinks: Downlinks | None = None,
        relays: dict[str, Relay] | None = None,
        clock: Callable[[], float | None] = time.time,
        state_path: str | os.PathLike[str] | None = None,
        multicast_settle: float | None = None,
        gate_clock: Callable[[], float] = time.monotonic,
        unicast_gap: float = UNICAST_GAP,
    ) -> None:
        self.cfg = cfg
        self.emit = emit
        self.downlinks = downlinks
        self.relays = relays or {}
        self.clock = clock
        self.tz = cfg.tz
        self.state_path = Path(state_path) if state_path is not None else None
        self.multicast_settle = cfg.reply_window if multicast_settle is None else multicast_settle
        self.gate_clock = gate_clock  # the duty-cycle gate's clock, for command deadlines
        self.unicast_gap = unicast_gap
        self._unicast_lock = asyncio.Lock()
        self.zones = {name: ZoneState() for name in cfg.zones}
        self.luminaires: dict[str, Luminaire] = {}
        for zname, zone in cfg.zones.items():
            for i, lum in enumerate(zone.luminaires):
                self.luminaires[lum] = Luminaire(lum, zname, i)
        self._sensors = {(s.device, s.name): s for s in cfg.presence_sensors}
        self.counts: Counter[str] = Counter()
        self.lux: float | None = None
        self._storm_until = 0.0
        self._plan: NightPlan | None = None
        self._plan_error: str | None = None
        self._night: date | None = None
        self._last_step: float | None = None
        self._window_start: float | None = None
        self._meter: float | None = None  # latest cumulative reading, Wh
        self._meter_start: float | None = None  # at the start of the night
        self._seq = 0
        self._saved_at = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self.clock_trusted = True
        self._load()

    # -- inputs ------------------------------------------------------------------------------

    def observe(self, records: Sequence[Record]) -> list[Record]:
        """Feed everything sources and radios emit; returns what may go upstream.

        Presence detections are consumed here: they leave the gateway only as counts.
        """
        keep: list[Record] = []
        status: dict[str, dict[str, Any]] = {}
        amb, meter = self.cfg.ambient, self.cfg.meter
        for r in records:
            sensor = self._sensors.get((r.device, r.name))
            if sensor is not None:
                if r.value and not isinstance(r.value, (str, bytes)):
                    self._presence(sensor.zone, sensor.near, sensor.spread, sensor.also)
                continue
            if r.device in self.luminaires and r.name in _STATUS_NAMES:
                status.setdefault(r.device, {})[r.name] = r.value
            elif amb is not None and (r.device, r.name) == (amb.device, amb.name):
                if isinstance(r.value, (int, float)) and not isinstance(r.value, bool):
                    self.lux = float(r.value)
            elif meter is not None and (r.device, r.name) == (meter.device, meter.name):
                if isinstance(r.value, (int, float)) and not isinstance(r.value, bool):
                    self._meter = float(r.value) * (1000.0 if meter.unit == "kWh" else 1.0)
            keep.append(r)
        for device, fields in status.items():
            self._status(self.luminaires[device], fields)
        return keep

    def _presence(self, zone: str, near: str | None, spread: int, also: Sequence[str]) -> None:
        now = self.clock()
        self.counts["presence_events"] += 1
        self.zones[zone].presence += 1
        if now is None:
            return  # no trusted time: the safe default already lights the street
        for name in (zone, *also):
            cfg = self.cfg.zones[name]
            if cfg.presence is None or not self._sensor_active(name, now):
                continue
            until = now + cfg.presence.hold
            if name == zone and near is not None:
                centre = cfg.luminaires.index(near)
                chosen = cfg.luminaires[max(0, centre - spread): centre + spread + 1]
            else:
                chosen = cfg.luminaires
                self.zones[name].boost_until = max(self.zones[name].boost_until, until)
            for lum in chosen:
                lm = self.luminaires[lum]
                lm.boost_until = max(lm.boost_until, until)

    def _sensor_active(self, zone: str, now: float) -> bool:
        """Inside a sensor active period of tonight's program (any time at night without)."""
        plan = self._plan
        if plan is None:
            return True
        zp = plan.zones.get(zone)
        local = datetime.fromtimestamp(now, self.tz)
        if zp is None or not zp.sensor_periods:
            return is_dark(self.cfg.latitude, self.cfg.longitude, local)
        return zp.sensor_active(local)

    def _status(self, lum: Luminaire, fields: dict[str, Any]) -> None:
        self.counts["status_received"] += 1
        level = fields.get("level")
        if isinstance(level, int):
            lum.confirmed = level
        # Confirmed when the feedback shows the level commanded: the answer to a later
        # SET_PROGRAM or STATUS_REQ carries another seq but says the same thing.
        # A late answer (after the alarm) also counts: it clears the alarm.
        if (lum.wait > 0 or lum.silent) and lum.sent is not None and level == lum.sent:
            lum.attempts = 0
            lum.wait = 0.0
            if lum.silent:
                lum.silent = False
                self._alarm(lum.name, "confirming again", clear=True)
        elif (isinstance(level, int) and lum.wait == 0 and not lum.in_flight
              and lum.sent is not None and level != lum.sent):
            # Settled, yet the lamp says another level (its controller restarted on its
            # stored program, or a command overtook another on the air): take the lamp's
            # word, so the next step commands it again.
            self.counts["level_drift"] += 1
            log.info("lighting: %s reports %d %%, commanded %d %%: commanding again",
                     lum.name, level, lum.sent)
            lum.sent = level
        failure = bool(fields.get("lamp_failure")) or bool(fields.get("driver_failure"))
        if failure and not lum.lamp_failure:
            self.counts["lamp_failures"] += 1
            what = "lamp failure" if fields.get("lamp_failure") else "driver failure"
            self._alarm(lum.name, what)
        elif not failure and lum.lamp_failure:
            self._alarm(lum.name, "lamp failure cleared", clear=True)
        lum.lamp_failure = failure

    def override(self, zone: str, level: int, until: float, by: str = "operator") -> None:
        """A manual override of ``zone`` until ``until`` (wall clock): the hook for commands."""
        if zone not in self.zones:
            raise KeyError(f"no lighting zone {zone!r} (zones: {', '.join(self.zones)})")
        if not 0 <= level <= 100:
            raise ValueError(f"override level {level} outside 0..100")
        now = self.clock()
        if now is not None and until <= now:
            raise ValueError("override expiry is in the past")
        self.zones[zone].override = (level, until, by)
        self.counts["overrides"] += 1
        self._save(force=True)

    def clear_override(self, zone: str) -> None:
        self.zones[zone].override = None
        self._save(force=True)

    # -- the decision ------------------------------------------------------------------------

    def plan_for(self, night: date) -> NightPlan:
        if self._plan is None or self._plan.night != night:
            self._plan = plan_night(self.cfg, night)
        return self._plan

    def _zone_levels(self, now: float | None) -> dict[str, tuple[int, str]]:
        """Each zone's base level and why, before per-luminaire presence."""
        out: dict[str, tuple[int, str]] = {}
        if now is None:
            amb = self.cfg.ambient
            dark = self.lux is None or amb is None or self.lux < amb.off_above
            for name, zone in self.cfg.zones.items():
                out[name] = (clamp(zone, zone.default_level) if dark else 0, "failsafe:clock")
            return out
        local = datetime.fromtimestamp(now, self.tz)
        try:
            plan = self.plan_for(night_of(local, self.tz))
            self._plan_error = None
        except Exception as e:  # noqa: BLE001 - any failure here must light the street
            if self._plan_error != str(e):
                log.error("lighting: cannot compute tonight's plan (%s): safe defaults", e)
            self._plan_error = str(e)
            self.counts["plan_errors"] += 1
            plan = None
        storm = self._storm(now, local)
        for name, zone in self.cfg.zones.items():
            zs = self.zones[name]
            if zs.override is not None and zs.override[1] <= now:
                zs.override = None
                self.counts["overrides_expired"] += 1
            if zs.override is not None:
                out[name] = (clamp(zone, zs.override[0]), "override")
                continue
            if plan is None:
                dark = is_dark(self.cfg.latitude, self.cfg.longitude, local)
                safe = clamp(zone, zone.default_level)
                out[name] = (safe if dark or storm else 0, "failsafe:schedule")
                continue
            zp = plan.zones[name]
            level, cause = zp.level_at(local), zp.source
            if storm and level < zone.default_level:
                level, cause = clamp(zone, zone.default_level), "ambient"
            if zs.boost_until > now and zone.presence is not None and not zone.luminaires:
                level, cause = max(level, clamp(zone, zone.presence.boost)), "presence"
            out[name] = (level, cause)
        return out

    def _storm(self, now: float, local: datetime) -> bool:
        """A dark daytime: the light sensor reads night while the sun is up.

        On under ``on_below``; held while the light stays under ``off_above``
        (hysteresis); once brighter, released ``hold`` seconds after the last dark reading
        so a passing cloud does not flicker the street.
        """
        amb = self.cfg.ambient
        if amb is None or self.lux is None:
            return False
        active = self._storm_until > now
        if self.lux < amb.on_below and not is_dark(self.cfg.latitude, self.cfg.longitude, local):
            if not active:
                self.counts["ambient_forced_on"] += 1
            self._storm_until = now + amb.hold
        elif active and self.lux <= amb.off_above:
            self._storm_until = max(self._storm_until, now + amb.hold)
        return self._storm_until > now

    def targets(self, now: float | None) -> dict[str, int]:
        """Every luminaire's level now (and each zone's level and cause in ``self.zones``)."""
        levels = self._zone_levels(now)
        out: dict[str, int] = {}
        for name, (level, cause) in levels.items():
            zs, zone = self.zones[name], self.cfg.zones[name]
            zs.level, zs.cause = level, cause
            for lum_name in zone.luminaires:
                lum = self.luminaires[lum_name]
                lv = level
                if (now is not None and cause != "override" and zone.presence is not None
                        and lum.boost_until > now):
                    lv = max(lv, clamp(zone, zone.presence.boost))
                out[lum_name] = lv
        return out

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        try:
            while True:
                await self.step()
                await asyncio.sleep(self.cfg.tick)
        finally:
            self._save(force=True)
            for t in list(self._tasks):
                t.cancel()

    async def step(self) -> None:
        """One evaluation: decide, actuate what changed, follow confirmations, account."""
        now = self.clock()
        self.clock_trusted = now is not None
        targets = self.targets(now)
        self._account(now)
        self._actuate(targets)
        if now is not None:
            self._programs(now)
        self._follow_up()
        await self._windows(now)
        if now is not None and now - self._saved_at >= SAVE_EVERY:
            self._save()

    def _actuate(self, targets: dict[str, int]) -> None:
        for zname, zone in self.cfg.zones.items():
            lit = self.zones[zname].level > 0 or any(
                targets[lum] > 0 for lum in zone.luminaires)
            if zone.relay is not None:
                self._set_relay(zname, zone, lit)
            powered = lit or zone.relay is None
            changed = []
            for lum_name in zone.luminaires:
                lum = self.luminaires[lum_name]
                lum.target = targets[lum_name]
                if not powered:
                    # The contactor is open: the controllers are dark and cannot answer.
                    lum.sent, lum.seq, lum.wait = 0, None, 0.0
                    continue
                if lum.sent != lum.target and not lum.in_flight:
                    changed.append(lum)
            if not changed or self.downlinks is None:
                continue
            level = changed[0].target
            # The whole zone moving together is one multicast, even if some members still
            # have a unicast queued (those return unsent once they get their turn).
            members = [self.luminaires[n] for n in zone.luminaires]
            whole = (zone.multicast is not None
                     and all(lm.target == level and lm.sent != level for lm in members))
            if whole:
                self._spawn(self._multicast(zname, zone, members, level))
            else:
                for lum in changed:
                    self._spawn(self._unicast(lum, zone))

    def _programs(self, now: float) -> None:
        """Give each zone's controllers tonight's program, to follow if the gateway goes quiet.

        Sent when the night (so maybe the calendar's program) or the UTC offset changes.
        """
        if self.downlinks is None or self._plan is None:
            return
        offset = datetime.fromtimestamp(now, self.tz).utcoffset()
        offset_q = int(offset.total_seconds() // 900) if offset is not None else 0
        key = (self._plan.night, offset_q)
        for zname, zone in self.cfg.zones.items():
            if not zone.luminaires or self.zones[zname].program_sent == key:
                continue
            if zone.relay is not None and self.zones[zname].relay_on is False:
                continue  # unpowered behind the open contactor: sent once it closes
            points = self.local_program(zname)
            if points is None:
                continue
            self.zones[zname].program_sent = key
            self._spawn(self._send_program(zname, zone, points, offset_q))

    def local_program(self, zname: str) -> list[SwitchPoint] | None:
        """Tonight's program for zone ``zname`` as the controllers store it (levels clamped)."""
        assert self._plan is not None
        zone, zp = self.cfg.zones[zname], self._plan.zones[zname]
        if zp.program is None:
            return [SwitchPoint("sunset", 0, zone.default_level), SwitchPoint("sunrise", 0, 0)]
        prog = self.cfg.programs[zp.program]
        points = [SwitchPoint(a.solar_event_type, a.offset, clamp(zone, a.level))
                  for a in prog.astro_clock_time_controls]
        points += [SwitchPoint("time", int(f.time[:2]) * 60 + int(f.time[3:]),
                               clamp(zone, f.level)) for f in prog.fixed_time_controls]
        if len(points) > MAX_POINTS:
            self.counts["program_too_long"] += 1
            log.error("lighting: zone %s: program %s has %d points, controllers keep %d",
                      zname, zp.program, len(points), MAX_POINTS)
            return None
        return points

    async def _send_program(self, zname: str, zone: Zone, points: list[SwitchPoint],
                            offset_q: int) -> None:
        assert self.downlinks is not None
        payload = encode_set_program(self._next_seq(), zone.default_level, offset_q, points)
        results = []
        if zone.multicast is not None:
            results.append(await self.downlinks.send_multicast(
                zone.multicast, COMMAND_FPORT, payload, deadline=self._deadline() + 600))
        else:
            for lum in zone.luminaires:
                results.append(await self.downlinks.send(
                    lum, COMMAND_FPORT, payload, deadline=self._deadline() + 600))
        if all(getattr(r, "ok", False) for r in results):
            self.counts["programs_sent"] += 1
        else:
            self.counts["programs_refused"] += 1
            self.zones[zname].program_sent = None  # try again at the next step

    def _set_relay(self, zname: str, zone: Zone, on: bool) -> None:
        zs = self.zones[zname]
        if zs.relay_on == on:
            return
        relay = self.relays.get(zone.relay or "")
        if relay is None:
            self.counts["relay_missing"] += 1
            return
        try:
            relay.set(on)
        except Exception as e:  # noqa: BLE001 - a failing line must not stop the other zones
            self.counts["relay_errors"] += 1
            log.error("lighting: zone %s: relay %s: %s", zname, zone.relay, e)
            return
        zs.relay_on = on
        self.counts["relay_switches"] += 1

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ramp(self, zone: Zone, lum: Luminaire) -> int:
        ref = lum.confirmed if lum.confirmed is not None else lum.sent
        up = ref is None or lum.target > ref  # unknown: light fast, never dim slowly to dark
        return round(zone.ramp_up if up else zone.ramp_down)

    async def _multicast(self, zname: str, zone: Zone, lums: list[Luminaire], level: int) -> None:
        assert self.downlinks is not None and zone.multicast is not None
        seq = self._next_seq()
        payload = encode_set_level(seq, level, self._ramp(zone, lums[0]))
        # Marked sent before the frame leaves: an answer may beat the send's return.
        for lm in lums:
            self._mark(lm, level, seq, self.multicast_settle + self.cfg.confirm_timeout, 1)
        try:
            result = await self.downlinks.send_multicast(
                zone.multicast, COMMAND_FPORT, payload, deadline=self._deadline())
        finally:
            for lm in lums:
                lm.in_flight = False
        if self._refused(result, f"zone {zname} (multicast)", lums):
            return
        self.counts["multicast_commands"] += 1

    async def _unicast(self, lum: Luminaire, zone: Zone, *, retry: bool = False) -> None:
        assert self.downlinks is not None
        lum.in_flight = True
        try:
            async with self._unicast_lock:
                if not retry and lum.sent == lum.target:
                    return  # a multicast covered it while it waited its turn
                # Marked only now: the confirmation clock must not run while it queues.
                seq = self._next_seq()
                payload = encode_set_level(seq, lum.target, self._ramp(zone, lum))
                wait = self.cfg.confirm_timeout * (SILENT_SLOWDOWN if lum.silent else 1)
                self._mark(lum, lum.target, seq, wait, lum.attempts + 1 if retry else 1)
                result = await self.downlinks.send(
                    lum.name, COMMAND_FPORT, payload, deadline=self._deadline())
                if getattr(result, "ok", False):
                    await asyncio.sleep(self.unicast_gap)
        finally:
            lum.in_flight = False
        if self._refused(result, lum.name, [lum]):
            return
        self.counts["retries" if retry else "unicast_commands"] += 1

    def _mark(self, lum: Luminaire, level: int, seq: int, wait: float, attempts: int) -> None:
        lum.in_flight = True
        lum.sent, lum.seq, lum.wait, lum.attempts = level, seq, wait, attempts
        lum.sent_at = asyncio.get_running_loop().time()

    def _refused(self, result: Any, who: str, lums: list[Luminaire]) -> bool:
        if getattr(result, "ok", False):
            return False
        # Not sent (duty cycle, radio busy): forget it so the next step sends it again.
        self.counts["commands_refused"] += 1
        log.warning("lighting: %s: command not sent: %s", who, getattr(result, "error", result))
        for lm in lums:
            lm.sent, lm.seq, lm.wait = None, None, 0.0
        return True

    def _deadline(self) -> float:
        # On the gate's (monotonic) clock: a command may wait for airtime up to one tick,
        # after which the next step decides again rather than sending a stale level.
        return self.gate_clock() + self.cfg.tick

    def _follow_up(self) -> None:
        """Resend to luminaires whose STATUS has not confirmed; alarm after ``retries``."""
        if self.downlinks is None:
            return
        mono = asyncio.get_running_loop().time()
        for lum in self.luminaires.values():
            if lum.wait <= 0 or lum.in_flight or mono - lum.sent_at < lum.wait:
                continue
            if lum.attempts <= self.cfg.retries or lum.silent:
                self._spawn(self._unicast(lum, self.cfg.zones[lum.zone], retry=True))
                continue
            # Out of retries: alarm once, then keep asking at a slow pace.
            self.counts["not_confirming"] += 1
            lum.silent = True
            lum.sent_at = mono
            lum.wait = self.cfg.confirm_timeout * SILENT_SLOWDOWN
            self._alarm(lum.name, f"not confirming level {lum.sent} after "
                                  f"{lum.attempts} commands")

    def _alarm(self, device: str, text: str, *, clear: bool = False) -> None:
        now = self.clock() or time.time()
        log.warning("lighting: %s: %s", device, text)
        priority = Priority.TELEMETRY if clear else Priority.ALARM
        self._spawn(self.emit([Record(device, "alarm", text, now)], priority))

    # -- accounting --------------------------------------------------------------------------

    def _account(self, now: float | None) -> None:
        if now is None:
            self._last_step = None
            return
        night = night_of(datetime.fromtimestamp(now, self.tz), self.tz)
        if self._night is not None and night != self._night:
            self._close_night(self._night, now)
        if self._night != night:
            self._night = night
            self._meter_start = self._meter
        if self._last_step is not None:
            # A clock jump (NTP correcting a day-old time) is not a night of light.
            dt = min(max(now - self._last_step, 0.0), 3 * self.cfg.tick)
            for zname, zone in self.cfg.zones.items():
                self.zones[zname].energy_wh += self._zone_power(zname, zone) * dt / 3600.0
        self._last_step = now

    def _zone_power(self, zname: str, zone: Zone) -> float:
        zs = self.zones[zname]
        if zone.relay is not None and zs.relay_on is False:
            return 0.0
        total = sum(power_w(zone, self._lit_level(self.luminaires[n])) for n in zone.luminaires)
        return total + zone.count * power_w(zone, zs.level)

    def _lit_level(self, lum: Luminaire) -> int:
        # What the luminaire said it does, else what it was told.
        if lum.confirmed is not None:
            return lum.confirmed
        return lum.sent if lum.sent is not None else lum.target

    def _close_night(self, night: date, now: float) -> None:
        """The night is over: its energy, used and saved, goes upstream."""
        try:
            plan = self.plan_for(night)
        except Exception:  # noqa: BLE001 - the measured energy is still worth sending
            plan = None
        t = now
        records: list[Record] = []
        for zname in self.cfg.zones:
            zs = self.zones[zname]
            baseline = plan.zones[zname].baseline_wh if plan is not None else 0.0
            records += [
                Record(DEVICE, f"{zname}/energy", round(zs.energy_wh, 1), t, "Wh"),
                Record(DEVICE, f"{zname}/energy-baseline", round(baseline, 1), t, "Wh"),
                Record(DEVICE, f"{zname}/energy-saved", round(baseline - zs.energy_wh, 1), t,
                       "Wh"),
            ]
            zs.energy_wh = 0.0
        if self._meter is not None and self._meter_start is not None:
            records.append(Record(DEVICE, "cabinet/energy-measured",
                                  round(self._meter - self._meter_start, 1), t, "Wh"))
        self.counts["nights_closed"] += 1
        self._spawn(self.emit(records, Priority.ENERGY))
        self._save(force=True)

    async def _windows(self, now: float | None) -> None:
        """Presence counts per window (the only trace of people the gateway sends)."""
        if now is None:
            return
        width = self.cfg.presence_window
        start = now - now % width
        if self._window_start is None:
            self._window_start = start
            return
        if start == self._window_start:
            return
        t = self._window_start + width
        records = [Record(DEVICE, f"{z}/presence", zs.presence, t)
                   for z, zs in self.zones.items()
                   if self.cfg.zones[z].presence is not None or zs.presence]
        for zs in self.zones.values():
            zs.presence = 0
        self._window_start = start
        if records:
            await self.emit(records, Priority.TELEMETRY)

    # -- state across restarts ---------------------------------------------------------------

    def _save(self, force: bool = False) -> None:
        now = self.clock()
        if self.state_path is None or (now is None and not force):
            return
        data = {
            "night": self._night.isoformat() if self._night else None,
            "meter_start": self._meter_start,
            "zones": {z: {"energy_wh": zs.energy_wh,
                          "override": list(zs.override) if zs.override else None}
                      for z, zs in self.zones.items()},
        }
        tmp = self.state_path.with_suffix(".tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.state_path)
        except OSError as e:
            self.counts["state_save_errors"] += 1
            log.error("lighting: cannot save %s: %s", self.state_path, e.strerror)
            return
        self._saved_at = now or 0.0

    def _load(self) -> None:
        if self.state_path is None or not self.state_path.exists():
            return
        try:
            data = json.loads(self.state_path.read_text())
            night = date.fromisoformat(data["night"]) if data.get("night") else None
            zones = data.get("zones", {})
            for z, zs in self.zones.items():
                saved = zones.get(z) or {}
                ov = saved.get("override")
                if ov:
                    zs.override = (int(ov[0]), float(ov[1]), str(ov[2]))
                if night is not None:
                    zs.energy_wh = float(saved.get("energy_wh", 0.0))
            self._night = night
            self._meter_start = data.get("meter_start")
        except (ValueError, KeyError, TypeError, IndexError) as e:
            # A damaged state file costs one night's energy figure, never the lights.
            self.counts["state_load_errors"] += 1
            log.error("lighting: ignoring damaged %s: %s", self.state_path, e)

    # -- what the state shows ----------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        zones = {}
        for name, zs in self.zones.items():
            lums = [self.luminaires[n] for n in self.cfg.zones[name].luminaires]
            zones[name] = {
                "level": zs.level,
                "cause": zs.cause,
                "override_until": zs.override[1] if zs.override else None,
                "relay": zs.relay_on,
                "confirmed": sum(1 for lm in lums if lm.sent is not None and lm.wait == 0
                                 and lm.confirmed == lm.sent),
                "pending": sum(1 for lm in lums if lm.wait > 0),
                "silent": [lm.name for lm in lums if lm.silent],
                "lamp_failures": [lm.name for lm in lums if lm.lamp_failure],
                "energy_wh_tonight": round(zs.energy_wh, 1),
            }
        return {"clock_trusted": self.clock_trusted, "plan_error": self._plan_error,
                "zones": zones, "counts": dict(self.counts)}
