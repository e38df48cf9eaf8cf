"""MAC commands (LoRaWAN 1.0.4 table) against reference encodings, plus property tests.

Vector source: brocaar/lorawan (ChirpStack's Go library), mac_commands_test.go: payload
bytes for each command (copied as data; the CID byte is prefixed here).
"""

from __future__ import annotations

import calendar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.lorawan import mac
from passerelle.lorawan.phy import PhyError

DOWNLINK_VECTORS = [
    (mac.LinkCheckAns(margin=10, gw_cnt=15), [2, 10, 15]),
    (mac.LinkCheckAns(margin=123, gw_cnt=234), [2, 123, 234]),
    # DataRate 1, TXPower 2, channel 3 enabled (bit 2), ChMaskCntl 4, NbRep 5.
    (
        mac.LinkADRReq(data_rate=1, tx_power=2, ch_mask=0x0004, ch_mask_cntl=4, nb_trans=5),
        [3, 18, 4, 0, 69],
    ),
    (mac.DutyCycleReq(max_duty_cycle=13), [4, 13]),
    (
        mac.RXParamSetupReq(rx1_dr_offset=3, rx2_data_rate=11, frequency_hz=26265700),
        [5, 59, 1, 2, 4],
    ),
    (mac.DevStatusReq(), [6]),
    (
        mac.NewChannelReq(ch_index=3, frequency_hz=26265700, min_dr=10, max_dr=5),
        [7, 3, 1, 2, 4, 90],
    ),
    (mac.RXTimingSetupReq(delay=15), [8, 15]),
    (mac.DlChannelReq(ch_index=0, frequency_hz=868100000), [10, 0, 40, 118, 132]),
    (mac.DlChannelReq(ch_index=1, frequency_hz=868200000), [10, 1, 16, 122, 132]),
    (mac.DeviceTimeAns(gps_time_seconds=1.0), [13, 1, 0, 0, 0, 0]),
    (mac.DeviceTimeAns(gps_time_seconds=1 + 2 / 256), [13, 1, 0, 0, 0, 2]),
    (mac.BeaconFreqReq(frequency_hz=868100000), [19, 40, 118, 132]),
    (mac.PingSlotChannelReq(frequency_hz=868100000, data_rate=5), [17, 40, 118, 132, 5]),
]

UPLINK_VECTORS = [
    (mac.LinkCheckReq(), [2]),
    (mac.LinkADRAns(channel_mask_ack=True, data_rate_ack=False, power_ack=False), [3, 1]),
    (mac.LinkADRAns(channel_mask_ack=False, data_rate_ack=True, power_ack=False), [3, 2]),
    (mac.LinkADRAns(channel_mask_ack=False, data_rate_ack=False, power_ack=True), [3, 4]),
    (mac.LinkADRAns(channel_mask_ack=True, data_rate_ack=True, power_ack=True), [3, 7]),
    (mac.DutyCycleAns(), [4]),
    (
        mac.RXParamSetupAns(channel_ack=True, rx2_data_rate_ack=False, rx1_dr_offset_ack=False),
        [5, 1],
    ),
    (
        mac.RXParamSetupAns(channel_ack=False, rx2_data_rate_ack=True, rx1_dr_offset_ack=False),
        [5, 2],
    ),
    (
        mac.RXParamSetupAns(channel_ack=False, rx2_data_rate_ack=False, rx1_dr_offset_ack=True),
        [5, 4],
    ),
    (mac.DevStatusAns(battery=0, margin=-30), [6, 0, 34]),
    (mac.DevStatusAns(battery=255, margin=30), [6, 255, 30]),
    (mac.DevStatusAns(battery=127, margin=-1), [6, 127, 63]),
    (mac.DevStatusAns(battery=127, margin=0), [6, 127, 0]),
    (mac.NewChannelAns(channel_frequency_ok=True, data_rate_range_ok=False), [7, 1]),
    (mac.NewChannelAns(channel_frequency_ok=False, data_rate_range_ok=True), [7, 2]),
    (mac.RXTimingSetupAns(), [8]),
    (mac.TxParamSetupAns(), [9]),
    (mac.DlChannelAns(channel_frequency_ok=True, uplink_frequency_exists=False), [10, 1]),
    (mac.DlChannelAns(channel_frequency_ok=False, uplink_frequency_exists=True), [10, 2]),
    (mac.DeviceTimeReq(), [13]),
    (mac.PingSlotInfoReq(periodicity=3), [16, 3]),
    (mac.PingSlotChannelAns(channel_frequency_ok=False, data_rate_ok=True), [17, 2]),
    (mac.BeaconFreqAns(beacon_frequency_ok=True), [19, 1]),
]


