"""Exact LoRa time on air (Semtech AN1200.13, the SX127x datasheet formula).

Every transmission the gateway makes is charged to a duty-cycle budget
(:mod:`passerelle.policy.dutycycle`), so the time on air must be exact, not estimated:
an error of one symbol block at SF12 is 164 ms, and a budget of 36 s per hour holds
only 14 frames of 51 bytes at SF12.

The frame is a preamble of ``preamble + 4.25`` symbols, then a first block of 8 symbols
sent at the reduced rate (``SF - 2`` bits per symbol, coding rate 4/8) that carries the
explicit header, then blocks of ``CR + 4`` symbols, each carrying ``4 * (SF - 2*DE)``
data bits::

    Tsym     = 2^SF / BW
    Npayload = 8 + max(ceil((8*PL - 4*SF + 28 + 16*CRC - 20*IH) / (4*(SF - 2*DE))) * (CR + 4), 0)
    Tpacket  = (Npreamble + 4.25 + Npayload) * Tsym

The symbol count is computed in integers (no float ``ceil`` that could be off by one
block on a rounding error); only the final multiplication by ``Tsym`` is a float.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from passerelle.radio.base import TxRequest, parse_datarate

# The bandwidths an SX127x/SX126x offers, in kHz. Calculators write them rounded (7.81,
# 10.42...), so a value within 1 % of one of these is accepted and used as given.
LORA_BANDWIDTHS_KHZ: tuple[float, ...] = (
    7.8125,
    10.4167,
    15.625,
    20.8333,
    31.25,
    41.6667,
    62.5,
    125.0,
    250.0,
    500.0,
)
_BANDWIDTH_TOLERANCE = 0.01

# Semtech mandates the low data rate optimisation when a symbol lasts 16 ms or more
# (SX1276 datasheet 4.1.1.6): SF11 and SF12 at 125 kHz, SF12 at 250 kHz.
LDRO_SYMBOL_TIME_S = 0.016

MIN_SF, MAX_SF = 6, 12  # AN1200.13 covers the SX127x range; SF5 is SX126x only
MIN_PREAMBLE, MAX_PREAMBLE = 6, 65535  # SX127x preamble register: 6..65535 symbols
MAX_PAYLOAD = 255  # the LoRa length field is one byte

LORAWAN_PREAMBLE = 8
LORAWAN_CODING_RATE = 1  # 4/5 in every LoRaWAN region


@dataclass(frozen=True, slots=True)
class Airtime:
    """One frame's time on air, with how it was counted (for diagnostics and the CLI)."""

    seconds: float
    symbols: float  # preamble + 4.25 + payload symbols
    preamble_symbols: float  # preamble + 4.25
    payload_symbols: int  # header + payload + CRC, in symbols
    symbol_time_s: float
    ldro: bool  # low data rate optimisation actually applied

    @property
    def ms(self) -> float:
        return self.seconds * 1000.0


def _require_int(name: str, value: Any, low: int, high: int) -> int:
    # bool is an int in Python; a True spreading factor is a caller bug, not SF1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ValueError(f"{name} {value} out of range {low}..{high}")
    return value


def _require_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def check_bandwidth(bw_khz: Any) -> float:
    """``bw_khz`` as a float if it is a LoRa bandwidth (within 1 %), else ValueError."""
    if isinstance(bw_khz, bool) or not isinstance(bw_khz, int | float):
        raise ValueError(f"bandwidth must be a number of kHz, got {bw_khz!r}")
    bw = float(bw_khz)
    if math.isfinite(bw) and bw > 0:
        for known in LORA_BANDWIDTHS_KHZ:
            if abs(bw - known) <= known * _BANDWIDTH_TOLERANCE:
                return bw
    allowed = ", ".join(f"{b:g}" for b in LORA_BANDWIDTHS_KHZ)
    raise ValueError(f"bandwidth {bw_khz!r} kHz is not a LoRa bandwidth ({allowed})")


def symbol_time(sf: int, bw_khz: float) -> float:
    """Seconds per symbol: ``2^SF / BW``."""
    return (1 << sf) / (bw_khz * 1000.0)


def ldro_required(sf: int, bw_khz: float) -> bool:
    """Whether the low data rate optimisation is on by default (symbol time >= 16 ms)."""
    return symbol_time(sf, bw_khz) >= LDRO_SYMBOL_TIME_S


