"""sd_notify(3) without libsystemd: readiness, status and watchdog pings to systemd.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=value`` assignments sent to
``$NOTIFY_SOCKET`` (a filesystem path, or an abstract socket when it starts with ``@``).
Outside systemd the variable is unset and every call is a cheap no-op, so the agent calls
these unconditionally.

Notification failures are logged and swallowed: losing a status line must never take the
agent down (a lost watchdog ping is handled by systemd itself, which is the point).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Mapping

__all__ = ["SystemdNotifier", "run_watchdog"]

log = logging.getLogger(__name__)


def _socket_address(value: str | None) -> str | bytes | None:
    if not value:
        return None
    if value.startswith("@"):
        # Linux abstract namespace: leading NUL, no filesystem entry.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # vsock:... and friends: not something a cabinet gateway runs under.
    log.warning(
        "unsupported NOTIFY_SOCKET %r, notifications disabled",
        value,
        extra={"cause": "systemd.socket"},
    )
    return None


class SystemdNotifier:
    """Send notifications to the service manager named by ``NOTIFY_SOCKET``.

    The environment is read once at construction (``environ`` defaults to ``os.environ``).
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._address = _socket_address(env.get("NOTIFY_SOCKET"))
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``assignments`` in one datagram; True if it was handed to the kernel."""
        if self._address is None:
            return False
        payload = "\n".join(assignments).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                # Never block the event loop on a full socket buffer.
                sock.setblocking(False)
                self._sock = sock
            self._sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sd_notify failed: %s", exc, extra={"cause": "systemd.notify"})
            return False
        return True

    def ready(self) -> bool:
        return self.notify("READY=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def status(self, text: str) -> bool:
        # A newline would start a new assignment; keep the status to one line.
        return self.notify("STATUS=" + " ".join(text.splitlines()))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), or None if not asked."""
        if not self._watchdog_usec:
            return None
        if self._watchdog_pid:
            # The watchdog is meant for another process (e.g. our parent shell).
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 1e6 / 2

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


async def run_watchdog(
    notifier: SystemdNotifier,
    healthy: Callable[[], bool],
    *,
    interval: float | None = None,
) -> None:
    """Ping the watchdog every ``interval`` seconds while ``healthy()`` holds.

    A wedged agent (unhealthy, or an event loop too blocked to run this) stops pinging and
    systemd restarts it. Returns at once when there is no watchdog; otherwise runs until
    cancelled. ``interval`` overrides the one from the environment.
    """
    if interval is None:
        interval = notifier.watchdog_interval()
    if interval is None or not notifier.enabled:
        return
    while True:
        try:
            ok = bool(healthy())
        except Exception:
            log.exception(
                "health check raised; treating as unhealthy", extra={"cause": "systemd.health"}
            )
            ok = False
        if ok:
            notifier.watchdog()
        else:
            log.warning("unhealthy, withholding watchdog ping", extra={"cause": "systemd.health"})
        await asyncio.sleep(interval)
