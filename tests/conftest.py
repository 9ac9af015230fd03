"""Shared fixtures: a real tidings node on 127.0.0.1:0 and real WebSocket/HTTP clients."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any

import aiohttp
import orjson
import pytest
import websockets
from joserfc import jwt
from joserfc.jwk import OctKey
from tests.openapi_check import ResponseChecker, recording_middleware
from tests.secret_scan import SECRETS

from tidings.config import (
    AuthSettings,
    BackendSettings,
    EventSettings,
    LimitSettings,
    Secret,
    ServerSettings,
    Settings,
    SigningKeySetting,
    TimeoutSettings,
)
from tidings.server.app import Node
from tidings.store import open_store
from tidings.store.base import Store

# Every timeout in the tests derives from MS; slow machines scale it.
MS = 0.001 * float(os.environ.get("TIDINGS_TESTS_TIMEOUT_FACTOR", "1"))
SECRET = b"tidings-test-secret-0123456789abcdef"
API_KEY = "test-api-key-1"
API_KEY2 = "test-api-key-2"

SECRETS.add_static(SECRET.decode(), base64.b64encode(SECRET).decode(), API_KEY, API_KEY2)


@pytest.fixture(scope="session", autouse=True)
def _secret_scan_installed() -> Iterator[None]:
    """Every log record of the run goes through the secret scan (DEBUG included)."""
    root = logging.getLogger()
    root.addHandler(SECRETS)
    levels = {}
    for name in ("tidings", "aiohttp"):
        logger = logging.getLogger(name)
        levels[name] = logger.level
        logger.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(SECRETS)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture(autouse=True)
def _no_secret_in_logs() -> Iterator[None]:
    """Fail the test when a server log record of it leaked a token or a secret."""
    SECRETS.take()
    yield
    leaks = SECRETS.take()
    if leaks:
        pytest.fail("secrets in the server logs:\n" + "\n".join(leaks[:20]))


def make_token(
    claims: dict[str, Any] | None = None,
    *,
    scope: str | None = "connect",
    ttl: int = 300,
    secret: bytes = SECRET,
    alg: str = "HS256",
    headers: dict[str, Any] | None = None,
) -> str:
    """A signed token; ``exp`` and ``scope`` are added unless given."""
    body = dict(claims or {})
    body.setdefault("exp", int(time.time()) + ttl)
    if scope is not None:
        body.setdefault("scope", scope)
    header = {"alg": alg, "typ": "JWT", **(headers or {})}
    return jwt.encode(header, body, OctKey.import_key(secret), algorithms=[alg])


def make_settings(**overrides: Any) -> Settings:
    """Test settings: HS256 key, two API keys, memory store; override groups by keyword
    (``store=``, ``broker=``, or any Limit/Timeout/Auth field name)."""
    s = Settings(
        auth=AuthSettings(
            signing_keys=(SigningKeySetting("HS256", Secret(base64.b64encode(SECRET).decode())),),
            api_keys=(Secret(API_KEY), Secret(API_KEY2)),
        ),
        backends=BackendSettings(store="memory://"),
    )
    s = replace(s, server=replace(s.server, port=0))
    # tests flood on purpose (1000 frames from one client, hundreds of handshakes from
    # 127.0.0.1): the rate limits are off unless a test turns them on
    # (tests/server/test_server_limits.py)
    s = replace(
        s,
        limits=replace(
            s.limits,
            client_messages_per_second=0,
            http_calls_per_second=0,
            handshakes_per_ip_per_second=0,
        ),
    )
    groups = {
        "server": ServerSettings,
        "auth": AuthSettings,
        "limits": LimitSettings,
        "timeouts": TimeoutSettings,
        "events": EventSettings,
    }
    for key, value in overrides.items():
        if key in ("store", "broker"):
            s = replace(s, backends=replace(s.backends, **{key: value}))
            continue
        for group, cls in groups.items():
            if key in {f.name for f in dataclasses.fields(cls)}:
                s = replace(s, **{group: replace(getattr(s, group), **{key: value})})
                break
        else:
            raise TypeError(f"unknown setting {key}")
    return s


class Client:
    """A plain WebSocket client (the ``websockets`` library) speaking JSON frames."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.connected: dict[str, Any] = {}

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.ws.send(frame if isinstance(frame, str) else orjson.dumps(frame).decode())

    async def recv(self, timeout: float = 2000 * MS) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        value = orjson.loads(raw)
        assert isinstance(value, dict)
        return value

    async def expect(self, event: str, timeout: float = 2000 * MS) -> dict[str, Any]:
        """Receive the next frame and check its event."""
        frame = await self.recv(timeout)
        assert frame.get("event") == event, frame
        return frame

    async def nothing(self, wait: float = 150 * MS) -> None:
        """Assert that no frame arrives within ``wait``."""
        try:
            frame = await asyncio.wait_for(self.ws.recv(), wait)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame!r}")

    async def subscribe(self, channel: str, token: str | None = None) -> dict[str, Any]:
        frame: dict[str, Any] = {"event": "hotsock.subscribe", "channel": channel}
        if token is not None:
            frame["data"] = {"token": token}
        await self.send(frame)
        return await self.expect("hotsock.subscribed")

    @property
    def id(self) -> str:
        return str(self.connected["data"]["connectionId"])

    @property
    def secret(self) -> str:
        return str(self.connected["data"]["connectionSecret"])

    async def close(self) -> None:
        await self.ws.close()


