"""An aiomqtt client that reports what the broker said in its PUBACK.

aiomqtt's ``publish`` returns on PUBACK but drops the MQTT 5 reason code, so a broker that
refuses a message (0x87 not authorised, 0x97 quota exceeded, 0x99 payload format invalid)
looks like a success, and the store would delete data the broker never took. This subclass
records the reason code per packet id and raises :class:`PublishRefused` for codes >= 0x80.
It leans on aiomqtt 2.x internals (``_client``, ``_pending_call``, ``_wait_for``), hence the
``<3`` pin in pyproject.toml.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiomqtt
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode


class PublishRefused(aiomqtt.MqttError):
    """The broker answered a QoS 1 publish with a failure reason code (MQTT 5)."""

    def __init__(self, topic: str, reason: ReasonCode) -> None:
        super().__init__(f"broker refused publish on {topic}: {reason} (0x{reason.value:02x})")
        self.reason = reason


class AckedClient(aiomqtt.Client):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._reasons: dict[int, ReasonCode] = {}
        super().__init__(*args, **kwargs)

    def _on_publish(  # type: ignore[override]
        self,
        client: Any,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties,
    ) -> None:
        self._reasons[mid] = reason_code
        super()._on_publish(client, userdata, mid, reason_code, properties)

    async def publish_acked(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
        timeout: float | None = None,
    ) -> None:
        """Publish at QoS 1 and return once the broker acknowledged it, or raise."""
        info = self._client.publish(topic, payload, 1, retain, properties)
        if info.rc != 0:
            raise aiomqtt.MqttCodeError(info.rc, f"could not publish on {topic}")
        if not info.is_published():
            confirmation = asyncio.Event()
            with self._pending_call(info.mid, confirmation, self._pending_publishes):
                await self._wait_for(confirmation.wait(), timeout=timeout)
        reason = self._reasons.pop(info.mid, None)
        if reason is not None and reason.is_failure:
            raise PublishRefused(topic, reason)
