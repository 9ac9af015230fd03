"""Tests for tidings.sdk.publisher against a real local HTTP server that imitates POST /publish.

The synchronous Publisher blocks, so its calls run in a worker thread (``asyncio.to_thread``) while
the test's event loop serves the requests.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tidings.core.ids import is_ulid
from tidings.errors import TidingsError
from tidings.sdk import publisher as publisher_module
from tidings.sdk.publisher import (
    USER_AGENT,
    AsyncPublisher,
    Publisher,
    PublishError,
    PublishResult,
)

API_KEY = "test-api-key-1"
MESSAGE_ID = "01HZAD885RZ308CJM4YK825G65"


@dataclass
class Recorded:
    """One request the fake server received."""

    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeTidings:
    """Behaves like tidings' POST /publish; tests script failures and read what was sent."""

    url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    # The next ``fail_next`` requests get ``fail_status`` with ``fail_body``.
    fail_next: int = 0
    fail_status: int = 503
    fail_body: bytes = b'{"error":{"code":"SERVICE_UNAVAILABLE","message":"draining"}}'
    fail_headers: dict[str, str] = field(default_factory=dict)
    # The next ``drop_next`` requests have their connection closed without an answer.
    drop_next: int = 0
    # The next ``hang_next`` requests get no answer until the client gives up (or teardown).
    hang_next: int = 0
    # Replaces the normal 202 answer when set.
    answer: Callable[[Any], web.StreamResponse] | None = None
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            body = raw
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return error_response(401, "UNAUTHORIZED", "invalid API key")
        if self.drop_next:
            self.drop_next -= 1
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=599)  # never reaches the client
        if self.hang_next:
            self.hang_next -= 1
            await self.release.wait()
            return web.Response(status=599)
        if self.fail_next:
            self.fail_next -= 1
            return web.Response(
                status=self.fail_status,
                body=self.fail_body,
                headers=self.fail_headers,
                content_type="application/json",
            )
        if self.answer is not None:
            return self.answer(body)
        if isinstance(body, list):
            return web.json_response([accepted(item) for item in body], status=202)
        if not isinstance(body, dict) or not body.get("channel"):
            return error_response(400, "INVALID_CHANNEL", "channel is required")
        return web.json_response(accepted(body), status=202)

    def dedup_ids(self) -> list[Any]:
        return [r.body.get("deduplicationId") for r in self.requests]


