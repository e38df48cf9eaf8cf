"""The whole agent against a real mosquitto, over mutual TLS.

The agent runs as a subprocess (``python -m hil.crashrig``), exactly as in production plus a
*put log*: every batch whose ``put`` returned, i.e. every record the store promised to keep.
An upstream subscriber (MQTT 5, persistent session, QoS 1, its own client certificate)
collects what the broker delivers. The central check of several tests is then::

    stored (put log)  ⊆  delivered  ∪  still in the store

and, for redeliveries, that a value seen more than once always came in packs with the same
idempotency key (``<gateway>/<first-seq>-<last-seq>``), so a consumer can drop them.

Brokers that are killed or stopped mid-test (:func:`durable_broker`) run with persistence
and ``max_queued_messages 0``, and the subscriber then uses an MQTT 3.1.1 persistent session
(see :class:`Upstream` for why not MQTT 5): its session and queued messages survive, so
nothing the broker acknowledged to the agent is lost on the subscriber's side while both
reconnect, whichever comes back first. What is tested is the agent, not the race between
two reconnecting clients.

The client-certificate refusals (a client without a valid certificate) are covered in
``test_broker_tls.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hil.crashrig import read_put_log
from hil.mosquitto import Mosquitto
from hil.pki import Pki
from passerelle import senml
from passerelle.model import Priority
from passerelle.store import DurableStore

from .conftest import GATEWAY_ID

REPO = Path(__file__).resolve().parent.parent
PREFIX = f"passerelle/{GATEWAY_ID}/"
KEY_RE = re.compile(rf"^{re.escape(GATEWAY_ID)}/(\d+)-(\d+)$")
V5 = aiomqtt.ProtocolVersion.V5
V311 = aiomqtt.ProtocolVersion.V311
#: mosquitto 2.0 sweeps for expired keepalives at most this often (whole seconds).
MOSQUITTO_KEEPALIVE_SWEEP = 6.0


def base_name(device: str) -> str:
    return senml.device_base_name(GATEWAY_ID, device)


def counter_name(device: str = "counter", name: str = "counter") -> str:
    """The resolved SenML name of a sim.counter's records."""
    return base_name(device) + name


# ------------------------------------------------------------------------------ waiting


async def wait_until(
    predicate: Callable[[], bool], timeout: float, what: Callable[[], str] | str
) -> None:
    """Poll ``predicate`` until true; AssertionError with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            msg = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s: {msg}")
        await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------- config


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | os.PathLike):
        return json.dumps(str(value))  # a JSON string is a valid TOML basic string
    raise TypeError(f"no TOML for {value!r}")


def toml_dumps(doc: dict[str, Any]) -> str:
    """Enough TOML for agent configs: tables of scalars and arrays of tables."""
    out: list[str] = []
    for name, body in doc.items():
        if isinstance(body, list):
            for item in body:
                out.append(f"\n[[{name}]]")
                out += [f"{k} = {toml_value(v)}" for k, v in item.items()]
        else:
            out.append(f"\n[{name}]")
            out += [f"{k} = {toml_value(v)}" for k, v in body.items()]
    return "\n".join(out).lstrip() + "\n"


def counter(interval: float, start: int = 0, **kw: Any) -> dict[str, Any]:
    return {"type": "sim.counter", "name": "counter", "interval": interval, "start": start, **kw}


def agent_config(
    path: Path,
    broker: Mosquitto,
    pki: Pki,
    data_dir: Path,
    *,
    sources: list[dict[str, Any]] = (),  # type: ignore[assignment]
    protocol: int = 5,
    keepalive: int = 5,
    uplink: dict[str, Any] | None = None,
    store: dict[str, Any] | None = None,
) -> Path:
    """Write a config for the agent on ``broker``'s TLS listener; returns ``path``."""
    doc: dict[str, Any] = {
        "gateway": {"id": GATEWAY_ID, "data_dir": data_dir},
        "uplink": {
            "url": f"mqtts://localhost:{broker.tls_port}",
            "ca_file": pki.ca_cert,
            "cert_file": pki.client_cert,
            "key_file": pki.client_key,
            "protocol": protocol,
            "keepalive": keepalive,
            "backoff_initial": 0.1,
            "backoff_max": 0.5,
            "state_interval": 0.3,
            "max_rate": 200000.0,
            "batch_age": 0.2,  # tests wait for delivery: packs go at once, not each minute
            **(uplink or {}),
        },
        "store": {"max_delay": 0.01, **(store or {})},
        "log": {"level": "info"},
    }
    if sources:
        doc["sources"] = list(sources)
    path.write_text(toml_dumps(doc))
    return path


