"""SenML-CBOR packs: round trip (property), sizes, and refusal of bad packs."""

from __future__ import annotations

import functools
import math
import re
import zlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle import senml
from passerelle.model import Record

base_name = functools.partial(senml.device_base_name, "cab-0042")

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_./", min_size=1, max_size=12)
devices = st.sampled_from(["counter", "meter-1", "env", "70b3d57ed0000001"])
values = st.one_of(
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.booleans(),
    st.text(max_size=20),
    st.binary(max_size=20),
)
times = st.floats(min_value=1.6e9, max_value=1.9e9)
units = st.sampled_from([None, "Cel", "%RH", "W", "Wh"])
records = st.builds(Record, devices, names.map(lambda n: "m" + n), values, times, units)


def key(r: senml.Resolved) -> tuple[str, str, float]:
    return (r.name, repr(r.value), r.time)


@settings(max_examples=300, deadline=None)
@given(st.lists(records, min_size=1, max_size=60))
def test_pack_round_trip(recs: list[Record]) -> None:
    payload = senml.encode_pack(recs, base_name, "cab-0042/10-69")
    got, idk = senml.decode_pack(payload)
    assert idk == "cab-0042/10-69"
    want = senml.resolved_from_records(recs, base_name)
    assert len(got) == len(want)
    # Order inside a pack carries no meaning; compare as multisets, times to 1/2048 s
    # (relative times travel at 1/1024 s).
    got_sorted = sorted(got, key=lambda r: (r.name, r.time))
    want_sorted = sorted(want, key=lambda r: (r.name, r.time))
    for g, w in zip(got_sorted, want_sorted, strict=True):
        assert g.name == w.name
        assert g.unit == w.unit
        assert abs(g.time - w.time) <= 1 / 2048 + 1e-6 * abs(w.time) * 1e-3
        assert type(g.value) is type(w.value) or (
            isinstance(g.value, int | float) and isinstance(w.value, int | float)
            and not isinstance(g.value, bool) and not isinstance(w.value, bool)
        )
        if isinstance(w.value, float):
            assert g.value == w.value or (math.isnan(g.value) and math.isnan(w.value))
        else:
            assert g.value == w.value


@settings(max_examples=100, deadline=None)
@given(st.lists(records, min_size=1, max_size=60))
def test_compressed_pack_decodes_to_the_same_records(recs: list[Record]) -> None:
    plain = senml.encode_pack(recs, base_name, "cab-0042/10-69")
    sent = senml.compress(plain)
    assert len(sent) <= len(plain)
    assert senml.is_compressed(sent) == (sent != plain)
    assert senml.decode_pack(sent) == senml.decode_pack(plain)


def test_meter_polls_cost_under_eight_bytes_per_value_once_compressed() -> None:
    from hil.bench import EnergyMeterSim

    sim = EnergyMeterSim()
    recs = [r for k in range(6) for r in sim.poll(k, 1.8e9)]  # one minute: 6 polls of 20
    plain = senml.encode_pack(recs, base_name, "cab-0042/1000-1119")
    sent = senml.compress(plain)
    assert len(plain) / len(recs) > 12  # distinct names, units and decimals: SenML alone
    assert len(sent) / len(recs) <= 8
    got, _ = senml.decode_pack(sent)
    assert sorted(r.value for r in got) == sorted(r.value for r in recs)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x78\x9c\x07\x00", "does not inflate"),
        (zlib.compress(cbor2.dumps([{0: "x", 2: 1}]))[:-6], "truncated"),
        (zlib.compress(b"\x00" * (senml.MAX_PACK_BYTES + 1)), "inflates to more than"),
    ],
)
def test_bad_compressed_packs_are_refused(payload: bytes, message: str) -> None:
    with pytest.raises(senml.SenMLError, match=message):
        senml.decode_pack(payload)


def test_labels_are_the_rfc_8428_integers() -> None:
    recs = [Record("env", "temperature", 21.5, 1.8e9, "Cel")]
    pack = cbor2.loads(senml.encode_pack(recs, base_name))
    assert pack == [
        {-3: 1.8e9, -2: "urn:dev:ops:passerelle-cab-0042-env:", -4: "Cel", 0: "temperature",
         2: 21.5}
    ]


def test_eui64_devices_get_an_eui64_urn() -> None:
    assert base_name("70b3d57ed0000001") == "urn:dev:eui64:70b3d57ed0000001:"


def test_a_counter_run_costs_under_eight_bytes_per_value() -> None:
    recs = [Record("counter", "counter", 5000 + i, 1.8e9 + i * 0.01) for i in range(250)]
    payload = senml.encode_pack(recs, base_name, "cab-0042/5000-5249")
    assert len(payload) / len(recs) <= 8.5


def test_decimal_readings_travel_as_decimal_fractions() -> None:
    recs = [Record("env", "t", 21.37, 1.8e9, "Cel")]
    pack = cbor2.loads(senml.encode_pack(recs, base_name))
    assert str(pack[0][2]) == "21.37"  # tag 4, 6 bytes instead of a 9-byte double
    assert senml.decode_pack(senml.encode_pack(recs, base_name))[0][0].value == 21.37


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\xff\xfe", "not CBOR"),
        (cbor2.dumps({"a": 1}), "CBOR array"),
        (cbor2.dumps([1]), "record 0: not a map"),
        (cbor2.dumps([{2: 1}]), "record 0: empty name"),
        (cbor2.dumps([{0: "x"}]), "record 0 (x): no value"),
        (cbor2.dumps([{0: "x", 2: 1, 6: "soon"}]), "record 0: t is not a number"),
    ],
)
def test_bad_packs_are_refused_with_where(payload: bytes, message: str) -> None:
    with pytest.raises(senml.SenMLError, match=re.escape(message)):
        senml.decode_pack(payload)


def test_empty_pack_is_refused() -> None:
    with pytest.raises(ValueError):
        senml.encode_pack([], base_name)
