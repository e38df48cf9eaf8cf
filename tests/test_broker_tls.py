"""The test broker's mutual TLS, against a real mosquitto with a real PKI.

Who gets in: only a client presenting a certificate of the trusted CA, and only to a
broker whose certificate it can verify. Refusals are checked on both sides: the client
gets an ``aiomqtt.MqttError`` (never a hang), and the broker's log says why.

Note on TLS 1.3: the client finishes its side of the handshake before the broker has
looked at the client certificate, so the broker's refusal arrives as an alert on the
first read after CONNECT. aiomqtt does not turn that into a connect error: the client
sees "Operation timed out" after its ``timeout``, and the alert itself is only logged by
paho. With TLS 1.2 the refusal is a handshake failure inside connect().
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import stat
import time
import uuid

import aiomqtt
import pytest

from hil.mosquitto import Mosquitto
from hil.pki import Pki

V5 = aiomqtt.ProtocolVersion.V5
V311 = aiomqtt.ProtocolVersion.V311
PROTOCOLS = [pytest.param(V5, id="mqtt5"), pytest.param(V311, id="mqtt311")]

#: Upper bound for anything that should be quick; a refused client waits for its own
#: aiomqtt timeout (REFUSAL_TIMEOUT) at most.
STEP = 10.0
REFUSAL_TIMEOUT = 2.0


def unique_topic(prefix: str) -> str:
    return f"test/{prefix}/{uuid.uuid4().hex[:12]}"


async def wait_for_log(broker: Mosquitto, needle: str, timeout: float = 5.0) -> str:
    """Wait until mosquitto's log contains ``needle``; return the log."""
    deadline = time.monotonic() + timeout
    while True:
        text = broker.log_text()
        if needle in text:
            return text
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in mosquitto log:\n{text[-3000:]}")
        await asyncio.sleep(0.02)


def with_max_tls(ctx: ssl.SSLContext, version: ssl.TLSVersion | None) -> ssl.SSLContext:
    if version is not None:
        ctx.maximum_version = version
    return ctx


TLS_VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    pytest.param(None, id="tls1.3"),  # the default: the best both sides have
]


async def connect_expecting_refusal(client: aiomqtt.Client) -> str:
    """Connect, expect aiomqtt.MqttError; return its message."""
    async with asyncio.timeout(STEP):
        with pytest.raises(aiomqtt.MqttError) as excinfo:
            async with client:
                pytest.fail("the connection was accepted: it should have been refused")
    close_leaked_sockets(excinfo.value)
    return str(excinfo.value)


def close_leaked_sockets(error: BaseException) -> None:
    """Close the sockets left open in the frames of ``error``'s exception chain.

    paho-mqtt 2.2 does not close its socket when the TLS handshake fails inside
    connect(). The socket lives on in the traceback and, when finally collected, warns
    (ResourceWarning) in whatever test happens to be running then.
    """
    seen: set[int] = set()
    exc: BaseException | None = error
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        tb = exc.__traceback__
        while tb is not None:
            for value in tb.tb_frame.f_locals.values():
                if isinstance(value, socket.socket):
                    value.close()
            tb = tb.tb_next
        exc = exc.__cause__ or exc.__context__


# ------------------------------------------------------------------- (a) accepted


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_client_cert_round_trips_qos1(broker, mqtt_client, subscriber, pki, protocol):
    topic = unique_topic("roundtrip")
    payload = os.urandom(32)
    async with asyncio.timeout(STEP):
        async with subscriber(topic, qos=1, protocol=protocol) as sub:
            async with mqtt_client(protocol) as publisher:
                await publisher.publish(topic, payload, qos=1)
            (message,) = await sub.wait_for(1)
    assert str(message.topic) == topic
    assert message.payload == payload
    assert message.qos == 1
    # use_identity_as_username: the certificate's CN is the MQTT username
    tag = "p5" if protocol == V5 else "p2"  # mosquitto's numbering: 2 is MQTT 3.1.1
    log = await wait_for_log(broker, f"u'{pki.gateway_id}'")
    assert any(tag in line and f"u'{pki.gateway_id}'" in line for line in log.splitlines())


async def test_server_cert_valid_for_ip_address(broker, pki):
    """The server certificate also verifies when connecting to 127.0.0.1 (IP SAN)."""
    async with asyncio.timeout(STEP):
        async with aiomqtt.Client(
            "127.0.0.1", broker.tls_port, tls_context=pki.client_ssl_context(), timeout=5
        ) as client:
            await client.publish(unique_topic("ip"), b"x", qos=1)


