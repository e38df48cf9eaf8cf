"""Run a real mosquitto broker as a subprocess, for tests, benchmarks and demos.

Standard library only. Typical use::

    pki = make_pki(tmp / "pki")
    with Mosquitto(pki, workdir=tmp / "broker") as broker:
        ...  # connect to broker.host:broker.tls_port with the client certificate

The TLS listener requires a client certificate signed by the PKI's CA and maps the
certificate's CN to the MQTT username (``use_identity_as_username``). The optional
plaintext listener allows anonymous clients. Both listen on 127.0.0.1 only, on free
ports chosen at the first :meth:`Mosquitto.start`; :meth:`Mosquitto.restart` reuses
them so that clients can reconnect to the same address.
"""

from __future__ import annotations

import atexit
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:  # keep this module free of third-party imports at run time
    from hil.pki import Pki

__all__ = ["Mosquitto", "MosquittoError", "MosquittoNotFound", "find_mosquitto"]

LOOPBACK = "127.0.0.1"
#: Host name that clients should use: it matches the server certificate's SAN.
HOST = "localhost"

_DEFAULT_LOG_TYPES = ("error", "warning", "notice", "information")


class MosquittoError(RuntimeError):
    """The broker could not be started or did not behave."""


class MosquittoNotFound(MosquittoError):
    """No mosquitto executable on this machine."""


def find_mosquitto() -> str | None:
    """Path of the mosquitto executable, or None.

    Looks in ``$MOSQUITTO`` (explicit override), ``$PATH``, then ``/usr/sbin`` and
    ``/usr/local/sbin`` (Debian installs it in ``/usr/sbin``, which is not on a normal
    user's ``$PATH``).
    """
    env = os.environ.get("MOSQUITTO")
    if env:
        return env if os.access(env, os.X_OK) else None
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does
        try:
            s.bind((LOOPBACK, port))
        except OSError:
            return False
        return True


def _free_port(avoid: Iterable[int] = ()) -> int:
    """A free loopback port *outside* the ephemeral range.

    The broker keeps its ports across restarts. A port from the ephemeral range could,
    while the broker is down, become the source port of some client's outgoing
    connection -- even the source port of a client reconnecting to that very port
    (TCP self-connect) -- and the restart would fail with "address in use".
    """
    low, _high = _ephemeral_range()
    avoid = set(avoid)
    if low > 2048:
        first = max(1024, low - 16384)
        for _ in range(100):
            port = random.randrange(first, low)
            if port not in avoid and _bindable(port):
                return port
    while True:  # fallback: let the kernel choose
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((LOOPBACK, 0))
            port = s.getsockname()[1]
        if port not in avoid:
            return port


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-limit:]


_live: weakref.WeakSet[Mosquitto] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:  # pragma: no cover - only matters when a test forgot
    for broker in list(_live):
        try:
            broker.kill()
        except Exception:  # noqa: BLE001,S110 - best effort at interpreter exit
            pass


