"""The composition root: reads the config, builds the parts, wires and supervises them.

Nothing else knows how the whole is assembled. Each part runs as a supervised task: if it
crashes it is logged and restarted with exponential backoff, and the others go on. SIGTERM
(or SIGINT) stops the sources first, then commits what is pending, says goodbye on
``state`` and closes the store cleanly, so a restart finds a checkpointed database.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config
from .model import Priority, Record
from .policy.sobriety import Sobriety
from .sources import Source, build_source
from .store import DurableStore, StoreError, StoreFull
from .systemd import SystemdNotifier, run_watchdog
from .uplink import Uplink, UplinkSettings

log = logging.getLogger("passerelle.agent")

HOUSEKEEPING_INTERVAL = 60.0
POLICY_TICK = 5.0  # s between closings of aggregation windows
SAVINGS_INTERVAL = 300.0  # s between sobriety savings records
SHUTDOWN_DRAIN = 3.0  # seconds SIGTERM waits for open batches to reach the broker


def uplink_settings(cfg: Config) -> UplinkSettings:
    up = cfg.uplink
    return UplinkSettings(
        gateway_id=cfg.gateway.id,
        host=up.host,
        port=up.port,
        tls=up.tls,
        ca_file=up.ca_file,
        cert_file=up.cert_file,
        key_file=up.key_file,
        protocol=up.protocol,
        client_id=up.client_id,
        username=up.username,
        password_file=up.password_file,
        keepalive=up.keepalive,
        batch_records=up.batch_records,
        compression=up.compression,
        max_rate=up.max_rate,
        max_inflight=up.max_inflight,
        backoff_initial=up.backoff_initial,
        backoff_max=up.backoff_max,
        state_interval=up.state_interval,
    )


class Agent:
    """One gateway agent. ``await Agent(cfg).run()`` until ``stop()`` or SIGTERM."""

    def __init__(
        self,
        cfg: Config,
        *,
        notifier: SystemdNotifier | None = None,
        config_path: str | os.PathLike[str] | None = None,
        vault: Any = None,
        resume: Any = None,
    ) -> None:
        """``config_path``: the file ``cfg`` was read from; with operator keys in
        ``[control]`` it enables signed remote configuration (written to that file) and
        commands. ``vault``/``resume``: from :meth:`ConfigVault.recover_at_boot` at start."""
        self.cfg = cfg
        self.notifier = notifier or SystemdNotifier()
        self.started = time.time()
        self.store = DurableStore(
            Path(cfg.gateway.data_dir) / "store.db",
            max_bytes=cfg.store.max_bytes,
            ttl=cfg.store.ttl,
            max_delay=cfg.store.max_delay,
            hold=cfg.store.hold,
            on_alarm=self._alarm_from_store,
            batch_records=cfg.uplink.batch_records,
            batch_age=cfg.uplink.batch_age,
        )
        self.sobriety = Sobriety(cfg.policy, gateway_id=cfg.gateway.id)
        # Rules or a budget: then the policy reports (state, savings records) and ticks.
        self._policy_active = bool(cfg.policy.rules() or cfg.policy.budget_bytes_per_day)
        self._budget_path = Path(cfg.gateway.data_dir) / "budget.json"
        self._restore_budget()
        self.sources: list[Source] = [self._build_source(s) for s in cfg.sources]
        self.produced: Counter[str] = Counter()  # records stored, per source
        self.dropped: Counter[str] = Counter()  # records lost before the store, per cause
        self.restarts: Counter[str] = Counter()
        self.lorawan = None
        if cfg.radio is not None:
            from .lorawan.runtime import LorawanService

            # Its emit is durable even with store.hold, and raises when the store refuses:
            # a confirmed uplink is acknowledged only once its records are on disk.
            self.lorawan = LorawanService(cfg.lorawan, cfg.radio, cfg.gateway.data_dir,
                                          self._emitter("lorawan", durable=True))
        self.lighting = self._build_lighting() if cfg.lighting is not None else None
        has_ttl = any(r.ttl is not None for r in cfg.policy.rules())
        self.uplink = Uplink(
            uplink_settings(cfg), self.store, health=self.health,
            budget=self.sobriety.budget, record_filter=self._stream_ttl if has_ttl else None,
        )
        self.control = None
        if cfg.control.operator_keys and config_path is not None:
            self.control = self._build_control(Path(config_path), vault, resume)
        self._ttl_cache: dict[tuple[str, str], float | None] = {}
        self._stop = asyncio.Event()
        self.restart_requested: str | None = None  # why, when the agent must start again
        self._tg: asyncio.TaskGroup | None = None
        self._lighting_task: asyncio.Task[None] | None = None
        self._others: list[asyncio.Task[Any]] = []
        self._alarms: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._loop: asyncio.AbstractEventLoop | None = None

    def _build_lighting(self) -> Any:
        from .cabinet.inputs import GpioSource
        from .lighting.engine import LightingEngine, system_clock_trusted

        lc = self.cfg.lighting
        assert lc is not None
        relays = {}
        for src in self.sources:
            if isinstance(src, GpioSource):
                for zone in lc.zones.values():
                    if zone.relay is not None and zone.relay.startswith(f"{src.name}/"):
                        relays[zone.relay] = src.relay(zone.relay.partition("/")[2])
        trusted = not lc.clock_check

        def clock() -> float | None:
            # Latched: once NTP (or an RTC) has set the time, a backhaul lost for days
            # (NTP unreachable) must not put the street on its safe defaults.
            nonlocal trusted
            trusted = trusted or system_clock_trusted()
            return time.time() if trusted else None

        return LightingEngine(
            lc, self._emitter("lighting"),
            downlinks=self.lorawan.server if self.lorawan is not None else None,
            relays=relays, clock=clock,
            state_path=Path(self.cfg.gateway.data_dir) / "lighting.json",
        )

    def _build_control(self, config_path: Path, vault: Any, resume: Any) -> Any:
        from .control.applier import RemoteControl
        from .control.commands import register_builtins
        from .control.vault import ConfigVault

        if vault is None:
            vault = ConfigVault(config_path, Path(self.cfg.gateway.data_dir) / "control",
                                keep=self.cfg.control.keep_versions,
                                gateway_id=self.cfg.gateway.id)
        control = RemoteControl(self, self.uplink, vault, config_path, resume=resume)
        register_builtins(control, self)
        self.uplink.on_message = control.on_message
        self.uplink.subscriptions = control.subscriptions
        return control

    # -- remote configuration (passerelle.control) -------------------------------------------

    def apply_live(self, old: Config, new: Config, changed: set[str]) -> None:
        """Apply the sections that change without a restart; nothing else is touched."""
        if "log" in changed:
            from .logs import setup_logging

            setup_logging(new.log.level, new.log.format, new.log.burst, new.log.per)
        if "uplink" in changed:
            self.uplink.reconfigure(uplink_settings(new))
        elif "control" in changed and old.control.groups != new.control.groups:
            self.uplink.reconfigure(self.uplink.s)  # subscribe to the new groups' topics
        self.cfg = new
        if "lighting" in changed:
            self._replace_lighting()

    def _replace_lighting(self) -> None:
        if self._lighting_task is not None:
            # Its run() saves the state (overrides) as it ends; the controllers hold their
            # levels meanwhile.
            self._lighting_task.cancel()
            self._lighting_task = None
        self.lighting = self._build_lighting() if self.cfg.lighting is not None else None
        if self.lighting is not None and self._tg is not None:
            self._lighting_task = self._tg.create_task(
                self._supervise("lighting", self.lighting.run))
            self._others.append(self._lighting_task)

    def health_marks(self) -> dict[str, Any]:
        return {"connects": self.uplink.stats.connects, "restarts": dict(self.restarts),
                "uplink": self.uplink.s}

    def health_problem(self, marks: dict[str, Any]) -> str | None:
        """Why the configuration now running is not healthy, or None.

        The link must be up, and up again since the change when the broker settings
        changed; no part may have crashed since the change."""
        up = self.uplink.stats
        if up.link != "up":
            return f"uplink not connected: {up.last_error or up.link}"
        if self.uplink.s != marks["uplink"] and up.connects <= marks["connects"]:
            return "uplink has not reconnected with the new settings"
        for name, n in self.restarts.items():
            if n > marks["restarts"].get(name, 0):
                return f"{name} crashed since the change"
        plan_error = self.lighting.health().get("plan_error") if self.lighting else None
        if plan_error:
            return f"lighting: {plan_error}"
        return None

    def request_restart(self, why: str) -> None:
        """Stop cleanly; ``passerelle run`` then starts the agent again (same process)."""
        log.warning("restart: %s", why, extra={"cause": "agent.restart"})
        self.restart_requested = why
        self.stop()

    def flush_store(self) -> int:
        """Deliver now: seal open batches, drain without the rate cap until empty."""
        depth = self.store.stats().depth
        self.uplink.flush(True)
        loop = asyncio.get_running_loop()
        self._sealing = loop.create_task(self.store.seal())  # kept: a bare task may vanish

        def check() -> None:
            if self.store.stats().depth == 0 or self._stop.is_set():
                self.uplink.flush(False)
            else:
                loop.call_later(1.0, check)

        loop.call_later(1.0, check)
        return depth

    # -- health ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        from .logs import suppressed_counts

        st = self.store.stats()
        up = self.uplink.stats
        return {
            "gateway": self.cfg.gateway.id,
            "version": __version__,
            "uptime": round(time.time() - self.started, 1),
            "link": up.link,
            "store": {
                "depth": st.depth,
                "bytes": st.bytes,
                "oldest_age": None if st.oldest_age is None else round(st.oldest_age, 1),
                "quarantined": st.quarantined,
            },
            "evicted": st.evicted,
            "dropped": dict(self.dropped),
            "sent": {"records": up.records_sent, "packs": up.packs_sent, "bytes": up.bytes_sent,
                     "expired": up.expired, "budget_held": up.budget_held},
            "produced": dict(self.produced),
            "restarts": dict(self.restarts),
            "logs_suppressed": sum(suppressed_counts().values()),
            "last_error": up.last_error or st.last_error,
            **({"lorawan": self.lorawan.health()} if self.lorawan is not None else {}),
            **({"policy": self.sobriety.stats()} if self._policy_active else {}),
            **({"lighting": self.lighting.health()} if self.lighting is not None else {}),
            **({"config": self.control.status()} if self.control is not None else {}),
            **({"sources": buses} if (buses := self._source_stats()) else {}),
        }

    def _source_stats(self) -> dict[str, Any]:
        """Per source, what its own counters say (buses: devices online, timeouts, CRC)."""
        out: dict[str, Any] = {}
        for source in self.sources:
            stats = getattr(source, "stats", None)
            if callable(stats):
                try:
                    out[source.name] = stats()
                except Exception as exc:  # health must never fail because of a source
                    out[source.name] = {"error": f"{type(exc).__name__}: {exc}"}
        return out

    # -- lifetime -------------------------------------------------------------------------

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._loop.add_signal_handler(sig, self.stop)
            except (NotImplementedError, RuntimeError):  # not the main thread (tests)
                pass
        await self.store.open()
        try:
            await self._supervise_all()
        finally:
            await self.store.close()
            self.notifier.status("stopped")
            log.info("stopped", extra={"cause": "agent.stop"})

    async def _supervise_all(self) -> None:
        async with asyncio.TaskGroup() as tg:
            source_tasks = [
                tg.create_task(self._supervise(f"source:{s.name}", self._source_runner(s)))
                for s in self.sources
            ]
            if self.lorawan is not None:  # stops with the sources: nothing new after SIGTERM
                source_tasks.append(
                    tg.create_task(self._supervise("lorawan", self.lorawan.run))
                )
            uplink_task = tg.create_task(self._supervise("uplink", self.uplink.run))
            self._tg = tg
            others = self._others
            others += [
                tg.create_task(self._supervise("alarms", self._alarm_loop)),
                tg.create_task(self._supervise("housekeeping", self._housekeeping)),
            ]
            if self._policy_active:
                others.append(tg.create_task(self._supervise("policy", self._policy_loop)))
            if self.lighting is not None:
                self._lighting_task = tg.create_task(
                    self._supervise("lighting", self.lighting.run))
                others.append(self._lighting_task)
            if self.control is not None:
                others.append(tg.create_task(self._supervise("control", self.control.run)))
            if self.notifier.watchdog_interval():
                others.append(tg.create_task(run_watchdog(self.notifier, self.store.healthy)))
            self.notifier.ready()
            self.notifier.status(f"running, {len(self.sources)} sources")
            log.info(
                "agent %s running: %d sources, uplink %s:%d",
                self.cfg.gateway.id, len(self.sources), self.uplink.s.host, self.uplink.s.port,
                extra={"cause": "agent.start"},
            )
            await self._stop.wait()
            self.notifier.stopping()
            # Order matters: no new records, then everything pending is committed, then the
            # broker hears we leave, then the link goes.
            for t in source_tasks:
                t.cancel()
            await asyncio.gather(*source_tasks, return_exceptions=True)
            await self._store_savings()
            self._save_budget()
            await self.store.sync()
            await self._send_open_batches()
            await self.uplink.stop()
            try:
                await asyncio.wait_for(asyncio.shield(uplink_task), 5.0)
            except TimeoutError:
                uplink_task.cancel()
            for t in others:
                t.cancel()

    async def _send_open_batches(self) -> None:
        """On the way out, send what waits for ``batch_age`` if the link is up, briefly.

        What is not sent stays in the store and goes at the next start: this only spares the
        broker a minute of staleness across a planned restart.
        """
        await self.store.seal()
        if self.uplink.stats.link != "up":
            return
        deadline = time.monotonic() + SHUTDOWN_DRAIN
        # Polled: depth changes on the store's worker thread, once per acknowledged pack.
        while self.store.stats().depth and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)

    async def _supervise(self, name: str, factory: Callable[[], Awaitable[None]]) -> None:
        """Run ``factory()`` forever; a crash is logged and retried with backoff."""
        backoff = 1.0
        while True:
            started = time.monotonic()
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.restarts[name] += 1
                if time.monotonic() - started > 60:
                    backoff = 1.0  # it ran well for a while: not a crash loop
                log.error(
                    "%s crashed (%s: %s); restart in %.0fs",
                    name, type(exc).__name__, exc, backoff,
                    exc_info=exc, extra={"cause": f"crash.{name}"},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    def _emitter(
        self, name: str, durable: bool = False
    ) -> Callable[[Sequence[Record], Priority], Awaitable[None]]:
        """What a producer calls with its records: a put, counted either way.

        ``durable``: on disk before it returns even with ``store.hold``, and a refusal is
        raised to the producer (which must not promise delivery) instead of swallowed.
        """

        async def emit(records: Sequence[Record], priority: Priority) -> None:
            # The lighting engine sees everything first (luminaire feedback, presence, the
            # light sensor) and keeps presence detections to itself: they leave as counts.
            if self.lighting is not None:
                records = self.lighting.observe(records)
            # Sobriety first: what a policy suppresses or folds into a window is never
            # stored (and is counted as saved); alarms pass untouched.
            records = self.sobriety.process(records, priority)
            if not records:
                return
            try:
                await self.store.put_many(records, priority, durable=durable)
            except StoreError as exc:
                cause = "store_full" if isinstance(exc, StoreFull) else "store_error"
                self.dropped[cause] += len(records)
                log.error(
                    "%s: %d records dropped: %s", name, len(records), exc,
                    extra={"cause": f"drop.{cause}"},
                )
                if durable:
                    raise
                return
            self.produced[name] += len(records)

        return emit

    def _source_runner(self, source: Source) -> Callable[[], Awaitable[None]]:
        emit = self._emitter(source.name)

        async def runner() -> None:
            await source.run(emit)

        return runner

    # -- alarms, housekeeping, watchdog -----------------------------------------------------

    def _alarm_from_store(self, cause: str, text: str) -> None:
        # Called from the store's worker thread (disk full) or during open.
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(self._alarms.put_nowait, (cause, text))

    async def _alarm_loop(self) -> None:
        while True:
            cause, text = await self._alarms.get()
            record = Record("gateway", f"alarm/{cause}", text, time.time())
            try:
                await self.store.put(record, Priority.ALARM)
            except StoreError as exc:
                self.dropped["alarm_unstored"] += 1
                log.error("alarm %s not stored: %s", cause, exc, extra={"cause": "drop.alarm"})

    async def _housekeeping(self) -> None:
        while True:
            await self.store.expire()
            self._save_budget()
            await asyncio.sleep(HOUSEKEEPING_INTERVAL)

    # -- data sobriety --------------------------------------------------------------------

    def _build_source(self, cfg: Any) -> Source:
        interval_at = None
        if getattr(cfg, "night_interval", None) is not None:
            interval_at = self.sobriety.schedule(cfg.interval, cfg.night_interval).interval_at
        return build_source(cfg, interval_at=interval_at)

    async def _policy_loop(self) -> None:
        """Close aggregation windows as they end; store the savings now and then."""
        last_savings = time.monotonic()
        while True:
            await asyncio.sleep(POLICY_TICK)
            for priority, records in self.sobriety.tick().items():
                await self._put_quietly("policy", records, priority)
            if time.monotonic() - last_savings >= SAVINGS_INTERVAL:
                last_savings = time.monotonic()
                await self._store_savings()

    async def _store_savings(self) -> None:
        if self._policy_active:
            await self._put_quietly("policy", self.sobriety.savings_records(),
                                    Priority.DIAGNOSTIC)

    async def _put_quietly(self, name: str, records: list[Record], priority: Priority) -> None:
        if not records:
            return
        try:
            await self.store.put_many(records, priority)
        except StoreError as exc:
            self.dropped["store_error"] += len(records)
            log.error("%s: %d records dropped: %s", name, len(records), exc,
                      extra={"cause": "drop.store_error"})
            return
        self.produced[name] += len(records)

    def _stream_ttl(self, records: list[Record], now: float) -> list[Record]:
        """Records still within their stream's retention TTL (others are not sent)."""
        cache = self._ttl_cache
        kept = []
        for r in records:
            key = (r.device, r.name)
            if key not in cache:
                if len(cache) > 65536:
                    cache.clear()
                cache[key] = self.sobriety.ttl_for(r.device, r.name)
            ttl = cache[key]
            if ttl is None or now - r.time <= ttl:
                kept.append(r)
        return kept

    def _restore_budget(self) -> None:
        budget = self.sobriety.budget
        if budget is None:
            return
        try:
            budget.restore(json.loads(self._budget_path.read_text()), time.time())
        except FileNotFoundError:
            pass
        except (ValueError, TypeError, OSError) as exc:  # unreadable: today starts afresh
            log.error("budget ledger %s unreadable (%s): counting today from zero",
                      self._budget_path, exc, extra={"cause": "policy.budget"})

    def _save_budget(self) -> None:
        """Today's upstream spend, so a restart does not grant a fresh budget."""
        budget = self.sobriety.budget
        if budget is None:
            return
        tmp = self._budget_path.with_suffix(".tmp")
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(budget.snapshot(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self._budget_path)
        except OSError as exc:
            log.error("budget ledger not saved: %s", exc, extra={"cause": "policy.budget"})


async def run_agent(cfg: Config) -> None:
    await Agent(cfg).run()
