"""``PostgresOutbox``: a ``<prefix>webhook_outbox`` table in the store's schema, claimed with
``FOR UPDATE SKIP LOCKED`` so several nodes share it."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Sequence
from typing import Any

from tidings.errors import ConfigError, StoreUnavailable
from tidings.events.outbox.base import (
    DEFAULT_LEASE_MS,
    FIELDS,
    Outbox,
    PendingDelivery,
    check_lease,
    row_of,
)
from tidings.store._pg import begin_migration, check_identifiers, map_error

logger = logging.getLogger("tidings.events.outbox")

__all__ = ["PostgresOutbox"]


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
        check_identifiers(schema=schema, table_prefix=table_prefix)
        if len(table_prefix) + len("webhook_outbox_due_idx") > 63:
            raise ConfigError(f"PostgreSQL table_prefix {table_prefix!r} is too long.")
        if (schema and len(schema) > 63) or pool_max_size < 1:
            raise ConfigError("PostgresOutbox needs a schema name of at most 63 bytes and a pool.")
        self._dsn = dsn
        self._schema = schema
        self._prefix = table_prefix
        self._lease_ms = check_lease(lease_ms)
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
            f"INSERT INTO {t} ({FIELDS}) SELECT * FROM unnest($1::text[], $2::text[], "
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
                    await begin_migration(conn, self._schema)
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
                    raise map_error(exc, "webhook outbox open") from exc
                raise
            self._pool = pool

    async def add(self, deliveries: Sequence[PendingDelivery]) -> None:
        """See ``Outbox.add``."""
        if deliveries:
            columns = list(zip(*(row_of(d) for d in deliveries), strict=True))
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
            raise map_error(exc, f"webhook outbox {action}") from exc


_: type[Outbox] = PostgresOutbox
