"""LoRaWAN end to end, as in the field: simulated devices -> a simulated ``lora_pkt_fwd`` on
real UDP -> the agent (a subprocess, its Semtech UDP backend) -> the durable store -> a real
mosquitto with mutual TLS -> an upstream subscriber.

Checked: OTAA join with the JoinAccept scheduled 5 s after the JoinRequest on the
concentrator clock; a confirmed uplink acknowledged in RX1 (1 s) and its measurement
upstream; a retransmission acknowledged again but stored once; a replay and a bad MIC
rejected and counted; the agent SIGKILLed between uplinks loses no acknowledged
measurement and reopens no replay.
"""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest

from hil.lorawan_device import EndDevice
from hil.packet_forwarder import SimPacketForwarder
from passerelle.lorawan.codecs import encode_cayenne

from .conftest import GATEWAY_ID
from .test_integration import (  # noqa: F401  (rigs: a fixture)
    Upstream,
    agent_config,
    rigs,
    toml_dumps,
    wait_until,
)

APP_KEY = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
DEV_EUI = bytes.fromhex("70b3d57ed0000001")
GW_EUI = "aa555a0000000001"
BASE = f"urn:dev:ops:passerelle-{GATEWAY_ID}-sensor-1:"


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def lorawan_config(path: Path, broker: Any, pki: Any, data_dir: Path, port: int) -> Path:
    agent_config(path, broker, pki, data_dir)
    extra = {
        "radio": {"type": "semtech-udp", "listen": f"127.0.0.1:{port}"},
        "lorawan.devices": [{
            "name": "sensor-1", "dev_eui": DEV_EUI.hex(), "class": "A", "codec": "cayenne",
            "join_eui": "0000000000000000", "app_key": APP_KEY.hex(), "priority": "energy",
        }],
    }
    path.write_text(path.read_text() + "\n" + toml_dumps(extra))
    return path


def temperature(t: float) -> bytes:
    return encode_cayenne([(3, "temperature", t)])


async def next_downlink(fwd: SimPacketForwarder, timeout: float = 8.0) -> Any:
    return await asyncio.wait_for(fwd.downlinks.get(), timeout)


async def no_downlink(fwd: SimPacketForwarder, wait: float = 1.5) -> None:
    await asyncio.sleep(wait)
    assert fwd.downlinks.empty(), "a downlink was sent for a frame that must be rejected"


async def uplink_acked(fwd: SimPacketForwarder, dev: EndDevice, frame: bytes) -> int:
    """Push ``frame``; check the ack comes in RX1 (1 s later on the concentrator clock)."""
    tmst = fwd.tmst()
    assert await fwd.push(frame, tmst=tmst)
    dl = await next_downlink(fwd)
    assert dl.tmst == (tmst + 1_000_000) % (1 << 32)
    assert (dl.freq, dl.datr) == (868.1, "SF7BW125")  # RX1: the uplink's channel and rate
    down = dev.receive(dl.payload)
    assert down.ack
    return tmst


def lorawan_state(up: Upstream) -> dict[str, Any]:
    for s in reversed(up.states):
        if "lorawan" in s.body:
            return dict(s.body["lorawan"])
    return {}


