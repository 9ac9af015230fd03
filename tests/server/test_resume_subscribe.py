"""Resume on subscribe (tidings extension, spec §24.1) through real WebSocket clients: replay of
the stored messages after ``resumeFrom``, the allowed window, the cap, bad input, and the
hand-over to live delivery while messages are being published."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import websockets
from tests.conftest import MS, Client, Server, StartServer, make_token

from tidings.config import Settings
from tidings.core.ids import new_ulid, ulid_floor
from tidings.core.names import STORE_MAX_SECONDS
from tidings.errors import ConfigError
from tidings.hub._common import now_ms

STORED = {"*": {"publish": True, "store": 3600}}
HISTORY = {"channels": {"room": {"subscribe": True, "historyStart": 0, "messages": STORED}}}


def room(**directives: Any) -> dict[str, Any]:
    return {"channels": {"room": {"subscribe": True, "messages": STORED, **directives}}}


async def publish(
    server: Server, count: int, *, channel: str = "room", store: int = 3600
) -> list[str]:
    ids = []
    for i in range(count):
        body = {
            "channel": channel,
            "event": "e",
            "data": {"n": i},
            "store": store,
            "eagerIdGeneration": True,
        }
        ids.append((await server.publish(body))["id"])
    return ids


async def resume(client: Client, resume_from: Any, channel: str = "room") -> dict[str, Any]:
    await client.send(
        {"event": "hotsock.subscribe", "channel": channel, "data": {"resumeFrom": resume_from}}
    )
    return await client.expect("hotsock.subscribed")


async def message_ids(client: Client, count: int) -> list[str]:
    got: list[str] = []
    while len(got) < count:
        frame = await client.recv()
        if not frame["event"].startswith("hotsock."):
            got.append(frame["id"])
    return got


async def test_resume_replays_missed_messages_then_goes_live(server: Server) -> None:
    """After hotsock.subscribed {resumed: true, replayed: N} come the N stored messages after
    resumeFrom in ID order, exactly as they were delivered live, then live messages."""
    watcher = await server.connect(HISTORY)
    await watcher.subscribe("room")
    ids = await publish(server, 4)
    live = [await watcher.recv() for _ in ids]
    client = await server.connect(HISTORY)
    subscribed = await resume(client, ids[0])
    assert subscribed["data"] == {"resumed": True, "replayed": 3}
    replayed = [await client.recv() for _ in range(3)]
    assert replayed == live[1:]
    (newer,) = await publish(server, 1)
    assert await message_ids(client, 1) == [newer]
    await client.nothing()


async def test_resume_from_newest_message_replays_nothing(server: Server) -> None:
    """Nothing missed is still continuity: resumed true, replayed 0."""
    ids = await publish(server, 2)
    client = await server.connect(HISTORY)
    assert (await resume(client, ids[-1]))["data"] == {"resumed": True, "replayed": 0}
    await client.nothing()


async def test_subscribe_without_resume_from_is_unchanged(server: Server) -> None:
    """A Hotsock client that never asks sees no resume fields (opt-in)."""
    await publish(server, 1)
    client = await server.connect(HISTORY)
    assert (await client.subscribe("room"))["data"] == {}
    await client.nothing()


async def test_resume_skips_unstored_messages_and_keeps_meta(server: Server) -> None:
    """Unstored messages are never replayed; client messages keep their meta."""
    watcher = await server.connect(HISTORY)
    await watcher.subscribe("room")
    sender = await server.connect({"uid": "al", **HISTORY})
    await sender.subscribe("room")
    (first,) = await publish(server, 1)
    await publish(server, 1, store=0)
    await sender.send({"event": "chat", "channel": "room", "data": "hi"})
    stored = (await message_ids(watcher, 3))[-1]
    client = await server.connect(HISTORY)
    assert (await resume(client, first))["data"] == {"resumed": True, "replayed": 1}
    frame = await client.recv()
    assert frame["id"] == stored and frame["meta"] == {"uid": "al", "umd": None}


async def test_resume_directive_allows_reaching_back(server: Server) -> None:
    """Without historyStart, ``resume`` seconds before the subscription may be resumed; the
    default of 0 allows nothing."""
    ids = await publish(server, 3)
    allowed = await server.connect(room(resume=60))
    assert (await resume(allowed, ids[0]))["data"] == {"resumed": True, "replayed": 2}
    assert await message_ids(allowed, 2) == ids[1:]
    default = await server.connect(room())
    assert (await resume(default, ids[0]))["data"] == {"resumed": False, "replayed": 0}
    await default.nothing()


async def test_resume_subscribe_token_directive_applies(server: Server) -> None:
    """A subscribe token's ``resume`` layers over the connect token's."""
    ids = await publish(server, 2)
    client = await server.connect({"uid": "u", **room()})
    token = make_token(
        {"uid": "u", "channels": {"room": {"subscribe": True, "resume": 600}}}, scope="subscribe"
    )
    await client.send(
        {
            "event": "hotsock.subscribe",
            "channel": "room",
            "data": {"token": token, "resumeFrom": ids[0]},
        }
    )
    assert (await client.expect("hotsock.subscribed"))["data"] == {
        "resumed": True,
        "replayed": 1,
    }


async def test_resume_history_start_window_governs(server: Server) -> None:
    """With historyStart, an ID older than historyStart cannot be resumed from, even with a
    generous ``resume``."""
    ids = await publish(server, 2)
    start = now_ms() // 1000 + 1
    client = await server.connect(room(historyStart=start, resume=STORE_MAX_SECONDS))
    assert (await resume(client, ids[0]))["data"] == {"resumed": False, "replayed": 0}
    await client.nothing()


async def test_resume_over_the_cap_is_not_resumed(start_server: StartServer) -> None:
    """A gap longer than the cap replays nothing and says so; the cap itself is replayed."""
    server = await start_server(resume_max_messages=3)
    ids = await publish(server, 5)
    over = await server.connect(HISTORY)
    assert (await resume(over, ids[0]))["data"] == {"resumed": False, "replayed": 0}
    await over.nothing()
    at_cap = await server.connect(HISTORY)
    assert (await resume(at_cap, ids[1]))["data"] == {"resumed": True, "replayed": 3}
    assert await message_ids(at_cap, 3) == ids[2:]


@pytest.mark.parametrize(
    "bad",
    [
        7,
        None,
        {"id": "x"},
        "not-a-message-id",
        "01ARZ3NDEKTSV4RRFFQ69G5FAV".lower(),
        "future",
        "unknown",
        "other-channel",
    ],
)
async def test_resume_from_bad_value_subscribes_without_resuming(server: Server, bad: Any) -> None:
    """Malformed, future, unknown or foreign IDs are not an error: resumed false, nothing
    replayed, and the subscription is live."""
    (other,) = await publish(server, 1, channel="elsewhere")
    await publish(server, 2)
    named = {
        "future": new_ulid(now_ms() + 3600_000),
        "unknown": ulid_floor(now_ms() - 1000),
        "other-channel": other,
    }
    value = named.get(bad, bad) if isinstance(bad, str) else bad
    client = await server.connect(HISTORY)
    assert (await resume(client, value))["data"] == {"resumed": False, "replayed": 0}
    await client.nothing()
    (live,) = await publish(server, 1)
    assert await message_ids(client, 1) == [live]


@pytest.mark.parametrize("value", [-1, STORE_MAX_SECONDS + 1, 1.5, "60"])
async def test_bad_resume_directive_refuses_the_tokens(server: Server, value: Any) -> None:
    """A bad ``resume`` refuses a connect token (401) and a subscribe token
    (INVALID_SUBSCRIBE_TOKEN) like any other bad directive."""
    async with server.http.get(
        server.ws_url,
        params={"token": make_token(room(resume=value))},
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    ) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "INVALID_CONNECT_TOKEN"
    client = await server.connect({"uid": "u"})
    token = make_token(
        {"uid": "u", "channels": {"room": {"subscribe": True, "resume": value}}},
        scope="subscribe",
    )
    await client.send({"event": "hotsock.subscribe", "channel": "room", "data": {"token": token}})
    assert (await client.expect("hotsock.error"))["error"]["code"] == "INVALID_SUBSCRIBE_TOKEN"


class GatedStore:
    """The real store, with ``list_messages`` held until the test opens the gate: the replay
    read then happens while messages are being published."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.reading = asyncio.Event()
        self.gate = asyncio.Event()

    async def list_messages(self, channel: str, **kwargs: Any) -> Any:
        self.reading.set()
        await self.gate.wait()
        return await self.inner.list_messages(channel, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_resume_message_published_during_replay_arrives_once_after(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Messages published while the replay is being read (stored ones, which the read also
    sees, and unstored ones) are delivered exactly once, after the replayed ones."""
    gated: list[GatedStore] = []

    def wrap(store: Any) -> Any:
        gated.append(GatedStore(store))
        return gated[0]

    server = await start_server(store=f"sqlite:///{tmp_path}/t.db", wrap_store=wrap)
    store = gated[0]
    store.gate.set()
    ids = await publish(server, 3)
    store.gate.clear()
    client = await server.connect(HISTORY)
    await client.send(
        {"event": "hotsock.subscribe", "channel": "room", "data": {"resumeFrom": ids[0]}}
    )
    await asyncio.wait_for(store.reading.wait(), 2000 * MS)
    during = await publish(server, 2)
    during += await publish(server, 1, store=0)
    during += await publish(server, 1)
    store.gate.set()
    subscribed = await client.expect("hotsock.subscribed")
    assert subscribed["data"] == {"resumed": True, "replayed": 5}  # 2 old, 3 stored meanwhile
    got = await message_ids(client, 6)
    assert got[:2] == ids[1:]
    assert sorted(got[2:]) == sorted(during) and len(set(got)) == 6
    await client.nothing()
    (after,) = await publish(server, 1)
    assert await message_ids(client, 1) == [after]


async def test_resume_connection_closed_during_replay_is_cleaned_up(
    start_server: StartServer,
) -> None:
    """A client that leaves while its replay is read leaves nothing behind."""
    gated: list[GatedStore] = []

    def wrap(store: Any) -> Any:
        gated.append(GatedStore(store))
        return gated[0]

    server = await start_server(wrap_store=wrap)
    store = gated[0]
    store.gate.set()
    ids = await publish(server, 2)
    store.gate.clear()
    client = await server.connect(HISTORY)
    await client.send(
        {"event": "hotsock.subscribe", "channel": "room", "data": {"resumeFrom": ids[0]}}
    )
    await asyncio.wait_for(store.reading.wait(), 2000 * MS)
    closing = asyncio.create_task(client.close())
    await asyncio.sleep(20 * MS)
    store.gate.set()
    await closing
    for _ in range(200):
        if not server.hub.connections:
            break
        await asyncio.sleep(5 * MS)
    assert not server.hub.connections
    assert await server.hub.subscriptions_count("room") == 0
    other = await server.connect(HISTORY)
    await other.subscribe("room")
    (live,) = await publish(server, 1)
    assert await message_ids(other, 1) == [live]


def test_resume_cap_setting_reads_the_environment() -> None:
    """TIDINGS_RESUME_MAX_MESSAGES sets the cap (default 1000); a negative one is refused."""
    assert Settings.load(environ={}).limits.resume_max_messages == 1000
    loaded = Settings.load(environ={"TIDINGS_RESUME_MAX_MESSAGES": "5"})
    assert loaded.limits.resume_max_messages == 5
    with pytest.raises(ConfigError, match="TIDINGS_RESUME_MAX_MESSAGES"):
        Settings.load(environ={"TIDINGS_RESUME_MAX_MESSAGES": "-1"})


async def test_resume_on_an_observed_channel_sends_entries_then_replay(server: Server) -> None:
    """With channel storage observed, hotsock.subscribed comes first, then the live entries,
    then the replayed messages."""
    claims = {
        "channels": {
            "room": {
                "subscribe": True,
                "historyStart": 0,
                "messages": STORED,
                "storage": {"*": {"observe": True}},
            }
        }
    }
    write = {"channel": "room", "event": "hotsock.channelStorageSet", "key": "mode", "data": "x"}
    await server.publish(write)
    ids = await publish(server, 3)
    client = await server.connect(claims)
    assert (await resume(client, ids[0]))["data"] == {"resumed": True, "replayed": 2}
    entry = await client.expect("hotsock.channelStorageUpdated")
    assert entry["key"] == "mode"
    assert await message_ids(client, 2) == ids[1:]
    await client.nothing()


async def test_resume_buffer_over_the_queue_bound_closes_slow_consumer(
    start_server: StartServer,
) -> None:
    """Live frames held during a replay count against the connection's queue bound: past it,
    the connection is closed 1013 like any slow consumer, and the node stays healthy."""
    gated: list[GatedStore] = []

    def wrap(store: Any) -> Any:
        gated.append(GatedStore(store))
        return gated[0]

    server = await start_server(wrap_store=wrap, queue_max_frames=2)
    store = gated[0]
    store.gate.set()
    ids = await publish(server, 1)
    store.gate.clear()
    client = await server.connect(HISTORY)
    await client.send(
        {"event": "hotsock.subscribe", "channel": "room", "data": {"resumeFrom": ids[0]}}
    )
    await asyncio.wait_for(store.reading.wait(), 2000 * MS)
    await publish(server, 3, store=0)
    store.gate.set()
    with pytest.raises(websockets.ConnectionClosed) as closed:
        for _ in range(10):
            await client.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    other = await server.connect(HISTORY)
    assert (await resume(other, ids[0]))["data"]["resumed"] is True


async def test_resume_tight_reconnect_loop_leaves_the_server_healthy(server: Server) -> None:
    """A client reconnecting and resuming in a tight loop costs the server nothing lasting."""
    ids = await publish(server, 5)
    for _ in range(100):
        client = await server.connect(HISTORY)
        await resume(client, ids[0])
        await client.close()
    for _ in range(400):
        if not server.hub.connections:
            break
        await asyncio.sleep(5 * MS)
    assert not server.hub.connections
    assert await server.hub.subscriptions_count("room") == 0
    async with server.http.get(f"{server.base}/healthz") as resp:
        assert resp.status == 200
