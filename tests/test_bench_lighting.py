"""Smoke test of ``python -m hil.bench_lighting --quick --json``: every figure is there and sane.

No performance thresholds (a slow CI machine must not fail the suite) and no expected
figures: the numbers must be real (positive) and agree with each other — the frames decoded
from the air with the engine's counters and the gate's accounting, the counterfactual with
the LoRa time-on-air formula, the energy rows with their own sums.
"""

from __future__ import annotations

from typing import Any

import pytest

from passerelle.lorawan.airtime import airtime_of

from .benchrun import run_bench

Bench = tuple[str, dict[str, Any]]


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    return run_bench("hil.bench_lighting", tmp_path_factory.mktemp("bench-lighting"))


def test_header_and_rows(bench: Bench) -> None:
    table, doc = bench
    assert "Command:  python -m hil.bench_lighting --quick --json" in table
    for label in ("Machine:", "Software:", "Night:", "Sizes:"):
        assert label in table, label
    assert "| Metric" in table  # stdout is a pipe: the plain table
    rows = doc["rows"]
    nums = [row["num"] for row in rows]
    assert nums == sorted(nums) and set(nums) == {"1", "2", "3"}
    assert nums.count("1") == 3 and nums.count("2") == 4
    assert all(row["measured"] and row["verdict"] == "info" for row in rows)
    assert any(row["metric"].startswith("computed, not played") for row in rows)
    assert all(
        row["metric"].startswith("computed from the plan") for row in rows if row["num"] == "3"
    )
    # One energy row per zone of the example, and the street's total.
    assert nums.count("3") == len(doc["results"]["energy"]["zones"]) + 1


def test_plan_figures(bench: Bench) -> None:
    sizes, res = bench[1]["sizes"], bench[1]["results"]
    for key, zones in (("plan", 50), ("plan_zone_each", 1000)):
        p = res[key]
        assert p["luminaires"] == 1000 and p["zones"] == zones
        assert p["runs"] >= 3 and (key != "plan" or p["runs"] == sizes["plan_runs"])
        assert 0 < p["wall_ms"] <= p["wall_ms_max"] and p["cpu_ms"] > 0
        assert p["cpu_us_per_luminaire"] == pytest.approx(p["cpu_ms"] * 1e3 / 1000)
        assert p["cpu_us_per_zone"] == pytest.approx(p["cpu_ms"] * 1e3 / zones)
        assert p["steps"] >= zones  # every zone starts with its noon step
        assert p["energy_kwh"] > 0
    # The planner's work follows zones: twenty times the zones is more work.
    assert res["plan_zone_each"]["cpu_ms"] > res["plan"]["cpu_ms"]


def test_step_figures(bench: Bench) -> None:
    sizes, s = bench[1]["sizes"], bench[1]["results"]["step"]
    assert s["luminaires"] == 1000 and 0 <= s["lit_at_0200"] <= 1000
    assert s["at"].startswith(f"{_next_day(bench)}T02:00")
    # A fresh engine gives every zone its program and its level, one multicast frame each.
    assert s["cold_multicast_frames"] == 2 * bench[1]["results"]["plan"]["zones"]
    assert s["cold_unicast_frames"] == 0
    assert s["runs"] == sizes["step_runs"] and s["steady_frames_sent"] == 0
    assert 0 < s["steady_cpu_ms"] <= s["steady_cpu_ms_p90"]
    assert s["steady_cpu_us_per_luminaire"] == pytest.approx(s["steady_cpu_ms"])  # x1e3/1e3
    assert s["cold_cpu_ms"] > 0 and s["steady_wall_ms"] > 0


def test_night_frames_agree_with_engine_and_gate(bench: Bench) -> None:
    n = bench[1]["results"]["night"]
    assert n["whole_night"] is False  # --quick plays a slice
    frames = n["frames"]
    assert len(frames) == n["downlink_frames"] > 0
    assert n["downlink_frames"] == n["multicast_frames"] + n["unicast_frames"]
    assert n["multicast_frames"] == n["multicast_level_frames"] + n["multicast_program_frames"]
    assert n["unicast_frames"] == n["unicast_level_frames"] + n["unicast_program_frames"]
    for f in frames:
        assert f["kind"] in ("level", "program")
        assert f["multicast"] == f["to"].startswith("group:")
        assert (f["members"] > 1) if f["multicast"] else (f["members"] == 1)
        assert f["level"] is None or 0 <= f["level"] <= 100
        # The medium timed each frame as the LoRa formula does.
        air = airtime_of(f["datarate"], f["phy_bytes"], uplink=False)
        assert f["airtime_s"] == pytest.approx(air)
    # What the engine says it sent is what was decoded from the air.
    counts = n["engine_counts"]
    assert n["multicast_level_frames"] == counts.get("multicast_commands", 0)
    assert n["unicast_frames"] == counts.get("unicast_commands", 0) + counts.get("retries", 0)
    # The presence uplink was heard and raised luminaires one by one.
    assert n["presence_seen"] == len(n["presence_uplinks"]) >= 1
    assert n["unicast_level_frames"] > 0
    # The gate charged exactly the frames the gateway sent, all in band P.
    assert n["gate_frames"] == n["downlink_frames"]
    assert n["band"] == "P" and n["band_allowance_s_per_h"] == pytest.approx(360.0)
    assert set(n["gate_airtime_s_by_band"]) == {"P"}
    assert n["gate_airtime_s_by_band"]["P"] == pytest.approx(n["downlink_airtime_s"])
    assert n["downlink_airtime_s"] == pytest.approx(sum(f["airtime_s"] for f in frames))


