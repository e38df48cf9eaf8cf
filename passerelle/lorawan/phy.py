"""LoRaWAN 1.0.x PHYPayload: decode any bytes, encode the frames a network server sends.

``decode`` turns bytes heard on air into a typed frame or raises :class:`PhyError` naming
the field and byte at fault; it never raises anything else, whatever the input (a radio
hands us noise, truncated frames and other networks' traffic). Decoding checks structure
only: MICs need keys and the 32-bit frame counter, so they are checked separately
(:func:`verify_mic`, :func:`verify_join_request`, :func:`decode_join_accept`).

Multi-octet fields are little-endian on air; the dataclasses hold DevAddr, NetID and
counters as ints and EUIs as written (big-endian). Byte order is handled in ``crypto``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from passerelle.lorawan import crypto
from passerelle.lorawan.crypto import eui_from_wire, eui_to_wire, from_wire, to_wire

MIC_LEN = 4
FHDR_MIN = 7  # DevAddr(4) FCtrl(1) FCnt(2)
JOIN_REQUEST_LEN = 1 + 8 + 8 + 2 + MIC_LEN
JOIN_ACCEPT_LENS = (1 + 12 + MIC_LEN, 1 + 12 + 16 + MIC_LEN)  # without / with CFList
DATA_MIN_LEN = 1 + FHDR_MIN + MIC_LEN
PHY_MAX_LEN = 255  # a LoRa packet carries at most 255 bytes (and B0 holds a one-byte length)
MAJOR_R1 = 0
FCNT_MODULO = 1 << 16
FCNT32_MAX = (1 << 32) - 1


class PhyError(ValueError):
    """A frame that is not a valid LoRaWAN 1.0.x PHYPayload; says what and where."""


class MType(IntEnum):
    JoinRequest = 0
    JoinAccept = 1
    UnconfirmedDataUp = 2
    UnconfirmedDataDown = 3
    ConfirmedDataUp = 4
    ConfirmedDataDown = 5
    RejoinRequest = 6  # LoRaWAN 1.1 only; decoded so it can be counted and ignored
    Proprietary = 7


DATA_MTYPES = frozenset(
    {
        MType.UnconfirmedDataUp,
        MType.UnconfirmedDataDown,
        MType.ConfirmedDataUp,
        MType.ConfirmedDataDown,
    }
)
UPLINK_MTYPES = frozenset({MType.UnconfirmedDataUp, MType.ConfirmedDataUp})


# --------------------------------------------------------------------------------------
# Frames
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class JoinRequest:
    join_eui: bytes  # 8 octets, as written (big-endian)
    dev_eui: bytes  # 8 octets, as written (big-endian)
    dev_nonce: int
    mic: bytes
    mtype: MType = MType.JoinRequest


@dataclass(frozen=True, slots=True)
class EncryptedJoinAccept:
    """A join-accept as heard: its body (MIC included) is encrypted with the AppKey."""

    raw: bytes  # the whole PHYPayload
    mtype: MType = MType.JoinAccept

    @property
    def encrypted(self) -> bytes:
        """The encrypted body after the MHDR (16 or 32 bytes)."""
        return self.raw[1:]


@dataclass(frozen=True, slots=True)
class JoinAccept:
    """A decrypted join-accept (1.0.x)."""

    join_nonce: int
    net_id: int
    dev_addr: int
    rx1_dr_offset: int
    rx2_datarate: int
    rx_delay: int  # the Del field, 0..15; 0 means 1 s like 1
    cflist: bytes | None  # 16 octets as on air, or None
    mic: bytes
    mtype: MType = MType.JoinAccept

    @property
    def rx1_delay_seconds(self) -> int:
        return max(1, self.rx_delay)


@dataclass(frozen=True, slots=True)
class RejoinRequest:
    """A LoRaWAN 1.1 rejoin-request: a 1.0.x network keeps it only to count it."""

    rejoin_type: int | None
    body: bytes  # MACPayload as on air
    mic: bytes
    mtype: MType = MType.RejoinRequest


@dataclass(frozen=True, slots=True)
class DataFrame:
    mtype: MType
    dev_addr: int
    adr: bool
    adr_ack_req: bool  # uplink only (the bit is RFU downlink)
    ack: bool
    class_b: bool  # uplink only (1.0.4 FCtrl bit 4 uplink)
    fpending: bool  # downlink only (the same bit 4 downlink)
    fcnt: int  # the 16-bit value on the wire
    fopts: bytes
    fport: int | None
    frm_payload: bytes  # as on the wire (encrypted)
    mic: bytes
    major: int = MAJOR_R1

    @property
    def uplink(self) -> bool:
        return self.mtype in UPLINK_MTYPES

    @property
    def confirmed(self) -> bool:
        return self.mtype in (MType.ConfirmedDataUp, MType.ConfirmedDataDown)


@dataclass(frozen=True, slots=True)
class Proprietary:
    raw: bytes  # the whole PHYPayload; its format belongs to whoever sent it
    mtype: MType = MType.Proprietary


Frame = JoinRequest | EncryptedJoinAccept | RejoinRequest | DataFrame | Proprietary


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


def decode(phy: bytes) -> Frame:
    """Decode a PHYPayload. Raises only :class:`PhyError`, for any input."""
    if not isinstance(phy, bytes | bytearray | memoryview):
        raise PhyError(f"PHYPayload must be bytes, got {type(phy).__name__}")
    phy = bytes(phy)
    if not phy:
        raise PhyError("empty PHYPayload: no MHDR (byte 0)")
    if len(phy) > PHY_MAX_LEN:
        raise PhyError(f"PHYPayload of {len(phy)} bytes: LoRa carries at most {PHY_MAX_LEN}")
    mhdr = phy[0]
    mtype = MType(mhdr >> 5)
    if mtype is MType.Proprietary:
        return Proprietary(raw=phy)
    major = mhdr & 0x03
    if major != MAJOR_R1:
        raise PhyError(f"MHDR (byte 0) = {mhdr:#04x}: Major {major} is not LoRaWAN R1 (0)")
    if mtype is MType.JoinRequest:
        return _decode_join_request(phy)
    if mtype is MType.JoinAccept:
        if len(phy) not in JOIN_ACCEPT_LENS:
            raise PhyError(
                f"JoinAccept of {len(phy)} bytes: expected {JOIN_ACCEPT_LENS[0]} "
                f"or {JOIN_ACCEPT_LENS[1]} (with CFList)"
            )
        return EncryptedJoinAccept(raw=phy)
    if mtype is MType.RejoinRequest:
        return _decode_rejoin(phy)
    return _decode_data(phy, mtype)


def _decode_join_request(phy: bytes) -> JoinRequest:
    if len(phy) != JOIN_REQUEST_LEN:
        raise PhyError(f"JoinRequest of {len(phy)} bytes: expected {JOIN_REQUEST_LEN}")
    return JoinRequest(
        join_eui=eui_from_wire(phy[1:9]),
        dev_eui=eui_from_wire(phy[9:17]),
        dev_nonce=from_wire(phy[17:19]),
        mic=phy[19:23],
    )


def _decode_rejoin(phy: bytes) -> RejoinRequest:
    if len(phy) < 2 + MIC_LEN:
        raise PhyError(f"RejoinRequest of {len(phy)} bytes: too short for a type and a MIC")
    return RejoinRequest(rejoin_type=phy[1], body=phy[1:-MIC_LEN], mic=phy[-MIC_LEN:])


def _decode_data(phy: bytes, mtype: MType) -> DataFrame:
    if len(phy) < DATA_MIN_LEN:
        raise PhyError(
            f"{mtype.name} of {len(phy)} bytes: at least {DATA_MIN_LEN} needed "
            "(MHDR, DevAddr, FCtrl, FCnt, MIC)"
        )
    uplink = mtype in UPLINK_MTYPES
    fctrl = phy[5]
    fopts_len = fctrl & 0x0F
    fopts_end = 1 + FHDR_MIN + fopts_len
    mic_at = len(phy) - MIC_LEN
    if fopts_end > mic_at:
        raise PhyError(
            f"FCtrl (byte 5) = {fctrl:#04x} announces FOptsLen {fopts_len}, but only "
            f"{mic_at - (1 + FHDR_MIN)} byte(s) lie between FCnt and the MIC"
        )
    fport: int | None = None
    frm_payload = b""
    if mic_at > fopts_end:
        fport = phy[fopts_end]
        frm_payload = phy[fopts_end + 1 : mic_at]
        if fport == 0 and fopts_len:
            raise PhyError(
                f"FPort 0 (byte {fopts_end}) with FOptsLen {fopts_len}: MAC commands may not "
                "be in FOpts and FRMPayload at once"
            )
    return DataFrame(
        mtype=mtype,
        dev_addr=from_wire(phy[1:5]),
        adr=bool(fctrl & 0x80),
        adr_ack_req=uplink and bool(fctrl & 0x40),
        ack=bool(fctrl & 0x20),
        class_b=uplink and bool(fctrl & 0x10),
        fpending=not uplink and bool(fctrl & 0x10),
        fcnt=from_wire(phy[6:8]),
        fopts=phy[8:fopts_end],
        fport=fport,
        frm_payload=frm_payload,
        mic=phy[mic_at:],
    )


def decode_data(phy: bytes) -> DataFrame:
    """Decode bytes that must be a data frame (PhyError otherwise)."""
    frame = decode(phy)
    if not isinstance(frame, DataFrame):
        raise PhyError(f"MHDR (byte 0): {frame.mtype.name} is not a data frame")
    return frame


# --------------------------------------------------------------------------------------
# Join procedure
# --------------------------------------------------------------------------------------


def _mhdr(mtype: MType) -> bytes:
    return bytes([(mtype << 5) | MAJOR_R1])


def encode_join_request(app_key: bytes, join_eui: bytes, dev_eui: bytes, dev_nonce: int) -> bytes:
    """A join-request PHYPayload (what a device sends; simulators use it), MIC included."""
    msg = _mhdr(MType.JoinRequest) + eui_to_wire(join_eui) + eui_to_wire(dev_eui)
    msg += to_wire(dev_nonce, 2)
    return msg + crypto.join_request_mic(app_key, msg)


def verify_join_request(app_key: bytes, phy: bytes) -> bool:
    """True when ``phy`` is a join-request whose MIC matches ``app_key``."""
    frame = decode(phy)
    if not isinstance(frame, JoinRequest):
        raise PhyError(f"MHDR (byte 0): {frame.mtype.name} is not a JoinRequest")
    expected = crypto.join_request_mic(app_key, bytes(phy[:-MIC_LEN]))
    return hmac.compare_digest(expected, frame.mic)


def encode_join_accept(
    app_key: bytes,
    join_nonce: int,
    net_id: bytes | int,
    dev_addr: int,
    rx1_dr_offset: int,
    rx2_dr: int,
    rx_delay: int,
    cflist: bytes | None = None,
) -> bytes:
    """An encrypted join-accept PHYPayload, ready to transmit."""
    _check_range("rx1_dr_offset", rx1_dr_offset, 7)
    _check_range("rx2_dr", rx2_dr, 15)
    _check_range("rx_delay", rx_delay, 15)
    _check_range("join_nonce", join_nonce, (1 << 24) - 1)
    _check_range("dev_addr", dev_addr, (1 << 32) - 1)
    if cflist is not None and len(cflist) != 16:
        raise ValueError(f"cflist must be 16 bytes, got {len(cflist)}")
    mhdr = _mhdr(MType.JoinAccept)
    body = to_wire(join_nonce, 3) + to_wire(crypto.net_id_value(net_id), 3)
    body += to_wire(dev_addr, 4) + bytes([(rx1_dr_offset << 4) | rx2_dr, rx_delay])
    body += cflist or b""
    mic = crypto.join_accept_mic(app_key, mhdr + body)
    return mhdr + crypto.encrypt_join_accept(app_key, body + mic)


def decrypt_join_accept_frame(app_key: bytes, phy: bytes) -> tuple[JoinAccept, bool]:
    """Decrypt a join-accept; returns the fields and whether its MIC matches.

    With a wrong key the fields are noise: only trust them when the flag is True.
    """
    frame = decode(phy)
    if not isinstance(frame, EncryptedJoinAccept):
        raise PhyError(f"MHDR (byte 0): {frame.mtype.name} is not a JoinAccept")
    plain = crypto.decrypt_join_accept(app_key, frame.encrypted)
    body, mic = plain[:-MIC_LEN], plain[-MIC_LEN:]
    ok = hmac.compare_digest(crypto.join_accept_mic(app_key, frame.raw[:1] + body), mic)
    dl_settings = body[10]
    accept = JoinAccept(
        join_nonce=from_wire(body[0:3]),
        net_id=from_wire(body[3:6]),
        dev_addr=from_wire(body[6:10]),
        rx1_dr_offset=(dl_settings >> 4) & 0x07,
        rx2_datarate=dl_settings & 0x0F,
        rx_delay=body[11] & 0x0F,
        cflist=body[12:28] if len(body) > 12 else None,
        mic=mic,
    )
    return accept, ok


def decode_join_accept(app_key: bytes, phy: bytes) -> JoinAccept:
    """Decrypt a join-accept and check its MIC (PhyError when it does not match)."""
    accept, ok = decrypt_join_accept_frame(app_key, phy)
    if not ok:
        raise PhyError("JoinAccept MIC mismatch: wrong AppKey or corrupted frame")
    return accept


# --------------------------------------------------------------------------------------
# Data frames
# --------------------------------------------------------------------------------------


def _check_range(name: str, value: int, high: int) -> None:
    if not isinstance(value, int) or not 0 <= value <= high:
        raise ValueError(f"{name} must be an int in 0..{high}, got {value!r}")


def encode_data(
    mtype: MType,
    dev_addr: int,
    fcnt32: int,
    nwk_s_key: bytes,
    app_s_key: bytes | None,
    fport: int | None = None,
    payload: bytes = b"",
    fopts: bytes = b"",
    adr: bool = False,
    adr_ack_req: bool = False,
    ack: bool = False,
    fpending: bool = False,
    class_b: bool = False,
) -> bytes:
    """A data frame PHYPayload: FRMPayload encrypted, MIC computed over the 32-bit FCnt.

    FPort 0 payloads (MAC commands) are encrypted with the NwkSKey, others with the
    AppSKey (``app_s_key`` may be None when there is no application payload).
    """
    mtype = MType(mtype)
    if mtype not in DATA_MTYPES:
        raise ValueError(f"{mtype.name} is not a data frame type")
    uplink = mtype in UPLINK_MTYPES
    if uplink and fpending:
        raise ValueError("fpending is a downlink flag")
    if not uplink and (adr_ack_req or class_b):
        raise ValueError("adr_ack_req and class_b are uplink flags")
    _check_range("dev_addr", dev_addr, (1 << 32) - 1)
    _check_range("fcnt32", fcnt32, FCNT32_MAX)
    if len(fopts) > 15:
        raise ValueError(f"FOpts holds at most 15 bytes, got {len(fopts)}")
    if fport is None:
        if payload:
            raise ValueError("a payload needs an FPort")
    else:
        _check_range("fport", fport, 255)
        if fport == 0 and fopts:
            raise ValueError("FPort 0 carries MAC commands: FOpts must then be empty")
    fctrl = (0x80 if adr else 0) | (0x20 if ack else 0) | len(fopts)
    if uplink:
        fctrl |= (0x40 if adr_ack_req else 0) | (0x10 if class_b else 0)
    else:
        fctrl |= 0x10 if fpending else 0
    msg = _mhdr(mtype) + to_wire(dev_addr, 4) + bytes([fctrl]) + to_wire(fcnt32 & 0xFFFF, 2)
    msg += bytes(fopts)
    if fport is not None:
        key = nwk_s_key if fport == 0 else app_s_key
        if key is None:
            raise ValueError(f"FPort {fport} needs the AppSKey")
        msg += bytes([fport]) + crypto.crypt_frm_payload(key, dev_addr, fcnt32, uplink, payload)
    if len(msg) + MIC_LEN > PHY_MAX_LEN:
        raise ValueError(
            f"frame would be {len(msg) + MIC_LEN} bytes: LoRa carries at most {PHY_MAX_LEN}"
        )
    return msg + crypto.data_mic(nwk_s_key, msg, dev_addr, fcnt32, uplink)


def _check_fcnt32(frame: DataFrame, fcnt32: int) -> None:
    _check_range("fcnt32", fcnt32, FCNT32_MAX)
    if fcnt32 & 0xFFFF != frame.fcnt:
        raise ValueError(f"fcnt32 {fcnt32:#x} does not end in the frame's FCnt {frame.fcnt:#06x}")


def verify_mic(frame_bytes: bytes, nwk_s_key: bytes, fcnt32: int) -> bool:
    """True when the data frame's MIC matches ``nwk_s_key`` at the 32-bit counter ``fcnt32``."""
    frame = decode_data(frame_bytes)
    _check_fcnt32(frame, fcnt32)
    expected = crypto.data_mic(
        nwk_s_key, bytes(frame_bytes[:-MIC_LEN]), frame.dev_addr, fcnt32, frame.uplink
    )
    return hmac.compare_digest(expected, frame.mic)


