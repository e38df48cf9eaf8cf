"""``passerelle demo``: the real agent against simulated street equipment, with a live view.

Nothing to install or configure beyond the package: everything runs on loopback, in a fresh
temporary directory that is removed at the end::

    sim.counter ─┐                                      ┌──────────┐
                 ├─> Agent ──> link ──> broker ────────>│subscriber│ decodes SenML-CBOR,
    sim.env ─────┘   (store,    (TCP    (mosquitto,     └──────────┘ drops redeliveries
                      uplink)   relay)   or amqtt)

* **broker**: ``mosquitto`` when one is installed (``$PATH`` or ``/usr/sbin``), run as a
  subprocess with :class:`hil.mosquitto.Mosquitto` and spoken to in MQTT 5; otherwise an
  ``amqtt`` broker embedded in this process, in MQTT 3.1.1 (all amqtt speaks). Plaintext on
  loopback (``allow_plaintext = true``): fine for a demo, refused by default in production.
* **link**: a small TCP relay between the agent and the broker. It stands for the cabinet's
  uplink and lets the demo order a broker cut so that the *subscriber* never misses what the
  broker acknowledged: the link goes down first, the broker gets a moment to hand what it
  acknowledged to the subscriber (amqtt sends PUBACK before it forwards), then the broker is
  killed (mosquitto: SIGKILL; amqtt: shut down). On the way back the broker restarts on the
  same port, the subscriber re-subscribes, and only then does the link come up again, so
  the agent's first publish after the outage has somebody to go to (neither broker keeps a
  session across a crash). The agent sees exactly what a broker crash looks like: its
  connection dies and reconnects are refused until the broker is back.
* **subscriber**: an aiomqtt client on the same broker that decodes every pack on
  ``passerelle/demo-0001/up/senml`` and counts distinct records ``(name, value, time)``;
  packs seen before (same idempotency key) and records seen before are duplicates from
  at-least-once redelivery and are counted apart, never twice.

Halfway through, the broker is cut for ``min(5, duration / 4)`` seconds: the store fills,
then drains once the broker is back. At the end the sources stop, the uplink drains what is
buffered, and the demo checks that every record produced reached the subscriber.

A third source plays a night of ``examples/street.toml`` (:mod:`passerelle.demo_street`):
the lighting engine drives simulated luminaire controllers over the simulated radio and
the contactor over simulated GPIO, on an accelerated clock; its records go upstream with
the others, through the cut, and the view and the summary show the street (``lighting``
in ``--json``, with ``energy_received``: the night's energy as the subscriber got it). The
end waits up to :data:`STREET_GRACE` s for the night to close and its last records to be
handed to the agent. Without the file (an installed package) the demo says so and runs
without.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import aiomqtt

from . import senml
from .agent import Agent
from .config import parse
from .logs import setup_logging
from .model import Priority, Record

__all__ = ["run_demo"]

GATEWAY_ID = "demo-0001"
TOPIC = f"passerelle/{GATEWAY_ID}/up/senml"
LOOPBACK = "127.0.0.1"
SOURCES = ("counter", "env")  # source names; each is also its device

REFRESH = 0.25  # live view: 4 frames a second
BATCH_ROWS = 8  # rows of the last pack shown
DRAIN_TIMEOUT = 20.0
STREET_GRACE = 3.0  # s the end waits for the street's night to close and be handed over
EXIT_OK, EXIT_LOST, EXIT_SETUP = 0, 1, 2

PHASE_START = "starting"
PHASE_UP = "broker up"
PHASE_CUT = "BROKER CUT: buffering"
PHASE_BACK = "broker back: draining"
PHASE_DRAIN = "sources stopped: final drain"
PHASE_DONE = "done"

Emit = Callable[[Sequence[Record], Priority], Awaitable[None]]


class DemoError(RuntimeError):
    """The demo could not set itself up (no broker, port trouble...)."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------------------
# Brokers


