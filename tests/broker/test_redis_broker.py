"""``RedisBroker`` against the broker contract on a real Redis, plus its faults: a Redis restart,
a killed subscriber connection, a stalled server, an expired publishing turn.

Integration tests need ``TIDINGS_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``); they
are skipped when it is unreachable, unless ``TIDINGS_REQUIRE_SERVICES=1``, which turns that into
a failure. Each test uses its own key prefix, deleted afterwards. Tests that stop or pause Redis
run their own ``redis-server`` on a free port instead of the shared one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import pytest_asyncio
from tests.conftest import MS
from tests.services import REDIS_URL, RedisServer, redis_server, require_redis

from tidings.broker import open_broker
from tidings.broker.base import BrokerStats, Delivery
from tidings.broker.redis import (
    MAX_PUBLISH_BYTES,
    RedisBroker,
    decode_deliveries,
    encode_deliveries,
)
from tidings.errors import BrokerUnavailable, ConfigError
from tidings.testing.broker_contract import BrokerContract, BrokerFactory, Node


@pytest_asyncio.fixture
async def prefix() -> AsyncIterator[str]:
    """A unique key prefix on the shared Redis; its keys are deleted afterwards."""
    await require_redis()
    name = f"tidings-test-{secrets.token_hex(6)}:"
    yield name
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=5)
    try:
        keys = [key async for key in client.scan_iter(match=f"{name}*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.mark.integration
class TestRedisBroker(BrokerContract):
    shared = True
    filters_by_interest = True

    @pytest.fixture
    def make_broker(self, prefix: str) -> BrokerFactory:
        return lambda: RedisBroker(REDIS_URL, prefix=prefix)


StartBroker = Callable[..., Awaitable[Node]]


@pytest_asyncio.fixture
async def start_broker() -> AsyncIterator[StartBroker]:
    """``await start_broker(url, **options)``: a started ``RedisBroker`` node, closed after."""
    nodes: list[Node] = []

    async def start(url: str, **options: Any) -> Node:
        node = Node(RedisBroker(url, **options))
        nodes.append(node)
        await node.broker.start(node.deliver)
        return node

    yield start
    for node in nodes:
        await node.broker.aclose()


@pytest_asyncio.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    """A private redis-server (the shared one must never be stopped)."""
    async with redis_server() as server:
        yield server


async def publish_until_delivered(
    publisher: Node, receiver: Node, channel: str, timeout: float = 15
) -> None:
    """Publish markers until ``receiver`` gets one: live delivery is at-most-once, so markers
    sent before the receiver re-subscribed are lost, not late."""
    deadline = time.monotonic() + timeout
    while not receiver.on(channel):
        assert time.monotonic() < deadline, f"delivery on {channel!r} did not resume"
        try:
            await publisher.broker.publish(channel, [Delivery(b'"marker"')])
        except BrokerUnavailable:
            pass
        await asyncio.sleep(50 * MS)


def _logged(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(text in record.getMessage() for record in caplog.records)


# Faults


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_redis_broker_survives_a_redis_restart(
    own_redis: RedisServer, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis dies: commands fail fast with BrokerUnavailable, subscribing still works locally,
    the outage is logged once per node; Redis comes back on the same port: every channel of
    interest (also one subscribed during the outage) is re-subscribed and delivery resumes."""
    caplog.set_level(logging.INFO, logger="tidings.broker.redis")
    options = {"prefix": "t:", "reconnect_max": 0.5}
    a = await start_broker(own_redis.url, **options)
    b = await start_broker(own_redis.url, **options)
    await a.broker.subscribe("room")
    await b.broker.publish("room", [Delivery(b'"before"')])
    assert await a.wait_for("room", 1) == [b'"before"']

    own_redis.stop()
    for attempt in (
        lambda: b.broker.publish("room", [Delivery(b'"lost"')]),
        lambda: b.broker.claim_once("jti:x", "used", 60_000),
        lambda: b.broker.release("jti:x", "used"),
        lambda: b.broker.count("room"),
    ):
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await attempt()
        assert time.monotonic() - started < 2.5
    with pytest.raises(BrokerUnavailable):
        async with b.broker.ordering("room"):
            pass
    async with asyncio.timeout(1):
        await a.broker.subscribe("late")  # recorded; the listener subscribes it on reconnect
    await asyncio.sleep(300 * MS)  # the listeners notice and retry a few times

    await own_redis.start()
    a.received.clear()
    await publish_until_delivered(b, a, "late")
    await publish_until_delivered(b, a, "room")
    seen = len(a.on("room"))
    async with b.broker.ordering("room") as mint:
        minted = mint(int(time.time() * 1000))
        await b.broker.publish("room", [Delivery(minted.encode())])
    assert (await a.wait_for("room", seen + 1))[-1] == minted.encode()
    assert await b.broker.claim_once("jti:x", "used", 60_000) is None
    assert _logged(caplog, "is unreachable") == 2  # once per node, not per attempt
    assert _logged(caplog, "re-subscribing 2 channels") >= 1
    assert _logged(caplog, "reachable again") >= 1