def decrypt_payload(frame: DataFrame, key: bytes, fcnt32: int) -> bytes:
    """The plaintext FRMPayload. ``key``: NwkSKey for FPort 0, AppSKey otherwise."""
    _check_fcnt32(frame, fcnt32)
    return crypto.crypt_frm_payload(key, frame.dev_addr, fcnt32, frame.uplink, frame.frm_payload)


def fcnt32(last_fcnt32: int | None, wire16: int, max_fcnt_gap: int = 16384) -> int | None:
    """The 32-bit frame counter a 16-bit wire value stands for, or None.

    Rule: the counter only moves forward. The candidate is the smallest value greater
    than ``last_fcnt32`` whose low 16 bits are ``wire16`` (so 0xFFFF then 0x0000 gives
    0x10000). It is accepted when it lies at most ``max_fcnt_gap`` ahead; otherwise
    (a replay, an old frame, or too many frames lost to tell) the result is None.
    A repeated counter is None too: telling a retransmission (NbTrans, same bytes) from
    a replay is the caller's job. ``last_fcnt32`` None means no frame accepted yet in
    this session: counters start at 0 at the join, so the high half is 0.
    """
    _check_range("wire16", wire16, 0xFFFF)
    if not 0 < max_fcnt_gap < FCNT_MODULO:
        # A gap of 65536 or more would accept the same wire value again: a replay.
        raise ValueError(f"max_fcnt_gap must be in 1..65535, got {max_fcnt_gap}")
    if last_fcnt32 is None:
        return wire16
    _check_range("last_fcnt32", last_fcnt32, FCNT32_MAX)
    candidate = (last_fcnt32 & ~0xFFFF) | wire16
    if candidate <= last_fcnt32:
        candidate += FCNT_MODULO
    if candidate - last_fcnt32 > max_fcnt_gap or candidate > FCNT32_MAX:
        return None
    return candidate


