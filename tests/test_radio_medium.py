"""The simulated radio medium: time on air, collisions and capture, path loss, random loss,
class A windows, class C listening, confirmed retransmissions, and (real time, real UDP)
devices -> medium -> simulated lora_pkt_fwd -> SemtechUDPRadio.

Everything except the last test runs on a VirtualClock: instant and deterministic.
"""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hil.lorawan_device import EndDevice
from hil.packet_forwarder import SimPacketForwarder
from hil.radio_medium import (
    AsyncioClock,
    ForwarderLink,
    LogDistance,
    Medium,
    SimGateway,
    VirtualClock,
    noise_floor_dbm,
    txpk_to_request,
)
from passerelle.lorawan import phy
from passerelle.lorawan.airtime import airtime_of
from passerelle.radio.base import RadioError, TxRequest
from passerelle.radio.semtech_udp import SemtechUDPRadio

# Arbitrary session keys (the first is the AES-128 example key of NIST SP 800-38B): the
# medium does not care, the devices only need the downlinks built with the same keys.
NWK_S_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
APP_S_KEY = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
APP_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
GW_EUI = "aa555a0000000042"


def abp(n: int = 1, device_class: str = "A") -> EndDevice:
    return EndDevice(
        dev_eui=bytes.fromhex(f"70b3d57ed00000{n:02x}"), dev_addr=0x26010000 + n,
        nwk_s_key=NWK_S_KEY, app_s_key=APP_S_KEY, device_class=device_class,
    )


def downlink(dev: EndDevice, fcnt: int, *, ack: bool = False, payload: bytes = b"\x01") -> bytes:
    """A downlink as a network server would build it for ``dev``."""
    assert dev.dev_addr is not None
    return phy.encode_data(phy.MType.UnconfirmedDataDown, dev.dev_addr, fcnt, NWK_S_KEY,
                           APP_S_KEY, fport=10, payload=payload, ack=ack)


def world(**options) -> tuple[VirtualClock, Medium, SimGateway]:
    clock = VirtualClock()
    medium = Medium(clock, **options)
    return clock, medium, medium.add_gateway(GW_EUI, (0, 0))


def expected_rssi(power: float, distance: float, pl0: float = 31.2, n: float = 3.0) -> float:
    return power - (pl0 + 10 * n * math.log10(distance))


# ------------------------------------------------------------------------ time on air


@pytest.mark.parametrize("datarate", ["SF7BW125", "SF9BW125", "SF12BW125", "SF7BW250"])
def test_time_on_air_matches_airtime_of(datarate):
    clock, medium, gw = world()
    dev = medium.add_device(abp(), (100, 0), datarate=datarate)
    dev.send(1, b"x" * 20)
    up = dev.uplinks[0].transmission
    size = len(up.payload)
    assert up.airtime == pytest.approx(airtime_of(datarate, size, True))
    clock.run_until(up.end - 1e-6)
    assert gw.heard == []  # not before the last symbol is in
    clock.run_until(up.end)
    assert len(gw.heard) == 1
    assert gw.heard[0].tmst == round(up.end * 1_000_000)  # end of reception on the counter
    # Downlinks carry no CRC: a different (shorter) airtime for the same length.
    result = gw.send(TxRequest(b"y" * size, 869.525, datarate, 14.0))
    assert result.ok
    clock.advance(0)
    down = gw.sent[0]
    assert down.airtime == pytest.approx(airtime_of(datarate, size, False))
    assert down.airtime <= up.airtime  # 16 CRC bits fewer (may fit in the same block)


# ----------------------------------------------------------------------- collisions


def two_frames(power_a: float, power_b: float, *, sf_b: str = "SF7BW125",
               freq_b: float = 868.1, offset: float = 0.01):
    clock, medium, gw = world()
    a = medium.add_device(abp(1), (200, 0))
    b = medium.add_device(abp(2), (0, 200))  # same distance: only the power differs
    ta = medium.transmit(a, b"A" * 20, 868.1, "SF7BW125", power_a, invert_iq=False)
    clock.advance(offset)
    tb = medium.transmit(b, b"B" * 20, freq_b, sf_b, power_b, invert_iq=False)
    clock.run()
    outcome = {r.transmission.payload[:1]: r.outcome for r in medium.receptions}
    assert ta.overlaps(tb) == (offset < ta.airtime)
    return outcome, [f.payload[:1] for f in gw.heard]


