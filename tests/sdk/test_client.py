"""Tests for ``tidings.Client`` against a real tidings node on 127.0.0.1: subscriptions, handlers
and iterators, presence members, client messages, the Client HTTP API, reconnects with back-off
and resume, and a server restart in the middle of a stream."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from tests.conftest import API_KEY, MS, Server, make_settings, make_token
from tests.services import free_port

from tidings import Client, ClientError
from tidings.errors import CloseCode
from tidings.sdk.client import Member, Message
from tidings.server.app import Node

STORED = {"*": {"publish": True, "echo": True, "store": 3600}}
ROOM = {
    "uid": "bot",
    "channels": {
        "room": {"subscribe": True, "historyStart": 0, "messages": STORED},
        "presence.lobby": {"subscribe": True},
    },
}


async def publish(http: aiohttp.ClientSession, base: str, data: Any, *, dedup: str = "") -> str:
    body = {"channel": "room", "event": "tick", "data": data, "store": 3600}
    body["eagerIdGeneration"] = True
    if dedup:
        body["deduplicationId"] = dedup
    async with http.post(
        f"{base}/publish",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 202, body
        return str(body["id"])


async def take(stream: AsyncIterator[Message], count: int) -> list[Message]:
    got = []
    async with asyncio.timeout(5):
        async for message in stream:
            got.append(message)
            if len(got) == count:
                break
    return got


async def test_client_subscribe_iterate_handlers_and_send(server: Server) -> None:
    """Messages reach ``channel()`` iterators and per-event handlers; ``send_message`` publishes
    over the socket."""
    async with Client(server.ws_url, token=make_token(ROOM)) as client:
        assert client.connection_id
        subscribed = await client.subscribe("room")
        assert subscribed.channel == "room" and subscribed.resumed is None
        seen: list[Message] = []
        client.on("tick", seen.append, channel="room")
        everything: list[str] = []

        async def record(message: Message) -> None:
            everything.append(message.event)

        remove = client.on("*", record)
        stream = client.channel("room")  # registered at once: nothing after this is missed
        first = asyncio.ensure_future(take(stream, 2))
        published = await publish(server.http, server.base, 1)
        await client.send_message("room", "chat", {"text": "hi"})
        got = await first
        assert [m.event for m in got] == ["tick", "chat"]
        assert got[0].id == published and got[0].data == 1
        assert got[1].meta == {"uid": "bot", "umd": None}
        assert [m.id for m in seen] == [published]
        remove()
        assert "tick" in everything and "chat" in everything


async def test_client_subscribe_refused_raises_and_forgets(server: Server) -> None:
    """A refused subscription raises ClientError with the server's code."""
    async with Client(server.ws_url, token=make_token(ROOM)) as client:
        with pytest.raises(ClientError) as refused:
            await client.subscribe("secret")
        assert refused.value.code == "SUBSCRIBE_PERMISSION_DENIED"
        assert client.members("secret") is None
        await client.subscribe("room")  # the client still works


async def test_client_subscribe_token_and_unsubscribe(server: Server) -> None:
    """A subscribe token (or a provider of them) grants the channel; unsubscribe stops it."""
    calls: list[str] = []

    async def sub_token() -> str:
        calls.append("x")
        return make_token(
            {"uid": "bot", "channels": {"extra": {"subscribe": True}}}, scope="subscribe"
        )

    async with Client(server.ws_url, token=make_token(ROOM)) as client:
        await client.subscribe("extra", token=sub_token)
        assert calls == ["x"]
        await client.unsubscribe("extra")
        with pytest.raises(ClientError):
            await client.unsubscribe("extra")