@pytest.mark.slow
async def test_join_uplinks_replays_and_sigkill(broker, pki, tmp_path, rigs):  # noqa: F811
    port = free_udp_port()
    config = lorawan_config(tmp_path / "agent.toml", broker, pki, tmp_path / "data", port)
    async with Upstream(broker, pki) as up, SimPacketForwarder(
        "127.0.0.1", port, GW_EUI, keepalive=0.2
    ) as fwd:
        rig = rigs(config)
        await rig.wait_started()
        await fwd.wait_pulled(15.0)
        dev = EndDevice(dev_eui=DEV_EUI, app_key=APP_KEY)

        # OTAA: the JoinAccept goes in the first join window, 5 s after the request.
        tmst = fwd.tmst()
        assert await fwd.push(dev.join_request(), tmst=tmst)
        dl = await next_downlink(fwd)
        assert dl.tmst == (tmst + 5_000_000) % (1 << 32)
        dev.accept(dl.payload)
        assert dev.joined

        # A confirmed uplink: acknowledged, and its measurement reaches upstream.
        first = dev.uplink(1, temperature(27.2), confirmed=True)
        await uplink_acked(fwd, dev, first)
        await wait_until(lambda: up.records(BASE), 15.0, "measurement upstream")
        assert [(r.name, r.value, r.unit) for r in up.records(BASE)] == [
            (BASE + "temperature/3", 27.2, "Cel")
        ]

        # The same frame again (the device missed the ack): acked again, stored once.
        assert await fwd.push(first)
        dev.receive((await next_downlink(fwd)).payload)

        second = dev.uplink(1, temperature(21.5), confirmed=True)
        await uplink_acked(fwd, dev, second)

        # A replay of an older frame, and a frame with a broken MIC: no answer, counted.
        assert await fwd.push(first)
        forged = bytearray(dev.uplink(1, temperature(99.9), confirmed=True))
        forged[-1] ^= 0xFF
        assert await fwd.push(bytes(forged))
        await no_downlink(fwd)

        # SIGKILL between uplinks, then the same data directory again.
        rig.kill()
        rig = rigs(config)
        await rig.wait_started()
        await fwd.wait_pulled(15.0)
        assert await fwd.push(second)  # acknowledged before the kill: a retransmission
        dev.receive((await next_downlink(fwd)).payload)
        assert await fwd.push(first)  # older still: a replay, even after the restart
        await no_downlink(fwd)
        third = dev.uplink(1, temperature(18.0), confirmed=True)
        await uplink_acked(fwd, dev, third)

        await wait_until(lambda: len(up.records(BASE)) >= 3, 15.0, "three measurements")
        await asyncio.sleep(0.5)
        values = sorted(r.value for r in up.records(BASE))
        # Every acknowledged measurement once; the forged 99.9 never.
        assert values == [18.0, 21.5, 27.2]
        state = await up.wait_state(
            lambda s: s.get("lorawan", {}).get("replay", 0) >= 1, since=0.0, timeout=10.0
        )
        assert state["lorawan"]["sessions"] == 1
        assert state["lorawan"]["retransmissions"] >= 1
        assert "M" in state["lorawan"]["duty_cycle"]
        await rig.terminate()


@pytest.mark.slow
async def test_copies_heard_by_two_gateways_are_handled_once(broker, pki, tmp_path, rigs):  # noqa: F811
    port = free_udp_port()
    config = lorawan_config(tmp_path / "agent.toml", broker, pki, tmp_path / "data", port)
    async with Upstream(broker, pki) as up, SimPacketForwarder(
        "127.0.0.1", port, GW_EUI, keepalive=0.2
    ) as near, SimPacketForwarder("127.0.0.1", port, "aa555a0000000002", keepalive=0.2) as far:
        rig = rigs(config)
        await rig.wait_started()
        await near.wait_pulled(15.0)
        await far.wait_pulled(15.0)
        dev = EndDevice(dev_eui=DEV_EUI, app_key=APP_KEY)
        request = dev.join_request()
        assert await near.push(request, tmst=near.tmst())
        assert await far.push(request, tmst=far.tmst(), rssi=-110)
        dl = await asyncio.wait_for(asyncio.shield(_first(near, far)), 8.0)
        dev.accept(dl.payload)
        frame = dev.uplink(1, temperature(30.5), confirmed=True)
        assert await near.push(frame, tmst=near.tmst())
        assert await far.push(frame, tmst=far.tmst(), rssi=-110)
        dev.receive((await asyncio.wait_for(_first(near, far), 8.0)).payload)
        await asyncio.sleep(1.5)
        assert near.downlinks.empty() and far.downlinks.empty(), "acknowledged twice"
        await wait_until(lambda: up.records(BASE), 15.0, "measurement upstream")
        await asyncio.sleep(0.5)
        assert [r.value for r in up.records(BASE)] == [30.5]
        await rig.terminate()


async def _first(*forwarders: SimPacketForwarder) -> Any:
    """The first downlink any of ``forwarders`` gets."""
    while True:
        for fwd in forwarders:
            if not fwd.downlinks.empty():
                return fwd.downlinks.get_nowait()
        await asyncio.sleep(0.01)
