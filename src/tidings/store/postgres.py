"""``PostgresStore``: message history in PostgreSQL (``postgresql://…``), shared by several nodes.

Shape:

* An ``asyncpg`` pool (imported lazily, on ``open()``). Every error the driver raises is mapped
  to ``StoreUnavailable`` (cannot reach the server right now: the caller answers 503) or
  ``StoreError`` (anything else).
* **Group commit.** Pending ``append()`` calls are gathered by at most ``max_writers`` flusher
  tasks; each flush is one ``INSERT … SELECT FROM unnest(…) ON CONFLICT DO NOTHING`` statement,
  i.e. one round trip and one commit for every call that was waiting.
* **Schema.** Text columns for JSON (``jsonb`` rejects ``\\u0000`` and reorders keys), ``COLLATE
  "C"`` on the IDs so that ``<``/``>`` compare ULIDs bytewise whatever the database locale, a
  primary key ``(channel, id)`` that serves page scans in both directions, and a partial index on
  ``expires_ms`` for the sweeper. ``open()`` migrates under ``pg_advisory_xact_lock``, so nodes
  starting together do not race on ``CREATE TABLE``; the version is in ``<prefix>schema_version``.
* **Reactions** (version 2): ``<prefix>reactions`` keyed by ``(channel, message_id, uid,
  reaction)``, the one-per-user rule and the seek of a page's reactions (``= ANY($2)``). One
  ``apply_reactions()`` call is one transaction.
* **Schedules** (version 3): ``<prefix>schedules`` keyed by ID, with an index on ``next_ms``
  (the due time, pushed to the lease's end when claimed). A claim is one ``UPDATE … WHERE id IN
  (SELECT … FOR UPDATE SKIP LOCKED)``: nodes claiming at once split the due rows, and a row
  another node just claimed fails the re-check of ``next_ms <= now``.
* **Revocations** (version 4): ``<prefix>revocations`` keyed by ``(kind, value)``; every node
  reads the whole (small) table once per sweep.
* **Storage** (version 5): ``<prefix>storage`` keyed by ``(channel, key)``, which is also the
  listing order. One ``apply_storage()`` call is one transaction that locks each row it reads
  (``FOR UPDATE``) before deciding (``decide_storage``). Two first writes of one key from two
  nodes are serialized by the channel's publishing turn, not by the row lock.
* **Deduplication** (version 6): ``<prefix>dedup`` maps each recent ``deduplicationId`` to its
  message. A flush holding one claims them (``INSERT … ON CONFLICT``, which waits for a
  concurrent claimer's commit) and inserts the winners' messages in the same transaction.
* **U+0000** (version 7): ``uid`` columns go through ``_pg.encode_text``, an injective text
  form PostgreSQL can hold (the JSON columns already hold escaped JSON text), so every value
  valid on the wire round-trips as on SQLite.
* **Outcome unknown.** A connection that dies after a write was sent (and a retry that cannot
  reach the server) leaves the commit in doubt: ``append`` raises ``StoreOutcomeUnknown``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import urllib.parse
from collections.abc import Sequence
from typing import Any, TypeVar

from tidings.errors import ConfigError, StoreError, StoreOutcomeUnknown, StoreUnavailable
from tidings.store._pg import (
    begin_migration,
    check_identifiers,
    decode_text,
    encode_text,
    map_error,
    reencode_sql,
)
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

__all__ = ["PostgresStore"]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 7

# Column order equals the field order of ``MessageRecord``, so ``MessageRecord(*row)`` works.
_COLUMNS = (
    'id, channel, event, data, uid, umd, created_ms, expires_ms, "trigger", '
    "connection_id, source_ip, user_agent"
)
_UNNEST_TYPES = (
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
    "int8[]",
    "int8[]",
    "text[]",
    "text[]",
    "text[]",
    "text[]",
)


# Column order equals the field order of ``ReactionRecord``, so ``ReactionRecord(*row)`` works.
_REACTION_COLUMNS = (
    'id, channel, message_id, reaction, uid, umd, created_ms, expires_ms, "trigger", '
    "request_id, connection_id, source_ip, user_agent"
)
_REACTION_REPLACED = (
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


# Column order equals the field order of ``ScheduleRecord``, so ``ScheduleRecord(*row)`` works.
_SCHEDULE_COLUMNS = "id, due_ms, kind, channel, payload, created_ms, attempts"


# Column order equals the field order of ``StorageEntry``, so ``StorageEntry(*row)`` works.
_STORAGE_COLUMNS = (
    'channel, "key", data, uid, umd, updated_ms, expires_ms, emit_event, "trigger", '
    "connection_id, source_ip, user_agent"
)
_STORAGE_REPLACED = (
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


def _migrations(
    messages: str,
    prefix: str,
    reactions: str,
    schedules: str,
    revocations: str,
    storage: str,
    dedup: str,
) -> dict[int, tuple[str, ...]]:
    """Statements per schema version. Tables are qualified; index names never are (an index
    lives in its table's schema)."""
    return {
        1: (
            f"""
            CREATE TABLE IF NOT EXISTS {messages} (
                id text COLLATE "C" NOT NULL,
                channel text COLLATE "C" NOT NULL,
                event text NOT NULL,
                data text NOT NULL,
                uid text,
                umd text NOT NULL,
                created_ms int8 NOT NULL,
                expires_ms int8,
                "trigger" text NOT NULL,
                connection_id text,
                source_ip text,
                user_agent text,
                PRIMARY KEY (channel, id)
            )
            """,
            # Partial: records kept forever (the common case) cost nothing in this index.
            f'CREATE INDEX IF NOT EXISTS "{prefix}messages_expires_idx" '
            f"ON {messages} (expires_ms) WHERE expires_ms IS NOT NULL",
        ),
        2: (
            f"""
            CREATE TABLE IF NOT EXISTS {reactions} (
                channel text COLLATE "C" NOT NULL,
                message_id text COLLATE "C" NOT NULL,
                uid text COLLATE "C" NOT NULL,
                reaction text COLLATE "C" NOT NULL,
                id text COLLATE "C" NOT NULL,
                umd text NOT NULL,
                created_ms int8 NOT NULL,
                expires_ms int8,
                "trigger" text NOT NULL,
                request_id text,
                connection_id text,
                source_ip text,
                user_agent text,
                PRIMARY KEY (channel, message_id, uid, reaction)
            )
            """,
            f'CREATE INDEX IF NOT EXISTS "{prefix}reactions_expires_idx" '
            f"ON {reactions} (expires_ms) WHERE expires_ms IS NOT NULL",
        ),
        3: (
            f"""
            CREATE TABLE IF NOT EXISTS {schedules} (
                id text COLLATE "C" PRIMARY KEY,
                due_ms int8 NOT NULL,
                kind text NOT NULL,
                channel text NOT NULL,
                payload text NOT NULL,
                created_ms int8 NOT NULL,
                attempts int4 NOT NULL DEFAULT 0,
                next_ms int8 NOT NULL
            )
            """,
            f'CREATE INDEX IF NOT EXISTS "{prefix}schedules_next_idx" ON {schedules} (next_ms)',
        ),
        4: (
            f"""
            CREATE TABLE IF NOT EXISTS {revocations} (
                kind text COLLATE "C" NOT NULL,
                value text COLLATE "C" NOT NULL,
                issued_before_ms int8,
                created_ms int8 NOT NULL,
                expires_ms int8 NOT NULL,
                PRIMARY KEY (kind, value)
            )
            """,
            f'CREATE INDEX IF NOT EXISTS "{prefix}revocations_expires_idx" '
            f"ON {revocations} (expires_ms)",
        ),
        5: (
            f"""
            CREATE TABLE IF NOT EXISTS {storage} (
                channel text COLLATE "C" NOT NULL,
                "key" text COLLATE "C" NOT NULL,
                data text NOT NULL,
                uid text,
                umd text NOT NULL,
                updated_ms int8 NOT NULL,
                expires_ms int8,
                emit_event bool NOT NULL,
                "trigger" text NOT NULL,
                connection_id text,
                source_ip text,
                user_agent text,
                PRIMARY KEY (channel, "key")
            )
            """,
            f'CREATE INDEX IF NOT EXISTS "{prefix}storage_expires_idx" '
            f"ON {storage} (expires_ms) WHERE expires_ms IS NOT NULL",
        ),
        6: (
            f"""
            CREATE TABLE IF NOT EXISTS {dedup} (
                dedup_id text COLLATE "C" PRIMARY KEY,
                channel text NOT NULL,
                message_id text NOT NULL,
                expires_ms int8 NOT NULL
            )
            """,
            f'CREATE INDEX IF NOT EXISTS "{prefix}dedup_expires_idx" ON {dedup} (expires_ms)',
        ),
        # uids are stored through encode_text from here on (U+0000 round-trips)
        7: (
            reencode_sql(messages, "uid"),
            reencode_sql(reactions, "uid"),
            reencode_sql(storage, "uid"),
        ),
    }


_Decodable = TypeVar("_Decodable", MessageRecord, ReactionRecord, StorageEntry)


def _decoded(record: _Decodable) -> _Decodable:
    """``record`` with its ``uid`` as it was before ``encode_text``."""
    uid = record.uid
    if uid is None or not uid.startswith("\x01"):
        return record
    return dataclasses.replace(record, uid=decode_text(uid))


class PostgresStore:
    """A ``Store`` on PostgreSQL (11 or later), safe to share between tidings nodes.

    Build it with ``PostgresStore(dsn, …)`` or ``PostgresStore.from_url(url)``, then
    ``await open()`` before any other call and ``await aclose()`` when done (it waits for pending
    appends). A ``StoreUnavailable`` from ``append`` can hide a commit whose reply was lost:
    retrying with the same record IDs is safe, since duplicates are ignored.

    Attributes:
        messages_table: the qualified, quoted name of the messages table.
        reactions_table: the qualified, quoted name of the reactions table.
        schedules_table: the qualified, quoted name of the schedules table.
        revocations_table: the qualified, quoted name of the revocations table.
        storage_table: the qualified, quoted name of the channel storage table.
        dedup_table: the qualified, quoted name of the ``deduplicationId`` table.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        table_prefix: str = "tidings_",
        pool_min_size: int = 1,
        pool_max_size: int = 10,
        max_writers: int = 4,
        max_batch_rows: int = 2000,
        connect_timeout: float = 5.0,
        command_timeout: float | None = 10.0,
    ) -> None:
        """Configure (do not connect) a store.

        Args:
            dsn: a libpq-style ``postgresql://`` URL as ``asyncpg`` accepts it (its own query
                parameters such as ``sslmode`` pass through).
            schema: the schema holding the tables, created by ``open()`` if missing; None uses
                the connection's ``search_path`` (normally ``public``).
            table_prefix: prepended to every table and index name.
            pool_min_size: connections opened by ``open()`` and kept.
            pool_max_size: connections at most.
            max_writers: flushes in flight at once; pending appends beyond that are batched.
            max_batch_rows: a flush stops taking pending calls once it holds this many records.
            connect_timeout: seconds to establish one connection.
            command_timeout: seconds any one statement may take; None waits forever.

        Raises:
            ConfigError: a name is not a lower-case SQL identifier, or a size is out of range.
        """
        schema = schema or None  # "?schema=" means the default, not an empty identifier
        check_identifiers(schema=schema, table_prefix=table_prefix)
        if schema is not None and len(schema) > 63:
            raise ConfigError(f"PostgreSQL schema {schema!r} is longer than 63 bytes.")
        if len(table_prefix) + len("revocations_expires_idx") > 63:
            raise ConfigError(f"PostgreSQL table_prefix {table_prefix!r} is too long.")
        if not 0 <= pool_min_size <= pool_max_size or pool_max_size < 1 or max_writers < 1:
            raise ConfigError(
                "PostgresStore needs 0 <= pool_min_size <= pool_max_size, pool_max_size >= 1 "
                "and max_writers >= 1."
            )
        self._dsn = dsn
        self._schema = schema
        self._prefix = table_prefix
        qualifier = f'"{schema}".' if schema is not None else ""
        self.messages_table = f'{qualifier}"{table_prefix}messages"'
        self.reactions_table = f'{qualifier}"{table_prefix}reactions"'
        self.schedules_table = f'{qualifier}"{table_prefix}schedules"'
        self.revocations_table = f'{qualifier}"{table_prefix}revocations"'
        self.storage_table = f'{qualifier}"{table_prefix}storage"'
        self.dedup_table = f'{qualifier}"{table_prefix}dedup"'
        self._version_table = f'{qualifier}"{table_prefix}schema_version"'
        self._pool_kwargs: dict[str, Any] = {
            "min_size": pool_min_size,
            "max_size": pool_max_size,
            "timeout": connect_timeout,
            "command_timeout": command_timeout,
        }
        if "application_name=" not in dsn:
            # Names our sessions in pg_stat_activity, so operators can tell them apart.
            self._pool_kwargs["server_settings"] = {"application_name": "tidings"}
        self._max_writers = max_writers
        self._max_batch_rows = max_batch_rows
        self._pool: Any = None  # asyncpg.Pool once open
        self._pending: list[tuple[Sequence[MessageRecord], asyncio.Future[list[str]]]] = []
        self._flushers: set[asyncio.Task[None]] = set()  # running group-commit tasks
        self._open_lock = asyncio.Lock()  # serializes open() and aclose()
        self._state = "new"  # new -> open -> closing -> closed
        self._sql_cache: dict[tuple[bool, bool, bool, bool], str] = {}
        types = ", ".join(f"${n}::{t}" for n, t in enumerate(_UNNEST_TYPES, start=1))
        self._insert_sql = (
            f"INSERT INTO {self.messages_table} ({_COLUMNS}) "
            f"SELECT * FROM unnest({types}) ON CONFLICT (channel, id) DO NOTHING"
        )
        # A live claim is kept; an expired one (older than the new claim's own creation) is
        # taken over. RETURNING names the claims this statement won.
        self._dedup_claim_sql = (
            f"INSERT INTO {self.dedup_table} AS d (dedup_id, channel, message_id, expires_ms) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int8[]) "
            "ON CONFLICT (dedup_id) DO UPDATE SET channel = EXCLUDED.channel, "
            "message_id = EXCLUDED.message_id, expires_ms = EXCLUDED.expires_ms "
            f"WHERE d.expires_ms <= EXCLUDED.expires_ms - {DEDUP_WINDOW_MS} "
            "RETURNING dedup_id"
        )
        self._dedup_find_sql = (
            f"SELECT dedup_id, message_id FROM {self.dedup_table} WHERE dedup_id = ANY($1::text[])"
        )
        self._sweep_dedup_sql = (
            f"DELETE FROM {self.dedup_table} WHERE dedup_id IN ("
            f"SELECT dedup_id FROM {self.dedup_table} WHERE expires_ms <= $1 LIMIT $2 "
            "FOR UPDATE SKIP LOCKED)"
        )
        self._get_sql = (
            f"SELECT {_COLUMNS} FROM {self.messages_table} WHERE channel = $1 AND id = $2 "
            "AND (expires_ms IS NULL OR expires_ms > $3)"
        )
        # SKIP LOCKED: nodes sweeping at once split the expired rows instead of queueing on
        # the same ones.
        self._sweep_sql = (
            f"DELETE FROM {self.messages_table} WHERE (channel, id) IN ("
            f"SELECT channel, id FROM {self.messages_table} WHERE expires_ms <= $1 LIMIT $2 "
            "FOR UPDATE SKIP LOCKED)"
        )
        reactions = self.reactions_table
        # An expired row with the same key is replaced: it is already invisible, and the
        # sweeper may not have reached it yet.
        self._add_reaction_sql = (
            f"INSERT INTO {reactions} AS r ({_REACTION_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
            "ON CONFLICT (channel, message_id, uid, reaction) DO UPDATE SET "
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in _REACTION_REPLACED)
            + " WHERE r.expires_ms IS NOT NULL AND r.expires_ms <= $14 RETURNING r.id"
        )
        self._remove_reaction_sql = (
            f"DELETE FROM {reactions} WHERE channel = $1 AND message_id = $2 AND uid = $3 "
            "AND reaction = $4 AND (expires_ms IS NULL OR expires_ms > $5) "
            f"RETURNING {_REACTION_COLUMNS}"
        )
        live = (
            "channel = $1 AND message_id = ANY($2::text[]) "
            "AND (expires_ms IS NULL OR expires_ms > $3)"
        )
        self._reaction_counts_sql = (
            f"SELECT message_id, reaction, count(*) FROM {reactions} WHERE {live} "
            "GROUP BY message_id, reaction ORDER BY message_id, min(id)"
        )
        self._list_reactions_sql = (
            f"SELECT {_REACTION_COLUMNS} FROM {reactions} WHERE {live} ORDER BY message_id, id"
        )
        self._sweep_reactions_sql = (
            f"DELETE FROM {reactions} WHERE (channel, message_id, uid, reaction) IN ("
            f"SELECT channel, message_id, uid, reaction FROM {reactions} WHERE expires_ms <= $1 "
            "LIMIT $2 FOR UPDATE SKIP LOCKED)"
        )
        storage = self.storage_table
        self._lock_storage_sql = (
            f'SELECT {_STORAGE_COLUMNS} FROM {storage} WHERE channel = $1 AND "key" = $2 FOR UPDATE'
        )
        self._get_storage_sql = (
            f'SELECT {_STORAGE_COLUMNS} FROM {storage} WHERE channel = $1 AND "key" = $2 '
            "AND (expires_ms IS NULL OR expires_ms > $3)"
        )
        self._put_storage_sql = (
            f"INSERT INTO {storage} ({_STORAGE_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
            'ON CONFLICT (channel, "key") DO UPDATE SET '
            + ", ".join(f"{c} = EXCLUDED.{c}" for c in _STORAGE_REPLACED)
        )
        self._insert_storage_sql = (
            f"INSERT INTO {storage} ({_STORAGE_COLUMNS}) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
            'ON CONFLICT (channel, "key") DO NOTHING RETURNING true'
        )
        self._delete_storage_sql = f'DELETE FROM {storage} WHERE channel = $1 AND "key" = $2'
        self._sweep_storage_sql = (
            f'DELETE FROM {storage} WHERE (channel, "key") IN ('
            f'SELECT channel, "key" FROM {storage} WHERE expires_ms <= $1 LIMIT $2 '
            f"FOR UPDATE SKIP LOCKED) AND expires_ms <= $1 RETURNING {_STORAGE_COLUMNS}"
        )

        schedules = self.schedules_table
        self._add_schedules_sql = (
            f"INSERT INTO {schedules} ({_SCHEDULE_COLUMNS}, next_ms) "
            "SELECT i, d, k, c, p, t, 0, d FROM unnest("
            "$1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::int8[]"
            ") AS u(i, d, k, c, p, t) ON CONFLICT (id) DO NOTHING"
        )
        self._claim_schedules_sql = (
            f"UPDATE {schedules} SET next_ms = $2, attempts = attempts + 1 WHERE id IN ("
            f"SELECT id FROM {schedules} WHERE next_ms <= $1 ORDER BY next_ms LIMIT $3 "
            f"FOR UPDATE SKIP LOCKED) RETURNING {_SCHEDULE_COLUMNS}"
        )
        self._delete_schedule_sql = (
            f"DELETE FROM {schedules} WHERE id = $1 AND (attempts = 0 OR next_ms <= $2)"
        )

    # Public methods

    @classmethod
    def from_url(cls, url: str) -> PostgresStore:
        """Build a store from ``postgresql://user:pass@host:port/db?…``.

        tidings reads and removes these query parameters before handing the URL to ``asyncpg``:
        ``schema``, ``table_prefix`` (strings), ``pool_min_size``, ``pool_max_size``,
        ``max_writers``, ``max_batch_rows`` (integers), ``connect_timeout``,
        ``command_timeout`` (seconds). Any other parameter goes to ``asyncpg`` unchanged.

        Raises:
            ConfigError: an option is malformed.
        """
        parts = urllib.parse.urlsplit(url)
        kept: list[tuple[str, str]] = []
        options: dict[str, Any] = {}
        converters: dict[str, type] = {
            "schema": str,
            "table_prefix": str,
            "pool_min_size": int,
            "pool_max_size": int,
            "max_writers": int,
            "max_batch_rows": int,
            "connect_timeout": float,
            "command_timeout": float,
        }
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            convert = converters.get(key)
            if convert is None:
                kept.append((key, value))
                continue
            try:
                options[key] = convert(value)
            except ValueError:
                raise ConfigError(
                    f"TIDINGS_STORE option {key}={value!r} must be a {convert.__name__}."
                ) from None
        dsn = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(kept)))
        return cls(dsn, **options)

    async def open(self) -> None:
        """Create the pool, then create or migrate the schema. Idempotent.

        Safe when several nodes call it at once on a fresh database: the migration runs under a
        transaction-scoped advisory lock.

        Raises:
            StoreUnavailable: the server cannot be reached (nothing is left open).
            StoreError: the schema is newer than this code, or the migration failed.
        """
        async with self._open_lock:
            if self._state == "open":
                return
            if self._state != "new":
                raise StoreUnavailable("the PostgreSQL store is closed")
            import asyncpg  # lazily: only deployments that use PostgreSQL need the driver

            pool = None
            try:
                pool = await asyncpg.create_pool(self._dsn, **self._pool_kwargs)
                async with pool.acquire() as conn:
                    await self._migrate(conn)
            except BaseException as exc:
                if pool is not None:
                    pool.terminate()
                if isinstance(exc, Exception):
                    raise map_error(exc, "open") from exc
                raise
            self._pool = pool
            self._state = "open"

    async def append(self, records: Sequence[MessageRecord]) -> list[str]:
        """Persist ``records``; returns after the commit that holds them, with the stored IDs
        (see ``Store.append``).

        An ID already stored on its channel is ignored. If the caller is cancelled while
        waiting, the records may or may not be written; a retry with the same records is safe.

        Raises:
            StoreOutcomeUnknown: the connection died after the write was sent, so the commit
                is in doubt; retry with the same records.
            StoreUnavailable: the store is closed or the server cannot be reached.
            StoreError: any other failure (for example text holding U+0000, which PostgreSQL
                cannot store).
        """
        self._check_open()
        if not records:
            return []
        future: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self._pending.append((records, future))
        if len(self._flushers) < self._max_writers:
            task = asyncio.create_task(self._flush_loop(), name="tidings-postgres-flush")
            self._flushers.add(task)
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
        """See ``Store.list_messages``."""
        self._check_open()
        if limit <= 0:
            return []
        lower, inclusive = lower_bound(min_id, after)
        key = (lower is not None, inclusive, before is not None, reverse)
        sql = self._sql_cache.get(key)
        if sql is None:
            sql = self._sql_cache[key] = self._list_sql(*key)
        params: list[object] = [channel]
        if lower is not None:
            params.append(lower)
        if before is not None:
            params.append(before)
        params += (now_ms, limit)
        try:
            rows = await self._call("fetch", sql, *params)
        except Exception as exc:
            raise map_error(exc, "list_messages") from exc
        return [_decoded(MessageRecord(*row)) for row in rows]

    async def get_message(
        self, channel: str, message_id: str, *, now_ms: int
    ) -> MessageRecord | None:
        """See ``Store.get_message``."""
        self._check_open()
        try:
            row = await self._call("fetchrow", self._get_sql, channel, message_id, now_ms)
        except Exception as exc:
            raise map_error(exc, "get_message") from exc
        return None if row is None else _decoded(MessageRecord(*row))

    async def sweep(self, *, now_ms: int, limit: int = 1000) -> int:
        """Delete at most ``limit`` records with ``expires_ms <= now_ms``; return the count.

        Several nodes may sweep at once: each skips rows another is deleting.
        """
        return await self._sweep("sweep", self._sweep_sql, now_ms, limit)

    async def sweep_dedup(self, *, now_ms: int, limit: int = 1000) -> int:
        """See ``Store.sweep_dedup``; several nodes may sweep at once."""
        return await self._sweep("sweep_dedup", self._sweep_dedup_sql, now_ms, limit)

    async def apply_reactions(
        self, changes: Sequence[ReactionChange], *, now_ms: int
    ) -> list[ReactionRecord | None]:
        """See ``Store.apply_reactions``. One transaction; a ``StoreUnavailable`` can hide a
        commit whose reply was lost (a retried add then reports a no-op).

        Raises:
            StoreUnavailable: the store is closed or the server cannot be reached.
            StoreError: any other failure (for example text holding U+0000).
        """
        self._check_open()
        if not changes:
            return []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                outcomes: list[ReactionRecord | None] = []
                for change in changes:
                    if isinstance(change, ReactionRemoval):
                        row = await conn.fetchrow(
                            self._remove_reaction_sql,
                            change.channel,
                            change.message_id,
                            encode_text(change.uid),
                            change.reaction,
                            now_ms,
                        )
                        outcomes.append(None if row is None else _decoded(ReactionRecord(*row)))
                        continue
                    added = await conn.fetchval(
                        self._add_reaction_sql,
                        change.id,
                        change.channel,
                        change.message_id,
                        change.reaction,
                        encode_text(change.uid),
                        change.umd,
                        change.created_ms,
                        change.expires_ms,
                        change.trigger,
                        change.request_id,
                        change.connection_id,
                        change.source_ip,
                        change.user_agent,
                        now_ms,
                    )
                    outcomes.append(None if added is None else change)
                return outcomes
        except Exception as exc:
            raise map_error(exc, "apply_reactions") from exc

    async def reaction_counts(
        self, channel: str, message_ids: Sequence[str], *, now_ms: int
    ) -> dict[str, list[tuple[str, int]]]:
        """See ``Store.reaction_counts``."""
        self._check_open()
        if not message_ids:
            return {}
        try:
            rows = await self._call(
                "fetch", self._reaction_counts_sql, channel, list(message_ids), now_ms
            )
        except Exception as exc:
            raise map_error(exc, "reaction_counts") from exc
        counts: dict[str, list[tuple[str, int]]] = {}
        for message_id, reaction, count in rows:
            counts.setdefault(message_id, []).append((reaction, count))
        return counts

    async def list_reactions(
        self, channel: str, message_ids: Sequence[str], *, now_ms: int
    ) -> dict[str, list[ReactionRecord]]:
        """See ``Store.list_reactions``."""
        self._check_open()
        if not message_ids:
            return {}
        try:
            rows = await self._call(
                "fetch", self._list_reactions_sql, channel, list(message_ids), now_ms
            )
        except Exception as exc:
            raise map_error(exc, "list_reactions") from exc
        found: dict[str, list[ReactionRecord]] = {}
        for row in rows:
            record = _decoded(ReactionRecord(*row))
            found.setdefault(record.message_id, []).append(record)
        return found

    async def sweep_reactions(self, *, now_ms: int, limit: int = 1000) -> int:
        """Delete at most ``limit`` reactions with ``expires_ms <= now_ms``; return the count."""
        return await self._sweep("sweep_reactions", self._sweep_reactions_sql, now_ms, limit)

    async def add_schedules(self, records: Sequence[ScheduleRecord]) -> None:
        """See ``Store.add_schedules``. One statement."""
        self._check_open()
        if not records:
            return
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
        for r in records:
            for column, value in zip(
                columns, (r.id, r.due_ms, r.kind, r.channel, r.payload, r.created_ms), strict=True
            ):
                column.append(value)
        try:
            await self._call("execute", self._add_schedules_sql, *columns)
        except Exception as exc:
            raise map_error(exc, "add_schedules") from exc

    async def next_schedule_ms(self) -> int | None:
        """See ``Store.next_schedule_ms``."""
        self._check_open()
        try:
            value: int | None = await self._call(
                "fetchval", f"SELECT min(next_ms) FROM {self.schedules_table}"
            )
        except Exception as exc:
            raise map_error(exc, "next_schedule_ms") from exc
        return value

    async def claim_schedules(
        self, *, now_ms: int, limit: int, lease_ms: int
    ) -> list[ScheduleRecord]:
        """See ``Store.claim_schedules``. A claim whose reply is lost holds its rows until the
        lease ends; they run then, never twice."""
        self._check_open()
        if limit <= 0:
            return []
        try:
            rows = await self._call(
                "fetch", self._claim_schedules_sql, now_ms, now_ms + lease_ms, limit
            )
        except Exception as exc:
            raise map_error(exc, "claim_schedules") from exc
        return sorted((ScheduleRecord(*row) for row in rows), key=lambda r: (r.due_ms, r.id))

    async def complete_schedules(self, schedule_ids: Sequence[str]) -> None:
        """See ``Store.complete_schedules``."""
        self._check_open()
        if not schedule_ids:
            return
        try:
            await self._call(
                "execute",
                f"DELETE FROM {self.schedules_table} WHERE id = ANY($1::text[])",
                list(schedule_ids),
            )
        except Exception as exc:
            raise map_error(exc, "complete_schedules") from exc

    async def delete_schedule(self, schedule_id: str, *, now_ms: int) -> bool:
        """See ``Store.delete_schedule``."""
        self._check_open()
        try:
            status: str = await self._call(
                "execute", self._delete_schedule_sql, schedule_id, now_ms
            )
        except Exception as exc:
            raise map_error(exc, "delete_schedule") from exc
        return status != "DELETE 0"

    async def put_revocation(self, revocation: Revocation) -> None:
        """See ``Store.put_revocation``."""
        self._check_open()
        r = revocation
        try:
            await self._call(
                "execute",
                f"INSERT INTO {self.revocations_table} "
                "(kind, value, issued_before_ms, created_ms, expires_ms) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (kind, value) DO UPDATE SET "
                "issued_before_ms = EXCLUDED.issued_before_ms, "
                "created_ms = EXCLUDED.created_ms, expires_ms = EXCLUDED.expires_ms",
                r.kind.value,
                r.value,
                r.issued_before_ms,
                r.created_ms,
                r.expires_ms,
            )
        except Exception as exc:
            raise map_error(exc, "put_revocation") from exc

    async def list_revocations(self, *, now_ms: int) -> list[Revocation]:
        """See ``Store.list_revocations``."""
        self._check_open()
        try:
            rows = await self._call(
                "fetch",
                "SELECT kind, value, issued_before_ms, created_ms, expires_ms "
                f"FROM {self.revocations_table} WHERE expires_ms > $1 ORDER BY kind, value",
                now_ms,
            )
        except Exception as exc:
            raise map_error(exc, "list_revocations") from exc
        return [Revocation(RevocationKind(row[0]), *row[1:]) for row in rows]

    async def delete_revocation(self, kind: RevocationKind, value: str, *, now_ms: int) -> bool:
        """See ``Store.delete_revocation``."""
        self._check_open()
        try:
            expires_ms = await self._call(
                "fetchval",
                f"DELETE FROM {self.revocations_table} WHERE kind = $1 AND value = $2 "
                "RETURNING expires_ms",
                kind.value,
                value,
            )
        except Exception as exc:
            raise map_error(exc, "delete_revocation") from exc
        return expires_ms is not None and expires_ms > now_ms

    async def sweep_revocations(self, *, now_ms: int, limit: int = 1000) -> int:
        """Delete at most ``limit`` revocations with ``expires_ms <= now_ms``; return the count."""
        table = self.revocations_table
        return await self._sweep(
            "sweep_revocations",
            f"DELETE FROM {table} WHERE (kind, value) IN (SELECT kind, value FROM {table} "
            "WHERE expires_ms <= $1 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            now_ms,
            limit,
        )

    async def apply_storage(
        self, changes: Sequence[StorageChange], *, now_ms: int
    ) -> list[StorageOutcome]:
        """See ``Store.apply_storage``. One transaction; a ``StoreUnavailable`` can hide a
        commit whose reply was lost (a retried write then reports an unchanged value).

        Raises:
            StoreUnavailable: the store is closed or the server cannot be reached.
            StoreError: any other failure (for example text holding U+0000).
        """
        self._check_open()
        if not changes:
            return []
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                outcomes: list[StorageOutcome] = []
                for change in changes:
                    outcomes.append(await self._apply_one_storage(conn, change, now_ms))
                return outcomes
        except Exception as exc:
            raise map_error(exc, "apply_storage") from exc

    async def get_storage(self, channel: str, key: str, *, now_ms: int) -> StorageEntry | None:
        """See ``Store.get_storage``."""
        self._check_open()
        try:
            row = await self._call("fetchrow", self._get_storage_sql, channel, key, now_ms)
        except Exception as exc:
            raise map_error(exc, "get_storage") from exc
        return None if row is None else _decoded(StorageEntry(*row))

    async def list_storage(
        self,
        channel: str,
        *,
        now_ms: int,
        keys: Sequence[str] | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[StorageEntry]:
        """See ``Store.list_storage``."""
        self._check_open()
        if limit <= 0 or (keys is not None and not keys):
            return []
        where = ["channel = $1", "(expires_ms IS NULL OR expires_ms > $2)"]
        params: list[object] = [channel, now_ms]
        if after is not None:
            params.append(after)
            where.append(f'"key" > ${len(params)}')
        if keys is not None:
            params.append(list(keys))
            where.append(f'"key" = ANY(${len(params)}::text[])')
        params.append(limit)
        sql = (
            f"SELECT {_STORAGE_COLUMNS} FROM {self.storage_table} WHERE {' AND '.join(where)} "
            f'ORDER BY "key" LIMIT ${len(params)}'
        )
        try:
            rows = await self._call("fetch", sql, *params)
        except Exception as exc:
            raise map_error(exc, "list_storage") from exc
        return [_decoded(StorageEntry(*row)) for row in rows]

    async def sweep_storage(self, *, now_ms: int, limit: int = 1000) -> list[StorageEntry]:
        """Delete at most ``limit`` expired entries and return them. Several nodes may sweep
        at once: each skips rows another is deleting, so each entry is returned once."""
        self._check_open()
        if limit <= 0:
            return []
        try:
            # not _call: a retry after a lost reply would lose the rows the first try deleted
            rows = await self._pool.fetch(self._sweep_storage_sql, now_ms, limit)
        except Exception as exc:
            raise map_error(exc, "sweep_storage") from exc
        return [_decoded(StorageEntry(*row)) for row in rows]

    async def aclose(self) -> None:
        """Wait for pending appends and running queries, then close the pool. Idempotent."""
        async with self._open_lock:
            if self._state in ("new", "closed"):
                self._state = "closed"
                return
            self._state = "closing"
            while self._flushers:
                await asyncio.gather(*self._flushers, return_exceptions=True)
            try:
                await self._pool.close()  # waits for connections still running reads
            finally:
                self._pool = None
                self._state = "closed"

    # Private methods

    def _check_open(self) -> None:
        if self._state != "open":
            raise StoreUnavailable(
                "the PostgreSQL store is not open"
                if self._state == "new"
                else "the PostgreSQL store is closed"
            )

    async def _sweep(self, action: str, sql: str, now_ms: int, limit: int) -> int:
        """Run a ``DELETE`` of at most ``limit`` rows expired by ``now_ms``; return the count."""
        self._check_open()
        if limit <= 0:
            return 0
        try:
            status: str = await self._call("execute", sql, now_ms, limit)
        except Exception as exc:
            raise map_error(exc, action) from exc
        return int(status.rsplit(" ", 1)[-1])  # "DELETE <count>"

    async def _call(self, method: str, sql: str, *args: Any) -> Any:
        """Run one statement on a pooled connection, retrying once on a fresh connection when
        the pooled one turns out to be dead (server restart, failover, idle kill). Every
        statement here is safe to repeat: inserts ignore duplicates, the rest only read or
        delete expired rows."""
        import asyncpg

        try:
            return await getattr(self._pool, method)(sql, *args)
        except (
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.AdminShutdownError,
            asyncpg.InternalClientError,
        ) as exc:
            logger.info("! PostgreSQL connection lost (%s); retrying once", type(exc).__name__)
        return await getattr(self._pool, method)(sql, *args)

    async def _apply_one_storage(
        self, conn: Any, change: StorageChange, now_ms: int
    ) -> StorageOutcome:
        """Decide and write one change in ``conn``'s transaction. An absent row cannot be
        locked, so a first write inserts only if the row is still absent, and otherwise
        decides again against the row that won."""
        while True:
            found = await conn.fetchrow(self._lock_storage_sql, change.channel, change.key)
            stored = None if found is None else _decoded(StorageEntry(*found))
            outcome, row = decide_storage(change, stored, now_ms)
            if row is None:
                if stored is not None:
                    await conn.execute(self._delete_storage_sql, change.channel, change.key)
                return outcome
            if row == stored:
                return outcome
            params = (
                row.channel,
                row.key,
                row.data,
                encode_text(row.uid),
                row.umd,
                row.updated_ms,
                row.expires_ms,
                row.emit_event,
                row.trigger,
                row.connection_id,
                row.source_ip,
                row.user_agent,
            )
            if stored is not None:
                await conn.execute(self._put_storage_sql, *params)
                return outcome
            if await conn.fetchval(self._insert_storage_sql, *params) is not None:
                return outcome

    async def _migrate(self, conn: Any) -> None:
        async with conn.transaction():
            await begin_migration(conn, self._schema)
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {self._version_table} ("
                "singleton bool PRIMARY KEY DEFAULT true CHECK (singleton), "
                "version int NOT NULL)"
            )
            version = await conn.fetchval(f"SELECT version FROM {self._version_table}") or 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"PostgreSQL table {self._version_table} says schema version {version}, newer "
                    f"than this tidings understands ({SCHEMA_VERSION}); upgrade tidings."
                )
            migrations = _migrations(
                self.messages_table,
                self._prefix,
                self.reactions_table,
                self.schedules_table,
                self.revocations_table,
                self.storage_table,
                self.dedup_table,
            )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in migrations[target]:
                    await conn.execute(statement)
            if version < SCHEMA_VERSION:
                await conn.execute(
                    f"INSERT INTO {self._version_table} (version) VALUES ($1) "
                    "ON CONFLICT (singleton) DO UPDATE SET version = EXCLUDED.version",
                    SCHEMA_VERSION,
                )

    async def _flush_loop(self) -> None:
        """One flusher: commit pending appends, batch after batch, until none is left."""
        try:
            await self._flush_pending()
        finally:
            # Leave the set in the same step that saw _pending empty: a done-callback would run
            # one loop iteration later, and an append() in between would count this flusher as
            # running, queue its records, and wait forever.
            task = asyncio.current_task()
            assert task is not None
            self._flushers.discard(task)

    async def _flush_pending(self) -> None:
        while self._pending:
            taken = 0
            rows = 0
            for records, _ in self._pending:
                taken += 1
                rows += len(records)
                if rows >= self._max_batch_rows:
                    break
            batch, self._pending = self._pending[:taken], self._pending[taken:]
            try:
                outcomes = await self._write([records for records, _ in batch])
            except BaseException as exc:
                # Cancellation (loop shutdown) or a bug: refuse this batch, loudly.
                failure = StoreUnavailable("the PostgreSQL writer stopped")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
                logger.exception("! PostgreSQL flush failed; its appends were refused")
                continue
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                if future.done():
                    continue  # the caller was cancelled; its records may be written anyway
                if isinstance(outcome, StoreError):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)

    async def _write(self, calls: list[Sequence[MessageRecord]]) -> list[list[str] | StoreError]:
        """Insert all ``calls`` in one transaction; on a data error, retry them one by one so
        that one bad call does not fail its batch neighbours."""
        try:
            stored = await self._insert([record for records in calls for record in records])
        except Exception as exc:
            error = map_error(exc, "append")
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
                outcomes.append(await self._insert(records))
            except Exception as exc:
                outcomes.append(map_error(exc, "append"))
        return outcomes

    async def _insert(self, records: Sequence[MessageRecord]) -> list[str]:
        """One attempt, and one more on a fresh connection when the first connection died;
        every write here is safe to repeat. A death after the write was sent, not cured by
        the second attempt, raises ``StoreOutcomeUnknown``."""
        import asyncpg

        lost = (
            asyncpg.ConnectionDoesNotExistError,
            asyncpg.AdminShutdownError,
            asyncpg.InternalClientError,
            OSError,
            TimeoutError,  # command_timeout: the statement was sent
        )
        in_doubt = False
        for attempt in (1, 2):
            try:
                conn = await self._pool.acquire()
            except Exception as exc:
                if in_doubt:
                    raise StoreOutcomeUnknown(
                        f"PostgreSQL append in doubt: {type(exc).__name__}: {exc}"
                    ) from exc
                raise
            try:
                return await self._insert_on(conn, records)
            except lost as exc:
                if attempt == 2:
                    raise StoreOutcomeUnknown(
                        f"PostgreSQL append in doubt: {type(exc).__name__}: {exc}"
                    ) from exc
                logger.info("! PostgreSQL connection lost (%s); retrying once", type(exc).__name__)
                in_doubt = True
            finally:
                await self._pool.release(conn)
        raise AssertionError("unreachable")

    async def _insert_on(self, conn: Any, records: Sequence[MessageRecord]) -> list[str]:
        stored = [r.id for r in records]
        claims: dict[str, MessageRecord] = {}  # dedup_id -> the call's first record with it
        for r in records:
            if r.dedup_id is not None:
                claims.setdefault(r.dedup_id, r)
        if not claims:
            await conn.execute(self._insert_sql, *self._columns(records))
            return stored
        async with conn.transaction():
            won = {
                row[0]
                for row in await conn.fetch(
                    self._dedup_claim_sql,
                    list(claims),
                    [r.channel for r in claims.values()],
                    [r.id for r in claims.values()],
                    [r.created_ms + DEDUP_WINDOW_MS for r in claims.values()],
                )
            }
            taken = [d for d in claims if d not in won]
            known = dict(await conn.fetch(self._dedup_find_sql, taken)) if taken else {}
            for index, r in enumerate(records):
                if r.dedup_id is None:
                    continue
                if r.dedup_id in won:
                    # a later record of this call with the same dedup_id is a duplicate
                    stored[index] = claims[r.dedup_id].id
                else:
                    stored[index] = known[r.dedup_id]
            kept = [r for r, id_ in zip(records, stored, strict=True) if id_ == r.id]
            if kept:
                await conn.execute(self._insert_sql, *self._columns(kept))
        return stored

    def _columns(self, records: Sequence[MessageRecord]) -> tuple[list[Any], ...]:
        columns: tuple[list[Any], ...] = tuple([] for _ in _UNNEST_TYPES)
        (ids, channels, events, datas, uids, umds, created, expires, triggers, conns, ips, uas) = (
            columns
        )
        for r in records:
            ids.append(r.id)
            channels.append(r.channel)
            events.append(r.event)
            datas.append(r.data)
            uids.append(encode_text(r.uid))
            umds.append(r.umd)
            created.append(r.created_ms)
            expires.append(r.expires_ms)
            triggers.append(r.trigger)
            conns.append(r.connection_id)
            ips.append(r.source_ip)
            uas.append(r.user_agent)
        return columns

    def _list_sql(self, has_lower: bool, inclusive: bool, has_before: bool, reverse: bool) -> str:
        where = ["channel = $1"]
        n = 1
        if has_lower:
            n += 1
            where.append(f"id >= ${n}" if inclusive else f"id > ${n}")
        if has_before:
            n += 1
            where.append(f"id < ${n}")
        where.append(f"(expires_ms IS NULL OR expires_ms > ${n + 1})")
        order = "DESC" if reverse else "ASC"
        return (
            f"SELECT {_COLUMNS} FROM {self.messages_table} WHERE {' AND '.join(where)} "
            f"ORDER BY id {order} LIMIT ${n + 2}"
        )


_: type[Store] = PostgresStore
