"""The built-in signed commands (``cmd/<name>``), registered on :class:`RemoteControl`.

Each takes the command's arguments (a map, from the signed payload) and returns the text of
its ``done`` ack; a ValueError or KeyError is a ``failed`` ack with reason ``bad_arguments``.
Anything that lasts (a log level, an override) has an expiry: a forgotten change undoes
itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .applier import RemoteControl, arg
from .envelope import Signed

log = logging.getLogger("passerelle.control")

MAX_DURATION = 7 * 86400.0  # s: the longest a temporary change may last
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
              "error": logging.ERROR}


def duration(args: dict[str, Any], default: float | None = None) -> float:
    if "duration" not in args and default is not None:
        return default
    value = float(arg(args, "duration", (int, float)))
    if not 0 < value <= MAX_DURATION:
        raise ValueError(f"argument 'duration': {value} s is outside 1 s .. {MAX_DURATION:.0f} s")
    return value


def register_builtins(control: RemoteControl, agent: Any) -> None:
    """reboot-agent, flush-store, set-log-level, and the lighting override when lit."""
    revert: dict[str, asyncio.TimerHandle] = {}

    async def reboot_agent(args: dict[str, Any], signed: Signed) -> str:
        # After this ack: the restart stops the agent cleanly (the store is checkpointed).
        asyncio.get_running_loop().call_later(0.2, agent.request_restart, "operator command")
        return "the agent restarts now"

    async def flush_store(args: dict[str, Any], signed: Signed) -> str:
        depth = agent.flush_store()
        return f"draining {depth} stored records without the rate cap"

    async def set_log_level(args: dict[str, Any], signed: Signed) -> str:
        level = str(arg(args, "level", str)).lower()
        if level not in LOG_LEVELS:
            raise ValueError(f"argument 'level': {level!r} is not one of {', '.join(LOG_LEVELS)}")
        seconds = duration(args, 3600.0)
        root = logging.getLogger()
        root.setLevel(LOG_LEVELS[level])
        if "log" in revert:
            revert["log"].cancel()

        def back() -> None:
            root.setLevel(LOG_LEVELS[agent.cfg.log.level])
            log.info("log level back to %s", agent.cfg.log.level,
                     extra={"cause": "control.log_level"})

        revert["log"] = asyncio.get_running_loop().call_later(seconds, back)
        return f"log level {level} for {seconds:.0f} s, then {agent.cfg.log.level}"

    async def lighting_override(args: dict[str, Any], signed: Signed) -> str:
        engine = agent.lighting
        if engine is None:
            raise ValueError("this gateway has no [lighting]")
        zone = arg(args, "zone", str)
        level = arg(args, "level", int)
        seconds = duration(args)
        until = time.time() + seconds
        engine.override(zone, level, until, by=f"operator key {signed.kid.hex()}")
        return f"zone {zone} at {level} % for {seconds:.0f} s"

    async def lighting_clear(args: dict[str, Any], signed: Signed) -> str:
        engine = agent.lighting
        if engine is None:
            raise ValueError("this gateway has no [lighting]")
        zone = arg(args, "zone", str)
        if zone not in engine.zones:
            raise ValueError(f"no lighting zone {zone!r}")
        engine.clear_override(zone)
        return f"zone {zone} back to its calendar"

    control.register("reboot-agent", reboot_agent)
    control.register("flush-store", flush_store)
    control.register("set-log-level", set_log_level)
    control.register("lighting-override", lighting_override)
    control.register("lighting-clear", lighting_clear)
