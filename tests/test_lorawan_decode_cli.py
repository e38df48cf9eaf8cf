"""``passerelle lorawan decode``: called through ``main(argv)``, output captured.

Frames and keys are public reference vectors: lora-packet (github.com/anthonykirby/
lora-packet) README and tests, and the TTN OTAA example of A. van Bentem
(runkit.com/avbentem, "deciphering a LoRaWAN OTAA join accept").
"""

from __future__ import annotations

import json

import pytest

from passerelle.lorawan import phy
from passerelle.lorawan.decode_cli import main
from passerelle.lorawan.phy import MType

NWKSKEY = "44024241ed4ce9a68c6a8bc055233fd3"
APPSKEY = "ec925802ae430ca77fd3dd73cb2cc588"
UPLINK_HEX = "40F17DBE4900020001954378762B11FF0D"
UPLINK_B64 = "QPF9vkkAAgABlUN4disR/w0="  # the same frame, as lora-packet's README gives it
TTN_APPKEY = "B6B53F4A168A7A88BDF7EA135CE9CFCA"
TTN_JOIN_REQUEST = "00DC0000D07ED5B3701E6FEDF57CEEAF0085CC587FE913"
TTN_JOIN_ACCEPT = "204DD85AE608B87FC4889970B7D2042C9E72959B0057AED6094B16003DF12DE145"


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    lines = out.splitlines()
    assert len(lines) == 1, "--json prints ONE object"
    return json.loads(lines[0])


def test_data_uplink_with_keys(capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(capsys, UPLINK_HEX, "--nwkskey", NWKSKEY, "--appskey", APPSKEY)
    assert d["mtype"] == "UnconfirmedDataUp"
    assert d["dev_addr"] == "49be7df1"
    assert d["fctrl"] == {
        "adr": False,
        "adr_ack_req": False,
        "ack": False,
        "class_b": False,
        "fopts_len": 0,
    }
    assert (d["fcnt"], d["fport"], d["fopts"]) == (2, 1, "")
    assert bytes.fromhex(d["frm_payload"]) == b"test"
    assert d["frm_payload_decrypted"] is True
    assert (d["mic"], d["mic_ok"]) == ("2b11ff0d", True)


def test_base64_input_without_keys(capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(capsys, UPLINK_B64)
    assert d["dev_addr"] == "49be7df1"
    assert d["frm_payload"] == "95437876"  # as on the wire
    assert d["frm_payload_decrypted"] is False
    assert d["mic_ok"] is None


def test_wrong_nwkskey_gives_mic_false(capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(capsys, UPLINK_HEX, "--nwkskey", APPSKEY)
    assert d["mic_ok"] is False


def test_text_output_lists_every_field(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([UPLINK_HEX, "--nwkskey", NWKSKEY, "--appskey", APPSKEY]) == 0
    out = capsys.readouterr().out
    for line in (
        "mtype: UnconfirmedDataUp",
        "dev_addr: 49be7df1",
        "fctrl.adr: false",
        "fctrl.fopts_len: 0",
        "fcnt: 2",
        "fport: 1",
        "frm_payload: 74657374",
        "mic: 2b11ff0d",
        "mic_ok: true",
    ):
        assert line in out.splitlines()


def test_join_request(capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(capsys, TTN_JOIN_REQUEST, "--appkey", TTN_APPKEY)
    assert d["mtype"] == "JoinRequest"
    assert d["join_eui"] == "70b3d57ed00000dc"
    assert d["dev_eui"] == "00afee7cf5ed6f1e"
    assert d["dev_nonce"] == 0xCC85
    assert (d["mic"], d["mic_ok"]) == ("587fe913", True)
    assert run_json(capsys, TTN_JOIN_REQUEST)["mic_ok"] is None


def test_join_accept_with_and_without_appkey(capsys: pytest.CaptureFixture[str]) -> None:
    d = run_json(capsys, TTN_JOIN_ACCEPT, "--appkey", TTN_APPKEY)
    assert d["mtype"] == "JoinAccept" and d["mic_ok"] is True
    assert (d["join_nonce"], d["net_id"], d["dev_addr"]) == (0xE5063A, "000013", "26012e43")
    assert (d["rx1_dr_offset"], d["rx2_datarate"], d["rx_delay"]) == (0, 3, 1)
    assert d["cflist_frequencies_hz"] == [867100000, 867300000, 867500000, 867700000, 867900000]
    assert d["mic"] == "55121de0"

    bare = run_json(capsys, TTN_JOIN_ACCEPT)
    assert bare["mic_ok"] is None and "join_nonce" not in bare
    assert bare["encrypted"] == TTN_JOIN_ACCEPT[2:].lower()

    wrong = run_json(capsys, TTN_JOIN_ACCEPT, "--appkey", NWKSKEY)
    assert wrong["mic_ok"] is False and "join_nonce" not in wrong


def test_fopts_are_shown_as_mac_commands(capsys: pytest.CaptureFixture[str]) -> None:
    # lora-packet fopts_test (github issue 18): FOpts 09 11 03.
    d = run_json(capsys, "4084412505A3010009110308B33750F504D4B86A")
    assert d["fctrl"]["adr"] is True and d["fctrl"]["ack"] is True
    assert d["fctrl"]["fopts_len"] == 3 and d["fopts"] == "091103"
    assert [c["name"] for c in d["mac_commands"]] == ["TxParamSetupAns", "PingSlotChannelAns"]


def test_fport_zero_payload_decrypted_with_nwkskey(capsys: pytest.CaptureFixture[str]) -> None:
    key = bytes.fromhex(NWKSKEY)
    raw = phy.encode_data(
        MType.UnconfirmedDataDown, 0x26012E43, 0x10007, key, None, fport=0, payload=bytes([6])
    )
    d = run_json(capsys, raw.hex(), "--nwkskey", NWKSKEY, "--fcnt-msb", "1")
    assert d["fctrl"] == {"adr": False, "fpending": False, "ack": False, "fopts_len": 0}
    assert (d["fcnt"], d["fcnt32"], d["mic_ok"]) == (7, 0x10007, True)
    assert d["frm_payload"] == "06"
    assert d["mac_commands"] == [{"cid": "0x06", "name": "DevStatusReq"}]
    # Without the high half of the counter the MIC cannot match.
    assert run_json(capsys, raw.hex(), "--nwkskey", NWKSKEY)["mic_ok"] is False


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["40F17DBE49"], "UnconfirmedDataUp of 5 bytes"),
        (["zz!"], "neither hex"),
        (["", "--json"], "empty frame"),
        (["41" + "00" * 12], "Major 1"),
        ([UPLINK_HEX, "--nwkskey", "1234"], "--nwkskey must be 32 hex digits"),
        ([UPLINK_HEX, "--fcnt-msb", "70000"], "--fcnt-msb"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert err.startswith("error: ") and reason in err


def test_base64_can_be_forced(capsys: pytest.CaptureFixture[str]) -> None:
    # "AAAA" is valid hex and valid base64: hex wins unless --base64 is given.
    assert main(["AAAA", "--json"]) == 2  # hex: aa aa, MHDR with Major 2
    assert "MHDR (byte 0) = 0xaa" in capsys.readouterr().err
    assert main(["AAAA", "--base64", "--json"]) == 2  # 3 zero bytes
    assert "JoinRequest of 3 bytes" in capsys.readouterr().err


def test_help_mentions_both_encodings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "passerelle lorawan decode" in out and "base64" in out and "hex" in out
