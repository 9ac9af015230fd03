"""Channel storage (spec §6.1, §10.2, §11, §15, §16, §17.2) through real WebSocket and HTTP
clients."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from tests.conftest import API_KEY, MS, Server, StartServer
from tests.server.test_backend_events import SECRET, Receiver, events_server, receiver

from tidings.config import Secret, WebhookSetting

__all__ = ["receiver"]  # the webhook receiver fixture, shared with test_backend_events

GAME = "game.lobby"


def lobby(
    uid: str | None = "host",
    *,
    key: str = "*",
    observe: bool | None = True,
    get: bool | None = True,
    set_: bool | None = False,
    store: int | None = None,
    emit: bool | None = None,
    auto: bool = False,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Claims on ``game.*`` with one storage key's directives (None leaves one out)."""
    directives = {"observe": observe, "get": get, "set": set_, "store": store}
    if emit is not None:
        directives["emitPubSubEvent"] = emit
    storage: dict[str, Any] = {key: {k: v for k, v in directives.items() if v is not None}}
    storage.update(extra or {})
    channel: dict[str, Any] = {"subscribe": True, "storage": storage}
    channels: dict[str, Any] = {"game.*": channel}
    if auto:
        channels[GAME] = {"autoSubscribe": True}
    claims: dict[str, Any] = {"channels": channels}
    if uid is not None:
        claims["uid"] = uid
    return claims


def set_frame(key: Any, data: Any = None, *, channel: str = GAME, **extra: Any) -> dict[str, Any]:
    frame = {"event": "hotsock.channelStorageSet", "channel": channel, "key": key, **extra}
    if data is not None:
        frame["data"] = data
    return frame


