"""Upstream bytes per day of a typical cabinet, with no policy and with the default policies.

Usage::

    python -m hil.bench_sobriety [--json] [--days N]

The cabinet (the issue's example): one energy meter with 6 values, 3 environmental values
and the door switch, all read every 10 s, for a November day in Paris (lights on from 17:15
to 07:50, dimmed to 50 % from 23:00 to 05:00, the door opened once for 25 minutes).

Both columns run the real code on the same simulated readings, minute by minute of a
virtual day:

* the data sobriety engine (:class:`passerelle.policy.sobriety.Sobriety` with
  :func:`passerelle.policy.config.default_policy`, windows closed by ``tick`` as the agent
  does every 5 s) or nothing;
* packs formed as the store forms them (per priority, up to ``batch_records`` records or
  ``batch_age`` seconds: the agent's defaults, 250 and 60 s; alarms at once);
* each pack encoded by the uplink's encoder (:func:`passerelle.senml.encode_pack`, zlib as
  the uplink applies it), and the MQTT 5 PUBLISH around it counted byte for byte (fixed
  header, topic, packet id, the content-type / idempotency-key / content-encoding
  properties). TLS records and TCP/IP headers are not counted: they depend on the link.

The readings are a model (load following the lighting schedule, sensor noise at each
sensor's resolution), so the figures are what the encoder and the policies do with such a
day, not a field measurement. The CPU row is measured: ``time.process_time`` around the
engine's ``process``/``tick`` calls only.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

from passerelle import senml
from passerelle.model import Priority, Record
from passerelle.policy.config import default_policy
from passerelle.policy.sobriety import Sobriety

GATEWAY = "cabinet-41-007"
TOPIC = f"passerelle/{GATEWAY}/up/senml"
POLL_S = 10.0
BATCH_RECORDS = 250
BATCH_AGE_S = 60.0
LONG_BATCH_AGE_S = 900.0  # uplink.batch_age matched to the policies' 15-min grain
TZ = ZoneInfo("Europe/Paris")
DAY = datetime(2026, 11, 21, tzinfo=TZ)  # a November Saturday

LUMINAIRES, LUMINAIRE_W = 40, 60.0
LIGHTS_ON, LIGHTS_OFF = (17, 15), (7, 50)
DIM_FROM, DIM_TO, DIM_LEVEL = (23, 0), (5, 0), 0.5
DOOR_OPEN, DOOR_CLOSED = (10, 15), (10, 40)


def _hm(t: float) -> float:
    local = datetime.fromtimestamp(t, TZ)
    return local.hour + local.minute / 60 + local.second / 3600


def _between(h: float, start: tuple[int, int], end: tuple[int, int]) -> bool:
    a, b = start[0] + start[1] / 60, end[0] + end[1] / 60
    return a <= h < b if a < b else h >= a or h < b


@dataclass
class Cabinet:
    """The readings of one poll, from a seeded model of the cabinet."""

    seed: int = 7
    energy_kwh: float = 18_432.125
    rng: random.Random = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def poll(self, t: float) -> list[tuple[Record, Priority]]:
        g = self.rng.gauss
        h = _hm(t)
        lit = _between(h, LIGHTS_ON, LIGHTS_OFF)
        level = DIM_LEVEL if lit and _between(h, DIM_FROM, DIM_TO) else (1.0 if lit else 0.0)
        power = LUMINAIRES * LUMINAIRE_W * level * (1 + g(0, 0.004)) + 12.0 + g(0, 0.3)
        voltage = 231.0 + 2.0 * math.sin(h / 24 * 2 * math.pi) + g(0, 0.25)
        pf = (0.96 if lit else 0.55) + g(0, 0.002)
        current = power / (voltage * pf)
        self.energy_kwh += power * POLL_S / 3_600_000
        temperature = 9.0 + 4.0 * math.sin((h - 9) / 24 * 2 * math.pi) + g(0, 0.03)
        humidity = 78.0 - 10.0 * math.sin((h - 9) / 24 * 2 * math.pi) + g(0, 0.4)
        pressure = 101_250.0 + 40.0 * math.sin(h / 12 * math.pi) + g(0, 3.0)
        door = _between(h, DOOR_OPEN, DOOR_CLOSED)
        meter, env = "meter-1", "env-1"
        e, tl = Priority.ENERGY, Priority.TELEMETRY
        return [
            (Record(meter, "voltage", round(voltage, 1), t, "V"), e),
            (Record(meter, "current", round(current, 3), t, "A"), e),
            (Record(meter, "power", round(power, 1), t, "W"), e),
            (Record(meter, "power_factor", round(pf, 3), t, "/"), e),
            (Record(meter, "frequency", round(50.0 + g(0, 0.012), 2), t, "Hz"), e),
            (Record(meter, "energy", round(self.energy_kwh, 3), t, "kWh"), e),
            (Record(env, "temperature", round(temperature, 2), t, "Cel"), tl),
            (Record(env, "humidity", round(humidity, 1), t, "%RH"), tl),
            (Record(env, "pressure", round(pressure, 1), t, "Pa"), tl),
            (Record("door", "door", door, t, None), tl),
        ]

    def alarms(self, t: float, previous: bool | None, door: bool) -> list[Record]:
        if previous is None or previous == door:
            return []
        return [Record("door", "alarm/door-open" if door else "alarm/door-closed",
                       "cabinet door opened" if door else "cabinet door closed", t)]


class Packer:
    """Packs as the store seals them: per priority, by count or by age; alarms at once."""

    def __init__(
        self, on_pack: Callable[[list[Record], Priority], None], batch_age: float = BATCH_AGE_S
    ) -> None:
        self.on_pack = on_pack
        self.batch_age = batch_age
        self.open: dict[Priority, tuple[float, list[Record]]] = {}

    def put(self, records: list[Record], priority: Priority, now: float) -> None:
        if not records:
            return
        if priority is Priority.ALARM:
            self.on_pack(list(records), priority)
            return
        started, batch = self.open.get(priority, (now, []))
        batch.extend(records)
        self.open[priority] = (started, batch)
        while len(batch) >= BATCH_RECORDS:
            self.on_pack(batch[:BATCH_RECORDS], priority)
            del batch[:BATCH_RECORDS]
        self.age(now)

    def age(self, now: float) -> None:
        for priority, (started, batch) in list(self.open.items()):
            if now - started >= self.batch_age:
                if batch:
                    self.on_pack(batch, priority)
                del self.open[priority]

    def flush(self) -> None:
        for priority, (_started, batch) in list(self.open.items()):
            if batch:
                self.on_pack(batch, priority)
        self.open.clear()


def _varint_len(n: int) -> int:
    return 1 if n < 128 else 2 if n < 16_384 else 3 if n < 2_097_152 else 4


def publish_bytes(payload: bytes, key: str) -> int:
    """Size of the MQTT 5 QoS 1 PUBLISH the uplink sends for ``payload`` (spec 3.3)."""
    props = 1 + 2 + len(senml.CONTENT_TYPE)  # content type (0x03)
    props += 1 + 2 + len("idempotency-key") + 2 + len(key)  # user property (0x26)
    if senml.is_compressed(payload):
        props += 1 + 2 + len("content-encoding") + 2 + len("deflate")
    variable = 2 + len(TOPIC) + 2 + _varint_len(props) + props
    remaining = variable + len(payload)
    return 1 + _varint_len(remaining) + remaining


@dataclass
class Day:
    records_polled: int = 0
    records_sent: int = 0
    packs: int = 0
    payload_bytes: int = 0
    publish_bytes: int = 0
    cpu_s: float = 0.0
    seq: int = 0

    def pack(self, records: list[Record], priority: Priority) -> None:
        key = f"{GATEWAY}/{self.seq}-{self.seq + len(records) - 1}"
        self.seq += len(records)
        payload = senml.compress(
            senml.encode_pack(records, lambda d: senml.device_base_name(GATEWAY, d), key)
        )
        self.records_sent += len(records)
        self.packs += 1
        self.payload_bytes += len(payload)
        self.publish_bytes += publish_bytes(payload, key)


def polls(days: int) -> Iterator[float]:
    start = DAY.timestamp()
    for k in range(int(days * 86_400 / POLL_S)):
        yield start + k * POLL_S


def run_day(
    with_policy: bool, days: int = 1, batch_age: float = BATCH_AGE_S
) -> tuple[Day, dict[str, int]]:
    day = Day()
    packer = Packer(day.pack, batch_age)
    cabinet = Cabinet()
    engine = Sobriety(default_policy(), gateway_id=GATEWAY) if with_policy else None
    door_before: bool | None = None
    last_tick = 0.0
    for t in polls(days):
        readings = cabinet.poll(t)
        day.records_polled += len(readings)
        door = bool(readings[-1][0].value)
        alarms = cabinet.alarms(t, door_before, door)
        door_before = door
        if alarms:
            packer.put(alarms, Priority.ALARM, t)
        by_priority: dict[Priority, list[Record]] = {}
        for rec, prio in readings:
            by_priority.setdefault(prio, []).append(rec)
        for prio, recs in by_priority.items():
            if engine is not None:
                c0 = time.process_time()
                recs = engine.process(recs, prio)
                day.cpu_s += time.process_time() - c0
            packer.put(recs, prio, t)
        if engine is not None and t - last_tick >= 5.0:
            last_tick = t
            c0 = time.process_time()
            closed = engine.tick(t)
            day.cpu_s += time.process_time() - c0
            for prio, recs in closed.items():
                packer.put(recs, prio, t)
        packer.age(t)
    if engine is not None:
        for prio, recs in engine.tick(t + 86_400).items():  # the last windows of the day
            packer.put(recs, prio, t)
    packer.flush()
    savings: dict[str, int] = {}
    if engine is not None:
        savings = {r.name: int(r.value) for r in engine.savings_records(t)
                   if isinstance(r.value, int | float)}
    return day, savings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m hil.bench_sobriety", description=__doc__)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--days", type=int, default=1, help="virtual days (default 1)")
    args = p.parse_args(argv)
    if args.days < 1:
        p.error("--days must be at least 1")
    raw, _ = run_day(False, args.days)
    pol, savings = run_day(True, args.days)
    slow, _ = run_day(True, args.days, LONG_BATCH_AGE_S)
    n = args.days
    result = {
        "command": "python -m hil.bench_sobriety" + (f" --days {n}" if n != 1 else ""),
        "cabinet": "1 energy meter (6 values) + 3 environmental values + door, every 10 s",
        "no_policy": raw.__dict__ | {"cpu_s": None},
        "default_policy": pol.__dict__,
        "default_policy_batch_age_900": slow.__dict__,
        "engine_us_per_record": round(pol.cpu_s / pol.records_polled * 1e6, 2),
        "savings": savings,
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"Command:  {result['command']}")
    print(f"Cabinet:  {result['cabinet']}, {n} virtual day(s)")
    print()
    rows = [
        ("records polled", "records_polled"),
        ("records sent upstream", "records_sent"),
        ("packs", "packs"),
        ("SenML-CBOR payload bytes (zlib)", "payload_bytes"),
        ("MQTT 5 PUBLISH bytes", "publish_bytes"),
    ]
    print(f"| {'per day':<32} | {'no policy':>10} | {'default policies':>16} "
          f"| {'+ batch_age 900 s':>17} | {'ratio':>6} |")
    print(f"|{'-' * 34}|{'-' * 11}:|{'-' * 17}:|{'-' * 18}:|{'-' * 7}:|")
    for label, attr in rows:
        a, b, c = (getattr(d, attr) / n for d in (raw, pol, slow))
        ratio = f"{a / c:.1f}x" if c else "-"
        print(f"| {label:<32} | {a:>10,.0f} | {b:>16,.0f} | {c:>17,.0f} | {ratio:>6} |")
    print()
    print(f"Sobriety engine CPU: {result['engine_us_per_record']} us per polled record "
          f"(process + tick, this machine)")
    print("Savings the engine reports:", ", ".join(f"{k}={v:,}" for k, v in savings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
