"""Semtech UDP packet-forwarder server against a simulated forwarder, over real loopback UDP.

Byte layouts and JSON examples come from PROTOCOL.TXT (Lora-net/packet_forwarder, protocol
version 2) and packet_forwarder/PROTOCOL.md (Lora-net/sx1302_hal).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hil.packet_forwarder import SimPacketForwarder
from passerelle.radio.base import RadioError, RxFrame, TxRequest, TxResult
from passerelle.radio.semtech_udp import SemtechUDPRadio, build_txpk

GW_A = "aa555a0000000101"
GW_B = "b827ebfffe000002"
LOOPBACK = "127.0.0.1"

# PROTOCOL.TXT section 4, the rxpk example (three frames), verbatim. The first frame's
# data holds '-', which is not base64: the spec's own example is a bad-base64 case.
SPEC_RXPK_EXAMPLE = """{"rxpk":[
    {"time":"2013-03-31T16:21:17.528002Z","tmst":3512348611,"chan":2,"rfch":0,
     "freq":866.349812,"stat":1,"modu":"LORA","datr":"SF7BW125","codr":"4/6","rssi":-35,
     "lsnr":5.1,"size":32,"data":"-DS4CGaDCdG+48eJNM3Vai-zDpsR71Pn9CPA9uCON84"},
    {"time":"2013-03-31T16:21:17.530974Z","tmst":3512348514,"chan":9,"rfch":1,
     "freq":869.1,"stat":1,"modu":"FSK","datr":50000,"rssi":-75,"size":16,
     "data":"VEVTVF9QQUNLRVRfMTIzNA=="},
    {"time":"2013-03-31T16:21:17.532038Z","tmst":3316387610,"chan":0,"rfch":0,
     "freq":863.00981,"stat":1,"modu":"LORA","datr":"SF10BW125","codr":"4/7","rssi":-38,
     "lsnr":5.5,"size":32,"data":"ysgRl452xNLep9S1NTIg2lomKDxUgn3DJ7DE+b00Ass"}
]}"""
# PROTOCOL.TXT section 4, the stat example.
SPEC_STAT_EXAMPLE = {
    "time": "2014-01-12 08:59:28 GMT",
    "lati": 46.24000,
    "long": 3.25230,
    "alti": 145,
    "rxnb": 2,
    "rxok": 2,
    "rxfw": 2,
    "ackr": 100.0,
    "dwnb": 2,
    "txnb": 2,
}
# PROTOCOL.TXT 5.5 / sx1302_hal PROTOCOL.md section 6: TX_ACK "error" values.
TX_ACK_ERROR_CODES = [
    "TOO_LATE",
    "TOO_EARLY",
    "COLLISION_PACKET",
    "COLLISION_BEACON",
    "TX_FREQ",
    "TX_POWER",
    "GPS_UNLOCKED",
]


# ---------------------------------------------------------------------------- helpers


class RawPeer(asyncio.DatagramProtocol):
    """A bare UDP socket: sends exact bytes, collects exact replies."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)

    async def reply(self, timeout: float = 1.0) -> bytes:
        async with asyncio.timeout(timeout):
            return await self.replies.get()

    async def no_reply(self, wait: float = 0.1) -> None:
        await asyncio.sleep(wait)
        assert self.replies.empty(), f"unexpected reply {self.replies.get_nowait()!r}"


async def raw_peer(port: int) -> RawPeer:
    loop = asyncio.get_running_loop()
    _, peer = await loop.create_datagram_endpoint(RawPeer, remote_addr=(LOOPBACK, port))
    return peer


def header(version: int, token: int, identifier: int, eui: str = GW_A) -> bytes:
    head = bytes((version,)) + token.to_bytes(2, "big") + bytes((identifier,))
    return head + bytes.fromhex(eui) if identifier in (0, 2, 5) else head


async def receive(radio: SemtechUDPRadio, timeout: float = 1.0) -> RxFrame:
    async with asyncio.timeout(timeout):
        return await radio.receive()


@pytest.fixture
async def radio() -> AsyncIterator[SemtechUDPRadio]:
    r = SemtechUDPRadio(LOOPBACK, 0, tx_ack_timeout=0.5)
    await r.start()
    try:
        yield r
    finally:
        await r.stop()


