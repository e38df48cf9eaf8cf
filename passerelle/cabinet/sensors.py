"""The cabinet's I2C environment sensors as a source: BME280, SHT3x, VEML7700.

One :class:`I2cSensorSource` owns one bus. Every ``interval`` (or what ``interval_at``
says for the wall time now, e.g. a day/night schedule) it reads every sensor in one
worker thread — the drivers are blocking and portable, and a bus held low must not
freeze the event loop — then emits one batch:

==========  ===============  ======  ================
chip        name             unit    resolution kept
==========  ===============  ======  ================
bme280      temperature      Cel     0.01
bme280      pressure         Pa      0.1
bme280      humidity         %RH     0.01
sht3x       temperature      Cel     0.01
sht3x       humidity         %RH     0.01
veml7700    illuminance      lx      0.01
==========  ===============  ======  ================

The record's device is the sensor's configured name. A failing sensor is counted by
kind (``absent``, ``crc``, ``chip``, ``timeout``, ``data``, ``bus``), logged on the
first failure and then once per ``log_period`` while it lasts, re-initialised on the
next poll, and never stops the others. A read that does not come back within
``read_timeout`` is abandoned (counted); until its thread returns, polls are skipped
and counted rather than piling threads up on a stuck bus.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from drivers import bme280, sht3x, veml7700

from ..logs import log_event
from ..model import Priority, Record, check_name
from ..sources import Emit
from .config import SENSOR_ADDRESSES

__all__ = ["CHANNELS", "I2cSensorSource", "SensorSpec"]

log = logging.getLogger("passerelle.cabinet.i2c")

Clock = Callable[[], float]

# chip -> what its driver's read() returns, in order: (record name, SenML unit, digits)
CHANNELS: dict[str, tuple[tuple[str, str, int], ...]] = {
    "bme280": (("temperature", "Cel", 2), ("pressure", "Pa", 1), ("humidity", "%RH", 2)),
    "sht3x": (("temperature", "Cel", 2), ("humidity", "%RH", 2)),
    "veml7700": (("illuminance", "lx", 2),),
}
_DRIVERS: dict[str, Any] = {
    "bme280": bme280.BME280,
    "sht3x": sht3x.SHT3x,
    "veml7700": veml7700.VEML7700,
}
_SENSOR_ERRORS = (bme280.SensorError, sht3x.SensorError, veml7700.SensorError)


class SensorSpec(NamedTuple):
    kind: str  # bme280 | sht3x | veml7700
    name: str  # the records' device
    address: int


class _Sensor:
    """One configured sensor: its driver (built on first use) and its health."""

    def __init__(self, spec: SensorSpec) -> None:
        self.spec = spec
        self.driver: Any = None
        self.ready = False
        self.reads = 0
        self.errors = 0
        self.error_kinds: dict[str, int] = {}
        self.last_error: str | None = None
        self.failing_since: float | None = None
        self.failures_in_episode = 0
        self.next_log = 0.0

    def read(self, bus: Any) -> list[float | None]:
        """Blocking: (re)initialise if needed, then one reading per channel."""
        if self.driver is None:
            self.driver = _DRIVERS[self.spec.kind](bus, self.spec.address)
        if not self.ready:
            self.driver.init()
            self.ready = True
        try:
            return list(self.driver.read())
        except BaseException:
            self.ready = False  # a reset chip needs its calibration and settings again
            raise


def _error_kind(exc: BaseException) -> str:
    if isinstance(exc, _SENSOR_ERRORS):
        return str(exc.kind)
    if isinstance(exc, OSError):
        return "bus"
    return type(exc).__name__


class I2cSensorSource:
    """Poll the sensors of one I2C bus; see the module docstring.

    ``bus`` is a ``machine.I2C``-like object (a simulator in tests); without it
    ``/dev/i2c-<bus_number>`` is opened through ``drivers.i2c_pi`` on the first poll
    (and retried on the next ones if that fails, so a missing bus is a counted,
    logged condition rather than an agent that will not start).
    """

    def __init__(
        self,
        name: str,
        sensors: Sequence[SensorSpec],
        interval: float,
        *,
        bus: Any = None,
        bus_number: int = 1,
        priority: Priority = Priority.TELEMETRY,
        interval_at: Callable[[float], float] | None = None,
        read_timeout: float = 10.0,
        log_period: float = 600.0,
        clock: Clock = time.monotonic,
        wall: Clock = time.time,
    ) -> None:
        self.name = check_name(name)
        if not sensors:
            raise ValueError(f"I2C source {name!r}: no sensor configured")
        self.interval = _positive(interval, "interval")
        seen: dict[str, SensorSpec] = {}
        for spec in sensors:
            if spec.kind not in _DRIVERS:
                raise ValueError(f"sensor {spec.name!r}: unknown type {spec.kind!r}")
            if spec.address not in SENSOR_ADDRESSES[spec.kind]:
                raise ValueError(
                    f"sensor {spec.name!r}: a {spec.kind} cannot be at 0x{spec.address:02X}"
                )
            check_name(spec.name)
            if spec.name in seen:
                raise ValueError(f"duplicate sensor name {spec.name!r}")
            seen[spec.name] = spec
        self._sensors = [_Sensor(spec) for spec in sensors]
        self._bus = bus
        self.bus_number = bus_number
        self.priority = Priority(priority)
        self.interval_at = interval_at
        self.read_timeout = _positive(read_timeout, "read_timeout")
        self.log_period = log_period
        self._clock = clock
        self._wall = wall
        self._pending: asyncio.Future[Any] | None = None
        self.polls = 0
        self.produced = 0
        self.skipped_busy = 0
        self.timeouts = 0
        self.bad_intervals = 0
        self._bus_next_log = 0.0

    @classmethod
    def from_config(
        cls, cfg: Any, bus: Any = None, interval_at: Callable[[float], float] | None = None
    ) -> I2cSensorSource:
        specs = [SensorSpec(s.type, s.name, s.resolved_address) for s in cfg.sensors]
        return cls(
            cfg.name,
            specs,
            cfg.interval,
            bus=bus,
            bus_number=cfg.bus,
            priority=getattr(cfg, "priority_level", Priority.TELEMETRY),
            interval_at=interval_at,
        )

    # --- scheduling ----------------------------------------------------------------

    def current_interval(self) -> float:
        if self.interval_at is None:
            return self.interval
        try:
            value = float(self.interval_at(self._wall()))
        except Exception:
            value = math.nan
        if not (value > 0 and math.isfinite(value)):
            self.bad_intervals += 1
            return self.interval
        return value

    async def run(self, emit: Emit) -> None:
        next_at = self._clock()
        while True:
            await asyncio.sleep(max(0.0, next_at - self._clock()))
            records = await self.poll()
            if records:
                await emit(records, self.priority)
                self.produced += len(records)
            # A sensor does not owe missed polls: the next one is an interval from now
            # at the latest, without drifting when polls are on time.
            next_at = max(next_at + self.current_interval(), self._clock())

    # --- one poll ------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        """True while a previous (possibly abandoned) read is still running."""
        return self._pending is not None and not self._pending.done()

    async def poll(self) -> list[Record]:
        """Read every sensor once (in a worker thread); the records that came out."""
        self.polls += 1
        if self.busy:
            self.skipped_busy += 1
            self._log_bus(
                "cabinet.i2c.busy",
                "I2C bus %s still busy with a previous read: poll skipped (%d so far)",
                self._bus_label(),
                self.skipped_busy,
            )
            return []
        ts = self._wall()
        pending = asyncio.ensure_future(asyncio.to_thread(self._read_all))
        self._pending = pending
        try:
            results = await asyncio.wait_for(asyncio.shield(pending), self.read_timeout)
        except TimeoutError:
            self.timeouts += 1
            self._log_bus(
                "cabinet.i2c.timeout",
                "I2C bus %s: no answer within %.1f s (bus held low?); reads abandoned",
                self._bus_label(),
                self.read_timeout,
            )
            return []
        return self._records(results, ts)

    def _bus_label(self) -> str:
        return getattr(self._bus, "path", None) or f"/dev/i2c-{self.bus_number}"

    def _read_all(self) -> list[tuple[_Sensor, list[float | None] | None, BaseException | None]]:
        if self._bus is None:
            try:
                from drivers.i2c_pi import I2cDevBus

                self._bus = I2cDevBus(self.bus_number)
            except (OSError, ImportError) as e:
                return [(s, None, e) for s in self._sensors]
        out: list[tuple[_Sensor, list[float | None] | None, BaseException | None]] = []
        for sensor in self._sensors:
            try:
                out.append((sensor, sensor.read(self._bus), None))
            except Exception as e:  # one sensor's fault must not stop the others
                out.append((sensor, None, e))
        return out

    def _records(self, results: Any, ts: float) -> list[Record]:
        records: list[Record] = []
        now = self._clock()
        for sensor, values, exc in results:
            if exc is not None:
                self._failed(sensor, exc, now)
                continue
            self._succeeded(sensor, now)
            for (name, unit, digits), value in zip(CHANNELS[sensor.spec.kind], values, strict=True):
                if value is not None:
                    records.append(Record(sensor.spec.name, name, round(value, digits), ts, unit))
        return records

    # --- health --------------------------------------------------------------------

    def _failed(self, sensor: _Sensor, exc: BaseException, now: float) -> None:
        kind = _error_kind(exc)
        sensor.errors += 1
        sensor.error_kinds[kind] = sensor.error_kinds.get(kind, 0) + 1
        sensor.last_error = str(exc)
        sensor.failures_in_episode += 1
        if sensor.failing_since is None:
            sensor.failing_since = now
            sensor.next_log = now
        if now >= sensor.next_log:
            sensor.next_log = now + self.log_period
            log_event(
                log,
                logging.WARNING,
                f"cabinet.i2c.{kind}",
                "sensor %s (%s at 0x%02X): %s (%d failed reads in a row)",
                sensor.spec.name,
                sensor.spec.kind,
                sensor.spec.address,
                exc,
                sensor.failures_in_episode,
                sensor=sensor.spec.name,
                kind=kind,
            )

    def _succeeded(self, sensor: _Sensor, now: float) -> None:
        sensor.reads += 1
        if sensor.failing_since is not None:
            log_event(
                log,
                logging.INFO,
                "cabinet.i2c.recovered",
                "sensor %s reads again after %d failed reads (%.0f s)",
                sensor.spec.name,
                sensor.failures_in_episode,
                now - sensor.failing_since,
                sensor=sensor.spec.name,
            )
            sensor.failing_since = None
            sensor.failures_in_episode = 0

    def _log_bus(self, cause: str, msg: str, *args: Any) -> None:
        now = self._clock()
        if now >= self._bus_next_log:
            self._bus_next_log = now + self.log_period
            log_event(log, logging.WARNING, cause, msg, *args)

    def stats(self) -> dict[str, Any]:
        return {
            "polls": self.polls,
            "records": self.produced,
            "skipped_busy": self.skipped_busy,
            "timeouts": self.timeouts,
            "bad_intervals": self.bad_intervals,
            "sensors": {
                s.spec.name: {
                    "type": s.spec.kind,
                    "address": s.spec.address,
                    "reads": s.reads,
                    "errors": s.errors,
                    "error_kinds": dict(s.error_kinds),
                    "failing": s.failing_since is not None,
                    "last_error": s.last_error,
                }
                for s in self._sensors
            },
        }


def _positive(value: float, what: str) -> float:
    value = float(value)
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{what} must be a positive number of seconds, got {value}")
    return value
