"""The configuration layer: schema, defaults, and check-config's "every error at once"."""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from passerelle import config
from passerelle.config import (
    Config,
    ConfigError,
    CounterSourceConfig,
    EnvSourceConfig,
    key_file_warnings,
    load,
    parse,
    summary,
    to_dict,
)
from passerelle.model import Priority
from passerelle.sources import SOURCE_TYPES

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PEM = "-----BEGIN CERTIFICATE-----\nplaceholder\n-----END CERTIFICATE-----\n"


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    """Placeholder TLS files beside the config, as an installer would lay them out."""
    for name in ("ca.pem", "gateway.pem", "gateway.key", "mqtt-password"):
        (tmp_path / name).write_text(PEM)
    for secret in ("gateway.key", "mqtt-password"):
        (tmp_path / secret).chmod(0o600)
    return tmp_path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "passerelle.toml"
    path.write_text(text)
    return path


def errors_of(path_or_data: Path | dict[str, Any], base_dir: Path | None = None) -> list:
    with pytest.raises(ConfigError) as info:
        if isinstance(path_or_data, Path):
            load(path_or_data)
        else:
            parse(path_or_data, base_dir or Path("/"))
    return info.value.errors


MINIMAL = """
[gateway]
id = "gw-1"
[uplink]
url = "mqtts://broker.example.net"
cert_file = "gateway.pem"
key_file = "gateway.key"
"""


def test_minimal_config_gets_defaults(certs: Path) -> None:
    cfg = load(write(certs, MINIMAL))
    assert cfg.gateway.data_dir == "/var/lib/passerelle"
    up = cfg.uplink
    assert (up.host, up.port, up.tls) == ("broker.example.net", 8883, True)
    assert up.cert_file == str(certs / "gateway.pem")
    assert up.ca_file is None and up.password_file is None
    assert up.client_id == "gw-1"  # defaults to gateway.id
    assert (up.protocol, up.keepalive, up.batch_records, up.max_inflight) == (5, 30, 250, 4)
    assert (up.max_rate, up.backoff_initial, up.backoff_max) == (5000.0, 1.0, 300.0)
    assert cfg.store == config.StoreConfig(max_bytes=268435456, ttl=2592000.0, max_delay=0.05)
    assert cfg.log == config.LogConfig(level="info", format="text", burst=5, per=60.0)
    assert cfg.sources == []


FULL = """
[gateway]
id = "lyon-0042"
data_dir = "data"

[uplink]
url = "mqtts://10.0.0.5:18883"
ca_file = "ca.pem"
cert_file = "gateway.pem"
key_file = "gateway.key"
protocol = 3
client_id = "lyon-0042-a"
username = "lyon"
password_file = "mqtt-password"
keepalive = 60
batch_records = 4096
max_rate = 100
max_inflight = 64
backoff_initial = 2
backoff_max = 2
state_interval = 15.5

[store]
max_bytes = 1048576
ttl = 3600
max_delay = 0

[log]
level = "debug"
format = "json"
burst = 1
per = 0.5

[[sources]]
type = "sim.counter"
name = "counter"
interval = 0.25
priority = "alarm"
device = "cabinet"
start = -3

[[sources]]
type = "sim.env"
name = "env/temp"
interval = 10
seed = 9
values = 64
"""


def test_full_config(certs: Path) -> None:
    cfg = load(write(certs, FULL))
    assert cfg.gateway.data_dir == str(certs / "data")
    up = cfg.uplink
    assert (up.host, up.port, up.protocol, up.client_id) == ("10.0.0.5", 18883, 3, "lyon-0042-a")
    assert up.password_file == str(certs / "mqtt-password")
    assert isinstance(up.max_rate, float) and up.max_rate == 100.0
    assert cfg.store.max_delay == 0.0 and cfg.log.per == 0.5
    counter, env = cfg.sources
    assert isinstance(counter, CounterSourceConfig) and isinstance(env, EnvSourceConfig)
    assert (counter.type, counter.device, counter.start) == ("sim.counter", "cabinet", -3)
    assert counter.priority_level is Priority.ALARM
    assert (env.type, env.device, env.values) == ("sim.env", "env/temp", 64)
    assert env.priority_level is Priority.TELEMETRY
    assert not key_file_warnings(cfg)


def test_round_trip_and_summary(certs: Path) -> None:
    cfg = load(write(certs, FULL))
    data = to_dict(cfg)
    assert parse(json.loads(json.dumps(data)), Path("/elsewhere")) == cfg
    assert data["sources"][0]["type"] == "sim.counter"
    text = summary(cfg)
    assert "lyon-0042" in text and "10.0.0.5:18883" in text and "mTLS" in text
    assert "MQTT 3.1.1" in text and "1 MiB" in text
    assert re.search(r"counter\s+sim.counter\s+every 250 ms", text)


