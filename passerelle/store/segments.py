"""The durable store: an on-disk queue of CBOR records in SQLite (WAL), with group commit.

Contract
--------
* When ``put``/``put_many`` returns, the records are in a committed SQLite transaction with
  ``synchronous=FULL`` in WAL mode: the WAL was fsynced, so they survive kill -9 and power
  loss. Puts that arrive while a commit is in flight wait for the next one: many records
  share one fsync (group commit), and a put waits at most one commit plus ``max_delay``.
* Records are kept in *segments*: one row per commit and priority holding up to
  ``batch_records`` records as one CBOR array (strings shared by reference, RFC 8949 tag
  256). A row per record would cost a B-tree cell and index entry each, and deleting them
  would rewrite every page they sat on; a segment is written once and freed whole, so the
  flash sees about two writes of each byte (WAL, then checkpoint) and nothing more.
* Segments are grouped into *batches*, one upstream pack each. A commit joins the open
  batch of its priority while that batch holds fewer than ``batch_records`` records and is
  younger than ``batch_age``; otherwise it opens a new one. The batch is written in the
  segment's row at commit time, and a batch is sealed (never grows again) before it is first
  handed out, and at every open: a batch resent after a crash holds the same records, so it
  carries the same idempotency key. Alarms are never held back: their batches seal at once.
* Every record gets a sequence number that never repeats, even across restarts and after the
  store emptied: the uplink's idempotency keys are built from it. The high-water mark is
  reserved ahead in ``meta`` (``SEQ_RESERVE`` at a time), so an ordinary commit writes no
  meta page; a restart skips the rest of the reservation.
* One table and no secondary index: the row key is ``(ALARM - priority) << 48 | seq``, so
  the primary key alone walks the queue in drain order (highest priority, then oldest), a
  batch is a contiguous key range, and a commit dirties only the right-hand leaf pages of
  its priority. Every index or meta row touched would cost one more 4 KiB WAL frame per
  fsync, which is what wears the flash.
* Records leave only when acknowledged (:meth:`ack`), or when evicted and counted:
  ``full`` (over ``max_bytes``: lowest priority, oldest first), ``ttl`` (older than ``ttl``),
  ``disk_full`` (SQLite could not grow the file), ``corrupt`` (a segment that no longer
  decodes). Counters persist in the database, so nothing is dropped silently.
* A database that SQLite reports corrupt is renamed ``<name>.corrupt-<UTC time>`` (kept for
  forensics), a fresh one is created and an alarm is raised. The store never empties itself
  on reconnect or reload: only the agent's process owns it.
* Clock: TTL ages use the wall clock at commit. A segment dated in the future (clock went
  backwards) has age 0; dates before 2020 (a Pi without RTC before NTP) are never expired.

All SQLite work happens on one worker thread, so the event loop never waits for a disk.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cbor2

from ..model import Priority, Record

log = logging.getLogger("passerelle.store")

SEGMENT_RECORDS = 4096  # upper bound on records per segment whatever batch_records says
CLOCK_VALID_AFTER = 1_577_836_800.0  # 2020-01-01T00:00:00Z
# commit_failed: records of held puts (``hold``) whose later commit failed.
EVICTION_CAUSES = ("full", "ttl", "disk_full", "corrupt", "commit_failed")

SCHEMA_VERSION = 2
PAGE_SIZE = 1024
SEQ_BITS = 48  # 2.8e14 records: 89 years at 100,000 records/s
SEQ_MASK = (1 << SEQ_BITS) - 1
SEQ_RESERVE = 1 << 20  # sequence numbers reserved per meta write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segment (
    key    INTEGER PRIMARY KEY,  -- (ALARM - priority) << 48 | seq of the first record
    batch  INTEGER NOT NULL,     -- seq of the batch's first segment: one upstream pack
    n      INTEGER NOT NULL,     -- records in the segment
    stored REAL    NOT NULL,     -- wall clock at commit (TTL)
    nbytes INTEGER NOT NULL,
    body   BLOB    NOT NULL      -- CBOR array of [device, name, value, time, unit]
);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
"""