def test_overlapping_same_sf_same_channel_collide():
    outcome, heard = two_frames(14, 12)  # 2 dB apart: no capture
    assert outcome == {b"A": "collision", b"B": "collision"}
    assert heard == []


@pytest.mark.parametrize(("pa", "pb", "survivor"), [(14, 8, b"A"), (7, 14, b"B"), (14, 2, b"A")])
def test_capture_effect_stronger_by_6_db_survives(pa, pb, survivor):
    outcome, heard = two_frames(pa, pb)
    loser = b"B" if survivor == b"A" else b"A"
    assert outcome == {survivor: "ok", loser: "collision"}
    assert heard == [survivor]


def test_just_under_capture_threshold_both_lost():
    outcome, _ = two_frames(14, 8.1)  # 5.9 dB
    assert outcome == {b"A": "collision", b"B": "collision"}


def test_different_sf_or_channel_or_time_do_not_collide():
    for kwargs in ({"sf_b": "SF9BW125"}, {"freq_b": 868.3}, {"offset": 0.5}):
        outcome, heard = two_frames(14, 14, **kwargs)
        assert outcome == {b"A": "ok", b"B": "ok"}, kwargs
        assert sorted(heard) == [b"A", b"B"]


def test_gateway_transmitting_does_not_hear_an_uplink():
    clock, medium, gw = world()
    dev = medium.add_device(abp(), (100, 0))
    assert gw.send(TxRequest(b"d" * 30, 869.525, "SF12BW125", 14.0)).ok
    clock.advance(0.1)
    dev.send(1, b"up")
    clock.run()
    assert [r.outcome for r in medium.receptions if r.receiver == gw.name] == ["half_duplex"]


# ------------------------------------------------------------------------ path loss


def test_rssi_follows_the_log_distance_model():
    clock, medium, gw = world()
    distances = [10, 100, 500, 1000, 2000]
    for i, d in enumerate(distances):
        dev = medium.add_device(abp(i + 1), (d, 0))
        clock.advance(1.0)
        dev.send(1, b"t")
    clock.run()
    rssi = [r.rssi for r in medium.receptions]
    assert rssi == sorted(rssi, reverse=True)
    for d, frame, exact in zip(distances, gw.heard, medium.receptions, strict=True):
        assert exact.rssi == pytest.approx(expected_rssi(14, d))
        assert frame.rssi == round(expected_rssi(14, d))
        noise = -174 + 10 * math.log10(125e3) + 6
        assert exact.snr == pytest.approx(exact.rssi - noise)
        assert abs(frame.snr - exact.snr) <= 0.125


def test_frames_beyond_range_are_lost_and_sf12_reaches_further():
    model = LogDistance()
    noise = noise_floor_dbm(125)
    sf7_range = model.range_m(14 - (noise - 7.5))  # budget to the SF7 floor
    sf12_range = model.range_m(14 - (noise - 20.0))
    assert 2_000 < sf7_range < sf12_range  # sanity of the urban defaults
    cases = [(0.9 * sf7_range, "SF7BW125", "ok"), (1.1 * sf7_range, "SF7BW125", "below_floor"),
             (1.1 * sf7_range, "SF12BW125", "ok"), (1.1 * sf12_range, "SF12BW125", "below_floor")]
    for distance, datarate, outcome in cases:
        clock, medium, gw = world()
        dev = medium.add_device(abp(), (distance, 0), datarate=datarate)
        dev.send(1, b"far")
        clock.run()
        assert [r.outcome for r in medium.receptions] == [outcome], (distance, datarate)
        assert len(gw.heard) == (outcome == "ok")


def test_antenna_gain_and_exponent_are_applied():
    clock = VirtualClock()
    medium = Medium(clock, path_loss=LogDistance(pl0_db=40.0, exponent=3.5))
    gw = medium.add_gateway(GW_EUI, (0, 0, 10), antenna_gain_db=3.0)
    dev = medium.add_device(abp(), (300, 400, 10))  # 500 m
    dev.send(1, b"g")
    clock.run()
    assert medium.receptions[0].rssi == pytest.approx(14 + 3 - 40 - 35 * math.log10(500))
    assert gw.heard


# ---------------------------------------------------------------------- random loss


