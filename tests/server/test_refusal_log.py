"""Refused requests are visible to operators at the default log level (issue 9)."""

from __future__ import annotations

import asyncio
import logging

import pytest
import websockets
from tests.conftest import MS, Server, make_token


def refusal_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "tidings.refused"]


async def test_refusals_are_logged_once_each_without_tokens(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    """A refused reaction, umd update, Client HTTP API call, server publish and handshake
    each log one INFO line with code, channel and event; no token appears."""
    caplog.set_level(logging.INFO, logger="tidings.refused")
    client = await server.connect({"uid": "Jim", "channels": {"room": {"subscribe": True}}})
    bad_token = make_token({"uid": "Pam"}, scope="umd")
    await client.send(
        {"event": "hotsock.messageReaction", "channel": "room", "data": {"reaction": "x"}}
    )
    await client.expect("hotsock.error")
    await client.send({"event": "hotsock.umdUpdate", "data": {"token": bad_token}})
    await client.expect("hotsock.error")
    await server.call(client, "listMessages", {"channel": "room"}, status=403)
    await server.publish({"channel": "a b", "event": "e"}, status=400)
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(f"{server.ws_url}?token={bad_token}")
    assert refused.value.response.status_code == 401
    await asyncio.sleep(20 * MS)
    lines = refusal_lines(caplog)
    assert len(lines) == 5, lines
    reaction, umd, http, publish, handshake = lines
    assert "INVALID_REACTION" in reaction and "'room'" in reaction
    assert "'hotsock.messageReaction'" in reaction and "websocket" in reaction
    assert "INVALID_UMD_TOKEN" in umd and "'hotsock.umdUpdate'" in umd
    assert "SUBSCRIPTION_REQUIRED" in http and "http:listMessages" in http
    assert "INVALID_CHANNEL" in publish and "'a b'" in publish and "'e'" in publish
    assert "INVALID_CONNECT_TOKEN" in handshake
    assert all(bad_token not in line and client.secret not in line for line in lines)
