"""``umdUpdate`` / ``umdPropagate`` (spec §3.13, §13) and ``getChannelInfo`` (§10.2) through
real WebSocket and HTTP clients."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from tests.conftest import API_KEY, MS, Client, Server, StartServer, make_token

CH = "presence.team"
ROOM = "room.1"


def connect_claims(uid: str | None, umd: Any = None, **directives: Any) -> dict[str, Any]:
    messages = {"chat": {"publish": True, "echo": True}}
    claims: dict[str, Any] = {
        "channels": {
            "presence.*": {"subscribe": True, "messages": messages, **directives},
            "room.*": {"subscribe": True, "messages": messages, **directives},
        }
    }
    if uid is not None:
        claims["uid"] = uid
    if umd is not None:
        claims["umd"] = umd
    return claims


def umd_token(claims: dict[str, Any], *, scope: str = "umd", ttl: int = 300) -> str:
    return make_token(claims, scope=scope, ttl=ttl)


def channel_grant(umd: Any, uid: str = "Jim", channel: str = "presence.*", **extra: Any) -> str:
    """A umd token for ``uid`` granting a per-channel update of ``channel`` to ``umd``."""
    return umd_token({"uid": uid, "umd": umd, "channels": {channel: {"umdUpdate": True}}, **extra})


def update_frame(token: Any, channel: str | None = CH) -> dict[str, Any]:
    frame: dict[str, Any] = {"event": "hotsock.umdUpdate", "data": {"token": token}}
    if channel is not None:
        frame["channel"] = channel
    return frame


async def join(server: Server, uid: str, umd: Any = None, channel: str = CH) -> Client:
    client = await server.connect(connect_claims(uid, umd))
    await client.subscribe(channel)
    return client


async def test_channel_umd_update_announces_member_updated_to_everyone(server: Server) -> None:
    """A per-channel update sends ``hotsock.memberUpdated`` to every subscriber, the caller
    included, nothing else to the caller; later messages carry the new umd."""
    jim = await join(server, "Jim", {"status": "here"})
    pam = await join(server, "Pam")
    await jim.expect("hotsock.memberAdded")
    await jim.send(update_frame(channel_grant({"status": "away"})))
    for client in (jim, pam):
        updated = await client.expect("hotsock.memberUpdated")
        assert updated == {
            "event": "hotsock.memberUpdated",
            "channel": CH,
            "data": {
                "member": {"uid": "Jim", "umd": {"status": "away"}},
                "members": [
                    {"uid": "Jim", "umd": {"status": "away"}},
                    {"uid": "Pam", "umd": None},
                ],
            },
        }
    await jim.nothing()
    await jim.send({"channel": CH, "event": "chat", "data": "hi"})
    message = await pam.expect("chat")
    assert message["meta"] == {"uid": "Jim", "umd": {"status": "away"}}
    assert (await jim.expect("chat"))["meta"]["umd"] == {"status": "away"}

    await jim.send(update_frame(channel_grant({"status": "away"})))  # unchanged: silent
    await jim.nothing()
    await pam.nothing()


async def test_member_updated_is_deduplicated_by_uid(server: Server) -> None:
    """With two connections of one uid, an update to the value already shown is silent."""
    first = await join(server, "Jim")
    second = await join(server, "Jim")
    pam = await join(server, "Pam")
    await first.expect("hotsock.memberAdded")
    await second.expect("hotsock.memberAdded")
    await first.send(update_frame(channel_grant({"v": 1})))
    for client in (first, second, pam):
        assert (await client.expect("hotsock.memberUpdated"))["data"]["member"] == {
            "uid": "Jim",
            "umd": {"v": 1},
        }
    await second.send(update_frame(channel_grant({"v": 1})))
    for client in (first, second, pam):
        await client.nothing()


async def test_standard_channel_umd_update_changes_later_messages(server: Server) -> None:
    """On a standard channel the update only changes the subscription's ``meta``."""
    jim = await join(server, "Jim", channel=ROOM)
    await jim.send(update_frame(channel_grant([1, 2], channel="room.*"), ROOM))
    await jim.nothing()
    await jim.send({"channel": ROOM, "event": "chat", "data": 1})
    assert (await jim.expect("chat"))["meta"] == {"uid": "Jim", "umd": [1, 2]}


