"""A cabinet end to end: Modbus RTU meters on a real pseudo-terminal, the agent, its durable
store and data sobriety policies, a real mosquitto over mutual TLS.

The meters are simulated slaves (``hil/modbus_sim.py``) on a PTY the agent opens with
pyserial, as it would open ``/dev/ttyUSB0``. Each injected fault (no answer, corrupted CRC,
garbage, an exception reply, a slow answer) must show in the agent's health counters, never
stop the polling of the other meter on the bus, and never lose what was already accepted:
once a fault is cleared, readings flow again through the same agent.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hil.modbus_sim import EnergyMeterSim, RtuLine
from hil.mosquitto import Mosquitto
from hil.pki import Pki
from passerelle import senml
from passerelle.agent import Agent
from passerelle.config import parse

from .conftest import GATEWAY_ID, Subscriber

PREFIX = f"passerelle/{GATEWAY_ID}/"


def cabinet_config(tmp: Path, broker: Mosquitto, pki: Pki, port: str) -> dict[str, Any]:
    return {
        "gateway": {"id": GATEWAY_ID, "data_dir": str(tmp / "data")},
        "uplink": {
            "url": f"mqtts://localhost:{broker.tls_port}",
            "ca_file": str(pki.ca_cert), "cert_file": str(pki.client_cert),
            "key_file": str(pki.client_key), "batch_age": 0.2, "state_interval": 0.3,
            "backoff_initial": 0.1, "backoff_max": 0.5,
        },
        "store": {"max_delay": 0.01},
        "sources": [{
            "type": "modbus-rtu", "name": "bus-1", "port": port, "baud": 19200,
            "interval": 0.2, "timeout": 0.15, "retries": 0, "offline_after": 2,
            "backoff_max": 0.5, "priority": "energy",
            "devices": [
                {"name": "meter-1", "unit": 1, "map": "sdm120"},
                {"name": "meter-2", "unit": 2, "map": "sdm630",
                 "only": ["l1/voltage", "power"]},
            ],
        }],
        "policy": {"streams": [
            # meter-1's power as 2-second windows: raw samples never go upstream
            {"match": "meter-1/power", "aggregate": {"window": 2, "functions": ["min", "max",
                                                                               "mean", "count"]}},
        ]},
    }


class Upstream:
    """What the broker delivered, decoded, by resolved SenML name."""

    def __init__(self, sub: Subscriber) -> None:
        self.sub = sub

    def records(self) -> list[Any]:
        out = []
        for m in self.sub.messages:
            if str(m.topic).endswith("up/senml"):
                payload = senml.decompress(m.payload) if senml.is_compressed(m.payload) \
                    else m.payload
                out.extend(senml.decode_pack(payload)[0])
        return out

    def names(self, device: str) -> list[str]:
        base = senml.device_base_name(GATEWAY_ID, device)
        return [r.name[len(base):] for r in self.records() if r.name.startswith(base)]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what}")
        await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_meters_faults_and_policies_end_to_end(
    tmp_path: Path, broker: Mosquitto, pki: Pki, subscriber: Callable[..., Subscriber]
) -> None:
    meter1 = EnergyMeterSim(1, "sdm120", luminaires=20, rated_power=50.0, dimming=0.5)
    meter2 = EnergyMeterSim(2, "sdm630", luminaires=30, rated_power=60.0)
    async with RtuLine([meter1, meter2], baud=19200) as line, \
            subscriber(PREFIX + "#") as sub:
        cfg = parse(cabinet_config(tmp_path, broker, pki, line.path), tmp_path)
        agent = Agent(cfg)
        task = asyncio.create_task(agent.run())
        up = Upstream(sub)

        def device_stats(name: str) -> dict[str, Any]:
            return agent.health()["sources"]["bus-1"]["devices"][name]

        try:
            # Readings flow: meter-1's voltage raw, its power only as window aggregates.
            await wait_until(lambda: "voltage" in up.names("meter-1")
                             and "power/mean" in up.names("meter-1")
                             and "power" in up.names("meter-2"), 15,
                             f"meter readings upstream: {up.names('meter-1')[:20]}")
            names1 = up.names("meter-1")
            assert "power" not in names1  # the policy folded raw power into windows
            mean = next(r for r in up.records() if r.name.endswith("meter-1:power/mean"))
            assert mean.value == pytest.approx(20 * 50.0 * 0.5, rel=0.01)
            assert mean.unit == "W"

            # Each fault on meter-1 is counted, and meter-2 keeps answering meanwhile.
            faults = [  # (fault, injected, cleared, counter)
                ("corrupt_crc", True, False, "crc_errors"),
                ("garbage", True, False, "garbled"),
                ("exception_code", 4, None, "exceptions"),
                ("silent", True, False, "timeouts"),
            ]
            for attr, value, cleared, counter in faults:
                before = device_stats("meter-1")["counters"][counter]
                polls2 = device_stats("meter-2")["polls"]
                setattr(meter1, attr, value)
                await wait_until(
                    lambda c=counter, b=before: device_stats("meter-1")["counters"][c] > b,
                    5, f"{attr} counted as {counter}: {device_stats('meter-1')}")
                await wait_until(lambda p=polls2: device_stats("meter-2")["polls"] >= p + 2,
                                 5, f"meter-2 polled during {attr}")
                setattr(meter1, attr, cleared)
            # Two failed polls in a row: meter-1 was marked offline, said once upstream.
            await wait_until(lambda: device_stats("meter-1")["online"], 5,
                             "meter-1 back online after the faults")
            assert device_stats("meter-1")["offline_since"] is None

            # A slow answer within the timeout is not a fault.
            meter1.delay = 0.05
            polls1 = device_stats("meter-1")["polls"]
            await wait_until(lambda: device_stats("meter-1")["polls"] >= polls1 + 2, 5,
                             "slow meter still polled")
            meter1.delay = 0.0

            # After the faults, new readings still arrive: the agent kept running.
            n_voltage = up.names("meter-1").count("voltage")
            await wait_until(lambda: up.names("meter-1").count("voltage") > n_voltage + 2, 5,
                             f"meter-1 readings after the faults: {device_stats('meter-1')}, "
                             f"{agent.health()['store']}, {agent.health()['sent']}, "
                             f"{up.names('meter-1')[-12:]}")
            online = [r for r in up.records() if r.name.endswith("meter-1:online")]
            assert [r.value for r in online][:2] == [False, True]

            # The retained state carries the bus counters and the policy's savings.
            states = [json.loads(m.payload) for m in sub.messages
                      if str(m.topic) == PREFIX + "state"]
            assert any("sources" in s and "policy" in s for s in states)
            # Every window count upstream stands for real samples: no more than the polls
            # that succeeded (some windows are still open).
            counted = sum(r.value for r in up.records() if r.name.endswith("meter-1:power/count"))
            stats1 = device_stats("meter-1")
            assert 0 < counted <= stats1["polls"] - stats1["failed_polls"]
            assert "aggregate" in agent.health()["policy"]["savings"]
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
