"""WebSocket behaviour through real clients (spec §4, §5, §6, §8, §18)."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable

import orjson
import pytest
import websockets
from tests.conftest import MS, Server, StartServer, make_token


def _unsigned_token(claims: dict[str, object]) -> str:
    """An ``alg: none`` token, which must always be refused."""

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    header = orjson.dumps({"alg": "none", "typ": "JWT"})
    return b64(header) + "." + b64(orjson.dumps(claims)) + "."


OPEN = {"channels": {"room": {"subscribe": True, "messages": {"*": {"publish": True}}}}}


async def test_client_connect_receives_connected_first(server: Server) -> None:
    """hotsock.connected is the first frame, with ID, secret, expiry and meta."""
    client = await server.connect({"uid": "Jim", "umd": {"a": 1}})
    data = client.connected["data"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{15}=", data["connectionId"])
    assert re.fullmatch(r"[A-Za-z0-9]{20}", data["connectionSecret"])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["connectionExpiresAt"])
    assert client.connected["meta"] == {"uid": "Jim", "umd": {"a": 1}}


async def test_client_connect_on_v1_alias_path(server: Server) -> None:
    """/v1 is accepted as the WebSocket path."""
    client = await server.connect({}, path="/v1")
    assert client.connected["meta"] == {"uid": None, "umd": None}


@pytest.mark.parametrize(
    "token",
    [
        lambda: "garbage",
        lambda: "",
        lambda: make_token({}, secret=b"another-secret-another-secret-123"),
        lambda: make_token({}, ttl=-10),
        lambda: make_token({"nbf": int(time.time()) + 60}),
        lambda: make_token({}, scope="subscribe"),
        lambda: make_token({"connectionId": "abc"}),
        lambda: "x" * 20000,
        lambda: make_token({"umd": "x" * 2000}),
        lambda: make_token({"uid": "u" * 129}),
        lambda: make_token({"heartbeatTimeout": 4}),
        lambda: make_token({"channels": {"c": {"subscribe": "yes"}}}),
        lambda: _unsigned_token({"scope": "connect", "exp": int(time.time()) + 60}),
    ],
    ids=[
        "garbage",
        "empty",
        "wrong-key",
        "expired",
        "nbf",
        "wrong-scope",
        "bound",
        "oversized",
        "big-umd",
        "long-uid",
        "heartbeat-range",
        "bad-directive",
        "alg-none",
    ],
)
async def test_client_connect_with_bad_token_gets_401(
    server: Server, token: Callable[[], str]
) -> None:
    """Every bad connect token is refused at the handshake with 401 INVALID_CONNECT_TOKEN."""
    # built when the test runs: a token made at collection time would expire in a long run
    async with server.http.get(
        server.ws_url,
        params={"token": token()},
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    ) as resp:
        assert resp.status == 401
        body = await resp.json()
        assert body["error"]["code"] == "INVALID_CONNECT_TOKEN"
        assert body["error"]["message"]


async def test_client_connect_without_token_gets_401(server: Server) -> None:
    """No ?token at all is a 401 too, and the server keeps serving."""
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(server.ws_url)
    assert info.value.response.status_code == 401
    await server.connect({})


async def test_plain_get_on_socket_path_is_426(server: Server) -> None:
    """A non-upgrade GET / gets a JSON error, not a crash."""
    async with server.http.get(server.ws_url.replace("ws:", "http:")) as resp:
        assert resp.status == 426
        assert (await resp.json())["error"]["code"] == "INVALID_MESSAGE"


async def test_single_use_connect_token_refused_on_replay(server: Server) -> None:
    """A singleUse connect token works once."""
    token = make_token({"singleUse": True, "jti": "once-1"})
    await server.connect(token=token)
    with pytest.raises(websockets.InvalidStatus) as info:
        await websockets.connect(f"{server.ws_url}?token={token}")
    assert info.value.response.status_code == 401


async def test_client_ping_gets_pong(server: Server) -> None:
    client = await server.connect({})
    await client.send({"event": "hotsock.ping"})
    assert await client.recv() == {"event": "hotsock.pong", "data": {}}
    await client.send({"event": "hotsock.pong"})
    await client.send({"event": "hotsock.heartbeat"})
    await client.nothing()


async def test_subscribe_and_receive_server_message(server: Server) -> None:
    """A subscriber receives a server publish without meta, with a ULID id."""
    client = await server.connect(OPEN)
    sub = await client.subscribe("room")
    assert sub == {
        "event": "hotsock.subscribed",
        "channel": "room",
        "data": {},
        "meta": {"uid": None, "umd": None},
    }
    await server.publish({"channel": "room", "event": "hello", "data": {"x": 1}})
    msg = await client.recv()
    assert set(msg) == {"id", "event", "channel", "data"}
    assert msg["event"] == "hello" and msg["channel"] == "room" and msg["data"] == {"x": 1}
    assert re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", msg["id"])


async def test_server_publish_without_data_sends_null(server: Server) -> None:
    client = await server.connect(OPEN)
    await client.subscribe("room")
    await server.publish({"channel": "room", "event": "bare"})
    assert (await client.recv())["data"] is None


async def test_subscribe_errors(server: Server) -> None:
    """ALREADY_SUBSCRIBED, NOT_SUBSCRIBED, SUBSCRIBE_PERMISSION_DENIED, INVALID_CHANNEL."""
    client = await server.connect(OPEN)
    await client.subscribe("room")
    await client.send({"event": "hotsock.subscribe", "channel": "room"})
    err = await client.expect("hotsock.error")
    assert err == {
        "event": "hotsock.error",
        "channel": "room",
        "error": {"code": "ALREADY_SUBSCRIBED", "message": err["error"]["message"]},
    }
    await client.send({"event": "hotsock.unsubscribe", "channel": "other"})
    assert (await client.expect("hotsock.error"))["error"]["code"] == "NOT_SUBSCRIBED"
    await client.send({"event": "hotsock.subscribe", "channel": "secret"})
    err = await client.expect("hotsock.error")
    assert err["error"]["code"] == "SUBSCRIBE_PERMISSION_DENIED" and err["channel"] == "secret"
    await client.send({"event": "hotsock.subscribe", "channel": "bad channel"})
    assert (await client.expect("hotsock.error"))["error"]["code"] == "INVALID_CHANNEL"
    await client.send({"event": "hotsock.subscribe"})
    assert (await client.expect("hotsock.error"))["error"]["code"] == "INVALID_CHANNEL"


async def test_unsubscribe_stops_delivery(server: Server) -> None:
    client = await server.connect(OPEN)
    await client.subscribe("room")
    await client.send({"event": "hotsock.unsubscribe", "channel": "room"})
    assert await client.recv() == {
        "event": "hotsock.unsubscribed",
        "channel": "room",
        "data": {},
        "meta": {"uid": None, "umd": None},
    }
    await server.publish({"channel": "room", "event": "e"})
    await client.nothing()


async def test_subscribe_with_subscribe_token(server: Server) -> None:
    """A subscribe token bound to the connection grants a channel the connect token lacks."""
    client = await server.connect({"uid": "u1"})
    token = make_token(
        {"connectionId": client.id, "channels": {"private": {"subscribe": True}}, "umd": {"r": 1}},
        scope="subscribe",
    )
    sub = await client.subscribe("private", token)
    assert sub["meta"] == {"uid": "u1", "umd": {"r": 1}}
    by_uid = make_token({"uid": "u1", "channels": {"p2": {"subscribe": True}}}, scope="subscribe")
    await client.subscribe("p2", by_uid)


@pytest.mark.parametrize(
    "claims,scope",
    [
        ({"connectionId": "someone-else===", "channels": {"x": {"subscribe": True}}}, "subscribe"),
        ({"uid": "other", "channels": {"x": {"subscribe": True}}}, "subscribe"),
        ({"channels": {"x": {"subscribe": True}}}, "subscribe"),
        ({"connectionId": None, "channels": {"x": {"subscribe": True}}}, "connect"),
    ],
    ids=["other-connection", "other-uid", "unbound", "wrong-scope"],
)
async def test_subscribe_with_bad_subscribe_token(
    server: Server, claims: dict[str, object], scope: str
) -> None:
    """Unbound, foreign or wrong-scope subscribe tokens → INVALID_SUBSCRIBE_TOKEN."""
    client = await server.connect({"uid": "u1"})
    await client.send(
        {
            "event": "hotsock.subscribe",
            "channel": "x",
            "data": {"token": make_token(claims, scope=scope)},
        }
    )
    err = await client.expect("hotsock.error")
    assert err["error"]["code"] == "INVALID_SUBSCRIBE_TOKEN" and err["channel"] == "x"


async def test_single_use_subscribe_token_replay_refused(server: Server) -> None:
    client = await server.connect({"uid": "u1"})
    token = make_token(
        {
            "uid": "u1",
            "singleUse": True,
            "jti": "sub-once",
            "channels": {"a": {"subscribe": True}, "b": {"subscribe": True}},
        },
        scope="subscribe",
    )
    await client.subscribe("a", token)
    await client.send({"event": "hotsock.subscribe", "channel": "b", "data": {"token": token}})
    assert (await client.expect("hotsock.error"))["error"]["code"] == "INVALID_SUBSCRIBE_TOKEN"


async def test_client_publish_needs_subscription(server: Server) -> None:
    """publish: true works only while subscribed (§3.12)."""
    sender = await server.connect(OPEN)
    receiver = await server.connect(OPEN)
    await receiver.subscribe("room")
    await sender.send({"channel": "room", "event": "chat", "data": "hi"})
    err = await sender.expect("hotsock.error")
    assert err["error"]["code"] == "PUBLISH_PERMISSION_DENIED" and err["channel"] == "room"
    await sender.subscribe("room")
    await sender.send({"channel": "room", "event": "chat", "data": "hi"})
    msg = await receiver.recv()
    assert msg["data"] == "hi" and msg["meta"] == {"uid": None, "umd": None}
    await sender.nothing()  # no echo by default


async def test_client_broadcast_without_subscription(server: Server) -> None:
    """broadcast: true publishes without subscribing; echo sends the sender a copy."""
    claims = {
        "uid": "b",
        "channels": {
            "room": {"subscribe": True, "messages": {"tele": {"broadcast": True, "echo": True}}}
        },
    }
    sender = await server.connect(claims)
    receiver = await server.connect(OPEN)
    await receiver.subscribe("room")
    await sender.send({"channel": "room", "event": "tele", "data": 1})
    assert (await receiver.recv())["meta"] == {"uid": "b", "umd": None}
    await sender.nothing()  # echo needs the sender to be subscribed to receive
    await sender.subscribe("room")
    await sender.send({"channel": "room", "event": "tele", "data": 2})
    assert (await sender.recv())["data"] == 2


async def test_client_publish_explicit_false_denies(server: Server) -> None:
    claims = {
        "channels": {
            "room": {
                "subscribe": True,
                "messages": {"*": {"publish": True, "broadcast": True}, "nope": {"publish": False}},
            }
        }
    }
    client = await server.connect(claims)
    await client.subscribe("room")
    await client.send({"channel": "room", "event": "nope"})
    assert (await client.expect("hotsock.error"))["error"]["code"] == "PUBLISH_PERMISSION_DENIED"


@pytest.mark.parametrize(
    "frame,code",
    [
        ("not json", "INVALID_MESSAGE"),
        ("[1,2]", "INVALID_MESSAGE"),
        ('{"event":["x"]}', "INVALID_MESSAGE"),
        ('{"event":"hotsock.bogus"}', "INVALID_EVENT"),
        ('{"channel":"room"}', "INVALID_EVENT"),
        ('{"channel":5,"event":"x"}', "INVALID_MESSAGE"),
        ('{"channel":"room","event":"a*b"}', "INVALID_EVENT"),
        ('{"channel":"room","event":"#x"}', "INVALID_EVENT"),
        ('{"channel":"bad,name","event":"x"}', "INVALID_CHANNEL"),
        ('{"channel":"room","event":"' + "e" * 129 + '"}', "INVALID_EVENT"),
        ('{"channel":"room","event":"x","data":"' + "d" * 33000 + '"}', "DATA_TOO_LARGE"),
        ("[" * 5000 + "]" * 5000, "INVALID_MESSAGE"),
        ('{"event":"hotsock.subscribe","channel":"room","data":"tok"}', "INVALID_MESSAGE"),
    ],
    ids=[
        "not-json",
        "array",
        "event-type",
        "unknown-hotsock",
        "no-event",
        "channel-type",
        "star-event",
        "hash-event",
        "bad-channel",
        "long-event",
        "big-data",
        "deep",
        "data-type",
    ],
)
async def test_bad_frames_get_errors_and_connection_survives(
    server: Server, frame: str, code: str
) -> None:
    client = await server.connect(OPEN)
    await client.subscribe("room")
    await client.send(frame)
    err = await client.expect("hotsock.error")
    assert err["error"]["code"] == code, err
    assert isinstance(err["error"]["message"], str) and err["error"]["message"]
    await client.send({"event": "hotsock.ping"})
    await client.expect("hotsock.pong")


async def test_binary_frame_gets_invalid_message(server: Server) -> None:
    client = await server.connect({})
    await client.ws.send(b"\x00\x01")
    assert (await client.expect("hotsock.error"))["error"]["code"] == "INVALID_MESSAGE"


async def test_oversized_frame_closes_1009(server: Server) -> None:
    """Frames over 128 KiB close the connection with 1009; others are unaffected."""
    other = await server.connect({})
    client = await server.connect({})
    await client.send('{"event":"hotsock.ping","pad":"' + "x" * (130 * 1024) + '"}')
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    await other.send({"event": "hotsock.ping"})
    await other.expect("hotsock.pong")


async def test_subscription_cap_per_connection(start_server: StartServer) -> None:
    server = await start_server(max_subscriptions=2)
    client = await server.connect({"channels": {"*": {"subscribe": True}}})
    await client.subscribe("a")
    await client.subscribe("b")
    await client.send({"event": "hotsock.subscribe", "channel": "c"})
    err = await client.expect("hotsock.error")
    assert (
        err["error"]["code"] == "SUBSCRIBE_PERMISSION_DENIED" and "limit" in err["error"]["message"]
    )


async def test_idle_timeout_closes_1001(start_server: StartServer) -> None:
    server = await start_server(idle_timeout_seconds=0.3)
    client = await server.connect({})
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.recv(timeout=3000 * MS)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_activity_defers_idle_timeout(start_server: StartServer) -> None:
    server = await start_server(idle_timeout_seconds=0.4)
    client = await server.connect({})
    for _ in range(4):
        await asyncio.sleep(0.2)
        await client.send({"event": "hotsock.ping"})
        await client.expect("hotsock.pong")


async def test_connection_lifetime_cap_closes_1001(start_server: StartServer) -> None:
    server = await start_server(max_connection_seconds=0.4)
    client = await server.connect({})
    await client.send({"event": "hotsock.ping"})
    await client.expect("hotsock.pong")
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.recv(timeout=3000 * MS)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001


async def test_keepalive_frames_sent(start_server: StartServer) -> None:
    server = await start_server(keepalive_seconds=0.15)
    client = await server.connect({"keepAlive": True})
    assert await client.recv(timeout=2000 * MS) == {"event": "hotsock.keepAlive", "data": {}}
    assert await client.recv(timeout=2000 * MS) == {"event": "hotsock.keepAlive", "data": {}}
    quiet = await server.connect({})
    await quiet.nothing(300 * MS)


async def test_heartbeat_timeout(start_server: StartServer) -> None:
    """heartbeatTimeout closes with 1001 'heartbeat timeout' unless heartbeats arrive."""
    server = await start_server()
    # the claim's minimum is 5 s; drive the deadline with heartbeats for 6 s
    beating = await server.connect({"heartbeatTimeout": 5})
    silent = await server.connect({"heartbeatTimeout": 5})
    for _ in range(4):
        await asyncio.sleep(1)
        await beating.send({"event": "hotsock.heartbeat"})
        await silent.send({"event": "hotsock.ping"})  # pings do not count as heartbeats
        await silent.recv()
    with pytest.raises(websockets.ConnectionClosed) as info:
        await silent.recv(timeout=3000 * MS)
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    assert info.value.rcvd.reason == "heartbeat timeout"
    await beating.send({"event": "hotsock.ping"})
    await beating.expect("hotsock.pong")


@pytest.mark.timeout(60)
async def test_slow_consumer_does_not_stall_others(start_server: StartServer) -> None:
    """A client that never reads is closed (1013) while a healthy one gets everything."""
    server = await start_server(queue_max_bytes=2 << 20)
    healthy = await server.connect(OPEN)
    await healthy.subscribe("room")
    stuck = await server.connect(OPEN)
    await stuck.subscribe("room")
    stuck.ws.transport.pause_reading()  # never read again: kernel buffers, then ours, fill up
    payload = "y" * 4000
    total = 8000

    for _ in range(0, total, 10):
        await server.publish([{"channel": "room", "event": "m", "data": payload}] * 10)
        for _ in range(10):  # the healthy client keeps up with the publisher
            assert (await healthy.recv(timeout=5000 * MS))["data"] == payload
    for _ in range(200):
        if len(server.hub.connections) == 1:
            break
        await asyncio.sleep(10 * MS)
    assert [c.closed for c in server.hub.connections.values()] == [False], server.hub.connections
    assert list(server.hub.connections) == [healthy.id]
    stuck.ws.transport.resume_reading()
    with pytest.raises(websockets.ConnectionClosed) as info:
        while True:
            await stuck.recv(timeout=5000 * MS)
    assert info.value.rcvd is None or info.value.rcvd.code == 1013


async def test_message_order_and_monotonic_ids(server: Server) -> None:
    """IDs strictly increase per channel and arrive in that order."""
    client = await server.connect(OPEN)
    await client.subscribe("room")
    await asyncio.gather(
        *[server.publish({"channel": "room", "event": "n", "data": i}) for i in range(50)]
    )
    ids = [(await client.recv())["id"] for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50


async def test_wildcard_and_regex_channel_keys(server: Server) -> None:
    claims = {
        "channels": {
            "chat.*": {"subscribe": True},
            "#regex:^user\\.[0-9]+$": {"subscribe": True},
            "chat.secret": {"subscribe": False},
        }
    }
    client = await server.connect(claims)
    await client.subscribe("chat.a.b")
    await client.subscribe("user.42")
    for denied in ("chat.secret", "user.x"):
        await client.send({"event": "hotsock.subscribe", "channel": denied})
        assert (await client.expect("hotsock.error"))["error"][
            "code"
        ] == "SUBSCRIBE_PERMISSION_DENIED"


async def test_token_with_invalid_regex_refused(server: Server) -> None:
    token = make_token({"channels": {"#regex:(?=x)": {"subscribe": True}}})
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(f"{server.ws_url}?token={token}")


async def test_auto_subscribe_and_alias(server: Server) -> None:
    claims = {
        "uid": "u",
        "channels": {
            "user.123": {
                "autoSubscribe": True,
                "alias": "me",
                "messages": {"*": {"publish": True, "echo": True}},
            }
        },
    }
    client = await server.connect(claims)
    sub = await client.expect("hotsock.subscribed")
    assert sub["channel"] == "user.123" and sub["data"] == {"autoSubscribed": True}
    assert sub["meta"] == {"channelAlias": "me", "uid": "u", "umd": None}
    await client.send({"event": "hotsock.subscribe", "channel": "me"})
    err = await client.expect("hotsock.error")
    assert err["error"]["code"] == "ALREADY_SUBSCRIBED" and err["channel"] == "me"
    await client.send({"channel": "me", "event": "hi"})
    assert (await client.recv())["channel"] == "user.123"
    await client.send({"event": "hotsock.unsubscribe", "channel": "me"})
    unsub = await client.expect("hotsock.unsubscribed")
    assert unsub["channel"] == "user.123" and unsub["meta"]["channelAlias"] == "me"


async def test_presence_subscribe_needs_uid(server: Server) -> None:
    client = await server.connect({"channels": {"presence.x": {"subscribe": True}}})
    await client.send({"event": "hotsock.subscribe", "channel": "presence.x"})
    err = await client.expect("hotsock.error")
    assert err["error"]["code"] == "PRESENCE_CHANNEL_USER_ID_REQUIRED"


async def test_disconnect_removes_subscriptions(server: Server) -> None:
    client = await server.connect(OPEN)
    await client.subscribe("room")
    assert await server.hub.subscriptions_count("room") == 1
    await client.close()
    for _ in range(100):
        if not server.hub.connections:
            break
        await asyncio.sleep(10 * MS)
    assert await server.hub.subscriptions_count("room") == 0


async def test_graceful_stop_closes_1001(start_server: StartServer) -> None:
    server = await start_server()
    client = await server.connect({})
    await server.node.stop()
    with pytest.raises(websockets.ConnectionClosed) as info:
        await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001
    server.node.stop = _noop  # type: ignore[method-assign]


async def _noop() -> None:
    return None


async def test_outbound_messages_count_as_activity(start_server: StartServer) -> None:
    """A client that only listens stays connected while messages keep flowing to it."""
    server = await start_server(idle_timeout_seconds=0.4)
    client = await server.connect(OPEN)
    await client.subscribe("room")
    for i in range(8):
        await asyncio.sleep(0.15)
        await server.publish({"channel": "room", "event": "tick", "data": i})
        assert (await client.recv())["data"] == i


@pytest.mark.parametrize(
    ("request_line", "status"),
    [
        ("GET /?token={token} HTTP/1.1", 414),  # a request line over 64 KiB
        ("GET /?x=1 HTTP/1.1\r\nX-Big: {token}", 414),  # a header line over 16 KiB
        ("GET /?token={token}\x00 HTTP/1.1", 400),  # malformed
    ],
    ids=["long-line", "long-header", "malformed"],
)
async def test_malformed_request_gets_json_and_leaks_nothing(
    server: Server, request_line: str, status: int
) -> None:
    """A request no route sees is answered with a JSON error that quotes nothing of it; the
    secret scan of the logs (tests/secret_scan.py) checks nothing of the token was logged."""
    token = make_token({"pad": "x" * 70000})
    reader, writer = await asyncio.open_connection("127.0.0.1", server.node.port)
    writer.write((request_line.format(token=token) + "\r\nHost: x\r\n\r\n").encode())
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status}".encode()) or head.startswith(
        f"HTTP/1.0 {status}".encode()
    ), head
    assert b"application/json" in head
    assert orjson.loads(body)["error"]["code"] == "INVALID_MESSAGE"
    assert token[:20].encode() not in answer
