"""The webhook outbox: one contract for every backend (memory, SQLite, PostgreSQL), plus
durability, sharing the store's SQLite file, concurrent claimers and URL mapping.

PostgreSQL tests need ``TIDINGS_TEST_POSTGRES_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); they are skipped when it is unreachable, unless
``TIDINGS_REQUIRE_SERVICES=1``, which turns that into a failure. Each works in its own schema,
dropped afterwards.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio
from tests.services import POSTGRES_URL, postgres_schema
from ulid import ULID

from tidings.errors import ConfigError, StoreUnavailable
from tidings.events import (
    MemoryOutbox,
    Outbox,
    PendingDelivery,
    PostgresOutbox,
    SqliteOutbox,
    open_outbox,
)
from tidings.store.sqlite import SqliteStore
from tidings.testing.store_contract import make_record

T0 = 1_700_000_000_000  # a fixed "now" in Unix milliseconds
LEASE = 60_000
URL_A = "http://a.example/hook"
URL_B = "http://b.example/hook"

OutboxFactory = Callable[[], Outbox]


def make_delivery(
    sequence: int, *, url: str = URL_A, ms: int = T0, attempts: int = 0
) -> PendingDelivery:
    """A delivery whose ID sorts by ``sequence`` and that is due at ``ms``."""
    return PendingDelivery(
        id=str(ULID.from_int((ms << 80) | sequence)),
        url=url,
        event_type="hotsock.connected",
        body=b'{"n":%d}' % sequence,
        attempts=attempts,
        next_attempt_ms=ms,
    )


# PostgreSQL


@pytest_asyncio.fixture
async def pg_schema() -> AsyncIterator[str]:
    """A unique schema name (created by the outbox), dropped afterwards."""
    async with postgres_schema("outbox_") as name:
        yield name


# The contract, for every backend


@pytest.fixture(
    params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.integration)]
)
def make_outbox(request: pytest.FixtureRequest, tmp_path: Path) -> OutboxFactory:
    """Factory of unopened outboxes; for persistent backends all share the same data."""
    if request.param == "memory":
        shared = MemoryOutbox(lease_ms=LEASE)
        return lambda: shared
    if request.param == "sqlite":
        return lambda: SqliteOutbox(tmp_path / "tidings.db", lease_ms=LEASE)
    schema = request.getfixturevalue("pg_schema")
    return lambda: PostgresOutbox(POSTGRES_URL, schema=schema, lease_ms=LEASE)


@pytest_asyncio.fixture
async def outbox(make_outbox: OutboxFactory) -> AsyncIterator[Outbox]:
    box = make_outbox()
    await box.open()
    yield box
    await box.aclose()


async def test_outbox_due_claims_oldest_first_up_to_limit(outbox: Outbox) -> None:
    """``due`` returns due deliveries by due time, at most ``limit``, with their content."""
    deliveries = [make_delivery(n, ms=T0 + n) for n in range(5)]
    await outbox.add(list(reversed(deliveries)))
    claimed = await outbox.due(T0 + 10, 3)
    assert [d.id for d in claimed] == [d.id for d in deliveries[:3]]
    first = claimed[0]
    assert (first.url, first.event_type, first.body, first.attempts) == (
        URL_A,
        "hotsock.connected",
        b'{"n":0}',
        0,
    )
    assert first.next_attempt_ms == T0 + 10 + LEASE  # the lease end
    assert await outbox.due(T0 + 10, 0) == []


async def test_outbox_due_skips_deliveries_not_yet_due(outbox: Outbox) -> None:
    """A delivery scheduled later is not handed out before its time."""
    await outbox.add([make_delivery(0, ms=T0 + 1000)])
    assert await outbox.due(T0 + 999, 10) == []
    assert len(await outbox.due(T0 + 1000, 10)) == 1


async def test_outbox_due_never_hands_out_a_leased_delivery_twice(outbox: Outbox) -> None:
    """While its lease runs, a claimed delivery is invisible to other claims."""
    await outbox.add([make_delivery(0)])
    assert len(await outbox.due(T0, 10)) == 1
    assert await outbox.due(T0, 10) == []
    assert await outbox.due(T0 + LEASE - 1, 10) == []


async def test_outbox_due_returns_delivery_again_after_lease_expiry(outbox: Outbox) -> None:
    """An unsettled claim (its sender died) becomes due again when the lease ends."""
    delivery = make_delivery(0)
    await outbox.add([delivery])
    await outbox.due(T0, 10)
    again = await outbox.due(T0 + LEASE, 10)
    assert [d.id for d in again] == [delivery.id]
    assert again[0].attempts == 0
    assert again[0].body == delivery.body


async def test_outbox_due_filters_by_url(outbox: Outbox) -> None:
    """``url=`` claims only that endpoint's deliveries."""
    await outbox.add([make_delivery(0, url=URL_A), make_delivery(1, url=URL_B)])
    claimed = await outbox.due(T0, 10, url=URL_B)
    assert [d.url for d in claimed] == [URL_B]
    assert [d.url for d in await outbox.due(T0, 10)] == [URL_A]


