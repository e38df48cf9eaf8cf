"""``passerelle ctl`` against a real mosquitto with TLS: keys, signing, push, status, watch.

The CLI runs in-process (``main`` in a worker thread, so this test's loop keeps serving the
broker side) except ``watch``, which runs as a subprocess so the test can wait for its
"watching" line before publishing. ``push --wait`` is answered by a scripted responder that
stands in for the gateway only to exercise the CLI's waiting, table and exit codes; the
real applier is tested end to end elsewhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import stat
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from hil.mosquitto import Mosquitto
from hil.pki import Pki
from passerelle import ctl, senml
from passerelle.control.envelope import Rejected, open_envelope
from passerelle.control.keys import Trust, key_id, load_private_key
from passerelle.model import Record

GATEWAY = "cab-0042"


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich tables on a captured stdout: no folding


async def run_ctl(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(ctl.main, [str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def run_now(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = ctl.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def operator_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    key = tmp_path / "ops.key"
    assert run_now(capsys, "keygen", "--out", key)[0] == 0
    return key


@pytest.fixture
def tls(broker: Mosquitto, pki: Pki) -> list[str]:
    return [
        "--broker",
        broker.url,
        "--ca",
        str(pki.ca_cert),
        "--cert",
        str(pki.client_cert),
        "--key",
        str(pki.client_key),
    ]


GATEWAY_TOML = """\
[gateway]
id = "cab-0042"

[uplink]
url = "mqtts://broker.example.net"
cert_file = "gateway.pem"
key_file = "gateway.key"

