"""The measurement model, shaped after SenML (RFC 8428).

A :class:`Record` is one datapoint: which device it came from, what was measured, the value,
its unit and when. The value's Python type chooses the SenML field it travels in:

======================  ===========  ===========
Python type             SenML field  CBOR label
======================  ===========  ===========
``int`` / ``float``     ``v``        2
``str``                 ``vs``       3
``bool``                ``vb``       4
``bytes``               ``vd``       8
======================  ===========  ===========

Records are NamedTuples on purpose: the store encodes them straight to a CBOR array and the
hot path (tens of thousands of records a second on a Pi) must not pay for object plumbing.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import NamedTuple

Value = float | int | str | bool | bytes


class Priority(IntEnum):
    """What is evicted first when the store is full (lowest first) and drained last."""

    DIAGNOSTIC = 0
    TELEMETRY = 1
    ENERGY = 2
    ALARM = 3


class Record(NamedTuple):
    device: str
    """Device identifier inside the gateway (``counter``, ``meter-1``, a DevEUI...)."""
    name: str
    """Measurement name, SenML ``n`` relative to the device's base name."""
    value: Value
    time: float
    """Seconds since the Unix epoch (SenML absolute time)."""
    unit: str | None = None
    """A unit from the SenML registry (``Cel``, ``%RH``, ``W``, ``Wh``...)."""


# A SenML name may only hold these characters (RFC 8428 section 4.5.1).
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-:./_]*$")


def check_name(name: str) -> str:
    """Return ``name`` if it is a valid SenML name fragment, raise ValueError otherwise."""
    if not _NAME.match(name):
        raise ValueError(f"invalid SenML name {name!r}: letters, digits and -:./_ only")
    return name
