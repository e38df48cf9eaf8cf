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

Downlinks for class A devices wait in a per-device queue (:meth:`NetworkServer.enqueue`)
until the device's next uplink opens its receive windows; FPending tells the device more
is waiting. A confirmed one stays at the head until an uplink carries the ACK bit, and is
given up (counted) after ``CONFIRMED_ATTEMPTS`` answers without it. The queue is in
memory: a restart loses what was queued, which the caller learns from ``queued()``.

When several gateways hear one transmission, the answer goes through the copy with the
best SNR (then RSSI) heard by the time it is sent, on that gateway's own clock.

ADR (when the device sets the ADR bit): the best SNR of its last ``ADR_HISTORY`` uplinks,
less the data rate's demodulation floor and an installation margin, buys one step per
3 dB: first a faster data rate (less airtime, for the device and for the band), then less
transmit power. The LinkADRReq rides in the FOpts of the next class A answer.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter, deque
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

TX_COLLISION_RETRIES = 2  # an immediate frame refused because the transmitter was busy

QUEUE_LIMIT = 16  # class A downlinks waiting per device
CONFIRMED_ATTEMPTS = 3  # answers carrying a confirmed downlink before it is given up
FOPTS_MAX = 15  # bytes of MAC commands a frame header can carry
# RP002-1.0.x EU868, maximum FRMPayload size N per data rate (no repeater): DR0-DR6.
MAX_FRM_PAYLOAD = (51, 51, 51, 115, 222, 222, 222)

ADR_HISTORY = 20  # uplinks whose best SNR decides (Semtech's recommended algorithm)
ADR_MARGIN_DB = 10.0  # installation margin kept above the demodulation floor
ADR_MAX_DR = 5  # SF7BW125: the fastest 125 kHz rate every EU868 device supports
ADR_MAX_TXPOWER = 7  # EU868 TXPower index 7 = max EIRP - 14 dB


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
class QueuedDownlink:
    fport: int
    payload: bytes
    confirmed: bool
    expires: float  # wall clock
    attempts: int = 0  # answers that carried it (a confirmed one waits for the ACK bit)