async def test_outbox_done_forgets_deliveries(outbox: Outbox) -> None:
    """``done`` removes delivered deliveries for good; unknown IDs are ignored."""
    deliveries = [make_delivery(n) for n in range(3)]
    await outbox.add(deliveries)
    claimed = await outbox.due(T0, 10)
    await outbox.done([claimed[0].id, claimed[1].id, "01ARZ3NDEKTSV4RRFFQ69G5FAV"])
    assert await outbox.count() == 1
    assert [d.id for d in await outbox.due(T0 + LEASE, 10)] == [deliveries[2].id]
    await outbox.done([])


async def test_outbox_retry_reschedules_with_attempts(outbox: Outbox) -> None:
    """``retry`` makes a claimed delivery due at the given time with the new attempt count."""
    delivery = make_delivery(0)
    await outbox.add([delivery])
    await outbox.due(T0, 10)
    await outbox.retry(delivery.id, T0 + 5000, 1)
    assert await outbox.due(T0 + 4999, 10) == []
    (again,) = await outbox.due(T0 + 5000, 10)
    assert (again.id, again.attempts) == (delivery.id, 1)
    await outbox.retry("01ARZ3NDEKTSV4RRFFQ69G5FAV", T0, 1)  # unknown: ignored


async def test_outbox_retry_releases_a_lease_early(outbox: Outbox) -> None:
    """``retry`` with the current time and the same attempts hands the delivery out at once."""
    delivery = make_delivery(0)
    await outbox.add([delivery])
    await outbox.due(T0, 10)
    await outbox.retry(delivery.id, T0 + 1, 0)
    assert [d.id for d in await outbox.due(T0 + 1, 10)] == [delivery.id]


async def test_outbox_drop_forgets_a_delivery(outbox: Outbox) -> None:
    """``drop`` removes a delivery that will never be sent."""
    delivery = make_delivery(0)
    await outbox.add([delivery])
    await outbox.due(T0, 10)
    await outbox.drop(delivery.id)
    assert await outbox.count() == 0
    assert await outbox.due(T0 + LEASE, 10) == []


async def test_outbox_add_ignores_known_ids(outbox: Outbox) -> None:
    """Adding the same delivery twice (a retried write) stores it once, unchanged."""
    delivery = make_delivery(0)
    await outbox.add([delivery])
    await outbox.due(T0, 10)
    await outbox.add([delivery, make_delivery(1)])
    assert await outbox.count() == 2
    assert [d.id for d in await outbox.due(T0, 10)] == [make_delivery(1).id]  # still leased


async def test_outbox_add_keeps_binary_bodies_exact(outbox: Outbox) -> None:
    """Bodies round-trip byte for byte (they are signed as stored)."""
    body = '{"reaction":"👍","nul":"\\u0000"}'.encode() + bytes(range(256))
    delivery = PendingDelivery("01ARZ3NDEKTSV4RRFFQ69G5FAV", URL_A, "x", body, 0, T0)
    await outbox.add([delivery])
    (claimed,) = await outbox.due(T0, 1)
    assert claimed.body == body


