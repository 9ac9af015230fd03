"""The webhook outbox: deliveries waiting to be sent, kept where they survive a restart (§17.3).

Shape:

* ``EventBus`` adds deliveries (one per event and matching endpoint) in batches; ``add`` returns
  once they are durable. ``WebhookDispatcher`` *claims* the due ones with ``due``, sends them, and
  settles each with ``done`` (delivered), ``retry`` (failed, try again later) or ``drop`` (gave up).
* **Leases.** Claiming a delivery moves its ``next_attempt_ms`` to ``now_ms + lease_ms``: it is
  not handed out again while in flight, and if its claimer dies before settling it (crash, kill,
  lost connection) it simply becomes due again when the lease runs out. One column holds both the
  retry time and the lease, so claiming is one indexed range scan and one update.
* Backends, chosen by the store URL (the outbox lives next to the message store):
  ``MemoryOutbox`` (``memory://``: lost on exit), ``SqliteOutbox`` (a ``webhook_outbox`` table in
  the store's SQLite file) and ``PostgresOutbox`` (a ``<prefix>webhook_outbox`` table in the
  store's schema, claimed with ``FOR UPDATE SKIP LOCKED`` so several nodes share it).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import os
import re
import sqlite3
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol, TypeVar

from tidings.errors import ConfigError, StoreError, StoreUnavailable

__all__ = [
    "DEFAULT_LEASE_MS",
    "MemoryOutbox",
    "Outbox",
    "PendingDelivery",
    "PostgresOutbox",
    "SqliteOutbox",
    "open_outbox",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How long a claimed delivery stays invisible to other claimers. It must exceed the time from
#: claim to settlement: the 10 s request timeout plus a margin for a slow database.
DEFAULT_LEASE_MS: Final = 60_000

_FIELDS = "id, url, event_type, body, attempts, next_attempt_ms"
_Fn = Callable[[sqlite3.Connection], _T]  # a job for the SQLite outbox thread


@dataclass(frozen=True, slots=True)
class PendingDelivery:
    """One event on its way to one endpoint.

    Attributes:
        id: a ULID, sent as ``webhook-id``: the same on every attempt, so receivers deduplicate.
        url: the endpoint URL.
        event_type: the envelope's ``type`` (sent as ``tidings-event-type``).
        body: the encoded envelope, sent byte for byte and signed as is.
        attempts: failed attempts so far.
        next_attempt_ms: Unix milliseconds from which it may be claimed. For a delivery returned
            by ``Outbox.due`` this is the end of its lease.
    """

    id: str
    url: str
    event_type: str
    body: bytes
    attempts: int = 0
    next_attempt_ms: int = 0


class Outbox(Protocol):
    """Stores pending deliveries. At-least-once: a delivery leaves only through ``done`` or
    ``drop``, and every method may be called from several tasks (or nodes) at once."""

    async def open(self) -> None:
        """Connect and create the table if missing. Idempotent; call before anything else.

        Raises:
            StoreUnavailable: the database cannot be reached or opened.
        """
        ...

    async def add(self, deliveries: Sequence[PendingDelivery]) -> None:
        """Store ``deliveries``; they are durable when this returns.

        An ID already stored is ignored, so repeating a call whose outcome is unknown is safe.

        Raises:
            StoreError: nothing was stored (StoreUnavailable: try again later).
        """
        ...

    async def due(
        self, now_ms: int, limit: int, *, url: str | None = None
    ) -> list[PendingDelivery]:
        """Claim up to ``limit`` deliveries whose ``next_attempt_ms <= now_ms``, oldest first.

        Args:
            now_ms: the current Unix time in milliseconds.
            limit: at most this many are returned.
            url: only deliveries to this endpoint; None claims for any.

        Returns:
            The claimed deliveries. Each is leased: no other ``due`` call returns it before
            ``now_ms + lease_ms``, unless it is settled (``done``, ``retry``, ``drop``) first.
        """
        ...

    async def done(self, ids: Sequence[str]) -> None:
        """Forget delivered deliveries. Unknown IDs are ignored."""
        ...

    async def retry(self, id: str, next_attempt_ms: int, attempts: int) -> None:
        """Make a claimed delivery due again at ``next_attempt_ms``, having failed ``attempts``
        times so far. Also releases a lease early (same ``attempts``, ``next_attempt_ms`` now).
        Unknown IDs are ignored."""
        ...

    async def drop(self, id: str) -> None:
        """Forget a delivery that will never be sent. Unknown IDs are ignored."""
        ...

    async def count(self) -> int:
        """Deliveries stored: due, leased or waiting for a retry."""
        ...

    async def aclose(self) -> None:
        """Release connections. Idempotent. Stored deliveries stay for the next ``open``."""
        ...


def open_outbox(store_url: str, *, lease_ms: int = DEFAULT_LEASE_MS) -> Outbox:
    """Build (not yet open) the outbox that lives with the store at ``store_url``.

    URLs are read exactly as ``tidings.store.open_store`` reads them, so the outbox shares the
    store's SQLite file or PostgreSQL schema. Drivers are imported lazily.

    Raises:
        ConfigError: the URL is not supported.
    """
    if store_url == "memory://" or store_url.startswith("memory:"):
        return MemoryOutbox(lease_ms=lease_ms)
    if store_url.startswith("sqlite:"):
        return SqliteOutbox.from_url(store_url, lease_ms=lease_ms)
    if store_url.startswith(("postgresql://", "postgres://")):
        return PostgresOutbox.from_url(store_url, lease_ms=lease_ms)
    raise ConfigError(
        f"TIDINGS_STORE {store_url!r} is not supported; use sqlite:///path, postgresql://… or "
        "memory://."
    )


def _check_lease(lease_ms: int) -> int:
    if isinstance(lease_ms, bool) or not isinstance(lease_ms, int) or lease_ms < 1:
        raise ConfigError(f"The outbox lease must be a positive number of ms, not {lease_ms!r}.")
    return lease_ms


# Memory


class MemoryOutbox:
    """An ``Outbox`` in this process's memory: nothing survives a restart (``memory://``)."""

    def __init__(self, *, lease_ms: int = DEFAULT_LEASE_MS) -> None:
        self._lease_ms = _check_lease(lease_ms)
        self._rows: dict[str, PendingDelivery] = {}  # id -> current state
        # Per URL, a heap of (next_attempt_ms, id); entries whose time no longer matches the row
        # are stale (settled or re-leased) and skipped when popped.
        self._heaps: dict[str, list[tuple[int, str]]] = {}

    async def open(self) -> None:
        """Nothing to open."""

    async def add(self, deliveries: Sequence[PendingDelivery]) -> None:
        """See ``Outbox.add``."""
        for delivery in deliveries:
            if delivery.id not in self._rows:
                self._put(delivery)

    async def due(
        self, now_ms: int, limit: int, *, url: str | None = None
    ) -> list[PendingDelivery]:
        """See ``Outbox.due``."""
        heaps = [self._heaps.get(url, [])] if url is not None else list(self._heaps.values())
        claimed: list[PendingDelivery] = []
        while len(claimed) < limit:
            heap = min((h for h in heaps if h), key=lambda h: h[0], default=None)
            if heap is None or heap[0][0] > now_ms:
                break
            when, id_ = heapq.heappop(heap)
            row = self._rows.get(id_)
            if row is None or row.next_attempt_ms != when:
                continue
            leased = replace(row, next_attempt_ms=now_ms + self._lease_ms)
            self._put(leased)
            claimed.append(leased)
        return claimed

    async def done(self, ids: Sequence[str]) -> None:
        """See ``Outbox.done``."""
        for id_ in ids:
            self._rows.pop(id_, None)
        self._compact()

    async def retry(self, id: str, next_attempt_ms: int, attempts: int) -> None:
        """See ``Outbox.retry``."""
        row = self._rows.get(id)
        if row is not None:
            self._put(replace(row, next_attempt_ms=next_attempt_ms, attempts=attempts))

    async def drop(self, id: str) -> None:
        """See ``Outbox.drop``."""
        self._rows.pop(id, None)
        self._compact()

    async def count(self) -> int:
        """See ``Outbox.count``."""
        return len(self._rows)

    async def aclose(self) -> None:
        """Nothing to close; the deliveries stay in this object."""

    def _put(self, row: PendingDelivery) -> None:
        self._rows[row.id] = row
        heapq.heappush(self._heaps.setdefault(row.url, []), (row.next_attempt_ms, row.id))

    def _compact(self) -> None:
        # Stale entries of settled rows are otherwise only removed when they come due, which for
        # leased rows is a whole lease later: rebuild once they dominate a heap.
        for url, heap in self._heaps.items():
            if len(heap) > 64 and len(heap) > 2 * len(self._rows):
                live = [
                    (w, i) for w, i in heap if (r := self._rows.get(i)) and r.next_attempt_ms == w
                ]
                heapq.heapify(live)
                self._heaps[url] = live