async def test_connection_umd_update_with_and_without_propagate(server: Server) -> None:
    """Connection-level updates change later subscriptions; ``umdPropagate`` also rewrites
    every existing subscription (presence announces it)."""
    jim = await join(server, "Jim", {"v": 0})
    pam = await join(server, "Pam")
    await jim.expect("hotsock.memberAdded")
    await jim.send(
        update_frame(umd_token({"uid": "Jim", "umd": {"v": 1}, "umdUpdate": True}), None)
    )
    await jim.nothing()
    await pam.nothing()
    sub = await jim.subscribe(ROOM)
    assert sub["meta"] == {"uid": "Jim", "umd": {"v": 1}}
    await jim.send({"channel": CH, "event": "chat", "data": 0})
    assert (await pam.expect("chat"))["meta"]["umd"] == {"v": 0}  # not propagated
    await jim.expect("chat")

    token = umd_token({"uid": "Jim", "umd": {"v": 2}, "umdUpdate": True, "umdPropagate": True})
    await jim.send(update_frame(token, None))
    for client in (jim, pam):
        updated = await client.expect("hotsock.memberUpdated")
        assert updated["data"]["member"] == {"uid": "Jim", "umd": {"v": 2}}
    await jim.send({"channel": ROOM, "event": "chat", "data": 1})
    assert (await jim.expect("chat"))["meta"]["umd"] == {"v": 2}


async def test_http_umd_update_answers_200(server: Server) -> None:
    """``connection/umdUpdate`` answers ``{}``; per channel when ``channel`` is given."""
    jim = await join(server, "Jim")
    _, body = await server.call(
        jim, "umdUpdate", {"token": channel_grant({"via": "http"}), "channel": CH}, status=200
    )
    assert body == {}
    assert (await jim.expect("hotsock.memberUpdated"))["data"]["member"]["umd"] == {"via": "http"}
    token = umd_token({"uid": "Jim", "umd": "c", "umdUpdate": True})
    await server.call(jim, "umdUpdate", {"token": token}, status=200)
    await jim.nothing()


@pytest.mark.parametrize(
    "make,code",
    [
        (lambda conn_id: "not-a-token", "INVALID_UMD_TOKEN"),
        (lambda conn_id: 5, "INVALID_UMD_TOKEN"),
        (lambda conn_id: None, "INVALID_UMD_TOKEN"),
        (
            lambda conn_id: umd_token(
                {"uid": "Jim", "channels": {"presence.*": {"umdUpdate": True}}}, ttl=-10
            ),
            "INVALID_UMD_TOKEN",
        ),
        (
            lambda conn_id: umd_token(
                {"uid": "Jim", "channels": {"presence.*": {"umdUpdate": True}}}, scope="connect"
            ),
            "INVALID_UMD_TOKEN",
        ),
        (lambda conn_id: channel_grant({"x": 1}, uid="Pam"), "INVALID_UMD_TOKEN"),
        (
            lambda conn_id: umd_token(
                {
                    "connectionId": "AAAAAAAAAAAAAAA=",
                    "channels": {"presence.*": {"umdUpdate": True}},
                }
            ),
            "INVALID_UMD_TOKEN",
        ),
        (
            lambda conn_id: umd_token({"umd": 1, "channels": {"presence.*": {"umdUpdate": True}}}),
            "INVALID_UMD_TOKEN",
        ),
        (lambda conn_id: umd_token({"uid": "Jim", "umd": 1}), "UMD_UPDATE_PERMISSION_DENIED"),
        (
            lambda conn_id: channel_grant(1, channel="presence.*", umdUpdate=False),
            None,  # top-level umdUpdate does not matter per channel
        ),
        (
            lambda conn_id: umd_token(
                {
                    "uid": "Jim",
                    "channels": {"presence.*": {"umdUpdate": False}, "*": {"umdUpdate": True}},
                }
            ),
            "UMD_UPDATE_PERMISSION_DENIED",
        ),
        (lambda conn_id: channel_grant(1, channel="room.*"), "UMD_UPDATE_PERMISSION_DENIED"),
    ],
)
async def test_channel_umd_update_refusals(server: Server, make: Any, code: str | None) -> None:
    """Every bad umd token is refused with its code, over both transports, and changes
    nothing; a token bound by ``connectionId`` works."""
    jim = await join(server, "Jim")
    token = make(jim.id)
    await jim.send(update_frame(token))
    if code is None:
        await jim.expect("hotsock.memberUpdated")
        return
    error = await jim.expect("hotsock.error")
    assert error["error"]["code"] == code and error["channel"] == CH
    body = {"channel": CH} if token is None else {"channel": CH, "token": token}
    _, answer = await server.call(jim, "umdUpdate", body, status=403)
    assert answer["error"]["code"] == code
    await jim.nothing()