def accepted(message: dict[str, Any]) -> dict[str, Any]:
    """The 202 body tidings answers for one message (spec §15)."""
    answer = {"channel": message["channel"], "event": message["event"]}
    if message.get("eagerIdGeneration"):
        answer["id"] = MESSAGE_ID
    if message.get("scheduleExpression"):
        answer["scheduleArn"] = "tidings:schedule:" + MESSAGE_ID
    return answer


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@pytest.fixture
async def server() -> AsyncIterator[FakeTidings]:
    fake = FakeTidings()
    app = web.Application()
    app.router.add_post("/publish", fake.handle)
    app.router.add_post("/prefix/publish", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    fake.url = f"http://{host}:{port}"
    try:
        yield fake
    finally:
        fake.release.set()
        await runner.cleanup()


@pytest.fixture
async def apub(server: FakeTidings) -> AsyncIterator[AsyncPublisher]:
    async with AsyncPublisher(server.url, API_KEY, backoff=0.0) as publisher:
        yield publisher


def sync_publisher(server: FakeTidings, **kwargs: Any) -> Publisher:
    kwargs.setdefault("backoff", 0.0)
    return Publisher(server.url, API_KEY, **kwargs)


# Success


async def test_publisher_publish_message_sends_spec_body_and_headers(server: FakeTidings) -> None:
    """The sync publisher POSTs the §15 camelCase body with auth, JSON and UA headers."""
    publisher = sync_publisher(server)
    result = await asyncio.to_thread(
        publisher.publish_message,
        "chat.42",
        "message",
        {"text": "hi"},
        store=60,
        emit_pub_sub_event=True,
    )
    assert result == PublishResult(channel="chat.42", event="message", id=None, schedule_arn=None)
    [request] = server.requests
    assert request.path == "/publish"
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == USER_AGENT
    assert USER_AGENT.startswith("tidings-python/")
    dedup = request.body.pop("deduplicationId")
    assert is_ulid(dedup)
    assert request.body == {
        "channel": "chat.42",
        "event": "message",
        "data": {"text": "hi"},
        "store": 60,
        "emitPubSubEvent": True,
    }


async def test_async_publisher_publish_message_sends_spec_body_and_headers(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """The async publisher sends the same request as the sync one."""
    result = await apub.publish_message("chat.42", "message", [1, 2], store=-1)
    assert result == PublishResult("chat.42", "message")
    [request] = server.requests
    assert request.headers["Authorization"] == f"Bearer {API_KEY}"
    assert request.headers["Content-Type"] == "application/json"
    assert request.headers["User-Agent"] == USER_AGENT
    assert is_ulid(request.body.pop("deduplicationId"))
    assert request.body == {"channel": "chat.42", "event": "message", "data": [1, 2], "store": -1}


async def test_publisher_eager_id_schedule_and_extra_fields(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """eager IDs and scheduleArn are returned; snake_case extras become camelCase."""
    result = await apub.publish_message(
        "c",
        "e",
        eager_id_generation=True,
        deduplication_id="mine",
        schedule_expression="at(2030-01-01T00:00:00)",
        schedule_expression_timezone="Europe/Paris",
        umd={"a": 1},
    )
    assert result.id == MESSAGE_ID
    assert result.schedule_arn == "tidings:schedule:" + MESSAGE_ID
    assert server.requests[0].body == {
        "channel": "c",
        "event": "e",
        "deduplicationId": "mine",
        "eagerIdGeneration": True,
        "scheduleExpression": "at(2030-01-01T00:00:00)",
        "scheduleExpressionTimezone": "Europe/Paris",
        "umd": {"a": 1},
    }


async def test_publisher_data_none_omitted_and_falsey_data_kept(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """data=None leaves the field out; 0, "" and False are sent."""
    await apub.publish_message("c", "e")
    values: tuple[Any, ...] = (0, "", False, {})
    for value in values:
        await apub.publish_message("c", "e", value)
    assert "data" not in server.requests[0].body
    assert [r.body["data"] for r in server.requests[1:]] == [0, "", False, {}]


async def test_publisher_each_publish_gets_its_own_dedup_id(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """Two logical publishes never share a generated deduplicationId."""
    await apub.publish_message("c", "e", 1)
    await apub.publish_message("c", "e", 1)
    first, second = server.dedup_ids()
    assert first != second


async def test_publisher_base_url_path_prefix_and_trailing_slash(server: FakeTidings) -> None:
    """A path prefix in base_url is kept and a trailing slash does not double up."""
    async with AsyncPublisher(server.url + "/prefix/", API_KEY) as publisher:
        await publisher.publish_message("c", "e")
    assert server.requests[0].path == "/prefix/publish"


# Retries


async def test_publisher_retries_503_with_stable_dedup_id(server: FakeTidings) -> None:
    """Two 503s, then success: three attempts carrying one deduplicationId."""
    server.fail_next = 2
    result = await asyncio.to_thread(sync_publisher(server).publish_message, "c", "e", {"n": 1})
    assert result.channel == "c"
    ids = server.dedup_ids()
    assert len(ids) == 3
    assert len(set(ids)) == 1 and is_ulid(ids[0])
    assert all(r.body["data"] == {"n": 1} for r in server.requests)


async def test_async_publisher_retries_503_with_stable_dedup_id(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """The async publisher retries the same way."""
    server.fail_next = 3
    await apub.publish_message("c", "e", deduplication_id="caller-id")
    assert server.dedup_ids() == ["caller-id"] * 4


@pytest.mark.parametrize("status", [429, 500, 502, 504])
async def test_async_publisher_retries_429_and_5xx(
    server: FakeTidings, apub: AsyncPublisher, status: int
) -> None:
    """429 and every 5xx are temporary."""
    server.fail_next, server.fail_status = 1, status
    server.fail_headers = {"Retry-After": "0"}
    await apub.publish_message("c", "e")
    assert len(server.requests) == 2


async def test_publisher_retries_dropped_connection(server: FakeTidings) -> None:
    """A connection closed without an answer is retried with the same deduplicationId."""
    server.drop_next = 2
    await asyncio.to_thread(sync_publisher(server).publish_message, "c", "e")
    ids = server.dedup_ids()
    assert len(ids) == 3 and len(set(ids)) == 1


async def test_async_publisher_retries_dropped_connection(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """The async publisher also survives dropped connections."""
    server.drop_next = 2
    await apub.publish_message("c", "e")
    ids = server.dedup_ids()
    assert len(ids) == 3 and len(set(ids)) == 1


async def test_publisher_retries_timeout(server: FakeTidings) -> None:
    """An attempt with no answer in time is abandoned and retried."""
    server.hang_next = 1
    publisher = sync_publisher(server, timeout=0.2)
    await asyncio.to_thread(publisher.publish_message, "c", "e")
    ids = server.dedup_ids()
    assert len(ids) == 2 and ids[0] == ids[1]


async def test_async_publisher_retries_timeout(server: FakeTidings) -> None:
    """The async publisher abandons a hung attempt and retries it."""
    server.hang_next = 1
    async with AsyncPublisher(server.url, API_KEY, timeout=0.2, backoff=0.0) as publisher:
        await publisher.publish_message("c", "e")
    ids = server.dedup_ids()
    assert len(ids) == 2 and ids[0] == ids[1]


async def test_publisher_gives_up_after_retries(server: FakeTidings) -> None:
    """When every attempt fails, the last answer's error is raised after retries + 1 attempts."""
    server.fail_next = 10
    with pytest.raises(PublishError) as info:
        await asyncio.to_thread(sync_publisher(server, retries=2).publish_message, "c", "e")
    assert (info.value.status, info.value.code, info.value.message) == (
        503,
        "SERVICE_UNAVAILABLE",
        "draining",
    )
    assert len(server.requests) == 3


async def test_async_publisher_zero_retries_single_attempt(server: FakeTidings) -> None:
    """retries=0 makes exactly one attempt."""
    server.fail_next = 1
    async with AsyncPublisher(server.url, API_KEY, retries=0) as publisher:
        with pytest.raises(PublishError) as info:
            await publisher.publish_message("c", "e")
    assert info.value.status == 503
    assert len(server.requests) == 1


async def test_publisher_connection_refused_raises_connection_error() -> None:
    """No server at all: CONNECTION_ERROR with no status, after the retries."""
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(PublishError) as info:
        await asyncio.to_thread(
            Publisher(url, API_KEY, retries=1, backoff=0).publish_message, "c", "e"
        )
    assert info.value.status is None
    assert info.value.code == "CONNECTION_ERROR"
    assert isinstance(info.value.__cause__, OSError)
    async with AsyncPublisher(url, API_KEY, retries=1, backoff=0) as publisher:
        with pytest.raises(PublishError) as info:
            await publisher.publish_message("c", "e")
    assert (info.value.status, info.value.code) == (None, "CONNECTION_ERROR")


async def test_publisher_untrusted_certificate_not_retried(tmp_path: Path) -> None:
    """A TLS certificate the client refuses is TLS_ERROR after one attempt: retrying cannot help."""
    fake = FakeTidings()
    app = web.Application()
    app.router.add_post("/publish", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self_signed_context(tmp_path))
    await site.start()
    try:
        port = runner.addresses[0][1]
        url = f"https://127.0.0.1:{port}"
        with pytest.raises(PublishError) as info:
            await asyncio.to_thread(Publisher(url, API_KEY, backoff=0).publish_message, "c", "e")
        assert (info.value.status, info.value.code) == (None, "TLS_ERROR")
        async with AsyncPublisher(url, API_KEY, backoff=0) as publisher:
            with pytest.raises(PublishError) as info:
                await publisher.publish_message("c", "e")
        assert (info.value.status, info.value.code) == (None, "TLS_ERROR")
        assert fake.requests == []
    finally:
        await runner.cleanup()


def self_signed_context(directory: Path) -> ssl.SSLContext:
    """A server TLS context with a fresh self-signed certificate for 127.0.0.1."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


# Refusals


async def test_publisher_400_not_retried_and_error_parsed(server: FakeTidings) -> None:
    """A 400 raises at once with the §18.3 code and message."""
    server.fail_next, server.fail_status = 5, 400
    server.fail_body = b'{"error":{"code":"INVALID_EVENT","message":"event must not contain *"}}'
    with pytest.raises(PublishError) as info:
        await asyncio.to_thread(sync_publisher(server).publish_message, "c", "e*")
    error = info.value
    assert (error.status, error.code, error.message) == (
        400,
        "INVALID_EVENT",
        "event must not contain *",
    )
    assert str(error) == "INVALID_EVENT (HTTP 400): event must not contain *"
    assert isinstance(error, TidingsError)
    assert len(server.requests) == 1


async def test_async_publisher_wrong_key_unauthorized_not_retried(server: FakeTidings) -> None:
    """A wrong API key gives UNAUTHORIZED after a single attempt."""
    async with AsyncPublisher(server.url, "wrong-key", backoff=0) as publisher:
        with pytest.raises(PublishError) as info:
            await publisher.publish_message("c", "e")
    assert (info.value.status, info.value.code) == (401, "UNAUTHORIZED")
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (b"<html>Forbidden</html>", "HTTP_403", "Forbidden"),
        (b'{"error":"nope"}', "HTTP_403", "Forbidden"),
        (b'{"error":{"code":"","message":""}}', "HTTP_403", "Forbidden"),
        (
            b'{"error":{"code":"PUBLISH_PERMISSION_DENIED"}}',
            "PUBLISH_PERMISSION_DENIED",
            "Forbidden",
        ),
    ],
)
async def test_async_publisher_error_body_fallbacks(
    server: FakeTidings, apub: AsyncPublisher, body: bytes, code: str, message: str
) -> None:
    """Bodies that are not the §18.3 shape still give a usable error."""
    server.fail_next, server.fail_status, server.fail_body = 1, 403, body
    with pytest.raises(PublishError) as info:
        await apub.publish_message("c", "e")
    assert (info.value.status, info.value.code, info.value.message) == (403, code, message)


async def test_publisher_redirect_not_followed(server: FakeTidings) -> None:
    """A redirect is reported, never followed (the API key must not travel elsewhere)."""
    server.fail_next, server.fail_status = 2, 307
    server.fail_headers = {"Location": "http://example.invalid/publish"}
    with pytest.raises(PublishError) as info:
        await asyncio.to_thread(sync_publisher(server).publish_message, "c", "e")
    assert info.value.status == 307
    async with AsyncPublisher(server.url, API_KEY) as publisher:
        with pytest.raises(PublishError) as info:
            await publisher.publish_message("c", "e")
    assert info.value.status == 307
    assert len(server.requests) == 2


@pytest.mark.parametrize("body", [b"OK", b"[]", b'{"channel":5}', b'{"id":7}'])
async def test_publisher_2xx_with_foreign_body_is_invalid_response(
    server: FakeTidings, body: bytes
) -> None:
    """A 2xx that is not a tidings answer (e.g. some other service) is an error, not success."""
    server.answer = lambda _: web.Response(status=200, body=body)
    with pytest.raises(PublishError) as info:
        await asyncio.to_thread(sync_publisher(server).publish_message, "c", "e")
    assert (info.value.status, info.value.code) == (200, "INVALID_RESPONSE")
    assert len(server.requests) == 1


# publish_many


async def test_async_publisher_publish_many_posts_array(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """publish_many sends one JSON array and returns one result per message, in order."""
    results = await apub.publish_many(
        [
            {"channel": "a", "event": "x", "data": 1, "eager_id_generation": True},
            {"channel": "b", "event": "y", "emitPubSubEvent": True, "deduplicationId": "d-2"},
        ]
    )
    assert results == [PublishResult("a", "x", MESSAGE_ID), PublishResult("b", "y")]
    [request] = server.requests
    first, second = request.body
    assert is_ulid(first.pop("deduplicationId"))
    assert first == {"channel": "a", "event": "x", "data": 1, "eagerIdGeneration": True}
    assert second == {
        "channel": "b",
        "event": "y",
        "deduplicationId": "d-2",
        "emitPubSubEvent": True,
    }


async def test_publisher_publish_many_retry_keeps_every_dedup_id(server: FakeTidings) -> None:
    """A retried batch resends each message with its original deduplicationId."""
    server.fail_next = 1
    messages = [{"channel": "a", "event": "x"}, {"channel": "b", "event": "y"}]
    results = await asyncio.to_thread(sync_publisher(server).publish_many, messages)
    assert [r.channel for r in results] == ["a", "b"]
    first, second = server.requests
    assert first.body == second.body
    ids = [m["deduplicationId"] for m in first.body]
    assert len(set(ids)) == 2 and all(is_ulid(i) for i in ids)


async def test_publisher_publish_many_empty_sends_nothing(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """An empty batch makes no request."""
    assert await apub.publish_many([]) == []
    assert await asyncio.to_thread(sync_publisher(server).publish_many, iter(())) == []
    assert server.requests == []


async def test_publisher_publish_many_result_count_mismatch(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """An answer with the wrong number of results is INVALID_RESPONSE."""
    server.answer = lambda body: web.json_response([accepted(body[0])], status=202)
    with pytest.raises(PublishError) as info:
        await apub.publish_many([{"channel": "a", "event": "x"}, {"channel": "b", "event": "y"}])
    assert info.value.code == "INVALID_RESPONSE"


async def test_publisher_publish_many_batch_refused(
    server: FakeTidings, apub: AsyncPublisher
) -> None:
    """A refused batch raises the server's error."""
    server.fail_next, server.fail_status = 1, 400
    server.fail_body = b'{"error":{"code":"INVALID_CHANNEL","message":"message 1: bad channel"}}'
    with pytest.raises(PublishError, match="message 1: bad channel"):
        await apub.publish_many([{"channel": "a", "event": "x"}, {"channel": "b", "event": "y"}])
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ({"channel": "a", "event": "x"}, "iterable"),
        (["not a mapping"], "message 0 must be a mapping"),
        ([{"channel": "a", "event": "x"}, {"event": "y"}], "message 1: channel"),
        ([{"channel": "a", "event": "x", "store": "1"}], "message 0: store"),
        (
            [{"channel": "a", "event": "x", "deduplication_id": "1", "deduplicationId": "2"}],
            "twice",
        ),
    ],
)
async def test_publisher_publish_many_bad_messages(messages: Any, match: str) -> None:
    """Malformed batches are refused before anything is sent."""
    publisher = Publisher("http://127.0.0.1:9", API_KEY)
    with pytest.raises(ValueError, match=match):
        publisher.publish_many(messages)


# Lifecycle and arguments


async def test_async_publisher_closed_refuses_and_aclose_idempotent(server: FakeTidings) -> None:
    """After aclose() (or leaving ``async with``) publishing raises RuntimeError."""
    publisher = AsyncPublisher(server.url, API_KEY)
    await publisher.publish_message("c", "e")
    await publisher.aclose()
    await publisher.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await publisher.publish_message("c", "e")
    async with AsyncPublisher(server.url, API_KEY) as other:
        pass
    with pytest.raises(RuntimeError):
        await other.publish_many([{"channel": "c", "event": "e"}])


async def test_async_publisher_never_used_closes_cleanly() -> None:
    """A publisher that never sent anything has no session to close."""
    async with AsyncPublisher("http://127.0.0.1:9", API_KEY):
        pass


def test_publisher_repr_hides_api_key() -> None:
    """The API key is not part of repr()."""
    text = repr(Publisher("http://127.0.0.1:9", API_KEY))
    assert "127.0.0.1:9" in text and API_KEY not in text
    assert API_KEY not in repr(AsyncPublisher("http://127.0.0.1:9", API_KEY))


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("127.0.0.1:8080", API_KEY), {}, "base_url"),
        (("ftp://host", API_KEY), {}, "base_url"),
        (("http://", API_KEY), {}, "base_url"),
        (("http://host/?x=1", API_KEY), {}, "query"),
        ((None, API_KEY), {}, "base_url"),
        (("http://host", ""), {}, "api_key"),
        (("http://host", "key\r\nX-Evil: 1"), {}, "api_key"),
        (("http://host", " key"), {}, "whitespace"),
        (("http://host", API_KEY), {"timeout": 0}, "timeout"),
        (("http://host", API_KEY), {"timeout": float("nan")}, "timeout"),
        (("http://host", API_KEY), {"retries": -1}, "retries"),
        (("http://host", API_KEY), {"retries": 1.0}, "retries"),
        (("http://host", API_KEY), {"backoff": -0.1}, "backoff"),
        (("http://host", API_KEY), {"backoff": float("inf")}, "backoff"),
    ],
)
def test_publisher_bad_constructor_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    """Both publishers check their arguments up front."""
    for cls in (Publisher, AsyncPublisher):
        with pytest.raises(ValueError, match=match):
            cls(*args, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("", "e"), {}, "channel"),
        ((None, "e"), {}, "channel"),
        (("c", ""), {}, "event"),
        (("c", "e", object()), {}, "JSON"),
        (("c", "e", {1: 2}), {}, "JSON"),
        (("c", "e"), {"store": True}, "store"),
        (("c", "e"), {"store": 1.5}, "store"),
        (("c", "e"), {"deduplication_id": ""}, "deduplication_id"),
        (("c", "e"), {"eager_id_generation": 1}, "eagerIdGeneration"),
        (("c", "e"), {"emit_pub_sub_event": "yes"}, "emitPubSubEvent"),
        (("c", "e"), {"deduplicationId": "x"}, "twice"),
    ],
)
async def test_publisher_bad_message_arguments(
    args: tuple[Any, ...], kwargs: dict[str, Any], match: str
) -> None:
    """Invalid messages are refused locally, before any request."""
    with pytest.raises(ValueError, match=match):
        Publisher("http://127.0.0.1:9", API_KEY).publish_message(*args, **kwargs)
    async with AsyncPublisher("http://127.0.0.1:9", API_KEY) as publisher:
        with pytest.raises(ValueError, match=match):
            await publisher.publish_message(*args, **kwargs)