def test_config_is_immutable(certs: Path) -> None:
    cfg = load(write(certs, MINIMAL))
    with pytest.raises(AttributeError):
        cfg.uplink.url = "mqtt://evil"  # type: ignore[misc]


def test_source_tags_match_the_registry() -> None:
    # A source type the schema knows but build_source does not (or the reverse) is a bug.
    import typing

    from passerelle.config import SourceConfig

    tags = {cls.__struct_config__.tag for cls in typing.get_args(SourceConfig)}
    assert tags == set(SOURCE_TYPES)
    assert {CounterSourceConfig, EnvSourceConfig} <= set(typing.get_args(SourceConfig))


def test_lab_example_is_valid() -> None:
    cfg = load(EXAMPLES / "lab-plaintext.toml")
    assert not cfg.uplink.tls and cfg.uplink.allow_plaintext
    assert "PLAINTEXT" in summary(cfg)


def test_production_example_only_lacks_its_files(tmp_path: Path) -> None:
    # The example points at /etc/passerelle; on a dev box only those files may be missing.
    errors = errors_of(EXAMPLES / "passerelle.toml")
    assert errors and all(
        path.startswith("uplink.") and reason.startswith("no such file '/etc/passerelle/")
        for path, reason in errors
    )
    # With the files present it is valid.
    data = tomllib.loads((EXAMPLES / "passerelle.toml").read_text())
    for key in ("ca_file", "cert_file", "key_file"):
        (tmp_path / key).write_text(PEM)
        data["uplink"][key] = key
    cfg = parse(data, tmp_path)
    assert cfg.uplink.tls and len(cfg.sources) == 2


def test_lorawan_example_only_lacks_its_files(tmp_path: Path) -> None:
    errors = errors_of(EXAMPLES / "lorawan-street.toml")
    assert errors and all(reason.startswith("no such file '/etc/passerelle/")
                          for _, reason in errors)
    data = tomllib.loads((EXAMPLES / "lorawan-street.toml").read_text())
    for key in ("ca_file", "cert_file", "key_file"):
        (tmp_path / key).write_text(PEM)
        data["uplink"][key] = key
    cfg = parse(data, tmp_path)
    assert cfg.radio is not None and cfg.radio.type == "semtech-udp"
    assert [d.name for d in cfg.lorawan.devices] == ["lum-001", "water-7"]
    assert cfg.lorawan.multicast[0].devices == ["lum-001"]


MISTAKES = """\
[gateway]
id = "Lamp_42"

[uplink]
url = "mqtt://broker.example.net"
cert_file = "missing.pem"
protocol = 4
backoff_initial = 10.0
backoff_max = 5.0
bogus = 1

[telemetry]
period = 1

[[sources]]
type = "sim.counter"
name = "a"
interval = 1

[[sources]]
type = "sim.env"
name = "a"
interval = 2

[[sources]]
type = "sim.counter"
name = "c"
interval = 0
"""


def test_every_mistake_is_reported_with_its_path(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, MISTAKES))
    assert errors == [
        ("telemetry", "unknown key"),
        (
            "gateway.id",
            "invalid 'Lamp_42': lowercase letters, digits and '-' only "
            "(1-63, first a letter or digit)",
        ),
        ("uplink.bogus", "unknown key"),
        ("uplink.protocol", "must be one of 5, 3 (got 4)"),
        ("uplink.url", "plaintext MQTT refused: set uplink.allow_plaintext = true (labs only)"),
        ("uplink.cert_file", f"no such file '{tmp_path / 'missing.pem'}'"),
        ("uplink.backoff_max", "must be >= backoff_initial (10)"),
        ("sources[1].name", "duplicate source name 'a' (also sources[0])"),
        ("sources[2].interval", "must be > 0"),
    ]


def test_error_message_lists_one_error_per_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, MISTAKES))
    lines = str(info.value).splitlines()
    assert len(lines) == 9
    assert "sources[2].interval: must be > 0" in lines


def test_toml_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    errors = errors_of(write(tmp_path, '[gateway]\nid = "gw-1"\nbroken = \n'))
    assert len(errors) == 1
    path, reason = errors[0]
    assert path == "<toml>" and reason.startswith("line 3, column 10:")


def test_missing_file(tmp_path: Path) -> None:
    assert errors_of(tmp_path / "nope.toml") == [
        ("<file>", f"no such file '{tmp_path / 'nope.toml'}'")
    ]


