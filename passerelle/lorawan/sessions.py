"""Device sessions and frame counters that survive restarts and power cuts.

A LoRaWAN network server that forgets a device's uplink counter after a restart accepts a
replay of anything the device sent before; one that forgets its downlink counter reuses
keystream. So every change is committed (SQLite WAL, ``synchronous=FULL``) before the
server acts on it:

* an uplink's counter is written after its measurement is durably stored and before it
  is acknowledged over the air (see :mod:`passerelle.lorawan.server` for why that order);
* a downlink counter is written before the frame is handed to the radio;
* a join (new DevAddr, session keys, DevNonce, JoinNonce) is written before the
  JoinAccept goes out.

The file holds session keys: it is created mode 0600 in the agent's 0700 data directory,
and nothing here logs a key.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from dataclasses import dataclass, replace
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS session (
    dev_eui    TEXT PRIMARY KEY,   -- 16 hex digits, lowercase, as written
    dev_addr   INTEGER NOT NULL,
    nwk_s_key  BLOB NOT NULL,
    app_s_key  BLOB NOT NULL,
    fcnt_up    INTEGER,            -- last accepted 32-bit uplink counter, NULL: none yet
    fcnt_down  INTEGER NOT NULL,   -- next downlink counter to use
    dev_nonce  INTEGER,            -- last DevNonce accepted (OTAA), NULL for ABP
    join_nonce INTEGER NOT NULL,   -- last JoinNonce sent (OTAA), 0 for ABP
    joined     REAL NOT NULL       -- Unix time of the join (or ABP provisioning)
);
CREATE INDEX IF NOT EXISTS session_addr ON session (dev_addr);
"""


@dataclass(frozen=True, slots=True)
class Session:
    dev_eui: str
    dev_addr: int
    nwk_s_key: bytes
    app_s_key: bytes
    fcnt_up: int | None
    fcnt_down: int
    dev_nonce: int | None
    join_nonce: int
    joined: float

    def __repr__(self) -> str:  # keys stay out of logs and tracebacks
        return (
            f"Session(dev_eui={self.dev_eui!r}, dev_addr={self.dev_addr:08x},"
            f" fcnt_up={self.fcnt_up}, fcnt_down={self.fcnt_down})"
        )


class SessionStore:
    """Sessions by DevEUI, cached in memory, every change committed before it is used.

    Calls are short synchronous SQLite transactions (one fsync each); LoRaWAN traffic is a
    few frames per second at most, so callers run them in a thread (``asyncio.to_thread``).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._db: sqlite3.Connection | None = None
        self._cache: dict[str, Session] = {}
        # DevAddr -> DevEUIs: every uplink looks its session up by address (no scan).
        self._by_addr: dict[int, set[str]] = {}
        # Reentrant: a read-modify-write (take_fcnt_down) holds it around _put.
        self._lock = threading.RLock()

    def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)  # keys: never world-readable
        os.close(fd)
        os.chmod(self.path, 0o600)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        self._db = db
        self._cache = {}
        self._by_addr = {}
        for row in db.execute("SELECT * FROM session"):
            self._remember(Session(*row))

    def close(self) -> None:
        # Under the lock: a downlink cancelled meanwhile may still be taking an FCntDown in
        # its worker thread.
        with self._lock:
            if self._db is not None:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self._db.close()
                self._db = None

    # -- reads (memory) -------------------------------------------------------------------

    def get(self, dev_eui: str) -> Session | None:
        return self._cache.get(dev_eui.lower())

    def by_addr(self, dev_addr: int) -> list[Session]:
        """Sessions using ``dev_addr`` (normally one; MIC checks pick the right one)."""
        return [self._cache[eui] for eui in self._by_addr.get(dev_addr, ())]

    def __len__(self) -> int:
        return len(self._cache)

    # -- writes (committed before they return) ----------------------------------------------

    def provision_abp(
        self, dev_eui: str, dev_addr: int, nwk_s_key: bytes, app_s_key: bytes, now: float
    ) -> Session:
        """An ABP device from the config. Counters survive a restart unless the keys or the
        address changed (then it is a new session, counters from zero)."""
        old = self.get(dev_eui)
        if old and (old.dev_addr, old.nwk_s_key, old.app_s_key) == (dev_addr, nwk_s_key, app_s_key):
            return old
        return self._put(Session(dev_eui.lower(), dev_addr, nwk_s_key, app_s_key, None, 0, None,
                                 0, now))

    def save_join(
        self,
        dev_eui: str,
        dev_addr: int,
        nwk_s_key: bytes,
        app_s_key: bytes,
        dev_nonce: int,
        join_nonce: int,
        now: float,
    ) -> Session:
        """A new OTAA session: counters restart at zero, nonces are remembered."""
        return self._put(Session(dev_eui.lower(), dev_addr, nwk_s_key, app_s_key, None, 0,
                                 dev_nonce, join_nonce, now))

    def accept_uplink(self, dev_eui: str, fcnt32: int) -> Session:
        """Record the last accepted uplink counter; it never goes back."""
        s = self._require(dev_eui)
        if s.fcnt_up is not None and fcnt32 < s.fcnt_up:
            raise ValueError(f"{dev_eui}: uplink counter {fcnt32} below {s.fcnt_up}")
        return self._put(replace(s, fcnt_up=fcnt32))

    def take_fcnt_down(self, dev_eui: str) -> int:
        """The downlink counter to use now; the next one is committed before returning."""
        # Under the lock: two downlinks taken at once from two threads (a level and a
        # program to one group) must not both get the same counter, which every device
        # would drop as a replay.
        with self._lock:
            s = self._require(dev_eui)
            self._put(replace(s, fcnt_down=s.fcnt_down + 1))
            return s.fcnt_down

    def forget(self, dev_eui: str) -> None:
        with self._lock:
            db = self._require_db()
            db.execute("DELETE FROM session WHERE dev_eui = ?", (dev_eui.lower(),))
            self._forget_cached(dev_eui.lower())

    # -- internals ----------------------------------------------------------------------------

    def _require(self, dev_eui: str) -> Session:
        s = self.get(dev_eui)
        if s is None:
            raise KeyError(f"no session for DevEUI {dev_eui}")
        return s

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("session store is not open")
        return self._db

    def _put(self, s: Session) -> Session:
        with self._lock:
            db = self._require_db()
            db.execute(
                "INSERT OR REPLACE INTO session VALUES (?,?,?,?,?,?,?,?,?)",
                (s.dev_eui, s.dev_addr, s.nwk_s_key, s.app_s_key, s.fcnt_up, s.fcnt_down,
                 s.dev_nonce, s.join_nonce, s.joined),
            )
            self._remember(s)
        return s

    def _remember(self, s: Session) -> None:
        self._forget_cached(s.dev_eui)
        self._cache[s.dev_eui] = s
        self._by_addr.setdefault(s.dev_addr, set()).add(s.dev_eui)

    def _forget_cached(self, dev_eui: str) -> None:
        old = self._cache.pop(dev_eui, None)
        if old is not None:
            users = self._by_addr.get(old.dev_addr)
            if users is not None:
                users.discard(dev_eui)
                if not users:
                    del self._by_addr[old.dev_addr]