@pytest.fixture
async def fwd(radio: SemtechUDPRadio) -> AsyncIterator[SimPacketForwarder]:
    sim = SimPacketForwarder(LOOPBACK, radio.port, GW_A, keepalive=0.2)
    await sim.start()
    await sim.wait_pulled()
    try:
        yield sim
    finally:
        await sim.stop()


def request(**kw: Any) -> TxRequest:
    base: dict[str, Any] = {
        "payload": b"\x60\x04\x03\x02\x01\x00\x01\x00\xde\xad\xbe\xef",
        "frequency": 869.525,
        "datarate": "SF9BW125",
        "power": 27.0,
    }
    base.update(kw)
    return TxRequest(**base)


# ----------------------------------------------------------------------------- uplink


async def test_port_zero_binds_and_exposes_port(radio: SemtechUDPRadio) -> None:
    assert radio.port > 0


async def test_uplink_rxpk_delivered_with_all_fields(
    radio: SemtechUDPRadio, fwd: SimPacketForwarder
) -> None:
    payload = bytes(range(23))
    acked = await fwd.push(
        payload,
        freq=868.3,
        datr="SF12BW125",
        codr="4/6",
        rssi=-112,
        lsnr=-14.25,
        tmst=4_000_000_123,
        chan=1,
        time="2026-11-21T20:31:02.250000Z",
    )
    assert acked
    frame = await receive(radio)
    assert frame == RxFrame(
        payload=payload,
        frequency=868.3,
        datarate="SF12BW125",
        coding_rate="4/6",
        rssi=-112,
        snr=-14.25,
        tmst=4_000_000_123,
        time=datetime(2026, 11, 21, 20, 31, 2, 250000, tzinfo=UTC).timestamp(),
        gateway=GW_A,
        channel=1,
        crc_ok=True,
    )
    stats = radio.stats()
    assert stats["rx_ok"] == 1 and stats["push"] == 1 and stats["pull"] >= 1


async def test_rxframe_pushed_through_the_simulator_comes_out_equal(
    radio: SemtechUDPRadio, fwd: SimPacketForwarder
) -> None:
    sent = RxFrame(
        payload=b"\x80\x01\x02\x03\x04\x00\x07\x00\x01",
        frequency=867.9,
        datarate="SF8BW125",
        coding_rate="4/8",
        rssi=-101.0,
        snr=-2.5,
        tmst=123_456_789,
        time=1_790_000_000.125,
        gateway=GW_A,
        channel=7,
    )
    assert await fwd.push_frame(sent)
    assert await receive(radio) == sent


async def test_spec_example_datagram(radio: SemtechUDPRadio, fwd: SimPacketForwarder) -> None:
    assert await fwd.push_body(SPEC_RXPK_EXAMPLE.encode())
    frame = await receive(radio)
    assert frame.payload == base64.b64decode("ysgRl452xNLep9S1NTIg2lomKDxUgn3DJ7DE+b00Ass=")
    assert len(frame.payload) == 32
    assert (frame.frequency, frame.datarate, frame.coding_rate) == (863.00981, "SF10BW125", "4/7")
    assert (frame.rssi, frame.snr, frame.tmst, frame.channel) == (-38, 5.5, 3316387610, 0)
    assert frame.time == datetime(2013, 3, 31, 16, 21, 17, 532038, tzinfo=UTC).timestamp()
    stats = radio.stats()
    assert stats["garbage"] == {"base64": 1}  # frame 1
    assert stats["rx_unsupported"] == 1  # frame 2, FSK
    assert stats["rx_ok"] == 1


async def test_sx1302_rsig_signal_fields(radio: SemtechUDPRadio, fwd: SimPacketForwarder) -> None:
    rxpk = fwd.rxpk(b"\x40\x01\x02\x03\x04")
    del rxpk["rssi"], rxpk["lsnr"]
    rxpk["rsig"] = [{"ant": 0, "chan": 0, "rssic": -97, "lsnr": -3.5}]
    assert await fwd.push_json({"rxpk": [rxpk]})
    frame = await receive(radio)
    assert (frame.rssi, frame.snr) == (-97, -3.5)


