"""Remote configuration across process deaths: ``passerelle run`` as a real process.

A section that cannot change live (the store) is applied by a planned restart, and the new
run finishes the health window; an agent SIGKILLed during a health window comes back on the
previous version and tells the operator once its link is up.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from hil.mosquitto import Mosquitto
from hil.pki import Pki
from passerelle.control.envelope import sign_config
from passerelle.control.keys import generate_keypair, load_private_key

from .conftest import GATEWAY_ID, Subscriber
from .test_control_agent import REPLY, answers, final, push

PREFIX = f"passerelle/{GATEWAY_ID}/"
ROOT = Path(__file__).resolve().parents[1]


def config(tmp: Path, broker: Mosquitto, pki: Pki, pub: Path, **store: Any) -> dict[str, Any]:
    return {
        "gateway": {"id": GATEWAY_ID, "data_dir": str(tmp / "data")},
        "uplink": {"url": f"mqtts://localhost:{broker.tls_port}", "ca_file": str(pki.ca_cert),
                   "cert_file": str(pki.client_cert), "key_file": str(pki.client_key),
                   "batch_age": 0.2, "state_interval": 0.5, "backoff_initial": 0.1,
                   "backoff_max": 0.5},
        "store": {"max_delay": 0.01, **store},
        "sources": [{"type": "sim.counter", "name": "counter", "interval": 0.5}],
        "control": {"operator_keys": [str(pub)], "health_window": 3},
    }


class Process:
    def __init__(self, path: Path, log: Path) -> None:
        self.path = path
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "passerelle", "run", "--config", str(self.path)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def online(sub: Subscriber, since: int, timeout: float = 20) -> dict[str, Any]:
    """The first retained-state message after message ``since`` that says online."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [json.loads(m.payload) for m in sub.messages[since:]
                  if str(m.topic) == PREFIX + "state"]
        ups = [s for s in states if s.get("online")]
        if ups:
            return ups[-1]
        await asyncio.sleep(0.1)
    raise AssertionError("the agent did not come online")


@pytest.mark.slow
async def test_planned_restart_then_sigkill_during_a_health_window(
    tmp_path: Path, broker: Mosquitto, pki: Pki, subscriber: Any,
) -> None:
    priv, pub, _ = generate_keypair(tmp_path / "ops")
    key = load_private_key(priv)
    path = tmp_path / "passerelle.toml"
    path.write_text(tomli_w.dumps(config(tmp_path, broker, pki, pub)))
    path.chmod(0o640)
    agent = Process(path, tmp_path / "agent.log")
    try:
        async with subscriber("passerelle/#") as sub:
            agent.start()
            await online(sub, 0)
            pid = agent.proc.pid if agent.proc else None

            # A store change cannot be applied live: the agent restarts itself to apply it.
            v2 = config(tmp_path, broker, pki, pub, max_delay=0.02)
            await push(sub.client, PREFIX + "config/set", sign_config(v2, key, version=2), b"2")
            ack = await final(sub, 2, timeout=40, topic=PREFIX + "config/ack")
            assert ack["status"] == "applied", (ack, agent.log.read_text()[-3000:])
            assert any(a.get("reason") == "restart" for a in answers(sub, REPLY))
            assert agent.proc is not None and agent.proc.pid == pid and agent.proc.poll() is None
            assert "max_delay = 0.02" in path.read_text()
            v2_bytes = path.read_bytes()

            # A live change, killed in the middle of its health window.
            v3 = config(tmp_path, broker, pki, pub, max_delay=0.02)
            v3["uplink"]["keepalive"] = 20
            n = len(sub.messages)
            await push(sub.client, PREFIX + "config/set", sign_config(v3, key, version=3), b"3")
            deadline = time.monotonic() + 15
            while not any(a.get("version") == 3 and a["status"] == "accepted"
                          for a in answers(sub, REPLY)):
                assert time.monotonic() < deadline, answers(sub, REPLY)
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # inside the 3 s window
            agent.proc.kill()
            agent.proc.wait()
            assert "keepalive = 20" in path.read_text()  # the pending version was running

            agent.start()  # what systemd's Restart= does
            ack3 = await final(sub, 3, timeout=30, topic=PREFIX + "config/ack")
            assert (ack3["status"], ack3["reason"]) == ("rolled_back", "agent_restarted"), ack3
            assert path.read_bytes() == v2_bytes
            state = await online(sub, n)
            assert state["config"]["version"] == 2, state
    finally:
        agent.stop()
