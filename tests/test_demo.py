"""``passerelle demo``: the real agent, simulated sources, an embedded broker cut halfway.

The end-to-end tests run the console command as a user would (a subprocess, stdout not a
TTY, so plain progress lines instead of the live view) and read the JSON summary on its last
line: every record produced must reach the subscriber exactly once, broker cut included.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from passerelle import senml
from passerelle.demo import GATEWAY_ID, _Subscriber
from passerelle.model import Record

ROOT = Path(__file__).resolve().parent.parent
DURATION = 8


def run_demo_cli(broker: str) -> tuple[dict[str, Any], str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    started = time.monotonic()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "passerelle.cli",
            "demo",
            "--duration",
            str(DURATION),
            "--json",
            "--broker",
            broker,
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=25,
    )
    elapsed = time.monotonic() - started
    out = proc.stdout
    lines = out.strip().splitlines()
    assert lines, f"no output; stderr:\n{proc.stderr}"
    try:
        result = json.loads(lines[-1])
    except json.JSONDecodeError:
        pytest.fail(f"last line is not JSON: {lines[-1]!r}\nstdout:\n{out}\nstderr:\n{proc.stderr}")
    assert isinstance(result, dict)
    assert proc.returncode == (0 if result["records_lost"] == 0 else 1), (out, proc.stderr)
    assert elapsed < 25
    return result, out


def check(result: dict[str, Any], out: str, broker: str) -> None:
    assert result["broker"] == broker, out
    assert result["records_produced"] > 0, out
    assert result["records_lost"] == 0, out
    assert result["records_delivered"] == result["records_produced"], out
    for key in ("duplicates_received", "duration_s", "broker_cut_s", "upstream_bytes_per_record"):
        assert key in result, key
    # The cut really happened, the store buffered through it, and nothing was evicted.
    assert result["broker_cut_s"] >= DURATION / 4 - 0.1, out
    assert result["store_peak_depth"] > 50, out
    assert result["uplink_connects"] >= 2, out
    assert result["evicted"] == 0 and result["dropped"] == 0, out
    # Not a TTY: one plain progress line a second, the cut visible in them.
    assert "BROKER CUT: buffering" in out
    assert "\x1b[" not in out  # no live view escape codes in a pipe


@pytest.mark.slow
def test_demo_with_mosquitto(mosquitto_bin: str) -> None:
    result, out = run_demo_cli("mosquitto")
    check(result, out, "mosquitto")
    assert result["mqtt_protocol"] == "5"


@pytest.mark.slow
def test_demo_with_embedded_amqtt() -> None:
    result, out = run_demo_cli("amqtt")
    check(result, out, "amqtt")
    assert result["mqtt_protocol"] == "3.1.1"


def test_subscriber_counts_each_record_once() -> None:
    base = lambda device: senml.device_base_name(GATEWAY_ID, device)  # noqa: E731
    t0 = 1_800_000_000.0
    first = [Record("counter", "counter", i, t0 + i * 0.01) for i in range(5)]
    second = [Record("counter", "counter", i, t0 + i * 0.01) for i in range(5, 8)]
    env = [Record("env", "temperature", 12.5, t0, "Cel")]
    alarm = [Record("gateway", "alarm/store.disk_full", "disk full", t0)]
    sub = _Subscriber(port=0, protocol=5)

    sub.handle(senml.encode_pack(first, base, f"{GATEWAY_ID}/0-4"))
    sub.handle(senml.encode_pack(first, base, f"{GATEWAY_ID}/0-4"))  # redelivered pack
    sub.handle(senml.encode_pack(first[3:] + second, base, f"{GATEWAY_ID}/x"))  # overlap
    sub.handle(senml.encode_pack(env, base, None))
    sub.handle(senml.encode_pack(alarm, base, f"{GATEWAY_ID}/9-9"))
    sub.handle(b"\xff not cbor")

    assert sub.delivered == 9  # 8 counter values and one temperature
    assert sub.duplicate_packs == 1
    assert sub.duplicate_records == 5 + 2
    assert sub.other_records == 1  # not from the demo's sources
    assert sub.bad_packs == 1
    assert sub.last_key == f"{GATEWAY_ID}/9-9"
    assert [r.value for r in sub.last_pack] == ["disk full"]