def loss_outcomes(seed: int, rate: float, frames: int = 400) -> list[bool]:
    clock, medium, gw = world(loss_rate=rate, seed=seed)
    dev = medium.add_device(abp(), (50, 0))
    for _ in range(frames):
        medium.transmit(dev, b"r" * 10, 868.1, "SF7BW125", 14, invert_iq=False)
        clock.advance(0.1)
    clock.run()
    return [r.ok for r in medium.receptions]


def test_seeded_random_loss_rate_is_as_configured_and_reproducible():
    outcomes = loss_outcomes(seed=7, rate=0.3)
    lost = outcomes.count(False) / len(outcomes)
    assert 0.24 < lost < 0.36  # 400 draws: 3 sigma is about 0.07
    assert loss_outcomes(seed=7, rate=0.3) == outcomes
    assert loss_outcomes(seed=8, rate=0.3) != outcomes
    assert all(loss_outcomes(seed=7, rate=0.0, frames=50))


# ------------------------------------------------------------------ class A windows


def class_a_uplink(**device_options):
    clock, medium, gw = world()
    dev = medium.add_device(abp(), (300, 0), **device_options)
    dev.send(2, b"hello")
    up = dev.uplinks[0].transmission
    clock.run_until(up.end)
    return clock, medium, gw, dev, up, gw.heard[0]


@pytest.mark.parametrize(
    ("lead_us", "where", "datarate", "heard"),
    [
        (1_000_000, "uplink", "SF7BW125", True),  # RX1: uplink channel and rate
        (2_000_000, 869.525, "SF12BW125", True),  # RX2: 869.525 MHz, DR0
        (1_500_000, "uplink", "SF7BW125", False),  # between the windows
        (1_000_000, 869.525, "SF7BW125", False),  # RX1 time, wrong channel
        (1_000_000, "uplink", "SF9BW125", False),  # RX1 time, wrong rate
        (2_000_000, "uplink", "SF7BW125", False),  # RX2 time, RX1 parameters
        (3_000_000, 869.525, "SF12BW125", False),  # after RX2
        (1_030_000, "uplink", "SF7BW125", False),  # 30 ms late: preamble missed
    ],
)
def test_class_a_hears_only_in_rx1_and_rx2(lead_us, where, datarate, heard):
    clock, medium, gw, dev, up, frame = class_a_uplink()
    freq = up.frequency if where == "uplink" else where
    got = []
    dev.on_payload = got.append
    payload = downlink(dev.device, 0, payload=b"\x42")
    assert gw.send(TxRequest(payload, freq, datarate, 14.0, tmst=frame.tmst + lead_us)).ok
    clock.run()
    assert [d.payload for d in dev.received] == ([b"\x42"] if heard else [])
    assert [d.payload for d in got] == ([b"\x42"] if heard else [])


def test_class_a_downlink_in_rx1_closes_rx2_and_follows_rx_delay():
    clock, medium, gw, dev, up, frame = class_a_uplink()
    gw.send(TxRequest(downlink(dev.device, 0, payload=b"1"), up.frequency, "SF7BW125", 14,
                      tmst=frame.tmst + 1_000_000))
    gw.send(TxRequest(downlink(dev.device, 1, payload=b"2"), 869.525, "SF12BW125", 14,
                      tmst=frame.tmst + 2_000_000))
    clock.run()
    assert [d.payload for d in dev.received] == [b"1"]
    # RX1 delay of 5 s (as set by a JoinAccept): 1 s is now wrong, 5 s is right.
    clock, medium, gw = world()
    device = abp()
    device.rx_delay = 5
    dev = medium.add_device(device, (300, 0))
    dev.send(2, b"x")
    clock.run_until(dev.uplinks[0].transmission.end)
    tmst, freq = gw.heard[0].tmst, gw.heard[0].frequency
    gw.send(TxRequest(downlink(device, 0, payload=b"a"), freq, "SF7BW125", 14,
                      tmst=tmst + 1_000_000))
    gw.send(TxRequest(downlink(device, 1, payload=b"b"), freq, "SF7BW125", 14,
                      tmst=tmst + 5_000_000))
    clock.run()
    assert [d.payload for d in device.received] == [b"b"]


def test_class_a_downlink_below_the_floor_is_lost():
    clock, medium, gw, dev, up, frame = class_a_uplink()
    gw.send(TxRequest(downlink(dev.device, 0), up.frequency, "SF7BW125", -60.0,
                      tmst=frame.tmst + 1_000_000))
    clock.run()
    assert dev.received == []
    assert [r.outcome for r in medium.receptions if r.receiver == dev.name] == ["below_floor"]


