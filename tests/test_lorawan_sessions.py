"""Sessions and counters persist, so a restart never reopens a replay or reuses a counter."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from passerelle.lorawan.sessions import SessionStore

NWK, APP = bytes(range(16)), bytes(range(16, 32))


def reopen(path: Path) -> SessionStore:
    s = SessionStore(path)
    s.open()
    return s


def test_counters_survive_restart_and_never_go_back(tmp_path: Path) -> None:
    path = tmp_path / "lorawan.db"
    s = reopen(path)
    s.save_join("70B3D57ED0000001", 0x26011BDA, NWK, APP, dev_nonce=7, join_nonce=3, now=1.8e9)
    s.accept_uplink("70b3d57ed0000001", 41)
    assert s.take_fcnt_down("70b3d57ed0000001") == 0
    assert s.take_fcnt_down("70b3d57ed0000001") == 1
    s.close()
    s = reopen(path)  # the agent restarted
    sess = s.get("70b3d57ed0000001")
    assert sess is not None
    assert (sess.fcnt_up, sess.fcnt_down, sess.dev_nonce, sess.join_nonce) == (41, 2, 7, 3)
    assert s.by_addr(0x26011BDA) == [sess]
    with pytest.raises(ValueError, match="below 41"):
        s.accept_uplink("70b3d57ed0000001", 40)
    s.close()


def test_unclean_stop_keeps_committed_counters(tmp_path: Path) -> None:
    path, cut = tmp_path / "lorawan.db", tmp_path / "cut.db"
    s = reopen(path)
    s.save_join("70b3d57ed0000001", 1, NWK, APP, 1, 1, 1.8e9)
    s.accept_uplink("70b3d57ed0000001", 9)
    for suffix in ("", "-wal"):  # what a power cut leaves on disk, no clean close
        src = Path(f"{path}{suffix}")
        if src.exists():
            Path(f"{cut}{suffix}").write_bytes(src.read_bytes())
    s.close()
    s = reopen(cut)
    got = s.get("70b3d57ed0000001")
    assert got is not None and got.fcnt_up == 9


def test_abp_provisioning_keeps_counters_unless_keys_change(tmp_path: Path) -> None:
    path = tmp_path / "lorawan.db"
    s = reopen(path)
    s.provision_abp("70b3d57ed0000002", 0x01020304, NWK, APP, 1.8e9)
    s.accept_uplink("70b3d57ed0000002", 100)
    s.close()
    s = reopen(path)
    same = s.provision_abp("70b3d57ed0000002", 0x01020304, NWK, APP, 1.9e9)
    assert same.fcnt_up == 100
    rekeyed = s.provision_abp("70b3d57ed0000002", 0x01020304, APP, NWK, 1.9e9)
    assert rekeyed.fcnt_up is None
    s.close()


def test_file_is_private_and_keys_stay_out_of_repr(tmp_path: Path) -> None:
    s = reopen(tmp_path / "lorawan.db")
    sess = s.save_join("70b3d57ed0000001", 1, NWK, APP, 1, 1, 1.8e9)
    mode = stat.S_IMODE((tmp_path / "lorawan.db").stat().st_mode)
    assert mode & 0o077 == 0
    assert NWK.hex() not in repr(sess) and APP.hex() not in repr(sess)
    s.close()


def test_a_rejoin_moves_the_session_to_its_new_address(tmp_path: Path) -> None:
    s = reopen(tmp_path / "lorawan.db")
    s.save_join("70b3d57ed0000001", 0x11, NWK, APP, 1, 1, 1.8e9)
    s.save_join("70b3d57ed0000001", 0x22, NWK, APP, 2, 2, 1.8e9)
    assert s.by_addr(0x11) == []
    assert [x.dev_eui for x in s.by_addr(0x22)] == ["70b3d57ed0000001"]
    s.forget("70b3d57ed0000001")
    assert s.by_addr(0x22) == [] and len(s) == 0
    s.close()