async def test_extra_client_cert_is_accepted(broker, mqtt_client, pki, tmp_path):
    other = pki.issue_client_cert("cab-0099")
    ctx = pki.client_ssl_context(other.cert, other.key)
    async with asyncio.timeout(STEP):
        async with mqtt_client(tls_context=ctx) as client:
            await client.publish(unique_topic("extra"), b"x", qos=1)
    await wait_for_log(broker, "u'cab-0099'")


async def test_plain_listener_is_anonymous_and_shares_topics(subscriber, mqtt_client):
    topic = unique_topic("plain")
    async with asyncio.timeout(STEP):
        async with subscriber(topic) as sub:  # over TLS
            async with mqtt_client(tls=False) as plain:  # no credentials at all
                await plain.publish(topic, b"from plain", qos=1)
            (message,) = await sub.wait_for(1)
    assert message.payload == b"from plain"


async def test_restart_keeps_ports(broker, mqtt_client):
    ports = (broker.tls_port, broker.plain_port)
    broker.restart()
    assert (broker.tls_port, broker.plain_port) == ports
    broker.restart(hard=True)
    assert (broker.tls_port, broker.plain_port) == ports
    async with asyncio.timeout(STEP):
        async with mqtt_client() as client:
            await client.publish(unique_topic("restart"), b"x", qos=1)


# ------------------------------------------------------------------- (b), (c) refused


@pytest.mark.parametrize("tls_version", TLS_VERSIONS)
async def test_client_without_certificate_is_refused(broker, mqtt_client, pki, caplog, tls_version):
    caplog.set_level(logging.ERROR)
    ctx = with_max_tls(pki.client_ssl_context(with_client_cert=False), tls_version)
    error = await connect_expecting_refusal(mqtt_client(tls_context=ctx, timeout=REFUSAL_TIMEOUT))
    if tls_version == ssl.TLSVersion.TLSv1_2:
        assert "HANDSHAKE_FAILURE" in error
    else:
        assert "TLSV13_ALERT_CERTIFICATE_REQUIRED" in f"{error} {caplog.text}"
    await wait_for_log(broker, "peer did not return a certificate")
    assert f"u'{pki.gateway_id}'" not in broker.log_text()


@pytest.mark.parametrize("tls_version", TLS_VERSIONS)
async def test_client_cert_from_untrusted_ca_is_refused(
    broker, mqtt_client, pki, caplog, tls_version
):
    caplog.set_level(logging.ERROR)
    # same CN as the real gateway: only the issuer differs
    ctx = with_max_tls(pki.client_ssl_context(pki.rogue_cert, pki.rogue_key), tls_version)
    error = await connect_expecting_refusal(mqtt_client(tls_context=ctx, timeout=REFUSAL_TIMEOUT))
    assert "TLSV1_ALERT_UNKNOWN_CA" in f"{error} {caplog.text}"
    await wait_for_log(broker, "certificate verify failed")
    assert f"u'{pki.gateway_id}'" not in broker.log_text()


# ---------------------------------------------------------------------- (d) server


async def test_client_refuses_broker_it_does_not_trust(broker, mqtt_client, pki):
    # trusts only the rogue CA, presents a perfectly good client certificate
    ctx = pki.client_ssl_context(cafile=pki.rogue_ca_cert)
    error = await connect_expecting_refusal(mqtt_client(tls_context=ctx))
    assert "CERTIFICATE_VERIFY_FAILED" in error
    assert f"u'{pki.gateway_id}'" not in broker.log_text()


# ------------------------------------------------------------------------- the PKI


def test_private_keys_are_owner_only(pki: Pki):
    keys = [pki.ca_key, pki.server_key, pki.client_key, pki.rogue_ca_key, pki.rogue_key]
    for key in keys:
        mode = stat.S_IMODE(key.stat().st_mode)
        assert mode == 0o600, f"{key.name}: {oct(mode)}"
    for cert in [pki.ca_cert, pki.server_cert, pki.client_cert, pki.rogue_cert]:
        assert cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")


def test_private_key_rewrite_is_owner_only(pki: Pki, tmp_path):
    stale = tmp_path / "client-cab-0100.key"
    stale.write_text("old")
    stale.chmod(0o644)
    issued = pki.issue_client_cert("cab-0100", tmp_path)
    assert issued.key == stale
    assert stat.S_IMODE(stale.stat().st_mode) == 0o600
