"""Answers to the operator: acks on ``config/ack`` and ``cmd/ack``, and on the request's MQTT 5
response topic with its correlation data when it had them.

An ack the link cannot carry now (the uplink is down, or is reconnecting with the settings
being tried) is queued in the vault, on disk: a ``rolled_back`` decided while the broker was
unreachable, or across a restart, still reaches the operator once the link is back.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any, Protocol

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger("passerelle.control")


class Link(Protocol):
    async def publish(
        self, topic: str, payload: bytes, *, retain: bool = False,
        properties: Properties | None = None,
    ) -> None: ...


class AckQueue(Protocol):
    def queue_ack(self, ack: dict[str, Any]) -> None: ...

    def acks(self) -> list[dict[str, Any]]: ...

    def acks_sent(self, n: int) -> None: ...


# Response topics must be under this prefix: an unverified request must not make the gateway
# publish on any topic it likes (another gateway's cmd/, a retained state).
RESPONSE_PREFIX = "passerelle/ctl/"


def reply_to(message: Any) -> dict[str, str]:
    """The request's response topic and correlation data (hex), to answer there too."""
    props = getattr(message, "properties", None)
    out: dict[str, str] = {}
    topic = getattr(props, "ResponseTopic", None)
    if (isinstance(topic, str) and topic.startswith(RESPONSE_PREFIX)
            and "#" not in topic and "+" not in topic):
        out["response_topic"] = topic
        data = getattr(props, "CorrelationData", None)
        if isinstance(data, (bytes, bytearray)):
            out["correlation"] = bytes(data).hex()
    return out


class Acks:
    """Publishes acks now, or queues them (durably) for when the link is back."""

    def __init__(self, link: Link, queue: AckQueue, prefix: str, gateway_id: str) -> None:
        self.link = link
        self.queue = queue
        self.prefix = prefix
        self.gateway_id = gateway_id
        self.sent = 0
        self.queued = 0

    def make(
        self, topic: str, reply: dict[str, str] | None = None, **fields: Any
    ) -> dict[str, Any]:
        ack = {"gateway": self.gateway_id, **fields, "time": round(time.time(), 3)}
        return {"_topic": topic, **(reply or {}), **ack}

    async def send(self, ack: dict[str, Any]) -> None:
        """Say it now if the link is up, else queue it; never raises."""
        if self.queue.acks():  # keep the order: older acks first
            self.queue.queue_ack(ack)
            self.queued += 1
            await self.flush()
            return
        try:
            await self._publish(ack)
        except Exception as exc:  # NotConnected, or the link dropped mid-publish
            log.info("ack %s queued until the uplink is back (%s)", ack.get("status"),
                     type(exc).__name__, extra={"cause": "control.ack_queued"})
            self.queue.queue_ack(ack)
            self.queued += 1

    async def flush(self) -> int:
        """Publish what was queued, oldest first; stops at the first failure."""
        pending = self.queue.acks()
        done = 0
        for ack in pending:
            try:
                await self._publish(ack)
            except Exception:  # still down: the rest waits with it
                break
            done += 1
        if done:
            self.queue.acks_sent(done)
        return done

    async def _publish(self, ack: dict[str, Any]) -> None:
        body = {k: v for k, v in ack.items() if not k.startswith("_") and k not in
                ("response_topic", "correlation")}
        body.setdefault("gateway", self.gateway_id)  # the vault's own acks (at boot)
        body.setdefault("time", round(time.time(), 3))
        payload = json.dumps(body, separators=(",", ":")).encode()
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        topic = self.prefix + ack.get("_topic", "config/ack")
        await self.link.publish(topic, payload, properties=props)
        if "response_topic" in ack:
            rprops = Properties(PacketTypes.PUBLISH)
            rprops.ContentType = "application/json"
            if "correlation" in ack:
                rprops.CorrelationData = bytes.fromhex(ack["correlation"])
            await self.link.publish(ack["response_topic"], payload, properties=rprops)
        self.sent += 1
