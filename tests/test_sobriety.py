"""The sobriety engine on the agent's emit path: rules by glob, deadband, windows, budget,
and savings counters that match what was really suppressed."""

from __future__ import annotations

import math
from collections import defaultdict

from hypothesis import given, settings
from hypothesis import strategies as st

from passerelle.model import Priority, Record
from passerelle.policy.config import AggregateConfig, PolicyConfig, StreamRule, default_policy
from passerelle.policy.sobriety import ESTIMATE_CHUNK, Sobriety
from passerelle.senml import device_base_name, encode_pack

T0 = 1_717_200_000.0  # 2024-06-01 00:00 UTC, a multiple of every window used here


def pack_size(records: list[Record]) -> int:
    return len(encode_pack(records, lambda d: device_base_name("passerelle", d))) if records else 0


def chunked_size(records: list[Record]) -> int:
    """What the engine estimates: packs of up to ESTIMATE_CHUNK records, in arrival order."""
    chunks = range(0, len(records), ESTIMATE_CHUNK)
    return sum(pack_size(records[i : i + ESTIMATE_CHUNK]) for i in chunks)


def engine(*rules: StreamRule, **kw: object) -> Sobriety:
    return Sobriety(PolicyConfig(streams=list(rules), **kw), clock=lambda: T0)  # type: ignore[arg-type]


def test_streams_without_a_rule_pass_untouched() -> None:
    e = engine(StreamRule(match="meter-1/*", deadband=100.0))
    batch = [Record("env", "temperature", 20.0 + i, T0 + i, "Cel") for i in range(5)]
    assert e.process(batch, Priority.TELEMETRY) == batch
    assert e.savings()["deadband"] == {"suppressed": 0, "bytes_avoided": 0}


def test_first_matching_rule_wins() -> None:
    e = engine(
        StreamRule(match="meter-1/*", ttl=60.0),  # no policy, only a TTL: exempts meter-1
        StreamRule(match="*/temperature", deadband=10.0, ttl=3600.0),
    )
    meter = [Record("meter-1", "temperature", 30.0 + i, T0 + i) for i in range(3)]
    env = [Record("env", "temperature", 20.0 + i, T0 + i) for i in range(3)]
    assert e.process(meter, Priority.TELEMETRY) == meter
    assert e.process(env, Priority.TELEMETRY) == env[:1]
    assert e.ttl_for("meter-1", "temperature") == 60.0
    assert e.ttl_for("env", "temperature") == 3600.0
    assert e.ttl_for("env", "humidity") is None
    assert e.stats()["streams"] == 2


def test_alarm_batches_pass_untouched() -> None:
    e = engine(StreamRule(match="*", deadband=1e9))
    e.process([Record("a", "b", 1.0, T0)], Priority.TELEMETRY)
    alarm = [Record("a", "b", 1.0, T0 + 1)]
    assert e.process(alarm, Priority.ALARM) == alarm
    assert e.process([Record("a", "b", 1.0, T0 + 2)], Priority.TELEMETRY) == []


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 120), st.floats(-50, 50, allow_nan=False)), max_size=300),
    st.integers(1, 20),
)
def test_deadband_savings_match_what_was_suppressed(
    steps: list[tuple[float, float]], batch: int
) -> None:
    e = engine(StreamRule(match="*/temperature", deadband=0.5, heartbeat=600.0))
    t, records = T0, []
    for dt, v in steps:
        t += dt
        records.append(Record("env", "temperature", v, t, "Cel"))
    out: list[Record] = []
    for i in range(0, len(records), batch):
        out += e.process(records[i : i + batch], Priority.TELEMETRY)
    sent = set(map(id, out))
    suppressed = [r for r in records if id(r) not in sent]
    assert all(r in records for r in out)
    saved = e.savings()["deadband"]
    assert saved["suppressed"] == len(suppressed) == len(records) - len(out)
    # Bytes: the suppressed records encoded by chunks, as the engine estimates them.
    assert saved["bytes_avoided"] == chunked_size(suppressed)
    assert e.stats()["records_in"] == len(records) and e.stats()["records_out"] == len(out)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.floats(0, 200), st.floats(0, 3000, allow_nan=False)), max_size=200),
    st.integers(1, 30),
    st.sampled_from([60, 300]),
)
def test_engine_windows_equal_the_raw_computation(
    steps: list[tuple[float, float]], batch: int, window: int
) -> None:
    functions = ["min", "max", "mean", "count", "last"]
    e = engine(
        StreamRule(match="*/power", aggregate=AggregateConfig(window=window, functions=functions))
    )
    t, records = T0, []
    for dt, v in steps:
        t += dt
        records.append(Record("meter-1", "power", v, t, "W"))
    out: list[Record] = []
    for i in range(0, len(records), batch):
        out += e.process(records[i : i + batch], Priority.ENERGY)
    for prio, group in e.tick(math.inf).items():
        assert prio is Priority.ENERGY  # the priority the stream was emitted at
        out += group
    raw: dict[float, list[float]] = defaultdict(list)
    for r in records:
        raw[math.floor(r.time / window) * window].append(r.value)  # type: ignore[arg-type]
    got: dict[float, dict[str, float]] = defaultdict(dict)
    for r in out:
        got[r.time][r.name.removeprefix("power/")] = r.value  # type: ignore[assignment]
        assert r.unit == (None if r.name.endswith("/count") else "W")
    assert set(got) == set(raw)
    for start, vs in raw.items():
        assert got[start] == {
            "min": min(vs),
            "max": max(vs),
            "mean": math.fsum(vs) / len(vs),
            "count": len(vs),
            "last": vs[-1],
        }
    saved = e.savings()["aggregate"]
    assert saved["suppressed"] == len(records) - len(out)  # raw samples minus window records
    assert saved["bytes_avoided"] == chunked_size(records) - chunked_size(out)