async def test_client_presence_members_follow_joins_and_leaves(server: Server) -> None:
    """members() holds the presence list of hotsock.subscribed and member events."""
    async with Client(server.ws_url, token=make_token(ROOM)) as client:
        subscribed = await client.subscribe("presence.lobby")
        assert subscribed.members == [Member("bot", None)]
        joined = asyncio.Event()
        client.on("hotsock.memberAdded", lambda m: joined.set())
        other = await server.connect({**ROOM, "uid": "jim"})
        await other.subscribe("presence.lobby")
        await asyncio.wait_for(joined.wait(), 2)
        assert {m.uid for m in client.members("presence.lobby") or []} == {"bot", "jim"}


async def test_client_http_api_pages_and_publishes(server: Server) -> None:
    """list_messages returns one page; iter_messages pages through all; publish_message
    publishes with the connection's identity."""
    async with Client(server.ws_url, token=make_token(ROOM)) as client:
        await client.subscribe("room")
        ids = [await publish(server.http, server.base, i) for i in range(130)]
        page = await client.list_messages("room")
        assert [m.id for m in page] == ids[:100]
        assert [m.id async for m in client.iter_messages("room")] == ids
        assert [m.id async for m in client.iter_messages("room", after=ids[120])] == ids[121:]
        answer = await client.publish_message("room", "chat", {"text": "via http"})
        assert answer["event"] == "chat"
        with pytest.raises(ClientError) as refused:
            await client.list_messages("elsewhere")
        assert refused.value.code == "SUBSCRIPTION_REQUIRED"


async def test_client_bad_connect_token_fails_connect(server: Server) -> None:
    """A static token refused at the handshake fails connect() and stops the client."""
    client = Client(server.ws_url, token="not-a-token")
    with pytest.raises(ClientError) as refused:
        await client.connect()
    assert refused.value.code == "INVALID_CONNECT_TOKEN"


def test_client_arguments_are_checked() -> None:
    """Exactly one of token and token_provider; sane back-off and queue bounds."""
    with pytest.raises(ValueError):
        Client("ws://x/")
    with pytest.raises(ValueError):
        Client("ws://x/", token="t", backoff=0)
    with pytest.raises(ValueError):
        Client("ws://x/", token="t", queue_size=0)


async def test_client_reconnects_with_fresh_token_and_resumes(server: Server) -> None:
    """When the server drops the connection, the client reconnects with a new token from its
    provider and resumes the channel: the messages sent meanwhile arrive, once."""
    tokens = 0

    async def provider() -> str:
        nonlocal tokens
        tokens += 1
        return make_token(ROOM)

    async with Client(server.ws_url, token_provider=provider, backoff=0.01) as client:
        await client.subscribe("room")
        resumed = asyncio.Event()
        answers: list[Any] = []

        def on_subscribed(message: Message) -> None:
            answers.append(message.data)
            resumed.set()

        client.on("hotsock.subscribed", on_subscribed)
        stream = client.channel("room")
        reading = asyncio.ensure_future(take(stream, 4))
        before = await publish(server.http, server.base, 0)
        await asyncio.sleep(50 * MS)  # let the first message reach the client
        for conn in list(server.hub.connections.values()):
            conn.close(CloseCode.GOING_AWAY, "drop")
        missed = [await publish(server.http, server.base, i) for i in (1, 2)]
        await asyncio.wait_for(resumed.wait(), 5)
        after = await publish(server.http, server.base, 3)
        got = await reading
        assert [m.id for m in got] == [before, *missed, after]
        assert answers == [{"resumed": True, "replayed": 2}]
        assert tokens == 2 and client.reconnects == 1


