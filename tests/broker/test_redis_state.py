"""RedisClusterState against the machine's real Redis: presence, counts, liveness, forwarding.

Skipped when Redis (``TIDINGS_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) is
unreachable, unless ``TIDINGS_REQUIRE_SERVICES=1``. Each test uses its own key prefix.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from tests.services import REDIS_URL, require_redis

from tidings.broker.base import PresenceUpdate
from tidings.broker.redis_state import RedisClusterState
from tidings.core.presence import Change
from tidings.errors import BrokerUnavailable, ErrorCode, ProtocolError

pytestmark = pytest.mark.integration


@pytest.fixture
async def redis() -> AsyncIterator[Any]:
    import redis.asyncio as aioredis

    await require_redis()
    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Any) -> AsyncIterator[str]:
    name = f"tidings-test-{secrets.token_hex(4)}:"
    yield name
    keys = [key async for key in redis.scan_iter(match=f"{name}*")]
    if keys:
        await redis.delete(*keys)


def node(redis: Any, prefix: str, node_id: str, **kw: Any) -> RedisClusterState:
    return RedisClusterState(redis, prefix=prefix, node_id=node_id, **kw)


async def test_presence_across_nodes_dedups_by_uid(redis: Any, prefix: str) -> None:
    """Joins on two nodes share one member list; the uid's last subscription removes it."""
    a, b = node(redis, prefix, "A"), node(redis, prefix, "B")
    added = await a.presence_join("presence.x", "c1", "jim", None, max_bytes=10_000)
    assert added.change is Change.ADDED and added.members == [{"uid": "jim", "umd": None}]
    same = await b.presence_join("presence.x", "c2", "jim", None, max_bytes=10_000)
    assert same.change is Change.NONE and same.member is None
    pam = await b.presence_join("presence.x", "c3", "pam", {"k": 1}, max_bytes=10_000)
    assert pam.members == [{"uid": "jim", "umd": None}, {"uid": "pam", "umd": {"k": 1}}]
    updated = await a.presence_join("presence.x", "c4", "jim", {"s": "away"}, max_bytes=10_000)
    assert updated.change is Change.UPDATED and updated.member == {
        "uid": "jim",
        "umd": {"s": "away"},
    }
    for holder in ("c1", "c2"):
        assert (await a.presence_leave("presence.x", holder, "jim")).change is Change.NONE
    gone = await b.presence_leave("presence.x", "c4", "jim")
    assert gone == PresenceUpdate(
        Change.REMOVED, {"uid": "jim", "umd": {"s": "away"}}, [{"uid": "pam", "umd": {"k": 1}}]
    )
    assert (await a.presence_leave("presence.x", "c4", "jim")).change is Change.NONE
    assert await b.presence_members("presence.x") == [{"uid": "pam", "umd": {"k": 1}}]


async def test_presence_capacity_is_cluster_wide(redis: Any, prefix: str) -> None:
    a, b = node(redis, prefix, "A"), node(redis, prefix, "B")
    await a.presence_join("presence.x", "c1", "u1", "x" * 40, max_bytes=130)
    await b.presence_join("presence.x", "c2", "u2", "x" * 40, max_bytes=130)
    with pytest.raises(ProtocolError) as info:
        await a.presence_join("presence.x", "c3", "u3", "x" * 40, max_bytes=130)
    assert info.value.code is ErrorCode.PRESENCE_CHANNEL_CAPACITY_REACHED
    assert len(await a.presence_members("presence.x")) == 2


async def test_concurrent_joins_and_counts_stay_exact(redis: Any, prefix: str) -> None:
    a, b = node(redis, prefix, "A"), node(redis, prefix, "B")
    await a.start()
    await b.start()
    try:
        await asyncio.gather(
            *(
                (a if i % 2 else b).presence_join(
                    "presence.x", f"c{i}", f"u{i % 10}", None, max_bytes=100_000
                )
                for i in range(60)
            )
        )
        assert len(await a.presence_members("presence.x")) == 10
        await asyncio.gather(*((a if i % 2 else b).count_add("room", 1) for i in range(50)))
        await asyncio.gather(*((a if i % 2 else b).count_add("room", -1) for i in range(20)))
        assert await a.count("room") == await b.count("room") == 30
    finally:
        await a.aclose()
        await b.aclose()


