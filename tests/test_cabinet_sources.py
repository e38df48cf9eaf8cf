"""The cabinet's asyncio sources on simulator buses and lines: records, faults, alarms."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence

import msgspec
import pytest

from hil.gpio_sim import SimGpioChip
from hil.i2c_sim import BME280Sim, I2cBusSim, SHT3xSim, VEML7700Sim
from passerelle.cabinet.config import GpioSourceConfig, I2cSourceConfig
from passerelle.cabinet.inputs import GpioSource
from passerelle.cabinet.sensors import I2cSensorSource
from passerelle.model import Priority, Record


def real_ms() -> int:
    return int(time.monotonic() * 1000)


class Sink:
    """An emit that records batches; ``wait_for`` polls until a condition holds."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[Record], Priority]] = []

    async def __call__(self, records: Sequence[Record], priority: Priority) -> None:
        self.batches.append((list(records), priority))

    @property
    def records(self) -> list[Record]:
        return [r for batch, _ in self.batches for r in batch]

    async def wait_for(self, condition, timeout: float = 3.0) -> None:  # type: ignore[no-untyped-def]
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; got {self.records}"
            await asyncio.sleep(0.005)


def i2c_config(**extra: object) -> I2cSourceConfig:
    raw = {
        "type": "i2c",
        "name": "cabinet-env",
        "interval": 0.05,
        "sensors": [
            {"type": "bme280", "name": "cabinet"},
            {"type": "sht3x", "name": "outside", "address": 0x45},
            {"type": "veml7700", "name": "street"},
        ],
        **extra,
    }
    return msgspec.convert(raw, I2cSourceConfig)


def real_time_bus() -> tuple[I2cBusSim, BME280Sim, SHT3xSim, VEML7700Sim]:
    # The drivers sleep for real in their worker thread: the simulators follow real time.
    bus = I2cBusSim(ticks_ms=real_ms, sleep_ms=lambda ms: time.sleep(ms / 1000))
    bme = bus.attach(BME280Sim())
    sht = bus.attach(SHT3xSim(0x45))
    veml = bus.attach(VEML7700Sim())
    return bus, bme, sht, veml


async def test_i2c_source_emits_records_of_every_sensor() -> None:
    bus, bme, sht, veml = real_time_bus()
    bme.set_environment(18.25, 100200.0, 55.0)
    sht.temperature, sht.humidity = 4.5, 91.0
    veml.lux = 42.0
    source = I2cSensorSource.from_config(i2c_config(), bus=bus)
    sink = Sink()
    task = asyncio.create_task(source.run(sink))
    try:
        await sink.wait_for(lambda: len(sink.batches) >= 2)
    finally:
        task.cancel()
    records, priority = sink.batches[0]
    assert priority is Priority.TELEMETRY
    by_key = {(r.device, r.name): r for r in records}
    assert set(by_key) == {
        ("cabinet", "temperature"), ("cabinet", "pressure"), ("cabinet", "humidity"),
        ("outside", "temperature"), ("outside", "humidity"), ("street", "illuminance"),
    }  # fmt: skip
    assert by_key["cabinet", "temperature"].value == pytest.approx(18.25, abs=0.01)
    assert by_key["cabinet", "temperature"].unit == "Cel"
    assert by_key["cabinet", "pressure"].value == pytest.approx(100200, abs=1)
    assert by_key["cabinet", "pressure"].unit == "Pa"
    assert by_key["cabinet", "humidity"].unit == "%RH"
    assert by_key["outside", "temperature"].value == pytest.approx(4.5, abs=0.01)
    assert by_key["street", "illuminance"].value == pytest.approx(42.0, abs=0.6)
    assert by_key["street", "illuminance"].unit == "lx"
    stats = source.stats()
    assert stats["sensors"]["cabinet"]["reads"] >= 2 and stats["sensors"]["cabinet"]["errors"] == 0


async def test_a_failing_sensor_is_counted_and_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="passerelle.cabinet.i2c")
    bus, bme, sht, _ = real_time_bus()
    source = I2cSensorSource.from_config(i2c_config(), bus=bus)
    sht.bad_crc_next = 1000  # every measurement of the outside sensor fails its CRC
    bme.absent = True  # and the BME280 stopped answering
    sink = Sink()
    task = asyncio.create_task(source.run(sink))
    try:
        await sink.wait_for(lambda: len(sink.batches) >= 3)
        assert {r.device for r in sink.records} == {"street"}
        bme.absent = False  # plugged back: re-initialised and read again
        sht.bad_crc_next = 0
        await sink.wait_for(lambda: {"cabinet", "outside"} <= {r.device for r in sink.records})
    finally:
        task.cancel()
    stats = source.stats()["sensors"]
    assert stats["outside"]["error_kinds"]["crc"] >= 3
    assert stats["cabinet"]["error_kinds"]["absent"] >= 3
    assert "CRC" in stats["outside"]["last_error"]
    assert not stats["cabinet"]["failing"] and not stats["outside"]["failing"]
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    # logged once per failure episode (log_period 600 s), not once per poll
    assert len([r for r in warnings if "outside" in r.getMessage()]) == 1
    assert len([r for r in warnings if "cabinet" in r.getMessage()]) == 1
    assert any("reads again" in r.getMessage() for r in caplog.records)


