"""Run the agent as a subprocess for integration and crash tests.

    python -m hil.crashrig CONFIG [--put-log FILE]

Runs :class:`passerelle.agent.Agent` exactly as ``passerelle run`` does (SIGTERM stops it
cleanly), with one addition for the tests: with ``--put-log``, every batch a source emitted
whose ``put`` *returned* (the records are durably stored, not dropped) is appended to FILE
as one JSON line. The test compares that file with what the broker delivered: whatever is in
it was acknowledged by the store, so it must reach the upstream broker, whatever happens to
this process afterwards.

The line is written with one ``os.write`` on an ``O_APPEND`` descriptor, after ``emit``
returned: no user-space buffer, and the OS page cache survives SIGKILL of the process (no
fsync needed, the machine does not crash). A kill between the store's commit and the write
only means a stored batch is missing from the log, which the tests tolerate (they check
log ⊆ delivered). The last line may be torn if the test reads while a write happens:
:func:`read_put_log` ignores an incomplete last line.

Line format (``src`` is the source name, ``prio`` the priority as an integer, ``t`` the wall
clock when the put returned):

* a batch of consecutive integers of one measurement (``sim.counter``)::

      {"src": "counter", "prio": 1, "device": "counter", "name": "counter",
       "first": 17, "n": 250, "t": 1767225600.25}

* anything else::

      {"src": "env", "prio": 3, "records": [[device, name, value, time, unit], ...], "t": ...}

Nothing in ``passerelle/`` is changed for this: the sources built by the agent are wrapped
before it starts them, and a batch counts as stored when the agent's own per-source
``produced`` counter went up by its size (the agent's ``emit`` swallows a StoreError and
counts it under ``dropped`` instead).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from passerelle.model import Priority, Record
from passerelle.sources import Emit, Source

__all__ = ["LoggedSource", "PutLog", "main", "read_put_log"]

EXIT_CONFIG = 2


class PutLog:
    """Append-only JSON lines, one ``os.write`` each (survives SIGKILL of this process)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._fd = os.open(
            self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644
        )
        # A line torn by an earlier kill must not swallow this process's first line.
        size = os.fstat(self._fd).st_size
        if size and os.pread(self._fd, 1, size - 1) != b"\n":
            os.write(self._fd, b"\n")

    def write(self, entry: dict[str, Any]) -> None:
        line = json.dumps(entry, separators=(",", ":")).encode() + b"\n"
        os.write(self._fd, line)

    def close(self) -> None:
        os.close(self._fd)

    @staticmethod
    def entry(source: str, records: Sequence[Record], priority: Priority) -> dict[str, Any]:
        first = records[0]
        if all(
            type(r.value) is int
            and r.device == first.device
            and r.name == first.name
            and r.value == first.value + i  # type: ignore[operator]
            for i, r in enumerate(records)
        ):
            return {
                "src": source,
                "prio": int(priority),
                "device": first.device,
                "name": first.name,
                "first": first.value,
                "n": len(records),
            }
        return {
            "src": source,
            "prio": int(priority),
            "records": [[r.device, r.name, r.value, r.time, r.unit] for r in records],
        }


class LoggedSource:
    """A source whose stored batches are also written to a :class:`PutLog`.

    ``produced`` is the agent's per-source counter of stored records: the agent's ``emit``
    returns normally also when the store refused the records (they are counted as
    dropped), so "emit returned" alone does not mean "stored".
    """

    def __init__(self, inner: Source, produced: Counter[str], log: PutLog) -> None:
        self.inner = inner
        self.name = inner.name
        self._produced = produced
        self._log = log

    async def run(self, emit: Emit) -> None:
        async def logged(records: Sequence[Record], priority: Priority) -> None:
            before = self._produced[self.name]
            await emit(records, priority)
            if records and self._produced[self.name] - before == len(records):
                entry = PutLog.entry(self.name, records, priority)
                entry["t"] = round(time.time(), 4)
                self._log.write(entry)

        await self.inner.run(logged)


def read_put_log(path: str | os.PathLike[str]) -> Iterator[dict[str, Any]]:
    """The entries of a put log; a missing file is empty.

    A line without its newline (a write in progress, or cut by a kill) is not complete and
    is skipped, as is a torn line that a later process closed with a bare newline.
    """
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return
    lines = data.split(b"\n")
    lines.pop()  # after the last newline: empty, or a line still being written
    for line in lines:
        if not line:
            continue
        try:
            yield json.loads(line)
        except ValueError:
            continue  # torn by a kill: that batch is simply not in the log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hil.crashrig", description=__doc__)
    parser.add_argument("config", help="agent configuration (TOML)")
    parser.add_argument("--put-log", help="append every stored batch to this file")
    args = parser.parse_args(argv)

    from passerelle.agent import Agent
    from passerelle.config import ConfigError, load
    from passerelle.logs import setup_logging

    try:
        cfg = load(args.config)
    except ConfigError as exc:
        print(f"{args.config}: configuration refused", file=sys.stderr)
        for where, why in exc.errors:
            print(f"  {where}: {why}", file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.log.level, cfg.log.format, cfg.log.burst, cfg.log.per)
    agent = Agent(cfg)
    put_log = PutLog(args.put_log) if args.put_log else None
    if put_log is not None:
        agent.sources = [LoggedSource(s, agent.produced, put_log) for s in agent.sources]
    print(f"crashrig: pid {os.getpid()} starting agent {cfg.gateway.id}", flush=True)
    try:
        asyncio.run(agent.run())
    finally:
        if put_log is not None:
            put_log.close()
    print("crashrig: agent stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