# --------------------------------------------------------------------------- the agent


class Rig:
    """``python -m hil.crashrig CONFIG --put-log FILE`` as a subprocess."""

    def __init__(self, config: Path, put_log: Path | None, logdir: Path, label: str) -> None:
        self.config = config
        self.put_log = put_log
        self.stdout_path = logdir / f"{label}.stdout"
        self.stderr_path = logdir / f"{label}.stderr"
        cmd = [sys.executable, "-m", "hil.crashrig", str(config)]
        if put_log is not None:
            cmd += ["--put-log", str(put_log)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env
            )
        self.started = time.monotonic()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    async def wait_started(self, timeout: float = 10.0) -> None:
        """Until the rig says it starts the agent (imports and config done)."""
        await wait_until(
            lambda: "starting agent" in self.stdout() or self.proc.poll() is not None,
            timeout,
            lambda: f"crashrig did not start:\n{self.stderr()[-3000:]}",
        )
        assert self.proc.poll() is None, f"crashrig exited {self.proc.returncode}:\n{self.stderr()}"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for a clean exit; returns the exit status."""
        assert self.proc.poll() is None, f"agent died early:\n{self.stderr()[-3000:]}"
        self.proc.send_signal(signal.SIGTERM)
        try:
            await wait_until(lambda: self.proc.poll() is not None, timeout, "agent exit")
        except AssertionError:
            self.kill()
            raise AssertionError(
                f"agent did not stop within {timeout}s of SIGTERM:\n{self.stderr()[-3000:]}"
            ) from None
        return self.proc.returncode


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    """Factory ``rigs(config, put_log=None)``; every rig is killed at teardown."""
    started: list[Rig] = []
    logdir = tmp_path / "rig-logs"
    logdir.mkdir()

    def start(config: Path, put_log: Path | None = None) -> Rig:
        rig = Rig(config, put_log, logdir, f"rig{len(started)}")
        started.append(rig)
        return rig

    yield start
    for rig in started:
        rig.kill()
    if started:  # shown with a failing test's captured output
        print(f"--- last agent's stderr ({started[-1].stderr_path}):")
        print(started[-1].stderr()[-6000:])


@pytest.fixture
def durable_broker(pki: Pki, mosquitto_bin: str, tmp_path: Path) -> Iterator[Mosquitto]:
    """A TLS broker that keeps sessions and queued messages across stop/start (and, saved
    every second, across a kill)."""
    mosq = Mosquitto(
        pki,
        plain=False,
        workdir=tmp_path / "durable-mosquitto",
        persistence_dir=tmp_path / "durable-mosquitto" / "db",
        autosave_interval=1,
        extra_conf=["max_queued_messages 0"],
        executable=mosquitto_bin,
    )
    mosq.start()
    try:
        yield mosq
    finally:
        mosq.stop()
        print(f"--- mosquitto log ({mosq.log_path}):")
        print(mosq.log_text()[-6000:])


async def autosaved(broker: Mosquitto, timeout: float = 6.0) -> None:
    """Wait for the broker's next save of its persistence file (what survives a kill)."""
    needle = "Saving in-memory database"
    before = broker.log_text().count(needle)
    await wait_until(
        lambda: broker.log_text().count(needle) > before, timeout, "no mosquitto autosave"
    )


# ----------------------------------------------------------------------- the upstream


