"""AT-command LoRa modem backend (RAK3172 RUI3 P2P, RN2483) against simulated modems on
real pseudo-terminals, opened with pyserial like a USB serial device."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import serial
from hypothesis import given
from hypothesis import strategies as st

from hil.at_modem_sim import AtModemSim
from passerelle.radio.at_modem import (
    AtModemRadio,
    NoReply,
    RxError,
    RxEvent,
    TxDone,
    local_tmst,
    parse_rn2483_line,
    parse_rui3_line,
    rui3_sync_word,
    time_on_air,
    tmst_delay_us,
)
from passerelle.radio.base import TMST_MODULO, RadioError, RxFrame, TxRequest

DIALECTS = ["rak3172", "rn2483"]

# A LoRaWAN 1.0 JoinRequest PHYPayload (MHDR 0x00, AppEUI, DevEUI, DevNonce, MIC): 23 bytes.
JOIN_REQUEST = bytes.fromhex("00080706050403020170B3D57ED00000012A1FA1B2C3D4")
# A downlink-shaped frame (MHDR 0x60, unconfirmed data down).
DOWNLINK = bytes.fromhex("600403020120010001DEADBEEF")


async def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def sim(dialect: str, tmp_path: Path) -> Iterator[AtModemSim]:
    modem = AtModemSim(
        dialect,  # type: ignore[arg-type]
        link=tmp_path / "ttyLORA",
        boot_s=0.02,
        airtime_scale=0.2,  # shorter transmissions keep the file fast
    )
    modem.start()
    try:
        yield modem
    finally:
        modem.stop()


def make_radio(sim: AtModemSim, **overrides: object) -> AtModemRadio:
    options: dict[str, object] = {
        "command_timeout": 0.3,
        "reopen_interval": 0.05,
        "reopen_max_interval": 0.2,
        "mode_switch_s": 0.05,
        "tx_prepare_s": 0.05,
        "gateway": "cab-0042",
    }
    options.update(overrides)
    return AtModemRadio(sim.path, sim.dialect, **options)  # type: ignore[arg-type]


@pytest.fixture
async def radio(sim: AtModemSim) -> AsyncIterator[AtModemRadio]:
    modem = make_radio(sim)
    await modem.start()
    try:
        yield modem
    finally:
        await modem.stop()


async def receive(radio: AtModemRadio) -> RxFrame:
    return await asyncio.wait_for(radio.receive(), 2.0)


def commands_since(sim: AtModemSim, start: int) -> list[str]:
    return sim.commands[start:]


# -------------------------------------------------------------------- configuration


async def test_start_configures_the_uplink_channel(sim: AtModemSim, radio: AtModemRadio) -> None:
    s = sim.settings
    assert (s.frequency_hz, s.sf, s.bw_khz, s.coding_rate, s.invert_iq) == (
        868_100_000,
        7,
        125,
        "4/5",
        False,
    )
    assert sim.listening
    if sim.dialect == "rak3172":
        assert sim.work_mode == 0, "switched from LoRaWAN to LoRa P2P"
        assert s.sync_word == 0x3444  # LoRaWAN public sync word, SX126x form
        assert sim.commands[-1] == "AT+PRECV=65534"
    else:
        assert s.sync_word == 0x34
        assert "radio set wdt 0" in sim.commands, "else 'radio rx 0' ends after 15 s"
        assert sim.commands[-2:] == ["mac pause", "radio rx 0"]
    stats = radio.stats()
    assert stats["connected"] and stats["listening"]
    assert stats["garbage_lines"] == 0 and stats["command_errors"] == 0


def test_constructor_rejects_what_the_module_cannot_do(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dialect"):
        AtModemRadio(str(tmp_path / "x"), "sx1302")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="SF5"):
        AtModemRadio(str(tmp_path / "x"), "rn2483", datarate="SF5BW125")
    with pytest.raises(ValueError, match="frequency"):
        AtModemRadio(str(tmp_path / "x"), "rn2483", frequency=915.0)


async def test_start_on_missing_device_is_a_clear_radio_error(tmp_path: Path) -> None:
    modem = AtModemRadio(str(tmp_path / "nothing-here"), "rak3172")
    with pytest.raises(RadioError, match="cannot open"):
        await modem.start()


async def test_start_on_a_silent_modem_times_out(sim: AtModemSim) -> None:
    sim.silent = True
    modem = make_radio(sim, command_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(NoReply, match="no reply within 0.1 s"):
        await modem.start()
    assert time.monotonic() - started < 2.0
    assert modem.stats()["timeouts"] == 3  # the first command is retried: modems doze


# ------------------------------------------------------------------------ reception


async def test_receives_an_injected_frame_with_rssi_and_snr(
    sim: AtModemSim, radio: AtModemRadio
) -> None:
    before = local_tmst()
    assert sim.inject_frame(JOIN_REQUEST, rssi=-87, snr=-4)
    frame = await receive(radio)
    assert frame.payload == JOIN_REQUEST
    assert frame.frequency == pytest.approx(868.1)
    assert frame.datarate == "SF7BW125"
    assert frame.coding_rate == "4/5"
    assert (frame.rssi, frame.snr) == (-87.0, -4.0)
    assert frame.crc_ok and frame.gateway == "cab-0042"
    # tmst is on local_tmst()'s clock, a little before the line was complete
    assert -20_000 < tmst_delay_us(frame.tmst, before) < 200_000
    await eventually(lambda: sim.listening)
    if sim.dialect == "rn2483":  # one frame per "radio rx": quality asked, then re-armed
        await eventually(lambda: sim.commands[-1] == "radio rx 0")
        assert sim.commands[-4:] == [
            "radio get snr",
            "radio get pktrssi",
            "mac pause",
            "radio rx 0",
        ]
    assert sim.inject_frame(b"\x40" + bytes(range(12)), rssi=-30, snr=9)
    assert (await receive(radio)).rssi == -30.0
    assert radio.stats()["rx_frames"] == 2


async def test_rui3_command_echo_is_not_garbage(tmp_path: Path) -> None:
    with AtModemSim("rak3172", link=tmp_path / "tty", echo=True, boot_s=0.02) as sim:
        modem = make_radio(sim)
        await modem.start()
        try:
            assert (await modem.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0))).ok
            assert modem.stats()["garbage_lines"] == 0
        finally:
            await modem.stop()


async def test_rui3_p2p_settings_stay_out_of_flash_when_the_firmware_allows(
    tmp_path: Path,
) -> None:
    for runtime, expected_writes in ((True, 0), (False, 3)):
        link = tmp_path / f"tty{runtime}"
        with AtModemSim("rak3172", link=link, boot_s=0.02, runtime_p2p=runtime) as sim:
            modem = make_radio(sim)
            await modem.start()
            try:
                assert (await modem.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14))).ok
                p2p = [c for c in sim.commands if c.startswith("AT+P2P=")]
                assert sim.flash_writes == expected_writes, p2p
                if not runtime:  # asked once with the 7th field, then never again
                    assert [c.count(":") for c in p2p] == [6, 5, 5, 5]
                assert sim.settings.frequency_hz == 868_100_000 and sim.listening
            finally:
                await modem.stop()


async def test_rui3_two_line_receive_event(tmp_path: Path) -> None:
    # "+EVT:RXP2P, RSSI -54, SNR 12" then "+EVT:30313334": RAK docs' P2P receive example.
    with AtModemSim("rak3172", link=tmp_path / "tty", rx_format="split", boot_s=0.02) as sim:
        modem = make_radio(sim)
        await modem.start()
        try:
            assert sim.inject_frame(bytes.fromhex("30313334"), rssi=-54, snr=12)
            frame = await receive(modem)
            assert (frame.payload, frame.rssi, frame.snr) == (b"0134", -54.0, 12.0)
        finally:
            await modem.stop()


async def test_frames_on_other_settings_are_not_heard(sim: AtModemSim, radio: AtModemRadio) -> None:
    assert not sim.inject_frame(JOIN_REQUEST, frequency_hz=868_300_000)
    assert not sim.inject_frame(JOIN_REQUEST, invert_iq=True)  # a downlink: not for us
    assert not sim.inject_frame(JOIN_REQUEST, sync_word=0x12)  # a private network
    assert sim.missed == 3
    assert sim.inject_frame(JOIN_REQUEST)
    assert (await receive(radio)).payload == JOIN_REQUEST


async def test_reception_error_is_counted_and_reception_continues(
    sim: AtModemSim, radio: AtModemRadio
) -> None:
    sim.rx_error()
    await eventually(lambda: radio.stats()["rx_errors"] == 1)
    await eventually(lambda: sim.listening)  # RN2483: re-armed; RUI3: never stopped
    assert sim.inject_frame(JOIN_REQUEST)
    assert (await receive(radio)).payload == JOIN_REQUEST


async def test_full_receive_queue_drops_the_oldest_and_counts(sim: AtModemSim) -> None:
    modem = make_radio(sim, queue_size=2)
    await modem.start()
    try:
        for i in range(3):
            await eventually(lambda: sim.listening)
            assert sim.inject_frame(bytes([0x40, i]))
            await eventually(lambda n=i: modem.stats()["rx_frames"] == n + 1)
        assert modem.stats()["rx_dropped"] == 1
        assert [(await receive(modem)).payload[1] for _ in range(2)] == [1, 2]
    finally:
        await modem.stop()


# --------------------------------------------------------------------- transmission


async def test_transmit_reconfigures_then_returns_to_receive(
    sim: AtModemSim, radio: AtModemRadio
) -> None:
    request = TxRequest(DOWNLINK, frequency=869.525, datarate="SF9BW125", power=14.0)
    result = await radio.transmit(request)
    assert result.ok and result.error is None
    sent = sim.transmitted[-1]
    assert sent.payload == DOWNLINK
    s = sent.settings
    assert (s.frequency_hz, s.sf, s.bw_khz, s.power_dbm, s.invert_iq) == (
        869_525_000,
        9,
        125,
        14,
        True,
    )
    if sim.dialect == "rn2483":
        assert not s.crc, "LoRaWAN downlinks carry no payload CRC"
    # back on the uplink channel, listening
    assert sim.listening
    back = sim.settings
    assert (back.frequency_hz, back.sf, back.invert_iq) == (868_100_000, 7, False)
    assert sim.inject_frame(JOIN_REQUEST)
    assert (await receive(radio)).payload == JOIN_REQUEST
    assert radio.stats()["tx_ok"] == 1


async def test_transmit_changes_only_what_differs(sim: AtModemSim, radio: AtModemRadio) -> None:
    start = len(sim.commands)
    # Same channel and data rate as the uplinks: only the IQ (and CRC) change.
    assert (await radio.transmit(TxRequest(DOWNLINK, 868.1, "SF7BW125", 14.0))).ok
    sent = commands_since(sim, start)
    if sim.dialect == "rak3172":
        assert sent == [
            "AT+PRECV=0",
            "AT+IQINVER=1",
            f"AT+PSEND={DOWNLINK.hex().upper()}",
            "AT+IQINVER=0",
            "AT+PRECV=65534",
        ]
    else:
        assert sent == [
            "radio rxstop",
            "radio set iqi on",
            "radio set crc off",
            f"radio tx {DOWNLINK.hex().upper()}",
            "radio set iqi off",
            "radio set crc on",
            "mac pause",
            "radio rx 0",
        ]


async def test_transmit_at_tmst_on_the_local_clock(sim: AtModemSim, radio: AtModemRadio) -> None:
    now_ns = time.monotonic_ns()
    tmst = (local_tmst(now_ns) + 150_000) % TMST_MODULO
    result = await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0, tmst=tmst))
    assert result.ok
    target_ns = now_ns + 150_000_000
    early_ms = (target_ns - sim.transmitted[-1].command_ns) / 1e6
    # Written ahead by the command's time on the UART (3-7 ms at 115200/57600 baud);
    # the rest is event-loop jitter.
    assert -10.0 < early_ms < 20.0, early_ms


async def test_past_tmst_is_refused_too_late(sim: AtModemSim, radio: AtModemRadio) -> None:
    start = len(sim.commands)
    late = (local_tmst() - 10_000) % TMST_MODULO
    result = await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0, tmst=late))
    assert (result.ok, result.error) == (False, "TOO_LATE")
    far = (local_tmst() + 60_000_000) % TMST_MODULO
    result = await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0, tmst=far))
    assert (result.ok, result.error) == (False, "TOO_EARLY")
    assert sim.transmitted == [] and commands_since(sim, start) == []
    assert radio.stats()["tx_too_late"] == 1 and radio.stats()["tx_too_early"] == 1
    assert sim.listening


async def test_tmst_that_passes_while_queued_is_too_late(
    sim: AtModemSim, radio: AtModemRadio
) -> None:
    # The second downlink is due while the first (SF12, ~1 s) is still on the air.
    slow = TxRequest(DOWNLINK, 869.525, "SF12BW125", 14.0)
    soon = TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0, tmst=(local_tmst() + 100_000) % 2**32)
    sim.airtime_scale = 0.3
    first, second = await asyncio.gather(radio.transmit(slow), radio.transmit(soon))
    assert first.ok
    assert (second.ok, second.error) == (False, "TOO_LATE")
    assert len(sim.transmitted) == 1


async def test_impossible_power_or_frequency_is_refused(
    sim: AtModemSim, radio: AtModemRadio
) -> None:
    too_loud = await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 30.0))
    assert (too_loud.ok, too_loud.error) == (False, "TX_POWER")
    off_band = await radio.transmit(TxRequest(DOWNLINK, 2400.0, "SF9BW125", 14.0))
    assert (off_band.ok, off_band.error) == (False, "TX_FREQ")
    with pytest.raises(RadioError, match="payload of 0 bytes"):
        await radio.transmit(TxRequest(b"", 869.525, "SF9BW125", 14.0))
    with pytest.raises(RadioError, match="not a LoRa data rate"):
        await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW999", 14.0))
    assert sim.transmitted == []
    assert radio.stats()["tx_refused"] == 2


async def test_power_is_rounded_down_never_up(sim: AtModemSim, radio: AtModemRadio) -> None:
    assert (await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.9))).ok
    assert sim.transmitted[-1].settings.power_dbm == 14


# -------------------------------------------------------------------------- errors

ERRORS = {
    "rak3172": ("AT+P2P=", "AT_PARAM_ERROR", "AT+P2P=869525000:9:125:0:8:14"),
    "rn2483": ("radio set freq", "invalid_param", "radio set freq 869525000"),
}


async def test_error_reply_raises_radio_error_naming_the_command(
    sim: AtModemSim, radio: AtModemRadio
) -> None:
    prefix, status, command = ERRORS[sim.dialect]
    sim.fail_next(prefix, status)
    with pytest.raises(RadioError) as caught:
        await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0))
    assert command in str(caught.value) and status in str(caught.value)
    stats = radio.stats()
    assert stats["command_errors"] == 1 and stats["tx_failed"] == 1
    assert sim.transmitted == []
    assert sim.listening, "back to receive after the failure"
    assert (await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0))).ok


async def test_busy_send_names_the_command_not_the_payload(
    sim: AtModemSim, radio: AtModemRadio
) -> None:
    prefix, status = (
        ("AT+PSEND", "AT_BUSY_ERROR") if sim.dialect == "rak3172" else ("radio tx", "busy")
    )
    sim.fail_next(prefix, status)
    with pytest.raises(RadioError) as caught:
        await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0))
    message = str(caught.value)
    assert f"{prefix}" in message and f"<{len(DOWNLINK)} bytes>" in message and status in message
    assert DOWNLINK.hex().upper() not in message
    assert sim.listening


async def test_rn2483_radio_err_after_tx(tmp_path: Path) -> None:
    with AtModemSim("rn2483", link=tmp_path / "tty") as sim:
        modem = make_radio(sim)
        await modem.start()
        try:
            sim.fail_next("radio tx", ["ok", "radio_err"])
            with pytest.raises(RadioError, match="radio_err"):
                await modem.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0))
            assert sim.listening and modem.stats()["tx_failed"] == 1
        finally:
            await modem.stop()


async def test_silent_modem_times_out_then_recovers(sim: AtModemSim) -> None:
    radio = make_radio(sim, command_timeout=0.15)
    await radio.start()
    try:
        await check_silent_modem_times_out_then_recovers(sim, radio)
    finally:
        await radio.stop()


async def check_silent_modem_times_out_then_recovers(sim: AtModemSim, radio: AtModemRadio) -> None:
    sim.silent = True
    started = time.monotonic()
    with pytest.raises(NoReply, match="no reply within 0.15 s"):
        await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0))
    assert time.monotonic() - started < 1.0
    assert radio.stats()["timeouts"] >= 1
    sim.silent = False
    # It could not go back to receive: it was reopened and configured again.
    await eventually(lambda: radio.stats()["reopens"] >= 1 and radio.stats()["listening"])
    assert radio.stats()["resets"] == 1
    await eventually(lambda: sim.listening)
    assert sim.inject_frame(JOIN_REQUEST)
    assert (await receive(radio)).payload == JOIN_REQUEST


async def test_garbage_lines_are_counted_and_ignored(sim: AtModemSim, radio: AtModemRadio) -> None:
    sim.emit(b"\x00\xff\xfe line noise")
    sim.emit("+EVT:SOMETHING NEW")
    sim.emit("radio_rx  ABC")  # odd number of hex digits: not a frame
    await eventually(lambda: radio.stats()["garbage_lines"] == 3)
    # Garbage in the middle of a reply does not break the command.
    prefix, ok = ("AT+IQINVER=1", "OK") if sim.dialect == "rak3172" else ("radio set iqi on", "ok")
    sim.fail_next(prefix, ["#%&!", ok])
    assert (await radio.transmit(TxRequest(DOWNLINK, 868.1, "SF7BW125", 14.0))).ok
    assert radio.stats()["garbage_lines"] == 4
    # A burst of binary noise (baud-rate mismatch, EMI) neither crashes nor blocks.
    sim.emit(random.Random(7).randbytes(3000))
    await eventually(lambda: radio.stats()["garbage_lines"] > 4)
    await eventually(lambda: sim.listening)
    assert sim.inject_frame(JOIN_REQUEST)
    assert (await receive(radio)).payload == JOIN_REQUEST
    assert radio.stats()["connected"]


async def test_unplugged_modem_is_reopened_when_it_comes_back(
    sim: AtModemSim, radio: AtModemRadio
) -> None:
    sim.unplug()
    await eventually(lambda: radio.stats()["disconnects"] == 1)
    assert not radio.stats()["connected"]
    with pytest.raises(RadioError, match="not connected"):
        await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0))
    await eventually(lambda: radio.stats()["reopen_failures"] >= 1)  # the device is gone
    sim.replug()
    await eventually(lambda: radio.stats()["reopens"] == 1 and radio.stats()["connected"])
    await eventually(lambda: sim.listening)
    assert sim.settings.frequency_hz == 868_100_000
    assert sim.inject_frame(JOIN_REQUEST, rssi=-101, snr=-12)
    frame = await receive(radio)
    assert (frame.payload, frame.rssi) == (JOIN_REQUEST, -101.0)
    assert (await radio.transmit(TxRequest(DOWNLINK, 869.525, "SF9BW125", 14.0))).ok


# ------------------------------------------------------------ the simulator itself


def exchange(port: serial.SerialBase, command: str, final: set[str]) -> list[str]:
    """Send a command, return the non-empty lines up to and including a final one."""
    port.write(command.encode() + b"\r\n")
    lines: list[str] = []
    while not lines or lines[-1] not in final:
        raw = port.readline()
        assert raw, f"no answer to {command!r} after {lines}"
        if raw.strip():
            lines.append(raw.decode().strip())
    return lines


def test_rui3_sim_validates_like_the_module(tmp_path: Path) -> None:
    final = {"OK", "AT_PARAM_ERROR", "AT_BUSY_ERROR", "AT_MODE_NO_SUPPORT", "AT_COMMAND_NOT_FOUND"}
    with AtModemSim("rak3172", link=tmp_path / "tty", work_mode=1, airtime_scale=0.01) as sim:
        port = serial.serial_for_url(sim.path, baudrate=115200, timeout=1.0)
        try:
            assert exchange(port, "AT+P2P=?", final) == ["AT_MODE_NO_SUPPORT"]  # LoRaWAN mode
            assert exchange(port, "AT+NWM=?", final) == ["AT+NWM=1", "OK"]
            # RUI3 answers OK, reboots into the new mode and prints its banner.
            assert exchange(port, "AT+NWM=0", {"Current Work Mode: LoRa P2P."}) == [
                "OK",
                "RAKwireless RAK3172 Example",
                "------------------------------------------------------",
                "Current Work Mode: LoRa P2P.",
            ]
            assert sim.work_mode == 0
            # RUI3 AT Command Manual, AT+P2P example: bad frequency and bandwidth.
            assert exchange(port, "AT+P2P=868:12:300:3:200:14", final) == ["AT_PARAM_ERROR"]
            assert exchange(port, "AT+P2P=868000000:12:125:3:200:14", final) == ["OK"]
            assert exchange(port, "AT+P2P=?", final) == ["AT+P2P=868000000:12:125:3:200:14", "OK"]
            assert exchange(port, "AT+P2P=433000000:12:125:3:200:14", final) == ["AT_PARAM_ERROR"]
            assert exchange(port, "AT+PSEND=ABC", final) == ["AT_PARAM_ERROR"]
            assert exchange(port, "AT+SYNCWORD=3444", final) == ["OK"]
            assert exchange(port, "AT+SYNCWORD=?", final) == ["AT+SYNCWORD=3444", "OK"]
            assert exchange(port, "AT+PRECV=65534", final) == ["OK"]
            assert exchange(port, "AT+PRECV=65534", final) == ["P2P_RX_ON already", "AT_BUSY_ERROR"]
            assert exchange(port, "AT+PSEND=0102", final) == ["AT_BUSY_ERROR"]
            assert exchange(port, "AT+PRECV=0", final) == ["OK"]
            assert exchange(port, "AT+PSEND=0102", {"+EVT:TXP2P DONE", "AT_BUSY_ERROR"}) == [
                "OK",
                "+EVT:TXP2P DONE",
            ]
            assert exchange(port, "AT+FOO=1", final) == ["AT_COMMAND_NOT_FOUND"]
        finally:
            port.close()
    assert sim.transmitted[-1].payload == b"\x01\x02"


def test_rn2483_sim_validates_like_the_module(tmp_path: Path) -> None:
    final = {"ok", "invalid_param", "busy", RN_PAUSE}
    with AtModemSim("rn2483", link=tmp_path / "tty") as sim:
        port = serial.serial_for_url(sim.path, baudrate=57600, timeout=1.0)
        try:
            assert exchange(port, "radio set sf sf13", final) == ["invalid_param"]
            assert exchange(port, "radio set pwr 16", final) == ["invalid_param"]
            assert exchange(port, "radio set freq 915000000", final) == ["invalid_param"]
            assert exchange(port, "radio set freq 868100000", final) == ["ok"]
            assert exchange(port, "radio rx 0", final) == ["busy"]  # MAC not paused
            assert exchange(port, "mac pause", final) == [RN_PAUSE]
            assert exchange(port, "radio set wdt 0", final) == ["ok"]
            assert exchange(port, "radio rx 0", final) == ["ok"]
            assert exchange(port, "radio set sf sf9", final) == ["busy"]  # receiving
            assert sim.inject_frame(b"\x01\x02", snr=-5, rssi=-99)
            assert port.readline() == b"radio_rx  0102\r\n"  # two spaces, as documented
            assert exchange(port, "radio get snr", final | {"-5"}) == ["-5"]
            assert exchange(port, "radio get pktrssi", final | {"-99"}) == ["-99"]
            assert exchange(port, "radio tx 0G", final) == ["invalid_param"]
        finally:
            port.close()


RN_PAUSE = "4294967245"  # RN2483 reply to "mac pause": the longest pause, in ms


# ----------------------------------------------------------- pure functions, parsers


@pytest.mark.parametrize(
    ("payload_len", "sf", "bw", "ms"),
    [
        # Semtech AN1200.13 formula; check value from /work/shared/REFERENCE.md:
        # SF12, 125 kHz, 51 bytes, CR 4/5, preamble 8, CRC on -> 2465.8 ms.
        (51, 12, 125, 2465.8),
        # rfwireless-world.com LoRaWAN airtime calculator, examples 1 and 2 (10 bytes,
        # CR 4/5, preamble 8, explicit header, LDRO off at SF7, on at SF11).
        (10, 7, 125, 41.216),
        (10, 11, 125, 577.536),
        # Spreadsheet "Formulas taken from AN1200.13": 13 bytes, SF9, 125 kHz -> 164.864 ms.
        (13, 9, 125, 164.864),
    ],
)
def test_time_on_air_matches_published_values(
    payload_len: int, sf: int, bw: int, ms: float
) -> None:
    assert time_on_air(payload_len, sf, bw) * 1000 == pytest.approx(ms, abs=0.05)


def test_rui3_sync_word_form() -> None:
    # RAK WisBlock/RUI3 docs: 0x1424 private (default), 0x3444 public (LoRaWAN).
    assert rui3_sync_word(0x34) == 0x3444
    assert rui3_sync_word(0x12) == 0x1424
    with pytest.raises(ValueError):
        rui3_sync_word(0x134)


@given(st.integers(0, TMST_MODULO - 1), st.integers(-(2**31), 2**31 - 1))
def test_tmst_delay_handles_the_32_bit_wrap(now: int, delta: int) -> None:
    assert tmst_delay_us((now + delta) % TMST_MODULO, now) == delta


def test_parsers_know_the_documented_events() -> None:
    # RUI3 AT Command Manual, AT+PRECV: "+EVT:RXP2P:-30:13:1234" is RSSI -30, SNR 13.
    assert parse_rui3_line("+EVT:RXP2P:-30:13:1234") == RxEvent(b"\x12\x34", -30.0, 13.0)
    assert parse_rui3_line("+EVT:TXP2P DONE") == TxDone(True)
    assert parse_rui3_line("+EVT:RXP2P RECEIVE TIMEOUT") == RxError("receive timeout")
    assert parse_rui3_line("+EVT:RXP2P:-30:13:123") is None  # odd hex digits
    assert parse_rui3_line("+EVT:1234") is None  # only after "+EVT:RXP2P, RSSI .., SNR .."
    assert parse_rui3_line("+EVT:1234", payload_expected=True) == RxEvent(b"\x12\x34")
    assert parse_rui3_line("OK") is None
    assert parse_rn2483_line("radio_rx  48656C6C6F") == RxEvent(b"Hello")
    assert parse_rn2483_line("radio_tx_ok") == TxDone(True)
    assert parse_rn2483_line("radio_err", tx_pending=True) == TxDone(False)
    assert parse_rn2483_line("radio_err") == RxError("radio_err")
    assert parse_rn2483_line("ok") is None


@given(st.text(max_size=300), st.booleans())
def test_parsers_never_crash(line: str, flag: bool) -> None:
    for event in (
        parse_rui3_line(line, payload_expected=flag),
        parse_rn2483_line(line, tx_pending=flag),
    ):
        assert event is None or type(event).__name__ in {
            "RxEvent",
            "RxMeta",
            "TxDone",
            "RxError",
            "Notice",
        }
