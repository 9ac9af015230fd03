"""Backend events (spec §17) from a real node to a real local webhook receiver."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from tests.conftest import MS, Server, StartServer

from tidings.config import Secret, WebhookSetting
from tidings.sdk.webhooks import verify

SECRET = "whsec_" + "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0"


class Receiver:
    """An HTTP endpoint that verifies every delivery's signature and records the events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.ids: set[str] = set()
        self.bad = 0
        self.hang = False
        self.changed = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if self.hang:
            await asyncio.sleep(30)
        body = await request.read()
        try:
            event = verify(request.headers, body, SECRET)
        except Exception:
            self.bad += 1
            return web.Response(status=400)
        assert request.headers["tidings-event-type"] == event["type"]
        if request.headers["webhook-id"] not in self.ids:
            self.ids.add(request.headers["webhook-id"])
            self.events.append(event)
            self.changed.set()
        return web.Response(status=204)

    async def _dispatch(self, request: web.Request) -> web.Response:
        return await self.handle(request)  # looked up per request, so tests can swap it

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._dispatch)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}/hook"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]

    async def wait_for(
        self, type_: str, count: int = 1, timeout: float = 5000 * MS
    ) -> list[dict[str, Any]]:
        async def loop() -> list[dict[str, Any]]:
            while len(self.of(type_)) < count:
                self.changed.clear()
                await self.changed.wait()
            return self.of(type_)

        return await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    await r.start()
    yield r
    await r.stop()


async def events_server(start_server: StartServer, receiver: Receiver) -> Server:
    return await start_server(
        webhooks=(WebhookSetting(receiver.url, (Secret(SECRET),)),), backoff_seconds=(0.05,) * 5
    )


async def test_connection_lifecycle_events(start_server: StartServer, receiver: Receiver) -> None:
    server = await events_server(start_server, receiver)
    claims = {
        "uid": "Jim",
        "umd": {"a": 1},
        "keepAlive": True,
        "channels": {"room": {"subscribe": True}},
    }
    client = await server.connect(claims)
    await client.subscribe("room")
    await client.close()
    [connected] = await receiver.wait_for("hotsock.connected")
    [disconnected] = await receiver.wait_for("hotsock.disconnected")
    assert connected["source"] == "hotsock.v1" and connected["dataType"] == "connection"
    assert connected["metadata"]["hotsockVersion"] == "1.13.5"
    assert isinstance(connected["metadata"]["tidingsVersion"], str)
    data = connected["data"]
    assert data["id"] == client.id and data["uid"] == "Jim" and data["umd"] == {"a": 1}
    assert data["keepAlive"] is True and data["disconnectedAt"] is None
    assert data["sourceIp"] == "127.0.0.1" and data["connectedAt"].endswith("Z")
    assert disconnected["data"]["disconnectedAt"] is not None
    [subscribed] = await receiver.wait_for("hotsock.subscribed")
    [unsubscribed] = await receiver.wait_for("hotsock.unsubscribed")
    assert subscribed["data"] == {
        "channel": "room",
        "connectionId": client.id,
        "uid": "Jim",
        "umd": {"a": 1},
    }
    assert subscribed["metadata"]["channel"] == "room"
    assert unsubscribed["dataType"] == "subscription"
    counts = await receiver.wait_for("hotsock.channelUpdated", 2)
    assert [c["data"] for c in counts] == [
        {"name": "room", "subscriptionsCount": 1},
        {"name": "room", "subscriptionsCount": 0},
    ]
    assert receiver.bad == 0


async def test_message_published_only_with_emit(
    start_server: StartServer, receiver: Receiver
) -> None:
    server = await events_server(start_server, receiver)
    claims = {
        "uid": "Pam",
        "channels": {
            "room": {
                "subscribe": True,
                "messages": {
                    "loud": {"publish": True, "emitPubSubEvent": True},
                    "quiet": {"publish": True},
                },
            }
        },
    }
    client = await server.connect(claims)
    await client.subscribe("room")
    await client.send({"channel": "room", "event": "quiet", "data": 0})
    await client.send({"channel": "room", "event": "loud", "data": {"n": 1}})
    await server.publish({"channel": "room", "event": "srv", "data": 2, "emitPubSubEvent": True})
    await server.publish({"channel": "room", "event": "srv-quiet", "data": 3})
    published = await receiver.wait_for("hotsock.messagePublished", 2)
    by_event = {e["data"]["event"]: e for e in published}
    assert set(by_event) == {"loud", "srv"}
    loud = by_event["loud"]
    assert loud["data"]["data"] == {"n": 1} and loud["data"]["meta"] == {"uid": "Pam", "umd": None}
    assert loud["metadata"]["trigger"] == "client.websocket"
    assert loud["metadata"]["connectionId"] == client.id
    assert len(loud["metadata"]["requestId"]) == 26
    srv = by_event["srv"]
    assert "meta" not in srv["data"] and srv["metadata"]["trigger"] == "server.http"
    assert "connectionId" not in srv["metadata"]
    await asyncio.sleep(200 * MS)
    assert len(receiver.of("hotsock.messagePublished")) == 2


