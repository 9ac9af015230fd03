"""The hub's command handling, subscriptions, publishing and history, without sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.hub.conftest import HubHarness

from tidings.core.requests import parse_server_publish

OPEN: dict[str, Any] = {
    "uid": "ann",
    "channels": {
        "room": {"subscribe": True, "messages": {"*": {"publish": True, "store": 60, "echo": True}}}
    },
}


async def test_subscribe_confirms_then_refuses_a_second_time(harness: HubHarness) -> None:
    """hotsock.subscribe answers hotsock.subscribed once, then ALREADY_SUBSCRIBED."""
    conn, out = await harness.connect(OPEN)
    assert [f["event"] for f in out.take()] == ["hotsock.connected"]
    await harness.send(conn, {"event": "hotsock.subscribe", "channel": "room"})
    [confirmed] = out.take()
    assert confirmed["event"] == "hotsock.subscribed" and confirmed["channel"] == "room"
    assert confirmed["meta"]["uid"] == "ann"
    await harness.send(conn, {"event": "hotsock.subscribe", "channel": "room"})
    [error] = out.take()
    assert error["event"] == "hotsock.error"
    assert error["error"]["code"] == "ALREADY_SUBSCRIBED"
    assert await harness.hub.subscriptions_count("room") == 1


async def test_subscribe_without_permission_is_denied(harness: HubHarness) -> None:
    """A channel the token does not grant is SUBSCRIBE_PERMISSION_DENIED, channel as sent."""
    conn, out = await harness.connect(OPEN)
    out.take()
    await harness.send(conn, {"event": "hotsock.subscribe", "channel": "elsewhere"})
    [error] = out.take()
    assert error["error"]["code"] == "SUBSCRIBE_PERMISSION_DENIED"
    assert error["channel"] == "elsewhere"
    assert await harness.hub.subscriptions_count("elsewhere") == 0


async def test_unsubscribe_stops_delivery(harness: HubHarness) -> None:
    """After hotsock.unsubscribed no message of the channel reaches the connection."""
    conn, out = await harness.connect(OPEN)
    await harness.send(conn, {"event": "hotsock.subscribe", "channel": "room"})
    await harness.send(conn, {"event": "hotsock.unsubscribe", "channel": "room"})
    assert [f["event"] for f in out.take()][-1] == "hotsock.unsubscribed"
    await harness.hub.publish_server(parse_server_publish({"channel": "room", "event": "e"}))
    assert out.take() == []
    assert await harness.hub.subscriptions_count("room") == 0


async def test_client_messages_keep_channel_order(harness: HubHarness) -> None:
    """Messages sent in one burst arrive in send order with strictly increasing IDs."""
    (conn, _), (reader, inbox) = await harness.subscribed("room", OPEN, OPEN)
    for n in range(50):
        await harness.send(conn, {"event": "chat", "channel": "room", "data": n})
    for _ in range(100):
        if len(inbox.frames) == 50:
            break
        await asyncio.sleep(0.01)
    got = inbox.take()
    assert [f["data"] for f in got] == list(range(50))
    ids = [f["id"] for f in got]
    assert ids == sorted(ids) and len(set(ids)) == 50
    assert [f["meta"]["uid"] for f in got] == ["ann"] * 50


async def test_publish_without_echo_skips_the_sender(harness: HubHarness) -> None:
    """Without ``echo`` the sender gets no copy; other subscribers do."""
    quiet = {"channels": {"room": {"subscribe": True, "messages": {"*": {"publish": True}}}}}
    (sender, sent), (reader, inbox) = await harness.subscribed("room", quiet, quiet)
    await harness.hub.publish_client(sender, "room", "chat", "hi", trigger="client.http")
    assert [f["data"] for f in inbox.take()] == ["hi"]
    assert sent.take() == []


async def test_server_publish_deduplicates_by_id(harness: HubHarness) -> None:
    """A repeated deduplicationId answers the original ID and delivers nothing more."""
    conn, out = await harness.connect(OPEN)
    await harness.send(conn, {"event": "hotsock.subscribe", "channel": "room"})
    out.take()
    body = {"channel": "room", "event": "e", "deduplicationId": "once", "store": 60}
    first = await harness.hub.publish_server(parse_server_publish(body))
    again = await harness.hub.publish_server(parse_server_publish(body))
    assert (again.id, again.duplicate, first.duplicate) == (first.id, True, False)
    assert [f["id"] for f in out.take()] == [first.id]


async def test_list_messages_sees_only_the_subscription_window(harness: HubHarness) -> None:
    """Without historyStart, history starts at the subscription; stored messages are listed
    with their meta, unstored ones never."""
    hub = harness.hub
    await hub.publish_server(parse_server_publish({"channel": "room", "event": "old", "store": 60}))
    await asyncio.sleep(0.002)  # IDs carry milliseconds: the subscription starts strictly later
    conn, _ = await harness.connect(OPEN)
    await harness.send(conn, {"event": "hotsock.subscribe", "channel": "room"})
    await hub.publish_client(conn, "room", "kept", {"n": 1}, trigger="client.http")
    await hub.publish_server(parse_server_publish({"channel": "room", "event": "gone"}))
    page = await hub.list_messages(conn, {"channel": "room"})
    import orjson

    [item] = orjson.loads(page)["messages"]
    assert (item["event"], item["data"], item["meta"]["uid"]) == ("kept", {"n": 1}, "ann")


async def test_list_messages_requires_a_subscription(harness: HubHarness) -> None:
    """listMessages on a channel the connection is not subscribed to is refused."""
    import pytest

    from tidings.errors import ErrorCode, ProtocolError

    conn, _ = await harness.connect(OPEN)
    with pytest.raises(ProtocolError) as info:
        await harness.hub.list_messages(conn, {"channel": "room"})
    assert info.value.code is ErrorCode.SUBSCRIPTION_REQUIRED


async def test_close_connection_removes_its_subscriptions(harness: HubHarness) -> None:
    """Closing a connection removes it and its counted subscriptions."""
    conn, _ = await harness.connect(OPEN)
    await harness.send(conn, {"event": "hotsock.subscribe", "channel": "room"})
    await harness.hub.close_connection(conn)
    assert conn.id not in harness.hub.connections
    assert await harness.hub.subscriptions_count("room") == 0


async def test_paused_transport_fills_the_backlog_then_evicts(harness: HubHarness) -> None:
    """While the transport is paused frames wait in a backlog bounded in bytes; a stuck reader
    is closed 1013 on the frame that takes it past the bound, not before, whatever the count."""
    from tidings.hub.outbound import Frame

    frames = [Frame(b'{"event":"e","data":%d}' % n) for n in range(3000)]
    harness.limit_backlog(sum(len(f) for f in frames))
    conn, out = await harness.connect({})
    out.take()
    out.paused = True
    for frame in frames:
        conn.send(frame)
    assert out.frames == [] and out.closed is None
    conn.send(Frame(b'{"event":"e","data":3000}'))
    assert out.closed is not None and out.closed == (1013, "slow consumer")
