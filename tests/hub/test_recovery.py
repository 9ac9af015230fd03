"""Hub tests of hub/recovery.py: concurrent resumes from one ID share a store read only when
the read started after their own hold (spec §24.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.conftest import make_settings
from tests.hub.conftest import HubHarness

from tidings.broker.memory import MemoryBroker
from tidings.core.ids import ulid_floor
from tidings.hub._common import now_ms
from tidings.hub.hub import Hub
from tidings.store.base import MessageRecord
from tidings.store.memory import MemoryStore

ROOM = {"channels": {"room": {"subscribe": True, "historyStart": 0}}}


class GatedStore(MemoryStore):
    """A memory store whose reads wait for the gate, and are counted."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.reads = 0

    async def list_messages(self, channel: str, **kwargs: Any) -> list[MessageRecord]:
        self.reads += 1
        await self.gate.wait()
        return await super().list_messages(channel, **kwargs)


@pytest.fixture
async def gated() -> AsyncIterator[tuple[HubHarness, GatedStore]]:
    store = GatedStore()
    hub = Hub(settings=make_settings(), store=store, broker=MemoryBroker())
    await hub.start()
    yield HubHarness(hub), store
    store.gate.set()
    await hub.drain()


def record(message_id: str) -> MessageRecord:
    return MessageRecord(
        id=message_id,
        channel="room",
        event="e",
        data="1",
        uid=None,
        umd="null",
        created_ms=now_ms(),
        expires_ms=None,
        trigger="server.http",
        connection_id=None,
        source_ip=None,
        user_agent=None,
    )


async def test_recovery_concurrent_resumes_share_one_read_started_after_their_holds(
    gated: tuple[HubHarness, GatedStore],
) -> None:
    """Subscribers holding before a read starts share it (one read, the same replay); one that
    holds after it started gets a read of its own, which cannot miss what the first did not
    see."""
    harness, store = gated
    base = now_ms() - 10_000
    ids = [ulid_floor(base + i) for i in range(3)]
    await store.append([record(i) for i in ids])
    conns = [await harness.connect(ROOM) for _ in range(3)]
    for _, outlet in conns:
        outlet.take()
    frame = {"event": "hotsock.subscribe", "channel": "room", "data": {"resumeFrom": ids[0]}}
    first = [asyncio.ensure_future(harness.send(conn, frame)) for conn, _ in conns[:2]]
    while store.reads == 0:
        await asyncio.sleep(0)
    late = asyncio.ensure_future(harness.send(conns[2][0], frame))
    while store.reads < 2:
        await asyncio.sleep(0)
    assert store.reads == 2  # the first two shared one read; the late one has its own
    store.gate.set()
    await asyncio.gather(*first, late)
    assert store.reads == 2
    for _, outlet in conns:
        subscribed, *messages = outlet.take()
        assert subscribed["data"] == {"resumed": True, "replayed": 2}
        assert [m["id"] for m in messages] == ids[1:]
