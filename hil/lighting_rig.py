"""A lighting cabinet on the simulated radio: luminaires, sensors, gateway, network server.

What a test or a bench needs to drive :class:`passerelle.lighting.engine.LightingEngine`
through the real LoRaWAN path: the :class:`~passerelle.lorawan.server.NetworkServer` (real
frames, counters, MIC), the :class:`~passerelle.policy.dutycycle.DutyCycleGate` every
downlink waits on, a :class:`~hil.radio_medium.SimGateway` and one
:class:`~hil.luminaire_sim.LuminaireSim` per luminaire of the ``[lighting]`` zones, all on
one :class:`~hil.radio_medium.Medium` in real time (:class:`AsyncioClock`). Class A
devices of ``[lorawan]`` that are no luminaire (presence sensors) become plain
:class:`~hil.radio_medium.SimDevice` nodes that :meth:`LightingRig.uplink` makes talk.

Usage::

    cfg = passerelle.config.parse(data, tmp_path)  # [lorawan] devices + multicast, [lighting]
    async with lighting_rig(cfg, tmp_path, reply_window=6.0) as rig:
        engine = LightingEngine(cfg.lighting, emit, downlinks=rig.server, ...)
        rig.attach(engine.observe)  # the agent's order: the engine sees every record first
        await engine.step()

Layout: the luminaires stand ``spacing_m`` apart along one street in zone order (the
order of ``[lighting.zones]``, then each zone's ``luminaires``), 10 m off the axis; the
gateway stands at the middle of the street, so a long street stays within range. A
presence sensor stands by the luminaire its ``near`` names (else the street's start).

:func:`street_lorawan` writes the ``[lorawan]`` table for ``n`` luminaires (ABP, class C,
codec "luminaire", one multicast group) with keys derived from the names: test keys only.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hil.lorawan_device import EndDevice
from hil.luminaire_sim import LuminaireSim, MulticastSession
from hil.radio_medium import AsyncioClock, Medium, SimDevice, SimGateway, Transmission
from passerelle.config import Config
from passerelle.lorawan import phy
from passerelle.lorawan.airtime import airtime_of
from passerelle.lorawan.codecs import get_codec
from passerelle.lorawan.region import DATARATES
from passerelle.lorawan.server import NetworkServer
from passerelle.lorawan.sessions import SessionStore
from passerelle.model import Priority, Record
from passerelle.policy.dutycycle import DutyCycleGate

__all__ = ["LightingRig", "lighting_rig", "street_lorawan", "sim_key"]

Observer = Callable[[Sequence[Record]], Sequence[Record]]


def sim_key(kind: str, name: str) -> str:
    """A 16-byte key as 32 hex digits, derived from ``kind`` and ``name`` (test keys only)."""
    return hashlib.sha256(f"passerelle-sim:{kind}:{name}".encode()).hexdigest()[:32]


def street_lorawan(
    names: Sequence[str],
    *,
    group: str | None = "street",
    groups: Mapping[str, Sequence[str]] | None = None,
    group_addr: int = 0x2601FFFF,
    first_addr: int = 0x26010001,
    datarate: str = "SF9BW125",
) -> dict[str, Any]:
    """The ``[lorawan]`` table of a street of class C luminaire controllers named ``names``.

    Each is ABP (DevAddr ``first_addr + i``, DevEUI from the same number) with codec
    "luminaire"; ``group`` (None: none) is a multicast group of all of them, or ``groups``
    (name -> members) several, at DevAddr ``group_addr``, ``group_addr - 1``... Class C
    downlinks and the groups use 869.525 MHz (band P) at ``datarate``.
    """
    devices = []
    for i, name in enumerate(names):
        addr = first_addr + i
        devices.append(
            {
                "name": name,
                "dev_eui": f"70b3d57e{addr:08x}",
                "class": "C",
                "codec": "luminaire",
                "priority": "telemetry",
                "dev_addr": f"{addr:08x}",
                "nwk_s_key": sim_key("nwk", name),
                "app_s_key": sim_key("app", name),
            }
        )
    table: dict[str, Any] = {"rx2_datarate": datarate, "devices": devices}
    if groups is None:
        groups = {group: names} if group is not None else {}
    table["multicast"] = [
        {
            "name": name,
            "dev_addr": f"{group_addr - k:08x}",
            "nwk_s_key": sim_key("nwk", name),
            "app_s_key": sim_key("app", name),
            "datarate": datarate,
            "devices": list(members),
        }
        for k, (name, members) in enumerate(groups.items())
    ]
    return table


@dataclass
class LightingRig:
    """Everything on the air; see the module docstring. Built by :func:`lighting_rig`."""

    config: Config
    medium: Medium
    gateway: SimGateway
    gate: Any  # a DutyCycleGate, or a wrapper with its interface (see lighting_rig)
    server: NetworkServer
    luminaires: dict[str, LuminaireSim]
    sensors: dict[str, SimDevice]  # class A devices that are not luminaires
    heard: list[tuple[Record, Priority]] = field(default_factory=list)  # all the server emitted
    stored: list[tuple[Record, Priority]] = field(default_factory=list)  # what the observer kept
    observer: Observer | None = None

    def attach(self, observer: Observer | None) -> None:
        """Route every record the server emits through ``observer`` first (as the agent
        routes them through ``LightingEngine.observe``); what it returns is ``stored``."""
        self.observer = observer

    async def _emit(self, records: Sequence[Record], priority: Priority) -> None:
        self.heard.extend((r, priority) for r in records)
        kept = self.observer(records) if self.observer is not None else records
        self.stored.extend((r, priority) for r in kept)

    def uplink(self, sensor: str, fport: int, payload: bytes, *, confirmed: bool = False) -> None:
        """Make class A device ``sensor`` send ``payload`` now. A confirmed uplink is sent
        again (up to 4 times) until the server acknowledges it, as a sensor that must not
        lose a detection would."""
        self.sensors[sensor].send(fport, payload, confirmed=confirmed)

    def downlinks(self, dev_addr: int | None = None) -> list[Transmission]:
        """The gateway's transmissions so far, or those to ``dev_addr`` (a device or a
        group's address, read from the frame header)."""
        return [tx for tx in self.gateway.sent if dev_addr is None or _addr(tx) == dev_addr]

    def group_downlinks(self, group: str) -> list[Transmission]:
        """The multicast frames sent to group ``group``."""
        g = self.server.groups[group]
        return self.downlinks(int(g.dev_addr, 16))

    def unicast_downlinks(self) -> list[Transmission]:
        """Frames sent to one device, luminaire or sensor (every frame not for a group)."""
        groups = {int(g.dev_addr, 16) for g in self.server.groups.values()}
        return [tx for tx in self.gateway.sent if _addr(tx) not in groups]

    def airtime_sent(self) -> float:
        """Seconds the gateway has been on air (every downlink, as the medium timed it)."""
        return sum(tx.end - tx.start for tx in self.gateway.sent)

    def uplink_losses(self) -> dict[str, int]:
        """Luminaire uplinks the gateway did not get, by outcome (collision, half_duplex...)."""
        names = set(self.luminaires)
        out: dict[str, int] = {}
        for r in self.medium.receptions:
            if r.receiver == self.gateway.name and r.transmission.source in names and not r.ok:
                out[r.outcome] = out.get(r.outcome, 0) + 1
        return out