# SQLite

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
    f"INSERT INTO webhook_outbox ({_FIELDS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
_SQLITE_DELETE = "DELETE FROM webhook_outbox WHERE id = ?"
_SQLITE_LEASE = "UPDATE webhook_outbox SET next_attempt_ms = ? WHERE id = ?"
_SQLITE_RETRY = "UPDATE webhook_outbox SET next_attempt_ms = ?, attempts = ? WHERE id = ?"
_SQLITE_DUE = {
    False: f"SELECT {_FIELDS} FROM webhook_outbox WHERE next_attempt_ms <= ? "
    "ORDER BY next_attempt_ms LIMIT ?",
    True: f"SELECT {_FIELDS} FROM webhook_outbox WHERE url = ? AND next_attempt_ms <= ? "
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
        self._lease_ms = _check_lease(lease_ms)
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
        rows = [_row(d) for d in deliveries]
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


# PostgreSQL

# Same key as PostgresStore's migrations: one lock serializes every tidings DDL in a database
# ("tidings\0" as a big-endian int8), including CREATE SCHEMA.
_MIGRATION_LOCK_KEY: Final = int.from_bytes(b"tidings\x00", "big")
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")
# PostgresStore's URL options: read here for the schema and prefix, never passed to asyncpg.
_STORE_OPTIONS = frozenset(
    {
        "schema",
        "table_prefix",
        "pool_min_size",
        "pool_max_size",
        "max_writers",
        "max_batch_rows",
        "connect_timeout",
        "command_timeout",
    }
)


class PostgresOutbox:
    """An ``Outbox`` in PostgreSQL, shared by every node that uses the same store.

    ``due`` claims with ``FOR UPDATE SKIP LOCKED``: nodes claiming at once get disjoint rows
    without waiting on each other. The table is created by ``open()`` under the advisory lock the
    store's migrations also take, so nodes starting together do not race.

    Attributes:
        table: the qualified, quoted table name.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        table_prefix: str = "tidings_",
        lease_ms: int = DEFAULT_LEASE_MS,
        pool_max_size: int = 4,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 10.0,
    ) -> None:
        """Configure (do not connect) the outbox.

        Args:
            dsn: a ``postgresql://`` URL as ``asyncpg`` accepts it.
            schema: the schema of the table, created if missing; None uses the ``search_path``.
            table_prefix: prepended to the table and index names (``tidings_webhook_outbox``).
            lease_ms: how long a claimed delivery stays invisible to ``due``.
            pool_max_size: connections at most.
            connect_timeout: seconds to establish one connection.
            command_timeout: seconds any one statement may take; None waits forever.

        Raises:
            ConfigError: a name is not a lower-case SQL identifier.
        """
        schema = schema or None
        for what, name in (("schema", schema), ("table_prefix", table_prefix)):
            if name and not _IDENTIFIER.fullmatch(name):
                raise ConfigError(
                    f"PostgreSQL {what} {name!r} must be lower-case letters, digits and "
                    "underscores, not starting with a digit."
                )
        if len(table_prefix) + len("webhook_outbox_due_idx") > 63:
            raise ConfigError(f"PostgreSQL table_prefix {table_prefix!r} is too long.")
        if (schema and len(schema) > 63) or pool_max_size < 1:
            raise ConfigError("PostgresOutbox needs a schema name of at most 63 bytes and a pool.")
        self._dsn = dsn
        self._schema = schema
        self._prefix = table_prefix
        self._lease_ms = _check_lease(lease_ms)
        qualifier = f'"{schema}".' if schema is not None else ""
        self.table = f'{qualifier}"{table_prefix}webhook_outbox"'
        self._pool_kwargs: dict[str, Any] = {
            "min_size": 1,
            "max_size": pool_max_size,
            "timeout": connect_timeout,
            "command_timeout": command_timeout,
        }
        if "application_name=" not in dsn:
            self._pool_kwargs["server_settings"] = {"application_name": "tidings-outbox"}
        self._pool: Any = None  # asyncpg.Pool once open
        self._lock = asyncio.Lock()  # serializes open() and aclose()
        t = self.table
        self._insert_sql = (
            f"INSERT INTO {t} ({_FIELDS}) SELECT * FROM unnest($1::text[], $2::text[], "
            "$3::text[], $4::bytea[], $5::int4[], $6::int8[]) ON CONFLICT (id) DO NOTHING"
        )
        due = f"SELECT id FROM {t} WHERE {{}}next_attempt_ms <= $1 ORDER BY next_attempt_ms"
        claim = (
            f"UPDATE {t} AS o SET next_attempt_ms = $3 FROM ({due} LIMIT $2 FOR UPDATE SKIP "
            f"LOCKED) AS d WHERE o.id = d.id RETURNING o.id, o.url, o.event_type, o.body, "
            "o.attempts, o.next_attempt_ms"
        )
        self._due_sql = {False: claim.format(""), True: claim.format("url = $4 AND ")}

    @classmethod
    def from_url(cls, url: str, *, lease_ms: int = DEFAULT_LEASE_MS) -> PostgresOutbox:
        """The outbox next to the store of ``postgresql://…``: the store's ``schema`` and
        ``table_prefix`` options place the table; its other options are ignored; everything
        else goes to ``asyncpg``."""
        parts = urllib.parse.urlsplit(url)
        kept: list[tuple[str, str]] = []
        options: dict[str, str] = {}
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            if key in _STORE_OPTIONS:
                options[key] = value
            else:
                kept.append((key, value))
        dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
        return cls(
            dsn,
            schema=options.get("schema"),
            table_prefix=options.get("table_prefix", "tidings_"),
            lease_ms=lease_ms,
        )

    async def open(self) -> None:
        """See ``Outbox.open``."""
        async with self._lock:
            if self._pool is not None:
                return
            import asyncpg  # lazily: only deployments that use PostgreSQL need the driver

            pool = None
            try:
                pool = await asyncpg.create_pool(self._dsn, **self._pool_kwargs)
                async with pool.acquire() as conn, conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK_KEY)
                    if self._schema is not None:
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                    await conn.execute(
                        f"CREATE TABLE IF NOT EXISTS {self.table} ("
                        'id text COLLATE "C" PRIMARY KEY, url text NOT NULL, '
                        "event_type text NOT NULL, body bytea NOT NULL, "
                        "attempts int4 NOT NULL, next_attempt_ms int8 NOT NULL)"
                    )
                    await conn.execute(
                        f'CREATE INDEX IF NOT EXISTS "{self._prefix}webhook_outbox_due_idx" '
                        f"ON {self.table} (url, next_attempt_ms)"
                    )
            except BaseException as exc:
                if pool is not None:
                    pool.terminate()
                if isinstance(exc, Exception):
                    raise _map_pg_error(exc, "open") from exc
                raise
            self._pool = pool

    async def add(self, deliveries: Sequence[PendingDelivery]) -> None:
        """See ``Outbox.add``."""
        if deliveries:
            columns = list(zip(*(_row(d) for d in deliveries), strict=True))
            await self._call("execute", "add", self._insert_sql, *map(list, columns))

    async def due(
        self, now_ms: int, limit: int, *, url: str | None = None
    ) -> list[PendingDelivery]:
        """See ``Outbox.due``."""
        if limit <= 0:
            return []
        args: list[object] = [now_ms, limit, now_ms + self._lease_ms]
        if url is not None:
            args.append(url)
        rows = await self._call("fetch", "due", self._due_sql[url is not None], *args)
        deliveries = [PendingDelivery(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]
        deliveries.sort(key=lambda d: d.id)  # RETURNING has no order; ULIDs are oldest first
        return deliveries

    async def done(self, ids: Sequence[str]) -> None:
        """See ``Outbox.done``."""
        if ids:
            sql = f"DELETE FROM {self.table} WHERE id = ANY($1::text[])"
            await self._call("execute", "done", sql, list(ids))

    async def retry(self, id: str, next_attempt_ms: int, attempts: int) -> None:
        """See ``Outbox.retry``."""
        sql = f"UPDATE {self.table} SET next_attempt_ms = $2, attempts = $3 WHERE id = $1"
        await self._call("execute", "retry", sql, id, next_attempt_ms, attempts)

    async def drop(self, id: str) -> None:
        """See ``Outbox.drop``."""
        await self.done([id])

    async def count(self) -> int:
        """See ``Outbox.count``."""
        return int(await self._call("fetchval", "count", f"SELECT count(*) FROM {self.table}"))

    async def aclose(self) -> None:
        """See ``Outbox.aclose``."""
        async with self._lock:
            pool, self._pool = self._pool, None
            if pool is not None:
                await pool.close()

    async def _call(self, method: str, action: str, sql: str, *args: Any) -> Any:
        if self._pool is None:
            raise StoreUnavailable("the webhook outbox is not open")
        try:
            return await getattr(self._pool, method)(sql, *args)
        except Exception as exc:
            raise _map_pg_error(exc, action) from exc


def _row(d: PendingDelivery) -> tuple[str, str, str, bytes, int, int]:
    return (d.id, d.url, d.event_type, d.body, d.attempts, d.next_attempt_ms)


def _map_pg_error(exc: Exception, action: str) -> StoreError:
    """Sort a driver error into "cannot reach the server now" and "anything else" (as the
    PostgreSQL store does)."""
    if isinstance(exc, StoreError):
        return exc
    import asyncpg

    message = f"PostgreSQL webhook outbox {action} failed: {type(exc).__name__}: {exc}"
    unavailable = (
        OSError,
        TimeoutError,
        asyncpg.PostgresConnectionError,
        asyncpg.CannotConnectNowError,
        asyncpg.AdminShutdownError,
        asyncpg.CrashShutdownError,
        asyncpg.TooManyConnectionsError,
        asyncpg.ReadOnlySQLTransactionError,
        asyncpg.InternalClientError,
    )
    if isinstance(exc, unavailable) or (
        isinstance(exc, asyncpg.InterfaceError) and not isinstance(exc, ValueError)
    ):
        return StoreUnavailable(message)
    return StoreError(message)


_: type[Outbox] = MemoryOutbox
_ = SqliteOutbox
_ = PostgresOutbox
