"""``SqliteStore``: the embedded default store (``sqlite:///path/file.db``).

Shape:

* **One writer.** A single asyncio task (the *writer task*) takes every pending ``append()`` call,
  and writes them all in one transaction on the one write connection (*group commit*): with many
  concurrent publishers, one ``fsync`` acknowledges a whole batch. Each caller's future resolves
  only after that commit, and ``synchronous=FULL`` makes a commit durable in WAL mode, so
  ``append()`` returning means the records survive a crash or a power cut.
* **Threads, never the event loop.** The write connection lives in its own thread; reads use a
  small pool of reader connections, each confined to its own thread (``sqlite3`` connections are
  used only by the thread that created them). WAL lets readers run while the writer commits.
* **Schema.** ``messages`` is a ``WITHOUT ROWID`` table clustered on ``(channel, id)``: a page of
  ``listMessages`` in either direction is one B-tree seek plus a scan of adjacent leaf pages. A
  partial index on ``expires_ms`` serves the sweeper. ``reactions`` (version 2) is clustered on
  ``(channel, message_id, uid, reaction)``, which is both the one-per-user rule and the seek of
  a page's reactions.
* **Schedules** (version 3): ``schedules`` keyed by ID, with an index on ``next_ms`` (the due
  time, pushed to the lease's end when claimed) that serves both the scheduler's next-wake
  lookup and its claims. A claim is one ``BEGIN IMMEDIATE`` transaction on the writer thread, so
  processes sharing the file never claim the same row.
* **Revocations** (version 4): ``revocations`` keyed by ``(kind, value)``.
* **Storage** (version 5): ``storage`` is clustered on ``(channel, key)``: a listing page is one
  seek and a leaf scan in key order.
* ``dedup`` (version 6) maps each recent ``deduplicationId`` to its message and is written in
  the transaction that stores the message. The version lives in ``PRAGMA user_version``.
* **Reactions** are written on the writer thread, one transaction per ``apply_reactions()``
  call (a channel lane passes a whole batch at once), between group commits.
* **Storage writes** run on the writer thread too, one transaction per ``apply_storage()``
  call: read the row, decide (``decide_storage``), write or delete it.
* ``data`` and ``umd`` are stored as TEXT exactly as given, so they round-trip byte for byte.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from tidings.errors import ConfigError, StoreError, StoreUnavailable
from tidings.store.base import (
    DEDUP_WINDOW_MS,
    MessageRecord,
    ReactionChange,
    ReactionRecord,
    ReactionRemoval,
    Revocation,
    RevocationKind,
    ScheduleRecord,
    StorageChange,
    StorageEntry,
    StorageOutcome,
    Store,
    decide_storage,
    lower_bound,
)

__all__ = ["SqliteStore"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

SCHEMA_VERSION = 6

# Column order equals the field order of ``MessageRecord``, so ``MessageRecord(*row)`` works.
_COLUMNS = (
    'id, channel, event, data, uid, umd, created_ms, expires_ms, "trigger", '
    "connection_id, source_ip, user_agent"
)

_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE IF NOT EXISTS messages (
            id TEXT NOT NULL,
            channel TEXT NOT NULL,
            event TEXT NOT NULL,
            data TEXT NOT NULL,
            uid TEXT,
            umd TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER,
            "trigger" TEXT NOT NULL,
            connection_id TEXT,
            source_ip TEXT,
            user_agent TEXT,
            PRIMARY KEY (channel, id)
        ) WITHOUT ROWID
        """,
        # Partial: records kept forever (the common case) cost nothing in this index.
        "CREATE INDEX IF NOT EXISTS messages_expires ON messages (expires_ms) "
        "WHERE expires_ms IS NOT NULL",
    ),
    2: (
        """
        CREATE TABLE IF NOT EXISTS reactions (
            channel TEXT NOT NULL,
            message_id TEXT NOT NULL,
            uid TEXT NOT NULL,
            reaction TEXT NOT NULL,
            id TEXT NOT NULL,
            umd TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER,
            "trigger" TEXT NOT NULL,
            request_id TEXT,
            connection_id TEXT,
            source_ip TEXT,
            user_agent TEXT,
            PRIMARY KEY (channel, message_id, uid, reaction)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX IF NOT EXISTS reactions_expires ON reactions (expires_ms) "
        "WHERE expires_ms IS NOT NULL",
    ),
    3: (
        """
        CREATE TABLE IF NOT EXISTS schedules (
            id TEXT NOT NULL PRIMARY KEY,
            due_ms INTEGER NOT NULL,
            kind TEXT NOT NULL,
            channel TEXT NOT NULL,
            payload TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_ms INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX IF NOT EXISTS schedules_next ON schedules (next_ms)",
    ),
    4: (
        """
        CREATE TABLE IF NOT EXISTS revocations (
            kind TEXT NOT NULL,
            value TEXT NOT NULL,
            issued_before_ms INTEGER,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            PRIMARY KEY (kind, value)
        ) WITHOUT ROWID
        """,
        "CREATE INDEX IF NOT EXISTS revocations_expires ON revocations (expires_ms)",
    ),
    5: (
        """
        CREATE TABLE IF NOT EXISTS storage (
            channel TEXT NOT NULL,
            "key" TEXT NOT NULL,
            data TEXT NOT NULL,
            uid TEXT,
            umd TEXT NOT NULL,
            updated_ms INTEGER NOT NULL,
            expires_ms INTEGER,
            emit_event INTEGER NOT NULL,
            "trigger" TEXT NOT NULL,
            connection_id TEXT,
            source_ip TEXT,
            user_agent TEXT,
            PRIMARY KEY (channel, "key")
        ) WITHOUT ROWID
        """,
        "CREATE INDEX IF NOT EXISTS storage_expires ON storage (expires_ms) "
        "WHERE expires_ms IS NOT NULL",
    ),
    6: (
        """
        CREATE TABLE IF NOT EXISTS dedup (
            dedup_id TEXT NOT NULL PRIMARY KEY,
            channel TEXT NOT NULL,
            message_id TEXT NOT NULL,
            expires_ms INTEGER NOT NULL
        ) WITHOUT ROWID
        """,
        "CREATE INDEX IF NOT EXISTS dedup_expires ON dedup (expires_ms)",
    ),
}

