"""Modbus data model: what a run of 16-bit registers (or bits) means as a number.

Modbus itself only moves 16-bit registers (holding: function 3, input: function 4) and
single bits (coils: function 1, discrete inputs: function 2). Anything wider is a convention
of the device, described by a type and a byte order.

Types
=====

=========  =========  =========================================================
type       registers  meaning
=========  =========  =========================================================
int16      1          two's complement
uint16     1          unsigned
int32      2          two's complement
uint32     2          unsigned
float32    2          IEEE 754 single precision (Eastron, most meters)
float64    4          IEEE 754 double precision
bool       1 bit      a coil or a discrete input (the only type allowed for them)
=========  =========  =========================================================

Byte orders
===========

Name the value's bytes A B C D ... from the most significant. The order says how they sit in
the registers as they travel, first register first::

    32-bit value A B C D          registers
    ABCD  big endian              [AB, CD]   Modbus' own convention, Eastron
    CDAB  word swap               [CD, AB]   "little-endian word order", many PLCs
    BADC  byte swap               [BA, DC]
    DCBA  little endian           [DC, BA]

The four names are two independent switches, and that is how they generalise to 64 bits
(bytes A..H, four registers) and down to 16 bits:

* words reversed (CDAB, DCBA): the least significant register comes first;
* bytes swapped (BADC, DCBA): each register carries its two bytes low byte first.

::

    64-bit value A B C D E F G H   registers
    ABCD                           [AB, CD, EF, GH]
    CDAB                           [GH, EF, CD, AB]
    BADC                           [BA, DC, FE, HG]
    DCBA                           [HG, FE, DC, BA]

A 16-bit value has one register, so only the byte switch matters: ABCD and CDAB read
``[AB]``, BADC and DCBA read ``[BA]``.

Scale and offset
================

The engineering value is ``raw * scale + offset`` (a meter giving tenths of a volt in a
uint16 has scale 0.1). With scale 1 and offset 0 the raw value is returned unchanged (an
int stays an int); otherwise the result is a float.

NaN and infinity
================

Float registers can hold NaN or infinity; some meters use NaN for "not available". Decoding
returns them as they are (``math.nan``, ``math.inf``): it is the reader's decision what to do
(:class:`passerelle.modbus.source.ModbusSource` counts them as invalid values and does not
emit them). :func:`is_finite` tells them apart. Integers are always finite.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Literal, get_args

RegisterType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64", "bool"]
WordType = Literal["int16", "uint16", "int32", "uint32", "float32", "float64"]
ByteOrder = Literal["ABCD", "CDAB", "BADC", "DCBA"]
Function = Literal["holding", "input", "coil", "discrete"]

REGISTER_TYPES: tuple[str, ...] = get_args(RegisterType)
WORD_TYPES: tuple[str, ...] = get_args(WordType)
BYTE_ORDERS: tuple[str, ...] = get_args(ByteOrder)
FUNCTIONS: tuple[str, ...] = get_args(Function)

FUNCTION_CODES: dict[str, int] = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
"""Modbus read function code of each register kind."""
BIT_FUNCTIONS = frozenset({"coil", "discrete"})

# struct format of the big-endian value bytes, and register count
_LAYOUT: dict[str, tuple[str, int]] = {
    "int16": (">h", 1),
    "uint16": (">H", 1),
    "int32": (">i", 2),
    "uint32": (">I", 2),
    "float32": (">f", 2),
    "float64": (">d", 4),
}
_WORDS_REVERSED = frozenset({"CDAB", "DCBA"})
_BYTES_SWAPPED = frozenset({"BADC", "DCBA"})


class RegisterError(ValueError):
    """A value that cannot be decoded or encoded as asked (wrong count, out of range...)."""


def is_bit_function(function: str) -> bool:
    """True for coils and discrete inputs, which read bits, not registers."""
    if function not in FUNCTION_CODES:
        raise RegisterError(f"unknown function {function!r} (known: {', '.join(FUNCTIONS)})")
    return function in BIT_FUNCTIONS


def word_count(type_: str) -> int:
    """Addresses one value of ``type_`` occupies: registers, or 1 for a ``bool`` bit."""
    if type_ == "bool":
        return 1
    try:
        return _LAYOUT[type_][1]
    except KeyError:
        known = ", ".join(REGISTER_TYPES)
        raise RegisterError(f"unknown register type {type_!r} (known: {known})") from None


def _check_order(order: str) -> None:
    if order not in BYTE_ORDERS:
        known = ", ".join(BYTE_ORDERS)
        raise RegisterError(f"unknown byte order {order!r} (known: {known})")


def _value_bytes(words: Sequence[int], order: str) -> bytes:
    """The value's bytes, most significant first, from registers in ``order``."""
    ordered = list(reversed(words)) if order in _WORDS_REVERSED else list(words)
    raw = bytearray()
    for w in ordered:
        hi, lo = w >> 8, w & 0xFF
        raw += bytes((lo, hi)) if order in _BYTES_SWAPPED else bytes((hi, lo))
    return bytes(raw)