# Version 1 (before 0.1.0 was tagged) had a seq key, a prio column and two indexes.
_MIGRATE_V1 = f"""
CREATE TABLE segment_v2 (
    key INTEGER PRIMARY KEY, batch INTEGER NOT NULL, n INTEGER NOT NULL,
    stored REAL NOT NULL, nbytes INTEGER NOT NULL, body BLOB NOT NULL);
INSERT INTO segment_v2 SELECT (({int(Priority.ALARM)} - prio) << {SEQ_BITS}) | seq,
    batch, n, stored, nbytes, body FROM segment;
DROP TABLE segment;
ALTER TABLE segment_v2 RENAME TO segment;
"""


def _key(prio: int, seq: int) -> int:
    return ((int(Priority.ALARM) - prio) << SEQ_BITS) | seq


def _key_range(prio: int) -> tuple[int, int]:
    lo = _key(prio, 0)
    return lo, lo | SEQ_MASK


class StoreError(Exception):
    """The store could not take records; the caller must count them as dropped."""


class StoreClosed(StoreError):
    pass


class StoreFull(StoreError):
    pass


@dataclass(slots=True)
class Batch:
    """What the uplink leases, publishes as one pack and acknowledges.

    ``seq`` (its first record's sequence number) identifies it; ``seq``-``last_seq`` is the
    range of the idempotency key (other priorities' records may sit inside the range).
    """

    seq: int
    priority: Priority
    records: list[Record]
    last_seq: int



@dataclass(slots=True)
class StoreStats:
    depth: int
    bytes: int
    segments: int
    oldest_age: float | None
    evicted: dict[str, int]
    quarantined: int
    next_seq: int
    commits: int
    last_error: str | None


@dataclass(slots=True)
class _Group:
    """Records waiting for the same commit, and the future all their putters await."""

    by_prio: dict[int, list[Record]] = field(default_factory=dict)
    count: int = 0
    done: asyncio.Future[None] | None = None  # None while only held records wait
    first: float = 0.0  # loop time of the first record (``hold`` counts from it)