async def admin_storage(server: Server, query: str = "", status: int = 200) -> Any:
    async with server.http.get(
        f"{server.base}/channels/{GAME}/storage{query}",
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == status, (resp.status, body)
        return body


async def server_set(server: Server, key: Any, data: Any, status: int = 202, **extra: Any) -> Any:
    body = {"channel": GAME, "event": "hotsock.channelStorageSet", "key": key, "data": data}
    return await server.publish({**body, **extra}, status=status)


def updated(key: str, data: Any, uid: str | None = "host", umd: Any = None) -> dict[str, Any]:
    return {
        "event": "hotsock.channelStorageUpdated",
        "channel": GAME,
        "key": key,
        "data": data,
        "meta": {"uid": uid, "umd": umd},
    }


# The game-lobby flow (Hotsock's storage example)


async def test_game_lobby_flow(server: Server) -> None:
    """The host writes settings; every observer, the host included, gets the update; a late
    joiner gets the live entries right after hotsock.subscribed, by key; get reads them."""
    host = await server.connect(lobby("host", set_=True))
    guest = await server.connect(lobby("guest"))
    await host.subscribe(GAME)
    await guest.subscribe(GAME)
    await host.nothing()  # nothing stored yet: no entries after hotsock.subscribed
    await host.send(set_frame("settings", {"maxPlayers": 4}))
    for client in (host, guest):
        assert await client.recv() == updated("settings", {"maxPlayers": 4})
    await host.send(set_frame("round", 1))
    await host.send(set_frame("settings", {"maxPlayers": 6}))
    for client in (host, guest):
        assert await client.recv() == updated("round", 1)
        assert await client.recv() == updated("settings", {"maxPlayers": 6})

    late = await server.connect(lobby("late"))
    subscribed = await late.subscribe(GAME)
    assert subscribed["channel"] == GAME
    assert await late.recv() == updated("round", 1)
    assert await late.recv() == updated("settings", {"maxPlayers": 6})
    await late.nothing()

    await guest.send({"event": "hotsock.channelStorageGet", "channel": GAME, "key": "settings"})
    assert await guest.recv() == {
        "event": "hotsock.channelStorageData",
        "channel": GAME,
        "key": "settings",
        "data": {"maxPlayers": 6},
        "meta": {"uid": "host", "umd": None},
    }
    await guest.send({"event": "hotsock.channelStorageGet", "channel": GAME, "key": "unset"})
    assert (await guest.recv())["data"] is None


async def test_storage_ops_need_no_subscription(server: Server) -> None:
    """Writes and reads work without a subscription; observing naturally needs one."""
    writer = await server.connect(lobby("host", set_=True))
    await writer.send(set_frame("k", "v"))
    await writer.nothing()  # not subscribed: no update
    await writer.send({"event": "hotsock.channelStorageGet", "channel": GAME, "key": "k"})
    assert (await writer.recv())["data"] == "v"


async def test_auto_subscribe_sends_entries_after_subscribed(server: Server) -> None:
    """An autoSubscribe channel's entries follow its hotsock.subscribed."""
    await server_set(server, "b", 2)
    await server_set(server, "a", 1)
    client = await server.connect(lobby("me", auto=True))
    subscribed = await client.expect("hotsock.subscribed")
    assert subscribed["data"] == {"autoSubscribed": True}
    assert await client.recv() == updated("a", 1, uid=None)
    assert await client.recv() == updated("b", 2, uid=None)


async def test_unchanged_value_fans_out_nothing_and_refreshes_expiry(server: Server) -> None:
    """A deep-equal value is neither delivered nor re-attributed; only its expiry moves."""
    host = await server.connect(lobby("host", set_=True, store=3600))
    other = await server.connect(lobby("other", set_=True, store=7200))
    await host.subscribe(GAME)
    await host.send(set_frame("settings", {"a": 1, "b": [1, 2]}))
    assert (await host.recv())["data"] == {"a": 1, "b": [1, 2]}
    store = server.hub._store
    first = await store.get_storage(GAME, "settings", now_ms=0)
    assert first is not None and first.expires_ms is not None
    await other.send(set_frame("settings", {"b": [1, 2.0], "a": 1}))
    await host.nothing()
    await asyncio.sleep(50 * MS)
    refreshed = await store.get_storage(GAME, "settings", now_ms=0)
    assert refreshed is not None and refreshed.uid == "host"
    assert refreshed.expires_ms is not None and refreshed.expires_ms > first.expires_ms
    await other.send(set_frame("settings", {"a": True, "b": [1, 2]}))  # true is not 1
    assert await host.recv() == updated("settings", {"a": True, "b": [1, 2]}, uid="other")


@pytest.mark.parametrize("deleting", [None, {}], ids=["absent", "empty-object"])
async def test_null_absent_or_empty_object_deletes(server: Server, deleting: Any) -> None:
    """null, absent data and {} delete the entry; observers get data null; deleting again
    is unchanged and silent."""
    host = await server.connect(lobby("host", set_=True))
    await host.subscribe(GAME)
    await host.send(set_frame("k", "v"))
    await host.recv()
    await host.send(set_frame("k", deleting))
    assert await host.recv() == updated("k", None)
    await host.send({**set_frame("k"), "data": None})
    await host.nothing()
    assert await admin_storage(server) == {"items": []}


async def test_observe_filters_updates_per_key(server: Server) -> None:
    """Only subscribers whose directives allow ``observe`` on a key get its updates; the
    writer too is only told when it may observe."""
    writer = await server.connect(lobby("w", observe=False, set_=True))
    only_a = await server.connect(lobby("a", key="a"))
    denied = await server.connect(
        lobby("d", extra={"secret": {"observe": False}})  # "*" observes, "secret" says false
    )
    for client in (writer, only_a, denied):
        await client.subscribe(GAME)
    await writer.send(set_frame("secret", 1))
    await writer.send(set_frame("b", 2))
    await writer.send(set_frame("a", 3))
    assert await only_a.recv() == updated("a", 3, uid="w")
    assert await denied.recv() == updated("b", 2, uid="w")
    assert await denied.recv() == updated("a", 3, uid="w")
    for client in (writer, only_a, denied):
        await client.nothing()
    late = await server.connect(lobby("late", key="a"))
    await late.subscribe(GAME)
    assert await late.recv() == updated("a", 3, uid="w")  # only the key it observes
    await late.nothing()


async def test_storage_updates_keep_their_place_in_the_channel_order(server: Server) -> None:
    """Messages and storage writes sent back to back arrive in the order sent."""
    claims = lobby("host", set_=True)
    claims["channels"]["game.*"]["messages"] = {"chat": {"publish": True, "echo": True}}
    host = await server.connect(claims)
    await host.subscribe(GAME)
    for n in range(10):
        await host.send({"channel": GAME, "event": "chat", "data": n})
        await host.send(set_frame("n", n))
    seen = [await host.recv() for _ in range(20)]
    assert [(f["event"], f["data"]) for f in seen] == [
        pair for n in range(10) for pair in (("chat", n), ("hotsock.channelStorageUpdated", n))
    ]


# Server writes (POST /publish)


async def test_server_write_skips_permissions_and_defaults_to_forever(server: Server) -> None:
    """A server write needs no directive, has a null writer and no expiry by default."""
    observer = await server.connect(lobby("o"))
    await observer.subscribe(GAME)
    answer = await server_set(server, "settings", {"maxPlayers": 4})
    assert answer == {"channel": GAME, "event": "hotsock.channelStorageSet"}
    assert await observer.recv() == updated("settings", {"maxPlayers": 4}, uid=None)
    entry = await server.hub._store.get_storage(GAME, "settings", now_ms=0)
    assert entry is not None and entry.expires_ms is None and entry.trigger == "server.http"
    await server_set(server, "short", 1, store=60)
    entry = await server.hub._store.get_storage(GAME, "short", now_ms=0)
    assert entry is not None and entry.expires_ms is not None
    assert await admin_storage(server) == {
        "items": [
            {"key": "settings", "data": {"maxPlayers": 4}, "meta": {"uid": None, "umd": None}},
            {"key": "short", "data": 1, "meta": {"uid": None, "umd": None}},
        ]
    }


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        ({"store": 0}, "INVALID_MESSAGE"),
        ({"store": -2}, "INVALID_MESSAGE"),
        ({"store": 3155695201}, "INVALID_MESSAGE"),
        ({"store": "60"}, "INVALID_MESSAGE"),
        ({"key": None}, "INVALID_STORAGE_KEY"),
        ({"key": ""}, "INVALID_STORAGE_KEY"),
        ({"key": "k" * 129}, "INVALID_STORAGE_KEY"),
        ({"key": "a b"}, "INVALID_STORAGE_KEY"),
        ({"key": "a*"}, "INVALID_STORAGE_KEY"),
        ({"key": "#a"}, "INVALID_STORAGE_KEY"),
        ({"key": "a,b"}, "INVALID_STORAGE_KEY"),
        ({"data": "x" * 32768}, "DATA_TOO_LARGE"),
        ({"channel": "bad channel"}, "INVALID_CHANNEL"),
    ],
)
async def test_server_write_refusals_change_nothing(
    server: Server, extra: dict[str, Any], code: str
) -> None:
    """Each bad field is a 400 with its code, and nothing is stored."""
    body = {"channel": GAME, "event": "hotsock.channelStorageSet", "key": "k", "data": "v"}
    answer = await server.publish({**body, **extra}, status=400)
    assert answer["error"]["code"] == code
    assert await admin_storage(server) == {"items": []}