@pytest.mark.integration
async def test_redis_broker_resubscribes_after_its_connection_is_killed(
    own_redis: RedisServer, start_broker: StartBroker
) -> None:
    """Redis closes the subscriber connection (CLIENT KILL, or an output buffer overflow):
    the node reconnects and re-subscribes without any outage of the commands."""
    a = await start_broker(own_redis.url, reconnect_max=0.5)
    b = await start_broker(own_redis.url)
    await a.broker.subscribe("room")
    await b.broker.publish("room", [Delivery(b'"1"')])
    await a.wait_for("room", 1)
    a_stats, b_stats = _stats(a.broker), _stats(b.broker)
    assert a_stats.reconnects == 0
    trips = b_stats.round_trips
    assert trips >= 1 and b_stats.round_trip_seconds > 0
    killed = await own_redis.command("CLIENT", "KILL", "TYPE", "pubsub")
    assert killed >= 1
    a.received.clear()
    await publish_until_delivered(b, a, "room", timeout=10)
    assert a_stats.reconnects >= 1  # counted for /metrics
    assert b_stats.round_trips > trips


def _stats(broker: object) -> BrokerStats:
    stats = getattr(broker, "stats", None)
    assert isinstance(stats, BrokerStats)
    return stats


@pytest.mark.integration
@pytest.mark.timeout(60)
async def test_redis_broker_detects_a_silent_server_with_ping(
    own_redis: RedisServer, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A server that stops answering (as behind a dead network path) is noticed through an
    unanswered PING, and the node reconnects once it answers again."""
    caplog.set_level(logging.INFO, logger="tidings.broker.redis")
    a = await start_broker(own_redis.url, ping_interval=0.2, command_timeout=0.3, reconnect_max=0.3)
    b = await start_broker(own_redis.url)
    await a.broker.subscribe("room")
    await own_redis.command("CLIENT", "PAUSE", "1500", "ALL")
    await asyncio.sleep(1.2)
    assert _logged(caplog, "no reply to PING") == 1
    await asyncio.sleep(0.5)
    await publish_until_delivered(b, a, "room", timeout=10)


async def test_redis_broker_start_fails_fast_when_unreachable() -> None:
    """Nothing listens: ``start`` raises BrokerUnavailable within the connect timeout."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    broker = RedisBroker(f"redis://127.0.0.1:{port}/0", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable, match="unreachable|failed"):
        await broker.start(lambda channel, deliveries: None)
    assert time.monotonic() - started < 2
    await broker.aclose()


@pytest.mark.integration
async def test_redis_broker_refuses_publishing_after_its_turn_expired(
    prefix: str, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """A turn that outlives its lock is taken over; its late PUBLISH is refused (so the other
    node's messages are not overtaken) and the overrun is logged."""
    a = await start_broker(REDIS_URL, prefix=prefix, lock_ttl_ms=200)
    b = await start_broker(REDIS_URL, prefix=prefix, lock_ttl_ms=200)
    await b.broker.subscribe("room")
    now = int(time.time() * 1000)
    async with a.broker.ordering("room") as mint_a:
        late = mint_a(now)
        async with b.broker.ordering("room") as mint_b:  # waits for a's lock to expire
            on_time = mint_b(now)
            await b.broker.publish("room", [Delivery(on_time.encode())])
        with pytest.raises(BrokerUnavailable, match="expired"):
            await a.broker.publish("room", [Delivery(late.encode())])
    assert await b.wait_for("room", 1) == [on_time.encode()]
    await asyncio.sleep(50 * MS)
    assert b.payloads("room") == [on_time.encode()]
    assert _logged(caplog, "over its 200 ms lock") == 1


@pytest.mark.integration
async def test_redis_broker_drops_malformed_messages_and_goes_on(
    prefix: str, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage on a channel's pub/sub name is logged and dropped; the listener keeps going."""
    a = await start_broker(REDIS_URL, prefix=prefix)
    await a.broker.subscribe("room")
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(REDIS_URL)
    try:
        await raw.publish(f"{prefix}ch:room", b"\x09garbage")
        await raw.publish(f"{prefix}ch:room", b"\x01\x00\x00\x00\x00\x00\x09")
    finally:
        await raw.aclose()
    await a.broker.publish("room", [Delivery(b'"fine"')])
    assert await a.wait_for("room", 1) == [b'"fine"']
    assert _logged(caplog, "malformed") == 2


@pytest.mark.integration
async def test_redis_broker_subscribe_returns_once_redis_confirmed(
    prefix: str, start_broker: StartBroker
) -> None:
    """After ``subscribe`` returns, Redis counts the node as a subscriber; after
    ``unsubscribe`` it stops counting it."""
    a = await start_broker(REDIS_URL, prefix=prefix)
    import redis.asyncio as aioredis

    raw = aioredis.Redis.from_url(REDIS_URL)
    name = f"{prefix}ch:room"
    try:
        await a.broker.subscribe("room")
        assert await raw.pubsub_numsub(name) == [(name.encode(), 1)]
        await a.broker.unsubscribe("room")
        for _ in range(100):
            if await raw.pubsub_numsub(name) == [(name.encode(), 0)]:
                break
            await asyncio.sleep(10 * MS)
        else:
            raise AssertionError("still subscribed")
    finally:
        await raw.aclose()


@pytest.mark.integration
async def test_redis_broker_sees_a_confirmation_read_before_its_send_returned(
    prefix: str, start_broker: StartBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """Sending may yield to the listener, which can read Redis's confirmation before the
    sending task resumes (uvloop writes at once, so this happened under load): ``subscribe``
    still returns on that confirmation instead of waiting out the command timeout."""
    a = await start_broker(REDIS_URL, prefix=prefix, command_timeout=1.0)
    conn: Any = a.broker._sub  # type: ignore[attr-defined]
    real_send = conn.send_command

    async def send_then_yield(*args: Any, **kwargs: Any) -> None:
        await real_send(*args, **kwargs)
        await asyncio.sleep(200 * MS)  # the listener reads the reply meanwhile

    conn.send_command = send_then_yield
    with caplog.at_level(logging.WARNING, logger="tidings.broker.redis"):
        for channel in ("room", "lobby"):
            await a.broker.subscribe(channel)
        await a.broker.unsubscribe("room")
        await a.broker.subscribe("room")
    assert _logged(caplog, "did not confirm") == 0
    await a.broker.publish("room", [Delivery(b'"after"')])
    assert await a.wait_for("room", 1) == [b'"after"']


# URLs and the wire format


async def test_redis_broker_url_options() -> None:
    """``prefix`` is tidings' option; the others go to redis-py; RESP2 is always used."""
    broker = open_broker(
        "redis://:pw@example.invalid:6380/3?prefix=app1:&socket_timeout=7&protocol=3"
    )
    assert isinstance(broker, RedisBroker)
    try:
        assert broker.prefix == "app1:"
        assert broker.where == "example.invalid:6380/3"
        kwargs = broker._sub_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 7.0 and kwargs["protocol"] == 2
        assert kwargs["password"] == "pw" and "prefix" not in kwargs
    finally:
        await broker.aclose()
    tls = RedisBroker.from_url("rediss://example.invalid:6380/0")
    try:
        assert tls._sub_pool.connection_class.__name__ == "SSLConnection"
    finally:
        await tls.aclose()


@pytest.mark.parametrize(
    "url",
    [
        "redis://:secret@h:6379/0?socket_timeout=soon",
        "redis://:secret@h:6379/0?prefix=",
    ],
)
def test_redis_broker_refuses_bad_urls_without_echoing_passwords(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        RedisBroker.from_url(url)
    assert "secret" not in str(info.value)


def test_wire_format_round_trips_and_splits_big_batches() -> None:
    """Deliveries survive encoding; big batches are split in order at item boundaries."""
    batch = [Delivery(b"x" * 100_000, f"c{i}" if i % 2 else None) for i in range(12)]
    batch.append(Delivery("😀".encode(), "é"))
    batch.append(Delivery(b'{"event":"hotsock.channelStorageUpdated"}', None, "réglages"))
    payloads = encode_deliveries(batch)
    assert len(payloads) > 1
    assert all(len(p) <= MAX_PUBLISH_BYTES for p in payloads)
    assert [d for p in payloads for d in decode_deliveries(p)] == batch
    huge = [Delivery(b"y" * (MAX_PUBLISH_BYTES + 1))]
    assert [d for p in encode_deliveries(huge) for d in decode_deliveries(p)] == huge
    assert encode_deliveries([]) == []


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x02\x00",
        b"\x02\x00\x05\x00\x00\x00\x00\x00\x01ab",
        b"\x02\x00\x00\x00\x00\x00\x00\x00\x09x",
        b"\x02\x00\x00\x00\x03\x00\x00\x00\x00ab",
    ],
)
def test_wire_format_rejects_malformed_payloads(data: bytes) -> None:
    with pytest.raises(ValueError):
        decode_deliveries(data)