async def test_member_events(start_server: StartServer, receiver: Receiver) -> None:
    server = await events_server(start_server, receiver)
    claims = {"channels": {"presence.x": {"subscribe": True}}}
    jim = await server.connect({**claims, "uid": "Jim"})
    await jim.subscribe("presence.x")
    pam = await server.connect({**claims, "uid": "Pam"})
    await pam.subscribe("presence.x")
    pam2 = await server.connect({**claims, "uid": "Pam", "umd": "away"})
    await pam2.subscribe("presence.x")
    await pam.close()
    await pam2.close()
    added = await receiver.wait_for("hotsock.memberAdded", 2)
    assert [a["data"]["uid"] for a in added] == ["Jim", "Pam"]
    assert added[1]["data"]["members"] == [{"uid": "Jim", "umd": None}, {"uid": "Pam", "umd": None}]
    assert added[1]["dataType"] == "channelMember" and added[1]["metadata"] == {
        "hotsockVersion": "1.13.5",
        "tidingsVersion": added[1]["metadata"]["tidingsVersion"],
        "channel": "presence.x",
    }
    [updated] = await receiver.wait_for("hotsock.memberUpdated")
    assert updated["data"]["umd"] == "away"
    [removed] = await receiver.wait_for("hotsock.memberRemoved")
    assert removed["data"] == {
        "uid": "Pam",
        "umd": "away",
        "members": [{"uid": "Jim", "umd": None}],
    }


async def test_hanging_webhook_never_delays_fan_out(
    start_server: StartServer, receiver: Receiver
) -> None:
    """A webhook endpoint that hangs does not slow connects or message delivery."""
    receiver.hang = True
    server = await events_server(start_server, receiver)
    claims = {"channels": {"room": {"subscribe": True}}}
    clients = [await server.connect(claims) for _ in range(5)]
    for c in clients:
        await c.subscribe("room")
    for i in range(20):
        await server.publish({"channel": "room", "event": "e", "data": i, "emitPubSubEvent": True})
    for c in clients:
        assert [(await c.recv(timeout=1000 * MS))["data"] for _ in range(20)] == list(range(20))


async def test_webhook_500_then_recovers(start_server: StartServer, receiver: Receiver) -> None:
    server = await events_server(start_server, receiver)
    original = receiver.handle
    failures = {"left": 3}

    async def flaky(request: web.Request) -> web.Response:
        if failures["left"] > 0:
            failures["left"] -= 1
            return web.Response(status=500)
        return await original(request)

    receiver.handle = flaky  # type: ignore[method-assign]
    await server.publish({"channel": "x", "event": "e", "emitPubSubEvent": True})
    [event] = await receiver.wait_for("hotsock.messagePublished")
    assert event["data"]["event"] == "e" and failures["left"] == 0
    async with server.http.get(f"{server.base}/metrics") as resp:
        text = await resp.text()
    node = server.hub.metrics.node
    assert f'tidings_webhook_attempts_failed_total{{node="{node}"}} 3.0' in text
    assert f'tidings_webhooks_delivered_total{{node="{node}"}} 1.0' in text
    # the three failures and the success were each timed
    assert f'tidings_webhook_delivery_seconds_count{{node="{node}"}} 4.0' in text


async def test_source_ip_from_trusted_proxy(start_server: StartServer, receiver: Receiver) -> None:
    """Behind a trusted proxy, sourceIp is the nearest untrusted X-Forwarded-For address;
    from any other peer the header is ignored."""
    import websockets
    from tests.conftest import make_token

    untrusting = await events_server(start_server, receiver)
    trusting = await start_server(
        webhooks=(WebhookSetting(receiver.url, (Secret(SECRET),)),),
        backoff_seconds=(0.05,) * 5,
        trusted_proxies=("127.0.0.1",),
    )
    headers = {"X-Forwarded-For": "6.6.6.6, 203.0.113.7"}
    first = await websockets.connect(
        f"{untrusting.ws_url}?token={make_token({})}", additional_headers=headers
    )
    await first.recv()
    second = await websockets.connect(
        f"{trusting.ws_url}?token={make_token({})}", additional_headers=headers
    )
    await second.recv()
    connected = await receiver.wait_for("hotsock.connected", 2)
    assert sorted(e["data"]["sourceIp"] for e in connected) == ["127.0.0.1", "203.0.113.7"]
    await first.close()
    await second.close()


