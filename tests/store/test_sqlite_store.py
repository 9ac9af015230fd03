"""``SqliteStore`` against the store contract, plus its own promises: URL parsing, WAL and
``synchronous=FULL``, group commit, restarts, crashes, locks, and a loop that never blocks."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tidings.errors import ConfigError, StoreError, StoreUnavailable
from tidings.store import open_store
from tidings.store.base import StorageOutcome, lower_bound
from tidings.store.sqlite import _MIGRATIONS, SCHEMA_VERSION, SqliteStore, _list_sql
from tidings.testing.store_contract import (
    T0,
    StoreContract,
    StoreFactory,
    make_entry,
    make_reaction,
    make_record,
    make_schedule,
    ulid_at,
)


class TestSqliteStore(StoreContract):
    persistent = True

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return lambda: SqliteStore(tmp_path / "tidings.db")


class TestSqliteStoreOneReader(StoreContract):
    """The same contract with one reader and tiny batches: exercises queueing paths."""

    persistent = True

    @pytest.fixture
    def make_store(self, tmp_path: Path) -> StoreFactory:
        return lambda: SqliteStore(tmp_path / "tidings.db", readers=1, max_batch_rows=7)


# URLs


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///tidings.db", "tidings.db"),
        ("sqlite:///./data/tidings.db", "./data/tidings.db"),
        ("sqlite:////var/lib/tidings/t.db", "/var/lib/tidings/t.db"),
        ("sqlite:///with%20space%3F.db", "with space?.db"),
    ],
)
def test_sqlite_store_from_url_parses_path(url: str, path: str) -> None:
    """Three slashes then a relative path; four slashes for an absolute one; percent-decoded."""
    assert SqliteStore.from_url(url).path == path


def test_sqlite_store_from_url_reads_options() -> None:
    """Query parameters set the tuning options."""
    store = SqliteStore.from_url("sqlite:///t.db?readers=2&busy_timeout_ms=100")
    assert store.path == "t.db"
    assert store._readers_count == 2


@pytest.mark.parametrize(
    "url",
    [
        "sqlite://host/t.db",
        "sqlite:///",
        "sqlite:///:memory:",
        "sqlite:t.db",
        "sqlite:///t.db?readers=many",
        "sqlite:///t.db?colour=blue",
        "sqlite:///t.db?readers=0",
    ],
)
def test_sqlite_store_from_url_rejects_bad_urls(url: str) -> None:
    """Malformed URLs and options stop start-up with a ``ConfigError``."""
    with pytest.raises(ConfigError):
        SqliteStore.from_url(url)


def test_open_store_sqlite_url_builds_sqlite_store() -> None:
    """``open_store`` dispatches ``sqlite:`` URLs to ``SqliteStore``."""
    store = open_store("sqlite:///./tidings.db")
    assert isinstance(store, SqliteStore) and store.path == "./tidings.db"


# Durability


async def test_sqlite_store_uses_wal_and_full_sync(tmp_path: Path) -> None:
    """The file is in WAL mode and the writer commits with ``synchronous=FULL``."""
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    try:
        writer = store._writer
        assert writer is not None and writer.conn is not None
        conn = writer.conn
        (sync,) = await writer.run(lambda: conn.execute("PRAGMA synchronous").fetchone())
        assert sync == 2  # FULL
    finally:
        await store.aclose()
    with sqlite3.connect(tmp_path / "t.db") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    raw.close()


async def test_sqlite_store_restart_keeps_everything(tmp_path: Path) -> None:
    """Records written by one instance are all there after aclose and a new instance."""
    path = tmp_path / "t.db"
    first = SqliteStore(path)
    await first.open()
    records = {
        f"room.{c}": [make_record(f"room.{c}", ms=T0 + i, data=f"[{c},{i}]") for i in range(300)]
        for c in range(5)
    }
    await asyncio.gather(*(first.append(batch) for batch in records.values()))
    await first.aclose()
    assert not (tmp_path / "t.db-wal").exists()  # clean close checkpointed the WAL

    second = SqliteStore(path)
    await second.open()
    try:
        for channel, batch in records.items():
            assert await second.list_messages(channel, now_ms=T0, limit=1000) == batch
    finally:
        await second.aclose()


def test_sqlite_store_append_survives_process_crash(tmp_path: Path) -> None:
    """What ``append`` acknowledged is on disk even if the process dies right after."""
    path = tmp_path / "t.db"
    script = textwrap.dedent(
        f"""
        import asyncio, os
        from tidings.store.sqlite import SqliteStore
        from tidings.testing.store_contract import make_record, T0

        async def main():
            store = SqliteStore({str(path)!r})
            await store.open()
            await asyncio.gather(*(
                store.append([make_record(ms=T0 + i)]) for i in range(100)
            ))
            print("acknowledged", flush=True)
            os._exit(0)  # no aclose, no checkpoint: the records live only in the WAL

        asyncio.run(main())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30
    )
    assert done.stdout.strip() == "acknowledged", done.stderr
    with sqlite3.connect(path) as raw:
        assert raw.execute("SELECT count(*) FROM messages").fetchone() == (100,)
    raw.close()