def test_relative_paths_follow_the_config_file(certs: Path) -> None:
    sub = certs / "tls"
    sub.mkdir()
    (sub / "client.pem").write_text(PEM)
    (sub / "client.key").write_text(PEM)
    text = MINIMAL.replace('"gateway.pem"', '"tls/client.pem"')
    text = text.replace('"gateway.key"', '"./tls/../tls/client.key"')
    cfg = load(write(certs, text + "[store]\n"))
    assert cfg.uplink.cert_file == str(sub / "client.pem")
    assert cfg.uplink.key_file == str(sub / "client.key")
    # A relative config path works too: the base is absolute, whatever the cwd is later.
    cwd = os.getcwd()
    try:
        os.chdir(certs)
        assert load("passerelle.toml").uplink.cert_file == str(sub / "client.pem")
    finally:
        os.chdir(cwd)


def lab(**uplink: Any) -> dict[str, Any]:
    """A valid config needing no files on disk; keyword arguments override uplink keys."""
    return {
        "gateway": {"id": "lab-1"},
        "uplink": {"url": "mqtt://localhost", "allow_plaintext": True, **uplink},
        "sources": [
            {"type": "sim.counter", "name": "counter", "interval": 1.0},
            {"type": "sim.env", "name": "env", "interval": 2.0},
        ],
    }


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://broker", "unsupported scheme 'http': expected mqtts://host[:port]"),
        ("broker:1883", "unsupported scheme 'broker': expected mqtts://host[:port]"),
        ("//broker", "no scheme: expected mqtts://host[:port]"),
        ("mqtt://", "missing broker host"),
        ("mqtt://broker:99999", "port must be a number in 1..65535"),
        ("mqtt://broker/topic", "expected mqtts://host[:port], with no path or query"),
        (
            "mqtt://u:secret@broker",
            "credentials in the URL refused: use uplink.username and uplink.password_file",
        ),
    ],
)
def test_bad_urls(url: str, reason: str) -> None:
    assert errors_of(lab(url=url)) == [("uplink.url", reason)]


def test_url_ports_and_plaintext() -> None:
    up = parse(lab(url="mqtt://[::1]"), Path("/")).uplink
    assert (up.host, up.port, up.tls) == ("::1", 1883, False)
    assert parse(lab(url="MQTT://broker:1884"), Path("/")).uplink.port == 1884


def test_mqtts_requires_client_certificate() -> None:
    assert errors_of(lab(url="mqtts://broker")) == [
        ("uplink.cert_file", "required for mqtts:// (client certificate for mutual TLS)"),
        ("uplink.key_file", "required for mqtts:// (private key of the client certificate)"),
    ]


def test_structural_errors_read_plainly() -> None:
    data = lab(keepalive=30.5, max_inflight=0, allow_plaintext="yes", max_rate=float("inf"))
    data["log"] = {"level": "loud", "burst": 0}
    data["store"] = {"max_delay": 0.5, "max_bytes": 1000}
    data["sources"] += [
        {"type": "sim.bogus", "name": "x"},
        {"name": "y", "interval": 1},
        {"type": "sim.env", "name": "bad name", "interval": "1s", "values": 65, "devise": "d"},
        "counter",
    ]
    del data["gateway"]
    assert errors_of(data) == [
        ("gateway", "required section missing"),
        ("uplink.allow_plaintext", "expected true or false, got a string"),
        ("uplink.keepalive", "expected an integer, got a decimal number"),
        ("uplink.max_rate", "must be a finite number"),
        ("uplink.max_inflight", "must be >= 1"),
        ("store.max_bytes", "must be >= 1048576"),
        ("store.max_delay", "must be <= 0.1"),
        ("log.level", "must be one of 'debug', 'info', 'warning', 'error' (got 'loud')"),
        ("log.burst", "must be >= 1"),  # msgspec reads int > 0 as >= 1
        ("sources[2].type", "unknown source type 'sim.bogus' (known: gpio, i2c, modbus-rtu, modbus-tcp, sim.counter, sim.env)"),
        ("sources[3].type", "required key missing (one of: gpio, i2c, modbus-rtu, modbus-tcp, sim.counter, sim.env)"),
        ("sources[4].devise", "unknown key (did you mean 'device'?)"),
        ("sources[4].interval", "expected a number, got a string"),
        ("sources[4].values", "must be <= 64"),
        ("sources[4].name", "invalid SenML name 'bad name': letters, digits and -:./_ only"),
        ("sources[5]", "expected a table, got a string"),
    ]


