"""Structured, rate-limited, redacted logging on top of stdlib :mod:`logging`.

A gateway sits in a cabinet for years with a small SD card and journald in front of it, so
logging has three jobs beyond printing lines:

* **structure**: every record may carry a ``cause`` (a stable, dotted identifier such as
  ``uplink.connect``) and arbitrary key/value fields, passed with
  ``extra={"cause": ..., "broker": ...}`` or :func:`log_event`. They are rendered as
  ``key=value`` (text) or as a JSON object (one per line);
* **no floods**: a broken device logging 10,000 errors a second must produce ``burst`` lines
  per window, not fill the disk. :class:`RateLimitFilter` counts what it drops and tells the
  next line that gets through, and :func:`suppressed_counts` exposes totals to the health
  state;
* **no secrets**: any field whose name looks like a password, key, secret or token is
  replaced by ``***`` before formatting, whatever handler ends up writing it.

A text line looks like:

2026-11-21T20:31:02Z WARNING uplink: connection refused cause=uplink.connect broker=localhost:8883
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import IO, Any

__all__ = [
    "JsonFormatter",
    "RateLimitFilter",
    "RedactFilter",
    "TextFormatter",
    "log_event",
    "redact",
    "redact_text",
    "setup_logging",
    "suppressed_counts",
]

Clock = Callable[[], float]

REDACTED = "***"

# Every attribute a plain LogRecord has; anything else on a record came from ``extra``.
_RESERVED: frozenset[str] = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "taskName",
}
# Attributes this module itself adds; rendered specially, not as plain fields.
_OWN = frozenset({"cause", "suppressed"})

# Substring match on purpose: api_key, mqtt_password, auth_token, client_secret...
_SECRET_NAME = re.compile(r"pass(?:word|wd|phrase)|^pass$|^pwd$|secret|token|key", re.IGNORECASE)
# ``password=hunter2`` inside free text, and user:pass@ in URLs.
_SECRET_ASSIGN = re.compile(
    r"(?P<k>\b[\w.-]*(?:pass(?:word|wd|phrase)|secret|token|key)[\w.-]*)(?P<sep>\s*=\s*)"
    r"(?P<v>\"[^\"]*\"|'[^']*'|[^\s,;&]+)",
    re.IGNORECASE,
)
_URL_USERINFO = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]+:)[^@/\s]+(?P<at>@)", re.I)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "warn": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact(value: Any) -> Any:
    """Return ``value`` with every secret-looking mapping key's value replaced by ``***``.

    Recurses into mappings, lists and tuples; strings are scrubbed with :func:`redact_text`.
    """
    if isinstance(value, Mapping):
        return {
            k: REDACTED if isinstance(k, str) and is_secret_name(k) else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(redact(v) for v in value)
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """Scrub ``password=...``-style assignments and URL credentials out of free text."""
    if "=" in text:
        text = _SECRET_ASSIGN.sub(lambda m: f"{m['k']}{m['sep']}{REDACTED}", text)
    if "://" in text:
        text = _URL_USERINFO.sub(lambda m: f"{m['pre']}{REDACTED}{m['at']}", text)
    return text


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The structured fields of ``record`` (its ``extra`` minus cause/suppressed)."""
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _RESERVED and k not in _OWN and not k.startswith("_")
    }


