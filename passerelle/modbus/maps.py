"""Bundled register maps, and the planner that turns a map into as few reads as possible.

A map is data: one :class:`MapEntry` per measurement, named by its SenML name. The Eastron
maps follow the public "SDM120 / SDM630 Modbus protocol" documents: every measurement is an
IEEE 754 float32 in two input registers (function 4), big endian (ABCD). The documents
number registers from 30001; the addresses here are the protocol addresses (30001 -> 0x0000).

Units are SenML units: ``V``, ``A``, ``W``, ``Hz`` and ``/`` (a ratio, for the power factor)
come from RFC 8428's registry, ``VA`` and ``var`` from RFC 8798's additions to it. Energy
counters keep the meter's own unit, ``kWh`` and ``kvarh``: those are in the *secondary* units
registry of RFC 8798 (kWh = 3 600 000 J), which SenML consumers must accept. Converting to
``J`` would need scale 3.6e6 and lose nothing, but kWh is what an operator reads on the meter.

Energy counters get :attr:`Priority.ENERGY` (kept longest when the store is full); the rest
is telemetry.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..model import Priority
from .registers import is_bit_function, word_count

MAX_REGISTERS_PER_READ = 125
"""Modbus limit for function 3/4 (a 250-byte reply); coils and inputs allow 2000 bits."""
MAX_BITS_PER_READ = 2000
DEFAULT_MAX_GAP = 8
"""Registers the planner will read and throw away to save a request.

A request costs about 8 + 5 bytes on the wire plus two silent intervals and the device's
turnaround (tens of milliseconds at 9600 baud); 8 unused registers cost 16 bytes. Larger
gaps also risk reading addresses the device does not implement (exception 02).
"""


@dataclass(frozen=True, slots=True)
class MapEntry:
    """One measurement: where it is, how to decode it, what it means."""

    name: str
    address: int
    function: str = "input"
    type: str = "float32"
    order: str = "ABCD"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    priority: Priority = Priority.TELEMETRY

    @property
    def span(self) -> int:
        """Addresses occupied (registers, or 1 for a bit)."""
        return word_count(self.type)

    @property
    def end(self) -> int:
        """First address after this entry."""
        return self.address + self.span


@dataclass(frozen=True, slots=True)
class RegisterMap:
    name: str
    description: str
    entries: tuple[MapEntry, ...]

    def entry(self, name: str) -> MapEntry:
        for e in self.entries:
            if e.name == name:
                return e
        raise KeyError(f"no entry {name!r} in map {self.name!r}{did_you_mean(name, self.names)}")

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.entries]


def _f(
    name: str, address: int, unit: str | None, priority: Priority = Priority.TELEMETRY
) -> MapEntry:
    return MapEntry(name, address, "input", "float32", "ABCD", unit=unit, priority=priority)


_E = Priority.ENERGY

SDM120 = RegisterMap(
    "sdm120",
    "Eastron SDM120-Modbus, single-phase meter (input registers, float32 ABCD)",
    (
        _f("voltage", 0x0000, "V"),
        _f("current", 0x0006, "A"),
        _f("power", 0x000C, "W"),
        _f("apparent-power", 0x0012, "VA"),
        _f("reactive-power", 0x0018, "var"),
        _f("power-factor", 0x001E, "/"),
        _f("frequency", 0x0046, "Hz"),
        _f("energy-import", 0x0048, "kWh", _E),
        _f("energy-export", 0x004A, "kWh", _E),
        _f("reactive-energy-import", 0x004C, "kvarh", _E),
        _f("reactive-energy-export", 0x004E, "kvarh", _E),
        _f("energy-total", 0x0156, "kWh", _E),
        _f("reactive-energy-total", 0x0158, "kvarh", _E),
    ),
)

SDM630 = RegisterMap(
    "sdm630",
    "Eastron SDM630-Modbus, three-phase meter (input registers, float32 ABCD)",
    (
        _f("l1/voltage", 0x0000, "V"),
        _f("l2/voltage", 0x0002, "V"),
        _f("l3/voltage", 0x0004, "V"),
        _f("l1/current", 0x0006, "A"),
        _f("l2/current", 0x0008, "A"),
        _f("l3/current", 0x000A, "A"),
        _f("l1/power", 0x000C, "W"),
        _f("l2/power", 0x000E, "W"),
        _f("l3/power", 0x0010, "W"),
        _f("l1/apparent-power", 0x0012, "VA"),
        _f("l2/apparent-power", 0x0014, "VA"),
        _f("l3/apparent-power", 0x0016, "VA"),
        _f("l1/reactive-power", 0x0018, "var"),
        _f("l2/reactive-power", 0x001A, "var"),
        _f("l3/reactive-power", 0x001C, "var"),
        _f("l1/power-factor", 0x001E, "/"),
        _f("l2/power-factor", 0x0020, "/"),
        _f("l3/power-factor", 0x0022, "/"),
        _f("voltage-average", 0x002A, "V"),
        _f("current-average", 0x002E, "A"),
        _f("current-sum", 0x0030, "A"),
        _f("power", 0x0034, "W"),
        _f("apparent-power", 0x0038, "VA"),
        _f("reactive-power", 0x003C, "var"),
        _f("power-factor", 0x003E, "/"),
        _f("frequency", 0x0046, "Hz"),
        _f("energy-import", 0x0048, "kWh", _E),
        _f("energy-export", 0x004A, "kWh", _E),
        _f("reactive-energy-import", 0x004C, "kvarh", _E),
        _f("reactive-energy-export", 0x004E, "kvarh", _E),
        _f("neutral-current", 0x00E0, "A"),
        _f("energy-total", 0x0156, "kWh", _E),
        _f("reactive-energy-total", 0x0158, "kvarh", _E),
    ),
)

MAPS: dict[str, RegisterMap] = {m.name: m for m in (SDM120, SDM630)}


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(word, list(candidates), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def get_map(name: str) -> RegisterMap:
    """The bundled map ``name``; KeyError naming the known ones otherwise."""
    try:
        return MAPS[name]
    except KeyError:
        known = ", ".join(sorted(MAPS))
        raise KeyError(
            f"unknown register map {name!r}{did_you_mean(name, MAPS)} (known: {known})"
        ) from None


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One Modbus read covering ``entries`` (addresses ``address`` .. ``address+count-1``)."""

    function: str
    address: int
    count: int
    entries: tuple[MapEntry, ...]

    def words_of(
        self, entry: MapEntry, values: Sequence[int] | Sequence[bool]
    ) -> Sequence[int] | Sequence[bool]:
        """The slice of this block's reply that holds ``entry``."""
        start = entry.address - self.address
        return values[start : start + entry.span]


