"""The uplink: drains the durable store to the upstream MQTT broker.

Topics, under ``passerelle/<gateway-id>/``:

=============  ======  =======  ==========================================================
topic          QoS     retain   payload
=============  ======  =======  ==========================================================
``up/senml``   1       no       SenML-CBOR pack (``application/senml+cbor``), one batch
``state``      1       yes      JSON health object; the last will sets ``online: false``
=============  ======  =======  ==========================================================

Other parts publish through :meth:`Uplink.publish` (the control's acks) and receive what
they subscribed to through ``on_message`` (signed configuration and commands).

Delivery is at least once: a batch leaves the store only when its pack got a PUBACK with a
success reason code. The store fixes each batch's records before it is first sent (see
:mod:`passerelle.store.segments`), so a pack resent after a reconnect or a restart carries
the same records and the same idempotency key, ``<gateway-id>/<first-seq>-<last-seq>``: in
the pack (``idk``) and, with MQTT 5, as the user property ``idempotency-key``.

After an outage the backlog drains highest priority first (alarms, then energy, then
telemetry) at no more than ``max_rate`` records per second: a fleet coming back at once
must not flatten the broker. Reconnects back off exponentially with full jitter.

Data sobriety at the last step (both optional, from ``[policy]``): records older than
their stream's retention TTL are dropped from a pack before it is encoded (counted in
``expired``), and each pack must fit the daily upstream byte budget. A pack the budget
refuses stays in the store and its priority (and those below) waits for the next local
midnight, while higher priorities go on; alarms always pass.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from .. import senml
from ..model import Priority, Record
from ..store import Batch, DurableStore
from .client import AckedClient

log = logging.getLogger("passerelle.uplink")


@dataclass(slots=True)
class UplinkSettings:
    """What the uplink needs from config (see the ``[uplink]`` section of the README)."""

    gateway_id: str
    host: str
    port: int
    tls: bool = True
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    protocol: int = 5
    client_id: str | None = None
    username: str | None = None
    password_file: str | None = None
    keepalive: int = 30
    batch_records: int = 250
    compression: str = "zlib"  # zlib | none
    max_rate: float = 5000.0
    max_inflight: int = 4
    backoff_initial: float = 1.0
    backoff_max: float = 300.0
    state_interval: float = 30.0
    publish_timeout: float = 15.0


@dataclass(slots=True)
class UplinkStats:
    link: str = "down"  # down | connecting | up
    connects: int = 0
    packs_sent: int = 0
    records_sent: int = 0
    bytes_sent: int = 0
    last_error: str | None = None
    last_pack: bytes | None = None
    connected_since: float | None = None
    refused: int = 0
    history: list[str] = field(default_factory=list)
    expired: int = 0  # records dropped at send time: older than their stream's TTL
    budget_held: int = 0  # packs the daily byte budget sent back to the store


class Budget(Protocol):
    """The daily upstream byte budget (:class:`passerelle.policy.budget.DailyBudget`)."""

    def try_spend(self, nbytes: int, priority: Priority, now: float) -> bool: ...

    def resets_at(self, now: float) -> float: ...


# records, now -> the records still worth sending (a stream's retention TTL)
RecordFilter = Callable[[list[Record], float], list[Record]]


class _SessionEnd(Exception):
    """Raised inside the session's task group to end it on stop()."""


class _Reconnect(Exception):
    """Raised inside the session's task group to connect again with new settings."""


class NotConnected(Exception):
    """:meth:`Uplink.publish` while the link is down: the caller keeps its message."""


