"""Crash test: the agent SIGKILLed over and over, mid-stream, must lose nothing it stored.

Each cycle starts ``python -m hil.crashrig`` on the same data directory with a busy counter
(a value every 0.5 ms, a fresh ``start`` per cycle so every value is unique), lets it run a
random while and SIGKILLs it. Now and then the broker is stopped while the agent runs, so
records pile up in the store and are carried over several crashes; it comes back before a
cycle, in the middle of one, or only cycles later. A few cycles are killed right after
start-up (store open, first connect). At the end the agent runs normally, without sources,
until its retained state reports an empty store.

Then, for every value in the rig's put log (its ``put`` returned: the store promised it):

* the upstream subscriber (MQTT 3.1.1 persistent session on a persistent broker, connected
  for the whole test, see ``test_integration.Upstream``) received it;
* a value received more than once always came under the same idempotency key, and a key
  always came with the same records;
* the store, opened directly at the end, is empty, and no crash ever made it corrupt.

``PASSERELLE_CRASH_SEED`` replays a run (the seed is printed).
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path

import pytest

from passerelle.store import DurableStore

from .test_integration import (  # noqa: F401  (durable_broker, rigs: fixtures)
    V311,
    Upstream,
    agent_config,
    check_keys,
    counter,
    duplicates_share_keys,
    durable_broker,
    missing_summary,
    rigs,
    stored_counter_values,
    wait_until,
)

CYCLES = 20
INTERVAL = 0.0005
STRIDE = 10_000_000  # counter start of cycle k: k * STRIDE
BROKER_STOPS = {3, 9, 15}  # cycles whose agent sees the broker stop under it
EARLY_KILLS = {5, 12, 18}  # cycles killed within 0.3 s of start-up


@pytest.mark.slow
async def test_sigkill_loop_loses_nothing(durable_broker, pki, tmp_path, rigs):  # noqa: F811
    broker = durable_broker
    seed = int(os.environ.get("PASSERELLE_CRASH_SEED") or random.randrange(2**32))
    print(f"PASSERELLE_CRASH_SEED={seed}")
    rng = random.Random(seed)
    data_dir = tmp_path / "data"
    put_log = tmp_path / "put.log"
    cfg = tmp_path / "agent.toml"
    started = time.monotonic()
    history: list[str] = []

    async def broker_up() -> None:
        await asyncio.to_thread(broker.start)
        await up.wait_connected()

    async with asyncio.timeout(100), Upstream(broker, pki, V311) as up:
        for cycle in range(CYCLES):
            agent_config(cfg, broker, pki, data_dir, sources=[counter(INTERVAL, cycle * STRIDE)])
            # A broker that is down comes back before this cycle, during it, or later.
            come_back = None
            if not broker.running:
                choice = rng.choice(["before", "during", "later"])
                if choice == "before" or cycle >= CYCLES - 2:
                    await broker_up()
                elif choice == "during":
                    come_back = rng.uniform(0.1, 0.9)
            go_down = rng.uniform(0.1, 0.9) if cycle in BROKER_STOPS and broker.running else None

            rig = rigs(cfg, put_log)
            await rig.wait_started()
            run_for = rng.uniform(0.0, 0.3) if cycle in EARLY_KILLS else rng.uniform(0.3, 1.5)
            events = sorted(
                [(f * run_for, what) for f, what in ((come_back, "up"), (go_down, "down"))
                 if f is not None]
            )
            t0 = time.monotonic()
            for at, what in events:
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                if what == "up":
                    await asyncio.to_thread(broker.start)
                else:
                    await asyncio.to_thread(broker.stop)
            await asyncio.sleep(max(0.0, t0 + run_for - time.monotonic()))
            assert rig.proc.poll() is None, f"cycle {cycle}: agent died:\n{rig.stderr()[-3000:]}"
            rig.kill()
            history.append(
                f"{cycle}:{run_for:.2f}s{''.join(f' {w}@{a:.2f}' for a, w in events)}"
                f"{'' if broker.running else ' (broker down)'}"
            )

        # The agent runs normally (no sources) until its store is empty.
        if not broker.running:
            await broker_up()
        agent_config(cfg, broker, pki, data_dir)
        rig = rigs(cfg, put_log)
        t_final = time.monotonic()
        final = await up.wait_state(
            lambda s: s["online"] and s["link"] == "up" and s["store"]["depth"] == 0,
            since=t_final, timeout=30,
        )
        assert await rig.terminate() == 0
        stored = stored_counter_values(put_log)
        await wait_until(
            lambda: stored <= up.values().keys(), 15,
            lambda: missing_summary(stored - up.values().keys()),
        )

    print("cycles:", "; ".join(history))
    async with DurableStore(data_dir / "store.db") as store:
        st = store.stats()
        assert st.depth == 0 and st.segments == 0, st
        assert st.quarantined == 0 and st.evicted == dict.fromkeys(st.evicted, 0), st
    assert final["store"]["quarantined"] == 0, final
    assert not any(Path(data_dir).glob("store.db.corrupt-*")), "a SIGKILL corrupted the store"

    seen = up.values()
    per_cycle = {k: sum(1 for v in stored if v // STRIDE == k) for k in range(CYCLES)}
    assert sum(1 for n in per_cycle.values() if n) >= CYCLES - len(EARLY_KILLS) - 2, per_cycle
    check_keys(up)
    dups = duplicates_share_keys(seen)
    strangers = {v for v in seen if v // STRIDE >= CYCLES or v % STRIDE > STRIDE // 2}
    assert not strangers, f"values nobody produced: {sorted(strangers)[:10]}"
    print(
        f"{CYCLES} kills in {time.monotonic() - started:.1f}s: {len(stored)} values stored, "
        f"{len(seen)} delivered ({len(seen) - len(stored)} stored but not logged before the "
        f"kill), {dups} delivered more than once, {len(up.packs)} packs, "
        f"{up.connects} upstream connections"
    )
