"""Privacy: raw events of counted streams never leave, identifiers never leave strict ones."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.model import Priority, Record
from passerelle.policy.config import AggregateConfig, PolicyConfig, StreamRule
from passerelle.policy.privacy import identifier_kind
from passerelle.policy.sobriety import Sobriety

T0 = 1_717_200_000.0  # 2024-06-01 00:00 UTC


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (b"\xff\xd8\xff\xe0 JPEG", "bytes"),
        (bytearray(b"pcm"), "bytes"),
        ("x" * 65, "text"),
        ("AA:BB:CC:DD:EE:FF", "address"),
        ("seen a4-c1-38-11-22-33 near pole 7", "address"),
        ("70:b3:d5:7e:d0:00:12:34", "address"),  # EUI-64
        ("a4c1.3811.2233", "address"),  # dotted, as some switches print them
        ("a4c138112233", "hex"),
        ("70B3D57ED0001234", "hex"),
        ("6f1c2e0a-3b1d-4e5f-8a9b-0c1d2e3f4a5b", "hex"),  # a UUID's 12-digit tail
        ("208150123456789", "digits"),  # IMSI
        ("35-209900-176148-1", "digits"),  # IMEI as printed
        ("06 12 34 56 78", "digits"),
        ("+33 6.12.34.56.78", "digits"),
        ("jean.dupont@example.fr", "email"),
    ],
)
def test_identifiers(value: object, kind: str) -> None:
    assert identifier_kind(value) == kind  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "value",
    [
        "occupied",
        "free",
        "21.5",
        "12:30",
        "2024-03-31",
        "lamp 12 of 20",
        "",
        123456789012,
        1.5,
        True,
    ],
)
def test_not_identifiers(value: object) -> None:
    assert identifier_kind(value) is None  # type: ignore[arg-type]


def _sep(octets: bytes, sep: str, upper: bool) -> str:
    text = sep.join(f"{b:02x}" for b in octets)
    return text.upper() if upper else text


macs = st.builds(
    _sep,
    st.binary(min_size=6, max_size=6) | st.binary(min_size=8, max_size=8),
    st.sampled_from([":", "-"]),
    st.booleans(),
)
identifiers = st.one_of(
    macs,
    macs.map(lambda m: f"probe from {m}"),
    st.binary(min_size=6, max_size=8).map(bytes.hex),
    st.integers(10**14, 10**15 - 1).map(str),  # IMSI / IMEI
    st.lists(st.integers(10, 99), min_size=5, max_size=5).map(
        lambda p: "0" + " ".join(str(x) for x in p)[1:]
    ),
    st.emails(),
    st.binary(max_size=40),
    st.text(min_size=65, max_size=80),
)
harmless = st.one_of(
    st.sampled_from(["occupied", "free", "open", "closed", "21.5", "12:30", "door 3"]),
    st.integers(-1000, 1000),
    st.floats(-1e3, 1e3, allow_nan=False),
    st.booleans(),
)
times = st.one_of(st.floats(0, 7200), st.just(math.nan))


def policy() -> PolicyConfig:
    return PolicyConfig(
        streams=[
            StreamRule(
                match="pir/*",
                privacy="count",
                aggregate=AggregateConfig(window=60, functions=["count"]),
            ),
            StreamRule(match="wifi/*", privacy="strict"),
        ]
    )


@settings(max_examples=120, deadline=None)
@given(
    st.lists(
        st.lists(
            st.tuples(
                st.sampled_from(["pir", "wifi", "meter"]),
                st.sampled_from(["presence", "probe"]),
                identifiers | harmless,
                times,
            ),
            max_size=12,
        ),
        max_size=10,
    ),
    st.sampled_from([Priority.DIAGNOSTIC, Priority.TELEMETRY, Priority.ENERGY]),
)
def test_no_raw_event_or_identifier_leaves(
    batches: list[list[tuple[str, str, object, float]]], priority: Priority
) -> None:
    engine = Sobriety(policy(), clock=lambda: T0)
    out: list[Record] = []
    sent_pir = 0
    expected_wifi: list[Record] = []
    expected_meter: list[Record] = []
    for batch in batches:
        records = [Record(d, n, v, T0 + dt, None) for d, n, v, dt in batch]  # type: ignore[arg-type]
        for r in records:
            finite = math.isfinite(r.time)
            if r.device == "pir" and finite:
                sent_pir += 1
            if r.device == "wifi" and finite and identifier_kind(r.value) is None:
                expected_wifi.append(r)
            if r.device == "meter":
                expected_meter.append(r)
        out += engine.process(records, priority)
    for group in engine.tick(math.inf).values():
        out += group
    pir = [r for r in out if r.device == "pir"]
    for r in pir:
        # Only counts leave a counted stream: the name says so and the value is a count.
        assert r.name in ("presence/count", "probe/count")
        assert type(r.value) is int and r.value >= 1 and r.unit is None
        assert r.time % 60 == 0
    assert sum(r.value for r in pir) == sent_pir  # type: ignore[misc]
    wifi = [r for r in out if r.device == "wifi"]
    assert all(identifier_kind(r.value) is None for r in wifi)
    assert wifi == expected_wifi  # and nothing harmless was lost
    assert [r for r in out if r.device == "meter"] == expected_meter  # no rule: untouched


def test_identifiers_are_counted_not_stored() -> None:
    engine = Sobriety(policy(), clock=lambda: T0)
    out = engine.process(
        [
            Record("wifi", "probe", "AA:BB:CC:DD:EE:FF", T0),
            Record("wifi", "probe", b"\x00\x01", T0),
            Record("wifi", "probe", "busy", T0),
            Record("pir", "presence", "208150123456789", T0),
            Record("pir", "presence", True, T0 + 1),
        ],
        Priority.TELEMETRY,
    )
    assert out == [Record("wifi", "probe", "busy", T0)]
    assert engine.identifiers == {"address": 1, "bytes": 1, "digits": 1}
    saved = engine.savings()["privacy"]
    assert saved["suppressed"] == 4  # 2 refused + 2 events not yet replaced by a count
    assert saved["bytes_avoided"] > 0
    (count,) = engine.tick(T0 + 60 + engine.late_grace)[Priority.TELEMETRY]
    assert count == Record("pir", "presence/count", 2, T0, None)
    assert engine.savings()["privacy"]["suppressed"] == 3  # 4 raw, minus 1 count record


def test_alarms_pass_untouched_even_in_privacy_streams() -> None:
    engine = Sobriety(policy(), clock=lambda: T0)
    alarm = [Record("pir", "presence", "tamper", T0)]
    assert engine.process(alarm, Priority.ALARM) == alarm


def test_late_event_is_counted_in_the_current_window() -> None:
    engine = Sobriety(policy(), clock=lambda: T0)
    engine.process([Record("pir", "presence", 1, T0 + 70)], Priority.TELEMETRY)
    engine.process([Record("pir", "presence", 1, T0 + 10)], Priority.TELEMETRY)  # late
    assert engine.late == 1
    (count,) = engine.tick(T0 + 200)[Priority.TELEMETRY]
    assert count.value == 2 and count.time == T0 + 60