def test_byte_estimate_by_whole_chunks() -> None:
    # 200 samples 100 s apart, each alone in its 60 s window: 1000 window records, so both
    # sides of the estimate cross several chunk boundaries.
    e = engine(
        StreamRule(
            match="*/power",
            aggregate=AggregateConfig(window=60, functions=["min", "max", "mean", "count", "last"]),
        )
    )
    records = [Record("m", "power", (i % 13) * 1.37, T0 + 100 * i, "W") for i in range(200)]
    out = e.process(records, Priority.ENERGY)
    for group in e.tick(math.inf).values():
        out += group
    assert len(out) == 1000
    assert e.savings()["aggregate"] == {
        "suppressed": 200 - 1000,
        "bytes_avoided": chunked_size(records) - chunked_size(out),
    }


def test_tick_waits_for_late_grace_and_groups_by_priority() -> None:
    e = engine(
        StreamRule(match="a/*", aggregate=AggregateConfig(window=60, functions=["count"])),
    )
    e.process([Record("a", "x", 1.0, T0 + 5)], Priority.ENERGY)
    e.process([Record("a", "y", 1.0, T0 + 6)], Priority.DIAGNOSTIC)
    assert e.tick(T0 + 60) == {}  # ended, but a sample of T0+59 may still be on its way
    e.process([Record("a", "x", 2.0, T0 + 59)], Priority.ENERGY)
    assert e.stats()["open_windows"] == 2
    assert e.tick(T0 + 60 + e.late_grace) == {
        Priority.ENERGY: [Record("a", "x/count", 2, T0, None)],
        Priority.DIAGNOSTIC: [Record("a", "y/count", 1, T0, None)],
    }
    assert e.tick(T0 + 1000) == {}
    assert e.stats()["open_windows"] == 0


def test_what_a_window_cannot_hold_passes_raw() -> None:
    e = engine(StreamRule(match="*/power", aggregate=AggregateConfig(window=60)))
    nan = Record("m", "power", math.nan, T0 + 1, "W")
    state = Record("m", "power", "overload", T0 + 2)
    bad_time = Record("m", "power", 5.0, math.inf, "W")
    assert e.process([Record("m", "power", 1.0, T0 + 70, "W")], Priority.ENERGY) == []
    late = Record("m", "power", 2.0, T0 + 3, "W")
    assert e.process([nan, state, bad_time, late], Priority.ENERGY) == [nan, state, bad_time, late]
    assert e.late == 1 and e.unsupported == 1


def test_heartbeat_is_not_invented_by_tick() -> None:
    e = engine(StreamRule(match="*", deadband=5.0, heartbeat=60.0))
    e.process([Record("a", "b", 1.0, T0)], Priority.TELEMETRY)
    assert e.tick(T0 + 3600) == {}  # no sample: nothing to send
    out = e.process([Record("a", "b", 1.0, T0 + 3600)], Priority.TELEMETRY)
    assert out == [Record("a", "b", 1.0, T0 + 3600)]  # the next sample carries the heartbeat