def test_publisher_backoff_doubles_respects_retry_after_and_caps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Delays double per retry, are at least Retry-After, and never exceed 30 s."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)  # no jitter
    publisher = Publisher("http://127.0.0.1:9", API_KEY, backoff=0.5)
    assert [publisher._delay(n, None) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert publisher._delay(0, 3.0) == 3.0
    assert publisher._delay(10, None) == 30.0
    assert publisher._delay(0, 600.0) == 30.0
    monkeypatch.setattr(random, "uniform", lambda low, high: low)
    assert publisher._delay(2, None) == 1.0


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, None), ("2", 2.0), (" 1.5 ", 1.5), ("soon", None), ("-1", None)]
)
def test_publisher_retry_after_parsing(value: str | None, seconds: float | None) -> None:
    """Only non-negative delta-seconds Retry-After values are honoured."""
    assert publisher_module._retry_after(value) == seconds


def test_publisher_module_exports() -> None:
    """__all__ lists the public names."""
    assert sorted(publisher_module.__all__) == [
        "AsyncPublisher",
        "PublishError",
        "PublishResult",
        "Publisher",
        "USER_AGENT",
    ]


def test_publish_result_is_frozen() -> None:
    """Results are immutable values."""
    result = PublishResult("c", "e")
    with pytest.raises(AttributeError):
        result.id = "x"  # type: ignore[misc]