# --------------------------------------------------------------------------------------
# Presentation
# --------------------------------------------------------------------------------------


def dev_addr_hex(dev_addr: int) -> str:
    """DevAddr as usually written: 8 hex digits, most significant first."""
    return f"{dev_addr:08x}"


def frame_to_dict(frame: Frame | JoinAccept) -> dict[str, Any]:
    """The fields of a frame as JSON-ready values (bytes as hex, DevAddr/EUIs as written).

    FRMPayload is shown as on the wire; decrypting needs keys (see ``decode_cli``).
    """
    out: dict[str, Any] = {"mtype": frame.mtype.name}
    if isinstance(frame, DataFrame):
        fctrl: dict[str, Any] = {"adr": frame.adr}
        if frame.uplink:
            fctrl["adr_ack_req"] = frame.adr_ack_req
        else:
            fctrl["fpending"] = frame.fpending
        fctrl["ack"] = frame.ack
        if frame.uplink:
            fctrl["class_b"] = frame.class_b
        fctrl["fopts_len"] = len(frame.fopts)
        out.update(
            direction="uplink" if frame.uplink else "downlink",
            major=frame.major,
            dev_addr=dev_addr_hex(frame.dev_addr),
            fctrl=fctrl,
            fcnt=frame.fcnt,
            fopts=frame.fopts.hex(),
            fport=frame.fport,
            frm_payload=frame.frm_payload.hex(),
            mic=frame.mic.hex(),
        )
    elif isinstance(frame, JoinRequest):
        out.update(
            join_eui=frame.join_eui.hex(),
            dev_eui=frame.dev_eui.hex(),
            dev_nonce=frame.dev_nonce,
            mic=frame.mic.hex(),
        )
    elif isinstance(frame, JoinAccept):
        out.update(
            join_nonce=frame.join_nonce,
            net_id=f"{frame.net_id:06x}",
            dev_addr=dev_addr_hex(frame.dev_addr),
            rx1_dr_offset=frame.rx1_dr_offset,
            rx2_datarate=frame.rx2_datarate,
            rx_delay=frame.rx_delay,
            cflist=frame.cflist.hex() if frame.cflist is not None else None,
            mic=frame.mic.hex(),
        )
        if frame.cflist is not None and frame.cflist[15] == 0:
            # CFList type 0: five extra channel frequencies, 3 octets each in 100 Hz units.
            out["cflist_frequencies_hz"] = [
                from_wire(frame.cflist[i : i + 3]) * 100 for i in range(0, 15, 3)
            ]
    elif isinstance(frame, EncryptedJoinAccept):
        out.update(encrypted=frame.encrypted.hex())
    elif isinstance(frame, RejoinRequest):
        out.update(rejoin_type=frame.rejoin_type, body=frame.body.hex(), mic=frame.mic.hex())
    else:
        out.update(raw=frame.raw.hex())
    return out