# Concurrency


async def test_sqlite_store_group_commits_concurrent_appends(tmp_path: Path) -> None:
    """200 concurrent appends share a handful of transactions."""
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    try:
        before = store.commits
        await asyncio.gather(*(store.append([make_record(ms=T0 + i)]) for i in range(200)))
        assert 1 <= store.commits - before <= 20
        assert len(await store.list_messages("room.1", now_ms=T0, limit=500)) == 200
    finally:
        await store.aclose()


async def test_sqlite_store_large_write_does_not_block_the_loop(tmp_path: Path) -> None:
    """A ticker keeps ticking while a large append and a sweep run."""
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    data = '"' + "x" * 1000 + '"'
    records = [
        make_record(ms=T0 + i // 50, sequence=i % 50, data=data, expires_ms=T0 + 1)
        for i in range(20_000)
    ]
    gaps: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.002)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    tick = asyncio.create_task(ticker())
    try:
        await asyncio.sleep(0.01)
        started = time.monotonic()
        await store.append(records)
        await store.list_messages("room.1", now_ms=T0, limit=1000)
        assert await store.sweep(now_ms=T0 + 1, limit=20_000) == 20_000
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        await tick
        await store.aclose()
    assert elapsed > 0.2, "the write was too fast to prove anything; make it bigger"
    assert len(gaps) > 20
    # A blocked loop would show one gap as long as the write (most of ``elapsed``); threads leave
    # only GIL hand-offs and scheduling noise, which on a loaded machine can reach 100 ms, so the
    # bound is relative to the work rather than absolute.
    assert max(gaps) < elapsed / 5, (max(gaps), elapsed)