def test_downlink_for_another_device_is_refused_not_crashing():
    clock, medium, gw, dev, up, frame = class_a_uplink()
    other = abp(9)
    gw.send(TxRequest(downlink(other, 0), up.frequency, "SF7BW125", 14,
                      tmst=frame.tmst + 1_000_000))
    clock.run()
    assert dev.received == [] and dev.rejected == 1


# ------------------------------------------------------------------------- class C


@pytest.mark.parametrize("at", [0.3, 7.0, 42.0])
def test_class_c_hears_rx2_parameters_any_time_class_a_does_not(at):
    clock, medium, gw = world()
    c = medium.add_device(abp(1, "C"), (100, 0))
    a = medium.add_device(abp(2, "A"), (0, 100))
    clock.advance(at)
    gw.send(TxRequest(downlink(c.device, 0, payload=b"c"), 869.525, "SF12BW125", 14))
    gw.send(TxRequest(downlink(a.device, 0, payload=b"a"), 869.525, "SF9BW125", 14))
    clock.run()
    assert [d.payload for d in c.received] == [b"c"]
    assert a.received == []


def test_class_c_does_not_hear_while_transmitting():
    clock, medium, gw = world()
    c = medium.add_device(abp(1, "C"), (100, 0), datarate="SF12BW125")
    c.send(1, b"long uplink at SF12")
    clock.advance(0.2)  # well inside the uplink
    gw.send(TxRequest(downlink(c.device, 0), 869.525, "SF12BW125", 14))
    clock.run()
    assert c.received == []


@settings(max_examples=60, deadline=None)
@given(st.binary(min_size=1, max_size=255))
def test_random_downlink_bytes_never_crash_a_device(payload):
    clock, medium, gw = world()
    c = medium.add_device(abp(1, "C"), (100, 0))
    gw.send(TxRequest(payload, 869.525, "SF12BW125", 14))
    clock.run()
    assert c.rejected + len(c.received) == 1


# ------------------------------------------------------------- confirmed uplinks


def fcnts_heard(gw: SimGateway) -> list[int]:
    return [phy.decode_data(f.payload).fcnt for f in gw.heard]


def test_confirmed_uplink_retransmitted_with_same_fcnt_until_nb_trans():
    clock, medium, gw = world()
    dev = medium.add_device(abp(), (100, 0), nb_trans=3)
    dev.send(1, b"once", confirmed=True)
    dev.send(1, b"next")  # waits for the first exchange
    clock.run()
    assert [(u.fcnt, u.attempt) for u in dev.uplinks] == [(0, 1), (0, 2), (0, 3), (1, 1)]
    assert fcnts_heard(gw) == [0, 0, 0, 1]
    assert dev.failed == [0] and dev.acked == []
    starts = [u.transmission.start for u in dev.uplinks]
    for prev, nxt in zip(dev.uplinks[:2], dev.uplinks[1:3], strict=True):
        # after RX2 (end + 2 s) plus ACK_TIMEOUT 2 +- 1 s
        gap = nxt.transmission.start - prev.transmission.end
        assert 2.0 + 1.0 <= gap <= 2.0 + 3.0 + 0.05
    assert starts[3] - dev.uplinks[2].transmission.end == pytest.approx(2.02, abs=0.01)


def test_ack_stops_the_retransmissions():
    clock, medium, gw = world()
    dev = medium.add_device(abp(), (100, 0), nb_trans=5)
    answered = []

    def server(frame):  # acknowledge only the second transmission, in RX1
        answered.append(frame)
        if len(answered) == 2:
            gw.send(TxRequest(downlink(dev.device, 0, ack=True, payload=b""), frame.frequency,
                              frame.datarate, 14, tmst=frame.tmst + 1_000_000))

    gw.on_frame(server)
    dev.send(1, b"please ack", confirmed=True)
    clock.run()
    assert fcnts_heard(gw) == [0, 0]
    assert dev.acked == [0] and dev.failed == []
    assert not dev.busy


def test_unconfirmed_uplink_is_sent_once():
    clock, medium, gw = world()
    dev = medium.add_device(abp(), (100, 0), nb_trans=3)
    dev.send(1, b"fire and forget")
    clock.run()
    assert fcnts_heard(gw) == [0]