class _MosquittoBroker:
    name = "mosquitto"
    protocol = 5

    def __init__(self, workdir: Path) -> None:
        from hil.mosquitto import Mosquitto  # hil is only ever imported by the demo

        self._m = Mosquitto(pki=None, plain=True, workdir=workdir)

    @property
    def port(self) -> int:
        return self._m.plain_port

    async def start(self) -> None:
        from hil.mosquitto import MosquittoError

        try:
            await asyncio.to_thread(self._m.start)
        except MosquittoError as exc:
            raise DemoError(f"mosquitto did not start: {exc}") from exc

    async def crash(self) -> None:
        await asyncio.to_thread(self._m.kill)

    async def restart(self) -> None:
        await asyncio.to_thread(self._m.restart)  # same port

    async def close(self) -> None:
        await asyncio.to_thread(self._m.stop)


class _AmqttBroker:
    name = "amqtt"
    protocol = 3  # amqtt 0.12 speaks MQTT 3.1.1 only

    def __init__(self) -> None:
        self.port = 0
        self._broker: Any = None

    def _config(self) -> dict[str, Any]:
        # amqtt 0.12 BrokerConfig: named listeners ("default" is required) and plugins as
        # {dotted class path: options}. Only anonymous auth: no $SYS, no packet logging.
        return {
            "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{self.port}"}},
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
            },
        }

    async def _start_once(self) -> None:
        from amqtt.broker import Broker

        broker = Broker(self._config())
        await broker.start()
        self._broker = broker

    async def start(self) -> None:
        from amqtt.errors import BrokerError

        for attempt in range(3):
            self.port = _free_port()
            try:
                await self._start_once()
                return
            except BrokerError as exc:  # the port was taken between probe and bind
                if attempt == 2:
                    raise DemoError(f"amqtt did not start: {exc}") from exc

    async def crash(self) -> None:
        broker, self._broker = self._broker, None
        if broker is not None:
            await broker.shutdown()

    async def restart(self) -> None:
        await self.crash()
        await self._start_once()  # a new broker on the same port

    async def close(self) -> None:
        await self.crash()


_Broker = _MosquittoBroker | _AmqttBroker


def _choose_broker(kind: str, workdir: Path) -> _Broker:
    from hil.mosquitto import find_mosquitto

    if kind == "amqtt":
        return _AmqttBroker()
    if find_mosquitto() is None:
        if kind == "mosquitto":
            raise DemoError(
                "mosquitto not found (looked in $MOSQUITTO, $PATH, /usr/sbin): install it "
                "or use --broker amqtt"
            )
        return _AmqttBroker()
    return _MosquittoBroker(workdir)


# --------------------------------------------------------------------------------------------
# The link: a TCP relay the demo can cut