[control]
operator_keys = ["ops.key.pub"]
health_window = 5
"""


def write_config(directory: Path, text: str = GATEWAY_TOML, *, with_files: bool = True) -> Path:
    if with_files:
        for name in ("gateway.pem", "gateway.key"):
            (directory / name).write_text("-----BEGIN PLACEHOLDER-----\n")
    path = directory / "passerelle.toml"
    path.write_text(text)
    return path


def signed_config(capsys: pytest.CaptureFixture[str], key: Path, *extra: str) -> bytes:
    config = write_config(key.parent)
    out = key.parent / "bundle.cose"
    code, _, err = run_now(capsys, "sign", config, "--key", key, "--out", out, *extra)
    assert code == 0, err
    return out.read_bytes()


# -------------------------------------------------------------------------- offline tools


def test_keygen_private_0600_public_beside_and_no_silent_overwrite(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "ops.key"
    code, out, err = run_now(capsys, "keygen", "--out", key)
    assert (code, err) == (0, "")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    kid = key_id(load_private_key(key).public_key()).hex()
    assert f"key id       {kid}" in out
    assert f"{key}.pub" in out
    assert b"BEGIN PUBLIC KEY" in Path(f"{key}.pub").read_bytes()

    code, out, err = run_now(capsys, "keygen", "--out", key)
    assert code == 2 and out == ""
    assert (
        err.strip() == f"passerelle ctl keygen: {key}: already exists; refusing to overwrite a key"
    )
    assert key_id(load_private_key(key).public_key()).hex() == kid  # untouched

    code, out, _ = run_now(capsys, "keygen", "--out", key, "--force")
    new_kid = key_id(load_private_key(key).public_key()).hex()
    assert code == 0 and new_kid != kid and new_kid in out
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_sign_refuses_an_invalid_config_naming_each_path(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = GATEWAY_TOML.replace('id = "cab-0042"', 'id = "Cab_42"').replace(
        "[control]", "[store]\nmax_bytes = 10\n\n[control]"
    )
    config = write_config(operator_key.parent, bad)
    out = operator_key.parent / "bundle.cose"
    code, stdout, err = run_now(
        capsys, "sign", config, "--key", operator_key, "--version", "3", "--out", out
    )
    assert code == 2 and stdout == ""
    assert "configuration refused, nothing signed" in err
    assert "  gateway.id: invalid 'Cab_42'" in err
    assert "  store.max_bytes: must be >= 1048576" in err
    assert not out.exists()


def test_sign_round_trip_carries_the_toml_as_written(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = int(time.time())
    data = signed_config(
        capsys, operator_key, "--version", "7", "--target", GATEWAY, "--expires", "15m"
    )
    trust = Trust.from_files([f"{operator_key}.pub"])
    signed = open_envelope(
        data, trust, kind="config", gateway_id=GATEWAY, groups=[], now=time.time()
    )
    assert signed.version == 7 and signed.target == GATEWAY and signed.group is None
    assert before + 900 <= signed.expires <= int(time.time()) + 900
    # The document as decoded: relative paths stay relative (parse() would resolve them).
    assert signed.config == tomllib.loads(GATEWAY_TOML)
    assert signed.config["uplink"]["cert_file"] == "gateway.pem"
    assert signed.kid == key_id(load_private_key(operator_key).public_key())
    with pytest.raises(Rejected) as info:
        open_envelope(data, trust, kind="config", gateway_id="cab-0043", groups=[], now=time.time())
    assert info.value.reason == "wrong_target"


def test_sign_file_checks_target_and_lockout(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The gateway's certificates are not on the operator's laptop.
    config = write_config(operator_key.parent, with_files=False)
    out = operator_key.parent / "bundle.cose"
    base = ["sign", config, "--key", operator_key, "--version", "2", "--out", out]
    code, _, err = run_now(capsys, *base)
    assert code == 2
    assert f"uplink.cert_file: no such file '{operator_key.parent / 'gateway.pem'}'" in err
    assert "2 of these name files absent from this machine" in err
    assert "--no-file-checks" in err and not out.exists()

    code, stdout, err = run_now(capsys, *base, "--no-file-checks")
    assert (code, err) == (0, "")
    assert "signed config version 2 for any gateway trusting the key, no expiry" in stdout
    assert out.exists()

    # --no-file-checks skips absent files only: a schema error still refuses.
    broken = GATEWAY_TOML.replace("health_window = 5", "health_window = 0")
    config.write_text(broken)
    code, _, err = run_now(capsys, *base, "--no-file-checks")
    assert code == 2 and "control.health_window: must be >= 1" in err

    # What the gateway would refuse anyway is refused before signing.
    config.write_text(GATEWAY_TOML)
    code, _, err = run_now(capsys, *base, "--no-file-checks", "--target", "cab-0043")
    assert code == 2
    assert "gateway.id: 'cab-0042' but --target is 'cab-0043'" in err
    config.write_text(GATEWAY_TOML.replace('operator_keys = ["ops.key.pub"]', ""))
    code, _, err = run_now(capsys, *base, "--no-file-checks")
    assert code == 2 and "control.operator_keys: a remote configuration must keep" in err


def test_command_args_are_json_when_they_parse(
    operator_key: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = operator_key.parent / "cmd.cose"
    code, stdout, err = run_now(
        capsys, "command", "set-log-level", "--arg", "level=debug", "--arg", "minutes=15",
        "--arg", 'tags=["a", 1]', "--arg", "note=not json: {", "--key", operator_key,
        "--group", "commune-41", "--expires", "1h", "--out", out,
    )  # fmt: skip
    assert (code, err) == (0, "")
    signed = open_envelope(
        out.read_bytes(),
        Trust.from_files([f"{operator_key}.pub"]),
        kind="command",
        gateway_id=GATEWAY,
        groups=["commune-41"],
        now=time.time(),
    )
    assert signed.name == "set-log-level" and signed.group == "commune-41"
    assert signed.args == {"level": "debug", "minutes": 15, "tags": ["a", 1], "note": "not json: {"}
    assert 3590 <= signed.expires - time.time() <= 3600
    assert f"id {signed.id}" in stdout

    for bad, why in (
        (["--arg", "level"], "expected KEY=VALUE"),
        (["--arg", "a=1", "--arg", "a=2"], "--arg a: given twice"),
    ):
        code, _, err = run_now(
            capsys,
            "command",
            "flush-store",
            *bad,
            "--key",
            operator_key,
            "--target",
            GATEWAY,
            "--out",
            out,
        )
        assert code == 2 and why in err
    code, _, err = run_now(capsys, "command", "flush-store", "--key", operator_key, "--out", out)
    assert code == 2 and "one of the arguments --target --group is required" in err


# ---------------------------------------------------------------------------------- push


async def test_push_publishes_on_the_right_topic_with_a_response_topic(
    operator_key: Path,
    tls: list[str],
    subscriber: Callable[..., Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    bundle = signed_config(capsys, operator_key, "--version", "4", "--target", GATEWAY)
    path = operator_key.parent / "bundle.cose"
    cmd = operator_key.parent / "cmd.cose"
    assert (
        run_now(
            capsys,
            "command",
            "reboot-agent",
            "--key",
            operator_key,
            "--group",
            "commune-41",
            "--out",
            cmd,
        )[0]
        == 0
    )
    async with subscriber("passerelle/#") as sub:
        code, out, err = await run_ctl(capsys, "push", path, *tls, "--gateway", GATEWAY)
        assert (code, err) == (0, "")
        assert f"published config version 4 on passerelle/{GATEWAY}/config/set" in out
        code, out, err = await run_ctl(capsys, "push", cmd, *tls, "--group", "commune-41")
        assert (code, err) == (0, "")
        config_msg, cmd_msg = await sub.wait_for(2)
    assert str(config_msg.topic) == f"passerelle/{GATEWAY}/config/set"
    assert config_msg.payload == bundle and config_msg.qos == 1
    response = config_msg.properties.ResponseTopic
    assert response.startswith("passerelle/ctl/") and response.endswith("/ack")
    assert len(config_msg.properties.CorrelationData) == 16
    assert str(cmd_msg.topic) == "passerelle/group/commune-41/cmd/reboot-agent"
    assert cmd_msg.payload == cmd.read_bytes()
    assert cmd_msg.properties.ResponseTopic != response  # one per push

    # A bundle the gateway would reject anyway never leaves the laptop.
    code, _, err = await run_ctl(capsys, "push", path, *tls, "--gateway", "cab-0043")
    assert code == 2
    assert err.strip() == (
        "passerelle ctl push: this config is signed for gateway cab-0042, not for gateway cab-0043"
    )
    code, _, err = await run_ctl(capsys, "push", f"{operator_key}.pub", *tls, "--gateway", GATEWAY)
    assert code == 2 and "not a signed Passerelle bundle: not a COSE_Sign1 message" in err


@dataclass
class Reply:
    """One ack the responder sends: to the request's response topic or to a fixed topic."""

    topic: str  # "response" or a topic
    ack: dict[str, Any]
    correlation: str | bytes | None = "same"  # "same": the request's; bytes: another's


