"""Signed remote configuration and commands, end to end: the agent in this process, a real
mosquitto over mutual TLS, real Ed25519 signatures.

Every bad bundle is rejected with its reason and leaves the running file untouched; a
lighting-only change commits without reconnecting the uplink; a configuration that breaks
the uplink is rolled back and says so once the link is back; commands run once, before
their expiry.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import pytest
import tomli_w
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hil.mosquitto import Mosquitto
from hil.pki import Pki
from passerelle.agent import Agent
from passerelle.config import load
from passerelle.control.envelope import sign_command, sign_config
from passerelle.control.keys import generate_keypair, load_private_key

from .conftest import GATEWAY_ID, Subscriber
from .test_lighting_agent import street_config

PREFIX = f"passerelle/{GATEWAY_ID}/"
REPLY = "passerelle/ctl/test-1/ack"


class Operator:
    """An operator's key and a way to push what it signs, answers collected."""

    def __init__(self, tmp: Path) -> None:
        self.priv, self.pub, self.kid = generate_keypair(tmp / "ops-2026")
        self.key = load_private_key(self.priv)
        other, _, _ = generate_keypair(tmp / "stranger")
        self.stranger = load_private_key(other)


def document(tmp: Path, broker: Mosquitto, pki: Pki, op: Operator, **changes: Any) -> dict:
    doc = street_config(tmp, broker, pki)
    doc["control"] = {"operator_keys": [str(op.pub)], "groups": ["commune-41"],
                      "health_window": 2}
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        doc[section][key] = value
    return doc


async def push(client: aiomqtt.Client, topic: str, payload: bytes, corr: bytes) -> None:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = REPLY
    props.CorrelationData = corr
    await client.publish(topic, payload, qos=1, properties=props)


def forge(bundle: bytes, key: Any) -> bytes:
    """The same protected header (the operator's kid) and payload, signed by another key."""
    protected, unprotected, payload, _ = cbor2.loads(bundle).value
    signature = key.sign(cbor2.dumps(["Signature1", protected, b"", payload]))
    return cbor2.dumps(cbor2.CBORTag(18, [protected, unprotected, payload, signature]))


def answers(sub: Subscriber, topic: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in sub.messages if str(m.topic) == topic]


async def wait_until(predicate: Callable[[], bool], timeout: float, what: Callable[[], str]
                     ) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s: {what()}")
        await asyncio.sleep(0.05)


async def final(sub: Subscriber, version: int | None, timeout: float = 15.0,
                topic: str = REPLY) -> dict[str, Any]:
    """The final ack for ``version`` on ``topic``."""
    def found() -> list[dict[str, Any]]:
        return [a for a in answers(sub, topic) if a.get("version") == version
                and a["status"] in ("applied", "rejected", "rolled_back")]

    await wait_until(lambda: bool(found()), timeout,
                     lambda: f"no final ack for version {version}: {answers(sub, topic)}")
    return found()[-1]


@pytest.fixture
def op(tmp_path: Path) -> Operator:
    return Operator(tmp_path / "keys")


async def start_agent(tmp_path: Path, doc: dict) -> tuple[Agent, asyncio.Task[None], Path]:
    path = tmp_path / "passerelle.toml"
    path.write_text(tomli_w.dumps(doc))
    path.chmod(0o640)
    agent = Agent(load(path), config_path=path)
    task = asyncio.create_task(agent.run())
    await wait_until(lambda: agent.uplink.connected.is_set(), 10, lambda: "agent connected")
    return agent, task, path