class _Link:
    """Relays the agent's TCP connections to the broker; :meth:`cut` drops them all."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0  # chosen at the first open(), kept afterwards
        self.bytes_up = 0  # agent -> broker, MQTT bytes (headers, resends, pings included)
        self._server: asyncio.Server | None = None
        self._conns: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()

    @property
    def is_up(self) -> bool:
        return self._server is not None

    async def open(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, LOOPBACK, self.port, reuse_address=True
        )
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()  # new connections are refused from now on
        for agent_side, broker_side in list(self._conns):
            agent_side.transport.abort()
            broker_side.close()
        self._conns.clear()
        if server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 2.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            broker_r, broker_w = await asyncio.open_connection(LOOPBACK, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        if self._server is None:  # cut while we were connecting
            writer.transport.abort()
            broker_w.close()
            return
        pair = (writer, broker_w)
        self._conns.add(pair)
        up = asyncio.create_task(self._pump(reader, broker_w, count=True))
        down = asyncio.create_task(self._pump(broker_r, writer, count=False))
        try:
            await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (up, down):
                task.cancel()
            await asyncio.gather(up, down, return_exceptions=True)
            self._conns.discard(pair)
            writer.close()
            broker_w.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(65536):
                if count:
                    self.bytes_up += len(data)
                writer.write(data)
                await writer.drain()


# --------------------------------------------------------------------------------------------
# Sources the demo can stop while the agent keeps draining


class _Stoppable:
    """Wraps a source so that :meth:`stop` ends it between two emits, agent still running.

    Agent.stop() cancels sources wherever they are, possibly inside ``emit``: the records of
    that emit still get committed (the store shields its commit) but are not counted in
    ``agent.produced``. Stopping between emits keeps the count exact, which the final
    produced == delivered check needs.
    """

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name: str = inner.name
        self._stopping = False
        self._busy = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Future[None] | None = None

    async def run(self, emit: Emit) -> None:
        async def gated(records: Sequence[Record], priority: Priority) -> None:
            if self._stopping:
                await asyncio.Future()  # parked until stop() cancels us: never stored
            self._busy += 1
            self._idle.clear()
            try:
                await emit(records, priority)
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()

        if self._stopping:
            return
        task = self._task = asyncio.ensure_future(self.inner.run(gated))
        try:
            await asyncio.wait((task,))
        except asyncio.CancelledError:  # the agent is stopping us
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise
        if not task.cancelled():
            task.result()  # a crash goes to the agent's supervisor (restart with backoff)

    async def stop(self) -> None:
        self._stopping = True
        await self._idle.wait()  # an emit under way finishes, and is counted
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.wait((self._task,))


# --------------------------------------------------------------------------------------------
# The subscriber at the far end


# Two decodings of one record may differ in time by up to one SenML time quantum (packs cut
# differently have different base times); distinct records of one series are further apart.
SAME_TIME = 2.0 / senml.TIME_QUANTUM


class _Subscriber:
    """Counts distinct records delivered on ``up/senml``; redeliveries are counted apart.

    A pack whose idempotency key was seen before is a redelivery as a whole. A record is
    identified by (name, value, time), time within :data:`SAME_TIME`, so a record that comes
    again in a pack cut differently is not counted twice either.
    """

    def __init__(self, port: int, protocol: int, devices: Sequence[str] = SOURCES) -> None:
        self.port = port
        self.protocol = protocol
        self.prefixes = tuple(senml.device_base_name(GATEWAY_ID, d) for d in devices)
        self.ready = asyncio.Event()  # subscribed (SUBACK received) on the current connection
        self.sessions = 0  # successful subscriptions so far
        self.keys: set[str] = set()
        self.records: dict[tuple[str, Any], list[float]] = {}  # (name, value) -> times
        self.distinct = 0
        self.packs = 0
        self.bytes = 0
        self.duplicate_packs = 0
        self.duplicate_records = 0
        self.other_records = 0  # not from the demo's devices (the agent's own alarms)
        self.bad_packs = 0
        self.last_pack: list[senml.Resolved] = []
        self.last_key: str | None = None
        self.last_size = 0
        self.last_message = time.monotonic()

    @property
    def delivered(self) -> int:
        return self.distinct

    def values_of(self, device: str, suffix: str) -> dict[str, list[Any]]:
        """The distinct values received for ``device``'s records whose name ends with
        ``suffix``, by name (without the device's base name)."""
        base = senml.device_base_name(GATEWAY_ID, device)
        out: dict[str, list[Any]] = {}
        for (name, value), _ in self.records.items():
            if name.startswith(base) and name.endswith(suffix):
                out.setdefault(name.removeprefix(base), []).append(value)
        return out

    async def run(self) -> None:
        version = aiomqtt.ProtocolVersion.V5 if self.protocol == 5 else aiomqtt.ProtocolVersion.V311
        while True:
            try:
                async with aiomqtt.Client(
                    LOOPBACK,
                    self.port,
                    identifier="passerelle-demo-subscriber",
                    protocol=version,
                    keepalive=10,
                    timeout=5,
                ) as client:
                    await client.subscribe(TOPIC, qos=1)
                    self.sessions += 1
                    self.ready.set()
                    async for message in client.messages:
                        if isinstance(message.payload, bytes | bytearray):
                            self.handle(bytes(message.payload))
            except aiomqtt.MqttError:
                pass
            self.ready.clear()
            await asyncio.sleep(0.05)

    def handle(self, payload: bytes) -> None:
        try:
            records, key = senml.decode_pack(payload)
        except senml.SenMLError:
            self.bad_packs += 1
            return
        self.packs += 1
        self.bytes += len(payload)
        self.last_message = time.monotonic()
        self.last_pack, self.last_key, self.last_size = records, key, len(payload)
        if key is not None:
            if key in self.keys:
                self.duplicate_packs += 1
                self.duplicate_records += len(records)
                return
            self.keys.add(key)
        for r in records:
            if not r.name.startswith(self.prefixes):
                self.other_records += 1
                continue
            times = self.records.setdefault((r.name, r.value), [])
            if any(abs(t - r.time) <= SAME_TIME for t in times):
                self.duplicate_records += 1
            else:
                times.append(r.time)
                self.distinct += 1


# --------------------------------------------------------------------------------------------
# Log lines go to a file; the last warnings are shown inside the view


class _RecentWarnings(logging.Handler):
    def __init__(self, keep: int = 3) -> None:
        super().__init__(logging.WARNING)
        self.lines: deque[str] = deque(maxlen=keep)

    def emit(self, record: logging.LogRecord) -> None:
        if not record.name.startswith("passerelle"):
            return
        try:
            stamp = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
            self.lines.append(f"{stamp} {record.levelname.lower()} {record.getMessage()}")
        except Exception:  # noqa: BLE001 - a log line must never break the demo
            pass


# --------------------------------------------------------------------------------------------
# The demo


def _config(data_dir: Path, port: int, protocol: int) -> dict[str, Any]:
    return {
        "gateway": {"id": GATEWAY_ID, "data_dir": str(data_dir)},
        "uplink": {
            "url": f"mqtt://{LOOPBACK}:{port}",
            "allow_plaintext": True,  # loopback only, demo only
            "protocol": protocol,
            "batch_records": 100,
            "batch_age": 1.0,  # a live view: packs every second, not every minute
            "max_rate": 2000.0,
            "backoff_initial": 0.5,
            "backoff_max": 2.0,
            "state_interval": 2.0,
        },
        "log": {"level": "info"},
        "sources": [
            {"type": "sim.counter", "name": "counter", "interval": 0.01},
            {"type": "sim.env", "name": "env", "interval": 0.5, "values": 3},
        ],
    }


class Demo:
    def __init__(
        self,
        duration: float,
        as_json: bool,
        broker: str,
        out: TextIO,
        workdir: Path,
        log_stream: TextIO,
    ) -> None:
        self.workdir = workdir
        self.log_stream = log_stream
        self.duration = max(0.0, float(duration))
        self.cut_s = min(5.0, self.duration / 4)
        self.as_json = as_json
        self.broker_kind = broker
        self.out = out
        self.tty = out.isatty()
        self.phase = PHASE_START
        self.started = time.monotonic()
        self.run_s = 0.0
        self.drain_s = 0.0
        self.cut_measured = 0.0
        self.peak_depth = 0
        self.interrupted = False
        self.notes: list[str] = []
        self._samples: deque[tuple[float, int, int]] = deque(maxlen=16)
        self._stop_requested: asyncio.Event | None = None
        self._sigints = 0
        self.broker: _Broker | None = None
        self.link: _Link | None = None
        self.sub: _Subscriber | None = None
        self.agent: Agent | None = None
        self.street: Any = None  # demo_street.Street: the example street's lighting
        self.street_note: str | None = None  # why there is none
        self._street_seen = 0  # its events already printed (plain output)
        self.warnings = _RecentWarnings()

    # -- numbers --------------------------------------------------------------------------

    @property
    def produced(self) -> int:
        return sum(self.agent.produced.values()) if self.agent else 0

    @property
    def delivered(self) -> int:
        return self.sub.delivered if self.sub else 0

    def _sample(self) -> tuple[float, float]:
        now = time.monotonic()
        self._samples.append((now, self.produced, self.delivered))
        while len(self._samples) > 2 and now - self._samples[0][0] > 1.0:
            self._samples.popleft()
        t0, p0, d0 = self._samples[0]
        span = now - t0
        if span <= 0:
            return 0.0, 0.0
        return (self.produced - p0) / span, (self.delivered - d0) / span

    def summary(self) -> dict[str, Any]:
        assert self.agent is not None and self.sub is not None and self.broker is not None
        up = self.agent.uplink.stats
        st = self.agent.store.stats()
        produced, delivered = self.produced, self.delivered
        wire = self.link.bytes_up if self.link else 0
        return {
            "records_produced": produced,
            "records_delivered": delivered,
            "records_lost": produced - delivered,
            "broker": self.broker.name,
            "mqtt_protocol": "5" if self.broker.protocol == 5 else "3.1.1",
            "duplicates_received": self.sub.duplicate_records,
            "duplicate_packs": self.sub.duplicate_packs,
            "packs_received": self.sub.packs,
            "duration_s": round(self.run_s, 2),
            "broker_cut_s": round(self.cut_measured, 2),
            "final_drain_s": round(self.drain_s, 2),
            "store_peak_depth": self.peak_depth,
            "store_depth_end": st.depth,
            "evicted": sum(st.evicted.values()),
            "dropped": sum(self.agent.dropped.values()),
            "uplink_connects": up.connects,
            "upstream_bytes_per_record": round(wire / delivered, 2) if delivered else None,
            "payload_bytes_per_record": (
                round(up.bytes_sent / up.records_sent, 2) if up.records_sent else None
            ),
            "interrupted": self.interrupted,
            "lighting": self._street_summary(),
        }

    def _street_summary(self) -> dict[str, Any]:
        if self.street is None:
            return {"skipped": self.street_note}
        out: dict[str, Any] = self.street.summary()
        # What the gateway sent of the night's energy, as the subscriber decoded it.
        out["energy_received"] = self.sub.values_of("lighting", "/energy") if self.sub else {}
        return out

    # -- the run --------------------------------------------------------------------------

    async def run(self) -> int:
        tmp = self.workdir
        # Log lines would tear the live view: they go to a file (removed with the rest),
        # and the last warnings are shown inside the view.
        handler = setup_logging("info", "text", stream=self.log_stream)
        root = logging.getLogger()
        root.addHandler(self.warnings)
        loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        sub_task: asyncio.Task[None] | None = None
        agent_task: asyncio.Task[None] | None = None
        live: Any = None
        try:
            self.broker = _choose_broker(self.broker_kind, tmp / "mosquitto")
            try:
                await self.broker.start()
            except DemoError as exc:
                if self.broker_kind != "auto":
                    raise
                self.notes.append(f"{exc}; using amqtt instead")
                self.broker = _AmqttBroker()
                await self.broker.start()

            from .demo_street import prepare  # imports hil: only when a demo runs

            self.street, self.street_note = prepare(tmp, self.duration)
            if self.street_note:
                self.notes.append(self.street_note)
            devices = (*SOURCES, *(self.street.devices if self.street else ()))
            self.sub = _Subscriber(self.broker.port, self.broker.protocol, devices)
            sub_task = asyncio.create_task(self.sub.run(), name="demo-subscriber")
            await self._wait(self.sub.ready.wait(), 10.0, "the subscriber could not subscribe")

            self.link = _Link(self.broker.port)
            await self.link.open()

            cfg = parse(_config(tmp / "data", self.link.port, self.broker.protocol), tmp)
            self.agent = agent = Agent(cfg)
            agent.sources = [_Stoppable(s) for s in agent.sources]
            if self.street is not None:  # its records go through the store and the cut too
                agent.sources.append(_Stoppable(self.street))
            agent_task = asyncio.create_task(agent.run(), name="demo-agent")
            await asyncio.sleep(0)  # agent.run() installed its signal handlers: take them over
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.add_signal_handler(sig, self._on_signal)

            live = self._start_view()
            ui = asyncio.create_task(self._ui_loop(live, agent_task), name="demo-view")
            try:
                await self._scenario(agent, agent_task)
            finally:
                ui.cancel()
                await asyncio.gather(ui, return_exceptions=True)
            self._refresh(live)
            if live is not None:
                live.stop()
                live = None

            agent.stop()
            try:
                await asyncio.wait_for(asyncio.shield(agent_task), 10.0)
            except TimeoutError:
                agent_task.cancel()
            if agent_task.done() and not agent_task.cancelled() and agent_task.exception():
                raise DemoError(f"the agent failed: {agent_task.exception()!r}")

            result = self.summary()
            self._print_summary(result)
            if self.as_json:
                print(json.dumps(result), file=self.out, flush=True)
            return EXIT_OK if result["records_lost"] == 0 else EXIT_LOST
        except DemoError as exc:
            if live is not None:
                live.stop()
                live = None
            print(f"passerelle demo: {exc}", file=sys.stderr)
            return EXIT_SETUP
        finally:
            if live is not None:
                live.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                    loop.remove_signal_handler(sig)
            for task in (agent_task, sub_task):
                if task is not None and not task.done():
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if self.link is not None:
                await self.link.cut()
            if self.broker is not None:
                with contextlib.suppress(Exception):
                    await self.broker.close()
            root.removeHandler(self.warnings)
            root.removeHandler(handler)
            handler.close()

    async def _wait(self, aw: Awaitable[Any], timeout: float, why: str) -> Any:
        try:
            return await asyncio.wait_for(aw, timeout)
        except TimeoutError:
            raise DemoError(f"{why} within {timeout:.0f}s") from None

    def _on_signal(self) -> None:
        self._sigints += 1
        self.interrupted = True
        assert self._stop_requested is not None
        self._stop_requested.set()
        if self._sigints > 1 and self.agent is not None:
            self.agent.stop()  # second ^C: do not wait for the drain

    async def _sleep_until(self, deadline: float) -> bool:
        """Sleep until ``deadline`` (monotonic); False if the user asked to stop first."""
        assert self._stop_requested is not None
        delay = deadline - time.monotonic()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_requested.wait(), delay)
        return not self._stop_requested.is_set()

    async def _scenario(self, agent: Agent, agent_task: asyncio.Task[None]) -> None:
        self.started = time.monotonic()
        self.phase = PHASE_UP
        half = self.started + self.duration / 2
        if self.cut_s > 0 and await self._sleep_until(half):
            await self._cut()
        if await self._sleep_until(self.started + self.duration) and self.street is not None:
            # The street's night closes just before the end; its last records (the night's
            # energy) must be in the agent's hands before the sources stop.
            await self.street.handed_over(STREET_GRACE)
        self.run_s = time.monotonic() - self.started

        self.phase = PHASE_DRAIN
        drain_start = time.monotonic()
        for source in agent.sources:
            if isinstance(source, _Stoppable):
                await source.stop()
        await self._final_drain(agent, agent_task)
        self.drain_s = time.monotonic() - drain_start
        self.phase = PHASE_DONE

    async def _cut(self) -> None:
        assert self.link is not None and self.broker is not None and self.sub is not None
        t0 = time.monotonic()
        self.phase = PHASE_CUT
        if self.street is not None:
            self.street.backhaul(False)
        await self.link.cut()
        # Let the broker hand the subscriber what it already acknowledged, then kill it.
        quiet_since = time.monotonic()
        while time.monotonic() - t0 < 1.5:
            if time.monotonic() - max(quiet_since, self.sub.last_message) > 0.2:
                break
            await asyncio.sleep(0.02)
        sessions = self.sub.sessions
        await self.broker.crash()
        await self._sleep_until(t0 + self.cut_s)
        await self.broker.restart()
        # The subscriber first, so the agent's first publish after the outage is seen.
        deadline = time.monotonic() + 10.0
        while self.sub.sessions == sessions or not self.sub.ready.is_set():
            if time.monotonic() > deadline:
                raise DemoError("the subscriber did not come back after the broker restart")
            await asyncio.sleep(0.01)
        await self.link.open()
        if self.street is not None:
            self.street.backhaul(True)
        self.cut_measured = time.monotonic() - t0
        self.phase = PHASE_BACK

    async def _final_drain(self, agent: Agent, agent_task: asyncio.Task[None]) -> None:
        assert self.sub is not None
        await agent.store.seal()  # the sources stopped: the last packs need not wait
        deadline = time.monotonic() + DRAIN_TIMEOUT
        while time.monotonic() < deadline and not agent_task.done():
            if self._sigints > 1:
                return
            if agent.store.stats().depth == 0:
                if self.delivered >= self.produced:
                    return
                # Everything acknowledged; what is missing now could only be in flight
                # between broker and subscriber: give it a moment, not the whole timeout.
                if time.monotonic() - self.sub.last_message > 2.0:
                    return
            await asyncio.sleep(0.05)

    # -- view -----------------------------------------------------------------------------

    def _start_view(self) -> Any:
        if not self.tty:
            return None
        from rich.console import Console
        from rich.live import Live

        console = Console(file=self.out)
        live = Live(
            self._render(0.0, 0.0),
            console=console,
            auto_refresh=False,  # refreshed from the event loop: no thread reads our state
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        live.start()
        return live

    async def _ui_loop(self, live: Any, agent_task: asyncio.Task[None]) -> None:
        last_line = 0.0
        while True:
            self._update_phase()
            if live is not None:
                self._refresh(live)
            elif time.monotonic() - last_line >= 1.0:
                last_line = time.monotonic()
                produced_rate, _ = self._sample()
                print(self._progress_line(produced_rate), file=self.out, flush=True)
                self._print_street()
            if agent_task.done() and self._stop_requested is not None:
                self._stop_requested.set()  # the agent died: end the scenario
            await asyncio.sleep(REFRESH)

    def _print_street(self) -> None:
        street = self.street
        if street is None:
            return
        lines = [f"  {line}" for line in street.recent(self._street_seen)]
        self._street_seen = street.event_count
        for line in [f"  {street.status_line()}", *lines]:
            print(line, file=self.out, flush=True)

    def _update_phase(self) -> None:
        if self.agent is None:
            return
        st = self.agent.store.stats()
        self.peak_depth = max(self.peak_depth, st.depth)
        if self.phase == PHASE_BACK and (st.oldest_age is None or st.oldest_age < 1.0):
            self.phase = PHASE_UP

    def _refresh(self, live: Any) -> None:
        if live is None:
            return
        produced_rate, delivered_rate = self._sample()
        live.update(self._render(produced_rate, delivered_rate), refresh=True)

    def _elapsed(self) -> float:
        if self.phase in (PHASE_DRAIN, PHASE_DONE):
            return self.run_s
        return 0.0 if self.phase == PHASE_START else time.monotonic() - self.started

    def _progress_line(self, produced_rate: float) -> str:
        assert self.agent is not None
        h = self.agent.health()
        store = h["store"]
        age = "-" if store["oldest_age"] is None else f"{store['oldest_age']:.1f}s"
        return (
            f"[{self._elapsed():5.1f}s] {self.phase:<28} produced {self.produced} "
            f"({produced_rate:.0f}/s) delivered {self.delivered} "
            f"dup {self.sub.duplicate_records if self.sub else 0} "
            f"store {store['depth']} (oldest {age}) link {h['link']} "
            f"evicted {sum(h['evicted'].values())} dropped {sum(h['dropped'].values())}"
        )

    def _render(self, produced_rate: float, delivered_rate: float) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        assert self.agent is not None and self.sub is not None and self.broker is not None
        h = self.agent.health()
        store = h["store"]
        colour = {
            PHASE_UP: "bold green",
            PHASE_CUT: "bold red",
            PHASE_BACK: "bold yellow",
            PHASE_DRAIN: "bold cyan",
            PHASE_DONE: "bold green",
        }.get(self.phase, "bold")
        phase = Text.assemble(
            (f" {self.phase} ", f"reverse {colour}"),
            f"   {self._elapsed():5.1f} s of {self.duration:g} s",
            f"   (broker cut at {self.duration / 2:g} s for {self.cut_s:g} s)"
            if self.cut_s > 0
            else "",
        )
        link_colour = {"up": "green", "connecting": "yellow"}.get(h["link"], "red")
        age = "-" if store["oldest_age"] is None else f"{store['oldest_age']:.1f} s"
        up = self.agent.uplink.stats
        payload_per = f"{up.bytes_sent / up.records_sent:.1f}" if up.records_sent else "-"
        wire = self.link.bytes_up if self.link else 0
        wire_per = f"{wire / self.delivered:.1f}" if self.delivered else "-"

        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", justify="right")
        grid.add_column(justify="right")
        grid.add_column()
        grid.add_row("produced", f"{self.produced:,}", f"records   {produced_rate:6.0f} rec/s")
        grid.add_row(
            "delivered",
            f"{self.delivered:,}",
            f"records   {delivered_rate:6.0f} rec/s   "
            f"({self.sub.duplicate_records:,} redelivered, counted once)",
        )
        grid.add_row(
            "store", f"{store['depth']:,}", f"records   oldest {age}   peak {self.peak_depth:,}"
        )
        grid.add_row(
            "uplink",
            Text(h["link"], style=f"bold {link_colour}"),
            f"connects {up.connects}   packs {up.packs_sent:,}",
        )
        grid.add_row(
            "evicted",
            f"{sum(h['evicted'].values()):,}",
            f"dropped {sum(h['dropped'].values()):,}",
        )
        grid.add_row(
            "upstream",
            f"{wire_per}",
            f"bytes/record on the wire ({payload_per} SenML-CBOR payload)",
        )

        batch = Table(
            title="last pack received, decoded from SenML-CBOR",
            title_style="bold",
            caption=self._batch_caption(),
            expand=False,
        )
        batch.add_column("device:name")
        batch.add_column("value", justify="right")
        batch.add_column("unit")
        batch.add_column("time")
        prefix = f"urn:dev:ops:passerelle-{GATEWAY_ID}-"
        pack = self.sub.last_pack
        for r in pack[:BATCH_ROWS]:
            value = f"{r.value:g}" if isinstance(r.value, float) else str(r.value)
            stamp = datetime.fromtimestamp(r.time).strftime("%H:%M:%S.%f")[:-3]
            batch.add_row(r.name.removeprefix(prefix), value, r.unit or "", stamp)
        if len(pack) > BATCH_ROWS:
            batch.add_row(f"... {len(pack) - BATCH_ROWS} more", "", "", "")

        protocol = "5" if self.broker.protocol == 5 else "3.1.1"
        where = Text.assemble(
            f" {self.broker.name} {LOOPBACK}:{self.broker.port}, MQTT {protocol}, ",
            ("plaintext on loopback", "yellow"),
            " (allow_plaintext = true, demo only)",
        )
        parts: list[Any] = [phase, where, Text(""), grid, Text(""), batch]
        if self.street is not None:
            parts += [Text(""), self.street.render()]
        if self.warnings.lines:
            parts += [Text(""), Text("\n".join(self.warnings.lines), style="dim")]
        link = f":{self.link.port}" if self.link else ""
        subtitle = f"agent -> link {link} -> broker -> subscriber   Ctrl-C ends early"
        return Panel(
            Group(*parts),
            title=f"passerelle demo: gateway {GATEWAY_ID}",
            subtitle=subtitle,
            border_style=colour.replace("bold ", ""),
        )

    def _batch_caption(self) -> str:
        assert self.sub is not None
        if not self.sub.last_pack:
            return "no pack yet"
        return (
            f"{len(self.sub.last_pack)} records in {self.sub.last_size} bytes, "
            f"key {self.sub.last_key}"
        )

    def _print_summary(self, r: dict[str, Any]) -> None:
        ok = r["records_lost"] == 0
        cut = (
            f"cut for {r['broker_cut_s']} s after {self.duration / 2:g} s"
            if self.cut_measured
            else "never cut"
        )
        lines = [
            f"broker {r['broker']} (MQTT {r['mqtt_protocol']}), {cut}; "
            f"store peaked at {r['store_peak_depth']} records",
            f"produced {r['records_produced']} records, delivered {r['records_delivered']} "
            f"distinct ({r['duplicates_received']} redelivered and dropped by the subscriber), "
            f"final drain {r['final_drain_s']} s",
            f"upstream {r['upstream_bytes_per_record']} bytes/record on the wire, "
            f"{r['payload_bytes_per_record']} in SenML-CBOR",
            "every record produced was delivered" if ok else f"LOST {r['records_lost']} records",
        ]
        if self.street is not None:
            lines += self.street.summary_lines(r["lighting"].get("energy_received"))
        lines += [f"note: {n}" for n in self.notes]
        for line in lines:
            print(line, file=self.out, flush=True)


def run_demo(duration: float = 30.0, as_json: bool = False, broker: str = "auto") -> int:
    """Run the demo; 0 when every record produced was delivered, 1 otherwise, 2 on set-up."""
    if broker not in ("auto", "mosquitto", "amqtt"):
        raise ValueError(f"broker must be auto, mosquitto or amqtt, not {broker!r}")
    workdir = Path(tempfile.mkdtemp(prefix="passerelle-demo-"))
    try:
        with open(workdir / "agent.log", "a", encoding="utf-8") as log_stream:
            demo = Demo(duration, as_json, broker, sys.stdout, workdir, log_stream)
            return asyncio.run(demo.run())
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
