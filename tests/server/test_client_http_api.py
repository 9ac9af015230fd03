"""Message storage (spec §9) and the Client HTTP API (§10) through real clients."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import MS, Client, Server, StartServer
from tests.services import POSTGRES_URL, postgres_schema

YEAR = 31_536_000

# The release note's chat example: typing indicators not stored, chat kept for a year.
CHAT = {
    "channels": {
        "my-channel": {
            "subscribe": True,
            "messages": {
                "is-typing": {"publish": True},
                "chat": {"publish": True, "store": YEAR},
            },
        }
    }
}


def with_history(claims: dict[str, Any], start: int) -> dict[str, Any]:
    channels = {k: {**v, "historyStart": start} for k, v in claims["channels"].items()}
    return {**claims, "channels": channels}


@pytest.fixture
async def sqlite_server(start_server: StartServer, tmp_path: Path) -> Server:
    return await start_server(store=f"sqlite:///{tmp_path}/t.db", sweep_interval_seconds=0.2)


async def list_all(
    server: Server, client: Client, channel: str, **extra: Any
) -> list[dict[str, Any]]:
    _, body = await server.call(client, "listMessages", {"channel": channel, **extra}, status=200)
    messages = body["messages"]
    assert isinstance(messages, list)
    return messages


async def test_release_note_chat_example(sqlite_server: Server) -> None:
    """is-typing is not stored, chat is; a late client with historyStart sees the chat only;
    one without historyStart sees only what came after its subscription."""
    server = sqlite_server
    alice = await server.connect({**CHAT, "uid": "alice"})
    await alice.subscribe("my-channel")
    await alice.send({"channel": "my-channel", "event": "is-typing", "data": True})
    await alice.send({"channel": "my-channel", "event": "chat", "data": "👋 Hello!"})
    await server.publish({"channel": "my-channel", "event": "news", "data": "n", "store": 60})
    await asyncio.sleep(100 * MS)

    late = await server.connect(with_history(CHAT, 1719792000))
    await late.subscribe("my-channel")
    history = await list_all(server, late, "my-channel")
    assert [(m["event"], m["data"], m["meta"]) for m in history] == [
        ("chat", "👋 Hello!", {"uid": "alice", "umd": None}),
        ("news", "n", {"uid": None, "umd": None}),
    ]
    assert set(history[0]) == {"id", "event", "channel", "data", "meta"}

    plain = await server.connect(CHAT)
    await plain.subscribe("my-channel")
    assert await list_all(server, plain, "my-channel") == []
    await alice.send({"channel": "my-channel", "event": "chat", "data": "again"})
    await asyncio.sleep(100 * MS)
    assert [m["data"] for m in await list_all(server, plain, "my-channel")] == ["again"]


async def test_history_start_later_than_message_hides_it(sqlite_server: Server) -> None:
    server = sqlite_server
    await server.publish({"channel": "my-channel", "event": "old", "store": -1})
    client = await server.connect(with_history(CHAT, int(time.time()) + 3600))
    await client.subscribe("my-channel")
    assert await list_all(server, client, "my-channel") == []


async def test_paging_250_messages_both_ways(sqlite_server: Server) -> None:
    """Forward with after and backward with before: no gap, no duplicate."""
    server = sqlite_server
    for start in range(0, 250, 50):
        await server.publish(
            [
                {"channel": "my-channel", "event": "chat", "data": i, "store": 600}
                for i in range(start, start + 50)
            ]
        )
    client = await server.connect(with_history(CHAT, 0))
    await client.subscribe("my-channel")
    forward: list[int] = []
    after: str | None = None
    while True:
        page = await list_all(server, client, "my-channel", **({"after": after} if after else {}))
        forward += [m["data"] for m in page]
        if len(page) < 100:
            break
        after = page[-1]["id"]
    assert forward == list(range(250))
    backward: list[int] = []
    before: str | None = None
    while True:
        extra: dict[str, Any] = {"reverse": True}
        if before:
            extra["before"] = before
        page = await list_all(server, client, "my-channel", **extra)
        backward += [m["data"] for m in page]
        if len(page) < 100:
            break
        before = page[-1]["id"]
    assert backward == list(reversed(range(250)))
    # after is ignored when reverse, before when not (spec §10.2)
    first = await list_all(server, client, "my-channel", before="7ZZZZZZZZZZZZZZZZZZZZZZZZZ")
    assert first[0]["data"] == 0


async def test_page_capped_at_one_megabyte(sqlite_server: Server) -> None:
    server = sqlite_server
    big = "x" * 32000
    for _ in range(10):
        await server.publish(
            [{"channel": "my-channel", "event": "b", "data": big, "store": 60}] * 5
        )
    client = await server.connect(with_history(CHAT, 0))
    await client.subscribe("my-channel")
    page = await list_all(server, client, "my-channel")
    assert 30 <= len(page) < 50
    assert sum(len(m["data"]) for m in page) <= 1024 * 1024


async def test_short_ttl_message_expires(sqlite_server: Server) -> None:
    server = sqlite_server
    await server.publish({"channel": "my-channel", "event": "brief", "store": 1})
    await server.publish({"channel": "my-channel", "event": "kept", "store": -1})
    client = await server.connect(with_history(CHAT, 0))
    await client.subscribe("my-channel")
    assert [m["event"] for m in await list_all(server, client, "my-channel")] == ["brief", "kept"]
    await asyncio.sleep(1.2)
    assert [m["event"] for m in await list_all(server, client, "my-channel")] == ["kept"]


async def test_stored_messages_survive_restart(start_server: StartServer, tmp_path: Path) -> None:
    """A 202 for a stored message means it is on disk: a new node on the same file lists it."""
    url = f"sqlite:///{tmp_path}/restart.db"
    first = await start_server(store=url)
    ids = [
        r["id"]
        for r in await first.publish(
            [
                {
                    "channel": "my-channel",
                    "event": "chat",
                    "data": i,
                    "store": -1,
                    "eagerIdGeneration": True,
                }
                for i in range(100)
            ]
        )
    ]
    await first.node.stop()
    first.node.stop = _noop  # type: ignore[method-assign]
    second = await start_server(store=url)
    client = await second.connect(with_history(CHAT, 0))
    await client.subscribe("my-channel")
    assert [m["id"] for m in await list_all(second, client, "my-channel")] == ids


async def _noop() -> None:
    return None


async def test_exotic_json_round_trips(sqlite_server: Server) -> None:
    server = sqlite_server
    data = {
        "nul": "a\u0000b",
        "emoji": "🎉",
        "nested": [{"z": 1, "a": [None, True, 1.5]}],
        "esc": '"\\/\n',
        "big": 12345678901234567,
    }
    await server.publish({"channel": "my-channel", "event": "x", "data": data, "store": 60})
    client = await server.connect(with_history(CHAT, 0))
    await client.subscribe("my-channel")
    assert (await list_all(server, client, "my-channel"))[0]["data"] == data


async def test_publish_message_over_http(sqlite_server: Server) -> None:
    """publishMessage: same pipeline as the socket, 202, echo to the caller's own socket."""
    server = sqlite_server
    claims = {
        "uid": "u",
        "channels": {
            "my-channel": {
                "subscribe": True,
                "historyStart": 0,
                "messages": {"chat": {"publish": True, "store": 60, "echo": True}},
            }
        },
    }
    client = await server.connect(claims)
    other = await server.connect(CHAT)
    await client.subscribe("my-channel")
    await other.subscribe("my-channel")
    _, body = await server.call(
        client,
        "publishMessage",
        {"channel": "my-channel", "event": "chat", "data": {"t": 1}},
        status=202,
    )
    assert body == {"channel": "my-channel", "event": "chat"}
    echoed = await client.recv()
    assert echoed["data"] == {"t": 1} and echoed["meta"] == {"uid": "u", "umd": None}
    assert (await other.recv())["id"] == echoed["id"]
    _, body = await server.call(
        client,
        "publishMessage",
        {"channel": "my-channel", "event": "chat", "eagerIdGeneration": True},
        status=202,
    )
    assert (await client.recv())["id"] == body["id"]
    history = await list_all(server, client, "my-channel")
    assert [m["id"] for m in history][-1] == body["id"] and len(history) == 2


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"channel": "my-channel", "event": "nope"}, 403, "PUBLISH_PERMISSION_DENIED"),
        ({"channel": "other", "event": "chat"}, 403, "PUBLISH_PERMISSION_DENIED"),
        ({"channel": "my-channel", "event": "hotsock.channelStorageSet"}, 400, "INVALID_EVENT"),
        ({"channel": "my-channel"}, 400, "INVALID_EVENT"),
        ({"event": "chat"}, 400, "INVALID_CHANNEL"),
        ({"channel": 3, "event": "chat"}, 400, "INVALID_CHANNEL"),
        ({"channel": "my-channel", "event": "chat", "data": "x" * 33000}, 400, "DATA_TOO_LARGE"),
        (
            {"channel": "my-channel", "event": "chat", "eagerIdGeneration": 1},
            400,
            "INVALID_MESSAGE",
        ),
        ([1], 400, "INVALID_MESSAGE"),
        (b"{oops", 400, "INVALID_MESSAGE"),
        (b"", 400, "INVALID_MESSAGE"),
    ],
)
async def test_publish_message_refusals(
    sqlite_server: Server, body: Any, status: int, code: str
) -> None:
    """Refused publishMessage calls get 4xx JSON and store nothing."""
    server = sqlite_server
    client = await server.connect(with_history(CHAT, 0))
    await client.subscribe("my-channel")
    got, payload = await server.call(client, "publishMessage", body)
    assert (got, payload["error"]["code"]) == (status, code)
    assert await list_all(server, client, "my-channel") == []