async def test_dead_node_is_reaped(redis: Any, prefix: str) -> None:
    """A node that stops heart-beating loses its presence and counts on the others."""
    reaped: list[tuple[str, PresenceUpdate | None, int | None]] = []

    async def on_reaped(channel: str, update: PresenceUpdate | None, count: int | None) -> None:
        reaped.append((channel, update, count))

    dying = node(redis, prefix, "dying", node_timeout=0.5)
    alive = node(redis, prefix, "alive", node_timeout=0.5, on_reaped=on_reaped)
    await dying.start()
    await alive.start()
    try:
        await dying.presence_join("presence.x", "c1", "ann", None, max_bytes=1000)
        await alive.presence_join("presence.x", "c2", "bob", None, max_bytes=1000)
        await dying.count_add("room", 3)
        await alive.count_add("room", 1)
        for task in dying._tasks:  # the process "dies": no heartbeats, no clean exit
            task.cancel()
        for _ in range(40):
            if len(reaped) >= 2:
                break
            await asyncio.sleep(0.05)
        assert await alive.presence_members("presence.x") == [{"uid": "bob", "umd": None}]
        assert await alive.count("room") == 1
        by_channel = {channel: (update, count) for channel, update, count in reaped}
        update, _ = by_channel["presence.x"]
        assert update is not None and update.member == {"uid": "ann", "umd": None}
        assert by_channel["room"] == (None, 1)
    finally:
        await alive.aclose()


async def test_forwarding_reaches_the_holding_node(redis: Any, prefix: str) -> None:
    async def serve(request: bytes) -> bytes:
        return b"answered:" + request

    holder = node(redis, prefix, "H", serve=serve)
    asker = node(redis, prefix, "Q", forward_timeout=0.5)
    await holder.start()
    await asker.start()
    try:
        await holder.register_connection("conn-1")
        assert await asker.locate("conn-1") == "H"
        assert await asker.forward("conn-1", b"ping") == b"answered:ping"
        assert await asker.forward("nobody", b"x") is None
        assert await asker.forward("", b"x") is None
        await holder.forget_connection("conn-1")
        assert await asker.forward("conn-1", b"x") is None
        await asker.register_connection("conn-q")  # a connection of a node that never answers
        await redis.hset(f"{prefix}conns", "conn-z", "silent-node")
        with pytest.raises(BrokerUnavailable):
            await asker.forward("conn-z", b"x")
    finally:
        await holder.aclose()
        await asker.aclose()


async def test_state_is_rewritten_after_redis_forgets_it(redis: Any, prefix: str) -> None:
    """If Redis restarts empty, the next heartbeat restores connection locations and counts."""
    a = node(redis, prefix, "A")
    await a.start()
    try:
        await a.register_connection("c1")
        await a.count_add("room", 2)
        keys = [key async for key in redis.scan_iter(match=f"{prefix}*")]
        await redis.delete(*keys)  # what a restart without persistence leaves
        assert await a.locate("c1") is None and await a.count("room") == 0
        await a._beat()
        assert await a.locate("c1") == "A"
        assert await a.count("room") == 2
        await a.forget_connection("c1")
        assert await a.locate("c1") is None
    finally:
        await a.aclose()


async def test_broadcast_waits_for_live_nodes_only(redis: Any, prefix: str) -> None:
    """Broadcast reaches nodes that answer, ignores stale heartbeats, and reports a live node
    that stays silent as unavailable."""

    async def control(command: bytes) -> bytes:
        return b"done:" + command

    answering = node(redis, prefix, "R", control=control)
    asker = node(redis, prefix, "Q", control=control, forward_timeout=0.3)
    await answering.start()
    await asker.start()
    try:
        assert await asker.broadcast(b"c") == [b"done:c", b"done:c"]
        await redis.zadd(f"{prefix}nodes", {"long-dead": 1})
        assert len(await asker.broadcast(b"c")) == 2
        await redis.zadd(f"{prefix}nodes", {"silent": int(time.time() * 1000)})
        with pytest.raises(BrokerUnavailable, match="1 node"):
            await asker.broadcast(b"c")
        assert await redis.llen(f"{prefix}ctl:silent") == 0  # withdrawn: never run late
    finally:
        await answering.aclose()
        await asker.aclose()
