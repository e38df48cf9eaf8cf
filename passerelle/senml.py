"""SenML-CBOR packs (RFC 8428) as the gateway sends them upstream.

Labels (RFC 8428 table 6)::

    bver -1   bn -2   bt -3   bu -4   bv -5   bs -6
    n 0   u 1   v 2   vs 3   vb 4   s 5   t 6   ut 7   vd 8

How a pack is kept small (a numeric datapoint costs about 7 bytes in a run, see README):

* records are grouped by device, then by measurement name (order inside a pack carries no
  meaning in SenML, the resolved records are the same);
* the device goes in the base name ``bn`` once per device; a run of the same measurement puts
  the whole name in ``bn`` so its records carry no ``n`` at all;
* the pack's earliest time is the base time ``bt``; records carry a relative ``t`` rounded to
  1/1024 s (about 1 ms), which CBOR then holds in a half or single float;
* the unit goes in ``bu`` and is only repeated when it changes (``bu: ""`` clears it);
* a run of integers carries its first value in ``bv`` and small deltas in ``v``;
* floats are written in the shortest IEEE width that holds them exactly, and integral floats
  as integers.

The pack's first record also carries the extension field ``"idk"``: the batch's idempotency
key, ``<gateway-id>/<first-seq>-<last-seq>``, so a consumer drops redeliveries whatever the
transport kept of MQTT properties. Receivers that do not know ``idk`` ignore it (RFC 8428
section 4.4: only labels ending in ``_`` must be understood).
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import cbor2

from .model import Record, Value

CONTENT_TYPE = "application/senml+cbor"

BVER, BN, BT, BU, BV, BS = -1, -2, -3, -4, -5, -6
N, U, V, VS, VB, S, T, UT, VD = 0, 1, 2, 3, 4, 5, 6, 7, 8
IDEMPOTENCY_LABEL = "idk"
ZLIB_FIRST_BYTE = b"\x78"  # CMF of a 32 KiB-window deflate stream (RFC 1950)
MAX_PACK_BYTES = 4 * 1024 * 1024  # a 4096-record pack of long strings stays far below

# Relative times are quantised to 1/1024 s: exact in a half float below 2 s and in a single
# float below about 4.5 hours, where a millisecond grid would need 9-byte doubles.
TIME_QUANTUM = 1024.0

_F32 = struct.Struct("<f")
_EUI64 = re.compile(r"^[0-9a-f]{16}$")


def device_base_name(gateway_id: str, device: str) -> str:
    """The SenML base name of a device: its EUI-64 URN when it has one, else an ops URN."""
    if _EUI64.match(device):
        return f"urn:dev:eui64:{device}:"
    return f"urn:dev:ops:passerelle-{gateway_id}-{device}:"


def _number(value: int | float) -> int | float | Decimal:
    """The shortest CBOR form of a number that converts back to the same IEEE double.

    An integral float costs 3+ bytes and the same integer 1-3: SenML's v does not tell them
    apart. A float that needs a 9-byte double but has a short decimal form (a reading
    rounded to its resolution, 21.37) goes as a decimal fraction, CBOR tag 4, which RFC 8428
    section 6 allows as long as it converts back to the same double: 21.37 costs 6 bytes.
    -0.0, NaN and infinities are left alone.
    """
    if type(value) is not float or not math.isfinite(value):
        return value
    if value.is_integer() and abs(value) < 2**53:
        return int(value) if value or math.copysign(1.0, value) > 0 else value
    try:
        if _F32.unpack(_F32.pack(value))[0] == value:
            return value  # cbor2's canonical mode writes it as a half or single float
    except OverflowError:  # beyond float32's range: a double it is
        return value
    dec = Decimal(repr(value))
    if len(dec.as_tuple().digits) <= 9:  # mantissa fits 32 bits: at most 8 bytes in all
        return dec
    return value


def _value_field(value: Value) -> tuple[int, Any]:
    if isinstance(value, bool):
        return VB, value
    if isinstance(value, int | float):
        return V, _number(value)
    if isinstance(value, str):
        return VS, value
    if isinstance(value, bytes | bytearray | memoryview):
        return VD, bytes(value)
    raise TypeError(f"unsupported SenML value type {type(value).__name__}")


def encode_pack(
    records: Sequence[Record],
    base_name: Callable[[str], str],
    idempotency_key: str | None = None,
) -> bytes:
    """Encode records as one SenML-CBOR pack. ``base_name(device)`` gives each device's bn."""
    if not records:
        raise ValueError("a SenML pack needs at least one record")
    ordered = sorted(records, key=lambda r: (r.device, r.name, r.time))
    bt = min(r.time for r in records)
    out: list[dict[Any, Any]] = []
    cur_bn: str | None = None
    cur_bu: str | None = None
    cur_bv: int = 0
    i = 0
    count = len(ordered)
    while i < count:
        first = ordered[i]
        j = i + 1
        while j < count and ordered[j].device == first.device and ordered[j].name == first.name:
            j += 1
        run = ordered[i:j]
        prefix = base_name(first.device)
        # Name the run in bn (once) or in n (every record), whichever costs fewer bytes.
        per_record_n = (len(first.name.encode()) + 2) * len(run)
        as_run = per_record_n > len(prefix.encode()) + len(first.name.encode()) + 4
        run_bn = prefix + first.name if as_run else prefix
        # bv is inherited by every later record, so it is set per run and reset after.
        bv = 0
        if len(run) > 1 and all(type(r.value) is int for r in run):
            bv = run[0].value  # type: ignore[assignment]
        for k, rec in enumerate(run):
            entry: dict[Any, Any] = {}
            if not out:
                entry[BT] = bt
                if idempotency_key is not None:
                    entry[IDEMPOTENCY_LABEL] = idempotency_key
            if run_bn != cur_bn:
                entry[BN] = cur_bn = run_bn
            if rec.unit != cur_bu:
                entry[BU] = rec.unit or ""
                cur_bu = rec.unit
            if k == 0 and bv != cur_bv:
                entry[BV] = cur_bv = bv
            if not as_run:
                entry[N] = rec.name
            if type(rec.value) is int and cur_bv:
                entry[V] = rec.value - cur_bv
            elif isinstance(rec.value, int | float) and not isinstance(rec.value, bool) and cur_bv:
                entry[BV] = cur_bv = 0  # a float must not inherit an integer run's bv
                entry[V] = _number(rec.value)
            else:
                label, val = _value_field(rec.value)
                entry[label] = val
            rel = round((rec.time - bt) * TIME_QUANTUM) / TIME_QUANTUM
            if rel:
                entry[T] = _number(rel)
            out.append(entry)
        i = j
    return cbor2.dumps(out, canonical=True)