@pytest.mark.parametrize(
    "body,status,code",
    [
        ({"channel": "nosub"}, 403, "SUBSCRIPTION_REQUIRED"),
        ({}, 400, "INVALID_CHANNEL"),
        ({"channel": "my-channel", "after": "not-a-ulid"}, 400, "INVALID_MESSAGE"),
        ({"channel": "my-channel", "before": 12, "reverse": True}, 400, "INVALID_MESSAGE"),
        ({"channel": "my-channel", "reverse": "yes"}, 400, "INVALID_MESSAGE"),
        ("[]", 400, "INVALID_MESSAGE"),
    ],
)
async def test_list_messages_refusals(
    sqlite_server: Server, body: Any, status: int, code: str
) -> None:
    server = sqlite_server
    client = await server.connect({"channels": {"*": {"subscribe": True}}})
    await client.subscribe("my-channel")
    got, payload = await server.call(client, "listMessages", body)
    assert (got, payload["error"]["code"]) == (status, code)


async def test_credentials_checked_and_die_with_connection(server: Server) -> None:
    client = await server.connect(CHAT)
    await client.subscribe("my-channel")
    url = f"{server.base}/connection/listMessages"
    body = b'{"channel":"my-channel"}'
    for params in (
        {},
        {"connectionId": client.id},
        {"connectionId": client.id, "connectionSecret": "x"},
        {"connectionId": "nobody=", "connectionSecret": client.secret},
        {"connectionId": client.id, "connectionSecret": "ß" * 20},
    ):
        async with server.http.post(url, params=params, data=body) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["code"] == "UNAUTHORIZED"
    await server.call(client, "listMessages", {"channel": "my-channel"}, status=200)
    await client.close()
    for _ in range(100):
        if client.id not in server.hub.connections:
            break
        await asyncio.sleep(10 * MS)
    await server.call(client, "listMessages", {"channel": "my-channel"}, status=401)