def test_savings_records() -> None:
    e = engine(
        StreamRule(match="*/t", deadband=1.0),
        StreamRule(match="*/p", aggregate=AggregateConfig(window=60, functions=["mean"])),
        StreamRule(match="*/pir", privacy="count"),
        budget_bytes_per_day=2000,
    )
    e.process([Record("a", "t", 1.0 + i * 0.1, T0 + i) for i in range(5)], Priority.TELEMETRY)
    e.process([Record("a", "p", float(i), T0 + i) for i in range(10)], Priority.TELEMETRY)
    e.process([Record("a", "pir", True, T0 + i) for i in range(3)], Priority.TELEMETRY)
    e.tick(T0 + 3600)
    assert e.budget is not None
    assert not e.budget.try_spend(1900, Priority.TELEMETRY, T0)
    recs = e.savings_records(T0 + 3600)
    by_name = {r.name: r for r in recs}
    assert all(r.device == "gateway" and r.time == T0 + 3600 for r in recs)
    assert by_name["sobriety/suppressed/deadband"].value == 4
    assert by_name["sobriety/suppressed/aggregate"].value == 9  # 10 samples, 1 mean
    assert by_name["sobriety/suppressed/privacy"].value == 2  # 3 events, 1 count
    for cause in ("deadband", "aggregate", "privacy"):
        rec = by_name[f"sobriety/bytes_avoided/{cause}"]
        assert rec.unit == "B" and rec.value == e.savings()[cause]["bytes_avoided"] > 0
    assert by_name["sobriety/privacy/identifiers"].value == 0
    assert by_name["sobriety/budget/refused"].value == 1
    assert by_name["sobriety/budget/refused_bytes"].value == 1900
    assert by_name["sobriety/budget/spent"].value == 0
    assert len(recs) == 10


def test_savings_can_be_negative_when_a_rule_costs() -> None:
    e = engine(StreamRule(match="*", aggregate=AggregateConfig(window=60)))
    e.process([Record("a", "b", 1.0, T0)], Priority.TELEMETRY)
    e.tick(T0 + 3600)
    saved = e.savings()["aggregate"]
    assert saved["suppressed"] == 1 - 4  # one sample became min, max, mean, count
    assert saved["bytes_avoided"] < 0


def test_unmatched_streams_cache_is_bounded(monkeypatch: object) -> None:
    import passerelle.policy.sobriety as mod

    monkeypatch.setattr(mod, "MAX_UNMATCHED_CACHED", 10)  # type: ignore[attr-defined]
    e = engine(StreamRule(match="x/*", deadband=1.0))
    batch = [Record(f"d{i}", "n", 1.0, T0) for i in range(100)]
    assert e.process(batch, Priority.TELEMETRY) == batch
    assert len(e._streams) == 10


def test_schedule_uses_the_policy_clock() -> None:
    e = engine(night="00:00-01:00", timezone="UTC")
    s = e.schedule(10.0, 100.0)
    assert s.interval_at(T0 + 1800) == 100.0 and s.interval_at(T0 + 3600) == 10.0


def test_default_policy_on_a_typical_hour() -> None:
    e = Sobriety(default_policy(), clock=lambda: T0)
    records = []
    for i in range(360):  # one hour, every 10 s
        t = T0 + 10 * i
        records += [
            Record("env", "temperature", 18.0 + 0.001 * i, t, "Cel"),
            Record("meter-1", "power", 870.0 + (i % 7), t, "W"),
            Record("meter-1", "energy", 1_234_567 + 2 * i, t, "Wh"),
            Record("pole-3", "presence/1", i % 2, t),
        ]
    out = e.process(records, Priority.TELEMETRY)
    for group in e.tick(T0 + 3600 + 60).values():
        out += group
    names = {r.name for r in out}
    assert "presence/1" not in names and "presence/1/count" in names
    assert {"power/min", "power/max", "power/mean", "energy/last"} <= names
    assert len(out) < len(records) / 20
    saved = e.savings()
    assert sum(s["suppressed"] for s in saved.values()) == len(records) - len(out)


def test_records_the_engine_cannot_handle_are_counted_not_lost() -> None:
    e = engine(StreamRule(match="pir/*", privacy="count"), StreamRule(match="*", deadband=1.0))
    odd = Record("meter", ["not", "hashable"], 1.0, T0)  # type: ignore[arg-type]
    private = Record("pir", ["presence"], "a4:c1:38:11:22:33", T0)  # type: ignore[arg-type]
    not_a_record = ("meter", "power")
    fine = Record("meter", "power", 1.0, T0)
    out = e.process([odd, private, not_a_record, fine], Priority.TELEMETRY)  # type: ignore[list-item]
    assert out == [odd, not_a_record, fine]  # the privacy stream's record is dropped
    assert e.errors == 3 and e.stats()["errors"] == 3