# Column order equals the field order of ``ScheduleRecord``.
_SCHEDULE_COLUMNS = "id, due_ms, kind, channel, payload, created_ms, attempts"
_ADD_SCHEDULE = (
    f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}, next_ms) VALUES (?, ?, ?, ?, ?, ?, 0, ?) "
    "ON CONFLICT (id) DO NOTHING"
)
_CLAIM_SCHEDULES = (
    "UPDATE schedules SET next_ms = ?, attempts = attempts + 1 WHERE id IN ("
    "SELECT id FROM schedules WHERE next_ms <= ? ORDER BY next_ms LIMIT ?) "
    f"RETURNING {_SCHEDULE_COLUMNS}"
)
_DELETE_SCHEDULE = "DELETE FROM schedules WHERE id = ? AND (attempts = 0 OR next_ms <= ?)"

_PUT_REVOCATION = (
    "INSERT INTO revocations (kind, value, issued_before_ms, created_ms, expires_ms) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT (kind, value) DO UPDATE SET "
    "issued_before_ms = excluded.issued_before_ms, created_ms = excluded.created_ms, "
    "expires_ms = excluded.expires_ms"
)
_LIST_REVOCATIONS = (
    "SELECT kind, value, issued_before_ms, created_ms, expires_ms FROM revocations "
    "WHERE expires_ms > ? ORDER BY kind, value"
)
_DELETE_REVOCATION = "DELETE FROM revocations WHERE kind = ? AND value = ? RETURNING expires_ms"
_SWEEP_REVOCATIONS = (
    "DELETE FROM revocations WHERE (kind, value) IN ("
    "SELECT kind, value FROM revocations WHERE expires_ms <= ? LIMIT ?)"
)
# Column order equals the field order of ``StorageEntry`` (``_entry`` turns a row into one).
_STORAGE_COLUMNS = (
    'channel, "key", data, uid, umd, updated_ms, expires_ms, emit_event, "trigger", '
    "connection_id, source_ip, user_agent"
)
_STORAGE_LIVE = "(expires_ms IS NULL OR expires_ms > ?)"
_GET_STORAGE_ROW = f'SELECT {_STORAGE_COLUMNS} FROM storage WHERE channel = ? AND "key" = ?'
_PUT_STORAGE = (
    f"INSERT INTO storage ({_STORAGE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    'ON CONFLICT (channel, "key") DO UPDATE SET '
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in (
            "data",
            "uid",
            "umd",
            "updated_ms",
            "expires_ms",
            "emit_event",
            '"trigger"',
            "connection_id",
            "source_ip",
            "user_agent",
        )
    )
)
_DELETE_STORAGE = 'DELETE FROM storage WHERE channel = ? AND "key" = ?'
_SWEEP_STORAGE = (
    'DELETE FROM storage WHERE (channel, "key") IN ('
    'SELECT channel, "key" FROM storage WHERE expires_ms <= ? LIMIT ?) '
    f"RETURNING {_STORAGE_COLUMNS}"
)

# Column order equals the field order of ``ReactionRecord``, so ``ReactionRecord(*row)`` works.
_REACTION_COLUMNS = (
    'id, channel, message_id, reaction, uid, umd, created_ms, expires_ms, "trigger", '
    "request_id, connection_id, source_ip, user_agent"
)
# An expired row with the same key is replaced: it is already invisible, and the sweeper may
# not have reached it yet.
_ADD_REACTION = (
    f"INSERT INTO reactions ({_REACTION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (channel, message_id, uid, reaction) DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in (
            "id",
            "umd",
            "created_ms",
            "expires_ms",
            '"trigger"',
            "request_id",
            "connection_id",
            "source_ip",
            "user_agent",
        )
    )
    + " WHERE reactions.expires_ms IS NOT NULL AND reactions.expires_ms <= ?"
)
_REMOVE_REACTION = (
    "DELETE FROM reactions WHERE channel = ? AND message_id = ? AND uid = ? AND reaction = ? "
    f"AND (expires_ms IS NULL OR expires_ms > ?) RETURNING {_REACTION_COLUMNS}"
)
_SWEEP_REACTIONS = (
    "DELETE FROM reactions WHERE (channel, message_id, uid, reaction) IN ("
    "SELECT channel, message_id, uid, reaction FROM reactions WHERE expires_ms <= ? LIMIT ?)"
)

