"""Property-based fuzzing with ``hypothesis``: every HTTP route with arbitrary methods, paths,
headers, query strings and bodies, every client command with arbitrary fields, and arbitrary
bytes after the WebSocket handshake. No 5xx, no 1011, no traceback in the log, and the node
still serves a healthy client afterwards.

The node runs on its own event loop in a thread, so hypothesis drives plain synchronous
clients (``http.client``, ``websockets.sync``, raw sockets).
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import API_KEY, make_settings, make_token
from websockets.sync.client import connect

from tidings.server.app import Node

FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,  # the same examples on every CI run; the shrinker still explains a failure
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


class Recorder(logging.Handler):
    """Keeps every record at WARNING or above, and every record carrying a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.levelno >= logging.ERROR:
            self.records.append(record)


class LiveNode:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.node = Node(make_settings(max_body_bytes=65536))
        self.recorder = Recorder()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    @property
    def port(self) -> int:
        port = self.node.port
        assert port is not None, "the node is not started"
        return port

    def routes(self) -> list[tuple[str, str]]:
        found = set()
        for route in self.node.app.router.routes():
            info = route.resource.get_info() if route.resource is not None else {}
            path = info.get("path") or info.get("formatter")
            if path:
                found.add((route.method, path))
        return sorted(found)

    def problems(self) -> list[str]:
        return [
            f"{r.levelname} {r.name}: {r.getMessage()}"
            + (" (with traceback)" if r.exc_info else "")
            for r in self.recorder.records
        ]


@pytest.fixture(scope="module")
def live() -> Iterator[LiveNode]:
    node = LiveNode()
    logging.getLogger().addHandler(node.recorder)
    node.thread.start()
    node.run(node.node.start())
    try:
        yield node
    finally:
        node.run(node.node.stop())
        node.loop.call_soon_threadsafe(node.loop.stop)
        node.thread.join(10)
        node.loop.close()
        logging.getLogger().removeHandler(node.recorder)


@pytest.fixture(autouse=True)
def no_problems_logged(live: LiveNode) -> Iterator[None]:
    live.recorder.records.clear()
    yield
    assert live.problems() == []
    healthy(live)


def healthy(live: LiveNode) -> None:
    """A well-behaved client still connects, subscribes and gets a pong."""
    claims = {"channels": {"room": {"subscribe": True}}}
    with connect(f"ws://127.0.0.1:{live.port}/?token={make_token(claims)}") as ws:
        assert orjson.loads(ws.recv(5))["event"] == "hotsock.connected"
        ws.send('{"event":"hotsock.subscribe","channel":"room"}')
        assert orjson.loads(ws.recv(5))["event"] == "hotsock.subscribed"
        ws.send('{"event":"hotsock.ping"}')
        assert orjson.loads(ws.recv(5))["event"] == "hotsock.pong"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = (
    "channel",
    "event",
    "data",
    "store",
    "deduplicationId",
    "eagerIdGeneration",
    "emitPubSubEvent",
    "uid",
    "umd",
    "key",
    "token",
    "messageId",
    "reaction",
    "after",
    "before",
    "reverse",
    "limit",
    "expandReactions",
    "scheduleExpression",
    "keys",
)
known_fields = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=6)
bodies = st.one_of(
    st.binary(max_size=300),
    json_values.map(orjson.dumps),
    known_fields.map(orjson.dumps),
    st.lists(known_fields, max_size=3).map(orjson.dumps),
)
segment = st.text(max_size=20).map(lambda t: urllib.parse.quote(t, safe=""))


@st.composite
def requests(
    draw: st.DrawFn, routes: list[tuple[str, str]]
) -> tuple[str, str, dict[str, str], bytes]:
    method, template = draw(st.sampled_from(routes))
    method = draw(st.sampled_from([method, method, "GET", "POST", "PUT", "DELETE", "PATCH"]))
    if method == "*":
        method = "POST"
    path = template
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + (draw(segment) or "x") + path[end + 1 :]
    query = draw(
        st.dictionaries(
            st.sampled_from(["token", "connectionId", "connectionSecret", "keys", "after", "x"]),
            st.text(max_size=20),
            max_size=3,
        )
    )
    if query:
        path += "?" + urllib.parse.urlencode(query)
    headers = {}
    auth = draw(st.sampled_from([None, f"Bearer {API_KEY}", "Bearer nope", "Basic x"]))
    if auth:
        headers["Authorization"] = auth
    if draw(st.booleans()):
        headers["Content-Type"] = draw(st.sampled_from(["application/json", "text/plain", "x/y"]))
    return method, path, headers, draw(bodies)