@contextlib.asynccontextmanager
async def responder(
    make_client: Callable[..., aiomqtt.Client],
    topic_filter: str,
    script: Callable[[aiomqtt.Message], list[Reply]],
) -> AsyncIterator[list[aiomqtt.Message]]:
    """Answers each bundle on ``topic_filter`` with the acks ``script`` returns."""
    received: list[aiomqtt.Message] = []
    client = make_client()
    async with client:
        await client.subscribe(topic_filter, qos=1)

        async def serve() -> None:
            async for message in client.messages:
                received.append(message)
                props_in = message.properties
                for reply in script(message):
                    props = Properties(PacketTypes.PUBLISH)
                    if reply.correlation == "same":
                        props.CorrelationData = props_in.CorrelationData
                    elif isinstance(reply.correlation, bytes):
                        props.CorrelationData = reply.correlation
                    topic = props_in.ResponseTopic if reply.topic == "response" else reply.topic
                    await client.publish(topic, json.dumps(reply.ack), qos=1, properties=props)

        task = asyncio.create_task(serve())
        try:
            yield received
        finally:
            # Python 3.11's wait_for (inside aiomqtt's publish) can swallow a cancel that
            # lands as the PUBACK arrives: cancel until the task really ended.
            while not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                task.result()


def config_ack(
    status: str,
    version: int | None = 5,
    reason: str | None = None,
    text: str = "",
    gateway: str = GATEWAY,
) -> dict[str, Any]:
    return {
        "gateway": gateway,
        "version": version,
        "status": status,
        "reason": reason,
        "text": text,
        "hash": None,
        "time": time.time(),
    }


