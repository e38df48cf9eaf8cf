"""The configuration vault: versions on disk, and which one runs, is being tried, or is good.

A remote configuration goes through ``stage`` (kept under ``versions/``), ``begin`` (it
becomes the file at ``config_path``), then ``commit`` after the health window, or
``rollback``. The running file stays where an installer expects it; the vault keeps the
history beside the data::

    <data_dir>/control/
        control.json        running, good and pending versions, acks not yet delivered
        versions/0.toml     the installer's file, as it was before the first remote version
        versions/<N>.toml   version N, as written to config_path
        versions/<N>.cose   the signed bundle it came from (proof of who sent it)

Crash safety rests on two facts: every file is replaced by ``rename`` of a fsynced
temporary (so it holds either the old or the new bytes, never a mix), and ``begin`` records
the pending version *before* it touches ``config_path``. Whatever instant the agent dies
at, the next boot finds either no pending version (the file is the good one) or a pending
one, which it undoes, unless the agent had planned that restart itself (a section that
cannot change live): then it gets one boot to prove the new file, and a second death rolls
it back too.

Calls block on fsync (a few ms on an SD card); an asyncio caller runs them in a thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import time
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard

__all__ = [
    "BootDecision",
    "ConfigVault",
    "Pending",
    "VaultError",
    "config_hash",
    "write_atomic",
]

log = logging.getLogger("passerelle.control")

FORMAT = 1
FILE_MODE = 0o640  # configs hold paths and may hold LoRaWAN session keys: not world-readable
DIR_MODE = 0o750
# An offline gateway pushed at for weeks must not grow control.json without bound.
MAX_QUEUED_ACKS = 200
_TMP_SUFFIX = ".tmp"


class VaultError(Exception):
    """A vault operation that does not make sense in the current state (a caller's bug)."""


def _temp_name(path: Path) -> Path:
    # Hidden, in the same directory (rename must not cross filesystems), recognisable at boot.
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{_TMP_SUFFIX}")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = FILE_MODE) -> None:
    """Replace ``path`` with ``data`` so that a crash leaves the old or the new bytes.

    Temporary file beside ``path`` (O_EXCL, ``mode`` set before any byte is written, whatever
    the umask), write, fsync, rename over ``path``, fsync the directory so the rename itself
    survives a power cut. On any error before the rename the temporary is removed, ``path``
    is untouched and the error propagates. An error from the final directory fsync also
    propagates, but the new bytes are then already in place.
    """
    path = Path(path)
    tmp = _temp_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def config_hash(data: bytes) -> str:
    """SHA-256 hex of a configuration file's bytes (what the ``state`` topic shows)."""
    return hashlib.sha256(data).hexdigest()


@dataclass
class Pending:
    """A version written to ``config_path`` and not yet committed."""

    version: int
    previous: int | None  # the committed version it replaces; None: the installer's file (0)
    started: float  # unix time the apply began
    restart_planned: bool  # the agent re-executes itself to load it
    boots: int  # agent starts since it was written


@dataclass
class BootDecision:
    """What :meth:`ConfigVault.recover_at_boot` did before the configuration is loaded."""

    config_path: Path
    rolled_back: int | None  # the pending version undone at this boot
    resume: Pending | None  # a planned restart: continue its health window with the new file
    why: str | None


def _pending_from(raw: Any) -> Pending | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValueError("pending is not an object")
    version, previous = raw.get("version"), raw.get("previous")
    started, planned, boots = raw.get("started"), raw.get("restart_planned"), raw.get("boots")
    if not _is_version(version) or version < 1:
        raise ValueError(f"pending.version {version!r} is not a version >= 1")
    if previous is not None and not _is_version(previous):
        raise ValueError(f"pending.previous {previous!r} is not a version")
    if not isinstance(started, (int, float)) or isinstance(started, bool):
        raise ValueError(f"pending.started {started!r} is not a time")
    if not isinstance(planned, bool):
        raise ValueError(f"pending.restart_planned {planned!r} is not a boolean")
    if not _is_version(boots):
        raise ValueError(f"pending.boots {boots!r} is not a count")
    return Pending(version, previous, float(started), planned, boots)


def _is_version(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class ConfigVault:
    """The versions of the configuration file and the state of the one being applied.

    config_path: the running configuration file (the installer's, replaced remotely).
    state_dir: ``<data_dir>/control``; created with ``versions/`` inside (mode 0750).
    keep: how many remote versions to keep besides the good one and the installer's file.
    gateway_id: put in the acks the vault queues itself (a rollback decided at boot).

    Constructing a vault only reads; the agent calls :meth:`recover_at_boot` once, before it
    loads the configuration. Not safe for two processes to drive at once.
    """

    def __init__(
        self, config_path: Path, state_dir: Path, keep: int = 5, *, gateway_id: str | None = None
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, not {keep}")
        self.config_path = Path(config_path)
        self.state_dir = Path(state_dir)
        self.versions_dir = self.state_dir / "versions"
        self.state_path = self.state_dir / "control.json"
        self.keep = keep
        self.gateway_id = gateway_id
        for directory in (self.state_dir, self.versions_dir):
            directory.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if directory.stat().st_mode & 0o027:
                os.chmod(directory, DIR_MODE)
        self.running: int | None = None
        self.good: int | None = None
        self.pending: Pending | None = None
        self.last_rollback: dict[str, Any] | None = None
        self._highest = 0  # the highest version ever begun: the anti-replay floor
        self._acks: list[dict[str, Any]] = []
        self._state_error: str | None = None
        self._load()

    # -- persistent state ---------------------------------------------------------------

    def _load(self) -> None:
        try:
            raw = json.loads(self.state_path.read_bytes())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            self._state_unreadable(f"{type(exc).__name__}: {exc}")
            return
        try:
            self._apply_state(raw)
        except (ValueError, TypeError) as exc:
            self._state_unreadable(str(exc))

    def _apply_state(self, raw: Any) -> None:
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
        if raw.get("format") != FORMAT:
            raise ValueError(f"format {raw.get('format')!r}, this agent reads {FORMAT}")
        running, good = raw.get("running"), raw.get("good")
        for key, value in (("running", running), ("good", good)):
            if value is not None and not _is_version(value):
                raise ValueError(f"{key} {value!r} is not a version")
        pending = _pending_from(raw.get("pending"))
        acks = raw.get("acks", [])
        if not isinstance(acks, list) or not all(isinstance(a, dict) for a in acks):
            raise ValueError("acks is not a list of objects")
        last = raw.get("last_rollback")
        if last is not None and not isinstance(last, dict):
            raise ValueError("last_rollback is not an object")
        highest = raw.get("highest", 0)
        if not _is_version(highest):
            raise ValueError(f"highest {highest!r} is not a version")
        self.running, self.good, self.pending = running, good, pending
        self._highest = highest
        self._acks, self.last_rollback = acks, last

    def _state_unreadable(self, why: str) -> None:
        log.error(
            "%s unreadable (%s): starting from an empty control state, config file kept",
            self.state_path,
            why,
            extra={"cause": "control.state_corrupt"},
        )
        self._state_error = why
        # The file on disk is a fact even when the bookkeeping is lost: if its bytes are a
        # stored version, that is what runs, and the floor for rollbacks and anti-replay.
        inferred = self._stored_version_of_file()
        self.running = self.good = inferred or None
        # Without the recorded floor, every version still on disk counts as seen: an old
        # bundle replayed after this must still be refused.
        self._highest = max(self._stored_numbers(), default=0)

    def _stored_version_of_file(self) -> int | None:
        try:
            current = self.config_path.read_bytes()
        except OSError:
            return None
        for version in sorted(self._stored_numbers(), reverse=True):
            with contextlib.suppress(OSError):
                if self._toml_path(version).read_bytes() == current:
                    return version
        return None

    def _save(self) -> None:
        state = {
            "format": FORMAT,
            "running": self.running,
            "good": self.good,
            "highest": self._highest,
            "pending": asdict(self.pending) if self.pending else None,
            "last_rollback": self.last_rollback,
            "acks": self._acks,
        }
        write_atomic(self.state_path, json.dumps(state, indent=1).encode() + b"\n")

    # -- versions on disk ---------------------------------------------------------------

    def _toml_path(self, version: int) -> Path:
        return self.versions_dir / f"{version}.toml"

    def _cose_path(self, version: int) -> Path:
        return self.versions_dir / f"{version}.cose"

    def _stored_numbers(self) -> set[int]:
        numbers: set[int] = set()
        for entry in self.versions_dir.glob("*.toml"):
            if entry.stem.isdecimal():
                numbers.add(int(entry.stem))
        return numbers

    def versions(self) -> list[int]:
        """Remote versions stored complete (TOML and bundle), oldest first."""
        return sorted(v for v in self._stored_numbers() if v >= 1 and self.has(v))

    def has(self, version: int) -> bool:
        """True if version ``version`` (>= 1) is stored with its signed bundle."""
        if version < 1:
            return False
        return self._toml_path(version).is_file() and self._cose_path(version).is_file()

    def bundle(self, version: int) -> bytes:
        """The signed bundle version ``version`` came from (FileNotFoundError if not kept)."""
        return self._cose_path(version).read_bytes()

    def digest(self, version: int) -> str | None:
        """SHA-256 hex of version ``version``'s signed bundle bytes; None if not kept.

        Equal to ``config_hash(bundle)`` of a bundle pushed again: the duplicate test.
        """
        try:
            return config_hash(self.bundle(version))
        except OSError:
            return None

    def highest(self) -> int:
        """The highest version ever begun here (0: none): a new version must exceed it.

        Kept in control.json, so pruning old versions does not lower it.
        """
        pending = self.pending.version if self.pending else 0
        return max(self._highest, self.good or 0, self.running or 0, pending)

    def file_hash(self) -> str:
        """SHA-256 hex of the bytes now at ``config_path`` (OSError if it cannot be read)."""
        return config_hash(self.config_path.read_bytes())

    def stage(self, version: int, toml_text: bytes, bundle: bytes) -> None:
        """Keep version ``version``: its TOML and the signed bundle, each written atomically.

        The first stage ever also keeps the installer's file as ``versions/0.toml``, the
        rollback target while no remote version was ever committed.
        """
        if not _is_version(version) or version < 1:
            raise ValueError(f"version must be an integer >= 1, not {version!r}")
        try:
            tomllib.loads(toml_text.decode())
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"version {version}: not a UTF-8 TOML document: {exc}") from exc
        protected = {self.good} | ({self.pending.version} if self.pending else set())
        if version in protected and self.has(version):
            if self._toml_path(version).read_bytes() != toml_text:
                raise VaultError(
                    f"version {version} is {'good' if version == self.good else 'pending'}; "
                    "its stored file cannot be replaced by different bytes"
                )
            return
        if not self._toml_path(0).exists():
            self._keep_installer_file()
        write_atomic(self._toml_path(version), toml_text)
        write_atomic(self._cose_path(version), bundle)

    def _keep_installer_file(self) -> None:
        try:
            installer = self.config_path.read_bytes()
        except FileNotFoundError:
            log.warning(
                "%s does not exist: no installer's file to keep as version 0",
                self.config_path,
                extra={"cause": "control.no_local_file"},
            )
            return
        write_atomic(self._toml_path(0), installer)

    # -- the apply sequence -------------------------------------------------------------

    def begin(self, version: int, *, restart_planned: bool = False) -> None:
        """Start trying ``version``: record it as pending (durably), then install its file."""
        if self.pending is not None:
            raise VaultError(
                f"version {self.pending.version} is still pending; commit or roll it back first"
            )
        if not self.has(version):
            raise VaultError(f"version {version} is not staged")
        if self.good is None:
            # Still the installer's file: keep it as it is now (it may have been edited
            # since the first stage), it is what a rollback must bring back.
            self._refresh_installer_copy()
        elif not self._file_is(self.good):
            log.warning(
                "%s differs from good version %d (edited locally?); a rollback restores %d",
                self.config_path,
                self.good,
                self.good,
                extra={"cause": "control.local_edit"},
            )
        floor = self._highest
        self.pending = Pending(version, self.good, time.time(), restart_planned, 0)
        self._highest = max(floor, version)
        self._save()
        try:
            write_atomic(self.config_path, self._toml_path(version).read_bytes())
        except BaseException:
            # config_path is untouched: nothing to undo, nothing pending, the version unused.
            self.pending = None
            self._highest = floor
            with contextlib.suppress(OSError):
                self._save()  # if this fails too, the next boot's rollback is harmless
            raise
        self.running = version
        self._save()

    def _refresh_installer_copy(self) -> None:
        try:
            current = self.config_path.read_bytes()
        except FileNotFoundError:
            return
        zero = self._toml_path(0)
        with contextlib.suppress(FileNotFoundError):
            if zero.read_bytes() == current:
                return
        write_atomic(zero, current)

    def commit(self) -> None:
        """The pending version passed its health window: it is the good one now."""
        if self.pending is None:
            raise VaultError("nothing pending to commit")
        self.good = self.running = self.pending.version
        self.pending = None
        self._save()
        self._prune()

    def rollback(self, why: str) -> int | None:
        """Undo the pending version: the previous file back at ``config_path``.

        Returns the version now running (None: the installer's file). Without a pending
        version nothing changes.
        """
        pending = self.pending
        if pending is None:
            log.warning(
                "rollback asked with nothing pending (%s)", why, extra={"cause": "control.rollback"}
            )
            return self.running
        restored = self._undo(pending, why)
        self._save()
        return restored

    def _undo(self, pending: Pending, why: str) -> int | None:
        # The caller saves: at boot the ack for the operator goes into the same write.
        restored = self._restore(pending.previous)
        self.pending = None
        self.running = restored
        self.last_rollback = {"version": pending.version, "why": why, "time": time.time()}
        log.warning(
            "version %d rolled back to %s: %s",
            pending.version,
            "the local file" if restored is None else f"version {restored}",
            why,
            extra={"cause": "control.rollback"},
        )
        return restored

    def _restore(self, version: int | None) -> int | None:
        """Put ``version``'s file (None: the installer's) back; returns what is now there."""
        source = self._toml_path(0 if version is None else version)
        try:
            data = source.read_bytes()
            tomllib.loads(data.decode())
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            if version is not None:
                log.error(
                    "cannot restore version %d from %s (%s); restoring the installer's file",
                    version,
                    source,
                    exc,
                    extra={"cause": "control.restore"},
                )
                return self._restore(None)
            log.error(
                "cannot restore the installer's file from %s (%s); %s left as it is",
                source,
                exc,
                self.config_path,
                extra={"cause": "control.restore"},
            )
            return self._stored_version_of_file() or None
        write_atomic(self.config_path, data)
        return version

    def _prune(self) -> None:
        stored = sorted((v for v in self._stored_numbers() if v >= 1), reverse=True)
        keep = set(stored[: self.keep]) | {0}
        keep |= {v for v in (self.good, self.running) if v is not None}
        if self.pending is not None:
            keep.add(self.pending.version)
        for version in stored:
            if version not in keep:
                for path in (self._toml_path(version), self._cose_path(version)):
                    with contextlib.suppress(FileNotFoundError):
                        path.unlink()

    # -- boot ---------------------------------------------------------------------------

    def recover_at_boot(self) -> BootDecision:
        """Decide, before the configuration is loaded, which file this boot runs."""
        self._remove_stale_temporaries()
        why: str | None = None
        if self._state_error is not None:
            why = f"control state unreadable ({self._state_error}); config file kept"
            with contextlib.suppress(OSError):
                os.replace(self.state_path, self.state_path.with_name("control.json.corrupt"))
            self._state_error = None
            self._save()
        pending = self.pending
        if pending is not None:
            if pending.restart_planned and pending.boots == 0 and self._file_is(pending.version):
                pending.boots = 1
                self.running = pending.version
                self._save()
                log.info(
                    "resuming the health window of version %d after the planned restart",
                    pending.version,
                    extra={"cause": "control.resume"},
                )
                return BootDecision(self.config_path, None, pending, None)
            if pending.restart_planned and pending.boots >= 1:
                text = (
                    f"the agent stopped again after the planned restart for version "
                    f"{pending.version}, before it committed"
                )
            else:
                text = (
                    f"the agent stopped while version {pending.version} was being applied "
                    "or in its health window"
                )
            restored = self._undo(pending, text)
            text += f"; {'the local file' if restored is None else f'version {restored}'} restored"
            self._enqueue(self._boot_ack(pending.version, text))
            self._save()  # one write: the rollback and its ack are never known apart
            return BootDecision(self.config_path, pending.version, None, text)
        if not self.config_path.exists():
            restored = self._restore(self.good)
            if self.config_path.exists():
                self.running = restored
                self._save()
                why = (
                    f"{self.config_path} was missing; "
                    f"{'the local file' if restored is None else f'version {restored}'} restored"
                )
                log.error("%s", why, extra={"cause": "control.restore"})
        return BootDecision(self.config_path, None, None, why)

    def _file_is(self, version: int) -> bool:
        try:
            return self.config_path.read_bytes() == self._toml_path(version).read_bytes()
        except OSError:
            return False

    def _boot_ack(self, version: int, text: str) -> dict[str, Any]:
        try:
            running_hash: str | None = self.file_hash()
        except OSError:
            running_hash = None
        return {
            "_topic": "config/ack",
            "gateway": self.gateway_id,
            "version": version,
            "status": "rolled_back",
            "reason": "agent_restarted",
            "text": text,
            "hash": running_hash,
            "time": round(time.time(), 3),
        }

    def _remove_stale_temporaries(self) -> None:
        # Left by a write_atomic that died between creating its temporary and the rename.
        candidates = [
            *self.config_path.parent.glob(f".{self.config_path.name}.*{_TMP_SUFFIX}"),
            *self.state_dir.glob(f".*{_TMP_SUFFIX}"),
            *self.versions_dir.glob(f".*{_TMP_SUFFIX}"),
        ]
        for path in candidates:
            if path.is_file():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    # -- acks waiting for the uplink ----------------------------------------------------

    def queue_ack(self, ack: dict[str, Any]) -> None:
        """Keep ``ack`` (JSON-serialisable) on disk until :meth:`acks_sent` says it went."""
        json.dumps(ack)  # a TypeError here, not a control.json that cannot be written later
        self._enqueue(ack)
        self._save()

    def _enqueue(self, ack: dict[str, Any]) -> None:
        self._acks.append(dict(ack))
        if len(self._acks) > MAX_QUEUED_ACKS:
            dropped = len(self._acks) - MAX_QUEUED_ACKS
            del self._acks[:dropped]
            log.warning(
                "%d oldest undelivered acks dropped (queue full)",
                dropped,
                extra={"cause": "control.ack_dropped"},
            )

    def acks(self) -> list[dict[str, Any]]:
        """Acks not yet delivered, oldest first (copies)."""
        return [dict(a) for a in self._acks]

    def acks_sent(self, n: int) -> None:
        """The first ``n`` queued acks were published."""
        if n <= 0:
            return
        del self._acks[:n]
        self._save()

    def status(self) -> dict[str, Any]:
        """The ``config`` part of the retained ``state`` (hash None if the file is unreadable)."""
        try:
            file_hash: str | None = self.file_hash()
        except OSError:
            file_hash = None
        return {
            "version": self.running,
            "hash": file_hash,
            "pending": self.pending.version if self.pending else None,
            "good": self.good,
        }