def test_fuzz_http_routes_never_answer_5xx(live: LiveNode) -> None:
    """Arbitrary requests on every route: a 2xx-4xx answer with a JSON body, never a 5xx."""
    routes = live.routes()
    assert len(routes) >= 8

    @FUZZ
    @given(requests(routes))
    def check(request: tuple[str, str, dict[str, str], bytes]) -> None:
        method, path, headers, body = request
        conn = http.client.HTTPConnection("127.0.0.1", live.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
        finally:
            conn.close()
        assert response.status < 500, (response.status, payload[:300])
        if response.status >= 400 and method != "HEAD":
            error = orjson.loads(payload)["error"]
            assert "Traceback" not in error["message"]

    check()


commands = st.sampled_from(
    [
        "hotsock.subscribe",
        "hotsock.unsubscribe",
        "hotsock.ping",
        "hotsock.pong",
        "hotsock.heartbeat",
        "hotsock.messageReaction",
        "hotsock.umdUpdate",
        "hotsock.channelStorageSet",
        "hotsock.channelStorageGet",
        "hotsock.nope",
        "chat",
    ]
)
frames = st.one_of(
    st.tuples(commands, known_fields).map(lambda t: orjson.dumps({**t[1], "event": t[0]}).decode()),
    json_values.map(lambda v: orjson.dumps(v).decode()),
    st.text(max_size=200),
)


def test_fuzz_client_frames_never_fail_the_server(live: LiveNode) -> None:
    """Arbitrary commands and fields from a client allowed everything: each gets an answer or
    nothing, never a close with 1011; the connection keeps working."""
    claims = {
        "uid": "fuzzer",
        "channels": {"*": {"subscribe": True, "messages": {"*": {"publish": True, "store": 60}}}},
    }
    with connect(f"ws://127.0.0.1:{live.port}/?token={make_token(claims)}", max_size=None) as ws:
        assert orjson.loads(ws.recv(5))["event"] == "hotsock.connected"

        @FUZZ
        @given(st.lists(frames, min_size=1, max_size=4))
        def check(batch: list[str]) -> None:
            for text in batch:
                ws.send(text)
            ws.send('{"event":"hotsock.ping"}')
            while orjson.loads(ws.recv(5)).get("event") != "hotsock.pong":
                pass

        check()


def test_fuzz_raw_bytes_after_the_handshake(live: LiveNode) -> None:
    """Arbitrary bytes where frames belong: the server closes (1002, 1007, 1009) or waits for
    more, never 1011, and logs no traceback."""

    @FUZZ
    @given(st.binary(min_size=1, max_size=200))
    def check(data: bytes) -> None:
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
            sock.sendall(
                (
                    f"GET /?token={make_token()} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n"
                ).encode()
            )
            received = b""
            while b"\r\n\r\n" not in received:
                received += sock.recv(65536)
            assert received.startswith(b"HTTP/1.1 101")
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            while chunk := sock.recv(65536):
                received += chunk
        close_at = received.find(b"\x88")
        if close_at >= 0 and len(received) >= close_at + 4 and received[close_at + 1] >= 2:
            code = int.from_bytes(received[close_at + 2 : close_at + 4], "big")
            assert code != 1011

    check()


def test_fuzz_found_a_client_gone_during_the_handshake_is_no_error(live: LiveNode) -> None:
    """Found by the raw-bytes fuzzer: a client that half-closes right after its handshake
    request made the 101 write fail, logged as an unexpected failure with a traceback."""
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
            sock.sendall(
                (
                    f"GET /?token={make_token()} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                    "Sec-WebSocket-Version: 13\r\n\r\n\x00"
                ).encode()
            )
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(65536):
                pass
