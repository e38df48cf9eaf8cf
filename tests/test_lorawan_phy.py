"""LoRaWAN 1.0.x frames and crypto against public reference vectors, plus property tests.

Vector sources (data only, copied as hex):
- RFC 4493 section 4 (AES-CMAC examples).
- lora-packet (github.com/anthonykirby/lora-packet), README and __tests__/{mic,decrypt,
  key_gen,join_accept_encrypt,fopts}_test.ts.
- The Things Network OTAA example of A. van Bentem ("deciphering a LoRaWAN OTAA join
  accept", runkit.com/avbentem), also used in several LoRaWAN stacks' tests: join-request,
  encrypted join-accept, its decrypted fields and the derived session keys.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.lorawan import crypto, phy
from passerelle.lorawan.phy import MType, PhyError

# lora-packet README / __tests__: one ABP device.
LP_NWKSKEY = bytes.fromhex("44024241ed4ce9a68c6a8bc055233fd3")
LP_APPSKEY = bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc588")
LP_UPLINK = bytes.fromhex("40F17DBE4900020001954378762B11FF0D")  # FCnt 2, "test"
LP_UPLINK_LONG = bytes.fromhex(
    "40f17dbe490004000155332de41a11adc072553544429ce7787707d1c316e027e7e5e334"
    "263376affb8aa17ad30075293f28dea8a20af3c5e7"
)  # FCnt 4, "The quick brown fox jumps over the lazy dog."
LP_UPLINK_EMPTY = bytes.fromhex("40F17DBE49000300012A3518AF")  # FPort 1, no payload
LP_DOWNLINK_ACK = bytes.fromhex("60f17dbe4920020001f9d65d27")  # ACK, FPort 1, no payload
LP_APPKEY = bytes.fromhex("98929b92c49edba9676d646d3b612456")
LP_JOIN_REQUEST = bytes.fromhex("0039363463336913AA05693574323831330489C65B1304")

# TTN OTAA exchange (avbentem).
TTN_APPKEY = bytes.fromhex("B6B53F4A168A7A88BDF7EA135CE9CFCA")
TTN_JOIN_REQUEST = bytes.fromhex("00DC0000D07ED5B3701E6FEDF57CEEAF0085CC587FE913")
TTN_JOIN_ACCEPT = bytes.fromhex(
    "204DD85AE608B87FC4889970B7D2042C9E72959B0057AED6094B16003DF12DE145"
)
TTN_CFLIST = bytes.fromhex("184F84E85684B85E84886684586E8400")
TTN_NWKSKEY = bytes.fromhex("2C96F7028184BB0BE8AA49275290D4FC")
TTN_APPSKEY = bytes.fromhex("F3A5C8F0232A38C144029C165865802C")


# --------------------------------------------------------------------------------------
# crypto
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("msg", "mac"),
    [  # RFC 4493 section 4, key 2b7e1516 28aed2a6 abf71588 09cf4f3c
        ("", "bb1d6929e95937287fa37d129b756746"),
        ("6bc1bee22e409f96e93d7e117393172a", "070a16b46b4d4144f79bdd9dd04a287c"),
    ],
)
def test_aes_cmac_rfc4493(msg: str, mac: str) -> None:
    key = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c")
    assert crypto.aes_cmac(key, bytes.fromhex(msg)).hex() == mac


def test_data_mic_and_keystream_from_lora_packet() -> None:
    assert crypto.data_mic(LP_NWKSKEY, LP_UPLINK[:-4], 0x49BE7DF1, 2, True).hex() == "2b11ff0d"
    assert crypto.crypt_frm_payload(LP_APPSKEY, 0x49BE7DF1, 2, True, LP_UPLINK[9:-4]) == b"test"
    # lora-packet decrypt_test: a key off by one nibble scrambles the payload like this.
    bad_key = bytes.fromhex("ec925802ae430ca77fd3dd73cb2cc580")
    assert crypto.crypt_frm_payload(bad_key, 0x49BE7DF1, 2, True, LP_UPLINK[9:-4]).hex() == (
        "5999fc3f"
    )


def test_session_keys_lora_packet_vector() -> None:
    # lora-packet key_gen_test: AppNonce 376338, NetID aabbcc, DevNonce f18e (as written).
    nwk, app = crypto.derive_session_keys(LP_APPKEY, 0x376338, bytes.fromhex("aabbcc"), 0xF18E)
    assert nwk.hex() == "4e3d6e6afbcc67af2ba3c8e8ec4acf4b"
    assert app.hex() == "610897aa6f1460623443b527d3ac6a9d"


def test_session_keys_ttn_otaa_vector() -> None:
    nwk, app = crypto.derive_session_keys(TTN_APPKEY, 0xE5063A, 0x000013, 0xCC85)
    assert (nwk, app) == (TTN_NWKSKEY, TTN_APPSKEY)


def test_keys_of_wrong_size_are_refused_without_echoing_them() -> None:
    with pytest.raises(ValueError, match="NwkSKey must be 16 bytes, got 15") as info:
        crypto.data_mic(LP_NWKSKEY[:15], b"\x40", 0, 0, True)
    assert LP_NWKSKEY[:15].hex() not in str(info.value)


def test_join_accept_cipher_needs_whole_blocks() -> None:
    with pytest.raises(ValueError, match="16 or 32"):
        crypto.decrypt_join_accept(TTN_APPKEY, bytes(17))


# --------------------------------------------------------------------------------------
# data frames against vectors
# --------------------------------------------------------------------------------------


def test_decode_lora_packet_uplink() -> None:
    frame = phy.decode(LP_UPLINK)
    assert isinstance(frame, phy.DataFrame)
    assert frame.mtype is MType.UnconfirmedDataUp and frame.uplink and not frame.confirmed
    assert frame.dev_addr == 0x49BE7DF1
    assert (frame.adr, frame.adr_ack_req, frame.ack, frame.class_b) == (False,) * 4
    assert frame.fcnt == 2 and frame.fopts == b"" and frame.fport == 1
    assert frame.frm_payload.hex() == "95437876" and frame.mic.hex() == "2b11ff0d"
    assert phy.verify_mic(LP_UPLINK, LP_NWKSKEY, 2)
    assert phy.decrypt_payload(frame, LP_APPSKEY, 2) == b"test"


def test_encode_reproduces_lora_packet_uplink() -> None:
    built = phy.encode_data(
        MType.UnconfirmedDataUp, 0x49BE7DF1, 2, LP_NWKSKEY, LP_APPSKEY, fport=1, payload=b"test"
    )
    assert built == LP_UPLINK


def test_multi_block_payload() -> None:
    frame = phy.decode_data(LP_UPLINK_LONG)
    assert phy.verify_mic(LP_UPLINK_LONG, LP_NWKSKEY, 4)
    assert phy.decrypt_payload(frame, LP_APPSKEY, 4) == (
        b"The quick brown fox jumps over the lazy dog."
    )


def test_empty_payload_with_fport_and_bad_mic() -> None:
    frame = phy.decode_data(LP_UPLINK_EMPTY)
    assert frame.fport == 1 and frame.frm_payload == b""
    assert phy.verify_mic(LP_UPLINK_EMPTY, LP_NWKSKEY, 3)
    bodged = LP_UPLINK_EMPTY[:-1] + b"\xaa"  # lora-packet mic_test: "aa not af"
    assert not phy.verify_mic(bodged, LP_NWKSKEY, 3)


def test_downlink_ack_vector() -> None:
    frame = phy.decode_data(LP_DOWNLINK_ACK)
    assert frame.mtype is MType.UnconfirmedDataDown and not frame.uplink
    assert frame.ack and not frame.fpending and not frame.adr
    assert frame.fport == 1 and frame.frm_payload == b""
    assert phy.verify_mic(LP_DOWNLINK_ACK, LP_NWKSKEY, 2)
    built = phy.encode_data(
        MType.UnconfirmedDataDown, 0x49BE7DF1, 2, LP_NWKSKEY, LP_APPSKEY, fport=1, ack=True
    )
    assert built == LP_DOWNLINK_ACK


def test_fopts_frame_from_lora_packet_issue_18() -> None:
    frame = phy.decode_data(bytes.fromhex("4084412505A3010009110308B33750F504D4B86A"))
    assert frame.dev_addr == 0x05254184 and frame.adr and frame.ack
    assert frame.fopts.hex() == "091103" and frame.fport == 8
    assert frame.frm_payload.hex() == "b33750f5" and frame.mic.hex() == "04d4b86a"


def test_mic_covers_the_high_half_of_the_counter() -> None:
    raw = phy.encode_data(
        MType.ConfirmedDataUp, 0x260B1234, 0x10002, LP_NWKSKEY, LP_APPSKEY, 5, b"x"
    )
    assert phy.decode_data(raw).fcnt == 2
    assert phy.verify_mic(raw, LP_NWKSKEY, 0x10002)
    assert not phy.verify_mic(raw, LP_NWKSKEY, 0x00002)
    with pytest.raises(ValueError, match="does not end in the frame's FCnt"):
        phy.verify_mic(raw, LP_NWKSKEY, 0x10003)


def test_fport_zero_payload_uses_nwkskey() -> None:
    raw = phy.encode_data(MType.UnconfirmedDataUp, 1, 7, LP_NWKSKEY, None, fport=0, payload=b"\x02")
    frame = phy.decode_data(raw)
    assert frame.frm_payload != b"\x02"
    assert phy.decrypt_payload(frame, LP_NWKSKEY, 7) == b"\x02"
    assert phy.decrypt_payload(frame, LP_APPSKEY, 7) != b"\x02"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fport": 0, "payload": b"\x02", "fopts": b"\x02"}, "FOpts must then be empty"),
        ({"payload": b"x"}, "a payload needs an FPort"),
        ({"fport": 1, "fopts": bytes(16)}, "at most 15"),
        ({"fport": 256}, "fport"),
        ({"fpending": True}, "fpending is a downlink flag"),
        ({"fport": 1, "payload": bytes(243)}, "frame would be 256 bytes"),
    ],
)
def test_encode_data_refuses_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        phy.encode_data(MType.UnconfirmedDataUp, 1, 1, LP_NWKSKEY, LP_APPSKEY, **kwargs)


def test_encode_data_refuses_non_data_mtype_and_uplink_flags_downlink() -> None:
    with pytest.raises(ValueError, match="not a data frame"):
        phy.encode_data(MType.JoinRequest, 1, 1, LP_NWKSKEY, LP_APPSKEY)
    with pytest.raises(ValueError, match="uplink flags"):
        phy.encode_data(MType.ConfirmedDataDown, 1, 1, LP_NWKSKEY, None, adr_ack_req=True)


# --------------------------------------------------------------------------------------
# join procedure against vectors
# --------------------------------------------------------------------------------------


def test_ttn_join_request_decode_verify_encode() -> None:
    frame = phy.decode(TTN_JOIN_REQUEST)
    assert frame == phy.JoinRequest(
        join_eui=bytes.fromhex("70B3D57ED00000DC"),
        dev_eui=bytes.fromhex("00AFEE7CF5ED6F1E"),
        dev_nonce=0xCC85,
        mic=bytes.fromhex("587FE913"),
    )
    assert phy.verify_join_request(TTN_APPKEY, TTN_JOIN_REQUEST)
    built = phy.encode_join_request(TTN_APPKEY, frame.join_eui, frame.dev_eui, frame.dev_nonce)
    assert built == TTN_JOIN_REQUEST


def test_lora_packet_join_request_mic() -> None:
    assert phy.verify_join_request(LP_APPKEY, LP_JOIN_REQUEST)
    assert phy.decode(LP_JOIN_REQUEST).mic.hex() == "c65b1304"
    bodged = LP_JOIN_REQUEST[:-1] + b"\x05"  # lora-packet mic_test: "05 not 04"
    assert not phy.verify_join_request(LP_APPKEY, bodged)


def test_ttn_join_accept_decrypts_to_its_fields() -> None:
    assert isinstance(phy.decode(TTN_JOIN_ACCEPT), phy.EncryptedJoinAccept)
    accept = phy.decode_join_accept(TTN_APPKEY, TTN_JOIN_ACCEPT)
    assert accept == phy.JoinAccept(
        join_nonce=0xE5063A,
        net_id=0x000013,
        dev_addr=0x26012E43,
        rx1_dr_offset=0,
        rx2_datarate=3,
        rx_delay=1,
        cflist=TTN_CFLIST,
        mic=bytes.fromhex("55121DE0"),
    )
    # And the DevNonce of the join-request gives TTN's session keys.
    keys = crypto.derive_session_keys(TTN_APPKEY, accept.join_nonce, accept.net_id, 0xCC85)
    assert keys == (TTN_NWKSKEY, TTN_APPSKEY)


def test_ttn_join_accept_is_reproduced_by_the_network_side_encryption() -> None:
    built = phy.encode_join_accept(
        TTN_APPKEY, 0xE5063A, bytes.fromhex("000013"), 0x26012E43, 0, 3, 1, TTN_CFLIST
    )
    assert built == TTN_JOIN_ACCEPT


def test_zero_join_accept_vector() -> None:
    # lora-packet join_accept_encrypt: all-zero AppKey and fields.
    built = phy.encode_join_accept(bytes(16), 0, 0, 0, 0, 0, 0)
    assert built.hex() == "20e3de108795f776b8037610ef7869b5b3"
    assert phy.decode_join_accept(bytes(16), built).mic.hex() == "f86f0a91"


def test_plaintext_join_accept_mic_vector() -> None:
    # lora-packet mic_test: unencrypted 20386337CCBBAAE7CD2C010000D9D0A6E7 under LP_APPKEY.
    built = phy.encode_join_accept(LP_APPKEY, 0x376338, 0xAABBCC, 0x012CCDE7, 0, 0, 0)
    plain = crypto.decrypt_join_accept(LP_APPKEY, built[1:])
    assert plain.hex() == "386337ccbbaae7cd2c010000d9d0a6e7"


def test_join_accept_with_wrong_key_is_refused() -> None:
    with pytest.raises(PhyError, match="JoinAccept MIC mismatch"):
        phy.decode_join_accept(LP_APPKEY, TTN_JOIN_ACCEPT)
    _, ok = phy.decrypt_join_accept_frame(LP_APPKEY, TTN_JOIN_ACCEPT)
    assert ok is False


# --------------------------------------------------------------------------------------
# malformed frames
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("", "empty PHYPayload"),
        ("41" + "00" * 16, r"MHDR \(byte 0\) = 0x41: Major 1"),
        ("00" * 22, "JoinRequest of 22 bytes: expected 23"),
        ("20" + "00" * 20, "JoinAccept of 21 bytes"),
        ("40" + "00" * 10, "UnconfirmedDataUp of 11 bytes: at least 12"),
        ("40" + "01020304" + "03" + "0000" + "0102" + "aabbccdd", r"FCtrl \(byte 5\) = 0x03"),
        ("40" + "01020304" + "01" + "0000" + "02" + "00" + "aabbccdd", r"FPort 0 \(byte 9\)"),
        ("c0" + "00" * 4, "RejoinRequest of 5 bytes"),
        ("e0", None),  # Proprietary: anything goes
        ("e0" * 256, "PHYPayload of 256 bytes: LoRa carries at most 255"),
    ],
)
def test_malformed_frames_name_the_field(raw: str, message: str | None) -> None:
    if message is None:
        assert phy.decode(bytes.fromhex(raw)) == phy.Proprietary(raw=bytes.fromhex(raw))
        return
    with pytest.raises(PhyError, match=message):
        phy.decode(bytes.fromhex(raw))


def test_decode_refuses_non_bytes() -> None:
    with pytest.raises(PhyError, match="must be bytes"):
        phy.decode("40F17D")  # type: ignore[arg-type]


def test_rejoin_request_is_decoded_as_such() -> None:
    # MHDR 0xC0: MType 6 (LoRaWAN 1.1 rejoin-request), type 0, MIC 01020304.
    raw = bytes([6 << 5, 0]) + bytes(13) + bytes.fromhex("01020304")
    frame = phy.decode(raw)
    assert isinstance(frame, phy.RejoinRequest)
    assert frame.rejoin_type == 0 and frame.mic.hex() == "01020304"


def test_verify_helpers_refuse_the_wrong_frame_type() -> None:
    with pytest.raises(PhyError, match="JoinRequest is not a data frame"):
        phy.verify_mic(TTN_JOIN_REQUEST, LP_NWKSKEY, 0)
    with pytest.raises(PhyError, match="is not a JoinAccept"):
        phy.decode_join_accept(TTN_APPKEY, LP_UPLINK)
    with pytest.raises(PhyError, match="is not a JoinRequest"):
        phy.verify_join_request(TTN_APPKEY, LP_UPLINK)


# --------------------------------------------------------------------------------------
# frame counter
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("last", "wire", "expected"),
    [
        (None, 0, 0),  # first frame of a session
        (None, 17, 17),
        (5, 6, 6),
        (5, 100, 100),
        (0xFFFF, 0x0000, 0x10000),  # rollover of the 16 bits on air
        (0xFFFE, 0x0001, 0x10001),  # rollover with a lost frame
        (0x1FFFF, 0x0003, 0x20003),
        (0x12345, 0x2345, None),  # the same counter again: a replay
        (0x12345, 0x2344, None),  # an older frame
        (0, 16384, 16384),  # exactly MAX_FCNT_GAP ahead
        (0, 16385, None),  # too far to tell
        (0xFFFFFFFF, 0x0000, None),  # counter exhausted: the device must rejoin
    ],
)
def test_fcnt32(last: int | None, wire: int, expected: int | None) -> None:
    assert phy.fcnt32(last, wire) == expected


def test_fcnt32_gap_is_bounded() -> None:
    assert phy.fcnt32(10, 9, max_fcnt_gap=65535) == 0x10009
    with pytest.raises(ValueError, match="max_fcnt_gap"):
        phy.fcnt32(10, 10, max_fcnt_gap=65536)  # would accept a replay
    with pytest.raises(ValueError, match="wire16"):
        phy.fcnt32(10, 0x10000)


@given(st.integers(0, 0xFFFF_0000), st.integers(1, 16384))
def test_fcnt32_recovers_counters_within_the_gap(last: int, step: int) -> None:
    true_next = last + step
    assert phy.fcnt32(last, true_next & 0xFFFF) == true_next


# --------------------------------------------------------------------------------------
# presentation
# --------------------------------------------------------------------------------------


def test_frame_to_dict_data() -> None:
    d = phy.frame_to_dict(phy.decode(LP_UPLINK))
    assert d["mtype"] == "UnconfirmedDataUp" and d["dev_addr"] == "49be7df1"
    assert d["fctrl"] == {
        "adr": False,
        "adr_ack_req": False,
        "ack": False,
        "class_b": False,
        "fopts_len": 0,
    }
    assert (d["fcnt"], d["fport"], d["frm_payload"], d["mic"]) == (2, 1, "95437876", "2b11ff0d")
    down = phy.frame_to_dict(phy.decode(LP_DOWNLINK_ACK))
    assert down["fctrl"] == {"adr": False, "fpending": False, "ack": True, "fopts_len": 0}


# --------------------------------------------------------------------------------------
# properties
# --------------------------------------------------------------------------------------

keys = st.binary(min_size=16, max_size=16)


@settings(max_examples=400)
@given(st.binary(max_size=64))
def test_random_bytes_raise_only_phy_error(raw: bytes) -> None:
    try:
        frame = phy.decode(raw)
    except PhyError:
        return
    phy.frame_to_dict(frame)  # whatever decodes can be shown


@settings(max_examples=300)
@given(st.sampled_from([0x40, 0x60, 0x80, 0xA0]), st.binary(max_size=40))
def test_random_data_frames_raise_only_phy_error(mhdr: int, rest: bytes) -> None:
    # Biased toward data frames so FCtrl/FOpts/FPort paths get exercised.
    try:
        frame = phy.decode(bytes([mhdr]) + rest)
    except PhyError:
        return
    assert isinstance(frame, phy.DataFrame)
    assert len(frame.fopts) == (rest[4] & 0x0F)


@settings(max_examples=100)
@given(keys, st.binary(max_size=40))
def test_random_join_accepts_raise_only_phy_error(app_key: bytes, rest: bytes) -> None:
    try:
        phy.decode_join_accept(app_key, b"\x20" + rest)
    except PhyError:
        pass


@st.composite
def data_frames(draw: st.DrawFn) -> dict:
    mtype = draw(st.sampled_from(sorted(phy.DATA_MTYPES)))
    uplink = mtype in phy.UPLINK_MTYPES
    fport = draw(st.none() | st.integers(0, 255))
    payload = b"" if fport is None else draw(st.binary(max_size=60))
    fopts = b"" if fport == 0 else draw(st.binary(max_size=15))
    return {
        "mtype": mtype,
        "dev_addr": draw(st.integers(0, 0xFFFFFFFF)),
        "fcnt32": draw(st.integers(0, 0xFFFFFFFF)),
        "nwk_s_key": draw(keys),
        "app_s_key": draw(keys),
        "fport": fport,
        "payload": payload,
        "fopts": fopts,
        "adr": draw(st.booleans()),
        "adr_ack_req": uplink and draw(st.booleans()),
        "class_b": uplink and draw(st.booleans()),
        "fpending": not uplink and draw(st.booleans()),
        "ack": draw(st.booleans()),
    }


@settings(max_examples=200)
@given(data_frames())
def test_encode_decode_round_trip(args: dict) -> None:
    raw = phy.encode_data(**args)
    frame = phy.decode_data(raw)
    assert frame.mtype == args["mtype"] and frame.dev_addr == args["dev_addr"]
    assert frame.fcnt == args["fcnt32"] & 0xFFFF
    assert (frame.adr, frame.ack) == (args["adr"], args["ack"])
    assert (frame.adr_ack_req, frame.class_b, frame.fpending) == (
        args["adr_ack_req"],
        args["class_b"],
        args["fpending"],
    )
    assert frame.fopts == args["fopts"] and frame.fport == args["fport"]
    assert phy.verify_mic(raw, args["nwk_s_key"], args["fcnt32"])
    if args["fport"] is not None:
        key = args["nwk_s_key"] if args["fport"] == 0 else args["app_s_key"]
        assert phy.decrypt_payload(frame, key, args["fcnt32"]) == args["payload"]


@settings(max_examples=50)
@given(
    keys,
    st.integers(0, 0xFFFFFF),
    st.integers(0, 0xFFFFFF),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 7),
    st.integers(0, 15),
    st.integers(0, 15),
    st.none() | st.binary(min_size=16, max_size=16),
)
def test_join_accept_round_trip(
    app_key: bytes,
    join_nonce: int,
    net_id: int,
    dev_addr: int,
    rx1: int,
    rx2: int,
    delay: int,
    cflist: bytes | None,
) -> None:
    raw = phy.encode_join_accept(app_key, join_nonce, net_id, dev_addr, rx1, rx2, delay, cflist)
    accept = phy.decode_join_accept(app_key, raw)
    assert (accept.join_nonce, accept.net_id, accept.dev_addr) == (join_nonce, net_id, dev_addr)
    assert (accept.rx1_dr_offset, accept.rx2_datarate, accept.rx_delay) == (rx1, rx2, delay)
    assert accept.cflist == cflist
