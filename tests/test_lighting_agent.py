"""The lighting engine inside the agent, end to end: simulated class C luminaires and a
presence sensor on the agent's simulated radio, a real mosquitto over mutual TLS.

The street keeps following its schedule, an override and a presence event while the broker
is frozen (the backhaul is gone); what happened reaches the broker once it is back:
the luminaires' feedback, a lamp-failure alarm, and presence only as a count.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hil.lorawan_device import EndDevice
from hil.luminaire_sim import LuminaireSim, MulticastSession
from hil.mosquitto import Mosquitto
from hil.pki import Pki
from passerelle import senml
from passerelle.agent import Agent
from passerelle.config import parse
from passerelle.lorawan.codecs import encode_cayenne

from .conftest import GATEWAY_ID, Subscriber

PREFIX = f"passerelle/{GATEWAY_ID}/"
N = 4


def keys(i: int) -> tuple[bytes, bytes]:
    return bytes([i] * 16), bytes([i + 100] * 16)


GROUP = (0x2601FFFF, bytes([9] * 16), bytes([109] * 16))


def street_config(tmp: Path, broker: Mosquitto, pki: Pki) -> dict[str, Any]:
    devices = []
    for i in range(1, N + 1):
        nwk, app = keys(i)
        devices.append({"name": f"lum-{i}", "dev_eui": f"70b3d57ed00000{i:02x}", "class": "C",
                        "codec": "luminaire", "dev_addr": f"260100{i:02x}",
                        "nwk_s_key": nwk.hex(), "app_s_key": app.hex()})
    nwk, app = keys(50)
    devices.append({"name": "pir-1", "dev_eui": "70b3d57ed0000050", "class": "A",
                    "codec": "cayenne", "dev_addr": "26010050",
                    "nwk_s_key": nwk.hex(), "app_s_key": app.hex()})
    return {
        "gateway": {"id": GATEWAY_ID, "data_dir": str(tmp / "data")},
        "uplink": {
            "url": f"mqtts://localhost:{broker.tls_port}",
            "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key), "batch_age": 0.2, "state_interval": 0.3,
            "backoff_initial": 0.1, "backoff_max": 0.5,
        },
        "store": {"max_delay": 0.01},
        "radio": {"type": "sim", "seed": 5},
        "lorawan": {
            "rx2_datarate": "SF9BW125",
            "devices": devices,
            "multicast": [{"name": "street", "dev_addr": f"{GROUP[0]:08x}",
                           "nwk_s_key": GROUP[1].hex(), "app_s_key": GROUP[2].hex(),
                           "datarate": "SF9BW125",
                           "devices": [f"lum-{i}" for i in range(1, N + 1)]}],
        },
        "lighting": {
            "latitude": 48.8566, "longitude": 2.3522, "timezone": "Europe/Paris",
            "tick": 0.2, "confirm_timeout": 1.5, "retries": 3, "reply_window": 1.0,
            "presence_window": 10, "clock_check": False,
            # Time-independent on purpose: the test runs at whatever time the machine says.
            "programs": {"steady": {
                "fixed_time_controls": [{"time": "12:00", "level": 70}],
                "active_periods": [{"type": "sensor", "start": "12:00", "end": "11:59"}],
            }},
            "calendars": {"all": {"rules": [{"program": "steady"}]}},
            "zones": {"street": {
                "calendar": "all", "luminaires": [f"lum-{i}" for i in range(1, N + 1)],
                "multicast": "street", "floor": 20, "default_level": 60, "ramp_up": 0,
                "ramp_down": 0, "rated_power": 40.0, "presence": {"boost": 100, "hold": 4.0},
            }},
            "presence_sensors": [{"device": "pir-1", "name": "presence/1", "zone": "street",
                                  "near": "lum-1", "spread": 1}],
        },
    }


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        await asyncio.sleep(0.05)


def upstream(sub: Subscriber) -> list[Any]:
    out = []
    for m in sub.messages:
        if str(m.topic).endswith("up/senml"):
            payload = senml.decompress(m.payload) if senml.is_compressed(m.payload) \
                else m.payload
            out.extend(senml.decode_pack(payload)[0])
    return out


@pytest.mark.slow
async def test_street_follows_schedule_override_and_presence_without_backhaul(
    tmp_path: Path, broker: Mosquitto, pki: Pki, subscriber: Callable[..., Subscriber]
) -> None:
    async with subscriber(PREFIX + "#") as sub:
        cfg = parse(street_config(tmp_path, broker, pki), tmp_path)
        agent = Agent(cfg)
        task = asyncio.create_task(agent.run())
        try:
            assert agent.lorawan is not None and agent.lighting is not None
            radio = agent.lorawan.radio
            await wait_until(lambda: getattr(radio, "medium", None) is not None, 5,
                             "the simulated radio started")
            # The controllers are powered after the gateway starts.
            sims = []
            for i in range(1, N + 1):
                nwk, app = keys(i)
                sims.append(LuminaireSim(
                    radio.medium, f"lum-{i}", (30.0 * i, 0.0),
                    dev_eui=bytes.fromhex(f"70b3d57ed00000{i:02x}"), dev_addr=0x26010000 + i,
                    nwk_s_key=nwk, app_s_key=app, multicast=MulticastSession(*GROUP),
                    rated_power_w=40.0, reply_window=1.0, rx2_datarate="SF9BW125", seed=i))
            nwk, app = keys(50)
            pir = radio.medium.add_device(EndDevice(
                dev_eui=bytes.fromhex("70b3d57ed0000050"), dev_addr=0x26010050,
                nwk_s_key=nwk, app_s_key=app, rx2_dr=3), (20.0, 5.0), name="pir-1")
            light = agent.lighting
            # What the gateway accepted into its store, to compare with what arrives
            # upstream: the radio is lossy (a controller's answer can cross a multicast
            # answer), so which levels were heard is up to the air, not to the test.
            stored: list[Any] = []
            put_many = agent.store.put_many

            async def tap(records: Any, *args: Any, **kwargs: Any) -> None:
                await put_many(records, *args, **kwargs)
                stored.extend(records)

            agent.store.put_many = tap  # type: ignore[method-assign]

            def zone() -> dict[str, Any]:
                return light.health()["zones"]["street"]

            await wait_until(lambda: [s.level for s in sims] == [70] * N
                             and zone()["confirmed"] == N, 20,
                             f"every luminaire at 70 % and confirmed: {zone()}, "
                             f"{[s.level for s in sims]}")
            # Whatever the race with the radio's start (a multicast refused before the
            # group is provisioned, or sent before the controllers were powered), it ends
            # with every luminaire confirmed.
            assert light.counts["multicast_commands"] + light.counts["retries"] >= 1

            # Backhaul gone: the broker is frozen. The street keeps obeying.
            broker.pause()
            sims[3].lamp_failure = True
            light.override("street", 30, time.time() + 60, by="test")
            await wait_until(lambda: [s.level for s in sims] == [30] * N
                             and zone()["confirmed"] == N, 15,
                             f"override applied and confirmed offline: {zone()}")
            assert zone()["cause"] == "override"
            assert zone()["lamp_failures"] == ["lum-4"]
            light.clear_override("street")
            await wait_until(lambda: [s.level for s in sims] == [70] * N, 10,
                             "back to the calendar after the override")
            pir.send(1, encode_cayenne([(1, "presence", 1)]))
            # lum-1 and its neighbour lum-2 are boosted; lum-3 and lum-4 stay at 70.
            await wait_until(lambda: [s.level for s in sims] == [100, 100, 70, 70], 10,
                             f"presence boost near lum-1: {[s.level for s in sims]}")
            await wait_until(lambda: [s.level for s in sims] == [70] * N, 10,
                             "hold over: back to the calendar")
            broker.resume()

            # What happened offline reaches the broker: feedback, the alarm, the count.
            def names() -> list[str]:
                return [r.name for r in upstream(sub)]

            def lum1_levels() -> list[Any]:
                return [r.value for r in upstream(sub) if r.name.endswith("lum-1:level")]

            heard = {r.value for r in stored if r.device == "lum-1" and r.name == "level"}
            # The override was confirmed by every controller while the broker was frozen.
            assert 30 in heard, heard

            def presence_counts() -> list[Any]:
                return [r.value for r in upstream(sub) if r.name.endswith("street/presence")]

            # Windows without anyone passing count 0; the one with the detection counts 1.
            await wait_until(lambda: sum(presence_counts()) >= 1
                             and heard <= set(lum1_levels()), 60,
                             f"the presence count and lum-1's feedback upstream "
                             f"(heard offline: {heard})")
            records = upstream(sub)
            assert not any(r.name.endswith("presence/1") for r in records), \
                "raw presence detections must never leave the gateway"
            assert sum(presence_counts()) == 1
            alarms = [r for r in records if r.name.endswith(":alarm")]
            assert any(r.value == "lamp failure" and "lum-4" in r.name for r in alarms), alarms
            states = [json.loads(m.payload) for m in sub.messages
                      if str(m.topic) == PREFIX + "state"]
            assert any(s.get("lighting", {}).get("zones", {}).get("street") for s in states)
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