async def test_push_wait_follows_acks_until_applied(
    operator_key: Path,
    tls: list[str],
    mqtt_client: Callable[..., aiomqtt.Client],
    capsys: pytest.CaptureFixture[str],
) -> None:
    signed_config(capsys, operator_key, "--version", "5", "--target", GATEWAY)
    own_ack = f"passerelle/{GATEWAY}/config/ack"

    def gateway(_: aiomqtt.Message) -> list[Reply]:
        accepted = config_ack("accepted", text="version 5 verified, applying")
        return [
            # Another operator's push, and another version's ack: not ours.
            Reply("response", config_ack("rejected", reason="bad_signature"), b"x" * 16),
            Reply(own_ack, config_ack("rejected", version=4, reason="stale_version"), None),
            # The same ack on both topics is shown once.
            Reply("response", accepted),
            Reply(own_ack, accepted, None),
            # After a planned restart the answer only comes on config/ack, by version.
            Reply(own_ack, config_ack("applied", text="version 5 committed after 5 s"), None),
        ]

    async with responder(mqtt_client, f"passerelle/{GATEWAY}/config/set", gateway) as got:
        code, out, err = await run_ctl(
            capsys,
            "push",
            operator_key.parent / "bundle.cose",
            *tls,
            "--gateway",
            GATEWAY,
            "--wait",
            "--timeout",
            "10",
        )
    assert (code, err) == (0, ""), out
    assert len(got) == 1
    lines = out.splitlines()
    assert sum("accepted" in line for line in lines) == 1
    assert not any("rejected" in line or "bad_signature" in line for line in lines)
    assert any(f"{GATEWAY}  accepted  version 5 verified, applying" in line for line in lines)
    row = next(line for line in lines if "committed after" in line and "│" in line)
    assert [c.strip() for c in row.split("│")[1:-1]] == [
        GATEWAY,
        "5",
        "applied",
        "-",
        "version 5 committed after 5 s",
    ]


@pytest.mark.parametrize(
    ("acks", "code", "row"),
    [
        (
            [
                config_ack("accepted"),
                config_ack(
                    "rolled_back", reason="unhealthy", text="uplink down; back on version 4"
                ),
            ],
            1,
            ["rolled_back", "unhealthy", "uplink down; back on version 4"],
        ),
        (
            [config_ack("rejected", version=None, reason="unknown_key", text="key 00 unknown")],
            1,
            ["rejected", "unknown_key", "key 00 unknown"],
        ),
        ([config_ack("accepted", text="applying")], 3, ["accepted, no final ack", "-", "applying"]),
    ],
    ids=["rolled_back", "rejected", "timeout"],
)
async def test_push_wait_exit_status(
    operator_key: Path,
    tls: list[str],
    mqtt_client: Callable[..., aiomqtt.Client],
    capsys: pytest.CaptureFixture[str],
    acks: list[dict[str, Any]],
    code: int,
    row: list[str],
) -> None:
    signed_config(capsys, operator_key, "--version", "5", "--target", GATEWAY)

    def gateway(_: aiomqtt.Message) -> list[Reply]:
        return [Reply("response", ack) for ack in acks]

    async with responder(mqtt_client, f"passerelle/{GATEWAY}/config/set", gateway):
        got, out, err = await run_ctl(
            capsys,
            "push",
            operator_key.parent / "bundle.cose",
            *tls,
            "--gateway",
            GATEWAY,
            "--wait",
            "--timeout",
            "1",
        )
    assert (got, err) == (code, ""), out
    table_row = next(line for line in out.splitlines() if line.startswith(f"│ {GATEWAY}"))
    assert [c.strip() for c in table_row.split("│")[1:-1]] == [GATEWAY, "5", *row]
    if code == 3:
        assert f"no final ack from {GATEWAY} within 1 s" in out


