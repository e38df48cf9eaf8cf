"""The sobriety benchmark's arithmetic holds together (it is the README's bytes-per-day table)."""

from __future__ import annotations

import json
import subprocess
import sys

from hil.bench_sobriety import publish_bytes, run_day
from passerelle import senml


def test_every_polled_record_is_sent_or_counted_as_saved() -> None:
    raw, _ = run_day(False)
    pol, savings = run_day(True)
    assert raw.records_polled == pol.records_polled == 8640 * 10
    alarms = raw.records_sent - raw.records_polled
    assert alarms == 2  # the door opened once: opened, closed
    suppressed = sum(v for k, v in savings.items() if k.startswith("sobriety/suppressed/"))
    assert pol.records_sent == pol.records_polled + alarms - suppressed
    assert pol.payload_bytes * 5 < raw.payload_bytes
    assert pol.packs < raw.packs


def test_publish_size_follows_the_mqtt5_layout() -> None:
    payload = senml.compress(bytes(300))
    key = "cabinet-41-007/0-9"
    size = publish_bytes(payload, key)
    # fixed header (1 + 2-byte remaining length), topic, packet id, properties, payload
    props = 25 + (1 + 2 + 15 + 2 + len(key)) + (1 + 2 + 16 + 2 + 7)
    topic = len("passerelle/cabinet-41-007/up/senml")
    assert size == 1 + 2 + (2 + topic) + 2 + 1 + props + len(payload)


def test_cli_json() -> None:
    out = subprocess.run([sys.executable, "-m", "hil.bench_sobriety", "--json"],
                         capture_output=True, text=True, check=True, timeout=60).stdout
    result = json.loads(out)
    assert result["default_policy"]["records_sent"] < result["no_policy"]["records_sent"]
    assert (result["default_policy_batch_age_900"]["packs"]
            < result["default_policy"]["packs"])
