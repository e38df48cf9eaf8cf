"""ModbusBus and ModbusSource end to end: pymodbus + pyserial on a real PTY, real TCP sockets.

The slaves are hil.modbus_sim's; every fault is injected at the byte level on the slave side.
Timeouts are short (50-150 ms) to keep the file fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence

import pytest
from pymodbus.framer import FramerRTU

from hil.modbus_sim import EnergyMeterSim, RtuLine, TcpServer, UnitSim, crc16
from passerelle.modbus.bus import (
    BadReply,
    CrcError,
    Disconnected,
    ExceptionReply,
    GarbledReply,
    ModbusBus,
    Timeout,
)
from passerelle.modbus.maps import SDM120, SDM630, MapEntry
from passerelle.modbus.registers import decode
from passerelle.modbus.source import DeviceSpec, ModbusSource
from passerelle.model import Priority, Record

T = 0.1  # reply timeout used on healthy-path buses


def test_sim_crc_matches_the_client_stack() -> None:
    frame = b"\x01\x04\x00\x00\x00\x02"
    assert crc16(frame) == bytes.fromhex("71cb")  # the classic "read 2 input registers" frame
    assert int.from_bytes(crc16(frame), "big") == FramerRTU.compute_CRC(frame)


@contextlib.asynccontextmanager
async def rtu(
    *units: UnitSim, timeout: float = T, retries: int = 0
) -> AsyncIterator[tuple[RtuLine, ModbusBus]]:
    async with RtuLine(units) as line:
        bus = ModbusBus.serial(line.path, baud=9600, timeout=timeout, retries=retries)
        async with bus:
            yield line, bus


async def wait_until(condition: Callable[[], bool], within: float = 1.0) -> None:
    for _ in range(int(within / 0.005)):
        if condition():
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"condition still false after {within} s")


def regs(n: int, start: int = 0) -> dict[int, int]:
    return {start + i: 100 + i for i in range(n)}


# ------------------------------------------------------------------------------- the bus


async def test_reads_each_function() -> None:
    u = UnitSim(
        5,
        holding=regs(4),
        input=regs(3, 10),
        coils={0: True, 1: False, 2: True},
        discrete={7: True},
    )
    async with rtu(u) as (_, bus):
        assert await bus.read(5, "holding", 0, 4) == [100, 101, 102, 103]
        assert await bus.read(5, "input", 10, 3) == [100, 101, 102]
        assert await bus.read(5, "coil", 0, 3) == [True, False, True]
        assert await bus.read(5, "discrete", 7, 1) == [True]
        s = bus.stats()[5]
        assert (s.requests, s.ok, s.timeouts) == (4, 4, 0)


async def test_meter_values_decode() -> None:
    meter = EnergyMeterSim(1, "sdm120", luminaires=12, rated_power=50.0, dimming=0.5)
    async with rtu(meter) as (_, bus):
        words = await bus.read(1, "input", 0x000C, 2)
        assert decode(words, "float32") == pytest.approx(300.0)
        volts = decode(await bus.read(1, "input", 0x0000, 2), "float32")
        assert 227 < volts < 233
        hz = decode(await bus.read(1, "input", 0x0046, 2), "float32")
        assert 49.9 < hz < 50.1


async def test_several_units_share_one_line() -> None:
    a, b = UnitSim(1, holding={0: 11}), UnitSim(2, holding={0: 22})
    async with rtu(a, b) as (line, bus):
        assert await bus.read(1, "holding", 0, 1) == [11]
        assert await bus.read(2, "holding", 0, 1) == [22]
        assert (a.requests, b.requests) == (1, 1)
        assert line.bad_frames == 0


async def test_timeout_on_a_silent_unit() -> None:
    u = UnitSim(3, holding=regs(2), silent=True)
    async with rtu(u, timeout=0.05) as (_, bus):
        t0 = time.monotonic()
        with pytest.raises(Timeout, match="no reply from unit 3 within 0.05 s") as info:
            await bus.read(3, "holding", 0, 2)
        assert info.value.unit == 3 and info.value.address == 0
        assert time.monotonic() - t0 < 0.5
        s = bus.stats()[3]
        assert (s.requests, s.timeouts, s.ok, s.retries) == (1, 1, 0, 0)


async def test_retries_are_counted() -> None:
    u = UnitSim(3, holding=regs(2), silent=True)
    async with rtu(u, timeout=0.05, retries=2) as (_, bus):
        with pytest.raises(Timeout):
            await bus.read(3, "holding", 0, 2)
        s = bus.stats()[3]
        assert (s.requests, s.timeouts, s.retries) == (3, 3, 2)
        assert u.requests == 3  # the slave saw every attempt


async def test_bad_crc_is_reported_as_such() -> None:
    u = UnitSim(4, holding=regs(2), corrupt_crc=True)
    async with rtu(u) as (_, bus):
        with pytest.raises(CrcError, match="unit 4 failed its CRC check"):
            await bus.read(4, "holding", 0, 2)
        u.corrupt_crc = False
        assert await bus.read(4, "holding", 0, 2) == [100, 101]
        s = bus.stats()[4]
        assert (s.crc_errors, s.timeouts, s.ok) == (1, 0, 1)


async def test_garbage_is_reported_as_garbled() -> None:
    u = UnitSim(4, holding=regs(2), garbage=True)
    async with rtu(u) as (_, bus):
        with pytest.raises(GarbledReply, match="10 bytes but no valid reply from unit 4: 00 ff 55"):
            await bus.read(4, "holding", 0, 2)
        s = bus.stats()[4]
        assert (s.garbled, s.crc_errors, s.timeouts) == (1, 0, 0)


async def test_a_retry_recovers_from_a_transient_fault() -> None:
    u = UnitSim(4, holding=regs(2), corrupt_crc=True)
    async with rtu(u, retries=1) as (_, bus):
        task = asyncio.create_task(bus.read(4, "holding", 0, 2))
        await wait_until(lambda: u.requests >= 1)
        u.corrupt_crc = False  # the retry gets a clean reply
        assert await task == [100, 101]
        s = bus.stats()[4]
        assert (s.requests, s.crc_errors, s.retries, s.ok) == (2, 1, 1, 1)


async def test_slow_answers() -> None:
    u = UnitSim(6, holding=regs(1), delay=0.04)
    async with rtu(u, timeout=0.15) as (_, bus):
        t0 = time.monotonic()
        assert await bus.read(6, "holding", 0, 1) == [100]
        assert time.monotonic() - t0 >= 0.04
        u.delay = 0.3  # slower than the timeout
        with pytest.raises(Timeout):
            await bus.read(6, "holding", 0, 1)
        # the late reply arrives before the next request, which pymodbus discards: not taken
        u.delay = 0.0
        u.holding[0] = 555
        await asyncio.sleep(0.2)
        assert await bus.read(6, "holding", 0, 1) == [555]


@pytest.mark.parametrize(
    ("code", "meaning"),
    [
        (0x01, "illegal function"),
        (0x02, "illegal data address"),
        (0x03, "illegal data value"),
        (0x04, "server device failure"),
        (0x05, "acknowledge"),
        (0x06, "server device busy"),
        (0x0A, "gateway path unavailable"),
        (0x0B, "gateway target device failed to respond"),
    ],
)
async def test_exception_codes(code: int, meaning: str) -> None:
    u = UnitSim(7, holding=regs(2), exception_code=code)
    async with rtu(u, retries=2) as (_, bus):
        with pytest.raises(ExceptionReply) as info:
            await bus.read(7, "holding", 0, 2)
        assert info.value.code == code and info.value.meaning == meaning
        assert f"exception {code:02X} ({meaning})" in str(info.value)
        s = bus.stats()[7]
        assert (s.exceptions, s.retries, s.requests) == (1, 0, 1)  # never retried


async def test_missing_register_is_exception_02() -> None:
    async with rtu(UnitSim(7, holding=regs(2))) as (_, bus):
        with pytest.raises(ExceptionReply) as info:
            await bus.read(7, "holding", 1, 2)  # 2 does not exist
        assert info.value.code == 2


async def test_short_reply_is_a_bad_reply() -> None:
    u = UnitSim(8, holding=regs(3), short_reply=True)
    async with rtu(u) as (_, bus):
        with pytest.raises(BadReply, match="asked 3 registers, got 2"):
            await bus.read(8, "holding", 0, 3)
        assert bus.stats()[8].bad_replies == 1


async def test_unplugged_device_then_plugged_back() -> None:
    u = UnitSim(9, holding=regs(1))
    async with rtu(u, timeout=0.05) as (_, bus):
        assert await bus.read(9, "holding", 0, 1) == [100]
        u.silent = True
        for _ in range(3):
            with pytest.raises(Timeout):
                await bus.read(9, "holding", 0, 1)
        u.silent = False
        assert await bus.read(9, "holding", 0, 1) == [100]
        s = bus.stats()[9]
        assert (s.ok, s.timeouts) == (2, 3)


async def test_missing_serial_port_is_disconnected() -> None:
    bus = ModbusBus.serial("/dev/does-not-exist-modbus", timeout=0.05)
    with pytest.raises(Disconnected, match="cannot open /dev/does-not-exist-modbus"):
        await bus.read(1, "holding", 0, 1)
    assert bus.stats()[1].disconnected == 1


async def test_requests_are_serialised() -> None:
    """Concurrent callers never put two requests on the line at once."""
    units = [UnitSim(i, holding=regs(2)) for i in (1, 2, 3)]
    async with rtu(*units) as (line, bus):
        results = await asyncio.gather(*(bus.read(u.unit, "holding", 0, 2) for u in units * 4))
        assert results == [[100, 101]] * 12
        assert line.bad_frames == 0  # a collision would have garbled a request
        assert sum(s.ok for s in bus.stats().values()) == 12


async def test_read_argument_errors() -> None:
    bus = ModbusBus.serial("/dev/null", timeout=0.05)
    for args in [
        (0, "holding", 0, 1),
        (248, "holding", 0, 1),
        (1, "holding", 0, 126),
        (1, "holding", 65535, 2),
    ]:
        with pytest.raises(ValueError):
            await bus.read(*args)
    with pytest.raises(ValueError, match="unknown function"):
        await bus.read(1, "register", 0, 1)


# ---------------------------------------------------------------------------------- TCP


async def test_tcp_reads_and_faults() -> None:
    meter = EnergyMeterSim(1, "sdm630", luminaires=30, rated_power=60.0)
    dead = UnitSim(2, holding=regs(1), silent=True)
    odd = UnitSim(3, holding=regs(1), exception_code=2)
    async with TcpServer([meter, dead, odd]) as server:
        async with ModbusBus.tcp("127.0.0.1", server.port, timeout=0.05, retries=0) as bus:
            assert decode(await bus.read(1, "input", 0x0034, 2), "float32") == pytest.approx(1800.0)
            for _ in range(6):  # more than pymodbus' own give-up-and-close count
                with pytest.raises(Timeout):
                    await bus.read(2, "holding", 0, 1)
            with pytest.raises(ExceptionReply):
                await bus.read(3, "holding", 0, 1)
            # the connection survived the dead unit
            assert decode(await bus.read(1, "input", 0x0034, 2), "float32") == pytest.approx(1800.0)
            dead.silent, dead.garbage = False, True
            with pytest.raises(GarbledReply, match="no valid reply from unit 2: 00 ff 55 aa"):
                await bus.read(2, "holding", 0, 1)
            dead.garbage = False
            assert await bus.read(2, "holding", 0, 1) == [100]  # the stream resynchronised
            s = bus.stats()[2]
            assert (s.timeouts, s.garbled, s.ok) == (6, 1, 1)


async def test_tcp_gateway_reports_missing_units() -> None:
    async with TcpServer([UnitSim(1, holding=regs(1))], gateway=True) as server:
        async with ModbusBus.tcp("127.0.0.1", server.port, timeout=0.1) as bus:
            with pytest.raises(ExceptionReply) as info:
                await bus.read(9, "holding", 0, 1)
            assert info.value.code == 0x0B


async def test_tcp_server_gone_then_back() -> None:
    server = TcpServer([UnitSim(1, holding=regs(1))])
    await server.start()
    port = server.port
    async with ModbusBus.tcp("127.0.0.1", port, timeout=0.1) as bus:
        assert await bus.read(1, "holding", 0, 1) == [100]
        await server.stop()
        await asyncio.sleep(0.05)
        with pytest.raises(Disconnected):
            await bus.read(1, "holding", 0, 1)
        with pytest.raises(Disconnected, match=f"cannot open 127.0.0.1:{port}"):
            await bus.read(1, "holding", 0, 1)
        server2 = TcpServer([UnitSim(1, holding={0: 42})], port=port)
        await server2.start()
        try:
            assert await bus.read(1, "holding", 0, 1) == [42]  # reconnects by itself
        finally:
            await server2.stop()
        assert bus.stats()[1].disconnected == 2


# ------------------------------------------------------------------------------ the source


class Sink:
    def __init__(self) -> None:
        self.batches: list[tuple[list[Record], Priority]] = []

    async def __call__(self, records: Sequence[Record], priority: Priority) -> None:
        self.batches.append((list(records), priority))

    def records(self, device: str | None = None, name: str | None = None) -> list[Record]:
        return [
            r
            for batch, _ in self.batches
            for r in batch
            if (device is None or r.device == device) and (name is None or r.name == name)
        ]


async def run_for(source: ModbusSource, sink: Sink, seconds: float) -> None:
    task = asyncio.create_task(source.run(sink))
    await asyncio.sleep(seconds)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_source_emits_meter_readings_with_priorities() -> None:
    meter = EnergyMeterSim(1, "sdm630", luminaires=20, rated_power=50.0, dimming=0.8)
    # 38400 baud: an 80-register reply takes 190 ms on the wire at 9600, more than the interval
    async with RtuLine([meter], baud=38400) as line:
        bus = ModbusBus.serial(line.path, timeout=T, retries=0)
        src = ModbusSource("cabinet", bus, [DeviceSpec("meter", 1, SDM630.entries)], interval=0.1)
        sink = Sink()
        await run_for(src, sink, 0.35)
    power = sink.records("meter", "power")
    assert power and power[0].value == pytest.approx(800.0) and power[0].unit == "W"
    names = {r.name for r in sink.records("meter")}
    assert names == {e.name for e in SDM630.entries}
    energy_batches = [
        p for batch, p in sink.batches if any(r.name == "energy-import" for r in batch)
    ]
    assert energy_batches and set(energy_batches) == {Priority.ENERGY}
    assert all(r.unit == "kWh" for r in sink.records("meter", "energy-import"))
    stats = src.stats()["devices"]["meter"]
    assert stats["online"] and stats["counters"]["ok"] >= 3 * 3  # three reads per poll


async def test_source_skips_nan_and_counts_it() -> None:
    u = UnitSim(2)
    u.set_value("input", 0, math.nan, "float32")
    u.set_value("input", 2, 12.5, "float32")
    entries = (MapEntry("a", 0, unit="V"), MapEntry("b", 2, unit="V"))
    async with RtuLine([u]) as line:
        src = ModbusSource(
            "s", ModbusBus.serial(line.path, timeout=T), [DeviceSpec("d", 2, entries)], interval=0.1
        )
        sink = Sink()
        await run_for(src, sink, 0.15)
    assert {r.name for r in sink.records()} == {"b"}
    assert src.health["d"].invalid_values >= 1


async def test_source_splits_a_block_the_device_refuses() -> None:
    u = UnitSim(2)  # registers 0..1 and 4..5 exist, 2..3 do not: a merged read gets exception 02
    u.set_value("input", 0, 1.0, "float32")
    u.set_value("input", 4, 2.0, "float32")
    entries = (MapEntry("a", 0), MapEntry("b", 4))
    async with RtuLine([u]) as line:
        src = ModbusSource(
            "s", ModbusBus.serial(line.path, timeout=T), [DeviceSpec("d", 2, entries)], interval=0.1
        )
        sink = Sink()
        await run_for(src, sink, 0.25)
    assert {r.name: r.value for r in sink.records()} == {"a": 1.0, "b": 2.0}
    assert src.health["d"].split_blocks == ["input 0x0000+6"]  # split at its gap
    assert src.health["d"].online


async def test_bad_replies_never_stop_the_loop() -> None:
    u = UnitSim(2, input=regs(2), short_reply=True)
    async with RtuLine([u]) as line:
        src = ModbusSource(
            "s",
            ModbusBus.serial(line.path, timeout=T),
            [DeviceSpec("d", 2, (MapEntry("a", 0),))],
            interval=0.05,
        )
        sink = Sink()
        task = asyncio.create_task(src.run(sink))
        await asyncio.sleep(0.2)
        assert not task.done()
        u.short_reply = False
        await asyncio.sleep(0.15)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert src.stats()["devices"]["d"]["counters"]["bad_replies"] >= 2
    assert sink.records("d", "a")  # readings resumed
    assert src.health["d"].online  # a device that answers, even badly, is not offline


async def test_dead_unit_goes_offline_backs_off_comes_back_and_never_stalls_the_healthy_one() -> (
    None
):
    meter = EnergyMeterSim(1, "sdm120", luminaires=4)
    dead = UnitSim(2, input=regs(2), silent=True)
    interval, timeout = 0.1, 0.05
    async with RtuLine([meter, dead]) as line:
        bus = ModbusBus.serial(line.path, timeout=timeout, retries=0)
        src = ModbusSource(
            "cabinet",
            bus,
            [
                DeviceSpec("meter", 1, (SDM120.entry("power"),)),
                DeviceSpec("aux", 2, (MapEntry("x", 0, type="uint32"),)),
            ],
            interval=interval,
            offline_after=2,
            backoff_max=0.4,
        )
        sink = Sink()
        task = asyncio.create_task(src.run(sink))
        t0 = time.monotonic()
        await asyncio.sleep(1.5)
        # The healthy meter kept its rate: about 1.5 / 0.1 = 15 polls.
        polls = len(sink.records("meter", "power"))
        assert polls >= 12, polls
        # The dead unit: offline once, then retried with backoff (0.2, 0.4, 0.4 ...), not every 0.1 s.
        h = src.health["aux"]
        assert not h.online
        assert [r.value for r in sink.records("aux", "online")] == [False]
        assert 3 <= dead.requests <= 7, dead.requests
        offline_batches = [p for batch, p in sink.batches if any(r.name == "online" for r in batch)]
        assert offline_batches == [Priority.DIAGNOSTIC]
        assert "no reply from unit 2" in (h.last_error or "")
        # It answers again: back online within one backoff period.
        dead.silent = False
        await wait_until(lambda: src.health["aux"].online, within=1.0)
        assert [r.value for r in sink.records("aux", "online")] == [False, True]
        await asyncio.sleep(0.25)
        assert len(sink.records("aux", "x")) >= 2  # and polled at its normal rate again
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elapsed = time.monotonic() - t0
    assert elapsed < 4
    stats = src.stats()
    assert stats["devices"]["aux"]["counters"]["timeouts"] == dead.requests - len(
        sink.records("aux", "x")
    )


async def test_interval_at_drives_the_rate() -> None:
    meter = EnergyMeterSim(1, "sdm120", luminaires=1)
    seen: list[float] = []

    def schedule(now: float) -> float:
        seen.append(now)
        return 0.05 if len(seen) < 4 else 10.0  # "night": a slow rate after three polls

    async with RtuLine([meter]) as line:
        src = ModbusSource(
            "s",
            ModbusBus.serial(line.path, timeout=T),
            [DeviceSpec("meter", 1, (SDM120.entry("power"),))],
            interval=1.0,
            interval_at=schedule,
        )
        sink = Sink()
        await run_for(src, sink, 0.4)
    assert len(sink.records()) == 4
    assert all(abs(t - time.time()) < 5 for t in seen)  # it is given wall time


async def test_from_config() -> None:
    import msgspec

    from passerelle.modbus.config import ModbusRtuSourceConfig, ModbusTcpSourceConfig

    meter = EnergyMeterSim(1, "sdm120", luminaires=2, rated_power=100.0)
    io = UnitSim(5, holding={10: 0xFFEC}, coils={0: True})
    async with RtuLine([meter, io]) as line:
        cfg = msgspec.convert(
            {
                "type": "modbus-rtu",
                "name": "cab",
                "port": line.path,
                "interval": 0.1,
                "timeout": 0.1,
                "priority": "alarm",
                "devices": [
                    {
                        "name": "meter",
                        "unit": 1,
                        "map": "sdm120",
                        "only": ["power", "energy-total"],
                    },
                    {
                        "name": "io",
                        "unit": 5,
                        "registers": [
                            {
                                "name": "temperature",
                                "address": 10,
                                "type": "int16",
                                "scale": 0.5,
                                "unit": "Cel",
                            },
                            {
                                "name": "door",
                                "address": 0,
                                "function": "coil",
                                "priority": "telemetry",
                            },
                        ],
                    },
                ],
            },
            ModbusRtuSourceConfig,
        )
        src = ModbusSource.from_config(cfg)
        sink = Sink()
        await run_for(src, sink, 0.15)
    got = {(r.device, r.name): (r.value, r.unit) for r in sink.records()}
    assert got[("meter", "power")] == (pytest.approx(200.0), "W")
    assert ("meter", "energy-total") in got and ("meter", "voltage") not in got
    assert got[("io", "temperature")] == (-10.0, "Cel")
    assert got[("io", "door")] == (True, None)
    prio = {r.name: p for batch, p in sink.batches for r in batch}
    assert prio["temperature"] is Priority.ALARM and prio["door"] is Priority.TELEMETRY
    assert prio["energy-total"] is Priority.ENERGY
    tcp = msgspec.convert(
        {
            "type": "modbus-tcp",
            "name": "gw",
            "host": "127.0.0.1",
            "port": 1502,
            "interval": 1,
            "devices": [],
        },
        ModbusTcpSourceConfig,
    )
    assert ModbusSource.from_config(tcp).bus.description == "127.0.0.1:1502"


def test_source_rejects_shared_unit_ids() -> None:
    bus = ModbusBus.serial("/dev/null")
    with pytest.raises(ValueError, match="share a unit id"):
        ModbusSource("s", bus, [DeviceSpec("a", 1, ()), DeviceSpec("b", 1, ())], interval=1)


def test_energy_meter_sim_integrates_power() -> None:
    now = [0.0]
    meter = EnergyMeterSim(1, "sdm630", luminaires=10, rated_power=100.0, clock=lambda: now[0])
    now[0] = 3600.0  # one hour at 1 kW
    meter.set_load(5)  # the hour is integrated at the old load first
    now[0] = 7200.0  # one hour at 0.5 kW
    meter.refresh()
    words = [meter.input[0x0048], meter.input[0x0049]]
    assert decode(words, "float32") == pytest.approx(1.5, rel=1e-6)
    p = struct.unpack(">f", struct.pack(">HH", meter.input[0x34], meter.input[0x35]))[0]
    assert p == pytest.approx(500.0)
    with pytest.raises(ValueError):
        meter.set_load(3, dimming=1.5)