@contextlib.asynccontextmanager
async def lighting_rig(
    cfg: Config,
    workdir: str | Path,
    *,
    reply_window: float = 60.0,
    reply_delay: float = 0.05,
    spacing_m: float = 25.0,
    seed: int = 1,
    gate: Any | None = None,
    hold_time: float | None = None,
) -> AsyncIterator[LightingRig]:
    """Build and run a :class:`LightingRig` for ``cfg`` (which must have ``[lighting]``).

    ``reply_window``, ``reply_delay`` and ``hold_time`` go to every
    :class:`LuminaireSim` (a multicast answer waits up to ``reply_window`` s; a unicast
    one ``reply_delay`` s). ``seed`` seeds the medium (and so every luminaire's answer
    delays). ``gate``: the duty-cycle gate the server waits on (default: a fresh
    :class:`DutyCycleGate` on the monotonic clock, as the agent builds it; anything with its
    ``acquire``/``check``/``record``/``utilisation`` will do, e.g. a gate on a played
    clock). The session database lives in ``workdir``. On exit the
    server stops and the sessions close.
    """
    lc = cfg.lighting
    if lc is None:
        raise ValueError("lighting_rig: the configuration has no [lighting] section")
    lw = cfg.lorawan
    by_name = {d.name: d for d in lw.devices}
    order = [lum for zone in lc.zones.values() for lum in zone.luminaires]
    middle = spacing_m * (len(order) - 1) / 2
    medium = Medium(AsyncioClock(), seed=seed)
    gateway = medium.add_gateway("gw", (middle, 0))
    group_of: dict[str, MulticastSession] = {}
    for g in lw.multicast:
        session = MulticastSession(
            int(g.dev_addr, 16),
            bytes.fromhex(g.nwk_s_key),
            bytes.fromhex(g.app_s_key),
            g.frequency,
            g.datarate,
        )
        for member in g.devices:
            group_of.setdefault(member, session)  # a controller holds one group context here
    power = {lum: zone.rated_power for zone in lc.zones.values() for lum in zone.luminaires}
    position = {lum: (spacing_m * i, 10.0) for i, lum in enumerate(order)}
    luminaires: dict[str, LuminaireSim] = {}
    for lum in order:
        d = by_name.get(lum)
        if d is None or d.dev_addr is None or d.nwk_s_key is None or d.app_s_key is None:
            raise ValueError(f"lighting_rig: luminaire {lum!r} needs an ABP [[lorawan.devices]]")
        luminaires[lum] = LuminaireSim(
            medium,
            lum,
            position[lum],
            dev_eui=bytes.fromhex(d.dev_eui),
            dev_addr=int(d.dev_addr, 16),
            nwk_s_key=bytes.fromhex(d.nwk_s_key),
            app_s_key=bytes.fromhex(d.app_s_key),
            multicast=group_of.get(lum),
            rated_power_w=power[lum],
            reply_window=reply_window,
            reply_delay=reply_delay,
            rx2_frequency=lw.rx2_frequency,
            rx2_datarate=lw.rx2_datarate,
            hold_time=hold_time,
        )
    near = {s.device: s.near for s in lc.presence_sensors}
    sensors: dict[str, SimDevice] = {}
    for d in lw.devices:
        if d.name in luminaires or d.dev_addr is None or d.nwk_s_key is None:
            continue
        assert d.app_s_key is not None
        spot = position.get(near.get(d.name) or "", (0.0, 10.0))
        sensors[d.name] = medium.add_device(
            EndDevice(
                dev_eui=bytes.fromhex(d.dev_eui),
                device_class=d.class_,
                dev_addr=int(d.dev_addr, 16),
                nwk_s_key=bytes.fromhex(d.nwk_s_key),
                app_s_key=bytes.fromhex(d.app_s_key),
                rx2_dr=DATARATES.index(lw.rx2_datarate),
            ),
            (spot[0], spot[1] + 2.0),
            name=d.name,
            rx2_frequency=lw.rx2_frequency,
        )
    sessions = SessionStore(Path(workdir) / "lorawan.db")
    sessions.open()
    gate = gate if gate is not None else DutyCycleGate()
    rig_box: list[LightingRig] = []

    async def emit(records: Sequence[Record], priority: Priority) -> None:
        await rig_box[0]._emit(records, priority)

    server = NetworkServer(
        lw,
        gateway,
        sessions,
        emit,
        gate,
        codec_for=lambda name: get_codec(name, lw.codecs),
        airtime=lambda dr, n: airtime_of(dr, n, uplink=False),
    )
    server.provision()
    rig = LightingRig(cfg, medium, gateway, gate, server, luminaires, sensors)
    rig_box.append(rig)
    await gateway.start()
    task = asyncio.create_task(server.run())
    try:
        yield rig
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await gateway.stop()
        sessions.close()


def _addr(tx: Transmission) -> int | None:
    """The DevAddr a data frame is for (a device or a group); None for other frames."""
    try:
        frame = phy.decode(tx.payload)
    except phy.PhyError:  # a join accept is encrypted: no address to read
        return None
    return frame.dev_addr if isinstance(frame, phy.DataFrame) else None