async def test_server_write_is_refused_inside_an_array(server: Server) -> None:
    """Storage writes go one per request, like reactions."""
    item = {"channel": GAME, "event": "hotsock.channelStorageSet", "key": "k", "data": 1}
    answer = await server.publish([item], status=400)
    assert answer["error"]["code"] == "INVALID_EVENT"


# Bad client input


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (set_frame(""), "INVALID_STORAGE_KEY"),
        (set_frame(None), "INVALID_STORAGE_KEY"),
        (set_frame("k" * 129, 1), "INVALID_STORAGE_KEY"),
        (set_frame("a b", 1), "INVALID_STORAGE_KEY"),
        (set_frame("a*", 1), "INVALID_STORAGE_KEY"),
        (set_frame("a#", 1), "INVALID_STORAGE_KEY"),
        (set_frame("a,b", 1), "INVALID_STORAGE_KEY"),
        (set_frame(5, 1), "INVALID_STORAGE_KEY"),
        (set_frame("k", "x" * 32768), "DATA_TOO_LARGE"),
        (set_frame("k", 1, channel="bad channel"), "INVALID_CHANNEL"),
        (set_frame("k", 1, scheduleExpression="rate(1 minute)"), "INVALID_SCHEDULE"),
        (
            {"event": "hotsock.channelStorageGet", "channel": GAME, "key": "a b"},
            "INVALID_STORAGE_KEY",
        ),
    ],
)
async def test_client_refusals_change_nothing(
    server: Server, frame: dict[str, Any], code: str
) -> None:
    """Each refusal is a hotsock.error with its code and the channel as sent."""
    client = await server.connect(lobby("host", set_=True))
    await client.send(frame)
    error = await client.expect("hotsock.error")
    assert error["error"]["code"] == code
    assert error["channel"] == frame["channel"]
    assert await admin_storage(server) == {"items": []}


