"""The signed envelope: round trips, the COSE layout, every rejection reason, and fuzzing.

Real Ed25519 keys and signatures throughout. Hostile bundles are built field by field in
:func:`hand_sign`, the way an integrator's own signer (or an attacker) would build them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from datetime import time as time_of_day
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed448 import Ed448PublicKey
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from passerelle.control.envelope import (
    COMMAND_TYPE,
    CONFIG_TYPE,
    MAX_BUNDLE_BYTES,
    REASONS,
    Rejected,
    Signed,
    open_envelope,
    parse_duration,
    read_toml_config,
    sign_command,
    sign_config,
    to_be_signed,
)
from passerelle.control.keys import Trust, key_id

GATEWAY = "cab-0042"
GROUPS = ("commune-41", "syndicat-sud")
NOW = 1_780_000_000  # 2026-05-28
OPS = Ed25519PrivateKey.generate()
OPS_NEXT = Ed25519PrivateKey.generate()  # the key rotated in
STRANGER = Ed25519PrivateKey.generate()  # trusted by no gateway
TRUST = Trust.of(OPS.public_key())

CONFIG: dict[str, Any] = {
    "gateway": {"id": GATEWAY, "data_dir": "/var/lib/passerelle"},
    "uplink": {"broker": "mqtts://broker.example:8883", "keepalive": 30.5, "tls": True},
    "lighting": {
        "timezone": "Europe/Paris",
        "programs": {
            "coeur-de-nuit": {
                "fixed_time_controls": [
                    {"time": "23:00", "level": 50},
                    {"time": "05:30", "level": 0},
                ]
            }
        },
    },
    "maintenance": {
        "since": date(2026, 3, 1),
        "window": datetime(2026, 6, 1, 22, 0, tzinfo=timezone(timedelta(hours=2))),
        "checked": datetime(2026, 5, 1, 8, 0, tzinfo=UTC),
    },
}


def open_bundle(
    data: bytes,
    trust: Trust = TRUST,
    *,
    kind: str = "config",
    gateway_id: str = GATEWAY,
    groups: Sequence[str] = GROUPS,
    now: float = NOW,
) -> Signed:
    return open_envelope(data, trust, kind=kind, gateway_id=gateway_id, groups=groups, now=now)


def rejection(data: bytes, **kw: Any) -> Rejected:
    with pytest.raises(Rejected) as info:
        open_bundle(data, **kw)
    assert info.value.reason in REASONS
    assert info.value.text and str(info.value) == f"{info.value.reason}: {info.value.text}"
    return info.value


def config_payload(**changes: Any) -> dict[str, Any]:
    payload = {
        "type": "config",
        "version": 7,
        "issued": NOW - 60,
        "expires": None,
        "target": None,
        "group": None,
        "config": {"gateway": {"id": GATEWAY}},
    }
    return _changed(payload, changes)


def command_payload(**changes: Any) -> dict[str, Any]:
    payload = {
        "type": "command",
        "name": "flush-store",
        "args": {},
        "id": "0123456789abcdef",
        "issued": NOW - 60,
        "expires": NOW + 600,
        "target": None,
        "group": None,
    }
    return _changed(payload, changes)


_DROP = object()


def _changed(payload: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = {**payload, **changes}
    return {k: v for k, v in out.items() if v is not _DROP}


def hand_sign(
    payload: Any,
    key: Ed25519PrivateKey = OPS,
    *,
    content_type: Any = CONFIG_TYPE,
    header: Any = None,
    unprotected: Any = None,
    kid: bytes | None = None,
    tag: int = 18,
) -> bytes:
    """A COSE_Sign1 built by hand: any header, any payload, a real signature by ``key``."""
    if header is None:
        header = {1: -8, 3: content_type, 4: kid if kid is not None else key_id(key.public_key())}
    protected = header if isinstance(header, bytes) else cbor2.dumps(header)
    body = payload if isinstance(payload, bytes) else cbor2.dumps(payload)
    signature = key.sign(to_be_signed(protected, body))
    return cbor2.dumps(cbor2.CBORTag(tag, [protected, unprotected or {}, body, signature]))


# --------------------------------------------------------------------------------------------
# Round trips and layout


def test_config_round_trip_keeps_every_toml_value() -> None:
    bundle = sign_config(CONFIG, OPS, version=12, issued=NOW - 10, expires=NOW + 3600)
    signed = open_bundle(bundle)
    assert signed.kind == "config"
    assert (signed.version, signed.issued, signed.expires) == (12, NOW - 10, NOW + 3600)
    assert (signed.target, signed.group, signed.name, signed.id, signed.args) == (
        None, None, None, None, {},
    )  # fmt: skip
    assert signed.kid == key_id(OPS.public_key())
    assert signed.config == CONFIG
    window = signed.config["maintenance"]["window"]
    assert window.utcoffset() == timedelta(hours=2)  # the offset as written, not just the instant
    assert type(signed.config["maintenance"]["since"]) is date
    assert signed.digest == hashlib.sha256(bundle).hexdigest()


def test_bundle_layout_is_cose_sign1_as_rfc_9052_says() -> None:
    bundle = sign_config(CONFIG, OPS, version=3, group="commune-41", issued=NOW)
    outer = cbor2.loads(bundle)
    assert bundle[:2] == b"\xd2\x84"  # tag 18, array of 4
    protected, unprotected, body, signature = outer.value
    assert cbor2.loads(protected) == {1: -8, 3: CONFIG_TYPE, 4: key_id(OPS.public_key())}
    assert dict(unprotected) == {}
    assert cbor2.loads(body) == {
        "type": "config",
        "version": 3,
        "issued": NOW,
        "expires": None,
        "target": None,
        "group": "commune-41",
        "config": CONFIG,
    }

    # Sig_structure written out by hand: array(4), "Signature1", protected, h'', payload.
    def bstr(b: bytes) -> bytes:
        return cbor2.dumps(b)

    sig_structure = b"\x84" + b"\x6aSignature1" + bstr(protected) + b"\x40" + bstr(body)
    OPS.public_key().verify(signature, sig_structure)


def test_sig_structure_matches_the_cose_working_group_example() -> None:
    # cose-wg/Examples eddsa-examples/eddsa-sig-02.json: a COSE_Sign1 signed with Ed448.
    protected = bytes.fromhex("A10127")
    payload = b"This is the content."
    to_be_signed_hex = (
        "846A5369676E61747572653143A101274054546869732069732074686520636F6E74656E742E"
    )
    assert to_be_signed(protected, payload) == bytes.fromhex(to_be_signed_hex)
    message = cbor2.loads(
        bytes.fromhex(
            "D28443A10127A10445336434343854546869732069732074686520636F6E74656E742E5872988240A3A2"
            "F189BD486DE14AA77F54686C576A09F2E7ED9BAE910DF9139C2AC3BE7C27B7E10A20FA17C9D57D3510A2"
            "CF1F634BC0345AB9BE00849842171D1E9E98B2674C0E38BFCF6C557A1692B01B71015A47AC9F7748840C"
            "AD1DA80CBB5B349309FEBB912672B377C8B2072AF1598B3700"
        )
    )
    assert message.tag == 18
    signer = Ed448PublicKey.from_public_bytes(
        bytes.fromhex(
            "5fd7449b59b461fd2ce787ec616ad46a1da1342485a70e1f8a0ea75d80e96778edf124769b46c7061bd"
            "6783df1e50f6cd1fa1abeafe8256180"
        )
    )
    got_protected, _, got_payload, signature = message.value
    signer.verify(signature, to_be_signed(got_protected, got_payload))


# The README's vector for integrators: RFC 8032 TEST 1's (published) secret key.
RFC8032_SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
README_VECTOR = (
    "d2845837a301270378276170706c69636174696f6e2f766e642e706173736572656c6c652e636f6d6d616e642b"
    "63626f72044821fe31dfa154a261a05869a862696470303132333435363738396162636465666461726773a064"
    "6e616d656b666c7573682d73746f7265647479706567636f6d6d616e646567726f7570f6666973737565641a6a"
    "18a50066746172676574686361622d3030343267657870697265731a6a18a7585840b75d3aa9e964cf3891186b"
    "6a11f9f27cf3259e9bbb232f3595de35de48319767ff963ada958aeb6bac05d52cc32bd8b21f64611ffed37bb1"
    "feb853dfe25e3f08"
)


def test_the_documented_vector_is_what_sign_command_writes() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SECRET))
    assert key_id(key.public_key()).hex() == "21fe31dfa154a261"
    bundle = sign_command(
        "flush-store", {}, key, expires=NOW + 600, issued=NOW, id="0123456789abcdef", target=GATEWAY
    )
    assert bundle.hex() == README_VECTOR
    signed = open_bundle(bundle, Trust.of(key.public_key()), kind="command")
    assert (signed.name, signed.id, signed.target) == ("flush-store", "0123456789abcdef", GATEWAY)


def test_the_same_inputs_give_the_same_bytes() -> None:
    a = sign_config(CONFIG, OPS, version=4, target=GATEWAY, issued=NOW)
    assert (
        sign_config(dict(reversed(CONFIG.items())), OPS, version=4, target=GATEWAY, issued=NOW) == a
    )
    assert sign_config(CONFIG, OPS, version=4, target=GATEWAY, issued=NOW + 1) != a
    c = sign_command("flush-store", {}, OPS, expires=NOW + 60, issued=NOW, id="00ff00ff00ff00ff")
    assert (
        sign_command("flush-store", {}, OPS, expires=NOW + 60, issued=NOW, id="00ff00ff00ff00ff")
        == c
    )


def test_command_round_trip_with_a_fresh_id_each_time() -> None:
    args = {"zone": "grande-rue", "level": 80, "duration": 900, "note": None}
    bundles = [
        sign_command("lighting-override", args, OPS, expires=NOW + 300, target=GATEWAY, issued=NOW)
        for _ in range(2)
    ]
    first, second = (open_bundle(b, kind="command") for b in bundles)
    assert first.kind == "command" and first.name == "lighting-override"
    assert first.args == args
    assert (first.issued, first.expires, first.target) == (NOW, NOW + 300, GATEWAY)
    assert (first.version, first.config) == (None, None)
    assert first.id is not None and re.fullmatch(r"[0-9a-f]{16}", first.id)
    assert first.id != second.id  # the replay guard keys on it


def test_rotated_keys_are_both_accepted() -> None:
    trust = Trust.of(OPS.public_key(), OPS_NEXT.public_key())
    for key in (OPS, OPS_NEXT):
        signed = open_bundle(sign_config(CONFIG, key, version=2, issued=NOW), trust)
        assert signed.kid == key_id(key.public_key())
    # once the old key is dropped, its bundles are refused
    old = sign_config(CONFIG, OPS, version=2, issued=NOW)
    assert rejection(old, trust=Trust.of(OPS_NEXT.public_key())).reason == "unknown_key"


def test_a_big_bundle_round_trips_and_trailing_bytes_are_refused() -> None:
    # Several decoder read buffers' worth: cbor2 6.1.0 corrupted items over 4096 bytes.
    config = {"lorawan": {"devices": {f"lum-{i:04d}": {"eui": f"{i:016x}"} for i in range(400)}}}
    bundle = sign_config(config, OPS, version=9, issued=NOW)
    assert len(bundle) > 3 * 4096
    assert open_bundle(bundle).config == config
    # MQTT clients hand payloads over as bytes or bytearray
    assert open_bundle(bytearray(bundle)).config == config  # type: ignore[arg-type]
    assert open_bundle(memoryview(bundle)).config == config  # type: ignore[arg-type]
    r = rejection(bundle + b"\x00")
    assert (r.reason, r.text) == ("malformed", "the bundle has 1 bytes after its end")


# --------------------------------------------------------------------------------------------
# Each rejection, with its reason


def test_forged_signature_claiming_a_trusted_kid_is_bad_signature() -> None:
    forged = hand_sign(config_payload(), STRANGER, kid=key_id(OPS.public_key()))
    r = rejection(forged)
    assert r.reason == "bad_signature"
    assert key_id(OPS.public_key()).hex() in r.text


def test_unknown_kid_is_unknown_key() -> None:
    r = rejection(sign_config(CONFIG, STRANGER, version=2, issued=NOW))
    assert r.reason == "unknown_key"
    assert key_id(STRANGER.public_key()).hex() in r.text
    assert key_id(OPS.public_key()).hex() in r.text  # says which keys are trusted


def test_every_truncation_is_malformed() -> None:
    bundle = sign_config(CONFIG, OPS, version=2, issued=NOW)
    for n in range(len(bundle)):
        assert rejection(bundle[:n]).reason == "malformed", n


def test_a_flipped_byte_in_the_payload_or_signature_is_bad_signature() -> None:
    bundle = sign_config(CONFIG, OPS, version=2, issued=NOW)
    protected, _, body, signature = cbor2.loads(bundle).value
    body_at, sig_at = bundle.index(body), bundle.index(signature)
    for at in (body_at, body_at + len(body) // 2, body_at + len(body) - 1, sig_at, sig_at + 63):
        tampered = bytearray(bundle)
        tampered[at] ^= 0x01
        assert rejection(bytes(tampered)).reason == "bad_signature", at
    kid_at = bundle.index(key_id(OPS.public_key()))
    tampered = bytearray(bundle)
    tampered[kid_at] ^= 0x80
    assert rejection(bytes(tampered)).reason == "unknown_key"


def test_expiry_is_checked_against_now() -> None:
    bundle = sign_config(CONFIG, OPS, version=2, issued=NOW - 100, expires=NOW)
    assert open_bundle(bundle, now=NOW - 0.5).expires == NOW
    for now in (NOW, NOW + 86400):
        r = rejection(bundle, now=now)
        assert r.reason == "expired"
        assert "2026-05-28T" in r.text and str(NOW) in r.text
    command = sign_command("reboot-agent", {}, OPS, issued=NOW - 100, expires=NOW - 1)
    assert rejection(command, kind="command").reason == "expired"
    # signed already expired (how a test provokes the refusal): expired, not malformed
    late = sign_config(CONFIG, OPS, version=2, issued=NOW, expires=NOW - 5)
    assert rejection(late).reason == "expired"


def test_target_and_group_must_be_ours() -> None:
    ours = sign_config(CONFIG, OPS, version=2, target=GATEWAY, issued=NOW)
    assert open_bundle(ours).target == GATEWAY
    other = sign_config(CONFIG, OPS, version=2, target="cab-0043", issued=NOW)
    r = rejection(other)
    assert r.reason == "wrong_target" and "'cab-0043'" in r.text
    group = sign_config(CONFIG, OPS, version=2, group="syndicat-sud", issued=NOW)
    assert open_bundle(group).group == "syndicat-sud"
    assert rejection(group, groups=["commune-41"]).reason == "wrong_target"
    assert rejection(group, groups=[]).reason == "wrong_target"
    # a group name that only contains one of ours is not ours
    near = sign_config(CONFIG, OPS, version=2, group="commune-4", issued=NOW)
    assert rejection(near).reason == "wrong_target"
    with pytest.raises(TypeError):
        open_bundle(group, groups="syndicat-sud")  # type: ignore[arg-type]


def test_a_command_is_not_a_config_nor_the_reverse() -> None:
    command = sign_command("flush-store", {}, OPS, expires=NOW + 60, issued=NOW)
    r = rejection(command, kind="config")
    assert r.reason == "wrong_type" and "command" in r.text
    config = sign_config(CONFIG, OPS, version=2, issued=NOW)
    assert rejection(config, kind="command").reason == "wrong_type"


MALFORMED_PAYLOADS: list[tuple[str, Any, str, str]] = [
    # (case, payload, content type, words the text must hold)
    ("not a map", [1, 2], CONFIG_TYPE, "not a map"),
    ("no type", config_payload(type=_DROP), CONFIG_TYPE, "'type'"),
    ("unknown type", config_payload(type="firmware"), CONFIG_TYPE, "'type'"),
    ("type is a list", config_payload(type=["config"]), CONFIG_TYPE, "'type'"),
    ("type against ctype", config_payload(), COMMAND_TYPE, "contradicts"),
    ("version 0", config_payload(version=0), CONFIG_TYPE, "'version'"),
    ("version text", config_payload(version="3"), CONFIG_TYPE, "'version'"),
    ("version bool", config_payload(version=True), CONFIG_TYPE, "'version'"),
    ("version float", config_payload(version=3.0), CONFIG_TYPE, "'version'"),
    ("no version", config_payload(version=_DROP), CONFIG_TYPE, "'version'"),
    ("config a list", config_payload(config=[1]), CONFIG_TYPE, "config: is a list, not a table"),
    ("no config", config_payload(config=_DROP), CONFIG_TYPE, "config: is nothing"),
    ("config null value", config_payload(config={"a": {"b": None}}), CONFIG_TYPE, "config.a.b"),
    ("config bytes", config_payload(config={"a": [b"x"]}), CONFIG_TYPE, "config.a[0]"),
    (
        "config unknown tag",
        config_payload(config={"a": cbor2.CBORTag(999, 1)}),
        CONFIG_TYPE,
        "config.a",
    ),
    ("target and group", config_payload(target=GATEWAY, group="commune-41"), CONFIG_TYPE, "both"),
    ("target empty", config_payload(target=""), CONFIG_TYPE, "'target'"),
    ("group a number", config_payload(group=41), CONFIG_TYPE, "'group'"),
    ("issued missing", config_payload(issued=_DROP), CONFIG_TYPE, "'issued'"),
    ("issued text", config_payload(issued="2026-05-28"), CONFIG_TYPE, "'issued'"),
    ("issued negative", config_payload(issued=-1), CONFIG_TYPE, "'issued'"),
    ("expires float", config_payload(expires=NOW + 0.5), CONFIG_TYPE, "'expires'"),
    ("expires huge", config_payload(expires=2**70), CONFIG_TYPE, "'expires'"),
    ("unknown field", config_payload(not_before=NOW), CONFIG_TYPE, "'not_before'"),
    ("command field on config", config_payload(name="x"), CONFIG_TYPE, "'name'"),
    ("command without expires", command_payload(expires=_DROP), COMMAND_TYPE, "'expires'"),
    ("command expires null", command_payload(expires=None), COMMAND_TYPE, "'expires'"),
    ("command without id", command_payload(id=_DROP), COMMAND_TYPE, "'id'"),
    ("command id a number", command_payload(id=7), COMMAND_TYPE, "'id'"),
    ("command name with slash", command_payload(name="a/b"), COMMAND_TYPE, "'name'"),
    ("command named ack", command_payload(name="ack"), COMMAND_TYPE, "'name'"),
    ("args a list", command_payload(args=[1]), COMMAND_TYPE, "args: is a list"),
    ("args bytes value", command_payload(args={"k": b"\x00"}), COMMAND_TYPE, "args.k"),
    ("int map key", {**config_payload(), 5: 1}, CONFIG_TYPE, "not valid CBOR"),
    ("duplicate key", b"\xa2\x64type\x66config\x64type\x66config", CONFIG_TYPE, "not valid CBOR"),
    ("trailing bytes", cbor2.dumps(config_payload()) + b"\xf6", CONFIG_TYPE, "after its end"),
    ("not CBOR", b"\xff\xff", CONFIG_TYPE, "not valid CBOR"),
]


@pytest.mark.parametrize(
    ("payload", "content_type", "words"),
    [case[1:] for case in MALFORMED_PAYLOADS],
    ids=[case[0] for case in MALFORMED_PAYLOADS],
)
def test_malformed_payload_fields(payload: Any, content_type: str, words: str) -> None:
    kind = "command" if content_type == COMMAND_TYPE else "config"
    r = rejection(hand_sign(payload, content_type=content_type), kind=kind)
    assert r.reason == "malformed"
    assert words in r.text, r.text


def test_hand_signed_payloads_that_follow_the_format_are_accepted() -> None:
    # What an integrator's signer may leave out: absent optional fields read as null.
    minimal = {"type": "config", "version": 1, "issued": NOW, "config": {}}
    signed = open_bundle(hand_sign(minimal))
    assert (signed.version, signed.expires, signed.target, signed.config) == (1, None, None, {})
    command = command_payload(args=_DROP, target=_DROP, group=_DROP)
    assert open_bundle(hand_sign(command, content_type=COMMAND_TYPE), kind="command").args == {}


def structural_cases() -> list[tuple[str, bytes, str]]:
    good = config_payload()
    kid = key_id(OPS.public_key())
    body = cbor2.dumps(good)
    return [
        ("empty", b"", "not valid CBOR"),
        ("not CBOR", b"\xff", "not valid CBOR"),
        ("JSON", b'{"type": "config"}', "not valid CBOR"),
        ("a number", b"\x01", "not a COSE_Sign1"),
        ("tag 17", hand_sign(good, tag=17), "not a COSE_Sign1"),
        ("untagged", cbor2.dumps(cbor2.loads(hand_sign(good)).value), "not a COSE_Sign1"),
        ("3 items", cbor2.dumps(cbor2.CBORTag(18, [b"\xa0", {}, body])), "array of 4"),
        ("a map", cbor2.dumps(cbor2.CBORTag(18, {1: 2})), "array of 4"),
        ("protected a map", cbor2.dumps(cbor2.CBORTag(18, [{1: -8}, {}, body, bytes(64)])), "protected"),
        ("protected empty", cbor2.dumps(cbor2.CBORTag(18, [b"", {}, body, bytes(64)])), "protected"),
        ("protected a list", hand_sign(good, header=cbor2.dumps([1, -8])), "must hold a CBOR map"),
        ("protected not CBOR", hand_sign(good, header=b"\xa1\x01"), "not valid CBOR"),
        ("protected trailing", hand_sign(good, header=cbor2.dumps({1: -8, 3: CONFIG_TYPE, 4: kid}) + b"\x00"), "after its end"),
        ("protected dup label", hand_sign(good, header=b"\xa4\x01\x27\x01\x27" + cbor2.dumps({3: CONFIG_TYPE, 4: kid})[1:]), "not valid CBOR"),
        ("unprotected a list", cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), [], body, bytes(64)])), "unprotected"),
        ("payload detached", cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), {}, None, bytes(64)])), "detached"),
        ("payload text", cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), {}, "x", bytes(64)])), "payload must be"),
        ("short signature", cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps({1: -8}), {}, body, bytes(63)])), "64 bytes"),
        ("alg ES256", hand_sign(good, header={1: -7, 3: CONFIG_TYPE, 4: kid}), "alg (1) is -7"),
        ("alg as text", hand_sign(good, header={1: "EdDSA", 3: CONFIG_TYPE, 4: kid}), "alg (1)"),
        ("alg as float", hand_sign(good, header={1: -8.0, 3: CONFIG_TYPE, 4: kid}), "alg (1)"),
        ("no alg", hand_sign(good, header={3: CONFIG_TYPE, 4: kid}), "alg (1) is None"),
        ("crit", hand_sign(good, header={1: -8, 2: [3], 3: CONFIG_TYPE, 4: kid}), "critical"),
        ("no kid", hand_sign(good, header={1: -8, 3: CONFIG_TYPE}), "kid (4) is None"),
        ("kid as text", hand_sign(good, header={1: -8, 3: CONFIG_TYPE, 4: kid.hex()}), "expected bytes"),
        ("kid unprotected", hand_sign(good, header={1: -8, 3: CONFIG_TYPE}, unprotected={4: kid}), "must be in the protected"),
        ("no content type", hand_sign(good, header={1: -8, 4: kid}), "content type (3)"),
        ("content type json", hand_sign(good, content_type="application/json"), "content type (3)"),
        ("content type list", hand_sign(good, content_type=[1]), "content type (3)"),
        ("too big", b"\x00" * (MAX_BUNDLE_BYTES + 1), "more than"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("bundle", "words"), [c[1:] for c in structural_cases()], ids=[c[0] for c in structural_cases()]
)
def test_malformed_structure(bundle: bytes, words: str) -> None:
    r = rejection(bundle)
    assert r.reason == "malformed"
    assert words in r.text, r.text


def test_a_bundle_that_is_not_bytes_is_malformed() -> None:
    r = rejection("d284...")  # type: ignore[arg-type]
    assert (r.reason, r.text) == ("malformed", "the bundle is str, not bytes")


def test_unprotected_headers_other_than_kid_are_ignored() -> None:
    bundle = hand_sign(config_payload(), unprotected={5: b"\x00" * 12, "note": "ignored"})
    assert open_bundle(bundle).version == 7


def test_checks_come_in_the_contract_order() -> None:
    expired_elsewhere = config_payload(target="cab-0043", expires=NOW - 1, issued=NOW - 100)
    # an unknown key wins over everything the payload says
    assert rejection(hand_sign(expired_elsewhere, STRANGER)).reason == "unknown_key"
    # a bad signature wins over the payload's fields, even malformed ones
    bad_fields = config_payload(version=0)
    forged = hand_sign(bad_fields, STRANGER, kid=key_id(OPS.public_key()))
    assert rejection(forged).reason == "bad_signature"
    # malformed fields before the type
    assert rejection(hand_sign(bad_fields), kind="command").reason == "malformed"
    # the type before the target and the expiry
    assert rejection(hand_sign(expired_elsewhere), kind="command").reason == "wrong_type"
    # the target before the expiry
    assert rejection(hand_sign(expired_elsewhere)).reason == "wrong_target"
    # a malformed structure before the key: unknown kid, but the alg is wrong
    header = {1: -7, 3: CONFIG_TYPE, 4: key_id(STRANGER.public_key())}
    assert rejection(hand_sign(config_payload(), STRANGER, header=header)).reason == "malformed"


# --------------------------------------------------------------------------------------------
# Refusals when signing


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"lighting": {"switch_on": time_of_day(22, 30)}}, 'lighting.switch_on: is a time of day (22:30:00), which CBOR has no standard tag for; write it as a string like "22:30"'),
        ({"a": [{"b": datetime(2026, 5, 1, 8, 0)}]}, "a[0].b: is a local date-time; add a UTC offset"),
        ({"a": {"b": None}}, "a.b: is nothing (null)"),
        ({"a": {1: "x"}}, "a: has a key 1 that is not a string"),
        ({"a": b"\x00"}, "a: is a bytes"),
        ({"a": {1.5}}, "a: is a set"),
    ],
)  # fmt: skip
def test_sign_config_refuses_what_cbor_or_toml_cannot_carry(config: Any, words: str) -> None:
    with pytest.raises(ValueError) as info:
        sign_config(config, OPS, version=1)
    assert words in str(info.value), info.value


def test_sign_config_refuses_a_reference_cycle() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="nests deeper than"):
        sign_config(loop, OPS, version=1)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"version": 0}, "version must be an integer from 1"),
        ({"version": True}, "version must be"),
        ({"version": "2"}, "version must be"),
        ({"version": 1, "target": GATEWAY, "group": "g"}, "not both"),
        ({"version": 1, "target": ""}, "target must be a non-empty string"),
        ({"version": 1, "issued": NOW, "expires": float(NOW + 60)}, "expires must be a unix time"),
        ({"version": 1, "issued": -5}, "issued must be a unix time"),
    ],
)
def test_sign_config_refuses_bad_arguments(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=re.escape(words)):
        sign_config({}, OPS, **kwargs)
    with pytest.raises(ValueError, match="not a table"):
        sign_config([1, 2], OPS, version=1)  # type: ignore[arg-type]


def test_sign_config_refuses_a_bundle_no_gateway_would_take() -> None:
    huge = {"blob": "x" * MAX_BUNDLE_BYTES}
    with pytest.raises(ValueError, match="gateways take at most"):
        sign_config(huge, OPS, version=1)


@pytest.mark.parametrize(
    ("name", "args", "extra", "words"),
    [
        ("ack", {}, {}, "command name 'ack'"),
        ("cmd/x", {}, {}, "command name"),
        ("", {}, {}, "command name"),
        ("reboot-agent", {"when": b"now"}, {}, "args.when: is a bytes"),
        ("reboot-agent", {}, {"id": "has space"}, "command id"),
        ("reboot-agent", {}, {"target": GATEWAY, "group": "g"}, "not both"),
        ("reboot-agent", {}, {"expires": None}, "a command needs an expiry"),
    ],
)
def test_sign_command_refuses_bad_arguments(
    name: str, args: dict[str, Any], extra: dict[str, Any], words: str
) -> None:
    kw: dict[str, Any] = {"issued": NOW, "expires": NOW + 60, **extra}
    with pytest.raises(ValueError, match=re.escape(words)):
        sign_command(name, args, OPS, **kw)


# --------------------------------------------------------------------------------------------
# Operator inputs


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("1d2h3m4s", 93784), (" 10m ", 600)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "90", "1.5h", "h", "30m1h", "2 h", "-5m", "1w", "0s", "15M"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_duration(text)


def test_read_toml_config_reads_what_sign_config_takes(tmp_path: Path) -> None:
    path = tmp_path / "passerelle.toml"
    path.write_text(
        '[gateway]\nid = "cab-0042"\n\n[maintenance]\nsince = 2026-03-01\n'
        "window = 2026-06-01T22:00:00+02:00\n"
    )
    document = read_toml_config(path)
    assert document["maintenance"]["since"] == date(2026, 3, 1)
    signed = open_bundle(sign_config(document, OPS, version=5, issued=NOW))
    assert signed.config == document


def test_read_toml_config_errors_name_the_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[gateway]\nid = "cab-0042"\nport = = 3\n')
    with pytest.raises(ValueError, match=rf"{bad}: not valid TOML: .*line 3"):
        read_toml_config(bad)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'gone.toml'}: no such file"):
        read_toml_config(tmp_path / "gone.toml")
    latin = tmp_path / "latin.toml"
    latin.write_bytes(b'name = "\xe9clairage"\n')
    with pytest.raises(ValueError, match=rf"{latin}: not UTF-8"):
        read_toml_config(latin)
    local_time = tmp_path / "t.toml"
    local_time.write_text("[lighting]\nswitch_on = 22:30:00\n")
    with pytest.raises(ValueError, match="lighting.switch_on: is a time of day"):
        sign_config(read_toml_config(local_time), OPS, version=1)


# --------------------------------------------------------------------------------------------
# Fuzzing: whatever the bytes, only Rejected


FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
GOOD_CONFIG = sign_config(CONFIG, OPS, version=2, issued=NOW)
GOOD_COMMAND = sign_command("set-log-level", {"level": "debug"}, OPS, expires=NOW + 60, issued=NOW)


def only_rejected(
    data: bytes, check: Callable[[Signed], None] | None = None, now: float = NOW
) -> None:
    for kind in ("config", "command"):
        try:
            signed = open_bundle(data, kind=kind, now=now)
        except Rejected as r:
            assert r.reason in REASONS
            event(f"{kind}: {r.reason}")
        else:
            event(f"{kind}: accepted")
            assert signed.kind == kind
            if check is not None:
                check(signed)


@FUZZ
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(data: bytes) -> None:
    only_rejected(data)
    only_rejected(b"\xd2\x84" + data)


@FUZZ
@given(st.sampled_from([GOOD_CONFIG, GOOD_COMMAND]), st.data())
def test_fuzz_truncations_and_bit_flips(bundle: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(bundle) - 1))
    with pytest.raises(Rejected):
        open_bundle(bundle[:cut], kind="config")
    flips = data.draw(
        st.lists(
            st.tuples(st.integers(0, len(bundle) - 1), st.integers(0, 7)), min_size=1, max_size=3
        )
    )
    tampered = bytearray(bundle)
    for at, bit in flips:
        tampered[at] ^= 1 << bit
    if bytes(tampered) == bundle:
        return  # two flips of the same bit cancel out
    with pytest.raises(Rejected):
        open_bundle(bytes(tampered), kind="config")
    with pytest.raises(Rejected):
        open_bundle(bytes(tampered), kind="command")


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text(max_size=6)
    | st.binary(max_size=6)
    | st.dates()
    | st.datetimes(timezones=st.just(UTC))
    | st.builds(cbor2.CBORTag, st.integers(0, 2**16), st.integers(-3, 3))
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
FIELDS = ["type", "version", "issued", "expires", "target", "group", "config", "name", "args", "id"]


@st.composite
def signed_payloads(draw: st.DrawFn) -> tuple[Any, str]:
    """Payloads near the format, correctly signed, so the checks after the signature run."""
    content_type = draw(st.sampled_from([CONFIG_TYPE, COMMAND_TYPE]))
    base = config_payload() if content_type == CONFIG_TYPE else command_payload()
    likely = st.sampled_from([GATEWAY, "cab-0043", *GROUPS, "elsewhere", NOW - 1, NOW + 1, 0])
    changes = draw(
        st.dictionaries(st.sampled_from([*FIELDS, "extra"]), likely | values, max_size=2)
    )
    dropped = draw(st.sets(st.sampled_from(FIELDS), max_size=2))
    payload = {k: v for k, v in {**base, **changes}.items() if k not in dropped}
    return draw(st.sampled_from([payload, draw(values)])), content_type


@FUZZ
@given(signed_payloads(), st.sampled_from([0, NOW, NOW + 10**6]))
def test_fuzz_signed_payloads(case: tuple[Any, str], now: int) -> None:
    payload, content_type = case

    def sane(signed: Signed) -> None:
        assert signed.expires is None or now < signed.expires
        assert signed.target in (None, GATEWAY) and signed.group in (None, *GROUPS)
        assert (signed.config is None) == (signed.kind == "command")

    only_rejected(hand_sign(payload, content_type=content_type), sane, now)


@FUZZ
@given(
    st.dictionaries(st.integers(-10, 10) | st.text(max_size=3), values, max_size=4),
    st.dictionaries(st.integers(-10, 10) | st.text(max_size=3), values, max_size=3),
    st.sampled_from([16, 17, 18, 98]),
)
def test_fuzz_headers(header: dict[Any, Any], unprotected: dict[Any, Any], tag: int) -> None:
    for h in (header, {1: -8, 3: CONFIG_TYPE, 4: key_id(OPS.public_key()), **header}):
        only_rejected(hand_sign(config_payload(), header=h, unprotected=unprotected, tag=tag))
