from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator

import pytest

from passerelle.logs import (
    JsonFormatter,
    RateLimitFilter,
    TextFormatter,
    log_event,
    redact,
    redact_text,
    setup_logging,
    suppressed_counts,
)


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def setup(clock: FakeClock, fmt: str = "text", level: str = "debug", **kw: object) -> io.StringIO:
    stream = io.StringIO()
    setup_logging(level=level, fmt=fmt, stream=stream, clock=clock, **kw)  # type: ignore[arg-type]
    return stream


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def make_record(msg: str, args: tuple[object, ...] = (), **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("uplink", logging.WARNING, __file__, 1, msg, args, None)
    rec.created = 1795293062.25  # 2026-11-21T20:31:02.250Z
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


# -- formats --------------------------------------------------------------------------------


def test_text_format_exact() -> None:
    rec = make_record("connection refused", cause="uplink.connect", broker="localhost:8883")
    assert TextFormatter().format(rec) == (
        "2026-11-21T20:31:02Z WARNING uplink: connection refused "
        "cause=uplink.connect broker=localhost:8883"
    )


def test_text_format_quotes_values_with_spaces_and_shows_suppressed() -> None:
    rec = make_record("read %s failed", ("meter-1",), cause="dev.read", err="timed out")
    rec.suppressed = 12
    assert TextFormatter().format(rec) == (
        "2026-11-21T20:31:02Z WARNING uplink: read meter-1 failed "
        '(12 similar messages suppressed) cause=dev.read err="timed out"'
    )


def test_json_format() -> None:
    rec = make_record("connection refused", cause="uplink.connect", broker="localhost:8883")
    rec.suppressed = 3
    obj = json.loads(JsonFormatter().format(rec))
    assert obj == {
        "ts": "2026-11-21T20:31:02.250Z",
        "level": "WARNING",
        "logger": "uplink",
        "msg": "connection refused",
        "cause": "uplink.connect",
        "fields": {"broker": "localhost:8883", "suppressed": 3},
    }


def test_setup_text_end_to_end(restore_root: None, clock: FakeClock) -> None:
    stream = setup(clock)
    logging.getLogger("uplink").warning(
        "connection refused", extra={"cause": "uplink.connect", "broker": "localhost:8883"}
    )
    [line] = lines(stream)
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ WARNING uplink: connection refused "
        r"cause=uplink\.connect broker=localhost:8883",
        line,
    )


def test_setup_json_one_object_per_line_with_exception(
    restore_root: None, clock: FakeClock
) -> None:
    stream = setup(clock, fmt="json")
    log = logging.getLogger("store")
    try:
        raise OSError("disk full")
    except OSError:
        log_event(log, "error", "store.write", "write failed", segment=7, exc_info=True)
    log.info("plain")
    first, second = (json.loads(x) for x in lines(stream))
    assert first["cause"] == "store.write"
    assert first["fields"] == {"segment": 7}
    assert "OSError: disk full" in first["exc"]
    assert second["cause"] is None and second["fields"] == {}


def test_level_and_format_validation(restore_root: None, clock: FakeClock) -> None:
    stream = setup(clock, level="WARNING")
    logging.getLogger("x").info("hidden")
    logging.getLogger("x").warning("shown")
    assert [line.split(" ", 1)[1] for line in lines(stream)] == ["WARNING x: shown"]
    with pytest.raises(ValueError):
        setup_logging(level="loud")
    with pytest.raises(ValueError):
        setup_logging(fmt="xml")


def test_setup_twice_replaces_handler(restore_root: None, clock: FakeClock) -> None:
    first = setup(clock)
    second = setup(clock)
    logging.getLogger("x").warning("once")
    assert lines(first) == []
    assert len(lines(second)) == 1


def test_log_event_renames_reserved_fields(restore_root: None, clock: FakeClock) -> None:
    stream = setup(clock, fmt="json")
    log_event(logging.getLogger("src"), logging.INFO, "src.start", "started %s", "c1", name="c1")
    obj = json.loads(lines(stream)[0])
    assert obj["msg"] == "started c1"
    assert obj["fields"] == {"name_": "c1"}


# -- rate limiting --------------------------------------------------------------------------