async def test_client_without_set_or_get_is_denied(server: Server) -> None:
    """``set`` and ``get`` are checked per key."""
    client = await server.connect(lobby("host", set_=None, get=None, extra={"w": {"set": True}}))
    await client.send(set_frame("k", 1))
    assert (await client.expect("hotsock.error"))["error"]["code"] == "STORAGE_PERMISSION_DENIED"
    await client.send({"event": "hotsock.channelStorageGet", "channel": GAME, "key": "k"})
    assert (await client.expect("hotsock.error"))["error"]["code"] == "STORAGE_PERMISSION_DENIED"
    await client.send(set_frame("w", 1))
    await client.nothing()
    assert [i["key"] for i in (await admin_storage(server))["items"]] == ["w"]


# The Client HTTP API


async def test_http_set_get_and_list(server: Server) -> None:
    """HTTP set answers 202 and reaches observers; get and list read it back."""
    client = await server.connect(lobby("host", set_=True))
    watcher = await server.connect(lobby("w"))
    await watcher.subscribe(GAME)
    body = {"channel": GAME, "key": "settings", "data": {"maxPlayers": 4}}
    _, answer = await server.call(client, "channelStorageSet", body, status=202)
    assert answer == {"channel": GAME, "event": "hotsock.channelStorageSet"}
    assert await watcher.recv() == updated("settings", {"maxPlayers": 4})
    _, got = await server.call(
        client, "channelStorageGet", {"channel": GAME, "key": "settings"}, status=200
    )
    assert got == {
        "event": "hotsock.channelStorageData",
        "channel": GAME,
        "key": "settings",
        "data": {"maxPlayers": 4},
        "meta": {"uid": "host", "umd": None},
    }
    _, unset = await server.call(client, "channelStorageGet", {"channel": GAME, "key": "x"})
    assert unset["data"] is None and unset["meta"] is None
    _, listed = await server.call(client, "channelStorageList", {"channel": GAME}, status=200)
    assert listed == {
        "items": [
            {"key": "settings", "data": {"maxPlayers": 4}, "meta": {"uid": "host", "umd": None}}
        ]
    }
    entry = await server.hub._store.get_storage(GAME, "settings", now_ms=0)
    assert entry is not None and entry.trigger == "client.http"


async def test_http_list_pages_by_100_in_key_order(server: Server) -> None:
    """250 entries come back in three pages by key; ``keys`` filters; the connection sees
    only keys it may get, and pages still fill up."""
    for n in range(250):
        await server_set(server, f"k{n:03d}", n)
    await server_set(server, "hidden", 0)
    client = await server.connect(lobby("me", extra={"hidden": {"get": False}}))
    seen: list[str] = []
    after = None
    while True:
        body = {"channel": GAME} if after is None else {"channel": GAME, "after": after}
        _, page = await server.call(client, "channelStorageList", body, status=200)
        keys = [item["key"] for item in page["items"]]
        seen += keys
        if len(keys) < 100:
            break
        after = keys[-1]
    assert seen == [f"k{n:03d}" for n in range(250)]
    _, some = await server.call(
        client, "channelStorageList", {"channel": GAME, "keys": ["k007", "k002", "nope", "hidden"]}
    )
    assert [item["key"] for item in some["items"]] == ["k002", "k007"]
    nobody = await server.connect(lobby("x", get=False))
    _, empty = await server.call(nobody, "channelStorageList", {"channel": GAME}, status=200)
    assert empty == {"items": []}


