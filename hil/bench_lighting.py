"""The street-lighting engine's figures, measured on this machine: ``python -m hil.bench_lighting``.

Usage::

    python -m hil.bench_lighting [--quick] [--json] [--plain] [--dir DIR] [--keep]
                                 [--night YYYY-MM-DD]

1. **Plan and engine CPU for 1,000 luminaires**: a generated configuration (50 zones of 20
   luminaires, six control programs, ten calendars with yearly, one-off and weekday rules
   in different orders) run through the real code. ``plan_night`` for one night: wall and
   process CPU time, the median of several runs (the astronomical clock is computed in
   each, nothing is cached between runs). The same for 1,000 zones of one luminaire (the
   planner's cost follows zones, not luminaires). ``LightingEngine.step()`` with its clock
   fixed at 02:00: the first step (every luminaire unknown: a program and a level for each
   zone) and the steady state (every luminaire confirmed by a STATUS, nothing to send),
   with a recording ``Downlinks`` that accepts every frame at once.
2. **Airtime per night for the example street** (``examples/street.toml``): the real
   :class:`~passerelle.lighting.engine.LightingEngine`, :class:`NetworkServer`,
   :class:`DutyCycleGate` and :class:`~hil.luminaire_sim.LuminaireSim` controllers on the
   simulated radio medium (:mod:`hil.radio_medium`, real time on the event loop). The
   schedule clock starts 90 minutes before noon (the engine's cold start, not counted) and
   skips ahead a tick at a time while nothing is in flight; while a command, an answer or
   a confirmation is pending it runs 20 times faster than real time, with the engine's
   confirmation timeout cut to 3 s of real time, so on the schedule it is the configured
   60 s. Frames, answers and the controllers' receive windows take their real time; the
   answer window is shortened to about a second (a real controller spreads its answer over
   tens of seconds). The gate runs on the schedule clock, so its sliding hour is an hour of
   the night.
   Presence sensors send real Cayenne LPP uplinks at a few times of the night. Figures:
   downlinks on air by kind (decoded and decrypted from the frames the gateway sent),
   their airtime per band (the gate's accounting and, as a check, the medium's), the
   band's peak sliding-hour charge against its allowance, the controllers' STATUS uplink
   airtime. The counterfactual "every command by unicast" is **computed** from the same
   frames (:func:`~passerelle.lorawan.airtime.airtime_of`), not played.
3. **Energy of the example street's night**: kWh per zone against the all-night
   full-power baseline, **computed from the plan** (``plan_night``); beside it what the
   engine accounted while playing the night of row 2.

``--quick`` runs fewer repetitions and plays only 00:55-01:46 of the night (the switch-off
and one presence event) with a shorter answer window and one resend (the smoke test).
``--json`` prints the results as JSON after the table.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from hil.bench import (
    Row,
    _fmt,
    _version,
    bench_workdir,
    machine_info,
    print_json_report,
    print_table,
    progress,
    run_in,
)
from passerelle.lighting import model as lighting_model
from passerelle.lighting.engine import LightingEngine
from passerelle.lighting.model import LightingConfig
from passerelle.lighting.plan import plan_night
from passerelle.lighting.protocol import Status, status_records
from passerelle.model import Priority, Record
from passerelle.radio.base import TxResult

REPO = Path(__file__).resolve().parent.parent
STREET_TOML = REPO / "examples" / "street.toml"
# An ordinary winter night: Wednesday 16 December 2026 is before the year-end festivities
# of the example's calendars (12-20 .. 01-02), so the Grande-Rue is switched off "en coeur
# de nuit" and its presence sensors matter. The 21st would be a festive night (lit all
# night, no sensor period).
DEFAULT_NIGHT = date(2026, 12, 16)
ZONES, PER_ZONE = 50, 20  # row 1: 1,000 luminaires


@dataclass(frozen=True)
class Sizes:
    plan_runs: int  # plan_night repetitions (median)
    step_runs: int  # steady-state steps (median)
    cold_runs: int  # first steps, each on a fresh engine
    reply_window: float  # s of real time: a multicast answer waits up to this
    slice: tuple[str, str] | None  # local HH:MM: play only this part of the night
    retries: int | None  # unicast resends before the alarm (None: the example's)


FULL = Sizes(plan_runs=21, step_runs=201, cold_runs=7, reply_window=1.0, slice=None, retries=None)
QUICK = Sizes(
    plan_runs=5, step_runs=31, cold_runs=3, reply_window=0.5, slice=("00:55", "01:46"), retries=1
)


# ------------------------------------------------------------------------------ row 1


def generated_lighting(zones: int, per_zone: int) -> dict[str, Any]:
    """A [lighting] table for ``zones`` x ``per_zone`` controllers: varied programs and
    calendars, so the planner meets every kind of switch point and rule."""
    programs: dict[str, Any] = {
        "coeur-de-nuit-23": {
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
        "coeur-de-nuit-00": {
            "astro_clock_time_controls": [
                {"solar_event_type": "civil_dusk", "offset": -25, "level": 90},
                {"solar_event_type": "civil_dawn", "offset": 15, "level": 0},
            ],
            "fixed_time_controls": [
                {"time": "22:00", "level": 60},
                {"time": "00:00", "level": 0},
                {"time": "06:00", "level": 60},
            ],
            "active_periods": [{"type": "sensor", "start": "00:00", "end": "civil_dawn"}],
        },
        "veille": {
            "astro_clock_time_controls": [
                {"solar_event_type": "civil_dusk", "offset": -20, "level": 100},
                {"solar_event_type": "civil_dawn", "offset": 20, "level": 0},
            ],
            "fixed_time_controls": [{"time": "22:30", "level": 40}, {"time": "06:00", "level": 80}],
        },
        "residentiel": {
            "astro_clock_time_controls": [
                {"solar_event_type": "sunset", "offset": 0, "level": 80},
                {"solar_event_type": "sunrise", "offset": 0, "level": 0},
            ],
            "fixed_time_controls": [
                {"time": "21:30", "level": 60},
                {"time": "23:30", "level": 30},
                {"time": "05:00", "level": 60},
            ],
            "active_periods": [{"type": "sensor", "start": "sunset+60", "end": "sunrise-30"}],
        },
        "fete": {
            "astro_clock_time_controls": [
                {"solar_event_type": "sunset", "offset": -15, "level": 100},
                {"solar_event_type": "sunrise", "offset": 15, "level": 0},
            ],
        },
        "stade": {
            "astro_clock_time_controls": [
                {"solar_event_type": "sunset", "level": 100},
                {"solar_event_type": "sunrise", "level": 0},
            ],
            "fixed_time_controls": [{"time": "23:00", "level": 0}, {"time": "06:00", "level": 100}],
        },
    }
    ordinary = list(programs)[:4]
    exceptions = [
        {"name": "fete-nationale", "start_date": "07-13", "end_date": "07-14", "program": "fete"},
        {"name": "fin-d-annee", "start_date": "12-20", "end_date": "01-02", "program": "fete"},
        {
            "name": "marche-de-noel",
            "start_date": "2026-12-11",
            "end_date": "2026-12-13",
            "program": "fete",
        },
        {"name": "fete-de-la-musique", "start_date": "06-21", "program": "fete"},
        {"name": "match-du-samedi", "weekdays": ["sat"], "program": "stade"},
        {
            "name": "vacances-d-hiver",
            "start_date": "2027-02-13",
            "end_date": "2027-02-28",
            "weekdays": ["fri", "sat"],
            "program": "veille",
        },
    ]
    calendars: dict[str, Any] = {}
    for c in range(10):
        # Every calendar has the exceptions in its own order, so a night is decided after
        # a different number of rules, and its own everyday program last.
        k = c % len(exceptions)
        rules = exceptions[k:] + exceptions[:k]
        calendars[f"cal-{c:02d}"] = {"rules": [*rules, {"program": ordinary[c % 4]}]}
    zone_table: dict[str, Any] = {}
    for z in range(zones):
        zone_table[f"zone-{z:03d}"] = {
            "calendar": f"cal-{z % 10:02d}",
            "luminaires": [lum_name(z, i) for i in range(per_zone)],
            "multicast": f"group-{z:03d}",
            "floor": 10 + z % 3 * 10,
            "default_level": 60,
            "ramp_up": 2,
            "ramp_down": 30 + z % 4 * 10,
            "rated_power": 30.0 + z % 5 * 10,
            "standby_power": 0.5,
            "dimming_curve": [[0, 0], [10, 15], [50, 52], [100, 100]],
            **({"presence": {"boost": 80, "hold": 120}} if z % 2 == 0 else {}),
        }
    sensors = [
        {
            "device": f"pir-{z:03d}",
            "name": "presence/1",
            "zone": f"zone-{z:03d}",
            "near": lum_name(z, per_zone // 2),
            "spread": 2,
        }
        for z in range(0, zones, 2)
    ]
    return {
        "latitude": 47.5861,
        "longitude": 1.3359,
        "timezone": "Europe/Paris",
        "programs": programs,
        "calendars": calendars,
        "zones": zone_table,
        "presence_sensors": sensors,
        "clock_check": False,
    }


def lum_name(zone: int, index: int) -> str:
    return f"z{zone:03d}-l{index:02d}"


def lighting_config(table: dict[str, Any]) -> LightingConfig:
    """The table checked as the config loader checks it, then converted."""
    devices = {lum: "C" for z in table["zones"].values() for lum in z["luminaires"]}
    groups = {z["multicast"]: list(z["luminaires"]) for z in table["zones"].values()}
    errors: list[tuple[str, str]] = []
    lighting_model.check(table, "lighting", errors, {"devices": devices, "multicast": groups})
    if errors:
        raise ValueError(f"generated [lighting] is invalid: {errors[:5]}")
    return msgspec.convert(table, LightingConfig)


def bench_plan(cfg: LightingConfig, night: date, runs: int) -> dict[str, Any]:
    walls, cpus = [], []
    plan = None
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        plan = plan_night(cfg, night)
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    assert plan is not None
    luminaires = sum(z.size for z in cfg.zones.values())
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    sources = sorted({f"{z.rule or '-'}:{z.program or z.source}" for z in plan.zones.values()})
    return {
        "night": night.isoformat(),
        "zones": len(cfg.zones),
        "luminaires": luminaires,
        "programs": len(cfg.programs),
        "calendars": len(cfg.calendars),
        "runs": runs,
        "wall_ms": wall * 1e3,
        "cpu_ms": cpu * 1e3,
        "wall_ms_max": max(walls) * 1e3,
        "wall_us_per_luminaire": wall / luminaires * 1e6,
        "cpu_us_per_luminaire": cpu / luminaires * 1e6,
        "cpu_us_per_zone": cpu / len(cfg.zones) * 1e6,
        "steps": sum(len(z.steps) for z in plan.zones.values()),
        "rules_and_programs_chosen": sources,
        "energy_kwh": sum(z.energy_wh for z in plan.zones.values()) / 1e3,
    }


class RecordingDownlinks:
    """The network server's class C paths, accepting every frame at once (no radio)."""

    def __init__(self) -> None:
        self.unicast = 0
        self.multicast = 0

    async def send(
        self,
        device: str,
        fport: int,
        payload: bytes,
        *,
        confirmed: bool = False,
        deadline: float | None = None,
    ) -> TxResult:
        self.unicast += 1
        return TxResult(True)

    async def send_multicast(
        self, group: str, fport: int, payload: bytes, *, deadline: float | None = None
    ) -> TxResult:
        self.multicast += 1
        return TxResult(True)