def test_flood_yields_burst_lines_per_window(restore_root: None, clock: FakeClock) -> None:
    stream = setup(clock, burst=5, per=60.0)
    log = logging.getLogger("dev")
    for i in range(10_000):
        log.error("read failed: %d", i, extra={"cause": "dev.read"})
    assert len(lines(stream)) == 5
    assert suppressed_counts() == {"dev.read": 9995}

    clock.t += 30  # window still closed
    log.error("read failed: %d", -1, extra={"cause": "dev.read"})
    assert len(lines(stream)) == 5

    clock.t += 30  # reopened: the next line reports what was dropped
    log.error("read failed: %d", -2, extra={"cause": "dev.read"})
    out = lines(stream)
    assert len(out) == 6
    assert "read failed: -2 (9996 similar messages suppressed) cause=dev.read" in out[-1]
    log.error("read failed: %d", -3, extra={"cause": "dev.read"})
    assert "suppressed" not in lines(stream)[-1]
    assert suppressed_counts() == {"dev.read": 9996}


def test_keys_fall_back_to_logger_and_template(clock: FakeClock) -> None:
    f = RateLimitFilter(burst=2, per=10.0, clock=clock)

    def rec(name: str, msg: str, *args: object) -> logging.LogRecord:
        return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)

    # Same template, different arguments: one key.
    assert [f.filter(rec("a", "bad %s", i)) for i in range(4)] == [True, True, False, False]
    # Other logger or other template: independent keys.
    assert f.filter(rec("b", "bad %s", 1))
    assert f.filter(rec("a", "worse %s", 1))
    assert f.suppressed_counts() == {"a:bad %s": 2}


def test_causes_are_independent(restore_root: None, clock: FakeClock) -> None:
    stream = setup(clock, burst=1)
    log = logging.getLogger("x")
    for _ in range(3):
        log.warning("a", extra={"cause": "one"})
        log.warning("b", extra={"cause": "two"})
    assert len(lines(stream)) == 2
    assert suppressed_counts() == {"one": 2, "two": 2}


def test_rate_limit_is_a_sliding_window(clock: FakeClock) -> None:
    f = RateLimitFilter(burst=2, per=10.0, clock=clock)
    rec = logging.LogRecord("x", logging.ERROR, __file__, 1, "m", (), None)
    assert f.filter(rec)
    clock.t += 9
    assert f.filter(rec)
    assert not f.filter(rec)
    clock.t += 1  # the first one left the window, the second has not
    assert f.filter(rec)
    assert not f.filter(rec)


def test_rate_limit_state_is_bounded(clock: FakeClock) -> None:
    f = RateLimitFilter(burst=1, per=1.0, clock=clock)
    for i in range(5 * f.MAX_KEYS):
        rec = logging.LogRecord("x", 40, __file__, 1, "m", (), None)
        rec.cause = f"dev.{i}"
        f.filter(rec)
        clock.t += 1.0
    assert len(f._windows) <= f.MAX_KEYS + 1


def test_rate_limit_validation() -> None:
    with pytest.raises(ValueError):
        RateLimitFilter(burst=0)
    with pytest.raises(ValueError):
        RateLimitFilter(per=0)


# -- redaction ------------------------------------------------------------------------------


def test_redact_helper() -> None:
    data = {
        "password": "hunter2",
        "API_Key": "abc",
        "mqtt": {"client_secret": "s3", "host": "h", "tokens": ["t"]},
        "user": "bob",
        "items": [{"Token": "x"}],
    }
    assert redact(data) == {
        "password": "***",
        "API_Key": "***",
        "mqtt": {"client_secret": "***", "host": "h", "tokens": "***"},
        "user": "bob",
        "items": [{"Token": "***"}],
    }
    assert data["password"] == "hunter2"  # not mutated


def test_redact_text() -> None:
    assert redact_text("login password=hunter2 user=bob") == "login password=*** user=bob"
    assert redact_text('api_key = "a b c", ok') == "api_key = ***, ok"
    assert redact_text("mqtts://bob:hunter2@broker:8883/x") == "mqtts://bob:***@broker:8883/x"
    assert redact_text("nothing to see") == "nothing to see"


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_never_reach_the_output(restore_root: None, clock: FakeClock, fmt: str) -> None:
    stream = setup(clock, fmt=fmt)
    log = logging.getLogger("cfg")
    log.info(
        "loaded password=%s from %s",
        "hunter2",
        "mqtts://bob:hunter3@broker",
        extra={
            "cause": "cfg.load",
            "Password": "hunter4",
            "tls_key": "hunter5",
            "AuthToken": "hunter6",
            "mqtt": {"secret": "hunter7", "host": "broker"},
        },
    )
    log_event(log, "info", "cfg.load", "again", client_secret="hunter8")
    log.info("dict args %(user)s %(token)s", {"user": "bob", "token": "hunter9"})
    out = stream.getvalue()
    for n in range(2, 10):
        assert f"hunter{n}" not in out
    assert "***" in out and "broker" in out