async def test_crc_error_frames_counted_not_delivered(
    radio: SemtechUDPRadio, fwd: SimPacketForwarder
) -> None:
    assert await fwd.push(b"bad", stat=-1)
    assert await fwd.push(b"bad again", stat=-1)
    assert await fwd.push(b"no crc", stat=0)
    assert await fwd.push(b"good", stat=1)
    first, second = await receive(radio), await receive(radio)
    assert (first.payload, first.crc_ok) == (b"no crc", True)
    assert second.payload == b"good"
    stats = radio.stats()
    assert (stats["rx_crc_error"], stats["rx_no_crc"], stats["rx_ok"]) == (2, 1, 2)


async def test_stat_stored_per_gateway(radio: SemtechUDPRadio, fwd: SimPacketForwarder) -> None:
    assert await fwd.push_json({"stat": SPEC_STAT_EXAMPLE})
    gw = radio.stats()["gateways"][GW_A]
    assert gw["last_stat"] == SPEC_STAT_EXAMPLE
    assert gw["last_stat_at"] == pytest.approx(time.time(), abs=5)
    assert gw["last_seen"] == pytest.approx(time.time(), abs=5)
    assert gw["pull_address"] is not None and gw["pull_address"] != gw["push_address"]
    # The simulator's own counters, as lora_pkt_fwd reports them.
    await fwd.push(b"x")
    assert await fwd.push_stat()
    assert radio.stats()["gateways"][GW_A]["last_stat"]["rxnb"] == 1


async def test_receive_queue_full_is_counted() -> None:
    radio = SemtechUDPRadio(LOOPBACK, 0, queue_size=1)
    await radio.start()
    try:
        async with SimPacketForwarder(LOOPBACK, radio.port, GW_A) as fwd:
            assert await fwd.push(b"one") and await fwd.push(b"two")
            assert (await receive(radio)).payload == b"one"
        assert radio.stats()["rx_queue_full"] == 1
    finally:
        await radio.stop()


# ---------------------------------------------------------------------------- acks


async def test_push_ack_and_pull_ack_echo_token(radio: SemtechUDPRadio) -> None:
    peer = await raw_peer(radio.port)
    peer.send(header(2, 0xABCD, 0x00) + b'{"stat":{}}')
    assert await peer.reply() == b"\x02\xab\xcd\x01"
    peer.send(header(2, 0x0102, 0x02))
    assert await peer.reply() == b"\x02\x01\x02\x04"
    # A version 1 forwarder is answered in version 1.
    peer.send(header(1, 0xFFFE, 0x02))
    assert await peer.reply() == b"\x01\xff\xfe\x04"
    assert radio.stats()["gateways"][GW_A]["version"] == 1


async def test_push_ack_is_sent_even_for_bad_json(radio: SemtechUDPRadio) -> None:
    # PROTOCOL.TXT 3.3: the server acknowledges *all* PUSH_DATA, immediately.
    peer = await raw_peer(radio.port)
    peer.send(header(2, 7, 0x00) + b"{not json")
    assert await peer.reply() == b"\x02\x00\x07\x01"
    assert radio.stats()["garbage"] == {"json": 1}


# --------------------------------------------------------------------------- downlink


async def test_downlink_round_trip_scheduled(
    radio: SemtechUDPRadio, fwd: SimPacketForwarder
) -> None:
    at = (fwd.tmst() + 1_000_000) % (1 << 32)
    req = request(tmst=at, coding_rate="4/5", preamble=8)
    result = await radio.transmit(req)
    assert result == TxResult(True, None)
    down = await asyncio.wait_for(fwd.downlinks.get(), 1)
    assert down.payload == req.payload
    assert down.txpk == {
        "tmst": at,
        "freq": 869.525,
        "rfch": 0,
        "powe": 27,
        "modu": "LORA",
        "datr": "SF9BW125",
        "codr": "4/5",
        "ipol": True,
        "prea": 8,
        "size": len(req.payload),
        "data": base64.b64encode(req.payload).decode(),
        "ncrc": True,
    }
    assert "imme" not in down.txpk
    assert 500_000 < (down.lead_us() or 0) <= 1_000_000
    stats = radio.stats()
    assert (stats["tx_sent"], stats["tx_ok"], stats["tx_ack"], stats["tx_error"]) == (1, 1, 1, {})


