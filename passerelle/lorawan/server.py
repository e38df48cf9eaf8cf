"""The edge LoRaWAN network server: joins, uplinks, acknowledgements, class A/C downlinks.

It terminates LoRaWAN 1.0.x for the gateway's own devices, so a street keeps working with
no backhaul and no operator platform: frames become measurements in the durable store
(then go upstream), and commands go back within the regulatory airtime.

Order of an uplink, and why:

1. decode, find the session by DevAddr, rebuild the 32-bit counter, check the MIC;
2. decrypt and decode the payload into records and ``await emit(records)``: that is the
   durable store's ``put``, which returns only once the records survive a power cut;
3. commit the uplink counter (:mod:`passerelle.lorawan.sessions`);
4. only then acknowledge a confirmed uplink over the air.

If the agent dies between 2 and 3, the device (not acknowledged) sends the frame again with
the same counter and it is stored twice: a duplicate, never a loss. The reverse order could
lose a measurement the device believes delivered. A replay (a counter at or below the last
accepted one) is rejected and counted, except the exact last counter of a confirmed uplink:
that is a retransmission whose acknowledgement was lost, so it is acknowledged again
without storing it twice.

Every transmission goes through the duty-cycle gate first; class A windows are fixed in
time (RX1, then RX2), so a refused window falls back to the next, and a frame that fits in
neither is dropped and counted, never sent.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..model import Priority, Record
from ..radio.base import TMST_MODULO, Radio, RxFrame, TxRequest, TxResult, parse_datarate
from . import crypto, mac, phy
from .config import DeviceConfig, LorawanConfig, MulticastConfig
from .region import DATARATES, DEMOD_FLOOR_DB, JOIN_ACCEPT_DELAY1, JOIN_ACCEPT_DELAY2
from .sessions import Session, SessionStore

log = logging.getLogger("passerelle.lorawan")

Emit = Callable[[Sequence[Record], Priority], Awaitable[None]]
# payload, fport, device name, time -> records; raises ValueError on a payload it cannot read
Codec = Callable[[bytes, int, str, float], list[Record]]

# The seven most significant bits of a DevAddr are the NwkID (LSBs of a type 0 NetID).
NWKID_SHIFT = 25
MAX_HANDLERS = 64  # frames handled at once (see NetworkServer.run)
# Copies of one uplink heard by several gateways arrive within tens of milliseconds; a
# device's retransmission comes seconds later (ACK_TIMEOUT 1-3 s). Copies inside this
# window are the same transmission: handled once, never acknowledged twice.
COPY_WINDOW = 0.2  # s


@dataclass(slots=True)
class Device:
    cfg: DeviceConfig
    codec: Codec
    priority: Priority
    dev_eui: bytes = b""
    app_key: bytes | None = None
    join_eui: bytes | None = None

    @property
    def eui(self) -> str:
        return self.cfg.dev_eui.lower()


@dataclass(slots=True)
class Window:
    delay: float  # seconds after the end of the uplink
    frequency: float
    datarate: str


@dataclass(slots=True)
class ServerStats:
    counts: Counter[str] = field(default_factory=Counter)
    last_uplink: dict[str, float] = field(default_factory=dict)  # device -> Unix time


class NetworkServer:
    def __init__(
        self,
        cfg: LorawanConfig,
        radio: Radio,
        sessions: SessionStore,
        emit: Emit,
        gate: Any,
        codec_for: Callable[[str], Codec],
        airtime: Callable[[str, int], float],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cfg = cfg
        self.radio = radio
        self.sessions = sessions
        self.emit = emit
        self.gate = gate
        self.airtime = airtime  # (datarate, PHYPayload length) -> seconds, downlink
        self.clock = clock
        self.stats = ServerStats()
        self.net_id = int(cfg.net_id, 16)
        self.devices: dict[str, Device] = {}
        for d in cfg.devices:
            dev = Device(d, codec_for(d.codec), Priority[d.priority.upper()],
                         dev_eui=bytes.fromhex(d.dev_eui))
            if d.app_key is not None and d.join_eui is not None:
                dev.app_key = bytes.fromhex(d.app_key)
                dev.join_eui = bytes.fromhex(d.join_eui)
            self.devices[dev.eui] = dev
        self.groups: dict[str, MulticastConfig] = {g.name: g for g in cfg.multicast}
        self._locks: dict[int | bytes, asyncio.Lock] = {}  # by DevAddr (data), DevEUI (joins)
        self._tasks: set[asyncio.Task[None]] = set()
        self._recent: dict[bytes, float] = {}  # PHYPayload -> monotonic time first heard

    # -- lifetime ------------------------------------------------------------------------

    def provision(self) -> None:
        """ABP devices and multicast groups from the config (counters kept across restarts)."""
        now = self.clock()
        for dev in self.devices.values():
            c = dev.cfg
            if c.dev_addr and c.nwk_s_key and c.app_s_key:
                self.sessions.provision_abp(dev.eui, int(c.dev_addr, 16),
                                            bytes.fromhex(c.nwk_s_key),
                                            bytes.fromhex(c.app_s_key), now)
        for g in self.groups.values():
            self.sessions.provision_abp(_group_key(g.name), int(g.dev_addr, 16),
                                        bytes.fromhex(g.nwk_s_key), bytes.fromhex(g.app_s_key),
                                        now)

    async def run(self) -> None:
        """Receive forever; each frame is handled in its own task (one at a time per DevAddr).

        At most MAX_HANDLERS frames are in hand at once (a downlink waits up to a second for
        its TX_ACK): beyond that, frames wait in the radio's bounded queue, which counts
        what it has to drop, instead of tasks piling up without bound under a flood.
        """
        slots = asyncio.Semaphore(MAX_HANDLERS)
        try:
            while True:
                await slots.acquire()
                try:
                    rx = await self.radio.receive()
                except BaseException:
                    slots.release()
                    raise
                task = asyncio.create_task(self._handle_safely(rx, slots))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        finally:
            # Stopping: frames in hand are abandoned before the sessions close under them
            # (nothing was acknowledged for them, so their devices send them again).
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle_safely(self, rx: RxFrame, slots: asyncio.Semaphore) -> None:
        try:
            await self.handle(rx)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug on one frame must not stop the radio
            self._count("internal_error", f"frame handling failed: {type(exc).__name__}: {exc}")
            log.debug("frame handling failed", exc_info=exc)
        finally:
            slots.release()

    # -- uplinks -------------------------------------------------------------------------

    async def handle(self, rx: RxFrame) -> None:
        try:
            frame = phy.decode(rx.payload)
        except phy.PhyError as exc:
            self._count("bad_frame", f"bad frame from {rx.gateway or 'radio'}: {exc}")
            return
        if self._is_copy(rx.payload):
            self.stats.counts["copies"] += 1  # the same transmission via another gateway
            return
        if isinstance(frame, phy.JoinRequest):
            # One join at a time per device: two in flight would both pass the DevNonce
            # check before either is saved.
            async with self._locks.setdefault(frame.dev_eui, asyncio.Lock()):
                await self._join(rx, frame)
        elif isinstance(frame, phy.DataFrame) and frame.uplink:
            lock = self._locks.setdefault(frame.dev_addr, asyncio.Lock())
            async with lock:
                await self._uplink(rx, frame)
        else:
            self._count("unexpected_mtype", f"ignored {frame.mtype.name} frame")

    def _is_copy(self, payload: bytes) -> bool:
        now = time.monotonic()
        if len(self._recent) > 4096:  # bounded: forget what is out of the window
            self._recent = {p: t for p, t in self._recent.items() if now - t < COPY_WINDOW}
        first = self._recent.get(payload)
        if first is not None and now - first < COPY_WINDOW:
            return True
        self._recent[payload] = now
        return False

    async def _join(self, rx: RxFrame, req: phy.JoinRequest) -> None:
        eui = req.dev_eui.hex()
        dev = self.devices.get(eui)
        if dev is None or dev.app_key is None or dev.join_eui != req.join_eui:
            self._count("unknown_device", f"join from unknown DevEUI {eui}", key=eui)
            return
        if not phy.verify_join_request(dev.app_key, rx.payload):
            self._count("mic_failed", f"{dev.cfg.name}: JoinRequest MIC mismatch", key=eui)
            return
        old = self.sessions.get(eui)
        # 1.0.4: DevNonce is a counter that only grows; an old one is a replayed join.
        if old is not None and old.dev_nonce is not None and req.dev_nonce <= old.dev_nonce:
            self._count("join_replay",
                        f"{dev.cfg.name}: DevNonce {req.dev_nonce} not above {old.dev_nonce}",
                        key=eui)
            return
        join_nonce = (old.join_nonce if old else 0) + 1
        dev_addr = self._allocate_addr(eui)
        nwk, app = crypto.derive_session_keys(dev.app_key, join_nonce, self.net_id, req.dev_nonce)
        await asyncio.to_thread(self.sessions.save_join, eui, dev_addr, nwk, app,
                                req.dev_nonce, join_nonce, self.clock())
        accept = phy.encode_join_accept(
            dev.app_key, join_nonce, self.net_id, dev_addr, rx1_dr_offset=0,
            rx2_dr=DATARATES.index(self.cfg.rx2_datarate), rx_delay=self.cfg.rx1_delay,
        )
        self.stats.counts["joins"] += 1
        log.info("%s joined as %08x", dev.cfg.name, dev_addr, extra={"cause": "lorawan.join"})
        await self._class_a(rx, accept, JOIN_ACCEPT_DELAY1, JOIN_ACCEPT_DELAY2, dev.cfg.name)

    def _allocate_addr(self, eui: str) -> int:
        """A DevAddr stable for a DevEUI, inside our NwkID, unused by another session."""
        nwk_id = self.net_id & 0x7F
        seed = hashlib.sha256(bytes.fromhex(eui)).digest()
        for i in range(1 << 16):
            low = int.from_bytes(hashlib.sha256(seed + i.to_bytes(2, "big")).digest()[:4], "big")
            addr = (nwk_id << NWKID_SHIFT) | (low & ((1 << NWKID_SHIFT) - 1))
            users = [s for s in self.sessions.by_addr(addr) if s.dev_eui != eui]
            if not users:
                return addr
        raise RuntimeError("no free DevAddr")  # 2^25 addresses: not with a street's devices

    async def _uplink(self, rx: RxFrame, frame: phy.DataFrame) -> None:
        found = self._match_session(rx.payload, frame)
        if found is None:
            return
        session, fcnt, retransmission = found
        dev = self.devices.get(session.dev_eui)
        if dev is None:  # a session whose device left the config
            self._count("unknown_device", f"{session.dev_eui}: not configured any more",
                        key=session.dev_eui)
            return
        name = dev.cfg.name
        confirmed = frame.mtype is phy.MType.ConfirmedDataUp
        if retransmission:
            if confirmed:  # the ack was lost: acknowledge again, store nothing twice
                self.stats.counts["retransmissions"] += 1
                await self._answer(rx, session, dev, ack=True, commands=[])
            else:
                self._count("duplicate", f"{name}: frame {fcnt} received again", key=name)
            return
        key = session.nwk_s_key if frame.fport == 0 else session.app_s_key
        plain = phy.decrypt_payload(frame, key, fcnt) if frame.frm_payload else b""
        commands: list[mac.MacCommand] = []
        try:
            commands = mac.parse_uplink_commands(plain if frame.fport == 0 else frame.fopts)
        except phy.PhyError as exc:
            self._count("bad_mac_command", f"{name}: {exc}", key=name)
        t = rx.time if rx.time is not None else self.clock()
        records: list[Record] = []
        if frame.fport and plain:
            try:
                records = dev.codec(plain, frame.fport, name, t)
            except ValueError as exc:  # counted; the frame's counter still advances
                self._count("codec_error", f"{name} fport {frame.fport}: {exc}", key=name)
        if records:
            try:
                await self.emit(records, dev.priority)
            except Exception as exc:  # not stored: no ack, counter not advanced, it comes again
                self._count("store_failed", f"{name}: measurement not stored: {exc}", key=name)
                return
        await asyncio.to_thread(self.sessions.accept_uplink, session.dev_eui, fcnt)
        self.stats.counts["uplinks"] += 1
        self.stats.last_uplink[name] = t
        answers = self._mac_answers(commands, rx)
        if confirmed or answers:
            await self._answer(rx, session, dev, ack=confirmed, commands=answers)

    def _match_session(
        self, raw: bytes, frame: phy.DataFrame
    ) -> tuple[Session, int, bool] | None:
        """(session, 32-bit counter, is a retransmission) for the session whose MIC matches."""
        candidates = self.sessions.by_addr(frame.dev_addr)
        if not candidates:
            self._count("unknown_devaddr", f"frame for unknown DevAddr {frame.dev_addr:08x}",
                        key=f"{frame.dev_addr:08x}")
            return None
        replay = False
        for s in candidates:
            fcnt = phy.fcnt32(s.fcnt_up, frame.fcnt, self.cfg.max_fcnt_gap)
            if fcnt is not None and phy.verify_mic(raw, s.nwk_s_key, fcnt):
                return s, fcnt, False
            if s.fcnt_up is not None:
                last = s.fcnt_up
                same = (last & ~0xFFFF) | frame.fcnt
                if same <= last and phy.verify_mic(raw, s.nwk_s_key, same):
                    if same == last:
                        return s, last, True
                    replay = True
        where = f"DevAddr {frame.dev_addr:08x}"
        if replay:
            self._count("replay", f"{where}: replayed counter {frame.fcnt}", key=where)
        else:
            self._count("mic_failed", f"{where}: MIC mismatch", key=where)
        return None

    def _mac_answers(self, commands: list[mac.MacCommand], rx: RxFrame) -> list[mac.MacCommand]:
        answers: list[mac.MacCommand] = []
        for cmd in commands:
            if isinstance(cmd, mac.LinkCheckReq):
                sf, _ = parse_datarate(rx.datarate)
                margin = max(0, min(254, round(rx.snr - DEMOD_FLOOR_DB.get(sf, -20.0))))
                answers.append(mac.LinkCheckAns(margin=margin, gw_cnt=1))
            elif isinstance(cmd, mac.DeviceTimeReq):
                t = rx.time if rx.time is not None else self.clock()
                answers.append(mac.DeviceTimeAns(mac.gps_seconds_from_unix(t)))
            else:
                self.stats.counts[f"mac_{type(cmd).__name__}"] += 1
        return answers

    async def _answer(
        self,
        rx: RxFrame,
        session: Session,
        dev: Device,
        ack: bool,
        commands: list[mac.MacCommand],
    ) -> None:
        fopts = mac.encode_commands(commands) if commands else b""
        fcnt_down = await asyncio.to_thread(self.sessions.take_fcnt_down, session.dev_eui)
        down = phy.encode_data(
            phy.MType.UnconfirmedDataDown, session.dev_addr, fcnt_down, session.nwk_s_key,
            session.app_s_key, fopts=fopts, ack=ack,
        )
        delay = float(self.cfg.rx1_delay)
        if await self._class_a(rx, down, delay, delay + 1.0, dev.cfg.name) and ack:
            self.stats.counts["acks"] += 1

    # -- downlinks -----------------------------------------------------------------------

    async def _class_a(
        self, rx: RxFrame, payload: bytes, delay1: float, delay2: float, who: str
    ) -> bool:
        """Send in RX1, else RX2; both through the duty-cycle gate. True when sent."""
        windows = (
            Window(delay1, rx.frequency, rx.datarate),  # EU868 RX1: same channel, DR offset 0
            Window(delay2, self.cfg.rx2_frequency, self.cfg.rx2_datarate),
        )
        for w in windows:
            airtime = self.airtime(w.datarate, len(payload))
            decision = self.gate.check(w.frequency, airtime, self.cfg.downlink_power)
            if not decision.ok:
                self.stats.counts["duty_cycle_deferred_window"] += 1
                continue
            self.gate.record(w.frequency, airtime)
            result = await self.radio.transmit(TxRequest(
                payload=payload, frequency=w.frequency, datarate=w.datarate,
                power=self.cfg.downlink_power, tmst=(rx.tmst + int(w.delay * 1e6)) % TMST_MODULO,
                gateway=rx.gateway,
            ))
            if result.ok:
                self.stats.counts["downlinks"] += 1
                return True
            self._count(f"tx_{(result.error or 'failed').lower()}",
                        f"{who}: downlink refused by the radio: {result.error}", key=who)
        self._count("downlink_dropped", f"{who}: no receive window could take the downlink",
                    key=who)
        return False

    async def send(
        self,
        device: str,
        fport: int,
        payload: bytes,
        *,
        confirmed: bool = False,
        deadline: float | None = None,
    ) -> TxResult:
        """A class C downlink now (RX2 parameters), or when the duty cycle allows before
        ``deadline`` (the gate's clock); refused with a reason otherwise, never sent late."""
        dev = next((d for d in self.devices.values() if d.cfg.name == device), None)
        if dev is None:
            return TxResult(False, f"no device named {device!r}")
        if dev.cfg.class_ != "C":
            return TxResult(False, f"{device} is class A: it only listens after its uplinks")
        session = self.sessions.get(dev.eui)
        if session is None:
            return TxResult(False, f"{device} has not joined")
        mtype = phy.MType.ConfirmedDataDown if confirmed else phy.MType.UnconfirmedDataDown
        return await self._class_c(session, mtype, fport, payload, deadline, device)

    async def send_multicast(
        self, group: str, fport: int, payload: bytes, *, deadline: float | None = None
    ) -> TxResult:
        """One frame for a whole group (a street): one airtime instead of one per luminaire."""
        g = self.groups.get(group)
        if g is None:
            return TxResult(False, f"no multicast group named {group!r}")
        session = self.sessions.get(_group_key(group))
        if session is None:
            return TxResult(False, f"multicast group {group} not provisioned")
        return await self._class_c(session, phy.MType.UnconfirmedDataDown, fport, payload,
                                   deadline, f"multicast {group}", g.frequency, g.datarate)

    async def _class_c(
        self,
        session: Session,
        mtype: phy.MType,
        fport: int,
        payload: bytes,
        deadline: float | None,
        who: str,
        frequency: float | None = None,
        datarate: str | None = None,
    ) -> TxResult:
        frequency = frequency or self.cfg.rx2_frequency
        datarate = datarate or self.cfg.rx2_datarate
        fcnt_down = await asyncio.to_thread(self.sessions.take_fcnt_down, session.dev_eui)
        frame = phy.encode_data(mtype, session.dev_addr, fcnt_down, session.nwk_s_key,
                                session.app_s_key, fport=fport, payload=payload)
        airtime = self.airtime(datarate, len(frame))
        decision = await self.gate.acquire(frequency, airtime, self.cfg.downlink_power, deadline)
        if not decision.ok:
            self._count("duty_cycle_refused", f"{who}: {decision.reason}", key=who)
            return TxResult(False, f"DUTY_CYCLE: {decision.reason}")
        result = await self.radio.transmit(TxRequest(
            payload=frame, frequency=frequency, datarate=datarate,
            power=self.cfg.downlink_power, tmst=None,
        ))
        if result.ok:
            self.stats.counts["downlinks"] += 1
        else:
            self._count(f"tx_{(result.error or 'failed').lower()}",
                        f"{who}: downlink refused by the radio: {result.error}", key=who)
        return result

    # -- health --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sessions": len(self.sessions), **dict(self.stats.counts)}
        if hasattr(self.gate, "utilisation"):
            out["duty_cycle"] = {b: round(u, 4) for b, u in self.gate.utilisation().items()}
        return out

    def _count(self, cause: str, text: str, key: str = "") -> None:
        """Count a rejected frame; log it, rate-limited per cause and device."""
        self.stats.counts[cause] += 1
        log.warning(text, extra={"cause": f"lorawan.{cause}.{key}" if key else f"lorawan.{cause}"})


def _group_key(name: str) -> str:
    return f"multicast:{name}"