class Server:
    """A running node plus helpers for talking to it."""

    def __init__(self, node: Node, http: aiohttp.ClientSession) -> None:
        self.node = node
        self.hub = node.hub
        self.http = http
        self.base = f"http://127.0.0.1:{node.port}"
        self.ws_url = f"ws://127.0.0.1:{node.port}/"
        self._clients: list[Client] = []

    async def connect(
        self, claims: dict[str, Any] | None = None, *, token: str | None = None, path: str = "/"
    ) -> Client:
        """Connect with a token for ``claims`` and wait for ``hotsock.connected``."""
        token = token if token is not None else make_token(claims)
        ws = await websockets.connect(
            f"ws://127.0.0.1:{self.node.port}{path}?token={token}", max_size=None, compression=None
        )
        client = Client(ws)
        self._clients.append(client)
        client.connected = await client.expect("hotsock.connected")
        SECRETS.register(client.secret)
        return client

    async def publish(self, body: Any, *, key: str = API_KEY, status: int = 202) -> Any:
        async with self.http.post(
            f"{self.base}/publish",
            data=orjson.dumps(body),
            headers={"Authorization": f"Bearer {key}"},
        ) as resp:
            payload = await resp.json(content_type=None)
            assert resp.status == status, (resp.status, payload)
            return payload

    async def call(
        self, client: Client, operation: str, body: Any, *, status: int | None = None
    ) -> tuple[int, Any]:
        """Client HTTP API call with ``client``'s credentials."""
        async with self.http.post(
            f"{self.base}/connection/{operation}",
            params={"connectionId": client.id, "connectionSecret": client.secret},
            data=body if isinstance(body, (bytes, str)) else orjson.dumps(body),
        ) as resp:
            payload = await resp.json(content_type=None)
            if status is not None:
                assert resp.status == status, (resp.status, payload)
            return resp.status, payload

    async def aclose(self) -> None:
        for client in self._clients:
            await client.ws.close()
        await self.node.stop()


StartServer = Callable[..., Awaitable[Server]]


@pytest.fixture
async def start_server() -> AsyncIterator[StartServer]:
    """Factory: ``await start_server(**setting_overrides)`` starts a node on 127.0.0.1:0."""
    servers: list[Server] = []
    http = aiohttp.ClientSession()
    problems: list[str] = []  # answers that break the OpenAPI document

    async def start(wrap_store: Callable[[Store], Store] | None = None, **overrides: Any) -> Server:
        """``wrap_store`` puts a fault in front of the real store the settings name."""
        settings = make_settings(**overrides)
        store = open_store(settings.backends.store)
        node = Node(settings, store=wrap_store(store) if wrap_store else store)
        node.app.middlewares.insert(0, recording_middleware(_openapi_checker(), problems))
        await node.start()
        server = Server(node, http)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.aclose()
    await http.close()
    if problems:
        pytest.fail(
            "responses do not match the OpenAPI document (src/tidings/server/openapi/):\n"
            + "\n".join(sorted(set(problems)))
        )


@functools.cache
def _openapi_checker() -> ResponseChecker:
    return ResponseChecker()


@pytest.fixture
async def server(start_server: StartServer) -> Server:
    """A node with default test settings (memory store)."""
    return await start_server()
