"""The configuration vault on real files: atomic writes, the apply sequence, boot recovery.

The crash test runs the apply sequence in a real child process and SIGKILLs it at random
instants; a fresh vault must then always boot on a complete, committed version.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import os
import random
import signal
import stat
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest

from passerelle.control import vault as vault_module
from passerelle.control.vault import ConfigVault, VaultError, config_hash, write_atomic

ROOT = Path(__file__).resolve().parents[1]


def version_text(v: int) -> bytes:
    # Sizes differ from one version to the next, so a torn write could not pass as another.
    return f'version = {v}\nname = "v{v}"\npad = "{"x" * (v % 7 * 300)}"\n'.encode()


INSTALLER = version_text(0)


def temporaries(*dirs: Path) -> list[Path]:
    return [p for d in dirs for p in d.iterdir() if p.name.endswith(".tmp")]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    etc = tmp_path / "etc"
    etc.mkdir()
    config = etc / "passerelle.toml"
    config.write_bytes(INSTALLER)
    return config, tmp_path / "data" / "control"


def apply(vault: ConfigVault, v: int, *, commit: bool = True) -> None:
    vault.stage(v, version_text(v), b"bundle-%d" % v)
    vault.begin(v)
    if commit:
        vault.commit()


# -- write_atomic ----------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o000, 0o077])
def test_write_atomic_replaces_with_exact_mode_whatever_the_umask(tmp_path, umask):
    path = tmp_path / "f.toml"
    path.write_bytes(b"old")
    old_umask = os.umask(umask)
    try:
        write_atomic(path, b"new")
    finally:
        os.umask(old_umask)
    assert path.read_bytes() == b"new"
    assert mode_of(path) == 0o640
    assert temporaries(tmp_path) == []


def test_write_atomic_fsync_failure_keeps_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "f.toml"
    path.write_bytes(b"old")

    def failing_fsync(fd: int) -> None:
        raise OSError(5, "injected I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="injected"):
        write_atomic(path, b"new" * 1000)
    monkeypatch.undo()
    assert path.read_bytes() == b"old"
    assert temporaries(tmp_path) == []


def test_write_atomic_under_a_file_fails_cleanly(tmp_path):
    parent = tmp_path / "not-a-dir"
    parent.write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        write_atomic(parent / "f.toml", b"new")
    assert parent.read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-dir"]


def test_write_atomic_rename_failure_removes_temporary(tmp_path):
    target = tmp_path / "f.toml"
    target.mkdir()
    (target / "inside").write_bytes(b"keep")
    with pytest.raises(OSError):
        write_atomic(target, b"new")
    assert (target / "inside").read_bytes() == b"keep"
    assert temporaries(tmp_path) == []


def test_config_hash_is_sha256_hex():
    assert config_hash(b"abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert config_hash(INSTALLER) == hashlib.sha256(INSTALLER).hexdigest()


# -- the apply sequence ----------------------------------------------------------------


def test_fresh_vault_runs_the_installer_file(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    assert mode_of(state) == 0o750 and mode_of(state / "versions") == 0o750
    assert (vault.running, vault.good, vault.pending) == (None, None, None)
    assert vault.status() == {
        "version": None,
        "hash": config_hash(INSTALLER),
        "pending": None,
        "good": None,
    }
    assert vault.highest() == 0
    assert not (state / "control.json").exists()  # constructing only reads


def test_stage_keeps_version_and_installer_file(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    vault.stage(1, version_text(1), b"signed-1")
    versions = state / "versions"
    assert (versions / "0.toml").read_bytes() == INSTALLER
    assert (versions / "1.toml").read_bytes() == version_text(1)
    assert vault.bundle(1) == b"signed-1"
    assert vault.digest(1) == config_hash(b"signed-1")
    assert vault.digest(2) is None
    assert vault.has(1) and not vault.has(2) and not vault.has(0)
    assert all(mode_of(p) == 0o640 for p in versions.iterdir())
    assert config.read_bytes() == INSTALLER  # staging does not touch the running file


def test_stage_refuses_what_it_could_not_restore(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    with pytest.raises(ValueError, match="version 1: not a UTF-8 TOML"):
        vault.stage(1, b"version = = 1", b"b")
    with pytest.raises(ValueError, match="not a UTF-8 TOML"):
        vault.stage(1, b"\xff\xfe", b"b")
    with pytest.raises(ValueError, match=">= 1"):
        vault.stage(0, version_text(0), b"b")
    assert not vault.has(1)
    apply(vault, 1)
    vault.stage(1, version_text(1), b"bundle-1")  # the same bytes again: harmless
    with pytest.raises(VaultError, match="version 1 is good"):
        vault.stage(1, version_text(2), b"other")
    assert (state / "versions" / "1.toml").read_bytes() == version_text(1)


def test_begin_commit_rollback(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    vault.stage(1, version_text(1), b"bundle-1")
    vault.begin(1)
    assert config.read_bytes() == version_text(1)
    assert mode_of(config) == 0o640
    assert vault.pending is not None and vault.pending.previous is None
    assert vault.status() == {
        "version": 1,
        "hash": config_hash(version_text(1)),
        "pending": 1,
        "good": None,
    }
    with pytest.raises(VaultError, match="version 1 is still pending"):
        vault.begin(1)
    vault.commit()
    assert (vault.running, vault.good, vault.pending) == (1, 1, None)
    with pytest.raises(VaultError, match="nothing pending"):
        vault.commit()
    with pytest.raises(VaultError, match="version 2 is not staged"):
        vault.begin(2)

    apply(vault, 2, commit=False)
    assert vault.pending is not None and vault.pending.previous == 1
    assert vault.rollback("uplink down for 30 s") == 1
    assert config.read_bytes() == version_text(1)
    assert (vault.running, vault.good, vault.pending) == (1, 1, None)
    assert vault.last_rollback is not None
    assert vault.last_rollback["version"] == 2
    assert vault.last_rollback["why"] == "uplink down for 30 s"
    assert vault.highest() == 2  # a rolled-back version is spent: never accepted again
    assert vault.rollback("again") == 1  # nothing pending: nothing changes

    again = ConfigVault(config, state)
    assert (again.running, again.good, again.pending) == (1, 1, None)
    assert again.last_rollback == vault.last_rollback
    assert again.highest() == 2
    assert mode_of(state / "control.json") == 0o640
    assert temporaries(config.parent, state, state / "versions") == []


def test_first_remote_version_rolls_back_to_the_installer_file(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    vault.stage(1, version_text(1), b"b")
    # The installer edits the file between the first stage and the apply: that edit is
    # what a rollback must bring back, not the copy taken at stage time.
    edited = INSTALLER + b'site = "rue des Lilas"\n'
    config.write_bytes(edited)
    vault.begin(1)
    assert vault.rollback("sources dead") is None
    assert config.read_bytes() == edited
    assert (vault.running, vault.good) == (None, None)


def test_begin_that_cannot_write_the_file_leaves_nothing_pending(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    apply(vault, 1)
    vault.stage(2, version_text(2), b"b")
    config.unlink()
    config.mkdir()  # a rename over a directory fails: a real error, mid-begin
    with pytest.raises(IsADirectoryError):
        vault.begin(2)
    assert vault.pending is None and vault.highest() == 1
    reopened = ConfigVault(config, state)
    assert reopened.pending is None and reopened.highest() == 1
    assert temporaries(config.parent) == []


def test_prune_keeps_newest_good_and_installer(paths):
    config, state = paths
    vault = ConfigVault(config, state, keep=2)
    for v in range(1, 6):
        apply(vault, v)
    assert vault.versions() == [4, 5]
    assert (state / "versions" / "0.toml").exists()
    assert vault.highest() == 5

    # Never the good one, even when newer (staged, unused) versions crowd it out.
    vault = ConfigVault(config, state, keep=1)
    vault.stage(8, version_text(8), b"b8")
    vault.stage(9, version_text(9), b"b9")
    apply(vault, 6)
    assert vault.versions() == [6, 9]
    assert not (state / "versions" / "8.cose").exists()
    assert config.read_bytes() == version_text(6)


def test_acks_queue_survives_a_new_vault(paths, monkeypatch):
    config, state = paths
    vault = ConfigVault(config, state)
    for n in range(3):
        vault.queue_ack({"_topic": "config/ack", "version": n, "status": "applied"})
    vault.acks_sent(1)
    again = ConfigVault(config, state)
    assert [a["version"] for a in again.acks()] == [1, 2]
    again.acks()[0]["version"] = 99  # a copy: the queue is not edited through it
    assert again.acks()[0]["version"] == 1
    with pytest.raises(TypeError):
        again.queue_ack({"version": object()})
    again.acks_sent(2)
    assert ConfigVault(config, state).acks() == []

    monkeypatch.setattr(vault_module, "MAX_QUEUED_ACKS", 3)
    for n in range(5):
        again.queue_ack({"n": n})
    assert [a["n"] for a in ConfigVault(config, state).acks()] == [2, 3, 4]


# -- boot ------------------------------------------------------------------------------


def test_boot_with_nothing_pending_changes_nothing(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    apply(vault, 1)
    decision = ConfigVault(config, state).recover_at_boot()
    assert (decision.rolled_back, decision.resume, decision.why) == (None, None, None)
    assert decision.config_path == config
    assert config.read_bytes() == version_text(1)


def test_boot_rolls_back_an_unplanned_pending_version_and_queues_an_ack(paths):
    config, state = paths
    vault = ConfigVault(config, state, gateway_id="cab-0042")
    apply(vault, 1)
    apply(vault, 2, commit=False)  # the agent dies in its health window

    booted = ConfigVault(config, state, gateway_id="cab-0042")
    decision = booted.recover_at_boot()
    assert decision.rolled_back == 2 and decision.resume is None
    assert decision.why is not None and "version 1 restored" in decision.why
    assert config.read_bytes() == version_text(1)
    assert (booted.running, booted.good, booted.pending) == (1, 1, None)
    [ack] = ConfigVault(config, state).acks()
    assert ack["_topic"] == "config/ack"
    assert ack["gateway"] == "cab-0042"
    assert (ack["version"], ack["status"], ack["reason"]) == (2, "rolled_back", "agent_restarted")
    assert ack["hash"] == config_hash(version_text(1))
    assert "version 2" in ack["text"]
    # Booting again finds nothing more to do, and does not repeat the ack.
    assert ConfigVault(config, state).recover_at_boot().rolled_back is None
    assert len(ConfigVault(config, state).acks()) == 1


def test_boot_resumes_a_planned_restart_once(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    apply(vault, 1)
    vault.stage(2, version_text(2), b"b")
    vault.begin(2, restart_planned=True)

    first = ConfigVault(config, state)
    decision = first.recover_at_boot()
    assert decision.rolled_back is None
    assert decision.resume is not None
    assert (decision.resume.version, decision.resume.previous, decision.resume.boots) == (2, 1, 1)
    assert config.read_bytes() == version_text(2)
    assert first.status()["pending"] == 2 and first.running == 2
    assert first.acks() == []

    second = ConfigVault(config, state)  # it died again before its window ended
    decision = second.recover_at_boot()
    assert decision.rolled_back == 2 and decision.resume is None
    assert config.read_bytes() == version_text(1)
    [ack] = second.acks()
    assert ack["status"] == "rolled_back" and "again after the planned restart" in ack["text"]


def test_planned_restart_whose_file_never_landed_is_rolled_back(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    apply(vault, 1)
    vault.stage(2, version_text(2), b"b")
    vault.begin(2, restart_planned=True)
    # As if SIGKILL fell between recording the pending version and the rename.
    config.write_bytes(version_text(1))
    decision = ConfigVault(config, state).recover_at_boot()
    assert decision.rolled_back == 2 and decision.resume is None
    assert config.read_bytes() == version_text(1)


@pytest.mark.parametrize(
    "damage",
    [
        b"{\x00garbage",
        b"[]",
        b'{"format": 1, "pending": {"version": "two"}}',
        b'{"format": 99}',
    ],
)
def test_corrupt_state_is_reported_and_the_running_file_kept(paths, damage, caplog):
    config, state = paths
    vault = ConfigVault(config, state)
    apply(vault, 1)
    apply(vault, 2)
    apply(vault, 3, commit=False)
    vault.rollback("unhealthy")  # 3 is spent; 2 runs
    (state / "control.json").write_bytes(damage)

    booted = ConfigVault(config, state)
    decision = booted.recover_at_boot()
    assert "control.json" in caplog.text and "unreadable" in caplog.text
    assert decision.rolled_back is None
    assert decision.why is not None and "unreadable" in decision.why
    assert config.read_bytes() == version_text(2)
    # The file is version 2's bytes: that is what runs; every stored version counts as seen.
    assert (booted.running, booted.good, booted.pending) == (2, 2, None)
    assert booted.highest() == 3
    assert (state / "control.json.corrupt").read_bytes() == damage
    assert json.loads((state / "control.json").read_bytes())["good"] == 2


def test_missing_config_file_is_restored_from_the_good_version(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    apply(vault, 1)
    config.unlink()
    decision = ConfigVault(config, state).recover_at_boot()
    assert decision.why is not None and "was missing" in decision.why
    assert config.read_bytes() == version_text(1)


def test_boot_removes_temporaries_left_by_a_crash(paths):
    config, state = paths
    vault = ConfigVault(config, state)
    apply(vault, 1)
    left = [
        config.parent / ".passerelle.toml.0123456789ab.tmp",
        state / ".control.json.0123456789ab.tmp",
        state / "versions" / ".2.toml.0123456789ab.tmp",
    ]
    for path in left:
        path.write_bytes(b"half")
    other = config.parent / ".other.toml.0123456789ab.tmp"  # not ours: left alone
    other.write_bytes(b"x")
    ConfigVault(config, state).recover_at_boot()
    assert not any(p.exists() for p in left)
    assert other.exists()


# -- SIGKILL during apply ----------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys
    from pathlib import Path

    from passerelle.control.vault import ConfigVault

    {version_text}

    vault = ConfigVault(Path(sys.argv[1]), Path(sys.argv[2]), keep=3)
    vault.recover_at_boot()
    v = vault.highest()
    first = True
    while True:
        v += 1
        vault.stage(v, version_text(v), b"bundle-%d" % v)
        vault.begin(v)
        vault.queue_ack({{"version": v, "status": "accepted"}})
        if v % 4 == 0:
            vault.rollback("the test says so")
        else:
            vault.commit()
        if len(vault.acks()) > 3:
            vault.acks_sent(2)
        if first:  # one full apply done: from now on a kill lands anywhere in the cycle
            print("ready", flush=True)
            first = False
    """
).format(version_text=inspect.getsource(version_text))


