"""``passerelle lighting plan``: what the gateway will do tonight, zone by zone.

The night of ``--date`` runs from noon that day to noon the next. Without ``--json`` or
``--svg`` a table is printed for the installer; ``--json`` is the contract integrators
parse; ``--svg FILE`` draws the night for a commune's elected officials.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import date
from typing import Any

from rich.console import Console
from rich.table import Table


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="passerelle lighting plan", description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="the gateway's configuration (TOML)")
    p.add_argument("--date", required=True, help="the night's date, YYYY-MM-DD")
    p.add_argument("--zone", action="append", help="only this zone (repeatable)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the plan as JSON")
    out.add_argument("--svg", metavar="FILE", help="draw the night as an SVG file")
    return p


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    from ..config import ConfigError, parse, read_toml
    from .plan import plan_night

    try:
        night = date.fromisoformat(args.date)
    except ValueError:
        print(f"error: --date {args.date!r}: expected YYYY-MM-DD", file=sys.stderr)
        return 2
    try:
        data, base_dir = read_toml(args.config)
        # Planning needs no broker: the gateway's certificates are not on the installer's
        # laptop, and their absence must not hide tonight's plan.
        if isinstance(data, dict) and "uplink" in data:
            data["uplink"] = {"url": "mqtt://127.0.0.1:1883", "allow_plaintext": True}
        cfg = parse(data, base_dir)
    except ConfigError as exc:
        print(f"error: {args.config}:", file=sys.stderr)
        for path, reason in exc.errors:
            print(f"  {path}: {reason}", file=sys.stderr)
        return 2
    lc = cfg.lighting
    if lc is None:
        print(f"error: {args.config} has no [lighting] section", file=sys.stderr)
        return 2
    zones = args.zone
    if zones:
        unknown = [z for z in zones if z not in lc.zones]
        if unknown:
            print(f"error: --zone {', '.join(unknown)}: not in [lighting.zones] "
                  f"(zones: {', '.join(lc.zones)})", file=sys.stderr)
            return 2
    plan = plan_night(lc, night, zones).to_json(lc)
    if args.json:
        print(json.dumps(plan, indent=2, ensure_ascii=False))
        return 0
    if args.svg:
        from .svg import render_night_svg

        try:
            with open(args.svg, "w", encoding="utf-8") as f:
                f.write(render_night_svg(plan))
        except OSError as exc:
            print(f"error: cannot write {args.svg}: {exc.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {args.svg}")
        return 0
    _table(plan)
    return 0


def _hhmm(iso: str | None) -> str:
    return "—" if iso is None else iso[11:16]


def _table(plan: dict[str, Any]) -> None:
    console = Console()
    sun = plan["sun"]
    console.print(
        f"[bold]Night of {plan['night']}[/] at {plan['location']['lat']}, "
        f"{plan['location']['lon']} ({plan['location']['tz']}): "
        f"sunset {_hhmm(sun['sunset'])}, civil dusk {_hhmm(sun['civil_dusk'])}, "
        f"civil dawn {_hhmm(sun['civil_dawn'])}, sunrise {_hhmm(sun['sunrise'])}"
        + (f" (polar {sun['polar']})" if sun.get("polar") else "")
    )
    table = Table()
    for col in ("zone", "program", "steps", "used kWh", "all-night kWh", "saved"):
        table.add_column(col, justify="right" if "kWh" in col or col == "saved" else "left")
    for name, z in plan["zones"].items():
        steps = "  ".join(f"{_hhmm(t)} {lv}%" for t, lv in z["steps"][1:]) or "off all night"
        base = z["baseline_wh"]
        saved = f"{100 * (1 - z['energy_wh'] / base):.0f} %" if base else "—"
        table.add_row(name, z["program"] or "(safe default)", steps,
                      f"{z['energy_wh'] / 1000:.2f}", f"{base / 1000:.2f}", saved)
    console.print(table)
