"""The moderation API on one node (spec §24.2): disconnects with close codes, listing a user's
connections, server-side subscribe and unsubscribe, and their bad input."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import orjson
import pytest
from tests.conftest import API_KEY, MS, Client, Server

ROOM = {
    "uid": "alice",
    "channels": {
        "room": {"subscribe": True},
        "presence.room": {"subscribe": True},
    },
}


def as_user(uid: str, **extra: Any) -> dict[str, Any]:
    return {**ROOM, "uid": uid, **extra}


async def api(
    server: Server, method: str, path: str, body: Any = None, *, key: str = API_KEY
) -> tuple[int, Any]:
    data = body if isinstance(body, (bytes, str)) or body is None else orjson.dumps(body)
    async with server.http.request(
        method, f"{server.base}{path}", data=data, headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def close_of(client: Client) -> tuple[int | None, str | None]:
    """Wait for the server to close ``client``; its close code and reason."""
    async with asyncio.timeout(2000 * MS):
        await client.ws.wait_closed()
    return client.ws.close_code, client.ws.close_reason


def cid(client: Client) -> str:
    return quote(client.id, safe="")


async def test_moderation_disconnect_connection_sends_code_and_reason(server: Server) -> None:
    """The connection closes with the asked code and reason; it leaves presence first."""
    watcher = await server.connect(as_user("bob"))
    await watcher.subscribe("presence.room")
    alice = await server.connect(ROOM)
    await alice.subscribe("presence.room")
    assert (await watcher.expect("hotsock.memberAdded"))["data"]["member"]["uid"] == "alice"
    status, body = await api(
        server, "POST", f"/connections/{cid(alice)}/disconnect", {"code": 4000, "reason": "move"}
    )
    assert (status, body) == (200, {"disconnected": 1})
    assert await close_of(alice) == (4000, "move")
    removed = await watcher.expect("hotsock.memberRemoved")
    assert [m["uid"] for m in removed["data"]["members"]] == ["bob"]
    assert await api(server, "GET", "/users/alice/connections") == (200, {"connections": []})


async def test_moderation_disconnect_user_closes_all_with_terminal_default(
    server: Server,
) -> None:
    """Every connection of the user closes with 4500; other users stay."""
    first, second = await server.connect(ROOM), await server.connect(ROOM)
    other = await server.connect(as_user("bob"))
    assert await api(server, "POST", "/users/alice/disconnect") == (200, {"disconnected": 2})
    for client in (first, second):
        assert await close_of(client) == (4500, "disconnected by the server")
    await other.send({"event": "hotsock.ping"})
    await other.expect("hotsock.pong")


async def test_moderation_lists_user_connections(server: Server) -> None:
    """id, node, connectedAt and channels of each live connection, oldest first."""
    first = await server.connect(ROOM)
    await first.subscribe("room")
    second = await server.connect(ROOM)
    await server.connect(as_user("bob"))
    status, body = await api(server, "GET", "/users/alice/connections")
    assert status == 200
    listed = body["connections"]
    assert [c["id"] for c in listed] == [first.id, second.id]
    assert listed[0]["channels"] == ["room"] and listed[1]["channels"] == []
    assert listed[0]["node"] == server.node.broker.node_id
    assert listed[0]["connectedAt"].endswith("Z") and "." in listed[0]["connectedAt"]
    assert await api(server, "GET", "/users/nobody/connections") == (200, {"connections": []})


async def test_moderation_subscribe_gives_directives_and_auto_flag(server: Server) -> None:
    """A server-side subscribe confirms with autoSubscribed and grants its directives."""
    alice = await server.connect({"uid": "alice"})  # the token grants nothing
    status, body = await api(
        server,
        "POST",
        f"/connections/{cid(alice)}/subscribe",
        {
            "channel": "presence.stage",
            "directives": {"messages": {"cheer": {"publish": True, "echo": True}}},
            "umd": {"role": "guest"},
        },
    )
    assert (status, body) == (200, {"subscribed": "presence.stage"})
    subscribed = await alice.expect("hotsock.subscribed")
    assert subscribed["channel"] == "presence.stage"
    assert subscribed["data"]["autoSubscribed"] is True
    assert subscribed["data"]["members"] == [{"uid": "alice", "umd": {"role": "guest"}}]
    await alice.send({"event": "cheer", "channel": "presence.stage", "data": 1})
    assert (await alice.expect("cheer"))["data"] == 1
    await alice.send({"event": "boo", "channel": "presence.stage"})
    assert (await alice.expect("hotsock.error"))["error"]["code"] == "PUBLISH_PERMISSION_DENIED"
    again = await api(
        server, "POST", f"/connections/{cid(alice)}/subscribe", {"channel": "presence.stage"}
    )
    assert again[0] == 409 and again[1]["error"]["code"] == "ALREADY_SUBSCRIBED"
    await alice.nothing()


async def test_moderation_subscribe_presence_without_uid_is_refused(server: Server) -> None:
    """A connection without uid cannot be put on a presence channel."""
    anonymous = await server.connect({})
    status, body = await api(
        server, "POST", f"/connections/{cid(anonymous)}/subscribe", {"channel": "presence.x"}
    )
    assert status == 400 and body["error"]["code"] == "PRESENCE_CHANNEL_USER_ID_REQUIRED"
    await anonymous.nothing()


async def test_moderation_unsubscribe_connection_and_user(server: Server) -> None:
    """The client gets hotsock.unsubscribed; a second call is NOT_SUBSCRIBED."""
    first, second = await server.connect(ROOM), await server.connect(ROOM)
    for client in (first, second):
        await client.subscribe("room")
    status, body = await api(
        server, "POST", f"/connections/{cid(first)}/unsubscribe", {"channel": "room"}
    )
    assert (status, body) == (200, {"unsubscribed": 1})
    assert (await first.expect("hotsock.unsubscribed"))["channel"] == "room"
    again = await api(server, "POST", f"/connections/{cid(first)}/unsubscribe", {"channel": "room"})
    assert again[0] == 409 and again[1]["error"]["code"] == "NOT_SUBSCRIBED"
    assert await api(server, "POST", "/users/alice/unsubscribe", {"channel": "room"}) == (
        200,
        {"unsubscribed": 1},
    )
    assert (await second.expect("hotsock.unsubscribed"))["channel"] == "room"
    await server.publish({"channel": "room", "event": "e", "data": 1})
    await first.nothing()
    await second.nothing()


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/connections/{id}/disconnect", None),
        ("POST", "/users/alice/disconnect", None),
        ("GET", "/users/alice/connections", None),
        ("POST", "/connections/{id}/subscribe", {"channel": "room"}),
        ("POST", "/connections/{id}/unsubscribe", {"channel": "room"}),
        ("POST", "/users/alice/unsubscribe", {"channel": "room"}),
    ],
)
async def test_moderation_bad_api_key_is_401_and_changes_nothing(
    server: Server, method: str, path: str, body: Any
) -> None:
    """Every route needs the API key."""
    alice = await server.connect(ROOM)
    await alice.subscribe("room")
    status, answer = await api(server, method, path.format(id=cid(alice)), body, key="wrong")
    assert status == 401 and answer["error"]["code"] == "UNAUTHORIZED"
    await alice.nothing()
    await alice.send({"event": "hotsock.ping"})
    await alice.expect("hotsock.pong")


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/connections/{id}/disconnect", {"code": 1000}, 400, "INVALID_MESSAGE"),
        ("/connections/{id}/disconnect", {"reason": "x" * 200}, 400, "INVALID_MESSAGE"),
        ("/connections/{id}/disconnect", b"{nope", 400, "INVALID_MESSAGE"),
        ("/connections/{id}/disconnect", b"[]", 400, "INVALID_MESSAGE"),
        ("/connections/unknown/disconnect", None, 404, "NOT_FOUND"),
        ("/users/nobody/disconnect", None, 404, "NOT_FOUND"),
        ("/connections/{id}/subscribe", b"", 400, "INVALID_MESSAGE"),
        ("/connections/{id}/subscribe", {"channel": "a*b"}, 400, "INVALID_CHANNEL"),
        ("/connections/{id}/subscribe", {"channel": "c", "directives": 1}, 400, "INVALID_MESSAGE"),
        (
            "/connections/{id}/subscribe",
            {"channel": "c", "directives": {"historyStart": "x"}},
            400,
            "INVALID_MESSAGE",
        ),
        ("/connections/unknown/subscribe", {"channel": "room"}, 404, "NOT_FOUND"),
        ("/connections/{id}/unsubscribe", {}, 400, "INVALID_CHANNEL"),
        ("/connections/unknown/unsubscribe", {"channel": "room"}, 404, "NOT_FOUND"),
        ("/users/nobody/unsubscribe", {"channel": "room"}, 404, "NOT_FOUND"),
        ("/users/alice/unsubscribe", {"channel": "other"}, 409, "NOT_SUBSCRIBED"),
    ],
)
async def test_moderation_bad_input_is_refused_and_changes_nothing(
    server: Server, path: str, body: Any, status: int, code: str
) -> None:
    """Malformed bodies, bad codes, unknown connections and users get a clear error."""
    alice = await server.connect(ROOM)
    await alice.subscribe("room")
    answer = await api(server, "POST", path.format(id=cid(alice)), body)
    assert answer[0] == status and answer[1]["error"]["code"] == code, answer
    await alice.nothing()
    await server.publish({"channel": "room", "event": "still", "data": 1})
    assert (await alice.expect("still"))["data"] == 1