def test_sigkill_during_apply_always_boots_on_a_committed_version(paths):
    config, state = paths
    rng = random.Random(6)
    kills = 15
    caught_mid_apply = 0
    for _ in range(kills):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(config), str(state)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            line = child.stdout.readline()
            assert line == b"ready\n", child.stderr.read() if child.stderr else line
            time.sleep(rng.uniform(0, 0.05))
            assert child.poll() is None, child.stderr.read() if child.stderr else ""
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=10)
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            child.wait()
            for stream in (child.stdout, child.stderr):
                if stream is not None:
                    stream.close()

        vault = ConfigVault(config, state, keep=3)
        if vault.recover_at_boot().rolled_back is not None:
            caught_mid_apply += 1
        data = config.read_bytes()
        running = tomllib.loads(data.decode())["version"]
        assert data == version_text(running)  # complete, and exactly the version it says
        assert vault.pending is None
        assert vault.running == vault.good
        assert running == (vault.good or 0)
        assert vault.status()["hash"] == config_hash(data)
        json.loads((state / "control.json").read_bytes())
        assert temporaries(config.parent, state, state / "versions") == []
    # The children really were applying when killed, not idling before their first step
    # (each says ready after one full apply, however loaded the machine); about half the
    # kills land between begin and commit (a pending version to undo).
    assert ConfigVault(config, state).highest() >= kills
    assert caught_mid_apply >= 1
