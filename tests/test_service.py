"""passerelle service and the shipped systemd unit."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hil.pki import Pki
from passerelle import service
from passerelle.systemd import SystemdNotifier

TRUE = shutil.which("true") or "/bin/true"


def read_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """A systemd unit as section -> [(key, value)], repeated keys kept in order.

    Not configparser: systemd repeats keys (DeviceAllow=, Wants=) and allows empty values
    with a meaning of their own (CapabilityBoundingSet= empties the set)."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"directive outside a section: {raw!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> list[str]:
    return [v for k, v in unit[section] if k == key]


def one(unit: dict[str, list[tuple[str, str]]], section: str, key: str) -> str:
    found = values(unit, section, key)
    assert len(found) == 1, f"{key}= appears {len(found)} times"
    return found[0]


@pytest.fixture(scope="module")
def unit() -> dict[str, list[tuple[str, str]]]:
    return read_unit(service.packaged_unit())


# ------------------------------------------------------------------------- the unit


def test_the_unit_is_package_data() -> None:
    path = Path(service.__file__).parent / "packaging" / "passerelle.service"
    assert service.packaged_unit() == path.read_text()


def test_the_unit_runs_the_agent_as_a_notify_service(unit: dict) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "ExecStart") == (
        "/opt/passerelle/bin/passerelle run --config /etc/passerelle/passerelle.toml"
    )
    assert one(unit, "Service", "Restart") == "on-failure"
    assert float(one(unit, "Service", "RestartSec")) > 0
    assert one(unit, "Install", "WantedBy") == "multi-user.target"


def test_the_watchdog_interval_matches_the_agents_ping(unit: dict) -> None:
    seconds = int(one(unit, "Service", "WatchdogSec"))
    assert seconds >= 10
    # What systemd passes to the agent, and the interval the agent then pings at.
    notifier = SystemdNotifier(
        {"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": str(seconds * 1_000_000)}
    )
    assert notifier.watchdog_interval() == seconds / 2


def test_the_unit_runs_as_a_dedicated_user_with_device_groups_only(unit: dict) -> None:
    assert one(unit, "Service", "User") == "passerelle"
    assert one(unit, "Service", "Group") == "passerelle"
    groups = one(unit, "Service", "SupplementaryGroups").split()
    assert sorted(groups) == ["dialout", "gpio", "i2c", "spi"]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("ProtectSystem", "strict"),
        ("StateDirectory", "passerelle"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("ProtectHome", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("DevicePolicy", "closed"),
        ("UMask", "0077"),
        ("RestrictAddressFamilies", "AF_UNIX AF_INET AF_INET6"),
    ],
)
def test_the_unit_is_hardened(unit: dict, key: str, expected: str) -> None:
    assert one(unit, "Service", key) == expected


def test_only_the_agents_directories_are_writable(unit: dict) -> None:
    paths = one(unit, "Service", "ReadWritePaths").split()
    assert sorted(paths) == ["/etc/passerelle", "/var/lib/passerelle"]


def test_only_the_buses_are_allowed_as_devices(unit: dict) -> None:
    allowed = dict(v.split() for v in values(unit, "Service", "DeviceAllow"))
    assert allowed == {
        "char-spi": "rw",  # spidev registers its major as "spi" in /proc/devices
        "char-i2c": "rw",
        "char-gpiochip": "rw",
        "char-ttyAMA": "rw",
        "char-ttyUSB": "rw",
        "char-ttyACM": "rw",
        "char-ttyS": "rw",
    }


# --------------------------------------------------------------- systemd-analyze verify

needs_systemd_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed (no systemd on this machine)",
)


@needs_systemd_analyze
def test_systemd_analyze_verify_passes(capsys: pytest.CaptureFixture[str]) -> None:
    ok, output = service.verify(TRUE)
    assert ok, output
    assert service.main(["verify", "--exec", TRUE]) == 0
    assert "OK" in capsys.readouterr().out


