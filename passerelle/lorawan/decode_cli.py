"""``passerelle lorawan decode``: show every field of a LoRaWAN 1.0.x frame.

A debugging tool for the field: paste a frame from a packet forwarder log (base64) or a
hex dump, give whatever keys you have, and see the fields, the MIC verdict and the
decrypted payload. Exit status 0 when the frame decodes (whatever the MIC verdict),
2 when it is malformed or an argument is bad, with one ``error: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import sys
from typing import Any

from passerelle.lorawan import mac, phy

_HEX = re.compile(r"^(?:[0-9a-fA-F]{2})+$")


class _InputError(ValueError):
    """A bad argument (frame text or key): reported like a malformed frame."""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="passerelle lorawan decode",
        description="Decode a LoRaWAN 1.0.x PHYPayload and print every field.",
        epilog="FRMPayload is decrypted with the NwkSKey for FPort 0 and the AppSKey otherwise. "
        "Exit status: 0 decoded (even with a bad MIC), 2 malformed frame or bad argument.",
    )
    p.add_argument(
        "frame",
        metavar="HEX",
        help="the PHYPayload in hex (e.g. 40F17DBE49...) or in base64 as packet forwarders "
        "write it (e.g. QPF9vkkA...); a string made only of hex digit pairs is read as hex "
        "(use --base64 to force base64)",
    )
    p.add_argument("--base64", action="store_true", help="read HEX as base64 even if it looks hex")
    p.add_argument("--nwkskey", metavar="K", help="NwkSKey (32 hex digits): MIC check, FPort 0")
    p.add_argument("--appskey", metavar="K", help="AppSKey (32 hex digits): application payload")
    p.add_argument("--appkey", metavar="K", help="AppKey (32 hex digits): join frames")
    p.add_argument(
        "--fcnt-msb",
        type=int,
        default=0,
        metavar="N",
        help="upper 16 bits of the 32-bit frame counter (default 0), for MIC and decryption",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _frame_bytes(text: str, force_base64: bool) -> bytes:
    text = text.strip()
    if not text:
        raise _InputError("empty frame")
    if not force_base64:
        candidate = text[2:] if text[:2].lower() == "0x" else text
        if _HEX.match(candidate):
            return bytes.fromhex(candidate)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        kind = "base64" if force_base64 else "neither hex (pairs of hex digits) nor base64"
        raise _InputError(f"frame is not {kind}") from None


def _key(value: str | None, option: str) -> bytes | None:
    if value is None:
        return None
    value = value.strip()
    if not re.fullmatch(r"[0-9a-fA-F]{32}", value):
        # The message never echoes the value: it is a secret.
        raise _InputError(f"{option} must be 32 hex digits (16 bytes)")
    return bytes.fromhex(value)


def describe(
    raw: bytes,
    *,
    nwk_s_key: bytes | None = None,
    app_s_key: bytes | None = None,
    app_key: bytes | None = None,
    fcnt_msb: int = 0,
) -> dict[str, Any]:
    """Everything the decoder can tell about ``raw`` with the keys given (PhyError if bad)."""
    frame = phy.decode(raw)
    out = phy.frame_to_dict(frame)
    out["mic_ok"] = None
    if isinstance(frame, phy.DataFrame):
        _describe_data(raw, frame, out, nwk_s_key, app_s_key, fcnt_msb)
    elif isinstance(frame, phy.JoinRequest):
        if app_key is not None:
            out["mic_ok"] = phy.verify_join_request(app_key, raw)
    elif isinstance(frame, phy.EncryptedJoinAccept) and app_key is not None:
        accept, ok = phy.decrypt_join_accept_frame(app_key, raw)
        out["mic_ok"] = ok
        if ok:  # with a wrong AppKey the "fields" would be noise
            out.update(phy.frame_to_dict(accept))
    return out


def _describe_data(
    raw: bytes,
    frame: phy.DataFrame,
    out: dict[str, Any],
    nwk_s_key: bytes | None,
    app_s_key: bytes | None,
    fcnt_msb: int,
) -> None:
    fcnt32 = (fcnt_msb << 16) | frame.fcnt
    out["fcnt32"] = fcnt32
    if nwk_s_key is not None:
        out["mic_ok"] = phy.verify_mic(raw, nwk_s_key, fcnt32)
    key = nwk_s_key if frame.fport == 0 else app_s_key
    plain: bytes | None = None
    if frame.frm_payload and key is not None:
        plain = phy.decrypt_payload(frame, key, fcnt32)
        out["frm_payload"] = plain.hex()
    out["frm_payload_decrypted"] = plain is not None
    # FOpts travel in clear in 1.0.x; an FPort 0 payload is MAC commands once decrypted.
    commands_bytes = frame.fopts or (plain if frame.fport == 0 else None)
    if commands_bytes:
        parse = mac.parse_uplink_commands if frame.uplink else mac.parse_downlink_commands
        try:
            out["mac_commands"] = [command.to_dict() for command in parse(commands_bytes)]
        except phy.PhyError as exc:
            out["mac_commands_error"] = str(exc)


def _lines(value: Any, prefix: str) -> list[str]:
    if isinstance(value, dict):
        return [line for k, v in value.items() for line in _lines(v, f"{prefix}.{k}")]
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return [line for i, item in enumerate(value) for line in _lines(item, f"{prefix}[{i}]")]
    shown = "-" if value is None else json.dumps(value) if isinstance(value, bool) else value
    return [f"{prefix}: {shown}"]


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else 2
    try:
        if not 0 <= args.fcnt_msb <= 0xFFFF:
            raise _InputError("--fcnt-msb must be in 0..65535")
        raw = _frame_bytes(args.frame, args.base64)
        info = describe(
            raw,
            nwk_s_key=_key(args.nwkskey, "--nwkskey"),
            app_s_key=_key(args.appskey, "--appskey"),
            app_key=_key(args.appkey, "--appkey"),
            fcnt_msb=args.fcnt_msb,
        )
    except ValueError as exc:  # PhyError, a bad argument: one line, never a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(info))
    else:
        for key, value in info.items():
            for line in _lines(value, key):
                print(line)
    return 0
