"""The ``[policy]`` section: structure through the loader's pass, meaning through
:func:`passerelle.policy.config.check`, every error with its dotted path."""

from __future__ import annotations

import json
import tomllib
from typing import Any

import msgspec
import pytest

from passerelle import config as loader
from passerelle.policy import config as policy_config
from passerelle.policy.config import PolicyConfig, StreamRule, default_policy, problems
from passerelle.policy.sobriety import Sobriety


def validate(text: str) -> tuple[PolicyConfig | None, list[tuple[str, str]]]:
    """Both passes, as passerelle.config runs them for the [policy] section."""
    raw = tomllib.loads(text).get("policy", {})
    errors: list[tuple[str, str]] = []
    cleaned: Any = loader._check_struct(raw, PolicyConfig, "policy", errors)
    if isinstance(cleaned, dict):
        policy_config.check(cleaned, "policy", errors)
    if errors:
        return None, errors
    return msgspec.convert(cleaned, PolicyConfig), errors


EXAMPLE = """
[policy]
night = "22:30-05:30"
timezone = "Europe/Paris"
budget_bytes_per_day = 500000

[[policy.streams]]
match = "*/presence*"
privacy = "count"
aggregate = { window = 900, functions = ["count"] }

[[policy.streams]]
match = "*/temperature*"
deadband = 0.2
heartbeat = 900
ttl = 604800

[[policy.streams]]
match = "meter-1/P*"
aggregate = { window = 300, functions = ["min", "max", "mean"] }
privacy = "strict"

[[policy.streams]]
match = "*/illuminance"
deadband_rel = 0.05
"""


def test_the_documented_example_loads() -> None:
    cfg, errors = validate(EXAMPLE)
    assert errors == []
    assert cfg is not None
    assert cfg.night == "22:30-05:30" and cfg.budget_bytes_per_day == 500000
    assert [r.match for r in cfg.streams] == [
        "*/presence*",
        "*/temperature*",
        "meter-1/P*",
        "*/illuminance",
    ]
    assert cfg.streams[2].aggregate is not None
    assert cfg.streams[2].aggregate.functions == ["min", "max", "mean"]
    assert cfg.streams[1].ttl == 604800.0
    Sobriety(cfg)  # and the engine takes it


def test_defaults_when_the_section_is_empty() -> None:
    cfg, errors = validate("")
    assert errors == [] and cfg == PolicyConfig()
    assert cfg.night == "22:00-06:00" and cfg.timezone == "Europe/Paris"
    assert cfg.budget_bytes_per_day is None and cfg.streams == []
    rule = StreamRule(match="a/*", aggregate=policy_config.AggregateConfig())
    assert rule.aggregate is not None and rule.aggregate.window == 300
    assert rule.aggregate.functions == ["min", "max", "mean", "count"]


def _toml(table: dict[str, Any]) -> str:
    """Scalar keys and inline tables as TOML (JSON strings, numbers and arrays are TOML)."""
    lines = []
    for k, v in table.items():
        if v is None or k == "streams":
            continue
        if isinstance(v, dict):
            inner = ", ".join(f"{a} = {json.dumps(b)}" for a, b in v.items())
            lines.append(f"{k} = {{ {inner} }}")
        else:
            lines.append(f"{k} = {json.dumps(v)}")
    return "\n".join(lines) + "\n"


def test_default_policy_is_valid_and_round_trips() -> None:
    cfg = default_policy()
    assert problems(cfg) == []
    data = msgspec.to_builtins(cfg)
    text = "[policy]\n" + _toml(data)
    for rule in data["streams"]:
        text += "[[policy.streams]]\n" + _toml(rule)
    loaded, errors = validate(text)
    assert errors == [] and loaded == cfg
    Sobriety(loaded)


BAD = """
[policy]
night = "22h-6h"
timezone = "Europe/Pari"
budget_bytes_per_day = 10

[[policy.streams]]          # 0
match = "*/temperature"
deadband = 0.5
deadband_rel = 0.1

[[policy.streams]]          # 1
match = "*/power"
aggregate = { window = 300, functions = ["min", "median"] }

[[policy.streams]]          # 2
match = "*/voltage"
aggregate = { window = 300, functions = ["min", "max", "min"] }

[[policy.streams]]          # 3
match = "*/current"
aggregate = { window = 7 }

[[policy.streams]]          # 4
match = "*/presence"
privacy = "count"
deadband = 1

[[policy.streams]]          # 5
match = "*/occupancy"
privacy = "count"
aggregate = { functions = ["mean"] }

[[policy.streams]]          # 6
match = "*/energy"
aggregate = { window = 900, functions = ["last"] }
heartbeat = 3600

[[policy.streams]]          # 7
match = "humidity"

[[policy.streams]]          # 8
match = "*/voltage"

[[policy.streams]]          # 9
match = "*"
deadbnd = 1

[[policy.streams]]          # 10
match = "*/rssi"
aggregate = { functions = [] }
privacy = "loud"
"""


def test_every_error_with_its_path() -> None:
    cfg, errors = validate(BAD)
    assert cfg is None
    found = dict(errors)
    assert len(found) == len(errors), errors  # one error per path here
    expect = {
        "policy.night": "expected 'HH:MM-HH:MM'",
        "policy.timezone": "unknown time zone 'Europe/Pari'",
        "policy.budget_bytes_per_day": "must be >= 1024",
        "policy.streams[0].deadband_rel": "not both",
        "policy.streams[1].aggregate.functions[1]": "unknown 'median' (known: min, max, mean",
        "policy.streams[2].aggregate.functions[2]": "duplicate 'min' (also [0])",
        "policy.streams[3].aggregate.window": "does not divide a day",
        "policy.streams[4].deadband": 'privacy = "count"',
        "policy.streams[5].aggregate.functions": 'must be ["count"]',
        "policy.streams[6].heartbeat": "aggregate replaces",
        "policy.streams[7].match": "never matches",
        "policy.streams[8].match": "same match as streams[2]",
        "policy.streams[9].deadbnd": "did you mean 'deadband'",
        "policy.streams[10].match": "never reached: streams[9] matches everything",
        "policy.streams[10].aggregate.functions": "at least one function",
        "policy.streams[10].privacy": "must be one of 'count', 'strict'",
    }
    for path, words in expect.items():
        assert path in found, f"no error at {path}: {errors}"
        assert words in found[path], (path, found[path])
    assert set(found) == set(expect)


def test_engine_refuses_a_config_built_in_code() -> None:
    cfg = PolicyConfig(
        night="25:00-06:00",
        streams=[StreamRule(match="a/b", deadband=1.0, deadband_rel=0.1)],
    )
    assert [p for p, _ in problems(cfg)] == ["policy.night", "policy.streams[0].deadband_rel"]
    with pytest.raises(ValueError, match=r"policy\.night: .*policy\.streams\[0\]\.deadband_rel"):
        Sobriety(cfg)
