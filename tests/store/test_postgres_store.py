"""``PostgresStore`` against the store contract on a real PostgreSQL, plus concurrent schema
migration, outage mapping and URL parsing.

Integration tests need ``TIDINGS_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); they are skipped when it is unreachable, unless
``TIDINGS_REQUIRE_SERVICES=1``, which turns that into a failure. Each test works in its own
schema, dropped afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from tests.services import POSTGRES_URL, drop_store_tables, postgres_schema

from tidings.errors import ConfigError, StoreError, StoreUnavailable
from tidings.store import open_store
from tidings.store.base import StorageOutcome
from tidings.store.postgres import PostgresStore
from tidings.testing.store_contract import (
    T0,
    StoreContract,
    StoreFactory,
    make_entry,
    make_reaction,
    make_record,
    make_schedule,
)


@pytest_asyncio.fixture
async def schema() -> AsyncIterator[str]:
    """A unique schema name for this test (created by the store), dropped afterwards."""
    async with postgres_schema() as name:
        yield name


@pytest.mark.integration
class TestPostgresStore(StoreContract):
    persistent = True

    @pytest.fixture
    def make_store(self, schema: str) -> StoreFactory:
        return lambda: PostgresStore(POSTGRES_URL, schema=schema, pool_max_size=5)


@pytest_asyncio.fixture
async def prefix(schema: str) -> AsyncIterator[str]:
    """A unique table prefix in the default schema; its tables are dropped afterwards."""
    prefix = f"{schema}_"
    yield prefix
    await drop_store_tables(prefix)


@pytest.mark.integration
class TestPostgresStoreOneWriter(StoreContract):
    """The contract with one flusher, tiny batches and a table prefix in the default schema."""

    persistent = True

    @pytest.fixture
    def make_store(self, prefix: str) -> StoreFactory:
        return lambda: PostgresStore(
            POSTGRES_URL, table_prefix=prefix, max_writers=1, max_batch_rows=7, pool_max_size=2
        )


# Schema migration


@pytest.mark.integration
async def test_postgres_store_concurrent_open_on_fresh_schema(schema: str) -> None:
    """Several nodes opening at once on an empty database all succeed and share one schema."""
    stores = [PostgresStore(POSTGRES_URL, schema=schema, pool_min_size=1) for _ in range(6)]
    try:
        await asyncio.gather(*(store.open() for store in stores))
        record = make_record()
        await stores[0].append([record])
        for store in stores:
            assert await store.list_messages("room.1", now_ms=T0) == [record]
    finally:
        await asyncio.gather(*(store.aclose() for store in stores))


@pytest.mark.integration
async def test_postgres_store_refuses_newer_schema(schema: str) -> None:
    """A schema written by a newer tidings is refused instead of being misread."""
    store = PostgresStore(POSTGRES_URL, schema=schema)
    await store.open()
    await store.aclose()
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'UPDATE "{schema}"."tidings_schema_version" SET version = 99')
    finally:
        await conn.close()
    newer = PostgresStore(POSTGRES_URL, schema=schema)
    with pytest.raises(StoreError, match="newer"):
        await newer.open()
    await newer.aclose()


@pytest.mark.integration
async def test_postgres_store_schedule_queries_can_use_the_next_index(schema: str) -> None:
    """The wake-up lookup and the claim's row selection can be answered from the ``next_ms``
    index, so pending schedules need not be scanned."""
    store = PostgresStore(POSTGRES_URL, schema=schema)
    await store.open()
    await store.aclose()
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute("SET enable_seqscan = off")
        table = store.schedules_table
        plans = []
        for sql in (
            f"SELECT min(next_ms) FROM {table}",
            f"SELECT id FROM {table} WHERE next_ms <= 1 ORDER BY next_ms LIMIT 5 "
            "FOR UPDATE SKIP LOCKED",
        ):
            rows = await conn.fetch(f"EXPLAIN {sql}")
            plans.append(" ".join(row[0] for row in rows))
    finally:
        await conn.close()
    assert all("schedules_next_idx" in plan for plan in plans), plans
    assert not any("Sort" in plan for plan in plans), plans


@pytest.mark.integration
async def test_postgres_store_upgrades_a_version_1_schema(schema: str) -> None:
    """A schema made before reactions existed keeps its messages and gains reactions,
    schedules, revocations and channel storage."""
    from tidings.store.postgres import _migrations

    store = PostgresStore(POSTGRES_URL, schema=schema)
    message = make_record()
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        tables = (
            store.messages_table,
            "tidings_",
            store.reactions_table,
            store.schedules_table,
            store.revocations_table,
            store.storage_table,
            store.dedup_table,
        )
        for statement in _migrations(*tables)[1]:
            await conn.execute(statement)
        await conn.execute(
            f'CREATE TABLE "{schema}"."tidings_schema_version" (singleton bool PRIMARY KEY '
            "DEFAULT true CHECK (singleton), version int NOT NULL)"
        )
        await conn.execute(f'INSERT INTO "{schema}"."tidings_schema_version" VALUES (true, 1)')
        await conn.execute(
            f"INSERT INTO {store.messages_table} VALUES ($1, 'room.1', 'chat', '\"hi\"', NULL, "
            "'null', $2, NULL, 'server.http', NULL, NULL, NULL)",
            message.id,
            T0,
        )
    finally:
        await conn.close()
    await store.open()
    try:
        assert await store.list_messages("room.1", now_ms=T0) == [message]
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


@pytest.mark.integration
async def test_postgres_store_keeps_nul_escapes_and_key_order(schema: str) -> None:
    """JSON text is stored as text: the ``\\u0000`` escape and key order come back as sent."""
    store = PostgresStore(POSTGRES_URL, schema=schema)
    await store.open()
    try:
        record = make_record(data='{"z":"a\\u0000b","a":1}')
        await store.append([record])
        assert await store.get_message("room.1", record.id, now_ms=T0) == record
    finally:
        await store.aclose()


# Failures


async def test_postgres_store_unreachable_server_is_unavailable() -> None:
    """A server that refuses connections makes ``open()`` raise ``StoreUnavailable``."""
    store = PostgresStore("postgresql://postgres@127.0.0.1:1/test", connect_timeout=2)
    with pytest.raises(StoreUnavailable):
        await store.open()
    await store.aclose()


@pytest.mark.integration
async def test_postgres_store_recovers_after_connections_are_killed(schema: str) -> None:
    """Killed server connections give ``StoreUnavailable`` at worst, then the pool recovers."""
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}application_name={schema}"  # tags our sessions
    store = PostgresStore(url, schema=schema, pool_min_size=2, pool_max_size=2)
    await store.open()
    import asyncpg

    admin = await asyncpg.connect(POSTGRES_URL)
    try:
        await store.append([make_record(ms=T0)])
        killed = await admin.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = $1",
            schema,
        )
        assert killed >= 1
        for attempt in range(5):
            try:
                await store.append([make_record(ms=T0 + 1)])
                break
            except StoreUnavailable:
                assert attempt < 4
        page = await store.list_messages("room.1", now_ms=T0)
        assert len(page) == 2
    finally:
        await admin.close()
        await store.aclose()


@pytest.mark.integration
async def test_postgres_store_unencodable_text_fails_only_its_call(schema: str) -> None:
    """Text no encoding can carry (a lone surrogate) fails its own call with ``StoreError``
    and not the calls committed alongside it."""
    store = PostgresStore(POSTGRES_URL, schema=schema, max_writers=1)
    await store.open()
    try:
        good = [make_record(ms=T0 + i) for i in range(10)]
        outcomes = await asyncio.gather(
            *(store.append([r]) for r in good[:5]),
            store.append([make_record(ms=T0 + 50, uid="lone \ud800 surrogate")]),
            *(store.append([r]) for r in good[5:]),
            return_exceptions=True,
        )
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        assert len(errors) == 1 and type(errors[0]) is StoreError
        assert await store.list_messages("room.1", now_ms=T0) == good
    finally:
        await store.aclose()


# URLs and options


def test_postgres_store_from_url_strips_tidings_options() -> None:
    """tidings options leave the DSN; driver options stay in it."""
    store = PostgresStore.from_url(
        "postgresql://u:p@db:5433/app?schema=chat&table_prefix=t_&pool_max_size=3&sslmode=disable"
    )
    assert store._dsn == "postgresql://u:p@db:5433/app?sslmode=disable"
    assert store.messages_table == '"chat"."t_messages"'
    assert store._pool_kwargs["max_size"] == 3


def test_postgres_store_default_table_names() -> None:
    """Without options, tables are ``tidings_*`` in the search path."""
    store = open_store("postgres://localhost/app")
    assert isinstance(store, PostgresStore)
    assert store.messages_table == '"tidings_messages"'


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://h/db?schema=Bad-Name",
        "postgresql://h/db?table_prefix=x;drop",
        "postgresql://h/db?pool_max_size=lots",
        "postgresql://h/db?pool_min_size=5&pool_max_size=2",
    ],
)
def test_postgres_store_from_url_rejects_bad_options(url: str) -> None:
    """Identifiers spliced into SQL and pool sizes are checked up front."""
    with pytest.raises(ConfigError):
        PostgresStore.from_url(url)


@pytest.mark.integration
async def test_postgres_store_version_7_keeps_uids_that_begin_with_the_marker(
    schema: str,
) -> None:
    """A uid beginning with U+0001, stored before version 7, reads back unchanged after the
    migration that re-encodes such uids."""
    store = PostgresStore(POSTGRES_URL, schema=schema)
    await store.open()
    record = make_record(uid="\x01legacy")
    reaction = make_reaction(record, uid="\x01legacy")
    await store.aclose()
    import asyncpg

    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        await conn.execute(
            f"INSERT INTO {store.messages_table} VALUES ($1, 'room.1', 'chat', '\"hi\"', $2, "
            "'null', $3, NULL, 'server.http', NULL, NULL, NULL)",
            record.id,
            record.uid,
            T0,
        )
        await conn.execute(
            f"INSERT INTO {store.reactions_table} (channel, message_id, uid, reaction, id, umd, "
            "created_ms, \"trigger\") VALUES ('room.1', $1, $2, $3, $4, 'null', $5, $6)",
            record.id,
            reaction.uid,
            reaction.reaction,
            reaction.id,
            reaction.created_ms,
            reaction.trigger,
        )
        await conn.execute(f'UPDATE "{schema}"."tidings_schema_version" SET version = 6')
    finally:
        await conn.close()
    store = PostgresStore(POSTGRES_URL, schema=schema)
    await store.open()
    try:
        assert await store.list_messages("room.1", now_ms=T0) == [record]
        assert await store.list_reactions("room.1", [record.id], now_ms=T0) == {
            record.id: [reaction]
        }
    finally:
        await store.aclose()
