"""Sobriety at the uplink, against a real mosquitto: the daily byte budget and stream TTLs.

The budget is the real :class:`DailyBudget`; the uplink's wall clock is moved a day ahead
to see held packs go on the next day (the budget counts days in that clock).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from hil.mosquitto import Mosquitto
from passerelle import senml
from passerelle.model import Priority, Record
from passerelle.policy.budget import DailyBudget
from passerelle.store import DurableStore
from passerelle.uplink import Uplink, UplinkSettings

from .conftest import GATEWAY_ID, Subscriber

PREFIX = f"passerelle/{GATEWAY_ID}/"
BUDGET = 4096


def settings(broker: Mosquitto) -> UplinkSettings:
    return UplinkSettings(gateway_id=GATEWAY_ID, host="127.0.0.1", port=broker.plain_port,
                          tls=False, client_id="budget-test", batch_records=40,
                          state_interval=3600.0, backoff_initial=0.1, backoff_max=0.5)


def packs(sub: Subscriber) -> list[tuple[int, list[senml.Resolved]]]:
    out = []
    for m in sub.messages:
        if str(m.topic).endswith("up/senml"):
            raw = bytes(m.payload)
            plain = senml.decompress(raw) if senml.is_compressed(raw) else raw
            out.append((len(raw), senml.decode_pack(plain)[0]))
    return out


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        await asyncio.sleep(0.05)


def readings(n: int, t0: float, device: str = "meter-1") -> list[Record]:
    # Values that do not compress to nothing, so packs cost a few hundred bytes each.
    return [Record(device, "power", 1000.0 + (i * 7919 % 1013) / 7, t0 + i, "W")
            for i in range(n)]


async def test_budget_holds_telemetry_lets_alarms_through_and_resumes_next_day(
    tmp_path: Path, broker: Mosquitto, subscriber: Callable[..., Subscriber]
) -> None:
    clock = [time.time()]
    budget = DailyBudget(BUDGET, "Europe/Paris")
    async with DurableStore(tmp_path / "store.db", batch_records=40, batch_age=0.0,
                            max_delay=0.0) as store, subscriber(PREFIX + "up/#") as sub:
        await store.put_many(readings(800, clock[0]), Priority.TELEMETRY)
        uplink = Uplink(settings(broker), store, budget=budget, wall=lambda: clock[0])
        task = asyncio.create_task(uplink.run())
        try:
            await wait_until(lambda: uplink.stats.budget_held >= 1, 10, "the budget held a pack")
            await asyncio.sleep(0.3)  # nothing more goes out today
            first_day = packs(sub)
            spent = sum(size for size, _ in first_day)
            # Telemetry may use 80 % of the day; what was published fits, the rest waits.
            assert 0 < spent <= 0.8 * BUDGET
            assert spent == budget.stats()["spent"]
            assert store.stats().depth == 800 - sum(len(recs) for _, recs in first_day) > 0

            # An alarm is never held back by the budget.
            await store.put(Record("door", "alarm", "door-open", clock[0]), Priority.ALARM)
            await wait_until(lambda: any(r.value == "door-open" for _, recs in packs(sub)
                                         for r in recs), 5, "the alarm delivered")
            assert len(packs(sub)) == len(first_day) + 1

            # The next day, the held telemetry goes again, within the new day's share.
            clock[0] += 86_400
            await wait_until(lambda: len(packs(sub)) > len(first_day) + 1, 10,
                             "held packs sent on the next day")
            await asyncio.sleep(0.3)
            second_day = packs(sub)[len(first_day) + 1:]
            assert 0 < sum(size for size, _ in second_day) <= 0.8 * BUDGET
            delivered = [(r.name, r.time) for _, recs in packs(sub) for r in recs]
            assert len(delivered) == len(set(delivered))  # nothing sent twice
        finally:
            await uplink.stop()
            await asyncio.wait_for(task, 5)


async def test_records_past_their_stream_ttl_are_not_sent(
    tmp_path: Path, broker: Mosquitto, subscriber: Callable[..., Subscriber]
) -> None:
    now = time.time()

    def fresh(records: list[Record], t: float) -> list[Record]:
        return [r for r in records if t - r.time <= 60]

    async with DurableStore(tmp_path / "store.db", batch_records=40, batch_age=0.0,
                            max_delay=0.0) as store, subscriber(PREFIX + "up/#") as sub:
        await store.put_many(readings(10, now - 600, "old") + readings(10, now, "new"),
                             Priority.TELEMETRY)
        uplink = Uplink(settings(broker), store, record_filter=fresh)
        task = asyncio.create_task(uplink.run())
        try:
            await wait_until(lambda: store.stats().depth == 0, 10, "the store drained")
            names = {r.name.split(":")[-2] for _, recs in packs(sub) for r in recs}
            assert names == {f"passerelle-{GATEWAY_ID}-new"}
            assert uplink.stats.expired == 10 and uplink.stats.records_sent == 10
        finally:
            await uplink.stop()
            await asyncio.wait_for(task, 5)