async def test_a_hung_bus_does_not_freeze_the_event_loop() -> None:
    release = threading.Event()
    bus, _, _, _ = real_time_bus()
    bus.hang_ms = 1
    bus._sleep_ms = lambda ms: release.wait(5)  # the transaction blocks until released
    source = I2cSensorSource.from_config(i2c_config(), bus=bus)
    source.read_timeout = 0.1
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.create_task(heartbeat())
    try:
        assert await source.poll() == []
        assert ticks >= 5  # the loop kept running while the read hung
        assert await source.poll() == []  # previous read still stuck: skipped, not stacked
        assert source.timeouts == 1 and source.skipped_busy == 1
    finally:
        release.set()
        beat.cancel()
    bus.hang_ms = 0
    for _ in range(200):  # the abandoned thread finishes on its own
        if not source.busy:
            break
        await asyncio.sleep(0.01)
    source.read_timeout = 2.0  # re-initialising the VEML7700 takes one integration
    assert await source.poll() != [], source.stats()


async def test_interval_schedule_and_a_missing_bus() -> None:
    seen: list[float] = []

    def interval_at(wall: float) -> float:
        seen.append(wall)
        return 0.02 if len(seen) < 3 else float("nan")  # a broken schedule falls back

    source = I2cSensorSource.from_config(i2c_config(bus=97))  # no /dev/i2c-97 here
    source.interval_at = interval_at
    sink = Sink()
    task = asyncio.create_task(source.run(sink))
    try:
        deadline = time.monotonic() + 3
        while sum(source.stats()["sensors"]["cabinet"]["error_kinds"].values()) < 4:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)
    finally:
        task.cancel()
    assert sink.batches == []
    assert source.bad_intervals >= 1
    kinds = source.stats()["sensors"]["cabinet"]["error_kinds"]
    assert sum(kinds.values()) >= 4  # bus absent or smbus2 missing: counted, retried


# --- GPIO ----------------------------------------------------------------------------


def gpio_config() -> GpioSourceConfig:
    return msgspec.convert(
        {
            "type": "gpio",
            "name": "cabinet-io",
            "interval": 0.005,
            "inputs": [
                {"name": "door", "line": 17, "alarm": True, "debounce_ms": 30},
                {"name": "breaker", "line": 18, "active_low": False, "debounce_ms": 30},
            ],
            "relays": [{"name": "contactor", "line": 27, "feedback_line": 22, "settle_ms": 60,
                        "initial": "off"}],
        },
        GpioSourceConfig,
    )  # fmt: skip


def gpio_rig() -> tuple[SimGpioChip, GpioSource]:
    chip = SimGpioChip(real_ms)
    chip.input(17, level=1)  # door: active low, so high = closed (the pull-up wins)
    chip.input(18, level=0)  # breaker: active high, low = not tripped
    chip.contactor(27, 22, delay_ms=10)
    return chip, GpioSource.from_config(gpio_config(), pins=chip)


async def test_door_alarm_is_emitted_once_per_opening() -> None:
    chip, source = gpio_rig()
    door = chip.pin(17)
    sink = Sink()
    task = asyncio.create_task(source.run(sink))
    try:
        await sink.wait_for(lambda: any(r.name == "door" for r in sink.records))
        assert not any(r.name == "alarm" for r in sink.records)  # closed at start: no alarm
        for _ in range(2):
            door.drive(0, bounce_ms=10, bounces=5)  # opened, contact chattering
            await asyncio.sleep(0.15)
            door.drive(1, bounce_ms=10, bounces=5)  # closed again
            await asyncio.sleep(0.15)
    finally:
        task.cancel()
    alarm_batches = [b for b, p in sink.batches if p is Priority.ALARM]
    texts = [r.value for b in alarm_batches for r in b if r.name == "alarm"]
    assert texts == ["door-open", "door-closed", "door-open", "door-closed"]
    states = [r.value for b in alarm_batches for r in b if r.name == "door"]
    assert states == [False, True, False, True, False]
    assert source.stats()["alarms"] == 2


async def test_plain_input_relay_records_and_feedback_mismatch() -> None:
    chip, source = gpio_rig()
    sink = Sink()
    task = asyncio.create_task(source.run(sink))
    try:
        await sink.wait_for(lambda: any(r.name == "breaker" for r in sink.records))
        contactor = source.relay("contactor")
        contactor.on()
        await sink.wait_for(lambda: any(r.name == "contactor" and r.value for r in sink.records))
        await asyncio.sleep(0.1)
        assert contactor.feedback is True and contactor.state is True
        chip.pin(22).welded = True  # type: ignore[attr-defined]
        contactor.off()
        await sink.wait_for(lambda: any(r.value == "contactor-feedback-mismatch"
                                        for r in sink.records))  # fmt: skip
        await asyncio.sleep(0.1)
    finally:
        task.cancel()
    normal = [r for b, p in sink.batches if p is Priority.TELEMETRY for r in b]
    assert [r.value for r in normal if r.name == "contactor"] == [False, True, False]
    assert [r.value for r in normal if r.name == "breaker"] == [False]
    mismatches = [r for r in sink.records if r.value == "contactor-feedback-mismatch"]
    assert len(mismatches) == 1 and source.feedback_mismatches == 1
    with pytest.raises(KeyError, match="relays: contactor"):
        source.relay("pump")