@dataclass
class Pack:
    key: str | None
    records: list[senml.Resolved]
    content_type: str | None
    user_properties: list[tuple[str, str]]
    compressed: bool = False


@dataclass
class State:
    arrived: float  # monotonic
    retain: bool
    body: dict[str, Any]


@dataclass
class Upstream:
    """A reconnecting subscriber to ``passerelle/<gw>/#`` (QoS 1) with a persistent session.

    Collects packs and states across reconnects and broker restarts.

    * ``V5`` (default): sees the MQTT 5 properties (content type, user properties). The
      first connection starts a clean session, later ones resume it (``clean_start`` false,
      session expiry one hour). Good while the broker process lives: mosquitto 2.0.11
      restores MQTT 5 sessions from its persistence file but then neither delivers the
      messages queued in them nor queues new ones while the client is away.
    * ``V311``: ``clean_session`` false on every connection. mosquitto restores these
      sessions after a stop or a kill (from its last autosave) and queues for them, so with
      :func:`durable_broker` nothing published while the subscriber reconnects is missed.
    """

    broker: Mosquitto
    pki: Pki
    protocol: aiomqtt.ProtocolVersion = V5
    client_id: str = field(default_factory=lambda: f"upstream-{uuid.uuid4().hex[:8]}")
    packs: list[Pack] = field(default_factory=list)
    states: list[State] = field(default_factory=list)
    connects: int = 0
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        cert = self.pki.issue_client_cert("upstream")
        self._tls = self.pki.client_ssl_context(cert.cert, cert.key)
        self.connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Upstream:
        self._task = asyncio.create_task(self._run(), name="upstream")
        await self.wait_connected()
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass

    async def wait_connected(self, timeout: float = 10.0) -> None:
        try:
            await asyncio.wait_for(self.connected.wait(), timeout)
        except TimeoutError:
            raise AssertionError(f"upstream not connected in {timeout}s: {self.errors[-3:]}") from None

    async def _run(self) -> None:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        while True:
            session: dict[str, Any]
            if self.protocol == V5:
                session = {"clean_start": self.connects == 0, "properties": props}
            else:
                session = {"clean_session": False}
            client = aiomqtt.Client(
                self.broker.host,
                self.broker.tls_port,
                identifier=self.client_id,
                protocol=self.protocol,
                tls_context=self._tls,
                keepalive=5,
                timeout=5,
                **session,
            )
            try:
                async with client:
                    await client.subscribe(PREFIX + "#", qos=1)
                    self.connects += 1
                    self.connected.set()
                    async for message in client.messages:
                        self._take(message)
            except aiomqtt.MqttError as exc:
                self.errors.append(str(exc))
            self.connected.clear()
            await asyncio.sleep(0.1)

    def _take(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = message.payload
        assert isinstance(payload, bytes)
        if topic == PREFIX + "state":
            body = json.loads(payload)
            self.states.append(State(time.monotonic(), bool(message.retain), body))
        elif topic == PREFIX + "up/senml":
            records, key = senml.decode_pack(payload)
            props = message.properties
            ctype = getattr(props, "ContentType", None) if props is not None else None
            user = list(getattr(props, "UserProperty", None) or []) if props is not None else []
            self.packs.append(Pack(key, records, ctype, user, senml.is_compressed(payload)))

    # -- queries ---------------------------------------------------------------------------

    def values(self, name: str = counter_name()) -> dict[Any, list[str | None]]:
        """value -> idempotency keys of the packs it arrived in (once per arrival)."""
        out: dict[Any, list[str | None]] = defaultdict(list)
        for pack in self.packs:
            for r in pack.records:
                if r.name == name:
                    out[r.value].append(pack.key)
        return out

    def records(self, name_prefix: str) -> list[senml.Resolved]:
        return [r for p in self.packs for r in p.records if r.name.startswith(name_prefix)]

    def states_since(self, t: float) -> list[dict[str, Any]]:
        return [s.body for s in self.states if s.arrived >= t]

    async def wait_state(
        self, predicate: Callable[[dict[str, Any]], bool], *, since: float, timeout: float
    ) -> dict[str, Any]:
        """The first state received after ``since`` (monotonic) that satisfies ``predicate``."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found[:] = [s for s in self.states_since(since) if predicate(s)][:1]
            return bool(found)

        await wait_until(
            check, timeout, lambda: f"no such state; last: {self.states[-1:]} errors {self.errors[-3:]}"
        )
        return found[0]


async def retained_state(broker: Mosquitto, pki: Pki, timeout: float = 5.0) -> aiomqtt.Message:
    """What a client subscribing now gets on ``state``: the retained message."""
    async with asyncio.timeout(timeout):
        async with aiomqtt.Client(
            broker.host, broker.tls_port, tls_context=pki.client_ssl_context(),
            identifier=f"peek-{uuid.uuid4().hex[:8]}", protocol=V5, timeout=timeout,
        ) as client:
            await client.subscribe(PREFIX + "state", qos=1)
            async for message in client.messages:
                return message
    raise AssertionError("unreachable")


# ------------------------------------------------------------------------ bookkeeping


def stored_counter_values(put_log: Path, src: str = "counter") -> set[int]:
    """Every counter value whose put returned, from the rig's put log."""
    out: set[int] = set()
    for e in read_put_log(put_log):
        if e["src"] == src:
            out.update(range(e["first"], e["first"] + e["n"]))
    return out


def stored_during(put_log: Path, t0: float, t1: float, src: str = "counter") -> set[int]:
    """Counter values whose put returned between wall-clock times ``t0`` and ``t1``."""
    out: set[int] = set()
    for e in read_put_log(put_log):
        if e["src"] == src and t0 <= e["t"] <= t1:
            out.update(range(e["first"], e["first"] + e["n"]))
    return out


async def store_contents(path: Path) -> list[tuple[Priority, Any]]:
    """(priority, record) of everything in a (closed) store, without acknowledging any."""
    out = []
    async with DurableStore(path) as store:
        while segments := await store.lease(16):
            out += [(s.priority, r) for s in segments for r in s.records]
    return out


def missing_summary(missing: set[int]) -> str:
    xs = sorted(missing)
    return f"{len(xs)} missing, e.g. {xs[:10]}"


def check_keys(up: Upstream) -> None:
    """Every pack has a well-formed key whose range can hold its records (other priorities'
    records may sit inside the range), and a key always comes with the same records (a key
    reused for other data would make a consumer drop data it never had)."""
    content: dict[str, list[tuple[str, Any, float]]] = {}
    for pack in up.packs:
        assert pack.key is not None, "pack without idk"
        m = KEY_RE.match(pack.key)
        assert m, f"malformed idempotency key {pack.key!r}"
        first, last = int(m[1]), int(m[2])
        assert 1 <= len(pack.records) <= last - first + 1, (pack.key, len(pack.records))
        records = sorted(((r.name, r.value, r.time) for r in pack.records), key=repr)
        if content.setdefault(pack.key, records) != records:
            raise AssertionError(f"key {pack.key} came with different records")


def duplicates_share_keys(seen: dict[Any, list[str | None]]) -> int:
    """Assert every value that arrived more than once came under one key; return how many
    values arrived more than once."""
    dups = {v: keys for v, keys in seen.items() if len(keys) > 1}
    bad = {v: sorted(set(keys)) for v, keys in dups.items() if len(set(keys)) > 1}
    assert not bad, f"redelivered under different idempotency keys: {list(bad.items())[:5]}"
    return len(dups)


# ============================================================================ the tests


@pytest.mark.parametrize("protocol", [5, 3], ids=["mqtt5", "mqtt311"])
async def test_happy_path(broker, pki, tmp_path, rigs, protocol):
    data_dir = tmp_path / "data"
    put_log = tmp_path / "put.log"
    cfg = agent_config(
        tmp_path / "agent.toml", broker, pki, data_dir,
        sources=[counter(0.002)], protocol=protocol,
    )
    async with asyncio.timeout(45), Upstream(broker, pki) as up:
        t0 = time.monotonic()
        rig = rigs(cfg, put_log)
        await up.wait_state(
            lambda s: s["online"] and s["produced"].get("counter", 0) > 0, since=t0, timeout=15
        )
        await asyncio.sleep(2.0)
        snapshot = stored_counter_values(put_log)
        assert len(snapshot) > 300, f"only {len(snapshot)} values stored in 2 s"
        await wait_until(
            lambda: snapshot <= up.values().keys(), 10,
            lambda: missing_summary(snapshot - up.values().keys()),
        )

        # The retained state, as any newcomer sees it.
        message = await retained_state(broker, pki)
        assert message.retain
        state = json.loads(message.payload)
        assert state["online"] is True
        assert state["gateway"] == GATEWAY_ID
        assert state["link"] == "up"
        assert isinstance(state["store"]["depth"], int) and state["store"]["depth"] >= 0
        assert state["store"]["quarantined"] == 0
        assert state["evicted"] == {"full": 0, "ttl": 0, "disk_full": 0, "corrupt": 0,
                                      "commit_failed": 0}
        assert state["sent"]["records"] > 0 and state["produced"]["counter"] > 0

        t_stop = time.monotonic()
        assert await rig.terminate() == 0
        goodbye = await up.wait_state(lambda s: s["online"] is False, since=t_stop, timeout=5)
        # The agent's own goodbye (with its health), not the broker's last will.
        assert goodbye.get("gateway") == GATEWAY_ID and "reason" not in goodbye
        message = await retained_state(broker, pki)
        assert message.retain and json.loads(message.payload)["online"] is False

    # Everything the store took was delivered, or is still in the store.
    stored = stored_counter_values(put_log)
    left = {r.value for _, r in await store_contents(data_dir / "store.db")}
    seen = up.values()
    missing = stored - seen.keys() - left
    assert not missing, missing_summary(missing)
    # Also what was stored but not logged (the put returned as SIGTERM cancelled the source).
    produced = seen.keys() | left
    assert produced == set(range(len(produced))), "gaps or strangers among the values"
    check_keys(up)
    # zlib by default: every pack of more than a few counter values shrinks.
    assert sum(p.compressed for p in up.packs) >= len(up.packs) - 1
    # At least once allows duplicates, but only after a failure: none here.
    dups = duplicates_share_keys(seen)
    assert dups == 0, f"{dups} of {len(seen)} values delivered twice on a steady link"
    if protocol == 5:
        for pack in up.packs:
            assert pack.content_type == senml.CONTENT_TYPE
            coding = [("content-encoding", "deflate")] if pack.compressed else []
            assert pack.user_properties == [("idempotency-key", pack.key), *coding]
    else:
        assert all(p.content_type is None and not p.user_properties for p in up.packs)


@pytest.mark.parametrize("how", ["sigkill", "sigstop"])
async def test_last_will_when_the_agent_dies(broker, pki, tmp_path, rigs, how):
    """SIGKILL: the kernel closes the socket, the broker sees it at once. SIGSTOP (a wedged
    gateway, a cut cable): only the keepalive tells, after 1.5 x keepalive.

    mosquitto 2.0 checks keepalives in a sweep that runs at most every 6 s (``keepalive.c``:
    ``last_keepalive_check + 5 < now_s``, whole seconds), so a hung client's will comes up
    to ~6 s after 1.5 x keepalive: that bound is the broker's, not the agent's.
    """
    keepalive = 2
    cfg = agent_config(
        tmp_path / "agent.toml", broker, pki, tmp_path / "data",
        sources=[counter(0.01)], keepalive=keepalive,
    )
    async with asyncio.timeout(30), Upstream(broker, pki) as up:
        t0 = time.monotonic()
        rig = rigs(cfg)
        await up.wait_state(lambda s: s["online"], since=t0, timeout=15)
        t_dead = time.monotonic()
        if how == "sigkill":
            rig.kill()
        else:
            os.kill(rig.pid, signal.SIGSTOP)  # the rigs fixture SIGKILLs it at teardown
        will = await up.wait_state(lambda s: s["online"] is False, since=t_dead, timeout=15)
        delay = time.monotonic() - t_dead
    assert will == {"online": False, "reason": "connection lost"}
    if how == "sigkill":
        assert delay <= keepalive * 1.5, f"will after {delay:.2f}s"
    else:
        assert keepalive <= delay <= keepalive * 1.5 + MOSQUITTO_KEEPALIVE_SWEEP + 1.0, (
            f"will after {delay:.2f}s"
        )
    message = await retained_state(broker, pki)
    assert message.retain and json.loads(message.payload) == will


async def test_broker_killed_and_restarted_loses_nothing(durable_broker, pki, tmp_path, rigs):
    broker = durable_broker
    data_dir = tmp_path / "data"
    put_log = tmp_path / "put.log"
    cfg = agent_config(tmp_path / "agent.toml", broker, pki, data_dir, sources=[counter(0.001)])
    async with asyncio.timeout(50), Upstream(broker, pki, V311) as up:
        t0 = time.monotonic()
        rig = rigs(cfg, put_log)
        await up.wait_state(lambda s: s["online"], since=t0, timeout=15)
        await wait_until(lambda: len(up.values()) > 200, 10, "first values")
        await autosaved(broker)  # the upstream's session survives the kill

        wall_kill = time.time()
        broker.kill()
        await asyncio.sleep(1.5)  # the agent stores on, reconnecting in vain
        wall_up = time.time()
        t_up = time.monotonic()
        await asyncio.to_thread(broker.start)
        await up.wait_state(lambda s: s["online"] and s["link"] == "up", since=t_up, timeout=15)
        await asyncio.sleep(1.0)

        during = stored_during(put_log, wall_kill, wall_up)
        assert len(during) > 500, f"only {len(during)} values stored while the broker was down"
        snapshot = stored_counter_values(put_log)
        await wait_until(
            lambda: snapshot <= up.values().keys(), 15,
            lambda: missing_summary(snapshot - up.values().keys()),
        )
        assert await rig.terminate() == 0
        assert up.connects >= 2, "the upstream never reconnected: was the broker restarted?"

    stored = stored_counter_values(put_log)
    left = {r.value for _, r in await store_contents(data_dir / "store.db")}
    seen = up.values()
    missing = stored - seen.keys() - left
    assert not missing, missing_summary(missing)
    check_keys(up)
    dups = duplicates_share_keys(seen)
    print(f"{len(stored)} values stored, {len(seen)} delivered, {dups} delivered twice or more")


async def test_full_store_counts_evictions_and_keeps_alarms(durable_broker, pki, tmp_path, rigs):
    broker = durable_broker
    put_log = tmp_path / "put.log"
    cfg = agent_config(
        tmp_path / "agent.toml", broker, pki, tmp_path / "data",
        sources=[
            counter(0.00002),  # as fast as the store takes it: ~1 MiB in a few seconds
            {"type": "sim.env", "name": "env", "interval": 0.1, "priority": "alarm",
             "seed": 3, "values": 3},
        ],
        store={"max_bytes": 1024 * 1024},
    )
    async with asyncio.timeout(55), Upstream(broker, pki, V311) as up:
        await asyncio.to_thread(broker.stop)  # clean stop: the upstream's session is saved
        rig = rigs(cfg, put_log)
        await rig.wait_started()
        # ~20 bytes a record in the store: wait for well over 1 MiB of telemetry.
        await wait_until(
            lambda: len(stored_counter_values(put_log)) > 150_000, 25,
            lambda: f"{len(stored_counter_values(put_log))} counter values stored",
        )
        t_up = time.monotonic()
        await asyncio.to_thread(broker.start)
        state = await up.wait_state(lambda s: s["online"], since=t_up, timeout=15)
        assert state["evicted"]["full"] > 0, state
        assert state["store"]["bytes"] <= 1024 * 1024, state
        assert state["dropped"] == {}, state

        env = base_name("env")
        await asyncio.sleep(1.0)
        expected = [
            (base_name(d) + n, v, t)
            for e in read_put_log(put_log) if e["src"] == "env"
            for d, n, v, t, _ in e["records"]
        ]
        assert expected and all(e["prio"] == Priority.ALARM for e in read_put_log(put_log)
                                if e["src"] == "env")

        def undelivered() -> list[tuple[str, Any, float]]:
            got: dict[tuple[str, Any], list[float]] = defaultdict(list)
            for r in up.records(env):
                got[(r.name, r.value)].append(r.time)
            return [
                (n, v, t) for n, v, t in expected
                if not any(abs(t - t2) < 0.005 for t2 in got.get((n, v), ()))
            ]

        await wait_until(
            lambda: not undelivered(), 15,
            lambda: f"{len(undelivered())} of {len(expected)} alarm records not delivered: "
            f"{[(n[-12:], v, round(time.time() - t, 2)) for n, v, t in undelivered()][:20]} "
            f"state {up.states[-1].body}",
        )
        assert await rig.terminate() == 0
    check_keys(up)
    duplicates_share_keys(up.values())


async def test_corrupt_store_is_quarantined_and_reported(broker, pki, tmp_path, rigs):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    garbage = b"this is not a database\n" + os.urandom(16384)
    (data_dir / "store.db").write_bytes(garbage)
    cfg = agent_config(tmp_path / "agent.toml", broker, pki, data_dir, sources=[counter(0.05)])
    async with asyncio.timeout(30), Upstream(broker, pki) as up:
        t0 = time.monotonic()
        rig = rigs(cfg)
        state = await up.wait_state(lambda s: s["online"], since=t0, timeout=15)
        assert state["store"]["quarantined"] == 1, state
        assert "quarantined" in (state["last_error"] or ""), state
        alarm_name = base_name("gateway") + "alarm/store.corrupt"
        await wait_until(lambda: up.records(alarm_name), 10, "alarm/store.corrupt never arrived")
        # One alarm; it may be delivered more than once, always in the same pack.
        alarms = {(p.key, r) for p in up.packs for r in p.records if r.name == alarm_name}
        assert len(alarms) == 1, alarms
        ((_, alarm),) = alarms
        assert isinstance(alarm.value, str) and "store.db.corrupt-" in alarm.value
        # ...and the agent works on with a fresh store.
        await wait_until(lambda: len(up.values()) > 5, 10, "no counter values after quarantine")
        assert await rig.terminate() == 0
    check_keys(up)
    kept = [p for p in data_dir.iterdir() if p.name.startswith("store.db.corrupt-")]
    assert [p.read_bytes() for p in kept if not p.name.endswith(("-wal", "-shm"))] == [garbage]


BAD_CONFIG = """\
[gateway]
id = "cab-0042"
data_dir = "{data_dir}"

[uplink]
url = "mqtts://localhost:8883"
ca_file = "{ca}"
cert_file = "missing-client.crt"
key_file = "{key}"

[[sources]]
type = "sim.counter"
name = "counter"
interval = -1
"""


@pytest.mark.parametrize(
    "command",
    [["-m", "passerelle.cli", "check-config"], ["-m", "passerelle.cli", "run", "--config"]],
    ids=["check-config", "run"],
)
def test_bad_config_is_refused_with_paths(pki, tmp_path, command):
    bad = tmp_path / "bad.toml"
    bad.write_text(
        BAD_CONFIG.format(data_dir=tmp_path / "data", ca=pki.ca_cert, key=pki.client_key)
    )
    proc = subprocess.run(
        [sys.executable, *command, str(bad)],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 2, proc
    assert "sources[0].interval" in proc.stderr, proc.stderr
    assert "uplink.cert_file" in proc.stderr, proc.stderr
    assert "missing-client.crt" in proc.stderr
    assert not (tmp_path / "data").exists(), "a refused config must not start anything"