class TokenBucket:
    """Caps the drain rate: ``rate`` records a second, bursts of up to ``burst``."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._stamp = time.monotonic()
        self.unlimited = False

    async def take(self, n: int) -> None:
        while not self.unlimited:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            if self._tokens >= n or self._tokens >= self.burst:
                self._tokens -= n  # may go negative for a batch bigger than the burst
                return
            await asyncio.sleep((min(n, self.burst) - self._tokens) / self.rate)


def tls_context(s: UplinkSettings) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=s.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.cert_file and s.key_file:
        ctx.load_cert_chain(s.cert_file, s.key_file)
    return ctx


class Uplink:
    """Owns the MQTT connection. ``await uplink.run()`` until cancelled.

    health: returns the JSON-able health object published on ``state``.
    on_message: called with each message received on ``subscriptions`` (full topic
    filters, or a callable returning them, read at each connection). It must return
    quickly: messages are handled one at a time.
    """

    def __init__(
        self,
        settings: UplinkSettings,
        store: DurableStore,
        *,
        health: Callable[[], dict[str, Any]] = dict,
        on_message: Callable[[aiomqtt.Message], Awaitable[None]] | None = None,
        subscriptions: tuple[str, ...] | Callable[[], Sequence[str]] = (),
        budget: Budget | None = None,
        record_filter: RecordFilter | None = None,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.s = settings
        self.store = store
        self.health = health
        self.on_message = on_message
        self.subscriptions = subscriptions
        self.stats = UplinkStats()
        self.prefix = f"passerelle/{settings.gateway_id}/"
        self.bucket = TokenBucket(settings.max_rate, max(settings.max_rate, settings.batch_records))
        self._base_name = partial(senml.device_base_name, settings.gateway_id)
        self._stopping = asyncio.Event()
        self._reconnect = asyncio.Event()
        self.connected = asyncio.Event()  # set while a session is up
        self._client: AckedClient | None = None
        self.budget = budget
        self.record_filter = record_filter
        self._wall = wall  # the calendar the budget's days and the TTLs are counted in
        self._held_below = Priority.DIAGNOSTIC  # lowest priority the budget lets through
        self._held_until = 0.0  # wall clock when it lets everything through again

    # -- connection loop ------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, drain and reconnect until :meth:`stop`."""
        backoff = self.s.backoff_initial
        while not self._stopping.is_set():
            self.stats.link = "connecting"
            self._reconnect.clear()  # these settings are the ones used now
            try:
                async with self._connect() as client:
                    self._client = client
                    self.stats.link = "up"
                    self.stats.connects += 1
                    self.stats.connected_since = time.time()
                    self.stats.last_error = None
                    log.info("connected to %s:%d", self.s.host, self.s.port,
                             extra={"cause": "uplink.connect"})
                    backoff = self.s.backoff_initial
                    await self._session(client)
            except* _SessionEnd:
                pass  # stop() ended the session: leaving the block sends DISCONNECT
            except* _Reconnect:
                self.stats.link = "down"
                log.info("reconnecting with new settings", extra={"cause": "uplink.reconfigure"})
                backoff = 0.0  # at once: nothing went wrong
            except* aiomqtt.MqttError as group:
                self._lost(str(group.exceptions[0]))
            except* (OSError, ssl.SSLError) as group:
                err = group.exceptions[0]
                self._lost(f"{type(err).__name__}: {err}")
            finally:
                self._client = None
                self.connected.clear()
                self.store.release()
            if self._stopping.is_set():
                break
            if backoff == 0.0:
                backoff = self.s.backoff_initial
                continue
            # Full jitter: a fleet that lost the broker together does not come back together.
            delay = random.uniform(0, backoff)
            backoff = min(self.s.backoff_max, backoff * 2)
            try:
                await asyncio.wait_for(self._until_either(), delay)
            except TimeoutError:
                pass
        self.stats.link = "down"

    async def _until_either(self) -> None:
        """Until stop() or reconfigure()."""
        stop = asyncio.ensure_future(self._stopping.wait())
        again = asyncio.ensure_future(self._reconnect.wait())
        try:
            await asyncio.wait((stop, again), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            again.cancel()

    def _lost(self, why: str) -> None:
        self.stats.link = "down"
        self.stats.last_error = why
        self.stats.connected_since = None
        log.warning("uplink down: %s", why, extra={"cause": "uplink.down"})

    def _connect(self) -> AckedClient:
        s = self.s
        v5 = s.protocol == 5
        password = None
        if s.password_file:
            with open(s.password_file, encoding="utf-8") as fh:
                password = fh.read().strip()
        will = aiomqtt.Will(
            self.prefix + "state",
            json.dumps({"online": False, "reason": "connection lost"}).encode(),
            qos=1,
            retain=True,
        )
        return AckedClient(
            s.host,
            s.port,
            identifier=s.client_id or s.gateway_id,
            protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
            username=s.username,
            password=password,
            tls_context=tls_context(s) if s.tls else None,
            keepalive=s.keepalive,
            will=will,
            timeout=s.publish_timeout,
            max_inflight_messages=max(20, s.max_inflight * 2),
            clean_session=None if v5 else True,
        )

    async def _session(self, client: AckedClient) -> None:
        subs = self.subscriptions() if callable(self.subscriptions) else self.subscriptions
        for topic in subs:
            await client.subscribe(topic, qos=1)
        await self.publish_state(client)
        self.connected.set()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._receive(client))
            tg.create_task(self._state_loop(client))
            tg.create_task(self._drain(client))
            tg.create_task(self._until_stopped())

    async def _until_stopped(self) -> None:
        await self._until_either()
        raise _SessionEnd if self._stopping.is_set() else _Reconnect

    async def _receive(self, client: AckedClient) -> None:
        # Iterating the messages also surfaces a lost connection as MqttError.
        async for message in client.messages:
            if self.on_message is not None:
                await self.on_message(message)

    async def _state_loop(self, client: AckedClient) -> None:
        while True:
            await asyncio.sleep(self.s.state_interval)
            await self.publish_state(client)

    async def publish_state(self, client: AckedClient, online: bool = True) -> None:
        state = {"online": online, **self.health()}
        await client.publish_acked(
            self.prefix + "state", json.dumps(state, separators=(",", ":")).encode(), retain=True
        )

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Publish at QoS 1 now and wait for the broker's PUBACK; :class:`NotConnected`
        while the link is down (the caller keeps what it wanted to say)."""
        client = self._client
        if client is None or not self.connected.is_set():
            raise NotConnected(topic)
        await client.publish_acked(topic, payload, retain=retain, properties=properties)

    def reconfigure(self, settings: UplinkSettings) -> None:
        """New broker, certificate or credentials: end the session and connect with them.

        The store, the drain position and the stats carry over: nothing queued is lost."""
        self.s = settings
        self.prefix = f"passerelle/{settings.gateway_id}/"
        self.bucket.rate = settings.max_rate
        self._reconnect.set()

    async def stop(self) -> None:
        """Say goodbye on ``state`` (so the will is not needed), then end :meth:`run`."""
        client = self._client
        if client is not None:
            self.stats.link = "stopping"
            try:
                await asyncio.wait_for(self.publish_state(client, online=False), 2.0)
            except (aiomqtt.MqttError, TimeoutError, OSError) as exc:
                log.warning("could not publish final state: %s", exc,
                            extra={"cause": "uplink.stop"})
        self._stopping.set()

    # -- draining -------------------------------------------------------------------------

    async def _drain(self, client: AckedClient) -> None:
        inflight = asyncio.Semaphore(self.s.max_inflight)
        async with asyncio.TaskGroup() as tg:
            while True:
                if self._held_below > Priority.DIAGNOSTIC and self._wall() >= self._held_until:
                    self._held_below = Priority.DIAGNOSTIC  # a new day
                batches = await self.store.lease(self.s.max_inflight, self._held_below)
                if not batches:
                    await self.store.wait_for_data(timeout=0.25)
                    continue
                for batch in batches:
                    await self.bucket.take(len(batch.records))
                    await inflight.acquire()
                    tg.create_task(self._publish_batch(client, inflight, batch))

    async def _publish_batch(
        self, client: AckedClient, inflight: asyncio.Semaphore, batch: Batch
    ) -> None:
        try:
            key = f"{self.s.gateway_id}/{batch.seq}-{batch.last_seq}"
            now = self._wall()
            records = batch.records
            if self.record_filter is not None:
                records = self.record_filter(records, now)
                self.stats.expired += len(batch.records) - len(records)
                if not records:  # nothing left worth sending: done with it
                    self.store.ack(batch.seq)
                    return
            payload = senml.encode_pack(records, self._base_name, key)
            if self.s.compression == "zlib":
                payload = senml.compress(payload)
            if self.budget is not None and not self.budget.try_spend(
                len(payload), batch.priority, now
            ):
                # Back to the store; this priority and those below wait for the new day.
                self.store.release([batch.seq])
                self.stats.budget_held += 1
                self._held_below = max(self._held_below, Priority(batch.priority + 1))
                self._held_until = self.budget.resets_at(now)
                log.warning(
                    "daily upstream budget spent for %s data: held until %s",
                    batch.priority.name.lower(),
                    time.strftime("%Y-%m-%d %H:%M", time.localtime(self._held_until)),
                    extra={"cause": f"uplink.budget.{batch.priority.name.lower()}"},
                )
                return
            props = None
            if self.s.protocol == 5:
                props = Properties(PacketTypes.PUBLISH)
                props.ContentType = senml.CONTENT_TYPE
                props.UserProperty = [("idempotency-key", key)]
                if senml.is_compressed(payload):
                    props.UserProperty.append(("content-encoding", "deflate"))
            await client.publish_acked(self.prefix + "up/senml", payload, properties=props)
        finally:
            inflight.release()
        self.stats.packs_sent += 1
        self.stats.records_sent += len(records)
        self.stats.bytes_sent += len(payload)
        self.stats.last_pack = payload
        self.store.ack(batch.seq)

    def flush(self, on: bool = True) -> None:
        """Drain without the rate cap (an operator's ``flush-store`` command)."""
        self.bucket.unlimited = on