@dataclass(slots=True)
class AdrState:
    snr: deque[float] = field(default_factory=lambda: deque(maxlen=ADR_HISTORY))
    tx_power: int = 0  # the index the device is believed to use (0 = max EIRP)
    asked: tuple[int, int] | None = None  # (DR, TXPower) of a LinkADRReq not yet answered
    since_ask: int = 0  # uplinks since; the request (or its answer) is lost after a history


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
        self._copies: dict[bytes, list[RxFrame]] = {}  # PHYPayload -> every copy heard
        self._queues: dict[str, deque[QueuedDownlink]] = {}  # DevEUI -> class A downlinks
        self._adr: dict[str, AdrState] = {}  # DevEUI -> ADR history (in memory)
        self._tx_lock = asyncio.Lock()  # immediate (class C) frames, one at a time
        self._tx_free_at = 0.0  # monotonic time the last immediate frame leaves the air

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
        if self._is_copy(rx):
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

    def _is_copy(self, rx: RxFrame) -> bool:
        now = time.monotonic()
        if len(self._recent) > 4096:  # bounded: forget what is out of the window
            self._recent = {p: t for p, t in self._recent.items() if now - t < COPY_WINDOW}
            self._copies = {p: c for p, c in self._copies.items() if p in self._recent}
        first = self._recent.get(rx.payload)
        if first is not None and now - first < COPY_WINDOW:
            self._copies.setdefault(rx.payload, []).append(rx)
            return True
        self._recent[rx.payload] = now
        self._copies[rx.payload] = [rx]
        return False

    def _best_copy(self, rx: RxFrame) -> RxFrame:
        """The copy of ``rx`` with the best link, to answer through its gateway."""
        copies = self._copies.get(rx.payload) or [rx]
        return max(copies, key=lambda c: (c.snr, c.rssi))

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
        await self._class_a(self._best_copy(rx), accept, JOIN_ACCEPT_DELAY1,
                            JOIN_ACCEPT_DELAY2, dev.cfg.name)

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
            except ValueError as exc:
                # Counted, and the bytes are kept (SenML vd) rather than lost: a codec
                # fixed later, or the operator's platform, can still read them.
                self._count("codec_error", f"{name} fport {frame.fport}: {exc}", key=name)
                records = [Record(name, f"payload/{frame.fport}", plain, t)]
        if records:
            try:
                await self.emit(records, dev.priority)
            except Exception as exc:  # not stored: no ack, counter not advanced, it comes again
                self._count("store_failed", f"{name}: measurement not stored: {exc}", key=name)
                return
        await asyncio.to_thread(self.sessions.accept_uplink, session.dev_eui, fcnt)
        self.stats.counts["uplinks"] += 1
        self.stats.last_uplink[name] = t
        self._settle_queue(session.dev_eui, name, frame.ack)
        answers = self._mac_answers(commands, rx, dev)
        if frame.adr:
            adr_req = self._adr_request(dev, rx)
            if adr_req is not None:
                answers.append(adr_req)
        queue = self._queues.get(session.dev_eui)
        if confirmed or answers or queue or frame.adr_ack_req:
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

    def _mac_answers(
        self, commands: list[mac.MacCommand], rx: RxFrame, dev: Device
    ) -> list[mac.MacCommand]:
        answers: list[mac.MacCommand] = []
        for cmd in commands:
            if isinstance(cmd, mac.LinkCheckReq):
                best = self._best_copy(rx)
                sf, _ = parse_datarate(best.datarate)
                margin = max(0, min(254, round(best.snr - DEMOD_FLOOR_DB.get(sf, -20.0))))
                gateways = len({c.gateway for c in self._copies.get(rx.payload) or [rx]})
                answers.append(mac.LinkCheckAns(margin=margin, gw_cnt=min(gateways, 255)))
            elif isinstance(cmd, mac.LinkADRAns):
                self._adr_answered(dev, cmd)
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
        rx = self._best_copy(rx)
        fopts = mac.encode_commands(commands) if commands else b""
        if len(fopts) > FOPTS_MAX:  # keep what fits; the rest is asked again next time
            fopts = mac.encode_commands(_fit(commands, FOPTS_MAX))
        queue = self._queues.get(session.dev_eui)
        item = queue[0] if queue else None
        rx1_dr, rx2_dr = DATARATES.index(rx.datarate), DATARATES.index(self.cfg.rx2_datarate)
        if item is not None and len(item.payload) > MAX_FRM_PAYLOAD[min(rx1_dr, rx2_dr)]:
            # It fits the fallback window (checked when queued) but not this uplink's RX1:
            # wait for an uplink at a faster data rate rather than risk RX1 alone.
            self._count("downlink_waits_for_dr",
                        f"{dev.cfg.name}: queued downlink too large for {rx.datarate}",
                        key=dev.cfg.name)
            item = None
        fcnt_down = await asyncio.to_thread(self.sessions.take_fcnt_down, session.dev_eui)
        if item is None:
            mtype = phy.MType.UnconfirmedDataDown
            fport, payload, pending = None, b"", bool(queue)
        else:
            mtype = phy.MType.ConfirmedDataDown if item.confirmed else phy.MType.UnconfirmedDataDown
            fport, payload, pending = item.fport, item.payload, len(queue or ()) > 1
        down = phy.encode_data(
            mtype, session.dev_addr, fcnt_down, session.nwk_s_key, session.app_s_key,
            fport=fport, payload=payload, fopts=fopts, ack=ack, fpending=pending,
        )
        delay = float(self.cfg.rx1_delay)
        sent = await self._class_a(rx, down, delay, delay + 1.0, dev.cfg.name)
        if sent and ack:
            self.stats.counts["acks"] += 1
        if sent and item is not None and queue:
            item.attempts += 1
            if not item.confirmed:  # delivered as far as LoRaWAN can tell
                queue.popleft()
                self.stats.counts["downlinks_delivered"] += 1

    # -- class A queue -------------------------------------------------------------------

    def enqueue(
        self,
        device: str,
        fport: int,
        payload: bytes,
        *,
        confirmed: bool = False,
        ttl: float = 86400.0,
    ) -> int:
        """Queue a downlink for the device's next receive windows; returns the queue length.

        Raises ValueError (with the reason) for an unknown device, an FPort outside 1..223,
        a payload larger than the RX2 data rate carries, or a full queue.
        """
        dev = self._device_named(device)
        if dev is None:
            raise ValueError(f"no device named {device!r}")
        if not 1 <= fport <= 223:
            raise ValueError(f"{device}: FPort {fport} outside 1..223")
        limit = MAX_FRM_PAYLOAD[DATARATES.index(self.cfg.rx2_datarate)]
        if len(payload) > limit:
            raise ValueError(f"{device}: {len(payload)} bytes, RX2 at "
                             f"{self.cfg.rx2_datarate} carries at most {limit}")
        queue = self._queues.setdefault(dev.eui, deque())
        if len(queue) >= QUEUE_LIMIT:
            raise ValueError(f"{device}: {QUEUE_LIMIT} downlinks already queued")
        queue.append(QueuedDownlink(fport, bytes(payload), confirmed, self.clock() + ttl))
        return len(queue)

    def queued(self, device: str) -> int:
        dev = self._device_named(device)
        return len(self._queues.get(dev.eui, ())) if dev is not None else 0

    def _settle_queue(self, eui: str, name: str, acked: bool) -> None:
        """On an uplink: an ACK retires a confirmed head; expired entries go."""
        queue = self._queues.get(eui)
        if not queue:
            return
        head = queue[0]
        if head.confirmed and head.attempts:
            if acked:
                queue.popleft()
                self.stats.counts["downlinks_acked"] += 1
            elif head.attempts >= CONFIRMED_ATTEMPTS:
                queue.popleft()
                self._count("downlink_not_acked",
                            f"{name}: confirmed downlink on fport {head.fport} never "
                            f"acknowledged after {head.attempts} attempts", key=name)
        now = self.clock()
        while queue and queue[0].expires <= now:
            queue.popleft()
            self._count("downlink_expired", f"{name}: queued downlink expired", key=name)

    def _device_named(self, name: str) -> Device | None:
        return next((d for d in self.devices.values() if d.cfg.name == name), None)

    # -- ADR -----------------------------------------------------------------------------

    def _adr_request(self, dev: Device, rx: RxFrame) -> mac.LinkADRReq | None:
        state = self._adr.setdefault(dev.eui, AdrState())
        best = self._best_copy(rx)
        state.snr.append(best.snr)
        if state.asked is not None:
            state.since_ask += 1
            if state.since_ask < ADR_HISTORY:
                return None
            state.asked = None  # never answered: the request or its answer was lost
        if len(state.snr) < ADR_HISTORY:
            return None
        sf, _ = parse_datarate(best.datarate)
        dr = DATARATES.index(best.datarate)
        steps = int((max(state.snr) - DEMOD_FLOOR_DB.get(sf, -20.0) - ADR_MARGIN_DB) // 3)
        new_dr, power = dr, state.tx_power
        while steps > 0 and new_dr < ADR_MAX_DR:
            new_dr, steps = new_dr + 1, steps - 1
        while steps > 0 and power < ADR_MAX_TXPOWER:
            power, steps = power + 1, steps - 1
        while steps < 0 and power > 0:  # too little margin: more power first
            power, steps = power - 1, steps + 1
        if (new_dr, power) == (dr, state.tx_power):
            return None
        state.asked, state.since_ask = (new_dr, power), 0
        self.stats.counts["adr_requests"] += 1
        # Channel mask: the three default channels (block 0); NbTrans 1.
        return mac.LinkADRReq(data_rate=new_dr, tx_power=power, ch_mask=0x0007,
                              ch_mask_cntl=0, nb_trans=1)

    def _adr_answered(self, dev: Device, ans: mac.LinkADRAns) -> None:
        state = self._adr.setdefault(dev.eui, AdrState())
        if state.asked is None:
            return
        if ans.accepted:
            state.tx_power = state.asked[1]
            state.snr.clear()  # measured at the old rate: start over at the new one
            self.stats.counts["adr_accepted"] += 1
        else:
            self._count("adr_refused", f"{dev.cfg.name}: LinkADRReq refused ({ans})",
                        key=dev.cfg.name)
            state.snr.clear()  # ask again only after a fresh history
        state.asked = None

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
        dev = self._device_named(device)
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
        request = TxRequest(payload=frame, frequency=frequency, datarate=datarate,
                            power=self.cfg.downlink_power, tmst=None)
        # One transmit chain: a concentrator refuses an immediate frame while the previous
        # one is still on air (COLLISION_PACKET). Immediate frames go one at a time, and
        # one that collides (with the last immediate frame, or a class A answer scheduled
        # on the concentrator) waits for the air to clear and tries again.
        async with self._tx_lock:
            for attempt in range(TX_COLLISION_RETRIES + 1):
                result = await self.radio.transmit(request)
                if result.ok:
                    self._tx_free_at = time.monotonic() + airtime
                    break
                if result.error != "COLLISION_PACKET" or attempt == TX_COLLISION_RETRIES:
                    break
                self.stats.counts["tx_collision_retried"] += 1
                await asyncio.sleep(max(self._tx_free_at - time.monotonic(), airtime / 4))
        if result.ok:
            self.stats.counts["downlinks"] += 1
        else:
            self._count(f"tx_{(result.error or 'failed').lower()}",
                        f"{who}: downlink refused by the radio: {result.error}", key=who)
        return result

    # -- health --------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        out: dict[str, Any] = {"sessions": len(self.sessions), **dict(self.stats.counts)}
        out["queued"] = sum(len(q) for q in self._queues.values())
        if hasattr(self.gate, "utilisation"):
            out["duty_cycle"] = {b: round(u, 4) for b, u in self.gate.utilisation().items()}
        return out

    def _count(self, cause: str, text: str, key: str = "") -> None:
        """Count a rejected frame; log it, rate-limited per cause and device."""
        self.stats.counts[cause] += 1
        log.warning(text, extra={"cause": f"lorawan.{cause}.{key}" if key else f"lorawan.{cause}"})


def _fit(commands: list[mac.MacCommand], limit: int) -> list[mac.MacCommand]:
    out: list[mac.MacCommand] = []
    size = 0
    for cmd in commands:
        n = len(cmd.to_bytes())
        if size + n <= limit:
            out.append(cmd)
            size += n
    return out


def _group_key(name: str) -> str:
    return f"multicast:{name}"
