"""Shared fixtures: a real test PKI and a real mosquitto broker.

Fixtures
--------
``pki``                 session: :class:`hil.pki.Pki` in a session temp dir.
``mosquitto_bin``       session: path of mosquitto; skips when it is missing, except
                        under CI (``CI`` set), where a missing broker FAILS the test.
``broker``              a started :class:`hil.mosquitto.Mosquitto` (TLS listener with
                        client certificates + anonymous plaintext listener), stopped
                        after the test. Its log is added to the report of a failed test.
``client_tls_context``  ``ssl.SSLContext`` trusting the CA, presenting the gateway cert.
``mqtt_client``         factory: ``mqtt_client(protocol=..., tls=True, **kw)`` returns an
                        (unconnected) ``aiomqtt.Client`` for ``broker``.
``subscriber``          factory: ``async with subscriber("cab/+/up") as sub:`` ...
                        ``await sub.wait_for(2)`` collects messages of a topic filter.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from hil.mosquitto import Mosquitto, find_mosquitto
from hil.pki import Pki, make_pki

GATEWAY_ID = "cab-0042"


def running_under_ci() -> bool:
    """True when the environment says CI (CI=true, CI=1, ...)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


# ----------------------------------------------------------------------------- PKI


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"), GATEWAY_ID)


@pytest.fixture
def client_tls_context(pki: Pki) -> ssl.SSLContext:
    return pki.client_ssl_context()


# -------------------------------------------------------------------------- broker


@pytest.fixture(scope="session")
def mosquitto_bin() -> str:
    path = find_mosquitto()
    if path is None:
        reason = (
            "mosquitto is not installed (looked in $MOSQUITTO, $PATH, /usr/sbin): "
            "run scripts/test, or apt-get install mosquitto"
        )
        if running_under_ci():
            pytest.fail(f"{reason} -- required under CI", pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture
def broker(pki: Pki, mosquitto_bin: str, tmp_path: Path) -> Iterator[Mosquitto]:
    mosq = Mosquitto(pki, plain=True, workdir=tmp_path / "mosquitto", executable=mosquitto_bin)
    mosq.start()
    try:
        yield mosq
    finally:
        mosq.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed and call.when in ("call", "setup"):
        funcargs = getattr(item, "funcargs", {})
        mosq = funcargs.get("broker")
        if isinstance(mosq, Mosquitto):
            report.sections.append((f"mosquitto log ({mosq.log_path})", mosq.log_text()[-8000:]))
    return report


# ------------------------------------------------------------------------- clients


@pytest.fixture
def mqtt_client(
    broker: Mosquitto, client_tls_context: ssl.SSLContext
) -> Callable[..., aiomqtt.Client]:
    """Factory for aiomqtt clients of ``broker``: TLS with the gateway cert by default."""

    def make(
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5,
        *,
        tls: bool = True,
        tls_context: ssl.SSLContext | None = None,
        timeout: float = 5.0,
        **kwargs: Any,
    ) -> aiomqtt.Client:
        if tls:
            return aiomqtt.Client(
                broker.host,
                broker.tls_port,
                tls_context=tls_context or client_tls_context,
                protocol=protocol,
                timeout=timeout,
                **kwargs,
            )
        return aiomqtt.Client(
            broker.host, broker.plain_port, protocol=protocol, timeout=timeout, **kwargs
        )

    return make


class Subscriber:
    """An aiomqtt client subscribed to one topic filter, collecting what arrives.

    Use as ``async with``; ``messages`` is the list received so far, ``client`` the
    connected client (it can publish too).
    """

    def __init__(self, client: aiomqtt.Client, topic_filter: str, qos: int) -> None:
        self.client = client
        self.topic_filter = topic_filter
        self.qos = qos
        self.messages: list[aiomqtt.Message] = []
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Subscriber:
        await self.client.__aenter__()
        try:
            await self.client.subscribe(self.topic_filter, qos=self.qos)
        except BaseException:
            with contextlib.suppress(aiomqtt.MqttError):
                await self.client.__aexit__(None, None, None)
            raise
        self._task = asyncio.create_task(self._collect(), name=f"subscriber {self.topic_filter}")
        return self

    async def _collect(self) -> None:
        try:
            async for message in self.client.messages:
                self.messages.append(message)
                self._arrived.set()
        finally:
            self._arrived.set()  # wake wait_for() so it sees the task ended

    async def wait_for(self, count: int = 1, timeout: float = 5.0) -> list[aiomqtt.Message]:
        """Wait until ``count`` messages arrived; return the first ``count``."""
        assert self._task is not None, "use the subscriber with 'async with'"
        try:
            async with asyncio.timeout(timeout):
                while len(self.messages) < count:
                    if self._task.done():
                        self._task.result()  # raises what ended the subscription
                        raise AssertionError("subscription ended")
                    self._arrived.clear()
                    await self._arrived.wait()
        except TimeoutError:
            got = [str(m.topic) for m in self.messages]
            raise AssertionError(
                f"{self.topic_filter!r}: {len(got)} of {count} messages within {timeout}s: {got}"
            ) from None
        return self.messages[:count]

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await self._task
        # the broker may be gone (killed by the test): nothing to disconnect from
        with contextlib.suppress(aiomqtt.MqttError):
            await self.client.__aexit__(None, None, None)


@pytest.fixture
def subscriber(mqtt_client: Callable[..., aiomqtt.Client]) -> Callable[..., Subscriber]:
    """Factory: ``subscriber(topic_filter, qos=1, protocol=V5, tls=True, **client_kw)``."""

    def make(
        topic_filter: str,
        *,
        qos: int = 1,
        protocol: aiomqtt.ProtocolVersion = aiomqtt.ProtocolVersion.V5,
        tls: bool = True,
        **kwargs: Any,
    ) -> Subscriber:
        return Subscriber(mqtt_client(protocol, tls=tls, **kwargs), topic_filter, qos)

    return make
