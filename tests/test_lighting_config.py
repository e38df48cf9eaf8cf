"""The ``[lighting]`` section through ``passerelle.config.parse``: every mistake is reported
with its dotted path, cross references into ``[lorawan]`` and ``[[sources]]`` are checked, and
the documented street parses."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.config import Config, ConfigError, parse
from passerelle.lighting import model
from passerelle.lighting.model import LightingConfig

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "street.toml"
LAB_UPLINK = {"url": "mqtt://127.0.0.1:1883", "allow_plaintext": True}

# Regression guards: `[lighting]` (an optional untagged section) was once handed whole to
# msgspec.convert, so its semantic pass never ran; and rules without dates were once refused
# because the default-filled dict always holds an `end_date` key.


def device(name: str, n: int, cls: str = "C") -> dict[str, Any]:
    return {
        "name": name,
        "dev_eui": f"70b3d57ed00001{n:02x}",
        "class": cls,
        "codec": "luminaire" if cls == "C" else "cayenne",
        "dev_addr": f"260101{n:02x}",
        "nwk_s_key": f"{n:02x}" * 16,
        "app_s_key": f"{0x80 + n:02x}" * 16,
    }


def base(tmp_path: Path) -> dict[str, Any]:
    """A valid gateway with two lighting zones: controllers in a multicast group, and a
    contactor circuit; a presence sensor and an ambient light sensor."""
    return {
        "gateway": {"id": "cab-1", "data_dir": str(tmp_path / "data")},
        "uplink": dict(LAB_UPLINK),
        "sources": [{"type": "gpio", "name": "io", "relays": [{"name": "contactor", "line": 27}]}],
        "lorawan": {
            "devices": [
                device("lum-1", 1),
                device("lum-2", 2),
                device("lum-3", 3),
                device("lum-4", 4),
                device("pir-1", 9, "A"),
            ],
            "multicast": [
                {
                    "name": "street",
                    "dev_addr": "2601ffff",
                    "nwk_s_key": "a0" * 16,
                    "app_s_key": "b0" * 16,
                    "devices": ["lum-1", "lum-2", "lum-3"],
                }
            ],
        },
        "lighting": {
            "latitude": 47.5861,
            "longitude": 1.3359,
            "timezone": "Europe/Paris",
            "programs": {
                "night": {
                    "astro_clock_time_controls": [
                        {"solar_event_type": "sunset", "offset": -10, "level": 100},
                        {"solar_event_type": "sunrise", "offset": 10, "level": 0},
                    ],
                    "fixed_time_controls": [{"time": "23:00", "level": 50}],
                    "active_periods": [{"type": "sensor", "start": "23:00", "end": "sunrise-30"}],
                },
                "fete": {
                    "fixed_time_controls": [
                        {"time": "18:00", "level": 100},
                        {"time": "08:00", "level": 0},
                    ]
                },
            },
            "calendars": {
                "rue": {
                    "rules": [
                        {"name": "fete-nationale", "start_date": "07-14", "program": "fete"},
                        {"program": "night"},
                    ]
                },
            },
            "zones": {
                "grande-rue": {
                    "calendar": "rue",
                    "luminaires": ["lum-1", "lum-2", "lum-3"],
                    "multicast": "street",
                    "floor": 20,
                    "default_level": 60,
                    "presence": {"boost": 80, "hold": 60},
                },
                "stade": {"calendar": "rue", "relay": "io/contactor", "count": 6},
            },
            "presence_sensors": [{"device": "pir-1", "zone": "grande-rue", "near": "lum-2"}],
            "ambient": {"device": "light-1", "on_below": 20, "off_above": 50},
        },
    }


def errors_of(data: dict[str, Any], base_dir: Path) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse(data, base_dir)
    return info.value.errors


def test_base_config_is_valid(tmp_path: Path) -> None:
    cfg = parse(base(tmp_path), tmp_path)
    lc = cfg.lighting
    assert lc is not None
    assert list(lc.zones) == ["grande-rue", "stade"]
    assert lc.zones["grande-rue"].size == 3 and lc.zones["stade"].size == 6
    assert lc.zones["grande-rue"].presence is not None
    assert lc.calendars["rue"].rules[0].name == "fete-nationale"
    assert lc.tz.key == "Europe/Paris"


def test_a_gateway_without_lighting_has_none(tmp_path: Path) -> None:
    data = base(tmp_path)
    del data["lighting"]
    assert parse(data, tmp_path).lighting is None


Mutation = Callable[[dict[str, Any]], None]


def light(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = d["lighting"]
    return out


def gr(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = d["lighting"]["zones"]["grande-rue"]
    return out


def stade(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = d["lighting"]["zones"]["stade"]
    return out


def rule0(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = d["lighting"]["calendars"]["rue"]["rules"][0]
    return out


def sensor0(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = d["lighting"]["presence_sensors"][0]
    return out


def period0(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = d["lighting"]["programs"]["night"]["active_periods"][0]
    return out


Z = "lighting.zones.grande-rue"
CASES: list[tuple[str, Mutation, list[tuple[str, str]]]] = [
    (
        "unknown program",
        lambda d: rule0(d).update(program="feu"),
        [("lighting.calendars.rue.rules[0].program", "unknown program 'feu' (known: fete, night)")],
    ),
    (
        "unknown calendar",
        lambda d: gr(d).update(calendar="centre"),
        [(f"{Z}.calendar", "unknown calendar 'centre' (known: rue)")],
    ),
    (
        "unknown zone of a presence sensor",
        lambda d: sensor0(d).update(zone="grand-rue"),
        [("lighting.presence_sensors[0].zone", "unknown zone 'grand-rue'")],
    ),
    (
        "unknown neighbouring zone",
        lambda d: sensor0(d).update(also=["grande-rue", "place"]),
        [("lighting.presence_sensors[0].also[1]", "unknown zone 'place'")],
    ),
    (
        "unknown luminaire",
        lambda d: gr(d)["luminaires"].__setitem__(2, "lum-9"),
        [
            (f"{Z}.luminaires[2]", "'lum-9' is not a [[lorawan.devices]] name"),
            (f"{Z}.multicast", "lacks luminaires of the zone: lum-9"),
        ],
    ),
    (
        "unknown relay",
        lambda d: stade(d).update(relay="io/pump"),
        [
            (
                "lighting.zones.stade.relay",
                "'io/pump' is not a '<gpio source>/<relay>' (known: io/contactor)",
            )
        ],
    ),
    (
        "unknown multicast group",
        lambda d: gr(d).update(multicast="avenue"),
        [(f"{Z}.multicast", "'avenue' is not a [[lorawan.multicast]] group")],
    ),
    (
        "class A luminaire",
        lambda d: stade(d).update(luminaires=["lum-4", "pir-1"]),
        [("lighting.zones.stade.luminaires[1]", "'pir-1' is class A")],
    ),
    (
        "luminaire in two zones",
        lambda d: stade(d).update(luminaires=["lum-4", "lum-1"]),
        [("lighting.zones.stade.luminaires[1]", "'lum-1' is already in zone 'grande-rue'")],
    ),
    (
        "multicast group missing zone members",
        lambda d: gr(d)["luminaires"].append("lum-4"),
        [(f"{Z}.multicast", "group 'street' lacks luminaires of the zone: lum-4")],
    ),
    (
        "default level 0",
        lambda d: gr(d).update(default_level=0),
        [(f"{Z}.default_level", "the safe default must be lit (> 0)")],
    ),
    ("floor above max", lambda d: gr(d).update(floor=60, max=50), [(f"{Z}.floor", "above max")]),
    (
        "dimming curve not increasing",
        lambda d: gr(d).update(dimming_curve=[[0, 0], [60, 50], [50, 60], [100, 100]]),
        [(f"{Z}.dimming_curve", "points must be increasing levels from 0 to 100")],
    ),
    (
        "dimming curve not from 0",
        lambda d: gr(d).update(dimming_curve=[[10, 5], [100, 100]]),
        [(f"{Z}.dimming_curve", "points must be increasing levels from 0 to 100")],
    ),
    (
        "dimming curve not to 100",
        lambda d: gr(d).update(dimming_curve=[[0, 0], [80, 100]]),
        [(f"{Z}.dimming_curve", "points must be increasing levels from 0 to 100")],
    ),
    (
        "dimming curve of one point",
        lambda d: gr(d).update(dimming_curve=[[0, 0]]),
        [(f"{Z}.dimming_curve", "points must be increasing levels from 0 to 100")],
    ),
    (
        "dimming curve with a repeated level",
        lambda d: gr(d).update(dimming_curve=[[0, 0], [50, 40], [50, 45], [100, 100]]),
        [(f"{Z}.dimming_curve", "points must be increasing levels from 0 to 100")],
    ),
    (
        "active period bound not a time nor an event",
        lambda d: period0(d).update(start="noon"),
        [
            (
                "lighting.programs.night.active_periods[0].start",
                "'noon' is neither HH:MM nor a solar event",
            )
        ],
    ),
    (
        "active period offset too large",
        lambda d: period0(d).update(end="sunrise+800"),
        [("lighting.programs.night.active_periods[0].end", "offset over 720 minutes")],
    ),
    (
        "active period hour 24",
        lambda d: period0(d).update(end="24:00"),
        [("lighting.programs.night.active_periods[0].end", "is neither HH:MM")],
    ),
    (
        "30 February",
        lambda d: rule0(d).update(start_date="02-30"),
        [("lighting.calendars.rue.rules[0].start_date", "")],
    ),
    (
        "a date in neither form",
        lambda d: rule0(d).update(start_date="2026-7-14"),
        [("lighting.calendars.rue.rules[0].start_date", "neither YYYY-MM-DD nor MM-DD")],
    ),
    (
        "31 April of a year",
        lambda d: rule0(d).update(start_date="2026-04-31"),
        [("lighting.calendars.rue.rules[0].start_date", "")],
    ),
    (
        "end before start",
        lambda d: rule0(d).update(start_date="2026-08-09", end_date="2026-08-07"),
        [("lighting.calendars.rue.rules[0].end_date", "before start_date")],
    ),
    (
        "mixed date forms",
        lambda d: rule0(d).update(start_date="07-14", end_date="2026-07-20"),
        [("lighting.calendars.rue.rules[0].end_date", "mixes a full date and a yearly MM-DD")],
    ),
    (
        "end without start",
        lambda d: (rule0(d).pop("start_date"), rule0(d).update(end_date="07-20")),
        [("lighting.calendars.rue.rules[0].start_date", "end_date given without start_date")],
    ),
    (
        "unknown time zone",
        lambda d: light(d).update(timezone="Europe/Blois"),
        [("lighting.timezone", "unknown time zone 'Europe/Blois'")],
    ),
    (
        "presence sensor near a luminaire of another zone",
        lambda d: sensor0(d).update(near="lum-4"),
        [("lighting.presence_sensors[0].near", "'lum-4' is not a luminaire of zone 'grande-rue'")],
    ),
    (
        "presence sensor in a zone without presence settings",
        lambda d: gr(d).pop("presence"),
        [("lighting.presence_sensors[0].zone", "zone 'grande-rue' has no [presence] settings")],
    ),
    (
        "ambient thresholds inverted",
        lambda d: light(d)["ambient"].update(on_below=60, off_above=40),
        [("lighting.ambient.off_above", "must be above on_below (hysteresis)")],
    ),
    (
        "ambient thresholds equal",
        lambda d: light(d)["ambient"].update(on_below=50, off_above=50),
        [("lighting.ambient.off_above", "must be above on_below (hysteresis)")],
    ),
    (
        "ambient defaults against a low off_above",
        lambda d: light(d).update(ambient={"device": "light-1", "off_above": 10}),
        [("lighting.ambient.off_above", "must be above on_below (hysteresis)")],
    ),
    (
        "zone without luminaires nor count",
        lambda d: stade(d).update(count=0),
        [("lighting.zones.stade", "a zone needs luminaires (controllers) or a count")],
    ),
    (
        "count without relay",
        lambda d: stade(d).pop("relay"),
        [("lighting.zones.stade.count", "luminaires without a controller need a relay")],
    ),
    (
        "calendar without rules",
        lambda d: light(d)["calendars"].update(vide={"rules": []}),
        [("lighting.calendars.vide.rules", "a calendar needs at least one rule")],
    ),
    (
        "program without controls",
        lambda d: light(d)["programs"].update(rien={}),
        [
            (
                "lighting.programs.rien",
                "a program needs fixed_time_controls or astro_clock_time_controls",
            )
        ],
    ),
    (
        "zone name outside the SenML rules",
        lambda d: light(d)["zones"].update(
            {"Rue Haute": {"calendar": "rue", "luminaires": ["lum-4"]}}
        ),
        [("lighting.zones.Rue Haute", "")],
    ),
    # Structural errors: the schema's own paths, down into lists of tables.
    (
        "level over 100",
        lambda d: light(d)["programs"]["fete"]["fixed_time_controls"][1].update(level=101),
        [("lighting.programs.fete.fixed_time_controls[1].level", "")],
    ),
    (
        "fixed time 24:00",
        lambda d: light(d)["programs"]["fete"]["fixed_time_controls"][0].update(time="24:00"),
        [("lighting.programs.fete.fixed_time_controls[0].time", "HH:MM")],
    ),
    (
        "unknown solar event",
        lambda d: light(d)["programs"]["night"]["astro_clock_time_controls"][0].update(
            solar_event_type="dusk"
        ),
        [("lighting.programs.night.astro_clock_time_controls[0].solar_event_type", "")],
    ),
    (
        "unknown weekday",
        lambda d: rule0(d).update(weekdays=["sat", "dim"]),
        [("lighting.calendars.rue.rules[0].weekdays[1]", "")],
    ),
    ("misspelt zone key", lambda d: gr(d).update(flor=20), [(f"{Z}.flor", "unknown key")]),
    (
        "latitude out of range",
        lambda d: light(d).update(latitude=95.0),
        [("lighting.latitude", "")],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [pytest.param(m, e) for _name, m, e in CASES],
    ids=[c[0] for c in CASES],
)
def test_each_mistake_is_reported_at_its_path(
    tmp_path: Path, mutate: Mutation, expected: list[tuple[str, str]]
) -> None:
    data = base(tmp_path)
    mutate(data)
    errors = errors_of(data, tmp_path)
    assert sorted(path for path, _ in errors) == sorted(path for path, _ in expected), errors
    for path, fragment in expected:
        reasons = [reason for p, reason in errors if p == path]
        assert any(fragment in r for r in reasons), (path, fragment, reasons)
        assert all(r for r in reasons)  # never an empty reason


def test_every_lighting_mistake_at_once(tmp_path: Path) -> None:
    data = base(tmp_path)
    light(data)["timezone"] = "Mars/Olympus"
    gr(data).update(floor=90, max=40, default_level=0)
    rule0(data).update(start_date="02-30", program="feu")
    sensor0(data).update(near="lum-4")
    light(data)["ambient"].update(on_below=80)
    paths = {path for path, _ in errors_of(data, tmp_path)}
    assert paths == {
        "lighting.timezone",
        f"{Z}.floor",
        f"{Z}.default_level",
        "lighting.calendars.rue.rules[0].start_date",
        "lighting.calendars.rue.rules[0].program",
        "lighting.presence_sensors[0].near",
        "lighting.ambient.off_above",
    }


def test_config_runs_the_lighting_semantic_pass(tmp_path: Path) -> None:
    # Only dated rules: this guards the walk, not the undated-rule check.
    data = base(tmp_path)
    light(data)["calendars"]["rue"]["rules"][1]["start_date"] = "01-01"
    light(data)["calendars"]["rue"]["rules"][1]["end_date"] = "12-31"
    assert parse(data, tmp_path).lighting is not None  # valid as it stands
    light(data)["timezone"] = "Europe/Blois"
    assert errors_of(data, tmp_path) == [
        ("lighting.timezone", "unknown time zone 'Europe/Blois' (e.g. 'Europe/Paris')")
    ]


def test_check_accepts_a_rule_without_dates(tmp_path: Path) -> None:
    # The semantic pass sees the section with every default filled in, as to_builtins gives.
    section = msgspec.to_builtins(msgspec.convert(base(tmp_path)["lighting"], LightingConfig))
    assert section["calendars"]["rue"]["rules"][1]["end_date"] is None
    known = {
        "devices": {f"lum-{i}": "C" for i in (1, 2, 3, 4)} | {"pir-1": "A"},
        "multicast": {"street": ["lum-1", "lum-2", "lum-3"]},
        "relays": {"io/contactor"},
    }
    errors: list[tuple[str, str]] = []
    model.check(section, "lighting", errors, known)
    assert errors == []


def test_check_flags_end_date_without_start_date_directly(tmp_path: Path) -> None:
    section = msgspec.to_builtins(msgspec.convert(base(tmp_path)["lighting"], LightingConfig))
    rule = section["calendars"]["rue"]["rules"][0]
    rule.update(start_date=None, end_date="07-20")
    errors: list[tuple[str, str]] = []
    model.check(section, "lighting", errors, {"devices": {}, "multicast": {}, "relays": set()})
    assert (
        "lighting.calendars.rue.rules[0].start_date",
        "end_date given without start_date",
    ) in errors


def test_yearly_ranges_over_new_year_and_leap_days_are_valid(tmp_path: Path) -> None:
    data = base(tmp_path)
    rules = light(data)["calendars"]["rue"]["rules"]
    rules.insert(0, {"start_date": "12-20", "end_date": "01-02", "program": "fete"})
    rules.insert(0, {"start_date": "02-29", "program": "fete"})
    rules.insert(
        0,
        {
            "start_date": "2026-12-11",
            "end_date": "2026-12-13",
            "program": "fete",
            "weekdays": ["fri", "sat"],
        },
    )
    period0(data).update(start="civil_dusk+15", end="sunrise - 30")
    cfg = parse(data, tmp_path)
    assert cfg.lighting is not None
    assert len(cfg.lighting.calendars["rue"].rules) == 5


# Values of other types than the schema's, and references to nothing, anywhere in the section.
ODD = st.one_of(
    st.integers(-5, 200),
    st.text(max_size=8),
    st.booleans(),
    st.floats(allow_nan=False),
    st.lists(st.integers(0, 100), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _leaves(v, (*path, i))
    return out


LEAVES = [p for p in _leaves(base(Path("/tmp"))["lighting"]) if p]


@settings(max_examples=150, deadline=None)
@given(changes=st.lists(st.tuples(st.sampled_from(LEAVES), ODD), min_size=1, max_size=4))
def test_garbage_anywhere_in_lighting_is_reported_never_crashes(
    changes: list[tuple[tuple[Any, ...], Any]],
) -> None:
    data = base(Path("/tmp/passerelle-lighting-fuzz"))
    for path, value in changes:
        node: Any = data["lighting"]
        try:
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = copy.deepcopy(value)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier change replaced a parent
    try:
        cfg = parse(data, Path("/tmp"))
    except ConfigError as e:
        assert e.errors
        for path, reason in e.errors:
            assert path and reason
        return
    assert isinstance(cfg, Config)


# --------------------------------------------------------------------------------------------
# The documented street


def test_example_street_parses(tmp_path: Path) -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    data["uplink"] = dict(LAB_UPLINK)  # its TLS files are the gateway's, not here
    data["gateway"]["data_dir"] = str(tmp_path / "data")
    cfg = parse(data, tmp_path)
    lc = cfg.lighting
    assert lc is not None
    assert (lc.latitude, lc.longitude, lc.timezone) == (47.5861, 1.3359, "Europe/Paris")
    assert list(lc.zones) == ["grande-rue", "place-mairie", "chemin-stade"]
    assert [lc.zones[z].size for z in lc.zones] == [8, 4, 12]
    assert set(lc.programs) == {"coeur-de-nuit", "veille", "fete", "stade"}
    assert {z.calendar for z in lc.zones.values()} == set(lc.calendars)
    assert lc.zones["grande-rue"].floor == 20 and lc.zones["place-mairie"].floor == 30
    assert lc.zones["chemin-stade"].relay == "io/contactor"
    assert [s.near for s in lc.presence_sensors] == ["gr-02", "gr-05", "gr-07"]
    assert lc.ambient is not None and lc.ambient.on_below < lc.ambient.off_above
    assert lc.meter is not None and lc.meter.device == "meter-1"
    # Every luminaire is a class C controller in its zone's multicast group.
    devices = {d.name: d for d in cfg.lorawan.devices}
    groups = {g.name: g.devices for g in cfg.lorawan.multicast}
    for zone in lc.zones.values():
        for lum in zone.luminaires:
            assert devices[lum].class_ == "C"
            assert zone.multicast is not None and lum in groups[zone.multicast]


def test_example_street_only_lacks_its_tls_files() -> None:
    with pytest.raises(ConfigError) as info:
        parse(tomllib.loads(EXAMPLE.read_text()), EXAMPLE.parent)
    assert info.value.errors
    assert all(path.startswith("uplink.") for path, _ in info.value.errors), info.value.errors