async def test_push_wait_command_matched_by_id_on_cmd_ack(
    operator_key: Path,
    tls: list[str],
    mqtt_client: Callable[..., aiomqtt.Client],
    capsys: pytest.CaptureFixture[str],
) -> None:
    cmd = operator_key.parent / "cmd.cose"
    code, out, _ = run_now(
        capsys, "command", "flush-store", "--key", operator_key, "--target", GATEWAY,
        "--out", cmd,
    )  # fmt: skip
    assert code == 0
    command_id = ctl.peek_bundle(cmd.read_bytes()).command_id
    assert command_id is not None and f"id {command_id}" in out
    own_ack = f"passerelle/{GATEWAY}/cmd/ack"

    def gateway(_: aiomqtt.Message) -> list[Reply]:
        def ack(status: str, cid: str, text: str) -> dict[str, Any]:
            return {"gateway": GATEWAY, "command": "flush-store", "id": cid, "status": status,
                    "reason": None, "text": text, "time": time.time()}  # fmt: skip

        return [
            Reply(own_ack, ack("failed", "0123456789abcdef", "an older flush"), None),
            Reply(own_ack, ack("done", command_id, "draining 1200 records now"), None),
        ]

    async with responder(mqtt_client, f"passerelle/{GATEWAY}/cmd/flush-store", gateway):
        code, out, err = await run_ctl(
            capsys, "push", cmd, *tls, "--gateway", GATEWAY, "--wait", "--timeout", "10"
        )
    assert (code, err) == (0, ""), out
    assert "an older flush" not in out
    row = next(line for line in out.splitlines() if line.startswith(f"│ {GATEWAY}"))
    assert [c.strip() for c in row.split("│")[1:-1]] == [
        GATEWAY, command_id, "done", "-", "draining 1200 records now"]  # fmt: skip


async def test_push_wait_group_counts_gateways(
    operator_key: Path,
    tls: list[str],
    mqtt_client: Callable[..., aiomqtt.Client],
    capsys: pytest.CaptureFixture[str],
) -> None:
    signed_config(capsys, operator_key, "--version", "5", "--group", "commune-41")
    bundle = operator_key.parent / "bundle.cose"
    outcome = {"cab-0001": "applied", "cab-0002": "applied"}

    def fleet(_: aiomqtt.Message) -> list[Reply]:
        return [
            Reply(f"passerelle/{gw}/config/ack", config_ack(status, gateway=gw), None)
            for gw, status in outcome.items()
        ]

    async with responder(mqtt_client, "passerelle/group/commune-41/config/set", fleet):
        started = time.monotonic()
        code, out, err = await run_ctl(
            capsys,
            "push",
            bundle,
            *tls,
            "--group",
            "commune-41",
            "--wait",
            "--expect",
            "2",
            "--timeout",
            "10",
        )
        assert (code, err) == (0, ""), out
        assert time.monotonic() - started < 5  # done at the second final ack, not the timeout
        assert {"cab-0001", "cab-0002"} <= {
            line.split("│")[1].strip() for line in out.splitlines() if "│ applied" in line
        }

        outcome["cab-0002"] = "rolled_back"
        code, out, _ = await run_ctl(
            capsys,
            "push",
            bundle,
            *tls,
            "--group",
            "commune-41",
            "--wait",
            "--expect",
            "2",
            "--timeout",
            "10",
        )
        assert code == 1 and "rolled_back" in out

        code, out, _ = await run_ctl(
            capsys,
            "push",
            bundle,
            *tls,
            "--group",
            "commune-41",
            "--wait",
            "--expect",
            "3",
            "--timeout",
            "1",
        )
        assert code == 1  # a rollback outweighs the gateway that never answered
        outcome["cab-0002"] = "applied"
        code, out, _ = await run_ctl(
            capsys,
            "push",
            bundle,
            *tls,
            "--group",
            "commune-41",
            "--wait",
            "--expect",
            "3",
            "--timeout",
            "1",
        )
        assert code == 3 and "2 of 3 expected gateways answered within 1 s" in out


