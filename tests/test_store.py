"""The durable store's contract, on a real SQLite file."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import pytest

from passerelle.model import Priority, Record
from passerelle.store import DurableStore, StoreClosed, StoreFull


def recs(n: int, start: int = 0, device: str = "counter", t0: float = 1.8e9) -> list[Record]:
    return [Record(device, "counter", i, t0 + i * 0.01) for i in range(start, start + n)]


async def drain(store: DurableStore) -> list[tuple[Priority, Record]]:
    out = []
    while segments := await store.lease(8):
        for seg in segments:
            out.extend((seg.priority, r) for r in seg.records)
            store.ack(seg.seq)
        await store.sync()
    return out


async def test_put_lease_ack_roundtrip(tmp_path: Path) -> None:
    async with DurableStore(tmp_path / "s.db") as store:
        await store.put_many(recs(10))
        await store.put(Record("door", "open", True, 1.8e9, None), Priority.ALARM)
        st = store.stats()
        assert st.depth == 11
        got = await drain(store)
        # Alarms drain first, then the rest in order.
        assert got[0] == (Priority.ALARM, Record("door", "open", True, 1.8e9, None))
        assert [r.value for _, r in got[1:]] == list(range(10))
        assert store.stats().depth == 0


async def test_records_survive_reopen_and_seq_never_repeats(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with DurableStore(path) as store:
        await store.put_many(recs(5))
        segs = await store.lease()
        first_seq = segs[0].seq
        for s in segs:
            store.ack(s.seq)
    async with DurableStore(path) as store:
        assert store.stats().depth == 0
        await store.put_many(recs(3, 5))
        (seg,) = await store.lease()
        # The store emptied, yet the sequence goes on: idempotency keys never repeat.
        assert seg.seq == first_seq + 5
    async with DurableStore(path) as store:
        assert [r.value for _, r in await drain(store)] == [5, 6, 7]


async def test_unacked_records_are_leased_again_after_release(tmp_path: Path) -> None:
    async with DurableStore(tmp_path / "s.db") as store:
        await store.put_many(recs(4))
        (seg,) = await store.lease()
        assert await store.lease() == []  # leased: not handed out twice
        store.release()
        (again,) = await store.lease()
        assert again.seq == seg.seq and again.records == seg.records


async def test_concurrent_puts_share_commits(tmp_path: Path) -> None:
    async with DurableStore(tmp_path / "s.db", max_delay=0.01) as store:
        await asyncio.gather(*(store.put(r) for r in recs(500)))
        st = store.stats()
        assert st.depth == 500
        assert st.commits < 50, st.commits  # group commit, not one fsync per record


async def test_full_store_evicts_lowest_priority_oldest_first(tmp_path: Path) -> None:
    async with DurableStore(tmp_path / "s.db", max_bytes=6000, max_delay=0) as store:
        await store.put_many(recs(100, 0, "alarm-src"), Priority.ALARM)
        await store.put_many(recs(100, 0, "energy"), Priority.ENERGY)
        for k in range(10):
            await store.put_many(recs(100, k * 100, "telemetry"), Priority.TELEMETRY)
        st = store.stats()
        assert st.bytes <= 6000
        assert st.evicted["full"] > 0
        kept = await drain(store)
        devices = {r.device for _, r in kept}
        assert {"alarm-src", "energy"} <= devices  # higher priorities kept
        values = [r.value for _, r in kept if r.device == "telemetry"]
        assert values == sorted(values) and values[-1] == 999  # the newest routine data kept
        assert st.evicted["full"] == 1000 - len(values)
    # The eviction count survives a restart: never silent.
    async with DurableStore(tmp_path / "s.db", max_bytes=6000) as store:
        assert store.stats().evicted["full"] == st.evicted["full"]


async def test_ttl_and_clock_going_backwards(tmp_path: Path) -> None:
    now = [1.8e9]
    async with DurableStore(tmp_path / "s.db", ttl=3600, clock=lambda: now[0]) as store:
        await store.put_many(recs(10))
        now[0] -= 86400  # clock went backwards a day: nothing expires, age is not negative
        assert await store.expire() == 0
        assert store.stats().oldest_age == 0.0
        now[0] += 86400 + 1800
        assert await store.expire() == 0
        now[0] += 3600
        assert await store.expire() == 10
        assert store.stats().evicted["ttl"] == 10 and store.stats().depth == 0


async def test_corrupt_database_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database, a worn SD card wrote it" * 200)
    alarms: list[tuple[str, str]] = []
    async with DurableStore(path, on_alarm=lambda c, t: alarms.append((c, t))) as store:
        assert store.stats().quarantined == 1
        assert alarms and alarms[0][0] == "store.corrupt"
        await store.put_many(recs(3))
        assert store.stats().depth == 3
    quarantined = list(tmp_path.glob("s.db.corrupt-*"))
    assert quarantined and quarantined[0].read_bytes().startswith(b"this is not")
    async with DurableStore(path) as store:  # the count persists in the new file
        assert store.stats().quarantined == 1 and store.stats().depth == 3


async def test_corrupt_page_inside_database_is_quarantined(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with DurableStore(path) as store:
        for k in range(20):
            await store.put_many(recs(500, k * 500))
    raw = bytearray(path.read_bytes())
    for off in range(4096 * 2, len(raw), 4096):  # trash every page but the header's
        raw[off : off + 64] = b"\xff" * 64
    path.write_bytes(bytes(raw))
    async with DurableStore(path) as store:
        assert store.stats().quarantined == 1
        await store.put_many(recs(1))


async def test_full_disk_evicts_and_keeps_running(tmp_path: Path) -> None:
    alarms: list[str] = []
    async with DurableStore(
        tmp_path / "s.db", max_pages=40, max_delay=0, on_alarm=lambda c, t: alarms.append(c)
    ) as store:
        for k in range(60):
            await store.put_many(recs(200, k * 200), Priority.TELEMETRY)
        st = store.stats()
        assert st.evicted["disk_full"] > 0
        assert "store.disk_full" in alarms
        # Newest data is there and the store still works.
        values = [r.value for _, r in await drain(store)]
        assert values[-1] == 60 * 200 - 1
        assert values == sorted(values)


async def test_put_bigger_than_the_disk_fails_clearly(tmp_path: Path) -> None:
    async with DurableStore(tmp_path / "s.db", max_pages=12, max_delay=0) as store:
        big = [Record("cam", "blob", os.urandom(4000), 1.8e9) for _ in range(40)]
        with pytest.raises(StoreFull):
            await store.put_many(big)
        await store.put_many(recs(2))  # the store goes on
        assert store.stats().depth == 2


async def test_put_after_close_is_refused(tmp_path: Path) -> None:
    store = DurableStore(tmp_path / "s.db")
    await store.open()
    await store.close()
    with pytest.raises(StoreClosed):
        await store.put_many(recs(1))


async def test_database_file_uses_wal_and_full_sync(tmp_path: Path) -> None:
    async with DurableStore(tmp_path / "s.db") as store:
        await store.put_many(recs(1))
        db = sqlite3.connect(tmp_path / "s.db")
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()


async def test_small_commits_join_one_batch_sealed_before_it_is_sent(tmp_path: Path) -> None:
    now = [1.8e9]
    path = tmp_path / "s.db"
    kw = dict(max_delay=0, batch_records=100, batch_age=1.0, clock=lambda: now[0])
    async with DurableStore(path, **kw) as store:  # type: ignore[arg-type]
        for k in range(10):
            await store.put_many(recs(7, k * 7))
            now[0] += 0.05
        assert await store.lease() == []  # the batch is still filling
        now[0] += 1.0
        (batch,) = await store.lease()
        assert [r.value for r in batch.records] == list(range(70))
        await store.put_many(recs(3, 70))  # a sealed batch never grows: a new one opens
        now[0] += 2
        (second,) = await store.lease()
        assert [r.value for r in second.records] == [70, 71, 72]
        store.ack(batch.seq)
        # Acknowledged but not yet deleted: never handed out again in the meantime.
        store.release()
        assert [b.seq for b in await store.lease()] == [second.seq]
    async with DurableStore(path, **kw) as store:  # type: ignore[arg-type]
        # After a restart the unacknowledged batch comes back whole, same first/last seq.
        (again,) = await store.lease()
        assert (again.seq, again.last_seq, again.records) == (
            second.seq, second.last_seq, second.records)


async def test_alarms_are_never_held_back(tmp_path: Path) -> None:
    async with DurableStore(tmp_path / "s.db", batch_age=60.0) as store:
        await store.put(Record("door", "open", True, 1.8e9), Priority.ALARM)
        (batch,) = await store.lease()
        assert batch.priority == Priority.ALARM


def _copy_like_a_power_cut(src: Path, dst: Path) -> None:
    """What a power cut leaves: the database and its WAL as they are on disk, no clean close."""
    for suffix in ("", "-wal"):
        if Path(f"{src}{suffix}").exists():
            Path(f"{dst}{suffix}").write_bytes(Path(f"{src}{suffix}").read_bytes())


async def test_seq_never_repeats_after_a_power_cut(tmp_path: Path) -> None:
    path, cut = tmp_path / "s.db", tmp_path / "cut.db"
    async with DurableStore(path) as store:
        await store.put_many(recs(5))
        (batch,) = await store.lease()
        store.ack(batch.seq)
        await store.sync()  # the store is empty: only meta remembers the sequence
        _copy_like_a_power_cut(path, cut)
        await store.put_many(recs(2, 100))
        (after,) = await store.lease()
    async with DurableStore(cut) as store:
        assert store.stats().depth == 0
        await store.put_many(recs(2, 200))
        (batch2,) = await store.lease()
        # Past everything the lost process may have handed out: keys cannot collide.
        assert batch2.seq > after.last_seq


async def test_version_1_database_is_migrated_in_place(tmp_path: Path) -> None:
    import cbor2

    path = tmp_path / "v1.db"
    db = sqlite3.connect(path)
    db.executescript(
        """
        CREATE TABLE segment (seq INTEGER PRIMARY KEY, batch INTEGER NOT NULL,
            n INTEGER NOT NULL, prio INTEGER NOT NULL, stored REAL NOT NULL,
            nbytes INTEGER NOT NULL, body BLOB NOT NULL);
        CREATE INDEX segment_drain ON segment (prio, batch, seq);
        CREATE INDEX segment_batch ON segment (batch);
        CREATE TABLE meta (k TEXT PRIMARY KEY, v INTEGER NOT NULL) WITHOUT ROWID;
        INSERT INTO meta VALUES ('next_seq', 7), ('evicted.full', 3);
        """
    )
    rows = [(0, 0, 3, 1, recs(3)), (3, 0, 2, 1, recs(2, 3)), (5, 5, 2, 3, recs(2, 50))]
    for seq, batch, n, prio, chunk in rows:
        body = cbor2.dumps([list(r) for r in chunk])
        db.execute("INSERT INTO segment VALUES (?,?,?,?,?,?,?)",
                   (seq, batch, n, prio, 1.8e9, len(body), body))
    db.commit()
    db.close()
    async with DurableStore(path) as store:
        st = store.stats()
        assert (st.depth, st.evicted["full"], st.next_seq) == (7, 3, 7)
        got = await drain(store)
        assert [(p, r.value) for p, r in got] == [
            (Priority.ALARM, 50), (Priority.ALARM, 51), *[(Priority.TELEMETRY, i) for i in range(5)]
        ]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 2
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == []
    db.close()


async def test_commits_leave_no_index_to_rewrite(tmp_path: Path) -> None:
    """Each index touched costs one more 4 KiB WAL frame per fsync: the schema has none."""
    async with DurableStore(tmp_path / "s.db") as store:
        await store.put_many(recs(3))
        db = sqlite3.connect(tmp_path / "s.db")
        names = db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall()
        db.close()
        assert names == []


async def test_hold_trades_a_power_cut_window_for_fewer_commits(tmp_path: Path) -> None:
    path, cut = tmp_path / "s.db", tmp_path / "cut.db"
    async with DurableStore(path, hold=0.4, max_delay=0.0) as store:
        commits0 = store.stats().commits
        for k in range(5):  # a meter's polls: each put returns at once
            await asyncio.wait_for(store.put_many(recs(20, 20 * k)), 0.05)
        assert store.stats().depth == 0  # in RAM only
        _copy_like_a_power_cut(path, cut)  # what a power cut now would leave: nothing
        await asyncio.sleep(0.6)
        assert store.stats().depth == 100
        assert store.stats().commits - commits0 == 1  # five polls, one fsync
        # A durable put (an alarm) takes what is held along at once.
        await store.put_many(recs(3, 500))
        await store.put(Record("door", "open", True, 1.8e9), Priority.ALARM)
        assert store.stats().depth == 104
    async with DurableStore(cut) as store:
        assert store.stats().depth == 0


async def test_held_records_are_committed_on_close(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with DurableStore(path, hold=60.0) as store:
        await store.put_many(recs(7))
    async with DurableStore(path) as store:
        assert store.stats().depth == 7


async def test_failed_commit_of_held_records_is_counted(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    async with DurableStore(path, hold=0.1, max_pages=64) as store:
        big = [Record("cam", "blob", os.urandom(300_000), 1.8e9)]
        await store.put_many(big)  # held: more than the whole file may hold
        await asyncio.sleep(0.4)
        assert store.stats().evicted["commit_failed"] == 1
        assert store.stats().depth == 0
        await store.put_many(recs(3))  # and the store keeps going
        await asyncio.sleep(0.3)
        assert store.stats().depth == 3


async def test_durable_put_ignores_hold(tmp_path: Path) -> None:
    """A LoRaWAN ACK promises delivery: its put is on disk when it returns, hold or not."""
    async with DurableStore(tmp_path / "s.db", hold=60.0) as store:
        await store.put_many(recs(2))  # held
        assert store.stats().depth == 0
        await store.put_many(recs(3, 10), durable=True)
        assert store.stats().depth == 5  # the held ones went in the same commit
