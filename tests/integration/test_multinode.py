"""Three real ``tidings serve`` processes sharing Redis (broker) and PostgreSQL (store): what a
subscriber on one node sees of what is published on the others, cluster-wide ``singleUse`` and
deduplication, and a Redis restart in the middle of a stream.

Needs Redis (``TIDINGS_TEST_REDIS_URL``, default ``redis://127.0.0.1:6379/0``) and PostgreSQL
(``TIDINGS_TEST_POSTGRES_URL``, default ``postgresql://postgres@127.0.0.1:5432/test``); skipped
when either is unreachable, unless ``TIDINGS_REQUIRE_SERVICES=1``, which turns that into a
failure. Every test uses its own Redis key prefix and table prefix, removed afterwards; the
restart test runs its own ``redis-server``.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import aiohttp
import orjson
import pytest
import pytest_asyncio
import websockets
from tests.conftest import MS, SECRET, Client, make_token
from tests.secret_scan import SECRETS, scan_file
from tests.services import (
    POSTGRES_URL,
    REDIS_URL,
    RedisServer,
    drop_store_tables,
    free_port,
    redis_server,
    require_postgres,
    require_redis,
)

pytestmark = pytest.mark.integration

API_KEY = "multinode-api-key"

ROOM = {
    "channels": {
        "room": {
            "subscribe": True,
            "historyStart": 0,
            "messages": {"*": {"publish": True, "store": 3600}},
        }
    }
}


class TidingsNode:
    """One ``tidings serve`` process and helpers to talk to it."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.name = name
        self.proc = proc
        self.port = port
        self.log = log
        self.base = f"http://127.0.0.1:{port}"

    async def wait_healthy(self, http: aiohttp.ClientSession, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                async with http.get(f"{self.base}/healthz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(50 * MS)
        raise AssertionError(f"node {self.name} not healthy:\n{self.log.read_text()[-3000:]}")


class Cluster:
    """Starts nodes on one Redis prefix and one table prefix; cleans everything up."""

    def __init__(self, tmp_path: Path, http: aiohttp.ClientSession) -> None:
        self.tmp_path = tmp_path
        self.http = http
        unique = secrets.token_hex(5)
        self.redis_prefix = f"tidings-mn-{unique}:"
        self.table_prefix = f"mn_{unique}_"
        self.redis_urls: set[str] = set()
        self.nodes: list[TidingsNode] = []
        self.clients: list[Client] = []
        self._logs: list[IO[bytes]] = []

    async def start(
        self, count: int, *, redis_url: str = REDIS_URL, broker_options: str = ""
    ) -> list[TidingsNode]:
        self.redis_urls.add(redis_url)
        separator = "&" if "?" in POSTGRES_URL else "?"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIDINGS_")}
        env.update(
            TIDINGS_SIGNING_KEY1_METHOD="HS256",
            TIDINGS_SIGNING_KEY1=base64.b64encode(SECRET).decode(),
            TIDINGS_API_KEY1=API_KEY,
            TIDINGS_BROKER=f"{redis_url}?prefix={self.redis_prefix}{broker_options}",
            TIDINGS_STORE=f"{POSTGRES_URL}{separator}table_prefix={self.table_prefix}",
            TIDINGS_LOG_LEVEL="info",
        )
        started = []
        for _ in range(count):
            name = "ABCDEFGH"[len(self.nodes)]
            port = free_port()
            log_path = self.tmp_path / f"node-{name}.log"
            log = log_path.open("wb")
            self._logs.append(log)
            proc = subprocess.Popen(
                [sys.executable, "-m", "tidings", "serve", "--port", str(port)],
                env=env,
                cwd=self.tmp_path,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            node = TidingsNode(name, proc, port, log_path)
            self.nodes.append(node)
            started.append(node)
        await asyncio.gather(*(n.wait_healthy(self.http) for n in started))
        return started

    async def connect(
        self, node: TidingsNode, claims: dict[str, Any] | None = None, *, token: str | None = None
    ) -> Client:
        token = token if token is not None else make_token(claims if claims is not None else ROOM)
        ws = await websockets.connect(
            f"ws://127.0.0.1:{node.port}/?token={token}", max_size=None, compression=None
        )
        client = Client(ws)
        self.clients.append(client)
        client.connected = await client.expect("hotsock.connected")
        return client

    async def publish(self, node: TidingsNode, body: Any) -> tuple[int, Any]:
        async with self.http.post(
            f"{node.base}/publish",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def call(
        self, node: TidingsNode, client: Client, operation: str, body: Any
    ) -> tuple[int, Any]:
        """Client HTTP API call on ``node`` with ``client``'s credentials."""
        async with self.http.post(
            f"{node.base}/connection/{operation}",
            params={"connectionId": client.id, "connectionSecret": client.secret},
            data=orjson.dumps(body),
        ) as resp:
            return resp.status, await resp.json(content_type=None)

    async def aclose(self) -> None:
        for client in self.clients:
            await client.ws.close()
        for node in self.nodes:
            if node.proc.poll() is None:
                node.proc.send_signal(signal.SIGTERM)
        for node in self.nodes:
            try:
                await asyncio.to_thread(node.proc.wait, 10)
            except subprocess.TimeoutExpired:
                node.proc.kill()
                node.proc.wait()
        for log in self._logs:
            log.close()
        await self._drop_data()
        leaks = [leak for node in self.nodes for leak in scan_file(SECRETS, node.log)]
        if leaks:
            pytest.fail("secrets in the node logs:\n" + "\n".join(leaks[:20]))

    async def _drop_data(self) -> None:
        import redis.asyncio as aioredis

        for url in self.redis_urls:
            client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
            try:
                keys = [k async for k in client.scan_iter(match=f"{self.redis_prefix}*")]
                if keys:
                    await client.delete(*keys)
            except Exception:  # our own redis-server may be gone already
                pass
            finally:
                await client.aclose()
        await drop_store_tables(self.table_prefix)


@pytest_asyncio.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    await require_redis()
    await require_postgres()
    http = aiohttp.ClientSession()
    c = Cluster(tmp_path, http)
    try:
        yield c
    finally:
        try:
            await c.aclose()
        finally:
            await http.close()


@pytest_asyncio.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    async with redis_server() as server:
        yield server


async def messages(client: Client, count: int, timeout: float = 10) -> list[dict[str, Any]]:
    """The next ``count`` channel messages ``client`` receives (hotsock.* frames skipped)."""
    got: list[dict[str, Any]] = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            frame = await client.recv(timeout)
            if not str(frame.get("event", "")).startswith("hotsock."):
                got.append(frame)
    return got


async def no_more_messages(client: Client, wait: float = 300 * MS) -> None:
    try:
        async with asyncio.timeout(wait):
            while True:
                frame = await client.recv(wait)
                assert str(frame.get("event", "")).startswith("hotsock."), frame
    except TimeoutError:
        return


def ulid_order(ids: list[str]) -> list[str]:
    return sorted(ids)  # fixed-length Crockford base32: text order is numeric order


# Delivery across nodes


@pytest.mark.timeout(90)
async def test_multinode_concurrent_server_publishes_arrive_in_id_order_everywhere(
    cluster: Cluster,
) -> None:
    """Publishes spread over B and C race on one channel; subscribers on A, B and C each get
    every message once, in ID order, in the same order."""
    a, b, c = await cluster.start(3)
    # two subscribers on A: one delivery from Redis, fanned out to both
    subscribers = [await cluster.connect(node) for node in (a, a, b, c)]
    for client in subscribers:
        await client.subscribe("room")
    count = 60
    outcomes = await asyncio.gather(
        *(
            cluster.publish(
                (b, c)[i % 2],
                {
                    "channel": "room",
                    "event": "n",
                    "data": i,
                    "store": 60 if i % 3 else 0,
                    "eagerIdGeneration": True,
                },
            )
            for i in range(count)
        )
    )
    assert all(status == 202 for status, _ in outcomes), outcomes
    acked = [body["id"] for _, body in outcomes]
    assert len(set(acked)) == count
    seen = [[m["id"] for m in await messages(client, count)] for client in subscribers]
    assert seen[0] == ulid_order(acked)
    assert all(s == seen[0] for s in seen)
    for client in subscribers:
        await no_more_messages(client, 100 * MS)


async def test_multinode_websocket_client_messages_reach_other_nodes(cluster: Cluster) -> None:
    """A client on C publishes over its WebSocket; subscribers on A and B get every message
    once, in the order sent, with increasing IDs."""
    a, b, c = await cluster.start(3)
    on_a, on_b = await cluster.connect(a), await cluster.connect(b)
    await on_a.subscribe("room")
    await on_b.subscribe("room")
    sender = await cluster.connect(c, {**ROOM, "uid": "carol"})
    await sender.subscribe("room")  # publishing needs a subscription (spec §3.12)
    for i in range(20):
        await sender.send({"event": "chat", "channel": "room", "data": {"n": i}})
    for client in (on_a, on_b):
        got = await messages(client, 20)
        assert [m["data"]["n"] for m in got] == list(range(20))
        ids = [m["id"] for m in got]
        assert ids == ulid_order(ids) and len(set(ids)) == 20
        assert got[0]["meta"] == {"uid": "carol", "umd": None}
        await no_more_messages(client, 100 * MS)


async def test_multinode_http_publish_message_reaches_other_nodes(cluster: Cluster) -> None:
    """``connection/publishMessage`` on B for a connection held by B, then on A for the same
    connection (forwarded to B): a subscriber on A gets both, once each."""
    a, b = await cluster.start(2)
    watcher = await cluster.connect(a)
    await watcher.subscribe("room")
    author = await cluster.connect(b)
    await author.subscribe("room")
    status, body = await cluster.call(
        b, author, "publishMessage", {"channel": "room", "event": "chat", "data": "on-b"}
    )
    assert status == 202, body
    status, body = await cluster.call(
        a, author, "publishMessage", {"channel": "room", "event": "chat", "data": "via-a"}
    )
    assert status == 202, body
    assert [m["data"] for m in await messages(watcher, 2)] == ["on-b", "via-a"]
    await no_more_messages(watcher)


# Cluster-wide claims


async def test_multinode_single_use_connect_token_is_refused_on_another_node(
    cluster: Cluster,
) -> None:
    """A singleUse connect token used on A cannot connect again on B."""
    a, b = await cluster.start(2)
    token = make_token({"singleUse": True, "jti": f"once-{secrets.token_hex(4)}"})
    await cluster.connect(a, token=token)
    with pytest.raises(websockets.InvalidStatus) as info:
        await cluster.connect(b, token=token)
    assert info.value.response.status_code == 401


async def test_multinode_deduplication_id_is_dropped_on_another_node(cluster: Cluster) -> None:
    """A deduplicationId accepted on A is accepted but dropped on B (same ID answered); a
    subscriber on C gets the message once."""
    a, b, c = await cluster.start(3)
    watcher = await cluster.connect(c)
    await watcher.subscribe("room")
    message = {
        "channel": "room",
        "event": "e",
        "data": 1,
        "deduplicationId": f"d-{secrets.token_hex(4)}",
        "eagerIdGeneration": True,
    }
    first_status, first = await cluster.publish(a, message)
    again_status, again = await cluster.publish(b, message)
    assert (first_status, again_status) == (202, 202)
    assert again["id"] == first["id"]
    assert [m["id"] for m in await messages(watcher, 1)] == [first["id"]]
    await no_more_messages(watcher)


# Faults


@pytest.mark.timeout(120)
async def test_multinode_redis_restart_mid_stream(cluster: Cluster, own_redis: RedisServer) -> None:
    """Redis is killed and restarted while B and C publish stored messages: publishes during
    the outage get a prompt 503 JSON error, the subscriber on A keeps its connection and gets
    messages again afterwards (in ID order, no duplicates), and every message acknowledged
    with 202 is listed by listMessages."""
    a, b, c = await cluster.start(3, redis_url=own_redis.url)
    subscriber = await cluster.connect(a)
    await subscriber.subscribe("room")

    acked: list[str] = []
    refusals: list[dict[str, Any]] = []
    slowest = 0.0
    stop = asyncio.Event()

    async def publisher() -> None:
        nonlocal slowest
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            status, body = await cluster.publish(
                (b, c)[i % 2],
                {
                    "channel": "room",
                    "event": "n",
                    "data": i,
                    "store": 3600,
                    "eagerIdGeneration": True,
                },
            )
            slowest = max(slowest, time.monotonic() - started)
            if status == 202:
                acked.append(body["id"])
            else:
                assert status == 503, (status, body)
                refusals.append(body)
            i += 1
            await asyncio.sleep(20 * MS)

    live: list[str] = []

    async def reader() -> None:
        while True:
            frame = await subscriber.recv(60)
            if not str(frame.get("event", "")).startswith("hotsock."):
                live.append(frame["id"])

    async def until(condition: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, what
            await asyncio.sleep(20 * MS)

    publishing = asyncio.get_running_loop().create_task(publisher())
    reading = asyncio.get_running_loop().create_task(reader())
    try:
        await until(lambda: len(live) >= 10, 10, "no delivery before the outage")
        own_redis.stop()
        acked_before_outage = len(acked)
        await until(lambda: len(refusals) >= 5, 10, "no 503 during the outage")
        await asyncio.sleep(1)
        await own_redis.start()
        restarted = len(acked)
        await until(lambda: len(acked) > restarted + 5, 20, "publishing did not resume")
        # markers published before A re-subscribed are lost live (at-most-once), not late
        await until(
            lambda: bool(set(acked[restarted:]) & set(live)), 20, "delivery on A did not resume"
        )
    finally:
        stop.set()
        await publishing
        await asyncio.sleep(300 * MS)
        reading.cancel()
        await asyncio.gather(reading, return_exceptions=True)

    assert acked_before_outage >= 10
    assert refusals[0]["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert slowest < 5, f"a publish took {slowest:.1f} s"
    assert live == ulid_order(live) and len(set(live)) == len(live)
    assert set(live) <= set(acked)

    listed: list[str] = []
    after: str | None = None
    while True:
        body: dict[str, Any] = {"channel": "room"}
        if after is not None:
            body["after"] = after
        status, page = await cluster.call(a, subscriber, "listMessages", body)
        assert status == 200, page
        if not page["messages"]:
            break
        listed += [m["id"] for m in page["messages"]]
        after = listed[-1]
    assert set(acked) <= set(listed)
    assert listed == ulid_order(listed)


# Cluster-wide state


PRESENCE = {"channels": {"presence.team": {"subscribe": True}}}


async def channel_info(cluster: Cluster, node: TidingsNode, name: str) -> Any:
    async with cluster.http.get(
        f"{node.base}/channels/{name}", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as resp:
        assert resp.status == 200
        return await resp.json()


async def next_event(client: Client, event: str, timeout: float = 10) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            frame = await client.recv(timeout)
            if frame.get("event") == event:
                return frame


@pytest.mark.timeout(90)
async def test_multinode_presence_and_counts_are_shared(cluster: Cluster) -> None:
    """Presence joins on A are seen on B and C; counts and members agree on every node."""
    a, b, c = await cluster.start(3)
    jim = await cluster.connect(a, {**PRESENCE, "uid": "jim"})
    await jim.subscribe("presence.team")
    pam = await cluster.connect(b, {**PRESENCE, "uid": "pam"})
    joined = await pam.subscribe("presence.team")
    assert [m["uid"] for m in joined["data"]["members"]] == ["jim", "pam"]
    added = await next_event(jim, "hotsock.memberAdded")
    assert added["data"]["member"] == {"uid": "pam", "umd": None}
    carl = await cluster.connect(c, {**PRESENCE, "uid": "carl"})
    await carl.subscribe("presence.team")
    for watcher in (jim, pam):
        added = await next_event(watcher, "hotsock.memberAdded")
        assert added["data"]["members"] == [
            {"uid": "jim", "umd": None},
            {"uid": "pam", "umd": None},
            {"uid": "carl", "umd": None},
        ]
    for node in (a, b, c):
        info = await channel_info(cluster, node, "presence.team")
        assert info["subscriptionsCount"] == 3 and len(info["members"]) == 3
    await pam.close()
    for watcher in (jim, carl):
        removed = await next_event(watcher, "hotsock.memberRemoved")
        assert removed["data"]["member"]["uid"] == "pam"
    assert (await channel_info(cluster, c, "presence.team"))["subscriptionsCount"] == 2


@pytest.mark.timeout(90)
async def test_multinode_list_messages_through_another_node(cluster: Cluster) -> None:
    """Client HTTP API calls for a connection on A are answered by C, credentials checked."""
    a, _, c = await cluster.start(3)
    claims = {"channels": {"room": {"subscribe": True, "historyStart": 0}}}
    client = await cluster.connect(a, claims)
    await client.subscribe("room")
    status, _ = await cluster.publish(a, {"channel": "room", "event": "kept", "store": 60})
    assert status == 202
    status, body = await cluster.call(c, client, "listMessages", {"channel": "room"})
    assert status == 200 and [m["event"] for m in body["messages"]] == ["kept"]
    status, body = await cluster.call(c, client, "listMessages", {"channel": "nope"})
    assert status == 403 and body["error"]["code"] == "SUBSCRIPTION_REQUIRED"
    async with cluster.http.post(
        f"{c.base}/connection/listMessages",
        params={"connectionId": client.id, "connectionSecret": "x" * 20},
        data=b'{"channel":"room"}',
    ) as resp:
        assert resp.status == 401
        assert (await resp.json())["error"]["code"] == "UNAUTHORIZED"


@pytest.mark.timeout(90)
async def test_multinode_killed_node_leaves_presence(cluster: Cluster) -> None:
    """A node killed with SIGKILL is removed from presence and counts within the timeout."""
    a, b = await cluster.start(2, broker_options="&node_timeout=2")
    jim = await cluster.connect(a, {**PRESENCE, "uid": "jim"})
    await jim.subscribe("presence.team")
    pam = await cluster.connect(b, {**PRESENCE, "uid": "pam"})
    await pam.subscribe("presence.team")
    await next_event(jim, "hotsock.memberAdded")
    assert (await channel_info(cluster, a, "presence.team"))["subscriptionsCount"] == 2
    started = time.monotonic()
    b.proc.kill()
    removed = await next_event(jim, "hotsock.memberRemoved", timeout=10)
    assert removed["data"] == {
        "member": {"uid": "pam", "umd": None},
        "members": [{"uid": "jim", "umd": None}],
    }
    assert time.monotonic() - started < 4  # timeout 2 s, checked every 0.4 s
    for _ in range(40):  # the reaper drops the dead node's counters right after the members
        info = await channel_info(cluster, a, "presence.team")
        if info["subscriptionsCount"] == 1:
            break
        await asyncio.sleep(50 * MS)
    assert info["subscriptionsCount"] == 1 and info["members"] == [{"uid": "jim", "umd": None}]
    assert time.monotonic() - started < 4


@pytest.mark.timeout(90)
async def test_multinode_reactions_and_member_updates_reach_every_node(cluster: Cluster) -> None:
    """A reaction made on A and a memberUpdated caused on A are seen on B and C; the stored
    reaction is listed from any node; getChannelInfo agrees with the admin API."""
    a, b, c = await cluster.start(3)
    claims = {
        "channels": {
            "presence.chat": {
                "subscribe": True,
                "historyStart": 0,
                "getInfo": True,
                "messages": {"chat": {"react": True}},
            }
        }
    }
    jim = await cluster.connect(a, {**claims, "uid": "jim"})
    await jim.subscribe("presence.chat")
    watchers = []
    for node, uid in ((b, "pam"), (c, "carl")):
        watcher = await cluster.connect(node, {**claims, "uid": uid})
        await watcher.subscribe("presence.chat")
        watchers.append(watcher)
    status, answer = await cluster.publish(
        c, {"channel": "presence.chat", "event": "chat", "store": 60, "eagerIdGeneration": True}
    )
    assert status == 202
    await jim.send(
        {
            "event": "hotsock.messageReaction",
            "channel": "presence.chat",
            "data": {"messageId": answer["id"], "reaction": "👍", "action": "add"},
        }
    )
    for watcher in watchers:
        added = await next_event(watcher, "hotsock.messageReactionAdded")
        assert added["data"]["messageId"] == answer["id"]
        assert added["meta"] == {"uid": "jim", "umd": None}
    status, body = await cluster.call(
        b, watchers[0], "listReactions", {"channel": "presence.chat", "messageId": answer["id"]}
    )
    assert status == 200 and body == {"reactions": [{"reaction": "👍", "uid": "jim"}]}

    grant = {"uid": "jim", "umd": {"away": True}, "channels": {"presence.*": {"umdUpdate": True}}}
    await jim.send(
        {
            "event": "hotsock.umdUpdate",
            "channel": "presence.chat",
            "data": {"token": make_token(grant, scope="umd")},
        }
    )
    for client in (jim, *watchers):
        updated = await next_event(client, "hotsock.memberUpdated")
        assert updated["data"]["member"] == {"uid": "jim", "umd": {"away": True}}
    for node in (a, b, c):
        info = await channel_info(cluster, node, "presence.chat")
        status, mine = await cluster.call(
            node, watchers[1], "getChannelInfo", {"channel": "presence.chat"}
        )
        assert status == 200
        assert mine["subscriptionsCount"] == info["subscriptionsCount"] == 3
        assert mine["members"] == info["members"]
        assert {"uid": "jim", "umd": {"away": True}} in mine["members"]


async def test_multinode_storage_writes_reach_observers_on_every_node(cluster: Cluster) -> None:
    """Storage writes made on A (WebSocket), B (HTTP) and C (POST /publish) reach the
    observers on every node in one order, the last value wins everywhere, an observer on C
    gets the live entries after subscribing, and any node lists them."""
    a, b, c = await cluster.start(3)
    claims = {
        "channels": {
            "game.*": {
                "subscribe": True,
                "storage": {"*": {"observe": True, "get": True, "set": True}},
            }
        }
    }
    observers = [
        await cluster.connect(node, {**claims, "uid": f"o{node.name}"}) for node in (a, b, c)
    ]
    for observer in observers:
        await observer.subscribe("game.lobby")
    host = await cluster.connect(a, {**claims, "uid": "host"})
    for n in range(10):
        await host.send(
            {"event": "hotsock.channelStorageSet", "channel": "game.lobby", "key": "n", "data": n}
        )
    status, _ = await cluster.call(
        b, host, "channelStorageSet", {"channel": "game.lobby", "key": "round", "data": 1}
    )
    assert status == 202
    status, _ = await cluster.publish(
        c,
        {"channel": "game.lobby", "event": "hotsock.channelStorageSet", "key": "mode", "data": "x"},
    )
    assert status == 202
    seen = []
    for observer in observers:
        got = [await next_event(observer, "hotsock.channelStorageUpdated") for _ in range(12)]
        seen.append([(f["key"], f["data"]) for f in got])
    assert seen[0][:10] == [("n", n) for n in range(10)]
    assert sorted(seen[0][10:]) == [("mode", "x"), ("round", 1)]
    assert seen[1] == seen[0] and seen[2] == seen[0]
    late = await cluster.connect(c, {**claims, "uid": "late"})
    await late.subscribe("game.lobby")
    entries = [await late.expect("hotsock.channelStorageUpdated") for _ in range(3)]
    assert [(f["key"], f["data"]) for f in entries] == [("mode", "x"), ("n", 9), ("round", 1)]
    for node in (a, b, c):
        async with cluster.http.get(
            f"{node.base}/channels/game.lobby/storage",
            headers={"Authorization": f"Bearer {API_KEY}"},
        ) as resp:
            assert resp.status == 200
            assert [i["key"] for i in (await resp.json())["items"]] == ["mode", "n", "round"]


async def test_multinode_connections_per_uid_are_capped_cluster_wide(cluster: Cluster) -> None:
    """The default cap of 100 live connections per uid holds across three nodes: the 101st
    is refused (429) on any node, and closing one anywhere frees a place everywhere."""
    a, b, c = await cluster.start(3)
    nodes = [a, b, c]
    held = [await cluster.connect(nodes[i % 3], {"uid": "jim"}) for i in range(100)]
    for node in nodes:
        with pytest.raises(websockets.InvalidStatus) as info:
            await cluster.connect(node, {"uid": "jim"})
        assert info.value.response.status_code == 429
        assert b"RATE_LIMITED" in info.value.response.body
    await cluster.connect(a, {"uid": "pam"})  # another user is not affected
    await held[1].close()  # held by b
    for _ in range(200):
        try:
            await cluster.connect(c, {"uid": "jim"})
            break
        except websockets.InvalidStatus:
            await asyncio.sleep(20 * MS)
    else:
        raise AssertionError("the freed place was never given out")


Samples = dict[str, list[tuple[dict[str, str], float]]]


async def _samples(cluster: Cluster, node: TidingsNode) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    async with cluster.http.get(f"{node.base}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def _one(samples: Samples, name: str, **labels: str) -> float:
    return sum(v for got, v in samples.get(name, []) if labels.items() <= got.items())


async def test_multinode_metrics_are_per_node_and_count_the_broker(cluster: Cluster) -> None:
    """Each of three nodes labels its samples with its own name; a message published on A
    counts in on A and out (with its latency) on B and C; Redis round trips are counted."""
    a, b, c = await cluster.start(3)
    receivers = [await cluster.connect(n) for n in (b, c)]
    for client in receivers:
        await client.subscribe("room")
    status, _ = await cluster.publish(a, {"channel": "room", "event": "e", "data": 1})
    assert status == 202
    for client in receivers:
        await client.expect("e", 5000 * MS)
    by_node = {n.name: await _samples(cluster, n) for n in (a, b, c)}
    names = set()
    for samples in by_node.values():
        labels = {lbl["node"] for rows in samples.values() for lbl, _ in rows}
        assert len(labels) == 1
        names |= labels
        assert _one(samples, "tidings_broker_round_trips_total") > 0
        assert _one(samples, "tidings_broker_round_trip_seconds_total") > 0
    assert len(names) == 3  # <host>:<port>, unique per node
    assert _one(by_node["A"], "tidings_messages_in_total", kind="server.http") == 1
    for name in ("B", "C"):
        samples = by_node[name]
        assert _one(samples, "tidings_messages_in_total") == 0
        assert _one(samples, "tidings_deliveries_out_total", kind="message") == 1
        assert _one(samples, "tidings_publish_delivery_seconds_count") == 1
        assert _one(samples, "tidings_connections") == 1