async def test_downlink_immediate_with_error_none_body(
    radio: SemtechUDPRadio, fwd: SimPacketForwarder
) -> None:
    fwd.tx_ack_body = "none"  # {"txpk_ack":{"error":"NONE"}}
    result = await radio.transmit(request(tmst=None, invert_iq=False, crc=True, power=14.4))
    assert result.ok and result.error is None
    down = await asyncio.wait_for(fwd.downlinks.get(), 1)
    assert down.imme and down.tmst is None
    assert (down.txpk["ipol"], down.txpk["ncrc"], down.txpk["powe"]) == (False, False, 14)


@pytest.mark.parametrize("code", TX_ACK_ERROR_CODES)
async def test_downlink_refused_with_each_error(
    radio: SemtechUDPRadio, fwd: SimPacketForwarder, code: str
) -> None:
    fwd.next_tx_error = code
    assert await radio.transmit(request(tmst=fwd.tmst())) == TxResult(False, code)
    assert radio.stats()["tx_error"] == {code: 1}
    # One shot: the next one goes through.
    assert (await radio.transmit(request())).ok


async def test_tx_ack_variants_from_raw_gateway(radio: SemtechUDPRadio) -> None:
    peer = await raw_peer(radio.port)
    peer.send(header(2, 1, 0x02))
    await peer.reply()  # PULL_ACK

    async def exchange(tx_ack_body: bytes) -> TxResult:
        task = asyncio.create_task(radio.transmit(request()))
        resp = await peer.reply()
        assert resp[0] == 2 and resp[3] == 0x03
        assert json.loads(resp[4:])["txpk"]["imme"] is True
        token = int.from_bytes(resp[1:3], "big")
        peer.send(header(2, token, 0x05) + tx_ack_body)
        return await task

    # sx1302_hal v1.5: TX_POWER is a warning, the packet is sent at another power.
    assert await exchange(b'{"txpk_ack":{"warn":"TX_POWER","value":20}}') == TxResult(True)
    assert radio.stats()["tx_warn"] == 1
    # A C string terminator after the JSON is tolerated.
    assert await exchange(b'{"txpk_ack":{"error":"TOO_LATE"}}\x00') == TxResult(False, "TOO_LATE")
    assert await exchange(b"\x00") == TxResult(True)
    assert await exchange(b"{]") == TxResult(False, "TX_ACK_INVALID")
    assert radio.stats()["garbage"] == {"json": 1}


async def test_tx_ack_timeout(radio: SemtechUDPRadio, fwd: SimPacketForwarder) -> None:
    fwd.send_tx_ack = False
    started = time.monotonic()
    result = await radio.transmit(request())
    assert result == TxResult(False, "TX_ACK_TIMEOUT")
    assert 0.45 <= time.monotonic() - started < 1.5
    assert (await asyncio.wait_for(fwd.downlinks.get(), 1)).payload == request().payload
    assert radio.stats()["tx_error"] == {"TX_ACK_TIMEOUT": 1}


async def test_late_tx_ack_is_counted_unmatched(radio: SemtechUDPRadio) -> None:
    peer = await raw_peer(radio.port)
    peer.send(header(2, 1, 0x02))
    await peer.reply()
    radio.tx_ack_timeout = 0.1
    assert await radio.transmit(request()) == TxResult(False, "TX_ACK_TIMEOUT")
    resp = await peer.reply()
    peer.send(header(2, int.from_bytes(resp[1:3], "big"), 0x05))
    await asyncio.sleep(0.05)
    assert radio.stats()["tx_ack_unmatched"] == 1


