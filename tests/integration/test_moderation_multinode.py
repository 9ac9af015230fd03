"""Moderation and revocation across three ``tidings serve`` nodes on Redis and PostgreSQL
(spec §24.2): a user kicked on one node is gone from the others and from presence by the time
the API answers; connections are listed cluster-wide; server-side subscribe and unsubscribe
reach the node holding the connection; a revoked token is refused on every node, also after
every node restarted. Skipped like ``test_multinode.py`` when the services are missing."""

from __future__ import annotations

import asyncio
import signal
from typing import Any
from urllib.parse import quote

import orjson
import pytest
import websockets
from tests.conftest import MS, Client, make_token
from tests.integration.test_multinode import API_KEY, Cluster, TidingsNode, cluster

pytestmark = pytest.mark.integration

__all__ = ["cluster"]  # the fixture, imported for the tests below

CHAT = {
    "uid": "alice",
    "channels": {"room": {"subscribe": True}, "presence.room": {"subscribe": True}},
}


async def api(
    c: Cluster, node: TidingsNode, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with c.http.request(
        method,
        f"{node.base}{path}",
        data=None if body is None else orjson.dumps(body),
        headers={"Authorization": f"Bearer {API_KEY}"},
    ) as resp:
        return resp.status, await resp.json(content_type=None)


async def close_of(client: Client) -> tuple[int | None, str | None]:
    async with asyncio.timeout(5000 * MS):
        await client.ws.wait_closed()
    return client.ws.close_code, client.ws.close_reason


async def members(c: Cluster, node: TidingsNode, channel: str) -> list[str]:
    status, body = await api(c, node, "GET", f"/channels/{channel}")
    assert status == 200
    return [m["uid"] for m in body["members"]]


async def refused(node: TidingsNode, token: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(f"ws://127.0.0.1:{node.port}/?token={token}")
    assert info.value.response.status_code == 401


async def test_multinode_user_kicked_on_a_is_gone_everywhere(cluster: Cluster) -> None:
    """alice on B and C, kicked through A: both sockets close with 4500, and when the API
    answers she is already out of presence and of the connection list on every node."""
    a, b, c = await cluster.start(3)
    watcher = await cluster.connect(a, {**CHAT, "uid": "bob"})
    await watcher.subscribe("presence.room")
    alices = [await cluster.connect(node, CHAT) for node in (b, c)]
    for client in alices:
        await client.subscribe("presence.room")
    for node in (a, b, c):
        assert sorted(await members(cluster, node, "presence.room")) == ["alice", "bob"]
    assert await api(cluster, a, "POST", "/users/alice/disconnect") == (200, {"disconnected": 2})
    for node in (a, b, c):  # no waiting: the answer comes after every node's cleanup
        assert await members(cluster, node, "presence.room") == ["bob"]
        assert await api(cluster, node, "GET", "/users/alice/connections") == (
            200,
            {"connections": []},
        )
    for client in alices:
        assert await close_of(client) == (4500, "disconnected by the server")
    while True:  # the watcher on A hears it too (after the two memberAdded of alice's joins)
        frame = await watcher.recv()
        if frame["event"] == "hotsock.memberRemoved":
            assert [m["uid"] for m in frame["data"]["members"]] == ["bob"]
            break
        assert frame["event"] == "hotsock.memberAdded"


async def test_multinode_connections_listed_and_disconnected_by_id(cluster: Cluster) -> None:
    """GET lists alice's connections of all three nodes with their node; one is closed by
    ID through a node that does not hold it."""
    nodes = await cluster.start(3)
    clients = [await cluster.connect(node, CHAT) for node in nodes]
    await clients[2].subscribe("room")
    status, body = await api(cluster, nodes[0], "GET", "/users/alice/connections")
    assert status == 200
    listed = {c["id"]: c for c in body["connections"]}
    assert set(listed) == {client.id for client in clients}
    assert len({c["node"] for c in listed.values()}) == 3
    assert listed[clients[2].id]["channels"] == ["room"]
    path = f"/connections/{quote(clients[2].id, safe='')}/disconnect"
    assert await api(cluster, nodes[0], "POST", path, {"code": 4001, "reason": "rebalance"}) == (
        200,
        {"disconnected": 1},
    )
    assert await close_of(clients[2]) == (4001, "rebalance")
    status, answer = await api(cluster, nodes[1], "POST", path)
    assert status == 404 and answer["error"]["code"] == "NOT_FOUND"


async def test_multinode_server_subscribe_and_unsubscribe_reach_the_holder(
    cluster: Cluster,
) -> None:
    """A connection on C is subscribed through A and receives what B publishes; the user is
    unsubscribed through B."""
    a, b, c = await cluster.start(3)
    alice = await cluster.connect(c, {"uid": "alice"})
    path = f"/connections/{quote(alice.id, safe='')}/subscribe"
    assert await api(cluster, a, "POST", path, {"channel": "news"}) == (200, {"subscribed": "news"})
    assert (await alice.expect("hotsock.subscribed"))["data"]["autoSubscribed"] is True
    status, _ = await cluster.publish(b, {"channel": "news", "event": "flash", "data": 1})
    assert status == 202
    assert (await alice.expect("flash"))["data"] == 1
    assert await api(cluster, b, "POST", "/users/alice/unsubscribe", {"channel": "news"}) == (
        200,
        {"unsubscribed": 1},
    )
    assert (await alice.expect("hotsock.unsubscribed"))["channel"] == "news"


async def test_multinode_revoked_jti_refused_everywhere_even_after_restart(
    cluster: Cluster,
) -> None:
    """Revoked on A: the token's live connections on B and C close with 4501, and it is
    refused on A, B and C, also by three freshly started nodes; deleted on one, it works
    everywhere again."""
    first = await cluster.start(3)
    token = make_token({**CHAT, "jti": "leaked"})
    live = [await cluster.connect(node, token=token) for node in first[1:]]
    status, body = await api(cluster, first[0], "POST", "/revocations", {"jti": "leaked"})
    assert status == 201 and body["connectionsClosed"] == 2
    for client in live:
        assert await close_of(client) == (4501, "token revoked")
    for node in first:
        await refused(node, token)
    for node in first:
        node.proc.send_signal(signal.SIGTERM)
    for node in first:
        await asyncio.to_thread(node.proc.wait, 20)
    second = await cluster.start(3)
    for node in second:
        await refused(node, token)
    alice = await cluster.connect(second[1], {"uid": "alice"})
    sub = make_token(
        {"uid": "alice", "jti": "leaked", "channels": {"room": {"subscribe": True}}},
        scope="subscribe",
    )
    await alice.send({"event": "hotsock.subscribe", "channel": "room", "data": {"token": sub}})
    assert (await alice.expect("hotsock.error"))["error"]["code"] == "INVALID_SUBSCRIBE_TOKEN"
    assert (await api(cluster, second[2], "DELETE", "/revocations/jti/leaked"))[0] == 200
    for node in second:
        await cluster.connect(node, token=token)


async def test_multinode_uid_revocation_closes_old_sessions_on_every_node(
    cluster: Cluster,
) -> None:
    """issuedBefore revokes the user's older sessions on every node; a newer token works."""
    import time

    nodes = await cluster.start(3)
    now = int(time.time())
    old = [await cluster.connect(node, {**CHAT, "iat": now - 100}) for node in nodes]
    status, body = await api(
        cluster, nodes[1], "POST", "/revocations", {"uid": "alice", "issuedBefore": now - 50}
    )
    assert status == 201 and body["connectionsClosed"] == 3
    for client in old:
        assert (await close_of(client))[0] == 4501
    for node in nodes:
        await refused(node, make_token({**CHAT, "iat": now - 60}))
        await cluster.connect(node, {**CHAT, "iat": now})
