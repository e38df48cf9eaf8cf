"""A simulated Semtech packet forwarder: speaks GWMP v2 over real UDP like ``lora_pkt_fwd``.

It stands in for a concentrator HAT in tests and demos. Deliberately written apart from
:mod:`passerelle.radio.semtech_udp` (no shared encoder), straight from PROTOCOL.TXT, so a
mistake on one side is not mirrored on the other.

As the real forwarder does, it uses two sockets: *up* for PUSH_DATA/PUSH_ACK, *down* for
PULL_DATA/PULL_ACK/PULL_RESP/TX_ACK, so a server that answers downlinks to the push address
fails against it just as it would in the field.

Test knobs:

* ``next_tx_error = "TOO_LATE"``: the next TX_ACK carries that error (one shot);
  ``tx_error`` is the same but sticks;
* ``send_tx_ack = False``: answer no PULL_RESP at all (like a version 1 forwarder);
* ``tx_ack_body``: ``"empty"`` (success without JSON, like lora_pkt_fwd) or ``"none"``
  (success as ``{"txpk_ack":{"error":"NONE"}}``, as some forwarders send);
* ``check_timing = True``: refuse scheduled downlinks the way the just-in-time queue of
  lora_pkt_fwd does (TOO_LATE under ``min_lead_us`` ahead, TOO_EARLY beyond ``max_lead_us``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from passerelle.radio.base import RxFrame

__all__ = ["Downlink", "SimPacketForwarder"]

log = logging.getLogger("passerelle.hil.packet_forwarder")

# Identifiers of PROTOCOL.TXT (Lora-net/packet_forwarder, protocol version 2).
_PUSH_DATA, _PUSH_ACK, _PULL_DATA, _PULL_RESP, _PULL_ACK, _TX_ACK = range(6)
_TMST_MODULO = 1 << 32

# lora_pkt_fwd jitqueue.c: TX_START_DELAY 1500 + TX_MARGIN_DELAY 1000 + TX_JIT_DELAY 30000 µs;
# TX_MAX_ADVANCE_DELAY (JIT_NUM_BEACON_IN_QUEUE + 1) * 128 s with 3 beacons queued.
MIN_LEAD_US = 32_500
MAX_LEAD_US = 512_000_000


@dataclass(frozen=True, slots=True)
class Downlink:
    """One PULL_RESP as the forwarder decoded it."""

    txpk: dict[str, Any]  # every field as sent
    payload: bytes  # data, decoded
    token: int
    received_tmst: int  # concentrator clock when the PULL_RESP arrived
    tx_error: str | None  # what the TX_ACK said (None: success / no TX_ACK sent)

    @property
    def imme(self) -> bool:
        return bool(self.txpk.get("imme", False))

    @property
    def tmst(self) -> int | None:
        value = self.txpk.get("tmst")
        return int(value) if value is not None else None

    @property
    def freq(self) -> float:
        return float(self.txpk["freq"])

    @property
    def datr(self) -> str:
        return str(self.txpk["datr"])

    def lead_us(self) -> int | None:
        """How far ahead of its arrival the downlink was scheduled (µs, wrap-aware)."""
        if self.tmst is None:
            return None
        return _signed32(self.tmst - self.received_tmst)


def _signed32(value: int) -> int:
    value %= _TMST_MODULO
    return value - _TMST_MODULO if value >= _TMST_MODULO // 2 else value


def _eui_bytes(gateway_eui: str) -> bytes:
    try:
        raw = bytes.fromhex(gateway_eui)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise ValueError(f"gateway_eui must be 16 hex digits, got {gateway_eui!r}")
    return raw


class _Socket(asyncio.DatagramProtocol):
    def __init__(self, owner: SimPacketForwarder, name: str) -> None:
        self.owner = owner
        self.name = name

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.owner._received(self.name, data)

    def error_received(self, exc: Exception) -> None:
        self.owner.socket_errors += 1


@dataclass
class _Counters:
    rxnb: int = 0  # radio packets received (pushed)
    rxok: int = 0
    rxfw: int = 0
    push_sent: int = 0
    push_acked: int = 0
    dwnb: int = 0  # PULL_RESP received
    txnb: int = 0  # downlinks accepted
    other: dict[str, int] = field(default_factory=dict)


class SimPacketForwarder:
    """A gateway ``gateway_eui`` forwarding to ``server_host:server_port``."""

    def __init__(
        self,
        server_host: str,
        server_port: int,
        gateway_eui: str,
        *,
        keepalive: float = 5.0,
        push_timeout: float = 1.0,
        push_retries: int = 0,
        stat_interval: float | None = None,
        version: int = 2,
        tmst_offset: int = 0,
    ) -> None:
        if not keepalive > 0 or not push_timeout > 0:
            raise ValueError("keepalive and push_timeout must be > 0 s")
        self.server = (server_host, server_port)
        self.gateway_eui = gateway_eui.lower()
        self._eui = _eui_bytes(gateway_eui)
        self.keepalive = keepalive
        self.push_timeout = push_timeout
        self.push_retries = push_retries
        self.stat_interval = stat_interval
        self.version = version
        self.downlinks: asyncio.Queue[Downlink] = asyncio.Queue()
        # Test knobs (see module docstring).
        self.next_tx_error: str | None = None
        self.tx_error: str | None = None
        self.send_tx_ack = True
        self.tx_ack_body = "empty"
        self.check_timing = False
        self.min_lead_us = MIN_LEAD_US
        self.max_lead_us = MAX_LEAD_US
        # What happened, for assertions.
        self.pull_acks = 0
        self.pull_data_sent = 0
        self.bad_datagrams = 0
        self.socket_errors = 0
        self.counters = _Counters()
        self._epoch = time.monotonic()
        self._tmst_offset = tmst_offset
        self._up: asyncio.DatagramTransport | None = None
        self._down: asyncio.DatagramTransport | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._push_waiters: dict[bytes, asyncio.Future[None]] = {}
        self._pull_token = b""
        self._pulled = asyncio.Event()

    # -- clock ------------------------------------------------------------------------

    def tmst(self) -> int:
        """Concentrator counter: µs since start (plus ``tmst_offset``), wrapping at 2^32."""
        elapsed = int((time.monotonic() - self._epoch) * 1_000_000)
        return (elapsed + self._tmst_offset) % _TMST_MODULO

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._up, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self, "up"), remote_addr=self.server
        )
        self._down, _ = await loop.create_datagram_endpoint(
            lambda: _Socket(self, "down"), remote_addr=self.server
        )
        self._tasks.append(asyncio.create_task(self._keepalive(), name="pkt_fwd keepalive"))
        if self.stat_interval:
            self._tasks.append(asyncio.create_task(self._stats_loop(), name="pkt_fwd stat"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for transport in (self._up, self._down):
            if transport is not None:
                transport.close()
        self._up = self._down = None

    async def __aenter__(self) -> SimPacketForwarder:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def wait_pulled(self, timeout: float = 2.0) -> None:
        """Wait for a PULL_ACK: from then on the server can reach us with PULL_RESP."""
        async with asyncio.timeout(timeout):
            await self._pulled.wait()

    async def pull(self, wait: bool = False, timeout: float = 2.0) -> None:
        """Send one PULL_DATA now (the keepalive loop does it every ``keepalive`` s).

        With ``wait``, return once the server acknowledged this very PULL_DATA.
        """
        self._pull_token = random.getrandbits(16).to_bytes(2, "big")
        self._pulled.clear()
        self._send("down", self._header(self._pull_token, _PULL_DATA) + self._eui)
        self.pull_data_sent += 1
        if wait:
            await self.wait_pulled(timeout)

    # -- uplink -----------------------------------------------------------------------

    def rxpk(
        self,
        payload: bytes,
        *,
        freq: float = 868.1,
        datr: str = "SF7BW125",
        codr: str = "4/5",
        rssi: float = -60,
        lsnr: float = 7.5,
        tmst: int | None = None,
        stat: int = 1,
        chan: int = 0,
        rfch: int = 0,
        time: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """An rxpk object as lora_pkt_fwd writes it (``tmst`` defaults to the clock now)."""
        obj: dict[str, Any] = {
            "tmst": self.tmst() if tmst is None else tmst,
            "chan": chan,
            "rfch": rfch,
            "freq": freq,
            "stat": stat,
            "modu": "LORA",
            "datr": datr,
            "codr": codr,
            "rssi": rssi,
            "lsnr": lsnr,
            "size": len(payload),
            "data": base64.b64encode(payload).decode("ascii"),
        }
        if time is not None:
            obj["time"] = time
        obj.update(extra)
        return obj

    async def push(self, payload: bytes = b"", **fields: Any) -> bool:
        """Forward one received frame (fields as :meth:`rxpk`); True once PUSH_ACKed."""
        rxpk = self.rxpk(payload, **fields)
        c = self.counters
        c.rxnb += 1
        if rxpk.get("stat") == 1:
            c.rxok += 1
        c.rxfw += 1
        return await self.push_json({"rxpk": [rxpk]})

    async def push_frame(self, frame: RxFrame) -> bool:
        """Forward what a simulated radio medium heard, given as an :class:`RxFrame`."""
        fields: dict[str, Any] = {
            "freq": frame.frequency,
            "datr": frame.datarate,
            "codr": frame.coding_rate,
            "rssi": frame.rssi,
            "lsnr": frame.snr,
            "tmst": frame.tmst,
            "stat": 1 if frame.crc_ok else -1,
            "chan": frame.channel if frame.channel is not None else 0,
        }
        if frame.time is not None:
            moment = datetime.fromtimestamp(frame.time, UTC)
            fields["time"] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return await self.push(frame.payload, **fields)

    async def push_stat(self, **overrides: Any) -> bool:
        """Send a status report (PROTOCOL.TXT section 4 ``stat`` object)."""
        return await self.push_json({"stat": self.stat(**overrides)})

    def stat(self, **overrides: Any) -> dict[str, Any]:
        c = self.counters
        acked = 100.0 * c.push_acked / c.push_sent if c.push_sent else 0.0
        obj: dict[str, Any] = {
            "time": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S GMT"),
            "rxnb": c.rxnb,
            "rxok": c.rxok,
            "rxfw": c.rxfw,
            "ackr": round(acked, 1),
            "dwnb": c.dwnb,
            "txnb": c.txnb,
        }
        obj.update(overrides)
        return obj

    async def push_json(self, obj: Any) -> bool:
        """PUSH_DATA with any JSON body; waits for the PUSH_ACK (with retries)."""
        body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
        return await self.push_body(body)

    async def push_body(self, body: bytes) -> bool:
        """PUSH_DATA with ``body`` as is (for malformed-JSON tests)."""
        loop = asyncio.get_running_loop()
        for _ in range(1 + self.push_retries):
            token = random.getrandbits(16).to_bytes(2, "big")
            waiter: asyncio.Future[None] = loop.create_future()
            self._push_waiters[token] = waiter
            try:
                self._send("up", self._header(token, _PUSH_DATA) + self._eui + body)
                self.counters.push_sent += 1
                async with asyncio.timeout(self.push_timeout):
                    await waiter
                self.counters.push_acked += 1
                return True
            except TimeoutError:
                continue
            finally:
                self._push_waiters.pop(token, None)
        return False

    def send_raw(self, data: bytes, via: str = "up") -> None:
        """Send ``data`` unchanged from the up or down socket (garbage tests)."""
        self._send(via, data)

    # -- internals --------------------------------------------------------------------

    def _header(self, token: bytes, identifier: int) -> bytes:
        return bytes((self.version,)) + token + bytes((identifier,))

    def _send(self, via: str, data: bytes) -> None:
        transport = self._up if via == "up" else self._down
        if transport is None:
            raise RuntimeError("SimPacketForwarder not started")
        transport.sendto(data)

    async def _keepalive(self) -> None:
        while True:
            await self.pull()
            await asyncio.sleep(self.keepalive)

    async def _stats_loop(self) -> None:
        assert self.stat_interval
        while True:
            await asyncio.sleep(self.stat_interval)
            await self.push_stat()

    def _received(self, via: str, data: bytes) -> None:
        if len(data) < 4 or data[0] != self.version:
            self._bad(f"{via}: {len(data)} bytes, version {data[:1].hex()}")
            return
        token, identifier = data[1:3], data[3]
        if via == "up" and identifier == _PUSH_ACK:
            waiter = self._push_waiters.get(token)
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif via == "down" and identifier == _PULL_ACK:
            if token == self._pull_token:
                self.pull_acks += 1
                self._pulled.set()
        elif via == "down" and identifier == _PULL_RESP:
            self._pull_resp(token, data[4:])
        else:
            self._bad(f"{via}: identifier 0x{identifier:02x} unexpected")

    def _bad(self, what: str) -> None:
        self.bad_datagrams += 1
        log.warning("simulated forwarder %s ignored a datagram: %s", self.gateway_eui, what)

    def _pull_resp(self, token: bytes, body: bytes) -> None:
        # lora_pkt_fwd ignores a PULL_RESP it cannot parse and sends no TX_ACK for it.
        try:
            root = json.loads(body)
            txpk = root["txpk"]
            data = txpk["data"]
            payload = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
            if "size" in txpk and txpk["size"] != len(payload):
                raise ValueError(f"size {txpk['size']} but data holds {len(payload)}")
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            self._bad(f"PULL_RESP: {exc}")
            return
        now = self.tmst()
        self.counters.dwnb += 1
        error = self._tx_verdict(txpk, now)
        if error is None:
            self.counters.txnb += 1
        downlink = Downlink(
            txpk=txpk,
            payload=payload,
            token=int.from_bytes(token, "big"),
            received_tmst=now,
            tx_error=error if self.send_tx_ack else None,
        )
        self.downlinks.put_nowait(downlink)
        if not self.send_tx_ack:
            return
        if error is not None:
            body_out = json.dumps({"txpk_ack": {"error": error}}).encode()
        elif self.tx_ack_body == "none":
            body_out = b'{"txpk_ack":{"error":"NONE"}}'
        else:
            body_out = b""
        self._send("down", self._header(token, _TX_ACK) + self._eui + body_out)

    def _tx_verdict(self, txpk: dict[str, Any], now: int) -> str | None:
        if self.next_tx_error is not None:
            error, self.next_tx_error = self.next_tx_error, None
            return error
        if self.tx_error is not None:
            return self.tx_error
        if self.check_timing and not txpk.get("imme") and "tmst" in txpk:
            lead = _signed32(int(txpk["tmst"]) - now)
            if lead <= self.min_lead_us:
                return "TOO_LATE"
            if lead > self.max_lead_us:
                return "TOO_EARLY"
        return None