async def test_no_gateway(radio: SemtechUDPRadio) -> None:
    assert await radio.transmit(request()) == TxResult(False, "NO_GATEWAY")
    # A gateway that only pushed cannot be reached: its down socket never opened a route.
    peer = await raw_peer(radio.port)
    peer.send(header(2, 3, 0x00) + b'{"stat":{}}')
    await peer.reply()
    assert await radio.transmit(request()) == TxResult(False, "NO_GATEWAY")
    assert await radio.transmit(request(gateway=GW_B)) == TxResult(False, "NO_GATEWAY")
    assert radio.stats()["tx_error"] == {"NO_GATEWAY": 3}


async def test_bad_requests_raise_clear_errors(
    radio: SemtechUDPRadio, fwd: SimPacketForwarder
) -> None:
    with pytest.raises(RadioError, match="tmst"):
        await radio.transmit(request(tmst=1 << 32))
    with pytest.raises(RadioError, match="datarate"):
        await radio.transmit(request(datarate="SF13BW125"))
    with pytest.raises(RadioError, match="gateway"):
        await radio.transmit(request(gateway="not-an-eui"))
    with pytest.raises(RadioError, match="payload"):
        build_txpk(request(payload=b""))


async def test_two_gateways_downlink_routed_to_the_named_one(radio: SemtechUDPRadio) -> None:
    a = SimPacketForwarder(LOOPBACK, radio.port, GW_A, keepalive=60)
    b = SimPacketForwarder(LOOPBACK, radio.port, GW_B.upper(), keepalive=60)
    async with a, b:
        await a.wait_pulled()
        await b.wait_pulled()
        assert await a.push(b"from a") and await b.push(b"from b")
        heard = {(await receive(radio)).gateway for _ in range(2)}
        assert heard == {GW_A, GW_B}

        assert (await radio.transmit(request(payload=b"to a", gateway=GW_A.upper()))).ok
        assert (await radio.transmit(request(payload=b"to b", gateway=GW_B))).ok
        assert (await asyncio.wait_for(a.downlinks.get(), 1)).payload == b"to a"
        assert (await asyncio.wait_for(b.downlinks.get(), 1)).payload == b"to b"
        assert a.downlinks.empty() and b.downlinks.empty()

        # No gateway named: the one that pulled last.
        await a.pull(wait=True)
        assert (await radio.transmit(request(payload=b"anyone"))).ok
        assert (await asyncio.wait_for(a.downlinks.get(), 1)).payload == b"anyone"
        assert b.downlinks.empty()
    assert set(radio.stats()["gateways"]) == {GW_A, GW_B}


async def test_version_1_forwarder_gets_no_tx_ack_wait(radio: SemtechUDPRadio) -> None:
    async with SimPacketForwarder(LOOPBACK, radio.port, GW_A, version=1) as v1:
        v1.send_tx_ack = False  # v1 has no TX_ACK at all
        await v1.wait_pulled()
        radio.tx_ack_timeout = 5.0
        started = time.monotonic()
        assert await radio.transmit(request()) == TxResult(True)
        assert time.monotonic() - started < 2.0  # did not wait for a TX_ACK
        assert (await asyncio.wait_for(v1.downlinks.get(), 1)).payload == request().payload
    assert radio.stats()["tx_unacknowledged"] == 1


async def test_gateway_limit_refuses_new_gateways() -> None:
    radio = SemtechUDPRadio(LOOPBACK, 0, max_gateways=1)
    await radio.start()
    try:
        peer = await raw_peer(radio.port)
        peer.send(header(2, 1, 0x02, GW_A))
        assert await peer.reply() == b"\x02\x00\x01\x04"
        peer.send(header(2, 2, 0x02, GW_B))
        await peer.no_reply()
        assert radio.stats()["garbage"] == {"gateway_limit": 1}
    finally:
        await radio.stop()


# ------------------------------------------------------------------- the simulator


async def test_simulator_clock_wraps_at_32_bits() -> None:
    sim = SimPacketForwarder(LOOPBACK, 9, GW_A, tmst_offset=(1 << 32) - 20_000)
    before = sim.tmst()
    assert before >= (1 << 32) - 20_000
    await asyncio.sleep(0.05)
    after = sim.tmst()
    assert 20_000 < after < 2_000_000  # wrapped past zero