# Not INSERT OR IGNORE: that would also skip rows breaking NOT NULL, silently "acknowledging"
# a record that was never written. The upsert clause ignores only a duplicate primary key.
_INSERT = (
    f"INSERT INTO messages ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (channel, id) DO NOTHING"
)
_GET = (
    f"SELECT {_COLUMNS} FROM messages WHERE channel = ? AND id = ? "
    "AND (expires_ms IS NULL OR expires_ms > ?)"
)
_DEDUP_FIND = "SELECT message_id FROM dedup WHERE dedup_id = ? AND expires_ms > ?"
_DEDUP_CLAIM = (
    "INSERT INTO dedup (dedup_id, channel, message_id, expires_ms) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (dedup_id) DO UPDATE SET channel = excluded.channel, "
    "message_id = excluded.message_id, expires_ms = excluded.expires_ms"
)
_SWEEP_DEDUP = (
    "DELETE FROM dedup WHERE dedup_id IN (SELECT dedup_id FROM dedup WHERE expires_ms <= ? LIMIT ?)"
)
_SWEEP = (
    "DELETE FROM messages WHERE (channel, id) IN ("
    "SELECT channel, id FROM messages WHERE expires_ms <= ? LIMIT ?)"
)

# Primary result codes (the low byte of extended codes) after which a retry may succeed: the
# caller answers 503 instead of 500. FULL is here because freeing disk space fixes it.
_TRANSIENT_CODES = frozenset(
    {
        5,  # SQLITE_BUSY
        6,  # SQLITE_LOCKED
        8,  # SQLITE_READONLY
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)


class _Worker:
    """One ``sqlite3`` connection confined to one thread; jobs run there one at a time."""

    def __init__(self, name: str) -> None:
        # max_workers=1: every job, including connect and close, runs on the same thread, so
        # the default check_same_thread=True guard stays on and catches misuse loudly.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self.conn: sqlite3.Connection | None = None

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def connect(self, path: str, pragmas: Sequence[str]) -> None:
        # isolation_level=None: autocommit; the writer issues BEGIN IMMEDIATE/COMMIT itself.
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            for pragma in pragmas:
                # Switching a new file to WAL upgrades a shared lock to an exclusive one, and
                # SQLite answers "locked" at once (no busy handler, to avoid deadlock) when another
                # process is doing the same: retry for a while instead of failing the open.
                for attempt in range(250):
                    try:
                        conn.execute(pragma)
                        break
                    except sqlite3.OperationalError as exc:
                        if "locked" not in str(exc) or attempt == 249:
                            raise
                        time.sleep(0.02)
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def shutdown(self) -> None:
        # The thread is idle (its last job was close()); do not block the loop joining it.
        self._executor.shutdown(wait=False)


class SqliteStore:
    """The embedded ``Store``: one SQLite file in WAL mode.

    Build it with ``SqliteStore(path)`` or ``SqliteStore.from_url(url)``, then ``await open()``
    before any other call and ``await aclose()`` when done (it flushes pending appends). Several
    processes may share a file (SQLite serializes their writers with ``busy_timeout``), but a
    file on a network filesystem is not supported by SQLite's WAL mode.

    Attributes:
        path: the database file as given (relative paths resolve against the working directory
            at ``open()``).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        readers: int = 4,
        max_batch_rows: int = 2000,
        busy_timeout_ms: int = 5000,
        cache_size_kib: int = 32768,
        mmap_size: int = 256 * 1024 * 1024,
    ) -> None:
        """Configure (do not open) a store.

        Args:
            path: the database file; created on ``open()`` if missing (its directory must exist).
            readers: reader connections (and threads): the number of reads that run at once.
            max_batch_rows: a group commit stops taking pending ``append()`` calls once it holds
                this many records (one call is never split), bounding each transaction.
            busy_timeout_ms: how long a connection waits for a lock held by another process.
            cache_size_kib: page cache per connection, in KiB.
            mmap_size: bytes of the file each reader maps into memory (0 disables).
        """
        if str(path) in ("", ":memory:") or str(path).startswith("file:"):
            raise ConfigError(
                f"SQLite path {str(path)!r} is not a file path; use memory:// for a store "
                "that lives in memory."
            )
        if readers < 1 or max_batch_rows < 1 or busy_timeout_ms < 0:
            raise ConfigError(
                "SqliteStore needs readers >= 1, max_batch_rows >= 1 and busy_timeout_ms >= 0."
            )
        self.path = os.fspath(path)
        self._readers_count = readers
        self._max_batch_rows = max_batch_rows
        self._common_pragmas = (
            f"PRAGMA busy_timeout = {int(busy_timeout_ms)}",
            f"PRAGMA cache_size = -{int(cache_size_kib)}",
        )
        self._mmap_size = int(mmap_size)
        self._writer: _Worker | None = None  # owns the only write connection
        self._readers: asyncio.Queue[_Worker] | None = None  # idle reader workers
        self._all_readers: list[_Worker] = []
        self._pending: list[tuple[Sequence[MessageRecord], asyncio.Future[list[str]]]] = []
        self._wakeup = asyncio.Event()  # set when _pending gains work or closing begins
        self._writer_task: asyncio.Task[None] | None = None
        self._open_lock = asyncio.Lock()  # serializes open() and aclose()
        self._state = "new"  # new -> open -> closing -> closed
        self._commits = 0  # written only by the writer thread
        self._sql_cache: dict[tuple[bool, bool, bool, bool], str] = {}

    # Public methods

    @classmethod
    def from_url(cls, url: str) -> SqliteStore:
        """Build a store from a URL, following SQLAlchemy's convention for the path.

        * ``sqlite:///tidings.db`` and ``sqlite:///./data/tidings.db`` are **relative** to the
          working directory (three slashes, then a relative path);
        * ``sqlite:////var/lib/tidings/tidings.db`` is **absolute** (four slashes);
        * the path is percent-decoded, so write ``%3F`` for ``?``, ``%23`` for ``#``;
        * optional query parameters: ``readers``, ``max_batch_rows``, ``busy_timeout_ms``,
          ``cache_size_kib``, ``mmap_size`` (integers; see ``__init__``).

        Raises:
            ConfigError: the URL is not of that form.
        """
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "sqlite" or not url.startswith("sqlite:///") or parts.fragment:
            raise ConfigError(
                f"TIDINGS_STORE {url!r} is not a SQLite URL; write sqlite:///relative/path.db or "
                "sqlite:////absolute/path.db."
            )
        # urlsplit keeps the slash that ends the (empty) authority: strip exactly that one.
        path = urllib.parse.unquote(parts.path[1:])
        options: dict[str, int] = {}
        allowed = ("readers", "max_batch_rows", "busy_timeout_ms", "cache_size_kib", "mmap_size")
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if key not in allowed:
                raise ConfigError(
                    f"TIDINGS_STORE option {key!r} is unknown; SQLite accepts {', '.join(allowed)}."
                )
            try:
                options[key] = int(value)
            except ValueError:
                raise ConfigError(
                    f"TIDINGS_STORE option {key}={value!r} must be an integer."
                ) from None
        return cls(path, **options)

    @property
    def commits(self) -> int:
        """Write transactions committed so far (each may hold many ``append()`` calls)."""
        return self._commits

    async def open(self) -> None:
        """Create the file and schema if missing, start the writer task and reader threads.

        Idempotent. Raises ``StoreUnavailable`` when the file cannot be opened or is locked,
        ``StoreError`` when it is not a tidings database of a version this code understands.
        """
        async with self._open_lock:
            if self._state == "open":
                return
            if self._state != "new":
                raise StoreUnavailable("the SQLite store is closed")
            writer = _Worker("tidings-sqlite-writer")
            readers: list[_Worker] = []
            try:
                await writer.run(
                    writer.connect,
                    self.path,
                    (
                        *self._common_pragmas,
                        # journal_mode is stored in the file; it must be set outside a transaction.
                        "PRAGMA journal_mode = WAL",
                        # FULL: WAL is fsynced at every commit, so a resolved append is durable.
                        "PRAGMA synchronous = FULL",
                        # Keeps the WAL file from staying huge after a burst has been checkpointed.
                        "PRAGMA journal_size_limit = 67108864",
                    ),
                )
                await writer.run(self._migrate, writer)
                for index in range(self._readers_count):
                    reader = _Worker(f"tidings-sqlite-reader-{index}")
                    readers.append(reader)
                    await reader.run(
                        reader.connect,
                        self.path,
                        (
                            *self._common_pragmas,
                            f"PRAGMA mmap_size = {self._mmap_size}",
                            # A reader that tries to write is a bug; make it fail loudly.
                            "PRAGMA query_only = 1",
                        ),
                    )
            except BaseException as exc:
                for worker in (*readers, writer):
                    await worker.run(worker.close)
                    worker.shutdown()
                if isinstance(exc, sqlite3.Error):
                    raise self._map_error(exc, "open") from exc
                raise
            self._writer = writer
            self._all_readers = readers
            self._readers = asyncio.Queue()
            for reader in readers:
                self._readers.put_nowait(reader)
            self._writer_task = asyncio.create_task(
                self._write_loop(), name=f"tidings-sqlite-writer:{self.path}"
            )
            self._state = "open"

    async def append(self, records: Sequence[MessageRecord]) -> list[str]:
        """Persist ``records`` durably, in one transaction shared with other pending calls.

        Returns after the commit that holds them, with the stored IDs (see ``Store.append``).
        An ID already stored on its channel is ignored. If the caller is cancelled while
        waiting, the records may or may not be written; a retry with the same records is safe.

        Raises:
            StoreUnavailable: the store is closed, or the file is locked, full or unwritable.
            StoreError: any other failure (for example a record that violates the schema).
        """
        self._check_open()
        if not records:
            return []
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending.append((records, future))
        self._wakeup.set()
        return await future

    async def list_messages(
        self,
        channel: str,
        *,
        now_ms: int,
        min_id: str | None = None,
        after: str | None = None,
        before: str | None = None,
        reverse: bool = False,
        limit: int = 100,
    ) -> list[MessageRecord]:
        """See ``Store.list_messages``. Runs on a reader thread."""
        self._check_open()
        if limit <= 0:
            return []  # SQLite reads LIMIT -1 as "no limit"; never let that through
        lower, inclusive = lower_bound(min_id, after)
        key = (lower is not None, inclusive, before is not None, reverse)
        sql = self._sql_cache.get(key)
        if sql is None:
            sql = self._sql_cache[key] = _list_sql(*key)
        params: list[object] = [channel]
        if lower is not None:
            params.append(lower)
        if before is not None:
            params.append(before)
        params += (now_ms, limit)
        return await self._read(_fetch_records, sql, params)

    async def get_message(
        self, channel: str, message_id: str, *, now_ms: int
    ) -> MessageRecord | None:
        """See ``Store.get_message``. Runs on a reader thread."""
        self._check_open()
        rows = await self._read(_fetch_records, _GET, (channel, message_id, now_ms))
        return rows[0] if rows else None

    async def sweep(self, *, now_ms: int, limit: int = 1000) -> int:
        """Delete at most ``limit`` records with ``expires_ms <= now_ms``; return the count.

        Runs on the writer thread between group commits (one short transaction).
        """
        return await self._sweep(_SWEEP, now_ms, limit, "sweep")

    async def sweep_dedup(self, *, now_ms: int, limit: int = 1000) -> int:
        """See ``Store.sweep_dedup``. Runs on the writer thread between group commits."""
        return await self._sweep(_SWEEP_DEDUP, now_ms, limit, "sweep_dedup")

    async def apply_reactions(
        self, changes: Sequence[ReactionChange], *, now_ms: int
    ) -> list[ReactionRecord | None]:
        """See ``Store.apply_reactions``. One transaction on the writer thread.

        Raises:
            StoreUnavailable: the store is closed, or the file is locked, full or unwritable.
            StoreError: any other failure.
        """
        self._check_open()
        if not changes:
            return []
        return await self._on_writer("apply_reactions", self._reactions_sync, changes, now_ms)

    async def reaction_counts(
        self, channel: str, message_ids: Sequence[str], *, now_ms: int
    ) -> dict[str, list[tuple[str, int]]]:
        """See ``Store.reaction_counts``. Runs on a reader thread."""
        self._check_open()
        if not message_ids:
            return {}
        marks = ", ".join("?" * len(message_ids))
        sql = (
            "SELECT message_id, reaction, count(*) FROM reactions "
            f"WHERE channel = ? AND message_id IN ({marks}) "
            "AND (expires_ms IS NULL OR expires_ms > ?) "
            "GROUP BY message_id, reaction ORDER BY message_id, min(id)"
        )
        rows = await self._read(_fetch_rows, sql, (channel, *message_ids, now_ms))
        counts: dict[str, list[tuple[str, int]]] = {}
        for message_id, reaction, count in rows:
            counts.setdefault(message_id, []).append((reaction, count))
        return counts

    async def list_reactions(
        self, channel: str, message_ids: Sequence[str], *, now_ms: int
    ) -> dict[str, list[ReactionRecord]]:
        """See ``Store.list_reactions``. Runs on a reader thread."""
        self._check_open()
        if not message_ids:
            return {}
        marks = ", ".join("?" * len(message_ids))
        sql = (
            f"SELECT {_REACTION_COLUMNS} FROM reactions "
            f"WHERE channel = ? AND message_id IN ({marks}) "
            "AND (expires_ms IS NULL OR expires_ms > ?) ORDER BY message_id, id"
        )
        rows = await self._read(_fetch_rows, sql, (channel, *message_ids, now_ms))
        found: dict[str, list[ReactionRecord]] = {}
        for row in rows:
            record = ReactionRecord(*row)
            found.setdefault(record.message_id, []).append(record)
        return found

    async def sweep_reactions(self, *, now_ms: int, limit: int = 1000) -> int:
        """Delete at most ``limit`` reactions with ``expires_ms <= now_ms``; return the count.

        Runs on the writer thread between group commits (one short transaction).
        """
        return await self._sweep(_SWEEP_REACTIONS, now_ms, limit, "sweep_reactions")

    async def add_schedules(self, records: Sequence[ScheduleRecord]) -> None:
        """See ``Store.add_schedules``. One transaction on the writer thread."""
        self._check_open()
        if not records:
            return
        rows = [
            (r.id, r.due_ms, r.kind, r.channel, r.payload, r.created_ms, r.due_ms) for r in records
        ]
        await self._write_one("add_schedules", lambda conn: conn.executemany(_ADD_SCHEDULE, rows))

    async def next_schedule_ms(self) -> int | None:
        """See ``Store.next_schedule_ms``. Runs on a reader thread."""
        self._check_open()
        rows = await self._read(_fetch_rows, "SELECT min(next_ms) FROM schedules", ())
        value: int | None = rows[0][0]
        return value

    async def claim_schedules(
        self, *, now_ms: int, limit: int, lease_ms: int
    ) -> list[ScheduleRecord]:
        """See ``Store.claim_schedules``. One ``BEGIN IMMEDIATE`` transaction on the writer
        thread: other processes sharing the file wait for it (``busy_timeout``)."""
        self._check_open()
        if limit <= 0:
            return []
        rows = await self._write_one(
            "claim_schedules",
            lambda conn: conn.execute(
                _CLAIM_SCHEDULES, (now_ms + lease_ms, now_ms, limit)
            ).fetchall(),
        )
        return sorted((ScheduleRecord(*row) for row in rows), key=lambda r: (r.due_ms, r.id))

    async def complete_schedules(self, schedule_ids: Sequence[str]) -> None:
        """See ``Store.complete_schedules``. One transaction on the writer thread."""
        self._check_open()
        if schedule_ids:
            rows = [(schedule_id,) for schedule_id in schedule_ids]
            await self._write_one(
                "complete_schedules",
                lambda conn: conn.executemany("DELETE FROM schedules WHERE id = ?", rows),
            )

    async def delete_schedule(self, schedule_id: str, *, now_ms: int) -> bool:
        """See ``Store.delete_schedule``."""
        self._check_open()
        deleted: int = await self._write_one(
            "delete_schedule",
            lambda conn: conn.execute(_DELETE_SCHEDULE, (schedule_id, now_ms)).rowcount,
        )
        return deleted > 0

    async def put_revocation(self, revocation: Revocation) -> None:
        """See ``Store.put_revocation``. One transaction on the writer thread."""
        self._check_open()
        r = revocation
        row = (r.kind.value, r.value, r.issued_before_ms, r.created_ms, r.expires_ms)
        await self._write_one("put_revocation", lambda conn: conn.execute(_PUT_REVOCATION, row))

    async def list_revocations(self, *, now_ms: int) -> list[Revocation]:
        """See ``Store.list_revocations``. Runs on a reader thread."""
        self._check_open()
        rows = await self._read(_fetch_rows, _LIST_REVOCATIONS, (now_ms,))
        return [Revocation(RevocationKind(row[0]), *row[1:]) for row in rows]

    async def delete_revocation(self, kind: RevocationKind, value: str, *, now_ms: int) -> bool:
        """See ``Store.delete_revocation``. One transaction on the writer thread."""
        self._check_open()
        rows: list[Any] = await self._write_one(
            "delete_revocation",
            lambda conn: conn.execute(_DELETE_REVOCATION, (kind.value, value)).fetchall(),
        )
        return bool(rows) and rows[0][0] > now_ms

    async def sweep_revocations(self, *, now_ms: int, limit: int = 1000) -> int:
        """Delete at most ``limit`` revocations with ``expires_ms <= now_ms``; return the count."""
        return await self._sweep(_SWEEP_REVOCATIONS, now_ms, limit, "sweep_revocations")

    async def apply_storage(
        self, changes: Sequence[StorageChange], *, now_ms: int
    ) -> list[StorageOutcome]:
        """See ``Store.apply_storage``. One transaction on the writer thread.

        Raises:
            StoreUnavailable: the store is closed, or the file is locked, full or unwritable.
            StoreError: any other failure.
        """
        self._check_open()
        if not changes:
            return []
        return await self._on_writer("apply_storage", self._storage_sync, changes, now_ms)

    async def get_storage(self, channel: str, key: str, *, now_ms: int) -> StorageEntry | None:
        """See ``Store.get_storage``. Runs on a reader thread."""
        self._check_open()
        rows = await self._read(
            _fetch_rows, f"{_GET_STORAGE_ROW} AND {_STORAGE_LIVE}", (channel, key, now_ms)
        )
        return _entry(rows[0]) if rows else None

    async def list_storage(
        self,
        channel: str,
        *,
        now_ms: int,
        keys: Sequence[str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[StorageEntry]:
        """See ``Store.list_storage``. Runs on a reader thread."""
        self._check_open()
        if limit <= 0 or (keys is not None and not keys):
            return []
        where = ["channel = ?", _STORAGE_LIVE]
        params: list[object] = [channel, now_ms]
        if after is not None:
            where.append('"key" > ?')
            params.append(after)
        if keys is not None:
            where.append(f'"key" IN ({", ".join("?" * len(keys))})')
            params += keys
        sql = (
            f"SELECT {_STORAGE_COLUMNS} FROM storage WHERE {' AND '.join(where)} "
            'ORDER BY "key" LIMIT ?'
        )
        rows = await self._read(_fetch_rows, sql, (*params, limit))
        return [_entry(row) for row in rows]

    async def sweep_storage(self, *, now_ms: int, limit: int = 1000) -> list[StorageEntry]:
        """Delete at most ``limit`` expired entries and return them; one short transaction on
        the writer thread."""
        self._check_open()
        if limit <= 0:
            return []
        rows = await self._on_writer(
            "sweep_storage", self._returning_sync, _SWEEP_STORAGE, now_ms, limit
        )
        return [_entry(row) for row in rows]

    async def aclose(self) -> None:
        """Commit every pending ``append()``, wait for running reads, close all connections.

        Idempotent; calls made after it starts raise ``StoreUnavailable``.
        """
        async with self._open_lock:
            if self._state in ("new", "closed"):
                self._state = "closed"
                return
            self._state = "closing"
            self._wakeup.set()
            if self._writer_task is not None:
                await self._writer_task  # returns once _pending is empty
            assert self._readers is not None and self._writer is not None
            # Taking every reader back waits for the reads still running on them.
            for _ in self._all_readers:
                reader = await self._readers.get()
                await reader.run(reader.close)
                reader.shutdown()
            # The writer closes last: the last connection to close checkpoints and removes the WAL.
            await self._writer.run(self._writer.close)
            self._writer.shutdown()
            self._state = "closed"

    # Private methods

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreUnavailable(
                "the SQLite store is not open"
                if self._state == "new"
                else "the SQLite store is closed"
            )

    async def _sweep(self, sql: str, now_ms: int, limit: int, action: str) -> int:
        self._check_open()
        if limit <= 0:
            return 0
        return await self._on_writer(action, self._delete_sync, sql, now_ms, limit)

    async def _on_writer(self, action: str, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(writer, *args)`` on the writer thread between group commits; SQLite
        errors become store errors."""
        writer = self._writer
        assert writer is not None  # the caller's _check_open() passed
        try:
            return await writer.run(fn, writer, *args)
        except sqlite3.Error as exc:
            raise self._map_error(exc, action) from exc

    async def _write_one(self, action: str, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``work`` in one ``BEGIN IMMEDIATE`` transaction on the writer thread, between
        group commits."""
        writer = self._writer
        assert writer is not None  # the caller's _check_open() passed

        def run() -> _T:
            conn = writer.conn
            assert conn is not None
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            self._commits += 1
            return result

        try:
            return await writer.run(run)
        except sqlite3.Error as exc:
            raise self._map_error(exc, action) from exc

    async def _read(self, fn: Callable[..., _T], *args: Any) -> _T:
        readers = self._readers
        assert readers is not None
        reader = await readers.get()
        future = asyncio.ensure_future(reader.run(fn, reader, *args))
        try:
            return await asyncio.shield(future)
        except sqlite3.Error as exc:
            raise self._map_error(exc, "read") from exc
        finally:
            # A cancelled caller must not hand back a connection its thread is still using.
            if future.done():
                readers.put_nowait(reader)
            else:

                def give_back(done: asyncio.Future[_T]) -> None:
                    if not done.cancelled():
                        done.exception()  # mark retrieved: nobody is left to see it
                    readers.put_nowait(reader)

                future.add_done_callback(give_back)

    async def _write_loop(self) -> None:
        """The writer task: group-commit pending appends until closed and drained."""
        writer = self._writer
        assert writer is not None
        while True:
            if not self._pending:
                if self._state != "open":
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            # Take whole calls until the batch is big enough; never split a call.
            taken = 0
            rows = 0
            for records, _ in self._pending:
                taken += 1
                rows += len(records)
                if rows >= self._max_batch_rows:
                    break
            batch, self._pending = self._pending[:taken], self._pending[taken:]
            try:
                outcomes = await writer.run(self._write_sync, writer, [r for r, _ in batch])
            except BaseException as exc:
                # Only cancellation of this task (loop shutdown) or a bug lands here.
                failure = StoreUnavailable("the SQLite writer stopped")
                for _, future in (*batch, *self._pending):
                    if not future.done():
                        future.set_exception(failure)
                self._pending = []
                if not isinstance(exc, Exception):
                    raise
                logger.exception("! SQLite writer task failed; pending appends were refused")
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue  # the caller was cancelled; its records may be written anyway
                if isinstance(outcome, StoreError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    def _write_sync(
        self, writer: _Worker, calls: list[Sequence[MessageRecord]]
    ) -> list[list[str] | StoreError]:
        """Writer thread: commit all ``calls`` at once; on failure, retry them one by one so
        that one bad call does not fail its batch neighbours."""
        try:
            stored = self._insert_sync(writer, [record for records in calls for record in records])
        except Exception as exc:
            error = self._map_error(exc, "append")
            if len(calls) == 1 or isinstance(error, StoreUnavailable):
                return [error] * len(calls)
        else:
            outcomes: list[list[str] | StoreError] = []
            for records in calls:
                outcomes.append(stored[: len(records)])
                stored = stored[len(records) :]
            return outcomes
        outcomes = []
        for records in calls:
            try:
                outcomes.append(self._insert_sync(writer, records))
            except Exception as exc:
                outcomes.append(self._map_error(exc, "append"))
        return outcomes

    def _insert_sync(self, writer: _Worker, records: Sequence[MessageRecord]) -> list[str]:
        conn = writer.conn
        assert conn is not None
        rows = [
            (
                r.id,
                r.channel,
                r.event,
                r.data,
                r.uid,
                r.umd,
                r.created_ms,
                r.expires_ms,
                r.trigger,
                r.connection_id,
                r.source_ip,
                r.user_agent,
            )
            for r in records
        ]
        stored = [r.id for r in records]
        # IMMEDIATE takes the write lock up front, so a busy file fails here, before any work.
        conn.execute("BEGIN IMMEDIATE")
        try:
            for index, r in enumerate(records):
                if r.dedup_id is None:
                    continue
                known = conn.execute(_DEDUP_FIND, (r.dedup_id, r.created_ms)).fetchone()
                if known is not None:
                    stored[index] = known[0]
                    continue
                expires = r.created_ms + DEDUP_WINDOW_MS
                conn.execute(_DEDUP_CLAIM, (r.dedup_id, r.channel, r.id, expires))
            conn.executemany(
                _INSERT, [row for row, r, kept in zip(rows, records, stored) if kept == r.id]
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._commits += 1
        return stored

    def _delete_sync(self, writer: _Worker, sql: str, now_ms: int, limit: int) -> int:
        conn = writer.conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            deleted = conn.execute(sql, (now_ms, limit)).rowcount
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return deleted

    def _reactions_sync(
        self, writer: _Worker, changes: Sequence[ReactionChange], now_ms: int
    ) -> list[ReactionRecord | None]:
        conn = writer.conn
        assert conn is not None
        outcomes: list[ReactionRecord | None] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for change in changes:
                if isinstance(change, ReactionRemoval):
                    row = conn.execute(
                        _REMOVE_REACTION,
                        (change.channel, change.message_id, change.uid, change.reaction, now_ms),
                    ).fetchone()
                    outcomes.append(None if row is None else ReactionRecord(*row))
                    continue
                cursor = conn.execute(
                    _ADD_REACTION,
                    (
                        change.id,
                        change.channel,
                        change.message_id,
                        change.reaction,
                        change.uid,
                        change.umd,
                        change.created_ms,
                        change.expires_ms,
                        change.trigger,
                        change.request_id,
                        change.connection_id,
                        change.source_ip,
                        change.user_agent,
                        now_ms,
                    ),
                )
                outcomes.append(change if cursor.rowcount == 1 else None)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._commits += 1
        return outcomes

    def _storage_sync(
        self, writer: _Worker, changes: Sequence[StorageChange], now_ms: int
    ) -> list[StorageOutcome]:
        conn = writer.conn
        assert conn is not None
        outcomes: list[StorageOutcome] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for change in changes:
                found = conn.execute(_GET_STORAGE_ROW, (change.channel, change.key)).fetchone()
                stored = None if found is None else _entry(found)
                outcome, row = decide_storage(change, stored, now_ms)
                outcomes.append(outcome)
                if row is None:
                    if stored is not None:
                        conn.execute(_DELETE_STORAGE, (change.channel, change.key))
                elif row != stored:
                    conn.execute(_PUT_STORAGE, _storage_params(row))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self._commits += 1
        return outcomes

    def _returning_sync(
        self, writer: _Worker, sql: str, now_ms: int, limit: int
    ) -> list[tuple[Any, ...]]:
        conn = writer.conn
        assert conn is not None
        conn.execute("BEGIN IMMEDIATE")
        try:
            rows = conn.execute(sql, (now_ms, limit)).fetchall()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return rows

    def _migrate(self, writer: _Worker) -> None:
        conn = writer.conn
        assert conn is not None
        (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
        if mode != "wal":
            # Some filesystems (network mounts, some containers' overlays) refuse WAL silently.
            logger.warning(
                "! SQLite file %r is in journal mode %r, not WAL: reads will wait for writes",
                self.path,
                mode,
            )
        # IMMEDIATE: a second process opening the same new file waits here instead of racing.
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"SQLite database {self.path!r} has schema version {version}, newer than "
                    f"this tidings understands ({SCHEMA_VERSION}); upgrade tidings."
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _map_error(self, exc: BaseException, action: str) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        where = f"SQLite {action} on {str(Path(self.path).absolute())!r} failed"
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            if isinstance(code, int) and code & 0xFF in _TRANSIENT_CODES:
                return StoreUnavailable(f"{where}: {exc}")
        return StoreError(f"{where}: {type(exc).__name__}: {exc}")


def _list_sql(has_lower: bool, inclusive: bool, has_before: bool, reverse: bool) -> str:
    where = ["channel = ?"]
    if has_lower:
        where.append("id >= ?" if inclusive else "id > ?")
    if has_before:
        where.append("id < ?")
    where.append("(expires_ms IS NULL OR expires_ms > ?)")
    order = "DESC" if reverse else "ASC"
    return (
        f"SELECT {_COLUMNS} FROM messages WHERE {' AND '.join(where)} ORDER BY id {order} LIMIT ?"
    )


def _entry(row: Sequence[Any]) -> StorageEntry:
    (channel, key, data, uid, umd, updated, expires, emit, trigger, conn_id, ip, ua) = row
    return StorageEntry(
        channel, key, data, uid, umd, updated, expires, bool(emit), trigger, conn_id, ip, ua
    )


def _storage_params(entry: StorageEntry) -> tuple[object, ...]:
    return (
        entry.channel,
        entry.key,
        entry.data,
        entry.uid,
        entry.umd,
        entry.updated_ms,
        entry.expires_ms,
        int(entry.emit_event),
        entry.trigger,
        entry.connection_id,
        entry.source_ip,
        entry.user_agent,
    )


def _fetch_rows(worker: _Worker, sql: str, params: Sequence[object]) -> list[Any]:
    conn = worker.conn
    assert conn is not None
    return conn.execute(sql, params).fetchall()


def _fetch_records(worker: _Worker, sql: str, params: Sequence[object]) -> list[MessageRecord]:
    conn = worker.conn
    assert conn is not None
    return [MessageRecord(*row) for row in conn.execute(sql, params)]


_: type[Store] = SqliteStore