async def _discard(records: Sequence[Record], priority: Priority) -> None:
    return None


async def _settle() -> None:
    """Let the tasks a step spawned (the recorded sends) run to their end."""
    for _ in range(3):
        await asyncio.sleep(0)


async def bench_step(cfg: LightingConfig, night: date, runs: int, cold_runs: int) -> dict[str, Any]:
    at = datetime(night.year, night.month, night.day, 2, tzinfo=cfg.tz) + timedelta(days=1)
    now = at.timestamp()
    luminaires = sum(len(z.luminaires) for z in cfg.zones.values())

    cold_cpu, cold_wall = [], []
    sent: tuple[int, int] = (0, 0)
    for _ in range(cold_runs):
        down = RecordingDownlinks()
        engine = LightingEngine(cfg, _discard, downlinks=down, clock=lambda: now)
        engine.plan_for(night)  # the plan is measured in its own row
        w0, c0 = time.perf_counter(), time.process_time()
        await engine.step()
        await _settle()
        cold_cpu.append(time.process_time() - c0)
        cold_wall.append(time.perf_counter() - w0)
        sent = (down.multicast, down.unicast)
    # Every controller confirms what it was told, as its STATUS would.
    for lum in engine.luminaires.values():
        if lum.sent is not None:
            engine.observe(
                status_records(
                    Status(lum.seq or 0, lum.sent, False, False, False, 0), lum.name, now
                )
            )
    pending = sum(1 for lum in engine.luminaires.values() if lum.wait > 0)
    if pending:
        raise RuntimeError(f"step row: {pending} luminaires still unconfirmed")
    before = (down.multicast, down.unicast)
    cpus, walls = [], []
    for _ in range(runs):
        w0, c0 = time.perf_counter(), time.process_time()
        await engine.step()
        cpus.append(time.process_time() - c0)
        walls.append(time.perf_counter() - w0)
    await _settle()
    steady_sends = down.multicast + down.unicast - sum(before)
    cpu = statistics.median(cpus)
    lit = sum(1 for lum in engine.luminaires.values() if lum.target > 0)
    return {
        "at": at.isoformat(),
        "luminaires": luminaires,
        "lit_at_0200": lit,
        "cold_runs": cold_runs,
        "cold_cpu_ms": statistics.median(cold_cpu) * 1e3,
        "cold_wall_ms": statistics.median(cold_wall) * 1e3,
        "cold_multicast_frames": sent[0],
        "cold_unicast_frames": sent[1],
        "runs": runs,
        "steady_cpu_ms": cpu * 1e3,
        "steady_wall_ms": statistics.median(walls) * 1e3,
        "steady_cpu_ms_p90": sorted(cpus)[int(0.9 * (len(cpus) - 1))] * 1e3,
        "steady_cpu_us_per_luminaire": cpu / luminaires * 1e6,
        "steady_frames_sent": steady_sends,
    }