async def test_umd_token_bound_by_connection_id_and_single_use(server: Server) -> None:
    """A token naming the connection works for it; a ``singleUse`` one only once, and a
    refused attempt does not use it up."""
    jim = await join(server, "Jim")
    bound = umd_token(
        {
            "connectionId": jim.id,
            "umd": {"n": 1},
            "jti": "umd-once",
            "singleUse": True,
            "channels": {"presence.*": {"umdUpdate": True}},
        }
    )
    await jim.send(update_frame(bound, "presence.elsewhere"))  # not subscribed: refused
    assert (await jim.expect("hotsock.error"))["error"]["code"] == "SUBSCRIPTION_REQUIRED"
    await jim.send(update_frame(bound))
    assert (await jim.expect("hotsock.memberUpdated"))["data"]["member"]["umd"] == {"n": 1}
    await jim.send(update_frame(bound))
    error = await jim.expect("hotsock.error")
    assert (
        error["error"]["code"] == "INVALID_UMD_TOKEN" and "singleUse" in error["error"]["message"]
    )


async def test_umd_update_bad_frames(server: Server) -> None:
    """A non-object ``data``, an invalid channel and a missing subscription are refused."""
    jim = await join(server, "Jim")
    for frame, code in [
        ({"event": "hotsock.umdUpdate", "channel": CH, "data": "t"}, "INVALID_MESSAGE"),
        (update_frame(channel_grant(1), "a b"), "INVALID_CHANNEL"),
        (update_frame(channel_grant(1), "presence.other"), "SUBSCRIPTION_REQUIRED"),
    ]:
        await jim.send(frame)
        assert (await jim.expect("hotsock.error"))["error"]["code"] == code
    await jim.nothing()


async def test_umd_update_over_presence_capacity(start_server: StartServer) -> None:
    """A growing umd that would overflow the member list is refused (409 over HTTP) and the
    member keeps its old value."""
    server = await start_server(presence_max_bytes=200)
    jim = await join(server, "Jim", {"s": "small"})
    big = channel_grant({"s": "x" * 300})
    await jim.send(update_frame(big))
    error = await jim.expect("hotsock.error")
    assert error["error"]["code"] == "PRESENCE_CHANNEL_CAPACITY_REACHED"
    _, body = await server.call(jim, "umdUpdate", {"token": big, "channel": CH}, status=409)
    assert body["error"]["code"] == "PRESENCE_CHANNEL_CAPACITY_REACHED"
    assert await server.hub.members(CH) == [{"uid": "Jim", "umd": {"s": "small"}}]
    await jim.nothing()


# getChannelInfo


def info_claims(uid: str, get_info: Any = True) -> dict[str, Any]:
    directives: dict[str, Any] = {"subscribe": True}
    if get_info is not None:
        directives["getInfo"] = get_info
    return {"uid": uid, "channels": {"presence.*": directives, "room.*": directives}}


async def admin_info(server: Server, name: str) -> Any:
    async with server.http.get(
        f"{server.base}/channels/{name}", headers={"Authorization": f"Bearer {API_KEY}"}
    ) as resp:
        return await resp.json()


async def test_get_channel_info_matches_the_admin_api(server: Server) -> None:
    """``getChannelInfo`` needs ``getInfo`` but no subscription, and gives the admin figures."""
    asker = await server.connect(info_claims("Asker"))
    _, body = await server.call(asker, "getChannelInfo", {"channel": CH}, status=200)
    assert body == {"channel": CH, "subscriptionsCount": 0, "members": []}
    await join(server, "Jim", {"a": 1})
    await join(server, "Jim")
    await join(server, "Pam")
    await asyncio.sleep(20 * MS)
    _, body = await server.call(asker, "getChannelInfo", {"channel": CH}, status=200)
    admin = await admin_info(server, CH)
    assert body["subscriptionsCount"] == admin["subscriptionsCount"] == 3
    assert body["members"] == admin["members"]
    assert [m["uid"] for m in body["members"]] == ["Jim", "Pam"]
    _, body = await server.call(asker, "getChannelInfo", {"channel": ROOM}, status=200)
    assert body == {"channel": ROOM, "subscriptionsCount": 0}


@pytest.mark.parametrize("get_info", [None, False])
async def test_get_channel_info_refused_without_get_info(server: Server, get_info: Any) -> None:
    """Without ``getInfo: true`` the answer is 403 ``GET_INFO_PERMISSION_DENIED``."""
    asker = await server.connect(info_claims("Asker", get_info))
    await asker.subscribe(ROOM)
    _, body = await server.call(asker, "getChannelInfo", {"channel": ROOM}, status=403)
    assert body["error"]["code"] == "GET_INFO_PERMISSION_DENIED"
    _, body = await server.call(asker, "getChannelInfo", {}, status=400)
    assert body["error"]["code"] == "INVALID_CHANNEL"