# -------------------------------------------------------------------------------- status


async def publish_retained(client: aiomqtt.Client, states: dict[str, bytes]) -> None:
    for gw, payload in states.items():
        await client.publish(f"passerelle/{gw}/state", payload, qos=1, retain=True)


async def test_status_table_json_and_unknown_gateway(
    tls: list[str],
    mqtt_client: Callable[..., aiomqtt.Client],
    capsys: pytest.CaptureFixture[str],
) -> None:
    live = {
        "online": True,
        "gateway": "cab-0001",
        "uptime": 7260.0,
        "last_error": None,
        "store": {"depth": 12, "bytes": 4096},
        "config": {"version": 4, "hash": "ab12cd34ef56" + "0" * 52, "pending": None},
    }
    async with mqtt_client() as client:
        await publish_retained(
            client,
            {
                "cab-0001": json.dumps(live).encode(),
                "cab-0002": json.dumps({"online": False, "reason": "connection lost"}).encode(),
                "cab-0003": b"not json",
            },
        )

    code, out, err = await run_ctl(capsys, "status", "--all", *tls)
    assert code == 0, err
    assert (
        err
        == "passerelle/cab-0003/state: unreadable state: Expecting value: line 1 column 1 (char 0)\n"
    )
    rows = {
        line.split("│")[1].strip(): [c.strip() for c in line.split("│")[1:-1]]
        for line in out.splitlines()
        if line.startswith("│ cab-")
    }
    assert rows["cab-0001"] == ["cab-0001", "yes", "4", "ab12cd34ef56", "12", "-", "2.0 h"]
    assert rows["cab-0002"] == ["cab-0002", "no", "-", "-", "-", "connection lost", "-"]

    code, out, _ = await run_ctl(capsys, "status", "--all", *tls, "--json")
    assert code == 0
    doc = json.loads(out)
    assert [r["gateway"] for r in doc] == ["cab-0001", "cab-0002"]
    assert doc[0]["config_version"] == 4 and doc[0]["store_depth"] == 12
    assert doc[0]["state"] == live and doc[1]["online"] is False

    started = time.monotonic()
    code, out, _ = await run_ctl(capsys, "status", "--gateway", "cab-0001", *tls, "--json")
    assert code == 0 and [r["gateway"] for r in json.loads(out)] == ["cab-0001"]
    assert time.monotonic() - started < ctl.STATUS_WINDOW  # stopped once it arrived

    code, out, err = await run_ctl(capsys, "status", "--gateway", "cab-0099", *tls)
    assert code == 1 and out == ""
    assert "no state retained for gateway cab-0099" in err


# --------------------------------------------------------------------------------- watch


def pack_of(records: list[Record], compress: bool) -> bytes:
    pack = senml.encode_pack(records, partial(senml.device_base_name, GATEWAY), "k/1-2")
    return senml.compress(pack) if compress else pack