def test_sources_written_as_a_table() -> None:
    data = lab()
    data["sources"] = {"type": "sim.counter"}
    assert errors_of(data) == [("sources", "expected a list of tables ([[sources]]), got a table")]


def test_key_file_warnings(certs: Path) -> None:
    cfg = load(write(certs, MINIMAL))
    assert key_file_warnings(cfg) == []
    (certs / "gateway.key").chmod(0o640)
    assert key_file_warnings(cfg) == [
        f"uplink.key_file: '{certs / 'gateway.key'}' is readable by group (mode 0640); "
        f"run chmod 600 '{certs / 'gateway.key'}'"
    ]


# --- property: an extra key anywhere is reported exactly where it is --------------------------

LOCATIONS: dict[tuple[str | int, ...], type[msgspec.Struct]] = {
    (): Config,
    ("gateway",): config.GatewayConfig,
    ("uplink",): config.UplinkConfig,
    ("store",): config.StoreConfig,
    ("log",): config.LogConfig,
    ("sources", 0): CounterSourceConfig,
    ("sources", 1): EnvSourceConfig,
}


def expected_path(location: tuple[str | int, ...], key: str) -> str:
    parts = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in location)
    # Keys that are not bare TOML keys are quoted, so `a.b` is never read as a nested table.
    quoted = key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)
    return f"{parts}.{quoted}".lstrip(".")


@given(
    location=st.sampled_from(sorted(LOCATIONS, key=str)),
    key=st.text(min_size=1, max_size=20),
    value=st.one_of(
        st.integers(),
        st.text(),
        st.booleans(),
        st.floats(),
        st.lists(st.integers()),
        st.dictionaries(st.text(), st.integers()),
    ),
)
def test_any_extra_key_is_an_unknown_key_at_its_path(
    location: tuple[str | int, ...], key: str, value: Any
) -> None:
    cls = LOCATIONS[location]
    known = {f.encode_name for f in msgspec.structs.fields(cls)}
    assume(key not in known and key != cls.__struct_config__.tag_field)
    data = lab()
    table: Any = data
    for part in location:
        table = table.setdefault(part, {}) if isinstance(part, str) else table[part]
    table[key] = value
    errors = errors_of(data)
    assert len(errors) == 1
    path, reason = errors[0]
    assert path == expected_path(location, key)
    assert reason.startswith("unknown key")


def test_flash_and_bandwidth_trade_offs_are_checked_and_summarised() -> None:
    data = lab(compression="gzip")
    data["store"] = {"hold": -1}
    assert [path for path, _ in errors_of(data)] == ["uplink.compression", "store.hold"]
    data = lab(batch_age=120)
    data["store"] = {"hold": 60}
    cfg = parse(data, Path("/"))
    assert (cfg.uplink.compression, cfg.store.hold) == ("zlib", 60.0)
    text = summary(cfg)
    assert "HOLDS non-alarm records up to" in text and "zlib" in text


def test_radio_and_lorawan_sections() -> None:
    data = lab()
    data["radio"] = {"type": "semtech-udp", "listen": "127.0.0.1:1700"}
    data["lorawan"] = {
        "devices": [
            {"name": "lum-001", "dev_eui": "70b3d57ed0000001", "class": "C",
             "join_eui": "0" * 16, "app_key": "2b7e151628aed2a6abf7158809cf4f3c"},
            {"name": "water-7", "dev_eui": "70b3d57ed0000002", "dev_addr": "26011bda",
             "nwk_s_key": "00" * 16, "app_s_key": "11" * 16, "codec": "raw"},
        ],
        "multicast": [{"name": "rue-pasteur", "dev_addr": "26011bff", "nwk_s_key": "22" * 16,
                       "app_s_key": "33" * 16, "devices": ["lum-001"]}],
    }
    cfg = parse(data, Path("/"))
    assert cfg.radio is not None and cfg.radio.type == "semtech-udp"
    lum, water = cfg.lorawan.devices
    assert (lum.class_, lum.otaa, water.otaa, water.codec) == ("C", True, False, "raw")
    assert cfg.lorawan.rx2_datarate == "SF12BW125"
    # Keys never reach the summary.
    assert "2b7e1516" not in summary(cfg)