async def test_sqlite_store_bad_call_does_not_fail_its_batch(tmp_path: Path) -> None:
    """A call that violates the schema fails alone; calls committed with it succeed."""
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    try:
        good = [make_record(ms=T0 + i) for i in range(20)]
        bad = make_record(ms=T0 + 100, event=None)  # type: ignore[arg-type]
        outcomes = await asyncio.gather(
            *(store.append([r]) for r in good[:10]),
            store.append([bad]),
            *(store.append([r]) for r in good[10:]),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1 and type(errors[0]) is StoreError
        assert await store.list_messages("room.1", now_ms=T0) == good
    finally:
        await store.aclose()


async def test_sqlite_store_cancelled_read_returns_its_connection(tmp_path: Path) -> None:
    """Cancelling a read does not lose the reader connection."""
    store = SqliteStore(tmp_path / "t.db", readers=1)
    await store.open()
    try:
        await store.append([make_record(ms=T0 + i) for i in range(1000)])
        for _ in range(20):
            task = asyncio.create_task(store.list_messages("room.1", now_ms=T0, limit=1000))
            await asyncio.sleep(0)
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        page = await asyncio.wait_for(store.list_messages("room.1", now_ms=T0), 5)
        assert len(page) == 100
    finally:
        await store.aclose()


async def test_sqlite_store_two_instances_share_a_file(tmp_path: Path) -> None:
    """Two stores on one file (two processes, say) both write and see each other's records."""
    path = tmp_path / "t.db"
    a, b = SqliteStore(path), SqliteStore(path)
    await asyncio.gather(a.open(), b.open())
    try:
        ra = [make_record(ms=T0 + 2 * i) for i in range(50)]
        rb = [make_record(ms=T0 + 2 * i + 1) for i in range(50)]
        await asyncio.gather(*(a.append([r]) for r in ra), *(b.append([r]) for r in rb))
        expected = sorted(ra + rb, key=lambda r: r.id)
        assert await a.list_messages("room.1", now_ms=T0, limit=200) == expected
        assert await b.list_messages("room.1", now_ms=T0, limit=200) == expected
    finally:
        await a.aclose()
        await b.aclose()


# Failures


async def test_sqlite_store_locked_file_is_unavailable(tmp_path: Path) -> None:
    """While another connection holds the write lock, append raises ``StoreUnavailable``."""
    path = tmp_path / "t.db"
    store = SqliteStore(path, busy_timeout_ms=50)
    await store.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreUnavailable):
            await store.append([make_record()])
        blocker.execute("ROLLBACK")
        await store.append([make_record()])
        assert len(await store.list_messages("room.1", now_ms=T0)) == 1
    finally:
        blocker.close()
        await store.aclose()


async def test_sqlite_store_missing_directory_is_unavailable(tmp_path: Path) -> None:
    """A path that cannot be opened fails ``open()`` with a message naming the file."""
    store = SqliteStore(tmp_path / "missing" / "t.db")
    with pytest.raises(StoreUnavailable, match="missing"):
        await store.open()
    await store.aclose()


async def test_sqlite_store_refuses_newer_schema(tmp_path: Path) -> None:
    """A file written by a newer tidings is refused instead of being misread."""
    path = tmp_path / "t.db"
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version = 99")
    raw.close()
    store = SqliteStore(path)
    with pytest.raises(StoreError, match="newer"):
        await store.open()
    await store.aclose()


