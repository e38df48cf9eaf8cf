"""NetworkServer behaviours below the end-to-end tests: the class A downlink queue, the
choice of gateway among copies, codec failures, ADR.

Frames are built by simulated end devices (hil.lorawan_device) with the same codec a real
device uses, handed to ``NetworkServer.handle`` as the radio would, and what the server
asks the radio to send is decoded by the device again. The gate, the session store and
the crypto are the real ones; only the transmitter is a recorder (the Radio protocol's
seam), since what is checked is what the server decides to send.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hil.lorawan_device import EndDevice
from passerelle.lorawan import mac
from passerelle.lorawan.airtime import airtime_of
from passerelle.lorawan.codecs import encode_cayenne, get_codec
from passerelle.lorawan.config import DeviceConfig, LorawanConfig
from passerelle.lorawan.region import RX2_FREQUENCY
from passerelle.lorawan.server import (
    ADR_HISTORY,
    CONFIRMED_ATTEMPTS,
    QUEUE_LIMIT,
    NetworkServer,
)
from passerelle.lorawan.sessions import SessionStore
from passerelle.model import Priority, Record
from passerelle.policy.dutycycle import DutyCycleGate
from passerelle.radio.base import RxFrame, TxRequest, TxResult


class RecordingRadio:
    def __init__(self) -> None:
        self.sent: list[TxRequest] = []

    async def receive(self) -> RxFrame:  # pragma: no cover - frames are fed to handle()
        raise AssertionError("not used")

    async def transmit(self, request: TxRequest) -> TxResult:
        self.sent.append(request)
        return TxResult(True)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Rig:
    def __init__(self, tmp: Path, class_: str = "A", codec: str = "cayenne") -> None:
        key_n, key_a = bytes(range(16)), bytes(range(16, 32))
        self.cfg_dev = DeviceConfig(
            name="lum-1", dev_eui="70b3d57ed0000001", class_=class_, codec=codec,
            dev_addr="26011bda", nwk_s_key=key_n.hex(), app_s_key=key_a.hex(),
        )
        self.device = EndDevice(dev_eui=bytes.fromhex("70b3d57ed0000001"), device_class=class_,
                                dev_addr=0x26011BDA, nwk_s_key=key_n, app_s_key=key_a)
        self.cfg = LorawanConfig(devices=[self.cfg_dev])
        self.radio = RecordingRadio()
        self.sessions = SessionStore(tmp / "lorawan.db")
        self.sessions.open()
        self.stored: list[Record] = []
        self.clock = Clock()
        self.gate = DutyCycleGate(clock=lambda: self.clock.now)
        self.server = NetworkServer(
            self.cfg, self.radio, self.sessions, self._emit, self.gate,
            codec_for=lambda name: get_codec(name, {}),
            airtime=lambda dr, n: airtime_of(dr, n, uplink=False), clock=self.clock,
        )
        self.server.provision()
        self.tmst = 0

    async def _emit(self, records: Any, priority: Priority) -> None:
        self.stored.extend(records)

    def rx(self, frame: bytes, *, snr: float = 5.0, rssi: float = -90.0, gateway: str = "gw-a",
           datarate: str = "SF9BW125") -> RxFrame:
        self.tmst += 10_000_000
        return RxFrame(payload=frame, frequency=868.1, datarate=datarate, rssi=rssi, snr=snr,
                       tmst=self.tmst, gateway=gateway)

    async def uplink(self, payload: bytes = b"", *, confirmed: bool = False, **kw: Any) -> list:
        """One uplink through the server; returns the downlinks the device accepted."""
        before = len(self.radio.sent)
        data = payload or encode_cayenne([(1, "temperature", 21.5)])
        await self.server.handle(self.rx(self.device.uplink(2, data, confirmed=confirmed), **kw))
        self.clock.now += 60
        return [self.device.receive(r.payload) for r in self.radio.sent[before:]]

    def close(self) -> None:
        self.sessions.close()


@pytest.fixture
def rig(tmp_path: Path):
    r = Rig(tmp_path)
    yield r
    r.close()


# -- the class A queue ---------------------------------------------------------------------


async def test_queued_downlinks_wait_for_uplinks_and_say_more_is_pending(rig: Rig) -> None:
    assert rig.server.enqueue("lum-1", 10, b"\x01\x32") == 1
    assert rig.server.enqueue("lum-1", 11, b"\x02") == 2
    assert rig.radio.sent == []  # a class A device is not listening: nothing goes yet

    (first,) = await rig.uplink()
    assert (first.fport, first.payload) == (10, b"\x01\x32")
    assert rig.radio.sent[-1].tmst == rig.tmst + 1_000_000  # RX1, on the uplink's clock
    from passerelle.lorawan import phy

    assert phy.decode_data(rig.radio.sent[-1].payload).fpending  # one more waits

    (second,) = await rig.uplink()
    assert (second.fport, second.payload) == (11, b"\x02")
    assert not phy.decode_data(rig.radio.sent[-1].payload).fpending
    assert await rig.uplink() == []  # empty queue, unconfirmed uplink: no downlink at all
    assert rig.server.stats.counts["downlinks_delivered"] == 2
    assert rig.server.queued("lum-1") == 0


async def test_confirmed_downlink_retired_by_the_devices_ack(rig: Rig) -> None:
    rig.server.enqueue("lum-1", 10, b"\x05", confirmed=True)
    (down,) = await rig.uplink()
    assert down.confirmed and rig.device.pending_ack
    assert rig.server.queued("lum-1") == 1  # not retired until the device says so
    assert await rig.uplink() == []  # this uplink carries the ACK bit
    assert rig.server.queued("lum-1") == 0
    assert rig.server.stats.counts["downlinks_acked"] == 1


async def test_confirmed_downlink_never_acked_is_retried_then_given_up(rig: Rig) -> None:
    rig.server.enqueue("lum-1", 10, b"\x05", confirmed=True)
    for _ in range(CONFIRMED_ATTEMPTS):
        downs = await rig.uplink()
        assert [d.payload for d in downs] == [b"\x05"]
        rig.device.pending_ack = False  # the device missed it: no ACK in its next uplink
    assert await rig.uplink() == []
    assert rig.server.queued("lum-1") == 0
    assert rig.server.stats.counts["downlink_not_acked"] == 1


async def test_expired_downlinks_are_dropped_not_sent(rig: Rig) -> None:
    rig.server.enqueue("lum-1", 10, b"\x01", ttl=30)
    rig.clock.now += 31
    assert await rig.uplink() == []
    assert rig.server.stats.counts["downlink_expired"] == 1


async def test_queue_refuses_with_reasons(rig: Rig) -> None:
    with pytest.raises(ValueError, match="no device named 'nope'"):
        rig.server.enqueue("nope", 10, b"x")
    with pytest.raises(ValueError, match="FPort 0 outside"):
        rig.server.enqueue("lum-1", 0, b"x")
    # RX2 defaults to SF12 (DR0): 51 bytes at most
    with pytest.raises(ValueError, match="carries at most 51"):
        rig.server.enqueue("lum-1", 10, bytes(52))
    for _ in range(QUEUE_LIMIT):
        rig.server.enqueue("lum-1", 10, b"x")
    with pytest.raises(ValueError, match="already queued"):
        rig.server.enqueue("lum-1", 10, b"x")


# -- copies from several gateways ------------------------------------------------------------


async def test_answer_goes_through_the_gateway_with_the_best_snr(rig: Rig) -> None:
    frame = rig.device.uplink(2, encode_cayenne([(1, "temperature", 20.0)]), confirmed=True,
                              commands=[mac.LinkCheckReq()])
    weak = rig.rx(frame, snr=-5.0, rssi=-118, gateway="gw-weak")
    strong = RxFrame(payload=frame, frequency=868.1, datarate="SF9BW125", rssi=-80, snr=9.0,
                     tmst=123_456, gateway="gw-strong")
    # The weak copy arrives first and is handled; the strong one comes while it is stored.
    import asyncio

    first = asyncio.create_task(rig.server.handle(weak))
    await rig.server.handle(strong)
    await first
    (tx,) = rig.radio.sent
    assert tx.gateway == "gw-strong" and tx.tmst == 123_456 + 1_000_000
    down = rig.device.receive(tx.payload)
    (ans,) = [c for c in down.commands if isinstance(c, mac.LinkCheckAns)]
    assert ans.gw_cnt == 2 and ans.margin == round(9.0 - (-12.5))
    assert len(rig.stored) == 1 and rig.server.stats.counts["copies"] == 1


# -- codec failures ----------------------------------------------------------------------------


async def test_undecodable_payload_is_kept_as_bytes_and_counted(rig: Rig) -> None:
    await rig.uplink(b"\x01\xff")  # Cayenne channel 1, unknown type 0xff
    assert rig.server.stats.counts["codec_error"] == 1
    (rec,) = rig.stored
    assert (rec.device, rec.name, rec.value) == ("lum-1", "payload/2", b"\x01\xff")


# -- ADR ------------------------------------------------------------------------------------------


async def test_adr_moves_a_strong_device_to_a_faster_rate_and_less_power(rig: Rig) -> None:
    rig.device.adr = True
    downs: list = []
    for _ in range(ADR_HISTORY):
        downs += await rig.uplink(snr=10.0, datarate="SF12BW125")
    # SF12 floor -20 dB, margin 10 dB: (10 + 20 - 10) / 3 = 6 steps: DR0 -> DR5, then power 1
    (down,) = downs
    (req,) = [c for c in down.commands if isinstance(c, mac.LinkADRReq)]
    assert (req.data_rate, req.tx_power, req.ch_mask) == (5, 1, 0x0007)
    assert rig.device.datarate == 5 and rig.device.tx_power == 1
    await rig.uplink(snr=0.0, datarate="SF7BW125")  # carries the LinkADRAns
    assert rig.server.stats.counts["adr_accepted"] == 1
    # A fresh history at the new rate: 3 + 7.5 - 10 = 0.5 dB spare, less than a step.
    for _ in range(ADR_HISTORY):
        assert await rig.uplink(snr=3.0, datarate="SF7BW125") == []


async def test_adr_raises_power_when_the_margin_is_gone(rig: Rig) -> None:
    rig.device.adr = True
    for _ in range(ADR_HISTORY):
        await rig.uplink(snr=10.0, datarate="SF12BW125")
    await rig.uplink(snr=-8.0, datarate="SF7BW125")  # answer: power index now 1
    downs: list = []
    for _ in range(ADR_HISTORY):
        downs += await rig.uplink(snr=-8.0, datarate="SF7BW125")
    # SF7 floor -7.5: (-8 + 7.5 - 10) / 3 -> -4 steps: power back to the maximum (index 0)
    (down,) = downs
    (req,) = [c for c in down.commands if isinstance(c, mac.LinkADRReq)]
    assert (req.data_rate, req.tx_power) == (5, 0)


async def test_no_adr_without_the_bit_and_adrackreq_is_answered(rig: Rig) -> None:
    for _ in range(ADR_HISTORY + 1):
        assert await rig.uplink(snr=10.0, datarate="SF12BW125") == []
    from passerelle.lorawan import phy

    assert rig.device.dev_addr is not None and rig.device.nwk_s_key is not None
    frame = phy.encode_data(phy.MType.UnconfirmedDataUp, rig.device.dev_addr,
                            rig.device.fcnt_up, rig.device.nwk_s_key, rig.device.app_s_key,
                            fport=2, payload=b"", adr=True, adr_ack_req=True)
    await rig.server.handle(rig.rx(frame))
    assert len(rig.radio.sent) == 1  # the device asked "can you hear me": it is answered
    assert rig.radio.sent[0].frequency in (868.1, RX2_FREQUENCY)


# -- class C and multicast over the simulated medium ------------------------------------------


async def test_class_c_unicast_and_multicast_reach_devices_over_the_medium(
    tmp_path: Path,
) -> None:
    """The server's class C paths, on real time, through the radio medium: a unicast
    command reaches its luminaire only; one multicast frame reaches the whole group."""
    import asyncio

    from hil.radio_medium import AsyncioClock, Medium
    from passerelle.lorawan.config import MulticastConfig

    def keys(i: int) -> tuple[bytes, bytes]:
        return bytes([i] * 16), bytes([i + 100] * 16)

    devices, sims = [], []
    medium = Medium(AsyncioClock(), seed=3)
    gw = medium.add_gateway("gw", (0, 0))
    for i in (1, 2):
        nwk, app = keys(i)
        devices.append(DeviceConfig(
            name=f"lum-{i}", dev_eui=f"70b3d57ed000000{i}", class_="C",
            dev_addr=f"2601000{i}", nwk_s_key=nwk.hex(), app_s_key=app.hex(),
        ))
        sims.append(medium.add_device(EndDevice(
            dev_eui=bytes.fromhex(f"70b3d57ed000000{i}"), device_class="C",
            dev_addr=0x26010000 + i, nwk_s_key=nwk, app_s_key=app, rx2_dr=3,
        ), (100 * i, 0)))
    g_nwk, g_app = keys(9)
    group = MulticastConfig(name="street", dev_addr="2601ffff", nwk_s_key=g_nwk.hex(),
                            app_s_key=g_app.hex(), devices=["lum-1", "lum-2"])
    # Each luminaire's multicast context: the group's session, listening class C.
    listeners = [
        medium.add_device(EndDevice(dev_eui=bytes(7) + bytes([i]), device_class="C",
                                    dev_addr=0x2601FFFF, nwk_s_key=g_nwk, app_s_key=g_app,
                                    rx2_dr=3), (100 * i, 1), name=f"mc-{i}")
        for i in (1, 2)
    ]
    cfg = LorawanConfig(devices=devices, multicast=[group], rx2_datarate="SF9BW125")
    sessions = SessionStore(tmp_path / "lorawan.db")
    sessions.open()

    async def emit(records: Any, priority: Priority) -> None:
        return None

    server = NetworkServer(cfg, gw, sessions, emit, DutyCycleGate(),
                           codec_for=lambda name: get_codec(name, {}),
                           airtime=lambda dr, n: airtime_of(dr, n, uplink=False))
    server.provision()
    await gw.start()
    try:
        result = await server.send("lum-2", 10, b"\x01\x32")
        assert result.ok, result
        result = await server.send_multicast("street", 10, b"\x01\x0a")
        assert result.ok, result
        await asyncio.sleep(0.6)  # SF9 frames of ~16 bytes: about 0.2 s on air each
        assert [d.payload for d in sims[1].received] == [b"\x01\x32"]
        assert sims[0].received == []  # the unicast was not for lum-1 (its MIC says so)
        assert [[d.payload for d in mc.received] for mc in listeners] == [[b"\x01\x0a"]] * 2
        assert (await server.send("lum-9", 10, b"x")).error == "no device named 'lum-9'"
        counts = rig_counts(server)
        assert counts["downlinks"] == 2
        # The multicast was asked while the unicast was still on air: the concentrator
        # refused it (COLLISION_PACKET) and the server waited and sent it again.
        assert counts["tx_collision_retried"] == 1
    finally:
        await gw.stop()
        sessions.close()


def rig_counts(server: NetworkServer) -> dict[str, int]:
    return dict(server.stats.counts)