async def test_simulator_checks_timing_against_its_clock(
    radio: SemtechUDPRadio, fwd: SimPacketForwarder
) -> None:
    fwd.check_timing = True
    assert (await radio.transmit(request(tmst=(fwd.tmst() + 500_000) % (1 << 32)))).ok
    late = await radio.transmit(request(tmst=(fwd.tmst() + 1_000) % (1 << 32)))
    assert late == TxResult(False, "TOO_LATE")
    early = await radio.transmit(request(tmst=(fwd.tmst() + 600_000_000) % (1 << 32)))
    assert early == TxResult(False, "TOO_EARLY")
    assert (await radio.transmit(request(tmst=None))).ok


# ----------------------------------------------------------------------------- garbage


def rxpk_json(**changes: Any) -> bytes:
    rxpk: dict[str, Any] = {
        "tmst": 1000,
        "freq": 868.1,
        "stat": 1,
        "modu": "LORA",
        "datr": "SF7BW125",
        "codr": "4/5",
        "rssi": -50,
        "lsnr": 9.0,
        "size": 3,
        "data": "AQID",
    }
    for key, value in changes.items():
        if value is None:
            del rxpk[key]
        else:
            rxpk[key] = value
    return json.dumps({"rxpk": [rxpk]}).encode()


GARBAGE_CASES: list[tuple[str, bytes]] = [
    ("short", b"\x02\x00"),
    ("short", header(2, 1, 0x00)[:9]),
    ("version", b"\x03\x00\x01\x00" + bytes(8) + b"{}"),
    ("version", b"\x00\x00\x01\x02" + bytes(8)),
    ("identifier", header(2, 1, 0x01)),  # a PUSH_ACK sent to the server
    ("identifier", header(2, 1, 0x03) + b'{"txpk":{}}'),  # a PULL_RESP sent to the server
    ("identifier", b"\x02\x00\x01\x09" + bytes(8)),
    ("json", header(2, 1, 0x00) + b'{"rxpk":['),
    ("json", header(2, 1, 0x00) + b"[1, 2]"),
    ("json", header(2, 1, 0x00) + b'{"a":"\xff\xfe"}'),
    ("json", header(2, 1, 0x00)),
    ("json", header(2, 1, 0x00) + b'{"stat":{"rxnb":' + b"9" * 5000 + b"}}"),
    ("json", header(2, 1, 0x00) + b"[" * 20_000 + b"]" * 20_000),
    ("base64", header(2, 1, 0x00) + rxpk_json(data="!!not base64!!")),
    ("field_type", header(2, 1, 0x00) + rxpk_json(freq="868.1")),
    ("field_type", header(2, 1, 0x00) + rxpk_json(rssi=True)),
    ("field_type", header(2, 1, 0x00) + rxpk_json(tmst=-5)),
    ("field_type", header(2, 1, 0x00) + rxpk_json(freq=10**400)),
    ("field_type", header(2, 1, 0x00) + b'{"rxpk":{"data":"AQID"}}'),
    ("field_type", header(2, 1, 0x00) + b'{"rxpk":[42]}'),
    ("field_type", header(2, 1, 0x00) + b'{"stat":"ok"}'),
    ("missing_field", header(2, 1, 0x00) + rxpk_json(datr=None)),
    ("missing_field", header(2, 1, 0x00) + rxpk_json(data=None)),
    ("datarate", header(2, 1, 0x00) + rxpk_json(datr="SF7BW126")),
    ("size_mismatch", header(2, 1, 0x00) + rxpk_json(size=4)),
]


@pytest.mark.parametrize(("cause", "datagram"), GARBAGE_CASES)
async def test_garbage_counted_and_radio_keeps_working(
    radio: SemtechUDPRadio, cause: str, datagram: bytes
) -> None:
    peer = await raw_peer(radio.port)
    peer.send(datagram)
    peer.send(header(2, 0x4242, 0x00) + rxpk_json())
    # The valid datagram sent after it is acknowledged and delivered.
    while (reply := await peer.reply()) != b"\x02\x42\x42\x01":
        assert reply[3] == 0x01  # only the garbage PUSH_DATA's own ack may come first
    assert (await receive(radio)).payload == b"\x01\x02\x03"
    assert radio.stats()["garbage"] == {cause: 1}
    assert radio.stats()["rx_ok"] == 1


