"""Rate and connection limits (spec §24.3) through real clients on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
import websockets
from tests.conftest import MS, Client, Server, StartServer, make_token

ROOM = {"channels": {"room": {"subscribe": True, "messages": {"m": {"publish": True}}}}}


async def until_pong(client: Client) -> list[dict[str, Any]]:
    """Send a ping; return every frame received before its pong (frames keep their order)."""
    await client.send({"event": "hotsock.ping"})
    frames: list[dict[str, Any]] = []
    while True:
        frame = await client.recv(5000 * MS)
        if frame.get("event") == "hotsock.pong":
            return frames
        frames.append(frame)


def rate_limited(frames: list[dict[str, Any]]) -> int:
    return sum(
        1
        for f in frames
        if f.get("event") == "hotsock.error" and f["error"]["code"] == "RATE_LIMITED"
    )


async def test_flooding_client_is_limited_while_100_others_receive_everything(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    """One client sends 500 messages at once: past its burst it gets RATE_LIMITED (and stays
    connected); 100 well-behaved clients on the same channel receive every accepted message
    and each other's, nothing lost. The burst is logged once and every refusal counted."""
    caplog.set_level(logging.INFO, logger="tidings.refused")
    server = await start_server(client_messages_per_second=20, client_messages_burst=30)
    flooder = await server.connect(ROOM)
    await flooder.subscribe("room")
    good = [await server.connect(ROOM) for _ in range(100)]
    for client in good:
        await client.subscribe("room")
    for n in range(500):
        await flooder.send({"event": "m", "channel": "room", "data": {"flood": n}})
    await asyncio.sleep(1.6)  # the bucket refills: the ping after it is accepted
    before_pong = await until_pong(flooder)
    refused = rate_limited(before_pong)
    assert 400 <= refused < 500
    frame = next(f for f in before_pong if f.get("event") == "hotsock.error")
    assert frame["error"]["message"].startswith("too many messages")
    accepted = 500 - refused
    for i, client in enumerate(good):
        await client.send({"event": "m", "channel": "room", "data": {"good": i}})
    for i, client in enumerate(good):
        # no echo: a client does not get its own message back
        seen = [await client.expect("m", 5000 * MS) for _ in range(accepted + 99)]
        floods = [f["data"]["flood"] for f in seen if "flood" in f["data"]]
        assert floods == sorted(floods) and len(floods) == accepted
        others = {f["data"]["good"] for f in seen if "good" in f["data"]}
        assert others == set(range(100)) - {i}
        await client.nothing(50 * MS)
    lines = [r.getMessage() for r in caplog.records if "RATE_LIMITED" in r.getMessage()]
    assert len(lines) == 1, lines  # one line for the burst
    node = server.hub.metrics.node
    async with server.http.get(f"{server.base}/metrics") as resp:
        text = await resp.text()
    counted = f'tidings_refusals_total{{code="RATE_LIMITED",node="{node}",where="websocket"}}'
    assert f"{counted} {float(refused)}" in text


async def test_client_that_keeps_flooding_is_closed_with_1008(start_server: StartServer) -> None:
    """After rate_limited_close_after refusals in one burst the connection closes (1008)."""
    server = await start_server(
        client_messages_per_second=1, client_messages_burst=5, rate_limited_close_after=50
    )
    client = await server.connect({})
    with pytest.raises(websockets.ConnectionClosed) as info:
        for _ in range(200):
            await client.send({"event": "hotsock.ping"})
        while True:
            await client.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1008


async def test_message_rate_directive_lowers_and_raises_the_rate(
    start_server: StartServer,
) -> None:
    """messageRate in the connect token replaces the node's rate for that connection."""
    server = await start_server(client_messages_per_second=1, client_messages_burst=5)
    low = await server.connect({"messageRate": {"perSecond": 0.1, "burst": 2}})
    high = await server.connect({"messageRate": {"perSecond": 1000, "burst": 40}})
    plain = await server.connect({})
    for client, allowed in ((low, 2), (high, 30), (plain, 5)):
        for _ in range(30):
            await client.send({"event": "hotsock.ping"})
        frames = [await client.recv() for _ in range(30)]
        assert sum(1 for f in frames if f["event"] == "hotsock.pong") == allowed
        assert rate_limited(frames) == 30 - allowed


@pytest.mark.parametrize(
    "directive",
    [
        "fast",
        {"perSecond": 0, "burst": 1},
        {"perSecond": -1, "burst": 1},
        {"perSecond": 1, "burst": 0},
        {"perSecond": 1, "burst": 1.5},
        {"perSecond": True, "burst": 1},
        {"perSecond": 1, "burst": 1, "extra": 1},
    ],
)
async def test_malformed_message_rate_refuses_the_token(server: Server, directive: Any) -> None:
    """A malformed messageRate is a bad claim: the handshake answers 401."""
    token = make_token({"messageRate": directive})
    with pytest.raises(websockets.InvalidStatus) as info:
        await server.connect(token=token)
    assert info.value.response.status_code == 401
    assert b"messageRate" in info.value.response.body


