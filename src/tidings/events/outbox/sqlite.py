"""``SqliteOutbox``: a ``webhook_outbox`` table in the store's SQLite file."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tidings.errors import ConfigError, StoreError, StoreUnavailable
from tidings.events.outbox.base import (
    DEFAULT_LEASE_MS,
    FIELDS,
    Outbox,
    PendingDelivery,
    check_lease,
    row_of,
)

logger = logging.getLogger("tidings.events.outbox")

__all__ = ["SqliteOutbox"]

_T = TypeVar("_T")
_Fn = Callable[[sqlite3.Connection], _T]  # a job for the SQLite outbox thread

_SQLITE_SCHEMA = (
    # A rowid table: bodies can be large (a 100 KiB message), which WITHOUT ROWID handles badly.
    """
    CREATE TABLE IF NOT EXISTS webhook_outbox (
        id TEXT PRIMARY KEY,
        url TEXT NOT NULL,
        event_type TEXT NOT NULL,
        body BLOB NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_ms INTEGER NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS webhook_outbox_due ON webhook_outbox (url, next_attempt_ms)",
)
_SQLITE_INSERT = (
    f"INSERT INTO webhook_outbox ({FIELDS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
_SQLITE_DELETE = "DELETE FROM webhook_outbox WHERE id = ?"
_SQLITE_LEASE = "UPDATE webhook_outbox SET next_attempt_ms = ? WHERE id = ?"
_SQLITE_RETRY = "UPDATE webhook_outbox SET next_attempt_ms = ?, attempts = ? WHERE id = ?"
_SQLITE_DUE = {
    False: f"SELECT {FIELDS} FROM webhook_outbox WHERE next_attempt_ms <= ? "
    "ORDER BY next_attempt_ms LIMIT ?",
    True: f"SELECT {FIELDS} FROM webhook_outbox WHERE url = ? AND next_attempt_ms <= ? "
    "ORDER BY next_attempt_ms LIMIT ?",
}


class SqliteOutbox:
    """An ``Outbox`` in a table of the message store's SQLite file.

    One connection, confined to one thread of its own, so the event loop never waits on SQLite;
    WAL mode with ``synchronous=FULL`` makes each commit durable. Every write is one short
    ``BEGIN IMMEDIATE`` transaction, so it interleaves with the store's writer (and with other
    processes on the same file) under ``busy_timeout``.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        lease_ms: int = DEFAULT_LEASE_MS,
        busy_timeout_ms: int = 5000,
    ) -> None:
        """Configure (do not open) the outbox.

        Args:
            path: the SQLite file, the same as the store's; created on ``open()`` if missing.
            lease_ms: how long a claimed delivery stays invisible to ``due``.
            busy_timeout_ms: how long a write waits for a lock held by another connection.
        """
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise ConfigError(f"SQLite path {str(path)!r} is not a file path.")
        self.path = os.fspath(path)
        self._lease_ms = check_lease(lease_ms)
        self._busy_timeout_ms = int(busy_timeout_ms)
        # max_workers=1: the connection is created, used and closed on this one thread.
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        self._lock = asyncio.Lock()  # serializes open() and aclose()

    @classmethod
    def from_url(cls, url: str, *, lease_ms: int = DEFAULT_LEASE_MS) -> SqliteOutbox:
        """The outbox in the file of ``sqlite:///…`` (parsed by ``SqliteStore.from_url``, so both
        always name the same file; the store's query options are accepted and ignored)."""
        from tidings.store.sqlite import SqliteStore

        return cls(SqliteStore.from_url(url).path, lease_ms=lease_ms)

    async def open(self) -> None:
        """See ``Outbox.open``."""
        async with self._lock:
            if self._executor is not None:
                return
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tidings-outbox")
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
            except BaseException as exc:
                executor.shutdown(wait=False)
                if isinstance(exc, sqlite3.Error):
                    raise StoreUnavailable(
                        f"cannot open the webhook outbox in {self.path!r}: {exc}"
                    ) from exc
                raise
            self._executor = executor

    async def add(self, deliveries: Sequence[PendingDelivery]) -> None:
        """See ``Outbox.add``."""
        if not deliveries:
            return
        rows = [row_of(d) for d in deliveries]
        await self._run(lambda conn: conn.executemany(_SQLITE_INSERT, rows))

    async def due(
        self, now_ms: int, limit: int, *, url: str | None = None
    ) -> list[PendingDelivery]:
        """See ``Outbox.due``."""
        if limit <= 0:
            return []  # SQLite reads LIMIT -1 as "no limit"
        params: tuple[object, ...] = (now_ms, limit) if url is None else (url, now_ms, limit)
        until = now_ms + self._lease_ms
        sql = _SQLITE_DUE[url is not None]

        def claim(conn: sqlite3.Connection) -> list[PendingDelivery]:
            rows = conn.execute(sql, params).fetchall()
            conn.executemany(_SQLITE_LEASE, [(until, row[0]) for row in rows])
            return [PendingDelivery(r[0], r[1], r[2], r[3], r[4], until) for r in rows]

        def probe_then_claim(conn: sqlite3.Connection) -> list[PendingDelivery]:
            # Idle polls are the common case: a plain read finds nothing due without taking the
            # write lock the message store's group commits need.
            if conn.execute(sql, (*params[:-1], 1)).fetchone() is None:
                return []
            return _transaction(conn, claim)

        return await self._run(probe_then_claim, write=False)

    async def done(self, ids: Sequence[str]) -> None:
        """See ``Outbox.done``."""
        if not ids:
            return
        rows = [(id_,) for id_ in ids]
        await self._run(lambda conn: conn.executemany(_SQLITE_DELETE, rows))

    async def retry(self, id: str, next_attempt_ms: int, attempts: int) -> None:
        """See ``Outbox.retry``."""
        params = (next_attempt_ms, attempts, id)
        await self._run(lambda conn: conn.execute(_SQLITE_RETRY, params))

    async def drop(self, id: str) -> None:
        """See ``Outbox.drop``."""
        await self.done([id])

    async def count(self) -> int:
        """See ``Outbox.count``."""

        def count(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute("SELECT count(*) FROM webhook_outbox").fetchone()
            return int(n)

        return await self._run(count, write=False)

    async def aclose(self) -> None:
        """See ``Outbox.aclose``."""
        async with self._lock:
            executor, self._executor = self._executor, None
            if executor is None:
                return
            try:
                await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
            finally:
                executor.shutdown(wait=False)  # idle now; do not block the loop joining it

    # Private methods (the *_sync ones run on the outbox thread)

    async def _run(self, fn: _Fn[_T], *, write: bool = True) -> _T:
        executor = self._executor
        if executor is None:
            raise StoreUnavailable("the webhook outbox is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(executor, self._run_sync, fn, write)
        except sqlite3.OperationalError as exc:  # locked, busy, disk full, I/O error
            raise StoreUnavailable(f"webhook outbox in {self.path!r}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreError(f"webhook outbox in {self.path!r}: {exc}") from exc

    def _run_sync(self, fn: _Fn[_T], write: bool) -> _T:
        conn = self._conn
        if conn is None:
            raise StoreUnavailable("the webhook outbox is closed")
        return _transaction(conn, fn) if write else fn(conn)

    def _open_sync(self) -> None:
        # isolation_level=None: autocommit; _run_sync issues BEGIN IMMEDIATE/COMMIT itself.
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA journal_mode = WAL")
            # FULL: the WAL is fsynced at every commit, so add() returning means durable.
            conn.execute("PRAGMA synchronous = FULL")
            self._conn = conn

            # The table is independent of the store's schema (PRAGMA user_version): the store
            # never reads it, and CREATE … IF NOT EXISTS is all it needs so far.
            def create(c: sqlite3.Connection) -> None:
                for statement in _SQLITE_SCHEMA:
                    c.execute(statement)

            _transaction(conn, create)
        except BaseException:
            self._conn = None
            conn.close()
            raise

    def _close_sync(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _transaction(conn: sqlite3.Connection, fn: _Fn[_T]) -> _T:
    # IMMEDIATE takes the write lock up front: between a claim's SELECT and its UPDATE no other
    # claimer runs, even in another process.
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


_: type[Outbox] = SqliteOutbox