@pytest.mark.parametrize(("command", "wire"), DOWNLINK_VECTORS)
def test_downlink_command_vectors(command: mac.MacCommand, wire: list[int]) -> None:
    assert command.to_bytes() == bytes(wire)
    assert mac.parse_downlink_commands(bytes(wire)) == [command]


@pytest.mark.parametrize(("command", "wire"), UPLINK_VECTORS)
def test_uplink_command_vectors(command: mac.MacCommand, wire: list[int]) -> None:
    assert mac.parse_uplink_commands(bytes(wire)) == [command]
    assert command.to_bytes() == bytes(wire)


def test_a_sequence_of_uplink_commands() -> None:
    # FOpts of the frame in lora-packet's github issue 18 test: TxParamSetupAns then
    # PingSlotChannelAns with both bits set.
    assert mac.parse_uplink_commands(bytes.fromhex("091103")) == [
        mac.TxParamSetupAns(),
        mac.PingSlotChannelAns(channel_frequency_ok=True, data_rate_ok=True),
    ]
    data = bytes([0x02, 0x03, 0x07, 0x06, 0xFE, 0x25, 0x0D])
    commands = mac.parse_uplink_commands(data)
    assert [type(c).__name__ for c in commands] == [
        "LinkCheckReq",
        "LinkADRAns",
        "DevStatusAns",
        "DeviceTimeReq",
    ]
    assert commands[1].accepted  # type: ignore[attr-defined]
    assert commands[2] == mac.DevStatusAns(battery=254, margin=-27)
    assert mac.encode_commands(commands) == data


def test_unknown_cid_names_cid_and_offset() -> None:
    with pytest.raises(PhyError, match=r"unknown uplink MAC command CID 0x42 at offset 1"):
        mac.parse_uplink_commands(bytes([0x02, 0x42, 0x00]))
    with pytest.raises(PhyError, match=r"proprietary uplink MAC command CID 0x80 at offset 0"):
        mac.parse_uplink_commands(bytes([0x80]))
    # 1.1-only commands (ResetInd 0x01, RekeyInd 0x0B) are not in the 1.0.4 table.
    with pytest.raises(PhyError, match="CID 0x01"):
        mac.parse_uplink_commands(bytes([0x01, 0x01]))


def test_truncated_command_names_cid_and_offset() -> None:
    with pytest.raises(PhyError, match=r"CID 0x06 \(DevStatusAns\) at offset 2 is truncated"):
        mac.parse_uplink_commands(bytes([0x02, 0x04, 0x06, 0xFF]))
    with pytest.raises(PhyError, match=r"CID 0x03 \(LinkADRReq\) at offset 0"):
        mac.parse_downlink_commands(bytes([0x03, 0x00, 0x00]))


