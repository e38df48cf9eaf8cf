"""Builds the radio and the edge network server from the config, and runs them in the agent.

Owns what must outlive a restart besides the store: ``lorawan.db`` (sessions and counters)
and ``dutycycle.json`` (the last hour of airtime per band), both in the data directory.
A restart loop must not reset the hour, or a crash-looping gateway would exceed its legal
airtime; the ledger is saved after every transmission (atomically) and read at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from ..model import Priority, Record
from ..radio.base import Radio
from .airtime import airtime_of
from .codecs import get_codec
from .config import LorawanConfig, RadioConfig
from .server import NetworkServer
from .sessions import SessionStore

log = logging.getLogger("passerelle.lorawan")

Emit = Callable[[Sequence[Record], Priority], Awaitable[None]]


def build_radio(rc: RadioConfig) -> Radio:
    """The backend named by ``[radio] type``; hardware libraries are imported only here."""
    if rc.type == "semtech-udp":
        from ..radio.semtech_udp import SemtechUDPRadio

        host, _, port = rc.listen.rpartition(":")  # type: ignore[union-attr]
        return SemtechUDPRadio(host=host or "0.0.0.0", port=int(port),
                               tx_ack_timeout=rc.tx_ack_timeout)  # type: ignore[union-attr]
    if rc.type == "at-modem":
        from ..radio.at_modem import AtModemRadio

        return AtModemRadio(
            rc.port, rc.dialect, frequency=rc.frequency, datarate=rc.datarate,  # type: ignore[union-attr]
            baudrate=rc.baud, tx_power=int(rc.power),  # type: ignore[union-attr]
        )
    if rc.type == "sx127x":
        from drivers.sx127x_pi import open_sx127x

        from ..radio.sx127x import SX127xRadio

        driver = open_sx127x(spi_bus=rc.spi_bus, spi_device=rc.spi_device,  # type: ignore[union-attr]
                             reset_line=rc.reset_line, gpio_chip=rc.gpiochip)  # type: ignore[union-attr]
        return SX127xRadio(driver, rx_frequency=rc.frequency, rx_datarate=rc.datarate,  # type: ignore[union-attr]
                           max_tx_power=int(rc.power))  # type: ignore[union-attr]
    if rc.type == "sim":
        return _SimRadio(rc.seed)  # type: ignore[union-attr]
    raise ValueError(f"unknown radio type {rc.type!r}")


class _SimRadio:
    """``[radio] type = "sim"``: the gateway of a simulated medium (``hil/radio_medium``).

    Built at start (the medium runs on the event loop's clock). With no simulated devices
    placed on the medium it hears nothing: a lab gateway with the LoRaWAN service running.
    Tests and the demo place devices with ``self.medium.add_device``.
    """

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.medium: Any = None
        self.gateway: Any = None

    async def start(self) -> None:
        from hil.radio_medium import AsyncioClock, Medium

        self.medium = Medium(AsyncioClock(), seed=self.seed)
        self.gateway = self.medium.add_gateway("gateway", (0.0, 0.0))
        await self.gateway.start()

    async def stop(self) -> None:
        if self.gateway is not None:
            await self.gateway.stop()

    async def receive(self) -> Any:
        return await self.gateway.receive()

    async def transmit(self, request: Any) -> Any:
        return await self.gateway.transmit(request)


LEDGER_SAVE_INTERVAL = 1.0  # s: a crash forgets at most this much of the airtime ledger


class _PersistentGate:
    """The duty-cycle gate, saved to disk at most once a second after a transmission.

    Saving (a JSON snapshot of the hour, fsynced) after every downlink cost about 4.4 ms,
    85 % of a class A answer (``python -m hil.bench_lorawan``). Saving at most once a second,
    and at stop, bounds what a crash can forget to the transmissions of the last second; a
    crash-looping agent restarts every few seconds (systemd RestartSec) and so still cannot
    reset its hour.
    """

    def __init__(self, path: Path) -> None:
        from ..policy.dutycycle import DutyCycleGate

        self.path = path
        self.gate = DutyCycleGate()
        self._last_save = -LEDGER_SAVE_INTERVAL
        self._pending: asyncio.TimerHandle | None = None
        try:
            self.gate.restore(json.loads(path.read_text()))
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError) as exc:  # unreadable: start cautious, say so
            log.error("duty-cycle ledger %s unreadable (%s): starting empty", path, exc,
                      extra={"cause": "lorawan.dutycycle"})

    def check(self, frequency: float, airtime: float, power: float) -> Any:
        return self.gate.check(frequency, airtime, power)

    def record(self, frequency: float, airtime: float) -> None:
        self.gate.record(frequency, airtime)
        self._changed()

    async def acquire(self, frequency: float, airtime: float, power: float,
                      deadline: float | None) -> Any:
        decision = await self.gate.acquire(frequency, airtime, power, deadline)
        if decision.ok:
            self._changed()
        return decision

    def _changed(self) -> None:
        if self._pending is not None:
            return  # a save is already due
        wait = self._last_save + LEDGER_SAVE_INTERVAL - time.monotonic()
        if wait <= 0:
            self.save()
            return
        self._pending = asyncio.get_running_loop().call_later(wait, self._flush)

    def _flush(self) -> None:
        self._pending = None
        self.save()

    def close(self) -> None:
        """Save now if anything is waiting (clean stop)."""
        if self._pending is not None:
            self._pending.cancel()
            self._flush()

    def utilisation(self) -> dict[str, float]:
        return dict(self.gate.utilisation())

    def save(self) -> None:
        self._last_save = time.monotonic()
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(self.gate.snapshot(), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class LorawanService:
    """The radio plus the network server, as one supervised component of the agent."""

    def __init__(
        self,
        lorawan: LorawanConfig,
        radio_cfg: RadioConfig | None,
        data_dir: str | os.PathLike[str],
        emit: Emit,
        *,
        radio: Radio | None = None,
    ) -> None:
        if radio is None:
            if radio_cfg is None:
                raise ValueError("no [radio] configured")
            radio = build_radio(radio_cfg)
        self.radio = radio
        self.data_dir = Path(data_dir)
        self.sessions = SessionStore(self.data_dir / "lorawan.db")
        self.gate = _PersistentGate(self.data_dir / "dutycycle.json")
        layouts = dict(lorawan.codecs)
        self.server = NetworkServer(
            lorawan, radio, self.sessions, emit, self.gate,
            codec_for=lambda name: get_codec(name, layouts),
            airtime=lambda dr, n: airtime_of(dr, n, uplink=False),
            clock=time.time,
        )

    async def run(self) -> None:
        await asyncio.to_thread(self.sessions.open)
        try:
            self.server.provision()
            await self.radio.start()
            try:
                await self.server.run()
            finally:
                self.gate.close()
                await self.radio.stop()
        finally:
            await asyncio.to_thread(self.sessions.close)

    def health(self) -> dict[str, Any]:
        out = self.server.health()
        stats = getattr(self.radio, "stats", None)
        if callable(stats):
            radio_stats = stats()
            out["radio"] = {k: v for k, v in radio_stats.items() if k != "gateways"}
        return out
