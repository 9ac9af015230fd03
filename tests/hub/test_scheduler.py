"""The scheduler loop (hub/scheduler.py) on the memory backends with faults in front of the
store: outages, failed publications retried after their lease, malformed rows."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest
from tests.conftest import MS

from tidings.broker.base import Delivery
from tidings.broker.memory import MemoryBroker
from tidings.core.ids import new_ulid
from tidings.core.requests import parse_server_publish
from tidings.errors import StoreUnavailable
from tidings.hub._common import now_ms
from tidings.hub.emitter import Emitter
from tidings.hub.publishing import Publisher
from tidings.hub.scheduler import Scheduler
from tidings.hub.storage import Storage
from tidings.store.base import MessageRecord, ScheduleRecord
from tidings.store.memory import MemoryStore

pytestmark = pytest.mark.timeout(30)


class FlakyStore(MemoryStore):
    """A memory store whose next ``fail_*`` calls of a kind raise ``StoreUnavailable``."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_next_schedule = 0
        self.fail_append = 0
        self.fail_add = 0
        self.fail_complete = 0

    async def next_schedule_ms(self) -> int | None:
        if self.fail_next_schedule:
            self.fail_next_schedule -= 1
            raise StoreUnavailable("down for a moment")
        return await super().next_schedule_ms()

    async def append(self, records: Sequence[MessageRecord]) -> list[str]:
        if self.fail_append:
            self.fail_append -= 1
            raise StoreUnavailable("cannot write now")
        return await super().append(records)

    async def complete_schedules(self, schedule_ids: Sequence[str]) -> None:
        if self.fail_complete:
            self.fail_complete -= 1
            raise StoreUnavailable("cannot write now")
        await super().complete_schedules(schedule_ids)

    async def add_schedules(self, records: Sequence[ScheduleRecord]) -> None:
        if self.fail_add:
            self.fail_add -= 1
            raise StoreUnavailable("cannot write now")
        await super().add_schedules(records)


class Rig:
    def __init__(self) -> None:
        self.store = FlakyStore()
        self.broker = MemoryBroker()
        self.delivered: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        emitter = Emitter(None)
        publisher = Publisher(store=self.store, broker=self.broker, emitter=emitter)
        storage = Storage(store=self.store, publisher=publisher, emitter=emitter, sweep_interval=60)
        publisher.storage = storage
        self.scheduler = Scheduler(
            store=self.store, publisher=publisher, storage=storage, poll_seconds=0.05, lease_ms=300
        )

    def deliver(self, channel: str, deliveries: Sequence[Delivery]) -> None:
        self.delivered += [orjson.loads(d.payload) for d in deliveries]
        self.arrived.set()

    async def schedule(self, data: Any, *, due_ms: int | None = None, store: int = 0) -> str:
        request = parse_server_publish(
            {
                "channel": "room",
                "event": "e",
                "data": data,
                "store": store,
                "scheduleExpression": "at(2020-01-01T00:00:00)",
            }  # fmt: skip
        )
        if due_ms is not None:
            request = type(request)(**{**_fields(request), "due_ms": due_ms})
        result = await self.scheduler.schedule_server(request)
        assert result.schedule_id is not None
        return result.schedule_id

    async def wait_delivered(self, count: int) -> list[Any]:
        async with asyncio.timeout(5):
            while len(self.delivered) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return [frame["data"] for frame in self.delivered]


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(5 * MS)


def _fields(value: Any) -> dict[str, Any]:
    return {name: getattr(value, name) for name in value.__slots__}


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    r = Rig()
    await r.broker.start(r.deliver)
    r.scheduler.start()
    yield r
    await r.scheduler.stop(1)


async def test_scheduler_runs_overdue_schedules_in_due_order(rig: Rig) -> None:
    """Schedules already due run at once, earliest first, and are forgotten; accepted
    together, they share one store write."""
    base = now_ms()
    await asyncio.gather(
        *(rig.schedule(n, due_ms=base - 1000 + offset) for n, offset in enumerate((300, 100, 200)))
    )
    assert await rig.wait_delivered(3) == [1, 2, 0]
    await until(lambda: rig.scheduler.ran == 3)
    assert await rig.store.next_schedule_ms() is None


async def test_scheduler_wakes_for_a_sooner_insert(rig: Rig) -> None:
    """A loop sleeping towards a far schedule wakes for a new one due sooner."""
    await rig.schedule("far", due_ms=now_ms() + 3_600_000)
    await asyncio.sleep(100 * MS)
    await rig.schedule("soon", due_ms=now_ms() + 100)
    assert await rig.wait_delivered(1) == ["soon"]
    assert await rig.store.next_schedule_ms() is not None  # "far" still waits


async def test_scheduler_survives_a_store_outage(rig: Rig) -> None:
    """When the store cannot be reached the loop waits and tries again; nothing is lost."""
    rig.store.fail_next_schedule = 3
    await rig.schedule("after outage")
    assert await rig.wait_delivered(1) == ["after outage"]
    assert rig.store.fail_next_schedule == 0


async def test_scheduler_retries_a_failed_publication_after_its_lease(rig: Rig) -> None:
    """A scheduled message whose storing fails stays claimed and runs once its lease ends."""
    rig.store.fail_append = 1
    schedule_id = await rig.schedule("stored", store=60)
    await asyncio.sleep(100 * MS)
    assert rig.delivered == []
    assert await rig.store.delete_schedule(schedule_id, now_ms=now_ms()) is False  # running
    assert await rig.wait_delivered(1) == ["stored"]
    [record] = await rig.store.list_messages("room", now_ms=now_ms())
    assert record.data == '"stored"'


@pytest.mark.parametrize("store", [0, 60], ids=["unstored", "stored"])
async def test_scheduler_never_delivers_twice_when_completion_is_lost(rig: Rig, store: int) -> None:
    """A schedule whose completion was lost (as if its node died right after delivering) is
    claimed again after its lease; the repeated run is a duplicate and delivers nothing."""
    rig.store.fail_complete = 1
    await rig.schedule("once", store=store)
    assert await rig.wait_delivered(1) == ["once"]
    await until(lambda: rig.store.fail_complete == 0)
    await until(lambda: not rig.store._schedules)  # claimed again after 300 ms, then completed
    await asyncio.sleep(100 * MS)
    assert [frame["data"] for frame in rig.delivered] == ["once"]
    if store:
        assert len(await rig.store.list_messages("room", now_ms=now_ms())) == 1


async def test_scheduler_refuses_a_schedule_it_cannot_store(rig: Rig) -> None:
    """An accept whose store write fails raises, and nothing runs."""
    rig.store.fail_add = 1
    with pytest.raises(StoreUnavailable):
        await rig.schedule("lost")
    await asyncio.sleep(200 * MS)
    assert rig.delivered == []


async def test_scheduler_drops_malformed_rows_and_keeps_unknown_kinds(rig: Rig) -> None:
    """A payload it cannot read is dropped; a kind it does not know stays for a node that
    does; both are logged, and neither stops the loop."""
    created = now_ms()
    await rig.store.add_schedules(
        [
            ScheduleRecord(new_ulid(created), created - 10, "message", "room", "{}", created),
            ScheduleRecord(new_ulid(created), created - 10, "future-kind", "room", "{}", created),
        ]
    )
    await rig.schedule("fine")
    assert await rig.wait_delivered(1) == ["fine"]
    await asyncio.sleep(100 * MS)
    [(kept, _)] = rig.store._schedules.values()  # the malformed row is gone
    assert kept.kind == "future-kind" and kept.attempts >= 1