class DurableStore:
    """Durable CBOR queue. Use as ``async with DurableStore(path) as store:``.

    path: the SQLite file (its directory is created, mode 0700).
    max_bytes: bound on the encoded records kept; above it, lowest priority goes first.
    ttl: seconds a record may wait for the uplink before it is evicted.
    max_delay: how long a commit may wait for more records (fewer fsyncs, less flash wear);
        a put therefore returns within about one fsync plus ``max_delay``.
    on_alarm: called with (cause, text) for quarantine and disk-full events.
    batch_records: records per upstream pack (and the most a segment holds).
    batch_age: seconds a batch stays open for more commits (bigger packs, fewer bytes per
        record upstream) before it may be sent; alarm batches never wait.
    hold: 0 (the default) keeps the contract above for every put. Above 0, a put below
        ALARM priority returns at once and its records wait in RAM up to ``hold`` seconds
        (or ``batch_records`` records, or the next durable put) for a shared commit: a
        trickle of small commits costs a 4 KiB WAL page each, so this spares the flash at
        the price of losing up to ``hold`` seconds of such records in a power cut.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 256 * 1024 * 1024,
        ttl: float = 30 * 86400.0,
        max_delay: float = 0.05,
        clock: Callable[[], float] = time.time,
        on_alarm: Callable[[str, str], None] | None = None,
        max_pages: int | None = None,
        batch_records: int = 250,
        batch_age: float = 0.0,
        hold: float = 0.0,
    ) -> None:
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.ttl = ttl
        self.max_delay = max_delay
        self._clock = clock
        self._on_alarm = on_alarm
        self._max_pages = max_pages  # tests: a ceiling that makes SQLite report a full disk
        self.batch_records = max(1, min(batch_records, SEGMENT_RECORDS))
        self.batch_age = batch_age
        self.hold = hold
        # priority -> [batch id, records, opened at]: the batch the next commit may join.
        # Owned by the worker thread (commits and reads both run there).
        self._open: dict[int, list[float]] = {}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self._db: sqlite3.Connection | None = None
        self._group = _Group()
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        # State below is owned by the worker thread while a job runs; the event loop only
        # reads it between jobs (single-worker executor, jobs awaited one at a time).
        self._next_seq = 0
        self._bytes = 0
        self._depth = 0
        self._segments = 0
        self._oldest: float | None = None
        self._counters: dict[str, int] = {c: 0 for c in EVICTION_CAUSES}
        self._counters["quarantined"] = 0
        self._commits = 0
        self._fresh_quarantines = 0  # quarantines since open, added to the new file's meta
        self._last_error: str | None = None
        self._seq_reserved = 0  # next_seq persisted in meta: a restart starts there
        self._meta_dirty = False  # counters changed since meta was last written
        # Leased batches: batch id -> (first key, last key), its rows' contiguous range.
        self._leased: dict[int, tuple[int, int]] = {}
        self._acked_pending: list[tuple[int, int]] = []  # key ranges to delete
        # Acknowledged batches whose rows are not deleted yet: never leased again.
        self._acked_unsaved: dict[int, tuple[int, int]] = {}
        self._lock = asyncio.Lock()  # one DB job at a time from the loop's side
        self._committed = asyncio.Event()  # new records to lease

    # -- lifetime -------------------------------------------------------------------------

    async def __aenter__(self) -> DurableStore:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        await self._run(self._open_db)
        self._closing = False
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Commit what is pending, checkpoint the WAL and close. Puts after this fail."""
        if self._writer is None:
            return
        self._closing = True
        self._wake.set()
        await self._writer
        self._writer = None
        await self._run(self._close_db)
        self._pool.shutdown(wait=True)

    async def _run(self, fn: Callable[..., object], *args: object) -> object:
        async with self._lock:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    # -- put (group commit) ---------------------------------------------------------------

    async def put(self, record: Record, priority: Priority = Priority.TELEMETRY) -> None:
        await self.put_many((record,), priority)

    async def put_many(
        self,
        records: Sequence[Record],
        priority: Priority = Priority.TELEMETRY,
        *,
        durable: bool = False,
    ) -> None:
        """Return once ``records`` are durable; raise StoreError if they could not be.

        With ``hold`` > 0, records below ALARM priority are only queued for a later commit,
        unless ``durable``: a caller about to promise delivery (a LoRaWAN ACK) needs the
        contract whatever ``hold`` says.
        """
        if self._closing or self._writer is None:
            raise StoreClosed("store is closed")
        if not records:
            return
        group = self._group
        loop = asyncio.get_running_loop()
        if not group.count:
            group.first = loop.time()
        group.by_prio.setdefault(int(priority), []).extend(records)
        group.count += len(records)
        self._wake.set()
        if self.hold > 0 and priority < Priority.ALARM and not durable:
            return
        if group.done is None:
            group.done = loop.create_future()
        # shield: a putter that is cancelled must not cancel everybody's commit.
        await asyncio.shield(group.done)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending = self._group
            if not self._closing and pending.count < self.batch_records:
                if pending.done is None and pending.count and not self._acked_pending:
                    # Only held records: commit when the oldest has waited ``hold``, or
                    # earlier if a durable put, an ack, a burst or close() comes first.
                    delay = pending.first + self.hold - asyncio.get_running_loop().time()
                    if delay > 0:
                        try:
                            await asyncio.wait_for(self._wake.wait(), delay)
                            continue  # woken: look again
                        except TimeoutError:
                            pass
                elif self.max_delay:
                    # Linger so a trickle of puts shares one fsync; a burst goes at once.
                    await asyncio.sleep(self.max_delay)
            group, self._group = self._group, _Group()
            if group.count or self._acked_pending:
                acked, self._acked_pending = self._acked_pending, []
                try:
                    await self._run(self._commit, group.by_prio, acked)
                except Exception as exc:  # the group fails, the store keeps running
                    self._acked_pending[:0] = acked  # deletions are retried next time
                    self._last_error = f"commit failed: {exc}"
                    log.error("commit failed: %s", exc, extra={"cause": "store.commit"})
                    if group.done is not None and not group.done.done():
                        group.done.set_exception(
                            exc if isinstance(exc, StoreError) else StoreError(str(exc))
                        )
                        group.done.exception()  # retrieved: no "never retrieved" warning
                    if self.hold > 0:  # held records had nobody to tell: count them
                        held = sum(len(v) for p, v in group.by_prio.items() if p < Priority.ALARM)
                        self._counters["commit_failed"] += held
                        self._meta_dirty = True
                else:
                    if group.count:
                        self._committed.set()
                    if group.done is not None and not group.done.done():
                        group.done.set_result(None)
            if self._closing and not self._group.count:
                return

    # -- drain side -----------------------------------------------------------------------

    async def lease(
        self, max_batches: int = 4, min_priority: Priority = Priority.DIAGNOSTIC
    ) -> list[Batch]:
        """The next batches to send, highest priority then oldest, not already leased;
        none below ``min_priority`` (what a spent daily budget holds back)."""
        self._committed.clear()  # before reading: a commit after this wakes wait_for_data
        found: list[tuple[Batch, tuple[int, int]]]
        found = await self._run(self._read, max_batches, min_priority)  # type: ignore[assignment]
        for batch, span in found:
            self._leased[batch.seq] = span
        return [batch for batch, _ in found]

    async def wait_for_data(self, timeout: float) -> None:
        """Wait until a commit adds records (or ``timeout`` passes)."""
        try:
            await asyncio.wait_for(self._committed.wait(), timeout)
        except TimeoutError:
            pass

    def release(self, seqs: Sequence[int] | None = None) -> None:
        """Give leased segments back (uplink lost); they will be leased again."""
        if seqs is None:
            self._leased.clear()
        else:
            for seq in seqs:
                self._leased.pop(seq, None)

    def ack(self, seq: int) -> None:
        """The broker acknowledged leased batch ``seq``: delete it with the next commit."""
        span = self._leased.pop(seq, None)
        if span is None:  # released meanwhile, or evicted: it will be leased (or is gone)
            return
        self._acked_unsaved[seq] = span
        self._acked_pending.append(span)
        self._wake.set()

    async def seal(self) -> None:
        """Close every open batch now, so the uplink may send it (shutdown, flush)."""
        await self._run(self._open.clear)

    async def sync(self) -> None:
        """Commit pending acknowledgements now (tests and shutdown)."""
        if self._acked_pending:
            acked, self._acked_pending = self._acked_pending, []
            await self._run(self._commit, {}, acked)

    def healthy(self) -> bool:
        """The writer runs: puts are being committed (the systemd watchdog asks this)."""
        return self._writer is not None and not self._writer.done()

    def stats(self) -> StoreStats:
        now = self._clock()
        age = None if self._oldest is None else max(0.0, now - self._oldest)
        evicted = {c: self._counters[c] for c in EVICTION_CAUSES}
        return StoreStats(
            depth=self._depth,
            bytes=self._bytes,
            segments=self._segments,
            oldest_age=age,
            evicted=evicted,
            quarantined=self._counters["quarantined"],
            next_seq=self._next_seq,
            commits=self._commits,
            last_error=self._last_error,
        )

    async def expire(self) -> int:
        """Evict segments past their TTL; returns how many records went."""
        before = self._counters["ttl"]
        await self._run(self._expire)
        return self._counters["ttl"] - before

    # -- worker thread ----------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        # Only takes effect on a new file. A commit writes whole pages to the WAL: 1 KiB
        # pages keep a small commit (one meter poll) at a few KiB, and 5 KiB segments
        # spill into overflow pages with little slack.
        db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, which is the durability contract.
        db.execute("PRAGMA synchronous=FULL")
        # Freed pages are reused, never zeroed or vacuumed: no extra flash writes.
        db.execute("PRAGMA secure_delete=OFF")
        db.execute("PRAGMA wal_autocheckpoint=1000")
        db.execute("PRAGMA cache_size=-2000")  # 2 MB page cache: RSS stays small
        if self._max_pages:
            db.execute(f"PRAGMA max_page_count={int(self._max_pages)}")
        return db

    def _open_db(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            db = self._connect()
            ok = db.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                db.close()
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            self._migrate(db)
        except sqlite3.DatabaseError as exc:
            self._quarantine(str(exc))
            db = self._connect()
            self._migrate(db)
        self._db = db
        self._load_state()

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this agent")
        columns = {r[1] for r in db.execute("PRAGMA table_info(segment)")}
        if "prio" in columns:
            db.executescript(f"BEGIN IMMEDIATE;{_MIGRATE_V1}COMMIT;")
            log.info("store migrated to schema %d", SCHEMA_VERSION)
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _quarantine(self, why: str) -> None:
        if self._db is not None:
            try:
                self._db.close()
            except sqlite3.Error:
                pass
            self._db = None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                os.replace(src, Path(str(moved) + suffix))
        self._fresh_quarantines += 1
        self._last_error = f"store quarantined to {moved.name}: {why}"
        log.error(self._last_error, extra={"cause": "store.corrupt"})
        if self._on_alarm:
            self._on_alarm("store.corrupt", self._last_error)

    def _load_state(self) -> None:
        db = self._require_db()
        meta = dict(db.execute("SELECT k, v FROM meta").fetchall())
        row = db.execute(
            "SELECT COALESCE(MAX((key & ?) + n), 0), COALESCE(SUM(n), 0),"
            " COALESCE(SUM(nbytes), 0), COUNT(*), MIN(stored) FROM segment",
            (SEQ_MASK,),
        ).fetchone()
        quarantined, self._fresh_quarantines = self._fresh_quarantines, 0
        # A restart starts after the reservation: sequence numbers never repeat.
        self._seq_reserved = int(meta.get("next_seq", 0))
        self._next_seq = max(self._seq_reserved, row[0])
        self._meta_dirty = bool(quarantined)
        self._depth, self._bytes, self._segments, self._oldest = row[1], row[2], row[3], row[4]
        for cause in EVICTION_CAUSES:
            self._counters[cause] = int(meta.get(f"evicted.{cause}", 0))
        self._counters["quarantined"] = int(meta.get("quarantined", 0)) + quarantined
        if quarantined:
            self._save_meta(db)

    def _require_db(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreClosed("store is not open")
        return self._db

    def _save_meta(self, db: sqlite3.Connection) -> None:
        """Write counters and the sequence reservation, only when one of them must move."""
        if not self._meta_dirty and self._next_seq <= self._seq_reserved:
            return
        reserved = max(self._seq_reserved, self._next_seq)
        if self._next_seq >= self._seq_reserved:
            reserved = self._next_seq + SEQ_RESERVE
        rows = [("next_seq", reserved), ("quarantined", self._counters["quarantined"])]
        rows += [(f"evicted.{c}", self._counters[c]) for c in EVICTION_CAUSES]
        db.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", rows)
        # In memory only once the caller's transaction commits; a rollback reloads state.
        self._seq_reserved = reserved
        self._meta_dirty = False

    def _commit(
        self, by_prio: dict[int, list[Record]], acked: list[tuple[int, int]]
    ) -> None:
        db = self._require_db()
        now = self._clock()
        rows = []
        seq = self._next_seq
        opened = {p: list(v) for p, v in self._open.items()}  # restored if the commit fails
        size = self.batch_records
        for prio in sorted(by_prio, reverse=True):
            records = by_prio[prio]
            for start in range(0, len(records), size):
                chunk = records[start : start + size]
                body = cbor2.dumps(chunk, string_referencing=True)
                rows.append((_key(prio, seq), self._batch_for(prio, seq, len(chunk), now),
                             len(chunk), now, len(body), body))
                seq += len(chunk)
        incoming = sum(r[4] for r in rows)
        try:
            self._commit_rows(db, rows, acked, seq, incoming)
        except BaseException:
            self._open = opened
            raise
        done = set(acked)
        for batch, span in list(self._acked_unsaved.items()):
            if span in done:
                del self._acked_unsaved[batch]

    def _batch_for(self, prio: int, seq: int, n: int, now: float) -> int:
        """The batch a new segment joins (see the module docstring)."""
        current = self._open.get(prio)
        if (
            current is not None
            and current[1] + n <= self.batch_records
            and 0 <= now - current[2] < self.batch_age
        ):
            current[1] += n
            batch = int(current[0])
        else:
            batch = seq
            current = self._open[prio] = [seq, n, now]
        if current[1] >= self.batch_records or prio >= Priority.ALARM or self.batch_age <= 0:
            del self._open[prio]  # sealed
        return batch

    def _commit_rows(
        self,
        db: sqlite3.Connection,
        rows: list[tuple[int, int, int, float, int, bytes]],
        acked: list[tuple[int, int]],
        seq: int,
        incoming: int,
    ) -> None:
        for attempt in range(64):
            try:
                self._transaction(db, rows, acked, seq, incoming)
                return
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_FULL:
                    raise
                # The disk (or the file's page ceiling) is full: make room by evicting the
                # least valuable segment and try again; alarm once per episode.
                if attempt == 0 and self._on_alarm:
                    self._on_alarm("store.disk_full", f"disk full writing {self.path}")
                self._last_error = f"disk full: {exc}"
                if not self._evict_one(db, "disk_full"):
                    break
        raise StoreFull(f"disk full and nothing left to evict in {self.path}")

    def _transaction(
        self,
        db: sqlite3.Connection,
        rows: list[tuple[int, int, int, float, int, bytes]],
        acked: list[tuple[int, int]],
        next_seq: int,
        incoming: int,
    ) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            gone = self._delete(db, acked)
            self._make_room(db, incoming - gone[1])
            db.executemany(
                "INSERT INTO segment (key, batch, n, stored, nbytes, body) VALUES (?,?,?,?,?,?)",
                rows,
            )
            previous_seq, self._next_seq = self._next_seq, next_seq
            try:
                self._save_meta(db)
                db.execute("COMMIT")
            except BaseException:
                self._next_seq = previous_seq
                raise
        except BaseException:
            if db.in_transaction:  # SQLITE_FULL has already rolled it back
                db.execute("ROLLBACK")
            self._load_state()  # in-memory figures follow what the database really holds
            raise
        self._commits += 1
        added_n = sum(r[2] for r in rows)
        self._depth += added_n - gone[0]
        self._bytes += incoming - gone[1]
        self._segments += len(rows) - gone[2]
        if rows and self._oldest is None:
            self._oldest = rows[0][3]
        if gone[2] or self._segments == 0:
            self._oldest = self._oldest_stored(db)

    def _oldest_stored(self, db: sqlite3.Connection) -> float | None:
        """Commit time of the first segment of each priority: four key lookups, no scan."""
        times = []
        for prio in Priority:
            lo, hi = _key_range(prio)
            row = db.execute(
                "SELECT stored FROM segment WHERE key BETWEEN ? AND ? ORDER BY key LIMIT 1",
                (lo, hi),
            ).fetchone()
            if row is not None:
                times.append(row[0])
        return min(times) if times else None

    def _delete(
        self, db: sqlite3.Connection, spans: list[tuple[int, int]]
    ) -> tuple[int, int, int]:
        n = nbytes = count = 0
        for first, last in spans:
            for row in db.execute(
                "DELETE FROM segment WHERE key BETWEEN ? AND ? RETURNING n, nbytes", (first, last)
            ).fetchall():  # already evicted segments are simply gone
                n += row[0]
                nbytes += row[1]
                count += 1
        return n, nbytes, count

    def _batch_span(self, db: sqlite3.Connection, first: int, batch: int) -> tuple[int, int]:
        """The key range of the batch whose first row is ``first``: up to the next batch."""
        hi = first | SEQ_MASK
        row = db.execute(
            "SELECT key FROM segment WHERE key > ? AND key <= ? AND batch != ? ORDER BY key"
            " LIMIT 1",
            (first, hi, batch),
        ).fetchone()
        return first, (hi if row is None else row[0] - 1)

    def _make_room(self, db: sqlite3.Connection, incoming: int) -> None:
        while self._bytes + incoming > self.max_bytes and self._segments > 0:
            if not self._evict_one(db, "full", in_tx=True):
                break

    def _evict_one(self, db: sqlite3.Connection, cause: str, in_tx: bool = False) -> bool:
        """Evict the lowest-priority, oldest batch; count its records under ``cause``."""
        for prio in sorted(Priority):
            lo, hi = _key_range(prio)
            row = db.execute(
                "SELECT key, batch FROM segment WHERE key BETWEEN ? AND ? ORDER BY key LIMIT 1",
                (lo, hi),
            ).fetchone()
            if row is not None:
                break
        else:
            return False
        batch = row[1]
        n, nbytes, count = self._delete(db, [self._batch_span(db, row[0], batch)])
        self._counters[cause] += n
        self._meta_dirty = True
        self._depth -= n
        self._bytes -= nbytes
        self._segments -= count
        self._leased.pop(batch, None)
        if self._open.get(prio, [None])[0] == batch:
            del self._open[prio]
        log.warning(
            "evicted %d records of priority %s (%s)",
            n,
            Priority(prio).name.lower(),
            cause,
            extra={"cause": f"store.evict.{cause}"},
        )
        if not in_tx:
            self._save_meta(db)
        return True

    def _expire(self) -> None:
        db = self._require_db()
        now = self._clock()
        if now < CLOCK_VALID_AFTER:
            return
        cutoff = now - self.ttl
        gone: list[tuple[int, int, int, int]] = []
        # Within a priority, rows were committed in key order: walk from the oldest and stop
        # at the first one still young. A row dated in the future (the clock went back)
        # stops the walk too: records may expire late, never early. Rows dated before 2020
        # (no clock yet) are never expired by age.
        for prio in Priority:
            lo, hi = _key_range(prio)
            cur = db.execute(
                "SELECT key, batch, n, nbytes, stored FROM segment WHERE key BETWEEN ? AND ?"
                " ORDER BY key",
                (lo, hi),
            )
            for key, batch, n, nbytes, stored in cur:
                if stored < CLOCK_VALID_AFTER:
                    continue
                if stored >= cutoff:
                    break
                gone.append((key, batch, n, nbytes))
            cur.close()
        if not gone:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany("DELETE FROM segment WHERE key = ?", [(g[0],) for g in gone])
            for _, batch, n, nbytes in gone:
                self._counters["ttl"] += n
                self._depth -= n
                self._bytes -= nbytes
                self._segments -= 1
                self._leased.pop(batch, None)
            self._meta_dirty = True
            self._save_meta(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._load_state()
            raise
        self._oldest = self._oldest_stored(db)
        log.warning(
            "expired %d records older than %ss",
            sum(g[2] for g in gone),
            self.ttl,
            extra={"cause": "store.evict.ttl"},
        )

    def _read(
        self, max_batches: int, min_priority: Priority = Priority.DIAGNOSTIC
    ) -> list[tuple[Batch, tuple[int, int]]]:
        db = self._require_db()
        now = self._clock()
        out: list[tuple[Batch, tuple[int, int]]] = []
        for prio in sorted(Priority, reverse=True):
            if prio < min_priority:
                break
            lo, hi = _key_range(prio)
            cursor = lo
            while len(out) < max_batches:
                row = db.execute(
                    "SELECT key, batch FROM segment WHERE key BETWEEN ? AND ? ORDER BY key"
                    " LIMIT 1",
                    (cursor, hi),
                ).fetchone()
                if row is None:
                    break
                first, batch = row
                span = self._leased.get(batch) or self._acked_unsaved.get(batch)
                if span is not None:  # in flight or done: jump over its rows
                    cursor = span[1] + 1
                    continue
                current = self._open.get(prio)
                if current is not None and current[0] == batch:
                    if 0 <= now - current[2] < self.batch_age:
                        break  # still filling (and the newest of its priority)
                    del self._open[prio]  # sealed before anybody sees it
                records, last_key, last_seq, corrupt = self._read_batch(db, first, hi, batch)
                for key in corrupt:
                    self._drop_corrupt(db, key)
                cursor = last_key + 1
                if records:
                    out.append((Batch(batch, Priority(prio), records, last_seq),
                                (first, last_key)))
            if len(out) >= max_batches:
                break
        return out

    def _read_batch(
        self, db: sqlite3.Connection, first: int, hi: int, batch: int
    ) -> tuple[list[Record], int, int, list[int]]:
        """Records of the batch starting at key ``first`` (its rows are contiguous)."""
        records: list[Record] = []
        corrupt: list[int] = []
        last_key, last_seq = first, batch
        cur = db.execute(
            "SELECT key, batch, body FROM segment WHERE key BETWEEN ? AND ? ORDER BY key",
            (first, hi),
        )
        for key, row_batch, body in cur:
            if row_batch != batch:
                break
            last_key = key
            try:
                decoded = [Record._make(r) for r in cbor2.loads(body)]
            except Exception as exc:  # a segment that no longer decodes: counted, dropped
                log.error("segment %d undecodable: %s", key & SEQ_MASK, exc,
                          extra={"cause": "store.corrupt"})
                corrupt.append(key)
                continue
            records.extend(decoded)
            last_seq = (key & SEQ_MASK) + len(decoded) - 1
        cur.close()
        return records, last_key, last_seq, corrupt

    def _drop_corrupt(self, db: sqlite3.Connection, key: int) -> None:
        row = db.execute("DELETE FROM segment WHERE key = ? RETURNING n, nbytes", (key,)).fetchone()
        if row:
            self._counters["corrupt"] += row[0]
            self._depth -= row[0]
            self._bytes -= row[1]
            self._segments -= 1
            self._meta_dirty = True
            self._save_meta(db)

    def _close_db(self) -> None:
        if self._db is None:
            return
        try:
            # A clean stop records the exact high-water mark: the next start skips nothing.
            self._db.execute(
                "INSERT OR REPLACE INTO meta (k, v) VALUES ('next_seq', ?)", (self._next_seq,)
            )
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
            self._db = None
