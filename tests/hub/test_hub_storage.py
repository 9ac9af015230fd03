"""Channel storage in the hub (spec §6.1 step 7, §11): the lane's ordering of confirmations,
entries and writes, and refused store writes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from tests.conftest import make_settings
from tests.hub.conftest import HubHarness

from tidings.broker.memory import MemoryBroker
from tidings.core.storage import StorageWrite
from tidings.errors import StoreUnavailable
from tidings.hub.hub import Hub
from tidings.store.base import StorageChange, StorageOutcome
from tidings.store.memory import MemoryStore

GAME = "game.lobby"
OBSERVER = {"channels": {"game.*": {"subscribe": True, "storage": {"*": {"observe": True}}}}}
WRITER = {"uid": "w", "channels": {"game.*": {"storage": {"*": {"set": True}}}}}


async def until(condition: Any) -> None:
    """Wait (up to 5 s) for ``condition()`` to hold: the lane runs in its own task."""
    async with asyncio.timeout(5):
        while not condition():
            await asyncio.sleep(0.005)


def server_write(key: str, value: int) -> StorageWrite:
    return StorageWrite(
        channel=GAME,
        key=key,
        data_json=str(value).encode(),
        store_seconds=-1,
        uid=None,
        umd_json=b"null",
        emit_event=False,
        trigger="server.lambda",
    )


async def test_entries_follow_the_confirmation_even_while_writes_race(
    harness: HubHarness,
) -> None:
    """Writes queued around a subscribe: nothing reaches the new observer before its
    hotsock.subscribed, and its last word on every key is the stored value."""
    hub = harness.hub
    conn, outlet = await harness.connect(OBSERVER)
    outlet.take()  # hotsock.connected
    before = [hub.write_storage(server_write(f"k{n % 5}", n)) for n in range(20)]
    subscribing = asyncio.ensure_future(
        harness.send(conn, {"event": "hotsock.subscribe", "channel": GAME})
    )
    await asyncio.sleep(0)
    after = [hub.write_storage(server_write(f"k{n % 5}", n)) for n in range(20, 40)]
    await asyncio.gather(subscribing, *before, *after)
    frames = outlet.take()
    events = [f["event"] for f in frames]
    assert events[0] == "hotsock.subscribed", events
    last: dict[str, Any] = {}
    for frame in frames[1:]:
        assert frame["event"] == "hotsock.channelStorageUpdated"
        last[frame["key"]] = frame["data"]
    assert last == {f"k{n}": 35 + n for n in range(5)}


async def test_a_subscription_that_observes_nothing_reads_no_storage() -> None:
    """Without any ``observe`` on the channel, subscribing never touches the storage."""

    class CountingStore(MemoryStore):
        lists = 0

        async def list_storage(self, channel: str, **kwargs: Any) -> Any:
            CountingStore.lists += 1
            return await super().list_storage(channel, **kwargs)

    hub = Hub(settings=make_settings(), store=CountingStore(), broker=MemoryBroker())
    await hub.start()
    try:
        harness = HubHarness(hub)
        await hub.write_storage(server_write("k", 1))
        [(_, plain)] = await harness.subscribed(GAME, {"channels": {GAME: {"subscribe": True}}})
        assert CountingStore.lists == 0
        [(_, observer)] = await harness.subscribed(GAME, OBSERVER)
        assert CountingStore.lists == 1
        await hub.write_storage(server_write("k", 2))
        assert plain.take() == []  # no observe: no update either
        assert [f["data"] for f in observer.take()] == [2]
    finally:
        await hub.drain()


async def test_a_refused_store_write_is_reported_and_changes_nothing() -> None:
    """A store outage fails the write: the writer hears SERVICE_UNAVAILABLE, observers
    nothing, and the stored value stays."""

    class FlakyStore(MemoryStore):
        down = False

        async def apply_storage(
            self, changes: Sequence[StorageChange], *, now_ms: int
        ) -> list[StorageOutcome]:
            if self.down:
                raise StoreUnavailable("the store is down for this test")
            return await super().apply_storage(changes, now_ms=now_ms)

    store = FlakyStore()
    hub = Hub(settings=make_settings(), store=store, broker=MemoryBroker())
    await hub.start()
    try:
        harness = HubHarness(hub)
        [(_, observer)] = await harness.subscribed(GAME, OBSERVER)
        writer, outlet = await harness.connect(WRITER)
        outlet.take()  # hotsock.connected
        await harness.send(
            writer, {"event": "hotsock.channelStorageSet", "channel": GAME, "key": "k", "data": 1}
        )
        await until(lambda: observer.frames)
        assert [f["data"] for f in observer.take()] == [1]
        store.down = True
        await harness.send(
            writer, {"event": "hotsock.channelStorageSet", "channel": GAME, "key": "k", "data": 2}
        )
        await until(lambda: outlet.frames)
        [error] = outlet.take()
        assert error["event"] == "hotsock.error" and error["channel"] == GAME
        assert error["error"]["code"] == "SERVICE_UNAVAILABLE"
        assert observer.take() == []
        entry = await store.get_storage(GAME, "k", now_ms=0)
        assert entry is not None and entry.data == "1"
    finally:
        await hub.drain()
