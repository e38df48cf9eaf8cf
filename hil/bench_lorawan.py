"""The edge LoRaWAN network server's figures, measured on this machine.

Usage::

    python -m hil.bench_lorawan [--quick] [--json] [--plain] [--dir DIR] [--keep]

Rows 1 and 2 run the real code (NetworkServer, SessionStore, DurableStore at the agent's
defaults, DutyCycleGate, the LoRaWAN crypto) on frames built by simulated end devices
(:mod:`hil.lorawan_device`); CPU time is ``time.process_time()`` (all threads):

1. **uplinks**: pre-encoded Cayenne LPP uplinks (3 values each) from K ABP devices fed to
   ``NetworkServer.handle``, each device's frames in order, the devices concurrently (as
   the server's receive loop runs them): MIC verified, decrypted, decoded, stored durably
   (``DurableStore.put_many``), uplink counter committed. Unconfirmed frames need no
   downlink (the bench radio asserts it was never called); confirmed frames add the
   duty-cycle gate (persisted as the agent persists it), the downlink counter and the
   encoding of the acknowledgement. Also the latency of one uplink handled alone.
2. **downlink decision**: ``DutyCycleGate.check`` + ``record`` against a ledger holding
   about an hour of acknowledgements, per decision; and the class A answer path without
   the radio, component by component (downlink counter commit, encode, airtime, gate,
   gate persistence).
3. **multicast airtime**: one dimming command to a street of 100 class C luminaires, sent
   through ``NetworkServer.send`` 100 times versus ``send_multicast`` once; the time on
   air is computed (:mod:`passerelle.lorawan.airtime`) from the PHYPayloads the server
   really handed to the radio, and the hourly room in band P is counted by the real gate.
   This row is a computation from real encoded frames, not a radio measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hil.bench import (
    Row,
    _fmt,
    agent_store,
    agent_store_kwargs,
    bench_workdir,
    machine_info,
    print_json_report,
    print_table,
    progress,
    run_in,
)
from hil.lorawan_device import EndDevice
from passerelle.lorawan import phy
from passerelle.lorawan.airtime import airtime_of, tx_airtime
from passerelle.lorawan.codecs import encode_cayenne, get_codec
from passerelle.lorawan.config import DeviceConfig, LorawanConfig, MulticastConfig
from passerelle.lorawan.region import DEFAULT_CHANNELS, RX2_FREQUENCY
from passerelle.lorawan.runtime import _PersistentGate
from passerelle.lorawan.server import NetworkServer
from passerelle.lorawan.sessions import SessionStore
from passerelle.policy.dutycycle import DutyCycleGate
from passerelle.radio.base import RxFrame, TxRequest, TxResult

UPLINK_CHANNELS = DEFAULT_CHANNELS  # EU868 default channels (band M, 1 %)
UPLINK_DATARATE = "SF7BW125"
DIM_FPORT = 10
DIM_COMMAND = bytes([0x01, 0x32, 0x00])  # 3 bytes: set level 50 %, no fade (illustrative)
STREET = 100  # luminaires in the multicast row
VALUES_PER_FRAME = 3  # temperature, humidity, voltage: see _reading
ACK_SPACING_S = 5.0  # virtual seconds between confirmed uplinks: ~720 acks in an hour


@dataclass(frozen=True)
class Sizes:
    uplinks: int  # unconfirmed frames through the server
    devices: int  # ABP devices sending them, concurrently
    confirmed: int  # confirmed frames (each acknowledged)
    alone: int  # frames handled one at a time (latency)
    decisions: int  # gate check + record
    answers: int  # class A answer paths


FULL = Sizes(uplinks=20_000, devices=100, confirmed=2_000, alone=50, decisions=20_000,
             answers=1_000)
QUICK = Sizes(uplinks=1_000, devices=20, confirmed=300, alone=10, decisions=2_000, answers=200)


# ------------------------------------------------------------------------------ the rig


class BenchRadio:
    """The radio at the edge of the measured path: counts what it is asked to send.

    Not a stand-in for anything measured: frames are fed to ``handle`` directly and the
    transmission itself is outside every figure here.
    """

    def __init__(self) -> None:
        self.sent: list[TxRequest] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def receive(self) -> RxFrame:
        raise RuntimeError("bench radio: frames are fed to NetworkServer.handle directly")

    async def transmit(self, request: TxRequest) -> TxResult:
        self.sent.append(request)
        return TxResult(True)


class VirtualClock:
    """The gate's monotonic clock, moved by the bench: an hour of traffic in seconds."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _key(i: int, salt: int) -> bytes:
    return bytes((i * 7 + salt + k) & 0xFF for k in range(16))


