"""The contract every ``Store`` backend must pass, shipped for third-party backends too.

Use it from a pytest module (pytest-asyncio required, any ``asyncio_mode``)::

    import pytest
    from tidings.testing.store_contract import StoreContract, StoreFactory

    class TestMyStore(StoreContract):
        persistent = True  # data survives aclose() + a new instance on the same backing data

        @pytest.fixture
        def make_store(self, tmp_path) -> StoreFactory:
            return lambda: MyStore(tmp_path / "data")

``make_store`` must return a new, **unopened** store each time it is called; for a persistent
backend, every store it returns must see the same data (same file, database, schema…). The suite
opens and closes stores itself. Every test passes explicit ``now_ms`` values, so no clock is
patched; record IDs are ULIDs built from those instants.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import ClassVar

import pytest
import pytest_asyncio
from ulid import ULID

from tidings.errors import StoreError
from tidings.store.base import (
    DEDUP_WINDOW_MS,
    MessageRecord,
    ReactionRecord,
    ReactionRemoval,
    Revocation,
    RevocationKind,
    ScheduleRecord,
    StorageEntry,
    StorageOutcome,
    StorageRemoval,
    Store,
)

__all__ = [
    "T0",
    "StoreContract",
    "StoreFactory",
    "make_entry",
    "make_reaction",
    "make_record",
    "make_schedule",
    "ulid_at",
]

StoreFactory = Callable[[], Store]

T0 = 1_700_000_000_000  # a fixed "now" in Unix milliseconds (2023-11-14)


def ulid_at(ms: int, sequence: int = 0) -> str:
    """A ULID of millisecond ``ms`` with random part ``sequence``; sorts by (ms, sequence)."""
    return str(ULID.from_int((ms << 80) | sequence))


def make_record(
    channel: str = "room.1",
    *,
    ms: int = T0,
    sequence: int = 0,
    message_id: str | None = None,
    event: str = "chat",
    data: str = '"hi"',
    uid: str | None = None,
    umd: str = "null",
    expires_ms: int | None = None,
    trigger: str = "server.http",
    connection_id: str | None = None,
    source_ip: str | None = None,
    user_agent: str | None = None,
    dedup_id: str | None = None,
) -> MessageRecord:
    """A record published at ``ms``, with ID ``ulid_at(ms, sequence)`` unless ``message_id``."""
    return MessageRecord(
        id=message_id if message_id is not None else ulid_at(ms, sequence),
        channel=channel,
        event=event,
        data=data,
        uid=uid,
        umd=umd,
        created_ms=ms,
        expires_ms=expires_ms,
        trigger=trigger,
        connection_id=connection_id,
        source_ip=source_ip,
        user_agent=user_agent,
        dedup_id=dedup_id,
    )


def make_reaction(
    message: MessageRecord,
    reaction: str = "👍",
    uid: str = "Jim",
    *,
    ms: int | None = None,
    sequence: int = 0,
    umd: str = "null",
    expires_ms: int | None = None,
    trigger: str = "client.websocket",
    request_id: str | None = None,
    connection_id: str | None = None,
    source_ip: str | None = None,
    user_agent: str | None = None,
) -> ReactionRecord:
    """A reaction on ``message`` added at ``ms`` (default: 1 ms after the message), with ID
    ``ulid_at(ms, sequence)``, inheriting the message's expiry unless ``expires_ms`` is given."""
    at = message.created_ms + 1 if ms is None else ms
    return ReactionRecord(
        id=ulid_at(at, sequence),
        channel=message.channel,
        message_id=message.id,
        reaction=reaction,
        uid=uid,
        umd=umd,
        created_ms=at,
        expires_ms=message.expires_ms if expires_ms is None else expires_ms,
        trigger=trigger,
        request_id=request_id,
        connection_id=connection_id,
        source_ip=source_ip,
        user_agent=user_agent,
    )


def make_schedule(
    due_ms: int = T0,
    *,
    sequence: int = 0,
    kind: str = "message",
    channel: str = "room.1",
    payload: str = '{"event":"chat"}',
    created_ms: int = T0 - 1000,
) -> ScheduleRecord:
    """A schedule due at ``due_ms``, with ID ``ulid_at(created_ms, sequence)``."""
    return ScheduleRecord(
        id=ulid_at(created_ms, sequence),
        due_ms=due_ms,
        kind=kind,
        channel=channel,
        payload=payload,
        created_ms=created_ms,
    )


def _claimed(record: ScheduleRecord, attempts: int = 1) -> ScheduleRecord:
    return dataclasses.replace(record, attempts=attempts)


def make_entry(
    key: str = "settings",
    data: str = '{"maxPlayers":4}',
    *,
    channel: str = "room.1",
    uid: str | None = None,
    umd: str = "null",
    ms: int = T0,
    expires_ms: int | None = None,
    emit_event: bool = False,
    trigger: str = "server.http",
    connection_id: str | None = None,
    source_ip: str | None = None,
    user_agent: str | None = None,
) -> StorageEntry:
    """A storage entry written at ``ms``."""
    return StorageEntry(
        channel=channel,
        key=key,
        data=data,
        uid=uid,
        umd=umd,
        updated_ms=ms,
        expires_ms=expires_ms,
        emit_event=emit_event,
        trigger=trigger,
        connection_id=connection_id,
        source_ip=source_ip,
        user_agent=user_agent,
    )


def _removal(reaction: ReactionRecord) -> ReactionRemoval:
    return ReactionRemoval(reaction.channel, reaction.message_id, reaction.uid, reaction.reaction)


def _series(count: int, channel: str = "room.1") -> list[MessageRecord]:
    """``count`` records one millisecond apart, in ID order, with distinct data."""
    return [make_record(channel, ms=T0 + i, data=f'{{"n":{i}}}') for i in range(count)]


def _ids(records: Sequence[MessageRecord]) -> list[str]:
    return [record.id for record in records]


# JSON texts that break naive storage: NUL escapes (PostgreSQL jsonb refuses them), raw and
# escaped non-BMP characters, line separators, numbers beyond int64/float, key order, spacing.
TRICKY_JSON = (
    '"a\\u0000b"',
    '"\\u0000"',
    '"héllo wörld ✓ 日本語"',
    '"😀🎉 \\ud83d\\ude00"',
    '"\u2028\u2029 \\u2028"',
    '{"z":1,"a":2,"m":{"b":[],"a":{}}}',
    '{"nested":[1,{"x":[null,true,false,1.5e300,-0.0]}],"s":"\\"q\\" \\\\ /"}',
    "123456789012345678901234567890123456789",
    "-1.0000000000000000000000001e-400",
    '{ "spaced" : [ 1 , 2 ] }',
    "null",
    '""',
    "[]",
    '"' + "x" * 32768 + '"',
)


# uids that break naive text storage: U+0000 anywhere, the marker a backend may escape with,
# other control characters, non-BMP characters.
TRICKY_UIDS = ("a\x00b", "\x00", "\x01", "\x01a\x00", '\x01"x"', "tab\t\x1f\x7f", "😀\x00😀")


