"""``passerelle lorawan airtime``: time on air of one LoRa frame, for installers.

    passerelle lorawan airtime --sf 12 --bw 125 --cr 4/5 --size 51
    passerelle lorawan airtime --sf 9 --bw 125 --size 24 --no-crc --json

Prints the time on air, the symbol count, whether low data rate optimisation was used,
and how many such frames fit in one hour at 0.1 %, 1 % and 10 % duty cycle (the EU868
sub-band limits). Invalid arguments exit 2 with a one-line reason.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import NoReturn

from passerelle.lorawan.airtime import Airtime, frame_airtime, parse_coding_rate

PROG = "passerelle lorawan airtime"
EXIT_USAGE = 2
# The EU868 sub-band duty cycles (ETSI EN 300 220-2): 0.1 % (K, N), 1 % (L, M, Q), 10 % (P).
DUTY_CYCLES: tuple[tuple[str, float], ...] = (("0.1%", 0.001), ("1%", 0.01), ("10%", 0.10))
HOUR_S = 3600.0


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the whole usage block; one line says what is wrong.
        raise _UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog=PROG, description="Time on air of one LoRa frame (Semtech AN1200.13).")
    p.add_argument("--sf", type=int, required=True, help="spreading factor, 6..12")
    p.add_argument("--bw", type=float, required=True, help="bandwidth in kHz (125, 250, 500...)")
    p.add_argument("--cr", default="4/5", help="coding rate 4/5..4/8 (default 4/5)")
    p.add_argument("--size", type=int, required=True, help="PHY payload bytes, 0..255")
    p.add_argument("--preamble", type=int, default=8, help="preamble symbols (default 8)")
    p.add_argument("--implicit-header", action="store_true", help="no explicit LoRa header")
    p.add_argument("--no-crc", action="store_true", help="no payload CRC (LoRaWAN downlinks)")
    p.add_argument(
        "--ldro",
        choices=("auto", "on", "off"),
        default="auto",
        help="low data rate optimisation (auto: on when a symbol lasts >= 16 ms)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def frames_per_hour(airtime_s: float, duty_cycle: float) -> int:
    """Whole frames of ``airtime_s`` that fit in one hour's allowance."""
    # A hair of tolerance so 36 s / 3.6 s is 10 frames, not 9 by float rounding.
    return math.floor(duty_cycle * HOUR_S / airtime_s + 1e-9)


def _report(args: argparse.Namespace, cr: int, result: Airtime) -> dict[str, object]:
    return {
        "airtime_ms": round(result.ms, 6),
        "symbols": result.symbols,
        "preamble_symbols": result.preamble_symbols,
        "payload_symbols": result.payload_symbols,
        "symbol_time_ms": round(result.symbol_time_s * 1000.0, 6),
        "ldro": result.ldro,
        "ldro_mode": args.ldro,
        "frames_per_hour": {name: frames_per_hour(result.seconds, dc) for name, dc in DUTY_CYCLES},
        "parameters": {
            "sf": args.sf,
            "bw_khz": args.bw,
            "cr": f"4/{cr + 4}",
            "size": args.size,
            "preamble": args.preamble,
            "implicit_header": args.implicit_header,
            "crc": not args.no_crc,
        },
    }


def _print_human(args: argparse.Namespace, cr: int, result: Airtime) -> None:
    header = "implicit header" if args.implicit_header else "explicit header"
    crc = "no CRC" if args.no_crc else "CRC"
    print(
        f"time on air: {result.ms:.3f} ms  "
        f"(SF{args.sf}, {args.bw:g} kHz, CR 4/{cr + 4}, {args.size} bytes, "
        f"preamble {args.preamble}, {header}, {crc})"
    )
    print(
        f"symbols: {result.symbols:g} = preamble {result.preamble_symbols:g} "
        f"+ header/payload {result.payload_symbols}; "
        f"symbol time {result.symbol_time_s * 1000:.3f} ms"
    )
    if args.ldro == "auto":
        why = "auto: symbol time " + (">= 16 ms" if result.ldro else "< 16 ms")
    else:
        why = "forced by --ldro"
    print(f"low data rate optimisation: {'on' if result.ldro else 'off'} ({why})")
    fits = ", ".join(
        f"{frames_per_hour(result.seconds, dc)} at {name} ({dc * HOUR_S:g} s)"
        for name, dc in DUTY_CYCLES
    )
    print(f"frames per hour: {fits}")


def main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    ldro = {"auto": None, "on": True, "off": False}[args.ldro]
    try:
        cr = parse_coding_rate(args.cr)
        result = frame_airtime(
            args.sf,
            args.bw,
            args.size,
            cr=cr,
            preamble=args.preamble,
            implicit_header=args.implicit_header,
            crc=not args.no_crc,
            ldro=ldro,
        )
    except ValueError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(_report(args, cr, result), sort_keys=True))
    else:
        _print_human(args, cr, result)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
