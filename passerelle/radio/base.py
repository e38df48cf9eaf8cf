"""The one interface every radio backend offers the LoRaWAN layer.

A backend receives frames (with what the radio measured) and transmits at a concentrator
time or immediately. Backends: Semtech UDP packet forwarder (concentrator HATs), SX127x
over SPI (``drivers/``), a serial AT modem, and the simulated medium in ``hil/``.

Frequencies are in MHz (as the Semtech protocol writes them), data rates as the Semtech
string ``SF7BW125``, times on the concentrator clock in microseconds (32-bit, wraps about
every 71.6 minutes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

TMST_MODULO = 1 << 32
_DATARATE = re.compile(r"^SF(\d{1,2})BW(\d{3})$")


class RadioError(Exception):
    """A backend could not do what was asked (bad parameters, radio gone)."""


def parse_datarate(datarate: str) -> tuple[int, int]:
    """``"SF9BW125"`` -> ``(9, 125)``: spreading factor and bandwidth in kHz."""
    m = _DATARATE.match(datarate)
    if not m:
        raise ValueError(f"not a LoRa data rate: {datarate!r} (expected like SF7BW125)")
    sf, bw = int(m.group(1)), int(m.group(2))
    if not 5 <= sf <= 12 or bw not in (125, 250, 500):
        raise ValueError(f"not a LoRa data rate: {datarate!r}")
    return sf, bw


@dataclass(frozen=True, slots=True)
class RxFrame:
    """One frame as the radio heard it."""

    payload: bytes  # the PHYPayload
    frequency: float  # MHz
    datarate: str  # "SF7BW125"
    coding_rate: str = "4/5"
    rssi: float = 0.0  # dBm
    snr: float = 0.0  # dB
    tmst: int = 0  # concentrator clock at the end of reception, µs, 32-bit
    time: float | None = None  # wall clock (Unix s) if the gateway knows it (GPS/NTP)
    gateway: str = ""  # which radio/gateway heard it (EUI-64 hex for packet forwarders)
    channel: int | None = None
    crc_ok: bool = True


@dataclass(frozen=True, slots=True)
class TxRequest:
    """One transmission. ``tmst`` None means immediately (class C)."""

    payload: bytes
    frequency: float  # MHz
    datarate: str
    power: float  # dBm (EIRP as the concentrator takes it)
    tmst: int | None = None
    coding_rate: str = "4/5"
    invert_iq: bool = True  # LoRaWAN downlinks invert IQ
    preamble: int = 8
    crc: bool = False  # LoRaWAN downlinks carry no payload CRC
    gateway: str = ""  # which gateway must send it (packet forwarders)


@dataclass(frozen=True, slots=True)
class TxResult:
    ok: bool
    error: str | None = None  # e.g. "TOO_LATE", "COLLISION_PACKET", "TX_FREQ", "DUTY_CYCLE"


class Radio(Protocol):
    """What the LoRaWAN layer needs from a radio."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def receive(self) -> RxFrame:
        """The next frame heard (waits)."""
        ...

    async def transmit(self, request: TxRequest) -> TxResult:
        """Send (or schedule) ``request``; returns once the radio accepted or refused it."""
        ...
