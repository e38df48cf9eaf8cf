"""Files that make ``passerelle run`` refuse to start: secrets others can read, trust others can
rewrite.

A gateway sits in a street cabinet and runs unattended; its files are its identity (the uplink
private key, the broker password) and its trust anchors (the configuration, the CA that
authenticates the broker, the operator public keys that authorise remote changes). A local
account that can read the key can impersonate the gateway; one that can rewrite an anchor can
take it over. Both are refused at start, each with the chmod that fixes it.

What is refused, and why the line is drawn there:

* a secret (``uplink.key_file``, ``uplink.password_file``) readable or writable by *others*.
  Readable by the *group* is only a warning (:func:`passerelle.config.key_file_warnings`):
  the agent's own group, in a lab or a container, may share it on purpose.
* a trust anchor writable by others: the configuration file and its directory (the agent
  writes new versions there, so a directory others can write lets them swap the file), the
  CA file, each operator key and the directory holding it. Group-writable is allowed: the
  directory normally belongs to the agent's own group (``passerelle``), which has to write
  remote configuration versions into it.

Files that do not exist are not reported here: :func:`passerelle.config.load` already refuses
a configuration whose files are missing.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .config import Config

__all__ = ["unsafe_files"]

_OTHERS_READ_WRITE = stat.S_IROTH | stat.S_IWOTH
_OTHERS_WRITE = stat.S_IWOTH


def unsafe_files(cfg: Config, config_path: Path) -> list[str]:
    """Problems that must stop the agent, one operator-facing line each (empty: safe to run)."""
    problems: list[str] = []
    for label, secret in (
        ("uplink.key_file", cfg.uplink.key_file),
        ("uplink.password_file", cfg.uplink.password_file),
    ):
        if secret is not None:
            _refuse_secret(label, Path(secret), problems)

    config_file = Path(config_path).absolute()
    anchors: list[tuple[str, Path]] = [
        ("configuration file", config_file),
        ("configuration directory", config_file.parent),
    ]
    if cfg.uplink.ca_file is not None:
        anchors.append(("uplink.ca_file", Path(cfg.uplink.ca_file)))
    control = getattr(cfg, "control", None)
    operator_keys = getattr(control, "operator_keys", None) or []
    for i, key in enumerate(operator_keys):
        key_path = Path(key)
        anchors.append((f"control.operator_keys[{i}]", key_path))
        anchors.append((f"directory of control.operator_keys[{i}]", key_path.absolute().parent))

    seen: set[Path] = set()
    for label, path in anchors:
        resolved = path.resolve()
        if resolved in seen:  # the config and operator keys often share a directory
            continue
        seen.add(resolved)
        _refuse_writable(label, path, problems)
    return problems


def _mode(path: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None


def _refuse_secret(label: str, path: Path, problems: list[str]) -> None:
    mode = _mode(path)
    if mode is None or not mode & _OTHERS_READ_WRITE:
        return
    what = " and ".join(
        word for word, bit in (("readable", stat.S_IROTH), ("writable", stat.S_IWOTH)) if mode & bit
    )
    problems.append(
        f"{label}: '{path}' is {what} by others (mode {mode:04o}): a secret must be "
        f"private to the agent; fix: chmod 600 '{path}'"
    )


def _refuse_writable(label: str, path: Path, problems: list[str]) -> None:
    mode = _mode(path)
    if mode is None or not mode & _OTHERS_WRITE:
        return
    problems.append(
        f"{label}: '{path}' is writable by others (mode {mode:04o}): anyone on this machine "
        f"could change what the gateway trusts; fix: chmod o-w '{path}'"
    )