def parse_coding_rate(coding_rate: str) -> int:
    """``"4/5"`` -> 1 ... ``"4/8"`` -> 4 (the CR of AN1200.13)."""
    text = coding_rate.strip() if isinstance(coding_rate, str) else coding_rate
    if isinstance(text, str) and text in ("4/5", "4/6", "4/7", "4/8"):
        return int(text[2]) - 4
    raise ValueError(f"not a LoRa coding rate: {coding_rate!r} (expected 4/5, 4/6, 4/7 or 4/8)")


def frame_airtime(
    sf: int,
    bw_khz: float,
    payload_len: int,
    cr: int = 1,
    preamble: int = 8,
    implicit_header: bool = False,
    crc: bool = True,
    ldro: bool | None = None,
) -> Airtime:
    """Time on air of one LoRa frame, with its symbol counts. See :func:`time_on_air`."""
    sf = _require_int("spreading factor", sf, MIN_SF, MAX_SF)
    bw = check_bandwidth(bw_khz)
    payload_len = _require_int("payload length (bytes)", payload_len, 0, MAX_PAYLOAD)
    cr = _require_int("coding rate (1..4 for 4/5..4/8)", cr, 1, 4)
    preamble = _require_int("preamble (symbols)", preamble, MIN_PREAMBLE, MAX_PREAMBLE)
    implicit_header = _require_bool("implicit_header", implicit_header)
    crc = _require_bool("crc", crc)
    if ldro is not None:
        ldro = _require_bool("ldro", ldro)
    if sf == 6 and not implicit_header:
        # SX1276 datasheet 4.1.1.2: SF6 works only in implicit header mode.
        raise ValueError(
            "SF6 needs implicit_header=True (the SX127x has no explicit header at SF6)"
        )

    de = ldro_required(sf, bw) if ldro is None else ldro
    bits = 8 * payload_len - 4 * sf + 28 + 16 * crc - 20 * implicit_header
    bits_per_block = 4 * (sf - 2 * de)
    blocks = max(-(-bits // bits_per_block), 0)  # integer ceil
    payload_symbols = 8 + blocks * (cr + 4)
    preamble_symbols = preamble + 4.25
    symbols = preamble_symbols + payload_symbols
    tsym = symbol_time(sf, bw)
    return Airtime(
        seconds=symbols * tsym,
        symbols=symbols,
        preamble_symbols=preamble_symbols,
        payload_symbols=payload_symbols,
        symbol_time_s=tsym,
        ldro=bool(de),
    )


def time_on_air(
    sf: int,
    bw_khz: float,
    payload_len: int,
    cr: int = 1,
    preamble: int = 8,
    implicit_header: bool = False,
    crc: bool = True,
    ldro: bool | None = None,
) -> float:
    """Seconds on air of one LoRa frame of ``payload_len`` PHY payload bytes.

    ``cr`` is 1..4 for coding rates 4/5..4/8; ``ldro`` None means automatic (on when a
    symbol lasts 16 ms or more, as Semtech mandates). Raises ValueError naming the bad
    argument.
    """
    return frame_airtime(sf, bw_khz, payload_len, cr, preamble, implicit_header, crc, ldro).seconds


def airtime_of(datarate: str, payload_len: int, uplink: bool, *, coding_rate: str = "4/5") -> float:
    """Seconds on air of a LoRaWAN frame at ``datarate`` (``"SF9BW125"``).

    LoRaWAN uplinks carry a payload CRC, downlinks do not (LoRaWAN 1.0.x, PHY layer);
    both use an explicit header, an 8-symbol preamble and automatic LDRO.
    """
    sf, bw = parse_datarate(datarate)
    return time_on_air(
        sf,
        bw,
        payload_len,
        cr=parse_coding_rate(coding_rate),
        preamble=LORAWAN_PREAMBLE,
        crc=_require_bool("uplink", uplink),
    )


def tx_airtime(request: TxRequest) -> float:
    """Seconds on air of a :class:`TxRequest` as the radio will send it."""
    sf, bw = parse_datarate(request.datarate)
    return time_on_air(
        sf,
        bw,
        len(request.payload),
        cr=parse_coding_rate(request.coding_rate),
        preamble=request.preamble,
        crc=request.crc,
    )
