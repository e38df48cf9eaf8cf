"""Smoke test of ``python -m hil.bench_lorawan --quick --json``: every figure is there and sane.

No performance thresholds (a slow CI machine must not fail the suite): the figures must be
real (positive, consistent with each other) and the airtime row must match the LoRa
time-on-air formula worked by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from passerelle.lorawan.runtime import LEDGER_SAVE_INTERVAL

from .benchrun import run_bench

REPO = Path(__file__).resolve().parent.parent

# Time on air of a 16-byte LoRaWAN downlink (no payload CRC, explicit header, 8-symbol
# preamble, CR 4/5), worked by hand from Semtech AN1200.13 (the formula in
# /work/shared/REFERENCE.md):
#   SF9BW125:  Tsym 4.096 ms, DE 0: ceil((128-36+28)/36) = 4 blocks -> 8+20 = 28 symbols,
#              (8+4.25+28) * 4.096 ms = 164.864 ms
#   SF12BW125: Tsym 32.768 ms, DE 1: ceil((128-48+28)/40) = 3 blocks -> 8+15 = 23 symbols,
#              (8+4.25+23) * 32.768 ms = 1155.072 ms
HAND_AIRTIME_S = {"SF9BW125": 0.164864, "SF12BW125": 1.155072}


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    return run_bench("hil.bench_lorawan", tmp_path_factory.mktemp("bench-lorawan"))


def test_header_and_rows(bench: tuple[str, dict[str, Any]]) -> None:
    table, doc = bench
    assert "Command:  python -m hil.bench_lorawan --quick --json" in table
    for label in ("Machine:", "Software:", "Data dir:", "Settings:", "Sizes:"):
        assert label in table, label
    assert "| Metric" in table  # stdout is a pipe: the plain table
    assert [row["num"] for row in doc["rows"]] == ["1", "1", "1", "2", "2", "3", "3"]
    assert all(row["measured"] and row["verdict"] == "info" for row in doc["rows"])
    assert "computed from real encoded frames" in doc["rows"][-1]["metric"]


def test_uplink_figures(bench: tuple[str, dict[str, Any]]) -> None:
    r = bench[1]["results"]
    sizes = bench[1]["sizes"]
    un, conf = r["uplink_unconfirmed"], r["uplink_confirmed"]
    for u, frames in ((un, sizes["uplinks"]), (conf, sizes["confirmed"])):
        assert u["frames"] == frames > 0
        assert u["records_stored"] == 3 * frames  # three LPP values per frame, all stored
        assert u["wall_s"] > 0 and u["cpu_s"] > 0
        assert u["frames_per_s"] > 0 and u["frames_per_cpu_s"] > 0
        assert u["frames_per_cpu_s"] == pytest.approx(frames / u["cpu_s"])
        assert 0 < u["store_commits"] <= frames  # group commit: at most one per frame
        assert u["fsyncs"] == u["session_commits"] + u["store_commits"] + u["gate_saves"]
    # Unconfirmed: one counter commit per frame, nothing sent.
    assert un["session_commits"] == un["frames"]
    assert un["downlinks"] == 0 and un["gate_saves"] == 0
    # Confirmed: uplink + downlink counter per frame, every ack sent and the gate saved.
    assert conf["session_commits"] == 2 * conf["frames"]
    assert conf["downlinks"] == conf["frames"]
    # The ledger is saved at most once a second, not per downlink.
    assert 1 <= conf["gate_saves"] <= 1 + conf["wall_s"] / LEDGER_SAVE_INTERVAL + 1
    assert conf["counts"]["acks"] == conf["frames"]
    assert conf["cpu_us_per_frame"] > un["cpu_us_per_frame"]  # more work per frame
    alone = r["uplink_alone"]
    # One frame alone waits for the store's commit linger, then two commits.
    assert alone["median_ms"] >= alone["store_max_delay_s"] * 1e3 * 0.9
    assert alone["p99_ms"] >= alone["median_ms"]


def test_downlink_decision_figures(bench: tuple[str, dict[str, Any]]) -> None:
    r = bench[1]["results"]
    g = r["gate"]
    assert g["decisions"] == bench[1]["sizes"]["decisions"] and g["refused"] == 0
    assert 500 <= g["ledger_entries_band_m"] <= 1000  # about an hour of acks, every 5 s
    assert 0 < g["median_us"] <= g["p99_us"] and g["cpu_us_per_decision"] > 0
    a = r["answer"]
    assert a["answers"] == bench[1]["sizes"]["answers"] and a["gate_file_bytes"] > 0
    for part in ("counter", "encode", "airtime", "gate", "persist", "total"):
        assert 0 < a[f"{part}_median_us"] <= a[f"{part}_p99_us"], part
        assert a[f"{part}_median_us"] <= a["total_p99_us"], part


def test_multicast_airtime(bench: tuple[str, dict[str, Any]]) -> None:
    rows = bench[1]["results"]["multicast"]
    assert [m["datarate"] for m in rows] == ["SF9BW125", "SF12BW125"]
    for m in rows:
        assert m["band"] == "P" and m["band_allowance_s_per_h"] == pytest.approx(360.0)
        assert m["unicast_frames"] == m["luminaires"] == 100
        # MHDR 1 + FHDR 7 + FPort 1 + the 3-byte command + MIC 4.
        assert m["unicast_phy_bytes"] == [m["multicast_phy_bytes"]] == [16]
        assert m["multicast_airtime_s"] == pytest.approx(HAND_AIRTIME_S[m["datarate"]])
        assert m["saving_factor"] == pytest.approx(100.0, rel=0.05)
        assert m["unicast_airtime_s"] == pytest.approx(100 * m["multicast_airtime_s"])
        # The gate's own count agrees with the division.
        assert m["multicast_commands_per_h"] == m["gate_admits_multicast_frames_per_h"]
        assert m["unicast_commands_per_h"] == m["gate_admits_unicast_frames_per_h"] // 100
        assert m["multicast_commands_per_h"] >= 99 * m["unicast_commands_per_h"] > 0
