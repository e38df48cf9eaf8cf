"""Simulated luminaire controllers driven by the real network server over the radio medium.

Real time (AsyncioClock): the server sends class C downlinks through a SimGateway, the
controllers hear them on the medium, answer with STATUS uplinks that the gateway hears
(or loses to a collision), and the server decodes them with the "luminaire" codec into
records handed to its emit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from hil.luminaire_sim import FACTORY_LEVEL, LuminaireSim, MulticastSession, program_level
from hil.radio_medium import AsyncioClock, Medium, SimGateway, Transmission, VirtualClock
from passerelle.lighting.protocol import (
    FOLLOW_PROGRAM,
    SetLevel,
    SetProgram,
    StatusRequest,
    SwitchPoint,
    encode_set_level,
    encode_set_program,
    encode_status_request,
)
from passerelle.lorawan.airtime import airtime_of
from passerelle.lorawan.codecs import get_codec
from passerelle.lorawan.config import DeviceConfig, LorawanConfig, MulticastConfig
from passerelle.lorawan.server import NetworkServer
from passerelle.lorawan.sessions import SessionStore
from passerelle.model import Priority, Record
from passerelle.policy.dutycycle import DutyCycleGate

PARIS = ZoneInfo("Europe/Paris")
RX2 = "SF9BW125"
GROUP_KEYS = (bytes([9] * 16), bytes([109] * 16))


def keys(i: int) -> tuple[bytes, bytes]:
    return bytes([i] * 16), bytes([i + 100] * 16)


@dataclass
class Street:
    medium: Medium
    gateway: SimGateway
    server: NetworkServer
    lamps: list[LuminaireSim]
    records: list[Record] = field(default_factory=list)

    def by_device(self) -> dict[str, dict[str, object]]:
        out: dict[str, dict[str, object]] = {}
        for r in self.records:
            out.setdefault(r.device, {})[r.name] = r.value
        return out

    def status_uplinks(self) -> list[Transmission]:
        """STATUS uplinks on the air (every luminaire transmission is one)."""
        names = {lamp.name for lamp in self.lamps}
        return [t for t in self.medium.transmissions if t.source in names]


async def until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def street(
    tmp_path: Path, count: int, *, reply_window: float = 1.5, seed: int = 3
) -> AsyncIterator[Street]:
    """``count`` luminaires 30 m apart along a street, one gateway, one multicast group."""
    medium = Medium(AsyncioClock(), seed=seed)
    gateway = medium.add_gateway("gw", (0, 0))
    g_nwk, g_app = GROUP_KEYS
    group = MulticastSession(0x2601FFFF, g_nwk, g_app, datarate=RX2)
    devices, lamps = [], []
    for i in range(1, count + 1):
        nwk, app = keys(i)
        eui = f"70b3d57ed00000{i:02x}"
        devices.append(
            DeviceConfig(
                name=f"lum-{i}",
                dev_eui=eui,
                class_="C",
                codec="luminaire",
                priority="alarm",
                dev_addr=f"260100{i:02x}",
                nwk_s_key=nwk.hex(),
                app_s_key=app.hex(),
            )
        )
        lamps.append(
            LuminaireSim(
                medium,
                f"lum-{i}",
                (30 * i, 10),
                dev_eui=bytes.fromhex(eui),
                dev_addr=0x26010000 + i,
                nwk_s_key=nwk,
                app_s_key=app,
                multicast=group,
                rated_power_w=60.0,
                reply_window=reply_window,
                rx2_datarate=RX2,
            )
        )
    cfg = LorawanConfig(
        devices=devices,
        multicast=[
            MulticastConfig(
                name="street",
                dev_addr="2601ffff",
                nwk_s_key=g_nwk.hex(),
                app_s_key=g_app.hex(),
                datarate=RX2,
                devices=[d.name for d in devices],
            )
        ],
        rx2_datarate=RX2,
    )
    sessions = SessionStore(tmp_path / "lorawan.db")
    sessions.open()
    records: list[Record] = []

    async def emit(batch: Sequence[Record], priority: Priority) -> None:
        assert priority is Priority.ALARM
        records.extend(batch)

    server = NetworkServer(
        cfg,
        gateway,
        sessions,
        emit,
        DutyCycleGate(),
        codec_for=lambda name: get_codec(name, {}),
        airtime=lambda dr, n: airtime_of(dr, n, uplink=False),
    )
    server.provision()
    await gateway.start()
    task = asyncio.create_task(server.run())
    try:
        yield Street(medium, gateway, server, lamps, records)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await gateway.stop()
        sessions.close()


async def test_unicast_set_level_is_applied_and_answered(tmp_path: Path) -> None:
    async with street(tmp_path, 2) as s:
        result = await s.server.send("lum-2", 20, encode_set_level(17, 40, 5))
        assert result.ok, result
        await until(lambda: len(s.records) == 6, 2.0, "lum-2's STATUS records")
        lum1, lum2 = s.lamps
        assert lum2.commands == [SetLevel(17, 40, 5)]
        assert (lum2.level, lum2.ramp_s, lum2.answers) == (40, 5, 1)
        assert lum1.commands == [] and lum1.level == FACTORY_LEVEL  # not for it
        assert s.by_device() == {
            "lum-2": {
                "ack_seq": 17,
                "level": 40,
                "lamp_failure": False,
                "driver_failure": False,
                "local_program": False,
                "energy": 0,
            }
        }
        assert {r.unit for r in s.records if r.name in ("level", "energy")} == {"%", "Wh"}
        counts = s.server.stats.counts
        assert counts["uplinks"] == 1 and counts["codec_error"] == 0


async def test_multicast_set_level_reaches_ten_and_answers_spread(tmp_path: Path) -> None:
    window = 1.5
    async with street(tmp_path, 10, reply_window=window) as s:
        sent_at = s.medium.clock.now()
        result = await s.server.send_multicast("street", 20, encode_set_level(5, 70, 0))
        assert result.ok, result
        await until(
            lambda: all(lamp.answers == 1 for lamp in s.lamps),
            window + 1.0,
            "every luminaire to answer",
        )
        assert all(lamp.commands == [SetLevel(5, 70, 0)] for lamp in s.lamps)
        assert all(lamp.level == 70 for lamp in s.lamps)
        delays = [lamp.reply_delays[0] for lamp in s.lamps]
        assert all(0 <= d < window for d in delays)
        assert max(delays) - min(delays) > window / 2, f"answers not spread: {delays}"

        uplinks = s.status_uplinks()
        assert len(uplinks) == 10
        last_end = max(t.end for t in uplinks)
        await until(lambda: s.medium.clock.now() > last_end + 0.05, 1.0, "uplinks to end")
        heard = [r for r in s.medium.receptions if r.receiver == "gw" and r.transmission in uplinks]
        lost = [r for r in heard if not r.ok]
        got = len(heard) - len(lost)
        await until(lambda: len(s.by_device()) == got, 1.0, "the server to store what it heard")
        # Honest accounting: what the medium delivered is what the server stored; every
        # loss is a collision (the street is short: nothing is below the noise floor).
        assert {r.outcome for r in lost} <= {"collision"}, lost
        assert len(s.by_device()) + len(lost) == 10, (
            f"{len(lost)} of 10 answers collided (window {window} s, SF7BW125, "
            f"3 channels); {got} stored"
        )
        assert got >= 8, f"{len(lost)} of 10 answers collided in a {window} s window"
        assert all(v["ack_seq"] == 5 and v["level"] == 70 for v in s.by_device().values())
        spread = max(t.start for t in uplinks) - sent_at
        assert spread < window + 0.5, spread


async def test_muted_and_deaf_luminaires_do_not_answer(tmp_path: Path) -> None:
    async with street(tmp_path, 3) as s:
        mute, deaf, ok = s.lamps
        mute.mute, deaf.deaf = True, True
        for name in ("lum-1", "lum-2", "lum-3"):
            assert (await s.server.send(name, 20, encode_set_level(9, 20, 0))).ok
        await until(lambda: len(s.records) == 6, 2.0, "lum-3's answer")
        await asyncio.sleep(0.3)  # more than a unicast answer takes: none comes
        assert mute.commands == [SetLevel(9, 20, 0)] and mute.level == 20  # heard, applied
        assert mute.answers == 0
        assert deaf.commands == [] and deaf.dropped == 1 and deaf.level == FACTORY_LEVEL
        assert ok.answers == 1
        assert set(s.by_device()) == {"lum-3"}
        assert [t.source for t in s.status_uplinks()] == ["lum-3"]


async def test_lamp_failure_is_reported(tmp_path: Path) -> None:
    async with street(tmp_path, 1) as s:
        lamp = s.lamps[0]
        lamp.level = 100
        lamp.advance_energy(3600 * 2.5)  # 60 W for 2.5 h
        lamp.lamp_failure = True
        assert lamp.advance_energy(3600) == 150  # a failed lamp draws nothing
        assert (await s.server.send("lum-1", 20, encode_status_request(33))).ok
        await until(lambda: len(s.records) == 6, 2.0, "the STATUS")
        assert lamp.commands == [StatusRequest(33)]
        assert s.by_device()["lum-1"] == {
            "ack_seq": 33,
            "level": 100,
            "lamp_failure": True,
            "driver_failure": False,
            "local_program": False,
            "energy": 150,
        }


async def test_bad_command_is_refused_and_not_answered(tmp_path: Path) -> None:
    async with street(tmp_path, 1) as s:
        lamp = s.lamps[0]
        assert (await s.server.send("lum-1", 20, bytes.fromhex("01 07 65 00 00"))).ok
        assert (await s.server.send("lum-1", 20, encode_status_request(1))).ok
        await until(lambda: len(s.records) == 6, 2.0, "the answer to the good command")
        assert lamp.bad_commands == [
            "SET_LEVEL level 101 at byte offset 2 out of range 0..100 or 255"
        ]
        assert lamp.commands == [StatusRequest(1)] and lamp.answers == 1


# -- the stored program -----------------------------------------------------------------------

# A night in Paris in January (UTC+1): sunset 17:20, sunrise 08:30 next morning.
NIGHT_SUN = {
    "sunset": datetime(2025, 1, 15, 17, 20, tzinfo=PARIS),
    "sunrise": datetime(2025, 1, 16, 8, 30, tzinfo=PARIS),
    "civil_dusk": datetime(2025, 1, 15, 17, 55, tzinfo=PARIS),
    "civil_dawn": datetime(2025, 1, 16, 7, 55, tzinfo=PARIS),
}
PROGRAM = SetProgram(
    seq=12,
    default=80,
    utc_offset_q=4,  # UTC+1, Paris in winter
    points=(
        SwitchPoint("sunrise", 0, 0),  # listed out of order: the controller sorts them
        SwitchPoint("sunset", -10, 100),
        SwitchPoint("time", 23 * 60, 50),
        SwitchPoint("time", 5 * 60 + 30, 100),
    ),
)


def at(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2025, 1, day, hour, minute, tzinfo=PARIS)


async def test_set_program_is_stored_and_followed(tmp_path: Path) -> None:
    async with street(tmp_path, 1) as s:
        lamp = s.lamps[0]
        frame = encode_set_program(
            PROGRAM.seq, PROGRAM.default, PROGRAM.utc_offset_q, PROGRAM.points
        )
        assert (await s.server.send("lum-1", 20, frame)).ok
        await until(lambda: len(s.records) == 6, 2.0, "the STATUS")
        assert lamp.program == PROGRAM
        assert s.by_device()["lum-1"]["ack_seq"] == 12
        assert not lamp.local  # a program alone does not take over from the gateway

        assert (await s.server.send("lum-1", 20, encode_set_level(13, FOLLOW_PROGRAM, 0))).ok
        # The first answer's RX1/RX2 windows (about 2 s) pass before the next uplink.
        await until(lambda: len(s.records) == 12, 3.5, "the second STATUS")
        assert lamp.local and s.records[-2] == Record(
            "lum-1", "local_program", True, s.records[-2].time
        )
        assert lamp.tick(at(15, 21), NIGHT_SUN) == 100
        assert lamp.tick(at(16, 2), NIGHT_SUN) == 50
        lamp.advance_energy(1800)  # 30 min at 50 % of 60 W
        assert lamp.energy_wh == 15


@pytest.mark.parametrize(
    ("when", "level"),
    [
        (at(15, 14), 0),  # afternoon: still off since this morning's sunrise
        (at(15, 17, 9), 0),
        (at(15, 17, 10), 100),  # sunset - 10 min
        (at(15, 22, 59), 100),
        (at(15, 23), 50),  # fixed 23:00
        (at(16, 3), 50),
        (at(16, 5, 30), 100),  # fixed 05:30, the morning after
        (at(16, 8, 29), 100),
        (at(16, 8, 30), 0),  # sunrise
        (at(16, 11, 59), 0),
    ],
)
def test_local_level_follows_sunset_and_fixed_times(when: datetime, level: int) -> None:
    assert program_level(PROGRAM, when, NIGHT_SUN) == level


def test_local_level_special_cases() -> None:
    # No valid time: the program's default.
    assert program_level(PROGRAM, None, NIGHT_SUN) == 80
    # The sun never sets (polar day): only the fixed points remain.
    no_sun = dict.fromkeys(NIGHT_SUN)
    assert program_level(PROGRAM, at(15, 23, 30), no_sun) == 50
    assert program_level(PROGRAM, at(16, 6), no_sun) == 100
    assert program_level(PROGRAM, at(15, 14), no_sun) == 100  # carried over from 05:30
    only_sun = SetProgram(1, 30, 4, (SwitchPoint("sunset", 0, 100),))
    assert program_level(only_sun, at(15, 23), no_sun) == 30
    # The controller keeps the offset it was sent: in summer (UTC+2) a winter program's
    # 23:00 falls at 00:00 on the wall clock, until the gateway re-sends the program.
    summer_sun = {
        "sunset": datetime(2025, 7, 1, 21, 55, tzinfo=PARIS),
        "sunrise": datetime(2025, 7, 2, 5, 50, tzinfo=PARIS),
    }
    assert program_level(PROGRAM, datetime(2025, 7, 1, 23, 30, tzinfo=PARIS), summer_sun) == 100
    assert program_level(PROGRAM, datetime(2025, 7, 2, 0, 0, tzinfo=PARIS), summer_sun) == 50
    with pytest.raises(ValueError, match="aware"):
        program_level(PROGRAM, datetime(2025, 1, 15, 22), NIGHT_SUN)
    clock = VirtualClock()
    fresh = LuminaireSim(
        Medium(clock),
        "lum-x",
        (0, 0),
        dev_eui=bytes(8),
        dev_addr=1,
        nwk_s_key=bytes(16),
        app_s_key=bytes(16),
        hold_time=600,
    )
    assert fresh.local_level(at(15, 14), NIGHT_SUN) == FACTORY_LEVEL  # no program yet
    assert not fresh.local
    clock.advance(600)
    assert fresh.local  # heard nothing for its hold time: on its own