class RedactFilter(logging.Filter):
    """Replace secrets in a record's fields, mapping args and message text, in place.

    Runs as a handler filter so it also covers records from third-party libraries.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in record_fields(record).items():
            if is_secret_name(k):
                setattr(record, k, REDACTED)
            elif isinstance(v, Mapping | list | tuple | str):
                setattr(record, k, redact(v))
        if isinstance(record.args, Mapping):  # logger.info("%(password)s", {...})
            record.args = redact(record.args)
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: let the handler report it as usual
            return True
        scrubbed = redact_text(message)
        if scrubbed != message:
            # Freeze the scrubbed text; the rate limiter has already keyed on the template.
            record.msg, record.args = scrubbed, None
        return True


class _Window:
    __slots__ = ("times", "pending")

    def __init__(self) -> None:
        self.times: deque[float] = deque()
        self.pending = 0


class RateLimitFilter(logging.Filter):
    """At most ``burst`` records per ``per`` seconds per cause (sliding window).

    The key is the record's ``cause`` or, without one, logger name + message template
    (``record.msg`` before %-formatting, so ``"read %s failed"`` is one key whatever the
    argument). Dropped records are counted; the next record let through for that key gets a
    ``suppressed`` attribute with how many were dropped since the last one shown.
    """

    # Beyond this many distinct keys, idle ones are forgotten so a cause built from data
    # (a device id...) cannot grow the state without bound.
    MAX_KEYS = 1024

    def __init__(self, burst: int = 5, per: float = 60.0, clock: Clock = time.monotonic):
        super().__init__()
        if burst < 1:
            raise ValueError(f"burst must be >= 1, got {burst}")
        if not per > 0:
            raise ValueError(f"per must be > 0, got {per}")
        self.burst = burst
        self.per = float(per)
        self.clock = clock
        self._windows: dict[str, _Window] = {}
        self._totals: dict[str, int] = {}
        # Handlers may be called from executor threads.
        self._lock = threading.Lock()

    @staticmethod
    def key(record: logging.LogRecord) -> str:
        cause = getattr(record, "cause", None)
        if cause:
            return str(cause)
        return f"{record.name}:{record.msg}"

    def filter(self, record: logging.LogRecord) -> bool:
        key = self.key(record)
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is None:
                if len(self._windows) >= self.MAX_KEYS:
                    self._prune(now)
                window = self._windows[key] = _Window()
            times = window.times
            while times and now - times[0] >= self.per:
                times.popleft()
            if len(times) >= self.burst:
                window.pending += 1
                self._totals[key] = self._totals.get(key, 0) + 1
                return False
            times.append(now)
            if window.pending:
                record.suppressed = window.pending
                window.pending = 0
            return True

    def _prune(self, now: float) -> None:
        idle = [
            k
            for k, w in self._windows.items()
            if not w.pending and (not w.times or now - w.times[-1] >= self.per)
        ]
        for k in idle:
            del self._windows[k]

    def suppressed_counts(self) -> dict[str, int]:
        """Total records dropped per key since start (for the health state)."""
        with self._lock:
            return dict(self._totals)


def _iso(ts: float, millis: bool = False) -> str:
    dt = datetime.fromtimestamp(ts, UTC)
    if millis:
        return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _text_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    # Quote only when needed, so the common case stays grep-friendly.
    if not text or any(c.isspace() or c in '"=' for c in text):
        return json.dumps(text, ensure_ascii=False)
    return text


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger>: <msg>[ (N similar messages suppressed)] cause=.. k=v``."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [f"{_iso(record.created)} {record.levelname} {record.name}: {record.getMessage()}"]
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            parts.append(f"({suppressed} similar messages suppressed)")
        cause = getattr(record, "cause", None)
        if cause:
            parts.append(f"cause={_text_value(cause)}")
        parts.extend(f"{k}={_text_value(v)}" for k, v in record_fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            line += "\n" + self.formatStack(record.stack_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, cause, fields (+ exc)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        suppressed = getattr(record, "suppressed", 0)
        if suppressed:
            fields["suppressed"] = suppressed
        obj: dict[str, Any] = {
            "ts": _iso(record.created, millis=True),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "cause": getattr(record, "cause", None),
            "fields": fields,
        }
        if record.exc_info:
            obj["exc"] = self.formatException(record.exc_info)
        # default=str: a field holding an exception or a Path must not break logging.
        return json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))


_state_lock = threading.Lock()
_handler: logging.Handler | None = None
_limiter: RateLimitFilter | None = None


def setup_logging(
    level: str = "info",
    fmt: str = "text",
    burst: int = 5,
    per: float = 60.0,
    stream: IO[str] | None = None,
    *,
    clock: Clock = time.monotonic,
) -> logging.Handler:
    """Install the agent's handler on the root logger (replacing a previous one).

    Returns the handler; :func:`suppressed_counts` reads its rate limiter.
    """
    global _handler, _limiter
    try:
        lvl = _LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {level!r}; use one of {sorted(_LEVELS)}") from None
    formatter: logging.Formatter
    if fmt == "text":
        formatter = TextFormatter()
    elif fmt == "json":
        formatter = JsonFormatter()
    else:
        raise ValueError(f"unknown log format {fmt!r}; use 'text' or 'json'")

    limiter = RateLimitFilter(burst, per, clock)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(formatter)
    # Rate limit first: a dropped record costs no redaction work.
    handler.addFilter(limiter)
    handler.addFilter(RedactFilter())

    root = logging.getLogger()
    with _state_lock:
        if _handler is not None:
            root.removeHandler(_handler)
            _handler.close()
        root.addHandler(handler)
        root.setLevel(lvl)
        _handler, _limiter = handler, limiter
    return handler


def suppressed_counts() -> dict[str, int]:
    """Records dropped by the installed rate limiter, per cause, since setup."""
    limiter = _limiter
    return limiter.suppressed_counts() if limiter is not None else {}


def log_event(
    logger: logging.Logger,
    level: int | str,
    cause: str,
    msg: str,
    *args: Any,
    exc_info: Any = None,
    **fields: Any,
) -> None:
    """``logger.log`` with a cause and structured fields.

    Field names that collide with LogRecord attributes (``name``, ``msg``...) get a trailing
    underscore instead of making ``logging`` raise.
    """
    lvl = _LEVELS[level.lower()] if isinstance(level, str) else level
    if not logger.isEnabledFor(lvl):
        return
    extra = {(f"{k}_" if k in _RESERVED or k in _OWN else k): v for k, v in fields.items()}
    extra["cause"] = cause
    logger.log(lvl, msg, *args, exc_info=exc_info, extra=extra, stacklevel=2)
