"""LoRaWAN 1.0.x security primitives: MICs, FRMPayload keystream, join-accept, session keys.

AES and AES-CMAC come from ``cryptography``; this module only lays out the blocks the
specification defines (LoRaWAN 1.0.4, sections 4.3.3, 4.4, 6.2.4-6.2.5).

It is also the ONE place that knows the wire byte order: every multi-octet field of
LoRaWAN (DevAddr, FCnt, nonces, NetID, EUIs, frequencies) travels least significant
octet first, while people write DevAddr, NetID and EUIs most significant first.
:func:`to_wire`, :func:`from_wire`, :func:`eui_to_wire` and :func:`eui_from_wire` are
used by ``phy`` and ``mac`` so that no other module reverses bytes by hand.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.cmac import CMAC

KEY_LEN = 16
BLOCK = 16

# --------------------------------------------------------------------------------------
# Wire byte order (LoRaWAN 1.0.4 section 4: "the octet order for all multi-octet fields
# is little endian")
# --------------------------------------------------------------------------------------


def to_wire(value: int, size: int) -> bytes:
    """``value`` as ``size`` octets, least significant first, as it travels on air."""
    if value < 0 or value >= 1 << (8 * size):
        raise ValueError(f"{value} does not fit in {size} octet(s)")
    return value.to_bytes(size, "little")


def from_wire(data: bytes) -> int:
    """The integer a little-endian wire field carries."""
    return int.from_bytes(data, "little")


def eui_to_wire(eui: bytes) -> bytes:
    """An EUI-64 as written (``70B3D57ED00000DC``) -> its 8 octets on air (reversed)."""
    if len(eui) != 8:
        raise ValueError(f"an EUI-64 has 8 octets, got {len(eui)}")
    return bytes(reversed(eui))


def eui_from_wire(data: bytes) -> bytes:
    """8 octets on air -> the EUI-64 as people write it (most significant first)."""
    if len(data) != 8:
        raise ValueError(f"an EUI-64 has 8 octets, got {len(data)}")
    return bytes(reversed(data))


def net_id_value(net_id: bytes | int) -> int:
    """A NetID given as an int or as 3 octets written big-endian (``bytes.fromhex("000013")``)."""
    if isinstance(net_id, int):
        if not 0 <= net_id < 1 << 24:
            raise ValueError(f"NetID {net_id:#x} does not fit in 24 bits")
        return net_id
    if len(net_id) != 3:
        raise ValueError(f"a NetID has 3 octets, got {len(net_id)}")
    return int.from_bytes(net_id, "big")


# --------------------------------------------------------------------------------------
# AES building blocks
# --------------------------------------------------------------------------------------


def _check_key(key: bytes, name: str = "key") -> None:
    # The message names the key's role, never its value: keys must not reach logs.
    if not isinstance(key, bytes | bytearray) or len(key) != KEY_LEN:
        size = len(key) if isinstance(key, bytes | bytearray) else type(key).__name__
        raise ValueError(f"{name} must be {KEY_LEN} bytes, got {size}")


def _aes_ecb_encrypt(key: bytes, data: bytes) -> bytes:
    encryptor = Cipher(algorithms.AES(bytes(key)), modes.ECB()).encryptor()
    return encryptor.update(data) + encryptor.finalize()


def _aes_ecb_decrypt(key: bytes, data: bytes) -> bytes:
    decryptor = Cipher(algorithms.AES(bytes(key)), modes.ECB()).decryptor()
    return decryptor.update(data) + decryptor.finalize()


def aes_cmac(key: bytes, msg: bytes) -> bytes:
    """AES-128 CMAC (RFC 4493) of ``msg``: 16 bytes."""
    _check_key(key)
    mac = CMAC(algorithms.AES(bytes(key)))
    mac.update(bytes(msg))
    return mac.finalize()


def _direction(uplink: bool) -> int:
    # Dir octet of the B0 and Ai blocks: 0 for uplink, 1 for downlink.
    return 0 if uplink else 1


# --------------------------------------------------------------------------------------
# Data frames
# --------------------------------------------------------------------------------------


def data_mic(
    nwk_s_key: bytes, msg_without_mic: bytes, dev_addr: int, fcnt32: int, uplink: bool
) -> bytes:
    """MIC of a data frame (spec 4.4): ``cmac(NwkSKey, B0 | MHDR..FRMPayload)[0:4]``.

    B0 = 0x49 | 4 x 0x00 | Dir | DevAddr | FCnt (32 bits) | 0x00 | len(msg).
    The full 32-bit counter goes in, although only its low 16 bits travel.
    """
    _check_key(nwk_s_key, "NwkSKey")
    if len(msg_without_mic) > 255:
        raise ValueError(f"message of {len(msg_without_mic)} bytes: B0 holds a length <= 255")
    b0 = (
        bytes([0x49, 0, 0, 0, 0, _direction(uplink)])
        + to_wire(dev_addr, 4)
        + to_wire(fcnt32, 4)
        + bytes([0, len(msg_without_mic)])
    )
    return aes_cmac(nwk_s_key, b0 + msg_without_mic)[:4]


def crypt_frm_payload(
    key: bytes, dev_addr: int, fcnt32: int, uplink: bool, payload: bytes
) -> bytes:
    """Encrypt or decrypt an FRMPayload (spec 4.3.3); the operation is its own inverse.

    The keystream is AES(key, A_i) for A_i = 0x01 | 4 x 0x00 | Dir | DevAddr | FCnt | 0x00 | i,
    i counting 16-byte blocks from 1; the payload is XORed with it.
    """
    _check_key(key, "payload key")
    if not payload:
        return b""
    head = bytes([0x01, 0, 0, 0, 0, _direction(uplink)]) + to_wire(dev_addr, 4)
    head += to_wire(fcnt32, 4) + b"\x00"
    blocks = (len(payload) + BLOCK - 1) // BLOCK
    a_blocks = b"".join(head + bytes([i]) for i in range(1, blocks + 1))
    stream = _aes_ecb_encrypt(key, a_blocks)
    return bytes(p ^ s for p, s in zip(payload, stream, strict=False))


# --------------------------------------------------------------------------------------
# Join procedure (1.0.x)
# --------------------------------------------------------------------------------------


def join_request_mic(app_key: bytes, msg_without_mic: bytes) -> bytes:
    """MIC of a join-request (spec 6.2.4): ``cmac(AppKey, MHDR|JoinEUI|DevEUI|DevNonce)[0:4]``."""
    _check_key(app_key, "AppKey")
    return aes_cmac(app_key, msg_without_mic)[:4]


def join_accept_mic(app_key: bytes, msg_without_mic: bytes) -> bytes:
    """MIC of a join-accept (spec 6.2.5), over the PLAINTEXT ``MHDR|JoinNonce|..|CFList``."""
    _check_key(app_key, "AppKey")
    return aes_cmac(app_key, msg_without_mic)[:4]


def _check_join_accept_len(data: bytes) -> None:
    if len(data) not in (16, 32):
        raise ValueError(
            f"join-accept body (after MHDR, with MIC) is {len(data)} bytes; expected 16 or 32"
        )


def encrypt_join_accept(app_key: bytes, plaintext_after_mhdr_including_mic: bytes) -> bytes:
    """Network side: encrypt a join-accept body with AES *decrypt* (spec 6.2.5).

    The spec uses the decrypt direction so that a device, which only needs AES encrypt
    for everything else, can recover the body with AES encrypt.
    """
    _check_key(app_key, "AppKey")
    _check_join_accept_len(plaintext_after_mhdr_including_mic)
    return _aes_ecb_decrypt(app_key, plaintext_after_mhdr_including_mic)


def decrypt_join_accept(app_key: bytes, ciphertext_after_mhdr: bytes) -> bytes:
    """Device side (and the decoder): recover a join-accept body with AES encrypt."""
    _check_key(app_key, "AppKey")
    _check_join_accept_len(ciphertext_after_mhdr)
    return _aes_ecb_encrypt(app_key, ciphertext_after_mhdr)


def derive_session_keys(
    app_key: bytes, join_nonce: int, net_id: bytes | int, dev_nonce: int
) -> tuple[bytes, bytes]:
    """(NwkSKey, AppSKey) of a 1.0.x session (spec 6.2.5).

    Key = aes128_encrypt(AppKey, tag | JoinNonce | NetID | DevNonce | pad16), tag 0x01 for
    NwkSKey and 0x02 for AppSKey, every field in wire order. ``net_id`` is an int or
    3 octets written big-endian.
    """
    _check_key(app_key, "AppKey")
    if not 0 <= join_nonce < 1 << 24:
        raise ValueError(f"JoinNonce {join_nonce:#x} does not fit in 24 bits")
    if not 0 <= dev_nonce < 1 << 16:
        raise ValueError(f"DevNonce {dev_nonce:#x} does not fit in 16 bits")
    body = to_wire(join_nonce, 3) + to_wire(net_id_value(net_id), 3) + to_wire(dev_nonce, 2)
    pad = bytes(BLOCK - 1 - len(body))
    nwk_s_key = _aes_ecb_encrypt(app_key, b"\x01" + body + pad)
    app_s_key = _aes_ecb_encrypt(app_key, b"\x02" + body + pad)
    return nwk_s_key, app_s_key