# ------------------------------------------------------------------------------ row 2

# The engine's confirmation timeout, in real seconds (its timeouts run on the event loop's
# clock). While something is pending the schedule clock runs confirm_timeout / CONFIRM_REAL
# times faster than real time (20x for the example's 60 s), so a timeout measured on the
# schedule is the configured one; the radio itself keeps its real pace. Not shorter: a
# controller's next answer waits for the receive windows its last uplink opened (RX2 ends
# about 2.1 s after it), and a resend faster than that is answered late, then resent again.
CONFIRM_REAL = 3.0
WARM_UP = timedelta(minutes=90)  # before the night: the cold start's frames leave the gate's
# hour before the night begins, so the night's figures are those of a running gateway.
POLL = 0.01  # s of real time between looks at the radio while something is pending


def presence_plan(night: date, tz: Any) -> list[tuple[datetime, str]]:
    """When the example street's sensors see someone (local times of the night).

    23:40 is outside the Grande-Rue's sensor period (01:00-05:30): the engine must not
    boost for it. The others fall inside it, each near other luminaires.
    """
    d0, d1 = night, night + timedelta(days=1)
    at = lambda d, h, m: datetime(d.year, d.month, d.day, h, m, tzinfo=tz)  # noqa: E731
    return [
        (at(d0, 23, 40), "pir-2"),
        (at(d1, 1, 40), "pir-1"),
        (at(d1, 3, 15), "pir-3"),
        (at(d1, 4, 50), "pir-2"),
    ]


