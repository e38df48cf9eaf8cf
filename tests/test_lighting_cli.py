"""``passerelle lighting plan`` as an installer runs it: a subprocess of the real CLI
(``python -m passerelle.cli lighting plan ...``), on the documented street and on broken
configurations."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from passerelle.config import load
from passerelle.lighting.astro import night_sun
from passerelle.lighting.plan import plan_night

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "street.toml"
ZONES = ["grande-rue", "place-mairie", "chemin-stade"]
SVG = "{http://www.w3.org/2000/svg}"
LAB = """\
[gateway]
id = "lab-1"
data_dir = "{data}"
[uplink]
url = "mqtt://127.0.0.1:1883"
allow_plaintext = true
"""


def plan(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, COLUMNS="160")  # rich wraps the table at the terminal's width
    return subprocess.run(
        [sys.executable, "-m", "passerelle.cli", "lighting", "plan", *args],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=ROOT,
        env=env,
    )


@pytest.fixture(scope="module")
def street(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/street.toml with a lab uplink and a data_dir here (its TLS files are absent)."""
    tmp = tmp_path_factory.mktemp("street")
    text = EXAMPLE.read_text()
    text, n = re.subn(
        r"\[uplink\]\n(?:[a-z_]+ = .*\n)+",
        '[uplink]\nurl = "mqtt://127.0.0.1:1883"\nallow_plaintext = true\n',
        text,
    )
    assert n == 1
    text, n = re.subn(r'(?m)^data_dir = "[^"]*"', f'data_dir = "{tmp / "data"}"', text)
    assert n == 1
    path = tmp / "street.toml"
    path.write_text(text)
    data = tomllib.loads(text)
    assert data["uplink"] == {"url": "mqtt://127.0.0.1:1883", "allow_plaintext": True}
    assert data["lighting"] == tomllib.loads(EXAMPLE.read_text())["lighting"]
    return path


def aware(iso: str) -> datetime:
    t = datetime.fromisoformat(iso)
    assert t.tzinfo is not None and t.utcoffset() is not None, iso
    return t