async def test_outbox_keeps_deliveries_across_reopen(make_outbox: OutboxFactory) -> None:
    """A persistent outbox closed with pending deliveries hands them out after reopening."""
    first = make_outbox()
    await first.open()
    await first.add([make_delivery(0), make_delivery(1)])
    await first.due(T0, 1)  # one leased when the "process" ends
    await first.aclose()
    await first.aclose()  # idempotent
    second = make_outbox()
    await second.open()
    try:
        assert await second.count() == 2
        assert [d.id for d in await second.due(T0, 10)] == [make_delivery(1).id]
        # Both leases (the dead "process"'s and ours) end at the same instant.
        assert len(await second.due(T0 + LEASE, 10)) == 2
    finally:
        await second.aclose()


async def test_outbox_concurrent_claims_are_disjoint(make_outbox: OutboxFactory) -> None:
    """Claimers racing on the same outbox (tasks, or nodes on a shared database) never get the
    same delivery."""
    boxes = [make_outbox() for _ in range(3)]
    for box in boxes:
        await box.open()
    try:
        await boxes[0].add([make_delivery(n) for n in range(300)])
        batches = await asyncio.gather(*(boxes[n % 3].due(T0, 7) for n in range(60)))
        ids = [d.id for batch in batches for d in batch]
        assert len(ids) == len(set(ids)) == 300
    finally:
        for box in boxes:
            await box.aclose()


# SQLite specifics


async def test_sqlite_outbox_shares_the_message_store_file(tmp_path: Path) -> None:
    """The outbox and the message store work side by side in one SQLite file."""
    url = f"sqlite:///{tmp_path}/shared.db"
    store = SqliteStore.from_url(url)
    await store.open()
    outbox = open_outbox(url)
    assert isinstance(outbox, SqliteOutbox)
    assert Path(outbox.path) == Path(store.path)
    await outbox.open()
    try:
        record = make_record()
        await asyncio.gather(store.append([record]), outbox.add([make_delivery(0)]))
        assert await store.get_message(record.channel, record.id, now_ms=T0) == record
        assert await outbox.count() == 1
    finally:
        await outbox.aclose()
        await store.aclose()
    # The store reopens the file with the outbox table in it.
    again = SqliteStore.from_url(url)
    await again.open()
    await again.aclose()


async def test_sqlite_outbox_calls_before_open_raise_unavailable(tmp_path: Path) -> None:
    """Using an outbox that is not open is a clear ``StoreUnavailable``."""
    outbox = SqliteOutbox(tmp_path / "x.db")
    with pytest.raises(StoreUnavailable):
        await outbox.add([make_delivery(0)])
    await outbox.aclose()


async def test_sqlite_outbox_open_unwritable_path_raises_unavailable(tmp_path: Path) -> None:
    """A file that cannot be created stops start-up with ``StoreUnavailable``."""
    outbox = SqliteOutbox(tmp_path / "missing-dir" / "x.db")
    with pytest.raises(StoreUnavailable):
        await outbox.open()
    await outbox.aclose()


# URL mapping


def test_open_outbox_maps_urls_like_open_store(tmp_path: Path) -> None:
    """``memory://``, ``sqlite:///…`` and ``postgresql://…`` choose the matching backend."""
    assert isinstance(open_outbox("memory://"), MemoryOutbox)
    sqlite = open_outbox(f"sqlite:///{tmp_path}/a%20b.db?readers=2")
    assert isinstance(sqlite, SqliteOutbox)
    assert sqlite.path == SqliteStore.from_url(f"sqlite:///{tmp_path}/a%20b.db").path
    pg = open_outbox("postgresql://u@h/db?schema=s1&table_prefix=t_&pool_max_size=3&sslmode=off")
    assert isinstance(pg, PostgresOutbox)
    assert pg.table == '"s1"."t_webhook_outbox"'
    assert isinstance(open_outbox("postgres://u@h/db"), PostgresOutbox)
    with pytest.raises(ConfigError, match="not supported"):
        open_outbox("redis://localhost")
    with pytest.raises(ConfigError, match="schema"):
        open_outbox("postgresql://u@h/db?schema=Bad-Name")
    with pytest.raises(ConfigError, match="lease"):
        MemoryOutbox(lease_ms=0)