async def test_bad_time_keeps_the_frame(radio: SemtechUDPRadio) -> None:
    peer = await raw_peer(radio.port)
    peer.send(header(2, 1, 0x00) + rxpk_json(time="yesterday"))
    frame = await receive(radio)
    assert frame.time is None and frame.payload == b"\x01\x02\x03"
    assert radio.stats()["garbage"] == {"time": 1}


async def test_garbage_logged_once_per_cause_per_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [1000.0]
    radio = SemtechUDPRadio(LOOPBACK, 0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="passerelle.radio.semtech_udp")
    for _ in range(5):
        radio.handle_datagram(b"\x07", (LOOPBACK, 1))
        radio.handle_datagram(b"\x09\x00\x00\x00", (LOOPBACK, 1))
    now[0] += 59.0
    radio.handle_datagram(b"\x07", (LOOPBACK, 1))
    causes = [getattr(r, "cause", "") for r in caplog.records]
    assert causes == ["radio.semtech_udp.garbage.short", "radio.semtech_udp.garbage.version"]
    now[0] += 1.0
    radio.handle_datagram(b"\x07", (LOOPBACK, 1))
    assert len(caplog.records) == 3
    assert "(5 more since the last report)" in caplog.records[-1].getMessage()
    assert radio.stats()["garbage"] == {"short": 7, "version": 5}


# -------------------------------------------------------------------------- properties

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=12,
)
_rxpk_keys = st.sampled_from(
    [
        "tmst",
        "freq",
        "stat",
        "modu",
        "datr",
        "codr",
        "rssi",
        "lsnr",
        "size",
        "data",
        "time",
        "chan",
        "rsig",
    ]  # fmt: skip
)
_rxpk_like = st.dictionaries(_rxpk_keys, _json_values | st.just("AQID") | st.just("SF7BW125"))
_header = st.builds(
    lambda v, t, i, eui: bytes((v,)) + t + bytes((i,)) + eui,
    st.sampled_from([1, 2, 3]),
    st.binary(min_size=2, max_size=2),
    st.integers(0, 7),
    st.binary(min_size=8, max_size=8),
)
_datagrams = st.one_of(
    st.binary(max_size=64),
    st.builds(bytes.__add__, _header, st.binary(max_size=64)),
    st.builds(lambda h, v: h + json.dumps(v).encode(), _header, _json_values),
    st.builds(
        lambda h, r: h + json.dumps({"rxpk": r}).encode(),
        _header,
        st.lists(_rxpk_like, min_size=1, max_size=3),
    ),
    st.builds(lambda h, a: h + json.dumps({"txpk_ack": a}).encode(), _header, _json_values),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_datagrams, max_size=6))
def test_random_datagrams_never_reach_an_unexpected_exception(datagrams: list[bytes]) -> None:
    radio = SemtechUDPRadio(LOOPBACK, 0)
    for datagram in datagrams:
        radio.handle_datagram(datagram, (LOOPBACK, 1700))
    stats = radio.stats()
    # "internal" is where the handler files exceptions it did not foresee: a bug.
    assert "internal" not in stats["garbage"]
    assert stats["rx_ok"] == stats["rx_backlog"]


async def _random_datagrams_over_udp(datagrams: list[bytes]) -> None:
    radio = SemtechUDPRadio(LOOPBACK, 0)
    await radio.start()
    try:
        peer = await raw_peer(radio.port)
        for datagram in datagrams:
            peer.send(datagram)
        peer.send(header(2, 0xBEEF, 0x00, GW_B) + rxpk_json())
        async with asyncio.timeout(2):
            while (await peer.reply()) != b"\x02\xbe\xef\x01":
                pass
            while (frame := await radio.receive()).gateway != GW_B:
                pass
        assert frame.payload == b"\x01\x02\x03"
        assert "internal" not in radio.stats()["garbage"]
    finally:
        await radio.stop()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_datagrams, max_size=8))
def test_random_datagrams_over_udp_server_still_answers(datagrams: list[bytes]) -> None:
    asyncio.run(_random_datagrams_over_udp(datagrams))