def test_json_for_the_example_street(street: Path) -> None:
    run = plan("--config", str(street), "--date", "2026-12-15", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["location"] == {"lat": 47.5861, "lon": 1.3359, "tz": "Europe/Paris"}

    sun = doc["sun"]
    ref = night_sun(47.5861, 1.3359, "Europe/Paris", date(2026, 12, 15))
    for event in ("sunset", "civil_dusk", "civil_dawn", "sunrise"):
        t = aware(sun[event])
        assert t.utcoffset() == timedelta(hours=1), event  # CET in December
        assert t == ref.event(event), event
    assert aware(sun["sunset"]) < aware(sun["civil_dusk"]) < aware(sun["civil_dawn"])
    assert aware(sun["civil_dawn"]) < aware(sun["sunrise"])

    assert list(doc["zones"]) == ZONES
    for name, z in doc["zones"].items():
        times = [aware(t) for t, _ in z["steps"]]
        assert times[0] == aware("2026-12-15T12:00:00+01:00"), name
        assert all(a < b for a, b in zip(times, times[1:], strict=False)), name
        assert all(isinstance(lv, int) and 0 <= lv <= 100 for _, lv in z["steps"]), name
        assert isinstance(z["energy_wh"], int | float) and z["energy_wh"] > 0
        assert isinstance(z["baseline_wh"], int | float) and z["baseline_wh"] > 0
    gr = doc["zones"]["grande-rue"]
    assert [lv for _, lv in gr["steps"]] == [0, 100, 50, 0, 50, 0]
    assert aware(gr["steps"][1][0]) == ref.sunset - timedelta(minutes=10)  # type: ignore[operator]
    assert gr["steps"][2][0] == "2026-12-15T23:00:00+01:00"
    assert gr["steps"][3][0] == "2026-12-16T01:00:00+01:00"
    # Baseline: 8 luminaires x 40 W from sunset to sunrise, worked out here.
    dark_h = (ref.sunrise.timestamp() - ref.sunset.timestamp()) / 3600  # type: ignore[union-attr]
    assert gr["baseline_wh"] == pytest.approx(dark_h * 8 * 40.0, abs=0.05)

    # The same numbers as the planner's, read from the same file.
    cfg = load(street).lighting
    assert cfg is not None
    expected = plan_night(cfg, date(2026, 12, 15)).to_json(cfg)
    assert doc == json.loads(json.dumps(expected))


def test_json_on_the_fall_back_night_carries_both_offsets(street: Path) -> None:
    run = plan("--config", str(street), "--date", "2026-10-24", "--zone", "grande-rue", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    steps = doc["zones"]["grande-rue"]["steps"]
    offsets = [aware(t).utcoffset() for t, _ in steps]
    assert offsets[:4] == [timedelta(hours=2)] * 4  # noon, dusk, 23:00, 01:00: summer time
    assert offsets[4:] == [timedelta(hours=1)] * 2  # 05:30 and dawn: winter time
    assert aware(doc["window"]["end"]) - aware(doc["window"]["start"]) == timedelta(hours=25)


def test_zone_filter(street: Path) -> None:
    run = plan(
        "--config",
        str(street),
        "--date",
        "2026-07-13",
        "--json",
        "--zone",
        "chemin-stade",
        "--zone",
        "place-mairie",
    )
    assert run.returncode == 0, run.stderr
    zones = json.loads(run.stdout)["zones"]
    assert set(zones) == {"chemin-stade", "place-mairie"}
    assert zones["place-mairie"]["rule"] == "fete-nationale"


def test_unknown_zone_exits_2_naming_it(street: Path) -> None:
    run = plan(
        "--config",
        str(street),
        "--date",
        "2026-07-13",
        "--zone",
        "grande-rue",
        "--zone",
        "rue-haute",
    )
    assert run.returncode == 2
    assert run.stdout == ""
    assert "rue-haute" in run.stderr
    assert "grande-rue, place-mairie, chemin-stade" in run.stderr  # the zones it does know


@pytest.mark.parametrize("bad", ["2026-13-15", "15/12/2026", "2026-02-30", "tomorrow"])
def test_bad_date_exits_2(street: Path, bad: str) -> None:
    run = plan("--config", str(street), "--date", bad, "--json")
    assert run.returncode == 2
    assert run.stdout == ""
    assert bad in run.stderr and "YYYY-MM-DD" in run.stderr


def test_missing_options_exit_2(street: Path) -> None:
    run = plan("--config", str(street))
    assert run.returncode == 2
    assert "--date" in run.stderr


def test_config_without_lighting_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "lab.toml"
    path.write_text(LAB.format(data=tmp_path / "data"))
    run = plan("--config", str(path), "--date", "2026-12-15")
    assert run.returncode == 2
    assert "no [lighting] section" in run.stderr


def test_broken_config_prints_its_dotted_paths_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(
        '[gateway]\nid = "Cab 42"\n[uplink]\nurl = "mqtt://127.0.0.1"\n'
        "[lighting]\nlatitude = 95.0\nlongitude = 1.0\n"
    )
    run = plan("--config", str(path), "--date", "2026-12-15")
    assert run.returncode == 2
    assert run.stdout == ""
    paths = re.findall(r"(?m)^  ([\w.\[\]-]+): ", run.stderr)
    assert {"gateway.id", "lighting.latitude"} <= set(paths), run.stderr
    # The uplink is not the plan's business: its problems do not stop an installer.
    assert "uplink.url" not in paths


def test_plan_needs_no_broker_certificates(tmp_path: Path) -> None:
    """The shipped example names /etc/passerelle certificates absent from a laptop."""
    run = plan("--config", str(EXAMPLE), "--date", "2026-12-21", "--json")
    assert run.returncode == 0, run.stderr
    assert set(json.loads(run.stdout)["zones"]) == {"grande-rue", "place-mairie", "chemin-stade"}


def test_toml_syntax_error_and_missing_file_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[lighting\nlatitude = 1\n")
    run = plan("--config", str(path), "--date", "2026-12-15")
    assert run.returncode == 2 and "<toml>" in run.stderr
    run = plan("--config", str(tmp_path / "nope.toml"), "--date", "2026-12-15")
    assert run.returncode == 2 and "nope.toml" in run.stderr


LIGHTING_MISTAKES = """
[[sources]]
type = "gpio"
name = "io"
relays = [{ name = "contactor", line = 27 }]
[lighting]
latitude = 47.5861
longitude = 1.3359
[lighting.programs.p]
fixed_time_controls = [{ time = "20:00", level = 100 }, { time = "06:00", level = 0 }]
[[lighting.calendars.c.rules]]
program = "p"
[lighting.zones.stade]
calendar = "centre"
relay = "io/contactor"
count = 4
floor = 60
max = 40
"""


def test_lighting_mistakes_are_reported_not_a_traceback(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text(LAB.format(data=tmp_path / "data") + LIGHTING_MISTAKES)
    run = plan("--config", str(path), "--date", "2026-12-15")
    assert "Traceback" not in run.stderr
    assert run.returncode == 2
    paths = re.findall(r"(?m)^  ([\w.\[\]-]+): ", run.stderr)
    assert set(paths) == {"lighting.zones.stade.calendar", "lighting.zones.stade.floor"}


def test_polar_night_json_has_null_sun_events(tmp_path: Path) -> None:
    path = tmp_path / "tromso.toml"
    path.write_text(
        LAB.format(data=tmp_path / "data")
        + """
[[sources]]
type = "gpio"
name = "io"
relays = [{ name = "contactor", line = 27 }]
[lighting]
latitude = 69.6492
longitude = 18.9553
timezone = "Europe/Oslo"
[lighting.programs.p]
astro_clock_time_controls = [
  { solar_event_type = "sunset", offset = -15, level = 100 },
  { solar_event_type = "sunrise", offset = 15, level = 0 },
]
[[lighting.calendars.c.rules]]
program = "p"
[lighting.zones.havn]
calendar = "c"
relay = "io/contactor"
count = 4
rated_power = 50.0
"""
    )
    run = plan("--config", str(path), "--date", "2026-12-21", "--json")
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert doc["sun"]["sunset"] is None and doc["sun"]["sunrise"] is None
    assert aware(doc["sun"]["civil_dusk"]).utcoffset() == timedelta(hours=1)
    z = doc["zones"]["havn"]
    assert z["steps"] == [["2026-12-21T12:00:00+01:00", 100]]  # lit all window
    assert z["energy_wh"] == pytest.approx(24 * 4 * 50.0)
    assert z["baseline_wh"] == pytest.approx(24 * 4 * 50.0)


def test_svg_is_well_formed_and_marks_the_night(street: Path, tmp_path: Path) -> None:
    out = tmp_path / "night.svg"
    run = plan("--config", str(street), "--date", "2026-12-15", "--svg", str(out))
    assert run.returncode == 0, run.stderr
    assert str(out) in run.stdout
    root = ET.parse(out).getroot()
    assert root.tag == f"{SVG}svg"
    text = " ".join("".join(e.itertext()) for e in root.iter(f"{SVG}text"))
    assert "2026-12-15" in text
    assert "sunset 17:03" in text and "sunrise 08:36" in text  # the sun's events, marked
    for zone in ZONES:
        assert zone in text
    drawn = [e for e in root.iter() if e.tag in (f"{SVG}path", f"{SVG}polyline")]
    assert len(drawn) >= len(ZONES)  # a level curve per zone


def test_svg_to_an_unwritable_place_fails_cleanly(street: Path, tmp_path: Path) -> None:
    run = plan(
        "--config",
        str(street),
        "--date",
        "2026-12-15",
        "--svg",
        str(tmp_path / "no-such-dir" / "night.svg"),
    )
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and "cannot write" in run.stderr


def test_json_and_svg_are_exclusive(street: Path, tmp_path: Path) -> None:
    run = plan(
        "--config", str(street), "--date", "2026-12-15", "--json", "--svg", str(tmp_path / "x.svg")
    )
    assert run.returncode == 2
    assert not (tmp_path / "x.svg").exists()


def test_table_mentions_each_zone(street: Path) -> None:
    run = plan("--config", str(street), "--date", "2026-12-15")
    assert run.returncode == 0, run.stderr
    out: str = run.stdout
    assert "Night of 2026-12-15" in out and "sunset 17:03" in out and "sunrise 08:36" in out
    for zone in ZONES:
        assert zone in out
    assert "coeur-de-nuit" in out and "23:00 50%" in out


def _json(run: subprocess.CompletedProcess[str]) -> Any:
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_default_night_is_shown_as_the_safe_default(tmp_path: Path) -> None:
    path = tmp_path / "dated.toml"
    path.write_text(
        LAB.format(data=tmp_path / "data")
        + """
[[sources]]
type = "gpio"
name = "io"
relays = [{ name = "contactor", line = 27 }]
[lighting]
latitude = 47.5861
longitude = 1.3359
[lighting.programs.p]
fixed_time_controls = [{ time = "20:00", level = 100 }, { time = "06:00", level = 0 }]
[[lighting.calendars.c.rules]]
start_date = "07-14"
program = "p"
[lighting.zones.stade]
calendar = "c"
relay = "io/contactor"
count = 4
default_level = 70
"""
    )
    z = _json(plan("--config", str(path), "--date", "2026-12-15", "--json"))["zones"]["stade"]
    assert (z["source"], z["program"]) == ("default", None)
    assert [lv for _, lv in z["steps"]] == [0, 70, 0]
    run = plan("--config", str(path), "--date", "2026-12-15")
    assert "(safe default)" in run.stdout