async def test_cors_and_methods(server: Server) -> None:
    client = await server.connect(CHAT)
    url = f"{server.base}/connection/listMessages"
    async with server.http.options(
        url,
        headers={
            "Origin": "https://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-custom",
        },
    ) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert resp.headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
        assert resp.headers["Access-Control-Allow-Headers"] == "content-type, x-custom"
        assert resp.headers["Access-Control-Max-Age"] == "86400"
    async with server.http.get(url) as resp:
        assert resp.status == 405
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"
    status, body = await server.call(client, "listMessages", {"channel": "my-channel"})
    assert status == 403 and body["error"]["code"] == "SUBSCRIPTION_REQUIRED"
    status, body = await server.call(client, "noSuchOperation", {})
    assert status == 404 and body["error"]["code"] == "NOT_FOUND"


async def test_cors_configured_origin(start_server: StartServer) -> None:
    server = await start_server(cors_origins=("https://ok.example",))
    url = f"{server.base}/connection/listMessages"
    async with server.http.post(url, headers={"Origin": "https://ok.example"}, data=b"{}") as resp:
        assert resp.headers["Access-Control-Allow-Origin"] == "https://ok.example"
    async with server.http.post(
        url, headers={"Origin": "https://evil.example"}, data=b"{}"
    ) as resp:
        assert "Access-Control-Allow-Origin" not in resp.headers


async def test_sweeper_deletes_expired_rows(sqlite_server: Server) -> None:
    server = sqlite_server
    await server.publish([{"channel": "my-channel", "event": "e", "store": 1}] * 20)
    await server.publish({"channel": "my-channel", "event": "keep", "store": -1})
    await asyncio.sleep(1.6)
    remaining = await server.node.store.list_messages("my-channel", now_ms=0, limit=100)
    assert [r.event for r in remaining] == ["keep"]


