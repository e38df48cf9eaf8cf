from __future__ import annotations

import asyncio
import os
import secrets
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from passerelle.systemd import SystemdNotifier, run_watchdog


class Receiver:
    """The service manager's end: a bound unix datagram socket."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self, timeout: float = 2.0) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(4096)

    def drain(self) -> list[bytes]:
        self.sock.setblocking(False)
        out = []
        while True:
            try:
                out.append(self.sock.recv(4096))
            except BlockingIOError:
                return out


def _path_receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    cleanup = None
    if len(os.fsencode(path)) > 100:  # sun_path is 108 bytes
        cleanup = tempfile.mkdtemp(prefix="pas-")
        path = Path(cleanup) / "n.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    try:
        yield Receiver(sock, str(path))
    finally:
        sock.close()
        if cleanup:
            path.unlink(missing_ok=True)
            os.rmdir(cleanup)


def _abstract_receiver() -> Iterator[Receiver]:
    if not sys.platform.startswith("linux"):
        pytest.skip("abstract unix sockets are Linux-only")
    name = f"passerelle-test-{secrets.token_hex(8)}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


@pytest.fixture(params=["path", "abstract"])
def receiver(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Receiver]:
    if request.param == "path":
        yield from _path_receiver(tmp_path)
    else:
        yield from _abstract_receiver()


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_exact_datagrams(receiver: Receiver, env: pytest.MonkeyPatch) -> None:
    env.setenv("NOTIFY_SOCKET", receiver.env_value)
    n = SystemdNotifier()
    assert n.enabled
    try:
        assert n.ready()
        assert receiver.recv() == b"READY=1"
        assert n.watchdog()
        assert receiver.recv() == b"WATCHDOG=1"
        assert n.status("draining 1200 records")
        assert receiver.recv() == b"STATUS=draining 1200 records"
        assert n.stopping()
        assert receiver.recv() == b"STOPPING=1"
    finally:
        n.close()


def test_status_stays_one_assignment(receiver: Receiver, env: pytest.MonkeyPatch) -> None:
    env.setenv("NOTIFY_SOCKET", receiver.env_value)
    n = SystemdNotifier()
    n.status("line one\nREADY=1")
    assert receiver.recv() == b"STATUS=line one READY=1"
    n.close()


def test_noop_without_notify_socket(env: pytest.MonkeyPatch) -> None:
    n = SystemdNotifier()
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert not n.status("x")
    assert not n.stopping()
    n.close()


@pytest.mark.parametrize("value", ["", "relative/path", "vsock:2:1234"])
def test_unusable_socket_values_disable(env: pytest.MonkeyPatch, value: str) -> None:
    env.setenv("NOTIFY_SOCKET", value)
    assert not SystemdNotifier().enabled


def test_missing_receiver_does_not_raise(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-here.sock"))
    n = SystemdNotifier()
    assert n.enabled
    assert not n.ready()
    n.close()


def test_explicit_environ_mapping(receiver: Receiver) -> None:
    n = SystemdNotifier({"NOTIFY_SOCKET": receiver.env_value})
    n.ready()
    assert receiver.recv() == b"READY=1"
    n.close()


@pytest.mark.parametrize(
    ("usec", "pid", "expected"),
    [
        (None, None, None),
        ("10000000", None, 5.0),
        ("10000000", "self", 5.0),
        ("10000000", "other", None),
        ("10000000", "junk", None),
        ("0", None, None),
        ("-5", None, None),
        ("soon", None, None),
        ("30000", None, 0.015),
    ],
)
def test_watchdog_interval(
    env: pytest.MonkeyPatch, usec: str | None, pid: str | None, expected: float | None
) -> None:
    if usec is not None:
        env.setenv("WATCHDOG_USEC", usec)
    if pid is not None:
        env.setenv(
            "WATCHDOG_PID",
            {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(pid, pid),
        )
    assert SystemdNotifier().watchdog_interval() == expected


async def test_run_watchdog_pings_only_while_healthy(
    receiver: Receiver, env: pytest.MonkeyPatch
) -> None:
    env.setenv("NOTIFY_SOCKET", receiver.env_value)
    env.setenv("WATCHDOG_USEC", "20000")  # ping every 10 ms
    env.setenv("WATCHDOG_PID", str(os.getpid()))
    n = SystemdNotifier()
    healthy = True
    task = asyncio.create_task(run_watchdog(n, lambda: healthy))
    try:
        await asyncio.sleep(0.15)
        pings = receiver.drain()
        assert len(pings) >= 3
        assert set(pings) == {b"WATCHDOG=1"}

        healthy = False
        await asyncio.sleep(0.02)  # let an in-flight iteration finish
        receiver.drain()
        await asyncio.sleep(0.15)
        assert receiver.drain() == []

        healthy = True
        await asyncio.sleep(0.1)
        assert receiver.drain()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        n.close()


async def test_run_watchdog_treats_raising_check_as_unhealthy(
    receiver: Receiver, env: pytest.MonkeyPatch
) -> None:
    env.setenv("NOTIFY_SOCKET", receiver.env_value)
    n = SystemdNotifier()

    def broken() -> bool:
        raise RuntimeError("health state unavailable")

    task = asyncio.create_task(run_watchdog(n, broken, interval=0.01))
    await asyncio.sleep(0.08)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert receiver.drain() == []
    n.close()


async def test_run_watchdog_returns_without_watchdog(
    receiver: Receiver, env: pytest.MonkeyPatch
) -> None:
    env.setenv("NOTIFY_SOCKET", receiver.env_value)
    await asyncio.wait_for(run_watchdog(SystemdNotifier(), lambda: True), 1.0)
    env.delenv("NOTIFY_SOCKET")
    env.setenv("WATCHDOG_USEC", "20000")
    await asyncio.wait_for(run_watchdog(SystemdNotifier(), lambda: True), 1.0)
    assert receiver.drain() == []