async def test_reaction_events_gated_by_the_target_messages_emit(
    start_server: StartServer, receiver: Receiver
) -> None:
    """Reaction backend events follow ``emitPubSubEvent`` of the reacted-to message's event;
    a removal describes the reaction and the request that added it; a no-op emits nothing."""
    server = await events_server(start_server, receiver)
    claims = {
        "uid": "Jim",
        "umd": {"n": 1},
        "channels": {
            "room": {
                "subscribe": True,
                "historyStart": 0,
                "messages": {
                    "loud": {"react": True, "emitPubSubEvent": True},
                    "quiet": {"react": True},
                },
            }
        },
    }
    client = await server.connect(claims)
    await client.subscribe("room")
    ids = {}
    for event in ("loud", "quiet"):
        answer = await server.publish(
            {"channel": "room", "event": event, "store": 60, "eagerIdGeneration": True}
        )
        ids[event] = answer["id"]
    for event, action in [("quiet", "add"), ("loud", "add"), ("loud", "add"), ("loud", "remove")]:
        await client.send(
            {
                "event": "hotsock.messageReaction",
                "channel": "room",
                "data": {"messageId": ids[event], "reaction": "👍", "action": action},
            }
        )
    [added] = await receiver.wait_for("hotsock.messageReactionAdded")
    [removed] = await receiver.wait_for("hotsock.messageReactionRemoved")
    assert added["dataType"] == removed["dataType"] == "messageReaction"
    data = added["data"]
    assert set(data) == {
        "channel",
        "messageId",
        "id",
        "reaction",
        "uid",
        "umd",
        "createdAt",
        "expiresAt",
    }
    assert data["channel"] == "room" and data["messageId"] == ids["loud"]
    assert data["reaction"] == "👍" and data["uid"] == "Jim" and data["umd"] == {"n": 1}
    assert len(data["createdAt"]) == 24 and data["createdAt"].endswith("Z")  # milliseconds
    assert len(data["expiresAt"]) == 20 and data["expiresAt"].endswith("Z")  # seconds
    assert removed["data"] == data  # the reaction as it was added
    metadata = added["metadata"]
    assert metadata["channel"] == "room" and metadata["reaction"] == "👍"
    assert metadata["trigger"] == "client.websocket" and metadata["connectionId"] == client.id
    assert len(metadata["requestId"]) == 26 and metadata["sourceIp"] == "127.0.0.1"
    assert removed["metadata"]["requestId"] == metadata["requestId"]
    await asyncio.sleep(200 * MS)
    assert len(receiver.of("hotsock.messageReactionAdded")) == 1


async def test_server_reaction_events_follow_the_request_field(
    start_server: StartServer, receiver: Receiver
) -> None:
    """A server reaction emits only with ``emitPubSubEvent: true`` in the request."""
    server = await events_server(start_server, receiver)
    answer = await server.publish(
        {"channel": "room", "event": "e", "store": -1, "eagerIdGeneration": True}
    )
    reaction = {
        "channel": "room",
        "event": "hotsock.messageReaction",
        "data": {"messageId": answer["id"], "reaction": "x", "action": "add"},
        "uid": "bot",
    }
    await server.publish(reaction)
    await server.publish({**reaction, "uid": "bot2", "emitPubSubEvent": True})
    [added] = await receiver.wait_for("hotsock.messageReactionAdded")
    assert added["data"]["uid"] == "bot2" and added["data"]["expiresAt"] is None
    assert added["metadata"]["trigger"] == "server.http"
    assert "connectionId" not in added["metadata"]


async def test_umd_updates_emit_member_and_connection_events(
    start_server: StartServer, receiver: Receiver
) -> None:
    """A changed member umd emits ``hotsock.memberUpdated``; a changed connection umd emits
    ``hotsock.connectionUpdated``; unchanged values emit nothing."""
    from tests.conftest import make_token

    server = await events_server(start_server, receiver)
    client = await server.connect({"uid": "Jim", "channels": {"presence.x": {"subscribe": True}}})
    await client.subscribe("presence.x")
    grant = {"uid": "Jim", "umd": {"s": 1}, "channels": {"presence.x": {"umdUpdate": True}}}
    for _ in range(2):
        await client.send(
            {
                "event": "hotsock.umdUpdate",
                "channel": "presence.x",
                "data": {"token": make_token(grant, scope="umd")},
            }
        )
    [updated] = await receiver.wait_for("hotsock.memberUpdated")
    assert updated["dataType"] == "channelMember"
    assert updated["data"] == {
        "uid": "Jim",
        "umd": {"s": 1},
        "members": [{"uid": "Jim", "umd": {"s": 1}}],
    }
    assert updated["metadata"]["channel"] == "presence.x"
    connection = {"uid": "Jim", "umd": "new", "umdUpdate": True}
    for _ in range(2):
        await client.send(
            {"event": "hotsock.umdUpdate", "data": {"token": make_token(connection, scope="umd")}}
        )
    [changed] = await receiver.wait_for("hotsock.connectionUpdated")
    assert changed["dataType"] == "connection"
    assert changed["data"]["id"] == client.id and changed["data"]["umd"] == "new"
    await asyncio.sleep(200 * MS)
    assert len(receiver.of("hotsock.memberUpdated")) == 1
    assert len(receiver.of("hotsock.connectionUpdated")) == 1