async def test_watch_prints_json_lines_and_survives_bad_packs(
    broker: Mosquitto, pki: Pki, tls: list[str], mqtt_client: Callable[..., aiomqtt.Client]
) -> None:
    t0 = 1_700_000_000.0
    meter = [Record("meter-1", "power", 100 + i, t0 + i * 0.5, "W") for i in range(20)]
    door = [Record("door", "open", True, t0, None), Record("door", "raw", b"\x00\xff", t0 + 1)]
    compressed = pack_of(meter, compress=True)
    assert senml.is_compressed(compressed)

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "passerelle.ctl", "watch", *tls, "--count", "22",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    try:
        assert proc.stderr is not None and proc.stdout is not None
        first = await asyncio.wait_for(proc.stderr.readline(), 10)
        assert first.decode().startswith("watching passerelle/+/up/senml on mqtts://")
        async with mqtt_client() as client:
            await client.publish("passerelle/cab-0007/up/senml", b"\x78\x9c\x01\x02", qos=1)
            await client.publish("passerelle/cab-0007/up/senml", b"\xa1\x00\x01", qos=1)
            await client.publish(f"passerelle/{GATEWAY}/up/senml", compressed, qos=1)
            await client.publish("passerelle/cab-0007/up/senml", pack_of(door, False), qos=1)
        out, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert len(lines) == 22
    base = f"urn:dev:ops:passerelle-{GATEWAY}-meter-1:"
    assert lines[:20] == [
        {"gateway": GATEWAY, "name": base + "power", "value": r.value, "unit": "W", "time": r.time}
        for r in meter
    ]
    door_base = "urn:dev:ops:passerelle-cab-0042-door:"  # the base name the encoder was given
    assert {(d["gateway"], d["name"], json.dumps(d["value"])) for d in lines[20:]} == {
        ("cab-0007", door_base + "open", "true"),
        (
            "cab-0007",
            door_base + "raw",
            json.dumps(base64.urlsafe_b64encode(b"\x00\xff").rstrip(b"=").decode()),
        ),
    }
    problems = err.decode().splitlines()
    assert problems[0] == "passerelle/cab-0007/up/senml: bad pack (4 bytes): truncated zlib stream"
    assert problems[1] == (
        "passerelle/cab-0007/up/senml: bad pack (3 bytes): a SenML pack is a CBOR array"
    )
    assert problems[-1] == "watch: 22 records from 2 packs, 2 bad packs"
    assert "Traceback" not in err.decode()


# ------------------------------------------------------------------------- broker errors


async def test_broker_problems_are_one_line_and_exit_4(
    broker: Mosquitto,
    pki: Pki,
    tls: list[str],
    mqtt_client: Callable[..., aiomqtt.Client],
    capsys: pytest.CaptureFixture[str],
) -> None:
    ca = ["--ca", str(pki.ca_cert)]
    cases = [
        # Nothing listens there.
        (["--broker", "mqtts://localhost:1", *ca], "Connection refused"),
        # A certificate the broker's CA did not sign.
        (
            [
                "--broker",
                broker.url,
                *ca,
                "--cert",
                str(pki.rogue_cert),
                "--key",
                str(pki.rogue_key),
            ],
            "the broker refused the client certificate",
        ),
        # A broker this CA does not vouch for.
        (
            [
                "--broker",
                broker.url,
                "--ca",
                str(pki.rogue_ca_cert),
                "--cert",
                str(pki.client_cert),
                "--key",
                str(pki.client_key),
            ],
            "certificate is not trusted",
        ),
    ]
    for args, why in cases:
        started = time.monotonic()
        code, out, err = await run_ctl(capsys, "status", "--all", *args)
        assert time.monotonic() - started < 3  # not the 10 s connect timeout
        assert code == 4, (args, err)
        assert out == "" and len(err.splitlines()) == 1 and why in err, err
        assert err.startswith("passerelle ctl status: broker ")

    code, _, err = await run_ctl(capsys, "status", "--all", *tls[:2], "--ca", "/nonexistent.pem")
    assert code == 2 and err.strip() == "passerelle ctl status: --ca /nonexistent.pem: no such file"

    # Plaintext works for labs, with a warning.
    async with mqtt_client() as client:
        await publish_retained(client, {"cab-0001": b'{"online": true}'})
    code, out, err = await run_ctl(
        capsys, "status", "--gateway", "cab-0001", "--broker", broker.plain_url
    )
    assert code == 0 and "cab-0001" in out
    assert err.startswith(f"passerelle ctl: warning: {broker.plain_url}: plaintext MQTT")
