"""Passerelle's performance figures, measured on this machine: ``python -m hil.bench``.

Usage::

    python -m hil.bench [--quick] [--json] [--dir DIR] [--profile PHASE]

Every figure is measured by running the real code (the durable store, the uplink, the agent,
a real mosquitto on the loopback), never computed from constants:

1. **ingest**: records/s into :class:`~passerelle.store.DurableStore` at its defaults
   (WAL, ``synchronous=FULL``, group commit), from asyncio producers putting 100 records at
   a time like a source's poll; with the process CPU time (all threads), commits/s and
   records per CPU-second (the per-core figure).
2. **end to end CPU**: a counter source through the store and the uplink to mosquitto
   (plaintext loopback, no rate cap): process CPU seconds / records delivered, i.e. the
   sequence numbers stored and acknowledged (the store is empty at the end). Records the
   uplink sent more than once are counted once, and the resend factor is reported.
   Mosquitto's own CPU is read from /proc.
3. **bytes per record upstream**: ``bytes_sent / records_sent`` of the packs the uplink
   really sent, for the counter stream and for a simulated 20-channel energy meter (one
   ``put_many`` of 20 values per poll), next to the same batches as JSON SenML.
4. **memory with 1,000,000 records buffered**: a child process fills a store through the
   agent (broker down); a fresh child runs the agent on that data dir for a few seconds
   (broker still down) and reports VmRSS/VmHWM.
5. **disk writes per record**: ``write_bytes`` of /proc/self/io around the ingest runs,
   after ``close()`` (which checkpoints), for a full put -> drain -> ack cycle, and for the
   meter's trickle of small commits, against the encoded segment bytes.
6. **backlog drain**: the uplink empties the 1,000,000-record store of (4) into mosquitto.

``--quick`` divides the sizes by about 20 (the smoke test). ``--json`` prints the results
as JSON after the table. ``--profile PHASE`` prints cProfile's top functions for one phase
(main thread and the store's worker thread) to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import math
import os
import platform
import pstats
import random
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from passerelle import senml
from passerelle.model import Priority, Record
from passerelle.store import DurableStore
from passerelle.uplink import Uplink, UplinkSettings

REPO = Path(__file__).resolve().parent.parent
GATEWAY_ID = "bench-0001"
PHASES = ("ingest", "pipeline", "meter", "fill", "drain", "cycle")

# Targets (from the project's requirements).
TARGET_INGEST_PER_CORE = 50_000.0  # records per CPU-second
TARGET_BYTES_PER_RECORD = 8.0
TARGET_RSS_MB = 40.0
TARGET_WRITE_RATIO = 3.0
TARGET_DRAIN_RATE = 20_000.0


@dataclass(frozen=True)
class Sizes:
    ingest_bulk: int  # records, 64 producers
    ingest_linger: int  # records, 8 producers
    pipeline: int  # records end to end
    meter_polls: int  # polls of 20 values
    backlog: int  # records buffered for RSS and drain
    cycle: int  # records through put -> drain -> ack
    agent_seconds: float  # how long the RSS child runs the agent


FULL = Sizes(1_000_000, 200_000, 1_000_000, 300, 1_000_000, 500_000, 5.0)
QUICK = Sizes(50_000, 10_000, 50_000, 20, 50_000, 25_000, 2.0)


# ------------------------------------------------------------------------------ /proc readers


def proc_status(pid: int | str = "self") -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM...)."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, rest = line.partition(":")
            parts = rest.split()
            if len(parts) == 2 and parts[1] == "kB":
                out[key] = int(parts[0])
    return out


def proc_io() -> dict[str, int]:
    """/proc/self/io: rchar, wchar, read_bytes, write_bytes, cancelled_write_bytes..."""
    out: dict[str, int] = {}
    with open("/proc/self/io") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    return out


def proc_cpu_seconds(pid: int) -> float | None:
    """utime + stime of another process, in seconds (None if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            text = fh.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is the state (field 3 of stat(5)); utime and stime are fields 14 and 15.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def filesystem_of(path: Path) -> dict[str, str]:
    """The mount (device, mount point, type) holding ``path``, from /proc/mounts."""
    real = os.path.realpath(path)
    best = {"device": "?", "mount": "?", "type": "?"}
    best_len = -1
    try:
        with open("/proc/mounts") as fh:
            for line in fh:
                dev, mnt, fstype = line.split()[:3]
                mnt = mnt.replace("\\040", " ")
                inside = real == mnt or real.startswith(mnt.rstrip("/") + "/")
                if inside and len(mnt) > best_len:
                    best, best_len = {"device": dev, "mount": mnt, "type": fstype}, len(mnt)
    except OSError:
        pass
    return best


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def mem_total_gib() -> float:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


def mosquitto_version(exe: str | None) -> str:
    if not exe:
        return "not installed"
    try:
        out = subprocess.run([exe, "-h"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = out.splitlines()[0] if out else "?"
    return first.removeprefix("mosquitto version ").strip()


def machine_info(data_dir: Path, mosquitto_exe: str | None) -> dict[str, Any]:
    fs = filesystem_of(data_dir)
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count() or 0
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "cores_usable": usable,
        "mem_gib": round(mem_total_gib(), 1),
        "kernel": platform.release(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "sqlite": sqlite3.sqlite_version,
        "cbor2": _version("cbor2"),
        "aiomqtt": _version("aiomqtt"),
        "paho_mqtt": _version("paho-mqtt"),
        "mosquitto": mosquitto_version(mosquitto_exe),
        "data_dir": str(data_dir),
        "filesystem": fs,
    }


# ------------------------------------------------------------------------------ measurement


@dataclass
class Meter:
    """Wall time, process CPU (all threads) and /proc/self/io between start and stop."""

    wall: float = 0.0
    cpu: float = 0.0
    user: float = 0.0
    sys: float = 0.0
    io: dict[str, int] = field(default_factory=dict)
    _t0: tuple[float, float, Any, dict[str, int]] | None = None

    def start(self) -> Meter:
        self._t0 = (
            time.perf_counter(),
            time.process_time(),
            resource.getrusage(resource.RUSAGE_SELF),
            proc_io(),
        )
        return self

    def stop(self) -> Meter:
        assert self._t0 is not None
        w0, c0, r0, io0 = self._t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        io1 = proc_io()
        self.wall = time.perf_counter() - w0
        self.cpu = time.process_time() - c0
        self.user = r1.ru_utime - r0.ru_utime
        self.sys = r1.ru_stime - r0.ru_stime
        self.io = {k: io1[k] - io0.get(k, 0) for k in io1}
        return self


class Profiler:
    """cProfile on the event loop's thread and on the store's worker thread."""

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled
        self.label = label
        self.main = cProfile.Profile()
        self.worker = cProfile.Profile()
        self._stores: list[DurableStore] = []

    async def attach(self, store: DurableStore) -> None:
        """Also profile ``store``'s worker thread (its executor has exactly one thread)."""
        if not self.enabled:
            return
        pool = getattr(store, "_pool", None)  # internal: best effort, profiling only
        if pool is not None:
            await asyncio.wrap_future(pool.submit(self.worker.enable))
            self._stores.append(store)

    async def detach(self, store: DurableStore) -> None:
        if store in self._stores:
            pool = store._pool
            with contextlib.suppress(RuntimeError):  # pool already shut down
                await asyncio.wrap_future(pool.submit(self.worker.disable))
            self._stores.remove(store)

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self.enabled:
            self.main.enable()
        try:
            yield
        finally:
            if self.enabled:
                self.main.disable()

    def report(self) -> None:
        if not self.enabled:
            return
        for name, prof in (("event loop thread", self.main), ("store worker thread", self.worker)):
            buf = io.StringIO()
            try:
                stats = pstats.Stats(prof, stream=buf)
            except TypeError:  # nothing was profiled on that thread
                continue
            stats.sort_stats("tottime").print_stats(25)
            print(f"\n===== cProfile {self.label}: {name} (by tottime) =====", file=sys.stderr)
            print(buf.getvalue(), file=sys.stderr)


async def wait_until(
    cond: Callable[[], bool], timeout: float, interval: float = 0.02, what: str = "condition"
) -> bool:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def uplink_settings(port: int, client_id: str) -> UplinkSettings:
    return UplinkSettings(
        gateway_id=GATEWAY_ID,
        host="127.0.0.1",
        port=port,
        tls=False,
        client_id=client_id,
        max_rate=1e9,  # no rate cap: measure what the pipeline can do
        state_interval=3600.0,
        backoff_initial=0.2,
        backoff_max=1.0,
    )


def agent_store_kwargs() -> dict[str, Any]:
    """The DurableStore settings ``passerelle run`` uses with a default config."""
    import inspect

    import msgspec

    from passerelle.config import StoreConfig, UplinkConfig

    st = StoreConfig()
    up = {f.name: f.default for f in msgspec.structs.fields(UplinkConfig)}
    wanted: dict[str, Any] = {
        "max_bytes": st.max_bytes,
        "ttl": st.ttl,
        "max_delay": st.max_delay,
        "batch_records": up.get("batch_records"),
        "batch_age": up.get("batch_age"),
    }
    accepted = inspect.signature(DurableStore).parameters
    return {k: v for k, v in wanted.items() if k in accepted and v is not msgspec.NODEFAULT}


def agent_store(path: Path, **overrides: Any) -> DurableStore:
    """A store configured as the agent configures it (see :func:`agent_store_kwargs`)."""
    return DurableStore(path, **{**agent_store_kwargs(), **overrides})


@contextlib.contextmanager
def capture_packs(every: int) -> Iterator[list[tuple[list[Record], int]]]:
    """Keep every ``every``-th batch the uplink encodes, with its SenML-CBOR size.

    The uplink calls ``senml.encode_pack`` through the module, so wrapping the module's
    attribute sees exactly the batches it sends (their sizes add up to ``bytes_sent``).
    """
    original = senml.encode_pack
    kept: list[tuple[list[Record], int]] = []
    count = 0

    def wrapper(records: Sequence[Record], *args: Any, **kwargs: Any) -> bytes:
        nonlocal count
        payload = original(records, *args, **kwargs)
        count += 1
        if count % every == 0:
            kept.append((list(records), len(payload)))
        return payload

    senml.encode_pack = wrapper  # type: ignore[assignment]
    try:
        yield kept
    finally:
        senml.encode_pack = original  # type: ignore[assignment]


def senml_json(records: Sequence[Record], base_name: Callable[[str], str]) -> bytes:
    """The batch as a JSON gateway sends it: RFC 8428 JSON, bn/bt once, n/u/v/t per record.

    Records keep their order; ``t`` is relative to ``bt`` in milliseconds (left out when 0);
    no idempotency key (a JSON gateway usually has none; the CBOR packs carry one).
    """
    bt = min(r.time for r in records)
    out: list[dict[str, Any]] = []
    cur_bn = None
    for r in records:
        entry: dict[str, Any] = {}
        bn = base_name(r.device)
        if bn != cur_bn:
            entry["bn"] = cur_bn = bn
        if not out:
            entry["bt"] = round(bt, 3)
        entry["n"] = r.name
        if r.unit:
            entry["u"] = r.unit
        entry["v"] = r.value
        rel = round(r.time - bt, 3)
        if rel:
            entry["t"] = rel
        out.append(entry)
    return json.dumps(out, separators=(",", ":")).encode()


def json_reference(kept: list[tuple[list[Record], int]]) -> dict[str, float]:
    base = lambda device: senml.device_base_name(GATEWAY_ID, device)  # noqa: E731
    n = sum(len(batch) for batch, _ in kept)
    cbor = sum(size for _, size in kept)
    js = sum(len(senml_json(batch, base)) for batch, _ in kept)
    return {
        "sample_packs": len(kept),
        "sample_records": n,
        "cbor_bytes_per_record": cbor / n if n else 0.0,
        "json_bytes_per_record": js / n if n else 0.0,
    }


# ------------------------------------------------------------------------------ producers


async def produce(store: DurableStore, total: int, producers: int, batch: int = 100) -> int:
    """``producers`` tasks, each like a source: build ``batch`` records, await the put."""
    per = max(batch, (total // producers) // batch * batch)
    t0 = time.time()

    async def one(k: int) -> None:
        device = f"src-{k}"
        for start in range(0, per, batch):
            records = [
                Record(device, "counter", start + i, t0 + (start + i) * 0.001, None)
                for i in range(batch)
            ]
            await store.put_many(records)

    await asyncio.gather(*(one(k) for k in range(producers)))
    return per * producers


async def drain_store(store: DurableStore) -> int:
    """Lease and acknowledge everything (the uplink's side, without a broker).

    A batch still open for more commits (``batch_age``) is sealed once nothing else is left.
    """
    n = 0
    while store.stats().depth:
        batches = await store.lease(8)
        if not batches:
            await store.seal()  # what batch_age still holds open
            continue
        for batch in batches:
            n += len(batch.records)
            store.ack(batch.seq)
        await store.sync()
    return n


# ------------------------------------------------------------------------------ 1 and 5: ingest


async def bench_ingest(workdir: Path, total: int, producers: int, prof: Profiler) -> dict[str, Any]:
    path = workdir / f"ingest-{producers}.db"
    meter = Meter().start()
    store = agent_store(path)
    await store.open()
    await prof.attach(store)
    commits0 = store.stats().commits
    put = Meter().start()
    with prof.running():
        n = await produce(store, total, producers)
    put.stop()
    st = store.stats()
    await prof.detach(store)
    await store.close()
    meter.stop()
    wal_write = meter.io["write_bytes"]
    return {
        "producers": producers,
        "batch": 100,
        "records": n,
        "wall_s": put.wall,
        "cpu_s": put.cpu,
        "user_s": put.user,
        "sys_s": put.sys,
        "records_per_s": n / put.wall,
        "records_per_cpu_s": n / put.cpu,
        "commits": st.commits - commits0,
        "commits_per_s": (st.commits - commits0) / put.wall,
        "records_per_commit": n / max(1, st.commits - commits0),
        "segment_bytes": st.bytes,
        "encoded_bytes_per_record": st.bytes / n,
        # write_bytes is charged when a page is dirtied: by the end of the puts, the WAL
        # and the automatic checkpoints; after close(), the final checkpoint too.
        "write_bytes_puts": put.io["write_bytes"],
        "write_bytes_total": wal_write,
        "cancelled_write_bytes": meter.io.get("cancelled_write_bytes", 0),
        "wchar_total": meter.io["wchar"],
        "rchar_total": meter.io["rchar"],
        "write_ratio_puts": put.io["write_bytes"] / st.bytes,
        "write_ratio_closed": wal_write / st.bytes,
        "db_file_bytes": path.stat().st_size,
    }


async def bench_cycle(workdir: Path, total: int, prof: Profiler) -> dict[str, Any]:
    """Put -> drain -> ack rounds (the link up, the store emptied every round), then close."""
    path = workdir / "cycle.db"
    rounds = 10
    per_round = max(6400, total // rounds)
    meter = Meter().start()
    store = agent_store(path)
    await store.open()
    await prof.attach(store)
    encoded = records = drained = 0
    with prof.running():
        while records < total:
            records += await produce(store, per_round, 64)
            encoded += store.stats().bytes
            drained += await drain_store(store)
    await prof.detach(store)
    await store.close()
    meter.stop()
    return {
        "records": records,
        "drained": drained,
        "rounds": math.ceil(total / per_round),
        "encoded_bytes": encoded,
        "encoded_bytes_per_record": encoded / records,
        "write_bytes": meter.io["write_bytes"],
        "write_bytes_per_record": meter.io["write_bytes"] / records,
        "cancelled_write_bytes": meter.io.get("cancelled_write_bytes", 0),
        "wchar": meter.io["wchar"],
        "write_ratio": meter.io["write_bytes"] / encoded,
        "wall_s": meter.wall,
        "db_file_bytes": path.stat().st_size,
    }


# ------------------------------------------------------------------------------ 2 and 3a: pipeline


async def bench_pipeline(workdir: Path, broker: Any, total: int, prof: Profiler) -> dict[str, Any]:
    from hil.sources import CounterSource

    store = agent_store(workdir / "pipeline.db")
    await store.open()
    uplink = Uplink(uplink_settings(broker.plain_port, "bench-pipeline"), store)
    up_task = asyncio.create_task(uplink.run(), name="uplink")
    if not await wait_until(lambda: uplink.stats.link == "up", 15.0):
        raise RuntimeError(f"uplink did not connect: {uplink.stats.last_error}")
    await prof.attach(store)
    # 100 k values/s wanted: the pipeline is the bottleneck, so the source emits whatever
    # it owes (up to 5000 values) per wake-up, stamped 10 us apart.
    source = CounterSource("counter", interval=1e-5)
    sent0, bytes0, packs0 = (
        uplink.stats.records_sent,
        uplink.stats.bytes_sent,
        uplink.stats.packs_sent,
    )
    seq0 = store.stats().next_seq
    stored = 0
    enough = asyncio.Event()

    async def emit(records: Sequence[Record], priority: Priority) -> None:
        # The agent's emit, bounded: exactly `total` records enter the store.
        nonlocal stored
        records = records[: total - stored]
        if records:
            stored += len(records)
            await store.put_many(records, priority)
        if stored >= total:
            enough.set()
            await asyncio.Event().wait()  # a source blocked on a full store, until cancelled

    mosq0 = proc_cpu_seconds(broker.pid)
    every = max(1, total // 250 // 200)  # keep about 200 packs for the JSON comparison
    with capture_packs(every) as kept, prof.running():
        meter = Meter().start()
        src_task = asyncio.create_task(source.run(emit), name="counter")
        await enough.wait()
        src_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await src_task
        await store.seal()  # as the agent does on SIGTERM: the last batch need not wait
        drained = await wait_until(lambda: store.stats().depth == 0, 300.0, 0.01)
        meter.stop()
    mosq1 = proc_cpu_seconds(broker.pid)
    await prof.detach(store)
    sent = uplink.stats.records_sent - sent0
    nbytes = uplink.stats.bytes_sent - bytes0
    packs = uplink.stats.packs_sent - packs0
    # Every stored record was acknowledged (the store is empty): the unique records
    # delivered are the sequence numbers handed out. `sent` counts resends too.
    records = store.stats().next_seq - seq0
    await uplink.stop()
    await asyncio.wait_for(up_task, 10.0)
    await store.close()
    mosq_cpu = (mosq1 - mosq0) if mosq0 is not None and mosq1 is not None else None
    return {
        "records_stored": records,
        "records_delivered": records if drained else None,
        "records_sent": sent,
        "resend_factor": sent / records,
        "store_empty": drained,
        "packs": packs,
        "bytes_sent": nbytes,
        "wall_s": meter.wall,
        "cpu_s": meter.cpu,
        "user_s": meter.user,
        "sys_s": meter.sys,
        "records_per_s": records / meter.wall,
        "cpu_us_per_record": meter.cpu / records * 1e6,
        "cpu_us_per_record_sent": meter.cpu / sent * 1e6,
        "mosquitto_cpu_s": mosq_cpu,
        "mosquitto_cpu_us_per_record": None if mosq_cpu is None else mosq_cpu / records * 1e6,
        "bytes_per_record": nbytes / sent,
        "json": json_reference(kept),
    }


# ------------------------------------------------------------------------------ 3b: energy meter

# (name, unit, decimals, typical value, swing): a three-phase street-lighting feeder meter.
METER_CHANNELS: tuple[tuple[str, str, int, float, float], ...] = (
    ("V1", "V", 1, 230.0, 3.0),
    ("V2", "V", 1, 231.0, 3.0),
    ("V3", "V", 1, 229.5, 3.0),
    ("I1", "A", 3, 1.25, 0.2),
    ("I2", "A", 3, 1.31, 0.2),
    ("I3", "A", 3, 1.18, 0.2),
    ("In", "A", 3, 0.12, 0.05),
    ("P1", "W", 1, 284.5, 40.0),
    ("P2", "W", 1, 297.1, 40.0),
    ("P3", "W", 1, 266.8, 40.0),
    ("Q", "var", 1, 61.2, 10.0),
    ("S", "VA", 1, 870.3, 60.0),
    ("PF", "/", 3, 0.978, 0.01),
    ("F", "Hz", 2, 50.0, 0.04),
    ("THD1", "%", 1, 3.2, 0.4),
    ("THD2", "%", 1, 3.5, 0.4),
    ("THD3", "%", 1, 2.9, 0.4),
    ("T", "Cel", 1, 31.5, 2.0),
    ("E", "Wh", 0, 1_234_567.0, 0.0),  # energy register: integer, always increasing
    ("Er", "varh", 0, 201_334.0, 0.0),
)


class EnergyMeterSim:
    """A 20-register meter read in one block per poll: 20 records sharing one timestamp."""

    def __init__(self, device: str = "meter-1", interval: float = 10.0, seed: int = 1) -> None:
        self.device = device
        self.interval = interval
        self.rng = random.Random(seed)
        self.state = [c[3] for c in METER_CHANNELS]

    def poll(self, k: int, t0: float) -> list[Record]:
        rng = self.rng
        # Polls are due on a 10 s grid; the read completes some ms later (Modbus RTU).
        ts = t0 + k * self.interval + rng.uniform(0.02, 0.12)
        out = []
        for idx, (name, unit, decimals, typical, swing) in enumerate(METER_CHANNELS):
            if name == "E":
                self.state[idx] += rng.uniform(2.2, 2.6)  # ~870 W over 10 s
                value: float | int = int(self.state[idx])
            elif name == "Er":
                self.state[idx] += rng.uniform(0.15, 0.2)
                value = int(self.state[idx])
            else:
                x = self.state[idx] + rng.gauss(0.0, swing * 0.05)
                x = min(typical + swing, max(typical - swing, x))
                self.state[idx] = x
                value = round(x, decimals)
            out.append(Record(self.device, name, value, ts, unit))
        return out


async def bench_meter(
    workdir: Path,
    broker: Any | None,
    polls: int,
    prof: Profiler,
    batch_age: float | None = None,
    hold: float = 0.0,
) -> dict[str, Any]:
    """One meter polled every 10 s, one put_many (20 values) per poll, so one commit each.

    The store runs on a simulated clock that follows the polls, so its batching (a batch
    stays open ``batch_age`` seconds of that clock) sees the real 10 s spacing without the
    benchmark waiting for it. Filled with the link down, then drained to mosquitto.
    ``batch_age`` overrides the agent's default. With ``hold`` (``store.hold``, seconds of
    the 10 s poll grid), polls really are 10 ms apart and the store holds ``hold`` / 1000 s
    of loop time: the same polls per commit, 1000 times faster.
    """
    sim = EnergyMeterSim()
    t0 = time.time() - polls * sim.interval - 7200.0
    now = [t0]
    overrides: dict[str, Any] = {"clock": lambda: now[0]}
    if batch_age is not None:
        overrides["batch_age"] = batch_age
    if hold:
        overrides["hold"] = hold / 1000.0
    path = workdir / f"meter-{batch_age}-{hold}.db"
    io0 = proc_io()
    fill = Meter().start()
    store = agent_store(path, **overrides)
    await store.open()
    await prof.attach(store)
    commits0 = store.stats().commits
    with prof.running():
        for k in range(polls):
            records = sim.poll(k, t0)
            now[0] = records[0].time
            await store.put_many(records, Priority.ENERGY)
            if hold:
                await asyncio.sleep(sim.interval / 1000.0)
        if hold:  # the held tail is committed when its hold is up
            await wait_until(lambda: store.stats().depth == polls * len(METER_CHANNELS), 10.0)
    st = store.stats()
    fill.stop()
    now[0] += 3600.0  # the last batch is old enough to go
    records_n = st.depth
    encoded = st.bytes
    result: dict[str, Any] = {
        "polls": polls,
        "poll_interval_s": sim.interval,
        "batch_age_s": store.batch_age if hasattr(store, "batch_age") else None,
        "hold_s": hold,
        "records": records_n,
        "commits": st.commits - commits0,
        "encoded_bytes": encoded,
        "encoded_bytes_per_record": encoded / records_n,
        "write_bytes_puts": fill.io["write_bytes"],
        "write_ratio_puts": fill.io["write_bytes"] / encoded,
    }
    if broker is not None:
        uplink = Uplink(uplink_settings(broker.plain_port, "bench-meter"), store)
        with capture_packs(1) as kept:
            up_task = asyncio.create_task(uplink.run(), name="uplink")
            ok = await wait_until(lambda: store.stats().depth == 0, 120.0)
            await uplink.stop()
            await asyncio.wait_for(up_task, 10.0)
        result.update(
            {
                "drained": ok,
                "packs": uplink.stats.packs_sent,
                "records_sent": uplink.stats.records_sent,
                "resend_factor": uplink.stats.records_sent / records_n,
                "bytes_sent": uplink.stats.bytes_sent,
                "bytes_per_record": uplink.stats.bytes_sent / uplink.stats.records_sent,
                "json": json_reference(kept),
            }
        )
    await prof.detach(store)
    await store.close()
    # The full cycle: every record put, sent, acknowledged, deleted, then checkpointed.
    total_write = proc_io()["write_bytes"] - io0["write_bytes"]
    result.update(
        {
            "write_bytes_cycle": total_write,
            "write_ratio_cycle": total_write / encoded,
            "write_bytes_per_record_cycle": total_write / records_n,
        }
    )
    return result


# ------------------------------------------------------------------------------ 4: the agent


def _agent_config(path: Path, data_dir: Path, port: int, interval: float) -> Path:
    """A TOML config for ``passerelle run``: the broker at ``port`` (down), one counter."""
    path.write_text(
        f"""[gateway]
id = "{GATEWAY_ID}"
data_dir = "{data_dir}"

[uplink]
url = "mqtt://127.0.0.1:{port}"
allow_plaintext = true
backoff_initial = 1.0
backoff_max = 2.0

[log]
level = "error"

[[sources]]
type = "sim.counter"
name = "counter"
interval = {interval!r}
"""
    )
    return path


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    )
    return env


def store_depth(db: Path) -> int:
    """Records in a store that another process has open (WAL: readers do not block it)."""
    if not db.exists():
        return 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5.0)
    try:
        return int(con.execute("SELECT COALESCE(SUM(n), 0) FROM segment").fetchone()[0])
    except sqlite3.OperationalError:  # schema not created yet
        return 0
    finally:
        con.close()


# ``passerelle run`` as the CLI runs it, plus one line at exit: VmHWM once the agent has
# stopped and closed its store (ru_maxrss from wait4 would not do: after vfork + exec the
# child inherits the parent's high-water mark).
_AGENT_MAIN = """\
import sys
report = sys.argv.pop(1)
from passerelle.cli import main
rc = main(sys.argv[1:])
with open('/proc/self/status') as fh, open(report, 'w') as out:
    out.write(''.join(line for line in fh if line.startswith(('VmHWM', 'VmRSS'))))
sys.exit(rc)
"""


def run_agent_process(
    config: Path, until: Callable[[subprocess.Popen[bytes]], bool], log: Path, timeout: float
) -> dict[str, Any]:
    """``passerelle run --config`` in a fresh process until ``until(proc)``, then SIGTERM.

    Returns its VmRSS/VmHWM just before SIGTERM, and its VmHWM at exit (which includes the
    shutdown: last commit and the WAL checkpoint).
    """
    report = log.with_suffix(".status")
    cmd = [sys.executable, "-c", _AGENT_MAIN, str(report), "run", "--config", str(config)]
    started = time.perf_counter()
    with open(log, "wb") as err:
        proc = subprocess.Popen(cmd, cwd=REPO, env=_child_env(), stdout=err, stderr=err)
    try:
        deadline = time.monotonic() + timeout
        while not until(proc):
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"agent exited early with {proc.returncode}:\n{tail}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"agent: condition not met within {timeout}s")
            time.sleep(0.02)
        status = proc_status(proc.pid)
        ran = time.perf_counter() - started
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"agent exited with {proc.returncode} after SIGTERM:\n{tail}")
    at_exit = {
        k: int(v.split()[0])
        for k, _, v in (line.partition(":") for line in report.read_text().splitlines())
    }
    return {
        "seconds": ran,
        "stop_s": time.perf_counter() - started - ran,
        "vm_rss_kb": status.get("VmRSS", 0),
        "vm_hwm_kb": status.get("VmHWM", 0),
        "peak_rss_kb": at_exit["VmHWM"],
    }


def imports_rss() -> int:
    """VmRSS (kB) of a fresh interpreter that imported what ``passerelle run`` imports."""
    code = (
        "import passerelle.cli, passerelle.agent, passerelle.logs, passerelle.config,"
        " hil.sources\n"
        "print([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmRSS')][0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=_child_env(), capture_output=True,
        text=True, check=True, timeout=60,
    )  # fmt: skip
    return int(out.stdout.strip())


def bench_buffered(workdir: Path, records: int, seconds: float) -> dict[str, Any]:
    """Fill a store through the agent (broker down), then run a fresh agent on it."""
    data_dir = workdir / "backlog"
    db = data_dir / "store.db"
    dead_port = free_port()  # nothing listens there: the broker is down
    fast = _agent_config(workdir / "fill.toml", data_dir, dead_port, 1e-6)
    fill = run_agent_process(
        fast, lambda _: store_depth(db) >= records, workdir / "fill.log", 1800.0
    )
    fill["records"] = store_depth(db)
    slow = _agent_config(workdir / "agent.toml", data_dir, dead_port, 1.0)
    t_end = time.monotonic() + seconds
    agent = run_agent_process(
        slow, lambda _: time.monotonic() >= t_end, workdir / "agent.log", seconds + 60
    )
    agent["records_buffered"] = store_depth(db)
    agent["rss_after_imports_kb"] = imports_rss()
    return {"fill": fill, "agent_rss": agent, "db_bytes": db.stat().st_size}


# ------------------------------------------------------------------------------ 6: drain


async def bench_drain(store_path: Path, broker: Any, prof: Profiler) -> dict[str, Any]:
    store = agent_store(store_path)
    await store.open()
    depth0 = store.stats().depth
    await prof.attach(store)
    uplink = Uplink(uplink_settings(broker.plain_port, "bench-drain"), store)
    mosq0 = proc_cpu_seconds(broker.pid)
    with prof.running():
        started = time.perf_counter()
        up_task = asyncio.create_task(uplink.run(), name="uplink")
        if not await wait_until(lambda: uplink.stats.link == "up", 15.0, 0.005):
            raise RuntimeError(f"uplink did not connect: {uplink.stats.last_error}")
        meter = Meter().start()
        connect_s = time.perf_counter() - started
        empty = await wait_until(lambda: store.stats().depth == 0, 900.0, 0.01)
        meter.stop()
    mosq1 = proc_cpu_seconds(broker.pid)
    await prof.detach(store)
    sent = uplink.stats.records_sent
    await uplink.stop()
    await asyncio.wait_for(up_task, 10.0)
    await store.close()
    left = store.stats().depth
    mosq_cpu = (mosq1 - mosq0) if mosq0 is not None and mosq1 is not None else None
    return {
        "records_buffered": depth0,
        "records_sent": sent,
        "records_left": left,
        "store_empty": empty,
        "packs": uplink.stats.packs_sent,
        "connect_s": connect_s,
        "wall_s": meter.wall,
        "cpu_s": meter.cpu,
        "records_per_s": (depth0 - left) / meter.wall,
        "cpu_us_per_record": meter.cpu / max(1, depth0 - left) * 1e6,
        "resend_factor": sent / max(1, depth0 - left),
        "mosquitto_cpu_s": mosq_cpu,
        "bytes_per_record": uplink.stats.bytes_sent / max(1, sent),
    }


# ------------------------------------------------------------------------------ table


@dataclass
class Row:
    num: str
    metric: str
    measured: str
    target: str
    verdict: str  # PASS, FAIL, info, skip


def _fmt(n: float, digits: int = 0) -> str:
    return f"{n:,.{digits}f}"


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def build_rows(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, label in (("ingest_bulk", "64 producers"), ("ingest_linger", "8 producers")):
        r = res.get(key)
        if r is None:
            continue
        rows.append(
            Row(
                "1",
                f"store ingest, {label} x 100 rec/put, FULL sync ({_fmt(r['records'])} rec)",
                f"{_fmt(r['records_per_cpu_s'])} rec/CPU-s; wall {_fmt(r['records_per_s'])} rec/s;"
                f" {_fmt(r['commits_per_s'], 1)} commits(fsync)/s,"
                f" {_fmt(r['records_per_commit'])} rec/commit;"
                f" CPU {r['cpu_s']:.2f} s (user {r['user_s']:.2f} + sys {r['sys_s']:.2f})"
                f" in {r['wall_s']:.2f} s",
                f">= {_fmt(TARGET_INGEST_PER_CORE)} rec/s per core",
                _verdict(r["records_per_cpu_s"] >= TARGET_INGEST_PER_CORE),
            )
        )
    p = res.get("pipeline")
    if p is not None:
        mosq = p["mosquitto_cpu_us_per_record"]
        rows.append(
            Row(
                "2",
                "CPU per record end to end: counter -> store -> uplink -> mosquitto PUBACK,"
                f" {_fmt(p['records_delivered'] or 0)} rec",
                f"{p['cpu_us_per_record']:.2f} us/rec (process CPU, all threads);"
                f" wall {_fmt(p['records_per_s'])} rec/s;"
                + ("" if mosq is None else f" mosquitto +{mosq:.2f} us/rec;")
                + f" records sent/stored {p['resend_factor']:.2f}x",
                "- (no target)",
                "info",
            )
        )
        rows.append(
            Row(
                "3a",
                "upstream bytes per record, counter stream (stamps 10 us apart)",
                f"{p['bytes_per_record']:.2f} B/rec SenML-CBOR, zlib"
                f" ({_fmt(p['packs'])} packs, {p['records_sent'] / max(1, p['packs']):.0f}"
                f" rec/pack); uncompressed {p['json']['cbor_bytes_per_record']:.1f} B/rec;"
                f" same batches as JSON SenML:"
                f" {p['json']['json_bytes_per_record']:.1f} B/rec",
                f"<= {TARGET_BYTES_PER_RECORD:g} B/rec",
                _verdict(p["bytes_per_record"] <= TARGET_BYTES_PER_RECORD),
            )
        )
    for key in ("meter", "meter_one_poll_packs"):
        m = res.get(key)
        if m is None or "bytes_per_record" not in m:
            continue
        label = (
            f"20 values per poll every {m['poll_interval_s']:g} s, one put per poll,"
            f" batch_age {m['batch_age_s']:g} s"
            + (" (agent default)" if key == "meter" else ": latency first, one poll per pack")
        )
        default = key == "meter"
        rows.append(
            Row(
                "3b",
                f"upstream bytes per record, energy meter: {label}",
                f"{m['bytes_per_record']:.2f} B/rec SenML-CBOR, zlib"
                f" ({_fmt(m['packs'])} packs of {m['records_sent'] / max(1, m['packs']):.0f});"
                f" uncompressed {m['json']['cbor_bytes_per_record']:.1f} B/rec;"
                f" as JSON SenML: {m['json']['json_bytes_per_record']:.1f} B/rec",
                f"<= {TARGET_BYTES_PER_RECORD:g} B/rec" if default else "- (trade-off shown)",
                _verdict(m["bytes_per_record"] <= TARGET_BYTES_PER_RECORD) if default else "info",
            )
        )
    f = res.get("fill")
    a = res.get("agent_rss")
    if f is not None:
        peak = max(f["vm_hwm_kb"], f["peak_rss_kb"]) / 1024
        rows.append(
            Row(
                "4",
                f"peak RSS of the fill process: passerelle run, broker down, counter at"
                f" 1 MHz until {_fmt(f['records'])} rec buffered",
                f"VmHWM {peak:.1f} MB (through shutdown; VmRSS {f['vm_rss_kb'] / 1024:.1f} MB"
                f" when full); filled in {f['seconds']:.1f} s, db {f['db_bytes'] / 1e6:.1f} MB",
                f"<= {TARGET_RSS_MB:g} MB",
                _verdict(peak <= TARGET_RSS_MB),
            )
        )
    if a is not None:
        peak = max(a["vm_hwm_kb"], a["peak_rss_kb"]) / 1024
        rows.append(
            Row(
                "4",
                f"RSS of a fresh passerelle run on {_fmt(a['records_buffered'])} buffered rec"
                f" (broker down, {a['seconds']:.0f} s)",
                f"VmRSS {a['vm_rss_kb'] / 1024:.1f} MB, VmHWM {peak:.1f} MB (through"
                f" shutdown); imports alone {a['rss_after_imports_kb'] / 1024:.1f} MB",
                f"<= {TARGET_RSS_MB:g} MB",
                _verdict(peak <= TARGET_RSS_MB),
            )
        )
    for key, label in (("ingest_bulk", "64 producers"), ("ingest_linger", "8 producers")):
        r = res.get(key)
        if r is None:
            continue
        enc = r["encoded_bytes_per_record"]
        rows.append(
            Row(
                "5",
                f"disk writes per record, puts from {label} (WAL), then close()",
                f"{r['write_bytes_puts'] / r['records']:.1f} B/rec = {r['write_ratio_puts']:.2f}x"
                f" encoded ({enc:.1f} B/rec); after close (checkpoint):"
                f" {r['write_bytes_total'] / r['records']:.1f} B/rec ="
                f" {r['write_ratio_closed']:.2f}x",
                f"<= {TARGET_WRITE_RATIO:g}x",
                _verdict(r["write_ratio_closed"] <= TARGET_WRITE_RATIO),
            )
        )
    c = res.get("cycle")
    if c is not None:
        rows.append(
            Row(
                "5",
                f"disk writes per record, full cycle put -> drain -> ack -> close"
                f" ({c['rounds']} rounds)",
                f"{c['write_bytes_per_record']:.1f} B/rec = {c['write_ratio']:.2f}x encoded"
                f" ({c['encoded_bytes_per_record']:.1f} B/rec)",
                f"<= {TARGET_WRITE_RATIO:g}x",
                _verdict(c["write_ratio"] <= TARGET_WRITE_RATIO),
            )
        )
    for key in ("meter", "meter_hold"):
        m = res.get(key)
        if m is None:
            continue
        how = (
            "one durable put per poll (default)"
            if not m.get("hold_s")
            else f"store.hold = {m['hold_s']:g} s: {m['polls'] / max(1, m['commits']):.1f}"
            " polls per commit, up to a minute lost in a power cut"
        )
        rows.append(
            Row(
                "5",
                f"disk writes per record, energy meter, {how}, full cycle",
                f"{m['write_bytes_per_record_cycle']:.1f} B/rec ="
                f" {m['write_ratio_cycle']:.1f}x encoded"
                f" ({m['encoded_bytes_per_record']:.1f} B/rec); puts alone"
                f" {m['write_ratio_puts']:.1f}x; {m['commits']} commits",
                f"<= {TARGET_WRITE_RATIO:g}x",
                _verdict(m["write_ratio_cycle"] <= TARGET_WRITE_RATIO),
            )
        )
    d = res.get("drain")
    if d is not None:
        rows.append(
            Row(
                "6",
                f"backlog drain to mosquitto ({_fmt(d['records_buffered'])} rec buffered)",
                f"{_fmt(d['records_per_s'])} rec/s ({d['wall_s']:.1f} s,"
                f" {d['cpu_us_per_record']:.2f} us CPU/rec;"
                f" records sent/buffered {d['resend_factor']:.2f}x)",
                f">= {_fmt(TARGET_DRAIN_RATE)} rec/s",
                _verdict(d["records_per_s"] >= TARGET_DRAIN_RATE and d["store_empty"]),
            )
        )
    for key, text in res.get("skipped", {}).items():
        rows.append(Row(key, text, "-", "-", "skip"))
    return rows


def print_table(rows: list[Row], plain: bool = False) -> None:
    headers = ("#", "Metric", "Measured", "Target", "Result")
    if not plain:
        try:
            from rich.console import Console
            from rich.table import Table
        except ImportError:
            plain = True
    if not plain:
        width = None if sys.stdout.isatty() else 180
        console = Console(width=width, highlight=False)
        table = Table(show_lines=True)
        for h in headers:
            table.add_column(h, overflow="fold")
        style = {"PASS": "green", "FAIL": "bold red", "skip": "yellow"}
        for r in rows:
            v = f"[{style[r.verdict]}]{r.verdict}[/]" if r.verdict in style else r.verdict
            table.add_row(r.num, r.metric, r.measured, r.target, v)
        console.print(table)
        return
    cells = [headers] + [(r.num, r.metric, r.measured, r.target, r.verdict) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(headers))]
    line = "+".join("-" * (w + 2) for w in widths)
    print(line)
    for i, c in enumerate(cells):
        print(" | ".join(s.ljust(w) for s, w in zip(c, widths, strict=True)))
        if i == 0:
            print(line)
    print(line)


def print_header(cmd: str, info: dict[str, Any], sizes: Sizes) -> None:
    fs = info["filesystem"]
    print(f"Command:  {cmd}")
    print(
        f"Machine:  {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable),"
        f" {info['mem_gib']} GiB, Linux {info['kernel']}"
    )
    print(
        f"Software: {info['python']}, SQLite {info['sqlite']}, cbor2 {info['cbor2']},"
        f" aiomqtt {info['aiomqtt']}, paho-mqtt {info['paho_mqtt']},"
        f" mosquitto {info['mosquitto']}"
    )
    print(f"Data dir: {info['data_dir']} on {fs['type']} ({fs['device']} at {fs['mount']})")
    if fs["type"] in ("tmpfs", "overlay", "ramfs", "?"):
        print(f"          warning: write_bytes may not reflect device writes on {fs['type']}")
    st = agent_store_kwargs()
    up = uplink_settings(0, "")
    print(
        "Settings: as the agent's defaults: store "
        + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:g}" for k, v in st.items())
        + f"; uplink batch_records={up.batch_records}, max_inflight={up.max_inflight},"
        " max_rate unlimited (1e9), MQTT 5 QoS 1, plaintext loopback"
    )
    print(f"Sizes:    {sizes}")
    print()


# ------------------------------------------------------------------------------ main


async def run_all(
    workdir: Path, sizes: Sizes, profile: str | None, progress: Callable[[str], None]
) -> dict[str, Any]:
    from hil.mosquitto import Mosquitto, find_mosquitto

    res: dict[str, Any] = {"skipped": {}}

    def prof(phase: str) -> Profiler:
        return Profiler(profile == phase, phase)

    async def phase(name: str, coro: Awaitable[Any], p: Profiler) -> Any:
        progress(f"{name} ...")
        t = time.perf_counter()
        out = await coro
        progress(f"{name}: {time.perf_counter() - t:.1f} s")
        p.report()
        return out

    p = prof("ingest")
    res["ingest_bulk"] = await phase(
        "1 ingest 64 producers", bench_ingest(workdir, sizes.ingest_bulk, 64, p), p
    )
    res["ingest_linger"] = await phase(
        "1 ingest 8 producers", bench_ingest(workdir, sizes.ingest_linger, 8, p), p
    )
    p = prof("cycle")
    res["cycle"] = await phase("5 put/drain/ack cycle", bench_cycle(workdir, sizes.cycle, p), p)

    exe = find_mosquitto()
    broker = None
    if exe is None:
        for key in ("2", "3", "6"):
            res["skipped"][key] = "needs mosquitto (not installed)"
    else:
        broker = Mosquitto(None, plain=True, workdir=workdir / "mosquitto", executable=exe)
        broker.start()
    try:
        if broker is not None:
            p = prof("pipeline")
            res["pipeline"] = await phase(
                "2 pipeline", bench_pipeline(workdir, broker, sizes.pipeline, p), p
            )
        p = prof("meter")
        res["meter"] = await phase(
            "3b energy meter", bench_meter(workdir, broker, sizes.meter_polls, p), p
        )
        if broker is not None:
            res["meter_one_poll_packs"] = await phase(
                "3b energy meter, batch_age 1 s",
                bench_meter(workdir, broker, sizes.meter_polls, Profiler(False, ""), 1.0),
                p,
            )
            res["meter_hold"] = await phase(
                "5 energy meter, store.hold 60 s",
                bench_meter(workdir, broker, sizes.meter_polls, Profiler(False, ""), hold=60.0),
                p,
            )
        # 4: a store of `backlog` records filled by the agent itself, in a child process.
        progress("4 fill and agent RSS (child processes) ...")
        t = time.perf_counter()
        buffered = await asyncio.to_thread(
            bench_buffered, workdir, sizes.backlog, sizes.agent_seconds
        )
        progress(f"4 fill and agent RSS: {time.perf_counter() - t:.1f} s")
        res["fill"], res["agent_rss"] = buffered["fill"], buffered["agent_rss"]
        res["fill"]["db_bytes"] = buffered["db_bytes"]
        if broker is not None:
            p = prof("drain")
            res["drain"] = await phase(
                "6 drain", bench_drain(workdir / "backlog" / "store.db", broker, p), p
            )
    finally:
        if broker is not None:
            broker.cleanup()
    if not res["skipped"]:
        del res["skipped"]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.bench", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="~20x smaller sizes (smoke test)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--plain", action="store_true", help="plain-text table even if rich is there")
    ap.add_argument(
        "--dir",
        help="where the stores go (default: a new dir under /var/tmp, a real disk on most"
        " systems; /tmp is often tmpfs)",
    )
    ap.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    ap.add_argument("--profile", choices=PHASES, help="cProfile one phase (to stderr)")
    args = ap.parse_args(argv)

    from hil.mosquitto import find_mosquitto

    sizes = QUICK if args.quick else FULL
    workdir = bench_workdir(args.dir, "passerelle-bench-")
    cmd = "python -m hil.bench" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    info = machine_info(workdir, find_mosquitto())
    print_header(cmd, info, sizes)
    sys.stdout.flush()
    res, elapsed = run_in(workdir, args.keep,
                          lambda: run_all(workdir, sizes, args.profile, progress))
    rows = build_rows(res)
    print_table(rows, plain=args.plain)
    failed = [r for r in rows if r.verdict == "FAIL"]
    print(
        f"{sum(r.verdict == 'PASS' for r in rows)} passed, {len(failed)} missed their target,"
        f" {sum(r.verdict == 'info' for r in rows)} informative; run took {elapsed:.0f} s"
    )
    if args.json:
        print_json_report(cmd, info, sizes, elapsed, res, rows)
    return 0


def bench_workdir(arg_dir: str | None, prefix: str) -> Path:
    """A fresh data dir under ``--dir``, else /var/tmp (a real disk; /tmp is often tmpfs)."""
    if arg_dir:
        parent = Path(arg_dir)
        parent.mkdir(parents=True, exist_ok=True)
    else:
        parent = Path("/var/tmp") if os.path.isdir("/var/tmp") else Path(tempfile.gettempdir())
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent))


def progress(text: str) -> None:
    """A bench's progress line, on stderr so the table on stdout stays clean."""
    print(f"  [{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


def run_in(workdir: Path, keep: bool, run: Callable[[], Any]) -> tuple[Any, float]:
    """``asyncio.run(run())`` timed; the data dir removed afterwards unless ``keep``."""
    started = time.perf_counter()
    try:
        res = asyncio.run(run())
    finally:
        if not keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return res, time.perf_counter() - started


def print_json_report(
    cmd: str, info: dict[str, Any], sizes: Any, elapsed: float, res: dict[str, Any],
    rows: list[Row],
) -> None:
    """``--json``: everything measured, after the table (tests and CI read this)."""
    doc = {
        "command": cmd,
        "machine": info,
        "sizes": sizes.__dict__,
        "elapsed_s": elapsed,
        "results": res,
        "rows": [r.__dict__ for r in rows],
    }
    print(json.dumps(doc, indent=2, default=str))


if __name__ == "__main__":
    sys.exit(main())