@pytest.mark.parametrize(
    ("operation", "body", "status", "code"),
    [
        (
            "channelStorageList",
            {"channel": GAME, "keys": [f"k{n}" for n in range(101)]},
            400,
            "INVALID_MESSAGE",
        ),
        ("channelStorageList", {"channel": GAME, "keys": ["a", 1]}, 400, "INVALID_MESSAGE"),
        ("channelStorageList", {"channel": GAME, "keys": "a,b"}, 400, "INVALID_MESSAGE"),
        ("channelStorageList", {"channel": GAME, "after": 5}, 400, "INVALID_MESSAGE"),
        ("channelStorageGet", {"channel": GAME}, 400, "INVALID_STORAGE_KEY"),
        (
            "channelStorageSet",
            {"channel": GAME, "key": "a b", "data": 1},
            400,
            "INVALID_STORAGE_KEY",
        ),
        (
            "channelStorageSet",
            {"channel": GAME, "key": "k", "data": "x" * 32768},
            400,
            "DATA_TOO_LARGE",
        ),
        (
            "channelStorageSet",
            {"channel": GAME, "key": "nope", "data": 1},
            403,
            "STORAGE_PERMISSION_DENIED",
        ),
        ("channelStorageGet", {"channel": GAME, "key": "nope"}, 403, "STORAGE_PERMISSION_DENIED"),
        (
            "publishMessage",
            {"channel": GAME, "event": "hotsock.channelStorageSet"},
            400,
            "INVALID_EVENT",
        ),
    ],
)
async def test_http_refusals(
    server: Server, operation: str, body: dict[str, Any], status: int, code: str
) -> None:
    """Each refusal has its status and code, and nothing is stored."""
    client = await server.connect(lobby("me", key="k", set_=True))
    _, answer = await server.call(client, operation, body, status=status)
    assert answer["error"]["code"] == code
    assert await admin_storage(server) == {"items": []}


# The admin listing


async def test_admin_listing_pages_filters_and_refuses(server: Server) -> None:
    """``keys`` (comma-separated, at most 100) and ``after`` work; bad input is 400, a wrong
    key 401."""
    for key in ("c", "a", "b"):
        await server_set(server, key, key)
    assert [i["key"] for i in (await admin_storage(server))["items"]] == ["a", "b", "c"]
    assert [i["key"] for i in (await admin_storage(server, "?after=a"))["items"]] == ["b", "c"]
    assert [i["key"] for i in (await admin_storage(server, "?keys=c,a,zz"))["items"]] == ["a", "c"]
    many = ",".join(f"k{n}" for n in range(101))
    assert (await admin_storage(server, f"?keys={many}", 400))["error"]["code"] == "INVALID_MESSAGE"
    bad = await admin_storage(server, "?keys=a,b%20c", 400)
    assert bad["error"]["code"] == "INVALID_STORAGE_KEY"
    async with server.http.get(f"{server.base}/channels/{GAME}/storage") as resp:
        assert resp.status == 401


# Expiry, persistence, backend events


async def test_expired_entries_vanish_and_the_sweeper_announces_them(
    start_server: StartServer, receiver: Receiver, tmp_path: Path
) -> None:
    """An entry past its TTL is invisible at once; the sweeper deletes it and emits the
    ``expired: true`` event only when its last write asked for events."""
    server = await start_server(
        webhooks=(WebhookSetting(receiver.url, (Secret(SECRET),)),),
        backoff_seconds=(0.05,) * 5,
        sweep_interval_seconds=3600,  # this test sweeps by hand
    )
    writer = await server.connect(lobby("host", set_=True, store=1, emit=True))
    quiet = await server.connect(lobby("q", set_=True, store=1, emit=False, key="quiet"))
    await writer.subscribe(GAME)
    await writer.send(set_frame("settings", {"maxPlayers": 4}))
    await writer.recv()
    await quiet.send(set_frame("quiet", 1))
    assert (await writer.recv())["key"] == "quiet"
    [created] = await receiver.wait_for("hotsock.channelStorageUpdated")
    assert created["dataType"] == "channelStorage"
    assert created["data"]["data"] == {"maxPlayers": 4}
    assert created["data"]["dataPrevious"] is None
    assert created["data"]["expired"] is False
    assert created["data"]["expiresAt"].endswith("Z")
    assert created["metadata"]["trigger"] == "client.websocket"
    assert created["metadata"]["connectionId"] == writer.id
    await asyncio.sleep(1.1)  # past the 1 s TTL
    await writer.send({"event": "hotsock.channelStorageGet", "channel": GAME, "key": "settings"})
    assert (await writer.recv())["data"] is None
    assert await admin_storage(server) == {"items": []}
    assert await server.hub.sweep_storage() == 2
    [_, expired] = await receiver.wait_for("hotsock.channelStorageUpdated", 2)
    assert expired["data"] == {
        "channel": GAME,
        "key": "settings",
        "data": None,
        "dataPrevious": {"maxPlayers": 4},
        "expired": True,
        "expiresAt": created["data"]["expiresAt"],
        "meta": {"uid": "host", "umd": None},
    }
    await writer.nothing()  # observers are not told about expiry
    await asyncio.sleep(100 * MS)
    assert len(receiver.of("hotsock.channelStorageUpdated")) == 2  # none for "quiet"


