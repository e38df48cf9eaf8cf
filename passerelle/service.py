"""``passerelle service``: install, show and check the systemd unit shipped in the package.

  passerelle service install [--unit-dir DIR] [--exec PATH] [--config FILE] [--dry-run]
                             [--unit-only] [--enable]
  passerelle service print [--exec PATH] [--config FILE]
  passerelle service verify [--exec PATH] [--config FILE]

``install`` writes ``passerelle.service`` with ExecStart= pointing at this machine's
``passerelle`` executable and SupplementaryGroups= reduced to the groups that exist here (a
missing group would stop the unit from starting), creates the ``passerelle`` system user,
``/var/lib/passerelle`` (0700) and ``/etc/passerelle`` (0750), owned by that user, and prints the
``systemctl`` step; it runs systemctl itself only with ``--enable``. ``--dry-run`` prints every
action without doing any. Exit status: 0 done, 1 ``verify`` found problems, 2 bad arguments,
not root, or an action failed.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path

__all__ = ["UNIT_NAME", "install", "main", "resolve_exec", "unit_text", "verify"]

UNIT_NAME = "passerelle.service"
USER = "passerelle"
DEFAULT_UNIT_DIR = "/etc/systemd/system"
DEFAULT_CONFIG = "/etc/passerelle/passerelle.toml"
STATE_DIR = Path("/var/lib/passerelle")
CONFIG_DIR = Path("/etc/passerelle")
# The data directory holds the store and LoRaWAN session keys: the agent's alone (the store
# creates it 0700 too). The configuration directory is readable by the agent's group.
STATE_DIR_MODE = 0o700
CONFIG_DIR_MODE = 0o750
NOLOGIN = "/usr/sbin/nologin"
NEXT_STEP = "systemctl daemon-reload && systemctl enable --now passerelle"

# ProtectHome=yes hides these from the service: an executable there cannot start.
_HIDDEN_BY_PROTECT_HOME = ("/home/", "/root/", "/run/user/")


class ServiceError(Exception):
    """A reason to stop with exit status 2; the message says what to do."""


def packaged_unit() -> str:
    """The unit as shipped (package data ``passerelle/packaging/passerelle.service``)."""
    return (resources.files("passerelle") / "packaging" / UNIT_NAME).read_text(encoding="utf-8")


def unit_text(
    exec_path: str | None = None,
    *,
    config: str = DEFAULT_CONFIG,
    groups: list[str] | None = None,
) -> str:
    """The unit with ExecStart= on ``exec_path`` (default: as shipped) and, when ``groups`` is
    given, SupplementaryGroups= limited to those of the shipped list that are in ``groups``."""
    text = packaged_unit()
    if exec_path is not None:
        _check_exec(exec_path)
        if re.search(r"\s", config) or not os.path.isabs(config):
            raise ServiceError(f"--config {config!r}: an absolute path without spaces")
        line = f"ExecStart={exec_path} run --config {config}"
        text = re.sub(r"(?m)^ExecStart=.*$", lambda _: line, text, count=1)
    if groups is not None:
        wanted = shipped_groups(text)
        kept = [g for g in wanted if g in groups]
        if kept:
            new = "SupplementaryGroups=" + " ".join(kept)
        else:
            new = "# SupplementaryGroups=: none of " + " ".join(wanted) + " exists on this machine"
        text = re.sub(r"(?m)^SupplementaryGroups=.*$", lambda _: new, text, count=1)
    return text


def shipped_groups(text: str | None = None) -> list[str]:
    m = re.search(r"(?m)^SupplementaryGroups=(.*)$", text if text is not None else packaged_unit())
    return m[1].split() if m else []


def existing_groups(names: list[str]) -> list[str]:
    out = []
    for name in names:
        try:
            grp.getgrnam(name)
        except KeyError:
            continue
        out.append(name)
    return out


def resolve_exec(explicit: str | None = None) -> str:
    """The absolute path of the ``passerelle`` console script the unit should run.

    Default: the one beside this interpreter (the venv's ``bin/``: sys.executable is not
    resolved, a venv's python is a symlink), else the first on $PATH.
    """
    if explicit:
        path = explicit
    else:
        beside = Path(sys.executable).parent / "passerelle"
        found = str(beside) if os.access(beside, os.X_OK) else shutil.which("passerelle")
        if found is None:
            raise ServiceError("cannot find the passerelle executable: pass --exec PATH")
        path = found
    _check_exec(path)
    return os.path.abspath(path)


def _check_exec(path: str) -> None:
    if not os.path.isabs(path):
        raise ServiceError(f"--exec {path}: must be an absolute path")
    if re.search(r"\s", path):
        raise ServiceError(f"--exec {path!r}: a path with spaces cannot go in ExecStart=")
    if path.startswith(_HIDDEN_BY_PROTECT_HOME):
        raise ServiceError(
            f"--exec {path}: the unit's ProtectHome=yes hides home directories from the "
            "service; install passerelle under /opt (python3 -m venv /opt/passerelle)"
        )


# --------------------------------------------------------------------------------------------
# install


@dataclass
class Action:
    """One step of ``install``: what it does, in words, and how."""

    text: str
    run: Callable[[], None]


def plan_install(
    *,
    unit_dir: Path,
    exec_path: str,
    config: str = DEFAULT_CONFIG,
    unit_only: bool = False,
) -> list[Action]:
    """The steps, in order; nothing is done until each ``run`` is called."""
    groups = existing_groups(shipped_groups())
    text = unit_text(exec_path, config=config, groups=groups)
    unit_path = unit_dir / UNIT_NAME
    actions = [
        Action(
            f"write {unit_path} (ExecStart={exec_path} run --config {config}; "
            f"SupplementaryGroups={' '.join(groups) or 'none'})",
            lambda: _write_unit(unit_path, text),
        )
    ]
    if unit_only:
        return actions
    if _user_exists(USER):
        actions.append(Action(f"user {USER} exists: keep it", lambda: None))
    else:
        cmd = [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            str(STATE_DIR),
            "--shell",
            NOLOGIN,
            "--user-group",
            "--comment",
            "Passerelle edge agent",
        ]
        if groups:
            cmd += ["--groups", ",".join(groups)]
        cmd.append(USER)
        actions.append(Action("create the system user: " + shlex.join(cmd), lambda: _run(cmd)))
    for directory, dir_mode in ((STATE_DIR, STATE_DIR_MODE), (CONFIG_DIR, CONFIG_DIR_MODE)):
        actions.append(
            Action(
                f"set up {directory} (mode {dir_mode:04o}, owner {USER}:{USER}"
                + (", contents included)" if directory == CONFIG_DIR else ")"),
                partial(_own_dir, directory, dir_mode, recursive=directory == CONFIG_DIR),
            )
        )
    return actions


def install(
    *,
    unit_dir: Path,
    exec_path: str,
    config: str = DEFAULT_CONFIG,
    dry_run: bool = False,
    unit_only: bool = False,
    enable: bool = False,
    out: Callable[[str], None] = print,
) -> None:
    actions = plan_install(
        unit_dir=unit_dir, exec_path=exec_path, config=config, unit_only=unit_only
    )
    if enable:
        for cmd in (["systemctl", "daemon-reload"], ["systemctl", "enable", "--now", "passerelle"]):
            actions.append(Action(" ".join(cmd), partial(_run, cmd)))
    if not dry_run and not unit_only and os.geteuid() != 0:
        raise ServiceError(
            "installing the service needs root: sudo passerelle service install "
            "(or --dry-run to see the steps)"
        )
    for action in actions:
        out(("would " if dry_run else "") + action.text)
        if not dry_run:
            action.run()
    if not enable:
        out(f"next: {NEXT_STEP}")


def _write_unit(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _own_dir(path: Path, mode: int, *, recursive: bool) -> None:
    user = pwd.getpwnam(USER)
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, user.pw_uid, user.pw_gid)
    if recursive:
        for root, dirs, files in os.walk(path):
            for name in dirs + files:
                os.chown(os.path.join(root, name), user.pw_uid, user.pw_gid, follow_symlinks=False)


def _run(cmd: list[str]) -> None:
    try:
        subprocess.run(cmd, check=True)
    except FileNotFoundError:
        raise ServiceError(f"{cmd[0]}: command not found") from None
    except subprocess.CalledProcessError as e:
        raise ServiceError(f"{' '.join(cmd)}: failed with exit status {e.returncode}") from None


# --------------------------------------------------------------------------------------------
# verify


def verify(exec_path: str, *, config: str = DEFAULT_CONFIG) -> tuple[bool, str]:
    """Run ``systemd-analyze verify`` on the unit (in a temporary directory, ExecStart= on
    ``exec_path``, which must exist). Any message about the unit counts as a failure: systemd
    *ignores* a line it cannot parse, with a warning and exit status 0."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        raise ServiceError("systemd-analyze not found (not a systemd system?)")
    text = unit_text(exec_path, config=config, groups=existing_groups(shipped_groups()))
    with tempfile.TemporaryDirectory(prefix="passerelle-unit-") as tmp:
        path = Path(tmp) / UNIT_NAME
        path.write_text(text, encoding="utf-8")
        proc = subprocess.run(
            [analyze, "verify", str(path)], capture_output=True, text=True, check=False
        )
    output = (proc.stdout + proc.stderr).strip()
    about_unit = [line for line in output.splitlines() if UNIT_NAME in line]
    ok = proc.returncode == 0 and not about_unit
    return ok, output


# --------------------------------------------------------------------------------------------
# Command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="passerelle service", description="The systemd unit.")
    sub = p.add_subparsers(dest="action", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--exec",
            dest="exec_path",
            metavar="PATH",
            help="the passerelle executable (default: the one beside this Python)",
        )
        sp.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            metavar="FILE",
            help=f"configuration file for ExecStart= (default {DEFAULT_CONFIG})",
        )

    inst = sub.add_parser("install", help="write the unit, create the user and directories")
    common(inst)
    inst.add_argument(
        "--unit-dir", default=DEFAULT_UNIT_DIR, metavar="DIR", help=f"(default {DEFAULT_UNIT_DIR})"
    )
    inst.add_argument("--dry-run", action="store_true", help="print the actions, do nothing")
    inst.add_argument(
        "--unit-only", action="store_true", help="write the unit file only: no user, no directories"
    )
    inst.add_argument(
        "--enable", action="store_true", help="also run systemctl daemon-reload and enable --now"
    )
    common(sub.add_parser("print", help="print the unit (as shipped; with --exec, as installed)"))
    common(sub.add_parser("verify", help="check the unit with systemd-analyze verify"))
    return p


def main(argv: list[str]) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    try:
        if args.action == "print":
            if args.exec_path is None:
                sys.stdout.write(packaged_unit())
            else:
                sys.stdout.write(unit_text(resolve_exec(args.exec_path), config=args.config))
            return 0
        exec_path = resolve_exec(args.exec_path)
        if args.action == "verify":
            ok, output = verify(exec_path, config=args.config)
            if output:
                print(output)
            print(f"{UNIT_NAME}: {'OK' if ok else 'problems found'} (systemd-analyze verify)")
            return 0 if ok else 1
        install(
            unit_dir=Path(args.unit_dir),
            exec_path=exec_path,
            config=args.config,
            dry_run=args.dry_run,
            unit_only=args.unit_only,
            enable=args.enable,
        )
    except ServiceError as e:
        print(f"passerelle service: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"passerelle service: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    return 0