def test_lorawan_mistakes_are_reported_with_their_paths() -> None:
    data = lab()
    data["radio"] = {"type": "lora"}
    data["lorawan"] = {
        "devices": [
            {"name": "a", "dev_eui": "zz", "app_key": "00" * 16, "dev_addr": "01020304",
             "codec": "x", "colour": 1},
            {"name": "a", "dev_eui": "70b3d57ed0000001"},
            {"name": "b", "dev_eui": "70b3d57ed0000002", "dev_addr": "0a0b0c0d",
             "nwk_s_key": "00" * 16},
        ],
        "multicast": [{"name": "street", "dev_addr": "01020304", "nwk_s_key": "00" * 16,
                       "app_s_key": "00" * 16, "devices": ["c"]}],
    }
    assert errors_of(data) == [
        ("radio.type", "unknown radio type 'lora' (known: at-modem, semtech-udp, sim, sx127x)"),
        ("lorawan.devices[0].colour", "unknown key"),
        ("lorawan.devices[0].dev_eui", "invalid 'zz': 16 hex digits (an EUI-64)"),
        ("lorawan.devices[0]", "both OTAA (join_eui, app_key) and ABP keys: choose one"),
        ("lorawan.devices[0].codec", "unknown codec 'x' (known: cayenne, luminaire, raw)"),
        ("lorawan.devices[1].name", "duplicate device 'a' (also devices[0])"),
        ("lorawan.devices[1].app_key", "required: OTAA (join_eui, app_key) or ABP keys"),
        ("lorawan.devices[2].app_s_key", "required for ABP"),
        ("lorawan.multicast[0].dev_addr", "DevAddr also used by devices[0]"),
        ("lorawan.multicast[0].devices[0]", "no device named 'c'"),
    ]


def test_lorawan_codec_layouts_are_validated_at_their_paths() -> None:
    data = lab()
    data["lorawan"] = {
        "codecs": {
            "water": {"fields": [
                {"name": "index", "offset": 0, "type": "u32", "endian": "little", "unit": "m3",
                 "scale": 0.001},
                {"name": "battery", "offset": 4, "type": "u8", "scale": 0.1, "unit": "V"},
            ]},
            "bad": {"fields": [{"name": "x", "offset": 0, "type": "u7"}]},
            "raw": {"fields": []},
        },
        "devices": [{"name": "w1", "dev_eui": "70b3d57ed0000001", "join_eui": "0" * 16,
                     "app_key": "00" * 16, "codec": "bad"}],
    }
    paths = [p for p, _ in errors_of(data)]
    assert paths == ["lorawan.codecs.bad.fields[0].type", "lorawan.codecs.raw"]
    del data["lorawan"]["codecs"]["bad"], data["lorawan"]["codecs"]["raw"]
    data["lorawan"]["devices"][0]["codec"] = "water"
    cfg = parse(data, Path("/"))
    assert [f.name for f in cfg.lorawan.codecs["water"].fields] == ["index", "battery"]


@pytest.mark.parametrize("listen", ["1700", "0.0.0.0:", "0.0.0.0:99999", "host:0", "a b:1700"])
def test_packet_forwarder_listen_address_is_checked(listen: str) -> None:
    data = lab()
    data["radio"] = {"type": "semtech-udp", "listen": listen}
    assert [p for p, _ in errors_of(data)] == ["radio.listen"]


def test_cabinet_example_only_lacks_its_files(tmp_path: Path) -> None:
    errors = errors_of(EXAMPLES / "cabinet.toml")
    assert errors and all(reason.startswith("no such file '/etc/passerelle/")
                          for _, reason in errors)
    data = tomllib.loads((EXAMPLES / "cabinet.toml").read_text())
    for key in ("ca_file", "cert_file", "key_file"):
        (tmp_path / key).write_text(PEM)
        data["uplink"][key] = key
    cfg = parse(data, tmp_path)
    assert [s.type for s in cfg.sources] == ["modbus-rtu", "modbus-tcp", "i2c", "gpio"]
    assert cfg.policy.defaults and len(cfg.policy.rules()) > len(cfg.policy.streams) == 3


def test_bus_and_policy_mistakes_are_reported_with_their_paths() -> None:
    data = tomllib.loads((EXAMPLES / "cabinet.toml").read_text())
    data["sources"][0]["devices"][0]["map"] = "sdm63"
    data["sources"][2]["sensors"][0]["address"] = 0x40
    data["policy"]["streams"][1]["deadband"] = 1.0  # with an aggregate: refused
    data["policy"]["timezone"] = "Europe/Pariss"
    errors = dict(errors_of(data))
    assert "did you mean 'sdm630'" in errors["sources[0].devices[0].map"]
    assert "0x76 or 0x77" in errors["sources[2].sensors[0].address"]
    assert "policy.timezone" in errors
    assert any(path.startswith("policy.streams[1]") for path in errors)