class Mosquitto:
    """A mosquitto broker subprocess with a TLS listener and/or a plaintext listener.

    Args:
        pki: PKI whose ``ca_cert``/``server_cert``/``server_key`` the TLS listener uses.
            ``None`` means no TLS listener (then ``plain`` must be true).
        plain: also open a plaintext listener that allows anonymous clients.
        workdir: directory for ``mosquitto.conf`` and the logs. Default: a new temp
            dir, removed by :meth:`cleanup` (and on leaving the ``with`` block).
        persistence_dir: enable persistence, storing ``mosquitto.db`` there. Off by
            default (every start is a fresh broker).
        autosave_interval: with persistence, seconds between saves (mosquitto
            otherwise saves only on a clean shutdown, so :meth:`kill` loses state).
        tls_port, plain_port: fixed ports instead of free ones picked at first start.
        verbose: also log mosquitto's debug messages (every packet).
        extra_conf: lines appended to the global part of ``mosquitto.conf`` (e.g.
            ``["max_inflight_messages 1"]``).
        executable: path of mosquitto; default :func:`find_mosquitto`.
    """

    def __init__(
        self,
        pki: Pki | None,
        *,
        plain: bool = True,
        workdir: Path | str | None = None,
        persistence_dir: Path | str | None = None,
        autosave_interval: int | None = None,
        tls_port: int | None = None,
        plain_port: int | None = None,
        verbose: bool = False,
        extra_conf: Iterable[str] = (),
        executable: str | None = None,
    ) -> None:
        if pki is None and not plain:
            raise ValueError("a broker needs a TLS listener (pki) or a plaintext one")
        self.pki = pki
        self.plain = plain
        self.persistence_dir = Path(persistence_dir) if persistence_dir is not None else None
        self.autosave_interval = autosave_interval
        self.verbose = verbose
        self.extra_conf = list(extra_conf)
        self._executable = executable
        self._fixed_ports = tls_port is not None or plain_port is not None
        self._tls_port = tls_port
        self._plain_port = plain_port
        self._owns_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="passerelle-mosquitto-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.conf_path = self.workdir / "mosquitto.conf"
        #: mosquitto's own log (``log_dest file``): connections, TLS errors, ...
        self.log_path = self.workdir / "mosquitto.log"
        #: stdout/stderr of the process (config errors before logging is set up).
        self.stderr_path = self.workdir / "mosquitto.stderr"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # ------------------------------------------------------------------ properties

    @property
    def host(self) -> str:
        return HOST

    @property
    def tls_port(self) -> int:
        if self.pki is None:
            raise MosquittoError("this broker has no TLS listener")
        if self._tls_port is None:
            raise MosquittoError("broker not started yet: no port chosen")
        return self._tls_port

    @property
    def plain_port(self) -> int:
        if not self.plain:
            raise MosquittoError("this broker has no plaintext listener")
        if self._plain_port is None:
            raise MosquittoError("broker not started yet: no port chosen")
        return self._plain_port

    @property
    def url(self) -> str:
        """``mqtts://localhost:<tls_port>``."""
        return f"mqtts://{HOST}:{self.tls_port}"

    @property
    def plain_url(self) -> str:
        """``mqtt://localhost:<plain_port>``."""
        return f"mqtt://{HOST}:{self.plain_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def executable(self) -> str:
        exe = self._executable or find_mosquitto()
        if not exe:
            raise MosquittoNotFound(
                "mosquitto not found (looked in $MOSQUITTO, $PATH, /usr/sbin): "
                "install the Debian package 'mosquitto'"
            )
        return exe

    def log_text(self) -> str:
        """mosquitto's log so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    # --------------------------------------------------------------- configuration

    def _choose_ports(self) -> None:
        if self.pki is not None and self._tls_port is None:
            self._tls_port = _free_port(avoid=[self._plain_port or 0])
        if self.plain and self._plain_port is None:
            self._plain_port = _free_port(avoid=[self._tls_port or 0])

    def config_text(self) -> str:
        """The mosquitto.conf that :meth:`start` writes."""
        # mosquitto started as root drops privileges to the 'mosquitto' user before it
        # reads the certificates: it could not read our 0600 keys. Tell it to stay the
        # user we are (no effect when not root).
        user = pwd.getpwuid(os.geteuid()).pw_name
        log_types = list(_DEFAULT_LOG_TYPES) + (["debug"] if self.verbose else [])
        lines = [
            "# written by hil.mosquitto - do not edit, it is rewritten on every start",
            f"user {user}",
            "per_listener_settings true",
            f"log_dest file {self.log_path}",
            *(f"log_type {t}" for t in log_types),
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "connection_messages true",
        ]
        if self.persistence_dir is not None:
            self.persistence_dir.mkdir(parents=True, exist_ok=True)
            lines += ["persistence true", f"persistence_location {self.persistence_dir}/"]
            if self.autosave_interval is not None:
                lines.append(f"autosave_interval {int(self.autosave_interval)}")
        else:
            lines.append("persistence false")
        lines += self.extra_conf
        if self.pki is not None:
            lines += [
                "",
                f"listener {self.tls_port} {LOOPBACK}",
                f"cafile {self.pki.ca_cert}",
                f"certfile {self.pki.server_cert}",
                f"keyfile {self.pki.server_key}",
                "require_certificate true",
                "use_identity_as_username true",
                # clients are identified by their certificate, never anonymous
                "allow_anonymous false",
            ]
        if self.plain:
            lines += ["", f"listener {self.plain_port} {LOOPBACK}", "allow_anonymous true"]
        text = "\n".join(lines) + "\n"
        for path in (self.log_path, self.persistence_dir, *self._pki_paths()):
            if path is not None and any(c.isspace() for c in str(path)):
                raise MosquittoError(f"mosquitto.conf cannot take a path with spaces: {path}")
        return text

    def _pki_paths(self) -> list[Path]:
        if self.pki is None:
            return []
        return [self.pki.ca_cert, self.pki.server_cert, self.pki.server_key]

    # ------------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 10.0) -> Self:
        """Start mosquitto and wait until it listens on every port (its "running" line).

        Raises :class:`MosquittoError` with mosquitto's output if it exits or does
        not listen within ``timeout`` seconds.
        """
        if self.running:
            raise MosquittoError("mosquitto is already running")
        exe = self.executable
        first = self._tls_port is None and self._plain_port is None
        attempts = 3 if first and not self._fixed_ports else 1
        for attempt in range(attempts):
            self._choose_ports()
            try:
                self._start_once(exe, timeout)
                return self
            except MosquittoError as exc:
                # A free port can be taken by someone else between our probe and
                # mosquitto's bind: pick new ones, but only before the first success
                # (restart() must keep the ports).
                if attempt + 1 < attempts and "in use" in str(exc):
                    self._tls_port = self._plain_port = None
                    continue
                raise
        raise AssertionError("unreachable")

    def _start_once(self, exe: str, timeout: float) -> None:
        self.conf_path.write_text(self.config_text())
        # Readiness is mosquitto's own "running" line, logged once every listener is
        # bound and listening. Probing the ports instead would be fooled by another
        # process that already listens on one (mosquitto then exits: address in use).
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        with open(self.stderr_path, "ab") as err:
            self._proc = subprocess.Popen(
                [exe, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                close_fds=True,
            )
        _live.add(self)
        self.starts += 1
        deadline = time.monotonic() + timeout
        delay = 0.005
        while True:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                _live.discard(self)
                raise MosquittoError(
                    f"mosquitto exited with status {code} during start-up\n{self._diagnostics()}"
                )
            if self._logged_running(log_offset):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise MosquittoError(
                    f"mosquitto did not report running within {timeout}s\n{self._diagnostics()}"
                )
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    def _logged_running(self, offset: int) -> bool:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(offset)
                new = f.read()
        except FileNotFoundError:
            return False
        return any(
            line.startswith(b"mosquitto version ") and line.endswith(b" running")
            for line in (raw.partition(b": ")[2].strip() for raw in new.splitlines())
        )

    def _diagnostics(self) -> str:
        return (
            f"--- {self.conf_path}\n{_tail(self.conf_path)}"
            f"--- {self.stderr_path}\n{_tail(self.stderr_path)}"
            f"--- {self.log_path}\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM (clean shutdown: persistence is saved) and wait; SIGKILL if stuck.

        Returns the exit status, or None if it was not running.
        """
        return self._signal_and_wait(signal.SIGTERM, timeout)

    def kill(self) -> int | None:
        """SIGKILL and wait: a crash, nothing is saved."""
        return self._signal_and_wait(signal.SIGKILL, 10.0)

    def _signal_and_wait(self, sig: signal.Signals, timeout: float) -> int | None:
        proc = self._proc
        if proc is None:
            return None
        self._proc = None
        _live.discard(self)
        if proc.poll() is None:
            if sig != signal.SIGKILL:
                os.kill(proc.pid, signal.SIGCONT)  # in case it was paused
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def restart(self, timeout: float = 10.0, *, hard: bool = False) -> Self:
        """Stop (or with ``hard``, kill) and start again on the same ports."""
        if hard:
            self.kill()
        else:
            self.stop()
        return self.start(timeout)

    def pause(self) -> None:
        """SIGSTOP: the broker keeps its sockets open but answers nothing."""
        if not self.running:
            raise MosquittoError("mosquitto is not running")
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if not self.running:
            raise MosquittoError("mosquitto is not running")
        assert self._proc is not None
        self._proc.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        """Stop, and remove the working directory if this object created it."""
        self.stop()
        if self._owns_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        ports = []
        if self.pki is not None and self._tls_port is not None:
            ports.append(f"tls={self._tls_port}")
        if self.plain and self._plain_port is not None:
            ports.append(f"plain={self._plain_port}")
        state = "running" if self.running else "stopped"
        return f"<Mosquitto {state} {' '.join(ports)} workdir={self.workdir}>"
