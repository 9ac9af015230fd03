"""Token revocation on one node (spec §24.2): by jti and by uid with issuedBefore, refused at
connect, subscribe and umdUpdate, live connections closed, persisted across a restart, expiring
by itself, listable and deletable; and the bad input."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
import websockets
from tests.conftest import MS, Server, StartServer, make_token
from tests.server.test_moderation_api import api, close_of

ROOM = {"uid": "alice", "channels": {"room": {"subscribe": True}}}


async def refused_at_connect(server: Server, token: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as info:
        await server.connect(token=token)
    assert info.value.response.status_code == 401
    assert b"revoked" in info.value.response.body


async def test_revocation_by_jti_closes_and_refuses_then_deletes(server: Server) -> None:
    """A revoked jti closes its live connection (4501) and is refused until deleted."""
    token = make_token({**ROOM, "jti": "leaked"})
    victim = await server.connect(token=token)
    bystander = await server.connect(token=make_token({**ROOM, "jti": "fine"}))
    status, body = await api(server, "POST", "/revocations", {"jti": "leaked"})
    assert status == 201 and body["jti"] == "leaked" and body["connectionsClosed"] == 1
    assert await close_of(victim) == (4501, "token revoked")
    await refused_at_connect(server, token)
    await bystander.send({"event": "hotsock.ping"})
    await bystander.expect("hotsock.pong")
    status, listed = await api(server, "GET", "/revocations")
    assert status == 200 and [r["jti"] for r in listed["revocations"]] == ["leaked"]
    assert await api(server, "DELETE", "/revocations/jti/leaked") == (
        200,
        {"deleted": {"jti": "leaked"}},
    )
    await server.connect(token=token)
    assert await api(server, "GET", "/revocations") == (200, {"revocations": []})


async def test_revocation_by_uid_refuses_older_or_missing_iat(server: Server) -> None:
    """Tokens of the user issued before issuedBefore, or without iat, are refused; newer ones
    and other users' are not."""
    now = int(time.time())
    old = await server.connect(token=make_token({**ROOM, "iat": now - 60}))
    no_iat = await server.connect(ROOM)
    other = await server.connect({**ROOM, "uid": "bob", "iat": now - 60})
    status, body = await api(
        server, "POST", "/revocations", {"uid": "alice", "issuedBefore": now - 10}
    )
    assert status == 201 and body["issuedBefore"] == now - 10 and body["connectionsClosed"] == 2
    for client in (old, no_iat):
        assert (await close_of(client))[0] == 4501
    await refused_at_connect(server, make_token({**ROOM, "iat": now - 11}))
    await refused_at_connect(server, make_token(ROOM))
    await server.connect({**ROOM, "iat": now - 10})
    await other.send({"event": "hotsock.ping"})
    await other.expect("hotsock.pong")


async def test_revocation_refuses_subscribe_and_umd_tokens(server: Server) -> None:
    """Revoked subscribe and umd tokens are refused with their own error codes."""
    alice = await server.connect({"uid": "alice", "umdUpdate": True})
    await api(server, "POST", "/revocations", {"jti": "sub-1"})
    await api(server, "POST", "/revocations", {"jti": "umd-1"})
    sub = make_token(
        {"uid": "alice", "jti": "sub-1", "channels": {"room": {"subscribe": True}}},
        scope="subscribe",
    )
    await alice.send({"event": "hotsock.subscribe", "channel": "room", "data": {"token": sub}})
    error = await alice.expect("hotsock.error")
    assert error["error"]["code"] == "INVALID_SUBSCRIBE_TOKEN"
    assert "revoked" in error["error"]["message"]
    umd = make_token({"uid": "alice", "jti": "umd-1", "umd": {"a": 1}}, scope="umd")
    await alice.send({"event": "hotsock.umdUpdate", "data": {"token": umd}})
    assert (await alice.expect("hotsock.error"))["error"]["code"] == "INVALID_UMD_TOKEN"
    status, body = await server.call(alice, "umdUpdate", {"token": umd})
    assert status == 403 and body["error"]["code"] == "INVALID_UMD_TOKEN"
    fresh = make_token(
        {"uid": "alice", "jti": "sub-2", "channels": {"room": {"subscribe": True}}},
        scope="subscribe",
    )
    await alice.subscribe("room", fresh)


async def test_revocation_survives_a_restart(start_server: StartServer, tmp_path: Path) -> None:
    """A revocation stored in SQLite is refused by a node started afterwards."""
    url = f"sqlite:///{tmp_path / 'revoked.db'}"
    first = await start_server(store=url)
    token = make_token({**ROOM, "jti": "gone"})
    assert (await api(first, "POST", "/revocations", {"jti": "gone"}))[0] == 201
    await first.aclose()
    second = await start_server(store=url)
    await refused_at_connect(second, token)
    assert [r["jti"] for r in (await api(second, "GET", "/revocations"))[1]["revocations"]] == [
        "gone"
    ]


async def test_revocation_expires_by_itself(start_server: StartServer) -> None:
    """Past expiresAt the token is accepted again, and the sweep removes the revocation."""
    server = await start_server(sweep_interval_seconds=0.05)
    token = make_token({**ROOM, "jti": "brief"})
    await api(server, "POST", "/revocations", {"jti": "brief", "expiresAt": time.time() + 0.3})
    await refused_at_connect(server, token)
    async with asyncio.timeout(5000 * MS):
        while (await api(server, "GET", "/revocations"))[1]["revocations"]:
            await asyncio.sleep(50 * MS)
    await server.connect(token=token)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "exactly one of jti or uid"),
        ({"jti": "a", "uid": "b"}, "exactly one of jti or uid"),
        ({"uid": "u", "issuedBefore": "yesterday"}, "NumericDate"),
        ({"uid": "u", "issuedBefore": 4102444800}, "future"),
        ({"jti": "j", "expiresAt": 1}, "future"),
        (b"{not json", "invalid JSON"),
        (b"", "must be JSON"),
        ([], "JSON object"),
    ],
)
async def test_revocation_bad_body_is_400_and_stores_nothing(
    server: Server, body: Any, message: str
) -> None:
    """Each malformed revocation is refused with a clear message; nothing is revoked."""
    status, answer = await api(server, "POST", "/revocations", body)
    assert status == 400 and answer["error"]["code"] == "INVALID_MESSAGE"
    assert message in answer["error"]["message"]
    assert await api(server, "GET", "/revocations") == (200, {"revocations": []})


async def test_revocation_routes_need_the_api_key(server: Server) -> None:
    """A bad API key is 401 on every revocation route; nothing is revoked."""
    for method, path, body in (
        ("POST", "/revocations", {"jti": "x"}),
        ("GET", "/revocations", None),
        ("DELETE", "/revocations/jti/x", None),
    ):
        status, answer = await api(server, method, path, body, key="wrong")
        assert status == 401 and answer["error"]["code"] == "UNAUTHORIZED"
    assert await api(server, "GET", "/revocations") == (200, {"revocations": []})


async def test_revocation_delete_unknown_is_404(server: Server) -> None:
    """Deleting what is not revoked, or a kind that does not exist, is 404."""
    for path in ("/revocations/jti/none", "/revocations/uid/none", "/revocations/sub/x"):
        status, answer = await api(server, "DELETE", path)
        assert status == 404 and answer["error"]["code"] == "NOT_FOUND"