async def test_sqlite_store_upgrades_a_version_1_file(tmp_path: Path) -> None:
    """A file written before reactions existed keeps its messages and gains reactions,
    schedules, revocations and channel storage."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:
        for statement in _MIGRATIONS[1]:
            raw.execute(statement)
        raw.execute(
            "INSERT INTO messages VALUES (?, 'room.1', 'chat', '\"hi\"', NULL, 'null', ?, NULL, "
            "'server.http', NULL, NULL, NULL)",
            (ulid_at(T0), T0),
        )
        raw.execute("PRAGMA user_version = 1")
    raw.close()
    store = SqliteStore(path)
    await store.open()
    try:
        [message] = await store.list_messages("room.1", now_ms=T0)
        assert message == make_record()
        reaction = make_reaction(message)
        assert await store.apply_reactions([reaction], now_ms=T0) == [reaction]
        await store.add_schedules([make_schedule(T0)])
        assert await store.next_schedule_ms() == T0
        assert await store.list_revocations(now_ms=T0) == []
        entry = make_entry()
        assert await store.apply_storage([entry], now_ms=T0) == [StorageOutcome(None, entry, True)]
        dedup = make_record(sequence=1, dedup_id="d")
        assert await store.append([dedup, make_record(sequence=2, dedup_id="d")]) == [dedup.id] * 2
    finally:
        await store.aclose()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    raw.close()


async def test_sqlite_store_schedule_queries_use_the_next_index(tmp_path: Path) -> None:
    """The scheduler's wake-up lookup and its claims seek the ``next_ms`` index instead of
    scanning every pending schedule (spec §14: pending schedules cost only their rows)."""
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    await store.aclose()
    with sqlite3.connect(tmp_path / "t.db") as raw:
        plans = [
            " ".join(row[3] for row in raw.execute(f"EXPLAIN QUERY PLAN {sql}", params))
            for sql, params in (
                ("SELECT min(next_ms) FROM schedules", ()),
                ("SELECT id FROM schedules WHERE next_ms <= ? ORDER BY next_ms LIMIT ?", (1, 5)),
            )
        ]
    raw.close()
    assert all("schedules_next" in plan for plan in plans), plans
    assert not any("TEMP B-TREE" in plan for plan in plans), plans


async def test_sqlite_store_reaction_queries_seek_the_primary_key(tmp_path: Path) -> None:
    """Reading a page's reactions seeks the primary key per message, and sweeping them uses
    the expiry index."""
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    await store.aclose()
    ids = [ulid_at(T0 + i) for i in range(100)]
    marks = ", ".join("?" * len(ids))
    with sqlite3.connect(tmp_path / "t.db") as raw:
        plan = " | ".join(
            row[3]
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT id FROM reactions WHERE channel = ? "
                f"AND message_id IN ({marks}) AND (expires_ms IS NULL OR expires_ms > ?) "
                "ORDER BY message_id, id",
                ["room.1", *ids, T0],
            )
        )
        sweep_plan = " | ".join(
            row[3]
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT channel FROM reactions WHERE expires_ms <= ? LIMIT ?",
                [T0, 10],
            )
        )
    raw.close()
    assert "PRIMARY KEY (channel=? AND message_id=?)" in plan, plan
    assert "reactions_expires" in sweep_plan, sweep_plan


def test_sqlite_store_rejects_in_memory_paths() -> None:
    """``:memory:`` cannot be shared by several connections; ``memory://`` is the way."""
    with pytest.raises(ConfigError, match="memory://"):
        SqliteStore(":memory:")


# Query plans


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    "bounds",
    [{}, {"after": "A"}, {"min_id": "A"}, {"before": "B"}, {"min_id": "A", "before": "B"}],
)
async def test_sqlite_store_pages_are_index_range_scans(
    tmp_path: Path, reverse: bool, bounds: dict[str, str]
) -> None:
    """Every page query seeks the primary key and never sorts."""
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    await store.aclose()
    lower, inclusive = lower_bound(bounds.get("min_id"), bounds.get("after"))
    sql = _list_sql(lower is not None, inclusive, "before" in bounds, reverse)
    params = [
        "room.1",
        *([lower] if lower else []),
        *([bounds["before"]] if "before" in bounds else []),
    ]
    with sqlite3.connect(tmp_path / "t.db") as raw:
        plan = " | ".join(
            row[3] for row in raw.execute("EXPLAIN QUERY PLAN " + sql, [*params, T0, 100])
        )
        sweep_plan = " | ".join(
            row[3]
            for row in raw.execute(
                "EXPLAIN QUERY PLAN SELECT channel, id FROM messages WHERE expires_ms <= ? LIMIT ?",
                [T0, 10],
            )
        )
    raw.close()
    assert "PRIMARY KEY" in plan and "TEMP B-TREE" not in plan, plan
    assert "messages_expires" in sweep_plan, sweep_plan


async def test_sqlite_store_get_message_uses_exact_id(tmp_path: Path) -> None:
    """``get_message`` does not match an ID prefix or a neighbour."""
    store = SqliteStore(tmp_path / "t.db")
    await store.open()
    try:
        record = make_record(ms=T0, sequence=5)
        await store.append([record])
        assert await store.get_message("room.1", record.id[:-1], now_ms=T0) is None
        assert await store.get_message("room.1", ulid_at(T0, 4), now_ms=T0) is None
        assert await store.get_message("room.1", record.id, now_ms=T0) == record
    finally:
        await store.aclose()


def test_sqlite_store_path_accepts_pathlike(tmp_path: Path) -> None:
    """``path`` may be a ``Path``; it is kept as a string."""
    assert SqliteStore(tmp_path / "x.db").path == os.fspath(tmp_path / "x.db")