class ScheduleClock:
    """The wall clock the engine and the gate read, for a night played faster than real.

    It runs at ``speed`` times the event loop's clock and :meth:`jump` moves it ahead;
    :meth:`at` maps an event-loop time (the medium's) back to schedule time.
    """

    def __init__(self, start: float, speed: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.speed = speed
        self._segments: list[tuple[float, float]] = [(self.loop.time(), start)]

    def now(self) -> float:
        return self.at(self.loop.time())

    def at(self, loop_time: float) -> float:
        i = len(self._segments) - 1
        while i > 0 and self._segments[i][0] > loop_time:
            i -= 1
        loop0, sched0 = self._segments[i]
        return sched0 + self.speed * (loop_time - loop0)

    def jump(self, seconds: float) -> None:
        if seconds > 0:
            self._segments.append((self.loop.time(), self.now() + seconds))

    async def sleep(self, seconds: float) -> None:
        """Sleep ``seconds`` of schedule time (the gate waiting for room)."""
        await asyncio.sleep(max(seconds, 0.0) / self.speed)


class ScheduleGate:
    """The duty-cycle gate on the schedule clock, with its decisions logged.

    The engine is given the same clock (``gate_clock``), so its deadlines are on it.
    Everything else is the real gate's.
    """

    def __init__(self, gate: Any, clock: ScheduleClock) -> None:
        self.gate = gate
        self.clock = clock
        self.log: list[tuple[float, str, float]] = []  # (schedule time, band, airtime s)
        self.refused: list[str] = []

    def _band(self, frequency: float) -> str:
        band = self.gate.band_of(frequency)
        return band.name if band is not None else "?"

    async def acquire(
        self, frequency: float, airtime: float, power: float, deadline: float | None
    ) -> Any:
        decision = await self.gate.acquire(frequency, airtime, power, deadline)
        if decision.ok:
            self.log.append((self.clock.now(), self._band(frequency), airtime))
        else:
            self.refused.append(str(decision.reason))
        return decision

    def check(self, frequency: float, airtime: float, power: float) -> Any:
        decision = self.gate.check(frequency, airtime, power)
        if not decision.ok:
            self.refused.append(str(decision.reason))
        return decision

    def record(self, frequency: float, airtime: float) -> None:
        self.gate.record(frequency, airtime)
        self.log.append((self.clock.now(), self._band(frequency), airtime))

    def utilisation(self) -> dict[str, float]:
        return dict(self.gate.utilisation())


class CountingDownlinks:
    """Between the engine and the network server: how many sends are in flight."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.pending = 0

    async def send(
        self,
        device: str,
        fport: int,
        payload: bytes,
        *,
        confirmed: bool = False,
        deadline: float | None = None,
    ) -> Any:
        self.pending += 1
        try:
            return await self.server.send(
                device, fport, payload, confirmed=confirmed, deadline=deadline
            )
        finally:
            self.pending -= 1

    async def send_multicast(
        self, group: str, fport: int, payload: bytes, *, deadline: float | None = None
    ) -> Any:
        self.pending += 1
        try:
            return await self.server.send_multicast(group, fport, payload, deadline=deadline)
        finally:
            self.pending -= 1


def street_config(workdir: Path) -> Any:
    """``examples/street.toml`` as the agent loads it, with a lab uplink and data dir (the
    example's certificate paths exist only on a provisioned gateway)."""
    from passerelle.config import parse

    data = tomllib.loads(STREET_TOML.read_text())
    data["uplink"] = {"url": "mqtt://127.0.0.1:1883", "allow_plaintext": True}
    data["gateway"]["data_dir"] = str(workdir / "data")
    return parse(data, STREET_TOML.parent)


PRESENCE_FPORT = 1


def _presence_payload() -> bytes:
    from passerelle.lorawan.codecs import encode_cayenne

    return encode_cayenne([(1, "presence", 1)])  # channel 1: the example's "presence/1"


def played_window(night: date, sizes: Sizes, tz: Any) -> tuple[datetime, datetime]:
    """The part of the night row 2 plays: all of it, or ``sizes.slice``."""
    from passerelle.lighting.plan import local_time, window

    if sizes.slice is None:
        return window(night, tz)
    a, b = (int(x[:2]) * 60 + int(x[3:]) for x in sizes.slice)
    return local_time(night, a, tz), local_time(night, b, tz)


async def play_night(workdir: Path, night: date, sizes: Sizes, seed: int = 1) -> dict[str, Any]:
    """Row 2: the example street's night on the simulated radio (see the module docstring)."""
    from hil.lighting_rig import lighting_rig
    from passerelle.policy.dutycycle import DutyCycleGate

    cfg = street_config(workdir)
    assert cfg.lighting is not None and cfg.lorawan is not None
    configured_timeout = cfg.lighting.confirm_timeout
    speed = configured_timeout / CONFIRM_REAL
    lc = msgspec.structs.replace(cfg.lighting, confirm_timeout=CONFIRM_REAL)
    if sizes.retries is not None:
        lc = msgspec.structs.replace(lc, retries=sizes.retries)
    cfg = msgspec.structs.replace(cfg, lighting=lc)
    tz = lc.tz
    begin, end = (t.timestamp() for t in played_window(night, sizes, tz))
    whole_night = sizes.slice is None
    clock = ScheduleClock(begin - WARM_UP.total_seconds(), speed)
    gate = ScheduleGate(
        DutyCycleGate(clock=clock.now, sleep=clock.sleep, wall_clock=clock.now), clock
    )
    engine_out: list[tuple[Record, Priority]] = []

    async def engine_emit(records: Sequence[Record], priority: Priority) -> None:
        engine_out.extend((r, priority) for r in records)

    events = [
        (t.timestamp(), who) for t, who in presence_plan(night, tz) if begin <= t.timestamp() < end
    ]
    payload = _presence_payload()
    loop = asyncio.get_running_loop()
    real0 = time.perf_counter()
    cpu0 = time.process_time()
    settle = sizes.reply_window + 0.5  # every multicast answer is in by then (real s)
    async with lighting_rig(
        cfg, workdir, reply_window=sizes.reply_window, gate=gate, seed=seed
    ) as rig:
        down = CountingDownlinks(rig.server)
        contactors = _contactors(lc, loop)
        engine = LightingEngine(
            lc,
            engine_emit,
            downlinks=down,
            clock=clock.now,
            gate_clock=clock.now,
            multicast_settle=settle,
            relays={k: h for k, (h, _c) in contactors.items()},
        )
        rig.attach(engine.observe)
        fired: list[tuple[float, float]] = []  # (loop time fired, schedule time)

        def busy() -> bool:
            if down.pending:
                return True
            if any(lum.wait > 0 or lum.in_flight for lum in engine.luminaires.values()):
                return True
            if any(len(s.reply_delays) > s.answers for s in rig.luminaires.values()):
                return True
            now = loop.time()
            if any(tx.end > now for tx in rig.medium.transmissions[-8:]):
                return True
            # A presence uplink counts as handled once the engine has seen it, or after
            # 5 s of real time (lost in the air).
            seen = engine.counts["presence_events"]
            return bool(fired) and seen < len(fired) and now - fired[-1][0] < 5.0

        def snapshot() -> dict[str, int]:
            return {
                "downlinks": len(rig.gateway.sent),
                "gate_log": len(gate.log),
                "transmissions": len(rig.medium.transmissions),
            }

        samples: list[tuple[float, float]] = []  # (schedule time, band P utilisation)
        marks: dict[str, dict[str, int]] = {}
        next_step = clock.now()
        steps = 0
        while True:
            now = clock.now()
            if now < next_step:
                if busy():
                    await asyncio.sleep(POLL)
                    continue
                clock.jump(next_step - now)
            while len(fired) < len(events) and events[len(fired)][0] <= clock.now():
                rig.uplink(events[len(fired)][1], PRESENCE_FPORT, payload)
                fired.append((loop.time(), clock.now()))
            if "begin" not in marks and next_step >= begin:
                marks["begin"] = snapshot()
                counts_at_begin = dict(engine.counts)
                warm_real = time.perf_counter() - real0
            if next_step >= end:
                marks["end"] = snapshot()
                counts_at_end = dict(engine.counts)
                if whole_night:
                    await engine.step()  # closes the night: its energy records
                    steps += 1
                break
            await engine.step()
            steps += 1
            await asyncio.sleep(0)  # the sends the step spawned reach the server
            if begin <= next_step:
                samples.append((clock.now(), gate.utilisation().get("P", 0.0)))
            next_step += lc.tick
        # The next night's programs go out after the close; let them finish cleanly.
        for _ in range(int(10.0 / POLL)):
            if not busy():
                break
            await asyncio.sleep(POLL)
        for _ in range(3):
            await asyncio.sleep(0)
        real_s = time.perf_counter() - real0
        cpu_s = time.process_time() - cpu0
        res = _night_figures(cfg, rig, gate, clock, marks, samples, begin, end)
        res.update(
            {
                "night": night.isoformat(),
                "whole_night": whole_night,
                "window": [
                    datetime.fromtimestamp(begin, tz).isoformat(),
                    datetime.fromtimestamp(end, tz).isoformat(),
                ],
                "hours": (end - begin) / 3600,
                "steps": steps,
                "tick_s": lc.tick,
                "reply_window_s": sizes.reply_window,
                "multicast_settle_s": settle,
                "confirm_timeout_s": CONFIRM_REAL,
                "configured_confirm_timeout_s": configured_timeout,
                "busy_speed": speed,
                "warm_up_s": WARM_UP.total_seconds(),
                "real_s": real_s,
                "warm_up_real_s": warm_real,
                "cpu_s": cpu_s,
                "presence_uplinks": [
                    (datetime.fromtimestamp(t, tz).isoformat(timespec="minutes"), who)
                    for t, who in events
                ],
                "presence_seen": engine.counts["presence_events"],
                "luminaires": len(rig.luminaires),
                # What the engine counted during the played window (not the warm-up).
                "engine_counts": {
                    k: v - counts_at_begin.get(k, 0)
                    for k, v in counts_at_end.items()
                    if v != counts_at_begin.get(k, 0)
                },
                "engine_energy_wh": _engine_energy(engine_out),
                "gate_refusals": list(gate.refused),
            }
        )
    return res


def _contactors(lc: LightingConfig, loop: asyncio.AbstractEventLoop) -> dict[str, Any]:
    """Each zone's contactor: the real relay driver on a simulated contactor (coil and
    auxiliary contact), as the agent's GPIO source hands it to the engine."""
    from drivers.gpio import Relay
    from hil.gpio_sim import SimContactor
    from passerelle.cabinet.inputs import RelayHandle

    def ticks_ms() -> int:
        return int(loop.time() * 1000)

    out: dict[str, Any] = {}
    for zone in lc.zones.values():
        if zone.relay is not None and zone.relay not in out:
            contactor = SimContactor(ticks_ms)
            relay = Relay(contactor.coil, feedback=contactor.aux, name=zone.relay)
            out[zone.relay] = (RelayHandle(relay, ticks_ms), contactor)
    return out


def _engine_energy(out: list[tuple[Record, Priority]]) -> dict[str, dict[str, float]]:
    """The night's energy records the engine sent at its close, by zone."""
    zones: dict[str, dict[str, float]] = {}
    for r, _priority in out:
        zone, _, what = r.name.partition("/")
        if r.device == "lighting" and what.startswith("energy") and isinstance(r.value, float):
            zones.setdefault(zone, {})[what] = r.value
    return zones


def _night_figures(
    cfg: Any,
    rig: Any,
    gate: ScheduleGate,
    clock: ScheduleClock,
    marks: dict[str, dict[str, int]],
    samples: list[tuple[float, float]],
    begin: float,
    end: float,
) -> dict[str, Any]:
    from passerelle.lighting.protocol import SetLevel, SetProgram, decode_command
    from passerelle.lorawan import phy
    from passerelle.lorawan.airtime import airtime_of

    lw = cfg.lorawan
    keys: dict[int, tuple[str, bytes, int]] = {}  # DevAddr -> (who, AppSKey, members)
    for g in lw.multicast:
        keys[int(g.dev_addr, 16)] = (f"group:{g.name}", bytes.fromhex(g.app_s_key), len(g.devices))
    for d in lw.devices:
        if d.dev_addr and d.app_s_key:
            keys[int(d.dev_addr, 16)] = (d.name, bytes.fromhex(d.app_s_key), 1)
    a, b = marks["begin"]["downlinks"], marks["end"]["downlinks"]
    frames = []
    for tx in rig.gateway.sent[a:b]:
        frame = phy.decode_data(tx.payload)
        who, app_key, members = keys[frame.dev_addr]
        command = decode_command(phy.decrypt_payload(frame, app_key, frame.fcnt))
        kind = (
            "program"
            if isinstance(command, SetProgram)
            else "level"
            if isinstance(command, SetLevel)
            else "status_req"
        )
        frames.append(
            {
                "at": clock.at(tx.start),
                "to": who,
                "multicast": who.startswith("group:"),
                "members": members,
                "kind": kind,
                "phy_bytes": len(tx.payload),
                "airtime_s": tx.end - tx.start,
                "frequency": tx.frequency,
                "datarate": tx.datarate,
                "level": command.level if isinstance(command, SetLevel) else None,
            }
        )
    tz = cfg.lighting.tz
    # The gate's own accounting of the night: what the server asked it for, by band.
    g0, g1 = marks["begin"]["gate_log"], marks["end"]["gate_log"]
    charged = gate.log[g0:g1]
    by_band: dict[str, float] = {}
    for _t, band, air in charged:
        by_band[band] = by_band.get(band, 0.0) + air
    hours: dict[int, dict[str, Any]] = {}
    for t, _band, air in charged:
        h = int((t - begin) // 3600)
        hours.setdefault(h, {"airtime_s": 0.0, "frames": 0})
        hours[h]["airtime_s"] += air
        hours[h]["frames"] += 1
    for t, u in samples:
        h = int((t - begin) // 3600)
        slot = hours.setdefault(h, {"airtime_s": 0.0, "frames": 0})
        slot["peak_utilisation"] = max(slot.get("peak_utilisation", 0.0), u)
    band_p = gate.gate.band_of(lw.rx2_frequency)
    allowance = band_p.allowance_s() if band_p is not None else 0.0
    peak_u, peak_t = max(((u, t) for t, u in samples), default=(0.0, begin))
    per_hour = [
        {
            "hour": datetime.fromtimestamp(begin + 3600 * h, tz).strftime("%H:%M"),
            "airtime_s": v["airtime_s"],
            "frames": v["frames"],
            "peak_utilisation": v.get("peak_utilisation", 0.0),
        }
        for h, v in sorted(hours.items())
        if 0 <= h < 25
    ]
    busiest = max(per_hour, key=lambda v: v["airtime_s"], default=None)

    # Uplinks of the night, as the medium carried them.
    t0, t1 = marks["begin"]["transmissions"], marks["end"]["transmissions"]
    night_txs = rig.medium.transmissions[t0:t1]
    lums, sensors = set(rig.luminaires), set(rig.sensors)
    status = [tx for tx in night_txs if tx.source in lums]
    pir = [tx for tx in night_txs if tx.source in sensors]
    lost: dict[str, int] = {}
    ids = {id(tx) for tx in status}
    for r in rig.medium.receptions:
        if r.receiver == rig.gateway.name and id(r.transmission) in ids and not r.ok:
            lost[r.outcome] = lost.get(r.outcome, 0) + 1
    per_lum: dict[str, float] = {}
    for tx in status:
        per_lum[tx.source] = per_lum.get(tx.source, 0.0) + tx.airtime

    # The counterfactual, computed: each multicast frame as one unicast frame per member
    # (same FRMPayload, so the same PHYPayload length) at the class C data rate.
    uni_air = [(f["at"], f["airtime_s"]) for f in frames if not f["multicast"]]
    for f in frames:
        if f["multicast"]:
            one = airtime_of(lw.rx2_datarate, f["phy_bytes"], uplink=False)
            uni_air += [(f["at"], one)] * f["members"]
    multicast = [f for f in frames if f["multicast"]]
    unicast = [f for f in frames if not f["multicast"]]
    return {
        "frames": [
            dict(f, at=datetime.fromtimestamp(f["at"], tz).isoformat(timespec="seconds"))
            for f in frames
        ],
        "downlink_frames": len(frames),
        "multicast_frames": len(multicast),
        "multicast_level_frames": sum(f["kind"] == "level" for f in multicast),
        "multicast_program_frames": sum(f["kind"] == "program" for f in multicast),
        "unicast_frames": len(unicast),
        "unicast_level_frames": sum(f["kind"] == "level" for f in unicast),
        "unicast_program_frames": sum(f["kind"] == "program" for f in unicast),
        "program_frames": sum(f["kind"] == "program" for f in frames),
        "downlink_airtime_s": sum(f["airtime_s"] for f in frames),
        "gate_airtime_s_by_band": by_band,
        "gate_frames": len(charged),
        "band": band_p.name if band_p is not None else "?",
        "band_allowance_s_per_h": allowance,
        "peak_hour_utilisation": peak_u,
        "peak_hour_duty_cycle_pct": peak_u * allowance / 3600 * 100,
        "peak_hour_ends": datetime.fromtimestamp(peak_t, tz).isoformat(timespec="minutes"),
        "peak_sliding_hour_airtime_s": peak_window([(f["at"], f["airtime_s"]) for f in frames]),
        "per_hour": per_hour,
        "busiest_clock_hour": busiest,
        "status_uplinks": len(status),
        "status_airtime_s": sum(tx.airtime for tx in status),
        "status_lost_at_gateway": lost,
        "status_airtime_s_max_per_luminaire": max(per_lum.values(), default=0.0),
        "status_datarates": sorted({tx.datarate for tx in status}),
        "presence_uplinks_on_air": len(pir),
        "presence_airtime_s": sum(tx.airtime for tx in pir),
        "unicast_datarate": lw.rx2_datarate,
        "unicast_only_frames": len(uni_air),
        "unicast_only_airtime_s": sum(air for _t, air in uni_air),
        "unicast_only_peak_sliding_hour_airtime_s": peak_window(uni_air),
    }


def peak_window(events: list[tuple[float, float]], width: float = 3600.0) -> float:
    """The most airtime started within any ``width`` seconds (a sliding hour)."""
    ordered = sorted(events)
    best = total = 0.0
    lo = 0
    for t, air in ordered:
        total += air
        while ordered[lo][0] <= t - width:
            total -= ordered[lo][1]
            lo += 1
        best = max(best, total)
    return best


# ------------------------------------------------------------------------------ row 3


def street_energy(night: date, workdir: Path) -> dict[str, Any]:
    """The example street's night from the planner: energy and baseline per zone."""
    cfg = street_config(workdir)
    lc = cfg.lighting
    assert lc is not None
    plan = plan_night(lc, night)
    zones = {}
    for name, zp in plan.zones.items():
        zone = lc.zones[name]
        zones[name] = {
            "luminaires": zone.size,
            "rated_power_w": zone.rated_power,
            "rule": zp.rule,
            "program": zp.program,
            "energy_kwh": zp.energy_wh / 1e3,
            "baseline_kwh": zp.baseline_wh / 1e3,
            "saved_kwh": (zp.baseline_wh - zp.energy_wh) / 1e3,
            "saved_pct": (100 * (1 - zp.energy_wh / zp.baseline_wh) if zp.baseline_wh else 0.0),
            "steps": [[t.isoformat(timespec="minutes"), lv] for t, lv in zp.steps],
        }
    energy = sum(z["energy_kwh"] for z in zones.values())
    baseline = sum(z["baseline_kwh"] for z in zones.values())
    sun = plan.sun
    return {
        "night": night.isoformat(),
        "sunset": sun.sunset.isoformat(timespec="minutes") if sun.sunset else None,
        "sunrise": sun.sunrise.isoformat(timespec="minutes") if sun.sunrise else None,
        "zones": zones,
        "energy_kwh": energy,
        "baseline_kwh": baseline,
        "saved_kwh": baseline - energy,
        "saved_pct": 100 * (1 - energy / baseline) if baseline else 0.0,
    }


# ------------------------------------------------------------------------------ table


def _hm(iso: str) -> str:
    return iso[11:16]


def build_rows(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key in ("plan", "plan_zone_each"):
        p = res.get(key)
        if p is None:
            continue
        rows.append(
            Row(
                "1",
                f"plan_night for the night of {p['night']}: {_fmt(p['luminaires'])} luminaires in"
                f" {_fmt(p['zones'])} zones, {p['programs']} programs, {p['calendars']} calendars"
                f" (median of {p['runs']} runs)",
                f"wall {p['wall_ms']:.2f} ms, CPU {p['cpu_ms']:.2f} ms ="
                f" {p['cpu_us_per_luminaire']:.2f} us CPU per luminaire,"
                f" {p['cpu_us_per_zone']:.0f} us per zone (slowest run {p['wall_ms_max']:.2f} ms)",
                "- (no target)",
                "info",
            )
        )
    s = res.get("step")
    if s is not None:
        rows.append(
            Row(
                "1",
                f"LightingEngine.step() at {s['at'][11:16]} with {_fmt(s['luminaires'])} luminaires"
                f" ({s['lit_at_0200']} lit), Downlinks that accept every frame at once",
                f"steady (all confirmed, nothing to send): median {s['steady_cpu_ms']:.3f} ms CPU"
                f" = {s['steady_cpu_us_per_luminaire']:.2f} us per luminaire (p90"
                f" {s['steady_cpu_ms_p90']:.3f} ms, {s['runs']} steps, {s['steady_frames_sent']}"
                f" frames); first step of a fresh engine ({s['cold_multicast_frames']} multicast +"
                f" {s['cold_unicast_frames']} unicast frames queued): median"
                f" {s['cold_cpu_ms']:.2f} ms CPU ({s['cold_runs']} engines)",
                "- (no target)",
                "info",
            )
        )
    n = res.get("night")
    if n is not None:
        counts = n["engine_counts"]
        span = (
            "noon to noon"
            if n["whole_night"]
            else f"only {_hm(n['window'][0])}-{_hm(n['window'][1])} (--quick)"
        )
        rows.append(
            Row(
                "2",
                f"example street, night of {n['night']} ({span}) played on the simulated radio:"
                f" real NetworkServer, DutyCycleGate, {n['luminaires']} LuminaireSim controllers,"
                f" {len(n['presence_uplinks'])} presence uplinks; answer window"
                f" {n['reply_window_s']:g} s, confirmation {n['confirm_timeout_s']:g} s real"
                f" (= {n['configured_confirm_timeout_s']:g} s of schedule)",
                f"{n['downlink_frames']} downlinks on air: {n['multicast_frames']} multicast"
                f" ({n['multicast_level_frames']} levels + {n['multicast_program_frames']}"
                f" programs), {n['unicast_frames']} unicast ({n['unicast_level_frames']} levels"
                f" + {n['unicast_program_frames']} programs; the engine counted"
                f" {counts.get('unicast_commands', 0)} commands +"
                f" {counts.get('retries', 0)} resends);"
                f" {n['downlink_airtime_s']:.2f} s on air"
                f" (gate: {_bands(n['gate_airtime_s_by_band'])})",
                "- (no target)",
                "info",
            )
        )
        allowance = n["band_allowance_s_per_h"]
        busiest = n["busiest_clock_hour"] or {"hour": "-", "airtime_s": 0.0, "frames": 0}
        rows.append(
            Row(
                "2",
                f"band {n['band']} duty cycle (gateway downlinks; {allowance:g} s per hour ="
                f" 10 %): the gate's sliding hour, sampled every tick",
                f"peak {n['peak_hour_utilisation'] * allowance:.2f} s in an hour ="
                f" {n['peak_hour_duty_cycle_pct']:.3f} % of the hour"
                f" ({n['peak_hour_utilisation'] * 100:.2f} % of the allowance), hour ending"
                f" {_hm(n['peak_hour_ends'])}; busiest clock hour {busiest['hour']}:"
                f" {busiest['frames']} frames, {busiest['airtime_s']:.2f} s",
                "<= 10 % (ETSI)",
                "info",
            )
        )
        lost = ", ".join(f"{k} {v}" for k, v in sorted(n["status_lost_at_gateway"].items()))
        rows.append(
            Row(
                "2",
                f"controllers' STATUS uplinks ({', '.join(n['status_datarates']) or '-'}, uplink"
                " channels); presence sensors' uplinks",
                f"{n['status_uplinks']} STATUS uplinks, {n['status_airtime_s']:.2f} s on air"
                f" (busiest controller {n['status_airtime_s_max_per_luminaire']:.2f} s); lost at"
                f" the gateway: {lost or 'none'}; presence {n['presence_uplinks_on_air']} uplinks,"
                f" {n['presence_airtime_s']:.3f} s",
                "- (no target)",
                "info",
            )
        )
        factor = (
            n["unicast_only_airtime_s"] / n["downlink_airtime_s"]
            if n["downlink_airtime_s"]
            else 0.0
        )
        rows.append(
            Row(
                "2",
                "computed, not played: the same frames with every multicast command sent as one"
                " unicast per member (airtime_of, same PHYPayload length)",
                f"{n['unicast_only_frames']} downlinks, {n['unicast_only_airtime_s']:.2f} s on air"
                f" ({factor:.1f}x the played night); peak sliding hour"
                f" {n['unicast_only_peak_sliding_hour_airtime_s']:.2f} s ="
                f" {n['unicast_only_peak_sliding_hour_airtime_s'] / 36:.3f} % of the hour",
                "<= 10 % (ETSI)",
                "info",
            )
        )
    e = res.get("energy")
    if e is not None:
        played = (n or {}).get("engine_energy_wh") or {}
        for name, z in e["zones"].items():
            acc = played.get(name, {}).get("energy")
            extra = (
                f"; the engine accounted {acc / 1e3:.2f} kWh playing row 2"
                if acc is not None
                else ""
            )
            rows.append(
                Row(
                    "3",
                    f"computed from the plan: {name}, {z['luminaires']} x {z['rated_power_w']:g} W,"
                    f" program {z['program'] or 'default'} ({z['rule'] or 'everyday rule'}),"
                    f" night of {e['night']}",
                    f"{z['energy_kwh']:.2f} kWh vs {z['baseline_kwh']:.2f} kWh all night at full"
                    f" power (sunset to sunrise): {z['saved_kwh']:.2f} kWh saved"
                    f" ({z['saved_pct']:.0f} %){extra}",
                    "- (no target)",
                    "info",
                )
            )
        street = sum(z["luminaires"] for z in e["zones"].values())
        rows.append(
            Row(
                "3",
                f"computed from the plan: the whole street ({street} luminaires), sunset"
                f" {_hm(e['sunset'] or '-' * 16)},"
                f" sunrise {_hm(e['sunrise'] or '-' * 16)}",
                f"{e['energy_kwh']:.2f} kWh vs {e['baseline_kwh']:.2f} kWh: {e['saved_kwh']:.2f}"
                f" kWh saved ({e['saved_pct']:.0f} %)",
                "- (no target)",
                "info",
            )
        )
    return rows


def _bands(by_band: dict[str, float]) -> str:
    return ", ".join(f"band {b} {s:.2f} s" for b, s in sorted(by_band.items())) or "nothing"


def print_header(cmd: str, info: dict[str, Any], sizes: Sizes, night: date) -> None:
    print(f"Command:  {cmd}")
    print(
        f"Machine:  {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable),"
        f" {info['mem_gib']} GiB, Linux {info['kernel']}"
    )
    print(
        f"Software: {info['python']}, astral {info['astral']}, cryptography"
        f" {info['cryptography']}, msgspec {info['msgspec']}"
    )
    print(
        f"Night:    {night.isoformat()} (noon to noon, Europe/Paris); example"
        f" {STREET_TOML.relative_to(REPO)}"
    )
    print(f"Sizes:    {sizes}")
    print()


# ------------------------------------------------------------------------------ main


async def run_all(
    workdir: Path, sizes: Sizes, night: date, progress: Callable[[str], None]
) -> dict[str, Any]:
    res: dict[str, Any] = {}

    async def phase(name: str, key: str, make: Callable[[], Any]) -> None:
        progress(f"{name} ...")
        t = time.perf_counter()
        out = make()
        res[key] = await out if asyncio.iscoroutine(out) else out
        progress(f"{name}: {time.perf_counter() - t:.1f} s")

    big = lighting_config(generated_lighting(ZONES, PER_ZONE))
    each = lighting_config(generated_lighting(ZONES * PER_ZONE, 1))
    await phase("1 plan, 50 zones x 20", "plan", lambda: bench_plan(big, night, sizes.plan_runs))
    await phase(
        "1 plan, 1000 zones x 1",
        "plan_zone_each",
        lambda: bench_plan(each, night, max(3, sizes.plan_runs // 4)),
    )
    await phase(
        "1 engine step", "step", lambda: bench_step(big, night, sizes.step_runs, sizes.cold_runs)
    )
    await phase(
        "2 the example street's night on the radio",
        "night",
        lambda: play_night(workdir, night, sizes),
    )
    await phase("3 energy from the plan", "energy", lambda: street_energy(night, workdir))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hil.bench_lighting", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="fewer runs, part of the night")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--plain", action="store_true", help="plain-text table even if rich is there")
    ap.add_argument("--dir", help="where the session database goes (default: under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    ap.add_argument(
        "--night",
        default=DEFAULT_NIGHT.isoformat(),
        help=f"the night to plan and play, YYYY-MM-DD (default {DEFAULT_NIGHT})",
    )
    args = ap.parse_args(argv)
    try:
        night = date.fromisoformat(args.night)
    except ValueError:
        ap.error(f"--night {args.night!r}: expected YYYY-MM-DD")

    # The engine's alarms (a controller not confirming) and the server's warnings are
    # counted in the results; one line each on stderr would bury the progress lines.
    logging.getLogger("passerelle").setLevel(logging.ERROR)
    sizes = QUICK if args.quick else FULL
    workdir = bench_workdir(args.dir, "passerelle-bench-lighting-")
    cmd = "python -m hil.bench_lighting" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    info = machine_info(workdir, None)
    for key in ("mosquitto", "aiomqtt", "paho_mqtt", "sqlite", "cbor2"):
        info.pop(key, None)
    for dist in ("astral", "cryptography", "msgspec"):
        info[dist] = _version(dist)
    print_header(cmd, info, sizes, night)
    sys.stdout.flush()

    res, elapsed = run_in(workdir, args.keep, lambda: run_all(workdir, sizes, night, progress))
    rows = build_rows(res)
    # rich only on a terminal; a pipe or a file gets the plain table.
    print_table(rows, plain=args.plain or not sys.stdout.isatty())
    print(f"{len(rows)} rows, all informative (no targets set); run took {elapsed:.0f} s")
    if args.json:
        print_json_report(cmd, info, sizes, elapsed, res, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