async def test_websocket_store_directive_stores(sqlite_server: Server) -> None:
    """A stored client message is persisted before it is fanned out, and listed in order."""
    server = sqlite_server
    sender = await server.connect(with_history(CHAT, 0))
    await sender.subscribe("my-channel")
    watcher = await server.connect(with_history(CHAT, 0))
    await watcher.subscribe("my-channel")
    for i in range(30):
        await sender.send(
            {"channel": "my-channel", "event": "chat" if i % 2 else "is-typing", "data": i}
        )
    live = [(await watcher.recv())["id"] for _ in range(30)]
    stored = [m["id"] for m in await list_all(server, watcher, "my-channel")]
    assert stored == live[1::2]


async def test_subscribe_token_history_start_widens_window(sqlite_server: Server) -> None:
    """historyStart added by a subscribe token applies to listMessages (layered directives)."""
    server = sqlite_server
    await server.publish({"channel": "vip", "event": "old", "store": -1})
    client = await server.connect({"uid": "u", "channels": {"vip": {"subscribe": True}}})
    from tests.conftest import make_token

    token = make_token(
        {"uid": "u", "channels": {"vip": {"subscribe": True, "historyStart": 0}}}, scope="subscribe"
    )
    await client.subscribe("vip", token)
    assert [m["event"] for m in await list_all(server, client, "vip")] == ["old"]


async def test_secrets_never_logged(
    start_server: StartServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Tokens, connection secrets and API keys never reach the logs, even at debug level."""
    import logging

    from tests.conftest import API_KEY, make_token

    caplog.set_level(logging.DEBUG)
    server = await start_server(store=f"sqlite:///{tmp_path}/log.db")
    token = make_token(CHAT)
    client = await server.connect(token=token)
    await client.subscribe("my-channel")
    await server.call(client, "listMessages", {"channel": "my-channel"}, status=200)
    await server.call(client, "publishMessage", {"channel": "my-channel", "event": "chat"})
    async with server.http.post(
        f"{server.base}/connection/listMessages",
        params={"connectionId": client.id, "connectionSecret": "wrong-secret-value"},
        data=b"{}",
    ) as resp:
        assert resp.status == 401
    await server.publish({"channel": "my-channel", "event": "x"})
    await client.close()
    await asyncio.sleep(50 * MS)
    # the test's own WebSocket client library logs its request line: only the server's count
    server_records = [r for r in caplog.records if not r.name.startswith("websockets")]
    assert server_records  # debug logging really was on
    text = "\n".join(r.getMessage() + str(r.exc_info or "") for r in server_records)
    for secret in (token, client.secret, API_KEY, "wrong-secret-value"):
        assert secret not in text


@pytest.mark.integration
@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_nul_in_uid_umd_and_data_round_trips_on_every_backend(
    start_server: StartServer, tmp_path: Path, backend: str
) -> None:
    """A signed uid, a umd and data holding U+0000 (legal JSON) are stored and listed exactly,
    on SQLite and PostgreSQL alike; an event name holding it is refused the same way on both."""
    async with postgres_schema("nul") as schema:
        store = (
            f"sqlite:///{tmp_path}/t.db"
            if backend == "sqlite"
            else f"{POSTGRES_URL}?schema={schema}"
        )
        server = await start_server(store=store)
        chat = {"publish": True, "store": YEAR, "echo": True}
        claims = {
            "channels": {
                "my-channel": {"subscribe": True, "historyStart": 0, "messages": {"*": chat}}
            },
            "uid": "a\u0000b",
            "umd": {"n": "\u0000\u0001"},
        }
        client = await server.connect(claims)
        await client.subscribe("my-channel")
        await client.send({"channel": "my-channel", "event": "chat", "data": {"x": "\u0000"}})
        echoed = await client.expect("chat")
        assert echoed["meta"] == {"uid": "a\u0000b", "umd": {"n": "\u0000\u0001"}}
        [listed] = await list_all(server, client, "my-channel")
        assert listed["data"] == {"x": "\u0000"}
        assert listed["meta"] == echoed["meta"]
        await client.send({"channel": "my-channel", "event": "ch\u0000at", "data": 1})
        assert (await client.expect("hotsock.error"))["error"]["code"] == "INVALID_EVENT"
        await server.node.stop()
