"""``passerelle modbus read``: read one value from a Modbus device, for the installer.

Commissioning a cabinet meter is mostly finding out why it does not answer. This reads one
register through the same bus code as the agent and says, in one line, what went wrong and
what to check. Exit status: 0 read, 1 the device did not answer or refused, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
from typing import Any

from .bus import (
    CrcError,
    Disconnected,
    ExceptionReply,
    GarbledReply,
    ModbusBus,
    ModbusError,
    Timeout,
)
from .registers import BYTE_ORDERS, WORD_TYPES, decode, word_count

# What an installer can do about each exception code.
_EXCEPTION_HINTS = {
    0x01: "the device does not support this function: try --function input or holding",
    0x02: "the register does not exist on this device: check the address and --function",
    0x03: "the device refused the count or value: check --type (register count)",
    0x04: "the device reports an internal failure",
    0x06: "the device is busy: try again",
    0x0A: "the gateway has no path to this unit: check the gateway's serial settings",
    0x0B: "the gateway got no answer from this unit: check the RS-485 side and the unit id",
}


class _UsageError(ValueError):
    pass


def _address(text: str) -> int:
    try:
        value = int(text, 0)  # decimal, or 0x hex
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an address: {text!r} (decimal or 0x hex)") from None
    if not 0 <= value <= 0xFFFF:
        raise argparse.ArgumentTypeError(f"address {text} out of 0..65535")
    return value


def _unit(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a unit id: {text!r}") from None
    if not 1 <= value <= 247:
        raise argparse.ArgumentTypeError(
            f"unit id {value} out of 1..247 (0 is broadcast, never answered)"
        )
    return value


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="passerelle modbus read",
        description="Read one value from a Modbus RTU (serial) or Modbus TCP device.",
        epilog="Exit status: 0 read, 1 no answer / bad reply / exception, 2 bad arguments. "
        "Example: passerelle modbus read --serial /dev/ttyUSB0 --baud 9600 --unit 1 "
        "--register 0x0000 --function input --type float32",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--serial", metavar="DEV", help="serial device, e.g. /dev/ttyUSB0")
    where.add_argument("--tcp", metavar="HOST:PORT", help="Modbus TCP device or gateway")
    p.add_argument("--baud", type=int, metavar="N", help="baud rate (required with --serial)")
    p.add_argument("--parity", choices=["N", "E", "O"], default="N", help="parity (default N)")
    p.add_argument("--unit", type=_unit, required=True, metavar="N", help="unit id 1..247")
    p.add_argument(
        "--register",
        type=_address,
        required=True,
        metavar="ADDR",
        help="protocol address (0x0000 = 30001/40001)",
    )
    p.add_argument(
        "--function",
        choices=["holding", "input"],
        default="holding",
        help="holding (3, default) or input (4)",
    )
    p.add_argument("--type", choices=WORD_TYPES, required=True, dest="type_")
    p.add_argument(
        "--order", choices=BYTE_ORDERS, default="ABCD", help="byte order (default ABCD, big endian)"
    )
    p.add_argument("--scale", type=float, default=1.0, metavar="X", help="multiply the value by X")
    p.add_argument(
        "--timeout", type=_positive, default=1.0, metavar="S", help="seconds to wait (default 1)"
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _tcp_target(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise _UsageError(f"--tcp wants HOST:PORT with a port in 1..65535, got {text!r}")
    return host.strip("[]"), int(port)


def _bus(args: argparse.Namespace) -> ModbusBus:
    if args.serial is not None:
        if args.baud is None:
            raise _UsageError("--baud is required with --serial")
        if args.baud <= 0:
            raise _UsageError(f"--baud must be > 0, got {args.baud}")
        return ModbusBus.serial(
            args.serial, baud=args.baud, parity=args.parity, timeout=args.timeout, retries=0
        )
    if args.baud is not None:
        raise _UsageError("--baud only applies to --serial")
    host, port = _tcp_target(args.tcp)
    return ModbusBus.tcp(host, port, timeout=args.timeout, retries=0)


def _explain(exc: ModbusError, args: argparse.Namespace, bus: ModbusBus) -> str:
    unit = args.unit
    if isinstance(exc, Timeout):
        if args.serial is not None:
            return (
                f"no answer from unit {unit} on {bus.description} within {args.timeout:g} s: "
                "check the wiring (A/B swapped?), baud rate, parity and the unit id"
            )
        within = f"within {args.timeout:g} s"
        return f"no answer from unit {unit} at {bus.description} {within}: check the unit id"
    if isinstance(exc, CrcError):
        return (
            f"the reply from unit {unit} failed its CRC check: check for noise, termination, "
            "and that baud rate and parity match the device"
        )
    if isinstance(exc, GarbledReply):
        return f"{exc}: check that baud rate and parity match the device"
    if isinstance(exc, ExceptionReply):
        hint = _EXCEPTION_HINTS.get(exc.code, "see the device manual")
        return f"unit {unit} answered exception {exc.code:02X} ({exc.meaning}): {hint}"
    if isinstance(exc, Disconnected):
        return f"{exc}"
    return str(exc)


async def _read(args: argparse.Namespace, bus: ModbusBus) -> list[int]:
    async with bus:
        words = await bus.read(args.unit, args.function, args.register, word_count(args.type_))
    return [int(w) for w in words]


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a usage error argparse already reported
        return exc.code if isinstance(exc.code, int) else 2
    try:
        bus = _bus(args)
    except _UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        words = asyncio.run(_read(args, bus))
    except ModbusError as exc:
        print(f"error: {_explain(exc, args, bus)}", file=sys.stderr)
        return 1
    value = decode(words, args.type_, args.order, scale=args.scale)
    hexed = " ".join(f"0x{w:04X}" for w in words)
    if args.json:
        out: dict[str, Any] = {
            "value": value if not (isinstance(value, float) and not math.isfinite(value)) else None,
            "registers": words,
            "unit": args.unit,
            "function": args.function,
            "address": args.register,
            "type": args.type_,
            "order": args.order,
            "scale": args.scale,
        }
        if out["value"] is None:
            out["not_finite"] = str(value)  # NaN/inf are not JSON
        print(json.dumps(out))
    else:
        # A float32 holds about 7 significant digits: print those, not the float64 noise
        # of its conversion (229.47830200195312 is 229.4783 on the meter's display).
        shown = f"{value:.7g}" if args.type_ == "float32" and isinstance(value, float) else value
        print(f"{shown}")
        print(
            f"unit {args.unit} {args.function} {args.register:#06x} {args.type_} {args.order}: "
            f"registers {hexed}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