async def test_bad_bundles_are_rejected_with_their_reason_and_change_nothing(
    tmp_path: Path, broker: Mosquitto, pki: Pki, op: Operator,
    subscriber: Callable[..., Subscriber],
) -> None:
    doc = document(tmp_path, broker, pki, op)
    agent, task, path = await start_agent(tmp_path, doc)
    before = path.read_bytes()
    try:
        async with subscriber("passerelle/#") as sub:
            set_topic = PREFIX + "config/set"
            good = sign_config(doc, op.key, version=5)
            cases: list[tuple[str, bytes, str, str]] = [
                ("forged", forge(sign_config(doc, op.key, version=6), op.stranger),
                 "bad_signature", ""),
                ("unknown key", sign_config(doc, op.stranger, version=6), "unknown_key", ""),
                ("truncated", good[: len(good) // 2], "malformed", ""),
                ("expired", sign_config(doc, op.key, version=7, expires=int(time.time()) - 5),
                 "expired", ""),
                ("other gateway", sign_config(doc, op.key, version=8, target="cab-0099"),
                 "wrong_target", ""),
                ("other group", sign_config(doc, op.key, version=9, group="syndicat-nord"),
                 "wrong_target", ""),
                ("schema", sign_config({**doc, "store": {"max_bytes": 12}}, op.key,
                                       version=10), "schema_error", "store.max_bytes"),
                ("a command", sign_command("reboot-agent", {}, op.key,
                                           expires=int(time.time()) + 60), "wrong_type", ""),
            ]
            flipped = bytearray(good)
            flipped[len(flipped) // 2] ^= 0x01  # in the payload: the signature no longer holds
            cases.append(("flipped byte", bytes(flipped), "bad_signature", ""))
            for i, (what, bundle, reason, where) in enumerate(cases):
                await push(sub.client, set_topic, bundle, f"c{i}".encode())
                await wait_until(
                    lambda i=i: any(a.get("status") == "rejected" and m.properties.CorrelationData
                                    == f"c{i}".encode() for m in sub.messages
                                    if str(m.topic) == REPLY for a in [json.loads(m.payload)]),
                    10, lambda what=what: f"{what}: no rejection: {answers(sub, REPLY)}")
                got = [json.loads(m.payload) for m in sub.messages if str(m.topic) == REPLY
                       and m.properties.CorrelationData == f"c{i}".encode()]
                assert got[-1]["reason"] == reason, (what, got)
                assert where in got[-1]["text"], (what, got)
                assert path.read_bytes() == before, what
            # The good one is applied; then replaying an older version is refused.
            await push(sub.client, set_topic, good, b"good")
            assert (await final(sub, 5))["status"] == "applied"
            old = sign_config(doc, op.key, version=4)
            await push(sub.client, set_topic, old, b"old")
            stale = await final(sub, 4)
            assert (stale["status"], stale["reason"]) == ("rejected", "stale_version")
            # The same bundle again: harmless, said so.
            n = len(answers(sub, REPLY))
            await push(sub.client, set_topic, good, b"again")
            await wait_until(lambda: len(answers(sub, REPLY)) > n, 10, lambda: "no answer")
            again = answers(sub, REPLY)[-1]
            assert (again["status"], again["reason"]) == ("applied", "duplicate")
            # Each answer also went to config/ack; the retained state names the version.
            assert len(answers(sub, PREFIX + "config/ack")) == len(answers(sub, REPLY))
            await wait_until(lambda: answers(sub, PREFIX + "state")[-1].get("config", {})
                             .get("version") == 5, 5, lambda: "state without version 5")
            assert agent.control is not None
            assert agent.control.counts["rejected.malformed"] == 1
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


async def test_lighting_change_commits_without_touching_the_uplink(
    tmp_path: Path, broker: Mosquitto, pki: Pki, op: Operator,
    subscriber: Callable[..., Subscriber],
) -> None:
    doc = document(tmp_path, broker, pki, op)
    agent, task, path = await start_agent(tmp_path, doc)
    try:
        async with subscriber("passerelle/#") as sub:
            connects = agent.uplink.stats.connects
            engine = agent.lighting
            new = json.loads(json.dumps(doc))
            new["lighting"]["programs"]["steady"]["fixed_time_controls"][0]["level"] = 55
            new["gateway"]["id"] = "cab-template"  # a group's bundle carries no identity
            # Through the group topic this time.
            await push(sub.client, "passerelle/group/commune-41/config/set",
                       sign_config(new, op.key, version=2, group="commune-41"), b"l")
            statuses = []
            ack = await final(sub, 2)
            statuses = [a["status"] for a in answers(sub, REPLY)]
            assert ack["status"] == "applied", ack
            assert statuses[0] == "accepted"
            assert agent.uplink.stats.connects == connects, "the uplink reconnected"
            assert agent.lighting is not engine and agent.lighting is not None
            assert agent.lighting.cfg.programs["steady"].fixed_time_controls[0].level == 55
            on_disk = tomllib.loads(path.read_text())
            assert on_disk["gateway"]["id"] == GATEWAY_ID
            assert on_disk["lighting"]["programs"]["steady"]["fixed_time_controls"][0][
                "level"] == 55
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


async def test_a_config_that_breaks_the_uplink_is_rolled_back(
    tmp_path: Path, broker: Mosquitto, pki: Pki, op: Operator,
    subscriber: Callable[..., Subscriber],
) -> None:
    doc = document(tmp_path, broker, pki, op)
    agent, task, path = await start_agent(tmp_path, doc)
    before = path.read_bytes()
    try:
        async with subscriber("passerelle/#") as sub:
            bad = json.loads(json.dumps(doc))
            bad["uplink"]["url"] = f"mqtts://localhost:{broker.plain_port + 1}"  # nobody
            await push(sub.client, PREFIX + "config/set", sign_config(bad, op.key, version=3),
                       b"b")
            ack = await final(sub, 3, timeout=30)
            assert ack["status"] == "rolled_back", ack
            assert ack["reason"] == "unhealthy" and "uplink" in ack["text"], ack
            assert path.read_bytes() == before
            assert agent.uplink.s.port == broker.tls_port
            accepted = [a for a in answers(sub, REPLY) if a["status"] == "accepted"]
            assert accepted, "accepted was said before the change"
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


async def test_commands_run_once_before_their_expiry(
    tmp_path: Path, broker: Mosquitto, pki: Pki, op: Operator,
    subscriber: Callable[..., Subscriber],
) -> None:
    doc = document(tmp_path, broker, pki, op)
    agent, task, path = await start_agent(tmp_path, doc)
    try:
        async with subscriber("passerelle/#") as sub:
            soon = int(time.time()) + 120

            async def run(name: str, args: dict, corr: bytes, **kw: Any) -> dict[str, Any]:
                bundle = kw.pop("bundle", None) or sign_command(
                    name, args, op.key, expires=kw.pop("expires", soon), **kw)
                await push(sub.client, PREFIX + f"cmd/{name}", bundle, corr)
                await wait_until(lambda: any(m.properties.CorrelationData == corr
                                             for m in sub.messages if str(m.topic) == REPLY),
                                 10, lambda: f"no answer to {name}")
                return [json.loads(m.payload) for m in sub.messages if str(m.topic) == REPLY
                        and m.properties.CorrelationData == corr][-1]

            override = sign_command("lighting-override", {"zone": "street", "level": 25,
                                                          "duration": 600}, op.key, expires=soon)
            ack = await run("lighting-override", {}, b"o1", bundle=override)
            assert ack["status"] == "done", ack
            assert agent.lighting is not None
            assert agent.lighting.zones["street"].override[0] == 25
            again = await run("lighting-override", {}, b"o2", bundle=override)
            assert (again["status"], again["reason"]) == ("rejected", "replayed")
            late = await run("flush-store", {}, b"late", expires=int(time.time()) - 1)
            assert (late["status"], late["reason"]) == ("rejected", "expired")
            bad = await run("lighting-override", {"zone": "nowhere", "level": 25,
                                                  "duration": 60}, b"bad")
            assert (bad["status"], bad["reason"]) == ("failed", "bad_arguments")
            assert "nowhere" in bad["text"]
            lvl = await run("set-log-level", {"level": "debug", "duration": 30}, b"log")
            assert lvl["status"] == "done" and "debug" in lvl["text"]
            flush = await run("flush-store", {}, b"flush")
            assert flush["status"] == "done"
            cleared = await run("lighting-clear", {"zone": "street"}, b"clear")
            assert cleared["status"] == "done"
            assert agent.lighting.zones["street"].override is None
            unknown = await run("format-disk", {}, b"fmt")
            assert (unknown["status"], unknown["reason"]) == ("rejected", "unknown_command")
            assert len(answers(sub, PREFIX + "cmd/ack")) >= 8
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


async def ctl(*argv: str) -> tuple[int, str]:
    """``passerelle ctl ...`` as the operator runs it: a process of its own."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "passerelle", "ctl", *argv, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode()


async def test_ctl_sign_push_wait_and_status_end_to_end(
    tmp_path: Path, broker: Mosquitto, pki: Pki, op: Operator,
) -> None:
    doc = document(tmp_path, broker, pki, op)
    agent, task, path = await start_agent(tmp_path, doc)
    tls = ["--broker", f"mqtts://localhost:{broker.tls_port}", "--ca", str(pki.ca_cert),
           "--cert", str(pki.client_cert), "--key", str(pki.client_key)]
    try:
        new = json.loads(json.dumps(doc))
        new["lighting"]["programs"]["steady"]["fixed_time_controls"][0]["level"] = 45
        (tmp_path / "v2.toml").write_text(tomli_w.dumps(new))
        rc, out = await ctl("sign", str(tmp_path / "v2.toml"), "--key", str(op.priv),
                            "--version", "2", "--target", GATEWAY_ID,
                            "--out", str(tmp_path / "v2.cose"))
        assert rc == 0, out
        rc, out = await ctl("push", str(tmp_path / "v2.cose"), *tls, "--gateway", GATEWAY_ID,
                            "--wait", "--timeout", "30")
        assert rc == 0, out
        assert "applied" in out, out
        assert agent.lighting is not None
        assert agent.lighting.cfg.programs["steady"].fixed_time_controls[0].level == 45
        # Pushed again after v2: an older version is refused, and the exit status says so.
        rc, out = await ctl("sign", str(tmp_path / "v2.toml"), "--key", str(op.priv),
                            "--version", "1", "--target", GATEWAY_ID,
                            "--out", str(tmp_path / "v1.cose"))
        assert rc == 0, out
        rc, out = await ctl("push", str(tmp_path / "v1.cose"), *tls, "--gateway", GATEWAY_ID,
                            "--wait", "--timeout", "30")
        assert rc == 1, out
        assert "stale_version" in out, out
        rc, out = await ctl("status", *tls, "--gateway", GATEWAY_ID, "--json")
        assert rc == 0, out
        [state] = json.loads(out[out.index("["):])
        assert state["config_version"] == 2, state
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


async def test_a_new_uplink_certificate_reconnects_the_uplink_and_nothing_else(
    tmp_path: Path, broker: Mosquitto, pki: Pki, op: Operator,
    subscriber: Callable[..., Subscriber],
) -> None:
    doc = document(tmp_path, broker, pki, op)
    agent, task, path = await start_agent(tmp_path, doc)
    try:
        async with subscriber("passerelle/#") as sub:
            connects = agent.uplink.stats.connects
            store, engine = agent.store, agent.lighting
            renewed = pki.issue_client_cert(GATEWAY_ID, tmp_path / "renewed")
            new = json.loads(json.dumps(doc))
            new["uplink"]["cert_file"] = str(renewed.cert)
            new["uplink"]["key_file"] = str(renewed.key)
            await push(sub.client, PREFIX + "config/set", sign_config(new, op.key, version=2),
                       b"cert")
            ack = await final(sub, 2, timeout=30)
            assert ack["status"] == "applied", ack
            assert agent.uplink.stats.connects == connects + 1
            assert agent.uplink.s.cert_file == str(renewed.cert)
            assert agent.store is store and agent.lighting is engine
            assert agent.restarts == {}
    finally:
        agent.stop()
        await asyncio.wait_for(task, 15)


async def test_run_refuses_a_private_key_others_can_read(
    tmp_path: Path, broker: Mosquitto, pki: Pki, op: Operator,
) -> None:
    doc = document(tmp_path, broker, pki, op)
    leaked = tmp_path / "leaked.key"
    leaked.write_bytes(Path(pki.client_key).read_bytes())
    leaked.chmod(0o644)
    doc["uplink"]["key_file"] = str(leaked)
    path = tmp_path / "passerelle.toml"
    path.write_text(tomli_w.dumps(doc))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "passerelle", "run", "--config", str(path),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2, out.decode()
    assert "refusing to start" in out.decode() and str(leaked) in out.decode()


async def test_a_command_replayed_after_a_restart_is_refused(
    tmp_path: Path, broker: Mosquitto, pki: Pki, op: Operator,
    subscriber: Callable[..., Subscriber],
) -> None:
    doc = document(tmp_path, broker, pki, op)
    flush = sign_command("flush-store", {}, op.key, expires=int(time.time()) + 120)
    for attempt, expected in ((b"first", "done"), (b"replay", "rejected")):
        agent, task, _ = await start_agent(tmp_path, doc)
        try:
            async with subscriber(REPLY) as sub:
                await push(sub.client, PREFIX + "cmd/flush-store", flush, attempt)
                await sub.wait_for(1, timeout=10)
                ack = json.loads(sub.messages[0].payload)
                assert ack["status"] == expected, ack
        finally:
            agent.stop()
            await asyncio.wait_for(task, 15)
    assert ack["reason"] == "replayed"