class StoreContract:
    """Tests any ``Store`` must pass. Subclass as ``Test…`` and define ``make_store``."""

    pytestmark: ClassVar[list[pytest.MarkDecorator]] = [pytest.mark.asyncio]

    persistent: ClassVar[bool] = False
    """Set True when data outlives the instance: enables the close-and-reopen tests."""

    # Fixtures

    @pytest.fixture
    def make_store(self) -> StoreFactory:
        """Override: return a factory of new, unopened stores (over shared data if persistent)."""
        raise NotImplementedError("a StoreContract subclass must define the make_store fixture")

    @pytest_asyncio.fixture
    async def store(self, make_store: StoreFactory) -> AsyncIterator[Store]:
        """An opened store, closed after the test."""
        store = make_store()
        await store.open()
        try:
            yield store
        finally:
            await store.aclose()

    # Helpers

    @asynccontextmanager
    async def reopened(self, make_store: StoreFactory) -> AsyncIterator[Store]:
        """A second, freshly opened instance over the same data (persistent backends only)."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        store = make_store()
        await store.open()
        try:
            yield store
        finally:
            await store.aclose()

    # Ordering and bounds

    async def test_store_lists_ascending_by_default(self, store: Store) -> None:
        """Without ``reverse`` records come oldest first."""
        records = _series(5)
        await store.append(records)
        assert await store.list_messages("room.1", now_ms=T0) == records

    async def test_store_lists_descending_when_reverse(self, store: Store) -> None:
        """``reverse=True`` returns newest first."""
        records = _series(5)
        await store.append(records)
        page = await store.list_messages("room.1", now_ms=T0, reverse=True)
        assert page == records[::-1]

    async def test_store_orders_by_id_not_by_append_order(self, store: Store) -> None:
        """An older ID appended later (eager IDs, retries) still sorts by ID."""
        records = _series(4)
        for index in (3, 0, 2, 1):
            await store.append([records[index]])
        assert await store.list_messages("room.1", now_ms=T0) == records
        page = await store.list_messages("room.1", now_ms=T0, reverse=True)
        assert page == records[::-1]

    async def test_store_orders_ids_within_one_millisecond(self, store: Store) -> None:
        """IDs of the same millisecond sort by their random part."""
        records = [make_record(ms=T0, sequence=s, data=str(s)) for s in (1, 2**79, 2**40, 7)]
        await store.append(records)
        expected = sorted(records, key=lambda r: r.id)
        assert await store.list_messages("room.1", now_ms=T0) == expected

    async def test_store_min_id_is_inclusive(self, store: Store) -> None:
        """``min_id`` keeps the record with exactly that ID."""
        records = _series(5)
        await store.append(records)
        page = await store.list_messages("room.1", now_ms=T0, min_id=records[2].id)
        assert page == records[2:]
        page = await store.list_messages("room.1", now_ms=T0, min_id=records[2].id, reverse=True)
        assert page == records[:1:-1]

    async def test_store_min_id_between_ids_is_a_floor(self, store: Store) -> None:
        """A ``min_id`` that is not a stored ID (a time floor, ``historyStart``) still bounds."""
        records = _series(5)
        await store.append(records)
        floor = ulid_at(T0 + 2, 0)  # the smallest ID of that millisecond
        assert await store.list_messages("room.1", now_ms=T0, min_id=floor) == records[2:]
        assert await store.list_messages("room.1", now_ms=T0, min_id=ulid_at(T0 + 99)) == []

    async def test_store_after_is_exclusive(self, store: Store) -> None:
        """``after`` drops the record with that ID and everything older."""
        records = _series(5)
        await store.append(records)
        assert await store.list_messages("room.1", now_ms=T0, after=records[1].id) == records[2:]
        assert await store.list_messages("room.1", now_ms=T0, after=records[-1].id) == []

    async def test_store_before_is_exclusive(self, store: Store) -> None:
        """``before`` drops the record with that ID and everything newer."""
        records = _series(5)
        await store.append(records)
        page = await store.list_messages("room.1", now_ms=T0, before=records[3].id, reverse=True)
        assert page == records[2::-1]
        assert await store.list_messages("room.1", now_ms=T0, before=records[0].id) == []

    async def test_store_applies_bounds_in_either_direction(self, store: Store) -> None:
        """The store applies whatever bounds it is given; ignoring ``after`` when ``reverse``
        is the caller's rule (spec §10.2), not the store's."""
        records = _series(6)
        await store.append(records)
        page = await store.list_messages("room.1", now_ms=T0, after=records[2].id, reverse=True)
        assert page == records[:2:-1]
        page = await store.list_messages("room.1", now_ms=T0, before=records[2].id)
        assert page == records[:2]

    async def test_store_combines_all_bounds(self, store: Store) -> None:
        """``min_id``, ``after`` and ``before`` together give their intersection."""
        records = _series(10)
        await store.append(records)
        ids = _ids(records)

        async def window(
            min_id: str | None = None, after: str | None = None, before: str | None = None
        ) -> list[str]:
            page = await store.list_messages(
                "room.1", now_ms=T0, min_id=min_id, after=after, before=before
            )
            return _ids(page)

        assert await window(min_id=ids[2], after=ids[4], before=ids[8]) == ids[5:8]
        assert await window(min_id=ids[6], after=ids[4], before=ids[8]) == ids[6:8]
        assert await window(min_id=ids[4], after=ids[4]) == ids[5:]
        assert await window(after=ids[5], before=ids[6]) == []
        assert await window(after=ids[7], before=ids[3]) == []

    async def test_store_limit_caps_the_page(self, store: Store) -> None:
        """``limit`` keeps the first records in the requested direction."""
        records = _series(10)
        await store.append(records)
        assert await store.list_messages("room.1", now_ms=T0, limit=3) == records[:3]
        page = await store.list_messages("room.1", now_ms=T0, limit=3, reverse=True)
        assert page == records[:-4:-1]
        assert await store.list_messages("room.1", now_ms=T0, limit=1) == records[:1]
        assert await store.list_messages("room.1", now_ms=T0, limit=100) == records

    async def test_store_limit_zero_returns_nothing(self, store: Store) -> None:
        """``limit=0`` (or less) returns an empty page, never "no limit"."""
        await store.append(_series(3))
        assert await store.list_messages("room.1", now_ms=T0, limit=0) == []
        assert await store.list_messages("room.1", now_ms=T0, limit=-1) == []

    async def test_store_lists_nothing_for_unknown_channel(self, store: Store) -> None:
        """A channel without records gives an empty page."""
        assert await store.list_messages("nobody", now_ms=T0) == []
        assert await store.list_messages("nobody", now_ms=T0, reverse=True) == []

    # Expiry

    async def test_store_hides_expired_records_before_sweep(self, store: Store) -> None:
        """A record is invisible once ``now_ms`` reaches ``expires_ms``, swept or not."""
        kept = make_record(ms=T0, sequence=1)
        expiring = make_record(ms=T0, sequence=2, expires_ms=T0 + 1000)
        await store.append([kept, expiring])
        assert await store.list_messages("room.1", now_ms=T0 + 999) == [kept, expiring]
        assert await store.list_messages("room.1", now_ms=T0 + 1000) == [kept]
        assert await store.list_messages("room.1", now_ms=T0 + 1000, reverse=True) == [kept]
        assert await store.get_message("room.1", expiring.id, now_ms=T0 + 999) == expiring
        assert await store.get_message("room.1", expiring.id, now_ms=T0 + 1000) is None

    async def test_store_never_expires_records_without_expiry(self, store: Store) -> None:
        """``expires_ms=None`` is visible at any time and never swept."""
        record = make_record(expires_ms=None)
        await store.append([record])
        far = 2**62
        assert await store.list_messages("room.1", now_ms=far) == [record]
        assert await store.get_message("room.1", record.id, now_ms=far) == record
        assert await store.sweep(now_ms=far) == 0
        assert await store.list_messages("room.1", now_ms=far) == [record]

    async def test_store_limit_counts_only_visible_records(self, store: Store) -> None:
        """Expired records inside the range do not shorten a page."""
        records = [
            dataclasses.replace(r, expires_ms=T0 + 10 if i % 2 else None)
            for i, r in enumerate(_series(20))
        ]
        await store.append(records)
        visible = records[::2]
        assert await store.list_messages("room.1", now_ms=T0 + 10, limit=5) == visible[:5]
        page = await store.list_messages("room.1", now_ms=T0 + 10, limit=5, reverse=True)
        assert page == visible[:-6:-1]

    async def test_store_sweep_deletes_only_expired_records(self, store: Store) -> None:
        """``sweep`` removes records with ``expires_ms <= now_ms`` and nothing else."""
        forever = make_record(ms=T0, sequence=1)
        first = make_record(ms=T0, sequence=2, expires_ms=T0 + 10)
        second = make_record("room.2", ms=T0, sequence=3, expires_ms=T0 + 20)
        later = make_record(ms=T0, sequence=4, expires_ms=T0 + 30)
        await store.append([forever, first, second, later])
        assert await store.sweep(now_ms=T0 + 20) == 2
        # Read at an earlier instant: swept records are gone, not merely hidden.
        assert await store.list_messages("room.1", now_ms=T0) == [forever, later]
        assert await store.list_messages("room.2", now_ms=T0) == []
        assert await store.get_message("room.1", first.id, now_ms=T0) is None
        assert await store.sweep(now_ms=T0 + 20) == 0

    async def test_store_sweep_respects_limit(self, store: Store) -> None:
        """``sweep`` deletes at most ``limit`` records per call."""
        records = [make_record(f"room.{i % 3}", ms=T0 + i, expires_ms=T0 + 100) for i in range(10)]
        await store.append([*records, make_record("room.0", ms=T0 + 50, sequence=9)])
        counts = [await store.sweep(now_ms=T0 + 100, limit=3) for _ in range(5)]
        assert counts == [3, 3, 3, 1, 0]
        remaining = [await store.list_messages(f"room.{i}", now_ms=T0) for i in range(3)]
        assert [len(page) for page in remaining] == [1, 0, 0]

    async def test_store_sweep_with_nothing_expired_returns_zero(self, store: Store) -> None:
        """An empty or unexpired store sweeps nothing."""
        assert await store.sweep(now_ms=T0) == 0
        await store.append([make_record(expires_ms=T0 + 1)])
        assert await store.sweep(now_ms=T0) == 0
        assert await store.sweep(now_ms=T0 + 1, limit=0) == 0
        assert await store.sweep(now_ms=T0 + 1) == 1

    # Appends

    async def test_store_append_is_idempotent(self, store: Store) -> None:
        """Appending an ID already stored keeps the first record and raises nothing."""
        original = make_record(data='"first"')
        await store.append([original])
        await store.append([dataclasses.replace(original, data='"second"', event="other")])
        await store.append([original])
        assert await store.list_messages("room.1", now_ms=T0) == [original]

    async def test_store_append_ignores_duplicates_within_one_call(self, store: Store) -> None:
        """Two records with one ID in the same call store exactly one of them."""
        first = make_record(data='"first"')
        second = dataclasses.replace(first, data='"second"')
        other = make_record(sequence=5)
        await store.append([first, second, other])
        page = await store.list_messages("room.1", now_ms=T0)
        assert _ids(page) == [first.id, other.id]
        assert page[0] in (first, second)

    async def test_store_append_of_nothing_is_a_no_op(self, store: Store) -> None:
        """``append([])`` succeeds and stores nothing."""
        await store.append([])
        assert await store.list_messages("room.1", now_ms=T0) == []

    async def test_store_append_large_call(self, store: Store) -> None:
        """One call with thousands of records stores all of them."""
        records = [make_record(ms=T0 + i // 7, sequence=i % 7) for i in range(5000)]
        await store.append(records)
        seen: list[MessageRecord] = []
        after = None
        while True:
            page = await store.list_messages("room.1", now_ms=T0, after=after, limit=1000)
            seen += page
            if len(page) < 1000:
                break
            after = page[-1].id
        assert seen == records

    async def test_store_concurrent_appends_are_all_listed(self, store: Store) -> None:
        """200 appends awaited together are all stored, in ID order."""
        records = _series(200)
        await asyncio.gather(*(store.append([record]) for record in records))
        assert await store.list_messages("room.1", now_ms=T0, limit=1000) == records

    async def test_store_concurrent_appends_across_channels(self, store: Store) -> None:
        """Concurrent appends to many channels, with reads in between, keep every channel."""
        channels = [f"room.{c}" for c in range(10)]
        records = {channel: _series(30, channel) for channel in channels}
        calls = [store.append([records[ch][i]]) for i in range(30) for ch in channels]
        reads = [store.list_messages(ch, now_ms=T0) for ch in channels]
        await asyncio.gather(*calls, *reads)
        for channel in channels:
            assert await store.list_messages(channel, now_ms=T0) == records[channel]

    async def test_store_concurrent_appends_are_durable(
        self, store: Store, make_store: StoreFactory
    ) -> None:
        """Once 200 concurrent appends returned, a new instance sees all of them."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        records = _series(200)
        await asyncio.gather(*(store.append([record]) for record in records))
        async with self.reopened(make_store) as other:
            assert await other.list_messages("room.1", now_ms=T0, limit=1000) == records

    # Deduplication (spec §15): as durable as the messages

    async def test_store_append_returns_the_stored_ids(self, store: Store) -> None:
        """Each record's own ID comes back, in order, with or without a dedup_id."""
        records = [make_record(sequence=1), make_record(sequence=2, dedup_id="d1")]
        assert await store.append(records) == _ids(records)
        assert await store.append([]) == []

    async def test_store_append_drops_a_repeated_dedup_id(self, store: Store) -> None:
        """A record whose dedup_id an earlier one holds is answered with the original ID and
        not stored, even on another channel."""
        first = make_record(dedup_id="once")
        again = make_record("room.2", ms=T0 + 1000, dedup_id="once")
        assert await store.append([first]) == [first.id]
        assert await store.append([again]) == [first.id]
        assert await store.list_messages("room.1", now_ms=T0) == [first]
        assert await store.list_messages("room.2", now_ms=T0) == []

    async def test_store_append_retry_of_the_same_record_is_its_own_id(self, store: Store) -> None:
        """Appending the very same record again (a retry) answers its own ID, stores one."""
        record = make_record(dedup_id="retry")
        assert await store.append([record]) == [record.id]
        assert await store.append([record]) == [record.id]
        assert await store.list_messages("room.1", now_ms=T0) == [record]

    async def test_store_append_first_dedup_id_of_a_call_wins(self, store: Store) -> None:
        """Within one call, the first record with a dedup_id is stored, later ones are not."""
        a = make_record(sequence=1, dedup_id="x")
        b = make_record(sequence=2, dedup_id="x")
        c = make_record(sequence=3, dedup_id="y")
        assert await store.append([a, b, c]) == [a.id, a.id, c.id]
        assert await store.list_messages("room.1", now_ms=T0) == [a, c]

    async def test_store_dedup_id_expires_after_the_window(self, store: Store) -> None:
        """After the 5-minute window the dedup_id is free again, swept or not."""
        first = make_record(dedup_id="w")
        inside = make_record(ms=T0 + DEDUP_WINDOW_MS - 1, dedup_id="w")
        after = make_record(ms=T0 + DEDUP_WINDOW_MS, dedup_id="w")
        await store.append([first])
        assert await store.append([inside]) == [first.id]
        assert await store.append([after]) == [after.id]
        later = make_record(ms=T0 + DEDUP_WINDOW_MS + 1, dedup_id="w")
        assert await store.append([later]) == [after.id]  # the new claim holds
        assert _ids(await store.list_messages("room.1", now_ms=T0)) == [first.id, after.id]

    async def test_store_sweep_dedup_deletes_only_expired(self, store: Store) -> None:
        """``sweep_dedup`` deletes expired dedup_ids within its limit and nothing live."""
        await store.append([make_record(sequence=i, dedup_id=f"s{i}") for i in range(3)])
        await store.append([make_record(ms=T0 + 10, dedup_id="late")])
        assert await store.sweep_dedup(now_ms=T0 + DEDUP_WINDOW_MS - 1) == 0
        assert await store.sweep_dedup(now_ms=T0 + DEDUP_WINDOW_MS, limit=2) == 2
        assert await store.sweep_dedup(now_ms=T0 + DEDUP_WINDOW_MS, limit=0) == 0
        assert await store.sweep_dedup(now_ms=T0 + DEDUP_WINDOW_MS) == 1
        late = make_record(ms=T0 + 11, dedup_id="late")
        assert await store.append([late]) == [ulid_at(T0 + 10)]  # still live, still held
        assert await store.sweep_dedup(now_ms=T0 + DEDUP_WINDOW_MS + 10) == 1

    async def test_store_concurrent_appends_of_one_dedup_id_store_one(self, store: Store) -> None:
        """Concurrent appends sharing a dedup_id store exactly one record; all answer its ID."""
        records = [make_record(sequence=i, dedup_id="race") for i in range(20)]
        answers = await asyncio.gather(*(store.append([r]) for r in records))
        [stored] = await store.list_messages("room.1", now_ms=T0)
        assert answers == [[stored.id]] * 20

    async def test_store_dedup_id_survives_close_and_reopen(self, make_store: StoreFactory) -> None:
        """A persistent backend still knows the dedup_id after a restart (a publisher's retry
        after a crash stores nothing)."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        first = make_record(dedup_id="crash")
        store = make_store()
        await store.open()
        try:
            await store.append([first])
        finally:
            await store.aclose()
        async with self.reopened(make_store) as other:
            retry = make_record(ms=T0 + 5, dedup_id="crash")
            assert await other.append([retry]) == [first.id]
            assert await other.list_messages("room.1", now_ms=T0) == [first]

    async def test_store_two_instances_share_dedup_ids(self, make_store: StoreFactory) -> None:
        """Two instances over the same data (two nodes) racing on dedup_ids store each once."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        async with self.reopened(make_store) as a, self.reopened(make_store) as b:
            calls = [
                (a if i % 2 else b).append([make_record(sequence=i, dedup_id=f"n{i // 2}")])
                for i in range(40)
            ]
            answers = await asyncio.gather(*calls)
            page = await a.list_messages("room.1", now_ms=T0, limit=100)
            assert len(page) == 20
            assert sorted({x for [x] in answers}) == _ids(page)

    # Channels and round trips

    async def test_store_channels_are_isolated(self, store: Store) -> None:
        """The same ID on two channels is two records; names that share a prefix do not mix."""
        shared_id = ulid_at(T0, 42)
        a = make_record("room.1", message_id=shared_id, data='"a"')
        b = make_record("room.10", message_id=shared_id, data='"b"')
        c = make_record("room.", ms=T0 + 1, data='"c"')
        await store.append([a, b, c])
        assert await store.list_messages("room.1", now_ms=T0) == [a]
        assert await store.list_messages("room.10", now_ms=T0) == [b]
        assert await store.list_messages("room.", now_ms=T0) == [c]
        assert await store.get_message("room.10", shared_id, now_ms=T0) == b
        assert await store.get_message("room.2", shared_id, now_ms=T0) is None

    @pytest.mark.parametrize("text", TRICKY_JSON, ids=range(len(TRICKY_JSON)))
    async def test_store_round_trips_json_text_exactly(self, store: Store, text: str) -> None:
        """``data`` and ``umd`` come back as the very same text, escapes and key order included."""
        record = make_record(data=text, umd=text)
        await store.append([record])
        [listed] = await store.list_messages("room.1", now_ms=T0)
        assert listed.data == text and listed.umd == text
        fetched = await store.get_message("room.1", record.id, now_ms=T0)
        assert fetched is not None and fetched.data == text and fetched.umd == text

    @pytest.mark.parametrize("uid", TRICKY_UIDS, ids=range(len(TRICKY_UIDS)))
    async def test_store_round_trips_any_uid(self, store: Store, uid: str) -> None:
        """Any string a signed token may carry as ``uid`` (U+0000 included: legal JSON, and
        PostgreSQL text cannot hold it) comes back exactly, on messages, reactions and
        storage entries, and keeps reactions apart per uid."""
        message = make_record(uid=uid, umd='{"n":"\\u0000"}', data='"\\u0000"')
        plain = make_record(sequence=1, uid="plain " + uid.replace("\x00", "").replace("\x01", ""))
        await store.append([message, plain])
        assert await store.list_messages("room.1", now_ms=T0) == [message, plain]
        assert await store.get_message("room.1", message.id, now_ms=T0) == message
        reaction = make_reaction(message, uid=uid)
        other = make_reaction(message, uid=plain.uid or "", sequence=1)
        assert await store.apply_reactions([reaction, other], now_ms=T0) == [reaction, other]
        assert await store.list_reactions("room.1", [message.id], now_ms=T0) == {
            message.id: [reaction, other]
        }
        assert await store.apply_reactions([_removal(reaction)], now_ms=T0) == [reaction]
        entry = make_entry(uid=uid)
        await store.apply_storage([entry], now_ms=T0)
        assert await store.get_storage("room.1", entry.key, now_ms=T0) == entry

    async def test_store_round_trips_every_field(self, store: Store) -> None:
        """All fields come back equal, with None kept apart from empty strings."""
        channel = "presence.ßpace-😀-" + "x" * 200  # 218 code points, multi-byte UTF-8
        full = make_record(
            channel,
            ms=T0,
            sequence=1,
            event="chat 💬 #1",
            uid="Jîm 😀",
            umd='{"role":"admin"}',
            expires_ms=T0 + 3_155_695_200_000,  # the longest retention, in ms
            trigger="client.websocket",
            connection_id="JCnTZd_KoAMCF-A=",
            source_ip="2001:db8::1",
            user_agent="Mozilla/5.0 (X11; Linux x86_64) \"quoted\" 'single'",
        )
        empty = make_record(
            channel, ms=T0, sequence=2, uid="", connection_id="", source_ip="", user_agent=""
        )
        bare = make_record(channel, ms=T0, sequence=3)
        await store.append([full, empty, bare])
        assert await store.list_messages(channel, now_ms=T0) == [full, empty, bare]
        for record in (full, empty, bare):
            assert await store.get_message(channel, record.id, now_ms=T0) == record

    async def test_store_get_message_finds_only_that_record(self, store: Store) -> None:
        """``get_message`` returns the record, or None for an unknown ID."""
        records = _series(3)
        await store.append(records)
        assert await store.get_message("room.1", records[1].id, now_ms=T0) == records[1]
        assert await store.get_message("room.1", ulid_at(T0 + 7), now_ms=T0) is None
        assert await store.get_message("nobody", records[1].id, now_ms=T0) is None

    # Paging

    async def test_store_pages_forward_without_gap_or_duplicate(self, store: Store) -> None:
        """Paging 250 records by ``after`` = last ID yields each exactly once, in order."""
        records = _series(250)
        await store.append(records)
        seen: list[MessageRecord] = []
        after: str | None = None
        sizes = []
        while True:
            page = await store.list_messages("room.1", now_ms=T0, after=after, limit=100)
            sizes.append(len(page))
            seen += page
            if len(page) < 100:
                break
            after = page[-1].id
        assert sizes == [100, 100, 50]
        assert seen == records

    async def test_store_pages_backward_without_gap_or_duplicate(self, store: Store) -> None:
        """Paging 250 records newest first by ``before`` = last ID yields each exactly once."""
        records = _series(250)
        await store.append(records)
        seen: list[MessageRecord] = []
        before: str | None = None
        sizes = []
        while True:
            page = await store.list_messages(
                "room.1", now_ms=T0, before=before, reverse=True, limit=100
            )
            sizes.append(len(page))
            seen += page
            if len(page) < 100:
                break
            before = page[-1].id
        assert sizes == [100, 100, 50]
        assert seen == records[::-1]

    # Lifecycle

    async def test_store_open_is_idempotent(self, store: Store) -> None:
        """A second ``open()`` on an open store changes nothing."""
        await store.append(_series(2))
        await store.open()
        assert len(await store.list_messages("room.1", now_ms=T0)) == 2

    async def test_store_aclose_is_idempotent(self, make_store: StoreFactory) -> None:
        """``aclose()`` may be called twice, and on a store never opened."""
        store = make_store()
        await store.open()
        await store.aclose()
        await store.aclose()
        never_opened = make_store()
        await never_opened.aclose()

    async def test_store_refuses_calls_after_aclose(self, make_store: StoreFactory) -> None:
        """Calls on a closed store raise ``StoreError`` rather than hang or half-work."""
        store = make_store()
        await store.open()
        await store.aclose()
        with pytest.raises(StoreError):
            await store.append([make_record()])
        with pytest.raises(StoreError):
            await store.list_messages("room.1", now_ms=T0)
        with pytest.raises(StoreError):
            await store.get_message("room.1", ulid_at(T0), now_ms=T0)
        with pytest.raises(StoreError):
            await store.sweep(now_ms=T0)

    async def test_store_aclose_flushes_pending_appends(self, make_store: StoreFactory) -> None:
        """Appends already waiting when ``aclose()`` starts all complete and are kept."""
        store = make_store()
        await store.open()
        records = _series(50)
        try:
            tasks = [asyncio.create_task(store.append([record])) for record in records]
            await asyncio.sleep(0)  # every append is now queued inside the store
        finally:
            await store.aclose()
        outcomes = await asyncio.gather(*tasks, return_exceptions=True)
        assert outcomes == [[record.id] for record in records]
        if self.persistent:
            async with self.reopened(make_store) as other:
                assert await other.list_messages("room.1", now_ms=T0) == records

    async def test_store_data_survives_close_and_reopen(self, make_store: StoreFactory) -> None:
        """A persistent backend shows every record, with expiry, after a restart."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        records = _series(120)
        expiring = make_record("room.2", expires_ms=T0 + 5)
        store = make_store()
        await store.open()
        try:
            await store.append(records)
            await store.append([expiring])
        finally:
            await store.aclose()
        async with self.reopened(make_store) as other:
            assert await other.list_messages("room.1", now_ms=T0, limit=200) == records
            assert await other.get_message("room.2", expiring.id, now_ms=T0) == expiring
            assert await other.list_messages("room.2", now_ms=T0 + 5) == []
            assert await other.sweep(now_ms=T0 + 5) == 1
            await other.append([make_record("room.3")])
        async with self.reopened(make_store) as third:
            assert len(await third.list_messages("room.1", now_ms=T0, limit=200)) == 120
            assert await third.list_messages("room.2", now_ms=T0) == []
            assert len(await third.list_messages("room.3", now_ms=T0)) == 1

    # Reactions (spec §12)

    async def test_store_adds_a_reaction_once(self, store: Store) -> None:
        """The first add is stored and returned; a repeated add of the same (message, uid,
        value) is a no-op that keeps the first record."""
        message = make_record()
        await store.append([message])
        first = make_reaction(message, sequence=1)
        again = make_reaction(message, sequence=2, umd='{"late":true}')
        assert await store.apply_reactions([first], now_ms=T0) == [first]
        assert await store.apply_reactions([again], now_ms=T0) == [None]
        assert await store.list_reactions("room.1", [message.id], now_ms=T0) == {
            message.id: [first]
        }

    async def test_store_keeps_one_reaction_per_uid_and_value(self, store: Store) -> None:
        """Other users and other values on the same message are separate reactions, listed in
        creation order whatever the uid or value."""
        message = make_record()
        await store.append([message])
        reactions = [
            make_reaction(message, "👍", "Pam", sequence=1),
            make_reaction(message, "❤️", "Jim", sequence=2),
            make_reaction(message, "👍", "Jim", sequence=3),
            make_reaction(message, "❤️", "Andy", sequence=4),
        ]
        assert await store.apply_reactions(reactions, now_ms=T0) == reactions
        listed = await store.list_reactions("room.1", [message.id], now_ms=T0)
        assert listed == {message.id: reactions}
        counts = await store.reaction_counts("room.1", [message.id], now_ms=T0)
        assert counts == {message.id: [("👍", 2), ("❤️", 2)]}

    async def test_store_removes_the_stored_reaction(self, store: Store) -> None:
        """A removal returns the record that was added (with the adding request's fields); a
        second removal, or one of a reaction never added, returns None."""
        message = make_record()
        await store.append([message])
        added = make_reaction(
            message, request_id=ulid_at(T0, 9), connection_id="c1=", source_ip="10.0.0.1"
        )
        await store.apply_reactions([added], now_ms=T0)
        assert await store.apply_reactions([_removal(added)], now_ms=T0) == [added]
        assert await store.apply_reactions([_removal(added)], now_ms=T0) == [None]
        stranger = ReactionRemoval("room.1", message.id, "Pam", "👍")
        assert await store.apply_reactions([stranger], now_ms=T0) == [None]
        assert await store.list_reactions("room.1", [message.id], now_ms=T0) == {}
        assert await store.reaction_counts("room.1", [message.id], now_ms=T0) == {}

    async def test_store_applies_reaction_changes_in_order(self, store: Store) -> None:
        """One call applies its changes one after the other: add, repeated add, remove, second
        remove, add again."""
        message = make_record()
        await store.append([message])
        first = make_reaction(message, sequence=1)
        second = make_reaction(message, sequence=2)
        third = make_reaction(message, sequence=3)
        outcomes = await store.apply_reactions(
            [first, second, _removal(first), _removal(first), third], now_ms=T0
        )
        assert outcomes == [first, None, first, None, third]
        listed = await store.list_reactions("room.1", [message.id], now_ms=T0)
        assert listed == {message.id: [third]}
        assert await store.apply_reactions([], now_ms=T0) == []

    async def test_store_reads_reactions_of_many_messages_at_once(self, store: Store) -> None:
        """One call returns the reactions of every listed message; messages without reactions,
        unknown IDs and other channels stay out."""
        messages = _series(5)
        other = make_record("room.2", message_id=messages[1].id)
        await store.append([*messages, other])
        reactions = [
            make_reaction(messages[i], value, uid, ms=T0 + 10 + n, sequence=n)
            for n, (i, value, uid) in enumerate(
                [(0, "👍", "Jim"), (2, "👍", "Jim"), (0, "🎉", "Pam"), (2, "👍", "Pam")]
            )
        ]
        elsewhere = make_reaction(other, "👀", ms=T0 + 50)
        await store.apply_reactions([*reactions, elsewhere], now_ms=T0)
        ids = [m.id for m in messages] + [ulid_at(T0 + 99)]
        listed = await store.list_reactions("room.1", ids, now_ms=T0)
        assert listed == {
            messages[0].id: [reactions[0], reactions[2]],
            messages[2].id: [reactions[1], reactions[3]],
        }
        counts = await store.reaction_counts("room.1", ids, now_ms=T0)
        assert counts == {
            messages[0].id: [("👍", 1), ("🎉", 1)],
            messages[2].id: [("👍", 2)],
        }
        assert await store.list_reactions("room.2", [other.id], now_ms=T0) == {
            other.id: [elsewhere]
        }
        assert await store.list_reactions("room.1", [], now_ms=T0) == {}
        assert await store.reaction_counts("room.1", [], now_ms=T0) == {}

    async def test_store_orders_counts_by_first_reaction(self, store: Store) -> None:
        """Values are counted in the order their first reaction was made, not by name or
        count."""
        message = make_record()
        await store.append([message])
        reactions = [
            make_reaction(message, value, uid, sequence=n)
            for n, (value, uid) in enumerate(
                [("z", "a"), ("a", "a"), ("m", "a"), ("a", "b"), ("a", "c"), ("z", "b")], 1
            )
        ]
        await store.apply_reactions(reactions, now_ms=T0)
        counts = await store.reaction_counts("room.1", [message.id], now_ms=T0)
        assert counts == {message.id: [("z", 2), ("a", 3), ("m", 1)]}

    async def test_store_reactions_expire_with_their_message(self, store: Store) -> None:
        """A reaction is invisible once its expiry passes: not listed, not counted, not
        removable, and a new add replaces it."""
        message = make_record(expires_ms=T0 + 100)
        await store.append([message])
        reaction = make_reaction(message)
        await store.apply_reactions([reaction], now_ms=T0)
        assert reaction.expires_ms == T0 + 100
        assert await store.list_reactions("room.1", [message.id], now_ms=T0 + 99) != {}
        assert await store.list_reactions("room.1", [message.id], now_ms=T0 + 100) == {}
        assert await store.reaction_counts("room.1", [message.id], now_ms=T0 + 100) == {}
        assert await store.apply_reactions([_removal(reaction)], now_ms=T0 + 100) == [None]
        renewed = make_reaction(message, ms=T0 + 100, expires_ms=T0 + 500)
        assert await store.apply_reactions([renewed], now_ms=T0 + 100) == [renewed]
        assert await store.list_reactions("room.1", [message.id], now_ms=T0 + 100) == {
            message.id: [renewed]
        }

    async def test_store_sweeps_only_expired_reactions(self, store: Store) -> None:
        """``sweep_reactions`` deletes expired reactions, at most ``limit`` per call, and keeps
        the rest."""
        message = make_record(expires_ms=T0 + 100)
        forever = make_record(ms=T0 + 1)
        await store.append([message, forever])
        expiring = [make_reaction(message, "👍", f"u{i}", sequence=i) for i in range(5)]
        kept = make_reaction(forever, "👍", "Jim")
        await store.apply_reactions([*expiring, kept], now_ms=T0)
        assert await store.sweep_reactions(now_ms=T0 + 99) == 0
        counts = [await store.sweep_reactions(now_ms=T0 + 100, limit=2) for _ in range(4)]
        assert counts == [2, 2, 1, 0]
        assert await store.sweep_reactions(now_ms=T0 + 100, limit=0) == 0
        # Read at an earlier instant: swept reactions are gone, not merely hidden.
        assert await store.list_reactions("room.1", [message.id], now_ms=T0) == {}
        assert await store.list_reactions("room.1", [forever.id], now_ms=2**62) == {
            forever.id: [kept]
        }

    async def test_store_sweep_skips_removed_and_replaced_reactions(self, store: Store) -> None:
        """A reaction removed, or replaced after expiring, is not swept twice nor wrongly."""
        message = make_record(expires_ms=T0 + 100)
        await store.append([message])
        removed = make_reaction(message, "👍", "Jim")
        replaced = make_reaction(message, "🎉", "Jim", sequence=1)
        await store.apply_reactions([removed, replaced, _removal(removed)], now_ms=T0)
        renewed = make_reaction(message, "🎉", "Jim", ms=T0 + 150, expires_ms=T0 + 1000)
        assert await store.apply_reactions([renewed], now_ms=T0 + 150) == [renewed]
        assert await store.sweep_reactions(now_ms=T0 + 200) == 0
        assert await store.list_reactions("room.1", [message.id], now_ms=T0 + 200) == {
            message.id: [renewed]
        }
        assert await store.sweep_reactions(now_ms=T0 + 1000) == 1

    async def test_store_round_trips_reaction_fields(self, store: Store) -> None:
        """Every field comes back equal: tricky umd text, long values, None apart from ''."""
        message = make_record()
        await store.append([message])
        full = make_reaction(
            message,
            "👍🏽" + "x" * 92,
            "Jîm 😀" + "u" * 120,
            umd='{"z":1,"a":"\\u0000 ✓","n":[1.5e300]}',
            expires_ms=T0 + 3_155_695_200_000,
            trigger="server.http",
            request_id=ulid_at(T0, 5),
            connection_id="JCnTZd_KoAMCF-A=",
            source_ip="2001:db8::1",
            user_agent='Mozilla/5.0 "quoted"',
        )
        empty = make_reaction(
            message, "❤️", "", sequence=1, connection_id="", source_ip="", user_agent=""
        )
        assert await store.apply_reactions([full, empty], now_ms=T0) == [full, empty]
        listed = await store.list_reactions("room.1", [message.id], now_ms=T0)
        assert listed == {message.id: [full, empty]}

    async def test_store_concurrent_adds_store_one_reaction(self, store: Store) -> None:
        """Of 30 concurrent adds of the same reaction exactly one is stored."""
        message = make_record()
        await store.append([message])
        attempts = [make_reaction(message, sequence=n) for n in range(30)]
        outcomes = await asyncio.gather(
            *(store.apply_reactions([attempt], now_ms=T0) for attempt in attempts)
        )
        stored = [outcome for [outcome] in outcomes if outcome is not None]
        assert len(stored) == 1
        assert await store.list_reactions("room.1", [message.id], now_ms=T0) == {message.id: stored}

    async def test_store_reading_a_hundred_message_page_of_reactions(self, store: Store) -> None:
        """A full page of 100 messages with 10 reactions each comes back whole."""
        messages = _series(100)
        await store.append(messages)
        reactions = [
            make_reaction(m, "👍" if u % 2 else "🎉", f"user{u}", sequence=u)
            for m in messages
            for u in range(10)
        ]
        await store.apply_reactions(reactions, now_ms=T0)
        ids = [m.id for m in messages]
        listed = await store.list_reactions("room.1", ids, now_ms=T0)
        assert sum(len(v) for v in listed.values()) == 1000
        assert listed[ids[57]] == reactions[570:580]
        counts = await store.reaction_counts("room.1", ids, now_ms=T0)
        assert counts[ids[99]] == [("🎉", 5), ("👍", 5)]

    async def test_store_refuses_reaction_calls_after_aclose(
        self, make_store: StoreFactory
    ) -> None:
        """Reaction calls on a closed store raise ``StoreError``."""
        store = make_store()
        await store.open()
        await store.aclose()
        message = make_record()
        with pytest.raises(StoreError):
            await store.apply_reactions([make_reaction(message)], now_ms=T0)
        with pytest.raises(StoreError):
            await store.list_reactions("room.1", [message.id], now_ms=T0)
        with pytest.raises(StoreError):
            await store.reaction_counts("room.1", [message.id], now_ms=T0)
        with pytest.raises(StoreError):
            await store.sweep_reactions(now_ms=T0)

    async def test_store_reactions_survive_close_and_reopen(self, make_store: StoreFactory) -> None:
        """A persistent backend keeps reactions, with their expiry, across a restart."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        message = make_record(expires_ms=T0 + 100)
        reactions = [make_reaction(message, "👍", uid, sequence=n) for n, uid in enumerate("ab")]
        store = make_store()
        await store.open()
        try:
            await store.append([message])
            await store.apply_reactions(reactions, now_ms=T0)
        finally:
            await store.aclose()
        async with self.reopened(make_store) as other:
            listed = await other.list_reactions("room.1", [message.id], now_ms=T0)
            assert listed == {message.id: reactions}
            assert await other.apply_reactions([reactions[0]], now_ms=T0) == [None]
            assert await other.apply_reactions([_removal(reactions[1])], now_ms=T0) == [
                reactions[1]
            ]
        async with self.reopened(make_store) as third:
            assert await third.list_reactions("room.1", [message.id], now_ms=T0) == {
                message.id: reactions[:1]
            }
            assert await third.sweep_reactions(now_ms=T0 + 100) == 1

    # Schedules (spec §14)

    async def test_store_has_no_schedule_when_empty(self, store: Store) -> None:
        """No schedule: nothing to wait for and nothing to claim."""
        assert await store.next_schedule_ms() is None
        assert await store.claim_schedules(now_ms=T0, limit=10, lease_ms=1000) == []

    async def test_store_next_schedule_is_the_earliest_due(self, store: Store) -> None:
        """The next wake-up is the earliest due time, whatever the insertion order."""
        await store.add_schedules([make_schedule(T0 + 300, sequence=1)])
        await store.add_schedules(
            [make_schedule(T0 + 100, sequence=2), make_schedule(T0 + 200, sequence=3)]
        )
        assert await store.next_schedule_ms() == T0 + 100

    async def test_store_claims_only_due_schedules_earliest_first(self, store: Store) -> None:
        """A claim returns the due schedules in due order (ties by ID), counting the claim."""
        late = make_schedule(T0 + 1, sequence=1)
        first = make_schedule(T0 - 50, sequence=5)
        tie_a = make_schedule(T0, sequence=2)
        tie_b = make_schedule(T0, sequence=3)
        await store.add_schedules([late, tie_b, first, tie_a])
        claimed = await store.claim_schedules(now_ms=T0, limit=10, lease_ms=1000)
        assert claimed == [_claimed(first), _claimed(tie_a), _claimed(tie_b)]

    async def test_store_claim_respects_limit(self, store: Store) -> None:
        """At most ``limit`` are claimed; the rest stay for the next claim."""
        schedules = [make_schedule(T0 + i, sequence=i) for i in range(5)]
        await store.add_schedules(schedules)
        first = await store.claim_schedules(now_ms=T0 + 10, limit=3, lease_ms=1000)
        second = await store.claim_schedules(now_ms=T0 + 10, limit=3, lease_ms=1000)
        assert first == [_claimed(s) for s in schedules[:3]]
        assert second == [_claimed(s) for s in schedules[3:]]
        assert await store.claim_schedules(now_ms=T0 + 10, limit=0, lease_ms=1000) == []

    async def test_store_claim_holds_schedules_for_the_lease(self, store: Store) -> None:
        """A claimed schedule is not handed out again before its lease ends; after it (the
        claimer died), it is, once more, with the attempt counted."""
        schedule = make_schedule(T0)
        await store.add_schedules([schedule])
        assert await store.claim_schedules(now_ms=T0, limit=10, lease_ms=500) == [
            _claimed(schedule)
        ]
        assert await store.next_schedule_ms() == T0 + 500
        assert await store.claim_schedules(now_ms=T0 + 499, limit=10, lease_ms=500) == []
        assert await store.claim_schedules(now_ms=T0 + 500, limit=10, lease_ms=500) == [
            _claimed(schedule, 2)
        ]

    async def test_store_completed_schedules_are_gone(self, store: Store) -> None:
        """Completing forgets schedules; repeating it, or naming unknown IDs, is harmless."""
        done, other = make_schedule(T0, sequence=1), make_schedule(T0 + 5, sequence=2)
        await store.add_schedules([done, other])
        await store.claim_schedules(now_ms=T0, limit=10, lease_ms=1000)
        await store.complete_schedules([done.id])
        await store.complete_schedules([done.id, ulid_at(T0, 99)])
        await store.complete_schedules([])
        assert await store.next_schedule_ms() == T0 + 5
        assert await store.claim_schedules(now_ms=T0 + 5000, limit=10, lease_ms=1000) == [
            _claimed(other)
        ]
        await store.complete_schedules([other.id])
        assert await store.next_schedule_ms() is None

    async def test_store_add_schedules_is_idempotent(self, store: Store) -> None:
        """A schedule ID already stored is ignored, so a retried add never runs twice."""
        schedule = make_schedule(T0)
        await store.add_schedules([schedule])
        await store.add_schedules([dataclasses.replace(schedule, due_ms=T0 - 10)])
        await store.add_schedules([])
        assert await store.claim_schedules(now_ms=T0, limit=10, lease_ms=1000) == [
            _claimed(schedule)
        ]

    async def test_store_deletes_only_pending_schedules(self, store: Store) -> None:
        """Cancelling a pending schedule works once; an unknown, completed or running one
        (lease live) is refused; one whose claimer's lease ran out is pending again."""
        pending, running, done = (make_schedule(T0 + i, sequence=i) for i in range(3))
        await store.add_schedules([pending, running, done])
        assert await store.delete_schedule(pending.id, now_ms=T0) is True
        assert await store.delete_schedule(pending.id, now_ms=T0) is False
        assert await store.delete_schedule(ulid_at(T0, 42), now_ms=T0) is False
        claimed = await store.claim_schedules(now_ms=T0 + 2, limit=10, lease_ms=100)
        assert claimed == [_claimed(running), _claimed(done)]
        await store.complete_schedules([done.id])
        assert await store.delete_schedule(done.id, now_ms=T0 + 2) is False
        assert await store.delete_schedule(running.id, now_ms=T0 + 50) is False
        assert await store.delete_schedule(running.id, now_ms=T0 + 102) is True
        assert await store.next_schedule_ms() is None

    async def test_store_round_trips_schedule_fields(self, store: Store) -> None:
        """Kind, channel and payload come back exactly (the payload is opaque JSON text)."""
        schedule = make_schedule(
            T0,
            kind="storage",
            channel="presence.ünï 😀",
            payload='{"data":"a\\u0000b","meta":"{\\"uid\\":\\"Jim\\"}","x":"日本"}',
        )
        await store.add_schedules([schedule])
        assert await store.claim_schedules(now_ms=T0, limit=1, lease_ms=1) == [_claimed(schedule)]

    async def test_store_concurrent_claims_never_share_a_schedule(
        self, make_store: StoreFactory, store: Store
    ) -> None:
        """Claims racing on one store, and on other instances over the same data (other
        nodes), hand each schedule to exactly one of them."""
        schedules = [make_schedule(T0 + i % 7, sequence=i) for i in range(300)]
        await store.add_schedules(schedules)
        others: list[Store] = []
        if self.persistent:
            others = [make_store() for _ in range(2)]
            for other in others:
                await other.open()
        try:
            claimers = [store, store, *others, *others]

            async def drain(claimer: Store) -> list[str]:
                got: list[str] = []
                while batch := await claimer.claim_schedules(
                    now_ms=T0 + 10, limit=7, lease_ms=60_000
                ):
                    got += [s.id for s in batch]
                return got

            claimed = [i for ids in await asyncio.gather(*map(drain, claimers)) for i in ids]
        finally:
            for other in others:
                await other.aclose()
        assert sorted(claimed) == sorted(s.id for s in schedules)

    async def test_store_schedules_survive_close_and_reopen(self, make_store: StoreFactory) -> None:
        """A persistent backend keeps pending schedules and their claims across a restart."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        pending, claimed = make_schedule(T0 + 10, sequence=1), make_schedule(T0, sequence=2)
        store = make_store()
        await store.open()
        try:
            await store.add_schedules([pending, claimed])
            await store.claim_schedules(now_ms=T0, limit=10, lease_ms=1000)
        finally:
            await store.aclose()
        async with self.reopened(make_store) as other:
            assert await other.next_schedule_ms() == T0 + 10
            assert await other.claim_schedules(now_ms=T0 + 10, limit=10, lease_ms=1000) == [
                _claimed(pending)
            ]
            assert await other.claim_schedules(now_ms=T0 + 1000, limit=10, lease_ms=1000) == [
                _claimed(claimed, 2)
            ]

    async def test_store_refuses_schedule_calls_after_aclose(
        self, make_store: StoreFactory
    ) -> None:
        """Schedule calls on a closed store raise ``StoreError``."""

    # Revocations

    async def test_store_lists_unexpired_revocations_in_order(self, store: Store) -> None:
        """Revocations come back by kind then value, expired ones left out."""
        by_uid = _revocation(RevocationKind.UID, "alice", issued_before_ms=T0 - 5)
        b = _revocation(RevocationKind.JTI, "b")
        a = _revocation(RevocationKind.JTI, "a", expires_ms=T0 + 10)
        for revocation in (by_uid, b, a):
            await store.put_revocation(revocation)
        assert await store.list_revocations(now_ms=T0) == [a, b, by_uid]
        assert await store.list_revocations(now_ms=T0 + 10) == [b, by_uid]

    async def test_store_revocation_of_same_target_replaces(self, store: Store) -> None:
        """A second revocation of one jti or uid replaces the first; kinds are distinct."""
        await store.put_revocation(_revocation(RevocationKind.UID, "x", issued_before_ms=T0))
        later = _revocation(RevocationKind.UID, "x", issued_before_ms=T0 + 5, expires_ms=T0 + 99)
        await store.put_revocation(later)
        same_value = _revocation(RevocationKind.JTI, "x")
        await store.put_revocation(same_value)
        assert await store.list_revocations(now_ms=T0) == [same_value, later]

    async def test_store_deletes_a_revocation(self, store: Store) -> None:
        """delete_revocation reports whether a live revocation was deleted."""
        await store.put_revocation(_revocation(RevocationKind.JTI, "j"))
        await store.put_revocation(_revocation(RevocationKind.JTI, "old", expires_ms=T0 + 1))
        assert await store.delete_revocation(RevocationKind.UID, "j", now_ms=T0) is False
        assert await store.delete_revocation(RevocationKind.JTI, "j", now_ms=T0) is True
        assert await store.delete_revocation(RevocationKind.JTI, "j", now_ms=T0) is False
        assert await store.delete_revocation(RevocationKind.JTI, "old", now_ms=T0 + 1) is False
        assert await store.list_revocations(now_ms=T0) == []

    async def test_store_sweeps_expired_revocations(self, store: Store) -> None:
        """sweep_revocations deletes expired ones, at most ``limit`` per call."""
        for n in range(5):
            await store.put_revocation(_revocation(RevocationKind.JTI, f"j{n}", expires_ms=T0 + n))
        assert await store.sweep_revocations(now_ms=T0 + 2, limit=2) == 2
        assert await store.sweep_revocations(now_ms=T0 + 2) == 1
        assert await store.sweep_revocations(now_ms=T0 + 2, limit=0) == 0
        assert [r.value for r in await store.list_revocations(now_ms=T0)] == ["j3", "j4"]

    async def test_store_revocations_survive_close_and_reopen(
        self, make_store: StoreFactory
    ) -> None:
        """A persistent backend keeps revocations across a restart."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        kept = [
            _revocation(RevocationKind.JTI, "jti-\u00e9"),
            _revocation(RevocationKind.UID, "u", issued_before_ms=T0),
        ]
        store = make_store()
        await store.open()
        try:
            for revocation in kept:
                await store.put_revocation(revocation)
        finally:
            await store.aclose()
        async with self.reopened(make_store) as other:
            assert await other.list_revocations(now_ms=T0) == kept

    async def test_store_refuses_revocation_calls_after_aclose(
        self, make_store: StoreFactory
    ) -> None:
        """Revocation calls on a closed store raise ``StoreError``."""
        store = make_store()
        await store.open()
        await store.aclose()
        with pytest.raises(StoreError):
            await store.put_revocation(_revocation(RevocationKind.JTI, "j"))
        with pytest.raises(StoreError):
            await store.list_revocations(now_ms=T0)
        with pytest.raises(StoreError):
            await store.delete_revocation(RevocationKind.JTI, "j", now_ms=T0)
        with pytest.raises(StoreError):
            await store.sweep_revocations(now_ms=T0)

    # Channel storage (spec §11)

    async def test_store_storage_write_creates_an_entry(self, store: Store) -> None:
        """A first write reports a change from nothing; get and list then return the entry."""
        entry = make_entry()
        assert await store.apply_storage([entry], now_ms=T0) == [StorageOutcome(None, entry, True)]
        assert await store.get_storage("room.1", "settings", now_ms=T0) == entry
        assert await store.list_storage("room.1", now_ms=T0) == [entry]

    async def test_store_storage_overwrite_reports_the_previous_entry(self, store: Store) -> None:
        """A different value replaces the entry, writer and all."""
        first = make_entry(uid="host")
        second = make_entry(data='{"maxPlayers":6}', uid="guest", umd='{"a":1}', ms=T0 + 5)
        await store.apply_storage([first], now_ms=T0)
        assert await store.apply_storage([second], now_ms=T0 + 5) == [
            StorageOutcome(first, second, True)
        ]
        assert await store.get_storage("room.1", "settings", now_ms=T0 + 5) == second

    async def test_store_storage_unchanged_value_refreshes_expiry_only(self, store: Store) -> None:
        """A deep-equal value (other key order, spacing, 2 for 2.0) keeps the stored text,
        writer and flags, and takes only the new expiry."""
        first = make_entry("k", '{"a":1,"b":[1,2]}', uid="host", expires_ms=T0 + 100)
        again = make_entry(
            "k", '{ "b": [1, 2.0], "a": 1 }', uid="guest", expires_ms=T0 + 500, emit_event=True
        )
        await store.apply_storage([first], now_ms=T0)
        refreshed = dataclasses.replace(first, expires_ms=T0 + 500)
        assert await store.apply_storage([again], now_ms=T0 + 50) == [
            StorageOutcome(first, refreshed, False)
        ]
        assert await store.get_storage("room.1", "k", now_ms=T0 + 200) == refreshed

    async def test_store_storage_true_and_one_differ(self, store: Store) -> None:
        """Deep equality keeps JSON types apart: ``true`` is not ``1``."""
        await store.apply_storage([make_entry("k", "1")], now_ms=T0)
        [outcome] = await store.apply_storage([make_entry("k", "true")], now_ms=T0)
        assert outcome.changed

    async def test_store_storage_removal_deletes_the_live_entry(self, store: Store) -> None:
        """Removing reports the deleted entry; removing again changes nothing."""
        entry = make_entry()
        await store.apply_storage([entry], now_ms=T0)
        removal = StorageRemoval("room.1", "settings")
        assert await store.apply_storage([removal], now_ms=T0) == [
            StorageOutcome(entry, None, True)
        ]
        assert await store.get_storage("room.1", "settings", now_ms=T0) is None
        assert await store.apply_storage([removal], now_ms=T0) == [
            StorageOutcome(None, None, False)
        ]
        assert await store.list_storage("room.1", now_ms=T0) == []

    async def test_store_storage_applies_changes_in_order(self, store: Store) -> None:
        """One call applies its changes one after the other."""
        a, b = make_entry("k", '"a"'), make_entry("k", '"b"')
        removal = StorageRemoval("room.1", "k")
        assert await store.apply_storage([a, b, removal, a], now_ms=T0) == [
            StorageOutcome(None, a, True),
            StorageOutcome(a, b, True),
            StorageOutcome(b, None, True),
            StorageOutcome(None, a, True),
        ]

    async def test_store_storage_hides_expired_entries_before_sweep(self, store: Store) -> None:
        """An entry is invisible from its expiry instant on, swept or not."""
        entry = make_entry("k", expires_ms=T0 + 10)
        await store.apply_storage([entry, make_entry("other")], now_ms=T0)
        assert await store.get_storage("room.1", "k", now_ms=T0 + 9) == entry
        assert await store.get_storage("room.1", "k", now_ms=T0 + 10) is None
        listed = await store.list_storage("room.1", now_ms=T0 + 10)
        assert [e.key for e in listed] == ["other"]
        assert await store.list_storage("room.1", now_ms=T0 + 10, keys=["k"]) == []

    async def test_store_storage_write_over_an_expired_entry(self, store: Store) -> None:
        """An expired, unswept entry counts as absent, even with the same value, and is
        reported so its expiry can still be announced; the sweeper then skips it."""
        old = make_entry("k", '"v"', expires_ms=T0 + 10, emit_event=True)
        new = make_entry("k", '"v"', ms=T0 + 20)
        await store.apply_storage([old], now_ms=T0)
        assert await store.apply_storage([new], now_ms=T0 + 20) == [
            StorageOutcome(None, new, True, expired=old)
        ]
        assert await store.sweep_storage(now_ms=T0 + 30) == []
        assert await store.get_storage("room.1", "k", now_ms=T0 + 30) == new

    async def test_store_storage_removal_of_an_expired_entry(self, store: Store) -> None:
        """Removing an expired entry changes nothing visible and reports it as expired."""
        old = make_entry("k", expires_ms=T0 + 10)
        await store.apply_storage([old], now_ms=T0)
        assert await store.apply_storage([StorageRemoval("room.1", "k")], now_ms=T0 + 10) == [
            StorageOutcome(None, None, False, expired=old)
        ]
        assert await store.sweep_storage(now_ms=T0 + 30) == []

    async def test_store_storage_sweep_deletes_only_expired_entries(self, store: Store) -> None:
        """The sweeper returns what it deleted; live and refreshed entries stay."""
        gone = make_entry("gone", expires_ms=T0 + 10, emit_event=True, trigger="client.http")
        kept = make_entry("kept", expires_ms=T0 + 100)
        forever = make_entry("forever")
        refreshed = make_entry("refreshed", expires_ms=T0 + 10)
        await store.apply_storage([gone, kept, forever, refreshed], now_ms=T0)
        await store.apply_storage([make_entry("refreshed", expires_ms=T0 + 1000)], now_ms=T0 + 5)
        assert await store.sweep_storage(now_ms=T0 + 50) == [gone]
        assert await store.sweep_storage(now_ms=T0 + 50) == []
        listed = await store.list_storage("room.1", now_ms=T0 + 50)
        assert [e.key for e in listed] == ["forever", "kept", "refreshed"]

    async def test_store_storage_sweep_respects_limit(self, store: Store) -> None:
        """At most ``limit`` entries go per call."""
        await store.apply_storage(
            [make_entry(f"k{i}", expires_ms=T0 + 1) for i in range(5)], now_ms=T0
        )
        assert len(await store.sweep_storage(now_ms=T0 + 1, limit=3)) == 3
        assert len(await store.sweep_storage(now_ms=T0 + 1, limit=3)) == 2
        assert await store.sweep_storage(now_ms=T0 + 1, limit=0) == []

    async def test_store_storage_lists_in_code_point_order(self, store: Store) -> None:
        """Keys sort by code point (so upper case before lower case), whatever the order of
        the writes; ``after`` is exclusive and ``limit`` caps the page."""
        keys = ["z", "a", "B", "é", "日本", "a.b", "_", "0"]
        await store.apply_storage([make_entry(k, f'"{k}"') for k in keys], now_ms=T0)
        ordered = sorted(keys)
        listed = await store.list_storage("room.1", now_ms=T0)
        assert [e.key for e in listed] == ordered
        page = await store.list_storage("room.1", now_ms=T0, after="a", limit=3)
        assert [e.key for e in page] == ["a.b", "z", "é"]
        assert await store.list_storage("room.1", now_ms=T0, limit=0) == []

    async def test_store_storage_lists_only_the_keys_asked_for(self, store: Store) -> None:
        """``keys`` filters (unknown keys are skipped), still in key order and after ``after``."""
        await store.apply_storage([make_entry(k) for k in "abcde"], now_ms=T0)
        listed = await store.list_storage("room.1", now_ms=T0, keys=["d", "b", "x", "b"])
        assert [e.key for e in listed] == ["b", "d"]
        listed = await store.list_storage("room.1", now_ms=T0, keys=["d", "b", "e"], after="b")
        assert [e.key for e in listed] == ["d", "e"]
        assert await store.list_storage("room.1", now_ms=T0, keys=[]) == []

    async def test_store_storage_pages_through_many_entries(self, store: Store) -> None:
        """Pages of 100 with ``after`` = the last key see every entry once."""
        entries = [make_entry(f"key{i:04d}", str(i)) for i in range(250)]
        await store.apply_storage(entries, now_ms=T0)
        seen: list[StorageEntry] = []
        after = None
        while True:
            page = await store.list_storage("room.1", now_ms=T0, after=after, limit=100)
            seen += page
            if len(page) < 100:
                break
            after = page[-1].key
        assert seen == entries

    async def test_store_storage_channels_are_isolated(self, store: Store) -> None:
        """Entries of one channel never show on another; the same key is two entries."""
        a = make_entry("k", '"a"', channel="room.a")
        b = make_entry("k", '"b"', channel="room.b")
        await store.apply_storage([a, b], now_ms=T0)
        assert await store.list_storage("room.a", now_ms=T0) == [a]
        assert await store.get_storage("room.b", "k", now_ms=T0) == b
        await store.apply_storage([StorageRemoval("room.a", "k")], now_ms=T0)
        assert await store.get_storage("room.b", "k", now_ms=T0) == b
        assert await store.list_storage("room.none", now_ms=T0) == []

    @pytest.mark.parametrize("text", [t for t in TRICKY_JSON if t != "null"])
    async def test_store_storage_round_trips_json_text_exactly(
        self, store: Store, text: str
    ) -> None:
        """Values come back byte for byte."""
        await store.apply_storage([make_entry("k", text)], now_ms=T0)
        entry = await store.get_storage("room.1", "k", now_ms=T0)
        assert entry is not None and entry.data == text

    async def test_store_storage_round_trips_every_field(self, store: Store) -> None:
        """Writer, expiry, flag and request fields survive."""
        entry = make_entry(
            "k",
            '{"x":[1,2]}',
            uid="Jim",
            umd='{"n":"Jim ✓"}',
            ms=T0 + 7,
            expires_ms=T0 + 10**12,
            emit_event=True,
            trigger="client.websocket",
            connection_id="IDnAdd9kIAMCEsQ=",
            source_ip="12.34.56.78",
            user_agent="Mozilla/5.0 ✓",
        )
        await store.apply_storage([entry], now_ms=T0)
        assert await store.get_storage("room.1", "k", now_ms=T0) == entry
        assert await store.list_storage("room.1", now_ms=T0, keys=["k"]) == [entry]

    async def test_store_storage_concurrent_writes_are_all_applied(self, store: Store) -> None:
        """Concurrent calls on many keys all land; on one key, each sees the one before."""
        await asyncio.gather(
            *(store.apply_storage([make_entry(f"k{i:02d}")], now_ms=T0) for i in range(30))
        )
        assert len(await store.list_storage("room.1", now_ms=T0)) == 30
        outcomes = await asyncio.gather(
            *(store.apply_storage([make_entry("same", str(i))], now_ms=T0) for i in range(20))
        )
        previous = {o.previous.data if o.previous else None for [o] in outcomes}
        current = {o.current.data for [o] in outcomes if o.current is not None}
        assert all(o.changed for [o] in outcomes)
        assert len(previous) == 20 and len(current - previous) == 1 and None in previous

    async def test_store_refuses_storage_calls_after_aclose(self, make_store: StoreFactory) -> None:
        """Storage calls on a closed store raise ``StoreError``."""
        store = make_store()
        await store.open()
        await store.aclose()
        with pytest.raises(StoreError):
            await store.apply_storage([make_entry()], now_ms=T0)
        with pytest.raises(StoreError):
            await store.get_storage("room.1", "settings", now_ms=T0)
        with pytest.raises(StoreError):
            await store.list_storage("room.1", now_ms=T0)
        with pytest.raises(StoreError):
            await store.sweep_storage(now_ms=T0)

    async def test_store_storage_concurrent_sweeps_return_each_entry_once(
        self, make_store: StoreFactory
    ) -> None:
        """Stores over the same data sweeping at once (several nodes) return every expired
        entry exactly once, so its expiry is announced once."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        stores = [make_store() for _ in range(3)]
        for store in stores:
            await store.open()
        try:
            entries = [make_entry(f"k{n:03d}", expires_ms=T0 + 1) for n in range(150)]
            await stores[0].apply_storage(entries, now_ms=T0)

            async def sweep_all(store: Store) -> list[str]:
                keys: list[str] = []
                while swept := await store.sweep_storage(now_ms=T0 + 1, limit=20):
                    keys += [e.key for e in swept]
                return keys

            found = await asyncio.gather(*(sweep_all(store) for store in stores))
            every = [key for keys in found for key in keys]
            assert sorted(every) == [e.key for e in entries]
        finally:
            for store in stores:
                await store.aclose()

    async def test_store_storage_survives_close_and_reopen(self, make_store: StoreFactory) -> None:
        """A persistent backend keeps entries, with their expiry, across a restart."""
        if not self.persistent:
            pytest.skip("backend is not persistent")
        short = make_entry("short", expires_ms=T0 + 100, emit_event=True)
        forever = make_entry("forever", uid="Jim")
        store = make_store()
        await store.open()
        try:
            await store.apply_storage([short, forever], now_ms=T0)
        finally:
            await store.aclose()
        async with self.reopened(make_store) as other:
            assert await other.list_storage("room.1", now_ms=T0) == [forever, short]
            assert await other.get_storage("room.1", "short", now_ms=T0 + 100) is None
            assert await other.sweep_storage(now_ms=T0 + 100) == [short]
        async with self.reopened(make_store) as third:
            assert await third.list_storage("room.1", now_ms=T0 + 100) == [forever]


def _revocation(
    kind: RevocationKind,
    value: str,
    *,
    issued_before_ms: int | None = None,
    expires_ms: int = T0 + 3_600_000,
) -> Revocation:
    return Revocation(kind, value, issued_before_ms, T0 - 1000, expires_ms)
