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
  store emptied (the high-water mark is persisted with each commit): the uplink's
  idempotency keys are built from it.
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
EVICTION_CAUSES = ("full", "ttl", "disk_full", "corrupt")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS segment (
    seq    INTEGER PRIMARY KEY,  -- sequence number of the segment's first record
    batch  INTEGER NOT NULL,     -- seq of the batch's first segment: one upstream pack
    n      INTEGER NOT NULL,     -- records in the segment
    prio   INTEGER NOT NULL,
    stored REAL    NOT NULL,     -- wall clock at commit (TTL)
    nbytes INTEGER NOT NULL,
    body   BLOB    NOT NULL      -- CBOR array of [device, name, value, time, unit]
);
CREATE INDEX IF NOT EXISTS segment_drain ON segment (prio, batch, seq);
-- Reading and deleting one batch must not scan the backlog (one row per commit: cheap).
CREATE INDEX IF NOT EXISTS segment_batch ON segment (batch);
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
"""


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
    done: asyncio.Future[None] | None = None


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
        self._leased: set[int] = set()
        self._acked_pending: list[int] = []
        # Acknowledged batches whose rows are not deleted yet: never leased again.
        self._acked_unsaved: set[int] = set()
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
        self, records: Sequence[Record], priority: Priority = Priority.TELEMETRY
    ) -> None:
        """Return once ``records`` are durable; raise StoreError if they could not be."""
        if self._closing or self._writer is None:
            raise StoreClosed("store is closed")
        if not records:
            return
        group = self._group
        if group.done is None:
            group.done = asyncio.get_running_loop().create_future()
        group.by_prio.setdefault(int(priority), []).extend(records)
        group.count += len(records)
        self._wake.set()
        # shield: a putter that is cancelled must not cancel everybody's commit.
        await asyncio.shield(group.done)

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.max_delay and not self._closing and self._group.count < self.batch_records:
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
                else:
                    if group.count:
                        self._committed.set()
                    if group.done is not None and not group.done.done():
                        group.done.set_result(None)
            if self._closing and not self._group.count:
                return

    # -- drain side -----------------------------------------------------------------------

    async def lease(self, max_batches: int = 4) -> list[Batch]:
        """The next batches to send, highest priority then oldest, not already leased."""
        self._committed.clear()  # before reading: a commit after this wakes wait_for_data
        batches: list[Batch] = await self._run(self._read, max_batches)  # type: ignore[assignment]
        self._leased.update(b.seq for b in batches)
        return batches

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
            self._leased.difference_update(seqs)

    def ack(self, seq: int) -> None:
        """The broker acknowledged batch ``seq``: delete it with the next commit."""
        self._leased.discard(seq)
        self._acked_unsaved.add(seq)
        self._acked_pending.append(seq)
        self._wake.set()

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
            db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            self._quarantine(str(exc))
            db = self._connect()
            db.executescript(_SCHEMA)
        self._db = db
        self._load_state()

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
            "SELECT COALESCE(MAX(seq + n), 0), COALESCE(SUM(n), 0),"
            " COALESCE(SUM(nbytes), 0), COUNT(*), MIN(stored) FROM segment"
        ).fetchone()
        quarantined, self._fresh_quarantines = self._fresh_quarantines, 0
        self._next_seq = max(int(meta.get("next_seq", 0)), row[0])
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
        rows = [("next_seq", self._next_seq), ("quarantined", self._counters["quarantined"])]
        rows += [(f"evicted.{c}", self._counters[c]) for c in EVICTION_CAUSES]
        db.executemany("INSERT OR REPLACE INTO meta (k, v) VALUES (?, ?)", rows)

    def _commit(self, by_prio: dict[int, list[Record]], acked: list[int]) -> None:
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
                rows.append((seq, self._batch_for(prio, seq, len(chunk), now), len(chunk),
                             prio, now, len(body), body))
                seq += len(chunk)
        incoming = sum(r[5] for r in rows)
        try:
            self._commit_rows(db, rows, acked, seq, incoming)
        except BaseException:
            self._open = opened
            raise
        for seq_ in acked:
            self._acked_unsaved.discard(seq_)

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
        rows: list[tuple[int, int, int, int, float, int, bytes]],
        acked: list[int],
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
        rows: list[tuple[int, int, int, int, float, int, bytes]],
        acked: list[int],
        next_seq: int,
        incoming: int,
    ) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            gone = self._delete(db, acked)
            self._make_room(db, incoming - gone[1])
            db.executemany(
                "INSERT INTO segment (seq, batch, n, prio, stored, nbytes, body)"
                " VALUES (?,?,?,?,?,?,?)",
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
            self._oldest = rows[0][4]
        if gone[2] or self._segments == 0:
            self._oldest = db.execute("SELECT MIN(stored) FROM segment").fetchone()[0]

    def _delete(self, db: sqlite3.Connection, batches: list[int]) -> tuple[int, int, int]:
        n = nbytes = count = 0
        for batch in batches:
            for row in db.execute(
                "DELETE FROM segment WHERE batch = ? RETURNING n, nbytes", (batch,)
            ).fetchall():  # already evicted segments are simply gone
                n += row[0]
                nbytes += row[1]
                count += 1
        return n, nbytes, count

    def _make_room(self, db: sqlite3.Connection, incoming: int) -> None:
        while self._bytes + incoming > self.max_bytes and self._segments > 0:
            if not self._evict_one(db, "full", in_tx=True):
                break

    def _evict_one(self, db: sqlite3.Connection, cause: str, in_tx: bool = False) -> bool:
        """Evict the lowest-priority, oldest batch; count its records under ``cause``."""
        row = db.execute(
            "SELECT batch, prio FROM segment ORDER BY prio, batch LIMIT 1"
        ).fetchone()
        if row is None:
            return False
        batch, prio = row
        n, nbytes, count = self._delete(db, [batch])
        self._counters[cause] += n
        self._depth -= n
        self._bytes -= nbytes
        self._segments -= count
        self._leased.discard(batch)
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
        db.execute("BEGIN IMMEDIATE")
        rows = db.execute(
            "DELETE FROM segment WHERE stored >= ? AND stored < ? RETURNING batch, n, nbytes",
            (CLOCK_VALID_AFTER, cutoff),
        ).fetchall()
        for seq, n, nbytes in rows:
            self._counters["ttl"] += n
            self._depth -= n
            self._bytes -= nbytes
            self._segments -= 1
            self._leased.discard(seq)
        self._save_meta(db)
        db.execute("COMMIT")
        if rows:
            self._oldest = db.execute("SELECT MIN(stored) FROM segment").fetchone()[0]
            log.warning(
                "expired %d records older than %ss",
                sum(r[1] for r in rows),
                self.ttl,
                extra={"cause": "store.evict.ttl"},
            )

    def _read(self, max_batches: int) -> list[Batch]:
        db = self._require_db()
        now = self._clock()
        skip = self._leased | self._acked_unsaved
        # One priority at a time, so the (prio, batch) index walks batches in drain order and
        # LIMIT stops the walk early however long the backlog is.
        limit = max_batches + len(skip) + len(self._open)
        rows: list[tuple[int, int]] = []
        for prio in sorted(Priority, reverse=True):
            rows += db.execute(
                "SELECT DISTINCT batch, prio FROM segment WHERE prio = ? ORDER BY batch LIMIT ?",
                (int(prio), limit),
            ).fetchall()
            if len(rows) >= limit:
                break
        out: list[Batch] = []
        for batch, prio in rows:
            if batch in skip:
                continue
            current = self._open.get(prio)
            if current is not None and current[0] == batch:
                if 0 <= now - current[2] < self.batch_age:
                    continue  # still filling: later commits may join it
                del self._open[prio]  # sealed before anybody sees it
            records: list[Record] = []
            last = batch
            for seq, body in db.execute(
                "SELECT seq, body FROM segment WHERE batch = ? ORDER BY seq", (batch,)
            ).fetchall():
                try:
                    decoded = [Record._make(r) for r in cbor2.loads(body)]
                except Exception as exc:  # a segment that no longer decodes: counted, dropped
                    log.error("segment %d undecodable: %s", seq, exc,
                              extra={"cause": "store.corrupt"})
                    self._drop_corrupt(db, seq)
                    continue
                records.extend(decoded)
                last = seq + len(decoded) - 1
            if records:
                out.append(Batch(batch, Priority(prio), records, last))
            if len(out) >= max_batches:
                break
        return out

    def _drop_corrupt(self, db: sqlite3.Connection, seq: int) -> None:
        row = db.execute("DELETE FROM segment WHERE seq = ? RETURNING n, nbytes", (seq,)).fetchone()
        if row:
            self._counters["corrupt"] += row[0]
            self._depth -= row[0]
            self._bytes -= row[1]
            self._segments -= 1
            self._save_meta(db)

    def _close_db(self) -> None:
        if self._db is None:
            return
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()
            self._db = None