def _device(i: int, class_: str = "A", prefix: int = 0x26) -> tuple[DeviceConfig, EndDevice]:
    """An ABP device, as configured on the gateway and as simulated in the field."""
    dev_eui = bytes.fromhex(f"70b3d57ed0{prefix:02x}{i:04x}")
    dev_addr = (prefix << 24) | 0x010000 | i
    nwk, app = _key(i, 1), _key(i, 101)
    cfg = DeviceConfig(
        name=f"dev-{prefix:02x}-{i}", dev_eui=dev_eui.hex(), class_=class_, codec="cayenne",
        dev_addr=f"{dev_addr:08x}", nwk_s_key=nwk.hex(), app_s_key=app.hex(),
    )
    sim = EndDevice(dev_eui=dev_eui, device_class=class_, dev_addr=dev_addr, nwk_s_key=nwk,
                    app_s_key=app)
    return cfg, sim


def _server(
    cfg: LorawanConfig, radio: BenchRadio, sessions: SessionStore, emit: Any, gate: Any
) -> NetworkServer:
    layouts = dict(cfg.codecs)
    return NetworkServer(
        cfg, radio, sessions, emit, gate,
        codec_for=lambda name: get_codec(name, layouts),
        airtime=lambda dr, n: airtime_of(dr, n, uplink=False),
    )


def _reading(i: int, fcnt: int) -> bytes:
    """A few values as a street sensor sends them: temperature, humidity, battery."""
    return encode_cayenne([
        (1, "temperature", round(10.0 + (i + fcnt) % 200 / 10, 1)),
        (2, "humidity", 40.0 + (fcnt % 40) / 2),
        (3, "voltage", 3.3),
    ])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def _session_commits(sessions: SessionStore) -> int:
    # Rows written by the session store: each is its own transaction (autocommit), one
    # WAL fsync at synchronous=FULL. Read from SQLite, not inferred from the frame count.
    db = sessions._db  # bench only: the counter SQLite keeps for this connection
    assert db is not None
    return int(db.total_changes)


# ------------------------------------------------------------------------------ row 1