async def test_backend_events_for_change_unchanged_and_delete(
    start_server: StartServer, receiver: Receiver
) -> None:
    """A change carries dataPrevious; an unchanged value emits nothing; a delete has data
    null; a server write emits only with emitPubSubEvent."""
    server = await events_server(start_server, receiver)
    writer = await server.connect(lobby("host", set_=True, emit=True))
    await writer.send(set_frame("k", 1))
    await writer.send(set_frame("k", 1.0))
    await writer.send(set_frame("k", 2))
    await writer.send(set_frame("k"))
    await server_set(server, "s", "quiet")
    await server_set(server, "s", "loud", emitPubSubEvent=True)
    # webhooks are unordered (spec §17.3): look them up by what they say
    events = await receiver.wait_for("hotsock.channelStorageUpdated", 4)
    by_change = {
        (e["data"]["key"], e["data"]["dataPrevious"], e["data"]["data"]): e for e in events
    }
    assert sorted(by_change, key=repr) == sorted(
        [("k", None, 1), ("k", 1, 2), ("k", 2, None), ("s", "quiet", "loud")], key=repr
    )
    assert by_change[("k", 2, None)]["data"]["expiresAt"] is None
    loud = by_change[("s", "quiet", "loud")]
    assert loud["metadata"]["trigger"] == "server.http"
    assert "connectionId" not in loud["metadata"]
    await asyncio.sleep(100 * MS)
    assert len(receiver.of("hotsock.channelStorageUpdated")) == 4


async def test_entries_survive_a_restart(start_server: StartServer, tmp_path: Path) -> None:
    """SQLite keeps entries, writer and expiry across a restart of the node."""
    url = f"sqlite:///{tmp_path}/storage.db"
    first = await start_server(store=url)
    writer = await first.connect(lobby("host", set_=True))
    await writer.send(set_frame("settings", {"maxPlayers": 4}))
    await writer.send({"event": "hotsock.channelStorageGet", "channel": GAME, "key": "settings"})
    await writer.expect("hotsock.channelStorageData")
    await writer.close()
    await first.node.stop()
    second = await start_server(store=url)
    observer = await second.connect(lobby("o"))
    await observer.subscribe(GAME)
    assert await observer.recv() == updated("settings", {"maxPlayers": 4})


async def test_the_periodic_sweeper_announces_expiry(
    start_server: StartServer, receiver: Receiver
) -> None:
    """Without anyone calling it, the node's sweeper finds the expired entry and emits its
    ``expired: true`` event once."""
    server = await start_server(
        webhooks=(WebhookSetting(receiver.url, (Secret(SECRET),)),),
        backoff_seconds=(0.05,) * 5,
        sweep_interval_seconds=0.1,
    )
    await server_set(server, "k", "v", store=1, emitPubSubEvent=True)
    events = await receiver.wait_for("hotsock.channelStorageUpdated", 2)
    [expired] = [e for e in events if e["data"]["expired"]]  # webhooks are unordered
    assert expired["data"]["dataPrevious"] == "v" and expired["data"]["data"] is None
    assert expired["metadata"]["trigger"] == "server.http"
    assert await server.hub._store.get_storage(GAME, "k", now_ms=0) is None  # deleted
    await asyncio.sleep(300 * MS)
    assert len(receiver.of("hotsock.channelStorageUpdated")) == 2
