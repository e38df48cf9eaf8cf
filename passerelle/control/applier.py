"""The remote configuration pipeline on the gateway, and the signed commands.

A bundle on ``config/set`` (or a group's) goes through, in order::

    verify (signature, key, type, target, expiry) -> version (only increases) -> schema
    -> stage on disk -> ack "accepted" -> write the config file atomically (pending)
    -> apply only what changed -> health window -> commit, ack "applied"
                                                 \\-> roll back, ack "rolled_back"

Sections that can change live: ``uplink`` (the link reconnects, nothing else moves),
``lighting`` (the engine is rebuilt, the street keeps its levels: the controllers hold them),
``log`` and ``control``. Any other section (store, radio, sources...) is applied by a
planned restart of the agent; the vault marks it so the next start resumes the health
window instead of rolling back. A configuration that cannot keep the uplink up through its
health window is undone: a bad push never leaves a gateway unreachable.

One apply at a time; a bundle arriving meanwhile waits its turn. Everything that reaches the
operator is an ack (see :mod:`passerelle.control.acks`), with a reason code and a text.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

import tomli_w

from ..config import Config, ConfigError, parse
from .acks import Acks, reply_to
from .envelope import Rejected, Signed, open_envelope
from .keys import Trust
from .vault import ConfigVault, write_atomic

log = logging.getLogger("passerelle.control")

LIVE_SECTIONS = frozenset({"uplink", "lighting", "log", "control"})
GROUP_PREFIX = "passerelle/group/"
MAX_BUNDLE = 256 * 1024  # bytes: a street's config is a few kB; anything larger is refused
MAX_ERRORS_IN_ACK = 5


class Host(Protocol):
    """What the pipeline needs from the agent (passerelle.agent.Agent)."""

    cfg: Config

    def apply_live(self, old: Config, new: Config, changed: set[str]) -> None: ...

    def request_restart(self, why: str) -> None: ...

    def health_problem(self, since: dict[str, Any]) -> str | None: ...

    def health_marks(self) -> dict[str, Any]: ...


Command = Callable[[dict[str, Any], Signed], Awaitable[str]]


def changed_sections(old: Config, new: Config) -> set[str]:
    return {f for f in old.__struct_fields__ if getattr(old, f) != getattr(new, f)}


class RemoteControl:
    """Owns ``config/set`` and ``cmd/<name>``: the uplink hands it every message."""

    def __init__(
        self, host: Host, link: Any, vault: ConfigVault, config_path: Path,
        *, resume: Any = None,
    ) -> None:
        cfg = host.cfg
        self.host = host
        self.link = link
        self.vault = vault
        self.config_path = config_path
        self.gateway_id = cfg.gateway.id
        self.prefix = f"passerelle/{self.gateway_id}/"
        self.trust = Trust.from_files(cfg.control.operator_keys)
        self.groups: list[str] = list(cfg.control.groups)
        self.health_window = cfg.control.health_window
        self.acks = Acks(link, vault, self.prefix, self.gateway_id)
        self.counts: Counter[str] = Counter()
        self.commands: dict[str, Command] = {}
        # id -> expiry: a command runs once, across restarts too (a replayed reboot-agent
        # must not restart the agent again and again until it expires).
        self._seen_path = vault.state_dir / "commands.json"
        self.seen_commands: dict[str, float] = self._load_seen()
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._resume = resume  # a planned restart to finish: its health window runs first
        self.last: dict[str, Any] | None = None  # the last outcome, for health()

    # -- what the uplink asks ------------------------------------------------------------

    def subscriptions(self) -> list[str]:
        topics = [self.prefix + "config/set", self.prefix + "cmd/+"]
        for g in self.groups:
            topics += [f"{GROUP_PREFIX}{g}/config/set", f"{GROUP_PREFIX}{g}/cmd/+"]
        return topics

    async def on_message(self, message: Any) -> None:
        """Return at once: the work runs in its own task (the uplink keeps receiving)."""
        topic = str(message.topic)
        tail = self._tail(topic)
        if tail is None:
            return
        if tail == "config/set":
            self._spawn(self.handle_config(bytes(message.payload), reply_to(message)))
        elif tail.startswith("cmd/") and tail.count("/") == 1 and tail != "cmd/ack":
            self._spawn(self.handle_command(tail[4:], bytes(message.payload),
                                            reply_to(message)))

    def _tail(self, topic: str) -> str | None:
        if topic.startswith(self.prefix):
            return topic[len(self.prefix):]
        for g in self.groups:
            if topic.startswith(f"{GROUP_PREFIX}{g}/"):
                return topic[len(f"{GROUP_PREFIX}{g}/"):]
        return None

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def status(self) -> dict[str, Any]:
        return {**self.vault.status(), "keys": self.trust.kids(), "groups": self.groups,
                "counts": dict(self.counts), "acks": {"sent": self.acks.sent,
                                                       "queued": self.acks.queued},
                **({"last": self.last} if self.last else {})}

    # -- the supervised loop ---------------------------------------------------------------

    async def run(self) -> None:
        """Deliver queued acks whenever the link comes up; finish a planned restart."""
        if self._resume is not None:
            resume, self._resume = self._resume, None
            self._spawn(self._resume_window(resume.version))
        while True:
            await self.link.connected.wait()
            await self.acks.flush()
            # Until the link drops: poll cheaply for acks queued meanwhile.
            while self.link.connected.is_set():
                if self.vault.acks():
                    await self.acks.flush()
                await asyncio.sleep(0.5)

    # -- configuration ---------------------------------------------------------------------

    async def handle_config(self, data: bytes, reply: dict[str, str]) -> None:
        async with self._lock:
            try:
                await self._apply(data, reply)
            except Exception as exc:  # the agent keeps running whatever a bundle does
                log.error("config apply failed: %s", exc, exc_info=exc,
                          extra={"cause": "control.crash"})
                self.counts["errors"] += 1
                text = f"{type(exc).__name__}: {exc}"
                pending = self.vault.pending
                if pending is None:
                    await self._ack("rejected", None, reply, "error", text)
                    return
                # Half applied: the previous file back, and a clean start on it.
                restored = self.vault.rollback(text)
                await self._ack("rolled_back", pending.version, reply, "error",
                                f"{text}; back on version {restored}")
                self.host.request_restart(f"roll back to version {restored}")

    async def _apply(self, data: bytes, reply: dict[str, str]) -> None:
        try:
            if len(data) > MAX_BUNDLE:
                raise Rejected("malformed", f"bundle of {len(data)} bytes (at most {MAX_BUNDLE})")
            signed = open_envelope(data, self.trust, kind="config", gateway_id=self.gateway_id,
                                   groups=self.groups, now=time.time())
        except Rejected as r:
            await self._reject(None, r, reply)
            return
        version = signed.version
        assert version is not None and signed.config is not None
        if self.vault.running == version or self.vault.good == version:
            if self.vault.digest(version) == signed.digest:
                self.counts["duplicates"] += 1
                await self._ack("applied", version, reply, "duplicate",
                                f"version {version} is already running")
                return
        if version <= self.vault.highest():
            await self._reject(version, Rejected(
                "stale_version", f"version {version} is not newer than {self.vault.highest()} "
                "(versions only increase: sign this configuration with a higher version)"),
                reply)
            return
        old = self.host.cfg
        document = signed.config
        if signed.target is None:
            # A group's (or the fleet's) configuration never carries an identity: each
            # gateway keeps its own id, and writes it in the file it keeps.
            gateway = document.get("gateway")
            document = {**document, "gateway": {**(gateway if isinstance(gateway, dict)
                                                   else {}), "id": self.gateway_id}}
        try:
            new = self._validate(document)
        except ConfigError as exc:
            errors = "; ".join(f"{w}: {why}" for w, why in exc.errors[:MAX_ERRORS_IN_ACK])
            more = len(exc.errors) - MAX_ERRORS_IN_ACK
            await self._reject(version, Rejected(
                "schema_error", errors + (f" (and {more} more)" if more > 0 else "")), reply)
            return
        toml_text = tomli_w.dumps(document).encode()
        self.vault.stage(version, toml_text, data)
        await self._ack("accepted", version, reply, None,
                        f"version {version} verified (key {signed.kid.hex()}), applying")
        changed = changed_sections(old, new)
        restart = changed - LIVE_SECTIONS
        self.vault.begin(version, restart_planned=bool(restart))
        if restart:
            await self._ack("accepted", version, reply, "restart",
                            f"the agent restarts to apply {', '.join(sorted(restart))}")
            log.warning("config %d changes %s: the agent restarts to apply it", version,
                        ", ".join(sorted(restart)), extra={"cause": "control.restart"})
            self.host.request_restart(f"configuration version {version}")
            return
        marks = self.host.health_marks()
        self.host.apply_live(old, new, changed)
        self._adopt(new)
        log.info("config %d applied live (%s); health window %.0f s", version,
                 ", ".join(sorted(changed)) or "no change", self.health_window,
                 extra={"cause": "control.apply"})
        await self._health_window(version, reply, old, new, changed, marks)

    def _validate(self, document: dict[str, Any]) -> Config:
        new = parse(document, self.config_path.parent)
        errors = []
        if new.gateway.id != self.gateway_id:
            errors.append(("gateway.id", f"{new.gateway.id!r}: this gateway is "
                           f"{self.gateway_id!r}; an identity changes only on site"))
        if not new.control.operator_keys:
            errors.append(("control.operator_keys", "a remote configuration must keep at least "
                           "one operator key, or no one could ever reach this gateway again"))
        if errors:
            raise ConfigError(errors)
        return new

    async def _health_window(
        self, version: int, reply: dict[str, str], old: Config | None, new: Config,
        changed: set[str], marks: dict[str, Any],
    ) -> None:
        deadline = time.monotonic() + self.health_window
        problem: str | None = None
        while time.monotonic() < deadline:
            await asyncio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            problem = self.host.health_problem(marks)
            if problem is not None and problem.startswith("fatal:"):
                break  # no use waiting: a source cannot even start
        if problem is None:
            self.vault.commit()
            self.counts["applied"] += 1
            await self._ack("applied", version, reply, None,
                            f"version {version} committed after {self.health_window:.0f} s")
            return
        why = problem.removeprefix("fatal:").strip()
        restored = self.vault.rollback(why)
        self.counts["rolled_back"] += 1
        log.error("config %d rolled back to %s: %s", version, restored, why,
                  extra={"cause": "control.rollback"})
        if old is not None:
            self.host.apply_live(new, old, changed)
            self._adopt(old)
            await self._ack("rolled_back", version, reply, "unhealthy",
                            f"{why}; back on version {restored}")
        else:  # resumed after a restart: the old configuration needs one too
            self.vault.queue_ack(self.acks.make(
                "config/ack", reply, version=version, status="rolled_back",
                reason="unhealthy", text=f"{why}; back on version {restored}",
                hash=self.vault.file_hash()))
            self.host.request_restart(f"roll back to version {restored}")

    async def _resume_window(self, version: int) -> None:
        """After a planned restart, the new configuration is running: finish its window."""
        async with self._lock:
            # The request's response topic did not survive the restart: config/ack only.
            reply: dict[str, str] = {}
            marks = self.host.health_marks()
            await self._health_window(version, reply, None, self.host.cfg, set(), marks)

    def _adopt(self, cfg: Config) -> None:
        self.trust = Trust.from_files(cfg.control.operator_keys)
        self.groups = list(cfg.control.groups)
        self.health_window = cfg.control.health_window

    async def _ack(self, status: str, version: int | None, reply: dict[str, str],
                   reason: str | None, text: str) -> None:
        ack = self.acks.make("config/ack", reply, version=version, status=status,
                             reason=reason, text=text, hash=self.vault.file_hash())
        self.last = {k: ack[k] for k in ("version", "status", "reason", "text")}
        await self.acks.send(ack)

    async def _reject(self, version: int | None, r: Rejected, reply: dict[str, str]) -> None:
        self.counts[f"rejected.{r.reason}"] += 1
        log.warning("config bundle rejected (%s): %s", r.reason, r.text,
                    extra={"cause": f"control.rejected.{r.reason}"})
        await self._ack("rejected", version, reply, r.reason, r.text)

    # -- commands --------------------------------------------------------------------------

    def _load_seen(self) -> dict[str, float]:
        try:
            raw = json.loads(self._seen_path.read_text())
            now = time.time()
            return {str(i): float(e) for i, e in raw.items() if float(e) > now}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.error("%s unreadable (%s): command ids start afresh", self._seen_path, exc,
                      extra={"cause": "control.seen"})
            return {}

    def _save_seen(self) -> None:
        try:
            write_atomic(self._seen_path, json.dumps(self.seen_commands).encode())
        except OSError as exc:  # the command still runs; a replay after a restart could too
            log.error("command ids not saved: %s", exc, extra={"cause": "control.seen"})

    def register(self, name: str, handler: Command) -> None:
        """The generic hook: other parts add commands (the lighting engine's override)."""
        self.commands[name] = handler

    async def handle_command(self, name: str, data: bytes, reply: dict[str, str]) -> None:
        now = time.time()
        ack: dict[str, Any] = {"command": name, "id": None}
        try:
            if len(data) > MAX_BUNDLE:
                raise Rejected("malformed", f"command of {len(data)} bytes")
            signed = open_envelope(data, self.trust, kind="command",
                                   gateway_id=self.gateway_id, groups=self.groups, now=now)
            ack["id"] = signed.id
            if signed.name != name:
                raise Rejected("wrong_type", f"signed for command {signed.name!r}, "
                               f"received on cmd/{name}")
            self.seen_commands = {i: e for i, e in self.seen_commands.items() if e > now}
            if signed.id in self.seen_commands:
                raise Rejected("replayed", f"command {signed.id} was already executed")
            handler = self.commands.get(name)
            if handler is None:
                raise Rejected("unknown_command",
                               f"no command {name!r} (known: {', '.join(sorted(self.commands))})")
            assert signed.id is not None and signed.expires is not None
            self.seen_commands[signed.id] = float(signed.expires)
            self._save_seen()
        except Rejected as r:
            self.counts[f"command_rejected.{r.reason}"] += 1
            log.warning("command %s rejected (%s): %s", name, r.reason, r.text,
                        extra={"cause": f"control.command.{r.reason}"})
            await self.acks.send(self.acks.make("cmd/ack", reply, **ack, status="rejected",
                                                reason=r.reason, text=r.text))
            return
        try:
            text = await handler(dict(signed.args), signed)
        except (KeyError, ValueError, TypeError) as exc:
            self.counts["command_failed"] += 1
            await self.acks.send(self.acks.make("cmd/ack", reply, **ack, status="failed",
                                                reason="bad_arguments", text=str(exc)))
            return
        except Exception as exc:
            self.counts["command_failed"] += 1
            log.error("command %s failed: %s", name, exc, exc_info=exc,
                      extra={"cause": "control.command.failed"})
            text = f"{type(exc).__name__}: {exc}"
            await self.acks.send(self.acks.make("cmd/ack", reply, **ack, status="failed",
                                                reason="error", text=text))
            return
        self.counts["commands"] += 1
        log.info("command %s done: %s", name, text, extra={"cause": "control.command"})
        await self.acks.send(self.acks.make("cmd/ack", reply, **ack, status="done",
                                            reason=None, text=text))


def arg(args: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """A command argument of the right type, or a ValueError that names it."""
    if name not in args:
        raise ValueError(f"missing argument {name!r}")
    value = args[name]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ValueError(f"argument {name!r}: {value!r} is not {getattr(kind, '__name__', kind)}")
    return value