async def bench_uplinks(
    workdir: Path, frames: int, devices: int, confirmed: bool, label: str
) -> dict[str, Any]:
    """``frames`` uplinks from ``devices`` devices through NetworkServer.handle."""
    root = workdir / label
    pairs = [_device(i) for i in range(devices)]
    cfg = LorawanConfig(devices=[c for c, _ in pairs])
    per_device = [frames // devices + (1 if i < frames % devices else 0) for i in range(devices)]
    # Pre-encode (outside the measurement): what the radio would hand over.
    queues: list[list[RxFrame]] = []
    tmst = 0
    for i, (_cfg, sim) in enumerate(pairs):
        q = []
        for _ in range(per_device[i]):
            payload = sim.uplink(1, _reading(i, sim.fcnt_up), confirmed=confirmed)
            tmst += 1000
            q.append(RxFrame(payload=payload, frequency=UPLINK_CHANNELS[tmst % 3],
                             datarate=UPLINK_DATARATE, rssi=-95.0, snr=6.0, tmst=tmst))
        queues.append(q)

    radio = BenchRadio()
    sessions = SessionStore(root / "lorawan.db")
    sessions.open()
    clock = VirtualClock()
    gate = _PersistentGate(root / "dutycycle.json")
    gate.gate = DutyCycleGate(clock=clock)  # the agent's persistence, on simulated time
    saves = [0]
    real_save = gate.save

    def counted_save() -> None:  # the ledger file writes (fsync each), counted as they happen
        saves[0] += 1
        real_save()

    gate.save = counted_save  # type: ignore[method-assign]
    async with agent_store(root / "store.db") as store:
        server = _server(cfg, radio, sessions, store.put_many, gate)
        server.provision()
        commits0, store_commits0 = _session_commits(sessions), store.stats().commits

        async def device_worker(q: list[RxFrame]) -> None:
            for rx in q:  # one device's frames in order, as its DevAddr lock would have them
                clock.advance(ACK_SPACING_S)  # the gate's hour: one frame every 5 s
                await server.handle(rx)

        t0, c0 = time.perf_counter(), time.process_time()
        await asyncio.gather(*(device_worker(q) for q in queues))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        session_commits = _session_commits(sessions) - commits0
        st = store.stats()
        store_commits = st.commits - store_commits0
        depth = st.depth
    sessions.close()
    counts = dict(server.stats.counts)
    accepted = counts.get("uplinks", 0)
    if accepted != frames:
        raise RuntimeError(f"{label}: {accepted} of {frames} uplinks accepted: {counts}")
    if depth != frames * VALUES_PER_FRAME:
        raise RuntimeError(f"{label}: store holds {depth} records, expected"
                           f" {frames * VALUES_PER_FRAME}")
    if confirmed:
        acks = counts.get("acks", 0)
        if acks != frames or len(radio.sent) != frames:
            raise RuntimeError(f"{label}: {acks} acks, {len(radio.sent)} sent for {frames}")
        # The acks really are for the devices: the last one decodes on its device.
        last = radio.sent[-1].payload
        addr = phy.decode_data(last).dev_addr
        sim = next(s for _c, s in pairs if s.dev_addr == addr)
        if not sim.receive(last).ack:
            raise RuntimeError(f"{label}: acknowledgement without the ACK bit")
    elif radio.sent:
        raise RuntimeError(f"{label}: the radio was asked to send {len(radio.sent)} frames")
    gate.close()
    gate_saves = saves[0]
    rx1 = sum(1 for r in radio.sent if r.frequency != RX2_FREQUENCY)
    return {
        "frames": frames,
        "devices": devices,
        "confirmed": confirmed,
        "records_stored": depth,
        "wall_s": wall,
        "cpu_s": cpu,
        "frames_per_s": frames / wall,
        "frames_per_cpu_s": frames / cpu,
        "cpu_us_per_frame": cpu / frames * 1e6,
        "session_commits": session_commits,
        "store_commits": store_commits,
        "gate_saves": gate_saves,
        "fsyncs": session_commits + store_commits + gate_saves,
        "fsyncs_per_frame": (session_commits + store_commits + gate_saves) / frames,
        "downlinks": len(radio.sent),
        "downlinks_rx1": rx1,
        "gate_ledger_entries": gate.gate.ledger_sizes(),
        "counts": counts,
    }


async def bench_alone(workdir: Path, frames: int) -> dict[str, Any]:
    """Latency of one unconfirmed uplink with nothing else in flight."""
    root = workdir / "alone"
    cfg_dev, sim = _device(0)
    cfg = LorawanConfig(devices=[cfg_dev])
    radio = BenchRadio()
    sessions = SessionStore(root / "lorawan.db")
    sessions.open()
    latencies: list[float] = []
    async with agent_store(root / "store.db") as store:
        server = _server(cfg, radio, sessions, store.put_many, DutyCycleGate())
        server.provision()
        for n in range(frames):
            rx = RxFrame(payload=sim.uplink(1, _reading(0, n)), frequency=868.1,
                         datarate=UPLINK_DATARATE, tmst=n)
            t0 = time.perf_counter()
            await server.handle(rx)
            latencies.append(time.perf_counter() - t0)
        depth = store.stats().depth
    sessions.close()
    accepted = server.stats.counts.get("uplinks", 0)
    if accepted != frames or depth != VALUES_PER_FRAME * frames or radio.sent:
        raise RuntimeError(f"alone: {dict(server.stats.counts)}, depth {depth}")
    return {
        "frames": frames,
        "median_ms": statistics.median(latencies) * 1e3,
        "p99_ms": _percentile(latencies, 0.99) * 1e3,
        "store_max_delay_s": store.max_delay,
    }


# ------------------------------------------------------------------------------ row 2


def _ack_airtime() -> float:
    """Seconds on air of an empty acknowledgement in RX1 at SF7 (12-byte PHYPayload)."""
    frame = phy.encode_data(phy.MType.UnconfirmedDataDown, 0x26010000, 0, bytes(16),
                            bytes(16), ack=True)
    return airtime_of(UPLINK_DATARATE, len(frame), uplink=False)


def _filled_gate(clock: VirtualClock) -> DutyCycleGate:
    """A gate holding an hour of acknowledgements: one every ACK_SPACING_S in band M."""
    gate = DutyCycleGate(clock=clock)
    airtime = _ack_airtime()
    for _ in range(int(3600 / ACK_SPACING_S)):
        clock.advance(ACK_SPACING_S)
        gate.record(UPLINK_CHANNELS[int(clock.now) % 3], airtime)
    return gate


def bench_gate(decisions: int) -> dict[str, Any]:
    clock = VirtualClock()
    gate = _filled_gate(clock)
    airtime = _ack_airtime()
    times: list[float] = []
    refused = 0
    sizes: list[int] = []
    c0 = time.process_time()
    for i in range(decisions):
        clock.advance(ACK_SPACING_S)
        freq = UPLINK_CHANNELS[i % 3]
        t0 = time.perf_counter_ns()
        decision = gate.check(freq, airtime, 14.0)
        if decision.ok:
            gate.record(freq, airtime)
        t1 = time.perf_counter_ns()
        refused += not decision.ok
        times.append((t1 - t0) / 1e3)
        if i % 100 == 0:
            sizes.append(gate.ledger_sizes()["M"])
    cpu = time.process_time() - c0
    return {
        "decisions": decisions,
        "refused": refused,
        "ledger_entries_band_m": round(statistics.mean(sizes)),
        "median_us": statistics.median(times),
        "p99_us": _percentile(times, 0.99),
        "cpu_us_per_decision": cpu / decisions * 1e6,
    }


def bench_answer(workdir: Path, answers: int) -> dict[str, Any]:
    """The class A acknowledgement path without the radio, in the server's order: commit
    the downlink counter, encode, time on air, gate check + record, persist the gate."""
    root = workdir / "answer"
    cfg_dev, _sim = _device(0)
    sessions = SessionStore(root / "lorawan.db")
    sessions.open()
    session = sessions.provision_abp(cfg_dev.dev_eui, int(cfg_dev.dev_addr or "0", 16),
                                     bytes.fromhex(cfg_dev.nwk_s_key or ""),
                                     bytes.fromhex(cfg_dev.app_s_key or ""), time.time())
    clock = VirtualClock()
    persistent = _PersistentGate(root / "dutycycle.json")
    persistent.gate = _filled_gate(clock)
    parts: dict[str, list[float]] = {k: [] for k in
                                     ("counter", "encode", "airtime", "gate", "persist", "total")}
    c0 = time.process_time()
    for i in range(answers):
        clock.advance(ACK_SPACING_S)
        freq = UPLINK_CHANNELS[i % 3]
        t0 = time.perf_counter_ns()
        fcnt_down = sessions.take_fcnt_down(session.dev_eui)
        t1 = time.perf_counter_ns()
        frame = phy.encode_data(phy.MType.UnconfirmedDataDown, session.dev_addr, fcnt_down,
                                session.nwk_s_key, session.app_s_key, ack=True)
        t2 = time.perf_counter_ns()
        airtime = airtime_of(UPLINK_DATARATE, len(frame), uplink=False)
        t3 = time.perf_counter_ns()
        decision = persistent.gate.check(freq, airtime, 14.0)
        if not decision.ok:
            raise RuntimeError(f"answer path: gate refused: {decision.reason}")
        t4 = time.perf_counter_ns()
        persistent.record(freq, airtime)  # the agent's: the inner record, saved when due
        t5 = time.perf_counter_ns()
        for key, a, b in (("counter", t0, t1), ("encode", t1, t2), ("airtime", t2, t3),
                          ("gate", t3, t4), ("persist", t4, t5), ("total", t0, t5)):
            parts[key].append((b - a) / 1e3)
    cpu = time.process_time() - c0
    sessions.close()
    out: dict[str, Any] = {"answers": answers, "cpu_us_per_answer": cpu / answers * 1e6,
                           "gate_file_bytes": (root / "dutycycle.json").stat().st_size}
    for key, values in parts.items():
        out[f"{key}_median_us"] = statistics.median(values)
        out[f"{key}_p99_us"] = _percentile(values, 0.99)
    return out


# ------------------------------------------------------------------------------ row 3


async def bench_multicast(workdir: Path, datarate: str) -> dict[str, Any]:
    """One dimming command to STREET class C luminaires: unicast versus multicast."""
    root = workdir / f"multicast-{datarate}"
    pairs = [_device(i, class_="C", prefix=0x27) for i in range(STREET)]
    group_addr, g_nwk, g_app = 0x27FF0001, _key(999, 3), _key(999, 77)
    group = MulticastConfig(name="street-1", dev_addr=f"{group_addr:08x}", nwk_s_key=g_nwk.hex(),
                            app_s_key=g_app.hex(), frequency=RX2_FREQUENCY, datarate=datarate,
                            devices=[c.name for c, _ in pairs])
    cfg = LorawanConfig(rx2_frequency=RX2_FREQUENCY, rx2_datarate=datarate,
                        devices=[c for c, _ in pairs], multicast=[group])
    radio = BenchRadio()
    sessions = SessionStore(root / "lorawan.db")
    sessions.open()

    async def no_store(records: Any, priority: Any) -> None:
        raise RuntimeError("no uplink in this row")

    server = _server(cfg, radio, sessions, no_store, DutyCycleGate(clock=VirtualClock()))
    server.provision()
    for c, _sim in pairs:
        result = await server.send(c.name, DIM_FPORT, DIM_COMMAND)
        if not result.ok:
            raise RuntimeError(f"unicast to {c.name} refused: {result.error}")
    unicast = list(radio.sent)
    result = await server.send_multicast("street-1", DIM_FPORT, DIM_COMMAND)
    if not result.ok:
        raise RuntimeError(f"multicast refused: {result.error}")
    multicast = radio.sent[len(unicast)]
    sessions.close()
    # Every luminaire reads its own frame, and the group frame, as a device would.
    for (_c, sim), req in zip(pairs, unicast, strict=True):
        if sim.receive(req.payload).payload != DIM_COMMAND:
            raise RuntimeError("a unicast command did not decode on its luminaire")
    member = EndDevice(dev_eui=bytes(8), device_class="C", dev_addr=group_addr, nwk_s_key=g_nwk,
                       app_s_key=g_app)
    if member.receive(multicast.payload).payload != DIM_COMMAND:
        raise RuntimeError("the multicast command did not decode")
    if any(r.datarate != datarate or r.frequency != RX2_FREQUENCY for r in radio.sent):
        raise RuntimeError("a downlink left at another frequency or data rate")

    uni_air = sum(tx_airtime(r) for r in unicast)
    multi_air = tx_airtime(multicast)
    allowance = DutyCycleGate().band_of(RX2_FREQUENCY)
    assert allowance is not None
    return {
        "datarate": datarate,
        "frequency_mhz": RX2_FREQUENCY,
        "luminaires": STREET,
        "payload_bytes": len(DIM_COMMAND),
        "unicast_frames": len(unicast),
        "unicast_phy_bytes": sorted({len(r.payload) for r in unicast}),
        "multicast_phy_bytes": len(multicast.payload),
        "unicast_airtime_s": uni_air,
        "multicast_airtime_s": multi_air,
        "saving_factor": uni_air / multi_air,
        "band": allowance.name,
        "band_allowance_s_per_h": allowance.allowance_s(),
        "unicast_commands_per_h": math.floor(allowance.allowance_s() / uni_air + 1e-9),
        "multicast_commands_per_h": math.floor(allowance.allowance_s() / multi_air + 1e-9),
        "gate_admits_unicast_frames_per_h": _admitted(unicast[0]),
        "gate_admits_multicast_frames_per_h": _admitted(multicast),
    }


def _admitted(request: TxRequest) -> int:
    """How many such frames the real gate lets through in one hour, all at once."""
    gate = DutyCycleGate(clock=VirtualClock())
    airtime = tx_airtime(request)
    n = 0
    while gate.check(request.frequency, airtime, request.power).ok:
        gate.record(request.frequency, airtime)
        n += 1
    return n


# ------------------------------------------------------------------------------ table


def build_rows(res: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, what in (("uplink_unconfirmed", "unconfirmed (no downlink)"),
                      ("uplink_confirmed", "confirmed (ack: counter + gate + encode)")):
        u = res.get(key)
        if u is None:
            continue
        extra = (f"; {u['downlinks']} acks ({u['downlinks_rx1']} in RX1), gate ledger"
                 f" {u['gate_ledger_entries'].get('M', 0)} entries in band M"
                 if u["confirmed"] else "; radio never called")
        rows.append(Row(
            "1",
            f"uplinks {what}: MIC, decrypt, Cayenne LPP (3 values), DurableStore.put_many,"
            f" counter commit; {_fmt(u['frames'])} frames from {u['devices']} devices",
            f"{_fmt(u['frames_per_cpu_s'])} frames per CPU-second"
            f" ({u['cpu_us_per_frame']:.0f} us CPU/frame); wall {_fmt(u['frames_per_s'])}"
            f" frames/s; commits (fsync each): {_fmt(u['fsyncs'])} ="
            f" {u['fsyncs_per_frame']:.2f}/frame (session {_fmt(u['session_commits'])},"
            f" store {_fmt(u['store_commits'])}, gate file {_fmt(u['gate_saves'])})" + extra,
            "- (no target)",
            "info",
        ))
    a = res.get("uplink_alone")
    if a is not None:
        rows.append(Row(
            "1",
            f"latency of one unconfirmed uplink handled alone ({a['frames']} frames)",
            f"median {a['median_ms']:.1f} ms, p99 {a['p99_ms']:.1f} ms (store commit"
            f" linger max_delay {a['store_max_delay_s'] * 1e3:g} ms + 2 commits)",
            "- (no target)",
            "info",
        ))
    g = res.get("gate")
    if g is not None:
        rows.append(Row(
            "2",
            f"duty-cycle decision: DutyCycleGate.check + record, ledger of"
            f" ~{g['ledger_entries_band_m']} transmissions in the hour (band M),"
            f" {_fmt(g['decisions'])} decisions",
            f"median {g['median_us']:.1f} us, p99 {g['p99_us']:.1f} us per decision"
            f" ({g['cpu_us_per_decision']:.1f} us CPU); {g['refused']} refused",
            "- (no target)",
            "info",
        ))
    p = res.get("answer")
    if p is not None:
        rows.append(Row(
            "2",
            f"class A answer path without the radio ({_fmt(p['answers'])} acks): downlink"
            " counter commit, encode, airtime, gate check, record (ledger file saved when due,"
            " at most once a second)",
            f"median {p['total_median_us']:.0f} us, p99 {p['total_p99_us']:.0f} us"
            f" = counter {p['counter_median_us']:.0f} + encode {p['encode_median_us']:.0f}"
            f" + airtime {p['airtime_median_us']:.1f} + check {p['gate_median_us']:.0f}"
            f" + record {p['persist_median_us']:.0f} us (medians; the"
            f" {_fmt(p['gate_file_bytes'])} B ledger file is written by a timer, off this path)",
            "- (no target)",
            "info",
        ))
    for m in res.get("multicast", []):
        rows.append(Row(
            "3",
            f"computed from real encoded frames: a {m['payload_bytes']}-byte dimming command"
            f" on FPort {DIM_FPORT} to {m['luminaires']} class C luminaires,"
            f" {m['frequency_mhz']} MHz {m['datarate']} (band {m['band']},"
            f" {m['band_allowance_s_per_h']:g} s/h)",
            f"unicast {m['unicast_frames']} x {m['unicast_phy_bytes'][0]} B ="
            f" {m['unicast_airtime_s']:.2f} s on air; multicast 1 x"
            f" {m['multicast_phy_bytes']} B = {m['multicast_airtime_s'] * 1e3:.1f} ms:"
            f" {m['saving_factor']:.0f}x less; street-wide commands per hour in band P:"
            f" {m['unicast_commands_per_h']} by unicast vs"
            f" {_fmt(m['multicast_commands_per_h'])} by multicast (the real gate, fed such"
            f" frames until it refused, admitted {_fmt(m['gate_admits_unicast_frames_per_h'])}"
            f" unicast / {_fmt(m['gate_admits_multicast_frames_per_h'])} multicast frames)",
            "- (no target)",
            "info",
        ))
    return rows


def print_header(cmd: str, info: dict[str, Any], sizes: Sizes) -> None:
    fs = info["filesystem"]
    print(f"Command:  {cmd}")
    print(
        f"Machine:  {info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable),"
        f" {info['mem_gib']} GiB, Linux {info['kernel']}"
    )
    print(f"Software: {info['python']}, SQLite {info['sqlite']}, cbor2 {info['cbor2']},"
          f" cryptography {info['cryptography']}")
    print(f"Data dir: {info['data_dir']} on {fs['type']} ({fs['device']} at {fs['mount']})")
    st = agent_store_kwargs()
    print("Settings: store as the agent's defaults: "
          + ", ".join(f"{k}={v:,}" if isinstance(v, int) else f"{k}={v:g}" for k, v in st.items())
          + "; sessions SQLite WAL synchronous=FULL; duty-cycle ledger saved at most once a second")
    print(f"Sizes:    {sizes}")
    print()


# ------------------------------------------------------------------------------ main


async def run_all(
    workdir: Path, sizes: Sizes, progress: Callable[[str], None]
) -> dict[str, Any]:
    res: dict[str, Any] = {}

    async def phase(name: str, key: str, make: Callable[[], Any]) -> None:
        progress(f"{name} ...")
        t = time.perf_counter()
        out = make()
        res[key] = await out if asyncio.iscoroutine(out) else out
        progress(f"{name}: {time.perf_counter() - t:.1f} s")

    await phase("1 unconfirmed uplinks", "uplink_unconfirmed", lambda: bench_uplinks(
        workdir, sizes.uplinks, sizes.devices, False, "unconfirmed"))
    await phase("1 confirmed uplinks", "uplink_confirmed", lambda: bench_uplinks(
        workdir, sizes.confirmed, sizes.devices, True, "confirmed"))
    await phase("1 one uplink alone", "uplink_alone", lambda: bench_alone(workdir, sizes.alone))
    await phase("2 gate decisions", "gate", lambda: bench_gate(sizes.decisions))
    await phase("2 class A answer path", "answer", lambda: bench_answer(workdir, sizes.answers))
    progress("3 multicast ...")
    res["multicast"] = [await bench_multicast(workdir, dr) for dr in ("SF9BW125", "SF12BW125")]
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hil.bench_lorawan",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller sizes (smoke test)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--plain", action="store_true", help="plain-text table even if rich is there")
    ap.add_argument("--dir", help="where the databases go (default: a new dir under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the data dir afterwards")
    args = ap.parse_args(argv)

    sizes = QUICK if args.quick else FULL
    workdir = bench_workdir(args.dir, "passerelle-bench-lorawan-")
    cmd = "python -m hil.bench_lorawan" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    info = machine_info(workdir, None)
    info.pop("mosquitto", None)
    info.pop("aiomqtt", None)
    info.pop("paho_mqtt", None)
    from hil.bench import _version

    info["cryptography"] = _version("cryptography")
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