def plan_reads(entries: Iterable[MapEntry], *, max_gap: int = DEFAULT_MAX_GAP) -> list[ReadBlock]:
    """Group ``entries`` into the fewest reads within Modbus limits.

    Entries of one function are sorted by address and merged while the merged read stays
    within 125 registers (2000 bits) and the unused addresses between two entries are at
    most ``max_gap``. Overlapping entries (two views of the same registers) share a read.
    Blocks come out ordered by function code, then address.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap}")
    by_function: dict[str, list[MapEntry]] = {}
    for e in entries:
        by_function.setdefault(e.function, []).append(e)
    order = {"coil": 1, "discrete": 2, "holding": 3, "input": 4}
    blocks: list[ReadBlock] = []
    for function in sorted(by_function, key=lambda f: order.get(f, 9)):
        limit = MAX_BITS_PER_READ if is_bit_function(function) else MAX_REGISTERS_PER_READ
        group: list[MapEntry] = []
        start = end = 0
        for e in sorted(by_function[function], key=lambda e: (e.address, e.span)):
            if e.span > limit:
                raise ValueError(f"{e.name}: {e.span} addresses exceed one read ({limit})")
            if group and e.address - end <= max_gap and max(end, e.end) - start <= limit:
                group.append(e)
                end = max(end, e.end)
                continue
            if group:
                blocks.append(ReadBlock(function, start, end - start, tuple(group)))
            group, start, end = [e], e.address, e.end
        if group:
            blocks.append(ReadBlock(function, start, end - start, tuple(group)))
    return blocks
