"""Smoke test of ``python -m hil.bench_modbus --quick --json``: every figure is there and sane.

No performance thresholds (a slow CI machine must not fail the suite): the figures must be
real (positive, consistent with each other: points = polls x entries, the simulator saw
every request, the store drained into the broker) and the RTU wire limit must match the
read plan worked by hand.
"""

from __future__ import annotations

from typing import Any

import pytest

from .benchrun import run_bench

# The SDM630 map read with the default planner (max_gap 8): input registers 0x0000-0x004F
# (80 registers: the phases up to the energy counters), 0x00E0-0x00E1 (neutral current) and
# 0x0156-0x0159 (total energies) = 3 reads. Requests are 8 bytes each; replies are
# unit + function + byte count + 2 x registers + CRC: 5 + 160, 5 + 4, 5 + 8.
ENTRIES = 33
READS = 3
REQUEST_BYTES = 3 * 8
REPLY_BYTES = 165 + 9 + 13
# t3.5: 3.5 characters of 11 bits at 19200 baud, fixed 1.75 ms above.
T35 = {19200: 3.5 * 11 / 19200, 115200: 0.00175}


def hand_poll_seconds(baud: int) -> float:
    return (REQUEST_BYTES + REPLY_BYTES) * 11 / baud + 2 * READS * T35[baud]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory, mosquitto_bin: str) -> tuple[str, Any]:
    return run_bench(
        "hil.bench_modbus", tmp_path_factory.mktemp("bench-modbus"), MOSQUITTO=mosquitto_bin
    )


def runs(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    r = doc["results"]
    keys = ("tcp_source", "tcp_pass", "tcp_default", "tcp_many", "rtu_19200", "rtu_115200")
    return {k: r[k] for k in keys}


def test_header_and_rows(bench: tuple[str, dict[str, Any]]) -> None:
    table, doc = bench
    assert "Command:  python -m hil.bench_modbus --quick --json" in table
    for label in ("Machine:", "Software:", "Data dir:", "Settings:", "Sizes:"):
        assert label in table, label
    assert "pymodbus" in table and "plaintext loopback" in table
    assert "| Metric" in table  # stdout is a pipe: the plain table
    assert [row["num"] for row in doc["rows"]] == ["1", "1", "1", "2", "2", "3", "3"]
    assert all(row["measured"] and row["verdict"] == "info" for row in doc["rows"])
    assert "skipped" not in doc["results"]


def test_counts_add_up(bench: tuple[str, dict[str, Any]]) -> None:
    for key, r in runs(bench[1]).items():
        assert r["entries_per_poll"] == ENTRIES and r["reads_per_poll"] == READS, key
        assert r["polls"] > 0, key
        # Every device stopped after a whole poll: nothing half counted.
        assert r["points"] == r["polls"] * ENTRIES, key
        assert r["bus_requests"] == r["polls"] * READS == r["simulator_requests"], key
        assert r["units"] == (bench[1]["sizes"]["units_many"] if key == "tcp_many" else 4)
        assert 0 < r["poll_wall_s"] <= r["wall_s"], key
        assert r["cpu_s"] > 0 and r["simulator_cpu_s"] >= 0, key
        assert r["points_per_s"] == pytest.approx(r["points"] / r["poll_wall_s"]), key
        assert r["polls_per_s"] == pytest.approx(r["polls"] / r["poll_wall_s"]), key
        assert r["points_per_cpu_s"] == pytest.approx(r["points"] / r["cpu_s"]), key
        assert r["cpu_us_per_point"] == pytest.approx(1e6 / r["points_per_cpu_s"]), key


def test_whole_path_drains_everything(bench: tuple[str, dict[str, Any]]) -> None:
    for key, r in runs(bench[1]).items():
        if key == "tcp_source":
            assert "records_stored" not in r  # that run has no store
            continue
        assert r["store_empty"] is True, key
        assert r["records_delivered"] == r["records_stored"] > 0, key
        assert r["records_sent"] >= r["records_stored"], key  # resends count twice
        assert r["sobriety_in"] == r["points"], key
        assert r["records_stored"] == r["sobriety_out"], key
        assert r["packs"] > 0 and r["store_commits"] > 0, key
        assert r["store_wait_ms_per_poll"] > 0 and r["store_thread_cpu_s"] >= 0, key
        assert r["mosquitto_cpu_s"] is not None and r["mosquitto_cpu_s"] >= 0, key
        if r["mode"] == "pass":
            # No policy: every point stored, in two puts per poll (energy, telemetry).
            assert r["records_stored"] == r["points"], key
            assert r["puts"] == 2 * r["polls"], key
    default = bench[1]["results"]["tcp_default"]
    # The default policy folds power, voltage, current into windows: fewer records stored.
    assert default["closed_windows_at_end"] > 0
    assert default["records_stored"] < default["points"]


def test_rtu_against_the_wire(bench: tuple[str, dict[str, Any]]) -> None:
    r = bench[1]["results"]
    for baud in (19200, 115200):
        run = r[f"rtu_{baud}"]
        w = run["wire_limit"]
        assert w["baud"] == run["baud"] == baud
        assert w["request_bytes_per_poll"] == REQUEST_BYTES
        assert w["reply_bytes_per_poll"] == REPLY_BYTES
        assert w["poll_ms"] == pytest.approx(hand_poll_seconds(baud) * 1e3)
        assert w["points_per_s"] == pytest.approx(ENTRIES / hand_poll_seconds(baud))
        assert run["wire_utilisation"] == pytest.approx(run["polls_per_s"] / w["polls_per_s"])
        # The simulator spends the gaps and the replies' time (the PTY carries requests
        # instantly): no run can poll faster than that.
        floor = REPLY_BYTES * 11 / baud + 2 * READS * T35[baud]
        assert 0 < run["polls_per_s"] <= 1.02 / floor
        assert run["bad_frames"] == 0
    assert r["rtu_115200"]["polls_per_s"] > r["rtu_19200"]["polls_per_s"]


def test_cpu_split(bench: tuple[str, dict[str, Any]]) -> None:
    r = bench[1]["results"]
    for mode in ("pass", "default"):
        s = r[f"split_{mode}"]
        assert s["total_us"] == pytest.approx(r[f"tcp_{mode}"]["cpu_us_per_point"])
        assert s["modbus_source_us"] == pytest.approx(r["tcp_source"]["cpu_us_per_point"])
        assert s["modbus_source_us"] > 0 and s["sobriety_us"] > 0
        parts = (
            "modbus_source_us",
            "sobriety_us",
            "store_thread_us",
            "loop_rest_us",
            "other_threads_us",
        )
        assert sum(s[p] for p in parts) == pytest.approx(s["total_us"])
    # The default policy matches globs and folds windows; no policy is one dict lookup.
    assert r["split_default"]["sobriety_us"] > r["split_pass"]["sobriety_us"]
    # More meters share each group commit: more points per second through the same path.
    assert r["tcp_many"]["points_per_s"] > r["tcp_pass"]["points_per_s"]