async def test_client_http_api_calls_are_rate_limited(start_server: StartServer) -> None:
    """Past its burst a connection's Client HTTP API call gets 429 RATE_LIMITED with
    Retry-After; its WebSocket is unaffected."""
    server = await start_server(http_calls_per_second=0.5, http_calls_burst=3)
    client = await server.connect({"channels": {"room": {"subscribe": True, "getInfo": True}}})
    for _ in range(3):
        await server.call(client, "getChannelInfo", {"channel": "room"}, status=200)
    async with server.http.post(
        f"{server.base}/connection/getChannelInfo",
        params={"connectionId": client.id, "connectionSecret": client.secret},
        data=b'{"channel":"room"}',
    ) as resp:
        assert resp.status == 429
        assert resp.headers["Retry-After"] == "2"
        assert (await resp.json())["error"]["code"] == "RATE_LIMITED"
    await client.send({"event": "hotsock.ping"})
    await client.expect("hotsock.pong")


async def _handshake(
    server: Server, source: str, token: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One WebSocket upgrade from ``source``; the connection is dropped after the answer."""
    connector = aiohttp.TCPConnector(local_addr=(source, 0), force_close=True)
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            ws = await http.ws_connect(f"{server.ws_url}?token={token or make_token({})}")
        except aiohttp.WSServerHandshakeError as exc:
            return exc.status, dict(exc.headers or {}), b""
        await ws.close()
        return 101, {}, b""


async def test_handshake_burst_from_one_address_is_limited_while_another_connects(
    start_server: StartServer,
) -> None:
    """500 handshakes at once from 127.0.0.1 are limited (429 with Retry-After) past the
    burst, while 127.0.0.2 connects at the same moment."""
    server = await start_server(handshakes_per_ip_per_second=0.2, handshakes_per_ip_burst=50)
    token = make_token({})
    results = await asyncio.gather(
        *(_handshake(server, "127.0.0.1", token) for _ in range(500)),
        _handshake(server, "127.0.0.2", token),
    )
    other = results[-1]
    assert other[0] == 101
    statuses = [r[0] for r in results[:-1]]
    assert statuses.count(429) >= 400 and statuses.count(101) >= 50
    assert set(statuses) == {101, 429}
    refused = next(r for r in results[:-1] if r[0] == 429)
    assert int(refused[1]["Retry-After"]) >= 1
    # the body is the §18.3 JSON error
    async with server.http.get(
        f"{server.base}/?token={token}",
        headers={
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        },
    ) as resp:
        assert resp.status == 429
        assert int(resp.headers["Retry-After"]) >= 1
        body = await resp.json()
        assert body["error"]["code"] == "RATE_LIMITED"


async def test_live_connections_per_address_uid_and_node_are_capped(
    start_server: StartServer,
) -> None:
    """Per source address and per uid a further connection answers 429, a full node 503;
    closing a connection frees its place."""
    server = await start_server(max_connections_per_ip=3, max_connections_per_uid=2)
    jim = [await server.connect({"uid": "jim"}) for _ in range(2)]
    status, headers, _ = await _handshake(server, "127.0.0.1", make_token({"uid": "jim"}))
    assert status == 429 and headers["Retry-After"] == "1"
    third = await server.connect({"uid": "pam"})  # another uid is fine
    status, _, _ = await _handshake(server, "127.0.0.1", make_token({}))
    assert status == 429  # the address holds 3
    assert (await _handshake(server, "127.0.0.2", make_token({})))[0] == 101
    await jim[0].close()
    await _eventually(lambda: len(server.hub.connections) == 2)
    await server.connect({"uid": "jim"})
    await third.close()

    full = await start_server(max_connections=1)
    await full.connect({})
    status, _, _ = await _handshake(full, "127.0.0.2", make_token({}))
    assert status == 503


async def _eventually(condition: Any) -> None:
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(10 * MS)
    raise AssertionError("condition never held")


async def test_binary_frames_spend_tokens_too(start_server: StartServer) -> None:
    """A flood of binary frames is limited like text frames: INVALID_MESSAGE while tokens
    last, RATE_LIMITED after."""
    server = await start_server(client_messages_per_second=0.1, client_messages_burst=3)
    client = await server.connect({})
    for _ in range(10):
        await client.ws.send(b"\x00\x01")
    frames = [await client.recv() for _ in range(10)]
    codes = [f["error"]["code"] for f in frames]
    assert codes == ["INVALID_MESSAGE"] * 3 + ["RATE_LIMITED"] * 7