def test_reserved_value_on_parse_is_a_phy_error() -> None:
    with pytest.raises(PhyError, match=r"CID 0x02 \(LinkCheckAns\) at offset 0: margin"):
        mac.parse_downlink_commands(bytes([0x02, 255, 1]))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: mac.LinkADRReq(16, 0, 0, 0, 0), "data_rate"),
        (lambda: mac.LinkADRReq(0, 0, 0x10000, 0, 0), "ch_mask"),
        (lambda: mac.LinkADRReq(0, 0, 0, 8, 0), "ch_mask_cntl"),
        (lambda: mac.LinkCheckAns(margin=255, gw_cnt=1), "margin"),
        (lambda: mac.DlChannelReq(0, 868100099), "multiple of 100"),
        (lambda: mac.BeaconFreqReq(1677721600), "frequency_hz"),
        (lambda: mac.PingSlotInfoReq(8), "periodicity"),
        (lambda: mac.DevStatusAns(battery=0, margin=32), "margin"),
        (lambda: mac.DeviceTimeAns(-1.0), "gps_time_seconds"),
        (lambda: mac.RXTimingSetupReq(delay=True), "delay"),
    ],
)
def test_builders_refuse_out_of_range_values(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


def test_device_time_from_wall_clock() -> None:
    # 2024-01-01T00:00:00Z; GPS = Unix - 315964800 (1980-01-06) + 18 leap seconds.
    unix = calendar.timegm((2024, 1, 1, 0, 0, 0))
    gps = mac.gps_seconds_from_unix(unix + 0.5)
    assert gps == 1_388_102_418.5
    assert mac.unix_from_gps_seconds(gps) == unix + 0.5
    wire = mac.DeviceTimeAns(gps).to_bytes()
    assert wire == bytes([0x0D]) + (1_388_102_418).to_bytes(4, "little") + bytes([128])


def test_device_time_rounds_to_the_nearest_256th_and_carries() -> None:
    assert mac.DeviceTimeAns(7.999).to_bytes()[1:] == bytes([8, 0, 0, 0, 0])
    assert mac.DeviceTimeAns(7.001).to_bytes()[1:] == bytes([7, 0, 0, 0, 0])


def test_to_dict_names_the_command() -> None:
    d = mac.LinkADRAns(True, True, False).to_dict()
    assert d == {
        "cid": "0x03",
        "name": "LinkADRAns",
        "channel_mask_ack": True,
        "data_rate_ack": True,
        "power_ack": False,
    }


@settings(max_examples=300)
@given(st.binary(max_size=32))
def test_random_bytes_raise_only_phy_error(data: bytes) -> None:
    for parse in (mac.parse_uplink_commands, mac.parse_downlink_commands):
        try:
            commands = parse(data)
        except PhyError:
            continue
        # Whatever parses re-encodes to the same length (RFU bits may be dropped).
        assert len(mac.encode_commands(commands)) == len(data)


@st.composite
def downlink_commands(draw: st.DrawFn) -> mac.MacCommand:
    freq = draw(st.integers(0, 0xFFFFFF)) * 100
    return draw(
        st.sampled_from(
            [
                mac.LinkCheckAns(draw(st.integers(0, 254)), draw(st.integers(0, 255))),
                mac.LinkADRReq(
                    draw(st.integers(0, 15)),
                    draw(st.integers(0, 15)),
                    draw(st.integers(0, 0xFFFF)),
                    draw(st.integers(0, 7)),
                    draw(st.integers(0, 15)),
                ),
                mac.RXParamSetupReq(draw(st.integers(0, 7)), draw(st.integers(0, 15)), freq),
                mac.NewChannelReq(
                    draw(st.integers(0, 255)),
                    freq,
                    draw(st.integers(0, 15)),
                    draw(st.integers(0, 15)),
                ),
                mac.TxParamSetupReq(
                    draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 15))
                ),
                mac.DeviceTimeAns(draw(st.integers(0, 2**32 * 256 - 1)) / 256),
                mac.DevStatusReq(),
            ]
        )
    )


@given(st.lists(downlink_commands(), max_size=5))
def test_downlink_round_trip(commands: list[mac.MacCommand]) -> None:
    assert mac.parse_downlink_commands(mac.encode_commands(commands)) == commands
