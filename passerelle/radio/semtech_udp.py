"""Semtech UDP packet-forwarder protocol (GWMP), server side.

A concentrator HAT (SX1301/SX1302/SX1303) runs Semtech's ``lora_pkt_fwd``, which talks to a
"network server" over UDP. Here the agent *is* that server, usually on 127.0.0.1:1700.
Layouts and JSON fields follow ``PROTOCOL.TXT`` of Lora-net/packet_forwarder (protocol
version 2) and ``PROTOCOL.md`` of Lora-net/sx1302_hal:

===========  =====  =========================================================
datagram     id     bytes
===========  =====  =========================================================
PUSH_DATA    0x00   ver, token(2), 0x00, gateway EUI(8), JSON {"rxpk":[..], "stat":{..}}
PUSH_ACK     0x01   ver, same token, 0x01
PULL_DATA    0x02   ver, token(2), 0x02, gateway EUI(8)
PULL_RESP    0x03   ver, token(2), 0x03, JSON {"txpk":{..}}
PULL_ACK     0x04   ver, same token, 0x04
TX_ACK       0x05   ver, same token as PULL_RESP, 0x05, gateway EUI(8), [JSON {"txpk_ack":..}]
===========  =====  =========================================================

Choices worth knowing:

* The forwarder sends PUSH_DATA and PULL_DATA from two different sockets (``sock_up`` and
  ``sock_down``), so downlinks go to the address the gateway last *pulled* from, never to
  the push address.
* Protocol version 1 forwarders (the original packet_forwarder before TX_ACK existed) are
  served too: their PUSH/PULL are acknowledged in version 1 and a downlink to them is
  reported sent (``ok``) as soon as the PULL_RESP is out, since they never send TX_ACK.
  Waiting would only ever end in ``TX_ACK_TIMEOUT``. They are counted as
  ``tx_unacknowledged``.
* ``{"txpk_ack":{"warn":"TX_POWER","value":..}}`` (sx1302_hal, protocol v1.5) means sent
  at a lower power: ``ok``, counted under ``tx_warn``. An ``"error":"TX_POWER"`` (older v2
  forwarders) is a refusal.
* An rxpk with ``"stat":-1`` (CRC error) is counted and dropped; ``"stat":0`` (no CRC) is
  delivered with ``crc_ok=True`` (nothing says it is bad; the LoRaWAN MIC decides) and
  counted as ``rx_no_crc``. FSK frames are counted as ``rx_unsupported`` and dropped: the
  LoRaWAN layer speaks LoRa data rates only.
* Whatever is malformed is counted per cause (``stats()["garbage"]``) and logged at most
  once per cause per ``log_interval`` seconds, with how many were not logged. Nothing a
  datagram holds can raise out of the datagram handler.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import math
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .base import TMST_MODULO, RadioError, RxFrame, TxRequest, TxResult, parse_datarate

__all__ = [
    "PROTOCOL_VERSION",
    "PULL_ACK",
    "PULL_DATA",
    "PULL_RESP",
    "PUSH_ACK",
    "PUSH_DATA",
    "TX_ACK",
    "TX_ACK_ERRORS",
    "GatewayState",
    "SemtechUDPRadio",
    "build_txpk",
    "parse_rxpk",
]

log = logging.getLogger("passerelle.radio.semtech_udp")

Clock = Callable[[], float]
Address = tuple[Any, ...]  # (host, port) for IPv4, (host, port, flow, scope) for IPv6

PROTOCOL_VERSION = 2
SUPPORTED_VERSIONS = frozenset({1, 2})

PUSH_DATA = 0x00
PUSH_ACK = 0x01
PULL_DATA = 0x02
PULL_RESP = 0x03
PULL_ACK = 0x04
TX_ACK = 0x05

HEADER_LEN = 4  # version, token (2), identifier
EUI_HEADER_LEN = 12  # ... + gateway EUI (8)

# TX_ACK "error" values of PROTOCOL.TXT section 6 (packet_forwarder v3+) and sx1302_hal;
# "NONE" means programmed for downlink. Any other string is passed on as it came.
TX_ACK_ERRORS = frozenset(
    {
        "TOO_LATE",
        "TOO_EARLY",
        "COLLISION_PACKET",
        "COLLISION_BEACON",
        "TX_FREQ",
        "TX_POWER",
        "GPS_UNLOCKED",
    }
)
TX_ACK_NONE = "NONE"
# Results this backend makes up itself (no TX_ACK error string has these names).
NO_GATEWAY = "NO_GATEWAY"
TX_ACK_TIMEOUT = "TX_ACK_TIMEOUT"
TX_ACK_INVALID = "TX_ACK_INVALID"

_EUI = re.compile(r"^[0-9a-f]{16}$")


class Garbage(Exception):
    """A datagram (or part of one) that breaks the protocol. ``cause`` is a stable id."""

    def __init__(self, cause: str, detail: str) -> None:
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail


@dataclass(slots=True)
class GatewayState:
    """What the server knows about one packet forwarder, by gateway EUI."""

    eui: str
    version: int = PROTOCOL_VERSION
    pull_address: Address | None = None  # where PULL_RESP goes (the forwarder's sock_down)
    push_address: Address | None = None
    last_seen: float = 0.0  # wall clock, Unix s
    last_pull: float | None = None  # wall clock of the last PULL_DATA
    last_pull_mono: float | None = None  # monotonic, picks "the one that pulled last"
    last_stat: dict[str, Any] | None = None
    last_stat_at: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "pull_address": _format_address(self.pull_address),
            "push_address": _format_address(self.push_address),
            "last_seen": self.last_seen,
            "last_pull": self.last_pull,
            "last_stat": dict(self.last_stat) if self.last_stat is not None else None,
            "last_stat_at": self.last_stat_at,
        }


@dataclass(slots=True)
class _Counters:
    push: int = 0
    pull: int = 0
    tx_ack: int = 0
    rx_ok: int = 0
    rx_crc_error: int = 0
    rx_no_crc: int = 0
    rx_unsupported: int = 0
    rx_queue_full: int = 0
    tx_sent: int = 0
    tx_ok: int = 0
    tx_warn: int = 0
    tx_unacknowledged: int = 0
    tx_ack_unmatched: int = 0
    socket_errors: int = 0
    tx_error: dict[str, int] = field(default_factory=dict)
    garbage: dict[str, int] = field(default_factory=dict)


def _format_address(address: Address | None) -> str | None:
    if address is None:
        return None
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"


# ------------------------------------------------------------------------ JSON fields


def _is_number(value: Any) -> bool:
    # bool is an int in Python, never a number in this protocol.
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> float | None:
    if key not in obj:
        if required:
            raise Garbage("missing_field", f"{where}: no {key!r}")
        return None
    value = obj[key]
    # JSON integers are unbounded in Python: 1e400 as an int must not overflow float().
    if not _is_number(value) or abs(value) > 1e300 or not math.isfinite(value):
        raise Garbage("field_type", f"{where}.{key}: expected a number, got {value!r:.40}")
    return float(value)


def _string(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    if key not in obj:
        if required:
            raise Garbage("missing_field", f"{where}: no {key!r}")
        return None
    value = obj[key]
    if not isinstance(value, str):
        raise Garbage("field_type", f"{where}.{key}: expected a string, got {value!r:.40}")
    return value


def _decode_base64(text: str, where: str) -> bytes:
    # Upstream data is padded, downstream padding is optional (PROTOCOL.TXT); accept both.
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Garbage("base64", f"{where}.data: not base64 ({exc})") from None


def _parse_time(text: str) -> float:
    """ISO 8601 'compact' UTC time of an rxpk -> Unix seconds (µs kept, ns dropped)."""
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_rxpk(rxpk: Any, gateway: str, where: str = "rxpk") -> RxFrame | None:
    """One rxpk object -> :class:`RxFrame`, or None for an FSK frame (not LoRa).

    Raises :class:`Garbage` naming the field when the object breaks the protocol. A ``time``
    that does not parse leaves ``time`` None rather than losing the frame: the concentrator
    clock ``tmst`` is what downlinks are scheduled on.
    """
    if not isinstance(rxpk, dict):
        raise Garbage("field_type", f"{where}: expected an object, got {type(rxpk).__name__}")
    modu = _string(rxpk, "modu", where, required=False) or "LORA"
    if modu == "FSK":
        return None
    if modu != "LORA":
        raise Garbage("field_type", f"{where}.modu: unknown modulation {modu!r:.20}")
    data_text = _string(rxpk, "data", where)
    assert data_text is not None
    payload = _decode_base64(data_text, where)
    size = _number(rxpk, "size", where, required=False)
    if size is not None and size != len(payload):
        raise Garbage("size_mismatch", f"{where}: size {size:g} but data holds {len(payload)}")
    freq = _number(rxpk, "freq", where)
    assert freq is not None
    if freq <= 0:
        raise Garbage("field_type", f"{where}.freq: not a frequency: {freq}")
    datr = _string(rxpk, "datr", where)
    assert datr is not None
    try:
        parse_datarate(datr)
    except ValueError:
        raise Garbage("datarate", f"{where}.datr: not a LoRa data rate: {datr!r:.20}") from None
    codr = _string(rxpk, "codr", where, required=False) or "4/5"
    tmst = _number(rxpk, "tmst", where)
    assert tmst is not None
    if tmst != int(tmst) or not 0 <= tmst < TMST_MODULO:
        raise Garbage("field_type", f"{where}.tmst: not a 32-bit counter: {tmst}")
    rssi, lsnr = _signal(rxpk, where)
    stat = _number(rxpk, "stat", where, required=False)
    if stat is not None and stat not in (1, 0, -1):
        raise Garbage("field_type", f"{where}.stat: expected 1, 0 or -1, got {stat:g}")
    chan = _number(rxpk, "chan", where, required=False)
    channel = int(chan) if chan is not None and chan == int(chan) and chan >= 0 else None
    rx_time: float | None = None
    time_text = _string(rxpk, "time", where, required=False)
    if time_text is not None:
        try:
            rx_time = _parse_time(time_text)
        except (ValueError, OverflowError, OSError):
            raise _BadTime(f"{where}.time: not ISO 8601: {time_text!r:.40}") from None
    return RxFrame(
        payload=payload,
        frequency=freq,
        datarate=datr,
        coding_rate=codr,
        rssi=rssi,
        snr=lsnr,
        tmst=int(tmst),
        time=rx_time,
        gateway=gateway,
        channel=channel,
        crc_ok=stat != -1,
    )


class _BadTime(Garbage):
    """Only the ``time`` field is bad: the caller may still deliver the frame without it."""

    def __init__(self, detail: str) -> None:
        super().__init__("time", detail)


def _signal(rxpk: dict[str, Any], where: str) -> tuple[float, float]:
    """RSSI and SNR: top level (SX1301, SX1302) or ``rsig[0]`` (multi-antenna v2 format)."""
    rssi = _number(rxpk, "rssi", where, required=False)
    lsnr = _number(rxpk, "lsnr", where, required=False)
    if rssi is None or lsnr is None:
        rsig = rxpk.get("rsig")
        if isinstance(rsig, list) and rsig:
            first = rsig[0]
            if not isinstance(first, dict):
                raise Garbage("field_type", f"{where}.rsig[0]: expected an object")
            if rssi is None:
                rssi = _number(first, "rssic", f"{where}.rsig[0]")
            if lsnr is None:
                lsnr = _number(first, "lsnr", f"{where}.rsig[0]", required=False)
        elif rsig is not None and not isinstance(rsig, list):
            raise Garbage("field_type", f"{where}.rsig: expected an array")
    if rssi is None:
        raise Garbage("missing_field", f"{where}: no 'rssi' (nor rsig[0].rssic)")
    if lsnr is None:
        raise Garbage("missing_field", f"{where}: no 'lsnr' for a LoRa frame")
    return rssi, lsnr


def build_txpk(request: TxRequest) -> dict[str, Any]:
    """The txpk object of a PULL_RESP for ``request`` (raises RadioError when it is bad)."""
    try:
        parse_datarate(request.datarate)
    except ValueError as exc:
        raise RadioError(f"TxRequest.datarate: {exc}") from None
    if not 0 < len(request.payload) <= 255:
        raise RadioError(f"TxRequest.payload: {len(request.payload)} bytes, LoRa takes 1..255")
    if not (math.isfinite(request.frequency) and request.frequency > 0):
        raise RadioError(f"TxRequest.frequency: not a frequency in MHz: {request.frequency}")
    if not math.isfinite(request.power):
        raise RadioError(f"TxRequest.power: not a power in dBm: {request.power}")
    if not 0 <= request.preamble <= 65535:
        raise RadioError(f"TxRequest.preamble: {request.preamble} symbols out of range")
    txpk: dict[str, Any] = {}
    if request.tmst is None:
        txpk["imme"] = True
    else:
        if not 0 <= request.tmst < TMST_MODULO:
            raise RadioError(f"TxRequest.tmst: not a 32-bit concentrator time: {request.tmst}")
        txpk["tmst"] = int(request.tmst)
    txpk.update(
        # Hz precision, as the protocol states; avoids 868.1000000000001 on the wire.
        freq=round(request.frequency, 6),
        rfch=0,
        powe=int(round(request.power)),
        modu="LORA",
        datr=request.datarate,
        codr=request.coding_rate,
        ipol=bool(request.invert_iq),
        prea=int(request.preamble),
        size=len(request.payload),
        data=base64.b64encode(request.payload).decode("ascii"),
        ncrc=not request.crc,
    )
    return txpk


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    # Some forwarders add a C string terminator; tolerate it and trailing blanks.
    text = body.rstrip(b"\x00 \t\r\n")
    try:
        obj = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        raise Garbage("json", f"{what}: body is not UTF-8") from None
    except (ValueError, RecursionError) as exc:
        # ValueError beyond JSONDecodeError: an integer longer than Python's 4300 digits.
        raise Garbage("json", f"{what}: bad JSON ({str(exc):.80})") from None
    if not isinstance(obj, dict):
        raise Garbage("json", f"{what}: JSON root is {type(obj).__name__}, not an object")
    return obj


# ---------------------------------------------------------------------------- radio


class _Endpoint(asyncio.DatagramProtocol):
    def __init__(self, radio: SemtechUDPRadio) -> None:
        self.radio = radio

    def datagram_received(self, data: bytes, addr: Address) -> None:
        self.radio.handle_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable after a PULL_RESP to a forwarder that went away, etc.
        self.radio._socket_error(exc)


class SemtechUDPRadio:
    """A :class:`~passerelle.radio.base.Radio` served by one or more packet forwarders.

    ``port=0`` binds an ephemeral port; ``.port`` holds the bound one after ``start()``.
    """

    def __init__(
        self,
        host: str = "0.0.0.0",
        port: int = 1700,
        tx_ack_timeout: float = 1.0,
        *,
        queue_size: int = 1000,
        max_gateways: int = 64,
        log_interval: float = 60.0,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
    ) -> None:
        if not tx_ack_timeout > 0:
            raise ValueError(f"tx_ack_timeout must be > 0 s, got {tx_ack_timeout}")
        if queue_size < 1 or max_gateways < 1:
            raise ValueError("queue_size and max_gateways must be >= 1")
        self.host = host
        self.port = port
        self.tx_ack_timeout = float(tx_ack_timeout)
        self.max_gateways = max_gateways
        self.log_interval = float(log_interval)
        self._clock = clock
        self._wall = wall_clock
        self._queue: asyncio.Queue[RxFrame] = asyncio.Queue(maxsize=queue_size)
        self._transport: asyncio.DatagramTransport | None = None
        self._gateways: dict[str, GatewayState] = {}
        self._pending: dict[int, tuple[asyncio.Future[TxResult], str]] = {}
        self._counters = _Counters()
        self._last_logged: dict[str, float] = {}
        self._unlogged: dict[str, int] = {}

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        if self._transport is not None:
            raise RadioError("Semtech UDP radio already started")
        loop = asyncio.get_running_loop()
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Endpoint(self), local_addr=(self.host, self.port)
            )
        except OSError as exc:
            raise RadioError(f"cannot bind UDP {self.host}:{self.port}: {exc}") from exc
        self._transport = transport
        self.port = transport.get_extra_info("sockname")[1]
        log.info("packet forwarder server listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.close()
        for future, _ in self._pending.values():
            if not future.done():
                future.set_exception(RadioError("Semtech UDP radio stopped"))
        self._pending.clear()

    # -- Radio ------------------------------------------------------------------------

    async def receive(self) -> RxFrame:
        """The next frame with a good (or no) CRC. Waits; after ``stop()`` forever."""
        return await self._queue.get()

    async def transmit(self, request: TxRequest) -> TxResult:
        """Send ``request`` as a PULL_RESP and wait for the forwarder's TX_ACK.

        Returns ``TxResult(False, "NO_GATEWAY")`` when no forwarder has pulled (or the one
        named in ``request.gateway`` has not), ``TxResult(False, "TX_ACK_TIMEOUT")`` when no
        TX_ACK came within ``tx_ack_timeout``, otherwise what the TX_ACK said.
        """
        transport = self._transport
        if transport is None:
            raise RadioError("Semtech UDP radio not started")
        txpk = build_txpk(request)
        gateway = self._downlink_gateway(request.gateway)
        if gateway is None or gateway.pull_address is None:
            return self._tx_done(TxResult(False, NO_GATEWAY))
        token = self._new_token()
        body = json.dumps({"txpk": txpk}, separators=(",", ":")).encode("ascii")
        datagram = bytes((gateway.version, token >> 8, token & 0xFF, PULL_RESP)) + body
        if gateway.version == 1:
            # A v1 forwarder never sends TX_ACK: the PULL_RESP going out is all we can know.
            transport.sendto(datagram, gateway.pull_address)
            self._counters.tx_sent += 1
            self._counters.tx_unacknowledged += 1
            return self._tx_done(TxResult(True))
        future: asyncio.Future[TxResult] = asyncio.get_running_loop().create_future()
        self._pending[token] = (future, gateway.eui)
        try:
            transport.sendto(datagram, gateway.pull_address)
            self._counters.tx_sent += 1
            try:
                async with asyncio.timeout(self.tx_ack_timeout):
                    result = await future
            except TimeoutError:
                result = TxResult(False, TX_ACK_TIMEOUT)
        finally:
            self._pending.pop(token, None)
        return self._tx_done(result)

    # -- health -----------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters and per-gateway state, for the agent's health report."""
        c = self._counters
        return {
            "push": c.push,
            "pull": c.pull,
            "tx_ack": c.tx_ack,
            "rx_ok": c.rx_ok,
            "rx_crc_error": c.rx_crc_error,
            "rx_no_crc": c.rx_no_crc,
            "rx_unsupported": c.rx_unsupported,
            "rx_queue_full": c.rx_queue_full,
            "rx_backlog": self._queue.qsize(),
            "tx_sent": c.tx_sent,
            "tx_ok": c.tx_ok,
            "tx_warn": c.tx_warn,
            "tx_unacknowledged": c.tx_unacknowledged,
            "tx_ack_unmatched": c.tx_ack_unmatched,
            "tx_error": dict(c.tx_error),
            "socket_errors": c.socket_errors,
            "garbage": dict(c.garbage),
            "gateways": {eui: gw.as_dict() for eui, gw in self._gateways.items()},
        }

    @property
    def gateways(self) -> dict[str, GatewayState]:
        """Known forwarders by EUI (lower-case hex). Read-only by convention."""
        return self._gateways

    # -- datagrams --------------------------------------------------------------------

    def handle_datagram(self, data: bytes, addr: Address) -> None:
        """Process one datagram from ``addr`` (what the UDP endpoint calls). Never raises."""
        try:
            self._dispatch(data, addr)
        except Garbage as bad:
            self._garbage(bad.cause, bad.detail, addr)
        except Exception as exc:  # a bug of ours must not stop the endpoint either
            self._garbage("internal", f"{type(exc).__name__}: {exc}", addr)

    def _dispatch(self, data: bytes, addr: Address) -> None:
        if len(data) < HEADER_LEN:
            raise Garbage("short", f"{len(data)} bytes, a header is {HEADER_LEN}")
        version, identifier = data[0], data[3]
        if version not in SUPPORTED_VERSIONS:
            raise Garbage("version", f"protocol version {version} (serving 1 and 2)")
        if identifier not in (PUSH_DATA, PULL_DATA, TX_ACK):
            raise Garbage("identifier", f"identifier 0x{identifier:02x} is not gateway->server")
        if len(data) < EUI_HEADER_LEN:
            raise Garbage("short", f"{len(data)} bytes, identifier 0x{identifier:02x} needs 12")
        token = data[1:3]
        eui = data[4:12].hex()
        if identifier == PUSH_DATA:
            self._push_data(version, token, eui, data[EUI_HEADER_LEN:], addr)
        elif identifier == PULL_DATA:
            self._pull_data(version, token, eui, addr)
        else:
            self._tx_ack(int.from_bytes(token, "big"), eui, data[EUI_HEADER_LEN:], addr)

    def _send(self, datagram: bytes, addr: Address) -> None:
        if self._transport is not None:
            self._transport.sendto(datagram, addr)

    def _push_data(self, version: int, token: bytes, eui: str, body: bytes, addr: Address) -> None:
        gateway = self._gateway(eui, version)  # a refused gateway gets no ack
        # PROTOCOL.TXT 3.1: acknowledge at once, process after.
        self._send(bytes((version,)) + token + bytes((PUSH_ACK,)), addr)
        self._counters.push += 1
        gateway.push_address = addr
        where = f"PUSH_DATA from {eui}"
        root = _json_object(body, where)
        stat = root.get("stat")
        if stat is not None:
            if not isinstance(stat, dict):
                raise Garbage("field_type", f"{where}: stat is not an object")
            gateway.last_stat = stat
            gateway.last_stat_at = self._wall()
        rxpks = root.get("rxpk")
        if rxpks is None:
            return
        if not isinstance(rxpks, list):
            raise Garbage("field_type", f"{where}: rxpk is not an array")
        for index, rxpk in enumerate(rxpks):
            # One bad rxpk costs that frame only, not its neighbours in the datagram.
            try:
                frame = parse_rxpk(rxpk, eui, f"{where}: rxpk[{index}]")
            except _BadTime as bad:
                # Every other field passed (time is checked last): keep the frame.
                self._garbage(bad.cause, bad.detail, addr)
                untimed = {k: v for k, v in rxpk.items() if k != "time"}
                frame = parse_rxpk(untimed, eui, f"{where}: rxpk[{index}]")
            except Garbage as bad:
                self._garbage(bad.cause, bad.detail, addr)
                continue
            self._deliver(frame, no_crc=frame is not None and rxpk.get("stat") == 0)

    def _deliver(self, frame: RxFrame | None, *, no_crc: bool) -> None:
        c = self._counters
        if frame is None:
            c.rx_unsupported += 1
            return
        if not frame.crc_ok:
            c.rx_crc_error += 1
            return
        if no_crc:
            c.rx_no_crc += 1
        try:
            self._queue.put_nowait(frame)
        except asyncio.QueueFull:
            c.rx_queue_full += 1
            self._rate_limited_log("rx_queue_full", "receive queue full: frame dropped")
            return
        c.rx_ok += 1

    def _pull_data(self, version: int, token: bytes, eui: str, addr: Address) -> None:
        gateway = self._gateway(eui, version)
        self._send(bytes((version,)) + token + bytes((PULL_ACK,)), addr)
        self._counters.pull += 1
        if gateway.pull_address != addr:
            log.info("gateway %s pulls from %s", eui, _format_address(addr))
        gateway.pull_address = addr
        gateway.last_pull = gateway.last_seen
        gateway.last_pull_mono = self._clock()

    def _tx_ack(self, token: int, eui: str, body: bytes, addr: Address) -> None:
        self._counters.tx_ack += 1
        known = self._gateways.get(eui)
        if known is not None:
            known.last_seen = self._wall()
        pending = self._pending.get(token)
        if pending is None or pending[1] != eui or pending[0].done():
            # Late (after our timeout), duplicated, or not ours: nothing waits for it.
            self._counters.tx_ack_unmatched += 1
            return
        try:
            result = self._tx_ack_result(body, eui)
        except Garbage as bad:
            self._garbage(bad.cause, bad.detail, addr)
            result = TxResult(False, TX_ACK_INVALID)
        pending[0].set_result(result)

    def _tx_ack_result(self, body: bytes, eui: str) -> TxResult:
        if not body.rstrip(b"\x00 \t\r\n"):
            return TxResult(True)  # PROTOCOL.TXT 5.5: no JSON means no error
        where = f"TX_ACK from {eui}"
        root = _json_object(body, where)
        ack = root.get("txpk_ack")
        if ack is None:
            return TxResult(True)
        if not isinstance(ack, dict):
            raise Garbage("field_type", f"{where}: txpk_ack is not an object")
        error = _string(ack, "error", f"{where}: txpk_ack", required=False)
        if error is None or error == TX_ACK_NONE:
            if ack.get("warn") is not None:
                self._counters.tx_warn += 1
                log.info(
                    "gateway %s sends with a limitation: %.20s %.20s",
                    eui,
                    ack.get("warn"),
                    ack.get("value"),
                )
            return TxResult(True)
        return TxResult(False, error[:32])

    # -- helpers ----------------------------------------------------------------------

    def _gateway(self, eui: str, version: int) -> GatewayState:
        gateway = self._gateways.get(eui)
        if gateway is None:
            if len(self._gateways) >= self.max_gateways:
                raise Garbage("gateway_limit", f"gateway {eui} beyond {self.max_gateways} known")
            gateway = self._gateways[eui] = GatewayState(eui)
            log.info("gateway %s appeared (protocol v%d)", eui, version)
        gateway.version = version
        gateway.last_seen = self._wall()
        return gateway

    def _downlink_gateway(self, name: str) -> GatewayState | None:
        if name:
            eui = name.strip().lower()
            if not _EUI.match(eui):
                raise RadioError(f"TxRequest.gateway: not a 16-hex-digit EUI: {name!r}")
            return self._gateways.get(eui)
        pulled = [gw for gw in self._gateways.values() if gw.last_pull_mono is not None]
        return max(pulled, key=lambda gw: gw.last_pull_mono or 0.0, default=None)

    def _new_token(self) -> int:
        while True:
            token = random.getrandbits(16)
            if token not in self._pending:
                return token

    def _tx_done(self, result: TxResult) -> TxResult:
        c = self._counters
        if result.ok:
            c.tx_ok += 1
        else:
            code = result.error or "UNKNOWN"
            c.tx_error[code] = c.tx_error.get(code, 0) + 1
        return result

    def _garbage(self, cause: str, detail: str, addr: Address) -> None:
        garbage = self._counters.garbage
        garbage[cause] = garbage.get(cause, 0) + 1
        self._rate_limited_log(
            f"garbage.{cause}", "dropped bad datagram from %s: %s", _format_address(addr), detail
        )

    def _socket_error(self, exc: Exception) -> None:
        self._counters.socket_errors += 1
        self._rate_limited_log("socket", "UDP socket error: %s", exc)

    def _rate_limited_log(self, cause: str, msg: str, *args: Any) -> None:
        """Log once per cause per ``log_interval``; say how many were held back meanwhile."""
        now = self._clock()
        last = self._last_logged.get(cause)
        if last is not None and now - last < self.log_interval:
            self._unlogged[cause] = self._unlogged.get(cause, 0) + 1
            return
        self._last_logged[cause] = now
        held = self._unlogged.pop(cause, 0)
        if held:
            msg += " (%d more since the last report)"
            args = (*args, held)
        log.warning(msg, *args, extra={"cause": f"radio.semtech_udp.{cause}"})
