"""Smoke test of the benchmark: ``python -m hil.bench --quick`` runs and measures something.

No performance thresholds here: a slow CI machine must not fail the suite. The figures only
have to be real (non-zero) and every metric's row has to be printed.
"""

from __future__ import annotations

from pathlib import Path

from .benchrun import run_bench

REPO = Path(__file__).resolve().parent.parent


def test_bench_quick_prints_every_metric(mosquitto_bin: str, tmp_path: Path) -> None:
    table, doc = run_bench("hil.bench", tmp_path, MOSQUITTO=mosquitto_bin)

    # The header says what was measured where.
    assert "Command:  python -m hil.bench --quick --json" in table
    for label in ("Machine:", "Software:", "Data dir:"):
        assert label in table
    # One row per metric, none skipped (mosquitto is there), each with a verdict.
    for phrase in (
        "store ingest",
        "CPU per record end to end",
        "upstream bytes per record",
        "RSS",
        "disk writes per record",
        "backlog drain",
    ):
        assert phrase in table, phrase
    nums = {row["num"] for row in doc["rows"]}
    assert {"1", "2", "3a", "3b", "4", "5", "6"} <= nums
    assert all(row["verdict"] in ("PASS", "FAIL", "info") for row in doc["rows"]), doc["rows"]

    r = doc["results"]
    for key in ("ingest_bulk", "ingest_linger"):
        ingest = r[key]
        assert ingest["records"] > 0 and ingest["records_per_s"] > 0
        assert ingest["records_per_cpu_s"] > 0 and ingest["commits"] > 0
        assert ingest["encoded_bytes_per_record"] > 0
    pipe = r["pipeline"]
    assert pipe["store_empty"] and pipe["records_delivered"] > 0
    assert pipe["cpu_us_per_record"] > 0 and pipe["bytes_per_record"] > 0
    assert pipe["json"]["json_bytes_per_record"] > 0
    assert r["meter"]["bytes_per_record"] > 0 and r["meter"]["records"] > 0
    assert r["meter_one_poll_packs"]["bytes_per_record"] > 0
    assert r["fill"]["records"] >= 50_000 and r["fill"]["peak_rss_kb"] > 0
    assert r["agent_rss"]["vm_rss_kb"] > 0
    assert r["agent_rss"]["records_buffered"] >= r["fill"]["records"]
    assert r["drain"]["store_empty"] and r["drain"]["records_per_s"] > 0
    assert r["cycle"]["drained"] == r["cycle"]["records"] > 0
    # write_bytes is only charged on filesystems backed by a block device.
    if doc["machine"]["filesystem"]["type"] not in ("tmpfs", "ramfs", "overlay"):
        assert r["ingest_bulk"]["write_bytes_total"] > 0
        assert r["cycle"]["write_bytes"] > 0
