"""``passerelle``: the one console script.

  passerelle run [--config FILE]        the agent (production entry point)
  passerelle check-config [FILE]        validate a config: every error with its path; exit 2
  passerelle ctl {keygen,sign,command,push,status,watch} ...
                                        operators: sign configurations and commands, push
                                        them, read the fleet's state (ctl --help)
  passerelle provision --gateway-id ID --broker URL ...
                                        installers: a gateway's key, CSR, starter config and
                                        a street-side checklist
  passerelle service {install,print,verify}
                                        the systemd unit
  passerelle demo [--duration S] [--json]
                                        the agent against simulated street equipment and an
                                        embedded broker, with a live view
  passerelle lorawan decode HEX [--nwkskey K] [--appskey K] [--appkey K] [--json]
                                        every field of a LoRaWAN frame (exit 2 if malformed)
  passerelle lorawan airtime --sf N --bw KHZ --cr 4/5 --size BYTES [--json]
                                        LoRa time on air, and how many frames fit per hour
  passerelle modbus read (--serial DEV --baud N | --tcp HOST:PORT) --unit N --register ADDR
                         --type T [--function F] [--order O] [--scale X] [--json]
                                        one register block of a meter, for installers
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from . import __version__
from .config import DEFAULT_PATH, ConfigError, key_file_warnings, load, summary

EXIT_CONFIG = 2


def _load_or_exit(path: str) -> object:
    try:
        return load(path)
    except ConfigError as exc:
        print(f"{path}: configuration refused", file=sys.stderr)
        for where, why in exc.errors:
            print(f"  {where}: {why}", file=sys.stderr)
        sys.exit(EXIT_CONFIG)


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args.file)
    print(f"{args.file}: OK")
    print(summary(cfg))  # type: ignore[arg-type]
    for warning in key_file_warnings(cfg):  # type: ignore[arg-type]
        print(f"warning: {warning}")
    return 0


def _recover(path: str) -> tuple[object, object]:
    """Before the config is read: finish or undo a remote apply the last run left open.

    Returns (vault, resume): the vault when this gateway has remote control state, and the
    pending version to resume when the last run restarted on purpose to apply it.
    """
    import os

    from .config import read_toml
    from .control.vault import ConfigVault

    try:
        data, base = read_toml(path)
    except ConfigError:
        return None, None  # _load_or_exit says why
    gateway = data.get("gateway") if isinstance(data.get("gateway"), dict) else {}
    data_dir = gateway.get("data_dir", "/var/lib/passerelle")  # type: ignore[union-attr]
    state = Path(os.path.normpath(base / str(data_dir))) / "control"
    control = data.get("control") if isinstance(data.get("control"), dict) else {}
    if not state.exists() and not control.get("operator_keys"):  # type: ignore[union-attr]
        return None, None
    keep = control.get("keep_versions", 5)  # type: ignore[union-attr]
    gid = gateway.get("id")  # type: ignore[union-attr]
    vault = ConfigVault(Path(path), state, keep=keep if isinstance(keep, int) else 5,
                        gateway_id=gid if isinstance(gid, str) else None)
    decision = vault.recover_at_boot()
    if decision.rolled_back is not None:
        print(f"warning: configuration version {decision.rolled_back} was being applied when "
              f"the agent stopped ({decision.why}); back on the previous one", file=sys.stderr)
    return vault, decision.resume


def cmd_run(args: argparse.Namespace) -> int:
    from .agent import Agent
    from .logs import setup_logging

    vault, resume = _recover(args.config)
    cfg = _load_or_exit(args.config)
    from .startup_checks import unsafe_files

    problems = unsafe_files(cfg, Path(args.config))  # type: ignore[arg-type]
    if problems:
        print(f"{args.config}: refusing to start", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.log.level, cfg.log.format, cfg.log.burst, cfg.log.per)  # type: ignore[attr-defined]
    for warning in key_file_warnings(cfg):  # type: ignore[arg-type]
        print(f"warning: {warning}", file=sys.stderr)
    agent = Agent(cfg, config_path=args.config, vault=vault, resume=resume)  # type: ignore[arg-type]
    asyncio.run(agent.run())
    if agent.restart_requested:
        # A fresh interpreter in the same process: systemd keeps the same main PID and the
        # new run sends READY again; the vault tells it why it started.
        import os

        sys.stdout.flush()
        sys.stderr.flush()
        os.execv(sys.executable, [sys.executable, "-m", "passerelle", "run",
                                  "--config", args.config])
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(duration=args.duration, as_json=args.json, broker=args.broker)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="passerelle", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"passerelle {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the agent")
    run.add_argument("--config", default=DEFAULT_PATH, help=f"config file ({DEFAULT_PATH})")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check-config", help="validate a configuration file")
    check.add_argument("file", nargs="?", default=DEFAULT_PATH)
    check.set_defaults(func=cmd_check_config)

    demo = sub.add_parser("demo", help="watch the agent buffer and deliver, broker cut included")
    demo.add_argument("--duration", type=float, default=30.0, help="seconds (default 30)")
    demo.add_argument("--json", action="store_true", help="end with a JSON summary line")
    demo.add_argument(
        "--broker",
        choices=("auto", "mosquitto", "amqtt"),
        default="auto",
        help="embedded broker: mosquitto if found on PATH, else amqtt (default auto)",
    )
    demo.set_defaults(func=cmd_demo)
    sub.add_parser("lorawan", help="LoRaWAN tools: decode a frame, compute time on air")
    sub.add_parser("modbus", help="Modbus tools: read a meter's register (modbus read --help)")
    sub.add_parser("lighting", help="lighting tools: a night's plan (lighting plan --help)")
    sub.add_parser("ctl", help="operators: signed configuration and commands (ctl --help)")
    sub.add_parser("provision", help="installers: commission a gateway (provision --help)")
    sub.add_parser("service", help="the systemd unit: install, print, verify")
    return p


# group -> tool -> module with main(argv) -> int; each tool parses its own options (hex
# frames, keys, register addresses in hex).
TOOLS = {
    "lorawan": {
        "decode": "passerelle.lorawan.decode_cli",
        "airtime": "passerelle.lorawan.airtime_cli",
    },
    "modbus": {
        "read": "passerelle.modbus.read_cli",
    },
    "lighting": {
        "plan": "passerelle.lighting.plan_cli",
    },
}
# Top-level commands with their own parsers: passerelle <name> ... -> module.main(argv).
COMMANDS = {
    "ctl": "passerelle.ctl",
    "provision": "passerelle.provision",
    "service": "passerelle.service",
}


def _tool(group: str, argv: list[str]) -> int:
    """``passerelle <group> <tool> ...``: installer and integrator tools."""
    import importlib

    tools = TOOLS[group]
    if not argv or argv[0] not in tools:
        names = ", ".join(tools)
        print(f"usage: passerelle {group} {{{names}}} ... (--help for each)", file=sys.stderr)
        return 2
    module = importlib.import_module(tools[argv[0]])
    return int(module.main(argv[1:]))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in TOOLS:
        return _tool(argv[0], argv[1:])
    if argv[:1] and argv[0] in COMMANDS:
        import importlib

        return int(importlib.import_module(COMMANDS[argv[0]]).main(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