def test_otaa_join_through_the_medium():
    clock, medium, gw = world()
    device = EndDevice(dev_eui=bytes.fromhex("70b3d57ed0000077"), app_key=APP_KEY)
    dev = medium.add_device(device, (150, 0))
    requests = []

    def server(frame):  # answer the second JoinRequest only, in the 5 s join window
        requests.append(frame)
        if len(requests) == 2:
            accept = phy.encode_join_accept(APP_KEY, 1, 0x13, 0x26012345, 0, 0, 1)
            gw.send(TxRequest(accept, frame.frequency, frame.datarate, 14,
                              tmst=frame.tmst + 5_000_000))

    gw.on_frame(server)
    dev.join()
    clock.run()
    assert device.joined and device.dev_addr == 0x26012345 and dev.joins == 1
    nonces = [phy.decode(f.payload).dev_nonce for f in requests]
    assert nonces == [0, 1]  # each attempt a new DevNonce


# ------------------------------------------------------------------------ bad input


def test_bad_input_is_refused_clearly():
    clock, medium, gw = world()
    with pytest.raises(ValueError, match="position"):
        medium.add_device(abp(), (1, "x"))
    with pytest.raises(ValueError, match="already used"):
        medium.add_gateway(GW_EUI, (5, 5))
    with pytest.raises(ValueError, match="loss_rate"):
        Medium(clock, loss_rate=1.5)
    with pytest.raises(RadioError, match="1..255"):
        gw.send(TxRequest(b"", 868.1, "SF7BW125", 14))
    with pytest.raises(RadioError, match="data rate"):
        gw.send(TxRequest(b"x", 868.1, "SF7", 14))
    with pytest.raises(RadioError, match="freq"):
        txpk_to_request({"datr": "SF7BW125", "imme": True}, b"x")
    clock.advance(2)
    assert gw.send(TxRequest(b"x", 868.1, "SF7BW125", 14, tmst=gw.tmst() - 10)).error == "TOO_LATE"
    assert gw.send(TxRequest(b"x" * 50, 869.525, "SF12BW125", 14)).ok
    assert gw.send(TxRequest(b"x", 868.1, "SF7BW125", 14)).error == "COLLISION_PACKET"


# --------------------------------------- real time: medium -> lora_pkt_fwd -> UDP server


async def test_devices_through_packet_forwarder_to_semtech_udp_radio():
    radio = SemtechUDPRadio("127.0.0.1", 0)
    await radio.start()
    try:
        async with SimPacketForwarder("127.0.0.1", radio.port, GW_EUI, keepalive=0.2) as fwd:
            await fwd.pull(wait=True)
            medium = Medium(AsyncioClock())
            gw = medium.add_gateway(GW_EUI, (0, 0))
            near = medium.add_device(abp(1), (80, 0))
            far = medium.add_device(abp(2), (0, 1500), datarate="SF9BW125")
            async with ForwarderLink(gw, fwd) as link:
                near.send(1, b"near", confirmed=True)
                far.send(1, b"far")
                frames = [await asyncio.wait_for(radio.receive(), 2.0) for _ in range(2)]
                by_payload = {f.payload: f for f in frames}
                assert len(gw.heard) == 2
                for heard in gw.heard:
                    got = by_payload[heard.payload]  # as the server decoded the rxpk
                    assert (got.rssi, got.snr, got.tmst) == (heard.rssi, heard.snr, heard.tmst)
                    assert (got.frequency, got.datarate) == (heard.frequency, heard.datarate)
                    assert got.gateway == GW_EUI
                near_frame = by_payload[near.uplinks[0].transmission.payload]
                assert near_frame.rssi > by_payload[far.uplinks[0].transmission.payload].rssi
                # The server acknowledges in RX1: uplink tmst + 1 s, on the forwarder's clock.
                ack = downlink(near.device, 0, ack=True, payload=b"")
                result = await radio.transmit(TxRequest(
                    ack, near_frame.frequency, near_frame.datarate, 14.0,
                    tmst=(near_frame.tmst + 1_000_000) % (1 << 32),
                ))
                assert result.ok
                # Wait until RX1 plus the ack's airtime and a margin, on the same clock.
                rx1_in = ((near_frame.tmst + 1_000_000 - fwd.tmst()) % (1 << 32)) / 1e6
                assert 0.5 < rx1_in <= 1.0
                await asyncio.sleep(rx1_in + 0.2)
                assert near.acked == [0] and len(near.uplinks) == 1
                assert link.pushed == 2 and [r.ok for r in link.tx_results] == [True]
    finally:
        await radio.stop()
