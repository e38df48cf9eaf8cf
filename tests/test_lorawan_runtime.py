"""The airtime ledger outlives the agent: a restart loop cannot reset the regulatory hour."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from passerelle.lorawan.runtime import LEDGER_SAVE_INTERVAL, _PersistentGate


def used(gate: _PersistentGate) -> float:
    return gate.utilisation()["M"]


async def test_ledger_is_saved_debounced_and_restored(tmp_path: Path) -> None:
    path = tmp_path / "dutycycle.json"
    gate = _PersistentGate(path)
    gate.record(868.1, 3.6)  # 10 % of band M's 36 s
    assert path.exists()  # the first save is immediate
    gate.record(868.3, 3.6)
    json.loads(path.read_text())  # written whole (temporary file, fsync, rename)
    before = _PersistentGate(path)
    assert abs(used(before) - 0.1) < 0.02  # the second record is not saved yet
    await asyncio.sleep(LEDGER_SAVE_INTERVAL + 0.2)
    after = _PersistentGate(path)  # as a restarted agent reads it
    assert abs(used(after) - 0.2) < 0.02
    gate.record(868.5, 3.6)
    gate.close()  # a clean stop saves what waits
    assert abs(used(_PersistentGate(path)) - 0.3) < 0.02


async def test_unreadable_ledger_starts_empty_and_says_so(tmp_path: Path, caplog) -> None:
    path = tmp_path / "dutycycle.json"
    path.write_text("{not json")
    gate = _PersistentGate(path)
    assert used(gate) == 0.0
    assert "unreadable" in caplog.text