async def test_client_backs_off_exponentially_with_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Failed attempts wait a random delay in [d/2, d], d doubling up to max_backoff."""
    port = free_port()
    asked: list[tuple[float, float]] = []
    real_uniform = random.uniform

    def uniform(low: float, high: float) -> float:
        asked.append((low, high))
        return real_uniform(low, high) / 100  # the schedule without the wait

    monkeypatch.setattr(random, "uniform", uniform)
    settings = make_settings(port=port)
    node = Node(settings)
    await node.start()
    client = Client(f"ws://127.0.0.1:{port}/", token=make_token(ROOM), backoff=0.5, max_backoff=4)
    await client.connect()
    try:
        await node.stop()  # the client now fails to reconnect, again and again
        while len(asked) < 6:
            await asyncio.sleep(5 * MS)
        highs = [high for _, high in asked[:6]]
        assert highs == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
        assert all(low == high / 2 for low, high in asked)
    finally:
        await client.aclose()


async def test_client_heartbeats_reach_the_server(server: Server) -> None:
    """With heartbeat_seconds the client sends hotsock.heartbeat, which resets the server's
    heartbeatTimeout clock for the connection."""
    token = make_token({**ROOM, "heartbeatTimeout": 5})
    async with Client(server.ws_url, token=token, heartbeat_seconds=0.02) as client:
        conn = server.hub.connections[str(client.connection_id)]
        start = conn.last_heartbeat
        for _ in range(400):
            if conn.last_heartbeat > start:
                break
            await asyncio.sleep(5 * MS)
        assert conn.last_heartbeat > start and not conn.closed


@pytest.mark.timeout(60)
async def test_client_survives_server_restart_mid_stream(tmp_path: Path) -> None:
    """A publisher sends without pause while the server restarts; the client reconnects,
    resumes, and ends with every stored message exactly once, in order."""
    port = free_port()
    settings = make_settings(port=port, store=f"sqlite:///{tmp_path}/restart.db")
    base = f"http://127.0.0.1:{port}"
    node = Node(settings)
    await node.start()
    stored: list[str] = []
    http = aiohttp.ClientSession()
    client = Client(f"ws://127.0.0.1:{port}/", token=make_token(ROOM), backoff=0.05)
    await client.connect()
    try:
        await client.subscribe("room")
        stream = client.channel("room")
        total = 120
        reading = asyncio.ensure_future(take_until(stream, total))

        async def publisher() -> None:
            i = 0
            while i < total:
                try:
                    # a retry after a lost answer must not store the message twice
                    stored.append(await publish(http, base, i, dedup=f"m{i}"))
                    i += 1
                except (aiohttp.ClientError, AssertionError):
                    await asyncio.sleep(10 * MS)  # the server is down: retry this one

        publishing = asyncio.ensure_future(publisher())
        while len(stored) < 40:
            await asyncio.sleep(MS)
        await node.stop()
        node = Node(settings)
        await node.start()
        await publishing
        got = await asyncio.wait_for(reading, 20)
        assert got == stored
        assert client.reconnects >= 1
    finally:
        await client.aclose()
        await http.close()
        await node.stop()


async def take_until(stream: AsyncIterator[Message], count: int) -> list[str]:
    got: list[str] = []
    async for message in stream:
        assert message.id is not None
        got.append(message.id)
        if len(got) == count:
            break
    return got


async def test_client_channel_stream_ends_on_close_and_aclose(server: Server) -> None:
    """A stream closed with aclose() stops holding messages; closing the client ends every
    stream's loop."""
    client = Client(server.ws_url, token=make_token(ROOM))
    await client.connect()
    await client.subscribe("room")
    async with client.channel("room") as dropped:
        pass
    stream = client.channel("room")
    await publish(server.http, server.base, 1)
    (got,) = await take(stream, 1)
    assert got.event == "tick"
    await client.aclose()
    assert [m async for m in stream] == []
    assert dropped._queue.empty()  # never fed after aclose()


async def test_client_stops_after_a_moderation_close(server: Server) -> None:
    """A close code in 4000-4999 is final: no reconnect, and the streams end."""
    async with Client(server.ws_url, token=make_token(ROOM), backoff=0.01) as client:
        await client.subscribe("room")
        stream = client.channel("room")
        for conn in list(server.hub.connections.values()):
            conn.close(4001, "kicked")
        async with asyncio.timeout(5):
            assert [m async for m in stream] == []
        assert client.reconnects == 0 and not client.connected
