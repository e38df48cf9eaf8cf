"""Modbus polling through the whole path, measured on this machine.

Usage::

    python -m hil.bench_modbus [--quick] [--json] [--plain] [--dir DIR] [--keep]

Every run is the real agent path: :class:`~passerelle.modbus.source.ModbusSource` (pymodbus
client, :class:`~passerelle.modbus.bus.ModbusBus`, register decoding) emitting into the
agent's emit (:class:`~passerelle.policy.sobriety.Sobriety` then
:class:`~passerelle.store.DurableStore` at the agent's defaults), and an
:class:`~passerelle.uplink.Uplink` draining the store into a real mosquitto on a plaintext
loopback port (no TLS: the bench measures the gateway's software, not the cipher). The
slaves are :class:`hil.modbus_sim.EnergyMeterSim` units (SDM630 map, every entry), served
from a **child process** so that their CPU is not counted as the agent's: CPU figures are
``time.process_time()`` of the bench process (all its threads), the simulator's and
mosquitto's CPU are read from /proc and shown apart.

Each device is polled as fast as the bus allows (``interval`` 1 us: the next poll is due at
once). A run lasts a fixed time; then every device finishes the poll it is in and stops, so
the counts add up exactly (points = polls x entries per poll). Points are register values
decoded into records.

1. **Modbus TCP**: K meters behind one TCP server; CPU per point and points per
   CPU-second over the whole path (polling, sobriety, store, drain to the broker, until the
   store is empty), with a pass-through policy (no ``[policy]``: what the agent runs by
   default) and with :func:`~passerelle.policy.config.default_policy`. Windows still open
   when polling stops are closed by one ``Sobriety.tick`` a day ahead, so that everything
   the engine kept is stored and delivered.
2. **Modbus RTU** on a pseudo-terminal, the simulator keeping wire timing (t3.5 before a
   frame is taken, t3.5 turnaround, the reply's bytes at 11 bits each): the wire is the
   limit there, so points/s and polls/s are compared with the wire limit computed from the
   read plan (request and reply bytes x 11 bits / baud + two t3.5 gaps per read). A PTY
   carries the request at once, so the simulated line is faster than that limit by the
   requests' own time (24 bytes per poll): a utilisation a little above 100 % is possible.
   Below the limit the CPU is not what holds the line back: each poll's emit awaits its
   records' durable commit (the store's group-commit linger), and the row says how long.
3. **CPU per point, by stage**: Modbus client + decode + source from a run whose emit only
   counts; sobriety from ``time.thread_time()`` around ``Sobriety.process`` in the runs of
   row 1; the store's worker thread (commits, lease reads, deletes) from its
   /proc/self/task CPU; the rest of the event loop (uplink encoding and MQTT, the store's
   event-loop side) by difference.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.bench import (
    GATEWAY_ID,
    REPO,
    Meter,
    Row,
    _fmt,
    _version,
    agent_store,
    agent_store_kwargs,
    bench_workdir,
    machine_info,
    print_json_report,
    print_table,
    proc_cpu_seconds,
    progress,
    run_in,
    uplink_settings,
    wait_until,
)
from hil.modbus_sim import t35
from passerelle.modbus.maps import SDM630, ReadBlock, plan_reads
from passerelle.model import Priority, Record

FIRST_UNIT = 1
BITS_PER_CHAR = 11  # start, 8 data, parity (or a second stop), stop: Modbus serial line 2.5.1
REQUEST_BYTES = 8  # unit, function, address (2), count (2), CRC (2)
BAUDS = (19200, 115200)
TCP_POLICIES = ("pass", "default")
TCP_RUNS = ("tcp_pass", "tcp_default", "tcp_many")


@dataclass(frozen=True)
class Sizes:
    units: int  # energy meters on the bus (unit ids 1..units)
    units_many: int  # meters behind one TCP gateway in the loaded run
    tcp_seconds: float  # polling time of each TCP run
    rtu_seconds: float  # polling time of each RTU run


FULL = Sizes(units=4, units_many=64, tcp_seconds=8.0, rtu_seconds=10.0)
QUICK = Sizes(units=4, units_many=32, tcp_seconds=1.5, rtu_seconds=1.5)


# ------------------------------------------------------------------------------ the simulator


async def serve_simulator(kind: str, units: int, baud: int) -> None:
    """The child process: serve ``units`` meters until stdin closes, then print counts."""
    from hil.modbus_sim import EnergyMeterSim, RtuLine, TcpServer

    meters = [
        EnergyMeterSim(FIRST_UNIT + i, "sdm630", luminaires=24, rated_power=60.0, seed=i)
        for i in range(units)
    ]

    def announce(info: dict[str, Any]) -> None:
        print(json.dumps(info), flush=True)

    if kind == "tcp":
        async with TcpServer(meters) as server:
            announce({"port": server.port, "pid": os.getpid()})
            await asyncio.to_thread(sys.stdin.buffer.read)  # the bench closes it to stop us
        extra: dict[str, int] = {"requests_seen": server.requests}
    else:
        async with RtuLine(meters, baud=baud, wire_timing=True) as line:
            announce({"path": line.path, "pid": os.getpid()})
            await asyncio.to_thread(sys.stdin.buffer.read)
        extra = {"frames": line.frames, "bad_frames": line.bad_frames}
    announce({"requests": sum(m.requests for m in meters), **extra})


class Simulator:
    """The slaves in a child process: ``python -m hil.bench_modbus --simulator KIND``."""

    def __init__(self, kind: str, units: int, baud: int = 0) -> None:
        self.kind, self.units, self.baud = kind, units, baud
        self._proc: subprocess.Popen[str] | None = None
        self.info: dict[str, Any] = {}

    def start(self) -> dict[str, Any]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        cmd = [
            sys.executable,
            "-m",
            "hil.bench_modbus",
            "--simulator",
            self.kind,
            "--units",
            str(self.units),
            "--baud",
            str(self.baud),
        ]
        self._proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            code = self._proc.wait(10)
            raise RuntimeError(f"simulator ({' '.join(cmd[1:])}) exited with {code}")
        self.info = json.loads(line)
        return self.info

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def cpu(self) -> float:
        cpu = proc_cpu_seconds(self.pid)
        if cpu is None:
            raise RuntimeError("the simulator process is gone")
        return cpu

    def stop(self) -> dict[str, Any]:
        """Close its stdin; its final counts."""
        proc = self._proc
        if proc is None:
            return {}
        self._proc = None
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            out = proc.stdout.read()
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise RuntimeError("the simulator did not stop when its stdin closed") from None
        lines = out.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"simulator ended with {proc.returncode}: {out[-500:]!r}")
        return dict(json.loads(lines[-1]))


# ------------------------------------------------------------------------------ helpers


def thread_cpu_seconds(tid: int) -> float:
    """utime + stime of one thread of this process."""
    with open(f"/proc/self/task/{tid}/stat") as fh:
        text = fh.read()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reply_bytes(block: ReadBlock) -> int:
    """RTU reply: unit, function, byte count, the data, CRC (2)."""
    if block.function in ("coil", "discrete"):
        return 5 + (block.count + 7) // 8
    return 5 + 2 * block.count


def wire_limit(blocks: Sequence[ReadBlock], entries: int, baud: int) -> dict[str, Any]:
    """The best an RTU line can do for this read plan: only bytes and silences."""
    req = REQUEST_BYTES * len(blocks)
    rep = sum(reply_bytes(b) for b in blocks)
    gaps = 2 * len(blocks)  # after each request and after each reply
    seconds = (req + rep) * BITS_PER_CHAR / baud + gaps * t35(baud)
    return {
        "baud": baud,
        "reads_per_poll": len(blocks),
        "request_bytes_per_poll": req,
        "reply_bytes_per_poll": rep,
        "t35_ms": t35(baud) * 1e3,
        "gaps_per_poll": gaps,
        "poll_ms": seconds * 1e3,
        "polls_per_s": 1.0 / seconds,
        "points_per_s": entries / seconds,
    }


# ------------------------------------------------------------------------------ one run


async def bench_run(
    workdir: Path,
    label: str,
    *,
    kind: str,
    units: int,
    seconds: float,
    mode: str,
    broker: Any | None,
    baud: int = 0,
) -> dict[str, Any]:
    """Poll ``units`` meters for ``seconds``. ``mode``: ``source`` (emit only counts),
    ``pass`` (no policy) or ``default`` (``default_policy()``): then the whole path."""
    from passerelle.modbus.bus import ModbusBus
    from passerelle.modbus.source import DeviceSpec, ModbusSource
    from passerelle.policy.config import PolicyConfig, default_policy
    from passerelle.policy.sobriety import Sobriety
    from passerelle.uplink import Uplink

    entries = SDM630.entries
    blocks = plan_reads(entries)  # the plan the source makes (default max_gap)
    lowest = min(e.priority for e in entries)  # the source emits this group last in a poll
    sim = Simulator(kind, units, baud)
    info = await asyncio.to_thread(sim.start)
    store = uplink = up_task = None
    sobriety: Sobriety | None = None
    try:
        if kind == "tcp":
            bus = ModbusBus.tcp("127.0.0.1", int(info["port"]))
        else:
            bus = ModbusBus.serial(str(info["path"]), baud=baud)
        devices = [DeviceSpec(f"meter-{i + 1}", FIRST_UNIT + i, entries) for i in range(units)]
        source = ModbusSource("modbus", bus, devices, interval=1e-6)
        store_tid = None
        if mode != "source":
            assert broker is not None
            store = agent_store(workdir / f"{label}.db")
            await store.open()
            # The store's single worker thread: its CPU is read apart (bench only).
            store_tid = await asyncio.wrap_future(store._pool.submit(threading.get_native_id))
            policy = default_policy() if mode == "default" else PolicyConfig()
            sobriety = Sobriety(policy, gateway_id=GATEWAY_ID)
            uplink = Uplink(
                uplink_settings(broker.plain_port, f"bench-modbus-{label}"),
                store,
                budget=sobriety.budget,  # as the agent wires it
            )
            up_task = asyncio.create_task(uplink.run(), name="uplink")
            if not await wait_until(lambda: uplink.stats.link == "up", 15.0):
                raise RuntimeError(f"uplink did not connect: {uplink.stats.last_error}")

        points = 0
        puts = 0
        store_wait = 0.0
        sobriety_cpu = 0.0
        stopping = False
        parked = 0
        all_parked = asyncio.Event()
        forever = asyncio.Event()

        async def emit(records: Sequence[Record], priority: Priority) -> None:
            # The agent's emit (sobriety, then the store), plus the stop: once the time is
            # up, each device parks here after the last group of the poll it is in.
            nonlocal points, puts, store_wait, sobriety_cpu, parked
            points += len(records)
            if sobriety is not None and store is not None:
                t = time.thread_time()
                kept = sobriety.process(records, priority)
                sobriety_cpu += time.thread_time() - t
                if kept:
                    t = time.perf_counter()
                    await store.put_many(kept, priority)
                    store_wait += time.perf_counter() - t
                    puts += 1
            if stopping and priority == lowest:
                parked += 1
                if parked == units:
                    all_parked.set()
                await forever.wait()

        store_seq0 = store.stats().next_seq if store is not None else 0
        sim_cpu0 = sim.cpu()
        mosq_cpu0 = proc_cpu_seconds(broker.pid) if broker is not None else None
        store_cpu0 = thread_cpu_seconds(store_tid) if store_tid is not None else 0.0
        loop_cpu0 = time.thread_time()
        meter = Meter().start()
        t0 = time.perf_counter()
        task = asyncio.create_task(source.run(emit), name=f"modbus-{label}")
        done, _ = await asyncio.wait({task}, timeout=seconds)
        if done:  # the source ended on its own: that is a failure, say why
            task.result()
            raise RuntimeError(f"{label}: the Modbus source stopped early")
        stopping = True
        if not await wait_until(all_parked.is_set, 30.0, 0.001):
            raise RuntimeError(f"{label}: devices did not finish their poll: {source.stats()}")
        poll_wall = time.perf_counter() - t0
        sim_cpu = sim.cpu() - sim_cpu0
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        stats = source.stats()
        drained = None
        closed_windows = 0
        if store is not None and sobriety is not None:
            # Windows still open are closed a day ahead, as ticks would close them later.
            for priority, recs in sobriety.tick(time.time() + 86400.0).items():
                closed_windows += len(recs)
                if recs:
                    await store.put_many(recs, priority)
            await store.seal()  # as on shutdown: the last batch need not wait batch_age
            drained = await wait_until(lambda: store.stats().depth == 0, 60.0, 0.002)
        meter.stop()
        loop_cpu = time.thread_time() - loop_cpu0
        store_cpu = thread_cpu_seconds(store_tid) - store_cpu0 if store_tid is not None else 0.0
        mosq_cpu1 = proc_cpu_seconds(broker.pid) if broker is not None else None
    finally:
        sim_counts = await asyncio.to_thread(sim.stop)
        if uplink is not None and up_task is not None:
            await uplink.stop()
            await asyncio.wait_for(up_task, 10.0)
        if store is not None:
            await store.close()

    devs = stats["devices"].values()
    polls = sum(d["polls"] for d in devs)
    failed = sum(d["failed_polls"] for d in devs)
    bad = sum(d["bad_values"] + d["invalid_values"] for d in devs)
    requests = sum(d["counters"].get("requests", 0) for d in devs)
    if failed or bad:
        raise RuntimeError(f"{label}: {failed} failed polls, {bad} bad values: {stats}")
    out: dict[str, Any] = {
        "transport": kind,
        "baud": baud or None,
        "mode": mode,
        "units": units,
        "entries_per_poll": len(entries),
        "reads_per_poll": len(blocks),
        "polls": polls,
        "points": points,
        "bus_requests": requests,
        "simulator_requests": sim_counts["requests"],
        "poll_wall_s": poll_wall,
        "wall_s": meter.wall,
        "cpu_s": meter.cpu,
        "loop_thread_cpu_s": loop_cpu,
        "points_per_s": points / poll_wall,
        "polls_per_s": polls / poll_wall,
        "points_per_cpu_s": points / meter.cpu,
        "cpu_us_per_point": meter.cpu / points * 1e6,
        "cpu_load": meter.cpu / meter.wall,  # cores busy on average
        "simulator_cpu_s": sim_cpu,
    }
    if kind == "rtu":
        out["bad_frames"] = sim_counts.get("bad_frames", 0)
        limit = wire_limit(blocks, len(entries), baud)
        out["wire_limit"] = limit
        out["wire_utilisation"] = out["polls_per_s"] / limit["polls_per_s"]
    if store is not None and sobriety is not None and uplink is not None:
        st = store.stats()
        stored = st.next_seq - store_seq0
        out.update(
            {
                "policy": "default_policy()" if mode == "default" else "none (pass-through)",
                "sobriety_in": sobriety.records_in,
                "sobriety_out": sobriety.records_out,
                "closed_windows_at_end": closed_windows,
                "records_stored": stored,
                "records_sent": uplink.stats.records_sent,
                "records_delivered": stored if drained else None,
                "store_empty": bool(drained),
                "store_commits": st.commits,
                "packs": uplink.stats.packs_sent,
                "budget_held": uplink.stats.budget_held,
                "puts": puts,
                "store_wait_ms_per_poll": store_wait / polls * 1e3,
                "store_max_delay_s": store.max_delay,
                "sobriety_cpu_s": sobriety_cpu,
                "store_thread_cpu_s": store_cpu,
                # /proc counts a thread's CPU in clock ticks (10 ms): this may come out a tick
                # below zero; it is left so, so that the split adds up.
                "other_threads_cpu_s": meter.cpu - loop_cpu - store_cpu,
                "mosquitto_cpu_s": (
                    None if mosq_cpu0 is None or mosq_cpu1 is None else mosq_cpu1 - mosq_cpu0
                ),
            }
        )
        if not drained:
            raise RuntimeError(f"{label}: the store did not drain: {st}")
    return out


def split(source_only: dict[str, Any], run: dict[str, Any]) -> dict[str, float]:
    """CPU us per point of the whole-path ``run``, by stage (see the module doc, row 3)."""
    n = run["points"]
    modbus = source_only["cpu_us_per_point"]
    sob = run["sobriety_cpu_s"] / n * 1e6
    store = run["store_thread_cpu_s"] / n * 1e6
    rest = run["loop_thread_cpu_s"] / n * 1e6 - modbus - sob
    other = run["other_threads_cpu_s"] / n * 1e6
    return {
        "modbus_source_us": modbus,
        "sobriety_us": sob,
        "store_thread_us": store,
        "loop_rest_us": rest,
        "other_threads_us": other,
        "total_us": run["cpu_us_per_point"],
    }


# ------------------------------------------------------------------------------ table


def _path_cells(r: dict[str, Any]) -> str:
    return (
        f"{_fmt(r['polls'])} polls x {r['entries_per_poll']} points = {_fmt(r['points'])} points"
        f" ({r['reads_per_poll']} reads/poll, {_fmt(r['bus_requests'])} requests, simulator"
        f" saw {_fmt(r['simulator_requests'])}); stored {_fmt(r['records_stored'])},"
        f" delivered {_fmt(r['records_sent'])} in {_fmt(r['packs'])} packs, store empty;"
        f" each poll waited {r['store_wait_ms_per_poll']:.0f} ms for its"
        f" {r['puts'] / r['polls']:.0f} durable puts (emit awaits the commit; store max_delay"
        f" {r['store_max_delay_s'] * 1e3:g} ms);"
        f" simulator {r['simulator_cpu_s']:.2f} s CPU (child, not counted)"
    )


def build_rows(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key in TCP_RUNS:
        r = res.get(key)
        if r is None:
            continue
        mosq = r["mosquitto_cpu_s"]
        rows.append(
            Row(
                "1",
                f"Modbus TCP, whole path: {r['units']} SDM630 meters (all {r['entries_per_poll']}"
                f" entries) polled back to back, policy {r['policy']}, store at agent defaults,"
                " uplink to mosquitto (plaintext loopback)",
                f"{_fmt(r['points_per_cpu_s'])} points per CPU-second"
                f" ({r['cpu_us_per_point']:.1f} us CPU/point, {r['cpu_load']:.2f} cores busy);"
                f" wall {_fmt(r['points_per_s'])} points/s, {_fmt(r['polls_per_s'], 1)} polls/s;"
                f" sobriety kept {_fmt(r['sobriety_out'])} of {_fmt(r['sobriety_in'])}; "
                + _path_cells(r)
                + ("" if mosq is None else f"; mosquitto {mosq:.2f} s CPU (not counted)"),
                "- (no target)",
                "info",
            )
        )
    for baud in BAUDS:
        r = res.get(f"rtu_{baud}")
        if r is None:
            continue
        w = r["wire_limit"]
        # Not CPU-bound below the wire limit (a few % of a core): the line idles while every
        # device waits for its records to be durable.
        bound = (
            "the wire"
            if r["wire_utilisation"] >= 0.8
            else "the wait for durable commits, not the CPU"
        )
        rows.append(
            Row(
                "2",
                f"Modbus RTU on a PTY at {baud} baud (simulated wire timing), whole path:"
                f" {r['units']} SDM630 meters on one line, no policy",
                f"wall {_fmt(r['points_per_s'])} points/s, {r['polls_per_s']:.2f} polls/s ="
                f" {r['wire_utilisation']:.0%} of the wire limit {_fmt(w['points_per_s'])} points/s"
                f" ({w['poll_ms']:.1f} ms/poll: {w['request_bytes_per_poll']} + "
                f"{w['reply_bytes_per_poll']} bytes x {BITS_PER_CHAR} bits + {w['gaps_per_poll']}"
                f" x t3.5 {w['t35_ms']:.2f} ms): bound by {bound}; CPU"
                f" {r['cpu_us_per_point']:.0f} us/point ({r['cpu_load']:.1%} of a core); "
                + _path_cells(r),
                "- (no target)",
                "info",
            )
        )
    src = res.get("tcp_source")
    for mode in TCP_POLICIES:
        s = res.get(f"split_{mode}")
        if s is None or src is None:
            continue
        r = res[f"tcp_{mode}"]
        rows.append(
            Row(
                "3",
                f"CPU per point by stage, Modbus TCP, policy {r['policy']}",
                f"{s['total_us']:.1f} us = Modbus client + decode + source"
                f" {s['modbus_source_us']:.1f} (run with an emit that only counts:"
                f" {_fmt(src['points_per_cpu_s'])} points/CPU-s, {_fmt(src['points_per_s'])}"
                f" points/s wall) + sobriety {s['sobriety_us']:.2f} + store worker thread (commit,"
                f" lease read, delete) {s['store_thread_us']:.1f} + rest of the event loop (uplink"
                f" encode + MQTT, store's loop side; by difference) {s['loop_rest_us']:.1f}"
                f" + other threads {s['other_threads_us']:.1f}",
                "- (no target)",
                "info",
            )
        )
    for key, text in res.get("skipped", {}).items():
        rows.append(Row(key, text, "-", "-", "skip"))
    return rows


def print_header(cmd: str, info: dict[str, Any], sizes: Sizes) -> None:
    fs = info["filesystem"]
    print(f"Command:  {cmd}")
    print(
        f"Machine:  {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable),"
        f" {info['mem_gib']} GiB, Linux {info['kernel']}"
    )
    print(
        f"Software: {info['python']}, pymodbus {info['pymodbus']}, SQLite {info['sqlite']},"
        f" cbor2 {info['cbor2']}, aiomqtt {info['aiomqtt']}, paho-mqtt {info['paho_mqtt']},"
        f" mosquitto {info['mosquitto']}"
    )
    print(f"Data dir: {info['data_dir']} on {fs['type']} ({fs['device']} at {fs['mount']})")
    st = agent_store_kwargs()
    print(
        "Settings: store as the agent's defaults: "
        + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:g}" for k, v in st.items())
        + "; uplink MQTT 5 QoS 1, max_rate unlimited, plaintext loopback; ModbusBus"
        " defaults (TCP timeout 1 s, RTU 0.5 s, 1 retry); poll interval 1 us (back to back);"
        " simulator in a child process; CPU = process_time of the bench process"
    )
    print(f"Sizes:    {sizes}")
    print()


# ------------------------------------------------------------------------------ main


async def run_all(workdir: Path, sizes: Sizes, progress: Callable[[str], None]) -> dict[str, Any]:
    from hil.mosquitto import Mosquitto, find_mosquitto

    res: dict[str, Any] = {"skipped": {}}

    async def phase(name: str, key: str, **kw: Any) -> None:
        progress(f"{name} ...")
        t = time.perf_counter()
        res[key] = await bench_run(workdir, key, **kw)
        r = res[key]
        progress(
            f"{name}: {time.perf_counter() - t:.1f} s, {_fmt(r['points'])} points,"
            f" {_fmt(r['points_per_s'])} points/s wall"
        )

    u = sizes.units
    await phase(
        "3 Modbus TCP, source only",
        "tcp_source",
        kind="tcp",
        units=u,
        seconds=sizes.tcp_seconds,
        mode="source",
        broker=None,
    )
    exe = find_mosquitto()
    if exe is None:
        for key in ("1", "2"):
            res["skipped"][key] = "needs mosquitto (not installed)"
        return res
    broker = Mosquitto(None, plain=True, workdir=workdir / "mosquitto", executable=exe)
    broker.start()
    try:
        for mode in TCP_POLICIES:
            await phase(
                f"1 Modbus TCP, policy {mode}",
                f"tcp_{mode}",
                kind="tcp",
                units=u,
                seconds=sizes.tcp_seconds,
                mode=mode,
                broker=broker,
            )
            res[f"split_{mode}"] = split(res["tcp_source"], res[f"tcp_{mode}"])
        await phase(
            f"1 Modbus TCP, {sizes.units_many} meters, policy pass",
            "tcp_many",
            kind="tcp",
            units=sizes.units_many,
            seconds=sizes.tcp_seconds,
            mode="pass",
            broker=broker,
        )
        for baud in BAUDS:
            await phase(
                f"2 Modbus RTU {baud} baud",
                f"rtu_{baud}",
                kind="rtu",
                units=u,
                seconds=sizes.rtu_seconds,
                mode="pass",
                broker=broker,
                baud=baud,
            )
    finally:
        broker.cleanup()
    if not res["skipped"]:
        del res["skipped"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m hil.bench_modbus", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="short runs (smoke test, < 20 s)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--plain", action="store_true", help="plain-text table even if rich is there")
    ap.add_argument("--dir", help="where the stores go (default: a new dir under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    ap.add_argument("--simulator", choices=("tcp", "rtu"), help=argparse.SUPPRESS)
    ap.add_argument("--units", type=int, default=QUICK.units, help=argparse.SUPPRESS)
    ap.add_argument("--baud", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.simulator:
        asyncio.run(serve_simulator(args.simulator, args.units, args.baud))
        return 0

    from hil.mosquitto import find_mosquitto

    sizes = QUICK if args.quick else FULL
    workdir = bench_workdir(args.dir, "passerelle-bench-modbus-")
    cmd = "python -m hil.bench_modbus" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    info = machine_info(workdir, find_mosquitto())
    info["pymodbus"] = _version("pymodbus")
    print_header(cmd, info, sizes)
    sys.stdout.flush()

    res, elapsed = run_in(workdir, args.keep, lambda: run_all(workdir, sizes, progress))
    rows = build_rows(res)
    # rich only on a terminal; a pipe or a file gets the plain table.
    print_table(rows, plain=args.plain or not sys.stdout.isatty())
    print(f"{len(rows)} rows, all informative (no targets set); run took {elapsed:.0f} s")
    if args.json:
        print_json_report(cmd, info, sizes, elapsed, res, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
