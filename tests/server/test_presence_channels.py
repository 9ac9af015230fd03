"""Presence channels (spec §7), subscription counts (§6.4) and the admin channels API (§16)."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.conftest import API_KEY, MS, Client, Server, StartServer

CH = "presence.chat"


def member(uid: str, umd: Any = None) -> dict[str, Any]:
    return {"uid": uid, "umd": umd}


def claims(uid: str, umd: Any = None, **directives: Any) -> dict[str, Any]:
    return {
        "uid": uid,
        "umd": umd,
        "channels": {
            "presence.*": {"subscribe": True, **directives},
            "room": {"subscribe": True, **directives},
        },
    }


async def join(server: Server, uid: str, umd: Any = None) -> Client:
    client = await server.connect(claims(uid, umd))
    await client.subscribe(CH)
    return client


async def channel_info(server: Server, name: str, key: str = API_KEY) -> tuple[int, Any]:
    async with server.http.get(
        f"{server.base}/channels/{name}", headers={"Authorization": f"Bearer {key}"}
    ) as resp:
        return resp.status, await resp.json()


async def wait_gone(server: Server, client: Client) -> None:
    for _ in range(200):
        if client.id not in server.hub.connections:
            return
        await asyncio.sleep(10 * MS)
    raise AssertionError("connection was not removed")


async def test_presence_join_lists_members_and_announces(server: Server) -> None:
    """The joiner gets the full list; others get memberAdded {member, members}."""
    jim = await server.connect(claims("Jim"))
    sub = await jim.subscribe(CH)
    assert sub["data"] == {"members": [member("Jim")]}
    dwight = await server.connect(claims("Dwight", {"desk": 2}))
    sub = await dwight.subscribe(CH)
    assert sub["data"] == {"members": [member("Jim"), member("Dwight", {"desk": 2})]}
    assert sub["meta"] == {"uid": "Dwight", "umd": {"desk": 2}}
    added = await jim.recv()
    assert added == {
        "event": "hotsock.memberAdded",
        "channel": CH,
        "data": {
            "member": member("Dwight", {"desk": 2}),
            "members": [member("Jim"), member("Dwight", {"desk": 2})],
        },
    }
    await dwight.nothing()


async def test_presence_second_connection_same_user(server: Server) -> None:
    """Same uid and umd: no event. Different umd: memberUpdated to everyone else."""
    jim = await join(server, "Jim")
    pam = await join(server, "Pam")
    await jim.expect("hotsock.memberAdded")
    jim2 = await join(server, "Jim")
    await jim.nothing()
    await pam.nothing()
    jim3 = await server.connect(claims("Jim", {"status": "away"}))
    sub = await jim3.subscribe(CH)
    assert sub["data"]["members"] == [member("Jim", {"status": "away"}), member("Pam")]
    for other in (jim, pam, jim2):
        updated = await other.expect("hotsock.memberUpdated")
        assert updated["data"]["member"] == member("Jim", {"status": "away"})
        assert updated["data"]["members"] == [member("Jim", {"status": "away"}), member("Pam")]
    await jim3.nothing()


async def test_presence_last_connection_leaving_removes_member(server: Server) -> None:
    jim = await join(server, "Jim")
    jim2 = await join(server, "Jim")
    pam = await join(server, "Pam")
    await jim.expect("hotsock.memberAdded")
    await jim2.expect("hotsock.memberAdded")
    await jim.send({"event": "hotsock.unsubscribe", "channel": CH})
    await jim.expect("hotsock.unsubscribed")
    await pam.nothing()
    await jim2.close()
    removed = await pam.expect("hotsock.memberRemoved")
    assert removed["data"] == {"member": member("Jim"), "members": [member("Pam")]}


async def test_presence_abrupt_disconnect_removes_member(server: Server) -> None:
    """A socket dropped without a close frame is treated as unsubscribe."""
    jim = await join(server, "Jim")
    pam = await join(server, "Pam")
    await jim.expect("hotsock.memberAdded")
    jim.ws.transport.abort()
    removed = await pam.expect("hotsock.memberRemoved")
    assert removed["data"]["members"] == [member("Pam")]
    await wait_gone(server, jim)


async def test_presence_interleaved_joins_and_leaves(server: Server) -> None:
    watcher = await join(server, "watch")
    clients = [await join(server, f"u{i % 3}") for i in range(9)]
    added = [await watcher.expect("hotsock.memberAdded") for _ in range(3)]
    assert [a["data"]["member"]["uid"] for a in added] == ["u0", "u1", "u2"]
    for c in clients[:6]:
        await c.close()
    await watcher.nothing(300 * MS)
    await asyncio.gather(*(c.close() for c in clients[6:]))
    removed = {
        (await watcher.expect("hotsock.memberRemoved"))["data"]["member"]["uid"] for _ in range(3)
    }
    assert removed == {"u0", "u1", "u2"}
    _, info = await channel_info(server, CH)
    assert info == {"name": CH, "subscriptionsCount": 1, "members": [member("watch")]}


async def test_presence_capacity_reached(start_server: StartServer) -> None:
    """Members' payload is capped (102400 bytes by default, tested in core with 100 members);
    the refused joiner gets the error, and an existing member still fits."""
    server = await start_server(presence_max_bytes=5 * 1017)
    pad = "x" * 990  # each member serializes to 1017 bytes
    for i in range(5):
        await join(server, f"user-{i:03d}", pad)
    extra = await server.connect(claims("user-extra", pad))
    await extra.send({"event": "hotsock.subscribe", "channel": CH})
    err = await extra.expect("hotsock.error")
    assert err["error"]["code"] == "PRESENCE_CHANNEL_CAPACITY_REACHED" and err["channel"] == CH
    again = await server.connect(claims("user-000", pad))  # an existing member still fits
    await again.subscribe(CH)


async def test_subscription_counts_and_omit(server: Server) -> None:
    """subscriptionsCount counts subscriptions, not users; omitFromSubCount ones are not counted
    but are still members."""
    a = await server.connect(claims("a"))
    await a.subscribe("room")
    b = await server.connect(claims("b"))
    await b.subscribe("room")
    hidden = await server.connect(claims("spy", omitFromSubCount=True))
    await hidden.subscribe("room")
    await hidden.subscribe(CH)
    assert await channel_info(server, "room") == (200, {"name": "room", "subscriptionsCount": 2})
    assert await channel_info(server, CH) == (
        200,
        {"name": CH, "subscriptionsCount": 0, "members": [member("spy")]},
    )
    await a.close()
    await wait_gone(server, a)
    assert (await channel_info(server, "room"))[1]["subscriptionsCount"] == 1


async def test_subscription_counts_exact_under_concurrency(server: Server) -> None:
    clients = await asyncio.gather(*(server.connect(claims(f"c{i}")) for i in range(40)))
    await asyncio.gather(*(c.subscribe("room") for c in clients))
    assert (await channel_info(server, "room"))[1]["subscriptionsCount"] == 40
    await asyncio.gather(*(c.close() for c in clients[:25]))
    for c in clients[:25]:
        await wait_gone(server, c)
    assert (await channel_info(server, "room"))[1]["subscriptionsCount"] == 15


async def test_admin_channels_api_errors(server: Server) -> None:
    assert (await channel_info(server, "unused"))[1] == {"name": "unused", "subscriptionsCount": 0}
    assert (await channel_info(server, "presence.none"))[1]["members"] == []
    status, body = await channel_info(server, "room", key="wrong")
    assert status == 401 and body["error"]["code"] == "UNAUTHORIZED"
    async with server.http.post(f"{server.base}/channels/room") as resp:
        assert resp.status == 405
        assert (await resp.json())["error"]["code"] == "METHOD_NOT_ALLOWED"
    status, body = await channel_info(server, "a%2Fb")
    assert status == 200 and body["name"] == "a/b"


async def test_subscribe_rolled_back_when_broker_is_unavailable(server: Server) -> None:
    """A subscribe the broker cannot take gets SERVICE_UNAVAILABLE and leaves no trace; the
    retry then succeeds with exact members and counts (a Redis outage is simulated at the edge)."""
    from tidings.errors import BrokerUnavailable

    broker = server.node.broker
    real_subscribe = broker.subscribe
    failures = {"left": 1}

    async def flaky_subscribe(channel: str) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise BrokerUnavailable("the broker is unreachable")
        await real_subscribe(channel)

    broker.subscribe = flaky_subscribe  # type: ignore[method-assign]
    jim = await server.connect(claims("jim"))
    await jim.send({"event": "hotsock.subscribe", "channel": CH})
    err = await jim.expect("hotsock.error")
    assert err["channel"] == CH and err["error"]["code"] == "SERVICE_UNAVAILABLE"
    assert (await channel_info(server, CH))[1] == {
        "name": CH,
        "subscriptionsCount": 0,
        "members": [],
    }
    sub = await jim.subscribe(CH)
    assert sub["data"]["members"] == [member("jim")]
    assert (await channel_info(server, CH))[1]["subscriptionsCount"] == 1