def test_night_duty_cycle(bench: Bench) -> None:
    n = bench[1]["results"]["night"]
    allowance = n["band_allowance_s_per_h"]
    exact = n["peak_sliding_hour_airtime_s"]
    sampled = n["peak_hour_utilisation"] * allowance
    # The gate's sliding hour, sampled every tick, never exceeds the exact peak and sees it.
    assert 0 < sampled <= exact * 1.001 + 1e-6
    assert exact <= n["downlink_airtime_s"] + 1e-9
    assert n["peak_hour_duty_cycle_pct"] == pytest.approx(sampled / 3600 * 100)
    hours = n["per_hour"]
    assert sum(h["frames"] for h in hours) == n["downlink_frames"]
    assert sum(h["airtime_s"] for h in hours) == pytest.approx(n["downlink_airtime_s"])
    assert n["busiest_clock_hour"]["airtime_s"] == max(h["airtime_s"] for h in hours)
    assert n["gate_refusals"] == []


def test_night_uplinks(bench: Bench) -> None:
    n = bench[1]["results"]["night"]
    assert n["status_uplinks"] > 0 and n["status_airtime_s"] > 0
    assert 0 < n["status_airtime_s_max_per_luminaire"] <= n["status_airtime_s"]
    assert sum(n["status_lost_at_gateway"].values()) <= n["status_uplinks"]
    assert n["presence_uplinks_on_air"] == len(n["presence_uplinks"])
    assert n["presence_airtime_s"] > 0


def test_unicast_counterfactual_is_computed_from_the_same_frames(bench: Bench) -> None:
    n = bench[1]["results"]["night"]
    frames = n["frames"]
    expected_frames = sum(f["members"] for f in frames)
    expected_air = sum(
        f["airtime_s"]
        if not f["multicast"]
        else f["members"] * airtime_of(n["unicast_datarate"], f["phy_bytes"], uplink=False)
        for f in frames
    )
    assert n["unicast_only_frames"] == expected_frames
    assert n["unicast_only_airtime_s"] == pytest.approx(expected_air)
    if n["multicast_frames"]:
        assert n["unicast_only_airtime_s"] > n["downlink_airtime_s"]
    assert n["unicast_only_peak_sliding_hour_airtime_s"] >= n["peak_sliding_hour_airtime_s"]


def test_energy_from_the_plan(bench: Bench) -> None:
    e = bench[1]["results"]["energy"]
    assert e["zones"]
    for name, z in e["zones"].items():
        assert z["luminaires"] > 0 and z["rated_power_w"] > 0, name
        assert 0 < z["energy_kwh"] and 0 < z["baseline_kwh"], name
        assert z["saved_kwh"] == pytest.approx(z["baseline_kwh"] - z["energy_kwh"]), name
        assert z["saved_pct"] == pytest.approx(100 * z["saved_kwh"] / z["baseline_kwh"]), name
        levels = [lv for _t, lv in z["steps"]]
        assert levels[0] == 0 and max(levels) > 0, name
    assert e["energy_kwh"] == pytest.approx(sum(z["energy_kwh"] for z in e["zones"].values()))
    assert e["baseline_kwh"] == pytest.approx(sum(z["baseline_kwh"] for z in e["zones"].values()))
    assert e["sunset"] < e["sunrise"]
    # --quick plays only a slice of the night: the engine closes no night, reports no energy.
    assert bench[1]["results"]["night"]["engine_energy_wh"] == {}


def _next_day(bench: Bench) -> str:
    from datetime import date, timedelta

    night = date.fromisoformat(bench[1]["results"]["plan"]["night"])
    return (night + timedelta(days=1)).isoformat()