def _registers(value_bytes: bytes, order: str) -> list[int]:
    """Inverse of :func:`_value_bytes`."""
    words = []
    for i in range(0, len(value_bytes), 2):
        hi, lo = value_bytes[i], value_bytes[i + 1]
        words.append((lo << 8 | hi) if order in _BYTES_SWAPPED else (hi << 8 | lo))
    return list(reversed(words)) if order in _WORDS_REVERSED else words


def decode_raw(
    words: Sequence[int] | Sequence[bool], type_: str, order: str = "ABCD"
) -> int | float | bool:
    """The raw value of ``words`` (registers, or one bit for ``bool``), no scaling."""
    _check_order(order)
    n = word_count(type_)
    if len(words) != n:
        what = "bit" if type_ == "bool" else "register" + ("s" if n > 1 else "")
        raise RegisterError(f"{type_} needs {n} {what}, got {len(words)}")
    if type_ == "bool":
        return bool(words[0])
    for w in words:
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 0xFFFF:
            raise RegisterError(f"register value {w!r} is not a 16-bit word (0..65535)")
    fmt, _ = _LAYOUT[type_]
    value: int | float = struct.unpack(fmt, _value_bytes(words, order))[0]  # type: ignore[arg-type]
    return value


def decode(
    words: Sequence[int] | Sequence[bool],
    type_: str,
    order: str = "ABCD",
    *,
    scale: float = 1.0,
    offset: float = 0.0,
) -> int | float | bool:
    """The engineering value ``raw * scale + offset`` of ``words`` (see the module doc)."""
    raw = decode_raw(words, type_, order)
    if isinstance(raw, bool) or (scale == 1 and offset == 0):
        return raw
    return raw * scale + offset


def encode(value: float | bool, type_: str, order: str = "ABCD") -> list[int]:
    """Registers holding raw ``value`` as ``type_`` in ``order`` (a bool gives ``[0|1]``)."""
    _check_order(order)
    n = word_count(type_)
    if type_ == "bool":
        return [1 if value else 0]
    fmt, _ = _LAYOUT[type_]
    if type_.startswith("float"):
        try:
            raw = struct.pack(fmt, float(value))
        except (OverflowError, struct.error):
            raise RegisterError(f"{value!r} does not fit in a {type_}") from None
    else:
        if isinstance(value, float):
            if not value.is_integer():
                raise RegisterError(f"{value!r} is not an integer ({type_})")
            value = int(value)
        bits = 16 * n
        lo, hi = (
            (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if type_[0] == "i" else (0, (1 << bits) - 1)
        )
        if not lo <= int(value) <= hi:
            raise RegisterError(f"{value!r} is out of range for {type_} ({lo}..{hi})")
        raw = struct.pack(fmt, int(value))
    return _registers(raw, order)


def is_finite(value: int | float | bool) -> bool:
    """False for NaN and infinities (see the module doc)."""
    return not isinstance(value, float) or math.isfinite(value)