@dataclass(frozen=True, slots=True)
class Resolved:
    """A SenML record after base-field resolution (RFC 8428 section 4.6)."""

    name: str
    value: Value
    time: float
    unit: str | None


class SenMLError(ValueError):
    """A pack that is not valid SenML-CBOR; the message says which record and why."""


def compress(pack: bytes) -> bytes:
    """The pack in zlib format (RFC 1950), if that is smaller; else the pack unchanged.

    Inside one pack a meter's channel names, units and value prefixes repeat every poll,
    which SenML's base fields cannot share but deflate can: a pack of six 20-value polls
    goes from about 17 to about 6 bytes per record. A zlib stream's first byte (0x78) is a
    CBOR text string header, which no SenML pack (a CBOR array, 0x80-0x9f) starts with, so
    a consumer tells the two apart by that byte whatever the transport kept of properties.
    """
    packed = zlib.compress(pack, 9)
    return packed if len(packed) < len(pack) else pack


def is_compressed(payload: bytes) -> bool:
    return payload[:1] == ZLIB_FIRST_BYTE


def decompress(payload: bytes, limit: int = MAX_PACK_BYTES) -> bytes:
    """Inflate a compressed pack, refusing more than ``limit`` bytes (no zip bombs)."""
    inflater = zlib.decompressobj()
    try:
        out = inflater.decompress(payload, limit)
    except zlib.error as exc:
        raise SenMLError(f"starts like zlib (0x78) but does not inflate: {exc}") from exc
    if inflater.unconsumed_tail:
        raise SenMLError(f"inflates to more than {limit} bytes")
    if not inflater.eof:
        raise SenMLError("truncated zlib stream")
    return out


_FIELD_NAMES = {BT: "bt", BV: "bv", T: "t"}


def _field_number(entry: dict[Any, Any], label: int, default: float, idx: int) -> float:
    """A numeric base or time field; decimal fractions (tag 4) are numbers too."""
    if label not in entry:
        return default
    x = entry[label]
    if isinstance(x, Decimal):
        return float(x)
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise SenMLError(f"record {idx}: {_FIELD_NAMES[label]} is not a number")
    return x


def decode_pack(payload: bytes) -> tuple[list[Resolved], str | None]:
    """Resolve a SenML-CBOR pack, compressed or not (see :func:`compress`).

    Returns the records and the idempotency key, if any.
    """
    if is_compressed(payload):
        payload = decompress(payload)
    try:
        pack = cbor2.loads(payload)
    except Exception as exc:  # cbor2 raises several types for garbage
        raise SenMLError(f"not CBOR: {exc}") from exc
    if not isinstance(pack, list):
        raise SenMLError("a SenML pack is a CBOR array")
    bn, bt, bu, bv = "", 0.0, None, 0.0
    key: str | None = None
    out: list[Resolved] = []
    for idx, entry in enumerate(pack):
        if not isinstance(entry, dict):
            raise SenMLError(f"record {idx}: not a map")
        if IDEMPOTENCY_LABEL in entry:
            key = entry[IDEMPOTENCY_LABEL]
        bn = entry.get(BN, bn)
        bt = _field_number(entry, BT, bt, idx)
        if BU in entry:
            bu = entry[BU] or None
        bv = _field_number(entry, BV, bv, idx)
        name = bn + entry.get(N, "")
        if not name:
            raise SenMLError(f"record {idx}: empty name")
        value: Value
        if V in entry:
            value = entry[V]
            if isinstance(value, Decimal):
                value = float(value)
            if bv:
                value = value + bv
        elif VS in entry:
            value = entry[VS]
        elif VB in entry:
            value = entry[VB]
        elif VD in entry:
            value = entry[VD]
        else:
            raise SenMLError(f"record {idx} ({name}): no value")
        unit = entry.get(U, bu)
        out.append(Resolved(name, value, bt + _field_number(entry, T, 0.0, idx), unit or None))
    return out, key


def resolved_from_records(
    records: Iterable[Record], base_name: Callable[[str], str]
) -> list[Resolved]:
    """What a pack of ``records`` must resolve to (used by tests and the demo's checks)."""
    return [Resolved(base_name(r.device) + r.name, r.value, r.time, r.unit) for r in records]
