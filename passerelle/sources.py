"""Sources: anything that produces measurements (simulators today; buses and radios later).

A source is an object with a ``name`` and an ``async run(emit)`` coroutine that loops until
it is cancelled, calling ``await emit(records, priority)`` for every poll. ``emit`` returns
once the records are durably stored (the store's group commit), which is also how a slow
disk pushes back on a fast source.

The agent builds sources from config through :func:`build_source`. Simulated sources live
in ``hil/`` and are imported lazily, so a production gateway never loads them unless its
config names a ``sim.*`` type.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from .model import Priority, Record

Emit = Callable[[Sequence[Record], Priority], Awaitable[None]]
IntervalAt = Callable[[float], float]  # wall time -> seconds until the next poll


class Source(Protocol):
    name: str

    async def run(self, emit: Emit) -> None: ...


# source type (as written in config) -> "module:factory"; the factory takes the source's
# config object and returns a Source.
SOURCE_TYPES: dict[str, str] = {
    "sim.counter": "hil.sources:CounterSource.from_config",
    "sim.env": "hil.sources:EnvironmentSensor.from_config",
    "i2c": "passerelle.cabinet.sensors:I2cSensorSource.from_config",
    "gpio": "passerelle.cabinet.inputs:GpioSource.from_config",
    "modbus-rtu": "passerelle.modbus.source:ModbusSource.from_config",
    "modbus-tcp": "passerelle.modbus.source:ModbusSource.from_config",
}
# Types whose factory takes ``interval_at`` (a night interval in [policy].night).
SCHEDULED_TYPES: set[str] = {"i2c", "modbus-rtu", "modbus-tcp"}


def build_source(cfg: Any, interval_at: IntervalAt | None = None) -> Source:
    """The source ``cfg`` describes; ``interval_at`` (a day/night schedule) goes to the
    sources that poll on one (their factory takes it), the others poll at ``interval``."""
    target = SOURCE_TYPES[cfg.type]
    module_name, _, attr_path = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    for attr in attr_path.split("."):
        obj = getattr(obj, attr)
    if interval_at is not None and cfg.type in SCHEDULED_TYPES:
        source: Source = obj(cfg, interval_at=interval_at)
    else:
        source = obj(cfg)
    return source