@needs_systemd_analyze
def test_verify_catches_a_line_systemd_would_ignore(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = service.packaged_unit().replace("DeviceAllow=char-spi rw", "DeviceAllow=char-spi rx")
    monkeypatch.setattr(service, "packaged_unit", lambda: broken)
    ok, output = service.verify(TRUE)
    assert not ok
    assert "rx" in output


# --------------------------------------------------------------------------- install


def test_install_dry_run_lists_every_action_and_does_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "_user_exists", lambda name: False)
    monkeypatch.setattr(service, "existing_groups", lambda names: ["spi", "dialout"])
    unit_dir = tmp_path / "system"
    rc = service.main(["install", "--unit-dir", str(unit_dir), "--exec", TRUE, "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"would write {unit_dir}/passerelle.service (ExecStart={TRUE} run")
    assert "SupplementaryGroups=spi dialout" in lines[0]
    assert lines[1] == (
        "would create the system user: useradd --system --no-create-home --home-dir "
        "/var/lib/passerelle --shell /usr/sbin/nologin --user-group --comment "
        "'Passerelle edge agent' --groups spi,dialout passerelle"
    )
    assert lines[2].startswith("would set up /var/lib/passerelle (mode 0700, owner passerelle")
    assert lines[3].startswith("would set up /etc/passerelle (mode 0750, owner passerelle")
    assert lines[4] == "next: systemctl daemon-reload && systemctl enable --now passerelle"
    assert not unit_dir.exists()


def test_install_dry_run_with_enable_lists_systemctl(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc = service.main(
        ["install", "--unit-dir", str(tmp_path), "--exec", TRUE, "--dry-run", "--enable"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert rc == 0
    assert lines[-2:] == [
        "would systemctl daemon-reload",
        "would systemctl enable --now passerelle",
    ]


def test_install_writes_the_unit_with_this_machines_executable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "existing_groups", lambda names: ["dialout"])
    unit_dir = tmp_path / "system"
    rc = service.main(
        ["install", "--unit-dir", str(unit_dir), "--exec", TRUE, "--unit-only",
         "--config", "/srv/gw/passerelle.toml"]
    )  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    path = unit_dir / "passerelle.service"
    assert path.stat().st_mode & 0o777 == 0o644
    written = read_unit(path.read_text())
    assert one(written, "Service", "ExecStart") == f"{TRUE} run --config /srv/gw/passerelle.toml"
    assert one(written, "Service", "SupplementaryGroups") == "dialout"
    # Everything else as shipped.
    shipped = read_unit(service.packaged_unit())
    for section in ("Unit", "Install"):
        assert written[section] == shipped[section]
    changed = {k for k, v in written["Service"]} ^ {k for k, v in shipped["Service"]}
    assert changed == set()


def test_missing_groups_are_left_out_of_the_unit() -> None:
    # systemd refuses to start a unit whose SupplementaryGroups= names a missing group.
    assert (
        values(read_unit(service.unit_text(TRUE, groups=[])), "Service", "SupplementaryGroups")
        == []
    )
    partial = read_unit(service.unit_text(TRUE, groups=["gpio", "dialout", "video"]))
    assert one(partial, "Service", "SupplementaryGroups") == "gpio dialout"


def test_install_without_root_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service.os, "geteuid", lambda: 1000)
    rc = service.main(["install", "--unit-dir", str(tmp_path), "--exec", TRUE])
    assert rc == 2
    assert "root" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("exec_path", "reason"),
    [
        ("/home/pi/.local/bin/passerelle", "ProtectHome"),
        ("/root/.local/bin/passerelle", "ProtectHome"),
        ("passerelle", "absolute"),
        ("/opt/my passerelle/bin/passerelle", "spaces"),
    ],
)
def test_an_executable_the_service_cannot_run_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], exec_path: str, reason: str
) -> None:
    rc = service.main(["install", "--unit-dir", str(tmp_path), "--exec", exec_path, "--dry-run"])
    assert rc == 2
    assert reason in capsys.readouterr().err


def test_print_shows_the_shipped_unit(capsys: pytest.CaptureFixture[str]) -> None:
    assert service.main(["print"]) == 0
    assert capsys.readouterr().out == service.packaged_unit()
    assert service.main(["print", "--exec", TRUE]) == 0
    assert f"ExecStart={TRUE} run --config" in capsys.readouterr().out


# ------------------------------------------------ MemoryDenyWriteExecute=yes, for real

# systemd implements MemoryDenyWriteExecute= as a seccomp filter (systemd.exec(5)): mmap with
# both PROT_WRITE and PROT_EXEC, mprotect/pkey_mprotect with PROT_EXEC, shmat with SHM_EXEC
# fail with EPERM. The same filter is installed here, before the agent's code is imported, so
# every C extension loads and runs under it.
_SYSCALLS = {  # machine: (audit arch, mmap, mprotect, pkey_mprotect, shmat)
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
}

_WORKLOAD = textwrap.dedent(
    """
    import ctypes, mmap, struct, sys

    arch, nr_mmap, nr_mprotect, nr_pkey_mprotect, nr_shmat = map(int, sys.argv[1:6])
    ALLOW, DENY = 0x7FFF0000, 0x00050000 | 1  # SECCOMP_RET_ALLOW, SECCOMP_RET_ERRNO | EPERM
    LD, JEQ, JSET, AND, RET = 0x20, 0x15, 0x45, 0x54, 0x06
    code = []  # (op, jt, jf, k) with jumps to labels resolved below

    def emit(op, k, jt=None, jf=None):
        code.append([op, jt, jf, k])

    emit(LD, 4)                          # seccomp_data.arch
    emit(JEQ, arch, None, "allow")
    emit(LD, 0)                          # seccomp_data.nr
    emit(JEQ, nr_mmap, "mmap", None)
    emit(JEQ, nr_mprotect, "mprotect", None)
    emit(JEQ, nr_pkey_mprotect, "mprotect", None)
    emit(JEQ, nr_shmat, "shmat", None)
    emit(RET, ALLOW)
    labels = {"mmap": len(code)}
    emit(LD, 32)                         # args[2] (prot), low 32 bits
    emit(AND, 0x6)                       # PROT_WRITE | PROT_EXEC
    emit(JEQ, 0x6, "deny", "allow")
    labels["mprotect"] = len(code)
    emit(LD, 32)
    emit(JSET, 0x4, "deny", "allow")     # PROT_EXEC
    labels["shmat"] = len(code)
    emit(LD, 32)
    emit(JSET, 0o100000, "deny", "allow")  # SHM_EXEC
    labels["allow"] = len(code)
    emit(RET, ALLOW)
    labels["deny"] = len(code)
    emit(RET, DENY)
    prog = b""
    for i, (op, jt, jf, k) in enumerate(code):
        rel = lambda j: 0 if j is None else labels[j] - i - 1
        prog += struct.pack("=HBBI", op, rel(jt), rel(jf), k)
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("=HxxxxxxQ", len(code), ctypes.addressof(buf))
    fbuf = ctypes.create_string_buffer(fprog)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int] + [ctypes.c_ulong] * 4  # a pointer is not a C int
    assert libc.prctl(38, 1, 0, 0, 0) == 0              # PR_SET_NO_NEW_PRIVS
    if libc.prctl(22, 2, ctypes.addressof(fbuf), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        sys.exit(f"seccomp: errno {ctypes.get_errno()}")

    # The filter is live: writable and executable memory is refused.
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except PermissionError:
        pass
    else:
        sys.exit("filter not active: W+X mapping allowed")

    # Now the agent's code: every module, then the native paths it uses at run time.
    import importlib, pkgutil, passerelle
    for mod in pkgutil.walk_packages(passerelle.__path__, "passerelle."):
        if mod.name.endswith("__main__"):  # would run the CLI
            continue
        try:
            importlib.import_module(mod.name)
        except ModuleNotFoundError as e:  # an optional Pi library not installed here
            print("skipped", mod.name, e)

    import socket, ssl, threading
    import cbor2, msgspec
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from passerelle.lighting.engine import system_clock_trusted
    from passerelle import provision

    key = Ed25519PrivateKey.generate()
    key.public_key().verify(key.sign(b"bundle"), b"bundle")
    assert cbor2.loads(cbor2.dumps({"v": [1, 2.5]})) == {"v": [1, 2.5]}
    assert msgspec.json.decode(msgspec.json.encode({"a": 1})) == {"a": 1}
    system_clock_trusted()  # ctypes adjtimex

    ca, cert, key_file, out = sys.argv[6:10]
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert, key_file)
    with socket.socket() as lsock:
        lsock.bind(("127.0.0.1", 0)); lsock.listen(1)
        def serve():
            conn, _ = lsock.accept()
            with server.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        threading.Thread(target=serve, daemon=True).start()
        client = ssl.create_default_context(cafile=ca)
        with socket.create_connection(lsock.getsockname()) as raw:
            with client.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(2) == b"ok"

    # Key, CSR, lab CA, certificate, config validation: the provisioning path in full.
    rc = provision.main(["--gateway-id", "cab-0042", "--broker", "mqtts://127.0.0.1:1",
                         "--out", out, "--self-signed", "--json"])
    assert rc == 0
    print("WORKLOAD OK")
    """
)


@pytest.mark.skipif(
    platform.machine() not in _SYSCALLS,
    reason=f"no syscall table for {platform.machine()} in this test",
)
def test_the_agent_runs_under_memory_deny_write_execute(tmp_path: Path, pki: Pki) -> None:
    args = [str(n) for n in _SYSCALLS[platform.machine()]]
    args += [str(pki.ca_cert), str(pki.server_cert), str(pki.server_key), str(tmp_path / "etc")]
    proc = subprocess.run(
        [sys.executable, "-c", _WORKLOAD, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(service.__file__).parent.parent,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WORKLOAD OK" in proc.stdout
